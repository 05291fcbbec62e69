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
mod blame;
pub mod client;
pub mod cluster;
pub mod config;
pub mod directory;
pub mod error;
#[cfg(test)]
mod fake;
mod handoff;
mod hop;
mod link;
pub mod node;
pub mod request;
pub mod router;
pub mod server;
mod session;
mod step;
#[cfg(test)]
mod testmodel;
pub mod transport;

pub use client::{Client, MAX_FAILOVERS};
pub use cluster::LocalCluster;
pub use config::{AutoConfig, NodeConfig, NodeOptions};
pub use directory::{Directory, Hop};
pub use error::{NodeError, Result};
pub use hop::STEP_DEADLINE;
pub use node::{Node, ServerStatus, Status};
pub use request::{GenerateRequest, Generation, HopStats, Relay};
pub use router::Router;
pub use server::{Server, ServerConfig};
pub use transport::Transport;

/// Parse a block range written `A..B` (end exclusive).
pub fn parse_blocks(s: &str, layers: usize) -> std::result::Result<std::ops::Range<usize>, String> {
    let (a, b) = s.split_once("..").ok_or_else(|| format!("blocks {s:?} should look like 0..4"))?;
    let a: usize = a.trim().parse().map_err(|_| format!("{a:?} in {s:?} is not a block number"))?;
    let b: usize = b.trim().parse().map_err(|_| format!("{b:?} in {s:?} is not a block number"))?;
    if a >= b || b > layers {
        return Err(format!("blocks {a}..{b} are not a non-empty range within the model's 0..{layers}"));
    }
    Ok(a..b)
}

/// Split `layers` blocks into `n` contiguous ranges as evenly as possible (earlier ranges take the remainder).
pub fn split_blocks(layers: usize, n: usize) -> Vec<std::ops::Range<usize>> {
    let n = n.clamp(1, layers.max(1));
    let (q, r) = (layers / n, layers % n);
    let mut start = 0;
    (0..n)
        .map(|i| {
            let len = q + usize::from(i < r);
            let range = start..start + len;
            start += len;
            range
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_ranges_parse_and_split() {
        assert_eq!(parse_blocks("1..3", 4), Ok(1..3));
        assert!(parse_blocks("3..3", 4).is_err());
        assert!(parse_blocks("0..5", 4).is_err());
        assert!(parse_blocks("x..2", 4).is_err());
        assert_eq!(split_blocks(4, 3), vec![0..2, 2..3, 3..4]);
        assert_eq!(split_blocks(4, 9), vec![0..1, 1..2, 2..3, 3..4]);
        assert_eq!(split_blocks(12, 1), vec![0..12]);
    }
}
