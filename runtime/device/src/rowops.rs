//! Softmax, layer normalisation, exact GELU and the patch split for CPU plans, one vectorised pass per row.
//!
//! tract 0.23.9 runs these as several passes per row: softmax through three generic reductions
//! that copy any row not a multiple of 64 values through a scratch buffer, layer norm as a sum,
//! a subtraction, an RMS norm and a broadcast multiply-add, GELU as a scale, an erf and a
//! multiply-add over 1024-value chunks. On the encoders' short rows (35 to 217 tokens, 64 to 768
//! channels) that took 4.7 ns per softmax value, 2.4 ns per normalised value and 0.7 ns per GELU
//! value (`cavsync bench --profile`); the patch split before the patch embedding (a rank-5
//! transpose) took 0.28 ms of the demo student's visual encoder. [`onnx`] is tract's ONNX parser
//! with `Softmax` (opset 13 and later, last axis), `LayerNormalization` (last axis, with bias)
//! and `Transpose` of rank 4 or more read as operators of this module instead; every other node,
//! and those in any other form, parse as tract's own.
//! [`replace_gelu`] swaps tract's fused exact GELU for this module's. Bundles stay plain ONNX.

use std::sync::OnceLock;

use multiversion::multiversion;
use tract_onnx::Onnx;
use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::ops::array::PermuteAxes;
use tract_onnx::tract_hir::ops::nn::Softmax as HirSoftmax;
use tract_onnx::tract_hir::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_hir::tract_core::ops::element_wise::ElementWiseOp;

/// Lanes the row kernels accumulate in: one AVX-512 register, or four NEON ones.
const LANES: usize = 16;

/// tract's ONNX parser with this module's softmax, layer norm and high-rank transpose.
pub fn onnx() -> Onnx {
    let mut onnx = tract_onnx::onnx();
    onnx.op_register.insert("Softmax", softmax_builder);
    onnx.op_register
        .insert("LayerNormalization", layer_norm_builder);
    onnx.op_register.insert("Transpose", transpose_builder);
    onnx
}

/// tract's own parser, for the node forms this module leaves to it.
fn stock() -> &'static Onnx {
    static STOCK: OnceLock<Onnx> = OnceLock::new();
    STOCK.get_or_init(tract_onnx::onnx)
}

type Built = TractResult<(Box<dyn InferenceOp>, Vec<String>)>;

fn stock_builder(ctx: &ParsingContext, node: &NodeProto) -> Built {
    let builder = stock()
        .op_register
        .0
        .get(&node.op_type)
        .with_context(|| format!("tract has no parser for {}", node.op_type))?;
    builder(ctx, node)
}

fn softmax_builder(ctx: &ParsingContext, node: &NodeProto) -> Built {
    let axis = node.get_attr_opt::<i64>("axis")?.unwrap_or(-1);
    if ctx.onnx_operator_set_version < 13 || axis != -1 {
        return stock_builder(ctx, node);
    }
    Ok((expand(LastAxisSoftmax), vec![]))
}

fn layer_norm_builder(ctx: &ParsingContext, node: &NodeProto) -> Built {
    let axis = node.get_attr_opt::<i64>("axis")?.unwrap_or(-1);
    let stash = node.get_attr_opt::<i64>("stash_type")?.unwrap_or(1);
    let extra_outputs = node.output.iter().skip(1).any(|o| !o.is_empty());
    if axis != -1 || stash != 1 || node.input.len() != 3 || extra_outputs {
        return stock_builder(ctx, node);
    }
    let eps = node.get_attr_opt::<f32>("epsilon")?.unwrap_or(1e-5);
    Ok((expand(LastAxisLayerNorm { eps: eps.to_bits() }), vec![]))
}

fn transpose_builder(ctx: &ParsingContext, node: &NodeProto) -> Built {
    match node.get_attr_opt_vec::<i64>("perm")? {
        Some(perm) if perm.len() >= MIN_COPIED_RANK => {
            let perm = perm
                .iter()
                .map(|&a| usize::try_from(a))
                .collect::<Result<TVec<usize>, _>>()
                .context("Transpose perm holds a negative axis")?;
            Ok((
                expand(CopiedTranspose(PermuteAxes { axes: Some(perm) })),
                vec![],
            ))
        }
        _ => stock_builder(ctx, node),
    }
}

