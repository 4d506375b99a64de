//! Run configs: TOML overrides laid over a bundled board profile (`cavsync run --config`), then validated.
#![no_main]

use cavsync_firmware_config::BoardProfile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for board in ["pi4", "x86-dev"] {
        let base = BoardProfile::bundled(board).expect("bundled profile is valid");
        if let Err(e) = base.with_overrides(text, "run.toml") {
            assert!(e.to_string().contains("run.toml"), "{e}");
        }
    }
});
