//! Streaming preprocessing for live audio: the Kaldi fbank computed row by row as samples arrive, a ring of recent rows, and the segment each video frame hears.
//!
//! Row `r` of the stream covers samples `[160 r, 160 r + 400)` counted from the first sample
//! pushed, exactly the rows [`Fbank::compute`] gives on the same samples, so the live path and
//! the offline one agree to float rounding (the offline clip path also subtracts the clip's
//! mean first; the fbank removes each frame's mean anyway, so that only moves rounding).
//!
//! A frame captured when the stream held `s` samples hears, in [`LiveAlignment::Causal`] mode,
//! the `L` rows that end with the last complete row (`Fbank::num_frames(s)`), and in
//! [`LiveAlignment::Centred`] mode the `L` rows centred on the row whose window is centred on
//! sample `s`, which the model was trained with but which arrives `L / 2` rows (plus half a
//! window) later. Rows before the stream began are padding rows, normalised like the official
//! loader's padding (`(0 - NORM_MEAN) / NORM_STD`).

use super::fbank::{FRAME_LENGTH, FRAME_SHIFT, Fbank, FbankError, NUM_MEL_BINS};
use super::segment::normalize_in_place;

/// How a live video frame takes its audio segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LiveAlignment {
    /// The segment ends at the frame's capture time: lowest latency.
    #[default]
    Causal,
    /// The segment is centred on the frame's capture time, as in training: half a segment later.
    Centred,
}

impl LiveAlignment {
    /// Rows `[start, end)` (row indices of the stream, `start` may be negative: padding) of the segment of a frame captured when `samples` samples had been captured.
    pub fn bounds(self, samples: u64, target_len: usize) -> (i64, i64) {
        let target = target_len as i64;
        match self {
            Self::Causal => {
                let end = Fbank::num_frames(usize::try_from(samples).unwrap_or(usize::MAX)) as i64;
                (end - target, end)
            }
            Self::Centred => {
                let half_window = (FRAME_LENGTH / 2) as f64;
                let centre =
                    ((samples as f64 - half_window) / FRAME_SHIFT as f64).round_ties_even() as i64;
                let start = (centre - target / 2).max(0);
                (start, start + target)
            }
        }
    }

    /// Seconds by which this alignment's segment ends after the frame's capture time, for segments of `target_len` rows.
    pub fn delay_s(self, target_len: usize) -> f64 {
        match self {
            Self::Causal => 0.0,
            Self::Centred => (target_len / 2 * FRAME_SHIFT + FRAME_LENGTH / 2) as f64 / 16_000.0,
        }
    }
}

/// Why a live segment could not be cut.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The segment needs rows the stream has not computed yet.
    #[error("segment rows up to {end} requested; only {available} rows computed so far")]
    NotYet {
        /// One past the last row needed.
        end: i64,
        /// Rows computed so far.
        available: u64,
    },
    /// The segment needs rows the ring has already dropped.
    #[error("segment starts at row {start}; the ring keeps rows from {oldest} on")]
    Evicted {
        /// First row needed.
        start: i64,
        /// Oldest row still kept.
        oldest: u64,
    },
    /// The output buffer does not hold `target_len x 128` floats.
    #[error("segment buffer holds {got} floats; {needed} are needed")]
    Buffer {
        /// Floats needed.
        needed: usize,
        /// Floats given.
        got: usize,
    },
}

/// An incremental Kaldi fbank with a ring of its most recent rows; allocation-free after construction.
pub struct FbankStream {
    fbank: Fbank,
    window: [f32; FRAME_LENGTH],
    filled: usize,
    samples: u64,
    rows: Vec<f32>,
    capacity: usize,
    computed: u64,
    row: [f32; NUM_MEL_BINS],
}

impl FbankStream {
    /// A stream keeping the last `capacity_rows` rows (at least one).
    pub fn new(capacity_rows: usize) -> Self {
        let capacity = capacity_rows.max(1);
        Self {
            fbank: Fbank::new(),
            window: [0.0; FRAME_LENGTH],
            filled: 0,
            samples: 0,
            rows: vec![0.0; capacity * NUM_MEL_BINS],
            capacity,
            computed: 0,
            row: [0.0; NUM_MEL_BINS],
        }
    }

