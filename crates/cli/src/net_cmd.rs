//! `odin node`, `odin swarm` and `odin chat`: the network from the command line.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use odin_net::Multiaddr;
use odin_node::cluster::{ClusterConfig, Join};
use odin_node::{GenerateRequest, LocalCluster, Node, NodeOptions, Relay};
use odin_proto::Dtype;
use odin_text::{load_tokenizer, prompt_ids, special, TextStream};
use serde_json::json;

/// `odin node` arguments.
#[derive(Args)]
pub struct NodeArgs {
    /// Model directory (config.json, model.safetensors, tokenizer.json).
    #[arg(long, required_unless_present_any = ["train", "stage"])]
    model: Option<PathBuf>,
    /// Train together instead of serving: the run config (the trainer's TOML plus [rounds]).
    #[arg(long, conflicts_with_all = ["model", "blocks", "api"])]
    train: Option<PathBuf>,
    /// Hold a stage of pipeline training instead of serving: the training config (TOML) every
    /// stage of the chain shares; `--blocks A..B` says which blocks this one trains.
    #[arg(long, conflicts_with_all = ["model", "train", "api"], requires = "blocks")]
    stage: Option<PathBuf>,
    /// With --train: join a run in progress (wait for the next round and fetch its state).
    #[arg(long, requires = "train")]
    join: bool,
    /// With --train: other members to wait for before round 0.
    #[arg(long, default_value_t = 0, requires = "train")]
    expect_peers: usize,
    /// With --train: held-out batches scored after each round (0: none).
    #[arg(long, default_value_t = 0, requires = "train")]
    heldout_batches: usize,
    /// With --train, for fault tests and benchmarks: honest, silent, slow:MS, scale:F, flip or alie:Z.
    #[arg(long, default_value = "honest", requires = "train", hide = true)]
    behave: String,
    /// Blocks to serve: `A..B` (end exclusive), or `auto` to take those the network needs most
    /// (as many as fit in memory) and move when coverage changes; leave out to serve nothing.
    #[arg(long)]
    blocks: Option<String>,
    /// With `--blocks auto`: serve at most this many blocks.
    #[arg(long)]
    max_blocks: Option<usize>,
    /// With `--blocks auto`: MiB of memory the blocks may take (default: half of what is available).
    #[arg(long)]
    memory_mib: Option<u64>,
    /// With `--blocks auto`: seconds between rebalancing checks.
    #[arg(long, default_value_t = 30.0)]
    rebalance_secs: f64,
    /// On Ctrl-C, wait at most this many seconds for open sessions to be handed over or closed.
    #[arg(long, default_value_t = 10.0)]
    grace_secs: f64,
    /// Address to listen on (repeatable); default: TCP and QUIC on every interface, ports chosen by the system.
    #[arg(long)]
    listen: Vec<Multiaddr>,
    /// Address of a node to join through, with its /p2p/ id (repeatable); none: this is the genesis node.
    #[arg(long)]
    bootstrap: Vec<Multiaddr>,
    /// Serve the OpenAI-compatible API on HOST:PORT.
    #[arg(long)]
    api: Option<SocketAddr>,
    /// Where the node keeps its identity key.
    #[arg(long, default_value = ".odin/node")]
    data_dir: PathBuf,
    /// Refuse to start unless the model files hash to this id.
    #[arg(long)]
    model_id: Option<String>,
    /// Find peers on the LAN with mDNS.
    #[arg(long)]
    mdns: bool,
    /// Do not ask the router for a UPnP port mapping.
    #[arg(long)]
    no_upnp: bool,
    /// Engine threads per product (the output never depends on it).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Most sessions held at once.
    #[arg(long, default_value_t = 64)]
    max_sessions: usize,
    /// How hidden states travel: int8 or f32. For requests made through this node's API the
    /// default is int8; for a stage (--stage) it is f32, which reproduces one machine's training.
    #[arg(long)]
    wire: Option<String>,
    /// How steps travel along the chain for requests made through this node's API: chain
    /// (each server pushes to the next, one message per hop) or client (a round trip per hop).
    #[arg(long, default_value = "chain")]
    relay: String,
    /// Seconds between announcements.
    #[arg(long, default_value_t = 2.0)]
    announce_secs: f64,
    /// Wait this many milliseconds before each step (for tests of slow servers).
    #[arg(long, default_value_t = 0, hide = true)]
    delay_ms: u64,
    /// Answer steps with bytes that do not parse after this many (for tests of broken servers).
    #[arg(long, hide = true)]
    garbage_after: Option<u64>,
    /// Fraction of hop-steps this node's own generations recompute to check the servers (0 to 1).
    #[arg(long, default_value_t = odin_node::config::DEFAULT_AUDIT)]
    audit: f64,
    /// Lie about steps (tests and benchmarks of verification): flip-bit, noise, stale,
    /// other-session, skip-blocks, other-model or one-in-N.
    #[arg(long, hide = true)]
    cheat: Option<odin_node::Cheat>,
    /// Leading zero bits of blake3(blake3(public key)) the network asks of an identity: this
    /// node solves for them once (kept in --data-dir) and ignores servers that show fewer.
    #[arg(long, default_value_t = odin_net::puzzle::DEFAULT_IDENTITY_BITS)]
    identity_bits: u32,
    /// Audits a new server must pass (every step of it audited meanwhile, one session of this
    /// node through it at a time) before this node trusts it at the --audit fraction; 0: none.
    #[arg(long, default_value_t = odin_node::config::DEFAULT_PROBATION_AUDITS)]
    probation_audits: u32,
    #[command(flatten)]
    ledger: LedgerArgs,
}

