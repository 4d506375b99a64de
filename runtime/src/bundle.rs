//! Model bundles: the manifest schema, verification on open, and tract inference plans for both encoders.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tract_onnx::prelude::*;

use crate::preprocess::{audio, fbank, image, segment};

/// Bundle format this runtime reads and `cavsync-export` writes.
pub const FORMAT_VERSION: u32 = 1;
/// File name of the manifest inside a bundle directory.
pub const MANIFEST_FILE: &str = "manifest.toml";

/// Errors raised while opening or running a bundle.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// A bundle file could not be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The manifest is not valid TOML for this schema.
    #[error("{path}: invalid manifest: {message}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What the parser reported (names the field).
        message: String,
    },
    /// The manifest declares a format this runtime does not read.
    #[error(
        "{path}: bundle format version {found}, this runtime reads version {FORMAT_VERSION}; re-export the bundle with a matching cavsync-export"
    )]
    Version {
        /// The manifest file.
        path: PathBuf,
        /// The version found.
        found: u32,
    },
    /// A manifest field holds a value this runtime cannot honour.
    #[error("{path}: field `{field}`: {problem}")]
    Field {
        /// The manifest file.
        path: PathBuf,
        /// The field.
        field: String,
        /// What was expected.
        problem: String,
    },
    /// A model file's hash differs from the manifest's.
    #[error(
        "{path}: sha256 {found} does not match the manifest's {expected}: the file was modified or corrupted"
    )]
    Hash {
        /// The model file.
        path: PathBuf,
        /// Hash in the manifest.
        expected: String,
        /// Hash of the file.
        found: String,
    },
    /// tract could not load or optimise a model file.
    #[error("{path}: cannot load ONNX model: {message}")]
    Model {
        /// The model file.
        path: PathBuf,
        /// tract's explanation.
        message: String,
    },
    /// An input has the wrong length.
    #[error("{what}: got {found} values, expected {expected}")]
    Input {
        /// Which input.
        what: &'static str,
        /// Length given.
        found: usize,
        /// Length expected.
        expected: usize,
    },
    /// Inference failed inside tract.
    #[error("inference failed: {0}")]
    Run(String),
}

/// The whole manifest: the single source of truth the runtime reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Bundle format version ([`FORMAT_VERSION`]).
    pub format_version: u32,
    /// Model family and dimensions.
    pub model: ModelInfo,
    /// The audio encoder graph.
    pub audio: EncoderInfo,
    /// The visual encoder graph.
    pub visual: EncoderInfo,
    /// Audio preprocessing constants.
    pub audio_preprocessing: AudioPreprocessing,
    /// Image preprocessing constants.
    pub image_preprocessing: ImagePreprocessing,
    /// Localization settings.
    pub localization: LocalizationInfo,
    /// Where the bundle came from.
    pub provenance: Provenance,
}

/// Model family and dimensions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    /// `sync` (global tokens) or `plain` (original CAV-MAE: global = mean of final tokens).
    pub layout: String,
    /// Embedding dimension D.
    pub dim: usize,
    /// Attention heads.
    pub heads: usize,
    /// Audio modality-specific blocks.
    pub depth_audio: usize,
    /// Visual modality-specific blocks.
    pub depth_visual: usize,
    /// Joint blocks in the checkpoint (the encoders run the last one, as the official code).
    pub depth_joint: usize,
    /// Register tokens per modality.
    pub registers: usize,
    /// Blocks per contrastive head (0 when absent).
    pub contrastive_depth: usize,
    /// Patch side.
    pub patch: usize,
    /// `f32` or `f16`.
    pub precision: String,
    /// Batch size the graphs take (items are encoded one at a time).
    pub batch: usize,
}

/// One encoder graph: file, hash, input and outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncoderInfo {
    /// ONNX file name inside the bundle.
    pub file: String,
    /// Hex sha256 of the file.
    pub sha256: String,
    /// Input name.
    pub input: String,
    /// Input shape.
    pub input_shape: Vec<usize>,
    /// Global-embedding output name, shape (1, D).
    pub global_output: String,
    /// Patch-token output name, shape (1, N, D).
    pub tokens_output: String,
    /// Patch tokens N.
    pub tokens: usize,
    /// Patch grid (rows, columns): (freq, time) for audio, (height, width) for images.
    pub grid: [usize; 2],
}

