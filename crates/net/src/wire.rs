//! The shard protocol's messages and their byte encoding.
//!
//! Written by hand rather than with serde: every length read from the network
//! is checked against a cap and against the bytes actually present *before*
//! anything is allocated, and a tensor's values are checked for NaN and
//! infinity on the way in. A frame is a little-endian `u32` length followed
//! by a payload; every payload starts with the protocol version and the model
//! id, so a message for other weights or another version is refused by name.
//!
//! A session's recurrent state (in [`Request::Resume`] and [`Response::Handoff`])
//! travels as an f32 [`Tensor`] of rows of width C: per block, the token-shift
//! rows then the WKV state as head-size rows (`odin_engine::State::to_rows`).

use half::f16;
use odin_format::ModelId;

use crate::error::{NetError, Result};

/// Version of the shard protocol and the server announcements; peers with another version are refused.
/// (3: servers pass a session's activations straight to the next hop, see [`Request::Push`];
/// 4: a hop names the next hop it cannot reach, unasked, with [`Response::NextHopDown`].)
pub const PROTOCOL_VERSION: u16 = 4;

/// Largest frame a peer may send (a prompt's hidden states for a ~100M model fit with room).
pub const MAX_FRAME: usize = 64 << 20;
/// Most tokens one step may carry (prefill of a long prompt), and most rows of any tensor,
/// a session state's included (12 blocks with head size 64 are 12 × 66 = 792 rows).
pub const MAX_TOKENS: usize = 8192;
/// Widest hidden state a tensor may have.
pub const MAX_WIDTH: usize = 16384;
/// Longest error message kept from a peer.
pub const MAX_MESSAGE: usize = 4096;
/// Values per int8 block on the wire (one f16 scale each).
pub const WIRE_BLOCK: usize = 32;
/// Most hops a pushed step may have passed through (each adds one [`HopTime`]).
pub const MAX_HOPS: usize = 256;
/// Longest peer id accepted in a [`Request::Link`] (an ed25519 id is 38 bytes).
pub const MAX_PEER_ID: usize = 64;

/// How hidden states travel between hops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dtype {
    /// int8 codes in blocks of 32 along each row, one f16 scale per block (the default: ~3.8x smaller).
    #[default]
    Q8,
    /// Plain little-endian f32 (lossless).
    F32,
}

impl Dtype {
    fn code(self) -> u8 {
        match self {
            Dtype::F32 => 0,
            Dtype::Q8 => 1,
        }
    }

    fn from_code(c: u8) -> Result<Self> {
        match c {
            0 => Ok(Dtype::F32),
            1 => Ok(Dtype::Q8),
            _ => Err(NetError::Malformed(format!("unknown tensor dtype {c}"))),
        }
    }

    /// The name used on the command line and in the API.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::Q8 => "int8",
        }
    }

    /// Parse a command-line name (`int8` or `f32`).
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "int8" | "q8" => Ok(Dtype::Q8),
            "f32" => Ok(Dtype::F32),
            _ => Err(NetError::Malformed(format!("unknown wire dtype {s:?}; use int8 or f32"))),
        }
    }
}

/// Hidden states [rows, cols] as they travel: f32, or int8 blocks with f16 scales.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Tokens.
    pub rows: usize,
    /// Hidden width.
    pub cols: usize,
    /// How `data` is encoded.
    pub dtype: Dtype,
    /// The encoded values (f32 LE, or per row: for each block of 32, an f16 scale then the codes).
    pub data: Vec<u8>,
}

fn q8_row_bytes(cols: usize) -> usize {
    cols.div_ceil(WIRE_BLOCK) * 2 + cols
}

impl Tensor {
    /// Encode `values` ([rows, cols], row-major) as `dtype`. Refuses NaN and infinity.
    pub fn encode(values: &[f32], cols: usize, dtype: Dtype) -> Result<Self> {
        if cols == 0 || !values.len().is_multiple_of(cols) {
            return Err(NetError::Malformed(format!("{} values are not whole rows of {cols}", values.len())));
        }
        if values.iter().any(|v| !v.is_finite()) {
            return Err(NetError::Malformed("hidden state holds NaN or infinity".into()));
        }
        let rows = values.len() / cols;
        let data = match dtype {
            Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Dtype::Q8 => {
                let mut out = Vec::with_capacity(rows * q8_row_bytes(cols));
                for row in values.chunks_exact(cols) {
                    for block in row.chunks(WIRE_BLOCK) {
                        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
                        // The scale is rounded to f16 first, so the codes are
                        // computed against the exact scale the receiver will use.
                        let scale = f16::from_f32(amax / 127.0);
                        let s = scale.to_f32();
                        if !s.is_finite() {
                            return Err(NetError::Malformed(format!(
                                "a value of magnitude {amax} does not fit the int8 wire's f16 scales; use the f32 wire"
                            )));
                        }
                        out.extend_from_slice(&scale.to_bits().to_le_bytes());
                        for v in block {
                            let q = if s > 0.0 { (v / s).round().clamp(-127.0, 127.0) as i8 } else { 0 };
                            out.push(q as u8);
                        }
                    }
                }
                out
            }
        };
        Ok(Self { rows, cols, dtype, data })
    }

    /// Check the byte count and that every value is finite, without allocating
    /// (run on every tensor read from the network).
    pub fn check(&self) -> Result<()> {
        let want = match self.dtype {
            Dtype::F32 => self.rows * self.cols * 4,
            Dtype::Q8 => self.rows * q8_row_bytes(self.cols),
        };
        if self.data.len() != want {
            return Err(NetError::Malformed(format!(
                "{} tensor of {}x{} needs {want} bytes, not {}",
                self.dtype.name(),
                self.rows,
                self.cols,
                self.data.len()
            )));
        }
        match self.dtype {
            Dtype::F32 if !self.f32_values().all(f32::is_finite) => {
                Err(NetError::Malformed("hidden state holds NaN or infinity".into()))
            }
            Dtype::Q8 if !self.q8_blocks().all(|(s, _)| s.is_finite()) => {
                Err(NetError::Malformed("int8 tensor has a NaN or infinite scale".into()))
            }
            _ => Ok(()),
        }
    }

