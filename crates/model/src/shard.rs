//! Architecture-independent shards: a contiguous block range of a model, the
//! unit a node serves, with forward, recurrent step and the backward relay.

use std::ops::Range;

use candle_core::{Tensor, Var};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::llama::{KvCache, LlamaShard};
use crate::rwkv6::{Rwkv6Shard, Rwkv6State};
use crate::weights::Weights;

/// Blocks [a, b) of a model; [0, L) is the whole model.
pub enum Shard {
    /// An RWKV-6 shard.
    Rwkv6(Rwkv6Shard),
    /// A Llama-style shard.
    Llama(LlamaShard),
}

/// Per-session state of a shard: RWKV state or transformer KV cache.
#[derive(Debug, Clone)]
pub enum ShardState {
    /// RWKV-6 recurrent state (fixed size).
    Rwkv6(Rwkv6State),
    /// Llama KV cache (grows with the context).
    Llama(KvCache),
}

/// What the backward relay returns to the previous shard and to the optimizer.
#[derive(Debug)]
pub struct ShardGrads {
    /// Gradient of the shard's input hidden state; `None` for the first shard (token ids).
    pub input: Option<Tensor>,
    /// Gradient of each parameter of the shard, by official name.
    pub params: Vec<(String, Tensor)>,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let arch = match self {
            Shard::Rwkv6(_) => "rwkv6",
            Shard::Llama(_) => "llama",
        };
        write!(f, "Shard({arch}, blocks {:?})", self.range())
    }
}

impl Shard {
    /// Build the shard for `range` from `weights`.
    pub fn new(cfg: &ModelConfig, weights: &Weights, range: Range<usize>) -> Result<Self> {
        Ok(match cfg {
            ModelConfig::Rwkv6(c) => Shard::Rwkv6(Rwkv6Shard::new(c, weights, range)?),
            ModelConfig::Llama(c) => Shard::Llama(LlamaShard::new(c, weights, range)?),
        })
    }

    /// The whole model as one shard.
    pub fn full(cfg: &ModelConfig, weights: &Weights) -> Result<Self> {
        Self::new(cfg, weights, 0..cfg.num_layers())
    }

    /// Block range held.
    pub fn range(&self) -> Range<usize> {
        match self {
            Shard::Rwkv6(s) => s.range(),
            Shard::Llama(s) => s.range(),
        }
    }

    /// Parameters by official name.
    pub fn params(&self) -> &[(String, Tensor)] {
        match self {
            Shard::Rwkv6(s) => s.params(),
            Shard::Llama(s) => s.params(),
        }
    }

    /// Whether the input is token ids.
    pub fn has_embedding(&self) -> bool {
        match self {
            Shard::Rwkv6(s) => s.has_embedding(),
            Shard::Llama(s) => s.has_embedding(),
        }
    }

    /// Whether the output is logits.
    pub fn has_head(&self) -> bool {
        match self {
            Shard::Rwkv6(s) => s.has_head(),
            Shard::Llama(s) => s.has_head(),
        }
    }

    /// A fresh per-session state for `batch` sequences.
    pub fn new_state(&self, batch: usize) -> Result<ShardState> {
        Ok(match self {
            Shard::Rwkv6(s) => ShardState::Rwkv6(s.new_state(batch)?),
            Shard::Llama(s) => ShardState::Llama(s.new_cache(batch)),
        })
    }

    /// Parallel form over a sequence: ids [B, T] or hidden [B, T, C] in,
    /// logits [B, T, V] or hidden out. A given state is continued and advanced.
    pub fn forward(&self, x: &Tensor, state: Option<&mut ShardState>) -> Result<Tensor> {
        match (self, state) {
            (Shard::Rwkv6(s), None) => s.forward(x, None),
            (Shard::Rwkv6(s), Some(ShardState::Rwkv6(st))) => s.forward(x, Some(st)),
            (Shard::Llama(s), None) => s.forward(x, None),
            (Shard::Llama(s), Some(ShardState::Llama(c))) => s.forward(x, Some(c)),
            _ => Err(ModelError::StateMismatch("state belongs to another architecture".into())),
        }
    }

    /// Recurrent form: ids [B] or hidden [B, C] in, logits [B, V] or hidden [B, C] out.
    pub fn step(&self, x: &Tensor, state: &mut ShardState) -> Result<Tensor> {
        match (self, state) {
            (Shard::Rwkv6(s), ShardState::Rwkv6(st)) => s.step(x, st),
            (Shard::Llama(s), ShardState::Llama(c)) => s.step(x, c),
            _ => Err(ModelError::StateMismatch("state belongs to another architecture".into())),
        }
    }

    /// Backward relay: given the shard's `input` and the gradient of its
    /// output, return the gradient of its input and of its own parameters.
    /// The shard must be built from trainable weights ([`crate::VarStore`]).
    pub fn backward(&self, input: &Tensor, grad_output: &Tensor) -> Result<ShardGrads> {
        self.backward_with(input, |out| {
            if out.dims() != grad_output.dims() {
                return Err(ModelError::BadInput(format!(
                    "gradient has shape {:?} but the shard's output has {:?}",
                    grad_output.dims(),
                    out.dims()
                )));
            }
            Ok((out * grad_output)?.sum_all()?)
        })
    }

    /// Backward from a scalar objective of the shard's output (for the last
    /// shard: the loss computed from its logits).
    pub fn backward_with(
        &self,
        input: &Tensor,
        objective: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<ShardGrads> {
        let var = if self.has_embedding() { None } else { Some(Var::from_tensor(&input.detach())?) };
        let x = var.as_ref().map_or_else(|| input.clone(), |v| v.as_tensor().clone());
        let out = self.forward(&x, None)?;
        let grads = objective(&out)?.backward()?;
        let input = match &var {
            Some(v) => Some(match grads.get(v.as_tensor()) {
                Some(g) => g.clone(),
                None => v.as_tensor().zeros_like()?,
            }),
            None => None,
        };
        let mut params = Vec::with_capacity(self.params().len());
        for (name, t) in self.params() {
            if !t.is_variable() {
                return Err(ModelError::NotTrainable(name.clone()));
            }
            let g = match grads.get(t) {
                Some(g) => g.clone(),
                None => t.zeros_like()?,
            };
            params.push((name.clone(), g));
        }
        Ok(ShardGrads { input, params })
    }
}
