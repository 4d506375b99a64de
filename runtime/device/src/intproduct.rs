//! int8 weight products of x86-64 CPU plans, each one operator from f32 input to f32 output:
//! the activation's quantization, the integer product and the rescale fused.
//!
//! A static int8 bundle runs each weight product as tract's `QuantizeLinearU8`, a quantized
//! `EinSum` (u8 activations times i8 weights into i32) and the rescale ([`crate::intops`] makes
//! the first and last one pass each). [`Int8Product`] does all three in one operator, with the
//! weights packed once at plan time for the best [`Kernel`] the CPU has: AMX tiles (`tdpbusd`,
//! Sapphire Rapids and later) or AVX-512 VNNI registers (`vpdpbusd`). Its outputs are tract's,
//! bit for bit (the integer sums are exact, and the rescale multiplies and adds in the same
//! order). [`fuse_int8_products`] puts it in place of each such chain.

use std::arch::asm;
use std::arch::x86_64::*;
use std::sync::OnceLock;

use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::tract_core::ops::einsum::EinSum;

use crate::intops::{RowQuantizeU8, RowRescale, quantize_u8};
use crate::panels::{PANEL, block_panels, eval_rows, packed_index, padded, panel_mask};
use crate::rowops::sole_successor;

/// Multiply-adds below which a product runs on one thread even in a threaded plan: the integer
/// kernels do four to eight times the work of f32's per cycle, and the int8 student's visual
/// products (up to 10^7) ran slower in two parts than in one (0.225 against 0.139 ms in all, two
/// threads against one, `cavsync bench --profile`).
const SPLIT_MIN_PRODUCTS: usize = 1 << 24;
/// Summed values of one step of the packed operands: one AMX tile row of u8 (all kernels pad to it).
const STEP: usize = 64;

/// The micro-kernel of an [`Int8Product`], which also sets how its weights are packed.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Kernel {
    /// AMX tiles: 32 rows by 32 columns, four `tdpbusd` per 64 summed values.
    Amx,
    /// AVX-512 VNNI: 8 rows by 48 columns in 24 registers of `vpdpbusd` sums.
    Vnni,
    /// Plain integer arithmetic, for CPUs with neither (and to check the others).
    Portable,
}

impl Kernel {
    /// The fastest kernel this CPU (and its operating system, for AMX) runs.
    pub fn best() -> Kernel {
        static BEST: OnceLock<Kernel> = OnceLock::new();
        *BEST.get_or_init(|| {
            if amx_enabled() {
                Kernel::Amx
            } else if vnni() {
                Kernel::Vnni
            } else {
                Kernel::Portable
            }
        })
    }

    /// Panels per block of packed weights (the columns one tile covers).
    fn panels(self) -> usize {
        match self {
            Kernel::Amx => 2,
            Kernel::Vnni | Kernel::Portable => 3,
        }
    }

    /// Rows of one tile.
    fn rows(self) -> usize {
        match self {
            Kernel::Amx => 32,
            Kernel::Vnni | Kernel::Portable => 8,
        }
    }
}

/// Whether this CPU has AVX-512 VNNI.
fn vnni() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
}

/// Whether this CPU has AMX-INT8 and Linux lets this process use the tile registers (asked for
/// once, as the kernel requires before the first tile instruction).
fn amx_enabled() -> bool {
    // CPUID leaf 7 exists on every x86-64 CPU with AVX-512, checked first.
    let leaf7 = vnni().then(|| __cpuid_count(7, 0));
    let (tile, int8) = leaf7.map_or((false, false), |l| {
        (l.edx >> 24 & 1 == 1, l.edx >> 25 & 1 == 1)
    });
    tile && int8 && tiles_permitted()
}

/// Asks Linux to let this process use the AMX tile registers (as it requires before the first
/// tile instruction); whether it agreed.
pub(crate) fn tiles_permitted() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: the request only changes which state the kernel saves for this process's threads.
    let answer = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    answer == 0
}

/// Whether this CPU runs a fused kernel (otherwise [`fuse_int8_products`] leaves the graph to tract).
pub fn available() -> bool {
    Kernel::best() != Kernel::Portable
}

