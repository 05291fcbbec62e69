//! A Llama-style shard in the int8 engine (RMSNorm, RoPE, grouped-query
//! attention, SwiGLU): layers [a, b) with the embedding when a = 0 and the
//! final norm and head when b is the last layer.
//!
//! The seven projections of a layer and the head run on the int8 kernels, like
//! RWKV-6's matrices. Attention itself stays in f32: its operands are this
//! session's keys and values, not weights, so there is nothing to quantize
//! ahead of time. It keeps the engine's determinism rules: every sum runs in
//! position order, `exp`, `sin`, `cos` and `pow` come from `libm`, and no
//! multiply-add is fused, so a prompt gives the same bits on every CPU, kernel
//! and thread count, and prefill equals decoding one token at a time.

use std::ops::Range;
use std::path::Path;

use odin_format::{LlamaConfig, ModelConfig, ModelId, TensorSpec};

use crate::error::{EngineError, Result};
use crate::exec::{Exec, Options};
use crate::input::{input_rows, Input, Logits};
use crate::load::{block_name, open_model};
use crate::math::exp;
use crate::quant::{QMatrix, QRows, BLOCK};
use crate::weights::{is_quantized, shard_specs, write_engine_file, OutTensor, Source, ENGINE_FILE};

struct Layer {
    ln_in: Vec<f32>,
    q: QMatrix,
    k: QMatrix,
    v: QMatrix,
    o: QMatrix,
    ln_post: Vec<f32>,
    gate: QMatrix,
    up: QMatrix,
    down: QMatrix,
}

/// The keys and values one layer has seen, for one session.
#[derive(Debug, Clone, PartialEq)]
pub struct KvLayer {
    /// Keys after RoPE, [positions, kv_heads × head_dim] row-major.
    pub k: Vec<f32>,
    /// Values, [positions, kv_heads × head_dim] row-major.
    pub v: Vec<f32>,
}

/// A session's KV cache on a Llama shard: one [`KvLayer`] per layer it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct KvState {
    /// First layer the cache belongs to.
    pub first_block: usize,
    /// Tokens seen so far: the next token's position.
    pub pos: usize,
    /// Per-layer caches in layer order.
    pub layers: Vec<KvLayer>,
}

impl KvState {
    /// blake3 of the cache's bytes: what verifiers compare.
    pub fn hash(&self) -> blake3::Hash {
        let mut h = blake3::Hasher::new();
        h.update(&(self.first_block as u64).to_le_bytes());
        h.update(&(self.pos as u64).to_le_bytes());
        for l in &self.layers {
            crate::digest::hash_f32s(&mut h, &l.k);
            crate::digest::hash_f32s(&mut h, &l.v);
        }
        h.finalize()
    }
}

/// Layers [a, b) of a Llama-style model on the int8 engine.
pub struct LlamaShard {
    cfg: LlamaConfig,
    id: ModelId,
    range: Range<usize>,
    emb: Option<QRows>,
    layers: Vec<Layer>,
    head: Option<(Vec<f32>, QMatrix)>,
    /// RoPE inverse frequencies, one per pair of dimensions.
    inv_freq: Vec<f32>,
    exec: Exec,
}

impl LlamaShard {
    /// Load layers `range` (all of them when `None`) of the model directory `dir`,
    /// from its engine file when that was made from these exact files.
    pub fn load(dir: &Path, range: Option<Range<usize>>, opts: Options) -> Result<Self> {
        let (cfg, id, src) = open_model(dir)?;
        let range = range.unwrap_or(0..cfg.num_layers());
        Self::build(&cfg, id, range, &src, opts)
    }

