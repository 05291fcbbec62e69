//! Signed step claims: signing one with the node's key, checking another's signature, and
//! recomputing a claimed step from its input and state-before (what an auditor and a
//! fraud-proof checker both do).

use odin_engine::{Input, Logits, Sampler, Shard, State};
use odin_format::{ModelId, Sampling};
use odin_net::{peer_from_wire, peer_to_wire, verify_signed_by, Keypair};
use odin_proto::infer::StepInput;
use odin_proto::verify::{input_hash, tensor_hash, Claim, NO_TOKEN};
use odin_proto::{Dtype, PeerBytes, Tensor};

/// Signs this node's claims.
#[derive(Clone)]
pub struct Signer {
    key: Keypair,
    me: PeerBytes,
    model: ModelId,
}

impl Signer {
    /// A signer for claims about `model` with `key`.
    pub fn new(key: Keypair, model: ModelId) -> Self {
        // Every libp2p peer id converts: its bytes are the multihash the protocol checks for.
        let me = peer_to_wire(&key.public().to_peer_id())
            .unwrap_or_else(|e| unreachable!("a libp2p peer id is always valid on the wire: {e}"));
        Self { key, me, model }
    }

    /// This node, as claims name it.
    pub fn peer(&self) -> &PeerBytes {
        &self.me
    }

    /// The model claims are about.
    pub fn model(&self) -> ModelId {
        self.model
    }

    /// `claim` with this node as its server and its signature in place.
    pub fn sign(&self, mut claim: Claim) -> Claim {
        claim.server = self.me.clone();
        claim.sig.clear();
        // Signing with an ed25519 key cannot fail; an RSA key that somehow could leaves the
        // claim unsigned, which every checker refuses.
        claim.sig = self.key.sign(&claim.signing_bytes(&self.model)).unwrap_or_default();
        claim
    }

    /// Sign arbitrary bytes (fraud proofs).
    pub fn sign_bytes(&self, bytes: &[u8]) -> Vec<u8> {
        self.key.sign(bytes).unwrap_or_default()
    }
}

/// Whether `claim` carries a valid signature by the server it names, for `model`.
pub fn signed_by_server(model: &ModelId, claim: &Claim) -> bool {
    match peer_from_wire(&claim.server) {
        Ok(peer) => verify_signed_by(&peer, &claim.signing_bytes(model), &claim.sig),
        Err(_) => false,
    }
}

/// What a step produced, as it travels.
#[derive(Debug, Clone, PartialEq)]
pub enum Produced {
    /// Hidden states for the next hop.
    Hidden(Tensor),
    /// The sampled token, with the digest of the logits it came from.
    Token {
        /// The token.
        id: u32,
        /// `odin_engine::logits_digest` of the last position's logits.
        logits_hash: [u8; 32],
    },
}

/// Run one step on `shard` from `state`, and fill in `claim`'s hashes (input, state before and
/// after, output, token). `tamper` sees the engine's output before it is encoded or sampled
/// from (only a cheat changes it). The claim's other fields are the caller's.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_step(
    shard: &Shard,
    state: &mut State,
    sampler: Option<&mut Sampler>,
    input: &StepInput,
    reply: Dtype,
    claim: &mut Claim,
    forward: impl FnOnce(&Shard, Input<'_>, &mut State) -> odin_engine::Result<Vec<f32>>,
    tamper: impl FnOnce(&mut Vec<f32>),
) -> Result<Produced, StepError> {
    claim.input = input_hash(input);
    claim.before = *state.hash().as_bytes();
    let hidden;
    let engine_input = match input {
        StepInput::Tokens(ids) => Input::Tokens(ids),
        StepInput::Hidden(t) => {
            hidden = t.decode().map_err(|e| StepError::Malformed(e.to_string()))?;
            Input::Hidden(&hidden)
        }
    };
    let mut out = forward(shard, engine_input, state).map_err(|e| StepError::BadInput(e.to_string()))?;
    tamper(&mut out);
    claim.after = *state.hash().as_bytes();
    Ok(match sampler {
        Some(s) => {
            let id = s.sample(&out);
            let logits_hash = *odin_engine::logits_digest(&out).as_bytes();
            claim.output = logits_hash;
            claim.token = id;
            Produced::Token { id, logits_hash }
        }
        None => {
            let tensor = Tensor::encode(&out, shard.config().hidden_size, reply)
                .map_err(|e| StepError::Internal(e.to_string()))?;
            claim.output = tensor_hash(&tensor);
            claim.token = NO_TOKEN;
            Produced::Hidden(tensor)
        }
    })
}

/// Why a step could not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// The input did not decode.
    #[error("{0}")]
    Malformed(String),
    /// The engine refused the input or the state.
    #[error("{0}")]
    BadInput(String),
    /// Something on this side went wrong.
    #[error("{0}")]
    Internal(String),
}

/// A step to recompute: everything a claim's hashes were computed from.
#[derive(Debug, Clone)]
pub struct Recompute {
    /// The blocks.
    pub blocks: std::ops::Range<usize>,
    /// The step's input.
    pub input: StepInput,
    /// The state before the step, f32 rows.
    pub before: Tensor,
    /// The session's sampling (used at the last block).
    pub sampling: Sampling,
    /// Draws the session's sampler had made before the step.
    pub drawn: u64,
    /// The dtype the hidden states were sent in.
    pub reply: Dtype,
}

