//! A running node: its swarm, its shard (if it serves one), its directory of servers.
//!
//! A prompt's walk: [`Node::generate`] asks the [`Directory`] for the cheapest
//! chain, [`crate::client::generate_on`] opens a session on every hop, and
//! each hop's [`Server`] runs its blocks on the int8 engine; the last samples.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use odin_engine::{Options, Shard};
use odin_format::{ModelConfig, ModelId};
use odin_net::{block_key, now_ms, Net, NetConfig, NetEvent, PeerId, ServerInfo};
use serde::Serialize;
use tokio::sync::Notify;

use crate::client::{fetch_info, generate_on, Failure, GenerateRequest, Generation, Progress};
use crate::directory::{Directory, Hop};
use crate::error::{NodeError, Result};
use crate::server::{Server, ServerConfig};

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
}

/// A running node.
pub struct Node {
    net: Net,
    model: ModelId,
    config: ModelConfig,
    model_dir: PathBuf,
    server: Option<Arc<Server>>,
    dir: Arc<Mutex<Directory>>,
    changed: Arc<Notify>,
    ms_per_block: f64,
}

impl Node {
    /// Load the model (and the shard, when serving), start the swarm and the node's tasks.
    pub async fn start(mut cfg: NodeConfig) -> Result<Arc<Node>> {
        let dir_path = cfg.model_dir.clone();
        let config = ModelConfig::from_file(&dir_path.join("config.json"))
            .map_err(|e| NodeError::Model(format!("{}: {e}", dir_path.display())))?;
        let layers = config.num_layers();
        let blocks = cfg.blocks.clone();
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
        let (net, mut events) = Net::start(key, cfg.net.clone()).await?;
        let server = shard.map(|s| Arc::new(Server::new(s, cfg.server.clone())));
        let ms_per_block = match &server {
            Some(s) => {
                let s = s.clone();
                tokio::task::spawn_blocking(move || s.measure_ms_per_block()).await.unwrap_or(1.0)
            }
            None => 0.0,
        };
        let ttl = cfg.announce_every * 3;
        let node = Arc::new(Node {
            net,
            model,
            config,
            model_dir: cfg.model_dir.clone(),
            server,
            dir: Arc::new(Mutex::new(Directory::new(layers, ttl))),
            changed: Arc::new(Notify::new()),
            ms_per_block,
        });

        if let Some(server) = node.server.clone() {
            let incoming = node.net.accept()?;
            let serving = server.clone();
            tokio::spawn(async move {
                let server = serving;
                let mut incoming = incoming;
                while let Some((_peer, stream)) = incoming.next().await {
                    tokio::spawn(server.clone().serve_stream(stream));
                }
            });
            let r = server.range();
            node.net.provide(r.map(|b| block_key(&model, b)).collect()).await?;
            node.announce().await;
        }

        // Network events feed the directory; weak, so the task ends with the node.
        let weak = Arc::downgrade(&node);
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                let Some(node) = weak.upgrade() else { return };
                node.on_event(ev).await;
            }
        });
        let weak = Arc::downgrade(&node);
        let every = cfg.announce_every;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(node) = weak.upgrade() else { return };
                if let Some(s) = &node.server {
                    s.reap();
                }
                node.announce().await;
                if let Ok(mut d) = node.dir.lock() {
                    d.expire();
                };
            }
        });
        Ok(node)
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
            }
        }
    }

    /// The announcement of this node's server, if it serves.
    pub fn info(&self) -> Option<ServerInfo> {
        let s = self.server.as_ref()?;
        let r = s.range();
        Some(ServerInfo {
            version: odin_net::wire::PROTOCOL_VERSION,
            peer: self.net.peer_id().to_string(),
            model: self.model.to_string(),
            start: r.start as u32,
            end: r.end as u32,
            ms_per_block: self.ms_per_block,
            load: s.load() as u32,
            free_slots: s.free_slots() as u32,
            addrs: self.net.addrs().iter().map(|a| a.to_string()).collect(),
            at_ms: now_ms(),
        })
    }

    async fn announce(&self) {
        let Some(info) = self.info() else { return };
        if let Some(s) = &self.server {
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
        self.server.as_ref()
    }

    /// Tell the directory a request to `peer` failed.
    pub fn report_failure(&self, peer: &PeerId) {
        if let Ok(mut d) = self.dir.lock() {
            d.failed(peer);
        }
    }

    /// Tell the directory a generation through `peer` succeeded (its backoff ends).
    pub fn report_success(&self, peer: &PeerId) {
        if let Ok(mut d) = self.dir.lock() {
            d.succeeded(peer);
        }
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
            self.pull(&missing).await;
            let _ = tokio::time::timeout(Duration::from_millis(250), notified).await;
        }
    }

    /// Ask the DHT who serves `blocks` (all blocks when empty) and fetch unknown servers' announcements directly.
    async fn pull(&self, blocks: &[usize]) {
        let all: Vec<usize> = (0..self.config.num_layers()).collect();
        let blocks = if blocks.is_empty() { &all[..] } else { blocks };
        for &b in blocks {
            let Ok(peers) = self.net.providers(block_key(&self.model, b)).await else { return };
            for p in peers {
                let known = self.dir.lock().map(|d| d.knows(&p)).unwrap_or(true);
                if known || p == self.peer_id() {
                    continue;
                }
                if let Ok(info) = fetch_info(self, p).await {
                    if info.peer == p.to_string() && info.model == self.model.to_string() {
                        if let Ok(mut d) = self.dir.lock() {
                            d.update(p, info);
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
        let mut avoid: Vec<PeerId> = Vec::new();
        loop {
            let route = self.wait_for_route_avoiding(1, &avoid, Duration::from_secs(10)).await?;
            match generate_on(self, &route, req, &mut progress, &mut on_token).await {
                Ok(mut g) => {
                    g.failovers = avoid.len() as u32;
                    return Ok(g);
                }
                Err(Failure { peer: Some(p), error }) if avoid.len() < MAX_FAILOVERS => {
                    tracing::warn!("server {p} failed ({error}); routing around it");
                    avoid.push(p);
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
                    })
                    .collect(),
            ),
            Err(_) => (Vec::new(), Vec::new()),
        };
        Status {
            peer: self.peer_id().to_string(),
            model: self.model.to_string(),
            serving: self.server.as_ref().map(|s| [s.range().start, s.range().end]),
            addrs: self.net.addrs().iter().map(|a| a.to_string()).collect(),
            coverage,
            servers,
            sessions: self.server.as_ref().map_or(0, |s| s.load()),
            peers,
        }
    }
}
