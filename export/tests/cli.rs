//! End-to-end tests of the `cavsync-export` binary: fixture parity through the CLI and clear errors on bad input.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cavsync_core::npy::read_f32;

fn exe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cavsync-export"))
}

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

fn fixture(rel: &str) -> PathBuf {
    repo("tests/data/official/sync_r8_cls").join(rel)
}

fn run(cmd: &mut Command) -> Output {
    cmd.env("RUST_LOG", "warn").output().unwrap()
}

/// A run that must succeed; its stdout.
fn run_ok(cmd: &mut Command) -> String {
    let res = run(cmd);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    String::from_utf8_lossy(&res.stdout).into_owned()
}

/// A failed run: non-zero exit, one `error:` line naming `needle`, no panic or backtrace.
fn assert_clean_failure(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(lines[0].contains(needle), "`{needle}` not in: {stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
}

fn write_safetensors(path: &Path, tensors: &[(&str, Vec<usize>)]) {
    let bufs: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, s)| vec![0u8; 4 * s.iter().product::<usize>()])
        .collect();
    let views: HashMap<String, safetensors::tensor::TensorView<'_>> = tensors
        .iter()
        .zip(&bufs)
        .map(|((n, s), b)| {
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .unwrap();
            (n.to_string(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

#[test]
fn embed_reproduces_official_outputs_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(exe()
        .args(["embed", "--heads", "4", "--checkpoint"])
        .arg(fixture("checkpoint.pth"))
        .arg("--audio-npy")
        .arg(fixture("audio_input.npy"))
        .arg("--image-npy")
        .arg(fixture("image_input.npy"))
        .arg("--out")
        .arg(dir.path()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in [
        "audio_global",
        "audio_tokens",
        "visual_global",
        "visual_tokens",
    ] {
        let got = read_f32(&dir.path().join(format!("{name}.npy"))).unwrap();
        let want = read_f32(&fixture(&format!("{name}.npy"))).unwrap();
        assert_eq!(got.shape(), want.shape(), "{name}");
        let err = got
            .iter()
            .zip(want.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(err <= 1e-4, "{name}: max abs error {err}");
    }
}

#[test]
fn embed_from_wav_and_image_keeps_a_batch_of_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(exe()
        .args(["embed", "--heads", "4", "--frame", "5", "--checkpoint"])
        .arg(fixture("checkpoint.pth"))
        .arg("--wav")
        .arg(repo("runtime/core/tests/data/fbank/speech_a16.wav"))
        .arg("--image")
        .arg(repo("runtime/core/tests/data/image/testsrc_1280x720.jpg"))
        .arg("--out")
        .arg(dir.path()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        read_f32(&dir.path().join("audio_tokens.npy"))
            .unwrap()
            .shape(),
        &[1, 208, 64]
    );
    assert_eq!(
        read_f32(&dir.path().join("visual_global.npy"))
            .unwrap()
            .shape(),
        &[1, 64]
    );
}

#[test]
fn inspect_reports_layout_and_dimensions() {
    let out = run(exe()
        .args(["inspect", "--heads", "4", "--checkpoint"])
        .arg(fixture("checkpoint.pth")));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for needle in [
        "CAV-MAE Sync (global tokens)",
        "dim 64, heads 4",
        "audio 1, visual 1, joint 11",
        "8 per modality",
        "L = 416",
        "decoder           dim 32, depth 1",
    ] {
        assert!(stdout.contains(needle), "`{needle}` not in:\n{stdout}");
    }
    let out = run(exe()
        .args(["inspect", "--checkpoint"])
        .arg(repo("tests/data/official/cavmae_plain/checkpoint.pth")));
    assert!(String::from_utf8_lossy(&out.stdout).contains("original CAV-MAE (no global tokens)"));
}

#[test]
fn truncated_checkpoint_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("checkpoint.pth")).unwrap();
    let cut = dir.path().join("cut.pth");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let out = run(exe().args(["inspect", "--checkpoint"]).arg(&cut));
    assert_clean_failure(&out, "cut.pth");
}

#[test]
fn checkpoint_of_another_model_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("resnet.safetensors");
    write_safetensors(
        &other,
        &[("conv1.weight", vec![8, 3, 7, 7]), ("fc.bias", vec![10])],
    );
    let out = run(exe().args(["inspect", "--checkpoint"]).arg(&other));
    assert_clean_failure(&out, "not a CAV-MAE");
    assert!(String::from_utf8_lossy(&out.stderr).contains("conv1.weight"));
}

#[test]
fn wrong_heads_missing_file_and_bad_media_are_clear_errors() {
    let out = run(exe()
        .args(["inspect", "--heads", "5", "--checkpoint"])
        .arg(fixture("checkpoint.pth")));
    assert_clean_failure(&out, "5 attention heads do not divide");
    let out = run(exe().args(["inspect", "--checkpoint", "/no/such/file.pth"]));
    assert_clean_failure(&out, "/no/such/file.pth");

    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.bin");
    std::fs::write(&junk, b"definitely not media").unwrap();
    let embed = || {
        let mut cmd = exe();
        cmd.args(["embed", "--heads", "4", "--checkpoint"])
            .arg(fixture("checkpoint.pth"))
            .arg("--out")
            .arg(dir.path().join("out"));
        cmd
    };
    let out = run(embed()
        .args(["--frame", "0", "--wav"])
        .arg(&junk)
        .arg("--image-npy")
        .arg(fixture("image_input.npy")));
    assert_clean_failure(&out, "junk.bin");
    let out = run(embed()
        .arg("--audio-npy")
        .arg(fixture("audio_input.npy"))
        .arg("--image")
        .arg(&junk));
    assert_clean_failure(&out, "junk.bin");
    let out = run(embed()
        .arg("--audio-npy")
        .arg(repo("tests/data/official/cavmae_plain/audio_input.npy"))
        .arg("--image-npy")
        .arg(fixture("image_input.npy")));
    assert_clean_failure(&out, "expected [batch, 416, 128]");
    assert!(
        !dir.path().join("out").exists(),
        "nothing is written on failure"
    );
}

#[test]
fn convert_refuses_int8_and_unknown_precisions_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bundle");
    let res = run(exe()
        .args([
            "convert",
            "--heads",
            "4",
            "--precision",
            "int8",
            "--checkpoint",
        ])
        .arg(fixture("checkpoint.pth"))
        .arg("--out")
        .arg(&out));
    assert_clean_failure(&res, "cavsync-export quantize");
    assert!(!out.exists(), "nothing is written for int8");
    let res = run(exe()
        .args(["convert", "--precision", "int4", "--checkpoint"])
        .arg(fixture("checkpoint.pth"))
        .arg("--out")
        .arg(&out));
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success());
    assert!(
        stderr.contains("expected one of: f32, f16, int8"),
        "{stderr}"
    );
}

/// The official fixture checkpoint converted to an f32 bundle at `out`.
fn convert_fixture(out: &Path) {
    let res = run(exe()
        .args(["convert", "--heads", "4", "--checkpoint"])
        .arg(fixture("checkpoint.pth"))
        .arg("--out")
        .arg(out));
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
}

#[test]
fn quantize_writes_an_int8_bundle_and_refuses_what_it_cannot_quantize() {
    let dir = tempfile::tempdir().unwrap();
    let f32_bundle = dir.path().join("f32");
    let int8_bundle = dir.path().join("int8");
    convert_fixture(&f32_bundle);
    let quantize = |src: &Path, extra: &[&str]| {
        run(exe()
            .arg("quantize")
            .arg("--bundle")
            .arg(src)
            .arg("--out")
            .arg(&int8_bundle)
            .args(extra))
    };
    let res = quantize(&f32_bundle, &["--per-channel"]);
    let stdout = String::from_utf8_lossy(&res.stdout);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    assert!(
        stdout.contains("26 integer matmuls, 0 kept f32"),
        "{stdout}"
    );
    assert!(stdout.contains("one scale per output channel"), "{stdout}");
    let manifest = std::fs::read_to_string(int8_bundle.join("manifest.toml")).unwrap();
    assert!(manifest.contains("precision = \"int8\""), "{manifest}");
    assert!(manifest.contains("[quantization]"), "{manifest}");
    // Weights kept in f32 by name, and recorded.
    let res = quantize(&f32_bundle, &["--keep-float", "blocks_a.0.mlp"]);
    let stdout = String::from_utf8_lossy(&res.stdout);
    assert!(
        stdout.contains("24 integer matmuls, 2 kept f32"),
        "{stdout}"
    );
    let manifest = std::fs::read_to_string(int8_bundle.join("manifest.toml")).unwrap();
    assert!(manifest.contains("blocks_a.0.mlp.fc1.weight"), "{manifest}");
    // A name that matches nothing, an int8 source, and a tampered source: clear errors, nothing written.
    std::fs::remove_dir_all(&int8_bundle).unwrap();
    let res = quantize(&f32_bundle, &["--keep-float", "blocks_z"]);
    assert_clean_failure(&res, "--keep-float blocks_z");
    assert!(!int8_bundle.exists());
    let res = quantize(&f32_bundle, &[]);
    assert!(res.status.success());
    let again = dir.path().join("again");
    let res = run(exe()
        .arg("quantize")
        .arg("--bundle")
        .arg(&int8_bundle)
        .arg("--out")
        .arg(&again));
    assert_clean_failure(&res, "quantize takes an f32 bundle");
    assert!(!again.exists());
    let graph = f32_bundle.join("audio.onnx");
    let mut bytes = std::fs::read(&graph).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&graph, bytes).unwrap();
    let res = quantize(&f32_bundle, &[]);
    assert_clean_failure(&res, "audio.onnx");
}

