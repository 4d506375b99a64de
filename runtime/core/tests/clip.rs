//! Clip inputs: datafile parsing and errors, the official missing-frame fallback, clip folders,
//! and video decoding through ffmpeg (or its absence).

use std::path::{Path, PathBuf};
use std::process::Command;

use cavsync_core::clip::{
    ClipError, DatafileEntry, clip_from_datafile_entry, clip_from_dir, clip_from_video,
    read_datafile,
};
use image::{Rgb, RgbImage};

/// Writes `seconds` of a 440 Hz tone as a 16 kHz mono 16-bit WAV file.
fn write_wav(path: &Path, seconds: f64) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(path, spec).unwrap();
    let n = (seconds * 16_000.0) as usize;
    for i in 0..n {
        let t = i as f64 / 16_000.0;
        writer
            .write_sample((8000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16)
            .unwrap();
    }
    writer.finalize().unwrap();
}

fn write_image(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    RgbImage::from_pixel(4, 3, Rgb([10, 200, 30]))
        .save(path)
        .unwrap();
}

/// A datafile entry in `root` with frame folders for the given indices.
fn official_layout(root: &Path, present: &[usize]) -> DatafileEntry {
    let wav = root.join("audio").join("vid1.wav");
    std::fs::create_dir_all(wav.parent().unwrap()).unwrap();
    write_wav(&wav, 2.0);
    let frames = root.join("frames");
    for k in present {
        write_image(&frames.join(format!("frame_{k}")).join("vid1.jpg"));
    }
    DatafileEntry {
        wav,
        video_id: "vid1".into(),
        video_path: frames,
        labels: None,
    }
}

fn frame_path(entry: &DatafileEntry, k: usize) -> PathBuf {
    entry.video_path.join(format!("frame_{k}")).join("vid1.jpg")
}

#[test]
fn datafile_parses_entries_with_optional_labels_and_ignores_other_fields() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.json");
    std::fs::write(
        &path,
        r#"{"data": [
            {"video_id": "a", "wav": "/x/a.wav", "video_path": "/x/frames/", "labels": "vgg_47", "extra": 3},
            {"video_id": "b", "wav": "b.wav", "video_path": "frames"}
        ]}"#,
    )
    .unwrap();
    let entries = read_datafile(&path).unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].video_id, "a");
    assert_eq!(entries[0].wav, PathBuf::from("/x/a.wav"));
    assert_eq!(entries[0].video_path, PathBuf::from("/x/frames/"));
    assert_eq!(entries[0].labels.as_deref(), Some("vgg_47"));
    assert_eq!(entries[1].labels, None);
}

#[test]
fn datafile_missing_field_names_the_field_entry_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.json");
    std::fs::write(
        &path,
        r#"{"data": [{"video_id": "a", "wav": "a.wav", "video_path": "f"}, {"video_id": "b", "video_path": "f"}]}"#,
    )
    .unwrap();
    let err = read_datafile(&path).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, ClipError::Datafile { .. }), "{message}");
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("data[1]"), "{message}");
    assert!(message.contains("`wav`"), "{message}");
}

#[test]
fn datafile_wrong_type_and_wrong_layout_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.json");
    std::fs::write(
        &path,
        r#"{"data": [{"video_id": 7, "wav": "a.wav", "video_path": "f"}]}"#,
    )
    .unwrap();
    let message = read_datafile(&path).unwrap_err().to_string();
    assert!(
        message.contains("data[0]") && message.contains("invalid type"),
        "{message}"
    );
    std::fs::write(&path, r#"[{"video_id": "a"}]"#).unwrap();
    let message = read_datafile(&path).unwrap_err().to_string();
    assert!(message.contains("\"data\" array"), "{message}");
}

#[test]
fn malformed_datafile_json_names_the_file_and_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.json");
    std::fs::write(&path, "{\"data\": [\n  {\"wav\": \"a.wav\",,}\n]}").unwrap();
    let err = read_datafile(&path).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, ClipError::Json { .. }), "{message}");
    assert!(message.contains("broken.json"), "{message}");
    assert!(message.contains("line 2"), "{message}");
}

#[test]
fn missing_datafile_names_the_file() {
    let path = Path::new("/nonexistent/cavsync/data.json");
    let message = read_datafile(path).unwrap_err().to_string();
    assert!(
        message.contains("/nonexistent/cavsync/data.json"),
        "{message}"
    );
}

#[test]
fn datafile_entry_with_all_frames_maps_each_index_to_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let entry = official_layout(dir.path(), &[0, 1, 2, 3]);
    let clip = clip_from_datafile_entry(&entry, 4).unwrap();
    assert_eq!(clip.id, "vid1");
    assert_eq!(clip.total_frames, 4);
    assert_eq!(clip.audio.len(), 32_000);
    for (k, frame) in clip.frames.iter().enumerate() {
        assert_eq!(frame.index, k);
        assert_eq!(frame.path, frame_path(&entry, k));
        assert!((frame.time_s - 0.5 * k as f64).abs() < 1e-12);
    }
}

