//! JPEG and PNG frames through `load_rgb` and the model's resize and crop.
#![no_main]

use cavsync_core::preprocess::image::{load_rgb, preprocess_rgb};
use cavsync_fuzz::scratch_file;
use libfuzzer_sys::fuzz_target;

// The library turns panics inside third-party decoders into errors (`decode_guarded`); libfuzzer-sys's
// hook would abort on those caught panics too, so the default hook is put back. A panic that
// escapes the target still aborts the process (it cannot unwind out of the `extern "C"` entry).
fuzz_target!(init: drop(std::panic::take_hook()), |data: &[u8]| {
    let path = scratch_file("frame.jpg", data);
    match load_rgb(&path) {
        Ok(img) => {
            preprocess_rgb(&img);
        }
        Err(e) => assert!(e.to_string().contains("frame.jpg"), "{e}"),
    }
});
