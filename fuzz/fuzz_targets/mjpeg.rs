//! Camera MJPEG buffers through `pixel::mjpeg_to_rgb`: the first four bytes pick the negotiated size, the rest is the frame.
#![no_main]

use cavsync_live::pixel::mjpeg_to_rgb;
use libfuzzer_sys::fuzz_target;

// The library turns panics inside third-party decoders into errors (`decode_guarded`); libfuzzer-sys's
// hook would abort on those caught panics too, so the default hook is put back. A panic that
// escapes the target still aborts the process (it cannot unwind out of the `extern "C"` entry).
fuzz_target!(init: drop(std::panic::take_hook()), |data: &[u8]| {
    let Some((dims, src)) = data.split_first_chunk::<4>() else {
        return;
    };
    let width = usize::from(u16::from_le_bytes([dims[0], dims[1]]));
    let height = usize::from(u16::from_le_bytes([dims[2], dims[3]]));
    let mut dst = vec![0u8; (width * height * 3).min(1 << 22)];
    let _ = mjpeg_to_rgb(src, width, height, &mut dst);
});
