//! Seeded sampling (greedy, temperature, top-k, top-p) and the decode loop,
//! under the one settings type, [`odin_format::Sampling`].
//!
//! Sampling uses `libm` and a ChaCha8 stream, so a seed picks the same
//! tokens on every platform, like the logits it reads.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use odin_format::Sampling;

use crate::math::argmax;
use crate::model::Decoder;

/// A sampler: its settings and its random stream.
pub struct Sampler {
    cfg: Sampling,
    rng: ChaCha8Rng,
}

impl Sampler {
    /// A sampler seeded from `cfg.seed`.
    pub fn new(cfg: Sampling) -> Self {
        Self { cfg, rng: ChaCha8Rng::seed_from_u64(cfg.seed) }
    }

    /// Random draws one [`Sampler::sample`] call makes: one when sampling, none when greedy.
    pub fn draws_per_sample(&self) -> u64 {
        u64::from(self.cfg.draws())
    }

    /// Skip `draws` values of the random stream, as if that many tokens had been sampled
    /// (a session rebuilt elsewhere continues the same stream).
    pub fn advance(&mut self, draws: u64) {
        for _ in 0..draws {
            self.rng.next_u64();
        }
    }

    /// Pick a token from `logits`.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.cfg.temperature <= 0.0 || logits.is_empty() {
            return argmax(logits) as u32;
        }
        let mut idx: Vec<usize> = (0..logits.len()).collect();
        idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        if self.cfg.top_k > 0 {
            idx.truncate(self.cfg.top_k as usize);
        }
        let top = f64::from(logits[idx[0]]);
        let mut probs: Vec<f64> =
            idx.iter().map(|&i| libm::exp((f64::from(logits[i]) - top) / self.cfg.temperature)).collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if self.cfg.top_p < 1.0 {
            let mut acc = 0.0;
            let n = probs
                .iter()
                .position(|p| {
                    acc += p;
                    acc >= self.cfg.top_p
                })
                .map_or(probs.len(), |k| k + 1);
            probs.truncate(n);
            idx.truncate(n);
            let t: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= t);
        }
        // 53 random bits: a uniform double in [0, 1).
        let mut u = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        for (p, &i) in probs.iter().zip(&idx) {
            if u < *p {
                return i as u32;
            }
            u -= p;
        }
        idx[idx.len() - 1] as u32
    }
}

/// Prefill `prompt`, then decode up to `max_new` tokens on a whole model (the int8 engine of
/// either architecture, or the trainer's f32 reference), stopping at `stop`. `on_token` sees
/// each new token and may end early by returning false. The one decode loop of the project.
pub fn generate<D: Decoder>(
    model: &D,
    prompt: &[u32],
    max_new: usize,
    sampler: &mut Sampler,
    stop: Option<u32>,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<(Vec<u32>, D::State), D::Error> {
    let mut state = model.start()?;
    let mut logits = model.next_logits(prompt, &mut state)?;
    let mut out = Vec::new();
    for _ in 0..max_new {
        let tok = sampler.sample(&logits);
        if Some(tok) == stop {
            break;
        }
        out.push(tok);
        if !on_token(tok) {
            break;
        }
        logits = model.next_logits(&[tok], &mut state)?;
    }
    Ok((out, state))
}

/// Greedy continuations of many prompts, until `stop` or `max_new` tokens (evaluation).
/// Each prompt decodes alone; with the `threads` feature they run in parallel.
pub fn greedy_many<D: Decoder>(
    model: &D,
    prompts: &[Vec<u32>],
    max_new: usize,
    stop: u32,
) -> Result<Vec<Vec<u32>>, D::Error> {
    let one = |p: &Vec<u32>| {
        let mut greedy = Sampler::new(Sampling::GREEDY);
        generate(model, p, max_new, &mut greedy, Some(stop), |_| true).map(|(toks, _)| toks)
    };
    #[cfg(feature = "threads")]
    {
        use rayon::prelude::*;
        prompts.par_iter().map(one).collect()
    }
    #[cfg(not(feature = "threads"))]
    prompts.iter().map(one).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advancing_continues_the_stream_a_sampler_would_have_drawn() {
        let cfg = Sampling { temperature: 1.0, top_k: 0, top_p: 1.0, seed: 9 };
        let logits = [0.3f32, 0.1, 0.2, 0.25, 0.15];
        let mut a = Sampler::new(cfg);
        let first: Vec<u32> = (0..7).map(|_| a.sample(&logits)).collect();
        let rest: Vec<u32> = (0..20).map(|_| a.sample(&logits)).collect();
        let mut b = Sampler::new(cfg);
        b.advance(first.len() as u64 * b.draws_per_sample());
        assert_eq!((0..20).map(|_| b.sample(&logits)).collect::<Vec<_>>(), rest);
        assert_eq!(Sampler::new(Sampling::GREEDY).draws_per_sample(), 0);
    }

    #[test]
    fn greedy_is_argmax_and_top_k_limits_the_choice() {
        let logits = [0.1f32, 3.0, 2.9, -1.0];
        assert_eq!(Sampler::new(Sampling::GREEDY).sample(&logits), 1);
        let mut s = Sampler::new(Sampling { temperature: 1.0, top_k: 2, top_p: 1.0, seed: 1 });
        let mut seen = [0usize; 4];
        for _ in 0..2000 {
            seen[s.sample(&logits) as usize] += 1;
        }
        assert_eq!(seen[0] + seen[3], 0, "{seen:?}");
        assert!(seen[1] > 800 && seen[2] > 800, "{seen:?}");
        let mut p = Sampler::new(Sampling { temperature: 1.0, top_k: 0, top_p: 0.01, seed: 1 });
        assert!((0..100).all(|_| p.sample(&logits) == 1));
    }

    #[test]
    fn a_seed_fixes_the_sequence_and_another_seed_changes_it() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let run = |seed| {
            let mut s = Sampler::new(Sampling { temperature: 0.8, top_k: 0, top_p: 0.9, seed });
            (0..64).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
    }
}
