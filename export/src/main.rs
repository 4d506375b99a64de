//! The `cavsync-export` command line: inspect checkpoints and run the reference encoders.
//!
//! Only the argument parsing lives here; each subcommand is one file in `commands/`, thin over
//! the library crates (`cavsync-formats`, `cavsync-synth`, `cavsync-train`).

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// cavsync-export: load CAV-MAE (Sync) PyTorch checkpoints and reproduce their encoders exactly.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print a checkpoint's detected layout, dimensions, depths, registers, segment length and parameter counts.
    Inspect(commands::inspect::InspectArgs),
    /// Run the audio and visual encoders and write global embeddings and patch tokens as .npy files.
    Embed(commands::embed::EmbedArgs),
    /// Write a model bundle (audio.onnx, visual.onnx, manifest.toml) that the `cavsync` runtime runs.
    Convert(commands::convert::ConvertArgs),
    /// Write an int8 bundle from an f32 bundle: every MatMul on a weight runs as an integer matmul.
    Quantize(commands::quantize::QuantizeArgs),
    /// Write a random-weight checkpoint (safetensors, official key names) of any size, e.g. for benchmarks.
    RandomCheckpoint(commands::random_checkpoint::RandomArgs),
    /// Generate synthetic audio-visual clips (CAV-MAE datafile layout) with per-frame ground truth of the sounding objects.
    Synth(commands::synth::SynthArgs),
    /// Pretrain a CAV-MAE Sync model with the paper's objective (masked autoencoding + InfoNCE) on the CPU.
    Train(commands::train::TrainArgs),
    /// Distil a teacher (checkpoint or bundle) into a smaller student that keeps its localization and retrieval.
    Distill(commands::distill::DistillArgs),
}

fn main() -> ExitCode {
    cavsync_cli::end_quietly_on_closed_pipe();
    cavsync_cli::init_tracing();
    let cli = Cli::parse();
    cavsync_cli::finish(match &cli.command {
        Command::Inspect(args) => commands::inspect::run(args),
        Command::Embed(args) => commands::embed::run(args),
        Command::Convert(args) => commands::convert::run(args),
        Command::Quantize(args) => commands::quantize::run(args),
        Command::RandomCheckpoint(args) => commands::random_checkpoint::run(args),
        Command::Synth(args) => commands::synth::run(args),
        Command::Train(args) => commands::train::run(args),
        Command::Distill(args) => commands::distill::run(args),
    })
}
