//! Verification: what a server signs for every step it runs ([`Claim`]), and the fraud proof
//! ([`Proof`]) that any node holding the model can check by recomputing that one step.
//!
//! The int8 engine is bit-exact on every machine, so a step is fully described by hashes: of
//! its input, of the session state before it, of its output and of the state after it. A
//! server signs those with its peer key (the bytes of [`Claim::signing_bytes`]), the client
//! keeps the claims, and later re-executes a random few of them elsewhere. A claim whose
//! recomputation gives other hashes, together with the input and the state it was computed
//! from, is a [`Proof`]: it travels on the verification gossip topic, and whoever receives it
//! recomputes the step before believing it.
//!
//! Claims ride on the inference service's answers ([`crate::infer::Response::Hidden`] and
//! friends); proofs are this service's only message, on gossip. Signatures are bytes here
//! (this crate has no key types): the signer signs the message with its signature left
//! empty, inside an envelope naming the model, so a signature over one model's step or one
//! kind of message is never valid for another.

use odin_format::{ModelId, Sampling};

use crate::codec::{Reader, Writer};
use crate::envelope::{header, Message, Service};
use crate::error::{ProtoError, Result};
use crate::infer::{read_step_input, write_step_input, StepInput};
use crate::peer::PeerBytes;
use crate::tensor::{Dtype, Tensor};

/// The verification service's version; a change to its bytes bumps it.
pub const PROTOCOL_VERSION: u16 = 1;
/// The protocol id of the verification service (its gossip topic is named after it).
pub const PROTOCOL_ID: &str = "/odin/verify/1";
/// Largest signature (ed25519's are 64 bytes).
pub const MAX_SIG: usize = 128;
/// The `token` of a claim by a hop that does not hold the model's last block.
pub const NO_TOKEN: u32 = u32::MAX;

/// Kind byte of a claim's signing bytes (a claim is never a message of its own).
const CLAIM_KIND: u8 = 0xC1;

/// The verification service: fraud proofs on gossip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Verification;

impl Service for Verification {
    const NAME: &'static str = "verification";
    const PROTOCOL_ID: &'static str = PROTOCOL_ID;
    const VERSION: u16 = PROTOCOL_VERSION;
    // Everything of this service travels on gossip; it has no streams of its own yet.
    type Request = Gossip;
    type Response = Gossip;
}

/// A server's signed statement about one step of one session on its blocks.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Claim {
    /// The server that ran the step (and signed this).
    pub server: PeerBytes,
    /// The session.
    pub session: u64,
    /// The step's index in the session on this server, from 0.
    pub step: u64,
    /// First block run.
    pub start: u32,
    /// One past the last block run.
    pub end: u32,
    /// [`input_hash`] of what the step read.
    pub input: [u8; 32],
    /// blake3 of the session state before the step (`odin_engine::State::hash`).
    pub before: [u8; 32],
    /// What the step produced: [`tensor_hash`] of the hidden states as sent, or at the last
    /// block the logits digest (`odin_engine::logits_digest`).
    pub output: [u8; 32],
    /// blake3 of the session state after the step.
    pub after: [u8; 32],
    /// The token sampled at the last block; [`NO_TOKEN`] elsewhere.
    pub token: u32,
    /// The server's signature over [`Claim::signing_bytes`].
    pub sig: Vec<u8>,
}

impl Claim {
    /// The bytes the server signs: the claim without its signature, in an envelope for `model`.
    pub fn signing_bytes(&self, model: &ModelId) -> Vec<u8> {
        let mut w = header::<Verification>(model, CLAIM_KIND);
        self.write_fields(&mut w);
        w.into_bytes()
    }

