//! One dataset record and the conventions every family shares.

use serde::{Deserialize, Serialize};

/// One training or test example, one JSON object per JSONL line.
///
/// The model sees `prompt` and learns to produce `completion`; the last line
/// of `completion` is always the answer, so scoring needs no per-task parser.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Stable id: split, task and a hash of the prompt.
    pub id: String,
    /// Task name, e.g. `add`, `linear`, `word`, `code_output`.
    pub task: String,
    /// Family: `arithmetic`, `algebra`, `word`, `code`.
    pub family: String,
    /// Curriculum level, 1 (easiest) upwards.
    pub difficulty: u8,
    /// What the model is given.
    pub prompt: String,
    /// What the model should produce: worked steps (if any) then the answer on the last line.
    pub completion: String,
    /// The answer alone (the last line of `completion`).
    pub answer: String,
    /// `train`, `test`, `heldout-family` or `long`.
    pub split: String,
    /// Hidden tests (Python `assert` lines) for code-writing tasks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tests: Vec<String>,
    /// Task-specific facts used by statistics (operand lengths, carry chain, template).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub meta: serde_json::Map<String, serde_json::Value>,
}

/// The answer a completion gives: its last line, trimmed.
pub fn extract_answer(completion: &str) -> &str {
    completion.trim_end().rsplit('\n').next().unwrap_or("").trim()
}

/// Prompt normalised for duplicate and leak detection: whitespace collapsed, lowercase.
pub fn normalize_prompt(prompt: &str) -> String {
    prompt.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

/// blake3 of the normalised prompt, truncated to 128 bits.
pub fn prompt_hash(prompt: &str) -> u128 {
    let h = blake3::hash(normalize_prompt(prompt).as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h.as_bytes()[..16]);
    u128::from_le_bytes(b)
}

/// A record under construction, before the split and id are assigned.
#[derive(Debug, Clone)]
pub struct Draft {
    /// Task name.
    pub task: &'static str,
    /// Family name.
    pub family: &'static str,
    /// Curriculum level.
    pub difficulty: u8,
    /// Prompt text.
    pub prompt: String,
    /// Steps then answer.
    pub completion: String,
    /// Answer.
    pub answer: String,
    /// Hidden tests.
    pub tests: Vec<String>,
    /// Statistics metadata.
    pub meta: serde_json::Map<String, serde_json::Value>,
}

impl Draft {
    /// Finish the record for `split`.
    pub fn into_record(self, split: &str) -> Record {
        let id = format!("{split}-{}-{:032x}", self.task, prompt_hash(&self.prompt));
        Record {
            id,
            task: self.task.into(),
            family: self.family.into(),
            difficulty: self.difficulty,
            prompt: self.prompt,
            completion: self.completion,
            answer: self.answer,
            split: split.into(),
            tests: self.tests,
            meta: self.meta,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_is_the_last_line() {
        assert_eq!(extract_answer("1+2+0=3\n3\n"), "3");
        assert_eq!(extract_answer("x = 5"), "x = 5");
        assert_eq!(extract_answer(""), "");
    }

    #[test]
    fn normalisation_ignores_case_and_spacing() {
        assert_eq!(prompt_hash("What  is 2+2?"), prompt_hash("what is\n2+2?"));
        assert_ne!(prompt_hash("2+2"), prompt_hash("2+3"));
    }
}
