//! The client's side of verification: every hop's signed claims are checked as they arrive,
//! and a random fraction of hop-steps is recomputed, chosen only after the claim is in hand.
//!
//! Two kinds of check:
//! - **Consistency**, on every step, for free: each claim is signed by the hop's server, names
//!   the session, the step and the hop's blocks, and chains: the first hop's input is what the
//!   client sent, each hop's input is the previous hop's output, the last hop's output and
//!   token are what came back, and a hop's state-before is its own state-after of the step
//!   before. A break is the server's fault (it is routed around).
//! - **Audits**, on a fraction p of hop-steps: the client asks the hop to reveal the step's
//!   input and state-before (their hashes must be the claimed ones), then has the step
//!   recomputed, in-process when it has the model's files, or by another server holding the
//!   blocks (two must agree before anyone is accused). Another result is a fraud proof: the
//!   cheater is banned, and the generation starts over on a route without it, since nothing
//!   a cheater touched can be trusted.

use std::collections::HashMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use odin_engine::{Options, Shard};
use odin_format::ModelId;
use odin_net::{peer_to_wire, PeerId};
use odin_proto::infer::{Request, Response};
use odin_proto::verify::{Claim, Gossip, Proof, NO_TOKEN};
use serde::Serialize;

use crate::blame::{blame, Failure};
use crate::claims::{recompute, same_result, signed_by_server, Recompute, Signer};
use crate::directory::Hop;
use crate::error::NodeError;
use crate::hop::{connect, HopRun, Reach};
use crate::request::GenerateRequest;

/// How a client verifies the servers it uses.
#[derive(Debug, Clone, Default)]
pub struct AuditConfig {
    /// Fraction of hop-steps recomputed, 0 to 1.
    pub p: f64,
    /// The model's directory, to recompute steps in-process; without it, other servers
    /// holding the blocks are asked.
    pub model_dir: Option<PathBuf>,
}

/// What verification did and found, for the table `odin swarm --cheat` prints.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct AuditReport {
    /// Hop-steps whose claims were checked for consistency.
    pub claims: u64,
    /// Hop-steps recomputed.
    pub audits: u64,
    /// Audits whose recomputation matched the claim.
    pub passed: u64,
    /// Audits that caught a lie (each a fraud proof).
    pub caught: u64,
    /// Claims that broke the chain (a signature, a hash or a step that did not line up).
    pub broken: u64,
    /// Audits that could not be done (no reveal, no auditor).
    pub undone: u64,
    /// Audits per server (peer id), and how many of them caught it.
    pub per_server: std::collections::BTreeMap<String, (u64, u64)>,
    /// Hop-steps each server's claims covered (for a banned server: the steps until its ban).
    pub steps: std::collections::BTreeMap<String, u64>,
    /// Hop-steps served by servers on probation.
    pub probation_steps: u64,
    /// Of those, steps left unaudited (none unless audits are off: probation audits them all).
    pub probation_unaudited: u64,
    /// Servers banned, in order, with the step of their session at which each was caught.
    pub banned: Vec<(String, u64)>,
    /// Fraud proofs heard from other nodes.
    pub proofs_heard: u64,
    /// Of those, proofs whose step recomputed to other bytes than claimed: the accused banned.
    pub convictions: u64,
    /// Of those, proofs whose step recomputed to the claim: the accuser banned.
    pub false_accusations: u64,
    /// Proofs about a step already judged (counted once).
    pub replays: u64,
    /// Proofs refused unread (bad bytes or signatures) or that this node could not recompute.
    pub unchecked: u64,
}

/// What a fraud proof heard on gossip showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// The step recomputes to other bytes than the server signed: ban it.
    Convicts(PeerId),
    /// The step recomputes to what the server signed: the accuser lied; ban it.
    FalseAccusation(PeerId),
    /// A step already judged.
    Replay,
    /// Not a proof this node can act on (why).
    Unchecked(String),
}

