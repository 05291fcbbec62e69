//! What a node knows about the servers of its model, and the route it picks through them.
//!
//! Routing follows Petals: the blocks 0..L are the vertices 0..=L of a graph;
//! a server holding [s, e) offers an edge a → b for every s ≤ a < b ≤ e,
//! costing the round trip to it plus (b − a) times its per-block compute time.
//! The cheapest path from 0 to L is the chain. Servers that failed recently
//! sit out a backoff; announcements expire when they are not refreshed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use odin_net::{PeerId, ServerInfo};
use serde::Serialize;

use crate::reputation::Reputation;

/// One server as the directory knows it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its latest announcement.
    pub info: ServerInfo,
    /// When that announcement arrived.
    pub seen: Instant,
    /// Latest measured round trip.
    pub rtt: Option<Duration>,
    /// Not routed to before this instant (after failures).
    pub backoff_until: Option<Instant>,
    /// Failures in a row.
    pub failures: u32,
    /// Failures reported in all, never reset: what a server was blamed for, for `/status`.
    pub blamed: u32,
    /// What this node measured itself, µs per block per decode step (round trip included),
    /// averaged over recent generations; routes trust it over the server's own announcement.
    pub observed_us_per_block: Option<f64>,
    /// When the latest failure happened; the server is not routed to again until it has
    /// announced itself since (a killed process never does, a live one soon will).
    pub failed_at: Option<Instant>,
}

/// One hop of a route: a server and the blocks it runs for this session.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hop {
    /// The server.
    #[serde(serialize_with = "peer_string")]
    pub peer: PeerId,
    /// First block.
    pub start: usize,
    /// One past the last block.
    pub end: usize,
}

impl Hop {
    /// Blocks it runs.
    pub fn blocks(&self) -> usize {
        self.end - self.start
    }
}

fn peer_string<S: serde::Serializer>(p: &PeerId, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string())
}

/// Known servers of one model.
#[derive(Debug)]
pub struct Directory {
    layers: usize,
    ttl: Duration,
    servers: HashMap<PeerId, Entry>,
    /// Proven cheaters: never routed to again, their announcements ignored.
    banned: std::collections::HashSet<PeerId>,
    /// Identity work asked of a server (`odin_net::puzzle`); below it, announcements are ignored.
    identity_bits: u32,
    /// How much this node trusts each server.
    rep: Reputation,
    /// Sessions this node has open through each server now (probation caps them).
    open: HashMap<PeerId, u32>,
}

/// Round trip assumed for a server whose ping has not come back yet.
const UNKNOWN_RTT: Duration = Duration::from_millis(5);

impl Directory {
    /// An empty directory for a model of `layers` blocks; announcements live for `ttl`.
    pub fn new(layers: usize, ttl: Duration) -> Self {
        Self {
            layers,
            ttl,
            servers: HashMap::new(),
            banned: Default::default(),
            identity_bits: 0,
            rep: Reputation::default(),
            open: HashMap::new(),
        }
    }

    /// The reputation book routes and audits consult.
    pub fn reputation(&self) -> &Reputation {
        &self.rep
    }

    /// The reputation book, to record what happened.
    pub fn reputation_mut(&mut self) -> &mut Reputation {
        &mut self.rep
    }

    /// A session of this node opens (`+1`) or closes (`-1`) through each of `peers`.
    pub fn sessions(&mut self, peers: &[PeerId], open: bool) {
        for p in peers {
            let n = self.open.entry(*p).or_default();
            *n = if open { n.saturating_add(1) } else { n.saturating_sub(1) };
            if *n == 0 {
                self.open.remove(p);
            }
        }
    }

    /// Blocks of the model.
    pub fn layers(&self) -> usize {
        self.layers
    }

    /// Take an announcement (ignored when it names blocks the model does not have).
    pub fn update(&mut self, peer: PeerId, info: ServerInfo) {
        if info.end as usize > self.layers
            || self.banned.contains(&peer)
            || !odin_net::puzzle::peer_meets(&peer, self.identity_bits)
        {
            return;
        }
        let e = self.servers.entry(peer).or_insert_with(|| Entry {
            info: info.clone(),
            seen: Instant::now(),
            rtt: None,
            backoff_until: None,
            failures: 0,
            blamed: 0,
            observed_us_per_block: None,
            failed_at: None,
        });
        self.rep.hear(peer, &info.opinions);
        e.info = info;
        e.seen = Instant::now();
    }

    /// Record a round-trip time.
    pub fn rtt(&mut self, peer: PeerId, rtt: Duration) {
        if let Some(e) = self.servers.get_mut(&peer) {
            e.rtt = Some(rtt);
        }
    }

