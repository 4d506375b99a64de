//! The live pipeline: capture threads hand audio chunks and frames to inference through bounded lock-free queues; inference localizes, tracks and writes results.
//!
//! Threads never block each other. The audio thread queues 20 ms chunks; the video thread
//! fills frames from a pool allocated at start and queues them; inference returns every frame
//! to the pool through a second queue. When inference falls behind, the newest frame whose
//! audio has arrived wins and older ones are dropped and counted (causal mode), or frames wait
//! their turn in a delay line as long as their audio needs (centred mode). Every buffer of the
//! steady state (frames, chunks, fbank ring, segment, image tensor, heatmap, peaks, tracks,
//! the output line) is allocated once; tract allocates a tensor per node inside its plans, and
//! those requests are served by the recycling [`crate::pool`] once `cavsync run` engages it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::Thread;
use std::time::Duration;

use heapless::Deque;
use heapless::spsc::Queue;
use tracing::{info, warn};

use cavsync_core::localize::{AudioDescriptor, FrameLocalization, FrameSize};
use cavsync_core::model::Modality;
use cavsync_core::preprocess::audio::SAMPLE_RATE;
use cavsync_core::preprocess::fbank::NUM_MEL_BINS;
use cavsync_core::preprocess::image::ImagePreprocessor;
use cavsync_core::preprocess::stream::{FbankStream, LiveAlignment};
use cavsync_core::track::{MAX_TRACKS, Track, Tracker, TrackerConfig, TrackerConfigError};
use cavsync_device::bundle::{Bundle, BundleError, Embedding};
use cavsync_device::session::FrameLocalizer;

use crate::audio::{AudioChunk, AudioFormat, AudioInput, capture_audio};
use crate::clock::now_ns;
use crate::http::{PagePublisher, PageTrack};
use crate::output::{Output, OutputError};
use crate::pool::{self, PoolStats};
use crate::source::{AudioSpec, SourceError, VideoSpec};
use crate::stats::{CounterSnapshot, Counters, Percentiles, STAGES, StageStats};
use crate::video::{VideoFrame, VideoInput, capture_video};

/// Queue slots between threads (frames in flight, audio chunks: 5 s).
const QUEUE: usize = 256;

/// The fault name a frame's record carries when its segment spans a stretch the audio source was away.
pub const SOURCE_AWAY: &str = "source-away";

/// Errors that stop a live run.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// A source could not be opened at start.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Inference failed.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// Localization failed.
    #[error(transparent)]
    Localize(#[from] cavsync_core::localize::LocalizeError),
    /// An output failed.
    #[error(transparent)]
    Output(#[from] OutputError),
    /// The tracker settings are out of range.
    #[error(transparent)]
    Tracker(#[from] TrackerConfigError),
    /// The settings cannot work together.
    #[error("{0}")]
    Settings(String),
    /// A capture thread hit an error it cannot recover from.
    #[error("{0}")]
    Fatal(String),
}

/// What a live run needs besides its bundle and outputs.
#[derive(Debug, Clone)]
pub struct LiveSettings {
    /// The audio source.
    pub audio: AudioSpec,
    /// The video source.
    pub video: VideoSpec,
    /// Requested frame width.
    pub width: u32,
    /// Requested frame height.
    pub height: u32,
    /// Requested frames per second.
    pub fps: u32,
    /// Requested microphone rate, Hz.
    pub mic_rate: u32,
    /// Requested microphone channels.
    pub mic_channels: u16,
    /// Where each frame's audio segment lies.
    pub alignment: LiveAlignment,
    /// Stop after this long (none: until stopped).
    pub duration: Option<Duration>,
    /// How often to log latency and rates.
    pub report_every: Duration,
    /// Tracker settings.
    pub tracker: TrackerConfig,
}

/// What a finished run reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LiveSummary {
    /// Seconds from start to stop.
    pub seconds: f64,
    /// Frames localized per second.
    pub fps: f64,
    /// Counters at the end.
    pub counters: CounterSnapshot,
    /// Per-stage latency percentiles over the whole run (ms), in [`STAGES`] order.
    pub latency: Vec<(String, Percentiles)>,
    /// Negotiated video format: width, height, fps.
    pub video: [u32; 3],
    /// Negotiated audio format: rate, channels.
    pub audio: [u32; 2],
    /// Seconds by which each frame's audio segment ends after the frame (centred mode's delay).
    pub alignment_delay_s: f64,
    /// Distinct track ids reported.
    pub tracks_started: u64,
    /// Result lines the file outputs could not write (a full disk, an I/O error), all outputs together.
    pub output_lines_unwritten: u64,
    /// What the allocation pool did, over the run and after warm-up.
    pub memory: MemorySummary,
}

/// Frames after which the live loop counts as warm: allocations from then on are the steady state's.
pub const WARM_FRAMES: u64 = 60;

/// The allocation pool's account of a run ([`crate::pool`]).
#[derive(Debug, Clone, serde::Serialize)]
pub struct MemorySummary {
    /// The pool's counters at the end of the run.
    pub pool: PoolStats,
    /// Frames processed after the first [`WARM_FRAMES`].
    pub steady_frames: u64,
    /// Allocations that reached fresh memory (carved blocks or the system allocator) during those frames, all threads together.
    pub steady_fresh: u64,
    /// Allocations served by recycled blocks during those frames, all threads together.
    pub steady_reused: u64,
}

/// State the threads share.
pub struct Shared<'a> {
    stop: &'a AtomicBool,
    /// Run counters.
    pub counters: Counters,
    fatal: Mutex<Option<String>>,
    inference: Thread,
}

