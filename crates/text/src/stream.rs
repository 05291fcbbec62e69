//! Streaming detokenization: text pieces handed out as tokens arrive.

use tokenizers::Tokenizer;

use crate::error::Result;
use crate::tokenizer::decode;

/// Turns generated token ids into text pieces as they arrive. A byte-level
/// token may complete a character only later, so the whole answer is decoded
/// each time and only the new, complete suffix is handed out.
pub struct TextStream<'a> {
    tk: &'a Tokenizer,
    ids: Vec<u32>,
    shown: String,
}

impl<'a> TextStream<'a> {
    /// An empty stream over `tk`.
    pub fn new(tk: &'a Tokenizer) -> Self {
        Self { tk, ids: Vec::new(), shown: String::new() }
    }

    /// Add a token; returns the text it completes, if any.
    pub fn push(&mut self, tok: u32) -> Result<Option<String>> {
        self.ids.push(tok);
        let text = decode(self.tk, &self.ids)?;
        match text.strip_prefix(self.shown.as_str()) {
            Some(new) if !new.is_empty() && !new.ends_with('\u{fffd}') => {
                let new = new.to_string();
                self.shown = text;
                Ok(Some(new))
            }
            _ => Ok(None),
        }
    }

    /// The text not handed out yet, and the whole answer.
    pub fn finish(self) -> Result<(String, String)> {
        let text = decode(self.tk, &self.ids)?;
        let rest = text.strip_prefix(self.shown.as_str()).unwrap_or("").to_string();
        Ok((rest, text))
    }

    /// The ids pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::testing;

    #[test]
    fn pieces_joined_are_the_whole_answer() {
        let tk = testing::tokenizer(&["x", "=", "4"]);
        let mut s = TextStream::new(&tk);
        let mut pieces = String::new();
        for id in [5, 6, 7] {
            pieces.push_str(&s.push(id).unwrap().unwrap_or_default());
        }
        let (rest, whole) = s.finish().unwrap();
        pieces.push_str(&rest);
        assert_eq!(whole, "x = 4");
        assert_eq!(pieces, whole);
    }
}
