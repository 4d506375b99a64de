//! The weight layout and evaluation shared by the x86-64 product operators whose weights are
//! packed at plan time ([`crate::packed::PackedProduct`], f32, and
//! [`crate::intproduct::Int8Product`], int8): columns in panels of one 512-bit register, panels
//! in blocks of one micro-kernel tile's width.

use std::arch::x86_64::__mmask16;

use tract_onnx::tract_hir::internal::*;

use crate::matops::FloatProduct;
use crate::rowops::written;

/// Columns of one panel: one 512-bit register of 32-bit values.
pub(crate) const PANEL: usize = 16;

/// How many panels block `block` holds, where `n` columns are cut into blocks of `per_block`
/// panels (fewer in the last).
pub(crate) fn block_panels(n: usize, per_block: usize, block: usize) -> usize {
    (n.div_ceil(PANEL) - block * per_block).min(per_block)
}

/// Where the weight of summed index `row` and column `col` of `n` columns lies in weights
/// packed for blocks of `per_block` panels and `kp` summed values: block by block, each block
/// `group` summed values at a time, each such step panel by panel, each panel column by column,
/// `group` values per column (1 for f32's fused multiply-adds, 4 for `vpdpbusd` and AMX tiles).
pub(crate) fn packed_index(
    (n, kp): (usize, usize),
    (per_block, group): (usize, usize),
    row: usize,
    col: usize,
) -> usize {
    let (block, panel, lane) = (
        col / (PANEL * per_block),
        (col / PANEL) % per_block,
        col % PANEL,
    );
    let panels = block_panels(n, per_block, block);
    block * per_block * PANEL * kp
        + (row / group) * panels * group * PANEL
        + panel * group * PANEL
        + lane * group
        + row % group
}

/// The lanes of the panel starting at column `col` that hold real columns of a tile `cols` wide.
pub(crate) fn panel_mask(cols: usize, col: usize) -> __mmask16 {
    let lanes = (cols - col).min(PANEL);
    if lanes == PANEL { !0 } else { (1 << lanes) - 1 }
}

/// `values` padded with `fill` to `len`, as a tensor.
pub(crate) fn padded<T: Datum + Copy>(values: &[T], len: usize, fill: T) -> Arc<Tensor> {
    let mut v = values.to_vec();
    v.resize(len, fill);
    tensor1(&v).into_arc_tensor()
}

/// A product operator's bias (one value per column of `n`), padded with zeros to `width`.
pub(crate) fn padded_bias(
    op: &str,
    bias: Option<&[f32]>,
    n: usize,
    width: usize,
) -> TractResult<Option<Arc<Tensor>>> {
    bias.map(|b| {
        ensure!(b.len() == n, "{op} of {n} columns with {} biases", b.len());
        Ok(padded(b, width, 0.0))
    })
    .transpose()
}

/// Replaces each [`FloatProduct`] by constant f32 weights for which `make` (given the product,
/// the ranks of its input and output, and the weights) returns an operator of the input alone.
pub(crate) fn replace_weight_products<O: TypedOp>(
    model: &mut TypedModel,
    make: impl Fn(&FloatProduct, usize, usize, &Tensor) -> TractResult<Option<O>>,
) -> TractResult<()> {
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(product) = node.op_as::<FloatProduct>() else {
            continue;
        };
        let Some(weights) = model.outlet_fact(node.inputs[1])?.konst.as_ref() else {
            continue;
        };
        let a_rank = model.outlet_fact(node.inputs[0])?.rank();
        let c_rank = model.outlet_fact(node.id.into())?.rank();
        if let Some(op) = make(product, a_rank, c_rank, weights)? {
            let inputs = [node.inputs[0]];
            TypedModelPatch::replace_single_op(model, node, &inputs, op)?.apply(model)?;
        }
    }
    model.compact()
}

/// Runs a product operator named `op` of `n` columns on `input`: `compute` reads the input's
/// values in row-major order and writes every value of a new f32 output of `shape`, in as many
/// parts as the plan's team has threads where the product reaches `min` multiply-adds, else in
/// one.
pub(crate) fn eval_rows(
    op: &str,
    input: &TValue,
    shape: &[usize],
    (n, min): (usize, usize),
    compute: impl FnOnce(&[f32], &mut [f32], usize) -> TractResult<()>,
) -> TractResult<TValue> {
    let view = input.to_plain_array_view::<f32>()?;
    let x = view.as_standard_layout();
    let x = x
        .as_slice()
        .with_context(|| format!("{op} input is not contiguous"))?;
    let parts = crate::team::parts(x.len() * n, min);
    // SAFETY: `compute` writes every element of C.
    let c = unsafe { written(shape, |c| compute(x, c, parts))? };
    Ok(c.into_tvalue())
}
