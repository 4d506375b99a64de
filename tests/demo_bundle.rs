//! The shipped demo: `models/demo/bundle` on `models/demo/clip` through the runtime library, as the README's first command runs it, reproduces what `models/demo/RECORD.md` reports.

mod records;

use records::Records;
use std::path::Path;

use cavsync_core::annotations::Annotations;
use cavsync_core::clip;
use cavsync_device::bundle::Bundle;
use cavsync_device::session::{GroundTruth, Session};

/// Pointing-game hits on the demo clip's 14 sounding frames, and its mean cIoU, as recorded
/// (RECORD.md: "pointing 100.0% ... mean cIoU 0.131"); one hit of slack for a near-tie
/// resolved differently on another CPU.
const RECORDED_HITS: usize = 14;
const RECORDED_MEAN_CIOU: f64 = 0.131;

#[test]
fn demo_bundle_localizes_the_demo_clip() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let demo = root.join("models/demo");
    let bundle = Bundle::open(&demo.join("bundle")).unwrap();
    assert_ne!(
        bundle.manifest.localization.calibration, "uncalibrated default",
        "the demo bundle's activity threshold must be calibrated"
    );
    let annotations = Annotations::read(&demo.join("clip/annotations.json")).unwrap();
    // The datafile's paths are relative to the repository root, as the README command runs.
    let entries = clip::read_datafile(&demo.join("clip/datafile.json")).unwrap();
    assert_eq!(entries.len(), 1);
    let mut entry = entries[0].clone();
    entry.wav = root.join(&entry.wav);
    entry.video_path = root.join(&entry.video_path);
    let clip = clip::clip_from_datafile_entry(&entry, 16).unwrap();
    let annotations_path = demo.join("clip/annotations.json");
    let truth = GroundTruth {
        annotations: &annotations,
        path: &annotations_path,
    };
    let mut records = Records::default();
    let mut session = Session::new(&bundle, Some(truth)).unwrap();
    session.run_clip(&clip, None, &mut [&mut records]).unwrap();
    let run = session.finish(&mut [&mut records]).unwrap();
    let hits = records
        .0
        .iter()
        .filter(|r| r.truth.and_then(|t| t.pointing_hit) == Some(true))
        .count();
    let s = run.summary.unwrap();
    println!("demo clip: {s:?}");
    assert_eq!(s.sounding_frames, 14);
    assert!(hits.abs_diff(RECORDED_HITS) <= 1, "{hits} hits");
    assert_eq!(records.0.len(), 16);
    assert!(
        (s.mean_ciou - RECORDED_MEAN_CIOU).abs() < 0.005,
        "mean cIoU {}",
        s.mean_ciou
    );
}

#[test]
fn non_finite_inputs_never_reach_the_encoders() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bundle = Bundle::open(&root.join("models/demo/bundle")).unwrap();
    let mut segment = vec![0.1f32; bundle.input_len(cavsync_core::model::Modality::Audio)];
    segment[77] = f32::NAN;
    let err = bundle.embed_audio(&segment).unwrap_err().to_string();
    assert_eq!(
        err,
        "audio segment: value 77 is NaN, expected finite values"
    );
    let mut image = vec![0.1f32; bundle.input_len(cavsync_core::model::Modality::Visual)];
    image[5] = f32::NEG_INFINITY;
    let err = bundle.embed_visual(&image).unwrap_err().to_string();
    assert_eq!(err, "image: value 5 is -inf, expected finite values");
}