/// A training config small enough for a test: one block per stack, dim 64, 4 clips per batch.
const TINY_TRAIN: &str = "[model]\ndim = 64\ndepth = 1\ndecoder_dim = 32\n\n[optim]\nsteps = 4\nbatch_size = 4\nwarmup_steps = 1\n\n[run]\nseed = 3\ncheckpoint_every = 2\n";

fn synth_data(dir: &Path) {
    let out = run(exe()
        .args(["synth", "--clips", "6", "--seed", "9", "--out"])
        .arg(dir));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn synth_writes_the_datafile_layout_and_ground_truth() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synth_data(&data);
    let datafile: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("datafile.json")).unwrap())
            .unwrap();
    let entries = datafile["data"].as_array().unwrap();
    assert_eq!(entries.len(), 6);
    for e in entries {
        let id = e["video_id"].as_str().unwrap();
        assert!(Path::new(e["wav"].as_str().unwrap()).is_file());
        for k in 0..16 {
            let frame = Path::new(e["video_path"].as_str().unwrap())
                .join(format!("frame_{k}"))
                .join(format!("{id}.jpg"));
            assert_eq!(image::image_dimensions(&frame).unwrap(), (224, 224));
        }
    }
    let ann = cavsync_core::annotations::Annotations::read(&data.join("annotations.json")).unwrap();
    assert_eq!(ann.clips.len(), 6);
    assert!(ann.clips.iter().all(|c| c.frames.len() == 16));
    // Same seed, same bytes.
    let again = dir.path().join("again");
    synth_data(&again);
    let id = entries[2]["video_id"].as_str().unwrap();
    let read = |d: &Path| std::fs::read(d.join("audio").join(format!("{id}.wav"))).unwrap();
    assert_eq!(read(&data), read(&again));
}

