//! One stage of pipeline training: a block range of a model, its own AdamW, and the input
//! of the step in flight, kept for the backward pass. Pure compute; `relay.rs` puts it on
//! the network.
//!
//! The stages of a chain together do exactly what `Trainer::train_step` does on one machine
//! (one micro-batch): the last stage takes the same masked cross-entropy, gradients flow back
//! through `Shard::backward`, the driver clips by the global norm over every stage, and each
//! stage applies AdamW to its own parameters with the same learning rate and step count.

use std::collections::BTreeMap;
use std::ops::Range;

use candle_core::{DType, Device, Tensor};
use odin_model::{init_weights, ModelConfig, Shard, VarStore, Weights};
use odin_proto::pipeline::Input;
use odin_proto::Dtype;
use odin_train::optim::AdamW;
use odin_train::trainer::masked_cross_entropy;
use odin_train::TrainConfig;

use crate::error::{CollabError, Result};

/// A stage of a pipeline-training chain.
pub struct Stage {
    model_cfg: ModelConfig,
    vars: VarStore,
    names: Vec<String>,
    opt: AdamW,
    range: Range<usize>,
    saved: Option<(u64, Tensor)>,
    grads: Option<(u64, BTreeMap<String, Tensor>)>,
    wire: Dtype,
    device: Device,
}

/// What the backward pass gives back.
pub struct Back {
    /// dLoss/dInput, for the stage before (none for the first).
    pub input: Option<odin_proto::Tensor>,
    /// Squared L2 norm of this stage's parameter gradients.
    pub norm_sq: f64,
    /// The loss (last stage).
    pub loss: Option<f64>,
}

fn run_err(m: impl Into<String>) -> CollabError {
    CollabError::Run(m.into())
}

impl Stage {
    /// Blocks `range` of the model `cfg` trains, starting from the weights `odin train` would
    /// (the seeded init, or `model.init`); tensors travel as `wire`.
    pub fn new(cfg: &TrainConfig, range: Range<usize>, wire: Dtype) -> Result<Self> {
        let device = Device::Cpu;
        let model_cfg = ModelConfig::from_file(&cfg.model.config).map_err(odin_train::TrainError::from)?;
        let weights = match &cfg.model.init {
            Some(p) => Weights::load_safetensors(p, &device).map_err(odin_train::TrainError::from)?,
            None => init_weights(&model_cfg, cfg.seed, &device).map_err(odin_train::TrainError::from)?,
        };
        if range.is_empty() || range.end > model_cfg.num_layers() {
            return Err(run_err(format!("blocks {range:?} are not inside the model's {}", model_cfg.num_layers())));
        }
        let vars = VarStore::from_weights(&weights).map_err(odin_train::TrainError::from)?;
        let shard = Shard::new(&model_cfg, &vars.weights(), range.clone()).map_err(odin_train::TrainError::from)?;
        let names: Vec<String> = shard.params().iter().map(|(n, _)| n.clone()).collect();
        let opt = AdamW::new(cfg.adamw(), vars.iter().filter(|(n, _)| names.contains(n)))?;
        Ok(Self { model_cfg, vars, names, opt, range, saved: None, grads: None, wire, device })
    }

    /// The blocks it holds.
    pub fn range(&self) -> Range<usize> {
        self.range.clone()
    }

    /// Its own parameters, by name.
    pub fn weights(&self) -> BTreeMap<String, Tensor> {
        self.vars
            .iter()
            .filter(|(n, _)| self.names.contains(n))
            .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
            .collect()
    }

    fn shard(&self) -> Result<Shard> {
        Ok(Shard::new(&self.model_cfg, &self.vars.weights(), self.range.clone())
            .map_err(odin_train::TrainError::from)?)
    }

    fn input(&self, batch: u32, input: Input) -> Result<Tensor> {
        let shard_takes_ids = self.range.start == 0;
        let b = batch as usize;
        match (input, shard_takes_ids) {
            (Input::Tokens(ids), true) => {
                if b == 0 || !ids.len().is_multiple_of(b) {
                    return Err(run_err(format!("{} token ids do not split into {b} sequences", ids.len())));
                }
                let t = ids.len() / b;
                Ok(Tensor::from_vec(ids, (b, t), &self.device)?)
            }
            (Input::Hidden(h), false) => {
                let c = h.cols;
                let rows = h.rows;
                if b == 0 || !rows.is_multiple_of(b) {
                    return Err(run_err(format!("{rows} hidden rows do not split into {b} sequences")));
                }
                let v = h.decode().map_err(|e| run_err(e.to_string()))?;
                Ok(Tensor::from_vec(v, (b, rows / b, c), &self.device)?)
            }
            (Input::Tokens(_), false) => Err(run_err("this stage takes hidden states, not token ids")),
            (Input::Hidden(_), true) => Err(run_err("this stage holds block 0 and takes token ids")),
        }
    }

