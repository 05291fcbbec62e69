//! `odin node --train` and `odin swarm --train`: training together from the command line.
//! The rounds themselves are `odin_collab`'s; this parses flags, starts processes and prints.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use odin_collab::{Behaviour, Member, MemberOptions, RoundReport, RunConfig, Summary};
use odin_net::{Multiaddr, NetConfig};
use serde_json::{json, Value};

/// Where a training process (a member or a stage) listens and whom it joins through.
pub struct Peering {
    /// Listen addresses (empty: TCP and QUIC on every interface).
    pub listen: Vec<Multiaddr>,
    /// Peers to join through.
    pub bootstrap: Vec<Multiaddr>,
    /// Find peers with mDNS.
    pub mdns: bool,
    /// Ask for a UPnP mapping.
    pub upnp: bool,
}

impl Peering {
    /// The network settings of a swarm on `topic_id`'s announcement topic.
    pub fn net_config(&self, topic_id: odin_format::ModelId) -> Result<NetConfig> {
        let mut net = NetConfig::loopback(topic_id);
        net.listen = if self.listen.is_empty() {
            vec!["/ip4/0.0.0.0/tcp/0".parse()?, "/ip4/0.0.0.0/udp/0/quic-v1".parse()?]
        } else {
            self.listen.clone()
        };
        net.bootstrap = self.bootstrap.clone();
        net.mdns = self.mdns;
        net.upnp = self.upnp;
        Ok(net)
    }
}

/// How a training member is started (`odin node --train RUN.toml`).
pub struct TrainNode {
    /// The run config.
    pub config: PathBuf,
    /// Where the member keeps its key and writes its model.
    pub data_dir: PathBuf,
    /// Its network.
    pub peering: Peering,
    /// How it behaves (`honest` unless a test or benchmark injects a fault).
    pub behave: String,
    /// Join a run in progress.
    pub join: bool,
    /// Other members to wait for before round 0.
    pub expect_peers: usize,
    /// Held-out batches scored after each round.
    pub heldout_batches: usize,
}

/// Run one training member to the end of the run, printing JSON lines: `ready`, one `round`
/// per round, and `done`.
pub fn train_node(t: TrainNode) -> Result<()> {
    let run = RunConfig::load(&t.config)?;
    let behaviour: Behaviour = t.behave.parse().map_err(anyhow::Error::msg)?;
    let key = odin_net::load_or_create_identity(&t.data_dir.join("identity.key"))?;
    let net = t.peering.net_config(odin_format::ModelId([0; 32]))?;
    let opts = MemberOptions {
        run,
        dir: t.data_dir.clone(),
        behaviour,
        heldout_batches: t.heldout_batches,
        expect_peers: t.expect_peers,
        start_wait: Duration::from_secs(60),
        join: t.join,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let member = Member::start(key, net, opts).await.context("cannot start the training member")?;
        let ready = json!({
            "event": "ready", "run": member.run_id().to_string(), "params": member.params(),
            "addrs": member.addrs().iter().map(|m| m.to_string()).collect::<Vec<_>>(),
        });
        print_line(&ready)?;
        let summary = member
            .run(|r| {
                let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
                v["event"] = "round".into();
                let _ = print_line(&v);
            })
            .await?;
        let mut v = serde_json::to_value(&summary)?;
        v["event"] = "done".into();
        print_line(&v)?;
        Ok(())
    })
}

fn print_line(v: &Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{v}")?;
    out.flush()?;
    Ok(())
}

