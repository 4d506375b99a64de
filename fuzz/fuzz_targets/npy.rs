//! `.npy` arrays through `npy::read_f32`.
#![no_main]

use cavsync_core::npy::read_f32;
use cavsync_fuzz::scratch_file;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = scratch_file("input.npy", data);
    if let Err(e) = read_f32(&path) {
        assert!(e.to_string().contains("input.npy"), "{e}");
    }
});
