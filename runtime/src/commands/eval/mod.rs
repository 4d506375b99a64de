//! `cavsync eval`: candidate bundles (int8, f16, distilled) against a reference bundle on the same frames, in a report people can look at.

mod report;

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use image::RgbImage;

use cavsync_core::annotations::Annotations;
use cavsync_core::clip::Clip;
use cavsync_core::evaluation::{
    AgreementSummary, AgreementTally, FrameAgreement, FrameOutputs, compare_frame, success_curve,
};
use cavsync_core::localize::{FrameLocalization, FrameSize, Grid, render_overlay};
use cavsync_core::manifest::Manifest;
use cavsync_core::metrics::{Baselines, LocalizationSummary};
use cavsync_core::preprocess::image::load_rgb;
use cavsync_core::retrieval::{
    ClipEmbeddings, PatchScores, RetrievalMetrics, RetrievalReport, Strategy, evaluate,
};
use cavsync_device::bundle::{Bundle, Embedding, PlanOptions};
use cavsync_device::encode::FrameEncoder;
use cavsync_device::latency::{self, Latency};
use cavsync_device::session::{
    ClipAudio, FrameInput, FrameLocalizer, FrameOutput, GroundTruth, Session,
};
use cavsync_device::sink::{Sink, SinkError};

use super::MismatchedAudio;

/// Arguments of `cavsync eval`.
#[derive(clap::Args, Debug)]
#[command(group = clap::ArgGroup::new("input").required(true).args(["clip", "datafile"]))]
pub struct Args {
    /// The bundle every candidate is compared with (usually the full-precision one).
    #[arg(long)]
    reference: PathBuf,
    /// A bundle to compare with the reference (int8, f16, a distilled student); repeat for several.
    #[arg(long, required = true)]
    candidate: Vec<PathBuf>,
    /// CAV-MAE datafile JSON: every clip is run through every model (and retrieval is scored among them).
    #[arg(long)]
    datafile: Option<PathBuf>,
    /// A single clip folder: frames/*.jpg|png plus audio.wav.
    #[arg(long)]
    clip: Option<PathBuf>,
    /// Ground truth (annotations.json from `cavsync-export synth`): each model's pointing, cIoU, AUC and activity beside the centre-prior and mismatched-audio baselines.
    #[arg(long)]
    annotations: Option<PathBuf>,
    /// Output directory: report.json, report.html and its PNG plots.
    #[arg(long)]
    report: PathBuf,
    /// Most threads for matrix products, the same for every model (an encoder faster on one thread keeps one).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[command(flatten)]
    device: super::DeviceArgs,
    /// Timed iterations per encoder for the latency figures (after 2 warm-up runs).
    #[arg(long, default_value_t = 10)]
    iterations: usize,
    /// Frames shown per candidate where it disagrees most with the reference.
    #[arg(long, default_value_t = 8)]
    worst: usize,
    /// The reference's own stability, printed beside every candidate's agreement: the reference rerun on each frame shifted right by this many pixels of its input image (scaled to the frame) and compared with itself; 0 skips it.
    #[arg(long, default_value_t = 2)]
    jitter: u32,
}

/// One model of the evaluation: its bundle and what was measured of it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelReport {
    /// Short name used in tables and plots.
    pub name: String,
    /// The bundle directory.
    pub bundle: PathBuf,
    /// Weight precision from the manifest.
    pub precision: String,
    /// Quantization scheme, for int8 bundles.
    pub scheme: Option<String>,
    /// Bytes of the bundle's files.
    pub size_bytes: u64,
    /// Resident memory added by opening the bundle (plans, weights), MiB.
    pub resident_mib: Option<f64>,
    /// Median encoder latencies on this machine.
    pub latency: Latency,
    /// Task metrics against the annotations.
    pub localization: Option<LocalizationSummary>,
    /// The baselines on the same frames.
    pub baselines: Option<Baselines>,
    /// cIoU success curve: share of sounding frames with cIoU >= t.
    pub ciou_success: Vec<(f64, f64)>,
    /// Retrieval among the clips (diagonal_mean), when there are at least two full clips.
    pub retrieval: Option<RetrievalReport>,
    /// Retrieval scored by the map (`retrieve --patch`), when there are at least two full clips and their patch tokens fit [`PATCH_TOKEN_BUDGET`].
    pub patch_retrieval: Option<PatchRetrieval>,
}

