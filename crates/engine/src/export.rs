//! Exports of the engine's weights for other runtimes.
//!
//! - [`write_gguf`]: llama.cpp's `rwkv6` architecture, with its tensor names,
//!   layouts and metadata. The big matrices are written as Q8_0, and our
//!   int8 blocks *are* Q8_0 blocks (an f16 scale plus 32 codes), so llama.cpp
//!   runs the very weights this engine runs. GGUF is written by hand: it is a
//!   short, fixed layout, and the codes must be copied, not requantized by a
//!   library with a different rounding rule.
//! - [`write_st`]: web-rwkv's `.st` file: safetensors in f16 with BlinkDL's
//!   names after web-rwkv's converter renames them (`time_maa` → `time_mix`,
//!   `time_faaaa` → `time_first`) and transposes the LoRA matrices' last two
//!   dimensions. Matrices are dequantized from our int8 blocks.

use std::io::Write;
use std::path::Path;

use half::f16;
use odin_format::ModelConfig;

use crate::error::{EngineError, Result};
use crate::quant::{stack_rows, BLOCK};
use crate::shard::Shard;
use crate::weights::{is_lora, is_quantized, transpose, write_safetensors, OutTensor};

const GGUF_MAGIC: &[u8; 4] = b"GGUF";
const GGUF_VERSION: u32 = 3;
const ALIGN: usize = 32;

/// A GGUF metadata value.
enum Value {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    StrArray(Vec<String>),
    I32Array(Vec<i32>),
}

/// A GGUF tensor: ggml type, dims innermost first, bytes.
struct GgufTensor {
    name: String,
    ggml_type: u32,
    ne: Vec<u64>,
    data: Vec<u8>,
}

