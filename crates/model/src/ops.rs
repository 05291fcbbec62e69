//! Differentiable building blocks written from candle primitives.
//!
//! candle's fused `LayerNorm`, `RmsNorm`, `softmax_last_dim` and rope record
//! no backward pass, so gradients would silently stop there. Everything here
//! is composed of ops that do (sub, mul, sqrt, exp, sum, ...).

use candle_core::{DType, Tensor, D};

use crate::error::Result;

/// Layer normalisation over the last dimension, with affine weight and bias.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let xc = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let y = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    Ok(y.broadcast_mul(weight)?.broadcast_add(bias)?)
}

/// GroupNorm over `groups` equal slices of the last dimension (RWKV's per-head `ln_x`).
pub fn group_norm(x: &Tensor, groups: usize, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let c = dims[dims.len() - 1];
    let mut split = dims.clone();
    split.pop();
    split.push(groups);
    split.push(c / groups);
    let xg = x.reshape(split)?;
    let xc = xg.broadcast_sub(&xg.mean_keepdim(D::Minus1)?)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let y = xc.broadcast_div(&(var + eps)?.sqrt()?)?.reshape(dims)?;
    Ok(y.broadcast_mul(weight)?.broadcast_add(bias)?)
}

/// RMSNorm over the last dimension (Llama).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(x.broadcast_div(&(ms + eps)?.sqrt()?)?.broadcast_mul(weight)?)
}

/// Softmax over the last dimension. The max is subtracted for stability and
/// detached: softmax is shift-invariant, so its gradient is unaffected.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&m)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// Log-softmax over the last dimension.
pub fn log_softmax_last(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let z = x.broadcast_sub(&m)?;
    let lse = z.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(z.broadcast_sub(&lse)?)
}

/// Mean cross-entropy of `logits` [.., V] against integer `targets` [..].
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let v = logits.dim(D::Minus1)?;
    let lp = log_softmax_last(&logits.reshape(((), v))?)?;
    let t = targets.flatten_all()?.to_dtype(DType::U32)?.unsqueeze(1)?;
    let picked = lp.gather(&t, 1)?;
    Ok(picked.neg()?.mean_all()?)
}

/// `x @ w^T` for a weight stored as [out, in], over any leading dimensions.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let dims = x.dims();
    let inner = dims[dims.len() - 1];
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let y = x.reshape((rows, inner))?.matmul(&w.t()?)?;
    let mut out = dims[..dims.len() - 1].to_vec();
    out.push(w.dim(0)?);
    Ok(y.reshape(out)?)
}

/// `x @ w` for a matrix stored as [in, out] (RWKV's LoRA matrices), over any leading dimensions.
pub fn matmul_in_out(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let dims = x.dims();
    let inner = dims[dims.len() - 1];
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let y = x.reshape((rows, inner))?.matmul(w)?;
    let mut out = dims[..dims.len() - 1].to_vec();
    out.push(w.dim(1)?);
    Ok(y.reshape(out)?)
}

/// Logistic sigmoid (candle_nn's op, which has a backward pass).
pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::sigmoid(x)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn layer_norm_matches_definition() {
        let x = Tensor::new(&[[1f32, 2., 3., 6.]], &Device::Cpu).unwrap();
        let w = Tensor::new(&[1f32, 2., 1., 1.], &Device::Cpu).unwrap();
        let b = Tensor::new(&[0f32, 0., 1., 0.], &Device::Cpu).unwrap();
        let y = layer_norm(&x, &w, &b, 0.0).unwrap().to_vec2::<f32>().unwrap();
        // mean 3, var (4+1+0+9)/4 = 3.5
        let s = 3.5f32.sqrt();
        // weight 2 doubles the second entry; bias 1 lifts the third (which is 0).
        let want = [-2. / s, -2. / s, 1.0, 3. / s];
        for (a, b) in y[0].iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{a} {b}");
        }
    }

    #[test]
    fn softmax_and_cross_entropy_have_gradients() {
        let x = Var::new(&[[0.5f32, -1.0, 2.0], [0.0, 0.0, 0.0]], &Device::Cpu).unwrap();
        let sm = softmax_last(x.as_tensor()).unwrap();
        let sums = sm.sum(1).unwrap().to_vec1::<f32>().unwrap();
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-6));
        let t = Tensor::new(&[2u32, 1], &Device::Cpu).unwrap();
        let loss = cross_entropy(x.as_tensor(), &t).unwrap();
        let g = loss.backward().unwrap();
        let gx = g.get(x.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        // d/dx of mean CE = (softmax - onehot) / rows
        let p = sm.to_vec2::<f32>().unwrap();
        assert!((gx[0][2] - (p[0][2] - 1.0) / 2.0).abs() < 1e-6);
        assert!((gx[1][0] - p[1][0] / 2.0).abs() < 1e-6);
    }
}
