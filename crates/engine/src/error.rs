//! The engine's error type.

use std::path::PathBuf;

/// Everything that can go wrong while loading or running the int8 engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model directory's config is unreadable or inconsistent.
    #[error(transparent)]
    Format(#[from] odin_format::FormatError),

    /// A file could not be read or written.
    #[error("cannot access {path}: {err}")]
    Io {
        /// The file that failed.
        path: PathBuf,
        /// The underlying I/O error.
        err: std::io::Error,
    },

    /// A weights or engine file is malformed or does not match the config.
    #[error("bad weights: {0}")]
    BadWeights(String),

    /// A model or an operation this part of the engine does not support.
    #[error("unsupported: {0}")]
    Unsupported(String),

    /// A call got input of the wrong shape, range or kind.
    #[error("bad input: {0}")]
    BadInput(String),

    /// A session state does not belong to this shard.
    #[error("state mismatch: {0}")]
    StateMismatch(String),
}

/// Result alias for the engine crate.
pub type Result<T> = std::result::Result<T, EngineError>;
