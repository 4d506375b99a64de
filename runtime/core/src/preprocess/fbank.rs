//! Kaldi-compatible log-mel filterbank, numerically matching torchaudio's
//! `compliance.kaldi.fbank(htk_compat=True, use_energy=False, window_type='hanning',
//! num_mel_bins=128, dither=0, frame_shift=10)` on 16 kHz input, which is what the official
//! CAV-MAE Sync loader feeds the model.
//!
//! Per frame (snip_edges: only whole 400-sample frames, hop 160): remove the frame's mean,
//! pre-emphasise (`y[i] = x[i] - 0.97 x[i-1]`, `y[0] = x[0] - 0.97 x[0]`), multiply by a
//! symmetric Hann window, zero-pad to 512, take the power spectrum, apply 128 triangular mel
//! filters and take the log with a float32-epsilon floor. The mel weights are evaluated in
//! float32 exactly as torchaudio's `get_mel_banks` does (it matters for filters that only
//! graze a bin); the per-frame arithmetic runs in f64.
//!
//! Agreement with torchaudio is within 1e-3 in log-mel wherever a filter's energy is well above
//! float32 rounding noise. torchaudio itself works in float32, which perturbs each mel energy
//! by up to ~1e-8 absolute on loud frames, so log-mel values within a few units of the floor
//! (-15.94) can differ by up to ~1e-2 between any two implementations, torch builds included.

use std::sync::Arc;

use ndarray::Array2;
use realfft::num_complex::Complex;
use realfft::{RealFftPlanner, RealToComplex};

/// Number of mel filters (output columns).
pub const NUM_MEL_BINS: usize = 128;
/// Samples per analysis frame (25 ms at 16 kHz).
pub const FRAME_LENGTH: usize = 400;
/// Samples between the starts of consecutive frames (10 ms at 16 kHz).
pub const FRAME_SHIFT: usize = 160;
/// FFT length: the frame zero-padded to the next power of two.
pub const FFT_LENGTH: usize = 512;
/// Sample rate the filterbank is laid out for, in Hz.
pub const FBANK_SAMPLE_RATE: f32 = 16_000.0;
/// Lower edge of the first mel filter, in Hz.
pub const LOW_FREQ: f32 = 20.0;
/// Upper edge of the last mel filter, in Hz (the Nyquist frequency).
pub const HIGH_FREQ: f32 = 8_000.0;
/// Pre-emphasis coefficient.
pub const PREEMPHASIS: f64 = 0.97;
/// Floor applied to mel energies before the log (float32 machine epsilon, as torchaudio uses).
pub const LOG_FLOOR: f32 = f32::EPSILON;

/// Spectrum bins the mel filters are evaluated on (the Nyquist bin always gets weight 0).
const FILTER_BINS: usize = FFT_LENGTH / 2;

/// Why a filterbank could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum FbankError {
    /// The input holds less than one frame.
    #[error(
        "audio has {samples} samples; the fbank needs at least {FRAME_LENGTH} (25 ms at 16 kHz)"
    )]
    TooShort {
        /// Number of samples given.
        samples: usize,
    },
    /// The caller's output buffer cannot hold every frame.
    #[error(
        "fbank output buffer holds {got} floats; {needed} are needed ({NUM_MEL_BINS} per frame)"
    )]
    BufferTooSmall {
        /// Floats the frames need.
        needed: usize,
        /// Floats the buffer holds.
        got: usize,
    },
    /// The FFT rejected its buffers (an internal invariant was broken).
    #[error("internal FFT error: {0}")]
    Fft(#[from] realfft::FftError),
}

/// How input shorter than one frame is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShortInput {
    /// Refuse it with [`FbankError::TooShort`], as torchaudio does.
    Error,
    /// Append zeros up to [`FRAME_LENGTH`] samples, giving exactly one frame.
    ZeroPad,
}

/// One triangular mel filter: its non-zero weights, starting at spectrum bin `first_bin`.
#[derive(Clone)]
struct MelFilter {
    first_bin: usize,
    weights: Vec<f64>,
}

