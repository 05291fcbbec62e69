//! Deterministic f32 helpers: fixed summation order, `libm` for every
//! transcendental function, and no fused multiply-add (Rust never contracts
//! `a * b + c` on its own), so every platform computes the same bits.

/// Layer normalisation of `x` in place.
#[inline]
pub fn layer_norm(x: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    let n = x.len() as f32;
    let mean = x.iter().fold(0f32, |s, v| s + v) / n;
    let var = x.iter().fold(0f32, |s, v| s + (v - mean) * (v - mean)) / n;
    // sqrt is correctly rounded by IEEE 754, hence identical everywhere.
    let inv = 1.0 / (var + eps).sqrt();
    for ((v, w), b) in x.iter_mut().zip(w).zip(b) {
        *v = (*v - mean) * inv * w + b;
    }
}

/// Layer normalisation of `x` into `out`.
#[inline]
pub fn layer_norm_into(x: &[f32], w: &[f32], b: &[f32], eps: f32, out: &mut [f32]) {
    out.copy_from_slice(x);
    layer_norm(out, w, b, eps);
}

/// Logistic sigmoid through `libm::expf`.
#[inline]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + libm::expf(-x))
}

/// tanh through `libm`.
#[inline]
pub fn tanh(x: f32) -> f32 {
    libm::tanhf(x)
}

/// exp through `libm`.
#[inline]
pub fn exp(x: f32) -> f32 {
    libm::expf(x)
}

/// Values [`exp_each`] takes at a time: one AVX-512 register of f32.
const LANES: usize = 16;

/// `|x|`'s bits below which libm's `expf` takes no special path: |x| < 87.3365, where exp(x)
/// is a normal number (or a subnormal reached by one multiply) and k, the power of two, is in
/// [-126, 126].
const EXP_PLAIN: u32 = 0x42ae_ac50;

/// `*v = libm::expf(*v)` for every value, bit for bit, in a form the compiler vectorizes.
///
/// Why by hand: libm's `expf` is an opaque scalar call with branches, and a token of odin-tiny
/// evaluates ~3,000 of them (the decay, the gates). This is libm's own algorithm (FreeBSD's
/// e_expf.c) with each branch turned into a select, so every IEEE operation is the one libm
/// performs on that value. A group of 16 holding any value outside the plain range (huge,
/// tiny results, NaN) goes through libm itself.
#[inline(always)]
pub fn exp_each(xs: &mut [f32]) {
    let mut groups = xs.chunks_exact_mut(LANES);
    for g in &mut groups {
        // The largest |x| bits of the group, without a branch per value so it vectorizes.
        if g.iter().fold(0u32, |m, v| m.max(v.to_bits() & 0x7fff_ffff)) < EXP_PLAIN {
            g.iter_mut().for_each(|v| *v = expf_plain(*v));
        } else {
            g.iter_mut().for_each(|v| *v = libm::expf(*v));
        }
    }
    for v in groups.into_remainder() {
        *v = if v.to_bits() & 0x7fff_ffff < EXP_PLAIN { expf_plain(*v) } else { libm::expf(*v) };
    }
}

/// `*v = sigmoid(*v)` for every value, bit for bit as [`sigmoid`] gives it.
#[inline(always)]
pub fn sigmoid_each(xs: &mut [f32]) {
    xs.iter_mut().for_each(|v| *v = -*v);
    exp_each(xs);
    xs.iter_mut().for_each(|v| *v = 1.0 / (1.0 + *v));
}

/// libm's `expf` for |x| < 87.3365 (`EXP_PLAIN`) with no branch.
///
/// libm reduces x = k·ln2 + r in one of three ways by |x| (k from a rounded product above
/// 1.5·ln2, k = ±1 down to 0.5·ln2, k = 0 below), returns `1 + x` up to 2^-13, and scales by
/// 2^k with one multiply while k is in [-126, 127]. Each case computes here exactly as libm
/// does; with k = 0 the reduction subtracts zeros, which leaves every value as it was.
#[inline(always)]
fn expf_plain(x: f32) -> f32 {
    // libm's constants, by their bits.
    const LN2_HI: f32 = f32::from_bits(0x3f31_7200);
    const LN2_LO: f32 = f32::from_bits(0x35bf_be8e);
    const INV_LN2: f32 = f32::from_bits(0x3fb8_aa3b);
    const P1: f32 = f32::from_bits(0x3e2a_aa8f);
    const P2: f32 = f32::from_bits(0xbb35_5215);
    let bits = x.to_bits();
    let hx = bits & 0x7fff_ffff;
    let neg = bits >> 31 != 0;
    let rounded = (INV_LN2 * x + if neg { -0.5 } else { 0.5 }) as i32;
    let k = if hx > 0x3f85_1592 {
        rounded
    } else if hx > 0x3eb1_7218 {
        if neg {
            -1
        } else {
            1
        }
    } else {
        0
    };
    let kf = k as f32;
    let hi = x - kf * LN2_HI;
    let lo = kf * LN2_LO;
    let r = hi - lo;
    let rr = r * r;
    let c = r - rr * (P1 + rr * P2);
    let y = 1.0 + (r * c / (2.0 - c) - lo + hi);
    let scaled = y * f32::from_bits(((127 + k) as u32) << 23);
    if hx > 0x3900_0000 {
        scaled
    } else {
        1.0 + x
    }
}

