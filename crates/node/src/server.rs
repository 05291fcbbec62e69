//! Serving a shard: sessions with their recurrent state, and the shard protocol on each stream.
//!
//! Each incoming stream is one client's conversation with this server. The
//! session table outlives streams (a client may reconnect), holds at most
//! `max_sessions`, and forgets sessions idle longer than `session_ttl`. A bad
//! message gets an error frame naming what was wrong; the stream and every
//! other session keep working. Engine work runs on the blocking pool, so a
//! long prefill never stalls the network.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use odin_engine::{Input, Logits, Sampler, SamplerConfig, Shard, State};
use odin_format::ModelId;
use odin_net::wire::{read_frame, write_frame, MAX_FRAME};
use odin_net::{Dtype, Envelope, ErrorCode, NetError, Request, Response, StepInput, Tensor};

/// Limits and test knobs of a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Most sessions held at once; more are refused with [`ErrorCode::Full`].
    pub max_sessions: usize,
    /// Sessions idle longer than this are forgotten.
    pub session_ttl: Duration,
    /// Extra delay before each step (tests of slow servers).
    pub delay: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self { max_sessions: 64, session_ttl: Duration::from_secs(600), delay: Duration::ZERO }
    }
}

struct Session {
    state: Option<State>,
    sampler: Option<Sampler>,
    reply: Dtype,
    last: Instant,
}

/// A shard and its sessions.
pub struct Server {
    shard: Arc<Shard>,
    model: ModelId,
    layers: usize,
    cfg: ServerConfig,
    sessions: Mutex<HashMap<u64, Session>>,
    info: Mutex<Vec<u8>>,
}

/// Why a request failed, ready to go back to the client.
struct Fail(ErrorCode, String);

impl Server {
    /// Serve `shard`.
    pub fn new(shard: Shard, cfg: ServerConfig) -> Self {
        let layers = shard.config().num_layers;
        Self {
            model: shard.model_id(),
            shard: Arc::new(shard),
            layers,
            cfg,
            sessions: Mutex::new(HashMap::new()),
            info: Mutex::new(Vec::new()),
        }
    }

    /// Blocks this server holds.
    pub fn range(&self) -> Range<usize> {
        self.shard.range()
    }

    /// The model it serves.
    pub fn model(&self) -> ModelId {
        self.model
    }

    /// The shard.
    pub fn shard(&self) -> &Arc<Shard> {
        &self.shard
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
        before - s.len()
    }

    /// Measured milliseconds per block for one decode token (median of a few).
    pub fn measure_ms_per_block(&self) -> f64 {
        let shard = &self.shard;
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
        times[times.len() / 2] / self.shard.range().len().max(1) as f64
    }

    /// Speak the shard protocol on `stream` until the client closes it.
    pub async fn serve_stream(self: Arc<Self>, mut stream: odin_net::Stream) {
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
            let resp = self.clone().respond(&frame).await;
            if self.reply(&mut stream, resp).await.is_err() {
                return;
            }
        }
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
                let (start, end) = (start as usize, end as usize);
                let state = self.shard.new_state_for(start..end).map_err(|_| {
                    let r = self.range();
                    Fail(
                        ErrorCode::BadBlocks,
                        format!("blocks {start}..{end} are not within this server's {}..{}", r.start, r.end),
                    )
                })?;
                let sampler = (end == self.layers).then(|| {
                    let mut s = Sampler::new(SamplerConfig {
                        temperature: sampling.temperature,
                        top_k: sampling.top_k as usize,
                        top_p: sampling.top_p,
                        seed: sampling.seed,
                    });
                    s.advance(drawn.min(1 << 32));
                    s
                });
                let mut s =
                    self.sessions.lock().map_err(|_| Fail(ErrorCode::Internal, "session table poisoned".into()))?;
                if !s.contains_key(&session) && s.len() >= self.cfg.max_sessions {
                    return Err(Fail(
                        ErrorCode::Full,
                        format!(
                            "this server holds its maximum of {} sessions; try another server or later",
                            self.cfg.max_sessions
                        ),
                    ));
                }
                s.insert(session, Session { state: Some(state), sampler, reply, last: Instant::now() });
                Ok(Response::Opened { session })
            }
            Request::Close { session } => {
                let mut s =
                    self.sessions.lock().map_err(|_| Fail(ErrorCode::Internal, "session table poisoned".into()))?;
                s.remove(&session).ok_or_else(|| unknown(session))?;
                Ok(Response::Closed)
            }
            Request::Step { session, input } => {
                if !self.cfg.delay.is_zero() {
                    tokio::time::sleep(self.cfg.delay).await;
                }
                // Take the state out while the engine runs, so the table is never locked during compute;
                // a second step on the same session meanwhile is refused, not interleaved.
                let (state, sampler, reply) = {
                    let mut s =
                        self.sessions.lock().map_err(|_| Fail(ErrorCode::Internal, "session table poisoned".into()))?;
                    let sess = s.get_mut(&session).ok_or_else(|| unknown(session))?;
                    let state = sess.state.take().ok_or_else(|| {
                        Fail(ErrorCode::BadInput, format!("session {session:016x} is already running a step"))
                    })?;
                    (state, sess.sampler.take(), sess.reply)
                };
                let one_token = match &input {
                    StepInput::Tokens(t) => t.len() == 1,
                    StepInput::Hidden(h) => h.rows == 1,
                };
                // block_in_place exists only on the multi-threaded runtime.
                let one_token = one_token
                    && tokio::runtime::Handle::current().runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread;
                let (state, sampler, result) = if one_token {
                    // A decode step is short (well under a millisecond to a few ms): running it on
                    // this worker saves the hand-off to the blocking pool, a large share of a hop's
                    // overhead on small shards. block_in_place moves this worker's other tasks away.
                    tokio::task::block_in_place(|| self.step(state, sampler, input, reply))
                } else {
                    let me = self.clone();
                    tokio::task::spawn_blocking(move || me.step(state, sampler, input, reply))
                        .await
                        .map_err(|e| Fail(ErrorCode::Internal, format!("step failed: {e}")))?
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

    fn step(
        &self,
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
        let out = match self.shard.forward(input, &mut state, Logits::Last) {
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
            None => match Tensor::encode(&out, self.shard.config().hidden_size, reply) {
                Ok(tensor) => Ok(Response::Hidden { tensor, compute_us }),
                Err(e) => Err(Fail(ErrorCode::Internal, e.to_string())),
            },
        };
        (state, sampler, resp)
    }
}

fn unknown(session: u64) -> Fail {
    Fail(
        ErrorCode::UnknownSession,
        format!("no session {session:016x} on this server (closed, expired or never opened); open it again"),
    )
}
