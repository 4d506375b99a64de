//! Sound-source localization: the audio-visual similarity map of one frame, its placement on
//! the frame, peaks and regions, and an overlay image for humans.
//!
//! The map is the cosine between the frame's audio global token and each visual patch token
//! (a 14x14 grid for the released model), bilinearly upsampled with
//! `torch.nn.functional.interpolate(mode='bilinear', align_corners=False)` semantics and
//! min-max normalised.
//!
//! The patch grid covers what the model saw, not the whole frame: the eval transform resizes
//! the shorter side to 224 and centre-crops a 224x224 square (see
//! [`crate::preprocess::image`]). [`Localizer`] therefore upsamples the grid onto that centred
//! square of the frame (for a 320x240 frame, columns ~39.7 to ~280.3) and leaves the pixels
//! outside it at 0, "no evidence"; for a square frame the square is the whole frame and the
//! heatmap equals [`upsample_bilinear`] to the frame size followed by [`min_max_normalize`].

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};

use crate::preprocess::image::{IMAGE_SIZE, crop_offset, resized_dims};
use crate::similarity::{cosine_with_norm, norm};
/// Relative spread below which a map counts as constant: interpolating equal values in f32
/// leaves a few ulps (~1e-7 relative) of noise, which normalising must not blow up to [0, 1].
const FLAT_TOLERANCE: f32 = 1e-5;
/// Weight of the colour map when blending the heatmap over the frame.
const OVERLAY_ALPHA: f32 = 0.5;
/// Width in pixels of box outlines and cross strokes.
const STROKE: i64 = 2;
/// Colour of peaks and boxes on an active frame.
const ACTIVE_COLOUR: Rgb<u8> = Rgb([255, 255, 255]);
/// Colour of peaks and boxes on an inactive frame (not confident, drawn for inspection only).
const INACTIVE_COLOUR: Rgb<u8> = Rgb([128, 128, 128]);

/// Why a localization step could not run.
#[derive(Debug, thiserror::Error)]
pub enum LocalizeError {
    /// An input or output buffer does not have the length its stated shape implies.
    #[error("{what}: expected {expected} values, found {found}")]
    Shape {
        /// The buffer and its stated shape, e.g. "visual tokens (196 tokens x 768 dims)".
        what: String,
        /// Length the shape implies.
        expected: usize,
        /// Length given.
        found: usize,
    },
    /// A size that must be positive is zero.
    #[error("{what} is empty (expected at least one value in every dimension)")]
    Empty {
        /// The input or size concerned.
        what: &'static str,
    },
    /// An input holds NaN or infinity.
    #[error("{what}: value {value} at index {index} (expected finite numbers)")]
    NonFinite {
        /// The input concerned.
        what: &'static str,
        /// Position of the first offending value.
        index: usize,
        /// The offending value.
        value: f32,
    },
    /// A [`LocalizeConfig`] field is out of range.
    #[error("localization config: {field} = {value} (expected {expected})")]
    Config {
        /// Name of the field.
        field: &'static str,
        /// The value given.
        value: f32,
        /// The accepted range.
        expected: &'static str,
    },
    /// A file could not be created, written or renamed.
    #[error("{path}: cannot write PNG: {source}")]
    Io {
        /// The destination file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Cosine similarity between an audio global embedding (dim D) and each of N visual patch tokens (N*D row-major) -> out[N].
///
/// N is `out.len()`. Each value is [`crate::similarity::cosine`] (norms floored as in
/// `torch.nn.functional.cosine_similarity`, so a zero vector gives 0).
pub fn similarity_map(
    audio_global: &[f32],
    visual_tokens: &[f32],
    out: &mut [f32],
) -> Result<(), LocalizeError> {
    let dim = audio_global.len();
    if dim == 0 {
        return Err(LocalizeError::Empty {
            what: "audio global embedding",
        });
    }
    let tokens = out.len();
    if tokens.checked_mul(dim) != Some(visual_tokens.len()) {
        return Err(LocalizeError::Shape {
            what: format!("visual tokens ({tokens} tokens x {dim} dims)"),
            expected: tokens.saturating_mul(dim),
            found: visual_tokens.len(),
        });
    }
    let audio_norm = norm(audio_global);
    for (value, token) in out.iter_mut().zip(visual_tokens.chunks_exact(dim)) {
        *value = cosine_with_norm(audio_global, audio_norm, token);
    }
    Ok(())
}

/// Rows and columns of a patch grid (14 x 14 for 224-pixel images and 16-pixel patches).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    /// Rows (height in patches).
    pub rows: usize,
    /// Columns (width in patches).
    pub cols: usize,
}

impl Grid {
    /// A grid from the manifest's `[rows, cols]`.
    pub fn from_rows_cols([rows, cols]: [usize; 2]) -> Self {
        Self { rows, cols }
    }
}

/// Width and height of a frame or map in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameSize {
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
}

