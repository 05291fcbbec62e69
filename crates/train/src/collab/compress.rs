//! A pseudo-gradient compressed for the wire: blockwise int8 (the engine's quantizer), with
//! optional top-k sparsification, and error feedback: what rounding or dropping left out
//! of one round's update is added to the next one's, so nothing is lost for good.

use odin_proto::train::Update;

/// Which coordinates travel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sparsity {
    /// All of them.
    Dense,
    /// The largest `fraction` of them by magnitude (0 < fraction ≤ 1).
    TopK(f32),
}

/// A node's compressor; it keeps the residual between rounds.
#[derive(Debug, Clone)]
pub struct Compressor {
    sparsity: Sparsity,
    residual: Vec<f32>,
}

impl Compressor {
    /// A compressor for vectors of `len` values.
    pub fn new(len: usize, sparsity: Sparsity) -> Self {
        Self { sparsity, residual: vec![0.0; len] }
    }

    /// The residual carried to the next round.
    pub fn residual(&self) -> &[f32] {
        &self.residual
    }

    /// Compress `delta` plus the carried residual; the part that does not travel is carried on.
    pub fn compress(&mut self, delta: &[f32]) -> Update {
        if self.residual.len() != delta.len() {
            self.residual = vec![0.0; delta.len()];
        }
        let x: Vec<f32> = delta.iter().zip(&self.residual).map(|(d, r)| d + r).collect();
        let update = match self.sparsity {
            Sparsity::Dense => Update::quantize(x.len(), None, &x),
            Sparsity::TopK(f) => {
                let idx = top_k(&x, ((x.len() as f64 * f64::from(f)).ceil() as usize).clamp(1, x.len().max(1)));
                let vals: Vec<f32> = idx.iter().map(|&i| x[i as usize]).collect();
                Update::quantize(x.len(), Some(idx), &vals)
            }
        };
        // A freshly built update always decodes (its scales come from finite inputs or are
        // refused by the caller's check); an empty decode leaves the whole of x as residual.
        let sent = update.decode().unwrap_or_else(|_| vec![0.0; x.len()]);
        self.residual = x.iter().zip(&sent).map(|(a, b)| a - b).collect();
        update
    }
}

/// The indices of the `k` largest magnitudes, ties to the lower index, in ascending order.
fn top_k(x: &[f32], k: usize) -> Vec<u32> {
    let mut order: Vec<u32> = (0..x.len() as u32).collect();
    let key = |&i: &u32| (std::cmp::Reverse(x[i as usize].abs().to_bits()), i);
    if k < order.len() {
        order.select_nth_unstable_by_key(k, key);
        order.truncate(k);
    }
    order.sort_unstable();
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn top_k_keeps_the_largest_magnitudes_in_order() {
        assert_eq!(top_k(&[0.1, -5.0, 3.0, 0.0, 4.0], 3), vec![1, 2, 4]);
        assert_eq!(top_k(&[1.0, 1.0, 1.0], 2), vec![0, 1]);
    }

    proptest! {
        /// Error feedback loses nothing: after r rounds, what was sent plus the residual is
        /// exactly what was meant to be sent (up to f32 rounding of the sums).
        #[test]
        fn error_feedback_conserves_the_sum(
            rounds in prop::collection::vec(prop::collection::vec(-3.0f32..3.0, 70), 1..6),
            frac in prop::option::of(0.05f32..1.0),
        ) {
            let mut c = Compressor::new(70, frac.map_or(Sparsity::Dense, Sparsity::TopK));
            let mut meant = vec![0f64; 70];
            let mut sent = vec![0f64; 70];
            for d in &rounds {
                let u = c.compress(d);
                for (s, v) in sent.iter_mut().zip(u.decode().unwrap()) {
                    *s += f64::from(v);
                }
                for (m, v) in meant.iter_mut().zip(d) {
                    *m += f64::from(*v);
                }
            }
            for i in 0..70 {
                let got = sent[i] + f64::from(c.residual()[i]);
                prop_assert!((got - meant[i]).abs() < 1e-4, "{} vs {}", got, meant[i]);
            }
        }

        #[test]
        fn top_k_sends_about_the_fraction_asked(d in prop::collection::vec(-1.0f32..1.0, 100..300), frac in 0.01f32..0.5) {
            let mut c = Compressor::new(d.len(), Sparsity::TopK(frac));
            let u = c.compress(&d);
            let k = u.idx.as_ref().unwrap().len();
            prop_assert_eq!(k, ((d.len() as f64 * f64::from(frac)).ceil() as usize).max(1));
        }
    }
}
