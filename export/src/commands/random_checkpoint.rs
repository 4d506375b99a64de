//! `random-checkpoint`: a random-weight checkpoint of any size with the official key names.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;

use cavsync_core::model::Layout;
use cavsync_formats::layout::{DecoderConfig, ModelConfig};
use cavsync_formats::random;

/// Arguments of `random-checkpoint`.
#[derive(Args, Debug)]
pub struct RandomArgs {
    /// Output .safetensors file.
    #[arg(long)]
    out: PathBuf,
    /// Embedding dimension.
    #[arg(long, default_value_t = 768)]
    dim: usize,
    /// Modality-specific blocks per modality (the joint depth is 12 minus this, at least 1).
    #[arg(long, default_value_t = 11)]
    depth: usize,
    /// Register tokens per modality.
    #[arg(long, default_value_t = 8)]
    registers: usize,
    /// Audio segment length L in fbank frames (a multiple of 16).
    #[arg(long, default_value_t = 416)]
    audio_length: usize,
    /// Blocks per contrastive head (0 = none).
    #[arg(long, default_value_t = 0)]
    contrastive_depth: usize,
    /// Original CAV-MAE layout (no global tokens).
    #[arg(long)]
    plain: bool,
    /// Decoder dimension (0 = no decoder).
    #[arg(long, default_value_t = 0)]
    decoder_dim: usize,
    /// Decoder blocks.
    #[arg(long, default_value_t = 8)]
    decoder_depth: usize,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Write the checkpoint and print its parameter count.
pub fn run(args: &RandomArgs) -> anyhow::Result<()> {
    if args.dim == 0 || args.audio_length == 0 || !args.audio_length.is_multiple_of(16) {
        bail!("--dim must be positive and --audio-length a positive multiple of 16");
    }
    let config = ModelConfig {
        layout: if args.plain {
            Layout::Plain
        } else {
            Layout::Sync
        },
        contrastive_depth: args.contrastive_depth,
        decoder: (args.decoder_dim > 0)
            .then(|| DecoderConfig::new(args.decoder_dim, args.decoder_depth)),
        ..ModelConfig::sync(args.dim, args.depth, args.registers, args.audio_length)
    };
    let tensors = random::random_tensors(&config, args.seed);
    random::write_safetensors(&tensors, &args.out)?;
    let params: usize = tensors.values().map(|t| t.data.len()).sum();
    println!("wrote {} ({params} parameters)", args.out.display());
    Ok(())
}
