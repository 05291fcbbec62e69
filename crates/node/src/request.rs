//! What a generation asks for, what it gives back, and what it has produced so far.

use std::time::Instant;

use odin_format::Sampling;
use odin_proto::Dtype;
use serde::Serialize;

use crate::directory::Hop;
use crate::error::{NodeError, Result};

/// How a step travels along the chain of servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Relay {
    /// Each server pushes its output straight to the next; the last sends the token to the
    /// client. One message per hop.
    #[default]
    Chain,
    /// The client sends each hop its input and takes its output back: a round trip per hop.
    Client,
}

impl Relay {
    /// The name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Relay::Chain => "chain",
            Relay::Client => "client",
        }
    }

    /// Parse a command-line name (`chain` or `client`).
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "chain" => Ok(Relay::Chain),
            "client" => Ok(Relay::Client),
            _ => Err(NodeError::Model(format!("unknown relay {s:?}; use chain or client"))),
        }
    }
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// Prompt token ids (already formatted).
    pub prompt: Vec<u32>,
    /// Most tokens to generate.
    pub max_new: usize,
    /// Sampling (applied by the last hop).
    pub sampling: Sampling,
    /// How hidden states travel between hops.
    pub wire: Dtype,
    /// Stop before this token.
    pub stop: Option<u32>,
    /// How steps travel along the chain.
    pub relay: Relay,
}

/// Per-hop figures of one generation.
#[derive(Debug, Clone, Serialize)]
pub struct HopStats {
    /// The server and its blocks.
    #[serde(flatten)]
    pub hop: Hop,
    /// Decode steps it ran.
    pub steps: u64,
    /// Mean time per decode step this hop accounts for, µs: the client's round trip to it, or
    /// with [`Relay::Chain`] its own time plus an equal share of the chain's network time.
    pub mean_rtt_us: f64,
    /// Mean server compute per decode step, µs.
    pub mean_compute_us: f64,
    /// Mean overhead (round trip minus compute) per decode step, µs.
    pub mean_overhead_us: f64,
    /// Bytes sent plus received per decode step.
    pub bytes_per_token: f64,
}

/// The result of one generation.
#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    /// Generated token ids (without the stop token).
    pub tokens: Vec<u32>,
    /// blake3 of the last logits each decode step sampled from, hex.
    pub logits_hashes: Vec<String>,
    /// The chain and its figures.
    pub route: Vec<HopStats>,
    /// Prompt processing, ms.
    pub prefill_ms: f64,
    /// Tokens per second over the decode steps (failovers included).
    pub decode_tok_s: f64,
    /// Times the generation moved to another route after a server failed.
    pub failovers: u32,
    /// What failed, one line per failover.
    pub failures: Vec<String>,
    /// Times a leaving server handed its part of the session over (no replay needed).
    pub handoffs: u32,
    /// How the last step travelled (a chain goes on hop by hop after a handoff, or when a
    /// server cannot reach its next hop).
    pub relay: Relay,
}

/// What a generation has produced so far; it outlives a failed route.
#[derive(Default)]
pub(crate) struct Progress {
    /// Tokens generated.
    pub(crate) tokens: Vec<u32>,
    /// The hash of each step's logits, as the last hop reported it.
    pub(crate) hashes: Vec<String>,
    /// The first route's prompt processing, ms.
    pub(crate) prefill_ms: Option<f64>,
    /// When the first decode step started.
    pub(crate) decode_start: Option<Instant>,
    /// Decode steps run, on every route.
    pub(crate) decode_steps: u64,
    /// Times a leaving server handed its part over.
    pub(crate) handoffs: u32,
    /// The answer ended (stop token, the token budget, or the caller).
    pub(crate) done: bool,
}

impl Progress {
    /// Random draws the last hop's sampler has made so far: one per sampled token (none when greedy).
    pub(crate) fn draws(&self, req: &GenerateRequest) -> u64 {
        u64::from(req.sampling.draws()) * self.tokens.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_names_round_trip_and_unknown_ones_are_refused() {
        for r in [Relay::Chain, Relay::Client] {
            assert_eq!(Relay::parse(r.name()).ok(), Some(r));
        }
        assert!(Relay::parse("carrier pigeon").is_err());
        assert_eq!(serde_json::to_string(&Relay::Client).ok().as_deref(), Some("\"client\""));
    }

    #[test]
    fn only_a_sampling_sampler_has_drawn() {
        let mut req = GenerateRequest {
            prompt: vec![1],
            max_new: 4,
            sampling: Sampling::default(),
            wire: Dtype::F32,
            stop: None,
            relay: Relay::Chain,
        };
        let progress = Progress { tokens: vec![5, 6, 7], ..Progress::default() };
        assert_eq!(progress.draws(&req), 0, "greedy draws nothing");
        req.sampling.temperature = 0.7;
        assert_eq!(progress.draws(&req), 3, "one draw per sampled token");
    }
}
