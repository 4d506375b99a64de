//! `cavsync calibrate`: when a frame is `active`, from annotated `localize` records.

use std::path::PathBuf;

use anyhow::{Context, bail};

use cavsync_core::atomic::write_atomic;
use cavsync_core::localize::ActivityFeatures;
use cavsync_core::manifest::{LocalizationInfo, Manifest};
use cavsync_core::metrics;
use cavsync_core::record::FrameRecord;

/// Arguments of `cavsync calibrate`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// localization.jsonl files written by `localize --annotations` on held-out calibration clips.
    #[arg(long, required = true, num_args = 1..)]
    results: Vec<PathBuf>,
    /// Write the calibration (threshold, activity head, how they were obtained) to this TOML file for `cavsync-export convert --localization`.
    #[arg(long, value_name = "TOML")]
    out: Option<PathBuf>,
    /// Also write the calibration into this bundle's manifest (its `[localization]` section, replaced in place; the model files are untouched).
    #[arg(long, value_name = "DIR")]
    bundle: Option<PathBuf>,
}

/// One labelled frame: its activity features and whether a visible object sounds in it.
type Sample = (ActivityFeatures, bool);

/// Read every record of `args.results` as a labelled frame.
fn read_samples(args: &Args) -> anyhow::Result<Vec<Sample>> {
    let mut samples = Vec::new();
    for path in &args.results {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "{}: cannot read (expected UTF-8 JSON lines written by `localize`)",
                path.display()
            )
        })?;
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let record: FrameRecord = serde_json::from_str(line).with_context(|| {
                format!(
                    "{}:{}: not a localization record (records written before the audio descriptor lack `audio`: rerun `localize --annotations`)",
                    path.display(),
                    i + 1
                )
            })?;
            let Some(truth) = record.truth else {
                bail!(
                    "{}:{}: expected numeric \"score\" and \"sounding\" fields (run `localize --annotations`)",
                    path.display(),
                    i + 1
                );
            };
            samples.push((record.localization.features(), truth.sounding > 0));
        }
    }
    Ok(samples)
}

/// Read the records, fit the threshold and the activity head, print how each separates the frames, and write the calibration.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let bundle = match &args.bundle {
        Some(dir) => Some((dir, Manifest::read(dir)?)),
        None => None,
    };
    let samples = read_samples(args)?;
    let files = args
        .results
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let empty = || {
        format!(
            "{files}: {} frames: calibration needs both sounding and silent frames (expected the localization.jsonl of `localize --annotations`)",
            samples.len()
        )
    };
    let scores: Vec<(f32, bool)> = samples.iter().map(|(f, y)| (f.score, *y)).collect();
    let threshold = metrics::calibrate_threshold(&scores).with_context(empty)?;
    let head = metrics::fit_activity_head(&samples).with_context(empty)?;
    let silent = samples.iter().filter(|s| !s.1).count();
    let sounding = samples.len() - silent;
    let rates = |active: f64, inactive: f64| {
        format!(
            "sounding frames active {:.1}% (of {sounding}), silent frames not active {:.1}% (of {silent})",
            100.0 * active,
            100.0 * inactive
        )
    };
    let threshold_line = format!(
        "threshold {:.4}: {}",
        threshold.threshold,
        rates(
            threshold.sounding_active_rate,
            threshold.silent_inactive_rate
        )
    );
    let h = head.head;
    let head_line = format!(
        "head {h}: {}",
        rates(head.sounding_active_rate, head.silent_inactive_rate)
    );
    println!("{threshold_line}");
    println!("{head_line}");
    let info = LocalizationInfo {
        active_threshold: threshold.threshold,
        calibration: format!(
            "best balanced accuracy on {} frames of {files}: {head_line} (score alone: {threshold_line})",
            samples.len()
        ),
        activity: Some(h),
    };
    if let Some(out) = &args.out {
        let text = toml::to_string(&info).context("cannot serialise the calibration")?;
        write_atomic(out, |w| w.write_all(text.as_bytes()))
            .with_context(|| format!("{}: cannot write the calibration", out.display()))?;
        println!("wrote {}", out.display());
    }
    if let Some((dir, mut manifest)) = bundle {
        manifest.localization = info;
        let path = manifest
            .write(dir)
            .with_context(|| format!("{}: cannot write the calibration", dir.display()))?;
        println!("wrote the calibration into {}", path.display());
    }
    Ok(())
}