/// Kaldi-compatible log-mel filterbank with precomputed window, mel weights and FFT plan (reusable without reallocating).
#[derive(Clone)]
pub struct Fbank {
    window: Vec<f64>,
    filters: Vec<MelFilter>,
    fft: Arc<dyn RealToComplex<f64>>,
    frame: Vec<f64>,
    spectrum: Vec<Complex<f64>>,
    scratch: Vec<Complex<f64>>,
    power: Vec<f64>,
}

impl Default for Fbank {
    fn default() -> Self {
        Self::new()
    }
}

impl Fbank {
    /// Builds the window, the mel filters and the FFT plan.
    pub fn new() -> Self {
        let fft = RealFftPlanner::<f64>::new().plan_fft_forward(FFT_LENGTH);
        let window = (0..FRAME_LENGTH)
            .map(|n| {
                let phase = 2.0 * std::f64::consts::PI * n as f64 / (FRAME_LENGTH - 1) as f64;
                0.5 - 0.5 * phase.cos()
            })
            .collect();
        Self {
            window,
            filters: mel_filters(),
            frame: fft.make_input_vec(),
            spectrum: fft.make_output_vec(),
            scratch: fft.make_scratch_vec(),
            power: vec![0.0; FFT_LENGTH / 2 + 1],
            fft,
        }
    }

    /// Number of whole frames in `n_samples` samples: `1 + (n - 400) / 160`, or 0 below 400.
    pub fn num_frames(n_samples: usize) -> usize {
        if n_samples < FRAME_LENGTH {
            0
        } else {
            1 + (n_samples - FRAME_LENGTH) / FRAME_SHIFT
        }
    }

    /// Log-mel of raw samples (no mean removal), (frames, 128); input shorter than a frame is handled as `short` says.
    pub fn compute(
        &mut self,
        samples: &[f32],
        short: ShortInput,
    ) -> Result<Array2<f32>, FbankError> {
        let mut padded = [0.0f32; FRAME_LENGTH];
        let samples = if samples.len() < FRAME_LENGTH {
            match short {
                ShortInput::Error => {
                    return Err(FbankError::TooShort {
                        samples: samples.len(),
                    });
                }
                ShortInput::ZeroPad => {
                    padded[..samples.len()].copy_from_slice(samples);
                    &padded[..]
                }
            }
        } else {
            samples
        };
        let mut out = Array2::zeros((Self::num_frames(samples.len()), NUM_MEL_BINS));
        for (frame, row) in samples
            .windows(FRAME_LENGTH)
            .step_by(FRAME_SHIFT)
            .zip(out.rows_mut())
        {
            self.log_mel_frame(frame, row)?;
        }
        Ok(out)
    }

    /// Same, writing into a caller-provided buffer of num_frames*128 floats; returns frames. Does not allocate.
    ///
    /// Input shorter than one frame is an error; a longer buffer is fine (only the first
    /// `frames * 128` floats are written). This allocation-free form is what a live audio
    /// loop calls; keep it allocation-free.
    pub fn compute_into(&mut self, samples: &[f32], out: &mut [f32]) -> Result<usize, FbankError> {
        let frames = Self::num_frames(samples.len());
        if frames == 0 {
            return Err(FbankError::TooShort {
                samples: samples.len(),
            });
        }
        let needed = frames * NUM_MEL_BINS;
        if out.len() < needed {
            return Err(FbankError::BufferTooSmall {
                needed,
                got: out.len(),
            });
        }
        for (frame, row) in samples
            .windows(FRAME_LENGTH)
            .step_by(FRAME_SHIFT)
            .zip(out.chunks_exact_mut(NUM_MEL_BINS))
        {
            self.log_mel_frame(frame, row)?;
        }
        Ok(frames)
    }

    /// Log-mel of one analysis frame of [`FRAME_LENGTH`] samples into the [`NUM_MEL_BINS`] floats of `out`; the streaming path's unit. Does not allocate.
    pub fn frame_into(
        &mut self,
        frame: &[f32; FRAME_LENGTH],
        out: &mut [f32; NUM_MEL_BINS],
    ) -> Result<(), FbankError> {
        self.log_mel_frame(frame, out)
    }

