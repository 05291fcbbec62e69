//! Aggregating the round's accepted updates into one, robustly and deterministically.
//!
//! The caller passes the updates in a fixed order (by author id); every sum here runs in that
//! order, in f64, so the same accepted set gives the same bits on every node.
//!
//! - [`Rule::CenteredClip`] (Karimireddy, He and Jaggi, ICML 2021), the default: start at
//!   the coordinate median, then move towards each update by at most τ in L2 norm, a few
//!   times. A few scaled, flipped or "a little is enough" updates move it at most τ each.
//! - [`Rule::TrimmedMean`]: per coordinate, drop the largest and smallest `trim` fraction.
//! - [`Rule::Median`]: the coordinate-wise median.
//! - [`Rule::Mean`]: the plain mean, which one liar moves as far as it likes (kept to show it).

use serde::{Deserialize, Serialize};

/// How updates are combined.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case", deny_unknown_fields)]
pub enum Rule {
    /// The plain mean.
    Mean,
    /// Centered clipping: `iters` passes with radius `tau` (0: the median distance each pass).
    CenteredClip {
        /// The clipping radius in L2 norm; 0 picks the median of the distances each pass.
        #[serde(default)]
        tau: f32,
        /// Passes.
        #[serde(default = "three")]
        iters: u32,
    },
    /// Per coordinate, the mean after dropping the `trim` fraction at each end.
    TrimmedMean {
        /// Fraction dropped at each end (0 ≤ trim < 0.5).
        trim: f32,
    },
    /// The coordinate-wise median.
    Median,
}

fn three() -> u32 {
    3
}

impl Default for Rule {
    fn default() -> Self {
        Rule::CenteredClip { tau: 0.0, iters: 3 }
    }
}

impl Rule {
    /// Check its parameters.
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            Rule::CenteredClip { tau, iters } if !(tau >= 0.0 && tau.is_finite()) || iters == 0 || iters > 100 => {
                Err(format!("centered_clip needs tau ≥ 0 and 1..=100 iters (got tau {tau}, iters {iters})"))
            }
            Rule::TrimmedMean { trim } if !(0.0..0.5).contains(&trim) => {
                Err(format!("trimmed_mean needs 0 ≤ trim < 0.5 (got {trim})"))
            }
            _ => Ok(()),
        }
    }

    /// Combine `updates` (all the same length, in the agreed order). None when there are none.
    pub fn aggregate(&self, updates: &[&[f32]]) -> Option<Vec<f32>> {
        let n = updates.len();
        let len = updates.first()?.len();
        if updates.iter().any(|u| u.len() != len) {
            return None;
        }
        Some(match *self {
            Rule::Mean => {
                let mut acc = vec![0f64; len];
                for u in updates {
                    acc.iter_mut().zip(*u).for_each(|(a, v)| *a += f64::from(*v));
                }
                acc.iter().map(|a| (a / n as f64) as f32).collect()
            }
            Rule::Median => per_coordinate(updates, median),
            Rule::TrimmedMean { trim } => {
                let k = ((n as f64) * f64::from(trim)).floor() as usize;
                let k = k.min((n - 1) / 2);
                per_coordinate(updates, |col| {
                    let kept = &col[k..n - k];
                    (kept.iter().map(|&v| f64::from(v)).sum::<f64>() / kept.len() as f64) as f32
                })
            }
            Rule::CenteredClip { tau, iters } => centered_clip(updates, tau, iters),
        })
    }
}

/// Apply `f` to each coordinate's sorted column of values.
fn per_coordinate(updates: &[&[f32]], f: impl Fn(&[f32]) -> f32) -> Vec<f32> {
    let len = updates[0].len();
    let mut col = vec![0f32; updates.len()];
    (0..len)
        .map(|j| {
            for (c, u) in col.iter_mut().zip(updates) {
                *c = u[j];
            }
            col.sort_unstable_by(f32::total_cmp);
            f(&col)
        })
        .collect()
}

/// The median of sorted values; the mean of the middle two for an even count.
fn median(sorted: &[f32]) -> f32 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        ((f64::from(sorted[n / 2 - 1]) + f64::from(sorted[n / 2])) / 2.0) as f32
    }
}

