//! CAV-MAE Sync pretraining on the burn CPU backend: configuration, official initialisation, data, AdamW with warm-up and cosine decay, checkpoints with the official key names, resume.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use ndarray::Array2;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use cavsync_core::atomic::write_atomic;
use cavsync_core::clip::{self, DatafileEntry};
use cavsync_core::manifest::sha256_file;
use cavsync_core::preprocess::fbank::{FbankError, NUM_MEL_BINS, ShortInput, clip_log_mel};
use cavsync_core::preprocess::image::{ImageError, preprocess_image_file_at};
use cavsync_core::preprocess::segment::frame_segment;
use cavsync_formats::checkpoint::{Checkpoint, CheckpointError, CheckpointFormat, RawTensor};
use cavsync_formats::layout::{DecoderConfig, LayoutError, ModelConfig};
use cavsync_formats::random::{WriteError, write_safetensors};

use crate::model::{CavMae, ModelError};
use crate::pretrain::{self, Masking, Objective, PretrainError};

/// Errors raised while training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A file could not be read or written.
    #[error("{path}: cannot {action}: {message}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// What failed.
        message: String,
    },
    /// The configuration is invalid.
    #[error("{path}: {detail}")]
    Config {
        /// The configuration file (or "built-in defaults").
        path: String,
        /// Which field is wrong and what was expected.
        detail: String,
    },
    /// The training data could not be loaded.
    #[error(transparent)]
    Clip(#[from] clip::ClipError),
    /// A frame image could not be loaded.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A clip's fbank could not be computed.
    #[error("clip {clip}: {source}")]
    Fbank {
        /// The clip.
        clip: String,
        /// The fbank error.
        source: FbankError,
    },
    /// The model could not be built or read back.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The pretraining pass failed.
    #[error(transparent)]
    Pretrain(#[from] PretrainError),
    /// A checkpoint could not be written.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// A checkpoint to resume from could not be loaded.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A resumed checkpoint does not have the configured layout.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// The teacher of a distillation could not be loaded or run.
    #[error("teacher {path}: {message}")]
    Teacher {
        /// The teacher's file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The loss became NaN or infinite.
    #[error("loss is {value} at step {step}; lower optim.lr or check the data")]
    Diverged {
        /// The step.
        step: usize,
        /// The loss value.
        value: f32,
    },
}

/// The I/O error of `action` on `path`.
pub(crate) fn io_err(path: &Path, action: &'static str, e: impl ToString) -> TrainError {
    TrainError::Io {
        path: path.to_path_buf(),
        action,
        message: e.to_string(),
    }
}

/// The file `checkpoint` with `suffix` appended to its name (a run's files sit beside its checkpoint).
pub(crate) fn beside(checkpoint: &Path, suffix: &str) -> PathBuf {
    let mut name = checkpoint.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

/// Reads a TOML (`toml`) or JSON file into `T`; parse errors name the file.
pub(crate) fn read_parsed<T>(
    path: &Path,
    what: &'static str,
    parse: fn(&str) -> Result<T, String>,
) -> Result<T, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|e| io_err(path, what, e))?;
    parse(&text).map_err(|detail| TrainError::Config {
        path: path.display().to_string(),
        detail,
    })
}

/// TOML text into `T`.
pub(crate) fn toml_text<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    toml::from_str(text).map_err(|e| e.to_string())
}

/// JSON text into `T`.
pub(crate) fn json_text<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    serde_json::from_str(text).map_err(|e| e.to_string())
}

/// AdamW as `optim` configures it, with the state saved in `file` when continuing a run.
pub(crate) fn adamw(
    optim: &OptimSection,
    file: Option<&Path>,
) -> Result<ModuleOptimizer, TrainError> {
    let optimizer = AdamWConfig::new()
        .with_beta_1(optim.beta1)
        .with_beta_2(optim.beta2)
        .with_weight_decay(optim.weight_decay)
        .with_epsilon(optim.epsilon)
        .init();
    match file {
        Some(path) => optimizer
            .load(path)
            .map_err(|e| io_err(path, "load the optimiser state", format!("{e:?}"))),
        None => Ok(optimizer),
    }
}

/// The batch (and mask) generator of step `step` of a run seeded `seed`: it depends only on both, so a resumed run sees what an uninterrupted one would.
pub(crate) fn step_rng(seed: u64, step: usize) -> StdRng {
    StdRng::seed_from_u64(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ step as u64)
}

