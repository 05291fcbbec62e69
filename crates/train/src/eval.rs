//! Held-out evaluation: greedy decoding through the recurrent form, exact-match
//! scoring (code-writing judged by running the hidden tests in the data layer's
//! sandbox), and accuracy per task, difficulty and family with 95% Wilson intervals.

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::{Device, IndexOp, Tensor, D};
use odin_data::code;
use odin_data::sandbox::Sandbox;
use odin_data::{extract_answer, Record};
use odin_model::{Shard, ShardState};
use odin_text::{decode, prompt_ids, special, Tokenizer};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// What to evaluate and how.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// At most this many records per task (a seeded sample); `None`: all.
    pub per_task: Option<usize>,
    /// Only these tasks; empty: all.
    pub tasks: Vec<String>,
    /// Sequences decoded together.
    pub batch: usize,
    /// Seed of the per-task sample.
    pub seed: u64,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self { per_task: None, tasks: Vec::new(), batch: 32, seed: 0 }
    }
}

/// Accuracy of one group of records.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Cell {
    /// Records scored.
    pub n: usize,
    /// Records answered exactly.
    pub correct: usize,
    /// correct / n.
    pub accuracy: f64,
    /// 95% Wilson score interval, low end.
    pub ci_low: f64,
    /// 95% Wilson score interval, high end.
    pub ci_high: f64,
}

impl Cell {
    fn add(&mut self, ok: bool) {
        self.n += 1;
        self.correct += usize::from(ok);
        self.accuracy = self.correct as f64 / self.n as f64;
        (self.ci_low, self.ci_high) = wilson(self.correct, self.n);
    }
}

/// 95% Wilson score interval for `k` successes in `n` trials.
pub fn wilson(k: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let z = 1.959_963_984_540_054_f64;
    let (n, p) = (n as f64, k as f64 / n as f64);
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z * ((p * (1.0 - p) + z * z / (4.0 * n)) / n).sqrt() / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// One scored record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    /// Record id.
    pub id: String,
    /// Task.
    pub task: String,
    /// Difficulty level.
    pub difficulty: u8,
    /// What the model wrote after `<|answer|>`.
    pub output: String,
    /// Whether it counts as correct.
    pub correct: bool,
}

/// `odin eval`'s result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    /// Split evaluated.
    pub split: String,
    /// Sample seed.
    pub seed: u64,
    /// All records together.
    pub overall: Cell,
    /// Per family.
    pub by_family: BTreeMap<String, Cell>,
    /// Per task.
    pub by_task: BTreeMap<String, Cell>,
    /// Per task and difficulty.
    pub by_task_difficulty: BTreeMap<String, BTreeMap<u8, Cell>>,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Every scored record (not serialized: summaries stay small; `odin eval --outcomes` writes them).
    #[serde(skip)]
    pub outcomes: Vec<Outcome>,
}

/// The sandbox's verdict on one code-writing output: per hidden test, the `repr` of its result
/// (`None` where the call raised), or `None` as a whole when the program failed (syntax, timeout).
pub type Judged = Option<Vec<Option<String>>>;

/// Whether `output` (the text after `<|answer|>`) answers `r`. Code-writing
/// needs `judged`: the result of running `output` against the hidden tests.
pub fn is_correct(r: &Record, output: &str, judged: Option<&Judged>) -> bool {
    if r.task == "code_write" {
        return judged.is_some_and(|j| code::judge("code_write", &r.answer, output, r.tests.len(), j));
    }
    extract_answer(output) == r.answer
}

/// Run the hidden tests of code-writing records on the model's outputs.
/// Returns, per record, `Some(result)` for code-writing records and `None` otherwise.
pub fn judge_code(records: &[&Record], outputs: &[String], sandbox: Option<&Sandbox>) -> Result<Vec<Option<Judged>>> {
    let mut out = vec![None; records.len()];
    let jobs: Vec<_> = records
        .iter()
        .zip(outputs)
        .enumerate()
        .filter(|(_, (r, _))| r.task == "code_write")
        .filter_map(|(i, (r, o))| code::verification_job(i, &r.task, &r.prompt, o, &r.tests))
        .collect();
    if jobs.is_empty() {
        return Ok(out);
    }
    let sb = sandbox.ok_or_else(|| {
        TrainError::Data("code-writing records need python3 to run their hidden tests; install python3".into())
    })?;
    for (job, res) in jobs.iter().zip(sb.run(&jobs)?) {
        out[job.id] = Some(res);
    }
    Ok(out)
}

