//! What can go wrong when training together.

use thiserror::Error;

/// Errors of a training member.
#[derive(Debug, Error)]
pub enum CollabError {
    /// The run config is wrong.
    #[error("run config: {0}")]
    Config(String),
    /// The local trainer failed.
    #[error(transparent)]
    Train(#[from] odin_train::TrainError),
    /// The network failed.
    #[error(transparent)]
    Net(#[from] odin_net::NetError),
    /// A tensor operation failed.
    #[error("tensor: {0}")]
    Tensor(#[from] candle_core::Error),
    /// The run cannot go on (no state to start from, the node was cut off for too long).
    #[error("{0}")]
    Run(String),
    /// A file could not be read or written.
    #[error("{path}: {err}")]
    Io {
        /// The file.
        path: String,
        /// What happened.
        err: std::io::Error,
    },
}

/// Result with [`CollabError`].
pub type Result<T> = std::result::Result<T, CollabError>;
