//! `cavsync retrieve` on 20 hard-world clips with the demo model: the official global-token
//! retrieval, and `--patch`, which scores clip pairs as the demo model was trained to match
//! sound to image (the best patch of each aligned frame), well above chance (5%) and above the
//! global tokens.

mod bins;

use std::path::Path;
use std::process::Command;

use cavsync_synth::{SynthConfig, World, write_dataset};

/// R@1 (percent) of audio to visual and visual to audio, from `retrieve`'s table.
fn recall_at_1(datafile: &Path, extra: &[&str]) -> (f64, f64) {
    retrieve(datafile, extra).1
}

/// `retrieve`'s output and its R@1 (percent) of audio to visual and visual to audio.
fn retrieve(datafile: &Path, extra: &[&str]) -> (String, (f64, f64)) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(bins::workspace_binary("cavsync"))
        .env("RUST_LOG", "warn")
        .args(["retrieve", "--threads", "2", "--bundle"])
        .arg(root.join("models/demo/bundle"))
        .arg("--datafile")
        .arg(datafile)
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r1 = |direction: &str| -> f64 {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(direction))
            .unwrap_or_else(|| panic!("no {direction} row in {stdout}"));
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .trim_end_matches('%')
            .parse()
            .unwrap()
    };
    println!("retrieve {extra:?}:\n{stdout}");
    let r1 = (r1("audio->visual"), r1("visual->audio"));
    (stdout.into_owned(), r1)
}

/// R@1 (percent) of a baseline row of `retrieve --annotations`.
fn baseline_r1(stdout: &str, name: &str, direction: &str) -> f64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(name) && l.contains(direction))
        .unwrap_or_else(|| panic!("no {name} {direction} row in {stdout}"));
    line[name.len()..]
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_end_matches('%')
        .parse()
        .unwrap()
}

#[test]
fn patch_scores_retrieve_above_chance_and_above_the_global_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let config = SynthConfig {
        world: World::Hard,
        clips: 20,
        seed: 5151,
        backgrounds: Vec::new(),
        photo_share: 0.0,
    };
    write_dataset(&config, dir.path(), |_| {}).unwrap();
    let datafile = dir.path().join("datafile.json");
    let global = recall_at_1(&datafile, &[]);
    let annotations = dir.path().join("annotations.json");
    let (stdout, patch) = retrieve(
        &datafile,
        &["--patch", "--annotations", annotations.to_str().unwrap()],
    );
    // Baselines: chance is 1 in 20; recognising the classes alone ranks the match first more
    // often, and the patch scores more often still.
    for direction in ["audio->visual", "visual->audio"] {
        assert_eq!(baseline_r1(&stdout, "chance", direction), 5.0, "{stdout}");
    }
    let oracle = (
        baseline_r1(&stdout, "class oracle", "audio->visual"),
        baseline_r1(&stdout, "class oracle", "visual->audio"),
    );
    assert!(oracle.0 > 5.0 && oracle.1 > 5.0, "{oracle:?}");
    assert!(
        patch.0 > oracle.0 && patch.1 > oracle.1,
        "patch {patch:?}, oracle {oracle:?}"
    );
    assert!(patch.0 >= 50.0 && patch.1 >= 50.0, "{patch:?}");
    assert!(
        patch.0 > global.0 && patch.1 > global.1,
        "patch {patch:?}, global {global:?}"
    );
    // The global strategies and --patch are exclusive.
    let out = Command::new(bins::workspace_binary("cavsync"))
        .args(["retrieve", "--patch", "--strategy", "max", "--bundle", "b"])
        .arg("--datafile")
        .arg(&datafile)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot be used with"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
