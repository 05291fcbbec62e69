//! WKV6: RWKV-6's linear-attention recurrence as a candle custom op with a
//! hand-written backward pass.
//!
//! For each batch row and head, with an N×N state `S` (key index i, value
//! index j), token t computes
//!
//! ```text
//! y_t[j]   = Σ_i r_t[i] · (u[i]·k_t[i]·v_t[j] + S[i][j])
//! S[i][j] ← w_t[i]·S[i][j] + k_t[i]·v_t[j]
//! ```
//!
//! candle has no such op, and composing it from per-token tensor ops would
//! build a graph of O(T) nodes per layer, so we write the loop by hand. The
//! backward pass walks time in reverse carrying dS (the gradient of the
//! state); the states it needs are recomputed chunk by chunk from
//! checkpoints, so memory stays O(N²) per head whatever the sequence length.

use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Shape, Tensor, WithDType};
use num_traits::Float;
use rayon::prelude::*;

use crate::error::{ModelError, Result};

/// Time steps between state checkpoints in the backward pass.
const CHUNK: usize = 16;

#[derive(Debug, Clone, Copy)]
struct Dims {
    b: usize,
    t: usize,
    h: usize,
    n: usize,
}

impl Dims {
    fn plane(&self) -> usize {
        self.b * self.t * self.h * self.n
    }
    /// Offset of (b, t, h, 0) in a [B, T, H, N] tensor.
    fn at(&self, b: usize, t: usize, h: usize) -> usize {
        ((b * self.t + t) * self.h + h) * self.n
    }
}

/// Inputs of one (batch row, head) pair, borrowed from the packed buffer.
struct Head<'a, F> {
    d: Dims,
    p: &'a [F],
    u: &'a [F],
    b: usize,
    h: usize,
}

impl<F: Float> Head<'_, F> {
    /// (r, k, v, w) slices at time t.
    fn at(&self, t: usize) -> [&[F]; 4] {
        let (n, plane, o) = (self.d.n, self.d.plane(), self.d.at(self.b, t, self.h));
        [0, 1, 2, 3].map(|q| &self.p[q * plane + o..q * plane + o + n])
    }

    /// One step: write y_t into `y` and advance `s`.
    fn step(&self, t: usize, s: &mut [F], y: Option<&mut [F]>) {
        let n = self.d.n;
        let [r, k, v, w] = self.at(t);
        if let Some(y) = y {
            y.iter_mut().for_each(|x| *x = F::zero());
            for i in 0..n {
                let (ri, kui) = (r[i], k[i] * self.u[i]);
                let row = &s[i * n..(i + 1) * n];
                for j in 0..n {
                    y[j] = y[j] + ri * (kui * v[j] + row[j]);
                }
            }
        }
        for i in 0..n {
            let (wi, ki) = (w[i], k[i]);
            let row = &mut s[i * n..(i + 1) * n];
            for j in 0..n {
                row[j] = wi * row[j] + ki * v[j];
            }
        }
    }

    /// Forward over all time steps: (y as [T*N], final state [N*N]).
    fn forward(&self, s0: Option<&[F]>) -> (Vec<F>, Vec<F>) {
        let n = self.d.n;
        let mut s = s0.map_or_else(|| vec![F::zero(); n * n], <[F]>::to_vec);
        let mut y = vec![F::zero(); self.d.t * n];
        for t in 0..self.d.t {
            self.step(t, &mut s, Some(&mut y[t * n..(t + 1) * n]));
        }
        (y, s)
    }

    /// Gradients (dr, dk, dv, dw as [T*N] each, du as [N]) given dy for this head.
    fn backward(&self, s0: Option<&[F]>, gy: &[F]) -> ([Vec<F>; 4], Vec<F>) {
        let (n, tt) = (self.d.n, self.d.t);
        let nn = n * n;
        let chunks = tt.div_ceil(CHUNK);
        let mut ckpt = vec![F::zero(); chunks * nn];
        let mut s = s0.map_or_else(|| vec![F::zero(); nn], <[F]>::to_vec);
        for t in 0..tt {
            if t % CHUNK == 0 {
                ckpt[(t / CHUNK) * nn..(t / CHUNK + 1) * nn].copy_from_slice(&s);
            }
            self.step(t, &mut s, None);
        }
        let mut grads = [0, 1, 2, 3].map(|_| vec![F::zero(); tt * n]);
        let mut du = vec![F::zero(); n];
        let mut ds = vec![F::zero(); nn];
        let mut states = vec![F::zero(); CHUNK * nn];
        for c in (0..chunks).rev() {
            let (t0, t1) = (c * CHUNK, (c * CHUNK + CHUNK).min(tt));
            s.copy_from_slice(&ckpt[c * nn..(c + 1) * nn]);
            for t in t0..t1 {
                states[(t - t0) * nn..(t - t0 + 1) * nn].copy_from_slice(&s);
                self.step(t, &mut s, None);
            }
            for t in (t0..t1).rev() {
                let st = &states[(t - t0) * nn..(t - t0 + 1) * nn];
                let [r, k, v, w] = self.at(t);
                let g = &gy[t * n..(t + 1) * n];
                let dot_gv = (0..n).fold(F::zero(), |a, j| a + g[j] * v[j]);
                let rku = (0..n).fold(F::zero(), |a, i| a + r[i] * self.u[i] * k[i]);
                let [dr, dk, dv, dw] = &mut grads;
                for i in 0..n {
                    let (mut acc_r, mut acc_k, mut acc_w) = (F::zero(), F::zero(), F::zero());
                    let uk = self.u[i] * k[i];
                    for j in 0..n {
                        let (sij, dsij) = (st[i * n + j], ds[i * n + j]);
                        acc_r = acc_r + g[j] * (uk * v[j] + sij);
                        acc_k = acc_k + dsij * v[j];
                        acc_w = acc_w + dsij * sij;
                    }
                    dr[t * n + i] = acc_r;
                    dk[t * n + i] = r[i] * self.u[i] * dot_gv + acc_k;
                    dw[t * n + i] = acc_w;
                    du[i] = du[i] + r[i] * k[i] * dot_gv;
                }
                for j in 0..n {
                    let acc = (0..n).fold(F::zero(), |a, i| a + ds[i * n + j] * k[i]);
                    dv[t * n + j] = g[j] * rku + acc;
                }
                for i in 0..n {
                    for j in 0..n {
                        ds[i * n + j] = ds[i * n + j] * w[i] + r[i] * g[j];
                    }
                }
            }
        }
        (grads, du)
    }
}

