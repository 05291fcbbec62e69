//! What a member has heard about each round: which state each peer starts it from, and how
//! each voted. Pure and deterministic; the rules by which every honest member arrives at the
//! same accepted set and the same weights are written here.
//!
//! - **Members of a round** are the peers that announced, signed, that they start it from
//!   the same state as this node. A commitment from anyone else is not counted.
//! - **The accepted set** is every (author, update hash) that a strict majority of the
//!   round's voters say they fetched and checked. Every voter sees every vote that gossip
//!   delivers in time, so honest voters agree on it; a liar's vote is one vote.
//! - **The state a round starts from** is the one most of its announcers name (ties to the
//!   smaller id). A node that computed another one fetches it; a node that has fallen behind
//!   moves to the newest round backed by at least a quorum of announcers.

use std::collections::{BTreeMap, BTreeSet};

use odin_proto::train::{Announce, Vote};
use odin_proto::PeerBytes;

/// Each voter's held updates, (author, hash) sorted by author.
type Votes = BTreeMap<PeerBytes, Vec<(PeerBytes, [u8; 32])>>;

/// What has been heard, by round.
#[derive(Debug, Default, Clone)]
pub struct Book {
    announces: BTreeMap<u64, BTreeMap<PeerBytes, [u8; 32]>>,
    votes: BTreeMap<u64, Votes>,
}

impl Book {
    /// Note a (checked) announcement; a later one from the same peer for the same round
    /// replaces it (a node that fetched the majority's state announces again).
    pub fn announce(&mut self, a: &Announce) {
        self.announces.entry(a.round).or_default().insert(a.node.clone(), a.state);
    }

    /// Note a (checked) vote; a peer's first vote in a round stands.
    pub fn vote(&mut self, v: &Vote) {
        self.votes.entry(v.round).or_default().entry(v.node.clone()).or_insert_with(|| v.held.clone());
    }

    /// The peers that start `round` from `state`.
    pub fn members(&self, round: u64, state: &[u8; 32]) -> BTreeSet<PeerBytes> {
        self.announces
            .get(&round)
            .map(|m| m.iter().filter(|(_, s)| *s == state).map(|(p, _)| p.clone()).collect())
            .unwrap_or_default()
    }

    /// Every peer that announced `round`, whatever its state.
    pub fn announcers(&self, round: u64) -> BTreeSet<PeerBytes> {
        self.announces.get(&round).map(|m| m.keys().cloned().collect()).unwrap_or_default()
    }

    /// Every peer that announced any round.
    pub fn everyone(&self) -> BTreeSet<PeerBytes> {
        self.announces.values().flat_map(|m| m.keys().cloned()).collect()
    }

    /// The state most announcers of `round` name, how many name it, and how many announced.
    pub fn majority(&self, round: u64) -> Option<([u8; 32], usize, usize)> {
        let m = self.announces.get(&round)?;
        let mut count: BTreeMap<[u8; 32], usize> = BTreeMap::new();
        for s in m.values() {
            *count.entry(*s).or_default() += 1;
        }
        // Most votes first; among equals the smallest id (BTreeMap order, max_by keeps the last).
        let (id, n) = count.into_iter().rev().max_by_key(|&(_, n)| n)?;
        Some((id, n, m.len()))
    }

    /// The newest round after `after` whose majority state at least `min` peers announced,
    /// with those peers.
    pub fn newest_backed(&self, after: u64, min: usize) -> Option<(u64, [u8; 32], Vec<PeerBytes>)> {
        self.announces.range(after + 1..).rev().find_map(|(&r, m)| {
            let (id, n, _) = self.majority(r)?;
            (n >= min).then(|| (r, id, m.iter().filter(|(_, s)| **s == id).map(|(p, _)| p.clone()).collect()))
        })
    }

    /// Votes heard for `round`.
    pub fn voters(&self, round: u64) -> BTreeSet<PeerBytes> {
        self.votes.get(&round).map(|v| v.keys().cloned().collect()).unwrap_or_default()
    }

    /// The updates a strict majority of `round`'s voters among `counted` hold, by author.
    pub fn accepted(&self, round: u64, counted: &BTreeSet<PeerBytes>) -> Vec<(PeerBytes, [u8; 32])> {
        let Some(votes) = self.votes.get(&round) else { return Vec::new() };
        let votes: Vec<_> = votes.iter().filter(|(p, _)| counted.contains(*p)).collect();
        let mut tally: BTreeMap<(PeerBytes, [u8; 32]), usize> = BTreeMap::new();
        for (_, held) in &votes {
            for e in held.iter() {
                *tally.entry(e.clone()).or_default() += 1;
            }
        }
        tally.into_iter().filter(|(_, n)| 2 * n > votes.len()).map(|(e, _)| e).collect()
    }

