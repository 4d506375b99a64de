//! The `cavsync` command line: on-device preprocessing, inference, localization, retrieval and benchmarks.

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use commands::{bench, calibrate, embed, eval, fbank, info, localize, retrieve, run};

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
    Fbank(fbank::Args),
    /// Print what a bundle's manifest says, after verifying hashes and graphs.
    Info(info::Args),
    /// Run a bundle's encoders and write global embeddings and patch tokens as .npy files.
    Embed(embed::Args),
    /// Localize sound sources in every frame of a clip: JSON lines, heatmaps and overlay PNGs.
    Localize(localize::Args),
    /// Audio-to-visual and visual-to-audio retrieval over the clips of a datafile (R@1/5/10, median rank).
    Retrieve(retrieve::Args),
    /// Measure encoder latency and throughput of a bundle on this machine.
    Bench(bench::Args),
    /// Choose a bundle's activity threshold from annotated `localize` results (best balanced accuracy between sounding and silent frames).
    Calibrate(calibrate::Args),
    /// Compare candidate bundles (int8, f16, distilled) with a reference bundle on the same frames: embedding fidelity, localization agreement, task metrics with baselines, retrieval, latency and size; report.json and report.html.
    Eval(eval::Args),
    /// Live: camera and microphone in (V4L2 / ALSA / ffmpeg), tracked sound sources out in real time as JSON lines, over the network and on a live page.
    Run(run::Args),
}

/// Serves `cavsync run`'s steady state from recycled blocks; the system allocator's until engaged.
#[global_allocator]
static ALLOCATOR: cavsync_live::pool::RecyclingAllocator = cavsync_live::pool::RecyclingAllocator;

fn main() -> ExitCode {
    cavsync_cli::end_quietly_on_closed_pipe();
    cavsync_cli::init_tracing();
    let cli = Cli::parse();
    cavsync_cli::finish(match &cli.command {
        Command::Fbank(args) => fbank::run(args),
        Command::Info(args) => info::run(args),
        Command::Embed(args) => embed::run(args),
        Command::Localize(args) => localize::run(args),
        Command::Retrieve(args) => retrieve::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Calibrate(args) => calibrate::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Run(args) => run::run(args),
    })
}
