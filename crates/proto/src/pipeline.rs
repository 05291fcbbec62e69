//! The pipeline-training service (`/odin/pipeline/1`): the backward relay. A driver sends a
//! batch down a chain of stages, each holding a block range of a model none of them holds
//! whole; the last computes the loss; gradients come back up; every stage steps its own
//! blocks' optimizer when the driver says how to (the learning rate and the global clipping
//! scale, which needs every stage's gradient norm).
//!
//! Hidden states and gradients travel as [`Tensor`]s of `batch × seq` rows; f32 makes the
//! relay reproduce one machine's training, int8 trades that for a quarter of the bytes.

use crate::codec::{Reader, Writer};
use crate::envelope::{Message, Service};
use crate::error::{ProtoError, Result};
use crate::tensor::{Tensor, MAX_TOKENS};

/// The pipeline service's version.
pub const PROTOCOL_VERSION: u16 = 1;
/// Its stream protocol id.
pub const PROTOCOL_ID: &str = "/odin/pipeline/1";

/// The pipeline-training service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pipeline;

impl Service for Pipeline {
    const NAME: &'static str = "pipeline";
    const PROTOCOL_ID: &'static str = PROTOCOL_ID;
    const VERSION: u16 = PROTOCOL_VERSION;
    type Request = Request;
    type Response = Response;
}

/// What a stage takes in.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Token ids, `batch × seq` of them (the stage holding block 0).
    Tokens(Vec<u32>),
    /// Hidden states, `batch × seq` rows.
    Hidden(Tensor),
}

/// Driver to stage.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Run the stage's blocks on a batch and keep the input for the backward pass.
    Forward {
        /// The optimizer step this batch belongs to.
        step: u64,
        /// Sequences in the batch.
        batch: u32,
        /// The input.
        input: Input,
    },
    /// The last stage: run, take the masked cross-entropy against `targets`, and go back.
    Loss {
        /// The step.
        step: u64,
        /// Sequences in the batch.
        batch: u32,
        /// The input.
        input: Input,
        /// The next token at every position.
        targets: Vec<u32>,
        /// 1 where the position counts in the loss.
        mask: Vec<u8>,
    },
    /// The gradient of the stage's output for the step's batch.
    Backward {
        /// The step.
        step: u64,
        /// dLoss/dOutput, as many rows as the output.
        grad: Tensor,
    },
    /// Apply the step's gradients: scaled by `scale` (global clipping), at learning rate `lr`.
    Apply {
        /// The step.
        step: u64,
        /// The learning rate.
        lr: f64,
        /// The factor every gradient is multiplied by first.
        scale: f64,
    },
}

/// Stage to driver.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    /// The stage's output.
    Hidden(Tensor),
    /// The backward pass is done.
    Grads {
        /// dLoss/dInput, for the stage before; none for the first stage.
        input: Option<Tensor>,
        /// The squared L2 norm of this stage's parameter gradients.
        norm_sq: f64,
        /// The loss, from the last stage.
        loss: Option<f64>,
    },
    /// The optimizer stepped.
    Applied,
    /// The request failed; what was wrong and what to do.
    Error(String),
}

/// Most addresses one stage announcement may list.
pub const MAX_ADDRS: usize = 16;
/// Longest address (bytes) a stage announcement may list.
pub const MAX_ADDR: usize = 256;
/// Most blocks a stage may say it holds (far above any model here; a cap, not a limit).
pub const MAX_BLOCK: u32 = 1 << 16;

/// A stage's announcement on its chain's gossip topic: the blocks it holds and where it
/// listens. Gossipsub signs it with the stage's key, so the sender is its author.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announce {
    /// First block it holds.
    pub start: u32,
    /// One past the last.
    pub end: u32,
    /// Multiaddresses it listens on, as text.
    pub addrs: Vec<String>,
}

impl Message for Announce {
    type Service = Pipeline;

    fn kind(&self) -> u8 {
        1
    }

    fn write(&self, w: &mut Writer) {
        w.u32(self.start);
        w.u32(self.end);
        let addrs: Vec<&String> = self.addrs.iter().filter(|a| a.len() <= MAX_ADDR).take(MAX_ADDRS).collect();
        w.u8(addrs.len() as u8);
        addrs.iter().for_each(|a| w.bytes(a.as_bytes()));
    }

