//! Building a dataset directory: generate, deduplicate, verify, split and
//! write shards plus `manifest.json`, deterministically in the seed.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{io_err, DataError, Result};
use crate::record::{prompt_hash, Draft, Record};
use crate::sandbox::Sandbox;
use crate::{algebra, arith, code, word};

/// Version of the generators; part of the manifest so old data is recognisable.
pub const GENERATOR_VERSION: &str = "odin-data/1";

/// Records per JSONL shard.
const SHARD_RECORDS: usize = 100_000;
/// Drafts generated per seeded chunk.
const CHUNK: usize = 2048;

/// Everything that determines a build.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildOptions {
    /// Master seed; each split derives its own seed from it.
    pub seed: u64,
    /// Training records wanted (before families that cannot run are skipped).
    pub train: usize,
    /// Test records wanted.
    pub test: usize,
    /// Held-out-family records wanted.
    pub heldout: usize,
    /// Long-arithmetic records wanted.
    pub long: usize,
    /// Longest operand in train and test, in digits.
    pub train_max_len: usize,
    /// Operand lengths of the `long` split.
    pub long_min_len: usize,
    /// Longest operand of the `long` split.
    pub long_max_len: usize,
    /// Write numbers least significant digit first.
    pub reversed: bool,
    /// Write half of the output-prediction records with an execution trace before the value.
    #[serde(default)]
    pub trace: bool,
    /// Fail when more than this fraction of a task's drafts were exact duplicates.
    pub max_duplicate_rate: f64,
}

impl BuildOptions {
    /// Options of a named preset: `tiny` (tests, seconds) or `default` (≥1M training records).
    pub fn preset(name: &str, seed: u64) -> Result<Self> {
        let (train, test, heldout, long) = match name {
            "tiny" => (2_000, 400, 200, 200),
            "default" => (1_000_000, 20_000, 5_000, 5_000),
            other => return Err(DataError::BadOptions(format!("unknown preset `{other}`; use tiny or default"))),
        };
        Ok(Self {
            seed,
            train,
            test,
            heldout,
            long,
            train_max_len: 10,
            long_min_len: 11,
            long_max_len: 15,
            reversed: false,
            trace: false,
            max_duplicate_rate: 0.25,
        })
    }

    fn validate(&self) -> Result<()> {
        if self.train_max_len == 0 || self.train_max_len > 20 || self.long_max_len > 40 {
            return Err(DataError::BadOptions("operand lengths must be within 1..=20 (long split up to 40)".into()));
        }
        if self.long_min_len <= self.train_max_len || self.long_min_len > self.long_max_len {
            return Err(DataError::BadOptions(format!(
                "the long split ({}..={}) must be longer than training ({}..={})",
                self.long_min_len, self.long_max_len, 1, self.train_max_len
            )));
        }
        if !(0.0..=1.0).contains(&self.max_duplicate_rate) {
            return Err(DataError::BadOptions(format!(
                "max_duplicate_rate must be a fraction within 0..=1, got {}",
                self.max_duplicate_rate
            )));
        }
        Ok(())
    }
}

/// Share of each task in train/test, in per-mille.
const MIX: [(&str, u32); 11] = [
    ("add", 200),
    ("sub", 100),
    ("mul", 100),
    ("div", 80),
    ("chain", 70),
    ("linear", 90),
    ("system2", 40),
    ("quadratic", 40),
    ("word", 130),
    ("code_output", 100),
    ("code_write", 50),
];

/// Per-task counts of one split.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TaskCounts {
    /// Records written, by difficulty.
    pub by_difficulty: BTreeMap<u8, usize>,
    /// Drafts that passed the verifier.
    pub verified: usize,
    /// Drafts the verifier rejected.
    pub rejected: usize,
    /// Drafts dropped as exact duplicates (within the split, or of a training split for other splits).
    pub duplicates: usize,
    /// Code drafts dropped because execution failed or timed out.
    pub failed_execution: usize,
}

/// One written shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// File name inside the dataset directory.
    pub file: String,
    /// Records in the shard.
    pub records: usize,
    /// blake3 of the file's bytes.
    pub blake3: String,
}

/// Summary of one split.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SplitInfo {
    /// Records written.
    pub records: usize,
    /// Per-task counts.
    pub tasks: BTreeMap<String, TaskCounts>,
    /// Shards in order.
    pub shards: Vec<ShardInfo>,
}

