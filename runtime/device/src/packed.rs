//! f32 products by constant weights on x86-64 with AVX-512, the weights packed once at plan time.
//!
//! [`crate::matops::FloatProduct`] runs every f32 product through the `gemm` crate, which packs
//! both operands on every call. For a linear layer the weights never change, so
//! [`PackedProduct`] lays them out once for its micro-kernel (8 rows by 48 columns, 24 registers
//! of sums) and reads the activations in place. [`pack_weight_products`] puts it in place of each
//! `FloatProduct` of rows by a constant matrix.

use std::arch::x86_64::*;

use tract_onnx::tract_hir::internal::*;

use crate::panels::{
    PANEL, block_panels, eval_rows, packed_index, padded_bias, panel_mask, replace_weight_products,
};
use crate::team::MIN_FMA;

/// Panels of one tile (and of one block of packed weights).
const PANELS: usize = 3;
/// Rows of one tile.
const ROWS: usize = 8;
/// The most weights (in values) of a product packed: 1 MiB, which stays in the L2 cache. Larger
/// products run faster through the `gemm` crate, whose blocking keeps its operands in the caches
/// (the full-size model's pair: 287-294 ms with every product packed against 256-268 without,
/// one thread per encoder).
pub(crate) const MAX_WEIGHTS: usize = 1 << 18;

/// Whether this CPU runs the kernel.
pub fn available() -> bool {
    is_x86_feature_detected!("avx512f")
}

/// `x · W + bias` for f32 rows `x` of length `k` and constant `k` x `n` weights `W`.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct PackedProduct {
    k: usize,
    n: usize,
    /// Weights as [`packed_index`] lays them out for blocks of `PANELS` panels, one summed
    /// value at a time (zeros past `n`).
    packed: Arc<Tensor>,
    /// Each column's bias (zeros past `n`), where the layer has one.
    bias: Option<Arc<Tensor>>,
}

impl PackedProduct {
    /// The product by the `k` x `n` row-major `weights`, plus `bias` (one value per column).
    pub fn new(
        weights: &[f32],
        k: usize,
        n: usize,
        bias: Option<&[f32]>,
    ) -> TractResult<PackedProduct> {
        ensure!(
            weights.len() == k * n && k > 0 && n > 0,
            "PackedProduct of {} weights for {k} x {n}",
            weights.len()
        );
        let width = n.div_ceil(PANEL) * PANEL;
        let mut packed = vec![0f32; width * k];
        for (row, values) in weights.chunks_exact(n).enumerate() {
            for (col, &w) in values.iter().enumerate() {
                packed[packed_index((n, k), (PANELS, 1), row, col)] = w;
            }
        }
        let bias = padded_bias("PackedProduct", bias, n, width)?;
        Ok(PackedProduct {
            k,
            n,
            packed: tensor1(&packed).into_arc_tensor(),
            bias,
        })
    }

    /// Writes the product of the `k`-long rows `x` into `c` (`n`-long rows), in `parts` parts
    /// on the plan's team.
    fn compute(&self, x: &[f32], c: &mut [f32], parts: usize) -> TractResult<()> {
        let (k, n) = (self.k, self.n);
        let m = x.len() / k;
        ensure!(
            x.len() == m * k && c.len() == m * n,
            "PackedProduct of {} inputs into {} outputs",
            x.len(),
            c.len()
        );
        let packed = self.packed.try_as_plain_ram()?;
        let packed = packed.as_slice::<f32>()?;
        let bias = self
            .bias
            .as_ref()
            .map(|b| b.try_as_plain_ram())
            .transpose()?;
        let bias = bias.as_ref().map(|b| b.as_slice::<f32>()).transpose()?;
        let width = n.div_ceil(PANEL) * PANEL;
        ensure!(
            packed.len() == width * k && bias.is_none_or(|b| b.len() == width),
            "PackedProduct's packed operands do not match {k} x {n}"
        );
        // The last rows, padded to a whole tile, so that the kernel never reads past the input.
        let full = m / ROWS * ROWS;
        let mut tail = vec![0f32; ROWS * k];
        tail[..(m - full) * k].copy_from_slice(&x[full * k..]);
        let at = Operands {
            x: x.as_ptr(),
            tail: tail.as_ptr(),
            full,
            m,
            k,
            packed: packed.as_ptr(),
            bias: bias.map_or(std::ptr::null(), <[f32]>::as_ptr),
            c: c.as_mut_ptr(),
            n,
        };
        let blocks = n.div_ceil(PANEL * PANELS);
        // Rows split evenly between the parts (columns would not: 128 of them are three blocks),
        // each part reading all the packed weights.
        let part = m.div_ceil(parts).div_ceil(ROWS) * ROWS;
        crate::team::run(m.div_ceil(part), |i| {
            // SAFETY: each part writes its own rows of C.
            unsafe { at.blocks(0..blocks, i * part..(i * part + part).min(m)) }
        });
        Ok(())
    }
}

