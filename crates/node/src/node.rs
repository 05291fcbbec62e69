//! A running node: its swarm, its shard (if it serves one), its directory of servers.
//!
//! A prompt's walk: [`Node::generate`] asks the [`Directory`] for the cheapest
//! chain, [`crate::client::generate_on`] opens a session on every hop, and
//! each hop's [`Server`] runs its blocks on the int8 engine; the last samples.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use odin_engine::{Options, Shard};
use odin_format::{ModelConfig, ModelId};
use odin_net::{block_key, now_ms, Net, NetConfig, NetEvent, PeerId, ServerInfo};
use serde::Serialize;
use tokio::sync::Notify;

use crate::alloc;
use crate::client::{fetch_info, generate_on, Failure, GenerateRequest, Generation, Progress};
use crate::directory::{Directory, Hop};
use crate::error::{NodeError, Result};
use crate::server::{Server, ServerConfig};

/// Longest one DHT lookup or one announcement fetch may take while looking for servers.
const PULL_DEADLINE: Duration = Duration::from_secs(1);
/// A provider that did not answer is not asked again for this long.
const SHUN: Duration = Duration::from_secs(30);

/// Most reroutes one generation makes before it gives up.
pub const MAX_FAILOVERS: usize = 8;

/// How a node is started.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Model directory (config.json, model.safetensors, tokenizer.json).
    pub model_dir: PathBuf,
    /// Blocks to serve; `None` for a client that serves nothing.
    pub blocks: Option<Range<usize>>,
    /// The id the operator expects; the node refuses to start if the files hash otherwise.
    pub expect_id: Option<ModelId>,
    /// Where the identity key lives.
    pub data_dir: PathBuf,
    /// The swarm's settings (`model` is filled in from the files).
    pub net: NetConfig,
    /// Session limits.
    pub server: ServerConfig,
    /// Engine threads per product.
    pub threads: usize,
    /// How often the node re-announces itself (announcements live three times as long).
    pub announce_every: Duration,
    /// Pick the blocks from the network's needs instead of `blocks`, and keep rebalancing.
    pub auto: Option<AutoConfig>,
}

/// How a `--blocks auto` node sizes its share and how often it reconsiders it.
#[derive(Debug, Clone)]
pub struct AutoConfig {
    /// Serve at most this many blocks.
    pub max_blocks: Option<usize>,
    /// Bytes of memory the blocks may take (default: half of what the system has available).
    pub memory_budget: Option<u64>,
    /// Time between rebalancing checks (each waits a random 0.75–1.25 of it).
    pub rebalance_every: Duration,
}

impl Default for AutoConfig {
    fn default() -> Self {
        Self {
            max_blocks: None,
            memory_budget: alloc::default_memory_budget(),
            rebalance_every: Duration::from_secs(30),
        }
    }
}

impl NodeConfig {
    /// Defaults for serving `blocks` of `model_dir` on loopback, keeping keys in `data_dir`.
    pub fn loopback(model_dir: &Path, blocks: Option<Range<usize>>, data_dir: &Path) -> Self {
        Self {
            model_dir: model_dir.to_path_buf(),
            blocks,
            expect_id: None,
            data_dir: data_dir.to_path_buf(),
            net: NetConfig::loopback(ModelId([0; 32])),
            server: ServerConfig::default(),
            threads: 1,
            announce_every: Duration::from_secs(2),
            auto: None,
        }
    }
}

/// A node's view of the network, for `/status` and `odin swarm`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// This node.
    pub peer: String,
    /// The model id.
    pub model: String,
    /// Blocks this node serves.
    pub serving: Option<[usize; 2]>,
    /// Addresses it listens on.
    pub addrs: Vec<String>,
    /// Servers per block.
    pub coverage: Vec<usize>,
    /// Known servers.
    pub servers: Vec<ServerStatus>,
    /// Sessions open on this node.
    pub sessions: usize,
    /// Connected peers.
    pub peers: usize,
}

/// One known server.
#[derive(Debug, Clone, Serialize)]
pub struct ServerStatus {
    /// Its peer id.
    pub peer: String,
    /// Its blocks.
    pub blocks: [u32; 2],
    /// Its measured ms per block.
    pub ms_per_block: f64,
    /// Its open sessions.
    pub load: u32,
    /// Its free slots.
    pub free_slots: u32,
    /// Round trip from here, µs.
    pub rtt_us: Option<u64>,
    /// What generations from here measured, ms per block per decode step (round trip included).
    pub observed_ms_per_block: Option<f64>,
    /// Failures generations from here blamed on it, in all.
    pub failures: u32,
}

