//! `cavsync bench`: encoder latency and throughput of a bundle on this machine.

use anyhow::bail;

use std::collections::BTreeMap;

use cavsync_core::model::{Modality, Precision};
use cavsync_device::bundle::NodeProfile;
use cavsync_device::latency::{self, FloorKernel, measure, pattern, sgemm_gflops, split_available};

use super::{BundleArgs, DeviceArgs};

/// Arguments of `cavsync bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    bundle: BundleArgs,
    #[command(flatten)]
    device: DeviceArgs,
    /// Timed iterations per encoder (after 2 warm-up runs).
    #[arg(long, default_value_t = 20)]
    iterations: usize,
    /// Also time every node of both optimised plans (per operator kind and the slowest nodes, with their share and the GFLOP/s of each product) and this machine's f32 product floor.
    #[arg(long)]
    profile: bool,
    /// With --profile: how many of the slowest nodes to list per encoder.
    #[arg(long, default_value_t = 12, requires = "profile")]
    top: usize,
    /// Another bundle timed in the same run with the same threads (repeatable): a table of each one's pair latency and its ratio to --bundle's.
    #[arg(long)]
    compare: Vec<std::path::PathBuf>,
}

/// One bundle's line of the comparison table.
fn compare_line(name: &str, bundle: &cavsync_device::bundle::Bundle, pair_s: f64, base_s: f64) {
    let m = &bundle.manifest;
    println!(
        "{name:<40} {:>5} {:>9} {:>10.2} {:>10.4}",
        m.model.precision.to_string(),
        m.model
            .gflops_per_pair
            .map_or_else(|| "-".into(), |g| format!("{g:.3}")),
        1e3 * pair_s,
        pair_s / base_s
    );
}

/// Matrix size of the f32 floor measurement.
const FLOOR_N: usize = 1024;

fn gflops(fma: u64, seconds: f64) -> String {
    if fma == 0 || seconds <= 0.0 {
        String::new()
    } else {
        format!("{:.1}", 2.0 * fma as f64 / seconds / 1e9)
    }
}

/// Print one encoder's profile: per operator kind (products split by input type), then the slowest nodes.
fn print_profile(what: &str, nodes: &[NodeProfile], runs: usize, top: usize) {
    let total: f64 = nodes.iter().map(|n| n.seconds).sum();
    let total_fma: u64 = nodes.iter().map(|n| n.fma).sum();
    println!(
        "{what} encoder: {:.2} ms per run over its {} plan nodes (mean of {runs} runs), {} GFLOP/s overall",
        1e3 * total,
        nodes.len(),
        gflops(total_fma, total)
    );
    let mut kinds: BTreeMap<String, (f64, u64, usize)> = BTreeMap::new();
    for n in nodes {
        let kind = match (&n.input_type, n.op.as_str()) {
            (Some(t), "OptMatMul" | "EinSum" | "MatMul") => format!("{} {t}", n.op),
            _ => n.op.clone(),
        };
        let e = kinds.entry(kind).or_default();
        e.0 += n.seconds;
        e.1 += n.fma;
        e.2 += 1;
    }
    let mut kinds: Vec<_> = kinds.into_iter().collect();
    kinds.sort_by(|a, b| b.1.0.total_cmp(&a.1.0));
    println!(
        "  {:<28} {:>6} {:>10} {:>7} {:>9}",
        "operator", "nodes", "ms", "share", "GFLOP/s"
    );
    for (kind, (secs, fma, count)) in &kinds {
        println!(
            "  {kind:<28} {count:>6} {:>10.3} {:>6.1}% {:>9}",
            1e3 * secs,
            100.0 * secs / total.max(1e-12),
            gflops(*fma, *secs)
        );
    }
    let mut slow: Vec<&NodeProfile> = nodes.iter().collect();
    slow.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    println!("  slowest nodes:");
    for n in slow.iter().take(top) {
        println!(
            "  {:>8.3} ms {:>5.1}% {:>7} GFLOP/s  {} ({}) {}",
            1e3 * n.seconds,
            100.0 * n.seconds / total.max(1e-12),
            gflops(n.fma, n.seconds),
            n.name,
            n.op,
            n.detail
        );
    }
}

