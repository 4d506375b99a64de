//! One module per subcommand, each an `Args` struct and a `run` over library calls.

pub mod bench;
pub mod calibrate;
pub mod embed;
pub mod eval;
pub mod fbank;
pub mod info;
pub mod localize;
pub mod retrieve;
pub mod run;

use std::path::{Path, PathBuf};

use anyhow::Context;
use cavsync_core::clip::{self, Clip};

use cavsync_device::bundle::{Bundle, PlanOptions};
use cavsync_device::device::{self, Device, DeviceChoice};
use indicatif::ProgressBar;

/// The clips of a clip folder or of a datafile, whichever is given (none when neither is).
pub fn file_clips(
    dir: Option<&Path>,
    datafile: Option<&Path>,
    total_frames: usize,
) -> anyhow::Result<Option<Vec<Clip>>> {
    if let Some(dir) = dir {
        return Ok(Some(vec![clip::clip_from_dir(dir)?]));
    }
    match datafile {
        Some(path) => Ok(Some(
            clip::read_datafile(path)?
                .iter()
                .map(|e| Ok(clip::clip_from_datafile_entry(e, total_frames)?))
                .collect::<anyhow::Result<_>>()?,
        )),
        None => Ok(None),
    }
}

/// What the mismatched-audio baseline hears: the next clip's audio, or a single clip's own audio rotated by half its length.
pub struct MismatchedAudio {
    rotated: Option<Clip>,
    annotated: bool,
}

impl MismatchedAudio {
    /// The baseline's audio for `clips`; none at all without ground truth.
    pub fn new(clips: &[Clip], annotated: bool) -> Self {
        let rotated = (annotated && clips.len() == 1).then(|| {
            let mut other = clips[0].clone();
            let half = other.audio.len() / 2;
            other.audio.rotate_left(half);
            other
        });
        Self { rotated, annotated }
    }

    /// The clip whose audio the baseline hears beside clip `i` of `clips`.
    pub fn for_clip<'c>(&'c self, clips: &'c [Clip], i: usize) -> Option<&'c Clip> {
        match &self.rotated {
            Some(r) => Some(r),
            None if self.annotated => clips.get((i + 1) % clips.len()),
            None => None,
        }
    }
}

/// A progress bar over `len` frames labelled `what`.
pub fn frame_progress(len: usize, what: &'static str) -> ProgressBar {
    let bar = cavsync_cli::progress_bar(len, "{msg} [{bar:30}] {pos}/{len} {per_sec} eta {eta}");
    bar.set_message(what);
    bar
}

/// The bundle every inference command runs, and how.
#[derive(clap::Args, Debug)]
pub struct BundleArgs {
    /// Bundle directory written by `cavsync-export convert` (manifest.toml, audio.onnx, visual.onnx).
    #[arg(long)]
    pub bundle: PathBuf,
    /// Most threads for matrix products (1 = single-threaded); an encoder that measures faster on one thread when the bundle opens keeps one.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

impl BundleArgs {
    /// Open and verify the bundle with plans for `--threads` on the device `--device` resolves to.
    pub fn open_on(&self, device: &DeviceArgs) -> anyhow::Result<Bundle> {
        self.open_at(&self.bundle, device.resolve()?)
    }

    /// Open and verify the bundle at `dir` with plans for `--threads` on device `on`.
    pub fn open_at(&self, dir: &Path, on: Device) -> anyhow::Result<Bundle> {
        if self.threads == 0 {
            anyhow::bail!("--threads must be at least 1");
        }
        let options = PlanOptions {
            threads: self.threads,
        };
        let bundle = Bundle::open_on(dir, &options, on)?;
        tracing::info!(bundle = %dir.display(), threads = self.threads, device = %on, "opened bundle");
        Ok(bundle)
    }
}

/// Where a bundle's encoders run.
#[derive(clap::Args, Debug)]
pub struct DeviceArgs {
    /// Device for the encoders: cpu, cuda (an NVIDIA GPU, in builds with the `cuda` feature; an error where unusable) or auto (cuda where usable, else the CPU with a warning saying why).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
}

impl DeviceArgs {
    /// The device `--device` resolves to, with one warning when it falls back to the CPU.
    pub fn resolve(&self) -> anyhow::Result<Device> {
        resolve_device(self.device, &format!("--device {}", self.device))
    }
}

/// The device `choice` resolves to on this build and machine (`origin` says who asked), with one warning when it falls back to the CPU.
pub fn resolve_device(choice: DeviceChoice, origin: &str) -> anyhow::Result<Device> {
    let resolved = device::resolve(choice).with_context(|| origin.to_string())?;
    if resolved.fell_back {
        tracing::warn!(
            "{origin}: CUDA unavailable, running on the CPU: {}",
            resolved.reason
        );
    }
    Ok(resolved.device)
}