    /// The values as f32 [rows, cols].
    pub fn decode(&self) -> Result<Vec<f32>> {
        self.check()?;
        Ok(match self.dtype {
            Dtype::F32 => self.f32_values().collect(),
            Dtype::Q8 => {
                let mut out = Vec::with_capacity(self.rows * self.cols);
                for (s, codes) in self.q8_blocks() {
                    out.extend(codes.iter().map(|&q| f32::from(q as i8) * s));
                }
                out
            }
        })
    }

    fn f32_values(&self) -> impl Iterator<Item = f32> + '_ {
        self.data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Each int8 block in order: its scale and its codes. Only the last block of a row may be short,
    /// so block i of a row starts at i * (2 + 32).
    fn q8_blocks(&self) -> impl Iterator<Item = (f32, &[u8])> + '_ {
        let cols = self.cols;
        self.data.chunks_exact(q8_row_bytes(cols).max(1)).flat_map(move |row| {
            (0..cols.div_ceil(WIRE_BLOCK)).map(move |i| {
                let p = i * (2 + WIRE_BLOCK);
                let k = (cols - i * WIRE_BLOCK).min(WIRE_BLOCK);
                (f16::from_bits(u16::from_le_bytes([row[p], row[p + 1]])).to_f32(), &row[p + 2..p + 2 + k])
            })
        })
    }
}

/// Sampling settings a session's last server uses (the engine's sampler, on the wire).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// 0: greedy.
    pub temperature: f64,
    /// Keep the k most likely tokens (0: all).
    pub top_k: u32,
    /// Nucleus threshold (1: off).
    pub top_p: f64,
    /// Seed of the sampler's random stream.
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Self { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 }
    }
}

/// What a step carries in.
#[derive(Debug, Clone, PartialEq)]
pub enum StepInput {
    /// Token ids (the hop that holds block 0).
    Tokens(Vec<u32>),
    /// Hidden states (every other hop).
    Hidden(Tensor),
}

/// What one hop of a pushed step reports about itself (see [`Request::Push`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HopTime {
    /// Microseconds from reading the step's frame to passing the result on (compute included).
    pub elapsed_us: u32,
    /// Microseconds of that spent computing.
    pub compute_us: u32,
    /// Size of the frame the hop read, bytes.
    pub bytes_in: u32,
}

/// Client to server.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Ask for the server's announcement.
    Info,
    /// Open a session over blocks `start..end` of the server's range.
    Open {
        /// Chosen by the client, unique per session.
        session: u64,
        /// First block.
        start: u32,
        /// One past the last block.
        end: u32,
        /// Sampling, used when `end` is the model's last block.
        sampling: Sampling,
        /// Random draws the sampler has already made in this generation (a session rebuilt
        /// after a failover continues the same random stream).
        drawn: u64,
        /// How the server sends hidden states back.
        reply: Dtype,
    },
    /// Open a session like [`Request::Open`], but starting from `state` instead of zeros
    /// (a session handed over by a server that left, see [`Response::Handoff`]).
    ///
    /// `state` is f32 rows of width C, `head_size + 2` rows per block of `start..end`
    /// (the layout of `odin_engine::State::to_rows`); a state travels as rows, so it counts
    /// against the [`MAX_TOKENS`] row cap. Any other dtype is refused: a state must be exact.
    Resume {
        /// Chosen by the client, unique per session.
        session: u64,
        /// First block.
        start: u32,
        /// One past the last block.
        end: u32,
        /// Sampling, used when `end` is the model's last block.
        sampling: Sampling,
        /// Random draws the sampler has already made in this generation.
        drawn: u64,
        /// How the server sends hidden states back.
        reply: Dtype,
        /// The session's state over blocks `start..end`, f32 rows.
        state: Tensor,
    },
    /// Run the session's blocks over some tokens.
    Step {
        /// The session.
        session: u64,
        /// Tokens or hidden states.
        input: StepInput,
    },
    /// Forget the session.
    Close {
        /// The session.
        session: u64,
    },
    /// Pass this session's outputs straight to `next`, which holds the following blocks under
    /// the same session id (for [`Request::Push`]). The server opens its stream to `next` now,
    /// so the first pushed step pays no dial.
    Link {
        /// The session.
        session: u64,
        /// The server of the next hop.
        next: libp2p::PeerId,
    },
    /// Run the session's blocks like [`Request::Step`], then pass the result on without
    /// answering: hidden states go to the linked next hop as another `Push`, and the last hop
    /// sends [`Response::Pushed`] to the session's client. A hop that fails tells the client
    /// on the client's own stream. One message per hop instead of a round trip to the client.
    Push {
        /// The session.
        session: u64,
        /// Tokens or hidden states.
        input: StepInput,
        /// What each hop before this one reported, in order.
        hops: Vec<HopTime>,
    },
    /// How far the session has got (a client finding which hop of a stalled push is stuck).
    Probe {
        /// The session.
        session: u64,
    },
}

