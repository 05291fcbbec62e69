//! Serving a shard: sessions with their recurrent state, and the shard protocol on each stream.
//!
//! Each incoming stream is one client's conversation with this server, or the
//! previous hop passing a session's activations on ([`Request::Push`]). The
//! session table outlives streams (a client may reconnect), holds at most
//! `max_sessions`, and forgets sessions idle longer than `session_ttl`. A bad
//! message gets an error frame naming what was wrong; the stream and every
//! other session keep working. Prefills run on the blocking pool, so they
//! never stall the network; a decode step runs inline unless other sessions
//! are computing too.
//!
//! A pushed step is answered on the session's *client* stream, whichever stream it
//! came in on: the last hop sends the token there, and a hop that fails says so
//! there, so the client always hears from the hop at fault.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use futures::io::{ReadHalf, WriteHalf};
use futures::AsyncReadExt;
use odin_engine::{Input, Logits, Sampler, Shard, State};
use odin_format::ModelId;
use odin_net::{now_ms, PeerId, ServerInfo};
use odin_proto::infer::{ErrorCode, HopTime, Request, Response, StepInput};
use odin_proto::verify::Claim;
use odin_proto::{read_frame, write_frame, ProtoError, MAX_FRAME};
use odin_proto::{Dtype, Envelope, PeerBytes, Tensor};
use tokio::runtime::RuntimeFlavor;
use tokio::sync::mpsc;

use crate::cheat::{add_noise, flip_bit, Cheat};
use crate::claims::{blank_claim, run_step as run_claimed, Produced, Recompute, Signer, StepError};
use crate::transport::{Conn, Transport};

/// The writing half of a stream, shared: a session's client stream is written by the task
/// reading it (answers) and by whichever task finishes a pushed step (tokens, failures).
pub(crate) type Sink = Arc<tokio::sync::Mutex<WriteHalf<Conn>>>;

/// Longest a server waits to open its stream to a session's next hop.
const LINK_DEADLINE: Duration = Duration::from_secs(10);

/// Limits and test knobs of a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Most sessions held at once; more are refused with [`ErrorCode::Full`].
    pub max_sessions: usize,
    /// Sessions idle longer than this are forgotten.
    pub session_ttl: Duration,
    /// Extra delay before each step (tests of slow servers).
    pub delay: Duration,
    /// After this many steps, answer every step with bytes that do not parse (tests of broken servers).
    pub garbage_after: Option<u64>,
    /// Lie about steps this way, signing claims that match the lies (tests of verification).
    pub cheat: Option<Cheat>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_sessions: 64,
            session_ttl: Duration::from_secs(600),
            delay: Duration::ZERO,
            garbage_after: None,
            cheat: None,
        }
    }
}

/// Recent steps a session keeps for [`Request::Reveal`]. A client asks as soon as a step's
/// claim reaches it, before its step after next, so a few suffice; each holds a state.
const REVEAL_WINDOW: usize = 3;

/// One recent step of a session, as [`Request::Reveal`] sends it.
struct Record {
    step: u64,
    input: StepInput,
    before: State,
}

struct Session {
    /// The shard it was opened on: a session keeps its blocks while the server moves to others.
    shard: Arc<Shard>,
    state: Option<State>,
    sampler: Option<Sampler>,
    reply: Dtype,
    last: Instant,
    /// Steps completed.
    steps: u64,
    /// The stream of the client that opened it (none when the client is this process).
    client: Option<Sink>,
    /// Where pushed steps go on to.
    next: Option<Next>,
    /// The last few steps' inputs and states-before, for reveals.
    recent: VecDeque<Record>,
    /// What the session's last step sent (a stale cheat sends it again).
    last_out: Option<Vec<f32>>,
}

/// A session's link to its next hop. A task owns the stream: it writes the pushes queued here
/// and watches for the link breaking, so a push never holds up the loop that answers the
/// session's client (which must keep answering probes when the next hop is the one stuck).
struct Next {
    /// The next hop, as a [`Response::NextHopDown`] names it.
    peer: PeerBytes,
    pushes: mpsc::Sender<Vec<u8>>,
    _carrier: AbortOnDrop,
}

/// Pushes a link may hold unwritten. A client waits for each token before the next push, so
/// more than one waiting means the next hop has stopped taking them.
const LINK_QUEUE: usize = 4;

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Where a request came from: the peer, and the stream to answer on.
struct Origin {
    peer: Option<PeerId>,
    sink: Sink,
}

/// What running a step gave.
enum Outcome {
    /// Hidden states or the sampled token.
    Done(Response),
    /// The server is leaving these blocks: the state before the step, and the step's input.
    Handoff(Tensor, StepInput),
}

/// A shard and its sessions.
pub struct Server {
    /// The shard new sessions open on (rebalancing replaces it).
    shard: RwLock<Arc<Shard>>,
    model: ModelId,
    layers: usize,
    cfg: ServerConfig,
    sessions: Mutex<HashMap<u64, Session>>,
    info: Mutex<Vec<u8>>,
    /// Woken whenever a session leaves the table.
    closed: tokio::sync::Notify,
    /// Shutting down: no new sessions, and each open one is handed back at its next step.
    draining: AtomicBool,
    /// Client streams open now: a leaving server waits for its clients to hang up, so every
    /// handed-over state has surely reached its client before the process exits.
    streams: std::sync::atomic::AtomicUsize,
    /// Steps answered, for [`ServerConfig::garbage_after`].
    steps: std::sync::atomic::AtomicU64,
    /// How this server reaches the next hops of pushed sessions.
    net: OnceLock<Arc<dyn Transport>>,
    /// Signs every step's claim.
    signer: Signer,
    /// The last outputs of any session, newest last (a cheat that answers with another session's).
    last_out: Mutex<VecDeque<(u64, Vec<f32>)>>,
    /// Other weights of the same shape, for [`Cheat::OtherModel`].
    other: OnceLock<Option<Arc<Shard>>>,
    /// With a ledger: sessions each requester opened since it last handed over a receipt.
    unpaid: Mutex<HashMap<PeerId, u32>>,
    /// Whether requesters must countersign receipts to go on being served.
    receipts_required: AtomicBool,
}