/// Verifies a client's servers; shared by every generation of the client.
pub struct Auditor {
    cfg: AuditConfig,
    model: ModelId,
    /// Shards loaded from the model directory, by block range.
    shards: Mutex<HashMap<(usize, usize), Arc<Shard>>>,
    report: Mutex<AuditReport>,
    proofs: Mutex<Vec<Proof>>,
    signer: Option<Signer>,
    /// Steps already judged (their [`Claim::step_key`]): a replayed proof counts once.
    judged: Mutex<std::collections::HashSet<[u8; 32]>>,
    /// Proofs of this node's own already published.
    published: Mutex<usize>,
    /// Work each server did for this node since [`Auditor::take_work`] last ran: what the
    /// node countersigns in ledger receipts.
    work: Mutex<HashMap<PeerId, Work>>,
}

/// Work one server did for this node, from the claims it signed.
#[derive(Debug, Clone)]
pub struct Work {
    /// Its blocks in the latest claim.
    pub blocks: Range<usize>,
    /// Hop-steps (tokens) it claimed.
    pub steps: u64,
    /// Whether at least one of its steps was recomputed and matched.
    pub audited: bool,
    /// blake3 over the signatures of its claims, in order: the commitment a receipt names.
    pub digest: blake3::Hasher,
}

impl Auditor {
    /// An auditor for `model`; `signer` signs the fraud proofs it finds.
    pub fn new(cfg: AuditConfig, model: ModelId, signer: Option<Signer>) -> Self {
        Self {
            cfg,
            model,
            shards: Mutex::new(HashMap::new()),
            report: Mutex::new(AuditReport::default()),
            proofs: Mutex::new(Vec::new()),
            signer,
            judged: Mutex::new(Default::default()),
            published: Mutex::new(0),
            work: Mutex::new(HashMap::new()),
        }
    }

    /// This node's proofs not yet handed out for gossip, as message bytes.
    pub fn unpublished(&self) -> Vec<Vec<u8>> {
        let (Ok(proofs), Ok(mut done)) = (self.proofs.lock(), self.published.lock()) else { return Vec::new() };
        let new = proofs[(*done).min(proofs.len())..]
            .iter()
            .map(|p| odin_proto::Envelope { model: self.model, msg: Gossip::Proof(Box::new(p.clone())) }.to_bytes())
            .collect();
        *done = proofs.len();
        new
    }

    /// Judge a fraud proof `source` published: check both signatures, then recompute the step
    /// from the proof's input and state. Whoever is shown to have lied (the accused, or the
    /// accuser of an honest step) is named; a step already judged counts once.
    pub fn judge_proof(&self, data: &[u8], source: PeerId) -> Heard {
        let heard = self.judge_proof_inner(data, source, true);
        self.count(|r| {
            r.proofs_heard += 1;
            match heard {
                Heard::Convicts(_) => r.convictions += 1,
                Heard::FalseAccusation(_) => r.false_accusations += 1,
                Heard::Replay => r.replays += 1,
                Heard::Unchecked(_) => r.unchecked += 1,
            }
        });
        heard
    }

