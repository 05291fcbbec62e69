//! A member of a training run: the round driver.
//!
//! Each round r, every member:
//! 1. announces, signed, the id of the state (weights and outer momentum) it starts r from;
//!    a member that finds a newer round backed by a quorum first fetches that state;
//! 2. runs H inner AdamW steps on its own data and computes Δ = θ_r − θ_local;
//! 3. if most announcers of r start from another state than its own, fetches theirs and
//!    sits the round out; otherwise compresses Δ (int8, error feedback), holds it for
//!    others, and publishes a signed commitment to its hash;
//! 4. until the deadline, fetches every member's committed update and checks it (hash,
//!    shape, finite values), refusing with a logged reason what fails;
//! 5. votes, signed, for the updates it holds, and waits for the others' votes;
//! 6. aggregates the updates a strict majority of voters hold, in author order, with the
//!    run's robust rule, and takes the outer Nesterov step: θ_{r+1}.
//!
//! Everything a member refuses is counted in its round report and logged with the reason.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use odin_format::ModelId;
use odin_net::{peer_from_wire, peer_to_wire, verify_signed_by, Keypair, Multiaddr, Net, NetConfig, NetEvent, PeerId};
use odin_proto::train::{Announce, Commit, Gossip, Manifest, Update, Vote};
use odin_proto::{Envelope, PeerBytes};
use odin_train::collab::{Compressor, Sparsity, StateBlob};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::adversary::Behaviour;
use crate::book::Book;
use crate::config::{Rounds, RunConfig};
use crate::error::{CollabError, Result};
use crate::learner::{Inner, Learner};
use crate::store::{Shared, Store, Traffic};
use crate::wire::{fetch_state, fetch_update, hex, serve};

/// How long publishing waits for a peer on the topic before giving up on a message.
const PUBLISH_PATIENCE: Duration = Duration::from_secs(5);

/// How long a member lets the gossip mesh form before its first round.
const MESH_SETTLE: Duration = Duration::from_millis(1200);

/// What one member did in one round: a line of the per-round table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RoundReport {
    /// The round.
    pub round: u64,
    /// Members that started it from this node's state (this node included).
    pub members: usize,
    /// Updates aggregated.
    pub accepted: usize,
    /// Commitments and updates refused (late, bad, outside the run, replayed, …).
    pub rejected: usize,
    /// Why each was refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<String>,
    /// This node's mean inner loss (none when it sat the round out).
    pub loss: Option<f64>,
    /// Held-out loss of the weights after the round, when asked for.
    pub heldout: Option<f64>,
    /// Bytes of this node's own update.
    pub update_bytes: usize,
    /// Bytes this node sent during the round (its update served, its gossip, its requests).
    pub sent: u64,
    /// Bytes it received.
    pub received: u64,
    /// The id of the state the next round starts from (first bytes, hex).
    pub state: String,
    /// Whether this node fetched another state (it was behind, or in the minority).
    pub fetched_state: bool,
    /// Whether too few updates were accepted and the weights stayed.
    pub skipped: bool,
    /// Wall-clock seconds of the round.
    pub seconds: f64,
}

/// How a member runs, beyond the run's config.
#[derive(Debug, Clone)]
pub struct MemberOptions {
    /// The run.
    pub run: RunConfig,
    /// Where this member writes its model at the end.
    pub dir: PathBuf,
    /// How it behaves (honest, or one of the faults the tests inject).
    pub behaviour: Behaviour,
    /// Held-out batches scored after each round (0: none).
    pub heldout_batches: usize,
    /// Wait for this many other peers on the run's topic before round 0 (a swarm starting
    /// together), at most `start_wait`.
    pub expect_peers: usize,
    /// How long to wait for them.
    pub start_wait: Duration,
    /// Join a run in progress: wait for the next round's announcements and fetch that state,
    /// rather than start from round 0.
    pub join: bool,
}