/// `x · W` for f32 rows `x` of length `k`: `x` quantized to u8 as `QuantizeLinear`, multiplied
/// by int8 weights less the zero point `a0`, each output column then scaled and biased.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct Int8Product {
    /// The input quantization's multiplier (1 / the ONNX scale), as tract holds it.
    in_scale: Arc<Tensor>,
    /// The input quantization's zero point.
    in_zero: u8,
    /// The zero point the product subtracts from the quantized input.
    a0: i32,
    /// The summed length (the product of the input's last `summed` axes).
    k: usize,
    /// How many of the input's last axes are summed.
    summed: usize,
    /// The output columns.
    n: usize,
    /// The kernel the weights are packed for.
    kernel: Kernel,
    /// i8 weights as [`packed_index`] lays them out for the kernel's blocks, 4 summed values at
    /// a time (the layout of `vpdpbusd`'s operand and of a `tdpbusd` weight tile; zeros past `k`
    /// and `n`).
    packed: Arc<Tensor>,
    /// Each column's sum of weights (zeros past `n`).
    column_sums: Arc<Tensor>,
    /// Each column's scale (ones past `n`).
    scale: Arc<Tensor>,
    /// Each column's bias (zeros past `n`), where the layer has one.
    bias: Option<Arc<Tensor>>,
}

/// `len` rounded up to a multiple of `to`.
fn round_up(len: usize, to: usize) -> usize {
    len.div_ceil(to) * to
}

impl Int8Product {
    /// The product of rows quantized by `quantize` with the `k` x `n` row-major `weights`, less
    /// the zero point `a0`, rescaled by `rescale`; the rows span the input's last `summed` axes.
    /// Packed for `kernel`.
    pub fn new(
        quantize: &RowQuantizeU8,
        a0: i32,
        weights: &[i8],
        (k, summed): (usize, usize),
        n: usize,
        rescale: &RowRescale,
        kernel: Kernel,
    ) -> TractResult<Int8Product> {
        ensure!(
            weights.len() == k * n && k > 0 && n > 0,
            "Int8Product of {} weights for {k} x {n}",
            weights.len()
        );
        let scale = rescale.scale.try_as_plain_ram()?;
        let scale = scale.as_slice::<f32>()?;
        ensure!(
            scale.len() == n,
            "Int8Product of {n} columns with {} scales",
            scale.len()
        );
        let (kp, panels) = (round_up(k, STEP), n.div_ceil(PANEL));
        let mut packed = vec![0i8; panels * kp * PANEL];
        for (row, values) in weights.chunks_exact(n).enumerate() {
            for (col, &w) in values.iter().enumerate() {
                packed[packed_index((n, kp), (kernel.panels(), 4), row, col)] = w;
            }
        }
        let sums: Vec<i32> = (0..n)
            .map(|col| (0..k).map(|row| i32::from(weights[row * n + col])).sum())
            .collect();
        let width = panels * PANEL;
        let bias = match &rescale.bias {
            Some(b) => Some(padded(b.try_as_plain_ram()?.as_slice::<f32>()?, width, 0.0)),
            None => None,
        };
        Ok(Int8Product {
            in_scale: quantize.scale.clone(),
            in_zero: quantize.zero_point,
            a0,
            k,
            summed,
            n,
            kernel,
            packed: Tensor::from_shape(&[packed.len()], &packed)?.into_arc_tensor(),
            column_sums: padded(&sums, width, 0),
            scale: padded(scale, width, 1.0),
            bias,
        })
    }
}

/// The operands of one product, shareable between the threads that compute its column blocks.
#[derive(Clone, Copy)]
struct Operands {
    kernel: Kernel,
    /// Quantized rows, `kp` bytes each, padded to whole tiles.
    a: *const u8,
    kp: usize,
    /// Rows of the output.
    m: usize,
    packed: *const i8,
    sums: *const i32,
    scale: *const f32,
    /// Null where there is no bias.
    bias: *const f32,
    a0: i32,
    c: *mut f32,
    n: usize,
}

// SAFETY: the pointers address buffers of one `eval`, which outlive every thread that uses them
// (a team's run returns when every part is done); column blocks write disjoint columns of C.
unsafe impl Send for Operands {}
// SAFETY: as for `Send`; threads only read the inputs.
unsafe impl Sync for Operands {}

/// An AMX tile configuration (palette 1), as `ldtilecfg` reads it.
#[repr(C, align(64))]
pub(crate) struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

impl TileConfig {
    /// Eight tiles of 16 rows of 64 bytes: in [`tile_amx`], tiles 0-3 the sums (16 rows of 16
    /// i32), 4-5 the input (16 rows of 64 u8), 6-7 the weights (16 steps of 16 columns by 4 i8).
    pub(crate) fn eight_full() -> TileConfig {
        let mut config = TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            bytes_per_row: [0; 16],
            rows: [0; 16],
        };
        config.bytes_per_row[..8].fill(64);
        config.rows[..8].fill(16);
        config
    }
}

