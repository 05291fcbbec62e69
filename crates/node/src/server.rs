//! Serving a shard: sessions with their recurrent state, and the shard protocol on each stream.
//!
//! Each incoming stream is one client's conversation with this server. The
//! session table outlives streams (a client may reconnect), holds at most
//! `max_sessions`, and forgets sessions idle longer than `session_ttl`. A bad
//! message gets an error frame naming what was wrong; the stream and every
//! other session keep working. Prefills run on the blocking pool, so they
//! never stall the network; a decode step runs inline unless other sessions
//! are computing too.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use odin_engine::{Input, Logits, Sampler, SamplerConfig, Shard, State};
use odin_format::ModelId;
use odin_net::wire::{read_frame, write_frame, MAX_FRAME};
use odin_net::{Dtype, Envelope, ErrorCode, NetError, Request, Response, StepInput, Tensor};
use tokio::runtime::RuntimeFlavor;

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
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self { max_sessions: 64, session_ttl: Duration::from_secs(600), delay: Duration::ZERO, garbage_after: None }
    }
}

struct Session {
    /// The shard it was opened on: a session keeps its blocks while the server moves to others.
    shard: Arc<Shard>,
    state: Option<State>,
    sampler: Option<Sampler>,
    reply: Dtype,
    last: Instant,
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
}

/// A session that stepped this recently is still generating: the next step of another one goes to
/// the blocking pool instead of running on the network thread, so the two compute in parallel.
const BUSY: Duration = Duration::from_millis(50);

/// Why a request failed, ready to go back to the client.
struct Fail(ErrorCode, String);

