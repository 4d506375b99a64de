//! Raw PCM from a live source through the live audio path: decode (ffmpeg `f32le` or ALSA interleaved i16), bound the samples, stream-resample to 16 kHz.
//!
//! Byte 0 picks the stream (bit 0: i16 instead of f32le; bits 1-3: channels - 1 for i16),
//! byte 1 the native rate (one of the common rates, or with 255 an arbitrary rate from
//! bytes 2-4), byte 5 the read size; the rest is the byte stream.
#![no_main]

use cavsync_core::preprocess::audio::{SAMPLE_RATE, StreamResampler};
use cavsync_live::audio::{bound_samples, f32le_to_mono, i16_to_mono};
use libfuzzer_sys::fuzz_target;

const RATES: [u32; 10] = [
    8_000, 11_025, 16_000, 22_050, 32_000, 44_100, 48_000, 88_200, 96_000, 192_000,
];

fuzz_target!(|data: &[u8]| {
    let Some((head, stream)) = data.split_first_chunk::<6>() else {
        return;
    };
    let is_i16 = head[0] & 1 == 1;
    let channels = usize::from((head[0] >> 1) & 7) + 1;
    let rate = match head[1] {
        255 => u32::from_le_bytes([head[2], head[3], head[4], 0]),
        i => RATES[usize::from(i) % RATES.len()],
    };
    let read = usize::from(head[5]).max(1) * 4;
    let Ok(mut resampler) = StreamResampler::new(rate, SAMPLE_RATE) else {
        return;
    };
    let mut mono = vec![0.0f32; 8192];
    for piece in stream.chunks(read) {
        let n = if is_i16 {
            let samples: Vec<i16> = piece
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
                .collect();
            i16_to_mono(&samples, channels, &mut mono)
        } else {
            f32le_to_mono(piece, &mut mono)
        };
        bound_samples(&mut mono[..n]);
        resampler
            .push(&mono[..n], |block| {
                assert!(block.iter().all(|s| s.is_finite()), "non-finite output");
            })
            .expect("resampling finite samples succeeds");
    }
});