impl Operands {
    /// Computes the columns of block `block` for every row.
    ///
    /// # Safety
    /// The operands must be those `Int8Product::compute` laid out, with a kernel this CPU runs,
    /// and no other thread may write this block's columns.
    unsafe fn block(self, block: usize) {
        let per_block = self.kernel.panels();
        let first = block * per_block;
        let panels = block_panels(self.n, per_block, block);
        let cols = (self.n - first * PANEL).min(panels * PANEL);
        let tile_rows = self.kernel.rows();
        if self.kernel == Kernel::Amx {
            let config = TileConfig::eight_full();
            // SAFETY: AMX is enabled for this process (`Kernel::best`).
            unsafe { asm!("ldtilecfg [{}]", in(reg) &config, options(nostack, readonly)) };
        }
        for row in (0..self.m).step_by(tile_rows) {
            let tile = Tile {
                a: unsafe { self.a.add(row * self.kp) },
                b: unsafe { self.packed.add(first * PANEL * self.kp) },
                c: unsafe { self.c.add(row * self.n + first * PANEL) },
                rows: (self.m - row).min(tile_rows),
                cols,
                first,
            };
            // SAFETY: the caller's contract.
            unsafe {
                match (self.kernel, panels) {
                    (Kernel::Amx, 2) => tile_amx::<2>(self, tile),
                    (Kernel::Amx, _) => tile_amx::<1>(self, tile),
                    (Kernel::Vnni, 3) => tile_vnni::<3>(self, tile),
                    (Kernel::Vnni, 2) => tile_vnni::<2>(self, tile),
                    (Kernel::Vnni, _) => tile_vnni::<1>(self, tile),
                    (Kernel::Portable, _) => tile_portable(self, tile, panels),
                }
            }
        }
        if self.kernel == Kernel::Amx {
            // SAFETY: as above; the tiles are not used again until configured anew.
            unsafe { asm!("tilerelease", options(nostack, nomem)) };
        }
    }
}

/// Where one tile's operands start, and how much of it is real (not padding).
#[derive(Clone, Copy)]
struct Tile {
    a: *const u8,
    b: *const i8,
    c: *mut f32,
    rows: usize,
    cols: usize,
    /// The tile's first panel.
    first: usize,
}

/// The rescale of one panel of a tile's sums into C: each sum less the zero-point correction,
/// converted, scaled and biased, into the real columns only.
#[derive(Clone, Copy)]
struct Rescale {
    correction: __m512i,
    scale: __m512,
    bias: Option<__m512>,
    mask: __mmask16,
    /// The panel's first column in the tile.
    col: usize,
}

impl Rescale {
    /// The rescale of panel `p` of tile `t`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn of(op: &Operands, t: &Tile, p: usize) -> Rescale {
        let col = p * PANEL;
        let at = (t.first + p) * PANEL;
        // SAFETY: the per-column vectors are padded to whole panels.
        unsafe {
            Rescale {
                correction: _mm512_mullo_epi32(
                    _mm512_set1_epi32(op.a0),
                    _mm512_loadu_si512(op.sums.add(at).cast()),
                ),
                scale: _mm512_loadu_ps(op.scale.add(at)),
                bias: (!op.bias.is_null()).then(|| _mm512_loadu_ps(op.bias.add(at))),
                mask: panel_mask(t.cols, col),
                col,
            }
        }
    }

    /// Writes the sums `acc` of row `r` of tile `t`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn store(self, op: &Operands, t: &Tile, r: usize, acc: __m512i) {
        let exact = _mm512_sub_epi32(acc, self.correction);
        let mut v = _mm512_mul_ps(_mm512_cvtepi32_ps(exact), self.scale);
        if let Some(bias) = self.bias {
            v = _mm512_add_ps(v, bias);
        }
        // SAFETY: the mask keeps the store inside row `r`'s real columns of C.
        unsafe { _mm512_mask_storeu_ps(t.c.add(r * op.n + self.col), self.mask, v) };
    }
}

