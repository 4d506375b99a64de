//! A localization session: clips' audio and frames in from any source, one typed [`FrameRecord`] per frame out to every sink.
//!
//! The session encodes each frame with its aligned audio segment, localizes the sound on it,
//! scores it against ground truth when there is any (beside two trivial answers on the same
//! frames: a centred Gaussian and the model hearing another clip's audio), tallies the
//! metrics per clip and overall,
//! and hands each result to the sinks ([`crate::sink`]): JSON lines, heatmaps, the report,
//! metrics, a terminal, or a network stream. Frames come from memory ([`Session::frame`]), so
//! a file-based clip ([`Session::run_clip`]) and a live camera use the same path.

use std::path::{Path, PathBuf};
use std::time::Instant;

use image::RgbImage;
use ndarray::Array2;

use cavsync_core::annotations::{Annotations, ClipAnnotation};
use cavsync_core::clip::Clip;
use cavsync_core::localize::{
    AudioDescriptor, FrameLocalization, FrameSize, Grid, LocalizeConfig, LocalizeError, Localizer,
    similarity_map,
};
use cavsync_core::metrics::{
    self, Baselines, LocalizationSummary, LocalizationTally, MetricsError, centre_prior,
};
use cavsync_core::preprocess::audio::SAMPLE_RATE;
use cavsync_core::preprocess::image::{ImageError, load_rgb};
use cavsync_core::preprocess::segment::{Alignment, FramePosition};
use cavsync_core::record::{FrameRecord, FrameTruth};

use crate::bundle::{Bundle, Embedding};
use crate::encode::{EncodeError, FrameEmbeddings, FrameEncoder, clip_fbank};
use crate::sink::{Sink, SinkError};

/// Errors raised while running a session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// A frame could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// A frame image could not be read.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Localization post-processing failed.
    #[error(transparent)]
    Localize(#[from] LocalizeError),
    /// A metric could not be computed.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// A sink could not take a result.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The annotations lack the clip.
    #[error("{annotations}: clip {clip} has no entry in the annotations")]
    UnannotatedClip {
        /// The annotations file.
        annotations: PathBuf,
        /// The clip id.
        clip: String,
    },
    /// The annotations lack a frame of the clip.
    #[error("annotations of clip {clip} have no frame {frame}")]
    UnannotatedFrame {
        /// The clip id.
        clip: String,
        /// The frame index.
        frame: usize,
    },
    /// A frame's size differs from the clip's earlier frames.
    #[error("{source_name}: frame size {}x{} differs from the clip's earlier frames", .found.width, .found.height)]
    FrameSize {
        /// Where the frame came from.
        source_name: String,
        /// Its size.
        found: FrameSize,
    },
    /// A frame arrived outside a clip.
    #[error("a frame was given before any clip was begun")]
    NoClip,
}

/// Ground truth for a session: the annotations and the file they came from (for errors).
#[derive(Debug, Clone, Copy)]
pub struct GroundTruth<'a> {
    /// The annotations.
    pub annotations: &'a Annotations,
    /// Their file.
    pub path: &'a Path,
}

/// One frame handed to a session.
#[derive(Debug, Clone, Copy)]
pub struct FrameInput<'f> {
    /// Frame index k in the clip.
    pub index: usize,
    /// Time of the frame in the clip, seconds.
    pub time_s: f64,
    /// The decoded frame.
    pub image: &'f RgbImage,
    /// The image file it came from, if any.
    pub path: Option<&'f Path>,
}

/// What a sink sees of one frame: the record and what it was computed from.
#[derive(Debug, Clone, Copy)]
pub struct FrameOutput<'f> {
    /// The frame's record.
    pub record: &'f FrameRecord,
    /// The decoded frame.
    pub image: &'f RgbImage,
    /// The normalised heatmap at frame resolution (row-major, height x width).
    pub heatmap: &'f [f32],
    /// The frame's embeddings (audio segment and image).
    pub embeddings: &'f FrameEmbeddings,
}

