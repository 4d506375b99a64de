//! Writing a model bundle: both encoder graphs as ONNX plus the manifest the runtime reads.

use std::path::{Path, PathBuf};

use cavsync_core::manifest::{
    AudioPreprocessing, EncoderInfo, FORMAT_VERSION, ImagePreprocessing, LocalizationInfo,
    Manifest, ManifestError, ModelInfo, Provenance, sha256_file, sha256_hex,
};
use cavsync_core::model::{Modality, Precision};

use crate::checkpoint::Checkpoint;
use crate::layout::ModelConfig;
use crate::onnx;

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
    /// Hashing the source checkpoint or writing the manifest failed.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

/// What `convert` needs beyond the checkpoint.
#[derive(Debug, Clone)]
pub struct BundleOptions {
    /// Numeric precision of the graphs: f32 or f16 (int8 comes from `quantize` and is refused).
    pub precision: Precision,
    /// Video frames per clip T.
    pub total_frames: usize,
    /// When a frame counts as sounding (threshold or calibrated head) and how that was obtained.
    pub localization: LocalizationInfo,
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
/// `out` never holds a half-written bundle. A precision the ONNX writer cannot write (int8)
/// is refused before anything is written.
pub fn write_bundle(
    ck: &Checkpoint,
    config: &ModelConfig,
    options: &BundleOptions,
    out: &Path,
) -> Result<Manifest, BundleWriteError> {
    onnx::check_precision(options.precision)?;
    write_dir_atomically(
        out,
        |path, source| BundleWriteError::Io { path, source },
        |tmp| write_into(ck, config, options, tmp),
    )
}

/// Runs `write` on a fresh sibling temporary directory of `out`, then puts it in place of `out`; on any error the temporary directory is removed and `out` is left as it was. `io` turns a failure to create, remove or rename a directory into the caller's error.
pub(crate) fn write_dir_atomically<T, E>(
    out: &Path,
    io: impl Fn(PathBuf, std::io::Error) -> E,
    write: impl FnOnce(&Path) -> Result<T, E>,
) -> Result<T, E> {
    cavsync_core::atomic::sweep_stale(out);
    let mut tmp_name = out.as_os_str().to_owned();
    tmp_name.push(format!(".partial-{}", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| io(tmp.clone(), e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| io(tmp.clone(), e))?;
    let result = write(&tmp).and_then(|value| {
        // The old directory is moved aside before the new one takes its name, and only then
        // removed: a kill at any moment leaves `out` complete (old or new) or absent.
        if out.exists() {
            let mut old_name = out.as_os_str().to_owned();
            old_name.push(format!(".old-{}", std::process::id()));
            let old = PathBuf::from(old_name);
            std::fs::rename(out, &old).map_err(|e| io(out.to_path_buf(), e))?;
            std::fs::rename(&tmp, out).map_err(|e| io(out.to_path_buf(), e))?;
            std::fs::remove_dir_all(&old).map_err(|e| io(old, e))?;
        } else {
            std::fs::rename(&tmp, out).map_err(|e| io(out.to_path_buf(), e))?;
        }
        Ok(value)
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

/// Write both graphs and the manifest into `dir`.
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
            layout: config.layout,
            dim: config.dim,
            heads: config.heads,
            depth_audio: config.depth_a,
            depth_visual: config.depth_v,
            depth_joint: config.depth_u,
            registers: config.registers,
            contrastive_depth: config.contrastive_depth,
            patch: config.patch,
            precision: options.precision,
            batch: 1,
            parameters: Some(config.encoder_parameters()),
            gflops_per_pair: Some(config.pair_gflops()),
            precision_guidance: Some(options.precision.guidance().into()),
        },
        audio,
        visual,
        audio_preprocessing: AudioPreprocessing::official(
            config.audio_length,
            options.total_frames,
        ),
        image_preprocessing: ImagePreprocessing::official(config.image_size),
        localization: options.localization.clone(),
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
        quantization: None,
    };
    manifest.write(dir)?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::{random_tensors, write_safetensors};
    use cavsync_core::model::Layout;

    /// A tiny random checkpoint on disk and its detected config.
    fn tiny(dir: &Path) -> (Checkpoint, ModelConfig) {
        let config = ModelConfig {
            depth_u: 1,
            ..ModelConfig::sync(16, 1, 1, 32)
        };
        let path = dir.join("tiny.safetensors");
        write_safetensors(&random_tensors(&config, 1), &path).unwrap();
        let ck = Checkpoint::load(&path).unwrap();
        let detected = ModelConfig::detect(&ck, None).unwrap();
        assert_eq!(detected, config);
        (ck, detected)
    }

    fn options(precision: Precision) -> BundleOptions {
        BundleOptions {
            precision,
            total_frames: 4,
            localization: LocalizationInfo {
                active_threshold: 0.25,
                calibration: "test".into(),
                activity: None,
            },
        }
    }

    #[test]
    fn manifest_carries_the_typed_layout_and_precision() {
        let dir = tempfile::tempdir().unwrap();
        let (ck, config) = tiny(dir.path());
        let out = dir.path().join("bundle");
        let written = write_bundle(&ck, &config, &options(Precision::F16), &out).unwrap();
        assert_eq!(written.model.layout, Layout::Sync);
        assert_eq!(written.model.precision, Precision::F16);
        let text =
            std::fs::read_to_string(out.join(cavsync_core::manifest::MANIFEST_FILE)).unwrap();
        assert!(text.contains("layout = \"sync\""), "{text}");
        assert!(text.contains("precision = \"f16\""), "{text}");
        assert_eq!(Manifest::read(&out).unwrap(), written);
    }

    #[test]
    fn int8_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let (ck, config) = tiny(dir.path());
        let out = dir.path().join("bundle");
        let err = write_bundle(&ck, &config, &options(Precision::Int8), &out).unwrap_err();
        assert!(
            matches!(
                err,
                BundleWriteError::Onnx(onnx::OnnxError::Precision(Precision::Int8))
            ),
            "{err}"
        );
        assert!(err.to_string().contains("quantize"), "{err}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "only the checkpoint is there: {left:?}");
    }
}
