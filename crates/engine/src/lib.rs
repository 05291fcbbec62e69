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

/// blake3 of logits as little-endian f32 bytes: the value verifiers compare.
pub fn logits_digest(logits: &[f32]) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    hash_f32s(&mut h, logits);
    h.finalize()
}

/// Feeds `values` to `h` as little-endian f32 bytes.
///
/// The same bytes as one `update` per value, so the digest is unchanged, but handed over 16 KiB at a
/// time: blake3 only hashes several chunks in parallel (SIMD) when it gets them in one call, and a
/// call per 4 bytes made odin-100m's 32768 logits cost hundreds of µs on every network step.
pub fn hash_f32s(h: &mut blake3::Hasher, values: &[f32]) {
    let mut buf = [0u8; 16 * 1024];
    for part in values.chunks(buf.len() / 4) {
        for (b, v) in buf.chunks_exact_mut(4).zip(part) {
            b.copy_from_slice(&v.to_le_bytes());
        }
        h.update(&buf[..part.len() * 4]);
    }
}

/// [`logits_digest`] in hex.
pub fn hash_logits(logits: &[f32]) -> String {
    logits_digest(logits).to_hex().to_string()
}

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