    /// Log-mel energies of one 400-sample frame, written to the 128 slots of `out`.
    fn log_mel_frame<'a>(
        &mut self,
        frame: &[f32],
        out: impl IntoIterator<Item = &'a mut f32>,
    ) -> Result<(), FbankError> {
        let mean = frame.iter().map(|&x| f64::from(x)).sum::<f64>() / FRAME_LENGTH as f64;
        let mut previous = f64::from(frame[0]) - mean;
        for ((dst, &x), &w) in self.frame.iter_mut().zip(frame).zip(&self.window) {
            let centred = f64::from(x) - mean;
            *dst = (centred - PREEMPHASIS * previous) * w;
            previous = centred;
        }
        self.frame[FRAME_LENGTH..].fill(0.0);
        self.fft
            .process_with_scratch(&mut self.frame, &mut self.spectrum, &mut self.scratch)?;
        for (p, c) in self.power.iter_mut().zip(&self.spectrum) {
            *p = c.norm_sqr();
        }
        let floor = f64::from(LOG_FLOOR);
        for (dst, filter) in out.into_iter().zip(&self.filters) {
            let energy: f64 = self.power[filter.first_bin..]
                .iter()
                .zip(&filter.weights)
                .map(|(p, w)| p * w)
                .sum();
            *dst = energy.max(floor).ln() as f32;
        }
        Ok(())
    }
}

/// The official clip path: subtract the waveform mean, then the fbank.
pub fn clip_log_mel(samples: &[f32], short: ShortInput) -> Result<Array2<f32>, FbankError> {
    let centred = subtract_mean(samples);
    Fbank::new().compute(&centred, short)
}

/// Samples minus their mean (`waveform - waveform.mean()`, in float32 as torch does).
fn subtract_mean(samples: &[f32]) -> Vec<f32> {
    if samples.is_empty() {
        return Vec::new();
    }
    let mean = (samples.iter().map(|&x| f64::from(x)).sum::<f64>() / samples.len() as f64) as f32;
    samples.iter().map(|&x| x - mean).collect()
}

/// HTK mel scale `1127 ln(1 + f / 700)`, in float32 as torchaudio's tensor `mel_scale`.
fn mel_f32(freq: f32) -> f32 {
    1127.0 * (1.0 + freq / 700.0).ln()
}