impl Server {
    /// Serve `shard`.
    pub fn new(shard: Shard, cfg: ServerConfig) -> Self {
        let layers = shard.config().num_layers;
        Self {
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
        }
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

    /// Speak the shard protocol on `stream` until the client closes it.
    pub async fn serve_stream(self: Arc<Self>, stream: odin_net::Stream) {
        self.streams.fetch_add(1, Ordering::SeqCst);
        self.converse(stream).await;
        self.streams.fetch_sub(1, Ordering::SeqCst);
        self.closed.notify_waiters();
    }

    async fn converse(self: &Arc<Self>, mut stream: odin_net::Stream) {
        loop {
            let frame = match read_frame(&mut stream, MAX_FRAME).await {
                Ok(f) => f,
                Err(NetError::Io(_)) => return,
                Err(e) => {
                    // The frame's bytes were not read, so the stream is out of step: say why and hang up.
                    let _ = self
                        .reply(&mut stream, Response::Error { code: ErrorCode::Malformed, message: e.to_string() })
                        .await;
                    return;
                }
            };
            if !self.answer(&mut stream, &frame).await {
                return;
            }
        }
    }

    /// Answer one frame on `stream`; false when the stream is gone.
    async fn answer(self: &Arc<Self>, stream: &mut odin_net::Stream, frame: &[u8]) -> bool {
        let resp = self.clone().respond(frame).await;
        if let (Some(n), Response::Hidden { .. } | Response::Token { .. }) = (self.cfg.garbage_after, &resp) {
            if self.steps.fetch_add(1, Ordering::Relaxed) >= n {
                let junk: Vec<u8> = (0..64).map(|_| rand::random::<u8>()).collect();
                return write_frame(stream, &junk).await.is_ok();
            }
        }
        self.reply(stream, resp).await.is_ok()
    }

    async fn reply(&self, stream: &mut odin_net::Stream, msg: Response) -> odin_net::Result<()> {
        write_frame(stream, &Envelope { model: self.model, msg }.to_bytes()).await
    }

    /// Answer one request frame (errors become error responses).
    pub async fn respond(self: Arc<Self>, frame: &[u8]) -> Response {
        match self.handle(frame).await {
            Ok(r) => r,
            Err(Fail(code, message)) => Response::Error { code, message },
        }
    }

    async fn handle(self: Arc<Self>, frame: &[u8]) -> Result<Response, Fail> {
        let env = Envelope::<Request>::from_bytes(frame).map_err(|e| match e {
            NetError::Version { .. } => Fail(ErrorCode::Version, e.to_string()),
            e => Fail(ErrorCode::Malformed, e.to_string()),
        })?;
        if env.model != self.model {
            return Err(Fail(
                ErrorCode::WrongModel,
                format!("this server serves model {}, not {}", self.model, env.model),
            ));
        }
        match env.msg {
            Request::Info => Ok(Response::Info(self.info.lock().map(|i| i.clone()).unwrap_or_default())),
            Request::Open { session, start, end, sampling, drawn, reply } => {
                self.open(session, start as usize..end as usize, sampling, drawn, reply, None)
            }
            Request::Resume { session, start, end, sampling, drawn, reply, state } => {
                self.open(session, start as usize..end as usize, sampling, drawn, reply, Some(state))
            }
            Request::Close { session } => {
                let mut s =
                    self.sessions.lock().map_err(|_| Fail(ErrorCode::Internal, "session table poisoned".into()))?;
                s.remove(&session).ok_or_else(|| unknown(session))?;
                self.closed.notify_waiters();
                Ok(Response::Closed)
            }
            Request::Step { session, input } => {
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
                let (shard, state, sampler, reply, inline) = {
                    let mut s =
                        self.sessions.lock().map_err(|_| Fail(ErrorCode::Internal, "session table poisoned".into()))?;
                    let sess = s.get_mut(&session).ok_or_else(|| unknown(session))?;
                    let state = sess.state.take().ok_or_else(|| {
                        Fail(ErrorCode::BadInput, format!("session {session:016x} is already running a step"))
                    })?;
                    let blocks = state.first_block..state.first_block + state.layers.len();
                    let current = self.range();
                    if self.draining() || blocks.start < current.start || blocks.end > current.end {
                        // Leaving these blocks: the step is not run, and the state goes back to the
                        // client, which resumes the session elsewhere without replaying its history.
                        let c = sess.shard.config().hidden_size;
                        s.remove(&session);
                        self.closed.notify_waiters();
                        return Tensor::encode(&state.to_rows(), c, Dtype::F32)
                            .map(|state| Response::Handoff { state })
                            .map_err(|e| Fail(ErrorCode::Internal, e.to_string()));
                    }
                    let (shard, sampler, reply) = (sess.shard.clone(), sess.sampler.take(), sess.reply);
                    // A decode step costs less than handing it to the blocking pool and back
                    // (measured: ~150-200 µs per hop, as much as a small shard's whole step), so it
                    // runs right here. On a multi-threaded runtime block_in_place moves this worker's
                    // other tasks away first. On the node's single network thread it runs inline only
                    // while no other session is computing or stepping steadily, so concurrent
                    // sessions still compute in parallel on the pool.
                    let inline = one_token
                        && match flavor {
                            RuntimeFlavor::MultiThread => true,
                            RuntimeFlavor::CurrentThread => !s
                                .iter()
                                .any(|(id, v)| *id != session && (v.state.is_none() || v.last.elapsed() < BUSY)),
                            _ => false,
                        };
                    (shard, state, sampler, reply, inline)
                };
                let (state, sampler, result) = if !inline {
                    tokio::task::spawn_blocking(move || step(&shard, state, sampler, input, reply))
                        .await
                        .map_err(|e| Fail(ErrorCode::Internal, format!("step failed: {e}")))?
                } else if flavor == RuntimeFlavor::MultiThread {
                    tokio::task::block_in_place(|| step(&shard, state, sampler, input, reply))
                } else {
                    step(&shard, state, sampler, input, reply)
                };
                if let Ok(mut s) = self.sessions.lock() {
                    if let Some(sess) = s.get_mut(&session) {
                        sess.state = Some(state);
                        sess.sampler = sampler;
                        sess.last = Instant::now();
                    }
                }
                result
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn open(
        &self,
        session: u64,
        blocks: Range<usize>,
        sampling: odin_net::Sampling,
        drawn: u64,
        reply: Dtype,
        from: Option<Tensor>,
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
            let mut s = Sampler::new(SamplerConfig {
                temperature: sampling.temperature,
                top_k: sampling.top_k as usize,
                top_p: sampling.top_p,
                seed: sampling.seed,
            });
            s.advance(drawn.min(1 << 32));
            s
        });
        let mut s = self.sessions.lock().map_err(|_| Fail(ErrorCode::Internal, "session table poisoned".into()))?;
        if !s.contains_key(&session) && s.len() >= self.cfg.max_sessions {
            return Err(Fail(
                ErrorCode::Full,
                format!(
                    "this server holds its maximum of {} sessions; try another server or later",
                    self.cfg.max_sessions
                ),
            ));
        }
        s.insert(session, Session { shard, state: Some(state), sampler, reply, last: Instant::now() });
        Ok(Response::Opened { session })
    }
}

fn step(
    shard: &Shard,
    mut state: State,
    mut sampler: Option<Sampler>,
    input: StepInput,
    reply: Dtype,
) -> (State, Option<Sampler>, Result<Response, Fail>) {
    let t = Instant::now();
    let hidden;
    let input = match &input {
        StepInput::Tokens(ids) => Input::Tokens(ids),
        StepInput::Hidden(tensor) => match tensor.decode() {
            Ok(v) => {
                hidden = v;
                Input::Hidden(&hidden)
            }
            Err(e) => return (state, sampler, Err(Fail(ErrorCode::Malformed, e.to_string()))),
        },
    };
    let out = match shard.forward(input, &mut state, Logits::Last) {
        Ok(o) => o,
        // The engine checks its input before touching the state, so a refused step leaves the session as it was.
        Err(e) => return (state, sampler, Err(Fail(ErrorCode::BadInput, e.to_string()))),
    };
    let compute_us = t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
    let resp = match sampler.as_mut() {
        Some(s) => {
            let id = s.sample(&out);
            Ok(Response::Token { id, logits_hash: *odin_engine::logits_digest(&out).as_bytes(), compute_us })
        }
        None => match Tensor::encode(&out, shard.config().hidden_size, reply) {
            Ok(tensor) => Ok(Response::Hidden { tensor, compute_us }),
            Err(e) => Err(Fail(ErrorCode::Internal, e.to_string())),
        },
    };
    (state, sampler, resp)
}

fn unknown(session: u64) -> Fail {
    Fail(
        ErrorCode::UnknownSession,
        format!("no session {session:016x} on this server (closed, expired or never opened); open it again"),
    )
}
