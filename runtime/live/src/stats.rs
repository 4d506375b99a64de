//! Per-stage latency histograms (fixed buckets, allocation-free) and the run's counters.

use std::sync::atomic::{AtomicU64, Ordering};

use cavsync_core::preprocess::hygiene::AudioFault;

/// Bucket width of the latency histograms, microseconds.
const BUCKET_US: u64 = 50;
/// Buckets: 0 to 2 s; slower samples land in the last one.
const BUCKETS: usize = 40_000;

/// The pipeline's stages, in order.
pub const STAGES: [&str; 8] = [
    "capture",
    "wait",
    "preprocess",
    "audio",
    "visual",
    "localize",
    "output",
    "total",
];

/// A latency histogram with 50 µs buckets up to 2 s.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u32>,
    total: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            total: 0,
        }
    }
}

impl Histogram {
    /// Adds one sample of `ns` nanoseconds.
    pub fn add(&mut self, ns: u64) {
        let bucket = ((ns / 1_000) / BUCKET_US).min(BUCKETS as u64 - 1) as usize;
        self.counts[bucket] += 1;
        self.total += 1;
    }

    /// Samples added.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The `q` quantile (0..=1) in milliseconds (the upper edge of its bucket); 0 when empty.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank {
                return ((i as u64 + 1) * BUCKET_US) as f64 / 1_000.0;
            }
        }
        (BUCKETS as u64 * BUCKET_US) as f64 / 1_000.0
    }

    /// Forgets every sample.
    pub fn clear(&mut self) {
        self.counts.fill(0);
        self.total = 0;
    }
}

/// p50, p95 and p99 of one stage, milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// One histogram per stage of [`STAGES`].
#[derive(Debug, Clone, Default)]
pub struct StageStats {
    stages: [Histogram; 8],
}

impl StageStats {
    /// Adds one frame's stage durations (ns, in [`STAGES`] order).
    pub fn add(&mut self, durations: &[u64; 8]) {
        for (h, &d) in self.stages.iter_mut().zip(durations) {
            h.add(d);
        }
    }

    /// Frames recorded.
    pub fn frames(&self) -> u64 {
        self.stages[0].count()
    }

    /// The percentiles of every stage, in [`STAGES`] order.
    pub fn percentiles(&self) -> [Percentiles; 8] {
        std::array::from_fn(|i| Percentiles {
            p50: self.stages[i].quantile_ms(0.50),
            p95: self.stages[i].quantile_ms(0.95),
            p99: self.stages[i].quantile_ms(0.99),
        })
    }

    /// Forgets every sample.
    pub fn clear(&mut self) {
        for h in &mut self.stages {
            h.clear();
        }
    }
}

/// Counters the capture threads and inference share.
#[derive(Debug, Default)]
pub struct Counters {
    /// Frames the camera delivered.
    pub frames_captured: AtomicU64,
    /// Frames localized.
    pub frames_processed: AtomicU64,
    /// Frames skipped because a newer one was ready (inference behind) or the queue was full.
    pub frames_dropped: AtomicU64,
    /// Frames dropped because their audio never arrived in time.
    pub frames_late: AtomicU64,
    /// Audio chunks lost because the queue to inference was full.
    pub audio_overflow: AtomicU64,
    /// Times the audio source was reopened.
    pub audio_reopens: AtomicU64,
    /// Times the video source was reopened.
    pub video_reopens: AtomicU64,
    /// Silent samples inserted for stretches the audio source was away.
    pub audio_gap_samples: AtomicU64,
    /// Non-finite audio samples replaced by zeros.
    pub audio_bad_samples: AtomicU64,
    /// Faulty 0.1 s audio windows, by fault ([`AudioFault::ALL`] order).
    pub audio_fault_windows: [AtomicU64; AudioFault::ALL.len()],
    /// Frames not encoded because their audio segment held a fault or a gap.
    pub frames_audio_fault: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CounterSnapshot {
    /// Frames the camera delivered.
    pub frames_captured: u64,
    /// Frames localized.
    pub frames_processed: u64,
    /// Frames skipped for newer ones.
    pub frames_dropped: u64,
    /// Frames whose audio never arrived in time.
    pub frames_late: u64,
    /// Audio chunks lost to a full queue.
    pub audio_overflow: u64,
    /// Audio source reopens.
    pub audio_reopens: u64,
    /// Video source reopens.
    pub video_reopens: u64,
    /// Silent samples inserted for audio gaps.
    pub audio_gap_samples: u64,
    /// Non-finite audio samples replaced by zeros.
    pub audio_bad_samples: u64,
    /// Faulty 0.1 s audio windows: non-finite, out of range, clipped, stuck, silent.
    pub audio_fault_windows: FaultCounts,
    /// Frames not encoded because of an audio fault or gap.
    pub frames_audio_fault: u64,
}

/// Faulty audio windows by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct FaultCounts {
    /// Windows with NaN or infinite samples.
    pub non_finite: u64,
    /// Windows with samples far beyond full scale.
    pub out_of_range: u64,
    /// Windows clipped at full scale.
    pub clipped: u64,
    /// Windows stuck at one non-zero value.
    pub stuck: u64,
    /// Windows of digital silence.
    pub silent: u64,
}

impl Counters {
    /// The current values.
    pub fn snapshot(&self) -> CounterSnapshot {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CounterSnapshot {
            frames_captured: l(&self.frames_captured),
            frames_processed: l(&self.frames_processed),
            frames_dropped: l(&self.frames_dropped),
            frames_late: l(&self.frames_late),
            audio_overflow: l(&self.audio_overflow),
            audio_reopens: l(&self.audio_reopens),
            video_reopens: l(&self.video_reopens),
            audio_gap_samples: l(&self.audio_gap_samples),
            audio_bad_samples: l(&self.audio_bad_samples),
            audio_fault_windows: {
                let w = |f: AudioFault| l(&self.audio_fault_windows[f.index()]);
                FaultCounts {
                    non_finite: w(AudioFault::NonFinite),
                    out_of_range: w(AudioFault::OutOfRange),
                    clipped: w(AudioFault::Clipped),
                    stuck: w(AudioFault::Stuck),
                    silent: w(AudioFault::Silent),
                }
            },
            frames_audio_fault: l(&self.frames_audio_fault),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_buckets() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile_ms(0.5), 0.0);
        for ms in 1..=100u64 {
            h.add(ms * 1_000_000 - 1);
        }
        assert_eq!(h.quantile_ms(0.5), 50.0);
        assert_eq!(h.quantile_ms(0.99), 99.0);
        h.add(10_000_000_000);
        assert_eq!(h.quantile_ms(1.0), 2_000.0);
        h.clear();
        assert_eq!(h.count(), 0);
    }
}
