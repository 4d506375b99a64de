//! Writing a model bundle: both encoder graphs as ONNX plus the manifest the runtime reads.

use std::path::{Path, PathBuf};

use cavsync::bundle::{
    AudioPreprocessing, EncoderInfo, FORMAT_VERSION, ImagePreprocessing, LocalizationInfo,
    MANIFEST_FILE, Manifest, ModelInfo, Provenance, sha256_file, sha256_hex,
};

use crate::checkpoint::Checkpoint;
use crate::layout::{Layout, ModelConfig};
use crate::onnx::{self, Modality, Precision};

/// Errors raised while writing a bundle.
#[derive(Debug, thiserror::Error)]
pub enum BundleWriteError {
    /// A file or directory could not be written.
    #[error("{path}: cannot write: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A graph could not be built.
    #[error(transparent)]
    Onnx(#[from] onnx::OnnxError),
    /// The manifest could not be serialised.
    #[error("cannot serialise manifest: {0}")]
    Manifest(#[from] toml::ser::Error),
    /// Hashing the source checkpoint failed.
    #[error(transparent)]
    Hash(#[from] cavsync::bundle::BundleError),
}

/// What `convert` needs beyond the checkpoint.
#[derive(Debug, Clone)]
pub struct BundleOptions {
    /// Numeric precision of the graphs.
    pub precision: Precision,
    /// Video frames per clip T.
    pub total_frames: usize,
    /// Raw-cosine threshold above which a frame counts as sounding.
    pub active_threshold: f32,
    /// How `active_threshold` was obtained.
    pub calibration: String,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BundleWriteError + '_ {
    move |source| BundleWriteError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Write `audio.onnx`, `visual.onnx` and `manifest.toml` for a verified checkpoint into `out`.
///
/// Everything is written into a sibling temporary directory first and renamed into place, so
/// `out` never holds a half-written bundle.
pub fn write_bundle(
    ck: &Checkpoint,
    config: &ModelConfig,
    options: &BundleOptions,
    out: &Path,
) -> Result<Manifest, BundleWriteError> {
    let mut tmp_name = out.as_os_str().to_owned();
    tmp_name.push(format!(".partial-{}", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    let result = write_into(ck, config, options, &tmp).and_then(|manifest| {
        if out.exists() {
            std::fs::remove_dir_all(out).map_err(io_err(out))?;
        }
        std::fs::rename(&tmp, out).map_err(io_err(out))?;
        Ok(manifest)
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// Write one encoder graph and describe it for the manifest.
fn write_encoder(
    ck: &Checkpoint,
    config: &ModelConfig,
    precision: Precision,
    dir: &Path,
    modality: Modality,
) -> Result<EncoderInfo, BundleWriteError> {
    let (file, input, grid) = match modality {
        Modality::Audio => (
            "audio.onnx",
            onnx::AUDIO_INPUT,
            [config.audio_rows(), config.audio_cols()],
        ),
        Modality::Visual => (
            "visual.onnx",
            onnx::VISUAL_INPUT,
            [config.visual_grid(), config.visual_grid()],
        ),
    };
    let bytes = onnx::to_bytes(&onnx::encoder_model(ck, config, modality, precision)?);
    let path = dir.join(file);
    std::fs::write(&path, &bytes).map_err(io_err(&path))?;
    Ok(EncoderInfo {
        file: file.into(),
        sha256: sha256_hex(&bytes),
        input: input.into(),
        input_shape: onnx::input_shape(config, modality),
        global_output: onnx::GLOBAL_OUTPUT.into(),
        tokens_output: onnx::TOKENS_OUTPUT.into(),
        tokens: onnx::token_count(config, modality),
        grid,
    })
}

fn write_into(
    ck: &Checkpoint,
    config: &ModelConfig,
    options: &BundleOptions,
    dir: &Path,
) -> Result<Manifest, BundleWriteError> {
    let audio = write_encoder(ck, config, options.precision, dir, Modality::Audio)?;
    let visual = write_encoder(ck, config, options.precision, dir, Modality::Visual)?;
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        model: ModelInfo {
            layout: match config.layout {
                Layout::Sync => "sync".into(),
                Layout::Plain => "plain".into(),
            },
            dim: config.dim,
            heads: config.heads,
            depth_audio: config.depth_a,
            depth_visual: config.depth_v,
            depth_joint: config.depth_u,
            registers: config.registers,
            contrastive_depth: config.contrastive_depth,
            patch: config.patch,
            precision: match options.precision {
                Precision::F32 => "f32".into(),
                Precision::F16 => "f16".into(),
            },
            batch: 1,
        },
        audio,
        visual,
        audio_preprocessing: AudioPreprocessing::official(
            config.audio_length,
            options.total_frames,
        ),
        image_preprocessing: ImagePreprocessing::official(),
        localization: LocalizationInfo {
            active_threshold: options.active_threshold,
            calibration: options.calibration.clone(),
        },
        provenance: Provenance {
            checkpoint: ck
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            checkpoint_sha256: sha256_file(&ck.path)?,
            tool: format!("cavsync-export {}", env!("CARGO_PKG_VERSION")),
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        },
    };
    let text = toml::to_string_pretty(&manifest)?;
    let path = dir.join(MANIFEST_FILE);
    std::fs::write(&path, text).map_err(io_err(&path))?;
    Ok(manifest)
}
