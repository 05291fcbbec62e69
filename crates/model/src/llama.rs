//! A Llama-style decoder (RMSNorm, RoPE, grouped-query attention, SwiGLU)
//! with Hugging Face tensor names, kept to compare architectures on the
//! same data.

use std::ops::Range;

use candle_core::{DType, Device, Tensor, D};

use crate::config::{LlamaConfig, ModelConfig, TensorPlace};
use crate::error::{ModelError, Result};
use crate::ops::{linear, rms_norm, softmax_last};
use crate::weights::Weights;

/// Keys and values seen so far, per layer of a shard.
#[derive(Debug, Clone)]
pub struct KvCache {
    /// Index of the first block the cache belongs to.
    pub first_block: usize,
    /// Tokens already in the cache (the next token's position).
    pub pos: usize,
    /// Batch size.
    pub batch: usize,
    /// Per layer: keys and values [B, KV, S, D], or `None` before the first token.
    pub layers: Vec<Option<(Tensor, Tensor)>>,
}

struct Layer {
    ln_in: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    ln_post: Tensor,
    gate: Tensor,
    up: Tensor,
    down: Tensor,
}

/// The layers [a, b) of a Llama-style model, with the embedding when a = 0
/// and the final norm and head when b is the last layer.
pub struct LlamaShard {
    cfg: LlamaConfig,
    range: Range<usize>,
    emb: Option<Tensor>,
    layers: Vec<Layer>,
    head: Option<(Tensor, Tensor)>,
    params: Vec<(String, Tensor)>,
    device: Device,
}

impl LlamaShard {
    /// Build the shard for layers `range` from `weights`.
    pub fn new(cfg: &LlamaConfig, weights: &Weights, range: Range<usize>) -> Result<Self> {
        let l = cfg.num_layers;
        if range.start >= range.end || range.end > l {
            return Err(ModelError::BadRange { start: range.start, end: range.end, layers: l });
        }
        let specs: std::collections::HashMap<String, Vec<usize>> = ModelConfig::Llama(cfg.clone())
            .tensor_specs()
            .into_iter()
            .filter(|s| match s.place {
                TensorPlace::Embedding => range.start == 0,
                TensorPlace::Head => range.end == l,
                TensorPlace::Block(i) => range.contains(&i),
            })
            .map(|s| (s.name, s.shape))
            .collect();
        let mut params = Vec::new();
        let mut get = |name: String| -> Result<Tensor> {
            let shape = specs.get(&name).ok_or_else(|| ModelError::MissingTensor(name.clone()))?;
            let t = weights.get(&name, shape)?;
            params.push((name, t.clone()));
            Ok(t)
        };
        let emb = if range.start == 0 { Some(get("model.embed_tokens.weight".into())?) } else { None };
        let mut layers = Vec::new();
        for i in range.clone() {
            let p = |n: &str| format!("model.layers.{i}.{n}");
            layers.push(Layer {
                ln_in: get(p("input_layernorm.weight"))?,
                q: get(p("self_attn.q_proj.weight"))?,
                k: get(p("self_attn.k_proj.weight"))?,
                v: get(p("self_attn.v_proj.weight"))?,
                o: get(p("self_attn.o_proj.weight"))?,
                ln_post: get(p("post_attention_layernorm.weight"))?,
                gate: get(p("mlp.gate_proj.weight"))?,
                up: get(p("mlp.up_proj.weight"))?,
                down: get(p("mlp.down_proj.weight"))?,
            });
        }
        let head =
            if range.end == l { Some((get("model.norm.weight".into())?, get("lm_head.weight".into())?)) } else { None };
        let device = params.first().map(|(_, t)| t.device().clone()).unwrap_or(Device::Cpu);
        Ok(Self { cfg: cfg.clone(), range, emb, layers, head, params, device })
    }

    /// The layer range this shard holds.
    pub fn range(&self) -> Range<usize> {
        self.range.clone()
    }

    /// The shard's parameters by Hugging Face name.
    pub fn params(&self) -> &[(String, Tensor)] {
        &self.params
    }

    /// Whether the shard starts with the embedding.
    pub fn has_embedding(&self) -> bool {
        self.emb.is_some()
    }

    /// Whether the shard ends with the head.
    pub fn has_head(&self) -> bool {
        self.head.is_some()
    }

    /// An empty cache for `batch` sequences.
    pub fn new_cache(&self, batch: usize) -> KvCache {
        KvCache { first_block: self.range.start, pos: 0, batch, layers: vec![None; self.layers.len()] }
    }

    fn input(&self, x: &Tensor) -> Result<Tensor> {
        let c = self.cfg.hidden_size;
        match &self.emb {
            Some(emb) => {
                if x.rank() != 2 || x.dtype().is_float() {
                    return Err(ModelError::BadInput(format!(
                        "the first shard takes integer token ids [B, T], got {:?} {:?}",
                        x.dtype(),
                        x.dims()
                    )));
                }
                let ids = x.to_dtype(DType::U32)?;
                let max = ids.flatten_all()?.max(0)?.to_scalar::<u32>().unwrap_or(0) as usize;
                if x.elem_count() > 0 && max >= self.cfg.vocab_size {
                    return Err(ModelError::BadInput(format!(
                        "token id {max} is outside the vocabulary of {}",
                        self.cfg.vocab_size
                    )));
                }
                let (b, t) = ids.dims2()?;
                Ok(emb.index_select(&ids.flatten_all()?, 0)?.reshape((b, t, c))?)
            }
            None => {
                if x.rank() != 3 || x.dim(D::Minus1)? != c || !x.dtype().is_float() {
                    return Err(ModelError::BadInput(format!(
                        "this shard takes a float hidden state [B, T, {c}], got {:?} {:?}",
                        x.dtype(),
                        x.dims()
                    )));
                }
                Ok(x.to_dtype(DType::F32)?)
            }
        }
    }

