//! Reading PyTorch (`torch.save`) and safetensors checkpoints into named f32 tensors, without executing code.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use half::{bf16, f16};

/// Errors raised while reading a checkpoint file.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file could not be opened or read.
    #[error("{path}: cannot read checkpoint: {source}")]
    Io {
        /// The checkpoint file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is neither a `torch.save` archive/pickle nor a safetensors file, or is corrupt.
    #[error("{path}: not a readable PyTorch or safetensors checkpoint: {detail}")]
    Format {
        /// The checkpoint file.
        path: PathBuf,
        /// What the parser reported.
        detail: String,
    },
    /// A tensor has an element type that cannot hold weights.
    #[error("{path}: tensor `{name}` has element type {dtype}; expected f32, f16, bf16 or f64")]
    DType {
        /// The checkpoint file.
        path: PathBuf,
        /// The tensor's key.
        name: String,
        /// The element type found.
        dtype: String,
    },
    /// The file holds no tensors at all.
    #[error("{path}: checkpoint contains no tensors")]
    Empty {
        /// The checkpoint file.
        path: PathBuf,
    },
}

/// A dense row-major f32 tensor read from a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    /// Extents, outermost first.
    pub shape: Vec<usize>,
    /// Elements in row-major order.
    pub data: Vec<f32>,
}

impl RawTensor {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// The on-disk container a checkpoint was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointFormat {
    /// A `torch.save` file (zip archive or legacy pickle).
    Torch,
    /// A safetensors file.
    Safetensors,
}

impl std::fmt::Display for CheckpointFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Torch => "torch.save",
            Self::Safetensors => "safetensors",
        })
    }
}

/// All tensors of a checkpoint, keyed by name with any DataParallel `module.` prefix removed.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The file the tensors came from.
    pub path: PathBuf,
    /// The container format.
    pub format: CheckpointFormat,
    /// Tensors by key.
    pub tensors: BTreeMap<String, RawTensor>,
}

/// Prefix that `torch.nn.DataParallel` adds to every key.
const DATA_PARALLEL_PREFIX: &str = "module.";

impl Checkpoint {
    /// Read every tensor of a `.pth`/`.pt` (torch.save) or `.safetensors` file, converting to f32.
    pub fn load(path: &Path) -> Result<Self, CheckpointError> {
        let io_err = |source| CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut magic = [0u8; 9];
        let read = File::open(path)
            .and_then(|mut f| read_prefix(&mut f, &mut magic))
            .map_err(io_err)?;
        let (format, tensors) = if looks_like_safetensors(&magic[..read]) {
            (CheckpointFormat::Safetensors, read_safetensors(path)?)
        } else {
            (CheckpointFormat::Torch, read_torch(path)?)
        };
        if tensors.is_empty() {
            return Err(CheckpointError::Empty {
                path: path.to_path_buf(),
            });
        }
        let tensors = tensors
            .into_iter()
            .map(|(k, v)| match k.strip_prefix(DATA_PARALLEL_PREFIX) {
                Some(stripped) => (stripped.to_string(), v),
                None => (k, v),
            })
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            format,
            tensors,
        })
    }

    /// Total number of scalar parameters.
    pub fn num_parameters(&self) -> usize {
        self.tensors.values().map(RawTensor::len).sum()
    }
}

