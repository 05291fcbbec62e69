//! A network of nodes on one machine: `odin swarm`, and the tests that kill and freeze nodes.
//!
//! The first member is the genesis node; every later one joins through it. A member runs as
//! an `odin node` child process (so it can be killed, frozen and resumed like a real
//! machine's node) or in this process. Process members are killed when the cluster is dropped.

use std::io::{BufRead, BufReader};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use odin_net::{Multiaddr, PeerId};
use serde::Deserialize;

use crate::config::NodeConfig;
use crate::error::{NodeError, Result};
use crate::node::Node;

/// Which of the genesis member's addresses the others join through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Join {
    /// All of them.
    Any,
    /// Its TCP addresses only.
    Tcp,
    /// Its QUIC addresses only.
    Quic,
}

impl Join {
    fn admits(self, addr: &Multiaddr) -> bool {
        let s = addr.to_string();
        match self {
            Join::Any => true,
            Join::Tcp => s.contains("/tcp/"),
            Join::Quic => s.contains("/quic-v1"),
        }
    }
}

/// Where a process member's log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Logs {
    /// To this process's stderr.
    Inherit,
    /// To `node.log` in the member's data directory, with this `ODIN_LOG` filter.
    File(String),
}

/// A signal for a process member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGKILL: it dies at once, without a word to anyone (and is reaped).
    Kill,
    /// SIGSTOP: it freezes, its connections open but silent.
    Stop,
    /// SIGCONT: a frozen member goes on.
    Continue,
    /// SIGINT: Ctrl-C; a server hands its sessions over and exits.
    Interrupt,
}

impl Signal {
    fn flag(self) -> &'static str {
        match self {
            Signal::Kill => "-KILL",
            Signal::Stop => "-STOP",
            Signal::Continue => "-CONT",
            Signal::Interrupt => "-INT",
        }
    }
}

/// How a cluster starts its members.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The `odin` binary process members run (`odin node …`); `None` for in-process members only.
    pub exe: Option<PathBuf>,
    /// The model directory every member serves.
    pub model: PathBuf,
    /// Where the members' data directories go, one per member, named at launch.
    pub dir: PathBuf,
    /// Addresses each member listens on; empty: TCP and QUIC on loopback for in-process
    /// members, the `odin node` default for processes.
    pub listen: Vec<Multiaddr>,
    /// Which of the genesis member's addresses the others join through.
    pub join: Join,
    /// How often members announce themselves.
    pub announce: Duration,
    /// Where process members' logs go.
    pub logs: Logs,
    /// Each process member in its own process group. A member that shares this process's
    /// group gets SIGHUP while it is stopped if that group is orphaned (POSIX: when the last
    /// member with a parent outside it exits, as cargo's or a shell's children can), which
    /// would turn a freeze into a death. A member in this process's group gets a terminal's
    /// Ctrl-C with it.
    pub own_group: bool,
    /// Longest a process member may take to say it is ready.
    pub ready_within: Duration,
}

impl ClusterConfig {
    /// Members run as `exe node` processes serving `model`, with data under `dir`.
    pub fn processes(exe: &Path, model: &Path, dir: &Path) -> Self {
        Self { exe: Some(exe.to_path_buf()), ..Self::in_process(model, dir) }
    }

    /// Members run in this process, serving `model`, with data under `dir`.
    pub fn in_process(model: &Path, dir: &Path) -> Self {
        Self {
            exe: None,
            model: model.to_path_buf(),
            dir: dir.to_path_buf(),
            listen: Vec::new(),
            join: Join::Any,
            announce: Duration::from_secs(1),
            logs: Logs::Inherit,
            own_group: false,
            ready_within: Duration::from_secs(120),
        }
    }
}

/// How a member runs.
enum Runs {
    /// A child process; `None` once it has been reaped.
    Process(Option<Child>),
    /// A node in this process.
    InProcess(Arc<Node>),
}

/// One node of a cluster.
pub struct Member {
    /// Its peer id.
    pub peer: PeerId,
    /// The addresses it listens on.
    pub addrs: Vec<Multiaddr>,
    /// The blocks it was asked to serve (`A..B`, `auto`, or `none`).
    pub blocks: String,
    /// Its data directory (identity key, and `node.log` with [`Logs::File`]).
    pub dir: PathBuf,
    runs: Runs,
}

impl Member {
    /// The node, when it runs in this process.
    pub fn node(&self) -> Option<&Arc<Node>> {
        match &self.runs {
            Runs::InProcess(n) => Some(n),
            Runs::Process(_) => None,
        }
    }

