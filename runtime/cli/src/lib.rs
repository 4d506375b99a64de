//! Command-line pieces shared by the `cavsync` and `cavsync-export` binaries: logging, one-line errors, progress bars, embed inputs.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use ndarray::{ArrayD, Axis};

use indicatif::{ProgressBar, ProgressStyle};
use tracing_subscriber::EnvFilter;

use cavsync_core::npy;
use cavsync_core::preprocess::{audio, fbank, image, segment};

/// End the process quietly when stdout's reader goes away (`cavsync ... | head`), as other command-line tools do.
///
/// Rust ignores SIGPIPE, so printing into a closed pipe would panic; this restores the
/// signal's default action. Call it first in `main`, before any thread is started.
pub fn end_quietly_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to its default before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Send `tracing` logs to stderr, filtered by `RUST_LOG` (default: info).
pub fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

/// Print an error and its causes on one line (no backtrace) and turn the result into an exit code.
pub fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", one_line(&err));
            ExitCode::FAILURE
        }
    }
}

/// A progress bar of `len` steps on stderr with the given template (`{msg}`, `{bar}`, `{pos}`, ... as in indicatif).
pub fn progress_bar(len: usize, template: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

/// The error and its causes joined by ": ", skipping causes the message already quotes.
fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_joined_once_on_one_line() {
        let inner = std::io::Error::other("disk on fire");
        let err = anyhow::Error::new(inner).context("a.wav: cannot read: disk on fire");
        assert_eq!(one_line(&err), "a.wav: cannot read: disk on fire");
        let err = anyhow::anyhow!("root cause\nsecond line").context("while loading b.pth");
        assert_eq!(
            one_line(&err),
            "while loading b.pth: root cause second line"
        );
    }
}

/// Audio and image inputs of the `embed` commands of both binaries.
#[derive(clap::Args, Debug)]
#[command(group = clap::ArgGroup::new("audio_in").required(true).args(["audio_npy", "wav"]))]
#[command(group = clap::ArgGroup::new("image_in").required(true).args(["image_npy", "image"]))]
pub struct EmbedInputs {
    /// Normalised fbank batch as .npy, f32 (batch, L, 128); the batch dimension is kept in the outputs.
    #[arg(long)]
    pub audio_npy: Option<PathBuf>,
    /// WAV clip; the segment aligned with video frame --frame of --frames is encoded, as the official loader does.
    #[arg(long, requires = "frame")]
    pub wav: Option<PathBuf>,
    /// Video frame index whose audio segment is encoded (with --wav).
    #[arg(long)]
    pub frame: Option<usize>,
    /// Frames per clip (with --wav; default: the bundle's, or 16 as the official model).
    #[arg(long)]
    pub frames: Option<usize>,
    /// Normalised image batch as .npy, f32 (batch, 3, H, W).
    #[arg(long)]
    pub image_npy: Option<PathBuf>,
    /// JPEG or PNG frame, resized and centre-cropped as the official eval transform.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Output directory for audio_global.npy, visual_global.npy, audio_tokens.npy and visual_tokens.npy.
    #[arg(long)]
    pub out: PathBuf,
}

impl EmbedInputs {
    /// The audio batch (batch, L, 128): read from --audio-npy, or the --frame segment of --wav.
    pub fn audio_batch(
        &self,
        target_length: usize,
        default_frames: usize,
    ) -> anyhow::Result<ArrayD<f32>> {
        if let Some(path) = &self.audio_npy {
            return Ok(npy::read_f32(path)?);
        }
        let (Some(wav), Some(frame)) = (&self.wav, self.frame) else {
            bail!("give --audio-npy, or --wav with --frame");
        };
        let frames = self.frames.unwrap_or(default_frames);
        if frame >= frames {
            bail!("--frame {frame} is out of range for {frames} frames");
        }
        let samples = audio::load_wav_16k(wav)?;
        let mel = fbank::clip_log_mel(&samples, fbank::ShortInput::Error)
            .with_context(|| format!("{}: fbank failed", wav.display()))?;
        let seg = segment::frame_segment(mel.view(), frame, frames, target_length);
        Ok(seg.insert_axis(Axis(0)).into_dyn())
    }

    /// The image batch (batch, 3, H, W): read from --image-npy, or --image preprocessed to `size` x `size`.
    pub fn image_batch(&self, size: usize) -> anyhow::Result<ArrayD<f32>> {
        match (&self.image_npy, &self.image) {
            (Some(path), _) => Ok(npy::read_f32(path)?),
            (None, Some(path)) => Ok(image::preprocess_image_file_at(path, size as u32)?
                .insert_axis(Axis(0))
                .into_dyn()),
            (None, None) => bail!("give --image-npy or --image"),
        }
    }

    /// Where an input came from, for error context.
    pub fn source(&self, audio: bool) -> String {
        let path = if audio {
            self.audio_npy.as_ref().or(self.wav.as_ref())
        } else {
            self.image_npy.as_ref().or(self.image.as_ref())
        };
        path.map_or_else(String::new, |p| p.display().to_string())
    }
}