/// Retrieval with clip pairs scored by the map: each aligned frame's audio global token against its image's best patch token, mean over frames.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct PatchRetrieval {
    /// Audio clips as queries, visual clips as candidates.
    pub audio_to_visual: RetrievalMetrics,
    /// Visual clips as queries, audio clips as candidates.
    pub visual_to_audio: RetrievalMetrics,
}

/// Most bytes of patch tokens kept per model for [`PatchRetrieval`] (every frame's, until the audio of all clips is known).
const PATCH_TOKEN_BUDGET: usize = 1 << 30;

/// One candidate against the reference.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CandidateReport {
    /// The candidate itself.
    pub model: ModelReport,
    /// How closely it follows the reference.
    pub agreement: AgreementSummary,
    /// Side-by-side images (reference | candidate) of the frames where it disagrees most, relative to the report.
    pub worst_frames: Vec<WorstFrame>,
}

/// A frame where a candidate disagrees with the reference.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WorstFrame {
    /// Clip id.
    pub clip: String,
    /// Frame index.
    pub frame: usize,
    /// IoU of the two top-half masks.
    pub mask_iou: f64,
    /// Peak distance in patches (none when a map had no peak).
    pub peak_distance: Option<usize>,
    /// The side-by-side PNG, relative to the report.
    pub image: String,
}

/// The reference against itself on frames shifted by a few pixels: how far its own peaks move when nothing that matters changes.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct JitterBaseline {
    /// Pixels of the model's input image the frames were shifted right by.
    pub pixels: u32,
    /// The shifted reference's agreement with the reference (its outputs moved back onto the unshifted frame).
    pub agreement: AgreementSummary,
}

/// Everything `eval` measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EvalReport {
    /// The processor the latencies were measured on.
    pub cpu: String,
    /// Threads every model ran with.
    pub threads: usize,
    /// Clips evaluated.
    pub clips: usize,
    /// Frames evaluated.
    pub frames: usize,
    /// The reference model.
    pub reference: ModelReport,
    /// Each candidate against it.
    pub candidates: Vec<CandidateReport>,
    /// The reference against itself on shifted frames (none with `--jitter 0`).
    pub jitter: Option<JitterBaseline>,
    /// Peak resident memory of the whole evaluation, MiB.
    pub peak_rss_mib: Option<f64>,
}

/// One opened model and its per-frame capture.
struct Model {
    name: String,
    bundle: Bundle,
    resident_mib: Option<f64>,
    capture: Capture,
}

/// Keeps the last frame's outputs of one model, and what the run needs of every frame.
#[derive(Default)]
struct Capture {
    audio_global: Vec<f32>,
    visual_global: Vec<f32>,
    visual_tokens: Vec<f32>,
    heatmap: Vec<f32>,
    localization: Option<FrameLocalization>,
    cious: Vec<f64>,
    all_audio: Vec<f32>,
    all_visual: Vec<f32>,
    /// Every frame's patch tokens, when they fit the budget (`None`: not kept).
    all_tokens: Option<Vec<f32>>,
}

impl Capture {
    fn outputs(&self) -> anyhow::Result<FrameOutputs<'_>> {
        Ok(FrameOutputs {
            audio_global: &self.audio_global,
            visual_global: &self.visual_global,
            visual_tokens: &self.visual_tokens,
            heatmap: &self.heatmap,
            localization: self
                .localization
                .as_ref()
                .context("no frame was localized")?,
        })
    }
}