    /// Build a shard from any tensor source.
    pub fn build(cfg: &ModelConfig, id: ModelId, range: Range<usize>, src: &Source<'_>, opts: Options) -> Result<Self> {
        let c = match cfg {
            ModelConfig::Llama(c) => c.clone(),
            other => {
                return Err(EngineError::Unsupported(format!(
                    "a {} model is not a Llama-style model; load it with Shard",
                    other.architecture()
                )))
            }
        };
        let l = c.num_layers;
        if range.start >= range.end || range.end > l {
            return Err(EngineError::BadInput(format!(
                "layer range {}..{} does not fit a model of {l} layers; use a..b with a < b <= {l}",
                range.start, range.end
            )));
        }
        if c.hidden_size % BLOCK != 0 {
            return Err(EngineError::Unsupported(format!(
                "a Llama model with hidden_size {} (the int8 engine needs a multiple of {BLOCK})",
                c.hidden_size
            )));
        }
        if c.num_heads == 0 || c.num_kv_heads == 0 || c.num_heads % c.num_kv_heads != 0 || c.head_dim % 2 != 0 {
            return Err(EngineError::BadInput(format!(
                "{} query heads, {} key/value heads and head_dim {}: the key/value heads must divide the \
                 query heads and head_dim must be even",
                c.num_heads, c.num_kv_heads, c.head_dim
            )));
        }
        let specs = shard_specs(cfg, &range);
        let spec = |name: &str| -> Result<&TensorSpec> {
            specs.get(name).ok_or_else(|| EngineError::BadWeights(format!("the config has no tensor `{name}`")))
        };
        let f = |name: &str| -> Result<Vec<f32>> { src.f32s(spec(name)?) };
        let q = |name: &str| -> Result<QMatrix> { src.matrix(spec(name)?) };
        let emb = if range.start == 0 { Some(src.rows(spec("model.embed_tokens.weight")?)?) } else { None };
        let mut layers = Vec::new();
        for i in range.clone() {
            let p = |n: &str| format!("model.layers.{i}.{n}");
            layers.push(Layer {
                ln_in: f(&p("input_layernorm.weight"))?,
                q: q(&p("self_attn.q_proj.weight"))?,
                k: q(&p("self_attn.k_proj.weight"))?,
                v: q(&p("self_attn.v_proj.weight"))?,
                o: q(&p("self_attn.o_proj.weight"))?,
                ln_post: f(&p("post_attention_layernorm.weight"))?,
                gate: q(&p("mlp.gate_proj.weight"))?,
                up: q(&p("mlp.up_proj.weight"))?,
                down: q(&p("mlp.down_proj.weight"))?,
            });
            // Block by block, as in `Shard::build`.
            if let Some(l) = layers.last_mut() {
                QMatrix::pack(&mut [&mut l.q, &mut l.k, &mut l.v, &mut l.o, &mut l.gate, &mut l.up, &mut l.down]);
            }
        }
        let mut head = if range.end == l { Some((f("model.norm.weight")?, q("lm_head.weight")?)) } else { None };
        if let Some(h) = head.as_mut() {
            QMatrix::pack(&mut [&mut h.1]);
        }
        crate::pages::release_freed();
        let d = c.head_dim;
        let theta = c.rope_theta as f32;
        let inv_freq = (0..d / 2).map(|i| 1.0 / libm::powf(theta, (2 * i) as f32 / d as f32)).collect();
        Ok(Self { cfg: c, id, range, emb, layers, head, inv_freq, exec: Exec::new(opts)? })
    }

    /// Write the whole model's engine file into `dir`; the shard must hold every layer.
    ///
    /// A matrix whose columns are not a multiple of 32 is stored padded with zero columns.
    pub fn save_engine_file(&self, dir: &Path) -> Result<std::path::PathBuf> {
        if self.range != (0..self.cfg.num_layers) {
            return Err(EngineError::BadInput("only a whole model can be saved as an engine file".into()));
        }
        let mut out = Vec::new();
        for spec in ModelConfig::Llama(self.cfg.clone()).tensor_specs() {
            let name = spec.name.as_str();
            if name == "model.embed_tokens.weight" {
                let e = self.emb.as_ref().ok_or_else(|| EngineError::BadInput("no embedding".into()))?;
                out.extend(OutTensor::rows(name, e));
            } else if is_quantized(name) {
                out.extend(OutTensor::matrix(name, self.matrix(name)?));
            } else {
                out.push(OutTensor::f32(name, &spec.shape, self.vector(name)?));
            }
        }
        let path = dir.join(ENGINE_FILE);
        write_engine_file(&path, &self.id, &out)?;
        Ok(path)
    }

