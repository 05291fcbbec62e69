//! The f32 model layer (recurrent form) as a [`Decoder`]: the numerical
//! reference beside the int8 engine. Generation, evaluation and benchmarks run
//! the engine's one sampler and decode loop on it.

use candle_core::{Device, IndexOp, Tensor};
use odin_engine::bench::Speed;
use odin_engine::Decoder;
use odin_model::{Shard, ShardState};
use odin_text::Tokenizer;

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
    let tokenizer = odin_text::load_tokenizer(dir)?;
    let m = odin_model::ModelDir::load(dir, &Device::Cpu)?;
    let shard = Shard::full(&m.config, &m.weights)?;
    Ok(LoadedModel { dir: m, tokenizer, shard })
}

impl LoadedModel {
    /// The model as a [`Decoder`] for the engine's decode loop.
    pub fn reference(&self) -> Reference<'_> {
        Reference::new(&self.shard, self.dir.config.vocab_size())
    }
}

/// A whole-model f32 shard decoding one sequence on the CPU.
pub struct Reference<'a> {
    shard: &'a Shard,
    vocab: usize,
}

impl<'a> Reference<'a> {
    /// `shard` must hold every block, embedding to head, of a model with `vocab` tokens.
    pub fn new(shard: &'a Shard, vocab: usize) -> Self {
        Self { shard, vocab }
    }
}

/// Decode speed of the f32 model layer on the model directory `dir` (no tokenizer needed),
/// measured as the engine's benchmark measures the int8 engine.
pub fn measure(dir: &std::path::Path, prompt_len: usize, decode_len: usize, runs: usize) -> Result<Speed> {
    let m = odin_model::ModelDir::load(dir, &Device::Cpu)?;
    let shard = Shard::full(&m.config, &m.weights)?;
    odin_engine::bench::measure(&Reference::new(&shard, m.config.vocab_size()), prompt_len, decode_len, runs)
}

impl Decoder for Reference<'_> {
    type State = ShardState;
    type Error = TrainError;

    fn start(&self) -> Result<ShardState> {
        Ok(self.shard.new_state(1)?)
    }

    /// A prompt runs in the parallel form, one token at a time in the recurrent form (as a
    /// served model decodes).
    fn next_logits(&self, tokens: &[u32], state: &mut ShardState) -> Result<Vec<f32>> {
        match tokens {
            [] => Err(TrainError::Data("next_logits needs at least one token".into())),
            [tok] => Ok(self.shard.step(&Tensor::new(&[*tok], &Device::Cpu)?, state)?.squeeze(0)?.to_vec1::<f32>()?),
            _ => {
                let x = Tensor::from_vec(tokens.to_vec(), (1, tokens.len()), &Device::Cpu)?;
                let logits = self.shard.forward(&x, Some(state))?;
                Ok(logits.i((0, tokens.len() - 1, ..))?.to_vec1::<f32>()?)
            }
        }
    }

    fn vocab_size(&self) -> usize {
        self.vocab
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use odin_engine::{Sampler, Sampling};

    /// The bundled model, whole, in f32.
    fn bundled() -> LoadedModel {
        load_model(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/odin-tiny")).unwrap()
    }

    #[test]
    fn one_prefill_equals_the_same_tokens_fed_one_by_one() {
        let m = bundled();
        let r = m.reference();
        let mut a = r.start().unwrap();
        let whole = r.next_logits(&[5, 7, 9], &mut a).unwrap();
        let mut b = r.start().unwrap();
        r.next_logits(&[5], &mut b).unwrap();
        r.next_logits(&[7], &mut b).unwrap();
        let stepped = r.next_logits(&[9], &mut b).unwrap();
        assert_eq!(whole.len(), r.vocab_size());
        for (x, y) in whole.iter().zip(&stepped) {
            assert!((x - y).abs() < 1e-3 * x.abs().max(1.0), "{x} vs {y}");
        }
        assert!(r.next_logits(&[], &mut b).is_err());
    }

    #[test]
    fn the_engine_decode_loop_runs_on_the_reference() {
        let m = bundled();
        let r = m.reference();
        let prompt = odin_text::prompt_ids(&m.tokenizer, "work: 12+34=").unwrap();
        let eos = Some(odin_text::special::EOS);
        let run = |s: Sampling| odin_engine::generate(&r, &prompt, 12, &mut Sampler::new(s), eos, |_| true).unwrap().0;
        // The batched greedy decoder evaluation uses is written apart from the decode loop.
        let batched = crate::eval::greedy_batch(&m.shard, std::slice::from_ref(&prompt), 12, &Device::Cpu).unwrap();
        assert_eq!(run(Sampling::GREEDY), batched[0]);
        assert!(!batched[0].is_empty());
        let hot = Sampling { temperature: 1.0, seed: 4, ..Sampling::GREEDY };
        assert_eq!(run(hot), run(hot), "a seed fixes the sampled tokens");
    }
}
