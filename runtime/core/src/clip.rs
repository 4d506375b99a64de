//! Clip inputs: a clip's 16 kHz mono audio and the paths of its video frames, from a CAV-MAE
//! datafile entry, a folder of frames, or a video file decoded by `ffmpeg`.
//!
//! Frame `k` of `T` is placed at `k * duration / T` seconds, `duration` being the audio's
//! length; this is the time the official loader aligns the frame's audio segment to
//! (centred on spectrogram frame `round(k * S / T)`).

use std::cmp::Ordering;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;

use crate::preprocess::audio::{AudioError, SAMPLE_RATE, load_wav_16k};
use crate::preprocess::segment::Alignment;

/// Image file extensions a clip folder's `frames/` may hold (compared case-insensitively).
const FRAME_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];
/// Lines of ffmpeg's error output kept in error messages.
const FFMPEG_STDERR_LINES: usize = 8;

/// One video frame of a clip: its index k in 0..T, its time in seconds (k * duration / T, or from the source), and where its image is.
#[derive(Debug, Clone)]
pub struct FrameRef {
    /// Position k of the frame in the clip, 0..T.
    pub index: usize,
    /// Time of the frame in seconds from the start of the clip.
    pub time_s: f64,
    /// Image file holding the frame (a substitute frame's file where the source lacks frame k).
    pub path: PathBuf,
}

/// A clip ready for inference: id, 16 kHz mono audio, and its frames.
#[derive(Debug, Clone)]
pub struct Clip {
    /// Name of the clip (the datafile's `video_id`, the folder name or the video's file stem).
    pub id: String,
    /// Mono samples at 16 kHz.
    pub audio: Vec<f32>,
    /// One entry per frame index 0..T, in order.
    pub frames: Vec<FrameRef>,
    /// Number of frames T.
    pub total_frames: usize,
    /// How the frames take their audio segments: the official rule for datafile clips, the same rule in time for folders and videos.
    pub alignment: Alignment,
}

/// Why a clip could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    /// A file or folder could not be read, created or written.
    #[error("{path}: cannot {action}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What was being done, e.g. "read the datafile".
        action: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The datafile is not valid JSON.
    #[error("{path}: malformed datafile JSON: {source}")]
    Json {
        /// The datafile.
        path: PathBuf,
        /// What the JSON parser reported, with line and column.
        source: serde_json::Error,
    },
    /// The datafile is JSON but not of the CAV-MAE layout.
    #[error("{path}: {detail}")]
    Datafile {
        /// The datafile.
        path: PathBuf,
        /// Which part is wrong and what was expected, e.g. "data[2]: missing field `wav`".
        detail: String,
    },
    /// The clip's audio could not be loaded.
    #[error("clip {id}: {source}")]
    Audio {
        /// The clip.
        id: String,
        /// The audio error (it names the file).
        source: AudioError,
    },
    /// The clip has no frame image at all.
    #[error("clip {id}: no frames found: {detail}")]
    NoFrames {
        /// The clip.
        id: String,
        /// Where frames were looked for.
        detail: String,
    },
    /// A clip folder lacks its audio file.
    #[error("{dir}: clip folder has no audio.wav (expected the file {expected})")]
    MissingAudio {
        /// The clip folder.
        dir: PathBuf,
        /// The audio file looked for.
        expected: PathBuf,
    },
    /// A video was asked to be sampled at a rate that is not a positive number.
    #[error("{video}: frame rate {fps} (expected a positive number of frames per second)")]
    Fps {
        /// The video file.
        video: PathBuf,
        /// The rate given.
        fps: f64,
    },
    /// A clip was requested with zero frames.
    #[error("{source_path}: total_frames is 0 (expected at least 1 frame per clip)")]
    ZeroFrames {
        /// The clip source (datafile entry's frame folder or video).
        source_path: PathBuf,
    },
    /// The `ffmpeg` executable is not installed.
    #[error("ffmpeg not found on PATH; install it or pass --clip/--datafile")]
    FfmpegNotFound,
    /// `ffmpeg` ran but failed, or produced no output.
    #[error("{video}: ffmpeg could not {action}: {detail}")]
    Ffmpeg {
        /// The video file.
        video: PathBuf,
        /// What ffmpeg was asked to do, e.g. "extract the audio track".
        action: String,
        /// The end of ffmpeg's error output, or what was missing.
        detail: String,
    },
}

