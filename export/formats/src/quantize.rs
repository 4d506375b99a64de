//! int8 bundles from f32 bundles: every MatMul on a constant weight becomes an integer matmul.
//!
//! The dynamic scheme: weights are quantized once, symmetric int8 (per output channel or per
//! tensor), and each activation is quantized at run time to uint8 over its own range
//! (`DynamicQuantizeLinear`); the product runs as `MatMulInteger` (i8 x u8 -> i32, tract's
//! integer kernels) and is scaled back to f32 before the bias. Attention's activation-by-
//! activation products, LayerNorm, Softmax, GELU and the outputs stay f32. Weights named with
//! `--keep-float` stay f32 too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use prost::Message;

use cavsync_core::manifest::{
    CalibrationRecord, EncoderInfo, LayerSensitivity, MANIFEST_FILE, Manifest, ManifestError,
    QuantizationInfo, sha256_file, sha256_hex,
};
use cavsync_core::model::Precision;

use crate::bundle::write_dir_atomically;
use crate::pb::attribute_proto::AttributeType;
use crate::pb::tensor_proto::DataType;
use crate::pb::{AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto};

/// Largest magnitude of a symmetric int8 weight.
const INT8_MAX: f32 = 127.0;

/// Errors raised while quantizing a bundle.
#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    /// The source bundle failed verification.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The source bundle is not f32.
    #[error(
        "{path}: model.precision is {found}; quantize takes an f32 bundle (convert --precision f32)"
    )]
    Precision {
        /// The source manifest.
        path: PathBuf,
        /// Its precision.
        found: Precision,
    },
    /// A graph file is not an ONNX model.
    #[error("{path}: not an ONNX model: {message}")]
    Decode {
        /// The graph file.
        path: PathBuf,
        /// The decoder's explanation.
        message: String,
    },
    /// A weight initializer cannot be read as f32.
    #[error("{path}: initializer {name}: {problem}")]
    Weight {
        /// The graph file.
        path: PathBuf,
        /// The initializer.
        name: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A `--keep-float` name matches no weight of either graph.
    #[error(
        "--keep-float {0}: no MatMul weight of either graph has this name (see the names `quantize` prints)"
    )]
    UnknownKeepFloat(String),
    /// A file or directory could not be written.
    #[error("{path}: cannot write: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// How to quantize.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QuantizeOptions {
    /// One weight scale per output channel instead of one per tensor.
    pub per_channel: bool,
    /// Weights to keep in f32, by name (a weight matches when its name starts with one of these).
    pub keep_float: Vec<String>,
    /// The static scheme: each quantized MatMul's activation range, calibrated; none for the dynamic scheme.
    pub calibration: Option<Calibration>,
    /// Each weight's measured effect alone, to record in the manifest (empty when not measured).
    pub sensitivity: Vec<LayerSensitivity>,
}

/// Calibrated activation ranges for the static scheme, and where they came from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Calibration {
    /// `(min, max)` of each quantized MatMul's activation input, by graph file name (`audio.onnx`,
    /// `visual.onnx`) and tensor name: the two graphs use the same tensor names.
    pub ranges: BTreeMap<(String, String), (f32, f32)>,
    /// What the manifest records of the calibration set and method.
    pub record: CalibrationRecord,
}

/// Zero point of every static activation: uint8 centred at 128 is int8 without offset, which tract runs without the run-time zero-point corrections (measured: with other zero points, sums over the operands took 46% of the full-size visual encoder).
const ACTIVATION_ZERO: u8 = 128;

/// The uint8 scale and zero point of an activation whose values lie in `[min, max]`: symmetric about 0, zero point 128.
pub fn uint8_params(min: f32, max: f32) -> (f32, u8) {
    let m = min.abs().max(max.abs());
    let scale = if m > 0.0 && m.is_finite() {
        m / INT8_MAX
    } else {
        1.0
    };
    (scale, ACTIVATION_ZERO)
}

