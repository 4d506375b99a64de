//! f32 products by constant weights on AMX-BF16 tiles (Sapphire Rapids and later), each operand
//! cut into three bf16 parts whose six leading cross products carry f32's precision.
//!
//! A value of f32's 24-bit significand is exactly the sum of three bf16 values of 8 bits each
//! (`hi`, `mid`, `lo`, each cut from what the earlier ones left). Of the nine cross products of
//! two such sums, [`SplitProduct`] computes the six whose size reaches 2^-16 of the whole
//! (`hi·hi`, `hi·mid`, `mid·hi`, `hi·lo`, `mid·mid`, `lo·hi`) with `tdpbf16ps`, which multiplies
//! bf16 pairs exactly and accumulates in f32; the three it drops are below 2^-21 of the
//! product, f32 rounding's own order. A tile's 512 multiply-adds per cycle make the six
//! products faster than one f32 product on the AVX-512 units. [`split_weight_products`] puts it
//! in place of each `FloatProduct` of rows by a constant matrix.

use std::arch::asm;
use std::arch::x86_64::*;
use std::sync::OnceLock;

use tract_onnx::tract_hir::internal::*;

use crate::intproduct::{TileConfig, tiles_permitted};
use crate::panels::{PANEL, eval_rows, padded_bias, replace_weight_products};
use crate::team::MIN_FMA;

/// Summed values of one tile row: 32 bf16 in 64 bytes.
const STEP: usize = 32;
/// Rows of one output tile (two AMX tiles of 16).
const ROWS: usize = 32;
/// Columns of one block of packed weights (two panels, one AMX tile each).
const BLOCK: usize = 2 * PANEL;
/// bf16 values of one weight tile: 16 pairs of summed values by 16 columns.
const TILE: usize = 16 * PANEL * 2;
/// The most weights (in values) of a product left to the other kernels: below it the cuts and
/// tiles do not pay (the demo student's f32 pair: 0.89 ms with every product split against
/// 0.76 without), and [`crate::packed::PackedProduct`] takes those of rows by weights.
const MIN_WEIGHTS: usize = crate::packed::MAX_WEIGHTS;
/// Bytes of the cut input summed per pass over the column blocks: a product whose cut input
/// is larger is summed in chunks of steps, so that each chunk stays in the L2 cache while every
/// block of columns reads it (the full-size model's fc2, 3072 summed values: 231-248 GFLOP/s
/// against 179-192 in one pass, one thread).
const CHUNK_BYTES: usize = 1 << 20;
/// The parts each operand is cut into.
const PARTS: usize = 3;
/// The cross products computed: (input part, weight part).
const CROSS: [(usize, usize); 6] = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0)];

/// Whether this CPU has AMX-BF16 and Linux lets this process use the tile registers (asked
/// once).
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        if !is_x86_feature_detected!("avx512f") {
            return false;
        }
        // CPUID leaf 7 exists on every x86-64 CPU with AVX-512.
        let leaf7 = __cpuid_count(7, 0);
        let (bf16, tile) = (leaf7.edx >> 22 & 1 == 1, leaf7.edx >> 24 & 1 == 1);
        bf16 && tile && tiles_permitted()
    })
}

/// The bf16 parts of `v`: its top 8 significant bits, then the next 8 of what is left, twice
/// (cut, not rounded, so that the three sum to `v` exactly).
fn parts(v: f32) -> [u16; PARTS] {
    let mut rest = v;
    let mut out = [0u16; PARTS];
    for part in &mut out {
        let cut = rest.to_bits() & 0xffff_0000;
        *part = (cut >> 16) as u16;
        rest -= f32::from_bits(cut);
    }
    out
}

