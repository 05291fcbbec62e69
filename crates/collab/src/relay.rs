//! The backward relay on the network: stages served on `/odin/pipeline/1`, and the driver
//! that sends each batch down the chain, the gradients back up, and tells every stage to
//! step with the global clipping scale.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use odin_format::ModelId;
use odin_net::{Net, PeerId, StreamProtocol};
use odin_proto::pipeline::{Input, Pipeline, Request, Response};
use odin_proto::{read_frame, write_frame, Envelope, Service, MAX_FRAME};
use odin_train::data::{batch_rng, TokenData};
use odin_train::TrainConfig;

use crate::error::{CollabError, Result};
use crate::stage::Stage;
use crate::store::Traffic;

/// The pipeline service's stream protocol.
pub const PIPELINE_PROTOCOL: StreamProtocol = StreamProtocol::new(<Pipeline as Service>::PROTOCOL_ID);
/// How long one request to a stage may take (a forward or backward pass of its blocks).
const STAGE_TIMEOUT: Duration = Duration::from_secs(120);

/// The id a chain's messages carry: the training config's hash, so stages of another
/// config refuse them.
pub fn chain_id(cfg: &TrainConfig) -> Result<ModelId> {
    let h = odin_train::trainer::config_hash(cfg)?;
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
}

/// Drives batches through a chain of stages, first to last.
pub struct Driver {
    id: ModelId,
    cfg: TrainConfig,
    data: TokenData,
    stages: Vec<(PeerId, odin_net::Stream)>,
    /// Steps done.
    pub step: u64,
    /// Bytes sent and received.
    pub traffic: Arc<Traffic>,
}

impl Driver {
    /// Connect to the stages (in block order) over `net`, with the data of `cfg`.
    pub async fn connect(net: &Net, cfg: TrainConfig, stages: &[PeerId]) -> Result<Self> {
        if cfg.batch.accumulation != 1 {
            return Err(CollabError::Config("pipeline training takes batch.accumulation = 1".into()));
        }
        let tk = odin_text::tokenizer_from_file(&cfg.data.tokenizer).map_err(odin_train::TrainError::from)?;
        let manifest = odin_data::read_manifest(&cfg.data.dir).map_err(odin_train::TrainError::from)?;
        let records = odin_data::read_split(&cfg.data.dir, &manifest, "train").map_err(odin_train::TrainError::from)?;
        let data = TokenData::new(&tk, &records, cfg.batch.seq_len)?;
        let mut streams = Vec::new();
        for &p in stages {
            let s = tokio::time::timeout(STAGE_TIMEOUT, net.open_stream_for(p, PIPELINE_PROTOCOL))
                .await
                .map_err(|_| CollabError::Run(format!("stage {p} did not open a stream in time")))??;
            streams.push((p, s));
        }
        Ok(Self { id: chain_id(&cfg)?, cfg, data, stages: streams, step: 0, traffic: Arc::new(Traffic::default()) })
    }

    async fn ask(&mut self, i: usize, req: Request) -> Result<Response> {
        let bytes = Envelope { model: self.id, msg: req }.to_bytes();
        let (peer, s) = &mut self.stages[i];
        let peer = *peer;
        let io = async {
            write_frame(s, &bytes).await?;
            read_frame(s, MAX_FRAME).await
        };
        let frame = tokio::time::timeout(STAGE_TIMEOUT, io)
            .await
            .map_err(|_| CollabError::Run(format!("stage {i} ({peer}) did not answer in time")))?
            .map_err(|e| CollabError::Run(format!("stage {i} ({peer}): {e}")))?;
        self.traffic.sent(bytes.len() + 4);
        self.traffic.received(frame.len() + 4);
        let env = Envelope::<Response>::from_bytes(&frame)
            .map_err(|e| CollabError::Run(format!("stage {i} ({peer}) answered garbage: {e}")))?;
        match env.msg {
            Response::Error(m) => Err(CollabError::Run(format!("stage {i} ({peer}): {m}"))),
            r => Ok(r),
        }
    }

    /// One optimizer step over the chain: the batch `odin train` would draw at this step.
    pub async fn step(&mut self) -> Result<RelayStep> {
        let t0 = Instant::now();
        let (cfg, step) = (&self.cfg, self.step);
        let level = cfg.max_level(step, self.data.levels);
        let mut rng = batch_rng(cfg.seed, step, 0);
        let batch = self.data.batch(&mut rng, cfg.batch.rows, cfg.batch.seq_len, &cfg.data.weights, level)?;
        let rows = batch.rows as u32;
        let n = self.stages.len();
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
        })
    }
}