/// Rank from which a transpose is copied by [`RowPermute`]: the encoders' patch splits (rank 4
/// and 5), which tract moves one axis at a time through generic strided loops (0.28 ms of the
/// demo student's 1.76 ms visual encoder); the rank-3 head splits of attention are left to tract,
/// which folds them into the products for free.
const MIN_COPIED_RANK: usize = 4;

/// ONNX `Transpose` of rank [`MIN_COPIED_RANK`] or more, as parsed.
#[derive(Debug, Clone, Hash)]
struct CopiedTranspose(PermuteAxes);

impl Expansion for CopiedTranspose {
    fn name(&self) -> StaticName {
        "CopiedTranspose".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        self.0.rules(s, inputs, outputs)
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let fact = model.outlet_fact(inputs[0])?;
        let perm = self.0.axes.clone().unwrap_or_default();
        let valid = {
            let mut sorted = perm.to_vec();
            sorted.sort_unstable();
            sorted.iter().copied().eq(0..fact.rank())
        };
        if fact.datum_type == DatumType::F32 && valid {
            model.wire_node(prefix, RowPermute { perm, shape: None }, inputs)
        } else {
            self.0.wire(prefix, model, inputs)
        }
    }
}

/// Axes of an f32 tensor permuted into a new contiguous tensor (output axis i is input axis `perm[i]`), optionally reshaped.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct RowPermute {
    /// Input axis of each output axis.
    pub perm: TVec<usize>,
    /// The output's shape, when the permuted values are read as another shape of the same size.
    pub shape: Option<TVec<usize>>,
}

impl Op for RowPermute {
    fn name(&self) -> StaticName {
        "RowPermute".into()
    }
    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![match &self.shape {
            Some(shape) => format!("perm: {:?}, as {shape:?}", self.perm),
            None => format!("perm: {:?}", self.perm),
        }])
    }
    op_as_typed_op!();
}

impl EvalOp for RowPermute {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let view = input.to_plain_array_view::<f32>()?;
        let shape: TVec<usize> = self.perm.iter().map(|&a| view.shape()[a]).collect();
        let strides: TVec<isize> = self.perm.iter().map(|&a| view.strides()[a]).collect();
        let src = view
            .as_slice_memory_order()
            .context("RowPermute needs a contiguous input")?;
        // SAFETY: `permute` writes every value of the permuted array.
        let out = unsafe {
            written(self.shape.as_ref().unwrap_or(&shape), |out| {
                permute(src, &shape, &strides, out);
                Ok(())
            })?
        };
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for RowPermute {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = inputs[0];
        ensure!(x.datum_type == DatumType::F32 && self.perm.len() == x.rank());
        let permuted: TVec<TDim> = self.perm.iter().map(|&a| x.shape[a].clone()).collect();
        let Some(shape) = &self.shape else {
            return Ok(tvec!(f32::fact(permuted)));
        };
        let volume: TDim = permuted.iter().product();
        ensure!(
            volume == shape.iter().product::<usize>().to_dim(),
            "RowPermute of {permuted:?} read as {shape:?}"
        );
        Ok(tvec!(f32::fact(
            shape.iter().map(|&d| d.to_dim()).collect::<TVec<_>>()
        )))
    }
    as_op!();
}

/// The single consumer of `outlet`, unless the outlet is also a model output.
pub(crate) fn sole_successor(model: &TypedModel, outlet: OutletId) -> Option<&TypedNode> {
    let successors = &model.node(outlet.node).outputs[outlet.slot].successors;
    if successors.len() != 1 || model.output_outlets().ok()?.contains(&outlet) {
        return None;
    }
    Some(model.node(successors[0].node))
}

