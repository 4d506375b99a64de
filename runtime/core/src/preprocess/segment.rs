//! Cutting a clip's log-mel spectrogram into the normalised per-frame audio segments the
//! encoder sees, exactly as the official CAV-MAE Sync loader (`src/dataloader_sync.py`) does.
//!
//! The official order, which this module reproduces:
//! 1. `_wav2fbank` computes the raw log-mel of the whole clip and zero-pads or cuts it to a
//!    hard-coded 1024 frames ([`CLIP_FRAMES`]), whatever the model's segment length is;
//! 2. `map_frame_to_spectrogram(frame_idx, total_frame, fbank.shape[0], target_length)` picks
//!    the segment of video frame `frame_idx`, so the spectrogram length it sees is 1024;
//! 3. the slice `fbank[start:end]` is normalised with `(fbank - norm_mean) / norm_std`, so
//!    padded rows (zeros) become `(0 + 5.081) / 4.4849`, not zero.
//!
//! That rule only sees the first 10.24 s of a clip. For videos and clip folders of any length
//! [`Alignment::Timed`] applies the same rule in time (see there), so every frame hears the
//! audio around its own timestamp; datafile clips keep [`Alignment::Official`] exactly.

use ndarray::{Array2, ArrayView2, s};

/// Dataset mean of the raw log-mel the released models were trained with.
pub const NORM_MEAN: f32 = -5.081;
/// Dataset standard deviation of the raw log-mel the released models were trained with.
pub const NORM_STD: f32 = 4.4849;
/// Fixed spectrogram length the official loader pads or cuts every clip to before segmenting (1024 frames = 10.24 s).
pub const CLIP_FRAMES: usize = 1024;

/// Normalises raw log-mel values in place as the official loader does: `(x - NORM_MEAN) / NORM_STD`.
pub fn normalize_in_place(x: &mut [f32]) {
    for v in x {
        *v = normalize(*v);
    }
}

/// One raw log-mel value, normalised.
fn normalize(v: f32) -> f32 {
    (v - NORM_MEAN) / NORM_STD
}

/// Zero-pads rows at the end or cuts to exactly `frames` rows, as the official `_wav2fbank` does with its target length.
pub fn fit_length(fbank: ArrayView2<f32>, frames: usize) -> Array2<f32> {
    let (rows, cols) = fbank.dim();
    let mut out = Array2::<f32>::zeros((frames, cols));
    let keep = rows.min(frames);
    out.slice_mut(s![..keep, ..])
        .assign(&fbank.slice(s![..keep, ..]));
    out
}

/// `round(num / den)` with Python's ties-to-even rounding, computed exactly in integers.
///
/// Matches `int(round(num / den))` of Python for every quotient a float represents exactly
/// (all realistic frame counts). A zero `den` is treated as 1, where Python would raise.
pub fn python_round_div(num: u64, den: u64) -> u64 {
    let den = den.max(1);
    let (q, r) = (num / den, num % den);
    // Compare 2r with den without overflowing: r < den, so den - r > 0.
    let above_half = r > den - r;
    let tie = r == den - r;
    if above_half || (tie && q % 2 == 1) {
        q + 1
    } else {
        q
    }
}

/// Start and end row of video frame `frame`'s audio segment: exactly `map_frame_to_spectrogram` of `dataloader_sync.py`.
///
/// The segment is centred on `round(frame * spec_len / total_frames)` (Python rounding),
/// starts at `max(0, centre - target_len / 2)` and is `target_len` long; if it runs past the
/// spectrogram it is shifted back to end at `spec_len` (starting at `max(0, spec_len -
/// target_len)`), so it is shorter than `target_len` only when the spectrogram is.
pub fn segment_bounds(
    frame: usize,
    total_frames: usize,
    spec_len: usize,
    target_len: usize,
) -> (usize, usize) {
    let centre = python_round_div(
        (frame as u64).saturating_mul(spec_len as u64),
        total_frames as u64,
    );
    bounds_around(
        usize::try_from(centre).unwrap_or(usize::MAX),
        spec_len,
        target_len,
    )
}

/// The official placement of a `target_len` segment centred on row `centre` of a `spec_len`-row spectrogram, shifted inside it at the end.
fn bounds_around(centre: usize, spec_len: usize, target_len: usize) -> (usize, usize) {
    let mut start = centre.saturating_sub(target_len / 2);
    let mut end = start.saturating_add(target_len);
    if end > spec_len {
        end = spec_len;
        start = spec_len.saturating_sub(target_len);
    }
    (start, end)
}

/// How the frames of a clip take their audio segments from its log-mel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Alignment {
    /// The official loader's rule: the log-mel fitted to [`CLIP_FRAMES`] rows (audio after
    /// 10.24 s is dropped), frame k of T centred on row `round(k * CLIP_FRAMES / T)`.
    #[default]
    Official,
    /// The same rule in time, for audio of any length: nothing is dropped, and the frame at
    /// `t` seconds of a `D`-second clip is centred on row `round(t * S / D)` with `S = max(rows,
    /// CLIP_FRAMES)`, shifted inside the audio at the ends. For a 10 s clip with frames every
    /// `10 / T` s this is the official row; for a long video it follows each frame's own time.
    Timed,
}

