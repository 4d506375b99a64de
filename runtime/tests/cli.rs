//! End-to-end tests of the `cavsync` binary: preprocessing, bundle errors and the README's main command.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use cavsync_core::npy::read_f32;
use cavsync_core::preprocess::audio::load_wav_16k;
use cavsync_core::preprocess::fbank::{ShortInput, clip_log_mel};
use cavsync_core::preprocess::segment::{NORM_MEAN, NORM_STD};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("core/tests/data/fbank")
        .join(name)
}

/// The `cavsync` binary with warnings-only logging, ready for a subcommand.
fn cavsync() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cavsync"));
    command.env("RUST_LOG", "warn");
    command
}

fn fbank(wav: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    cavsync()
        .arg("fbank")
        .arg("--wav")
        .arg(wav)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn fbank_writes_raw_and_normalised_log_mel() {
    let dir = tempfile::tempdir().unwrap();
    let wav = data("speech_a16.wav");
    let expected = clip_log_mel(&load_wav_16k(&wav).unwrap(), ShortInput::Error).unwrap();

    let raw = dir.path().join("raw.npy");
    assert!(fbank(&wav, &raw, &[]).status.success());
    let raw = read_f32(&raw).unwrap();
    assert_eq!(raw.shape(), &[expected.nrows(), 128]);
    assert!(raw.iter().zip(expected.iter()).all(|(a, b)| a == b));

    let norm = dir.path().join("norm.npy");
    assert!(fbank(&wav, &norm, &["--normalize"]).status.success());
    let norm = read_f32(&norm).unwrap();
    assert!(
        norm.iter()
            .zip(expected.iter())
            .all(|(n, r)| (n - (r - NORM_MEAN) / NORM_STD).abs() < 1e-6)
    );
}

#[test]
fn short_and_unreadable_audio_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let out = fbank(&data("noise_399.wav"), &dir.path().join("a.npy"), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("noise_399.wav") && stderr.contains("399 samples"),
        "{stderr}"
    );
    assert!(!dir.path().join("a.npy").exists());

    let padded = dir.path().join("p.npy");
    assert!(
        fbank(&data("noise_399.wav"), &padded, &["--pad-short"])
            .status
            .success()
    );
    assert_eq!(read_f32(&padded).unwrap().shape(), &[1, 128]);

    let junk = dir.path().join("junk.wav");
    std::fs::write(&junk, b"RIFF but not really").unwrap();
    let out = fbank(&junk, &dir.path().join("b.npy"), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.starts_with("error: ") && stderr.contains("junk.wav"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn absent_or_broken_bundle_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("manifest.toml"), "format_version = 2\n").unwrap();
    for bundle in [dir.path().to_path_buf(), dir.path().join("missing")] {
        let out = cavsync()
            .args(["info", "--bundle"])
            .arg(&bundle)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.contains("manifest.toml"),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// Runs `cavsync localize` on the shipped demo bundle and clip from the repository root, as the README does.
fn localize_demo(out: &Path, extra: &[&str]) -> std::process::Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    cavsync()
        .current_dir(root)
        .args([
            "localize",
            "--bundle",
            "models/demo/bundle",
            "--datafile",
            "models/demo/clip/datafile.json",
            "--annotations",
            "models/demo/clip/annotations.json",
            "--out",
        ])
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn main_command_writes_what_it_reports() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("demo");
    let out = localize_demo(&out_dir, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("localized 16 frames of 1 clip(s)"),
        "{stdout}"
    );
    // The demo clip: 14 frames where a visible object sounds, one silent, one with only an off-screen source.
    assert!(stdout.contains("over 14 sounding frames"), "{stdout}");
    assert!(
        stdout.contains("silent frames not active 100.0% (of 1)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("off-screen-sound frames not active 100.0% (of 1)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("baselines on the same frames: centre prior pointing ")
            && stdout.contains("; mismatched audio pointing ")
            && stdout.contains("model margin over the best: pointing "),
        "{stdout}"
    );
    let frame_lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("s2001_00000 frame "))
        .collect();
    assert_eq!(frame_lines.len(), 16, "{stdout}");
    assert!(
        frame_lines.iter().all(|l| l.contains(" peak (")),
        "{stdout}"
    );
    let scored = frame_lines
        .iter()
        .filter(|l| l.contains(" sounding: "))
        .count();
    let quiet = frame_lines
        .iter()
        .filter(|l| l.ends_with("| nothing sounding"))
        .count();
    assert_eq!((scored, quiet), (14, 2), "{stdout}");
    assert!(
        stdout.contains(
            "localization.jsonl, *_heatmaps.npy, overlays/, *.gif, metrics.json, index.html"
        ),
        "{stdout}"
    );
    let id = "s2001_00000";
    for name in [
        "localization.jsonl".to_string(),
        "metrics.json".to_string(),
        "index.html".to_string(),
        format!("{id}.gif"),
        format!("{id}_heatmaps.npy"),
    ] {
        assert!(out_dir.join(&name).is_file(), "{name} missing");
    }
    let overlays = std::fs::read_dir(out_dir.join("overlays")).unwrap().count();
    assert_eq!(overlays, 16);
    let lines = std::fs::read_to_string(out_dir.join("localization.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 16);
    let heatmaps = read_f32(&out_dir.join(format!("{id}_heatmaps.npy"))).unwrap();
    assert_eq!(heatmaps.shape(), &[16, 224, 224]);
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("metrics.json")).unwrap())
            .unwrap();
    assert_eq!(metrics["overall"]["sounding_frames"], 14);
    for baseline in ["centre_prior", "mismatched_audio"] {
        assert_eq!(metrics["baselines"][baseline]["sounding_frames"], 14);
    }
    assert!(metrics["baselines"]["margin"]["pointing"].is_number());
    let pointing = metrics["overall"]["pointing"].as_f64().unwrap();
    assert!(pointing >= 13.0 / 14.0, "pointing {pointing}");
    let html = std::fs::read_to_string(out_dir.join("index.html")).unwrap();
    assert!(
        html.contains(&format!("{id}.gif")),
        "index.html lacks the GIF"
    );
}

#[test]
fn main_command_without_overlays_or_frame_lines_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("demo");
    let out = localize_demo(&out_dir, &["--no-overlays", "--summary-only"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(!stdout.contains(" frame 00 "), "{stdout}");
    assert!(stdout.contains("s2001_00000: pointing "), "{stdout}");
    assert!(
        stdout.contains("localization.jsonl, *_heatmaps.npy, metrics.json, index.html"),
        "{stdout}"
    );
    assert!(!out_dir.join("overlays").exists());
    assert!(!out_dir.join("s2001_00000.gif").exists());
}

#[test]
fn a_closed_stdout_ends_the_command_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut child = cavsync()
        .current_dir(root)
        .args(["info", "--bundle", "models/demo/bundle"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Close the reading end before the command prints (it loads the bundle first), as
    // `cavsync info ... | head -0` would.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        out.status.code(),
        None,
        "ended by SIGPIPE, not an exit code"
    );
}

#[test]
fn calibrate_reads_the_records_localize_writes() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("demo");
    let out = localize_demo(&out_dir, &["--no-overlays", "--summary-only"]);
    assert!(out.status.success());
    let jsonl = out_dir.join("localization.jsonl");
    let text = std::fs::read_to_string(&jsonl).unwrap();
    let records: Vec<cavsync_core::record::FrameRecord> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 16);
    let sounding: Vec<_> = records
        .iter()
        .filter(|r| r.truth.is_some_and(|t| t.sounding > 0))
        .cloned()
        .collect();
    assert_eq!(
        sounding.len(),
        14,
        "the demo clip has one silent and one off-screen frame"
    );
    let text: String = sounding
        .iter()
        .map(|r| serde_json::to_string(r).unwrap() + "\n")
        .collect();
    let only_sounding = dir.path().join("sounding.jsonl");
    std::fs::write(&only_sounding, &text).unwrap();

    // Only sounding frames: no threshold can be chosen, and the error says why.
    let run = |path: &Path, extra: &[&OsStr]| {
        cavsync()
            .args(["calibrate", "--results"])
            .arg(path)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&only_sounding, &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("needs both sounding and silent frames"),
        "{stderr}"
    );

    // Add silent frames scored below every sounding one: the threshold separates them.
    let min_score = sounding
        .iter()
        .map(|r| r.localization.score)
        .fold(f32::INFINITY, f32::min);
    let mut lines = text.clone();
    for r in &sounding[..4] {
        let mut silent = r.clone();
        silent.localization.score = min_score - 0.5;
        silent.truth = Some(cavsync_core::record::FrameTruth {
            sounding: 0,
            ciou: None,
            pointing_hit: None,
            offscreen: 0,
        });
        lines.push_str(&serde_json::to_string(&silent).unwrap());
        lines.push('\n');
    }
    let mixed = dir.path().join("mixed.jsonl");
    std::fs::write(&mixed, lines).unwrap();
    let out = run(&mixed, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(
            "sounding frames active 100.0% (of 14), silent frames not active 100.0% (of 4)"
        ),
        "{stdout}"
    );
    // The activity head separates them too, and --out writes both for convert --localization.
    let head_line = stdout.lines().find(|l| l.starts_with("head ")).unwrap();
    assert!(
        head_line.ends_with(
            "sounding frames active 100.0% (of 14), silent frames not active 100.0% (of 4)"
        ),
        "{stdout}"
    );
    let calibration = dir.path().join("activity.toml");
    let out = run(&mixed, &["--out".as_ref(), calibration.as_os_str()]);
    assert!(out.status.success());
    let text = std::fs::read_to_string(&calibration).unwrap();
    for field in [
        "active_threshold = ",
        "calibration = ",
        "[activity]",
        "weights = [",
        "bias = ",
    ] {
        assert!(text.contains(field), "{field} not in {text}");
    }

    // --bundle replaces a bundle's [localization] in place; the bundle still loads and runs.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bundle = dir.path().join("bundle");
    std::fs::create_dir(&bundle).unwrap();
    for entry in std::fs::read_dir(root.join("models/demo/bundle")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), bundle.join(entry.file_name())).unwrap();
    }
    let out = run(&mixed, &["--bundle".as_ref(), bundle.as_os_str()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest = std::fs::read_to_string(bundle.join("manifest.toml")).unwrap();
    assert!(
        manifest.contains("of 14), silent frames not active 100.0% (of 4)"),
        "{manifest}"
    );
    let info = cavsync()
        .arg("info")
        .arg("--bundle")
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(
        info.status.success(),
        "{}",
        String::from_utf8_lossy(&info.stderr)
    );
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(
        info.contains(" band_spread ") && info.contains(" floor "),
        "{info}"
    );

    // A folder that is not a bundle is refused before anything is fitted or written.
    let missing = dir.path().join("missing");
    let out = run(&mixed, &["--bundle".as_ref(), missing.as_os_str()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("missing/manifest.toml"), "{stderr}");

    // A record without ground truth is refused with its line number.
    let mut bare = records[0].clone();
    bare.truth = None;
    let plain = dir.path().join("plain.jsonl");
    std::fs::write(&plain, serde_json::to_string(&bare).unwrap()).unwrap();
    let out = run(&plain, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("plain.jsonl:1:") && stderr.contains("--annotations"),
        "{stderr}"
    );
}

#[test]
fn bench_times_compared_bundles_in_the_same_run() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let demo = root.join("models/demo/bundle");
    let out = cavsync()
        .args(["bench", "--iterations", "2", "--bundle"])
        .arg(&demo)
        .arg("--compare")
        .arg(&demo)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("bundle (same run"))
        .skip(1)
        .take_while(|l| !l.starts_with("peak RSS"))
        .collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    let ratio = |row: &str| -> f64 { row.split_whitespace().last().unwrap().parse().unwrap() };
    assert_eq!(ratio(rows[0]), 1.0, "{stdout}");
    // The same bundle twice: the second run's ratio is near 1 (timing noise only).
    assert!((0.3..3.0).contains(&ratio(rows[1])), "{stdout}");
    let missing = root.join("models/none");
    let out = cavsync()
        .args(["bench", "--iterations", "1", "--bundle"])
        .arg(&demo)
        .arg("--compare")
        .arg(&missing)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("models/none"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