/// The sha256 of each payload file of a run (checkpoint, projections, optimiser state) by file name, as the state file records them at every save.
pub type PayloadHashes = BTreeMap<String, String>;

/// Writes `payload`'s staged copy (`PATH.next`): what a save writes before its commit.
pub(crate) type StageWriter<'a> = &'a dyn Fn(&Path) -> Result<(), TrainError>;

/// The staged copy of a payload file: `PATH.next`.
fn staged(path: &Path) -> PathBuf {
    beside(path, ".next")
}

/// The file name of `path` as the state records it.
fn payload_name(path: &Path) -> String {
    path.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

/// The serialised optimiser state, staged as a payload.
pub(crate) fn optimizer_payload(
    optimizer: &ModuleOptimizer,
    staged: &Path,
) -> Result<(), TrainError> {
    let bytes = optimizer
        .clone()
        .into_bytes()
        .map_err(|e| io_err(staged, "serialise the optimiser state", format!("{e:?}")))?;
    write_atomic(staged, |w| w.write_all(&bytes))
        .map_err(|e| io_err(staged, "write the optimiser state", e))
}

/// One save of a run, safe against a kill at any moment: every payload goes to its staged copy `PATH.next`, then the config, then the state (the commit record, holding each payload's sha256 in `hashes`), then each staged copy is renamed into place. [`recover_run`] makes the files consistent again after a kill.
pub(crate) fn save_run<S: Serialize>(
    (config_path, config): (&Path, &impl Serialize),
    (state_path, state): (&Path, &mut S),
    hashes: impl FnOnce(&mut S) -> &mut PayloadHashes,
    payloads: &[(&Path, StageWriter<'_>)],
) -> Result<(), TrainError> {
    let mut staged_hashes = PayloadHashes::new();
    for (path, write) in payloads {
        let next = staged(path);
        write(&next)?;
        let hash = sha256_file(&next).map_err(|e| io_err(&next, "hash the staged file", e))?;
        staged_hashes.insert(payload_name(path), hash);
    }
    *hashes(state) = staged_hashes;
    let toml = toml::to_string_pretty(config)
        .map_err(|e| io_err(config_path, "serialise the config", e))?;
    write_atomic(config_path, |w| w.write_all(toml.as_bytes()))
        .map_err(|e| io_err(config_path, "write the config", e))?;
    let json = serde_json::to_string_pretty(state)
        .map_err(|e| io_err(state_path, "serialise the state", e))?;
    write_atomic(state_path, |w| w.write_all(json.as_bytes()))
        .map_err(|e| io_err(state_path, "write the state", e))?;
    for (path, _) in payloads {
        std::fs::rename(staged(path), path)
            .map_err(|e| io_err(path, "put the saved file in place", e))?;
    }
    Ok(())
}

/// Before a run resumes: brings its payload files in line with the state's record `hashes`. A save killed after its commit is finished (a staged copy with the recorded sha256 is put in place); staged copies of a save that never committed are removed; a payload matching neither is an error naming it. A state without hashes (written before they were recorded) is taken as it is.
pub(crate) fn recover_run(
    state_path: &Path,
    hashes: &PayloadHashes,
    payloads: &[&Path],
) -> Result<(), TrainError> {
    for path in payloads {
        let next = staged(path);
        let Some(expected) = hashes.get(&payload_name(path)) else {
            if next.exists() {
                std::fs::remove_file(&next)
                    .map_err(|e| io_err(&next, "remove a stale staged file", e))?;
            }
            continue;
        };
        let matches = |p: &Path| p.exists() && sha256_file(p).is_ok_and(|h| &h == expected);
        if matches(&next) {
            tracing::info!(file = %path.display(), "finishing the save a kill interrupted");
            std::fs::rename(&next, path)
                .map_err(|e| io_err(path, "put the saved file in place", e))?;
        } else if matches(path) {
            if next.exists() {
                std::fs::remove_file(&next)
                    .map_err(|e| io_err(&next, "remove a stale staged file", e))?;
            }
        } else {
            return Err(TrainError::Config {
                path: path.display().to_string(),
                detail: format!(
                    "does not match the run state {} (expected sha256 {expected}); the run files were changed or damaged outside the tools",
                    state_path.display()
                ),
            });
        }
    }
    Ok(())
}

/// Model size of a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    /// Embedding dimension (heads = dim / 64, the default every tool assumes).
    pub dim: usize,
    /// Modality-specific blocks per modality.
    pub depth: usize,
    /// Joint blocks.
    pub joint_depth: usize,
    /// Register tokens per modality.
    pub registers: usize,
    /// Audio segment length L in fbank frames (a multiple of 16).
    pub audio_length: usize,
    /// MLP hidden width as a multiple of dim.
    pub mlp_ratio: usize,
    /// Decoder dimension (heads = decoder_dim / 32, as the tools assume).
    pub decoder_dim: usize,
    /// Decoder blocks.
    pub decoder_depth: usize,
}

impl Default for ModelSection {
    fn default() -> Self {
        Self {
            dim: 128,
            depth: 3,
            joint_depth: 1,
            registers: 2,
            audio_length: 64,
            mlp_ratio: 4,
            decoder_dim: 64,
            decoder_depth: 1,
        }
    }
}

/// Optimiser and schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimSection {
    /// Optimisation steps.
    pub steps: usize,
    /// Clips per batch (one random frame each).
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Final learning rate of the cosine decay.
    pub min_lr: f64,
    /// Steps of linear warm-up from 0 to `lr`.
    pub warmup_steps: usize,
    /// Decoupled weight decay.
    pub weight_decay: f32,
    /// Adam beta1.
    pub beta1: f32,
    /// Adam beta2.
    pub beta2: f32,
    /// Adam epsilon, added to the root of the second moment (PyTorch's default 1e-8, not burn's 1e-5).
    pub epsilon: f32,
}

impl Default for OptimSection {
    fn default() -> Self {
        Self {
            steps: 1200,
            batch_size: 48,
            lr: 1e-3,
            min_lr: 1e-5,
            warmup_steps: 80,
            weight_decay: 0.05,
            beta1: 0.9,
            beta2: 0.95,
            epsilon: 1e-8,
        }
    }
}

impl OptimSection {
    /// Checks steps, batch size and learning rates; `origin` names the file in errors.
    pub fn validate(&self, origin: &str) -> Result<(), TrainError> {
        let fail = |detail: String| {
            Err(TrainError::Config {
                path: origin.to_string(),
                detail,
            })
        };
        if self.batch_size > MAX_BATCH_SIZE {
            return fail(format!(
                "optim.batch_size = {}; expected at most {MAX_BATCH_SIZE}",
                self.batch_size
            ));
        }
        if self.steps == 0 || self.batch_size < 2 {
            return fail(format!(
                "optim.steps = {}, optim.batch_size = {}; expected steps >= 1 and batch_size >= 2 (in-batch negatives)",
                self.steps, self.batch_size
            ));
        }
        if !(self.lr > 0.0 && self.min_lr >= 0.0 && self.min_lr <= self.lr) {
            return fail(format!(
                "optim.lr = {}, optim.min_lr = {}; expected 0 <= min_lr <= lr, lr > 0",
                self.lr, self.min_lr
            ));
        }
        Ok(())
    }

    /// Learning rate at `step` (0-based): linear warm-up to `lr`, then cosine decay to `min_lr` at the last step.
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        self.min_lr
            + 0.5 * (self.lr - self.min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// The first `SECTION.NAME = VALUE` of `bounds` (name, value, largest accepted) over its bound, as a message.
pub(crate) fn over_bound(section: &str, bounds: &[(&str, usize, usize)]) -> Option<String> {
    bounds
        .iter()
        .find(|(_, value, max)| value > max)
        .map(|(name, value, max)| format!("{section}.{name} = {value}; expected at most {max}"))
}

/// Largest `model.dim` and `model.decoder_dim` accepted.
pub const MAX_WIDTH: usize = 4096;
/// Largest `model.audio_length` accepted (fbank rows).
pub const MAX_AUDIO_LENGTH: usize = 4096;
/// Largest depth of any block stack accepted.
pub const MAX_DEPTH: usize = 64;
/// Most register tokens accepted.
pub const MAX_REGISTERS: usize = 256;
/// Largest `model.mlp_ratio` accepted.
pub const MAX_MLP_RATIO: usize = 16;
/// Largest `optim.batch_size` accepted.
pub const MAX_BATCH_SIZE: usize = 4096;

/// Seed and checkpointing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunSection {
    /// Seed of the initial weights, batches and masks.
    pub seed: u64,
    /// Write a checkpoint every this many steps (and at the end).
    pub checkpoint_every: usize,
    /// Start from this checkpoint's weights (same model config) instead of the official initialisation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init: Option<PathBuf>,
}

impl Default for RunSection {
    fn default() -> Self {
        Self {
            seed: 0,
            checkpoint_every: 100,
            init: None,
        }
    }
}

/// A training configuration (TOML); every field has a default.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Model size.
    pub model: ModelSection,
    /// Optimiser and schedule.
    pub optim: OptimSection,
    /// Objective.
    pub loss: Objective,
    /// Seed and checkpointing.
    pub run: RunSection,
}

impl TrainConfig {
    /// Reads a TOML configuration and checks it.
    pub fn read(path: &Path) -> Result<Self, TrainError> {
        let config: Self = read_parsed(path, "read the config", toml_text)?;
        config.validate(&path.display().to_string())?;
        Ok(config)
    }

    /// Checks value ranges; `origin` names the file in errors.
    pub fn validate(&self, origin: &str) -> Result<(), TrainError> {
        let fail = |detail: String| {
            Err(TrainError::Config {
                path: origin.to_string(),
                detail,
            })
        };
        let m = &self.model;
        if m.dim == 0 || !m.dim.is_multiple_of(64) {
            return fail(format!(
                "model.dim = {}; expected a positive multiple of 64 (heads = dim / 64)",
                m.dim
            ));
        }
        if m.decoder_dim == 0 || !m.decoder_dim.is_multiple_of(32) {
            return fail(format!(
                "model.decoder_dim = {}; expected a positive multiple of 32",
                m.decoder_dim
            ));
        }
        if m.audio_length == 0 || !m.audio_length.is_multiple_of(16) {
            return fail(format!(
                "model.audio_length = {}; expected a positive multiple of 16",
                m.audio_length
            ));
        }
        if m.depth == 0 || m.joint_depth == 0 || m.decoder_depth == 0 || m.mlp_ratio == 0 {
            return fail(
                "model.depth, joint_depth, decoder_depth and mlp_ratio must be at least 1".into(),
            );
        }
        // Bounds far above any CPU-trainable model, so that a typo cannot size an allocation.
        if let Some(message) = over_bound(
            "model",
            &[
                ("dim", m.dim, MAX_WIDTH),
                ("decoder_dim", m.decoder_dim, MAX_WIDTH),
                ("audio_length", m.audio_length, MAX_AUDIO_LENGTH),
                ("depth", m.depth, MAX_DEPTH),
                ("joint_depth", m.joint_depth, MAX_DEPTH),
                ("decoder_depth", m.decoder_depth, MAX_DEPTH),
                ("registers", m.registers, MAX_REGISTERS),
                ("mlp_ratio", m.mlp_ratio, MAX_MLP_RATIO),
            ],
        ) {
            return fail(message);
        }
        self.optim.validate(origin)?;
        let l = &self.loss;
        for (name, r) in [
            ("mask_ratio_a", l.mask_ratio_a),
            ("mask_ratio_v", l.mask_ratio_v),
        ] {
            if !(0.0..1.0).contains(&r) {
                return fail(format!("loss.{name} = {r}; expected a value in [0, 1)"));
            }
        }
        if l.temperature <= 0.0 {
            return fail(format!(
                "loss.temperature = {}; expected > 0",
                l.temperature
            ));
        }
        if self.run.checkpoint_every == 0 {
            return fail("run.checkpoint_every must be at least 1".into());
        }
        Ok(())
    }

    /// The checkpoint layout this configuration trains.
    pub fn model_config(&self) -> ModelConfig {
        let m = &self.model;
        ModelConfig {
            mlp_hidden: m.dim * m.mlp_ratio,
            depth_u: m.joint_depth,
            decoder: Some(DecoderConfig {
                mlp_hidden: m.decoder_dim * m.mlp_ratio,
                ..DecoderConfig::new(m.decoder_dim, m.decoder_depth)
            }),
            ..ModelConfig::sync(m.dim, m.depth, m.registers, m.audio_length)
        }
    }

    /// Learning rate at `step` (0-based), as [`OptimSection::lr_at`].
    pub fn lr_at(&self, step: usize) -> f64 {
        self.optim.lr_at(step)
    }
}

/// 2-D sin-cos position embedding of a (rows x cols) grid, row-major tokens, as the official `get_2d_sincos_pos_embed` (first half encodes the column, second half the row).
pub fn sincos_pos_embed(dim: usize, rows: usize, cols: usize) -> Vec<f32> {
    let half = dim / 2;
    let one_d = |pos: f64, out: &mut Vec<f32>| {
        let quarter = half / 2;
        let omega: Vec<f64> = (0..quarter)
            .map(|i| 1.0 / 10000f64.powf(i as f64 / quarter as f64))
            .collect();
        out.extend(omega.iter().map(|w| (pos * w).sin() as f32));
        out.extend(omega.iter().map(|w| (pos * w).cos() as f32));
    };
    let mut out = Vec::with_capacity(rows * cols * dim);
    for r in 0..rows {
        for c in 0..cols {
            one_d(c as f64, &mut out);
            one_d(r as f64, &mut out);
        }
    }
    out
}

/// Initial weights as the official `initialize_weights`: fixed sin-cos positions, xavier-uniform linear and patch weights, zero linear biases, torch's default patch biases, unit LayerNorms, N(0, 0.02) tokens, N(0, 1) registers.
pub fn init_tensors(config: &ModelConfig, seed: u64) -> BTreeMap<String, RawTensor> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut normal = move |std: f32| {
        // Box-Muller.
        let u1: f32 = rng.random::<f32>().max(1e-12);
        let u2: f32 = rng.random::<f32>();
        std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
    };
    let mut uniform_rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let shapes = config.expected_shapes();
    shapes
        .iter()
        .map(|(key, shape)| {
            let n: usize = shape.iter().product();
            let data = if key.starts_with("pos_embed_a") || key.starts_with("decoder_pos_embed_a") {
                sincos_pos_embed(shape[2], config.audio_rows(), config.audio_cols())
            } else if key.starts_with("pos_embed_v") || key.starts_with("decoder_pos_embed_v") {
                let side = config.image_size / config.patch;
                sincos_pos_embed(shape[2], side, side)
            } else if key.starts_with("patch_embed") && key.ends_with(".bias") {
                // The official init re-draws the patch convolutions' weights only; their biases
                // keep torch's Conv2d default, uniform within 1 / sqrt(fan_in).
                let weight = key.replace(".bias", ".weight");
                let fan_in: usize = shapes[&weight][1..].iter().product();
                let bound = 1.0 / (fan_in as f32).sqrt();
                (0..n)
                    .map(|_| uniform_rng.random_range(-bound..bound))
                    .collect()
            } else if key.contains("norm") && key.ends_with(".weight") {
                vec![1.0; n]
            } else if key.ends_with(".bias") {
                vec![0.0; n]
            } else if key.ends_with(".weight") {
                // Linear (out, in) and patch convolutions viewed as (out, in * k * k).
                let fan_out = shape[0];
                let fan_in = n / fan_out;
                let bound = (6.0 / (fan_in + fan_out) as f32).sqrt();
                (0..n)
                    .map(|_| uniform_rng.random_range(-bound..bound))
                    .collect()
            } else if key == "register_tokens" {
                (0..n).map(|_| normal(1.0)).collect()
            } else {
                (0..n).map(|_| normal(0.02)).collect()
            };
            (
                key.clone(),
                RawTensor {
                    shape: shape.clone(),
                    data,
                },
            )
        })
        .collect()
}