/// Entries of a CAV-MAE datafile JSON: {"data": [{"wav": ..., "video_id": ..., "video_path": ..., "labels": ...}, ...]} (labels optional, other fields ignored).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct DatafileEntry {
    /// 16 kHz (or any rate, resampled on load) WAV file of the clip.
    pub wav: PathBuf,
    /// Clip name; frame k is `video_path/frame_{k}/{video_id}.jpg`.
    pub video_id: String,
    /// Folder holding the `frame_{k}` folders.
    pub video_path: PathBuf,
    /// Comma-separated label ids, when the datafile has them.
    #[serde(default)]
    pub labels: Option<String>,
}

/// Reads the entries of a CAV-MAE datafile; paths are kept as written (relative ones resolve against the working directory, as in the official loader).
pub fn read_datafile(path: &Path) -> Result<Vec<DatafileEntry>, ClipError> {
    let text = std::fs::read_to_string(path).map_err(|source| ClipError::Io {
        path: path.to_path_buf(),
        action: "read the datafile",
        source,
    })?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| ClipError::Json {
            path: path.to_path_buf(),
            source,
        })?;
    let datafile_error = |detail: String| ClipError::Datafile {
        path: path.to_path_buf(),
        detail,
    };
    let entries = json
        .get("data")
        .and_then(serde_json::Value::as_array)
        .ok_or_else(|| {
            datafile_error(
                "expected a top-level object with a \"data\" array of clip entries".to_owned(),
            )
        })?;
    entries
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            DatafileEntry::deserialize(entry).map_err(|e| {
                datafile_error(format!(
                    "data[{i}]: {e} (expected \"wav\", \"video_id\" and \"video_path\" strings, \"labels\" optional)"
                ))
            })
        })
        .collect()
}

/// Frames at video_path/frame_{k}/video_id.jpg for k in 0..total_frames, as the official loader; a missing frame k falls back to the nearest earlier existing frame, as the official loader does.
///
/// The official eval (`dataloader_sync.py`, retrieval mode) replaces a frame it cannot load by
/// a copy of the previous frame's tensor, so a run of missing frames repeats the last frame
/// that loaded; that is the substitute used here. Where frame 0 (and possibly more) is
/// missing, the official loader uses an all-zero tensor instead, which no image file can
/// stand for: those leading frames take the first existing frame. Existence is checked here;
/// a file that exists but does not decode fails later, when it is loaded. Frame times are
/// `k * audio_duration / T`. No frame at all is an error naming the entry.
pub fn clip_from_datafile_entry(
    entry: &DatafileEntry,
    total_frames: usize,
) -> Result<Clip, ClipError> {
    let frame_path = |k: usize| {
        entry
            .video_path
            .join(format!("frame_{k}"))
            .join(format!("{}.jpg", entry.video_id))
    };
    if total_frames == 0 {
        return Err(ClipError::ZeroFrames {
            source_path: entry.video_path.clone(),
        });
    }
    let exists: Vec<bool> = (0..total_frames).map(|k| frame_path(k).is_file()).collect();
    let Some(first_existing) = exists.iter().position(|&e| e) else {
        return Err(ClipError::NoFrames {
            id: entry.video_id.clone(),
            detail: format!(
                "none of {} exists (k = 0..{})",
                entry
                    .video_path
                    .join("frame_{k}")
                    .join(format!("{}.jpg", entry.video_id))
                    .display(),
                total_frames - 1
            ),
        });
    };
    let mut source = first_existing;
    let mut paths = Vec::with_capacity(total_frames);
    for (k, &present) in exists.iter().enumerate() {
        if present {
            source = k;
        } else {
            tracing::warn!(
                clip = %entry.video_id,
                "frame {k} missing ({}); using frame {source}",
                frame_path(k).display()
            );
        }
        paths.push(frame_path(source));
    }
    let audio = load_wav_16k(&entry.wav).map_err(|source| ClipError::Audio {
        id: entry.video_id.clone(),
        source,
    })?;
    Ok(build_clip(
        entry.video_id.clone(),
        audio,
        paths,
        Alignment::Official,
    ))
}