    /// Whether it still runs (an in-process member always does).
    pub fn alive(&self) -> bool {
        !matches!(self.runs, Runs::Process(None))
    }

    fn child(&mut self) -> Result<&mut Child> {
        match &mut self.runs {
            Runs::Process(Some(c)) => Ok(c),
            Runs::Process(None) => Err(NodeError::Cluster(format!("node {} has already exited", self.peer))),
            Runs::InProcess(_) => Err(NodeError::Cluster(format!("node {} runs in this process", self.peer))),
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Runs::Process(Some(c)) = &mut self.runs {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What `odin node` prints on its first stdout line once it serves.
#[derive(Deserialize)]
struct Ready {
    peer: String,
    addrs: Vec<String>,
}

/// Nodes on this machine, the first of them the genesis node.
pub struct LocalCluster {
    cfg: ClusterConfig,
    members: Vec<Member>,
    /// The genesis member's addresses the others join through.
    boot: Vec<Multiaddr>,
}

/// The blocks of the model in `model` split between `nodes` nodes, checked (`odin swarm`).
pub fn split_model(model: &Path, nodes: usize) -> Result<Vec<Range<usize>>> {
    if nodes == 0 {
        return Err(NodeError::Config("--nodes must be at least 1".into()));
    }
    let cfg_path = model.join("config.json");
    let layers = odin_format::ModelConfig::from_file(&cfg_path)
        .map_err(|e| NodeError::Config(format!("cannot read {}; pass --model DIR: {e}", cfg_path.display())))?
        .num_layers();
    if nodes > layers {
        return Err(NodeError::Config(format!(
            "{nodes} nodes cannot split {layers} blocks; use --nodes {layers} or fewer"
        )));
    }
    Ok(crate::blocks::split_blocks(layers, nodes))
}

impl LocalCluster {
    /// A cluster with no members yet.
    pub fn new(cfg: ClusterConfig) -> Self {
        Self { cfg, members: Vec::new(), boot: Vec::new() }
    }

    /// Its members, in the order they were launched (dead ones included).
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Member `i`.
    pub fn member(&self, i: usize) -> Result<&Member> {
        self.members.get(i).ok_or_else(|| NodeError::Cluster(format!("the cluster has no member {i}")))
    }

    /// The member that is `peer`.
    pub fn position(&self, peer: &PeerId) -> Option<usize> {
        self.members.iter().position(|m| m.peer == *peer)
    }

    /// The addresses new nodes join through (empty before the first member).
    pub fn boot(&self) -> &[Multiaddr] {
        &self.boot
    }

    /// Start `odin node --blocks blocks` with `extra` flags as member `name` (its data
    /// directory), and wait until it says it is ready. Returns its index.
    pub fn launch(&mut self, name: &str, blocks: &str, extra: &[&str]) -> Result<usize> {
        self.launch_with_env(name, blocks, extra, &[])
    }

    /// [`LocalCluster::launch`] with environment variables set for the process (such as
    /// `ODIN_KERNEL`, to mix kernels in one network).
    pub fn launch_with_env(&mut self, name: &str, blocks: &str, extra: &[&str], env: &[(&str, &str)]) -> Result<usize> {
        let exe = self.cfg.exe.clone().ok_or_else(|| NodeError::Cluster("this cluster has no odin binary".into()))?;
        let dir = self.cfg.dir.join(name);
        let mut cmd = Command::new(&exe);
        // `node --model` first: what a look at the process table finds a member by.
        cmd.arg("node").arg("--model").arg(&self.cfg.model).args(["--blocks", blocks]);
        for l in &self.cfg.listen {
            cmd.arg("--listen").arg(l.to_string());
        }
        cmd.args(["--no-upnp", "--announce-secs", &self.cfg.announce.as_secs_f64().to_string()]);
        cmd.arg("--data-dir").arg(&dir);
        for b in &self.boot {
            cmd.arg("--bootstrap").arg(b.to_string());
        }
        cmd.args(extra).envs(env.iter().copied()).stdin(Stdio::null()).stdout(Stdio::piped());
        let io = |what: String| move |source| NodeError::Process { what, source };
        match &self.cfg.logs {
            Logs::Inherit => {
                cmd.stderr(Stdio::inherit());
            }
            Logs::File(filter) => {
                std::fs::create_dir_all(&dir).map_err(io(format!("cannot create {}", dir.display())))?;
                let log = dir.join("node.log");
                let file = std::fs::File::create(&log).map_err(io(format!("cannot create {}", log.display())))?;
                cmd.env("ODIN_LOG", filter).stderr(file);
            }
        }
        #[cfg(unix)]
        if self.cfg.own_group {
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        }
        let mut child = cmd.spawn().map_err(io(format!("cannot start {}", exe.display())))?;
        let ready = match child.stdout.take() {
            Some(out) => self.ready_line(out, &dir),
            None => Err(NodeError::Cluster("no stdout from a node".into())),
        };
        let ready = match ready {
            Ok(r) => r,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        self.admit(ready, blocks.to_string(), dir, Runs::Process(Some(child)))
    }

    /// The ready line of a member starting with data in `dir`; the rest of its stdout is
    /// drained, so it never blocks on a full pipe.
    fn ready_line(&self, out: std::process::ChildStdout, dir: &Path) -> Result<(PeerId, Vec<Multiaddr>)> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(out).lines();
            if let Some(Ok(first)) = lines.next() {
                let _ = tx.send(first);
            }
            for _ in lines.by_ref() {}
        });
        let line = rx.recv_timeout(self.cfg.ready_within).map_err(|e| match e {
            std::sync::mpsc::RecvTimeoutError::Timeout => NodeError::Cluster(format!(
                "a node did not become ready within {:.0} s",
                self.cfg.ready_within.as_secs_f64()
            )),
            std::sync::mpsc::RecvTimeoutError::Disconnected => NodeError::Cluster(match &self.cfg.logs {
                Logs::Inherit => "a node exited before it was ready (see its error above)".into(),
                Logs::File(_) => format!("a node exited before it was ready (see {})", dir.join("node.log").display()),
            }),
        })?;
        let unexpected = || NodeError::Cluster(format!("unexpected node output {line:?}"));
        let ready: Ready = serde_json::from_str(&line).map_err(|_| unexpected())?;
        let peer = ready.peer.parse().map_err(|_| unexpected())?;
        let addrs =
            ready.addrs.iter().map(|a| a.parse()).collect::<std::result::Result<_, _>>().map_err(|_| unexpected())?;
        Ok((peer, addrs))
    }

    /// Start a node in this process as member `name`, serving `blocks` (none: a client that
    /// joins and serves nothing). Returns its index.
    pub async fn launch_in_process(&mut self, name: &str, blocks: Option<Range<usize>>) -> Result<usize> {
        self.launch_in_process_with(name, blocks, |_| {}).await
    }

    /// [`LocalCluster::launch_in_process`], with `tweak` applied to the node's settings last
    /// (a lying server, a client that audits everything).
    pub async fn launch_in_process_with(
        &mut self,
        name: &str,
        blocks: Option<Range<usize>>,
        tweak: impl FnOnce(&mut NodeConfig),
    ) -> Result<usize> {
        let dir = self.cfg.dir.join(name);
        let mut cfg = NodeConfig::loopback(&self.cfg.model, blocks.clone(), &dir);
        if !self.cfg.listen.is_empty() {
            cfg.net.listen = self.cfg.listen.clone();
        }
        cfg.net.bootstrap = self.boot.clone();
        cfg.announce_every = self.cfg.announce;
        tweak(&mut cfg);
        let node = Node::start(cfg).await?;
        let blocks = blocks.map_or("none".to_string(), |r| format!("{}..{}", r.start, r.end));
        self.admit((node.peer_id(), node.net().addrs()), blocks, dir, Runs::InProcess(node))
    }

    fn admit(
        &mut self,
        (peer, addrs): (PeerId, Vec<Multiaddr>),
        blocks: String,
        dir: PathBuf,
        runs: Runs,
    ) -> Result<usize> {
        if self.members.is_empty() {
            self.boot = addrs.iter().filter(|a| self.cfg.join.admits(a)).cloned().collect();
        }
        self.members.push(Member { peer, addrs, blocks, dir, runs });
        Ok(self.members.len() - 1)
    }

    /// The node that is member `i`, when it runs in this process.
    pub fn node(&self, i: usize) -> Result<&Arc<Node>> {
        let m = self.member(i)?;
        m.node().ok_or_else(|| NodeError::Cluster(format!("member {i} ({}) runs in its own process", m.peer)))
    }

    /// A client's config (it serves nothing) with data in `dir`, joined to this cluster. A
    /// cluster of processes keeps ledgers (`odin node`'s default), so its client keeps one too
    /// and countersigns what it is served, as the servers require.
    pub fn client_config(&self, dir: &Path) -> NodeConfig {
        let mut cfg = NodeConfig::loopback(&self.cfg.model, None, dir);
        cfg.net.bootstrap = self.boot.clone();
        if self.cfg.exe.is_some() {
            cfg.ledger = Some(crate::keeper::LedgerConfig::default());
        }
        cfg
    }

    /// Start a node in this process with `cfg` (see [`LocalCluster::client_config`]), and wait
    /// at most `timeout` until it knows a route and every live member that serves blocks.
    pub async fn join(&self, cfg: NodeConfig, timeout: Duration) -> Result<Arc<Node>> {
        let node = Node::start(cfg).await?;
        let live = self.members.iter().filter(|m| m.alive() && m.blocks != "none").count();
        node.wait_for_route(live, timeout).await?;
        Ok(node)
    }

    /// Send `signal` to process member `i`. [`Signal::Kill`] also reaps it.
    pub fn signal(&mut self, i: usize, signal: Signal) -> Result<()> {
        let m = self.members.get_mut(i).ok_or_else(|| NodeError::Cluster(format!("the cluster has no member {i}")))?;
        let child = m.child()?;
        let io = |what: &str| {
            let what = format!("cannot {what} node {i}");
            move |source| NodeError::Process { what, source }
        };
        if signal == Signal::Kill {
            child.kill().map_err(io("kill"))?;
            child.wait().map_err(io("reap"))?;
            m.runs = Runs::Process(None);
            return Ok(());
        }
        let pid = child.id().to_string();
        let status = Command::new("kill").args([signal.flag(), &pid]).status().map_err(io("signal"))?;
        if !status.success() {
            return Err(NodeError::Cluster(format!("kill {} {pid} failed: {status}", signal.flag())));
        }
        Ok(())
    }

    /// SIGKILL member `i` and reap it.
    pub fn kill(&mut self, i: usize) -> Result<()> {
        self.signal(i, Signal::Kill)
    }

    /// Wait until process member `i` exits on its own.
    pub fn wait(&mut self, i: usize) -> Result<ExitStatus> {
        let m = self.members.get_mut(i).ok_or_else(|| NodeError::Cluster(format!("the cluster has no member {i}")))?;
        let status = m
            .child()?
            .wait()
            .map_err(|source| NodeError::Process { what: format!("cannot wait for node {i}"), source })?;
        m.runs = Runs::Process(None);
        Ok(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/odin-tiny")
    }

    #[test]
    fn a_model_splits_between_at_most_its_blocks() {
        assert_eq!(split_model(&tiny(), 3).unwrap(), vec![0..2, 2..3, 3..4]);
        let refused = |n| match split_model(&tiny(), n) {
            Err(NodeError::Config(m)) => m,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert!(refused(0).contains("at least 1"));
        assert!(refused(5).contains("--nodes 4 or fewer"));
        assert!(matches!(split_model(Path::new("/nowhere"), 1), Err(NodeError::Config(m)) if m.contains("--model")));
    }

    #[test]
    fn the_genesis_addresses_to_join_through() {
        let tcp: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
        let quic: Multiaddr = "/ip4/127.0.0.1/udp/1/quic-v1".parse().unwrap();
        assert!(Join::Any.admits(&tcp) && Join::Any.admits(&quic));
        assert!(Join::Tcp.admits(&tcp) && !Join::Tcp.admits(&quic));
        assert!(!Join::Quic.admits(&tcp) && Join::Quic.admits(&quic));
    }

    #[test]
    fn a_binary_that_is_not_a_node_is_refused_and_reaped() {
        let tmp = tempfile::tempdir().unwrap();
        // `true` exits at once without a ready line; `echo` prints something that is not one.
        let mut c = LocalCluster::new(ClusterConfig::processes(Path::new("true"), &tiny(), tmp.path()));
        assert!(matches!(c.launch("a", "0..1", &[]), Err(NodeError::Cluster(m)) if m.contains("exited before")));
        let mut c = LocalCluster::new(ClusterConfig::processes(Path::new("echo"), &tiny(), tmp.path()));
        assert!(matches!(c.launch("a", "0..1", &[]), Err(NodeError::Cluster(m)) if m.contains("unexpected")));
        let mut c = LocalCluster::new(ClusterConfig::processes(Path::new("/no/such/odin"), &tiny(), tmp.path()));
        assert!(matches!(c.launch("a", "0..1", &[]), Err(NodeError::Process { .. })));
        assert!(c.members().is_empty() && c.kill(0).is_err());
    }
}
