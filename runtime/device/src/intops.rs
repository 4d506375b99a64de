//! Activation quantization and accumulator rescale of int8 graphs for CPU plans, one vectorised pass each.
//!
//! `cavsync-export quantize --scheme static` writes each weight product as `QuantizeLinear` (f32
//! to u8), `MatMulInteger` (i32 accumulators) and a rescale, `Cast` to f32 then `Mul` by the
//! per-channel scale (then the bias `Add` where the layer has one). tract 0.23.9 runs the integer
//! product with its int8 kernels, but the rest as generic element-wise passes: on the full-size
//! model (2 threads, AVX-512 VNNI Xeon, `cavsync bench --profile`) the quantizations took 10%
//! of each encoder, the rescale multiplications 13% and the casts 3%, against 49% for the
//! integer products themselves. [`replace_int8_epilogues`] puts this module's operators in
//! their place: [`RowQuantizeU8`] gives tract's `QuantizeLinearU8` result, and [`RowRescale`]
//! the cast, multiplication and addition's, bit for bit, in one pass over the values.

use multiversion::multiversion;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_hir::tract_core::ops::cast::Cast;
use tract_onnx::tract_hir::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_hir::tract_core::ops::quant::QuantizeLinearU8;

use crate::rowops::{rows_in_place, sole_successor, written};

/// f32 to u8 as ONNX `QuantizeLinear` in tract: `x · scale` rounded half to even, plus the zero
/// point, saturated (NaN counts as 0; tract's result for any `x · scale` within i32's range).
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct RowQuantizeU8 {
    /// The multiplier (1 / the ONNX scale), as tract holds it.
    pub scale: Arc<Tensor>,
    /// Added after rounding.
    pub zero_point: u8,
}

impl Op for RowQuantizeU8 {
    fn name(&self) -> StaticName {
        "RowQuantizeU8".into()
    }
    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "scale: {:?} zero_point: {}",
            self.scale.cast_to_scalar::<f32>()?,
            self.zero_point
        )])
    }
    op_as_typed_op!();
}

impl EvalOp for RowQuantizeU8 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let input = input.to_plain_array_view::<f32>()?;
        let src = input.as_standard_layout();
        let src = src
            .as_slice()
            .context("RowQuantizeU8 input is not contiguous")?;
        let scale = self.scale.cast_to_scalar::<f32>()?;
        let zero_point = i32::from(self.zero_point);
        let row = input.shape().last().copied().unwrap_or(1).max(1);
        // SAFETY: the chunks cover every value, each quantized into place.
        let out = unsafe {
            written::<u8>(input.shape(), |out| {
                crate::team::rows_mut(out, row, src.len(), |start, chunk| {
                    let from = start * row;
                    quantize_u8(&src[from..from + chunk.len()], chunk, scale, zero_point);
                    Ok(())
                })
            })?
        };
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for RowQuantizeU8 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].datum_type == DatumType::F32);
        Ok(tvec!(u8::fact(inputs[0].shape.clone())))
    }
    as_op!();
}

/// i32 accumulators to f32: each value cast, multiplied by its channel's scale, plus its
/// channel's bias where there is one (channels on the last axis).
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct RowRescale {
    /// One f32 per channel.
    pub scale: Arc<Tensor>,
    /// One f32 per channel, added after the multiplication.
    pub bias: Option<Arc<Tensor>>,
}

impl Op for RowRescale {
    fn name(&self) -> StaticName {
        "RowRescale".into()
    }
    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{} channels{}",
            self.scale.len(),
            if self.bias.is_some() { ", bias" } else { "" }
        )])
    }
    op_as_typed_op!();
}

impl EvalOp for RowRescale {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let scale = self.scale.try_as_plain_ram()?;
        let scale = scale.as_slice::<f32>()?;
        let bias = self
            .bias
            .as_ref()
            .map(|b| b.try_as_plain_ram())
            .transpose()?;
        let bias = bias.as_ref().map(|b| b.as_slice::<f32>()).transpose()?;
        let row = scale.len();
        ensure!(
            input.shape().last() == Some(&row),
            "RowRescale of {:?} with {row} channels",
            input.shape()
        );
        // In place: a fresh output of the full-size model's widest product (2.7 MB) costs more
        // in page faults than the pass itself (12 against 4 ms per encoder, profiled).
        let mut t = rows_in_place(input.into_tensor(), row, |chunk: &mut [i32]| {
            rescale_rows(chunk, scale, bias)
        })?;
        // SAFETY: the storage now holds f32 bit patterns, and i32 and f32 have the same size
        // and alignment, with every bit pattern a valid f32.
        unsafe { t.set_datum_type(DatumType::F32) };
        Ok(tvec!(t.into_tvalue()))
    }
}

impl TypedOp for RowRescale {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = inputs[0];
        ensure!(x.datum_type == DatumType::I32 && x.rank() > 0);
        ensure!(x.shape[x.rank() - 1] == self.scale.len().to_dim());
        Ok(tvec!(f32::fact(x.shape.clone())))
    }
    as_op!();
}

