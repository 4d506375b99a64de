//! The threads of a threaded plan, which share its parallel nodes and stay awake while it runs.
//!
//! A plan's parallel nodes are short (microseconds to a millisecond), and a thread put to sleep
//! between them costs tens of microseconds to wake on a virtual machine, once per node: with
//! rayon's pool, whose idle threads sleep, the demo model's visual encoder ran no faster on two
//! threads than on one. A [`Team`]'s helpers spin between parts for [`SPIN`] before they park,
//! and a run wakes parked ones first ([`Team::wake`]), so that a plan's nodes find them awake.
//! The protocol is this module's own: a run publishes its parts under a new odd epoch; a helper
//! counts itself in (`active`), re-reads the epoch and takes parts only while it is the same;
//! the run closes the epoch (even) once every part is done and returns once no helper is in.
//! Parking is `std::thread::park` against a per-helper `sleeping` flag, both sides sequentially
//! consistent, so a wake-up is never lost.
//!
//! Operators cut their work with [`parts`] and run it with [`run`], on the team of the plan in
//! progress ([`with`]) or, without one, on the calling thread alone.

use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Multiply-adds below which an x86-64 product runs on the calling thread alone: handing half
/// of it to an awake helper costs about a microsecond.
#[cfg(target_arch = "x86_64")]
pub(crate) const MIN_FMA: usize = 1 << 17;
/// Values below which a row operator runs on the calling thread alone (an exponential or an
/// error function costs a hundred multiply-adds).
const MIN_VALUES: usize = 1 << 14;
/// How long a helper spins for the next part before it parks.
const SPIN: Duration = Duration::from_micros(300);
/// Spins on a flag before each wait also yields the core (to a thread that may be what it
/// waits for, where threads outnumber cores).
const PURE_SPINS: u32 = 1 << 12;

/// A job's parts as the helpers see them: the work for part `i`, erased to `'static` (the run
/// that posted it outlives every helper that reads it: it waits for `active` to fall to 0).
type Part = dyn Fn(usize) + Sync;

struct Shared {
    /// Odd while a job is open, even otherwise; every post and every wake changes it.
    epoch: AtomicUsize,
    /// The open job's work and its number of parts.
    job: Mutex<Option<(&'static Part, usize)>>,
    /// The next part to take.
    next: AtomicUsize,
    /// Parts finished (or panicked).
    done: AtomicUsize,
    /// Helpers inside the open job.
    active: AtomicUsize,
    /// Whether a part panicked on a helper.
    panicked: AtomicBool,
    stop: AtomicBool,
    /// Each helper's flag: set while it is about to park or parked.
    sleeping: Vec<AtomicBool>,
}

/// The helpers of one threaded plan (and of the other encoder's, which runs in turn with it).
pub struct Team {
    shared: Arc<Shared>,
    helpers: Vec<JoinHandle<()>>,
    /// Held by the run in progress; a run that finds it taken runs its parts alone.
    busy: Mutex<()>,
}

impl std::fmt::Debug for Team {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Team of {} threads", self.threads())
    }
}