impl FrameSize {
    /// The size of an image.
    pub fn of(image: &RgbImage) -> Self {
        Self {
            width: image.width() as usize,
            height: image.height() as usize,
        }
    }
}

/// Bilinear resize of a grid map to `size`, exactly torch.nn.functional.interpolate(mode='bilinear', align_corners=False) semantics (half-pixel centres, edge clamp, no antialias).
pub fn upsample_bilinear(
    map: &[f32],
    grid: Grid,
    out: &mut [f32],
    size: FrameSize,
) -> Result<(), LocalizeError> {
    let (gh, gw, h, w) = (grid.rows, grid.cols, size.height, size.width);
    check_grid(map, gh, gw)?;
    if h == 0 || w == 0 {
        return Err(LocalizeError::Empty {
            what: "upsampled map size",
        });
    }
    check_len(out, h, w, "upsampled map")?;
    // torch computes the scale and source positions in float32 for float32 input.
    let scale_y = gh as f32 / h as f32;
    let scale_x = gw as f32 / w as f32;
    for (y, out_row) in out.chunks_exact_mut(w).enumerate() {
        let ty = Tap::new(scale_y * (y as f32 + 0.5) - 0.5, gh);
        let row0 = &map[ty.i0 * gw..(ty.i0 + 1) * gw];
        let row1 = &map[ty.i1 * gw..(ty.i1 + 1) * gw];
        for (x, value) in out_row.iter_mut().enumerate() {
            let tx = Tap::new(scale_x * (x as f32 + 0.5) - 0.5, gw);
            *value = ty.sample(&tx, row0, row1);
        }
    }
    Ok(())
}

/// Min-max normalise to [0,1] in place (a constant map becomes all zeros).
///
/// "Constant" allows a relative spread of 1e-5 (f32 rounding noise of interpolation).
/// Expects finite values; an empty slice is left as is.
pub fn min_max_normalize(values: &mut [f32]) {
    let (min, max) = min_max(values);
    normalize_range(values, min, max);
}

/// Smallest and largest value (`(inf, -inf)` for an empty slice).
fn min_max(values: &[f32]) -> (f32, f32) {
    values
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

/// Maps `[min, max]` onto `[0, 1]`; a flat (see [`FLAT_TOLERANCE`]) or invalid range gives zeros.
fn normalize_range(values: &mut [f32], min: f32, max: f32) {
    let range = max - min;
    if range > FLAT_TOLERANCE * min.abs().max(max.abs()) && range.is_finite() {
        for v in values {
            *v = ((*v - min) / range).clamp(0.0, 1.0);
        }
    } else {
        values.fill(0.0);
    }
}

/// Checks that a grid is non-empty and `map` holds `rows * cols` values.
fn check_grid(map: &[f32], rows: usize, cols: usize) -> Result<(), LocalizeError> {
    if rows == 0 || cols == 0 {
        return Err(LocalizeError::Empty {
            what: "similarity map grid",
        });
    }
    check_len(map, rows, cols, "similarity map")
}

/// Checks that `values` holds `rows * cols` values.
fn check_len(values: &[f32], rows: usize, cols: usize, what: &str) -> Result<(), LocalizeError> {
    if rows.checked_mul(cols) == Some(values.len()) {
        Ok(())
    } else {
        Err(LocalizeError::Shape {
            what: format!("{what} ({rows} x {cols})"),
            expected: rows.saturating_mul(cols),
            found: values.len(),
        })
    }
}

/// The two grid cells and weights that one output position interpolates along one axis.
#[derive(Debug, Clone, Copy)]
struct Tap {
    /// Lower cell.
    i0: usize,
    /// Upper cell (equal to `i0` at the last cell).
    i1: usize,
    /// Weight of `i0`.
    l0: f32,
    /// Weight of `i1`.
    l1: f32,
}

impl Tap {
    /// Taps for source position `src` (in cell units, cell centres at integers) on an axis of `len` cells, clamped as torch does.
    fn new(src: f32, len: usize) -> Self {
        let src = src.max(0.0);
        let i0 = (src as usize).min(len - 1);
        let i1 = if i0 + 1 < len { i0 + 1 } else { i0 };
        let l1 = (src - i0 as f32).clamp(0.0, 1.0);
        Self {
            i0,
            i1,
            l0: 1.0 - l1,
            l1,
        }
    }

    /// Bilinear value with `self` as the row taps, `tx` as the column taps, on grid rows `i0` and `i1`.
    fn sample(&self, tx: &Tap, row0: &[f32], row1: &[f32]) -> f32 {
        self.l0 * (tx.l0 * row0[tx.i0] + tx.l1 * row0[tx.i1])
            + self.l1 * (tx.l0 * row1[tx.i0] + tx.l1 * row1[tx.i1])
    }
}

/// A source peak of the localization map, at the centre of its pixel in frame coordinates.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Peak {
    /// Column of the pixel centre (`col + 0.5`).
    pub x: f32,
    /// Row of the pixel centre (`row + 0.5`).
    pub y: f32,
    /// Normalised map value at the peak, in [0, 1].
    pub value: f32,
}