/// Folds the reshapes after each [`RowPermute`] into it (its output is a new contiguous tensor,
/// so reading it in another shape is free). Left in the graph, tract's declutter moves them
/// through the next product and splits it along their axes: an int8 patch embedding ran as 14
/// products of 14 rows instead of one of 196, 27% of the demo student's visual encoder.
pub fn fold_reshapes_into_permutes(model: &mut TypedModel) -> TractResult<()> {
    for id in model.eval_order()? {
        let Some(permute) = model.node(id).op_as::<RowPermute>() else {
            continue;
        };
        let mut last = id;
        while let Some(next) = sole_successor(model, last.into()) {
            match next.op_as::<AxisOp>() {
                Some(AxisOp::Add(_) | AxisOp::Rm(_) | AxisOp::Reshape(..)) => last = next.id,
                _ => break,
            }
        }
        let shape = model.outlet_fact(last.into())?.shape.as_concrete();
        let (Some(shape), true) = (shape, last != id) else {
            continue;
        };
        let op = RowPermute {
            perm: permute.perm.clone(),
            shape: Some(shape.into()),
        };
        let node = model.node(id);
        let mut patch = TypedModelPatch::default();
        let tap = patch.tap_model(model, node.inputs[0])?;
        let out = patch.wire_node(&node.name, op, &[tap])?[0];
        patch.shunt_outside(model, last.into(), out)?;
        patch.apply(model)?;
    }
    model.compact()
}

/// A new tensor of `shape` whose every value `write` sets (no zeroing pass, no copy).
///
/// # Safety
/// `write` must set every value of the slice it is given (or fail).
pub(crate) unsafe fn written<T: Datum>(
    shape: &[usize],
    write: impl FnOnce(&mut [T]) -> TractResult<()>,
) -> TractResult<Tensor> {
    // SAFETY: the caller's `write` sets every value before the tensor is read.
    let mut out = unsafe { Tensor::uninitialized::<T>(shape)? };
    write(out.try_as_plain_ram_mut()?.as_slice_mut::<T>()?)?;
    Ok(out)
}

/// Writes into `out` the values of `src` in the order of an array of `shape` whose axes step
/// through `src` by `strides` (in values, non-negative), a last-axis run at a time.
fn permute(src: &[f32], shape: &[usize], strides: &[isize], out: &mut [f32]) {
    let total: usize = shape.iter().product();
    assert_eq!(
        out.len(),
        total,
        "permute's output holds the permuted array"
    );
    if total == 0 {
        return;
    }
    // Runs along the last axis, in groups along the one before it (a unit axis when rank < 2).
    let rank = shape.len();
    let (run, run_stride) = (
        shape.last().copied().unwrap_or(1),
        strides.last().map_or(1, |&s| s as usize),
    );
    let outer = rank.saturating_sub(2);
    let (group, group_stride) = match rank {
        0 | 1 => (1, 0),
        _ => (shape[outer], strides[outer] as usize),
    };
    let mut index: TVec<usize> = tvec![0; outer];
    let (mut base, mut at) = (0usize, 0usize);
    loop {
        let dst = &mut out[at..at + group * run];
        at += group * run;
        match (run_stride, run) {
            // The encoders' patch cut: a patch row of 16 pixels, copied as one block.
            (1, 16) => {
                for (g, dst) in dst.chunks_exact_mut(16).enumerate() {
                    let start = base + g * group_stride;
                    let from: &[f32; 16] = src[start..start + 16].try_into().expect("16 values");
                    dst.copy_from_slice(from);
                }
            }
            (1, _) => {
                for (g, dst) in dst.chunks_exact_mut(run).enumerate() {
                    let start = base + g * group_stride;
                    dst.copy_from_slice(&src[start..start + run]);
                }
            }
            _ => {
                for (g, dst) in dst.chunks_exact_mut(run).enumerate() {
                    let start = base + g * group_stride;
                    for (j, o) in dst.iter_mut().enumerate() {
                        *o = src[start + j * run_stride];
                    }
                }
            }
        }
        let mut axis = outer;
        loop {
            if axis == 0 {
                return;
            }
            axis -= 1;
            index[axis] += 1;
            base += strides[axis] as usize;
            if index[axis] < shape[axis] {
                break;
            }
            base -= shape[axis] * strides[axis] as usize;
            index[axis] = 0;
        }
    }
}

/// Whether a value's type is one the row operators run (f16 is computed in f32).
fn row_float(dt: DatumType) -> bool {
    matches!(dt, DatumType::F32 | DatumType::F16)
}

