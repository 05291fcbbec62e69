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

/// Longest a client waits for one hop's answer (a long prefill on a slow machine).
pub const STEP_DEADLINE: Duration = Duration::from_secs(30);
/// A decode step taking this many times the hop's usual round trip counts as a stall…
const STALL_FACTOR: f64 = 50.0;
/// …but never before this long (a busy machine's scheduling hiccups are not stalls).
const MIN_STALL: Duration = Duration::from_secs(2);

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
    /// Tokens per second over the decode steps (failovers included).
    pub decode_tok_s: f64,
    /// Times the generation moved to another route after a server failed.
    pub failovers: u32,
    /// What failed, one line per failover.
    pub failures: Vec<String>,
    /// Times a leaving server handed its part of the session over (no replay needed).
    pub handoffs: u32,
}

enum Link {
    Remote { peer: PeerId, stream: Box<odin_net::Stream> },
    Local(Arc<Server>),
}

impl Link {
    async fn call(
        &mut self,
        model: odin_format::ModelId,
        msg: Request,
        deadline: Duration,
    ) -> Result<(Response, usize)> {
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
                let frame =
                    tokio::time::timeout(deadline, fut).await.map_err(|_| NodeError::Timeout(peer_s.clone()))??;
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
    match link.call(node.model(), Request::Info, STEP_DEADLINE).await?.0 {
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
        Response::Handoff { .. } => "Handoff",
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
    /// Round trip of the prefill step, µs: the first decode step costs no more.
    prefill_us: f64,
}

impl HopRun {
    /// Call this hop; a failure puts its server on backoff in the node's directory.
    async fn call(&mut self, node: &Node, msg: Request) -> Result<(Response, usize)> {
        self.call_within(node, msg, STEP_DEADLINE).await
    }

    async fn call_within(&mut self, node: &Node, msg: Request, deadline: Duration) -> Result<(Response, usize)> {
        let r = self.link.call(node.model(), msg, deadline).await;
        if r.is_err() {
            node.report_failure(&self.hop.peer);
        }
        r
    }

    /// One step. A decode step that takes far longer than this hop's usual one (its mean decode
    /// round trip; before the first, its prefill's, which did more work) is a stall, so a server
    /// that hangs, or died without a word as a killed QUIC peer does, is left fast.
    async fn step(&mut self, node: &Node, msg: Request, decoding: bool) -> Result<(Response, usize)> {
        let usual_us = if self.steps > 0 { self.rtt_us / self.steps as f64 } else { self.prefill_us };
        let deadline = if decoding && usual_us > 0.0 {
            Duration::from_secs_f64(usual_us * STALL_FACTOR / 1e6).clamp(MIN_STALL, STEP_DEADLINE)
        } else {
            STEP_DEADLINE
        };
        self.call_within(node, msg, deadline).await
    }

    /// Open (or resume) the session on this hop.
    async fn open(&mut self, node: &Node, msg: Request) -> std::result::Result<(), Failure> {
        match self.call(node, msg).await {
            Ok((Response::Opened { .. }, _)) => Ok(()),
            Ok((r, _)) => Err(blame(self.refused(node, r), self.hop.peer)),
            Err(e) => Err(blame(e, self.hop.peer)),
        }
    }

    /// The answer was not the one expected: say so, and back off from the server.
    fn refused(&self, node: &Node, r: Response) -> NodeError {
        node.report_failure(&self.hop.peer);
        remote_err(&self.hop, r)
    }
}

/// What a generation has produced so far; it outlives a failed route.
#[derive(Default)]
pub struct Progress {
    tokens: Vec<u32>,
    hashes: Vec<String>,
    prefill_ms: Option<f64>,
    decode_start: Option<Instant>,
    decode_steps: u64,
    handoffs: u32,
    done: bool,
}

/// A failed attempt: the error, and the server to route around when another route may succeed.
pub struct Failure {
    /// What went wrong.
    pub error: NodeError,
    /// The server that failed, when the failure is the server's (dead, stalled, garbage, refusing).
    pub peer: Option<PeerId>,
}

impl From<NodeError> for Failure {
    fn from(error: NodeError) -> Self {
        Failure { error, peer: None }
    }
}

/// Whether another server could do better than `peer` did: transport failures, deadlines,
/// garbage and server-side refusals; not our own bad input.
fn blame(error: NodeError, peer: PeerId) -> Failure {
    use odin_net::ErrorCode::{BadInput, Malformed};
    let server_side = match &error {
        NodeError::Remote { code, .. } => !matches!(code, BadInput | Malformed),
        NodeError::Net(_) | NodeError::Timeout(_) | NodeError::Protocol { .. } => true,
        _ => false,
    };
    Failure { error, peer: server_side.then_some(peer) }
}

/// Run `req` through `route` (from [`Node::route`]), continuing from `progress`, calling
/// `on_token` with each new token; `on_token` may stop the generation by returning false.
///
/// After a failover the new route replays the prompt and every token generated so far in one
/// prefill, and the last hop's sampler skips the draws already made: the engine is
/// deterministic, so the continuation is the one the failed route would have produced.
pub async fn generate_on(
    node: &Node,
    route: &[Hop],
    req: &GenerateRequest,
    progress: &mut Progress,
    mut on_token: impl FnMut(u32) -> bool,
) -> std::result::Result<Generation, Failure> {
    if req.prompt.is_empty() {
        return Err(NodeError::Model("the prompt has no tokens".into()).into());
    }
    let model = node.model();
    let session: u64 = rand::random();
    let mut hops = Vec::with_capacity(route.len());
    for hop in route {
        hops.push(connect(node, hop).await?);
    }
    let drawn = draws(req, progress);
    for h in &mut hops {
        let open = Request::Open {
            session,
            start: h.hop.start as u32,
            end: h.hop.end as u32,
            sampling: req.sampling,
            drawn,
            reply: req.wire,
        };
        h.open(node, open).await?;
    }
    let result = run_steps(node, session, &mut hops, req, progress, &mut on_token).await;
    let failed = result.as_ref().err().and_then(|f| f.peer);
    for h in hops.iter_mut().filter(|h| Some(h.hop.peer) != failed) {
        // Closing is a courtesy (sessions also expire on their own), and never to the server
        // that just failed: a dead one would only make the failover wait.
        let _ = h.link.call(model, Request::Close { session }, MIN_STALL).await;
    }
    result?;
    for h in &hops {
        node.report_success(&h.hop.peer);
        if h.steps > 0 {
            node.report_observed(&h.hop.peer, h.rtt_us / h.steps as f64 / h.hop.blocks() as f64);
        }
    }
    let decoded = progress.decode_steps;
    let decode_s = progress.decode_start.map_or(0.0, |t| t.elapsed().as_secs_f64());
    Ok(Generation {
        tokens: progress.tokens.clone(),
        logits_hashes: progress.hashes.clone(),
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
        prefill_ms: progress.prefill_ms.unwrap_or(0.0),
        decode_tok_s: if decode_s > 0.0 { decoded as f64 / decode_s } else { 0.0 },
        failovers: 0,
        failures: Vec::new(),
        handoffs: progress.handoffs,
    })
}

/// Random draws the last hop's sampler has made so far: one per sampled token (none when greedy).
fn draws(req: &GenerateRequest, progress: &Progress) -> u64 {
    u64::from(req.sampling.temperature > 0.0) * progress.tokens.len() as u64
}

/// Open a link to `hop`'s server (a local call when it is this node).
async fn connect(node: &Node, hop: &Hop) -> std::result::Result<HopRun, Failure> {
    let link = if hop.peer == node.peer_id() {
        match node.server() {
            Some(s) => Link::Local(s.clone()),
            None => return Err(NodeError::NoRoute("the route names this node, which serves nothing".into()).into()),
        }
    } else {
        let opened = tokio::time::timeout(STEP_DEADLINE, node.net().open_stream(hop.peer))
            .await
            .map_err(|_| NodeError::Timeout(hop.peer.to_string()))
            .and_then(|r| r.map_err(NodeError::from));
        match opened {
            Ok(stream) => Link::Remote { peer: hop.peer, stream: Box::new(stream) },
            Err(e) => {
                node.report_failure(&hop.peer);
                return Err(blame(e, hop.peer));
            }
        }
    };
    Ok(HopRun { hop: hop.clone(), link, steps: 0, rtt_us: 0.0, compute_us: 0.0, bytes: 0.0, prefill_us: 0.0 })
}

/// `old`'s server left and handed back the session's `state` over its blocks: resume the session
/// on other servers for those blocks (several, when no one server holds them all), each from its
/// slice of the state. The step `old` refused is then run on them; nothing is replayed.
async fn take_over(
    node: &Node,
    session: u64,
    old: Hop,
    state: odin_net::Tensor,
    req: &GenerateRequest,
    progress: &Progress,
) -> std::result::Result<Vec<HopRun>, Failure> {
    let (start, end) = (old.start, old.end);
    let bad = |what: String| {
        node.report_failure(&old.peer);
        Failure { error: NodeError::Protocol { peer: old.peer.to_string(), what }, peer: Some(old.peer) }
    };
    if !state.rows.is_multiple_of(end - start) {
        return Err(bad(format!("handed over {} state rows for {} blocks", state.rows, end - start)));
    }
    let per_block = state.rows / (end - start);
    let rows = state.decode().map_err(|e| bad(e.to_string()))?;
    let route = node.wait_for_span(start..end, &[old.peer], Duration::from_secs(10)).await.map_err(|error| {
        node.report_failure(&old.peer);
        Failure { error, peer: Some(old.peer) }
    })?;
    let mut hops = Vec::with_capacity(route.len());
    for hop in &route {
        let mut h = connect(node, hop).await?;
        let slice = &rows[(hop.start - start) * per_block * state.cols..(hop.end - start) * per_block * state.cols];
        let state = odin_net::Tensor::encode(slice, state.cols, Dtype::F32).map_err(|e| bad(e.to_string()))?;
        let resume = Request::Resume {
            session,
            start: hop.start as u32,
            end: hop.end as u32,
            sampling: req.sampling,
            drawn: draws(req, progress),
            reply: req.wire,
            state,
        };
        h.open(node, resume).await?;
        hops.push(h);
    }
    Ok(hops)
}

async fn run_steps(
    node: &Node,
    session: u64,
    hops: &mut Vec<HopRun>,
    req: &GenerateRequest,
    progress: &mut Progress,
    on_token: &mut impl FnMut(u32) -> bool,
) -> std::result::Result<(), Failure> {
    if req.max_new == 0 || progress.done {
        return Ok(());
    }
    // The prompt and every token generated so far: the whole history on a fresh route.
    let mut input: Vec<u32> = req.prompt.iter().chain(&progress.tokens).copied().collect();
    let t0 = Instant::now();
    for step in 0.. {
        let decoding = step > 0;
        let mut x = StepInput::Tokens(std::mem::take(&mut input));
        let mut token = None;
        let mut i = 0;
        while i < hops.len() {
            let last = i + 1 == hops.len();
            let h = &mut hops[i];
            let t = Instant::now();
            // Kept in case the hop hands its session over and the step goes to its successors.
            let sent = x.clone();
            let (r, bytes) =
                h.step(node, Request::Step { session, input: x }, decoding).await.map_err(|e| blame(e, h.hop.peer))?;
            let rtt = t.elapsed().as_secs_f64() * 1e6;
            let compute = match (r, last) {
                (Response::Hidden { tensor, compute_us }, false) => {
                    x = StepInput::Hidden(tensor);
                    compute_us
                }
                (Response::Token { id, logits_hash, compute_us }, true) => {
                    token = Some((id, blake3::Hash::from_bytes(logits_hash).to_hex().to_string()));
                    // The last hop: nothing goes further.
                    x = StepInput::Tokens(Vec::new());
                    compute_us
                }
                (Response::Handoff { state }, _) => {
                    tracing::info!("server {} is leaving; moving its part of the session", h.hop.peer);
                    let new = take_over(node, session, h.hop.clone(), state, req, progress).await?;
                    hops.splice(i..=i, new);
                    progress.handoffs += 1;
                    x = sent;
                    continue;
                }
                (r, _) => return Err(blame(h.refused(node, r), h.hop.peer)),
            };
            if decoding && last {
                progress.decode_steps += 1;
            }
            if decoding {
                h.steps += 1;
                h.rtt_us += rtt;
                h.compute_us += f64::from(compute);
                h.bytes += bytes as f64;
            } else {
                h.prefill_us = rtt;
            }
            i += 1;
        }
        if progress.prefill_ms.is_none() {
            progress.prefill_ms = Some(t0.elapsed().as_secs_f64() * 1e3);
            progress.decode_start = Some(Instant::now());
        }
        let Some((tok, hash)) = token else {
            return Err(NodeError::Protocol { peer: String::new(), what: "no token came back".into() }.into());
        };
        // The stop token is sampled but is not part of the answer.
        if Some(tok) == req.stop {
            progress.done = true;
            break;
        }
        progress.tokens.push(tok);
        progress.hashes.push(hash);
        if !on_token(tok) || progress.tokens.len() == req.max_new {
            progress.done = true;
            break;
        }
        input = vec![tok];
    }
    Ok(())
}
