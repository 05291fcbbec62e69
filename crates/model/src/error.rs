//! The model crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong while building, loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A tensor operation failed inside candle.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),

    /// A file could not be read or written.
    #[error("cannot access {path}: {err}")]
    Io {
        /// The file that failed.
        path: PathBuf,
        /// The underlying I/O error.
        err: std::io::Error,
    },

    /// `config.json` is missing, unreadable or inconsistent.
    #[error(transparent)]
    Format(#[from] odin_format::FormatError),

    /// A tensor the architecture needs is absent from the weights.
    #[error(
        "tensor `{0}` is missing from the weights; the file does not match the config's architecture or layer count"
    )]
    MissingTensor(String),

    /// A tensor has a shape other than the config implies.
    #[error("tensor `{name}` has shape {found:?} but the config implies {expected:?}")]
    ShapeMismatch {
        /// Tensor name.
        name: String,
        /// Shape in the file.
        found: Vec<usize>,
        /// Shape the config requires.
        expected: Vec<usize>,
    },

    /// A tensor holds NaN or infinity.
    #[error("tensor `{0}` contains NaN or infinite values; the checkpoint is corrupt")]
    NonFinite(String),

    /// The weights file holds tensors the architecture does not know.
    #[error("unexpected tensor `{0}` in the weights; the file does not match the config")]
    UnexpectedTensor(String),

    /// A safetensors file could not be parsed.
    #[error("cannot read safetensors {path}: {reason}")]
    BadSafetensors {
        /// The weights file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },

    /// A block range does not fit the model.
    #[error("block range {start}..{end} is invalid for a model with {layers} blocks; use a..b with a < b <= {layers}")]
    BadRange {
        /// First block.
        start: usize,
        /// One past the last block.
        end: usize,
        /// Number of blocks in the model.
        layers: usize,
    },

    /// An input tensor has the wrong rank, shape or dtype for this call.
    #[error("bad input: {0}")]
    BadInput(String),

    /// A state object does not belong to this shard or architecture.
    #[error("state mismatch: {0}")]
    StateMismatch(String),

    /// Backward was asked of a shard built from frozen weights.
    #[error("parameter `{0}` has no gradient; build the shard from trainable weights (VarStore) to run backward")]
    NotTrainable(String),
}

/// Result alias for the model crate.
pub type Result<T> = std::result::Result<T, ModelError>;
