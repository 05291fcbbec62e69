//! How much a node trusts each server: a Beta reputation built from what it saw itself
//! (audits passed and failed, requests that failed, generations served) and from what other
//! servers say in their announcements, weighted by how much it trusts them.
//!
//! The score is the mean of Beta(1 + good, 1 + bad): 0.5 for a stranger, towards 1 with
//! passed audits and served generations, towards 0 with failures. A failed audit weighs ten
//! times a failed request (a lie is not bad luck). What other servers report counts only in
//! proportion to how far *this* node's own evidence puts the teller above neutral
//! (weight = max(0, 2·score − 1), from own evidence alone), so a crowd of fresh identities
//! vouching for each other adds nothing; the genesis peers (the ones a node was started
//! with) are trusted fully, as EigenTrust's pre-trusted set. One step of transitive trust,
//! not EigenTrust's fixed point: it needs no global agreement and stays cheap to recompute.
//!
//! A server is on **probation** until it has passed [`Policy::probation_audits`] audits (its
//! own or vouched for): every step of it is audited, and each node routes at most
//! [`Policy::probation_sessions`] sessions through it at a time. After that, a low score
//! raises its audit fraction and its route cost.

use std::collections::{BTreeMap, HashMap, HashSet};

use odin_net::{Opinion, PeerId};

/// How reputation acts on audits and routes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Audits a new identity must pass before it leaves probation.
    pub probation_audits: u32,
    /// Audit fraction on probation.
    pub probation_p: f64,
    /// Sessions one node routes through a server on probation at a time.
    pub probation_sessions: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Self { probation_audits: 20, probation_p: 1.0, probation_sessions: 1 }
    }
}

/// What one node saw of one server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Record {
    /// Audits it passed.
    pub passed: u32,
    /// Audits it failed or chains it broke.
    pub failed: u32,
    /// Requests to it that failed (timeouts, refusals, dropped streams).
    pub faults: u32,
    /// Generations it served to the end.
    pub served: u32,
}

/// Weight of a failed audit against a failed request.
const LIE_WEIGHT: f64 = 10.0;
/// Weight of a served generation against a passed audit (uptime is cheap to show).
const SERVED_WEIGHT: f64 = 0.1;
/// Most opinions one announcement carries.
pub const MAX_OPINIONS: usize = odin_net::MAX_OPINIONS;

impl Record {
    fn evidence(&self) -> (f64, f64) {
        (
            f64::from(self.passed) + SERVED_WEIGHT * f64::from(self.served),
            LIE_WEIGHT * f64::from(self.failed) + f64::from(self.faults),
        )
    }

    fn of(o: &Opinion) -> Self {
        Self { passed: o.passed, failed: o.failed, faults: o.faults, served: o.served }
    }
}

fn beta((good, bad): (f64, f64)) -> f64 {
    (1.0 + good) / (2.0 + good + bad)
}

/// One node's reputation book.
#[derive(Debug, Clone, Default)]
pub struct Reputation {
    policy: Policy,
    own: HashMap<PeerId, Record>,
    /// What each teller said of others in its latest announcement.
    heard: HashMap<PeerId, BTreeMap<PeerId, Record>>,
    genesis: HashSet<PeerId>,
}

impl Reputation {
    /// An empty book acting by `policy`, trusting `genesis` peers' word fully.
    pub fn new(policy: Policy, genesis: impl IntoIterator<Item = PeerId>) -> Self {
        Self { policy, genesis: genesis.into_iter().collect(), ..Default::default() }
    }

    /// Its policy.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Act by `policy` from now on.
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    /// Trust `peer`'s word fully from now on.
    pub fn add_genesis(&mut self, peer: PeerId) {
        self.genesis.insert(peer);
    }

    /// Change what this node saw of `peer`.
    pub fn record(&mut self, peer: PeerId, f: impl FnOnce(&mut Record)) {
        f(self.own.entry(peer).or_default());
    }

    /// What this node saw of `peer` itself.
    pub fn own(&self, peer: &PeerId) -> Record {
        self.own.get(peer).copied().unwrap_or_default()
    }

