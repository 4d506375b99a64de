//! Distillation of a CAV-MAE (Sync) teacher into a smaller student on the burn CPU backend: student presets, the losses, the teacher cache, checkpoints with the official key names, resume.
//!
//! The teacher's outputs for a fixed set of (clip, frame) pairs are computed once
//! ([`TeacherCache`]); each step then encodes a batch of those pairs with the student and
//! matches the teacher through five weighted terms ([`DistillLoss`]): global tokens and patch
//! tokens (through learned projections to the teacher's width, discarded at export), the
//! audio-to-patch similarity maps (KL at a temperature, which keeps localization), the in-batch
//! audio-visual affinity matrix in both directions (which keeps retrieval), and optionally the
//! paper's InfoNCE on the student itself.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::nn::Linear;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::tensor::activation;
use half::f16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use cavsync_core::atomic::write_atomic;
use cavsync_core::preprocess::fbank::NUM_MEL_BINS;
use cavsync_formats::checkpoint::{Checkpoint, CheckpointFormat, RawTensor};
use cavsync_formats::layout::ModelConfig;
use cavsync_formats::random::write_safetensors;

use crate::LoadedModel;
use crate::model::{CavMae, linear_from_checkpoint, linear_state};
use crate::pretrain::info_nce;
use crate::train::{
    MAX_DEPTH, MAX_MLP_RATIO, MAX_REGISTERS, MAX_WIDTH, OptimSection, PayloadHashes, TrainData,
    TrainError, adamw, beside, init_tensors, io_err, json_text, optimizer_payload, over_bound,
    read_parsed, recover_run, save_run, step_rng, toml_text,
};

/// Largest `student.image_size` accepted, in pixels.
const MAX_IMAGE_SIZE: usize = 1024;

/// Size of a student: width, depth, registers and image size (the audio segment length is the teacher's).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudentSection {
    /// Embedding dimension (heads = dim / 64).
    pub dim: usize,
    /// Modality-specific blocks per modality.
    pub depth: usize,
    /// Joint blocks.
    pub joint_depth: usize,
    /// Register tokens per modality.
    pub registers: usize,
    /// MLP hidden width as a multiple of dim.
    pub mlp_ratio: usize,
    /// Square image side in pixels, a multiple of 16 (224 unless smaller images are wanted); a patch grid other than the teacher's is given the teacher's map and patch tokens pooled onto it by area.
    #[serde(default = "default_image_size")]
    pub image_size: usize,
}

fn default_image_size() -> usize {
    cavsync_core::preprocess::image::IMAGE_SIZE as usize
}

/// The named student sizes, with what each is for.
pub const PRESETS: [(&str, StudentSection, &str); 4] = [
    (
        "small",
        StudentSection {
            dim: 64,
            depth: 2,
            joint_depth: 1,
            registers: 2,
            mlp_ratio: 4,
            image_size: 224,
        },
        "64-dim, 2 + 1 blocks, 2 registers: about 4x fewer FLOPs than the demo teacher",
    ),
    (
        "tiny",
        StudentSection {
            dim: 64,
            depth: 1,
            joint_depth: 1,
            registers: 2,
            mlp_ratio: 4,
            image_size: 224,
        },
        "64-dim, 1 + 1 blocks, 2 registers: about 5.7x fewer FLOPs than the demo teacher (the demo student)",
    ),
    (
        "micro",
        StudentSection {
            dim: 64,
            depth: 1,
            joint_depth: 1,
            registers: 1,
            mlp_ratio: 2,
            image_size: 224,
        },
        "64-dim, 1 + 1 blocks, 1 register, MLP 2x: the smallest 224-pixel student",
    ),
    (
        "nano",
        StudentSection {
            dim: 64,
            depth: 1,
            joint_depth: 1,
            registers: 1,
            mlp_ratio: 4,
            image_size: 112,
        },
        "64-dim, 1 + 1 blocks, 1 register, 112-pixel images (a 7 x 7 map): about 20x fewer FLOPs than the demo teacher",
    ),
];

impl StudentSection {
    /// The preset called `name`.
    pub fn preset(name: &str) -> Option<Self> {
        PRESETS
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, s, _)| *s)
    }

    /// Reads a TOML file holding a `[student]` table.
    pub fn read(path: &Path) -> Result<Self, TrainError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            student: StudentSection,
        }
        let file: File = read_parsed(path, "read", toml_text)?;
        Ok(file.student)
    }

    /// The checkpoint layout of this student for a teacher with segment length `audio_length`.
    pub fn model_config(&self, audio_length: usize) -> ModelConfig {
        ModelConfig {
            mlp_hidden: self.dim * self.mlp_ratio,
            depth_u: self.joint_depth,
            image_size: self.image_size,
            ..ModelConfig::sync(self.dim, self.depth, self.registers, audio_length)
        }
    }
}

impl Default for StudentSection {
    fn default() -> Self {
        PRESETS[1].1
    }
}

/// Weights and temperatures of the distillation losses; the `[loss]` section of a distillation config.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistillLoss {
    /// Cosine distance of the projected student global tokens to the teacher's, both modalities.
    pub global: f64,
    /// Cosine distance of the projected student patch tokens to the teacher's, both modalities.
    pub patch: f64,
    /// KL from the teacher's audio-to-patch similarity map to the student's, over every audio-image pair of the batch.
    pub map: f64,
    /// Temperature of the similarity maps (cosine / temperature are the logits).
    pub map_temperature: f64,
    /// KL from the teacher's similarity map to the student's on each item's own (matched) audio and image only: the maps localization reads.
    pub matched_map: f64,
    /// Temperature of the matched maps (lower than `map_temperature` weighs the peak more).
    pub matched_map_temperature: f64,
    /// KL from the teacher's in-batch audio-visual affinity to the student's, both directions.
    pub affinity: f64,
    /// Temperature of the affinity matrices.
    pub affinity_temperature: f64,
    /// The paper's InfoNCE on the student's global tokens (both directions); 0 leaves it out.
    pub contrastive: f64,
    /// InfoNCE temperature.
    pub contrastive_temperature: f64,
}

impl Default for DistillLoss {
    fn default() -> Self {
        Self {
            global: 1.0,
            patch: 1.0,
            map: 1.0,
            map_temperature: 0.07,
            matched_map: 0.0,
            matched_map_temperature: 0.07,
            affinity: 1.0,
            affinity_temperature: 0.05,
            contrastive: 0.0,
            contrastive_temperature: 0.05,
        }
    }
}

/// Which pairs the teacher cache holds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataSection {
    /// Frames per clip whose (segment, image) pairs are cached and trained on, evenly spaced.
    pub frames_per_clip: usize,
}

impl Default for DataSection {
    fn default() -> Self {
        Self { frames_per_clip: 4 }
    }
}