/// Levels of one sign of a static activation: codes 128 to 255 stand for 0 to 127 steps.
const SIGN_LEVELS: usize = INT8_MAX as usize + 1;

/// The clipping threshold of a symmetric activation range that loses least information
/// (TensorRT's entropy calibration): of the bin edges from [`SIGN_LEVELS`] bins up, the one where
/// the histogram below it, merged into [`SIGN_LEVELS`] levels, is closest in KL divergence to
/// the histogram clipped there (its tail counted in the last bin). `magnitudes[i]` counts the |x|
/// seen in `[i, i + 1) * bin_width`.
pub fn entropy_threshold(magnitudes: &[u64], bin_width: f32) -> f32 {
    let bins = magnitudes.len();
    if bins <= SIGN_LEVELS {
        return bins as f32 * bin_width;
    }
    let total: u64 = magnitudes.iter().sum();
    let mut tail: u64 = magnitudes[SIGN_LEVELS..].iter().sum();
    let mut clipped = vec![0.0f64; bins];
    let mut merged = vec![0.0f64; bins];
    let mut best = (f64::INFINITY, bins);
    for edge in SIGN_LEVELS..=bins {
        let kept = (total - tail) as f64;
        if kept > 0.0 {
            for (c, &m) in clipped[..edge].iter_mut().zip(magnitudes) {
                *c = m as f64 / total as f64;
            }
            clipped[edge - 1] += tail as f64 / total as f64;
            // Each level spreads its count evenly over the bins of its span that held any value.
            for level in 0..SIGN_LEVELS {
                let span = level * edge / SIGN_LEVELS..(level + 1) * edge / SIGN_LEVELS;
                let held = magnitudes[span.clone()].iter().filter(|&&m| m > 0).count();
                let count = magnitudes[span.clone()].iter().sum::<u64>() as f64;
                for (q, &m) in merged[span.clone()].iter_mut().zip(&magnitudes[span]) {
                    *q = if m > 0 {
                        count / held as f64 / kept
                    } else {
                        0.0
                    };
                }
            }
            smooth(&mut clipped[..edge]);
            smooth(&mut merged[..edge]);
            let divergence: f64 = clipped[..edge]
                .iter()
                .zip(&merged[..edge])
                .map(|(p, q)| p * (p / q).ln())
                .sum();
            if divergence < best.0 {
                best = (divergence, edge);
            }
        }
        if edge < bins {
            tail -= magnitudes[edge];
        }
    }
    best.1 as f32 * bin_width
}

/// Give the empty bins of a distribution a small mass taken evenly from the others, so that
/// every ratio of the divergence is finite.
fn smooth(distribution: &mut [f64]) {
    const EPSILON: f64 = 1e-4;
    let empty = distribution.iter().filter(|&&p| p == 0.0).count();
    let held = distribution.len() - empty;
    if empty == 0 || held == 0 {
        return;
    }
    let taken = EPSILON * empty as f64 / held as f64;
    for p in distribution {
        *p = if *p == 0.0 {
            EPSILON
        } else {
            (*p - taken).max(EPSILON)
        };
    }
}

/// The 2-D f32 weight initializer a node multiplies by, when it is a MatMul that `quantize_graph` can quantize.
fn matmul_weight<'g>(graph: &'g GraphProto, n: &NodeProto) -> Option<&'g TensorProto> {
    (n.op_type == "MatMul" && n.input.len() == 2)
        .then(|| graph.initializer.iter().find(|t| t.name == n.input[1]))
        .flatten()
        .filter(|t| t.dims.len() == 2 && t.data_type == DataType::Float as i32)
}

