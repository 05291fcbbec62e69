//! An RWKV-6 shard in the int8 engine: blocks [a, b) of a model, with the
//! embedding when a = 0 and the head when b is the last block.
//!
//! [`Shard::forward`] is the call a node makes: a hidden state (or token
//! ids) and a session state in, a hidden state (or logits) and the advanced
//! state out. A prompt of T tokens runs as one call (prefill: each weight
//! matrix is read once for all T tokens) and gives bit-for-bit the same
//! result as T one-token calls, because every token's products go through
//! the same kernel in the same order.

use std::ops::Range;
use std::path::Path;

use odin_format::{model_id, ModelConfig, ModelId, Rwkv6Config, TensorSpec};

use crate::error::{EngineError, Result};
use crate::exec::{Exec, Options};
use crate::input::{input_rows, Input, Logits};
use crate::kernels::Kernel;
use crate::load::{block_name, current_engine_file, open_model};
use crate::math::{exp_each, layer_norm, layer_norm_into, sigmoid_each, tanh};
use crate::quant::{stack_rows, QMatrix, QRows};
use crate::weights::{is_lora, is_quantized, shard_specs, write_engine_file, OutTensor, Source, ENGINE_FILE};

struct Block {
    ln0: Option<(Vec<f32>, Vec<f32>)>,
    ln1: (Vec<f32>, Vec<f32>),
    ln2: (Vec<f32>, Vec<f32>),
    maa_x: Vec<f32>,
    maa: [Vec<f32>; 5], // w, k, v, r, g
    /// The mixing LoRA: [5·m, C] down, then five [C, m] up (int8, see [`Source::lora`]).
    maa_w1: QMatrix,
    maa_w2: Vec<QMatrix>,
    decay: Vec<f32>,
    decay_w1: QMatrix,
    decay_w2: QMatrix,
    faaaa: Vec<f32>,
    wr: QMatrix,
    wk: QMatrix,
    wv: QMatrix,
    wg: QMatrix,
    wo: QMatrix,
    lnx: (Vec<f32>, Vec<f32>),
    ffn_maa_k: Vec<f32>,
    ffn_maa_r: Vec<f32>,
    ffn_wk: QMatrix,
    ffn_wr: QMatrix,
    ffn_wv: QMatrix,
}

struct Head {
    ln: (Vec<f32>, Vec<f32>),
    w: QMatrix,
}

/// The recurrent state of one block for one session.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerState {
    /// Last ln1 output seen by time mixing [C].
    pub att_shift: Vec<f32>,
    /// WKV state [H, N, N] (key index, value index).
    pub wkv: Vec<f32>,
    /// Last ln2 output seen by channel mixing [C].
    pub ffn_shift: Vec<f32>,
}

/// A session's state on a shard: one [`LayerState`] per block it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    /// First block the state belongs to.
    pub first_block: usize,
    /// Per-block states in block order.
    pub layers: Vec<LayerState>,
}

impl State {
    /// blake3 of the state's bytes: what verifiers compare.
    pub fn hash(&self) -> blake3::Hash {
        let mut h = blake3::Hasher::new();
        h.update(&(self.first_block as u64).to_le_bytes());
        for l in &self.layers {
            for v in [&l.att_shift, &l.wkv, &l.ffn_shift] {
                crate::digest::hash_f32s(&mut h, v);
            }
        }
        h.finalize()
    }

    /// The state as rows of width C, [`state_rows_per_block`] rows per block: att_shift, ffn_shift, then the wkv state.
    ///
    /// For each block in order: the `att_shift` row, the `ffn_shift` row, then the
    /// WKV state (C·N values, N = head size) as N consecutive rows of C in its
    /// in-memory order. This is how a session's state travels between servers;
    /// [`Shard::state_from_rows`] rebuilds it bit for bit.
    pub fn to_rows(&self) -> Vec<f32> {
        let len: usize = self.layers.iter().map(|l| l.att_shift.len() + l.ffn_shift.len() + l.wkv.len()).sum();
        let mut out = Vec::with_capacity(len);
        for l in &self.layers {
            out.extend_from_slice(&l.att_shift);
            out.extend_from_slice(&l.ffn_shift);
            out.extend_from_slice(&l.wkv);
        }
        out
    }
}

/// Rows of width C one block's state takes in [`State::to_rows`]: head_size + 2.
pub fn state_rows_per_block(head_size: usize) -> usize {
    head_size + 2
}

/// Blocks [a, b) of an RWKV-6 model on the int8 engine.
pub struct Shard {
    cfg: Rwkv6Config,
    id: ModelId,
    range: Range<usize>,
    emb: Option<QRows>,
    blocks: Vec<Block>,
    head: Option<Head>,
    exec: Exec,
}