fn copy_into(dst: &mut Vec<f32>, src: &[f32]) {
    dst.clear();
    dst.extend_from_slice(src);
}

impl Sink for Capture {
    fn frame(&mut self, frame: &FrameOutput<'_>) -> Result<(), SinkError> {
        let emb = frame.embeddings;
        copy_into(&mut self.audio_global, &emb.audio.global);
        copy_into(&mut self.visual_global, &emb.visual.global);
        copy_into(&mut self.visual_tokens, &emb.visual.tokens);
        copy_into(&mut self.heatmap, frame.heatmap);
        self.all_audio.extend_from_slice(&emb.audio.global);
        self.all_visual.extend_from_slice(&emb.visual.global);
        if let Some(tokens) = &mut self.all_tokens {
            tokens.extend_from_slice(&emb.visual.tokens);
        }
        if let Some(ciou) = frame.record.truth.as_ref().and_then(|t| t.ciou) {
            self.cious.push(ciou);
        }
        self.localization = Some(frame.record.localization.clone());
        Ok(())
    }
}

/// The reference rerun on every frame shifted right by a few pixels of its input, its outputs moved back and compared with its unshifted run.
struct Jitter<'a> {
    /// Pixels of the model's input image the frames are shifted by.
    pixels: u32,
    /// The model's input image side.
    input_size: usize,
    encoder: FrameEncoder<'a>,
    localizer: FrameLocalizer,
    /// The unshifted run's audio global token (the audio is not shifted; the map reads nothing else of it).
    audio: Embedding,
    heatmap: Vec<f32>,
    localization: FrameLocalization,
    tally: AgreementTally,
}

impl<'a> Jitter<'a> {
    /// The baseline for `bundle` (the reference), shifting by `pixels`.
    fn new(bundle: &'a Bundle, pixels: u32) -> anyhow::Result<Self> {
        Ok(Self {
            pixels,
            input_size: bundle.manifest.image_preprocessing.size,
            encoder: FrameEncoder::new(bundle),
            localizer: FrameLocalizer::new(bundle)?,
            audio: Embedding::default(),
            heatmap: Vec::new(),
            localization: FrameLocalization::default(),
            tally: AgreementTally::default(),
        })
    }

    /// Encodes `image` shifted (its visual encoder only), localizes the unshifted run's audio on it, and tallies its agreement with that run's `reference` outputs.
    fn frame(
        &mut self,
        image: &RgbImage,
        reference: &FrameOutputs<'_>,
        grid: Grid,
    ) -> anyhow::Result<()> {
        let size = FrameSize::of(image);
        let dx = frame_pixels(self.pixels, self.input_size, size);
        let visual = self.encoder.encode_visual(&shift_right(image, dx))?;
        copy_into(&mut self.audio.global, reference.audio_global);
        self.localizer.localize_pair_into(
            &self.audio,
            reference.localization.audio,
            visual,
            size,
            &mut self.localization,
        )?;
        copy_into(&mut self.heatmap, self.localizer.heatmap());
        shift_back(&mut self.heatmap, &mut self.localization, dx as usize, size);
        let shifted = FrameOutputs {
            audio_global: reference.audio_global,
            visual_global: &visual.global,
            visual_tokens: &visual.tokens,
            heatmap: &self.heatmap,
            localization: &self.localization,
        };
        self.tally
            .add(&compare_frame(reference, &shifted, grid, size)?);
        Ok(())
    }

    /// What the run measured.
    fn baseline(&self) -> anyhow::Result<JitterBaseline> {
        Ok(JitterBaseline {
            pixels: self.pixels,
            agreement: self.tally.summary().context("no frame was evaluated")?,
        })
    }
}