/// Inference rules of an operator with `arity` inputs of one type whose single output has the
/// first input's type and shape.
fn rules_like_first_input<'r, 'p: 'r>(
    s: &mut Solver<'r>,
    inputs: &'p [TensorProxy],
    outputs: &'p [TensorProxy],
    arity: usize,
) -> InferenceResult {
    check_input_arity(inputs, arity)?;
    check_output_arity(outputs, 1)?;
    for input in &inputs[1..] {
        s.equals(&input.datum_type, &inputs[0].datum_type)?;
    }
    s.equals(&outputs[0].datum_type, &inputs[0].datum_type)?;
    s.equals(&outputs[0].shape, &inputs[0].shape)?;
    Ok(())
}

/// ONNX `Softmax` over the last axis, as parsed.
#[derive(Debug, Clone, Hash)]
struct LastAxisSoftmax;

impl Expansion for LastAxisSoftmax {
    fn name(&self) -> StaticName {
        "LastAxisSoftmax".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        rules_like_first_input(s, inputs, outputs, 1)
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let fact = model.outlet_fact(inputs[0])?;
        if row_float(fact.datum_type) && fact.rank() > 0 {
            model.wire_node(prefix, RowMap::Softmax, inputs)
        } else {
            HirSoftmax::new(-1).wire(prefix, model, inputs)
        }
    }
}

/// ONNX `LayerNormalization` over the last axis with scale and bias, as parsed.
#[derive(Debug, Clone, Hash)]
struct LastAxisLayerNorm {
    /// Epsilon's bits (f32 is not `Hash`).
    eps: u32,
}

impl Expansion for LastAxisLayerNorm {
    fn name(&self) -> StaticName {
        "LastAxisLayerNorm".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        rules_like_first_input(s, inputs, outputs, 3)
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let dt = model.outlet_fact(inputs[0])?.datum_type;
        ensure!(
            row_float(dt),
            "{prefix}: LayerNormalization on {dt:?}; cavsync runs it on f32 or f16"
        );
        model.wire_node(
            prefix,
            RowLayerNorm {
                eps: tensor0(f32::from_bits(self.eps)).into_arc_tensor(),
            },
            inputs,
        )
    }
}

/// Runs `kernel` on the rows of `input` computed in f32, splitting the rows across the plan's threads.
fn on_rows(
    input: TValue,
    row: usize,
    kernel: impl Fn(&mut [f32]) + Sync + Send,
) -> TractResult<TVec<TValue>> {
    let dt = input.datum_type();
    let t = if dt == DatumType::F32 {
        input.into_tensor()
    } else {
        input.cast_to::<f32>()?.into_owned()
    };
    let t = rows_in_place(t, row, kernel)?;
    if dt == DatumType::F32 {
        Ok(tvec!(t.into_tvalue()))
    } else {
        Ok(tvec!(t.cast_to_dt(dt)?.into_owned().into_tvalue()))
    }
}

/// Runs `kernel` in place on the `row`-long rows of `t` (made contiguous first if it is not),
/// splitting the rows across the plan's threads.
pub(crate) fn rows_in_place<T: Datum>(
    mut t: Tensor,
    row: usize,
    kernel: impl Fn(&mut [T]) + Sync + Send,
) -> TractResult<Tensor> {
    if t.strides() != &*Tensor::natural_strides(t.shape()) {
        t = t
            .to_plain_array_view::<T>()?
            .as_standard_layout()
            .into_owned()
            .into_tensor();
    }
    if row > 0 {
        let mut plain = t.try_as_plain_ram_mut()?;
        let data = plain.as_slice_mut::<T>()?;
        let total = data.len();
        crate::team::rows_mut(data, row, total, |_, chunk| {
            kernel(chunk);
            Ok(())
        })?;
    }
    Ok(t)
}

/// A one-input row operator of an f32 or f16 tensor: softmax over the last axis, or exact GELU
/// of every value.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum RowMap {
    /// Softmax over the last axis.
    Softmax,
    /// Exact GELU, x·Φ(x).
    Gelu,
}

impl Op for RowMap {
    fn name(&self) -> StaticName {
        match self {
            RowMap::Softmax => "RowSoftmax",
            RowMap::Gelu => "RowGelu",
        }
        .into()
    }
    op_as_typed_op!();
}