#[test]
fn missing_frames_fall_back_to_the_nearest_earlier_frame() {
    let dir = tempfile::tempdir().unwrap();
    // Frames 2, 3 and 5 are missing; frame 0 is missing too, and takes the first existing one.
    let entry = official_layout(dir.path(), &[1, 4]);
    let clip = clip_from_datafile_entry(&entry, 6).unwrap();
    let sources: Vec<PathBuf> = clip.frames.iter().map(|f| f.path.clone()).collect();
    let expected: Vec<PathBuf> = [1, 1, 1, 1, 4, 4]
        .iter()
        .map(|&k| frame_path(&entry, k))
        .collect();
    assert_eq!(sources, expected);
    let indices: Vec<usize> = clip.frames.iter().map(|f| f.index).collect();
    assert_eq!(indices, [0, 1, 2, 3, 4, 5]);
}

#[test]
fn datafile_entry_without_any_frame_is_an_error_naming_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let entry = official_layout(dir.path(), &[]);
    let err = clip_from_datafile_entry(&entry, 16).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, ClipError::NoFrames { .. }), "{message}");
    assert!(message.contains("vid1"), "{message}");
    assert!(message.contains("frame_{k}"), "{message}");
    let err = clip_from_datafile_entry(&entry, 0).unwrap_err();
    assert!(matches!(err, ClipError::ZeroFrames { .. }), "{err}");
}

#[test]
fn datafile_entry_with_missing_audio_names_the_wav() {
    let dir = tempfile::tempdir().unwrap();
    let mut entry = official_layout(dir.path(), &[0]);
    entry.wav = dir.path().join("nope.wav");
    let message = clip_from_datafile_entry(&entry, 1).unwrap_err().to_string();
    assert!(
        message.contains("vid1") && message.contains("nope.wav"),
        "{message}"
    );
}

/// A clip folder with `audio.wav` (unless `audio` is false) and the named frame files.
fn clip_dir(root: &Path, names: &[&str], audio: bool) -> PathBuf {
    let dir = root.join("my_clip");
    std::fs::create_dir_all(dir.join("frames")).unwrap();
    if audio {
        write_wav(&dir.join("audio.wav"), 1.0);
    }
    for name in names {
        write_image(&dir.join("frames").join(name));
    }
    dir
}

#[test]
fn clip_dir_sorts_frames_naturally_and_spreads_them_over_the_audio() {
    let root = tempfile::tempdir().unwrap();
    let names = [
        "frame_10.jpg",
        "frame_2.png",
        "frame_0.jpeg",
        "frame_1.JPG",
        "frame_3.jpg",
    ];
    let dir = clip_dir(root.path(), &names, true);
    std::fs::write(dir.join("frames").join("notes.txt"), "not a frame").unwrap();
    let clip = clip_from_dir(&dir).unwrap();
    assert_eq!(clip.id, "my_clip");
    assert_eq!(clip.total_frames, 5);
    assert_eq!(clip.audio.len(), 16_000);
    let order: Vec<String> = clip
        .frames
        .iter()
        .map(|f| f.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        order,
        [
            "frame_0.jpeg",
            "frame_1.JPG",
            "frame_2.png",
            "frame_3.jpg",
            "frame_10.jpg"
        ]
    );
    for (k, frame) in clip.frames.iter().enumerate() {
        assert_eq!(frame.index, k);
        assert!(
            (frame.time_s - 0.2 * k as f64).abs() < 1e-12,
            "{}",
            frame.time_s
        );
    }
}

#[test]
fn clip_dir_without_audio_wav_is_a_clear_error() {
    let root = tempfile::tempdir().unwrap();
    let dir = clip_dir(root.path(), &["frame_0.jpg"], false);
    let err = clip_from_dir(&dir).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, ClipError::MissingAudio { .. }), "{message}");
    assert!(message.contains("audio.wav"), "{message}");
    assert!(message.contains(&dir.display().to_string()), "{message}");
}

#[test]
fn clip_dir_without_frames_is_a_clear_error() {
    let root = tempfile::tempdir().unwrap();
    let dir = clip_dir(root.path(), &[], true);
    std::fs::write(dir.join("frames").join("frame_0.gif"), "gif").unwrap();
    let message = clip_from_dir(&dir).unwrap_err().to_string();
    assert!(message.contains("no frames found"), "{message}");
    assert!(message.contains("frames"), "{message}");
    std::fs::remove_dir_all(dir.join("frames")).unwrap();
    let message = clip_from_dir(&dir).unwrap_err().to_string();
    assert!(message.contains("no frames found"), "{message}");
}

fn ffmpeg_available() -> bool {
    Command::new("ffmpeg").arg("-version").output().is_ok()
}

/// Makes a `seconds`-long 64x48 test video, with a stereo tone unless `audio` is false.
fn make_video(path: &Path, seconds: f64, audio: bool) {
    let mut cmd = Command::new("ffmpeg");
    cmd.args([
        "-nostdin",
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "lavfi",
        "-i",
    ])
    .arg(format!("testsrc=size=64x48:rate=25:duration={seconds}"));
    if audio {
        cmd.args(["-f", "lavfi", "-i"]).arg(format!(
            "sine=frequency=440:sample_rate=44100:duration={seconds}"
        ));
        cmd.args(["-ac", "2", "-c:a", "pcm_s16le"]);
    }
    cmd.args(["-c:v", "mjpeg", "-q:v", "3"]).arg(path);
    let status = cmd.status().unwrap();
    assert!(status.success());
}