/// An axis-aligned region of the frame in pixel coordinates, `x1`/`y1` exclusive.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct BoundingBox {
    /// First column inside the box.
    pub x0: f32,
    /// First row inside the box.
    pub y0: f32,
    /// One past the last column inside the box.
    pub x1: f32,
    /// One past the last row inside the box.
    pub y1: f32,
    /// Mean normalised map value over the region's pixels, in [0, 1].
    pub score: f32,
}

/// What one frame's similarity map says: how strongly the audio matches the frame, and where.
///
/// `peaks` and `boxes` are computed for every frame, active or not, so that evaluation and
/// debugging can see them; when `active` is false the frame's best match is below the
/// calibrated threshold and callers must not present them as confident detections
/// ([`render_overlay`] draws them grey).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct FrameLocalization {
    /// Largest raw cosine of the patch grid.
    pub score: f32,
    /// Largest minus mean raw cosine of the patch grid: how much one place stands out.
    pub contrast: f32,
    /// What the frame's audio segment (the audio encoder's input) says about sound in it.
    pub audio: AudioDescriptor,
    /// Whether a sounding source is judged visible: the bundle's [`ActivityHead`] when it has one, else `score` >= [`LocalizeConfig::active_threshold`].
    pub active: bool,
    /// Local maxima of the normalised heatmap, strongest first.
    pub peaks: Vec<Peak>,
    /// Regions of the normalised heatmap at or above the region threshold, largest mass first.
    pub boxes: Vec<BoundingBox>,
}

impl FrameLocalization {
    /// What the frame's activity was judged from.
    pub fn features(&self) -> ActivityFeatures {
        ActivityFeatures {
            score: self.score,
            contrast: self.contrast,
            audio: self.audio,
        }
    }
}

/// Loudness, spectral shape and dynamics of one normalised log-mel audio segment (time-major, `bands` values per row).
///
/// A silent stretch holds stationary background noise: a smooth spectrum (small band spread,
/// no loud band) whose quietest row is close to its mean. A sounding source adds a loud band
/// or a few (its pitch and timbre) and dynamics (onsets, rhythm). The mean alone (`level`)
/// cannot tell loud noise from a quiet source; these together can.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudioDescriptor {
    /// Mean of all values: overall loudness.
    pub level: f32,
    /// Largest time-averaged band: the loudest pitch region.
    pub loudest_band: f32,
    /// Standard deviation of the time-averaged bands: how far the spectrum is from flat.
    pub band_spread: f32,
    /// Largest single value: the loudest band at the loudest instant.
    pub peak: f32,
    /// Smallest row mean: the quietest instant, the floor under any sound.
    pub floor: f32,
}

impl AudioDescriptor {
    /// Describes `segment`, `bands` values per row; an empty segment or zero bands gives all zeros.
    pub fn of(segment: &[f32], bands: usize) -> Self {
        if bands == 0 || segment.len() < bands {
            return Self::default();
        }
        let rows = segment.len() / bands;
        let segment = &segment[..rows * bands];
        let (mut total, mut loudest, mut sum_sq) = (0.0f64, f64::NEG_INFINITY, 0.0f64);
        for band in 0..bands {
            let mean = segment
                .iter()
                .skip(band)
                .step_by(bands)
                .map(|&v| f64::from(v))
                .sum::<f64>()
                / rows as f64;
            total += mean;
            sum_sq += mean * mean;
            loudest = loudest.max(mean);
        }
        let level = total / bands as f64;
        let spread = (sum_sq / bands as f64 - level * level).max(0.0).sqrt();
        let floor = segment
            .chunks_exact(bands)
            .map(|row| row.iter().map(|&v| f64::from(v)).sum::<f64>() / bands as f64)
            .fold(f64::INFINITY, f64::min);
        let peak = segment.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        Self {
            level: level as f32,
            loudest_band: loudest as f32,
            band_spread: spread as f32,
            peak,
            floor: floor as f32,
        }
    }

    /// The first field that is NaN or infinite, with its name.
    pub fn non_finite(&self) -> Option<(&'static str, f32)> {
        [
            ("audio level", self.level),
            ("audio loudest band", self.loudest_band),
            ("audio band spread", self.band_spread),
            ("audio peak", self.peak),
            ("audio floor", self.floor),
        ]
        .into_iter()
        .find(|(_, v)| !v.is_finite())
    }
}

/// Number of features an [`ActivityHead`] weighs.
pub const ACTIVITY_FEATURES: usize = 7;

/// Names of the features, in the order of [`ActivityHead::weights`].
pub const ACTIVITY_FEATURE_NAMES: [&str; ACTIVITY_FEATURES] = [
    "score",
    "contrast",
    "level",
    "loudest_band",
    "band_spread",
    "peak",
    "floor",
];

/// Features of a head calibrated before the audio descriptor: score, contrast and level only.
const LEGACY_ACTIVITY_FEATURES: usize = 3;

