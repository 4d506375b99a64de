//! Ground-truth annotations JSON through `Annotations::read` (parse and validation).
#![no_main]

use cavsync_core::annotations::Annotations;
use cavsync_fuzz::scratch_file;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = scratch_file("annotations.json", data);
    if let Err(e) = Annotations::read(&path) {
        assert!(e.to_string().contains("annotations.json"), "{e}");
    }
});
