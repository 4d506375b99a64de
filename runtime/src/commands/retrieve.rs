//! `cavsync retrieve`: audio-to-visual and visual-to-audio retrieval over a datafile's clips.

use std::path::PathBuf;

use cavsync_core::clip;
use cavsync_core::preprocess::image::load_rgb;
use cavsync_core::preprocess::segment::FramePosition;
use cavsync_core::retrieval::{ClipEmbeddings, Strategy, evaluate};
use cavsync_device::encode::{FrameEncoder, clip_fbank};

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
    /// How frame similarities are aggregated per clip pair: max, mean, diagonal_mean or diagonal_max.
    #[arg(long, default_value = "diagonal_mean")]
    strategy: Strategy,
}

/// Embed every frame of every clip, then rank clips in both directions.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let bundle = args.bundle.open_on(&args.device)?;
    let total = bundle.manifest.audio_preprocessing.total_frames;
    let entries = clip::read_datafile(&args.datafile)?;
    let dim = bundle.dim();
    let bar = super::frame_progress(entries.len() * total, "embedding");
    let mut encoder = FrameEncoder::new(&bundle);
    let mut audio = Vec::with_capacity(entries.len() * total * dim);
    let mut visual = Vec::with_capacity(entries.len() * total * dim);
    for entry in &entries {
        let clip = clip::clip_from_datafile_entry(entry, total)?;
        let mel = clip_fbank(&clip.id, &clip.audio)?;
        for frame in &clip.frames {
            let image = load_rgb(&frame.path)?;
            let position = FramePosition {
                index: frame.index,
                total_frames: clip.total_frames,
                time_s: frame.time_s,
                duration_s: clip.duration_s(),
            };
            let emb = encoder.encode(mel.view(), clip.alignment, position, &image)?;
            audio.extend_from_slice(&emb.audio.global);
            visual.extend_from_slice(&emb.visual.global);
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