/// `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// Generator version.
    pub generator_version: String,
    /// Options the dataset was built with.
    pub options: BuildOptions,
    /// Whether CPython ran the code family.
    pub python: bool,
    /// Splits by name.
    pub splits: BTreeMap<String, SplitInfo>,
    /// Test-side records that matched a training prompt and were dropped before writing.
    pub overlap_dropped: usize,
    /// Other datasets whose training prompts were kept out of this build's evaluation splits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded: Vec<Excluded>,
    /// Statistics computed at build time.
    pub stats: serde_json::Value,
}

/// Another dataset's training split, identified by its shards, that a build kept out of its
/// evaluation splits: a fresh test set for a model trained on that dataset.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Excluded {
    /// Master seed of the excluded dataset.
    pub seed: u64,
    /// Its training shards (file name, records, blake3), which pin exactly what was excluded.
    pub train_shards: Vec<ShardInfo>,
    /// Distinct normalised prompts in its training split.
    pub prompts: usize,
    /// Records of this build's evaluation splits dropped because their prompt is among them.
    pub dropped: usize,
}

fn chunk_rng(seed: u64, split: &str, task: &str, chunk: usize) -> ChaCha8Rng {
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.update(split.as_bytes());
    h.update(&[0]);
    h.update(task.as_bytes());
    h.update(&(chunk as u64).to_le_bytes());
    let mut s = [0u8; 32];
    s.copy_from_slice(h.finalize().as_bytes());
    ChaCha8Rng::from_seed(s)
}

/// What one split draws from.
struct SplitPlan {
    name: &'static str,
    seed: u64,
    arith_lens: (usize, usize),
    word_templates: &'static [&'static str],
    code_kinds: &'static [&'static str],
    tasks: Vec<(&'static str, usize)>,
}

fn draft_chunk(plan: &SplitPlan, task: &'static str, chunk: usize, o: &BuildOptions) -> Vec<Draft> {
    let mut rng = chunk_rng(plan.seed, plan.name, task, chunk);
    let ao = arith::ArithOptions { min_len: plan.arith_lens.0, max_len: plan.arith_lens.1, reversed: o.reversed };
    (0..CHUNK)
        .map(|i| match task {
            t if arith::TASKS.contains(&t) => arith::generate(t, &mut rng, &ao),
            t if algebra::TASKS.contains(&t) => algebra::generate(t, &mut rng),
            _ => {
                let t = plan.word_templates[(chunk * CHUNK + i) % plan.word_templates.len()];
                word::generate(t, &mut rng)
            }
        })
        .collect()
}

fn verify_draft(d: &Draft) -> bool {
    match d.family {
        "arithmetic" => arith::verify(&d.prompt, &d.completion, &d.answer).is_ok(),
        "algebra" => algebra::verify(d.task, &d.prompt, &d.completion, &d.answer).is_ok(),
        "word" => word::verify(&d.prompt, &d.completion, &d.answer).is_ok(),
        _ => false,
    }
}

/// Progress callback: (split, task, records done, records wanted).
pub type Progress<'a> = &'a (dyn Fn(&str, &str, usize, usize) + Sync);

/// Build a dataset into `out`. `progress` is called as tasks advance.
pub fn build(o: &BuildOptions, out: &Path, progress: Progress<'_>) -> Result<Manifest> {
    build_excluding(o, out, &[], progress)
}

