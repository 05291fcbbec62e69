//! Model configurations (`config.json`) and the tensor layout they imply.
//!
//! The tensor table returned by [`ModelConfig::tensor_specs`] is the single
//! source of truth for names and shapes: initialisation, loading, shard
//! slicing and parameter counting all read it.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{FormatError, Result};

/// The architecture-tagged contents of a model's `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "architecture")]
pub enum ModelConfig {
    /// RWKV-6 "Finch".
    #[serde(rename = "rwkv6")]
    Rwkv6(Rwkv6Config),
    /// Llama-style transformer with Hugging Face tensor names.
    #[serde(rename = "llama")]
    Llama(LlamaConfig),
}

/// Dimensions of an RWKV-6 model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rwkv6Config {
    /// Vocabulary size (rows of `emb.weight` and `head.weight`).
    pub vocab_size: usize,
    /// Embedding width C.
    pub hidden_size: usize,
    /// Number of blocks L.
    pub num_layers: usize,
    /// Head size N; the model has C / N heads.
    pub head_size: usize,
    /// Channel-mix inner width.
    pub ffn_size: usize,
    /// Rank of the token-shift LoRA (`time_maa_w1`); 32 in the official models.
    #[serde(default = "default_mix_lora")]
    pub mix_lora: usize,
    /// Rank of the decay LoRA (`time_decay_w1`); 64 in the official models.
    #[serde(default = "default_decay_lora")]
    pub decay_lora: usize,
    /// Epsilon of ln0/ln1/ln2/ln_out.
    #[serde(default = "default_ln_eps")]
    pub layer_norm_eps: f64,
    /// Epsilon of the per-head GroupNorm `ln_x` (64e-5 in the reference).
    #[serde(default = "default_gn_eps")]
    pub group_norm_eps: f64,
}

fn default_mix_lora() -> usize {
    32
}
fn default_decay_lora() -> usize {
    64
}
fn default_ln_eps() -> f64 {
    1e-5
}
fn default_gn_eps() -> f64 {
    64e-5
}

/// Dimensions of a Llama-style model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Residual width.
    pub hidden_size: usize,
    /// Number of decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (grouped-query attention); divides `num_heads`.
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// SwiGLU inner width.
    pub intermediate_size: usize,
    /// RMSNorm epsilon.
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base.
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// Longest sequence the model is meant for (KV cache bound).
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
}

fn default_rms_eps() -> f64 {
    1e-5
}
fn default_rope_theta() -> f64 {
    10000.0
}
fn default_max_pos() -> usize {
    2048
}

/// Which part of the model a tensor belongs to, for slicing shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorPlace {
    /// Embedding: lives with the shard that starts at block 0.
    Embedding,
    /// Part of block `i`.
    Block(usize),
    /// Final norm and head: lives with the shard that ends at the last block.
    Head,
}

/// Name, shape and place of one parameter tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    /// Official tensor name.
    pub name: String,
    /// Shape as stored in `model.safetensors`.
    pub shape: Vec<usize>,
    /// Where the tensor sits in the model.
    pub place: TensorPlace,
}

impl TensorSpec {
    fn new(name: String, shape: &[usize], place: TensorPlace) -> Self {
        Self { name, shape: shape.to_vec(), place }
    }

    /// Number of scalar parameters.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Bytes in the int8 form: matrices in Q8_0-style blocks of 32 weights
    /// plus one f16 scale (34 bytes per 32), vectors kept in f32 because they
    /// are tiny and precision-critical (decays, norms, mixes).
    pub fn bytes_int8(&self) -> usize {
        if self.shape.len() >= 2 && self.shape.last().is_some_and(|d| d % 32 == 0) && !self.is_vector() {
            self.numel() / 32 * 34
        } else {
            self.numel() * 4
        }
    }

    fn is_vector(&self) -> bool {
        self.shape.iter().filter(|&&d| d > 1).count() <= 1
    }
}

/// Parameter and memory accounting used by `odin model info` and by layer allocation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParamCounts {
    /// All parameters.
    pub total: usize,
    /// Parameters without the embedding and the head.
    pub non_embedding: usize,
    /// Embedding parameters.
    pub embedding: usize,
    /// Head parameters (final norm and output projection).
    pub head: usize,
    /// Parameters in each block, in order.
    pub per_block: Vec<usize>,
    /// Bytes of each block in f32.
    pub block_bytes_f32: Vec<usize>,
    /// Bytes of each block in the int8 form.
    pub block_bytes_int8: Vec<usize>,
    /// Bytes of the embedding in f32 / int8.
    pub embedding_bytes: (usize, usize),
    /// Bytes of the head in f32 / int8.
    pub head_bytes: (usize, usize),
}

impl ModelConfig {
    /// Read and validate a `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|err| FormatError::Io { path: path.to_path_buf(), err })?;
        let cfg: ModelConfig = serde_json::from_str(&text)
            .map_err(|e| FormatError::BadConfigFile { path: path.to_path_buf(), reason: e.to_string() })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Canonical JSON text (sorted keys, two-space indent, trailing newline).
    pub fn to_json(&self) -> String {
        // serde_json::Value keeps object keys sorted, which makes the file
        // byte-stable and hence its content hash stable.
        let value = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
        text.push('\n');
        text
    }