    /// Record what a generation measured through `peer`: `us_per_block` per decode step.
    pub fn observed(&mut self, peer: &PeerId, us_per_block: f64) {
        if !us_per_block.is_finite() || us_per_block < 0.0 {
            return;
        }
        if let Some(e) = self.servers.get_mut(peer) {
            // Recent generations weigh most, so a server that recovers is trusted again.
            e.observed_us_per_block = Some(match e.observed_us_per_block {
                Some(old) => 0.5 * old + 0.5 * us_per_block,
                None => us_per_block,
            });
        }
    }

    /// Ignore announcements from peers whose ids do not show `bits` of identity work.
    pub fn require_identity_bits(&mut self, bits: u32) {
        self.identity_bits = bits;
    }

    /// `peer` was proven to cheat: forget it, and never take it back.
    pub fn ban(&mut self, peer: PeerId) {
        self.servers.remove(&peer);
        self.rep.forget(&peer);
        self.banned.insert(peer);
    }

    /// Whether `peer` is banned.
    pub fn is_banned(&self, peer: &PeerId) -> bool {
        self.banned.contains(peer)
    }

    /// A peer went away: forget it.
    pub fn remove(&mut self, peer: &PeerId) {
        self.servers.remove(peer);
    }

    /// A request to `peer` failed: back off exponentially (0.5 s, 1 s, 2 s, … up to 60 s).
    pub fn failed(&mut self, peer: &PeerId) {
        self.rep.record(*peer, |r| r.faults += 1);
        if let Some(e) = self.servers.get_mut(peer) {
            e.failures += 1;
            e.blamed += 1;
            let ms = 500u64.saturating_mul(1 << (e.failures - 1).min(7)).min(60_000);
            e.backoff_until = Some(Instant::now() + Duration::from_millis(ms));
            e.failed_at = Some(Instant::now());
        }
    }

    /// A request to `peer` succeeded.
    pub fn succeeded(&mut self, peer: &PeerId) {
        if let Some(e) = self.servers.get_mut(peer) {
            e.failures = 0;
            e.backoff_until = None;
            e.failed_at = None;
        }
    }

    /// Drop announcements older than the TTL.
    pub fn expire(&mut self) {
        let ttl = self.ttl;
        self.servers.retain(|_, e| e.seen.elapsed() < ttl);
    }

    /// Whether `peer` has announced itself (and not expired or left).
    pub fn knows(&self, peer: &PeerId) -> bool {
        self.servers.contains_key(peer)
    }

    /// Servers known now, sorted by first block then peer id.
    pub fn entries(&self) -> Vec<(PeerId, Entry)> {
        let mut v: Vec<_> = self.servers.iter().map(|(p, e)| (*p, e.clone())).collect();
        v.sort_by_key(|(p, e)| (e.info.start, p.to_bytes()));
        v
    }

    /// How many live servers cover each block.
    pub fn coverage(&self) -> Vec<usize> {
        let mut c = vec![0; self.layers];
        for e in self.servers.values().filter(|e| e.seen.elapsed() < self.ttl) {
            let end = (e.info.end as usize).min(self.layers);
            c.iter_mut().take(end).skip(e.info.start as usize).for_each(|n| *n += 1);
        }
        c
    }

    /// The cheapest chain of servers over blocks 0..L, skipping `avoid` and servers in backoff
    /// or without a free session slot. `None` when the blocks are not all covered.
    ///
    /// A hop's cost is scaled by the server's reputation ([`Reputation::cost_factor`]), and a
    /// server on probation that already carries its cap of this node's sessions is left out
    /// while a route without it exists.
    pub fn route(&self, avoid: &[PeerId]) -> Option<Vec<Hop>> {
        self.route_span(0..self.layers, avoid)
    }

    /// [`Directory::route`] over blocks `span` only (where a session moves part of its chain).
    pub fn route_span(&self, span: std::ops::Range<usize>, avoid: &[PeerId]) -> Option<Vec<Hop>> {
        let cap = self.rep.policy().probation_sessions;
        let full: Vec<PeerId> = self
            .open
            .iter()
            .filter(|(p, n)| **n >= cap && self.rep.on_probation(p))
            .map(|(p, _)| *p)
            .chain(avoid.iter().copied())
            .collect();
        if full.len() > avoid.len() {
            if let Some(r) = self.cheapest(span.clone(), &full) {
                return Some(r);
            }
        }
        self.cheapest(span, avoid)
    }

