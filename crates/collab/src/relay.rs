//! The backward relay on the network: stages served on `/odin/pipeline/1` and announced on
//! their chain's gossip topic, and the driver that finds a chain of them, sends each batch
//! down it, the gradients back up, and tells every stage to step with the global clipping
//! scale.
//!
//! Failover works as replication, not as a route around the dead: a stage's weights and
//! AdamW moments exist only where it trained, so a stage can only be stood in for by another
//! that holds the same blocks and took the same steps. The driver sends every request of a
//! group to all its replicas at once, takes the answer most of them give (they are bit for
//! bit equal: the stages are deterministic), and drops a replica that fails, times out or
//! answers otherwise. A group goes on while one replica is left.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use odin_format::ModelId;
use odin_net::{Net, NetEvent, PeerId, StreamProtocol};
use odin_proto::pipeline::{Announce, Input, Pipeline, Request, Response};
use odin_proto::{read_frame, write_frame, Envelope, Service, MAX_FRAME};
use odin_train::data::{batch_rng, TokenData};
use odin_train::TrainConfig;

use crate::error::{CollabError, Result};
use crate::plan::{plan, Group};
use crate::stage::Stage;
use crate::store::Traffic;

/// The pipeline service's stream protocol.
pub const PIPELINE_PROTOCOL: StreamProtocol = StreamProtocol::new(<Pipeline as Service>::PROTOCOL_ID);
/// How long one request to a stage may take by default (a forward or backward pass of its
/// blocks); a stage that takes longer is dropped from its group.
pub const STAGE_TIMEOUT: Duration = Duration::from_secs(120);
/// How often a stage repeats its announcement (it also answers each new subscriber at once).
const ANNOUNCE_EVERY: Duration = Duration::from_secs(2);

/// The gossip topic a chain's stages announce themselves on.
pub fn stage_topic(id: &ModelId) -> String {
    format!("odin-pipeline/1/{id}")
}

/// The id a chain's messages carry: the training config's hash, so stages of another
/// config refuse them. The run's length is left out: the schedule and the curriculum that
/// depend on it are the driver's (a stage takes the learning rate with every step), so one
/// set of stages serves a driver of any number of steps.
pub fn chain_id(cfg: &TrainConfig) -> Result<ModelId> {
    let mut c = cfg.clone();
    c.run.steps = 0;
    let h = odin_train::trainer::config_hash(&c)?;
    Ok(ModelId(*blake3::hash(format!("odin-pipeline/1\0{h}").as_bytes()).as_bytes()))
}

/// Serve `stage` on `net` until the swarm stops. One driver at a time: requests are
/// answered in the order they come. The caller keeps a handle on the stage (its weights).
pub async fn serve_stage(net: Net, id: ModelId, stage: Arc<Mutex<Stage>>) -> Result<()> {
    let mut incoming = net.accept_for(PIPELINE_PROTOCOL)?;
    while let Some((peer, mut s)) = incoming.next().await {
        let stage = stage.clone();
        tokio::spawn(async move {
            loop {
                let Ok(frame) = read_frame(&mut s, MAX_FRAME).await else { return };
                let reply = match Envelope::<Request>::from_bytes(&frame) {
                    Ok(env) if env.model != id => Response::Error(format!(
                        "this stage trains chain {id}, not {}; start every stage with the same training config",
                        env.model
                    )),
                    Ok(env) => {
                        let stage = stage.clone();
                        tokio::task::spawn_blocking(move || answer(&stage, env.msg))
                            .await
                            .unwrap_or_else(|e| Response::Error(format!("the stage failed: {e}")))
                    }
                    Err(e) => Response::Error(format!("unreadable request: {e}")),
                };
                if write_frame(&mut s, &Envelope { model: id, msg: reply }.to_bytes()).await.is_err() {
                    tracing::debug!("pipeline stream from {peer} closed");
                    return;
                }
            }
        });
    }
    Ok(())
}

/// Announce that this node holds `range` of chain `id`: at once, to every peer that
/// subscribes to the chain's topic (a driver looking for stages), and every few seconds.
/// Runs until `events` closes; the caller serves the stage beside it ([`serve_stage`]).
pub async fn announce_stage(
    net: Net,
    mut events: tokio::sync::mpsc::Receiver<NetEvent>,
    id: ModelId,
    range: Range<usize>,
) -> Result<()> {
    let topic = stage_topic(&id);
    net.subscribe(&topic).await?;
    let mut every = tokio::time::interval(ANNOUNCE_EVERY);
    loop {
        tokio::select! {
            e = events.recv() => match e {
                None => return Ok(()),
                Some(NetEvent::Subscribed(_)) => {}
                Some(_) => continue,
            },
            _ = every.tick() => {}
        }
        let a = Announce {
            start: range.start as u32,
            end: range.end as u32,
            addrs: net.addrs().iter().map(|a| a.to_string()).collect(),
        };
        // With no peer on the topic yet there is no one to tell; the next tick or subscriber retries.
        match net.publish_on(&topic, Envelope { model: id, msg: a }.to_bytes()).await {
            Ok(()) => tracing::debug!("announced blocks {range:?} on {topic}"),
            Err(e) => tracing::debug!("stage announcement not sent: {e}"),
        }
    }
}

