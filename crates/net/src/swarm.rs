//! The libp2p side of a node: transports, behaviours and the event loop.
//!
//! The swarm runs in its own task. The rest of the node talks to it through a
//! [`Net`] handle (commands over a channel) and hears back through
//! [`NetEvent`]s. Tensors never go through this loop: the shard protocol runs
//! on direct streams opened with [`Net::open_stream`], so a hop costs one
//! stream read and write, not a round trip through the event loop.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance};
use libp2p::identity::Keypair;
use libp2p::kad::{self, store::MemoryStore, GetProvidersOk, QueryId, QueryResult};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{autonat, dcutr, identify, mdns, noise, ping, relay, tcp, upnp, yamux, Multiaddr, PeerId, StreamProtocol};
use odin_format::ModelId;
use odin_proto::infer::Inference;
use odin_proto::{ProtoError, Service};
use tokio::sync::{mpsc, oneshot};

use crate::error::{NetError, Result};
use crate::info::ServerInfo;

/// The shard protocol: inference sessions and activations on direct streams (the stream
/// protocol id of `odin_proto::infer::Inference`).
pub const SHARD_PROTOCOL: StreamProtocol = StreamProtocol::new(<Inference as Service>::PROTOCOL_ID);
/// A QUIC connection that has heard nothing from its peer for this long is closed. A peer that
/// died without a word (a killed process, a host gone) is noticed within QUIC_IDLE +
/// QUIC_KEEP_ALIVE of its death (a keep-alive sent after it restarts the idle timer), 1.25 s,
/// under the client's 2 s stall floor. Four keep-alive intervals, so a few lost keep-alives
/// do not close a live connection; on a slow path quinn stretches it to three probe timeouts.
pub const QUIC_IDLE: Duration = Duration::from_millis(1000);
/// How often an otherwise idle QUIC connection sends a keep-alive.
pub const QUIC_KEEP_ALIVE: Duration = Duration::from_millis(250);
/// How often each connection is pinged: the round-trip times feed routing, and on TCP, where
/// the transport has no keep-alive of its own, a ping is what notices a silent peer.
pub const PING_EVERY: Duration = Duration::from_secs(1);
/// A ping unanswered this long closes its connection (a peer frozen, or a host gone without a
/// reset), so streams over it fail and the hop before it reports it.
pub const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the first attempt to open a stream may take before it is made again (see
/// [`Net::open_stream`]); a stream on a live connection opens in one round trip.
const OPEN_ATTEMPT: Duration = Duration::from_millis(500);
/// ODIN's own DHT, kept apart from other libp2p networks.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/odin/kad/1.0.0");

/// How a node's swarm is set up.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Addresses to listen on (TCP and QUIC).
    pub listen: Vec<Multiaddr>,
    /// Peers to join through (each with its `/p2p/` id); none for the genesis node.
    pub bootstrap: Vec<Multiaddr>,
    /// The model whose announcements this node follows.
    pub model: ModelId,
    /// Find peers on the LAN with mDNS.
    pub mdns: bool,
    /// Ask the router for a port mapping with UPnP.
    pub upnp: bool,
    /// Act as a DHT server (answer queries, store provider records); servers do, pure clients need not.
    pub dht_server: bool,
    /// Lifetime of a provider record; they are republished well before it ends.
    pub record_ttl: Duration,
}

impl NetConfig {
    /// Loopback-only defaults for `model` (tests and `odin swarm`).
    pub fn loopback(model: ModelId) -> Self {
        Self {
            listen: vec![
                "/ip4/127.0.0.1/tcp/0".parse().unwrap_or_else(|_| Multiaddr::empty()),
                "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap_or_else(|_| Multiaddr::empty()),
            ],
            bootstrap: Vec::new(),
            model,
            mdns: false,
            upnp: false,
            dht_server: true,
            record_ttl: Duration::from_secs(300),
        }
    }
}

