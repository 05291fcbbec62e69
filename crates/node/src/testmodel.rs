//! The unit tests' model: a tiny RWKV-6 with synthetic weights, built in memory in
//! milliseconds, and what it generates on one machine.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::OnceLock;

use odin_engine::synthetic::{golden_config, weights};
use odin_engine::weights::Source;
use odin_engine::{Options, Sampler, Shard};
use odin_format::{ModelConfig, ModelId, Rwkv6Config, Sampling};

/// Blocks of the test model.
pub(crate) const LAYERS: usize = 4;
/// The test model's id.
pub(crate) const MODEL: ModelId = ModelId([7; 32]);

/// The test model: the golden RWKV-6 shape, with [`LAYERS`] blocks.
fn model_config() -> Rwkv6Config {
    Rwkv6Config { num_layers: LAYERS, ..golden_config() }
}

/// Blocks `range` of the test model.
pub(crate) fn shard(range: Range<usize>) -> Shard {
    static WEIGHTS: OnceLock<HashMap<String, Vec<f32>>> = OnceLock::new();
    let w = WEIGHTS.get_or_init(|| weights(&model_config(), 24));
    let cfg = ModelConfig::Rwkv6(model_config());
    match Shard::build(&cfg, MODEL, range, &Source::Memory(w), Options::default()) {
        Ok(s) => s,
        Err(e) => panic!("the test model does not build: {e}"),
    }
}

/// What the whole model generates on one machine from `prompt`: `max_new` tokens.
pub(crate) fn local_tokens(prompt: &[u32], max_new: usize, sampling: Sampling) -> Vec<u32> {
    let shard = shard(0..LAYERS);
    match odin_engine::generate(&shard, prompt, max_new, &mut Sampler::new(sampling), None, |_| true) {
        Ok((tokens, _)) => tokens,
        Err(e) => panic!("the test model cannot run: {e}"),
    }
}