/// Seed and checkpointing of a distillation run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistillRunSection {
    /// Seed of the student's initial weights, the projections and the batches.
    pub seed: u64,
    /// Write a checkpoint every this many steps (and at the end).
    pub checkpoint_every: usize,
}

impl Default for DistillRunSection {
    fn default() -> Self {
        Self {
            seed: 0,
            checkpoint_every: 100,
        }
    }
}

/// A distillation configuration (TOML); every field has a default.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistillConfig {
    /// Student size.
    pub student: StudentSection,
    /// Loss weights and temperatures.
    pub loss: DistillLoss,
    /// Optimiser and schedule.
    pub optim: OptimSection,
    /// Cached pairs.
    pub data: DataSection,
    /// Seed and checkpointing.
    pub run: DistillRunSection,
}

impl DistillConfig {
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
        let s = &self.student;
        if s.dim == 0 || !s.dim.is_multiple_of(64) {
            return fail(format!(
                "student.dim = {}; expected a positive multiple of 64 (heads = dim / 64)",
                s.dim
            ));
        }
        if s.depth == 0 || s.joint_depth == 0 || s.mlp_ratio == 0 {
            return fail("student.depth, joint_depth and mlp_ratio must be at least 1".into());
        }
        if s.image_size == 0 || !s.image_size.is_multiple_of(16) {
            return fail(format!(
                "student.image_size = {}; expected a positive multiple of the 16-pixel patch",
                s.image_size
            ));
        }
        if let Some(message) = over_bound(
            "student",
            &[
                ("dim", s.dim, MAX_WIDTH),
                ("depth", s.depth, MAX_DEPTH),
                ("joint_depth", s.joint_depth, MAX_DEPTH),
                ("registers", s.registers, MAX_REGISTERS),
                ("mlp_ratio", s.mlp_ratio, MAX_MLP_RATIO),
                ("image_size", s.image_size, MAX_IMAGE_SIZE),
            ],
        ) {
            return fail(message);
        }
        self.optim.validate(origin)?;
        let l = &self.loss;
        let weights = [
            l.global,
            l.patch,
            l.map,
            l.matched_map,
            l.affinity,
            l.contrastive,
        ];
        if weights.iter().any(|w| !(w.is_finite() && *w >= 0.0))
            || weights.iter().all(|w| *w == 0.0)
        {
            return fail(format!(
                "loss weights {weights:?} (global, patch, map, matched_map, affinity, contrastive); expected finite values >= 0, at least one > 0"
            ));
        }
        for (name, t) in [
            ("map_temperature", l.map_temperature),
            ("matched_map_temperature", l.matched_map_temperature),
            ("affinity_temperature", l.affinity_temperature),
            ("contrastive_temperature", l.contrastive_temperature),
        ] {
            if !(t.is_finite() && t > 0.0) {
                return fail(format!("loss.{name} = {t}; expected > 0"));
            }
        }
        if !(1..=TrainData::FRAMES).contains(&self.data.frames_per_clip) {
            return fail(format!(
                "data.frames_per_clip = {}; expected 1 to {}",
                self.data.frames_per_clip,
                TrainData::FRAMES
            ));
        }
        if self.run.checkpoint_every == 0 {
            return fail("run.checkpoint_every must be at least 1".into());
        }
        Ok(())
    }
}

/// What a teacher produces per frame pair, and for which inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherShape {
    /// Embedding dimension.
    pub dim: usize,
    /// Audio segment length L the teacher takes.
    pub audio_length: usize,
    /// Square image side the teacher takes.
    pub image_size: usize,
    /// Audio patch tokens.
    pub audio_tokens: usize,
    /// Visual patch tokens.
    pub visual_tokens: usize,
}

/// Teacher outputs of a batch, row-major f32: globals (B, D), tokens (B, N, D).
#[derive(Debug, Clone, Default)]
pub struct TeacherBatch {
    /// Audio global tokens.
    pub global_a: Vec<f32>,
    /// Audio patch tokens.
    pub tokens_a: Vec<f32>,
    /// Visual global tokens.
    pub global_v: Vec<f32>,
    /// Visual patch tokens.
    pub tokens_v: Vec<f32>,
}

/// A model whose outputs a student learns: a checkpoint in burn or a bundle in the runtime.
pub trait Teacher {
    /// Dimensions of its inputs and outputs.
    fn shape(&self) -> TeacherShape;
    /// A string that changes whenever the teacher's weights do (its file's sha256).
    fn identity(&self) -> &str;
    /// GFLOP of one frame pair, where the teacher's layout tells it.
    fn pair_gflops(&self) -> Option<f64>;
    /// Encodes `batch` normalised segments (B, L, 128) and images (B, 3, S, S) of its shape.
    fn encode(
        &mut self,
        audio: &[f32],
        images: &[f32],
        batch: usize,
    ) -> Result<TeacherBatch, TrainError>;
}

/// A checkpoint teacher run by the burn encoders.
pub struct CheckpointTeacher {
    model: LoadedModel,
    identity: String,
}

