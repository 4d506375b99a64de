//! Where a session's results go: JSON lines, heatmap arrays, the HTML report with overlays and animations, and metrics.
//!
//! Every file is written atomically (temporary file, then rename): a run that fails or is
//! killed leaves each output complete or absent.

use std::path::{Path, PathBuf};

use image::RgbImage;
use ndarray::Array3;

use cavsync_core::atomic::write_atomic;
use cavsync_core::localize::{LocalizeError, render_overlay, save_png};
use cavsync_core::metrics::{Baselines, LocalizationSummary};
use cavsync_core::npy::{self, NpyError};
use cavsync_core::report::{self, ClipReport, ReportRow};

use crate::session::{ClipResult, FrameOutput, RunSummary};

/// Milliseconds per frame of the overlay animations.
pub const GIF_FRAME_MS: u32 = 400;

/// Why a sink could not take a result.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A file or directory could not be written.
    #[error("{path}: cannot write: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A heatmap array could not be written.
    #[error(transparent)]
    Npy(#[from] NpyError),
    /// An overlay could not be rendered or written.
    #[error(transparent)]
    Overlay(#[from] LocalizeError),
    /// A record could not be serialised.
    #[error("cannot serialise a record: {0}")]
    Json(#[from] serde_json::Error),
    /// A stream consumer went away or failed.
    #[error("{0}")]
    Other(String),
}

/// Takes a session's results as they come: each frame, each clip's end, the run's end.
pub trait Sink {
    /// One localized frame.
    fn frame(&mut self, frame: &FrameOutput<'_>) -> Result<(), SinkError>;

    /// The end of a clip, with its metrics.
    fn end_clip(&mut self, _clip: &ClipResult) -> Result<(), SinkError> {
        Ok(())
    }

    /// The end of the run, with the overall metrics.
    fn finish(&mut self, _run: &RunSummary) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Writes `text` to `path` atomically, naming the path on failure.
fn write_text(path: &Path, text: &str) -> Result<(), SinkError> {
    write_atomic(path, |w| w.write_all(text.as_bytes())).map_err(|source| SinkError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Creates a directory (and its parents), naming it on failure.
pub fn create_dir(dir: &Path) -> Result<(), SinkError> {
    std::fs::create_dir_all(dir).map_err(|source| SinkError::Write {
        path: dir.to_path_buf(),
        source,
    })
}

/// The records as JSON lines (`localization.jsonl`), written when the run ends.
#[derive(Debug)]
pub struct JsonLines {
    path: PathBuf,
    text: String,
}

impl JsonLines {
    /// A sink writing `path`.
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            text: String::new(),
        }
    }
}

impl Sink for JsonLines {
    fn frame(&mut self, frame: &FrameOutput<'_>) -> Result<(), SinkError> {
        self.text.push_str(&serde_json::to_string(frame.record)?);
        self.text.push('\n');
        Ok(())
    }

    fn finish(&mut self, _run: &RunSummary) -> Result<(), SinkError> {
        write_text(&self.path, &self.text)
    }
}

/// Each clip's heatmaps as `<clip>_heatmaps.npy`, (frames, height, width) f32.
#[derive(Debug)]
pub struct Heatmaps {
    dir: PathBuf,
    values: Vec<f32>,
}

impl Heatmaps {
    /// A sink writing into `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            values: Vec::new(),
        }
    }
}

impl Sink for Heatmaps {
    fn frame(&mut self, frame: &FrameOutput<'_>) -> Result<(), SinkError> {
        self.values.extend_from_slice(frame.heatmap);
        Ok(())
    }

    fn end_clip(&mut self, clip: &ClipResult) -> Result<(), SinkError> {
        let values = std::mem::take(&mut self.values);
        let Some(size) = clip.size else {
            return Ok(());
        };
        let shape = (clip.frames, size.height, size.width);
        let array = Array3::from_shape_vec(shape, values)
            .map_err(|e| SinkError::Other(format!("clip {}: heatmaps: {e}", clip.id)))?;
        let path = self.dir.join(format!("{}_heatmaps.npy", clip.id));
        npy::write_f32(&path, array.view().into_dyn())?;
        Ok(())
    }
}

/// The page a person looks at: `index.html` with each clip's table and metrics, and optionally
/// an overlay PNG per frame (`overlays/`) and an animated GIF per clip.
#[derive(Debug)]
pub struct Report {
    dir: PathBuf,
    title: String,
    overlays: bool,
    clips: Vec<ClipReport>,
    rows: Vec<ReportRow>,
    frames: Vec<RgbImage>,
}

impl Report {
    /// A report in `dir` titled `title`; with `overlays`, also the overlay images and animations.
    pub fn new(dir: PathBuf, title: String, overlays: bool) -> Result<Self, SinkError> {
        if overlays {
            create_dir(&dir.join("overlays"))?;
        }
        Ok(Self {
            dir,
            title,
            overlays,
            clips: Vec::new(),
            rows: Vec::new(),
            frames: Vec::new(),
        })
    }
}

impl Sink for Report {
    fn frame(&mut self, frame: &FrameOutput<'_>) -> Result<(), SinkError> {
        let record = frame.record;
        let mut overlay = None;
        if self.overlays {
            let image = render_overlay(frame.image, frame.heatmap, &record.localization)?;
            let name = format!("{}_frame{:02}.png", record.clip, record.frame);
            save_png(&image, &self.dir.join("overlays").join(&name))?;
            self.frames.push(image);
            overlay = Some(format!("overlays/{name}"));
        }
        self.rows.push(ReportRow {
            record: record.clone(),
            overlay,
        });
        Ok(())
    }

    fn end_clip(&mut self, clip: &ClipResult) -> Result<(), SinkError> {
        let gif = if self.frames.is_empty() {
            None
        } else {
            let name = format!("{}.gif", clip.id);
            let path = self.dir.join(&name);
            report::write_gif(&self.frames, GIF_FRAME_MS, &path)
                .map_err(|source| SinkError::Write { path, source })?;
            self.frames.clear();
            Some(name)
        };
        self.clips.push(ClipReport {
            id: clip.id.clone(),
            gif,
            rows: std::mem::take(&mut self.rows),
            summary: clip.summary.clone(),
            baselines: clip.baselines.clone(),
        });
        Ok(())
    }

    fn finish(&mut self, run: &RunSummary) -> Result<(), SinkError> {
        let path = self.dir.join("index.html");
        let overall = run.summary.as_ref().map(|s| (s, run.baselines.as_ref()));
        report::write_html(&self.title, &self.clips, overall, &path)
            .map_err(|source| SinkError::Write { path, source })
    }
}

/// One clip's entry in `metrics.json`.
#[derive(Debug, serde::Serialize)]
struct ClipMetrics {
    clip: String,
    metrics: LocalizationSummary,
    #[serde(skip_serializing_if = "Option::is_none")]
    baselines: Option<Baselines>,
}

/// `metrics.json`: the overall and per-clip metrics, written when the run had any sounding frame.
#[derive(Debug)]
pub struct Metrics {
    path: PathBuf,
    clips: Vec<ClipMetrics>,
}

impl Metrics {
    /// A sink writing `path`.
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            clips: Vec::new(),
        }
    }
}

impl Sink for Metrics {
    fn frame(&mut self, _frame: &FrameOutput<'_>) -> Result<(), SinkError> {
        Ok(())
    }

    fn end_clip(&mut self, clip: &ClipResult) -> Result<(), SinkError> {
        if let Some(s) = &clip.summary {
            self.clips.push(ClipMetrics {
                clip: clip.id.clone(),
                metrics: s.clone(),
                baselines: clip.baselines.clone(),
            });
        }
        Ok(())
    }

    fn finish(&mut self, run: &RunSummary) -> Result<(), SinkError> {
        let Some(overall) = &run.summary else {
            return Ok(());
        };
        #[derive(serde::Serialize)]
        struct File<'a> {
            overall: &'a LocalizationSummary,
            #[serde(skip_serializing_if = "Option::is_none")]
            baselines: Option<&'a Baselines>,
            clips: &'a [ClipMetrics],
        }
        let text = serde_json::to_string_pretty(&File {
            overall,
            baselines: run.baselines.as_ref(),
            clips: &self.clips,
        })?;
        write_text(&self.path, &text)
    }
}
