//! Kill at a random moment: `convert`, `quantize`, `train`, `distill` and `localize` are each
//! killed (SIGKILL) at random points of their run, then everything they left under its final
//! name must be complete (bundles verify, checkpoints load, reports parse), a training or
//! distillation run must continue with `--resume` to the same weights as an uninterrupted run,
//! and the next run must sweep the temporary files the killed one left.
//!
//! `CAVSYNC_KILLS` sets the kills per command (default 3) and `CAVSYNC_KILL_SEED` the seed of the
//! kill times (default 2026); both are printed, so a failure can be replayed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use cavsync_device::bundle::Bundle;

mod bins;

/// The repository root.
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A tool binary of the workspace, beside this test executable (`target/<profile>/deps/..`).
fn tool(name: &str) -> Command {
    let mut cmd = Command::new(bins::workspace_binary(name));
    cmd.current_dir(root())
        .env("RUST_LOG", "error")
        .stdin(Stdio::null());
    cmd
}

/// Runs `cmd` to completion; panics with its stderr when it fails.
fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `cmd` and returns how long it took.
fn timed(cmd: &mut Command) -> Duration {
    let t0 = Instant::now();
    run_ok(cmd);
    t0.elapsed()
}

/// Starts `cmd` and kills it with SIGKILL after `after`; true if it was still running then.
fn kill_after(cmd: &mut Command, after: Duration) -> bool {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + after;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let killed = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    child.wait().unwrap();
    killed
}

/// Kill times: xorshift64 over [0, span).
struct KillClock(u64);

impl KillClock {
    fn next(&mut self, span: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        span.mul_f64((self.0 >> 11) as f64 / (1u64 << 53) as f64)
    }
}

/// Kills per command and the kill clock, from the environment.
fn settings() -> (usize, KillClock) {
    let kills = std::env::var("CAVSYNC_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let seed: u64 = std::env::var("CAVSYNC_KILL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2026);
    eprintln!("kill test: {kills} kills per command, seed {seed}");
    (kills, KillClock(seed.max(1)))
}

fn sha256(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    format!("{:x}", Sha256::digest(&bytes))
}

/// Names beside `out` that only a killed writer leaves (temporary files and directories).
fn leftovers(out: &Path) -> Vec<String> {
    let name = out.file_name().unwrap().to_str().unwrap();
    std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().into_string().ok())
        .filter(|f| {
            f.starts_with(name)
                && (f.ends_with(".partial")
                    || f.contains(".partial-")
                    || f.contains(".old-")
                    || f.ends_with(".next"))
        })
        .collect()
}

/// A bundle directory is absent or verifies and opens.
fn bundle_absent_or_whole(dir: &Path) -> &'static str {
    if !dir.exists() {
        return "absent";
    }
    Bundle::open(dir)
        .unwrap_or_else(|e| panic!("{}: a killed run left it broken: {e}", dir.display()));
    "complete"
}

/// Tally of what the kills left.
#[derive(Default)]
struct Tally {
    killed: usize,
    finished_first: usize,
    absent: usize,
    complete: usize,
}

impl Tally {
    fn add(&mut self, killed: bool, state: &str) {
        if killed {
            self.killed += 1;
        } else {
            self.finished_first += 1;
        }
        match state {
            "absent" => self.absent += 1,
            _ => self.complete += 1,
        }
    }

    fn report(&self, what: &str) {
        eprintln!(
            "{what}: {} killed ({} finished before the kill); outputs afterwards: {} absent, {} complete, 0 corrupt",
            self.killed, self.finished_first, self.absent, self.complete
        );
    }
}

/// One bundle-writing command killed repeatedly, into an empty place and over a complete bundle.
fn bundle_writer(what: &str, make: &dyn Fn(&Path) -> Command) {
    let (kills, mut clock) = settings();
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("reference");
    let span = timed(&mut make(&reference)).mul_f64(0.9);
    let mut tally = Tally::default();
    for i in 0..kills {
        let out = dir.path().join(format!("out{i}"));
        if i % 2 == 1 {
            // Replacing a complete bundle: the old one or the new one, never a mix.
            run_ok(&mut make(&out));
        }
        let killed = kill_after(&mut make(&out), clock.next(span));
        tally.add(killed, bundle_absent_or_whole(&out));
        run_ok(&mut make(&out));
        bundle_absent_or_whole(&out);
        assert_eq!(leftovers(&out), Vec::<String>::new(), "not swept");
    }
    tally.report(what);
}

#[test]
fn convert_killed_leaves_a_whole_bundle_or_none() {
    let fixture = root().join("tests/data/official/sync_r8_cls/checkpoint.pth");
    bundle_writer("convert", &|out| {
        let mut c = tool("cavsync-export");
        c.args(["convert", "--heads", "1", "--checkpoint"])
            .arg(&fixture)
            .arg("--out")
            .arg(out);
        c
    });
}

#[test]
fn quantize_killed_leaves_a_whole_bundle_or_none() {
    bundle_writer("quantize", &|out| {
        let mut c = tool("cavsync-export");
        c.args([
            "quantize",
            "--bundle",
            "models/demo/bundle",
            "--calibration",
            "models/demo/clip/datafile.json",
            "--out",
        ])
        .arg(out);
        c
    });
}

