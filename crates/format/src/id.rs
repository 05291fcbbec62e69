//! A model's content id: what the network trusts instead of names.

use std::fmt;
use std::path::Path;

use crate::error::{FormatError, Result};

/// A model's content id: blake3 over its canonical files.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModelId(pub [u8; 32]);

impl fmt::Display for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl ModelId {
    /// Parse the 64-hex-digit form that `Display` prints.
    pub fn from_hex(s: &str) -> Option<Self> {
        let s = s.trim();
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut id = [0u8; 32];
        for (i, b) in id.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Self(id))
    }
}

impl fmt::Debug for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModelId({self})")
    }
}

/// The files that define a model, in the order they enter its id.
/// `tokenizer.json` is optional: a model without one hashes without it.
pub const CANONICAL_FILES: [&str; 3] = ["config.json", "model.safetensors", "tokenizer.json"];

/// Version tag mixed into every id, so a change of id scheme never collides.
const ID_DOMAIN: &[u8] = b"odin-model-id/v1\0";

/// Compute the id of the model directory at `dir` from its files' bytes.
///
/// Each present canonical file contributes its name, its length and the
/// blake3 of its bytes, so anyone can recompute the id with standard tools.
pub fn model_id(dir: &Path) -> Result<ModelId> {
    let mut h = blake3::Hasher::new();
    h.update(ID_DOMAIN);
    for name in CANONICAL_FILES {
        let path = dir.join(name);
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && name == "tokenizer.json" => continue,
            Err(err) => return Err(FormatError::Io { path, err }),
        };
        // Streamed, so hashing a large model never holds its weights in memory.
        let mut fh = blake3::Hasher::new();
        let len = std::io::copy(&mut std::io::BufReader::with_capacity(1 << 20, file), &mut fh)
            .map_err(|err| FormatError::Io { path: path.clone(), err })?;
        h.update(name.as_bytes());
        h.update(&[0]);
        h.update(&len.to_le_bytes());
        h.update(fh.finalize().as_bytes());
    }
    Ok(ModelId(*h.finalize().as_bytes()))
}

#[cfg(test)]
mod hex_tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let id = ModelId([0xab; 32]);
        assert_eq!(ModelId::from_hex(&id.to_string()), Some(id));
        assert_eq!(ModelId::from_hex("abc"), None);
        assert_eq!(ModelId::from_hex(&"zz".repeat(32)), None);
    }
}