fn answer(stage: &Mutex<Stage>, req: Request) -> Response {
    let Ok(mut st) = stage.lock() else { return Response::Error("the stage is unusable after a failure".into()) };
    let grads = |b: crate::stage::Back| Response::Grads { input: b.input, norm_sq: b.norm_sq, loss: b.loss };
    let out = match req {
        Request::Forward { step, batch, input } => st.forward(step, batch, input).map(Response::Hidden),
        Request::Loss { step, batch, input, targets, mask } => st.loss(step, batch, input, targets, mask).map(grads),
        Request::Backward { step, grad } => st.backward(step, grad).map(grads),
        Request::Apply { step, lr, scale } => st.apply(step, lr, scale).map(|_| Response::Applied),
    };
    out.unwrap_or_else(|e| Response::Error(e.to_string()))
}

/// What one pipeline step did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RelayStep {
    /// Steps done after it.
    pub step: u64,
    /// The loss.
    pub loss: f64,
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
    /// Non-padding tokens in the batch.
    pub tokens: usize,
    /// Seconds it took.
    pub seconds: f64,
    /// Replicas still in each group, in block order.
    pub replicas: Vec<usize>,
}

/// A stage the driver stopped using, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Dropped {
    /// The stage.
    pub peer: String,
    /// Its blocks.
    pub blocks: (usize, usize),
    /// The step it was dropped at.
    pub step: u64,
    /// What it did.
    pub reason: String,
}

struct Link {
    range: Range<usize>,
    replicas: Vec<(PeerId, odin_net::Stream)>,
}

/// Drives batches through a chain of stage groups, first to last.
pub struct Driver {
    id: ModelId,
    cfg: TrainConfig,
    data: TokenData,
    links: Vec<Link>,
    timeout: Duration,
    /// Steps done.
    pub step: u64,
    /// Bytes sent and received.
    pub traffic: Arc<Traffic>,
    /// Stages dropped so far.
    pub dropped: Vec<Dropped>,
}

/// The stages heard on a chain's topic: who holds which blocks, and where they listen.
#[derive(Debug, Default, Clone)]
pub struct Heard {
    /// Each stage's blocks.
    pub stages: BTreeMap<PeerId, Range<usize>>,
    /// Each stage's addresses.
    pub addrs: BTreeMap<PeerId, Vec<odin_net::Multiaddr>>,
}

impl Heard {
    /// Take in one network event; true when it was a new or changed stage announcement.
    pub fn hear(&mut self, id: &ModelId, e: &NetEvent) -> bool {
        let NetEvent::Gossip { topic, source, data } = e else { return false };
        if *topic != stage_topic(id) {
            return false;
        }
        let a = match Envelope::<Announce>::from_bytes(data) {
            Ok(env) if env.model == *id => env.msg,
            Ok(env) => {
                tracing::warn!("stage {source} announced chain {} on chain {id}'s topic; ignored", env.model);
                return false;
            }
            Err(e) => {
                tracing::warn!("stage {source} sent an unreadable announcement: {e}");
                return false;
            }
        };
        let range = a.start as usize..a.end as usize;
        let addrs = a.addrs.iter().filter_map(|s| s.parse().ok()).collect();
        self.addrs.insert(*source, addrs);
        self.stages.insert(*source, range.clone()) != Some(range)
    }
}

/// Wait (up to `wait`) until the stages announced on chain `id`'s topic make a chain over the
/// model's `layers` blocks with at least `min_replicas` per group; dial them and return it.
pub async fn find_chain(
    net: &Net,
    events: &mut tokio::sync::mpsc::Receiver<NetEvent>,
    id: ModelId,
    layers: usize,
    min_replicas: usize,
    wait: Duration,
) -> Result<Vec<Group>> {
    net.subscribe(&stage_topic(&id)).await?;
    let until = Instant::now() + wait;
    let mut heard = Heard::default();
    loop {
        if let Some(chain) = plan(&heard.stages, layers, min_replicas) {
            for g in &chain {
                for p in &g.replicas {
                    for a in heard.addrs.get(p).into_iter().flatten() {
                        // One address that answers is enough; the others may be another interface.
                        if net.dial(a.clone()).await.is_ok() {
                            break;
                        }
                    }
                }
            }
            return Ok(chain);
        }
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Some(e)) => {
                heard.hear(&id, &e);
            }
            Ok(None) => return Err(CollabError::Run("the network stopped while looking for stages".into())),
            Err(_) => {
                let seen: Vec<String> = heard.stages.iter().map(|(p, r)| format!("{p} holds {r:?}")).collect();
                return Err(CollabError::Run(format!(
                    "no chain of stages covers the model's {layers} blocks with {min_replicas} replica(s) each after {wait:?} \
                     (heard: {}); start the missing stages with `odin node --stage` and the same training config",
                    if seen.is_empty() { "nothing".to_string() } else { seen.join(", ") }
                )));
            }
        }
    }
}