    /// Short architecture name as written in `config.json`.
    pub fn architecture(&self) -> &'static str {
        match self {
            ModelConfig::Rwkv6(_) => "rwkv6",
            ModelConfig::Llama(_) => "llama",
        }
    }

    /// Number of blocks (layers).
    pub fn num_layers(&self) -> usize {
        match self {
            ModelConfig::Rwkv6(c) => c.num_layers,
            ModelConfig::Llama(c) => c.num_layers,
        }
    }

    /// Residual width.
    pub fn hidden_size(&self) -> usize {
        match self {
            ModelConfig::Rwkv6(c) => c.hidden_size,
            ModelConfig::Llama(c) => c.hidden_size,
        }
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        match self {
            ModelConfig::Rwkv6(c) => c.vocab_size,
            ModelConfig::Llama(c) => c.vocab_size,
        }
    }

    /// Check that the dimensions are consistent.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(FormatError::BadConfig(m));
        match self {
            ModelConfig::Rwkv6(c) => {
                for (n, v) in [
                    ("vocab_size", c.vocab_size),
                    ("hidden_size", c.hidden_size),
                    ("num_layers", c.num_layers),
                    ("head_size", c.head_size),
                    ("ffn_size", c.ffn_size),
                    ("mix_lora", c.mix_lora),
                    ("decay_lora", c.decay_lora),
                ] {
                    if v == 0 {
                        return bad(format!("{n} must be positive"));
                    }
                }
                if c.hidden_size % c.head_size != 0 {
                    return bad(format!(
                        "hidden_size {} is not a multiple of head_size {}",
                        c.hidden_size, c.head_size
                    ));
                }
                if !(c.layer_norm_eps > 0.0 && c.group_norm_eps > 0.0) {
                    return bad("norm epsilons must be positive".into());
                }
            }
            ModelConfig::Llama(c) => {
                for (n, v) in [
                    ("vocab_size", c.vocab_size),
                    ("hidden_size", c.hidden_size),
                    ("num_layers", c.num_layers),
                    ("num_heads", c.num_heads),
                    ("num_kv_heads", c.num_kv_heads),
                    ("head_dim", c.head_dim),
                    ("intermediate_size", c.intermediate_size),
                    ("max_position_embeddings", c.max_position_embeddings),
                ] {
                    if v == 0 {
                        return bad(format!("{n} must be positive"));
                    }
                }
                if c.num_heads % c.num_kv_heads != 0 {
                    return bad(format!(
                        "num_heads {} is not a multiple of num_kv_heads {}",
                        c.num_heads, c.num_kv_heads
                    ));
                }
                if c.head_dim % 2 != 0 {
                    return bad(format!("head_dim {} must be even for RoPE", c.head_dim));
                }
                if !(c.rms_norm_eps > 0.0 && c.rope_theta > 1.0) {
                    return bad("rms_norm_eps must be positive and rope_theta above 1".into());
                }
            }
        }
        Ok(())
    }

    /// Every parameter tensor of the model, in a fixed order.
    pub fn tensor_specs(&self) -> Vec<TensorSpec> {
        match self {
            ModelConfig::Rwkv6(c) => rwkv6_specs(c),
            ModelConfig::Llama(c) => llama_specs(c),
        }
    }

    /// Parameter counts and per-block byte sizes.
    pub fn param_counts(&self) -> ParamCounts {
        let specs = self.tensor_specs();
        let layers = self.num_layers();
        let mut per_block = vec![0; layers];
        let mut block_f32 = vec![0; layers];
        let mut block_i8 = vec![0; layers];
        let (mut emb, mut head) = (0, 0);
        let (mut emb_b, mut head_b) = ((0, 0), (0, 0));
        for s in &specs {
            match s.place {
                TensorPlace::Embedding => {
                    emb += s.numel();
                    emb_b.0 += s.numel() * 4;
                    emb_b.1 += s.bytes_int8();
                }
                TensorPlace::Head => {
                    head += s.numel();
                    head_b.0 += s.numel() * 4;
                    head_b.1 += s.bytes_int8();
                }
                TensorPlace::Block(i) => {
                    per_block[i] += s.numel();
                    block_f32[i] += s.numel() * 4;
                    block_i8[i] += s.bytes_int8();
                }
            }
        }
        let non_embedding: usize = per_block.iter().sum();
        ParamCounts {
            total: non_embedding + emb + head,
            non_embedding,
            embedding: emb,
            head,
            per_block,
            block_bytes_f32: block_f32,
            block_bytes_int8: block_i8,
            embedding_bytes: emb_b,
            head_bytes: head_b,
        }
    }
}

