//! Frame-true audio in long videos: three synthetic clips joined into a 30 s video localize their
//! last 10 s as well as the third clip does on its own (the official datafile path), in the
//! world where pointing right needs the right audio.
//!
//! Needs the `ffmpeg` executable (CI installs it); without it the test says so and passes.

mod records;

use records::Records;
use std::path::{Path, PathBuf};
use std::process::Command;

use cavsync_core::annotations::{Annotations, ClipAnnotation};
use cavsync_core::clip::{self, Clip};
use cavsync_core::record::FrameRecord;
use cavsync_device::bundle::Bundle;
use cavsync_device::session::{GroundTruth, Session};
use cavsync_synth::{FRAMES, SynthConfig, World, write_dataset};

/// Joined videos; 8 x 16 frames of third clips are compared.
const TRIPLETS: usize = 8;
/// Frames per second of the datafile layout (16 per 10 s).
const FPS: f64 = 1.6;

fn ffmpeg(args: &[&str], inputs: &[&Path], out: &Path) {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"]);
    let mut paths = inputs.iter();
    for a in args {
        if *a == "{}" {
            cmd.arg(paths.next().unwrap());
        } else {
            cmd.arg(a);
        }
    }
    let status = cmd.arg(out).status().unwrap();
    assert!(status.success(), "ffmpeg {args:?}");
}

/// Clip `id` of the data set in `dir` as a 10 s AVI: its 16 JPEG frames as they are (MJPEG) at 1.6 frames/s, and its audio.
fn clip_video(dir: &Path, id: &str, out: &Path) {
    let frames = dir.join(format!("{id}_%d.jpg"));
    for k in 0..FRAMES {
        let src = dir.join(format!("frames/frame_{k}/{id}.jpg"));
        std::fs::copy(src, dir.join(format!("{id}_{k}.jpg"))).unwrap();
    }
    let wav = dir.join(format!("audio/{id}.wav"));
    ffmpeg(
        &[
            "-framerate",
            "1.6",
            "-start_number",
            "0",
            "-i",
            "{}",
            "-i",
            "{}",
            "-c:v",
            "copy",
            "-c:a",
            "pcm_s16le",
            "-shortest",
        ],
        &[&frames, &wav],
        out,
    );
}

/// Pointing hits among the sounding frames of `records`.
fn hits(records: &[FrameRecord]) -> (usize, usize) {
    let scored: Vec<bool> = records
        .iter()
        .filter_map(|r| r.truth.and_then(|t| t.pointing_hit))
        .collect();
    (scored.iter().filter(|&&h| h).count(), scored.len())
}

fn localize(bundle: &Bundle, clip: &Clip, truth: &Annotations, path: &Path) -> Vec<FrameRecord> {
    let truth = GroundTruth {
        annotations: truth,
        path,
    };
    let mut records = Records::default();
    let mut session = Session::new(bundle, Some(truth)).unwrap();
    session.run_clip(clip, None, &mut [&mut records]).unwrap();
    records.0
}

#[test]
fn a_long_video_is_heard_to_its_end() {
    if Command::new("ffmpeg").arg("-version").output().is_err() {
        eprintln!("ffmpeg not installed: the long-video test did not run");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bundle = Bundle::open(&root.join("models/demo/bundle")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = SynthConfig {
        // The hard world: there the frame alone does not say which object sounds, so pointing
        // drops to 20-26% when the model hears the wrong audio.
        world: World::Hard,
        clips: 3 * TRIPLETS,
        seed: 4242,
        backgrounds: Vec::new(),
        photo_share: 0.0,
    };
    let annotations = write_dataset(&config, &data, |_| {}).unwrap();
    let entries = clip::read_datafile(&data.join("datafile.json")).unwrap();
    let (mut joined, mut alone) = ((0, 0), (0, 0));
    for t in 0..TRIPLETS {
        let ids: Vec<&str> = (0..3)
            .map(|i| annotations.clips[3 * t + i].video_id.as_str())
            .collect();
        let parts: Vec<PathBuf> = ids
            .iter()
            .map(|id| {
                let out = tmp.path().join(format!("{id}.avi"));
                clip_video(&data, id, &out);
                out
            })
            .collect();
        let list = tmp.path().join(format!("list{t}.txt"));
        let lines: Vec<String> = parts
            .iter()
            .map(|p| format!("file '{}'", p.display()))
            .collect();
        std::fs::write(&list, lines.join("\n")).unwrap();
        let video = tmp.path().join(format!("joined{t}.avi"));
        ffmpeg(
            &["-f", "concat", "-safe", "0", "-i", "{}", "-c", "copy"],
            &[&list],
            &video,
        );

        // The joined video, annotated with its three clips' frames in order.
        let clip =
            clip::clip_from_video(&video, FPS, &tmp.path().join(format!("work{t}"))).unwrap();
        assert_eq!(
            clip.total_frames,
            3 * FRAMES,
            "a 30 s video at 1.6 frames/s"
        );
        let frames = (0..3)
            .flat_map(|i| annotations.clips[3 * t + i].frames.clone())
            .enumerate()
            .map(|(k, mut f)| {
                f.frame = k;
                f
            })
            .collect();
        let video_truth = Annotations {
            clips: vec![ClipAnnotation {
                video_id: clip.id.clone(),
                frames,
                ..annotations.clips[3 * t].clone()
            }],
            ..annotations.clone()
        };
        let records = localize(&bundle, &clip, &video_truth, &video);
        let (h, n) = hits(&records[2 * FRAMES..]);
        joined = (joined.0 + h, joined.1 + n);

        // The third clip alone, through the official datafile path.
        let third = clip::clip_from_datafile_entry(&entries[3 * t + 2], FRAMES).unwrap();
        let records = localize(
            &bundle,
            &third,
            &annotations,
            &data.join("annotations.json"),
        );
        let (h, n) = hits(&records);
        alone = (alone.0 + h, alone.1 + n);
    }
    assert_eq!(joined.1, alone.1, "the same sounding frames are scored");
    let (pj, pa) = (
        100.0 * joined.0 as f64 / joined.1 as f64,
        100.0 * alone.0 as f64 / alone.1 as f64,
    );
    println!("last 10 s of the joined videos: pointing {pj:.1}%; the third clips alone: {pa:.1}%");
    assert!((pj - pa).abs() <= 5.0, "joined {pj:.1}% vs alone {pa:.1}%");
    // Far above the model hearing another clip's audio (20-26% on the held-out sets of this world,
    // RECORD.md), which is what the last 10 s would get if only the first 10.24 s of audio were
    // used; the demo model measured 92.6% here.
    assert!(pj > 70.0, "the last 10 s hear their own audio: {pj:.1}%");
}
