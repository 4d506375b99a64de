//! `--device`: `auto` runs on the CPU where CUDA is unusable (one warning saying why), `cuda` fails there with one error line.
//!
//! Without the `cuda` feature CUDA is never usable; with it, these tests follow what
//! tract-cuda's driver check says of this machine.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cavsync_core::npy::read_f32;
use cavsync_device::device::cuda_check;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `cavsync ARGS` from the repository root with warnings-only logging.
fn cavsync(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cavsync"))
        .current_dir(root())
        .env("RUST_LOG", "warn")
        .args(args)
        .output()
        .unwrap()
}

fn info_on(device: &str) -> Output {
    cavsync(&["info", "--bundle", "models/demo/bundle", "--device", device])
}

#[test]
fn auto_says_once_why_it_runs_on_the_cpu() {
    let out = info_on("auto");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("verified"));
    match cuda_check() {
        Err(why) => {
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
            assert!(
                stderr.contains("WARN")
                    && stderr.contains("--device auto: CUDA unavailable, running on the CPU: ")
                    && stderr.contains(&why.to_string()),
                "{stderr}"
            );
        }
        Ok(()) => assert!(!stderr.contains("running on the CPU"), "{stderr}"),
    }
    #[cfg(not(feature = "cuda"))]
    assert!(
        stderr.contains("this build has no CUDA support"),
        "{stderr}"
    );
}

#[test]
fn cuda_without_a_usable_gpu_is_one_error_line() {
    let out = info_on("cuda");
    let stderr = String::from_utf8_lossy(&out.stderr);
    match cuda_check() {
        Err(why) => {
            assert_eq!(out.status.code(), Some(1), "{stderr}");
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
            assert!(
                stderr.starts_with("error: --device cuda: ")
                    && stderr.contains("CUDA")
                    && stderr.contains(&why.to_string()),
                "{stderr}"
            );
            assert!(!stderr.contains("panicked"), "{stderr}");
            assert!(out.stdout.is_empty());
        }
        Ok(()) => assert!(out.status.success(), "{stderr}"),
    }
}

#[test]
fn auto_embeds_as_the_cpu_does() {
    let dir = tempfile::tempdir().unwrap();
    let embed = |device: &str| {
        let out_dir = dir.path().join(device);
        let out = cavsync(&[
            "embed",
            "--bundle",
            "models/demo/bundle",
            "--device",
            device,
            "--wav",
            "models/demo/clip/audio/s2001_00000.wav",
            "--frame",
            "3",
            "--image",
            "models/demo/clip/frames/frame_3/s2001_00000.jpg",
            "--out",
            out_dir.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        [
            "audio_global",
            "visual_global",
            "audio_tokens",
            "visual_tokens",
        ]
        .map(|name| read_f32(&out_dir.join(format!("{name}.npy"))).unwrap())
    };
    let cpu = embed("cpu");
    let auto = embed("auto");
    for (c, a) in cpu.iter().zip(&auto) {
        assert_eq!(c.shape(), a.shape());
        if cuda_check().is_err() {
            // The same CPU plan: the same bits.
            assert_eq!(c, a);
        } else {
            // On the GPU: f32 products in another order.
            let scale = c.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            let diff = c
                .iter()
                .zip(a)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max);
            assert!(diff <= 1e-2 * scale, "largest difference {diff} of {scale}");
        }
    }
}

#[test]
fn bench_and_eval_take_the_device_too() {
    let bench = cavsync(&[
        "bench",
        "--bundle",
        "models/demo/bundle",
        "--iterations",
        "1",
        "--device",
        "cuda",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report");
    let eval = cavsync(&[
        "eval",
        "--reference",
        "models/demo/bundle",
        "--candidate",
        "models/demo/bundle",
        "--datafile",
        "models/demo/clip/datafile.json",
        "--report",
        report.to_str().unwrap(),
        "--device",
        "cuda",
    ]);
    for out in [bench, eval] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if cuda_check().is_err() {
            assert_eq!(out.status.code(), Some(1), "{stderr}");
            assert!(stderr.starts_with("error: --device cuda: "), "{stderr}");
            assert!(!stderr.contains("panicked"), "{stderr}");
            assert!(
                !report.exists(),
                "nothing is written when the device cannot be used"
            );
        }
    }
}
