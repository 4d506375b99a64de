//! Live audio capture: ALSA or ffmpeg in, mono 16 kHz chunks with capture timestamps out, reopened with backoff when the source fails.

use std::sync::atomic::Ordering;
use std::time::Duration;

use heapless::spsc::Producer;
use tracing::{info, warn};

use cavsync_core::preprocess::audio::StreamResampler;
use cavsync_core::preprocess::hygiene::{AudioFault, AudioHealth, RANGE_LIMIT};

use crate::child::{FfmpegChild, ReadOutcome};
use crate::clock::{OriginEstimator, now_ns};
use crate::pipeline::{Backoff, Shared};
use crate::source::{AudioSpec, SourceError, ffmpeg_command};

/// Samples (at the model's rate) per queued chunk: 20 ms at 16 kHz.
pub const CHUNK: usize = 320;
/// Longest wait for the device before the capture loop looks at the stop flag again.
const POLL: Duration = Duration::from_millis(100);

/// A piece of the mono model-rate stream as the capture thread hands it to inference.
#[derive(Debug, Clone)]
pub struct AudioChunk {
    /// Samples; the first `len` are valid.
    pub samples: [f32; CHUNK],
    /// Valid samples.
    pub len: usize,
    /// Zero samples to insert before this chunk: the stretch the source was away.
    pub gap: u64,
    /// Estimated capture time (monotonic ns) of sample 0 of the stream.
    pub origin_ns: u64,
    /// Non-finite samples found in the chunk (replaced by zeros, flagged downstream).
    pub bad: u32,
    /// The worst fault of the source's 0.1 s windows that closed while this chunk was made.
    pub fault: Option<AudioFault>,
}

impl Default for AudioChunk {
    fn default() -> Self {
        Self {
            samples: [0.0; CHUNK],
            len: 0,
            gap: 0,
            origin_ns: 0,
            bad: 0,
            fault: None,
        }
    }
}

/// What the audio device actually delivers after negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioFormat {
    /// Sample rate, Hz.
    pub rate: u32,
    /// Interleaved channels.
    pub channels: u16,
}

/// An open audio input delivering interleaved native-rate samples.
pub enum AudioInput {
    /// An ALSA capture PCM.
    Alsa(AlsaCapture),
    /// An ffmpeg child writing mono f32 at the model's rate.
    Ffmpeg(FfmpegChild),
}

impl AudioInput {
    /// Opens `spec`, asking for `rate` Hz and `channels` (ALSA takes the nearest it offers; ffmpeg converts to mono `model_rate`).
    pub fn open(
        spec: &AudioSpec,
        rate: u32,
        channels: u16,
        model_rate: u32,
    ) -> Result<(Self, AudioFormat), SourceError> {
        match spec {
            AudioSpec::Alsa(pcm) => {
                let capture = AlsaCapture::open(pcm, rate, channels)?;
                let format = capture.format;
                Ok((Self::Alsa(capture), format))
            }
            AudioSpec::Ffmpeg(input) => {
                let mut cmd = ffmpeg_command(input);
                cmd.args(["-vn", "-ac", "1", "-ar", &model_rate.to_string()]);
                cmd.args(["-f", "f32le", "pipe:1"]);
                let child = FfmpegChild::spawn(cmd, &spec.to_string())?;
                Ok((
                    Self::Ffmpeg(child),
                    AudioFormat {
                        rate: model_rate,
                        channels: 1,
                    },
                ))
            }
        }
    }

    /// Reads mono samples into `mono` (using `raw` as byte scratch); returns how many, 0 when nothing arrived within the poll time.
    fn read_mono(&mut self, raw: &mut [u8], mono: &mut [f32]) -> Result<usize, SourceError> {
        match self {
            Self::Alsa(capture) => capture.read_mono(mono),
            Self::Ffmpeg(child) => {
                let want = (mono.len() * 4).min(raw.len());
                match child.read(&mut raw[..want], POLL)? {
                    ReadOutcome::Idle => Ok(0),
                    ReadOutcome::Data(n) => {
                        // f32 samples may straddle reads: keep reading the remainder of the last one.
                        let mut n = n;
                        while n % 4 != 0 {
                            match child.read(&mut raw[n..n + (4 - n % 4)], POLL)? {
                                ReadOutcome::Data(m) => n += m,
                                ReadOutcome::Idle => {}
                            }
                        }
                        Ok(f32le_to_mono(&raw[..n], mono))
                    }
                }
            }
        }
    }
}

/// Decodes the little-endian f32 samples of `raw` (an ffmpeg `f32le` stream) into `mono`; returns how many were written (a trailing partial sample is left out).
pub fn f32le_to_mono(raw: &[u8], mono: &mut [f32]) -> usize {
    let mut n = 0;
    for (dst, b) in mono.iter_mut().zip(raw.chunks_exact(4)) {
        *dst = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        n += 1;
    }
    n
}