    fn cheapest(&self, span: std::ops::Range<usize>, avoid: &[PeerId]) -> Option<Vec<Hop>> {
        if span.is_empty() || span.end > self.layers {
            return None;
        }
        let now = Instant::now();
        let usable: Vec<(&PeerId, &Entry)> = {
            let mut v: Vec<_> = self
                .servers
                .iter()
                .filter(|(p, e)| {
                    !avoid.contains(p)
                        && e.seen.elapsed() < self.ttl
                        && e.info.free_slots > 0
                        && e.backoff_until.is_none_or(|t| t <= now)
                        && e.failed_at.is_none_or(|t| e.seen > t)
                })
                .collect();
            // A fixed order makes ties break the same way on every run.
            v.sort_by_key(|(p, _)| p.to_bytes());
            v
        };
        let (first, l) = (span.start, span.end);
        // Dijkstra over block boundaries; costs in microseconds.
        let mut best: Vec<Option<(u64, usize, Hop)>> = vec![None; l + 1];
        let mut done = vec![false; l + 1];
        let mut dist = vec![u64::MAX; l + 1];
        dist[first] = 0;
        for _ in first..=l {
            let Some(a) = (first..=l).filter(|&v| !done[v] && dist[v] < u64::MAX).min_by_key(|&v| (dist[v], v)) else {
                break;
            };
            done[a] = true;
            if a == l {
                break;
            }
            for (peer, e) in &usable {
                let (s, end) = (e.info.start as usize, e.info.end as usize);
                if !(s <= a && a < end) {
                    continue;
                }
                // What we measured ourselves beats what the server says. Every hop costs at least
                // its round trip, so a chain never splits one server into two hops.
                let rtt = (e.rtt.unwrap_or(UNKNOWN_RTT).as_micros() as u64).max(1);
                let per_block_us = e.observed_us_per_block.unwrap_or(e.info.ms_per_block * 1e3);
                // Busy servers cost a little more, so equal chains spread the load.
                let load = u64::from(e.info.load) * 50;
                let trust = self.rep.cost_factor(peer);
                for b in a + 1..=end.min(l) {
                    let hop = (rtt + load) as f64 + (b - a) as f64 * per_block_us;
                    let cost = dist[a] + (hop * trust) as u64;
                    if cost < dist[b] {
                        dist[b] = cost;
                        best[b] = Some((cost, a, Hop { peer: **peer, start: a, end: b }));
                    }
                }
            }
        }
        if dist[l] == u64::MAX {
            return None;
        }
        let mut hops = Vec::new();
        let mut v = l;
        while v > first {
            let (_, prev, hop) = best[v].clone()?;
            hops.push(hop);
            v = prev;
        }
        hops.reverse();
        Some(hops)
    }
}