/// The operands of one product, shareable between the threads that compute its column blocks.
#[derive(Clone, Copy)]
struct Operands {
    x: *const f32,
    /// The rows from `full` on, padded with zeros to `ROWS`.
    tail: *const f32,
    /// Rows in whole tiles.
    full: usize,
    m: usize,
    k: usize,
    packed: *const f32,
    /// Null where there is no bias.
    bias: *const f32,
    c: *mut f32,
    n: usize,
}

// SAFETY: the pointers address buffers of one `eval`, which outlive every thread that uses them
// (a team's run returns when every part is done); parts write disjoint rows of C.
unsafe impl Send for Operands {}
// SAFETY: as for `Send`; threads only read the inputs.
unsafe impl Sync for Operands {}

impl Operands {
    /// Computes the columns of blocks `blocks` for rows `rows` (from a multiple of [`ROWS`]),
    /// block by block, tile by tile.
    ///
    /// # Safety
    /// The operands must be those `PackedProduct::compute` laid out, on a CPU with AVX-512, and
    /// no other thread may write these rows of these blocks' columns.
    unsafe fn blocks(self, blocks: std::ops::Range<usize>, rows: std::ops::Range<usize>) {
        for block in blocks {
            for row in rows.clone().step_by(ROWS) {
                // SAFETY: the caller's contract.
                unsafe { self.tile(block, row) };
            }
        }
    }

    /// Writes rows `row..row + ROWS` of block `block` into C.
    ///
    /// # Safety
    /// As for [`Operands::blocks`].
    unsafe fn tile(self, block: usize, row: usize) {
        let first = block * PANELS;
        let panels = block_panels(self.n, PANELS, block);
        let a = if row < self.full {
            unsafe { self.x.add(row * self.k) }
        } else {
            self.tail
        };
        let tile = Tile {
            a,
            b: unsafe { self.packed.add(first * PANEL * self.k) },
            bias: if self.bias.is_null() {
                self.bias
            } else {
                unsafe { self.bias.add(first * PANEL) }
            },
            c: unsafe { self.c.add(row * self.n + first * PANEL) },
            rows: (self.m - row).min(ROWS),
            cols: (self.n - first * PANEL).min(panels * PANEL),
        };
        // SAFETY: the caller's contract.
        unsafe {
            match panels {
                3 => run_tile::<3>(self, tile),
                2 => run_tile::<2>(self, tile),
                _ => run_tile::<1>(self, tile),
            }
        }
    }
}

/// Where one tile's operands start, and how much of it is real (not padding).
#[derive(Clone, Copy)]
struct Tile {
    a: *const f32,
    b: *const f32,
    bias: *const f32,
    c: *mut f32,
    rows: usize,
    cols: usize,
}

/// One tile of `P` panels: 8 rows of sums, started from the bias, by fused multiply-adds.
#[target_feature(enable = "avx512f")]
unsafe fn run_tile<const P: usize>(op: Operands, t: Tile) {
    let mut start = [_mm512_setzero_ps(); P];
    if !t.bias.is_null() {
        for (p, s) in start.iter_mut().enumerate() {
            // SAFETY: the bias is padded to whole panels.
            *s = unsafe { _mm512_loadu_ps(t.bias.add(p * PANEL)) };
        }
    }
    let mut acc = [start; ROWS];
    for i in 0..op.k {
        let mut b = [_mm512_setzero_ps(); P];
        for (p, b) in b.iter_mut().enumerate() {
            // SAFETY: the block holds `k` rows of its `P` panels.
            *b = unsafe { _mm512_loadu_ps(t.b.add((i * P + p) * PANEL)) };
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: the tile's rows are `k` values each (padded for the last tile).
            let a = _mm512_set1_ps(unsafe { *t.a.add(r * op.k + i) });
            for (acc, &b) in acc.iter_mut().zip(&b) {
                *acc = _mm512_fmadd_ps(a, b, *acc);
            }
        }
    }
    // Every row and panel visited (a loop of fixed length, unrolled), so the sums stay in registers.
    for (r, row) in acc.iter().enumerate() {
        for (p, &sums) in row.iter().enumerate() {
            let col = p * PANEL;
            if r < t.rows && col < t.cols {
                let mask = panel_mask(t.cols, col);
                // SAFETY: the mask keeps the store inside row `r`'s real columns of C.
                unsafe { _mm512_mask_storeu_ps(t.c.add(r * op.n + col), mask, sums) };
            }
        }
    }
}

impl Op for PackedProduct {
    fn name(&self) -> StaticName {
        "PackedProduct".into()
    }
    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{} x {}{}",
            self.k,
            self.n,
            if self.bias.is_some() { ", bias" } else { "" }
        )])
    }
    op_as_typed_op!();
}

impl EvalOp for PackedProduct {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        ensure!(
            input.shape().last() == Some(&self.k),
            "PackedProduct of {} x {} on an input of shape {:?}",
            self.k,
            self.n,
            input.shape()
        );
        let mut shape: TVec<usize> = input.shape().into();
        *shape.last_mut().expect("rank checked above") = self.n;
        let out = eval_rows(
            "PackedProduct",
            &input,
            &shape,
            (self.n, MIN_FMA),
            |x, c, parts| self.compute(x, c, parts),
        )?;
        Ok(tvec!(out))
    }
}