#[test]
fn clip_from_video_extracts_audio_and_evenly_spaced_frames_or_reports_missing_ffmpeg() {
    let root = tempfile::tempdir().unwrap();
    let work = root.path().join("work");
    let video = root.path().join("demo.avi");
    if !ffmpeg_available() {
        std::fs::write(&video, "not really a video").unwrap();
        let err = clip_from_video(&video, 2.0, &work).unwrap_err();
        assert_eq!(
            err.to_string(),
            "ffmpeg not found on PATH; install it or pass --clip/--datafile"
        );
        return;
    }
    make_video(&video, 2.0, true);
    // A stale frame of an earlier, longer extraction must not survive.
    write_image(&work.join("frames").join("frame_9.jpg"));
    let clip = clip_from_video(&video, 2.0, &work).unwrap();
    assert_eq!(clip.id, "demo");
    assert_eq!(clip.total_frames, 4);
    assert!(
        (clip.audio.len() as i64 - 32_000).abs() <= 160,
        "{}",
        clip.audio.len()
    );
    for (k, frame) in clip.frames.iter().enumerate() {
        assert_eq!(frame.index, k);
        assert_eq!(
            frame.path,
            work.join("frames").join(format!("frame_{k}.jpg"))
        );
        let img = cavsync_core::preprocess::image::load_rgb(&frame.path).unwrap();
        assert_eq!(img.dimensions(), (64, 48));
        assert!(
            (frame.time_s - 0.5 * k as f64).abs() < 0.01,
            "{}",
            frame.time_s
        );
    }
    assert!(!work.join("frames").join("frame_9.jpg").exists());
    // The folder written is itself a valid clip folder with the same frames.
    let again = clip_from_dir(&work).unwrap();
    assert_eq!(again.total_frames, 4);
    assert_eq!(again.audio.len(), clip.audio.len());
}

#[test]
fn clip_from_video_takes_the_frame_at_each_frame_time() {
    if !ffmpeg_available() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    // 30 frames at 25 fps (1.2 s), frame n a flat grey of level 8n, with 1.2 s of audio.
    for n in 0..30u8 {
        RgbImage::from_pixel(32, 24, Rgb([8 * n; 3]))
            .save(root.path().join(format!("src_{n}.png")))
            .unwrap();
    }
    let video = root.path().join("counter.avi");
    let status = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
        .args(["-framerate", "25", "-start_number", "0", "-i"])
        .arg(root.path().join("src_%d.png"))
        .args([
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=300:sample_rate=16000:duration=1.2",
        ])
        .args([
            "-c:v",
            "mjpeg",
            "-q:v",
            "2",
            "-pix_fmt",
            "yuvj420p",
            "-c:a",
            "pcm_s16le",
        ])
        .arg(&video)
        .status()
        .unwrap();
    assert!(status.success());
    let clip = clip_from_video(&video, 7.0 / 1.2, &root.path().join("work")).unwrap();
    assert_eq!(clip.total_frames, 7);
    assert_eq!(clip.audio.len(), 19_200);
    // Frame k at k * 1.2 / 7 s, i.e. source frame position 30 k / 7: ffmpeg lands on the frame
    // at or after it, or on the nearest one where the container's time base is 1 / fps (AVI).
    for (k, frame) in clip.frames.iter().enumerate() {
        let img = cavsync_core::preprocess::image::load_rgb(&frame.path).unwrap();
        let shown = (f64::from(img.get_pixel(16, 12)[0]) / 8.0).round();
        let position = 30.0 * k as f64 / 7.0;
        assert!(
            shown >= position.floor() && shown <= position.ceil(),
            "frame {k}: source frame {shown}, expected one of the two around {position}"
        );
    }
}

#[test]
fn clip_from_video_errors_name_the_video() {
    let root = tempfile::tempdir().unwrap();
    let work = root.path().join("work");
    let missing = root.path().join("absent.mp4");
    let message = clip_from_video(&missing, 2.0, &work)
        .unwrap_err()
        .to_string();
    assert!(message.contains("absent.mp4"), "{message}");
    if !ffmpeg_available() {
        return;
    }
    let silent = root.path().join("silent.avi");
    make_video(&silent, 1.0, false);
    let err = clip_from_video(&silent, 2.0, &work).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, ClipError::Ffmpeg { .. }), "{message}");
    assert!(
        message.contains("silent.avi") && message.contains("audio"),
        "{message}"
    );
    let junk = root.path().join("junk.mp4");
    std::fs::write(&junk, "not a video").unwrap();
    let message = clip_from_video(&junk, 2.0, &work).unwrap_err().to_string();
    assert!(message.contains("junk.mp4"), "{message}");
}
