//! Audio that no microphone in working order gives: non-finite or far out-of-range samples,
//! clipping at full scale, a signal stuck at one value, digital silence.
//!
//! [`AudioHealth`] classifies a stream window by window (100 ms), for any chunking, so that
//! the offline readers ([`check`]) and the live pipeline judge audio by the same rules.

use std::fmt;

/// Length of the windows faults are judged over, in seconds.
pub const WINDOW_S: f64 = 0.1;

/// A magnitude at or above which a sample counts as clipped (full scale less about one 16-bit step).
pub const CLIP_LEVEL: f32 = 0.9999;

/// Share of a window's samples at [`CLIP_LEVEL`] or beyond that makes the window clipped.
pub const CLIP_SHARE: f64 = 0.25;

/// A magnitude beyond which a sample is not audio at all (float files may run a little over full scale).
pub const RANGE_LIMIT: f32 = 2.0;

/// What is wrong with a stretch of audio; variants are ordered from most to least severe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AudioFault {
    /// NaN or infinite samples.
    NonFinite,
    /// Finite samples far beyond full scale (|x| > [`RANGE_LIMIT`]).
    OutOfRange,
    /// At least [`CLIP_SHARE`] of the window at full scale.
    Clipped,
    /// The whole window at one non-zero value (a DC-stuck converter).
    Stuck,
    /// The whole window exactly zero (a muted or disconnected input).
    Silent,
}

impl AudioFault {
    /// Every fault, in the order of severity the classifier checks them.
    pub const ALL: [AudioFault; 5] = [
        AudioFault::NonFinite,
        AudioFault::OutOfRange,
        AudioFault::Clipped,
        AudioFault::Stuck,
        AudioFault::Silent,
    ];

    /// The fault's short name, as in the live records (`non-finite`, `clipped`, ...).
    pub fn name(self) -> &'static str {
        match self {
            AudioFault::NonFinite => "non-finite",
            AudioFault::OutOfRange => "out-of-range",
            AudioFault::Clipped => "clipped",
            AudioFault::Stuck => "stuck",
            AudioFault::Silent => "silent",
        }
    }

    /// Position of the fault in [`AudioFault::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for AudioFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AudioFault::NonFinite => "NaN or infinite samples",
            AudioFault::OutOfRange => "samples far beyond full scale (|x| > 2)",
            AudioFault::Clipped => "clipping at full scale",
            AudioFault::Stuck => "a signal stuck at one non-zero value",
            AudioFault::Silent => "digital silence (every sample exactly zero)",
        })
    }
}

/// A faulty stretch: samples `start..end` of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultSpan {
    /// What is wrong.
    pub fault: AudioFault,
    /// First sample of the stretch.
    pub start: u64,
    /// One past its last sample.
    pub end: u64,
}

/// Streaming fault classifier: feed samples in any chunks, get each faulty window once.
#[derive(Debug, Clone)]
pub struct AudioHealth {
    window: usize,
    offset: u64,
    filled: usize,
    non_finite: usize,
    out_of_range: usize,
    clipped: usize,
    zeros: usize,
    first: f32,
    constant: bool,
}

impl AudioHealth {
    /// A classifier for a stream of `rate` samples per second (windows of [`WINDOW_S`], at least one sample).
    pub fn new(rate: u32) -> Self {
        Self {
            window: ((f64::from(rate) * WINDOW_S).round() as usize).max(1),
            offset: 0,
            filled: 0,
            non_finite: 0,
            out_of_range: 0,
            clipped: 0,
            zeros: 0,
            first: 0.0,
            constant: true,
        }
    }

    /// Samples per window.
    pub fn window(&self) -> usize {
        self.window
    }

    /// Classifies `samples`, the next stretch of the stream; `on_fault` gets every window completed here that is faulty.
    pub fn push(&mut self, samples: &[f32], mut on_fault: impl FnMut(FaultSpan)) {
        for &x in samples {
            if !x.is_finite() {
                self.non_finite += 1;
            } else if x.abs() > RANGE_LIMIT {
                self.out_of_range += 1;
            } else if x.abs() >= CLIP_LEVEL {
                self.clipped += 1;
            }
            if x == 0.0 {
                self.zeros += 1;
            }
            if self.filled == 0 {
                self.first = x;
            } else if x.to_bits() != self.first.to_bits() {
                self.constant = false;
            }
            self.filled += 1;
            if self.filled == self.window {
                self.close(&mut on_fault);
            }
        }
    }

    /// Classifies the partial window at the end of the stream, if any.
    pub fn finish(&mut self, mut on_fault: impl FnMut(FaultSpan)) {
        if self.filled > 0 {
            self.close(&mut on_fault);
        }
    }

    /// The fault of the current window, if any, then a fresh window.
    fn close(&mut self, on_fault: &mut impl FnMut(FaultSpan)) {
        // A partial window (the end of a recording) is too short to call clipped, stuck or silent.
        let n = self.filled;
        let whole = n == self.window;
        let fault = if self.non_finite > 0 {
            Some(AudioFault::NonFinite)
        } else if self.out_of_range > 0 {
            Some(AudioFault::OutOfRange)
        } else if whole && self.clipped as f64 >= CLIP_SHARE * n as f64 {
            Some(AudioFault::Clipped)
        } else if whole && self.zeros == n {
            Some(AudioFault::Silent)
        } else if whole && self.constant {
            Some(AudioFault::Stuck)
        } else {
            None
        };
        if let Some(fault) = fault {
            on_fault(FaultSpan {
                fault,
                start: self.offset,
                end: self.offset + n as u64,
            });
        }
        self.offset += n as u64;
        self.filled = 0;
        self.non_finite = 0;
        self.out_of_range = 0;
        self.clipped = 0;
        self.zeros = 0;
        self.constant = true;
    }
}

