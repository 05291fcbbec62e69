//! AdamW, the learning-rate schedule and global-norm clipping.
//!
//! Written here rather than taken from candle-nn because exact resume needs the
//! moment estimates saved and restored, which `candle_nn::AdamW` does not expose.

use std::collections::BTreeMap;

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// Linear warmup to `lr`, then cosine decay to `min_lr` at `total` steps.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Schedule {
    /// Peak learning rate.
    pub lr: f64,
    /// Final learning rate.
    pub min_lr: f64,
    /// Warmup steps.
    pub warmup: u64,
    /// Total steps.
    pub total: u64,
}

impl Schedule {
    /// Learning rate for 0-based optimizer `step`.
    pub fn lr_at(&self, step: u64) -> f64 {
        if step < self.warmup {
            return self.lr * (step + 1) as f64 / self.warmup as f64;
        }
        if step >= self.total {
            return self.min_lr;
        }
        let span = (self.total - self.warmup).max(1) as f64;
        let p = (step - self.warmup) as f64 / span;
        self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + (std::f64::consts::PI * p).cos())
    }
}

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct AdamWParams {
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay (applied to matrices only).
    pub weight_decay: f64,
}

/// AdamW with bias correction and decoupled weight decay.
pub struct AdamW {
    params: AdamWParams,
    /// First and second moments by parameter name.
    moments: BTreeMap<String, (Tensor, Tensor)>,
    /// Updates applied so far (for bias correction).
    pub t: u64,
}