    fn judge_proof_inner(&self, data: &[u8], source: PeerId, once: bool) -> Heard {
        let g = match odin_proto::Envelope::<Gossip>::from_bytes(data) {
            Ok(e) if e.model == self.model => e.msg,
            Ok(e) => return Heard::Unchecked(format!("a proof about model {}, not ours", e.model)),
            Err(e) => return Heard::Unchecked(format!("a proof that does not parse: {e}")),
        };
        let Gossip::Proof(p) = &g;
        if odin_net::peer_from_wire(&p.accuser).ok() != Some(source)
            || !odin_net::verify_signed_by(&source, &g.signing_bytes(&self.model), &p.sig)
        {
            return Heard::Unchecked("a proof not signed by the peer that published it".into());
        }
        let Ok(accused) = odin_net::peer_from_wire(&p.claim.server) else {
            return Heard::Unchecked("a proof naming no peer".into());
        };
        if !signed_by_server(&self.model, &p.claim) {
            // Nobody signed the claim it is about: the accuser made it up.
            return Heard::FalseAccusation(source);
        }
        let key = p.claim.step_key(&self.model);
        let fresh = match self.judged.lock() {
            Ok(mut j) => j.insert(key),
            Err(_) => return Heard::Unchecked("the judged-steps table is poisoned".into()),
        };
        if once && !fresh {
            return Heard::Replay;
        }
        let blocks = p.claim.start as usize..p.claim.end as usize;
        let Some(shard) = self.local_shard(blocks.clone()) else {
            return Heard::Unchecked(format!("this node cannot recompute blocks {}..{}", blocks.start, blocks.end));
        };
        let r = Recompute {
            blocks,
            input: p.input.clone(),
            before: p.before.clone(),
            sampling: p.sampling,
            drawn: p.drawn,
            reply: p.reply,
        };
        // Evidence that does not hash to the claim's input and state, or that the engine
        // refuses, accuses nobody but the accuser.
        match recompute(&shard, &r) {
            Ok(honest)
                if !same_result(&honest, &p.claim)
                    && (honest.input, honest.before) == (p.claim.input, p.claim.before) =>
            {
                Heard::Convicts(accused)
            }
            _ => Heard::FalseAccusation(source),
        }
    }

    /// The work each server did since the last call (and forget it): what receipts are for.
    pub fn take_work(&self) -> Vec<(PeerId, Work)> {
        self.work.lock().map(|mut w| w.drain().collect()).unwrap_or_default()
    }

    /// Judge a step fraud proof as a ledger slash carries it (the gossip bytes): `Ok(Some(p))`
    /// if the step recomputes to other bytes than `p` signed, `Ok(None)` if the proof convicts
    /// nobody, `Err` if this node cannot tell (it cannot recompute those blocks). No replay
    /// check: the ledger judges each proof once, whatever gossip did before.
    pub fn verdict(&self, data: &[u8]) -> std::result::Result<Option<PeerId>, String> {
        let accuser = match odin_proto::Envelope::<Gossip>::from_bytes(data) {
            Ok(odin_proto::Envelope { msg: Gossip::Proof(p), .. }) => match odin_net::peer_from_wire(&p.accuser) {
                Ok(a) => a,
                Err(_) => return Ok(None),
            },
            Err(_) => return Ok(None),
        };
        match self.judge_proof_inner(data, accuser, false) {
            Heard::Convicts(p) => Ok(Some(p)),
            Heard::FalseAccusation(_) | Heard::Replay => Ok(None),
            Heard::Unchecked(why) => Err(why),
        }
    }