/// Mixes interleaved 16-bit frames of `channels` (at least 1) down to mono in [-1, 1] in `mono`; returns the frames written.
pub fn i16_to_mono(samples: &[i16], channels: usize, mono: &mut [f32]) -> usize {
    let channels = channels.max(1);
    let mut n = 0;
    for (dst, frame) in mono.iter_mut().zip(samples.chunks_exact(channels)) {
        let sum: i32 = frame.iter().map(|&s| i32::from(s)).sum();
        *dst = sum as f32 / (32768.0 * channels as f32);
        n += 1;
    }
    n
}

/// Replaces every non-finite sample by zero and clamps the rest to ±[`RANGE_LIMIT`] (the hygiene check has already flagged those windows), so the resampler's FFT stays finite; returns how many were non-finite.
pub fn bound_samples(samples: &mut [f32]) -> u32 {
    let mut bad = 0;
    for s in samples {
        if s.is_finite() {
            *s = s.clamp(-RANGE_LIMIT, RANGE_LIMIT);
        } else {
            *s = 0.0;
            bad += 1;
        }
    }
    bad
}

/// An ALSA capture PCM opened for interleaved 16-bit samples.
pub struct AlsaCapture {
    name: String,
    pcm: alsa::PCM,
    format: AudioFormat,
    xruns: u64,
    buf: Vec<i16>,
}

impl AlsaCapture {
    /// Opens PCM `name` for capture at the nearest rate to `rate` and `channels` channels, S16.
    pub fn open(name: &str, rate: u32, channels: u16) -> Result<Self, SourceError> {
        let fail = |what: &str, e: alsa::Error| SourceError::Open {
            source_name: format!("alsa:{name}"),
            reason: format!("{what}: {e}"),
        };
        let pcm = alsa::PCM::new(name, alsa::Direction::Capture, false)
            .map_err(|e| fail("no such capture device", e))?;
        {
            let hwp = alsa::pcm::HwParams::any(&pcm).map_err(|e| fail("hardware parameters", e))?;
            hwp.set_access(alsa::pcm::Access::RWInterleaved)
                .map_err(|e| fail("interleaved access", e))?;
            hwp.set_format(alsa::pcm::Format::s16())
                .map_err(|e| fail("16-bit samples", e))?;
            hwp.set_channels(u32::from(channels))
                .map_err(|e| fail(&format!("{channels} channels"), e))?;
            hwp.set_rate(rate, alsa::ValueOr::Nearest)
                .map_err(|e| fail(&format!("rate {rate} Hz"), e))?;
            let period = i64::from(rate / 100).max(32);
            hwp.set_period_size_near(period, alsa::ValueOr::Nearest)
                .map_err(|e| fail("period size", e))?;
            hwp.set_buffer_size_near(period * 16)
                .map_err(|e| fail("buffer size", e))?;
            pcm.hw_params(&hwp)
                .map_err(|e| fail("applying parameters", e))?;
        }
        let (got_rate, got_channels, period) = {
            let hwp = pcm
                .hw_params_current()
                .map_err(|e| fail("reading parameters back", e))?;
            (
                hwp.get_rate().map_err(|e| fail("rate", e))?,
                hwp.get_channels().map_err(|e| fail("channels", e))?,
                hwp.get_period_size().map_err(|e| fail("period size", e))?,
            )
        };
        Ok(Self {
            name: format!("alsa:{name}"),
            pcm,
            format: AudioFormat {
                rate: got_rate,
                channels: got_channels as u16,
            },
            xruns: 0,
            // One period per read, as the device delivers it (longer reads confuse some plugins).
            buf: vec![
                0;
                usize::try_from(period).unwrap_or(1).clamp(1, 8192)
                    * got_channels.max(1) as usize
            ],
        })
    }

    /// The negotiated format.
    pub fn format(&self) -> AudioFormat {
        self.format
    }

    /// Overruns recovered so far.
    pub fn xruns(&self) -> u64 {
        self.xruns
    }

    /// Reads up to `mono.len()` frames, mixed to mono in [-1, 1]; recovers from overruns.
    pub fn read_mono(&mut self, mono: &mut [f32]) -> Result<usize, SourceError> {
        let channels = usize::from(self.format.channels.max(1));
        let ready = self.pcm.wait(Some(POLL.as_millis() as u32)).unwrap_or(true);
        if !ready {
            return Ok(0);
        }
        let frames = mono.len().min(self.buf.len() / channels);
        let samples = &mut self.buf[..frames * channels];
        let io = self.pcm.io_i16().map_err(|e| SourceError::Read {
            source_name: self.name.clone(),
            reason: e.to_string(),
        })?;
        match io.readi(samples) {
            Ok(n) => Ok(i16_to_mono(&samples[..n * channels], channels, mono)),
            Err(e) => match self.pcm.try_recover(e, true) {
                Ok(()) => {
                    self.xruns += 1;
                    warn!(source = %self.name, xruns = self.xruns, "audio overrun recovered");
                    Ok(0)
                }
                Err(e) => Err(SourceError::Read {
                    source_name: self.name.clone(),
                    reason: e.to_string(),
                }),
            },
        }
    }
}

