//! ODIN's int8 inference engine.
//!
//! Decoding one token is a chain of memory-bound matrix-vector products; at
//! 10–100M parameters a framework's per-op overhead dominates, and the same
//! code must build for wasm32. So this engine is written by hand, and it is
//! **deterministic**: int8 weights in blocks of 32 ([`quant`]), activations
//! quantized per block, integer dot products, a fixed reduction order, no
//! fused multiply-add, and `libm` for every transcendental function. The
//! same input gives the same bits on every CPU, every kernel ([`Kernel`]),
//! every thread count and in the browser, so verifying a node's work is a
//! hash comparison.
//!
//! A prompt's walk: [`Shard::load`] reads a model directory (quantizing, or
//! taking the saved engine file), [`Shard::forward`] runs token ids or
//! hidden states through its blocks, and [`sample::generate`] decodes.
//! [`LlamaShard`] is the same for the Llama-style model, and [`Model`] loads
//! a whole model of either architecture for the commands.

#![warn(missing_docs)]

pub mod bench;
pub mod error;
pub mod export;
pub mod kernels;
pub mod llama;
pub mod math;
pub mod model;
pub mod quant;
pub mod sample;
pub mod shard;
pub mod synthetic;
#[cfg(feature = "threads")]
pub mod team;
pub mod weights;

pub use error::{EngineError, Result};
pub use kernels::Kernel;
pub use llama::{KvLayer, KvState, LlamaShard};
pub use model::{Decoder, Model, ModelState};
pub use sample::{generate, greedy_many, Sampler, SamplerConfig};
pub use shard::{state_rows_per_block, Input, LayerState, Logits, Options, Shard, State};
pub use weights::ENGINE_FILE;

/// blake3 of logits as little-endian f32 bytes: the value verifiers compare.
pub fn logits_digest(logits: &[f32]) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    for v in logits {
        h.update(&v.to_le_bytes());
    }
    h.finalize()
}

/// [`logits_digest`] in hex.
pub fn hash_logits(logits: &[f32]) -> String {
    logits_digest(logits).to_hex().to_string()
}