/// A folder with frames/*.jpg|*.jpeg|*.png (sorted by name, natural order so frame_2 < frame_10) and audio.wav; T = number of frames found; time_s = k * audio_duration / T.
pub fn clip_from_dir(dir: &Path) -> Result<Clip, ClipError> {
    let id = dir
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string());
    let audio_path = dir.join("audio.wav");
    if !audio_path.is_file() {
        return Err(ClipError::MissingAudio {
            dir: dir.to_path_buf(),
            expected: audio_path,
        });
    }
    let frames_dir = dir.join("frames");
    let no_frames = || ClipError::NoFrames {
        id: id.clone(),
        detail: format!(
            "expected images ({}) in the folder {}",
            FRAME_EXTENSIONS.join(", "),
            frames_dir.display()
        ),
    };
    if !frames_dir.is_dir() {
        return Err(no_frames());
    }
    let listing = std::fs::read_dir(&frames_dir).map_err(|source| ClipError::Io {
        path: frames_dir.clone(),
        action: "list the frames folder",
        source,
    })?;
    let mut names = Vec::new();
    for item in listing {
        let item = item.map_err(|source| ClipError::Io {
            path: frames_dir.clone(),
            action: "list the frames folder",
            source,
        })?;
        let path = item.path();
        if is_frame_image(&path) && path.is_file() {
            names.push((item.file_name().to_string_lossy().into_owned(), path));
        }
    }
    if names.is_empty() {
        return Err(no_frames());
    }
    names.sort_by(|(a, _), (b, _)| natural_cmp(a, b));
    let audio = load_wav_16k(&audio_path).map_err(|source| ClipError::Audio {
        id: id.clone(),
        source,
    })?;
    Ok(build_clip(
        id,
        audio,
        names.into_iter().map(|(_, path)| path).collect(),
        Alignment::Timed,
    ))
}

/// Whether a file name has one of [`FRAME_EXTENSIONS`].
fn is_frame_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| FRAME_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// A clip whose frame k is `paths[k]`, at `k * audio_duration / T` seconds.
fn build_clip(id: String, audio: Vec<f32>, paths: Vec<PathBuf>, alignment: Alignment) -> Clip {
    let total_frames = paths.len();
    let duration = audio.len() as f64 / f64::from(SAMPLE_RATE);
    let times = (0..total_frames).map(|k| k as f64 * duration / total_frames as f64);
    timed_clip(id, audio, paths.into_iter().zip(times).collect(), alignment)
}

/// A clip whose frame k is the image and time `frames[k]`.
fn timed_clip(
    id: String,
    audio: Vec<f32>,
    frames: Vec<(PathBuf, f64)>,
    alignment: Alignment,
) -> Clip {
    let total_frames = frames.len();
    let frames = frames
        .into_iter()
        .enumerate()
        .map(|(index, (path, time_s))| FrameRef {
            index,
            time_s,
            path,
        })
        .collect();
    Clip {
        id,
        audio,
        frames,
        total_frames,
        alignment,
    }
}

impl Clip {
    /// Length of the clip's audio in seconds.
    pub fn duration_s(&self) -> f64 {
        self.audio.len() as f64 / f64::from(SAMPLE_RATE)
    }
}

/// Frame times `k / fps` inside `duration_s` seconds (at least the frame at 0).
pub fn frame_times(duration_s: f64, fps: f64) -> Vec<f64> {
    let count = ((duration_s * fps - 1e-9).ceil().max(1.0)) as usize;
    (0..count).map(|k| k as f64 / fps).collect()
}

/// Orders names with their digit runs compared as numbers ("frame_2" < "frame_10"); ties broken so that only equal names compare equal.
fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a, b);
    loop {
        let (Some(ca), Some(cb)) = (a.chars().next(), b.chars().next()) else {
            return a.len().cmp(&b.len());
        };
        let (run_a, rest_a) = split_run(a, ca.is_ascii_digit());
        let (run_b, rest_b) = split_run(b, cb.is_ascii_digit());
        let order = if ca.is_ascii_digit() && cb.is_ascii_digit() {
            let (ta, tb) = (run_a.trim_start_matches('0'), run_b.trim_start_matches('0'));
            ta.len()
                .cmp(&tb.len())
                .then_with(|| ta.cmp(tb))
                .then_with(|| run_a.len().cmp(&run_b.len()))
        } else {
            run_a.cmp(run_b)
        };
        if order != Ordering::Equal {
            return order;
        }
        (a, b) = (rest_a, rest_b);
    }
}

/// Splits off the leading run of ASCII digits (`digits`) or of other characters.
fn split_run(s: &str, digits: bool) -> (&str, &str) {
    let end = s
        .find(|c: char| c.is_ascii_digit() != digits)
        .unwrap_or(s.len());
    s.split_at(end)
}

