//! The int8 dot-product kernels: one 16-row tile of a [`QMatrix`] times one
//! quantized vector, for every instruction set, all bit-identical.
//!
//! Why exactness holds: the products of a block are summed in i32, which is
//! exact in any order (|sum| <= 32 * 127 * 127 < 2^24, so the conversion to
//! f32 is exact too). Across blocks every kernel then performs, per row and
//! in block order, the same two IEEE operations
//! `acc = acc + (isum as f32) * (d_w * d_x)`, with no fused multiply-add.
//! The tile layout puts each row in its own SIMD lane, so no kernel ever
//! reduces horizontally in floating point.

use crate::error::{EngineError, Result};
use crate::quant::{QMatrix, QVec, BLOCK, TILE};

/// An instruction set the engine can run its dot products on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Portable Rust, the reference every other kernel must match bit for bit.
    Scalar,
    /// x86-64 AVX2 (with F16C for the scales): `vpmaddubsw` + `vpmaddwd`, 8 rows per register.
    Avx2,
    /// x86-64 AVX-512 with VNNI: `vpdpbusd`, 16 rows per register.
    Avx512Vnni,
    /// wasm32 simd128 (chosen at compile time: wasm has no run-time detection).
    Simd128,
    /// AArch64 NEON (part of the base architecture): `smull` + pairwise adds, 4 rows per register.
    Neon,
}

impl Kernel {
    /// Every kernel, fastest last.
    pub const ALL: [Kernel; 5] = [Kernel::Scalar, Kernel::Simd128, Kernel::Neon, Kernel::Avx2, Kernel::Avx512Vnni];

