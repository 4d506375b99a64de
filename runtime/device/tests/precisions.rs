//! The demo model in every precision a board runs, against f32 on the demo clip, through the device crate alone: int8 (integer matmuls: AVX2 / AVX-512 VNNI here) and f16 (stored in half precision; x86 computes it in f32).
//!
//! `scripts/cross_aarch64.sh` runs this test for aarch64 under qemu as a Cortex-A76 (SDOT int8,
//! native fp16) and a Cortex-A72 (SMLAL int8), so the Arm kernels meet the same bounds; the f16
//! plans' products must run tract's native fp16 kernels where the CPU has them, f32 ones elsewhere.

use std::path::{Path, PathBuf};

use cavsync_core::clip::{clip_from_datafile_entry, read_datafile};
use cavsync_core::model::{Modality, Precision};
use cavsync_core::preprocess::image::load_rgb;
use cavsync_core::preprocess::segment::{Alignment, FramePosition};
use cavsync_core::similarity::cosine;
use cavsync_device::bundle::{Bundle, Embedding};
use cavsync_device::encode::{FrameEncoder, clip_fbank};
use cavsync_formats::bundle::{BundleOptions, write_bundle};
use cavsync_formats::checkpoint::Checkpoint;
use cavsync_formats::layout::ModelConfig;
use cavsync_formats::quantize::{QuantizeOptions, quantize_bundle};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Audio and visual embeddings of four frames of the demo clip through `bundle`.
fn embeddings(bundle: &Bundle) -> Vec<(Embedding, Embedding)> {
    let clip_dir = root().join("models/demo/clip");
    let entries = read_datafile(&clip_dir.join("datafile.json")).unwrap();
    let total = bundle.manifest.audio_preprocessing.total_frames;
    let clip = clip_from_datafile_entry(&entries[0], total).unwrap();
    assert_eq!(clip.alignment, Alignment::Official);
    let mel = clip_fbank(&clip.id, &clip.audio).unwrap();
    let mut encoder = FrameEncoder::new(bundle);
    [0usize, 5, 10, 15]
        .iter()
        .map(|&k| {
            let frame = &clip.frames[k];
            let position = FramePosition {
                index: frame.index,
                total_frames: clip.total_frames,
                time_s: frame.time_s,
                duration_s: clip.audio.len() as f64 / 16_000.0,
            };
            let rgb = load_rgb(&frame.path).unwrap();
            let emb = encoder
                .encode(mel.view(), clip.alignment, position, &rgb)
                .unwrap();
            (emb.audio.clone(), emb.visual.clone())
        })
        .collect()
}

/// Smallest global-token cosine and mean patch-token cosine of `candidate` against `reference`, over both encoders.
fn agreement(
    reference: &[(Embedding, Embedding)],
    candidate: &[(Embedding, Embedding)],
    dim: usize,
) -> (f32, f64) {
    let mut worst_global = 1.0f32;
    let (mut sum, mut n) = (0.0f64, 0usize);
    for ((ra, rv), (ca, cv)) in reference.iter().zip(candidate) {
        for (r, c) in [(ra, ca), (rv, cv)] {
            worst_global = worst_global.min(cosine(&r.global, &c.global));
            for (rt, ct) in r.tokens.chunks(dim).zip(c.tokens.chunks(dim)) {
                sum += f64::from(cosine(rt, ct));
                n += 1;
            }
        }
    }
    (worst_global, sum / n as f64)
}

