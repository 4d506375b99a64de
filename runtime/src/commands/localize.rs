//! `cavsync localize`: a session over clips from a folder, a datafile or a video, with every file sink and the terminal.

use std::path::{Path, PathBuf};

use anyhow::bail;
use indicatif::ProgressBar;

use cavsync_core::annotations::Annotations;
use cavsync_core::clip::{self, Clip};
use cavsync_core::record::{baseline_line, clip_line, overall_line};
use cavsync_device::bundle::Bundle;
use cavsync_device::session::{ClipResult, FrameOutput, GroundTruth, RunSummary, Session};
use cavsync_device::sink::{self, Heatmaps, JsonLines, Metrics, Report, Sink, SinkError};

use super::{BundleArgs, DeviceArgs, MismatchedAudio};

/// Arguments of `cavsync localize`.
#[derive(clap::Args, Debug)]
#[command(group = clap::ArgGroup::new("input").required(true).args(["clip", "datafile", "video"]))]
pub struct Args {
    #[command(flatten)]
    bundle: BundleArgs,
    #[command(flatten)]
    device: DeviceArgs,
    /// Clip folder: frames/*.jpg|png plus audio.wav.
    #[arg(long)]
    clip: Option<PathBuf>,
    /// CAV-MAE datafile JSON (frames at video_path/frame_{k}/video_id.jpg); every clip is localized.
    #[arg(long)]
    datafile: Option<PathBuf>,
    /// Video file, decoded with the `ffmpeg` executable; frames are taken every 1 / --fps seconds over the whole video, each with the audio around its own time.
    #[arg(long)]
    video: Option<PathBuf>,
    /// Frames per second sampled from --video (1.6 gives the 16 frames per 10 s of the datafile layout).
    #[arg(long, default_value_t = 1.6, requires = "video")]
    fps: f64,
    /// Output directory: localization.jsonl, <clip>_heatmaps.npy, overlays/*.png, <clip>.gif, index.html (and metrics.json with --annotations).
    #[arg(long)]
    out: PathBuf,
    /// Skip the overlay PNGs and animations.
    #[arg(long)]
    no_overlays: bool,
    /// Print only the per-clip and overall summaries, not a line per frame.
    #[arg(long)]
    summary_only: bool,
    /// Ground truth of the sounding objects (annotations.json written by `cavsync-export synth`): adds pointing game, cIoU and AUC per clip and overall (metrics.json), beside two baselines on the same frames: a centred Gaussian heatmap, and the model hearing the next clip's audio (a single clip hears its own audio rotated by half its length).
    #[arg(long)]
    annotations: Option<PathBuf>,
}

/// Where `--video`'s frames are extracted.
fn video_frames(args: &Args) -> PathBuf {
    args.out.join("video-frames")
}

/// The clips named by the input flags.
fn load_clips(args: &Args, total_frames: usize) -> anyhow::Result<Vec<Clip>> {
    if let Some(clips) =
        super::file_clips(args.clip.as_deref(), args.datafile.as_deref(), total_frames)?
    {
        return Ok(clips);
    }
    if let Some(path) = &args.video {
        return Ok(vec![clip::clip_from_video(
            path,
            args.fps,
            &video_frames(args),
        )?]);
    }
    bail!("give --clip, --datafile or --video")
}

/// The terminal: a progress bar, a line per frame (unless summary-only), per-clip and overall lines.
struct Terminal {
    bar: ProgressBar,
    frame_lines: bool,
}

impl Sink for Terminal {
    fn frame(&mut self, frame: &FrameOutput<'_>) -> Result<(), SinkError> {
        if self.frame_lines {
            let line = frame.record.line();
            self.bar.suspend(|| println!("{line}"));
        }
        self.bar.inc(1);
        Ok(())
    }

    fn end_clip(&mut self, clip: &ClipResult) -> Result<(), SinkError> {
        if let Some(s) = &clip.summary {
            let mut line = clip_line(&clip.id, s);
            if let Some(b) = &clip.baselines {
                line.push_str("\n  ");
                line.push_str(&baseline_line(b));
            }
            self.bar.suspend(|| println!("{line}"));
        }
        Ok(())
    }

    fn finish(&mut self, run: &RunSummary) -> Result<(), SinkError> {
        self.bar.finish_and_clear();
        println!(
            "localized {} frames of {} clip(s): {:.2} frames/s (inference incl. preprocessing, {} thread(s))",
            run.frames,
            run.clips,
            run.frames as f64 / run.inference_s.max(1e-9),
            run.threads
        );
        if let Some(s) = &run.summary {
            println!("{}", overall_line(s));
        }
        if let Some(b) = &run.baselines {
            println!("{}", baseline_line(b));
        }
        Ok(())
    }
}

/// Localize every clip, write the outputs, print the results.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let bundle = args.bundle.open_on(&args.device)?;
    let annotations = args
        .annotations
        .as_deref()
        .map(Annotations::read)
        .transpose()?;
    // What a failed run made is removed: --out where this run created it, else the video's frames.
    let made = if args.out.exists() {
        video_frames(args)
    } else {
        args.out.clone()
    };
    let made_existed = made.exists();
    // Every input is read before the outputs are written, so a bad one leaves no output behind.
    let result =
        load_clips(args, bundle.manifest.audio_preprocessing.total_frames).and_then(|clips| {
            sink::create_dir(&args.out)?;
            localize_into_out(args, &bundle, annotations.as_ref(), &clips)
        });
    if result.is_err()
        && !made_existed
        && let Err(cleanup) = std::fs::remove_dir_all(&made)
        && cleanup.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %made.display(), %cleanup, "cannot remove");
    }
    result
}

/// Run the session over `clips` and write every output into `--out` (which exists).
fn localize_into_out(
    args: &Args,
    bundle: &Bundle,
    annotations: Option<&Annotations>,
    clips: &[Clip],
) -> anyhow::Result<()> {
    let truth = annotations.map(|a| GroundTruth {
        annotations: a,
        path: args.annotations.as_deref().unwrap_or(Path::new("")),
    });
    let frames: usize = clips.iter().map(|c| c.frames.len()).sum();
    let title = format!("cavsync localization: {}", bundle.dir.display());
    let mut json = JsonLines::new(args.out.join("localization.jsonl"));
    let mut heatmaps = Heatmaps::new(args.out.clone());
    let mut report = Report::new(args.out.clone(), title, !args.no_overlays)?;
    let mut metrics = Metrics::new(args.out.join("metrics.json"));
    let mut terminal = Terminal {
        bar: super::frame_progress(frames, "localizing"),
        frame_lines: !args.summary_only,
    };
    let mut sinks: [&mut dyn Sink; 5] = [
        &mut json,
        &mut heatmaps,
        &mut report,
        &mut metrics,
        &mut terminal,
    ];
    let mut session = Session::new(bundle, truth)?;
    let mismatched = MismatchedAudio::new(clips, truth.is_some());
    for (i, clip) in clips.iter().enumerate() {
        session.run_clip(clip, mismatched.for_clip(clips, i), &mut sinks)?;
    }
    let run = session.finish(&mut sinks)?;
    let mut written = vec!["localization.jsonl", "*_heatmaps.npy"];
    if !args.no_overlays {
        written.extend(["overlays/", "*.gif"]);
    }
    if run.summary.is_some() {
        written.push("metrics.json");
    }
    written.push("index.html");
    println!("results in {}: {}", args.out.display(), written.join(", "));
    Ok(())
}