impl CheckpointTeacher {
    /// Loads the checkpoint (`heads` as for `inspect`).
    pub fn load(path: &Path, heads: Option<usize>) -> Result<Self, TrainError> {
        let bytes = std::fs::read(path).map_err(|e| io_err(path, "read the teacher", e))?;
        let identity = cavsync_core::manifest::sha256_hex(&bytes);
        let model = LoadedModel::load(path, heads).map_err(|e| TrainError::Teacher {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(Self { model, identity })
    }
}

impl Teacher for CheckpointTeacher {
    fn shape(&self) -> TeacherShape {
        let c = &self.model.config;
        TeacherShape {
            dim: c.dim,
            audio_length: c.audio_length,
            image_size: c.image_size,
            audio_tokens: c.audio_patches(),
            visual_tokens: c.visual_patches(),
        }
    }

    fn identity(&self) -> &str {
        &self.identity
    }

    fn pair_gflops(&self) -> Option<f64> {
        Some(self.model.config.pair_gflops())
    }

    fn encode(
        &mut self,
        audio: &[f32],
        images: &[f32],
        batch: usize,
    ) -> Result<TeacherBatch, TrainError> {
        let c = &self.model.config;
        let model_err = |e: crate::ExportError| TrainError::Teacher {
            path: PathBuf::from("<teacher>"),
            message: e.to_string(),
        };
        let shape_err = |e: ndarray::ShapeError| TrainError::Teacher {
            path: PathBuf::from("<teacher>"),
            message: e.to_string(),
        };
        let a = ndarray::ArrayD::from_shape_vec(
            vec![batch, c.audio_length, NUM_MEL_BINS],
            audio.to_vec(),
        )
        .map_err(shape_err)?;
        let size = c.image_size;
        let v = ndarray::ArrayD::from_shape_vec(vec![batch, 3, size, size], images.to_vec())
            .map_err(shape_err)?;
        let oa = self.model.embed_audio(&a).map_err(model_err)?;
        let ov = self.model.embed_visual(&v).map_err(model_err)?;
        let flat = |x: ndarray::ArrayD<f32>| x.iter().copied().collect::<Vec<f32>>();
        Ok(TeacherBatch {
            global_a: flat(oa.global),
            tokens_a: flat(oa.tokens),
            global_v: flat(ov.global),
            tokens_v: flat(ov.tokens),
        })
    }
}

/// The teacher's outputs for every cached (clip, frame) pair, stored as f16.
pub struct TeacherCache {
    /// Dimensions of the stored outputs.
    pub shape: TeacherShape,
    /// The teacher's identity.
    pub teacher: String,
    /// The training datafile's sha256.
    pub data: String,
    /// (clip, frame) of each cached pair.
    pub pairs: Vec<(usize, usize)>,
    global_a: Vec<f16>,
    tokens_a: Vec<f16>,
    global_v: Vec<f16>,
    tokens_v: Vec<f16>,
}

/// Version tag of the cache file layout.
const CACHE_FORMAT: &str = "cavsync-teacher-cache/1";

/// The `count` evenly spaced frames of a clip's [`TrainData::FRAMES`] a cache holds.
pub fn cached_frames(count: usize) -> Vec<usize> {
    let total = TrainData::FRAMES;
    (0..count)
        .map(|i| (2 * i + 1) * total / (2 * count))
        .collect()
}

impl TeacherCache {
    /// Runs `teacher` on `frames_per_clip` frames of every clip of `data`, `batch` pairs at a time; `progress(done, total)` after each batch.
    pub fn build(
        teacher: &mut dyn Teacher,
        data: &TrainData,
        frames_per_clip: usize,
        batch: usize,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Self, TrainError> {
        let shape = teacher.shape();
        let frames = cached_frames(frames_per_clip);
        let pairs: Vec<(usize, usize)> = (0..data.len())
            .flat_map(|c| frames.iter().map(move |&f| (c, f)))
            .collect();
        let mut cache = Self {
            shape,
            teacher: teacher.identity().to_string(),
            data: data.identity().to_string(),
            pairs: Vec::with_capacity(pairs.len()),
            global_a: Vec::with_capacity(pairs.len() * shape.dim),
            tokens_a: Vec::with_capacity(pairs.len() * shape.audio_tokens * shape.dim),
            global_v: Vec::with_capacity(pairs.len() * shape.dim),
            tokens_v: Vec::with_capacity(pairs.len() * shape.visual_tokens * shape.dim),
        };
        let (mut audio, mut images) = (Vec::new(), Vec::new());
        for chunk in pairs.chunks(batch.max(1)) {
            audio.clear();
            images.clear();
            for &(c, f) in chunk {
                data.pair_inputs(
                    c,
                    f,
                    (shape.audio_length, shape.image_size),
                    &mut audio,
                    &mut images,
                )?;
            }
            let out = teacher.encode(&audio, &images, chunk.len())?;
            let expect = [
                (out.global_a.len(), chunk.len() * shape.dim, "audio global"),
                (
                    out.tokens_a.len(),
                    chunk.len() * shape.audio_tokens * shape.dim,
                    "audio tokens",
                ),
                (out.global_v.len(), chunk.len() * shape.dim, "visual global"),
                (
                    out.tokens_v.len(),
                    chunk.len() * shape.visual_tokens * shape.dim,
                    "visual tokens",
                ),
            ];
            if let Some((got, want, what)) = expect.iter().find(|(g, w, _)| g != w) {
                return Err(TrainError::Teacher {
                    path: PathBuf::from("<teacher>"),
                    message: format!(
                        "{what}: {got} values for {} pairs; expected {want}",
                        chunk.len()
                    ),
                });
            }
            let to16 =
                |v: &[f32], out: &mut Vec<f16>| out.extend(v.iter().map(|&x| f16::from_f32(x)));
            to16(&out.global_a, &mut cache.global_a);
            to16(&out.tokens_a, &mut cache.tokens_a);
            to16(&out.global_v, &mut cache.global_v);
            to16(&out.tokens_v, &mut cache.tokens_v);
            cache.pairs.extend_from_slice(chunk);
            progress(cache.pairs.len(), pairs.len());
        }
        Ok(cache)
    }

    /// Writes the cache (safetensors, f16, with its teacher and data identities) atomically.
    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        let pairs: Vec<u8> = self
            .pairs
            .iter()
            .flat_map(|&(c, f)| [c as u32, f as u32])
            .flat_map(u32::to_le_bytes)
            .collect();
        let bytes16 = |v: &[f16]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
        let s = &self.shape;
        let n = self.pairs.len();
        let tensors = [
            ("pairs", safetensors::Dtype::U32, vec![n, 2], pairs),
            (
                "global_a",
                safetensors::Dtype::F16,
                vec![n, s.dim],
                bytes16(&self.global_a),
            ),
            (
                "tokens_a",
                safetensors::Dtype::F16,
                vec![n, s.audio_tokens, s.dim],
                bytes16(&self.tokens_a),
            ),
            (
                "global_v",
                safetensors::Dtype::F16,
                vec![n, s.dim],
                bytes16(&self.global_v),
            ),
            (
                "tokens_v",
                safetensors::Dtype::F16,
                vec![n, s.visual_tokens, s.dim],
                bytes16(&self.tokens_v),
            ),
        ];
        let views = tensors
            .iter()
            .map(|(k, dtype, shape, b)| {
                safetensors::tensor::TensorView::new(*dtype, shape.clone(), b)
                    .map(|v| (k.to_string(), v))
                    .map_err(|e| io_err(path, "lay out the teacher cache", e))
            })
            .collect::<Result<HashMap<_, _>, _>>()?;
        let metadata = HashMap::from([
            ("format".to_string(), CACHE_FORMAT.to_string()),
            ("teacher".to_string(), self.teacher.clone()),
            ("data".to_string(), self.data.clone()),
            ("audio_length".to_string(), s.audio_length.to_string()),
            ("image_size".to_string(), s.image_size.to_string()),
        ]);
        let bytes = safetensors::serialize(views, Some(metadata))
            .map_err(|e| io_err(path, "serialise the teacher cache", e))?;
        write_atomic(path, |w| w.write_all(&bytes))
            .map_err(|e| io_err(path, "write the teacher cache", e))
    }

    /// Reads a cache written by [`TeacherCache::save`].
    pub fn load(path: &Path) -> Result<Self, TrainError> {
        let bytes = std::fs::read(path).map_err(|e| io_err(path, "read the teacher cache", e))?;
        let bad = |detail: String| TrainError::Config {
            path: path.display().to_string(),
            detail,
        };
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| bad(format!("not a teacher cache: {e}")))?;
        let meta = meta.metadata().clone().unwrap_or_default();
        let field = |k: &str| {
            meta.get(k)
                .cloned()
                .ok_or_else(|| bad(format!("metadata field `{k}` is absent")))
        };
        if field("format")? != CACHE_FORMAT {
            return Err(bad(format!(
                "metadata `format` is {:?}; expected {CACHE_FORMAT:?}",
                meta.get("format")
            )));
        }
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| bad(format!("not a teacher cache: {e}")))?;
        let get = |k: &str, dtype: safetensors::Dtype, rank: usize| {
            let t = st
                .tensor(k)
                .map_err(|e| bad(format!("tensor `{k}`: {e}")))?;
            if t.dtype() != dtype || t.shape().len() != rank {
                return Err(bad(format!(
                    "tensor `{k}` is {:?} {:?}; expected {dtype:?} of rank {rank}",
                    t.dtype(),
                    t.shape()
                )));
            }
            Ok(t)
        };
        let f16s = |k: &str, rank: usize| -> Result<(Vec<f16>, Vec<usize>), TrainError> {
            let t = get(k, safetensors::Dtype::F16, rank)?;
            let v = t
                .data()
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]))
                .collect();
            Ok((v, t.shape().to_vec()))
        };
        let p = get("pairs", safetensors::Dtype::U32, 2)?;
        let words: Vec<usize> = p
            .data()
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .collect();
        let pairs: Vec<(usize, usize)> = words.chunks_exact(2).map(|w| (w[0], w[1])).collect();
        let (global_a, ga) = f16s("global_a", 2)?;
        let (tokens_a, ta) = f16s("tokens_a", 3)?;
        let (global_v, gv) = f16s("global_v", 2)?;
        let (tokens_v, tv) = f16s("tokens_v", 3)?;
        let n = pairs.len();
        let audio_length = field("audio_length")?
            .parse()
            .map_err(|e| bad(format!("metadata `audio_length`: {e}")))?;
        let image_size = field("image_size")?
            .parse()
            .map_err(|e| bad(format!("metadata `image_size`: {e}")))?;
        let shape = TeacherShape {
            dim: ga[1],
            audio_length,
            image_size,
            audio_tokens: ta[1],
            visual_tokens: tv[1],
        };
        if [ga[0], ta[0], gv[0], tv[0]] != [n; 4]
            || gv[1] != shape.dim
            || ta[2] != shape.dim
            || tv[2] != shape.dim
        {
            return Err(bad(format!(
                "tensor shapes disagree: pairs {n}, global_a {ga:?}, tokens_a {ta:?}, global_v {gv:?}, tokens_v {tv:?}"
            )));
        }
        Ok(Self {
            shape,
            teacher: field("teacher")?,
            data: field("data")?,
            pairs,
            global_a,
            tokens_a,
            global_v,
            tokens_v,
        })
    }

    /// The stored outputs of cached pair `index`, as f32.
    pub fn pair(&self, index: usize) -> TeacherBatch {
        self.rows(&[index])
    }

    /// The stored outputs of cached pairs `picks`, in that order, as f32.
    fn rows(&self, picks: &[usize]) -> TeacherBatch {
        let s = &self.shape;
        let rows = |v: &[f16], width: usize| -> Vec<f32> {
            picks
                .iter()
                .flat_map(|&i| v[i * width..(i + 1) * width].iter().map(|x| x.to_f32()))
                .collect()
        };
        TeacherBatch {
            global_a: rows(&self.global_a, s.dim),
            tokens_a: rows(&self.tokens_a, s.audio_tokens * s.dim),
            global_v: rows(&self.global_v, s.dim),
            tokens_v: rows(&self.tokens_v, s.visual_tokens * s.dim),
        }
    }

    /// The teacher's outputs for cached pairs `picks`, as tensors on `device`.
    fn batch(&self, picks: &[usize], device: &Device) -> TeacherTensors {
        let s = &self.shape;
        let b = picks.len();
        let t = self.rows(picks);
        TeacherTensors {
            global_a: Tensor::from_data(TensorData::new(t.global_a, [b, s.dim]), device),
            tokens_a: Tensor::from_data(
                TensorData::new(t.tokens_a, [b, s.audio_tokens, s.dim]),
                device,
            ),
            global_v: Tensor::from_data(TensorData::new(t.global_v, [b, s.dim]), device),
            tokens_v: Tensor::from_data(
                TensorData::new(t.tokens_v, [b, s.visual_tokens, s.dim]),
                device,
            ),
        }
    }
}