/// The ledger settings of `odin node`.
#[derive(clap::Args, Clone)]
pub struct LedgerArgs {
    /// Keep no ledger: take no receipts, earn nothing.
    #[arg(long)]
    no_ledger: bool,
    /// The ledger network's name (its id is this name and the genesis node's key).
    #[arg(long, default_value = "odin")]
    network: String,
    /// The genesis node's peer id (default: the first --bootstrap peer; with none, this node).
    #[arg(long)]
    genesis: Option<odin_net::PeerId>,
    /// Genesis only: give PEER this many tokens in the genesis entry (repeatable, PEER=TOKENS).
    #[arg(long, value_parser = parse_allocation)]
    allocate: Vec<(odin_net::PeerId, u64)>,
    /// Tokens this node keeps bonded when its balance allows (multiplies its rewards, up to 2×
    /// at 10,000; slashable).
    #[arg(long, default_value_t = 100.0)]
    stake: f64,
    /// Genesis only: minutes per reward epoch.
    #[arg(long, default_value_t = 60)]
    epoch_minutes: u32,
    /// Seconds between uptime challenges to peers.
    #[arg(long, default_value_t = 60.0)]
    uptime_secs: f64,
    /// Seconds between gossips of the ledger's feed heads.
    #[arg(long, default_value_t = 5.0)]
    ledger_sync_secs: f64,
}

fn parse_allocation(s: &str) -> std::result::Result<(odin_net::PeerId, u64), String> {
    let (p, t) = s.split_once('=').ok_or_else(|| format!("--allocate {s}: write PEER=TOKENS"))?;
    let peer = p.parse().map_err(|e| format!("--allocate {s}: {p} is not a peer id: {e}"))?;
    let tokens: f64 = t.parse().map_err(|_| format!("--allocate {s}: {t} is not a number of tokens"))?;
    micro(tokens).map(|m| (peer, m)).map_err(|e| format!("--allocate {s}: {e}"))
}

fn micro(tokens: f64) -> std::result::Result<u64, String> {
    if !(tokens.is_finite() && (0.0..=1e12).contains(&tokens)) {
        return Err(format!("{tokens} tokens is not an amount between 0 and 10^12"));
    }
    Ok((tokens * odin_ledger::MICRO as f64).round() as u64)
}

impl LedgerArgs {
    /// The ledger config these flags give (`None` with --no-ledger).
    pub fn config(&self) -> Result<Option<odin_node::LedgerConfig>> {
        if self.no_ledger {
            return Ok(None);
        }
        for (flag, v) in [("--uptime-secs", self.uptime_secs), ("--ledger-sync-secs", self.ledger_sync_secs)] {
            if !(v.is_finite() && v >= 0.1) {
                bail!("{flag} must be at least 0.1 seconds");
            }
        }
        if self.epoch_minutes == 0 {
            bail!("--epoch-minutes must be at least 1");
        }
        Ok(Some(odin_node::LedgerConfig {
            name: self.network.clone(),
            genesis: self.genesis,
            allocations: self.allocate.clone(),
            stake: micro(self.stake).map_err(|e| anyhow::anyhow!("--stake: {e}"))?,
            epoch_minutes: self.epoch_minutes,
            sync_every: Duration::from_secs_f64(self.ledger_sync_secs),
            challenge_every: Duration::from_secs_f64(self.uptime_secs),
        }))
    }
}

