//! The `cavsync-export` command line: inspect checkpoints and run the reference encoders.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use cavsync::cli::EmbedInputs;
use cavsync::npy;
use cavsync_export::LoadedModel;
use cavsync_export::bundle::{BundleOptions, write_bundle};
use cavsync_export::checkpoint::Checkpoint;
use cavsync_export::layout::{self, DecoderConfig, Layout, ModelConfig};
use cavsync_export::onnx::Precision;
use cavsync_export::random;

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

fn main() -> ExitCode {
    cavsync::cli::init_tracing();
    let cli = Cli::parse();
    cavsync::cli::finish(match &cli.command {
        Command::Inspect(args) => inspect(args),
        Command::Embed(args) => embed(args),
        Command::Convert(args) => convert(args),
        Command::RandomCheckpoint(args) => random_checkpoint(args),
    })
}
