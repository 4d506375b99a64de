//! How closely a candidate model (quantized, half-precision, distilled) follows a reference model on the same frames.
//!
//! Per frame: the cosine of the global tokens of both modalities and of every patch token
//! (when both models have the same width and grid: not for a distilled student), whether the heatmap peaks fall in the same patch of the reference's grid (or a neighbouring
//! one), the reference's own map value where the candidate's peak lies (so that a peak on
//! another patch the reference rates within [`NEAR_TIE`] of its best is told from a miss), the
//! IoU of the two top-half masks (the field's median rule, as cIoU uses), and whether both
//! models call the frame active. [`AgreementTally`] collects frames and
//! [`AgreementSummary`] states mean, 5th percentile and worst value of each.

use crate::localize::{FrameLocalization, FrameSize, Grid};
use crate::metrics::median_threshold;
use crate::similarity::cosine;

/// A candidate's peak counts as on a near-tie of the reference's map where the reference's value there is at least this share of the way from its map's lowest value to its highest.
pub const NEAR_TIE: f64 = 0.95;

/// Errors raised while comparing two models' outputs for one frame.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AgreementError {
    /// The two outputs of one quantity differ in length.
    #[error("{what}: the reference gives {reference} values, the candidate {candidate}")]
    Length {
        /// Which quantity.
        what: &'static str,
        /// Values from the reference.
        reference: usize,
        /// Values from the candidate.
        candidate: usize,
    },
    /// A heatmap does not cover the frame.
    #[error("heatmap holds {found} values; the frame is {} x {}", .size.width, .size.height)]
    Heatmap {
        /// Values given.
        found: usize,
        /// The frame size.
        size: FrameSize,
    },
}

/// What one model produced for one frame, as the comparison needs it.
#[derive(Debug, Clone, Copy)]
pub struct FrameOutputs<'a> {
    /// Audio global token (D).
    pub audio_global: &'a [f32],
    /// Visual global token (D).
    pub visual_global: &'a [f32],
    /// Visual patch tokens (N x D, row-major).
    pub visual_tokens: &'a [f32],
    /// Normalised heatmap at frame resolution (row-major).
    pub heatmap: &'a [f32],
    /// The localization result (peaks, activity).
    pub localization: &'a FrameLocalization,
}

/// How one frame's candidate outputs compare with the reference's.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameAgreement {
    /// Cosine of the audio global tokens (none when the models' widths differ).
    pub audio_global: Option<f64>,
    /// Cosine of the visual global tokens (none when the models' widths differ).
    pub visual_global: Option<f64>,
    /// Cosine of each visual patch token with the reference's, in patch order (empty when the widths or grids differ).
    pub patches: Vec<f64>,
    /// Chebyshev distance in reference patches between the two strongest peaks (none when either map has no peak).
    pub peak_distance: Option<usize>,
    /// The reference's map at the candidate's strongest peak, from the reference map's lowest value (0) to its highest (1); none when the candidate's map has no peak.
    pub reference_at_peak: Option<f64>,
    /// IoU of the two top-half masks.
    pub mask_iou: f64,
    /// Whether both models judge the frame alike (active or not).
    pub activity_agrees: bool,
    /// Whether the reference judges the frame active.
    pub reference_active: bool,
}

impl FrameAgreement {
    /// How much the frame disagrees, for ranking frames worst first: lower mask IoU, then farther peaks.
    pub fn disagreement(&self) -> (f64, usize) {
        (
            1.0 - self.mask_iou,
            self.peak_distance.unwrap_or(usize::MAX),
        )
    }
}

fn check_len(
    what: &'static str,
    reference: &[f32],
    candidate: &[f32],
) -> Result<(), AgreementError> {
    if reference.len() == candidate.len() {
        Ok(())
    } else {
        Err(AgreementError::Length {
            what,
            reference: reference.len(),
            candidate: candidate.len(),
        })
    }
}

