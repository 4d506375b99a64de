//! Checkpoints (`.pth` zip, legacy `.pth` pickle, `.safetensors`) through `Checkpoint::load`.
#![no_main]

use cavsync_formats::checkpoint::Checkpoint;
use cavsync_fuzz::scratch_file;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = scratch_file("checkpoint.pth", data);
    if let Err(e) = Checkpoint::load(&path) {
        assert!(e.to_string().contains("checkpoint.pth"), "{e}");
    }
});