/// `x · scale` rounded half to even plus `zero_point`, saturated to u8, as tract's
/// `quantize_linear_f32_u8`.
#[multiversion(targets("x86_64+avx512f+avx512vl+fma", "x86_64+avx2+fma", "aarch64+neon"))]
pub fn quantize_u8(src: &[f32], dst: &mut [u8], scale: f32, zero_point: i32) {
    // Adding 1.5 · 2^23 to any |y| < 2^22 rounds it half to even into the sum's low mantissa
    // bits (`round_ties_even` and float-to-int casts are not vectorised); beyond ±1024 every zero
    // point saturates alike.
    const SHIFT: f32 = 12_582_912.0;
    const SHIFT_BITS: i32 = 0x4B40_0000;
    for (d, &x) in dst.iter_mut().zip(src) {
        let y = x * scale;
        let y = if y.is_nan() {
            0.0
        } else {
            y.clamp(-1024.0, 1024.0)
        };
        let rounded = (y + SHIFT).to_bits() as i32 - SHIFT_BITS;
        *d = (rounded + zero_point).clamp(0, 255) as u8;
    }
}

/// Each row of `acc` cast to f32, times `scale`, plus `bias` (rows as long as `scale`), left in
/// place as the f32 values' bits.
#[multiversion(targets("x86_64+avx512f+avx512vl+fma", "x86_64+avx2+fma", "aarch64+neon"))]
pub fn rescale_rows(acc: &mut [i32], scale: &[f32], bias: Option<&[f32]>) {
    let n = scale.len();
    for a in acc.chunks_exact_mut(n) {
        match bias {
            Some(bias) => {
                for ((a, &s), &b) in a.iter_mut().zip(scale).zip(bias) {
                    *a = (*a as f32 * s + b).to_bits() as i32;
                }
            }
            None => {
                for (a, &s) in a.iter_mut().zip(scale) {
                    *a = (*a as f32 * s).to_bits() as i32;
                }
            }
        }
    }
}

/// A constant per-channel operand of `node` (a binary op named `op`) whose other input is
/// `from`: its values as one f32 per channel of a `channels`-wide last axis.
fn channel_constant(
    model: &TypedModel,
    node: &TypedNode,
    op: &str,
    from: OutletId,
    channels: usize,
) -> TractResult<Option<Arc<Tensor>>> {
    let Some(bin) = node.op_as::<TypedBinOp>() else {
        return Ok(None);
    };
    if bin.0.name() != op || node.inputs.len() != 2 || bin.1.is_some() {
        return Ok(None);
    }
    let other = match (node.inputs[0] == from, node.inputs[1] == from) {
        (true, false) => node.inputs[1],
        (false, true) => node.inputs[0],
        _ => return Ok(None),
    };
    let fact = model.outlet_fact(other)?;
    let Some(konst) = fact.konst.as_ref() else {
        return Ok(None);
    };
    if konst.datum_type() != DatumType::F32 || konst.rank() > model.outlet_fact(from)?.rank() {
        return Ok(None);
    }
    let shape = konst.shape();
    let leading_ones = shape.iter().rev().skip(1).all(|&d| d == 1);
    let last = shape.last().copied().unwrap_or(1);
    if !leading_ones || (last != 1 && last != channels) {
        return Ok(None);
    }
    let values = konst.try_as_plain_ram()?;
    let values = values.as_slice::<f32>()?;
    let per_channel: Vec<f32> = (0..channels)
        .map(|c| values[if last == 1 { 0 } else { c }])
        .collect();
    Ok(Some(tensor1(&per_channel).into_arc_tensor()))
}

