//! Bundles written by `cavsync-export` and run by the tract runtime reproduce the burn encoders and the official outputs.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::{checkpoint, fixture_dir, heads};

use cavsync_core::manifest::{CalibrationRecord, LocalizationInfo, Manifest, sha256_file};
use cavsync_core::model::Precision;
use cavsync_core::npy::read_f32;
use cavsync_core::similarity::cosine;
use cavsync_device::bundle::Bundle;
use cavsync_formats::bundle::{BundleOptions, write_bundle};
use cavsync_formats::calibrate::{Observed, Probe, RangeRule};
use cavsync_formats::checkpoint::Checkpoint;
use cavsync_formats::layout::ModelConfig;
use cavsync_formats::pb::ModelProto;
use cavsync_formats::quantize::{Calibration, QuantizeOptions, quantize_bundle};
use cavsync_train::LoadedModel;
use ndarray::{ArrayD, Axis};
use prost::Message;
use tract_onnx::prelude::*;

/// Bound for f32 bundles against burn and against the official outputs.
const F32_MAX_ABS: f32 = 1e-4;
/// Bound for f16 bundles (weights and arithmetic in half precision) against the official outputs.
const F16_MAX_ABS: f32 = 2e-2;

const FIXTURES: [&str; 5] = [
    "sync_r8_cls",
    "cavmae_plain",
    "sync_d48h3_r4_ch",
    "sync_d64h8_r2_f16",
    "plain_d32_r3_ch",
];

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Run every batch item of the fixture through the bundle; returns (global, tokens) per modality.
fn run_bundle(bundle: &Bundle, dir: &Path) -> [(Vec<f32>, Vec<f32>); 2] {
    let mut out = [(Vec::new(), Vec::new()), (Vec::new(), Vec::new())];
    for (slot, input) in [(0, "audio_input.npy"), (1, "image_input.npy")] {
        let batch: ArrayD<f32> = read_f32(&dir.join(input)).unwrap();
        for item in batch.axis_iter(Axis(0)) {
            let data: Vec<f32> = item.iter().copied().collect();
            let e = if slot == 0 {
                bundle.embed_audio(&data).unwrap()
            } else {
                bundle.embed_visual(&data).unwrap()
            };
            out[slot].0.extend(e.global);
            out[slot].1.extend(e.tokens);
        }
    }
    out
}

fn write(name: &str, precision: Precision, out: &Path) {
    let dir = fixture_dir(name);
    let ck = Checkpoint::load(&checkpoint(&dir)).unwrap();
    let config = ModelConfig::detect(&ck, Some(heads(&dir))).unwrap();
    let options = BundleOptions {
        precision,
        total_frames: 16,
        localization: LocalizationInfo {
            active_threshold: 0.0,
            calibration: "test".into(),
            activity: None,
        },
    };
    write_bundle(&ck, &config, &options, out).unwrap();
}

#[test]
fn f32_bundles_match_burn_and_official_outputs() {
    for name in FIXTURES {
        let dir = fixture_dir(name);
        let tmp = tempfile::tempdir().unwrap();
        write(name, Precision::F32, tmp.path());
        let bundle = Bundle::open(tmp.path()).unwrap();
        let got = run_bundle(&bundle, &dir);

        let burn = LoadedModel::load(&checkpoint(&dir), Some(heads(&dir))).unwrap();
        let a = burn
            .embed_audio(&read_f32(&dir.join("audio_input.npy")).unwrap())
            .unwrap();
        let v = burn
            .embed_visual(&read_f32(&dir.join("image_input.npy")).unwrap())
            .unwrap();
        let burn_out = [
            (
                a.global.iter().copied().collect::<Vec<_>>(),
                a.tokens.iter().copied().collect::<Vec<_>>(),
            ),
            (
                v.global.iter().copied().collect(),
                v.tokens.iter().copied().collect(),
            ),
        ];
        for (slot, modality) in [(0, "audio"), (1, "visual")] {
            let official_global = read_f32(&dir.join(format!("{modality}_global.npy"))).unwrap();
            let official_tokens = read_f32(&dir.join(format!("{modality}_tokens.npy"))).unwrap();
            let errors = [
                ("global vs burn", max_abs(&got[slot].0, &burn_out[slot].0)),
                ("tokens vs burn", max_abs(&got[slot].1, &burn_out[slot].1)),
                (
                    "global vs official",
                    max_abs(&got[slot].0, official_global.as_slice().unwrap()),
                ),
                (
                    "tokens vs official",
                    max_abs(&got[slot].1, official_tokens.as_slice().unwrap()),
                ),
            ];
            for (what, err) in errors {
                println!("{name} {modality} {what}: max abs error {err:.3e}");
                assert!(err <= F32_MAX_ABS, "{name} {modality} {what}: {err}");
            }
        }
    }
}

