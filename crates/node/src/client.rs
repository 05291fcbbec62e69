//! Generating through the network: pick a chain, open a session on each hop, pass activations along.
//!
//! Two ways a step travels ([`Relay`]). By default the servers pass it along
//! the chain themselves: the client sends the input to the first hop, each hop
//! pushes its output to the next, and the last sends the sampled token back to
//! the client, one message per hop. With [`Relay::Client`] the client drives
//! every hop itself (as Petals does): a round trip per hop. Either way the
//! client holds the token history and a stream to every hop, and learns which
//! hop failed: a pushing hop that fails, or cannot reach its next hop, says so
//! on the client's stream, and a stalled chain is probed hop by hop. That is
//! what failover needs; after a handoff the generation goes on hop by hop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::io::WriteHalf;
use futures::AsyncReadExt;
use odin_net::wire::{read_frame, write_frame, MAX_FRAME};
use odin_net::{Dtype, Envelope, HopTime, PeerId, Request, Response, Sampling, StepInput, Tensor};
use serde::Serialize;
use tokio::sync::mpsc;

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
/// Longest a hop of a stalled push may take to say how far it got.
const PROBE_DEADLINE: Duration = Duration::from_secs(1);

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

enum Link {
    Remote(Remote),
    Local(Arc<Server>),
}

/// Frames a hop's reader may queue before it stops reading that hop's stream.
const FRAME_SLACK: usize = 4;

/// A stream to a remote hop. A task reads its frames into a queue, so the client can wait on
/// every hop of a chain at once without losing half-read frames.
struct Remote {
    peer: PeerId,
    out: WriteHalf<odin_net::Stream>,
    frames: mpsc::Receiver<odin_net::Result<Vec<u8>>>,
    reader: tokio::task::JoinHandle<()>,
    /// The next hop this hop said was down, unasked ([`Response::NextHopDown`]), and why. Kept
    /// when it arrives during a request, which it does not answer.
    down: Option<(PeerId, String)>,
}

impl Drop for Remote {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Remote {
    fn new(peer: PeerId, stream: odin_net::Stream) -> Self {
        let (mut rd, out) = stream.split();
        // Bounded: a server gets one answer in per request, so a few frames of slack suffice, and
        // one that floods frames nobody asked for stalls on its own stream instead of filling
        // this node's memory.
        let (tx, frames) = mpsc::channel(FRAME_SLACK);
        let reader = tokio::spawn(async move {
            loop {
                let frame = read_frame(&mut rd, MAX_FRAME).await;
                let end = frame.is_err();
                if tx.send(frame).await.is_err() || end {
                    return;
                }
            }
        });
        Remote { peer, out, frames, reader, down: None }
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        Ok(write_frame(&mut self.out, bytes).await?)
    }

    async fn recv(&mut self) -> odin_net::Result<Vec<u8>> {
        match self.frames.recv().await {
            Some(f) => f,
            None => Err(odin_net::NetError::Io(std::io::Error::from(std::io::ErrorKind::UnexpectedEof))),
        }
    }

    /// The next frame that answers a request, and its length. A next-hop notice on the way is
    /// no answer: it is kept in `down`, for whoever looks for the hop at fault.
    async fn answer(&mut self, model: odin_format::ModelId) -> Result<(Response, usize)> {
        loop {
            let frame = self.recv().await?;
            match parse(&self.peer, model, &frame)? {
                Response::NextHopDown { next, reason, .. } => self.down = Some((next, reason)),
                r => return Ok((r, frame.len())),
            }
        }
    }
}

/// Decode a frame from `peer`: a response for `model`.
fn parse(peer: &PeerId, model: odin_format::ModelId, frame: &[u8]) -> Result<Response> {
    let env = Envelope::<Response>::from_bytes(frame)
        .map_err(|e| NodeError::Protocol { peer: peer.to_string(), what: e.to_string() })?;
    if env.model != model {
        return Err(NodeError::Protocol { peer: peer.to_string(), what: format!("answered for model {}", env.model) });
    }
    Ok(env.msg)
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
            Link::Local(server) => match server.clone().respond(&bytes).await {
                Some(r) => Ok((r, 0)),
                None => Err(NodeError::Model("this node's server passed a request on instead of answering".into())),
            },
            Link::Remote(r) => {
                let peer = r.peer;
                let fut = async {
                    r.send(&bytes).await?;
                    r.answer(model).await
                };
                let (resp, len) =
                    tokio::time::timeout(deadline, fut).await.map_err(|_| NodeError::Timeout(peer.to_string()))??;
                Ok((resp, bytes.len() + len + 8))
            }
        }
    }
}