    /// A quantized matrix by its Hugging Face name.
    pub fn matrix(&self, name: &str) -> Result<&QMatrix> {
        if name == "lm_head.weight" {
            return self
                .head
                .as_ref()
                .map(|h| &h.1)
                .ok_or_else(|| EngineError::BadInput("no head in this shard".into()));
        }
        let (l, rest) = self.layer_of(name)?;
        Ok(match rest {
            "self_attn.q_proj.weight" => &l.q,
            "self_attn.k_proj.weight" => &l.k,
            "self_attn.v_proj.weight" => &l.v,
            "self_attn.o_proj.weight" => &l.o,
            "mlp.gate_proj.weight" => &l.gate,
            "mlp.up_proj.weight" => &l.up,
            "mlp.down_proj.weight" => &l.down,
            _ => return Err(EngineError::BadInput(format!("`{name}` is not a quantized matrix"))),
        })
    }

    /// A norm weight by its Hugging Face name.
    pub fn vector(&self, name: &str) -> Result<&[f32]> {
        if name == "model.norm.weight" {
            return self
                .head
                .as_ref()
                .map(|h| &h.0[..])
                .ok_or_else(|| EngineError::BadInput("no head in this shard".into()));
        }
        let (l, rest) = self.layer_of(name)?;
        Ok(match rest {
            "input_layernorm.weight" => &l.ln_in,
            "post_attention_layernorm.weight" => &l.ln_post,
            _ => return Err(EngineError::BadInput(format!("`{name}` is not an f32 tensor of a Llama model"))),
        })
    }