#[test]
fn f16_bundle_error_is_bounded() {
    for name in ["sync_r8_cls", "sync_d48h3_r4_ch"] {
        let dir = fixture_dir(name);
        let tmp = tempfile::tempdir().unwrap();
        write(name, Precision::F16, tmp.path());
        let bundle = Bundle::open(tmp.path()).unwrap();
        assert_eq!(bundle.manifest.model.precision, Precision::F16);
        assert_eq!(
            bundle.manifest.model.precision_guidance.as_deref(),
            Some(Precision::F16.guidance())
        );
        let got = run_bundle(&bundle, &dir);
        for (slot, modality) in [(0, "audio"), (1, "visual")] {
            let official_tokens = read_f32(&dir.join(format!("{modality}_tokens.npy"))).unwrap();
            let err = max_abs(&got[slot].1, official_tokens.as_slice().unwrap());
            println!("{name} {modality} f16 tokens vs official: max abs error {err:.3e}");
            assert!(err <= F16_MAX_ABS, "{name} {modality} f16: {err}");
        }
    }
}

/// A bundle written from the sync_r8_cls fixture into a temporary directory (as `b/`).
fn fixture_bundle() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    write("sync_r8_cls", Precision::F32, &tmp.path().join("b"));
    tmp
}

fn open_err(dir: &Path) -> String {
    Bundle::open(dir).unwrap_err().to_string()
}

#[test]
fn damaged_bundles_are_refused_with_clear_errors() {
    let tmp = fixture_bundle();
    let dir = tmp.path().join("b");
    let manifest = std::fs::read_to_string(dir.join("manifest.toml")).unwrap();

    // Tampered model file: hash mismatch.
    let mut bytes = std::fs::read(dir.join("visual.onnx")).unwrap();
    let last = bytes.len() - 10;
    bytes[last] ^= 0x55;
    std::fs::write(dir.join("visual.onnx"), &bytes).unwrap();
    let msg = open_err(&dir);
    assert!(
        msg.contains("visual.onnx") && msg.contains("does not match"),
        "{msg}"
    );

    // Truncated model file with a matching hash in the manifest: tract refuses it.
    let good = fixture_bundle();
    let gdir = good.path().join("b");
    let bytes = std::fs::read(gdir.join("audio.onnx")).unwrap();
    let cut = &bytes[..bytes.len() / 3];
    std::fs::write(gdir.join("audio.onnx"), cut).unwrap();
    let old_hash = cavsync_core::manifest::sha256_hex(&bytes);
    let new_hash = cavsync_core::manifest::sha256_hex(cut);
    let text = std::fs::read_to_string(gdir.join("manifest.toml")).unwrap();
    std::fs::write(
        gdir.join("manifest.toml"),
        text.replace(&old_hash, &new_hash),
    )
    .unwrap();
    let msg = open_err(&gdir);
    assert!(
        msg.contains("audio.onnx") && msg.contains("cannot load ONNX model"),
        "{msg}"
    );

    // Missing file.
    let good = fixture_bundle();
    let gdir = good.path().join("b");
    std::fs::remove_file(gdir.join("audio.onnx")).unwrap();
    let msg = open_err(&gdir);
    assert!(
        msg.contains("audio.onnx") && msg.contains("cannot read"),
        "{msg}"
    );

    // Another format version, an unknown field, a missing manifest.
    let good = fixture_bundle();
    let gdir = good.path().join("b");
    std::fs::write(
        gdir.join("manifest.toml"),
        manifest.replace("format_version = 1", "format_version = 7"),
    )
    .unwrap();
    let msg = open_err(&gdir);
    assert!(
        msg.contains("format version 7") && msg.contains("manifest.toml"),
        "{msg}"
    );
    std::fs::write(
        gdir.join("manifest.toml"),
        manifest.replace("format_version = 1", "format_version = 1\nturbo = true"),
    )
    .unwrap();
    let msg = open_err(&gdir);
    assert!(msg.contains("turbo"), "{msg}");
    std::fs::write(
        gdir.join("manifest.toml"),
        manifest.replace("num_mel_bins = 128", "num_mel_bins = 64"),
    )
    .unwrap();
    let msg = open_err(&gdir);
    assert!(msg.contains("audio_preprocessing"), "{msg}");
    std::fs::remove_file(gdir.join("manifest.toml")).unwrap();
    let msg = open_err(&gdir);
    assert!(msg.contains("manifest.toml"), "{msg}");
}