/// The runtime of a node or swarm process: one network thread (prefills, and steps while other
/// sessions compute, go to the blocking pool). Every message of a hop passes from the socket
/// through libp2p's connection task to the stream's task and back; on one thread those hand-offs
/// are queue pushes, where on a multi-threaded runtime each can wake another thread. Measured on
/// odin-tiny, 3 nodes on loopback: ~160 µs of overhead per hop instead of ~230, 1.35x the
/// tokens/s (BENCHMARKS.md).
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")
}

fn model_name(dir: &Path) -> String {
    dir.canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "odin".into())
}

async fn start_api(
    node: Arc<Node>,
    addr: SocketAddr,
    wire: Dtype,
    relay: Relay,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let tk = load_tokenizer(node.model_dir())?;
    let api = odin_api::Api::new(node.clone(), tk, model_name(node.model_dir()), wire, relay);
    let listener = odin_api::bind(addr).await.with_context(|| format!("cannot listen on {addr} for the API"))?;
    let bound = listener.local_addr()?;
    let h = tokio::spawn(async move {
        let stop = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        if let Err(e) = odin_api::serve(api, listener, stop).await {
            tracing::error!("API stopped: {e}");
        }
    });
    Ok((bound, h))
}

impl NodeArgs {
    /// Where a training member or stage listens and whom it joins through.
    fn peering(&self) -> crate::collab_cmd::Peering {
        crate::collab_cmd::Peering {
            listen: self.listen.clone(),
            bootstrap: self.bootstrap.clone(),
            mdns: self.mdns,
            upnp: !self.no_upnp,
        }
    }
}

/// Run `odin node` until Ctrl-C. Prints one JSON line (`"event":"ready"`) on stdout once serving.
pub fn node(a: NodeArgs) -> Result<()> {
    if let Some(config) = a.train.clone() {
        return crate::collab_cmd::train_node(crate::collab_cmd::TrainNode {
            peering: a.peering(),
            config,
            data_dir: a.data_dir,
            behave: a.behave,
            join: a.join,
            expect_peers: a.expect_peers,
            heldout_batches: a.heldout_batches,
        });
    }
    if let Some(config) = a.stage.clone() {
        return crate::pipeline_cmd::stage_node(crate::pipeline_cmd::StageNode {
            peering: a.peering(),
            config,
            blocks: a.blocks.unwrap_or_default(),
            data_dir: a.data_dir,
            wire: Dtype::parse(a.wire.as_deref().unwrap_or("f32"))?,
        });
    }
    let Some(model) = a.model.clone() else {
        bail!("odin node needs --model (to serve), --train (to train in rounds) or --stage (to train a pipeline stage)")
    };
    let wire = Dtype::parse(a.wire.as_deref().unwrap_or("int8"))?;
    let relay = Relay::parse(&a.relay)?;
    let options = NodeOptions {
        model: model.clone(),
        blocks: a.blocks.clone(),
        max_blocks: a.max_blocks,
        memory_mib: a.memory_mib,
        rebalance_secs: a.rebalance_secs,
        grace_secs: a.grace_secs,
        listen: a.listen.clone(),
        bootstrap: a.bootstrap.clone(),
        data_dir: a.data_dir.clone(),
        model_id: a.model_id.clone(),
        mdns: a.mdns,
        upnp: !a.no_upnp,
        threads: a.threads,
        max_sessions: a.max_sessions,
        announce_secs: a.announce_secs,
        delay_ms: a.delay_ms,
        garbage_after: a.garbage_after,
        audit: a.audit,
        cheat: a.cheat,
        identity_bits: a.identity_bits,
        probation_audits: a.probation_audits,
        ledger: a.ledger.config()?,
    };
    let cfg = options.config()?;
    let grace = options.grace()?;
    runtime()?.block_on(async move {
        let node = Node::start(cfg).await.with_context(|| format!("cannot start a node on {}", model.display()))?;
        let api = match a.api {
            Some(addr) => Some(start_api(node.clone(), addr, wire, relay).await?),
            None => None,
        };
        let ready = json!({
            "event": "ready", "peer": node.peer_id().to_string(), "model": node.model().to_string(),
            "blocks": node.serving().map(|r| [r.start, r.end]),
            "addrs": node.net().addrs().iter().map(|m| m.to_string()).collect::<Vec<_>>(),
            "api": api.as_ref().map(|(addr, _)| format!("http://{addr}")),
        });
        println!("{ready}");
        std::io::stdout().flush()?;
        eprintln!(
            "node {} serving blocks {} of model {}; Ctrl-C stops it",
            node.peer_id(),
            node.serving().map_or("none".into(), |r| format!("{}..{}", r.start, r.end)),
            node.model()
        );
        tokio::signal::ctrl_c().await?;
        if node.serving().is_some() {
            eprintln!("stopping: no new sessions; handing over the open ones");
            let left = node.shutdown(grace).await;
            if left > 0 {
                eprintln!(
                    "{left} session(s) were still open after {} s; their clients will replay elsewhere",
                    a.grace_secs
                );
            }
        }
        if let Some((_, h)) = api {
            let _ = h.await;
        }
        Ok(())
    })
}

