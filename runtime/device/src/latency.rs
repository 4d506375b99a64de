//! How fast a bundle's encoders run on this machine, and how much memory the process holds.

use std::time::Instant;

use cavsync_core::model::Modality;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::einsum::EinSum;

use crate::bundle::{Bundle, BundleError, Embedding, PlanOptions};

/// Median latencies of one bundle's encoders, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Latency {
    /// Audio encoder, one segment.
    pub audio_s: f64,
    /// Visual encoder, one image.
    pub visual_s: f64,
    /// Both, as the runtime runs a frame pair ([`Bundle::embed_pair_into`]: side by side where the bundle has two threads or more).
    pub pair_s: f64,
    /// Whether the pair's encoders ran side by side.
    pub concurrent: bool,
    /// Timed iterations behind each median.
    pub iterations: usize,
}

/// The median of `values` (the mean of the middle two for an even count; NaN when empty).
pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// A deterministic input of `len` values in [-1, 1).
pub fn pattern(len: usize, stride: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * stride) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

/// Time both encoders of `bundle` on fixed inputs: 2 warm-up runs, then `iterations` timed ones (at least 1).
pub fn measure(bundle: &Bundle, iterations: usize) -> Result<Latency, BundleError> {
    let iterations = iterations.max(1);
    let audio_in = pattern(bundle.input_len(Modality::Audio), 7919);
    let image_in = pattern(bundle.input_len(Modality::Visual), 104_729);
    let (mut emb, mut other) = (Embedding::default(), Embedding::default());
    let mut concurrent = false;
    for _ in 0..2 {
        bundle.embed_pair_into(&audio_in, &image_in, &mut emb, &mut other)?;
    }
    let (mut audio, mut visual, mut pair) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..iterations {
        let t0 = Instant::now();
        bundle.embed_into(Modality::Audio, &audio_in, &mut emb)?;
        let t1 = Instant::now();
        bundle.embed_into(Modality::Visual, &image_in, &mut emb)?;
        audio.push((t1 - t0).as_secs_f64());
        visual.push(t1.elapsed().as_secs_f64());
        let times = bundle.embed_pair_into(&audio_in, &image_in, &mut emb, &mut other)?;
        pair.push(times.pair_s);
        concurrent = times.concurrent;
    }
    Ok(Latency {
        audio_s: median(audio),
        visual_s: median(visual),
        pair_s: median(pair),
        concurrent,
        iterations,
    })
}

/// Which kernel an `n x n x n` floor measurement runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloorKernel {
    /// tract's own optimised product.
    Tract,
    /// The f32 product the bundles' CPU plans run on the vector units (on x86-64 the `gemm`
    /// crate's, elsewhere tract's).
    Plans,
    /// The product by constant weights the x86-64 plans run on AMX-BF16 tiles, operands cut in
    /// three bf16 parts ([`crate::splitproduct`]), where the CPU has them.
    Split,
}

/// Whether this CPU runs [`FloorKernel::Split`] (and the plans' products by large weights on it).
pub fn split_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return crate::splitproduct::available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The f32 matrix-product floor of this machine: GFLOP/s of an `n x n x n` product by `kernel`, median of `iterations` runs (after one warm-up), with the plan options the bundles use, run as their plans run.
pub fn sgemm_gflops(
    options: &PlanOptions,
    n: usize,
    iterations: usize,
    kernel: FloorKernel,
) -> Result<f64, BundleError> {
    let err = |e: TractError| BundleError::Run(format!("sgemm floor: {e:#}"));
    let run_options = options.run_options()?;
    let build = || -> TractResult<Arc<TypedRunnableModel>> {
        let mut model = TypedModel::default();
        let a = model.add_source("a", f32::fact([n, n]))?;
        let weights = Tensor::from_shape(&[n, n], &pattern(n * n, 7919))?;
        let b = model.add_const("b", weights)?;
        let axes = "ik,kj->ij".parse()?;
        let c = model.wire_node("product", EinSum::new(axes, f32::datum_type()), &[a, b])?;
        model.select_output_outlets(&c)?;
        #[cfg(target_arch = "x86_64")]
        if kernel != FloorKernel::Tract {
            crate::matops::replace_float_products(&mut model)?;
        }
        #[cfg(target_arch = "x86_64")]
        if kernel == FloorKernel::Split {
            if !crate::splitproduct::available() {
                return Err(TractError::msg("this CPU has no AMX-BF16 tiles"));
            }
            crate::splitproduct::split_weight_products(&mut model)?;
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = kernel;
        model
            .into_optimized()?
            .into_runnable_with_options(&run_options)
    };
    let plan = build().map_err(err)?;
    let input: TValue = Tensor::from_shape(&[n, n], &pattern(n * n, 104_729))
        .map_err(err)?
        .into();
    let executor = run_options.executor.clone().unwrap_or_default();
    let times = crate::bundle::run_in(&executor, || -> TractResult<Vec<f64>> {
        let mut times = Vec::new();
        for round in 0..=iterations.max(1) {
            let t0 = Instant::now();
            plan.run(tvec!(input.clone()))?;
            if round > 0 {
                times.push(t0.elapsed().as_secs_f64());
            }
        }
        Ok(times)
    })
    .map_err(err)?;
    Ok(2.0 * (n as f64).powi(3) / median(times) / 1e9)
}

/// A `kB` line of /proc/self/status in MiB (None where unavailable).
fn status_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Peak resident set size of this process in MiB (None where /proc is unavailable).
pub fn peak_rss_mib() -> Option<f64> {
    status_mib("VmHWM:")
}

/// Resident set size of this process now, in MiB (None where /proc is unavailable).
pub fn rss_mib() -> Option<f64> {
    status_mib("VmRSS:")
}

/// The processor's model name from /proc/cpuinfo ("unknown CPU" where unavailable).
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, name)| name.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
    }
}