/// A model that can continue prompts greedily: the f32 model layer (decoded in
/// batches) or the int8 engine (each prompt alone, in parallel).
pub trait Greedy {
    /// Continue each prompt (all of one length) until `<|eos|>` or `max_new`
    /// tokens; return the generated ids without the `<|eos|>`.
    fn greedy(&self, prompts: &[Vec<u32>], max_new: usize) -> Result<Vec<Vec<u32>>>;
}

impl Greedy for Shard {
    fn greedy(&self, prompts: &[Vec<u32>], max_new: usize) -> Result<Vec<Vec<u32>>> {
        greedy_batch(self, prompts, max_new, &Device::Cpu)
    }
}

impl Greedy for odin_engine::Model {
    fn greedy(&self, prompts: &[Vec<u32>], max_new: usize) -> Result<Vec<Vec<u32>>> {
        Ok(odin_engine::greedy_many(self, prompts, max_new, special::EOS)?)
    }
}

/// Greedy continuation of each prompt (already tokenised, all the same length) until
/// `<|eos|>` or `max_new` tokens. Returns the generated ids without the `<|eos|>`.
pub fn greedy_batch(shard: &Shard, prompts: &[Vec<u32>], max_new: usize, device: &Device) -> Result<Vec<Vec<u32>>> {
    let b = prompts.len();
    let t = prompts.first().map_or(0, Vec::len);
    if b == 0 || t == 0 || prompts.iter().any(|p| p.len() != t) {
        return Err(TrainError::Data("greedy_batch needs non-empty prompts of one length".into()));
    }
    let flat: Vec<u32> = prompts.iter().flatten().copied().collect();
    let ids = Tensor::from_vec(flat, (b, t), device)?;
    let mut state: ShardState = shard.new_state(b)?;
    let logits = shard.forward(&ids, Some(&mut state))?;
    let mut next = logits.i((.., t - 1, ..))?.argmax(D::Minus1)?;
    let mut out = vec![Vec::new(); b];
    let mut done = vec![false; b];
    for _ in 0..max_new {
        let toks = next.to_vec1::<u32>()?;
        for (i, &tok) in toks.iter().enumerate() {
            if !done[i] {
                if tok == special::EOS {
                    done[i] = true;
                } else {
                    out[i].push(tok);
                }
            }
        }
        if done.iter().all(|&d| d) {
            break;
        }
        next = shard.step(&next, &mut state)?.argmax(D::Minus1)?;
    }
    Ok(out)
}