/// What a sink sees at the end of a clip.
#[derive(Debug, Clone)]
pub struct ClipResult {
    /// The clip id.
    pub id: String,
    /// Frames localized.
    pub frames: usize,
    /// Their size (none when the clip had no frame).
    pub size: Option<FrameSize>,
    /// Metrics over the clip's sounding frames, when annotated and any sounded.
    pub summary: Option<LocalizationSummary>,
    /// The baselines on the same frames, when they were computed.
    pub baselines: Option<Baselines>,
}

/// What a sink sees at the end of a run.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Clips localized.
    pub clips: usize,
    /// Frames localized.
    pub frames: usize,
    /// Seconds spent encoding and localizing (preprocessing included, image decoding not).
    pub inference_s: f64,
    /// Threads the plans ran with.
    pub threads: usize,
    /// Metrics over every sounding frame, when annotated and any sounded.
    pub summary: Option<LocalizationSummary>,
    /// The baselines on the same frames, when they were computed.
    pub baselines: Option<Baselines>,
}

/// A clip's audio as a session takes it: 16 kHz mono samples, frames T, and how frames align with it.
#[derive(Debug, Clone, Copy)]
pub struct ClipAudio<'s> {
    /// Mono samples at 16 kHz.
    pub samples: &'s [f32],
    /// Frames T of the clip.
    pub total_frames: usize,
    /// How the clip's frames take their segments.
    pub alignment: Alignment,
}

impl<'s> ClipAudio<'s> {
    /// The audio of a file-based clip.
    pub fn of(clip: &'s Clip) -> Self {
        Self {
            samples: &clip.audio,
            total_frames: clip.total_frames,
            alignment: clip.alignment,
        }
    }
}

/// Turns frame embeddings into localization results with the bundle's calibrated threshold, reusing its buffers.
#[derive(Debug)]
pub struct FrameLocalizer {
    localizer: Localizer,
    grid: Grid,
    raw_map: Vec<f32>,
    heatmap: Vec<f32>,
}

impl FrameLocalizer {
    /// A localizer using the bundle's threshold and patch grid, other settings at their defaults.
    pub fn new(bundle: &Bundle) -> Result<Self, LocalizeError> {
        let config = LocalizeConfig {
            active_threshold: bundle.manifest.localization.active_threshold,
            activity: bundle.manifest.localization.activity,
            image_size: bundle.manifest.image_preprocessing.size as u32,
            ..LocalizeConfig::default()
        };
        let grid = Grid::from_rows_cols(bundle.manifest.visual.grid);
        Ok(Self {
            localizer: Localizer::new(config)?,
            grid,
            raw_map: vec![0.0; grid.rows * grid.cols],
            heatmap: Vec::new(),
        })
    }

    /// Localize the audio of a frame on its image of `size`.
    pub fn localize(
        &mut self,
        emb: &FrameEmbeddings,
        size: FrameSize,
    ) -> Result<FrameLocalization, LocalizeError> {
        self.localize_pair(&emb.audio, emb.audio_descriptor, &emb.visual, size)
    }

    /// Localize an audio embedding (of a segment described by `audio_descriptor`) on a frame's visual embedding, the frame being of `size`.
    pub fn localize_pair(
        &mut self,
        audio: &Embedding,
        audio_descriptor: AudioDescriptor,
        visual: &Embedding,
        size: FrameSize,
    ) -> Result<FrameLocalization, LocalizeError> {
        let mut out = FrameLocalization::default();
        self.localize_pair_into(audio, audio_descriptor, visual, size, &mut out)?;
        Ok(out)
    }

    /// [`FrameLocalizer::localize_pair`] into `out`, reusing its vectors: allocation-free once warm.
    pub fn localize_pair_into(
        &mut self,
        audio: &Embedding,
        audio_descriptor: AudioDescriptor,
        visual: &Embedding,
        size: FrameSize,
        out: &mut FrameLocalization,
    ) -> Result<(), LocalizeError> {
        similarity_map(&audio.global, &visual.tokens, &mut self.raw_map)?;
        self.localizer.run_into(
            &self.raw_map,
            audio_descriptor,
            self.grid,
            size,
            &mut self.heatmap,
            out,
        )
    }