impl Shard {
    /// Load blocks `range` (all of them when `None`) of the model directory `dir`.
    ///
    /// Uses `model.int8.safetensors` when it was made from these exact
    /// files (its metadata names the model id), otherwise quantizes
    /// `model.safetensors` on load.
    pub fn load(dir: &Path, range: Option<Range<usize>>, opts: Options) -> Result<Self> {
        let (cfg, id, src) = open_model(dir)?;
        let range = range.unwrap_or(0..cfg.num_layers());
        Self::build(&cfg, id, range, &src, opts)
    }

    /// Whether `dir` holds an engine file made from its current weights.
    pub fn has_engine_file(dir: &Path) -> Result<bool> {
        Ok(current_engine_file(dir, &model_id(dir)?)?.is_some())
    }

    /// Build a shard from any tensor source.
    pub fn build(cfg: &ModelConfig, id: ModelId, range: Range<usize>, src: &Source<'_>, opts: Options) -> Result<Self> {
        let c = match cfg {
            ModelConfig::Rwkv6(c) => c.clone(),
            other => {
                return Err(EngineError::Unsupported(format!(
                    "a {} model in an RWKV-6 shard; the network serves RWKV-6 models only, and `odin generate` \
                     or `odin eval --engine int8` run a whole {0} model on one machine",
                    other.architecture()
                )))
            }
        };
        let l = c.num_layers;
        if range.start >= range.end || range.end > l {
            return Err(EngineError::BadInput(format!(
                "block range {}..{} does not fit a model of {l} blocks; use a..b with a < b <= {l}",
                range.start, range.end
            )));
        }
        for (what, n) in [("hidden_size", c.hidden_size), ("ffn_size", c.ffn_size)] {
            if n % crate::quant::BLOCK != 0 {
                return Err(EngineError::Unsupported(format!(
                    "an RWKV-6 model with {what} {n} (the int8 engine needs a multiple of 32)"
                )));
            }
        }
        let specs = shard_specs(cfg, &range);
        let spec = |name: &str| -> Result<&TensorSpec> {
            specs.get(name).ok_or_else(|| EngineError::BadWeights(format!("the config has no tensor `{name}`")))
        };
        let f = |name: &str| -> Result<Vec<f32>> { src.f32s(spec(name)?) };
        let q = |name: &str| -> Result<QMatrix> { src.matrix(spec(name)?) };
        let lora = |name: &str| -> Result<Vec<QMatrix>> { src.lora(spec(name)?) };
        let lora1 = |name: &str| -> Result<QMatrix> {
            lora(name)?.pop().ok_or_else(|| EngineError::BadWeights(format!("`{name}` is empty")))
        };
        let emb = if range.start == 0 { Some(src.rows(spec("emb.weight")?)?) } else { None };
        let mut blocks = Vec::new();
        for i in range.clone() {
            let p = |n: &str| format!("blocks.{i}.{n}");
            let pair = |a: &str, b: &str| -> Result<(Vec<f32>, Vec<f32>)> { Ok((f(&p(a))?, f(&p(b))?)) };
            blocks.push(Block {
                ln0: if i == 0 { Some(pair("ln0.weight", "ln0.bias")?) } else { None },
                ln1: pair("ln1.weight", "ln1.bias")?,
                ln2: pair("ln2.weight", "ln2.bias")?,
                maa_x: f(&p("att.time_maa_x"))?,
                maa: [
                    f(&p("att.time_maa_w"))?,
                    f(&p("att.time_maa_k"))?,
                    f(&p("att.time_maa_v"))?,
                    f(&p("att.time_maa_r"))?,
                    f(&p("att.time_maa_g"))?,
                ],
                maa_w1: lora1(&p("att.time_maa_w1"))?,
                maa_w2: lora(&p("att.time_maa_w2"))?,
                decay: f(&p("att.time_decay"))?,
                decay_w1: lora1(&p("att.time_decay_w1"))?,
                decay_w2: lora1(&p("att.time_decay_w2"))?,
                faaaa: f(&p("att.time_faaaa"))?,
                wr: q(&p("att.receptance.weight"))?,
                wk: q(&p("att.key.weight"))?,
                wv: q(&p("att.value.weight"))?,
                wg: q(&p("att.gate.weight"))?,
                wo: q(&p("att.output.weight"))?,
                lnx: pair("att.ln_x.weight", "att.ln_x.bias")?,
                ffn_maa_k: f(&p("ffn.time_maa_k"))?,
                ffn_maa_r: f(&p("ffn.time_maa_r"))?,
                ffn_wk: q(&p("ffn.key.weight"))?,
                ffn_wr: q(&p("ffn.receptance.weight"))?,
                ffn_wv: q(&p("ffn.value.weight"))?,
            });
            // Block by block, so the memory the loose copies leave behind is reused by the next
            // block's and the peak stays near the weights' size.
            if let Some(b) = blocks.last_mut() {
                let mut ms: Vec<&mut QMatrix> = vec![&mut b.maa_w1];
                ms.extend(&mut b.maa_w2);
                ms.extend([&mut b.wr, &mut b.wk, &mut b.wv, &mut b.wg, &mut b.decay_w1, &mut b.decay_w2, &mut b.wo]);
                ms.extend([&mut b.ffn_wk, &mut b.ffn_wr, &mut b.ffn_wv]);
                QMatrix::pack(&mut ms);
            }
        }
        let mut head = if range.end == l {
            Some(Head { ln: (f("ln_out.weight")?, f("ln_out.bias")?), w: q("head.weight")? })
        } else {
            None
        };
        if let Some(h) = head.as_mut() {
            QMatrix::pack(&mut [&mut h.w]);
        }
        crate::pages::release_freed();
        Ok(Self { cfg: c, id, range, emb, blocks, head, exec: Exec::new(opts)? })
    }