/// A video file through the `ffmpeg` executable (clear error if not on PATH): extract 16 kHz mono PCM WAV audio and the frames at `k / fps` seconds over the whole duration, into `work_dir`, then clip_from_dir semantics.
///
/// Writes `work_dir/audio.wav` and `work_dir/frames/frame_{k}.jpg` (JPEG quality `-q:v 2`,
/// full resolution: the eval transform resizes and crops later), first removing stale
/// `frame_{n}.jpg` files of earlier runs; other files are left alone. Audio follows the
/// official extraction (`ffmpeg -ar 16000`, then `sox remix 1`): the first channel of the
/// first audio track, resampled by ffmpeg. Frame k is the frame ffmpeg's accurate seek to
/// `k / fps` lands on, for every such time before the end of the audio: the first frame at or
/// after that time (the nearest frame in containers whose time base is 1 / fps, such as
/// AVI, since the seek time is rounded to it). The official extraction
/// (`extract_video_frame.py`) takes frame `int(k * N / T) - 1` of the first `min(N, 10 s)`
/// frames, i.e. the same times one frame earlier and capped for 10-second VGGSound clips
/// (at 1.6 frames/s the times of a 10 s clip are the datafile layout's 16); here the whole
/// audio is sampled, and each frame's audio segment follows its own time
/// ([`Alignment::Timed`]). A frame past the end of the video stream
/// repeats the previous frame's file, as the official loader does for missing frames.
pub fn clip_from_video(video: &Path, fps: f64, work_dir: &Path) -> Result<Clip, ClipError> {
    if !(fps > 0.0 && fps.is_finite()) {
        return Err(ClipError::Fps {
            video: video.to_path_buf(),
            fps,
        });
    }
    std::fs::metadata(video).map_err(|source| ClipError::Io {
        path: video.to_path_buf(),
        action: "read the video",
        source,
    })?;
    run_ffmpeg(video, &["-version".into()], "start")?;
    let frames_dir = work_dir.join("frames");
    std::fs::create_dir_all(&frames_dir).map_err(|source| ClipError::Io {
        path: frames_dir.clone(),
        action: "create the frames folder",
        source,
    })?;
    remove_stale_frames(&frames_dir)?;

    let id = video
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| video.display().to_string());
    let audio = extract_audio(video, &id, &work_dir.join("audio.wav"))?;
    let duration = audio.len() as f64 / f64::from(SAMPLE_RATE);
    let times = frame_times(duration, fps);
    let mut paths: Vec<PathBuf> = Vec::with_capacity(times.len());
    for (k, &time) in times.iter().enumerate() {
        let frame_path = frames_dir.join(format!("frame_{k}.jpg"));
        extract_frame(video, time, &frame_path, k)?;
        if !frame_path.is_file() {
            let Some(previous) = paths.last() else {
                return Err(ClipError::Ffmpeg {
                    video: video.to_path_buf(),
                    action: format!("extract frame 0 at {time:.3} s"),
                    detail: "no video frame decoded (is there a video track?)".to_owned(),
                });
            };
            tracing::warn!(
                clip = %id,
                "no video frame at {time:.3} s for frame {k}; repeating frame {}",
                k - 1
            );
            std::fs::copy(previous, &frame_path).map_err(|source| ClipError::Io {
                path: frame_path.clone(),
                action: "write the frame",
                source,
            })?;
        }
        paths.push(frame_path);
    }
    Ok(timed_clip(
        id,
        audio,
        paths.into_iter().zip(times).collect(),
        Alignment::Timed,
    ))
}

/// Extracts the first audio track of `video` as 16 kHz mono PCM into `wav` and loads it.
fn extract_audio(video: &Path, id: &str, wav: &Path) -> Result<Vec<f32>, ClipError> {
    let mut args = ffmpeg_input_args(video, None);
    args.extend(
        [
            "-map",
            "0:a:0",
            "-af",
            "pan=mono|c0=c0",
            "-ar",
            "16000",
            "-c:a",
            "pcm_s16le",
        ]
        .map(Into::into),
    );
    args.push(wav.as_os_str().to_owned());
    run_ffmpeg(video, &args, "extract the audio track")?;
    load_wav_16k(wav).map_err(|source| ClipError::Audio {
        id: id.to_string(),
        source,
    })
}