    fn layer_of<'n>(&self, name: &'n str) -> Result<(&Layer, &'n str)> {
        let (i, rest) = block_name(name, "model.layers.", &self.range)?;
        Ok((&self.layers[i], rest))
    }

    /// The model's config.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// The content id of the model the weights came from.
    pub fn model_id(&self) -> ModelId {
        self.id
    }

    /// The layers this shard holds.
    pub fn range(&self) -> Range<usize> {
        self.range.clone()
    }

    /// Whether the shard takes token ids.
    pub fn has_embedding(&self) -> bool {
        self.emb.is_some()
    }

    /// Whether the shard returns logits.
    pub fn has_head(&self) -> bool {
        self.head.is_some()
    }

    /// The kernel and threads in use.
    pub fn exec(&self) -> &Exec {
        &self.exec
    }

    /// Bytes of weights one decode step reads (the KV cache comes on top and grows with the context).
    pub fn bytes_per_token(&self) -> usize {
        let mut n: usize = self
            .layers
            .iter()
            .map(|l| [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down].iter().map(|m| m.bytes()).sum::<usize>())
            .sum();
        if let Some((_, w)) = &self.head {
            n += w.bytes();
        }
        n + self.emb.as_ref().map_or(0, |e| e.cols * 2)
    }

    /// An empty cache for one session over all of this shard's layers.
    pub fn new_state(&self) -> KvState {
        KvState {
            first_block: self.range.start,
            pos: 0,
            layers: vec![KvLayer { k: Vec::new(), v: Vec::new() }; self.layers.len()],
        }
    }

    /// Run `input` through the layers `state` covers, appending to its cache.
    ///
    /// Returns logits when the state reaches the shard's last layer and the shard
    /// holds the head (`Logits::Last`: the last token's only), else the hidden states
    /// [T, C]. On an error the state is unchanged.
    pub fn forward(&self, input: Input<'_>, state: &mut KvState, logits: Logits) -> Result<Vec<f32>> {
        let c = self.cfg.hidden_size;
        self.check_state(state)?;
        let sub = state.first_block..state.first_block + state.layers.len();
        let emb = if sub.start == 0 { self.emb.as_ref() } else { None };
        let mut x = input_rows(input, emb, c, sub.start)?;
        let t_len = x.len() / c;
        let max = self.cfg.max_position_embeddings;
        if state.pos + t_len > max {
            return Err(EngineError::BadInput(format!(
                "the context would reach {} tokens and this model holds at most {max}; start a new session",
                state.pos + t_len
            )));
        }
        // cos and sin of every new position, shared by all layers.
        let rope: Vec<(Vec<f32>, Vec<f32>)> = (state.pos..state.pos + t_len).map(|p| self.rope_at(p)).collect();
        let first = sub.start - self.range.start;
        for (l, kv) in self.layers[first..first + sub.len()].iter().zip(state.layers.iter_mut()) {
            self.layer(l, &mut x, state.pos, &rope, kv);
        }
        state.pos += t_len;
        let head = if sub.end == self.range.end { self.head.as_ref() } else { None };
        match head {
            None => Ok(x),
            Some((norm, w)) => {
                let rows = if logits == Logits::Last { &mut x[(t_len - 1) * c..] } else { &mut x[..] };
                for row in rows.chunks_exact_mut(c) {
                    rms_norm(row, norm, self.cfg.rms_norm_eps as f32);
                }
                Ok(self.exec.linear(w, rows))
            }
        }
    }

    fn check_state(&self, st: &KvState) -> Result<()> {
        let kvw = self.cfg.num_kv_heads * self.cfg.head_dim;
        let ok = st.first_block >= self.range.start
            && !st.layers.is_empty()
            && st.first_block + st.layers.len() <= self.range.end
            && st.layers.iter().all(|l| l.k.len() == st.pos * kvw && l.v.len() == st.pos * kvw);
        if !ok {
            return Err(EngineError::StateMismatch(format!(
                "the cache covers layers {}..{} at position {} and this shard holds {}..{}",
                st.first_block,
                st.first_block + st.layers.len(),
                st.pos,
                self.range.start,
                self.range.end
            )));
        }
        Ok(())
    }

    /// One decoder layer over T tokens at positions p0..p0+T (`rope_at` holds their cos and sin):
    /// attention then the MLP, each residual.
    fn layer(&self, l: &Layer, x: &mut [f32], p0: usize, rope_at: &[(Vec<f32>, Vec<f32>)], kv: &mut KvLayer) {
        let cfg = &self.cfg;
        let (c, nh, nkv, d) = (cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let (qw, kvw) = (nh * d, nkv * d);
        let eps = cfg.rms_norm_eps as f32;
        let t_len = x.len() / c;

        let mut h = x.to_vec();
        h.chunks_exact_mut(c).for_each(|row| rms_norm(row, &l.ln_in, eps));
        let mut q = self.exec.linear(&l.q, &h);
        let mut k = self.exec.linear(&l.k, &h);
        let v = self.exec.linear(&l.v, &h);
        for (t, (cos, sin)) in rope_at.iter().enumerate() {
            q[t * qw..(t + 1) * qw].chunks_exact_mut(d).for_each(|hd| rope(hd, cos, sin));
            k[t * kvw..(t + 1) * kvw].chunks_exact_mut(d).for_each(|hd| rope(hd, cos, sin));
        }
        kv.k.extend_from_slice(&k);
        kv.v.extend_from_slice(&v);

        // Causal attention: token t sees positions 0..=p0+t of the cache.
        let scale = (d as f32).sqrt();
        let rep = nh / nkv;
        let mut y = vec![0f32; t_len * qw];
        let mut scores = Vec::with_capacity(p0 + t_len);
        for t in 0..t_len {
            let seen = p0 + t + 1;
            for hd in 0..nh {
                let g = hd / rep;
                let qh = &q[t * qw + hd * d..t * qw + (hd + 1) * d];
                scores.clear();
                scores.extend((0..seen).map(|s| dot(qh, &kv.k[s * kvw + g * d..s * kvw + (g + 1) * d]) / scale));
                softmax(&mut scores);
                let yh = &mut y[t * qw + hd * d..t * qw + (hd + 1) * d];
                for (s, p) in scores.iter().enumerate() {
                    for (o, vv) in yh.iter_mut().zip(&kv.v[s * kvw + g * d..s * kvw + (g + 1) * d]) {
                        *o += p * vv;
                    }
                }
            }
        }
        let out = self.exec.linear_padded(&l.o, &y, qw);
        x.iter_mut().zip(&out).for_each(|(a, b)| *a += b);

        // SwiGLU MLP.
        h.copy_from_slice(x);
        h.chunks_exact_mut(c).for_each(|row| rms_norm(row, &l.ln_post, eps));
        let mut g = self.exec.linear(&l.gate, &h);
        let u = self.exec.linear(&l.up, &h);
        g.iter_mut().zip(&u).for_each(|(a, b)| *a = *a / (1.0 + exp(-*a)) * b);
        let out = self.exec.linear_padded(&l.down, &g, cfg.intermediate_size);
        x.iter_mut().zip(&out).for_each(|(a, b)| *a += b);
    }

    /// cos and sin of position `p` for each pair of dimensions.
    fn rope_at(&self, p: usize) -> (Vec<f32>, Vec<f32>) {
        self.inv_freq.iter().map(|f| (libm::cosf(p as f32 * f), libm::sinf(p as f32 * f))).unzip()
    }
}

