//! f32 matrix products of x86-64 CPU plans, run by the `gemm` crate instead of tract's kernels.
//!
//! tract 0.23.9 runs the encoders' f32 products at 180-196 GFLOP/s on a 2-core AVX-512 Xeon
//! (the weight products, 205-217 rows by 768 to 3072 columns) and attention's batched products
//! (217 x 64 x 217 per head) at 65-87 GFLOP/s; `gemm` 0.19 reaches 246-277 and 104-174 GFLOP/s on
//! the same shapes and threads (`cavsync bench --profile` prints each product's rate). A product
//! reads its operands through strides, so transposed operands cost nothing. On aarch64 the plans
//! keep tract's kernels, which were written for the Cortex cores the boards use.
//!
//! [`replace_float_products`] puts [`FloatProduct`] in place of each f32 `EinSum` that is a
//! batched product of two operands: every summed axis in both (or of one element), every other
//! axis in the output.

use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::tract_core::ops::einsum::EinSum;

/// Where one axis of a product sits in the first operand, the second and the output.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
struct AxisPlace {
    a: Option<usize>,
    b: Option<usize>,
    c: Option<usize>,
}

/// An f32 product C = A·B, batched over the output's other axes, summed over those only A and B
/// hold (and over one-element axes of one operand alone).
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct FloatProduct {
    /// Every axis of the product; `m`, `k` and `n` index into it, `summed` lists the other
    /// summed axes, the rest are batch axes.
    axes: Vec<AxisPlace>,
    /// The output's rows (in A and C).
    m: usize,
    /// The longest summed axis (in A and B).
    k: usize,
    /// The other summed axes, accumulated one product after another.
    summed: Vec<usize>,
    /// The output's columns (in B and C).
    n: usize,
    /// A row added to every row of C (one value per column), from an `Add` that followed the product.
    bias: Option<Arc<Tensor>>,
}

/// One axis's extent and element strides in A, B and C (0 where it is absent or broadcast).
#[derive(Debug, Clone, Copy)]
struct Walk {
    len: usize,
    a: isize,
    b: isize,
    c: isize,
}

/// Operand and output addresses, shareable between the threads of one product.
#[derive(Clone, Copy)]
struct Operands {
    a: *const f32,
    b: *const f32,
    c: *mut f32,
}

// SAFETY: the pointers address the operands of one `eval`, which outlive every thread that uses
// them (a team's run returns when every part is done); parts write disjoint parts of C.
unsafe impl Send for Operands {}
// SAFETY: as for `Send`; threads only read A and B.
unsafe impl Sync for Operands {}

impl FloatProduct {
    /// The product `einsum` computes on operands of these shapes, when it is one (f32, two
    /// operands, summed axes that both hold, every other axis in the output, a row and a column
    /// axis; the longest such axes become the rows, columns and the product's own sum).
    fn of(einsum: &EinSum, a_shape: &[usize], b_shape: &[usize]) -> Option<FloatProduct> {
        let mapping = &einsum.axes;
        if einsum.q_params.is_some()
            || einsum.operating_dt != DatumType::F32
            || mapping.input_count() != 2
            || mapping.output_count() != 1
        {
            return None;
        }
        let single = |positions: &TVec<usize>| match positions.as_slice() {
            [] => Some(None),
            [p] => Some(Some(*p)),
            _ => None,
        };
        let mut axes = Vec::new();
        for axis in mapping.iter_all_axes() {
            axes.push(AxisPlace {
                a: single(&axis.inputs[0])?,
                b: single(&axis.inputs[1])?,
                c: single(&axis.outputs[0])?,
            });
        }
        let placed = |f: fn(&AxisPlace) -> bool| -> Vec<usize> {
            (0..axes.len()).filter(|&i| f(&axes[i])).collect()
        };
        let summed = placed(|p| p.c.is_none());
        let rows = placed(|p| p.a.is_some() && p.b.is_none() && p.c.is_some());
        let cols = placed(|p| p.a.is_none() && p.b.is_some() && p.c.is_some());
        let longest = |ids: Vec<usize>, extent: &dyn Fn(&AxisPlace) -> Option<usize>| {
            ids.into_iter().max_by_key(|&i| extent(&axes[i]))
        };
        let a_extent = |p: &AxisPlace| p.a.and_then(|i| a_shape.get(i).copied());
        let b_extent = |p: &AxisPlace| p.b.and_then(|i| b_shape.get(i).copied());
        let shared = |p: &AxisPlace| p.a.is_some() && p.b.is_some();
        // A sum over one operand alone is a product only where that axis has one element.
        if summed
            .iter()
            .any(|&i| !shared(&axes[i]) && a_extent(&axes[i]).or(b_extent(&axes[i])) != Some(1))
        {
            return None;
        }
        let m = longest(rows, &|p| a_extent(p));
        let n = longest(cols, &|p| b_extent(p));
        let both: Vec<usize> = summed
            .iter()
            .copied()
            .filter(|&i| shared(&axes[i]))
            .collect();
        let k = longest(both, &|p| a_extent(p));
        let (Some(m), Some(k), Some(n)) = (m, k, n) else {
            return None;
        };
        let summed = summed.into_iter().filter(|&i| i != k).collect();
        let ranks_match = axes.iter().filter(|p| p.a.is_some()).count() == a_shape.len()
            && axes.iter().filter(|p| p.b.is_some()).count() == b_shape.len();
        ranks_match.then_some(FloatProduct {
            axes,
            m,
            k,
            summed,
            n,
            bias: None,
        })
    }

