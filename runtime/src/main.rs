//! The `cavsync` command line: on-device preprocessing, inference, localization, retrieval and benchmarks.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::{Array3, ArrayD, Axis, IxDyn};

use cavsync::annotations::Annotations;
use cavsync::bundle::{Bundle, set_threads};
use cavsync::cli::EmbedInputs;
use cavsync::clip::{self, Clip};
use cavsync::localize::{Peak, render_overlay, save_png};
use cavsync::metrics::{self, LocalizationTally};
use cavsync::npy;
use cavsync::pipeline::{ClipEncoder, FrameLocalizer};
use cavsync::preprocess::{audio, fbank, segment};
use cavsync::report::{self, ClipReport, FrameRow};
use cavsync::retrieval::{ClipEmbeddings, Strategy, evaluate};

/// Milliseconds per frame of the overlay animations.
const GIF_FRAME_MS: u32 = 400;

/// cavsync: CAV-MAE Sync audio-visual inference on edge devices.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Compute the Kaldi-compatible log-mel filterbank of a WAV file, exactly as the official loader.
    Fbank(FbankArgs),
    /// Print what a bundle's manifest says, after verifying hashes and graphs.
    Info(BundleArgs),
    /// Run a bundle's encoders and write global embeddings and patch tokens as .npy files.
    Embed(EmbedArgs),
    /// Localize sound sources in every frame of a clip: JSON lines, heatmaps and overlay PNGs.
    Localize(LocalizeArgs),
    /// Audio-to-visual and visual-to-audio retrieval over the clips of a datafile (R@1/5/10, median rank).
    Retrieve(RetrieveArgs),
    /// Measure encoder latency and throughput of a bundle on this machine.
    Bench(BenchArgs),
    /// Choose a bundle's activity threshold from annotated `localize` results (best balanced accuracy between sounding and silent frames).
    Calibrate(CalibrateArgs),
}

#[derive(Args, Debug)]
struct CalibrateArgs {
    /// localization.jsonl files written by `localize --annotations` on held-out calibration clips.
    #[arg(long, required = true, num_args = 1..)]
    results: Vec<PathBuf>,
}

#[derive(Args, Debug)]
struct FbankArgs {
    /// Input WAV (PCM 16/24/32-bit or float, any channel count and sample rate; mixed to mono and resampled to 16 kHz).
    #[arg(long)]
    wav: PathBuf,
    /// Output .npy file: f32 array of shape (frames, 128).
    #[arg(long)]
    out: PathBuf,
    /// Apply the model's input normalisation (x + 5.081) / 4.4849 instead of writing the raw log-mel.
    #[arg(long)]
    normalize: bool,
    /// Zero-pad input shorter than one 25 ms frame (400 samples) instead of refusing it.
    #[arg(long)]
    pad_short: bool,
}