const GGML_F32: u32 = 0;
const GGML_Q8_0: u32 = 8;

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U32(x) => {
            out.extend(4u32.to_le_bytes());
            out.extend(x.to_le_bytes());
        }
        Value::F32(x) => {
            out.extend(6u32.to_le_bytes());
            out.extend(x.to_le_bytes());
        }
        Value::Bool(x) => {
            out.extend(7u32.to_le_bytes());
            out.push(u8::from(*x));
        }
        Value::Str(s) => {
            out.extend(8u32.to_le_bytes());
            put_str(out, s);
        }
        Value::StrArray(items) => {
            out.extend(9u32.to_le_bytes());
            out.extend(8u32.to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            for s in items {
                put_str(out, s);
            }
        }
        Value::I32Array(items) => {
            out.extend(9u32.to_le_bytes());
            out.extend(5u32.to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            for x in items {
                out.extend(x.to_le_bytes());
            }
        }
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Q8_0 bytes of a row-major [rows, cols] matrix: per block, the f16 scale then 32 codes.
fn q8_0_bytes(codes: &[i8], scales: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(codes.len() / BLOCK * (BLOCK + 2));
    for (b, d) in codes.chunks_exact(BLOCK).zip(scales) {
        out.extend(f16::from_f32(*d).to_le_bytes());
        out.extend(b.iter().map(|&c| c as u8));
    }
    out
}

/// The vocabulary for GGUF from a Hugging Face `tokenizer.json` (byte-level BPE).
struct Vocab {
    tokens: Vec<String>,
    types: Vec<i32>,
    merges: Vec<String>,
}

fn read_vocab(path: &Path, vocab_size: usize) -> Result<Vocab> {
    let bad = |m: String| EngineError::BadWeights(format!("{}: {m}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|err| EngineError::Io { path: path.to_path_buf(), err })?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let model = &v["model"];
    if model["type"] != "BPE" {
        return Err(bad("llama.cpp export needs a BPE tokenizer".into()));
    }
    let map = model["vocab"].as_object().ok_or_else(|| bad("no model.vocab".into()))?;
    let mut tokens: Vec<Option<String>> = vec![None; vocab_size];
    for (tok, id) in map {
        let id = id.as_u64().ok_or_else(|| bad(format!("token {tok} has no integer id")))? as usize;
        if id >= vocab_size {
            return Err(bad(format!("token id {id} is outside the model's vocabulary of {vocab_size}")));
        }
        tokens[id] = Some(tok.clone());
    }
    let mut types = vec![1i32; vocab_size];
    for a in v["added_tokens"].as_array().into_iter().flatten() {
        if let (Some(id), Some(content)) = (a["id"].as_u64(), a["content"].as_str()) {
            let id = id as usize;
            if id < vocab_size {
                tokens[id] = Some(content.to_string());
                types[id] = if a["special"] == true { 3 } else { 4 };
            }
        }
    }
    let tokens = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            t.unwrap_or_else(|| {
                types[i] = 5;
                format!("[ODIN_UNUSED_{i}]")
            })
        })
        .collect();
    let merges = model["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| match m {
            serde_json::Value::String(s) => Ok(s.clone()),
            serde_json::Value::Array(p) if p.len() == 2 => {
                Ok(format!("{} {}", p[0].as_str().unwrap_or_default(), p[1].as_str().unwrap_or_default()))
            }
            other => Err(bad(format!("unreadable merge {other}"))),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Vocab { tokens, types, merges })
}

/// Write the whole model `shard` as a llama.cpp `rwkv6` GGUF file.
///
/// `tokenizer` (our byte-level BPE with single-digit splitting) is written
/// as llama.cpp's `gpt2` BPE with the `starcoder` pre-tokenizer, whose
/// regexes are the same two steps: split digits one by one, then GPT-2's.
pub fn write_gguf(shard: &Shard, tokenizer: &Path, out: &Path) -> Result<()> {
    let cfg = shard.config();
    let (c, l) = (cfg.hidden_size, cfg.num_layers);
    if shard.range() != (0..l) {
        return Err(EngineError::BadInput("only a whole model can be exported".into()));
    }
    if (cfg.group_norm_eps - 64e-5).abs() > 1e-12 {
        return Err(EngineError::Unsupported(format!(
            "rwkv6 with group_norm_eps {} (llama.cpp fixes it at 64e-5)",
            cfg.group_norm_eps
        )));
    }
    let vocab = read_vocab(tokenizer, cfg.vocab_size)?;
    let u = |x: usize| Value::U32(x as u32);
    let meta: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::Str("rwkv6".into())),
        ("general.name", Value::Str(format!("odin-{}", shard.model_id()))),
        ("general.file_type", Value::U32(7)), // mostly Q8_0
        ("rwkv6.context_length", Value::U32(1 << 20)),
        ("rwkv6.embedding_length", u(c)),
        ("rwkv6.block_count", u(l)),
        ("rwkv6.feed_forward_length", u(cfg.ffn_size)),
        ("rwkv6.attention.layer_norm_epsilon", Value::F32(cfg.layer_norm_eps as f32)),
        ("rwkv6.attention.head_count", Value::U32(0)),
        ("rwkv6.rescale_every_n_layers", Value::U32(0)),
        ("rwkv6.wkv.head_size", u(cfg.head_size)),
        ("rwkv6.time_mix_extra_dim", u(cfg.mix_lora)),
        ("rwkv6.time_decay_extra_dim", u(cfg.decay_lora)),
        ("rwkv6.vocab_size", u(cfg.vocab_size)),
        ("tokenizer.ggml.model", Value::Str("gpt2".into())),
        ("tokenizer.ggml.pre", Value::Str("starcoder".into())),
        ("tokenizer.ggml.tokens", Value::StrArray(vocab.tokens)),
        ("tokenizer.ggml.token_type", Value::I32Array(vocab.types)),
        ("tokenizer.ggml.merges", Value::StrArray(vocab.merges)),
        ("tokenizer.ggml.bos_token_id", Value::U32(0)),
        ("tokenizer.ggml.eos_token_id", Value::U32(1)),
        ("tokenizer.ggml.padding_token_id", Value::U32(2)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
    ];

    let mut tensors = Vec::new();
    let f32t = |name: String, ne: Vec<usize>, v: &[f32]| GgufTensor {
        name,
        ggml_type: GGML_F32,
        ne: ne.into_iter().map(|x| x as u64).collect(),
        data: f32_bytes(v),
    };
    let q8t = |name: String, ours: &str| -> Result<GgufTensor> {
        let (codes, scales, rows, cols) = if ours == "emb.weight" {
            let e = shard.embedding().ok_or_else(|| EngineError::BadInput("no embedding".into()))?;
            (e.codes.clone(), e.scales.clone(), e.rows, e.cols)
        } else {
            let m = shard.matrix(ours)?;
            let (codes, scales) = m.to_rows();
            (codes, scales, m.rows(), m.cols())
        };
        Ok(GgufTensor {
            name,
            ggml_type: GGML_Q8_0,
            ne: vec![cols as u64, rows as u64],
            data: q8_0_bytes(&codes, &scales),
        })
    };
    let v = |name: &str| shard.vector(name);
    tensors.push(q8t("token_embd.weight".into(), "emb.weight")?);
    tensors.push(f32t("token_embd_norm.weight".into(), vec![c], v("blocks.0.ln0.weight")?));
    tensors.push(f32t("token_embd_norm.bias".into(), vec![c], v("blocks.0.ln0.bias")?));
    let (m, d) = (cfg.mix_lora, cfg.decay_lora);
    for i in 0..l {
        let ours = |n: &str| format!("blocks.{i}.{n}");
        let g = |n: &str| format!("blk.{i}.{n}");
        for (a, b) in [
            ("ln1.weight", "attn_norm.weight"),
            ("ln1.bias", "attn_norm.bias"),
            ("ln2.weight", "attn_norm_2.weight"),
            ("ln2.bias", "attn_norm_2.bias"),
            ("att.time_decay", "time_mix_decay.weight"),
            ("att.ln_x.weight", "time_mix_ln.weight"),
            ("att.ln_x.bias", "time_mix_ln.bias"),
        ] {
            tensors.push(f32t(g(b), vec![c], v(&ours(a))?));
        }
        for (a, b) in [
            ("att.time_maa_x", "time_mix_lerp_x.weight"),
            ("ffn.time_maa_k", "channel_mix_lerp_k.weight"),
            ("ffn.time_maa_r", "channel_mix_lerp_r.weight"),
        ] {
            tensors.push(f32t(g(b), vec![c, 1, 1], v(&ours(a))?));
        }
        let mut fused = Vec::with_capacity(5 * c);
        for q in ["w", "k", "v", "r", "g"] {
            fused.extend_from_slice(v(&ours(&format!("att.time_maa_{q}")))?);
        }
        tensors.push(f32t(g("time_mix_lerp_fused.weight"), vec![c, 1, 1, 5], &fused));
        // The LoRA matrices, as the engine runs them: int8, each held as [out, in] rows, which is
        // llama.cpp's layout (time_mix_w1 ne {C, 5M}, time_mix_w2 ne {M, C, 5}, decay_w1 ne {C, D},
        // decay_w2 ne {D, C}). Q8_0 needs whole blocks along ne0; a narrower LoRA (odin-tiny's
        // M = 16, stored padded) goes as the same values in f32.
        for (a, b, ne) in [
            ("att.time_maa_w1", "time_mix_w1.weight", vec![c, 5 * m]),
            ("att.time_maa_w2", "time_mix_w2.weight", vec![m, c, 5]),
            ("att.time_decay_w1", "time_mix_decay_w1.weight", vec![c, d]),
            ("att.time_decay_w2", "time_mix_decay_w2.weight", vec![d, c]),
        ] {
            let mats = shard.lora(&ours(a))?;
            if mats.iter().all(|q| q.cols() == ne[0]) {
                let (codes, scales) = stack_rows(&mats);
                let data = q8_0_bytes(&codes, &scales);
                tensors.push(GgufTensor {
                    name: g(b),
                    ggml_type: GGML_Q8_0,
                    ne: ne.iter().map(|&x| x as u64).collect(),
                    data,
                });
            } else {
                tensors.push(f32t(g(b), ne, &shard.lora_rows_f32(&ours(a))?));
            }
        }
        tensors.push(f32t(
            g("time_mix_first.weight"),
            vec![cfg.head_size, c / cfg.head_size],
            v(&ours("att.time_faaaa"))?,
        ));
        for (a, b) in [
            ("att.receptance.weight", "time_mix_receptance.weight"),
            ("att.key.weight", "time_mix_key.weight"),
            ("att.value.weight", "time_mix_value.weight"),
            ("att.gate.weight", "time_mix_gate.weight"),
            ("att.output.weight", "time_mix_output.weight"),
            ("ffn.key.weight", "channel_mix_key.weight"),
            ("ffn.receptance.weight", "channel_mix_receptance.weight"),
            ("ffn.value.weight", "channel_mix_value.weight"),
        ] {
            tensors.push(q8t(g(b), &ours(a))?);
        }
    }
    tensors.push(f32t("output_norm.weight".into(), vec![c], v("ln_out.weight")?));
    tensors.push(f32t("output_norm.bias".into(), vec![c], v("ln_out.bias")?));
    tensors.push(q8t("output.weight".into(), "head.weight")?);

    let mut head = Vec::new();
    head.extend(GGUF_MAGIC);
    head.extend(GGUF_VERSION.to_le_bytes());
    head.extend((tensors.len() as u64).to_le_bytes());
    head.extend((meta.len() as u64).to_le_bytes());
    for (k, val) in &meta {
        put_str(&mut head, k);
        put_value(&mut head, val);
    }
    let mut offset = 0usize;
    for t in &tensors {
        put_str(&mut head, &t.name);
        head.extend((t.ne.len() as u32).to_le_bytes());
        for n in &t.ne {
            head.extend(n.to_le_bytes());
        }
        head.extend(t.ggml_type.to_le_bytes());
        head.extend((offset as u64).to_le_bytes());
        offset += t.data.len().next_multiple_of(ALIGN);
    }
    head.resize(head.len().next_multiple_of(ALIGN), 0);
    let io = |err| EngineError::Io { path: out.to_path_buf(), err };
    let tmp = out.with_extension("tmp");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io)?);
    f.write_all(&head).map_err(io)?;
    for t in &tensors {
        f.write_all(&t.data).map_err(io)?;
        f.write_all(&vec![0u8; t.data.len().next_multiple_of(ALIGN) - t.data.len()]).map_err(io)?;
    }
    f.flush().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, out).map_err(io)
}

