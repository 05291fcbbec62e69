//! The inference service: opening sessions over a server's blocks, stepping them through a
//! pipeline of hops, handing them over, and the sampled tokens coming back.
//!
//! A session's recurrent state (in [`Request::Resume`] and [`Response::Handoff`]) travels as
//! an f32 [`Tensor`] of rows of width C: per block, the token-shift rows then the WKV state as
//! head-size rows (`odin_engine::State::to_rows`).
//!
//! Sampling settings travel as `odin_format::Sampling`, field by field (temperature f64,
//! top_k u32, top_p f64, seed u64) and are range-checked on the way in.

use odin_format::Sampling;

use crate::codec::{Reader, Writer};
use crate::envelope::{Message, Service};
use crate::error::{ProtoError, Result};
use crate::peer::PeerBytes;
use crate::tensor::{Dtype, Tensor, MAX_TOKENS};
use crate::verify::Claim;

/// Version of the inference protocol and of the server announcements; peers with another
/// version are refused.
/// (3: servers pass a session's activations straight to the next hop, see [`Request::Push`];
/// 4: a hop names the next hop it cannot reach, unasked, with [`Response::NextHopDown`];
/// 5: every step's answer carries the server's signed [`Claim`], and a step can be revealed
/// ([`Request::Reveal`]) and audited ([`Request::Audit`]).)
pub const PROTOCOL_VERSION: u16 = 5;

/// The libp2p stream protocol the inference service's streams are opened with. Unchanged
/// since the first release: the version that matters travels in every envelope.
pub const PROTOCOL_ID: &str = "/odin/shard/1";

/// Most hops a pushed step may have passed through (each adds one [`HopTime`]).
pub const MAX_HOPS: usize = 256;
/// Largest server announcement (JSON) accepted, in a [`Response::Info`] or over gossip
/// (gossipsub caps messages at 64 KiB; ours stay far below).
pub const MAX_INFO: usize = 16 * 1024;

/// The inference service: [`Request`]s from a session's client (or the previous hop), and
/// [`Response`]s from a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Inference;

impl Service for Inference {
    const NAME: &'static str = "inference";
    const PROTOCOL_ID: &'static str = PROTOCOL_ID;
    const VERSION: u16 = PROTOCOL_VERSION;
    type Request = Request;
    type Response = Response;
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
        next: PeerBytes,
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
        /// Each earlier hop's signed claim about this step, in order.
        claims: Vec<Claim>,
    },
    /// How far the session has got (a client finding which hop of a stalled push is stuck).
    Probe {
        /// The session.
        session: u64,
    },
    /// Send the input and the state-before of one of the session's recent steps, so the
    /// client can have it recomputed (asked after the step's claim, so the server cannot know
    /// beforehand which steps are checked).
    Reveal {
        /// The session.
        session: u64,
        /// The step, as its claim numbers it.
        step: u64,
    },
    /// Recompute a step of someone else's session on this server's blocks, without opening a
    /// session, and sign what came out: the audit of another server's [`Claim`].
    Audit {
        /// The audited session (named in this server's claim).
        session: u64,
        /// The audited step.
        step: u64,
        /// First block.
        start: u32,
        /// One past the last block.
        end: u32,
        /// Sampling, used when `end` is the model's last block.
        sampling: Sampling,
        /// Random draws the sampler had made before the step.
        drawn: u64,
        /// The dtype the audited server sent its hidden states in.
        reply: Dtype,
        /// The step's input.
        input: StepInput,
        /// The state before the step, f32 rows.
        before: Tensor,
    },
}

