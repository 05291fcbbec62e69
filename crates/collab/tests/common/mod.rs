//! A training run's members on loopback, each on its own thread and runtime, so a test can
//! kill one outright: its runtime is dropped, its swarm with it, and its connections close as
//! a killed process's would.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::OnceLock;
use std::time::Duration;

use odin_collab::{Behaviour, Member, MemberOptions, RoundReport, RunConfig, Summary};
use odin_net::{Keypair, Multiaddr, NetConfig};

/// A tiny dataset shared by every test of the binary.
pub fn data() -> &'static Path {
    static DATA: OnceLock<PathBuf> = OnceLock::new();
    DATA.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("odin-collab-data-{}", std::process::id()));
        let mut o = odin_data::BuildOptions::preset("tiny", 5).unwrap();
        o.train = 300;
        odin_data::build(&o, &dir, &|_, _, _, _| {}).unwrap();
        dir
    })
}

/// A run directory: model config, trainer TOML and run TOML with `rounds_toml` as `[rounds]`.
pub fn run_config(dir: &Path, rounds_toml: &str) -> PathBuf {
    let tok = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/odin-tiny/tokenizer.json");
    std::fs::write(
        dir.join("model.json"),
        r#"{"architecture":"rwkv6","decay_lora":8,"ffn_size":64,"group_norm_eps":0.00064,"head_size":16,
           "hidden_size":32,"layer_norm_eps":1e-5,"mix_lora":4,"num_layers":2,"vocab_size":1024}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("train.toml"),
        format!(
            "seed = 3\nout = \"unused\"\n[model]\nconfig = \"model.json\"\n[data]\ndir = {:?}\ntokenizer = {:?}\n\
             [optim]\nlr = 1e-2\nmin_lr = 1e-3\nwarmup_steps = 2\n[batch]\nrows = 2\nseq_len = 64\n\
             [run]\nsteps = 100\ncheckpoint_every = 1000\n",
            data().display().to_string(),
            tok.display().to_string()
        ),
    )
    .unwrap();
    let run = dir.join("run.toml");
    std::fs::write(&run, format!("name = \"test\"\ntrain = \"train.toml\"\n[rounds]\n{rounds_toml}\n")).unwrap();
    run
}

/// How a member ended.
pub enum Outcome {
    /// It ran every round.
    Done(Summary, Vec<RoundReport>),
    /// It failed.
    Failed(String),
    /// The test killed it.
    Killed(Vec<RoundReport>),
}

/// A member running on its own thread.
pub struct Running {
    /// Its addresses.
    pub addrs: Vec<Multiaddr>,
    /// The run's id.
    pub run: odin_format::ModelId,
    /// Its reports as they come.
    pub reports: std_mpsc::Receiver<RoundReport>,
    kill: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Outcome>>,
}

/// What a member is started with.
pub struct Start<'a> {
    pub run: &'a Path,
    pub dir: PathBuf,
    pub bootstrap: Vec<Multiaddr>,
    pub behaviour: Behaviour,
    pub expect_peers: usize,
    pub join: bool,
    pub heldout_batches: usize,
}

impl<'a> Start<'a> {
    /// An honest member of `run` writing to `dir`, expecting `expect_peers` others.
    pub fn new(run: &'a Path, dir: PathBuf, expect_peers: usize) -> Self {
        Self {
            run,
            dir,
            bootstrap: Vec::new(),
            behaviour: Behaviour::Honest,
            expect_peers,
            join: false,
            heldout_batches: 0,
        }
    }
}

/// Start a member.
pub fn launch(s: Start<'_>) -> Running {
    let run = RunConfig::load(s.run).unwrap();
    let opts = MemberOptions {
        run,
        dir: s.dir,
        behaviour: s.behaviour,
        heldout_batches: s.heldout_batches,
        expect_peers: s.expect_peers,
        start_wait: Duration::from_secs(20),
        join: s.join,
    };
    let mut net = NetConfig::loopback(odin_format::ModelId([0; 32]));
    net.bootstrap = s.bootstrap;
    let (addr_tx, addr_rx) = std_mpsc::channel();
    let (rep_tx, rep_rx) = std_mpsc::channel();
    let (kill_tx, kill_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let out = rt.block_on(async move {
            let m = match Member::start(Keypair::generate_ed25519(), net, opts).await {
                Ok(m) => m,
                Err(e) => {
                    let _ = addr_tx.send((Vec::new(), odin_format::ModelId([0; 32])));
                    return Outcome::Failed(e.to_string());
                }
            };
            let _ = addr_tx.send((m.addrs(), m.run_id()));
            let mut seen = Vec::new();
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let run = m.run(move |r| {
                let _ = tx.send(r.clone());
                let _ = rep_tx.send(r.clone());
            });
            tokio::pin!(run);
            let mut kill_rx = kill_rx;
            loop {
                tokio::select! {
                    r = &mut run => {
                        while let Ok(x) = rx.try_recv() { seen.push(x); }
                        return match r {
                            Ok(s) => Outcome::Done(s, seen),
                            Err(e) => Outcome::Failed(e.to_string()),
                        };
                    }
                    Some(x) = rx.recv() => seen.push(x),
                    _ = &mut kill_rx => return Outcome::Killed(seen),
                }
            }
        });
        // Every task of the member, its swarm included, goes with the runtime.
        rt.shutdown_background();
        out
    });
    let (addrs, run) = addr_rx.recv_timeout(Duration::from_secs(60)).unwrap();
    Running { addrs, run, reports: rep_rx, kill: Some(kill_tx), thread: Some(thread) }
}

impl Running {
    /// Kill it now.
    pub fn kill(&mut self) {
        if let Some(k) = self.kill.take() {
            let _ = k.send(());
        }
    }

    /// Wait for its end.
    pub fn join(mut self) -> Outcome {
        self.thread.take().unwrap().join().unwrap()
    }

    /// Wait for the end of a member that must finish.
    pub fn finished(self) -> (Summary, Vec<RoundReport>) {
        match self.join() {
            Outcome::Done(s, r) => (s, r),
            Outcome::Failed(e) => panic!("a member failed: {e}"),
            Outcome::Killed(_) => panic!("a member was killed"),
        }
    }
}

/// Log to the test's output when RUST_LOG asks.
pub fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
