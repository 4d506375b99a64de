//! Reading and writing little-endian f32 `.npy` files; writes are atomic (temp file, then rename).

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, ArrayViewD};
use ndarray_npy::{ReadNpyExt, WriteNpyExt};

/// Errors raised while reading or writing `.npy` files.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    /// The file could not be opened, created or renamed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not a float32 little-endian `.npy` array.
    #[error("{path}: not a float32 .npy array: {detail}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What the parser reported.
        detail: String,
    },
}

/// Read an f32 `.npy` file of any rank.
pub fn read_f32(path: &Path) -> Result<ArrayD<f32>, NpyError> {
    let file = File::open(path).map_err(|source| NpyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    ArrayD::<f32>::read_npy(BufReader::new(file)).map_err(|e| NpyError::Format {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

/// Write an f32 array as `.npy`, atomically: nothing half-written is ever left at `path`.
pub fn write_f32(path: &Path, array: ArrayViewD<'_, f32>) -> Result<(), NpyError> {
    crate::atomic::write_atomic(path, |w| {
        array
            .write_npy(w)
            .map_err(|e| std::io::Error::other(e.to_string()))
    })
    .map_err(|source| NpyError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.npy");
        let a = ndarray::Array::from_shape_fn((2, 3, 4), |(i, j, k)| (i * 12 + j * 4 + k) as f32)
            .into_dyn();
        write_f32(&path, a.view()).unwrap();
        assert_eq!(read_f32(&path).unwrap(), a);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        std::fs::write(dir.path().join("bad.npy"), b"nope").unwrap();
        let err = read_f32(&dir.path().join("bad.npy")).unwrap_err();
        assert!(err.to_string().contains("bad.npy"), "{err}");
        let err = write_f32(&dir.path().join("no/such/dir.npy"), a.view()).unwrap_err();
        assert!(matches!(err, NpyError::Io { .. }));
    }
}
