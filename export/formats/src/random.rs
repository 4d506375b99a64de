//! Random-weight checkpoints with the official key names, for benchmarks and as a training start.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::checkpoint::RawTensor;
use crate::layout::ModelConfig;

/// Errors raised while writing a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The file could not be written.
    #[error("{path}: cannot write checkpoint: {message}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
}

/// Tensors for every key of `config` with ViT-style initialisation: LayerNorms at (1, 0), biases 0,
/// weights and tokens uniform with std 0.02 (seeded, so the same seed gives the same weights).
pub fn random_tensors(config: &ModelConfig, seed: u64) -> BTreeMap<String, RawTensor> {
    let mut rng = StdRng::seed_from_u64(seed);
    let limit = 0.02 * 3f32.sqrt();
    config
        .expected_shapes()
        .into_iter()
        .map(|(key, shape)| {
            let n: usize = shape.iter().product();
            let is_norm = key.contains("norm");
            let data = if is_norm && key.ends_with(".weight") {
                vec![1.0; n]
            } else if key.ends_with(".bias") {
                vec![0.0; n]
            } else {
                (0..n).map(|_| rng.random_range(-limit..limit)).collect()
            };
            (key, RawTensor { shape, data })
        })
        .collect()
}

/// Write tensors as a little-endian f32 safetensors file (atomically: temp file, then rename).
pub fn write_safetensors(
    tensors: &BTreeMap<String, RawTensor>,
    path: &Path,
) -> Result<(), WriteError> {
    let err = |message: String| WriteError::Write {
        path: path.to_path_buf(),
        message,
    };
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(k, t)| {
            let b = t.data.iter().flat_map(|x| x.to_le_bytes()).collect();
            (k.clone(), b, t.shape.clone())
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(k, b, s)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .map(|v| (k.clone(), v))
                .map_err(|e| err(e.to_string()))
        })
        .collect::<Result<HashMap<_, _>, _>>()?;
    let bytes = safetensors::serialize(views, None).map_err(|e| err(e.to_string()))?;
    cavsync_core::atomic::write_atomic(path, |w| w.write_all(&bytes))
        .map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::Checkpoint;
    use crate::layout::DecoderConfig;

    #[test]
    fn random_checkpoint_round_trips_through_detection() {
        let config = ModelConfig {
            heads: 2,
            depth_u: 1,
            image_size: 64,
            decoder: Some(DecoderConfig::new(32, 1)),
            ..ModelConfig::sync(32, 2, 2, 64)
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.safetensors");
        let tensors = random_tensors(&config, 3);
        write_safetensors(&tensors, &path).unwrap();
        let ck = Checkpoint::load(&path).unwrap();
        assert_eq!(ModelConfig::detect(&ck, Some(2)).unwrap(), config);
        assert_eq!(ck.tensors, tensors);
        assert_eq!(random_tensors(&config, 3), tensors);
        assert_ne!(random_tensors(&config, 4), tensors);
    }
}
