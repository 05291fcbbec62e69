//! Block-wise int8 quantization (Q8_0-like: 32 values share one scale).
//!
//! Weights go through the one block quantizer the wire's tensors use too,
//! [`odin_format::int8`]: `d = f16(max|x| / 127)`, `q = round_ties_even(x * (1/d))`
//! in [-127, 127]. Keeping d representable in f16 makes the blocks exactly
//! GGUF's Q8_0, so an export carries the very weights we run.
//! Activations use an f32 scale: they are quantized once per matrix-vector
//! product and never stored, by [`QVec`]'s vectorized loop with the same rounding.
//!
//! -128 never appears, so `|q|` fits in an i8 and the SIMD kernels' sign
//! tricks stay exact.

use half::f16;

use crate::pages::Store;

pub use odin_format::int8::{quantize_block, round_even};

/// Values per quantization block (the shared quantizer's block).
pub const BLOCK: usize = odin_format::int8::BLOCK;
/// Rows per tile of a [`QMatrix`]: the unit every kernel computes at once.
pub const TILE: usize = 16;
/// Bytes of one row's slice of one block inside a tile group (the SIMD lanes' unit).
const GROUP: usize = 4;

/// `round_even(y) as i8` for y in [-127, 127] or NaN (code 0), without a float-to-int conversion.
///
/// LLVM turns Rust's saturating casts into one scalar conversion per value, which made
/// quantizing the activations cost as much as a third of the kernels on odin-tiny. Adding
/// 1.5·2^23 rounds y to an integer (as [`round_even`] does) and leaves that integer in the low
/// bits of the sum, which plain integer lanes read off.
#[inline(always)]
fn code_of(y: f32) -> i8 {
    const MAGIC: f32 = 12_582_912.0;
    let y = if y.is_nan() { 0.0 } else { y };
    ((y + MAGIC).to_bits() as i32 - MAGIC.to_bits() as i32) as i8
}

/// A weight matrix [rows, cols] in int8 blocks, stored tile-interleaved.
///
/// Layout: for tile t (16 rows), block b (32 columns), group g (4 columns)
/// and row i of the tile, the 4 codes sit at `((t*nb + b)*8 + g)*64 + i*4`.
/// One SIMD load then covers the same 4 columns of 16 (or 8) rows, so the
/// kernels accumulate each row in its own lane and never reduce horizontally.
/// Scales sit at `(t*nb + b)*16 + i`. Rows past `rows` are zero padding.
#[derive(Debug, Clone, PartialEq)]
pub struct QMatrix {
    rows: usize,
    cols: usize,
    codes: Store<i8>,
    /// f16 bits: the scales are f16-exact by construction, and reading half the
    /// bytes matters when decoding is bound by memory bandwidth.
    scales: Store<u16>,
}

impl QMatrix {
    /// Quantize a row-major f32 matrix. `cols` must be a multiple of 32.
    pub fn quantize(data: &[f32], rows: usize, cols: usize) -> Self {
        let (codes, scales) = quantize_rows(data, rows, cols);
        Self::from_rows(&codes, &scales, rows, cols)
    }

    /// Build from row-major codes [rows, cols] and f16-exact scales [rows, cols/32] (the file layout).
    pub fn from_rows(codes: &[i8], scales: &[f32], rows: usize, cols: usize) -> Self {
        let nb = cols / BLOCK;
        let tiles = rows.div_ceil(TILE);
        let mut tc = vec![0i8; tiles * TILE * cols];
        let mut ts = vec![0u16; tiles * TILE * nb];
        for r in 0..rows {
            let (t, i) = (r / TILE, r % TILE);
            for b in 0..nb {
                ts[(t * nb + b) * TILE + i] = f16::from_f32(scales[r * nb + b]).to_bits();
                for g in 0..BLOCK / GROUP {
                    let src = r * cols + b * BLOCK + g * GROUP;
                    let dst = ((t * nb + b) * (BLOCK / GROUP) + g) * TILE * GROUP + i * GROUP;
                    tc[dst..dst + GROUP].copy_from_slice(&codes[src..src + GROUP]);
                }
            }
        }
        Self { rows, cols, codes: Store::Own(tc), scales: Store::Own(ts) }
    }

