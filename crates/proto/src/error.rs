//! Errors of the wire protocol.

use thiserror::Error;

/// Anything that can be wrong with bytes on the wire, or with reading and writing them.
#[derive(Debug, Error)]
pub enum ProtoError {
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
    /// The peer speaks another version of the service's protocol.
    #[error("protocol version {theirs} is not ours ({ours}); run the same odin release on every node")]
    Version {
        /// Ours.
        ours: u16,
        /// Theirs.
        theirs: u16,
    },
    /// Reading or writing a frame failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Result with [`ProtoError`].
pub type Result<T> = std::result::Result<T, ProtoError>;
