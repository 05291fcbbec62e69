//! A running node wires the parts together: its swarm, its [`Router`] (fed by what the swarm
//! hears), its [`Server`] when it serves blocks, and a [`Client`] for each generation.
//!
//! A prompt's walk: [`Node::generate`] hands it to a [`Client`], which asks the [`Router`] for
//! the cheapest chain and opens a session on every hop; each hop's [`Server`] runs its blocks
//! on the int8 engine, and the last samples.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use odin_engine::{Options, Shard};
use odin_format::{ModelConfig, ModelId};
use odin_net::{block_key, verify_topic, Net, NetEvent, PeerId, ServerInfo};
use serde::Serialize;

use crate::alloc;
use crate::audit::{AuditConfig, AuditReport, Auditor, Heard};
use crate::claims::Signer;
use crate::client::Client;
use crate::config::{AutoConfig, NodeConfig};
use crate::directory::{Directory, Hop};
use crate::error::{NodeError, Result};
use crate::keeper::Keeper;
use crate::request::{GenerateRequest, Generation};
use crate::router::Router;
use crate::server::Server;

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
    /// This node's ledger, if it keeps one.
    pub ledger: Option<LedgerStatus>,
}

/// A node's ledger, for `/status`: amounts in tokens.
#[derive(Debug, Clone, Serialize)]
pub struct LedgerStatus {
    /// The network's name and id.
    pub network: String,
    /// Entries held.
    pub entries: u64,
    /// This node's spendable balance.
    pub balance: f64,
    /// This node's bond (bonded and unbonding).
    pub stake: f64,
    /// Earned for serving and training.
    pub earned_work: f64,
    /// Minted for uptime.
    pub earned_uptime: f64,
    /// Burned by slashes.
    pub slashed: f64,
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
    /// Its reputation here, 0 to 1 (0.5 for a stranger).
    pub reputation: f64,
    /// Its balance in this node's ledger, tokens.
    pub balance: Option<f64>,
    /// Its bond in this node's ledger, tokens.
    pub stake: Option<f64>,
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
    router: Arc<Router>,
    ms_per_block: OnceLock<f64>,
    /// Serialises moves between block ranges.
    moving: tokio::sync::Mutex<()>,
    /// Checks the claims of the servers this node's generations use, and audits their steps.
    auditor: Arc<Auditor>,
    /// Whether this node's server lies (it then announces itself faster than it is, as a
    /// cheat out for work would).
    cheats: bool,
    /// Counts the bans this node made on hearing a fraud proof; [`Node::wait_banned`] waits on it.
    bans: tokio::sync::watch::Sender<u64>,
    /// This node's own fraud proofs whose liar already lost its gossip standing.
    penalized: std::sync::atomic::AtomicUsize,
    /// The node's ledger, if it keeps one.
    keeper: Option<Arc<Keeper>>,
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
        let key = odin_net::load_or_create_identity_with(&cfg.data_dir.join("identity.key"), cfg.identity_bits)?;
        let (net, mut events) = Net::start(key.clone(), cfg.net.clone()).await?;
        let ttl = cfg.announce_every * 3;
        let router = Arc::new(Router::new(model, net.peer_id(), layers, ttl, Arc::new(net.clone())));
        router.require_identity_bits(cfg.identity_bits);
        router.set_policy(crate::reputation::Policy { probation_audits: cfg.probation_audits, ..Default::default() });
        // The peers a node was started with are its pre-trusted set: their word counts in full.
        for peer in cfg.net.bootstrap.iter().filter_map(odin_net::peer_of) {
            router.trust(peer);
        }
        let signer = Signer::new(key.clone(), model);
        let auditor = Arc::new(Auditor::new(
            AuditConfig { p: cfg.audit, model_dir: Some(cfg.model_dir.clone()) },
            model,
            Some(signer),
        ));
        let keeper = match cfg.ledger.clone() {
            Some(lc) => {
                let boot = cfg.net.bootstrap.iter().find_map(odin_net::peer_of);
                Some(Keeper::start(&key, &cfg.data_dir, lc, boot, net.clone(), auditor.clone(), layers).await?)
            }
            None => None,
        };
        let node = Arc::new(Node {
            key,
            net,
            model,
            config,
            model_dir: cfg.model_dir.clone(),
            threads,
            server: OnceLock::new(),
            auto: cfg.auto.clone(),
            router,
            ms_per_block: OnceLock::new(),
            moving: tokio::sync::Mutex::new(()),
            auditor,
            cheats: cfg.server.cheat.is_some(),
            bans: tokio::sync::watch::Sender::new(0),
            penalized: std::sync::atomic::AtomicUsize::new(0),
            keeper,
        });

