//! The text layer's error type.

use std::path::PathBuf;

/// What went wrong turning text into ids or back.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// The model directory has no `tokenizer.json`.
    #[error("{} has no tokenizer.json; copy the tokenizer the model was trained with into it", .0.display())]
    Missing(PathBuf),
    /// The tokenizer file could not be read.
    #[error("cannot read {}: {err}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        err: std::io::Error,
    },
    /// The bytes are not a Hugging Face `tokenizer.json`.
    #[error("not a tokenizer.json: {0}")]
    Parse(String),
    /// A special token is missing or sits at another id.
    #[error("tokenizer has no {token} at id {id}; make it with `odin tokenizer train`")]
    Special {
        /// The token's text.
        token: &'static str,
        /// The id the trainer and the engine expect it at.
        id: u32,
    },
    /// The tokenizer could not encode a prompt.
    #[error("cannot tokenize a prompt: {0}")]
    Encode(String),
    /// The tokenizer could not decode token ids.
    #[error("cannot decode: {0}")]
    Decode(String),
}

/// Result alias for the text layer.
pub type Result<T> = std::result::Result<T, TextError>;