impl Driver {
    /// Connect to every replica of every group of `chain` (in block order) over `net`, with
    /// the data of `cfg`. A replica that cannot be reached is left out (and listed in
    /// `dropped`); a group with none is an error.
    pub async fn connect(net: &Net, cfg: TrainConfig, chain: &[Group]) -> Result<Self> {
        if cfg.batch.accumulation != 1 {
            return Err(CollabError::Config("pipeline training takes batch.accumulation = 1".into()));
        }
        let tk = odin_text::tokenizer_from_file(&cfg.data.tokenizer).map_err(odin_train::TrainError::from)?;
        let manifest = odin_data::read_manifest(&cfg.data.dir).map_err(odin_train::TrainError::from)?;
        let records = odin_data::read_split(&cfg.data.dir, &manifest, "train").map_err(odin_train::TrainError::from)?;
        let data = TokenData::new(&tk, &records, cfg.batch.seq_len)?;
        let mut links = Vec::new();
        let mut dropped = Vec::new();
        for g in chain {
            let mut replicas = Vec::new();
            for &p in &g.replicas {
                match tokio::time::timeout(STAGE_TIMEOUT, net.open_stream_for(p, PIPELINE_PROTOCOL)).await {
                    Ok(Ok(s)) => replicas.push((p, s)),
                    Ok(Err(e)) => dropped.push(drop_note(p, &g.range, 0, format!("no stream: {e}"))),
                    Err(_) => dropped.push(drop_note(p, &g.range, 0, "no stream in time".into())),
                }
            }
            if replicas.is_empty() {
                return Err(CollabError::Run(format!("no stage holding blocks {:?} could be reached", g.range)));
            }
            links.push(Link { range: g.range.clone(), replicas });
        }
        Ok(Self {
            id: chain_id(&cfg)?,
            cfg,
            data,
            links,
            timeout: STAGE_TIMEOUT,
            step: 0,
            traffic: Arc::new(Traffic::default()),
            dropped,
        })
    }

    /// How long a stage may take to answer one request before it is dropped.
    pub fn set_timeout(&mut self, t: Duration) {
        self.timeout = t;
    }

    /// Replicas still in each group, in block order.
    pub fn replicas(&self) -> Vec<usize> {
        self.links.iter().map(|l| l.replicas.len()).collect()
    }