/// What a frame's activity is judged from: the similarity map and the audio it was made with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActivityFeatures {
    /// Largest raw cosine of the map.
    pub score: f32,
    /// Largest minus mean raw cosine of the map.
    pub contrast: f32,
    /// The audio segment's descriptor.
    pub audio: AudioDescriptor,
}

impl ActivityFeatures {
    /// The features in the order of [`ActivityHead::weights`] ([`ACTIVITY_FEATURE_NAMES`]).
    pub fn to_array(self) -> [f32; ACTIVITY_FEATURES] {
        let a = self.audio;
        [
            self.score,
            self.contrast,
            a.level,
            a.loudest_band,
            a.band_spread,
            a.peak,
            a.floor,
        ]
    }
}

/// A calibrated linear rule for activity: active when `weights . features + bias >= 0`, the features in the order of [`ACTIVITY_FEATURE_NAMES`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivityHead {
    /// Weights of score, contrast, level, loudest band, band spread, peak and floor.
    ///
    /// A head of three weights (score, contrast, level: bundles calibrated before the audio
    /// descriptor) is read with zero weights for the other four, which is the rule it was
    /// calibrated as.
    #[serde(deserialize_with = "activity_weights")]
    pub weights: [f32; ACTIVITY_FEATURES],
    /// Bias (the decision threshold folded in).
    pub bias: f32,
}

/// Reads [`ActivityHead::weights`]: all seven, or the first three of an older head.
fn activity_weights<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<[f32; ACTIVITY_FEATURES], D::Error> {
    let v: Vec<f32> = serde::Deserialize::deserialize(d)?;
    if v.len() != ACTIVITY_FEATURES && v.len() != LEGACY_ACTIVITY_FEATURES {
        return Err(serde::de::Error::custom(format!(
            "expected {ACTIVITY_FEATURES} weights ({}) or {LEGACY_ACTIVITY_FEATURES} (score, contrast, level: a head calibrated before the audio descriptor), found {}",
            ACTIVITY_FEATURE_NAMES.join(", "),
            v.len()
        )));
    }
    let mut w = [0.0; ACTIVITY_FEATURES];
    w[..v.len()].copy_from_slice(&v);
    Ok(w)
}

impl ActivityHead {
    /// The head's decision value for `features` (active when >= 0).
    pub fn logit(&self, features: ActivityFeatures) -> f32 {
        let f = features.to_array();
        self.weights.iter().zip(f).map(|(w, x)| w * x).sum::<f32>() + self.bias
    }

    /// The first weight or bias that is NaN or infinite, if any.
    pub fn non_finite(&self) -> Option<f32> {
        self.weights
            .iter()
            .chain([&self.bias])
            .copied()
            .find(|v| !v.is_finite())
    }
}

impl std::fmt::Display for ActivityHead {
    /// `BIAS name W ...` over the features, each signed with four decimals.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:+.4}", self.bias)?;
        for (name, w) in ACTIVITY_FEATURE_NAMES.iter().zip(self.weights) {
            write!(f, " {name} {w:+.4}")?;
        }
        Ok(())
    }
}

/// Thresholds and limits of [`Localizer`]; missing fields take their defaults when deserialised.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct LocalizeConfig {
    /// Raw cosine a frame's best patch must reach to count as active.
    ///
    /// The default, 0.0, is a placeholder: the right value depends on the checkpoint and must
    /// be calibrated on held-out clips; a model bundle's manifest carries the calibrated value.
    /// Any number except NaN (negative infinity makes every frame active).
    pub active_threshold: f32,
    /// A calibrated activity rule over score, contrast and audio level; replaces `active_threshold` when present.
    pub activity: Option<ActivityHead>,
    /// Fraction of the normalised map, in (0, 1], at or above which a pixel belongs to a region (default 0.5).
    pub region_threshold: f32,
    /// Most peaks, and most boxes, reported per frame (default 3).
    pub max_peaks: usize,
    /// Smallest distance between two reported peaks, as a fraction (>= 0) of the frame diagonal (default 0.1).
    pub min_peak_separation: f32,
    /// Side of the model's square input, which fixes where it lies in the frame (default 224).
    pub image_size: u32,
}

impl Default for LocalizeConfig {
    fn default() -> Self {
        Self {
            active_threshold: 0.0,
            activity: None,
            region_threshold: 0.5,
            max_peaks: 3,
            min_peak_separation: 0.1,
            image_size: IMAGE_SIZE,
        }
    }
}