/// One training clip: its raw log-mel and frame paths.
struct TrainClip {
    mel: Array2<f32>,
    frames: Vec<PathBuf>,
}

/// The training set: every clip of `DIR/datafile.json`, with its fbank computed once.
pub struct TrainData {
    clips: Vec<TrainClip>,
    total_frames: usize,
    identity: String,
}

impl TrainData {
    /// Frames per clip of the official loader.
    pub const FRAMES: usize = 16;

    /// Loads `dir/datafile.json` and computes every clip's fbank; `progress` is called per clip.
    pub fn load(dir: &Path, mut progress: impl FnMut(usize, usize)) -> Result<Self, TrainError> {
        let datafile = dir.join("datafile.json");
        let entries: Vec<DatafileEntry> = clip::read_datafile(&datafile)?;
        let identity = std::fs::read(&datafile)
            .map(|b| cavsync_core::manifest::sha256_hex(&b))
            .map_err(|e| io_err(&datafile, "read", e))?;
        let mut clips = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            let c = clip::clip_from_datafile_entry(e, Self::FRAMES)?;
            let mel = clip_log_mel(&c.audio, ShortInput::ZeroPad).map_err(|source| {
                TrainError::Fbank {
                    clip: c.id.clone(),
                    source,
                }
            })?;
            clips.push(TrainClip {
                mel,
                frames: c.frames.into_iter().map(|f| f.path).collect(),
            });
            progress(i + 1, entries.len());
        }
        if clips.len() < 2 {
            return Err(TrainError::Config {
                path: dir.join("datafile.json").display().to_string(),
                detail: format!("{} clip(s); training needs at least 2", clips.len()),
            });
        }
        Ok(Self {
            clips,
            total_frames: Self::FRAMES,
            identity,
        })
    }

    /// The sha256 of the datafile the clips came from.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Appends clip `clip`'s frame `frame`: its normalised `audio_length`-frame segment to `audio` and its image, preprocessed to `image_size` x `image_size`, to `images`.
    pub fn pair_inputs(
        &self,
        clip: usize,
        frame: usize,
        (audio_length, image_size): (usize, usize),
        audio: &mut Vec<f32>,
        images: &mut Vec<f32>,
    ) -> Result<(), TrainError> {
        let c = &self.clips[clip];
        let seg = frame_segment(c.mel.view(), frame, self.total_frames, audio_length);
        audio.extend(seg.iter());
        images.extend(preprocess_image_file_at(&c.frames[frame], image_size as u32)?.iter());
        Ok(())
    }

    /// Number of clips.
    pub fn len(&self) -> usize {
        self.clips.len()
    }

    /// Whether there are no clips.
    pub fn is_empty(&self) -> bool {
        self.clips.is_empty()
    }

    /// A batch of distinct clips, one random frame each: (audio (B, L, 128), images (B, 3, S, S)) as flat buffers for `inputs` = (L, S).
    fn batch(
        &self,
        rng: &mut StdRng,
        size: usize,
        inputs: (usize, usize),
    ) -> Result<(Vec<f32>, Vec<f32>), TrainError> {
        let size = size.min(self.clips.len());
        let picks = rand::seq::index::sample(rng, self.clips.len(), size);
        let (mut audio, mut images) = (Vec::new(), Vec::new());
        for i in picks {
            let k = rng.random_range(0..self.total_frames);
            self.pair_inputs(i, k, inputs, &mut audio, &mut images)?;
        }
        Ok((audio, images))
    }
}

