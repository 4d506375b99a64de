//! Sound-source localization metrics exactly as the field's evaluation code computes them (LVS / EZ-VSL / SLAVC): cIoU, AUC and the pointing game.
//!
//! - Ground truth: EZ-VSL's `bbox2gtmap(..., 'vggss')`: every box `(clip(b, 0, 1) * size)`
//!   truncated to integers, `gt[y1:y2, x1:x2] = 1`, the union of the boxes.
//! - Prediction: the min-max normalised map `>=` the value at index `int(N * 0.5)` of its
//!   ascending sort (the top half of the pixels).
//! - `ciou = sum(P * G) / (sum(G) + sum(P * (G == 0)))`; the reported "cIoU" is the share of
//!   samples with `ciou >= 0.5`; AUC is the trapezoidal area under the share of samples with
//!   `ciou >= 0.05 i` for `i = 0..=20` (sklearn `metrics.auc`).
//! - Pointing game: the map's first maximum in raster order (`np.argmax`) lies in the ground truth.
//!
//! EZ-VSL evaluates 224 x 224 maps; the functions here take any size, so frames that are not
//! 224 x 224 are evaluated at their own resolution.

use crate::localize::{ACTIVITY_FEATURES, ActivityFeatures, ActivityHead};

/// Errors raised by the metric functions.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MetricsError {
    /// A map does not hold width x height values.
    #[error("{what} holds {found} values; expected {width} x {height} = {}", width * height)]
    Size {
        /// Which map.
        what: &'static str,
        /// Values given.
        found: usize,
        /// Map width.
        width: usize,
        /// Map height.
        height: usize,
    },
    /// No samples were given to a summary.
    #[error("no samples to summarise")]
    Empty,
}

/// Ground-truth mask (row-major, width x height) of the union of normalised `[x1, y1, x2, y2]` boxes.
pub fn gt_map(boxes: &[[f32; 4]], width: usize, height: usize) -> Vec<bool> {
    let mut map = vec![false; width * height];
    let pixel =
        |v: f32, size: usize| ((f64::from(v).clamp(0.0, 1.0) * size as f64) as usize).min(size);
    for b in boxes {
        let (x1, y1) = (pixel(b[0], width), pixel(b[1], height));
        let (x2, y2) = (pixel(b[2], width), pixel(b[3], height));
        for row in map.chunks_exact_mut(width).take(y2).skip(y1) {
            for cell in row.iter_mut().take(x2).skip(x1) {
                *cell = true;
            }
        }
    }
    map
}

/// The field's prediction threshold: element `int(N * 0.5)` of the ascending sort of `map`.
pub fn median_threshold(map: &[f32]) -> f32 {
    let mut sorted = map.to_vec();
    sorted.sort_by(f32::total_cmp);
    sorted[map.len() / 2]
}

/// Consensus IoU of one normalised map against a ground-truth mask, with the median threshold.
pub fn ciou(map: &[f32], gt: &[bool], width: usize, height: usize) -> Result<f64, MetricsError> {
    check(map.len(), width, height, "heatmap")?;
    check(gt.len(), width, height, "ground-truth map")?;
    let thr = median_threshold(map);
    let (mut inter, mut gt_area, mut outside) = (0usize, 0usize, 0usize);
    for (&p, &g) in map.iter().zip(gt) {
        let predicted = p >= thr;
        gt_area += usize::from(g);
        inter += usize::from(predicted && g);
        outside += usize::from(predicted && !g);
    }
    Ok(inter as f64 / (gt_area + outside) as f64)
}

/// The largest ciou any map can reach against `gt` under the median rule.
///
/// The rule predicts at least `N - int(N / 2)` pixels (every pixel at or above the median), so
/// a mask of `g` pixels smaller than that scores at most `g / (N - int(N / 2))`; a larger mask
/// can be predicted exactly (ciou 1). Objects well under half the frame therefore cannot
/// reach ciou 0.5, whatever the model.
pub fn ciou_ceiling(gt: &[bool]) -> f64 {
    let n = gt.len();
    let least_predicted = n - n / 2;
    let g = gt.iter().filter(|&&v| v).count();
    if g >= least_predicted {
        1.0
    } else {
        g as f64 / least_predicted as f64
    }
}

/// Whether the map's first maximum in raster order lies inside the ground truth.
pub fn pointing_hit(
    map: &[f32],
    gt: &[bool],
    width: usize,
    height: usize,
) -> Result<bool, MetricsError> {
    check(map.len(), width, height, "heatmap")?;
    check(gt.len(), width, height, "ground-truth map")?;
    let mut best = 0;
    for (i, &v) in map.iter().enumerate() {
        if v > map[best] {
            best = i;
        }
    }
    Ok(gt[best])
}