/// Cuts input row `row` (its `k` values `x`) into the three bf16 parts, written into the tiles
/// of `a` (laid out as [`Operands::a`] says), zeros past `k` to whole steps.
///
/// # Safety
/// `a` must hold the tiles of every step for the row's pair of row tiles.
#[target_feature(enable = "avx512f")]
unsafe fn cut_row(x: &[f32], row: usize, steps: usize, a: *mut u16) {
    let (pair, half, r) = (row / ROWS, (row % ROWS) / 16, row % 16);
    let mask = _mm512_set1_epi32(0xffff_0000u32 as i32);
    for chunk in 0..steps * 2 {
        let from = (chunk * PANEL).min(x.len());
        let lanes = (x.len() - from).min(PANEL);
        let keep: __mmask16 = ((1u32 << lanes) - 1) as u16;
        let (step, col) = (chunk / 2, (chunk % 2) * PANEL);
        // SAFETY: the masked load reads only the row's own values; each store writes 16 bf16 of
        // one row of a tile of `a` (the caller's contract).
        unsafe {
            let mut rest = _mm512_maskz_loadu_ps(keep, x.as_ptr().add(from));
            for part in 0..PARTS {
                let bits = _mm512_and_si512(_mm512_castps_si512(rest), mask);
                let halves = _mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(bits));
                let tile = ((pair * steps + step) * PARTS + part) * 2 + half;
                _mm256_storeu_si256(a.add(tile * TILE + r * STEP + col).cast(), halves);
                rest = _mm512_sub_ps(rest, _mm512_castsi512_ps(bits));
            }
        }
    }
}

