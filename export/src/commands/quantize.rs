//! `quantize`: an int8 bundle from an f32 bundle, with integer matmuls.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use cavsync_formats::quantize::{QuantizeOptions, quantize_bundle};

/// Arguments of `quantize`.
#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// The f32 bundle to quantize (written by `convert`).
    #[arg(long)]
    bundle: PathBuf,
    /// Output bundle directory (replaced atomically if it exists).
    #[arg(long)]
    out: PathBuf,
    /// One weight scale per output channel instead of one per weight tensor (more accurate, same speed).
    #[arg(long)]
    per_channel: bool,
    /// Keep the MatMul weights whose names start with NAME in f32 (repeatable; the names are those this command prints).
    #[arg(long, value_name = "NAME")]
    keep_float: Vec<String>,
}

/// Quantize the bundle and print what became of each weight.
pub fn run(args: &QuantizeArgs) -> anyhow::Result<()> {
    let options = QuantizeOptions {
        per_channel: args.per_channel,
        keep_float: args.keep_float.clone(),
    };
    let (manifest, reports) = quantize_bundle(&args.bundle, &args.out, &options)
        .with_context(|| format!("cannot quantize {}", args.bundle.display()))?;
    for r in &reports {
        if r.kept_float {
            println!("{:<48} kept f32", r.name);
        } else {
            println!(
                "{:<48} int8, max weight error {:.2}% of the largest weight",
                r.name,
                100.0 * r.relative_error
            );
        }
    }
    let q = manifest
        .quantization
        .as_ref()
        .context("the quantized manifest lacks its quantization section")?;
    println!(
        "wrote {} (int8, {} scheme: {} integer matmuls, {} kept f32; weights {})",
        args.out.display(),
        q.scheme,
        q.quantized_matmuls,
        q.kept_float.len(),
        q.weights
    );
    Ok(())
}
