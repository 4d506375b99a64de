//! End-to-end tests of `cavsync run`: a live run on the demo clip through ffmpeg sources (real processes, real pacing), checked against offline localization of the same frames and audio, against the clip's annotations, and for clean stops, reopened sources and clear errors.
//!
//! Needs the `ffmpeg` executable (CI installs it); without it the tests say so and pass.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cavsync_core::annotations::Annotations;
use cavsync_core::localize::{AudioDescriptor, FrameSize};
use cavsync_core::preprocess::audio::load_wav_16k;
use cavsync_core::preprocess::image::ImagePreprocessor;
use cavsync_core::preprocess::segment::{NORM_MEAN, NORM_STD};
use cavsync_device::bundle::{Bundle, PlanOptions};
use cavsync_device::encode::clip_fbank;
use cavsync_device::session::FrameLocalizer;
use serde_json::Value;

/// Frames per second of the test video.
const FPS: f64 = 30.0;
/// Seconds per frame of the synthetic clip (16 frames in 10 s).
const CLIP_FRAME_S: f64 = 0.625;
/// The demo clip's id.
const ID: &str = "s2001_00000";
/// Side of the synthetic frames (the camera is configured to match, so nothing is cropped).
const SIDE: usize = 224;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn have_ffmpeg() -> bool {
    let ok = Command::new("ffmpeg").arg("-version").output().is_ok();
    if !ok {
        eprintln!("ffmpeg not installed: the live test did not run");
    }
    ok
}

fn ffmpeg(args: &[&str]) {
    let status = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "ffmpeg {args:?}");
}

/// The demo clip as a 30 fps MJPEG AVI (each of its 16 frames held 0.625 s) with its audio in 10 ms packets, cut to `seconds`.
fn demo_video(dir: &Path, seconds: f64) -> PathBuf {
    let clip = root().join("models/demo/clip");
    for k in 0..16 {
        std::fs::copy(
            clip.join(format!("frames/frame_{k}/{ID}.jpg")),
            dir.join(format!("f_{k}.jpg")),
        )
        .unwrap();
    }
    let out = dir.join("clip.avi");
    let pattern = dir.join("f_%d.jpg");
    let wav = clip.join(format!("audio/{ID}.wav"));
    ffmpeg(&[
        "-framerate",
        "1.6",
        "-start_number",
        "0",
        "-i",
        pattern.to_str().unwrap(),
        "-i",
        wav.to_str().unwrap(),
        "-vf",
        "fps=30",
        "-c:v",
        "mjpeg",
        "-q:v",
        "2",
        "-af",
        "asetnsamples=n=160",
        "-c:a",
        "pcm_s16le",
        "-t",
        &seconds.to_string(),
        out.to_str().unwrap(),
    ]);
    out
}

/// A profile override for square synthetic frames at 30 fps.
fn config(dir: &Path) -> PathBuf {
    let path = dir.join("camera.toml");
    std::fs::write(
        &path,
        format!("[camera]\nwidth = {SIDE}\nheight = {SIDE}\nfps = 30\n"),
    )
    .unwrap();
    path
}

fn cavsync() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cavsync"));
    c.env("RUST_LOG", "warn");
    c
}

