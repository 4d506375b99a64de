//! `synth`: synthetic audio-visual clips with per-frame ground truth.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::bail;
use clap::Args;

use cavsync_synth::{SynthConfig, World, load_backgrounds, write_dataset};

/// Arguments of `synth`.
#[derive(Args, Debug)]
pub struct SynthArgs {
    /// Output folder: audio/ID.wav, frames/frame_{k}/ID.jpg, datafile.json, annotations.json.
    #[arg(long)]
    out: PathBuf,
    /// Number of clips.
    #[arg(long)]
    clips: usize,
    /// Which world: hard (small objects anywhere, decoys animated like sources, off-screen sound; localization needs the audio) or legacy (the first world: large central sources, dimmed silent objects).
    #[arg(long, default_value = "hard")]
    world: World,
    /// Seed; the same seed and clip count give the same data set.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Folder of photographs (.jpg/.jpeg/.png) used as backgrounds instead of procedural textures.
    #[arg(long)]
    backgrounds: Option<PathBuf>,
    /// Share of clips, in [0, 1], with a photograph background when --backgrounds is given.
    #[arg(long, default_value_t = 1.0)]
    photo_share: f32,
}

/// Write the data set with a progress bar and print what it holds.
pub fn run(args: &SynthArgs) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&args.photo_share) {
        bail!(
            "--photo-share is {}; expected a value in [0, 1]",
            args.photo_share
        );
    }
    let backgrounds = match &args.backgrounds {
        Some(dir) => load_backgrounds(dir)?,
        None => Vec::new(),
    };
    let config = SynthConfig {
        world: args.world,
        clips: args.clips,
        seed: args.seed,
        backgrounds,
        photo_share: args.photo_share,
    };
    let progress = cavsync_cli::progress_bar(
        args.clips,
        "synth [{bar:30}] {pos}/{len} clips {per_sec} eta {eta}",
    );
    let started = Instant::now();
    let annotations = write_dataset(&config, &args.out, |i| progress.set_position(i as u64))?;
    progress.finish_and_clear();
    let frames: Vec<_> = annotations.clips.iter().flat_map(|c| &c.frames).collect();
    let silent = frames.iter().filter(|f| f.sounding.is_empty()).count();
    let two = frames.iter().filter(|f| f.sounding.len() == 2).count();
    let offscreen = frames.iter().filter(|f| f.is_offscreen_only()).count();
    let multi = frames.iter().filter(|f| f.is_multi_class()).count();
    println!(
        "wrote {} clips ({} frames: {} silent, {} off-screen only, {} with two sources, {} with 2+ classes in view and one sounding) to {} in {:.1} s",
        annotations.clips.len(),
        frames.len(),
        silent - offscreen,
        offscreen,
        two,
        multi,
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