/// Evaluate `records` (one split) with `model` (a whole model).
pub fn evaluate(
    model: &dyn Greedy,
    tk: &Tokenizer,
    split: &str,
    records: &[Record],
    opts: &EvalOptions,
    sandbox: Option<&Sandbox>,
) -> Result<EvalReport> {
    let started = Instant::now();
    // A seeded sample per task, in id order first so the file order does not matter.
    let mut by_task: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for r in records {
        if opts.tasks.is_empty() || opts.tasks.iter().any(|t| t == &r.task) {
            by_task.entry(&r.task).or_default().push(r);
        }
    }
    let mut chosen: Vec<&Record> = Vec::new();
    for (task, mut rs) in by_task {
        rs.sort_by(|a, b| a.id.cmp(&b.id));
        if let Some(n) = opts.per_task {
            let mut h = blake3::Hasher::new();
            h.update(&opts.seed.to_le_bytes());
            h.update(task.as_bytes());
            rs.shuffle(&mut ChaCha8Rng::from_seed(*h.finalize().as_bytes()));
            rs.truncate(n);
        }
        chosen.extend(rs);
    }
    if chosen.is_empty() {
        return Err(TrainError::Data(format!("split {split} has no records for the requested tasks")));
    }
    // Group by prompt length so a batch decodes in lockstep from one shared prefill.
    let mut groups: BTreeMap<usize, Vec<(usize, Vec<u32>, usize)>> = BTreeMap::new();
    for (i, r) in chosen.iter().enumerate() {
        let ids = prompt_ids(tk, &r.prompt)?;
        let want = tk
            .encode(r.completion.as_str(), false)
            .map_err(|e| TrainError::Data(format!("cannot tokenize a completion: {e}")))?
            .len();
        groups.entry(ids.len()).or_default().push((i, ids, want));
    }
    let mut outputs = vec![String::new(); chosen.len()];
    for (_, members) in groups {
        for part in members.chunks(opts.batch.max(1)) {
            let prompts: Vec<Vec<u32>> = part.iter().map(|m| m.1.clone()).collect();
            // A reference-length bound keeps a rambling model from stalling the run; a correct
            // answer is never longer than twice the reference plus slack.
            let max_new = part.iter().map(|m| 2 * m.2 + 16).max().unwrap_or(16);
            let gen = model.greedy(&prompts, max_new)?;
            for (m, g) in part.iter().zip(gen) {
                outputs[m.0] = decode(tk, &g)?;
            }
        }
    }
    let judged = judge_code(&chosen, &outputs, sandbox)?;
    let mut report = EvalReport {
        split: split.to_string(),
        seed: opts.seed,
        overall: Cell::default(),
        by_family: BTreeMap::new(),
        by_task: BTreeMap::new(),
        by_task_difficulty: BTreeMap::new(),
        seconds: 0.0,
        outcomes: Vec::new(),
    };
    for ((r, out), j) in chosen.iter().zip(outputs).zip(&judged) {
        let ok = is_correct(r, &out, j.as_ref());
        report.overall.add(ok);
        report.by_family.entry(r.family.clone()).or_default().add(ok);
        report.by_task.entry(r.task.clone()).or_default().add(ok);
        report.by_task_difficulty.entry(r.task.clone()).or_default().entry(r.difficulty).or_default().add(ok);
        report.outcomes.push(Outcome {
            id: r.id.clone(),
            task: r.task.clone(),
            difficulty: r.difficulty,
            output: out,
            correct: ok,
        });
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

impl EvalReport {
    /// A markdown table: task, n, accuracy and its 95% interval.
    pub fn markdown(&self) -> String {
        let mut s = format!("Split `{}`, greedy decoding, seed {}.\n\n", self.split, self.seed);
        s.push_str("| task | n | exact match | 95% CI |\n|---|---:|---:|---|\n");
        let row = |name: &str, c: &Cell| {
            format!(
                "| {name} | {} | {:.1}% | {:.1}–{:.1}% |\n",
                c.n,
                100.0 * c.accuracy,
                100.0 * c.ci_low,
                100.0 * c.ci_high
            )
        };
        for (t, c) in &self.by_task {
            s.push_str(&row(t, c));
        }
        for (f, c) in &self.by_family {
            s.push_str(&row(&format!("**{f}**"), c));
        }
        s.push_str(&row("**all**", &self.overall));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(task: &str, prompt: &str, completion: &str, tests: Vec<String>) -> Record {
        Record {
            id: "r".into(),
            task: task.into(),
            family: "x".into(),
            difficulty: 1,
            prompt: prompt.into(),
            completion: completion.into(),
            answer: extract_answer(completion).into(),
            split: "test".into(),
            tests,
            meta: Default::default(),
        }
    }

    #[test]
    fn wilson_interval_is_sane() {
        let (lo, hi) = wilson(50, 100);
        assert!((lo - 0.4038).abs() < 1e-3 && (hi - 0.5962).abs() < 1e-3, "{lo} {hi}");
        let (lo, hi) = wilson(100, 100);
        assert!(hi == 1.0 && lo > 0.96 && lo < 0.97);
        assert_eq!(wilson(0, 0), (0.0, 1.0));
    }

    #[test]
    fn a_known_correct_answer_scores_1_and_a_wrong_one_0() {
        let r = rec("add", "12+30=", "42", vec![]);
        assert!(is_correct(&r, "42", None));
        assert!(is_correct(&r, "2+0+0=2\n1+3+0=4\n42", None));
        assert!(!is_correct(&r, "43", None));
        assert!(!is_correct(&r, "42\n0", None));
        assert!(!is_correct(&r, "", None));
    }

    #[test]
    fn code_writing_is_judged_by_running_hidden_tests() {
        let Some(sb) = Sandbox::detect() else {
            eprintln!("python3 missing: the code-writing scorer cannot be exercised here");
            return;
        };
        let tests: Vec<String> = (0..5).map(|i| format!("assert f({i}) == {}", i * 2 + 1)).collect();
        let r = rec("code_write", "def f(x):\n    \"\"\"Return 2x+1.\"\"\"", "    return 2 * x + 1", tests);
        let outs = vec!["    return x + x + 1".to_string(), "    return 2 * x".to_string(), "    return (".to_string()];
        let recs = vec![&r, &r, &r];
        let judged = judge_code(&recs, &outs, Some(&sb)).unwrap();
        let scores: Vec<bool> = outs.iter().zip(&judged).map(|(o, j)| is_correct(&r, o, j.as_ref())).collect();
        assert_eq!(scores, vec![true, false, false]);
    }
}
