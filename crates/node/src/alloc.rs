//! Which blocks a `--blocks auto` node serves, and when it should move (Petals' rules).
//!
//! Every server adds its throughput (tokens/s through its whole range) to each
//! block it holds. A joining node takes the window of contiguous blocks whose
//! sorted throughputs are lexicographically smallest: the window holding the
//! weakest block, then the next weakest. A serving node moves when taking
//! another window raises the network's weakest block by a clear margin, and
//! only the first such node in peer-id order moves in one round, so two nodes
//! never rush into the same gap and leave a new one behind.

use std::ops::Range;

use odin_format::ModelConfig;
use odin_net::{PeerId, ServerInfo};

/// A move must lift the weakest block's throughput by this factor (Petals uses 1 / 0.75).
const MOVE_GAIN: f64 = 1.0 / 0.75;

/// Tokens per second one server pushes through its range.
pub fn server_throughput(info: &ServerInfo) -> f64 {
    let blocks = info.end.saturating_sub(info.start).max(1) as f64;
    1e3 / (info.ms_per_block.max(1e-3) * blocks)
}

/// Total throughput at each of `layers` blocks from `servers`.
pub fn block_throughputs<'a>(layers: usize, servers: impl IntoIterator<Item = &'a ServerInfo>) -> Vec<f64> {
    let mut t = vec![0.0; layers];
    for s in servers {
        let tp = server_throughput(s);
        let end = (s.end as usize).min(layers);
        t.iter_mut().take(end).skip(s.start as usize).for_each(|b| *b += tp);
    }
    t
}

/// The start of the `num`-block window to serve, given the network's throughputs.
pub fn choose_start(throughputs: &[f64], num: usize) -> usize {
    let num = num.clamp(1, throughputs.len().max(1));
    (0..=throughputs.len().saturating_sub(num))
        .min_by(|&a, &b| {
            let key = |s: usize| {
                let mut w = throughputs[s..s + num].to_vec();
                w.sort_by(f64::total_cmp);
                w
            };
            key(a).iter().zip(key(b).iter()).map(|(x, y)| x.total_cmp(y)).find(|o| o.is_ne()).unwrap_or(a.cmp(&b))
        })
        .unwrap_or(0)
}

/// How many blocks fit: at most `max_blocks`, and only as many as `memory_budget` bytes hold
/// (each block's int8 bytes, plus the embedding or head for the ends, counted generously).
pub fn blocks_that_fit(cfg: &ModelConfig, max_blocks: Option<usize>, memory_budget: Option<u64>) -> usize {
    let layers = cfg.num_layers();
    let counts = cfg.param_counts();
    let per_block = counts.block_bytes_int8.iter().copied().max().unwrap_or(1).max(1) as u64;
    let ends = counts.embedding_bytes.1.max(counts.head_bytes.1) as u64;
    let by_memory = memory_budget.map_or(layers, |m| (m.saturating_sub(ends) / per_block) as usize);
    by_memory.min(max_blocks.unwrap_or(layers)).clamp(1, layers.max(1))
}

/// Half of the memory the system says is available (Linux `/proc/meminfo`), if it says.
pub fn default_memory_budget() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024 / 2)
}

/// Where `me` should move to, if anywhere: `None` to stay.
///
/// `servers` is every live server the directory knows, `me` included. Only servers that
/// allocate themselves (`auto`) are candidates; the first candidate in peer-id order whose
/// move helps is the one that moves this round, and it is `me` only if `me` is that one.
pub fn rebalance(layers: usize, servers: &[(PeerId, ServerInfo)], me: &PeerId) -> Option<Range<usize>> {
    let quality = |t: &[f64]| t.iter().copied().fold(f64::INFINITY, f64::min);
    let now = quality(&block_throughputs(layers, servers.iter().map(|(_, s)| s)));
    let mut candidates: Vec<&(PeerId, ServerInfo)> = servers.iter().filter(|(_, s)| s.auto).collect();
    candidates.sort_by_key(|(p, _)| p.to_bytes());
    for (peer, info) in candidates {
        let others = servers.iter().filter(|(p, _)| p != peer).map(|(_, s)| s);
        let without = block_throughputs(layers, others);
        let num = (info.end - info.start) as usize;
        let start = choose_start(&without, num);
        if start == info.start as usize {
            continue;
        }
        let mut moved = without.clone();
        let tp = server_throughput(info);
        moved.iter_mut().skip(start).take(num).for_each(|b| *b += tp);
        let after = quality(&moved);
        let helps = if now == 0.0 { after > 0.0 } else { after > now * MOVE_GAIN };
        if helps {
            return (peer == me).then_some(start..start + num);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(start: u32, end: u32, auto: bool) -> ServerInfo {
        crate::directory::test_info(start, end, 1.0, auto)
    }

    #[test]
    fn a_joining_node_takes_the_weakest_window() {
        assert_eq!(choose_start(&[0.0; 4], 2), 0, "an empty network: the first window");
        assert_eq!(choose_start(&[5.0, 5.0, 0.0, 0.0], 2), 2);
        assert_eq!(choose_start(&[5.0, 1.0, 1.0, 5.0], 2), 1);
        // The weakest block first, then the next weakest.
        assert_eq!(choose_start(&[3.0, 2.0, 9.0, 1.0, 2.5, 9.0], 2), 3);
        assert_eq!(choose_start(&[1.0, 2.0], 5), 0, "a window wider than the model is the model");
        let t = block_throughputs(4, [&info(0, 2, false), &info(1, 4, false)]);
        assert_eq!(t, vec![500.0, 500.0 + 1e3 / 3.0, 1e3 / 3.0, 1e3 / 3.0]);
    }

    #[test]
    fn one_node_moves_into_a_gap_and_none_leaves_a_new_one() {
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        // a and b both hold 0..2; 2..4 lost its server.
        let servers = vec![(a, info(0, 2, true)), (b, info(0, 2, true))];
        let moves: Vec<_> = [a, b].iter().map(|p| rebalance(4, &servers, p)).collect();
        assert_eq!(moves.iter().filter(|m| m.is_some()).count(), 1, "exactly one moves: {moves:?}");
        assert!(moves.contains(&Some(2..4)));
        // A sole server of its blocks never moves away (that would open a gap).
        let servers = vec![(a, info(0, 2, true)), (c, info(2, 4, true))];
        assert_eq!(rebalance(4, &servers, &a), None);
        assert_eq!(rebalance(4, &servers, &c), None);
        // Servers with fixed blocks are never moved.
        let servers = vec![(a, info(0, 2, false)), (b, info(0, 2, false))];
        assert_eq!(rebalance(4, &servers, &a), None);
        // Lopsided but covered: no gain big enough to move.
        let servers = vec![(a, info(0, 2, true)), (b, info(0, 2, true)), (c, info(2, 4, true))];
        assert!([a, b, c].iter().all(|p| rebalance(4, &servers, p).is_none()));
    }

    #[test]
    fn memory_and_the_cap_bound_the_blocks() {
        let cfg = ModelConfig::from_file(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/odin-tiny/config.json"),
        )
        .unwrap();
        let layers = cfg.num_layers();
        assert_eq!(blocks_that_fit(&cfg, None, None), layers);
        assert_eq!(blocks_that_fit(&cfg, Some(2), None), 2);
        let c = cfg.param_counts();
        let one = c.block_bytes_int8[0] as u64 + c.embedding_bytes.1.max(c.head_bytes.1) as u64;
        assert_eq!(blocks_that_fit(&cfg, None, Some(one)), 1);
        assert_eq!(blocks_that_fit(&cfg, None, Some(0)), 1, "at least one block");
    }
}