    /// The normalised heatmap of the last frame at frame resolution (row-major).
    pub fn heatmap(&self) -> &[f32] {
        &self.heatmap
    }

    /// Sets the heatmap to all zeros for a frame of `size` that was not localized; allocation-free once warm.
    pub fn blank(&mut self, size: FrameSize) {
        self.heatmap.clear();
        self.heatmap.resize(size.width * size.height, 0.0);
    }
}

/// A clip's log-mel and where its frames lie in it.
struct ClipMel {
    mel: Array2<f32>,
    total_frames: usize,
    duration_s: f64,
    alignment: Alignment,
}

impl ClipMel {
    fn new(id: &str, audio: ClipAudio<'_>) -> Result<Self, EncodeError> {
        Ok(Self {
            mel: clip_fbank(id, audio.samples)?,
            total_frames: audio.total_frames,
            duration_s: audio.samples.len() as f64 / f64::from(SAMPLE_RATE),
            alignment: audio.alignment,
        })
    }

    /// Where frame `index` at `time_s` lies in this clip.
    fn position(&self, index: usize, time_s: f64) -> FramePosition {
        FramePosition {
            index,
            total_frames: self.total_frames,
            time_s,
            duration_s: self.duration_s,
        }
    }
}

/// The trivial answers scored beside the model: the audio they hear and their tallies.
struct BaselineState {
    mismatched: ClipMel,
    centre: LocalizationTally,
    mismatched_tally: LocalizationTally,
}

/// The clip being localized.
struct ClipState<'a> {
    id: String,
    audio: ClipMel,
    truth: Option<&'a ClipAnnotation>,
    tally: LocalizationTally,
    baselines: Option<BaselineState>,
    size: Option<FrameSize>,
    frames: usize,
}

/// A frame's ground truth as the metrics need it.
struct FrameGroundTruth {
    sounding: usize,
    offscreen: usize,
    multi_class: bool,
    mask: Vec<bool>,
}

/// A localization run over clips, feeding its sinks.
pub struct Session<'a> {
    encoder: FrameEncoder<'a>,
    localizer: FrameLocalizer,
    baseline_localizer: FrameLocalizer,
    baseline_audio: Embedding,
    centre: Vec<f32>,
    truth: Option<GroundTruth<'a>>,
    clip: Option<ClipState<'a>>,
    overall: LocalizationTally,
    overall_centre: LocalizationTally,
    overall_mismatched: LocalizationTally,
    clips: usize,
    frames: usize,
    inference_s: f64,
}

impl<'a> Session<'a> {
    /// A session running `bundle`, scoring against `truth` when given.
    pub fn new(bundle: &'a Bundle, truth: Option<GroundTruth<'a>>) -> Result<Self, SessionError> {
        Ok(Self {
            encoder: FrameEncoder::new(bundle),
            localizer: FrameLocalizer::new(bundle)?,
            baseline_localizer: FrameLocalizer::new(bundle)?,
            baseline_audio: Embedding::default(),
            centre: Vec::new(),
            truth,
            clip: None,
            overall: LocalizationTally::default(),
            overall_centre: LocalizationTally::default(),
            overall_mismatched: LocalizationTally::default(),
            clips: 0,
            frames: 0,
            inference_s: 0.0,
        })
    }

    /// Localize every frame of a file-based clip (images decoded from their paths); with ground truth, `mismatched` is the other clip whose audio the baseline hears.
    pub fn run_clip(
        &mut self,
        clip: &Clip,
        mismatched: Option<&Clip>,
        sinks: &mut [&mut dyn Sink],
    ) -> Result<(), SessionError> {
        self.begin_clip(&clip.id, ClipAudio::of(clip), mismatched.map(ClipAudio::of))?;
        for frame in &clip.frames {
            let image = load_rgb(&frame.path)?;
            let input = FrameInput {
                index: frame.index,
                time_s: frame.time_s,
                image: &image,
                path: Some(&frame.path),
            };
            self.frame(&input, sinks)?;
        }
        self.end_clip(sinks)?;
        Ok(())
    }