/// A training-like command (`train` or `distill`) killed at random points of a fresh run; then resumed (or, when it never saved, started again) to the end must give the uninterrupted run's weights.
fn resumable(what: &str, config: &str, extra: &[&str]) {
    let (kills, mut clock) = settings();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    run_ok(
        tool("cavsync-export")
            .args(["synth", "--clips", "6", "--seed", "9", "--out"])
            .arg(&data),
    );
    let config_path = dir.path().join("run.toml");
    std::fs::write(&config_path, config).unwrap();
    let fresh = |out: &Path| {
        let mut c = tool("cavsync-export");
        c.arg(what)
            .arg("--data")
            .arg(&data)
            .arg("--config")
            .arg(&config_path)
            .args(extra)
            .arg("--out")
            .arg(out);
        c
    };
    let resume = |out: &Path| {
        let mut c = tool("cavsync-export");
        c.arg(what)
            .arg("--data")
            .arg(&data)
            .arg("--resume")
            .arg("--out")
            .arg(out);
        c
    };
    let reference = dir.path().join("reference/ck.safetensors");
    std::fs::create_dir_all(reference.parent().unwrap()).unwrap();
    let span = timed(&mut fresh(&reference));
    let expected = sha256(&reference);
    let state = |ck: &Path| {
        let mut name = ck.as_os_str().to_owned();
        name.push(".state.json");
        PathBuf::from(name)
    };
    let mut tally = Tally::default();
    let mut resumed = 0;
    for i in 0..kills {
        let ck = dir.path().join(format!("run{i}/ck.safetensors"));
        std::fs::create_dir_all(ck.parent().unwrap()).unwrap();
        let killed = kill_after(&mut fresh(&ck), clock.next(span));
        if state(&ck).exists() {
            tally.add(killed, "complete");
            resumed += 1;
            run_ok(&mut resume(&ck));
        } else {
            assert!(
                !ck.exists(),
                "{}: a checkpoint without its run state",
                ck.display()
            );
            tally.add(killed, "absent");
            run_ok(&mut fresh(&ck));
        }
        assert_eq!(
            sha256(&ck),
            expected,
            "{what} run {i}: the weights differ from the uninterrupted run's"
        );
        assert_eq!(leftovers(&ck), Vec::<String>::new(), "not swept");
    }
    tally.report(what);
    eprintln!(
        "{what}: {resumed} of {kills} continued with --resume to the uninterrupted weights, the others restarted"
    );
}

#[test]
fn train_killed_resumes_to_the_uninterrupted_weights() {
    resumable(
        "train",
        "[model]\ndim = 64\ndepth = 1\ndecoder_dim = 32\n\n[optim]\nsteps = 6\nbatch_size = 4\nwarmup_steps = 1\n\n[run]\nseed = 3\ncheckpoint_every = 1\n",
        &[],
    );
}

#[test]
fn distill_killed_resumes_to_the_uninterrupted_weights() {
    resumable(
        "distill",
        "[student]\ndim = 64\ndepth = 1\njoint_depth = 1\nregisters = 1\nmlp_ratio = 2\n\n[optim]\nsteps = 6\nbatch_size = 4\nwarmup_steps = 1\n\n[data]\nframes_per_clip = 2\n\n[run]\nseed = 5\ncheckpoint_every = 1\n",
        &["--teacher", "models/demo/bundle"],
    );
}

/// Every file under `dir` (temporary names aside) is complete for its kind.
fn outputs_whole(dir: &Path) -> usize {
    let mut checked = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if path.is_dir() {
            checked += outputs_whole(&path);
            continue;
        }
        if name.ends_with(".partial") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let whole = match ext {
            "json" => serde_json::from_slice::<serde_json::Value>(&bytes).is_ok(),
            "jsonl" => {
                bytes.ends_with(b"\n")
                    && bytes
                        .split(|&b| b == b'\n')
                        .filter(|l| !l.is_empty())
                        .all(|l| serde_json::from_slice::<serde_json::Value>(l).is_ok())
            }
            "png" | "gif" => image::load_from_memory(&bytes).is_ok(),
            "npy" => cavsync_core::npy::read_f32(&path).is_ok(),
            "html" => String::from_utf8_lossy(&bytes)
                .trim_end()
                .ends_with("</html>"),
            other => panic!("{}: unexpected output kind {other:?}", path.display()),
        };
        assert!(whole, "{}: a killed run left it incomplete", path.display());
        checked += 1;
    }
    checked
}

#[test]
fn localize_killed_leaves_only_whole_files() {
    let (kills, mut clock) = settings();
    let dir = tempfile::tempdir().unwrap();
    let make = |out: &Path| {
        let mut c = tool("cavsync");
        c.args([
            "localize",
            "--bundle",
            "models/demo/bundle",
            "--datafile",
            "models/demo/clip/datafile.json",
            "--annotations",
            "models/demo/clip/annotations.json",
            "--summary-only",
            "--out",
        ])
        .arg(out);
        c
    };
    let span = timed(&mut make(&dir.path().join("reference")));
    let mut files = 0;
    let mut tally = Tally::default();
    for i in 0..kills {
        let out = dir.path().join(format!("out{i}"));
        let killed = kill_after(&mut make(&out), clock.next(span));
        let n = outputs_whole(&out);
        files += n;
        tally.add(killed, if n == 0 { "absent" } else { "complete" });
        run_ok(&mut make(&out));
        outputs_whole(&out);
        let partial: Vec<_> = walk(&out)
            .into_iter()
            .filter(|p| p.to_string_lossy().ends_with(".partial"))
            .collect();
        assert!(partial.is_empty(), "not swept: {partial:?}");
    }
    tally.report("localize");
    eprintln!("localize: {files} files left by killed runs, each complete");
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
