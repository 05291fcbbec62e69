//! A ledger network's id: blake3 of its name and its genesis node's key. Every entry carries
//! it, so an entry is valid in one network only, and knowing the id is knowing whose genesis
//! entry opens the books.

use odin_proto::ledger::Key;

use crate::key::hex;

/// A network's name and genesis node, and the id they give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkId {
    /// The name ("odin-local").
    pub name: String,
    /// The genesis node's key.
    pub genesis: Key,
}

impl NetworkId {
    /// The network `name` opened by `genesis`.
    pub fn new(name: &str, genesis: Key) -> Self {
        Self { name: name.to_string(), genesis }
    }

    /// The 32-byte id every entry carries.
    pub fn id(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(b"odin ledger network v1\0");
        h.update(&(self.name.len() as u64).to_le_bytes());
        h.update(self.name.as_bytes());
        h.update(&self.genesis);
        *h.finalize().as_bytes()
    }
}

impl std::fmt::Display for NetworkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name, &hex(&self.id())[..16])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_and_the_genesis_both_change_the_id() {
        let a = NetworkId::new("odin", [1; 32]);
        assert_ne!(a.id(), NetworkId::new("odin2", [1; 32]).id());
        assert_ne!(a.id(), NetworkId::new("odin", [2; 32]).id());
        assert_eq!(a.id(), NetworkId::new("odin", [1; 32]).id());
    }
}
