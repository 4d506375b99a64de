//! Helpers shared by the fuzz targets: a per-process scratch folder in memory for the parsers that read files, and the live PCM harness the regression tests run too.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub mod live_pcm;

/// This process's scratch folder under `/dev/shm` (created on first use, one per fuzzing process).
pub fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = Path::new("/dev/shm");
        let root = if base.is_dir() {
            base.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = root.join(format!("cavsync-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the fuzz scratch folder");
        dir
    })
}

/// Writes `bytes` to the scratch file `name` and returns its path.
pub fn scratch_file(name: &str, bytes: &[u8]) -> PathBuf {
    let path = scratch_dir().join(name);
    std::fs::write(&path, bytes).expect("write the fuzz scratch file");
    path
}

/// The folder holding the repository's files (the parent of this crate).
pub fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}