#[test]
fn train_writes_official_checkpoints_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synth_data(&data);
    let config = dir.path().join("tiny.toml");
    std::fs::write(&config, TINY_TRAIN).unwrap();
    let train = |out: &Path, extra: &[&str]| {
        let mut cmd = exe();
        cmd.args(["train", "--data"])
            .arg(&data)
            .arg("--out")
            .arg(out)
            .args(extra);
        run_ok(&mut cmd)
    };
    let config_arg = config.to_str().unwrap();

    // Uninterrupted: 4 steps, checkpoints at 2 and 4.
    let full = dir.path().join("full/model.safetensors");
    let stdout = train(&full, &["--config", config_arg]);
    assert!(
        stdout.contains("step      2") && stdout.contains("step      4"),
        "{stdout}"
    );

    // Stopped after 2 steps, then resumed from the files beside the checkpoint.
    let part = dir.path().join("part/model.safetensors");
    let stdout = train(&part, &["--config", config_arg, "--stop-after", "2"]);
    assert!(stdout.contains("stopped after step 2 of 4"), "{stdout}");
    train(&part, &["--resume"]);

    let full_ck = cavsync_formats::checkpoint::Checkpoint::load(&full).unwrap();
    let part_ck = cavsync_formats::checkpoint::Checkpoint::load(&part).unwrap();
    assert_eq!(
        full_ck.tensors, part_ck.tensors,
        "resumed run differs from the uninterrupted one"
    );
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("part/model.safetensors.state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["step"], 4);

    // An ordinary CAV-MAE Sync checkpoint for `inspect`; fixed position embeddings untouched.
    let out = run(exe().arg("inspect").arg("--checkpoint").arg(&full));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("CAV-MAE Sync"),
        "{stdout}"
    );
    let init = cavsync_train::train::init_tensors(
        &cavsync_train::train::TrainConfig::read(&config)
            .unwrap()
            .model_config(),
        3,
    );
    for key in ["pos_embed_a", "pos_embed_v", "decoder_pos_embed_v"] {
        assert_eq!(full_ck.tensors[key], init[key], "{key}");
    }
    assert_ne!(
        full_ck.tensors["blocks_v.0.attn.qkv.weight"],
        init["blocks_v.0.attn.qkv.weight"]
    );

    // A warm start: [run] init continues from a checkpoint's weights with a fresh schedule.
    let warm_config = dir.path().join("warm.toml");
    let warm_text = TINY_TRAIN.replace("steps = 4", "steps = 2").replace(
        "checkpoint_every = 2\n",
        &format!(
            "checkpoint_every = 2\ninit = {:?}\n",
            full.display().to_string()
        ),
    );
    std::fs::write(&warm_config, &warm_text).unwrap();
    let warm = dir.path().join("warm/model.safetensors");
    train(&warm, &["--config", warm_config.to_str().unwrap()]);
    let warm_ck = cavsync_formats::checkpoint::Checkpoint::load(&warm).unwrap();
    let key = "blocks_v.0.attn.qkv.weight";
    let distance = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max)
    };
    let from_init = distance(&warm_ck.tensors[key].data, &init[key].data);
    let from_full = distance(&warm_ck.tensors[key].data, &full_ck.tensors[key].data);
    assert!(
        0.0 < from_full && from_full < from_init,
        "warm start moved {from_full} from its init checkpoint, {from_init} from a fresh init"
    );
    // A checkpoint of another shape is refused, naming it.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, warm_text.replace("dim = 64", "dim = 128")).unwrap();
    let mut cmd = exe();
    cmd.args(["train", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(dir.path().join("bad/model.safetensors"))
        .arg("--config")
        .arg(&bad);
    assert_clean_failure(&run(&mut cmd), "full/model.safetensors");
}

#[test]
fn train_config_errors_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[optim]\nlearning_rate = 1.0\n").unwrap();
    let out = run(exe()
        .args(["train", "--data", "nowhere", "--out"])
        .arg(dir.path().join("m.safetensors"))
        .arg("--config")
        .arg(&config));
    assert_clean_failure(&out, "learning_rate");
    std::fs::write(&config, "[model]\ndim = 100\n").unwrap();
    let out = run(exe()
        .args(["train", "--data", "nowhere", "--out"])
        .arg(dir.path().join("m.safetensors"))
        .arg("--config")
        .arg(&config));
    assert_clean_failure(&out, "model.dim = 100");
    let out = run(exe()
        .args(["train", "--resume", "--data", "nowhere", "--out"])
        .arg(dir.path().join("none.safetensors")));
    assert_clean_failure(&out, "none.safetensors.train.toml");
}

