//! Errors of the network layer.

use odin_proto::ProtoError;
use thiserror::Error;

/// Anything that can go wrong on the wire or in the swarm.
#[derive(Debug, Error)]
pub enum NetError {
    /// Bytes that break the protocol (malformed, over a cap, another version) or a stream that
    /// failed: the protocol crate's errors, whichever layer found them.
    #[error(transparent)]
    Proto(#[from] ProtoError),
    /// The swarm could not be built or started.
    #[error("libp2p: {0}")]
    Swarm(String),
    /// The node's key file is unreadable or corrupt.
    #[error("identity: {0}")]
    Identity(String),
}

impl From<std::io::Error> for NetError {
    fn from(e: std::io::Error) -> Self {
        NetError::Proto(ProtoError::Io(e))
    }
}

/// Result with [`NetError`].
pub type Result<T> = std::result::Result<T, NetError>;
