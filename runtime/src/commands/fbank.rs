//! `cavsync fbank`: the Kaldi-compatible log-mel filterbank of a WAV file.

use std::path::PathBuf;

use anyhow::Context;

use cavsync_core::npy;
use cavsync_core::preprocess::{audio, fbank, segment};

/// Arguments of `cavsync fbank`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Input WAV (PCM 16/24/32-bit or float, any channel count and sample rate; mixed to mono and resampled to 16 kHz).
    #[arg(long)]
    wav: PathBuf,
    /// Output .npy file: f32 array of shape (frames, 128).
    #[arg(long)]
    out: PathBuf,
    /// Apply the model's input normalisation (x + 5.081) / 4.4849 instead of writing the raw log-mel.
    #[arg(long)]
    normalize: bool,
    /// Zero-pad input shorter than one 25 ms frame (400 samples) instead of refusing it.
    #[arg(long)]
    pad_short: bool,
}

/// Compute and write the filterbank.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let samples = audio::load_wav_16k(&args.wav)?;
    let short = if args.pad_short {
        fbank::ShortInput::ZeroPad
    } else {
        fbank::ShortInput::Error
    };
    let mut mel = fbank::clip_log_mel(&samples, short)
        .with_context(|| format!("{}: fbank failed", args.wav.display()))?;
    if args.normalize {
        let values = mel
            .as_slice_mut()
            .context("log-mel buffer is not contiguous")?;
        segment::normalize_in_place(values);
    }
    npy::write_f32(&args.out, mel.view().into_dyn())?;
    tracing::info!(frames = mel.nrows(), out = %args.out.display(), "wrote log-mel filterbank");
    Ok(())
}
