//! ODIN's ledger, without a blockchain: each node appends signed, hash-chained entries to its
//! own feed (work receipts countersigned by the requester, uptime attested by a challenger,
//! stake, unstake, slashes with their proofs), nodes replicate each other's feeds, and every
//! node computes the same balances from the union of valid entries.
//!
//! - [`key`]: the node's ed25519 identity signs; `verify_strict` checks.
//! - [`feed`]: what makes one entry valid, alone and after its predecessor (pure).
//! - [`store`]: the feeds in SQLite, WAL and `synchronous=FULL`.
//! - [`books`]: balances, stake, rewards and slashes (pure, integer micro-units).
//! - [`network`]: a network's id, which names its genesis node.
//!
//! The bytes are `odin_proto::ledger`'s.

#![warn(missing_docs)]

pub mod books;
pub mod error;
pub mod feed;
pub mod key;
pub mod network;
pub mod store;

pub use books::{compute, Account, Books, Judge, NoVerdicts, Params, MICRO};
pub use error::{LedgerError, Refused, Result};
pub use feed::{check, Checked};
pub use key::{account_of, peer_id, show, verify, Author};
pub use network::NetworkId;
pub use store::{Inserted, Store, Verified};
