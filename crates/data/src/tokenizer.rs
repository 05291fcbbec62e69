//! BPE tokenizer training with Hugging Face `tokenizers`: every digit is its
//! own token (so numbers are read digit by digit), byte-level so any text
//! round-trips exactly, plus the special tokens the trainer uses.

use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, Tokenizer, TokenizerBuilder};

use crate::error::{DataError, Result};
use crate::record::Record;

pub use odin_text::SPECIAL_TOKENS;

fn tok_err(e: impl std::fmt::Display) -> DataError {
    DataError::Tokenizer(e.to_string())
}

/// Train a BPE tokenizer of `vocab` tokens on the prompts and completions of `records`.
pub fn train(records: &[Record], vocab: usize) -> Result<Tokenizer> {
    if vocab < 300 {
        return Err(DataError::BadOptions(format!(
            "vocab {vocab} is too small: the 256 byte tokens and {} special tokens come first",
            SPECIAL_TOKENS.len()
        )));
    }
    let specials: Vec<AddedToken> = SPECIAL_TOKENS.iter().map(|s| AddedToken::from(s.to_string(), true)).collect();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let pre = Sequence::new(vec![
        PreTokenizerWrapper::Digits(Digits::new(true)),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)),
    ]);
    let mut tk = TokenizerBuilder::<
        BPE,
        tokenizers::NormalizerWrapper,
        PreTokenizerWrapper,
        tokenizers::PostProcessorWrapper,
        tokenizers::DecoderWrapper,
    >::new()
    .with_model(BPE::default())
    .with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(pre)))
    .with_decoder(Some(tokenizers::DecoderWrapper::ByteLevel(ByteLevelDecoder::default())))
    .build()
    .map_err(tok_err)?;
    let texts = records.iter().flat_map(|r| [r.prompt.clone(), r.completion.clone()]);
    tk.train(&mut trainer, texts).map_err(tok_err)?;
    Ok(tk.into())
}

/// Write the tokenizer as `tokenizer.json`.
pub fn save(tk: &Tokenizer, path: &Path) -> Result<()> {
    tk.save(path, true).map_err(tok_err)
}

/// decode(encode(text)) == text, for a check over a whole dataset.
pub fn round_trips(tk: &Tokenizer, text: &str) -> Result<bool> {
    let enc = tk.encode(text, false).map_err(tok_err)?;
    Ok(tk.decode(enc.get_ids(), false).map_err(tok_err)? == text)
}
