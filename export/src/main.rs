//! The `cavsync-export` command line: inspect checkpoints and run the reference encoders.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use cavsync::cli::EmbedInputs;
use cavsync::npy;
use cavsync_export::LoadedModel;
use cavsync_export::bundle::{BundleOptions, write_bundle};
use cavsync_export::checkpoint::Checkpoint;
use cavsync_export::layout::{self, DecoderConfig, Layout, ModelConfig};
use cavsync_export::onnx::Precision;
use cavsync_export::random;
use cavsync_export::synth;
use cavsync_export::train::{TrainConfig, TrainData, Trainer};

/// Frames per clip of the official CAV-MAE Sync model.
const OFFICIAL_FRAMES: usize = 16;

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
    Inspect(InspectArgs),
    /// Run the audio and visual encoders and write global embeddings and patch tokens as .npy files.
    Embed(EmbedArgs),
    /// Write a model bundle (audio.onnx, visual.onnx, manifest.toml) that the `cavsync` runtime runs.
    Convert(ConvertArgs),
    /// Write a random-weight checkpoint (safetensors, official key names) of any size, e.g. for benchmarks.
    RandomCheckpoint(RandomArgs),
    /// Generate synthetic audio-visual clips (CAV-MAE datafile layout) with per-frame ground truth of the sounding objects.
    Synth(SynthArgs),
    /// Pretrain a CAV-MAE Sync model with the paper's objective (masked autoencoding + InfoNCE) on the CPU.
    Train(TrainArgs),
}