/// Share of samples with ciou >= 0.5 (the field's reported "cIoU", EZ-VSL's AP50).
pub fn ciou_at_half(cious: &[f64]) -> Result<f64, MetricsError> {
    share_at_least(cious, 0.5)
}

/// Area under the success curve: share of samples with ciou >= 0.05 i over i = 0..=20, trapezoidal rule.
pub fn auc(cious: &[f64]) -> Result<f64, MetricsError> {
    let thresholds: Vec<f64> = (0..=20).map(|i| 0.05 * f64::from(i)).collect();
    let success = thresholds
        .iter()
        .map(|&t| share_at_least(cious, t))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(thresholds
        .windows(2)
        .zip(success.windows(2))
        .map(|(x, y)| (x[1] - x[0]) * (y[0] + y[1]) / 2.0)
        .sum())
}

fn share_at_least(values: &[f64], threshold: f64) -> Result<f64, MetricsError> {
    if values.is_empty() {
        return Err(MetricsError::Empty);
    }
    Ok(values.iter().filter(|&&v| v >= threshold).count() as f64 / values.len() as f64)
}

fn check(
    found: usize,
    width: usize,
    height: usize,
    what: &'static str,
) -> Result<(), MetricsError> {
    if found == width * height && found > 0 {
        Ok(())
    } else {
        Err(MetricsError::Size {
            what,
            found,
            width,
            height,
        })
    }
}

/// Running totals of the localization metrics over frames with a sounding object, plus the silent-frame check.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct LocalizationTally {
    /// ciou of every evaluated (sounding) frame.
    pub cious: Vec<f64>,
    /// The best ciou any map could reach on each of those frames ([`ciou_ceiling`]).
    pub ceiling_cious: Vec<f64>,
    /// Pointing-game hits among evaluated frames.
    pub pointing_hits: usize,
    /// Sounding frames judged `active`.
    pub sounding_active: usize,
    /// Frames where nothing sounds.
    pub silent_frames: usize,
    /// Silent frames judged not `active` (the desired outcome).
    pub silent_inactive: usize,
    /// Frames whose only sound is off-screen.
    pub offscreen_frames: usize,
    /// Off-screen frames judged not `active` (the desired outcome).
    pub offscreen_inactive: usize,
    /// Sounding frames with two or more visible classes of which exactly one sounds.
    pub multi_class_frames: usize,
    /// Pointing-game hits among those.
    pub multi_class_hits: usize,
}

/// Summary of a [`LocalizationTally`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LocalizationSummary {
    /// Frames with a sounding object.
    pub sounding_frames: usize,
    /// Pointing-game accuracy over sounding frames.
    pub pointing: f64,
    /// Share of sounding frames with ciou >= 0.5.
    pub ciou_at_half: f64,
    /// Mean ciou over sounding frames.
    pub mean_ciou: f64,
    /// Area under the ciou success curve.
    pub auc: f64,
    /// The best cIoU@0.5 any heatmap could reach on these frames' boxes.
    pub ciou_at_half_ceiling: f64,
    /// Share of sounding frames judged active.
    pub sounding_active_rate: f64,
    /// Frames where nothing sounds.
    pub silent_frames: usize,
    /// Share of silent frames judged not active (1.0 when there are none).
    pub silent_inactive_rate: f64,
    /// Frames whose only sound is off-screen.
    pub offscreen_frames: usize,
    /// Share of off-screen frames judged not active (none when there are none).
    pub offscreen_inactive_rate: Option<f64>,
    /// Sounding frames with two or more visible classes of which exactly one sounds.
    pub multi_class_frames: usize,
    /// Pointing-game accuracy on those frames (none when there are none).
    pub multi_class_pointing: Option<f64>,
}

impl LocalizationSummary {
    /// The frames that tell whether the sound was used: two-or-more-class frames' pointing and off-screen frames' activity, as a phrase (empty when there are none).
    pub fn hard_frames_phrase(&self) -> String {
        let mut parts = Vec::new();
        if let Some(p) = self.multi_class_pointing {
            parts.push(format!(
                "pointing where 2+ classes are visible and one sounds {:.1}% (of {})",
                100.0 * p,
                self.multi_class_frames
            ));
        }
        if let Some(r) = self.offscreen_inactive_rate {
            parts.push(format!(
                "off-screen-sound frames not active {:.1}% (of {})",
                100.0 * r,
                self.offscreen_frames
            ));
        }
        parts.join("; ")
    }

