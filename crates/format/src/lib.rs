//! The model directory format shared by every layer: `config.json` (parsed
//! and validated), the tensor table it implies, and the content id that
//! names a model on the network.
//!
//! It also holds the value types every layer shares: the sampling settings.
//!
//! It holds no tensors, so the candle-based model layer and the hand-written
//! engine (which also builds for wasm32) read models the same way.

#![warn(missing_docs)]

pub mod config;
pub mod error;
pub mod id;
pub mod int8;
pub mod sampling;

pub use config::{LlamaConfig, ModelConfig, ParamCounts, Rwkv6Config, TensorPlace, TensorSpec};
pub use error::{FormatError, Result};
pub use id::{model_id, ModelId, CANONICAL_FILES};
pub use sampling::Sampling;