/// The file name of a graph's path, which keys its activations in [`Calibration::ranges`].
pub fn graph_file(path: &Path) -> String {
    path.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Whether a weight is named by one of the `--keep-float` prefixes.
fn is_kept(name: &str, keep_float: &[String]) -> bool {
    keep_float.iter().any(|k| name.starts_with(k.as_str()))
}

/// The activation inputs of the MatMuls `quantize_graph` would quantize, in graph order (no duplicates).
pub fn quantizable_activations(model: &ModelProto, keep_float: &[String]) -> Vec<String> {
    let Some(graph) = model.graph.as_ref() else {
        return Vec::new();
    };
    let mut names: Vec<String> = Vec::new();
    for n in &graph.node {
        if let Some(w) = matmul_weight(graph, n)
            && !is_kept(base_name(&w.name), keep_float)
            && !names.contains(&n.input[0])
        {
            names.push(n.input[0].clone());
        }
    }
    names
}

/// The names (as `quantize` prints them) of the weights `quantize_graph` would quantize, in graph order.
pub fn quantizable_weights(model: &ModelProto, keep_float: &[String]) -> Vec<String> {
    let Some(graph) = model.graph.as_ref() else {
        return Vec::new();
    };
    graph
        .node
        .iter()
        .filter_map(|n| matmul_weight(graph, n))
        .map(|w| base_name(&w.name).to_string())
        .filter(|name| !is_kept(name, keep_float))
        .collect()
}

/// The model with `names` added to its graph outputs (after the existing ones), so that a runtime hands them back.
pub fn with_extra_outputs(model: &ModelProto, names: &[String]) -> ModelProto {
    let mut model = model.clone();
    if let Some(graph) = model.graph.as_mut() {
        graph
            .output
            .extend(names.iter().map(|n| crate::pb::ValueInfoProto {
                name: n.clone(),
                r#type: None,
            }));
    }
    model
}

/// What became of one MatMul weight.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerReport {
    /// The weight's name in the graph, without the writer's numeric suffix.
    pub name: String,
    /// Whether it stayed f32.
    pub kept_float: bool,
    /// Largest absolute error of the int8 weight against the f32 one, relative to the largest f32 magnitude (0 when kept).
    pub relative_error: f32,
}

/// The name of a weight without the writer's `_N` suffix.
fn base_name(name: &str) -> &str {
    match name.rsplit_once('_') {
        Some((base, id)) if !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => name,
    }
}

/// Symmetric int8 quantization of an `[rows, cols]` row-major weight: values and one scale per column (or one in all).
fn quantize_weight(
    data: &[f32],
    rows: usize,
    cols: usize,
    per_channel: bool,
) -> (Vec<i8>, Vec<f32>) {
    let mut scales = if per_channel {
        let mut max = vec![0.0f32; cols];
        for row in data.chunks_exact(cols) {
            for (m, v) in max.iter_mut().zip(row) {
                *m = m.max(v.abs());
            }
        }
        max
    } else {
        vec![data.iter().fold(0.0f32, |m, v| m.max(v.abs()))]
    };
    for s in &mut scales {
        *s = if *s > 0.0 { *s / INT8_MAX } else { 1.0 };
    }
    let mut q = Vec::with_capacity(rows * cols);
    for row in data.chunks_exact(cols) {
        for (c, v) in row.iter().enumerate() {
            let s = scales[if per_channel { c } else { 0 }];
            q.push((v / s).round().clamp(-INT8_MAX, INT8_MAX) as i8);
        }
    }
    (q, scales)
}

fn tensor(name: String, dims: &[usize], data_type: DataType, raw_data: Vec<u8>) -> TensorProto {
    TensorProto {
        name,
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: data_type as i32,
        raw_data,
    }
}

fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        name: name.into(),
        op_type: op.into(),
        attribute: Vec::new(),
    }
}

