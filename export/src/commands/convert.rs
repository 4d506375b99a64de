//! `convert`: a checkpoint to a model bundle the `cavsync` runtime runs.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;

use cavsync_core::model::Precision;
use cavsync_formats::bundle::{BundleOptions, write_bundle};
use cavsync_formats::checkpoint::Checkpoint;
use cavsync_formats::layout::ModelConfig;
use cavsync_formats::onnx;

use super::ModelArgs;

/// Arguments of `convert`.
#[derive(Args, Debug)]
pub struct ConvertArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Output bundle directory (replaced atomically if it exists).
    #[arg(long)]
    out: PathBuf,
    /// Numeric precision of the graphs: f32, or f16 (weights and arithmetic; inputs and outputs stay f32); int8 needs calibration, which convert does not do.
    #[arg(long, default_value = "f32")]
    precision: Precision,
    /// Video frames per clip T that audio segments are aligned with.
    #[arg(long, default_value_t = 16)]
    frames: usize,
    /// Raw cosine similarity (audio global vs best visual patch) at or above which a frame is reported as sounding.
    #[arg(long, default_value_t = 0.0)]
    active_threshold: f32,
    /// How --active-threshold was obtained, recorded in the manifest.
    #[arg(long, default_value = "uncalibrated default")]
    calibration: String,
}

/// Write the bundle and print a one-line summary of it.
pub fn run(args: &ConvertArgs) -> anyhow::Result<()> {
    if args.frames == 0 {
        bail!("--frames must be at least 1");
    }
    // Refuse int8 before the (possibly large) checkpoint is read.
    onnx::check_precision(args.precision)?;
    let ck = Checkpoint::load(&args.model.checkpoint)?;
    let config = ModelConfig::detect(&ck, args.model.heads)?;
    tracing::info!(layout = %config.layout.description(), dim = config.dim, "writing bundle");
    let options = BundleOptions {
        precision: args.precision,
        total_frames: args.frames,
        active_threshold: args.active_threshold,
        calibration: args.calibration.clone(),
    };
    let manifest = write_bundle(&ck, &config, &options, &args.out)?;
    println!(
        "wrote {} ({} layout, dim {}, {}, audio {} tokens, visual {} tokens)",
        args.out.display(),
        manifest.model.layout,
        manifest.model.dim,
        manifest.model.precision,
        manifest.audio.tokens,
        manifest.visual.tokens
    );
    Ok(())
}
