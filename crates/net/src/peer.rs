//! Peer ids at the protocol's edge: `odin_proto` carries them as checked bytes
//! ([`PeerBytes`]) so that it needs no libp2p; these convert them to and from libp2p's.

use libp2p::PeerId;
use odin_proto::{PeerBytes, ProtoError};

use crate::error::{NetError, Result};

/// `peer` as the protocol carries it: the bytes of `PeerId::to_bytes`.
///
/// Every id libp2p derives from a key fits; only an id parsed from elsewhere with a digest
/// longer than the protocol's cap (`odin_proto::MAX_PEER_ID`) is refused.
pub fn peer_to_wire(peer: &PeerId) -> Result<PeerBytes> {
    Ok(PeerBytes::new(&peer.to_bytes())?)
}

/// The libp2p id the protocol's bytes name. Bytes the protocol decoded always convert: it
/// checks the shape libp2p's `PeerId::from_bytes` accepts.
pub fn peer_from_wire(peer: &PeerBytes) -> Result<PeerId> {
    PeerId::from_bytes(peer.as_bytes())
        .map_err(|e| NetError::Proto(ProtoError::Malformed(format!("not a peer id: {e}"))))
}

/// The peer an address names in its trailing `/p2p/` part, if it has one.
pub fn peer_of(addr: &libp2p::Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(libp2p::multiaddr::Protocol::P2p(p)) => Some(p),
        _ => None,
    }
}

/// Whether `sig` is `peer`'s signature over `msg`: the key is the one an inlined peer id
/// carries (every ed25519 id does); an id that only hashes its key cannot be checked, so no.
pub fn verify_signed_by(peer: &PeerId, msg: &[u8], sig: &[u8]) -> bool {
    let mh: &libp2p::multihash::Multihash<64> = peer.as_ref();
    if mh.code() != 0x00 {
        return false;
    }
    match libp2p::identity::PublicKey::try_decode_protobuf(mh.digest()) {
        Ok(key) => key.verify(msg, sig),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::identity::Keypair;
    use proptest::prelude::*;

    fn ed25519(key: [u8; 32]) -> PeerId {
        Keypair::ed25519_from_bytes(key).unwrap().public().to_peer_id()
    }

    #[test]
    fn a_signature_verifies_only_under_the_id_of_its_key_and_for_its_message() {
        let k = Keypair::ed25519_from_bytes([3; 32]).unwrap();
        let sig = k.sign(b"round 4").unwrap();
        let me = k.public().to_peer_id();
        assert!(verify_signed_by(&me, b"round 4", &sig));
        assert!(!verify_signed_by(&me, b"round 5", &sig));
        assert!(!verify_signed_by(&ed25519([4; 32]), b"round 4", &sig));
        assert!(!verify_signed_by(&PeerId::random(), b"round 4", &sig));
        assert!(!verify_signed_by(&me, b"round 4", &sig[1..]));
    }

    #[test]
    fn hashed_and_inlined_ids_convert_both_ways() {
        // An inlined ed25519 key, and a hashed id (sha2-256 of a key too long to inline).
        let hashed = PeerId::from_bytes(&[[0x12, 32].as_slice(), &[5; 32]].concat()).unwrap();
        for peer in [ed25519([1; 32]), hashed, PeerId::random()] {
            let wire = peer_to_wire(&peer).unwrap();
            assert_eq!(wire.as_bytes(), peer.to_bytes());
            assert_eq!(peer_from_wire(&wire).unwrap(), peer);
        }
        // A sha2-256 id with a 64-byte digest is a libp2p id, but over the protocol's cap.
        let long = PeerId::from_bytes(&[[0x12, 64].as_slice(), &[5; 64]].concat()).unwrap();
        assert!(matches!(peer_to_wire(&long), Err(NetError::Proto(ProtoError::TooLarge { .. }))));
    }

    proptest! {
        #[test]
        fn the_protocol_accepts_exactly_the_ids_libp2p_does(
            key in any::<[u8; 32]>(),
            at in any::<proptest::sample::Index>(),
            byte in any::<u8>(),
            cut in any::<proptest::sample::Index>(),
            junk in proptest::collection::vec(any::<u8>(), 0..70),
            code in prop_oneof![Just(0x00u8), Just(0x12u8), any::<u8>()],
            size in 0u8..80,
        ) {
            // A real id with one byte changed, a real id cut short, random bytes, and a multihash
            // header (identity, sha2-256 or another code; any digest size) over random bytes: wherever
            // the protocol's check says "a peer id", libp2p agrees, and the other way round.
            let good = ed25519(key).to_bytes();
            let mut changed = good.clone();
            changed[at.index(good.len())] = byte;
            let short = good[..cut.index(good.len())].to_vec();
            let headed = [[code, size].as_slice(), &junk].concat();
            for b in [good, changed, short, junk, headed] {
                let ours = PeerBytes::new(&b);
                let theirs = PeerId::from_bytes(&b);
                if b.len() <= odin_proto::MAX_PEER_ID {
                    prop_assert_eq!(ours.is_ok(), theirs.is_ok(), "{:?}", b);
                }
                if let Ok(p) = ours {
                    prop_assert_eq!(peer_from_wire(&p).unwrap(), theirs.unwrap());
                }
            }
        }
    }
}