/// Server to client.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    /// The server's announcement, JSON (see [`crate::ServerInfo`]).
    Info(Vec<u8>),
    /// The session is open.
    Opened {
        /// The session.
        session: u64,
    },
    /// Hidden states after the session's blocks.
    Hidden {
        /// The states.
        tensor: Tensor,
        /// Microseconds the server spent computing (the rest of a hop's time is overhead).
        compute_us: u32,
    },
    /// The sampled token (the session reaches the last block).
    Token {
        /// The token id.
        id: u32,
        /// blake3 of the last position's logits (f32 LE): what verifiers compare.
        logits_hash: [u8; 32],
        /// Microseconds the server spent computing.
        compute_us: u32,
    },
    /// The session is closed.
    Closed,
    /// The session's outputs now go to the next hop ([`Request::Link`]).
    Linked {
        /// The session.
        session: u64,
    },
    /// The sampled token at the end of a pushed step, from the last hop to the client.
    Pushed {
        /// The token id.
        id: u32,
        /// blake3 of the last position's logits (f32 LE).
        logits_hash: [u8; 32],
        /// What every hop reported, first to last.
        hops: Vec<HopTime>,
    },
    /// Where a session stands ([`Request::Probe`]).
    Progress {
        /// Steps it has completed.
        steps: u64,
        /// Whether a step is running now.
        running: bool,
    },
    /// This server is leaving: it did NOT run the step just asked for, and `state` is the
    /// session's state before that step; resume it elsewhere with [`Request::Resume`].
    ///
    /// `state` is f32 rows of width C, `head_size + 2` rows per block of the session
    /// (a state travels as rows, see [`Request::Resume`]); any other dtype is refused.
    Handoff {
        /// The session's state over its blocks, f32 rows.
        state: Tensor,
        /// The input of the step not run, when it came from the previous hop of a
        /// [`Request::Push`] rather than from the client (who then could not resend it).
        input: Option<StepInput>,
    },
    /// Unasked, on a session's client stream: this hop cannot pass the session's pushed steps
    /// on, because its link to `next` broke (the connection closed or timed out, a write
    /// failed, or `next` refused a push). The client routes around `next`, not this hop.
    NextHopDown {
        /// The session.
        session: u64,
        /// The next hop that failed.
        next: libp2p::PeerId,
        /// What happened, for people.
        reason: String,
    },
    /// The request failed; the stream stays usable.
    Error {
        /// What kind of failure.
        code: ErrorCode,
        /// What was wrong and what to do.
        message: String,
    },
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The bytes did not parse.
    Malformed,
    /// Another protocol version.
    Version,
    /// Another model id.
    WrongModel,
    /// No such session (expired, closed or never opened).
    UnknownSession,
    /// The server has no free session slot.
    Full,
    /// Blocks outside the server's range.
    BadBlocks,
    /// The engine refused the input.
    BadInput,
    /// Anything else on the server's side.
    Internal,
    /// The server is shutting down or dropping these blocks and takes no new sessions; route elsewhere.
    Draining,
    /// Passing a pushed step on to the next hop failed: the next hop is the one at fault.
    NextHop,
}

impl ErrorCode {
    fn code(self) -> u8 {
        match self {
            ErrorCode::Malformed => 1,
            ErrorCode::Version => 2,
            ErrorCode::WrongModel => 3,
            ErrorCode::UnknownSession => 4,
            ErrorCode::Full => 5,
            ErrorCode::BadBlocks => 6,
            ErrorCode::BadInput => 7,
            ErrorCode::Internal => 8,
            ErrorCode::Draining => 9,
            ErrorCode::NextHop => 10,
        }
    }

    fn from_code(c: u8) -> Result<Self> {
        Ok(match c {
            1 => ErrorCode::Malformed,
            2 => ErrorCode::Version,
            3 => ErrorCode::WrongModel,
            4 => ErrorCode::UnknownSession,
            5 => ErrorCode::Full,
            6 => ErrorCode::BadBlocks,
            7 => ErrorCode::BadInput,
            8 => ErrorCode::Internal,
            9 => ErrorCode::Draining,
            10 => ErrorCode::NextHop,
            _ => return Err(NetError::Malformed(format!("unknown error code {c}"))),
        })
    }
}

/// A message with the envelope every frame carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope<M> {
    /// The model the message is about.
    pub model: ModelId,
    /// The message.
    pub msg: M,
}

struct Writer(Vec<u8>);

