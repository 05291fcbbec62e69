//! `odin node --stage` and `odin swarm --train --pipeline`: pipeline training (the backward
//! relay) from the command line. The stages, the chain and the driver are `odin_collab`'s;
//! this parses flags, starts processes and prints.

use std::io::Write;
use std::ops::Range;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::collab_cmd::{start_reporting, wait_ready, Peering, Proc, Said};
use odin_collab::relay::{announce_stage, chain_id, find_chain, serve_stage, Driver};
use odin_collab::stage::Stage;
use odin_model::ModelConfig;
use odin_net::{Multiaddr, Net, NetConfig};
use odin_proto::Dtype;
use odin_train::TrainConfig;
use serde_json::json;

/// How a stage is started (`odin node --stage TRAIN.toml --blocks A..B`).
pub struct StageNode {
    /// The training config every stage of the chain shares.
    pub config: PathBuf,
    /// The blocks it holds, `A..B`.
    pub blocks: String,
    /// Where it keeps its key.
    pub data_dir: PathBuf,
    /// Its network.
    pub peering: Peering,
    /// How hidden states and gradients travel (f32 reproduces one machine's training).
    pub wire: Dtype,
}

fn model_layers(cfg: &TrainConfig) -> Result<usize> {
    Ok(ModelConfig::from_file(&cfg.model.config)
        .with_context(|| format!("cannot read the model config {}", cfg.model.config.display()))?
        .num_layers())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    // Two workers: one keeps the network moving while the other waits on a pass of the blocks.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Serve one stage until Ctrl-C. Prints one JSON line (`"event":"ready"`) once listening.
pub fn stage_node(s: StageNode) -> Result<()> {
    let cfg = TrainConfig::load(&s.config).with_context(|| format!("cannot read {}", s.config.display()))?;
    let range = odin_node::parse_blocks(&s.blocks, model_layers(&cfg)?).map_err(anyhow::Error::msg)?;
    let stage = Stage::new(&cfg, range.clone(), s.wire).context("cannot build the stage")?;
    let id = chain_id(&cfg)?;
    let key = odin_net::load_or_create_identity(&s.data_dir.join("identity.key"))?;
    let nc = s.peering.net_config(id)?;
    runtime()?.block_on(async move {
        let (net, events) = Net::start(key, nc).await.context("cannot start the network")?;
        let ready = json!({
            "event": "ready", "peer": net.peer_id().to_string(), "chain": id.to_string(),
            "blocks": [range.start, range.end],
            "addrs": net.addrs().iter().map(|m| m.to_string()).collect::<Vec<_>>(),
        });
        println!("{ready}");
        std::io::stdout().flush()?;
        eprintln!("stage {} holding blocks {range:?} of chain {id}; Ctrl-C stops it", net.peer_id());
        let serving = tokio::spawn(serve_stage(net.clone(), id, Arc::new(Mutex::new(stage))));
        tokio::select! {
            r = announce_stage(net, events, id, range) => r?,
            r = serving => r.context("the stage's server stopped")??,
            r = tokio::signal::ctrl_c() => r?,
        }
        Ok(())
    })
}

/// `odin swarm --train --pipeline` settings.
pub struct SwarmPipeline {
    /// The trainer's TOML.
    pub config: PathBuf,
    /// Stages: a count (the blocks split evenly) or ranges `0..2,2..3,3..4`.
    pub layout: String,
    /// Stage processes per range.
    pub replicas: usize,
    /// Optimizer steps (default: the config's run.steps).
    pub steps: Option<u64>,
    /// Kill one replica halfway through.
    pub churn: bool,
    /// Where the stages keep their keys and logs.
    pub out: PathBuf,
    /// Seconds a stage may take on one request before it is dropped.
    pub stage_timeout: f64,
}

/// The layout `odin swarm --train --pipeline` was given, as block ranges.
fn layout(s: &str, layers: usize) -> Result<Vec<Range<usize>>> {
    if let Ok(n) = s.trim().parse::<usize>() {
        if n == 0 || n > layers {
            bail!("--pipeline {n}: the model has {layers} blocks; ask for 1 to {layers} stages");
        }
        return Ok(odin_node::split_blocks(layers, n));
    }
    let ranges: Vec<Range<usize>> =
        s.split(',').map(|r| odin_node::parse_blocks(r, layers).map_err(anyhow::Error::msg)).collect::<Result<_>>()?;
    let mut at = 0;
    for r in &ranges {
        if r.start != at {
            bail!("--pipeline {s}: the ranges must cover 0..{layers} in order, each starting where the last ended");
        }
        at = r.end;
    }
    if at != layers {
        bail!("--pipeline {s}: the ranges end at block {at}, the model has {layers}");
    }
    Ok(ranges)
}

/// Run `odin swarm --train --pipeline`: stage processes on loopback, the driver in this
/// process, one table row per step (or a JSON summary with `json_out`).
pub fn swarm_pipeline(p: SwarmPipeline, json_out: bool) -> Result<()> {
    let mut cfg = TrainConfig::load(&p.config).with_context(|| {
        format!(
            "cannot read the training config {} (run from the repository root, or pass --config)",
            p.config.display()
        )
    })?;
    if let Some(n) = p.steps {
        cfg.run.steps = n;
    }
    let layers = model_layers(&cfg)?;
    let ranges = layout(&p.layout, layers)?;
    if p.replicas == 0 {
        bail!("--replicas must be at least 1");
    }
    let exe = std::env::current_exe().context("cannot find the odin binary to start stages")?;
    std::fs::create_dir_all(&p.out).with_context(|| format!("cannot create {}", p.out.display()))?;
    let (tx, rx) = mpsc::channel::<Said>();
    let spawn = |i: usize, range: &Range<usize>, bootstrap: Option<&str>| -> Result<Proc> {
        let dir = p.out.join(format!("stage-{i}"));
        std::fs::create_dir_all(&dir)?;
        let mut cmd = Command::new(&exe);
        cmd.args(["node", "--stage"])
            .arg(&p.config)
            .args(["--blocks", &format!("{}..{}", range.start, range.end), "--wire", "f32"])
            .arg("--data-dir")
            .arg(&dir)
            .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--no-upnp"]);
        if let Some(b) = bootstrap {
            cmd.args(["--bootstrap", b]);
        }
        let name = format!("stage-{i} (blocks {}..{})", range.start, range.end);
        start_reporting(cmd, i, name, &dir.join("log.txt"), &tx)
    };
    // Stage i of replica k holds ranges[i % n]: replicas of one range are started apart.
    let plan: Vec<Range<usize>> = (0..p.replicas).flat_map(|_| ranges.iter().cloned()).collect();
    let mut procs: Vec<Option<Proc>> = vec![Some(spawn(0, &plan[0], None)?)];
    let genesis = wait_ready(&rx, 0, "stage-0")?;
    for (i, r) in plan.iter().enumerate().skip(1) {
        procs.push(Some(spawn(i, r, Some(&genesis))?));
    }
    let mut ready = std::collections::BTreeSet::new();
    while ready.len() + 1 < plan.len() {
        match rx.recv_timeout(Duration::from_secs(120)).context("a stage did not start within 2 minutes")? {
            Said::Line(i, v) if v["event"] == "ready" => {
                ready.insert(i);
            }
            Said::Closed(i) => {
                bail!(
                    "stage-{i} stopped before it was ready; see {}",
                    p.out.join(format!("stage-{i}/log.txt")).display()
                )
            }
            Said::Line(..) => {}
        }
    }
    let kill_at = (cfg.run.steps / 2).max(1);
    let n = ranges.len();
    let drive = Drive { cfg, bootstrap: vec![genesis.parse()?], replicas: p.replicas, stage_timeout: p.stage_timeout };
    run_driver(drive, json_out, &mut |step| {
        if p.churn && step == kill_at {
            // The newest replica of a range that still has two: the chain must go on without it.
            let victim = (n..procs.len()).rev().find(|&k| {
                procs[k].is_some() && procs.iter().skip(k % n).step_by(n).filter(|q| q.is_some()).count() > 1
            });
            if let Some(proc) = victim.and_then(|k| procs[k].take()) {
                eprintln!("killing {} after step {step}", proc.name);
                drop(proc);
            }
        }
    })
}

/// What a pipeline driver needs: the training config, a way into the network, and how many
/// replicas per range to wait for.
pub struct Drive {
    /// The trainer's config, with the steps to run.
    pub cfg: TrainConfig,
    /// Addresses of stages (or any peer on the chain's network), with their /p2p/ ids.
    pub bootstrap: Vec<Multiaddr>,
    /// Replicas per range to wait for before the first step.
    pub replicas: usize,
    /// Seconds a stage may take on one request before it is dropped.
    pub stage_timeout: f64,
}

/// Find a chain of stages through `d.bootstrap` and train `d.cfg.run.steps` steps through it,
/// printing one row per step (or a JSON summary); `after_step` sees each step's number.
pub fn run_driver(d: Drive, json_out: bool, after_step: &mut dyn FnMut(u64)) -> Result<()> {
    if d.replicas == 0 {
        bail!("--replicas must be at least 1");
    }
    if !(d.stage_timeout.is_finite() && d.stage_timeout > 0.0) {
        bail!("--stage-timeout must be a positive number of seconds");
    }
    let cfg = d.cfg;
    let layers = model_layers(&cfg)?;
    let id = chain_id(&cfg)?;
    let timeout = Duration::from_secs_f64(d.stage_timeout);
    let t0 = Instant::now();
    let (steps, dropped, traffic, chain) = runtime()?.block_on(async {
        let mut nc = NetConfig::loopback(id);
        nc.listen = vec!["/ip4/0.0.0.0/tcp/0".parse()?];
        nc.bootstrap = d.bootstrap.clone();
        let (net, mut events) = Net::start(odin_net::Keypair::generate_ed25519(), nc).await?;
        let chain = find_chain(&net, &mut events, id, layers, d.replicas, Duration::from_secs(60)).await?;
        let mut driver = Driver::connect(&net, cfg.clone(), &chain).await?;
        driver.set_timeout(timeout);
        let chain_text: Vec<String> =
            chain.iter().map(|g| format!("{}..{} ×{}", g.range.start, g.range.end, g.replicas.len())).collect();
        if !json_out {
            eprintln!(
                "training {} for {} steps through the chain {} (chain id {id})",
                cfg.model.config.display(),
                cfg.run.steps,
                chain_text.join(" → ")
            );
            println!(
                "{:>5} {:>9} {:>9} {:>9} {:>11} {:>9}",
                "step", "loss", "grad norm", "tokens/s", "KiB sent", "replicas"
            );
        }
        let mut steps = Vec::new();
        while driver.step < cfg.run.steps {
            let s = driver.step().await?;
            if !json_out {
                let (sent, _) = driver.traffic.totals();
                println!(
                    "{:>5} {:>9.4} {:>9.3} {:>9.0} {:>11.0} {:>9}",
                    s.step,
                    s.loss,
                    s.grad_norm,
                    s.tokens as f64 / s.seconds.max(1e-9),
                    sent as f64 / 1024.0,
                    s.replicas.iter().map(|r| r.to_string()).collect::<Vec<_>>().join("/")
                );
            }
            after_step(s.step);
            steps.push(s);
        }
        Ok::<_, anyhow::Error>((steps, driver.dropped.clone(), driver.traffic.totals(), chain_text))
    })?;
    let secs = t0.elapsed().as_secs_f64();
    let tokens: usize = steps.iter().map(|s| s.tokens).sum();
    let step_secs: f64 = steps.iter().map(|s| s.seconds).sum();
    if json_out {
        println!(
            "{}",
            json!({"event": "summary", "chain": chain, "steps": steps, "dropped": dropped,
                   "tokens_per_s": tokens as f64 / step_secs.max(1e-9), "sent": traffic.0, "received": traffic.1,
                   "seconds": secs})
        );
    } else {
        eprintln!(
            "{} steps in {secs:.1}s, {:.0} tokens/s; the driver sent {:.1} MiB and received {:.1} MiB",
            steps.len(),
            tokens as f64 / step_secs.max(1e-9),
            traffic.0 as f64 / (1 << 20) as f64,
            traffic.1 as f64 / (1 << 20) as f64
        );
        for d in &dropped {
            eprintln!("dropped {} (blocks {}..{}) at step {}: {}", d.peer, d.blocks.0, d.blocks.1, d.step, d.reason);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layout_is_a_count_or_ranges_that_cover_the_model_in_order() {
        assert_eq!(layout("2", 4).unwrap(), vec![0..2, 2..4]);
        assert_eq!(layout("0..2,2..3,3..4", 4).unwrap(), vec![0..2, 2..3, 3..4]);
        assert!(layout("0", 4).is_err());
        assert!(layout("5", 4).is_err());
        assert!(layout("0..2,3..4", 4).is_err(), "a gap");
        assert!(layout("0..2,1..4", 4).is_err(), "an overlap");
        assert!(layout("0..2,2..3", 4).is_err(), "short of the end");
        assert!(layout("0..2,2..5", 4).is_err(), "past the end");
    }
}