#[derive(Args, Debug)]
struct BundleArgs {
    /// Bundle directory written by `cavsync-export convert` (manifest.toml, audio.onnx, visual.onnx).
    #[arg(long)]
    bundle: PathBuf,
    /// Threads for matrix products (1 = single-threaded).
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

#[derive(Args, Debug)]
struct EmbedArgs {
    #[command(flatten)]
    bundle: BundleArgs,
    #[command(flatten)]
    inputs: EmbedInputs,
}

#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("input").required(true).args(["clip", "datafile", "video"]))]
struct LocalizeArgs {
    #[command(flatten)]
    bundle: BundleArgs,
    /// Clip folder: frames/*.jpg|png plus audio.wav.
    #[arg(long)]
    clip: Option<PathBuf>,
    /// CAV-MAE datafile JSON (frames at video_path/frame_{k}/video_id.jpg); every clip is localized.
    #[arg(long)]
    datafile: Option<PathBuf>,
    /// Video file, decoded with the `ffmpeg` executable.
    #[arg(long)]
    video: Option<PathBuf>,
    /// Output directory: localization.jsonl, <clip>_heatmaps.npy, overlays/*.png, <clip>.gif, index.html (and metrics.json with --annotations).
    #[arg(long)]
    out: PathBuf,
    /// Skip the overlay PNGs and animations.
    #[arg(long)]
    no_overlays: bool,
    /// Print only the per-clip and overall summaries, not a line per frame.
    #[arg(long)]
    summary_only: bool,
    /// Ground truth of the sounding objects (annotations.json written by `cavsync-export synth`): adds pointing game, cIoU and AUC per clip and overall (metrics.json).
    #[arg(long)]
    annotations: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct RetrieveArgs {
    #[command(flatten)]
    bundle: BundleArgs,
    /// CAV-MAE datafile JSON listing the clips.
    #[arg(long)]
    datafile: PathBuf,
    /// How frame similarities are aggregated per clip pair.
    #[arg(long, value_enum, default_value = "diagonal_mean")]
    strategy: Strategy,
}

#[derive(Args, Debug)]
struct BenchArgs {
    #[command(flatten)]
    bundle: BundleArgs,
    /// Timed iterations per encoder (after 2 warm-up runs).
    #[arg(long, default_value_t = 20)]
    iterations: usize,
}

fn run_fbank(args: &FbankArgs) -> anyhow::Result<()> {
    let samples = audio::load_wav_16k(&args.wav)?;
    let short = if args.pad_short {
        fbank::ShortInput::ZeroPad
    } else {
        fbank::ShortInput::Error
    };
    let mut mel = fbank::clip_log_mel(&samples, short)
        .with_context(|| format!("{}: fbank failed", args.wav.display()))?;
    if args.normalize {
        let values = mel
            .as_slice_mut()
            .context("log-mel buffer is not contiguous")?;
        segment::normalize_in_place(values);
    }
    npy::write_f32(&args.out, mel.view().into_dyn())?;
    tracing::info!(frames = mel.nrows(), out = %args.out.display(), "wrote log-mel filterbank");
    Ok(())
}

fn open_bundle(args: &BundleArgs) -> anyhow::Result<Bundle> {
    if args.threads == 0 {
        bail!("--threads must be at least 1");
    }
    set_threads(args.threads);
    let bundle = Bundle::open(&args.bundle)?;
    tracing::info!(bundle = %args.bundle.display(), threads = args.threads, "opened bundle");
    Ok(bundle)
}

fn info(args: &BundleArgs) -> anyhow::Result<()> {
    let bundle = open_bundle(args)?;
    let m = &bundle.manifest;
    println!(
        "bundle            {} (format {}, verified)",
        bundle.dir.display(),
        m.format_version
    );
    println!(
        "model             {} layout, dim {}, heads {}, depth audio {} / visual {} / joint {}, registers {}, contrastive {}",
        m.model.layout,
        m.model.dim,
        m.model.heads,
        m.model.depth_audio,
        m.model.depth_visual,
        m.model.depth_joint,
        m.model.registers,
        m.model.contrastive_depth
    );
    println!(
        "precision         {} (batch {})",
        m.model.precision, m.model.batch
    );
    for (name, e) in [("audio", &m.audio), ("visual", &m.visual)] {
        println!(
            "{name:<17} {} {:?} -> {} (1, {}), {} (1, {}, {}); grid {}x{}; sha256 {}",
            e.file,
            e.input_shape,
            e.global_output,
            m.model.dim,
            e.tokens_output,
            e.tokens,
            m.model.dim,
            e.grid[0],
            e.grid[1],
            e.sha256
        );
    }
    let a = &m.audio_preprocessing;
    println!(
        "audio input       {} Hz, {} mel bins, {}/{} samples frame/shift, L = {}, T = {}, clip {} frames, norm (x - {}) / {}",
        a.sample_rate,
        a.num_mel_bins,
        a.frame_length,
        a.frame_shift,
        a.target_length,
        a.total_frames,
        a.clip_frames,
        a.norm_mean,
        a.norm_std
    );
    let i = &m.image_preprocessing;
    println!(
        "image input       {} px, {} resize, {} crop, mean {:?}, std {:?}",
        i.size, i.resize, i.crop, i.mean, i.std
    );
    println!(
        "localization      active threshold {} ({})",
        m.localization.active_threshold, m.localization.calibration
    );
    println!(
        "provenance        {} (sha256 {}), {}",
        m.provenance.checkpoint, m.provenance.checkpoint_sha256, m.provenance.tool
    );
    Ok(())
}

/// Items of a batch as contiguous vectors, checking the per-item shape.
fn batch_items(
    batch: &ArrayD<f32>,
    item_shape: &[usize],
    source: &str,
) -> anyhow::Result<Vec<Vec<f32>>> {
    if batch.ndim() != item_shape.len() + 1 || &batch.shape()[1..] != item_shape {
        bail!(
            "{source}: input has shape {:?}; expected [batch, {}]",
            batch.shape(),
            item_shape
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(batch
        .axis_iter(Axis(0))
        .map(|item| item.iter().copied().collect())
        .collect())
}

fn embed(args: &EmbedArgs) -> anyhow::Result<()> {
    let bundle = open_bundle(&args.bundle)?;
    let m = &bundle.manifest;
    let inputs = &args.inputs;
    let audio_batch = inputs.audio_batch(
        m.audio_preprocessing.target_length,
        m.audio_preprocessing.total_frames,
    )?;
    let audio_items = batch_items(
        &audio_batch,
        &m.audio.input_shape[1..],
        &inputs.source(true),
    )?;
    let image_items = batch_items(
        &inputs.image_batch()?,
        &m.visual.input_shape[1..],
        &inputs.source(false),
    )?;
    let dim = bundle.dim();
    let mut outputs = Vec::new();
    for (name, items, tokens) in [
        ("audio", &audio_items, m.audio.tokens),
        ("visual", &image_items, m.visual.tokens),
    ] {
        let mut global = Vec::with_capacity(items.len() * dim);
        let mut toks = Vec::with_capacity(items.len() * tokens * dim);
        for item in items {
            let e = if name == "audio" {
                bundle.embed_audio(item)?
            } else {
                bundle.embed_visual(item)?
            };
            global.extend(e.global);
            toks.extend(e.tokens);
        }
        let n = items.len();
        outputs.push((
            format!("{name}_global.npy"),
            ArrayD::from_shape_vec(IxDyn(&[n, dim]), global)?,
        ));
        outputs.push((
            format!("{name}_tokens.npy"),
            ArrayD::from_shape_vec(IxDyn(&[n, tokens, dim]), toks)?,
        ));
    }
    std::fs::create_dir_all(&inputs.out)
        .with_context(|| format!("{}: cannot create output directory", inputs.out.display()))?;
    for (file, array) in &outputs {
        npy::write_f32(&inputs.out.join(file), array.view())?;
    }
    tracing::info!(out = %inputs.out.display(), "wrote embeddings");
    Ok(())
}

/// The clips named by a localize/retrieve input.
fn load_clips(
    clip_dir: Option<&Path>,
    datafile: Option<&Path>,
    video: Option<&Path>,
    total_frames: usize,
    work_dir: &Path,
) -> anyhow::Result<Vec<Clip>> {
    if let Some(dir) = clip_dir {
        return Ok(vec![clip::clip_from_dir(dir)?]);
    }
    if let Some(path) = datafile {
        return clip::read_datafile(path)?
            .iter()
            .map(|e| Ok(clip::clip_from_datafile_entry(e, total_frames)?))
            .collect();
    }
    if let Some(path) = video {
        return Ok(vec![clip::clip_from_video(path, total_frames, work_dir)?]);
    }
    bail!("give --clip, --datafile or --video")
}

fn progress(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

fn localize(args: &LocalizeArgs) -> anyhow::Result<()> {
    let bundle = open_bundle(&args.bundle)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("{}: cannot create output directory", args.out.display()))?;
    let annotations = args
        .annotations
        .as_deref()
        .map(Annotations::read)
        .transpose()?;
    let work = args.out.join("video-frames");
    let clips = load_clips(
        args.clip.as_deref(),
        args.datafile.as_deref(),
        args.video.as_deref(),
        bundle.manifest.audio_preprocessing.total_frames,
        &work,
    )?;
    let overlays = args.out.join("overlays");
    if !args.no_overlays {
        std::fs::create_dir_all(&overlays)
            .with_context(|| format!("{}: cannot create directory", overlays.display()))?;
    }
    let frames_total: usize = clips.iter().map(|c| c.frames.len()).sum();
    let bar = progress(frames_total, "localizing");
    let mut encoder = ClipEncoder::new(&bundle);
    let mut localizer = FrameLocalizer::new(&bundle)?;
    let jsonl_path = args.out.join("localization.jsonl");
    let mut lines = String::new();
    let mut reports = Vec::with_capacity(clips.len());
    let mut overall = LocalizationTally::default();
    let mut per_clip_metrics = Vec::new();
    let mut inference_s = 0.0;
    for clip in &clips {
        let truth = match &annotations {
            Some(a) => Some(a.clip(&clip.id).with_context(|| {
                format!(
                    "{}: clip {} has no entry in the annotations",
                    args.annotations
                        .as_deref()
                        .unwrap_or(Path::new(""))
                        .display(),
                    clip.id
                )
            })?),
            None => None,
        };
        let mut tally = LocalizationTally::default();
        let mut rows = Vec::with_capacity(clip.frames.len());
        let mut overlay_frames = Vec::new();
        let mel = encoder.clip_fbank(clip)?;
        let mut heatmaps: Vec<Vec<f32>> = Vec::new();
        let mut size: Option<(usize, usize)> = None;
        for frame in &clip.frames {
            let t0 = Instant::now();
            let (emb, rgb) = encoder.encode_frame(&mel, frame, clip.total_frames)?;
            let (w, h) = (rgb.width() as usize, rgb.height() as usize);
            let loc = localizer.localize(&emb, w, h)?;
            inference_s += t0.elapsed().as_secs_f64();
            if size.is_some_and(|s| s != (w, h)) {
                bail!(
                    "{}: frame size {w}x{h} differs from the clip's earlier frames",
                    frame.path.display()
                );
            }
            size = Some((w, h));
            let gt = truth
                .map(|t| {
                    t.frames.get(frame.index).with_context(|| {
                        format!(
                            "annotations of clip {} have no frame {}",
                            clip.id, frame.index
                        )
                    })
                })
                .transpose()?;
            let (mut ciou, mut hit) = (None, None);
            if let Some(gt) = gt {
                if gt.sounding.is_empty() {
                    tally.add_silent(loc.result.active);
                } else {
                    let boxes: Vec<[f32; 4]> = gt.sounding.iter().map(|o| o.bbox).collect();
                    let mask = metrics::gt_map(&boxes, w, h);
                    let c = metrics::ciou(&loc.heatmap, &mask, w, h)?;
                    let p = metrics::pointing_hit(&loc.heatmap, &mask, w, h)?;
                    tally.add_sounding(c, p, loc.result.active);
                    (ciou, hit) = (Some(c), Some(p));
                }
            }
            let mut record = serde_json::json!({
                "clip": clip.id,
                "frame": frame.index,
                "time_s": frame.time_s,
                "image": frame.path,
                "width": w,
                "height": h,
                "score": loc.result.score,
                "active": loc.result.active,
                "peaks": loc.result.peaks,
                "boxes": loc.result.boxes,
            });
            if let Some(gt) = gt {
                record["sounding"] = serde_json::json!(gt.sounding.len());
                record["ciou"] = serde_json::json!(ciou);
                record["pointing_hit"] = serde_json::json!(hit);
            }
            lines.push_str(&record.to_string());
            lines.push('\n');
            let mut overlay_name = None;
            if !args.no_overlays {
                let overlay = render_overlay(&rgb, &loc.heatmap, &loc.result)?;
                let name = format!("{}_frame{:02}.png", clip.id, frame.index);
                save_png(&overlay, &overlays.join(&name))?;
                overlay_frames.push(overlay);
                overlay_name = Some(format!("overlays/{name}"));
            }
            let row = FrameRow {
                frame: frame.index,
                time_s: frame.time_s,
                score: loc.result.score,
                active: loc.result.active,
                sounding: gt.map(|g| g.sounding.len()),
                ciou,
                hit,
                overlay: overlay_name,
            };
            if !args.summary_only {
                let line = frame_line(&clip.id, &row, loc.result.peaks.first());
                bar.suspend(|| println!("{line}"));
            }
            rows.push(row);
            heatmaps.push(loc.heatmap);
            bar.inc(1);
        }
        if let Some((w, h)) = size {
            let flat: Vec<f32> = heatmaps.concat();
            let array = Array3::from_shape_vec((heatmaps.len(), h, w), flat)?;
            npy::write_f32(
                &args.out.join(format!("{}_heatmaps.npy", clip.id)),
                array.view().into_dyn(),
            )?;
        }
        let gif = if overlay_frames.is_empty() {
            None
        } else {
            let name = format!("{}.gif", clip.id);
            let path = args.out.join(&name);
            report::write_gif(&overlay_frames, GIF_FRAME_MS, &path)
                .with_context(|| format!("{}: cannot write the animation", path.display()))?;
            Some(name)
        };
        let summary = if truth.is_some() && !tally.cious.is_empty() {
            Some(tally.summary()?)
        } else {
            None
        };
        if let Some(s) = &summary {
            bar.suspend(|| {
                println!(
                    "{}: pointing {}/{}, cIoU@0.5 {:.2}, AUC {:.3}, {}",
                    clip.id,
                    tally.pointing_hits,
                    s.sounding_frames,
                    s.ciou_at_half,
                    s.auc,
                    s.silent_phrase()
                )
            });
            per_clip_metrics.push(serde_json::json!({ "clip": clip.id, "metrics": s }));
        }
        overall.merge(&tally);
        reports.push(ClipReport {
            id: clip.id.clone(),
            gif,
            rows,
            summary,
        });
    }
    bar.finish_and_clear();
    cavsync::atomic::write_atomic(&jsonl_path, |w| w.write_all(lines.as_bytes()))
        .with_context(|| format!("{}: cannot write", jsonl_path.display()))?;
    let overall_summary = if annotations.is_some() && !overall.cious.is_empty() {
        Some(overall.summary()?)
    } else {
        None
    };
    if let Some(s) = &overall_summary {
        let path = args.out.join("metrics.json");
        let text = serde_json::to_string_pretty(&serde_json::json!({
            "overall": s,
            "clips": per_clip_metrics,
        }))?;
        cavsync::atomic::write_atomic(&path, |w| w.write_all(text.as_bytes()))
            .with_context(|| format!("{}: cannot write", path.display()))?;
    }
    let page = args.out.join("index.html");
    report::write_html(
        &format!("cavsync localization: {}", bundle.dir.display()),
        &reports,
        overall_summary.as_ref(),
        &page,
    )
    .with_context(|| format!("{}: cannot write", page.display()))?;
    println!(
        "localized {frames_total} frames of {} clip(s): {:.2} frames/s (inference incl. preprocessing, {} thread(s))",
        clips.len(),
        frames_total as f64 / inference_s.max(1e-9),
        args.bundle.threads
    );
    if let Some(s) = &overall_summary {
        println!(
            "ground truth: pointing {:.1}%, cIoU@0.5 {:.1}%, mean cIoU {:.3}, AUC {:.3} over {} sounding frames; \
             sounding frames active {:.1}%; {}",
            100.0 * s.pointing,
            100.0 * s.ciou_at_half,
            s.mean_ciou,
            s.auc,
            s.sounding_frames,
            100.0 * s.sounding_active_rate,
            s.silent_phrase()
        );
    }
    let mut written = vec!["localization.jsonl", "*_heatmaps.npy"];
    if !args.no_overlays {
        written.extend(["overlays/", "*.gif"]);
    }
    if overall_summary.is_some() {
        written.push("metrics.json");
    }
    written.push("index.html");
    println!("results in {}: {}", args.out.display(), written.join(", "));
    Ok(())
}

/// One frame's result as `localize` prints it: time, score, activity, strongest peak and, with ground truth, the hit and cIoU.
fn frame_line(clip: &str, row: &FrameRow, peak: Option<&Peak>) -> String {
    let activity = if row.active { "active  " } else { "inactive" };
    let mut line = format!(
        "{clip} frame {:02} t={:5.2}s score {:.3} {activity}",
        row.frame, row.time_s, row.score
    );
    match peak {
        Some(p) => line.push_str(&format!(" peak ({:.1}, {:.1})", p.x, p.y)),
        None => line.push_str(" no peak"),
    }
    match (row.sounding, row.ciou.zip(row.hit)) {
        (Some(n), Some((c, h))) => line.push_str(&format!(
            " | {n} sounding: {}, cIoU {c:.2}",
            if h { "hit" } else { "miss" }
        )),
        (Some(_), None) => line.push_str(" | nothing sounding"),
        (None, _) => {}
    }
    line
}

fn retrieve(args: &RetrieveArgs) -> anyhow::Result<()> {
    let bundle = open_bundle(&args.bundle)?;
    let total = bundle.manifest.audio_preprocessing.total_frames;
    let entries = clip::read_datafile(&args.datafile)?;
    let dim = bundle.dim();
    let bar = progress(entries.len() * total, "embedding");
    let mut encoder = ClipEncoder::new(&bundle);
    let mut audio = Vec::with_capacity(entries.len() * total * dim);
    let mut visual = Vec::with_capacity(entries.len() * total * dim);
    for entry in &entries {
        let clip = clip::clip_from_datafile_entry(entry, total)?;
        let mel = encoder.clip_fbank(&clip)?;
        for frame in &clip.frames {
            let (emb, _) = encoder.encode_frame(&mel, frame, clip.total_frames)?;
            audio.extend(emb.audio.global);
            visual.extend(emb.visual.global);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let n = entries.len();
    let audio = ClipEmbeddings::new(audio, n, total, dim)?;
    let visual = ClipEmbeddings::new(visual, n, total, dim)?;
    let report = evaluate(&audio, &visual, args.strategy)?;
    println!("{n} clips x {total} frames, strategy {}", args.strategy);
    println!("direction        R@1     R@5     R@10    median rank");
    for (name, r) in [
        ("audio->visual", &report.audio_to_visual),
        ("visual->audio", &report.visual_to_audio),
    ] {
        println!(
            "{name:<14} {:>6.2}% {:>6.2}% {:>6.2}%  {}",
            100.0 * r.r1,
            100.0 * r.r5,
            100.0 * r.r10,
            r.median_rank
        );
    }
    Ok(())
}

/// Peak resident set size of this process in MiB, from /proc (None where unavailable).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn bench(args: &BenchArgs) -> anyhow::Result<()> {
    if args.iterations == 0 {
        bail!("--iterations must be at least 1");
    }
    let bundle = open_bundle(&args.bundle)?;
    let m = &bundle.manifest;
    let audio_in: Vec<f32> = (0..m.audio.input_shape.iter().product::<usize>())
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let image_in: Vec<f32> = (0..m.visual.input_shape.iter().product::<usize>())
        .map(|i| ((i * 104_729) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    for _ in 0..2 {
        bundle.embed_audio(&audio_in)?;
        bundle.embed_visual(&image_in)?;
    }
    let mut audio_s = Vec::new();
    let mut visual_s = Vec::new();
    let mut pair_s = Vec::new();
    for _ in 0..args.iterations {
        let t0 = Instant::now();
        bundle.embed_audio(&audio_in)?;
        let t1 = Instant::now();
        bundle.embed_visual(&image_in)?;
        let t2 = Instant::now();
        audio_s.push((t1 - t0).as_secs_f64());
        visual_s.push((t2 - t1).as_secs_f64());
        pair_s.push((t2 - t0).as_secs_f64());
    }
    let pair = median(pair_s);
    println!(
        "bundle {} ({} {}, dim {}, L = {}), threads {}, {} iterations",
        args.bundle.bundle.display(),
        m.model.layout,
        m.model.precision,
        m.model.dim,
        m.audio_preprocessing.target_length,
        args.bundle.threads,
        args.iterations
    );
    println!("what              median latency");
    println!("audio encoder     {:>10.2} ms", 1e3 * median(audio_s));
    println!("visual encoder    {:>10.2} ms", 1e3 * median(visual_s));
    println!("frame pair        {:>10.2} ms", 1e3 * pair);
    println!("throughput        {:>10.2} pairs/s", 1.0 / pair);
    match peak_rss_mib() {
        Some(mib) => println!("peak RSS          {mib:>10.1} MiB"),
        None => println!("peak RSS          unavailable"),
    }
    Ok(())
}

fn calibrate(args: &CalibrateArgs) -> anyhow::Result<()> {
    let mut samples = Vec::new();
    for path in &args.results {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let v: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not a JSON line", path.display(), i + 1))?;
            let score = v["score"].as_f64();
            let sounding = v["sounding"].as_u64();
            let (Some(score), Some(sounding)) = (score, sounding) else {
                bail!(
                    "{}:{}: expected numeric \"score\" and \"sounding\" fields (run `localize --annotations`)",
                    path.display(),
                    i + 1
                );
            };
            samples.push((score as f32, sounding > 0));
        }
    }
    let c = metrics::calibrate_threshold(&samples).with_context(|| {
        format!(
            "{} frames: calibration needs both sounding and silent frames",
            samples.len()
        )
    })?;
    let silent = samples.iter().filter(|s| !s.1).count();
    println!(
        "threshold {:.4}: sounding frames active {:.1}% (of {}), silent frames not active {:.1}% (of {})",
        c.threshold,
        100.0 * c.sounding_active_rate,
        samples.len() - silent,
        100.0 * c.silent_inactive_rate,
        silent
    );
    Ok(())
}

fn main() -> ExitCode {
    cavsync::cli::init_tracing();
    let cli = Cli::parse();
    cavsync::cli::finish(match &cli.command {
        Command::Fbank(args) => run_fbank(args),
        Command::Info(args) => info(args),
        Command::Embed(args) => embed(args),
        Command::Localize(args) => localize(args),
        Command::Retrieve(args) => retrieve(args),
        Command::Bench(args) => bench(args),
        Command::Calibrate(args) => calibrate(args),
    })
}
