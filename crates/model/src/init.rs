//! Seeded initialisation of fresh models.
//!
//! RWKV-6 follows BlinkDL's official recipe (RWKV-LM `RWKV_Tmix_x060`,
//! `RWKV_CMix_x060` and `generate_init_weight`); Llama follows Hugging
//! Face's `_init_weights` (normal 0.02, norms at one).

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use crate::config::{LlamaConfig, ModelConfig, Rwkv6Config};
use crate::error::Result;
use crate::weights::Weights;

/// Fresh weights for `cfg`, reproducible from `seed`.
pub fn init_weights(cfg: &ModelConfig, seed: u64, device: &Device) -> Result<Weights> {
    cfg.validate()?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut map = BTreeMap::new();
    for spec in cfg.tensor_specs() {
        let data = match cfg {
            ModelConfig::Rwkv6(c) => rwkv6_tensor(c, &spec.name, &spec.shape, &mut rng),
            ModelConfig::Llama(c) => llama_tensor(c, &spec.name, &spec.shape, &mut rng),
        };
        map.insert(spec.name, Tensor::from_vec(data, spec.shape, device)?);
    }
    Ok(Weights::new(map))
}

fn uniform(rng: &mut ChaCha8Rng, n: usize, a: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-a..a)).collect()
}

fn rwkv6_tensor(c: &Rwkv6Config, name: &str, shape: &[usize], rng: &mut ChaCha8Rng) -> Vec<f32> {
    let numel: usize = shape.iter().product();
    let (l, d) = (c.num_layers as f64, c.hidden_size);
    let layer = name
        .strip_prefix("blocks.")
        .and_then(|r| r.split('.').next())
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(0.0);
    let r01 = if l > 1.0 { layer / (l - 1.0) } else { 0.0 };
    let r1 = 1.0 - layer / l;
    let ddd = |e: f64| -> Vec<f32> { (0..d).map(|i| (1.0 - (i as f64 / d as f64).powf(e)) as f32).collect() };
    // "blocks.N.att.key.weight" -> "att.key.weight"; top-level names stay whole.
    let suffix = match name.strip_prefix("blocks.") {
        Some(rest) => rest.split_once('.').map_or(rest, |(_, s)| s),
        None => name,
    };
    match (name, suffix) {
        ("emb.weight", _) => uniform(rng, numel, 1e-4),
        ("head.weight", _) => {
            let v = c.vocab_size as f64;
            let gain = if v > d as f64 { 0.5 * (v / d as f64).sqrt() } else { 0.5 };
            orthogonal(rng, shape[0], shape[1], gain)
        }
        (_, "att.time_maa_x" | "att.time_maa_w" | "att.time_maa_k" | "ffn.time_maa_k" | "ffn.time_maa_r") => ddd(r1),
        (_, "att.time_maa_v") => ddd(r1).iter().map(|x| x - (0.3 * r01) as f32).collect(),
        (_, "att.time_maa_r" | "att.time_maa_g") => ddd(0.5 * r1),
        (_, "att.time_maa_w1" | "att.time_decay_w1") => vec![0.0; numel],
        (_, "att.time_maa_w2" | "att.time_decay_w2") => uniform(rng, numel, 0.01),
        (_, "att.time_decay") => {
            (0..d).map(|n| (-6.0 + 5.0 * (n as f64 / (d - 1).max(1) as f64).powf(0.7 + 1.3 * r01)) as f32).collect()
        }
        (_, "att.time_faaaa") => (0..d)
            .map(|n| (r01 * (1.0 - n as f64 / (d - 1).max(1) as f64) + ((n + 1) % 3) as f64 * 0.1 - 0.1) as f32)
            .collect(),
        (_, "att.ln_x.weight") => vec![((1.0 + layer) / l).powf(0.7) as f32; numel],
        (_, "ln0.weight" | "ln1.weight" | "ln2.weight" | "ln_out.weight") => vec![1.0; numel],
        (_, s) if s.ends_with(".bias") => vec![0.0; numel],
        (_, "att.output.weight" | "ffn.value.weight" | "ffn.receptance.weight") => vec![0.0; numel],
        (_, "att.key.weight" | "att.gate.weight") => orthogonal(rng, shape[0], shape[1], 0.1),
        _ => {
            // receptance, value, ffn.key: orthogonal with gain sqrt(rows/cols) when tall.
            let gain = if shape[0] > shape[1] { (shape[0] as f64 / shape[1] as f64).sqrt() } else { 1.0 };
            orthogonal(rng, shape[0], shape[1], gain)
        }
    }
}