/// `cavsync run` on `video` (audio and frames) with the square-camera config, writing JSON lines to `out`, plus `extra` arguments.
fn live_run(dir: &Path, video: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = cavsync();
    c.current_dir(root())
        .args(["run", "--threads", "1"])
        .arg("--config")
        .arg(config(dir))
        .arg("--video")
        .arg(format!("ffmpeg:{}", video.display()))
        .arg("--audio")
        .arg(format!("ffmpeg:{}", video.display()))
        .arg("--out")
        .arg(format!("file:{}", out.display()))
        .args(extra);
    c
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The video's frames as ffmpeg decodes them offline (same decoder and scaling as the live source).
fn decoded_frames(video: &Path) -> Vec<image::RgbImage> {
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-i"])
        .arg(video)
        .args(["-an", "-vf", &format!("scale={SIDE}:{SIDE}")])
        .args([
            "-fps_mode",
            "passthrough",
            "-pix_fmt",
            "rgb24",
            "-f",
            "rawvideo",
            "pipe:1",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    out.stdout
        .chunks_exact(SIDE * SIDE * 3)
        .map(|c| image::RgbImage::from_raw(SIDE as u32, SIDE as u32, c.to_vec()).unwrap())
        .collect()
}

/// Whether normalised point (x, y) lies in any of `boxes`.
fn inside(x: f64, y: f64, boxes: &[[f32; 4]]) -> bool {
    boxes.iter().any(|b| {
        x >= f64::from(b[0]) && x < f64::from(b[2]) && y >= f64::from(b[1]) && y < f64::from(b[3])
    })
}

#[test]
fn a_live_run_equals_offline_localization_and_tracks_the_sounding_objects() {
    if !have_ffmpeg() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let video = demo_video(dir.path(), 10.0);
    let out = dir.path().join("live.jsonl");
    let summary = dir.path().join("summary.json");
    let status = live_run(
        dir.path(),
        &video,
        &out,
        &["--duration", "11", "--report-every", "2"],
    )
    .arg("--summary")
    .arg(&summary)
    .status()
    .unwrap();
    assert!(status.success());
    let summary = read_json(&summary);
    let counters = &summary["counters"];
    let captured = counters["frames_captured"].as_u64().unwrap();
    let records = read_lines(&out);
    eprintln!(
        "live: {captured} frames captured, {} processed, {} dropped, {} late; summary {summary}",
        records.len(),
        counters["frames_dropped"],
        counters["frames_late"]
    );
    assert!(
        captured >= 280,
        "the 10 s source gives 300 frames: {captured}"
    );
    assert!(
        records.len() as u64 * 2 >= captured,
        "most frames processed (timing on a loaded machine is checked by scripts/live_check.sh)"
    );
    // The allocation pool served the run: once warm, frames reuse blocks instead of reaching fresh
    // memory (a one-off event, the first late frame or report line, may still carve a block).
    let memory = &summary["memory"];
    let steady = memory["steady_frames"].as_u64().unwrap();
    assert_eq!(memory["pool"]["engaged"], true, "{memory}");
    assert!(
        steady > 0 && memory["steady_reused"].as_u64().unwrap() > steady * 100,
        "{memory}"
    );
    assert!(
        memory["steady_fresh"].as_u64().unwrap() * 4 <= steady,
        "{memory}"
    );

    // Offline: the same frames and audio through the offline path, segment for segment.
    let bundle = Bundle::open_with(
        &root().join("models/demo/bundle"),
        &PlanOptions { threads: 1 },
    )
    .unwrap();
    let frames = decoded_frames(&video);
    let samples = load_wav_16k(&root().join(format!("models/demo/clip/audio/{ID}.wav"))).unwrap();
    let mel = clip_fbank(ID, &samples).unwrap();
    let mut localizer = FrameLocalizer::new(&bundle).unwrap();
    let mut images = ImagePreprocessor::new();
    let mut image = vec![0.0; 3 * 224 * 224];
    let size = FrameSize {
        width: SIDE,
        height: SIDE,
    };
    let truth = Annotations::read(&root().join("models/demo/clip/annotations.json")).unwrap();
    let clip = truth.clip(ID).unwrap();
    let (mut same, mut compared, mut repaired) = (0, 0, 0);
    let (mut sounding, mut offline_hits, mut track_hits) = (0, 0, 0);
    for r in &records {
        let seq = r["timeStamp"].as_u64().unwrap() as usize;
        let Some(frame) = frames.get(seq) else {
            continue;
        };
        let (start, end) = (
            r["segment"][0].as_i64().unwrap(),
            r["segment"][1].as_i64().unwrap(),
        );
        if end > mel.nrows() as i64 {
            continue;
        }
        // A segment holding audio the source did not deliver (it ended and was reopened, as a
        // file does at its end) is flagged and, if faulty, not encoded: offline has the real
        // audio there, so such frames are not comparable.
        if r["audio_flagged"].as_bool() != Some(false) || !r["audio_fault"].is_null() {
            repaired += 1;
            continue;
        }
        let mut segment = Vec::new();
        for row in start..end {
            if row < 0 {
                segment.extend(std::iter::repeat_n((0.0 - NORM_MEAN) / NORM_STD, 128));
            } else {
                segment.extend(
                    mel.row(row as usize)
                        .iter()
                        .map(|v| (v - NORM_MEAN) / NORM_STD),
                );
            }
        }
        let descriptor = AudioDescriptor::of(&segment, 128);
        let audio = bundle.embed_audio(&segment).unwrap();
        images.run_into(frame, &mut image).unwrap();
        let visual = bundle.embed_visual(&image).unwrap();
        let loc = localizer
            .localize_pair(&audio, descriptor, &visual, size)
            .unwrap();
        let offline_peak = loc
            .peaks
            .first()
            .map(|p| (f64::from(p.x) / SIDE as f64, f64::from(p.y) / SIDE as f64));
        let live_peak = r["peak"]
            .as_array()
            .map(|p| (p[0].as_f64().unwrap(), p[1].as_f64().unwrap()));
        compared += 1;
        let close = match (offline_peak, live_peak) {
            (Some(a), Some(b)) => {
                (a.0 - b.0).abs() <= 0.5 / SIDE as f64 && (a.1 - b.1).abs() <= 0.5 / SIDE as f64
            }
            (None, None) => true,
            _ => false,
        };
        if !close {
            eprintln!(
                "frame {seq}, rows {start}..{end}: live peak {live_peak:?}, offline {offline_peak:?}"
            );
        }
        same += usize::from(close);

        // Ground truth of the synthetic frame on screen.
        let k = ((seq as f64 / FPS) / CLIP_FRAME_S).floor() as usize;
        let gt = &clip.frames[k.min(clip.frames.len() - 1)];
        let boxes: Vec<[f32; 4]> = gt.sounding.iter().map(|o| o.bbox).collect();
        if boxes.is_empty() {
            continue;
        }
        sounding += 1;
        if let Some((x, y)) = offline_peak {
            offline_hits += usize::from(inside(x, y, &boxes));
        }
        let best = r["src"].as_array().unwrap().iter().max_by(|a, b| {
            a["activity"]
                .as_f64()
                .unwrap()
                .total_cmp(&b["activity"].as_f64().unwrap())
        });
        if let Some(t) = best {
            track_hits += usize::from(inside(
                t["x"].as_f64().unwrap(),
                t["y"].as_f64().unwrap(),
                &boxes,
            ));
        }
    }
    let agreement = same as f64 / compared.max(1) as f64;
    let offline_pointing = offline_hits as f64 / sounding.max(1) as f64;
    let track_pointing = track_hits as f64 / sounding.max(1) as f64;
    eprintln!(
        "same peak as offline in {same}/{compared} frames ({:.1}%; {repaired} with repaired audio left out); pointing over {sounding} sounding frames: offline peaks {:.1}%, live tracks {:.1}%",
        100.0 * agreement,
        100.0 * offline_pointing,
        100.0 * track_pointing
    );
    assert!(compared >= 100, "{compared} frames compared");
    assert!(
        repaired * 10 <= compared,
        "{repaired} frames with repaired audio against {compared} compared"
    );
    assert!(
        agreement >= 0.99,
        "live and offline peaks agree in {agreement}"
    );
    assert!(
        track_pointing >= offline_pointing - 0.05,
        "tracks point at {track_pointing}, offline peaks at {offline_pointing}"
    );
}

#[test]
fn sigterm_stops_within_a_second_with_outputs_flushed() {
    if !have_ffmpeg() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let video = demo_video(dir.path(), 10.0);
    let out = dir.path().join("live.jsonl");
    let mut child = live_run(dir.path(), &video, &out, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let sent = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "still running 5 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = sent.elapsed();
    eprintln!("exited {status} {took:?} after SIGTERM");
    assert!(status.success());
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let records = read_lines(&out);
    assert!(
        records.len() > 20,
        "{} lines, each complete JSON",
        records.len()
    );
}

#[test]
fn a_source_that_ends_is_reopened() {
    if !have_ffmpeg() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let video = demo_video(dir.path(), 2.0);
    let out = dir.path().join("live.jsonl");
    let summary = dir.path().join("summary.json");
    let status = live_run(dir.path(), &video, &out, &["--duration", "5"])
        .arg("--summary")
        .arg(&summary)
        .status()
        .unwrap();
    assert!(status.success());
    let summary = read_json(&summary);
    let c = &summary["counters"];
    eprintln!("{c}");
    assert!(c["video_reopens"].as_u64().unwrap() >= 1, "{c}");
    assert!(c["audio_reopens"].as_u64().unwrap() >= 1, "{c}");
    assert!(c["audio_gap_samples"].as_u64().unwrap() > 0, "{c}");
    let last = read_lines(&out)
        .iter()
        .filter_map(|r| r["time_s"].as_f64())
        .fold(0.0, f64::max);
    assert!(last > 2.5, "frames after the reopen: last at {last} s");
}

#[test]
fn absent_sources_and_mismatched_profiles_give_one_clear_error() {
    let run = |args: &[&str]| {
        let out = cavsync()
            .current_dir(root())
            .arg("run")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, err) = run(&[
        "--video",
        "v4l2:/dev/video-cavsync-none",
        "--audio",
        "ffmpeg:x.wav",
    ]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("v4l2:/dev/video-cavsync-none") && err.contains("no such device"),
        "{err}"
    );
    let (code, err) = run(&[
        "--audio",
        "alsa:cavsync_no_such_pcm",
        "--video",
        "v4l2:/dev/null",
    ]);
    assert_eq!(code, Some(1));
    assert!(err.contains("alsa:cavsync_no_such_pcm"), "{err}");
    let (code, err) = run(&["--board", "pi5", "--bundle", "models/demo/bundle"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("pi5") && err.contains("`precision`") && err.contains("int8"),
        "{err}"
    );
    // A GPU board's profile: CUDA where usable, else the CPU with one warning saying why.
    let (code, err) = run(&["--board", "jetson-orin", "--bundle", "models/demo/bundle"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("jetson-orin") && err.contains("`precision`") && err.contains("f16"),
        "{err}"
    );
    let fell_back =
        "board profile jetson-orin: accelerator cuda: CUDA unavailable, running on the CPU";
    assert_eq!(
        err.contains(fell_back),
        cavsync_device::device::cuda_check().is_err(),
        "{err}"
    );
    let (code, err) = run(&["--audio", "pulse:x"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("pulse:x") && err.contains("alsa:PCM"), "{err}");
    let (code, err) = run(&[
        "--out", "mqtt://x", "--audio", "ffmpeg:a", "--video", "ffmpeg:b",
    ]);
    assert_eq!(code, Some(1));
    assert!(err.contains("mqtt://x"), "{err}");
}

#[test]
fn audio_faults_are_flagged_counted_and_never_encoded() {
    if !have_ffmpeg() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let video = demo_video(dir.path(), 6.0);
    // The demo clip's audio with 1 s clipped hard at full scale (2.0 to 3.0 s) and 0.5 s of NaN (4.0 to 4.5 s).
    let wav = root().join(format!("models/demo/clip/audio/{ID}.wav"));
    let mut x = load_wav_16k(&wav).unwrap();
    x.truncate(96_000);
    for (i, s) in x[32_000..48_000].iter_mut().enumerate() {
        *s = if (i / 40) % 2 == 0 { 1.0 } else { -1.0 };
    }
    x[64_000..72_000].fill(f32::NAN);
    let raw = dir.path().join("faulty.f32");
    std::fs::write(
        &raw,
        x.iter().flat_map(|s| s.to_le_bytes()).collect::<Vec<_>>(),
    )
    .unwrap();
    let faulty = dir.path().join("faulty.wav");
    ffmpeg(&[
        "-f",
        "f32le",
        "-ar",
        "16000",
        "-ac",
        "1",
        "-i",
        raw.to_str().unwrap(),
        "-c:a",
        "pcm_f32le",
        faulty.to_str().unwrap(),
    ]);
    let out = dir.path().join("live.jsonl");
    let summary = dir.path().join("summary.json");
    let status = cavsync()
        .current_dir(root())
        .args(["run", "--threads", "1", "--duration", "5.8"])
        .arg("--config")
        .arg(config(dir.path()))
        .arg("--video")
        .arg(format!("ffmpeg:{}", video.display()))
        .arg("--audio")
        .arg(format!("ffmpeg:{}", faulty.display()))
        .arg("--out")
        .arg(format!("file:{}", out.display()))
        .arg("--summary")
        .arg(&summary)
        .status()
        .unwrap();
    assert!(status.success());
    let c = read_json(&summary)["counters"].clone();
    eprintln!("{c}");
    let windows = &c["audio_fault_windows"];
    let clipped = windows["clipped"].as_u64().unwrap();
    let non_finite = windows["non-finite"].as_u64().unwrap();
    assert!((9..=11).contains(&clipped), "{c}");
    assert!((5..=6).contains(&non_finite), "{c}");
    assert_eq!(windows["stuck"].as_u64(), Some(0), "{c}");
    assert_eq!(windows["out-of-range"].as_u64(), Some(0), "{c}");
    let records = read_lines(&out);
    let fault_of = |r: &Value| r["audio_fault"].as_str().map(str::to_owned);
    let faulty: Vec<&Value> = records.iter().filter(|r| fault_of(r).is_some()).collect();
    assert_eq!(
        faulty.len() as u64,
        c["frames_audio_fault"].as_u64().unwrap(),
        "{c}"
    );
    let kinds: std::collections::BTreeSet<String> =
        faulty.iter().filter_map(|r| fault_of(r)).collect();
    assert!(
        kinds.contains("clipped") && kinds.contains("non-finite"),
        "{kinds:?}"
    );
    for r in &faulty {
        assert_eq!(r["active"], Value::Bool(false), "{r}");
        assert!(r["peak"].is_null(), "{r}");
    }
    // fbank rows are 10 ms: a segment wholly before the clipped stretch, or one inside it, is judged as such.
    for r in &records {
        let seg = r["segment"].as_array().unwrap();
        let (a, b) = (seg[0].as_i64().unwrap(), seg[1].as_i64().unwrap());
        if b < 195 {
            assert_eq!(fault_of(r), None, "{r}");
        }
        if a >= 205 && b <= 295 {
            assert_eq!(fault_of(r).as_deref(), Some("clipped"), "{r}");
        }
    }
    let encoded = records.len() - faulty.len();
    assert!(encoded > 30, "{encoded} frames encoded");
}

#[test]
fn sources_away_for_a_while_come_back_in_step() {
    if !have_ffmpeg() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let video = demo_video(dir.path(), 2.0);
    let away = dir.path().join("away.avi");
    let out = dir.path().join("live.jsonl");
    let summary = dir.path().join("summary.json");
    let mut child = live_run(dir.path(), &video, &out, &["--duration", "10"])
        .arg("--summary")
        .arg(&summary)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The file goes away for 3 s: both sources fail again and again (each retry gives no
    // sample), then it returns.
    std::thread::sleep(Duration::from_millis(2_500));
    std::fs::rename(&video, &away).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    std::fs::rename(&away, &video).unwrap();
    assert!(child.wait().unwrap().success());
    let c = read_json(&summary)["counters"].clone();
    eprintln!("{c}");
    assert!(c["audio_reopens"].as_u64().unwrap() >= 2, "{c}");
    // The audio timeline kept its length: frames after the return are heard and encoded.
    let records = read_lines(&out);
    let after: Vec<&Value> = records
        .iter()
        .filter(|r| r["time_s"].as_f64().unwrap() > 7.0)
        .collect();
    assert!(after.len() > 20, "{} frames after the return", after.len());
    assert!(
        after.iter().any(|r| r["audio_fault"].is_null()),
        "no frame encoded after the return"
    );
    // ... and in step: a frame waits for its own audio, not for audio the timeline lost.
    let mut waits: Vec<f64> = after
        .iter()
        .map(|r| r["latency_ms"]["total"].as_f64().unwrap())
        .collect();
    waits.sort_by(f64::total_cmp);
    let median = waits[waits.len() / 2];
    assert!(
        median < 300.0,
        "median capture-to-output {median} ms after the return"
    );
}