    /// What identifies the step claimed, whoever claims it: model, server, session, step.
    /// Two proofs about one step count once.
    pub fn step_key(&self, model: &ModelId) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(&model.0);
        h.update(self.server.as_bytes());
        h.update(&self.session.to_le_bytes());
        h.update(&self.step.to_le_bytes());
        *h.finalize().as_bytes()
    }

    fn write_fields(&self, w: &mut Writer) {
        w.peer(&self.server);
        w.u64(self.session);
        w.u64(self.step);
        w.u32(self.start);
        w.u32(self.end);
        for h in [&self.input, &self.before, &self.output, &self.after] {
            w.raw(h);
        }
        w.u32(self.token);
    }

    /// Append the claim, signature included.
    pub fn write(&self, w: &mut Writer) {
        self.write_fields(w);
        w.bytes(&self.sig);
    }

    /// Read a claim; the block range must be non-empty.
    pub fn read(r: &mut Reader<'_>) -> Result<Self> {
        let server = r.peer("claiming server")?;
        let session = r.u64("claimed session")?;
        let step = r.u64("claimed step")?;
        let start = r.u32("claimed first block")?;
        let end = r.u32("claimed end block")?;
        if start >= end {
            return Err(ProtoError::Malformed(format!("a claim over the empty block range {start}..{end}")));
        }
        let input = r.array("claimed input hash")?;
        let before = r.array("claimed state before")?;
        let output = r.array("claimed output hash")?;
        let after = r.array("claimed state after")?;
        let token = r.u32("claimed token")?;
        let sig = r.bytes(MAX_SIG, "claim signature")?.to_vec();
        Ok(Self { server, session, step, start, end, input, before, output, after, token, sig })
    }
}

/// blake3 of a step's input as it travels: token ids (u32 LE) or a tensor's wire encoding.
/// A hop's output hash is its next hop's input hash, so claims chain along a route.
pub fn input_hash(input: &StepInput) -> [u8; 32] {
    match input {
        StepInput::Tokens(ids) => {
            let mut h = blake3::Hasher::new();
            h.update(b"tokens");
            for t in ids {
                h.update(&t.to_le_bytes());
            }
            *h.finalize().as_bytes()
        }
        StepInput::Hidden(t) => tensor_hash(t),
    }
}

/// blake3 of a tensor's wire encoding (dtype, shape, bytes): what a hop's claim says it sent.
pub fn tensor_hash(t: &Tensor) -> [u8; 32] {
    let mut w = Writer::new();
    w.tensor(t);
    let mut h = blake3::Hasher::new();
    h.update(b"tensor");
    h.update(&w.into_bytes());
    *h.finalize().as_bytes()
}

/// A fraud proof: a signed claim and what is needed to recompute its step.
#[derive(Debug, Clone, PartialEq)]
pub struct Proof {
    /// The accused server's claim, with its signature.
    pub claim: Claim,
    /// The step's input (its [`input_hash`] is the claim's `input`).
    pub input: StepInput,
    /// The session state before the step, f32 rows (its hash is the claim's `before`).
    pub before: Tensor,
    /// The session's sampling settings (they matter only at the last block).
    pub sampling: Sampling,
    /// Random draws the session's sampler had made before the step.
    pub drawn: u64,
    /// The dtype the hop sent its hidden states in (its claim hashes them as sent).
    pub reply: Dtype,
    /// The node that found the mismatch (and signed this).
    pub accuser: PeerBytes,
    /// The accuser's signature over [`Gossip::signing_bytes`].
    pub sig: Vec<u8>,
}

/// What travels on the verification topic.
#[derive(Debug, Clone, PartialEq)]
pub enum Gossip {
    /// A fraud proof.
    Proof(Box<Proof>),
}

impl Gossip {
    /// The bytes the accuser signs: the whole envelope for `model` with its signature empty.
    pub fn signing_bytes(&self, model: &ModelId) -> Vec<u8> {
        let mut unsigned = self.clone();
        match &mut unsigned {
            Gossip::Proof(p) => p.sig.clear(),
        }
        crate::Envelope { model: *model, msg: unsigned }.to_bytes()
    }
}

impl Message for Gossip {
    type Service = Verification;

    fn kind(&self) -> u8 {
        match self {
            Gossip::Proof(_) => 1,
        }
    }

    fn write(&self, w: &mut Writer) {
        match self {
            Gossip::Proof(p) => {
                p.claim.write(w);
                write_step_input(w, &p.input);
                w.tensor(&p.before);
                crate::infer::write_sampling(w, &p.sampling);
                w.u64(p.drawn);
                w.u8(p.reply.code());
                w.peer(&p.accuser);
                w.bytes(&p.sig);
            }
        }
    }

