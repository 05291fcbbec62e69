//! Tokenised training data and the seeded batch sampler.
//!
//! A record becomes `<|bos|> <|prompt|> PROMPT <|answer|> COMPLETION <|eos|>`;
//! the loss covers only the completion and the final `<|eos|>`. Records are
//! packed into rows of `seq_len + 1` tokens and the tail of a row is padding.
//! Every micro-batch draws from an RNG derived from (seed, step, micro-batch),
//! so a resumed run sees exactly the batches an uninterrupted run would.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use odin_data::Record;
use odin_text::{check_tokenizer, record_ids, special, Tokenizer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Result, TrainError};

/// All training examples, tokenised once, grouped by task and sorted by difficulty.
pub struct TokenData {
    tokens: Vec<u16>,
    /// (start, answer_start, end) into `tokens`, per example.
    spans: Vec<(usize, usize, usize)>,
    /// Per task: example indices sorted by difficulty, and the difficulty of each.
    by_task: BTreeMap<String, (Vec<usize>, Vec<u8>)>,
    /// Records skipped because they do not fit in one row.
    pub too_long: usize,
    /// Highest difficulty level seen.
    pub levels: u8,
}

impl TokenData {
    /// Tokenise `records`; those longer than `seq_len + 1` tokens are skipped and counted.
    pub fn new(tk: &Tokenizer, records: &[Record], seq_len: usize) -> Result<Self> {
        check_tokenizer(tk)?;
        if tk.get_vocab_size(true) > usize::from(u16::MAX) + 1 {
            return Err(TrainError::Data("tokenizer vocab exceeds 65536; the trainer stores ids as u16".into()));
        }
        let err =
            |e: Box<dyn std::error::Error + Send + Sync>| TrainError::Data(format!("cannot tokenize the data: {e}"));
        let mut tokens = Vec::new();
        let mut spans = Vec::new();
        let mut groups: BTreeMap<String, Vec<(u8, usize)>> = BTreeMap::new();
        let mut too_long = 0;
        let mut levels = 1;
        // In chunks: a full `Encoding` carries strings and offsets per token, which for a
        // million records would take many gigabytes; only the ids are kept.
        for chunk in records.chunks(8192) {
            let prompts = tk.encode_batch(chunk.iter().map(|r| r.prompt.as_str()).collect(), false).map_err(err)?;
            let comps = tk.encode_batch(chunk.iter().map(|r| r.completion.as_str()).collect(), false).map_err(err)?;
            for ((r, p), c) in chunk.iter().zip(&prompts).zip(&comps) {
                let (ids, answer) = record_ids(p.get_ids(), c.get_ids());
                if ids.len() > seq_len + 1 {
                    too_long += 1;
                    continue;
                }
                let start = tokens.len();
                tokens.extend(ids.iter().map(|&t| t as u16));
                let answer_start = start + answer;
                groups.entry(r.task.clone()).or_default().push((r.difficulty, spans.len()));
                spans.push((start, answer_start, tokens.len()));
                levels = levels.max(r.difficulty);
            }
        }
        let by_task = groups
            .into_iter()
            .map(|(t, mut v)| {
                v.sort();
                let (d, i): (Vec<u8>, Vec<usize>) = v.into_iter().unzip();
                (t, (i, d))
            })
            .collect();
        Ok(Self { tokens, spans, by_task, too_long, levels })
    }

    /// Number of usable examples.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether there is nothing to train on.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Tasks present, with their example counts.
    pub fn tasks(&self) -> BTreeMap<String, usize> {
        self.by_task.iter().map(|(t, (i, _))| (t.clone(), i.len())).collect()
    }