/// How a run ended for this member.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// The run id.
    pub run: String,
    /// Rounds completed.
    pub rounds: u64,
    /// The final state's id.
    pub state: String,
    /// The exported model's id.
    pub model: String,
    /// Held-out loss of the final weights (when held-out batches were asked for).
    pub heldout: Option<f64>,
    /// Bytes sent and received over the run.
    pub sent: u64,
    /// Bytes received over the run.
    pub received: u64,
    /// With `privacy` set: (ε, δ) of this member's data over the run, by the RDP accountant
    /// (`odin_train::collab::epsilon`), one Gaussian release per update it sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<(f64, f64)>,
}

/// The topic a run's gossip travels on.
pub fn run_topic(run: &ModelId) -> String {
    format!("odin/run/{run}/train")
}

type Fetched = (u64, PeerBytes, [u8; 32], std::result::Result<(Update, Vec<f32>), String>);

/// One member of a run.
pub struct Member {
    net: Net,
    events: mpsc::Receiver<NetEvent>,
    key: Keypair,
    me: PeerBytes,
    run: ModelId,
    topic: String,
    cfg: Rounds,
    opts: MemberOptions,
    learner: Option<Learner>,
    params: usize,
    theta: Vec<f32>,
    momentum: Vec<f32>,
    round: u64,
    state: [u8; 32],
    store: Shared,
    traffic: Arc<Traffic>,
    book: Book,
    compressor: Compressor,
    old_updates: HashSet<[u8; 32]>,
    fetched_tx: mpsc::UnboundedSender<Fetched>,
    fetched_rx: mpsc::UnboundedReceiver<Fetched>,
    // This round's.
    collecting: bool,
    commits: BTreeMap<PeerBytes, [u8; 32]>,
    ahead: Vec<(PeerId, Commit)>,
    held: BTreeMap<PeerBytes, ([u8; 32], Vec<f32>)>,
    gone: BTreeSet<PeerBytes>,
    refused: Vec<String>,
    adopted: bool,
    released: u64,
    subscribed: BTreeSet<PeerId>,
}

impl Member {
    /// Set up the learner, compute the run id, and start this member's swarm with `net`'s
    /// addresses (its model field becomes the run id).
    pub async fn start(key: Keypair, mut net: NetConfig, opts: MemberOptions) -> Result<Self> {
        let train = opts.run.train_config()?;
        let me = peer_to_wire(&key.public().to_peer_id())?;
        let seed = u64::from_le_bytes(blake3::hash(me.as_bytes()).as_bytes()[..8].try_into().unwrap_or([0; 8]));
        let mut train = train;
        train.out = opts.dir.clone();
        let learner = Learner::new(train.clone(), seed)?;
        let theta = learner.start()?;
        let params = theta.len();
        if params > odin_proto::train::MAX_PARAMS {
            return Err(CollabError::Config(format!(
                "the model has {params} weights; training rounds carry at most {} in one update",
                odin_proto::train::MAX_PARAMS
            )));
        }
        let momentum = vec![0.0; params];
        let cfg = opts.run.rounds.clone();
        let store: Shared = Arc::new(Mutex::new(Store::default()));
        let blob = StateBlob { theta: theta.clone(), momentum: momentum.clone() }.to_bytes();
        let manifest = Manifest::of(0, params as u64, cfg.chunk_bytes, &blob);
        let state = manifest.id();
        let run = opts.run.run_id(&train, &state)?;
        if let Ok(mut s) = store.lock() {
            s.put_state(manifest, Arc::new(blob));
        }
        net.model = run;
        let (net, events) = Net::start(key.clone(), net).await?;
        let sparsity = cfg.topk.map_or(Sparsity::Dense, Sparsity::TopK);
        let (fetched_tx, fetched_rx) = mpsc::unbounded_channel();
        Ok(Self {
            topic: run_topic(&run),
            net,
            events,
            key,
            me,
            run,
            compressor: Compressor::new(params, sparsity),
            cfg,
            opts,
            learner: Some(learner),
            params,
            theta,
            momentum,
            round: 0,
            state,
            store,
            traffic: Arc::new(Traffic::default()),
            book: Book::default(),
            old_updates: HashSet::new(),
            fetched_tx,
            fetched_rx,
            collecting: false,
            commits: BTreeMap::new(),
            ahead: Vec::new(),
            held: BTreeMap::new(),
            gone: BTreeSet::new(),
            refused: Vec::new(),
            adopted: false,
            released: 0,
            subscribed: BTreeSet::new(),
        })
    }