fn heads(d: Dims) -> Vec<(usize, usize)> {
    (0..d.b).flat_map(|b| (0..d.h).map(move |h| (b, h))).collect()
}

/// Forward over every head in parallel: (y [B,T,H,N], final states [B,H,N,N]).
fn forward_all<F: Float + Send + Sync>(d: Dims, p: &[F], u: &[F], s0: Option<&[F]>) -> (Vec<F>, Vec<F>) {
    let nn = d.n * d.n;
    let per: Vec<_> = heads(d)
        .into_par_iter()
        .map(|(b, h)| {
            let head = Head { d, p, u: &u[h * d.n..(h + 1) * d.n], b, h };
            head.forward(s0.map(|s| &s[(b * d.h + h) * nn..(b * d.h + h + 1) * nn]))
        })
        .collect();
    let mut y = vec![F::zero(); d.plane()];
    let mut st = vec![F::zero(); d.b * d.h * nn];
    for ((b, h), (yh, sh)) in heads(d).into_iter().zip(per) {
        for t in 0..d.t {
            let o = d.at(b, t, h);
            y[o..o + d.n].copy_from_slice(&yh[t * d.n..(t + 1) * d.n]);
        }
        st[(b * d.h + h) * nn..(b * d.h + h + 1) * nn].copy_from_slice(&sh);
    }
    (y, st)
}

/// Backward over every head in parallel: (d packed [4,B,T,H,N], du [H,N]).
fn backward_all<F: Float + Send + Sync>(d: Dims, p: &[F], u: &[F], s0: Option<&[F]>, gy: &[F]) -> (Vec<F>, Vec<F>) {
    let nn = d.n * d.n;
    let per: Vec<_> = heads(d)
        .into_par_iter()
        .map(|(b, h)| {
            let head = Head { d, p, u: &u[h * d.n..(h + 1) * d.n], b, h };
            let mut g = vec![F::zero(); d.t * d.n];
            for t in 0..d.t {
                let o = d.at(b, t, h);
                g[t * d.n..(t + 1) * d.n].copy_from_slice(&gy[o..o + d.n]);
            }
            head.backward(s0.map(|s| &s[(b * d.h + h) * nn..(b * d.h + h + 1) * nn]), &g)
        })
        .collect();
    let plane = d.plane();
    let mut dp = vec![F::zero(); 4 * plane];
    let mut du = vec![F::zero(); d.h * d.n];
    // Summed in (b, h) order, so du does not depend on the thread schedule.
    for ((b, h), (gs, duh)) in heads(d).into_iter().zip(per) {
        for (q, gq) in gs.iter().enumerate() {
            for t in 0..d.t {
                let o = q * plane + d.at(b, t, h);
                dp[o..o + d.n].copy_from_slice(&gq[t * d.n..(t + 1) * d.n]);
            }
        }
        for i in 0..d.n {
            du[h * d.n + i] = du[h * d.n + i] + duh[i];
        }
    }
    (dp, du)
}