/// The demo clip's datafile rewritten into `dir` with absolute paths, so that it reads from any working directory.
fn demo_datafile(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(repo("models/demo/clip/datafile.json")).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    for entry in json["data"].as_array_mut().unwrap() {
        for key in ["wav", "video_path"] {
            let rel = entry[key].as_str().unwrap().to_string();
            entry[key] = repo(&rel).to_str().unwrap().into();
        }
    }
    let path = dir.join("datafile.json");
    std::fs::write(&path, json.to_string()).unwrap();
    path
}

/// Global embeddings of every frame of the clip of `datafile` through `bundle`.
fn demo_clip_globals(bundle: &Path, datafile: &Path) -> Vec<(Vec<f32>, Vec<f32>)> {
    use cavsync_core::clip;
    use cavsync_core::preprocess::image::load_rgb;
    use cavsync_core::preprocess::segment::FramePosition;
    use cavsync_device::bundle::Bundle;
    use cavsync_device::encode::{FrameEncoder, clip_fbank};

    let bundle = Bundle::open(bundle).unwrap();
    let entries = clip::read_datafile(datafile).unwrap();
    let total = bundle.manifest.audio_preprocessing.total_frames;
    let clip = clip::clip_from_datafile_entry(&entries[0], total).unwrap();
    let mel = clip_fbank(&clip.id, &clip.audio).unwrap();
    let mut encoder = FrameEncoder::new(&bundle);
    clip.frames
        .iter()
        .map(|f| {
            let position = FramePosition {
                index: f.index,
                total_frames: clip.total_frames,
                time_s: f.time_s,
                duration_s: clip.duration_s(),
            };
            let image = load_rgb(&f.path).unwrap();
            let e = encoder
                .encode(mel.view(), clip.alignment, position, &image)
                .unwrap();
            (e.audio.global.clone(), e.visual.global.clone())
        })
        .collect()
}