        // Every node hears the fraud proofs about the model's servers, and judges them itself.
        node.net.subscribe(&verify_topic(&model)).await?;

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
            let server = Arc::new(Server::new(shard, cfg.server.clone(), node.key.clone()));
            server.attach_transport(Arc::new(node.net.clone()));
            if let Some(k) = &node.keeper {
                server.require_receipts();
                let s = Arc::downgrade(&server);
                k.on_receipt(move |peer| {
                    if let Some(s) = s.upgrade() {
                        s.paid(peer);
                    }
                });
            }
            let s = server.clone();
            let ms = tokio::task::spawn_blocking(move || s.measure_ms_per_block()).await.unwrap_or(1.0);
            let _ = node.ms_per_block.set(ms);
            let _ = node.server.set(server.clone());
            let incoming = node.net.accept()?;
            tokio::spawn(async move {
                let mut incoming = incoming;
                while let Some((peer, stream)) = incoming.next().await {
                    tokio::spawn(server.clone().serve_stream(peer, Box::new(stream)));
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
                node.router.expire();
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
            self.router.wait_for(announce_every * 2, |d| (!d.entries().is_empty()).then_some(())).await;
            self.router.pull(&[]).await;
        }
        let num = alloc::blocks_that_fit(&self.config, auto.max_blocks, auto.memory_budget);
        let infos = self.router.live_servers();
        let t = alloc::block_throughputs(self.config.num_layers(), infos.iter().map(|(_, i)| i));
        let start = alloc::choose_start(&t, num);
        start..start + num
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
        let servers = self.router.live_servers();
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
        self.router.touch();
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
            NetEvent::Info(peer, info) => self.router.heard(peer, info),
            NetEvent::Rtt(peer, rtt) => self.router.rtt(peer, rtt),
            NetEvent::Subscribed(_) => self.announce().await,
            NetEvent::Disconnected(peer) => self.router.gone(&peer),
            NetEvent::Gossip { topic, source, data } if topic == verify_topic(&self.model) => {
                // Recomputing the step is engine work: off the network thread.
                let auditor = self.auditor.clone();
                let proof = data.clone();
                let heard = tokio::task::spawn_blocking(move || auditor.judge_proof(&data, source)).await;
                match heard {
                    Ok(Heard::Convicts(p)) => {
                        tracing::warn!("a fraud proof from {source} shows {p} cheated: banned");
                        self.ban(p).await;
                        if let Some(k) = &self.keeper {
                            k.slash(&p, proof);
                        }
                    }
                    Ok(Heard::FalseAccusation(p)) => {
                        tracing::warn!("a fraud proof from {p} does not reproduce: the accuser is banned");
                        self.ban(p).await;
                    }
                    Ok(Heard::Replay) => tracing::debug!("a fraud proof from {source} about a step already judged"),
                    Ok(Heard::Unchecked(why)) => tracing::info!("a fraud proof from {source} left unchecked: {why}"),
                    Err(e) => tracing::warn!("judging a fraud proof failed: {e}"),
                }
            }
            NetEvent::Gossip { topic, source, data } if self.keeper.as_ref().is_some_and(|k| k.is_topic(&topic)) => {
                if let Some(k) = &self.keeper {
                    k.on_heads(source, &data).await;
                }
            }
            // A serving node follows no other service's topic.
            NetEvent::Gossip { topic, source, .. } => tracing::debug!("ignored gossip on {topic} from {source}"),
        }
    }

    /// Blocks this node serves now.
    pub fn serving(&self) -> Option<Range<usize>> {
        self.server().map(|s| s.range())
    }

    /// The announcement of this node's server, if it serves.
    pub fn info(&self) -> Option<ServerInfo> {
        let mut ms_per_block = self.ms_per_block.get().copied().unwrap_or(1.0);
        if self.cheats {
            ms_per_block /= 4.0;
        }
        let addrs = self.net.addrs();
        let mut info = self.server()?.announcement(self.peer_id(), ms_per_block, &addrs, self.auto.is_some());
        info.opinions = self.router.opinions();
        Some(info)
    }