impl LocalizeConfig {
    /// Checks every field's range.
    fn validate(&self) -> Result<(), LocalizeError> {
        if self.active_threshold.is_nan() {
            return Err(LocalizeError::Config {
                field: "active_threshold",
                value: self.active_threshold,
                expected: "a number, not NaN",
            });
        }
        if let Some(value) = self.activity.and_then(|head| head.non_finite()) {
            return Err(LocalizeError::Config {
                field: "activity",
                value,
                expected: "finite weights and bias",
            });
        }
        if !(self.region_threshold > 0.0 && self.region_threshold <= 1.0) {
            return Err(LocalizeError::Config {
                field: "region_threshold",
                value: self.region_threshold,
                expected: "a fraction in (0, 1]",
            });
        }
        if !(self.min_peak_separation >= 0.0 && self.min_peak_separation.is_finite()) {
            return Err(LocalizeError::Config {
                field: "min_peak_separation",
                value: self.min_peak_separation,
                expected: "a finite fraction >= 0 of the frame diagonal",
            });
        }
        if self.image_size == 0 {
            return Err(LocalizeError::Config {
                field: "image_size",
                value: 0.0,
                expected: "a model input side of at least 1 pixel",
            });
        }
        Ok(())
    }
}

/// Where the model's square input lies in a frame, and how each frame pixel samples the grid.
#[derive(Debug, Default)]
struct Placement {
    /// Frame width, frame height, grid rows, grid columns this placement was computed for (all zero before the first frame).
    key: (usize, usize, usize, usize, u32),
    /// First frame column inside the model's view.
    x_start: usize,
    /// Grid taps of the frame columns `x_start..x_start + cols.len()`.
    cols: Vec<Tap>,
    /// First frame row inside the model's view.
    y_start: usize,
    /// Grid taps of the frame rows `y_start..y_start + rows.len()`.
    rows: Vec<Tap>,
}

impl Placement {
    /// Recomputes the taps unless they already match this frame, grid and model input size.
    fn update(&mut self, frame_w: usize, frame_h: usize, gh: usize, gw: usize, size: u32) {
        let key = (frame_w, frame_h, gh, gw, size);
        if self.key == key {
            return;
        }
        self.key = key;
        let (resized_w, resized_h) = resized_dims(frame_w as u32, frame_h as u32, size);
        self.x_start = axis_taps(&mut self.cols, frame_w, resized_w, gw, size);
        self.y_start = axis_taps(&mut self.rows, frame_h, resized_h, gh, size);
    }
}

/// Fills `taps` for the frame pixels of one axis that fall inside the centre crop; returns the first such pixel.
///
/// Frame pixel `p` (centre `p + 0.5`) lies at `c = (p + 0.5) * resized / len - offset` in the
/// model's crop of side S (224 for the published models), with torchvision's crop offset
/// `round((resized - S) / 2)`; it is inside when `0 <= c < S`, and samples the grid at
/// `c * cells / S - 0.5`, which is where the torch upsample to S would sample it.
fn axis_taps(taps: &mut Vec<Tap>, len: usize, resized: u64, cells: usize, side: u32) -> usize {
    let size = f64::from(side);
    let offset = crop_offset(resized, side) as f64;
    let scale = resized as f64 / len as f64;
    taps.clear();
    let mut start = len;
    for p in 0..len {
        let c = (p as f64 + 0.5) * scale - offset;
        if (0.0..size).contains(&c) {
            if taps.is_empty() {
                start = p;
            }
            taps.push(Tap::new((c * cells as f64 / size - 0.5) as f32, cells));
        }
    }
    start
}

/// Statistics of one connected region of the thresholded heatmap.
#[derive(Debug, Clone, Copy)]
struct Region {
    /// Index of the region's first pixel in raster order (tie-breaker).
    first: usize,
    /// Leftmost column.
    x_min: usize,
    /// Topmost row.
    y_min: usize,
    /// Rightmost column.
    x_max: usize,
    /// Bottom row.
    y_max: usize,
    /// Sum of the normalised values.
    sum: f64,
    /// Number of pixels.
    count: usize,
}

/// Per-frame localization post-processing with reusable scratch buffers.
///
/// See the module documentation for how the patch grid is placed on the frame.
#[derive(Debug)]
pub struct Localizer {
    config: LocalizeConfig,
    placement: Placement,
    candidates: Vec<usize>,
    visited: Vec<bool>,
    stack: Vec<usize>,
    regions: Vec<Region>,
}

impl Localizer {
    /// Creates a localizer after checking the config's ranges.
    pub fn new(config: LocalizeConfig) -> Result<Self, LocalizeError> {
        config.validate()?;
        Ok(Self {
            config,
            placement: Placement::default(),
            candidates: Vec::new(),
            visited: Vec::new(),
            stack: Vec::new(),
            regions: Vec::new(),
        })
    }

    /// The config in use.
    pub fn config(&self) -> &LocalizeConfig {
        &self.config
    }