/// What a run has done so far, saved next to the checkpoint for resuming and for the record.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainState {
    /// Steps completed.
    pub step: usize,
    /// Mean losses per completed checkpoint interval.
    pub history: Vec<IntervalStats>,
    /// sha256 of the checkpoint and optimiser state this state goes with.
    #[serde(default)]
    pub files: PayloadHashes,
}

/// Mean losses over one checkpoint interval.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntervalStats {
    /// Last step of the interval (1-based).
    pub step: usize,
    /// Mean total loss.
    pub loss: f64,
    /// Mean audio MAE loss.
    pub mae_a: f64,
    /// Mean visual MAE loss.
    pub mae_v: f64,
    /// Mean InfoNCE.
    pub nce: f64,
    /// Mean contrastive accuracy.
    pub accuracy: f64,
    /// Learning rate at the interval's last step.
    pub lr: f64,
    /// Seconds per step.
    pub seconds_per_step: f64,
}

/// Files of a run, derived from the checkpoint path `CKPT`.
#[derive(Debug, Clone)]
pub struct RunFiles {
    /// The checkpoint (safetensors, official keys).
    pub checkpoint: PathBuf,
    /// The configuration used (`CKPT.train.toml`).
    pub config: PathBuf,
    /// Progress and history (`CKPT.state.json`).
    pub state: PathBuf,
    /// Optimiser state (`CKPT.optim.bpk`).
    pub optimizer: PathBuf,
}

