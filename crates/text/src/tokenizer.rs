//! The tokenizer and the prompt format: loading and checking `tokenizer.json`, the special
//! ids, the ids of a prompt and of a whole record, and decoding.

use std::path::Path;

use tokenizers::Tokenizer;

use crate::error::{Result, TextError};

/// Special tokens, in id order: beginning, end, padding, prompt and answer markers.
pub const SPECIAL_TOKENS: [&str; 5] = ["<|bos|>", "<|eos|>", "<|pad|>", "<|prompt|>", "<|answer|>"];

/// Special token ids, fixed by `odin tokenizer train` (the order of [`SPECIAL_TOKENS`]).
pub mod special {
    /// Beginning of a record.
    pub const BOS: u32 = 0;
    /// End of a completion.
    pub const EOS: u32 = 1;
    /// Padding.
    pub const PAD: u32 = 2;
    /// Start of the prompt.
    pub const PROMPT: u32 = 3;
    /// Start of the answer.
    pub const ANSWER: u32 = 4;
}

/// Check that `tk` has ODIN's special tokens at the ids every layer uses.
pub fn check_tokenizer(tk: &Tokenizer) -> Result<()> {
    for (i, s) in SPECIAL_TOKENS.iter().enumerate() {
        if tk.token_to_id(s) != Some(i as u32) {
            return Err(TextError::Special { token: s, id: i as u32 });
        }
    }
    Ok(())
}

/// Parse and check a `tokenizer.json` held in memory (the browser fetches it; nodes read a file).
pub fn tokenizer_from_bytes(json: &[u8]) -> Result<Tokenizer> {
    let tk = Tokenizer::from_bytes(json).map_err(|e| TextError::Parse(e.to_string()))?;
    check_tokenizer(&tk)?;
    Ok(tk)
}

/// Load and check the `tokenizer.json` of the model directory `dir`.
pub fn load_tokenizer(dir: &Path) -> Result<Tokenizer> {
    let path = dir.join("tokenizer.json");
    if !path.is_file() {
        return Err(TextError::Missing(dir.to_path_buf()));
    }
    tokenizer_from_file(&path)
}

/// Load and check a tokenizer file wherever it lies (a training config names one).
pub fn tokenizer_from_file(path: &Path) -> Result<Tokenizer> {
    let json = std::fs::read(path).map_err(|err| TextError::Io { path: path.to_path_buf(), err })?;
    tokenizer_from_bytes(&json).map_err(|e| match e {
        TextError::Parse(reason) => TextError::Parse(format!("{}: {reason}", path.display())),
        other => other,
    })
}

/// Token ids of a prompt as the model sees it before answering: `<|bos|> <|prompt|> PROMPT <|answer|>`.
pub fn prompt_ids(tk: &Tokenizer, prompt: &str) -> Result<Vec<u32>> {
    let enc = tk.encode(prompt, false).map_err(|e| TextError::Encode(e.to_string()))?;
    let (mut ids, answer) = record_ids(enc.get_ids(), &[]);
    ids.truncate(answer);
    Ok(ids)
}

/// A whole training record from its encoded prompt and completion,
/// `<|bos|> <|prompt|> PROMPT <|answer|> COMPLETION <|eos|>`, and the index where the
/// completion starts (everything before it is what [`prompt_ids`] gives).
pub fn record_ids(prompt: &[u32], completion: &[u32]) -> (Vec<u32>, usize) {
    let mut ids = Vec::with_capacity(prompt.len() + completion.len() + 4);
    ids.extend_from_slice(&[special::BOS, special::PROMPT]);
    ids.extend_from_slice(prompt);
    ids.push(special::ANSWER);
    let answer = ids.len();
    ids.extend_from_slice(completion);
    ids.push(special::EOS);
    (ids, answer)
}

/// Decode token ids to text (special tokens included, as the model wrote them).
pub fn decode(tk: &Tokenizer, ids: &[u32]) -> Result<String> {
    tk.decode(ids, false).map_err(|e| TextError::Decode(e.to_string()))
}

#[cfg(test)]
pub(crate) mod testing {
    use tokenizers::models::wordlevel::WordLevel;

    use super::*;

    /// A word-level tokenizer with the special tokens first, then `words`.
    pub fn tokenizer(words: &[&str]) -> Tokenizer {
        let vocab = SPECIAL_TOKENS.iter().chain(words).enumerate().map(|(i, w)| (w.to_string(), i as u32)).collect();
        let model = WordLevel::builder().vocab(vocab).unk_token("<|pad|>".into()).build().unwrap();
        let mut tk = Tokenizer::new(model);
        tk.with_pre_tokenizer(Some(tokenizers::pre_tokenizers::whitespace::WhitespaceSplit));
        tk
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prompt_is_framed_by_the_special_ids() {
        let tk = testing::tokenizer(&["two", "plus", "three"]);
        check_tokenizer(&tk).unwrap();
        let ids = prompt_ids(&tk, "two plus three").unwrap();
        assert_eq!(ids, vec![special::BOS, special::PROMPT, 5, 6, 7, special::ANSWER]);
    }

    #[test]
    fn a_record_is_its_prompt_then_the_completion_and_the_end() {
        let (ids, answer) = record_ids(&[7, 8], &[9]);
        assert_eq!(ids, vec![special::BOS, special::PROMPT, 7, 8, special::ANSWER, 9, special::EOS]);
        assert_eq!(ids[answer], 9);
        let tk = testing::tokenizer(&["seven", "eight"]);
        let (whole, at) = record_ids(&[5, 6], &[]);
        assert_eq!(prompt_ids(&tk, "seven eight").unwrap(), &whole[..at]);
    }

    #[test]
    fn a_tokenizer_without_the_special_ids_is_refused_by_name() {
        let vocab = [("<|eos|>".to_string(), 0u32), ("<|bos|>".to_string(), 1)].into_iter().collect();
        let model = tokenizers::models::wordlevel::WordLevel::builder()
            .vocab(vocab)
            .unk_token("<|eos|>".into())
            .build()
            .unwrap();
        let err = check_tokenizer(&Tokenizer::new(model)).unwrap_err().to_string();
        assert!(err.contains("<|bos|>") && err.contains("odin tokenizer train"), "{err}");
    }

    #[test]
    fn a_directory_without_a_tokenizer_says_what_to_copy() {
        let dir = std::env::temp_dir().join("odin-text-no-tokenizer");
        let err = load_tokenizer(&dir).unwrap_err().to_string();
        assert!(err.contains("no tokenizer.json"), "{err}");
    }

    #[test]
    fn bytes_that_are_not_a_tokenizer_are_refused() {
        assert!(matches!(tokenizer_from_bytes(b"{ not json"), Err(TextError::Parse(_))));
    }
}