/// What the swarm tells the node.
#[derive(Debug)]
pub enum NetEvent {
    /// A valid server announcement for our model arrived over gossip.
    Info(PeerId, ServerInfo),
    /// A peer subscribed to our model's announcements (a good time to announce).
    Subscribed(PeerId),
    /// A fresh round-trip time to a peer.
    Rtt(PeerId, Duration),
    /// The last connection to a peer closed.
    Disconnected(PeerId),
    /// A message on a topic joined with [`Net::subscribe`], signed by `source` (gossipsub
    /// checked the signature); what it says is for the subscriber to check.
    Gossip {
        /// The topic's name.
        topic: String,
        /// The peer that signed and first published it.
        source: PeerId,
        /// Its bytes.
        data: Vec<u8>,
    },
}

enum Command {
    Provide(Vec<kad::RecordKey>),
    Withdraw(Vec<kad::RecordKey>),
    Providers(kad::RecordKey, oneshot::Sender<HashSet<PeerId>>),
    Publish(Vec<u8>),
    Subscribe(String),
    PublishOn(String, Vec<u8>, oneshot::Sender<Result<()>>),
    Dial(Multiaddr),
    Peers(oneshot::Sender<Vec<PeerId>>),
    Penalize(PeerId),
    Score(PeerId, oneshot::Sender<Option<f64>>),
}

/// The gossipsub application score of a proven cheater: far under the graylist threshold
/// (−80 by default), so nothing it sends on any topic is handled or forwarded any more.
pub const BANNED_SCORE: f64 = -1000.0;

/// A handle on a running swarm.
#[derive(Clone)]
pub struct Net {
    peer: PeerId,
    cmd: mpsc::Sender<Command>,
    control: libp2p_stream::Control,
    addrs: Arc<Mutex<Vec<Multiaddr>>>,
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    kad: kad::Behaviour<MemoryStore>,
    gossipsub: gossipsub::Behaviour,
    autonat: autonat::Behaviour,
    relay: relay::client::Behaviour,
    dcutr: dcutr::Behaviour,
    upnp: Toggle<upnp::tokio::Behaviour>,
    mdns: Toggle<mdns::tokio::Behaviour>,
    stream: libp2p_stream::Behaviour,
}

/// The DHT key under which servers of block `block` of `model` are providers.
pub fn block_key(model: &ModelId, block: usize) -> kad::RecordKey {
    kad::RecordKey::new(&format!("odin/{model}/block/{block}"))
}

/// The gossip topic of `model`'s server announcements.
pub fn info_topic(model: &ModelId) -> IdentTopic {
    IdentTopic::new(format!("odin/{model}/servers"))
}

/// The gossip topic fraud proofs about servers of `model` spread on.
pub fn verify_topic(model: &ModelId) -> String {
    format!("odin/{model}/proofs")
}

/// Largest gossip message. Announcements and training messages stay far below 64 KiB; a
/// fraud proof carries a step's input and a session state (about 60 KiB for a two-block hop of
/// odin-tiny, a few hundred KiB for bigger models), so the cap is higher than gossipsub's default.
pub const MAX_GOSSIP: usize = 1 << 20;

/// Load the node's ed25519 identity from `path`, or create and save one (mode 0600).
pub fn load_or_create_identity(path: &Path) -> Result<Keypair> {
    load_or_create_identity_with(path, 0)
}

