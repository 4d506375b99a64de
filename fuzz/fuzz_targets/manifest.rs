//! Bundle manifest (TOML): format-version pre-parse, schema and the check against the official preprocessing.
#![no_main]

use cavsync_core::manifest::{MANIFEST_FILE, Manifest};
use cavsync_fuzz::scratch_file;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = scratch_file(MANIFEST_FILE, data);
    let dir = path.parent().expect("scratch file has a folder");
    if let Err(e) = Manifest::read(dir) {
        assert!(e.to_string().contains(MANIFEST_FILE), "{e}");
    }
});
