//! ODIN's text layer: what turns a prompt into token ids and token ids back
//! into text, shared by the trainer, the engine's commands, the node, the HTTP
//! API and the browser.
//!
//! A record reads `<|bos|> <|prompt|> PROMPT <|answer|> COMPLETION <|eos|>`;
//! [`prompt_ids`] builds everything up to the answer, which is what a model
//! continues. The tokenizer is Hugging Face `tokenizers` (byte-level BPE with
//! one token per digit, trained by `odin tokenizer train`), loaded and checked
//! here for the special ids below.

#![warn(missing_docs)]

mod error;
mod stream;
mod tokenizer;

pub use error::{Result, TextError};
pub use stream::TextStream;
pub use tokenizer::{
    check_tokenizer, decode, load_tokenizer, prompt_ids, record_ids, special, tokenizer_from_bytes,
    tokenizer_from_file, SPECIAL_TOKENS,
};
pub use tokenizers::Tokenizer;