/// Bound on the cosine of int8 (per-channel) outputs with the official f32 ones, per row.
const INT8_MIN_COSINE: f32 = 0.99;

/// Smallest and largest value of every activation `quantize` quantizes, over the fixture's
/// inputs run through the f32 bundle's graphs (the ranges `cavsync-export quantize --method
/// minmax` records; here the calibration frames are the test's own).
fn minmax_calibration(f32_dir: &Path, fixture: &Path) -> Calibration {
    let manifest = Manifest::read(f32_dir).unwrap();
    let mut ranges = BTreeMap::new();
    let mut frames = 0;
    for (info, input) in [
        (&manifest.audio, "audio_input.npy"),
        (&manifest.visual, "image_input.npy"),
    ] {
        let path = f32_dir.join(&info.file);
        let model = ModelProto::decode(std::fs::read(&path).unwrap().as_slice()).unwrap();
        let probe = Probe::new(&model, &info.input_shape, &path, &[]).unwrap();
        let mut seen = vec![Observed::default(); probe.names().len()];
        let batch: ArrayD<f32> = read_f32(&fixture.join(input)).unwrap();
        frames = batch.shape()[0];
        for item in batch.axis_iter(Axis(0)) {
            let data: Vec<f32> = item.iter().copied().collect();
            probe.observe(&data, &mut seen).unwrap();
        }
        for (name, o) in probe.names().iter().zip(&seen) {
            ranges.insert(
                (probe.graph_file(), name.clone()),
                o.range(RangeRule::Minmax),
            );
        }
    }
    let inputs = fixture.join("audio_input.npy");
    Calibration {
        ranges,
        record: CalibrationRecord {
            datafile: inputs.display().to_string(),
            datafile_sha256: sha256_file(&inputs).unwrap(),
            clips: 1,
            frames,
            method: "minmax".into(),
        },
    }
}