    /// How the silent frames came out, as a phrase: the not-active share, or that there were none.
    pub fn silent_phrase(&self) -> String {
        if self.silent_frames == 0 {
            "no silent frames".to_owned()
        } else {
            format!(
                "silent frames not active {:.1}% (of {})",
                100.0 * self.silent_inactive_rate,
                self.silent_frames
            )
        }
    }
}

impl LocalizationTally {
    /// Adds one sounding frame's ciou, its ceiling ([`ciou_ceiling`]), pointing result and activity.
    pub fn add_sounding(&mut self, ciou: f64, ceiling: f64, hit: bool, active: bool) {
        self.cious.push(ciou);
        self.ceiling_cious.push(ceiling);
        self.pointing_hits += usize::from(hit);
        self.sounding_active += usize::from(active);
    }

    /// Adds one frame where nothing sounds and whether it came out active.
    pub fn add_silent(&mut self, active: bool) {
        self.silent_frames += 1;
        self.silent_inactive += usize::from(!active);
    }

    /// Adds one frame whose only sound is off-screen and whether it came out active.
    pub fn add_offscreen(&mut self, active: bool) {
        self.offscreen_frames += 1;
        self.offscreen_inactive += usize::from(!active);
    }

    /// Adds the pointing result of a sounding frame where two or more classes are visible and one sounds (besides [`Self::add_sounding`]).
    pub fn add_multi_class(&mut self, hit: bool) {
        self.multi_class_frames += 1;
        self.multi_class_hits += usize::from(hit);
    }

    /// Merges another tally into this one.
    pub fn merge(&mut self, other: &Self) {
        self.cious.extend_from_slice(&other.cious);
        self.ceiling_cious.extend_from_slice(&other.ceiling_cious);
        self.pointing_hits += other.pointing_hits;
        self.sounding_active += other.sounding_active;
        self.silent_frames += other.silent_frames;
        self.silent_inactive += other.silent_inactive;
        self.offscreen_frames += other.offscreen_frames;
        self.offscreen_inactive += other.offscreen_inactive;
        self.multi_class_frames += other.multi_class_frames;
        self.multi_class_hits += other.multi_class_hits;
    }

    /// The metrics; [`MetricsError::Empty`] when no sounding frame was added.
    pub fn summary(&self) -> Result<LocalizationSummary, MetricsError> {
        let n = self.cious.len();
        if n == 0 {
            return Err(MetricsError::Empty);
        }
        Ok(LocalizationSummary {
            sounding_frames: n,
            pointing: self.pointing_hits as f64 / n as f64,
            ciou_at_half: ciou_at_half(&self.cious)?,
            mean_ciou: self.cious.iter().sum::<f64>() / n as f64,
            auc: auc(&self.cious)?,
            ciou_at_half_ceiling: ciou_at_half(&self.ceiling_cious)?,
            sounding_active_rate: self.sounding_active as f64 / n as f64,
            silent_frames: self.silent_frames,
            silent_inactive_rate: if self.silent_frames == 0 {
                1.0
            } else {
                self.silent_inactive as f64 / self.silent_frames as f64
            },
            offscreen_frames: self.offscreen_frames,
            offscreen_inactive_rate: rate(self.offscreen_inactive, self.offscreen_frames),
            multi_class_frames: self.multi_class_frames,
            multi_class_pointing: rate(self.multi_class_hits, self.multi_class_frames),
        })
    }
}

/// `count / of`, or none when `of` is 0.
fn rate(count: usize, of: usize) -> Option<f64> {
    (of > 0).then(|| count as f64 / of as f64)
}

/// The centre-prior baseline: a fixed Gaussian heatmap centred on the frame (standard deviation a quarter of each side), row-major `width` x `height`.
///
/// It ignores the audio and the image; a localization number it approaches is not a result.
pub fn centre_prior(width: usize, height: usize) -> Vec<f32> {
    let (cx, cy) = (width as f64 / 2.0, height as f64 / 2.0);
    let (sx, sy) = (width as f64 / 4.0, height as f64 / 4.0);
    let mut map = Vec::with_capacity(width * height);
    for y in 0..height {
        let dy = (y as f64 + 0.5 - cy) / sy;
        for x in 0..width {
            let dx = (x as f64 + 0.5 - cx) / sx;
            map.push((-0.5 * (dx * dx + dy * dy)).exp() as f32);
        }
    }
    map
}