    /// Samples pushed so far.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Rows computed so far.
    pub fn rows(&self) -> u64 {
        self.computed
    }

    /// Rows the ring keeps.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Appends 16 kHz mono samples, computing every row they complete.
    pub fn push(&mut self, samples: &[f32]) -> Result<(), FbankError> {
        let mut rest = samples;
        while !rest.is_empty() {
            let take = (FRAME_LENGTH - self.filled).min(rest.len());
            self.window[self.filled..self.filled + take].copy_from_slice(&rest[..take]);
            self.filled += take;
            self.samples += take as u64;
            rest = &rest[take..];
            if self.filled == FRAME_LENGTH {
                self.fbank.frame_into(&self.window, &mut self.row)?;
                let slot = (self.computed % self.capacity as u64) as usize * NUM_MEL_BINS;
                self.rows[slot..slot + NUM_MEL_BINS].copy_from_slice(&self.row);
                self.computed += 1;
                self.window.copy_within(FRAME_SHIFT.., 0);
                self.filled = FRAME_LENGTH - FRAME_SHIFT;
            }
        }
        Ok(())
    }

    /// The raw log-mel of row `row`, if the ring still holds it.
    pub fn row(&self, row: u64) -> Option<&[f32]> {
        if row >= self.computed || row + (self.capacity as u64) < self.computed {
            return None;
        }
        let slot = (row % self.capacity as u64) as usize * NUM_MEL_BINS;
        Some(&self.rows[slot..slot + NUM_MEL_BINS])
    }

    /// Whether rows `[start, end)` can be cut now: `Ok` when computed and still kept.
    pub fn check(&self, (start, end): (i64, i64)) -> Result<(), StreamError> {
        if end > self.computed as i64 {
            return Err(StreamError::NotYet {
                end,
                available: self.computed,
            });
        }
        let oldest = self.computed.saturating_sub(self.capacity as u64);
        if start.max(0) < oldest as i64 && start < end {
            return Err(StreamError::Evicted { start, oldest });
        }
        Ok(())
    }

    /// The normalised segment of rows `[start, end)` into `out` (row-major, rows before 0 are padding rows).
    pub fn segment_into(&self, bounds: (i64, i64), out: &mut [f32]) -> Result<(), StreamError> {
        let (start, end) = bounds;
        let rows = usize::try_from(end - start).unwrap_or(0);
        let needed = rows * NUM_MEL_BINS;
        if out.len() != needed {
            return Err(StreamError::Buffer {
                needed,
                got: out.len(),
            });
        }
        self.check(bounds)?;
        for (r, dst) in (start..end).zip(out.chunks_exact_mut(NUM_MEL_BINS)) {
            match u64::try_from(r).ok().and_then(|r| self.row(r)) {
                Some(src) => dst.copy_from_slice(src),
                None => dst.fill(0.0),
            }
        }
        normalize_in_place(out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::segment::NORM_MEAN;

    /// Log-mel level (energy e^-4, about 1e-4 of this chirp's loudest bins) below which rounding noise shows.
    const QUIET_LOG_MEL: f32 = -4.0;

    fn chirp(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let t = i as f32 / 16_000.0;
                0.3 * (2.0 * std::f32::consts::PI * (200.0 + 900.0 * t) * t).sin()
                    + 0.05 * ((i * 7919 % 101) as f32 / 101.0 - 0.5)
            })
            .collect()
    }

    #[test]
    fn rows_equal_the_offline_fbank_whatever_the_chunking() {
        let samples = chirp(16_000 * 2 + 123);
        let offline = Fbank::new()
            .compute(&samples, crate::preprocess::fbank::ShortInput::Error)
            .unwrap();
        for chunk in [1, 37, 160, 441, 4000] {
            let mut stream = FbankStream::new(4096);
            for piece in samples.chunks(chunk) {
                stream.push(piece).unwrap();
            }
            assert_eq!(stream.rows() as usize, offline.nrows(), "chunk {chunk}");
            for (r, expected) in offline.rows().into_iter().enumerate() {
                let got = stream.row(r as u64).unwrap();
                let worst = got
                    .iter()
                    .zip(expected)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                assert!(worst <= 1e-5, "chunk {chunk} row {r}: max abs {worst}");
            }
        }
    }