/// Replaces tract's `QuantizeLinearU8` on f32 values by [`RowQuantizeU8`], and each cast of i32
/// accumulators to f32 followed by a multiplication by a per-channel constant (and an addition
/// of one) by [`RowRescale`].
pub fn replace_int8_epilogues(model: &mut TypedModel) -> TractResult<()> {
    let mut patches = Vec::new();
    for id in model.eval_order()? {
        let node = model.node(id);
        let input = match node.inputs.first() {
            Some(&i) => model.outlet_fact(i)?,
            None => continue,
        };
        if let Some(q) = node
            .op_as::<ElementWiseOp>()
            .and_then(|op| op.0.downcast_ref::<QuantizeLinearU8>())
        {
            if input.datum_type == DatumType::F32 {
                let op = RowQuantizeU8 {
                    scale: tensor0(q.scale).into_arc_tensor(),
                    zero_point: q.zero_point,
                };
                patches.push(TypedModelPatch::replace_single_op(
                    model,
                    node,
                    &node.inputs,
                    op,
                )?);
            }
            continue;
        }
        let is_cast = node.op_as::<Cast>().is_some_and(|c| c.to == DatumType::F32);
        if !is_cast || input.datum_type != DatumType::I32 || input.rank() == 0 {
            continue;
        }
        let Some(channels) = input.shape[input.rank() - 1].to_usize().ok() else {
            continue;
        };
        let Some(mul) = sole_successor(model, id.into()) else {
            continue;
        };
        let Some(scale) = channel_constant(model, mul, "Mul", id.into(), channels)? else {
            continue;
        };
        let (bias, last) = match sole_successor(model, mul.id.into()) {
            Some(add) => match channel_constant(model, add, "Add", mul.id.into(), channels)? {
                Some(bias) => (Some(bias), add),
                None => (None, mul),
            },
            None => (None, mul),
        };
        let mut patch = TypedModelPatch::default();
        let tap = patch.tap_model(model, node.inputs[0])?;
        let out = patch.wire_node(&mul.name, RowRescale { scale, bias }, &[tap])?[0];
        patch.shunt_outside(model, last.id.into(), out)?;
        patches.push(patch);
    }
    for patch in patches {
        patch.apply(model)?;
    }
    model.compact()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_hir::tract_core::ops::math::{add, mul};

    /// Values with both signs, saturation, NaN, and ties at a scale of 0.5 (not infinities: tract
    /// adds the zero point to `i32::MAX` there, and wraps).
    fn values(len: usize) -> Vec<f32> {
        const SPECIAL: [f32; 10] = [
            f32::NAN,
            1e7,
            -1e7,
            1.0,
            -1.0,
            5.0,
            -7.0,
            2047.0,
            -2049.0,
            -0.0,
        ];
        (0..len)
            .map(|i| match SPECIAL.get(i % 29) {
                Some(&v) => v,
                None => ((i * 7919) % 4001) as f32 / 13.0 - 150.0,
            })
            .collect()
    }

    fn run(model: &TypedModel, input: Tensor) -> Tensor {
        let plan = model.clone().into_runnable().unwrap();
        plan.run(tvec!(input.into_tvalue())).unwrap()[0]
            .clone()
            .into_tensor()
    }

    #[test]
    fn quantize_matches_tract_bit_for_bit() {
        let input = Tensor::from_shape(&[7, 37], &values(7 * 37)).unwrap();
        for (scale, zero_point) in [(0.5, 131), (0.5, 0), (0.75, 255), (47.4, 128)] {
            let mut model = TypedModel::default();
            let x = model.add_source("x", f32::fact([7, 37])).unwrap();
            let q = QuantizeLinearU8 { scale, zero_point };
            let y = model
                .wire_node("q", ElementWiseOp(Box::new(q), None), &[x])
                .unwrap();
            model.select_output_outlets(&y).unwrap();
            let want = run(&model, input.clone());
            replace_int8_epilogues(&mut model).unwrap();
            assert!(model.nodes().iter().any(|n| n.op_is::<RowQuantizeU8>()));
            assert_eq!(
                run(&model, input.clone()),
                want,
                "scale {scale}, zero point {zero_point}"
            );
        }
    }

    #[test]
    fn rescale_matches_tract_bit_for_bit() {
        let acc: Vec<i32> = (0..5 * 48)
            .map(|i: i32| (i * 104_729) % 2_000_003 - 1_000_000)
            .collect();
        let acc = Tensor::from_shape(&[5, 48], &acc).unwrap();
        let scale: Vec<f32> = (0..48).map(|c| 1e-5 * (c as f32 + 0.37)).collect();
        let bias: Vec<f32> = (0..48).map(|c| c as f32 / 7.0 - 3.0).collect();
        let (per_channel, per_tensor): (&[usize], &[usize]) = (&[1, 48], &[1, 1]);
        for (with_bias, shape) in [
            (true, per_channel),
            (false, per_channel),
            (true, per_tensor),
        ] {
            let len = shape.iter().product::<usize>();
            let mut model = TypedModel::default();
            let x = model.add_source("x", i32::fact([5, 48])).unwrap();
            let f = model
                .wire_node("cast", Cast { to: DatumType::F32 }, &[x])
                .unwrap();
            let s = model
                .add_const("s", Tensor::from_shape(shape, &scale[..len]).unwrap())
                .unwrap();
            let mut y = model.wire_node("mul", mul(), &[s, f[0]]).unwrap();
            if with_bias {
                let b = model
                    .add_const("b", Tensor::from_shape(shape, &bias[..len]).unwrap())
                    .unwrap();
                y = model.wire_node("add", add(), &[y[0], b]).unwrap();
            }
            model.select_output_outlets(&y).unwrap();
            let want = run(&model, acc.clone());
            replace_int8_epilogues(&mut model).unwrap();
            let ops: Vec<_> = model.nodes().iter().map(|n| n.op.name()).collect();
            assert_eq!(ops, ["Source", "RowRescale"], "{shape:?}");
            assert_eq!(run(&model, acc.clone()), want, "{shape:?}");
        }
    }

    #[test]
    fn rescale_leaves_a_non_constant_scale() {
        let mut model = TypedModel::default();
        let x = model.add_source("x", i32::fact([2, 8])).unwrap();
        let s = model.add_source("s", f32::fact([1, 8])).unwrap();
        let f = model
            .wire_node("cast", Cast { to: DatumType::F32 }, &[x])
            .unwrap();
        let y = model.wire_node("mul", mul(), &[f[0], s]).unwrap();
        model.select_output_outlets(&y).unwrap();
        replace_int8_epilogues(&mut model).unwrap();
        assert!(!model.nodes().iter().any(|n| n.op_is::<RowRescale>()));
    }
}
