//! Writing the audio and visual encoders of a checkpoint as ONNX graphs laid out for tract's fast paths.
//!
//! Each graph encodes one item (batch 1, fixed shapes, so tract can specialise every kernel):
//! patch embedding as reshape/transpose + one 2-D MatMul (no Conv), the positional, modality
//! and patch bias terms folded into one constant, separate Q/K/V MatMuls with the attention
//! scale folded into the query weights, LayerNormalization and exact erf GELU (opset 18). It
//! reproduces the official `forward_feat`, including its joint-block loop that keeps only the
//! last joint block's output.

use crate::pb::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto, attribute_proto::AttributeType,
    tensor_proto::DataType, tensor_shape_proto, type_proto,
};
use prost::Message;

use cavsync_core::model::{Modality, Precision};
use cavsync_core::preprocess::fbank::NUM_MEL_BINS;

use crate::checkpoint::{Checkpoint, RawTensor};
use crate::layout::{LAYER_NORM_EPS, ModelConfig};

/// ONNX operator set the graphs use (LayerNormalization needs 17; 18 is the newest tract is tested against).
pub const OPSET: i64 = 18;
/// ONNX IR version matching [`OPSET`].
pub const IR_VERSION: i64 = 8;
/// Name of the audio graph's input: normalised fbank (1, L, 128).
pub const AUDIO_INPUT: &str = "fbank";
/// Name of the visual graph's input: normalised image (1, 3, H, W).
pub const VISUAL_INPUT: &str = "image";
/// Name of both graphs' global-embedding output (1, D).
pub const GLOBAL_OUTPUT: &str = "global";
/// Name of both graphs' patch-token output (1, N, D).
pub const TOKENS_OUTPUT: &str = "tokens";

/// Errors raised while writing a graph.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// A tensor the layout promises is absent from the checkpoint.
    #[error("checkpoint tensor `{0}` is missing")]
    Missing(String),
    /// The precision is not written from a checkpoint (int8 comes from `quantize`).
    #[error(
        "precision {0} cannot be written from a checkpoint: convert writes f32 or f16; make an int8 bundle from an f32 one with `cavsync-export quantize`"
    )]
    Precision(Precision),
}

/// The float type a graph's weights and arithmetic use: the precisions this writer can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Float {
    /// Float32.
    F32,
    /// Float16; inputs and outputs stay float32.
    F16,
}

/// The float type of `precision`, or why the writer cannot write it.
fn float_type(precision: Precision) -> Result<Float, OnnxError> {
    match precision {
        Precision::F32 => Ok(Float::F32),
        Precision::F16 => Ok(Float::F16),
        Precision::Int8 => Err(OnnxError::Precision(precision)),
    }
}

/// Check that graphs of `precision` can be written from a checkpoint (f32 and f16; int8 comes from `quantize`).
pub fn check_precision(precision: Precision) -> Result<(), OnnxError> {
    float_type(precision).map(|_| ())
}

/// Longest sum an f16 graph leaves to one matrix product: fp16 kernels (aarch64 `asimdhp`)
/// accumulate in half precision, so a product over a longer inner dimension is written as products
/// over slices of this length whose results are added in f32.
pub const F16_SUM_CHUNK: usize = 128;

/// Accumulates nodes and initializers of one graph with unique value names.
struct Graph<'a> {
    ck: &'a Checkpoint,
    float: Float,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    next_id: usize,
}

fn ints_attr(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: values.to_vec(),
        ..Default::default()
    }
}

fn int_attr(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: value,
        ..Default::default()
    }
}

fn float_attr(name: &str, value: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Float as i32,
        f: value,
        ..Default::default()
    }
}

fn value_info(name: &str, shape: &[usize]) -> ValueInfoProto {
    let dim = shape
        .iter()
        .map(|&d| tensor_shape_proto::Dimension {
            value: Some(tensor_shape_proto::dimension::Value::DimValue(d as i64)),
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
        }),
    }
}

impl<'a> Graph<'a> {
    fn new(ck: &'a Checkpoint, float: Float) -> Self {
        Self {
            ck,
            float,
            nodes: Vec::new(),
            initializers: Vec::new(),
            next_id: 0,
        }
    }

