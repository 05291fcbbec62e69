//! Collapse guards: task mix, length and carry coverage, n-gram diversity,
//! compressibility, MinHash near-duplicates and train/test overlap.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::build::{read_split, Manifest};
use crate::error::Result;
use crate::record::{normalize_prompt, prompt_hash, Record};

/// Records sampled (evenly) for the costlier diversity measures.
const SAMPLE: usize = 20_000;

/// Everything `odin data stats` reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stats {
    /// Records per split.
    pub records: BTreeMap<String, usize>,
    /// Records per task in train.
    pub task_mix: BTreeMap<String, usize>,
    /// Records per family in train.
    pub families: BTreeMap<String, usize>,
    /// Train arithmetic operands by length in digits (every operand counted).
    pub operand_lengths: BTreeMap<usize, usize>,
    /// Train additions by longest carry chain.
    pub carry_chains: BTreeMap<usize, usize>,
    /// Distinct-n (distinct n-grams / all n-grams) of whitespace tokens, n = 1, 2, 3, on a train sample.
    pub distinct_n: [f64; 3],
    /// Deflate-compressed size / raw size of a train sample (lower = more repetitive).
    pub compression_ratio: f64,
    /// Fraction of sampled train prompts with a MinHash near-duplicate (Jaccard ≥ 0.8) that is not an exact duplicate.
    pub near_duplicate_rate: f64,
    /// Exact duplicate prompts within train.
    pub train_exact_duplicates: usize,
    /// Records of test, heldout-family and long whose normalised prompt occurs in train (must be 0).
    pub train_test_overlap: usize,
    /// How many train records the sampled measures used.
    pub sample_size: usize,
}

fn sample(records: &[Record]) -> Vec<&Record> {
    let step = records.len().div_ceil(SAMPLE).max(1);
    records.iter().step_by(step).collect()
}

/// Compute the statistics of a built dataset.
pub fn compute(dir: &Path, manifest: &Manifest) -> Result<Stats> {
    let train = read_split(dir, manifest, "train")?;
    let mut records = BTreeMap::new();
    let mut hashes: HashSet<u128> = HashSet::with_capacity(train.len());
    let mut exact = 0;
    for r in &train {
        if !hashes.insert(prompt_hash(&r.prompt)) {
            exact += 1;
        }
    }
    let mut overlap = 0;
    for name in manifest.splits.keys() {
        if name == "train" {
            records.insert(name.clone(), train.len());
            continue;
        }
        let rs = read_split(dir, manifest, name)?;
        overlap += rs.iter().filter(|r| hashes.contains(&prompt_hash(&r.prompt))).count();
        records.insert(name.clone(), rs.len());
    }
    let (mut task_mix, mut families) = (BTreeMap::new(), BTreeMap::new());
    let (mut lens, mut carries) = (BTreeMap::new(), BTreeMap::new());
    for r in &train {
        *task_mix.entry(r.task.clone()).or_default() += 1;
        *families.entry(r.family.clone()).or_default() += 1;
        if let Some(l) = r.meta.get("lens").and_then(|v| v.as_array()) {
            for n in l.iter().filter_map(|x| x.as_u64()) {
                *lens.entry(n as usize).or_default() += 1;
            }
        }
        if let Some(c) = r.meta.get("carry_chain").and_then(|v| v.as_u64()) {
            *carries.entry(c as usize).or_default() += 1;
        }
    }
    let s = sample(&train);
    Ok(Stats {
        records,
        task_mix,
        families,
        operand_lengths: lens,
        carry_chains: carries,
        distinct_n: distinct_n(&s),
        compression_ratio: compression_ratio(&s),
        near_duplicate_rate: near_duplicate_rate(&s),
        train_exact_duplicates: exact,
        train_test_overlap: overlap,
        sample_size: s.len(),
    })
}

