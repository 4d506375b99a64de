//! `localize` follows the model: a hand-made bundle whose similarity map is known in closed form.
//!
//! Every block has zero weights (so it is the identity), positional and modality embeddings are
//! zero, and D = 4. The visual patch embedding of a patch is (r, -r, 1, -1) with r the patch's
//! mean normalised red value; the audio global token is LayerNorm((1, -1, 0, 0)). After the
//! final LayerNorm the cosine between them is r / sqrt(r^2 + 1): increasing in redness. A red
//! square that moves across the frames must therefore carry the peak and the first box with it.

use std::collections::BTreeMap;
use std::path::Path;

use cavsync_core::clip::clip_from_dir;
use cavsync_core::localize::{FrameSize, render_overlay};
use cavsync_core::manifest::LocalizationInfo;
use cavsync_core::model::Precision;
use cavsync_core::preprocess::image::load_rgb;
use cavsync_core::preprocess::segment::FramePosition;
use cavsync_device::bundle::Bundle;
use cavsync_device::encode::{FrameEncoder, clip_fbank};
use cavsync_device::session::FrameLocalizer;
use cavsync_formats::bundle::{BundleOptions, write_bundle};
use cavsync_formats::checkpoint::{Checkpoint, RawTensor};
use cavsync_formats::layout::ModelConfig;
use cavsync_formats::random::write_safetensors;
use image::{Rgb, RgbImage};

const D: usize = 4;

fn hand_made_checkpoint(path: &Path) {
    // The published shape at toy size, with a single joint block.
    let config = ModelConfig {
        depth_u: 1,
        ..ModelConfig::sync(D, 1, 1, 64)
    };
    let mut tensors: BTreeMap<String, RawTensor> = config
        .expected_shapes()
        .into_iter()
        .map(|(key, shape)| {
            let n = shape.iter().product();
            let fill = if key.contains("norm") && key.ends_with(".weight") {
                1.0
            } else {
                0.0
            };
            (
                key,
                RawTensor {
                    shape,
                    data: vec![fill; n],
                },
            )
        })
        .collect();
    // Visual patch embedding: channel 0 = mean red, channel 1 = -mean red; biases (0, 0, 1, -1).
    let w = tensors.get_mut("patch_embed_v.proj.weight").unwrap();
    for k in 0..256 {
        w.data[k] = 1.0 / 256.0;
        w.data[3 * 256 + k] = -1.0 / 256.0;
    }
    tensors.get_mut("patch_embed_v.proj.bias").unwrap().data = vec![0.0, 0.0, 1.0, -1.0];
    tensors.get_mut("cls_token_a").unwrap().data = vec![1.0, -1.0, 0.0, 0.0];
    write_safetensors(&tensors, path).unwrap();
}

/// A 320x240 grey frame with a 48x48 red square whose top-left corner is (x, y).
fn frame(x: u32, y: u32) -> RgbImage {
    RgbImage::from_fn(320, 240, |px, py| {
        if (x..x + 48).contains(&px) && (y..y + 48).contains(&py) {
            Rgb([255, 0, 0])
        } else {
            Rgb([40, 120, 120])
        }
    })
}

#[test]
fn peak_and_box_follow_a_moving_red_square() {
    let tmp = tempfile::tempdir().unwrap();
    let ck_path = tmp.path().join("hand.safetensors");
    hand_made_checkpoint(&ck_path);
    let ck = Checkpoint::load(&ck_path).unwrap();
    let config = ModelConfig::detect(&ck, Some(1)).unwrap();
    let bundle_dir = tmp.path().join("bundle");
    let options = BundleOptions {
        precision: Precision::F32,
        total_frames: 4,
        localization: LocalizationInfo {
            active_threshold: 0.5,
            calibration: "hand-made test model".into(),
            activity: None,
        },
    };
    write_bundle(&ck, &config, &options, &bundle_dir).unwrap();
    let bundle = Bundle::open(&bundle_dir).unwrap();

    let clip_dir = tmp.path().join("clip");
    std::fs::create_dir_all(clip_dir.join("frames")).unwrap();
    let squares = [(60, 40), (150, 100), (230, 170), (100, 150)];
    for (k, (x, y)) in squares.iter().enumerate() {
        frame(*x, *y)
            .save(clip_dir.join(format!("frames/frame_{k}.png")))
            .unwrap();
    }
    // A fifth frame with no red source at all: its best cosine is far below the threshold.
    frame(400, 400)
        .save(clip_dir.join("frames/frame_4.png"))
        .unwrap();
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut wav = hound::WavWriter::create(clip_dir.join("audio.wav"), spec).unwrap();
    for n in 0..16_000 {
        let s = (2.0 * std::f32::consts::PI * 440.0 * n as f32 / 16_000.0).sin();
        wav.write_sample((s * 8000.0) as i16).unwrap();
    }
    wav.finalize().unwrap();

    let clip = clip_from_dir(&clip_dir).unwrap();
    let mut encoder = FrameEncoder::new(&bundle);
    let mut localizer = FrameLocalizer::new(&bundle).unwrap();
    let mel = clip_fbank(&clip.id, &clip.audio).unwrap();
    assert_eq!(clip.frames.len(), 5);
    let size = FrameSize {
        width: 320,
        height: 240,
    };
    let rgb_empty = load_rgb(&clip.frames[4].path).unwrap();
    let position = |k: usize| FramePosition {
        index: k,
        total_frames: clip.total_frames,
        time_s: clip.frames[k].time_s,
        duration_s: clip.duration_s(),
    };
    let empty = encoder
        .encode(mel.view(), clip.alignment, position(4), &rgb_empty)
        .unwrap();
    let loc = localizer.localize(empty, size).unwrap();
    assert!(!loc.active, "no source, yet score {}", loc.score);
    let overlay = render_overlay(&rgb_empty, localizer.heatmap(), &loc).unwrap();
    assert_eq!(overlay.dimensions(), (320, 240));
    for (frame_ref, (x, y)) in clip.frames.iter().zip(squares) {
        let rgb = load_rgb(&frame_ref.path).unwrap();
        let emb = encoder
            .encode(mel.view(), clip.alignment, position(frame_ref.index), &rgb)
            .unwrap();
        let r = &localizer.localize(emb, size).unwrap();
        assert!(r.active, "frame {}: score {}", frame_ref.index, r.score);
        let peak = &r.peaks[0];
        let (x, y) = (x as f32, y as f32);
        // The peak lies on the square (one 16-pixel patch of slack at the square's border).
        assert!(
            (x - 16.0..x + 64.0).contains(&peak.x) && (y - 16.0..y + 64.0).contains(&peak.y),
            "frame {}: peak ({}, {}) not on the square at ({x}, {y})",
            frame_ref.index,
            peak.x,
            peak.y
        );
        let b = &r.boxes[0];
        let (cx, cy) = ((b.x0 + b.x1) / 2.0, (b.y0 + b.y1) / 2.0);
        assert!(
            (cx - (x + 24.0)).abs() < 24.0 && (cy - (y + 24.0)).abs() < 24.0,
            "frame {}: box {b:?} not centred on the square at ({x}, {y})",
            frame_ref.index
        );
        let overlay = render_overlay(&rgb, localizer.heatmap(), r).unwrap();
        assert_eq!(overlay.dimensions(), (320, 240));
        let (px, py) = (peak.x as u32, peak.y as u32);
        assert_ne!(overlay.get_pixel(px, py), rgb.get_pixel(px, py));
    }
}
