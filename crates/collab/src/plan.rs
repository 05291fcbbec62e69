//! Which stages a pipeline-training chain runs through: pure and deterministic, so the
//! driver's choice can be tested as a spec.
//!
//! A stage holds optimizer state for exactly its own blocks, so two stages can only stand in
//! for each other when they hold the *same* range and have taken the same steps. The chain is
//! therefore a partition of the model's blocks into ranges, each served by a group of
//! replicas that the driver keeps in lockstep (every replica gets every request); a replica
//! that fails is dropped and its group goes on with the others.

use std::collections::BTreeMap;
use std::ops::Range;

use odin_net::PeerId;

/// One link of the chain: a block range and the replicas holding it, in peer-id order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The blocks.
    pub range: Range<usize>,
    /// The stages holding them.
    pub replicas: Vec<PeerId>,
}

/// Every stage announced, grouped by range (replicas in peer-id order).
fn by_range(stages: &BTreeMap<PeerId, Range<usize>>) -> BTreeMap<(usize, usize), Vec<PeerId>> {
    let mut out: BTreeMap<(usize, usize), Vec<PeerId>> = BTreeMap::new();
    for (p, r) in stages {
        out.entry((r.start, r.end)).or_default().push(*p);
    }
    out
}

/// The chain over blocks `0..layers` whose every group has at least `min_replicas` stages, if
/// the announced stages make one. From each block the range with the most replicas is tried
/// first (more replicas: more kills survived), then the longer one (fewer hops), then the
/// shorter end; the first partition found wins, so the same stages always give the same chain.
pub fn plan(stages: &BTreeMap<PeerId, Range<usize>>, layers: usize, min_replicas: usize) -> Option<Vec<Group>> {
    let groups = by_range(stages);
    let mut chain = Vec::new();
    cover(&groups, 0, layers, min_replicas.max(1), &mut chain).then_some(chain)
}

fn cover(
    groups: &BTreeMap<(usize, usize), Vec<PeerId>>,
    at: usize,
    layers: usize,
    min_replicas: usize,
    chain: &mut Vec<Group>,
) -> bool {
    if at == layers {
        return true;
    }
    let mut next: Vec<(&(usize, usize), &Vec<PeerId>)> =
        groups.iter().filter(|((s, e), ps)| *s == at && *e <= layers && ps.len() >= min_replicas).collect();
    next.sort_by_key(|((s, e), ps)| (std::cmp::Reverse(ps.len()), std::cmp::Reverse(e - s), *e));
    for ((s, e), ps) in next {
        chain.push(Group { range: *s..*e, replicas: ps.clone() });
        if cover(groups, *e, layers, min_replicas, chain) {
            return true;
        }
        chain.pop();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(n: usize) -> Vec<PeerId> {
        let mut v: Vec<PeerId> = (0..n).map(|_| PeerId::random()).collect();
        v.sort();
        v
    }

    fn stages(list: &[(PeerId, Range<usize>)]) -> BTreeMap<PeerId, Range<usize>> {
        list.iter().cloned().collect()
    }

    #[test]
    fn a_chain_covers_every_block_once_in_order() {
        let p = peers(3);
        let s = stages(&[(p[2], 3..4), (p[0], 0..2), (p[1], 2..3)]);
        let c = plan(&s, 4, 1).unwrap();
        let ranges: Vec<_> = c.iter().map(|g| g.range.clone()).collect();
        assert_eq!(ranges, vec![0..2, 2..3, 3..4]);
        assert_eq!(c[0].replicas, vec![p[0]]);
    }

    #[test]
    fn stages_holding_the_same_blocks_are_replicas_of_one_group() {
        let p = peers(4);
        let s = stages(&[(p[0], 0..1), (p[1], 1..2), (p[3], 1..2), (p[2], 0..1)]);
        let c = plan(&s, 2, 2).unwrap();
        assert_eq!(
            c,
            vec![Group { range: 0..1, replicas: vec![p[0], p[2]] }, Group { range: 1..2, replicas: vec![p[1], p[3]] }]
        );
    }

    #[test]
    fn no_chain_while_a_block_is_missing_or_a_group_is_short_of_replicas() {
        let p = peers(3);
        assert_eq!(plan(&stages(&[(p[0], 0..1), (p[1], 2..3)]), 3, 1), None);
        let s = stages(&[(p[0], 0..1), (p[1], 1..2), (p[2], 1..2)]);
        assert_eq!(plan(&s, 2, 2), None, "block 0 has one replica, two were asked for");
        assert!(plan(&s, 2, 1).is_some());
    }

    #[test]
    fn overlapping_ranges_are_never_chained_and_a_dead_end_backtracks() {
        let p = peers(4);
        // 0..2 has the most replicas but leads nowhere (nothing starts at 2): 0..1, 1..3 does.
        let s = stages(&[(p[0], 0..2), (p[1], 0..2), (p[2], 0..1), (p[3], 1..3)]);
        let ranges: Vec<_> = plan(&s, 3, 1).unwrap().into_iter().map(|g| g.range).collect();
        assert_eq!(ranges, vec![0..1, 1..3]);
    }

    #[test]
    fn more_replicas_win_then_fewer_hops() {
        let p = peers(5);
        let s = stages(&[(p[0], 0..2), (p[1], 0..1), (p[2], 1..2), (p[3], 0..1), (p[4], 1..2)]);
        let c = plan(&s, 2, 1).unwrap();
        assert_eq!(c.len(), 2, "two replicas per group beat one stage holding both blocks");
        let s = stages(&[(p[0], 0..2), (p[1], 0..1), (p[2], 1..2)]);
        assert_eq!(plan(&s, 2, 1).unwrap().len(), 1, "with equal replicas, one hop beats two");
    }

    #[test]
    fn a_stage_past_the_model_is_not_used() {
        let p = peers(2);
        assert_eq!(plan(&stages(&[(p[0], 0..1), (p[1], 1..3)]), 2, 1), None);
    }
}
