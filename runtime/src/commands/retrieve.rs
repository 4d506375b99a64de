//! `cavsync retrieve`: audio-to-visual and visual-to-audio retrieval over a datafile's clips.

use std::path::PathBuf;

use cavsync_core::annotations::Annotations;
use cavsync_core::clip;
use cavsync_core::preprocess::image::load_rgb;
use cavsync_core::preprocess::segment::FramePosition;
use cavsync_core::retrieval::{
    ClipEmbeddings, PatchScores, Strategy, class_oracle, evaluate, expected_metrics,
};
use cavsync_device::bundle::Embedding;
use cavsync_device::encode::{FrameEncoder, clip_fbank};
use ndarray::Array2;

use super::{BundleArgs, DeviceArgs};

/// Arguments of `cavsync retrieve`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    bundle: BundleArgs,
    #[command(flatten)]
    device: DeviceArgs,
    /// CAV-MAE datafile JSON listing the clips.
    #[arg(long)]
    datafile: PathBuf,
    /// How frame similarities of the global tokens are aggregated per clip pair: max, mean, diagonal_mean or diagonal_max (the official retrieval).
    #[arg(long, default_value = "diagonal_mean", conflicts_with = "patch")]
    strategy: Strategy,
    /// Score clip pairs as localization does instead: each aligned frame's audio global token against its image's best patch token, averaged over the frames (how a model trained to find the sounding patch, like the demo model, matches sound to image).
    #[arg(long)]
    patch: bool,
    /// Ground truth of the clips (annotations.json written by `cavsync-export synth`): also prints two baselines on the same clips, chance and an oracle that knows which classes each frame's audio holds and which each frame shows (ties broken at random), so the model's numbers can be read against what recognising classes alone gives.
    #[arg(long)]
    annotations: Option<PathBuf>,
}

/// Embed every frame of every clip, then rank clips in both directions.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let bundle = args.bundle.open_on(&args.device)?;
    let total = bundle.manifest.audio_preprocessing.total_frames;
    let entries = clip::read_datafile(&args.datafile)?;
    let truth = match &args.annotations {
        Some(path) => Some(Annotations::read(path)?),
        None => None,
    };
    let annotated = match (&truth, &args.annotations) {
        (Some(truth), Some(path)) => entries
            .iter()
            .map(|e| {
                truth.clip(&e.video_id).ok_or_else(|| {
                    anyhow::anyhow!(
                        "{}: no clip {:?} of datafile {}",
                        path.display(),
                        e.video_id,
                        args.datafile.display()
                    )
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?,
        _ => Vec::new(),
    };
    let dim = bundle.dim();
    let passes = if args.patch { 2 } else { 1 };
    let bar = super::frame_progress(passes * entries.len() * total, "embedding");
    let mut encoder = FrameEncoder::new(&bundle);
    let mut audio = Vec::with_capacity(entries.len() * total * dim);
    let mut visual = Vec::with_capacity(entries.len() * total * dim);
    // With --patch, each clip's image files for the second pass (its audio is not kept).
    let mut images: Vec<Vec<PathBuf>> = Vec::new();
    let mut audio_emb = Embedding::default();
    for entry in &entries {
        let clip = clip::clip_from_datafile_entry(entry, total)?;
        let mel = clip_fbank(&clip.id, &clip.audio)?;
        for frame in &clip.frames {
            let position = FramePosition {
                index: frame.index,
                total_frames: clip.total_frames,
                time_s: frame.time_s,
                duration_s: clip.duration_s(),
            };
            if args.patch {
                encoder.encode_audio_into(mel.view(), clip.alignment, position, &mut audio_emb)?;
                audio.extend_from_slice(&audio_emb.global);
            } else {
                let image = load_rgb(&frame.path)?;
                let emb = encoder.encode(mel.view(), clip.alignment, position, &image)?;
                audio.extend_from_slice(&emb.audio.global);
                visual.extend_from_slice(&emb.visual.global);
            }
            bar.inc(1);
        }
        if args.patch {
            images.push(clip.frames.iter().map(|f| f.path.clone()).collect());
        }
    }
    let n = entries.len();
    let audio = ClipEmbeddings::new(audio, n, total, dim)?;
    let (score, a2v, v2a) = if args.patch {
        let mut scores = PatchScores::new(audio);
        for (c, paths) in images.iter().enumerate() {
            for (k, path) in paths.iter().enumerate() {
                let emb = encoder.encode_visual(&load_rgb(path)?)?;
                scores.add_frame(c, k, &emb.tokens)?;
                bar.inc(1);
            }
        }
        let (a2v, v2a) = scores.evaluate()?;
        (
            "patch (audio global against the best patch of the aligned image, mean over frames)"
                .to_string(),
            a2v,
            v2a,
        )
    } else {
        let visual = ClipEmbeddings::new(visual, n, total, dim)?;
        let report = evaluate(&audio, &visual, args.strategy)?;
        (
            format!("strategy {}", args.strategy),
            report.audio_to_visual,
            report.visual_to_audio,
        )
    };
    bar.finish_and_clear();
    println!("{n} clips x {total} frames, {score}");
    println!("direction        R@1     R@5     R@10    median rank");
    for (name, r) in [("audio->visual", &a2v), ("visual->audio", &v2a)] {
        println!(
            "{name:<14} {:>6.2}% {:>6.2}% {:>6.2}%  {}",
            100.0 * r.r1,
            100.0 * r.r5,
            100.0 * r.r10,
            r.median_rank
        );
    }
    if truth.is_some() {
        let oracle = class_oracle(&annotated);
        let chance = Array2::<f32>::zeros((n, n));
        println!("baselines on the same clips (ties broken at random):");
        for (name, sim) in [("chance", &chance), ("class oracle", &oracle)] {
            for (direction, m) in [
                ("audio->visual", expected_metrics(sim)?),
                ("visual->audio", expected_metrics(&sim.t().to_owned())?),
            ] {
                println!(
                    "{name:<13} {direction:<14} {:>6.2}% {:>6.2}% {:>6.2}%  {}",
                    100.0 * m.r1,
                    100.0 * m.r5,
                    100.0 * m.r10,
                    m.median_rank
                );
            }
        }
    }
    Ok(())
}