/// Server to client.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    /// The server's announcement, JSON (`odin_net::ServerInfo`), at most [`MAX_INFO`] bytes.
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
        /// The server's signed claim about the step.
        claim: Claim,
    },
    /// The sampled token (the session reaches the last block).
    Token {
        /// The token id.
        id: u32,
        /// blake3 of the last position's logits (f32 LE): what verifiers compare.
        logits_hash: [u8; 32],
        /// Microseconds the server spent computing.
        compute_us: u32,
        /// The server's signed claim about the step.
        claim: Claim,
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
        /// Every hop's signed claim about the step, first to last.
        claims: Vec<Claim>,
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
        next: PeerBytes,
        /// What happened, for people.
        reason: String,
    },
    /// A step's input and state-before ([`Request::Reveal`]).
    Revealed {
        /// The step's input.
        input: StepInput,
        /// The session's state before the step, f32 rows.
        before: Tensor,
    },
    /// The auditor's own signed claim about a recomputed step ([`Request::Audit`]).
    Audited {
        /// The claim.
        claim: Claim,
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
    /// The byte that names it on the wire.
    pub fn code(self) -> u8 {
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

    /// The code a wire byte names.
    pub fn from_code(c: u8) -> Result<Self> {
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
            _ => return Err(ProtoError::Malformed(format!("unknown error code {c}"))),
        })
    }
}

/// The fields [`Request::Open`] and [`Request::Resume`] share.
fn write_open(w: &mut Writer, session: u64, start: u32, end: u32, sampling: &Sampling, drawn: u64, reply: Dtype) {
    w.u64(session);
    w.u32(start);
    w.u32(end);
    write_sampling(w, sampling);
    w.u64(drawn);
    w.u8(reply.code());
}

/// Sampling settings, field by field.
pub(crate) fn write_sampling(w: &mut Writer, sampling: &Sampling) {
    w.f64(sampling.temperature);
    w.u32(sampling.top_k);
    w.f64(sampling.top_p);
    w.u64(sampling.seed);
}

/// Sampling settings, range-checked.
pub(crate) fn read_sampling(r: &mut Reader<'_>) -> Result<Sampling> {
    let sampling = Sampling {
        temperature: r.f64("temperature")?,
        top_k: r.u32("top_k")?,
        top_p: r.f64("top_p")?,
        seed: r.u64("seed")?,
    };
    sampling.check().map_err(|e| ProtoError::Malformed(format!("sampling: {e}")))?;
    Ok(sampling)
}

/// The fields [`Request::Open`] and [`Request::Resume`] share, checked.
fn read_open(r: &mut Reader<'_>) -> Result<(u64, u32, u32, Sampling, u64, Dtype)> {
    let session = r.u64("session")?;
    let start = r.u32("first block")?;
    let end = r.u32("end block")?;
    let sampling = read_sampling(r)?;
    let drawn = r.u64("sampler draws")?;
    if start >= end {
        return Err(ProtoError::Malformed(format!("empty block range {start}..{end}")));
    }
    let reply = Dtype::from_code(r.u8("reply dtype")?)?;
    Ok((session, start, end, sampling, drawn, reply))
}

pub(crate) fn write_step_input(w: &mut Writer, input: &StepInput) {
    match input {
        StepInput::Tokens(ids) => {
            w.u8(0);
            w.u32(ids.len() as u32);
            ids.iter().for_each(|&t| w.u32(t));
        }
        StepInput::Hidden(t) => {
            w.u8(1);
            w.tensor(t);
        }
    }
}