/// Rewrites every MatMul of `model` whose second input is a 2-D f32 initializer (and not kept float) as DynamicQuantizeLinear + MatMulInteger + rescale; reports each weight.
pub fn quantize_graph(
    model: &mut ModelProto,
    options: &QuantizeOptions,
    path: &Path,
) -> Result<Vec<LayerReport>, QuantizeError> {
    let Some(graph) = model.graph.as_mut() else {
        return Err(QuantizeError::Decode {
            path: path.to_path_buf(),
            message: "the model has no graph".into(),
        });
    };
    let weight_err = |name: &str, problem: String| QuantizeError::Weight {
        path: path.to_path_buf(),
        name: name.to_string(),
        problem,
    };
    let mut reports = Vec::new();
    let mut nodes = Vec::with_capacity(graph.node.len());
    let mut new_initializers = Vec::new();
    let mut replaced = std::collections::HashSet::new();
    for n in std::mem::take(&mut graph.node) {
        let Some(w) = matmul_weight(graph, &n) else {
            nodes.push(n);
            continue;
        };
        let name = base_name(&w.name).to_string();
        if is_kept(&name, &options.keep_float) {
            reports.push(LayerReport {
                name,
                kept_float: true,
                relative_error: 0.0,
            });
            nodes.push(n);
            continue;
        }
        let (rows, cols) = (w.dims[0] as usize, w.dims[1] as usize);
        if w.raw_data.len() != rows * cols * 4 {
            return Err(weight_err(
                &w.name,
                format!(
                    "{} bytes of data, expected {rows} x {cols} f32 = {}",
                    w.raw_data.len(),
                    rows * cols * 4
                ),
            ));
        }
        let data: Vec<f32> = w
            .raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if let Some(v) = data.iter().find(|v| !v.is_finite()) {
            return Err(weight_err(
                &w.name,
                format!("holds {v} (expected finite values)"),
            ));
        }
        let (q, scales) = quantize_weight(&data, rows, cols, options.per_channel);
        let max = data.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let err = data
            .iter()
            .zip(&q)
            .enumerate()
            .map(|(i, (v, &qv))| {
                let s = scales[if options.per_channel { i % cols } else { 0 }];
                (v - f32::from(qv) * s).abs()
            })
            .fold(0.0f32, f32::max);
        reports.push(LayerReport {
            name,
            kept_float: false,
            relative_error: if max > 0.0 { err / max } else { 0.0 },
        });
        let w_name = w.name.clone();
        replaced.insert(w_name.clone());
        let q_name = format!("{w_name}.int8");
        let scale_name = format!("{w_name}.scale");
        let zp_name = format!("{w_name}.zero_point");
        let scale_dims: &[usize] = if options.per_channel { &[cols] } else { &[] };
        new_initializers.push(tensor(
            q_name.clone(),
            &[rows, cols],
            DataType::Int8,
            q.iter().map(|&v| v as u8).collect(),
        ));
        new_initializers.push(tensor(zp_name.clone(), &[], DataType::Int8, vec![0]));
        let out = &n.output[0];
        let (xq, xs, xzp) = (
            format!("{out}.xq"),
            format!("{out}.xscale"),
            format!("{out}.xzero"),
        );
        let (acc, accf, scale) = (
            format!("{out}.i32"),
            format!("{out}.f32"),
            format!("{out}.scale"),
        );
        let static_params = match &options.calibration {
            Some(c) => {
                let key = (graph_file(path), n.input[0].clone());
                let &(min, max) = c.ranges.get(&key).ok_or_else(|| {
                    weight_err(
                        &w.name,
                        format!(
                            "the calibration has no range for its activation {}",
                            n.input[0]
                        ),
                    )
                })?;
                Some(uint8_params(min, max))
            }
            None => None,
        };
        if let Some((x_scale, x_zero)) = static_params {
            // Constant activation parameters: the combined scale folds into one constant.
            new_initializers.push(tensor(
                xs.clone(),
                &[],
                DataType::Float,
                x_scale.to_le_bytes().to_vec(),
            ));
            new_initializers.push(tensor(xzp.clone(), &[], DataType::Uint8, vec![x_zero]));
            new_initializers.push(tensor(
                scale.clone(),
                scale_dims,
                DataType::Float,
                scales
                    .iter()
                    .flat_map(|s| (s * x_scale).to_le_bytes())
                    .collect(),
            ));
            nodes.push(node(
                "QuantizeLinear",
                &format!("{out}.quantize"),
                &[&n.input[0], &xs, &xzp],
                &[&xq],
            ));
        } else {
            nodes.push(node(
                "DynamicQuantizeLinear",
                &format!("{out}.quantize"),
                &[&n.input[0]],
                &[&xq, &xs, &xzp],
            ));
        }
        nodes.push(node(
            "MatMulInteger",
            &format!("{out}.matmul_integer"),
            &[&xq, &q_name, &xzp, &zp_name],
            &[&acc],
        ));
        let mut cast = node("Cast", &format!("{out}.cast"), &[&acc], &[&accf]);
        cast.attribute.push(AttributeProto {
            name: "to".into(),
            r#type: AttributeType::Int as i32,
            i: DataType::Float as i64,
            ..AttributeProto::default()
        });
        nodes.push(cast);
        if static_params.is_none() {
            new_initializers.push(tensor(
                scale_name.clone(),
                scale_dims,
                DataType::Float,
                scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
            ));
            nodes.push(node(
                "Mul",
                &format!("{out}.scales"),
                &[&xs, &scale_name],
                &[&scale],
            ));
        }
        nodes.push(node("Mul", &n.name, &[&accf, &scale], &[out]));
    }
    graph.node = nodes;
    graph.initializer.retain(|t| !replaced.contains(&t.name));
    graph.initializer.extend(new_initializers);
    Ok(reports)
}