/// The patch of `grid` holding a pixel-centre position of a frame of `size`.
fn patch_of(x: f32, y: f32, size: FrameSize, grid: Grid) -> (usize, usize) {
    let cell = |v: f32, extent: usize, cells: usize| {
        ((f64::from(v) / extent as f64 * cells as f64) as usize).min(cells - 1)
    };
    (
        cell(y, size.height, grid.rows),
        cell(x, size.width, grid.cols),
    )
}

/// The top-half mask of a heatmap by the field's median rule.
fn top_half(heatmap: &[f32]) -> Vec<bool> {
    let threshold = median_threshold(heatmap);
    heatmap.iter().map(|&v| v >= threshold).collect()
}

/// Compare one frame's candidate outputs with the reference's; `grid` is the reference's patch grid and `size` the frame's.
pub fn compare_frame(
    reference: &FrameOutputs<'_>,
    candidate: &FrameOutputs<'_>,
    grid: Grid,
    size: FrameSize,
) -> Result<FrameAgreement, AgreementError> {
    let comparable = reference.audio_global.len() == candidate.audio_global.len();
    if comparable {
        check_len(
            "visual global token",
            reference.visual_global,
            candidate.visual_global,
        )?;
    }
    check_len("heatmap", reference.heatmap, candidate.heatmap)?;
    let pixels = size.width * size.height;
    if reference.heatmap.len() != pixels || pixels == 0 {
        return Err(AgreementError::Heatmap {
            found: reference.heatmap.len(),
            size,
        });
    }
    let dim = reference.audio_global.len().max(1);
    let patches = if comparable && reference.visual_tokens.len() == candidate.visual_tokens.len() {
        reference
            .visual_tokens
            .chunks_exact(dim)
            .zip(candidate.visual_tokens.chunks_exact(dim))
            .map(|(r, c)| f64::from(cosine(r, c)))
            .collect()
    } else {
        Vec::new()
    };
    let global = |r: &[f32], c: &[f32]| comparable.then(|| f64::from(cosine(r, c)));
    let peak_distance = match (
        reference.localization.peaks.first(),
        candidate.localization.peaks.first(),
    ) {
        (Some(r), Some(c)) => {
            let (ry, rx) = patch_of(r.x, r.y, size, grid);
            let (cy, cx) = patch_of(c.x, c.y, size, grid);
            Some(ry.abs_diff(cy).max(rx.abs_diff(cx)))
        }
        _ => None,
    };
    let reference_at_peak = candidate
        .localization
        .peaks
        .first()
        .map(|c| relative_value(reference.heatmap, size, c.x, c.y));
    let (r_mask, c_mask) = (top_half(reference.heatmap), top_half(candidate.heatmap));
    let both = r_mask
        .iter()
        .zip(&c_mask)
        .filter(|(a, b)| **a && **b)
        .count();
    let either = r_mask
        .iter()
        .zip(&c_mask)
        .filter(|(a, b)| **a || **b)
        .count();
    Ok(FrameAgreement {
        audio_global: global(reference.audio_global, candidate.audio_global),
        visual_global: global(reference.visual_global, candidate.visual_global),
        patches,
        peak_distance,
        reference_at_peak,
        mask_iou: if either == 0 {
            1.0
        } else {
            both as f64 / either as f64
        },
        activity_agrees: reference.localization.active == candidate.localization.active,
        reference_active: reference.localization.active,
    })
}

/// A heatmap's value at the pixel holding (x, y), from its lowest value (0) to its highest (1); 1 for a flat map.
fn relative_value(heatmap: &[f32], size: FrameSize, x: f32, y: f32) -> f64 {
    let (lo, hi) = heatmap
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    let col = (x.max(0.0) as usize).min(size.width - 1);
    let row = (y.max(0.0) as usize).min(size.height - 1);
    let v = heatmap[row * size.width + col];
    if hi > lo {
        f64::from(v - lo) / f64::from(hi - lo)
    } else {
        1.0
    }
}