/// [`load_or_create_identity`] for a network that asks `bits` of an identity
/// ([`crate::puzzle`]): a new key is solved for, and a kept key that falls short is moved to
/// `<path>.old` and replaced by one that does not (the peer id changes, and says so).
pub fn load_or_create_identity_with(path: &Path, bits: u32) -> Result<Keypair> {
    if path.exists() {
        let bytes =
            std::fs::read(path).map_err(|e| NetError::Identity(format!("cannot read {}: {e}", path.display())))?;
        let key = Keypair::from_protobuf_encoding(&bytes).map_err(|e| {
            NetError::Identity(format!(
                "{} is not a libp2p key ({e}); move it away to start with a new identity",
                path.display()
            ))
        })?;
        if crate::puzzle::identity_bits(&key.public()) >= bits {
            return Ok(key);
        }
        let old = path.with_extension("key.old");
        tracing::warn!(
            "the identity in {} does not meet this network's {bits}-bit puzzle; it moves to {} and a new one is made",
            path.display(),
            old.display()
        );
        std::fs::rename(path, &old)?;
    }
    let (key, tries) = crate::puzzle::solve(bits);
    if bits > 0 {
        tracing::info!("new identity {} after {tries} keys ({bits}-bit puzzle)", key.public().to_peer_id());
    }
    let bytes = key.to_protobuf_encoding().map_err(|e| NetError::Identity(e.to_string()))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, bytes)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(key)
}