/// An announcement of blocks `start..end` at `ms` per block, for tests.
#[cfg(test)]
pub(crate) fn test_info(start: u32, end: u32, ms: f64, auto: bool) -> ServerInfo {
    ServerInfo {
        version: odin_proto::infer::PROTOCOL_VERSION,
        peer: String::new(),
        model: String::new(),
        start,
        end,
        ms_per_block: ms,
        load: 0,
        free_slots: 4,
        addrs: vec![],
        at_ms: 0,
        auto,
        opinions: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(start: u32, end: u32, ms: f64) -> ServerInfo {
        test_info(start, end, ms, false)
    }

    #[test]
    fn servers_without_identity_work_and_banned_ones_are_never_routed_to() {
        let mut d = Directory::new(2, Duration::from_secs(60));
        d.require_identity_bits(6);
        let cheap = odin_net::Keypair::generate_ed25519().public().to_peer_id();
        let worked = odin_net::puzzle::solve(6).0.public().to_peer_id();
        // A random key shows 6 bits once in 64 tries: pick one that does not.
        let cheap = if odin_net::puzzle::peer_meets(&cheap, 6) { PeerId::random() } else { cheap };
        d.update(cheap, info(0, 2, 0.1));
        assert!(!d.knows(&cheap) && d.route(&[]).is_none(), "an id without the work is ignored");
        d.update(worked, info(0, 2, 1.0));
        assert_eq!(d.route(&[]).map(|r| r[0].peer), Some(worked));
        d.ban(worked);
        d.update(worked, info(0, 2, 1.0));
        assert!(d.is_banned(&worked) && !d.knows(&worked) && d.route(&[]).is_none(), "a banned server stays out");
    }

    #[test]
    fn routes_cover_every_block_in_order_and_prefer_fast_servers() {
        let mut d = Directory::new(4, Duration::from_secs(60));
        let (a, b, c, slow) = (PeerId::random(), PeerId::random(), PeerId::random(), PeerId::random());
        d.update(a, info(0, 2, 1.0));
        assert_eq!(d.route(&[]), None, "blocks 2..4 are uncovered");
        d.update(b, info(2, 4, 1.0));
        d.update(slow, info(0, 4, 50.0));
        let r = d.route(&[]).unwrap();
        assert_eq!(r, vec![Hop { peer: a, start: 0, end: 2 }, Hop { peer: b, start: 2, end: 4 }]);
        // Overlapping ranges: a route may use part of a server's blocks.
        d.update(c, info(1, 4, 0.1));
        let r = d.route(&[]).unwrap();
        assert_eq!(r, vec![Hop { peer: a, start: 0, end: 1 }, Hop { peer: c, start: 1, end: 4 }]);
        // Avoided and failing servers are routed around.
        let r = d.route(&[c]).unwrap();
        assert_eq!(r[1].peer, b);
        d.failed(&a);
        let r = d.route(&[c]).unwrap();
        // The slow server only for the blocks nobody else can take.
        assert_eq!(r, vec![Hop { peer: slow, start: 0, end: 2 }, Hop { peer: b, start: 2, end: 4 }]);
        // Once the backoff is over, a failed server still waits for a fresh announcement:
        // a dead one never sends one.
        d.servers.get_mut(&a).unwrap().backoff_until = Some(Instant::now());
        assert_eq!(d.route(&[c]).unwrap()[0].peer, slow);
        d.update(a, info(0, 2, 1.0));
        assert_eq!(d.route(&[c]).unwrap()[0].peer, a);
        d.failed(&a);
        d.succeeded(&a);
        assert_eq!(d.coverage(), vec![2, 3, 3, 3]);
        d.remove(&slow);
        d.remove(&a);
        assert_eq!(d.route(&[]), None);
    }

    #[test]
    fn measured_slowness_beats_announced_speed() {
        let mut d = Directory::new(2, Duration::from_secs(60));
        let (liar, honest) = (PeerId::random(), PeerId::random());
        d.update(liar, info(0, 2, 0.01));
        d.update(honest, info(0, 2, 0.5));
        assert_eq!(d.route(&[]).unwrap()[0].peer, liar, "on announcements alone the liar looks fastest");
        d.observed(&liar, 20_000.0);
        assert_eq!(d.route(&[]).unwrap()[0].peer, honest);
        d.observed(&liar, f64::NAN);
        assert_eq!(d.entries().iter().find(|(p, _)| *p == liar).unwrap().1.observed_us_per_block, Some(20_000.0));
    }

    #[test]
    fn reputation_weighs_on_route_cost_and_probation_caps_sessions() {
        let mut d = Directory::new(2, Duration::from_secs(60));
        let (known, fresh) = (PeerId::random(), PeerId::random());
        d.update(known, info(0, 2, 1.0));
        d.update(fresh, info(0, 2, 0.8));
        assert_eq!(d.route(&[]).unwrap()[0].peer, fresh, "equal standing: the faster one");
        // Passed audits make a server cheaper to route through than a slightly faster stranger.
        for _ in 0..30 {
            d.reputation_mut().record(known, |r| r.passed += 1);
        }
        assert_eq!(d.route(&[]).unwrap()[0].peer, known);
        // A server on probation takes one of this node's sessions at a time while others can
        // take the rest; when none can, it still serves (and every step of it is audited).
        let mut d = Directory::new(2, Duration::from_secs(60));
        d.update(known, info(0, 2, 5.0));
        d.update(fresh, info(0, 2, 1.0));
        for _ in 0..30 {
            d.reputation_mut().record(known, |r| r.passed += 1);
        }
        assert_eq!(d.route(&[]).unwrap()[0].peer, fresh);
        d.sessions(&[fresh], true);
        assert_eq!(d.route(&[]).unwrap()[0].peer, known, "the stranger's one session is taken");
        assert_eq!(d.route(&[known]).unwrap()[0].peer, fresh, "no one else: it serves");
        d.sessions(&[fresh], false);
        assert_eq!(d.route(&[]).unwrap()[0].peer, fresh);
        // Opinions in announcements reach the book; a banned server's word is forgotten.
        let genesis = PeerId::random();
        d.reputation_mut().add_genesis(genesis);
        let mut said = info(0, 2, 9.0);
        said.opinions =
            vec![odin_net::Opinion { peer: fresh.to_string(), passed: 50, failed: 0, faults: 0, served: 0 }];
        d.update(genesis, said);
        assert!(!d.reputation().on_probation(&fresh));
        d.ban(genesis);
        assert!(d.reputation().on_probation(&fresh));
    }

    #[test]
    fn announcements_expire_and_full_servers_are_skipped() {
        let mut d = Directory::new(2, Duration::from_millis(0));
        d.update(PeerId::random(), info(0, 2, 1.0));
        assert_eq!(d.route(&[]), None);
        d.expire();
        assert!(d.entries().is_empty());
        let mut d = Directory::new(2, Duration::from_secs(60));
        let mut full = info(0, 2, 1.0);
        full.free_slots = 0;
        d.update(PeerId::random(), full);
        assert_eq!(d.route(&[]), None);
        // Blocks beyond the model are ignored.
        d.update(PeerId::random(), info(0, 3, 1.0));
        assert!(d.entries().len() == 1);
    }
}