/// Moves a heatmap and its peaks and boxes `dx` pixels left, onto the frame before it was shifted right by `dx`.
fn shift_back(heatmap: &mut [f32], loc: &mut FrameLocalization, dx: usize, size: FrameSize) {
    let last = size.width.saturating_sub(1);
    for row in heatmap.chunks_exact_mut(size.width) {
        for x in 0..size.width {
            row[x] = row[(x + dx).min(last)];
        }
    }
    let left = |v: f32| (v - dx as f32).max(0.5);
    for peak in &mut loc.peaks {
        peak.x = left(peak.x);
    }
    for b in &mut loc.boxes {
        (b.x0, b.x1) = ((b.x0 - dx as f32).max(0.0), (b.x1 - dx as f32).max(1.0));
    }
}

/// `image` shifted right by `dx` pixels, its first column repeated into the gap.
fn shift_right(image: &RgbImage, dx: u32) -> RgbImage {
    RgbImage::from_fn(image.width(), image.height(), |x, y| {
        *image.get_pixel(x.saturating_sub(dx), y)
    })
}

/// Frame pixels that `pixels` of a model's `input`-pixel image span, once the frame is resized to it (at least one).
fn frame_pixels(pixels: u32, input: usize, size: FrameSize) -> u32 {
    let scale = size.width.min(size.height) as f64 / input.max(1) as f64;
    ((f64::from(pixels) * scale).round() as u32).max(1)
}

/// Total bytes of the files directly inside `dir`.
fn dir_size(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in
        std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))?
    {
        let meta = entry?.metadata()?;
        if meta.is_file() {
            total += meta.len();
        }
    }
    Ok(total)
}

/// A model's short name: the bundle folder's name, made unique with its position.
fn model_name(path: &Path, index: usize) -> String {
    let base = path.file_name().map_or_else(
        || format!("model{index}"),
        |n| n.to_string_lossy().into_owned(),
    );
    if index == 0 {
        base
    } else {
        format!("{index}:{base}")
    }
}

fn open_model(
    path: &Path,
    index: usize,
    threads: usize,
    device: cavsync_device::device::Device,
) -> anyhow::Result<Model> {
    let before = latency::rss_mib();
    let bundle = Bundle::open_on(path, &PlanOptions { threads }, device)?;
    let after = latency::rss_mib();
    Ok(Model {
        name: model_name(path, index),
        bundle,
        resident_mib: before.zip(after).map(|(b, a)| (a - b).max(0.0)),
        capture: Capture::default(),
    })
}