    /// The run's id.
    pub fn run_id(&self) -> ModelId {
        self.run
    }

    /// Where this member listens, with its peer id: what others bootstrap from.
    pub fn addrs(&self) -> Vec<Multiaddr> {
        self.net.addrs()
    }

    /// Values in the model.
    pub fn params(&self) -> usize {
        self.params
    }

    /// Run every round, calling `on_round` after each; then export the model.
    pub async fn run(mut self, mut on_round: impl FnMut(&RoundReport)) -> Result<Summary> {
        let server = tokio::spawn(serve(self.net.clone(), self.run, self.store.clone(), self.traffic.clone()));
        self.net.subscribe(&self.topic).await?;
        let started = Instant::now() + self.opts.start_wait;
        let expect = self.opts.expect_peers;
        self.pump(started, |m| m.subscribed.len() >= expect).await;
        // Let the gossip mesh form (gossipsub grafts peers at its heartbeat, every 0.5 s), so
        // round 0's first messages are not published into a mesh still empty.
        self.pump(Instant::now() + MESH_SETTLE, |_| false).await;
        if self.opts.join {
            self.join().await?;
        }
        while self.round < self.cfg.rounds {
            let report = self.one_round().await?;
            on_round(&report);
        }
        // The end is a round boundary like any other: announce the final state, and a member
        // whose last round went another way than the majority's fetches theirs. Then stay a
        // little for slower members still fetching.
        let last = self.round;
        self.announce(last, self.state).await;
        // Wait for every member of the run still connected to say where it ended, within a
        // bound: a slow one may still be in the last round, or rounds behind (it catches up by
        // fetching the final state from us at its next round's start, so we must still be here).
        let bound = Duration::from_millis(2 * self.cfg.deadline_ms + self.cfg.vote_ms);
        self.pump(Instant::now() + bound, |m| {
            let ended = m.book.announcers(last);
            m.book.everyone().iter().all(|p| m.gone.contains(p) || ended.contains(p))
        })
        .await;
        // A member in the minority now fetches the majority's state from us: stay until each
        // has (it announces the state it fetched) or has gone, within the bound. Leaving after a
        // fixed pause instead let a fetch slowed by a loaded machine fail, and the run end split.
        if let Some((id, n, total)) = self.book.majority(last) {
            if n < total && !self.outvoted(last, id, n) {
                let ours = self.state;
                self.pump(Instant::now() + bound, |m| {
                    let on = m.book.members(last, &ours);
                    m.book.announcers(last).iter().all(|p| m.gone.contains(p) || on.contains(p))
                })
                .await;
            }
        }
        if let Some((id, n, total)) = self.book.majority(last) {
            if self.outvoted(last, id, n) {
                let peers: Vec<PeerBytes> = self.book.members(last, &id).into_iter().collect();
                tracing::warn!(
                    "the run ended with {n} of {total} members on state {}, not ours; fetching it",
                    hex(&id)
                );
                match self.adopt(last, id, &peers).await {
                    // Say so: the members holding it wait for that before they leave.
                    Ok(()) => self.announce(last, id).await,
                    Err(e) => tracing::warn!("{e}; this member ends on its own weights"),
                }
                let linger = Instant::now() + Duration::from_millis(self.cfg.vote_ms);
                self.pump(linger, |_| false).await;
            }
        }
        let heldout = self.heldout()?;
        server.abort();
        let model_dir = self.opts.dir.join("model");
        let theta = self.theta.clone();
        let model = self.learner_mut()?.export(&theta, &model_dir)?;
        let (sent, received) = self.traffic.totals();
        let privacy = self
            .cfg
            .privacy
            .map(|p| (odin_train::collab::epsilon(f64::from(p.noise), self.released, p.delta).0, p.delta));
        Ok(Summary {
            run: self.run.to_string(),
            rounds: self.round,
            state: hex(&self.state),
            model: model.to_string(),
            heldout,
            sent,
            received,
            privacy,
        })
    }