/// Audio preprocessing constants (Kaldi fbank as torchaudio, then segmenting and normalising).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudioPreprocessing {
    /// Sample rate in Hz.
    pub sample_rate: u32,
    /// Mel bins.
    pub num_mel_bins: usize,
    /// Frame length in samples.
    pub frame_length: usize,
    /// Frame shift in samples.
    pub frame_shift: usize,
    /// Window function.
    pub window: String,
    /// Pre-emphasis coefficient.
    pub preemphasis: f64,
    /// Lowest mel filter edge in Hz.
    pub low_freq: f32,
    /// Highest mel filter edge in Hz.
    pub high_freq: f32,
    /// Dither amount.
    pub dither: f32,
    /// Whether only whole frames are used.
    pub snip_edges: bool,
    /// Whether the waveform mean is subtracted first.
    pub subtract_mean: bool,
    /// Spectrogram length every clip is padded or cut to before segmenting.
    pub clip_frames: usize,
    /// Segment length L in fbank frames.
    pub target_length: usize,
    /// Video frames T per clip.
    pub total_frames: usize,
    /// Normalisation mean: x' = (x - mean) / std.
    pub norm_mean: f32,
    /// Normalisation std.
    pub norm_std: f32,
}

/// Image preprocessing constants (torchvision eval transform).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagePreprocessing {
    /// Square model input side.
    pub size: usize,
    /// Resampling filter of the shorter-side resize.
    pub resize: String,
    /// Crop after resizing.
    pub crop: String,
    /// Per-channel mean.
    pub mean: [f32; 3],
    /// Per-channel std.
    pub std: [f32; 3],
}

/// Localization settings carried with the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalizationInfo {
    /// Raw cosine (audio global vs best visual patch) at or above which a frame is `active`.
    pub active_threshold: f32,
    /// How the threshold was obtained.
    pub calibration: String,
}

/// Where the bundle came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// Source checkpoint file name.
    pub checkpoint: String,
    /// Hex sha256 of the source checkpoint.
    pub checkpoint_sha256: String,
    /// Tool and version that wrote the bundle.
    pub tool: String,
    /// Seconds since the Unix epoch when the bundle was written.
    pub created_unix: u64,
}

impl AudioPreprocessing {
    /// The constants this runtime implements, with the model's L and T.
    pub fn official(target_length: usize, total_frames: usize) -> Self {
        Self {
            sample_rate: audio::SAMPLE_RATE,
            num_mel_bins: fbank::NUM_MEL_BINS,
            frame_length: fbank::FRAME_LENGTH,
            frame_shift: fbank::FRAME_SHIFT,
            window: "hanning".into(),
            preemphasis: fbank::PREEMPHASIS,
            low_freq: fbank::LOW_FREQ,
            high_freq: fbank::HIGH_FREQ,
            dither: 0.0,
            snip_edges: true,
            subtract_mean: true,
            clip_frames: segment::CLIP_FRAMES,
            target_length,
            total_frames,
            norm_mean: segment::NORM_MEAN,
            norm_std: segment::NORM_STD,
        }
    }
}

impl ImagePreprocessing {
    /// The constants this runtime implements.
    pub fn official() -> Self {
        Self {
            size: image::IMAGE_SIZE as usize,
            resize: "pil-bicubic-shorter-side".into(),
            crop: "center".into(),
            mean: image::MEAN,
            std: image::STD,
        }
    }
}

/// Hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String, BundleError> {
    let bytes = std::fs::read(path).map_err(|source| BundleError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(sha256_hex(&bytes))
}

/// Hex sha256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut s = String::with_capacity(64);
    for b in digest {
        let _ = write!(s, "{b:02x}");
    }
    s
}

