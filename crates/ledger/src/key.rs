//! Keys: a node signs its feed with its libp2p ed25519 identity, and anyone checks with
//! `verify_strict`, which refuses the malleable and small-order forms the lenient check lets
//! through (two byte strings for one signature would be two entry ids for one entry).

use libp2p_identity::{ed25519, Keypair, PeerId, PublicKey};
use odin_proto::ledger::{Key, SIG_LEN};

use crate::error::{LedgerError, Result};

/// A feed's author: signs entries, countersignatures and attestations.
#[derive(Clone)]
pub struct Author {
    key: ed25519::Keypair,
}

impl std::fmt::Debug for Author {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Author({})", short(&self.key()))
    }
}

impl Author {
    /// The author with the node's libp2p identity `key` (which must be ed25519).
    pub fn new(key: &Keypair) -> Result<Self> {
        let key = key.clone().try_into_ed25519().map_err(|_| LedgerError::NotEd25519)?;
        Ok(Self { key })
    }

    /// A fresh random author (tests, benchmarks).
    pub fn generate() -> Self {
        Self { key: ed25519::Keypair::generate() }
    }

    /// Its public key: its account.
    pub fn key(&self) -> Key {
        self.key.public().to_bytes()
    }

    /// Sign `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; SIG_LEN] {
        let sig = self.key.sign(msg);
        let mut out = [0u8; SIG_LEN];
        // An ed25519 signature is always 64 bytes.
        out.copy_from_slice(&sig[..SIG_LEN.min(sig.len())]);
        out
    }
}

/// Whether `sig` is `key`'s strict ed25519 signature over `msg`.
pub fn verify(key: &Key, msg: &[u8], sig: &[u8; SIG_LEN]) -> bool {
    let Ok(vk) = ed25519_dalek::VerifyingKey::from_bytes(key) else { return false };
    vk.verify_strict(msg, &ed25519_dalek::Signature::from_bytes(sig)).is_ok()
}

/// The libp2p peer id of account `key`, when it is a valid ed25519 key.
pub fn peer_id(key: &Key) -> Option<PeerId> {
    let pk = ed25519::PublicKey::try_from_bytes(key).ok()?;
    Some(PeerId::from_public_key(&PublicKey::from(pk)))
}

/// The account of an ed25519 peer id (its key is inlined in the id); `None` for other ids.
pub fn account_of(peer: &PeerId) -> Option<Key> {
    // An ed25519 peer id is an identity multihash of the protobuf-encoded key.
    let mh = peer.as_ref();
    if mh.code() != 0 {
        return None;
    }
    let pk = PublicKey::try_decode_protobuf(mh.digest()).ok()?;
    Some(pk.try_into_ed25519().ok()?.to_bytes())
}

/// How accounts are printed: the peer id where the key is valid, hex otherwise.
pub fn show(key: &Key) -> String {
    peer_id(key).map(|p| p.to_string()).unwrap_or_else(|| hex(key))
}

/// The first characters of an account, for logs.
pub fn short(key: &Key) -> String {
    let s = show(key);
    s.chars().rev().take(8).collect::<Vec<_>>().into_iter().rev().collect()
}

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_identity_signs_and_its_peer_id_names_the_same_account() {
        let id = Keypair::generate_ed25519();
        let a = Author::new(&id).unwrap();
        let sig = a.sign(b"hello");
        assert!(verify(&a.key(), b"hello", &sig));
        assert!(!verify(&a.key(), b"hellp", &sig));
        assert_eq!(peer_id(&a.key()), Some(id.public().to_peer_id()));
        assert_eq!(account_of(&id.public().to_peer_id()), Some(a.key()));
        assert!(!verify(&[0xff; 32], b"hello", &sig));
    }

    #[test]
    fn a_non_canonical_signature_is_refused() {
        // S + ℓ (the group order) is the classic malleated form: the lenient check of some
        // libraries accepts it, verify_strict must not.
        let a = Author::generate();
        let mut sig = a.sign(b"m");
        const L: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut carry = 0u16;
        for i in 0..32 {
            let v = sig[32 + i] as u16 + L[i] as u16 + carry;
            sig[32 + i] = v as u8;
            carry = v >> 8;
        }
        assert!(!verify(&a.key(), b"m", &sig));
    }
}
