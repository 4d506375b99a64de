//! `quantize`: an int8 bundle from an f32 bundle, with integer matmuls; the static scheme's activation ranges calibrated on real clips.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use prost::Message;
use tract_onnx::prelude::*;

use cavsync_core::clip;
use cavsync_core::manifest::{
    CalibrationRecord, EncoderInfo, LayerSensitivity, Manifest, sha256_file,
};
use cavsync_core::preprocess::image::{ImagePreprocessor, load_rgb};
use cavsync_core::preprocess::segment::{FramePosition, segment_rows_into};
use cavsync_core::similarity::cosine;
use cavsync_device::encode::clip_fbank;
use cavsync_formats::pb::ModelProto;
use cavsync_formats::quantize::{
    Calibration, QuantizeOptions, entropy_threshold, graph_file, quantizable_activations,
    quantizable_weights, quantize_bundle, quantize_graph, with_extra_outputs,
};

/// How activations are quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scheme {
    /// Constant ranges calibrated on --calibration: no range pass at run time (the fast one).
    Static,
    /// Each activation's range measured at run time (DynamicQuantizeLinear): no calibration, slower.
    Dynamic,
}

/// How a static activation range is chosen from the values seen in calibration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Method {
    /// Smallest and largest value seen.
    Minmax,
    /// The --percentile quantile of each tail (clips rare outliers for finer steps).
    Percentile,
    /// The clipping threshold whose int8 levels keep most of the values' distribution (least KL divergence, as TensorRT calibrates).
    Entropy,
}

/// Arguments of `quantize`.
#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// The f32 bundle to quantize (written by `convert`).
    #[arg(long)]
    bundle: PathBuf,
    /// Output bundle directory (replaced atomically if it exists).
    #[arg(long)]
    out: PathBuf,
    /// static (default with --calibration) or dynamic (default without).
    #[arg(long, value_enum)]
    scheme: Option<Scheme>,
    /// CAV-MAE datafile whose clips calibrate the static scheme's activation ranges (held-out clips of the model's domain).
    #[arg(long, value_name = "DATAFILE")]
    calibration: Option<PathBuf>,
    /// Calibrate on at most this many clips of --calibration (every frame of each).
    #[arg(long, default_value_t = 16)]
    clips: usize,
    /// How the static scheme chooses each range from the calibration values.
    #[arg(long, value_enum, default_value = "minmax")]
    method: Method,
    /// With --method percentile: the quantile (in percent) kept at each end of every activation's values.
    #[arg(long, default_value_t = 99.99)]
    percentile: f64,
    /// One weight scale per output channel instead of one per weight tensor (more accurate, same speed).
    #[arg(long)]
    per_channel: bool,
    /// Keep the MatMul weights whose names start with NAME in f32 (repeatable; the names are those this command prints).
    #[arg(long, value_name = "NAME")]
    keep_float: Vec<String>,
    /// Measure each weight's effect alone (the encoder's global-token cosine with f32 when only that weight is int8, on the first --sensitivity-frames calibration frames); printed worst first and recorded in the manifest.
    #[arg(long, requires = "calibration")]
    sensitivity: bool,
    /// With --sensitivity: frames the effect is measured on.
    #[arg(long, default_value_t = 8, requires = "sensitivity")]
    sensitivity_frames: usize,
    /// With --sensitivity: keep in f32 every weight whose cosine alone falls below this (e.g. 0.999).
    #[arg(long, value_name = "COSINE", requires = "sensitivity")]
    keep_below: Option<f64>,
}

/// Bins of the histogram a percentile range is read from.
const HISTOGRAM_BINS: usize = 4096;
/// Bins of the histogram of magnitudes an entropy threshold is chosen from (TensorRT's count).
const ENTROPY_BINS: usize = 2048;

/// Values seen of one activation: range, then a histogram over it (of the values, for
/// percentiles; of their magnitudes up to the largest, for entropy).
#[derive(Debug, Clone)]
struct Observed {
    min: f32,
    max: f32,
    histogram: Vec<u64>,
    magnitudes: bool,
}