impl Net {
    /// Start a swarm with `key` and `cfg` in a new task; events arrive on the returned receiver.
    pub async fn start(key: Keypair, cfg: NetConfig) -> Result<(Net, mpsc::Receiver<NetEvent>)> {
        let peer = key.public().to_peer_id();
        let swarm_err = |e: &dyn std::fmt::Display| NetError::Swarm(e.to_string());
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
            .with_tokio()
            .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
            .map_err(|e| swarm_err(&e))?
            .with_quic_config(|mut q| {
                // A peer killed mid-generation sends no close on QUIC (TCP's kernel resets the
                // connection at once); it is noticed only when the connection idles out. The
                // keep-alives make that bound QUIC_IDLE after the peer's last packet, which is
                // below the client's stall floor, so the hop before a dead one reports it by
                // name before the client would have to probe the chain.
                q.max_idle_timeout = QUIC_IDLE.as_millis() as u32;
                q.keep_alive_interval = QUIC_KEEP_ALIVE;
                q
            })
            .with_relay_client(noise::Config::new, yamux::Config::default)
            .map_err(|e| swarm_err(&e))?
            .with_behaviour(|key, relay| {
                let id = key.public().to_peer_id();
                let mut kcfg = kad::Config::new(KAD_PROTOCOL);
                kcfg.set_provider_record_ttl(Some(cfg.record_ttl));
                kcfg.set_provider_publication_interval(Some(cfg.record_ttl / 4));
                kcfg.set_query_timeout(Duration::from_secs(10));
                let gcfg = gossipsub::ConfigBuilder::default()
                    .heartbeat_interval(Duration::from_millis(500))
                    .validation_mode(gossipsub::ValidationMode::Strict)
                    .validate_messages()
                    .max_transmit_size(MAX_GOSSIP)
                    .build()
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                let mut gossipsub =
                    gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), gcfg)
                        .map_err(std::io::Error::other)?;
                // Peer scoring on, driven by the application alone: the behaviour, slowness and
                // shared-IP penalties are off, since loopback networks and home NATs put many
                // honest peers on one address and a loaded machine answers late.
                let params = gossipsub::PeerScoreParams {
                    app_specific_weight: 1.0,
                    ip_colocation_factor_weight: 0.0,
                    behaviour_penalty_weight: 0.0,
                    slow_peer_weight: 0.0,
                    ..Default::default()
                };
                gossipsub
                    .with_peer_score(params, gossipsub::PeerScoreThresholds::default())
                    .map_err(std::io::Error::other)?;
                let mdns =
                    if cfg.mdns { Some(mdns::tokio::Behaviour::new(mdns::Config::default(), id)?) } else { None };
                Ok(Behaviour {
                    identify: identify::Behaviour::new(
                        identify::Config::new("/odin/1.0.0".into(), key.public())
                            .with_agent_version(format!("odin/{}", env!("CARGO_PKG_VERSION"))),
                    ),
                    ping: ping::Behaviour::new(
                        ping::Config::new().with_interval(PING_EVERY).with_timeout(PING_TIMEOUT),
                    ),
                    kad: kad::Behaviour::with_config(id, MemoryStore::new(id), kcfg),
                    gossipsub,
                    autonat: autonat::Behaviour::new(id, autonat::Config::default()),
                    relay,
                    dcutr: dcutr::Behaviour::new(id),
                    upnp: Toggle::from(cfg.upnp.then(upnp::tokio::Behaviour::default)),
                    mdns: Toggle::from(mdns),
                    stream: libp2p_stream::Behaviour::new(),
                })
            })
            .map_err(|e| swarm_err(&e))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
            .build();

        if cfg.dht_server {
            // Kademlia stays a client until an external address is confirmed,
            // which never happens on loopback or a LAN; a serving node is reachable by construction.
            swarm.behaviour_mut().kad.set_mode(Some(kad::Mode::Server));
        }
        let topic = info_topic(&cfg.model);
        swarm.behaviour_mut().gossipsub.subscribe(&topic).map_err(|e| swarm_err(&e))?;
        for addr in &cfg.listen {
            swarm.listen_on(addr.clone()).map_err(|e| NetError::Swarm(format!("cannot listen on {addr}: {e}")))?;
        }
        // Wait until every listener reports its address, so callers can print and hand them out.
        let mut addrs = Vec::new();
        while addrs.len() < cfg.listen.len() {
            match tokio::time::timeout(Duration::from_secs(10), swarm.select_next_some()).await {
                Ok(SwarmEvent::NewListenAddr { address, .. }) => addrs.push(address),
                Ok(SwarmEvent::ListenerError { error, .. }) => return Err(NetError::Swarm(error.to_string())),
                Ok(_) => {}
                Err(_) => return Err(NetError::Swarm("listeners did not start within 10 s".into())),
            }
        }
        for addr in &cfg.bootstrap {
            if let Some(libp2p::multiaddr::Protocol::P2p(p)) = addr.iter().last() {
                swarm.behaviour_mut().kad.add_address(&p, addr.clone());
            }
            swarm.dial(addr.clone()).map_err(|e| NetError::Swarm(format!("cannot dial {addr}: {e}")))?;
        }
        let control = swarm.behaviour().stream.new_control();
        let (cmd_tx, cmd_rx) = mpsc::channel(256);
        let (ev_tx, ev_rx) = mpsc::channel(1024);
        let shared = Arc::new(Mutex::new(addrs));
        let lp = EventLoop {
            swarm,
            topic,
            model: cfg.model,
            events: ev_tx,
            providers: HashMap::new(),
            addrs: shared.clone(),
            penalized: HashSet::new(),
        };
        tokio::spawn(lp.run(cmd_rx));
        Ok((Net { peer, cmd: cmd_tx, control, addrs: shared }, ev_rx))
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer
    }

    /// The addresses this node listens on, each with its `/p2p/` suffix.
    pub fn addrs(&self) -> Vec<Multiaddr> {
        let a = self.addrs.lock().map(|a| a.clone()).unwrap_or_default();
        a.into_iter().map(|m| m.with(libp2p::multiaddr::Protocol::P2p(self.peer))).collect()
    }

    async fn send(&self, c: Command) -> Result<()> {
        self.cmd.send(c).await.map_err(|_| NetError::Swarm("the swarm task has stopped".into()))
    }

    /// Announce, as DHT provider records, that this node serves `keys`.
    pub async fn provide(&self, keys: Vec<kad::RecordKey>) -> Result<()> {
        self.send(Command::Provide(keys)).await
    }

    /// Stop announcing `keys`.
    pub async fn withdraw(&self, keys: Vec<kad::RecordKey>) -> Result<()> {
        self.send(Command::Withdraw(keys)).await
    }

    /// The peers the DHT names as providers of `key`.
    pub async fn providers(&self, key: kad::RecordKey) -> Result<HashSet<PeerId>> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Providers(key, tx)).await?;
        rx.await.map_err(|_| NetError::Swarm("the swarm task has stopped".into()))
    }

    /// Publish a server announcement on the model's topic.
    pub async fn publish(&self, info: &ServerInfo) -> Result<()> {
        self.send(Command::Publish(info.to_bytes())).await
    }

    /// Follow gossip on `topic`: its messages arrive as [`NetEvent::Gossip`].
    pub async fn subscribe(&self, topic: &str) -> Result<()> {
        self.send(Command::Subscribe(topic.to_string())).await
    }

    /// Publish `data` on `topic`, signed with this node's key. Fails when no peer on the
    /// topic is known yet (nobody would hear it).
    pub async fn publish_on(&self, topic: &str, data: Vec<u8>) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::PublishOn(topic.to_string(), data, tx)).await?;
        rx.await.map_err(|_| NetError::Swarm("the swarm task has stopped".into()))?
    }

    /// `peer` was proven to cheat: give it [`BANNED_SCORE`] in gossipsub, so its messages
    /// are dropped unread and it is pruned from every mesh.
    pub async fn penalize(&self, peer: PeerId) -> Result<()> {
        self.send(Command::Penalize(peer)).await
    }

    /// `peer`'s gossipsub score as this node sees it (none for a peer it has never met).
    pub async fn gossip_score(&self, peer: PeerId) -> Result<Option<f64>> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Score(peer, tx)).await?;
        rx.await.map_err(|_| NetError::Swarm("the swarm task has stopped".into()))
    }

    /// Connect to a peer's address.
    pub async fn dial(&self, addr: Multiaddr) -> Result<()> {
        self.send(Command::Dial(addr)).await
    }

    /// Peers connected now.
    pub async fn peers(&self) -> Result<Vec<PeerId>> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Peers(tx)).await?;
        rx.await.map_err(|_| NetError::Swarm("the swarm task has stopped".into()))
    }

    /// Open a shard-protocol stream to `peer` (connecting first if needed).
    ///
    /// Each attempt is bounded (0.5 s, then twice as long each time; callers bound the whole).
    /// libp2p-stream 0.5 can lose a request for good: when it is made while a connection from
    /// `peer` is being set up, it finds no connection, asks for a dial that the swarm refuses
    /// (the peer is connected by then) without telling it, and the request waits for a
    /// connection that never comes. A second attempt finds the connection at once. An attempt
    /// that was only slow is harmless to repeat: its stream is opened and dropped.
    pub async fn open_stream(&self, peer: PeerId) -> Result<libp2p::Stream> {
        self.open_stream_for(peer, SHARD_PROTOCOL).await
    }

    /// Open a stream of another service's `protocol` to `peer`, as [`Net::open_stream`] does.
    pub async fn open_stream_for(&self, peer: PeerId, protocol: StreamProtocol) -> Result<libp2p::Stream> {
        let mut c = self.control.clone();
        let (mut wait, mut retries) = (Duration::from_millis(20), 0);
        let mut attempt = OPEN_ATTEMPT;
        loop {
            match tokio::time::timeout(attempt, c.open_stream(peer, protocol.clone())).await {
                Ok(Ok(s)) => return Ok(s),
                Err(_) => {
                    tracing::debug!("opening a stream to {peer} took over {attempt:?}; asking again");
                    attempt *= 2;
                }
                // The connection it picked may have just closed (a duplicate connection being
                // pruned, a transport timing out); a moment later it dials afresh if it must.
                Ok(Err(libp2p_stream::OpenStreamError::Io(e))) if retries < 3 => {
                    tracing::debug!("opening a stream to {peer} failed ({e}); trying again");
                    tokio::time::sleep(wait).await;
                    (wait, retries) = (wait * 4, retries + 1);
                }
                Ok(Err(e)) => return Err(NetError::Swarm(format!("cannot open a stream to {peer}: {e}"))),
            }
        }
    }

    /// Incoming shard-protocol streams (call once, on a serving node).
    pub fn accept(&self) -> Result<libp2p_stream::IncomingStreams> {
        self.accept_for(SHARD_PROTOCOL)
    }

    /// Incoming streams of another service's `protocol` (call once per protocol).
    pub fn accept_for(&self, protocol: StreamProtocol) -> Result<libp2p_stream::IncomingStreams> {
        let mut c = self.control.clone();
        c.accept(protocol.clone()).map_err(|e| NetError::Swarm(format!("{protocol}: {e}")))
    }
}

