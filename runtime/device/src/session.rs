//! A localization session: clips' audio and frames in from any source, one typed [`FrameRecord`] per frame out to every sink.
//!
//! The session encodes each frame with its aligned audio segment, localizes the sound on it,
//! scores it against ground truth when there is any, tallies the metrics per clip and overall,
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
    FrameLocalization, FrameSize, Grid, LocalizeConfig, LocalizeError, Localizer, similarity_map,
};
use cavsync_core::metrics::{self, LocalizationSummary, LocalizationTally, MetricsError};
use cavsync_core::preprocess::audio::SAMPLE_RATE;
use cavsync_core::preprocess::image::{ImageError, load_rgb};
use cavsync_core::preprocess::segment::{Alignment, FramePosition};
use cavsync_core::record::{FrameRecord, FrameTruth};

use crate::bundle::Bundle;
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
    /// Peaks, boxes, score and activity.
    pub localization: &'f FrameLocalization,
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
        similarity_map(&emb.audio.global, &emb.visual.tokens, &mut self.raw_map)?;
        self.localizer
            .run(&self.raw_map, self.grid, size, &mut self.heatmap)
    }

    /// The raw cosine map of the last frame on the patch grid (row-major).
    pub fn raw_map(&self) -> &[f32] {
        &self.raw_map
    }

    /// The normalised heatmap of the last frame at frame resolution (row-major).
    pub fn heatmap(&self) -> &[f32] {
        &self.heatmap
    }
}

/// The clip being localized.
struct ClipState<'a> {
    id: String,
    mel: Array2<f32>,
    total_frames: usize,
    duration_s: f64,
    alignment: Alignment,
    truth: Option<&'a ClipAnnotation>,
    tally: LocalizationTally,
    size: Option<FrameSize>,
    frames: usize,
}

/// A localization run over clips, feeding its sinks.
pub struct Session<'a> {
    encoder: FrameEncoder<'a>,
    localizer: FrameLocalizer,
    truth: Option<GroundTruth<'a>>,
    clip: Option<ClipState<'a>>,
    overall: LocalizationTally,
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
            truth,
            clip: None,
            overall: LocalizationTally::default(),
            clips: 0,
            frames: 0,
            inference_s: 0.0,
        })
    }

    /// Localize every frame of a file-based clip (images decoded from their paths).
    pub fn run_clip(&mut self, clip: &Clip, sinks: &mut [&mut dyn Sink]) -> Result<(), SessionError> {
        self.begin_clip(&clip.id, &clip.audio, clip.total_frames, clip.alignment)?;
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

    /// Start a clip: its id, its 16 kHz mono samples, its number of frames T and how they align with the audio.
    pub fn begin_clip(
        &mut self,
        id: &str,
        samples: &[f32],
        total_frames: usize,
        alignment: Alignment,
    ) -> Result<(), SessionError> {
        let truth = match self.truth {
            Some(t) => Some(t.annotations.clip(id).ok_or_else(|| {
                SessionError::UnannotatedClip {
                    annotations: t.path.to_path_buf(),
                    clip: id.to_string(),
                }
            })?),
            None => None,
        };
        self.clip = Some(ClipState {
            id: id.to_string(),
            mel: clip_fbank(id, samples)?,
            total_frames,
            duration_s: samples.len() as f64 / f64::from(SAMPLE_RATE),
            alignment,
            truth,
            tally: LocalizationTally::default(),
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
        let t0 = Instant::now();
        let position = FramePosition {
            index: input.index,
            total_frames: clip.total_frames,
            time_s: input.time_s,
            duration_s: clip.duration_s,
        };
        let emb = self
            .encoder
            .encode(clip.mel.view(), clip.alignment, position, input.image)?;
        let loc = self.localizer.localize(emb, size)?;
        self.inference_s += t0.elapsed().as_secs_f64();
        if clip.size.is_some_and(|s| s != size) {
            return Err(SessionError::FrameSize {
                source_name: input
                    .path
                    .map_or_else(|| format!("clip {} frame {}", clip.id, input.index), |p| {
                        p.display().to_string()
                    }),
                found: size,
            });
        }
        clip.size = Some(size);
        let mut record = FrameRecord::new(&clip.id, input.index, input.time_s, size, &loc);
        record.image = input.path.map(Path::to_path_buf);
        record.truth = score_frame(clip, input.index, &loc, self.localizer.heatmap(), size)?;
        let out = FrameOutput {
            record: &record,
            image: input.image,
            heatmap: self.localizer.heatmap(),
            localization: &loc,
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
        let summary = match clip.truth {
            Some(_) if !clip.tally.cious.is_empty() => Some(clip.tally.summary()?),
            _ => None,
        };
        self.overall.merge(&clip.tally);
        self.clips += 1;
        let result = ClipResult {
            id: clip.id,
            frames: clip.frames,
            size: clip.size,
            summary,
        };
        for sink in sinks.iter_mut() {
            sink.end_clip(&result)?;
        }
        Ok(result)
    }

    /// Finish the run: overall metrics and timing, handed to the sinks.
    pub fn finish(self, sinks: &mut [&mut dyn Sink]) -> Result<RunSummary, SessionError> {
        let summary = match self.truth {
            Some(_) if !self.overall.cious.is_empty() => Some(self.overall.summary()?),
            _ => None,
        };
        let run = RunSummary {
            clips: self.clips,
            frames: self.frames,
            inference_s: self.inference_s,
            threads: self.encoder.bundle().options.threads,
            summary,
        };
        for sink in sinks.iter_mut() {
            sink.finish(&run)?;
        }
        Ok(run)
    }
}

/// Scores a frame against the clip's ground truth (none without annotations) and tallies it.
fn score_frame(
    clip: &mut ClipState<'_>,
    index: usize,
    loc: &FrameLocalization,
    heatmap: &[f32],
    size: FrameSize,
) -> Result<Option<FrameTruth>, SessionError> {
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
    if gt.sounding.is_empty() {
        clip.tally.add_silent(loc.active);
        return Ok(Some(FrameTruth {
            sounding: 0,
            ciou: None,
            pointing_hit: None,
        }));
    }
    let boxes: Vec<[f32; 4]> = gt.sounding.iter().map(|o| o.bbox).collect();
    let (w, h) = (size.width, size.height);
    let mask = metrics::gt_map(&boxes, w, h);
    let ciou = metrics::ciou(heatmap, &mask, w, h)?;
    let hit = metrics::pointing_hit(heatmap, &mask, w, h)?;
    clip.tally.add_sounding(ciou, hit, loc.active);
    Ok(Some(FrameTruth {
        sounding: gt.sounding.len(),
        ciou: Some(ciou),
        pointing_hit: Some(hit),
    }))
}
