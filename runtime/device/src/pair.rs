//! A helper thread that runs one encoder of a frame pair while the caller runs the other, each on its own core.
//!
//! On two cores this beats running the encoders in turn with two threads each: a product
//! split over two threads runs well under twice as fast as on one (measured on the full-size
//! model: 288 + 273 ms on one thread each, 354 ms in turn on two). Small encoders cannot
//! afford to wake a sleeping thread (tens to hundreds of microseconds on a virtual machine), so
//! the helper stays awake while the caller finishes its half of the pair and for [`SPIN`] after,
//! before it parks: back-to-back pairs find it awake (and on its own core, where a woken thread
//! may first land beside its waker), and an idle run costs no core.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::bundle::{BundleError, Embedding};

/// How long the helper spins for the next job before it parks.
const SPIN: Duration = Duration::from_micros(500);

const IDLE: u8 = 0;
const POSTED: u8 = 1;
const DONE: u8 = 2;
const STOP: u8 = 3;

/// What the helper runs: one input into one embedding.
pub(crate) type Work = dyn Fn(&[f32], &mut Embedding) -> Result<(), BundleError> + Send + Sync;

/// The input and output of the job in flight.
#[derive(Clone, Copy)]
struct Job {
    input: *const f32,
    len: usize,
    out: *mut Embedding,
}

// SAFETY: the caller of `Helper::run` keeps the input and output alive and untouched until the
// helper reports the job done.
unsafe impl Send for Job {}

struct Shared {
    state: AtomicU8,
    sleeping: AtomicBool,
    job: Mutex<Option<Job>>,
    result: Mutex<Option<Result<f64, BundleError>>>,
}

/// A thread that runs [`Work`] on inputs posted one at a time.
pub(crate) struct Helper {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Helper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Helper")
    }
}

impl Helper {
    /// Starts the thread, named `name`, that runs `work`.
    pub(crate) fn spawn(name: &str, work: Box<Work>) -> std::io::Result<Helper> {
        let shared = Arc::new(Shared {
            state: AtomicU8::new(IDLE),
            sleeping: AtomicBool::new(false),
            job: Mutex::new(None),
            result: Mutex::new(None),
        });
        let theirs = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || serve(&theirs, &*work))?;
        Ok(Helper {
            shared,
            thread: Some(thread),
        })
    }

    /// Runs the work on `input` into `out` on the helper while `here` runs on this thread; returns the helper's seconds and `here`'s result.
    pub(crate) fn run<R>(
        &mut self,
        input: &[f32],
        out: &mut Embedding,
        here: impl FnOnce() -> R,
    ) -> (Result<f64, BundleError>, R) {
        let job = Job {
            input: input.as_ptr(),
            len: input.len(),
            out,
        };
        *lock(&self.shared.job) = Some(job);
        self.shared.state.store(POSTED, Ordering::SeqCst);
        if self.shared.sleeping.load(Ordering::SeqCst)
            && let Some(thread) = &self.thread
        {
            thread.thread().unpark();
        }
        // Until the helper is done with the job, the caller's input and output must stay put,
        // even if `here` panics: the guard waits for it on the way out.
        let pending = Pending(&self.shared);
        let mine = here();
        (pending.finish(), mine)
    }
}

/// A posted job not yet collected: collecting (or dropping) it waits until the helper is done.
struct Pending<'a>(&'a Shared);

