//! `cavsync run`: live camera and microphone in, tracked sound sources out, driven by a board profile.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, bail};
use cavsync_core::preprocess::stream::LiveAlignment;
use cavsync_device::bundle::{Bundle, PlanOptions};
use cavsync_device::device::DeviceChoice;
use cavsync_firmware_config::{Accelerator, BoardProfile};
use cavsync_live::http::LivePage;
use cavsync_live::output::Output;
use cavsync_live::pipeline::{self, LiveSettings, LiveSummary};
use cavsync_live::source::{AudioSpec, VideoSpec};

/// Bundle used when neither `--bundle` nor the profile names one.
const DEFAULT_BUNDLE: &str = "models/demo/bundle";

/// Arguments of `cavsync run`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Bundle directory to run; default: the profile's `bundle`, else models/demo/bundle. Its precision must be the profile's.
    #[arg(long)]
    pub bundle: Option<PathBuf>,
    /// Board profile (pi4, pi5, jetson-orin, x86-dev) giving threads, precision, camera and microphone settings.
    #[arg(long, default_value = "x86-dev")]
    pub board: String,
    /// TOML file overriding any profile field (e.g. `threads = 2`, `[camera] fps = 15`, `[tracker] hold = 10`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Audio source: `alsa:PCM` (e.g. alsa:default, alsa:hw:1,0) or `ffmpeg:INPUT` (file, RTSP URL); default: alsa with the profile's microphone.
    #[arg(long)]
    pub audio: Option<String>,
    /// Video source: `v4l2:/dev/videoN` or `ffmpeg:INPUT` (file, RTSP camera); default: v4l2 with the profile's camera.
    #[arg(long)]
    pub video: Option<String>,
    /// Where results go, repeatable: `stdout`, `file:PATH` (JSON lines), `udp://HOST:PORT`, `tcp://HOST:PORT` (a server clients join); default stdout.
    #[arg(long = "out")]
    pub outputs: Vec<String>,
    /// Serve the live page (camera image, heatmap, tracks, fps and latency) at this address, e.g. 0.0.0.0:8080.
    #[arg(long)]
    pub http: Option<String>,
    /// Audio segment of each frame: `causal` ends at the frame (lowest latency) or `centred` around it (the training alignment, half a segment later).
    #[arg(long, default_value = "causal", value_parser = parse_mode)]
    pub mode: LiveAlignment,
    /// Stop after this many seconds (default: run until SIGINT or SIGTERM).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Inference threads (default: the profile's `threads`).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Device for the encoders: cpu, cuda (an error where unusable) or auto (cuda where usable, else the CPU); default: the profile's `accelerator`, cuda meaning auto, so a GPU board's profile falls back to the CPU with a warning where there is no GPU.
    #[arg(long)]
    pub device: Option<DeviceChoice>,
    /// Seconds between latency and rate reports in the log.
    #[arg(long, default_value_t = 5.0)]
    pub report_every: f64,
    /// Write the run summary (rates, counters, per-stage latency percentiles) as JSON here at exit.
    #[arg(long)]
    pub summary: Option<PathBuf>,
}

fn parse_mode(s: &str) -> Result<LiveAlignment, String> {
    match s {
        "causal" => Ok(LiveAlignment::Causal),
        "centred" | "centered" => Ok(LiveAlignment::Centred),
        _ => Err(format!("`{s}`: expected causal or centred")),
    }
}

/// The board profile with `--config` laid over it.
fn profile(args: &Args) -> anyhow::Result<BoardProfile> {
    let base = BoardProfile::bundled(&args.board)?;
    match &args.config {
        None => Ok(base),
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| {
                format!(
                    "{}: cannot read --config (expected a UTF-8 TOML file)",
                    path.display()
                )
            })?;
            Ok(base.with_overrides(&text, &path.display().to_string())?)
        }
    }
}

