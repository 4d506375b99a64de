//! Board profile files (TOML) through `BoardProfile::from_file` (parse and validation).
#![no_main]

use cavsync_firmware_config::BoardProfile;
use cavsync_fuzz::scratch_file;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = scratch_file("board.toml", data);
    if let Err(e) = BoardProfile::from_file(&path) {
        assert!(e.to_string().contains("board.toml"), "{e}");
    }
});