    /// Each axis's extent and strides for operands of these shapes and element strides, with
    /// the output's shape.
    fn walks(
        &self,
        (a, sa): (&[usize], &[isize]),
        (b, sb): (&[usize], &[isize]),
    ) -> TractResult<(Vec<Walk>, TVec<usize>)> {
        let rank = |f: fn(&AxisPlace) -> bool| self.axes.iter().filter(|p| f(p)).count();
        let (a_rank, b_rank) = (rank(|p| p.a.is_some()), rank(|p| p.b.is_some()));
        ensure!(
            a.len() == a_rank && b.len() == b_rank,
            "FloatProduct of operands of shapes {a:?} and {b:?}, planned for ranks {a_rank} and {b_rank}"
        );
        let mut c_shape: TVec<usize> = tvec![0; rank(|p| p.c.is_some())];
        let mut walks = Vec::with_capacity(self.axes.len());
        for place in &self.axes {
            let la = place.a.map(|p| a[p]);
            let lb = place.b.map(|p| b[p]);
            let len = match (la, lb) {
                (Some(x), Some(y)) if x == y || y == 1 => x,
                (Some(1), Some(y)) => y,
                (Some(x), None) | (None, Some(x)) => x,
                (None, None) => 1,
                _ => bail!("product operands of shapes {a:?} and {b:?} do not match"),
            };
            let stride = |l: Option<usize>, s: &[isize], p: Option<usize>| match (l, p) {
                (Some(l), Some(p)) if l == len => s[p],
                _ => 0,
            };
            if let Some(p) = place.c {
                c_shape[p] = len;
            }
            walks.push(Walk {
                len,
                a: stride(la, sa, place.a),
                b: stride(lb, sb, place.b),
                c: 0,
            });
        }
        let sc = Tensor::natural_strides(&c_shape);
        for (walk, place) in walks.iter_mut().zip(&self.axes) {
            if let Some(p) = place.c {
                walk.c = sc[p];
            }
        }
        Ok((walks, c_shape))
    }
}

impl FloatProduct {
    /// `(k, n)` where this product multiplies the `k`-long last axis of A by a `k` x `n` matrix
    /// B (leading axes of one element) into C's last axis, A's other axes kept in place, with
    /// the bias it adds, if any.
    pub(crate) fn as_row_product(
        &self,
        a_rank: usize,
        b_shape: &[usize],
    ) -> Option<(usize, usize, Option<Arc<Tensor>>)> {
        let br = b_shape.len();
        if !self.summed.is_empty() || a_rank == 0 || br < 2 {
            return None;
        }
        let (k, n) = (&self.axes[self.k], &self.axes[self.n]);
        let k_fits = k.a == Some(a_rank - 1) && k.b == Some(br - 2) && k.c.is_none();
        let n_fits = n.a.is_none() && n.b == Some(br - 1) && n.c == Some(a_rank - 1);
        let others_fit = self.axes.iter().enumerate().all(|(i, place)| {
            i == self.k
                || i == self.n
                || match (place.a, place.b, place.c) {
                    (Some(a), b, Some(c)) => {
                        a == c && a < a_rank - 1 && b.is_none_or(|b| b_shape[b] == 1)
                    }
                    (None, Some(b), None) => b_shape[b] == 1,
                    _ => false,
                }
        });
        (k_fits && n_fits && others_fit && b_shape[..br - 2].iter().all(|&d| d == 1))
            .then(|| (b_shape[br - 2], b_shape[br - 1], self.bias.clone()))
    }
}