pub(crate) fn read_step_input(r: &mut Reader<'_>) -> Result<StepInput> {
    Ok(match r.u8("input kind")? {
        0 => {
            let n = r.u32("token count")? as usize;
            if n == 0 {
                return Err(ProtoError::Malformed("a step with no tokens".into()));
            }
            if n > MAX_TOKENS {
                return Err(ProtoError::TooLarge { what: "tokens".into(), size: n, cap: MAX_TOKENS });
            }
            let raw = r.take(n * 4, "token ids")?;
            StepInput::Tokens(raw.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
        }
        1 => StepInput::Hidden(r.tensor()?),
        k => return Err(ProtoError::Malformed(format!("unknown step input kind {k}"))),
    })
}

fn write_claims(w: &mut Writer, claims: &[Claim]) {
    w.u32(claims.len() as u32);
    claims.iter().for_each(|c| c.write(w));
}

fn read_claims(r: &mut Reader<'_>) -> Result<Vec<Claim>> {
    let n = r.u32("claim count")? as usize;
    if n > MAX_HOPS {
        return Err(ProtoError::TooLarge { what: "claims".into(), size: n, cap: MAX_HOPS });
    }
    // A claim is at least a peer id, four hashes and its fixed fields: checked before allocating.
    if !r.fits(n, 2 + 8 + 8 + 4 + 4 + 4 * 32 + 4 + 4) {
        return Err(ProtoError::Malformed("message ends inside step claims".into()));
    }
    (0..n).map(|_| Claim::read(r)).collect()
}

fn write_hops(w: &mut Writer, hops: &[HopTime]) {
    w.u32(hops.len() as u32);
    for h in hops {
        w.u32(h.elapsed_us);
        w.u32(h.compute_us);
        w.u32(h.bytes_in);
    }
}

fn read_hops(r: &mut Reader<'_>) -> Result<Vec<HopTime>> {
    let n = r.u32("hop count")? as usize;
    if n > MAX_HOPS {
        return Err(ProtoError::TooLarge { what: "hops".into(), size: n, cap: MAX_HOPS });
    }
    // Checked against the bytes present before allocating.
    if !r.fits(n, 12) {
        return Err(ProtoError::Malformed("message ends inside hop times".into()));
    }
    (0..n)
        .map(|_| {
            Ok(HopTime {
                elapsed_us: r.u32("hop time")?,
                compute_us: r.u32("hop compute")?,
                bytes_in: r.u32("hop bytes")?,
            })
        })
        .collect()
}

/// A session state: an exact (f32) tensor, refused by its dtype before anything else is read.
fn read_state(r: &mut Reader<'_>) -> Result<Tensor> {
    r.f32_tensor("a session state")
}

impl Message for Request {
    type Service = Inference;

    fn kind(&self) -> u8 {
        match self {
            Request::Info => 1,
            Request::Open { .. } => 2,
            Request::Step { .. } => 3,
            Request::Close { .. } => 4,
            Request::Resume { .. } => 5,
            Request::Link { .. } => 6,
            Request::Push { .. } => 7,
            Request::Probe { .. } => 8,
            Request::Reveal { .. } => 9,
            Request::Audit { .. } => 10,
        }
    }

    fn write(&self, w: &mut Writer) {
        match self {
            Request::Info => {}
            Request::Open { session, start, end, sampling, drawn, reply } => {
                write_open(w, *session, *start, *end, sampling, *drawn, *reply);
            }
            Request::Resume { session, start, end, sampling, drawn, reply, state } => {
                write_open(w, *session, *start, *end, sampling, *drawn, *reply);
                w.tensor(state);
            }
            Request::Step { session, input } => {
                w.u64(*session);
                write_step_input(w, input);
            }
            Request::Close { session } | Request::Probe { session } => w.u64(*session),
            Request::Link { session, next } => {
                w.u64(*session);
                w.peer(next);
            }
            Request::Push { session, input, hops, claims } => {
                w.u64(*session);
                write_step_input(w, input);
                write_hops(w, hops);
                write_claims(w, claims);
            }
            Request::Reveal { session, step } => {
                w.u64(*session);
                w.u64(*step);
            }
            Request::Audit { session, step, start, end, sampling, drawn, reply, input, before } => {
                w.u64(*step);
                write_open(w, *session, *start, *end, sampling, *drawn, *reply);
                write_step_input(w, input);
                w.tensor(before);
            }
        }
    }

    fn read(kind: u8, r: &mut Reader<'_>) -> Result<Self> {
        Ok(match kind {
            1 => Request::Info,
            2 => {
                let (session, start, end, sampling, drawn, reply) = read_open(r)?;
                Request::Open { session, start, end, sampling, drawn, reply }
            }
            3 => Request::Step { session: r.u64("session")?, input: read_step_input(r)? },
            4 => Request::Close { session: r.u64("session")? },
            5 => {
                let (session, start, end, sampling, drawn, reply) = read_open(r)?;
                Request::Resume { session, start, end, sampling, drawn, reply, state: read_state(r)? }
            }
            6 => {
                let session = r.u64("session")?;
                Request::Link { session, next: r.peer("next hop")? }
            }
            7 => Request::Push {
                session: r.u64("session")?,
                input: read_step_input(r)?,
                hops: read_hops(r)?,
                claims: read_claims(r)?,
            },
            8 => Request::Probe { session: r.u64("session")? },
            9 => Request::Reveal { session: r.u64("session")?, step: r.u64("step")? },
            10 => {
                let step = r.u64("audited step")?;
                let (session, start, end, sampling, drawn, reply) = read_open(r)?;
                let input = read_step_input(r)?;
                Request::Audit { session, step, start, end, sampling, drawn, reply, input, before: read_state(r)? }
            }
            k => return Err(ProtoError::Malformed(format!("unknown request kind {k}"))),
        })
    }
}

impl Message for Response {
    type Service = Inference;

    fn kind(&self) -> u8 {
        match self {
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
            Response::Revealed { .. } => 12,
            Response::Audited { .. } => 13,
        }
    }

    fn write(&self, w: &mut Writer) {
        match self {
            Response::Info(json) => w.bytes(json),
            Response::Opened { session } => w.u64(*session),
            Response::Hidden { tensor, compute_us, claim } => {
                w.u32(*compute_us);
                w.tensor(tensor);
                claim.write(w);
            }
            Response::Token { id, logits_hash, compute_us, claim } => {
                w.u32(*id);
                w.raw(logits_hash);
                w.u32(*compute_us);
                claim.write(w);
            }
            Response::Closed => {}
            Response::Handoff { state, input } => {
                w.tensor(state);
                match input {
                    None => w.u8(0),
                    Some(i) => {
                        w.u8(1);
                        write_step_input(w, i);
                    }
                }
            }
            Response::Linked { session } => w.u64(*session),
            Response::Pushed { id, logits_hash, hops, claims } => {
                w.u32(*id);
                w.raw(logits_hash);
                write_hops(w, hops);
                write_claims(w, claims);
            }
            Response::Revealed { input, before } => {
                write_step_input(w, input);
                w.tensor(before);
            }
            Response::Audited { claim } => claim.write(w),
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
                w.peer(next);
                w.message(reason);
            }
        }
    }

    fn read(kind: u8, r: &mut Reader<'_>) -> Result<Self> {
        Ok(match kind {
            1 => Response::Info(r.bytes(MAX_INFO, "server info")?.to_vec()),
            2 => Response::Opened { session: r.u64("session")? },
            3 => {
                let compute_us = r.u32("compute time")?;
                let tensor = r.tensor()?;
                Response::Hidden { tensor, compute_us, claim: Claim::read(r)? }
            }
            4 => {
                let id = r.u32("token id")?;
                let logits_hash = r.array("logits hash")?;
                let compute_us = r.u32("compute time")?;
                Response::Token { id, logits_hash, compute_us, claim: Claim::read(r)? }
            }
            5 => Response::Closed,
            6 => {
                let code = ErrorCode::from_code(r.u8("error code")?)?;
                Response::Error { code, message: r.message("error message")? }
            }
            7 => {
                let state = read_state(r)?;
                let input = match r.u8("handoff input flag")? {
                    0 => None,
                    1 => Some(read_step_input(r)?),
                    f => return Err(ProtoError::Malformed(format!("bad handoff input flag {f}"))),
                };
                Response::Handoff { state, input }
            }
            8 => Response::Linked { session: r.u64("session")? },
            9 => {
                let id = r.u32("token id")?;
                let logits_hash = r.array("logits hash")?;
                let hops = read_hops(r)?;
                Response::Pushed { id, logits_hash, hops, claims: read_claims(r)? }
            }
            10 => {
                let steps = r.u64("steps")?;
                let running = match r.u8("running flag")? {
                    0 => false,
                    1 => true,
                    f => return Err(ProtoError::Malformed(format!("bad running flag {f}"))),
                };
                Response::Progress { steps, running }
            }
            11 => {
                let session = r.u64("session")?;
                let next = r.peer("failed next hop")?;
                Response::NextHopDown { session, next, reason: r.message("reason")? }
            }
            12 => {
                let input = read_step_input(r)?;
                Response::Revealed { input, before: read_state(r)? }
            }
            13 => Response::Audited { claim: Claim::read(r)? },
            k => return Err(ProtoError::Malformed(format!("unknown response kind {k}"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{header, Envelope};
    use odin_format::ModelId;
    use proptest::prelude::*;

    fn id() -> ModelId {
        ModelId([7; 32])
    }

    /// The envelope of a `kind` message, ready for hand-written (often malformed) fields.
    fn raw(kind: u8) -> Writer {
        header::<Inference>(&id(), kind)
    }

    /// The bytes of an ed25519 peer id (what libp2p's `PeerId::to_bytes` gives): an identity
    /// multihash of 36 bytes inlining the protobuf-encoded key.
    fn ed25519_peer(key: [u8; 32]) -> PeerBytes {
        let mut b = vec![0x00, 36, 0x08, 0x01, 0x12, 0x20];
        b.extend_from_slice(&key);
        PeerBytes::new(&b).unwrap()
    }

    fn claim(step: u64) -> Claim {
        Claim {
            server: ed25519_peer([step as u8; 32]),
            session: 9,
            step,
            start: 1,
            end: 2,
            input: [1; 32],
            before: [2; 32],
            output: [3; 32],
            after: [4; 32],
            token: crate::verify::NO_TOKEN,
            sig: vec![5; 64],
        }
    }

    #[test]
    fn non_finite_values_are_refused_both_ways() {
        assert!(Tensor::encode(&[1.0, f32::NAN], 2, Dtype::F32).is_err());
        let mut t = Tensor::encode(&[1.0, 2.0], 2, Dtype::F32).unwrap();
        t.data[4..8].copy_from_slice(&f32::INFINITY.to_le_bytes());
        let e =
            Envelope { model: id(), msg: Response::Hidden { tensor: t, compute_us: 0, claim: claim(1) } }.to_bytes();
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
        assert!(matches!(e, ProtoError::Version { theirs: 9, .. }), "{e}");
        // A huge token count is refused before anything is allocated.
        let mut big = raw(3);
        big.u64(1);
        big.u8(0);
        big.u32(u32::MAX);
        let e = Envelope::<Request>::from_bytes(&big.into_bytes()).unwrap_err();
        assert!(matches!(e, ProtoError::TooLarge { .. }), "{e}");
    }

    #[test]
    fn out_of_range_sampling_is_refused_by_name() {
        let open = |temperature, top_p| Request::Open {
            session: 1,
            start: 0,
            end: 1,
            sampling: Sampling { temperature, top_k: 0, top_p, seed: 0 },
            drawn: 0,
            reply: Dtype::F32,
        };
        for (msg, what) in
            [(open(-1.0, 1.0), "temperature"), (open(f64::NAN, 1.0), "temperature"), (open(0.5, 0.0), "top_p")]
        {
            let e = Envelope::<Request>::from_bytes(&Envelope { model: id(), msg }.to_bytes()).unwrap_err();
            assert!(matches!(&e, ProtoError::Malformed(m) if m.contains(what)), "{e}");
        }
        assert!(Envelope::<Request>::from_bytes(&Envelope { model: id(), msg: open(0.7, 0.9) }.to_bytes()).is_ok());
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
        assert!(matches!(&e, ProtoError::Malformed(m) if m.contains("must travel as f32")), "{e}");
        let e = Envelope::<Response>::from_bytes(
            &Envelope { model: id(), msg: Response::Handoff { state: q8, input: None } }.to_bytes(),
        );
        let e = e.unwrap_err();
        assert!(matches!(&e, ProtoError::Malformed(m) if m.contains("must travel as f32")), "{e}");
        // The dtype is refused before the shape is even read: an int8 state claiming 2^32-1 rows
        // is refused for its dtype, an f32 one for its rows, and neither allocates.
        for (dtype, want_dtype) in [(1u8, true), (0u8, false)] {
            let mut w = raw(7);
            w.u8(dtype);
            w.u32(u32::MAX);
            w.u32(64);
            let e = Envelope::<Response>::from_bytes(&w.into_bytes()).unwrap_err();
            if want_dtype {
                assert!(matches!(&e, ProtoError::Malformed(m) if m.contains("must travel as f32")), "{e}");
            } else {
                assert!(matches!(&e, ProtoError::TooLarge { cap: MAX_TOKENS, .. }), "{e}");
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
    fn open_and_link_layout() {
        // Pinned bytes: the version and the model id, kind 2, then session, blocks, sampling
        // (temperature f64, top_k u32, top_p f64, seed u64), draws and the reply dtype, LE.
        let sampling = Sampling { temperature: 0.5, top_k: 3, top_p: 0.25, seed: 9 };
        let open = Request::Open { session: 1, start: 2, end: 4, sampling, drawn: 6, reply: Dtype::Q8 };
        let b = Envelope { model: id(), msg: open }.to_bytes();
        let mut want = vec![5, 0];
        want.extend_from_slice(&[7; 32]);
        want.push(2);
        want.extend_from_slice(&1u64.to_le_bytes());
        want.extend_from_slice(&2u32.to_le_bytes());
        want.extend_from_slice(&4u32.to_le_bytes());
        want.extend_from_slice(&0.5f64.to_le_bytes());
        want.extend_from_slice(&3u32.to_le_bytes());
        want.extend_from_slice(&0.25f64.to_le_bytes());
        want.extend_from_slice(&9u64.to_le_bytes());
        want.extend_from_slice(&6u64.to_le_bytes());
        want.push(1);
        assert_eq!(b, want);
        // A link: kind 6, the session, then the peer id's bytes behind a u32 length.
        let next = ed25519_peer([3; 32]);
        let b = Envelope { model: id(), msg: Request::Link { session: 1, next: next.clone() } }.to_bytes();
        assert_eq!(b[34], 6);
        assert_eq!(b[43..47], 38u32.to_le_bytes());
        assert_eq!(&b[47..], next.as_bytes());
    }

    #[test]
    fn links_and_pushes_refuse_bad_peers_and_hop_lists_before_allocating() {
        // A link's next hop and a next-hop notice's dead hop: the same peer-id checks. The
        // second frame's length prefix claims far more than the cap.
        let bad_peer = |kind: u8, request: bool| {
            let frames = [(b"not a multihash".as_slice(), false), (&(1u32 << 20).to_le_bytes()[..], true)];
            frames.map(|(peer, raw_bytes)| {
                let mut w = raw(kind);
                w.u64(1);
                if raw_bytes {
                    w.raw(peer)
                } else {
                    w.bytes(peer)
                }
                w.bytes(b"why");
                let b = w.into_bytes();
                if request {
                    Envelope::<Request>::from_bytes(&b).map(|_| ())
                } else {
                    Envelope::<Response>::from_bytes(&b).map(|_| ())
                }
            })
        };
        for [malformed, oversized] in [bad_peer(6, true), bad_peer(11, false)] {
            let e = malformed.unwrap_err();
            assert!(matches!(&e, ProtoError::Malformed(m) if m.contains("not a peer id")), "{e}");
            let e = oversized.unwrap_err();
            assert!(matches!(&e, ProtoError::TooLarge { cap: crate::MAX_PEER_ID, .. }), "{e}");
        }
        let push = |claimed: u32, present: usize| {
            let mut w = raw(7);
            w.u64(1);
            write_step_input(&mut w, &StepInput::Tokens(vec![3]));
            w.u32(claimed);
            w.raw(&vec![0u8; present * 12]);
            w.u32(0);
            Envelope::<Request>::from_bytes(&w.into_bytes())
        };
        assert!(matches!(push(u32::MAX, 0).unwrap_err(), ProtoError::TooLarge { cap: MAX_HOPS, .. }));
        let e = push(10, 1).unwrap_err();
        assert!(e.to_string().contains("ends inside hop times"), "{e}");
        let ok = push(2, 2).unwrap();
        assert!(matches!(ok.msg, Request::Push { ref hops, .. } if hops.len() == 2));
        assert_eq!(ErrorCode::from_code(10).unwrap(), ErrorCode::NextHop);
        // Claim lists are capped and checked against the bytes present before allocating.
        let claims = |claimed: u32| {
            let mut w = raw(9);
            w.u32(1);
            w.raw(&[0; 32]);
            write_hops(&mut w, &[]);
            w.u32(claimed);
            Envelope::<Response>::from_bytes(&w.into_bytes())
        };
        assert!(matches!(claims(u32::MAX).unwrap_err(), ProtoError::TooLarge { cap: MAX_HOPS, .. }));
        let e = claims(3).unwrap_err();
        assert!(e.to_string().contains("ends inside step claims"), "{e}");
    }

    #[test]
    fn the_service_names_its_stream_protocol_and_version() {
        assert_eq!(<Inference as Service>::PROTOCOL_ID, "/odin/shard/1");
        assert_eq!(<Inference as Service>::VERSION, 5);
        // Info payloads over the announcement cap are refused by their length alone.
        let mut w = raw(1);
        w.u32(MAX_INFO as u32 + 1);
        let e = Envelope::<Response>::from_bytes(&w.into_bytes()).unwrap_err();
        assert!(matches!(&e, ProtoError::TooLarge { cap: MAX_INFO, .. }), "{e}");
    }

    fn arb_peer() -> impl Strategy<Value = PeerBytes> {
        prop_oneof![
            any::<[u8; 32]>().prop_map(ed25519_peer),
            // A hashed id (sha2-256), as an RSA key's would be.
            any::<[u8; 32]>().prop_map(|d| {
                let mut b = vec![0x12, 32];
                b.extend_from_slice(&d);
                PeerBytes::new(&b).unwrap()
            }),
        ]
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

    fn arb_claim() -> impl Strategy<Value = Claim> {
        (arb_peer(), any::<(u64, u64)>(), 0u32..50, 1u32..50, any::<[[u8; 32]; 4]>(), any::<u32>(), 0usize..70)
            .prop_map(|(server, (session, step), start, len, [input, before, output, after], token, sig)| Claim {
                server,
                session,
                step,
                start,
                end: start + len,
                input,
                before,
                output,
                after,
                token,
                sig: vec![7; sig],
            })
    }

    fn arb_claims() -> impl Strategy<Value = Vec<Claim>> {
        proptest::collection::vec(arb_claim(), 0..4)
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
            (any::<u64>(), arb_peer()).prop_map(|(session, next)| Request::Link { session, next }),
            (any::<u64>(), arb_input(), arb_hops(), arb_claims())
                .prop_map(|(session, input, hops, claims)| { Request::Push { session, input, hops, claims } }),
            any::<(u64, u64)>().prop_map(|(session, step)| Request::Reveal { session, step }),
            (any::<(u64, u64)>(), 0u32..100, 1u32..100, any::<u64>(), arb_input(), arb_state()).prop_map(
                |((session, step), start, len, seed, input, before)| Request::Audit {
                    session,
                    step,
                    start,
                    end: start + len,
                    sampling: Sampling { temperature: 0.5, top_k: 3, top_p: 0.9, seed },
                    drawn: seed % 77,
                    reply: if seed % 2 == 0 { Dtype::F32 } else { Dtype::Q8 },
                    input,
                    before,
                }
            ),
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
            (arb_tensor(), any::<u32>(), arb_claim()).prop_map(|(tensor, compute_us, claim)| Response::Hidden {
                tensor,
                compute_us,
                claim
            }),
            (any::<u32>(), any::<[u8; 32]>(), any::<u32>(), arb_claim()).prop_map(
                |(id, logits_hash, compute_us, claim)| Response::Token { id, logits_hash, compute_us, claim }
            ),
            (arb_input(), arb_state()).prop_map(|(input, before)| Response::Revealed { input, before }),
            arb_claim().prop_map(|claim| Response::Audited { claim }),
            Just(Response::Closed),
            ("[a-z é]{0,40}", 1u8..10)
                .prop_map(|(message, c)| Response::Error { code: ErrorCode::from_code(c).unwrap(), message }),
            (arb_state(), proptest::option::of(arb_input()))
                .prop_map(|(state, input)| Response::Handoff { state, input }),
            any::<u64>().prop_map(|session| Response::Linked { session }),
            (any::<u32>(), any::<[u8; 32]>(), arb_hops(), arb_claims())
                .prop_map(|(id, logits_hash, hops, claims)| { Response::Pushed { id, logits_hash, hops, claims } }),
            (any::<u64>(), any::<bool>()).prop_map(|(steps, running)| Response::Progress { steps, running }),
            (any::<u64>(), arb_peer(), "[a-z é]{0,40}").prop_map(|(session, next, reason)| Response::NextHopDown {
                session,
                next,
                reason
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