/// Time both encoders and print the medians.
pub fn run(args: &Args) -> anyhow::Result<()> {
    if args.iterations == 0 {
        bail!("--iterations must be at least 1");
    }
    let on = args.device.resolve()?;
    let bundle = args.bundle.open_at(&args.bundle.bundle, on)?;
    let m = &bundle.manifest;
    let lat = measure(&bundle, args.iterations)?;
    println!(
        "bundle {} ({} {}, dim {}, L = {}), threads {} (audio encoder uses {}, visual {}), {} iterations, {}",
        args.bundle.bundle.display(),
        m.model.layout,
        m.model.precision,
        m.model.dim,
        m.audio_preprocessing.target_length,
        args.bundle.threads,
        bundle.threads(Modality::Audio),
        bundle.threads(Modality::Visual),
        args.iterations,
        latency::cpu_name()
    );
    println!("what              median latency");
    println!("audio encoder     {:>10.2} ms", 1e3 * lat.audio_s);
    println!("visual encoder    {:>10.2} ms", 1e3 * lat.visual_s);
    println!(
        "frame pair        {:>10.2} ms   ({})",
        1e3 * lat.pair_s,
        if lat.concurrent {
            "encoders side by side, one thread each"
        } else {
            "encoders in turn"
        }
    );
    println!("throughput        {:>10.2} pairs/s", 1.0 / lat.pair_s);
    if args.profile {
        let mut pair_fma = 0u64;
        for (what, modality, stride) in [
            ("audio", Modality::Audio, 7919),
            ("visual", Modality::Visual, 104_729),
        ] {
            let input = pattern(bundle.input_len(modality), stride);
            let nodes = bundle.profile(modality, &input, args.iterations)?;
            pair_fma += nodes.iter().map(|n| n.fma).sum::<u64>();
            print_profile(what, &nodes, args.iterations, args.top);
        }
        let runs = args.iterations.min(10);
        let plans = sgemm_gflops(&bundle.options, FLOOR_N, runs, FloorKernel::Plans)?;
        let (tract, kernel) = if cfg!(target_arch = "x86_64") {
            let tract = sgemm_gflops(&bundle.options, FLOOR_N, runs, FloorKernel::Tract)?;
            (tract, "the gemm crate")
        } else {
            (plans, "tract")
        };
        let floor = plans.max(tract);
        print!(
            "f32 floor: the {FLOOR_N}^3 f32 product reaches {plans:.1} GFLOP/s with the plans' kernel ({kernel}), {tract:.1} with tract's, same threads"
        );
        if split_available() {
            let split = sgemm_gflops(&bundle.options, FLOOR_N, runs, FloorKernel::Split)?;
            print!(
                "; on AMX tiles in three bf16 parts (the plans' kernel for weights of more than 2^18 values, not an sgemm) {split:.1}"
            );
        }
        if m.model.precision == Precision::F32 {
            let at_floor = 2.0 * pair_fma as f64 / (floor * 1e9);
            print!(
                "; the pair's {:.2} GFLOP at {floor:.1} GFLOP/s take {:.2} ms, the pair measured {:.2} ms ({:.2}x the floor)",
                2.0 * pair_fma as f64 / 1e9,
                1e3 * at_floor,
                1e3 * lat.pair_s,
                lat.pair_s / at_floor
            );
        }
        println!();
    }
    if !args.compare.is_empty() {
        println!(
            "\n{:<40} {:>5} {:>9} {:>10} {:>10}",
            "bundle (same run, same threads)", "prec", "GFLOP", "pair ms", "/ first"
        );
        compare_line(
            &args.bundle.bundle.display().to_string(),
            &bundle,
            lat.pair_s,
            lat.pair_s,
        );
        for dir in &args.compare {
            let other = args.bundle.open_at(dir, on)?;
            let l = measure(&other, args.iterations)?;
            compare_line(&dir.display().to_string(), &other, l.pair_s, lat.pair_s);
        }
    }
    match latency::peak_rss_mib() {
        Some(mib) => println!("peak RSS          {mib:>10.1} MiB"),
        None => println!("peak RSS          unavailable"),
    }
    Ok(())
}