    fn learner_mut(&mut self) -> Result<&mut Learner> {
        self.learner.as_mut().ok_or_else(|| CollabError::Run("the learner was lost in a failed inner loop".into()))
    }

    fn heldout(&mut self) -> Result<Option<f64>> {
        if self.opts.heldout_batches == 0 {
            return Ok(None);
        }
        let (theta, n) = (self.theta.clone(), self.opts.heldout_batches);
        Ok(Some(self.learner_mut()?.heldout_loss(&theta, n)?))
    }

    /// Wait for a round boundary, then fetch the state most of its announcers name.
    ///
    /// A newcomer trusts the newest round anyone announces (a run that lost members may have
    /// fewer than a quorum left, waiting for it). A liar can thereby send a newcomer to
    /// weights of its own, but not make the run count the newcomer's updates: those name
    /// their base state, and the members refuse any other than theirs.
    async fn join(&mut self) -> Result<()> {
        let min = 1;
        let until = Instant::now() + Duration::from_millis(2 * self.cfg.deadline_ms + self.cfg.vote_ms);
        self.pump(until, |m| m.book.newest_backed(0, min).is_some()).await;
        if !self.catch_up(min).await? {
            return Err(CollabError::Run(
                "no round of this run was announced in time; is the run going, and is this the same run config?".into(),
            ));
        }
        Ok(())
    }

    /// Move to the newest round that at least `min` peers announced, if it is ahead of ours.
    async fn catch_up(&mut self, min: usize) -> Result<bool> {
        let after = if self.opts.join && self.round == 0 { 0 } else { self.round };
        let Some((round, id, peers)) = self.book.newest_backed(after, min) else { return Ok(false) };
        if round < self.round || (round == self.round && id == self.state) {
            return Ok(false);
        }
        tracing::info!("round {}: moving to round {round}, state {} from {} peers", self.round, hex(&id), peers.len());
        self.adopt(round, id, &peers).await?;
        Ok(true)
    }

    /// Fetch the state `id` of `round` from `peers` and start from it.
    async fn adopt(&mut self, round: u64, id: [u8; 32], peers: &[PeerBytes]) -> Result<()> {
        let peers: Vec<PeerId> = peers.iter().filter_map(|p| peer_from_wire(p).ok()).collect();
        let (m, blob) = fetch_state(&self.net, &peers, self.run, self.traffic.clone(), id)
            .await
            .map_err(|e| CollabError::Run(format!("cannot fetch state {} of round {round}: {e}", hex(&id))))?;
        if m.params as usize != self.params || m.round != round {
            return Err(CollabError::Run(format!(
                "state {} is for round {} with {} weights, not round {round} with {}",
                hex(&id),
                m.round,
                m.params,
                self.params
            )));
        }
        let s = StateBlob::from_bytes(&blob, self.params)?;
        (self.theta, self.momentum, self.round, self.state) = (s.theta, s.momentum, round, id);
        self.adopted = true;
        if let Ok(mut st) = self.store.lock() {
            st.put_state(m, Arc::new(blob));
        }
        Ok(())
    }