/// A running node.
pub struct Node {
    /// The node's ed25519 identity: its peer id, and what it signs with (commitments, receipts).
    key: odin_net::Keypair,
    net: Net,
    model: ModelId,
    config: ModelConfig,
    model_dir: PathBuf,
    threads: usize,
    /// Set once the node knows its blocks (at start, or after looking at the network with `--blocks auto`).
    server: OnceLock<Arc<Server>>,
    auto: Option<AutoConfig>,
    dir: Arc<Mutex<Directory>>,
    changed: Arc<Notify>,
    ms_per_block: OnceLock<f64>,
    /// Serialises moves between block ranges.
    moving: tokio::sync::Mutex<()>,
    /// The route the latest generation through this node runs on.
    in_use: Mutex<Option<Vec<Hop>>>,
    /// Providers that did not answer, and when.
    unreachable: Mutex<std::collections::HashMap<PeerId, Instant>>,
}

impl Node {
    /// Load the model (and the shard, when serving), start the swarm and the node's tasks.
    ///
    /// With [`NodeConfig::auto`], the node first looks at the network (gossip and the DHT),
    /// then serves the blocks that add most to its weakest coverage, and keeps rebalancing.
    pub async fn start(mut cfg: NodeConfig) -> Result<Arc<Node>> {
        let dir_path = cfg.model_dir.clone();
        let config = ModelConfig::from_file(&dir_path.join("config.json"))
            .map_err(|e| NodeError::Model(format!("{}: {e}", dir_path.display())))?;
        let layers = config.num_layers();
        let blocks = if cfg.auto.is_some() { None } else { cfg.blocks.clone() };
        let threads = cfg.threads;
        // Hashing and quantizing read the whole model: off the async threads.
        let (model, shard) = tokio::task::spawn_blocking(move || -> Result<(ModelId, Option<Shard>)> {
            let id = odin_format::model_id(&dir_path)
                .map_err(|e| NodeError::Model(format!("{}: {e}", dir_path.display())))?;
            let shard = match blocks {
                Some(r) => Some(Shard::load(&dir_path, Some(r), Options::threads(threads))?),
                None => None,
            };
            Ok((id, shard))
        })
        .await
        .map_err(|e| NodeError::Model(format!("loading failed: {e}")))??;
        if let Some(want) = cfg.expect_id {
            if want != model {
                return Err(NodeError::Model(format!(
                    "the files in {} hash to model {model}, not the claimed {want}; refusing to serve them",
                    cfg.model_dir.display()
                )));
            }
        }
        cfg.net.model = model;
        let key = odin_net::load_or_create_identity(&cfg.data_dir.join("identity.key"))?;
        let (net, mut events) = Net::start(key.clone(), cfg.net.clone()).await?;
        let ttl = cfg.announce_every * 3;
        let node = Arc::new(Node {
            key,
            net,
            model,
            config,
            model_dir: cfg.model_dir.clone(),
            threads,
            server: OnceLock::new(),
            auto: cfg.auto.clone(),
            dir: Arc::new(Mutex::new(Directory::new(layers, ttl))),
            changed: Arc::new(Notify::new()),
            ms_per_block: OnceLock::new(),
            moving: tokio::sync::Mutex::new(()),
            in_use: Mutex::new(None),
            unreachable: Mutex::new(std::collections::HashMap::new()),
        });

        // Network events feed the directory; weak, so the task ends with the node.
        let weak = Arc::downgrade(&node);
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                let Some(node) = weak.upgrade() else { return };
                node.on_event(ev).await;
            }
        });

        let shard = match (shard, &cfg.auto) {
            (Some(s), _) => Some(s),
            (None, Some(auto)) => {
                let range = node.choose_blocks(auto, !cfg.net.bootstrap.is_empty(), cfg.announce_every).await;
                tracing::info!("--blocks auto: serving blocks {}..{}", range.start, range.end);
                Some(node.load_shard(range).await?)
            }
            (None, None) => None,
        };
        if let Some(shard) = shard {
            let server = Arc::new(Server::new(shard, cfg.server.clone()));
            server.attach_net(node.net.clone());
            let s = server.clone();
            let ms = tokio::task::spawn_blocking(move || s.measure_ms_per_block()).await.unwrap_or(1.0);
            let _ = node.ms_per_block.set(ms);
            let _ = node.server.set(server.clone());
            let incoming = node.net.accept()?;
            tokio::spawn(async move {
                let mut incoming = incoming;
                while let Some((peer, stream)) = incoming.next().await {
                    tokio::spawn(server.clone().serve_stream(peer, stream));
                }
            });
            let r = node.serving().unwrap_or_default();
            node.net.provide(r.map(|b| block_key(&model, b)).collect()).await?;
            node.announce().await;
        }

        let weak = Arc::downgrade(&node);
        let every = cfg.announce_every;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(node) = weak.upgrade() else { return };
                if let Some(s) = node.server() {
                    s.reap();
                }
                node.announce().await;
                if let Ok(mut d) = node.dir.lock() {
                    d.expire();
                };
            }
        });
        if let Some(auto) = cfg.auto {
            let weak = Arc::downgrade(&node);
            let warm_up = ttl;
            tokio::spawn(async move {
                // Until announcements have had a full lifetime to arrive, the view is partial:
                // a server not heard from yet would look like a gap.
                tokio::time::sleep(warm_up).await;
                loop {
                    // Jitter, so nodes that saw the same change do not all act in the same instant.
                    let jitter = 0.75 + rand::random::<f64>() * 0.5;
                    tokio::time::sleep(auto.rebalance_every.mul_f64(jitter)).await;
                    let Some(node) = weak.upgrade() else { return };
                    node.rebalance().await;
                }
            });
        }
        Ok(node)
    }

    /// Blocks for a `--blocks auto` node: as many as fit, where the network is weakest.
    async fn choose_blocks(&self, auto: &AutoConfig, joining: bool, announce_every: Duration) -> Range<usize> {
        if joining {
            // Learn the network first: announcements arrive by gossip within an announce
            // interval; the DHT names the providers of every block for those that did not.
            self.wait_for(announce_every * 2, |d| (!d.entries().is_empty()).then_some(())).await;
            self.pull(&[]).await;
        }
        let num = alloc::blocks_that_fit(&self.config, auto.max_blocks, auto.memory_budget);
        let infos = self.live_servers();
        let t = alloc::block_throughputs(self.config.num_layers(), infos.iter().map(|(_, i)| i));
        let start = alloc::choose_start(&t, num);
        start..start + num
    }

    /// Servers with a live announcement in the directory, and what they announced.
    fn live_servers(&self) -> Vec<(PeerId, ServerInfo)> {
        self.dir.lock().map(|d| d.entries().into_iter().map(|(p, e)| (p, e.info)).collect()).unwrap_or_default()
    }

    async fn load_shard(&self, range: Range<usize>) -> Result<Shard> {
        let (dir, threads) = (self.model_dir.clone(), self.threads);
        tokio::task::spawn_blocking(move || Shard::load(&dir, Some(range), Options::threads(threads)))
            .await
            .map_err(|e| NodeError::Model(format!("loading failed: {e}")))?
            .map_err(NodeError::from)
    }

    /// One rebalancing round of a `--blocks auto` node: move if this node is the one that should.
    pub async fn rebalance(&self) {
        let Some(server) = self.server() else { return };
        if server.draining() {
            return;
        }
        let servers = self.live_servers();
        let Some(to) = alloc::rebalance(self.config.num_layers(), &servers, &self.peer_id()) else { return };
        if let Err(e) = self.move_to(to.clone()).await {
            tracing::warn!("cannot move to blocks {}..{}: {e}", to.start, to.end);
        }
    }

    /// Serve blocks `to` instead of the current ones, without a restart: the new blocks load and
    /// are announced before the old ones are withdrawn; sessions on dropped blocks are handed
    /// back to their clients at their next step (see [`Server::replace_shard`]).
    pub async fn move_to(&self, to: Range<usize>) -> Result<()> {
        let _one_at_a_time = self.moving.lock().await;
        let Some(server) = self.server() else {
            return Err(NodeError::NoRoute("this node serves nothing, so it has nothing to move".into()));
        };
        let from = server.range();
        if from == to {
            return Ok(());
        }
        tracing::info!("moving from blocks {}..{} to {}..{}", from.start, from.end, to.start, to.end);
        let shard = self.load_shard(to.clone()).await?;
        server.replace_shard(shard);
        self.net.provide(to.clone().map(|b| block_key(&self.model, b)).collect()).await?;
        self.announce().await;
        let dropped: Vec<_> = from.filter(|b| !to.contains(b)).map(|b| block_key(&self.model, b)).collect();
        self.net.withdraw(dropped).await?;
        self.changed.notify_waiters();
        Ok(())
    }

    /// Leave the network politely: take no new sessions, announce that, withdraw the provider
    /// records, and wait (at most `grace`) until every open session has been handed back to its
    /// client or closed. Returns the sessions still open when the grace ran out.
    pub async fn shutdown(&self, grace: Duration) -> usize {
        let Some(server) = self.server() else { return 0 };
        server.drain();
        self.announce().await;
        let r = server.range();
        let _ = self.net.withdraw(r.map(|b| block_key(&self.model, b)).collect()).await;
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let closed = server.closed();
            if server.idle() || tokio::time::timeout_at(deadline, closed).await.is_err() {
                return server.load();
            }
        }
    }

    async fn on_event(&self, ev: NetEvent) {
        match ev {
            NetEvent::Info(peer, info) => {
                if let Ok(mut d) = self.dir.lock() {
                    d.update(peer, info);
                }
                self.changed.notify_waiters();
            }
            NetEvent::Rtt(peer, rtt) => {
                if let Ok(mut d) = self.dir.lock() {
                    d.rtt(peer, rtt);
                }
            }
            NetEvent::Subscribed(_) => self.announce().await,
            NetEvent::Disconnected(peer) => {
                if let Ok(mut d) = self.dir.lock() {
                    d.remove(&peer);
                }
                self.changed.notify_waiters();
            }
        }
    }

    /// Blocks this node serves now.
    pub fn serving(&self) -> Option<Range<usize>> {
        self.server().map(|s| s.range())
    }

    /// The announcement of this node's server, if it serves.
    pub fn info(&self) -> Option<ServerInfo> {
        let s = self.server()?;
        let r = s.range();
        Some(ServerInfo {
            version: odin_net::wire::PROTOCOL_VERSION,
            peer: self.net.peer_id().to_string(),
            model: self.model.to_string(),
            start: r.start as u32,
            end: r.end as u32,
            ms_per_block: self.ms_per_block.get().copied().unwrap_or(1.0),
            load: s.load() as u32,
            // A draining server takes no new sessions, so routes stop naming it.
            free_slots: if s.draining() { 0 } else { s.free_slots() as u32 },
            addrs: self.net.addrs().iter().map(|a| a.to_string()).collect(),
            at_ms: now_ms(),
            auto: self.auto.is_some(),
        })
    }

    async fn announce(&self) {
        let Some(info) = self.info() else { return };
        if let Some(s) = self.server() {
            s.set_info(info.to_bytes());
        }
        // A node does not hear its own gossip: it knows itself directly.
        if let Ok(mut d) = self.dir.lock() {
            d.update(self.net.peer_id(), info.clone());
        }
        if let Err(e) = self.net.publish(&info).await {
            tracing::warn!("cannot announce: {e}");
        }
    }
    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.net.peer_id()
    }

    /// Sign `msg` with this node's identity key (ed25519); anyone checks it with
    /// [`Node::public_key`], which the peer id also names.
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>> {
        self.key.sign(msg).map_err(|e| NodeError::Identity(format!("cannot sign with this node's key: {e}")))
    }

    /// The public half of this node's identity.
    pub fn public_key(&self) -> odin_net::PublicKey {
        self.key.public()
    }

    /// The model id.
    pub fn model(&self) -> ModelId {
        self.model
    }

    /// The model's config.
    pub fn model_config(&self) -> &ModelConfig {
        &self.config
    }

    /// The model directory.
    pub fn model_dir(&self) -> &Path {
        &self.model_dir
    }

    /// The swarm handle.
    pub fn net(&self) -> &Net {
        &self.net
    }

    /// The local server, if this node serves blocks.
    pub fn server(&self) -> Option<&Arc<Server>> {
        self.server.get()
    }

    /// Tell the directory a request to `peer` failed.
    pub fn report_failure(&self, peer: &PeerId) {
        if let Ok(mut d) = self.dir.lock() {
            d.failed(peer);
        }
    }

    /// Tell the directory how fast `peer` turned out to be: µs per block per decode step.
    pub fn report_observed(&self, peer: &PeerId, us_per_block: f64) {
        if let Ok(mut d) = self.dir.lock() {
            d.observed(peer, us_per_block);
        }
    }

    /// Tell the directory a generation through `peer` succeeded (its backoff ends).
    pub fn report_success(&self, peer: &PeerId) {
        if let Ok(mut d) = self.dir.lock() {
            d.succeeded(peer);
        }
    }

    /// The route the latest generation started through this node runs on (before any failover
    /// or handoff it has not reached yet); `None` before the first.
    pub fn route_in_use(&self) -> Option<Vec<Hop>> {
        self.in_use.lock().ok()?.clone()
    }

    /// The current best route, if every block is covered.
    pub fn route(&self) -> Option<Vec<Hop>> {
        self.dir.lock().ok()?.route(&[])
    }

    /// Wait until every block is covered (and at least `min_servers` servers are known), for at most `timeout`.
    ///
    /// Gossip usually delivers the announcements; when it has not, the DHT
    /// names the providers of each uncovered block and they are asked directly.
    pub async fn wait_for_route(&self, min_servers: usize, timeout: Duration) -> Result<Vec<Hop>> {
        self.wait_for_route_avoiding(min_servers, &[], timeout).await
    }

    /// Wait until `found` finds something in the directory (checked at once and after every
    /// change), for at most `timeout`.
    async fn wait_for<T>(&self, timeout: Duration, found: impl Fn(&Directory) -> Option<T>) -> Option<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if let Some(t) = self.dir.lock().ok().and_then(|d| found(&d)) {
                return Some(t);
            }
            tokio::time::timeout_at(deadline, notified).await.ok()?;
        }
    }

    /// The cheapest chain over blocks `span` avoiding `avoid`, waiting up to `timeout` for one.
    pub async fn wait_for_span(&self, span: Range<usize>, avoid: &[PeerId], timeout: Duration) -> Result<Vec<Hop>> {
        self.wait_for(timeout, |d| d.route_span(span.clone(), avoid)).await.ok_or_else(|| {
            NodeError::NoRoute(format!(
                "no server took over blocks {}..{} within {:.0} s; start a node serving them",
                span.start,
                span.end,
                timeout.as_secs_f64()
            ))
        })
    }

    /// Wait until the directory knows `peer` as a server, for at most `timeout`.
    pub async fn wait_for_server(&self, peer: &PeerId, timeout: Duration) -> Result<()> {
        self.wait_for(timeout, |d| d.knows(peer).then_some(())).await.ok_or_else(|| {
            NodeError::NoRoute(format!(
                "server {peer} did not announce itself within {:.0} s; is it running and bootstrapped to this network?",
                timeout.as_secs_f64()
            ))
        })
    }

    /// [`Node::wait_for_route`], never through the servers in `avoid`.
    pub async fn wait_for_route_avoiding(
        &self,
        min_servers: usize,
        avoid: &[PeerId],
        timeout: Duration,
    ) -> Result<Vec<Hop>> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            let (route, known, missing) = {
                let d = self.dir.lock().map_err(|_| NodeError::NoRoute("directory poisoned".into()))?;
                let cov = d.coverage();
                let missing: Vec<usize> = (0..cov.len()).filter(|&b| cov[b] == 0).collect();
                (d.route(avoid), d.entries().len(), missing)
            };
            if let Some(r) = route {
                if known >= min_servers {
                    return Ok(r);
                }
            }
            if Instant::now() >= deadline {
                return Err(NodeError::NoRoute(format!(
                    "after {:.0} s, {known} server(s) known ({} set aside after failures) and blocks {missing:?} \
                     uncovered; start nodes serving them",
                    timeout.as_secs_f64(),
                    avoid.len()
                )));
            }
            // Ask the DHT meanwhile, but an announcement arriving ends the wait at once.
            let ask = async {
                self.pull(&missing).await;
                tokio::time::sleep(Duration::from_millis(250)).await;
            };
            tokio::select! {
                _ = notified => {}
                _ = ask => {}
                _ = tokio::time::sleep_until(deadline.into()) => {}
            }
        }
    }

    /// Ask the DHT who serves `blocks` (all blocks when empty) and fetch unknown servers' announcements directly.
    async fn pull(&self, blocks: &[usize]) {
        let all: Vec<usize> = (0..self.config.num_layers()).collect();
        let blocks = if blocks.is_empty() { &all[..] } else { blocks };
        for &b in blocks {
            // Provider records outlive their servers, and a dead server's dial can hang:
            // every lookup is bounded, and a peer that did not answer is not asked again soon.
            let Ok(Ok(peers)) =
                tokio::time::timeout(PULL_DEADLINE, self.net.providers(block_key(&self.model, b))).await
            else {
                continue;
            };
            for p in peers {
                let known = self.dir.lock().map(|d| d.knows(&p)).unwrap_or(true);
                let shunned =
                    self.unreachable.lock().map(|u| u.get(&p).is_some_and(|t| t.elapsed() < SHUN)).unwrap_or(false);
                if known || shunned || p == self.peer_id() {
                    continue;
                }
                match tokio::time::timeout(PULL_DEADLINE, fetch_info(self, p)).await {
                    Ok(Ok(info)) if info.peer == p.to_string() && info.model == self.model.to_string() => {
                        if let Ok(mut d) = self.dir.lock() {
                            d.update(p, info);
                        }
                    }
                    _ => {
                        if let Ok(mut u) = self.unreachable.lock() {
                            u.retain(|_, t| t.elapsed() < SHUN);
                            u.insert(p, Instant::now());
                        }
                    }
                }
            }
        }
    }

    /// Generate through the network: find a route, run the request, stream tokens to `on_token`.
    ///
    /// When a server dies, stalls past the deadline, answers garbage or refuses, the generation
    /// routes around it and continues (see [`generate_on`]); the tokens are those a fault-free
    /// run gives. It gives up after [`MAX_FAILOVERS`] reroutes or when no other route appears.
    pub async fn generate(&self, req: &GenerateRequest, mut on_token: impl FnMut(u32) -> bool) -> Result<Generation> {
        let mut progress = Progress::default();
        // Servers that failed are skipped by the directory until they announce themselves again
        // (a dead one never does) and their backoff has passed; a transient failure costs a
        // server this generation only until then.
        let mut why: Vec<String> = Vec::new();
        loop {
            let route = match self.wait_for_route(1, Duration::from_secs(10)).await {
                Ok(r) => r,
                Err(NodeError::NoRoute(m)) if !why.is_empty() => {
                    return Err(NodeError::NoRoute(format!("{m}; failed on the way: {}", why.join("; "))))
                }
                Err(e) => return Err(e),
            };
            if let Ok(mut u) = self.in_use.lock() {
                *u = Some(route.clone());
            }
            match generate_on(self, &route, req, &mut progress, &mut on_token).await {
                Ok(mut g) => {
                    g.failovers = why.len() as u32;
                    g.failures = why;
                    return Ok(g);
                }
                Err(Failure { peer: Some(p), error }) if why.len() < MAX_FAILOVERS => {
                    tracing::warn!("server {p} failed ({error}); routing around it");
                    why.push(format!("{p} ({error})"));
                }
                Err(f) => return Err(f.error),
            }
        }
    }

    /// A snapshot for `/status`.
    pub async fn status(&self) -> Status {
        let peers = self.net.peers().await.map(|p| p.len()).unwrap_or(0);
        let (coverage, servers) = match self.dir.lock() {
            Ok(d) => (
                d.coverage(),
                d.entries()
                    .into_iter()
                    .map(|(p, e)| ServerStatus {
                        peer: p.to_string(),
                        blocks: [e.info.start, e.info.end],
                        ms_per_block: e.info.ms_per_block,
                        load: e.info.load,
                        free_slots: e.info.free_slots,
                        rtt_us: e.rtt.map(|r| r.as_micros() as u64),
                        observed_ms_per_block: e.observed_us_per_block.map(|us| us / 1e3),
                        failures: e.blamed,
                    })
                    .collect(),
            ),
            Err(_) => (Vec::new(), Vec::new()),
        };
        Status {
            peer: self.peer_id().to_string(),
            model: self.model.to_string(),
            serving: self.serving().map(|r| [r.start, r.end]),
            addrs: self.net.addrs().iter().map(|a| a.to_string()).collect(),
            coverage,
            servers,
            sessions: self.server().map_or(0, |s| s.load()),
            peers,
        }
    }
}
