//! `cavsync bench`: encoder latency and throughput of a bundle on this machine.

use anyhow::bail;

use cavsync_device::latency::{self, measure};

use super::BundleArgs;

/// Arguments of `cavsync bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    bundle: BundleArgs,
    /// Timed iterations per encoder (after 2 warm-up runs).
    #[arg(long, default_value_t = 20)]
    iterations: usize,
}

/// Time both encoders and print the medians.
pub fn run(args: &Args) -> anyhow::Result<()> {
    if args.iterations == 0 {
        bail!("--iterations must be at least 1");
    }
    let bundle = args.bundle.open()?;
    let m = &bundle.manifest;
    let lat = measure(&bundle, args.iterations)?;
    println!(
        "bundle {} ({} {}, dim {}, L = {}), threads {}, {} iterations, {}",
        args.bundle.bundle.display(),
        m.model.layout,
        m.model.precision,
        m.model.dim,
        m.audio_preprocessing.target_length,
        args.bundle.threads,
        args.iterations,
        latency::cpu_name()
    );
    println!("what              median latency");
    println!("audio encoder     {:>10.2} ms", 1e3 * lat.audio_s);
    println!("visual encoder    {:>10.2} ms", 1e3 * lat.visual_s);
    println!("frame pair        {:>10.2} ms", 1e3 * lat.pair_s);
    println!("throughput        {:>10.2} pairs/s", 1.0 / lat.pair_s);
    match latency::peak_rss_mib() {
        Some(mib) => println!("peak RSS          {mib:>10.1} MiB"),
        None => println!("peak RSS          unavailable"),
    }
    Ok(())
}
