//! Audio-visual similarity of every frame-aligned audio segment of a clip against one image.
//!
//! `cargo run --release --example frame_similarity -- CHECKPOINT HEADS WAV IMAGE [FRAMES]`

use std::path::PathBuf;

use anyhow::{Context, bail};
use cavsync_core::preprocess::{audio, fbank, image, segment};
use cavsync_core::similarity::cosine;
use cavsync_train::LoadedModel;
use ndarray::{ArrayD, Axis};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        bail!("usage: frame_similarity CHECKPOINT HEADS WAV IMAGE [FRAMES]");
    }
    let heads: usize = args[1].parse().context("HEADS must be a number")?;
    let frames: usize = args.get(4).map_or(Ok(16), |s| s.parse())?;
    let model = LoadedModel::load(&PathBuf::from(&args[0]), Some(heads))?;
    let samples = audio::load_wav_16k(&PathBuf::from(&args[2]))?;
    let mel = fbank::clip_log_mel(&samples, fbank::ShortInput::Error)?;
    let img = image::preprocess_image_file(&PathBuf::from(&args[3]))?;
    let visual = model.embed_visual(&img.insert_axis(Axis(0)).into_dyn())?;
    let v: Vec<f32> = visual.global.iter().copied().collect();
    println!("frame  start..end (fbank frames)  cosine(audio, visual)");
    for k in 0..frames {
        let seg = segment::frame_segment(mel.view(), k, frames, model.config.audio_length);
        let (start, end) =
            segment::segment_bounds(k, frames, segment::CLIP_FRAMES, model.config.audio_length);
        let batch: ArrayD<f32> = seg.insert_axis(Axis(0)).into_dyn();
        let a: Vec<f32> = model.embed_audio(&batch)?.global.iter().copied().collect();
        println!(
            "{k:>5}  {start:>5}..{end:<5}               {:+.4}",
            cosine(&a, &v)
        );
    }
    Ok(())
}