/// The custom op: arg1 is r, k, v, w stacked as [4, B, T, H, N], arg2 is u [H, N].
struct Wkv6Op {
    d: Dims,
    s0: Option<Tensor>,
}

fn slice<'a, T>(v: &'a [T], l: &Layout) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("wkv6: inputs must be contiguous"),
    }
}

fn tensor_vec<F: WithDType>(t: &Tensor) -> candle_core::Result<Vec<F>> {
    t.flatten_all()?.to_dtype(F::DTYPE)?.to_vec1::<F>()
}

impl Wkv6Op {
    fn state<F: WithDType>(&self) -> candle_core::Result<Option<Vec<F>>> {
        self.s0.as_ref().map(tensor_vec::<F>).transpose()
    }
}

impl CustomOp2 for Wkv6Op {
    fn name(&self) -> &'static str {
        "wkv6"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = self.d;
        let shape = Shape::from((d.b, d.t, d.h, d.n));
        match (s1, s2) {
            (CpuStorage::F32(p), CpuStorage::F32(u)) => {
                let s0 = self.state::<f32>()?;
                let (y, _) = forward_all(d, slice(p, l1)?, slice(u, l2)?, s0.as_deref());
                Ok((CpuStorage::F32(y), shape))
            }
            (CpuStorage::F64(p), CpuStorage::F64(u)) => {
                let s0 = self.state::<f64>()?;
                let (y, _) = forward_all(d, slice(p, l1)?, slice(u, l2)?, s0.as_deref());
                Ok((CpuStorage::F64(y), shape))
            }
            _ => candle_core::bail!("wkv6: r, k, v, w and u must all be f32 or all f64"),
        }
    }

    fn bwd(
        &self,
        arg1: &Tensor,
        arg2: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let d = self.d;
        let dev = arg1.device();
        macro_rules! run {
            ($f:ty) => {{
                let p = tensor_vec::<$f>(arg1)?;
                let u = tensor_vec::<$f>(arg2)?;
                let gy = tensor_vec::<$f>(grad_res)?;
                let s0 = self.state::<$f>()?;
                let (dp, du) = backward_all(d, &p, &u, s0.as_deref(), &gy);
                (Tensor::from_vec(dp, (4, d.b, d.t, d.h, d.n), dev)?, Tensor::from_vec(du, (d.h, d.n), dev)?)
            }};
        }
        let (dp, du) = match arg1.dtype() {
            DType::F32 => run!(f32),
            DType::F64 => run!(f64),
            dt => candle_core::bail!("wkv6: unsupported dtype {dt:?}"),
        };
        Ok((Some(dp), Some(du)))
    }
}

fn check(r: &Tensor, k: &Tensor, v: &Tensor, w: &Tensor, u: &Tensor, s0: Option<&Tensor>) -> Result<Dims> {
    let (b, t, h, n) = r.dims4()?;
    for (name, x) in [("k", k), ("v", v), ("w", w)] {
        if x.dims() != r.dims() {
            return Err(ModelError::BadInput(format!("wkv6: {name} has shape {:?}, r has {:?}", x.dims(), r.dims())));
        }
    }
    if u.dims() != [h, n] {
        return Err(ModelError::BadInput(format!("wkv6: u has shape {:?}, expected [{h}, {n}]", u.dims())));
    }
    if let Some(s) = s0 {
        if s.dims() != [b, h, n, n] {
            return Err(ModelError::BadInput(format!(
                "wkv6: state has shape {:?}, expected [{b}, {h}, {n}, {n}]",
                s.dims()
            )));
        }
    }
    Ok(Dims { b, t, h, n })
}