impl Writer {
    fn new(model: &ModelId, kind: u8) -> Self {
        let mut w = Writer(Vec::with_capacity(64));
        w.u16(PROTOCOL_VERSION);
        w.0.extend_from_slice(&model.0);
        w.u8(kind);
        w
    }
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn f64(&mut self, v: f64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    /// The fields [`Request::Open`] and [`Request::Resume`] share.
    /// A text for people, cut to [`MAX_MESSAGE`] bytes on a character boundary.
    fn message(&mut self, m: &str) {
        let b = m.as_bytes();
        self.bytes(&b[..floor_char_boundary(m, MAX_MESSAGE.min(b.len()))]);
    }

    fn open(&mut self, session: u64, start: u32, end: u32, sampling: &Sampling, drawn: u64, reply: Dtype) {
        self.u64(session);
        self.u32(start);
        self.u32(end);
        self.f64(sampling.temperature);
        self.u32(sampling.top_k);
        self.f64(sampling.top_p);
        self.u64(sampling.seed);
        self.u64(drawn);
        self.u8(reply.code());
    }
    fn tensor(&mut self, t: &Tensor) {
        self.u8(t.dtype.code());
        self.u32(t.rows as u32);
        self.u32(t.cols as u32);
        self.0.extend_from_slice(&t.data);
    }
    fn step_input(&mut self, input: &StepInput) {
        match input {
            StepInput::Tokens(ids) => {
                self.u8(0);
                self.u32(ids.len() as u32);
                ids.iter().for_each(|&t| self.u32(t));
            }
            StepInput::Hidden(t) => {
                self.u8(1);
                self.tensor(t);
            }
        }
    }
    fn hops(&mut self, hops: &[HopTime]) {
        self.u32(hops.len() as u32);
        for h in hops {
            self.u32(h.elapsed_us);
            self.u32(h.compute_us);
            self.u32(h.bytes_in);
        }
    }
}

/// A bounds-checked cursor: every read says what was missing instead of panicking.
struct Reader<'a> {
    b: &'a [u8],
    p: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if self.b.len() - self.p < n {
            return Err(NetError::Malformed(format!("message ends inside {what}")));
        }
        let s = &self.b[self.p..self.p + n];
        self.p += n;
        Ok(s)
    }
    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn f64(&mut self, what: &str) -> Result<f64> {
        Ok(f64::from_bits(self.u64(what)?))
    }
    fn bytes(&mut self, cap: usize, what: &str) -> Result<&'a [u8]> {
        let n = self.u32(what)? as usize;
        if n > cap {
            return Err(NetError::TooLarge { what: what.to_string(), size: n, cap });
        }
        self.take(n, what)
    }
    fn peer_id(&mut self, what: &str) -> Result<libp2p::PeerId> {
        let raw = self.bytes(MAX_PEER_ID, what)?;
        libp2p::PeerId::from_bytes(raw).map_err(|e| NetError::Malformed(format!("{what} is not a peer id: {e}")))
    }

    fn tensor(&mut self) -> Result<Tensor> {
        let dtype = Dtype::from_code(self.u8("tensor dtype")?)?;
        self.tensor_body(dtype)
    }
    /// A session state: an f32 tensor, refused by its dtype before anything else is read.
    fn state(&mut self) -> Result<Tensor> {
        let dtype = Dtype::from_code(self.u8("state dtype")?)?;
        if dtype != Dtype::F32 {
            return Err(NetError::Malformed(format!(
                "a session state must travel as f32 (exact), not {}; encode it with Dtype::F32",
                dtype.name()
            )));
        }
        self.tensor_body(dtype)
    }
    /// A tensor's shape and data after its dtype: caps are checked before allocating.
    fn tensor_body(&mut self, dtype: Dtype) -> Result<Tensor> {
        let rows = self.u32("tensor rows")? as usize;
        let cols = self.u32("tensor cols")? as usize;
        if rows == 0 || cols == 0 {
            return Err(NetError::Malformed("empty tensor".into()));
        }
        if rows > MAX_TOKENS {
            return Err(NetError::TooLarge { what: "tensor rows".into(), size: rows, cap: MAX_TOKENS });
        }
        if cols > MAX_WIDTH {
            return Err(NetError::TooLarge { what: "tensor width".into(), size: cols, cap: MAX_WIDTH });
        }
        let n = match dtype {
            Dtype::F32 => rows * cols * 4,
            Dtype::Q8 => rows * q8_row_bytes(cols),
        };
        let data = self.take(n, "tensor data")?.to_vec();
        let t = Tensor { rows, cols, dtype, data };
        // Reject non-finite values here, so no hop ever computes on them.
        t.check()?;
        Ok(t)
    }
    fn step_input(&mut self) -> Result<StepInput> {
        Ok(match self.u8("input kind")? {
            0 => {
                let n = self.u32("token count")? as usize;
                if n == 0 {
                    return Err(NetError::Malformed("a step with no tokens".into()));
                }
                if n > MAX_TOKENS {
                    return Err(NetError::TooLarge { what: "tokens".into(), size: n, cap: MAX_TOKENS });
                }
                let raw = self.take(n * 4, "token ids")?;
                StepInput::Tokens(raw.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
            }
            1 => StepInput::Hidden(self.tensor()?),
            k => return Err(NetError::Malformed(format!("unknown step input kind {k}"))),
        })
    }
    fn hops(&mut self) -> Result<Vec<HopTime>> {
        let n = self.u32("hop count")? as usize;
        if n > MAX_HOPS {
            return Err(NetError::TooLarge { what: "hops".into(), size: n, cap: MAX_HOPS });
        }
        // Checked against the bytes present before allocating.
        if (self.b.len() - self.p) / 12 < n {
            return Err(NetError::Malformed("message ends inside hop times".into()));
        }
        (0..n)
            .map(|_| {
                Ok(HopTime {
                    elapsed_us: self.u32("hop time")?,
                    compute_us: self.u32("hop compute")?,
                    bytes_in: self.u32("hop bytes")?,
                })
            })
            .collect()
    }
    /// The fields [`Request::Open`] and [`Request::Resume`] share, checked.
    fn open(&mut self) -> Result<(u64, u32, u32, Sampling, u64, Dtype)> {
        let session = self.u64("session")?;
        let start = self.u32("first block")?;
        let end = self.u32("end block")?;
        let sampling = Sampling {
            temperature: self.f64("temperature")?,
            top_k: self.u32("top_k")?,
            top_p: self.f64("top_p")?,
            seed: self.u64("seed")?,
        };
        let drawn = self.u64("sampler draws")?;
        let temperature_ok = sampling.temperature.is_finite() && sampling.temperature >= 0.0;
        let top_p_ok = sampling.top_p > 0.0 && sampling.top_p <= 1.0;
        if !(temperature_ok && top_p_ok) {
            return Err(NetError::Malformed("sampling needs temperature >= 0 and top_p within (0, 1]".into()));
        }
        if start >= end {
            return Err(NetError::Malformed(format!("empty block range {start}..{end}")));
        }
        let reply = Dtype::from_code(self.u8("reply dtype")?)?;
        Ok((session, start, end, sampling, drawn, reply))
    }
    fn end(&self) -> Result<()> {
        if self.p != self.b.len() {
            return Err(NetError::Malformed(format!("{} unexpected bytes after the message", self.b.len() - self.p)));
        }
        Ok(())
    }
    fn envelope(&mut self) -> Result<(ModelId, u8)> {
        let v = self.u16("protocol version")?;
        if v != PROTOCOL_VERSION {
            return Err(NetError::Version { ours: PROTOCOL_VERSION, theirs: v });
        }
        let mut id = [0u8; 32];
        id.copy_from_slice(self.take(32, "model id")?);
        Ok((ModelId(id), self.u8("message kind")?))
    }
}