/// Both schemes, per-channel weights: the dynamic one (activation ranges measured at run time)
/// and the static one (ranges calibrated on the fixture's inputs; the scheme the committed
/// int8 bundles use, whose plans run `cavsync_device::intops`).
#[test]
fn int8_bundles_keep_the_official_outputs() {
    for name in FIXTURES {
        let dir = fixture_dir(name);
        let tmp = tempfile::tempdir().unwrap();
        let f32_dir = tmp.path().join("f32");
        write(name, Precision::F32, &f32_dir);
        for scheme in ["dynamic", "static"] {
            let int8_dir = tmp.path().join(scheme);
            let options = QuantizeOptions {
                per_channel: true,
                calibration: (scheme == "static").then(|| minmax_calibration(&f32_dir, &dir)),
                ..QuantizeOptions::default()
            };
            let (manifest, reports) = quantize_bundle(&f32_dir, &int8_dir, &options).unwrap();
            assert_eq!(manifest.model.precision, Precision::Int8);
            assert_eq!(
                manifest.model.precision_guidance.as_deref(),
                Some(Precision::Int8.guidance())
            );
            assert_eq!(manifest.quantization.unwrap().scheme, scheme);
            assert!(
                reports
                    .iter()
                    .all(|r| !r.kept_float && r.relative_error <= 0.5 / 127.0 + 1e-6)
            );
            let bundle = Bundle::open(&int8_dir).unwrap();
            let got = run_bundle(&bundle, &dir);
            let dim = bundle.dim();
            for (slot, modality) in [(0, "audio"), (1, "visual")] {
                for (what, values) in [("global", &got[slot].0), ("tokens", &got[slot].1)] {
                    let official = read_f32(&dir.join(format!("{modality}_{what}.npy"))).unwrap();
                    let official = official.as_slice().unwrap();
                    let worst = values
                        .chunks(dim)
                        .zip(official.chunks(dim))
                        .map(|(a, b)| cosine(a, b))
                        .fold(f32::INFINITY, f32::min);
                    println!(
                        "{name} {modality} int8 {scheme} {what} vs official: worst cosine {worst:.5}"
                    );
                    assert!(
                        worst >= INT8_MIN_COSINE,
                        "{name} {modality} {scheme} {what}: {worst}"
                    );
                }
            }
        }
    }
}

#[test]
fn int8_plans_run_integer_matmuls_on_every_weight() {
    let tmp = tempfile::tempdir().unwrap();
    let f32_dir = tmp.path().join("f32");
    let int8_dir = tmp.path().join("int8");
    write("sync_r8_cls", Precision::F32, &f32_dir);
    let (manifest, reports) =
        quantize_bundle(&f32_dir, &int8_dir, &QuantizeOptions::default()).unwrap();
    let mut integer_total = 0;
    for info in [&manifest.audio, &manifest.visual] {
        let bytes = std::fs::read(int8_dir.join(&info.file)).unwrap();
        let graph = ModelProto::decode(bytes.as_slice()).unwrap().graph.unwrap();
        let count = |op: &str| graph.node.iter().filter(|n| n.op_type == op).count();
        let float = count("MatMul");
        // Every float MatMul left multiplies two activations (attention), never a weight.
        for n in graph.node.iter().filter(|n| n.op_type == "MatMul") {
            assert!(
                n.input
                    .iter()
                    .all(|i| graph.initializer.iter().all(|t| &t.name != i)),
                "{}: MatMul {} has a constant input",
                info.file,
                n.name
            );
        }
        let plan = tract_onnx::onnx()
            .model_for_path(int8_dir.join(&info.file))
            .unwrap()
            .with_input_fact(0, f32::fact(&info.input_shape).into())
            .unwrap()
            .into_optimized()
            .unwrap();
        let kernels = |t: DatumType| {
            plan.nodes()
                .iter()
                .filter(|n| n.op.name() == "OptMatMul")
                .filter(|n| plan.outlet_fact(n.inputs[0]).unwrap().datum_type == t)
                .map(|n| n.name.clone())
                .collect::<Vec<_>>()
        };
        // tract may split one product (e.g. the global token's row) into several kernels, each
        // named after the MatMulInteger it came from.
        let integer_sources: BTreeSet<String> = kernels(DatumType::I8)
            .iter()
            .map(|name| match name.split_once(".matmul_integer") {
                Some((source, _)) => format!("{source}.matmul_integer"),
                None => name.clone(),
            })
            .collect();
        let integer_nodes: BTreeSet<String> = graph
            .node
            .iter()
            .filter(|n| n.op_type == "MatMulInteger")
            .map(|n| n.name.clone())
            .collect();
        println!(
            "{}: {} MatMulInteger -> {} i8 kernels; {float} MatMul -> {} f32 kernels",
            info.file,
            integer_nodes.len(),
            kernels(DatumType::I8).len(),
            kernels(DatumType::F32).len()
        );
        assert!(!integer_nodes.is_empty());
        assert_eq!(integer_sources, integer_nodes, "{}", info.file);
        assert_eq!(kernels(DatumType::F32).len(), float, "{}", info.file);
        let integer = integer_nodes.len();
        integer_total += integer;
    }
    assert_eq!(integer_total, reports.len());
}