impl TypedOp for PackedProduct {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = inputs[0];
        ensure!(x.datum_type == DatumType::F32 && x.rank() > 0);
        ensure!(x.shape[x.rank() - 1] == self.k.to_dim());
        let mut shape = x.shape.to_tvec();
        *shape.last_mut().expect("rank checked above") = self.n.to_dim();
        Ok(tvec!(f32::fact(shape)))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let values: TDim = inputs[0].shape.iter().product();
        Ok(tvec!((Cost::FMA(DatumType::F32), values * self.n.to_dim())))
    }
    as_op!();
}

/// Replaces each [`crate::matops::FloatProduct`] of rows by a constant f32 matrix of at most
/// `MAX_WEIGHTS` values (its bias kept) with a [`PackedProduct`].
pub fn pack_weight_products(model: &mut TypedModel) -> TractResult<()> {
    replace_weight_products(model, |product, a_rank, _, weights| {
        let Some((k, n, bias)) = product.as_row_product(a_rank, weights.shape()) else {
            return Ok(None);
        };
        if k * n > MAX_WEIGHTS {
            return Ok(None);
        }
        let values = weights.try_as_plain_ram()?;
        let bias = bias.as_ref().map(|b| b.try_as_plain_ram()).transpose()?;
        let bias = bias.as_ref().map(|b| b.as_slice::<f32>()).transpose()?;
        PackedProduct::new(values.as_slice::<f32>()?, k, n, bias).map(Some)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matops::{fuse_bias_additions, replace_float_products};
    use crate::testing::{run_optimized, values, worst_relative};
    use tract_onnx::tract_hir::tract_core::axes::AxesMapping;
    use tract_onnx::tract_hir::tract_core::ops::einsum::EinSum;
    use tract_onnx::tract_hir::tract_core::ops::math::add;

    /// `expr` of an input of `x_shape` by constant weights of `w_shape` (plus a bias row where
    /// `bias`), through tract and through the packed product on `threads` threads: the worst
    /// difference relative to 1 + |tract's value|, and whether the product was packed.
    fn compare(
        expr: &str,
        x_shape: &[usize],
        w_shape: &[usize],
        bias: bool,
        threads: usize,
    ) -> (f32, bool) {
        let n = w_shape[w_shape.len() - 1];
        let out_rank = expr.split("->").nth(1).unwrap().len();
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact(x_shape)).unwrap();
        let w = Tensor::from_shape(w_shape, &values(w_shape.iter().product(), 2)).unwrap();
        let w = model.add_const("w", w).unwrap();
        let axes: AxesMapping = expr.parse().unwrap();
        let mut y = model
            .wire_node("p", EinSum::new(axes, DatumType::F32), &[x, w])
            .unwrap();
        if bias {
            let mut shape = vec![1; out_rank];
            shape[out_rank - 1] = n;
            let b = Tensor::from_shape(&shape, &values(n, 3)).unwrap();
            let b = model.add_const("b", b).unwrap();
            y = model.wire_node("add", add(), &[y[0], b]).unwrap();
        }
        model.select_output_outlets(&y).unwrap();
        let input = Tensor::from_shape(x_shape, &values(x_shape.iter().product(), 1)).unwrap();
        let reference = run_optimized(model.clone(), &input, threads);
        replace_float_products(&mut model).unwrap();
        fuse_bias_additions(&mut model).unwrap();
        pack_weight_products(&mut model).unwrap();
        let packed = model.nodes().iter().any(|n| n.op_is::<PackedProduct>());
        let ours = run_optimized(model, &input, threads);
        let worst = worst_relative(&reference, &ours, expr);
        (worst, packed)
    }

    #[test]
    fn packed_products_match_tract() {
        for (expr, x, w, bias, threads) in [
            (
                "bmk,kn->bmn",
                &[1usize, 217, 96][..],
                &[96usize, 130][..],
                true,
                1,
            ),
            ("bmk,kn->bmn", &[1, 131, 600], &[600, 100], true, 1),
            ("bmk,kn->bmn", &[1, 70, 520], &[520, 96], false, 2),
            ("mk,kn->mn", &[7, 5], &[5, 3], false, 1),
            ("bmk,kn->bmn", &[1, 8, 33], &[33, 48], true, 1),
            ("bmk,bkn->bmn", &[1, 13, 64], &[1, 64, 200], false, 1),
            ("bmk,kn->bmn", &[1, 256, 128], &[128, 128], true, 2),
        ] {
            let (worst, packed) = compare(expr, x, w, bias, threads);
            assert!(packed || !available(), "{expr} {x:?} was not packed");
            assert!(
                worst < 1e-5,
                "{expr} {x:?}: worst relative difference {worst}"
            );
        }
    }

    #[test]
    fn products_of_two_inputs_large_or_transposed_weights_stay_float_products() {
        let (worst, packed) = compare("mk,kn->mn", &[3, 768], &[768, 768], true, 1);
        assert!(!packed);
        assert!(worst < 1e-5);
        let (worst, packed) = compare("mk,nk->mn", &[7, 5], &[3, 5], false, 1);
        assert!(!packed);
        assert!(worst < 1e-5);
    }
}