impl Observed {
    fn new() -> Self {
        Self {
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            histogram: Vec::new(),
            magnitudes: false,
        }
    }

    /// Start the histogram pass: `bins` bins over the values' range, or over their magnitudes.
    fn start_histogram(&mut self, bins: usize, magnitudes: bool) {
        self.histogram = vec![0; bins];
        self.magnitudes = magnitudes;
    }

    /// Largest magnitude seen.
    fn magnitude(&self) -> f32 {
        self.min.abs().max(self.max.abs())
    }

    fn bin(&self, v: f32) -> usize {
        let bins = self.histogram.len();
        let (from, width, v) = if self.magnitudes {
            (0.0, self.magnitude(), v.abs())
        } else {
            (self.min, self.max - self.min, v)
        };
        (((v - from) / width.max(f32::MIN_POSITIVE) * bins as f32) as usize).min(bins - 1)
    }

    /// The value below which `q` of the histogram's mass lies (bin edges).
    fn quantile(&self, q: f64) -> f32 {
        let total: u64 = self.histogram.iter().sum();
        let target = (q * total as f64).round() as u64;
        let mut seen = 0;
        let width = (self.max - self.min) / self.histogram.len() as f32;
        for (i, &c) in self.histogram.iter().enumerate() {
            seen += c;
            if seen >= target.max(1) {
                return self.min + width * (i as f32 + if q < 0.5 { 0.0 } else { 1.0 });
            }
        }
        self.max
    }
}

/// The f32 bundle being quantized: its manifest and both decoded graphs, read and verified once.
struct Source {
    manifest: Manifest,
    graphs: Vec<(PathBuf, ModelProto)>,
}

/// One encoder of the source: its manifest entry, graph file and decoded graph.
struct SourceGraph<'s> {
    info: &'s EncoderInfo,
    path: &'s Path,
    model: &'s ModelProto,
}

impl Source {
    fn read(dir: &Path) -> anyhow::Result<Self> {
        let manifest = Manifest::read(dir)?;
        let mut graphs = Vec::new();
        for info in [&manifest.audio, &manifest.visual] {
            let (path, bytes) = info.read_verified(dir)?;
            let model = ModelProto::decode(bytes.as_slice())
                .with_context(|| format!("{}: not an ONNX model", path.display()))?;
            graphs.push((path, model));
        }
        Ok(Self { manifest, graphs })
    }

    /// The audio and the visual encoder, in that order.
    fn encoders(&self) -> impl Iterator<Item = SourceGraph<'_>> {
        [&self.manifest.audio, &self.manifest.visual]
            .into_iter()
            .zip(&self.graphs)
            .map(|(info, (path, model))| SourceGraph { info, path, model })
    }
}

/// One encoder's calibration plan: the f32 graph with every quantized activation as an extra output.
struct Probe {
    plan: Arc<TypedRunnableModel>,
    input_shape: Vec<usize>,
    names: Vec<String>,
    path: PathBuf,
}

impl Probe {
    fn new(graph: &SourceGraph<'_>, keep_float: &[String]) -> anyhow::Result<Self> {
        let names = quantizable_activations(graph.model, keep_float);
        let exposed = with_extra_outputs(graph.model, &names);
        Ok(Self {
            plan: plan_of(&exposed, &graph.info.input_shape, graph.path)?,
            input_shape: graph.info.input_shape.clone(),
            names,
            path: graph.path.to_path_buf(),
        })
    }