    /// The name used by `ODIN_KERNEL` and the benchmarks.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Scalar => "scalar",
            Kernel::Avx2 => "avx2",
            Kernel::Avx512Vnni => "avx512vnni",
            Kernel::Simd128 => "simd128",
            Kernel::Neon => "neon",
        }
    }

    /// Parse a kernel name.
    pub fn from_name(name: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name).ok_or_else(|| {
            EngineError::BadInput(format!("unknown kernel `{name}`; use scalar, avx2, avx512vnni, neon or simd128"))
        })
    }

    /// Whether this machine (or this wasm build) can run the kernel.
    pub fn is_supported(self) -> bool {
        match self {
            Kernel::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c"),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => {
                // VL too: the element-wise work around the kernel is compiled with it.
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            Kernel::Simd128 => true,
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon => true,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// Kernels this machine can run.
    pub fn supported() -> Vec<Kernel> {
        Self::ALL.into_iter().filter(|k| k.is_supported()).collect()
    }

    /// The fastest supported kernel, or the one `ODIN_KERNEL` names.
    pub fn detect() -> Result<Self> {
        if let Ok(name) = std::env::var("ODIN_KERNEL") {
            let k = Self::from_name(&name)?;
            if !k.is_supported() {
                return Err(EngineError::BadInput(format!("ODIN_KERNEL={name} is not supported on this machine")));
            }
            return Ok(k);
        }
        Ok(Self::supported().last().copied().unwrap_or(Kernel::Scalar))
    }

    /// `out[i] = row (16t + i) of m · x` for the 16 rows of tile `t`.
    ///
    /// Callers obtain kernels only through [`Kernel::detect`] or after
    /// checking [`Kernel::is_supported`]; an unsupported one falls back to scalar.
    pub fn tile(self, m: &QMatrix, t: usize, x: &QVec, out: &mut [f32; TILE]) {
        debug_assert_eq!(x.codes.len(), m.cols());
        let (codes, scales) = (m.tile_codes(t), m.tile_scales(t));
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 if self.is_supported() => {
                // SAFETY: AVX2 and F16C were detected at run time just above.
                unsafe { x86::tile_avx2(codes, scales, m.blocks(), x, out) }
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni if self.is_supported() => {
                // SAFETY: AVX-512 F, BW and VNNI were detected at run time just above.
                unsafe { x86::tile_avx512vnni(codes, scales, m.blocks(), x, out) }
            }
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            Kernel::Simd128 => wasm::tile_simd128(codes, scales, m.blocks(), x, out),
            #[cfg(target_arch = "aarch64")]
            // SAFETY: NEON is part of the AArch64 base architecture.
            Kernel::Neon => unsafe { neon::tile_neon(codes, scales, m.blocks(), x, out) },
            _ => tile_scalar(codes, scales, m.blocks(), x, out),
        }
    }
}

impl Kernel {
    /// `outs[j]` = tile `t` of `m` times `xs[j]` for several tokens (prefill).
    ///
    /// The AVX-512 kernel loads each weight group once for up to four tokens;
    /// every token's arithmetic is exactly what [`Kernel::tile`] does for it alone.
    pub fn tile_many(self, m: &QMatrix, t: usize, xs: &[QVec], outs: &mut [[f32; TILE]]) {
        #[cfg(target_arch = "x86_64")]
        if self == Kernel::Avx512Vnni && self.is_supported() {
            let (codes, scales) = (m.tile_codes(t), m.tile_scales(t));
            let mut chunks = xs.chunks_exact(4);
            let mut outs4 = outs.chunks_exact_mut(4);
            for (x4, o4) in (&mut chunks).zip(&mut outs4) {
                let xr = [&x4[0], &x4[1], &x4[2], &x4[3]];
                let mut o = [[0f32; TILE]; 4];
                // SAFETY: AVX-512 F, BW and VNNI were detected at run time just above.
                unsafe { x86::tile4_avx512vnni(codes, scales, m.blocks(), xr, &mut o) };
                o4.copy_from_slice(&o);
            }
            for (x, o) in chunks.remainder().iter().zip(outs4.into_remainder()) {
                self.tile(m, t, x, o);
            }
            return;
        }
        for (x, o) in xs.iter().zip(outs.iter_mut()) {
            self.tile(m, t, x, o);
        }
    }
}

/// The reference kernel.
fn tile_scalar(codes: &[i8], scales: &[u16], nb: usize, x: &QVec, out: &mut [f32; TILE]) {
    let mut acc = [0f32; TILE];
    for b in 0..nb {
        let mut isum = [0i32; TILE];
        for g in 0..BLOCK / 4 {
            let xs = &x.codes[b * BLOCK + g * 4..b * BLOCK + g * 4 + 4];
            let base = (b * (BLOCK / 4) + g) * TILE * 4;
            for (i, s) in isum.iter_mut().enumerate() {
                let w = &codes[base + i * 4..base + i * 4 + 4];
                *s += w.iter().zip(xs).map(|(&a, &c)| i32::from(a) * i32::from(c)).sum::<i32>();
            }
        }
        let dx = x.scales[b];
        for i in 0..TILE {
            acc[i] += isum[i] as f32 * (half::f16::from_bits(scales[b * TILE + i]).to_f32() * dx);
        }
    }
    *out = acc;
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// The 4 activation codes at `at` as one little-endian i32, for a broadcast.
    ///
    /// One unaligned load: assembling the bytes one by one, each bounds-checked, took ten
    /// scalar instructions per 64 multiply-adds and was most of odin-tiny's kernel time.
    ///
    /// # Safety
    /// `at + 4 <= x.codes.len()`; every caller asserts `x.codes.len() >= nb * BLOCK` first.
    #[inline(always)]
    unsafe fn x4(x: &QVec, at: usize) -> i32 {
        debug_assert!(at + 4 <= x.codes.len());
        i32::from_le((x.codes.as_ptr().add(at) as *const i32).read_unaligned())
    }

    /// # Safety
    /// The CPU must support AVX2 and F16C; `codes`/`scales` must be one tile of an `nb`-block matrix.
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn tile_avx2(codes: &[i8], scales: &[u16], nb: usize, x: &QVec, out: &mut [f32; TILE]) {
        assert!(codes.len() >= nb * TILE * BLOCK && scales.len() >= nb * TILE);
        assert!(x.codes.len() >= nb * BLOCK && x.scales.len() >= nb);
        let ones = _mm256_set1_epi16(1);
        let mut acc_lo = _mm256_setzero_ps();
        let mut acc_hi = _mm256_setzero_ps();
        for b in 0..nb {
            let mut s_lo = _mm256_setzero_si256();
            let mut s_hi = _mm256_setzero_si256();
            prefetch_block(codes.as_ptr().wrapping_add(b * TILE * BLOCK));
            for g in 0..BLOCK / 4 {
                let xb = _mm256_set1_epi32(x4(x, b * BLOCK + g * 4));
                let p = codes.as_ptr().add((b * (BLOCK / 4) + g) * TILE * 4);
                let w_lo = _mm256_loadu_si256(p as *const __m256i);
                let w_hi = _mm256_loadu_si256(p.add(32) as *const __m256i);
                // |w| (u8) times x with w's sign (i8): exact pairs, no saturation since |codes| <= 127.
                let p_lo = _mm256_maddubs_epi16(_mm256_abs_epi8(w_lo), _mm256_sign_epi8(xb, w_lo));
                let p_hi = _mm256_maddubs_epi16(_mm256_abs_epi8(w_hi), _mm256_sign_epi8(xb, w_hi));
                s_lo = _mm256_add_epi32(s_lo, _mm256_madd_epi16(p_lo, ones));
                s_hi = _mm256_add_epi32(s_hi, _mm256_madd_epi16(p_hi, ones));
            }
            let dx = _mm256_set1_ps(x.scales[b]);
            let sp = scales.as_ptr().add(b * TILE);
            // f16 → f32 is exact, so this equals the scalar path's conversion.
            let d_lo = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128(sp as *const __m128i)), dx);
            let d_hi = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128(sp.add(8) as *const __m128i)), dx);
            acc_lo = _mm256_add_ps(acc_lo, _mm256_mul_ps(_mm256_cvtepi32_ps(s_lo), d_lo));
            acc_hi = _mm256_add_ps(acc_hi, _mm256_mul_ps(_mm256_cvtepi32_ps(s_hi), d_hi));
        }
        _mm256_storeu_ps(out.as_mut_ptr(), acc_lo);
        _mm256_storeu_ps(out.as_mut_ptr().add(8), acc_hi);
    }

    /// Bytes ahead of the block being multiplied that the kernels ask the cache for.
    ///
    /// Decoding streams every weight once per token, and one core's hardware prefetcher alone
    /// leaves part of the memory bandwidth unused. Asking for the codes four blocks ahead
    /// (tiles lie back to back, so near a tile's end this reaches into the next one) was worth
    /// about 8% of odin-100m decode here (BENCHMARKS.md). A prefetch never changes a result.
    pub(crate) const PREFETCH: usize = 4 * TILE * BLOCK;

    /// Hint the cache lines of one block of codes, `PREFETCH` bytes past `at`.
    ///
    /// `wrapping_add`: the address may lie past the slice near the matrix's end, and a
    /// prefetch of any address is harmless, but computing it with `add` would not be sound.
    #[inline(always)]
    unsafe fn prefetch_block(at: *const i8) {
        let ahead = at.wrapping_add(PREFETCH);
        for line in 0..TILE * BLOCK / 64 {
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line * 64));
        }
    }

    /// # Safety
    /// The CPU must support AVX-512 F, BW and VNNI; slices as for [`tile_avx2`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn tile_avx512vnni(codes: &[i8], scales: &[u16], nb: usize, x: &QVec, out: &mut [f32; TILE]) {
        assert!(codes.len() >= nb * TILE * BLOCK && scales.len() >= nb * TILE);
        assert!(x.codes.len() >= nb * BLOCK && x.scales.len() >= nb);
        let zero = _mm512_setzero_si512();
        let mut acc = _mm512_setzero_ps();
        for b in 0..nb {
            let mut s = _mm512_setzero_si512();
            prefetch_block(codes.as_ptr().wrapping_add(b * TILE * BLOCK));
            for g in 0..BLOCK / 4 {
                let xb = _mm512_set1_epi32(x4(x, b * BLOCK + g * 4));
                let w = _mm512_loadu_si512(codes.as_ptr().add((b * (BLOCK / 4) + g) * TILE * 4) as *const _);
                // vpdpbusd wants u8 × i8: feed |w| and x negated where w < 0.
                let neg = _mm512_movepi8_mask(w);
                let xs = _mm512_mask_sub_epi8(xb, neg, zero, xb);
                s = _mm512_dpbusd_epi32(s, _mm512_abs_epi8(w), xs);
            }
            let ws = _mm512_cvtph_ps(_mm256_loadu_si256(scales.as_ptr().add(b * TILE) as *const __m256i));
            let d = _mm512_mul_ps(ws, _mm512_set1_ps(x.scales[b]));
            acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_cvtepi32_ps(s), d));
        }
        _mm512_storeu_ps(out.as_mut_ptr(), acc);
    }

    /// Four tokens at once: the same per-token arithmetic as [`tile_avx512vnni`].
    ///
    /// # Safety
    /// As for [`tile_avx512vnni`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn tile4_avx512vnni(
        codes: &[i8],
        scales: &[u16],
        nb: usize,
        xs: [&QVec; 4],
        out: &mut [[f32; TILE]; 4],
    ) {
        assert!(codes.len() >= nb * TILE * BLOCK && scales.len() >= nb * TILE);
        assert!(xs.iter().all(|x| x.codes.len() >= nb * BLOCK && x.scales.len() >= nb));
        let zero = _mm512_setzero_si512();
        let mut acc = [_mm512_setzero_ps(); 4];
        for b in 0..nb {
            let mut s = [_mm512_setzero_si512(); 4];
            for g in 0..BLOCK / 4 {
                let w = _mm512_loadu_si512(codes.as_ptr().add((b * (BLOCK / 4) + g) * TILE * 4) as *const _);
                let neg = _mm512_movepi8_mask(w);
                let aw = _mm512_abs_epi8(w);
                for j in 0..4 {
                    let xb = _mm512_set1_epi32(x4(xs[j], b * BLOCK + g * 4));
                    s[j] = _mm512_dpbusd_epi32(s[j], aw, _mm512_mask_sub_epi8(xb, neg, zero, xb));
                }
            }
            let ws = _mm512_cvtph_ps(_mm256_loadu_si256(scales.as_ptr().add(b * TILE) as *const __m256i));
            for j in 0..4 {
                let d = _mm512_mul_ps(ws, _mm512_set1_ps(xs[j].scales[b]));
                acc[j] = _mm512_add_ps(acc[j], _mm512_mul_ps(_mm512_cvtepi32_ps(s[j]), d));
            }
        }
        for j in 0..4 {
            _mm512_storeu_ps(out[j].as_mut_ptr(), acc[j]);
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use super::*;
    use std::arch::aarch64::*;

    /// # Safety
    /// `codes`/`scales` must be one tile of an `nb`-block matrix (checked below).
    #[target_feature(enable = "neon")]
    pub unsafe fn tile_neon(codes: &[i8], scales: &[u16], nb: usize, x: &QVec, out: &mut [f32; TILE]) {
        assert!(codes.len() >= nb * TILE * BLOCK && scales.len() >= nb * TILE && x.codes.len() >= nb * BLOCK);
        let mut acc = [vdupq_n_f32(0.0); 4];
        for b in 0..nb {
            let mut s = [vdupq_n_s32(0); 4];
            for g in 0..BLOCK / 4 {
                let at = b * BLOCK + g * 4;
                let x4 = i32::from_le_bytes([
                    x.codes[at] as u8,
                    x.codes[at + 1] as u8,
                    x.codes[at + 2] as u8,
                    x.codes[at + 3] as u8,
                ]);
                let xb = vreinterpretq_s8_s32(vdupq_n_s32(x4));
                let base = codes.as_ptr().add((b * (BLOCK / 4) + g) * TILE * 4);
                for (q, sq) in s.iter_mut().enumerate() {
                    // 4 rows × 4 codes: exact i16 products, pairwise to i32, then one sum per row.
                    let w = vld1q_s8(base.add(q * 16));
                    let lo = vpaddlq_s16(vmull_s8(vget_low_s8(w), vget_low_s8(xb)));
                    let hi = vpaddlq_s16(vmull_high_s8(w, xb));
                    *sq = vaddq_s32(*sq, vpaddq_s32(lo, hi));
                }
            }
            let dx = vdupq_n_f32(x.scales[b]);
            for (q, aq) in acc.iter_mut().enumerate() {
                let mut ws = [0f32; 4];
                for (k, w) in ws.iter_mut().enumerate() {
                    *w = half::f16::from_bits(scales[b * TILE + q * 4 + k]).to_f32();
                }
                let d = vmulq_f32(vld1q_f32(ws.as_ptr()), dx);
                // Multiply then add, never vfmaq: the scalar path rounds twice.
                *aq = vaddq_f32(*aq, vmulq_f32(vcvtq_f32_s32(s[q]), d));
            }
        }
        for (q, aq) in acc.iter().enumerate() {
            vst1q_f32(out.as_mut_ptr().add(q * 4), *aq);
        }
    }
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod wasm {
    use super::*;
    use std::arch::wasm32::*;

    pub fn tile_simd128(codes: &[i8], scales: &[u16], nb: usize, x: &QVec, out: &mut [f32; TILE]) {
        let mut acc = [f32x4_splat(0.0); 4];
        for b in 0..nb {
            let mut s = [i32x4_splat(0); 4];
            for g in 0..BLOCK / 4 {
                let at = b * BLOCK + g * 4;
                let xs = &x.codes[at..at + 4];
                let (a, bb, c, d) = (i16::from(xs[0]), i16::from(xs[1]), i16::from(xs[2]), i16::from(xs[3]));
                let x16 = i16x8(a, bb, c, d, a, bb, c, d);
                let base = (b * (BLOCK / 4) + g) * TILE * 4;
                for (q, sq) in s.iter_mut().enumerate() {
                    let mut w = [0u8; 16];
                    for (o, v) in w.iter_mut().zip(&codes[base + q * 16..base + q * 16 + 16]) {
                        *o = *v as u8;
                    }
                    let w = u8x16(
                        w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7], w[8], w[9], w[10], w[11], w[12], w[13], w[14],
                        w[15],
                    );
                    // Rows 4q..4q+1 in the low half, 4q+2..4q+3 in the high half; each dot
                    // lane holds half a row's 4 products, so pairs of lanes are added.
                    let lo = i32x4_dot_i16x8(i16x8_extend_low_i8x16(w), x16);
                    let hi = i32x4_dot_i16x8(i16x8_extend_high_i8x16(w), x16);
                    let even = i32x4_shuffle::<0, 2, 4, 6>(lo, hi);
                    let odd = i32x4_shuffle::<1, 3, 5, 7>(lo, hi);
                    *sq = i32x4_add(*sq, i32x4_add(even, odd));
                }
            }
            let dx = f32x4_splat(x.scales[b]);
            for (q, aq) in acc.iter_mut().enumerate() {
                let sp = &scales[b * TILE + q * 4..b * TILE + q * 4 + 4];
                let h = |k: usize| half::f16::from_bits(sp[k]).to_f32();
                let d = f32x4_mul(f32x4(h(0), h(1), h(2), h(3)), dx);
                *aq = f32x4_add(*aq, f32x4_mul(f32x4_convert_i32x4(s[q]), d));
            }
        }
        for (q, aq) in acc.iter().enumerate() {
            for l in 0..4 {
                out[q * 4 + l] = match l {
                    0 => f32x4_extract_lane::<0>(*aq),
                    1 => f32x4_extract_lane::<1>(*aq),
                    2 => f32x4_extract_lane::<2>(*aq),
                    _ => f32x4_extract_lane::<3>(*aq),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn matrix(rows: usize, cols: usize, seed: u64) -> QMatrix {
        let data: Vec<f32> = (0..rows * cols)
            .map(|i| {
                let h = (i as u64 ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                ((h >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 3.0
            })
            .collect();
        QMatrix::quantize(&data, rows, cols)
    }

    proptest! {
        #[test]
        fn every_supported_kernel_matches_scalar_bit_for_bit(
            rows in 1usize..48, nb in 1usize..9, seed in any::<u64>(),
            x in proptest::collection::vec(-1e3f32..1e3, 32 * 8),
        ) {
            let m = matrix(rows, nb * BLOCK, seed);
            let q = QVec::from_f32(&x[..nb * BLOCK]);
            for t in 0..m.tiles() {
                let mut want = [0f32; TILE];
                Kernel::Scalar.tile(&m, t, &q, &mut want);
                for k in Kernel::supported() {
                    let mut got = [0f32; TILE];
                    k.tile(&m, t, &q, &mut got);
                    prop_assert_eq!(want.map(f32::to_bits), got.map(f32::to_bits), "kernel {}", k.name());
                }
            }
        }
    }

    proptest! {
        #[test]
        fn many_tokens_at_once_match_one_at_a_time(
            rows in 1usize..40, nb in 1usize..6, tokens in 1usize..11, seed in any::<u64>(),
        ) {
            let m = matrix(rows, nb * BLOCK, seed);
            let xs: Vec<QVec> = (0..tokens)
                .map(|j| {
                    let x: Vec<f32> = (0..nb * BLOCK).map(|i| ((i * 31 + j * 7) % 23) as f32 - 11.0).collect();
                    QVec::from_f32(&x)
                })
                .collect();
            for k in Kernel::supported() {
                for t in 0..m.tiles() {
                    let mut many = vec![[0f32; TILE]; tokens];
                    k.tile_many(&m, t, &xs, &mut many);
                    for (x, got) in xs.iter().zip(&many) {
                        let mut want = [0f32; TILE];
                        Kernel::Scalar.tile(&m, t, x, &mut want);
                        prop_assert_eq!(want.map(f32::to_bits), got.map(f32::to_bits), "kernel {}", k.name());
                    }
                }
            }
        }
    }

    #[test]
    fn extreme_codes_do_not_saturate() {
        // All codes ±127 in every lane: the i16 pair sums reach 2 * 127 * 127.
        let rows = 16;
        let data: Vec<f32> = (0..rows * 64).map(|i| if i % 3 == 0 { -1.0 } else { 1.0 }).collect();
        let m = QMatrix::quantize(&data, rows, 64);
        let x: Vec<f32> = (0..64).map(|i| if i % 2 == 0 { 1.0 } else { -1.0 }).collect();
        let q = QVec::from_f32(&x);
        let mut want = [0f32; TILE];
        Kernel::Scalar.tile(&m, 0, &q, &mut want);
        let exact: f32 = (0..64).map(|j| data[j] * x[j]).sum();
        assert!((want[0] - exact).abs() < 1e-3, "{} vs {exact}", want[0]);
        for k in Kernel::supported() {
            let mut got = [0f32; TILE];
            k.tile(&m, 0, &q, &mut got);
            assert_eq!(want, got, "{}", k.name());
        }
    }

    #[test]
    fn names_round_trip() {
        for k in Kernel::ALL {
            assert_eq!(Kernel::from_name(k.name()).unwrap(), k);
        }
        assert!(Kernel::from_name("sse9").is_err());
    }
}