    /// Back to row-major codes and scales (the file layout).
    pub fn to_rows(&self) -> (Vec<i8>, Vec<f32>) {
        let nb = self.cols / BLOCK;
        let mut codes = vec![0i8; self.rows * self.cols];
        let mut scales = vec![0f32; self.rows * nb];
        for r in 0..self.rows {
            let (t, i) = (r / TILE, r % TILE);
            for b in 0..nb {
                scales[r * nb + b] = f16::from_bits(self.scales[(t * nb + b) * TILE + i]).to_f32();
                for g in 0..BLOCK / GROUP {
                    let dst = r * self.cols + b * BLOCK + g * GROUP;
                    let src = ((t * nb + b) * (BLOCK / GROUP) + g) * TILE * GROUP + i * GROUP;
                    codes[dst..dst + GROUP].copy_from_slice(&self.codes[src..src + GROUP]);
                }
            }
        }
        (codes, scales)
    }

    /// Output rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Number of 16-row tiles (the last may be padded).
    pub fn tiles(&self) -> usize {
        self.rows.div_ceil(TILE)
    }

    /// Blocks per row.
    pub fn blocks(&self) -> usize {
        self.cols / BLOCK
    }

    /// Codes of tile `t`: `blocks() * 512` bytes.
    pub fn tile_codes(&self, t: usize) -> &[i8] {
        let n = self.blocks() * TILE * BLOCK;
        &self.codes[t * n..(t + 1) * n]
    }

    /// Scales of tile `t` as f16 bits: `blocks() * 16` values, block-major.
    pub fn tile_scales(&self, t: usize) -> &[u16] {
        let n = self.blocks() * TILE;
        &self.scales[t * n..(t + 1) * n]
    }

    /// Bytes the matrix occupies (codes and f16 scales, padding included).
    pub fn bytes(&self) -> usize {
        self.codes.len() + self.scales.len() * 2
    }

    /// Put the codes of `ms`, in this order (the order a token reads them), into one buffer on
    /// huge pages, and their scales into another (see [`crate::pages`]).
    ///
    /// A set smaller than one huge page stays as it is: it could not save a TLB miss, and
    /// would take up a whole 2 MiB.
    pub fn pack(ms: &mut [&mut QMatrix]) {
        if ms.iter().map(|m| m.codes.len()).sum::<usize>() < crate::pages::HUGE {
            return;
        }
        crate::pages::pack(&mut ms.iter_mut().map(|m| &mut m.codes).collect::<Vec<_>>());
        crate::pages::pack(&mut ms.iter_mut().map(|m| &mut m.scales).collect::<Vec<_>>());
    }
}

/// Matrices of one width stacked row-wise, in the file layout: codes and scales of all their rows.
pub fn stack_rows(ms: &[&QMatrix]) -> (Vec<i8>, Vec<f32>) {
    let (mut codes, mut scales) = (Vec::new(), Vec::new());
    for m in ms {
        let (c, s) = m.to_rows();
        codes.extend(c);
        scales.extend(s);
    }
    (codes, scales)
}

/// Quantize a row-major matrix to codes [rows, cols] and scales [rows, cols/32].
pub fn quantize_rows(data: &[f32], rows: usize, cols: usize) -> (Vec<i8>, Vec<f32>) {
    let nb = cols / BLOCK;
    let mut codes = vec![0i8; rows * cols];
    let mut scales = vec![0f32; rows * nb];
    for (i, (x, q)) in data.chunks_exact(BLOCK).zip(codes.chunks_exact_mut(BLOCK)).enumerate() {
        scales[i] = quantize_block(x, q).to_f32();
    }
    (codes, scales)
}

/// An activation vector quantized per block, ready for the kernels.
#[derive(Debug, Clone, Default)]
pub struct QVec {
    /// Codes in [-127, 127].
    pub codes: Vec<i8>,
    /// One f32 scale per block.
    pub scales: Vec<f32>,
}

