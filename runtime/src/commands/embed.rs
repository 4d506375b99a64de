//! `cavsync embed`: a bundle's global embeddings and patch tokens as `.npy` files.

use anyhow::{Context, bail};
use ndarray::{ArrayD, Axis, IxDyn};

use cavsync_cli::EmbedInputs;
use cavsync_core::model::Modality;
use cavsync_core::npy;
use cavsync_device::bundle::Embedding;

use super::{BundleArgs, DeviceArgs};

/// Arguments of `cavsync embed`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    bundle: BundleArgs,
    #[command(flatten)]
    device: DeviceArgs,
    #[command(flatten)]
    inputs: EmbedInputs,
}

/// Items of a batch as contiguous vectors, checking the per-item shape.
fn batch_items(
    batch: &ArrayD<f32>,
    item_shape: &[usize],
    source: &str,
) -> anyhow::Result<Vec<Vec<f32>>> {
    if batch.ndim() != item_shape.len() + 1 || &batch.shape()[1..] != item_shape {
        bail!(
            "{source}: input has shape {:?}; expected [batch, {}]",
            batch.shape(),
            item_shape
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(batch
        .axis_iter(Axis(0))
        .map(|item| item.iter().copied().collect())
        .collect())
}

/// Encode the inputs and write `{audio,visual}_{global,tokens}.npy`.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let bundle = args.bundle.open_on(&args.device)?;
    let m = &bundle.manifest;
    let inputs = &args.inputs;
    let audio_batch = inputs.audio_batch(
        m.audio_preprocessing.target_length,
        m.audio_preprocessing.total_frames,
    )?;
    let batches = [
        (Modality::Audio, audio_batch, inputs.source(true)),
        (
            Modality::Visual,
            inputs.image_batch(m.image_preprocessing.size)?,
            inputs.source(false),
        ),
    ];
    let dim = bundle.dim();
    let mut outputs = Vec::new();
    let mut emb = Embedding::default();
    for (modality, batch, source) in &batches {
        let info = m.encoder(*modality);
        let items = batch_items(batch, &info.input_shape[1..], source)?;
        let mut global = Vec::with_capacity(items.len() * dim);
        let mut tokens = Vec::with_capacity(items.len() * info.tokens * dim);
        for item in &items {
            bundle.embed_into(*modality, item, &mut emb)?;
            global.extend_from_slice(&emb.global);
            tokens.extend_from_slice(&emb.tokens);
        }
        let n = items.len();
        outputs.push((
            format!("{modality}_global.npy"),
            ArrayD::from_shape_vec(IxDyn(&[n, dim]), global)?,
        ));
        outputs.push((
            format!("{modality}_tokens.npy"),
            ArrayD::from_shape_vec(IxDyn(&[n, info.tokens, dim]), tokens)?,
        ));
    }
    std::fs::create_dir_all(&inputs.out)
        .with_context(|| format!("{}: cannot create output directory", inputs.out.display()))?;
    for (file, array) in &outputs {
        npy::write_f32(&inputs.out.join(file), array.view())?;
    }
    tracing::info!(out = %inputs.out.display(), "wrote embeddings");
    Ok(())
}
