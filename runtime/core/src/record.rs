//! The per-frame result of a localization run: one typed record that every output is made of.
//!
//! `localize` writes these as JSON lines, prints them as terminal lines, renders them in the
//! report and tallies them into metrics; `calibrate` reads them back with the same type.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::localize::FrameLocalization;
use crate::metrics::{Baselines, LocalizationSummary};

/// One localized frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameRecord {
    /// Clip id.
    pub clip: String,
    /// Frame index k in the clip.
    pub frame: usize,
    /// Time of the frame in the clip, seconds.
    pub time_s: f64,
    /// The frame's image file, when it came from one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<PathBuf>,
    /// Frame width in pixels.
    pub width: usize,
    /// Frame height in pixels.
    pub height: usize,
    /// Score, activity, peaks and boxes in frame pixels.
    #[serde(flatten)]
    pub localization: FrameLocalization,
    /// Scores against the ground truth, when the run had annotations.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub truth: Option<FrameTruth>,
}

/// A frame's scores against its ground truth.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FrameTruth {
    /// Sounding objects annotated in the frame (0: nothing sounds).
    pub sounding: usize,
    /// ciou of the heatmap against the sounding objects (sounding frames only).
    pub ciou: Option<f64>,
    /// Whether the heatmap's maximum lies on a sounding object (sounding frames only).
    pub pointing_hit: Option<bool>,
    /// Classes heard from outside the picture.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offscreen: usize,
}

/// Whether a count is zero (left out of the JSON).
fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl FrameRecord {
    /// The record of a frame's localization, without ground truth.
    pub fn new(
        clip: &str,
        frame: usize,
        time_s: f64,
        size: crate::localize::FrameSize,
        localization: FrameLocalization,
    ) -> Self {
        Self {
            clip: clip.to_string(),
            frame,
            time_s,
            image: None,
            width: size.width,
            height: size.height,
            localization,
            truth: None,
        }
    }

    /// The record as `localize` prints it: time, score, activity, strongest peak and, with ground truth, the hit and cIoU.
    pub fn line(&self) -> String {
        let loc = &self.localization;
        let activity = if loc.active { "active  " } else { "inactive" };
        let mut line = format!(
            "{} frame {:02} t={:5.2}s score {:.3} {activity}",
            self.clip, self.frame, self.time_s, loc.score
        );
        match loc.peaks.first() {
            Some(p) => {
                let _ = write!(line, " peak ({:.1}, {:.1})", p.x, p.y);
            }
            None => line.push_str(" no peak"),
        }
        if let Some(t) = &self.truth {
            match t.ciou.zip(t.pointing_hit) {
                Some((c, h)) => {
                    let verdict = if h { "hit" } else { "miss" };
                    let _ = write!(line, " | {} sounding: {verdict}, cIoU {c:.2}", t.sounding);
                }
                None => line.push_str(" | nothing sounding"),
            }
        }
        line
    }
}

/// A clip's metrics as `localize` prints them: pointing hits, cIoU@0.5, AUC, the silent frames and the hard frames where there are any.
pub fn clip_line(clip: &str, s: &LocalizationSummary) -> String {
    let hits = (s.pointing * s.sounding_frames as f64).round();
    let mut line = format!(
        "{clip}: pointing {hits}/{}, cIoU@0.5 {:.2}, AUC {:.3}, {}",
        s.sounding_frames,
        s.ciou_at_half,
        s.auc,
        s.silent_phrase()
    );
    push_hard_frames(&mut line, s);
    line
}

/// Appends the summary's hard-frames phrase, if any.
fn push_hard_frames(line: &mut String, s: &LocalizationSummary) {
    let hard = s.hard_frames_phrase();
    if !hard.is_empty() {
        line.push_str("; ");
        line.push_str(&hard);
    }
}