/// One tile of `P` panels: 32 rows of sums in AMX tiles (two of 16 rows per panel), then
/// rescaled from memory.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn tile_amx<const P: usize>(op: Operands, t: Tile) {
    let (a_stride, b_stride) = (op.kp, P * 4 * PANEL);
    let lower = unsafe { t.a.add(16 * op.kp) };
    // SAFETY (every tile instruction): the tiles are configured (`Operands::block`); the input is
    // padded to 32 rows of `kp` bytes and the block holds `kp` summed values of `P` panels.
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        );
        for step in 0..op.kp / STEP {
            let b = t.b.add(step * (STEP / 4) * b_stride);
            asm!(
                "tileloadd tmm4, [{a} + {sa}*1]",
                "tileloadd tmm5, [{l} + {sa}*1]",
                "tileloadd tmm6, [{b} + {sb}*1]",
                "tdpbusd tmm0, tmm4, tmm6",
                "tdpbusd tmm2, tmm5, tmm6",
                a = in(reg) t.a.add(step * STEP),
                l = in(reg) lower.add(step * STEP),
                b = in(reg) b,
                sa = in(reg) a_stride,
                sb = in(reg) b_stride,
                options(nostack, readonly),
            );
            if P == 2 {
                asm!(
                    "tileloadd tmm7, [{b} + {sb}*1]",
                    "tdpbusd tmm1, tmm4, tmm7",
                    "tdpbusd tmm3, tmm5, tmm7",
                    b = in(reg) b.add(4 * PANEL),
                    sb = in(reg) b_stride,
                    options(nostack, readonly),
                );
            }
        }
    }
    let mut sums = [[0i32; 2 * PANEL]; 32];
    let row_bytes = 2 * PANEL * 4;
    // SAFETY: each store writes 16 rows of 64 bytes inside `sums`.
    unsafe {
        let at = sums.as_mut_ptr().cast::<u8>();
        asm!(
            "tilestored [{upper} + {s}*1], tmm0",
            "tilestored [{upper2} + {s}*1], tmm1",
            "tilestored [{lower} + {s}*1], tmm2",
            "tilestored [{lower2} + {s}*1], tmm3",
            upper = in(reg) at,
            upper2 = in(reg) at.add(4 * PANEL),
            lower = in(reg) at.add(16 * row_bytes),
            lower2 = in(reg) at.add(16 * row_bytes + 4 * PANEL),
            s = in(reg) row_bytes,
            options(nostack),
        );
    }
    for p in (0..P).filter(|p| p * PANEL < t.cols) {
        // SAFETY: the tile's own operands.
        let rescale = unsafe { Rescale::of(&op, &t, p) };
        for (r, row) in sums.iter().enumerate().take(t.rows) {
            // SAFETY: 16 i32 of this row's panel `p`.
            let acc = unsafe { _mm512_loadu_si512(row[p * PANEL..].as_ptr().cast()) };
            unsafe { rescale.store(&op, &t, r, acc) };
        }
    }
}

/// One tile of `P` panels: 8 rows of sums by `vpdpbusd` in registers, then rescaled.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_vnni<const P: usize>(op: Operands, t: Tile) {
    let mut acc = [[_mm512_setzero_si512(); P]; 8];
    for step in 0..op.kp / 4 {
        let mut b = [_mm512_setzero_si512(); P];
        for (p, b) in b.iter_mut().enumerate() {
            // SAFETY: the block holds `kp` values for every column of its `P` panels.
            *b = unsafe { _mm512_loadu_si512(t.b.add((step * P + p) * 4 * PANEL).cast()) };
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: the quantized input is padded to whole tiles of `kp` values per row.
            let four = unsafe { t.a.add(r * op.kp + step * 4).cast::<i32>().read_unaligned() };
            let a = _mm512_set1_epi32(four);
            for (acc, &b) in acc.iter_mut().zip(&b) {
                *acc = _mm512_dpbusd_epi32(*acc, a, b);
            }
        }
    }
    // Loops of fixed length (unrolled), so that the sums stay in registers.
    for p in 0..P {
        if p * PANEL < t.cols {
            // SAFETY: the tile's own operands.
            let rescale = unsafe { Rescale::of(&op, &t, p) };
            for (r, row) in acc.iter().enumerate() {
                if r < t.rows {
                    // SAFETY: as above.
                    unsafe { rescale.store(&op, &t, r, row[p]) };
                }
            }
        }
    }
}

/// One tile as the other kernels compute it, in plain integer arithmetic.
///
/// # Safety
/// As for [`tile_vnni`].
unsafe fn tile_portable(op: Operands, t: Tile, panels: usize) {
    for r in 0..t.rows {
        for col in 0..t.cols {
            let (panel, lane) = (col / PANEL, col % PANEL);
            let mut sum = 0i32;
            for i in 0..op.kp {
                // SAFETY: inside the padded rows and panels.
                let (a, b) = unsafe {
                    (
                        *t.a.add(r * op.kp + i),
                        *t.b.add(((i / 4) * panels + panel) * 4 * PANEL + lane * 4 + i % 4),
                    )
                };
                sum = sum.wrapping_add(i32::from(a) * i32::from(b));
            }
            let at = t.first * PANEL + col;
            // SAFETY: inside the padded per-column vectors and C's real columns.
            unsafe {
                let exact = sum.wrapping_sub(op.a0.wrapping_mul(*op.sums.add(at)));
                let mut v = exact as f32 * *op.scale.add(at);
                if !op.bias.is_null() {
                    v += *op.bias.add(at);
                }
                *t.c.add(r * op.n + col) = v;
            }
        }
    }
}