    fn to_wire(&self, t: &Tensor) -> Result<odin_proto::Tensor> {
        let dims = t.dims().to_vec();
        let c = *dims.last().ok_or_else(|| run_err("a scalar where a tensor was expected"))?;
        let v = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        odin_proto::Tensor::encode(&v, c, self.wire).map_err(|e| run_err(e.to_string()))
    }

    /// Run the blocks on the step's batch and keep the input.
    pub fn forward(&mut self, step: u64, batch: u32, input: Input) -> Result<odin_proto::Tensor> {
        if self.grads.is_some() {
            return Err(run_err("the previous step's gradients were never applied"));
        }
        let x = self.input(batch, input)?;
        let out = self.shard()?.forward(&x, None).map_err(odin_train::TrainError::from)?;
        self.saved = Some((step, x));
        self.to_wire(&out)
    }

    /// The last stage: loss against `targets` where `mask` is 1, and the backward pass.
    pub fn loss(&mut self, step: u64, batch: u32, input: Input, targets: Vec<u32>, mask: Vec<u8>) -> Result<Back> {
        if self.grads.is_some() {
            return Err(run_err("the previous step's gradients were never applied"));
        }
        let x = self.input(batch, input)?;
        let (b, t) = (x.dims()[0], x.dims()[1]);
        if targets.len() != b * t {
            return Err(run_err(format!("{} targets for {b} × {t} positions", targets.len())));
        }
        let y = Tensor::from_vec(targets, (b, t), &self.device)?;
        let m: Vec<f32> = mask.iter().map(|&v| f32::from(v)).collect();
        let m = Tensor::from_vec(m, (b, t), &self.device)?;
        let shard = self.shard()?;
        if !shard.has_head() {
            return Err(run_err("the loss needs the stage that holds the model's head"));
        }
        let mut loss = None;
        let g = shard
            .backward_with(&x, |logits| {
                let l = masked_cross_entropy(logits, &y, &m)
                    .map_err(|e| odin_model::ModelError::BadInput(e.to_string()))?;
                loss = Some(l.to_scalar::<f32>()?);
                Ok(l)
            })
            .map_err(odin_train::TrainError::from)?;
        let loss = loss.map(f64::from);
        if loss.is_some_and(|l| !l.is_finite()) {
            return Err(run_err(format!("the loss is {loss:?}")));
        }
        self.finish(step, g, loss)
    }

    /// The backward pass of the step in flight, from the gradient of the stage's output.
    pub fn backward(&mut self, step: u64, grad: odin_proto::Tensor) -> Result<Back> {
        let Some((s, x)) = self.saved.take() else { return Err(run_err("no forward pass to go back through")) };
        if s != step {
            return Err(run_err(format!("the forward pass in flight is step {s}, not {step}")));
        }
        let shard = self.shard()?;
        let out_dims = {
            let mut d = x.dims()[..2].to_vec();
            d.push(self.model_cfg.hidden_size());
            d
        };
        let v = grad.decode().map_err(|e| run_err(e.to_string()))?;
        if v.len() != out_dims.iter().product::<usize>() {
            return Err(run_err(format!("a gradient of {} values for an output of {out_dims:?}", v.len())));
        }
        let g_out = Tensor::from_vec(v, out_dims, &self.device)?;
        let g = shard.backward(&x, &g_out).map_err(odin_train::TrainError::from)?;
        self.finish(step, g, None)
    }

    fn finish(&mut self, step: u64, g: odin_model::ShardGrads, loss: Option<f64>) -> Result<Back> {
        let mut norm_sq = 0.0;
        let mut grads = BTreeMap::new();
        for (name, t) in g.params {
            let t = t.detach();
            norm_sq += f64::from(t.sqr()?.sum_all()?.to_scalar::<f32>()?);
            grads.insert(name, t);
        }
        self.grads = Some((step, grads));
        self.saved = None;
        let input = match g.input {
            Some(t) => Some(self.to_wire(&t)?),
            None => None,
        };
        Ok(Back { input, norm_sq, loss })
    }

    /// Apply the step's gradients times `scale` at learning rate `lr`.
    pub fn apply(&mut self, step: u64, lr: f64, scale: f64) -> Result<()> {
        let Some((s, mut grads)) = self.grads.take() else { return Err(run_err("no gradients to apply")) };
        if s != step {
            return Err(run_err(format!("the gradients held are step {s}'s, not {step}'s")));
        }
        if scale != 1.0 {
            for g in grads.values_mut() {
                *g = (g.clone() * scale)?;
            }
        }
        let names = &self.names;
        self.opt.step(self.vars.iter().filter(|(n, _)| names.contains(n)), &grads, lr)?;
        Ok(())
    }
}