    /// One micro-batch: `rows` rows of `seq_len` inputs, targets and a loss mask,
    /// drawn with `rng` from tasks by `weights` (all tasks by size when empty),
    /// at difficulty `max_level` or below.
    pub fn batch(
        &self,
        rng: &mut ChaCha8Rng,
        rows: usize,
        seq_len: usize,
        weights: &BTreeMap<String, f64>,
        max_level: u8,
    ) -> Result<Batch> {
        // Eligible prefix of each task (sorted by difficulty) and its sampling weight.
        let mut pools: Vec<(&[usize], f64)> = Vec::new();
        for (task, (idx, diff)) in &self.by_task {
            let open = diff.partition_point(|&d| d <= max_level);
            let w = if weights.is_empty() { idx.len() as f64 } else { weights.get(task).copied().unwrap_or(0.0) };
            if open > 0 && w > 0.0 {
                pools.push((&idx[..open], w));
            }
        }
        let total: f64 = pools.iter().map(|p| p.1).sum();
        if pools.is_empty() || total <= 0.0 {
            return Err(TrainError::Data(
                "no training records are eligible: check data.weights against the dataset's tasks".into(),
            ));
        }
        let mut inputs = vec![special::PAD; rows * seq_len];
        let mut targets = vec![special::PAD; rows * seq_len];
        let mut mask = vec![0f32; rows * seq_len];
        let mut real_tokens = 0;
        for row in 0..rows {
            let mut pos = 0; // tokens of the row's seq_len + 1 window filled so far
            loop {
                let mut u = rng.random_range(0.0..total);
                let mut pool = pools[pools.len() - 1].0;
                for (p, w) in &pools {
                    if u < *w {
                        pool = p;
                        break;
                    }
                    u -= w;
                }
                let (s, a, e) = self.spans[pool[rng.random_range(0..pool.len())]];
                if pos + (e - s) > seq_len + 1 {
                    break;
                }
                // Token k of the window is input k (k < seq_len) and target k - 1 (k > 0).
                for (j, k) in (s..e).zip(pos..) {
                    let t = u32::from(self.tokens[j]);
                    if k < seq_len {
                        inputs[row * seq_len + k] = t;
                    }
                    if k > 0 {
                        targets[row * seq_len + k - 1] = t;
                        if j >= a {
                            mask[row * seq_len + k - 1] = 1.0;
                        }
                    }
                }
                pos += e - s;
                real_tokens += e - s;
                if pos >= seq_len {
                    break;
                }
            }
        }
        Ok(Batch { rows, seq_len, inputs, targets, mask, real_tokens })
    }
}

/// One packed micro-batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Rows.
    pub rows: usize,
    /// Tokens per row.
    pub seq_len: usize,
    /// Input ids, row-major.
    pub inputs: Vec<u32>,
    /// Next-token targets, row-major.
    pub targets: Vec<u32>,
    /// 1 where the target is part of an answer.
    pub mask: Vec<f32>,
    /// Non-padding tokens in the batch.
    pub real_tokens: usize,
}

impl Batch {
    /// Inputs [B, T], targets [B, T] and mask [B, T] as tensors.
    pub fn tensors(&self, device: &Device) -> Result<(Tensor, Tensor, Tensor)> {
        let shape = (self.rows, self.seq_len);
        Ok((
            Tensor::from_slice(&self.inputs, shape, device)?,
            Tensor::from_slice(&self.targets, shape, device)?,
            Tensor::from_slice(&self.mask, shape, device)?,
        ))
    }

    /// Answer tokens in the loss.
    pub fn loss_tokens(&self) -> usize {
        self.mask.iter().filter(|&&m| m > 0.0).count()
    }
}

/// The RNG for micro-batch `micro` of optimizer step `step`.
pub fn batch_rng(seed: u64, step: u64, micro: usize) -> ChaCha8Rng {
    let mut h = blake3::Hasher::new();
    h.update(b"odin-train-batch");
    h.update(&seed.to_le_bytes());
    h.update(&step.to_le_bytes());
    h.update(&(micro as u64).to_le_bytes());
    ChaCha8Rng::from_seed(*h.finalize().as_bytes())
}
