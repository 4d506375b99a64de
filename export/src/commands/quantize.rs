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
use cavsync_formats::calibrate::{Observed, Probe, RangeRule, plan_of};
use cavsync_formats::pb::ModelProto;
use cavsync_formats::quantize::{
    Calibration, QuantizeOptions, quantizable_weights, quantize_bundle, quantize_graph,
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

/// The range rule `args` ask for.
fn range_rule(args: &QuantizeArgs) -> RangeRule {
    match args.method {
        Method::Minmax => RangeRule::Minmax,
        Method::Percentile => RangeRule::Percentile(args.percentile / 100.0),
        Method::Entropy => RangeRule::Entropy,
    }
}

/// Calibrate the activation ranges of both encoders of the f32 bundle at `dir` on `datafile`.
fn calibrate(args: &QuantizeArgs, datafile: &Path, source: &Source) -> anyhow::Result<Calibration> {
    let manifest = &source.manifest;
    let probes = source
        .encoders()
        .map(|g| Probe::new(g.model, &g.info.input_shape, g.path, &args.keep_float))
        .collect::<Result<Vec<_>, _>>()?;
    let mut seen: Vec<Vec<Observed>> = probes
        .iter()
        .map(|p| vec![Observed::default(); p.names().len()])
        .collect();
    let rule = range_rule(args);
    let passes = rule.passes();
    let available = clip::read_datafile(datafile)?.len().min(args.clips);
    let frames_per_pass = available * manifest.audio_preprocessing.total_frames;
    let bar = cavsync_cli::progress_bar(
        passes * frames_per_pass,
        "calibrating [{bar:30}] {pos}/{len} frames {per_sec} eta {eta}",
    );
    let mut counted = (0, 0);
    for pass in 0..passes {
        if pass == 1 {
            for obs in seen.iter_mut().flatten() {
                obs.start_histogram(rule);
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
                probes[0].observe(audio, &mut a[0])?;
                probes[1].observe(image, &mut v[0])?;
                Ok(())
            },
        )?;
    }
    bar.finish_and_clear();
    if counted.1 == 0 {
        bail!("{}: no clip to calibrate on", datafile.display());
    }
    let mut ranges = BTreeMap::new();
    for (probe, obs) in probes.iter().zip(&seen) {
        for (name, o) in probe.names().iter().zip(obs) {
            ranges.insert((probe.graph_file(), name.clone()), o.range(rule));
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