/// Name and shape transform of web-rwkv's converter: (new name, transpose last two dims).
fn st_name(name: &str) -> (String, bool) {
    let n = name.replace("time_faaaa", "time_first").replace("time_maa", "time_mix");
    let t = ["time_mix_w1", "time_mix_w2", "time_decay_w1", "time_decay_w2"].iter().any(|k| n.ends_with(k));
    (n, t)
}

/// Write the whole model as web-rwkv's `.st` (see the module docs).
pub fn write_st(shard: &Shard, out: &Path) -> Result<()> {
    let cfg = shard.config();
    if shard.range() != (0..cfg.num_layers) {
        return Err(EngineError::BadInput("only a whole model can be exported".into()));
    }
    let full = ModelConfig::Rwkv6(cfg.clone());
    let mut tensors = Vec::new();
    for spec in full.tensor_specs() {
        let name = spec.name.as_str();
        let values: Vec<f32> = if name == "emb.weight" {
            let e = shard.embedding().ok_or_else(|| EngineError::BadInput("no embedding".into()))?;
            let mut v = vec![0f32; e.rows * e.cols];
            for r in 0..e.rows {
                e.row(r, &mut v[r * e.cols..(r + 1) * e.cols]);
            }
            v
        } else if is_quantized(name) {
            let m = shard.matrix(name)?;
            let (codes, scales) = m.to_rows();
            codes.iter().enumerate().map(|(i, &q)| f32::from(q) * scales[i / BLOCK]).collect()
        } else if is_lora(name) {
            shard.lora_f32(name)?
        } else {
            shard.vector(name)?.to_vec()
        };
        let (st, flip) = st_name(name);
        let mut shape = spec.shape.clone();
        let values = if flip {
            let k = shape.len();
            let (r, c) = (shape[k - 2], shape[k - 1]);
            shape.swap(k - 2, k - 1);
            transpose(&values, r, c)
        } else {
            values
        };
        tensors.push(OutTensor {
            name: st,
            dtype: safetensors::Dtype::F16,
            shape,
            data: values.iter().flat_map(|x| f16::from_f32(*x).to_le_bytes()).collect(),
        });
    }
    let meta = [("format".to_string(), "pt".to_string()), ("odin_model_id".to_string(), shard.model_id().to_string())];
    write_safetensors(out, &tensors, meta.into())
}