    async fn one_round(&mut self) -> Result<RoundReport> {
        let t0 = Instant::now();
        let (sent0, recv0) = self.traffic.totals();
        if let Err(e) = self.catch_up(self.cfg.quorum.max(1)).await {
            tracing::warn!("round {}: {e}; going on from this node's own state", self.round);
        }
        let r = self.round;
        self.begin_round();
        self.announce(r, self.state).await;
        let deadline = t0 + Duration::from_millis(self.cfg.deadline_ms);
        // A round needs a quorum: wait for enough members to start it from our state, so a
        // run that lost members waits for newcomers instead of racing through empty rounds.
        let quorum = self.cfg.quorum;
        self.pump(deadline, |m| m.expected().len() >= quorum).await;

        let inner = self.train_inner(r).await?;
        if let Behaviour::Slow(ms) = self.opts.behaviour {
            self.pump(Instant::now() + Duration::from_millis(ms), |_| false).await;
        }
        // In the minority: the majority started from other weights; take theirs and sit out.
        let mut loss = None;
        let mut update_bytes = 0;
        if let Some((id, n, total)) = self.book.majority(r) {
            if self.outvoted(r, id, n) {
                let peers: Vec<PeerBytes> = self.book.members(r, &id).into_iter().collect();
                tracing::warn!(
                    "round {r}: {n} of {total} members start from state {}, not ours; fetching it",
                    hex(&id)
                );
                // If the majority has moved on and no longer holds it, the next round's
                // catch-up fetches their newer state instead.
                match self.adopt(r, id, &peers).await {
                    Ok(()) => self.announce(r, id).await,
                    Err(e) => tracing::warn!("round {r}: {e}; sitting this round out"),
                }
            } else if let Some(inner) = inner {
                (loss, update_bytes) = self.commit(r, inner, deadline).await;
            }
        } else if let Some(inner) = inner {
            (loss, update_bytes) = self.commit(r, inner, deadline).await;
        }

        // Collect until every member's update is in, or the deadline.
        self.pump(deadline, |m| m.all_held()).await;
        self.collecting = false;
        let held: Vec<(PeerBytes, [u8; 32])> = self.held.iter().map(|(p, (h, _))| (p.clone(), *h)).collect();
        let vote = Vote { round: r, node: self.me.clone(), held, sig: vec![] };
        self.book.vote(&vote);
        self.publish(Gossip::Vote(vote)).await;
        let vote_deadline = Instant::now() + Duration::from_millis(self.cfg.vote_ms);
        self.pump(vote_deadline, |m| m.all_voted()).await;

        let mut counted: BTreeSet<PeerBytes> =
            self.book.voters(r).intersection(&self.book.members(r, &self.state)).cloned().collect();
        counted.insert(self.me.clone());
        let accepted = self.book.accepted(r, &counted);
        let updates = self.gather(r, &accepted).await;
        let skipped = updates.len() < self.cfg.quorum;
        if skipped {
            tracing::warn!(
                "round {r}: {} updates accepted, under the quorum of {}; the weights stay",
                updates.len(),
                self.cfg.quorum
            );
        } else {
            let refs: Vec<&[f32]> = updates.iter().map(|u| u.as_slice()).collect();
            if let Some(g) = self.cfg.aggregator.aggregate(&refs) {
                self.cfg.outer.step(&mut self.theta, &mut self.momentum, &g);
            }
        }
        let members = self.book.members(r, &self.state).len().max(1);
        let fetched_state = std::mem::take(&mut self.adopted);
        self.old_updates.extend(self.commits.values().copied());
        self.finish_round(r + 1);
        let heldout = self.heldout()?;
        let (sent1, recv1) = self.traffic.totals();
        Ok(RoundReport {
            round: r,
            members,
            accepted: updates.len(),
            rejected: self.refused.len(),
            refused: std::mem::take(&mut self.refused),
            loss,
            heldout,
            update_bytes,
            sent: sent1 - sent0,
            received: recv1 - recv0,
            state: hex(&self.state),
            fetched_state,
            skipped,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }

    fn begin_round(&mut self) {
        self.collecting = true;
        self.commits.clear();
        self.held.clear();
        self.gone.clear();
        self.refused.clear();
        // Commitments that arrived while this node was still in the previous round.
        let r = self.round;
        let (now, later): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.ahead).into_iter().partition(|(_, c)| c.round == r);
        self.ahead = later.into_iter().filter(|(_, c)| c.round > r).collect();
        for (src, c) in now {
            self.on_commit(src, c);
        }
    }

    /// Start the next round from the new weights.
    fn finish_round(&mut self, next: u64) {
        self.round = next;
        let blob = StateBlob { theta: self.theta.clone(), momentum: self.momentum.clone() }.to_bytes();
        let m = Manifest::of(next, self.params as u64, self.cfg.chunk_bytes, &blob);
        if let Ok(mut st) = self.store.lock() {
            self.state = st.put_state(m, Arc::new(blob));
            // Two rounds back, for members that fall behind while the others go on.
            st.prune(next.saturating_sub(2));
        }
        self.book.prune(next.saturating_sub(1));
    }

    /// The inner loop on a blocking thread, while the network is served. None if it failed
    /// (a diverged loss): the node then sends nothing this round.
    async fn train_inner(&mut self, r: u64) -> Result<Option<Inner>> {
        let mut learner = self.learner.take().ok_or_else(|| CollabError::Run("no learner".into()))?;
        let theta = self.theta.clone();
        let h = self.cfg.inner_steps;
        let mut job = tokio::task::spawn_blocking(move || {
            let out = learner.inner(&theta, r, h);
            (learner, out)
        });
        let (learner, out) = loop {
            tokio::select! {
                j = &mut job => break j.map_err(|e| CollabError::Run(format!("the inner loop panicked: {e}")))?,
                Some(ev) = self.events.recv() => self.on_net(ev),
                Some(f) = self.fetched_rx.recv() => self.on_fetched(f),
            }
        };
        self.learner = Some(learner);
        match out {
            Ok(i) => Ok(Some(i)),
            Err(e) => {
                tracing::warn!("round {r}: the inner loop failed ({e}); sending no update this round");
                Ok(None)
            }
        }
    }

    /// Compress and hold this node's update, and publish the commitment to it.
    async fn commit(&mut self, r: u64, inner: Inner, deadline: Instant) -> (Option<f64>, usize) {
        let mut delta: Vec<f32> = self.theta.iter().zip(&inner.local).map(|(a, b)| a - b).collect();
        if let Some(p) = &self.cfg.privacy {
            p.apply(&mut delta, &mut rand::rng());
        }
        if let Behaviour::Alie(_) = self.opts.behaviour {
            // Wait (at most half the time left) for the others' updates to hide among.
            let until = Instant::now() + deadline.saturating_duration_since(Instant::now()) / 2;
            self.pump(until, |m| m.held.len() + 1 >= m.expected().len()).await;
        }
        let others: Vec<Vec<f32>> = self.held.values().map(|(_, v)| v.clone()).collect();
        self.opts.behaviour.distort(&mut delta, &others);
        let update = self.compressor.compress(&delta);
        let hash = update.hash();
        let bytes = update.to_bytes().len();
        let sent = match update.decode() {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!("round {r}: this node's own update does not decode ({e}); sending none");
                return (Some(inner.loss), 0);
            }
        };
        if let Ok(mut st) = self.store.lock() {
            st.put_update(r, hash, Arc::new(update));
        }
        if self.opts.behaviour == Behaviour::Silent {
            return (Some(inner.loss), 0);
        }
        self.commits.insert(self.me.clone(), hash);
        self.held.insert(self.me.clone(), (hash, sent));
        let c = Commit {
            round: r,
            node: self.me.clone(),
            base: self.state,
            update: hash,
            samples: inner.samples,
            loss: inner.loss,
            sig: vec![],
        };
        self.publish(Gossip::Commit(c)).await;
        self.released += 1;
        (Some(inner.loss), bytes)
    }