/// RMSNorm in place: x / sqrt(mean(x²) + eps) · w, summing in order.
fn rms_norm(x: &mut [f32], w: &[f32], eps: f32) {
    let ms = x.iter().fold(0f32, |s, v| s + v * v) / x.len() as f32;
    let inv = 1.0 / (ms + eps).sqrt();
    x.iter_mut().zip(w).for_each(|(v, w)| *v = *v * inv * w);
}

/// Rotary embedding of one head, Hugging Face's non-interleaved layout: dimension i
/// pairs with i + d/2 and both use frequency i.
fn rope(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = x.len() / 2;
    for i in 0..half {
        let (a, b) = (x[i], x[i + half]);
        x[i] = a * cos[i] - b * sin[i];
        x[i + half] = b * cos[i] + a * sin[i];
    }
}

/// Dot product summed in index order.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0f32, |s, (x, y)| s + x * y)
}

/// Softmax in place, max subtracted first, summed in order.
fn softmax(x: &mut [f32]) {
    let m = x.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = exp(*v - m);
        sum += *v;
    }
    x.iter_mut().for_each(|v| *v /= sum);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_at_position_zero_is_the_identity_and_keeps_the_norm() {
        let mut x: Vec<f32> = (0..8).map(|i| i as f32 - 3.5).collect();
        let orig = x.clone();
        rope(&mut x, &[1.0; 4], &[0.0; 4]);
        assert_eq!(x, orig);
        let a = 0.7f32;
        rope(&mut x, &[libm::cosf(a); 4], &[libm::sinf(a); 4]);
        let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>();
        assert!((n(&x) - n(&orig)).abs() < 1e-4);
        // Dimension 0 pairs with dimension 4.
        assert!((x[0] - (orig[0] * libm::cosf(a) - orig[4] * libm::sinf(a))).abs() < 1e-6);
    }

    #[test]
    fn softmax_sums_to_one_and_rms_norm_normalises() {
        let mut s = vec![1.0f32, 2.0, 3.0, -1e4];
        softmax(&mut s);
        assert!((s.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(s[2] > s[1] && s[1] > s[0] && s[3] == 0.0);
        let mut x = vec![3.0f32, -4.0];
        rms_norm(&mut x, &[1.0, 2.0], 0.0);
        let r = (12.5f32).sqrt();
        assert!((x[0] - 3.0 / r).abs() < 1e-6 && (x[1] + 8.0 / r).abs() < 1e-6);
    }
}
