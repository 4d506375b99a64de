//! Replays every stored fuzz input through the entry point its cargo-fuzz target feeds (see `fuzz/`).
//!
//! Two sets per target: the inputs that once crashed a parser (`tests/data/fuzz/<target>/`),
//! which must now fail with an error that names the file, and the target's minimized corpus
//! (`fuzz/corpus/<target>/`), which must go through without a panic (an error, where there
//! is one, names the file too). The harnesses here mirror `fuzz/fuzz_targets/*.rs`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use cavsync_core::annotations::Annotations;
use cavsync_core::clip::read_datafile;
use cavsync_core::manifest::{MANIFEST_FILE, Manifest, sha256_hex};
use cavsync_core::npy::read_f32;
use cavsync_core::preprocess::audio::read_wav_mono;
use cavsync_core::preprocess::image::{load_rgb, preprocess_rgb};
use cavsync_device::bundle::{Bundle, PlanOptions};
use cavsync_device::device::Device;
use cavsync_firmware_config::BoardProfile;
use cavsync_formats::checkpoint::Checkpoint;
use cavsync_live::pixel::{mjpeg_to_rgb, yuyv_to_rgb};

#[path = "../fuzz/src/live_pcm.rs"]
mod live_pcm;

/// What one harness reports: `Ok`, or the parser's error message.
type Outcome = Result<(), String>;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Writes `bytes` to `dir/name` and returns the path.
fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The stored inputs of `folder`, sorted; none when the folder does not exist.
fn inputs(folder: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs every crash input and corpus input of `target` through `harness`.
///
/// `file` is the scratch file name the parser's errors must contain (`None` for the
/// in-memory live buffers, whose errors name no file); crash inputs must give an error
/// unless `crash_may_pass` (the live audio path has no error to give: its crashes were panics).
fn replay(
    target: &str,
    file: Option<&str>,
    crash_may_pass: bool,
    harness: impl Fn(&Path, &[u8]) -> Outcome,
) {
    let scratch = tempfile::tempdir().unwrap();
    let crashes = inputs(&root().join("tests/data/fuzz").join(target));
    let corpus = inputs(&root().join("fuzz/corpus").join(target));
    assert!(!corpus.is_empty(), "no corpus for fuzz target {target}");
    let mut failures = Vec::new();
    for (input, is_crash) in crashes
        .iter()
        .map(|p| (p, true))
        .chain(corpus.iter().map(|p| (p, false)))
    {
        let bytes = std::fs::read(input).unwrap();
        let outcome = catch_unwind(AssertUnwindSafe(|| harness(scratch.path(), &bytes)));
        let problem = match outcome {
            Err(_) => Some("panicked".to_owned()),
            Ok(Ok(())) if is_crash && !crash_may_pass => {
                Some("passed; a crash input must be refused".to_owned())
            }
            Ok(Err(message)) if file.is_some_and(|f| !message.contains(f)) => {
                Some(format!("error does not name the file: {message}"))
            }
            Ok(_) => None,
        };
        if let Some(problem) = problem {
            failures.push(format!("{}: {problem}", input.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "{target}: {} of {} inputs failed:\n{}",
        failures.len(),
        crashes.len() + corpus.len(),
        failures.join("\n")
    );
}

/// Negotiated width and height from the first four bytes (as the live pixel targets read them), and the rest.
fn dims(data: &[u8]) -> Option<(usize, usize, &[u8])> {
    let (head, rest) = data.split_first_chunk::<4>()?;
    let width = usize::from(u16::from_le_bytes([head[0], head[1]]));
    let height = usize::from(u16::from_le_bytes([head[2], head[3]]));
    Some((width, height, rest))
}

#[test]
fn manifest() {
    replay("manifest", Some(MANIFEST_FILE), false, |dir, bytes| {
        write(dir, MANIFEST_FILE, bytes);
        Manifest::read(dir).map(drop).map_err(|e| e.to_string())
    });
}

#[test]
fn bundle_onnx() {
    let demo = root().join("models/demo/bundle");
    let manifest = Manifest::read(&demo).unwrap();
    let text = std::fs::read_to_string(demo.join(MANIFEST_FILE)).unwrap();
    let visual = std::fs::read(root().join("tests/data/fuzz/bundle_visual.onnx")).unwrap();
    let text = text.replace(&manifest.visual.sha256, &sha256_hex(&visual));
    replay("bundle_onnx", Some("audio.onnx"), false, |dir, bytes| {
        write(dir, &manifest.visual.file, &visual);
        write(dir, "audio.onnx", bytes);
        let text = text.replace(&manifest.audio.sha256, &sha256_hex(bytes));
        write(dir, MANIFEST_FILE, text.as_bytes());
        Bundle::open_on(dir, &PlanOptions::default(), Device::Cpu)
            .map(drop)
            .map_err(|e| e.to_string())
    });
}

#[test]
fn wav() {
    replay("wav", Some("input.wav"), false, |dir, bytes| {
        read_wav_mono(&write(dir, "input.wav", bytes))
            .map(drop)
            .map_err(|e| e.to_string())
    });
}

#[test]
fn image() {
    replay("image", Some("frame.jpg"), false, |dir, bytes| {
        let img = load_rgb(&write(dir, "frame.jpg", bytes)).map_err(|e| e.to_string())?;
        preprocess_rgb(&img);
        Ok(())
    });
}

#[test]
fn npy() {
    replay("npy", Some("input.npy"), false, |dir, bytes| {
        read_f32(&write(dir, "input.npy", bytes))
            .map(drop)
            .map_err(|e| e.to_string())
    });
}

#[test]
fn datafile() {
    replay("datafile", Some("datafile.json"), false, |dir, bytes| {
        read_datafile(&write(dir, "datafile.json", bytes))
            .map(drop)
            .map_err(|e| e.to_string())
    });
}

#[test]
fn annotations() {
    replay(
        "annotations",
        Some("annotations.json"),
        false,
        |dir, bytes| {
            Annotations::read(&write(dir, "annotations.json", bytes))
                .map(drop)
                .map_err(|e| e.to_string())
        },
    );
}

#[test]
fn board_profile() {
    replay("board_profile", Some("board.toml"), false, |dir, bytes| {
        BoardProfile::from_file(&write(dir, "board.toml", bytes))
            .map(drop)
            .map_err(|e| e.to_string())
    });
}

#[test]
fn run_config() {
    let bases = ["pi4", "x86-dev"].map(|b| BoardProfile::bundled(b).unwrap());
    replay("run_config", Some("run.toml"), false, |_, bytes| {
        let Ok(text) = std::str::from_utf8(bytes) else {
            return Err("run.toml: not UTF-8".to_owned());
        };
        for base in &bases {
            base.with_overrides(text, "run.toml")
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    });
}

#[test]
fn checkpoint() {
    replay("checkpoint", Some("checkpoint.pth"), false, |dir, bytes| {
        Checkpoint::load(&write(dir, "checkpoint.pth", bytes))
            .map(drop)
            .map_err(|e| e.to_string())
    });
}

#[test]
fn yuyv() {
    replay("yuyv", None, false, |_, bytes| {
        let Some((width, height, src)) = dims(bytes) else {
            return Err("shorter than the 4-byte size header".to_owned());
        };
        let mut dst = vec![0u8; (src.len() / 2 * 3).min(1 << 20)];
        yuyv_to_rgb(src, width, height, &mut dst).map_err(|e| e.to_string())
    });
}

#[test]
fn mjpeg() {
    replay("mjpeg", None, false, |_, bytes| {
        let Some((width, height, src)) = dims(bytes) else {
            return Err("shorter than the 4-byte size header".to_owned());
        };
        let mut dst = vec![0u8; (width * height * 3).min(1 << 22)];
        mjpeg_to_rgb(src, width, height, &mut dst).map_err(|e| e.to_string())
    });
}

#[test]
fn live_pcm() {
    replay("live_pcm", None, true, |_, bytes| live_pcm::run(bytes));
}