    /// What it has done so far.
    pub fn report(&self) -> AuditReport {
        self.report.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The fraud proofs it has found, oldest first.
    pub fn proofs(&self) -> Vec<Proof> {
        self.proofs.lock().map(|p| p.clone()).unwrap_or_default()
    }

    fn count(&self, f: impl FnOnce(&mut AuditReport)) {
        if let Ok(mut r) = self.report.lock() {
            f(&mut r);
        }
    }

    /// Check one step's claims (`claims[k]` from hop k) and audit a random few. `sent` is the
    /// hash of the first hop's input, `token` and `logits` what came back, `drawn` the
    /// sampler's draws before the step. `prev` holds each hop's previous claim of this session.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn after_step(
        &self,
        reach: Reach<'_>,
        hops: &mut [HopRun],
        prev: &mut HashMap<PeerId, Claim>,
        claims: &[Claim],
        sent: [u8; 32],
        (token, logits): (u32, [u8; 32]),
        req: &GenerateRequest,
        drawn: u64,
    ) -> Result<(), Failure> {
        let router = reach.router;
        let route: Vec<(PeerId, Range<usize>)> = hops.iter().map(|h| (h.hop.peer, h.hop.start..h.hop.end)).collect();
        self.count(|r| {
            r.claims += claims.len() as u64;
            for (peer, _) in route.iter().take(claims.len()) {
                *r.steps.entry(peer.to_string()).or_default() += 1;
            }
        });
        if let Err((k, why)) = check_chain(&self.model, &route, prev, claims, sent, token, logits) {
            let peer = route.get(k).map(|r| r.0).unwrap_or(route[0].0);
            self.count(|r| r.broken += 1);
            router.report_failure(&peer);
            router.report_audit(&peer, false);
            return Err(blame(NodeError::Fraud { peer: peer.to_string(), what: why }, peer));
        }
        for (k, c) in claims.iter().enumerate() {
            prev.insert(route[k].0, c.clone());
        }
        if let Ok(mut work) = self.work.lock() {
            for (k, c) in claims.iter().enumerate() {
                let w = work.entry(route[k].0).or_insert_with(|| Work {
                    blocks: route[k].1.clone(),
                    steps: 0,
                    audited: false,
                    digest: blake3::Hasher::new(),
                });
                w.blocks = c.start as usize..c.end as usize;
                w.steps += 1;
                w.digest.update(&c.sig);
            }
        }
        for (k, claim) in claims.iter().enumerate() {
            // A server on probation or with a poor score is audited more often.
            let probation = router.on_probation(&route[k].0);
            let audited = rand::random::<f64>() < router.audit_p(&route[k].0, self.cfg.p);
            if probation {
                self.count(|r| {
                    r.probation_steps += 1;
                    r.probation_unaudited += u64::from(!audited);
                });
            }
            if !audited {
                continue;
            }
            let last = k + 1 == claims.len();
            self.audit(reach, hops, k, claim, req, if last { drawn } else { 0 }).await?;
        }
        Ok(())
    }

    /// Reveal and recompute hop `k`'s step of `claim`.
    async fn audit(
        &self,
        reach: Reach<'_>,
        hops: &mut [HopRun],
        k: usize,
        claim: &Claim,
        req: &GenerateRequest,
        drawn: u64,
    ) -> Result<(), Failure> {
        let router = reach.router;
        let peer = hops[k].hop.peer;
        let name = peer.to_string();
        self.count(|r| {
            r.audits += 1;
            r.per_server.entry(name.clone()).or_default().0 += 1;
        });
        let reveal = Request::Reveal { session: claim.session, step: claim.step };
        let (input, before) = match hops[k].call(router, reveal).await {
            Ok((Response::Revealed { input, before }, _)) => (input, before),
            // A server that cannot show what it computed from is treated as one that failed.
            Ok((r, _)) => return Err(blame(hops[k].refused(router, r), peer)),
            Err(e) => return Err(blame(e, peer)),
        };
        let r = Recompute {
            blocks: claim.start as usize..claim.end as usize,
            input,
            before,
            sampling: req.sampling,
            drawn,
            reply: req.wire,
        };
        match self.judge(reach, &r, claim, peer).await {
            Verdict::Pass => {
                self.count(|r| r.passed += 1);
                if let Some(w) = self.work.lock().ok().as_mut().and_then(|w| w.get_mut(&peer)) {
                    w.audited = true;
                }
                router.report_audit(&peer, true);
                return Ok(());
            }
            Verdict::Undone => {
                self.count(|r| r.undone += 1);
                return Ok(());
            }
            Verdict::BadReveal => {
                // What it revealed is not what it claimed to compute from: not provable to
                // others (a reveal is unsigned), so it is a failure, not a fraud proof.
                self.count(|r| r.broken += 1);
                router.report_failure(&peer);
                router.report_audit(&peer, false);
                let what = format!(
                    "step {} of session {:016x}: its reveal does not match its claim",
                    claim.step, claim.session
                );
                return Err(blame(NodeError::Fraud { peer: name, what }, peer));
            }
            Verdict::Fraud => {}
        }
        let step = claim.step;
        self.count(|r| {
            r.caught += 1;
            r.per_server.entry(name.clone()).or_default().1 += 1;
            r.banned.push((name.clone(), step));
        });
        router.ban(&peer);
        let accuser = router.peer_id();
        let mut proof = Proof {
            claim: claim.clone(),
            input: r.input,
            before: r.before,
            sampling: r.sampling,
            drawn: r.drawn,
            reply: r.reply,
            accuser: peer_to_wire(&accuser).map_err(|e| Failure::from(NodeError::from(e)))?,
            sig: Vec::new(),
        };
        if let Some(s) = &self.signer {
            let g = odin_proto::verify::Gossip::Proof(Box::new(proof.clone()));
            proof.sig = s.sign_bytes(&g.signing_bytes(&self.model));
        }
        if let Ok(mut j) = self.judged.lock() {
            j.insert(proof.claim.step_key(&self.model));
        }
        if let Ok(mut p) = self.proofs.lock() {
            p.push(proof);
        }
        tracing::warn!("server {peer} cheated on step {step} of session {:016x}: banned", claim.session);
        let what = format!("step {step} of session {:016x} recomputes to other bytes than it signed", claim.session);
        Err(Failure { error: NodeError::Fraud { peer: name, what }, peer: Some(peer) })
    }