    /// Write the whole model's engine file into `dir`; the shard must hold every block.
    pub fn save_engine_file(&self, dir: &Path) -> Result<std::path::PathBuf> {
        if self.range != (0..self.cfg.num_layers) {
            return Err(EngineError::BadInput("only a whole model can be saved as an engine file".into()));
        }
        let full = ModelConfig::Rwkv6(self.cfg.clone());
        let mut out = Vec::new();
        for spec in full.tensor_specs() {
            let name = spec.name.as_str();
            if name == "emb.weight" {
                let e = self.emb.as_ref().ok_or_else(|| EngineError::BadInput("no embedding".into()))?;
                out.extend(OutTensor::rows(name, e));
            } else if is_quantized(name) {
                out.extend(OutTensor::matrix(name, self.matrix(name)?));
            } else if is_lora(name) {
                let ms = self.lora(name)?;
                let (codes, scales) = stack_rows(&ms);
                let rows = ms.iter().map(|m| m.rows()).sum();
                out.extend(OutTensor::q8(name, rows, ms.first().map_or(0, |m| m.cols()), &codes, &scales));
            } else {
                out.push(OutTensor::f32(name, &spec.shape, self.vector(name)?));
            }
        }
        let path = dir.join(ENGINE_FILE);
        write_engine_file(&path, &self.id, &out)?;
        Ok(path)
    }

    /// A LoRA tensor's int8 matrices by its official name (one, or five for `time_maa_w2`).
    pub fn lora(&self, name: &str) -> Result<Vec<&QMatrix>> {
        let (blk, rest) = self.block_of(name)?;
        Ok(match rest {
            "att.time_maa_w1" => vec![&blk.maa_w1],
            "att.time_maa_w2" => blk.maa_w2.iter().collect(),
            "att.time_decay_w1" => vec![&blk.decay_w1],
            "att.time_decay_w2" => vec![&blk.decay_w2],
            _ => return Err(EngineError::BadInput(format!("`{name}` is not a LoRA tensor"))),
        })
    }

    /// A LoRA tensor dequantized as the engine runs it: each of its matrices as `[out, in]` rows,
    /// the padding columns dropped (llama.cpp's layout).
    pub fn lora_rows_f32(&self, name: &str) -> Result<Vec<f32>> {
        let n_in = self.lora_inputs(name);
        let mut out = Vec::new();
        for m in self.lora(name)? {
            let (codes, scales) = m.to_rows();
            let (cols, nb) = (m.cols(), m.blocks());
            for r in 0..m.rows() {
                out.extend(
                    (0..n_in).map(|i| f32::from(codes[r * cols + i]) * scales[r * nb + i / crate::quant::BLOCK]),
                );
            }
        }
        Ok(out)
    }

    /// A LoRA tensor dequantized into its official layout (`[in, out]` or `[k, in, out]`):
    /// the weights the engine runs, for the exports.
    pub fn lora_f32(&self, name: &str) -> Result<Vec<f32>> {
        let n_out = self.lora(name)?.first().map_or(0, |m| m.rows());
        Ok(crate::weights::transpose(&self.lora_rows_f32(name)?, n_out, self.lora_inputs(name)))
    }

    /// Inputs of a LoRA tensor's matrices (their stored columns may be padded past it).
    fn lora_inputs(&self, name: &str) -> usize {
        match name {
            n if n.ends_with("time_maa_w2") => self.cfg.mix_lora,
            n if n.ends_with("time_decay_w2") => self.cfg.decay_lora,
            _ => self.cfg.hidden_size,
        }
    }