/// How far the model is above the best baseline on each headline metric (model minus best baseline; <= 0 means a trivial answer does as well).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Margin {
    /// Pointing-game accuracy.
    pub pointing: f64,
    /// Share of sounding frames with ciou >= 0.5.
    pub ciou_at_half: f64,
    /// Area under the ciou success curve.
    pub auc: f64,
}

/// The trivial answers on the same frames as a model's metrics, and the model's margin over the best of them.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Baselines {
    /// A fixed centred Gaussian heatmap ([`centre_prior`]).
    pub centre_prior: LocalizationSummary,
    /// The model with each frame scored against audio that is not its own.
    pub mismatched_audio: LocalizationSummary,
    /// Model minus the best baseline, per metric.
    pub margin: Margin,
}

impl Baselines {
    /// The baselines of `model` and its margins over them.
    pub fn new(
        model: &LocalizationSummary,
        centre_prior: LocalizationSummary,
        mismatched_audio: LocalizationSummary,
    ) -> Self {
        let best = |f: fn(&LocalizationSummary) -> f64| {
            f(model) - f(&centre_prior).max(f(&mismatched_audio))
        };
        let margin = Margin {
            pointing: best(|s| s.pointing),
            ciou_at_half: best(|s| s.ciou_at_half),
            auc: best(|s| s.auc),
        };
        Self {
            centre_prior,
            mismatched_audio,
            margin,
        }
    }

    /// The metrics on which a baseline does at least as well as the model.
    pub fn beaten(&self) -> Vec<&'static str> {
        let m = &self.margin;
        [
            ("pointing", m.pointing),
            ("cIoU@0.5", m.ciou_at_half),
            ("AUC", m.auc),
        ]
        .into_iter()
        .filter(|(_, v)| *v <= 0.0)
        .map(|(name, _)| name)
        .collect()
    }
}

/// An activity threshold chosen on labelled frames, and how it separates them.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Calibration {
    /// Scores at or above this are `active`.
    pub threshold: f32,
    /// Share of sounding frames at or above the threshold.
    pub sounding_active_rate: f64,
    /// Share of silent frames below the threshold.
    pub silent_inactive_rate: f64,
}

/// The threshold on frame scores that maximises balanced accuracy (mean of the sounding-active and silent-inactive rates) over `(score, sounding)` samples; candidates are midpoints between neighbouring distinct scores.
pub fn calibrate_threshold(samples: &[(f32, bool)]) -> Result<Calibration, MetricsError> {
    let positives = samples.iter().filter(|s| s.1).count();
    let negatives = samples.len() - positives;
    if positives == 0 || negatives == 0 {
        return Err(MetricsError::Empty);
    }
    let mut sorted: Vec<(f32, bool)> = samples.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Threshold below everything: all active.
    let mut best = Calibration {
        threshold: sorted[0].0 - 1e-3,
        sounding_active_rate: 1.0,
        silent_inactive_rate: 0.0,
    };
    let mut below_pos = 0usize;
    let mut below_neg = 0usize;
    for i in 0..sorted.len() {
        if sorted[i].1 {
            below_pos += 1;
        } else {
            below_neg += 1;
        }
        let next = sorted.get(i + 1).map(|s| s.0);
        if next == Some(sorted[i].0) {
            continue;
        }
        let threshold = next.map_or(sorted[i].0 + 1e-3, |n| 0.5 * (sorted[i].0 + n));
        let candidate = Calibration {
            threshold,
            sounding_active_rate: (positives - below_pos) as f64 / positives as f64,
            silent_inactive_rate: below_neg as f64 / negatives as f64,
        };
        let score = |c: &Calibration| c.sounding_active_rate + c.silent_inactive_rate;
        if score(&candidate) > score(&best) {
            best = candidate;
        }
    }
    Ok(best)
}

/// An activity head fitted on labelled frames, and how it separates them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActivityCalibration {
    /// The fitted head, its bias placed at the best balanced accuracy.
    pub head: ActivityHead,
    /// Share of sounding frames the head calls active.
    pub sounding_active_rate: f64,
    /// Share of silent frames the head calls not active.
    pub silent_inactive_rate: f64,
}

/// Ridge on the standardised weights (not the bias), so separable data still gives finite weights.
const ACTIVITY_RIDGE: f64 = 1e-3;