impl QVec {
    /// Quantize `x` (length a multiple of 32) into `self`, reusing its buffers.
    #[inline(always)]
    pub fn quantize(&mut self, x: &[f32]) {
        let nb = x.len() / BLOCK;
        self.codes.resize(x.len(), 0);
        self.scales.resize(nb, 0.0);
        for ((xs, qs), scale) in x.chunks_exact(BLOCK).zip(self.codes.chunks_exact_mut(BLOCK)).zip(&mut self.scales) {
            // The largest magnitude, 16 lanes at a time so it vectorizes: a maximum is the
            // same whatever the order it is taken in, so this equals a left-to-right fold.
            // Every |v| is +0 or more (or NaN, which `max` skips), so halving the lanes
            // pairwise gives the same maximum too, without a chain of 16 dependent steps.
            let mut lanes = [0f32; 16];
            for part in xs.chunks_exact(16) {
                lanes.iter_mut().zip(part).for_each(|(m, v)| *m = m.max(v.abs()));
            }
            let mut w = lanes.len();
            while w > 1 {
                w /= 2;
                for i in 0..w {
                    lanes[i] = lanes[i].max(lanes[i + w]);
                }
            }
            let amax = lanes[0].max(0.0);
            let d = amax / 127.0;
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            for (q, v) in qs.iter_mut().zip(xs) {
                *q = code_of((v * id).clamp(-127.0, 127.0));
            }
            *scale = d;
        }
    }

    /// A quantized copy of `x`.
    #[inline(always)]
    pub fn from_f32(x: &[f32]) -> Self {
        let mut v = Self::default();
        v.quantize(x);
        v
    }
}

/// Row-wise int8 storage for lookups (the embedding): row r is `codes[r*cols..] * scales[r*nb + b]`.
#[derive(Debug, Clone, PartialEq)]
pub struct QRows {
    /// Rows.
    pub rows: usize,
    /// Columns (a multiple of 32).
    pub cols: usize,
    /// Codes [rows, cols].
    pub codes: Vec<i8>,
    /// Scales [rows, cols/32], each exactly representable in f16.
    pub scales: Vec<f32>,
}

impl QRows {
    /// Quantize a row-major f32 matrix.
    pub fn quantize(data: &[f32], rows: usize, cols: usize) -> Self {
        let (codes, scales) = quantize_rows(data, rows, cols);
        Self { rows, cols, codes, scales }
    }

    /// Dequantize row `r` into `out`.
    pub fn row(&self, r: usize, out: &mut [f32]) {
        let nb = self.cols / BLOCK;
        for (j, o) in out.iter_mut().enumerate().take(self.cols) {
            *o = f32::from(self.codes[r * self.cols + j]) * self.scales[r * nb + j / BLOCK];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn tiling_round_trips(rows in 1usize..40, nb in 1usize..4, seed in 0u64..1000) {
            let cols = nb * BLOCK;
            let data: Vec<f32> = (0..rows * cols).map(|i| ((i as u64 * 2654435761 + seed) % 1000) as f32 / 100.0 - 5.0).collect();
            let m = QMatrix::quantize(&data, rows, cols);
            let (codes, scales) = quantize_rows(&data, rows, cols);
            prop_assert_eq!(m.to_rows(), (codes, scales));
            prop_assert_eq!(m.tiles(), rows.div_ceil(TILE));
        }
    }

    /// QVec::quantize as first written: a left-to-right maximum and a direct cast.
    fn quantize_reference(x: &[f32]) -> (Vec<i8>, Vec<f32>) {
        let (mut codes, mut scales) = (Vec::new(), Vec::new());
        for xs in x.chunks_exact(BLOCK) {
            let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            codes.extend(xs.iter().map(|v| round_even((v * id).clamp(-127.0, 127.0)) as i8));
            scales.push(d);
        }
        (codes, scales)
    }

    /// `QVec::from_f32(x)` as compiled inside AVX2 and AVX-512 code (as `Exec::quantize` runs it),
    /// for each of the two this machine has.
    fn wide_builds(x: &[f32]) -> Vec<QVec> {
        #[allow(unused_mut)]
        let mut out = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx2")]
            unsafe fn avx2(x: &[f32]) -> QVec {
                QVec::from_f32(x)
            }
            #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
            unsafe fn avx512(x: &[f32]) -> QVec {
                QVec::from_f32(x)
            }
            if is_x86_feature_detected!("avx2") {
                // SAFETY: detected just above.
                out.push(unsafe { avx2(x) });
            }
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
            {
                // SAFETY: detected just above.
                out.push(unsafe { avx512(x) });
            }
        }
        out
    }