    /// Recompute `r` and compare with `claim`: in-process when this node holds the blocks or
    /// the model's files (one honest recomputation settles it), else on up to three other
    /// servers holding them, never `accused`: one that agrees with the claim passes it, and
    /// two that agree with each other against it convict.
    async fn judge(&self, reach: Reach<'_>, r: &Recompute, claim: &Claim, accused: PeerId) -> Verdict {
        let compare = |honest: &Claim| {
            if (honest.input, honest.before) != (claim.input, claim.before) {
                Verdict::BadReveal
            } else if same_result(honest, claim) {
                Verdict::Pass
            } else {
                Verdict::Fraud
            }
        };
        if let Some(shard) = self.local_shard(r.blocks.clone()) {
            let r = r.clone();
            return match tokio::task::spawn_blocking(move || recompute(&shard, &r)).await {
                Ok(Ok(honest)) => compare(&honest),
                Ok(Err(e)) => {
                    tracing::debug!("audit: cannot recompute in-process: {e}");
                    Verdict::Undone
                }
                Err(_) => Verdict::Undone,
            };
        }
        let router = reach.router;
        let auditors: Vec<(PeerId, Hop)> = router
            .live_servers()
            .into_iter()
            .filter(|(p, i)| {
                *p != accused
                    && *p != router.peer_id()
                    && i.start as usize <= r.blocks.start
                    && i.end as usize >= r.blocks.end
            })
            .map(|(p, i)| (p, Hop { peer: p, start: i.start as usize, end: i.end as usize }))
            .collect();
        let mut against: Vec<Claim> = Vec::new();
        for (peer, hop) in auditors.into_iter().take(3) {
            let Ok(mut run) = connect(reach, 0, &hop).await else { continue };
            let ask = Request::Audit {
                session: claim.session,
                step: claim.step,
                start: r.blocks.start as u32,
                end: r.blocks.end as u32,
                sampling: r.sampling,
                drawn: r.drawn,
                reply: r.reply,
                input: r.input.clone(),
                before: r.before.clone(),
            };
            let Ok((Response::Audited { claim: theirs }, _)) = run.call(router, ask).await else { continue };
            let from_it = odin_net::peer_from_wire(&theirs.server).ok() == Some(peer);
            if !from_it || !signed_by_server(&self.model, &theirs) {
                tracing::debug!("audit: {peer} answered with a claim it did not sign");
                continue;
            }
            match compare(&theirs) {
                Verdict::Fraud => {
                    if against.iter().any(|c| same_result(c, &theirs)) {
                        return Verdict::Fraud;
                    }
                    against.push(theirs);
                }
                v => return v,
            }
        }
        Verdict::Undone
    }