impl Op for Int8Product {
    fn name(&self) -> StaticName {
        "Int8Product".into()
    }
    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{} x {}, zero point {}{}, {:?} kernel",
            self.k,
            self.n,
            self.a0,
            if self.bias.is_some() { ", bias" } else { "" },
            self.kernel
        )])
    }
    op_as_typed_op!();
}

impl Int8Product {
    /// Writes the product of the `k`-long rows `x` into `c` (`n`-long rows), in `parts` parts
    /// on the plan's team.
    fn compute(&self, x: &[f32], c: &mut [f32], parts: usize) -> TractResult<()> {
        let (k, n) = (self.k, self.n);
        let m = x.len() / k;
        ensure!(
            x.len() == m * k && c.len() == m * n,
            "Int8Product of {} inputs into {} outputs",
            x.len(),
            c.len()
        );
        let kp = round_up(k, STEP);
        let tile_rows = self.kernel.rows();
        let mut a = vec![0u8; round_up(m, tile_rows) * kp];
        let in_scale = self.in_scale.cast_to_scalar::<f32>()?;
        let zero = i32::from(self.in_zero);
        let quantize = |from: usize, rows: &mut [u8]| {
            for (row, q) in (from..m).zip(rows.chunks_exact_mut(kp)) {
                quantize_u8(&x[row * k..row * k + k], &mut q[..k], in_scale, zero);
            }
        };
        let packed = self.packed.try_as_plain_ram()?;
        let sums = self.column_sums.try_as_plain_ram()?;
        let scale = self.scale.try_as_plain_ram()?;
        let bias = self
            .bias
            .as_ref()
            .map(|b| b.try_as_plain_ram())
            .transpose()?;
        let bias = bias.as_ref().map(|b| b.as_slice::<f32>()).transpose()?;
        let (packed, sums, scale) = (
            packed.as_slice::<i8>()?,
            sums.as_slice::<i32>()?,
            scale.as_slice::<f32>()?,
        );
        let width = n.div_ceil(PANEL) * PANEL;
        ensure!(
            packed.len() == width * kp && sums.len() == width && scale.len() == width,
            "Int8Product's packed operands do not match {k} x {n}"
        );
        let operands = |a: &[u8], c: &mut [f32]| Operands {
            kernel: self.kernel,
            a: a.as_ptr(),
            kp,
            m,
            packed: packed.as_ptr(),
            sums: sums.as_ptr(),
            scale: scale.as_ptr(),
            bias: bias.map_or(std::ptr::null(), <[f32]>::as_ptr),
            a0: self.a0,
            c: c.as_mut_ptr(),
            n,
        };
        let blocks = n.div_ceil(PANEL * self.kernel.panels());
        if parts > 1 {
            crate::team::rows_mut(&mut a[..m * kp], kp, m * k, |first, rows| {
                quantize(first, rows);
                Ok(())
            })?;
        } else {
            quantize(0, &mut a);
        }
        let at = operands(&a, c);
        let per_part = blocks.div_ceil(parts);
        crate::team::run(blocks.div_ceil(per_part), |i| {
            for block in i * per_part..(i * per_part + per_part).min(blocks) {
                // SAFETY: part `i` writes its own blocks' columns of C.
                unsafe { at.block(block) }
            }
        });
        Ok(())
    }
}

impl Int8Product {
    /// The output's shape for an input of `shape`: its kept axes, then the columns.
    fn output_shape(&self, shape: &[usize]) -> TractResult<TVec<usize>> {
        let kept = shape.len().checked_sub(self.summed);
        let Some(kept) = kept.filter(|&kept| shape[kept..].iter().product::<usize>() == self.k)
        else {
            bail!(
                "Int8Product summing {} values over the last {} axes of an input of shape {shape:?}",
                self.k,
                self.summed
            );
        };
        Ok(shape[..kept].iter().copied().chain([self.n]).collect())
    }
}

impl EvalOp for Int8Product {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let shape = self.output_shape(input.shape())?;
        let split = (self.n, SPLIT_MIN_PRODUCTS);
        let out = eval_rows("Int8Product", &input, &shape, split, |x, c, parts| {
            self.compute(x, c, parts)
        })?;
        Ok(tvec!(out))
    }
}