impl Envelope<Request> {
    /// Encode as a frame payload.
    pub fn to_bytes(&self) -> Vec<u8> {
        let kind = match &self.msg {
            Request::Info => 1,
            Request::Open { .. } => 2,
            Request::Step { .. } => 3,
            Request::Close { .. } => 4,
            Request::Resume { .. } => 5,
            Request::Link { .. } => 6,
            Request::Push { .. } => 7,
            Request::Probe { .. } => 8,
        };
        let mut w = Writer::new(&self.model, kind);
        match &self.msg {
            Request::Info => {}
            Request::Open { session, start, end, sampling, drawn, reply } => {
                w.open(*session, *start, *end, sampling, *drawn, *reply);
            }
            Request::Resume { session, start, end, sampling, drawn, reply, state } => {
                w.open(*session, *start, *end, sampling, *drawn, *reply);
                w.tensor(state);
            }
            Request::Step { session, input } => {
                w.u64(*session);
                w.step_input(input);
            }
            Request::Close { session } | Request::Probe { session } => w.u64(*session),
            Request::Link { session, next } => {
                w.u64(*session);
                w.bytes(&next.to_bytes());
            }
            Request::Push { session, input, hops } => {
                w.u64(*session);
                w.step_input(input);
                w.hops(hops);
            }
        }
        w.0
    }

    /// Decode a frame payload. Never panics; says what was wrong.
    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        let mut r = Reader { b, p: 0 };
        let (model, kind) = r.envelope()?;
        let msg = match kind {
            1 => Request::Info,
            2 => {
                let (session, start, end, sampling, drawn, reply) = r.open()?;
                Request::Open { session, start, end, sampling, drawn, reply }
            }
            3 => Request::Step { session: r.u64("session")?, input: r.step_input()? },
            4 => Request::Close { session: r.u64("session")? },
            5 => {
                let (session, start, end, sampling, drawn, reply) = r.open()?;
                Request::Resume { session, start, end, sampling, drawn, reply, state: r.state()? }
            }
            6 => {
                let session = r.u64("session")?;
                Request::Link { session, next: r.peer_id("next hop")? }
            }
            7 => Request::Push { session: r.u64("session")?, input: r.step_input()?, hops: r.hops()? },
            8 => Request::Probe { session: r.u64("session")? },
            k => return Err(NetError::Malformed(format!("unknown request kind {k}"))),
        };
        r.end()?;
        Ok(Self { model, msg })
    }
}

impl Envelope<Response> {
    /// Encode as a frame payload.
    pub fn to_bytes(&self) -> Vec<u8> {
        let kind = match &self.msg {
            Response::Info(_) => 1,
            Response::Opened { .. } => 2,
            Response::Hidden { .. } => 3,
            Response::Token { .. } => 4,
            Response::Closed => 5,
            Response::Error { .. } => 6,
            Response::Handoff { .. } => 7,
            Response::Linked { .. } => 8,
            Response::Pushed { .. } => 9,
            Response::Progress { .. } => 10,
            Response::NextHopDown { .. } => 11,
        };
        let mut w = Writer::new(&self.model, kind);
        match &self.msg {
            Response::Info(json) => w.bytes(json),
            Response::Opened { session } => w.u64(*session),
            Response::Hidden { tensor, compute_us } => {
                w.u32(*compute_us);
                w.tensor(tensor);
            }
            Response::Token { id, logits_hash, compute_us } => {
                w.u32(*id);
                w.0.extend_from_slice(logits_hash);
                w.u32(*compute_us);
            }
            Response::Closed => {}
            Response::Handoff { state, input } => {
                w.tensor(state);
                match input {
                    None => w.u8(0),
                    Some(i) => {
                        w.u8(1);
                        w.step_input(i);
                    }
                }
            }
            Response::Linked { session } => w.u64(*session),
            Response::Pushed { id, logits_hash, hops } => {
                w.u32(*id);
                w.0.extend_from_slice(logits_hash);
                w.hops(hops);
            }
            Response::Progress { steps, running } => {
                w.u64(*steps);
                w.u8(u8::from(*running));
            }
            Response::Error { code, message } => {
                w.u8(code.code());
                w.message(message);
            }
            Response::NextHopDown { session, next, reason } => {
                w.u64(*session);
                w.bytes(&next.to_bytes());
                w.message(reason);
            }
        }
        w.0
    }