/// `odin swarm` arguments.
#[derive(Args)]
pub struct SwarmArgs {
    /// Node processes to start on loopback (the blocks are split between them).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Model directory.
    #[arg(long, default_value = "models/odin-tiny")]
    model: PathBuf,
    /// The task prompt.
    #[arg(long, default_value = "Solve for x: 6x - 5 = -10x + 59")]
    prompt: String,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    #[command(flatten)]
    sampling: crate::engine_cmd::SamplingArgs,
    /// How hidden states travel between hops: int8 (per-block scales) or f32.
    #[arg(long, default_value = "int8")]
    wire: String,
    /// How steps travel along the chain: chain (each server pushes to the next, the last
    /// sends the token back: one message per hop) or client (a round trip per hop).
    #[arg(long, default_value = "chain")]
    relay: String,
    /// Keep the network and an OpenAI-compatible API up until Ctrl-C.
    #[arg(long)]
    serve: bool,
    /// Where --serve puts the API.
    #[arg(long, default_value = "127.0.0.1:8080")]
    api: SocketAddr,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Train together instead of answering a prompt (see --config).
    #[arg(long)]
    train: bool,
    /// Fraction of hop-steps the client recomputes to check the servers (0 to 1).
    #[arg(long, default_value_t = odin_node::config::DEFAULT_AUDIT)]
    audit: f64,
    /// Make this many nodes lie (a test of verification): every block is served twice, the
    /// client answers six prompts, and a table shows the audits, proofs and bans.
    #[arg(long, default_value_t = 0)]
    cheat: usize,
    /// How the lying nodes lie: flip-bit, noise, stale, other-session, skip-blocks,
    /// other-model or one-in-N.
    #[arg(long, default_value = "flip-bit")]
    cheat_kind: odin_node::Cheat,
    /// Run the verification swarm (what --cheat runs) even with no liar: a count of honest
    /// audits, for false positives.
    #[arg(long)]
    verify: bool,
    /// With --cheat or --verify: answers to give (the six prompts in turn).
    #[arg(long, default_value_t = 6)]
    answers: usize,
    /// With --cheat or --verify: ODIN_KERNEL for the node processes in turn, comma-separated
    /// (scalar, avx2, avx512vnni, neon; auto: the fastest there is), so one network mixes kernels.
    #[arg(long, value_delimiter = ',')]
    kernels: Vec<String>,
    /// Audits a new server must pass (every step of it audited meanwhile) before the client
    /// trusts it at the --audit fraction; 0: no probation.
    #[arg(long, default_value_t = odin_node::config::DEFAULT_PROBATION_AUDITS)]
    probation_audits: u32,
    /// With --cheat: stop answering once every liar is banned (at most --answers).
    #[arg(long)]
    until_banned: bool,
    #[command(flatten)]
    training: crate::collab_cmd::SwarmTrainArgs,
}