/// Recompute a step honestly on `shard` (which must hold its blocks) and return the claim an
/// honest server would have signed (unsigned, with no server, session or step).
pub fn recompute(shard: &Shard, r: &Recompute) -> Result<Claim, StepError> {
    let rows = r.before.decode().map_err(|e| StepError::Malformed(format!("the state before: {e}")))?;
    let mut state = shard.state_from_rows(r.blocks.clone(), &rows).map_err(|e| StepError::BadInput(e.to_string()))?;
    let layers = shard.config().num_layers;
    let mut sampler = (r.blocks.end == layers).then(|| {
        let mut s = Sampler::new(r.sampling);
        s.advance(r.drawn.min(1 << 32));
        s
    });
    let mut claim = blank_claim(r.blocks.clone());
    let reply = r.reply;
    run_step(
        shard,
        &mut state,
        sampler.as_mut(),
        &r.input,
        reply,
        &mut claim,
        |s, i, st| s.forward(i, st, Logits::Last),
        |_| {},
    )?;
    Ok(claim)
}

/// A claim with no hashes yet, over `blocks`.
pub(crate) fn blank_claim(blocks: std::ops::Range<usize>) -> Claim {
    Claim {
        server: PeerBytes::new(&[0, 0]).unwrap_or_else(|_| unreachable!("two bytes are a valid empty identity id")),
        session: 0,
        step: 0,
        start: blocks.start as u32,
        end: blocks.end as u32,
        input: [0; 32],
        before: [0; 32],
        output: [0; 32],
        after: [0; 32],
        token: NO_TOKEN,
        sig: Vec::new(),
    }
}

/// Whether two claims about one step agree on what it computed (input, states, output, token).
pub fn same_result(a: &Claim, b: &Claim) -> bool {
    (a.start, a.end, a.input, a.before, a.output, a.after, a.token)
        == (b.start, b.end, b.input, b.before, b.output, b.after, b.token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testmodel::{shard, LAYERS, MODEL};

    fn state_rows(s: &State, shard: &Shard) -> Tensor {
        Tensor::encode(&s.to_rows(), shard.config().hidden_size, Dtype::F32).unwrap()
    }

    #[test]
    fn a_signed_claim_verifies_only_unchanged_and_for_its_model() {
        let signer = Signer::new(Keypair::generate_ed25519(), MODEL);
        let c = signer.sign(blank_claim(0..2));
        assert!(signed_by_server(&MODEL, &c));
        assert!(!signed_by_server(&ModelId([8; 32]), &c));
        let mut moved = c.clone();
        moved.step = 1;
        assert!(!signed_by_server(&MODEL, &moved));
        let mut flipped = c.clone();
        flipped.sig[10] ^= 1;
        assert!(!signed_by_server(&MODEL, &flipped));
        // Signed by another key than the server it names.
        let mut stolen = Signer::new(Keypair::generate_ed25519(), MODEL).sign(c.clone());
        stolen.server = c.server.clone();
        assert!(!signed_by_server(&MODEL, &stolen));
    }

    #[test]
    fn recomputing_a_step_gives_the_servers_claim_bit_for_bit() {
        let sh = shard(1..LAYERS);
        let mut state = sh.new_state();
        // Two steps in, so the state is not zeros.
        let hidden = |t: usize| Tensor::encode(&vec![0.25 * t as f32; 64 * t], 64, Dtype::F32).unwrap();
        let mut claim = blank_claim(1..LAYERS);
        let mut sampler = Sampler::new(Sampling::default());
        let fwd = |s: &Shard, i: Input<'_>, st: &mut State| s.forward(i, st, Logits::Last);
        let first = StepInput::Hidden(hidden(3));
        run_step(&sh, &mut state, Some(&mut sampler), &first, Dtype::F32, &mut claim, fwd, |_| {}).unwrap();
        let before = state_rows(&state, &sh);
        let second = StepInput::Hidden(hidden(1));
        run_step(&sh, &mut state, Some(&mut sampler), &second, Dtype::F32, &mut claim, fwd, |_| {}).unwrap();
        let r = Recompute {
            blocks: 1..LAYERS,
            input: second.clone(),
            before: before.clone(),
            sampling: Sampling::default(),
            drawn: 1,
            reply: Dtype::F32,
        };
        let again = recompute(&sh, &r).unwrap();
        assert!(same_result(&again, &claim));
        assert_ne!(claim.token, NO_TOKEN);
        // A tampered step does not.
        let mut st = sh.state_from_rows(1..LAYERS, &before.decode().unwrap()).unwrap();
        let mut lied = blank_claim(1..LAYERS);
        let mut s2 = Sampler::new(Sampling::default());
        s2.advance(1);
        run_step(&sh, &mut st, Some(&mut s2), &second, Dtype::F32, &mut lied, fwd, |v| crate::cheat::flip_bit(v, 3))
            .unwrap();
        assert!(!same_result(&again, &lied));
    }
}
