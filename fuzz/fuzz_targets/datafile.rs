//! CAV-MAE datafile JSON through `clip::read_datafile`.
#![no_main]

use cavsync_core::clip::read_datafile;
use cavsync_fuzz::scratch_file;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = scratch_file("datafile.json", data);
    if let Err(e) = read_datafile(&path) {
        assert!(e.to_string().contains("datafile.json"), "{e}");
    }
});