/// Run `odin swarm`: N node processes on loopback, one prompt through them (or an API with --serve).
pub fn swarm(a: SwarmArgs) -> Result<()> {
    if a.train {
        return crate::collab_cmd::swarm_train(a.nodes, a.training, a.json);
    }
    let wire = Dtype::parse(&a.wire)?;
    let relay = Relay::parse(&a.relay)?;
    let sampling = a.sampling.config()?;
    if !(0.0..=1.0).contains(&a.audit) {
        bail!("--audit {} is not a fraction between 0 and 1", a.audit);
    }
    if a.cheat > 0 || a.verify {
        return crate::verify_cmd::swarm_verify(crate::verify_cmd::VerifySwarm {
            nodes: a.nodes,
            cheats: a.cheat,
            kind: a.cheat_kind,
            audit: a.audit,
            model: a.model,
            max_tokens: a.max_tokens,
            sampling,
            wire,
            relay,
            json: a.json,
            answers: a.answers.max(1),
            kernels: a.kernels,
            probation_audits: a.probation_audits,
            until_banned: a.until_banned,
        });
    }
    let ranges = odin_node::cluster::split_model(&a.model, a.nodes)?;
    let tk = load_tokenizer(&a.model)?;
    let ids = prompt_ids(&tk, &a.prompt)?;
    let exe = std::env::current_exe().context("cannot find the odin binary to start nodes")?;
    let work = std::env::temp_dir().join(format!("odin-swarm-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let t_start = Instant::now();
    let rt = runtime()?;
    let result = rt.block_on(async {
        let mut cfg = ClusterConfig::processes(&exe, &a.model, &work);
        cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse()?, "/ip4/127.0.0.1/udp/0/quic-v1".parse()?];
        // Everyone joins through the genesis node's TCP addresses.
        cfg.join = Join::Tcp;
        cfg.announce = Duration::from_secs(1);
        let mut cluster = LocalCluster::new(cfg);
        // The ledger: node-0 opens it and gives the client (which pays for its prompts) and
        // every node a share, so they can pay and stake from the start.
        let peers = swarm_identities(&work, a.nodes)?;
        let mut genesis_args: Vec<String> = peers[1..].iter().map(|p| format!("--allocate={p}={SWARM_TOKENS}")).collect();
        genesis_args.push(format!("--allocate={}={SWARM_TOKENS}", peers[0]));
        for (i, r) in ranges.iter().enumerate() {
            let mut extra: Vec<&str> = vec!["--uptime-secs", "5", "--ledger-sync-secs", "1"];
            if i == 0 {
                extra.extend(genesis_args.iter().map(String::as_str));
            }
            cluster.launch(&format!("node-{i}"), &format!("{}..{}", r.start, r.end), &extra)?;
        }
        let mut cfg = cluster.client_config(&work.join("client"));
        cfg.net.dht_server = false;
        cfg.audit = a.audit;
        cfg.ledger = Some(odin_node::LedgerConfig {
            sync_every: Duration::from_secs(1),
            challenge_every: Duration::from_secs(5),
            ..Default::default()
        });
        let client = cluster.join(cfg, Duration::from_secs(60)).await?;
        let route = client.route().unwrap_or_default();
        let ready_s = t_start.elapsed().as_secs_f64();
        if a.serve {
            let (addr, h) = start_api(client.clone(), a.api, wire, relay).await?;
            eprintln!("{} nodes up in {ready_s:.1}s; route: {}", a.nodes, describe(&route));
            println!(
                "OpenAI-compatible API on http://{addr}/v1 (model {}); Ctrl-C stops every node",
                model_name(&a.model)
            );
            let _ = h.await;
            return Ok(());
        }
        let req = GenerateRequest {
            prompt: ids.clone(),
            max_new: a.max_tokens,
            sampling,
            wire,
            stop: Some(special::EOS),
            relay,
        };
        let mut stream = TextStream::new(&tk);
        let mut out = std::io::stdout();
        let json_out = a.json;
        let g = client
            .generate(&req, |t| {
                if let Ok(Some(piece)) = stream.push(t) {
                    if !json_out {
                        let _ = out.write_all(piece.as_bytes());
                        let _ = out.flush();
                    }
                }
                true
            })
            .await?;
        let text = tk.decode(&g.tokens, true).unwrap_or_default();
        if a.json {
            println!(
                "{}",
                json!({"prompt": a.prompt, "text": text, "ids": g.tokens, "model": client.model().to_string(),
                       "nodes": a.nodes, "wire": wire.name(), "relay": g.relay, "ready_s": ready_s, "prefill_ms": g.prefill_ms,
                       "decode_tok_s": g.decode_tok_s, "route": g.route, "logits_hashes": g.logits_hashes})
            );
        } else {
            println!();
            eprintln!(
                "route ({} hops, wire {}, relay {}, network ready in {ready_s:.1}s):",
                g.route.len(),
                wire.name(),
                g.relay.name()
            );
            for h in &g.route {
                eprintln!(
                    "  {}  blocks {}..{}  {:.0} µs per token = compute {:.0} µs + overhead {:.0} µs  ({:.0} B/token)",
                    h.hop.peer,
                    h.hop.start,
                    h.hop.end,
                    h.mean_rtt_us,
                    h.mean_compute_us,
                    h.mean_overhead_us,
                    h.bytes_per_token
                );
            }
            eprintln!(
                "{} tokens · prefill {:.1} ms · decode {:.1} tok/s",
                g.tokens.len(),
                g.prefill_ms,
                g.decode_tok_s
            );
        }
        drop(cluster);
        Ok::<(), anyhow::Error>(())
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// Tokens the genesis of a local swarm gives the client and each other node.
const SWARM_TOKENS: u64 = 10_000;

/// Make the identities of a local swarm's client (first) and nodes ahead of their start, so the
/// genesis node can allocate to them.
fn swarm_identities(work: &Path, nodes: usize) -> Result<Vec<odin_net::PeerId>> {
    let bits = odin_net::puzzle::DEFAULT_IDENTITY_BITS;
    let dirs = std::iter::once("client".to_string()).chain((1..nodes).map(|i| format!("node-{i}")));
    dirs.map(|d| {
        let key = odin_net::load_or_create_identity_with(&work.join(d).join("identity.key"), bits)?;
        Ok(key.public().to_peer_id())
    })
    .collect()
}

fn describe(route: &[odin_node::Hop]) -> String {
    route.iter().map(|h| format!("{}..{} @ {}", h.start, h.end, h.peer)).collect::<Vec<_>>().join(" → ")
}

/// `odin chat` arguments.
#[derive(Args)]
pub struct ChatArgs {
    /// The node's API (from `odin node --api` or `odin swarm --serve`).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// One prompt, then exit (otherwise: read prompts from the terminal).
    #[arg(long)]
    prompt: Option<String>,
    /// Most tokens per answer.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Sampler seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Run `odin chat`: stream answers from a node's API.
pub fn chat(a: ChatArgs) -> Result<()> {
    let base = a.url.trim_end_matches('/').trim_end_matches("/v1").to_string();
    let models: serde_json::Value = ureq::get(format!("{base}/v1/models"))
        .call()
        .with_context(|| {
            format!("cannot reach an ODIN API at {base}; start one with `odin swarm --serve` or `odin node --api`")
        })?
        .body_mut()
        .read_json()?;
    let model = models["data"][0]["id"].as_str().context("the API lists no model")?.to_string();
    let ask = |prompt: &str| -> Result<()> {
        let body = json!({"model": model, "messages": [{"role": "user", "content": prompt}], "stream": true,
                          "max_tokens": a.max_tokens, "temperature": a.temperature, "seed": a.seed});
        let resp = ureq::post(format!("{base}/v1/chat/completions"))
            .config()
            .http_status_as_error(false)
            .build()
            .send_json(&body)?;
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            let e: serde_json::Value = body.read_json().unwrap_or_default();
            bail!("the API refused ({status}): {}", e["error"]["message"].as_str().unwrap_or("no message"));
        }
        let mut out = std::io::stdout();
        for line in std::io::BufReader::new(body.into_reader()).lines() {
            let line = line?;
            let Some(data) = line.strip_prefix("data: ") else { continue };
            if data == "[DONE]" {
                break;
            }
            let v: serde_json::Value = serde_json::from_str(data)?;
            if let Some(e) = v.get("error") {
                bail!("{}", e["message"].as_str().unwrap_or("generation failed"));
            }
            if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
                out.write_all(t.as_bytes())?;
                out.flush()?;
            }
        }
        println!();
        Ok(())
    };
    if let Some(p) = &a.prompt {
        return ask(p);
    }
    eprintln!("chatting with {model} at {base}; an empty line or Ctrl-D ends");
    let stdin = std::io::stdin();
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 || line.trim().is_empty() {
            return Ok(());
        }
        if let Err(e) = ask(line.trim()) {
            eprintln!("error: {e:#}");
        }
    }
}
