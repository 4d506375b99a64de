//! Raw PCM from a live source through the live audio path: decode (ffmpeg `f32le` or ALSA interleaved i16), bound the samples, stream-resample to 16 kHz.
//!
//! Byte 0 picks the stream (bit 0: i16 instead of f32le; bits 1-3: channels - 1 for i16),
//! byte 1 the native rate (one of the common rates, or with 255 an arbitrary rate from
//! bytes 2-4), byte 5 the read size; the rest is the byte stream. The `live_pcm` fuzz target
//! and `tests/fuzz_regressions.rs` both run [`run`].

use cavsync_core::preprocess::audio::{SAMPLE_RATE, StreamResampler};
use cavsync_live::audio::{bound_samples, f32le_to_mono, i16_to_mono};

const RATES: [u32; 10] = [
    8_000, 11_025, 16_000, 22_050, 32_000, 44_100, 48_000, 88_200, 96_000, 192_000,
];

/// Runs one input through the live audio path: an error when its header is short or the
/// resampler refuses its rate; panics when finite samples resample to non-finite ones.
pub fn run(data: &[u8]) -> Result<(), String> {
    let Some((head, stream)) = data.split_first_chunk::<6>() else {
        return Err("shorter than the 6-byte stream header".to_owned());
    };
    let is_i16 = head[0] & 1 == 1;
    let channels = usize::from((head[0] >> 1) & 7) + 1;
    let rate = match head[1] {
        255 => u32::from_le_bytes([head[2], head[3], head[4], 0]),
        i => RATES[usize::from(i) % RATES.len()],
    };
    let read = usize::from(head[5]).max(1) * 4;
    let mut resampler = StreamResampler::new(rate, SAMPLE_RATE).map_err(|e| e.to_string())?;
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
        let mut finite = true;
        resampler
            .push(&mono[..n], |block| {
                finite &= block.iter().all(|s| s.is_finite());
            })
            .expect("resampling finite samples succeeds");
        assert!(finite, "non-finite output from finite input");
    }
    Ok(())
}
