//! The steady state of the live loop allocates nothing: a counting global allocator around every per-frame step, over the recycling pool `cavsync run` installs.
//!
//! Counted on the loop's thread: pushing 33 ms of audio through the streaming fbank, cutting
//! the segment and preprocessing the image, localizing, tracking, serialising the line, writing
//! it to a file output and handing the frame to the live page: none may allocate. The two
//! encoder runs request tensors inside tract's plans; with the pool engaged, those requests
//! (and the page's, on its own thread) must be served by recycled blocks once warm, with one
//! thread for the plans and with two: at most a rare late peak may carve a new block.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use cavsync_core::localize::FrameSize;
use cavsync_core::preprocess::stream::{FbankStream, LiveAlignment};
use cavsync_core::track::TrackerConfig;
use cavsync_device::bundle::{Bundle, PlanOptions};
use cavsync_live::http::LivePage;
use cavsync_live::output::Output;
use cavsync_live::pipeline::FrameWorker;
use cavsync_live::pool::{self, RecyclingAllocator};
use cavsync_live::video::VideoFrame;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: forwards to the recycling allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { RecyclingAllocator.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { RecyclingAllocator.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { RecyclingAllocator.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Requests the pool served or passed on, all threads together.
fn requests(s: &pool::PoolStats) -> u64 {
    s.reused + s.carved + s.system
}

/// Allocations made by `f` on this thread.
fn counted<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    let out = f();
    COUNTING.with(|c| c.set(false));
    (out, ALLOCATIONS.load(Ordering::Relaxed) - before)
}

#[test]
fn the_steady_state_allocates_nothing() {
    pool::engage().unwrap();
    for threads in [1, 2] {
        steady_state(threads);
    }
}

/// Runs 240 frames through the loop's steps with `threads` for the plans and checks the last 200.
fn steady_state(threads: usize) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let bundle =
        Bundle::open_with(&root.join("models/demo/bundle"), &PlanOptions { threads }).unwrap();
    let target = bundle.manifest.audio_preprocessing.target_length;
    let (w, h) = (320u32, 240u32);
    let size = FrameSize {
        width: w as usize,
        height: h as usize,
    };
    let dir = tempfile::tempdir().unwrap();
    let mut outputs =
        vec![Output::open(&format!("file:{}", dir.path().join("out.jsonl").display())).unwrap()];
    let page = LivePage::start("127.0.0.1:0", w as usize, h as usize).unwrap();
    let publisher = page.publisher();
    let mut worker = FrameWorker::new(&bundle, size, TrackerConfig::default(), 0).unwrap();
    let mut fbank = FbankStream::new(target + 400);
    let mut frame = VideoFrame::new(w, h);
    let mut audio = vec![0.0f32; 533];
    let (mut ours, mut tract, mut frames) = (0u64, 0u64, 0u64);
    let mut warm = pool::stats();
    for n in 0..240u64 {
        if n == 40 {
            warm = pool::stats();
        }
        // A moving bright square and a tone whose pitch follows it.
        for (i, px) in frame.image.pixels_mut().enumerate() {
            let (x, y) = ((i as u32 % w) as i64, (i as u32 / w) as i64);
            let cx = 40 + (n as i64 * 3) % 240;
            let on = (x - cx).abs() < 30 && (y - 120).abs() < 30;
            px.0 = if on { [240, 200, 40] } else { [30, 60, 90] };
        }
        for (i, s) in audio.iter_mut().enumerate() {
            let t = (n as f32 * 533.0 + i as f32) / 16_000.0;
            *s = 0.3 * (2.0 * std::f32::consts::PI * (300.0 + n as f32) * t).sin();
        }
        frame.seq = n;
        let (step, a) = counted(|| {
            fbank.push(&audio).unwrap();
            let bounds = LiveAlignment::Causal.bounds(fbank.samples(), target);
            worker.prepare(&frame, &fbank, bounds).unwrap();
            bounds
        });
        // Every tenth frame stands for one whose segment held an audio fault: not encoded, written as such.
        let fault = (n % 10 == 5).then_some("clipped");
        let before = pool::stats();
        if fault.is_none() {
            worker.encode().unwrap()
        }
        let b = requests(&pool::stats()) - requests(&before);
        let (_, c) = counted(|| {
            worker
                .finish(
                    &frame,
                    step,
                    fault.is_some(),
                    fault,
                    0,
                    &mut outputs,
                    Some(&publisher),
                )
                .unwrap()
        });
        if fault.is_some() {
            let line = std::str::from_utf8(worker.line()).unwrap();
            assert!(line.contains("\"audio_fault\":\"clipped\""), "{line}");
            assert!(line.contains("\"active\":false"), "{line}");
        }
        if n >= 40 {
            ours += a + c;
            tract += b;
            frames += 1;
        }
    }
    let end = pool::stats();
    eprintln!(
        "{threads} thread(s), over {frames} steady-state frames: {ours} allocations outside tract; {:.1} requests per frame inside tract's two plans (all threads); {} reached fresh memory (all threads), {:.1} per frame served by recycled blocks; {} blocks, {:.1} MiB carved in all",
        tract as f64 / frames as f64,
        end.fresh_since(&warm),
        (end.reused - warm.reused) as f64 / frames as f64,
        end.carved,
        end.carved_bytes as f64 / (1u64 << 20) as f64
    );
    assert!(worker.line().starts_with(b"{\"timeStamp\":239"));
    assert_eq!(ours, 0, "allocations per frame outside tract");
    assert!(tract > 0, "the plans' requests were counted");
    // Other threads allocate beside the loop: the page's render thread copies each JPEG it
    // encodes into a block of that JPEG's length (content and timing decide which frames it
    // renders), and with two plan threads which thread frees a block first (and so how many
    // blocks of a size are live at once) depends on timing. A late frame may so meet a new peak
    // and carve one more block, with either thread count. A request that reached fresh memory
    // every frame would show here as one per frame.
    let bound = frames / 50;
    assert!(
        end.fresh_since(&warm) <= bound,
        "{} allocations reached fresh memory once warm (at most {bound})",
        end.fresh_since(&warm)
    );
    page.stop();
}
