//! A server's announcement: what it serves, how fast, and how busy it is.
//!
//! Published over gossipsub (validated before it is forwarded) and returned by
//! the shard protocol's `Info` request, so a client that found a provider in
//! the DHT can ask it directly.

use serde::{Deserialize, Serialize};

use crate::error::{NetError, Result};
use odin_proto::infer::PROTOCOL_VERSION;
use odin_proto::ProtoError;

/// Largest announcement accepted (gossipsub caps messages at 64 KiB; ours stay far below);
/// the inference service's `Info` answer has the same cap.
pub use odin_proto::infer::MAX_INFO;

/// What a server announces about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// Version of the inference protocol (`odin_proto::infer::PROTOCOL_VERSION`).
    pub version: u16,
    /// The announcing peer (must equal the gossip message's source).
    pub peer: String,
    /// Model id (hex) of the weights it serves.
    pub model: String,
    /// First block served.
    pub start: u32,
    /// One past the last block served.
    pub end: u32,
    /// Measured milliseconds per block for one decode token.
    pub ms_per_block: f64,
    /// Sessions open now.
    pub load: u32,
    /// Sessions it can still open.
    pub free_slots: u32,
    /// Addresses it listens on.
    pub addrs: Vec<String>,
    /// Milliseconds since the Unix epoch when it was made (announcements expire).
    pub at_ms: u64,
    /// Whether it picks its own blocks (`--blocks auto`) and so may move to rebalance.
    #[serde(default)]
    pub auto: bool,
    /// What this server saw of others it used or audited (its reputation book, capped at
    /// [`MAX_OPINIONS`]): how reputations travel.
    #[serde(default)]
    pub opinions: Vec<Opinion>,
}

/// Most opinions one announcement carries.
pub const MAX_OPINIONS: usize = 32;

/// One server's account of another, carried in its announcements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Opinion {
    /// The server it is about (peer id, base58).
    pub peer: String,
    /// Audits it passed.
    pub passed: u32,
    /// Audits it failed or chains it broke.
    pub failed: u32,
    /// Requests to it that failed.
    pub faults: u32,
    /// Generations it served to the end.
    pub served: u32,
}

impl ServerInfo {
    /// Encode as JSON.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decode and check an announcement from the network.
    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        if b.len() > MAX_INFO {
            return Err(NetError::Proto(ProtoError::TooLarge {
                what: "server info".into(),
                size: b.len(),
                cap: MAX_INFO,
            }));
        }
        let info: ServerInfo = serde_json::from_slice(b)
            .map_err(|e| NetError::Proto(ProtoError::Malformed(format!("server info: {e}"))))?;
        if info.version != PROTOCOL_VERSION {
            return Err(NetError::Proto(ProtoError::Version { ours: PROTOCOL_VERSION, theirs: info.version }));
        }
        if info.start >= info.end {
            return Err(NetError::Proto(ProtoError::Malformed(format!(
                "server info has empty blocks {}..{}",
                info.start, info.end
            ))));
        }
        if info.opinions.len() > MAX_OPINIONS {
            return Err(NetError::Proto(ProtoError::Malformed(format!(
                "server info carries {} opinions; at most {MAX_OPINIONS} are accepted",
                info.opinions.len()
            ))));
        }
        if !(info.ms_per_block.is_finite() && info.ms_per_block >= 0.0) {
            return Err(NetError::Proto(ProtoError::Malformed("server info has a bad ms_per_block".into())));
        }
        Ok(info)
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ServerInfo {
        ServerInfo {
            version: PROTOCOL_VERSION,
            peer: "12D3KooW".into(),
            model: "ab".into(),
            start: 0,
            end: 2,
            ms_per_block: 0.5,
            load: 0,
            free_slots: 8,
            addrs: vec!["/ip4/127.0.0.1/tcp/1".into()],
            at_ms: 1,
            auto: false,
            opinions: vec![Opinion { peer: "12D3KooX".into(), passed: 3, failed: 0, faults: 1, served: 9 }],
        }
    }

    #[test]
    fn round_trip_and_checks() {
        assert_eq!(ServerInfo::from_bytes(&info().to_bytes()).unwrap(), info());
        let mut bad = info();
        bad.version = 99;
        assert!(matches!(ServerInfo::from_bytes(&bad.to_bytes()), Err(NetError::Proto(ProtoError::Version { .. }))));
        let mut bad = info();
        bad.end = 0;
        assert!(ServerInfo::from_bytes(&bad.to_bytes()).is_err());
        assert!(ServerInfo::from_bytes(b"{not json").is_err());
        let mut chatty = info();
        chatty.opinions = vec![chatty.opinions[0].clone(); MAX_OPINIONS + 1];
        assert!(ServerInfo::from_bytes(&chatty.to_bytes()).is_err(), "too many opinions");
        // Announcements from before opinions existed still read.
        let mut old: serde_json::Value = serde_json::from_slice(&info().to_bytes()).unwrap();
        old.as_object_mut().unwrap().remove("opinions");
        assert!(ServerInfo::from_bytes(&serde_json::to_vec(&old).unwrap()).unwrap().opinions.is_empty());
        assert!(ServerInfo::from_bytes(&vec![b' '; MAX_INFO + 1]).is_err());
    }
}