/// Index of the largest value (the first on ties), as greedy decoding picks it.
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_norm_normalises() {
        let mut x = [1f32, 2., 3., 6.];
        layer_norm(&mut x, &[1.; 4], &[0.; 4], 0.0);
        let s = 3.5f32.sqrt();
        for (a, b) in x.iter().zip([-2. / s, -1. / s, 0., 3. / s]) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    /// Every f32 whose bits are `start + i * step`, wrapping, in groups like the engine's rows.
    fn exp_matches_libm_on(start: u32, step: u32, count: usize) {
        let xs: Vec<f32> =
            (0..count).map(|i| f32::from_bits(start.wrapping_add(step.wrapping_mul(i as u32)))).collect();
        let mut got = xs.clone();
        exp_each(&mut got);
        // The engine runs it inside code compiled for AVX2 or AVX-512: check those forms too.
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx2")]
            unsafe fn avx2(xs: &mut [f32]) {
                exp_each(xs)
            }
            #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
            unsafe fn avx512(xs: &mut [f32]) {
                exp_each(xs)
            }
            let mut wide = xs.clone();
            if is_x86_feature_detected!("avx2") {
                // SAFETY: detected just above.
                unsafe { avx2(&mut wide) };
                assert!(wide.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()), "AVX2 differs");
            }
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
            {
                let mut wide = xs.clone();
                // SAFETY: detected just above.
                unsafe { avx512(&mut wide) };
                assert!(wide.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()), "AVX-512 differs");
            }
        }
        for (x, g) in xs.iter().zip(&got) {
            let want = libm::expf(*x);
            assert!(
                g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
                "expf({x:e}) = {want:e} in libm, {g:e} here"
            );
        }
    }

    #[test]
    fn exp_each_matches_libm_across_the_whole_range() {
        // A stride through all 2^32 bit patterns, both signs, every exponent.
        exp_matches_libm_on(0, 65_537, 65_537);
        exp_matches_libm_on(12_345, 1_000_003, 4_295);
    }

    #[test]
    fn exp_each_matches_libm_at_every_threshold() {
        // 4096 consecutive values around each of libm's branch points, on both signs, so
        // groups of 16 fall on both sides of them.
        for t in [EXP_PLAIN, 0x42b1_7218, 0x42cf_f1b5, 0x3f85_1592, 0x3eb1_7218, 0x3900_0000, 0, 0x7f80_0000] {
            for sign in [0, 0x8000_0000u32] {
                exp_matches_libm_on((t | sign).wrapping_sub(2048), 1, 4096);
            }
        }
        // Ragged lengths take the scalar tail.
        for n in 0..40 {
            exp_matches_libm_on(0x3f80_0000, 7_919, n);
        }
    }

    /// Every f32 in the plain range and around it: ~2.2 billion values, minutes of CPU, so it
    /// runs on request (`cargo test -p odin-engine --release -- --ignored exp_each_matches`).
    #[test]
    #[ignore]
    fn exp_each_matches_libm_on_every_value_it_computes_itself() {
        for sign in [0, 0x8000_0000u32] {
            let mut at = 0u32;
            while at < 0x42b0_0000 {
                exp_matches_libm_on(at | sign, 1, 1 << 20);
                at += 1 << 20;
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn sigmoid_each_matches_sigmoid(xs in proptest::collection::vec(-120f32..120.0, 0..70)) {
            let mut got = xs.clone();
            sigmoid_each(&mut got);
            for (x, g) in xs.iter().zip(&got) {
                proptest::prop_assert_eq!(g.to_bits(), sigmoid(*x).to_bits());
            }
        }
    }

    #[test]
    fn transcendental_functions_are_sane() {
        assert_eq!(sigmoid(0.0), 0.5);
        assert!((tanh(0.5) - 0.5f32.tanh()).abs() < 1e-7);
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
    }
}