    fn read(kind: u8, r: &mut Reader<'_>) -> Result<Self> {
        if kind != 1 {
            return Err(ProtoError::Malformed(format!("unknown stage announcement kind {kind}")));
        }
        let (start, end) = (r.u32("first block")?, r.u32("end block")?);
        if start >= end || end > MAX_BLOCK {
            return Err(ProtoError::Malformed(format!("a stage cannot hold blocks {start}..{end}")));
        }
        let n = r.u8("address count")? as usize;
        if n > MAX_ADDRS {
            return Err(ProtoError::TooLarge { what: "stage addresses".into(), size: n, cap: MAX_ADDRS });
        }
        let mut addrs = Vec::with_capacity(n);
        for _ in 0..n {
            let a = r.bytes(MAX_ADDR, "stage address")?;
            let a = std::str::from_utf8(a).map_err(|_| ProtoError::Malformed("a stage address is not UTF-8".into()))?;
            addrs.push(a.to_string());
        }
        Ok(Self { start, end, addrs })
    }
}

fn write_input(w: &mut Writer, i: &Input) {
    match i {
        Input::Tokens(ids) => {
            w.u8(0);
            w.u32(ids.len() as u32);
            ids.iter().for_each(|&t| w.u32(t));
        }
        Input::Hidden(t) => {
            w.u8(1);
            w.tensor(t);
        }
    }
}