impl RunFiles {
    /// The files belonging to checkpoint `checkpoint`.
    pub fn new(checkpoint: &Path) -> Self {
        Self {
            checkpoint: checkpoint.to_path_buf(),
            config: beside(checkpoint, ".train.toml"),
            state: beside(checkpoint, ".state.json"),
            optimizer: beside(checkpoint, ".optim.bpk"),
        }
    }
}

/// Running means over a checkpoint interval.
#[derive(Default)]
struct Accumulator {
    n: usize,
    loss: f64,
    mae_a: f64,
    mae_v: f64,
    nce: f64,
    accuracy: f64,
}

impl Accumulator {
    fn add(&mut self, v: [f64; 5]) {
        self.n += 1;
        self.loss += v[0];
        self.mae_a += v[1];
        self.mae_v += v[2];
        self.nce += v[3];
        self.accuracy += v[4];
    }

    fn finish(&self, step: usize, lr: f64, seconds_per_step: f64) -> IntervalStats {
        let n = self.n.max(1) as f64;
        IntervalStats {
            step,
            loss: self.loss / n,
            mae_a: self.mae_a / n,
            mae_v: self.mae_v / n,
            nce: self.nce / n,
            accuracy: self.accuracy / n,
            lr,
            seconds_per_step,
        }
    }
}