    /// Take `teller`'s opinions (its latest announcement replaces the one before; opinions
    /// about itself and unreadable peer ids are dropped).
    pub fn hear(&mut self, teller: PeerId, opinions: &[Opinion]) {
        let said: BTreeMap<PeerId, Record> = opinions
            .iter()
            .take(MAX_OPINIONS)
            .filter_map(|o| Some((o.peer.parse::<PeerId>().ok()?, Record::of(o))))
            .filter(|(p, _)| *p != teller)
            .collect();
        if said.is_empty() {
            self.heard.remove(&teller);
        } else {
            self.heard.insert(teller, said);
        }
    }

    /// How much `teller`'s word counts, from this node's own evidence only.
    fn weight(&self, teller: &PeerId) -> f64 {
        if self.genesis.contains(teller) {
            return 1.0;
        }
        (2.0 * beta(self.own(teller).evidence()) - 1.0).max(0.0)
    }

    /// Good and bad evidence about `peer`: own, plus others' weighted.
    fn evidence(&self, peer: &PeerId) -> (f64, f64) {
        self.weighted(peer, |r| r.evidence())
    }

    /// `f` of this node's own record of `peer`, plus `f` of each teller's record of it times
    /// the teller's weight.
    fn weighted(&self, peer: &PeerId, f: impl Fn(&Record) -> (f64, f64)) -> (f64, f64) {
        let (mut a, mut b) = f(&self.own(peer));
        // Tellers in a fixed order, so the sum is the same bits on every run.
        let mut tellers: Vec<&PeerId> = self.heard.keys().filter(|t| *t != peer).collect();
        tellers.sort_by_key(|t| t.to_bytes());
        for t in tellers {
            let w = self.weight(t);
            if let Some(r) = self.heard.get(t).and_then(|s| s.get(peer)).filter(|_| w > 0.0) {
                let (x, y) = f(r);
                a += w * x;
                b += w * y;
            }
        }
        (a, b)
    }

    /// `peer`'s score in (0, 1); 0.5 for a stranger.
    pub fn score(&self, peer: &PeerId) -> f64 {
        beta(self.evidence(peer))
    }

    /// Passed audits this node counts for `peer` (own plus weighted vouching).
    fn audits_passed(&self, peer: &PeerId) -> f64 {
        self.weighted(peer, |r| (f64::from(r.passed), 0.0)).0
    }

    /// Whether `peer` is still on probation.
    pub fn on_probation(&self, peer: &PeerId) -> bool {
        self.audits_passed(peer) < f64::from(self.policy.probation_audits)
    }

    /// The fraction of `peer`'s steps to audit when the node's own setting is `base`: all of
    /// them on probation (per the policy); otherwise a score under 0.5 raises it towards 1.
    pub fn audit_p(&self, peer: &PeerId, base: f64) -> f64 {
        let base = base.clamp(0.0, 1.0);
        if self.on_probation(peer) {
            return base.max(self.policy.probation_p);
        }
        let low = (1.0 - 2.0 * self.score(peer)).max(0.0);
        base + (1.0 - base) * low
    }

    /// What a hop through `peer` costs relative to a neutral server: 1.5 − score, so a
    /// trusted server costs down to half, a distrusted one up to half again as much.
    pub fn cost_factor(&self, peer: &PeerId) -> f64 {
        1.5 - self.score(peer)
    }

    /// This node's own opinions to announce: the servers it has most evidence about first,
    /// at most [`MAX_OPINIONS`].
    pub fn opinions(&self) -> Vec<Opinion> {
        let mut v: Vec<(&PeerId, &Record)> = self.own.iter().collect();
        let weight = |r: &Record| u64::from(r.passed) + u64::from(r.failed) + u64::from(r.faults) + u64::from(r.served);
        v.sort_by_key(|(p, r)| (std::cmp::Reverse(weight(r)), p.to_bytes()));
        v.into_iter()
            .take(MAX_OPINIONS)
            .map(|(p, r)| Opinion {
                peer: p.to_string(),
                passed: r.passed,
                failed: r.failed,
                faults: r.faults,
                served: r.served,
            })
            .collect()
    }