/// Ask `peer` for its announcement over the shard protocol.
pub async fn fetch_info(node: &Node, peer: PeerId) -> Result<odin_net::ServerInfo> {
    let stream = node.net().open_stream(peer).await?;
    let mut link = Link::Remote(Remote::new(peer, stream));
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
        Response::Linked { .. } => "Linked",
        Response::Pushed { .. } => "Pushed",
        Response::Progress { .. } => "Progress",
        Response::NextHopDown { .. } => "NextHopDown",
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

    /// The next hop this hop said was down while answering a request, and why.
    fn reported_down(&self) -> Option<(PeerId, String)> {
        match &self.link {
            Link::Remote(r) => r.down.clone(),
            Link::Local(_) => None,
        }
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
        NodeError::Net(_) | NodeError::Timeout(_) | NodeError::Protocol { .. } | NodeError::HopDown { .. } => true,
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
    // The chain needs a stream from the client to every hop after the first, for the token
    // and for failures; this node's own server can only be the first hop.
    let chain = req.relay == Relay::Chain
        && hops.len() > 1
        && hops[1..].iter().all(|h| matches!(h.link, Link::Remote(_)))
        && link_chain(node, session, &mut hops).await?;
    let result = run_steps(node, session, &mut hops, req, progress, &mut on_token, chain).await;
    let failed = result.as_ref().err().and_then(|f| f.peer);
    for h in hops.iter_mut().filter(|h| Some(h.hop.peer) != failed) {
        // Closing is a courtesy (sessions also expire on their own), and never to the server
        // that just failed: a dead one would only make the failover wait.
        let _ = h.link.call(model, Request::Close { session }, MIN_STALL).await;
    }
    let chain = result?;
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
        relay: if chain { Relay::Chain } else { Relay::Client },
    })
}