fn centered_clip(updates: &[&[f32]], tau: f32, iters: u32) -> Vec<f32> {
    let n = updates.len();
    let mut v = per_coordinate(updates, median);
    for _ in 0..iters {
        let dists: Vec<f64> = updates
            .iter()
            .map(|u| u.iter().zip(&v).map(|(a, b)| f64::from(a - b).powi(2)).sum::<f64>().sqrt())
            .collect();
        let radius = if tau > 0.0 {
            f64::from(tau)
        } else {
            let mut d = dists.clone();
            d.sort_unstable_by(f64::total_cmp);
            if n % 2 == 1 {
                d[n / 2]
            } else {
                (d[n / 2 - 1] + d[n / 2]) / 2.0
            }
        };
        let mut step = vec![0f64; v.len()];
        for (u, &d) in updates.iter().zip(&dists) {
            let w = if d > radius { radius / d } else { 1.0 };
            step.iter_mut().zip(u.iter().zip(&v)).for_each(|(s, (a, b))| *s += f64::from(a - b) * w);
        }
        v.iter_mut().zip(&step).for_each(|(x, s)| *x = (f64::from(*x) + s / n as f64) as f32);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rules() -> [Rule; 4] {
        [Rule::Mean, Rule::default(), Rule::TrimmedMean { trim: 0.25 }, Rule::Median]
    }

    #[test]
    fn agreeing_updates_aggregate_to_themselves() {
        let u = [0.5f32, -1.0, 2.0];
        for r in rules() {
            let got = r.aggregate(&[&u, &u, &u, &u]).unwrap();
            for (g, w) in got.iter().zip(u) {
                assert!((g - w).abs() < 1e-6, "{r:?}: {got:?}");
            }
        }
        assert!(Rule::Mean.aggregate(&[]).is_none());
        assert!(Rule::Mean.aggregate(&[&[1.0], &[1.0, 2.0]]).is_none());
    }

    #[test]
    fn one_liar_in_four_moves_the_mean_but_not_the_robust_rules() {
        let honest = [[1.0f32, 1.0, 1.0, 1.0], [1.1, 0.9, 1.0, 1.05], [0.95, 1.05, 1.0, 0.9]];
        let liar = [-100.0f32, -100.0, -100.0, -100.0];
        let all: Vec<&[f32]> = vec![&honest[0], &honest[1], &honest[2], &liar];
        let err = |v: Vec<f32>| v.iter().map(|x| (x - 1.0).abs()).fold(0f32, f32::max);
        assert!(err(Rule::Mean.aggregate(&all).unwrap()) > 20.0);
        for r in [Rule::default(), Rule::TrimmedMean { trim: 0.25 }, Rule::Median] {
            let e = err(r.aggregate(&all).unwrap());
            assert!(e < 0.2, "{r:?} moved {e}");
        }
    }

    #[test]
    fn bad_parameters_are_refused() {
        assert!(Rule::TrimmedMean { trim: 0.5 }.validate().is_err());
        assert!(Rule::CenteredClip { tau: -1.0, iters: 3 }.validate().is_err());
        assert!(Rule::CenteredClip { tau: 1.0, iters: 0 }.validate().is_err());
        assert!(Rule::default().validate().is_ok());
    }

    proptest! {
        /// Same inputs in the same order, same bits; and every robust rule stays inside the
        /// honest majority's per-coordinate range when fewer than a quarter lie.
        #[test]
        fn deterministic_and_bounded(
            honest in prop::collection::vec(prop::collection::vec(-1.0f32..1.0, 8), 3..8),
            scale in -1000.0f32..1000.0,
        ) {
            let liar: Vec<f32> = honest[0].iter().map(|v| v * scale).collect();
            let mut all: Vec<&[f32]> = honest.iter().map(|v| v.as_slice()).collect();
            all.push(&liar);
            for r in rules() {
                let a = r.aggregate(&all).unwrap();
                let b = r.aggregate(&all).unwrap();
                prop_assert_eq!(a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), b.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
            }
            for r in [Rule::TrimmedMean { trim: 0.25 }, Rule::Median] {
                let a = r.aggregate(&all).unwrap();
                for j in 0..8 {
                    let lo = honest.iter().map(|h| h[j]).fold(f32::INFINITY, f32::min);
                    let hi = honest.iter().map(|h| h[j]).fold(f32::NEG_INFINITY, f32::max);
                    prop_assert!(a[j] >= lo - 1e-5 && a[j] <= hi + 1e-5, "{:?} coordinate {} = {} outside [{}, {}]", r, j, a[j], lo, hi);
                }
            }
        }
    }
}