    fn raw(&self, key: &str) -> Result<&'a RawTensor, OnnxError> {
        self.ck
            .tensors
            .get(key)
            .ok_or_else(|| OnnxError::Missing(key.to_string()))
    }

    fn fresh(&mut self, hint: &str) -> String {
        self.next_id += 1;
        format!("{hint}_{}", self.next_id)
    }

    /// A float initializer stored in the graph's precision.
    fn weight(&mut self, hint: &str, shape: &[usize], data: &[f32]) -> String {
        let name = self.fresh(hint);
        let (data_type, raw_data) = match self.float {
            Float::F32 => (
                DataType::Float,
                data.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
            Float::F16 => (
                DataType::Float16,
                data.iter()
                    .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                    .collect(),
            ),
        };
        self.initializers.push(TensorProto {
            name: name.clone(),
            dims: shape.iter().map(|&d| d as i64).collect(),
            data_type: data_type as i32,
            raw_data,
        });
        name
    }

    fn shape_const(&mut self, values: &[i64]) -> String {
        let name = self.fresh("shape");
        self.initializers.push(TensorProto {
            name: name.clone(),
            dims: vec![values.len() as i64],
            data_type: DataType::Int64 as i32,
            raw_data: values.iter().flat_map(|x| x.to_le_bytes()).collect(),
        });
        name
    }

    fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        let out = self.fresh(&op.to_lowercase());
        self.nodes.push(NodeProto {
            name: out.clone(),
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            attribute: attrs,
        });
        out
    }

    fn reshape(&mut self, x: &str, shape: &[i64]) -> String {
        let s = self.shape_const(shape);
        self.node("Reshape", &[x, &s], vec![])
    }

    fn transpose(&mut self, x: &str, perm: &[i64]) -> String {
        self.node("Transpose", &[x], vec![ints_attr("perm", perm)])
    }

    /// Indices `start..end` of a value along `axis`.
    fn slice(&mut self, x: &str, axis: i64, start: i64, end: i64) -> String {
        let s = self.shape_const(&[start]);
        let e = self.shape_const(&[end]);
        let a = self.shape_const(&[axis]);
        self.node("Slice", &[x, &s, &e, &a], vec![])
    }

    /// x @ W for a 2-D value x (rows, `in_dim`) and W (`in_dim`, `out_dim`) row-major; in an f16
    /// graph a longer `in_dim` than [`F16_SUM_CHUNK`] is summed in f32 over products of slices.
    fn product(&mut self, x: &str, hint: &str, in_dim: usize, out_dim: usize, w: &[f32]) -> String {
        if self.float == Float::F32 || in_dim <= F16_SUM_CHUNK {
            let wn = self.weight(hint, &[in_dim, out_dim], w);
            return self.node("MatMul", &[x, &wn], vec![]);
        }
        let to_f32 = int_attr("to", DataType::Float as i64);
        let mut parts = Vec::new();
        for start in (0..in_dim).step_by(F16_SUM_CHUNK) {
            let end = (start + F16_SUM_CHUNK).min(in_dim);
            let slice = self.slice(x, 1, start as i64, end as i64);
            let wn = self.weight(
                hint,
                &[end - start, out_dim],
                &w[start * out_dim..end * out_dim],
            );
            let y = self.node("MatMul", &[&slice, &wn], vec![]);
            parts.push(self.node("Cast", &[&y], vec![to_f32.clone()]));
        }
        let mut sum = parts[0].clone();
        for part in &parts[1..] {
            sum = self.node("Add", &[&sum, part], vec![]);
        }
        self.cast_in(&sum)
    }

    /// x @ W^T + b for a torch Linear stored as `{prefix}.weight` (out, in) and `{prefix}.bias`.
    fn linear(&mut self, x: &str, prefix: &str, scale: f32) -> Result<String, OnnxError> {
        let w = self.raw(&format!("{prefix}.weight"))?;
        let b = self.raw(&format!("{prefix}.bias"))?;
        let (out_dim, in_dim) = (w.shape[0], w.shape[1]);
        let mut wt = vec![0.0f32; in_dim * out_dim];
        for o in 0..out_dim {
            for i in 0..in_dim {
                wt[i * out_dim + o] = w.data[o * in_dim + i] * scale;
            }
        }
        let bias: Vec<f32> = b.data.iter().map(|v| v * scale).collect();
        let y = self.product(x, &format!("{prefix}.weight"), in_dim, out_dim, &wt);
        let bn = self.weight(&format!("{prefix}.bias"), &[out_dim], &bias);
        Ok(self.node("Add", &[&y, &bn], vec![]))
    }

    /// One output projection of the fused qkv Linear: rows `part*d..(part+1)*d` of the weight.
    fn qkv_part(
        &mut self,
        x: &str,
        prefix: &str,
        part: usize,
        scale: f32,
    ) -> Result<String, OnnxError> {
        let w = self.raw(&format!("{prefix}.attn.qkv.weight"))?;
        let b = self.raw(&format!("{prefix}.attn.qkv.bias"))?;
        let d = w.shape[1];
        let mut wt = vec![0.0f32; d * d];
        for o in 0..d {
            for i in 0..d {
                wt[i * d + o] = w.data[(part * d + o) * d + i] * scale;
            }
        }
        let bias: Vec<f32> = b.data[part * d..(part + 1) * d]
            .iter()
            .map(|v| v * scale)
            .collect();
        let y = self.product(x, &format!("{prefix}.qkv{part}.weight"), d, d, &wt);
        let bn = self.weight(&format!("{prefix}.qkv{part}.bias"), &[d], &bias);
        Ok(self.node("Add", &[&y, &bn], vec![]))
    }

    fn layer_norm(&mut self, x: &str, prefix: &str) -> Result<String, OnnxError> {
        let g = self.raw(&format!("{prefix}.weight"))?;
        let b = self.raw(&format!("{prefix}.bias"))?;
        let gn = self.weight(
            &format!("{prefix}.weight"),
            &g.shape.clone(),
            &g.data.clone(),
        );
        let bn = self.weight(&format!("{prefix}.bias"), &b.shape.clone(), &b.data.clone());
        Ok(self.node(
            "LayerNormalization",
            &[x, &gn, &bn],
            vec![
                int_attr("axis", -1),
                float_attr("epsilon", LAYER_NORM_EPS as f32),
            ],
        ))
    }

    /// The official pre-norm block on a (tokens, dim) value, with norms `norm1{suffix}`/`norm2{suffix}`.
    fn block(
        &mut self,
        x: &str,
        prefix: &str,
        suffix: &str,
        heads: usize,
    ) -> Result<String, OnnxError> {
        let d = self.raw(&format!("{prefix}.attn.proj.weight"))?.shape[0];
        let hd = d / heads;
        let (h, hd_i) = (heads as i64, hd as i64);
        let n1 = self.layer_norm(x, &format!("{prefix}.norm1{suffix}"))?;
        let scale = (hd as f64).powf(-0.5) as f32;
        let q = self.qkv_part(&n1, prefix, 0, scale)?;
        let k = self.qkv_part(&n1, prefix, 1, 1.0)?;
        let v = self.qkv_part(&n1, prefix, 2, 1.0)?;
        let q = self.reshape(&q, &[-1, h, hd_i]);
        let q = self.transpose(&q, &[1, 0, 2]);
        let k = self.reshape(&k, &[-1, h, hd_i]);
        let k = self.transpose(&k, &[1, 2, 0]);
        let v = self.reshape(&v, &[-1, h, hd_i]);
        let v = self.transpose(&v, &[1, 0, 2]);
        let scores = self.node("MatMul", &[&q, &k], vec![]);
        let attn = self.node("Softmax", &[&scores], vec![int_attr("axis", -1)]);
        let ctx = self.node("MatMul", &[&attn, &v], vec![]);
        let ctx = self.transpose(&ctx, &[1, 0, 2]);
        let ctx = self.reshape(&ctx, &[-1, d as i64]);
        let proj = self.linear(&ctx, &format!("{prefix}.attn.proj"), 1.0)?;
        let x = self.node("Add", &[x, &proj], vec![]);
        let n2 = self.layer_norm(&x, &format!("{prefix}.norm2{suffix}"))?;
        let h1 = self.linear(&n2, &format!("{prefix}.mlp.fc1"), 1.0)?;
        let g = self.gelu(&h1);
        let h2 = self.linear(&g, &format!("{prefix}.mlp.fc2"), 1.0)?;
        Ok(self.node("Add", &[&x, &h2], vec![]))
    }

    /// Exact GELU, x * 0.5 * (1 + erf(x / sqrt 2)), from opset-13 ops (tract fuses the pattern).
    fn gelu(&mut self, x: &str) -> String {
        let sqrt2 = self.weight("sqrt2", &[], &[std::f32::consts::SQRT_2]);
        let one = self.weight("one", &[], &[1.0]);
        let half = self.weight("half", &[], &[0.5]);
        let scaled = self.node("Div", &[x, &sqrt2], vec![]);
        let erf = self.node("Erf", &[&scaled], vec![]);
        let plus = self.node("Add", &[&erf, &one], vec![]);
        let times = self.node("Mul", &[x, &plus], vec![]);
        self.node("Mul", &[&times, &half], vec![])
    }

    /// Cast a float32 value (a graph input, or a sum of f16 products) to the graph's precision.
    fn cast_in(&mut self, x: &str) -> String {
        match self.float {
            Float::F32 => x.to_string(),
            Float::F16 => self.node("Cast", &[x], vec![int_attr("to", DataType::Float16 as i64)]),
        }
    }

    fn output(&mut self, x: &str, name: &str) {
        let to = DataType::Float as i64;
        self.nodes.push(NodeProto {
            name: name.into(),
            op_type: "Cast".into(),
            input: vec![x.to_string()],
            output: vec![name.to_string()],
            attribute: vec![int_attr("to", to)],
        });
    }
}

