//! Camera YUYV buffers through `pixel::yuyv_to_rgb`: the first four bytes pick width and height, the rest is the buffer.
#![no_main]

use cavsync_live::pixel::yuyv_to_rgb;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((dims, src)) = data.split_first_chunk::<4>() else {
        return;
    };
    let width = usize::from(u16::from_le_bytes([dims[0], dims[1]]));
    let height = usize::from(u16::from_le_bytes([dims[2], dims[3]]));
    let mut dst = vec![0u8; (src.len() / 2 * 3).min(1 << 20)];
    let _ = yuyv_to_rgb(src, width, height, &mut dst);
});
