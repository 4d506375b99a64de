//! cavsync-train: the CAV-MAE (Sync) encoders and pretraining in burn, the only crate with burn.
//!
//! [`LoadedModel`] reads a checkpoint (through `cavsync_formats`), detects its layout and
//! reproduces the official encoders exactly ([`model`]), which makes it the reference the
//! exported bundles are checked against; [`pretrain`] is the official pretraining forward pass
//! and losses, and [`train`] the training loop with checkpoints under the official key names.

/// Distillation of a teacher into a smaller student.
pub mod distill;
/// The CAV-MAE (Sync) audio and visual encoders in burn.
pub mod model;
/// The CAV-MAE Sync pretraining forward pass and losses.
pub mod pretrain;
/// Pretraining on the burn CPU backend: configuration, initialisation, data, optimiser, resume.
pub mod train;

use std::path::Path;

use burn::prelude::Device;
use ndarray::{ArrayD, IxDyn};

use cavsync_formats::checkpoint::{Checkpoint, CheckpointError, RawTensor};
use cavsync_formats::layout::{LayoutError, ModelConfig};
use model::{CavMae, ModelError};

/// Errors raised while loading a model or running it.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The checkpoint file could not be read.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The checkpoint does not describe a CAV-MAE encoder.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// Building or running the model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// Global embeddings and patch tokens of one modality, as ndarray arrays.
#[derive(Debug, Clone)]
pub struct ModalityOutput {
    /// (batch, dim) global embeddings.
    pub global: ArrayD<f32>,
    /// (batch, patches, dim) final-norm patch tokens.
    pub tokens: ArrayD<f32>,
}

/// A checkpoint loaded into the burn encoders on the CPU.
#[derive(Debug)]
pub struct LoadedModel {
    /// Detected layout and dimensions.
    pub config: ModelConfig,
    /// The burn model.
    pub model: CavMae,
    /// Where the model lives.
    pub device: Device,
}

impl LoadedModel {
    /// Read a checkpoint, detect its layout (`heads` overrides dim / 64) and build the encoders.
    pub fn load(path: &Path, heads: Option<usize>) -> Result<Self, ExportError> {
        let ck = Checkpoint::load(path)?;
        let config = ModelConfig::detect(&ck, heads)?;
        let device = Device::default();
        let model = CavMae::from_checkpoint(&ck, &config, &device)?;
        Ok(Self {
            config,
            model,
            device,
        })
    }

    /// Encode a (batch, L, 128) normalised fbank batch.
    pub fn embed_audio(&self, fbank: &ArrayD<f32>) -> Result<ModalityOutput, ExportError> {
        self.model.check_audio_shape(fbank.shape(), &self.config)?;
        let input = model::from_raw::<3>(contiguous(fbank), fbank.shape(), &self.device);
        let out = self.model.forward_audio(input);
        output(out)
    }

    /// Encode a (batch, 3, H, W) normalised image batch.
    pub fn embed_visual(&self, images: &ArrayD<f32>) -> Result<ModalityOutput, ExportError> {
        self.model.check_image_shape(images.shape(), &self.config)?;
        let input = model::from_raw::<4>(contiguous(images), images.shape(), &self.device);
        let out = self.model.forward_visual(input);
        output(out)
    }
}

/// The elements of `a` in row-major order.
fn contiguous(a: &ArrayD<f32>) -> Vec<f32> {
    a.iter().copied().collect()
}

/// Burn embeddings as ndarray arrays.
fn output(out: model::Embeddings) -> Result<ModalityOutput, ExportError> {
    Ok(ModalityOutput {
        global: to_array(model::to_raw(out.global)?)?,
        tokens: to_array(model::to_raw(out.tokens)?)?,
    })
}

/// A raw tensor as an ndarray array of its shape.
fn to_array(raw: RawTensor) -> Result<ArrayD<f32>, ModelError> {
    ArrayD::from_shape_vec(IxDyn(&raw.shape), raw.data).map_err(|e| ModelError::Data(e.to_string()))
}