/// The 128 triangular filters of torchaudio's `get_mel_banks`, evaluated in float32 as it does.
///
/// Filter `i` spans mel `low + i * delta ..= low + (i + 2) * delta`, peaking at 1 in the
/// middle, with `delta = (mel(8000) - mel(20)) / 129` computed in f64 (Python floats) and the
/// per-filter edges, bin mels and slopes in float32 (torch tensors).
fn mel_filters() -> Vec<MelFilter> {
    let mel_scalar = |f: f64| 1127.0 * (1.0 + f / 700.0).ln();
    let mel_low = mel_scalar(f64::from(LOW_FREQ));
    let mel_high = mel_scalar(f64::from(HIGH_FREQ));
    let delta = ((mel_high - mel_low) / (NUM_MEL_BINS + 1) as f64) as f32;
    let mel_low = mel_low as f32;
    let bin_width = FBANK_SAMPLE_RATE / FFT_LENGTH as f32;
    let bin_mels: Vec<f32> = (0..FILTER_BINS)
        .map(|k| mel_f32(bin_width * k as f32))
        .collect();
    (0..NUM_MEL_BINS)
        .map(|i| {
            let i = i as f32;
            let left = mel_low + i * delta;
            let centre = mel_low + (i + 1.0) * delta;
            let right = mel_low + (i + 2.0) * delta;
            let weights: Vec<f32> = bin_mels
                .iter()
                .map(|&mel| {
                    let up = (mel - left) / (centre - left);
                    let down = (right - mel) / (right - centre);
                    up.min(down).max(0.0)
                })
                .collect();
            let first_bin = weights.iter().position(|&w| w > 0.0).unwrap_or(0);
            let last_bin = weights.iter().rposition(|&w| w > 0.0).map_or(0, |k| k + 1);
            MelFilter {
                first_bin,
                weights: weights[first_bin..last_bin.max(first_bin)]
                    .iter()
                    .map(|&w| f64::from(w))
                    .collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_counts_follow_snip_edges() {
        assert_eq!(Fbank::num_frames(0), 0);
        assert_eq!(Fbank::num_frames(399), 0);
        assert_eq!(Fbank::num_frames(400), 1);
        assert_eq!(Fbank::num_frames(559), 1);
        assert_eq!(Fbank::num_frames(560), 2);
        assert_eq!(Fbank::num_frames(16_000), 98);
    }

    #[test]
    fn filters_are_triangles_within_the_band() {
        let filters = mel_filters();
        assert_eq!(filters.len(), NUM_MEL_BINS);
        // The lowest filters are narrower than a bin and may cover none.
        assert!(filters[0].weights.is_empty() || filters[0].weights.len() <= 2);
        for f in &filters {
            assert!(f.first_bin + f.weights.len() <= FILTER_BINS);
            assert!(f.weights.iter().all(|&w| w > 0.0 && w <= 1.0));
        }
        // High filters span several bins and peak close to 1.
        let top = &filters[NUM_MEL_BINS - 1];
        assert!(top.weights.len() > 5);
        assert!(top.weights.iter().cloned().fold(0.0, f64::max) > 0.9);
        assert_eq!(top.first_bin + top.weights.len(), FILTER_BINS);
    }

    #[test]
    fn silence_gives_the_floor() {
        let out = Fbank::new()
            .compute(&[0.0; 1000], ShortInput::Error)
            .unwrap();
        assert_eq!(out.dim(), (4, NUM_MEL_BINS));
        let floor = LOG_FLOOR.ln();
        assert!(out.iter().all(|&v| (v - floor).abs() < 1e-6));
    }

    #[test]
    fn short_input_is_refused_or_padded() {
        let mut fbank = Fbank::new();
        let err = fbank.compute(&[0.1; 10], ShortInput::Error).unwrap_err();
        assert!(matches!(err, FbankError::TooShort { samples: 10 }));
        assert_eq!(
            err.to_string(),
            "audio has 10 samples; the fbank needs at least 400 (25 ms at 16 kHz)"
        );
        let padded = fbank.compute(&[0.1; 10], ShortInput::ZeroPad).unwrap();
        assert_eq!(padded.dim(), (1, NUM_MEL_BINS));
        let mut manual = [0.0f32; FRAME_LENGTH];
        manual[..10].fill(0.1);
        assert_eq!(padded, fbank.compute(&manual, ShortInput::Error).unwrap());
    }

    #[test]
    fn compute_into_checks_the_buffer() {
        let mut fbank = Fbank::new();
        let mut out = vec![0.0; NUM_MEL_BINS];
        let err = fbank.compute_into(&[0.0; 560], &mut out).unwrap_err();
        assert!(matches!(
            err,
            FbankError::BufferTooSmall {
                needed: 256,
                got: 128
            }
        ));
        assert!(matches!(
            fbank.compute_into(&[0.0; 399], &mut out),
            Err(FbankError::TooShort { samples: 399 })
        ));
    }

    #[test]
    fn a_tone_peaks_in_the_filter_centred_on_it() {
        let samples: Vec<f32> = (0..4000)
            .map(|n| (2.0 * std::f32::consts::PI * 1000.0 * n as f32 / 16_000.0).sin() * 0.5)
            .collect();
        let out = clip_log_mel(&samples, ShortInput::Error).unwrap();
        let peak = out
            .row(3)
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
            .unwrap();
        // Filter i peaks at mel(20 Hz) + (i + 1) * delta, delta = (mel(8 kHz) - mel(20 Hz)) / 129.
        let mel = |f: f64| 1127.0 * (1.0 + f / 700.0).ln();
        let delta = (mel(8000.0) - mel(20.0)) / 129.0;
        let centre = mel(20.0) + (peak as f64 + 1.0) * delta;
        assert!((centre - mel(1000.0)).abs() < delta, "peak filter {peak}");
    }
}