    /// Localizes one frame from its raw cosine map on `grid`, writing the normalised frame-size heatmap (row-major, height x width) into `heatmap_out`.
    ///
    /// `audio` describes the normalised audio segment the map was made with.
    /// score = max raw cosine; contrast = score - mean raw cosine; active = the activity
    /// head's logit >= 0 when the config has one, else score >= active_threshold; peaks = pixels of the
    /// heatmap that are >= their 8 neighbours and >= region_threshold, strongest first (ties
    /// in raster order), dropping any closer than min_peak_separation x the frame diagonal to
    /// a stronger one, at most max_peaks; boxes = bounding boxes of the 8-connected regions
    /// of {heatmap >= region_threshold}, by summed heatmap value (descending), at most
    /// max_peaks. A constant map gives an all-zero heatmap, no peaks and no boxes.
    /// `heatmap_out` is resized to width * height (its capacity is reused).
    pub fn run(
        &mut self,
        raw_map: &[f32],
        audio: AudioDescriptor,
        grid: Grid,
        frame: FrameSize,
        heatmap_out: &mut Vec<f32>,
    ) -> Result<FrameLocalization, LocalizeError> {
        let mut out = FrameLocalization::default();
        self.run_into(raw_map, audio, grid, frame, heatmap_out, &mut out)?;
        Ok(out)
    }

    /// [`Localizer::run`] writing into `out`, whose peak and box vectors keep their capacity: allocation-free once warm.
    pub fn run_into(
        &mut self,
        raw_map: &[f32],
        audio: AudioDescriptor,
        grid: Grid,
        frame: FrameSize,
        heatmap_out: &mut Vec<f32>,
        out: &mut FrameLocalization,
    ) -> Result<(), LocalizeError> {
        let (gh, gw, frame_w, frame_h) = (grid.rows, grid.cols, frame.width, frame.height);
        check_grid(raw_map, gh, gw)?;
        if frame_w == 0 || frame_h == 0 {
            return Err(LocalizeError::Empty { what: "frame size" });
        }
        if let Some((index, &value)) = raw_map.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(LocalizeError::NonFinite {
                what: "similarity map",
                index,
                value,
            });
        }
        if let Some((what, value)) = audio.non_finite() {
            return Err(LocalizeError::NonFinite {
                what,
                index: 0,
                value,
            });
        }
        let score = raw_map.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mean = raw_map.iter().map(|&v| f64::from(v)).sum::<f64>() / raw_map.len() as f64;
        let contrast = score - mean as f32;
        let features = ActivityFeatures {
            score,
            contrast,
            audio,
        };
        out.active = match &self.config.activity {
            Some(head) => head.logit(features) >= 0.0,
            None => score >= self.config.active_threshold,
        };
        out.score = score;
        out.contrast = contrast;
        out.audio = audio;
        self.render_heatmap(raw_map, grid, frame, heatmap_out);
        self.find_peaks(heatmap_out, frame_w, frame_h, &mut out.peaks);
        self.find_boxes(heatmap_out, frame_w, frame_h, &mut out.boxes);
        Ok(())
    }

    /// Upsamples the grid onto the model's view of the frame, normalises it there, and zeroes the rest.
    fn render_heatmap(
        &mut self,
        raw_map: &[f32],
        grid: Grid,
        frame: FrameSize,
        heatmap: &mut Vec<f32>,
    ) {
        let (gh, gw, frame_w, frame_h) = (grid.rows, grid.cols, frame.width, frame.height);
        let placement = &mut self.placement;
        placement.update(frame_w, frame_h, gh, gw, self.config.image_size);
        heatmap.clear();
        heatmap.resize(frame_w * frame_h, 0.0);
        let (x0, x1) = (placement.x_start, placement.x_start + placement.cols.len());
        let (mut min, mut max) = (f32::INFINITY, f32::NEG_INFINITY);
        for (ty, out_row) in placement
            .rows
            .iter()
            .zip(heatmap.chunks_exact_mut(frame_w).skip(placement.y_start))
        {
            let row0 = &raw_map[ty.i0 * gw..(ty.i0 + 1) * gw];
            let row1 = &raw_map[ty.i1 * gw..(ty.i1 + 1) * gw];
            for (tx, value) in placement.cols.iter().zip(&mut out_row[x0..x1]) {
                *value = ty.sample(tx, row0, row1);
                min = min.min(*value);
                max = max.max(*value);
            }
        }
        for out_row in heatmap
            .chunks_exact_mut(frame_w)
            .skip(placement.y_start)
            .take(placement.rows.len())
        {
            normalize_range(&mut out_row[x0..x1], min, max);
        }
    }

    /// Local maxima at or above the region threshold, thinned by distance, strongest first.
    fn find_peaks(&mut self, heatmap: &[f32], w: usize, h: usize, peaks: &mut Vec<Peak>) {
        let threshold = self.config.region_threshold;
        self.candidates.clear();
        for y in 0..h {
            for x in 0..w {
                let v = heatmap[y * w + x];
                if v >= threshold && is_local_max(heatmap, w, h, x, y) {
                    self.candidates.push(y * w + x);
                }
            }
        }
        self.candidates
            .sort_unstable_by(|&a, &b| heatmap[b].total_cmp(&heatmap[a]).then(a.cmp(&b)));
        let diagonal = (w as f64).hypot(h as f64);
        let min_dist = f64::from(self.config.min_peak_separation) * diagonal;
        peaks.clear();
        for &index in &self.candidates {
            if peaks.len() >= self.config.max_peaks {
                break;
            }
            let (x, y) = ((index % w) as f64 + 0.5, (index / w) as f64 + 0.5);
            let far_enough = peaks.iter().all(|p| {
                let (dx, dy) = (f64::from(p.x) - x, f64::from(p.y) - y);
                (dx * dx + dy * dy).sqrt() >= min_dist
            });
            if far_enough {
                peaks.push(Peak {
                    x: x as f32,
                    y: y as f32,
                    value: heatmap[index],
                });
            }
        }
    }

    /// Bounding boxes of the 8-connected regions at or above the region threshold, largest mass first.
    fn find_boxes(&mut self, heatmap: &[f32], w: usize, h: usize, boxes: &mut Vec<BoundingBox>) {
        let threshold = self.config.region_threshold;
        self.visited.clear();
        self.visited.resize(w * h, false);
        self.regions.clear();
        for first in 0..w * h {
            if self.visited[first] || heatmap[first] < threshold {
                continue;
            }
            self.visited[first] = true;
            self.stack.clear();
            self.stack.push(first);
            let mut region = Region {
                first,
                x_min: first % w,
                y_min: first / w,
                x_max: first % w,
                y_max: first / w,
                sum: 0.0,
                count: 0,
            };
            while let Some(index) = self.stack.pop() {
                let (x, y) = (index % w, index / w);
                region.x_min = region.x_min.min(x);
                region.x_max = region.x_max.max(x);
                region.y_min = region.y_min.min(y);
                region.y_max = region.y_max.max(y);
                region.sum += f64::from(heatmap[index]);
                region.count += 1;
                for ny in y.saturating_sub(1)..(y + 2).min(h) {
                    for nx in x.saturating_sub(1)..(x + 2).min(w) {
                        let n = ny * w + nx;
                        if !self.visited[n] && heatmap[n] >= threshold {
                            self.visited[n] = true;
                            self.stack.push(n);
                        }
                    }
                }
            }
            self.regions.push(region);
        }
        self.regions
            .sort_unstable_by(|a, b| b.sum.total_cmp(&a.sum).then(a.first.cmp(&b.first)));
        boxes.clear();
        boxes.extend(
            self.regions
                .iter()
                .take(self.config.max_peaks)
                .map(|r| BoundingBox {
                    x0: r.x_min as f32,
                    y0: r.y_min as f32,
                    x1: (r.x_max + 1) as f32,
                    y1: (r.y_max + 1) as f32,
                    score: (r.sum / r.count as f64) as f32,
                }),
        );
    }
}

