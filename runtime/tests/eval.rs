//! `cavsync eval` end to end: the demo bundle against its own int8 quantization, and bundles that cannot be compared.

use std::path::{Path, PathBuf};
use std::process::Command;

use cavsync_formats::quantize::{QuantizeOptions, quantize_bundle};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The `cavsync` binary, run from the repository root with warnings-only logs.
fn cavsync() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cavsync"));
    command.env("RUST_LOG", "warn").current_dir(root());
    command
}

fn eval(reference: &Path, candidate: &Path, report: &Path) -> std::process::Output {
    cavsync()
        .arg("eval")
        .arg("--reference")
        .arg(reference)
        .arg("--candidate")
        .arg(candidate)
        .args([
            "--datafile",
            "models/demo/clip/datafile.json",
            "--annotations",
            "models/demo/clip/annotations.json",
            "--iterations",
            "1",
            "--worst",
            "3",
            "--report",
        ])
        .arg(report)
        .output()
        .unwrap()
}

/// The `src` attributes of the page's images.
fn image_sources(html: &str) -> Vec<String> {
    html.split("<img src=\"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap().to_string())
        .collect()
}

#[test]
fn eval_compares_an_int8_bundle_with_its_f32_source() {
    let dir = tempfile::tempdir().unwrap();
    let f32_bundle = root().join("models/demo/bundle");
    let int8 = dir.path().join("int8");
    let options = QuantizeOptions {
        per_channel: true,
        ..QuantizeOptions::default()
    };
    quantize_bundle(&f32_bundle, &int8, &options).unwrap();
    let report = dir.path().join("report");
    let out = eval(&f32_bundle, &int8, &report);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("agreement with the reference"), "{stdout}");
    assert!(stdout.contains("pointing, centre prior"), "{stdout}");

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("report.json")).unwrap())
            .unwrap();
    assert_eq!(json["frames"], 16);
    let cand = &json["candidates"][0];
    assert_eq!(cand["model"]["precision"], "int8");
    let agreement = &cand["agreement"];
    assert_eq!(agreement["frames"], 16);
    // The quantization issue's bounds for the demo model.
    for token in ["audio_global", "visual_global"] {
        let mean = agreement[token]["mean"].as_f64().unwrap();
        let worst = agreement[token]["worst"].as_f64().unwrap();
        assert!(
            mean >= 0.99 && worst >= 0.97,
            "{token}: mean {mean}, worst {worst}"
        );
        assert!(
            mean < 1.0,
            "{token}: an int8 model cannot match f32 exactly"
        );
    }
    assert!(
        agreement["mask_iou"]["mean"].as_f64().unwrap() >= 0.95,
        "{agreement}"
    );
    let sizes = [&json["reference"], &cand["model"]].map(|m| m["size_bytes"].as_f64().unwrap());
    assert!(
        sizes[1] <= 0.3 * sizes[0],
        "int8 {} vs f32 {} bytes",
        sizes[1],
        sizes[0]
    );
    let reference = &json["reference"];
    assert_eq!(reference["localization"]["sounding_frames"], 14);
    assert!(reference["baselines"]["centre_prior"]["pointing"].is_number());
    assert_eq!(reference["ciou_success"].as_array().unwrap().len(), 21);
    assert!(reference["latency"]["pair_s"].as_f64().unwrap() > 0.0);
    assert_eq!(cand["worst_frames"].as_array().unwrap().len(), 3);
    // The reference against itself on frames shifted 2 px: the same audio, a moved image.
    assert!(
        stdout.contains("reference shifted 2 px (baseline)"),
        "{stdout}"
    );
    let jitter = &json["jitter"];
    assert_eq!(
        (&jitter["pixels"], &jitter["agreement"]["frames"]),
        (&2.into(), &16.into())
    );
    let j = &jitter["agreement"];
    let audio = j["audio_global"]["worst"].as_f64().unwrap();
    let visual = j["visual_global"]["mean"].as_f64().unwrap();
    assert!(audio > 0.999_999 && visual < 0.999_999, "{j}");
    let (near, tied) = (
        j["near_peak_rate_active"].as_f64().unwrap(),
        j["near_or_tied_rate_active"].as_f64().unwrap(),
    );
    assert!(
        (0.0..=1.0).contains(&near) && tied >= near && tied <= 1.0,
        "{j}"
    );

    let html = std::fs::read_to_string(report.join("report.html")).unwrap();
    let images = image_sources(&html);
    assert_eq!(
        images.len(),
        3 + 3,
        "three plots and three frames: {images:?}"
    );
    for src in images {
        let decoded = image::open(report.join(&src)).unwrap_or_else(|e| panic!("{src}: {e}"));
        assert!(decoded.width() > 100 && decoded.height() > 100, "{src}");
    }
}