/// Operator names of the optimised tract plan of a bundle's graph.
fn plan_ops(bundle: &Path, file: &str, input_shape: &[usize]) -> Vec<String> {
    use tract_onnx::prelude::*;
    let plan = tract_onnx::onnx()
        .model_for_path(bundle.join(file))
        .unwrap()
        .with_input_fact(0, f32::fact(input_shape).into())
        .unwrap()
        .into_optimized()
        .unwrap();
    plan.nodes()
        .iter()
        .map(|n| n.op.name().to_string())
        .collect()
}

/// The scale of every static activation quantization of a bundle's graph, in graph order.
fn activation_scales(bundle: &Path, file: &str) -> Vec<f32> {
    use prost::Message;
    let bytes = std::fs::read(bundle.join(file)).unwrap();
    let graph = cavsync_formats::pb::ModelProto::decode(bytes.as_slice())
        .unwrap()
        .graph
        .unwrap();
    graph
        .node
        .iter()
        .filter(|n| n.op_type == "QuantizeLinear")
        .map(|n| {
            let t = graph
                .initializer
                .iter()
                .find(|t| t.name == n.input[1])
                .unwrap();
            f32::from_le_bytes(t.raw_data[..4].try_into().unwrap())
        })
        .collect()
}

#[test]
fn static_quantization_calibrates_on_real_clips_and_keeps_the_outputs() {
    use cavsync_core::manifest::{Manifest, sha256_file};
    use cavsync_core::similarity::cosine;

    let dir = tempfile::tempdir().unwrap();
    let f32_bundle = dir.path().join("f32");
    let int8_bundle = dir.path().join("int8");
    convert_fixture(&f32_bundle);
    let datafile = demo_datafile(dir.path());
    let command = |extra: &[&str]| {
        let mut cmd = exe();
        cmd.arg("quantize")
            .arg("--bundle")
            .arg(&f32_bundle)
            .arg("--out")
            .arg(&int8_bundle)
            .args(extra);
        cmd
    };
    let quantize = |extra: &[&str]| run(&mut command(extra));
    let quantize_ok = |extra: &[&str]| run_ok(&mut command(extra));
    let stdout = quantize_ok(&["--per-channel", "--calibration", datafile.to_str().unwrap()]);
    assert!(
        stdout.contains("static scheme: 26 integer matmuls"),
        "{stdout}"
    );
    assert!(
        stdout.contains("calibrated (minmax) on 16 frames of 1 clips"),
        "{stdout}"
    );
    let manifest = Manifest::read(&int8_bundle).unwrap();
    let q = manifest.quantization.as_ref().unwrap();
    assert_eq!(q.scheme, "static");
    let cal = q.calibration.as_ref().unwrap();
    assert_eq!((cal.clips, cal.frames), (1, 16));
    assert_eq!(cal.datafile_sha256, sha256_file(&datafile).unwrap());

    // Each encoder quantizes with the ranges of its own activations (the graphs share tensor names).
    let minmax_scales = [
        activation_scales(&int8_bundle, "audio.onnx"),
        activation_scales(&int8_bundle, "visual.onnx"),
    ];
    assert!(!minmax_scales[0].is_empty());
    assert_ne!(minmax_scales[0], minmax_scales[1]);

    // Same outputs within int8's error, on the frames it was not calibrated differently for.
    let reference = demo_clip_globals(&f32_bundle, &datafile);
    let quantized = demo_clip_globals(&int8_bundle, &datafile);
    for ((ra, rv), (qa, qv)) in reference.iter().zip(&quantized) {
        assert!(cosine(ra, qa) >= 0.99, "audio {}", cosine(ra, qa));
        assert!(cosine(rv, qv) >= 0.99, "visual {}", cosine(rv, qv));
    }

    // The plan: no run-time range pass, and no zero-point sums beyond the f32 plan's own (LayerNorm).
    for info in [&manifest.audio, &manifest.visual] {
        let int8_ops = plan_ops(&int8_bundle, &info.file, &info.input_shape);
        let f32_ops = plan_ops(&f32_bundle, &info.file, &info.input_shape);
        let count = |ops: &[String], name: &str| ops.iter().filter(|o| o.as_str() == name).count();
        assert!(
            !int8_ops.iter().any(|o| o.contains("DynamicQuantize")),
            "{int8_ops:?}"
        );
        assert!(count(&int8_ops, "QuantizeLinearU8") > 0, "{int8_ops:?}");
        assert_eq!(
            count(&int8_ops, "Reduce<Sum>"),
            count(&f32_ops, "Reduce<Sum>"),
            "{}: zero-point corrections at run time",
            info.file
        );
    }

    // Sensitivity: every weight measured alone, worst first, and those below --keep-below kept in f32 with the reason recorded.
    let stdout = quantize_ok(&[
        "--calibration",
        datafile.to_str().unwrap(),
        "--sensitivity",
        "--sensitivity-frames",
        "2",
        "--keep-below",
        "0.99999",
    ]);
    assert!(
        stdout.contains("sensitivity: global-token cosine with f32"),
        "{stdout}"
    );
    let q = Manifest::read(&int8_bundle).unwrap().quantization.unwrap();
    assert_eq!(q.sensitivity.len(), 26);
    assert!(
        q.sensitivity
            .windows(2)
            .all(|w| w[0].global_cosine <= w[1].global_cosine),
        "worst first"
    );
    for l in &q.sensitivity {
        assert!(
            l.global_cosine > 0.9 && l.global_cosine <= 1.0 + 1e-6,
            "{l:?}"
        );
        assert_eq!(l.kept_float, l.global_cosine < 0.99999, "{l:?}");
        // A joint block's weight is one tensor both encoders use: kept in f32 (in both) when
        // either encoder's measurement falls below the bound.
        let below_in_either = q
            .sensitivity
            .iter()
            .any(|m| m.name == l.name && m.kept_float);
        assert_eq!(q.kept_float.contains(&l.name), below_in_either, "{l:?}");
    }
    assert_eq!(q.quantized_matmuls + q.kept_float.len(), 26);

    // Percentile ranges are recorded as such.
    quantize_ok(&[
        "--calibration",
        datafile.to_str().unwrap(),
        "--method",
        "percentile",
        "--percentile",
        "99.9",
    ]);
    let manifest = Manifest::read(&int8_bundle).unwrap();
    let method = &manifest.quantization.unwrap().calibration.unwrap().method;
    assert_eq!(method, "percentile:99.9");

    // Entropy thresholds only ever clip: no range wider than the values seen, some narrower.
    quantize_ok(&[
        "--per-channel",
        "--calibration",
        datafile.to_str().unwrap(),
        "--method",
        "entropy",
    ]);
    let manifest = Manifest::read(&int8_bundle).unwrap();
    assert_eq!(
        manifest.quantization.unwrap().calibration.unwrap().method,
        "entropy"
    );
    for (file, minmax) in ["audio.onnx", "visual.onnx"].iter().zip(&minmax_scales) {
        let entropy = activation_scales(&int8_bundle, file);
        assert_eq!(entropy.len(), minmax.len());
        assert!(
            entropy.iter().zip(minmax).all(|(e, m)| *e <= m * 1.0001),
            "{file}"
        );
        assert!(
            entropy.iter().zip(minmax).any(|(e, m)| *e < m * 0.99),
            "{file}"
        );
    }
    for ((ra, rv), (qa, qv)) in reference
        .iter()
        .zip(&demo_clip_globals(&int8_bundle, &datafile))
    {
        assert!(cosine(ra, qa) >= 0.99, "entropy audio {}", cosine(ra, qa));
        assert!(cosine(rv, qv) >= 0.99, "entropy visual {}", cosine(rv, qv));
    }

    // Options that contradict each other: clear errors, nothing written.
    std::fs::remove_dir_all(&int8_bundle).unwrap();
    assert_clean_failure(
        &quantize(&["--scheme", "static"]),
        "--scheme static needs --calibration",
    );
    assert_clean_failure(
        &quantize(&[
            "--scheme",
            "dynamic",
            "--calibration",
            datafile.to_str().unwrap(),
        ]),
        "--calibration is for the static scheme",
    );
    assert_clean_failure(
        &quantize(&[
            "--calibration",
            datafile.to_str().unwrap(),
            "--method",
            "percentile",
            "--percentile",
            "30",
        ]),
        "--percentile 30",
    );
    assert_clean_failure(
        &quantize(&["--calibration", "/nonexistent/datafile.json"]),
        "/nonexistent/datafile.json",
    );
    assert!(!int8_bundle.exists());
}

