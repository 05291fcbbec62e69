//! Differential privacy for a node's update: clip it to L2 norm C, add Gaussian noise of
//! standard deviation σ·C to every coordinate, and account for the whole run with Rényi DP.
//!
//! The accountant is the RDP one of Mironov (2017) for the Gaussian mechanism, which is what
//! Opacus and Google's `dp_accounting` use: each round costs α / (2σ²) at order α (every node
//! takes part in every round, so there is no subsampling to amplify), rounds compose by
//! adding, and the total converts to (ε, δ) with the tighter conversion of Canonne, Kamath and
//! Steinke (2020), minimised over the same orders `dp_accounting` tries.

use rand::Rng;
use serde::{Deserialize, Serialize};

/// The privacy settings of a run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Privacy {
    /// L2 bound every update is clipped to.
    pub clip: f32,
    /// Noise multiplier σ: the noise's standard deviation is σ·clip.
    pub noise: f32,
    /// δ of the (ε, δ) reported after the run.
    #[serde(default = "delta")]
    pub delta: f64,
}

fn delta() -> f64 {
    1e-5
}

impl Privacy {
    /// Check its parameters.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.clip > 0.0 && self.clip.is_finite() && self.noise > 0.0 && self.noise.is_finite()) {
            return Err(format!("privacy needs clip > 0 and noise > 0 (got {} and {})", self.clip, self.noise));
        }
        if !(self.delta > 0.0 && self.delta < 1.0) {
            return Err(format!("privacy.delta must be in (0, 1), got {}", self.delta));
        }
        Ok(())
    }

    /// Clip `delta` to the bound and add the noise, from the operating system's randomness
    /// (noise others could recompute would protect nothing). Returns the norm before clipping.
    pub fn apply(&self, update: &mut [f32], rng: &mut impl Rng) -> f32 {
        let norm = update.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
        let scale = if norm > f64::from(self.clip) { f64::from(self.clip) / norm } else { 1.0 };
        let sd = f64::from(self.noise) * f64::from(self.clip);
        for v in update.iter_mut() {
            *v = (f64::from(*v) * scale + sd * gaussian(rng)) as f32;
        }
        norm as f32
    }
}

/// One standard normal draw (Box–Muller).
fn gaussian(rng: &mut impl Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// The RDP orders tried: `dp_accounting`'s default list.
fn orders() -> Vec<f64> {
    let mut o: Vec<f64> = (1..100).map(|x| 1.0 + f64::from(x) / 10.0).collect();
    o.extend((11..64).map(f64::from));
    o.extend([128.0, 256.0, 512.0, 1024.0]);
    o
}

/// (ε, the order that gives it) after `rounds` Gaussian mechanisms of noise multiplier `noise`.
pub fn epsilon(noise: f64, rounds: u64, delta: f64) -> (f64, f64) {
    orders()
        .into_iter()
        .map(|a| {
            let rdp = rounds as f64 * a / (2.0 * noise * noise);
            let eps = rdp - (delta.ln() + a.ln()) / (a - 1.0) + ((a - 1.0) / a).ln();
            (eps.max(0.0), a)
        })
        .min_by(|x, y| x.0.total_cmp(&y.0))
        .unwrap_or((f64::INFINITY, 0.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn clipping_bounds_the_norm_and_noise_has_the_asked_spread() {
        let p = Privacy { clip: 1.0, noise: 1e-6, delta: 1e-5 };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut u = vec![3.0f32, 4.0];
        assert_eq!(p.apply(&mut u, &mut rng), 5.0);
        assert!((u[0] - 0.6).abs() < 1e-4 && (u[1] - 0.8).abs() < 1e-4, "{u:?}");
        let p = Privacy { clip: 2.0, noise: 0.5, delta: 1e-5 };
        let mut z = vec![0f32; 20000];
        p.apply(&mut z, &mut rng);
        let var = z.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / z.len() as f64;
        assert!((var.sqrt() - 1.0).abs() < 0.03, "sd {}", var.sqrt());
    }

    /// The figures Google's `dp_accounting` 0.6.0 gives for the same events
    /// (`RdpAccountant().compose(GaussianDpEvent(σ), rounds).get_epsilon_and_optimal_order(1e-5)`).
    #[test]
    fn matches_dp_accounting() {
        for (noise, rounds, want, order) in [(1.0, 10, 19.05359753163139, 2.5), (4.0, 20, 5.377728336819822, 5.0)] {
            let (eps, a) = epsilon(noise, rounds, 1e-5);
            assert!((eps - want).abs() < 1e-9, "σ {noise}, {rounds} rounds: {eps} vs {want}");
            assert_eq!(a, order);
        }
    }

    #[test]
    fn more_noise_or_fewer_rounds_cost_less_privacy() {
        let (e1, _) = epsilon(1.0, 10, 1e-5);
        assert!(epsilon(2.0, 10, 1e-5).0 < e1);
        assert!(epsilon(1.0, 5, 1e-5).0 < e1);
        assert!(Privacy { clip: 0.0, noise: 1.0, delta: 1e-5 }.validate().is_err());
    }
}
