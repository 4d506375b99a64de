//! One file per subcommand: its arguments and a `run` that is thin over the library crates.

pub mod convert;
pub mod distill;
pub mod embed;
pub mod inspect;
pub mod quantize;
pub mod random_checkpoint;
pub mod synth;
pub mod train;

use std::path::PathBuf;

use clap::Args;

/// The checkpoint arguments of `inspect`, `embed` and `convert`.
#[derive(Args, Debug)]
pub struct ModelArgs {
    /// Checkpoint file: torch.save (.pth/.pt, `module.` prefixes allowed) or .safetensors. Never executed, only parsed.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Attention heads of the encoder blocks; checkpoints do not record it (default: embedding dim / 64).
    #[arg(long)]
    pub heads: Option<usize>,
}