/// A manifest field two bundles must share to be compared: its name and how to read it.
type ManifestField = (&'static str, fn(&Manifest) -> String);

/// Refuse a candidate whose inputs or outputs cannot be compared with the reference's, naming every field that differs.
fn check_comparable(reference: &Bundle, candidate: &Bundle) -> anyhow::Result<()> {
    // Width, grid, image size and segment length may differ (a distilled student): the maps are
    // compared at frame resolution and embeddings only where the widths agree.
    let fields: [ManifestField; 2] = [
        ("audio_preprocessing.total_frames", |m| {
            m.audio_preprocessing.total_frames.to_string()
        }),
        ("audio_preprocessing.num_mel_bins", |m| {
            m.audio_preprocessing.num_mel_bins.to_string()
        }),
    ];
    let (r, c) = (&reference.manifest, &candidate.manifest);
    let differ: Vec<String> = fields
        .iter()
        .map(|(name, get)| (name, get(r), get(c)))
        .filter(|(_, a, b)| a != b)
        .map(|(name, a, b)| format!("{name} is {a} in the reference, {b} in the candidate"))
        .collect();
    if differ.is_empty() {
        Ok(())
    } else {
        bail!(
            "{}/manifest.toml cannot be compared with {}/manifest.toml: {}",
            candidate.dir.display(),
            reference.dir.display(),
            differ.join("; ")
        )
    }
}

/// The frames where one candidate disagrees most, worst first, at most `keep`.
struct WorstFrames {
    keep: usize,
    frames: Vec<(FrameAgreement, String, usize, RgbImage)>,
}

impl WorstFrames {
    fn admits(&self, a: &FrameAgreement) -> bool {
        self.keep > 0
            && (self.frames.len() < self.keep
                || self
                    .frames
                    .last()
                    .is_some_and(|(w, ..)| a.disagreement() > w.disagreement()))
    }

    fn insert(&mut self, a: FrameAgreement, clip: &str, frame: usize, image: RgbImage) {
        self.frames.push((a, clip.to_string(), frame, image));
        self.frames.sort_by(|x, y| {
            y.0.disagreement()
                .partial_cmp(&x.0.disagreement())
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        self.frames.truncate(self.keep);
    }
}

/// Reference and candidate overlays side by side.
fn side_by_side(
    image: &RgbImage,
    reference: &FrameOutputs<'_>,
    candidate: &FrameOutputs<'_>,
) -> anyhow::Result<RgbImage> {
    let left = render_overlay(image, reference.heatmap, reference.localization)?;
    let right = render_overlay(image, candidate.heatmap, candidate.localization)?;
    let gap = 4;
    let mut out = RgbImage::from_pixel(
        left.width() * 2 + gap,
        left.height(),
        image::Rgb([255, 255, 255]),
    );
    image::imageops::replace(&mut out, &left, 0, 0);
    image::imageops::replace(&mut out, &right, i64::from(left.width() + gap), 0);
    Ok(out)
}

/// Retrieval among the clips (taking the captured embeddings) when every clip has the same number of frames and there are at least two: on the global tokens, and by the map where the patch tokens were kept.
fn retrieval(
    capture: &mut Capture,
    clips: &[Clip],
    dim: usize,
) -> anyhow::Result<(Option<RetrievalReport>, Option<PatchRetrieval>)> {
    let frames = clips.first().map_or(0, |c| c.frames.len());
    if clips.len() < 2 || frames == 0 || clips.iter().any(|c| c.frames.len() != frames) {
        return Ok((None, None));
    }
    let audio = ClipEmbeddings::new(
        std::mem::take(&mut capture.all_audio),
        clips.len(),
        frames,
        dim,
    )?;
    let visual = ClipEmbeddings::new(
        std::mem::take(&mut capture.all_visual),
        clips.len(),
        frames,
        dim,
    )?;
    let global = evaluate(&audio, &visual, Strategy::DiagonalMean)?;
    let Some(tokens) = capture.all_tokens.take() else {
        return Ok((Some(global), None));
    };
    let per_frame = tokens.len() / (clips.len() * frames);
    let mut scores = PatchScores::new(audio);
    for (i, frame_tokens) in tokens.chunks_exact(per_frame.max(1)).enumerate() {
        scores.add_frame(i / frames, i % frames, frame_tokens)?;
    }
    let (audio_to_visual, visual_to_audio) = scores.evaluate()?;
    Ok((
        Some(global),
        Some(PatchRetrieval {
            audio_to_visual,
            visual_to_audio,
        }),
    ))
}

/// Run every model over every frame, compare, measure, write the report.
pub fn run(args: &Args) -> anyhow::Result<()> {
    if args.threads == 0 {
        bail!("--threads must be at least 1");
    }
    let device = args.device.resolve()?;
    let mut models = vec![open_model(&args.reference, 0, args.threads, device)?];
    for (i, path) in args.candidate.iter().enumerate() {
        let model = open_model(path, i + 1, args.threads, device)?;
        check_comparable(&models[0].bundle, &model.bundle)?;
        models.push(model);
    }
    let reference = &models[0].bundle;
    let grid = Grid::from_rows_cols(reference.manifest.visual.grid);
    let total_frames = reference.manifest.audio_preprocessing.total_frames;
    let clips = super::file_clips(args.clip.as_deref(), args.datafile.as_deref(), total_frames)?
        .context("give --clip or --datafile")?;
    let annotations = args
        .annotations
        .as_deref()
        .map(Annotations::read)
        .transpose()?;
    let truth = annotations.as_ref().map(|a| GroundTruth {
        annotations: a,
        path: args.annotations.as_deref().unwrap_or(Path::new("")),
    });
    std::fs::create_dir_all(args.report.join("frames"))
        .with_context(|| format!("{}: cannot create", args.report.display()))?;
    let frame_count: usize = clips.iter().map(|c| c.frames.len()).sum();
    for model in &mut models {
        let m = &model.bundle.manifest;
        let bytes = frame_count
            .saturating_mul(m.visual.grid.iter().product::<usize>())
            .saturating_mul(model.bundle.dim())
            .saturating_mul(std::mem::size_of::<f32>());
        if bytes <= PATCH_TOKEN_BUDGET {
            model.capture.all_tokens = Some(Vec::with_capacity(bytes / 4));
        } else {
            tracing::warn!(
                model = %model.name,
                mib = bytes >> 20,
                "retrieval by the map skipped: its patch tokens would exceed the budget"
            );
        }
    }
    let bar = super::frame_progress(frame_count, "evaluating");
    let (bundles, mut captures): (Vec<&Bundle>, Vec<&mut Capture>) = models
        .iter_mut()
        .map(|m| (&m.bundle, &mut m.capture))
        .unzip();
    let mut sessions = bundles
        .iter()
        .map(|b| Session::new(b, truth))
        .collect::<Result<Vec<_>, _>>()?;
    let mut tallies = vec![AgreementTally::default(); sessions.len() - 1];
    let mut worst: Vec<WorstFrames> = (1..sessions.len())
        .map(|_| WorstFrames {
            keep: args.worst,
            frames: Vec::new(),
        })
        .collect();
    let mut jitter = match args.jitter {
        0 => None,
        pixels => Some(Jitter::new(bundles[0], pixels)?),
    };
    let mismatched_audio = MismatchedAudio::new(&clips, truth.is_some());
    for (i, clip) in clips.iter().enumerate() {
        let mismatched = mismatched_audio.for_clip(&clips, i);
        for session in &mut sessions {
            session.begin_clip(&clip.id, ClipAudio::of(clip), mismatched.map(ClipAudio::of))?;
        }
        for frame in &clip.frames {
            let image = load_rgb(&frame.path)?;
            let input = FrameInput {
                index: frame.index,
                time_s: frame.time_s,
                image: &image,
                path: Some(&frame.path),
            };
            for (session, capture) in sessions.iter_mut().zip(captures.iter_mut()) {
                session.frame(&input, &mut [&mut **capture])?;
            }
            let size = FrameSize::of(&image);
            let (first, rest) = captures.split_at(1);
            let r = first[0].outputs()?;
            for ((capture, tally), worst) in rest.iter().zip(&mut tallies).zip(&mut worst) {
                let c = capture.outputs()?;
                let agreement = compare_frame(&r, &c, grid, size)
                    .with_context(|| format!("clip {} frame {}", clip.id, frame.index))?;
                tally.add(&agreement);
                if worst.admits(&agreement) {
                    let pair = side_by_side(&image, &r, &c)?;
                    worst.insert(agreement, &clip.id, frame.index, pair);
                }
            }
            if let Some(jitter) = &mut jitter {
                jitter
                    .frame(&image, &r, grid)
                    .with_context(|| format!("clip {} frame {}, shifted", clip.id, frame.index))?;
            }
            bar.inc(1);
        }
        for session in &mut sessions {
            session.end_clip(&mut [])?;
        }
    }
    bar.finish_and_clear();
    let jitter = jitter.as_ref().map(Jitter::baseline).transpose()?;
    let runs = sessions
        .into_iter()
        .map(|s| s.finish(&mut []))
        .collect::<Result<Vec<_>, _>>()?;
    let mut reports = Vec::new();
    for (model, run) in models.iter_mut().zip(runs) {
        let latency = latency::measure(&model.bundle, args.iterations)?;
        let dim = model.bundle.dim();
        let (retrieval, patch_retrieval) = retrieval(&mut model.capture, &clips, dim)?;
        let m = &model.bundle.manifest;
        reports.push(ModelReport {
            name: model.name.clone(),
            bundle: model.bundle.dir.clone(),
            precision: m.model.precision.to_string(),
            scheme: m.quantization.as_ref().map(|q| q.scheme.clone()),
            size_bytes: dir_size(&model.bundle.dir)?,
            resident_mib: model.resident_mib,
            latency,
            localization: run.summary,
            baselines: run.baselines,
            ciou_success: success_curve(&model.capture.cious, 20),
            retrieval,
            patch_retrieval,
        });
    }
    let mut reports = reports.into_iter();
    let reference = reports.next().context("no reference")?;
    let mut candidates = Vec::new();
    for (i, ((model, tally), worst)) in reports.zip(&tallies).zip(worst).enumerate() {
        let agreement = tally.summary().context("no frame was evaluated")?;
        let mut shown = Vec::new();
        for (n, (a, clip, frame, image)) in worst.frames.into_iter().enumerate() {
            let name = format!("frames/candidate{}-{n}.png", i + 1);
            cavsync_core::localize::save_png(&image, &args.report.join(&name))?;
            shown.push(WorstFrame {
                clip,
                frame,
                mask_iou: a.mask_iou,
                peak_distance: a.peak_distance,
                image: name,
            });
        }
        candidates.push(CandidateReport {
            model,
            agreement,
            worst_frames: shown,
        });
    }
    let report = EvalReport {
        cpu: latency::cpu_name(),
        threads: args.threads,
        clips: clips.len(),
        frames: frame_count,
        reference,
        candidates,
        jitter,
        peak_rss_mib: latency::peak_rss_mib(),
    };
    report::write(&report, &args.report)?;
    print!("{}", report::terminal(&report));
    println!(
        "report in {}: report.json, report.html, plots and frames/",
        args.report.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cavsync_core::localize::Peak;

    #[test]
    fn a_shifted_frame_and_its_outputs_moved_back() {
        let image = RgbImage::from_fn(5, 2, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let shifted = shift_right(&image, 2);
        let row: Vec<u8> = (0..5).map(|x| shifted.get_pixel(x, 1)[0]).collect();
        assert_eq!(row, [0, 0, 0, 1, 2]);
        assert_eq!(shifted.get_pixel(4, 1).0, [2, 1, 7]);

        let size = FrameSize {
            width: 5,
            height: 2,
        };
        let mut heatmap: Vec<f32> = (0..10).map(|i| (i % 5) as f32).collect();
        let mut localization = FrameLocalization {
            score: 0.5,
            contrast: 0.1,
            audio: Default::default(),
            active: true,
            peaks: vec![
                Peak {
                    x: 3.5,
                    y: 1.5,
                    value: 1.0,
                },
                Peak {
                    x: 1.5,
                    y: 0.5,
                    value: 0.5,
                },
            ],
            boxes: Vec::new(),
        };
        shift_back(&mut heatmap, &mut localization, 2, size);
        assert_eq!(heatmap[..5], [2.0, 3.0, 4.0, 4.0, 4.0]);
        assert_eq!(heatmap[5..], [2.0, 3.0, 4.0, 4.0, 4.0]);
        let peaks = &localization.peaks;
        assert_eq!((peaks[0].x, peaks[0].y, peaks[1].x), (1.5, 1.5, 0.5));
    }

    #[test]
    fn the_shift_scales_with_the_frame() {
        let size = |width, height| FrameSize { width, height };
        assert_eq!(frame_pixels(2, 224, size(224, 224)), 2);
        assert_eq!(frame_pixels(2, 224, size(448, 336)), 3);
        assert_eq!(frame_pixels(2, 224, size(64, 64)), 1);
    }
}