/// Whether pixel (x, y) is at least as large as each of its (up to 8) neighbours.
fn is_local_max(map: &[f32], w: usize, h: usize, x: usize, y: usize) -> bool {
    let v = map[y * w + x];
    (y.saturating_sub(1)..(y + 2).min(h))
        .all(|ny| (x.saturating_sub(1)..(x + 2).min(w)).all(|nx| map[ny * w + nx] <= v))
}

/// Heatmap (values in [0,1], h*w) blended on the frame with a jet-like colormap (alpha ~0.5), peaks drawn as crosses, boxes as 2-px rectangles (different colour when !active, e.g. grey).
///
/// Boxes and peaks are white on an active frame and grey on an inactive one.
pub fn render_overlay(
    frame: &RgbImage,
    heatmap: &[f32],
    loc: &FrameLocalization,
) -> Result<RgbImage, LocalizeError> {
    let (w, h) = (frame.width() as usize, frame.height() as usize);
    check_len(heatmap, h, w, "heatmap for the overlay")?;
    let mut out = frame.clone();
    for (pixel, &v) in out.pixels_mut().zip(heatmap) {
        let colour = jet(v);
        for (channel, c) in pixel.0.iter_mut().zip(colour) {
            let blended = (1.0 - OVERLAY_ALPHA) * f32::from(*channel) + OVERLAY_ALPHA * c;
            *channel = blended.round().clamp(0.0, 255.0) as u8;
        }
    }
    let colour = if loc.active {
        ACTIVE_COLOUR
    } else {
        INACTIVE_COLOUR
    };
    for b in &loc.boxes {
        draw_box(&mut out, b, colour);
    }
    let arm = (w.min(h) as i64 / 30).max(4);
    for p in &loc.peaks {
        draw_cross(&mut out, p, arm, colour);
    }
    Ok(out)
}

/// The jet colour map at `v` in [0, 1] (dark blue, blue, cyan, yellow, red, dark red), as 0..=255 floats.
pub fn jet(v: f32) -> [f32; 3] {
    let v = v.clamp(0.0, 1.0);
    let channel = |centre: f32| (1.5 - (4.0 * v - centre).abs()).clamp(0.0, 1.0) * 255.0;
    [channel(3.0), channel(2.0), channel(1.0)]
}