/// The more severe of two optional faults.
fn worse(a: Option<AudioFault>, b: Option<AudioFault>) -> Option<AudioFault> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The audio capture thread: reads `input`, resamples to the model rate, and queues chunks until stopped; reopens `spec` with backoff when it fails.
pub fn capture_audio(
    spec: &AudioSpec,
    opened: (AudioInput, AudioFormat),
    request: AudioFormat,
    model_rate: u32,
    producer: &mut Producer<'_, Box<AudioChunk>>,
    free: &mut heapless::spsc::Consumer<'_, Box<AudioChunk>>,
    shared: &Shared,
) {
    let (mut input, mut format) = opened;
    let mut raw = vec![0u8; 8192 * 8];
    let mut mono = vec![0.0f32; 8192];
    let mut offset: u64 = 0;
    let mut pending_gap: u64 = 0;
    let mut last_origin: Option<u64> = None;
    let mut backoff = Backoff::new();
    loop {
        let mut resampler = match StreamResampler::new(format.rate, model_rate) {
            Ok(r) => r,
            Err(e) => {
                shared.fatal(format!("{spec}: {e}"));
                return;
            }
        };
        let delay_ns = resampler.delay_samples() as u64 * 1_000_000_000 / u64::from(model_rate);
        let mut estimator = OriginEstimator::new(f64::from(format.rate));
        // Faults are judged on the samples as the device gives them, before repair and resampling.
        let mut health = AudioHealth::new(format.rate);
        let mut native: u64 = 0;
        let mut produced: u64 = 0;
        let mut chunk: Option<Box<AudioChunk>> = None;
        let mut failure: Option<SourceError> = None;
        while !shared.stopping() {
            let n = match input.read_mono(&mut raw, &mut mono) {
                Ok(n) => n,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            if n == 0 {
                continue;
            }
            backoff.reset();
            native += n as u64;
            let origin_native = estimator.observe(now_ns(), native);
            // Sample k of the model-rate stream (k counted from this session's start) was captured at origin + (k - delay) / rate.
            let offset_ns = offset * 1_000_000_000 / u64::from(model_rate);
            let origin = origin_native.saturating_sub(delay_ns + offset_ns);
            last_origin = Some(origin);
            let mut fault: Option<AudioFault> = None;
            health.push(&mono[..n], |span| {
                shared.counters.audio_fault_windows[span.fault.index()]
                    .fetch_add(1, Ordering::Relaxed);
                fault = worse(fault, Some(span.fault));
            });
            let mut bad = bound_samples(&mut mono[..n]);
            let result = resampler.push(&mono[..n], |block| {
                for piece in block.chunks(CHUNK) {
                    // Every sample of the stream reaches inference, as itself or, when a queue
                    // is full, as silence counted into the next chunk's gap: the stream keeps
                    // its length, so frame times keep mapping to the right fbank rows.
                    produced += piece.len() as u64;
                    let mut c = match chunk.take().or_else(|| free.dequeue()) {
                        Some(c) => c,
                        None => {
                            shared
                                .counters
                                .audio_overflow
                                .fetch_add(1, Ordering::Relaxed);
                            pending_gap += piece.len() as u64;
                            continue;
                        }
                    };
                    c.samples[..piece.len()].copy_from_slice(piece);
                    c.len = piece.len();
                    c.gap = std::mem::take(&mut pending_gap);
                    c.origin_ns = origin;
                    c.bad = std::mem::take(&mut bad);
                    c.fault = fault.take();
                    if let Err(back) = producer.enqueue(c) {
                        shared
                            .counters
                            .audio_overflow
                            .fetch_add(1, Ordering::Relaxed);
                        pending_gap += back.gap + back.len as u64;
                        bad += back.bad;
                        fault = worse(fault, back.fault);
                        chunk = Some(back);
                    }
                }
            });
            shared.wake();
            if let Err(e) = result {
                shared.fatal(format!("{spec}: {e}"));
                return;
            }
        }
        offset += produced;
        drop(input);
        let reopened = backoff.reopen(
            shared,
            "audio",
            spec,
            failure,
            &shared.counters.audio_reopens,
            || AudioInput::open(spec, request.rate, request.channels, model_rate).map(Some),
        );
        let Some((i, f)) = reopened else {
            return;
        };
        info!(source = %spec, rate = f.rate, channels = f.channels, "audio format after reopening");
        // The stretch it was away becomes silence, so sample indices keep following the clock.
        if let Some(origin) = last_origin {
            // A gap not yet delivered (the source failed again before giving a sample) is kept
            // and grows: the stream must stay as long as the clock says.
            let now_index = now_ns().saturating_sub(origin) * u64::from(model_rate) / 1_000_000_000;
            let gap = now_index.saturating_sub(offset);
            pending_gap += gap;
            offset += gap;
            shared
                .counters
                .audio_gap_samples
                .fetch_add(gap, Ordering::Relaxed);
        }
        input = i;
        format = f;
    }
}
