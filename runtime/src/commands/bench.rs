//! `cavsync bench`: encoder latency and throughput of a bundle on this machine.

use std::time::Instant;

use anyhow::bail;

use cavsync_core::model::Modality;
use cavsync_device::bundle::Embedding;

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

/// Peak resident set size of this process in MiB, from /proc (None where unavailable).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A deterministic input of `len` values in [-1, 1).
fn pattern(len: usize, stride: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * stride) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

/// Time both encoders and print the medians.
pub fn run(args: &Args) -> anyhow::Result<()> {
    if args.iterations == 0 {
        bail!("--iterations must be at least 1");
    }
    let bundle = args.bundle.open()?;
    let m = &bundle.manifest;
    let audio_in = pattern(bundle.input_len(Modality::Audio), 7919);
    let image_in = pattern(bundle.input_len(Modality::Visual), 104_729);
    let mut emb = Embedding::default();
    for _ in 0..2 {
        bundle.embed_into(Modality::Audio, &audio_in, &mut emb)?;
        bundle.embed_into(Modality::Visual, &image_in, &mut emb)?;
    }
    let mut audio_s = Vec::new();
    let mut visual_s = Vec::new();
    let mut pair_s = Vec::new();
    for _ in 0..args.iterations {
        let t0 = Instant::now();
        bundle.embed_into(Modality::Audio, &audio_in, &mut emb)?;
        let t1 = Instant::now();
        bundle.embed_into(Modality::Visual, &image_in, &mut emb)?;
        let t2 = Instant::now();
        audio_s.push((t1 - t0).as_secs_f64());
        visual_s.push((t2 - t1).as_secs_f64());
        pair_s.push((t2 - t0).as_secs_f64());
    }
    let pair = median(pair_s);
    println!(
        "bundle {} ({} {}, dim {}, L = {}), threads {}, {} iterations",
        args.bundle.bundle.display(),
        m.model.layout,
        m.model.precision,
        m.model.dim,
        m.audio_preprocessing.target_length,
        args.bundle.threads,
        args.iterations
    );
    println!("what              median latency");
    println!("audio encoder     {:>10.2} ms", 1e3 * median(audio_s));
    println!("visual encoder    {:>10.2} ms", 1e3 * median(visual_s));
    println!("frame pair        {:>10.2} ms", 1e3 * pair);
    println!("throughput        {:>10.2} pairs/s", 1.0 / pair);
    match peak_rss_mib() {
        Some(mib) => println!("peak RSS          {mib:>10.1} MiB"),
        None => println!("peak RSS          unavailable"),
    }
    Ok(())
}
