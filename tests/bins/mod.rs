//! The workspace's command-line tools as the root package's tests find them.

use std::path::PathBuf;

/// A tool binary of the workspace, beside the running test executable (`target/<profile>/deps/..`): `CARGO_BIN_EXE_*` only names binaries of a test's own package.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        bin.is_file(),
        "{} not built: run `cargo test --workspace` (or `cargo build -p cavsync -p cavsync-export` first)",
        bin.display()
    );
    bin
}
