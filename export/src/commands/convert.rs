//! `convert`: a checkpoint to a model bundle the `cavsync` runtime runs.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;

use cavsync_core::manifest::LocalizationInfo;
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
    /// Numeric precision of the graphs: f32, or f16 (weights and arithmetic; inputs and outputs stay f32); int8 bundles come from `quantize` on an f32 bundle.
    #[arg(long, default_value = "f32")]
    precision: Precision,
    /// Video frames per clip T that audio segments are aligned with.
    #[arg(long, default_value_t = 16)]
    frames: usize,
    /// Raw cosine similarity (audio global vs best visual patch) at or above which a frame is reported as sounding.
    #[arg(long, default_value_t = 0.0, conflicts_with = "localization")]
    active_threshold: f32,
    /// How --active-threshold was obtained, recorded in the manifest.
    #[arg(
        long,
        default_value = "uncalibrated default",
        conflicts_with = "localization"
    )]
    calibration: String,
    /// Activity calibration written by `cavsync calibrate --out` (threshold, head over score, contrast and audio level, and how they were obtained), recorded in the manifest.
    #[arg(long, value_name = "TOML")]
    localization: Option<PathBuf>,
}

/// The manifest's localization section: from --localization, or from --active-threshold and --calibration.
fn localization(args: &ConvertArgs) -> anyhow::Result<LocalizationInfo> {
    let Some(path) = &args.localization else {
        return Ok(LocalizationInfo {
            active_threshold: args.active_threshold,
            calibration: args.calibration.clone(),
            activity: None,
        });
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read the activity calibration", path.display()))?;
    let info: LocalizationInfo = toml::from_str(&text).with_context(|| {
        format!(
            "{}: not an activity calibration (expected active_threshold, calibration and an optional [activity] with weights and bias, as `cavsync calibrate --out` writes)",
            path.display()
        )
    })?;
    if let Some(head) = &info.activity
        && head.non_finite().is_some()
    {
        bail!(
            "{}: activity: expected finite weights and bias, found {:?} and {}",
            path.display(),
            head.weights,
            head.bias
        );
    }
    Ok(info)
}

/// Write the bundle and print a one-line summary of it.
pub fn run(args: &ConvertArgs) -> anyhow::Result<()> {
    if args.frames == 0 {
        bail!("--frames must be at least 1");
    }
    // Refuse int8 before the (possibly large) checkpoint is read.
    onnx::check_precision(args.precision)?;
    let localization = localization(args)?;
    let ck = Checkpoint::load(&args.model.checkpoint)?;
    let config = ModelConfig::detect(&ck, args.model.heads)?;
    tracing::info!(layout = %config.layout.description(), dim = config.dim, "writing bundle");
    let options = BundleOptions {
        precision: args.precision,
        total_frames: args.frames,
        localization,
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
