//! The outer optimizer: SGD with Nesterov momentum on the aggregated pseudo-gradient, as
//! DiLoCo uses (outer learning rate 0.7, momentum 0.9 in the paper).

use serde::{Deserialize, Serialize};

/// The outer step's settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outer {
    /// Outer learning rate.
    #[serde(default = "lr")]
    pub lr: f32,
    /// Momentum (0: plain averaging when lr is 1).
    #[serde(default = "mu")]
    pub momentum: f32,
}

fn lr() -> f32 {
    0.7
}
fn mu() -> f32 {
    0.9
}

impl Default for Outer {
    fn default() -> Self {
        Self { lr: lr(), momentum: mu() }
    }
}

impl Outer {
    /// θ ← θ − lr·(g + μ·m′) with m′ = μ·m + g, where g is the aggregated pseudo-gradient
    /// (θ_start − θ_local, so the step moves towards where the nodes went).
    pub fn step(&self, theta: &mut [f32], momentum: &mut [f32], g: &[f32]) {
        for ((t, m), &g) in theta.iter_mut().zip(momentum.iter_mut()).zip(g) {
            *m = self.momentum * *m + g;
            *t -= self.lr * (g + self.momentum * *m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lr_one_without_momentum_lands_on_the_average_of_the_nodes() {
        let o = Outer { lr: 1.0, momentum: 0.0 };
        let mut theta = vec![1.0, 2.0];
        let mut m = vec![0.0, 0.0];
        // Two nodes went to 0.0 and 0.5 from 1.0: deltas 1.0 and 0.5, mean 0.75.
        o.step(&mut theta, &mut m, &[0.75, 0.0]);
        assert_eq!(theta, vec![0.25, 2.0]);
    }

    #[test]
    fn momentum_accumulates_and_nesterov_looks_ahead() {
        let o = Outer { lr: 0.5, momentum: 0.9 };
        let mut theta = vec![0.0];
        let mut m = vec![0.0];
        o.step(&mut theta, &mut m, &[1.0]);
        assert_eq!(m, vec![1.0]);
        assert!((theta[0] - -0.95).abs() < 1e-6);
        o.step(&mut theta, &mut m, &[1.0]);
        assert!((m[0] - 1.9).abs() < 1e-6);
        assert!((theta[0] - (-0.95 - 0.5 * (1.0 + 0.9 * 1.9))).abs() < 1e-6);
    }
}