#[test]
fn eval_refuses_bundles_that_cannot_be_compared() {
    let dir = tempfile::tempdir().unwrap();
    let f32_bundle = root().join("models/demo/bundle");
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    for entry in std::fs::read_dir(&f32_bundle).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, other.join(path.file_name().unwrap())).unwrap();
    }
    let manifest = other.join("manifest.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    assert!(text.contains("total_frames = 16"));
    std::fs::write(
        &manifest,
        text.replace("total_frames = 16", "total_frames = 8"),
    )
    .unwrap();
    let report = dir.path().join("report");
    let out = eval(&f32_bundle, &other, &report);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("manifest.toml cannot be compared")
            && stderr.contains(
                "audio_preprocessing.total_frames is 16 in the reference, 8 in the candidate"
            ),
        "{stderr}"
    );
    assert!(
        !report.exists(),
        "nothing is written for bundles that cannot be compared"
    );
}

/// The demo clip and a copy of it under another id, as a two-clip datafile in `dir` (absolute paths).
fn two_clip_datafile(dir: &Path) -> PathBuf {
    let clip = root().join("models/demo/clip");
    let mut entries = Vec::new();
    for id in ["s2001_00000", "copy_00001"] {
        let frames = dir.join("frames");
        for k in 0..16 {
            let folder = frames.join(format!("frame_{k}"));
            std::fs::create_dir_all(&folder).unwrap();
            std::fs::copy(
                clip.join(format!("frames/frame_{k}/s2001_00000.jpg")),
                folder.join(format!("{id}.jpg")),
            )
            .unwrap();
        }
        let wav = dir.join(format!("{id}.wav"));
        std::fs::copy(clip.join("audio/s2001_00000.wav"), &wav).unwrap();
        entries.push(serde_json::json!({
            "labels": "whistle,drum",
            "video_id": id,
            "video_path": frames,
            "wav": wav,
        }));
    }
    let path = dir.join("datafile.json");
    std::fs::write(&path, serde_json::json!({ "data": entries }).to_string()).unwrap();
    path
}

#[test]
fn eval_compares_a_student_of_another_width_and_grid_with_its_teacher() {
    let dir = tempfile::tempdir().unwrap();
    let datafile = two_clip_datafile(dir.path());
    let report = dir.path().join("report");
    let out = cavsync()
        .args(["eval", "--reference", "models/demo/bundle"])
        .args(["--candidate", "models/demo-student-nano/bundle"])
        .args([
            "--iterations",
            "1",
            "--worst",
            "1",
            "--jitter",
            "0",
            "--datafile",
        ])
        .arg(&datafile)
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("widths differ"), "{stdout}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("report.json")).unwrap())
            .unwrap();
    let candidate = &json["candidates"][0];
    let agreement = &candidate["agreement"];
    assert_eq!(agreement["frames"], 32);
    assert!(
        json["jitter"].is_null() && !stdout.contains("(baseline)"),
        "{stdout}"
    );
    assert!(agreement["audio_global"].is_null() && agreement["patches"].is_null());
    let near = agreement["near_peak_rate"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&near), "{agreement}");
    // Each model's retrieval uses its own width (64 for the student, 128 for the teacher).
    for model in [&json["reference"], &candidate["model"]] {
        let r1 = model["retrieval"]["audio_to_visual"]["r1"].as_f64();
        assert!(r1.is_some(), "{model}");
        let r1 = model["patch_retrieval"]["visual_to_audio"]["r1"].as_f64();
        assert!(r1.is_some_and(|r| (0.0..=1.0).contains(&r)), "{model}");
    }
    assert!(
        stdout.contains("A->V R@1 / R@5 / R@10, by the map"),
        "{stdout}"
    );
    // The same scores as `retrieve --patch`, which streams the images instead of keeping tokens.
    let out = cavsync()
        .args([
            "retrieve",
            "--patch",
            "--bundle",
            "models/demo/bundle",
            "--datafile",
        ])
        .arg(&datafile)
        .output()
        .unwrap();
    let retrieved = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference = &json["reference"]["patch_retrieval"];
    for (row, key) in [
        ("audio->visual", "audio_to_visual"),
        ("visual->audio", "visual_to_audio"),
    ] {
        let line = retrieved.lines().find(|l| l.starts_with(row)).unwrap();
        let r1: f64 = line
            .split_whitespace()
            .nth(1)
            .unwrap()
            .trim_end_matches('%')
            .parse()
            .unwrap();
        let expected = 100.0 * reference[key]["r1"].as_f64().unwrap();
        assert!(
            (r1 - expected).abs() < 0.005,
            "{row}: retrieve {r1}, eval {expected}"
        );
    }
}
