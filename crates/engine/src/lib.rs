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
mod digest;
pub mod error;
pub mod exec;
pub mod export;
pub mod input;
pub mod kernels;
pub mod llama;
mod load;
pub mod math;
pub mod model;
pub mod pages;
pub mod quant;
pub mod sample;
pub mod shard;
pub mod synthetic;
#[cfg(feature = "threads")]
pub mod team;
pub mod weights;

pub use digest::{hash_f32s, hash_logits, logits_digest};
pub use error::{EngineError, Result};
pub use exec::{Exec, Options};
pub use input::{Input, Logits};
pub use kernels::Kernel;
pub use llama::{KvLayer, KvState, LlamaShard};
pub use model::{Decoder, Model, ModelState};
pub use odin_format::Sampling;
pub use sample::{generate, greedy_many, Sampler};
pub use shard::{state_rows_per_block, LayerState, Shard, State};
pub use weights::ENGINE_FILE;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn buffered_hashing_is_one_update_per_value(values in proptest::collection::vec(any::<f32>(), 0..9000)) {
            let mut one = blake3::Hasher::new();
            for v in &values {
                one.update(&v.to_le_bytes());
            }
            prop_assert_eq!(logits_digest(&values), one.finalize());
        }
    }
}
