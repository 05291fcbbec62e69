//! Errors of the trainer and evaluator.

use std::path::PathBuf;

/// Everything that can go wrong while training or evaluating.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A file could not be read or written.
    #[error("{path}: {err}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        err: std::io::Error,
    },
    /// The training config is malformed or inconsistent.
    #[error("bad training config: {0}")]
    Config(String),
    /// A checkpoint is missing, corrupt, or belongs to another run.
    #[error("bad checkpoint: {0}")]
    Checkpoint(String),
    /// The dataset or tokenizer cannot be used.
    #[error("data: {0}")]
    Data(String),
    /// The loss or a gradient stopped being finite.
    #[error("training diverged at step {step}: {what}; lower the learning rate or tighten clipping")]
    Diverged {
        /// Step at which it happened.
        step: u64,
        /// What was not finite.
        what: String,
    },
    /// An error from the model layer.
    #[error(transparent)]
    Model(#[from] odin_model::ModelError),
    /// A model config or directory that cannot be read.
    #[error(transparent)]
    Format(#[from] odin_model::FormatError),
    /// An error from candle.
    #[error("tensor: {0}")]
    Candle(#[from] candle_core::Error),
    /// An error from the data layer.
    #[error(transparent)]
    DataLayer(#[from] odin_data::DataError),
    /// A tokenizer that cannot be loaded, or text it cannot encode or decode.
    #[error(transparent)]
    Text(#[from] odin_text::TextError),
    /// An error from the int8 engine (evaluating or generating on it).
    #[error("int8 engine: {0}")]
    Engine(#[from] odin_engine::EngineError),
}

/// Result with [`TrainError`].
pub type Result<T> = std::result::Result<T, TrainError>;

/// Map an io error on `path`.
pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |err| TrainError::Io { path: path.to_path_buf(), err }
}
