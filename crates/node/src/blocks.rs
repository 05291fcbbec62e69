//! Block ranges as an operator writes them, and an even split of a model's blocks.

/// Parse a block range written `A..B` (end exclusive).
pub fn parse_blocks(s: &str, layers: usize) -> std::result::Result<std::ops::Range<usize>, String> {
    let (a, b) = s.split_once("..").ok_or_else(|| format!("blocks {s:?} should look like 0..4"))?;
    let a: usize = a.trim().parse().map_err(|_| format!("{a:?} in {s:?} is not a block number"))?;
    let b: usize = b.trim().parse().map_err(|_| format!("{b:?} in {s:?} is not a block number"))?;
    if a >= b || b > layers {
        return Err(format!("blocks {a}..{b} are not a non-empty range within the model's 0..{layers}"));
    }
    Ok(a..b)
}

/// Split `layers` blocks into `n` contiguous ranges as evenly as possible (earlier ranges take the remainder).
pub fn split_blocks(layers: usize, n: usize) -> Vec<std::ops::Range<usize>> {
    let n = n.clamp(1, layers.max(1));
    let (q, r) = (layers / n, layers % n);
    let mut start = 0;
    (0..n)
        .map(|i| {
            let len = q + usize::from(i < r);
            let range = start..start + len;
            start += len;
            range
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_ranges_parse_and_split() {
        assert_eq!(parse_blocks("1..3", 4), Ok(1..3));
        assert!(parse_blocks("3..3", 4).is_err());
        assert!(parse_blocks("0..5", 4).is_err());
        assert!(parse_blocks("x..2", 4).is_err());
        assert_eq!(split_blocks(4, 3), vec![0..2, 2..3, 3..4]);
        assert_eq!(split_blocks(4, 9), vec![0..1, 1..2, 2..3, 3..4]);
        assert_eq!(split_blocks(12, 1), vec![0..12]);
    }
}