/// Mean, 5th percentile and worst (smallest) of a set of values.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Spread {
    /// Arithmetic mean.
    pub mean: f64,
    /// 5th percentile (nearest rank).
    pub p5: f64,
    /// Smallest value.
    pub worst: f64,
}

impl Spread {
    /// The spread of `values` (none when empty).
    pub fn of(values: &[f64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let rank = ((0.05 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        Some(Self {
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
            p5: sorted[rank - 1],
            worst: sorted[0],
        })
    }
}

/// Frame agreements collected over a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgreementTally {
    audio_global: Vec<f64>,
    visual_global: Vec<f64>,
    patches: Vec<f64>,
    mask_iou: Vec<f64>,
    same_peak: usize,
    near_peak: usize,
    activity_agrees: usize,
    active: usize,
    near_peak_active: usize,
    near_or_tied_active: usize,
}

impl AgreementTally {
    /// Add one frame.
    pub fn add(&mut self, frame: &FrameAgreement) {
        self.audio_global.extend(frame.audio_global);
        self.visual_global.extend(frame.visual_global);
        self.patches.extend_from_slice(&frame.patches);
        self.mask_iou.push(frame.mask_iou);
        self.same_peak += usize::from(frame.peak_distance == Some(0));
        let near = frame.peak_distance.is_some_and(|d| d <= 1);
        self.near_peak += usize::from(near);
        self.activity_agrees += usize::from(frame.activity_agrees);
        self.active += usize::from(frame.reference_active);
        self.near_peak_active += usize::from(near && frame.reference_active);
        let tied = frame.reference_at_peak.is_some_and(|v| v >= NEAR_TIE);
        self.near_or_tied_active += usize::from((near || tied) && frame.reference_active);
    }

    /// Frames added.
    pub fn frames(&self) -> usize {
        self.mask_iou.len()
    }

    /// The summary (none before the first frame).
    pub fn summary(&self) -> Option<AgreementSummary> {
        let frames = self.frames();
        let rate = |n: usize| n as f64 / frames as f64;
        Some(AgreementSummary {
            frames,
            audio_global: Spread::of(&self.audio_global),
            visual_global: Spread::of(&self.visual_global),
            patches: Spread::of(&self.patches),
            mask_iou: Spread::of(&self.mask_iou)?,
            same_peak_rate: rate(self.same_peak),
            near_peak_rate: rate(self.near_peak),
            reference_active_frames: self.active,
            near_peak_rate_active: (self.active > 0)
                .then(|| self.near_peak_active as f64 / self.active as f64),
            near_or_tied_rate_active: (self.active > 0)
                .then(|| self.near_or_tied_active as f64 / self.active as f64),
            activity_agreement_rate: rate(self.activity_agrees),
        })
    }
}

/// How closely a candidate followed the reference over a run.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct AgreementSummary {
    /// Frames compared.
    pub frames: usize,
    /// Cosine of the audio global tokens (none when the models' widths differ).
    pub audio_global: Option<Spread>,
    /// Cosine of the visual global tokens (none when the models' widths differ).
    pub visual_global: Option<Spread>,
    /// Cosine of the visual patch tokens, every patch of every frame (none when the widths or grids differ).
    pub patches: Option<Spread>,
    /// IoU of the top-half masks.
    pub mask_iou: Spread,
    /// Share of frames whose strongest peaks lie in the same patch.
    pub same_peak_rate: f64,
    /// Share of frames whose strongest peaks lie in the same or a neighbouring patch.
    pub near_peak_rate: f64,
    /// Frames the reference judges active.
    pub reference_active_frames: usize,
    /// The same-or-neighbouring share among the frames the reference judges active.
    pub near_peak_rate_active: Option<f64>,
    /// Among the frames the reference judges active, the share whose candidate peak is in the same or a neighbouring patch or on a near-tie of the reference's map ([`NEAR_TIE`]).
    pub near_or_tied_rate_active: Option<f64>,
    /// Share of frames both models judge alike (active or not).
    pub activity_agreement_rate: f64,
}

/// Share of `cious` at or above each threshold `i / steps`, `i = 0..=steps`: the cIoU success curve.
pub fn success_curve(cious: &[f64], steps: usize) -> Vec<(f64, f64)> {
    (0..=steps)
        .map(|i| {
            let t = i as f64 / steps as f64;
            let share = if cious.is_empty() {
                0.0
            } else {
                cious.iter().filter(|&&c| c >= t).count() as f64 / cious.len() as f64
            };
            (t, share)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::localize::Peak;

    fn localization(x: f32, y: f32, active: bool) -> FrameLocalization {
        FrameLocalization {
            score: 0.5,
            contrast: 0.1,
            audio: crate::localize::AudioDescriptor {
                level: 0.0,
                ..Default::default()
            },
            active,
            peaks: vec![Peak { x, y, value: 1.0 }],
            boxes: Vec::new(),
        }
    }

    #[test]
    fn identical_outputs_agree_fully() {
        let loc = localization(10.5, 20.5, true);
        let heat: Vec<f32> = (0..16).map(|i| i as f32 / 15.0).collect();
        let out = FrameOutputs {
            audio_global: &[1.0, 2.0],
            visual_global: &[0.5, -1.0],
            visual_tokens: &[1.0, 0.0, 0.0, 1.0],
            heatmap: &heat,
            localization: &loc,
        };
        let size = FrameSize {
            width: 4,
            height: 4,
        };
        let a = compare_frame(&out, &out, Grid { rows: 2, cols: 2 }, size).unwrap();
        assert!((a.audio_global.unwrap() - 1.0).abs() < 1e-6);
        assert_eq!(a.patches.len(), 2);
        assert_eq!(a.peak_distance, Some(0));
        assert_eq!(a.mask_iou, 1.0);
        assert!(a.activity_agrees);
    }

    #[test]
    fn peaks_masks_and_activity_by_hand() {
        // 4 x 4 frame, 2 x 2 grid: reference peak in patch (0, 0), candidate in (1, 1).
        let (r_loc, c_loc) = (localization(0.5, 0.5, true), localization(3.5, 3.5, false));
        // Reference: left half high; candidate: top half high. Masks overlap in the top-left quarter.
        let r_heat: Vec<f32> = (0..16).map(|i| if i % 4 < 2 { 1.0 } else { 0.0 }).collect();
        let c_heat: Vec<f32> = (0..16).map(|i| if i < 8 { 1.0 } else { 0.0 }).collect();
        let reference = FrameOutputs {
            audio_global: &[1.0, 0.0],
            visual_global: &[1.0, 0.0],
            visual_tokens: &[1.0, 0.0, 1.0, 0.0],
            heatmap: &r_heat,
            localization: &r_loc,
        };
        let candidate = FrameOutputs {
            audio_global: &[1.0, 1.0],
            visual_global: &[0.0, 1.0],
            visual_tokens: &[1.0, 0.0, -1.0, 0.0],
            heatmap: &c_heat,
            localization: &c_loc,
        };
        let size = FrameSize {
            width: 4,
            height: 4,
        };
        let a = compare_frame(&reference, &candidate, Grid { rows: 2, cols: 2 }, size).unwrap();
        assert!((a.audio_global.unwrap() - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-6);
        assert!(a.visual_global.unwrap().abs() < 1e-9);
        assert_eq!(a.patches, vec![1.0, -1.0]);
        assert_eq!(a.peak_distance, Some(1));
        assert!((a.mask_iou - 4.0 / 12.0).abs() < 1e-12);
        assert!(!a.activity_agrees);
        let mut tally = AgreementTally::default();
        tally.add(&a);
        let s = tally.summary().unwrap();
        assert_eq!(
            (
                s.same_peak_rate,
                s.near_peak_rate,
                s.activity_agreement_rate
            ),
            (0.0, 1.0, 0.0)
        );
        assert_eq!(s.patches.unwrap().worst, -1.0);
        assert_eq!(
            (s.reference_active_frames, s.near_peak_rate_active),
            (1, Some(1.0))
        );
    }

    #[test]
    fn a_far_peak_counts_as_tied_only_on_a_near_tie_of_the_reference() {
        // 6 x 6 frame, 3 x 3 grid: the reference peaks at the top-left pixel and rates the
        // bottom-right one 0.97 and the top-right one 0.5 of the way from its lowest value.
        let mut heat = vec![0.2f32; 36];
        heat[0] = 1.2;
        heat[35] = 1.17;
        heat[5] = 0.7;
        let r_loc = localization(0.5, 0.5, true);
        let reference = FrameOutputs {
            audio_global: &[1.0],
            visual_global: &[1.0],
            visual_tokens: &[],
            heatmap: &heat,
            localization: &r_loc,
        };
        let size = FrameSize {
            width: 6,
            height: 6,
        };
        let grid = Grid { rows: 3, cols: 3 };
        let mut tally = AgreementTally::default();
        for (x, y, expected) in [(5.5, 5.5, 0.97), (5.5, 0.5, 0.5), (0.5, 0.5, 1.0)] {
            let c_loc = localization(x, y, true);
            let candidate = FrameOutputs {
                localization: &c_loc,
                ..reference
            };
            let a = compare_frame(&reference, &candidate, grid, size).unwrap();
            assert!(
                (a.reference_at_peak.unwrap() - expected).abs() < 1e-6,
                "{a:?}"
            );
            tally.add(&a);
        }
        let s = tally.summary().unwrap();
        // Only the peak on the reference's own patch is near; the 0.97 one is tied, the 0.5 one is a miss.
        assert!((s.near_peak_rate_active.unwrap() - 1.0 / 3.0).abs() < 1e-12);
        assert!((s.near_or_tied_rate_active.unwrap() - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn models_of_different_widths_compare_maps_but_not_embeddings() {
        // A 3-dim student against a 2-dim teacher: no cosines, but peaks, masks and activity.
        let loc = localization(0.5, 0.5, true);
        let heat = [1.0f32, 0.0, 0.0, 0.0];
        let a = FrameOutputs {
            audio_global: &[1.0, 0.0],
            visual_global: &[1.0, 0.0],
            visual_tokens: &[1.0, 0.0],
            heatmap: &heat,
            localization: &loc,
        };
        let b = FrameOutputs {
            audio_global: &[1.0, 0.0, 0.0],
            visual_global: &[1.0, 0.0, 0.0],
            visual_tokens: &[1.0, 0.0, 0.0, 1.0, 0.0, 0.0],
            ..a
        };
        let size = FrameSize {
            width: 2,
            height: 2,
        };
        let f = compare_frame(&a, &b, Grid { rows: 1, cols: 1 }, size).unwrap();
        assert_eq!((f.audio_global, f.visual_global), (None, None));
        assert!(f.patches.is_empty());
        assert_eq!((f.peak_distance, f.mask_iou), (Some(0), 1.0));
        let mut tally = AgreementTally::default();
        tally.add(&f);
        let s = tally.summary().unwrap();
        assert_eq!((s.frames, s.audio_global, s.patches), (1, None, None));
        // Same width, different visual global length: a named error.
        let c = FrameOutputs {
            visual_global: &[1.0, 0.0, 0.0],
            ..a
        };
        let err = compare_frame(&a, &c, Grid { rows: 1, cols: 1 }, size).unwrap_err();
        assert!(err.to_string().starts_with("visual global token"), "{err}");
    }

    #[test]
    fn spread_and_success_curve() {
        let s = Spread::of(&(1..=100).map(f64::from).collect::<Vec<_>>()).unwrap();
        assert_eq!((s.mean, s.p5, s.worst), (50.5, 5.0, 1.0));
        assert_eq!(Spread::of(&[]), None);
        let curve = success_curve(&[0.0, 0.5, 1.0], 2);
        assert_eq!(curve, vec![(0.0, 1.0), (0.5, 2.0 / 3.0), (1.0, 1.0 / 3.0)]);
    }
}
