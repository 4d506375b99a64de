//! Reading and writing little-endian f32 `.npy` files; writes are atomic (temp file, then rename).

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, ArrayViewD};
use ndarray_npy::npy::header::Header;
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
    /// The header claims more float32 elements than the file holds.
    #[error(
        "{path}: header claims shape {shape:?} but only {data_bytes} bytes of data follow it (expected 4 bytes per float32 element: a truncated or corrupt .npy file)"
    )]
    Size {
        /// The file.
        path: PathBuf,
        /// The shape the header claims.
        shape: Vec<u64>,
        /// Bytes after the header.
        data_bytes: u64,
    },
}

/// Deepest bracket nesting accepted in a header: a float32 header has 2 (the dict and the shape tuple); deeper nesting sends the header's Python-literal parser into exponential backtracking.
const MAX_HEADER_NESTING: usize = 4;

/// Read an f32 `.npy` file of any rank; a header claiming more data than the file holds, or nesting brackets deeper than any float32 header, is refused before it is parsed or anything is allocated.
pub fn read_f32(path: &Path) -> Result<ArrayD<f32>, NpyError> {
    let io = |source| NpyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let format = |detail: String| NpyError::Format {
        path: path.to_path_buf(),
        detail,
    };
    let mut file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let (prefix, offset) = header_prefix(&mut file).map_err(io)?;
    let nesting = max_nesting(&prefix);
    if nesting > MAX_HEADER_NESTING {
        return Err(format(format!(
            "header nests brackets {nesting} deep; expected a float32 header such as {{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }}"
        )));
    }
    let header = Header::from_reader(&mut prefix.as_slice()).map_err(|e| format(e.to_string()))?;
    let data_bytes = len.saturating_sub(offset);
    let shape: Vec<u64> = header.shape.iter().map(|&d| d as u64).collect();
    let claimed = shape.iter().try_fold(4u64, |acc, &d| acc.checked_mul(d));
    if claimed.is_none_or(|bytes| bytes > data_bytes) {
        return Err(NpyError::Size {
            path: path.to_path_buf(),
            shape,
            data_bytes,
        });
    }
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    ArrayD::<f32>::read_npy(BufReader::new(file)).map_err(|e| format(e.to_string()))
}

/// The file's magic string, version, length field and header text (less where the file is shorter), and the offset where the data starts.
fn header_prefix(file: &mut File) -> std::io::Result<(Vec<u8>, u64)> {
    let mut prefix = Vec::new();
    file.by_ref().take(12).read_to_end(&mut prefix)?;
    let (start, header_len) = match (prefix.get(6), prefix.get(8..12)) {
        (Some(1), Some(b)) => (10, u64::from(u16::from_le_bytes([b[0], b[1]]))),
        (Some(2 | 3), Some(b)) => (12, u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        _ => return Ok((prefix, 0)),
    };
    let read = prefix.len() as u64 - start;
    file.by_ref()
        .take(header_len.saturating_sub(read))
        .read_to_end(&mut prefix)?;
    Ok((prefix, start + header_len))
}

/// The deepest nesting of `(`, `[` and `{` in `bytes`.
fn max_nesting(bytes: &[u8]) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    for &b in bytes {
        match b {
            b'(' | b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
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
        let mut cut = std::fs::read(&path).unwrap();
        cut.truncate(cut.len() - 4);
        std::fs::write(dir.path().join("cut.npy"), cut).unwrap();
        let err = read_f32(&dir.path().join("cut.npy")).unwrap_err();
        assert!(
            matches!(&err, NpyError::Size { shape, data_bytes: 92, .. } if shape == &[2, 3, 4]),
            "{err}"
        );
        let err = write_f32(&dir.path().join("no/such/dir.npy"), a.view()).unwrap_err();
        assert!(matches!(err, NpyError::Io { .. }));
    }
}