    /// Run one input; hand each exposed activation's values to `seen`.
    fn observe(&self, input: &[f32], seen: &mut [Observed], histogram: bool) -> anyhow::Result<()> {
        let tensor = Tensor::from_shape(&self.input_shape, input)?;
        let outputs = self.plan.run(tvec!(tensor.into())).map_err(|e| {
            anyhow::anyhow!("{}: calibration run failed: {e:#}", self.path.display())
        })?;
        for (value, obs) in outputs.iter().skip(2).zip(seen.iter_mut()) {
            let view = value.to_plain_array_view::<f32>()?;
            for &v in view.iter() {
                if !v.is_finite() {
                    bail!(
                        "{}: an activation holds {v} during calibration",
                        self.path.display()
                    );
                }
                if histogram {
                    let b = obs.bin(v);
                    obs.histogram[b] += 1;
                } else {
                    obs.min = obs.min.min(v);
                    obs.max = obs.max.max(v);
                }
            }
        }
        Ok(())
    }
}

/// Run `visit` on the normalised audio segment and image of every frame of the first `max_clips` clips of `datafile`.
fn for_each_frame(
    datafile: &Path,
    manifest: &Manifest,
    max_clips: usize,
    max_frames: usize,
    bar: &indicatif::ProgressBar,
    mut visit: impl FnMut(&[f32], &[f32]) -> anyhow::Result<()>,
) -> anyhow::Result<(usize, usize)> {
    let target = manifest.audio_preprocessing.target_length;
    let total = manifest.audio_preprocessing.total_frames;
    let mut images = ImagePreprocessor::with_size(manifest.image_preprocessing.size as u32);
    let mut image = vec![0.0f32; manifest.visual.input_shape.iter().product()];
    let mut segment = Vec::new();
    let (mut clips, mut frames) = (0, 0);
    for entry in clip::read_datafile(datafile)?.iter().take(max_clips) {
        let clip = clip::clip_from_datafile_entry(entry, total)?;
        let mel = clip_fbank(&clip.id, &clip.audio)?;
        for frame in &clip.frames {
            if frames == max_frames {
                return Ok((clips + 1, frames));
            }
            let position = FramePosition {
                index: frame.index,
                total_frames: clip.total_frames,
                time_s: frame.time_s,
                duration_s: clip.duration_s(),
            };
            let bounds = clip.alignment.bounds(position, mel.nrows(), target);
            segment_rows_into(mel.view(), bounds, target, &mut segment);
            images.run_into(&load_rgb(&frame.path)?, &mut image)?;
            visit(&segment, &image)?;
            frames += 1;
            bar.inc(1);
        }
        clips += 1;
    }
    Ok((clips, frames))
}

/// Calibrate the activation ranges of both encoders of the f32 bundle at `dir` on `datafile`.
fn calibrate(args: &QuantizeArgs, datafile: &Path, source: &Source) -> anyhow::Result<Calibration> {
    let manifest = &source.manifest;
    let probes = source
        .encoders()
        .map(|g| Probe::new(&g, &args.keep_float))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut seen: Vec<Vec<Observed>> = probes
        .iter()
        .map(|p| vec![Observed::new(); p.names.len()])
        .collect();
    let passes = if args.method == Method::Minmax { 1 } else { 2 };
    let available = clip::read_datafile(datafile)?.len().min(args.clips);
    let frames_per_pass = available * manifest.audio_preprocessing.total_frames;
    let bar = cavsync_cli::progress_bar(
        passes * frames_per_pass,
        "calibrating [{bar:30}] {pos}/{len} frames {per_sec} eta {eta}",
    );
    let mut counted = (0, 0);
    for pass in 0..passes {
        let histogram = pass == 1;
        if histogram {
            for obs in seen.iter_mut().flatten() {
                match args.method {
                    Method::Entropy => obs.start_histogram(ENTROPY_BINS, true),
                    _ => obs.start_histogram(HISTOGRAM_BINS, false),
                }
            }
        }
        counted = for_each_frame(
            datafile,
            manifest,
            args.clips,
            usize::MAX,
            &bar,
            |audio, image| {
                let (a, v) = seen.split_at_mut(1);
                probes[0].observe(audio, &mut a[0], histogram)?;
                probes[1].observe(image, &mut v[0], histogram)
            },
        )?;
    }
    bar.finish_and_clear();
    if counted.1 == 0 {
        bail!("{}: no clip to calibrate on", datafile.display());
    }
    let q = args.percentile / 100.0;
    let mut ranges = BTreeMap::new();
    for (probe, obs) in probes.iter().zip(&seen) {
        for (name, o) in probe.names.iter().zip(obs) {
            let range = match args.method {
                Method::Minmax => (o.min, o.max),
                Method::Percentile => (o.quantile(1.0 - q), o.quantile(q)),
                Method::Entropy => {
                    let t = entropy_threshold(&o.histogram, o.magnitude() / ENTROPY_BINS as f32);
                    (-t, t)
                }
            };
            ranges.insert((graph_file(&probe.path), name.clone()), range);
        }
    }
    Ok(Calibration {
        ranges,
        record: CalibrationRecord {
            datafile: datafile.display().to_string(),
            datafile_sha256: sha256_file(datafile)?,
            clips: counted.0,
            frames: counted.1,
            method: match args.method {
                Method::Minmax => "minmax".into(),
                Method::Percentile => format!("percentile:{}", args.percentile),
                Method::Entropy => "entropy".into(),
            },
        },
    })
}