/// A training run: model, optimiser, data and progress.
pub struct Trainer {
    config: TrainConfig,
    model_config: ModelConfig,
    model: CavMae,
    optimizer: ModuleOptimizer,
    device: Device,
    files: RunFiles,
    /// Progress so far.
    pub state: TrainState,
}

fn scalar(t: Tensor<1>) -> f64 {
    f64::from(t.into_scalar::<f32>())
}

/// Loads a checkpoint whose layout must be the run's model.
fn matching_checkpoint(path: &Path, config: &TrainConfig) -> Result<Checkpoint, TrainError> {
    let ck = Checkpoint::load(path)?;
    let detected = ModelConfig::detect(&ck, Some(config.model.dim / 64))?;
    let model_config = config.model_config();
    if detected != model_config {
        return Err(TrainError::Config {
            path: path.display().to_string(),
            detail: format!(
                "checkpoint layout {detected:?} differs from the run's config {model_config:?}"
            ),
        });
    }
    Ok(ck)
}

impl Trainer {
    /// Starts a run from the official initialisation (seeded by `config.run.seed`), or from the weights of `config.run.init`.
    pub fn new(config: TrainConfig, checkpoint: &Path) -> Result<Self, TrainError> {
        let model_config = config.model_config();
        let ck = match &config.run.init {
            Some(path) => matching_checkpoint(path, &config)?,
            None => Checkpoint {
                path: PathBuf::from("<initial weights>"),
                format: CheckpointFormat::Safetensors,
                tensors: init_tensors(&model_config, config.run.seed),
            },
        };
        Self::build(
            config,
            model_config,
            &ck,
            checkpoint,
            TrainState::default(),
            None,
        )
    }

