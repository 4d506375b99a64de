//! [`Probe`] plans an f32 graph whose quantizable activations
//! ([`crate::quantize::quantizable_activations`]) are extra outputs; [`Probe::observe`] runs
//! one input and hands each activation's values to its [`Observed`], which keeps their range
//! and, in a second pass, a histogram over it; [`Observed::range`] reads the range a
//! [`RangeRule`] chooses. The `quantize` command and the parity tests calibrate through these.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::Message;
use tract_onnx::prelude::*;

use crate::pb::ModelProto;
use crate::quantize::{entropy_threshold, graph_file, quantizable_activations, with_extra_outputs};

/// Bins of the histogram a percentile range is read from.
const HISTOGRAM_BINS: usize = 4096;
/// Bins of the histogram of magnitudes an entropy threshold is chosen from (TensorRT's count).
const ENTROPY_BINS: usize = 2048;

/// Errors raised while calibrating.
#[derive(Debug, thiserror::Error)]
pub enum CalibrateError {
    /// The graph could not be planned by tract.
    #[error("{path}: cannot plan: {message}")]
    Plan {
        /// The graph file.
        path: PathBuf,
        /// tract's message.
        message: String,
    },
    /// A calibration run failed.
    #[error("{path}: calibration run failed: {message}")]
    Run {
        /// The graph file.
        path: PathBuf,
        /// tract's message.
        message: String,
    },
    /// An activation held NaN or an infinity.
    #[error("{path}: an activation holds {value} during calibration")]
    NonFinite {
        /// The graph file.
        path: PathBuf,
        /// The offending value.
        value: f32,
    },
}

/// How a static range is chosen from the values seen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RangeRule {
    /// Smallest and largest value seen (one pass).
    Minmax,
    /// This quantile (a fraction in (0.5, 1]) of each tail, from a histogram over the range.
    Percentile(f64),
    /// The symmetric clipping threshold of least KL divergence over a histogram of magnitudes (TensorRT's).
    Entropy,
}

impl RangeRule {
    /// Passes over the calibration inputs the rule needs: the range, then a histogram.
    pub fn passes(self) -> usize {
        match self {
            Self::Minmax => 1,
            Self::Percentile(_) | Self::Entropy => 2,
        }
    }
}

/// Values seen of one activation: range, then a histogram over it (of the values, for percentiles; of their magnitudes up to the largest, for entropy).
#[derive(Debug, Clone)]
pub struct Observed {
    min: f32,
    max: f32,
    histogram: Vec<u64>,
    magnitudes: bool,
}

impl Default for Observed {
    fn default() -> Self {
        Self {
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            histogram: Vec::new(),
            magnitudes: false,
        }
    }
}

impl Observed {
    /// Start the histogram pass that `rule` reads (none for [`RangeRule::Minmax`]), over the range seen so far.
    pub fn start_histogram(&mut self, rule: RangeRule) {
        let (bins, magnitudes) = match rule {
            RangeRule::Minmax => (0, false),
            RangeRule::Percentile(_) => (HISTOGRAM_BINS, false),
            RangeRule::Entropy => (ENTROPY_BINS, true),
        };
        self.histogram = vec![0; bins];
        self.magnitudes = magnitudes;
    }

    /// Largest magnitude seen.
    fn magnitude(&self) -> f32 {
        self.min.abs().max(self.max.abs())
    }

