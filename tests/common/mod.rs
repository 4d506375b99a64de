//! Fixture helpers shared by the top-level tests.

use std::path::{Path, PathBuf};

/// Folder of one official-code fixture.
pub fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/official")
        .join(name)
}

/// The fixture's checkpoint: `checkpoint.pth` or `checkpoint.safetensors`.
pub fn checkpoint(dir: &Path) -> PathBuf {
    ["checkpoint.pth", "checkpoint.safetensors"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.exists())
        .unwrap()
}

/// Attention heads the fixture was made with (from its meta.json).
pub fn heads(dir: &Path) -> usize {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
    meta["kwargs"]["num_heads"].as_u64().unwrap() as usize
}