/// Input shape of a modality's graph.
pub fn input_shape(config: &ModelConfig, modality: Modality) -> Vec<usize> {
    match modality {
        Modality::Audio => vec![1, config.audio_length, NUM_MEL_BINS],
        Modality::Visual => vec![1, 3, config.image_size, config.image_size],
    }
}

/// Patch-token count of a modality.
pub fn token_count(config: &ModelConfig, modality: Modality) -> usize {
    match modality {
        Modality::Audio => config.audio_patches(),
        Modality::Visual => config.visual_patches(),
    }
}

/// Checkpoint key and graph names that differ between the two encoders.
struct EncoderNames {
    /// Key suffix of the modality's tensors (`a` or `v`).
    tag: &'static str,
    /// Graph input name.
    input: &'static str,
    /// Suffix of the joint block's per-modality norms.
    norm_suffix: &'static str,
    /// Modality-specific block group.
    blocks: &'static str,
    /// Contrastive head block group (the official spelling).
    head: &'static str,
}

impl EncoderNames {
    fn of(modality: Modality) -> Self {
        match modality {
            Modality::Audio => Self {
                tag: "a",
                input: AUDIO_INPUT,
                norm_suffix: "_a",
                blocks: "blocks_a",
                head: "constrative_head_audio",
            },
            Modality::Visual => Self {
                tag: "v",
                input: VISUAL_INPUT,
                norm_suffix: "_v",
                blocks: "blocks_v",
                head: "constrative_head_visual",
            },
        }
    }
}