    /// A quantized matrix by its official name.
    pub fn matrix(&self, name: &str) -> Result<&QMatrix> {
        if name == "head.weight" {
            return self
                .head
                .as_ref()
                .map(|h| &h.w)
                .ok_or_else(|| EngineError::BadInput("no head in this shard".into()));
        }
        let (blk, rest) = self.block_of(name)?;
        Ok(match rest {
            "att.receptance.weight" => &blk.wr,
            "att.key.weight" => &blk.wk,
            "att.value.weight" => &blk.wv,
            "att.gate.weight" => &blk.wg,
            "att.output.weight" => &blk.wo,
            "ffn.key.weight" => &blk.ffn_wk,
            "ffn.receptance.weight" => &blk.ffn_wr,
            "ffn.value.weight" => &blk.ffn_wv,
            _ => return Err(EngineError::BadInput(format!("`{name}` is not a quantized matrix"))),
        })
    }

    /// An f32 tensor (norms, mixing vectors, LoRA matrices) by its official name.
    pub fn vector(&self, name: &str) -> Result<&[f32]> {
        match name {
            "ln_out.weight" | "ln_out.bias" => {
                let h = self.head.as_ref().ok_or_else(|| EngineError::BadInput("no head in this shard".into()))?;
                return Ok(if name.ends_with("weight") { &h.ln.0 } else { &h.ln.1 });
            }
            _ => {}
        }
        let (blk, rest) = self.block_of(name)?;
        let ln0 = || blk.ln0.as_ref().ok_or_else(|| EngineError::BadInput(format!("no `{name}`")));
        Ok(match rest {
            "ln0.weight" => &ln0()?.0,
            "ln0.bias" => &ln0()?.1,
            "ln1.weight" => &blk.ln1.0,
            "ln1.bias" => &blk.ln1.1,
            "ln2.weight" => &blk.ln2.0,
            "ln2.bias" => &blk.ln2.1,
            "att.time_maa_x" => &blk.maa_x,
            "att.time_maa_w" => &blk.maa[0],
            "att.time_maa_k" => &blk.maa[1],
            "att.time_maa_v" => &blk.maa[2],
            "att.time_maa_r" => &blk.maa[3],
            "att.time_maa_g" => &blk.maa[4],
            "att.time_decay" => &blk.decay,
            "att.time_faaaa" => &blk.faaaa,
            "att.ln_x.weight" => &blk.lnx.0,
            "att.ln_x.bias" => &blk.lnx.1,
            "ffn.time_maa_k" => &blk.ffn_maa_k,
            "ffn.time_maa_r" => &blk.ffn_maa_r,
            _ => return Err(EngineError::BadInput(format!("`{name}` is not an f32 tensor of RWKV-6"))),
        })
    }

    /// The embedding, when this shard starts the model.
    pub fn embedding(&self) -> Option<&QRows> {
        self.emb.as_ref()
    }

