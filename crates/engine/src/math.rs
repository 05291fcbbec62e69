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
    fn transcendental_functions_are_sane() {
        assert_eq!(sigmoid(0.0), 0.5);
        assert!((tanh(0.5) - 0.5f32.tanh()).abs() < 1e-7);
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
    }
}