impl Shared<'_> {
    /// Whether the run is stopping.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Wakes the inference thread: something was queued.
    pub fn wake(&self) {
        self.inference.unpark();
    }

    /// Records an unrecoverable error and stops the run.
    pub fn fatal(&self, message: String) {
        let mut slot = self.fatal.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert(message);
        self.stop.store(true, Ordering::Relaxed);
        self.wake();
    }

    /// Waits briefly for inference to give a frame buffer back.
    pub fn wait_for_buffer(&self) {
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Reopen delays: 100 ms doubling to 5 s, reset by success.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    /// The first delay.
    pub fn new() -> Self {
        Self {
            next: Duration::from_millis(100),
        }
    }

    /// Back to the first delay.
    pub fn reset(&mut self) {
        self.next = Duration::from_millis(100);
    }

    /// Sleeps the current delay (waking early to stop) and doubles it; false when stopping.
    pub fn sleep(&mut self, shared: &Shared<'_>) -> bool {
        let until = std::time::Instant::now() + self.next;
        while std::time::Instant::now() < until {
            if shared.stopping() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.next = (self.next * 2).min(Duration::from_secs(5));
        !shared.stopping()
    }
}

impl Backoff {
    /// After `what` (`audio` or `video`) from `spec` was lost: logs why, counts it in `reopens`, then retries `open` with backoff until it gives a source (`Ok(None)`: it came back unusable, try again) or the run stops (`None`).
    pub fn reopen<T>(
        &mut self,
        shared: &Shared<'_>,
        what: &str,
        spec: &dyn std::fmt::Display,
        failure: Option<SourceError>,
        reopens: &AtomicU64,
        mut open: impl FnMut() -> Result<Option<T>, SourceError>,
    ) -> Option<T> {
        if shared.stopping() {
            return None;
        }
        let reason = failure.map_or_else(|| "stopped".to_string(), |e| e.to_string());
        warn!(source = %spec, %reason, "{what} source lost; reopening");
        reopens.fetch_add(1, Ordering::Relaxed);
        loop {
            if !self.sleep(shared) {
                return None;
            }
            match open() {
                Ok(Some(source)) => {
                    info!(source = %spec, "{what} source reopened");
                    return Some(source);
                }
                Ok(None) => {}
                Err(e) => warn!(source = %spec, error = %e, "{what} source still unavailable"),
            }
        }
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

/// One processed frame as written to the outputs (one JSON object per line; `src` as ODAS's tracked-sources stream).
#[derive(serde::Serialize)]
struct LiveRecord<'a> {
    #[serde(rename = "timeStamp")]
    time_stamp: u64,
    time_s: f64,
    width: u32,
    height: u32,
    active: bool,
    score: f32,
    audio_level: f32,
    peak: Option<[f32; 2]>,
    src: &'a [Track],
    segment: [i64; 2],
    audio_flagged: bool,
    audio_fault: Option<&'static str>,
    latency_ms: Latency,
    dropped: u64,
}

/// Stage latencies of one frame, milliseconds.
#[derive(serde::Serialize)]
struct Latency {
    capture: f64,
    wait: f64,
    preprocess: f64,
    audio: f64,
    visual: f64,
    localize: f64,
    total: f64,
}

/// The status object the live page and the periodic log show.
#[derive(serde::Serialize)]
struct Status {
    fps: f64,
    frames: u64,
    dropped: u64,
    late: u64,
    reopens: u64,
    latency_p50_ms: f64,
    latency_p95_ms: f64,
    latency_p99_ms: f64,
    mode: LiveAlignment,
}

/// Everything inference owns for one frame at a time, allocated once: the per-frame work is [`FrameWorker::prepare`], [`FrameWorker::encode`] (tract) and [`FrameWorker::finish`].
pub struct FrameWorker<'b> {
    bundle: &'b Bundle,
    size: FrameSize,
    started_ns: u64,
    images: ImagePreprocessor,
    localizer: FrameLocalizer,
    tracker: Tracker,
    segment: Vec<f32>,
    image: Vec<f32>,
    audio_descriptor: AudioDescriptor,
    audio: Embedding,
    visual: Embedding,
    loc: FrameLocalization,
    line: Vec<u8>,
    status: Vec<u8>,
    page_tracks: heapless::Vec<PageTrack, MAX_TRACKS>,
    confirmed: heapless::Vec<Track, MAX_TRACKS>,
    stamps: [u64; 6],
}

impl<'b> FrameWorker<'b> {
    /// A worker for frames of `size` run through `bundle`, tracking with `tracker`; times are reported from `started_ns`.
    pub fn new(
        bundle: &'b Bundle,
        size: FrameSize,
        tracker: TrackerConfig,
        started_ns: u64,
    ) -> Result<Self, LiveError> {
        let target = bundle.manifest.audio_preprocessing.target_length;
        Ok(Self {
            bundle,
            size,
            started_ns,
            images: ImagePreprocessor::with_size(bundle.manifest.image_preprocessing.size as u32),
            localizer: FrameLocalizer::new(bundle)?,
            tracker: Tracker::new(tracker)?,
            segment: vec![0.0; target * NUM_MEL_BINS],
            image: vec![0.0; bundle.input_len(Modality::Visual)],
            audio_descriptor: AudioDescriptor::default(),
            audio: Embedding::default(),
            visual: Embedding::default(),
            loc: FrameLocalization::default(),
            line: Vec::with_capacity(64 * 1024),
            status: {
                let mut status = Vec::with_capacity(4096);
                status.extend_from_slice(b"{}");
                status
            },
            page_tracks: heapless::Vec::new(),
            confirmed: heapless::Vec::new(),
            stamps: [0; 6],
        })
    }

    /// Cuts the frame's audio segment (`bounds` rows of `fbank`) and preprocesses its image; allocation-free.
    pub fn prepare(
        &mut self,
        frame: &VideoFrame,
        fbank: &FbankStream,
        bounds: (i64, i64),
    ) -> Result<(), LiveError> {
        self.stamps[0] = now_ns();
        fbank
            .segment_into(bounds, &mut self.segment)
            .map_err(|e| LiveError::Fatal(format!("audio segment: {e}")))?;
        self.images
            .run_into(&frame.image, &mut self.image)
            .map_err(|e| LiveError::Fatal(format!("frame {}: {e}", frame.seq)))?;
        self.audio_descriptor = AudioDescriptor::of(&self.segment, NUM_MEL_BINS);
        self.stamps[1] = now_ns();
        Ok(())
    }

    /// Runs both encoders as the bundle runs a pair: side by side where that measured faster when it opened, else in turn (tract requests a tensor per node output; the engaged pool recycles them).
    ///
    /// Side by side, the `audio` stage is the audio encoder's own time and `visual` the rest of
    /// the pair's, so the stages still add up to the frame's latency.
    pub fn encode(&mut self) -> Result<(), LiveError> {
        let times = self.bundle.embed_pair_into(
            &self.segment,
            &self.image,
            &mut self.audio,
            &mut self.visual,
        )?;
        let start = self.stamps[1];
        let pair = (times.pair_s * 1e9) as u64;
        self.stamps[2] = start + ((times.audio_s * 1e9) as u64).min(pair);
        self.stamps[3] = start + pair;
        Ok(())
    }

    /// Localizes, tracks, writes the frame's line to `outputs` and the page; returns the stage durations (ns, [`STAGES`] order). Allocation-free once warm.
    ///
    /// With `fault` (the audio segment held a fault or a gap, and [`FrameWorker::encode`] was not run) the frame is written as inactive with the fault named, and its heatmap is blank.
    #[allow(clippy::too_many_arguments)]
    pub fn finish(
        &mut self,
        frame: &VideoFrame,
        bounds: (i64, i64),
        audio_flagged: bool,
        fault: Option<&'static str>,
        dropped: u64,
        outputs: &mut [Output],
        page: Option<&PagePublisher>,
    ) -> Result<[u64; 8], LiveError> {
        let size = self.size;
        if fault.is_some() {
            self.stamps[2] = self.stamps[1];
            self.stamps[3] = self.stamps[1];
            self.loc.score = 0.0;
            self.loc.contrast = 0.0;
            self.loc.audio = self.audio_descriptor;
            self.loc.active = false;
            self.loc.peaks.clear();
            self.loc.boxes.clear();
            self.localizer.blank(size);
        } else {
            self.localizer.localize_pair_into(
                &self.audio,
                self.audio_descriptor,
                &self.visual,
                size,
                &mut self.loc,
            )?;
        }
        self.tracker.update_frame(&self.loc, size);
        self.confirmed.clear();
        for t in self.tracker.confirmed() {
            let _ = self.confirmed.push(*t);
        }
        let [t0, t1, t2, t3, ..] = self.stamps;
        let t4 = now_ns();
        let ms = |ns: u64| ns as f64 / 1e6;
        let record = LiveRecord {
            time_stamp: frame.seq,
            time_s: frame.capture_ns.saturating_sub(self.started_ns) as f64 / 1e9,
            width: size.width as u32,
            height: size.height as u32,
            active: self.loc.active,
            score: self.loc.score,
            audio_level: self.audio_descriptor.level,
            peak: self
                .loc
                .peaks
                .first()
                .map(|p| [p.x / size.width as f32, p.y / size.height as f32]),
            src: &self.confirmed,
            segment: [bounds.0, bounds.1],
            audio_flagged,
            audio_fault: fault,
            latency_ms: Latency {
                capture: ms(frame.arrival_ns.saturating_sub(frame.capture_ns)),
                wait: ms(t0.saturating_sub(frame.arrival_ns)),
                preprocess: ms(t1 - t0),
                audio: ms(t2 - t1),
                visual: ms(t3 - t2),
                localize: ms(t4 - t3),
                total: ms(t4.saturating_sub(frame.capture_ns)),
            },
            dropped,
        };
        self.line.clear();
        serde_json::to_writer(&mut self.line, &record)
            .map_err(|e| LiveError::Fatal(format!("serialising a record: {e}")))?;
        for out in outputs.iter_mut() {
            out.write_line(&self.line)?;
        }
        if let Some(page) = page {
            self.page_tracks.clear();
            for t in &self.confirmed {
                let _ = self.page_tracks.push(PageTrack {
                    id: t.id,
                    x: t.x,
                    y: t.y,
                    bbox: t.bbox,
                    activity: t.activity,
                });
            }
            page.publish(
                size.width,
                size.height,
                frame.image.as_raw(),
                self.localizer.heatmap(),
                &self.page_tracks,
                std::str::from_utf8(&self.status).unwrap_or("{}"),
            );
        }
        let t5 = now_ns();
        Ok([
            frame.arrival_ns.saturating_sub(frame.capture_ns),
            t0.saturating_sub(frame.arrival_ns),
            t1 - t0,
            t2 - t1,
            t3 - t2,
            t4 - t3,
            t5 - t4,
            t5.saturating_sub(frame.capture_ns),
        ])
    }

    /// The last frame's localization.
    pub fn localization(&self) -> &FrameLocalization {
        &self.loc
    }

    /// The last line written.
    pub fn line(&self) -> &[u8] {
        &self.line
    }

    /// Track ids handed out so far.
    pub fn tracks_started(&self) -> u64 {
        self.tracker.next_id() - 1
    }
}

/// Runs the live pipeline until `stop` is set or the duration ends; results go to `outputs` and `page`.
pub fn run(
    bundle: &Bundle,
    settings: &LiveSettings,
    outputs: &mut [Output],
    page: Option<&PagePublisher>,
    stop: &AtomicBool,
) -> Result<LiveSummary, LiveError> {
    let model_rate = SAMPLE_RATE;
    let target = bundle.manifest.audio_preprocessing.target_length;
    let (audio_input, audio_format) = AudioInput::open(
        &settings.audio,
        settings.mic_rate,
        settings.mic_channels,
        model_rate,
    )?;
    let (video_input, video_format) = VideoInput::open(
        &settings.video,
        settings.width,
        settings.height,
        settings.fps,
    )?;
    info!(
        audio = %settings.audio,
        rate = audio_format.rate,
        channels = audio_format.channels,
        video = %settings.video,
        width = video_format.width,
        height = video_format.height,
        fps = video_format.fps,
        "live sources open"
    );
    let delay_s = settings.alignment.delay_s(target);
    // How long a frame may wait for its audio before it is dropped as late.
    let max_wait_ns = ((delay_s + 1.0) * 1e9) as u64;
    let pool = ((f64::from(video_format.fps.max(1)) * (delay_s + 0.25)).ceil() as usize + 4)
        .min(QUEUE - 1);
    if pool < 4 {
        return Err(LiveError::Settings("frame pool too small".into()));
    }
    let ring_rows = target + (max_wait_ns / 10_000_000) as usize + 200;

    let mut video_q: Box<Queue<Box<VideoFrame>, QUEUE>> = Box::new(Queue::new());
    let mut free_video_q: Box<Queue<Box<VideoFrame>, QUEUE>> = Box::new(Queue::new());
    let mut audio_q: Box<Queue<Box<AudioChunk>, QUEUE>> = Box::new(Queue::new());
    let mut free_audio_q: Box<Queue<Box<AudioChunk>, QUEUE>> = Box::new(Queue::new());
    let (mut video_tx, mut video_rx) = video_q.split();
    let (mut free_video_tx, mut free_video_rx) = free_video_q.split();
    let (mut audio_tx, mut audio_rx) = audio_q.split();
    let (mut free_audio_tx, mut free_audio_rx) = free_audio_q.split();
    for _ in 0..pool {
        let frame = Box::new(VideoFrame::new(video_format.width, video_format.height));
        let _ = free_video_tx.enqueue(frame);
    }
    for _ in 0..QUEUE - 1 {
        let _ = free_audio_tx.enqueue(Box::default());
    }

    let shared = Shared {
        stop,
        counters: Counters::default(),
        fatal: Mutex::new(None),
        inference: std::thread::current(),
    };
    let size = FrameSize {
        width: video_format.width as usize,
        height: video_format.height as usize,
    };
    let mut fbank = FbankStream::new(ring_rows);
    let mut pending: Box<Deque<Box<VideoFrame>, QUEUE>> = Box::new(Deque::new());
    let mut stats = StageStats::default();
    let mut window = StageStats::default();
    let request_audio = AudioFormat {
        rate: settings.mic_rate,
        channels: settings.mic_channels,
    };

    let started = now_ns();
    let mut worker = FrameWorker::new(bundle, size, settings.tracker, started)?;
    // The pool's counters and the frame count when the loop became warm.
    let mut warm: Option<(PoolStats, u64)> = None;
    let result = std::thread::scope(|scope| -> Result<(), LiveError> {
        let shared = &shared;
        let audio_thread = std::thread::Builder::new()
            .name("cavsync-audio".into())
            .spawn_scoped(scope, || {
                capture_audio(
                    &settings.audio,
                    (audio_input, audio_format),
                    request_audio,
                    model_rate,
                    &mut audio_tx,
                    &mut free_audio_rx,
                    shared,
                );
            })
            .map_err(|e| LiveError::Fatal(format!("cannot start the audio thread: {e}")))?;
        let video_thread = std::thread::Builder::new()
            .name("cavsync-video".into())
            .spawn_scoped(scope, || {
                capture_video(
                    &settings.video,
                    video_input,
                    video_format,
                    &mut video_tx,
                    &mut free_video_rx,
                    shared,
                );
            })
            .map_err(|e| LiveError::Fatal(format!("cannot start the video thread: {e}")))?;

        let mut origin_ns: Option<u64> = None;
        let mut last_bad_row: Option<u64> = None;
        // The last faulty stretch of the stream: the fbank row it reached, and what it was.
        let mut last_fault: Option<(u64, &'static str)> = None;
        let zeros = [0.0f32; 320];
        let mut last_report = started;
        let mut page_window = StageStats::default();
        let mut last_page = started;
        let outcome = loop {
            if shared.stopping() {
                break Ok(());
            }
            let now = now_ns();
            if settings
                .duration
                .is_some_and(|d| now.saturating_sub(started) >= d.as_nanos() as u64)
            {
                break Ok(());
            }
            // Audio in.
            while let Some(chunk) = audio_rx.dequeue() {
                let mut gap = chunk.gap;
                while gap > 0 {
                    let n = gap.min(zeros.len() as u64) as usize;
                    if let Err(e) = fbank.push(&zeros[..n]) {
                        shared.fatal(format!("audio fbank: {e}"));
                        break;
                    }
                    gap -= n as u64;
                }
                if let Err(e) = fbank.push(&chunk.samples[..chunk.len]) {
                    shared.fatal(format!("audio fbank: {e}"));
                }
                if let Some(fault) = chunk.fault {
                    last_fault = Some((fbank.rows(), fault.name()));
                }
                if chunk.gap > 0 {
                    last_fault = Some((fbank.rows(), SOURCE_AWAY));
                }
                if chunk.bad > 0 || chunk.gap > 0 {
                    shared
                        .counters
                        .audio_bad_samples
                        .fetch_add(u64::from(chunk.bad), Ordering::Relaxed);
                    last_bad_row = Some(fbank.rows());
                }
                origin_ns = Some(chunk.origin_ns);
                let _ = free_audio_tx.enqueue(chunk);
            }
            // Frames in.
            while let Some(frame) = video_rx.dequeue() {
                if let Err(frame) = pending.push_back(frame) {
                    shared
                        .counters
                        .frames_dropped
                        .fetch_add(1, Ordering::Relaxed);
                    let _ = free_video_tx.enqueue(frame);
                }
            }
            // Frames whose audio will not come in time.
            while let Some(front) = pending.front() {
                if now.saturating_sub(front.capture_ns) > max_wait_ns {
                    if let Some(frame) = pending.pop_front() {
                        shared.counters.frames_late.fetch_add(1, Ordering::Relaxed);
                        let _ = free_video_tx.enqueue(frame);
                    }
                } else {
                    break;
                }
            }
            let Some(origin) = origin_ns else {
                std::thread::park_timeout(Duration::from_millis(5));
                continue;
            };
            let bounds_of = |frame: &VideoFrame| {
                let samples = frame.capture_ns.saturating_sub(origin) as u128
                    * u128::from(model_rate)
                    / 1_000_000_000;
                settings.alignment.bounds(samples as u64, target)
            };
            // The frame to run: the newest ready one (causal) or the oldest if ready (centred).
            let ready = |frame: &VideoFrame| bounds_of(frame).1 <= fbank.rows() as i64;
            let pick = match settings.alignment {
                LiveAlignment::Causal => pending.iter().rposition(|f| ready(f)),
                LiveAlignment::Centred => pending.front().filter(|f| ready(f)).map(|_| 0),
            };
            let Some(pick) = pick else {
                std::thread::park_timeout(Duration::from_millis(5));
                continue;
            };
            for _ in 0..pick {
                if let Some(frame) = pending.pop_front() {
                    shared
                        .counters
                        .frames_dropped
                        .fetch_add(1, Ordering::Relaxed);
                    let _ = free_video_tx.enqueue(frame);
                }
            }
            let Some(frame) = pending.pop_front() else {
                continue;
            };
            let bounds = bounds_of(&frame);
            let flagged = last_bad_row.is_some_and(|row| (row as i64) > bounds.0);
            let fault = last_fault
                .filter(|(row, _)| (*row as i64) > bounds.0)
                .map(|(_, name)| name);
            if fault.is_some() {
                shared
                    .counters
                    .frames_audio_fault
                    .fetch_add(1, Ordering::Relaxed);
            }
            let dropped = shared.counters.frames_dropped.load(Ordering::Relaxed);
            let step = worker
                .prepare(&frame, &fbank, bounds)
                .and_then(|()| match fault {
                    Some(_) => Ok(()),
                    None => worker.encode(),
                })
                .and_then(|()| {
                    worker.finish(&frame, bounds, flagged, fault, dropped, outputs, page)
                });
            let _ = free_video_tx.enqueue(frame);
            let durations = match step {
                Ok(d) => d,
                Err(e) => break Err(e),
            };
            stats.add(&durations);
            window.add(&durations);
            page_window.add(&durations);
            let processed = shared
                .counters
                .frames_processed
                .fetch_add(1, Ordering::Relaxed)
                + 1;
            if processed == WARM_FRAMES {
                warm = Some((pool::stats(), processed));
            }
            let now = now_ns();
            // The page's status follows the last second; the log's the last report period.
            let since_page = now.saturating_sub(last_page);
            if since_page >= 1_000_000_000 {
                let fps = page_window.frames() as f64 * 1e9 / since_page as f64;
                write_status(
                    &mut worker.status,
                    fps,
                    &page_window,
                    &shared.counters,
                    settings.alignment,
                );
                page_window.clear();
                last_page = now;
            }
            let elapsed = now.saturating_sub(last_report);
            if elapsed >= settings.report_every.as_nanos() as u64 {
                let fps = window.frames() as f64 * 1e9 / elapsed as f64;
                let mut line = Vec::with_capacity(256);
                write_status(
                    &mut line,
                    fps,
                    &window,
                    &shared.counters,
                    settings.alignment,
                );
                info!(target: "cavsync::live", "{}", String::from_utf8_lossy(&line));
                window.clear();
                last_report = now;
            }
        };
        shared.stop.store(true, Ordering::Relaxed);
        let _ = audio_thread.join();
        let _ = video_thread.join();
        outcome
    });
    for out in outputs.iter_mut() {
        out.flush()?;
    }
    if let Some(message) = shared
        .fatal
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        return Err(LiveError::Fatal(message));
    }
    result?;
    let seconds = now_ns().saturating_sub(started) as f64 / 1e9;
    let counters = shared.counters.snapshot();
    let end = pool::stats();
    let memory = match warm {
        Some((at, frames)) => MemorySummary {
            pool: end,
            steady_frames: counters.frames_processed - frames,
            steady_fresh: end.fresh_since(&at),
            steady_reused: end.reused - at.reused,
        },
        None => MemorySummary {
            pool: end,
            steady_frames: 0,
            steady_fresh: 0,
            steady_reused: 0,
        },
    };
    let percentiles = stats.percentiles();
    Ok(LiveSummary {
        seconds,
        fps: counters.frames_processed as f64 / seconds.max(1e-9),
        counters,
        latency: STAGES
            .iter()
            .zip(percentiles)
            .map(|(s, p)| ((*s).to_string(), p))
            .collect(),
        video: [video_format.width, video_format.height, video_format.fps],
        audio: [audio_format.rate, u32::from(audio_format.channels)],
        alignment_delay_s: delay_s,
        tracks_started: worker.tracks_started(),
        output_lines_unwritten: outputs.iter().map(Output::unwritten).sum(),
        memory,
    })
}

/// Writes the status object into `buf`.
fn write_status(
    buf: &mut Vec<u8>,
    fps: f64,
    window: &StageStats,
    counters: &Counters,
    alignment: LiveAlignment,
) {
    let c = counters.snapshot();
    let total = window.percentiles()[7];
    let status = Status {
        fps,
        frames: c.frames_processed,
        dropped: c.frames_dropped,
        late: c.frames_late,
        reopens: c.audio_reopens + c.video_reopens,
        latency_p50_ms: total.p50,
        latency_p95_ms: total.p95,
        latency_p99_ms: total.p99,
        mode: alignment,
    };
    buf.clear();
    if serde_json::to_writer(&mut *buf, &status).is_err() {
        buf.clear();
        buf.extend_from_slice(b"{}");
    }
}