fn llama_tensor(_c: &LlamaConfig, name: &str, shape: &[usize], rng: &mut ChaCha8Rng) -> Vec<f32> {
    let numel: usize = shape.iter().product();
    if name.ends_with("norm.weight") || name.ends_with("layernorm.weight") {
        vec![1.0; numel]
    } else {
        (0..numel).map(|_| 0.02 * rng.sample::<f32, _>(StandardNormal)).collect()
    }
}

/// A [rows, cols] matrix with orthonormal rows or columns (whichever are
/// fewer), scaled by `gain`, as `torch.nn.init.orthogonal_` makes it.
///
/// Modified Gram-Schmidt on a Gaussian matrix gives the Q of its QR
/// factorisation with a positive diagonal in R, which is the sign fix torch
/// applies; no linear-algebra crate is needed for this one use.
pub fn orthogonal(rng: &mut ChaCha8Rng, rows: usize, cols: usize, gain: f64) -> Vec<f32> {
    let (m, n) = if rows >= cols { (rows, cols) } else { (cols, rows) };
    // n vectors of length m.
    let mut q: Vec<Vec<f64>> = (0..n).map(|_| (0..m).map(|_| rng.sample(StandardNormal)).collect()).collect();
    for j in 0..n {
        let (done, rest) = q.split_at_mut(j);
        let v = &mut rest[0];
        for qi in done.iter() {
            let dot: f64 = qi.iter().zip(v.iter()).map(|(a, b)| a * b).sum();
            v.iter_mut().zip(qi).for_each(|(x, y)| *x -= dot * y);
        }
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(f64::MIN_POSITIVE);
        v.iter_mut().for_each(|x| *x /= norm);
    }
    let mut out = vec![0f32; rows * cols];
    for (j, col) in q.iter().enumerate() {
        for (i, x) in col.iter().enumerate() {
            // Tall: q holds columns; wide: q holds rows.
            let idx = if rows >= cols { i * cols + j } else { j * cols + i };
            out[idx] = (x * gain) as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orthogonal_matrices_are_orthonormal_with_gain() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for (r, c) in [(8, 5), (5, 8), (6, 6)] {
            let w = orthogonal(&mut rng, r, c, 2.0);
            let k = r.min(c);
            for a in 0..k {
                for b in 0..k {
                    let dot: f64 = if r >= c {
                        (0..r).map(|i| w[i * c + a] as f64 * w[i * c + b] as f64).sum()
                    } else {
                        (0..c).map(|i| w[a * c + i] as f64 * w[b * c + i] as f64).sum()
                    };
                    let want = if a == b { 4.0 } else { 0.0 };
                    assert!((dot - want).abs() < 1e-5, "{r}x{c} ({a},{b}) {dot}");
                }
            }
        }
    }

    #[test]
    fn rwkv6_official_init_follows_the_reference_recipe() {
        let cfg = ModelConfig::Rwkv6(Rwkv6Config {
            vocab_size: 50,
            hidden_size: 32,
            num_layers: 3,
            head_size: 8,
            ffn_size: 64,
            mix_lora: 4,
            decay_lora: 8,
            layer_norm_eps: 1e-5,
            group_norm_eps: 64e-5,
        });
        let w = init_weights(&cfg, 7, &Device::Cpu).unwrap();
        w.validate(&cfg).unwrap();
        let v = |n: &str| w.iter().find(|(k, _)| *k == n).unwrap().1.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // Layer 0: decay runs from -6 up to -1 across channels.
        let dec = v("blocks.0.att.time_decay");
        assert!((dec[0] + 6.0).abs() < 1e-6 && (dec[31] + 1.0).abs() < 1e-6);
        // Last layer: ratio_0_to_1 = 1 so time_faaaa[0] = 1 + 0.
        assert!((v("blocks.2.att.time_faaaa")[0] - 1.0).abs() < 1e-6);
        assert!(v("blocks.1.att.output.weight").iter().all(|x| *x == 0.0));
        assert!(v("blocks.1.att.time_maa_w1").iter().all(|x| *x == 0.0));
        assert!(v("emb.weight").iter().all(|x| x.abs() <= 1e-4));
        let lnx = v("blocks.0.att.ln_x.weight")[0];
        assert!((lnx - (1.0f32 / 3.0).powf(0.7)).abs() < 1e-6);
        // Same seed, same weights.
        let again = init_weights(&cfg, 7, &Device::Cpu).unwrap();
        for ((a, x), (b, y)) in w.iter().zip(again.iter()) {
            assert_eq!(a, b);
            assert_eq!(
                x.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                y.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
        }
    }
}