/// Differentiable WKV6 over a sequence.
///
/// `r, k, v, w` are [B, T, H, N] (`w` is the decay in (0, 1), already
/// `exp(-exp(d))`), `u` is the bonus [H, N], `s0` an optional initial state
/// [B, H, N, N] that is treated as a constant. Returns y [B, T, H, N].
/// Gradients flow to r, k, v, w and u.
pub fn wkv6(r: &Tensor, k: &Tensor, v: &Tensor, w: &Tensor, u: &Tensor, s0: Option<&Tensor>) -> Result<Tensor> {
    let d = check(r, k, v, w, u, s0)?;
    // The op has a CPU kernel only. On an accelerator its inputs visit the host and the
    // output goes back; `to_device` records a backward step, so gradients still flow.
    let (dev, cpu) = (r.device().clone(), Device::Cpu);
    let packed = Tensor::stack(&[r, k, v, w], 0)?.to_device(&cpu)?.contiguous()?;
    let s0 = s0.map(|s| s.detach().to_device(&cpu)).transpose()?;
    let op = Wkv6Op { d, s0 };
    let y = packed.apply_op2(&u.to_device(&cpu)?.contiguous()?, op)?;
    Ok(y.to_device(&dev)?)
}

/// WKV6 forward that also returns the final state [B, H, N, N]; records no gradient.
pub fn wkv6_with_state(
    r: &Tensor,
    k: &Tensor,
    v: &Tensor,
    w: &Tensor,
    u: &Tensor,
    s0: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    let d = check(r, k, v, w, u, s0)?;
    let dev = r.device();
    let packed = Tensor::stack(&[r, k, v, w], 0)?.detach();
    macro_rules! run {
        ($f:ty) => {{
            let p = tensor_vec::<$f>(&packed)?;
            let uu = tensor_vec::<$f>(u)?;
            let s = s0.map(tensor_vec::<$f>).transpose()?;
            let (y, st) = forward_all(d, &p, &uu, s.as_deref());
            (Tensor::from_vec(y, (d.b, d.t, d.h, d.n), dev)?, Tensor::from_vec(st, (d.b, d.h, d.n, d.n), dev)?)
        }};
    }
    Ok(match r.dtype() {
        DType::F32 => run!(f32),
        DType::F64 => run!(f64),
        dt => return Err(ModelError::BadInput(format!("wkv6: unsupported dtype {dt:?}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use rand::{Rng, SeedableRng};

    fn rand_vec(rng: &mut rand_chacha::ChaCha8Rng, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n).map(|_| rng.random_range(lo..hi)).collect()
    }

    struct Case {
        r: Var,
        k: Var,
        v: Var,
        w: Var,
        u: Var,
        s0: Option<Tensor>,
        proj: Tensor,
    }

    fn case(seed: u64, (b, t, h, n): (usize, usize, usize, usize), with_state: bool) -> Case {
        let dev = Device::Cpu;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let sh = (b, t, h, n);
        let mk = |rng: &mut _, lo, hi| Var::from_vec(rand_vec(rng, b * t * h * n, lo, hi), sh, &dev).unwrap();
        let r = mk(&mut rng, -1.0, 1.0);
        let k = mk(&mut rng, -1.0, 1.0);
        let v = mk(&mut rng, -1.0, 1.0);
        let w = mk(&mut rng, 0.2, 0.99);
        let u = Var::from_vec(rand_vec(&mut rng, h * n, -1.0, 1.0), (h, n), &dev).unwrap();
        let s0 = with_state
            .then(|| Tensor::from_vec(rand_vec(&mut rng, b * h * n * n, -1.0, 1.0), (b, h, n, n), &dev).unwrap());
        let proj = Tensor::from_vec(rand_vec(&mut rng, b * t * h * n, -1.0, 1.0), sh, &dev).unwrap();
        Case { r, k, v, w, u, s0, proj }
    }

    impl Case {
        fn loss(&self) -> Tensor {
            let y = wkv6(&self.r, &self.k, &self.v, &self.w, &self.u, self.s0.as_ref()).unwrap();
            (y * &self.proj).unwrap().sum_all().unwrap()
        }
    }

    /// Central finite differences in f64 against the hand-written backward,
    /// for every element of every input, across a chunk boundary (T > CHUNK).
    #[test]
    fn wkv6_backward_matches_finite_differences() {
        for (seed, dims, with_state) in [(1, (2, 19, 2, 3), false), (2, (1, 35, 1, 4), true)] {
            let c = case(seed, dims, with_state);
            let grads = c.loss().backward().unwrap();
            let eps = 1e-6;
            for (name, var) in [("r", &c.r), ("k", &c.k), ("v", &c.v), ("w", &c.w), ("u", &c.u)] {
                let g = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
                let base = var.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
                for i in 0..base.len() {
                    let probe = |delta: f64| {
                        let mut x = base.clone();
                        x[i] += delta;
                        var.set(&Tensor::from_vec(x, var.shape(), &Device::Cpu).unwrap()).unwrap();
                        c.loss().to_scalar::<f64>().unwrap()
                    };
                    let numeric = (probe(eps) - probe(-eps)) / (2.0 * eps);
                    var.set(&Tensor::from_vec(base.clone(), var.shape(), &Device::Cpu).unwrap()).unwrap();
                    let err = (numeric - g[i]).abs();
                    assert!(err < 1e-6 * (1.0 + numeric.abs()), "d{name}[{i}]: analytic {} numeric {numeric}", g[i]);
                }
            }
        }
    }

    /// The op agrees with a naive per-token recurrence, in f32, for y and the final state.
    #[test]
    fn wkv6_matches_naive_recurrence() {
        let (b, t, h, n) = (2, 5, 3, 4);
        let c = case(7, (b, t, h, n), true);
        let f = |x: &Var| x.as_tensor().to_dtype(DType::F32).unwrap();
        let (r, k, v, w, u) = (f(&c.r), f(&c.k), f(&c.v), f(&c.w), f(&c.u));
        let s0 = c.s0.as_ref().unwrap().to_dtype(DType::F32).unwrap();
        let (y, st) = wkv6_with_state(&r, &k, &v, &w, &u, Some(&s0)).unwrap();
        let y_grad = wkv6(&r, &k, &v, &w, &u, Some(&s0)).unwrap();
        let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(y, y_grad.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let get = |x: &Tensor| x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (r, k, v, w, u, mut s) = (get(&r), get(&k), get(&v), get(&w), get(&u), get(&s0));
        let d = Dims { b, t, h, n };
        for bb in 0..b {
            for hh in 0..h {
                for tt in 0..t {
                    let o = d.at(bb, tt, hh);
                    let so = (bb * h + hh) * n * n;
                    for j in 0..n {
                        let mut want = 0f32;
                        for i in 0..n {
                            want += r[o + i] * (u[hh * n + i] * k[o + i] * v[o + j] + s[so + i * n + j]);
                        }
                        assert!((want - y[o + j]).abs() < 1e-5);
                    }
                    for i in 0..n {
                        for j in 0..n {
                            s[so + i * n + j] = w[o + i] * s[so + i * n + j] + k[o + i] * v[o + j];
                        }
                    }
                }
            }
        }
        let st = st.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (a, b) in st.iter().zip(&s) {
            assert!((a - b).abs() < 1e-5);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// Splitting a sequence anywhere and carrying the state across gives
        /// the same outputs and final state as one pass.
        #[test]
        fn wkv6_state_carry_equals_one_pass(b in 1usize..3, t in 2usize..40, h in 1usize..3, n in 1usize..6, cut in 1usize..39, seed in 0u64..1000) {
            let cut = cut.min(t - 1);
            let c = case(seed, (b, t, h, n), true);
            let s0 = c.s0.as_ref().unwrap();
            let (y, s) = wkv6_with_state(&c.r, &c.k, &c.v, &c.w, &c.u, Some(s0)).unwrap();
            let part = |x: &Var, a: usize, len: usize| x.as_tensor().narrow(1, a, len).unwrap();
            let (y1, s1) = wkv6_with_state(&part(&c.r, 0, cut), &part(&c.k, 0, cut), &part(&c.v, 0, cut), &part(&c.w, 0, cut), &c.u, Some(s0)).unwrap();
            let rest = t - cut;
            let (y2, s2) = wkv6_with_state(&part(&c.r, cut, rest), &part(&c.k, cut, rest), &part(&c.v, cut, rest), &part(&c.w, cut, rest), &c.u, Some(&s1)).unwrap();
            let joined = Tensor::cat(&[y1, y2], 1).unwrap();
            let dy = (y - joined).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
            let ds = (s - s2).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
            proptest::prop_assert!(dy < 1e-12 && ds < 1e-12, "dy {} ds {}", dy, ds);
        }
    }

    #[test]
    fn wkv6_rejects_mismatched_shapes() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 2, 2, 4), DType::F32, &dev).unwrap();
        let bad_u = Tensor::zeros((2, 3), DType::F32, &dev).unwrap();
        let err = wkv6(&x, &x, &x, &x, &bad_u, None).unwrap_err().to_string();
        assert!(err.contains("u has shape"), "{err}");
    }
}