impl Graph<'_> {
    /// Patchify the (cast) input into (N, C*p*p) rows in the order of the official Conv2d weight.
    fn patchify(&mut self, x: &str, config: &ModelConfig, modality: Modality) -> String {
        let p = config.patch as i64;
        let n = token_count(config, modality) as i64;
        match modality {
            Modality::Audio => {
                // (1, L, 128) = (time, freq) -> (freq rows, time cols, freq offset, time offset).
                let (cols, rows) = (config.audio_cols() as i64, config.audio_rows() as i64);
                let x = self.reshape(x, &[cols, p, rows, p]);
                let x = self.transpose(&x, &[2, 0, 3, 1]);
                self.reshape(&x, &[n, p * p])
            }
            Modality::Visual => {
                let grid = config.visual_grid() as i64;
                let x = self.reshape(x, &[3, grid, p, grid, p]);
                let x = self.transpose(&x, &[1, 3, 0, 2, 4]);
                self.reshape(&x, &[n, 3 * p * p])
            }
        }
    }

    /// Patch tokens (N, D): patch embedding as one MatMul, plus the conv bias, positional and
    /// modality embeddings folded into one constant.
    fn patch_tokens(
        &mut self,
        x: &str,
        config: &ModelConfig,
        modality: Modality,
    ) -> Result<String, OnnxError> {
        let tag = EncoderNames::of(modality).tag;
        let (d, n) = (config.dim, token_count(config, modality));
        let patches = self.patchify(x, config, modality);
        let w = self.raw(&format!("patch_embed_{tag}.proj.weight"))?;
        let k = w.data.len() / d;
        let mut wt = vec![0.0f32; k * d];
        for o in 0..d {
            for i in 0..k {
                wt[i * d + o] = w.data[o * k + i];
            }
        }
        let x = self.product(&patches, "patch_embed.weight", k, d, &wt);
        let bias = &self.raw(&format!("patch_embed_{tag}.proj.bias"))?.data;
        let pos = &self.raw(&format!("pos_embed_{tag}"))?.data;
        let modality_emb = &self.raw(&format!("modality_{tag}"))?.data;
        let add: Vec<f32> = (0..n * d)
            .map(|i| bias[i % d] + pos[i] + modality_emb[i % d])
            .collect();
        let an = self.weight("patch_bias_pos_modality", &[n, d], &add);
        Ok(self.node("Add", &[&x, &an], vec![]))
    }

    /// Prepend the global token (Sync layout) and append the modality's register tokens.
    fn add_special_tokens(
        &mut self,
        x: String,
        config: &ModelConfig,
        modality: Modality,
    ) -> Result<String, OnnxError> {
        let d = config.dim;
        let mut x = x;
        if config.has_global_tokens() {
            let tag = EncoderNames::of(modality).tag;
            let cls = self.raw(&format!("cls_token_{tag}"))?.data.clone();
            let cn = self.weight("global_token", &[1, d], &cls);
            x = self.node("Concat", &[&cn, &x], vec![int_attr("axis", 0)]);
        }
        let r = config.registers;
        if r > 0 {
            let regs = &self.raw("register_tokens")?.data;
            let start = if modality == Modality::Audio { 0 } else { r };
            let slice = regs[start * d..(start + r) * d].to_vec();
            let rn = self.weight("registers", &[r, d], &slice);
            x = self.node("Concat", &[&x, &rn], vec![int_attr("axis", 0)]);
        }
        Ok(x)
    }

    /// Modality blocks, register removal, the last joint block, the contrastive head and the
    /// final norm, as the official `forward_feat`.
    fn encoder_stack(
        &mut self,
        x: String,
        config: &ModelConfig,
        modality: Modality,
    ) -> Result<String, OnnxError> {
        let names = EncoderNames::of(modality);
        let depth = match modality {
            Modality::Audio => config.depth_a,
            Modality::Visual => config.depth_v,
        };
        let mut x = x;
        for i in 0..depth {
            x = self.block(&x, &format!("{}.{i}", names.blocks), "", config.heads)?;
        }
        if config.registers > 0 {
            x = self.slice(&x, 0, 0, kept_tokens(config, modality) as i64);
        }
        // forward_feat applies every joint block to the same input and keeps the last result.
        let last_joint = format!("blocks_u.{}", config.depth_u - 1);
        x = self.block(&x, &last_joint, names.norm_suffix, config.heads)?;
        for i in 0..config.contrastive_depth {
            x = self.block(&x, &format!("{}.{i}", names.head), "", config.heads)?;
        }
        self.layer_norm(&x, &format!("norm_{}", names.tag))
    }

    /// The global embedding (1, D) and the patch tokens (1, N, D) of the final-norm tokens.
    fn split_outputs(
        &mut self,
        x: &str,
        config: &ModelConfig,
        modality: Modality,
    ) -> (String, String) {
        let (global, tokens) = if config.has_global_tokens() {
            let global = self.slice(x, 0, 0, 1);
            let tokens = self.slice(x, 0, 1, kept_tokens(config, modality) as i64);
            (global, tokens)
        } else {
            let axes = self.shape_const(&[0]);
            let global = self.node("ReduceMean", &[x, &axes], vec![int_attr("keepdims", 1)]);
            (global, x.to_string())
        };
        let n = token_count(config, modality) as i64;
        let tokens = self.reshape(&tokens, &[1, n, config.dim as i64]);
        (global, tokens)
    }

    /// The finished model: this graph's nodes and initializers with typed inputs and outputs.
    fn into_model(self, config: &ModelConfig, modality: Modality) -> ModelProto {
        let (d, n) = (config.dim, token_count(config, modality));
        let graph = GraphProto {
            name: format!("cavsync_{}_encoder", modality.as_str()),
            node: self.nodes,
            initializer: self.initializers,
            input: vec![value_info(
                EncoderNames::of(modality).input,
                &input_shape(config, modality),
            )],
            output: vec![
                value_info(GLOBAL_OUTPUT, &[1, d]),
                value_info(TOKENS_OUTPUT, &[1, n, d]),
            ],
        };
        ModelProto {
            ir_version: IR_VERSION,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
            producer_name: "cavsync-export".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            graph: Some(graph),
        }
    }
}

/// Tokens that stay after the registers are dropped: the patches and the global token, if any.
fn kept_tokens(config: &ModelConfig, modality: Modality) -> usize {
    token_count(config, modality) + usize::from(config.has_global_tokens())
}

/// Build the ONNX model of one encoder from a verified checkpoint.
///
/// Fails with [`OnnxError::Precision`] for int8, which `quantize` makes from an f32 bundle.
pub fn encoder_model(
    ck: &Checkpoint,
    config: &ModelConfig,
    modality: Modality,
    precision: Precision,
) -> Result<ModelProto, OnnxError> {
    let mut g = Graph::new(ck, float_type(precision)?);
    let x = g.cast_in(EncoderNames::of(modality).input);
    let x = g.patch_tokens(&x, config, modality)?;
    let x = g.add_special_tokens(x, config, modality)?;
    let x = g.encoder_stack(x, config, modality)?;
    let (global, tokens) = g.split_outputs(&x, config, modality);
    g.output(&global, GLOBAL_OUTPUT);
    g.output(&tokens, TOKENS_OUTPUT);
    Ok(g.into_model(config, modality))
}

/// Serialise a model to ONNX protobuf bytes.
pub fn to_bytes(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}
