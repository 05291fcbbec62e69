//! One step of a session, either way it travels: pushed down the chain by the servers
//! ([`push_step`]), or carried hop by hop by the client ([`relay`]). A pushed step that goes
//! quiet is probed hop by hop ([`find_stall`]) to find the server that stalled.

use std::time::Instant;

use odin_proto::infer::{HopTime, Request, Response, StepInput};
use odin_proto::verify::{tensor_hash, Claim};
use odin_proto::{Envelope, Tensor};

use crate::blame::{blame, fault, next_hop_down, Failure};
use crate::error::NodeError;
use crate::handoff::take_over;
use crate::hop::{stall_deadline, HopRun, Reach, PROBE_DEADLINE};
use crate::link::Link;
use crate::request::{GenerateRequest, Progress};
use crate::router::Router;

/// The client's figures for a chain's pushed steps.
#[derive(Default)]
pub(crate) struct ChainStats {
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

/// The token a step sampled, with what the hops claimed about it.
pub(crate) struct Sampled {
    /// The token.
    pub(crate) id: u32,
    /// blake3 of the logits it was sampled from.
    pub(crate) logits: [u8; 32],
    /// Each hop's signed claim, first to last (fewer when the step changed hops on the way).
    pub(crate) claims: Vec<Claim>,
}

impl Sampled {
    /// The logits hash in hex.
    pub(crate) fn hash_hex(&self) -> String {
        blake3::Hash::from_bytes(self.logits).to_hex().to_string()
    }
}

/// What one pushed step gave.
pub(crate) enum Pushed {
    /// The sampled token.
    Token(Sampled),
    /// Hop `at` is leaving and did not run the step: its state, and the input it was given.
    Handoff { at: usize, state: Tensor, input: StepInput },
}

/// Run one step down the chain: send `x` to the first hop, then wait for the token from the
/// last, or for the first hop to report a failure. `done` is how many steps each hop will have
/// completed after this one (what a probe of a stalled chain checks).
pub(crate) async fn push_step(
    router: &Router,
    session: u64,
    hops: &mut [HopRun],
    x: StepInput,
    decoding: bool,
    done: u64,
    chain: &mut ChainStats,
) -> Result<Pushed, Failure> {
    let model = router.model();
    let t = Instant::now();
    let bytes =
        Envelope { model, msg: Request::Push { session, input: x, hops: Vec::new(), claims: Vec::new() } }.to_bytes();
    let first = hops[0].hop.peer;
    match &mut hops[0].link {
        Link::Local(server) => {
            // This node's own server answers only when it could not pass the step on.
            if let Some(r) = server.clone().respond(&bytes).await {
                return Err(refusal(router, hops, 0, r));
            }
        }
        Link::Remote(r) => {
            if let Err(e) = r.send(&bytes).await {
                return Err(fault(router, e, first));
            }
        }
    }
    let deadline = stall_deadline(decoding, chain.usual_us());
    let (i, frame) = match tokio::time::timeout(deadline, next_frame(hops)).await {
        Err(_) => {
            tracing::debug!("session {session:016x}: step {done} stalled past {deadline:?}; probing the chain");
            return Err(find_stall(router, session, hops, done).await);
        }
        Ok((i, Err(e))) => {
            let peer = hops[i].hop.peer;
            tracing::debug!("session {session:016x}: step {done}: stream to hop {i} ({peer}) failed: {e}");
            return Err(fault(router, e.into(), peer));
        }
        Ok((i, Ok(frame))) => (i, frame),
    };
    let peer = hops[i].hop.peer;
    let resp = hops[i].link.decode(model, &frame).map_err(|e| fault(router, e, peer))?;
    let n = hops.len();
    match resp {
        Response::Pushed { id, logits_hash, hops: times, claims } if i + 1 == n && times.len() == n => {
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
            Ok(Pushed::Token(Sampled { id, logits: logits_hash, claims }))
        }
        Response::Handoff { state, input: Some(input) } => Ok(Pushed::Handoff { at: i, state, input }),
        r => Err(refusal(router, hops, i, r)),
    }
}

/// Hop `i` answered a push with `r` (not a token): blame the hop at fault.
fn refusal(router: &Router, hops: &[HopRun], i: usize, r: Response) -> Failure {
    tracing::debug!("hop {i} ({}) answered a push with {r:?}", hops[i].hop.peer);
    match r {
        Response::NextHopDown { next, reason, .. } => {
            next_hop_down(router, hops[i].hop.peer, hops.get(i + 1).map(|h| h.hop.peer), next, reason)
        }
        r => blame(hops[i].refused(router, r), hops[i].hop.peer),
    }
}

/// The first frame any remote hop sends, and which hop sent it.
async fn next_frame(hops: &mut [HopRun]) -> (usize, odin_proto::Result<Vec<u8>>) {
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
async fn find_stall(router: &Router, session: u64, hops: &mut [HopRun], done: u64) -> Failure {
    for k in 0..hops.len() {
        let h = &mut hops[k];
        let peer = h.hop.peer;
        let probe = h.call_within(router, Request::Probe { session }, PROBE_DEADLINE).await;
        tracing::debug!("session {session:016x}: probe of {peer} for step {done}: {:?}", probe.as_ref().map(|r| &r.0));
        if let Some((next, reason)) = h.reported_down() {
            return next_hop_down(router, peer, hops.get(k + 1).map(|h| h.hop.peer), next, reason);
        }
        match probe {
            Ok((Response::Progress { steps, running: false }, _)) if steps >= done => continue,
            Ok((Response::Progress { .. }, _)) => {
                router.report_failure(&peer);
                return Failure { error: NodeError::Timeout(peer.to_string()), peer: Some(peer) };
            }
            Ok((r, _)) => return blame(hops[k].refused(router, r), peer),
            Err(e) => return blame(e, peer),
        }
    }
    // Every hop finished the step: the token was lost on its way back from the last.
    let last = hops.len() - 1;
    let peer = hops[last].hop.peer;
    router.report_failure(&peer);
    Failure { error: NodeError::Timeout(peer.to_string()), peer: Some(peer) }
}

/// Run one step hop by hop from hop `start`, the client carrying each output to the next hop;
/// returns the sampled token, its logits hash and the claims of the hops it ran.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn relay(
    reach: Reach<'_>,
    session: u64,
    hops: &mut Vec<HopRun>,
    start: usize,
    mut x: StepInput,
    decoding: bool,
    req: &GenerateRequest,
    progress: &mut Progress,
) -> Result<Sampled, Failure> {
    let router = reach.router;
    let mut token = None;
    let mut claims = Vec::new();
    let mut i = start;
    while i < hops.len() {
        let last = i + 1 == hops.len();
        let h = &mut hops[i];
        let t = Instant::now();
        // Kept in case the hop hands its session over and the step goes to its successors.
        let sent = x.clone();
        let (r, bytes) =
            h.step(router, Request::Step { session, input: x }, decoding).await.map_err(|e| blame(e, h.hop.peer))?;
        let rtt = t.elapsed().as_secs_f64() * 1e6;
        let compute = match (r, last) {
            (Response::Hidden { tensor, compute_us, claim }, false) => {
                if claim.output != tensor_hash(&tensor) {
                    let what = format!("its claim of step {} is not the hidden states it sent", claim.step);
                    router.report_failure(&h.hop.peer);
                    return Err(blame(NodeError::Fraud { peer: h.hop.peer.to_string(), what }, h.hop.peer));
                }
                claims.push(claim);
                x = StepInput::Hidden(tensor);
                compute_us
            }
            (Response::Token { id, logits_hash, compute_us, claim }, true) => {
                claims.push(claim);
                token = Some((id, logits_hash));
                // The last hop: nothing goes further.
                x = StepInput::Tokens(Vec::new());
                compute_us
            }
            (Response::Handoff { state, input: None }, _) => {
                tracing::info!("server {} is leaving; moving its part of the session", h.hop.peer);
                let new = take_over(reach, session, h.hop.clone(), state, req, progress).await?;
                hops.splice(i..=i, new);
                progress.handoffs += 1;
                x = sent;
                continue;
            }
            (r, _) => return Err(blame(h.refused(router, r), h.hop.peer)),
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
    match token {
        Some((id, logits)) => Ok(Sampled { id, logits, claims }),
        None => Err(NodeError::Protocol { peer: String::new(), what: "no token came back".into() }.into()),
    }
}