/// Build a dataset into `out` whose test, held-out-family and long splits share no prompt with
/// the training split of any dataset in `exclude` (as well as with its own).
///
/// Why: a build keeps its evaluation splits apart from its own training split only, so a model
/// trained on another seed's data may have seen some of a fresh build's test prompts.
pub fn build_excluding(o: &BuildOptions, out: &Path, exclude: &[PathBuf], progress: Progress<'_>) -> Result<Manifest> {
    o.validate()?;
    let mut excluded = Vec::new();
    let mut excluded_hashes: Vec<HashSet<u128>> = Vec::new();
    for dir in exclude {
        let m = read_manifest(dir).map_err(|e| {
            DataError::BadOptions(format!(
                "cannot exclude {}: not a dataset that `odin data build` wrote ({e})",
                dir.display()
            ))
        })?;
        let hashes: HashSet<u128> = read_split(dir, &m, "train")?.iter().map(|r| prompt_hash(&r.prompt)).collect();
        let train_shards = m.splits.get("train").map(|s| s.shards.clone()).unwrap_or_default();
        excluded.push(Excluded { seed: m.options.seed, train_shards, prompts: hashes.len(), dropped: 0 });
        excluded_hashes.push(hashes);
    }
    let sandbox = Sandbox::detect();
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    let split_seed = |name: &str| {
        let h = blake3::hash(format!("{}:{name}", o.seed).as_bytes());
        u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap_or([0; 8]))
    };
    let scaled = |n: usize| -> Vec<(&'static str, usize)> {
        MIX.iter().map(|&(t, pm)| (t, (n * pm as usize).div_ceil(1000))).collect()
    };
    let plan = |name: &'static str, arith_lens, word_templates, code_kinds, tasks| SplitPlan {
        name,
        seed: split_seed(name),
        arith_lens,
        word_templates,
        code_kinds,
        tasks,
    };
    let (short, long) = ((1, o.train_max_len), (o.long_min_len, o.long_max_len));
    let (tw, tk): (&'static [&'static str], &'static [&'static str]) = (&word::TRAIN_TEMPLATES, &code::TRAIN_KINDS);
    let plans = vec![
        plan("train", short, tw, tk, scaled(o.train)),
        plan("test", short, tw, tk, scaled(o.test)),
        plan(
            "heldout-family",
            short,
            &word::HELDOUT_TEMPLATES,
            &code::HELDOUT_KINDS,
            vec![("word", o.heldout.div_ceil(3) * 2), ("code_output", o.heldout / 6), ("code_write", o.heldout / 6)],
        ),
        plan(
            "long",
            long,
            tw,
            tk,
            vec![("add", o.long * 2 / 5), ("sub", o.long / 5), ("mul", o.long / 5), ("div", o.long / 5)],
        ),
    ];
    let mut train_hashes: HashSet<u128> = HashSet::new();
    let mut splits = BTreeMap::new();
    let mut overlap_dropped = 0;
    for plan in &plans {
        let mut seen: HashSet<u128> = HashSet::new();
        let mut records: Vec<Record> = Vec::new();
        let mut info = SplitInfo::default();
        for &(task, want) in &plan.tasks {
            let mut counts = TaskCounts::default();
            let mut kept = 0;
            let mut chunk = 0;
            let mut attempts = 0usize;
            if task.starts_with("code") && sandbox.is_none() {
                progress(plan.name, task, 0, 0);
                continue;
            }
            while kept < want {
                // Draft a few chunks in parallel; consume them in order so the result is thread-independent.
                let batch: Vec<usize> = (chunk..chunk + 4).collect();
                chunk += 4;
                let drafts: Vec<Draft> = if task.starts_with("code") {
                    let specs: Vec<code::Spec> = batch
                        .iter()
                        .flat_map(|&c| {
                            let mut rng = chunk_rng(plan.seed, plan.name, task, c);
                            (0..CHUNK / 4)
                                .map(|i| code::spec(plan.code_kinds[(c * CHUNK + i) % plan.code_kinds.len()], &mut rng))
                                .collect::<Vec<_>>()
                        })
                        .collect();
                    let sb = sandbox.as_ref().ok_or_else(|| DataError::Sandbox("python3 missing".into()))?;
                    let (d, failed) = code::realize(specs, task == "code_write", o.trace, sb)?;
                    counts.failed_execution += failed;
                    d
                } else {
                    batch.par_iter().flat_map(|&c| draft_chunk(plan, task, c, o)).collect()
                };
                // Verify in parallel (code: one more sandbox run, independent of generation).
                let ok: Vec<bool> = if task.starts_with("code") {
                    verify_code(&drafts, sandbox.as_ref())?
                } else {
                    drafts.par_iter().map(verify_draft).collect()
                };
                for (d, good) in drafts.into_iter().zip(ok) {
                    if kept >= want {
                        break;
                    }
                    attempts += 1;
                    let h = prompt_hash(&d.prompt);
                    // An evaluation split drops what any training split holds: its own, then each excluded one.
                    if plan.name != "train" {
                        let dropped = if train_hashes.contains(&h) {
                            Some(&mut overlap_dropped)
                        } else {
                            excluded_hashes
                                .iter()
                                .zip(&mut excluded)
                                .find(|(e, _)| e.contains(&h))
                                .map(|(_, x)| &mut x.dropped)
                        };
                        if let Some(n) = dropped {
                            *n += 1;
                            counts.duplicates += 1;
                            continue;
                        }
                    }
                    if !seen.insert(h) {
                        counts.duplicates += 1;
                        continue;
                    }
                    if !good {
                        counts.rejected += 1;
                        continue;
                    }
                    counts.verified += 1;
                    *counts.by_difficulty.entry(d.difficulty).or_default() += 1;
                    records.push(d.into_record(plan.name));
                    kept += 1;
                }
                progress(plan.name, task, kept, want);
                if attempts > 50 * want.max(100) {
                    return Err(DataError::Collapse(format!(
                        "{}/{task}: only {kept} of {want} distinct verified records after {attempts} drafts",
                        plan.name
                    )));
                }
            }
            let rate = counts.duplicates as f64 / attempts.max(1) as f64;
            if plan.name == "train" && rate > o.max_duplicate_rate {
                return Err(DataError::Collapse(format!(
                    "{task}: {:.1}% of drafts were exact duplicates (limit {:.1}%); widen the generator or lower the count",
                    100.0 * rate,
                    100.0 * o.max_duplicate_rate
                )));
            }
            info.tasks.insert(task.to_string(), counts);
        }
        if plan.name == "train" {
            train_hashes = seen;
        }
        let mut rng = chunk_rng(plan.seed, plan.name, "shuffle", 0);
        records.shuffle(&mut rng);
        info.records = records.len();
        info.shards = write_shards(out, plan.name, &records)?;
        splits.insert(plan.name.to_string(), info);
    }
    let mut manifest = Manifest {
        generator_version: GENERATOR_VERSION.into(),
        options: o.clone(),
        python: sandbox.is_some(),
        splits,
        overlap_dropped,
        excluded,
        stats: serde_json::Value::Null,
    };
    let stats = crate::stats::compute(out, &manifest)?;
    if stats.train_test_overlap != 0 {
        return Err(DataError::Overlap(stats.train_test_overlap));
    }
    manifest.stats = serde_json::to_value(&stats).unwrap_or_default();
    let path = out.join("manifest.json");
    let text = serde_json::to_string_pretty(&manifest).unwrap_or_default() + "\n";
    std::fs::write(&path, text).map_err(io_err(&path))?;
    Ok(manifest)
}