    /// Decode a frame payload. Never panics; says what was wrong.
    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        let mut r = Reader { b, p: 0 };
        let (model, kind) = r.envelope()?;
        let msg = match kind {
            1 => Response::Info(r.bytes(crate::info::MAX_INFO, "server info")?.to_vec()),
            2 => Response::Opened { session: r.u64("session")? },
            3 => {
                let compute_us = r.u32("compute time")?;
                Response::Hidden { tensor: r.tensor()?, compute_us }
            }
            4 => {
                let id = r.u32("token id")?;
                let mut h = [0u8; 32];
                h.copy_from_slice(r.take(32, "logits hash")?);
                Response::Token { id, logits_hash: h, compute_us: r.u32("compute time")? }
            }
            5 => Response::Closed,
            6 => {
                let code = ErrorCode::from_code(r.u8("error code")?)?;
                let m = r.bytes(MAX_MESSAGE, "error message")?;
                Response::Error { code, message: String::from_utf8_lossy(m).into_owned() }
            }
            7 => {
                let state = r.state()?;
                let input = match r.u8("handoff input flag")? {
                    0 => None,
                    1 => Some(r.step_input()?),
                    f => return Err(NetError::Malformed(format!("bad handoff input flag {f}"))),
                };
                Response::Handoff { state, input }
            }
            8 => Response::Linked { session: r.u64("session")? },
            9 => {
                let id = r.u32("token id")?;
                let mut h = [0u8; 32];
                h.copy_from_slice(r.take(32, "logits hash")?);
                Response::Pushed { id, logits_hash: h, hops: r.hops()? }
            }
            10 => {
                let steps = r.u64("steps")?;
                let running = match r.u8("running flag")? {
                    0 => false,
                    1 => true,
                    f => return Err(NetError::Malformed(format!("bad running flag {f}"))),
                };
                Response::Progress { steps, running }
            }
            11 => {
                let session = r.u64("session")?;
                let next = r.peer_id("failed next hop")?;
                let reason = String::from_utf8_lossy(r.bytes(MAX_MESSAGE, "reason")?).into_owned();
                Response::NextHopDown { session, next, reason }
            }
            k => return Err(NetError::Malformed(format!("unknown response kind {k}"))),
        };
        r.end()?;
        Ok(Self { model, msg })
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Read one frame: the length is checked against `cap` before the buffer is allocated.
pub async fn read_frame<R: futures::AsyncRead + Unpin>(r: &mut R, cap: usize) -> Result<Vec<u8>> {
    use futures::AsyncReadExt;
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let n = u32::from_le_bytes(len) as usize;
    if n > cap {
        return Err(NetError::TooLarge { what: "frame".into(), size: n, cap });
    }
    let mut buf = vec![0u8; n];
    r.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Write one frame and flush it.
pub async fn write_frame<W: futures::AsyncWrite + Unpin>(w: &mut W, payload: &[u8]) -> Result<()> {
    use futures::AsyncWriteExt;
    if payload.len() > MAX_FRAME {
        return Err(NetError::TooLarge { what: "frame".into(), size: payload.len(), cap: MAX_FRAME });
    }
    let mut buf = Vec::with_capacity(4 + payload.len());
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(payload);
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id() -> ModelId {
        ModelId([7; 32])
    }

    #[test]
    fn q8_round_trip_is_within_half_a_step() {
        let v: Vec<f32> = (0..200).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.173).collect();
        let t = Tensor::encode(&v, 100, Dtype::Q8).unwrap();
        assert_eq!(t.data.len(), 2 * (4 * 2 + 100));
        let back = t.decode().unwrap();
        for (row, brow) in v.chunks(100).zip(back.chunks(100)) {
            for (blk, bblk) in row.chunks(32).zip(brow.chunks(32)) {
                let step = blk.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0;
                for (a, b) in blk.iter().zip(bblk) {
                    assert!((a - b).abs() <= step * 0.51 + 1e-6, "{a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn non_finite_values_are_refused_both_ways() {
        assert!(Tensor::encode(&[1.0, f32::NAN], 2, Dtype::F32).is_err());
        let mut t = Tensor::encode(&[1.0, 2.0], 2, Dtype::F32).unwrap();
        t.data[4..8].copy_from_slice(&f32::INFINITY.to_le_bytes());
        let e = Envelope { model: id(), msg: Response::Hidden { tensor: t, compute_us: 0 } }.to_bytes();
        let err = Envelope::<Response>::from_bytes(&e).unwrap_err();
        assert!(err.to_string().contains("NaN or infinity"), "{err}");
    }

    #[test]
    fn version_and_truncation_and_oversize_get_clear_errors() {
        let ok = Envelope { model: id(), msg: Request::Step { session: 1, input: StepInput::Tokens(vec![1, 2]) } };
        let mut b = ok.to_bytes();
        assert_eq!(Envelope::<Request>::from_bytes(&b).unwrap(), ok);
        let e = Envelope::<Request>::from_bytes(&b[..b.len() - 1]).unwrap_err();
        assert!(e.to_string().contains("ends inside token ids"), "{e}");
        b[0] = 9;
        let e = Envelope::<Request>::from_bytes(&b).unwrap_err();
        assert!(matches!(e, NetError::Version { theirs: 9, .. }), "{e}");
        // A huge token count is refused before anything is allocated.
        let mut big = Writer::new(&id(), 3);
        big.u64(1);
        big.u8(0);
        big.u32(u32::MAX);
        let e = Envelope::<Request>::from_bytes(&big.0).unwrap_err();
        assert!(matches!(e, NetError::TooLarge { .. }), "{e}");
    }

    #[tokio::test]
    async fn frames_over_the_cap_are_refused_before_reading() {
        let mut bytes = (1u32 << 30).to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0; 16]);
        let e = read_frame(&mut futures::io::Cursor::new(bytes), MAX_FRAME).await.unwrap_err();
        assert!(matches!(e, NetError::TooLarge { .. }), "{e}");
        let mut out = Vec::new();
        write_frame(&mut futures::io::Cursor::new(&mut out), b"hello").await.unwrap();
        let back = read_frame(&mut futures::io::Cursor::new(out), 16).await.unwrap();
        assert_eq!(back, b"hello");
    }

    #[test]
    fn states_travel_only_as_f32() {
        let open = |state| Request::Resume {
            session: 3,
            start: 0,
            end: 2,
            sampling: Sampling::default(),
            drawn: 0,
            reply: Dtype::Q8,
            state,
        };
        let q8 = Tensor::encode(&[0.5; 64], 32, Dtype::Q8).unwrap();
        let e = Envelope::<Request>::from_bytes(&Envelope { model: id(), msg: open(q8.clone()) }.to_bytes());
        let e = e.unwrap_err();
        assert!(matches!(&e, NetError::Malformed(m) if m.contains("must travel as f32")), "{e}");
        let e = Envelope::<Response>::from_bytes(
            &Envelope { model: id(), msg: Response::Handoff { state: q8, input: None } }.to_bytes(),
        );
        let e = e.unwrap_err();
        assert!(matches!(&e, NetError::Malformed(m) if m.contains("must travel as f32")), "{e}");
        // The dtype is refused before the shape is even read: an int8 state claiming 2^32-1 rows
        // is refused for its dtype, an f32 one for its rows, and neither allocates.
        for (dtype, want_dtype) in [(1u8, true), (0u8, false)] {
            let mut w = Writer::new(&id(), 7);
            w.u8(dtype);
            w.u32(u32::MAX);
            w.u32(64);
            let e = Envelope::<Response>::from_bytes(&w.0).unwrap_err();
            if want_dtype {
                assert!(matches!(&e, NetError::Malformed(m) if m.contains("must travel as f32")), "{e}");
            } else {
                assert!(matches!(&e, NetError::TooLarge { cap: MAX_TOKENS, .. }), "{e}");
            }
        }
        // A state with a NaN is refused like any tensor.
        let mut t = Tensor::encode(&[1.0; 4], 2, Dtype::F32).unwrap();
        t.data[0..4].copy_from_slice(&f32::NAN.to_le_bytes());
        let e = Envelope::<Response>::from_bytes(
            &Envelope { model: id(), msg: Response::Handoff { state: t, input: None } }.to_bytes(),
        );
        assert!(e.unwrap_err().to_string().contains("NaN or infinity"));
    }

    #[test]
    fn resume_and_handoff_layout() {
        // A 12-block state with head size 64 and C = 768: 12 * 66 = 792 rows, under the row cap.
        let rows: Vec<f32> = (0..792 * 768).map(|i| (i % 1000) as f32 * 0.25 - 100.0).collect();
        let state = Tensor::encode(&rows, 768, Dtype::F32).unwrap();
        let sampling = Sampling { temperature: 0.7, top_k: 40, top_p: 0.9, seed: 11 };
        let msg = Request::Resume { session: 5, start: 0, end: 12, sampling, drawn: 6, reply: Dtype::F32, state };
        let b = Envelope { model: id(), msg: msg.clone() }.to_bytes();
        // version u16, model id [32], kind u8 = 5; then Open's 53 bytes; then dtype u8 = 0, rows u32, cols u32, data.
        assert_eq!(b[34], 5);
        assert_eq!(b.len(), 35 + 53 + 9 + 792 * 768 * 4);
        assert_eq!(b[35 + 53], 0);
        assert_eq!(b[35 + 54..35 + 58], 792u32.to_le_bytes());
        assert_eq!(b[35 + 58..35 + 62], 768u32.to_le_bytes());
        let back = Envelope::<Request>::from_bytes(&b).unwrap();
        assert_eq!(back.msg, msg);
        let Request::Resume { state, .. } = back.msg else { unreachable!() };
        assert_eq!(state.decode().unwrap(), rows);
        // The same fields before the state as Open, byte for byte.
        let open = Request::Open { session: 5, start: 0, end: 12, sampling, drawn: 6, reply: Dtype::F32 };
        let ob = Envelope { model: id(), msg: open }.to_bytes();
        assert_eq!(ob[35..], b[35..35 + 53]);
        // Handoff: kind 7, then the tensor.
        let h = Envelope {
            model: id(),
            msg: Response::Handoff { state: Tensor::encode(&[1.5; 6], 3, Dtype::F32).unwrap(), input: None },
        };
        let hb = h.to_bytes();
        // Kind 7, the tensor, then a zero byte: no step input.
        assert_eq!((hb[34], hb[35], hb.len(), hb[hb.len() - 1]), (7, 0, 35 + 9 + 24 + 1, 0));
        assert_eq!(Envelope::<Response>::from_bytes(&hb).unwrap(), h);
        // Draining has its own code.
        assert_eq!(ErrorCode::Draining.code(), 9);
        assert_eq!(ErrorCode::from_code(9).unwrap(), ErrorCode::Draining);
    }

    #[test]
    fn links_and_pushes_refuse_bad_peers_and_hop_lists_before_allocating() {
        // A link's next hop and a next-hop notice's dead hop: the same peer-id checks. The
        // second frame's length prefix claims far more than the cap.
        let bad_peer = |kind: u8, request: bool| {
            let frames = [(b"not a multihash".as_slice(), false), (&(1u32 << 20).to_le_bytes()[..], true)];
            frames.map(|(peer, raw)| {
                let mut w = Writer::new(&id(), kind);
                w.u64(1);
                if raw {
                    w.0.extend_from_slice(peer)
                } else {
                    w.bytes(peer)
                }
                w.bytes(b"why");
                if request {
                    Envelope::<Request>::from_bytes(&w.0).map(|_| ())
                } else {
                    Envelope::<Response>::from_bytes(&w.0).map(|_| ())
                }
            })
        };
        for [malformed, oversized] in [bad_peer(6, true), bad_peer(11, false)] {
            let e = malformed.unwrap_err();
            assert!(matches!(&e, NetError::Malformed(m) if m.contains("not a peer id")), "{e}");
            let e = oversized.unwrap_err();
            assert!(matches!(&e, NetError::TooLarge { cap: MAX_PEER_ID, .. }), "{e}");
        }
        let push = |claimed: u32, present: usize| {
            let mut w = Writer::new(&id(), 7);
            w.u64(1);
            w.step_input(&StepInput::Tokens(vec![3]));
            w.u32(claimed);
            w.0.extend(std::iter::repeat_n(0u8, present * 12));
            Envelope::<Request>::from_bytes(&w.0)
        };
        assert!(matches!(push(u32::MAX, 0).unwrap_err(), NetError::TooLarge { cap: MAX_HOPS, .. }));
        let e = push(10, 1).unwrap_err();
        assert!(e.to_string().contains("ends inside hop times"), "{e}");
        let ok = push(2, 2).unwrap();
        assert!(matches!(ok.msg, Request::Push { ref hops, .. } if hops.len() == 2));
        assert_eq!(ErrorCode::from_code(10).unwrap(), ErrorCode::NextHop);
    }

    fn arb_state() -> impl Strategy<Value = Tensor> {
        (1usize..6, 1usize..70).prop_flat_map(|(rows, cols)| {
            proptest::collection::vec(-1e4f32..1e4, rows * cols)
                .prop_map(move |v| Tensor::encode(&v, cols, Dtype::F32).unwrap())
        })
    }

    fn arb_tensor() -> impl Strategy<Value = Tensor> {
        (1usize..4, 1usize..70, any::<bool>()).prop_flat_map(|(rows, cols, q8)| {
            proptest::collection::vec(-1e4f32..1e4, rows * cols)
                .prop_map(move |v| Tensor::encode(&v, cols, if q8 { Dtype::Q8 } else { Dtype::F32 }).unwrap())
        })
    }

    fn arb_input() -> impl Strategy<Value = StepInput> {
        prop_oneof![
            proptest::collection::vec(any::<u32>(), 1..50).prop_map(StepInput::Tokens),
            arb_tensor().prop_map(StepInput::Hidden),
        ]
    }

    fn arb_hops() -> impl Strategy<Value = Vec<HopTime>> {
        proptest::collection::vec(
            (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(elapsed_us, compute_us, bytes_in)| HopTime {
                elapsed_us,
                compute_us,
                bytes_in,
            }),
            0..5,
        )
    }

    fn arb_request() -> impl Strategy<Value = Request> {
        prop_oneof![
            Just(Request::Info),
            (any::<u64>(), 0u32..100, 1u32..100, 0.0f64..3.0, any::<u32>(), 0.01f64..=1.0, any::<u64>(), any::<bool>())
                .prop_map(|(session, start, len, temperature, top_k, top_p, seed, f)| Request::Open {
                    session,
                    start,
                    end: start + len,
                    sampling: Sampling { temperature, top_k, top_p, seed },
                    drawn: seed % 1000,
                    reply: if f { Dtype::F32 } else { Dtype::Q8 },
                }),
            (any::<u64>(), arb_input()).prop_map(|(session, input)| Request::Step { session, input }),
            any::<u64>().prop_map(|session| Request::Close { session }),
            any::<u64>().prop_map(|session| Request::Probe { session }),
            (any::<u64>(), any::<[u8; 32]>()).prop_map(|(session, key)| Request::Link {
                session,
                next: libp2p::identity::Keypair::ed25519_from_bytes(key).unwrap().public().to_peer_id(),
            }),
            (any::<u64>(), arb_input(), arb_hops()).prop_map(|(session, input, hops)| Request::Push {
                session,
                input,
                hops
            }),
            (any::<u64>(), 0u32..100, 1u32..100, 0.0f64..3.0, any::<u32>(), 0.01f64..=1.0, any::<u64>(), arb_state())
                .prop_map(|(session, start, len, temperature, top_k, top_p, seed, state)| Request::Resume {
                    session,
                    start,
                    end: start + len,
                    sampling: Sampling { temperature, top_k, top_p, seed },
                    drawn: seed % 1000,
                    reply: if seed % 2 == 0 { Dtype::F32 } else { Dtype::Q8 },
                    state,
                }),
        ]
    }

    fn arb_response() -> impl Strategy<Value = Response> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..200).prop_map(Response::Info),
            any::<u64>().prop_map(|session| Response::Opened { session }),
            (arb_tensor(), any::<u32>()).prop_map(|(tensor, compute_us)| Response::Hidden { tensor, compute_us }),
            (any::<u32>(), any::<[u8; 32]>(), any::<u32>()).prop_map(|(id, logits_hash, compute_us)| Response::Token {
                id,
                logits_hash,
                compute_us
            }),
            Just(Response::Closed),
            ("[a-z é]{0,40}", 1u8..10)
                .prop_map(|(message, c)| Response::Error { code: ErrorCode::from_code(c).unwrap(), message }),
            (arb_state(), proptest::option::of(arb_input()))
                .prop_map(|(state, input)| Response::Handoff { state, input }),
            any::<u64>().prop_map(|session| Response::Linked { session }),
            (any::<u32>(), any::<[u8; 32]>(), arb_hops()).prop_map(|(id, logits_hash, hops)| Response::Pushed {
                id,
                logits_hash,
                hops
            }),
            (any::<u64>(), any::<bool>()).prop_map(|(steps, running)| Response::Progress { steps, running }),
            (any::<u64>(), any::<[u8; 32]>(), "[a-z é]{0,40}").prop_map(|(session, key, reason)| {
                Response::NextHopDown {
                    session,
                    next: libp2p::identity::Keypair::ed25519_from_bytes(key).unwrap().public().to_peer_id(),
                    reason,
                }
            }),
        ]
    }