impl FloatProduct {
    /// The `order` of A's axes (the axes C keeps, in C's order, then the summed ones, in B's
    /// order) in which this product reads A as rows of `k` values and multiplies them by the
    /// `k` x `n` matrix B is (its summed axes, then C's last), with the bias it adds, if any.
    pub(crate) fn as_gathered_row_product(
        &self,
        a_rank: usize,
        b_rank: usize,
        c_rank: usize,
    ) -> Option<(Vec<usize>, Option<Arc<Tensor>>)> {
        let n = &self.axes[self.n];
        if n.a.is_some() || n.b != Some(b_rank - 1) || n.c != Some(c_rank - 1) {
            return None;
        }
        let mut kept = vec![None; c_rank - 1];
        let mut summed = vec![None; b_rank - 1];
        for (i, place) in self.axes.iter().enumerate() {
            match (place.a, place.b, place.c) {
                (Some(a), None, Some(c)) if i != self.n => *kept.get_mut(c)? = Some(a),
                (Some(a), Some(b), None) => *summed.get_mut(b)? = Some(a),
                _ if i == self.n => {}
                _ => return None,
            }
        }
        let order: Option<Vec<usize>> = kept.into_iter().chain(summed).collect();
        order
            .filter(|o| o.len() == a_rank)
            .map(|o| (o, self.bias.clone()))
    }
}

impl Operands {
    /// The addresses from row `first` on, the rows walking `m`.
    fn rows(self, m: Walk, first: usize) -> Operands {
        let first = first as isize;
        Operands {
            a: self.a.wrapping_offset(first * m.a),
            b: self.b.wrapping_offset(first * m.b),
            c: self.c.wrapping_offset(first * m.c),
        }
    }

    /// The addresses of batch `index`, counting over the batch axes `batch` row-major.
    fn batch(self, batch: &[Walk], mut index: usize) -> Operands {
        let (mut a, mut b, mut c) = (0, 0, 0);
        for w in batch.iter().rev() {
            let i = (index % w.len) as isize;
            index /= w.len;
            a += i * w.a;
            b += i * w.b;
            c += i * w.c;
        }
        // SAFETY: offsets of an in-range batch index stay inside each operand (the walks come
        // from the operands' own shapes; broadcast axes have stride 0).
        unsafe {
            Operands {
                a: self.a.offset(a),
                b: self.b.offset(b),
                c: self.c.offset(c),
            }
        }
    }
}

/// The rows, columns and sums of one batch's product.
#[derive(Debug, Clone, Copy)]
struct Shape<'a> {
    m: Walk,
    k: Walk,
    n: Walk,
    /// Summed axes besides `k`, each adding one more product into C.
    summed: &'a [Walk],
    /// Whether C holds values (the bias) the first product adds to.
    onto: bool,
}

/// C = A·B for one batch, the operands addressed by `at` (C += A·B when `shape.onto` says C
/// already holds the bias).
///
/// # Safety
/// Every address the walks reach from `at` must lie inside its operand, and C's must be
/// written by nobody else during the call.
unsafe fn product(at: Operands, shape: Shape) {
    let Shape {
        m,
        k,
        n,
        summed,
        onto,
    } = shape;
    let products: usize = summed.iter().map(|w| w.len).product();
    for i in 0..products {
        let at = at.batch(summed, i);
        // SAFETY: the caller's contract; gemm reads A and B and writes C, adding to it (alpha
        // 1) after the first product or onto the bias (C is not read when `read_dst` is false).
        unsafe {
            gemm::gemm(
                m.len,
                n.len,
                k.len,
                at.c,
                n.c,
                m.c,
                onto || i > 0,
                at.a,
                k.a,
                m.a,
                at.b,
                n.b,
                k.b,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }
}

impl Op for FloatProduct {
    fn name(&self) -> StaticName {
        "FloatProduct".into()
    }
    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "gemm crate, {} batch axes, {} summed{}",
            self.axes.len() - 3 - self.summed.len(),
            self.summed.len() + 1,
            if self.bias.is_some() { ", bias" } else { "" }
        )])
    }
    op_as_typed_op!();
}