    async fn announce(&self) {
        let Some(info) = self.info() else { return };
        if let Some(s) = self.server() {
            s.set_info(info.to_bytes());
        }
        // A node does not hear its own gossip: it knows itself directly.
        self.router.heard(self.net.peer_id(), info.clone());
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

    /// The router: known servers, routes, backoff.
    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// The route the latest generation started through this node runs on (before any failover
    /// or handoff it has not reached yet); `None` before the first.
    pub fn route_in_use(&self) -> Option<Vec<Hop>> {
        self.router.route_in_use()
    }

    /// The current best route, if every block is covered.
    pub fn route(&self) -> Option<Vec<Hop>> {
        self.router.route()
    }

    /// Wait until every block is covered (and at least `min_servers` servers are known), for
    /// at most `timeout` (see [`Router::wait_for_route_avoiding`], which can also avoid servers).
    pub async fn wait_for_route(&self, min_servers: usize, timeout: Duration) -> Result<Vec<Hop>> {
        self.router.wait_for_route_avoiding(min_servers, &[], timeout).await
    }

    /// Wait until the directory knows `peer` as a server, for at most `timeout`.
    pub async fn wait_for_server(&self, peer: &PeerId, timeout: Duration) -> Result<()> {
        self.router.wait_for_server(peer, timeout).await
    }

    /// Generate through the network (see [`Client::generate`]): this node's own blocks, if it
    /// serves, run in-process.
    pub async fn generate(&self, req: &GenerateRequest, on_token: impl FnMut(u32) -> bool) -> Result<Generation> {
        if let Some(s) = self.server() {
            self.auditor.hold(s.shard());
        }
        let g = Client::new(self.router.clone(), self.server().cloned())
            .with_auditor(self.auditor.clone())
            .generate(req, on_token)
            .await;
        self.publish_proofs().await;
        let work = self.auditor.take_work();
        if let Some(k) = &self.keeper {
            k.countersign(work).await;
        }
        g
    }

    /// The node's ledger, if it keeps one.
    pub fn ledger(&self) -> Option<&Arc<Keeper>> {
        self.keeper.as_ref()
    }

    /// Ban `peer` everywhere this node can: never routed to, its gossip dropped.
    async fn ban(&self, peer: PeerId) {
        self.router.ban(&peer);
        if let Err(e) = self.net.penalize(peer).await {
            tracing::warn!("cannot lower {peer}'s gossip score: {e}");
        }
        self.bans.send_modify(|n| *n += 1);
    }

    /// Spread the fraud proofs this node's audits found since the last time, so every node
    /// can check them and ban the liar; the liars they convict lose their gossip standing too.
    async fn publish_proofs(&self) {
        let topic = verify_topic(&self.model);
        for proof in self.auditor.proofs().iter().skip(self.penalized.load(std::sync::atomic::Ordering::Relaxed)) {
            if let Ok(p) = odin_net::peer_from_wire(&proof.claim.server) {
                if let Err(e) = self.net.penalize(p).await {
                    tracing::warn!("cannot lower {p}'s gossip score: {e}");
                }
            }
            self.penalized.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        for bytes in self.auditor.unpublished() {
            if let Some(k) = &self.keeper {
                let accused =
                    odin_proto::Envelope::<odin_proto::verify::Gossip>::from_bytes(&bytes).ok().and_then(|e| {
                        match e.msg {
                            odin_proto::verify::Gossip::Proof(p) => odin_net::peer_from_wire(&p.claim.server).ok(),
                        }
                    });
                if let Some(liar) = accused {
                    k.slash(&liar, bytes.clone());
                }
            }
            if let Err(e) = self.net.publish_on(&topic, bytes).await {
                tracing::warn!("cannot spread a fraud proof: {e}");
            }
        }
    }

    /// What this node's verification of other servers has done and found.
    pub fn audit_report(&self) -> AuditReport {
        self.auditor.report()
    }

    /// `peer`'s gossipsub score at this node ([`odin_net::swarm::BANNED_SCORE`] once banned).
    pub async fn gossip_score(&self, peer: &PeerId) -> Result<Option<f64>> {
        Ok(self.net.gossip_score(*peer).await?)
    }

    /// Whether this node has banned `peer` (caught lying, by itself or by a proof it checked).
    pub fn has_banned(&self, peer: &PeerId) -> bool {
        self.router.read(|d| d.is_banned(peer)).unwrap_or(false)
    }

    /// Wait until this node has banned `peer`, at most `timeout`; whether it has.
    pub async fn wait_banned(&self, peer: &PeerId, timeout: Duration) -> bool {
        // Subscribed before looking, so a ban between the look and the wait is not missed.
        let mut bans = self.bans.subscribe();
        let banned = async {
            while !self.has_banned(peer) {
                if bans.changed().await.is_err() {
                    return false;
                }
            }
            true
        };
        tokio::time::timeout(timeout, banned).await.unwrap_or(false)
    }

    /// The fraud proofs this node's audits found.
    pub fn audit_proofs(&self) -> Vec<odin_proto::verify::Proof> {
        self.auditor.proofs()
    }

    /// A snapshot for `/status`.
    pub async fn status(&self) -> Status {
        let peers = self.net.peers().await.map(|p| p.len()).unwrap_or(0);
        let (coverage, mut servers) = self.router.read(|d| (d.coverage(), server_statuses(d))).unwrap_or_default();
        let books = self.keeper.as_ref().and_then(|k| k.books().ok());
        let tok = |v: u64| v as f64 / odin_ledger::MICRO as f64;
        if let Some(b) = &books {
            for s in &mut servers {
                let acct =
                    s.peer.parse::<PeerId>().ok().as_ref().and_then(odin_ledger::account_of).map(|k| b.account(&k));
                s.balance = acct.as_ref().map(|a| tok(a.balance));
                s.stake = acct.as_ref().map(|a| tok(a.at_stake()));
            }
        }
        let ledger = match (&self.keeper, &books) {
            (Some(k), Some(b)) => {
                let a = odin_ledger::account_of(&self.peer_id()).map(|me| b.account(&me)).unwrap_or_default();
                Some(LedgerStatus {
                    network: k.network().to_string(),
                    entries: k.len().unwrap_or(0),
                    balance: tok(a.balance),
                    stake: tok(a.at_stake()),
                    earned_work: tok(a.earned_serving + a.earned_training),
                    earned_uptime: tok(a.earned_uptime),
                    slashed: tok(a.slashed),
                })
            }
            _ => None,
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
            ledger,
        }
    }
}

/// What the directory knows of each server, for `/status`.
fn server_statuses(d: &Directory) -> Vec<ServerStatus> {
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
            reputation: d.reputation().score(&p),
            balance: None,
            stake: None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::ServerConfig;
    use crate::testmodel::{shard, MODEL};

    #[test]
    fn a_server_announces_its_blocks_and_no_slots_once_it_drains() {
        let server = Server::new(
            shard(1..3),
            ServerConfig { max_sessions: 5, ..ServerConfig::default() },
            odin_net::Keypair::generate_ed25519(),
        );
        let (peer, addr) = (PeerId::random(), "/ip4/127.0.0.1/tcp/9".parse().unwrap());
        let info = server.announcement(peer, 0.25, &[addr], true);
        assert_eq!((info.start, info.end, info.free_slots, info.load), (1, 3, 5, 0));
        assert_eq!((&info.peer, &info.model), (&peer.to_string(), &MODEL.to_string()));
        // What it announces is what a peer accepts.
        assert_eq!(ServerInfo::from_bytes(&info.to_bytes()).ok().map(|i| i.end), Some(3));
        assert_eq!((info.ms_per_block, info.auto, info.addrs), (0.25, true, vec!["/ip4/127.0.0.1/tcp/9".to_string()]));
        server.drain();
        assert_eq!(server.announcement(peer, 0.25, &[], false).free_slots, 0, "routes stop naming it");
    }

    #[test]
    fn the_status_shows_what_the_directory_knows_and_measured() {
        let server = Server::new(shard(0..2), ServerConfig::default(), odin_net::Keypair::generate_ed25519());
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut d = Directory::new(4, Duration::from_secs(60));
        d.update(a, server.announcement(a, 2.0, &[], false));
        d.update(b, ServerInfo { start: 2, end: 4, ..server.announcement(b, 3.0, &[], false) });
        d.rtt(a, Duration::from_micros(1500));
        d.observed(&a, 4000.0);
        d.failed(&b);
        let s = server_statuses(&d);
        let by = |p: PeerId| s.iter().find(|x| x.peer == p.to_string()).unwrap();
        assert_eq!(
            (by(a).blocks, by(a).rtt_us, by(a).observed_ms_per_block, by(a).failures),
            ([0, 2], Some(1500), Some(4.0), 0)
        );
        assert_eq!((by(b).blocks, by(b).ms_per_block, by(b).rtt_us, by(b).failures), ([2, 4], 3.0, None, 1));
    }
}