struct EventLoop {
    swarm: libp2p::Swarm<Behaviour>,
    topic: IdentTopic,
    model: ModelId,
    events: mpsc::Sender<NetEvent>,
    providers: HashMap<QueryId, (HashSet<PeerId>, oneshot::Sender<HashSet<PeerId>>)>,
    addrs: Arc<Mutex<Vec<Multiaddr>>>,
    /// Proven cheaters: their gossip score is set again whenever they connect.
    penalized: HashSet<PeerId>,
}

impl EventLoop {
    async fn run(mut self, mut cmds: mpsc::Receiver<Command>) {
        let _ = self.swarm.behaviour_mut().kad.bootstrap();
        loop {
            tokio::select! {
                ev = self.swarm.select_next_some() => self.on_event(ev),
                c = cmds.recv() => match c {
                    Some(c) => self.on_command(c),
                    // Every handle is gone: the node is shutting down.
                    None => return,
                },
            }
        }
    }

    fn on_command(&mut self, c: Command) {
        let b = self.swarm.behaviour_mut();
        match c {
            Command::Provide(keys) => {
                for k in keys {
                    if let Err(e) = b.kad.start_providing(k) {
                        tracing::warn!("cannot store a provider record: {e}");
                    }
                }
            }
            Command::Withdraw(keys) => keys.iter().for_each(|k| b.kad.stop_providing(k)),
            Command::Providers(key, tx) => {
                let q = b.kad.get_providers(key);
                self.providers.insert(q, (HashSet::new(), tx));
            }
            Command::Publish(bytes) => {
                // No subscribed peer yet is normal for the genesis node; the next round reaches them.
                if let Err(e) = b.gossipsub.publish(self.topic.clone(), bytes) {
                    tracing::debug!("announcement not published: {e}");
                }
            }
            Command::Subscribe(topic) => {
                if let Err(e) = b.gossipsub.subscribe(&IdentTopic::new(topic.clone())) {
                    tracing::warn!("cannot follow gossip topic {topic}: {e}");
                }
            }
            Command::PublishOn(topic, data, tx) => {
                let r = b.gossipsub.publish(IdentTopic::new(topic.clone()), data);
                let _ = tx.send(r.map(|_| ()).map_err(|e| NetError::Swarm(format!("cannot publish on {topic}: {e}"))));
            }
            Command::Dial(addr) => {
                if let Some(libp2p::multiaddr::Protocol::P2p(p)) = addr.iter().last() {
                    b.kad.add_address(&p, addr.clone());
                }
                if let Err(e) = self.swarm.dial(addr.clone()) {
                    tracing::warn!("cannot dial {addr}: {e}");
                }
            }
            Command::Peers(tx) => {
                let _ = tx.send(self.swarm.connected_peers().copied().collect());
            }
            Command::Penalize(peer) => {
                b.gossipsub.set_application_score(&peer, BANNED_SCORE);
                self.penalized.insert(peer);
            }
            Command::Score(peer, tx) => {
                let _ = tx.send(b.gossipsub.peer_score(&peer));
            }
        }
    }

