//! `embed`: the reference (burn) encoders on an audio and an image batch, written as .npy.

use std::path::Path;

use anyhow::Context;
use clap::Args;

use cavsync_cli::EmbedInputs;
use cavsync_core::npy;
use cavsync_train::{LoadedModel, ModalityOutput};

use super::ModelArgs;

/// Frames per clip of the official CAV-MAE Sync model.
const OFFICIAL_FRAMES: usize = 16;

/// Arguments of `embed`.
#[derive(Args, Debug)]
pub struct EmbedArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    inputs: EmbedInputs,
}

/// Load the checkpoint into the burn encoders.
fn load_model(args: &ModelArgs) -> anyhow::Result<LoadedModel> {
    let model = LoadedModel::load(&args.checkpoint, args.heads)?;
    tracing::info!(
        checkpoint = %args.checkpoint.display(),
        layout = %model.config.layout.description(),
        "loaded checkpoint"
    );
    Ok(model)
}

/// Write `{name}_global.npy` and `{name}_tokens.npy` into `dir`.
fn write_outputs(dir: &Path, name: &str, out: &ModalityOutput) -> anyhow::Result<()> {
    npy::write_f32(&dir.join(format!("{name}_global.npy")), out.global.view())?;
    npy::write_f32(&dir.join(format!("{name}_tokens.npy")), out.tokens.view())?;
    Ok(())
}

/// Encode both inputs and write the four arrays; nothing is written if either input fails.
pub fn run(args: &EmbedArgs) -> anyhow::Result<()> {
    let model = load_model(&args.model)?;
    let inputs = &args.inputs;
    let audio_in = inputs.audio_batch(model.config.audio_length, OFFICIAL_FRAMES)?;
    let image_in = inputs.image_batch(model.config.image_size)?;
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