/// Teacher outputs of a batch as tensors.
struct TeacherTensors {
    global_a: Tensor<2>,
    tokens_a: Tensor<3>,
    global_v: Tensor<2>,
    tokens_v: Tensor<3>,
}

/// The student and the projections of its tokens to the teacher's width (used only while distilling).
#[derive(Module, Debug)]
pub struct Distilled {
    /// The student encoders (official key names).
    pub student: CavMae,
    /// Audio tokens, student width -> teacher width.
    pub proj_a: Linear,
    /// Visual tokens, student width -> teacher width.
    pub proj_v: Linear,
}

/// Row-wise L2 normalisation of the last axis.
fn unit<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let norm = x
        .clone()
        .powf_scalar(2.0)
        .sum_dim(D - 1)
        .sqrt()
        .clamp_min(1e-12);
    x / norm
}

/// Mean cosine distance between matching rows of the last axis.
fn cosine_distance<const D: usize>(s: Tensor<D>, t: Tensor<D>) -> Tensor<1> {
    let cos = (unit(s) * unit(t)).sum_dim(D - 1);
    cos.neg().add_scalar(1.0).mean()
}

/// Mean over rows of KL(softmax(teacher) || softmax(student)), both (rows, classes) logits.
fn kl_rows(teacher: Tensor<2>, student: Tensor<2>) -> Tensor<1> {
    let p = activation::softmax(teacher.clone(), 1);
    let log_p = activation::log_softmax(teacher, 1);
    let log_q = activation::log_softmax(student, 1);
    (p * (log_p - log_q)).sum_dim(1).mean()
}

/// Audio-to-patch similarity logits of every (audio i, image j) pair: (B * B, N), row i * B + j.
fn map_logits(global_a: Tensor<2>, tokens_v: Tensor<3>, temperature: f64) -> Tensor<2> {
    let [b, n, d] = tokens_v.dims();
    let sims = unit(global_a).matmul(unit(tokens_v).reshape([b * n, d]).transpose());
    sims.reshape([b * b, n]) / temperature
}

/// Along one axis, the share of each of `t` equal teacher cells that lies in each of `g` equal student cells covering the same span: (g, t), row-major, every column summing to 1.
fn axis_shares(g: usize, t: usize) -> Vec<f64> {
    let mut shares = vec![0.0; g * t];
    for i in 0..g {
        let lo = (i * t) as f64 / g as f64;
        let hi = ((i + 1) * t) as f64 / g as f64;
        for j in 0..t {
            shares[i * t + j] = (hi.min((j + 1) as f64) - lo.max(j as f64)).max(0.0);
        }
    }
    shares
}

