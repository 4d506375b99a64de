//! The model bundle's manifest: its schema, the format-version pre-parse, the check against the
//! official preprocessing, and the file hashes.
//!
//! Kept deliberately strict, and the single source of truth the runtime reads: the version is
//! read on its own first (so an old or new bundle gets a version error, not a field error),
//! every table denies unknown fields, the preprocessing constants must equal the ones this
//! code implements (a bundle cannot silently ask for another fbank or resize), and every
//! model file is checked against its sha256 before it is loaded.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::localize::ActivityHead;
use crate::model::{Layout, Modality, Precision};
use crate::preprocess::{audio, fbank, image, segment};

/// Bundle format this runtime reads and `cavsync-export` writes.
pub const FORMAT_VERSION: u32 = 1;
/// File name of the manifest inside a bundle directory.
pub const MANIFEST_FILE: &str = "manifest.toml";

/// Errors raised while reading or verifying a manifest and the files it names.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
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
    /// The manifest could not be written.
    #[error("{path}: cannot write: {source}")]
    Write {
        /// The manifest file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The manifest could not be serialised to TOML.
    #[error("{path}: cannot serialise the manifest: {message}")]
    Serialise {
        /// The manifest file.
        path: PathBuf,
        /// What the serialiser reported.
        message: String,
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
    /// How an int8 bundle was quantized (int8 bundles only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<QuantizationInfo>,
}

/// How an int8 bundle's graphs were quantized from an f32 bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantizationInfo {
    /// `dynamic`: weights quantized once, activations at run time; `static`: activations with calibrated constant ranges.
    pub scheme: String,
    /// How weights are stored.
    pub weights: String,
    /// How activations are quantized.
    pub activations: String,
    /// MatMuls that run as integer matmuls, both graphs together.
    pub quantized_matmuls: usize,
    /// Weights left in f32, by name.
    pub kept_float: Vec<String>,
    /// sha256 of the f32 bundle's manifest the graphs were quantized from.
    pub source_manifest_sha256: String,
    /// The calibration set and method of the static scheme.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<CalibrationRecord>,
    /// Each weight's effect alone, when measured (`quantize --sensitivity`), most harmful first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sensitivity: Vec<LayerSensitivity>,
}

/// What quantizing one weight alone does to its encoder's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerSensitivity {
    /// The encoder it belongs to: `audio` or `visual` (the joint block's weights appear in both).
    pub encoder: String,
    /// The weight, as `quantize` prints it (`--keep-float` by this name keeps it in both encoders).
    pub name: String,
    /// Mean cosine of the encoder's global token with the f32 one when only this weight is int8.
    pub global_cosine: f64,
    /// Whether it was kept in f32 for this (`--keep-below`).
    pub kept_float: bool,
}

/// The clips a static int8 bundle's activation ranges were calibrated on, and how.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrationRecord {
    /// The datafile the clips came from, as given.
    pub datafile: String,
    /// sha256 of that datafile.
    pub datafile_sha256: String,
    /// Clips used.
    pub clips: usize,
    /// Frames used (each gives one audio segment and one image).
    pub frames: usize,
    /// How ranges were chosen from the observed values: `minmax`, `percentile:P` or `entropy`.
    pub method: String,
}

/// Model family and dimensions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    /// `sync` (global tokens) or `plain` (original CAV-MAE: global = mean of final tokens).
    pub layout: Layout,
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
    /// Numeric precision of the graphs.
    pub precision: Precision,
    /// Batch size the graphs take (items are encoded one at a time).
    pub batch: usize,
    /// Encoder parameters (both modalities, no decoder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<usize>,
    /// GFLOP of one frame pair (one audio segment and one image) as the runtime runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gflops_per_pair: Option<f64>,
    /// Where this precision is the right choice and how each device computes it ([`Precision::guidance`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision_guidance: Option<String>,
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
    /// Raw cosine (audio global vs best visual patch) at or above which a frame is `active` when there is no `activity` head.
    pub active_threshold: f32,
    /// How the threshold (and the head) were obtained.
    pub calibration: String,
    /// Calibrated activity rule over score, contrast and audio level (`cavsync calibrate`); replaces the threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity: Option<ActivityHead>,
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
    /// The constants this runtime implements, for a model of `size` x `size` inputs (224 in the published models).
    pub fn official(size: usize) -> Self {
        Self {
            size,
            resize: "pil-bicubic-shorter-side".into(),
            crop: "center".into(),
            mean: image::MEAN,
            std: image::STD,
        }
    }
}

/// Hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String, ManifestError> {
    let bytes = std::fs::read(path).map_err(|source| ManifestError::Io {
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
    /// Writes the manifest as `dir`'s `manifest.toml`, atomically (a reader sees the old file or the new one); returns its path.
    pub fn write(&self, dir: &Path) -> Result<PathBuf, ManifestError> {
        let path = dir.join(MANIFEST_FILE);
        let text = toml::to_string_pretty(self).map_err(|e| ManifestError::Serialise {
            path: path.clone(),
            message: e.to_string(),
        })?;
        crate::atomic::write_atomic(&path, |w| w.write_all(text.as_bytes())).map_err(|source| {
            ManifestError::Write {
                path: path.clone(),
                source,
            }
        })?;
        Ok(path)
    }

    /// Read and parse a bundle's manifest, checking the format version first.
    pub fn read(dir: &Path) -> Result<Self, ManifestError> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| ManifestError::Io {
            path: path.clone(),
            source,
        })?;
        #[derive(Deserialize)]
        struct VersionOnly {
            format_version: Option<u32>,
        }
        let version: VersionOnly = toml::from_str(&text).map_err(|e| ManifestError::Manifest {
            path: path.clone(),
            message: e.to_string(),
        })?;
        match version.format_version {
            Some(FORMAT_VERSION) => {}
            Some(found) => return Err(ManifestError::Version { path, found }),
            None => {
                return Err(ManifestError::Manifest {
                    path,
                    message: "missing field `format_version`".into(),
                });
            }
        }
        let manifest: Self = toml::from_str(&text).map_err(|e| ManifestError::Manifest {
            path: path.clone(),
            message: e.to_string(),
        })?;
        manifest.check_supported(&path)?;
        Ok(manifest)
    }

    /// Check that the manifest's preprocessing and shapes are ones this runtime implements.
    fn check_supported(&self, path: &Path) -> Result<(), ManifestError> {
        let field = |field: &str, problem: String| ManifestError::Field {
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
        let size = self.image_preprocessing.size;
        let ours = ImagePreprocessing::official(size);
        if self.image_preprocessing != ours {
            return Err(field(
                "image_preprocessing",
                format!("this runtime implements {ours:?}"),
            ));
        }
        let side = size / self.model.patch.max(1);
        if size == 0 || side * self.model.patch != size || self.visual.grid != [side, side] {
            return Err(field(
                "image_preprocessing.size",
                format!(
                    "{size} with patch {} and visual grid {:?}; expected a positive multiple of the patch whose grid the visual graph gives",
                    self.model.patch, self.visual.grid
                ),
            ));
        }
        match (self.model.precision, &self.quantization) {
            (Precision::Int8, None) => {
                return Err(field(
                    "quantization",
                    "missing (an int8 bundle says how it was quantized; write it with cavsync-export quantize)".into(),
                ));
            }
            (Precision::F32 | Precision::F16, Some(_)) => {
                return Err(field(
                    "quantization",
                    format!(
                        "present in a {} bundle (expected only in int8 bundles)",
                        self.model.precision
                    ),
                ));
            }
            _ => {}
        }
        if let Some(v) = self.localization.activity.and_then(|h| h.non_finite()) {
            return Err(field(
                "localization.activity",
                format!("{v} (expected finite weights and bias)"),
            ));
        }
        if self.audio_preprocessing.total_frames == 0 {
            return Err(field(
                "audio_preprocessing.total_frames",
                "must be at least 1".into(),
            ));
        }
        let l = self.audio_preprocessing.target_length;
        let clip = self.audio_preprocessing.clip_frames;
        if l == 0 || l > clip {
            return Err(field(
                "audio_preprocessing.target_length",
                format!("{l}; expected 1 to clip_frames ({clip}) fbank rows"),
            ));
        }
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
            if enc.grid[0].checked_mul(enc.grid[1]) != Some(enc.tokens) {
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
        Ok(())
    }

    /// The entry of one encoder.
    pub fn encoder(&self, modality: Modality) -> &EncoderInfo {
        match modality {
            Modality::Audio => &self.audio,
            Modality::Visual => &self.visual,
        }
    }
}

impl EncoderInfo {
    /// The graph file's bytes, read once, after checking them against the manifest's sha256.
    pub fn read_verified(&self, dir: &Path) -> Result<(PathBuf, Vec<u8>), ManifestError> {
        let path = dir.join(&self.file);
        let bytes = std::fs::read(&path).map_err(|source| ManifestError::Io {
            path: path.clone(),
            source,
        })?;
        let found = sha256_hex(&bytes);
        if found != self.sha256 {
            return Err(ManifestError::Hash {
                path,
                expected: self.sha256.clone(),
                found,
            });
        }
        Ok((path, bytes))
    }

    /// The model file inside bundle `dir`, after checking its sha256 against the manifest's.
    pub fn verified_path(&self, dir: &Path) -> Result<PathBuf, ManifestError> {
        self.read_verified(dir).map(|(path, _)| path)
    }
}