/// `odin swarm --train` arguments.
#[derive(Args, Clone)]
pub struct SwarmTrainArgs {
    /// Run config (the trainer's TOML plus [rounds]); default: the bundled demo run,
    /// whose small dataset is built on first use.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where the members write (their keys, logs and final models).
    #[arg(long, default_value = "runs/swarm-train")]
    pub out: PathBuf,
    /// Make the last member misbehave: silent, slow:MS, scale:F, flip or alie:Z.
    #[arg(long)]
    pub byzantine: Option<String>,
    /// Kill a random member (never the first) after every round and start a newcomer.
    #[arg(long)]
    pub churn: bool,
    /// Held-out batches the first member scores after each round.
    #[arg(long, default_value_t = 4)]
    pub heldout_batches: usize,
    /// Train a pipeline instead of rounds (the backward relay): stages each holding a block
    /// range, given as a count (the blocks split evenly) or ranges `0..2,2..3,3..4`. Then
    /// --config is the trainer's TOML (default: the demo's) and --nodes is not used.
    #[arg(long)]
    pub pipeline: Option<String>,
    /// With --pipeline: stage processes per range, kept in lockstep; a range goes on while one is left.
    #[arg(long, default_value_t = 1, requires = "pipeline")]
    pub replicas: usize,
    /// With --pipeline: optimizer steps (default: the config's run.steps).
    #[arg(long, requires = "pipeline")]
    pub steps: Option<u64>,
    /// With --pipeline: seconds a stage may take on one request before it is dropped.
    #[arg(long, default_value_t = 120.0, requires = "pipeline")]
    pub stage_timeout: f64,
}

/// The trainer config `odin swarm --train --pipeline` uses without `--config`.
const DEMO_PIPELINE_CONFIG: &str = "configs/train-collab-demo.toml";

/// The demo run `odin swarm --train` uses without `--config`.
const DEMO_CONFIG: &str = "configs/collab-demo.toml";

/// A child process that is killed when dropped.
pub(crate) struct Proc {
    /// What to call it in messages.
    pub(crate) name: String,
    /// The process.
    pub(crate) child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a child process (a member or a stage) said.
pub(crate) enum Said {
    /// Child `i` printed this JSON line.
    Line(usize, Value),
    /// Child `i`'s output ended.
    Closed(usize),
}

/// Start `cmd` as child `i` called `name`: its stderr into `log`, each JSON line of its stdout
/// to `tx` as [`Said::Line`], and [`Said::Closed`] when its output ends.
pub(crate) fn start_reporting(
    mut cmd: Command,
    i: usize,
    name: String,
    log: &std::path::Path,
    tx: &mpsc::Sender<Said>,
) -> Result<Proc> {
    let log = std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    cmd.env("ODIN_LOG", std::env::var("ODIN_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log));
    let mut child = cmd.spawn().with_context(|| format!("cannot start {name}"))?;
    let out = child.stdout.take().with_context(|| format!("no stdout from {name}"))?;
    let tx = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send(Said::Line(i, v));
            }
        }
        let _ = tx.send(Said::Closed(i));
    });
    Ok(Proc { name, child })
}