    fn block_of<'n>(&self, name: &'n str) -> Result<(&Block, &'n str)> {
        let (i, rest) = block_name(name, "blocks.", &self.range)?;
        Ok((&self.blocks[i], rest))
    }

    /// The model's config.
    pub fn config(&self) -> &Rwkv6Config {
        &self.cfg
    }

    /// The content id of the model the weights came from.
    pub fn model_id(&self) -> ModelId {
        self.id
    }

    /// The blocks this shard holds.
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

    /// Bytes of weights one decode step reads (the roofline's numerator).
    pub fn bytes_per_token(&self) -> usize {
        let mut n = 0;
        for b in &self.blocks {
            for m in [&b.wr, &b.wk, &b.wv, &b.wg, &b.wo, &b.ffn_wk, &b.ffn_wr, &b.ffn_wv] {
                n += m.bytes();
            }
            for m in [&b.maa_w1, &b.decay_w1, &b.decay_w2].into_iter().chain(&b.maa_w2) {
                n += m.bytes();
            }
        }
        if let Some(h) = &self.head {
            n += h.w.bytes();
        }
        n + self.emb.as_ref().map_or(0, |e| e.cols * 2)
    }

    /// A zero state for one session over all of this shard's blocks.
    pub fn new_state(&self) -> State {
        self.blank_state(self.range.clone())
    }

    /// A zero state for one session that runs only blocks `sub` of this shard
    /// (a route may use part of a server's range).
    pub fn new_state_for(&self, sub: Range<usize>) -> Result<State> {
        self.check_sub(&sub)?;
        Ok(self.blank_state(sub))
    }

    /// Rebuild the state of blocks `sub` of this shard from the rows [`State::to_rows`] made
    /// (a session handed over by a server that is leaving); the result has `first_block = sub.start`.
    ///
    /// `sub` must be a non-empty part of this shard's range, and `rows` must hold exactly
    /// `sub.len() * (head_size + 2)` rows of width C, every value finite.
    pub fn state_from_rows(&self, sub: Range<usize>, rows: &[f32]) -> Result<State> {
        self.check_sub(&sub)?;
        let (c, n) = (self.cfg.hidden_size, self.cfg.head_size);
        let per_block = state_rows_per_block(n);
        let want = sub.len() * per_block * c;
        if rows.len() != want {
            return Err(EngineError::BadInput(format!(
                "a state for blocks {}..{} is {} rows of {c} ({per_block} per block), {want} values, not {}; \
                 send the rows State::to_rows made for exactly these blocks of this model",
                sub.start,
                sub.end,
                sub.len() * per_block,
                rows.len()
            )));
        }
        if let Some(i) = rows.iter().position(|v| !v.is_finite()) {
            return Err(EngineError::BadInput(format!(
                "the state holds NaN or infinity (row {} of block {}); a state must be finite, so it was corrupted \
                 on the way: open the session afresh and replay its history",
                i / c % per_block,
                sub.start + i / (per_block * c)
            )));
        }
        let layers = rows
            .chunks_exact(per_block * c)
            .map(|b| LayerState {
                att_shift: b[..c].to_vec(),
                ffn_shift: b[c..2 * c].to_vec(),
                wkv: b[2 * c..].to_vec(),
            })
            .collect();
        Ok(State { first_block: sub.start, layers })
    }

    /// Refuse a block range that is not a non-empty part of this shard's.
    fn check_sub(&self, sub: &Range<usize>) -> Result<()> {
        if sub.is_empty() || sub.start < self.range.start || sub.end > self.range.end {
            return Err(EngineError::BadInput(format!(
                "blocks {}..{} are not a non-empty part of this shard's {}..{}",
                sub.start, sub.end, self.range.start, self.range.end
            )));
        }
        Ok(())
    }

    fn blank_state(&self, sub: Range<usize>) -> State {
        let c = self.cfg.hidden_size;
        let n = self.cfg.head_size;
        let layers = sub
            .clone()
            .map(|_| LayerState { att_shift: vec![0.0; c], wkv: vec![0.0; c * n], ffn_shift: vec![0.0; c] })
            .collect();
        State { first_block: sub.start, layers }
    }

    /// Run the blocks `state` covers (all of the shard's, or the part given to
    /// [`Shard::new_state_for`]) over T tokens, advancing `state`.
    ///
    /// Returns [T, C] hidden states, or when the state reaches the last block
    /// the logits of the positions `logits` selects ([1, V] or [T, V]).
    pub fn forward(&self, input: Input<'_>, state: &mut State, logits: Logits) -> Result<Vec<f32>> {
        let c = self.cfg.hidden_size;
        self.check_state(state)?;
        let sub = state.first_block..state.first_block + state.layers.len();
        let emb = if sub.start == 0 { self.emb.as_ref() } else { None };
        let mut x = input_rows(input, emb, c, sub.start)?;
        let first = sub.start - self.range.start;
        for (blk, st) in self.blocks[first..first + sub.len()].iter().zip(state.layers.iter_mut()) {
            self.block(blk, &mut x, st);
        }
        let head = if sub.end == self.range.end { self.head.as_ref() } else { None };
        match head {
            None => Ok(x),
            Some(h) => {
                let t = x.len() / c;
                let rows = if logits == Logits::Last { &mut x[(t - 1) * c..] } else { &mut x[..] };
                for row in rows.chunks_exact_mut(c) {
                    layer_norm(row, &h.ln.0, &h.ln.1, self.cfg.layer_norm_eps as f32);
                }
                Ok(self.exec.linear(&h.w, rows))
            }
        }
    }

    fn check_state(&self, st: &State) -> Result<()> {
        let (c, n) = (self.cfg.hidden_size, self.cfg.head_size);
        let ok = st.first_block >= self.range.start
            && !st.layers.is_empty()
            && st.first_block + st.layers.len() <= self.range.end
            && st.layers.iter().all(|l| l.att_shift.len() == c && l.ffn_shift.len() == c && l.wkv.len() == c * n);
        if !ok {
            return Err(EngineError::StateMismatch(format!(
                "the state covers blocks {}..{} and this shard holds {}..{}",
                st.first_block,
                st.first_block + st.layers.len(),
                self.range.start,
                self.range.end
            )));
        }
        Ok(())
    }

    /// One block over T tokens, its element-wise work compiled for the kernel's instruction set.
    fn block(&self, blk: &Block, x: &mut [f32], st: &mut LayerState) {
        #[cfg(target_arch = "x86_64")]
        match self.exec.kernel() {
            // SAFETY: `Exec::new` only picks a kernel this CPU supports, and each kernel's
            // features include the ones enabled here.
            Kernel::Avx512Vnni => return unsafe { self.block_avx512(blk, x, st) },
            Kernel::Avx2 => return unsafe { self.block_avx2(blk, x, st) },
            _ => {}
        }
        self.block_portable(blk, x, st)
    }

    /// [`Shard::block`] with AVX-512 for the loops. The element-wise glue (the WKV recurrence,
    /// the lerps) was ~15% of decode time on SSE2's 4 lanes. Wider lanes run the same IEEE
    /// operations in the same order per element (Rust never contracts a multiply and an add
    /// into an FMA), so every bit is the same; the golden hash checks it on each kernel.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn block_avx512(&self, blk: &Block, x: &mut [f32], st: &mut LayerState) {
        self.block_portable(blk, x, st)
    }

    /// [`Shard::block`] with AVX2 for the loops (see [`Shard::block_avx512`]).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn block_avx2(&self, blk: &Block, x: &mut [f32], st: &mut LayerState) {
        self.block_portable(blk, x, st)
    }

    /// One block over T tokens: time mixing then channel mixing, each residual.
    #[inline(always)]
    fn block_portable(&self, blk: &Block, x: &mut [f32], st: &mut LayerState) {
        let cfg = &self.cfg;
        let (c, n, m) = (cfg.hidden_size, cfg.head_size, cfg.mix_lora);
        let h = c / n;
        let t_len = x.len() / c;
        let eps = cfg.layer_norm_eps as f32;
        if let Some((w, b)) = &blk.ln0 {
            x.chunks_exact_mut(c).for_each(|row| layer_norm(row, w, b, eps));
        }

        // Time mixing: token shift, data-dependent lerp (ddlerp), projections.
        let (xx, sx) = shifted(x, c, &blk.ln1, eps, &mut st.att_shift);
        // ddlerp: the LoRA's input for every token, then its two int8 products.
        let mut xxx = vec![0f32; t_len * c];
        lerp(&xx, &sx, &blk.maa_x, None, &mut xxx);
        let mut lora = self.exec.linear(&blk.maa_w1, &xxx);
        lora.iter_mut().for_each(|v| *v = tanh(*v));
        let mut mixed: [Vec<f32>; 5] = std::array::from_fn(|_| vec![0f32; t_len * c]);
        for (q, out) in mixed.iter_mut().enumerate() {
            let part: Vec<f32> =
                lora.chunks_exact(5 * m).flat_map(|row| row[q * m..(q + 1) * m].iter().copied()).collect();
            let mq = self.exec.linear_padded(&blk.maa_w2[q], &part, m);
            lerp(&xx, &sx, &blk.maa[q], Some(&mq), out);
        }
        let r = self.exec.linear(&blk.wr, &mixed[3]);
        let k = self.exec.linear(&blk.wk, &mixed[1]);
        let v = self.exec.linear(&blk.wv, &mixed[2]);
        let mut g = self.exec.linear(&blk.wg, &mixed[4]);
        let mut sg = g.clone();
        sigmoid_each(&mut sg);
        g.iter_mut().zip(&sg).for_each(|(v, s)| *v *= s);
        let mut dlo = self.exec.linear(&blk.decay_w1, &mixed[0]);
        dlo.iter_mut().for_each(|v| *v = tanh(*v));
        let mut w = self.exec.linear_padded(&blk.decay_w2, &dlo, cfg.decay_lora);
        // w = exp(-exp(w + decay)), a whole row per step so the exps vectorize.
        debug_assert_eq!(blk.decay.len(), c);
        for row in w.chunks_exact_mut(c) {
            row.iter_mut().zip(&blk.decay).for_each(|(wi, d)| *wi += d);
            exp_each(row);
            row.iter_mut().for_each(|wi| *wi = -*wi);
            exp_each(row);
        }

        // WKV recurrence per head: y = r · (u ⊙ kᵀv + S); S ← kᵀv + w ⊙ S.
        let mut y = vec![0f32; t_len * c];
        for t in 0..t_len {
            for hd in 0..h {
                let o = t * c + hd * n;
                let s = &mut st.wkv[hd * n * n..(hd + 1) * n * n];
                let yh = &mut y[o..o + n];
                for i in 0..n {
                    let (ri, ki, wi, ui) = (r[o + i], k[o + i], w[o + i], blk.faaaa[hd * n + i]);
                    let srow = &mut s[i * n..(i + 1) * n];
                    for ((sv, yv), vj) in srow.iter_mut().zip(yh.iter_mut()).zip(&v[o..o + n]) {
                        let a = ki * vj;
                        *yv += ri * (ui * a + *sv);
                        *sv = a + wi * *sv;
                    }
                }
            }
        }
        // Per-head GroupNorm, gate, output projection.
        let geps = cfg.group_norm_eps as f32;
        for t in 0..t_len {
            for hd in 0..h {
                let o = t * c + hd * n;
                layer_norm(&mut y[o..o + n], &blk.lnx.0[hd * n..(hd + 1) * n], &blk.lnx.1[hd * n..(hd + 1) * n], geps);
            }
        }
        y.iter_mut().zip(&g).for_each(|(a, b)| *a *= b);
        let out = self.exec.linear(&blk.wo, &y);
        x.iter_mut().zip(&out).for_each(|(a, b)| *a += b);

        // Channel mixing.
        let (xx, sx) = shifted(x, c, &blk.ln2, eps, &mut st.ffn_shift);
        let mut kx = vec![0f32; t_len * c];
        let mut rx = vec![0f32; t_len * c];
        lerp(&xx, &sx, &blk.ffn_maa_k, None, &mut kx);
        lerp(&xx, &sx, &blk.ffn_maa_r, None, &mut rx);
        let mut kk = self.exec.linear(&blk.ffn_wk, &kx);
        kk.iter_mut().for_each(|v| {
            let r = v.max(0.0);
            *v = r * r;
        });
        let mut rr = self.exec.linear(&blk.ffn_wr, &rx);
        let vv = self.exec.linear(&blk.ffn_wv, &kk);
        sigmoid_each(&mut rr);
        debug_assert!(rr.len() == x.len() && vv.len() == x.len());
        x.iter_mut().zip(rr.iter().zip(&vv)).for_each(|(a, (r, v))| *a += r * v);
    }
}