/// A run's metrics as `localize` prints them in its closing lines.
pub fn overall_line(s: &LocalizationSummary) -> String {
    let mut line = format!(
        "ground truth: pointing {:.1}%, cIoU@0.5 {:.1}% (at most {:.1}% for any heatmap on these boxes), mean cIoU {:.3}, AUC {:.3} over {} sounding frames; \
         sounding frames active {:.1}%; {}",
        100.0 * s.pointing,
        100.0 * s.ciou_at_half,
        100.0 * s.ciou_at_half_ceiling,
        s.mean_ciou,
        s.auc,
        s.sounding_frames,
        100.0 * s.sounding_active_rate,
        s.silent_phrase()
    );
    push_hard_frames(&mut line, s);
    line
}

/// The baselines beside a model's metrics, as `localize` prints them, with the model's margin and a flag where a baseline does as well.
pub fn baseline_line(b: &Baselines) -> String {
    let part = |name: &str, s: &LocalizationSummary| {
        format!(
            "{name} pointing {:.1}%, cIoU@0.5 {:.1}%, AUC {:.3}",
            100.0 * s.pointing,
            100.0 * s.ciou_at_half,
            s.auc
        )
    };
    let m = &b.margin;
    let mut line = format!(
        "baselines on the same frames: {}; {}; model margin over the best: pointing {:+.1} points, cIoU@0.5 {:+.1} points, AUC {:+.3}",
        part("centre prior", &b.centre_prior),
        part("mismatched audio", &b.mismatched_audio),
        100.0 * m.pointing,
        100.0 * m.ciou_at_half,
        m.auc
    );
    let beaten = b.beaten();
    if !beaten.is_empty() {
        let _ = write!(
            line,
            " -- NOT A RESULT: a trivial answer does as well on {}",
            beaten.join(", ")
        );
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(truth: Option<FrameTruth>) -> FrameRecord {
        FrameRecord {
            clip: "c".into(),
            frame: 3,
            time_s: 1.875,
            image: Some(PathBuf::from("frames/frame_3/c.jpg")),
            width: 320,
            height: 240,
            localization: FrameLocalization {
                score: 0.25,
                contrast: 0.125,
                audio: crate::localize::AudioDescriptor {
                    level: -6.5,
                    ..Default::default()
                },
                active: true,
                peaks: vec![crate::localize::Peak {
                    x: 10.5,
                    y: 20.5,
                    value: 1.0,
                }],
                boxes: vec![],
            },
            truth,
        }
    }

    #[test]
    fn records_round_trip_with_and_without_truth() {
        let silent = FrameTruth {
            sounding: 0,
            ciou: None,
            pointing_hit: None,
            offscreen: 0,
        };
        let sounding = FrameTruth {
            sounding: 2,
            ciou: Some(0.75),
            pointing_hit: Some(true),
            offscreen: 0,
        };
        let offscreen = FrameTruth {
            offscreen: 1,
            ..silent
        };
        for truth in [None, Some(silent), Some(sounding), Some(offscreen)] {
            let r = record(truth);
            let text = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<FrameRecord>(&text).unwrap(), r);
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v.get("sounding").is_some(), truth.is_some(), "{text}");
            assert_eq!(v.get("pointing_hit").is_some(), truth.is_some(), "{text}");
        }
    }

    #[test]
    fn lines_show_peak_and_truth() {
        assert_eq!(
            record(None).line(),
            "c frame 03 t= 1.88s score 0.250 active   peak (10.5, 20.5)"
        );
        let t = FrameTruth {
            sounding: 1,
            ciou: Some(0.5),
            pointing_hit: Some(false),
            offscreen: 0,
        };
        assert!(
            record(Some(t))
                .line()
                .ends_with(" | 1 sounding: miss, cIoU 0.50")
        );
        let silent = FrameTruth {
            sounding: 0,
            ciou: None,
            pointing_hit: None,
            offscreen: 0,
        };
        assert!(record(Some(silent)).line().ends_with(" | nothing sounding"));
    }
}