    #[test]
    fn rows_match_the_official_clip_path_with_its_mean_removal() {
        // The clip path subtracts the clip mean (in f32) first; each frame's own mean removal
        // cancels it, so only the input's rounding differs. That rounding (~1e-8 of full
        // scale) moves log-mel values only where a filter's energy is itself near rounding
        // noise, as the fbank module documents: above that the two agree to 1e-5.
        let samples: Vec<f32> = chirp(16_000 * 3).iter().map(|v| v + 0.2).collect();
        let offline = crate::preprocess::fbank::clip_log_mel(
            &samples,
            crate::preprocess::fbank::ShortInput::Error,
        )
        .unwrap();
        let mut stream = FbankStream::new(4096);
        stream.push(&samples).unwrap();
        let (mut worst, mut worst_quiet) = (0.0f32, 0.0f32);
        for (r, expected) in offline.rows().into_iter().enumerate() {
            let got = stream.row(r as u64).unwrap();
            for (a, b) in got.iter().zip(expected) {
                if *b > QUIET_LOG_MEL {
                    worst = worst.max((a - b).abs());
                } else {
                    worst_quiet = worst_quiet.max((a - b).abs());
                }
            }
        }
        assert!(worst <= 1e-5, "max abs {worst} above {QUIET_LOG_MEL}");
        assert!(
            worst_quiet <= 1e-2,
            "max abs {worst_quiet} at or below {QUIET_LOG_MEL}"
        );
    }

    #[test]
    fn ring_drops_old_rows_and_refuses_them() {
        let mut stream = FbankStream::new(10);
        stream.push(&chirp(16_000)).unwrap();
        let rows = stream.rows();
        assert_eq!(rows, 98);
        assert!(stream.row(rows - 10).is_some());
        assert!(stream.row(rows - 11).is_none());
        assert!(stream.row(rows).is_none());
        let mut out = vec![0.0; 10 * NUM_MEL_BINS];
        assert!(stream.segment_into((88, 98), &mut out).is_ok());
        assert_eq!(
            stream.segment_into((87, 97), &mut out),
            Err(StreamError::Evicted {
                start: 87,
                oldest: 88
            })
        );
        assert_eq!(
            stream.segment_into((89, 99), &mut out),
            Err(StreamError::NotYet {
                end: 99,
                available: 98
            })
        );
    }

    #[test]
    fn early_segments_are_front_padded_and_normalised() {
        let mut stream = FbankStream::new(64);
        stream.push(&chirp(400 + 160 * 2)).unwrap();
        assert_eq!(stream.rows(), 3);
        let (start, end) = LiveAlignment::Causal.bounds(stream.samples(), 8);
        assert_eq!((start, end), (-5, 3));
        let mut out = vec![0.0; 8 * NUM_MEL_BINS];
        stream.segment_into((start, end), &mut out).unwrap();
        let pad = (0.0 - NORM_MEAN) / crate::preprocess::segment::NORM_STD;
        assert!(out[..5 * NUM_MEL_BINS].iter().all(|&v| v == pad));
        let first = stream.row(0).unwrap();
        let expected = (first[10] - NORM_MEAN) / crate::preprocess::segment::NORM_STD;
        assert_eq!(out[5 * NUM_MEL_BINS + 10], expected);
    }

    #[test]
    fn centred_bounds_follow_the_capture_sample() {
        // Row c's window is centred on sample 160 c + 200.
        assert_eq!(
            LiveAlignment::Centred.bounds(160 * 100 + 200, 64),
            (68, 132)
        );
        assert_eq!(LiveAlignment::Centred.bounds(0, 64), (0, 64));
        assert_eq!(LiveAlignment::Causal.bounds(160 * 100 + 400, 64), (37, 101));
        assert!((LiveAlignment::Centred.delay_s(64) - 0.3325).abs() < 1e-9);
        assert_eq!(LiveAlignment::Causal.delay_s(64), 0.0);
    }
}