impl AdamW {
    /// A fresh optimizer with zero moments for `vars`.
    pub fn new<'a>(params: AdamWParams, vars: impl Iterator<Item = (&'a String, &'a Var)>) -> Result<Self> {
        let mut moments = BTreeMap::new();
        for (name, v) in vars {
            let z = v.as_tensor().zeros_like()?;
            moments.insert(name.clone(), (z.clone(), z));
        }
        Ok(Self { params, moments, t: 0 })
    }

    /// The moments, for checkpoints: `m.NAME` and `v.NAME`.
    pub fn state(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for (k, (m, v)) in &self.moments {
            out.insert(format!("m.{k}"), m.clone());
            out.insert(format!("v.{k}"), v.clone());
        }
        out
    }

    /// Restore moments saved by [`AdamW::state`]; every parameter must be present with its shape.
    pub fn load_state(&mut self, state: &BTreeMap<String, Tensor>, t: u64) -> std::result::Result<(), String> {
        for (k, (m, v)) in self.moments.iter_mut() {
            let get = |p: &str| {
                state.get(&format!("{p}.{k}")).cloned().ok_or_else(|| format!("optimizer state lacks {p}.{k}"))
            };
            let (nm, nv) = (get("m")?, get("v")?);
            if nm.dims() != m.dims() || nv.dims() != v.dims() {
                return Err(format!("optimizer state for {k} has shape {:?}, expected {:?}", nm.dims(), m.dims()));
            }
            *m = nm;
            *v = nv;
        }
        self.t = t;
        Ok(())
    }

    /// One update of every var in `vars` with its gradient from `grads` at learning rate `lr`.
    pub fn step<'a>(
        &mut self,
        vars: impl Iterator<Item = (&'a String, &'a Var)>,
        grads: &BTreeMap<String, Tensor>,
        lr: f64,
    ) -> Result<()> {
        self.t += 1;
        let p = self.params;
        let bc1 = 1.0 - p.beta1.powi(self.t as i32);
        let bc2 = 1.0 - p.beta2.powi(self.t as i32);
        for (name, var) in vars {
            let (Some(g), Some((m, v))) = (grads.get(name), self.moments.get_mut(name)) else { continue };
            let g = g.detach();
            *m = ((m.clone() * p.beta1)? + (&g * (1.0 - p.beta1))?)?;
            *v = ((v.clone() * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
            let denom = ((v.clone() / bc2)?.sqrt()? + p.eps)?;
            let update = ((m.clone() / bc1)? / denom)?;
            let w = var.as_tensor().detach();
            // Decay only matrices: norms, biases, decay/bonus vectors and mixing coefficients keep their scale.
            let decayed = if w.rank() >= 2 && p.weight_decay > 0.0 { (&w * (1.0 - lr * p.weight_decay))? } else { w };
            var.set(&(decayed - (update * lr)?)?)?;
        }
        Ok(())
    }
}

/// Scale `grads` so their global L2 norm is at most `max_norm`; returns the norm before clipping.
pub fn clip_global_norm(grads: &mut BTreeMap<String, Tensor>, max_norm: f64) -> Result<f64> {
    let mut sq = 0.0f64;
    for g in grads.values() {
        sq += f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?);
    }
    let norm = sq.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let s = max_norm / (norm + 1e-12);
        for g in grads.values_mut() {
            *g = (g.clone() * s)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        let s = Schedule { lr: 1e-3, min_lr: 1e-4, warmup: 10, total: 110 };
        assert!((s.lr_at(0) - 1e-4).abs() < 1e-12);
        assert!((s.lr_at(9) - 1e-3).abs() < 1e-12);
        assert!((s.lr_at(10) - 1e-3).abs() < 1e-12);
        assert!((s.lr_at(60) - 5.5e-4).abs() < 1e-9, "halfway is the midpoint: {}", s.lr_at(60));
        assert!((s.lr_at(110) - 1e-4).abs() < 1e-12);
        assert!((s.lr_at(10_000) - 1e-4).abs() < 1e-12);
        let mut prev = f64::INFINITY;
        for step in 10..=110 {
            assert!(s.lr_at(step) <= prev + 1e-15);
            prev = s.lr_at(step);
        }
    }

    #[test]
    fn clipping_bounds_the_global_norm_and_keeps_direction() {
        let d = Device::Cpu;
        let mut g = BTreeMap::new();
        g.insert("a".to_string(), Tensor::new(&[3.0f32, 0.0], &d).unwrap());
        g.insert("b".to_string(), Tensor::new(&[[0.0f32, 4.0]], &d).unwrap());
        let before = clip_global_norm(&mut g, 1.0).unwrap();
        assert!((before - 5.0).abs() < 1e-6);
        let a = g["a"].to_vec1::<f32>().unwrap();
        let b = g["b"].to_vec2::<f32>().unwrap();
        assert!((a[0] - 0.6).abs() < 1e-6 && (b[0][1] - 0.8).abs() < 1e-6);
        // Below the bound nothing changes.
        let again = clip_global_norm(&mut g, 10.0).unwrap();
        assert!((again - 1.0).abs() < 1e-5);
        assert!((g["a"].to_vec1::<f32>().unwrap()[0] - 0.6).abs() < 1e-6);
    }

    #[test]
    fn adamw_first_step_moves_each_weight_by_lr_against_the_gradient_sign() {
        let d = Device::Cpu;
        let var = Var::new(&[1.0f32, -2.0, 0.5], &d).unwrap();
        let mut vars = BTreeMap::new();
        vars.insert("w".to_string(), var);
        let hp = AdamWParams { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
        let mut opt = AdamW::new(hp, vars.iter()).unwrap();
        let mut grads = BTreeMap::new();
        grads.insert("w".to_string(), Tensor::new(&[0.3f32, -5.0, 0.0], &d).unwrap());
        opt.step(vars.iter(), &grads, 0.1).unwrap();
        let w = vars["w"].as_tensor().to_vec1::<f32>().unwrap();
        // Bias-corrected Adam's first update is lr * sign(g) (0 where g is 0).
        assert!((w[0] - 0.9).abs() < 1e-5 && (w[1] + 1.9).abs() < 1e-5 && (w[2] - 0.5).abs() < 1e-6, "{w:?}");
    }
}