fn read_prefix(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = file.read(&mut buf[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

/// A safetensors file starts with a little-endian u64 header length followed by a JSON object.
fn looks_like_safetensors(prefix: &[u8]) -> bool {
    prefix.len() == 9 && prefix[8] == b'{' && {
        let header_len = u64::from_le_bytes(prefix[..8].try_into().unwrap_or_default());
        header_len > 1 && header_len < (1 << 32)
    }
}

fn format_err(path: &Path, detail: impl std::fmt::Display) -> CheckpointError {
    CheckpointError::Format {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    }
}

fn dtype_err(path: &Path, name: &str, dtype: impl std::fmt::Debug) -> CheckpointError {
    CheckpointError::DType {
        path: path.to_path_buf(),
        name: name.to_string(),
        dtype: format!("{dtype:?}"),
    }
}

fn read_torch(path: &Path) -> Result<BTreeMap<String, RawTensor>, CheckpointError> {
    use pytorch_reader::{DType, PytorchReader};
    let reader = PytorchReader::new(path).map_err(|e| format_err(path, e))?;
    let mut out = BTreeMap::new();
    for (name, tensor) in reader.tensors() {
        let bytes = tensor.read().map_err(|e| format_err(path, e))?;
        let data = match tensor.dtype() {
            DType::F32 => decode(&bytes, f32::from_ne_bytes),
            DType::F16 => decode(&bytes, |b| f16::from_ne_bytes(b).to_f32()),
            DType::BF16 => decode(&bytes, |b| bf16::from_ne_bytes(b).to_f32()),
            DType::F64 => decode(&bytes, |b| f64::from_ne_bytes(b) as f32),
            other => return Err(dtype_err(path, name, other)),
        };
        out.insert(
            name.clone(),
            RawTensor {
                shape: tensor.shape().to_vec(),
                data,
            },
        );
    }
    Ok(out)
}

fn read_safetensors(path: &Path) -> Result<BTreeMap<String, RawTensor>, CheckpointError> {
    use safetensors::{Dtype, SafeTensors};
    let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| format_err(path, e))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let raw = view.data();
        let data = match view.dtype() {
            Dtype::F32 => decode(raw, f32::from_le_bytes),
            Dtype::F16 => decode(raw, |b| f16::from_le_bytes(b).to_f32()),
            Dtype::BF16 => decode(raw, |b| bf16::from_le_bytes(b).to_f32()),
            Dtype::F64 => decode(raw, |b| f64::from_le_bytes(b) as f32),
            other => return Err(dtype_err(path, &name, other)),
        };
        out.insert(
            name,
            RawTensor {
                shape: view.shape().to_vec(),
                data,
            },
        );
    }
    Ok(out)
}

fn decode<const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> f32) -> Vec<f32> {
    bytes
        .chunks_exact(N)
        .map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            f(a)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn write_safetensors(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
        let bufs: Vec<Vec<u8>> = tensors
            .iter()
            .map(|(_, _, d)| d.iter().flat_map(|x| x.to_le_bytes()).collect())
            .collect();
        let views: HashMap<String, safetensors::tensor::TensorView<'_>> = tensors
            .iter()
            .zip(&bufs)
            .map(|((n, s, _), b)| {
                (
                    n.to_string(),
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                        .unwrap(),
                )
            })
            .collect();
        safetensors::serialize_to_file(views, None, path).unwrap();
    }

    #[test]
    fn safetensors_roundtrip_strips_module_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        write_safetensors(
            &path,
            &[
                (
                    "module.a.weight",
                    vec![2, 3],
                    (0..6).map(|x| x as f32).collect(),
                ),
                ("b", vec![1], vec![-1.5]),
            ],
        );
        let ck = Checkpoint::load(&path).unwrap();
        assert_eq!(ck.format, CheckpointFormat::Safetensors);
        assert_eq!(ck.tensors["a.weight"].shape, vec![2, 3]);
        assert_eq!(ck.tensors["a.weight"].data[5], 5.0);
        assert_eq!(ck.tensors["b"].data, vec![-1.5]);
        assert_eq!(ck.num_parameters(), 7);
    }

    #[test]
    fn garbage_and_truncated_files_are_format_errors() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.pth");
        std::fs::write(&garbage, b"this is not a checkpoint at all").unwrap();
        let err = Checkpoint::load(&garbage).unwrap_err();
        assert!(matches!(err, CheckpointError::Format { .. }), "{err}");
        assert!(err.to_string().contains("garbage.pth"));

        let good = dir.path().join("w.safetensors");
        write_safetensors(&good, &[("a", vec![4], vec![1.0; 4])]);
        let bytes = std::fs::read(&good).unwrap();
        let cut = dir.path().join("cut.safetensors");
        std::fs::write(&cut, &bytes[..bytes.len() - 5]).unwrap();
        let err = Checkpoint::load(&cut).unwrap_err();
        assert!(matches!(err, CheckpointError::Format { .. }), "{err}");
    }

    #[test]
    fn missing_file_is_io_error() {
        let err = Checkpoint::load(Path::new("/nonexistent/ck.pth")).unwrap_err();
        assert!(matches!(err, CheckpointError::Io { .. }));
        assert!(err.to_string().contains("/nonexistent/ck.pth"));
    }
}