/// Paints the pixels of [x0, x1) x [y0, y1) that lie inside the image.
fn fill_rect(img: &mut RgbImage, x0: i64, y0: i64, x1: i64, y1: i64, colour: Rgb<u8>) {
    let (w, h) = (i64::from(img.width()), i64::from(img.height()));
    for y in y0.clamp(0, h)..y1.clamp(0, h) {
        for x in x0.clamp(0, w)..x1.clamp(0, w) {
            img.put_pixel(x as u32, y as u32, colour);
        }
    }
}

/// Converts a pixel coordinate to an integer, saturating far outside any image.
fn to_pixel(v: f32) -> i64 {
    v.floor().clamp(-1e9, 1e9) as i64
}

/// Draws a box outline [`STROKE`] pixels wide just inside its bounds.
fn draw_box(img: &mut RgbImage, b: &BoundingBox, colour: Rgb<u8>) {
    let (x0, y0, x1, y1) = (
        to_pixel(b.x0),
        to_pixel(b.y0),
        to_pixel(b.x1),
        to_pixel(b.y1),
    );
    fill_rect(img, x0, y0, x1, y0 + STROKE, colour);
    fill_rect(img, x0, y1 - STROKE, x1, y1, colour);
    fill_rect(img, x0, y0, x0 + STROKE, y1, colour);
    fill_rect(img, x1 - STROKE, y0, x1, y1, colour);
}

/// Draws a cross with arms of `arm` pixels and strokes [`STROKE`] pixels wide centred on the peak.
fn draw_cross(img: &mut RgbImage, p: &Peak, arm: i64, colour: Rgb<u8>) {
    let (cx, cy) = (to_pixel(p.x), to_pixel(p.y));
    let half = STROKE / 2;
    fill_rect(
        img,
        cx - arm,
        cy - half,
        cx + arm + 1,
        cy - half + STROKE,
        colour,
    );
    fill_rect(
        img,
        cx - half,
        cy - arm,
        cx - half + STROKE,
        cy + arm + 1,
        colour,
    );
}

/// Write a PNG atomically (temp file + rename), errors name the path.
///
/// The temporary file sits beside `path` and is removed when anything fails, so `path` is
/// either left untouched or replaced by a complete image.
pub fn save_png(img: &RgbImage, path: &Path) -> Result<(), LocalizeError> {
    crate::atomic::write_atomic(path, |w| {
        img.write_with_encoder(image::codecs::png::PngEncoder::new(w))
            .map_err(std::io::Error::other)
    })
    .map_err(|source| LocalizeError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_matches_torch_edge_clamp() {
        let first = Tap::new(-0.25, 4);
        assert_eq!((first.i0, first.i1, first.l0, first.l1), (0, 1, 1.0, 0.0));
        let last = Tap::new(3.25, 4);
        assert_eq!((last.i0, last.i1), (3, 3));
        let mid = Tap::new(1.25, 4);
        assert_eq!((mid.i0, mid.i1, mid.l0, mid.l1), (1, 2, 0.75, 0.25));
    }

    #[test]
    fn axis_taps_cover_the_centre_crop() {
        let mut taps = Vec::new();
        // 320 wide -> 298 resized, crop offset 37: frame columns 40..=279 are inside.
        let start = axis_taps(&mut taps, 320, 298, 14, 224);
        assert_eq!(start, 40);
        assert_eq!(taps.len(), 240);
        // The short axis is covered entirely.
        assert_eq!(axis_taps(&mut taps, 240, 224, 14, 224), 0);
        assert_eq!(taps.len(), 240);
        // A 112-pixel model: 320 wide -> 149 resized, offset 18 (half to even): columns 39..=278.
        assert_eq!(axis_taps(&mut taps, 320, 149, 7, 112), 39);
        assert_eq!(taps.len(), 240);
    }

    #[test]
    fn jet_runs_from_blue_to_red() {
        assert_eq!(jet(0.0), [0.0, 0.0, 127.5]);
        assert_eq!(jet(1.0), [127.5, 0.0, 0.0]);
        assert_eq!(jet(0.5), [127.5, 255.0, 127.5]);
    }

    #[test]
    fn local_max_accepts_plateaus_and_rejects_slopes() {
        let map = [0.0, 1.0, 1.0, 0.0, 0.5, 0.2];
        assert!(is_local_max(&map, 3, 2, 1, 0));
        assert!(is_local_max(&map, 3, 2, 2, 0));
        assert!(!is_local_max(&map, 3, 2, 1, 1));
    }

    #[test]
    fn config_validation_names_the_field() {
        let config = LocalizeConfig {
            region_threshold: 0.0,
            ..LocalizeConfig::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("region_threshold"), "{err}");
        let config = LocalizeConfig {
            min_peak_separation: f32::NAN,
            ..LocalizeConfig::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("min_peak_separation"), "{err}");
        let config = LocalizeConfig {
            active_threshold: f32::NAN,
            ..LocalizeConfig::default()
        };
        assert!(config.validate().is_err());
        assert!(LocalizeConfig::default().validate().is_ok());
    }
}
