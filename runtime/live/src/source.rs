//! Where live audio and video come from: `alsa:PCM`, `v4l2:/dev/videoN`, `ffmpeg:INPUT`, parsed from the command line.

use std::fmt;

/// Errors of a capture source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The source text does not name a known kind of source.
    #[error("{role} source `{spec}`: expected {expected}")]
    Spec {
        /// `audio` or `video`.
        role: &'static str,
        /// What was given.
        spec: String,
        /// What forms are accepted.
        expected: &'static str,
    },
    /// The device or program could not be opened.
    #[error("{source_name}: cannot open: {reason}")]
    Open {
        /// The source.
        source_name: String,
        /// Why.
        reason: String,
    },
    /// Reading from an open source failed.
    #[error("{source_name}: {reason}")]
    Read {
        /// The source.
        source_name: String,
        /// Why.
        reason: String,
    },
    /// The source ended (a file or a child process that exited).
    #[error("{source_name}: ended")]
    Ended {
        /// The source.
        source_name: String,
    },
}

/// A live audio source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioSpec {
    /// An ALSA capture PCM (`default`, `hw:1,0`, `plughw:1`, a `.asoundrc` name).
    Alsa(String),
    /// Anything ffmpeg reads (a file, an RTSP URL, `-f pulse default`-style inputs as a path).
    Ffmpeg(String),
}

/// A live video source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VideoSpec {
    /// A V4L2 capture device node.
    V4l2(String),
    /// Anything ffmpeg reads (a file, an RTSP IP camera).
    Ffmpeg(String),
}

impl AudioSpec {
    /// Parses `alsa:PCM` or `ffmpeg:INPUT`.
    pub fn parse(spec: &str) -> Result<Self, SourceError> {
        match spec.split_once(':') {
            Some(("alsa", pcm)) if !pcm.is_empty() => Ok(Self::Alsa(pcm.to_string())),
            Some(("ffmpeg", input)) if !input.is_empty() => Ok(Self::Ffmpeg(input.to_string())),
            _ => Err(SourceError::Spec {
                role: "audio",
                spec: spec.to_string(),
                expected: "`alsa:PCM` (e.g. alsa:default, alsa:hw:1,0) or `ffmpeg:INPUT`",
            }),
        }
    }
}

impl VideoSpec {
    /// Parses `v4l2:/dev/videoN` or `ffmpeg:INPUT`.
    pub fn parse(spec: &str) -> Result<Self, SourceError> {
        match spec.split_once(':') {
            Some(("v4l2", dev)) if !dev.is_empty() => Ok(Self::V4l2(dev.to_string())),
            Some(("ffmpeg", input)) if !input.is_empty() => Ok(Self::Ffmpeg(input.to_string())),
            _ => Err(SourceError::Spec {
                role: "video",
                spec: spec.to_string(),
                expected: "`v4l2:/dev/videoN` or `ffmpeg:INPUT`",
            }),
        }
    }
}

impl fmt::Display for AudioSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Alsa(pcm) => write!(f, "alsa:{pcm}"),
            Self::Ffmpeg(input) => write!(f, "ffmpeg:{input}"),
        }
    }
}

impl fmt::Display for VideoSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::V4l2(dev) => write!(f, "v4l2:{dev}"),
            Self::Ffmpeg(input) => write!(f, "ffmpeg:{input}"),
        }
    }
}

/// The ffmpeg command line head shared by both ffmpeg sources: quiet, no stdin, real-time pacing for files.
pub(crate) fn ffmpeg_command(input: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-loglevel", "error", "-nostdin"]);
    if std::path::Path::new(input).is_file() {
        // A file is read at its own rate, as a camera or microphone would deliver it.
        cmd.arg("-re");
    }
    cmd.args(["-i", input]);
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_ones_say_what_is_expected() {
        assert_eq!(
            AudioSpec::parse("alsa:hw:1,0").unwrap(),
            AudioSpec::Alsa("hw:1,0".into())
        );
        assert_eq!(
            VideoSpec::parse("v4l2:/dev/video2").unwrap(),
            VideoSpec::V4l2("/dev/video2".into())
        );
        assert_eq!(
            VideoSpec::parse("ffmpeg:rtsp://cam/1").unwrap().to_string(),
            "ffmpeg:rtsp://cam/1"
        );
        let err = AudioSpec::parse("pulse:x").unwrap_err().to_string();
        assert!(err.contains("pulse:x") && err.contains("alsa:PCM"), "{err}");
        assert!(VideoSpec::parse("v4l2:").is_err());
    }
}