    proptest! {
        #[test]
        fn requests_round_trip(msg in arb_request(), m in any::<[u8; 32]>()) {
            let e = Envelope { model: ModelId(m), msg };
            prop_assert_eq!(Envelope::<Request>::from_bytes(&e.to_bytes()).unwrap(), e);
        }

        #[test]
        fn responses_round_trip(msg in arb_response(), m in any::<[u8; 32]>()) {
            let e = Envelope { model: ModelId(m), msg };
            prop_assert_eq!(Envelope::<Response>::from_bytes(&e.to_bytes()).unwrap(), e);
        }

        #[test]
        fn f32_tensors_are_lossless(v in proptest::collection::vec(-1e30f32..1e30, 1..300)) {
            let t = Tensor::encode(&v, v.len(), Dtype::F32).unwrap();
            prop_assert_eq!(t.decode().unwrap(), v);
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Envelope::<Request>::from_bytes(&b);
            let _ = Envelope::<Response>::from_bytes(&b);
        }

        #[test]
        fn every_truncation_is_an_error(msg in arb_request()) {
            let b = Envelope { model: id(), msg }.to_bytes();
            for cut in 0..b.len() {
                prop_assert!(Envelope::<Request>::from_bytes(&b[..cut]).is_err());
            }
        }

        #[test]
        fn every_response_truncation_is_an_error(msg in arb_response()) {
            let b = Envelope { model: id(), msg }.to_bytes();
            for cut in 0..b.len() {
                prop_assert!(Envelope::<Response>::from_bytes(&b[..cut]).is_err());
            }
        }

        #[test]
        fn mutated_messages_never_panic(
            req in arb_request(),
            resp in arb_response(),
            at in any::<proptest::sample::Index>(),
            byte in any::<u8>(),
        ) {
            // Random bytes rarely get past the envelope; valid messages with one byte changed
            // reach every field decoder, the new state tensors included.
            for mut b in [Envelope { model: id(), msg: req.clone() }.to_bytes(), Envelope { model: id(), msg: resp.clone() }.to_bytes()] {
                let i = at.index(b.len());
                b[i] = byte;
                if let Ok(e) = Envelope::<Request>::from_bytes(&b) {
                    // What decodes encodes back to the same bytes.
                    prop_assert_eq!(e.to_bytes(), b.clone());
                }
                if let Ok(e) = Envelope::<Response>::from_bytes(&b) {
                    if let Response::Hidden { tensor: t, .. } | Response::Handoff { state: t, .. } = &e.msg {
                        prop_assert!(t.decode().is_ok());
                    }
                }
            }
        }
    }
}
