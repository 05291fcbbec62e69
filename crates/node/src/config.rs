//! How a node is started: [`NodeConfig`], and [`NodeOptions`], the settings as an operator
//! writes them (`odin node`'s flags), checked and turned into one.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use odin_format::{ModelConfig, ModelId};
use odin_net::{Multiaddr, NetConfig};

use crate::alloc;
use crate::error::{NodeError, Result};
use crate::server::ServerConfig;

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
    /// Fraction of hop-steps this node's own generations recompute (0: check claims only).
    pub audit: f64,
    /// Leading zero bits the network asks of an identity (`odin_net::puzzle`): this node
    /// solves for them, and ignores servers whose ids do not show them.
    pub identity_bits: u32,
    /// Audits a new server must pass before this node trusts it off probation.
    pub probation_audits: u32,
    /// The node's ledger (`None`: it keeps none, takes no receipts and earns nothing).
    pub ledger: Option<crate::keeper::LedgerConfig>,
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
            audit: DEFAULT_AUDIT,
            identity_bits: odin_net::puzzle::DEFAULT_IDENTITY_BITS,
            probation_audits: DEFAULT_PROBATION_AUDITS,
            ledger: None,
        }
    }
}

/// A node's settings as an operator writes them: `odin node`'s flags, which name them in
/// every error. [`NodeOptions::config`] checks them.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Model directory.
    pub model: PathBuf,
    /// Blocks to serve: `A..B`, `auto`, or none to serve nothing.
    pub blocks: Option<String>,
    /// With `auto`: serve at most this many blocks.
    pub max_blocks: Option<usize>,
    /// With `auto`: MiB of memory the blocks may take (default: half of what is available).
    pub memory_mib: Option<u64>,
    /// With `auto`: seconds between rebalancing checks.
    pub rebalance_secs: f64,
    /// On shutdown, seconds to wait for open sessions to be handed over or closed.
    pub grace_secs: f64,
    /// Addresses to listen on; empty: TCP and QUIC on every interface.
    pub listen: Vec<Multiaddr>,
    /// Nodes to join through; none for the genesis node.
    pub bootstrap: Vec<Multiaddr>,
    /// Where the identity key lives.
    pub data_dir: PathBuf,
    /// The model id the files must hash to, in hex.
    pub model_id: Option<String>,
    /// Find peers on the LAN with mDNS.
    pub mdns: bool,
    /// Ask the router for a UPnP port mapping.
    pub upnp: bool,
    /// Engine threads per product.
    pub threads: usize,
    /// Most sessions held at once.
    pub max_sessions: usize,
    /// Seconds between announcements.
    pub announce_secs: f64,
    /// Milliseconds to wait before each step (tests of slow servers).
    pub delay_ms: u64,
    /// Answer steps with junk after this many (tests of broken servers).
    pub garbage_after: Option<u64>,
    /// Fraction of hop-steps this node's generations recompute, 0 to 1.
    pub audit: f64,
    /// Lie about steps this way (tests and benchmarks of verification).
    pub cheat: Option<crate::cheat::Cheat>,
    /// Leading zero bits the network asks of an identity.
    pub identity_bits: u32,
    /// Audits a new server must pass before it leaves probation (0: no probation).
    pub probation_audits: u32,
    /// The node's ledger (`None`: it keeps none).
    pub ledger: Option<crate::keeper::LedgerConfig>,
}

/// Audits a new server passes before it leaves probation, unless told otherwise: with every
/// step of it audited meanwhile, a liar gets no unaudited step in.
pub const DEFAULT_PROBATION_AUDITS: u32 = 20;

/// Fraction of hop-steps a node's generations recompute unless told otherwise: a server that
/// lies on every step is caught within about 20 of them.
pub const DEFAULT_AUDIT: f64 = 0.05;

/// The hardest identity puzzle a node accepts to solve (2^32 keys: hours on one core).
const MAX_IDENTITY_BITS: u32 = 32;

/// Announcing more often than this would flood the gossip.
const MIN_ANNOUNCE_SECS: f64 = 0.05;
/// Rebalancing more often than this would move blocks on noise.
const MIN_REBALANCE_SECS: f64 = 0.1;

impl NodeOptions {
    /// The settings checked, as a [`NodeConfig`].
    pub fn config(&self) -> Result<NodeConfig> {
        if !(self.announce_secs > MIN_ANNOUNCE_SECS && self.announce_secs.is_finite()) {
            return Err(NodeError::Config(format!("--announce-secs must be above {MIN_ANNOUNCE_SECS}")));
        }
        let cfg_path = self.model.join("config.json");
        let layers = ModelConfig::from_file(&cfg_path)
            .map_err(|e| NodeError::Config(format!("cannot read {}: {e}", cfg_path.display())))?
            .num_layers();
        let auto = self.blocks.as_deref() == Some("auto");
        let blocks = match self.blocks.as_deref() {
            Some("auto") | None => None,
            Some(b) => Some(crate::blocks::parse_blocks(b, layers).map_err(NodeError::Config)?),
        };
        let rebalance = seconds("--rebalance-secs", self.rebalance_secs, MIN_REBALANCE_SECS)?;
        self.grace()?;
        let expect_id = match &self.model_id {
            Some(h) => Some(
                ModelId::from_hex(h)
                    .ok_or_else(|| NodeError::Config(format!("--model-id {h:?} is not 64 hex digits")))?,
            ),
            None => None,
        };
        let mut cfg = NodeConfig::loopback(&self.model, blocks.clone(), &self.data_dir);
        cfg.expect_id = expect_id;
        cfg.net.listen = if self.listen.is_empty() {
            vec![address("/ip4/0.0.0.0/tcp/0")?, address("/ip4/0.0.0.0/udp/0/quic-v1")?]
        } else {
            self.listen.clone()
        };
        cfg.net.bootstrap = self.bootstrap.clone();
        cfg.net.mdns = self.mdns;
        cfg.net.upnp = self.upnp;
        // Servers answer DHT queries and hold provider records; a pure client need not.
        cfg.net.dht_server = blocks.is_some() || auto;
        if auto {
            let default = AutoConfig::default();
            cfg.auto = Some(AutoConfig {
                max_blocks: self.max_blocks,
                memory_budget: self.memory_mib.map(|m| m << 20).or(default.memory_budget),
                rebalance_every: rebalance,
            });
        }
        cfg.threads = self.threads.max(1);
        cfg.server = ServerConfig {
            max_sessions: self.max_sessions.max(1),
            delay: Duration::from_millis(self.delay_ms),
            garbage_after: self.garbage_after,
            cheat: self.cheat,
            ..ServerConfig::default()
        };
        if !(0.0..=1.0).contains(&self.audit) {
            return Err(NodeError::Config(format!("--audit {} is not a fraction between 0 and 1", self.audit)));
        }
        cfg.audit = self.audit;
        if self.identity_bits > MAX_IDENTITY_BITS {
            return Err(NodeError::Config(format!(
                "--identity-bits {} would take days to solve; the network's puzzle is at most {MAX_IDENTITY_BITS}",
                self.identity_bits
            )));
        }
        cfg.identity_bits = self.identity_bits;
        cfg.probation_audits = self.probation_audits;
        cfg.ledger = self.ledger.clone();
        cfg.announce_every = Duration::from_secs_f64(self.announce_secs);
        Ok(cfg)
    }