/// Sessions a requester may open without handing over a receipt; then it is refused until it
/// does (a client countersigns after each generation, so an honest one never gets near).
pub const MAX_UNPAID_SESSIONS: u32 = 32;

/// A session that stepped this recently is still generating: the next step of another one goes to
/// the blocking pool instead of running on the network thread, so the two compute in parallel.
const BUSY: Duration = Duration::from_millis(50);

/// Why a request failed, ready to go back to the client.
struct Fail(ErrorCode, String);

impl Server {
    /// Serve `shard`, signing each step's claim with `key`.
    pub fn new(shard: Shard, cfg: ServerConfig, key: odin_net::Keypair) -> Self {
        let layers = shard.config().num_layers;
        Self {
            signer: Signer::new(key, shard.model_id()),
            last_out: Mutex::new(VecDeque::new()),
            other: OnceLock::new(),
            model: shard.model_id(),
            shard: RwLock::new(Arc::new(shard)),
            layers,
            cfg,
            sessions: Mutex::new(HashMap::new()),
            info: Mutex::new(Vec::new()),
            closed: tokio::sync::Notify::new(),
            draining: AtomicBool::new(false),
            steps: std::sync::atomic::AtomicU64::new(0),
            streams: std::sync::atomic::AtomicUsize::new(0),
            net: OnceLock::new(),
            unpaid: Mutex::new(HashMap::new()),
            receipts_required: AtomicBool::new(false),
        }
    }

    /// Serve a requester only while it countersigns receipts (the node keeps a ledger).
    pub fn require_receipts(&self) {
        self.receipts_required.store(true, Ordering::Relaxed);
    }

    /// `peer` handed over a receipt: its sessions so far are paid for.
    pub fn paid(&self, peer: &PeerId) {
        if let Ok(mut u) = self.unpaid.lock() {
            u.remove(peer);
        }
    }

    /// Count a new session of `peer`; refused once it owes too many receipts.
    fn charge(&self, peer: Option<PeerId>) -> Result<(), Fail> {
        let Some(peer) = peer.filter(|_| self.receipts_required.load(Ordering::Relaxed)) else { return Ok(()) };
        let mut u = self.unpaid.lock().map_err(|_| poisoned())?;
        let owed = u.entry(peer).or_default();
        if *owed >= MAX_UNPAID_SESSIONS {
            return Err(Fail(
                ErrorCode::Full,
                format!(
                    "you have opened {owed} sessions here without countersigning a receipt; \
                     run a node that keeps a ledger (no --no-ledger) to be served again"
                ),
            ));
        }
        *owed += 1;
        Ok(())
    }

    /// Give the server the node's transport, so it can pass pushed sessions on to their next hop.
    pub fn attach_transport(&self, transport: Arc<dyn Transport>) {
        let _ = self.net.set(transport);
    }

    /// Blocks this server holds.
    pub fn range(&self) -> Range<usize> {
        self.shard().range()
    }

    /// Serve `shard` from now on. Open sessions on other blocks are handed back to their
    /// clients at their next step (their state moves to another server); sessions on blocks
    /// the new shard also holds keep the old shard until they close.
    pub fn replace_shard(&self, shard: Shard) {
        if let Ok(mut s) = self.shard.write() {
            *s = Arc::new(shard);
        }
    }

    /// Stop taking sessions; each open one is handed back to its client at its next step.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether no session is open and no client is connected (safe to exit).
    pub fn idle(&self) -> bool {
        self.load() == 0 && self.streams.load(Ordering::SeqCst) == 0
    }