    /// Ask every replica of group `g` the same thing at once; keep those that give the answer
    /// most of them give, drop the rest, and return that answer.
    async fn ask(&mut self, g: usize, req: Request) -> Result<Response> {
        let bytes = Envelope { model: self.id, msg: req }.to_bytes();
        let (id, timeout, step) = (self.id, self.timeout, self.step);
        let link = &mut self.links[g];
        let asks = link.replicas.iter_mut().map(|(peer, s)| {
            let bytes = &bytes;
            async move {
                let io = async {
                    write_frame(s, bytes).await?;
                    read_frame(s, MAX_FRAME).await
                };
                let answer = match tokio::time::timeout(timeout, io).await {
                    Err(_) => Err(format!("did not answer within {timeout:?}")),
                    Ok(Err(e)) => Err(format!("the stream failed: {e}")),
                    Ok(Ok(frame)) => match Envelope::<Response>::from_bytes(&frame) {
                        Err(e) => Err(format!("answered garbage: {e}")),
                        Ok(env) if env.model != id => Err(format!("answered for chain {}", env.model)),
                        Ok(Envelope { msg: Response::Error(m), .. }) => Err(m),
                        Ok(env) => Ok((env.msg, frame.len() + 4)),
                    },
                };
                (*peer, answer)
            }
        });
        let answers = futures::future::join_all(asks).await;
        let range = link.range.clone();
        self.traffic.sent((bytes.len() + 4) * answers.len());
        let mut ok: Vec<(PeerId, Response)> = Vec::new();
        let mut bad: Vec<(PeerId, String)> = Vec::new();
        for (peer, a) in answers {
            match a {
                Ok((r, n)) => {
                    self.traffic.received(n);
                    ok.push((peer, r));
                }
                Err(why) => bad.push((peer, why)),
            }
        }
        // The answer most replicas agree on; a tie between different answers cannot say who is right.
        let votes = |r: &Response| ok.iter().filter(|(_, o)| o == r).count();
        let best = ok.iter().map(|(_, r)| votes(r)).max().unwrap_or(0);
        let winners: Vec<&Response> = ok.iter().map(|(_, r)| r).filter(|r| votes(r) == best).collect();
        let chosen = match winners.first() {
            Some(r) if winners.iter().all(|w| w == r) => Some((*r).clone()),
            Some(_) => {
                let who: Vec<String> = ok.iter().map(|(p, _)| p.to_string()).collect();
                return Err(CollabError::Run(format!(
                    "the replicas of blocks {range:?} answered step {step} differently and no majority says which is right ({}); \
                     run an odd number of replicas, or drop the one you do not trust",
                    who.join(", ")
                )));
            }
            None => None,
        };
        if let Some(c) = &chosen {
            for (peer, r) in &ok {
                if r != c {
                    bad.push((*peer, "answered differently from the other replicas".into()));
                }
            }
        }
        for (peer, why) in bad {
            tracing::warn!("dropping stage {peer} (blocks {range:?}) at step {step}: {why}");
            self.links[g].replicas.retain(|(p, _)| *p != peer);
            self.dropped.push(drop_note(peer, &range, step, why));
        }
        chosen.ok_or_else(|| {
            let why: Vec<String> = self
                .dropped
                .iter()
                .filter(|d| d.blocks == (range.start, range.end))
                .map(|d| format!("{}: {}", d.peer, d.reason))
                .collect();
            CollabError::Run(format!(
                "every stage holding blocks {range:?} has failed ({}); their weights are gone, so training stops at step {step}",
                why.join("; ")
            ))
        })
    }

    /// One optimizer step over the chain: the batch `odin train` would draw at this step.
    pub async fn step(&mut self) -> Result<RelayStep> {
        let t0 = Instant::now();
        let (cfg, step) = (&self.cfg, self.step);
        let level = cfg.max_level(step, self.data.levels);
        let mut rng = batch_rng(cfg.seed, step, 0);
        let batch = self.data.batch(&mut rng, cfg.batch.rows, cfg.batch.seq_len, &cfg.data.weights, level)?;
        let rows = batch.rows as u32;
        let n = self.links.len();
        let mut x = Input::Tokens(batch.inputs.clone());
        for i in 0..n - 1 {
            match self.ask(i, Request::Forward { step, batch: rows, input: x }).await? {
                Response::Hidden(h) => x = Input::Hidden(h),
                other => return Err(CollabError::Run(format!("stage {i} answered a forward pass with {other:?}"))),
            }
        }
        let mask = batch.mask.iter().map(|&m| u8::from(m > 0.0)).collect();
        let last = Request::Loss { step, batch: rows, input: x, targets: batch.targets.clone(), mask };
        let (mut grad, mut norm_sq, loss) = match self.ask(n - 1, last).await? {
            Response::Grads { input, norm_sq, loss: Some(l) } => (input, norm_sq, l),
            other => return Err(CollabError::Run(format!("the last stage answered the loss with {other:?}"))),
        };
        for i in (0..n - 1).rev() {
            let g = grad.take().ok_or_else(|| CollabError::Run(format!("stage {} sent no input gradient", i + 1)))?;
            match self.ask(i, Request::Backward { step, grad: g }).await? {
                Response::Grads { input, norm_sq: s, .. } => {
                    grad = input;
                    norm_sq += s;
                }
                other => return Err(CollabError::Run(format!("stage {i} answered a backward pass with {other:?}"))),
            }
        }
        // As `clip_global_norm` does on one machine, over every stage's gradients at once.
        let norm = norm_sq.sqrt();
        let clip = self.cfg.optim.clip;
        let scale = if clip > 0.0 && norm > clip { clip / (norm + 1e-12) } else { 1.0 };
        let lr = self.cfg.schedule().lr_at(step);
        for i in 0..n {
            self.ask(i, Request::Apply { step, lr, scale }).await?;
        }
        self.step += 1;
        Ok(RelayStep {
            step: self.step,
            loss,
            grad_norm: norm,
            tokens: batch.real_tokens,
            seconds: t0.elapsed().as_secs_f64(),
            replicas: self.replicas(),
        })
    }
}

fn drop_note(peer: PeerId, range: &Range<usize>, step: u64, reason: String) -> Dropped {
    Dropped { peer: peer.to_string(), blocks: (range.start, range.end), step, reason }
}