/// How the teacher's t x t patch grid maps onto the student's g x g one, by area (the student's image covers the same scene at another resolution).
#[derive(Debug, Clone)]
struct GridPooling {
    /// (g^2, t^2) share of each teacher cell's area inside each student cell (columns sum to 1), and the same with rows scaled to sum to 1; none when the grids agree.
    shares: Option<(Tensor<2>, Tensor<2>)>,
}

impl GridPooling {
    /// The pooling of a `teacher` x `teacher` grid onto a `student` x `student` one.
    fn new(teacher: usize, student: usize, device: &Device) -> Self {
        if teacher == student {
            return Self { shares: None };
        }
        let axis = axis_shares(student, teacher);
        let (t2, g2) = (teacher * teacher, student * student);
        let mut mass = vec![0f32; g2 * t2];
        for (i, row) in mass.chunks_exact_mut(t2).enumerate() {
            let (iy, ix) = (i / student, i % student);
            for (j, share) in row.iter_mut().enumerate() {
                let (jy, jx) = (j / teacher, j % teacher);
                *share = (axis[iy * teacher + jy] * axis[ix * teacher + jx]) as f32;
            }
        }
        let mut mean = mass.clone();
        for row in mean.chunks_exact_mut(t2) {
            let total: f32 = row.iter().sum();
            row.iter_mut().for_each(|v| *v /= total);
        }
        let tensor = |v: Vec<f32>| Tensor::<2>::from_data(TensorData::new(v, [g2, t2]), device);
        Self {
            shares: Some((tensor(mass), tensor(mean))),
        }
    }

    /// The teacher's (B, t^2, D) patch tokens as (B, g^2, D): each student cell the area-weighted mean of the teacher cells it covers.
    fn tokens(&self, tokens: Tensor<3>) -> Tensor<3> {
        let Some((_, mean)) = &self.shares else {
            return tokens;
        };
        let [b, n, d] = tokens.dims();
        let g2 = mean.dims()[0];
        mean.clone()
            .matmul(tokens.swap_dims(0, 1).reshape([n, b * d]))
            .reshape([g2, b, d])
            .swap_dims(0, 1)
    }

    /// Similarity-map logits over the teacher's t^2 cells as logits over the student's g^2: the log of the probability that falls in each student cell.
    fn map(&self, logits: Tensor<2>) -> Tensor<2> {
        let Some((mass, _)) = &self.shares else {
            return logits;
        };
        activation::softmax(logits, 1)
            .matmul(mass.clone().transpose())
            .clamp_min(1e-30)
            .log()
    }
}

/// Losses of one batch and two agreement rates.
struct StepOutput {
    loss: Tensor<1>,
    parts: [Tensor<1>; 6],
    peak_agreement: f64,
    accuracy: f64,
}

/// The distillation objective on one batch: student outputs against the teacher's.
fn objective(
    model: &Distilled,
    audio: Tensor<3>,
    images: Tensor<4>,
    teacher: TeacherTensors,
    loss: &DistillLoss,
    pool: &GridPooling,
) -> StepOutput {
    let device = audio.device();
    let sa = model.student.forward_audio(audio);
    let sv = model.student.forward_visual(images);
    let b = sa.global.dims()[0];
    let global = (cosine_distance(
        model.proj_a.forward(sa.global.clone()),
        teacher.global_a.clone(),
    ) + cosine_distance(
        model.proj_v.forward(sv.global.clone()),
        teacher.global_v.clone(),
    )) / 2.0;
    let patch = (cosine_distance(model.proj_a.forward(sa.tokens), teacher.tokens_a)
        + cosine_distance(
            model.proj_v.forward(sv.tokens.clone()),
            pool.tokens(teacher.tokens_v.clone()),
        ))
        / 2.0;
    let t_map = pool.map(map_logits(
        teacher.global_a.clone(),
        teacher.tokens_v,
        loss.map_temperature,
    ));
    let s_map = map_logits(sa.global.clone(), sv.tokens, loss.map_temperature);
    let matched: Vec<i64> = (0..b).map(|i| (i * b + i) as i64).collect();
    let matched = Tensor::<1, Int>::from_data(TensorData::new(matched, [b]), &device);
    let (t_own, s_own) = (
        t_map.clone().select(0, matched.clone()),
        s_map.clone().select(0, matched),
    );
    let agree = t_own
        .clone()
        .argmax(1)
        .equal(s_own.clone().argmax(1))
        .float()
        .mean();
    let sharpen = loss.map_temperature / loss.matched_map_temperature;
    let matched_map = kl_rows(t_own * sharpen, s_own * sharpen);
    let map = kl_rows(t_map, s_map);
    let tau = loss.affinity_temperature;
    let t_aff = unit(teacher.global_a).matmul(unit(teacher.global_v).transpose()) / tau;
    let s_aff = unit(sa.global.clone()).matmul(unit(sv.global.clone()).transpose()) / tau;
    let affinity = (kl_rows(t_aff.clone(), s_aff.clone())
        + kl_rows(t_aff.transpose(), s_aff.transpose()))
        / 2.0;
    let (nce, accuracy) = info_nce(sa.global, sv.global, loss.contrastive_temperature, true);
    let total = global.clone() * loss.global
        + patch.clone() * loss.patch
        + map.clone() * loss.map
        + matched_map.clone() * loss.matched_map
        + affinity.clone() * loss.affinity
        + nce.clone() * loss.contrastive;
    StepOutput {
        loss: total,
        parts: [global, patch, map, matched_map, affinity, nce],
        peak_agreement: scalar(agree.inner()),
        accuracy: scalar(accuracy.inner()),
    }
}

fn scalar(t: Tensor<1>) -> f64 {
    f64::from(t.into_scalar::<f32>())
}

/// Mean losses over one checkpoint interval of a distillation run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillStats {
    /// Last step of the interval (1-based).
    pub step: usize,
    /// Mean weighted total.
    pub loss: f64,
    /// Mean global-token cosine distance.
    pub global: f64,
    /// Mean patch-token cosine distance.
    pub patch: f64,
    /// Mean similarity-map KL.
    pub map: f64,
    /// Mean matched-map KL (absent from runs before the term existed).
    #[serde(default)]
    pub matched_map: f64,
    /// Mean affinity KL.
    pub affinity: f64,
    /// Mean student InfoNCE (reported even when its weight is 0).
    pub contrastive: f64,
    /// Share of matched pairs whose student map peaks on the teacher's peak patch.
    pub peak_agreement: f64,
    /// Share of in-batch items whose best-matching other modality is their own (student).
    pub accuracy: f64,
    /// Learning rate at the interval's last step.
    pub lr: f64,
    /// Seconds per step.
    pub seconds_per_step: f64,
}

