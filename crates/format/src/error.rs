//! The format crate's error type.

use std::path::PathBuf;

/// What can be wrong with a model directory's files.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// A file could not be read.
    #[error("cannot access {path}: {err}")]
    Io {
        /// The file that failed.
        path: PathBuf,
        /// The underlying I/O error.
        err: std::io::Error,
    },

    /// `config.json` is not valid JSON or does not describe a known architecture.
    #[error("invalid model config {path}: {reason}")]
    BadConfigFile {
        /// The config file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },

    /// The config parsed but its dimensions are inconsistent.
    #[error("invalid model config: {0}")]
    BadConfig(String),
}

/// Result alias for the format crate.
pub type Result<T> = std::result::Result<T, FormatError>;
