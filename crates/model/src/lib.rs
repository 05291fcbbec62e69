//! ODIN's model layer: RWKV-6 and a Llama-style transformer in candle, each
//! with a parallel training form (autodiff) and a recurrent step form, cut
//! into shards over block ranges, saved as Hugging Face style directories.
//!
//! A prompt's walk: [`ModelDir::load`] reads a directory, [`Shard::full`]
//! (or [`Shard::new`] for a block range) builds the model, and
//! [`Shard::forward`] / [`Shard::step`] produce logits.

#![warn(missing_docs)]

pub mod error;
pub mod init;
pub mod llama;
pub mod ops;
pub mod rwkv6;
pub mod shard;
pub mod weights;
pub mod wkv;

pub use error::{ModelError, Result};
pub use init::init_weights;
/// The model directory format (config, tensor table, content id) lives in `odin-format`.
pub use odin_format::config;
pub use odin_format::{model_id, FormatError, ModelId, CANONICAL_FILES};
pub use odin_format::{LlamaConfig, ModelConfig, ParamCounts, Rwkv6Config, TensorPlace, TensorSpec};
pub use shard::{Shard, ShardGrads, ShardState};
pub use weights::{ModelDir, VarStore, Weights};
