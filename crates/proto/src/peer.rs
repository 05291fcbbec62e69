//! Peer ids on the wire, without libp2p: the id's bytes (a multihash), checked for the shape
//! libp2p's `PeerId::from_bytes` accepts, so a message that decodes here always names a peer
//! that the network layer can convert (`odin_net` does, at its edge).

use crate::codec::{Reader, Writer};
use crate::error::{ProtoError, Result};

/// Longest peer id accepted in a message (an ed25519 id is 38 bytes).
pub const MAX_PEER_ID: usize = 64;

/// Multihash code of an id that inlines its public key.
const IDENTITY: u64 = 0x00;
/// Multihash code of an id that hashes its public key.
const SHA2_256: u64 = 0x12;
/// Longest inlined key libp2p accepts in an identity multihash.
const MAX_INLINE_KEY: usize = 42;
/// Longest digest a libp2p multihash holds.
const MAX_DIGEST: usize = 64;

/// A peer id as it travels: libp2p's `PeerId::to_bytes()`, at most [`MAX_PEER_ID`] bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerBytes(Vec<u8>);

impl PeerBytes {
    /// Check `b` is a peer id's bytes: a multihash whose code is sha2-256, or identity with an
    /// inlined key of at most 42 bytes (what libp2p accepts), with nothing after it.
    pub fn new(b: &[u8]) -> Result<Self> {
        if b.len() > MAX_PEER_ID {
            return Err(ProtoError::TooLarge { what: "peer id".into(), size: b.len(), cap: MAX_PEER_ID });
        }
        check_multihash(b).map_err(|why| ProtoError::Malformed(format!("not a peer id: {why}")))?;
        Ok(Self(b.to_vec()))
    }

    /// The id's bytes (what libp2p's `PeerId::from_bytes` reads).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The checks of `multihash::Multihash::<64>::from_bytes` and `PeerId::from_multihash`.
fn check_multihash(b: &[u8]) -> std::result::Result<(), &'static str> {
    let (code, rest) = varint_u64(b)?;
    let (size, rest) = varint_u64(rest)?;
    if size > MAX_DIGEST as u64 {
        return Err("its digest is longer than 64 bytes");
    }
    if rest.len() != size as usize {
        return Err(if rest.len() < size as usize { "it ends inside its digest" } else { "bytes follow its digest" });
    }
    match code {
        SHA2_256 => Ok(()),
        IDENTITY if size as usize <= MAX_INLINE_KEY => Ok(()),
        IDENTITY => Err("its inlined key is longer than 42 bytes"),
        _ => Err("its multihash code is neither identity nor sha2-256"),
    }
}

/// An unsigned LEB128 varint of at most 10 bytes, minimally encoded (the `unsigned-varint`
/// crate's rules, which libp2p reads peer ids with): the value and the bytes after it.
fn varint_u64(b: &[u8]) -> std::result::Result<(u64, &[u8]), &'static str> {
    let mut n = 0u64;
    for (i, &byte) in b.iter().enumerate().take(10) {
        n |= u64::from(byte & 0x7f) << (i * 7);
        if byte & 0x80 == 0 {
            if byte == 0 && i > 0 {
                return Err("a varint is not minimally encoded");
            }
            return Ok((n, &b[i + 1..]));
        }
    }
    Err(if b.len() >= 10 { "a varint is longer than 10 bytes" } else { "it ends inside a varint" })
}

impl Writer {
    /// A peer id: its length, then its bytes.
    pub fn peer(&mut self, p: &PeerBytes) {
        self.bytes(p.as_bytes());
    }
}

impl Reader<'_> {
    /// A peer id: the length is checked against [`MAX_PEER_ID`] first, then the bytes' shape.
    pub fn peer(&mut self, what: &str) -> Result<PeerBytes> {
        let raw = self.bytes(MAX_PEER_ID, what)?;
        PeerBytes::new(raw).map_err(|e| match e {
            ProtoError::Malformed(m) => ProtoError::Malformed(format!("{what} is {m}")),
            e => e,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ed25519 peer id's bytes: identity code, 36-byte inlined protobuf key.
    fn ed25519_like() -> Vec<u8> {
        let mut b = vec![0x00, 36, 0x08, 0x01, 0x12, 0x20];
        b.extend_from_slice(&[7; 32]);
        b
    }

    #[test]
    fn good_ids_pass_and_bad_ones_say_why() {
        assert_eq!(PeerBytes::new(&ed25519_like()).unwrap().as_bytes(), ed25519_like());
        // A hashed id: sha2-256, 32 bytes.
        let mut sha = vec![0x12, 32];
        sha.extend_from_slice(&[1; 32]);
        PeerBytes::new(&sha).unwrap();
        let cases: [(&[u8], &str); 7] = [
            (b"", "ends inside a varint"),
            (b"not a multihash", "longer than 64"),
            (&[0x00, 2, 1], "ends inside its digest"),
            (&[0x00, 1, 1, 9], "bytes follow"),
            (&[0x80, 0x00, 0], "not minimally encoded"),
            (&[0x13, 1, 1], "neither identity nor sha2-256"),
            (&[0x12, 65], "longer than 64"),
        ];
        for (b, why) in cases {
            let e = PeerBytes::new(b).unwrap_err();
            assert!(
                matches!(&e, ProtoError::Malformed(m) if m.contains("not a peer id") && m.contains(why)),
                "{b:?}: {e}"
            );
        }
        let mut long_inline = vec![0x00, 43];
        long_inline.extend_from_slice(&[0; 43]);
        assert!(PeerBytes::new(&long_inline).unwrap_err().to_string().contains("longer than 42"));
        assert!(matches!(PeerBytes::new(&[0; 65]), Err(ProtoError::TooLarge { cap: MAX_PEER_ID, .. })));
        assert!(PeerBytes::new(&[0xff; 11]).unwrap_err().to_string().contains("longer than 10 bytes"));
    }
}
