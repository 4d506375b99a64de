//! Raw PCM from a live source through the live audio path (the harness and its input layout: `cavsync_fuzz::live_pcm`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = cavsync_fuzz::live_pcm::run(data);
});