impl TypedOp for Int8Product {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = inputs[0];
        ensure!(
            x.datum_type == DatumType::F32,
            "Int8Product of {:?} input",
            x.datum_type
        );
        let shape = x
            .shape
            .as_concrete()
            .context("Int8Product needs a concrete input shape")?;
        Ok(tvec!(f32::fact(self.output_shape(shape)?)))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let rows: TDim = inputs[0].shape.iter().rev().skip(self.summed).product();
        Ok(tvec!((
            Cost::FMA(DatumType::I32),
            rows * (self.k * self.n).to_dim()
        )))
    }
    as_op!();
}

/// The constant input `slot` of `node`, where it holds a single value.
fn scalar(model: &TypedModel, node: &TypedNode, slot: usize) -> Option<Tensor> {
    let fact = model.outlet_fact(node.inputs[slot]).ok()?;
    let konst = fact.konst.as_ref()?;
    (konst.len() == 1).then(|| konst.clone().into_tensor())
}

/// Whether the constant scalar input `slot` of `node` equals `value`.
fn scalar_is(model: &TypedModel, node: &TypedNode, slot: usize, value: f64) -> bool {
    scalar(model, node, slot)
        .and_then(|t| t.cast_to_scalar::<f64>().ok())
        .is_some_and(|v| v == value)
}

/// The weights of a quantized `einsum` of input facts `a` and `b` that multiplies rows by a
/// constant i8 matrix: A's last `s` axes summed with the `s` before B's last, in the same order,
/// B's last axis the output's last, A's other axes kept in place, B's others of one element.
/// Returns the weights as a `k` x `n` matrix, with `s`.
fn weights_of(
    einsum: &EinSum,
    a: &TypedFact,
    b: &TypedFact,
) -> Option<(Vec<i8>, usize, usize, usize)> {
    let konst = b.konst.as_ref()?;
    let a_shape = a.shape.as_concrete()?;
    let (ar, br) = (a_shape.len(), konst.rank());
    let shape = konst.shape();
    if konst.datum_type() != DatumType::I8 || ar == 0 || br < 2 {
        return None;
    }
    let summed = einsum
        .axes
        .iter_all_axes()
        .filter(|axis| {
            axis.inputs[0].len() == 1 && axis.inputs[1].len() == 1 && axis.outputs[0].is_empty()
        })
        .count();
    if summed == 0 || summed > ar || summed >= br {
        return None;
    }
    let (kept, lead) = (ar - summed, br - 1 - summed);
    for axis in einsum.axes.iter_all_axes() {
        let (ia, ib, out) = (&axis.inputs[0], &axis.inputs[1], &axis.outputs[0]);
        let fits = match (ia.as_slice(), ib.as_slice(), out.as_slice()) {
            ([p], [q], []) => *p >= kept && *q >= lead && p - kept == q - lead,
            ([], [q], [o]) => *q == br - 1 && *o == kept,
            ([p], [], [o]) => p == o && *p < kept,
            ([p], [q], [o]) => p == o && *p < kept && shape[*q] == 1,
            ([], [q], []) => shape[*q] == 1,
            _ => false,
        };
        if !fits {
            return None;
        }
    }
    let k: usize = a_shape[kept..].iter().product();
    let n = shape[br - 1];
    if shape[..lead].iter().any(|&d| d != 1) || shape[lead..br - 1].iter().product::<usize>() != k {
        return None;
    }
    let plain = konst.try_as_plain_ram().ok()?;
    Some((plain.as_slice::<i8>().ok()?.to_vec(), k, n, summed))
}