/// Runs the live pipeline until stopped.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let profile = profile(args)?;
    let label = args.config.as_ref().map_or_else(
        || format!("board profile {}", profile.name),
        |c| format!("board profile {} with {}", profile.name, c.display()),
    );
    let (choice, origin) = match (args.device, profile.accelerator) {
        (Some(choice), _) => (choice, format!("--device {choice}")),
        (None, Accelerator::Cpu) => (DeviceChoice::Cpu, format!("{label}: accelerator cpu")),
        (None, Accelerator::Cuda) => (DeviceChoice::Auto, format!("{label}: accelerator cuda")),
    };
    let device = super::resolve_device(choice, &origin)?;
    let threads = args.threads.unwrap_or(profile.threads as usize);
    if threads == 0 {
        bail!("--threads must be at least 1");
    }
    let bundle_dir = args
        .bundle
        .clone()
        .or_else(|| profile.bundle.as_ref().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_BUNDLE));
    let bundle = Bundle::open_on(&bundle_dir, &PlanOptions { threads }, device)?;
    if bundle.manifest.model.precision != profile.precision {
        bail!(
            "{label}: field `precision` is {} but bundle {} is {}; give a {} bundle with --bundle, or override `precision` with --config",
            profile.precision,
            bundle_dir.display(),
            bundle.manifest.model.precision,
            profile.precision
        );
    }
    let audio = AudioSpec::parse(
        args.audio
            .as_deref()
            .unwrap_or(&format!("alsa:{}", profile.microphone.device)),
    )?;
    let video = VideoSpec::parse(
        args.video
            .as_deref()
            .unwrap_or(&format!("v4l2:{}", profile.camera.device)),
    )?;
    if let Some(d) = args.duration
        && !(d > 0.0 && d.is_finite())
    {
        bail!("--duration must be a positive number of seconds, got {d}");
    }
    if !(args.report_every > 0.0 && args.report_every.is_finite()) {
        bail!("--report-every must be a positive number of seconds");
    }
    let settings = LiveSettings {
        audio,
        video,
        width: profile.camera.width,
        height: profile.camera.height,
        fps: profile.camera.fps,
        mic_rate: profile.microphone.sample_rate,
        mic_channels: profile.microphone.channels,
        alignment: args.mode,
        duration: args.duration.map(Duration::from_secs_f64),
        report_every: Duration::from_secs_f64(args.report_every),
        tracker: profile.tracker,
    };
    let specs = if args.outputs.is_empty() {
        vec!["stdout".to_string()]
    } else {
        args.outputs.clone()
    };
    let mut outputs = specs
        .iter()
        .map(|s| Output::open(s))
        .collect::<Result<Vec<_>, _>>()?;
    let page = match &args.http {
        Some(addr) => {
            // A camera may negotiate a larger size than asked: room for at least 1080p.
            let page = LivePage::start(
                addr,
                profile.camera.width.max(1920) as usize,
                profile.camera.height.max(1080) as usize,
            )?;
            tracing::info!(url = %format!("http://{}/", page.local_addr()), "live page");
            Some(page)
        }
        None => None,
    };
    let publisher = page.as_ref().map(LivePage::publisher);
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("cannot install the signal handlers")?;
    }
    tracing::info!(
        board = %profile.name,
        bundle = %bundle_dir.display(),
        threads,
        %device,
        mode = ?args.mode,
        "live run starting"
    );
    if let Err(e) = cavsync_live::pool::engage() {
        tracing::warn!("{e}: tract's per-frame tensors come from the system allocator in this run");
    }
    let summary = pipeline::run(&bundle, &settings, &mut outputs, publisher.as_ref(), &stop)?;
    if let Some(page) = page {
        page.stop();
    }
    print_summary(&summary);
    if let Some(path) = &args.summary {
        cavsync_core::atomic::write_atomic(path, |w| {
            serde_json::to_writer_pretty(&mut *w, &summary).map_err(std::io::Error::other)
        })
        .with_context(|| format!("cannot write --summary {}", path.display()))?;
    }
    Ok(())
}

/// The run's rates, counters and latency percentiles on stderr.
fn print_summary(s: &LiveSummary) {
    let c = &s.counters;
    eprintln!(
        "live: {:.1} s, {} frames captured, {} processed ({:.1}/s), {} dropped, {} late, reopens audio {} video {}, {} non-finite audio samples, {} silent samples for gaps, {} tracks",
        s.seconds,
        c.frames_captured,
        c.frames_processed,
        s.fps,
        c.frames_dropped,
        c.frames_late,
        c.audio_reopens,
        c.video_reopens,
        c.audio_bad_samples,
        c.audio_gap_samples,
        s.tracks_started
    );
    let f = &c.audio_fault_windows;
    eprintln!(
        "audio faults (0.1 s windows): {} non-finite, {} out of range, {} clipped, {} stuck, {} silent; {} frames not encoded for a faulty or missing segment",
        f.non_finite, f.out_of_range, f.clipped, f.stuck, f.silent, c.frames_audio_fault
    );
    if s.output_lines_unwritten > 0 {
        eprintln!(
            "outputs: {} result lines could not be written (see the warnings above)",
            s.output_lines_unwritten
        );
    }
    eprintln!(
        "video {}x{} at {} fps, audio {} Hz x {}, segment ends {:.3} s after its frame",
        s.video[0], s.video[1], s.video[2], s.audio[0], s.audio[1], s.alignment_delay_s
    );
    let m = &s.memory;
    if m.pool.engaged {
        eprintln!(
            "memory: {} blocks ({:.1} MiB) carved by the allocation pool; after the first {} frames, {} fresh allocations and {:.1} recycled per frame over {} frames, {} requests for the system allocator in all",
            m.pool.carved,
            m.pool.carved_bytes as f64 / (1u64 << 20) as f64,
            pipeline::WARM_FRAMES,
            m.steady_fresh,
            m.steady_reused as f64 / m.steady_frames.max(1) as f64,
            m.steady_frames,
            m.pool.system
        );
    } else {
        eprintln!("memory: the allocation pool was not engaged (see the warning above)");
    }
    eprintln!("latency ms      p50      p95      p99");
    for (stage, p) in &s.latency {
        eprintln!("{stage:<12} {:>8.2} {:>8.2} {:>8.2}", p.p50, p.p95, p.p99);
    }
}