fn distinct_n(rs: &[&Record]) -> [f64; 3] {
    let mut out = [0.0; 3];
    for (k, slot) in out.iter_mut().enumerate() {
        let n = k + 1;
        let mut all = 0usize;
        let mut set: HashSet<u64> = HashSet::new();
        for r in rs {
            let toks: Vec<&str> = r.prompt.split_whitespace().chain(r.completion.split_whitespace()).collect();
            for w in toks.windows(n) {
                all += 1;
                let mut h = blake3::Hasher::new();
                for t in w {
                    h.update(t.as_bytes());
                    h.update(&[0]);
                }
                set.insert(u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().unwrap_or([0; 8])));
            }
        }
        *slot = if all == 0 { 0.0 } else { set.len() as f64 / all as f64 };
    }
    out
}

fn compression_ratio(rs: &[&Record]) -> f64 {
    let mut raw = Vec::new();
    for r in rs {
        raw.extend_from_slice(r.prompt.as_bytes());
        raw.push(b'\n');
        raw.extend_from_slice(r.completion.as_bytes());
        raw.push(b'\n');
    }
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    if enc.write_all(&raw).is_err() {
        return 0.0;
    }
    match enc.finish() {
        Ok(c) if !raw.is_empty() => c.len() as f64 / raw.len() as f64,
        _ => 0.0,
    }
}

const HASHES: usize = 32;
const BANDS: usize = 8;

/// MinHash signature over character 5-gram shingles of the normalised prompt.
pub fn minhash(text: &str) -> [u64; HASHES] {
    let chars: Vec<char> = normalize_prompt(text).chars().collect();
    let mut sig = [u64::MAX; HASHES];
    let shingles: Vec<String> = if chars.len() < 5 {
        vec![chars.iter().collect()]
    } else {
        chars.windows(5).map(|w| w.iter().collect()).collect()
    };
    for sh in shingles {
        let base = blake3::hash(sh.as_bytes());
        let b = base.as_bytes();
        let (h1, h2) = (
            u64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8])),
            u64::from_le_bytes(b[8..16].try_into().unwrap_or([0; 8])) | 1,
        );
        for (i, s) in sig.iter_mut().enumerate() {
            *s = (*s).min(h1.wrapping_add((i as u64).wrapping_mul(h2)));
        }
    }
    sig
}

fn near_duplicate_rate(rs: &[&Record]) -> f64 {
    let sigs: Vec<([u64; HASHES], String)> =
        rs.iter().map(|r| (minhash(&r.prompt), normalize_prompt(&r.prompt))).collect();
    let rows = HASHES / BANDS;
    let mut flagged = vec![false; sigs.len()];
    for band in 0..BANDS {
        let mut buckets: HashMap<&[u64], Vec<usize>> = HashMap::new();
        for (i, (s, _)) in sigs.iter().enumerate() {
            buckets.entry(&s[band * rows..(band + 1) * rows]).or_default().push(i);
        }
        for members in buckets.values().filter(|m| m.len() > 1) {
            for (a, &i) in members.iter().enumerate() {
                for &j in members.iter().skip(a + 1).take(32) {
                    if sigs[i].1 == sigs[j].1 {
                        continue;
                    }
                    let same = sigs[i].0.iter().zip(&sigs[j].0).filter(|(x, y)| x == y).count();
                    if same as f64 / HASHES as f64 >= 0.8 {
                        flagged[i] = true;
                        flagged[j] = true;
                    }
                }
            }
        }
    }
    if sigs.is_empty() {
        0.0
    } else {
        flagged.iter().filter(|f| **f).count() as f64 / sigs.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minhash_estimates_similarity() {
        let a = minhash("Ava has 3 boxes with 12 apples in each box and gives away 5 apples.");
        let b = minhash("Ava has 3 boxes with 12 apples in each box and gives away 6 apples.");
        let c = minhash("Solve for x: 3x + 5 = x - 7");
        let sim = |x: &[u64; HASHES], y: &[u64; HASHES]| x.iter().zip(y).filter(|(p, q)| p == q).count();
        assert!(sim(&a, &b) > HASHES / 2, "{}", sim(&a, &b));
        assert!(sim(&a, &c) < HASHES / 8);
    }
}