impl Team {
    /// A team of `threads` threads: the caller of each run and `threads - 1` helpers.
    pub fn new(threads: usize) -> std::io::Result<Team> {
        let count = threads.saturating_sub(1);
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            job: Mutex::new(None),
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            sleeping: (0..count).map(|_| AtomicBool::new(false)).collect(),
        });
        let helpers = (0..count)
            .map(|i| {
                let theirs = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("cavsync-team-{i}"))
                    .spawn(move || serve(&theirs, i))
            })
            .collect::<std::io::Result<_>>()?;
        Ok(Team {
            shared,
            helpers,
            busy: Mutex::new(()),
        })
    }

    /// The threads a run uses, the caller's included.
    pub fn threads(&self) -> usize {
        self.helpers.len() + 1
    }

    /// Gets parked helpers spinning, so that the next run finds them awake.
    pub fn wake(&self) {
        self.shared.epoch.fetch_add(2, Ordering::SeqCst);
        self.unpark_sleepers();
    }

    /// Runs `work(i)` for every part `i < parts` on this thread and the helpers; returns when
    /// all are done. Parts run alone on this thread where another run holds the team.
    pub fn run(&self, parts: usize, work: &(dyn Fn(usize) + Sync)) {
        let busy = self.busy.try_lock();
        if busy.is_err() || parts < 2 || self.helpers.is_empty() {
            (0..parts).for_each(work);
            return;
        }
        let shared = &*self.shared;
        // SAFETY: the reference only lives in `job` until this run returns, and this run
        // returns only once no helper is inside the job (`active` is 0 after the epoch closed).
        let erased = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static Part>(work) };
        *lock(&shared.job) = Some((erased, parts));
        shared.next.store(0, Ordering::Relaxed);
        shared.done.store(0, Ordering::Relaxed);
        let open = (shared.epoch.load(Ordering::Relaxed) | 1) + 2;
        shared.epoch.store(open, Ordering::SeqCst);
        self.unpark_sleepers();
        let mine = take_parts(shared, work, parts);
        wait_until(|| shared.done.load(Ordering::Acquire) >= parts);
        shared.epoch.store(open + 1, Ordering::SeqCst);
        wait_until(|| shared.active.load(Ordering::SeqCst) == 0);
        *lock(&shared.job) = None;
        if let Some(panic) = mine {
            std::panic::resume_unwind(panic);
        }
        if shared.panicked.swap(false, Ordering::Relaxed) {
            panic!("a part of a team's run panicked on a helper thread");
        }
    }

    /// Unparks every helper that is parked or about to park.
    fn unpark_sleepers(&self) {
        for (flag, helper) in self.shared.sleeping.iter().zip(&self.helpers) {
            if flag.load(Ordering::SeqCst) {
                helper.thread().unpark();
            }
        }
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for helper in self.helpers.drain(..) {
            helper.thread().unpark();
            let _ = helper.join();
        }
    }
}

/// A mutex's contents, whether or not a panic poisoned it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The payload of a part that panicked.
type Panic = Box<dyn std::any::Any + Send>;

/// Takes and runs parts until none is left, counting each one done (a part that panics too, so
/// that the run still ends); the first panic's payload.
fn take_parts(shared: &Shared, work: &(dyn Fn(usize) + Sync + '_), parts: usize) -> Option<Panic> {
    let mut first = None;
    loop {
        let i = shared.next.fetch_add(1, Ordering::Relaxed);
        if i >= parts {
            return first;
        }
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| work(i)));
        shared.done.fetch_add(1, Ordering::Release);
        if let Err(panic) = result {
            first.get_or_insert(panic);
        }
    }
}

/// Spins (then also yields) until `ready`.
fn wait_until(ready: impl Fn() -> bool) {
    let mut spins = 0u32;
    while !ready() {
        spins = spins.saturating_add(1);
        std::hint::spin_loop();
        if spins > PURE_SPINS {
            std::thread::yield_now();
        }
    }
}