impl Manifest {
    /// Read and parse a bundle's manifest, checking the format version first.
    pub fn read(dir: &Path) -> Result<Self, BundleError> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| BundleError::Io {
            path: path.clone(),
            source,
        })?;
        #[derive(Deserialize)]
        struct VersionOnly {
            format_version: Option<u32>,
        }
        let version: VersionOnly = toml::from_str(&text).map_err(|e| BundleError::Manifest {
            path: path.clone(),
            message: e.to_string(),
        })?;
        match version.format_version {
            Some(FORMAT_VERSION) => {}
            Some(found) => return Err(BundleError::Version { path, found }),
            None => {
                return Err(BundleError::Manifest {
                    path,
                    message: "missing field `format_version`".into(),
                });
            }
        }
        let manifest: Self = toml::from_str(&text).map_err(|e| BundleError::Manifest {
            path: path.clone(),
            message: e.to_string(),
        })?;
        manifest.check_supported(&path)?;
        Ok(manifest)
    }

    /// Check that the manifest's preprocessing and shapes are ones this runtime implements.
    fn check_supported(&self, path: &Path) -> Result<(), BundleError> {
        let field = |field: &str, problem: String| BundleError::Field {
            path: path.to_path_buf(),
            field: field.into(),
            problem,
        };
        let ours = AudioPreprocessing::official(
            self.audio_preprocessing.target_length,
            self.audio_preprocessing.total_frames,
        );
        if self.audio_preprocessing != ours {
            return Err(field(
                "audio_preprocessing",
                format!("this runtime implements {ours:?}"),
            ));
        }
        if self.image_preprocessing != ImagePreprocessing::official() {
            return Err(field(
                "image_preprocessing",
                format!(
                    "this runtime implements {:?}",
                    ImagePreprocessing::official()
                ),
            ));
        }
        if self.audio_preprocessing.total_frames == 0 {
            return Err(field(
                "audio_preprocessing.total_frames",
                "must be at least 1".into(),
            ));
        }
        let l = self.audio_preprocessing.target_length;
        let d = self.model.dim;
        let expect_audio = vec![1, l, fbank::NUM_MEL_BINS];
        if self.audio.input_shape != expect_audio {
            return Err(field(
                "audio.input_shape",
                format!("expected {expect_audio:?} for target_length {l}"),
            ));
        }
        let s = self.image_preprocessing.size;
        if self.visual.input_shape != [1, 3, s, s] {
            return Err(field(
                "visual.input_shape",
                format!("expected [1, 3, {s}, {s}]"),
            ));
        }
        for (name, enc) in [("audio", &self.audio), ("visual", &self.visual)] {
            if enc.grid[0] * enc.grid[1] != enc.tokens {
                return Err(field(
                    &format!("{name}.grid"),
                    format!("{:?} does not multiply to {} tokens", enc.grid, enc.tokens),
                ));
            }
        }
        if d == 0 || self.model.batch != 1 {
            return Err(field(
                "model",
                "dim must be positive and batch must be 1".into(),
            ));
        }
        if !matches!(self.model.layout.as_str(), "sync" | "plain") {
            return Err(field("model.layout", "expected `sync` or `plain`".into()));
        }
        if !matches!(self.model.precision.as_str(), "f32" | "f16") {
            return Err(field("model.precision", "expected `f32` or `f16`".into()));
        }
        Ok(())
    }
}

/// One encoder's optimised tract plan with its expected shapes.
#[derive(Debug)]
struct EncoderPlan {
    plan: std::sync::Arc<TypedRunnableModel>,
    input_shape: Vec<usize>,
    tokens: usize,
}

/// Embeddings of one item: the global embedding and the patch tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    /// Global embedding (D).
    pub global: Vec<f32>,
    /// Patch tokens (N x D, row-major).
    pub tokens: Vec<f32>,
}

/// An opened, verified bundle with optimised plans for both encoders.
#[derive(Debug)]
pub struct Bundle {
    /// Directory the bundle was read from.
    pub dir: PathBuf,
    /// The verified manifest.
    pub manifest: Manifest,
    audio: EncoderPlan,
    visual: EncoderPlan,
}

/// Use `threads` threads for matrix products in every tract plan of this process (1 = single-threaded).
pub fn set_threads(threads: usize) {
    use tract_linalg::multithread::{Executor, set_default_executor};
    if threads > 1 {
        set_default_executor(Executor::multithread(threads));
    } else {
        set_default_executor(Executor::SingleThread);
    }
}