impl EvalOp for RowMap {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        match self {
            RowMap::Softmax => {
                let row = input.shape().last().copied().unwrap_or(0);
                on_rows(input, row, |rows| softmax_rows(rows, row))
            }
            RowMap::Gelu => {
                let row = input.shape().last().copied().unwrap_or(1);
                on_rows(input, row, gelu_in_place)
            }
        }
    }
}

impl TypedOp for RowMap {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = inputs[0];
        ensure!(row_float(x.datum_type) && (*self == RowMap::Gelu || x.rank() > 0));
        Ok(tvec!(x.datum_type.fact(x.shape.clone())))
    }
    as_op!();
}

/// Layer normalisation over the last axis of an f32 or f16 tensor, with scale and bias inputs.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct RowLayerNorm {
    /// Added to the variance before the square root (an f32 scalar).
    pub eps: Arc<Tensor>,
}

impl Op for RowLayerNorm {
    fn name(&self) -> StaticName {
        "RowLayerNorm".into()
    }
    op_as_typed_op!();
}

impl EvalOp for RowLayerNorm {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (input, scale, bias) = args_3!(inputs);
        let row = input.shape().last().copied().unwrap_or(0);
        let (scale, bias) = (scale.cast_to::<f32>()?, bias.cast_to::<f32>()?);
        let (scale, bias) = (scale.try_as_plain_ram()?, bias.try_as_plain_ram()?);
        let (scale, bias) = (scale.as_slice::<f32>()?, bias.as_slice::<f32>()?);
        ensure!(scale.len() == row && bias.len() == row);
        let eps = self.eps.cast_to_scalar::<f32>()?;
        on_rows(input, row, |rows| layer_norm_rows(rows, scale, bias, eps))
    }
}

impl TypedOp for RowLayerNorm {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = inputs[0];
        ensure!(row_float(x.datum_type) && x.rank() > 0);
        let row = x.shape[x.rank() - 1].clone();
        for (what, p) in [("scale", inputs[1]), ("bias", inputs[2])] {
            ensure!(
                p.datum_type == x.datum_type && p.rank() == 1 && p.shape[0] == row,
                "LayerNormalization {what} is {p:?}, expected {:?} of shape [{row}]",
                x.datum_type
            );
        }
        Ok(tvec!(x.datum_type.fact(x.shape.clone())))
    }
    as_op!();
}

/// Replaces each exact GELU tract found in `model` (its `GeluExact`, fused from the graph's
/// erf pattern) on f32 or f16 values by [`RowMap::Gelu`].
pub fn replace_gelu(model: &mut TypedModel) -> TractResult<()> {
    for id in model.eval_order()? {
        let node = model.node(id);
        let is_gelu = node
            .op_as::<ElementWiseOp>()
            .is_some_and(|op| op.0.name() == "GeluExact" && op.1.is_none());
        if is_gelu && row_float(model.outlet_fact(node.inputs[0])?.datum_type) {
            let inputs = node.inputs.clone();
            TypedModelPatch::replace_single_op(model, node, &inputs, RowMap::Gelu)?.apply(model)?;
        }
    }
    Ok(())
}

/// erf(x) to about 2e-7 (Abramowitz and Stegun 7.1.26).
#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / 0.327_591_1f32.mul_add(a, 1.0);
    let mut p = 1.061_405_4f32;
    p = p.mul_add(t, -1.453_152);
    p = p.mul_add(t, 1.421_413_8);
    p = p.mul_add(t, -0.284_496_74);
    p = p.mul_add(t, 0.254_829_6);
    let y = 1.0 - p * t * exp_nonpositive(-a * a);
    y.copysign(x)
}