/// Where a frame lies in its clip, as the alignment rules need it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FramePosition {
    /// Frame index k.
    pub index: usize,
    /// Frames T in the clip.
    pub total_frames: usize,
    /// Time of the frame, seconds.
    pub time_s: f64,
    /// Length of the clip's audio, seconds.
    pub duration_s: f64,
}

impl Alignment {
    /// Start and end row of the frame's segment, and the spectrogram length it lies in, for a clip log-mel of `rows` rows.
    pub fn bounds(self, frame: FramePosition, rows: usize, target_len: usize) -> (usize, usize) {
        match self {
            Self::Official => {
                segment_bounds(frame.index, frame.total_frames, CLIP_FRAMES, target_len)
            }
            Self::Timed => {
                let spec_len = rows.max(CLIP_FRAMES);
                let centre = if frame.duration_s > 0.0 {
                    (frame.time_s.max(0.0) * spec_len as f64 / frame.duration_s).round_ties_even()
                } else {
                    0.0
                };
                bounds_around(centre as usize, spec_len, target_len)
            }
        }
    }
}

/// Normalised `(target_len, bins)` audio segment aligned with video frame `frame` of `total_frames`, from a raw clip log-mel.
///
/// Follows the official order: the raw clip log-mel is fitted to [`CLIP_FRAMES`] rows
/// (zero rows appended, or cut), the rows `segment_bounds(frame, total_frames, CLIP_FRAMES,
/// target_len)` are taken, and the result is normalised, so padded rows hold
/// `(0 - NORM_MEAN) / NORM_STD`. When `target_len` exceeds [`CLIP_FRAMES`] (where the
/// official loader would return a shorter segment) the slice is zero-padded to `target_len`
/// rows before normalisation, so the output always has `target_len` rows.
pub fn frame_segment(
    clip_fbank: ArrayView2<f32>,
    frame: usize,
    total_frames: usize,
    target_len: usize,
) -> Array2<f32> {
    let mut values = Vec::new();
    frame_segment_into(clip_fbank, frame, total_frames, target_len, &mut values);
    Array2::from_shape_vec((target_len, clip_fbank.ncols()), values)
        .expect("frame_segment_into writes target_len rows of the input's bins")
}

/// [`frame_segment`] written into `out` (row-major, `target_len` x bins), reusing its capacity.
pub fn frame_segment_into(
    clip_fbank: ArrayView2<f32>,
    frame: usize,
    total_frames: usize,
    target_len: usize,
    out: &mut Vec<f32>,
) {
    let bounds = segment_bounds(frame, total_frames, CLIP_FRAMES, target_len);
    segment_rows_into(clip_fbank, bounds, target_len, out);
}