    /// How long shutdown waits for open sessions ([`crate::Node::shutdown`]), checked.
    pub fn grace(&self) -> Result<Duration> {
        seconds("--grace-secs", self.grace_secs, 0.0)
    }
}

/// `secs` from `flag` as a duration, refused unless finite and at least `min`.
fn seconds(flag: &str, secs: f64, min: f64) -> Result<Duration> {
    if !(secs.is_finite() && secs >= 0.0 && secs >= min) {
        return Err(NodeError::Config(format!("{flag} {secs} is not a sensible number of seconds")));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn address(s: &str) -> Result<Multiaddr> {
    s.parse().map_err(|e| NodeError::Config(format!("{s}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/odin-tiny")
    }

    fn options() -> NodeOptions {
        NodeOptions {
            model: tiny(),
            blocks: Some("1..3".into()),
            max_blocks: None,
            memory_mib: None,
            rebalance_secs: 30.0,
            grace_secs: 10.0,
            listen: Vec::new(),
            bootstrap: Vec::new(),
            data_dir: PathBuf::from("/tmp/odin-node-test"),
            model_id: None,
            mdns: false,
            upnp: true,
            threads: 0,
            max_sessions: 0,
            announce_secs: 2.0,
            delay_ms: 0,
            garbage_after: None,
            audit: DEFAULT_AUDIT,
            cheat: None,
            identity_bits: 8,
            probation_audits: 20,
            ledger: None,
        }
    }

    fn refused(o: NodeOptions) -> String {
        match o.config() {
            Err(NodeError::Config(m)) => m,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn good_flags_make_a_serving_config() {
        let cfg = options().config().unwrap();
        assert_eq!(cfg.blocks, Some(1..3));
        assert!(cfg.net.dht_server && cfg.net.upnp && !cfg.net.mdns);
        assert_eq!(cfg.net.listen.len(), 2, "TCP and QUIC by default");
        assert_eq!((cfg.threads, cfg.server.max_sessions), (1, 1), "at least one of each");
        assert_eq!(cfg.announce_every, Duration::from_secs(2));
        assert!(cfg.auto.is_none());
        assert_eq!(options().grace().unwrap(), Duration::from_secs(10));
    }

    #[test]
    fn auto_and_client_configs() {
        let auto = NodeOptions {
            blocks: Some("auto".into()),
            max_blocks: Some(2),
            memory_mib: Some(3),
            rebalance_secs: 0.5,
            ..options()
        };
        let cfg = auto.config().unwrap();
        let a = cfg.auto.unwrap();
        assert_eq!((cfg.blocks, a.max_blocks, a.memory_budget), (None, Some(2), Some(3 << 20)));
        assert_eq!(a.rebalance_every, Duration::from_millis(500));
        assert!(cfg.net.dht_server, "an auto node serves");
        let client = NodeOptions { blocks: None, ..options() }.config().unwrap();
        assert!(client.blocks.is_none() && client.auto.is_none() && !client.net.dht_server);
    }

    #[test]
    fn bad_flags_are_refused_by_name() {
        assert!(refused(NodeOptions { announce_secs: 0.01, ..options() }).contains("--announce-secs"));
        assert!(refused(NodeOptions { announce_secs: f64::NAN, ..options() }).contains("--announce-secs"));
        assert!(refused(NodeOptions { blocks: Some("3..9".into()), ..options() }).contains("0..4"));
        assert!(refused(NodeOptions { rebalance_secs: 0.05, ..options() }).contains("--rebalance-secs"));
        assert!(refused(NodeOptions { grace_secs: -1.0, ..options() }).contains("--grace-secs"));
        assert!(refused(NodeOptions { grace_secs: f64::INFINITY, ..options() }).contains("--grace-secs"));
        assert!(refused(NodeOptions { model_id: Some("abc".into()), ..options() }).contains("--model-id"));
        assert!(refused(NodeOptions { model: PathBuf::from("/nowhere"), ..options() }).contains("cannot read"));
        assert!(refused(NodeOptions { audit: 1.5, ..options() }).contains("--audit"));
        assert!(refused(NodeOptions { audit: f64::NAN, ..options() }).contains("--audit"));
    }
}
