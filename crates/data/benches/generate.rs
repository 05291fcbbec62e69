//! Generation throughput per task and family: draft + independent verification,
//! on one thread, median of several runs. Run with
//! `cargo bench -p odin-data --bench generate` and paste the table into BENCHMARKS.md.
//!
//! A plain `main` (no criterion) because each measurement is seconds long and we want
//! records/s, not per-iteration nanoseconds.

use std::time::Instant;

use odin_data::record::Draft;
use odin_data::{algebra, arith, code, sandbox::Sandbox, word};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const RUNS: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Draft and verify `n` records of `task`; returns how many passed.
fn run_math(task: &'static str, n: usize, seed: u64) -> usize {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let ao = arith::ArithOptions { min_len: 1, max_len: 10, reversed: false };
    let mut ok = 0;
    for i in 0..n {
        let d: Draft = if arith::TASKS.contains(&task) {
            arith::generate(task, &mut rng, &ao)
        } else if algebra::TASKS.contains(&task) {
            algebra::generate(task, &mut rng)
        } else {
            word::generate(word::TRAIN_TEMPLATES[i % word::TRAIN_TEMPLATES.len()], &mut rng)
        };
        let good = match d.family {
            "arithmetic" => arith::verify(&d.prompt, &d.completion, &d.answer).is_ok(),
            "algebra" => algebra::verify(d.task, &d.prompt, &d.completion, &d.answer).is_ok(),
            _ => word::verify(&d.prompt, &d.completion, &d.answer).is_ok(),
        };
        ok += usize::from(good);
    }
    ok
}

/// Generate `n` code specs, run them in CPython for their outputs, then verify in a second run.
fn run_code(task: &str, n: usize, seed: u64, sb: &Sandbox) -> usize {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let specs = (0..n).map(|i| code::spec(code::TRAIN_KINDS[i % code::TRAIN_KINDS.len()], &mut rng)).collect();
    let Ok((drafts, _failed)) = code::realize(specs, task == "code_write", false, sb) else { return 0 };
    let jobs: Vec<_> = drafts
        .iter()
        .enumerate()
        .filter_map(|(i, d)| code::verification_job(i, d.task, &d.prompt, &d.completion, &d.tests))
        .collect();
    let Ok(results) = sb.run(&jobs) else { return 0 };
    jobs.iter()
        .zip(&results)
        .filter(|(j, r)| {
            code::judge(drafts[j.id].task, &drafts[j.id].answer, &drafts[j.id].completion, drafts[j.id].tests.len(), r)
        })
        .count()
}

fn main() {
    // The sandbox runs batches on rayon; one thread keeps every figure single-core.
    let _ = rayon::ThreadPoolBuilder::new().num_threads(1).build_global();
    let sandbox = Sandbox::detect();
    let tasks: Vec<(&str, &'static str, usize)> = arith::TASKS
        .iter()
        .map(|t| ("arithmetic", *t, 20_000))
        .chain(algebra::TASKS.iter().map(|t| ("algebra", *t, 20_000)))
        .chain([("word", "word", 20_000), ("code", "code_output", 2_000), ("code", "code_write", 2_000)])
        .collect();
    println!("| family | task | records/s (median of {RUNS}, 1 thread) | verified per run |");
    println!("|---|---|---:|---:|");
    for (family, task, n) in tasks {
        if family == "code" && sandbox.is_none() {
            println!("| {family} | {task} | skipped: python3 missing | |");
            continue;
        }
        let mut rates = Vec::new();
        let mut kept = 0;
        for run in 0..RUNS {
            let t = Instant::now();
            kept = match &sandbox {
                Some(sb) if family == "code" => run_code(task, n, run as u64, sb),
                _ => run_math(task, n, run as u64),
            };
            rates.push(n as f64 / t.elapsed().as_secs_f64());
        }
        println!("| {family} | {task} | {:.0} | {kept}/{n} |", median(rates));
    }
}
