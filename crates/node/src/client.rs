//! Generating through the network: pick a chain, open a session on each hop, pass activations along.
//!
//! The client drives every hop itself (as Petals does): it sends hop i's
//! output to hop i+1 and gets the sampled token back from the last hop. That
//! costs a round trip per hop, but the client always knows which hop failed
//! and holds the token history, which is what failover needs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use odin_net::wire::{read_frame, write_frame, MAX_FRAME};
use odin_net::{Dtype, Envelope, PeerId, Request, Response, Sampling, StepInput};
use serde::Serialize;

use crate::directory::Hop;
use crate::error::{NodeError, Result};
use crate::node::Node;
use crate::server::Server;

/// Longest a client waits for one hop's answer.
pub const STEP_DEADLINE: Duration = Duration::from_secs(30);

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
}

/// Per-hop figures of one generation.
#[derive(Debug, Clone, Serialize)]
pub struct HopStats {
    /// The server and its blocks.
    #[serde(flatten)]
    pub hop: Hop,
    /// Decode steps it ran.
    pub steps: u64,
    /// Mean client-side round trip per decode step, µs.
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
    /// Tokens per second over the decode steps.
    pub decode_tok_s: f64,
}

enum Link {
    Remote { peer: PeerId, stream: Box<odin_net::Stream> },
    Local(Arc<Server>),
}

impl Link {
    async fn call(&mut self, model: odin_format::ModelId, msg: Request) -> Result<(Response, usize)> {
        let bytes = Envelope { model, msg }.to_bytes();
        match self {
            // The same request path as a remote hop, but no byte crosses a wire.
            Link::Local(server) => Ok((server.clone().respond(&bytes).await, 0)),
            Link::Remote { peer, stream } => {
                let peer_s = peer.to_string();
                let fut = async {
                    write_frame(stream.as_mut(), &bytes).await?;
                    read_frame(stream.as_mut(), MAX_FRAME).await
                };
                let frame = tokio::time::timeout(STEP_DEADLINE, fut)
                    .await
                    .map_err(|_| NodeError::Timeout(peer_s.clone()))??;
                let env = Envelope::<Response>::from_bytes(&frame)
                    .map_err(|e| NodeError::Protocol { peer: peer_s.clone(), what: e.to_string() })?;
                if env.model != model {
                    return Err(NodeError::Protocol {
                        peer: peer_s,
                        what: format!("answered for model {}", env.model),
                    });
                }
                Ok((env.msg, bytes.len() + frame.len() + 8))
            }
        }
    }
}

/// Ask `peer` for its announcement over the shard protocol.
pub async fn fetch_info(node: &Node, peer: PeerId) -> Result<odin_net::ServerInfo> {
    let stream = node.net().open_stream(peer).await?;
    let mut link = Link::Remote { peer, stream: Box::new(stream) };
    match link.call(node.model(), Request::Info).await?.0 {
        Response::Info(json) => Ok(odin_net::ServerInfo::from_bytes(&json)?),
        other => Err(NodeError::Protocol { peer: peer.to_string(), what: format!("answered Info with {other:?}") }),
    }
}

fn remote_err(hop: &Hop, r: Response) -> NodeError {
    match r {
        Response::Error { code, message } => NodeError::Remote { peer: hop.peer.to_string(), code, message },
        other => {
            NodeError::Protocol { peer: hop.peer.to_string(), what: format!("unexpected answer {}", kind(&other)) }
        }
    }
}

fn kind(r: &Response) -> &'static str {
    match r {
        Response::Info(_) => "Info",
        Response::Opened { .. } => "Opened",
        Response::Hidden { .. } => "Hidden",
        Response::Token { .. } => "Token",
        Response::Closed => "Closed",
        Response::Error { .. } => "Error",
    }
}

struct HopRun {
    hop: Hop,
    link: Link,
    steps: u64,
    rtt_us: f64,
    compute_us: f64,
    bytes: f64,
}

impl HopRun {
    /// Call this hop; a failure puts its server on backoff in the node's directory.
    async fn call(&mut self, node: &Node, msg: Request) -> Result<(Response, usize)> {
        let r = self.link.call(node.model(), msg).await;
        if r.is_err() {
            node.report_failure(&self.hop.peer);
        }
        r
    }

    /// The answer was not the one expected: say so, and back off from the server.
    fn refused(&self, node: &Node, r: Response) -> NodeError {
        node.report_failure(&self.hop.peer);
        remote_err(&self.hop, r)
    }
}