impl EvalOp for FloatProduct {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (a, b) = args_2!(inputs);
        let (a_ram, b_ram) = (a.try_as_plain_ram()?, b.try_as_plain_ram()?);
        let (av, bv) = (a_ram.as_slice::<f32>()?, b_ram.as_slice::<f32>()?);
        let (walks, c_shape) = self.walks((a.shape(), a.strides()), (b.shape(), b.strides()))?;
        if walks.iter().any(|w| w.len == 0) {
            // An empty output, or a sum over nothing: zeros, and no product to run.
            return Ok(tvec!(Tensor::zero::<f32>(&c_shape)?.into_tvalue()));
        }
        // SAFETY: every element of C is written by the bias below or by exactly one batch's
        // first product.
        let mut c = unsafe { Tensor::uninitialized::<f32>(&c_shape)? };
        let mut c_ram = c.try_as_plain_ram_mut()?;
        let cv = c_ram.as_slice_mut::<f32>()?;
        if let Some(bias) = &self.bias {
            fill_columns(
                cv,
                walks[self.n],
                bias.try_as_plain_ram()?.as_slice::<f32>()?,
            )?;
        }
        let summed: Vec<Walk> = self.summed.iter().map(|&i| walks[i]).collect();
        let shape = Shape {
            m: walks[self.m],
            k: walks[self.k],
            n: walks[self.n],
            summed: &summed,
            onto: self.bias.is_some(),
        };
        let batch: Vec<Walk> = (0..walks.len())
            .filter(|&i| ![self.m, self.k, self.n].contains(&i) && !self.summed.contains(&i))
            .map(|i| walks[i])
            .collect();
        let batches: usize = batch.iter().map(|w| w.len).product();
        let base = Operands {
            a: av.as_ptr(),
            b: bv.as_ptr(),
            c: cv.as_mut_ptr(),
        };
        let at = |index: usize| base.batch(&batch, index);
        let parts = crate::team::parts(walks.iter().map(|w| w.len).product(), crate::team::MIN_FMA);
        if batches >= parts {
            let per_part = batches.div_ceil(parts);
            crate::team::run(batches.div_ceil(per_part), |p| {
                for i in p * per_part..(p * per_part + per_part).min(batches) {
                    // SAFETY: batch `i` writes its own part of C.
                    unsafe { product(at(i), shape) }
                }
            });
        } else {
            // Fewer batches than parts: each batch's rows split between the parts.
            let rows = shape.m.len;
            let per_part = rows.div_ceil(parts);
            for i in 0..batches {
                crate::team::run(rows.div_ceil(per_part), |p| {
                    let first = p * per_part;
                    let part = Shape {
                        m: Walk {
                            len: (rows - first).min(per_part),
                            ..shape.m
                        },
                        ..shape
                    };
                    // SAFETY: part `p` writes its own rows of batch `i`'s C.
                    unsafe { product(at(i).rows(shape.m, first), part) }
                });
            }
        }
        Ok(tvec!(c.into_tvalue()))
    }
}

impl TypedOp for FloatProduct {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let (a, b) = (inputs[0], inputs[1]);
        ensure!(
            a.datum_type == DatumType::F32 && b.datum_type == DatumType::F32,
            "FloatProduct of {:?} and {:?} operands; expected f32",
            a.datum_type,
            b.datum_type
        );
        let (a_shape, b_shape) = (a.shape.as_concrete(), b.shape.as_concrete());
        let (Some(a_shape), Some(b_shape)) = (a_shape, b_shape) else {
            bail!("FloatProduct needs concrete shapes, got {a:?} and {b:?}");
        };
        let (sa, sb) = (
            Tensor::natural_strides(a_shape),
            Tensor::natural_strides(b_shape),
        );
        let (_, c_shape) = self.walks((a_shape, &sa), (b_shape, &sb))?;
        Ok(tvec!(f32::fact(c_shape)))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let (a, b) = (inputs[0].shape.as_concrete(), inputs[1].shape.as_concrete());
        let (Some(a), Some(b)) = (a, b) else {
            return Ok(tvec!());
        };
        let (sa, sb) = (Tensor::natural_strides(a), Tensor::natural_strides(b));
        let (walks, _) = self.walks((a, &sa), (b, &sb))?;
        let fma: usize = walks.iter().map(|w| w.len).product();
        Ok(tvec!((Cost::FMA(DatumType::F32), fma.to_dim())))
    }
    as_op!();
}