    /// Count `v`: into the range, or into the histogram once one is started.
    fn add(&mut self, v: f32) {
        let bins = self.histogram.len();
        if bins == 0 {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
            return;
        }
        let (from, width, v) = if self.magnitudes {
            (0.0, self.magnitude(), v.abs())
        } else {
            (self.min, self.max - self.min, v)
        };
        let bin =
            (((v - from) / width.max(f32::MIN_POSITIVE) * bins as f32) as usize).min(bins - 1);
        self.histogram[bin] += 1;
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

    /// The range `rule` chooses from what was seen (the histogram pass done where the rule needs one).
    pub fn range(&self, rule: RangeRule) -> (f32, f32) {
        match rule {
            RangeRule::Minmax => (self.min, self.max),
            RangeRule::Percentile(q) => (self.quantile(1.0 - q), self.quantile(q)),
            RangeRule::Entropy => {
                let t = entropy_threshold(&self.histogram, self.magnitude() / ENTROPY_BINS as f32);
                (-t, t)
            }
        }
    }
}

/// An optimised single-input plan of an ONNX model held in memory (`path` names it in errors).
pub fn plan_of(
    model: &ModelProto,
    input_shape: &[usize],
    path: &Path,
) -> Result<Arc<TypedRunnableModel>, CalibrateError> {
    let bytes = model.encode_to_vec();
    tract_onnx::onnx()
        .model_for_read(&mut bytes.as_slice())
        .and_then(|m| m.with_input_fact(0, f32::fact(input_shape).into()))
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .map_err(|e| CalibrateError::Plan {
            path: path.to_path_buf(),
            message: format!("{e:#}"),
        })
}

/// One encoder's calibration plan: the f32 graph with every quantized activation as an extra output.
pub struct Probe {
    plan: Arc<TypedRunnableModel>,
    input_shape: Vec<usize>,
    names: Vec<String>,
    path: PathBuf,
}

impl Probe {
    /// Plans `model` (read from `path`, input of `input_shape`) with its quantizable activations, except those under `keep_float`, exposed.
    pub fn new(
        model: &ModelProto,
        input_shape: &[usize],
        path: &Path,
        keep_float: &[String],
    ) -> Result<Self, CalibrateError> {
        let names = quantizable_activations(model, keep_float);
        let exposed = with_extra_outputs(model, &names);
        Ok(Self {
            plan: plan_of(&exposed, input_shape, path)?,
            input_shape: input_shape.to_vec(),
            names,
            path: path.to_path_buf(),
        })
    }

    /// The exposed activations, in the order [`Probe::observe`] fills its `seen`.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The graph's file name, as calibrated ranges are keyed.
    pub fn graph_file(&self) -> String {
        graph_file(&self.path)
    }

    /// Runs one input and hands each exposed activation's values to its entry of `seen` (one per [`Probe::names`]).
    pub fn observe(&self, input: &[f32], seen: &mut [Observed]) -> Result<(), CalibrateError> {
        let run = |message: String| CalibrateError::Run {
            path: self.path.clone(),
            message,
        };
        let tensor =
            Tensor::from_shape(&self.input_shape, input).map_err(|e| run(format!("{e:#}")))?;
        let outputs = self
            .plan
            .run(tvec!(tensor.into()))
            .map_err(|e| run(format!("{e:#}")))?;
        for (value, obs) in outputs.iter().skip(2).zip(seen.iter_mut()) {
            let view = value
                .to_plain_array_view::<f32>()
                .map_err(|e| run(format!("{e:#}")))?;
            for &v in view.iter() {
                if !v.is_finite() {
                    return Err(CalibrateError::NonFinite {
                        path: self.path.clone(),
                        value: v,
                    });
                }
                obs.add(v);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_the_rule() {
        let mut o = Observed::default();
        let values: Vec<f32> = (0..=1000).map(|i| i as f32 / 100.0 - 2.0).collect();
        for &v in &values {
            o.add(v);
        }
        assert_eq!(o.range(RangeRule::Minmax), (-2.0, 8.0));
        let rule = RangeRule::Percentile(0.99);
        o.start_histogram(rule);
        for &v in &values {
            o.add(v);
        }
        let (lo, hi) = o.range(rule);
        // The 10th and the 991st of the 1001 values (-1.91 and 7.90), to a bin (10 / 4096).
        assert!(
            (lo - -1.91).abs() < 0.0025 && (hi - 7.90).abs() < 0.0025,
            "{lo} {hi}"
        );
        let rule = RangeRule::Entropy;
        o.start_histogram(rule);
        for &v in &values {
            o.add(v);
        }
        let (lo, hi) = o.range(rule);
        assert_eq!(lo, -hi);
        assert!(hi > 0.0 && hi <= 8.0, "{hi}");
        assert_eq!(rule.passes(), 2);
        assert_eq!(RangeRule::Minmax.passes(), 1);
    }
}