    /// Resolves when a session next leaves the table (closed, handed back or expired) or a client hangs up.
    pub fn closed(&self) -> tokio::sync::futures::Notified<'_> {
        self.closed.notified()
    }

    /// Whether [`Server::drain`] was called.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// The model it serves.
    pub fn model(&self) -> ModelId {
        self.model
    }

    /// What it announces to the network as run by `peer`, reachable at `addrs`.
    pub fn announcement(
        &self,
        peer: PeerId,
        ms_per_block: f64,
        addrs: &[odin_net::Multiaddr],
        auto: bool,
    ) -> ServerInfo {
        let r = self.range();
        ServerInfo {
            version: odin_proto::infer::PROTOCOL_VERSION,
            peer: peer.to_string(),
            model: self.model.to_string(),
            start: r.start as u32,
            end: r.end as u32,
            ms_per_block,
            load: self.load() as u32,
            // A draining server takes no new sessions, so routes stop naming it.
            free_slots: if self.draining() { 0 } else { self.free_slots() as u32 },
            addrs: addrs.iter().map(|a| a.to_string()).collect(),
            at_ms: now_ms(),
            auto,
            opinions: Vec::new(),
        }
    }

    /// The shard new sessions open on.
    pub fn shard(&self) -> Arc<Shard> {
        match self.shard.read() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Set the announcement returned to `Info` requests.
    pub fn set_info(&self, json: Vec<u8>) {
        if let Ok(mut i) = self.info.lock() {
            *i = json;
        }
    }

    /// Sessions open now.
    pub fn load(&self) -> usize {
        self.sessions.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// Sessions it can still open.
    pub fn free_slots(&self) -> usize {
        self.cfg.max_sessions.saturating_sub(self.load())
    }

    /// Forget sessions idle past the TTL; returns how many.
    pub fn reap(&self) -> usize {
        let ttl = self.cfg.session_ttl;
        let mut s = match self.sessions.lock() {
            Ok(s) => s,
            Err(_) => return 0,
        };
        let before = s.len();
        s.retain(|_, v| v.state.is_none() || v.last.elapsed() < ttl);
        let reaped = before - s.len();
        if reaped > 0 {
            self.closed.notify_waiters();
        }
        reaped
    }

    /// Measured milliseconds per block for one decode token (median of a few).
    pub fn measure_ms_per_block(&self) -> f64 {
        let shard = &self.shard();
        let c = shard.config().hidden_size;
        let mut times = Vec::new();
        let mut st = shard.new_state();
        for _ in 0..5 {
            let t = Instant::now();
            let r = if shard.has_embedding() {
                shard.forward(Input::Tokens(&[0]), &mut st, Logits::Last)
            } else {
                shard.forward(Input::Hidden(&vec![0.01; c]), &mut st, Logits::Last)
            };
            if r.is_err() {
                return 1.0;
            }
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        times[times.len() / 2] / shard.range().len().max(1) as f64
    }

    /// Speak the shard protocol on `stream`, from `peer`, until the other side closes it.
    pub async fn serve_stream(self: Arc<Self>, peer: PeerId, stream: Conn) {
        self.streams.fetch_add(1, Ordering::SeqCst);
        let (rd, wr) = stream.split();
        let origin = Origin { peer: Some(peer), sink: Arc::new(tokio::sync::Mutex::new(wr)) };
        self.converse(rd, &origin).await;
        self.streams.fetch_sub(1, Ordering::SeqCst);
        self.closed.notify_waiters();
    }

    async fn converse(self: &Arc<Self>, mut rd: ReadHalf<Conn>, origin: &Origin) {
        loop {
            let frame = match read_frame(&mut rd, MAX_FRAME).await {
                Ok(f) => f,
                Err(ProtoError::Io(_)) => return,
                Err(e) => {
                    // The frame's bytes were not read, so the stream is out of step: say why and hang up.
                    let msg = Response::Error { code: ErrorCode::Malformed, message: e.to_string() };
                    let _ = send(&origin.sink, &self.frame(msg)).await;
                    return;
                }
            };
            let answer = self.clone().handle(&frame, Some(origin)).await;
            if let Some(resp) = answer {
                if send(&origin.sink, &self.frame(resp)).await.is_err() {
                    return;
                }
            }
        }
    }

    /// The bytes of `msg`, or junk once [`ServerConfig::garbage_after`] results have gone out.
    fn frame(&self, msg: Response) -> Vec<u8> {
        let result = matches!(msg, Response::Hidden { .. } | Response::Token { .. } | Response::Pushed { .. });
        self.garbled(result).unwrap_or_else(|| Envelope { model: self.model, msg }.to_bytes())
    }

    fn garbled(&self, result: bool) -> Option<Vec<u8>> {
        let n = self.cfg.garbage_after?;
        (result && self.steps.fetch_add(1, Ordering::Relaxed) >= n).then(|| (0..64).map(|_| rand::random()).collect())
    }

    /// Answer one request frame from this process's own client. `None`: the request was a
    /// [`Request::Push`] whose result went on to the next hop.
    pub async fn respond(self: Arc<Self>, frame: &[u8]) -> Option<Response> {
        self.handle(frame, None).await
    }

    async fn handle(self: Arc<Self>, frame: &[u8], origin: Option<&Origin>) -> Option<Response> {
        let read = Instant::now();
        let env = match Envelope::<Request>::from_bytes(frame) {
            Ok(env) => env,
            Err(e) => {
                if let Some(peer) = origin.and_then(|o| o.peer) {
                    tracing::debug!("malformed request from {peer}: {e}");
                }
                let code =
                    if matches!(e, ProtoError::Version { .. }) { ErrorCode::Version } else { ErrorCode::Malformed };
                return Some(Response::Error { code, message: e.to_string() });
            }
        };
        if env.model != self.model {
            let message = format!("this server serves model {}, not {}", self.model, env.model);
            return Some(Response::Error { code: ErrorCode::WrongModel, message });
        }
        let result = match env.msg {
            Request::Push { session, input, mut hops, mut claims } => {
                let (links, outcome) = self.run_step(session, input).await;
                let (client, next) = links.unwrap_or((None, None));
                let hop = |compute_us| HopTime {
                    elapsed_us: read.elapsed().as_micros().min(u128::from(u32::MAX)) as u32,
                    compute_us,
                    bytes_in: frame.len() as u32,
                };
                let to_client = match outcome {
                    Ok(Outcome::Done(Response::Hidden { tensor, compute_us, claim })) => match next {
                        Some((peer, pushes)) => {
                            hops.push(hop(compute_us));
                            claims.push(claim);
                            let msg = Request::Push { session, input: StepInput::Hidden(tensor), hops, claims };
                            let bytes =
                                self.garbled(true).unwrap_or_else(|| Envelope { model: self.model, msg }.to_bytes());
                            let reason = match pushes.try_send(bytes) {
                                Ok(()) => return None,
                                Err(mpsc::error::TrySendError::Full(_)) => {
                                    format!("{LINK_QUEUE} pushes wait unwritten on the link to it")
                                }
                                // The carrier has already told the client why.
                                Err(mpsc::error::TrySendError::Closed(_)) => "the link to it is down".to_string(),
                            };
                            Response::NextHopDown { session, next: peer, reason }
                        }
                        None => Response::Error {
                            code: ErrorCode::BadInput,
                            message: format!("session {session:016x} has no next hop to push to; send Link first"),
                        },
                    },
                    Ok(Outcome::Done(Response::Token { id, logits_hash, compute_us, claim })) => {
                        hops.push(hop(compute_us));
                        claims.push(claim);
                        Response::Pushed { id, logits_hash, hops, claims }
                    }
                    Ok(Outcome::Done(other)) => other,
                    Ok(Outcome::Handoff(state, input)) => Response::Handoff { state, input: Some(input) },
                    Err(Fail(code, message)) => Response::Error { code, message },
                };
                // To the session's client when it has a stream here; else back to the caller.
                return match client {
                    Some(sink) => {
                        let _ = send(&sink, &self.frame(to_client)).await;
                        None
                    }
                    None => Some(to_client),
                };
            }
            Request::Step { session, input } => match self.run_step(session, input).await.1 {
                Ok(Outcome::Done(r)) => Ok(r),
                Ok(Outcome::Handoff(state, _)) => Ok(Response::Handoff { state, input: None }),
                Err(f) => Err(f),
            },
            Request::Info => Ok(Response::Info(self.info.lock().map(|i| i.clone()).unwrap_or_default())),
            Request::Open { session, start, end, sampling, drawn, reply } => {
                match self.charge(origin.and_then(|o| o.peer)) {
                    Ok(()) => self.open(session, start as usize..end as usize, sampling, drawn, reply, None, origin),
                    Err(f) => Err(f),
                }
            }
            Request::Resume { session, start, end, sampling, drawn, reply, state } => {
                match self.charge(origin.and_then(|o| o.peer)) {
                    Ok(()) => {
                        self.open(session, start as usize..end as usize, sampling, drawn, reply, Some(state), origin)
                    }
                    Err(f) => Err(f),
                }
            }
            Request::Close { session } => self.close(session),
            Request::Link { session, next } => self.link(session, next, origin).await,
            Request::Probe { session } => {
                tracing::debug!("session {session:016x}: probed");
                self.with_session(session, |s| Response::Progress { steps: s.steps, running: s.state.is_none() })
            }
            Request::Reveal { session, step } => self.reveal(session, step),
            Request::Audit { session, step, start, end, sampling, drawn, reply, input, before } => {
                let r = Recompute { blocks: start as usize..end as usize, input, before, sampling, drawn, reply };
                self.audit(session, step, r).await
            }
        };
        Some(result.unwrap_or_else(|Fail(code, message)| Response::Error { code, message }))
    }

    fn with_session<T>(&self, session: u64, f: impl FnOnce(&mut Session) -> T) -> Result<T, Fail> {
        let mut s = self.sessions.lock().map_err(|_| poisoned())?;
        Ok(f(s.get_mut(&session).ok_or_else(|| unknown(session))?))
    }

    fn close(&self, session: u64) -> Result<Response, Fail> {
        let mut s = self.sessions.lock().map_err(|_| poisoned())?;
        s.remove(&session).ok_or_else(|| unknown(session))?;
        self.closed.notify_waiters();
        Ok(Response::Closed)
    }

    /// Open the stream to `next` for the session's pushed steps, and start the task that
    /// carries them (see [`carry`]).
    async fn link(&self, session: u64, wire: PeerBytes, origin: Option<&Origin>) -> Result<Response, Fail> {
        self.with_session(session, |_| ())?;
        let next = odin_net::peer_from_wire(&wire).map_err(|e| Fail(ErrorCode::Malformed, e.to_string()))?;
        let net = self
            .net
            .get()
            .ok_or_else(|| Fail(ErrorCode::Internal, "this server has no network to reach a next hop".into()))?;
        let stream = match tokio::time::timeout(LINK_DEADLINE, net.open(next)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(Fail(ErrorCode::NextHop, format!("cannot reach the next hop {next}: {e}"))),
            Err(_) => return Err(Fail(ErrorCode::NextHop, format!("the next hop {next} did not answer in time"))),
        };
        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        let client = origin.map(|o| o.sink.clone());
        let carrier = tokio::spawn(carry(stream, rx, client, self.model, session, (next, wire.clone())));
        self.with_session(session, |s| {
            s.next = Some(Next { peer: wire, pushes: tx, _carrier: AbortOnDrop(carrier) });
            Response::Linked { session }
        })
    }

    /// Run one step of `session`. Also returns the session's client stream and next hop, for a push.
    #[allow(clippy::type_complexity)]
    async fn run_step(
        &self,
        session: u64,
        input: StepInput,
    ) -> (Option<(Option<Sink>, Option<(PeerBytes, mpsc::Sender<Vec<u8>>)>)>, Result<Outcome, Fail>) {
        if !self.cfg.delay.is_zero() {
            tokio::time::sleep(self.cfg.delay).await;
        }
        let one_token = match &input {
            StepInput::Tokens(t) => t.len() == 1,
            StepInput::Hidden(h) => h.rows == 1,
        };
        let flavor = tokio::runtime::Handle::current().runtime_flavor();
        // Take the state out while the engine runs, so the table is never locked during compute;
        // a second step on the same session meanwhile is refused, not interleaved.
        let (links, prepared) = {
            let mut s = match self.sessions.lock() {
                Ok(s) => s,
                Err(_) => return (None, Err(poisoned())),
            };
            let Some(sess) = s.get_mut(&session) else { return (None, Err(unknown(session))) };
            let links = (sess.client.clone(), sess.next.as_ref().map(|n| (n.peer.clone(), n.pushes.clone())));
            let Some(state) = sess.state.take() else {
                let busy = format!("session {session:016x} is already running a step");
                return (Some(links), Err(Fail(ErrorCode::BadInput, busy)));
            };
            let blocks = state.first_block..state.first_block + state.layers.len();
            let current = self.range();
            if self.draining() || blocks.start < current.start || blocks.end > current.end {
                // Leaving these blocks: the step is not run, and the state goes back to the
                // client, which resumes the session elsewhere without replaying its history.
                let c = sess.shard.config().hidden_size;
                s.remove(&session);
                self.closed.notify_waiters();
                let handoff = Tensor::encode(&state.to_rows(), c, Dtype::F32)
                    .map(|state| Outcome::Handoff(state, input))
                    .map_err(|e| Fail(ErrorCode::Internal, e.to_string()));
                return (Some(links), handoff);
            }
            let (shard, sampler, reply) = (sess.shard.clone(), sess.sampler.take(), sess.reply);
            let lie = self.lie(session, sess);
            let record = Record { step: sess.steps, input: input.clone(), before: state.clone() };
            let mut claim = blank_claim(blocks);
            claim.session = session;
            claim.step = sess.steps;
            // A decode step costs less than handing it to the blocking pool and back
            // (measured: ~150-200 µs per hop, as much as a small shard's whole step), so it
            // runs right here. On a multi-threaded runtime block_in_place moves this worker's
            // other tasks away first. On the node's single network thread it runs inline only
            // while no other session is computing or stepping steadily, so concurrent
            // sessions still compute in parallel on the pool.
            let inline = one_token
                && match flavor {
                    RuntimeFlavor::MultiThread => true,
                    RuntimeFlavor::CurrentThread => {
                        !s.iter().any(|(id, v)| *id != session && (v.state.is_none() || v.last.elapsed() < BUSY))
                    }
                    _ => false,
                };
            (links, (shard, state, sampler, reply, inline, lie, record, claim))
        };
        let (shard, state, sampler, reply, inline, lie, record, claim) = prepared;
        let keep = self.cfg.cheat.is_some();
        let run = move || step(&shard, state, sampler, &input, reply, lie, claim, keep);
        let (state, sampler, result) = if !inline {
            match tokio::task::spawn_blocking(run).await {
                Ok(r) => r,
                Err(e) => return (Some(links), Err(Fail(ErrorCode::Internal, format!("step failed: {e}")))),
            }
        } else if flavor == RuntimeFlavor::MultiThread {
            tokio::task::block_in_place(run)
        } else {
            run()
        };
        let result = result.map(|(resp, sent)| {
            if keep {
                if let Ok(mut l) = self.last_out.lock() {
                    l.push_back((session, sent.clone()));
                    if l.len() > 8 {
                        l.pop_front();
                    }
                }
            }
            (self.sign(resp), sent)
        });
        if let Ok(mut s) = self.sessions.lock() {
            if let Some(sess) = s.get_mut(&session) {
                sess.state = Some(state);
                sess.sampler = sampler;
                sess.last = Instant::now();
                if let Ok((_, sent)) = &result {
                    sess.steps += 1;
                    sess.recent.push_back(record);
                    if sess.recent.len() > REVEAL_WINDOW {
                        sess.recent.pop_front();
                    }
                    if keep {
                        sess.last_out = Some(sent.clone());
                    }
                }
            }
        }
        (Some(links), result.map(|(resp, _)| Outcome::Done(resp)))
    }

    /// Sign the claim an answer carries.
    fn sign(&self, resp: Response) -> Response {
        match resp {
            Response::Hidden { tensor, compute_us, claim } => {
                Response::Hidden { tensor, compute_us, claim: self.signer.sign(claim) }
            }
            Response::Token { id, logits_hash, compute_us, claim } => {
                Response::Token { id, logits_hash, compute_us, claim: self.signer.sign(claim) }
            }
            other => other,
        }
    }

    /// How this step of `session` lies, if this server cheats and lies now.
    fn lie(&self, session: u64, sess: &Session) -> Lie {
        let Some(cheat) = self.cfg.cheat else { return Lie::None };
        if !cheat.lies_now(rand::random::<f64>()) {
            return Lie::None;
        }
        match cheat {
            Cheat::FlipBit | Cheat::OneIn(_) => Lie::Flip(rand::random::<u32>() as usize),
            Cheat::Noise => Lie::Noise(rand::random()),
            Cheat::Stale => sess.last_out.clone().map_or(Lie::None, Lie::Replace),
            Cheat::OtherSession => {
                let recent = self.last_out.lock().ok();
                let other = recent.and_then(|l| l.iter().rev().find(|(s, _)| *s != session).map(|(_, o)| o.clone()));
                other.map_or(Lie::None, Lie::Replace)
            }
            Cheat::SkipBlocks => Lie::Skip,
            Cheat::OtherModel => self.other_model().map_or(Lie::None, Lie::Other),
        }
    }

    /// Weights of the same shape as this server's, made up from a seed: what a server that
    /// runs another model runs.
    fn other_model(&self) -> Option<Arc<Shard>> {
        self.other
            .get_or_init(|| {
                let shard = self.shard();
                let cfg = shard.config().clone();
                let weights = odin_engine::synthetic::weights(&cfg, 0x0dd);
                let src = odin_engine::weights::Source::Memory(&weights);
                let full = odin_format::ModelConfig::Rwkv6(cfg);
                match Shard::build(&full, self.model, shard.range(), &src, odin_engine::Options::default()) {
                    Ok(s) => Some(Arc::new(s)),
                    Err(e) => {
                        tracing::warn!("cheat other-model: cannot build other weights: {e}");
                        None
                    }
                }
            })
            .clone()
    }

    /// The input and state-before of a recent step of `session`.
    fn reveal(&self, session: u64, step: u64) -> Result<Response, Fail> {
        self.with_session(session, |s| {
            let c = s.shard.config().hidden_size;
            match s.recent.iter().find(|r| r.step == step) {
                Some(r) => Tensor::encode(&r.before.to_rows(), c, Dtype::F32)
                    .map(|before| Response::Revealed { input: r.input.clone(), before })
                    .map_err(|e| Fail(ErrorCode::Internal, e.to_string())),
                None => Err(Fail(
                    ErrorCode::BadInput,
                    format!(
                        "session {session:016x} keeps its last {REVEAL_WINDOW} steps for reveals, and step {step} is \
                         not among them (it has run {} steps)",
                        s.steps
                    ),
                )),
            }
        })?
    }

    /// Recompute someone else's step on these blocks and sign what came out.
    async fn audit(&self, session: u64, step: u64, r: Recompute) -> Result<Response, Fail> {
        let shard = self.shard();
        let held = shard.range();
        if r.blocks.is_empty() || r.blocks.start < held.start || r.blocks.end > held.end {
            return Err(Fail(
                ErrorCode::BadBlocks,
                format!(
                    "cannot audit blocks {}..{}: this server holds {}..{}",
                    r.blocks.start, r.blocks.end, held.start, held.end
                ),
            ));
        }
        let done = tokio::task::spawn_blocking(move || crate::claims::recompute(&shard, &r)).await;
        let mut claim = match done {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(step_fail(e)),
            Err(e) => return Err(Fail(ErrorCode::Internal, format!("audit failed: {e}"))),
        };
        claim.session = session;
        claim.step = step;
        Ok(Response::Audited { claim: self.signer.sign(claim) })
    }

    #[allow(clippy::too_many_arguments)]
    fn open(
        &self,
        session: u64,
        blocks: Range<usize>,
        sampling: odin_format::Sampling,
        drawn: u64,
        reply: Dtype,
        from: Option<Tensor>,
        origin: Option<&Origin>,
    ) -> Result<Response, Fail> {
        if self.draining() {
            return Err(Fail(ErrorCode::Draining, "this server is shutting down; open the session elsewhere".into()));
        }
        let shard = self.shard();
        let r = shard.range();
        if blocks.is_empty() || blocks.start < r.start || blocks.end > r.end {
            return Err(Fail(
                ErrorCode::BadBlocks,
                format!("blocks {}..{} are not within this server's {}..{}", blocks.start, blocks.end, r.start, r.end),
            ));
        }
        let state = match from {
            None => shard.new_state_for(blocks.clone()),
            Some(t) => {
                let rows = t.decode().map_err(|e| Fail(ErrorCode::Malformed, e.to_string()))?;
                shard.state_from_rows(blocks.clone(), &rows)
            }
        }
        .map_err(|e| Fail(ErrorCode::BadInput, e.to_string()))?;
        let sampler = (blocks.end == self.layers).then(|| {
            let mut s = Sampler::new(sampling);
            s.advance(drawn.min(1 << 32));
            s
        });
        let mut s = self.sessions.lock().map_err(|_| poisoned())?;
        if !s.contains_key(&session) && s.len() >= self.cfg.max_sessions {
            return Err(Fail(
                ErrorCode::Full,
                format!(
                    "this server holds its maximum of {} sessions; try another server or later",
                    self.cfg.max_sessions
                ),
            ));
        }
        let client = origin.map(|o| o.sink.clone());
        let sess = Session {
            shard,
            state: Some(state),
            sampler,
            reply,
            last: Instant::now(),
            steps: 0,
            client,
            next: None,
            recent: VecDeque::new(),
            last_out: None,
        };
        s.insert(session, sess);
        Ok(Response::Opened { session })
    }
}

/// How a cheating server changes a step ([`ServerConfig::cheat`]).
enum Lie {
    None,
    Flip(usize),
    Noise(u64),
    Replace(Vec<f32>),
    Skip,
    Other(Arc<Shard>),
}

/// What [`step`] gives back: the state and sampler, and the answer with the values sent.
type Stepped = (State, Option<Sampler>, Result<(Response, Vec<f32>), Fail>);

/// Run one step and answer it with an (unsigned) claim; with `keep`, also return the values
/// sent (a cheat that repeats outputs needs them).
#[allow(clippy::too_many_arguments)]
fn step(
    shard: &Shard,
    mut state: State,
    mut sampler: Option<Sampler>,
    input: &StepInput,
    reply: Dtype,
    lie: Lie,
    mut claim: Claim,
    keep: bool,
) -> Stepped {
    let t = Instant::now();
    let (skip, other) = match &lie {
        Lie::Skip => (true, None),
        Lie::Other(o) => (false, Some(o.clone())),
        _ => (false, None),
    };
    let forward = move |s: &Shard, i: Input<'_>, st: &mut State| {
        if skip {
            return match i {
                Input::Hidden(h) => Ok(h.to_vec()),
                // The first hop cannot pass tokens through: it runs them without keeping the state.
                Input::Tokens(_) => s.forward(i, &mut st.clone(), Logits::Last),
            };
        }
        other.as_deref().unwrap_or(s).forward(i, st, Logits::Last)
    };
    let mut sent = Vec::new();
    // A flipped bit in hidden states goes into the bytes sent (see below): flipped before the
    // int8 wire encoding, it could round away and be no lie at all.
    let last = sampler.is_some();
    let flip_wire = match lie {
        Lie::Flip(at) if !last => Some(at),
        _ => None,
    };
    let tamper = |out: &mut Vec<f32>| {
        match lie {
            Lie::Flip(at) if last => flip_bit(out, at),
            Lie::Noise(seed) => add_noise(out, seed),
            Lie::Replace(v) if v.len() == out.len() => *out = v,
            _ => {}
        }
        if keep {
            sent = out.clone();
        }
    };
    let mut produced = run_claimed(shard, &mut state, sampler.as_mut(), input, reply, &mut claim, forward, tamper);
    if let (Some(at), Ok(Produced::Hidden(t))) = (flip_wire, &mut produced) {
        flip_wire_bit(t, at);
        claim.output = odin_proto::verify::tensor_hash(t);
    }
    let compute_us = t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
    let resp = match produced {
        Ok(Produced::Token { id, logits_hash }) => Ok((Response::Token { id, logits_hash, compute_us, claim }, sent)),
        Ok(Produced::Hidden(tensor)) => Ok((Response::Hidden { tensor, compute_us, claim }, sent)),
        // The engine checks its input before touching the state, so a refused step leaves the session as it was.
        Err(e) => Err(step_fail(e)),
    };
    (state, sampler, resp)
}

/// Flip the lowest bit of one 4-byte-aligned byte of `t`'s data: an f32's lowest mantissa
/// bit, or an int8 code's or an f16 scale's lowest bit; never a NaN or an infinity.
fn flip_wire_bit(t: &mut Tensor, at: usize) {
    let words = t.data.len() / 4;
    if words > 0 {
        t.data[(at % words) * 4] ^= 1;
    }
}

/// A step's error, as the client hears it.
fn step_fail(e: StepError) -> Fail {
    match e {
        StepError::Malformed(m) => Fail(ErrorCode::Malformed, m),
        StepError::BadInput(m) => Fail(ErrorCode::BadInput, m),
        StepError::Internal(m) => Fail(ErrorCode::Internal, m),
    }
}

/// Carry a session's pushes to its next hop `next` until the session ends or the link breaks.
///
/// The link breaks when a write fails, when the next hop says anything on it (it answers a push
/// it accepts on the client's stream, so anything here is a refusal), or when the stream ends:
/// the connection closed (TCP: at once when the peer dies) or timed out (QUIC: the keep-alive
/// bound, see `odin_net`). Then the session's client hears [`Response::NextHopDown`] naming
/// `next`, at once and unasked, so it blames `next` and not this server.
async fn carry(
    stream: Conn,
    mut pushes: mpsc::Receiver<Vec<u8>>,
    client: Option<Sink>,
    model: ModelId,
    session: u64,
    (next, wire): (PeerId, PeerBytes),
) {
    let (mut rd, mut wr) = stream.split();
    // Polled in place across the loop, never restarted: a frame half read is never lost.
    let said = read_frame(&mut rd, MAX_FRAME);
    tokio::pin!(said);
    let reason = loop {
        tokio::select! {
            push = pushes.recv() => match push {
                Some(bytes) => {
                    if let Err(e) = write_frame(&mut wr, &bytes).await {
                        break format!("a push to it failed: {e}");
                    }
                }
                // The session ended.
                None => return,
            },
            got = &mut said => break match got {
                Ok(frame) => match Envelope::<Response>::from_bytes(&frame).map(|e| e.msg) {
                    Ok(Response::Error { message, .. }) => format!("it refused a push: {message}"),
                    _ => "it answered a push out of protocol".to_string(),
                },
                Err(e) => format!("it dropped the link: {e}"),
            },
        }
    };
    tracing::debug!("session {session:016x}: next hop {next} is down: {reason}");
    if let Some(sink) = client {
        let msg = Response::NextHopDown { session, next: wire, reason };
        let _ = send(&sink, &Envelope { model, msg }.to_bytes()).await;
    }
}

/// Write one frame on a shared stream.
async fn send(sink: &Sink, bytes: &[u8]) -> odin_proto::Result<()> {
    write_frame(&mut *sink.lock().await, bytes).await
}

fn poisoned() -> Fail {
    Fail(ErrorCode::Internal, "session table poisoned".into())
}

fn unknown(session: u64) -> Fail {
    Fail(
        ErrorCode::UnknownSession,
        format!("no session {session:016x} on this server (closed, expired or never opened); open it again"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testmodel::{shard, MODEL};

    async fn ask(server: &Arc<Server>, msg: Request) -> Option<Response> {
        server.clone().respond(&Envelope { model: MODEL, msg }.to_bytes()).await
    }

    fn open(session: u64, blocks: Range<usize>) -> Request {
        Request::Open {
            session,
            start: blocks.start as u32,
            end: blocks.end as u32,
            sampling: odin_format::Sampling::default(),
            drawn: 0,
            reply: Dtype::F32,
        }
    }

    fn tokens(session: u64, ids: &[u32]) -> Request {
        Request::Step { session, input: StepInput::Tokens(ids.to_vec()) }
    }

    fn code(r: Option<Response>) -> ErrorCode {
        match r {
            Some(Response::Error { code, .. }) => code,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn a_requester_that_never_countersigns_is_refused_after_its_allowance() {
        let server = Server::new(shard(0..2), ServerConfig::default(), odin_net::Keypair::generate_ed25519());
        let (payer, other) = (PeerId::random(), PeerId::random());
        // Without a ledger nothing is counted.
        for _ in 0..2 * MAX_UNPAID_SESSIONS {
            assert!(server.charge(Some(payer)).is_ok());
        }
        server.require_receipts();
        for _ in 0..MAX_UNPAID_SESSIONS {
            assert!(server.charge(Some(payer)).is_ok());
        }
        let Err(Fail(code, why)) = server.charge(Some(payer)) else { panic!("served past its allowance") };
        assert!(code == ErrorCode::Full && why.contains("countersign"), "{why}");
        assert!(server.charge(Some(other)).is_ok(), "another requester is not affected");
        assert!(server.charge(None).is_ok(), "the node's own client is never charged");
        server.paid(&payer);
        assert!(server.charge(Some(payer)).is_ok(), "a receipt settles what it owed");
    }

    #[tokio::test]
    async fn sessions_open_step_and_close_within_the_servers_blocks() {
        let server = Arc::new(Server::new(shard(0..2), ServerConfig::default(), odin_net::Keypair::generate_ed25519()));
        server.set_info(b"{}".to_vec());
        assert_eq!(ask(&server, Request::Info).await, Some(Response::Info(b"{}".to_vec())));
        assert_eq!(code(ask(&server, open(1, 1..3)).await), ErrorCode::BadBlocks);
        assert_eq!(ask(&server, open(1, 0..2)).await, Some(Response::Opened { session: 1 }));
        assert_eq!(server.load(), 1);
        // Not the last blocks: hidden states come back, one row per token.
        match ask(&server, tokens(1, &[3, 4, 5])).await {
            Some(Response::Hidden { tensor, .. }) => assert_eq!((tensor.rows, tensor.cols), (3, 64)),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            ask(&server, Request::Probe { session: 1 }).await,
            Some(Response::Progress { steps: 1, running: false })
        );
        assert_eq!(code(ask(&server, tokens(2, &[3])).await), ErrorCode::UnknownSession);
        assert_eq!(code(ask(&server, tokens(1, &[4000])).await), ErrorCode::BadInput, "a token past the vocabulary");
        assert_eq!(
            ask(&server, Request::Probe { session: 1 }).await,
            Some(Response::Progress { steps: 1, running: false })
        );
        // A push needs a next hop, and a link needs a network.
        let push =
            Request::Push { session: 1, input: StepInput::Tokens(vec![6]), hops: Vec::new(), claims: Vec::new() };
        assert_eq!(code(ask(&server, push).await), ErrorCode::BadInput);
        let link = Request::Link { session: 1, next: odin_net::peer_to_wire(&PeerId::random()).unwrap() };
        assert_eq!(code(ask(&server, link).await), ErrorCode::Internal);
        assert_eq!(ask(&server, Request::Close { session: 1 }).await, Some(Response::Closed));
        assert_eq!(code(ask(&server, Request::Close { session: 1 }).await), ErrorCode::UnknownSession);
        assert!(server.idle());
    }

    #[tokio::test]
    async fn the_last_blocks_sample_and_a_push_ends_there() {
        let server = Arc::new(Server::new(shard(0..4), ServerConfig::default(), odin_net::Keypair::generate_ed25519()));
        let want = crate::testmodel::local_tokens(&[3, 4, 5], 2, odin_format::Sampling::default());
        assert_eq!(ask(&server, open(1, 0..4)).await, Some(Response::Opened { session: 1 }));
        assert!(matches!(ask(&server, tokens(1, &[3, 4, 5])).await, Some(Response::Token { id, .. }) if id == want[0]));
        let push =
            Request::Push { session: 1, input: StepInput::Tokens(vec![want[0]]), hops: Vec::new(), claims: Vec::new() };
        match ask(&server, push).await {
            Some(Response::Pushed { id, hops, .. }) => {
                assert_eq!(id, want[1]);
                assert_eq!(hops.len(), 1);
                assert!(hops[0].elapsed_us >= hops[0].compute_us);
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn bad_envelopes_are_refused_by_name() {
        let server = Arc::new(Server::new(shard(0..2), ServerConfig::default(), odin_net::Keypair::generate_ed25519()));
        let other = Envelope { model: odin_format::ModelId([1; 32]), msg: Request::Info }.to_bytes();
        assert_eq!(code(server.clone().respond(&other).await), ErrorCode::WrongModel);
        let mut version = Envelope { model: MODEL, msg: Request::Info }.to_bytes();
        version[0] = 99;
        assert_eq!(code(server.clone().respond(&version).await), ErrorCode::Version);
        let good = Envelope { model: MODEL, msg: open(1, 0..2) }.to_bytes();
        assert_eq!(code(server.clone().respond(&good[..good.len() - 3]).await), ErrorCode::Malformed);
    }

    #[tokio::test]
    async fn a_full_server_refuses_and_idle_sessions_are_reaped() {
        let cfg = ServerConfig { max_sessions: 1, session_ttl: Duration::ZERO, ..ServerConfig::default() };
        let server = Arc::new(Server::new(shard(0..2), cfg, odin_net::Keypair::generate_ed25519()));
        assert_eq!(ask(&server, open(1, 0..2)).await, Some(Response::Opened { session: 1 }));
        assert_eq!(server.free_slots(), 0);
        assert_eq!(code(ask(&server, open(2, 0..2)).await), ErrorCode::Full);
        assert_eq!(
            ask(&server, open(1, 0..1)).await,
            Some(Response::Opened { session: 1 }),
            "reopening is no new session"
        );
        assert_eq!(server.reap(), 1);
        assert_eq!((server.load(), server.free_slots()), (0, 1));
    }

    #[tokio::test]
    async fn a_leaving_server_hands_open_sessions_back_and_takes_no_new_ones() {
        let server = Arc::new(Server::new(shard(0..2), ServerConfig::default(), odin_net::Keypair::generate_ed25519()));
        for s in [1, 2] {
            assert_eq!(ask(&server, open(s, 0..2)).await, Some(Response::Opened { session: s }));
        }
        assert!(matches!(ask(&server, tokens(1, &[3, 4])).await, Some(Response::Hidden { .. })));
        // Moving to other blocks: a session on the dropped ones is handed back, state and all.
        server.replace_shard(shard(1..2));
        match ask(&server, tokens(1, &[5])).await {
            Some(Response::Handoff { state, input: None }) => {
                assert_eq!(state.rows % 2, 0, "two blocks' state");
                assert!(state.decode().is_ok());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(server.load(), 1, "the handed-back session is gone");
        server.drain();
        assert!(server.draining());
        assert_eq!(code(ask(&server, open(3, 1..2)).await), ErrorCode::Draining);
        assert!(matches!(ask(&server, tokens(2, &[3])).await, Some(Response::Handoff { .. })));
        assert!(server.idle());
    }
}