/// Exact GELU of every value of `data`, in place.
#[multiversion(targets("x86_64+avx512f+avx512vl+fma", "x86_64+avx2+fma", "aarch64+neon"))]
pub fn gelu_in_place(data: &mut [f32]) {
    for v in data.iter_mut() {
        *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// e^x for x <= 0 (rows minus their maximum), to about one part in 10^7; 0 below -87 is 1.6e-38.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    // Round x·log2(e) to an integer n by adding 1.5·2^23; its low bits then hold n.
    const SHIFT: f32 = 12_582_912.0;
    let x = x.max(-87.0);
    let t = x.mul_add(std::f32::consts::LOG2_E, SHIFT);
    let n = t - SHIFT;
    // r = x - n·ln 2 in two steps (Cody-Waite), then a degree-5 fit of e^r on |r| <= ln2 / 2.
    let r = n.mul_add(-0.693_145_75, x);
    let r = n.mul_add(-1.428_606_8e-6, r);
    let mut q = 8.297_654e-3f32;
    q = q.mul_add(r, 4.191_538e-2);
    q = q.mul_add(r, 1.666_757_5e-1);
    q = q.mul_add(r, 4.999_889_4e-1);
    q = q.mul_add(r, 9.999_997e-1);
    q = q.mul_add(r, 1.0);
    let exponent = (t.to_bits() as i32).wrapping_sub(0x4B40_0000) + 127;
    q * f32::from_bits((exponent << 23) as u32)
}

/// Softmax of each `row`-long row of `data`, in place.
#[multiversion(targets("x86_64+avx512f+avx512vl+fma", "x86_64+avx2+fma", "aarch64+neon"))]
pub fn softmax_rows(data: &mut [f32], row: usize) {
    for r in data.chunks_exact_mut(row) {
        let mut lane_max = [f32::NEG_INFINITY; LANES];
        let mut chunks = r.chunks_exact(LANES);
        for c in &mut chunks {
            for (m, &v) in lane_max.iter_mut().zip(c) {
                *m = if v > *m { v } else { *m };
            }
        }
        let max = chunks
            .remainder()
            .iter()
            .chain(&lane_max)
            .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
        let mut lane_sum = [0f32; LANES];
        let mut chunks = r.chunks_exact_mut(LANES);
        for c in &mut chunks {
            for (s, v) in lane_sum.iter_mut().zip(c) {
                *v = exp_nonpositive(*v - max);
                *s += *v;
            }
        }
        let mut sum: f32 = lane_sum.iter().sum();
        for v in chunks.into_remainder() {
            *v = exp_nonpositive(*v - max);
            sum += *v;
        }
        let inv = 1.0 / sum;
        for v in r.iter_mut() {
            *v *= inv;
        }
    }
}

/// Sum of `values` in [`LANES`] partial sums.
#[inline(always)]
fn lane_sum(values: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; LANES];
    let mut chunks = values.chunks_exact(LANES);
    for c in &mut chunks {
        for (s, &v) in lanes.iter_mut().zip(c) {
            *s += f(v);
        }
    }
    chunks.remainder().iter().map(|&v| f(v)).sum::<f32>() + lanes.iter().sum::<f32>()
}