    /// Whether the state `id`, which `n` members start `round` from, wins over ours: it has more
    /// announcers, or as many and the smaller id. Every honest member applies the same rule to
    /// the same announcements, so a split (even 2 against 2, when votes went two ways under
    /// load) resolves to one state instead of lasting.
    fn outvoted(&self, round: u64, id: [u8; 32], n: usize) -> bool {
        let ours = self.book.members(round, &self.state).len();
        id != self.state && (n > ours || (n == ours && id < self.state))
    }

    /// The members whose updates this round waits for: those that announced our state and
    /// have not disconnected.
    fn expected(&self) -> BTreeSet<PeerBytes> {
        let mut m = self.book.members(self.round, &self.state);
        m.insert(self.me.clone());
        m.retain(|p| !self.gone.contains(p));
        if self.opts.behaviour == Behaviour::Silent {
            m.remove(&self.me);
        }
        m
    }

    /// Every expected update is in, and they make a quorum: a round that lost a member after
    /// it started waits (until the deadline) for a newcomer to make up the number.
    fn all_held(&self) -> bool {
        self.held.len() >= self.cfg.quorum && self.expected().iter().all(|p| self.held.contains_key(p))
    }

    fn all_voted(&self) -> bool {
        let voters = self.book.voters(self.round);
        self.expected().iter().all(|p| voters.contains(p))
    }