/// Quantizes the f32 bundle at `src` into an int8 bundle at `out` (written to a temporary directory, then renamed); returns its manifest and what became of each weight.
pub fn quantize_bundle(
    src: &Path,
    out: &Path,
    options: &QuantizeOptions,
) -> Result<(Manifest, Vec<LayerReport>), QuantizeError> {
    let manifest = Manifest::read(src)?;
    if manifest.model.precision != Precision::F32 {
        return Err(QuantizeError::Precision {
            path: src.join(MANIFEST_FILE),
            found: manifest.model.precision,
        });
    }
    write_dir_atomically(
        out,
        |path, source| QuantizeError::Io { path, source },
        |tmp| write_quantized(src, &manifest, tmp, options),
    )
}

/// Quantizes one encoder graph of the source bundle into `dir`; returns its manifest entry.
fn quantize_encoder(
    src: &Path,
    info: &EncoderInfo,
    dir: &Path,
    options: &QuantizeOptions,
    reports: &mut Vec<LayerReport>,
) -> Result<EncoderInfo, QuantizeError> {
    let (path, bytes) = info.read_verified(src)?;
    let mut model = ModelProto::decode(bytes.as_slice()).map_err(|e| QuantizeError::Decode {
        path: path.clone(),
        message: e.to_string(),
    })?;
    reports.extend(quantize_graph(&mut model, options, &path)?);
    let bytes = model.encode_to_vec();
    let out = dir.join(&info.file);
    std::fs::write(&out, &bytes).map_err(|source| QuantizeError::Io {
        path: out.clone(),
        source,
    })?;
    Ok(EncoderInfo {
        sha256: sha256_hex(&bytes),
        ..info.clone()
    })
}