impl DistillStats {
    /// The values an [`on_step`](Distiller::run) callback receives, in this order: loss, global, patch, map, matched map, affinity, contrastive, peak agreement, accuracy.
    fn add(&mut self, v: &[f64; 9]) {
        self.loss += v[0];
        self.global += v[1];
        self.patch += v[2];
        self.map += v[3];
        self.matched_map += v[4];
        self.affinity += v[5];
        self.contrastive += v[6];
        self.peak_agreement += v[7];
        self.accuracy += v[8];
    }

    fn mean(mut self, n: usize, step: usize, lr: f64, seconds_per_step: f64) -> Self {
        let n = n.max(1) as f64;
        for v in [
            &mut self.loss,
            &mut self.global,
            &mut self.patch,
            &mut self.map,
            &mut self.matched_map,
            &mut self.affinity,
            &mut self.contrastive,
            &mut self.peak_agreement,
            &mut self.accuracy,
        ] {
            *v /= n;
        }
        Self {
            step,
            lr,
            seconds_per_step,
            ..self
        }
    }
}

/// What a distillation run has done so far, saved beside the checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillState {
    /// Steps completed.
    pub step: usize,
    /// The teacher the run learns from (sha256 of its file).
    pub teacher: String,
    /// Its dimensions.
    pub teacher_shape: TeacherShape,
    /// Mean losses per completed checkpoint interval.
    pub history: Vec<DistillStats>,
    /// sha256 of the student checkpoint, projections and optimiser state this state goes with.
    #[serde(default)]
    pub files: PayloadHashes,
}

/// Files of a distillation run, derived from the student checkpoint path `CKPT`.
#[derive(Debug, Clone)]
pub struct DistillFiles {
    /// The student checkpoint (safetensors, official keys).
    pub checkpoint: PathBuf,
    /// The configuration used (`CKPT.distill.toml`).
    pub config: PathBuf,
    /// Progress and history (`CKPT.state.json`).
    pub state: PathBuf,
    /// Optimiser state (`CKPT.optim.bpk`).
    pub optimizer: PathBuf,
    /// The token projections (`CKPT.proj.safetensors`).
    pub projections: PathBuf,
    /// The default teacher cache (`CKPT.teacher.safetensors`).
    pub cache: PathBuf,
}

impl DistillFiles {
    /// The files belonging to student checkpoint `checkpoint`.
    pub fn new(checkpoint: &Path) -> Self {
        Self {
            checkpoint: checkpoint.to_path_buf(),
            config: beside(checkpoint, ".distill.toml"),
            state: beside(checkpoint, ".state.json"),
            optimizer: beside(checkpoint, ".optim.bpk"),
            projections: beside(checkpoint, ".proj.safetensors"),
            cache: beside(checkpoint, ".teacher.safetensors"),
        }
    }
}

/// Xavier-uniform projection weights (torch layout, out x in) and zero biases, seeded.
fn init_projections(from: usize, to: usize, seed: u64) -> BTreeMap<String, RawTensor> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x0d15_7111);
    let bound = (6.0 / (from + to) as f32).sqrt();
    let mut out = BTreeMap::new();
    for name in ["proj_a", "proj_v"] {
        let weight = (0..from * to)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        out.insert(
            format!("{name}.weight"),
            RawTensor {
                shape: vec![to, from],
                data: weight,
            },
        );
        out.insert(
            format!("{name}.bias"),
            RawTensor {
                shape: vec![to],
                data: vec![0.0; to],
            },
        );
    }
    out
}

/// A distillation run: student, projections, optimiser and progress.
pub struct Distiller {
    config: DistillConfig,
    model: Distilled,
    optimizer: ModuleOptimizer,
    device: Device,
    files: DistillFiles,
    /// Progress so far.
    pub state: DistillState,
}

impl Distiller {
    /// Starts a run: the student from the official initialisation (seeded), projections to the teacher's width.
    pub fn new(
        config: DistillConfig,
        teacher: TeacherShape,
        teacher_identity: &str,
        checkpoint: &Path,
    ) -> Result<Self, TrainError> {
        let student_config = config.student.model_config(teacher.audio_length);
        let ck = Checkpoint {
            path: PathBuf::from("<initial weights>"),
            format: CheckpointFormat::Safetensors,
            tensors: init_tensors(&student_config, config.run.seed),
        };
        let proj = Checkpoint {
            path: PathBuf::from("<initial projections>"),
            format: CheckpointFormat::Safetensors,
            tensors: init_projections(config.student.dim, teacher.dim, config.run.seed),
        };
        let state = DistillState {
            teacher: teacher_identity.to_string(),
            teacher_shape: teacher,
            history: Vec::new(),
            step: 0,
            files: PayloadHashes::new(),
        };
        let distiller = Self::build(config, &ck, &proj, checkpoint, state, None)?;
        distiller.pool()?;
        Ok(distiller)
    }

    /// Continues the run whose student checkpoint is `checkpoint` (config, state, projections and optimiser beside it).
    pub fn resume(checkpoint: &Path) -> Result<Self, TrainError> {
        let files = DistillFiles::new(checkpoint);
        let config = DistillConfig::read(&files.config)?;
        let state: DistillState = read_parsed(&files.state, "read the run state", json_text)?;
        recover_run(
            &files.state,
            &state.files,
            &[&files.checkpoint, &files.projections, &files.optimizer],
        )?;
        let teacher = state.teacher_shape;
        let ck = Checkpoint::load(checkpoint)?;
        let detected = ModelConfig::detect(&ck, Some(config.student.dim / 64))?;
        let expected = config.student.model_config(teacher.audio_length);
        if detected != expected {
            return Err(TrainError::Config {
                path: checkpoint.display().to_string(),
                detail: format!(
                    "checkpoint layout {detected:?} differs from the run's student {expected:?}"
                ),
            });
        }
        let proj = Checkpoint::load(&files.projections)?;
        Self::build(
            config,
            &ck,
            &proj,
            checkpoint,
            state,
            Some(&files.optimizer),
        )
    }

    fn build(
        config: DistillConfig,
        ck: &Checkpoint,
        proj: &Checkpoint,
        checkpoint: &Path,
        state: DistillState,
        optimizer_file: Option<&Path>,
    ) -> Result<Self, TrainError> {
        let device = Device::default().autodiff();
        let student_config = config
            .student
            .model_config(state.teacher_shape.audio_length);
        let model = Distilled {
            student: CavMae::from_checkpoint(ck, &student_config, &device)?.freeze_positions(),
            proj_a: linear_from_checkpoint(proj, "proj_a", &device)?,
            proj_v: linear_from_checkpoint(proj, "proj_v", &device)?,
        };
        let optimizer = adamw(&config.optim, optimizer_file)?;
        Ok(Self {
            config,
            model,
            optimizer,
            device,
            files: DistillFiles::new(checkpoint),
            state,
        })
    }

    /// The run's configuration.
    pub fn config(&self) -> &DistillConfig {
        &self.config
    }

    /// The student's checkpoint layout.
    pub fn student_config(&self) -> ModelConfig {
        self.config
            .student
            .model_config(self.state.teacher_shape.audio_length)
    }

