//! `cavsync calibrate`: an activity threshold from annotated `localize` records.

use std::path::PathBuf;

use anyhow::{Context, bail};

use cavsync_core::metrics;
use cavsync_core::record::FrameRecord;

/// Arguments of `cavsync calibrate`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// localization.jsonl files written by `localize --annotations` on held-out calibration clips.
    #[arg(long, required = true, num_args = 1..)]
    results: Vec<PathBuf>,
}

/// Read the records, choose the threshold, and print how it separates the frames.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let mut samples = Vec::new();
    for path in &args.results {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let record: FrameRecord = serde_json::from_str(line).with_context(|| {
                format!("{}:{}: not a localization record", path.display(), i + 1)
            })?;
            let Some(truth) = record.truth else {
                bail!(
                    "{}:{}: expected numeric \"score\" and \"sounding\" fields (run `localize --annotations`)",
                    path.display(),
                    i + 1
                );
            };
            samples.push((record.localization.score, truth.sounding > 0));
        }
    }
    let c = metrics::calibrate_threshold(&samples).with_context(|| {
        format!(
            "{} frames: calibration needs both sounding and silent frames",
            samples.len()
        )
    })?;
    let silent = samples.iter().filter(|s| !s.1).count();
    println!(
        "threshold {:.4}: sounding frames active {:.1}% (of {}), silent frames not active {:.1}% (of {})",
        c.threshold,
        100.0 * c.sounding_active_rate,
        samples.len() - silent,
        100.0 * c.silent_inactive_rate,
        silent
    );
    Ok(())
}