    /// Forget `peer` (banned: its word no longer counts either).
    pub fn forget(&mut self, peer: &PeerId) {
        self.heard.remove(peer);
        self.genesis.remove(peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn said(about: &PeerId, passed: u32, failed: u32) -> Opinion {
        Opinion { peer: about.to_string(), passed, failed, faults: 0, served: 0 }
    }

    #[test]
    fn a_stranger_is_neutral_and_on_probation_with_every_step_audited() {
        let r = Reputation::new(Policy::default(), []);
        let p = PeerId::random();
        assert_eq!(r.score(&p), 0.5);
        assert!(r.on_probation(&p));
        assert_eq!(r.audit_p(&p, 0.05), 1.0);
        assert_eq!(r.cost_factor(&p), 1.0);
    }

    #[test]
    fn passed_audits_end_probation_and_failures_raise_the_audit_fraction() {
        let mut r = Reputation::new(Policy { probation_audits: 3, ..Policy::default() }, []);
        let p = PeerId::random();
        for _ in 0..2 {
            r.record(p, |x| x.passed += 1);
        }
        assert!(r.on_probation(&p));
        r.record(p, |x| x.passed += 1);
        assert!(!r.on_probation(&p));
        assert_eq!(r.audit_p(&p, 0.05), 0.05, "a good score keeps the base fraction");
        assert!(r.cost_factor(&p) < 1.0, "trusted servers cost less");
        // Failed requests pull the score under neutral: audits rise, routes cost more.
        for _ in 0..10 {
            r.record(p, |x| x.faults += 1);
        }
        assert!(r.score(&p) < 0.5);
        assert!(r.audit_p(&p, 0.05) > 0.05 && r.audit_p(&p, 0.05) < 1.0);
        assert!(r.cost_factor(&p) > 1.0);
        // One failed audit outweighs ten failed requests.
        let (a, b) = (PeerId::random(), PeerId::random());
        r.record(a, |x| x.failed += 1);
        for _ in 0..9 {
            r.record(b, |x| x.faults += 1);
        }
        assert!(r.score(&a) < r.score(&b));
    }

    #[test]
    fn vouching_counts_only_from_trusted_tellers() {
        let (genesis, sybil, friend, newcomer) =
            (PeerId::random(), PeerId::random(), PeerId::random(), PeerId::random());
        let mut r = Reputation::new(Policy { probation_audits: 5, ..Policy::default() }, [genesis]);
        // A fresh identity vouching for another adds nothing.
        r.hear(sybil, &[said(&newcomer, 1000, 0)]);
        assert!(r.on_probation(&newcomer));
        assert_eq!(r.score(&newcomer), 0.5);
        // The genesis peer's word counts in full.
        r.hear(genesis, &[said(&newcomer, 5, 0)]);
        assert!(!r.on_probation(&newcomer));
        // A teller this node has audited itself counts in part.
        for _ in 0..18 {
            r.record(friend, |x| x.passed += 1);
        }
        let w = 2.0 * r.score(&friend) - 1.0;
        assert!(w > 0.8 && w < 1.0);
        let before = r.score(&sybil);
        r.hear(friend, &[said(&sybil, 0, 1)]);
        assert!(r.score(&sybil) < before);
        // What a teller says about itself is dropped, and a later announcement replaces the earlier.
        r.hear(friend, &[said(&friend, 1000, 0)]);
        assert_eq!(r.score(&sybil), before);
        assert_eq!(r.score(&friend), beta(r.own(&friend).evidence()));
    }

    #[test]
    fn opinions_put_the_best_known_first_and_are_capped() {
        let mut r = Reputation::default();
        let peers: Vec<PeerId> = (0..MAX_OPINIONS + 5).map(|_| PeerId::random()).collect();
        for (i, p) in peers.iter().enumerate() {
            r.record(*p, |x| x.served = i as u32);
        }
        let o = r.opinions();
        assert_eq!(o.len(), MAX_OPINIONS);
        assert_eq!(o[0].peer, peers[MAX_OPINIONS + 4].to_string());
        let mut heard = Reputation::default();
        heard.hear(PeerId::random(), &o);
        assert_eq!(heard.heard.values().next().map(|m| m.len()), Some(MAX_OPINIONS));
        // Unreadable ids are dropped, not fatal.
        heard.hear(
            PeerId::random(),
            &[Opinion { peer: "not a peer".into(), passed: 1, failed: 0, faults: 0, served: 0 }],
        );
    }
}
