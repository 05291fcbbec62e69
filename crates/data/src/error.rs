//! The data crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong while building, reading or checking a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file could not be read or written.
    #[error("cannot access {path}: {err}")]
    Io {
        /// The file that failed.
        path: PathBuf,
        /// The underlying error.
        err: std::io::Error,
    },
    /// A JSON file or JSONL line could not be parsed.
    #[error("{path}:{line}: invalid JSON: {reason}")]
    Json {
        /// The file.
        path: PathBuf,
        /// 1-based line (0 for whole-file JSON).
        line: usize,
        /// What the parser said.
        reason: String,
    },
    /// A shard does not match the blake3 recorded in the manifest.
    #[error("shard {0} does not match the hash in manifest.json; the dataset was modified or is corrupt, rebuild it")]
    ShardHash(String),
    /// The build options are inconsistent.
    #[error("invalid build options: {0}")]
    BadOptions(String),
    /// A collapse guard tripped.
    #[error("collapse guard: {0}")]
    Collapse(String),
    /// Train and test share records.
    #[error("split leak: {0} test records match training records")]
    Overlap(usize),
    /// The Python sandbox failed as a whole (not one function).
    #[error("python sandbox: {0}")]
    Sandbox(String),
    /// The tokenizer library failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

/// Result alias for the data crate.
pub type Result<T> = std::result::Result<T, DataError>;

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |err| DataError::Io { path: path.to_path_buf(), err }
}