/// Run `odin swarm --train`: `nodes` member processes on loopback, one table row per round.
pub fn swarm_train(nodes: usize, a: SwarmTrainArgs, json_out: bool) -> Result<()> {
    if let Some(layout) = a.pipeline.clone() {
        let config = a.config.clone().unwrap_or_else(|| PathBuf::from(DEMO_PIPELINE_CONFIG));
        ensure_train_data(
            &odin_train::TrainConfig::load(&config).with_context(|| format!("cannot read {}", config.display()))?,
        )?;
        return crate::pipeline_cmd::swarm_pipeline(
            crate::pipeline_cmd::SwarmPipeline {
                config,
                layout,
                replicas: a.replicas,
                steps: a.steps,
                churn: a.churn,
                out: a.out,
                stage_timeout: a.stage_timeout,
            },
            json_out,
        );
    }
    if nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let config = a.config.clone().unwrap_or_else(|| PathBuf::from(DEMO_CONFIG));
    let run = RunConfig::load(&config).with_context(|| {
        format!("cannot read the run config {} (run from the repository root, or pass --config)", config.display())
    })?;
    ensure_data(&run)?;
    let exe = std::env::current_exe().context("cannot find the odin binary to start members")?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
    let (tx, rx) = mpsc::channel::<Said>();
    let mut procs: Vec<Option<Proc>> = Vec::new();
    let spawn = |i: usize, bootstrap: Option<&str>, behave: &str, join: bool, expect: usize| -> Result<Proc> {
        let dir = a.out.join(format!("member-{i}"));
        let _ = std::fs::remove_dir_all(dir.join("model"));
        std::fs::create_dir_all(&dir)?;
        let mut cmd = Command::new(&exe);
        cmd.args(["node", "--train"])
            .arg(&config)
            .arg("--data-dir")
            .arg(&dir)
            // TCP only on loopback: a QUIC handshake is answered by the member's own runtime,
            // which a member busy computing can leave unanswered past QUIC's handshake timeout
            // (a newcomer then could reach no one and ended the run on its own weights); the
            // kernel answers TCP's.
            .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--no-upnp"])
            .args(["--behave", behave, "--expect-peers", &expect.to_string()])
            .args(["--heldout-batches", &if i == 0 { a.heldout_batches } else { 0 }.to_string()]);
        if let Some(b) = bootstrap {
            cmd.args(["--bootstrap", b]);
        }
        if join {
            cmd.arg("--join");
        }
        start_reporting(cmd, i, format!("member-{i}"), &dir.join("log.txt"), &tx)
    };

    let t0 = Instant::now();
    procs.push(Some(spawn(0, None, "honest", false, nodes - 1)?));
    let genesis = wait_ready(&rx, 0, "member-0")?;
    for i in 1..nodes {
        let behave = if i == nodes - 1 { a.byzantine.as_deref().unwrap_or("honest") } else { "honest" };
        procs.push(Some(spawn(i, Some(&genesis), behave, false, 1)?));
    }
    let total = run.rounds.rounds;
    if !json_out {
        eprintln!(
            "{nodes} members training {} for {total} rounds of {} inner steps (aggregator {:?}); logs in {}",
            run.name,
            run.rounds.inner_steps,
            run.rounds.aggregator,
            a.out.display()
        );
        println!(
            "{:>5} {:>7} {:>8} {:>8} {:>10} {:>10} {:>12} {:>6} {:>7}",
            "round", "members", "accepted", "rejected", "loss", "held-out", "KiB/member", "agree", "seconds"
        );
    }
    let mut rows: std::collections::BTreeMap<u64, Vec<(usize, RoundReport)>> = Default::default();
    let mut done: Vec<(usize, Summary)> = Vec::new();
    let mut next_id = nodes;
    let mut rng_state = 0x9e37_79b9_7f4a_7c15u64;
    let mut kills = Vec::new();
    let mut joiners = std::collections::BTreeSet::new();
    // Until every member still running has finished (one killed after it finished counts for
    // nothing: its weights are not there to compare).
    while procs.iter().enumerate().any(|(i, p)| p.is_some() && !done.iter().any(|(k, _)| *k == i)) {
        let said = rx.recv_timeout(Duration::from_secs(600)).context("no member said anything for 10 minutes")?;
        match said {
            Said::Line(i, v) if v["event"] == "round" => {
                let r: RoundReport = serde_json::from_value(strip_event(v))?;
                let round = r.round;
                rows.entry(round).or_default().push((i, r));
                // A row is printed once the first member has reported the round.
                if i == 0 {
                    if let Some(row) = rows.get(&round) {
                        print_row(round, row, json_out);
                    }
                    if a.churn && round + 2 < total && nodes > 1 {
                        rng_state = rng_state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        let alive: Vec<usize> = (1..procs.len()).filter(|&k| procs[k].is_some()).collect();
                        if let Some(&victim) = alive.get((rng_state >> 33) as usize % alive.len().max(1)) {
                            if let Some(p) = procs[victim].take() {
                                kills.push(p.name.clone());
                                drop(p);
                            }
                            procs.push(Some(spawn(next_id, Some(&genesis), "honest", true, 1)?));
                            joiners.insert(next_id);
                            next_id += 1;
                        }
                    }
                }
            }
            Said::Line(i, v) if v["event"] == "done" => {
                let s: Summary = serde_json::from_value(strip_event(v))?;
                done.push((i, s));
            }
            Said::Line(_, _) => {}
            Said::Closed(i) => {
                let killed = procs.get(i).is_none_or(|p| p.is_none());
                if !killed && !done.iter().any(|(k, _)| *k == i) && joiners.contains(&i) {
                    // A newcomer that found no round to join (the run ended first) is no failure.
                    eprintln!(
                        "member-{i} joined too late to take part (done: {:?})",
                        done.iter().map(|(k, _)| *k).collect::<Vec<_>>()
                    );
                    procs[i] = None;
                } else if !killed && !done.iter().any(|(k, _)| *k == i) {
                    bail!(
                        "member-{i} stopped before the end of the run; see {}",
                        a.out.join(format!("member-{i}/log.txt")).display()
                    );
                }
            }
        }
    }
    done.retain(|(i, _)| procs.get(*i).is_some_and(|p| p.is_some()));
    let states: std::collections::BTreeSet<&str> = done.iter().map(|(_, s)| s.state.as_str()).collect();
    let first = done.iter().find(|(i, _)| *i == 0).map(|(_, s)| s.clone());
    let Some(first) = first else { bail!("the first member did not finish") };
    let secs = t0.elapsed().as_secs_f64();
    if json_out {
        println!(
            "{}",
            json!({"event": "summary", "inner_steps": run.rounds.inner_steps, "members": done.len(), "agree": states.len() == 1, "state": first.state,
                   "model": first.model, "heldout": first.heldout, "privacy": first.privacy, "killed": kills, "seconds": secs,
                   "rounds": rows.iter().map(|(r, v)| json!({"round": r, "reports": v.iter().map(|(i, x)| json!({"member": i, "report": x})).collect::<Vec<_>>()})).collect::<Vec<_>>()})
        );
    } else {
        eprintln!(
            "{} members finished in {secs:.1}s; final weights {} on {}; model {} in {}",
            done.len(),
            first.state,
            if states.len() == 1 { "every member".to_string() } else { format!("{} different states", states.len()) },
            first.model,
            a.out.join("member-0/model").display()
        );
        if let Some(h) = first.heldout {
            eprintln!("held-out loss of the final weights: {h:.4}");
        }
        if let Some((eps, delta)) = first.privacy {
            eprintln!("privacy of member 0's data over the run: ({eps:.3}, {delta:e})-DP (RDP accountant)");
        }
        if !kills.is_empty() {
            eprintln!("killed along the way: {}", kills.join(", "));
        }
    }
    let png = a.out.join("loss.png");
    let h = run.rounds.inner_steps as f64;
    let inner: Vec<(f64, f64)> = rows.iter().filter_map(|(r, v)| Some(((r + 1) as f64 * h, mean_loss(v)?))).collect();
    let held: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|(r, v)| Some(((r + 1) as f64 * h, v.iter().find(|(i, _)| *i == 0)?.1.heldout?)))
        .collect();
    let title = format!("{} members, {}", nodes, run.name);
    let series =
        vec![("inner loss (mean of members)".to_string(), inner), ("held-out loss (member 0)".to_string(), held)];
    if let Err(e) = odin_train::curves::curves_png(&png, &title, "inner steps per member", &series) {
        eprintln!("no loss curve: {e}");
    }
    if states.len() != 1 {
        bail!("the members ended on {} different weights", states.len());
    }
    Ok(())
}

