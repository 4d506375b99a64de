//! The steady state of the live loop allocates nothing outside tract: a counting global allocator around every per-frame step.
//!
//! Counted: pushing 33 ms of audio through the streaming fbank, cutting the segment and
//! preprocessing the image, localizing, tracking, serialising the line, writing it to a file
//! output and handing the frame to the live page. Not counted, but reported: the two encoder
//! runs, where tract allocates its tensors.

use std::alloc::{GlobalAlloc, Layout, System};
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
use cavsync_live::video::VideoFrame;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by `f` on this thread.
fn counted<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    let out = f();
    COUNTING.with(|c| c.set(false));
    (out, ALLOCATIONS.load(Ordering::Relaxed) - before)
}

#[test]
fn the_steady_state_allocates_nothing_outside_tract() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let bundle = Bundle::open_with(
        &root.join("models/demo/bundle"),
        &PlanOptions { threads: 1 },
    )
    .unwrap();
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
    for n in 0..240u64 {
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
        let ((), b) = counted(|| {
            if fault.is_none() {
                worker.encode().unwrap()
            }
        });
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
    eprintln!(
        "over {frames} steady-state frames: {ours} allocations outside tract, {:.1} per frame inside tract's two plans",
        tract as f64 / frames as f64
    );
    assert!(worker.line().starts_with(b"{\"timeStamp\":239"));
    assert_eq!(ours, 0, "allocations per frame outside tract");
    page.stop();
}
