//! Deterministic random RWKV-6 and Llama weights made from a seed, with no
//! files and no tensor library: the fixed models of the golden hash, identical
//! in every build (native or wasm32), and random models for tests.

use std::collections::HashMap;

use odin_format::{LlamaConfig, ModelConfig, ModelId, Rwkv6Config};

use crate::error::Result;
use crate::exec::Options;
use crate::input::{Input, Logits};
use crate::llama::LlamaShard;
use crate::shard::Shard;
use crate::weights::Source;

/// SplitMix64: tiny, portable and good enough for weights.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-a, a), built from 24 bits so it is exact in f32.
    fn uniform(&mut self, a: f32) -> f32 {
        ((self.next() >> 40) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0) * a
    }
}

/// Random weights for `cfg`, shaped and scaled like a trained RWKV-6 (decays in a sane range).
pub fn weights(cfg: &Rwkv6Config, seed: u64) -> HashMap<String, Vec<f32>> {
    let full = ModelConfig::Rwkv6(cfg.clone());
    let mut rng = Mix(seed);
    let mut out = HashMap::new();
    for spec in full.tensor_specs() {
        let n = spec.numel();
        let name = spec.name.as_str();
        let fan_in = *spec.shape.last().unwrap_or(&1) as f32;
        let v: Vec<f32> = if name.ends_with("ln0.weight")
            || name.ends_with("ln1.weight")
            || name.ends_with("ln2.weight")
            || name.ends_with("ln_x.weight")
            || name == "ln_out.weight"
        {
            (0..n).map(|_| 1.0 + rng.uniform(0.1)).collect()
        } else if name.ends_with(".bias") {
            (0..n).map(|_| rng.uniform(0.05)).collect()
        } else if name.contains("time_maa_") && !name.ends_with("w1") && !name.ends_with("w2") {
            (0..n).map(|_| 0.5 + rng.uniform(0.4)).collect()
        } else if name.ends_with("time_decay") {
            (0..n).map(|_| -3.0 + rng.uniform(2.0)).collect()
        } else if name.ends_with("time_faaaa") {
            (0..n).map(|_| rng.uniform(0.5)).collect()
        } else if name.ends_with("w1") || name.ends_with("w2") {
            (0..n).map(|_| rng.uniform(0.1)).collect()
        } else if name == "emb.weight" {
            (0..n).map(|_| rng.uniform(1.0)).collect()
        } else {
            let a = 1.0 / fan_in.sqrt();
            (0..n).map(|_| rng.uniform(a)).collect()
        };
        out.insert(spec.name, v);
    }
    out
}

/// Random weights for a Llama-style `cfg`: norms near 1, matrices scaled by 1/sqrt(fan-in).
pub fn llama_weights(cfg: &LlamaConfig, seed: u64) -> HashMap<String, Vec<f32>> {
    let mut rng = Mix(seed);
    let mut out = HashMap::new();
    for spec in ModelConfig::Llama(cfg.clone()).tensor_specs() {
        let n = spec.numel();
        let a = if spec.name.ends_with("norm.weight") {
            0.1
        } else if spec.name == "model.embed_tokens.weight" {
            1.0
        } else {
            1.0 / (*spec.shape.last().unwrap_or(&1) as f32).sqrt()
        };
        let base = if spec.name.ends_with("norm.weight") { 1.0 } else { 0.0 };
        out.insert(spec.name, (0..n).map(|_| base + rng.uniform(a)).collect());
    }
    out
}

/// The golden Llama model: grouped-query attention (6 query heads on 2 key/value heads), and
/// an attention width (48) and MLP width (80) that are not multiples of 32, so the padded
/// products are covered too.
pub fn llama_golden_config() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 96,
        hidden_size: 64,
        num_layers: 2,
        num_heads: 6,
        num_kv_heads: 2,
        head_dim: 8,
        intermediate_size: 80,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        max_position_embeddings: 64,
    }
}

/// The golden model: a small RWKV-6 whose weights come from seed 2024.
pub fn golden_config() -> Rwkv6Config {
    Rwkv6Config {
        vocab_size: 96,
        hidden_size: 64,
        num_layers: 2,
        head_size: 32,
        ffn_size: 224,
        mix_lora: 8,
        decay_lora: 16,
        layer_norm_eps: 1e-5,
        group_norm_eps: 64e-5,
    }
}

/// blake3 of the golden model's logits and final state ([`golden_hash`]). It changes only
/// when the engine's arithmetic changes, and then every verifier must update with it.
pub const GOLDEN_HASH: &str = "7a8c494aeaba10986be8fabe2bb972df04d79f5d50711d892953691d30b24558";

/// Seed of the golden model's weights.
pub const GOLDEN_SEED: u64 = 2024;
/// The golden prompt (token ids).
pub const GOLDEN_PROMPT: [u32; 12] = [5, 17, 42, 3, 88, 61, 0, 95, 23, 23, 7, 50];

/// For each golden model (RWKV-6, then Llama): prefill the golden prompt, then feed back
/// 8 greedy tokens; hash every logit seen and the final state.
pub fn golden_hash(opts: Options) -> Result<String> {
    let cfg = golden_config();
    let w = weights(&cfg, GOLDEN_SEED);
    let full = ModelConfig::Rwkv6(cfg.clone());
    let shard = Shard::build(&full, ModelId([0; 32]), 0..cfg.num_layers, &Source::Memory(&w), opts)?;
    let mut state = shard.new_state();
    let mut h = blake3::Hasher::new();
    let mut logits = shard.forward(Input::Tokens(&GOLDEN_PROMPT), &mut state, Logits::All)?;
    for _ in 0..8 {
        for v in &logits {
            h.update(&v.to_le_bytes());
        }
        let last = &logits[logits.len() - cfg.vocab_size..];
        let tok = crate::math::argmax(last) as u32;
        logits = shard.forward(Input::Tokens(&[tok]), &mut state, Logits::Last)?;
    }
    h.update(state.hash().as_bytes());

    let cfg = llama_golden_config();
    let w = llama_weights(&cfg, GOLDEN_SEED);
    let full = ModelConfig::Llama(cfg.clone());
    let shard = LlamaShard::build(&full, ModelId([0; 32]), 0..cfg.num_layers, &Source::Memory(&w), opts)?;
    let mut state = shard.new_state();
    let mut logits = shard.forward(Input::Tokens(&GOLDEN_PROMPT), &mut state, Logits::All)?;
    for _ in 0..8 {
        for v in &logits {
            h.update(&v.to_le_bytes());
        }
        let tok = crate::math::argmax(&logits[logits.len() - cfg.vocab_size..]) as u32;
        logits = shard.forward(Input::Tokens(&[tok]), &mut state, Logits::Last)?;
    }
    h.update(state.hash().as_bytes());
    Ok(h.finalize().to_hex().to_string())
}
