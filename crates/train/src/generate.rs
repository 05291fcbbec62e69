//! Text generation through the f32 model layer (recurrent form), streamed.
//! The int8 engine brings its own, bit-exact path; this one is the reference.

use candle_core::{Device, IndexOp, Tensor};
use odin_model::Shard;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokenizers::Tokenizer;

use crate::data::{prompt_ids, special};
use crate::error::{Result, TrainError};

/// A model directory ready for inference: its files, its checked tokenizer and the whole model.
pub struct LoadedModel {
    /// The directory as loaded (config, weights, id).
    pub dir: odin_model::ModelDir,
    /// Its tokenizer, checked for ODIN's special tokens.
    pub tokenizer: Tokenizer,
    /// All its blocks, embedding to head, on the CPU.
    pub shard: Shard,
}

/// Load `dir` (config.json, model.safetensors, tokenizer.json) for generation or evaluation.
pub fn load_model(dir: &std::path::Path) -> Result<LoadedModel> {
    let tokenizer = load_tokenizer(dir)?;
    let m = odin_model::ModelDir::load(dir, &Device::Cpu)?;
    let shard = Shard::full(&m.config, &m.weights)?;
    Ok(LoadedModel { dir: m, tokenizer, shard })
}

/// How the next token is chosen.
#[derive(Debug, Clone, Copy)]
pub struct Sampling {
    /// 0: greedy.
    pub temperature: f64,
    /// Keep only the k most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p (1: all).
    pub top_p: f64,
    /// Seed of the sampler.
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Self { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 }
    }
}

/// Pick a token from `logits` under `s`.
pub fn sample(logits: &[f32], s: &Sampling, rng: &mut ChaCha8Rng) -> u32 {
    let argmax = || {
        logits.iter().enumerate().fold((0usize, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0
            as u32
    };
    if s.temperature <= 0.0 {
        return argmax();
    }
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if s.top_k > 0 {
        idx.truncate(s.top_k);
    }
    let top = f64::from(logits[idx[0]]);
    let mut probs: Vec<f64> = idx.iter().map(|&i| ((f64::from(logits[i]) - top) / s.temperature).exp()).collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if s.top_p < 1.0 {
        let mut acc = 0.0;
        let keep = probs.iter().position(|p| {
            acc += p;
            acc >= s.top_p
        });
        let n = keep.map_or(probs.len(), |k| k + 1);
        probs.truncate(n);
        idx.truncate(n);
        let t: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= t);
    }
    let mut u = rng.random_range(0.0..1.0);
    for (p, &i) in probs.iter().zip(&idx) {
        if u < *p {
            return i as u32;
        }
        u -= p;
    }
    idx[idx.len() - 1] as u32
}

/// Turns generated token ids into text pieces as they arrive. A byte-level
/// token may complete a character only later, so the whole answer is decoded
/// each time and only the new, complete suffix is handed out.
pub struct TextStream<'a> {
    tk: &'a Tokenizer,
    ids: Vec<u32>,
    shown: String,
}

impl<'a> TextStream<'a> {
    /// An empty stream over `tk`.
    pub fn new(tk: &'a Tokenizer) -> Self {
        Self { tk, ids: Vec::new(), shown: String::new() }
    }

    /// Add a token; returns the text it completes, if any.
    pub fn push(&mut self, tok: u32) -> Result<Option<String>> {
        self.ids.push(tok);
        let text = self.decode()?;
        match text.strip_prefix(self.shown.as_str()) {
            Some(new) if !new.is_empty() && !new.ends_with('\u{fffd}') => {
                let new = new.to_string();
                self.shown = text;
                Ok(Some(new))
            }
            _ => Ok(None),
        }
    }

    /// The text not handed out yet, and the whole answer.
    pub fn finish(self) -> Result<(String, String)> {
        let text = self.decode()?;
        let rest = text.strip_prefix(self.shown.as_str()).unwrap_or("").to_string();
        Ok((rest, text))
    }

    /// The ids pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    fn decode(&self) -> Result<String> {
        self.tk.decode(&self.ids, false).map_err(|e| TrainError::Data(format!("cannot decode: {e}")))
    }
}

/// Load and check the tokenizer of the model directory `dir`.
pub fn load_tokenizer(dir: &std::path::Path) -> Result<Tokenizer> {
    let path = dir.join("tokenizer.json");
    if !path.is_file() {
        return Err(TrainError::Data(format!(
            "{} has no tokenizer.json; copy the tokenizer the model was trained with into it",
            dir.display()
        )));
    }
    let tokenizer = odin_data::tokenizer::load(&path)?;
    crate::data::check_tokenizer(&tokenizer)?;
    Ok(tokenizer)
}

/// Continue `prompt` (formatted as a task prompt) for up to `max_new` tokens or until
/// `<|eos|>`, calling `on_text` with each new piece of text. Returns the whole answer.
pub fn generate(
    shard: &Shard,
    tk: &Tokenizer,
    prompt: &str,
    max_new: usize,
    s: &Sampling,
    mut on_text: impl FnMut(&str),
) -> Result<String> {
    let device = Device::Cpu;
    let ids = prompt_ids(tk, prompt)?;
    let mut rng = ChaCha8Rng::seed_from_u64(s.seed);
    let mut state = shard.new_state(1)?;
    let logits = shard.forward(&Tensor::from_vec(ids.clone(), (1, ids.len()), &device)?, Some(&mut state))?;
    let mut last = logits.i((0, ids.len() - 1, ..))?.to_vec1::<f32>()?;
    let mut stream = TextStream::new(tk);
    for _ in 0..max_new {
        let tok = sample(&last, s, &mut rng);
        if tok == special::EOS {
            break;
        }
        if let Some(piece) = stream.push(tok)? {
            on_text(&piece);
        }
        let x = Tensor::new(&[tok], &device)?;
        last = shard.step(&x, &mut state)?.squeeze(0)?.to_vec1::<f32>()?;
    }
    let (rest, text) = stream.finish()?;
    if !rest.is_empty() {
        on_text(&rest);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_argmax_and_sampling_respects_top_k() {
        let logits = [0.1f32, 3.0, 2.9, -1.0];
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        assert_eq!(sample(&logits, &Sampling::default(), &mut rng), 1);
        let s = Sampling { temperature: 1.0, top_k: 2, top_p: 1.0, seed: 1 };
        let mut seen = [0usize; 4];
        for _ in 0..2000 {
            seen[sample(&logits, &s, &mut rng) as usize] += 1;
        }
        assert_eq!(seen[0] + seen[3], 0, "{seen:?}");
        assert!(seen[1] > 800 && seen[2] > 800, "{seen:?}");
        let p = Sampling { temperature: 1.0, top_k: 0, top_p: 0.01, seed: 1 };
        assert!((0..100).all(|_| sample(&logits, &p, &mut rng) == 1));
    }

    #[test]
    fn the_same_seed_samples_the_same_tokens() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let s = Sampling { temperature: 0.8, top_k: 0, top_p: 0.9, seed: 5 };
        let run = || {
            let mut rng = ChaCha8Rng::seed_from_u64(s.seed);
            (0..64).map(|_| sample(&logits, &s, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }
}
