//! The one monotonic clock that audio and video timestamps share, and the estimate of when a stream's first sample was captured.

/// Nanoseconds of `CLOCK_MONOTONIC`, the clock V4L2 stamps buffers with.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Estimates the capture time of item 0 of a stream delivered in bursts at a nominal rate.
///
/// Item `n` arriving at `t` was captured at or before `t`, so `t - n / rate` bounds the
/// origin from above; the smallest bound seen is the estimate (arrival delays only ever add).
/// The bound may rise by `drift` (fraction of elapsed time) so a device clock that runs slow
/// against the system clock is followed.
#[derive(Debug, Clone, Copy)]
pub struct OriginEstimator {
    rate: f64,
    drift: f64,
    origin_ns: Option<f64>,
    last_arrival_ns: u64,
}

impl OriginEstimator {
    /// An estimator for a stream of `rate` items per second, following up to 200 ppm of drift.
    pub fn new(rate: f64) -> Self {
        Self {
            rate,
            drift: 200e-6,
            origin_ns: None,
            last_arrival_ns: 0,
        }
    }

    /// Records that items `0..count` had arrived at `arrival_ns`; returns the origin estimate.
    pub fn observe(&mut self, arrival_ns: u64, count: u64) -> u64 {
        let bound = arrival_ns as f64 - count as f64 * 1e9 / self.rate;
        let origin = match self.origin_ns {
            None => bound,
            Some(prev) => {
                let elapsed = arrival_ns.saturating_sub(self.last_arrival_ns) as f64;
                bound.min(prev + self.drift * elapsed)
            }
        };
        self.origin_ns = Some(origin);
        self.last_arrival_ns = arrival_ns;
        origin.max(0.0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_is_the_earliest_consistent_bound() {
        let mut e = OriginEstimator::new(100.0);
        // Items arrive in bursts, late by 0..30 ms; the true origin is 1 s.
        let late = [30u64, 5, 20, 0, 12];
        let mut origin = 0;
        for (i, l) in late.iter().enumerate() {
            let n = (i as u64 + 1) * 10;
            origin = e.observe(1_000_000_000 + n * 10_000_000 + l * 1_000_000, n);
        }
        // Exact up to the drift allowance (200 ppm of the 112 ms since the earliest bound).
        assert!(
            (1_000_000_000..1_000_000_000 + 25_000).contains(&origin),
            "{origin}"
        );
        assert!(now_ns() > 0);
    }
}