/// Ask each hop but the last to push its outputs to the next. False when a server could not
/// link (it cannot reach the next hop, say): the generation then goes hop by hop.
async fn link_chain(node: &Node, session: u64, hops: &mut [HopRun]) -> std::result::Result<bool, Failure> {
    for i in 0..hops.len() - 1 {
        let next = hops[i + 1].hop.peer;
        let h = &mut hops[i];
        match h.call(node, Request::Link { session, next }).await {
            Ok((Response::Linked { .. }, _)) => {}
            Ok((r, _)) => {
                tracing::info!(
                    "server {} cannot push to {next} ({}); the client relays every hop",
                    h.hop.peer,
                    kind(&r)
                );
                return Ok(false);
            }
            Err(e) => return Err(blame(e, h.hop.peer)),
        }
    }
    Ok(true)
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
            Ok(stream) => Link::Remote(Remote::new(hop.peer, stream)),
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

/// The client's figures for a chain's pushed steps.
#[derive(Default)]
struct ChainStats {
    steps: u64,
    rtt_us: f64,
    prefill_us: f64,
}

impl ChainStats {
    /// A pushed decode step's usual round trip (before the first, the prefill's), µs.
    fn usual_us(&self) -> f64 {
        if self.steps > 0 {
            self.rtt_us / self.steps as f64
        } else {
            self.prefill_us
        }
    }
}

/// What one pushed step gave.
enum Pushed {
    /// The sampled token and the hash of its logits.
    Token(u32, String),
    /// Hop `at` is leaving and did not run the step: its state, and the input it was given.
    Handoff { at: usize, state: Tensor, input: StepInput },
}

/// Run one step down the chain: send `x` to the first hop, then wait for the token from the
/// last, or for the first hop to report a failure. `done` is how many steps each hop will have
/// completed after this one (what a probe of a stalled chain checks).
async fn push_step(
    node: &Node,
    session: u64,
    hops: &mut [HopRun],
    x: StepInput,
    decoding: bool,
    done: u64,
    chain: &mut ChainStats,
) -> std::result::Result<Pushed, Failure> {
    let model = node.model();
    let t = Instant::now();
    let bytes = Envelope { model, msg: Request::Push { session, input: x, hops: Vec::new() } }.to_bytes();
    let first = hops[0].hop.peer;
    match &mut hops[0].link {
        Link::Local(server) => {
            // This node's own server answers only when it could not pass the step on.
            if let Some(r) = server.clone().respond(&bytes).await {
                return Err(refusal(node, hops, 0, r));
            }
        }
        Link::Remote(r) => {
            if let Err(e) = r.send(&bytes).await {
                node.report_failure(&first);
                return Err(blame(e, first));
            }
        }
    }
    let usual_us = chain.usual_us();
    let deadline = if decoding && usual_us > 0.0 {
        Duration::from_secs_f64(usual_us * STALL_FACTOR / 1e6).clamp(MIN_STALL, STEP_DEADLINE)
    } else {
        STEP_DEADLINE
    };
    let (i, frame) = match tokio::time::timeout(deadline, next_frame(hops)).await {
        Err(_) => {
            tracing::debug!("session {session:016x}: step {done} stalled past {deadline:?}; probing the chain");
            return Err(find_stall(node, session, hops, done).await);
        }
        Ok((i, Err(e))) => {
            let peer = hops[i].hop.peer;
            tracing::debug!("session {session:016x}: step {done}: stream to hop {i} ({peer}) failed: {e}");
            node.report_failure(&peer);
            return Err(blame(e.into(), peer));
        }
        Ok((i, Ok(frame))) => (i, frame),
    };
    let peer = hops[i].hop.peer;
    let resp = parse(&peer, model, &frame).map_err(|e| {
        node.report_failure(&peer);
        blame(e, peer)
    })?;
    let n = hops.len();
    match resp {
        Response::Pushed { id, logits_hash, hops: times } if i + 1 == n && times.len() == n => {
            let total_us = t.elapsed().as_secs_f64() * 1e6;
            // The network's part of the round trip (and any time no hop accounts for), shared
            // equally: each hop's overhead is its own non-compute time plus that share.
            let own: f64 = times.iter().map(|h| f64::from(h.elapsed_us)).sum();
            let share = (total_us - own).max(0.0) / n as f64;
            for (k, (h, ht)) in hops.iter_mut().zip(&times).enumerate() {
                let out = times.get(k + 1).map_or(frame.len() as u32, |n: &HopTime| n.bytes_in);
                let rtt = f64::from(ht.elapsed_us) + share;
                if decoding {
                    h.steps += 1;
                    h.rtt_us += rtt;
                    h.compute_us += f64::from(ht.compute_us);
                    h.bytes += f64::from(ht.bytes_in) + f64::from(out) + 8.0;
                } else {
                    h.prefill_us = rtt;
                }
            }
            if decoding {
                chain.steps += 1;
                chain.rtt_us += total_us;
            } else {
                chain.prefill_us = total_us;
            }
            Ok(Pushed::Token(id, blake3::Hash::from_bytes(logits_hash).to_hex().to_string()))
        }
        Response::Handoff { state, input: Some(input) } => Ok(Pushed::Handoff { at: i, state, input }),
        r => Err(refusal(node, hops, i, r)),
    }
}

/// Hop `i` answered a push with `r` (not a token): blame the hop at fault.
fn refusal(node: &Node, hops: &[HopRun], i: usize, r: Response) -> Failure {
    tracing::debug!("hop {i} ({}) answered a push with {r:?}", hops[i].hop.peer);
    match r {
        Response::NextHopDown { next, reason, .. } => next_hop_down(node, hops, i, next, reason),
        r => blame(hops[i].refused(node, r), hops[i].hop.peer),
    }
}

/// Hop `i` says its next hop `next` is down: blame `next`, the hop after `i`. A hop naming a
/// peer that is not its next hop is out of protocol, and is blamed itself.
fn next_hop_down(node: &Node, hops: &[HopRun], i: usize, next: PeerId, reason: String) -> Failure {
    let by = hops[i].hop.peer;
    if hops.get(i + 1).is_none_or(|h| h.hop.peer != next) {
        node.report_failure(&by);
        let what = format!("said {next} was down, which is not its next hop");
        return Failure { error: NodeError::Protocol { peer: by.to_string(), what }, peer: Some(by) };
    }
    node.report_failure(&next);
    Failure { error: NodeError::HopDown { peer: next.to_string(), by: by.to_string(), reason }, peer: Some(next) }
}

/// The first frame any remote hop sends, and which hop sent it.
async fn next_frame(hops: &mut [HopRun]) -> (usize, odin_net::Result<Vec<u8>>) {
    let waits: Vec<_> = hops
        .iter_mut()
        .enumerate()
        .filter_map(|(i, h)| match &mut h.link {
            Link::Remote(r) => Some(Box::pin(async move { (i, r.recv().await) })),
            Link::Local(_) => None,
        })
        .collect();
    if waits.is_empty() {
        return futures::future::pending().await;
    }
    futures::future::select_all(waits).await.0
}

/// A pushed step went past its deadline: ask each hop in order how far it got. The first that
/// does not answer, or has not finished the step, is the one that stalled.
///
/// A hop that said, unasked, that its next hop is down (its notice may arrive while it is being
/// probed) points at that next hop instead.
async fn find_stall(node: &Node, session: u64, hops: &mut [HopRun], done: u64) -> Failure {
    for k in 0..hops.len() {
        let h = &mut hops[k];
        let peer = h.hop.peer;
        let probe = h.call_within(node, Request::Probe { session }, PROBE_DEADLINE).await;
        tracing::debug!("session {session:016x}: probe of {peer} for step {done}: {:?}", probe.as_ref().map(|r| &r.0));
        if let Some((next, reason)) = h.reported_down() {
            return next_hop_down(node, hops, k, next, reason);
        }
        let h = &mut hops[k];
        match probe {
            Ok((Response::Progress { steps, running: false }, _)) if steps >= done => continue,
            Ok((Response::Progress { .. }, _)) => {
                node.report_failure(&peer);
                return Failure { error: NodeError::Timeout(peer.to_string()), peer: Some(peer) };
            }
            Ok((r, _)) => return blame(h.refused(node, r), peer),
            Err(e) => return blame(e, peer),
        }
    }
    // Every hop finished the step: the token was lost on its way back from the last.
    let last = hops.len() - 1;
    let peer = hops[last].hop.peer;
    node.report_failure(&peer);
    Failure { error: NodeError::Timeout(peer.to_string()), peer: Some(peer) }
}

/// Run the steps of a generation; returns whether every step went down the chain.
#[allow(clippy::too_many_arguments)]
async fn run_steps(
    node: &Node,
    session: u64,
    hops: &mut Vec<HopRun>,
    req: &GenerateRequest,
    progress: &mut Progress,
    on_token: &mut impl FnMut(u32) -> bool,
    mut chain: bool,
) -> std::result::Result<bool, Failure> {
    if req.max_new == 0 || progress.done {
        return Ok(chain);
    }
    // The prompt and every token generated so far: the whole history on a fresh route.
    let mut input: Vec<u32> = req.prompt.iter().chain(&progress.tokens).copied().collect();
    let mut stats = ChainStats::default();
    let t0 = Instant::now();
    for step in 0u64.. {
        let decoding = step > 0;
        let x = StepInput::Tokens(std::mem::take(&mut input));
        let (tok, hash) = if chain {
            match push_step(node, session, hops, x, decoding, step + 1, &mut stats).await? {
                Pushed::Token(tok, hash) => {
                    progress.decode_steps += u64::from(decoding);
                    (tok, hash)
                }
                Pushed::Handoff { at, state, input } => {
                    // The hops before `at` ran this step; its successors run the rest of it,
                    // and from now on the client relays every hop (the chain's links are stale).
                    tracing::info!("server {} is leaving; moving its part of the session", hops[at].hop.peer);
                    chain = false;
                    let new = take_over(node, session, hops[at].hop.clone(), state, req, progress).await?;
                    hops.splice(at..=at, new);
                    progress.handoffs += 1;
                    relay(node, session, hops, at, input, decoding, req, progress).await?
                }
            }
        } else {
            relay(node, session, hops, 0, x, decoding, req, progress).await?
        };
        if progress.prefill_ms.is_none() {
            progress.prefill_ms = Some(t0.elapsed().as_secs_f64() * 1e3);
            progress.decode_start = Some(Instant::now());
        }
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
    Ok(chain)
}

/// Run one step hop by hop from hop `start`, the client carrying each output to the next hop;
/// returns the sampled token and its logits hash.
#[allow(clippy::too_many_arguments)]
async fn relay(
    node: &Node,
    session: u64,
    hops: &mut Vec<HopRun>,
    start: usize,
    mut x: StepInput,
    decoding: bool,
    req: &GenerateRequest,
    progress: &mut Progress,
) -> std::result::Result<(u32, String), Failure> {
    let mut token = None;
    let mut i = start;
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
            (Response::Handoff { state, input: None }, _) => {
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
    token.ok_or_else(|| NodeError::Protocol { peer: String::new(), what: "no token came back".into() }.into())
}
