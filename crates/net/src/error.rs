//! Errors of the network layer.

use odin_proto::ProtoError;
use thiserror::Error;

/// Anything that can go wrong on the wire or in the swarm.
///
/// The protocol's errors ([`ProtoError`]) arrive as the variant of the same name, so a caller
/// matching on [`NetError::Io`] (a stream that ended) or [`NetError::Version`] sees them
/// whichever layer found them.
#[derive(Debug, Error)]
pub enum NetError {
    /// The bytes do not form a valid message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A length is over its cap.
    #[error("{what} of {size} bytes or items is over the cap of {cap}")]
    TooLarge {
        /// What was too large.
        what: String,
        /// Its size.
        size: usize,
        /// The cap.
        cap: usize,
    },
    /// The peer speaks another protocol version.
    #[error("protocol version {theirs} is not ours ({ours}); run the same odin release on every node")]
    Version {
        /// Ours.
        ours: u16,
        /// Theirs.
        theirs: u16,
    },
    /// Reading or writing failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The swarm could not be built or started.
    #[error("libp2p: {0}")]
    Swarm(String),
    /// The node's key file is unreadable or corrupt.
    #[error("identity: {0}")]
    Identity(String),
}

impl From<ProtoError> for NetError {
    fn from(e: ProtoError) -> Self {
        match e {
            ProtoError::Malformed(m) => NetError::Malformed(m),
            ProtoError::TooLarge { what, size, cap } => NetError::TooLarge { what, size, cap },
            ProtoError::Version { ours, theirs } => NetError::Version { ours, theirs },
            ProtoError::Io(e) => NetError::Io(e),
        }
    }
}

/// Result with [`NetError`].
pub type Result<T> = std::result::Result<T, NetError>;
