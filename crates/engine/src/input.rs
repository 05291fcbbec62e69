//! What a shard of either architecture takes in and gives out: token ids or
//! hidden states in, hidden states or logits out.

use crate::error::{EngineError, Result};
use crate::quant::QRows;

/// What a shard takes in.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// Token ids (the first shard).
    Tokens(&'a [u32]),
    /// Hidden states [T, C], row-major (every other shard).
    Hidden(&'a [f32]),
}

/// Which positions the last shard turns into logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only the last token's (decoding and prefill).
    Last,
    /// Every token's (evaluation and tests).
    All,
}

/// The first rows a shard computes on: embedded token ids when `emb` is the model's
/// embedding (the state starts at block 0), else the hidden states [T, c] it was sent,
/// checked for shape and finiteness. `first_block` only words the error.
pub(crate) fn input_rows(input: Input<'_>, emb: Option<&QRows>, c: usize, first_block: usize) -> Result<Vec<f32>> {
    Ok(match (input, emb) {
        (Input::Tokens(ids), Some(emb)) => {
            if ids.is_empty() {
                return Err(EngineError::BadInput("no tokens".into()));
            }
            let mut x = vec![0f32; ids.len() * c];
            for (t, &id) in ids.iter().enumerate() {
                if id as usize >= emb.rows {
                    return Err(EngineError::BadInput(format!(
                        "token id {id} is outside the vocabulary of {}",
                        emb.rows
                    )));
                }
                emb.row(id as usize, &mut x[t * c..(t + 1) * c]);
            }
            x
        }
        (Input::Hidden(h), None) => {
            if h.is_empty() || h.len() % c != 0 {
                return Err(EngineError::BadInput(format!(
                    "hidden state of {} values is not a whole number of {c}-wide rows",
                    h.len()
                )));
            }
            if h.iter().any(|v| !v.is_finite()) {
                return Err(EngineError::BadInput("hidden state holds NaN or infinity".into()));
            }
            h.to_vec()
        }
        (Input::Tokens(_), None) => {
            return Err(EngineError::BadInput(format!(
                "this state starts at block {}; send it hidden states, not token ids",
                first_block
            )))
        }
        (Input::Hidden(_), Some(_)) => {
            return Err(EngineError::BadInput("the first shard takes token ids, not hidden states".into()))
        }
    })
}
