//! The rounds' arithmetic without the network, for tuning a run config: K learners in one
//! process, one after the other, each H inner steps from the round's weights on its own batches,
//! then the same compression (int8, optional top-k, error feedback), robust rule and outer step
//! a member takes. The held-out loss after each round is what a member would report, so a sweep
//! of outer settings costs the training compute only, not the network's waits.
//!
//!   cargo run --release -p odin-collab --example rounds_offline -- CONFIG [K] [key=value ...]
//!
//! Keys override the run config's `[rounds]`: rounds, inner_steps, outer_lr, momentum, topk,
//! rule (mean | centered_clip), heldout (batches, default 16), and inner_lr (the train config's
//! optim.lr). One JSON line per round on stdout.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use odin_collab::learner::Learner;
use odin_collab::RunConfig;
use odin_train::collab::{Compressor, Rule, Sparsity};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let path = PathBuf::from(args.next().context("usage: rounds_offline CONFIG [K] [key=value ...]")?);
    let mut run = RunConfig::load(&path)?;
    let mut train = run.train_config()?;
    let mut members = 4usize;
    let mut heldout = 16usize;
    for a in args {
        if let Ok(k) = a.parse() {
            members = k;
            continue;
        }
        let (k, v) = a.split_once('=').with_context(|| format!("{a}: expected key=value"))?;
        let r = &mut run.rounds;
        match k {
            "rounds" => r.rounds = v.parse()?,
            "inner_steps" => r.inner_steps = v.parse()?,
            "outer_lr" => r.outer.lr = v.parse()?,
            "momentum" => r.outer.momentum = v.parse()?,
            "topk" => r.topk = Some(v.parse()?),
            "rule" => {
                r.aggregator = match v {
                    "mean" => Rule::Mean,
                    "centered_clip" => Rule::default(),
                    _ => bail!("rule: mean or centered_clip"),
                }
            }
            "heldout" => heldout = v.parse()?,
            "inner_lr" => {
                train.optim.lr = v.parse()?;
                train.optim.min_lr = train.optim.lr / 10.0;
            }
            _ => bail!("unknown key {k}"),
        }
    }
    let r = run.rounds.clone();
    train.run.steps = r.rounds * r.inner_steps;
    let sparsity = r.topk.map_or(Sparsity::Dense, Sparsity::TopK);
    let mut learners = Vec::new();
    for m in 0..members {
        learners.push(Learner::new(train.clone(), 1_000 + m as u64)?);
    }
    let mut theta = learners[0].start()?;
    let mut momentum = vec![0.0; theta.len()];
    let mut compressors: Vec<Compressor> = (0..members).map(|_| Compressor::new(theta.len(), sparsity)).collect();
    eprintln!("{members} learners, {} weights, {:?}", theta.len(), r);
    for round in 0..r.rounds {
        let mut updates = Vec::new();
        let mut loss = 0.0;
        for (l, c) in learners.iter_mut().zip(&mut compressors) {
            let inner = l.inner(&theta, round, r.inner_steps)?;
            loss += inner.loss / members as f64;
            let delta: Vec<f32> = theta.iter().zip(&inner.local).map(|(a, b)| a - b).collect();
            updates.push(c.compress(&delta).decode()?);
        }
        let refs: Vec<&[f32]> = updates.iter().map(|u| u.as_slice()).collect();
        let g = r.aggregator.aggregate(&refs).context("no aggregate")?;
        r.outer.step(&mut theta, &mut momentum, &g);
        let h = learners[0].heldout_loss(&theta, heldout)?;
        println!("{{\"round\":{round},\"inner_loss\":{loss:.4},\"heldout\":{h:.4}}}");
    }
    Ok(())
}
