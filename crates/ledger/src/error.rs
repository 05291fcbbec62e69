//! What can go wrong in the ledger.

use thiserror::Error;

/// Why an entry was refused: it is not a valid entry of this network's ledger.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Refused {
    /// The bytes do not decode.
    #[error("not a ledger entry: {0}")]
    Malformed(String),
    /// It belongs to another network.
    #[error("the entry is for another network (a replay from another network id)")]
    OtherNetwork,
    /// The author's signature does not verify (strictly).
    #[error("the author's signature does not verify")]
    BadSignature,
    /// A countersignature or an attestation inside it does not verify.
    #[error("the {0} does not verify")]
    BadWitness(&'static str),
    /// It names its own author where another party belongs.
    #[error("the author cannot be its own {0}")]
    SelfDealing(&'static str),
    /// It does not follow the entry before it in the feed.
    #[error("entry {seq} does not follow the feed: {why}")]
    Chain {
        /// Its seq.
        seq: u64,
        /// What is wrong.
        why: String,
    },
    /// A seq the store cannot hold.
    #[error("seq {0} is too large")]
    Seq(u64),
    /// A genesis entry anywhere but the genesis node's first entry.
    #[error("a genesis entry is only the genesis node's first entry")]
    Genesis,
}

/// Errors of the ledger's store and commands.
#[derive(Debug, Error)]
pub enum LedgerError {
    /// SQLite failed.
    #[error("ledger database: {0}")]
    Db(#[from] rusqlite::Error),
    /// Reading or writing a file failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// An entry was refused.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// A stored entry is damaged (the database was edited or corrupted).
    #[error("the stored entry {id} is damaged: {why}; restore the ledger from a peer or an export")]
    Damaged {
        /// Its id, hex.
        id: String,
        /// What is wrong.
        why: String,
    },
    /// The database belongs to another network or node.
    #[error("{0}")]
    Mismatch(String),
    /// The key cannot sign ledger entries.
    #[error("the node's identity is not an ed25519 key; the ledger needs one (delete identity.key to make a new one)")]
    NotEd25519,
}

/// Result with [`LedgerError`].
pub type Result<T> = std::result::Result<T, LedgerError>;