/// Normalise each token of `x` and take the token-shift difference:
/// returns (xx, prev - xx) and leaves the last xx in `shift`.
/// `out = xx + sx * (add + mix)` row by row, `mix` of one row's width (`add`, when given, as wide as `out`).
#[inline(always)]
fn lerp(xx: &[f32], sx: &[f32], mix: &[f32], add: Option<&[f32]>, out: &mut [f32]) {
    let c = mix.len();
    for (t, row) in out.chunks_exact_mut(c).enumerate() {
        let (a, s) = (&xx[t * c..(t + 1) * c], &sx[t * c..(t + 1) * c]);
        match add {
            None => row.iter_mut().zip(a.iter().zip(s)).zip(mix).for_each(|((o, (a, s)), m)| *o = a + s * m),
            Some(add) => row
                .iter_mut()
                .zip(a.iter().zip(s))
                .zip(mix.iter().zip(&add[t * c..(t + 1) * c]))
                .for_each(|((o, (a, s)), (m, q))| *o = a + s * (q + m)),
        }
    }
}

#[inline(always)]
fn shifted(x: &[f32], c: usize, ln: &(Vec<f32>, Vec<f32>), eps: f32, shift: &mut [f32]) -> (Vec<f32>, Vec<f32>) {
    let t_len = x.len() / c;
    let mut xx = vec![0f32; x.len()];
    for t in 0..t_len {
        layer_norm_into(&x[t * c..(t + 1) * c], &ln.0, &ln.1, eps, &mut xx[t * c..(t + 1) * c]);
    }
    let mut sx = vec![0f32; x.len()];
    for t in 0..t_len {
        for j in 0..c {
            let prev = if t == 0 { shift[j] } else { xx[(t - 1) * c + j] };
            sx[t * c + j] = prev - xx[t * c + j];
        }
    }
    shift.copy_from_slice(&xx[(t_len - 1) * c..]);
    (xx, sx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::{golden_config, weights, GOLDEN_SEED};

    /// The golden model's shape with `layers` blocks (synthetic weights, no files).
    fn cfg(layers: usize) -> Rwkv6Config {
        Rwkv6Config { num_layers: layers, ..golden_config() }
    }

    fn shard(cfg: &Rwkv6Config, range: Range<usize>, opts: Options) -> Shard {
        let w = weights(cfg, GOLDEN_SEED);
        Shard::build(&ModelConfig::Rwkv6(cfg.clone()), ModelId([0; 32]), range, &Source::Memory(&w), opts).unwrap()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    const PROMPT: [u32; 7] = [5, 17, 42, 3, 88, 61, 0];
    const NEXT: [u32; 3] = [9, 33, 70];

    #[test]
    fn state_rows_round_trip() {
        let cfg = cfg(2);
        let s = shard(&cfg, 0..2, Options::default());
        let mut st = s.new_state();
        s.forward(Input::Tokens(&PROMPT), &mut st, Logits::Last).unwrap();
        let rows = st.to_rows();
        let per = state_rows_per_block(cfg.head_size);
        assert_eq!(per, cfg.head_size + 2);
        assert_eq!(rows.len(), 2 * per * cfg.hidden_size);
        // Layout: att_shift, ffn_shift, then the wkv state in its order.
        let c = cfg.hidden_size;
        assert_eq!(rows[..c], st.layers[0].att_shift[..]);
        assert_eq!(rows[c..2 * c], st.layers[0].ffn_shift[..]);
        assert_eq!(rows[2 * c..per * c], st.layers[0].wkv[..]);
        let back = s.state_from_rows(0..2, &rows).unwrap();
        assert_eq!(back, st);
        assert_eq!(back.hash(), st.hash());
        assert_eq!(bits(&back.to_rows()), bits(&rows));
        // A zero state of part of the shard round-trips too.
        let zero = s.new_state_for(1..2).unwrap();
        assert_eq!(s.state_from_rows(1..2, &zero.to_rows()).unwrap(), zero);
    }

    #[test]
    fn resumed_state_continues_bit_exactly() {
        let cfg = cfg(2);
        let leaving = shard(&cfg, 0..2, Options::default());
        // The server the session moves to: another shard object, another kernel and thread count.
        let other = Options { threads: 2, kernel: Some(crate::Kernel::Scalar), parallel_min_macs: 0 };
        let taking = shard(&cfg, 0..2, other);
        let mut st = leaving.new_state();
        leaving.forward(Input::Tokens(&PROMPT), &mut st, Logits::Last).unwrap();
        let mut moved = taking.state_from_rows(0..2, &st.to_rows()).unwrap();
        for t in NEXT {
            let want = leaving.forward(Input::Tokens(&[t]), &mut st, Logits::Last).unwrap();
            let got = taking.forward(Input::Tokens(&[t]), &mut moved, Logits::Last).unwrap();
            assert_eq!(bits(&want), bits(&got));
        }
        assert_eq!(moved.hash(), st.hash());
    }

    #[test]
    fn a_sliced_state_resumes_on_two_shards() {
        let cfg = cfg(3);
        let (c, per) = (cfg.hidden_size, state_rows_per_block(cfg.head_size));
        let whole = shard(&cfg, 0..3, Options::default());
        let mut st = whole.new_state();
        whole.forward(Input::Tokens(&PROMPT), &mut st, Logits::Last).unwrap();
        // Two servers take blocks 0..1 and 1..3: each gets its rows of the whole state.
        let rows = st.to_rows();
        let (head, tail) = rows.split_at(per * c);
        let first = shard(&cfg, 0..1, Options::default());
        let last = shard(&cfg, 1..3, Options { threads: 3, kernel: None, parallel_min_macs: 0 });
        let mut s1 = first.state_from_rows(0..1, head).unwrap();
        let mut s2 = last.state_from_rows(1..3, tail).unwrap();
        assert_eq!((s1.first_block, s2.first_block), (0, 1));
        for t in NEXT {
            let want = whole.forward(Input::Tokens(&[t]), &mut st, Logits::Last).unwrap();
            let h = first.forward(Input::Tokens(&[t]), &mut s1, Logits::Last).unwrap();
            let got = last.forward(Input::Hidden(&h), &mut s2, Logits::Last).unwrap();
            assert_eq!(bits(&want), bits(&got));
        }
        let mut joined = s1.to_rows();
        joined.extend(s2.to_rows());
        assert_eq!(bits(&joined), bits(&st.to_rows()));
        // Part of a server's range: blocks 1..3 of the whole shard, from the same rows.
        let mut s3 = whole.state_from_rows(1..3, tail).unwrap();
        let mut s0 = whole.state_from_rows(0..1, head).unwrap();
        let mut again = whole.state_from_rows(0..3, &rows).unwrap();
        let h = whole.forward(Input::Tokens(&NEXT), &mut s0, Logits::All).unwrap();
        let got = whole.forward(Input::Hidden(&h), &mut s3, Logits::Last).unwrap();
        let want = whole.forward(Input::Tokens(&NEXT), &mut again, Logits::Last).unwrap();
        assert_eq!(bits(&want), bits(&got));
    }

    #[test]
    fn bad_state_rows_are_refused() {
        let cfg = cfg(3);
        let (c, per) = (cfg.hidden_size, state_rows_per_block(cfg.head_size));
        let s = shard(&cfg, 1..3, Options::default());
        let good = vec![0.0f32; 2 * per * c];
        assert!(s.state_from_rows(1..3, &good).is_ok());
        let msg = |r: Result<State>| match r {
            Err(EngineError::BadInput(m)) => m,
            other => panic!("expected BadInput, got {other:?}"),
        };
        // Wrong lengths: a value short, a row too many, one block's rows for two blocks.
        for len in [good.len() - 1, good.len() + c, per * c, 0] {
            let m = msg(s.state_from_rows(1..3, &vec![0.0; len]));
            assert!(m.contains(&format!("not {len}")) && m.contains("68 rows of 64"), "{m}");
        }
        // Non-finite values, with where they are.
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut rows = good.clone();
            rows[per * c + 2 * c + 5] = bad;
            let m = msg(s.state_from_rows(1..3, &rows));
            assert!(m.contains("NaN or infinity") && m.contains("row 2 of block 2"), "{m}");
        }
        // Block ranges that are not a non-empty part of the shard's.
        for sub in [0..2, 1..4, 2..2, 3..4] {
            let m = msg(s.state_from_rows(sub.clone(), &vec![0.0; sub.len() * per * c]));
            assert!(m.contains("not a non-empty part of this shard's 1..3"), "{m}");
        }
    }
}
