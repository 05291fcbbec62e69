//! A whole model of either architecture, as the commands load it, and the
//! [`Decoder`] interface that generation, evaluation and benchmarks share.

use std::path::{Path, PathBuf};

use odin_format::{ModelConfig, ModelId};

use crate::error::Result;
use crate::exec::{Exec, Options};
use crate::input::{Input, Logits};
use crate::llama::{KvState, LlamaShard};
use crate::shard::{Shard, State};

/// Something that turns tokens into next-token logits through a session state:
/// a whole-model shard of either architecture.
pub trait Decoder: Sync {
    /// A session's state (RWKV's recurrent state, Llama's KV cache).
    type State: Send;
    /// What a step can fail with ([`crate::EngineError`] here; the trainer's f32 reference has its own).
    type Error: Send;
    /// A fresh session.
    fn start(&self) -> std::result::Result<Self::State, Self::Error>;
    /// Feed `tokens` (a prompt, or one sampled token) and return the last one's logits.
    fn next_logits(&self, tokens: &[u32], state: &mut Self::State) -> std::result::Result<Vec<f32>, Self::Error>;
    /// Vocabulary size.
    fn vocab_size(&self) -> usize;
}

impl Decoder for Shard {
    type State = State;
    type Error = crate::EngineError;
    fn start(&self) -> Result<State> {
        Ok(self.new_state())
    }
    fn next_logits(&self, tokens: &[u32], state: &mut State) -> Result<Vec<f32>> {
        self.forward(Input::Tokens(tokens), state, Logits::Last)
    }
    fn vocab_size(&self) -> usize {
        self.config().vocab_size
    }
}

impl Decoder for LlamaShard {
    type State = KvState;
    type Error = crate::EngineError;
    fn start(&self) -> Result<KvState> {
        Ok(self.new_state())
    }
    fn next_logits(&self, tokens: &[u32], state: &mut KvState) -> Result<Vec<f32>> {
        self.forward(Input::Tokens(tokens), state, Logits::Last)
    }
    fn vocab_size(&self) -> usize {
        self.config().vocab_size
    }
}

/// A whole model on the int8 engine: RWKV-6 or Llama-style, by its config.
pub enum Model {
    /// An RWKV-6 model (what the network serves).
    Rwkv6(Shard),
    /// A Llama-style model.
    Llama(LlamaShard),
}

/// A session on a [`Model`].
#[derive(Debug, Clone, PartialEq)]
pub enum ModelState {
    /// RWKV-6 recurrent state.
    Rwkv6(State),
    /// Llama KV cache.
    Llama(KvState),
}

impl Model {
    /// Load every block of the model directory `dir`, from its engine file when current.
    pub fn load(dir: &Path, opts: Options) -> Result<Self> {
        Ok(match ModelConfig::from_file(&dir.join("config.json"))? {
            ModelConfig::Llama(_) => Model::Llama(LlamaShard::load(dir, None, opts)?),
            _ => Model::Rwkv6(Shard::load(dir, None, opts)?),
        })
    }

    /// Write the engine file into `dir`.
    pub fn save_engine_file(&self, dir: &Path) -> Result<PathBuf> {
        match self {
            Model::Rwkv6(s) => s.save_engine_file(dir),
            Model::Llama(s) => s.save_engine_file(dir),
        }
    }

    /// The architecture's name in config.json.
    pub fn architecture(&self) -> &'static str {
        match self {
            Model::Rwkv6(_) => "rwkv6",
            Model::Llama(_) => "llama",
        }
    }

    /// The content id of the model.
    pub fn model_id(&self) -> ModelId {
        match self {
            Model::Rwkv6(s) => s.model_id(),
            Model::Llama(s) => s.model_id(),
        }
    }

    /// The kernel and threads in use.
    pub fn exec(&self) -> &Exec {
        match self {
            Model::Rwkv6(s) => s.exec(),
            Model::Llama(s) => s.exec(),
        }
    }

    /// Bytes of weights one decode step reads.
    pub fn bytes_per_token(&self) -> usize {
        match self {
            Model::Rwkv6(s) => s.bytes_per_token(),
            Model::Llama(s) => s.bytes_per_token(),
        }
    }
}

impl Decoder for Model {
    type State = ModelState;
    type Error = crate::EngineError;
    fn start(&self) -> Result<ModelState> {
        Ok(match self {
            Model::Rwkv6(s) => ModelState::Rwkv6(s.new_state()),
            Model::Llama(s) => ModelState::Llama(s.new_state()),
        })
    }
    fn next_logits(&self, tokens: &[u32], state: &mut ModelState) -> Result<Vec<f32>> {
        match (self, state) {
            (Model::Rwkv6(s), ModelState::Rwkv6(st)) => s.next_logits(tokens, st),
            (Model::Llama(s), ModelState::Llama(st)) => s.next_logits(tokens, st),
            _ => Err(crate::EngineError::StateMismatch(
                "a session of one architecture was given to a model of the other".into(),
            )),
        }
    }
    fn vocab_size(&self) -> usize {
        match self {
            Model::Rwkv6(s) => s.vocab_size(),
            Model::Llama(s) => s.vocab_size(),
        }
    }
}