/// Fits an [`ActivityHead`] to `(features, sounding)` samples: the direction of a class-balanced logistic regression on standardised features (Newton's method with a small ridge), and the bias at the threshold of best balanced accuracy along it.
pub fn fit_activity_head(
    samples: &[(ActivityFeatures, bool)],
) -> Result<ActivityCalibration, MetricsError> {
    let positives = samples.iter().filter(|s| s.1).count();
    let negatives = samples.len() - positives;
    if positives == 0 || negatives == 0 {
        return Err(MetricsError::Empty);
    }
    const N: usize = ACTIVITY_FEATURES;
    let raw: Vec<[f64; N]> = samples
        .iter()
        .map(|(f, _)| f.to_array().map(f64::from))
        .collect();
    let n = raw.len() as f64;
    let mut mean = [0.0f64; N];
    let mut sd = [0.0f64; N];
    for j in 0..N {
        mean[j] = raw.iter().map(|x| x[j]).sum::<f64>() / n;
        let var = raw.iter().map(|x| (x[j] - mean[j]).powi(2)).sum::<f64>() / n;
        // A constant feature carries no information: keep its weight at zero.
        sd[j] = if var > 0.0 { var.sqrt() } else { 1.0 };
    }
    let x: Vec<[f64; N + 1]> = raw
        .iter()
        .map(|r| {
            let mut z = [1.0; N + 1];
            for j in 0..N {
                z[j] = (r[j] - mean[j]) / sd[j];
            }
            z
        })
        .collect();
    // Each class weighs one half in total.
    let weight = |y: bool| {
        if y {
            0.5 / positives as f64
        } else {
            0.5 / negatives as f64
        }
    };
    let mut beta = [0.0f64; N + 1];
    for _ in 0..100 {
        let mut grad = [0.0f64; N + 1];
        let mut hess = [[0.0f64; N + 1]; N + 1];
        for (xi, (_, y)) in x.iter().zip(samples) {
            let z: f64 = xi.iter().zip(&beta).map(|(a, b)| a * b).sum();
            let p = 1.0 / (1.0 + (-z).exp());
            let w = weight(*y);
            let r = w * (p - f64::from(u8::from(*y)));
            let c = w * p * (1.0 - p);
            for a in 0..=N {
                grad[a] += r * xi[a];
                for b in 0..=N {
                    hess[a][b] += c * xi[a] * xi[b];
                }
            }
        }
        for a in 0..=N {
            let ridge = if a < N { ACTIVITY_RIDGE } else { 1e-12 };
            grad[a] += ridge * beta[a];
            hess[a][a] += ridge;
        }
        let step = solve(hess, grad);
        for (b, s) in beta.iter_mut().zip(step) {
            *b -= s;
        }
        if step.iter().all(|s| s.abs() < 1e-12) {
            break;
        }
    }
    // Back to raw units (w_j = beta_j / sd_j); the intercept is replaced by the threshold on
    // w . x of best balanced accuracy, which is what the head is judged by.
    let unbiased = ActivityHead {
        weights: std::array::from_fn(|j| (beta[j] / sd[j]) as f32),
        bias: 0.0,
    };
    let logits: Vec<(f32, bool)> = samples
        .iter()
        .map(|(f, y)| (unbiased.logit(*f), *y))
        .collect();
    let head = ActivityHead {
        bias: -calibrate_threshold(&logits)?.threshold,
        ..unbiased
    };
    let active = |y: bool| {
        samples
            .iter()
            .filter(|s| s.1 == y && head.logit(s.0) >= 0.0)
            .count()
    };
    Ok(ActivityCalibration {
        head,
        sounding_active_rate: active(true) as f64 / positives as f64,
        silent_inactive_rate: 1.0 - active(false) as f64 / negatives as f64,
    })
}