    fn read(kind: u8, r: &mut Reader<'_>) -> Result<Self> {
        Ok(match kind {
            1 => {
                let claim = Claim::read(r)?;
                let input = read_step_input(r)?;
                let before = r.f32_tensor("a proof's state")?;
                let sampling = crate::infer::read_sampling(r)?;
                let drawn = r.u64("sampler draws")?;
                let reply = Dtype::from_code(r.u8("reply dtype")?)?;
                let accuser = r.peer("accuser")?;
                let sig = r.bytes(MAX_SIG, "accuser signature")?.to_vec();
                Gossip::Proof(Box::new(Proof { claim, input, before, sampling, drawn, reply, accuser, sig }))
            }
            k => return Err(ProtoError::Malformed(format!("unknown verification gossip kind {k}"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Envelope;
    use proptest::prelude::*;

    const MODEL: ModelId = ModelId([3; 32]);

    fn claim() -> Claim {
        Claim {
            server: PeerBytes::new(&[0, 4, 1, 2, 3, 4]).unwrap(),
            session: 7,
            step: 2,
            start: 0,
            end: 2,
            input: [1; 32],
            before: [2; 32],
            output: [3; 32],
            after: [4; 32],
            token: NO_TOKEN,
            sig: vec![9; 64],
        }
    }

    fn proof() -> Gossip {
        Gossip::Proof(Box::new(Proof {
            claim: claim(),
            input: StepInput::Tokens(vec![5, 6]),
            before: Tensor::encode(&[0.5; 8], 4, Dtype::F32).unwrap(),
            sampling: Sampling::default(),
            drawn: 3,
            reply: Dtype::Q8,
            accuser: PeerBytes::new(&[0, 4, 9, 9, 9, 9]).unwrap(),
            sig: vec![1; 64],
        }))
    }

    #[test]
    fn a_proof_round_trips() {
        let env = Envelope { model: MODEL, msg: proof() };
        assert_eq!(Envelope::<Gossip>::from_bytes(&env.to_bytes()).unwrap(), env);
    }

    #[test]
    fn a_claims_signature_covers_every_field_and_the_model_but_not_itself() {
        let c = claim();
        let base = c.signing_bytes(&MODEL);
        assert_ne!(base, c.signing_bytes(&ModelId([4; 32])));
        let mut unsigned = c.clone();
        unsigned.sig.clear();
        assert_eq!(base, unsigned.signing_bytes(&MODEL));
        let changes: [fn(&mut Claim); 9] = [
            |c| c.session += 1,
            |c| c.step += 1,
            |c| c.start = 1,
            |c| c.end = 3,
            |c| c.input[0] ^= 1,
            |c| c.before[31] ^= 1,
            |c| c.output[5] ^= 0x80,
            |c| c.after[0] ^= 1,
            |c| c.token = 0,
        ];
        for change in changes {
            let mut other = c.clone();
            change(&mut other);
            assert_ne!(other.signing_bytes(&MODEL), base);
        }
    }

    #[test]
    fn a_proofs_signature_leaves_out_only_itself() {
        let p = proof();
        let Gossip::Proof(inner) = &p;
        let mut resigned = inner.clone();
        resigned.sig = vec![2; 64];
        assert_eq!(Gossip::Proof(resigned).signing_bytes(&MODEL), p.signing_bytes(&MODEL));
        let mut moved = inner.clone();
        moved.drawn += 1;
        assert_ne!(Gossip::Proof(moved).signing_bytes(&MODEL), p.signing_bytes(&MODEL));
    }

    #[test]
    fn a_claim_over_no_blocks_or_an_unknown_kind_is_refused() {
        let mut c = claim();
        c.end = c.start;
        let mut w = Writer::new();
        c.write(&mut w);
        assert!(Claim::read(&mut Reader::new(&w.into_bytes())).is_err());
        let mut w = header::<Verification>(&MODEL, 9);
        w.u8(0);
        assert!(Envelope::<Gossip>::from_bytes(&w.into_bytes()).is_err());
    }

    #[test]
    fn hashes_tell_tokens_from_tensors_and_dtypes_apart() {
        let f = Tensor::encode(&[1.0, 2.0, 3.0, 4.0], 4, Dtype::F32).unwrap();
        let q = Tensor::encode(&[1.0, 2.0, 3.0, 4.0], 4, Dtype::Q8).unwrap();
        assert_ne!(tensor_hash(&f), tensor_hash(&q));
        assert_eq!(input_hash(&StepInput::Hidden(f.clone())), tensor_hash(&f));
        assert_ne!(input_hash(&StepInput::Tokens(vec![1])), input_hash(&StepInput::Tokens(vec![1, 0])));
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Envelope::<Gossip>::from_bytes(&bytes);
        }

        #[test]
        fn every_truncation_of_a_proof_is_refused(cut in 0usize..400) {
            let bytes = Envelope { model: MODEL, msg: proof() }.to_bytes();
            prop_assume!(cut < bytes.len());
            prop_assert!(Envelope::<Gossip>::from_bytes(&bytes[..cut]).is_err());
        }
    }
}