/// Extracts the first video frame at or after `time` seconds into `jpg` (nothing written past the end of the stream).
fn extract_frame(video: &Path, time: f64, jpg: &Path, k: usize) -> Result<(), ClipError> {
    let mut args = ffmpeg_input_args(video, Some(time));
    args.extend(
        [
            "-map",
            "0:v:0",
            "-frames:v",
            "1",
            "-q:v",
            "2",
            "-update",
            "1",
        ]
        .map(Into::into),
    );
    args.push(jpg.as_os_str().to_owned());
    run_ffmpeg(video, &args, &format!("extract frame {k} at {time:.3} s"))
}

/// Removes `frame_{n}.jpg` files left in `frames_dir` by earlier extractions.
fn remove_stale_frames(frames_dir: &Path) -> Result<(), ClipError> {
    let io = |action, source| ClipError::Io {
        path: frames_dir.to_path_buf(),
        action,
        source,
    };
    let listing = std::fs::read_dir(frames_dir).map_err(|e| io("list the frames folder", e))?;
    for item in listing {
        let item = item.map_err(|e| io("list the frames folder", e))?;
        let name = item.file_name();
        let is_ours = name
            .to_str()
            .and_then(|n| n.strip_prefix("frame_"))
            .and_then(|n| n.strip_suffix(".jpg"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if is_ours {
            std::fs::remove_file(item.path()).map_err(|source| ClipError::Io {
                path: item.path(),
                action: "remove a stale frame",
                source,
            })?;
        }
    }
    Ok(())
}

/// The common start of an ffmpeg command line reading `video`, seeking (accurately) to `seek_s` when given.
fn ffmpeg_input_args(video: &Path, seek_s: Option<f64>) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> =
        ["-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
            .map(Into::into)
            .to_vec();
    if let Some(t) = seek_s {
        args.push("-ss".into());
        args.push(format!("{t:.6}").into());
    }
    args.push("-i".into());
    args.push(video.as_os_str().to_owned());
    args
}

/// Runs ffmpeg with `args`, mapping a missing executable and a failed run to [`ClipError`].
fn run_ffmpeg(video: &Path, args: &[std::ffi::OsString], action: &str) -> Result<(), ClipError> {
    let output = Command::new("ffmpeg")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                ClipError::FfmpegNotFound
            } else {
                ClipError::Ffmpeg {
                    video: video.to_path_buf(),
                    action: action.to_owned(),
                    detail: format!("cannot run ffmpeg: {source}"),
                }
            }
        })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(FFMPEG_STDERR_LINES)..].join(" | ");
    Err(ClipError::Ffmpeg {
        video: video.to_path_buf(),
        action: action.to_owned(),
        detail: format!("ffmpeg exited with {}: {tail}", output.status),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order_compares_numbers() {
        let mut names = vec![
            "frame_10.jpg",
            "frame_2.jpg",
            "frame_1.jpg",
            "frame_02.jpg",
            "a.png",
            "frame_1b.jpg",
        ];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            names,
            [
                "a.png",
                "frame_1.jpg",
                "frame_1b.jpg",
                "frame_2.jpg",
                "frame_02.jpg",
                "frame_10.jpg"
            ]
        );
        assert_eq!(natural_cmp("x", "x"), Ordering::Equal);
        assert_eq!(natural_cmp("x", "x1"), Ordering::Less);
    }

    #[test]
    fn frame_extensions_are_case_insensitive() {
        assert!(is_frame_image(Path::new("a/frame_0.JPG")));
        assert!(is_frame_image(Path::new("frame_0.jpeg")));
        assert!(is_frame_image(Path::new("frame_0.png")));
        assert!(!is_frame_image(Path::new("frame_0.gif")));
        assert!(!is_frame_image(Path::new("frame_0")));
    }

    #[test]
    fn frame_times_spread_over_the_audio() {
        let clip = build_clip(
            "c".into(),
            vec![0.0; 32_000],
            (0..4).map(|k| PathBuf::from(format!("{k}.jpg"))).collect(),
            Alignment::Timed,
        );
        let times: Vec<f64> = clip.frames.iter().map(|f| f.time_s).collect();
        assert_eq!(times, [0.0, 0.5, 1.0, 1.5]);
        assert_eq!(clip.total_frames, 4);
    }

    #[test]
    fn video_frame_times_cover_the_audio_at_the_rate() {
        assert_eq!(frame_times(10.0, 1.6).len(), 16);
        assert_eq!(frame_times(10.0, 1.6)[15], 9.375);
        assert_eq!(frame_times(30.0, 1.6).len(), 48);
        assert_eq!(frame_times(1.2, 7.0 / 1.2).len(), 7);
        assert_eq!(frame_times(0.1, 1.6), [0.0]);
    }
}