    /// Recompute blocks this node holds itself (its own server's shard) in-process.
    pub fn hold(&self, shard: Arc<Shard>) {
        let r = shard.range();
        if let Ok(mut s) = self.shards.lock() {
            s.insert((r.start, r.end), shard);
        }
    }

    /// A shard of the model's blocks `blocks`, loaded once from the model directory.
    fn local_shard(&self, blocks: Range<usize>) -> Option<Arc<Shard>> {
        let key = (blocks.start, blocks.end);
        {
            let held = self.shards.lock().ok()?;
            if let Some(s) = held.get(&key) {
                return Some(s.clone());
            }
            // A held shard over more blocks serves a sub-range as well.
            if let Some(s) = held.values().find(|s| s.range().start <= blocks.start && s.range().end >= blocks.end) {
                return Some(s.clone());
            }
        }
        let dir = self.cfg.model_dir.as_ref()?;
        match Shard::load(dir, Some(blocks), Options::default()) {
            Ok(s) => {
                let s = Arc::new(s);
                self.shards.lock().ok()?.insert(key, s.clone());
                Some(s)
            }
            Err(e) => {
                tracing::warn!("audit: cannot load blocks from {}: {e}", dir.display());
                None
            }
        }
    }
}

/// What recomputing a claimed step showed.
enum Verdict {
    /// The same bytes.
    Pass,
    /// Other bytes: the claim is a lie.
    Fraud,
    /// The revealed input or state is not the one claimed.
    BadReveal,
    /// Nobody could recompute it.
    Undone,
}