/// What [`check`] found wrong with a whole recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    /// The first faulty stretch that decides the verdict.
    pub span: FaultSpan,
    /// Faulty windows of that kind in the recording.
    pub windows: usize,
    /// Windows in the recording.
    pub total: usize,
}

impl Rejection {
    /// Seconds from the start of the recording to the stretch, and its length.
    pub fn at_s(&self, rate: u32) -> (f64, f64) {
        let r = f64::from(rate);
        (
            self.span.start as f64 / r,
            (self.span.end - self.span.start) as f64 / r,
        )
    }
}

/// Judges a whole recording of `rate` Hz for offline use: any non-finite, out-of-range, clipped or stuck window rejects it, and so does silence in every whole window (silent stretches between sound are fine).
pub fn check(samples: &[f32], rate: u32) -> Result<(), Rejection> {
    let mut health = AudioHealth::new(rate);
    let mut counts = [0usize; AudioFault::ALL.len()];
    let mut first: [Option<FaultSpan>; AudioFault::ALL.len()] = [None; AudioFault::ALL.len()];
    let mut note = |span: FaultSpan| {
        counts[span.fault.index()] += 1;
        first[span.fault.index()].get_or_insert(span);
    };
    health.push(samples, &mut note);
    health.finish(&mut note);
    let total = samples.len().div_ceil(health.window()).max(1);
    let whole = (samples.len() / health.window()).max(1);
    for fault in AudioFault::ALL {
        let Some(span) = first[fault.index()] else {
            continue;
        };
        let windows = counts[fault.index()];
        let rejects = fault != AudioFault::Silent || windows == whole;
        if rejects {
            return Err(Rejection {
                span,
                windows,
                total,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(n: usize, amplitude: f32) -> Vec<f32> {
        (0..n)
            .map(|i| amplitude * (i as f32 * 0.05).sin())
            .collect()
    }

    fn faults(samples: &[f32], chunk: usize) -> Vec<FaultSpan> {
        let mut health = AudioHealth::new(1000);
        let mut found = Vec::new();
        for piece in samples.chunks(chunk) {
            health.push(piece, |s| found.push(s));
        }
        health.finish(|s| found.push(s));
        found
    }

    #[test]
    fn clean_speech_level_audio_passes() {
        assert!(faults(&tone(1000, 0.3), 37).is_empty());
        assert_eq!(check(&tone(16_000, 0.5), 16_000), Ok(()));
        // A full-scale sine touches the clip level on a small share of samples only.
        assert_eq!(check(&tone(16_000, 1.0), 16_000), Ok(()));
    }

    #[test]
    fn each_fault_is_found_where_it_is_whatever_the_chunking() {
        let mut x = tone(1000, 0.3);
        x[150] = f32::NAN;
        x[350] = 1e6;
        for v in &mut x[400..500] {
            *v = v.signum();
        }
        for v in &mut x[600..700] {
            *v = 0.25;
        }
        for v in &mut x[800..900] {
            *v = 0.0;
        }
        let expected = vec![
            (AudioFault::NonFinite, 100, 200),
            (AudioFault::OutOfRange, 300, 400),
            (AudioFault::Clipped, 400, 500),
            (AudioFault::Stuck, 600, 700),
            (AudioFault::Silent, 800, 900),
        ];
        for chunk in [1, 7, 100, 1000] {
            let got: Vec<_> = faults(&x, chunk)
                .iter()
                .map(|s| (s.fault, s.start, s.end))
                .collect();
            assert_eq!(got, expected, "chunk {chunk}");
        }
    }

    #[test]
    fn offline_check_rejects_faults_but_allows_pauses() {
        let mut x = tone(16_000, 0.3);
        for v in &mut x[3_200..8_000] {
            *v = 0.0;
        }
        assert_eq!(check(&x, 16_000), Ok(()), "a pause is not a fault");
        x[9_000] = f32::INFINITY;
        let r = check(&x, 16_000).unwrap_err();
        assert_eq!(r.span.fault, AudioFault::NonFinite);
        assert_eq!((r.span.start, r.span.end), (8_000, 9_600));
        assert_eq!(r.at_s(16_000), (0.5, 0.1));
        let silent = vec![0.0f32; 16_000];
        let r = check(&silent, 16_000).unwrap_err();
        assert_eq!(
            (r.span.fault, r.windows, r.total),
            (AudioFault::Silent, 10, 10)
        );
        let stuck = vec![-0.5f32; 1_600];
        assert_eq!(
            check(&stuck, 16_000).unwrap_err().span.fault,
            AudioFault::Stuck
        );
    }

    #[test]
    fn a_short_trailing_window_is_judged_on_what_it_has() {
        let mut x = tone(1050, 0.3);
        x[1040] = f32::NAN;
        let got = faults(&x, 64);
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].start, got[0].end), (1000, 1050));
        // A short constant or clipped tail is not called stuck, silent or clipped.
        let mut y = tone(1030, 0.3);
        for v in &mut y[1000..1010] {
            *v = 0.0;
        }
        for v in &mut y[1010..] {
            *v = 1.0;
        }
        assert!(faults(&y, 64).is_empty());
    }
}
