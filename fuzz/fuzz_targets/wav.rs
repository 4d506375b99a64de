//! WAV files through `read_wav_mono` (the reader every clip's audio goes through).
#![no_main]

use cavsync_core::preprocess::audio::read_wav_mono;
use cavsync_fuzz::scratch_file;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = scratch_file("input.wav", data);
    if let Err(e) = read_wav_mono(&path) {
        assert!(e.to_string().contains("input.wav"), "{e}");
    }
});