impl Bundle {
    /// Open a bundle directory: parse the manifest, verify hashes and graph signatures, optimise both plans.
    pub fn open(dir: &Path) -> Result<Self, BundleError> {
        let manifest = Manifest::read(dir)?;
        let audio = load_plan(dir, &manifest.audio, manifest.model.dim)?;
        let visual = load_plan(dir, &manifest.visual, manifest.model.dim)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
            audio,
            visual,
        })
    }

    /// Embedding dimension.
    pub fn dim(&self) -> usize {
        self.manifest.model.dim
    }

    /// Encode one normalised fbank segment (L x 128, row-major).
    pub fn embed_audio(&self, segment: &[f32]) -> Result<Embedding, BundleError> {
        run_plan(&self.audio, segment, "audio segment", self.dim())
    }

    /// Encode one normalised image (3 x H x W, channel-major).
    pub fn embed_visual(&self, image: &[f32]) -> Result<Embedding, BundleError> {
        run_plan(&self.visual, image, "image", self.dim())
    }
}

fn load_plan(dir: &Path, info: &EncoderInfo, dim: usize) -> Result<EncoderPlan, BundleError> {
    let path = dir.join(&info.file);
    let found = sha256_file(&path)?;
    if found != info.sha256 {
        return Err(BundleError::Hash {
            path,
            expected: info.sha256.clone(),
            found,
        });
    }
    let model_err = |message: String| BundleError::Model {
        path: path.clone(),
        message,
    };
    let model = tract_onnx::onnx()
        .model_for_path(&path)
        .map_err(|e| model_err(format!("{e:#}")))?;
    let inputs: Vec<String> = model
        .input_outlets()
        .map_err(|e| model_err(format!("{e:#}")))?
        .iter()
        .map(|o| model.node(o.node).name.clone())
        .collect();
    if inputs != [info.input.clone()] {
        return Err(model_err(format!(
            "graph inputs {inputs:?}, manifest says [{:?}]",
            info.input
        )));
    }
    let outputs: Vec<String> = model
        .output_outlets()
        .map_err(|e| model_err(format!("{e:#}")))?
        .iter()
        .map(|o| model.node(o.node).name.clone())
        .collect();
    let wanted = [info.global_output.clone(), info.tokens_output.clone()];
    if outputs != wanted {
        return Err(model_err(format!(
            "graph outputs {outputs:?}, manifest says {wanted:?}"
        )));
    }
    let plan = model
        .with_input_fact(0, f32::fact(&info.input_shape).into())
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .map_err(|e| model_err(format!("{e:#}")))?;
    let expected: [(&str, Vec<usize>); 2] = [
        ("global", vec![1, dim]),
        ("tokens", vec![1, info.tokens, dim]),
    ];
    for (slot, (what, want)) in expected.iter().enumerate() {
        let fact = plan
            .model()
            .output_fact(slot)
            .map_err(|e| model_err(format!("{e:#}")))?;
        let shape = fact.shape.as_concrete().map(<[usize]>::to_vec);
        if shape.as_ref() != Some(want) {
            return Err(model_err(format!(
                "{what} output has shape {shape:?}, manifest implies {want:?}"
            )));
        }
    }
    Ok(EncoderPlan {
        plan,
        input_shape: info.input_shape.clone(),
        tokens: info.tokens,
    })
}

fn run_plan(
    enc: &EncoderPlan,
    input: &[f32],
    what: &'static str,
    dim: usize,
) -> Result<Embedding, BundleError> {
    let expected: usize = enc.input_shape.iter().product();
    if input.len() != expected {
        return Err(BundleError::Input {
            what,
            found: input.len(),
            expected,
        });
    }
    let tensor = Tensor::from_shape(&enc.input_shape, input)
        .map_err(|e| BundleError::Run(format!("{e:#}")))?;
    let outputs = enc
        .plan
        .run(tvec!(tensor.into()))
        .map_err(|e| BundleError::Run(format!("{e:#}")))?;
    let to_vec = |t: &TValue, len: usize| -> Result<Vec<f32>, BundleError> {
        let view = t
            .to_plain_array_view::<f32>()
            .map_err(|e| BundleError::Run(format!("{e:#}")))?;
        if view.len() != len {
            return Err(BundleError::Run(format!(
                "output has {} values, expected {len}",
                view.len()
            )));
        }
        Ok(view.iter().copied().collect())
    };
    Ok(Embedding {
        global: to_vec(&outputs[0], dim)?,
        tokens: to_vec(&outputs[1], enc.tokens * dim)?,
    })
}