    /// Training (parallel) form with a causal mask; with `cache`, the
    /// sequence continues after the cached tokens and is appended to it.
    /// `x` is token ids [B, T] or a hidden state [B, T, C]; returns logits
    /// [B, T, V] for the last shard, else the hidden state.
    pub fn forward(&self, x: &Tensor, mut cache: Option<&mut KvCache>) -> Result<Tensor> {
        let mut h = self.input(x)?;
        let (b, t, _) = h.dims3()?;
        let p0 = match cache.as_deref() {
            Some(c) => {
                if c.first_block != self.range.start || c.layers.len() != self.layers.len() || c.batch != b {
                    return Err(ModelError::StateMismatch(format!(
                        "cache is for blocks {}.. with batch {}, shard holds {}..{} and input has batch {b}",
                        c.first_block, c.batch, self.range.start, self.range.end
                    )));
                }
                c.pos
            }
            None => 0,
        };
        if p0 + t > self.cfg.max_position_embeddings {
            return Err(ModelError::BadInput(format!(
                "sequence reaches position {} but the model supports {}",
                p0 + t,
                self.cfg.max_position_embeddings
            )));
        }
        let (cos, sin) = self.rope_tables(p0, t)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let slot = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            h = self.layer(layer, h, p0, &cos, &sin, slot)?;
        }
        if let Some(c) = cache {
            c.pos += t;
        }
        match &self.head {
            Some((norm, head)) => linear(&rms_norm(&h, norm, self.cfg.rms_norm_eps)?, head),
            None => Ok(h),
        }
    }

    /// Recurrent form: one token per sequence through the KV cache.
    /// `x` is token ids [B] or a hidden state [B, C].
    pub fn step(&self, x: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let out = self.forward(&x.unsqueeze(1)?, Some(cache))?;
        Ok(out.squeeze(1)?)
    }

    /// cos/sin tables [T, D] for positions p0..p0+T (Hugging Face's
    /// non-interleaved layout: the two halves share frequencies).
    fn rope_tables(&self, p0: usize, t: usize) -> Result<(Tensor, Tensor)> {
        let d = self.cfg.head_dim;
        let half = d / 2;
        let inv: Vec<f32> =
            (0..half).map(|i| 1.0 / (self.cfg.rope_theta as f32).powf((2 * i) as f32 / d as f32)).collect();
        let mut cos = Vec::with_capacity(t * d);
        let mut sin = Vec::with_capacity(t * d);
        for p in p0..p0 + t {
            for _half in 0..2 {
                for f in &inv {
                    let a = p as f32 * f;
                    cos.push(a.cos());
                    sin.push(a.sin());
                }
            }
        }
        Ok((Tensor::from_vec(cos, (t, d), &self.device)?, Tensor::from_vec(sin, (t, d), &self.device)?))
    }

    fn layer(
        &self,
        l: &Layer,
        x: Tensor,
        p0: usize,
        cos: &Tensor,
        sin: &Tensor,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let c = &self.cfg;
        let (b, t, _) = x.dims3()?;
        let (nh, nkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let h = rms_norm(&x, &l.ln_in, c.rms_norm_eps)?;
        let split = |y: Tensor, heads: usize| -> Result<Tensor> { Ok(y.reshape((b, t, heads, hd))?.transpose(1, 2)?) };
        let q = rope(&split(linear(&h, &l.q)?, nh)?, cos, sin)?;
        let mut k = rope(&split(linear(&h, &l.k)?, nkv)?, cos, sin)?;
        let mut v = split(linear(&h, &l.v)?, nkv)?;
        if let Some(slot) = cache {
            if let Some((pk, pv)) = slot.as_ref() {
                k = Tensor::cat(&[pk, &k], 2)?;
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            *slot = Some((k.detach(), v.detach()));
        }
        let s = k.dim(2)?;
        let rep = nh / nkv;
        let expand = |y: &Tensor| -> Result<Tensor> {
            Ok(y.unsqueeze(2)?.broadcast_as((b, nkv, rep, s, hd))?.contiguous()?.reshape((b, nh, s, hd))?)
        };
        let (k, v) = (expand(&k)?, expand(&v)?);
        let scores = (q.contiguous()?.matmul(&k.t()?.contiguous()?)? / (hd as f64).sqrt())?;
        let scores = if t > 1 {
            let mask: Vec<f32> =
                (0..t).flat_map(|i| (0..s).map(move |j| if j <= p0 + i { 0.0 } else { f32::NEG_INFINITY })).collect();
            scores.broadcast_add(&Tensor::from_vec(mask, (t, s), x.device())?)?
        } else {
            scores
        };
        let y = softmax_last(&scores)?.matmul(&v)?;
        let y = y.transpose(1, 2)?.reshape((b, t, nh * hd))?;
        let x = (x + linear(&y, &l.o)?)?;
        let h = rms_norm(&x, &l.ln_post, c.rms_norm_eps)?;
        let mlp = (linear(&h, &l.gate)?.silu()? * linear(&h, &l.up)?)?;
        Ok((&x + linear(&mlp, &l.down)?)?)
    }
}

/// Rotary embedding on [B, H, T, D] with tables [T, D]: x·cos + rotate_half(x)·sin.
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let half = d / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rot = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(cos)? + rot.broadcast_mul(sin)?)?)
}