/// Writes both quantized graphs and the manifest into `dir`.
fn write_quantized(
    src: &Path,
    source: &Manifest,
    dir: &Path,
    options: &QuantizeOptions,
) -> Result<(Manifest, Vec<LayerReport>), QuantizeError> {
    let mut reports = Vec::new();
    let audio = quantize_encoder(src, &source.audio, dir, options, &mut reports)?;
    let visual = quantize_encoder(src, &source.visual, dir, options, &mut reports)?;
    if let Some(k) = options
        .keep_float
        .iter()
        .find(|k| !reports.iter().any(|r| r.name.starts_with(k.as_str())))
    {
        return Err(QuantizeError::UnknownKeepFloat(k.clone()));
    }
    let kept: Vec<String> = reports
        .iter()
        .filter(|r| r.kept_float)
        .map(|r| r.name.clone())
        .collect();
    let mut manifest = source.clone();
    manifest.model.precision = Precision::Int8;
    manifest.model.precision_guidance = Some(Precision::Int8.guidance().into());
    manifest.audio = audio;
    manifest.visual = visual;
    let (scheme, activations) = match &options.calibration {
        Some(c) => (
            "static",
            format!(
                "uint8 with one scale and zero point per activation, calibrated ({}) on {} frames of {} clips (QuantizeLinear)",
                c.record.method, c.record.frames, c.record.clips
            ),
        ),
        None => (
            "dynamic",
            "uint8 over each activation's own range at run time (DynamicQuantizeLinear)"
                .to_string(),
        ),
    };
    manifest.quantization = Some(QuantizationInfo {
        scheme: scheme.into(),
        weights: if options.per_channel {
            "int8 symmetric, one scale per output channel".into()
        } else {
            "int8 symmetric, one scale per tensor".into()
        },
        activations,
        calibration: options.calibration.as_ref().map(|c| c.record.clone()),
        quantized_matmuls: reports.len() - kept.len(),
        kept_float: kept,
        sensitivity: options.sensitivity.clone(),
        source_manifest_sha256: sha256_file(&src.join(MANIFEST_FILE))?,
    });
    manifest.write(dir)?;
    Ok((manifest, reports))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_round_to_the_nearest_step_of_their_channel() {
        // 2 x 3, columns with ranges 1.27, 0.254 and 0 (a zero column keeps scale 1).
        let w = [1.27, -0.254, 0.0, -0.63, 0.128, 0.0];
        let (q, s) = quantize_weight(&w, 2, 3, true);
        assert_eq!(s.len(), 3);
        assert!((s[0] - 0.01).abs() < 1e-7 && (s[1] - 0.002).abs() < 1e-8 && s[2] == 1.0);
        assert_eq!(q, vec![127, -127, 0, -63, 64, 0]);
        let (q, s) = quantize_weight(&w, 2, 3, false);
        assert_eq!(s.len(), 1);
        assert_eq!(q, vec![127, -25, 0, -63, 13, 0]);
    }

    #[test]
    fn static_activations_are_symmetric_about_128() {
        let (scale, zero) = uint8_params(-0.5, 2.54);
        assert_eq!(zero, 128);
        assert!((scale - 0.02).abs() < 1e-7);
        assert_eq!(uint8_params(0.0, 0.0), (1.0, 128));
    }

    #[test]
    fn entropy_keeps_a_full_range_and_clips_a_lone_outlier() {
        // Too few bins to clip: the whole range.
        assert_eq!(entropy_threshold(&[5; 100], 0.5), 50.0);
        // Values spread evenly over the range: clipping anywhere loses more than it gains.
        let even = vec![1000u64; 2048];
        assert!(entropy_threshold(&even, 1.0) >= 2000.0);
        // A bell of |x| (sigma 80 bins; no bin past 420 holds a value) and one value at the far
        // end: the threshold lies past the bell's bulk (3 sigma) and far below the outlier.
        let mut bell: Vec<u64> = (0..2048)
            .map(|i| (1e6 * (-(i as f64 / 80.0).powi(2) / 2.0).exp()) as u64)
            .collect();
        bell[2047] = 1;
        let t = entropy_threshold(&bell, 1.0);
        assert!((240.0..=512.0).contains(&t), "threshold {t}");
    }

    #[test]
    fn base_names_drop_only_the_numeric_suffix() {
        assert_eq!(
            base_name("blocks_a.0.mlp.fc1.weight_12"),
            "blocks_a.0.mlp.fc1.weight"
        );
        assert_eq!(base_name("patch_embed_a"), "patch_embed_a");
        assert_eq!(base_name("x_"), "x_");
    }
}
