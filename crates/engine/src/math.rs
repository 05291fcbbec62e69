//! Deterministic f32 helpers: fixed summation order, `libm` for every
//! transcendental function, and no fused multiply-add (Rust never contracts
//! `a * b + c` on its own), so every platform computes the same bits.

/// Layer normalisation of `x` in place.
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
pub fn layer_norm_into(x: &[f32], w: &[f32], b: &[f32], eps: f32, out: &mut [f32]) {
    out.copy_from_slice(x);
    layer_norm(out, w, b, eps);
}

/// `out = x @ w` for `w` stored [in, out] (RWKV's LoRA matrices), summing over `in` in order.
///
/// Each output accumulates its own products in input order, so vectorising
/// across outputs (as the AVX2 and AVX-512 builds of the same loop do)
/// cannot change a bit.
pub fn matmul_in_out(x: &[f32], w: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F was detected just above.
            return unsafe { matmul_in_out_avx512(x, w, out) };
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 was detected just above.
            return unsafe { matmul_in_out_avx2(x, w, out) };
        }
    }
    matmul_in_out_portable(x, w, out)
}

#[inline(always)]
fn matmul_in_out_portable(x: &[f32], w: &[f32], out: &mut [f32]) {
    let n = out.len();
    out.fill(0.0);
    for (i, &xi) in x.iter().enumerate() {
        for (o, &wv) in out.iter_mut().zip(&w[i * n..(i + 1) * n]) {
            *o += xi * wv;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn matmul_in_out_avx2(x: &[f32], w: &[f32], out: &mut [f32]) {
    matmul_in_out_portable(x, w, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn matmul_in_out_avx512(x: &[f32], w: &[f32], out: &mut [f32]) {
    matmul_in_out_portable(x, w, out)
}

/// Logistic sigmoid through `libm::expf`.
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + libm::expf(-x))
}

/// tanh through `libm`.
pub fn tanh(x: f32) -> f32 {
    libm::tanhf(x)
}

/// exp through `libm`.
pub fn exp(x: f32) -> f32 {
    libm::expf(x)
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

    #[test]
    fn lora_matmul_uses_in_out_layout() {
        // x [2] @ w [2, 3]
        let mut out = [0f32; 3];
        matmul_in_out(&[1., 2.], &[1., 0., 2., 0., 1., 3.], &mut out);
        assert_eq!(out, [1., 2., 8.]);
    }

    #[test]
    fn transcendental_functions_are_sane() {
        assert_eq!(sigmoid(0.0), 0.5);
        assert!((tanh(0.5) - 0.5f32.tanh()).abs() < 1e-7);
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
    }
}