fn mean_loss(v: &[(usize, RoundReport)]) -> Option<f64> {
    let l: Vec<f64> = v.iter().filter_map(|(_, r)| r.loss).collect();
    (!l.is_empty()).then(|| l.iter().sum::<f64>() / l.len() as f64)
}

/// `odin curves` arguments.
#[derive(Args)]
pub struct CurvesArgs {
    /// The PNG to write.
    #[arg(long)]
    out: PathBuf,
    /// The title.
    #[arg(long, default_value = "training loss")]
    title: String,
    /// NAME=FILE: an `odin swarm --train --json` summary (the members' mean inner loss per
    /// round) or an `odin train` metrics.jsonl (the loss per logged step).
    #[arg(required = true)]
    series: Vec<String>,
}

/// Draw `odin curves`.
pub fn curves(a: CurvesArgs) -> Result<()> {
    let mut series = Vec::new();
    for s in &a.series {
        let (name, file) = s.split_once('=').with_context(|| format!("{s:?} is not NAME=FILE"))?;
        let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))?;
        let points: Vec<(f64, f64)> = if file.ends_with(".jsonl") {
            text.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter_map(|v| Some((v["step"].as_f64()?, v["loss"].as_f64()?)))
                .collect()
        } else {
            let v: Value = serde_json::from_str(text.lines().last().unwrap_or_default())
                .with_context(|| format!("{file} is not a swarm summary"))?;
            let h = v["inner_steps"].as_f64().context("the summary has no inner_steps")?;
            v["rounds"]
                .as_array()
                .context("the summary has no rounds")?
                .iter()
                .filter_map(|r| {
                    let losses: Vec<f64> =
                        r["reports"].as_array()?.iter().filter_map(|x| x["report"]["loss"].as_f64()).collect();
                    let round = r["round"].as_f64()?;
                    (!losses.is_empty()).then(|| ((round + 1.0) * h, losses.iter().sum::<f64>() / losses.len() as f64))
                })
                .collect()
        };
        series.push((name.to_string(), points));
    }
    odin_train::curves::curves_png(&a.out, &a.title, "optimizer steps (per member)", &series)
        .map_err(anyhow::Error::msg)?;
    eprintln!("wrote {}", a.out.display());
    Ok(())
}