/// Run `req` through `route` (from [`Node::route`]), calling `on_token` with each token;
/// `on_token` may stop the generation by returning false.
pub async fn generate_on(
    node: &Node,
    route: &[Hop],
    req: &GenerateRequest,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<Generation> {
    if req.prompt.is_empty() {
        return Err(NodeError::Model("the prompt has no tokens".into()));
    }
    let model = node.model();
    let session: u64 = rand::random();
    let mut hops = Vec::with_capacity(route.len());
    for hop in route {
        let link = if hop.peer == node.peer_id() {
            match node.server() {
                Some(s) => Link::Local(s.clone()),
                None => return Err(NodeError::NoRoute("the route names this node, which serves nothing".into())),
            }
        } else {
            let stream = tokio::time::timeout(STEP_DEADLINE, node.net().open_stream(hop.peer))
                .await
                .map_err(|_| NodeError::Timeout(hop.peer.to_string()))??;
            Link::Remote { peer: hop.peer, stream: Box::new(stream) }
        };
        hops.push(HopRun { hop: hop.clone(), link, steps: 0, rtt_us: 0.0, compute_us: 0.0, bytes: 0.0 });
    }
    for h in &mut hops {
        let open = Request::Open {
            session,
            start: h.hop.start as u32,
            end: h.hop.end as u32,
            sampling: req.sampling,
            reply: req.wire,
        };
        match h.call(node, open).await? {
            (Response::Opened { .. }, _) => {}
            (r, _) => return Err(h.refused(node, r)),
        }
    }
    let result = run_steps(node, session, &mut hops, req, &mut on_token).await;
    for h in &mut hops {
        // Closing is a courtesy: sessions also expire on their own.
        let _ = h.link.call(model, Request::Close { session }).await;
    }
    let (tokens, hashes, prefill_ms, decode_s) = result?;
    hops.iter().for_each(|h| node.report_success(&h.hop.peer));
    let decoded = hops.first().map_or(0, |h| h.steps);
    Ok(Generation {
        tokens,
        logits_hashes: hashes,
        route: hops
            .iter()
            .map(|h| {
                let n = h.steps.max(1) as f64;
                HopStats {
                    hop: h.hop.clone(),
                    steps: h.steps,
                    mean_rtt_us: h.rtt_us / n,
                    mean_compute_us: h.compute_us / n,
                    mean_overhead_us: (h.rtt_us - h.compute_us) / n,
                    bytes_per_token: h.bytes / n,
                }
            })
            .collect(),
        prefill_ms,
        decode_tok_s: if decode_s > 0.0 { decoded as f64 / decode_s } else { 0.0 },
    })
}

type StepsOut = (Vec<u32>, Vec<String>, f64, f64);

async fn run_steps(
    node: &Node,
    session: u64,
    hops: &mut [HopRun],
    req: &GenerateRequest,
    on_token: &mut impl FnMut(u32) -> bool,
) -> Result<StepsOut> {
    let mut tokens = Vec::new();
    let mut hashes = Vec::new();
    let mut input = req.prompt.clone();
    let t0 = Instant::now();
    let mut prefill_ms = 0.0;
    let mut decode_start = Instant::now();
    if req.max_new == 0 {
        return Ok((tokens, hashes, 0.0, 0.0));
    }
    for step in 0.. {
        let decoding = step > 0;
        let mut x = StepInput::Tokens(std::mem::take(&mut input));
        let mut token = None;
        let last = hops.len() - 1;
        for (i, h) in hops.iter_mut().enumerate() {
            let t = Instant::now();
            let (r, bytes) = h.call(node, Request::Step { session, input: x }).await?;
            let rtt = t.elapsed().as_secs_f64() * 1e6;
            let compute = match (&r, i == last) {
                (Response::Hidden { tensor, compute_us }, false) => {
                    x = StepInput::Hidden(tensor.clone());
                    *compute_us
                }
                (Response::Token { id, logits_hash, compute_us }, true) => {
                    token = Some(*id);
                    hashes.push(blake3::Hash::from_bytes(*logits_hash).to_hex().to_string());
                    // The last hop: nothing goes further.
                    x = StepInput::Tokens(Vec::new());
                    *compute_us
                }
                _ => return Err(h.refused(node, r)),
            };
            if decoding {
                h.steps += 1;
                h.rtt_us += rtt;
                h.compute_us += f64::from(compute);
                h.bytes += bytes as f64;
            }
        }
        if step == 0 {
            prefill_ms = t0.elapsed().as_secs_f64() * 1e3;
            decode_start = Instant::now();
        }
        let tok =
            token.ok_or_else(|| NodeError::Protocol { peer: String::new(), what: "no token came back".into() })?;
        if Some(tok) == req.stop {
            // The stop token was sampled but is not part of the answer.
            hashes.pop();
            break;
        }
        tokens.push(tok);
        if !on_token(tok) || tokens.len() == req.max_new {
            break;
        }
        input = vec![tok];
    }
    Ok((tokens, hashes, prefill_ms, decode_start.elapsed().as_secs_f64()))
}