    #[test]
    fn activation_quantization_handles_special_values_as_the_reference_does() {
        let sub = f32::from_bits(1);
        let blocks: [[f32; 4]; 6] = [
            [f32::NAN, 1.0, -2.0, 0.5],
            [f32::INFINITY, 1.0, -1.0, 0.0],
            [f32::NEG_INFINITY, f32::NAN, 3.0, -0.0],
            [0.0, -0.0, 0.0, -0.0],
            [sub, -sub, sub * 3.0, 0.0],
            [f32::NAN, f32::NAN, f32::NAN, f32::NAN],
        ];
        // Each pattern repeated across a whole block of 32.
        let x: Vec<f32> = blocks.iter().flat_map(|b| b.iter().cycle().take(BLOCK).copied()).collect();
        let want = quantize_reference(&x);
        let bits = |v: &[f32]| v.iter().map(|s| s.to_bits()).collect::<Vec<_>>();
        let mut all = wide_builds(&x);
        all.push(QVec::from_f32(&x));
        for q in all {
            assert_eq!(q.codes, want.0);
            assert_eq!(bits(&q.scales), bits(&want.1));
        }
    }

    proptest! {
        #[test]
        fn activation_quantization_matches_the_reference_in_every_lane_width(
            bits in proptest::collection::vec(any::<u32>(), 0..4),
            x in proptest::collection::vec(-1e4f32..1e4, 32 * 4),
            at in proptest::collection::vec(0usize..128, 0..4),
        ) {
            // Ordinary values with a few arbitrary bit patterns (NaN, infinities, subnormals) put in.
            let mut x = x;
            for (b, i) in bits.iter().zip(&at) {
                x[*i] = f32::from_bits(*b);
            }
            let want = quantize_reference(&x);
            let mut q = QVec::default();
            q.quantize(&x);
            prop_assert_eq!((&q.codes, q.scales.iter().map(|s| s.to_bits()).collect::<Vec<_>>()),
                (&want.0, want.1.iter().map(|s| s.to_bits()).collect::<Vec<_>>()));
            for w in wide_builds(&x) {
                prop_assert_eq!(&w.codes, &want.0);
                prop_assert_eq!(w.scales.iter().map(|s| s.to_bits()).collect::<Vec<_>>(),
                    want.1.iter().map(|s| s.to_bits()).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn codes_come_out_as_a_cast_would_give_them() {
        // Every 97th f32 bit pattern from 0 to 127.0, both signs, plus the halfway points.
        let mut ys: Vec<f32> = (0..=0x42fe_0000u32).step_by(97).map(f32::from_bits).collect();
        ys.extend((0..=254).map(|i| i as f32 / 2.0));
        for y in ys.iter().flat_map(|y| [*y, -*y]) {
            assert_eq!(code_of(y), round_even(y) as i8, "{y}");
        }
        assert_eq!(code_of(f32::NAN), 0);
    }

    #[test]
    fn packing_moves_matrices_without_changing_them() {
        let data = |rows: usize, cols: usize, k: usize| -> Vec<f32> {
            (0..rows * cols).map(|i| ((i * 7 + k) % 255) as f32 - 127.0).collect()
        };
        // Two matrices of 2 MiB + 64 KiB of codes: together over one huge page, so packed.
        let (mut a, mut b) =
            (QMatrix::quantize(&data(2048, 1024, 1), 2048, 1024), QMatrix::quantize(&data(64, 1024, 2), 64, 1024));
        let (a0, b0) = (a.clone(), b.clone());
        QMatrix::pack(&mut [&mut a, &mut b]);
        assert!(matches!(a.codes, Store::Part(..)) && matches!(b.scales, Store::Part(..)));
        assert_eq!((&a, &b), (&a0, &b0));
        assert_eq!((a.to_rows(), b.tile_codes(3)), (a0.to_rows(), b0.tile_codes(3)));
        // A set under one huge page stays where it is.
        let mut small = QMatrix::quantize(&data(16, 64, 3), 16, 64);
        QMatrix::pack(&mut [&mut small]);
        assert!(matches!(small.codes, Store::Own(_)));
    }

    #[test]
    fn zero_activation_blocks_have_zero_scale_and_codes() {
        let v = QVec::from_f32(&[0.0; 64]);
        assert_eq!(v.scales, vec![0.0, 0.0]);
        assert!(v.codes.iter().all(|&c| c == 0));
    }

    #[test]
    fn the_largest_value_maps_to_127() {
        let mut x = [0.5f32; 32];
        x[3] = -2.0;
        let v = QVec::from_f32(&x);
        assert_eq!(v.codes[3], -127);
        assert_eq!(v.codes[0], 32); // 0.5 / (2/127) = 31.75
    }
}