/// A helper's loop: wait (spinning, then parked) for a new epoch; join the job if it is open.
fn serve(shared: &Shared, index: usize) {
    let mut seen = shared.epoch.load(Ordering::SeqCst);
    loop {
        let since = Instant::now();
        let mut spins = 0u32;
        let epoch = loop {
            if shared.stop.load(Ordering::Relaxed) {
                return;
            }
            let epoch = shared.epoch.load(Ordering::Acquire);
            if epoch != seen {
                break epoch;
            }
            spins = spins.saturating_add(1);
            if spins <= PURE_SPINS {
                std::hint::spin_loop();
            } else if since.elapsed() < SPIN {
                std::thread::yield_now();
            } else {
                let flag = &shared.sleeping[index];
                flag.store(true, Ordering::SeqCst);
                if shared.epoch.load(Ordering::SeqCst) == seen
                    && !shared.stop.load(Ordering::SeqCst)
                {
                    std::thread::park();
                }
                flag.store(false, Ordering::SeqCst);
            }
        };
        seen = epoch;
        if epoch % 2 == 0 {
            continue;
        }
        shared.active.fetch_add(1, Ordering::SeqCst);
        if shared.epoch.load(Ordering::SeqCst) == epoch {
            let job = *lock(&shared.job);
            if let Some((work, parts)) = job
                && take_parts(shared, work, parts).is_some()
            {
                shared.panicked.store(true, Ordering::Relaxed);
            }
        }
        shared.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The team of `threads` threads that this process's threaded plans share, started on first
/// use; `None` where its threads could not start.
pub fn shared(threads: usize) -> Option<Arc<Team>> {
    static TEAMS: Mutex<Vec<Arc<Team>>> = Mutex::new(Vec::new());
    let mut teams = lock(&TEAMS);
    if let Some(team) = teams.iter().find(|t| t.threads() == threads) {
        return Some(Arc::clone(team));
    }
    match Team::new(threads) {
        Ok(team) => {
            let team = Arc::new(team);
            teams.push(Arc::clone(&team));
            Some(team)
        }
        Err(e) => {
            tracing::warn!(threads, error = %e, "could not start a plan's threads; running alone");
            None
        }
    }
}

thread_local! {
    /// The team of the plan this thread is running, if any.
    static CURRENT: Cell<Option<&'static Team>> = const { Cell::new(None) };
}

/// Runs `f` with `team` as the team of the plan in progress on this thread.
pub fn with<R>(team: &Team, f: impl FnOnce() -> R) -> R {
    // SAFETY: the reference is only reachable through `CURRENT` during `f`; the guard puts the
    // previous value back when `f` returns or unwinds.
    let erased = unsafe { std::mem::transmute::<&Team, &'static Team>(team) };
    let _restore = Restore(CURRENT.replace(Some(erased)));
    team.wake();
    f()
}

/// How many parts a node of `work` units (multiply-adds or values) is cut into: the team's
/// threads where there is a team and `work` reaches `min`, else 1.
pub(crate) fn parts(work: usize, min: usize) -> usize {
    match CURRENT.get() {
        Some(team) if work >= min => team.threads(),
        _ => 1,
    }
}

/// Runs `work(i)` for every part `i < parts` on the team of the plan in progress, or on this
/// thread alone where there is none. A part run from inside another part runs alone.
pub(crate) fn run(parts: usize, work: impl Fn(usize) + Sync) {
    match CURRENT.get() {
        Some(team) if parts > 1 => {
            // Parts of this run see no team: a nested run stays on its thread.
            let alone = |i: usize| {
                let _restore = Restore(CURRENT.replace(None));
                work(i)
            };
            team.run(parts, &alone);
        }
        _ => (0..parts).for_each(work),
    }
}

/// Runs `f(first_row, rows)` over `data` cut into whole rows of `row` values: in parts on the
/// team of the plan in progress where there is one (and `work`, in values, reaches
/// [`MIN_VALUES`]), else as tract's executor cuts it (its pool where the plan has one).
pub(crate) fn rows_mut<T: Send>(
    data: &mut [T],
    row: usize,
    work: usize,
    f: impl Fn(usize, &mut [T]) -> tract_onnx::prelude::TractResult<()> + Send + Sync,
) -> tract_onnx::prelude::TractResult<()> {
    if CURRENT.get().is_none() || row == 0 {
        return tract_linalg::multithread::par_chunks_mut(data, row, work, f);
    }
    let rows = data.len() / row;
    let per_part = rows.div_ceil(parts(work, MIN_VALUES)).max(1);
    let base = Base(data.as_mut_ptr());
    let failure = Mutex::new(None);
    run(rows.div_ceil(per_part), |p| {
        let first = p * per_part;
        let len = (rows - first).min(per_part) * row;
        // SAFETY: part `p` takes its own rows of `data`, which outlives the run.
        let chunk = unsafe { std::slice::from_raw_parts_mut(base.at(first * row), len) };
        if let Err(e) = f(first, chunk) {
            lock(&failure).get_or_insert(e);
        }
    });
    match failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The start of a buffer whose parts go to different threads.
struct Base<T>(*mut T);

// SAFETY: every part takes a disjoint range of the buffer.
unsafe impl<T: Send> Sync for Base<T> {}

impl<T> Base<T> {
    /// The address of element `i`.
    fn at(&self, i: usize) -> *mut T {
        self.0.wrapping_add(i)
    }
}

/// Puts back the team a thread had before [`with`] or a part of [`run`] changed it, however it ends.
struct Restore(Option<&'static Team>);

impl Drop for Restore {
    fn drop(&mut self) {
        CURRENT.set(self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_runs_once_awake_or_parked() {
        let team = Team::new(3).unwrap();
        for round in 0..2000 {
            let parts = round % 7;
            let hits: Vec<AtomicUsize> = (0..parts).map(|_| AtomicUsize::new(0)).collect();
            team.run(parts, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            if round % 500 == 0 {
                // Long enough for the helpers to park.
                std::thread::sleep(SPIN * 3);
            }
        }
    }

    #[test]
    fn more_threads_than_cores_and_two_callers_finish() {
        let team = Arc::new(Team::new(8).unwrap());
        let sums: Vec<_> = (0..2)
            .map(|_| {
                let team = Arc::clone(&team);
                std::thread::spawn(move || {
                    let total = AtomicUsize::new(0);
                    for _ in 0..300 {
                        team.run(16, &|i| {
                            total.fetch_add(i, Ordering::Relaxed);
                        });
                    }
                    total.load(Ordering::Relaxed)
                })
            })
            .collect();
        for s in sums {
            assert_eq!(s.join().unwrap(), 300 * (0..16).sum::<usize>());
        }
    }

    #[test]
    fn a_panicking_part_reaches_the_caller_and_the_team_goes_on() {
        let team = Team::new(2).unwrap();
        for bad in [0, 3] {
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                team.run(4, &|i| assert_ne!(i, bad, "part {i}"));
            }));
            assert!(result.is_err());
        }
        let count = AtomicUsize::new(0);
        team.run(4, &|_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn rows_are_cut_whole_once_each_and_errors_reach_the_caller() {
        let team = Team::new(2).unwrap();
        for (len, row) in [(40_000usize, 100usize), (10, 5), (33_000, 1)] {
            let mut data = vec![0usize; len];
            with(&team, || {
                rows_mut(&mut data, row, len, |first, chunk| {
                    assert_eq!(chunk.len() % row, 0);
                    for (i, v) in chunk.iter_mut().enumerate() {
                        *v += first * row + i + 1;
                    }
                    Ok(())
                })
            })
            .unwrap();
            assert!(
                data.iter().enumerate().all(|(i, &v)| v == i + 1),
                "{len} by {row}"
            );
        }
        let mut data = vec![0u8; 40_000];
        let failed = with(&team, || {
            rows_mut(&mut data, 100, 40_000, |first, _| {
                if first == 0 {
                    Ok(())
                } else {
                    Err(tract_onnx::prelude::TractError::msg(format!(
                        "rows from {first}"
                    )))
                }
            })
        });
        assert!(failed.is_err());
    }

    #[test]
    fn operators_use_the_current_team_and_nested_runs_stay_alone() {
        let team = Team::new(2).unwrap();
        assert_eq!(parts(1 << 20, 1), 1);
        with(&team, || {
            assert_eq!(parts(1 << 20, 1), 2);
            assert_eq!(parts(10, 1 << 20), 1);
            let total = AtomicUsize::new(0);
            run(2, |_| {
                assert_eq!(parts(1 << 20, 1), 1);
                run(3, |j| {
                    total.fetch_add(j, Ordering::Relaxed);
                });
            });
            assert_eq!(total.load(Ordering::Relaxed), 6);
        });
        assert_eq!(parts(1 << 20, 1), 1);
    }
}