    /// Start a clip: its id and audio; with ground truth, `mismatched` is audio from elsewhere for the mismatched-audio baseline.
    pub fn begin_clip(
        &mut self,
        id: &str,
        audio: ClipAudio<'_>,
        mismatched: Option<ClipAudio<'_>>,
    ) -> Result<(), SessionError> {
        let truth = match self.truth {
            Some(t) => {
                Some(
                    t.annotations
                        .clip(id)
                        .ok_or_else(|| SessionError::UnannotatedClip {
                            annotations: t.path.to_path_buf(),
                            clip: id.to_string(),
                        })?,
                )
            }
            None => None,
        };
        let baselines = match (truth, mismatched) {
            (Some(_), Some(other)) => Some(BaselineState {
                mismatched: ClipMel::new(id, other)?,
                centre: LocalizationTally::default(),
                mismatched_tally: LocalizationTally::default(),
            }),
            _ => None,
        };
        self.clip = Some(ClipState {
            id: id.to_string(),
            audio: ClipMel::new(id, audio)?,
            truth,
            tally: LocalizationTally::default(),
            baselines,
            size: None,
            frames: 0,
        });
        Ok(())
    }

    /// Localize one frame of the current clip and hand its record to the sinks.
    pub fn frame(
        &mut self,
        input: &FrameInput<'_>,
        sinks: &mut [&mut dyn Sink],
    ) -> Result<(), SessionError> {
        let clip = self.clip.as_mut().ok_or(SessionError::NoClip)?;
        let size = FrameSize::of(input.image);
        if clip.size.is_some_and(|s| s != size) {
            return Err(SessionError::FrameSize {
                source_name: input.path.map_or_else(
                    || format!("clip {} frame {}", clip.id, input.index),
                    |p| p.display().to_string(),
                ),
                found: size,
            });
        }
        clip.size = Some(size);
        let mut baseline_descriptor = AudioDescriptor::default();
        if let Some(b) = &clip.baselines {
            let m = &b.mismatched;
            let position = m.position(input.index, input.time_s);
            baseline_descriptor = self.encoder.encode_audio_into(
                m.mel.view(),
                m.alignment,
                position,
                &mut self.baseline_audio,
            )?;
        }
        let t0 = Instant::now();
        let a = &clip.audio;
        let position = a.position(input.index, input.time_s);
        let emb = self
            .encoder
            .encode(a.mel.view(), a.alignment, position, input.image)?;
        let loc = self.localizer.localize(emb, size)?;
        self.inference_s += t0.elapsed().as_secs_f64();
        let mut record = FrameRecord::new(&clip.id, input.index, input.time_s, size, loc);
        record.image = input.path.map(Path::to_path_buf);
        if let Some(gt) = frame_ground_truth(clip, input.index, size)? {
            let (ciou, hit) = score(
                &mut clip.tally,
                &gt,
                self.localizer.heatmap(),
                record.localization.active,
                size,
            )?;
            record.truth = Some(FrameTruth {
                sounding: gt.sounding,
                ciou,
                pointing_hit: hit,
                offscreen: gt.offscreen,
            });
            if let Some(b) = &mut clip.baselines {
                if self.centre.len() != size.width * size.height {
                    self.centre = centre_prior(size.width, size.height);
                }
                score(&mut b.centre, &gt, &self.centre, true, size)?;
                let base = self.baseline_localizer.localize_pair(
                    &self.baseline_audio,
                    baseline_descriptor,
                    &emb.visual,
                    size,
                )?;
                let heatmap = self.baseline_localizer.heatmap();
                score(&mut b.mismatched_tally, &gt, heatmap, base.active, size)?;
            }
        }
        let out = FrameOutput {
            record: &record,
            image: input.image,
            heatmap: self.localizer.heatmap(),
            embeddings: emb,
        };
        for sink in sinks.iter_mut() {
            sink.frame(&out)?;
        }
        clip.frames += 1;
        self.frames += 1;
        Ok(())
    }

