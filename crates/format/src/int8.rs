//! The one int8 block quantizer, shared by the engine's weights and the wire's tensors.
//!
//! A block of up to [`BLOCK`] values shares one scale `d = f16(max|x| / 127)`, and each
//! value becomes the code `round_half_to_even(x * (1 / d))`, clamped to [-127, 127]. A block
//! of zeros gets `d = 0` and zero codes. A reader recovers `code * d`.
//!
//! Why exactly this:
//! - **The scale is rounded to f16 before any code is computed**, so the codes are taken
//!   against the very scale a reader multiplies by (and a weight block is exactly GGUF's Q8_0,
//!   so an export carries the weights we run).
//! - **Multiply by the inverse, round half to even.** These are the rounding the engine's
//!   weights have always had: every model's golden hash (native and wasm32) depends on these
//!   exact codes, so when the wire's encoder (which divided, then rounded half away from zero)
//!   and the engine's were made one, the engine's was kept. Both steps are exact IEEE
//!   operations under the default rounding mode, so every CPU and the browser get the same
//!   codes; one division per block instead of per value is also cheaper.
//! - **-128 never appears**, so `|code|` fits an i8 and the engine's SIMD sign tricks stay exact.
//!
//! The engine's activations use their own per-product f32 scale (never stored, never sent);
//! their rounding is the same [`round_even`].

use half::f16;

/// Values per block (one f16 scale each), on disk and on the wire.
pub const BLOCK: usize = 32;

/// Largest code magnitude: codes lie in [-127, 127].
pub const MAX_CODE: f32 = 127.0;

/// Round to the nearest integer, ties to even, for |x| <= 2^22.
///
/// Adding and subtracting 1.5 * 2^23 makes the FPU's default rounding do the work: exact IEEE
/// arithmetic, identical on every platform, and unlike `f32::round_ties_even` it never becomes
/// a libm call on CPUs without SSE4.1. NaN stays NaN.
#[inline(always)]
pub fn round_even(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (x + MAGIC) - MAGIC
}

/// The scale of a block: `f16(max|x| / 127)` (NaN values are skipped by the maximum).
///
/// Infinite when a value is too large for an f16 scale (|x| over about 8.3e6) or infinite.
#[inline]
pub fn block_scale(x: &[f32]) -> f16 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    f16::from_f32(amax / MAX_CODE)
}

/// Quantize one block: writes `x.len()` codes into `q` (which must be at least as long;
/// extra entries are left alone) and returns the block's f16 scale.
///
/// A NaN value gets code 0. An infinite scale (see [`block_scale`]) gives all-zero codes:
/// the wire refuses such a block, and weights never reach it.
#[inline]
pub fn quantize_block(x: &[f32], q: &mut [i8]) -> f16 {
    let scale = block_scale(x);
    let d = scale.to_f32();
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    for (o, v) in q.iter_mut().zip(x) {
        // Clamped first, so round_even's |x| <= 2^22 holds; a NaN survives both and casts to 0.
        *o = round_even((v * id).clamp(-MAX_CODE, MAX_CODE)) as i8;
    }
    scale
}

/// The value a code stands for in a block of scale `d`.
#[inline(always)]
pub fn dequantize(code: i8, d: f32) -> f32 {
    f32::from(code) * d
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn quantized_blocks_reconstruct_within_half_a_step(x in proptest::collection::vec(-50f32..50.0, 1..=32)) {
            let mut q = [0i8; 32];
            let d = quantize_block(&x, &mut q).to_f32();
            prop_assert_eq!(f16::from_f32(d).to_f32(), d);
            for (v, c) in x.iter().zip(q) {
                prop_assert!(c != -128);
                // f16 rounding of d can push a code past the half-step bound by d/127 at most.
                prop_assert!((dequantize(c, d) - v).abs() <= d * 0.51 + 1e-6, "{} vs {}", dequantize(c, d), v);
            }
        }

        #[test]
        fn round_even_matches_round_ties_even(x in -200f32..200.0) {
            prop_assert_eq!(round_even(x), x.round_ties_even());
        }

        #[test]
        fn codes_are_the_round_half_even_multiple_of_the_inverse_scale(
            x in proptest::collection::vec(-1e4f32..1e4, 1..=32),
        ) {
            // The definition, written out the slow way.
            let mut q = [0i8; 32];
            let d = quantize_block(&x, &mut q).to_f32();
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            for (v, c) in x.iter().zip(q) {
                prop_assert_eq!(c, (v * id).round_ties_even().clamp(-127.0, 127.0) as i8);
            }
        }
    }

    #[test]
    fn ties_go_to_even() {
        // Scale 1 (f16-exact): 127 is the largest, and the halves sit exactly between codes.
        let x = [127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5];
        let mut q = [0i8; 8];
        assert_eq!(quantize_block(&x, &mut q).to_f32(), 1.0);
        assert_eq!(q, [127, 0, 2, 2, 0, -2, -2, 126]);
    }

    #[test]
    fn zero_blocks_have_zero_scale_and_codes() {
        let mut q = [5i8; 32];
        assert_eq!(quantize_block(&[0.0; 32], &mut q).to_f32(), 0.0);
        assert!(q.iter().all(|&c| c == 0));
    }

    #[test]
    fn special_values() {
        // The largest value maps to ±127; a NaN gets code 0 and does not set the scale.
        let mut q = [9i8; 4];
        let d = quantize_block(&[f32::NAN, -2.0, 1.0, 0.0], &mut q).to_f32();
        assert_eq!(d, f16::from_f32(2.0 / 127.0).to_f32());
        assert_eq!(q, [0, -127, 64, 0]);
        // Too large for an f16 scale: infinite, and every code 0.
        let mut q = [9i8; 2];
        assert!(quantize_block(&[1e7, 1.0], &mut q).is_infinite());
        assert_eq!(q, [0, 0]);
        // Only the first x.len() codes are written.
        let mut q = [9i8; 3];
        quantize_block(&[1.0], &mut q);
        assert_eq!(q, [127, 9, 9]);
    }
}
