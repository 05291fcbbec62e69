//! The ODIN node runtime: serve a shard, hold sessions, find servers, and
//! generate through a chain of them.
//!
//! [`Node`] wires the parts together: the swarm ([`odin_net`]) behind the
//! [`transport::Transport`] seam, the [`Router`] over the [`Directory`] of
//! known servers, the local [`Server`] on the int8 engine, and the [`Client`]
//! that drives a session hop by hop (`session.rs`, `step.rs`, `hop.rs`,
//! `link.rs`, `blame.rs`, `handoff.rs`). [`cluster::LocalCluster`] starts a
//! network of node processes on one machine.

#![warn(missing_docs)]

pub mod alloc;
pub mod audit;
mod blame;
mod blocks;
pub mod cheat;
pub mod claims;
pub mod client;
pub mod cluster;
pub mod config;
pub mod directory;
pub mod error;
#[cfg(test)]
mod fake;
mod handoff;
mod hop;
pub mod keeper;
mod link;
pub mod node;
pub mod reputation;
pub mod request;
pub mod router;
pub mod server;
mod session;
mod step;
#[cfg(test)]
mod testmodel;
pub mod transport;

pub use audit::{AuditConfig, AuditReport, Auditor};
pub use blocks::{parse_blocks, split_blocks};
pub use cheat::Cheat;
pub use client::{Client, MAX_FAILOVERS};
pub use cluster::LocalCluster;
pub use config::{AutoConfig, NodeConfig, NodeOptions};
pub use directory::{Directory, Hop};
pub use error::{NodeError, Result};
pub use hop::STEP_DEADLINE;
pub use keeper::{Keeper, LedgerConfig};
pub use node::{Node, ServerStatus, Status};
pub use request::{GenerateRequest, Generation, HopStats, Relay};
pub use router::Router;
pub use server::{Server, ServerConfig};
pub use transport::Transport;
