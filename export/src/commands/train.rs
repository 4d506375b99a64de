//! `train`: pretrain a CAV-MAE Sync model on the CPU, with checkpoints and resume.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;

use cavsync_cli::progress_bar;
use cavsync_train::train::{TrainConfig, TrainData, Trainer};

/// Arguments of `train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Training data folder written by `synth` (or any folder with a CAV-MAE datafile.json and 16 frames per clip).
    #[arg(long)]
    data: PathBuf,
    /// Checkpoint to write (safetensors, official key names); CKPT.train.toml, CKPT.state.json and CKPT.optim.bpk are written beside it.
    #[arg(long)]
    out: PathBuf,
    /// Training configuration (TOML: [model], [optim], [loss], [run]); defaults are used for what it omits.
    #[arg(long, conflicts_with = "resume")]
    config: Option<PathBuf>,
    /// Continue the run whose checkpoint is --out, with the config, state and optimiser saved beside it.
    #[arg(long)]
    resume: bool,
    /// Stop (with a checkpoint) once the run has completed this many steps; continue later with --resume.
    #[arg(long)]
    stop_after: Option<usize>,
}

/// A new run from --config (or the defaults), or the run saved beside --out with --resume.
fn start_or_resume(args: &TrainArgs) -> anyhow::Result<Trainer> {
    if args.resume {
        return Trainer::resume(&args.out)
            .with_context(|| format!("cannot resume from {}", args.out.display()));
    }
    let config = match &args.config {
        Some(path) => TrainConfig::read(path)?,
        None => TrainConfig::default(),
    };
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create the output folder", dir.display()))?;
    }
    Ok(Trainer::new(config, &args.out)?)
}

/// The training clips of `dir` with their fbanks computed, behind a progress bar.
pub fn load_data(dir: &std::path::Path) -> anyhow::Result<TrainData> {
    let loading = progress_bar(0, "loading [{bar:30}] {pos}/{len} clips (fbank) eta {eta}");
    let data = TrainData::load(dir, |i, n| {
        loading.set_length(n as u64);
        loading.set_position(i as u64);
    })?;
    loading.finish_and_clear();
    Ok(data)
}

/// Load the data and train to the target step, with progress bars for both.
fn train_with_progress(trainer: &mut Trainer, args: &TrainArgs) -> anyhow::Result<()> {
    let config = trainer.config().clone();
    let data = load_data(&args.data)?;
    tracing::info!(
        clips = data.len(),
        steps = config.optim.steps,
        batch = config.optim.batch_size,
        "training"
    );
    let progress = progress_bar(
        config.optim.steps,
        "train [{bar:30}] {pos}/{len} {msg} {per_sec} eta {eta}",
    );
    progress.set_position(trainer.state.step as u64);
    trainer.run(&data, args.stop_after, |step, v, lr| {
        progress.set_position(step as u64);
        progress.set_message(format!(
            "loss {:.3} (mae a {:.3} v {:.3}, nce {:.3}) acc {:.2} lr {lr:.1e}",
            v[0], v[1], v[2], v[3], v[4]
        ));
    })?;
    progress.finish_and_clear();
    Ok(())
}

/// Train (or resume) and print the loss history and where the run stands.
pub fn run(args: &TrainArgs) -> anyhow::Result<()> {
    let mut trainer = start_or_resume(args)?;
    let steps = trainer.config().optim.steps;
    let started = Instant::now();
    // A finished run (e.g. `--resume` after the last step) needs no data: skip the fbank pass.
    if trainer.state.step < trainer.target_step(args.stop_after) {
        train_with_progress(&mut trainer, args)?;
    }
    for h in &trainer.state.history {
        println!(
            "step {:>6}  loss {:.4}  mae_a {:.4}  mae_v {:.4}  nce {:.4}  acc {:.3}  lr {:.2e}  {:.2} s/step",
            h.step, h.loss, h.mae_a, h.mae_v, h.nce, h.accuracy, h.lr, h.seconds_per_step
        );
    }
    if trainer.state.step < steps {
        println!(
            "stopped after step {} of {steps}; continue with --resume",
            trainer.state.step
        );
    }
    println!(
        "trained to step {} in {:.1} min; checkpoint {}",
        trainer.state.step,
        started.elapsed().as_secs_f64() / 60.0,
        args.out.display()
    );
    Ok(())
}