impl Pending<'_> {
    /// Waits for the helper and takes its result.
    fn finish(self) -> Result<f64, BundleError> {
        self.wait();
        let result = lock(&self.0.result).take().unwrap_or_else(|| {
            Err(BundleError::Run(
                "the pair helper finished without a result".into(),
            ))
        });
        self.0.state.store(IDLE, Ordering::Release);
        std::mem::forget(self);
        result
    }

    /// Spins (then yields) until the helper reports the job done.
    fn wait(&self) {
        let mut spins = 0u32;
        while self.0.state.load(Ordering::Acquire) != DONE {
            spins = spins.saturating_add(1);
            if spins < 1 << 16 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.wait();
        lock(&self.0.result).take();
        self.0.state.store(IDLE, Ordering::Release);
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        self.shared.state.store(STOP, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

/// A mutex's contents, whether or not a panic poisoned it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The helper's loop: wait (spinning, then parked) for a job, run it, report it.
fn serve(shared: &Shared, work: &Work) {
    loop {
        let mut since = Instant::now();
        let state = loop {
            let state = shared.state.load(Ordering::Acquire);
            if state == POSTED || state == STOP {
                break state;
            }
            if state == DONE {
                // The caller is still on its half of the pair: stay awake, and count the spin
                // from when it collects.
                since = Instant::now();
                std::hint::spin_loop();
                continue;
            }
            if since.elapsed() < SPIN {
                std::hint::spin_loop();
                continue;
            }
            shared.sleeping.store(true, Ordering::SeqCst);
            if shared.state.load(Ordering::SeqCst) == IDLE {
                std::thread::park();
            }
            shared.sleeping.store(false, Ordering::SeqCst);
        };
        if state == STOP {
            return;
        }
        let result = match lock(&shared.job).take() {
            Some(job) => {
                let t0 = Instant::now();
                // SAFETY: `Helper::run` keeps the job's input and output alive and untouched
                // until it sees DONE.
                let (input, out) = unsafe {
                    (
                        std::slice::from_raw_parts(job.input, job.len),
                        &mut *job.out,
                    )
                };
                match std::panic::catch_unwind(AssertUnwindSafe(|| work(input, out))) {
                    Ok(Ok(())) => Ok(t0.elapsed().as_secs_f64()),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(BundleError::Run("the encoder panicked".into())),
                }
            }
            None => Err(BundleError::Run("the pair helper found no job".into())),
        };
        *lock(&shared.result) = Some(result);
        shared.state.store(DONE, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summing() -> Box<Work> {
        Box::new(|input: &[f32], out: &mut Embedding| {
            if input.is_empty() {
                return Err(BundleError::Run("empty".into()));
            }
            out.global.clear();
            out.global.push(input.iter().sum());
            Ok(())
        })
    }

    #[test]
    fn jobs_run_beside_the_caller_awake_or_parked() {
        let mut helper = Helper::spawn("test-helper", summing()).unwrap();
        let mut out = Embedding::default();
        for round in 0..50 {
            let input: Vec<f32> = (0..round + 1).map(|i| i as f32).collect();
            let (theirs, mine) = helper.run(&input, &mut out, || round * 2);
            assert!(theirs.unwrap() >= 0.0);
            assert_eq!(mine, round * 2);
            assert_eq!(out.global, vec![(round * (round + 1) / 2) as f32]);
            if round % 10 == 0 {
                // Long enough for the helper to park.
                std::thread::sleep(SPIN * 4);
            }
        }
        let (theirs, ()) = helper.run(&[], &mut out, || ());
        assert!(matches!(theirs, Err(BundleError::Run(m)) if m == "empty"));
        // The caller's half panics: the unwinding waits for the helper, which stays usable.
        let input = vec![2.0f32; 1000];
        let unwound = std::panic::catch_unwind(AssertUnwindSafe(|| {
            helper.run(&input, &mut out, || panic!("caller's half"))
        }));
        assert!(unwound.is_err());
        assert_eq!(out.global, vec![2000.0]);
        let (theirs, ()) = helper.run(&[1.0, 2.0], &mut out, || ());
        assert!(theirs.is_ok());
        assert_eq!(out.global, vec![3.0]);
        let panicking: Box<Work> = Box::new(|_: &[f32], _: &mut Embedding| panic!("boom"));
        let mut helper = Helper::spawn("test-panic", panicking).unwrap();
        let (theirs, ()) = helper.run(&[1.0], &mut out, || ());
        assert!(theirs.is_err());
        drop(helper);
    }
}