fn strip_event(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("event");
    }
    v
}

/// Wait for child `who` (called `name`) to print its `ready` line, and return its TCP address
/// with its `/p2p/` id, for the others to join through.
pub(crate) fn wait_ready(rx: &mpsc::Receiver<Said>, who: usize, name: &str) -> Result<String> {
    let until = Instant::now() + Duration::from_secs(120);
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(Said::Line(i, v)) if i == who && v["event"] == "ready" => {
                let addr = v["addrs"]
                    .as_array()
                    .and_then(|a| a.iter().filter_map(|x| x.as_str()).find(|s| s.contains("/tcp/")))
                    .with_context(|| format!("{name} announced no TCP address"))?;
                return Ok(match v["peer"].as_str() {
                    Some(peer) if !addr.contains("/p2p/") => format!("{addr}/p2p/{peer}"),
                    _ => addr.to_string(),
                });
            }
            Ok(Said::Closed(i)) if i == who => bail!("{name} stopped before it was ready; see its log.txt"),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    bail!("{name} was not ready within 120 s")
}

fn print_row(round: u64, row: &[(usize, RoundReport)], json_out: bool) {
    if json_out {
        return;
    }
    let Some((_, first)) = row.iter().find(|(i, _)| *i == 0) else { return };
    let losses: Vec<f64> = row.iter().filter_map(|(_, r)| r.loss).collect();
    let loss = if losses.is_empty() { f64::NAN } else { losses.iter().sum::<f64>() / losses.len() as f64 };
    let kib = row.iter().map(|(_, r)| r.sent as f64).sum::<f64>() / row.len() as f64 / 1024.0;
    let agree = row.iter().all(|(_, r)| r.state == first.state);
    let rejected: usize = row.iter().map(|(_, r)| r.rejected).max().unwrap_or(0);
    println!(
        "{:>5} {:>7} {:>8} {:>8} {:>10.4} {:>10} {:>12.1} {:>6} {:>7.1}",
        round,
        first.members,
        if first.skipped { "skipped".to_string() } else { first.accepted.to_string() },
        rejected,
        loss,
        first.heldout.map_or("-".into(), |h| format!("{h:.4}")),
        kib,
        if agree { "yes" } else { "no" },
        first.seconds
    );
}

/// Build the run's dataset when its directory has none yet (the demo's small one).
fn ensure_data(run: &RunConfig) -> Result<()> {
    ensure_train_data(&run.train_config()?)
}

/// Build the demo's small dataset where a training config points, unless it is there.
fn ensure_train_data(train: &odin_train::TrainConfig) -> Result<()> {
    if train.data.dir.join("manifest.json").is_file() {
        return Ok(());
    }
    eprintln!("building the dataset {} (once)…", train.data.dir.display());
    let o = odin_data::BuildOptions::preset("tiny", 7)?;
    odin_data::build(&o, &train.data.dir, &|_, _, _, _| {})
        .with_context(|| format!("building {}", train.data.dir.display()))?;
    Ok(())
}