/// Writes `bias[j]` into every element of C in column `j` of the axis `n` walks.
fn fill_columns(c: &mut [f32], n: Walk, bias: &[f32]) -> TractResult<()> {
    ensure!(
        bias.len() == n.len,
        "FloatProduct bias of {} values for {} columns",
        bias.len(),
        n.len
    );
    if n.c == 1 {
        for row in c.chunks_exact_mut(n.len) {
            row.copy_from_slice(bias);
        }
    } else {
        let stride = n.c as usize;
        for (i, v) in c.iter_mut().enumerate() {
            *v = bias[(i / stride) % n.len];
        }
    }
    Ok(())
}

/// The bias a product's output `fact` takes from a constant `term` added to it: the constant's
/// values when it varies along the product's column axis alone (at output axis `column`).
fn bias_of(term: &TypedFact, fact: &TypedFact, column: usize) -> Option<Arc<Tensor>> {
    let konst = term.konst.as_ref()?;
    let out = fact.shape.as_concrete()?;
    if konst.datum_type() != DatumType::F32 || konst.rank() != out.len() {
        return None;
    }
    let along_column = konst.shape().iter().enumerate().all(|(axis, &len)| {
        if axis == column {
            len == out[axis]
        } else {
            len == 1
        }
    });
    if !along_column {
        return None;
    }
    let values = konst.clone().into_tensor();
    values.into_shape(&[out[column]]).ok().map(Arc::new)
}

/// Folds each `Add` of a constant row into the [`FloatProduct`] before it (its only consumer),
/// which then starts from the bias instead of running a broadcast addition over its output
/// afterwards (tract's costs 2 ns per value, as long as the product itself on the demo model).
pub fn fuse_bias_additions(model: &mut TypedModel) -> TractResult<()> {
    use tract_onnx::tract_hir::tract_core::ops::binary::TypedBinOp;
    use tract_onnx::tract_hir::tract_core::ops::math::Add;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(product) = node.op_as::<FloatProduct>() else {
            continue;
        };
        if product.bias.is_some() || node.outputs[0].successors.len() != 1 {
            continue;
        }
        let next = model.node(node.outputs[0].successors[0].node);
        let is_add = next
            .op_as::<TypedBinOp>()
            .is_some_and(|bin| bin.0.is::<Add>());
        if !is_add || next.inputs.len() != 2 {
            continue;
        }
        let slot = node.outputs[0].successors[0].slot;
        let term = model.outlet_fact(next.inputs[1 - slot])?;
        let fact = model.outlet_fact(next.inputs[slot])?;
        let Some(column) = product.axes[product.n].c else {
            continue;
        };
        if model.outlet_fact(OutletId::new(next.id, 0))?.shape != fact.shape {
            continue;
        }
        let Some(bias) = bias_of(term, fact, column) else {
            continue;
        };
        let fused = FloatProduct {
            bias: Some(bias),
            ..product.clone()
        };
        let mut patch = TypedModelPatch::default();
        let inputs = node
            .inputs
            .iter()
            .map(|&i| patch.tap_model(model, i))
            .collect::<TractResult<TVec<_>>>()?;
        let out = patch.wire_node(&node.name, fused, &inputs)?;
        patch.shunt_outside(model, OutletId::new(next.id, 0), out[0])?;
        patch.apply(model)?;
    }
    Ok(())
}