    /// The step a run stops at: `config.optim.steps`, or `stop_after` when that comes first.
    pub fn target_step(&self, stop_after: Option<usize>) -> usize {
        stop_after.map_or(self.config.optim.steps, |s| s.min(self.config.optim.steps))
    }

    /// The teacher's patch grid pooled onto the student's.
    fn pool(&self) -> Result<GridPooling, TrainError> {
        let teacher = self.state.teacher_shape;
        let t = teacher.visual_tokens.isqrt();
        let s = self.student_config().visual_grid();
        if s == 0 || t * t != teacher.visual_tokens {
            return Err(TrainError::Config {
                path: self.files.config.display().to_string(),
                detail: format!(
                    "student.image_size = {} gives a {s} x {s} patch grid and the teacher has {} patch tokens; expected a square teacher grid and an image of at least 16 pixels",
                    self.config.student.image_size, teacher.visual_tokens
                ),
            });
        }
        Ok(GridPooling::new(t, s, &self.device))
    }

    /// Checks that `cache` was made by this run's teacher, with its dimensions.
    pub fn check_cache(&self, cache: &TeacherCache, path: &Path) -> Result<(), TrainError> {
        let fail = |detail: String| {
            Err(TrainError::Config {
                path: path.display().to_string(),
                detail,
            })
        };
        if cache.teacher != self.state.teacher {
            return fail(format!(
                "made by teacher sha256 {}; this run learns from {}",
                cache.teacher, self.state.teacher
            ));
        }
        if cache.shape != self.state.teacher_shape {
            return fail(format!(
                "teacher dimensions {:?}; this run expects {:?}",
                cache.shape, self.state.teacher_shape
            ));
        }
        if cache.pairs.len() < 2 {
            return fail(format!(
                "{} cached pair(s); distillation needs at least 2",
                cache.pairs.len()
            ));
        }
        Ok(())
    }

    /// Distils until `config.optim.steps` (or step `stop_after`), checkpointing every `checkpoint_every` steps and when stopping; `on_step(step, values, lr)` after each step with [loss, global, patch, map, matched map, affinity, contrastive, peak agreement, accuracy].
    pub fn run(
        &mut self,
        data: &TrainData,
        cache: &TeacherCache,
        stop_after: Option<usize>,
        mut on_step: impl FnMut(usize, &[f64; 9], f64),
    ) -> Result<(), TrainError> {
        let last = self.target_step(stop_after);
        let b = self.config.optim.batch_size.min(cache.pairs.len());
        let l = cache.shape.audio_length;
        let size = self.student_config().image_size;
        let pool = self.pool()?;
        let mut acc = DistillStats::default();
        let mut count = 0usize;
        let mut interval_start = std::time::Instant::now();
        while self.state.step < last {
            let step = self.state.step;
            let mut rng = step_rng(self.config.run.seed, step);
            let picks = rand::seq::index::sample(&mut rng, cache.pairs.len(), b).into_vec();
            let (mut audio, mut images) = (Vec::new(), Vec::new());
            for &i in &picks {
                let (c, f) = cache.pairs[i];
                data.pair_inputs(c, f, (l, size), &mut audio, &mut images)?;
            }
            let a =
                Tensor::<3>::from_data(TensorData::new(audio, [b, l, NUM_MEL_BINS]), &self.device);
            let v =
                Tensor::<4>::from_data(TensorData::new(images, [b, 3, size, size]), &self.device);
            let teacher = cache.batch(&picks, &self.device);
            let out = objective(&self.model, a, v, teacher, &self.config.loss, &pool);
            let grads = out.loss.backward();
            let [g, p, m, mm, af, n] = out.parts;
            let values = [
                scalar(out.loss.inner()),
                scalar(g.inner()),
                scalar(p.inner()),
                scalar(m.inner()),
                scalar(mm.inner()),
                scalar(af.inner()),
                scalar(n.inner()),
                out.peak_agreement,
                out.accuracy,
            ];
            if !values[0].is_finite() {
                return Err(TrainError::Diverged {
                    step,
                    value: values[0] as f32,
                });
            }
            let grads = GradientsParams::from_grads(grads, &self.model);
            let lr = self.config.optim.lr_at(step);
            self.model = self.optimizer.step(lr, self.model.clone(), grads);
            self.state.step += 1;
            acc.add(&values);
            count += 1;
            on_step(self.state.step, &values, lr);
            if self
                .state
                .step
                .is_multiple_of(self.config.run.checkpoint_every)
                || self.state.step == last
            {
                let secs = interval_start.elapsed().as_secs_f64() / count.max(1) as f64;
                self.state.history.push(std::mem::take(&mut acc).mean(
                    count,
                    self.state.step,
                    lr,
                    secs,
                ));
                count = 0;
                interval_start = std::time::Instant::now();
                self.save()?;
            }
        }
        Ok(())
    }