/// Check one step's claims against the route, each other, the hops' previous claims, and what
/// the client sent and got back. The error names the hop at fault and why.
pub(crate) fn check_chain(
    model: &ModelId,
    route: &[(PeerId, Range<usize>)],
    prev: &HashMap<PeerId, Claim>,
    claims: &[Claim],
    sent: [u8; 32],
    token: u32,
    logits: [u8; 32],
) -> Result<(), (usize, String)> {
    if claims.len() != route.len() {
        // The last hop gathers the chain's claims; a missing one is its fault or a hop's
        // before it, and the last hop relayed the list.
        return Err((route.len().saturating_sub(1), format!("{} claims for {} hops", claims.len(), route.len())));
    }
    for (k, (c, (peer, blocks))) in claims.iter().zip(route).enumerate() {
        let named = odin_net::peer_from_wire(&c.server).ok();
        if named != Some(*peer) || !signed_by_server(model, c) {
            return Err((k, "its claim is not signed by it".into()));
        }
        if (c.start as usize, c.end as usize) != (blocks.start, blocks.end) {
            return Err((k, format!("it claims blocks {}..{}, not {}..{}", c.start, c.end, blocks.start, blocks.end)));
        }
        let want_in = if k == 0 { sent } else { claims[k - 1].output };
        if c.input != want_in {
            return Err((k, format!("its claimed input of step {} is not what it was sent", c.step)));
        }
        let last = k + 1 == route.len();
        if last && (c.token != token || c.output != logits) {
            return Err((k, format!("its claim of step {} is not the token it sent", c.step)));
        }
        if !last && c.token != NO_TOKEN {
            return Err((k, "it claims a token but does not hold the last block".into()));
        }
        if let Some(p) = prev.get(peer).filter(|p| p.session == c.session && p.start == c.start) {
            if c.step != p.step + 1 || c.before != p.after {
                return Err((
                    k,
                    format!("its step {} does not start from the state its step {} ended in", c.step, p.step),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claims::blank_claim;
    use crate::testmodel::MODEL;
    use odin_net::Keypair;

    struct Chain {
        signers: Vec<Signer>,
        route: Vec<(PeerId, Range<usize>)>,
    }

    fn chain() -> Chain {
        let signers: Vec<Signer> = (0..3).map(|_| Signer::new(Keypair::generate_ed25519(), MODEL)).collect();
        let blocks = [0..2, 2..3, 3..4];
        let route = signers.iter().zip(blocks).map(|(s, b)| (odin_net::peer_from_wire(s.peer()).unwrap(), b)).collect();
        Chain { signers, route }
    }

    /// Claims for step `step` of a consistent chain, each hop's state moving from `step` to `step + 1`.
    fn claims(c: &Chain, step: u64) -> Vec<Claim> {
        let mut out: Vec<Claim> = Vec::new();
        for (k, (s, (_, b))) in c.signers.iter().zip(&c.route).enumerate() {
            let mut cl = blank_claim(b.clone());
            cl.session = 5;
            cl.step = step;
            cl.input = if k == 0 { [1; 32] } else { out[k - 1].output };
            cl.before = [50 + k as u8 + 3 * step as u8; 32];
            cl.after = [51 + k as u8 + 3 * step as u8; 32];
            cl.output = [20 + k as u8; 32];
            if k == 2 {
                cl.token = 9;
            }
            out.push(s.sign(cl));
        }
        out
    }

    fn check(c: &Chain, prev: &HashMap<PeerId, Claim>, claims: &[Claim]) -> Result<(), (usize, String)> {
        check_chain(&MODEL, &c.route, prev, claims, [1; 32], 9, [22; 32])
    }

    #[test]
    fn a_consistent_chain_passes_and_carries_into_the_next_step() {
        let c = chain();
        let first = claims(&c, 0);
        assert_eq!(check(&c, &HashMap::new(), &first), Ok(()));
        let prev: HashMap<_, _> = c.route.iter().map(|r| r.0).zip(first.iter().cloned()).collect();
        // Each hop's step 1 starts where its step 0 ended.
        let mut second = claims(&c, 1);
        for (k, cl) in second.iter_mut().enumerate() {
            cl.before = first[k].after;
            *cl = c.signers[k].sign(cl.clone());
        }
        assert_eq!(check(&c, &prev, &second), Ok(()));
    }

    #[test]
    fn each_break_names_the_hop_at_fault() {
        let c = chain();
        let ok = claims(&c, 0);
        let resign = |k: usize, f: &dyn Fn(&mut Claim)| {
            let mut v = ok.clone();
            f(&mut v[k]);
            v[k] = c.signers[k].sign(v[k].clone());
            v
        };
        // Another input than the previous hop's output: hop 1's claim is wrong.
        assert_eq!(check(&c, &HashMap::new(), &resign(1, &|cl| cl.input = [0; 32])).unwrap_err().0, 1);
        // Another token than the one that came back.
        assert_eq!(check(&c, &HashMap::new(), &resign(2, &|cl| cl.token = 8)).unwrap_err().0, 2);
        // Other blocks than its hop's.
        assert_eq!(check(&c, &HashMap::new(), &resign(0, &|cl| cl.end = 3)).unwrap_err().0, 0);
        // A signature by someone else, or over other bytes.
        let mut forged = ok.clone();
        forged[1].step = 7;
        assert_eq!(check(&c, &HashMap::new(), &forged).unwrap_err().0, 1);
        let mut swapped = ok.clone();
        swapped[0] = c.signers[1].sign(ok[0].clone());
        assert_eq!(check(&c, &HashMap::new(), &swapped).unwrap_err().0, 0);
        // A missing claim.
        assert!(check(&c, &HashMap::new(), &ok[..2]).is_err());
        // A state that does not continue the hop's last one.
        let prev: HashMap<_, _> = c.route.iter().map(|r| r.0).zip(ok.iter().cloned()).collect();
        let jumped = claims(&c, 1);
        assert_eq!(check(&c, &prev, &jumped).unwrap_err().0, 0);
    }

    /// A signed proof by `accuser` about `claim`, a step of blocks 0..4 from a zero state on `input`.
    fn proof_bytes(accuser: &Signer, claim: Claim, input: &odin_proto::infer::StepInput) -> Vec<u8> {
        let sh = crate::testmodel::shard(0..crate::testmodel::LAYERS);
        let c = sh.config().hidden_size;
        let before = odin_proto::Tensor::encode(&sh.new_state().to_rows(), c, odin_proto::Dtype::F32).unwrap();
        let mut p = Proof {
            claim,
            input: input.clone(),
            before,
            sampling: odin_format::Sampling::default(),
            drawn: 0,
            reply: odin_proto::Dtype::F32,
            accuser: accuser.peer().clone(),
            sig: Vec::new(),
        };
        let unsigned = Gossip::Proof(Box::new(p.clone()));
        p.sig = accuser.sign_bytes(&unsigned.signing_bytes(&MODEL));
        odin_proto::Envelope { model: MODEL, msg: Gossip::Proof(Box::new(p)) }.to_bytes()
    }

    #[test]
    fn a_proof_convicts_the_liar_once_and_a_false_one_convicts_the_accuser() {
        let sh = Arc::new(crate::testmodel::shard(0..crate::testmodel::LAYERS));
        let judge = Auditor::new(AuditConfig::default(), MODEL, None);
        judge.hold(sh.clone());
        let (server, accuser) =
            (Signer::new(Keypair::generate_ed25519(), MODEL), Signer::new(Keypair::generate_ed25519(), MODEL));
        let peer = |s: &Signer| odin_net::peer_from_wire(s.peer()).unwrap();
        let input = odin_proto::infer::StepInput::Tokens(vec![5, 17, 42]);
        let c = sh.config().hidden_size;
        let zero = odin_proto::Tensor::encode(&sh.new_state().to_rows(), c, odin_proto::Dtype::F32).unwrap();
        let r = Recompute {
            blocks: 0..crate::testmodel::LAYERS,
            input: input.clone(),
            before: zero,
            sampling: odin_format::Sampling::default(),
            drawn: 0,
            reply: odin_proto::Dtype::F32,
        };
        let honest = server.sign(recompute(&sh, &r).unwrap());
        let mut lie = honest.clone();
        lie.output[0] ^= 1;
        let lie = server.sign(lie);

        let guilty = proof_bytes(&accuser, lie.clone(), &input);
        assert_eq!(judge.judge_proof(&guilty, peer(&accuser)), Heard::Convicts(peer(&server)));
        assert_eq!(judge.judge_proof(&guilty, peer(&accuser)), Heard::Replay, "a replay counts once");
        // The honest step, accused: the accuser is the liar.
        let mut other = honest.clone();
        other.session = 99;
        let other = server.sign(other);
        assert_eq!(
            judge.judge_proof(&proof_bytes(&accuser, other, &input), peer(&accuser)),
            Heard::FalseAccusation(peer(&accuser))
        );
        // A claim nobody signed is the accuser's invention.
        let mut forged = lie.clone();
        forged.step = 5;
        assert_eq!(
            judge.judge_proof(&proof_bytes(&accuser, forged, &input), peer(&accuser)),
            Heard::FalseAccusation(peer(&accuser))
        );
        // Evidence that is not the claimed input: the accuser again.
        let mut moved = lie.clone();
        moved.step = 6;
        let moved = server.sign(moved);
        let wrong_input = odin_proto::infer::StepInput::Tokens(vec![5, 17, 43]);
        assert_eq!(
            judge.judge_proof(&proof_bytes(&accuser, moved, &wrong_input), peer(&accuser)),
            Heard::FalseAccusation(peer(&accuser))
        );
        // Published by another peer than the accuser it names, or not a proof at all: unchecked.
        assert!(matches!(judge.judge_proof(&guilty, peer(&server)), Heard::Unchecked(_)));
        assert!(matches!(judge.judge_proof(b"junk", peer(&accuser)), Heard::Unchecked(_)));
        let r = judge.report();
        assert_eq!((r.proofs_heard, r.convictions, r.false_accusations, r.replays, r.unchecked), (7, 1, 3, 1, 2));
    }
}