/// Replaces each chain of [`RowQuantizeU8`], a quantized `EinSum` by constant i8 weights (no
/// weight zero point, unit scales, no bias) and [`RowRescale`] by one [`Int8Product`].
pub fn fuse_int8_products(model: &mut TypedModel) -> TractResult<()> {
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(einsum) = node.op_as::<EinSum>() else {
            continue;
        };
        if einsum.q_params != Some(DatumType::I32) || node.inputs.len() != 9 {
            continue;
        }
        let source = model.node(node.inputs[0].node);
        let Some(quantize) = source.op_as::<RowQuantizeU8>() else {
            continue;
        };
        let units = [(2, 0.0), (4, 1.0), (5, 0.0), (6, 1.0), (7, 0.0), (8, 1.0)];
        if !units
            .iter()
            .all(|&(slot, v)| scalar_is(model, node, slot, v))
        {
            continue;
        }
        let Some(a0) = scalar(model, node, 3).and_then(|t| t.cast_to_scalar::<i32>().ok()) else {
            continue;
        };
        let Some(next) = sole_successor(model, id.into()) else {
            continue;
        };
        let Some(rescale) = next.op_as::<RowRescale>() else {
            continue;
        };
        let (a, b) = (
            model.outlet_fact(node.inputs[0])?,
            model.outlet_fact(node.inputs[1])?,
        );
        let Some((weights, k, n, summed)) = weights_of(einsum, a, b) else {
            continue;
        };
        let op = Int8Product::new(
            quantize,
            a0,
            &weights,
            (k, summed),
            n,
            rescale,
            Kernel::best(),
        )?;
        let mut patch = TypedModelPatch::default();
        let x = patch.tap_model(model, source.inputs[0])?;
        let out = patch.wire_node(&node.name, op, &[x])?[0];
        patch.shunt_outside(model, next.id.into(), out)?;
        patch.apply(model)?;
    }
    model.compact()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_hir::tract_core::axes::AxesMapping;
    use tract_onnx::tract_hir::tract_core::ops::cast::Cast;
    use tract_onnx::tract_hir::tract_core::ops::element_wise::ElementWiseOp;
    use tract_onnx::tract_hir::tract_core::ops::math::{add, mul};
    use tract_onnx::tract_hir::tract_core::ops::quant::QuantizeLinearU8;

    use crate::intops::replace_int8_epilogues;
    use crate::testing::{run_optimized, values};

    /// `x` of shape `[1, m, k]` through QuantizeLinear, MatMulInteger by `k` x `n` weights
    /// (full-range i8) and the rescale, as tract wires a static int8 bundle's product: tract's
    /// plan on `threads` threads, and the same with the chain fused.
    fn both(
        m: usize,
        k: usize,
        n: usize,
        a0: u8,
        bias: bool,
        threads: usize,
    ) -> (Tensor, Tensor, bool) {
        let product = ("bmk,bkn,,,,,,,->bmn", &[1, m, k][..], &[1, k, n][..]);
        both_of(product, a0, bias, threads)
    }

    /// As [`both`], for the product `expr` of an input and weights of these shapes.
    fn both_of(
        (expr, x_shape, w_shape): (&str, &[usize], &[usize]),
        a0: u8,
        bias: bool,
        threads: usize,
    ) -> (Tensor, Tensor, bool) {
        let (len, n) = (x_shape.iter().product(), w_shape[w_shape.len() - 1]);
        let out_rank = expr.split("->").nth(1).unwrap().len();
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact(x_shape)).unwrap();
        let q = QuantizeLinearU8 {
            scale: 37.0,
            zero_point: a0,
        };
        let q = model
            .wire_node("q", ElementWiseOp(Box::new(q), None), &[x])
            .unwrap()[0];
        let w_len = w_shape.iter().product();
        let weights: Vec<i8> = (0..w_len).map(|i| ((i * 7919 + 13) % 255) as i8).collect();
        let w = model
            .add_const("w", Tensor::from_shape(w_shape, &weights).unwrap())
            .unwrap();
        let mut inputs = vec![q, w];
        for (name, t) in [
            ("bias", tensor0(0i32)),
            ("a0", tensor0(a0)),
            ("a_scale", tensor0(1f32)),
            ("b0", tensor0(0i8)),
            ("b_scale", tensor0(1f32)),
            ("c0", tensor0(0i32)),
            ("c_scale", tensor0(1f32)),
        ] {
            inputs.push(model.add_const(name, t).unwrap());
        }
        let axes: AxesMapping = expr.parse().unwrap();
        let p = model
            .wire_node(
                "p",
                EinSum::newq(axes, DatumType::I32, DatumType::I32),
                &inputs,
            )
            .unwrap();
        let f = model
            .wire_node("cast", Cast { to: DatumType::F32 }, &p)
            .unwrap();
        let scale: Vec<f32> = (0..n).map(|c| 1e-4 * (c as f32 + 0.37)).collect();
        let mut per_column = vec![1; out_rank];
        per_column[out_rank - 1] = n;
        let s = model
            .add_const("s", Tensor::from_shape(&per_column, &scale).unwrap())
            .unwrap();
        let mut y = model.wire_node("mul", mul(), &[f[0], s]).unwrap();
        if bias {
            let terms: Vec<f32> = (0..n).map(|c| c as f32 / 7.0 - 3.0).collect();
            let b = model
                .add_const("b", Tensor::from_shape(&per_column, &terms).unwrap())
                .unwrap();
            y = model.wire_node("add", add(), &[y[0], b]).unwrap();
        }
        model.select_output_outlets(&y).unwrap();
        let mut model = model.into_decluttered().unwrap();
        replace_int8_epilogues(&mut model).unwrap();
        let input = Tensor::from_shape(x_shape, &values(len, 1)).unwrap();
        let reference = run_optimized(model.clone(), &input, threads);
        fuse_int8_products(&mut model).unwrap();
        let fused = model.nodes().iter().any(|n| n.op_is::<Int8Product>());
        (reference, run_optimized(model, &input, threads), fused)
    }

    #[test]
    fn fused_products_match_tract_bit_for_bit() {
        // Rows and columns that fill whole tiles and that leave remainders, sums not a multiple
        // of 4, zero points 128 (the static scheme's) and others.
        for (m, k, n, a0, bias) in [
            (6, 64, 64, 128, true),
            (1, 8, 16, 128, false),
            (7, 37, 65, 128, true),
            (217, 96, 130, 128, true),
            (13, 64, 200, 0, true),
            (5, 33, 17, 255, false),
        ] {
            let (reference, ours, fused) = both(m, k, n, a0, bias, 1);
            assert!(fused, "{m} x {k} x {n} was not fused");
            assert_eq!(ours, reference, "{m} x {k} x {n}, zero point {a0}");
        }
    }

    #[test]
    fn every_kernel_gives_the_integer_sums_rescaled() {
        for (m, k, n, a0) in [(13, 37, 70, 128), (45, 130, 33, 3), (64, 192, 64, 128)] {
            kernels_on(m, k, n, a0);
        }
    }

    /// Each kernel this CPU runs against plain integer sums, on an `m` x `k` by `k` x `n` product.
    fn kernels_on(m: usize, k: usize, n: usize, a0: i32) {
        let x = values(m * k, 5);
        let weights: Vec<i8> = (0..k * n)
            .map(|i| ((i * 104_729 + 7) % 255) as i8)
            .collect();
        let scale: Vec<f32> = (0..n).map(|c| 1e-3 / (c as f32 + 1.5)).collect();
        let bias: Vec<f32> = (0..n).map(|c| c as f32 - 20.0).collect();
        let quantize = RowQuantizeU8 {
            scale: tensor0(41.0f32).into_arc_tensor(),
            zero_point: 128,
        };
        let rescale = RowRescale {
            scale: tensor1(&scale).into_arc_tensor(),
            bias: Some(tensor1(&bias).into_arc_tensor()),
        };
        let mut q = vec![0u8; m * k];
        quantize_u8(&x, &mut q, 41.0, 128);
        let want: Vec<f32> = (0..m * n)
            .map(|i| {
                let (r, c) = (i / n, i % n);
                let sum: i32 = (0..k)
                    .map(|j| (i32::from(q[r * k + j]) - a0) * i32::from(weights[j * n + c]))
                    .sum();
                sum as f32 * scale[c] + bias[c]
            })
            .collect();
        let mut kernels = vec![Kernel::Portable];
        if vnni() {
            kernels.push(Kernel::Vnni);
        }
        if amx_enabled() {
            kernels.push(Kernel::Amx);
        }
        let team = crate::team::Team::new(3).unwrap();
        for kernel in kernels {
            let op =
                Int8Product::new(&quantize, a0, &weights, (k, 1), n, &rescale, kernel).unwrap();
            for parts in [1, 3] {
                let mut c = vec![f32::NAN; m * n];
                crate::team::with(&team, || op.compute(&x, &mut c, parts)).unwrap();
                assert_eq!(c, want, "{kernel:?} kernel, {m} x {k} x {n}, {parts} parts");
            }
        }
    }

    #[test]
    fn products_summed_over_heads_match_tract_bit_for_bit() {
        // An attention output projection: each row's heads and their values summed at once.
        for threads in [1, 2] {
            let product = ("mak,akn,,,,,,,->mn", &[217, 12, 64][..], &[12, 64, 96][..]);
            let (reference, ours, fused) = both_of(product, 128, true, threads);
            assert!(fused);
            assert_eq!(ours, reference, "on {threads} threads");
        }
        // The heads are not the input's trailing axes: left to tract.
        let product = ("amk,akn,,,,,,,->mn", &[4, 21, 16][..], &[4, 16, 24][..]);
        let (reference, ours, fused) = both_of(product, 128, true, 1);
        assert!(!fused);
        assert_eq!(ours, reference);
    }

    #[test]
    fn threaded_fused_products_match_tract_bit_for_bit() {
        for (m, k, n) in [(217, 128, 192), (97, 256, 100)] {
            let (reference, ours, fused) = both(m, k, n, 128, true, 2);
            assert!(fused);
            assert_eq!(ours, reference, "{m} x {k} x {n} on 2 threads");
        }
    }
}