    /// The dense updates of the accepted set, in author order; what is not held yet is
    /// fetched from the voters that hold it.
    async fn gather(&mut self, r: u64, accepted: &[(PeerBytes, [u8; 32])]) -> Vec<Vec<f32>> {
        let mut out = Vec::with_capacity(accepted.len());
        for entry in accepted {
            if let Some((h, v)) = self.held.get(&entry.0) {
                if *h == entry.1 {
                    out.push(v.clone());
                    continue;
                }
            }
            let mut got = None;
            for holder in self.book.holders(r, entry) {
                let Ok(peer) = peer_from_wire(&holder) else { continue };
                match fetch_update(&self.net, peer, self.run, self.traffic.clone(), r, entry.1, self.params).await {
                    Ok((u, dense)) => {
                        if let Ok(mut st) = self.store.lock() {
                            st.put_update(r, entry.1, Arc::new(u));
                        }
                        got = Some(dense);
                        break;
                    }
                    Err(e) => tracing::debug!("round {r}: update of {} from {peer}: {e}", short(&entry.0)),
                }
            }
            match got {
                Some(v) => out.push(v),
                None => tracing::warn!(
                    "round {r}: the majority accepted the update of {}, which no holder gave us; this node's \
                     weights will differ and it will fetch the majority's next round",
                    short(&entry.0)
                ),
            }
        }
        out
    }