    /// Finish the current clip: its metrics, handed to the sinks.
    pub fn end_clip(&mut self, sinks: &mut [&mut dyn Sink]) -> Result<ClipResult, SessionError> {
        let clip = self.clip.take().ok_or(SessionError::NoClip)?;
        let summary = summarise(clip.truth.is_some(), &clip.tally)?;
        let baselines = match (&summary, &clip.baselines) {
            (Some(s), Some(b)) => Some(Baselines::new(
                s,
                b.centre.summary()?,
                b.mismatched_tally.summary()?,
            )),
            _ => None,
        };
        self.overall.merge(&clip.tally);
        if let Some(b) = &clip.baselines {
            self.overall_centre.merge(&b.centre);
            self.overall_mismatched.merge(&b.mismatched_tally);
        }
        self.clips += 1;
        let result = ClipResult {
            id: clip.id,
            frames: clip.frames,
            size: clip.size,
            summary,
            baselines,
        };
        for sink in sinks.iter_mut() {
            sink.end_clip(&result)?;
        }
        Ok(result)
    }

    /// Finish the run: overall metrics and timing, handed to the sinks.
    pub fn finish(self, sinks: &mut [&mut dyn Sink]) -> Result<RunSummary, SessionError> {
        let summary = summarise(self.truth.is_some(), &self.overall)?;
        // Baselines overall only when every sounding frame had them.
        let baselines = match &summary {
            Some(s) if self.overall_centre.cious.len() == self.overall.cious.len() => {
                Some(Baselines::new(
                    s,
                    self.overall_centre.summary()?,
                    self.overall_mismatched.summary()?,
                ))
            }
            _ => None,
        };
        let run = RunSummary {
            clips: self.clips,
            frames: self.frames,
            inference_s: self.inference_s,
            threads: self.encoder.bundle().options.threads,
            summary,
            baselines,
        };
        for sink in sinks.iter_mut() {
            sink.finish(&run)?;
        }
        Ok(run)
    }
}

/// The tally's summary when there was ground truth and a sounding frame.
fn summarise(
    annotated: bool,
    tally: &LocalizationTally,
) -> Result<Option<LocalizationSummary>, SessionError> {
    if annotated && !tally.cious.is_empty() {
        Ok(Some(tally.summary()?))
    } else {
        Ok(None)
    }
}

/// The ground truth of frame `index` of the clip (none without annotations).
fn frame_ground_truth(
    clip: &ClipState<'_>,
    index: usize,
    size: FrameSize,
) -> Result<Option<FrameGroundTruth>, SessionError> {
    let Some(truth) = clip.truth else {
        return Ok(None);
    };
    let gt = truth
        .frames
        .get(index)
        .ok_or_else(|| SessionError::UnannotatedFrame {
            clip: clip.id.clone(),
            frame: index,
        })?;
    let boxes: Vec<[f32; 4]> = gt.sounding.iter().map(|o| o.bbox).collect();
    let mask = if boxes.is_empty() {
        Vec::new()
    } else {
        metrics::gt_map(&boxes, size.width, size.height)
    };
    Ok(Some(FrameGroundTruth {
        sounding: gt.sounding.len(),
        offscreen: gt.offscreen.len(),
        multi_class: gt.is_multi_class(),
        mask,
    }))
}

/// Scores one heatmap against a frame's ground truth and adds it to `tally`: ciou and pointing hit on a sounding frame, none on a silent one.
fn score(
    tally: &mut LocalizationTally,
    gt: &FrameGroundTruth,
    heatmap: &[f32],
    active: bool,
    size: FrameSize,
) -> Result<(Option<f64>, Option<bool>), SessionError> {
    if gt.sounding == 0 {
        if gt.offscreen > 0 {
            tally.add_offscreen(active);
        } else {
            tally.add_silent(active);
        }
        return Ok((None, None));
    }
    let (w, h) = (size.width, size.height);
    let ciou = metrics::ciou(heatmap, &gt.mask, w, h)?;
    let hit = metrics::pointing_hit(heatmap, &gt.mask, w, h)?;
    tally.add_sounding(ciou, metrics::ciou_ceiling(&gt.mask), hit, active);
    if gt.multi_class {
        tally.add_multi_class(hit);
    }
    Ok((Some(ciou), Some(hit)))
}