/// The normalised `target_len` x bins segment starting at row `start` of a raw clip log-mel, into `out`.
///
/// Row `r` of the segment is row `start + r` of the clip log-mel when that row lies below
/// `end` and inside the clip, and a zero (padding) row otherwise; every value is then
/// normalised, exactly as the official fitting, slicing and fitting again would give.
pub fn segment_rows_into(
    clip_fbank: ArrayView2<f32>,
    (start, end): (usize, usize),
    target_len: usize,
    out: &mut Vec<f32>,
) {
    let bins = clip_fbank.ncols();
    let end = end.min(clip_fbank.nrows().max(start));
    out.clear();
    for row in start..start + target_len {
        if row < end {
            out.extend(clip_fbank.row(row).iter().map(|&v| normalize(v)));
        } else {
            out.extend(std::iter::repeat_n(normalize(0.0), bins));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn python_round_div_ties_to_even() {
        assert_eq!(python_round_div(1, 2), 0);
        assert_eq!(python_round_div(3, 2), 2);
        assert_eq!(python_round_div(5, 2), 2);
        assert_eq!(python_round_div(7, 2), 4);
        assert_eq!(python_round_div(0, 7), 0);
        assert_eq!(python_round_div(4, 3), 1);
        assert_eq!(python_round_div(5, 3), 2);
        assert_eq!(python_round_div(10, 5), 2);
        assert_eq!(python_round_div(u64::MAX, u64::MAX), 1);
        assert_eq!(python_round_div(u64::MAX, 2), u64::MAX / 2 + 1);
        assert_eq!(python_round_div(9, 0), 9);
    }

    #[test]
    fn segment_bounds_released_model() {
        // round(k * 1024 / 16) = 64k exactly; start = 64k - 208, then clamped to [0, 608].
        let expected = [
            (0, 416),
            (0, 416),
            (0, 416),
            (0, 416),
            (48, 464),
            (112, 528),
            (176, 592),
            (240, 656),
            (304, 720),
            (368, 784),
            (432, 848),
            (496, 912),
            (560, 976),
            (608, 1024),
            (608, 1024),
            (608, 1024),
        ];
        for (k, &want) in expected.iter().enumerate() {
            assert_eq!(segment_bounds(k, 16, 1024, 416), want, "frame {k}");
        }
    }

    #[test]
    fn segment_bounds_rounding_and_short_spectrograms() {
        // 1 * 100 / 8 = 12.5 -> 12 (even), 3 * 100 / 8 = 37.5 -> 38 (even).
        assert_eq!(segment_bounds(1, 8, 100, 10), (7, 17));
        assert_eq!(segment_bounds(3, 8, 100, 10), (33, 43));
        // Spectrogram shorter than the segment: the whole spectrogram.
        assert_eq!(segment_bounds(0, 16, 300, 416), (0, 300));
        assert_eq!(segment_bounds(15, 16, 300, 416), (0, 300));
        assert_eq!(segment_bounds(8, 16, 0, 416), (0, 0));
        // Odd target length: start = centre - L // 2.
        assert_eq!(segment_bounds(8, 16, 1024, 415), (305, 720));
    }

    #[test]
    fn fit_length_pads_and_cuts() {
        let x = Array2::from_shape_fn((3, 2), |(r, c)| (r * 2 + c) as f32 + 1.0);
        let padded = fit_length(x.view(), 5);
        assert_eq!(padded.dim(), (5, 2));
        assert_eq!(padded.row(2).to_vec(), vec![5.0, 6.0]);
        assert_eq!(padded.row(4).to_vec(), vec![0.0, 0.0]);
        let cut = fit_length(x.view(), 2);
        assert_eq!(cut, x.slice(s![..2, ..]));
    }

    #[test]
    fn frame_segment_pads_before_normalising() {
        // 500 raw frames of value 1.0: padded to 1024 with zeros, then normalised.
        let clip = Array2::<f32>::from_elem((500, 128), 1.0);
        let seg = frame_segment(clip.view(), 8, 16, 416);
        assert_eq!(seg.dim(), (416, 128));
        let ones = (1.0 - NORM_MEAN) / NORM_STD;
        let zeros = (0.0 - NORM_MEAN) / NORM_STD;
        // Frame 8 covers rows 304..720: rows 304..500 are data, 500..720 padding.
        assert_eq!(seg[[0, 0]], ones);
        assert_eq!(seg[[195, 127]], ones);
        assert_eq!(seg[[196, 0]], zeros);
        assert_eq!(seg[[415, 5]], zeros);
    }

    #[test]
    fn frame_segment_cuts_long_clips_and_pads_long_targets() {
        let clip = Array2::from_shape_fn((2000, 1), |(r, _)| r as f32);
        let seg = frame_segment(clip.view(), 15, 16, 416);
        assert_eq!(seg[[0, 0]], (608.0 - NORM_MEAN) / NORM_STD);
        assert_eq!(seg[[415, 0]], (1023.0 - NORM_MEAN) / NORM_STD);
        let long = frame_segment(clip.view(), 0, 16, 1100);
        assert_eq!(long.dim(), (1100, 1));
        assert_eq!(long[[1023, 0]], (1023.0 - NORM_MEAN) / NORM_STD);
        assert_eq!(long[[1024, 0]], (0.0 - NORM_MEAN) / NORM_STD);
    }

    #[test]
    fn normalize_matches_formula() {
        let mut x = [NORM_MEAN, 0.0, -15.942385];
        normalize_in_place(&mut x);
        assert_eq!(x[0], 0.0);
        assert_eq!(x[1], 5.081 / 4.4849);
        assert_eq!(x[2], (-15.942385 - NORM_MEAN) / NORM_STD);
    }

    #[test]
    fn timed_alignment_is_the_official_one_for_ten_second_clips() {
        for t in [8, 16] {
            for k in 0..t {
                let frame = FramePosition {
                    index: k,
                    total_frames: t,
                    time_s: k as f64 * 10.0 / t as f64,
                    duration_s: 10.0,
                };
                for (rows, target) in [(998, 416), (998, 64), (1024, 1024)] {
                    assert_eq!(
                        Alignment::Timed.bounds(frame, rows, target),
                        Alignment::Official.bounds(frame, rows, target),
                        "k {k} of {t}, L {target}"
                    );
                }
            }
        }
    }

    #[test]
    fn timed_alignment_follows_time_in_long_clips() {
        // 30 s: 2998 rows; the frame at 25 s is centred near row 2500, not cut at 10.24 s.
        let frame = FramePosition {
            index: 40,
            total_frames: 48,
            time_s: 25.0,
            duration_s: 30.0,
        };
        assert_eq!(Alignment::Timed.bounds(frame, 2998, 416), (2290, 2706));
        assert_eq!(Alignment::Official.bounds(frame, 2998, 416), (608, 1024));
        // At the end the segment is shifted inside the audio.
        let last = FramePosition {
            time_s: 29.9,
            ..frame
        };
        assert_eq!(Alignment::Timed.bounds(last, 2998, 416), (2582, 2998));
        let fbank = Array2::from_shape_fn((2998, 2), |(r, _)| r as f32);
        let mut out = Vec::new();
        segment_rows_into(fbank.view(), (2582, 2998), 416, &mut out);
        assert_eq!(out[0], normalize(2582.0));
        assert_eq!(out[out.len() - 1], normalize(2997.0));
    }
}