/// A distillation config small enough for a test: the smallest student, 4 pairs per batch.
const TINY_DISTILL: &str = "[student]\ndim = 64\ndepth = 1\njoint_depth = 1\nregisters = 1\nmlp_ratio = 2\n\n[optim]\nsteps = 4\nbatch_size = 4\nwarmup_steps = 1\n\n[data]\nframes_per_clip = 2\n\n[run]\nseed = 5\ncheckpoint_every = 2\n";

#[test]
fn distill_learns_from_a_checkpoint_or_a_bundle_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synth_data(&data);
    let teacher = dir.path().join("teacher.safetensors");
    run_ok(
        exe()
            .args(["random-checkpoint", "--dim", "128", "--depth", "11"])
            .args([
                "--registers",
                "2",
                "--audio-length",
                "32",
                "--seed",
                "4",
                "--out",
            ])
            .arg(&teacher),
    );
    let config = dir.path().join("distill.toml");
    std::fs::write(&config, TINY_DISTILL).unwrap();
    let distill = |out: &Path, extra: &[&str]| {
        let mut cmd = exe();
        cmd.args(["distill", "--data"])
            .arg(&data)
            .arg("--out")
            .arg(out)
            .args(extra);
        run_ok(&mut cmd)
    };
    let teacher_arg = teacher.to_str().unwrap();
    let config_arg = config.to_str().unwrap();

    // Uninterrupted from the checkpoint teacher: cost printed, cache filled once.
    let full = dir.path().join("full/student.safetensors");
    let stdout = distill(&full, &["--teacher", teacher_arg, "--config", config_arg]);
    assert!(stdout.contains("GFLOP per frame pair"), "{stdout}");
    assert!(
        stdout.contains("teacher cache: 12 pairs (2 frames x 6 clips)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("step      4") && stdout.contains("peak memory"),
        "{stdout}"
    );

    // Stopped after 2 steps, resumed without the teacher (its cache is beside the checkpoint).
    let part = dir.path().join("part/student.safetensors");
    let stdout = distill(
        &part,
        &[
            "--teacher",
            teacher_arg,
            "--config",
            config_arg,
            "--stop-after",
            "2",
        ],
    );
    assert!(stdout.contains("stopped after step 2 of 4"), "{stdout}");
    let stdout = distill(&part, &["--resume"]);
    assert!(
        !stdout.contains("teacher cache:"),
        "cache recomputed: {stdout}"
    );
    let load = |p: &Path| {
        cavsync_formats::checkpoint::Checkpoint::load(p)
            .unwrap()
            .tensors
    };
    assert_eq!(
        load(&full),
        load(&part),
        "resumed run differs from the uninterrupted one"
    );
    let proj = |p: &Path| {
        let mut name = p.as_os_str().to_os_string();
        name.push(".proj.safetensors");
        load(Path::new(&name))
    };
    assert_eq!(proj(&full), proj(&part));

    // The student is an ordinary CAV-MAE Sync checkpoint: inspect and convert take it.
    let out = run(exe().arg("inspect").arg("--checkpoint").arg(&full));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("dim 64"),
        "{stdout}"
    );
    let bundle = dir.path().join("student-bundle");
    run_ok(
        exe()
            .arg("convert")
            .arg("--checkpoint")
            .arg(&full)
            .arg("--out")
            .arg(&bundle),
    );
    let manifest = std::fs::read_to_string(bundle.join("manifest.toml")).unwrap();
    assert!(manifest.contains("gflops_per_pair"), "{manifest}");

    // A bundle teacher (the runtime's ONNX graphs) fills the same cache as the burn encoders,
    // within f16 storage and the 6e-6 encoder parity.
    let teacher_bundle = dir.path().join("teacher-bundle");
    run_ok(
        exe()
            .arg("convert")
            .arg("--checkpoint")
            .arg(&teacher)
            .arg("--out")
            .arg(&teacher_bundle),
    );
    let from_bundle = dir.path().join("from-bundle/student.safetensors");
    let stdout = distill(
        &from_bundle,
        &[
            "--teacher",
            teacher_bundle.to_str().unwrap(),
            "--config",
            config_arg,
            "--stop-after",
            "1",
        ],
    );
    assert!(stdout.contains("teacher cache: 12 pairs"), "{stdout}");
    let cache = |ck: &Path| {
        let mut name = ck.as_os_str().to_os_string();
        name.push(".teacher.safetensors");
        cavsync_train::distill::TeacherCache::load(Path::new(&name)).unwrap()
    };
    let (a, b) = (cache(&full), cache(&from_bundle));
    assert_eq!(a.pairs, b.pairs);
    assert_eq!(a.shape, b.shape);
    for i in 0..a.pairs.len() {
        let (x, y) = (a.pair(i), b.pair(i));
        for (u, v) in [
            (&x.global_a, &y.global_a),
            (&x.tokens_a, &y.tokens_a),
            (&x.global_v, &y.global_v),
            (&x.tokens_v, &y.tokens_v),
        ] {
            let worst = u
                .iter()
                .zip(v)
                .map(|(p, q)| (p - q).abs() / p.abs().max(1.0))
                .fold(0.0f32, f32::max);
            assert!(
                worst < 2e-3,
                "pair {i}: bundle and checkpoint teachers differ by {worst}"
            );
        }
    }

    // Clear errors: an unknown preset, a bad weight, a run with nothing to resume.
    let mut cmd = exe();
    cmd.args([
        "distill",
        "--student",
        "huge",
        "--teacher",
        teacher_arg,
        "--data",
    ])
    .arg(&data)
    .arg("--out")
    .arg(dir.path().join("x.safetensors"));
    assert_clean_failure(&run(&mut cmd), "--student huge");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[loss]\naffinity = -1.0\n").unwrap();
    let mut cmd = exe();
    cmd.args(["distill", "--teacher", teacher_arg, "--config"])
        .arg(&bad)
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(dir.path().join("y.safetensors"));
    assert_clean_failure(&run(&mut cmd), "loss weights");
    let mut cmd = exe();
    cmd.args(["distill", "--resume", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(dir.path().join("none.safetensors"));
    assert_clean_failure(&run(&mut cmd), "none.safetensors.distill.toml");
}