/// An optimised single-input plan of an ONNX model held in memory.
fn plan_of(
    model: &ModelProto,
    input_shape: &[usize],
    path: &Path,
) -> anyhow::Result<Arc<TypedRunnableModel>> {
    let bytes = model.encode_to_vec();
    tract_onnx::onnx()
        .model_for_read(&mut bytes.as_slice())
        .and_then(|m| m.with_input_fact(0, f32::fact(input_shape).into()))
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .map_err(|e| anyhow::anyhow!("{}: cannot plan: {e:#}", path.display()))
}

/// The global output (first output) of `plan` for each input.
fn globals(
    plan: &Arc<TypedRunnableModel>,
    shape: &[usize],
    inputs: &[Vec<f32>],
) -> anyhow::Result<Vec<Vec<f32>>> {
    inputs
        .iter()
        .map(|x| {
            let out = plan
                .run(tvec!(Tensor::from_shape(shape, x)?.into()))
                .map_err(|e| anyhow::anyhow!("{e:#}"))?;
            Ok(out[0]
                .to_plain_array_view::<f32>()?
                .iter()
                .copied()
                .collect())
        })
        .collect()
}

/// Each quantizable weight's effect alone: the mean global-token cosine with f32 when only it is int8, most harmful first.
fn sensitivity(
    args: &QuantizeArgs,
    datafile: &Path,
    calibration: &Calibration,
    source: &Source,
) -> anyhow::Result<Vec<LayerSensitivity>> {
    let mut inputs: [Vec<Vec<f32>>; 2] = [Vec::new(), Vec::new()];
    let none = indicatif::ProgressBar::hidden();
    for_each_frame(
        datafile,
        &source.manifest,
        args.clips,
        args.sensitivity_frames,
        &none,
        |a, v| {
            inputs[0].push(a.to_vec());
            inputs[1].push(v.to_vec());
            Ok(())
        },
    )?;
    let models: Vec<(SourceGraph<'_>, Vec<String>)> = source
        .encoders()
        .map(|g| {
            let names = quantizable_weights(g.model, &args.keep_float);
            (g, names)
        })
        .collect();
    let layers: usize = models.iter().map(|(_, n)| n.len()).sum();
    let bar = cavsync_cli::progress_bar(
        layers,
        "sensitivity [{bar:30}] {pos}/{len} weights eta {eta}",
    );
    let mut options = QuantizeOptions {
        per_channel: args.per_channel,
        keep_float: Vec::new(),
        calibration: Some(calibration.clone()),
        sensitivity: Vec::new(),
    };
    let mut found = Vec::new();
    for (((g, names), inputs), what) in models.iter().zip(&inputs).zip(["audio", "visual"]) {
        let shape = &g.info.input_shape;
        let reference = globals(&plan_of(g.model, shape, g.path)?, shape, inputs)?;
        for name in names {
            // Every other weight stays f32, so only `name` is int8.
            options.keep_float = args.keep_float.clone();
            options
                .keep_float
                .extend(names.iter().filter(|n| *n != name).cloned());
            let mut one = g.model.clone();
            quantize_graph(&mut one, &options, g.path)?;
            let got = globals(&plan_of(&one, shape, g.path)?, shape, inputs)?;
            let mean = reference
                .iter()
                .zip(&got)
                .map(|(r, g)| f64::from(cosine(r, g)))
                .sum::<f64>()
                / reference.len().max(1) as f64;
            found.push(LayerSensitivity {
                encoder: what.to_string(),
                name: name.clone(),
                global_cosine: mean,
                kept_float: args.keep_below.is_some_and(|t| mean < t),
            });
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    found.sort_by(|a, b| a.global_cosine.total_cmp(&b.global_cosine));
    Ok(found)
}

/// Quantize the bundle and print what became of each weight.
pub fn run(args: &QuantizeArgs) -> anyhow::Result<()> {
    let scheme = args.scheme.unwrap_or(if args.calibration.is_some() {
        Scheme::Static
    } else {
        Scheme::Dynamic
    });
    if !(args.percentile > 50.0 && args.percentile <= 100.0) {
        bail!(
            "--percentile {}: expected a percentage above 50 and at most 100",
            args.percentile
        );
    }
    let source = match scheme {
        Scheme::Static if args.calibration.is_some() => Some(
            Source::read(&args.bundle)
                .with_context(|| format!("cannot quantize {}", args.bundle.display()))?,
        ),
        _ => None,
    };
    let calibration = match (scheme, &args.calibration, &source) {
        (Scheme::Static, Some(datafile), Some(source)) => Some(
            calibrate(args, datafile, source)
                .with_context(|| format!("cannot calibrate on {}", datafile.display()))?,
        ),
        (Scheme::Static, _, _) => {
            bail!(
                "--scheme static needs --calibration DATAFILE (clips to measure activation ranges on)"
            )
        }
        (Scheme::Dynamic, Some(_), _) => {
            bail!(
                "--calibration is for the static scheme; the dynamic scheme measures ranges at run time"
            )
        }
        (Scheme::Dynamic, None, _) => None,
    };
    let (mut keep_float, mut measured) = (args.keep_float.clone(), Vec::new());
    if let (true, Some(cal), Some(datafile), Some(source)) =
        (args.sensitivity, &calibration, &args.calibration, &source)
    {
        measured = sensitivity(args, datafile, cal, source)
            .with_context(|| format!("cannot measure sensitivity on {}", datafile.display()))?;
        println!(
            "sensitivity: global-token cosine with f32 when only this weight is int8, worst first"
        );
        for l in &measured {
            let kept = if l.kept_float { "  kept f32" } else { "" };
            println!(
                "{:<7} {:<48} {:.6}{kept}",
                l.encoder, l.name, l.global_cosine
            );
        }
        keep_float.extend(
            measured
                .iter()
                .filter(|l| l.kept_float)
                .map(|l| l.name.clone()),
        );
    }
    let options = QuantizeOptions {
        per_channel: args.per_channel,
        keep_float,
        calibration,
        sensitivity: measured,
    };
    let (manifest, reports) = quantize_bundle(&args.bundle, &args.out, &options)
        .with_context(|| format!("cannot quantize {}", args.bundle.display()))?;
    for r in &reports {
        if r.kept_float {
            println!("{:<48} kept f32", r.name);
        } else {
            println!(
                "{:<48} int8, max weight error {:.2}% of the largest weight",
                r.name,
                100.0 * r.relative_error
            );
        }
    }
    let q = manifest
        .quantization
        .as_ref()
        .context("the quantized manifest lacks its quantization section")?;
    println!(
        "wrote {} (int8, {} scheme: {} integer matmuls, {} kept f32; weights {}; activations {})",
        args.out.display(),
        q.scheme,
        q.quantized_matmuls,
        q.kept_float.len(),
        q.weights,
        q.activations
    );
    Ok(())
}