thread_local! {
    /// The sums a thread keeps between chunks of summed values.
    static SUMS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The cut input of the last product this thread ran, kept so that a plan's run allocates
    /// nothing once its largest product has run.
    static CUTS: std::cell::RefCell<Vec<u16>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `x · W + bias` for f32 rows `x` of length `k` and constant `k` x `n` weights `W`.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct SplitProduct {
    /// The order in which the input's axes are read (rows, then the `k` summed values), where
    /// it is not the input's own.
    order: Option<TVec<usize>>,
    /// How many of the (reordered) input's last axes are summed.
    summed: usize,
    k: usize,
    n: usize,
    /// The weights' bf16 parts, block of 32 columns by block, each block [`STEP`] summed values
    /// at a time, each step part by part, each part panel by panel: one AMX tile of 16 pairs of
    /// summed values by 16 columns (zeros past `k` and `n`).
    packed: Arc<Tensor>,
    /// Each column's bias (zeros past `n`, to whole blocks), where the layer has one.
    bias: Option<Arc<Tensor>>,
}

impl SplitProduct {
    /// The product by the `k` x `n` row-major `weights`, plus `bias` (one value per column).
    pub fn new(
        weights: &[f32],
        k: usize,
        n: usize,
        bias: Option<&[f32]>,
    ) -> TractResult<SplitProduct> {
        ensure!(
            weights.len() == k * n && k > 0 && n > 0,
            "SplitProduct of {} weights for {k} x {n}",
            weights.len()
        );
        let (steps, width) = (k.div_ceil(STEP), n.div_ceil(BLOCK) * BLOCK);
        let mut packed = vec![0u16; width * steps * STEP * PARTS];
        for (row, values) in weights.chunks_exact(n).enumerate() {
            let (step, pair, odd) = (row / STEP, (row % STEP) / 2, row % 2);
            for (col, &w) in values.iter().enumerate() {
                let (block, panel, lane) = (col / BLOCK, (col % BLOCK) / PANEL, col % PANEL);
                for (part, p) in parts(w).into_iter().enumerate() {
                    let tile = ((block * steps + step) * PARTS + part) * 2 + panel;
                    packed[tile * TILE + (pair * PANEL + lane) * 2 + odd] = p;
                }
            }
        }
        let bias = padded_bias("SplitProduct", bias, n, width)?;
        Ok(SplitProduct {
            order: None,
            summed: 1,
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
            "SplitProduct of {} inputs into {} outputs",
            x.len(),
            c.len()
        );
        let packed = self.packed.try_as_plain_ram()?;
        let packed = packed.as_slice::<u16>()?;
        let bias = self
            .bias
            .as_ref()
            .map(|b| b.try_as_plain_ram())
            .transpose()?;
        let bias = bias.as_ref().map(|b| b.as_slice::<f32>()).transpose()?;
        let (steps, blocks) = (k.div_ceil(STEP), n.div_ceil(BLOCK));
        let kp = steps * STEP;
        ensure!(
            packed.len() == blocks * BLOCK * kp * PARTS
                && bias.is_none_or(|b| b.len() == blocks * BLOCK),
            "SplitProduct's packed operands do not match {k} x {n}"
        );
        let pairs = m.div_ceil(ROWS);
        CUTS.with_borrow_mut(|a| {
            // Rows past `m` cut from no values (zeros), so that every value the tiles read is set.
            a.resize(pairs * steps * PARTS * 2 * TILE, 0);
            let rows = x
                .chunks_exact(k)
                .chain(std::iter::repeat_n(&[][..], pairs * ROWS - m));
            for (row, values) in rows.enumerate() {
                // SAFETY: AVX-512 is part of `available`; `a` holds every pair's tiles.
                unsafe { cut_row(values, row, steps, a.as_mut_ptr()) };
            }
            self.run(
                Operands {
                    a: a.as_ptr(),
                    steps,
                    m,
                    packed: packed.as_ptr(),
                    bias: bias.map_or(std::ptr::null(), <[f32]>::as_ptr),
                    c: c.as_mut_ptr(),
                    n,
                },
                blocks,
                parts,
            );
        });
        Ok(())
    }

    /// Runs the column blocks of `at` in `parts` parts on the plan's team, each part reading
    /// the whole input.
    fn run(&self, at: Operands, blocks: usize, parts: usize) {
        let part = blocks.div_ceil(parts);
        crate::team::run(blocks.div_ceil(part), |i| {
            // SAFETY: each part writes its own columns of C.
            unsafe { at.blocks(i * part..(i * part + part).min(blocks)) }
        });
    }
}

/// The operands of one product, shareable between the threads that compute its column blocks.
#[derive(Clone, Copy)]
struct Operands {
    /// The input's three parts in AMX tiles of 16 rows by one step: pair of row tiles by pair,
    /// each pair step by step, each step part by part, each part its upper then lower tile.
    a: *const u16,
    /// Steps of [`STEP`] summed values.
    steps: usize,
    m: usize,
    packed: *const u16,
    /// Null where there is no bias.
    bias: *const f32,
    c: *mut f32,
    n: usize,
}

// SAFETY: the pointers address buffers of one `eval`, which outlive every thread that uses them
// (a team's run returns when every part is done); parts write disjoint columns of C.
unsafe impl Send for Operands {}
// SAFETY: as for `Send`; threads only read the inputs.
unsafe impl Sync for Operands {}

impl Operands {
    /// Computes the columns of blocks `blocks` for every row.
    ///
    /// # Safety
    /// The operands must be those `SplitProduct::compute` laid out, on a CPU where
    /// [`available`] holds, and no other thread may write these blocks' columns.
    unsafe fn blocks(self, blocks: std::ops::Range<usize>) {
        // Tiles 0-3 the sums (16 rows of 16 f32), 4-5 the input (16 rows of 32 bf16), 6-7 the
        // weights (16 pairs of summed values by 16 columns).
        let config = TileConfig::eight_full();
        // SAFETY: AMX is enabled for this process (`available`).
        unsafe { asm!("ldtilecfg [{}]", in(reg) &config, options(nostack, readonly)) };
        let pairs = self.m.div_ceil(ROWS);
        let per_step = pairs * 2 * PARTS * TILE * 2;
        let chunk_steps = (CHUNK_BYTES / per_step).max(4);
        if self.steps <= chunk_steps {
            for block in blocks {
                for pair in 0..pairs {
                    // SAFETY: the caller's contract; one chunk needs no kept sums.
                    unsafe { self.tile(block, pair, 0..self.steps, std::ptr::null_mut()) };
                }
            }
        } else {
            // Chunk by chunk of summed values, so that the input's chunk stays in the L2 cache
            // for every block; the sums between chunks kept in memory.
            SUMS.with_borrow_mut(|sums| {
                sums.resize(blocks.len() * pairs * ROWS * BLOCK, 0.0);
                for first in (0..self.steps).step_by(chunk_steps) {
                    let chunk = first..(first + chunk_steps).min(self.steps);
                    for (i, block) in blocks.clone().enumerate() {
                        for pair in 0..pairs {
                            // SAFETY: the caller's contract; each tile keeps its own sums.
                            unsafe {
                                let keep = sums.as_mut_ptr().add((i * pairs + pair) * ROWS * BLOCK);
                                self.tile(block, pair, chunk.clone(), keep)
                            };
                        }
                    }
                }
            });
        }
        // SAFETY: as above; the tiles are not used again until configured anew.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }

    /// Sums steps `chunk` of pair of row tiles `pair` by block `block`: from the bias (or
    /// zero) for the first chunk, else from the 32 x 32 sums at `keep`; into C for the last
    /// chunk, else back to `keep`.
    ///
    /// # Safety
    /// As for [`Operands::blocks`], with the tiles configured, and `keep` 32 x 32 values
    /// unless `chunk` is every step.
    #[target_feature(enable = "avx512f")]
    unsafe fn tile(self, block: usize, pair: usize, chunk: std::ops::Range<usize>, keep: *mut f32) {
        let (steps, row) = (self.steps, pair * ROWS);
        let (first, last) = (chunk.start == 0, chunk.end == steps);
        let rows = (self.m - row).min(ROWS);
        let cols = (self.n - block * BLOCK).min(BLOCK);
        // SAFETY (every tile instruction): the tiles are configured (`Operands::blocks`); the
        // input's tiles hold every step for whole pairs of row tiles, the block `kp` summed values
        // of both its panels in every part, the bias whole blocks.
        unsafe {
            if !first {
                load_sums(keep, keep.add(16 * BLOCK), BLOCK);
            } else if self.bias.is_null() {
                asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    options(nostack, nomem)
                );
            } else {
                // Every row of a sum tile starts as the bias (a stride of 0 repeats one row).
                let bias = self.bias.add(block * BLOCK);
                load_sums(bias, bias, 0);
            }
            let a = self.a.add(pair * steps * PARTS * 2 * TILE);
            let b = self.packed.add(block * steps * PARTS * 2 * TILE);
            for step in chunk {
                let b = b.add(step * PARTS * 2 * TILE);
                let mut loaded = usize::MAX;
                for (ap, bp) in CROSS {
                    if ap != loaded {
                        let upper = a.add((step * PARTS + ap) * 2 * TILE);
                        asm!(
                            "tileloadd tmm4, [{u} + {s}*1]",
                            "tileloadd tmm5, [{l} + {s}*1]",
                            u = in(reg) upper,
                            l = in(reg) upper.add(TILE),
                            s = in(reg) 64usize,
                            options(nostack, readonly),
                        );
                        loaded = ap;
                    }
                    let w = b.add(bp * 2 * TILE);
                    asm!(
                        "tileloadd tmm6, [{w} + {s}*1]",
                        "tileloadd tmm7, [{w2} + {s}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        "tdpbf16ps tmm2, tmm5, tmm6",
                        "tdpbf16ps tmm3, tmm5, tmm7",
                        w = in(reg) w,
                        w2 = in(reg) w.add(TILE),
                        s = in(reg) 64usize,
                        options(nostack, readonly),
                    );
                }
            }
            let c = self.c.add(row * self.n + block * BLOCK);
            if !last {
                store_sums(keep, keep.add(16 * BLOCK), BLOCK);
            } else if rows == ROWS && cols == BLOCK {
                store_sums(c, c.add(16 * self.n), self.n);
            } else {
                let mut sums = [[0f32; BLOCK]; ROWS];
                let at = sums.as_mut_ptr().cast::<f32>();
                store_sums(at, at.add(16 * BLOCK), BLOCK);
                for (r, sums) in sums.iter().enumerate().take(rows) {
                    std::ptr::copy_nonoverlapping(sums.as_ptr(), c.add(r * self.n), cols);
                }
            }
        }
    }
}

/// Loads the four sum tiles (tiles 0-3): the upper and lower 16 rows of both panels, from rows
/// `stride` values apart starting at `upper` and `lower`.
///
/// # Safety
/// The tiles must be configured, and 16 rows of 32 values readable at `upper` and at `lower`.
unsafe fn load_sums(upper: *const f32, lower: *const f32, stride: usize) {
    // SAFETY: the caller's contract.
    unsafe {
        asm!(
            "tileloadd tmm0, [{u} + {s}*1]",
            "tileloadd tmm1, [{u2} + {s}*1]",
            "tileloadd tmm2, [{l} + {s}*1]",
            "tileloadd tmm3, [{l2} + {s}*1]",
            u = in(reg) upper,
            u2 = in(reg) upper.add(PANEL),
            l = in(reg) lower,
            l2 = in(reg) lower.add(PANEL),
            s = in(reg) stride * 4,
            options(nostack, readonly),
        );
    }
}

/// Stores the four sum tiles as [`load_sums`] loads them.
///
/// # Safety
/// The tiles must be configured, and 16 rows of 32 values writable at `upper` and at `lower`.
unsafe fn store_sums(upper: *mut f32, lower: *mut f32, stride: usize) {
    // SAFETY: the caller's contract.
    unsafe {
        asm!(
            "tilestored [{u} + {s}*1], tmm0",
            "tilestored [{u2} + {s}*1], tmm1",
            "tilestored [{l} + {s}*1], tmm2",
            "tilestored [{l2} + {s}*1], tmm3",
            u = in(reg) upper,
            u2 = in(reg) upper.add(PANEL),
            l = in(reg) lower,
            l2 = in(reg) lower.add(PANEL),
            s = in(reg) stride * 4,
            options(nostack),
        );
    }
}

impl Op for SplitProduct {
    fn name(&self) -> StaticName {
        "SplitProduct".into()
    }
    fn info(&self) -> TractResult<Vec<String>> {
        let order = self
            .order
            .as_ref()
            .map_or(String::new(), |o| format!(", input axes read as {o:?}"));
        Ok(vec![format!(
            "{} x {}{}{order}, bf16 x 3 on AMX",
            self.k,
            self.n,
            if self.bias.is_some() { ", bias" } else { "" }
        )])
    }
    op_as_typed_op!();
}

impl EvalOp for SplitProduct {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let mut input = args_1!(inputs);
        if let Some(order) = &self.order {
            input = input.into_tensor().permute_axes(order)?.into_tvalue();
        }
        let rank = input.rank();
        ensure!(
            input.datum_type() == DatumType::F32
                && rank >= self.summed
                && input.shape()[rank - self.summed..]
                    .iter()
                    .product::<usize>()
                    == self.k,
            "SplitProduct of {} x {} on an input of shape {:?}",
            self.k,
            self.n,
            input.shape()
        );
        let mut shape: TVec<usize> = input.shape()[..rank - self.summed].into();
        shape.push(self.n);
        let out = eval_rows(
            "SplitProduct",
            &input,
            &shape,
            (self.n, MIN_FMA),
            |x, c, parts| self.compute(x, c, parts),
        )?;
        Ok(tvec!(out))
    }
}

impl TypedOp for SplitProduct {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = inputs[0];
        ensure!(x.datum_type == DatumType::F32 && x.rank() >= self.summed);
        let read: Vec<TDim> = match &self.order {
            Some(order) => order.iter().map(|&a| x.shape[a].clone()).collect(),
            None => x.shape.to_tvec().into_vec(),
        };
        let (kept, summed) = read.split_at(read.len() - self.summed);
        ensure!(summed.iter().product::<TDim>() == self.k.to_dim());
        let mut shape: TVec<TDim> = kept.into();
        shape.push(self.n.to_dim());
        Ok(tvec!(f32::fact(shape)))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let values: TDim = inputs[0].shape.iter().product();
        Ok(tvec!((Cost::FMA(DatumType::F32), values * self.n.to_dim())))
    }
    as_op!();
}