#[derive(Args, Debug)]
struct SynthArgs {
    /// Output folder: audio/ID.wav, frames/frame_{k}/ID.jpg, datafile.json, annotations.json.
    #[arg(long)]
    out: PathBuf,
    /// Number of clips.
    #[arg(long)]
    clips: usize,
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

#[derive(Args, Debug)]
struct TrainArgs {
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

#[derive(Args, Debug)]
struct RandomArgs {
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

#[derive(Args, Debug)]
struct ConvertArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Output bundle directory (replaced atomically if it exists).
    #[arg(long)]
    out: PathBuf,
    /// Numeric precision of the graphs: f32, or f16 (weights and arithmetic; inputs and outputs stay f32).
    #[arg(long, value_enum, default_value = "f32")]
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

#[derive(Args, Debug)]
struct ModelArgs {
    /// Checkpoint file: torch.save (.pth/.pt, `module.` prefixes allowed) or .safetensors. Never executed, only parsed.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Attention heads of the encoder blocks; checkpoints do not record it (default: embedding dim / 64).
    #[arg(long)]
    heads: Option<usize>,
}

#[derive(Args, Debug)]
struct InspectArgs {
    #[command(flatten)]
    model: ModelArgs,
}

#[derive(Args, Debug)]
struct EmbedArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    inputs: EmbedInputs,
}

fn load_model(args: &ModelArgs) -> anyhow::Result<LoadedModel> {
    let model = LoadedModel::load(&args.checkpoint, args.heads)?;
    tracing::info!(
        checkpoint = %args.checkpoint.display(),
        layout = %model.config.layout,
        "loaded checkpoint"
    );
    Ok(model)
}

fn inspect(args: &InspectArgs) -> anyhow::Result<()> {
    let ck = Checkpoint::load(&args.model.checkpoint)?;
    let c = ModelConfig::detect(&ck, args.model.heads)?;
    println!("checkpoint        {}", ck.path.display());
    println!("container         {}", ck.format);
    println!("layout            {}", c.layout);
    println!(
        "embedding         dim {}, heads {} (head dim {}), MLP {}",
        c.dim,
        c.heads,
        c.dim / c.heads,
        c.mlp_hidden
    );
    println!(
        "depth             audio {}, visual {}, joint {}, contrastive heads {}",
        c.depth_a, c.depth_v, c.depth_u, c.contrastive_depth
    );
    println!(
        "global tokens     {}",
        if c.has_global_tokens() {
            "yes (cls_token_a, cls_token_v)"
        } else {
            "no (global = mean of final tokens)"
        }
    );
    println!("register tokens   {} per modality", c.registers);
    println!(
        "audio input       L = {} fbank frames x 128 mel bins -> {} x {} = {} patches",
        c.audio_length,
        c.audio_rows(),
        c.audio_cols(),
        c.audio_patches()
    );
    println!(
        "visual input      {0} x {0} -> {1} x {1} = {2} patches (patch {3})",
        c.image_size,
        c.visual_grid(),
        c.visual_patches(),
        c.patch
    );
    match c.decoder {
        Some(d) => println!(
            "decoder           dim {}, depth {}, MLP {}",
            d.dim, d.depth, d.mlp_hidden
        ),
        None => println!("decoder           absent"),
    }
    println!("parameters        encoder {}", c.encoder_parameters());
    println!("                  decoder {}", c.decoder_parameters());
    println!("                  total   {}", ck.num_parameters());
    Ok(())
}

fn write_outputs(
    dir: &Path,
    name: &str,
    out: &cavsync_export::ModalityOutput,
) -> anyhow::Result<()> {
    npy::write_f32(&dir.join(format!("{name}_global.npy")), out.global.view())?;
    npy::write_f32(&dir.join(format!("{name}_tokens.npy")), out.tokens.view())?;
    Ok(())
}

fn embed(args: &EmbedArgs) -> anyhow::Result<()> {
    let model = load_model(&args.model)?;
    let inputs = &args.inputs;
    let audio_in = inputs.audio_batch(model.config.audio_length, OFFICIAL_FRAMES)?;
    let image_in = inputs.image_batch()?;
    let audio_out = model
        .embed_audio(&audio_in)
        .with_context(|| inputs.source(true))?;
    let visual_out = model
        .embed_visual(&image_in)
        .with_context(|| inputs.source(false))?;
    std::fs::create_dir_all(&inputs.out)
        .with_context(|| format!("{}: cannot create output directory", inputs.out.display()))?;
    write_outputs(&inputs.out, "audio", &audio_out)?;
    write_outputs(&inputs.out, "visual", &visual_out)?;
    tracing::info!(
        out = %inputs.out.display(),
        audio_batch = audio_in.shape()[0],
        visual_batch = image_in.shape()[0],
        "wrote embeddings"
    );
    Ok(())
}

fn convert(args: &ConvertArgs) -> anyhow::Result<()> {
    if args.frames == 0 {
        bail!("--frames must be at least 1");
    }
    let ck = Checkpoint::load(&args.model.checkpoint)?;
    let config = ModelConfig::detect(&ck, args.model.heads)?;
    tracing::info!(layout = %config.layout, dim = config.dim, "writing bundle");
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

fn random_checkpoint(args: &RandomArgs) -> anyhow::Result<()> {
    if args.dim == 0 || args.audio_length == 0 || !args.audio_length.is_multiple_of(16) {
        bail!("--dim must be positive and --audio-length a positive multiple of 16");
    }
    let config = ModelConfig {
        layout: if args.plain {
            Layout::Plain
        } else {
            Layout::Sync
        },
        dim: args.dim,
        heads: (args.dim / 64).max(1),
        mlp_hidden: 4 * args.dim,
        patch: 16,
        depth_a: args.depth,
        depth_v: args.depth,
        depth_u: layout::TOTAL_DEPTH.saturating_sub(args.depth).max(1),
        registers: args.registers,
        contrastive_depth: args.contrastive_depth,
        audio_length: args.audio_length,
        image_size: 224,
        decoder: (args.decoder_dim > 0).then(|| DecoderConfig {
            dim: args.decoder_dim,
            depth: args.decoder_depth,
            mlp_hidden: 4 * args.decoder_dim,
            heads: (args.decoder_dim / 32).max(1),
        }),
    };
    let tensors = random::random_tensors(&config, args.seed);
    random::write_safetensors(&tensors, &args.out)?;
    let params: usize = tensors.values().map(|t| t.data.len()).sum();
    println!("wrote {} ({params} parameters)", args.out.display());
    Ok(())
}

fn bar(len: usize, template: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

fn synth(args: &SynthArgs) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&args.photo_share) {
        bail!(
            "--photo-share is {}; expected a value in [0, 1]",
            args.photo_share
        );
    }
    let backgrounds = match &args.backgrounds {
        Some(dir) => synth::load_backgrounds(dir)?,
        None => Vec::new(),
    };
    let config = synth::SynthConfig {
        clips: args.clips,
        seed: args.seed,
        backgrounds,
        photo_share: args.photo_share,
    };
    let progress = bar(
        args.clips,
        "synth [{bar:30}] {pos}/{len} clips {per_sec} eta {eta}",
    );
    let started = Instant::now();
    let annotations =
        synth::write_dataset(&config, &args.out, |i| progress.set_position(i as u64))?;
    progress.finish_and_clear();
    let frames: Vec<_> = annotations.clips.iter().flat_map(|c| &c.frames).collect();
    let silent = frames.iter().filter(|f| f.sounding.is_empty()).count();
    let two = frames.iter().filter(|f| f.sounding.len() == 2).count();
    println!(
        "wrote {} clips ({} frames: {} silent, {} with two sources) to {} in {:.1} s",
        annotations.clips.len(),
        frames.len(),
        silent,
        two,
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn train(args: &TrainArgs) -> anyhow::Result<()> {
    let mut trainer = if args.resume {
        Trainer::resume(&args.out)
            .with_context(|| format!("cannot resume from {}", args.out.display()))?
    } else {
        let config = match &args.config {
            Some(path) => TrainConfig::read(path)?,
            None => TrainConfig::default(),
        };
        if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("{}: cannot create the output folder", dir.display()))?;
        }
        Trainer::new(config, &args.out)?
    };
    let config = trainer.config().clone();
    let started = Instant::now();
    // A finished run (e.g. `--resume` after the last step) needs no data: skip the fbank pass.
    if trainer.state.step < trainer.target_step(args.stop_after) {
        let loading = bar(0, "loading [{bar:30}] {pos}/{len} clips (fbank) eta {eta}");
        let data = TrainData::load(&args.data, |i, n| {
            loading.set_length(n as u64);
            loading.set_position(i as u64);
        })?;
        loading.finish_and_clear();
        tracing::info!(
            clips = data.len(),
            steps = config.optim.steps,
            batch = config.optim.batch_size,
            "training"
        );
        let progress = bar(
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
    }
    for h in &trainer.state.history {
        println!(
            "step {:>6}  loss {:.4}  mae_a {:.4}  mae_v {:.4}  nce {:.4}  acc {:.3}  lr {:.2e}  {:.2} s/step",
            h.step, h.loss, h.mae_a, h.mae_v, h.nce, h.accuracy, h.lr, h.seconds_per_step
        );
    }
    if trainer.state.step < config.optim.steps {
        println!(
            "stopped after step {} of {}; continue with --resume",
            trainer.state.step, config.optim.steps
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

fn main() -> ExitCode {
    cavsync::cli::init_tracing();
    let cli = Cli::parse();
    cavsync::cli::finish(match &cli.command {
        Command::Inspect(args) => inspect(args),
        Command::Embed(args) => embed(args),
        Command::Convert(args) => convert(args),
        Command::RandomCheckpoint(args) => random_checkpoint(args),
        Command::Synth(args) => synth(args),
        Command::Train(args) => train(args),
    })
}