    /// Process network events and fetch results until `done` or `until`.
    async fn pump(&mut self, until: Instant, done: impl Fn(&Self) -> bool) {
        let until = tokio::time::Instant::from_std(until);
        while !done(self) {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return,
                ev = self.events.recv() => match ev {
                    Some(ev) => self.on_net(ev),
                    None => return,
                },
                Some(f) = self.fetched_rx.recv() => self.on_fetched(f),
            }
        }
    }

    fn on_net(&mut self, ev: NetEvent) {
        match ev {
            NetEvent::Gossip { topic, source, data } if topic == self.topic => {
                self.traffic.received(data.len());
                self.on_gossip(source, &data)
            }
            NetEvent::Subscribed(p) => {
                self.subscribed.insert(p);
            }
            NetEvent::Disconnected(p) => {
                if let Ok(b) = peer_to_wire(&p) {
                    if b != self.me {
                        self.gone.insert(b);
                    }
                }
                self.subscribed.remove(&p);
            }
            _ => {}
        }
    }

    fn on_gossip(&mut self, source: PeerId, data: &[u8]) {
        let src = peer_to_wire(&source).ok();
        let name = src.as_ref().map(short).unwrap_or_default();
        let env = match Envelope::<Gossip>::from_bytes(data) {
            Ok(e) => e,
            Err(e) => return self.refuse_from(&name, &format!("unreadable training gossip: {e}")),
        };
        if env.model != self.run {
            return self.refuse_from(&name, &format!("a message for another run ({})", env.model));
        }
        let g = env.msg;
        if src.as_ref() != Some(g.node()) {
            return self.refuse_from(&name, "a message that names another node than its signer");
        }
        if !verify_signed_by(&source, &g.signing_bytes(&self.run), g.sig()) {
            return self.refuse_from(&name, "a message whose signature does not verify");
        }
        match g {
            Gossip::Announce(a) => {
                self.gone.remove(&a.node);
                self.book.announce(&a);
            }
            Gossip::Vote(v) => {
                if v.round + 1 >= self.round {
                    self.book.vote(&v);
                }
            }
            Gossip::Commit(c) => self.on_commit(source, c),
        }
    }

    fn on_commit(&mut self, source: PeerId, c: Commit) {
        let r = self.round;
        if c.round < r {
            return self.refuse(&c.node, &format!("late: a commitment for round {}, which is over (now {r})", c.round));
        }
        if c.round > r {
            if self.ahead.len() < 1024 {
                self.ahead.push((source, c));
            }
            return;
        }
        if self.old_updates.contains(&c.update) {
            return self.refuse(&c.node, "a replay of an update from an earlier round");
        }
        if !self.collecting {
            return self.refuse(&c.node, "late: the round's deadline has passed");
        }
        if !c.loss.is_finite() {
            return self.refuse(&c.node, "a commitment with a non-finite loss");
        }
        if c.base != self.state {
            return self.refuse(
                &c.node,
                &format!(
                    "from outside the run: its update starts from state {}, and this round from {}",
                    hex(&c.base),
                    hex(&self.state)
                ),
            );
        }
        // A commitment says which state its author started from: it announces as well, so a
        // lost announcement costs nothing.
        self.book.announce(&Announce { round: r, node: c.node.clone(), state: c.base, sig: Vec::new() });
        if let Some(h) = self.commits.get(&c.node) {
            if *h != c.update {
                self.refuse(&c.node, "a second, different commitment for the same round");
            }
            return;
        }
        self.commits.insert(c.node.clone(), c.update);
        let (net, run, traffic, tx, params) =
            (self.net.clone(), self.run, self.traffic.clone(), self.fetched_tx.clone(), self.params);
        tokio::spawn(async move {
            let got = fetch_update(&net, source, run, traffic, r, c.update, params).await;
            let _ = tx.send((r, c.node, c.update, got));
        });
    }

    fn on_fetched(&mut self, (r, author, hash, got): Fetched) {
        if r != self.round {
            return;
        }
        match got {
            Ok(_) if !self.collecting => self.refuse(&author, "late: its update arrived after the deadline"),
            Ok((u, dense)) => {
                if let Ok(mut st) = self.store.lock() {
                    st.put_update(r, hash, Arc::new(u));
                }
                self.held.insert(author, (hash, dense));
            }
            Err(e) => self.refuse(&author, &format!("its update was refused: {e}")),
        }
    }

    fn refuse(&mut self, node: &PeerBytes, why: &str) {
        self.refuse_from(&short(node), why);
    }

    fn refuse_from(&mut self, node: &str, why: &str) {
        tracing::warn!("round {}: refused from {node}: {why}", self.round);
        if self.refused.len() < 1024 {
            self.refused.push(why.to_string());
        }
    }

    /// Note and publish that this node starts `round` from `state`.
    async fn announce(&mut self, round: u64, state: [u8; 32]) {
        let a = Announce { round, node: self.me.clone(), state, sig: vec![] };
        self.book.announce(&a);
        self.publish(Gossip::Announce(a)).await;
    }

    /// Sign and publish `g` on the run's topic, waiting a little for a peer if none is there
    /// yet. A member alone on its topic publishes nothing.
    async fn publish(&mut self, mut g: Gossip) {
        match self.key.sign(&g.signing_bytes(&self.run)) {
            Ok(sig) => g.set_sig(sig),
            Err(e) => return tracing::warn!("cannot sign a training message: {e}"),
        }
        let bytes = Envelope { model: self.run, msg: g }.to_bytes();
        let until = Instant::now() + PUBLISH_PATIENCE;
        loop {
            match self.net.publish_on(&self.topic, bytes.clone()).await {
                Ok(()) => {
                    self.traffic.sent(bytes.len());
                    return;
                }
                Err(e) if Instant::now() >= until || self.subscribed.is_empty() && self.opts.expect_peers == 0 => {
                    return tracing::debug!("training gossip not published: {e}");
                }
                Err(_) => self.pump(Instant::now() + Duration::from_millis(100), |_| false).await,
            }
        }
    }
}

/// A peer id's last characters, for logs.
fn short(p: &PeerBytes) -> String {
    peer_from_wire(p).map(|p| p.to_string()).map(|s| s[s.len().saturating_sub(8)..].to_string()).unwrap_or_default()
}