fn verify_code(drafts: &[Draft], sandbox: Option<&Sandbox>) -> Result<Vec<bool>> {
    let Some(sb) = sandbox else { return Ok(vec![false; drafts.len()]) };
    let jobs: Vec<_> = drafts
        .iter()
        .enumerate()
        .filter_map(|(i, d)| code::verification_job(i, d.task, &d.prompt, &d.completion, &d.tests))
        .collect();
    let results = sb.run(&jobs)?;
    let mut ok = vec![false; drafts.len()];
    for (job, r) in jobs.iter().zip(results) {
        let d = &drafts[job.id];
        ok[job.id] = code::judge(d.task, &d.answer, &d.completion, d.tests.len(), &r);
    }
    Ok(ok)
}

fn write_shards(out: &Path, split: &str, records: &[Record]) -> Result<Vec<ShardInfo>> {
    let mut shards = Vec::new();
    for (i, chunk) in records.chunks(SHARD_RECORDS).enumerate() {
        let file = format!("{split}-{i:05}.jsonl");
        let mut text = String::with_capacity(chunk.len() * 128);
        for r in chunk {
            text.push_str(&serde_json::to_string(r).unwrap_or_default());
            text.push('\n');
        }
        let path = out.join(&file);
        std::fs::write(&path, &text).map_err(io_err(&path))?;
        shards.push(ShardInfo {
            file,
            records: chunk.len(),
            blake3: blake3::hash(text.as_bytes()).to_hex().to_string(),
        });
    }
    Ok(shards)
}

/// Read `manifest.json` from a dataset directory.
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    serde_json::from_str(&text).map_err(|e| DataError::Json { path, line: 0, reason: e.to_string() })
}

/// Read every record of `split`, checking each shard's hash against the manifest.
pub fn read_split(dir: &Path, manifest: &Manifest, split: &str) -> Result<Vec<Record>> {
    let Some(info) = manifest.splits.get(split) else {
        let known: Vec<&String> = manifest.splits.keys().collect();
        return Err(DataError::BadOptions(format!("no split `{split}` in this dataset; it has {known:?}")));
    };
    let mut out = Vec::with_capacity(info.records);
    for s in &info.shards {
        let path: PathBuf = dir.join(&s.file);
        let bytes = std::fs::read(&path).map_err(io_err(&path))?;
        if blake3::hash(&bytes).to_hex().as_str() != s.blake3 {
            return Err(DataError::ShardHash(s.file.clone()));
        }
        let text = String::from_utf8_lossy(&bytes);
        for (i, line) in text.lines().enumerate() {
            let r: Record = serde_json::from_str(line).map_err(|e| DataError::Json {
                path: path.clone(),
                line: i + 1,
                reason: e.to_string(),
            })?;
            out.push(r);
        }
    }
    Ok(out)
}