/// Replaces each [`crate::matops::FloatProduct`] of rows by a constant f32 matrix of more than
/// `MIN_WEIGHTS` values (its bias kept), A's axes read in place or gathered, with a
/// [`SplitProduct`].
pub fn split_weight_products(model: &mut TypedModel) -> TractResult<()> {
    replace_weight_products(model, |product, a_rank, c_rank, weights| {
        let w_shape = weights.shape();
        let (order, k, n, bias) = match product.as_row_product(a_rank, w_shape) {
            Some((k, n, bias)) => (None, k, n, bias),
            None => {
                let gathered = product.as_gathered_row_product(a_rank, w_shape.len(), c_rank);
                let Some((order, bias)) = gathered else {
                    return Ok(None);
                };
                let (summed, n) = w_shape.split_at(w_shape.len() - 1);
                (Some(order), summed.iter().product(), n[0], bias)
            }
        };
        if k * n <= MIN_WEIGHTS {
            return Ok(None);
        }
        let values = weights.try_as_plain_ram()?;
        let bias = bias.as_ref().map(|b| b.try_as_plain_ram()).transpose()?;
        let bias = bias.as_ref().map(|b| b.as_slice::<f32>()).transpose()?;
        let mut op = SplitProduct::new(values.as_slice::<f32>()?, k, n, bias)?;
        if let Some(order) = order {
            op.summed = w_shape.len() - 1;
            op.order = Some(order.into());
        }
        Ok(Some(op))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::values;

    /// `x · W + bias` in f64, row by row.
    fn reference(x: &[f32], w: &[f32], bias: Option<&[f32]>, k: usize, n: usize) -> Vec<f64> {
        let mut c = Vec::with_capacity(x.len() / k * n);
        for row in x.chunks_exact(k) {
            for col in 0..n {
                let sum: f64 = (0..k)
                    .map(|i| f64::from(row[i]) * f64::from(w[i * n + col]))
                    .sum();
                c.push(sum + bias.map_or(0.0, |b| f64::from(b[col])));
            }
        }
        c
    }

    #[test]
    fn three_parts_sum_to_the_value() {
        for v in values(4000, 5) {
            let v = v * 37.5 + 1e-3;
            let [hi, mid, lo] = parts(v).map(|p| f32::from_bits(u32::from(p) << 16));
            assert_eq!(hi + mid + lo, v);
        }
    }

    #[test]
    fn split_products_are_as_close_to_f64_as_f32_sums() {
        if !available() {
            return;
        }
        for (m, k, n, bias, threads) in [
            (217, 96, 130, true, 1),
            (131, 600, 100, true, 1),
            (70, 520, 96, false, 2),
            (7, 5, 3, false, 1),
            (64, 768, 768, true, 2),
            (33, 33, 17, true, 1),
            // Summed in chunks (and threads), neither rows nor columns whole tiles.
            (45, 2500, 70, true, 1),
            (450, 900, 40, false, 2),
        ] {
            let x = values(m * k, 1);
            let w = values(k * n, 2);
            let b = values(n, 3);
            let bias = bias.then_some(&b[..]);
            let op = SplitProduct::new(&w, k, n, bias).unwrap();
            let mut c = vec![f32::NAN; m * n];
            let team = crate::team::Team::new(threads).unwrap();
            crate::team::with(&team, || op.compute(&x, &mut c, threads)).unwrap();
            let exact = reference(&x, &w, bias, k, n);
            // A plain f32 sum of the same products, in order: the error f32 itself makes.
            let plain: Vec<f32> = x
                .chunks_exact(k)
                .flat_map(|row| {
                    (0..n).map(|col| {
                        let sum = (0..k).fold(0f32, |s, i| s + row[i] * w[i * n + col]);
                        sum + bias.map_or(0.0, |b| b[col])
                    })
                })
                .collect();
            let worst = |c: &[f32]| {
                c.iter()
                    .zip(&exact)
                    .map(|(&v, &e)| (f64::from(v) - e).abs())
                    .fold(0f64, f64::max)
            };
            let (ours, f32_own) = (worst(&c), worst(&plain));
            assert!(
                ours <= 2.0 * f32_own + 1e-6,
                "{m} x {k} x {n}: worst error {ours:e} against f32's own {f32_own:e}"
            );
        }
    }

    /// `expr` of an input of `x_shape` by constant weights of `w_shape` plus a bias, through
    /// tract and through the split product: the worst difference relative to 1 + |tract's
    /// value|, and whether the product was split.
    fn compare(expr: &str, x_shape: &[usize], w_shape: &[usize]) -> (f32, bool) {
        use crate::matops::{fuse_bias_additions, replace_float_products};
        use crate::testing::{run_optimized, worst_relative};
        use tract_onnx::tract_hir::tract_core::axes::AxesMapping;
        use tract_onnx::tract_hir::tract_core::ops::einsum::EinSum;
        use tract_onnx::tract_hir::tract_core::ops::math::add;
        let n = w_shape[w_shape.len() - 1];
        let out_rank = expr.split("->").nth(1).unwrap().len();
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact(x_shape)).unwrap();
        let w = Tensor::from_shape(w_shape, &values(w_shape.iter().product(), 2)).unwrap();
        let w = model.add_const("w", w).unwrap();
        let axes: AxesMapping = expr.parse().unwrap();
        let y = model
            .wire_node("p", EinSum::new(axes, DatumType::F32), &[x, w])
            .unwrap();
        let mut shape = vec![1; out_rank];
        shape[out_rank - 1] = n;
        let b = Tensor::from_shape(&shape, &values(n, 3)).unwrap();
        let b = model.add_const("b", b).unwrap();
        let y = model.wire_node("add", add(), &[y[0], b]).unwrap();
        model.select_output_outlets(&y).unwrap();
        let input = Tensor::from_shape(x_shape, &values(x_shape.iter().product(), 1)).unwrap();
        let reference = run_optimized(model.clone(), &input, 1);
        replace_float_products(&mut model).unwrap();
        fuse_bias_additions(&mut model).unwrap();
        split_weight_products(&mut model).unwrap();
        let split = model.nodes().iter().any(|n| n.op_is::<SplitProduct>());
        let ours = run_optimized(model, &input, 2);
        (worst_relative(&reference, &ours, expr), split)
    }

    #[test]
    fn large_weight_products_in_place_or_gathered_are_split_and_match_tract() {
        if !available() {
            return;
        }
        for (expr, x, w) in [
            ("bmk,kn->bmn", &[1usize, 205, 768][..], &[768usize, 400][..]),
            // Heads and their values summed together, as an attention's output projection.
            ("bhmd,hdn->bmn", &[1, 4, 77, 128], &[4, 128, 600]),
            ("mhd,hdn->mn", &[50, 6, 96], &[6, 96, 520]),
        ] {
            let (worst, split) = compare(expr, x, w);
            assert!(split, "{expr} {x:?} was not split");
            assert!(
                worst < 1e-5,
                "{expr} {x:?}: worst relative difference {worst}"
            );
        }
        let (worst, split) = compare("bmk,kn->bmn", &[1, 100, 256], &[256, 256]);
        assert!(!split, "a product of 2^16 weights was split");
        assert!(worst < 1e-5);
    }
}