fn read_ids(r: &mut Reader<'_>, what: &str) -> Result<Vec<u32>> {
    let n = r.u32(what)? as usize;
    if n > MAX_TOKENS {
        return Err(ProtoError::TooLarge { what: what.into(), size: n, cap: MAX_TOKENS });
    }
    let raw = r.take(n * 4, what)?;
    Ok(raw.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

fn read_input(r: &mut Reader<'_>) -> Result<Input> {
    Ok(match r.u8("input kind")? {
        0 => Input::Tokens(read_ids(r, "token ids")?),
        1 => Input::Hidden(r.tensor()?),
        k => return Err(ProtoError::Malformed(format!("unknown pipeline input kind {k}"))),
    })
}

impl Message for Request {
    type Service = Pipeline;

    fn kind(&self) -> u8 {
        match self {
            Request::Forward { .. } => 1,
            Request::Loss { .. } => 2,
            Request::Backward { .. } => 3,
            Request::Apply { .. } => 4,
        }
    }

    fn write(&self, w: &mut Writer) {
        match self {
            Request::Forward { step, batch, input } => {
                w.u64(*step);
                w.u32(*batch);
                write_input(w, input);
            }
            Request::Loss { step, batch, input, targets, mask } => {
                w.u64(*step);
                w.u32(*batch);
                write_input(w, input);
                w.u32(targets.len() as u32);
                targets.iter().for_each(|&t| w.u32(t));
                w.bytes(mask);
            }
            Request::Backward { step, grad } => {
                w.u64(*step);
                w.tensor(grad);
            }
            Request::Apply { step, lr, scale } => {
                w.u64(*step);
                w.f64(*lr);
                w.f64(*scale);
            }
        }
    }

    fn read(kind: u8, r: &mut Reader<'_>) -> Result<Self> {
        Ok(match kind {
            1 => Request::Forward { step: r.u64("step")?, batch: r.u32("batch")?, input: read_input(r)? },
            2 => {
                let (step, batch, input) = (r.u64("step")?, r.u32("batch")?, read_input(r)?);
                let targets = read_ids(r, "targets")?;
                let mask = r.bytes(MAX_TOKENS, "mask")?.to_vec();
                if mask.len() != targets.len() || mask.iter().any(|&m| m > 1) {
                    return Err(ProtoError::Malformed("the loss mask must be 0s and 1s, one per target".into()));
                }
                Request::Loss { step, batch, input, targets, mask }
            }
            3 => Request::Backward { step: r.u64("step")?, grad: r.tensor()? },
            4 => {
                let (step, lr, scale) = (r.u64("step")?, r.f64("lr")?, r.f64("scale")?);
                if !(lr.is_finite() && lr >= 0.0 && scale.is_finite() && scale >= 0.0) {
                    return Err(ProtoError::Malformed(format!("lr {lr} and scale {scale} must be finite and ≥ 0")));
                }
                Request::Apply { step, lr, scale }
            }
            k => return Err(ProtoError::Malformed(format!("unknown pipeline request kind {k}"))),
        })
    }
}

impl Message for Response {
    type Service = Pipeline;

    fn kind(&self) -> u8 {
        match self {
            Response::Hidden(_) => 1,
            Response::Grads { .. } => 2,
            Response::Applied => 3,
            Response::Error(_) => 4,
        }
    }

    fn write(&self, w: &mut Writer) {
        match self {
            Response::Hidden(t) => w.tensor(t),
            Response::Grads { input, norm_sq, loss } => {
                match input {
                    Some(t) => {
                        w.u8(1);
                        w.tensor(t);
                    }
                    None => w.u8(0),
                }
                w.f64(*norm_sq);
                match loss {
                    Some(l) => {
                        w.u8(1);
                        w.f64(*l);
                    }
                    None => w.u8(0),
                }
            }
            Response::Applied => {}
            Response::Error(m) => w.message(m),
        }
    }

    fn read(kind: u8, r: &mut Reader<'_>) -> Result<Self> {
        Ok(match kind {
            1 => Response::Hidden(r.tensor()?),
            2 => {
                let input = match r.u8("has input grad")? {
                    0 => None,
                    1 => Some(r.tensor()?),
                    k => return Err(ProtoError::Malformed(format!("bad flag {k}"))),
                };
                let norm_sq = r.f64("norm")?;
                let loss = match r.u8("has loss")? {
                    0 => None,
                    1 => Some(r.f64("loss")?),
                    k => return Err(ProtoError::Malformed(format!("bad flag {k}"))),
                };
                if !(norm_sq.is_finite() && norm_sq >= 0.0) || loss.is_some_and(|l| !l.is_finite()) {
                    return Err(ProtoError::Malformed("a non-finite gradient norm or loss".into()));
                }
                Response::Grads { input, norm_sq, loss }
            }
            3 => Response::Applied,
            4 => Response::Error(r.message("error")?),
            k => return Err(ProtoError::Malformed(format!("unknown pipeline response kind {k}"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Dtype, Envelope};
    use odin_format::ModelId;
    use proptest::prelude::*;

    fn roundtrip<M: Message + PartialEq + std::fmt::Debug + Clone>(m: M) {
        let bytes = Envelope { model: ModelId([1; 32]), msg: m.clone() }.to_bytes();
        assert_eq!(Envelope::<M>::from_bytes(&bytes).unwrap().msg, m);
        for cut in 0..bytes.len() {
            assert!(Envelope::<M>::from_bytes(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn messages_round_trip_and_refuse_truncation_and_bad_values() {
        let t = Tensor::encode(&[0.5, -1.0, 2.0, 0.25], 2, Dtype::F32).unwrap();
        roundtrip(Request::Forward { step: 1, batch: 1, input: Input::Tokens(vec![1, 2, 3]) });
        roundtrip(Request::Forward { step: 1, batch: 1, input: Input::Hidden(t.clone()) });
        roundtrip(Request::Loss {
            step: 2,
            batch: 1,
            input: Input::Hidden(t.clone()),
            targets: vec![4, 5],
            mask: vec![0, 1],
        });
        roundtrip(Request::Backward { step: 2, grad: t.clone() });
        roundtrip(Request::Apply { step: 2, lr: 1e-3, scale: 0.5 });
        roundtrip(Response::Hidden(t.clone()));
        roundtrip(Response::Grads { input: Some(t), norm_sq: 2.0, loss: Some(1.5) });
        roundtrip(Response::Grads { input: None, norm_sq: 0.0, loss: None });
        roundtrip(Response::Applied);
        roundtrip(Response::Error("no".into()));
        roundtrip(Announce { start: 2, end: 3, addrs: vec!["/ip4/127.0.0.1/tcp/4101".into()] });
        roundtrip(Announce { start: 0, end: 1, addrs: vec![] });
        for (start, end) in [(3, 3), (4, 2), (0, MAX_BLOCK + 1)] {
            let bad = Envelope { model: ModelId([1; 32]), msg: Announce { start, end, addrs: vec![] } }.to_bytes();
            assert!(Envelope::<Announce>::from_bytes(&bad).is_err(), "blocks {start}..{end} were taken");
        }
        let mut w = crate::envelope::header::<Pipeline>(&ModelId([1; 32]), 1);
        w.u32(0);
        w.u32(1);
        w.u8(1);
        w.bytes(&[0xff, 0xfe]);
        assert!(Envelope::<Announce>::from_bytes(&w.into_bytes()).is_err(), "an address that is not UTF-8 was taken");
        let bad =
            Envelope { model: ModelId([1; 32]), msg: Request::Apply { step: 1, lr: f64::NAN, scale: 1.0 } }.to_bytes();
        assert!(Envelope::<Request>::from_bytes(&bad).is_err());
        let bad = Envelope {
            model: ModelId([1; 32]),
            msg: Request::Loss { step: 1, batch: 1, input: Input::Tokens(vec![1]), targets: vec![1], mask: vec![2] },
        }
        .to_bytes();
        assert!(Envelope::<Request>::from_bytes(&bad).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = Envelope::<Request>::from_bytes(&b);
            let _ = Envelope::<Response>::from_bytes(&b);
            let _ = Envelope::<Announce>::from_bytes(&b);
        }

        #[test]
        fn announcements_round_trip(start in 0u32..1000, len in 1u32..100, addrs in prop::collection::vec("[a-z0-9/.]{0,40}", 0..4)) {
            roundtrip(Announce { start, end: start + len, addrs });
        }
    }
}