    /// Events are advisory (announcements repeat, pings recur): when the node
    /// falls behind, dropping one beats stalling the swarm.
    fn emit(&self, e: NetEvent) {
        if self.events.try_send(e).is_err() {
            tracing::debug!("node busy: a network event was dropped");
        }
    }

    fn on_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                if let Ok(mut a) = self.addrs.lock() {
                    if !a.contains(&address) {
                        a.push(address);
                    }
                }
            }
            SwarmEvent::ConnectionEstablished { peer_id, .. } if self.penalized.contains(&peer_id) => {
                self.swarm.behaviour_mut().gossipsub.set_application_score(&peer_id, BANNED_SCORE);
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
                self.emit(NetEvent::Disconnected(peer_id));
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }))
                if info.protocols.contains(&KAD_PROTOCOL) =>
            {
                for a in info.listen_addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, a);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(list))) => {
                for (peer, addr) in list {
                    self.swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                    let _ = self.swarm.dial(addr);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event { peer, result: Ok(rtt), .. })) => {
                self.emit(NetEvent::Rtt(peer, rtt));
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result: Err(ping::Failure::Timeout),
            })) => {
                tracing::debug!("{peer} left a ping unanswered for {PING_TIMEOUT:?}; closing that connection");
                self.swarm.close_connection(connection);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) if message.topic != self.topic.hash() => {
                // Another service's topic: gossipsub has checked the signature; the content is
                // checked by the subscriber, which logs what it refuses. Passing it on first is
                // safe, as every receiver checks it the same way.
                let verdict =
                    if message.source.is_some() { MessageAcceptance::Accept } else { MessageAcceptance::Reject };
                self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
                    &message_id,
                    &propagation_source,
                    verdict,
                );
                if let Some(source) = message.source {
                    let topic = message.topic.into_string();
                    // Unlike announcements, a lost training message costs a round an update:
                    // when the node is busy the event waits in a task rather than being dropped.
                    let ev = NetEvent::Gossip { topic, source, data: message.data };
                    if let Err(mpsc::error::TrySendError::Full(ev)) = self.events.try_send(ev) {
                        let events = self.events.clone();
                        tokio::spawn(async move {
                            let _ = events.send(ev).await;
                        });
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => {
                let verdict = self.check_info(&message);
                let accept = if verdict.is_ok() { MessageAcceptance::Accept } else { MessageAcceptance::Reject };
                self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
                    &message_id,
                    &propagation_source,
                    accept,
                );
                match verdict {
                    Ok((peer, info)) => {
                        // Gossip may arrive through a third peer: remember where the announcer
                        // listens, so a stream to it can be dialled directly.
                        for a in info.addrs.iter().take(16).filter_map(|a| a.parse::<Multiaddr>().ok()) {
                            self.swarm.add_peer_address(peer, a);
                        }
                        self.emit(NetEvent::Info(peer, info))
                    }
                    Err(e) => tracing::debug!("rejected an announcement from {propagation_source}: {e}"),
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { peer_id, .. })) => {
                self.emit(NetEvent::Subscribed(peer_id));
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result: QueryResult::GetProviders(r),
                step,
                ..
            })) => {
                if let (Some((set, _)), Ok(GetProvidersOk::FoundProviders { providers, .. })) =
                    (self.providers.get_mut(&id), r)
                {
                    set.extend(providers);
                }
                if step.last {
                    if let Some((set, tx)) = self.providers.remove(&id) {
                        let _ = tx.send(set);
                    }
                }
            }
            _ => {}
        }
    }

    /// An announcement is valid when it parses, names our model, and is signed by the peer it describes.
    fn check_info(&self, m: &gossipsub::Message) -> Result<(PeerId, ServerInfo)> {
        let info = ServerInfo::from_bytes(&m.data)?;
        let src = m.source.ok_or_else(|| NetError::Proto(ProtoError::Malformed("unsigned announcement".into())))?;
        if info.peer != src.to_string() {
            return Err(NetError::Proto(ProtoError::Malformed(format!(
                "announcement for {} signed by {src}",
                info.peer
            ))));
        }
        if info.model != self.model.to_string() {
            return Err(NetError::Proto(ProtoError::Malformed(format!("announcement for model {}", info.model))));
        }
        Ok((src, info))
    }
}