    /// Continues the run whose checkpoint is `checkpoint` (its config, state and optimiser files beside it).
    pub fn resume(checkpoint: &Path) -> Result<Self, TrainError> {
        let files = RunFiles::new(checkpoint);
        let config = TrainConfig::read(&files.config)?;
        let state: TrainState = read_parsed(&files.state, "read the run state", json_text)?;
        recover_run(
            &files.state,
            &state.files,
            &[&files.checkpoint, &files.optimizer],
        )?;
        let ck = matching_checkpoint(checkpoint, &config)?;
        let model_config = config.model_config();
        let optimizer = files.optimizer.clone();
        Self::build(
            config,
            model_config,
            &ck,
            checkpoint,
            state,
            Some(optimizer),
        )
    }

    fn build(
        config: TrainConfig,
        model_config: ModelConfig,
        ck: &Checkpoint,
        checkpoint: &Path,
        state: TrainState,
        optimizer_file: Option<PathBuf>,
    ) -> Result<Self, TrainError> {
        let device = Device::default().autodiff();
        let model = CavMae::from_checkpoint(ck, &model_config, &device)?.freeze_positions();
        let optimizer = adamw(&config.optim, optimizer_file.as_deref())?;
        Ok(Self {
            config,
            model_config,
            model,
            optimizer,
            device,
            files: RunFiles::new(checkpoint),
            state,
        })
    }

    /// The run's configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// The step a run stops at: `config.optim.steps`, or `stop_after` when that comes first.
    pub fn target_step(&self, stop_after: Option<usize>) -> usize {
        stop_after.map_or(self.config.optim.steps, |s| s.min(self.config.optim.steps))
    }