#[test]
fn int8_and_f16_bundles_follow_f32_on_the_demo_clip() {
    // The datafile's paths are relative to the repository root (the other test reads none).
    std::env::set_current_dir(root()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f32_dir = root().join("models/demo/bundle");
    let reference = Bundle::open(&f32_dir).unwrap();
    let dim = reference.dim();
    let expected = embeddings(&reference);

    let int8_dir = dir.path().join("int8");
    let options = QuantizeOptions {
        per_channel: true,
        ..QuantizeOptions::default()
    };
    quantize_bundle(&f32_dir, &int8_dir, &options).unwrap();
    let int8 = Bundle::open(&int8_dir).unwrap();
    assert_eq!(int8.manifest.model.precision, Precision::Int8);
    let (global, tokens) = agreement(&expected, &embeddings(&int8), dim);
    eprintln!(
        "int8 (dynamic, per channel): worst global cosine {global:.5}, mean token cosine {tokens:.5}"
    );
    assert!(global >= 0.99, "int8 global cosine {global}");
    assert!(tokens >= 0.98, "int8 token cosine {tokens}");

    let ck = Checkpoint::load(&root().join("models/demo/run/demo.pth")).unwrap();
    let config = ModelConfig::detect(&ck, Some(reference.manifest.model.heads)).unwrap();
    let f16_dir = dir.path().join("f16");
    let bundle_options = BundleOptions {
        precision: Precision::F16,
        total_frames: reference.manifest.audio_preprocessing.total_frames,
        localization: reference.manifest.localization.clone(),
    };
    write_bundle(&ck, &config, &bundle_options, &f16_dir).unwrap();
    let f16 = Bundle::open(&f16_dir).unwrap();
    let (global, tokens) = agreement(&expected, &embeddings(&f16), dim);
    eprintln!("f16: worst global cosine {global:.5}, mean token cosine {tokens:.5}");
    assert!(global >= 0.999, "f16 global cosine {global}");
    assert!(tokens >= 0.995, "f16 token cosine {tokens}");

    // The kernels of the f16 plans: native fp16 (accumulating in fp16) where the CPU has
    // half-precision arithmetic, else f32 kernels reading the f16 operands.
    let fp16 = fp16_arithmetic();
    for modality in Modality::ALL {
        let input = vec![0.1f32; f16.input_len(modality)];
        let nodes = f16.profile(modality, &input, 1).unwrap();
        let kernels: Vec<&str> = nodes
            .iter()
            .filter(|n| n.op == "OptMatMul" && n.input_type.as_deref() == Some("F16"))
            .filter_map(|n| n.detail.split("with [").nth(1)?.split(']').next())
            .collect();
        let mut kinds = std::collections::BTreeMap::<&str, usize>::new();
        kernels
            .iter()
            .for_each(|k| *kinds.entry(k).or_default() += 1);
        eprintln!(
            "f16 {modality}: {} products, kernels {kinds:?}",
            kernels.len()
        );
        assert!(kernels.len() >= 10, "{modality}: {kernels:?}");
        for kernel in kernels {
            if fp16 {
                assert!(
                    kernel.starts_with("arm64fp16_mmm_f16"),
                    "{modality}: {kernel}"
                );
            } else {
                assert!(kernel.contains("_f32_"), "{modality}: {kernel}");
            }
        }
    }
}

/// Whether this CPU computes in half precision (Arm `asimdhp`, e.g. a Cortex-A76).
fn fp16_arithmetic() -> bool {
    #[cfg(target_arch = "aarch64")]
    return std::arch::is_aarch64_feature_detected!("fp16");
    #[cfg(not(target_arch = "aarch64"))]
    false
}

/// A static int8 bundle's plans run one 2-D integer product per weight, and quantize
/// activations and rescale every product's accumulators in one pass each (`cavsync_device::intops`),
/// leaving none of tract's casts and multiplications behind; on AVX-512 VNNI, each chain of the
/// three is one `Int8Product` (`cavsync_device::intproduct`).
#[test]
fn static_int8_plans_use_one_pass_quantize_and_rescale() {
    let bundle = Bundle::open(&root().join("models/demo-student/bundle-int8")).unwrap();
    for modality in Modality::ALL {
        let input = vec![0.1f32; bundle.input_len(modality)];
        let nodes = bundle.profile(modality, &input, 1).unwrap();
        let count = |op: &str| nodes.iter().filter(|n| n.op == op).count();
        let tract_products: std::collections::BTreeSet<&str> = nodes
            .iter()
            .filter(|n| n.op == "OptMatMul" && n.input_type.as_deref() == Some("I8"))
            .filter_map(|n| n.name.split(".matmul_integer").next())
            .collect();
        eprintln!(
            "int8 {modality}: {} fused products, {} integer products, {} RowRescale, {} RowQuantizeU8",
            count("Int8Product"),
            tract_products.len(),
            count("RowRescale"),
            count("RowQuantizeU8")
        );
        if fused_products() {
            assert!(count("Int8Product") >= 10, "{modality}");
            for gone in ["RowRescale", "RowQuantizeU8"] {
                assert_eq!(count(gone), 0, "{modality}: {gone} left in the plan");
            }
            assert!(tract_products.is_empty(), "{modality}: {tract_products:?}");
        } else {
            assert!(tract_products.len() >= 10, "{modality}: {tract_products:?}");
            assert_eq!(count("RowRescale"), tract_products.len(), "{modality}");
            assert!(
                count("RowQuantizeU8") >= tract_products.len() / 2,
                "{modality}"
            );
        }
        // One product per weight, patch embedding included (not one per row of patches).
        for n in nodes
            .iter()
            .filter(|n| n.op == "OptMatMul" && n.input_type.as_deref() == Some("I8"))
        {
            let shape = n.detail.split("c_shape:").nth(1).unwrap_or_default();
            let dims = shape.split(',').take_while(|d| d.parse::<usize>().is_ok());
            assert_eq!(dims.count(), 2, "{modality}: {} {}", n.name, n.detail);
        }
        let mut parts = std::collections::BTreeMap::<&str, usize>::new();
        for n in nodes.iter().filter(|n| n.op == "Int8Product") {
            let weight = n.name.split(".matmul_integer").next().unwrap_or_default();
            *parts.entry(weight).or_default() += 1;
        }
        // tract splits a product at most in two where the global tokens are cut from the rest.
        assert!(parts.values().all(|&p| p <= 2), "{modality}: {parts:?}");
        for gone in ["Cast", "OptMulUnicast", "QuantizeLinearU8"] {
            assert_eq!(count(gone), 0, "{modality}: {gone} left in the plan");
        }
    }
}

/// Whether this CPU's plans fuse int8 products (x86-64 with AVX-512 VNNI).
fn fused_products() -> bool {
    #[cfg(target_arch = "x86_64")]
    return cavsync_device::intproduct::available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}
