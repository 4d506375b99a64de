//! One module per subcommand, each an `Args` struct and a `run` over library calls.

pub mod bench;
pub mod calibrate;
pub mod embed;
pub mod eval;
pub mod fbank;
pub mod info;
pub mod localize;
pub mod retrieve;

use std::path::PathBuf;

use cavsync_device::bundle::{Bundle, PlanOptions};
use indicatif::ProgressBar;

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
    /// Threads for matrix products (1 = single-threaded).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

impl BundleArgs {
    /// Open and verify the bundle with plans for `--threads`.
    pub fn open(&self) -> anyhow::Result<Bundle> {
        if self.threads == 0 {
            anyhow::bail!("--threads must be at least 1");
        }
        let options = PlanOptions {
            threads: self.threads,
        };
        let bundle = Bundle::open_with(&self.bundle, &options)?;
        tracing::info!(bundle = %self.bundle.display(), threads = self.threads, "opened bundle");
        Ok(bundle)
    }
}