    /// Trains until `config.optim.steps` (or until step `stop_after`), checkpointing every `checkpoint_every` steps and when stopping; `on_step(step, [loss, mae_a, mae_v, nce, acc], lr)` after each step.
    pub fn run(
        &mut self,
        data: &TrainData,
        stop_after: Option<usize>,
        mut on_step: impl FnMut(usize, [f64; 5], f64),
    ) -> Result<(), TrainError> {
        let last = self.target_step(stop_after);
        let objective = self.config.loss;
        let (b, l) = (
            self.config.optim.batch_size.min(data.len()),
            self.config.model.audio_length,
        );
        let size = self.model_config.image_size;
        let mut acc = Accumulator::default();
        let mut interval_start = std::time::Instant::now();
        while self.state.step < last {
            let step = self.state.step;
            let mut rng = step_rng(self.config.run.seed, step);
            let (audio, images) = data.batch(&mut rng, b, (l, size))?;
            let audio =
                Tensor::<3>::from_data(TensorData::new(audio, [b, l, NUM_MEL_BINS]), &self.device);
            let images =
                Tensor::<4>::from_data(TensorData::new(images, [b, 3, size, size]), &self.device);
            let mask_a = Masking::random(
                b,
                self.model_config.audio_patches(),
                self.config.loss.mask_ratio_a,
                &mut rng,
            );
            let mask_v = Masking::random(
                b,
                self.model_config.visual_patches(),
                self.config.loss.mask_ratio_v,
                &mut rng,
            );
            let out = pretrain::forward(&self.model, audio, images, &mask_a, &mask_v, &objective)?;
            let grads = out.loss.backward();
            let values = [
                scalar(out.loss.clone().inner()),
                scalar(out.mae_a.inner()),
                scalar(out.mae_v.inner()),
                scalar(out.nce.inner()),
                scalar(out.accuracy.inner()),
            ];
            if !values[0].is_finite() {
                return Err(TrainError::Diverged {
                    step,
                    value: values[0] as f32,
                });
            }
            let grads = GradientsParams::from_grads(grads, &self.model);
            let lr = self.config.lr_at(step);
            self.model = self.optimizer.step(lr, self.model.clone(), grads);
            self.state.step += 1;
            acc.add(values);
            on_step(self.state.step, values, lr);
            let done = self.state.step == last;
            if self
                .state
                .step
                .is_multiple_of(self.config.run.checkpoint_every)
                || done
            {
                let secs = interval_start.elapsed().as_secs_f64() / acc.n.max(1) as f64;
                self.state
                    .history
                    .push(acc.finish(self.state.step, lr, secs));
                acc = Accumulator::default();
                interval_start = std::time::Instant::now();
                self.save()?;
            }
        }
        Ok(())
    }

    /// Writes the checkpoint (official keys, safetensors), the config, the state and the optimiser state as one save that a kill cannot leave inconsistent ([`save_run`]).
    pub fn save(&mut self) -> Result<(), TrainError> {
        let tensors = self.model.state_dict()?;
        let f = &self.files;
        let checkpoint = |p: &Path| write_safetensors(&tensors, p).map_err(TrainError::from);
        let optimizer = |p: &Path| optimizer_payload(&self.optimizer, p);
        save_run(
            (&f.config, &self.config),
            (&f.state, &mut self.state),
            |s| &mut s.files,
            &[(&f.checkpoint, &checkpoint), (&f.optimizer, &optimizer)],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Standard deviation of a tensor's values.
    fn std(values: &[f32]) -> f32 {
        let n = values.len() as f32;
        let mean = values.iter().sum::<f32>() / n;
        (values.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / n).sqrt()
    }

    #[test]
    fn initialisation_follows_the_official_distributions() {
        let config = TrainConfig::default().model_config();
        let init = init_tensors(&config, 7);
        // Patch convolution biases keep torch's Conv2d default: uniform within 1 / sqrt(fan_in).
        for (key, fan_in) in [
            ("patch_embed_a.proj.bias", 256.0f32),
            ("patch_embed_v.proj.bias", 768.0),
        ] {
            let bound = 1.0 / fan_in.sqrt();
            let values = &init[key].data;
            assert!(values.iter().all(|v| v.abs() <= bound), "{key}");
            let ratio = std(values) / (bound / 3f32.sqrt());
            assert!((0.8..1.2).contains(&ratio), "{key}: std ratio {ratio}");
        }
        // Linear biases start at zero, LayerNorms at identity.
        assert!(
            init["blocks_v.0.attn.proj.bias"]
                .data
                .iter()
                .all(|&v| v == 0.0)
        );
        assert!(
            init["blocks_a.0.mlp.fc1.bias"]
                .data
                .iter()
                .all(|&v| v == 0.0)
        );
        assert!(init["norm_v.weight"].data.iter().all(|&v| v == 1.0));
        // Xavier-uniform weights: std sqrt(2 / (fan_in + fan_out)).
        let qkv = &init["blocks_v.0.attn.qkv.weight"];
        let expected = (2.0 / (qkv.shape[0] + qkv.shape[1]) as f32).sqrt();
        let ratio = std(&qkv.data) / expected;
        assert!((0.95..1.05).contains(&ratio), "qkv std ratio {ratio}");
        // Tokens N(0, 0.02), registers N(0, 1).
        let ratio = std(&init["modality_v"].data) / 0.02;
        assert!((0.75..1.25).contains(&ratio), "modality std ratio {ratio}");
        let ratio = std(&init["register_tokens"].data);
        assert!((0.85..1.15).contains(&ratio), "register std {ratio}");
    }
}