/// Solves the K x K system `a x = b` by Gaussian elimination with partial pivoting (a singular system gives zeros).
fn solve<const K: usize>(mut a: [[f64; K]; K], mut b: [f64; K]) -> [f64; K] {
    for col in 0..K {
        let pivot = (col..K)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .unwrap_or(col);
        if a[pivot][col].abs() < 1e-300 {
            return [0.0; K];
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        let pivot_row = a[col];
        for row in col + 1..K {
            let f = a[row][col] / pivot_row[col];
            for (v, p) in a[row].iter_mut().zip(pivot_row).skip(col) {
                *v -= f * p;
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = [0.0; K];
    for row in (0..K).rev() {
        let rest: f64 = (row + 1..K).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - rest) / a[row][row];
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::localize::AudioDescriptor;

    #[test]
    fn gt_map_truncates_like_the_field() {
        // 4 x 4 frame; box x from 0.3*4 = 1.2 -> 1 to 0.99*4 = 3.96 -> 3, y from 0 to 0.5*4 = 2.
        let gt = gt_map(&[[0.3, 0.0, 0.99, 0.5]], 4, 4);
        let expected = [
            0, 1, 1, 0, //
            0, 1, 1, 0, //
            0, 0, 0, 0, //
            0, 0, 0, 0,
        ];
        assert_eq!(gt, expected.map(|v| v == 1));
        // Union of two boxes, clipped to the frame.
        let gt = gt_map(&[[0.0, 0.0, 0.25, 0.25], [0.75, 0.75, 1.5, 1.5]], 4, 4);
        assert_eq!(gt.iter().filter(|&&g| g).count(), 2);
        assert!(gt[0] && gt[15]);
    }

    #[test]
    fn ciou_by_hand() {
        // 4 x 2 map; sorted values 0, .1, .2, .3, .4, .5, .6, 1 -> threshold = sorted[4] = 0.4,
        // so P = {0.4, 0.5, 0.6, 1.0} at indices 3, 4, 5, 7.
        let map = [0.0, 0.1, 0.2, 0.4, 0.5, 0.6, 0.3, 1.0];
        // G = indices 0, 1, 4, 5 (the left half of each row).
        let gt = [true, true, false, false, true, true, false, false];
        // P*G = {4, 5} -> 2; sum G = 4; P outside G = {3, 7} -> 2; ciou = 2 / 6.
        assert!((ciou(&map, &gt, 4, 2).unwrap() - 2.0 / 6.0).abs() < 1e-15);
        // Perfect prediction: ciou 1.
        let gt = [false, false, false, true, true, true, false, true];
        assert_eq!(ciou(&map, &gt, 4, 2).unwrap(), 1.0);
        // Ties at the threshold all count as predicted: constant map -> P = everything.
        let flat = [0.0; 8];
        let gt = [true, true, false, false, false, false, false, false];
        assert!((ciou(&flat, &gt, 4, 2).unwrap() - 2.0 / 8.0).abs() < 1e-15);
        assert!(matches!(
            ciou(&map, &gt, 3, 2),
            Err(MetricsError::Size { found: 8, .. })
        ));
    }

    #[test]
    fn auc_and_ciou_at_half_by_hand() {
        // cious 0.0, 0.5, 1.0: success(t) = 1 at t = 0; 2/3 for 0 < t <= 0.5; 1/3 for t > 0.5.
        // Trapezoids: [0, .05]: (1 + 2/3)/2 * .05; 9 steps of 2/3 up to .5: 9 * .05 * 2/3;
        // [.5, .55]: (2/3 + 1/3)/2 * .05; 9 steps of 1/3 up to 1.0: 9 * .05 / 3.
        let cious = [0.0, 0.5, 1.0];
        let expected = 0.05 * (5.0 / 6.0) + 0.45 * (2.0 / 3.0) + 0.05 * 0.5 + 0.45 / 3.0;
        assert!(
            (auc(&cious).unwrap() - expected).abs() < 1e-12,
            "{}",
            auc(&cious).unwrap()
        );
        assert!((ciou_at_half(&cious).unwrap() - 2.0 / 3.0).abs() < 1e-15);
        // All perfect -> AUC 1; all zero -> only t = 0 succeeds -> 0.05 / 2.
        assert!((auc(&[1.0, 1.0]).unwrap() - 1.0).abs() < 1e-12);
        assert!((auc(&[0.0]).unwrap() - 0.025).abs() < 1e-12);
        assert_eq!(auc(&[]), Err(MetricsError::Empty));
    }

    #[test]
    fn pointing_takes_the_first_maximum() {
        let map = [0.2, 1.0, 1.0, 0.0];
        assert!(pointing_hit(&map, &[false, true, false, false], 2, 2).unwrap());
        assert!(!pointing_hit(&map, &[false, false, true, false], 2, 2).unwrap());
    }

    /// Frames of three kinds: sounding (loud, matching), off-screen (loud, no match), silent (quiet, some random match).
    fn three_kinds() -> Vec<(ActivityFeatures, bool)> {
        let mut samples = Vec::new();
        for i in 0..60 {
            let jitter = (i as f32 * 0.618).fract() * 0.1;
            let f = |score: f32, contrast: f32, level: f32| ActivityFeatures {
                score: score + jitter,
                contrast: contrast + jitter,
                audio: AudioDescriptor {
                    level: level - 10.0 * jitter,
                    ..AudioDescriptor::default()
                },
            };
            samples.push((f(0.5, 0.3, -4.0), true));
            samples.push((f(0.2, 0.1, -4.0), false));
            samples.push((f(0.5, 0.3, -12.0), false));
        }
        samples
    }

    #[test]
    fn activity_head_separates_what_no_single_feature_does() {
        let samples = three_kinds();
        // Score alone cannot tell a loud match from a quiet random one.
        let scores: Vec<(f32, bool)> = samples.iter().map(|s| (s.0.score, s.1)).collect();
        let by_score = calibrate_threshold(&scores).unwrap();
        assert!(by_score.sounding_active_rate + by_score.silent_inactive_rate < 1.9);
        let c = fit_activity_head(&samples).unwrap();
        assert_eq!(c.sounding_active_rate, 1.0, "{c:?}");
        assert_eq!(c.silent_inactive_rate, 1.0, "{c:?}");
        // The rates are what the head itself gives.
        let active = samples.iter().filter(|s| c.head.logit(s.0) >= 0.0).count();
        assert_eq!(active, 60);
        // Louder audio and a higher match both push towards active.
        assert!(c.head.weights[0] > 0.0 || c.head.weights[1] > 0.0, "{c:?}");
        assert!(c.head.weights[2] > 0.0, "{c:?}");
    }

    #[test]
    fn activity_head_tells_a_source_from_loud_noise_by_the_spectrum() {
        // Same match and loudness; the source has a loud band (spread), the noise is flat.
        let mut samples = Vec::new();
        for i in 0..40 {
            let jitter = (i as f32 * 0.618).fract();
            let f = |spread: f32| ActivityFeatures {
                score: 0.5 + 0.1 * jitter,
                contrast: 0.3 - 0.1 * jitter,
                audio: AudioDescriptor {
                    level: -4.0 + jitter,
                    band_spread: spread + 0.1 * jitter,
                    ..AudioDescriptor::default()
                },
            };
            samples.push((f(1.0), true));
            samples.push((f(0.4), false));
        }
        let c = fit_activity_head(&samples).unwrap();
        assert_eq!(
            (c.sounding_active_rate, c.silent_inactive_rate),
            (1.0, 1.0),
            "{c:?}"
        );
        assert!(c.head.weights[4] > 0.0, "{c:?}");
        assert_eq!(c.head.weights[5..], [0.0, 0.0], "constant features: {c:?}");
    }

    #[test]
    fn activity_head_needs_both_classes_and_ignores_constant_features() {
        let samples = three_kinds();
        let only_negative: Vec<_> = samples.iter().filter(|s| !s.1).copied().collect();
        assert_eq!(fit_activity_head(&only_negative), Err(MetricsError::Empty));
        // A constant audio level: the head works from the map alone, with finite weights.
        let flat: Vec<_> = samples
            .iter()
            .filter(|s| s.0.audio.level > -8.0)
            .map(|(f, y)| {
                let mut f = *f;
                f.audio.level = -5.0;
                (f, *y)
            })
            .collect();
        let c = fit_activity_head(&flat).unwrap();
        assert_eq!(c.head.weights[2], 0.0, "{c:?}");
        assert!(c.head.weights.iter().all(|w| w.is_finite()) && c.head.bias.is_finite());
        assert_eq!(
            c.sounding_active_rate + c.silent_inactive_rate,
            2.0,
            "{c:?}"
        );
    }

    #[test]
    fn calibration_picks_the_separating_midpoint() {
        let samples = [
            (0.1, false),
            (0.2, false),
            (0.35, true),
            (0.3, false),
            (0.5, true),
            (0.6, true),
        ];
        let c = calibrate_threshold(&samples).unwrap();
        assert!((c.threshold - 0.325).abs() < 1e-6);
        assert_eq!((c.sounding_active_rate, c.silent_inactive_rate), (1.0, 1.0));
        // Overlapping classes: 0.4 (silent) sits among the sounding scores.
        let samples = [(0.1, false), (0.4, false), (0.3, true), (0.5, true)];
        let c = calibrate_threshold(&samples).unwrap();
        assert_eq!(c.sounding_active_rate + c.silent_inactive_rate, 1.5);
        assert_eq!(
            calibrate_threshold(&[(0.1, true)]),
            Err(MetricsError::Empty)
        );
    }

    #[test]
    fn ciou_ceiling_is_reached_by_the_best_map_and_no_better() {
        // 4 x 4 frame: the median rule predicts at least 8 pixels.
        let small = gt_map(&[[0.0, 0.0, 0.5, 0.25]], 4, 4);
        assert_eq!(small.iter().filter(|&&g| g).count(), 2);
        assert_eq!(ciou_ceiling(&small), 0.25);
        // The best map: the box on top, the rest below it in distinct steps.
        let best: Vec<f32> = small
            .iter()
            .enumerate()
            .map(|(i, &g)| if g { 1.0 } else { i as f32 / 100.0 })
            .collect();
        assert_eq!(ciou(&best, &small, 4, 4).unwrap(), 0.25);
        // The box itself as a map does worse: ties at 0 put every pixel in the prediction.
        let binary: Vec<f32> = small.iter().map(|&g| f32::from(u8::from(g))).collect();
        assert_eq!(ciou(&binary, &small, 4, 4).unwrap(), 2.0 / 16.0);
        // Half the frame or more can be predicted exactly.
        let half = gt_map(&[[0.0, 0.0, 1.0, 0.5]], 4, 4);
        assert_eq!(ciou_ceiling(&half), 1.0);
        let binary: Vec<f32> = half.iter().map(|&g| f32::from(u8::from(g))).collect();
        assert_eq!(ciou(&binary, &half, 4, 4).unwrap(), 1.0);
    }

    #[test]
    fn tally_summarises() {
        let mut tally = LocalizationTally::default();
        tally.add_sounding(0.6, 1.0, true, true);
        tally.add_sounding(0.2, 0.4, false, false);
        tally.add_silent(false);
        tally.add_silent(true);
        let s = tally.summary().unwrap();
        assert_eq!(s.sounding_frames, 2);
        assert_eq!(s.pointing, 0.5);
        assert_eq!(s.ciou_at_half, 0.5);
        assert_eq!(s.ciou_at_half_ceiling, 0.5);
        assert!((s.mean_ciou - 0.4).abs() < 1e-12);
        assert_eq!(s.sounding_active_rate, 0.5);
        assert_eq!(s.silent_inactive_rate, 0.5);
        assert_eq!(s.silent_phrase(), "silent frames not active 50.0% (of 2)");
        let mut only_sounding = LocalizationTally::default();
        only_sounding.add_sounding(0.6, 1.0, true, true);
        assert_eq!(
            only_sounding.summary().unwrap().silent_phrase(),
            "no silent frames"
        );
        assert_eq!(
            LocalizationTally::default().summary(),
            Err(MetricsError::Empty)
        );
    }

    #[test]
    fn centre_prior_peaks_at_the_centre_and_covers_half_with_a_centred_blob() {
        let (w, h) = (8, 6);
        let map = centre_prior(w, h);
        let best = map
            .iter()
            .enumerate()
            .fold(0, |b, (i, &v)| if v > map[b] { i } else { b });
        assert_eq!((best % w, best / w), (3, 2));
        // A box around the centre: pointing hits it; a corner box is missed.
        let centre = gt_map(&[[0.25, 0.25, 0.75, 0.75]], w, h);
        assert!(pointing_hit(&map, &centre, w, h).unwrap());
        let corner = gt_map(&[[0.0, 0.0, 0.25, 0.25]], w, h);
        assert!(!pointing_hit(&map, &corner, w, h).unwrap());
    }

    #[test]
    fn margins_are_over_the_best_baseline() {
        let summary = |pointing: f64, ciou_at_half: f64, auc: f64| LocalizationSummary {
            sounding_frames: 10,
            pointing,
            ciou_at_half,
            mean_ciou: 0.0,
            auc,
            ciou_at_half_ceiling: 1.0,
            sounding_active_rate: 1.0,
            silent_frames: 0,
            silent_inactive_rate: 1.0,
            offscreen_frames: 0,
            offscreen_inactive_rate: None,
            multi_class_frames: 0,
            multi_class_pointing: None,
        };
        let b = Baselines::new(
            &summary(0.9, 0.5, 0.5),
            summary(0.95, 0.2, 0.3),
            summary(0.4, 0.3, 0.5),
        );
        assert!((b.margin.pointing + 0.05).abs() < 1e-12);
        assert!((b.margin.ciou_at_half - 0.2).abs() < 1e-12);
        assert_eq!(b.margin.auc, 0.0);
        assert_eq!(b.beaten(), ["pointing", "AUC"]);
    }
}