/// Layer normalisation of each row of `data` (rows as long as `scale`), in place: mean and
/// variance in two passes, as torch computes them.
#[multiversion(targets("x86_64+avx512f+avx512vl+fma", "x86_64+avx2+fma", "aarch64+neon"))]
pub fn layer_norm_rows(data: &mut [f32], scale: &[f32], bias: &[f32], eps: f32) {
    let n = scale.len();
    for r in data.chunks_exact_mut(n) {
        let mean = lane_sum(r, |v| v) / n as f32;
        let var = lane_sum(r, |v| (v - mean) * (v - mean)) / n as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for ((v, &g), &b) in r.iter_mut().zip(scale).zip(bias) {
            *v = ((*v - mean) * inv).mul_add(g, b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i * 7919 + seed * 104_729) % 2001) as f32 - 1000.0) / 97.0)
            .collect()
    }

    #[test]
    fn softmax_matches_f64_on_rows_of_every_length() {
        for row in [1, 2, 15, 16, 17, 35, 199, 217, 256] {
            let input = pattern(3 * row, row);
            let mut out = input.clone();
            softmax_rows(&mut out, row);
            for (x, y) in input.chunks(row).zip(out.chunks(row)) {
                let max = x.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
                let sum: f64 = x.iter().map(|&v| (v as f64 - max).exp()).sum();
                for (&a, &b) in x.iter().zip(y) {
                    let want = (a as f64 - max).exp() / sum;
                    let err = (b as f64 - want).abs() / want;
                    assert!(err < 2e-6, "row {row}: {b} vs {want} (relative {err:e})");
                }
            }
        }
    }

    #[test]
    fn exp_is_close_to_libm_over_the_whole_range() {
        let mut x = -87.0f32;
        while x <= 0.0 {
            let want = (x as f64).exp();
            let err = (exp_nonpositive(x) as f64 - want).abs() / want;
            assert!(err < 1e-6, "exp({x}): relative error {err:e}");
            x += 0.013;
        }
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert!(exp_nonpositive(-1e4) < 2e-38);
    }

    #[test]
    fn permute_matches_ndarray() {
        // Runs of 2 (generic), of 16 contiguous values (the patch cut's blocks), and strided.
        for dims in [[3, 4, 2, 5, 2], [3, 2, 16, 3, 16]] {
            let total = dims.iter().product::<usize>();
            let a = tract_onnx::prelude::tract_ndarray::Array::from_shape_vec(
                dims,
                (0..total).map(|v| v as f32).collect(),
            )
            .unwrap();
            for perm in [[1, 3, 0, 2, 4], [2, 0, 3, 1, 4], [4, 3, 2, 1, 0]] {
                let want = a.view().permuted_axes(perm);
                let shape: Vec<usize> = want.shape().to_vec();
                let strides: Vec<isize> = want.strides().to_vec();
                let mut out = vec![f32::NAN; shape.iter().product()];
                permute(a.as_slice().unwrap(), &shape, &strides, &mut out);
                assert_eq!(
                    out,
                    want.iter().copied().collect::<Vec<_>>(),
                    "dims {dims:?}, perm {perm:?}"
                );
            }
        }
    }

    #[test]
    fn reshapes_after_a_permute_fold_into_it() {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([2, 3, 4])).unwrap();
        let permute = RowPermute {
            perm: tvec![1, 0, 2],
            shape: None,
        };
        let y = model.wire_node("permute", permute, &[x]).unwrap();
        let merge = AxisOp::Reshape(0, tvec![3.to_dim(), 2.to_dim()], tvec![6.to_dim()]);
        let y = model.wire_node("merge", merge, &y).unwrap();
        let y = model.wire_node("add", AxisOp::Add(0), &y).unwrap();
        model.select_output_outlets(&y).unwrap();
        let input = Tensor::from_shape(&[2, 3, 4], &pattern(24, 3)).unwrap();
        let run = |m: &TypedModel| {
            let plan = m.clone().into_runnable().unwrap();
            plan.run(tvec!(input.clone().into_tvalue())).unwrap()[0]
                .clone()
                .into_tensor()
        };
        let want = run(&model);
        fold_reshapes_into_permutes(&mut model).unwrap();
        let ops: Vec<_> = model.nodes().iter().map(|n| n.op.name()).collect();
        assert_eq!(ops, ["Source", "RowPermute"]);
        assert_eq!(want.shape(), [1, 6, 4]);
        assert_eq!(run(&model), want);
    }

    #[test]
    fn gelu_matches_f64() {
        let mut x = -12.0f32;
        let mut values = Vec::new();
        while x <= 12.0 {
            values.push(x);
            x += 0.0037;
        }
        let mut out = values.clone();
        gelu_in_place(&mut out);
        for (&x, &y) in values.iter().zip(&out) {
            let want = 0.5 * x as f64 * (1.0 + libm::erf(x as f64 / std::f64::consts::SQRT_2));
            let err = (y as f64 - want).abs();
            assert!(err < 2e-6 * (1.0 + want.abs()), "gelu({x}): {y} vs {want}");
        }
    }

    #[test]
    fn layer_norm_matches_f64() {
        for n in [1, 7, 16, 64, 128, 768] {
            let input = pattern(5 * n, n);
            let scale = pattern(n, 1);
            let bias = pattern(n, 2);
            let mut out = input.clone();
            layer_norm_rows(&mut out, &scale, &bias, 1e-6);
            for (x, y) in input.chunks(n).zip(out.chunks(n)) {
                let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
                let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
                for (i, (&a, &b)) in x.iter().zip(y).enumerate() {
                    let want =
                        (a as f64 - mean) / (var + 1e-6).sqrt() * scale[i] as f64 + bias[i] as f64;
                    assert!((b as f64 - want).abs() < 1e-5, "n {n}: {b} vs {want}");
                }
            }
        }
    }
}