    /// Writes the student checkpoint (official keys), projections, config, state and optimiser state as one save that a kill cannot leave inconsistent ([`save_run`]).
    pub fn save(&mut self) -> Result<(), TrainError> {
        let f = &self.files;
        let student = self.model.student.state_dict()?;
        let mut proj = BTreeMap::new();
        linear_state(&mut proj, "proj_a", &self.model.proj_a)?;
        linear_state(&mut proj, "proj_v", &self.model.proj_v)?;
        let checkpoint = |p: &Path| write_safetensors(&student, p).map_err(TrainError::from);
        let projections = |p: &Path| write_safetensors(&proj, p).map_err(TrainError::from);
        let optimizer = |p: &Path| optimizer_payload(&self.optimizer, p);
        save_run(
            (&f.config, &self.config),
            (&f.state, &mut self.state),
            |s| &mut s.files,
            &[
                (&f.checkpoint, &checkpoint),
                (&f.projections, &projections),
                (&f.optimizer, &optimizer),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor2(rows: usize, cols: usize, values: &[f32]) -> Tensor<2> {
        Tensor::from_data(
            TensorData::new(values.to_vec(), [rows, cols]),
            &Device::default(),
        )
    }

    fn value(t: Tensor<1>) -> f32 {
        t.into_scalar::<f32>()
    }

    #[test]
    fn cosine_distance_is_zero_for_parallel_rows_and_two_for_opposite_ones() {
        let a = tensor2(2, 3, &[1.0, 2.0, 3.0, -1.0, 0.5, 0.0]);
        let scaled = tensor2(2, 3, &[2.0, 4.0, 6.0, -3.0, 1.5, 0.0]);
        assert!(value(cosine_distance(a.clone(), scaled)).abs() < 1e-6);
        assert!((value(cosine_distance(a.clone(), a.neg())) - 2.0).abs() < 1e-6);
    }

    #[test]
    fn kl_matches_the_formula_and_vanishes_for_equal_logits() {
        let t = tensor2(1, 3, &[1.0, 0.0, -1.0]);
        let s = tensor2(1, 3, &[0.0, 0.0, 0.0]);
        assert!(value(kl_rows(t.clone(), t.clone())).abs() < 1e-6);
        // KL(p || uniform) = sum p ln p + ln 3.
        let z: f32 = [1.0f32, 0.0, -1.0].iter().map(|x| x.exp()).sum();
        let p: Vec<f32> = [1.0f32, 0.0, -1.0].iter().map(|x| x.exp() / z).collect();
        let expected: f32 = p.iter().map(|q| q * q.ln()).sum::<f32>() + 3f32.ln();
        assert!((value(kl_rows(t, s)) - expected).abs() < 1e-5);
    }

    #[test]
    fn map_logits_hold_every_audio_image_pair_in_row_order() {
        // Two items, two patches, dim 2: audio i against image j's patches is row i * 2 + j.
        let device = Device::default();
        let audio = tensor2(2, 2, &[1.0, 0.0, 0.0, 1.0]);
        let tokens = Tensor::<3>::from_data(
            TensorData::new(vec![1.0, 0.0, 0.0, 1.0, 0.0, 2.0, 3.0, 0.0], [2, 2, 2]),
            &device,
        );
        let logits = map_logits(audio, tokens, 0.5)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert_eq!(logits, vec![2.0, 0.0, 0.0, 2.0, 0.0, 2.0, 2.0, 0.0]);
    }

    #[test]
    fn pooling_maps_a_teacher_grid_onto_a_coarser_student_grid() {
        // A 4 x 4 teacher grid onto 2 x 2: block (0, 1) holds teacher cells (0..2, 2..4).
        let device = Device::default();
        let values: Vec<f32> = (0..16).map(|i| i as f32).collect();
        let tokens = Tensor::<3>::from_data(TensorData::new(values.clone(), [1, 16, 1]), &device);
        let pool = GridPooling::new(4, 2, &device);
        let pooled = pool.tokens(tokens).into_data().try_to_vec::<f32>().unwrap();
        let mean = |cells: [usize; 4]| cells.iter().map(|&c| c as f32).sum::<f32>() / 4.0;
        assert_eq!(
            pooled,
            vec![
                mean([0, 1, 4, 5]),
                mean([2, 3, 6, 7]),
                mean([8, 9, 12, 13]),
                mean([10, 11, 14, 15])
            ]
        );
        // Block probabilities: softmax over 16 cells summed per block, returned as log-probabilities.
        let logits = tensor2(1, 16, &values);
        let pooled = pool.map(logits).into_data().try_to_vec::<f32>().unwrap();
        let z: f32 = values.iter().map(|v| v.exp()).sum();
        let block =
            |cells: [usize; 4]| (cells.iter().map(|&c| values[c].exp()).sum::<f32>() / z).ln();
        for (got, want) in pooled.iter().zip([
            block([0, 1, 4, 5]),
            block([2, 3, 6, 7]),
            block([8, 9, 12, 13]),
            block([10, 11, 14, 15]),
        ]) {
            assert!((got - want).abs() < 1e-4, "{got} vs {want}");
        }
    }

    #[test]
    fn pooling_by_area_onto_a_grid_that_does_not_divide_the_teachers() {
        // A 3 x 3 teacher grid onto 2 x 2: along each axis student cell 0 covers teacher cell 0
        // and half of cell 1, student cell 1 the other half and cell 2.
        assert_eq!(axis_shares(2, 3), vec![1.0, 0.5, 0.0, 0.0, 0.5, 1.0]);
        let device = Device::default();
        let pool = GridPooling::new(3, 2, &device);
        let values: Vec<f32> = (0..9).map(|i| i as f32).collect();
        let tokens = Tensor::<3>::from_data(TensorData::new(values.clone(), [1, 9, 1]), &device);
        let pooled = pool.tokens(tokens).into_data().try_to_vec::<f32>().unwrap();
        // Student cell (0, 0): teacher cells 0 (weight 1), 1 and 3 (0.5 each), 4 (0.25).
        let first = (0.0 + 0.5 * 1.0 + 0.5 * 3.0 + 0.25 * 4.0) / 2.25;
        let last = (8.0 + 0.5 * 7.0 + 0.5 * 5.0 + 0.25 * 4.0) / 2.25;
        assert!((pooled[0] - first).abs() < 1e-5 && (pooled[3] - last).abs() < 1e-5);
        // The map's probability is kept whole: the student cells' probabilities sum to 1, and
        // cell (0, 0) holds teacher cell 0's, half of 1's and 3's and a quarter of 4's.
        let logits = tensor2(1, 9, &values);
        let probs: Vec<f32> = pool
            .map(logits)
            .exp()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let z: f32 = values.iter().map(|v| v.exp()).sum();
        let p = |c: usize| values[c].exp() / z;
        assert!((probs.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{probs:?}");
        let want = p(0) + 0.5 * (p(1) + p(3)) + 0.25 * p(4);
        assert!((probs[0] - want).abs() < 1e-5, "{} vs {want}", probs[0]);
    }

    #[test]
    fn cached_frames_are_evenly_spaced_inside_the_clip() {
        assert_eq!(cached_frames(1), vec![8]);
        assert_eq!(cached_frames(4), vec![2, 6, 10, 14]);
        assert_eq!(cached_frames(16), (0..16).collect::<Vec<_>>());
    }

    #[test]
    fn presets_and_configs_are_checked() {
        let tiny = StudentSection::preset("tiny").unwrap();
        let teacher = ModelConfig {
            mlp_hidden: 512,
            depth_u: 1,
            ..ModelConfig::sync(128, 3, 2, 64)
        };
        let ratio = teacher.pair_gflops() / tiny.model_config(64).pair_gflops();
        assert!(ratio >= 5.0, "tiny is only {ratio:.2}x cheaper");
        assert!(StudentSection::preset("huge").is_none());
        let mut config = DistillConfig::default();
        config.validate("test").unwrap();
        config.loss.map = -1.0;
        let err = config.validate("test").unwrap_err().to_string();
        assert!(err.contains("loss weights"), "{err}");
        config.loss = DistillLoss {
            matched_map: 2.0,
            matched_map_temperature: 0.0,
            ..DistillLoss::default()
        };
        let err = config.validate("test").unwrap_err().to_string();
        assert!(err.contains("matched_map_temperature"), "{err}");
        config.loss = DistillLoss::default();
        config.data.frames_per_clip = 17;
        let err = config.validate("test").unwrap_err().to_string();
        assert!(err.contains("data.frames_per_clip = 17"), "{err}");
        config.data = DataSection::default();
        config.student.dim = 96;
        let err = config.validate("test").unwrap_err().to_string();
        assert!(err.contains("student.dim = 96"), "{err}");
        config.student.dim = 8192;
        let err = config.validate("test").unwrap_err().to_string();
        assert!(
            err.contains("student.dim = 8192; expected at most 4096"),
            "{err}"
        );
    }
}