    /// Who holds the update `(author, hash)` of `round`, by their votes.
    pub fn holders(&self, round: u64, entry: &(PeerBytes, [u8; 32])) -> Vec<PeerBytes> {
        self.votes
            .get(&round)
            .map(|v| v.iter().filter(|(_, held)| held.contains(entry)).map(|(p, _)| p.clone()).collect())
            .unwrap_or_default()
    }

    /// Forget rounds before `round`.
    pub fn prune(&mut self, round: u64) {
        self.announces = self.announces.split_off(&round);
        self.votes = self.votes.split_off(&round);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(b: u8) -> PeerBytes {
        let mut v = vec![0x00, 36, 0x08, 0x01, 0x12, 0x20];
        v.extend_from_slice(&[b; 32]);
        PeerBytes::new(&v).unwrap()
    }

    fn announce(b: &mut Book, round: u64, p: u8, state: u8) {
        b.announce(&Announce { round, node: peer(p), state: [state; 32], sig: vec![] });
    }

    fn vote(b: &mut Book, round: u64, p: u8, held: &[(u8, u8)]) {
        let held = held.iter().map(|&(a, h)| (peer(a), [h; 32])).collect();
        b.vote(&Vote { round, node: peer(p), held, sig: vec![] });
    }

    #[test]
    fn members_are_those_that_start_the_round_from_our_state() {
        let mut b = Book::default();
        announce(&mut b, 1, 1, 7);
        announce(&mut b, 1, 2, 7);
        announce(&mut b, 1, 3, 8);
        assert_eq!(b.members(1, &[7; 32]), [peer(1), peer(2)].into());
        assert_eq!(b.majority(1), Some(([7; 32], 2, 3)));
        // Peer 3 fetched the majority's state and says so.
        announce(&mut b, 1, 3, 7);
        assert_eq!(b.majority(1), Some(([7; 32], 3, 3)));
        assert!(b.members(2, &[7; 32]).is_empty());
    }

    #[test]
    fn a_tie_goes_to_the_smaller_state_id() {
        let mut b = Book::default();
        announce(&mut b, 1, 1, 9);
        announce(&mut b, 1, 2, 4);
        assert_eq!(b.majority(1), Some(([4; 32], 1, 2)));
    }

    #[test]
    fn an_update_counts_when_a_strict_majority_of_voters_hold_it() {
        let mut b = Book::default();
        vote(&mut b, 1, 1, &[(1, 10), (2, 20), (3, 30)]);
        vote(&mut b, 1, 2, &[(1, 10), (2, 20)]);
        vote(&mut b, 1, 3, &[(1, 10), (3, 30), (4, 40)]);
        vote(&mut b, 1, 4, &[(1, 10), (2, 20), (3, 31)]);
        let all = b.voters(1);
        assert_eq!(b.accepted(1, &all), vec![(peer(1), [10; 32]), (peer(2), [20; 32])]);
        // (3, 30) has 2 of 4: not a strict majority. With voter 4 not counted, it has 2 of 3.
        let three: BTreeSet<_> = [peer(1), peer(2), peer(3)].into();
        assert_eq!(b.accepted(1, &three).len(), 3);
        assert_eq!(b.holders(1, &(peer(3), [30; 32])), vec![peer(1), peer(3)]);
        // A second vote from the same peer changes nothing.
        vote(&mut b, 1, 4, &[]);
        assert_eq!(b.accepted(1, &all).len(), 2);
    }

    #[test]
    fn a_lagging_node_finds_the_newest_round_a_quorum_backs() {
        let mut b = Book::default();
        announce(&mut b, 3, 1, 1);
        announce(&mut b, 3, 2, 1);
        announce(&mut b, 9, 5, 6); // one liar far ahead
        assert_eq!(b.newest_backed(0, 2).map(|(r, s, p)| (r, s, p.len())), Some((3, [1; 32], 2)));
        assert_eq!(b.newest_backed(3, 2), None);
        assert_eq!(b.newest_backed(0, 1).map(|(r, ..)| r), Some(9));
        b.prune(4);
        assert_eq!(b.newest_backed(0, 2), None);
    }
}