fn rwkv6_specs(c: &Rwkv6Config) -> Vec<TensorSpec> {
    let (v, d, f) = (c.vocab_size, c.hidden_size, c.ffn_size);
    let h = d / c.head_size;
    let mut out = vec![TensorSpec::new("emb.weight".into(), &[v, d], TensorPlace::Embedding)];
    for i in 0..c.num_layers {
        let p = TensorPlace::Block(i);
        let b = format!("blocks.{i}.");
        let mut push = |n: &str, s: &[usize]| out.push(TensorSpec::new(format!("{b}{n}"), s, p));
        if i == 0 {
            push("ln0.weight", &[d]);
            push("ln0.bias", &[d]);
        }
        for n in ["ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias"] {
            push(n, &[d]);
        }
        for m in ["x", "w", "k", "v", "r", "g"] {
            push(&format!("att.time_maa_{m}"), &[1, 1, d]);
        }
        push("att.time_maa_w1", &[d, 5 * c.mix_lora]);
        push("att.time_maa_w2", &[5, c.mix_lora, d]);
        push("att.time_decay", &[1, 1, d]);
        push("att.time_decay_w1", &[d, c.decay_lora]);
        push("att.time_decay_w2", &[c.decay_lora, d]);
        push("att.time_faaaa", &[h, c.head_size]);
        for n in ["receptance", "key", "value", "gate", "output"] {
            push(&format!("att.{n}.weight"), &[d, d]);
        }
        push("att.ln_x.weight", &[d]);
        push("att.ln_x.bias", &[d]);
        push("ffn.time_maa_k", &[1, 1, d]);
        push("ffn.time_maa_r", &[1, 1, d]);
        push("ffn.key.weight", &[f, d]);
        push("ffn.receptance.weight", &[d, d]);
        push("ffn.value.weight", &[d, f]);
    }
    out.push(TensorSpec::new("ln_out.weight".into(), &[d], TensorPlace::Head));
    out.push(TensorSpec::new("ln_out.bias".into(), &[d], TensorPlace::Head));
    out.push(TensorSpec::new("head.weight".into(), &[v, d], TensorPlace::Head));
    out
}

fn llama_specs(c: &LlamaConfig) -> Vec<TensorSpec> {
    let (v, d, f) = (c.vocab_size, c.hidden_size, c.intermediate_size);
    let (q, kv) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
    let mut out = vec![TensorSpec::new("model.embed_tokens.weight".into(), &[v, d], TensorPlace::Embedding)];
    for i in 0..c.num_layers {
        let p = TensorPlace::Block(i);
        let b = format!("model.layers.{i}.");
        let mut push = |n: &str, s: &[usize]| out.push(TensorSpec::new(format!("{b}{n}"), s, p));
        push("input_layernorm.weight", &[d]);
        push("self_attn.q_proj.weight", &[q, d]);
        push("self_attn.k_proj.weight", &[kv, d]);
        push("self_attn.v_proj.weight", &[kv, d]);
        push("self_attn.o_proj.weight", &[d, q]);
        push("post_attention_layernorm.weight", &[d]);
        push("mlp.gate_proj.weight", &[f, d]);
        push("mlp.up_proj.weight", &[f, d]);
        push("mlp.down_proj.weight", &[d, f]);
    }
    out.push(TensorSpec::new("model.norm.weight".into(), &[d], TensorPlace::Head));
    out.push(TensorSpec::new("lm_head.weight".into(), &[v, d], TensorPlace::Head));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn odin_100m() -> ModelConfig {
        ModelConfig::Rwkv6(Rwkv6Config {
            vocab_size: 32768,
            hidden_size: 768,
            num_layers: 12,
            head_size: 64,
            ffn_size: 2688,
            mix_lora: 32,
            decay_lora: 64,
            layer_norm_eps: 1e-5,
            group_norm_eps: 64e-5,
        })
    }

    #[test]
    fn odin_100m_has_about_96m_block_parameters() {
        let counts = odin_100m().param_counts();
        assert!((95_000_000..105_000_000).contains(&counts.non_embedding), "{}", counts.non_embedding);
        assert_eq!(counts.embedding, 32768 * 768);
        assert_eq!(counts.head, 32768 * 768 + 2 * 768);
        assert_eq!(counts.total, counts.non_embedding + counts.embedding + counts.head);
        // int8 blocks are a bit over a quarter of f32.
        let ratio = counts.block_bytes_int8[1] as f64 / counts.block_bytes_f32[1] as f64;
        assert!((0.26..0.30).contains(&ratio), "{ratio}");
    }

    #[test]
    fn config_json_round_trips_and_is_canonical() {
        let cfg = odin_100m();
        let text = cfg.to_json();
        let back: ModelConfig = serde_json::from_str(&text).unwrap();
        assert_eq!(back, cfg);
        assert!(text.starts_with("{\n  \"architecture\": \"rwkv6\""));
        assert_eq!(back.to_json(), text);
    }

    #[test]
    fn bad_dimensions_are_rejected_with_a_reason() {
        let mut cfg = odin_100m();
        if let ModelConfig::Rwkv6(c) = &mut cfg {
            c.head_size = 100;
        }
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("not a multiple of head_size"), "{err}");
        let text = r#"{"architecture":"gpt9","vocab_size":3}"#;
        assert!(serde_json::from_str::<ModelConfig>(text).is_err());
    }
}
