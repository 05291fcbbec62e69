//! Errors of the network layer.

use thiserror::Error;

/// Anything that can go wrong on the wire or in the swarm.
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

/// Result with [`NetError`].
pub type Result<T> = std::result::Result<T, NetError>;
