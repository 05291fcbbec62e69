//! What an identity costs: an S/Kademlia-style static puzzle on the node's public key.
//!
//! A peer id is accepted only when blake3(blake3(its public key)) starts with `bits` zero
//! bits. Nothing else is needed to check it (an ed25519 peer id inlines its key), and the only
//! way to meet it is to generate keys until one does: 2^bits key generations on average, so
//! each added bit doubles what a Sybil attacker pays per identity, while an honest node pays
//! it once and keeps its key.

use libp2p::identity::{Keypair, PublicKey};
use libp2p::PeerId;

/// Zero bits the network asks of an identity unless configured otherwise. About 2^14 ed25519
/// key generations (a fraction of a second on one core, see BENCHMARKS.md): cheap once, costly by
/// the thousand.
pub const DEFAULT_IDENTITY_BITS: u32 = 14;

/// Leading zero bits of blake3(blake3(`key`'s protobuf encoding)).
pub fn identity_bits(key: &PublicKey) -> u32 {
    let inner = blake3::hash(&key.encode_protobuf());
    let outer = blake3::hash(inner.as_bytes());
    leading_zero_bits(outer.as_bytes())
}

/// Whether `peer` names a key that meets `bits`. A peer id that does not inline its key
/// (a hashed RSA id) cannot be checked, and does not.
pub fn peer_meets(peer: &PeerId, bits: u32) -> bool {
    if bits == 0 {
        return true;
    }
    let mh: &libp2p::multihash::Multihash<64> = peer.as_ref();
    if mh.code() != 0x00 {
        return false;
    }
    match PublicKey::try_decode_protobuf(mh.digest()) {
        Ok(key) => identity_bits(&key) >= bits,
        Err(_) => false,
    }
}

/// Generate ed25519 keys until one meets `bits`; also returns how many were tried.
pub fn solve(bits: u32) -> (Keypair, u64) {
    let mut tries = 0u64;
    loop {
        tries += 1;
        let key = Keypair::generate_ed25519();
        if identity_bits(&key.public()) >= bits {
            return (key, tries);
        }
    }
}

fn leading_zero_bits(b: &[u8]) -> u32 {
    let mut n = 0;
    for &x in b {
        if x == 0 {
            n += 8;
        } else {
            return n + x.leading_zeros();
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_zero_bits_count_across_bytes() {
        assert_eq!(leading_zero_bits(&[0x80]), 0);
        assert_eq!(leading_zero_bits(&[0x01]), 7);
        assert_eq!(leading_zero_bits(&[0, 0x10, 0xff]), 11);
        assert_eq!(leading_zero_bits(&[0, 0]), 16);
    }

    #[test]
    fn a_solved_identity_is_accepted_by_its_peer_id_and_most_random_ones_are_not() {
        let (key, tries) = solve(8);
        assert!(tries >= 1);
        let peer = key.public().to_peer_id();
        assert!(peer_meets(&peer, 8));
        assert!(peer_meets(&peer, 0));
        // A random key meets 8 bits once in 256: of 64, almost surely not all.
        let random = (0..64).filter(|_| peer_meets(&Keypair::generate_ed25519().public().to_peer_id(), 8)).count();
        assert!(random < 8, "{random} of 64 random keys met 8 bits");
        // An id that hashes its key (as RSA ids do) cannot show the work.
        assert!(!peer_meets(&PeerId::random(), 1));
    }
}