/// Replaces each f32 `EinSum` of `model` that [`FloatProduct`] computes (concrete shapes, f32
/// operands) by one.
pub fn replace_float_products(model: &mut TypedModel) -> TractResult<()> {
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(einsum) = node.op_as::<EinSum>() else {
            continue;
        };
        if node.inputs.len() != 2 {
            continue;
        }
        let (a, b) = (
            model.outlet_fact(node.inputs[0])?,
            model.outlet_fact(node.inputs[1])?,
        );
        let (Some(a_shape), Some(b_shape)) = (a.shape.as_concrete(), b.shape.as_concrete()) else {
            continue;
        };
        let plain = a.is_plain() && b.is_plain();
        if !plain || a.datum_type != DatumType::F32 || b.datum_type != DatumType::F32 {
            continue;
        }
        if let Some(op) = FloatProduct::of(einsum, a_shape, b_shape) {
            let inputs = node.inputs.clone();
            TypedModelPatch::replace_single_op(model, node, &inputs, op)?.apply(model)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{values, worst_relative};
    use tract_onnx::tract_hir::tract_core::axes::AxesMapping;

    /// Runs `expr` on the two operands through tract's own EinSum and through FloatProduct,
    /// in an optimised plan on `threads` threads.
    fn both(expr: &str, a: Tensor, b: Tensor, threads: usize) -> (Tensor, Tensor) {
        let mut model = TypedModel::default();
        let sa = model.add_const("a", a).unwrap();
        let sb = model.add_source("b", f32::fact(b.shape())).unwrap();
        let axes: AxesMapping = expr.parse().unwrap();
        let out = model
            .wire_node("p", EinSum::new(axes, DatumType::F32), &[sa, sb])
            .unwrap();
        model.select_output_outlets(&out).unwrap();
        let reference = model
            .clone()
            .into_runnable()
            .unwrap()
            .run(tvec!(b.clone().into_tvalue()))
            .unwrap()
            .remove(0)
            .into_tensor();
        replace_float_products(&mut model).unwrap();
        let model = model.into_optimized().unwrap();
        assert!(
            model.nodes().iter().any(|n| n.op_is::<FloatProduct>()),
            "{expr} was not replaced"
        );
        let options = crate::bundle::PlanOptions { threads }
            .run_options()
            .unwrap();
        let ours = model
            .into_runnable_with_options(&options)
            .unwrap()
            .run(tvec!(b.into_tvalue()))
            .unwrap()
            .remove(0)
            .into_tensor();
        (reference, ours)
    }

    fn assert_close_on(expr: &str, a_shape: &[usize], b_shape: &[usize], threads: usize) {
        let a = Tensor::from_shape(a_shape, &values(a_shape.iter().product(), 1)).unwrap();
        let b = Tensor::from_shape(b_shape, &values(b_shape.iter().product(), 2)).unwrap();
        let (reference, ours) = both(expr, a, b, threads);
        let worst = worst_relative(&reference, &ours, expr);
        assert!(worst < 1e-5, "{expr}: worst relative difference {worst}");
    }

    fn assert_close(expr: &str, a_shape: &[usize], b_shape: &[usize]) {
        assert_close_on(expr, a_shape, b_shape, 1);
    }

    /// `expr` on operands of these shapes followed by the addition of a constant of `term_shape`,
    /// through tract alone and through the fused products: the two outputs' worst relative
    /// difference, and whether the addition was folded into a product.
    fn with_addition(
        expr: &str,
        a_shape: &[usize],
        b_shape: &[usize],
        term_shape: &[usize],
    ) -> (f32, bool) {
        use tract_onnx::tract_hir::tract_core::ops::math::add;
        let a = Tensor::from_shape(a_shape, &values(a_shape.iter().product(), 1)).unwrap();
        let b = Tensor::from_shape(b_shape, &values(b_shape.iter().product(), 2)).unwrap();
        let term = Tensor::from_shape(term_shape, &values(term_shape.iter().product(), 3)).unwrap();
        let mut model = TypedModel::default();
        let sa = model.add_const("a", a).unwrap();
        let sb = model.add_source("b", f32::fact(b.shape())).unwrap();
        let st = model.add_const("term", term).unwrap();
        let axes: AxesMapping = expr.parse().unwrap();
        let p = model
            .wire_node("p", EinSum::new(axes, DatumType::F32), &[sa, sb])
            .unwrap();
        let out = model.wire_node("add", add(), &[p[0], st]).unwrap();
        model.select_output_outlets(&out).unwrap();
        let run = |m: TypedModel| {
            m.into_runnable()
                .unwrap()
                .run(tvec!(b.clone().into_tvalue()))
                .unwrap()
                .remove(0)
                .into_tensor()
        };
        let reference = run(model.clone());
        replace_float_products(&mut model).unwrap();
        fuse_bias_additions(&mut model).unwrap();
        let model = model.into_optimized().unwrap();
        let fused = model
            .nodes()
            .iter()
            .any(|n| n.op_as::<FloatProduct>().is_some_and(|p| p.bias.is_some()));
        let ours = run(model);
        (worst_relative(&reference, &ours, expr), fused)
    }

    #[test]
    fn bias_additions_fold_into_the_products() {
        for (expr, a, b, term) in [
            (
                "mk,kn->mn",
                &[5usize, 7][..],
                &[7usize, 3][..],
                &[1usize, 3][..],
            ),
            ("bmk,kn->bmn", &[1, 33, 16], &[16, 40], &[1, 1, 40]),
            ("hmk,hnk->hmn", &[4, 21, 16], &[4, 19, 16], &[1, 1, 19]),
            // The columns are not the output's last axis.
            ("hkm,hkn->hnm", &[3, 16, 21], &[3, 16, 11], &[1, 11, 1]),
            ("htd,hdn->tn", &[4, 23, 16], &[4, 16, 40], &[1, 40]),
        ] {
            let (worst, fused) = with_addition(expr, a, b, term);
            assert!(worst < 1e-5, "{expr}: worst relative difference {worst}");
            assert!(fused, "{expr}: the addition of {term:?} was not folded");
        }
        // Terms that vary along the rows, or fill the whole output, stay additions.
        for (expr, a, b, term) in [
            (
                "mk,kn->mn",
                &[5usize, 7][..],
                &[7usize, 3][..],
                &[5usize, 1][..],
            ),
            ("mk,kn->mn", &[5, 7], &[7, 3], &[5, 3]),
        ] {
            let (worst, fused) = with_addition(expr, a, b, term);
            assert!(worst < 1e-5, "{expr}: worst relative difference {worst}");
            assert!(!fused, "{expr}: the addition of {term:?} was folded");
        }
    }

    #[test]
    fn weight_products_match_tract() {
        assert_close("mk,kn->mn", &[5, 7], &[7, 3]);
        assert_close("bmk,kn->bmn", &[1, 217, 96], &[96, 130]);
        assert_close("mk,bkn->bmn", &[9, 33], &[2, 33, 17]);
    }

    #[test]
    fn transposed_and_batched_products_match_tract() {
        assert_close("hmk,hnk->hmn", &[4, 21, 16], &[4, 19, 16]);
        assert_close("hkm,hkn->hnm", &[3, 16, 21], &[3, 16, 11]);
        assert_close("mk,nk->hmn", &[35, 64], &[35, 64]);
        assert_close("bhmk,bhkn->bhmn", &[2, 3, 13, 8], &[2, 1, 8, 13]);
    }

    #[test]
    fn products_summed_over_two_axes_match_tract() {
        assert_close("htd,hdn->tn", &[4, 23, 16], &[4, 16, 40]);
        assert_close("hkt,hkn->nt", &[3, 8, 9], &[3, 8, 5]);
        assert_close("amk,kn->mn", &[1, 19, 19], &[19, 6]);
    }

    #[test]
    fn threaded_products_match_tract() {
        // Over team::MIN_FMA: one product's rows shared by the team, then batches split over it.
        assert_close_on("bmk,kn->bmn", &[1, 256, 128], &[128, 128], 2);
        assert_close_on("hmk,hkn->hmn", &[4, 128, 64], &[4, 64, 128], 2);
        assert_close_on("htd,hdn->tn", &[4, 128, 64], &[4, 64, 128], 2);
    }

    #[test]
    fn a_sum_over_nothing_is_zero() {
        let axes: AxesMapping = "hmk,hkn->mn".parse().unwrap();
        let op =
            FloatProduct::of(&EinSum::new(axes, DatumType::F32), &[0, 3, 4], &[0, 4, 5]).unwrap();
        let a = Tensor::zero::<f32>(&[0, 3, 4]).unwrap().into_tvalue();
        let b = Tensor::zero::<f32>(&[0, 4, 5]).unwrap().into_tvalue();
        let c = op.eval(&EvalContext::out_of_plan(), tvec!(a, b)).unwrap();
        let c = c[0].try_as_plain_ram().unwrap();
        assert_eq!(c.as_slice::<f32>().unwrap(), &[0f32; 15]);
    }

    #[test]
    fn sums_over_one_operand_alone_are_left_to_tract() {
        let axes: AxesMapping = "mkj,kn->mn".parse().unwrap();
        let f32_sum = EinSum::new(axes, DatumType::F32);
        assert!(FloatProduct::of(&f32_sum, &[2, 3, 4], &[3, 5]).is_none());
        assert!(FloatProduct::of(&f32_sum, &[2, 3, 1], &[3, 5]).is_some());
        let axes: AxesMapping = "mk,kn->mn".parse().unwrap();
        let i32_product = EinSum::new(axes, DatumType::I32);
        assert!(FloatProduct::of(&i32_product, &[2, 3], &[3, 5]).is_none());
    }
}
