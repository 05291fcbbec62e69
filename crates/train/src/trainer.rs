//! The local trainer: packed batches, answer-only loss, AdamW with warmup and
//! cosine decay, clipping, accumulation, checkpoints and exact resume.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, D};
use odin_model::{init_weights, ModelConfig, Shard, VarStore, Weights};
use odin_text::Tokenizer;
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::data::{batch_rng, Batch, TokenData};
use crate::error::{io_err, Result, TrainError};
use crate::optim::{clip_global_norm, AdamW};

/// Mean cross-entropy over the positions where `mask` is 1.
///
/// `logits` [B, T, V], `targets` [B, T] (u32), `mask` [B, T] (f32). Built from
/// primitive ops so the gradient reaches every parameter.
pub fn masked_cross_entropy(logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let v = logits.dim(D::Minus1)?;
    let lp = odin_model::ops::log_softmax_last(&logits.reshape(((), v))?)?;
    let picked = lp.gather(&targets.flatten_all()?.unsqueeze(1)?, 1)?.squeeze(1)?;
    let m = mask.flatten_all()?.to_dtype(picked.dtype())?;
    let n = m.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    if n == 0.0 {
        return Err(TrainError::Data("a batch has no answer tokens to learn from".into()));
    }
    Ok(((picked * m)?.sum_all()?.neg()? / n)?)
}

/// The seed of the held-out batches ([`Trainer::heldout_loss`]), apart from any run's.
const HELDOUT_SEED: u64 = 0x0d1e_4e1d;
/// Rows per held-out batch, whatever the run's own batches.
pub const HELDOUT_ROWS: usize = 8;

/// What one optimizer step did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepStats {
    /// Steps completed after this one.
    pub step: u64,
    /// Mean answer-token loss over the step's micro-batches.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Non-padding tokens processed in this step.
    pub tokens: usize,
    /// Tokens per second of this step.
    pub tokens_per_s: f64,
    /// Wall-clock seconds of this step.
    #[serde(default)]
    pub seconds: f64,
    /// Highest difficulty level the curriculum allowed.
    pub max_level: u8,
}

/// `checkpoint/state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Optimizer steps completed.
    pub step: u64,
    /// Run seed. The batch RNG of every step derives from (seed, step, micro-batch), so
    /// (seed, step) is the whole RNG state.
    pub seed: u64,
    /// AdamW's update counter.
    pub adam_t: u64,
    /// Non-padding tokens trained on so far.
    pub tokens_seen: u64,
    /// Training seconds so far, across sittings.
    pub train_seconds: f64,
    /// blake3 of the training config, so a checkpoint is not resumed under another config.
    pub config_hash: String,
    /// blake3 of the dataset manifest.
    pub data_hash: String,
}

/// A training run.
pub struct Trainer {
    /// The run's config.
    pub cfg: TrainConfig,
    /// The model's config.
    pub model_cfg: ModelConfig,
    /// Trainable weights.
    pub vars: VarStore,
    opt: AdamW,
    data: TokenData,
    /// The tokenizer from the config.
    pub tokenizer: Tokenizer,
    /// Optimizer steps completed.
    pub step: u64,
    /// Tokens trained on.
    pub tokens_seen: u64,
    /// Seconds spent training, across sittings.
    pub train_seconds: f64,
    /// blake3 of the dataset manifest.
    pub data_hash: String,
    /// Seed of the batch sampler: the run seed, unless a node training with others draws
    /// its own batches ([`Trainer::set_weights`]'s callers set it per node).
    pub batch_seed: u64,
    device: Device,
}

/// Why [`Trainer::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// All steps done.
    Finished,
    /// Stopped by the flag (Ctrl-C); a checkpoint was saved.
    Interrupted,
}

/// Hash of everything that shapes the run's trajectory. Paths are left out (a run can
/// move with its repository); files are hashed by content instead.
pub fn config_hash(cfg: &TrainConfig) -> Result<String> {
    let read = |p: &Path| std::fs::read(p).map_err(io_err(p));
    let mut what = serde_json::json!({
        "seed": cfg.seed,
        "model_config": blake3::hash(&read(&cfg.model.config)?).to_hex().to_string(),
        "tokenizer": blake3::hash(&read(&cfg.data.tokenizer)?).to_hex().to_string(),
        "weights": cfg.data.weights,
        "optim": cfg.optim,
        "batch": cfg.batch,
        "steps": cfg.run.steps,
        "curriculum": cfg.curriculum,
    });
    // Only present when set, so runs from a seeded init keep their hashes.
    if let Some(init) = &cfg.model.init {
        what["init"] = blake3::hash(&read(init)?).to_hex().to_string().into();
    }
    Ok(blake3::hash(what.to_string().as_bytes()).to_hex().to_string())
}

impl Trainer {
    /// A fresh run on the CPU: weights initialised from the run seed.
    pub fn new(cfg: TrainConfig) -> Result<Self> {
        Self::new_on(cfg, Device::Cpu)
    }

    /// A fresh run on `device` (a CUDA device needs the `cuda` feature).
    pub fn new_on(cfg: TrainConfig, device: Device) -> Result<Self> {
        let model_cfg = ModelConfig::from_file(&cfg.model.config)?;
        let weights = match &cfg.model.init {
            Some(path) => {
                let w = Weights::load_safetensors(path, &device)?;
                w.validate(&model_cfg)?;
                w
            }
            // Initialised on the CPU, so the same seed gives the same start on every device.
            None => init_weights(&model_cfg, cfg.seed, &Device::Cpu)?.to_device(&device)?,
        };
        Self::with_weights(cfg, model_cfg, &weights, device)
    }

    fn with_weights(cfg: TrainConfig, model_cfg: ModelConfig, weights: &Weights, device: Device) -> Result<Self> {
        let tokenizer = odin_text::tokenizer_from_file(&cfg.data.tokenizer)?;
        if tokenizer.get_vocab_size(true) > model_cfg.vocab_size() {
            return Err(TrainError::Config(format!(
                "the tokenizer has {} tokens but the model's vocab_size is {}",
                tokenizer.get_vocab_size(true),
                model_cfg.vocab_size()
            )));
        }
        let manifest = odin_data::read_manifest(&cfg.data.dir)?;
        let manifest_bytes = std::fs::read(cfg.data.dir.join("manifest.json")).map_err(io_err(&cfg.data.dir))?;
        let records = odin_data::read_split(&cfg.data.dir, &manifest, "train")?;
        let data = TokenData::new(&tokenizer, &records, cfg.batch.seq_len)?;
        if data.is_empty() {
            return Err(TrainError::Data("no training record fits in batch.seq_len tokens".into()));
        }
        for t in cfg.data.weights.keys() {
            if !data.tasks().contains_key(t) {
                return Err(TrainError::Config(format!("data.weights names task {t}, which the dataset lacks")));
            }
        }
        let vars = VarStore::from_weights(weights)?;
        let opt = AdamW::new(cfg.adamw(), vars.iter())?;
        let cfg_seed = cfg.seed;
        Ok(Self {
            cfg,
            model_cfg,
            vars,
            opt,
            data,
            tokenizer,
            step: 0,
            tokens_seen: 0,
            train_seconds: 0.0,
            data_hash: blake3::hash(&manifest_bytes).to_hex().to_string(),
            batch_seed: cfg_seed,
            device,
        })
    }

    /// Continue the run saved in `cfg.out/checkpoint`, on the CPU.
    pub fn resume(cfg: TrainConfig) -> Result<Self> {
        Self::resume_on(cfg, Device::Cpu)
    }

    /// Continue the run saved in `cfg.out/checkpoint` on `device`.
    pub fn resume_on(cfg: TrainConfig, device: Device) -> Result<Self> {
        let dir = cfg.out.join("checkpoint");
        let state_path = dir.join("state.json");
        let text = std::fs::read_to_string(&state_path).map_err(|e| {
            TrainError::Checkpoint(format!("cannot read {}: {e}; start without --resume", state_path.display()))
        })?;
        let st: CheckpointState = serde_json::from_str(&text)
            .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", state_path.display())))?;
        if st.config_hash != config_hash(&cfg)? {
            return Err(TrainError::Checkpoint(
                "the checkpoint was made with a different training config; resume with the same TOML".into(),
            ));
        }
        let model_cfg = ModelConfig::from_file(&cfg.model.config)?;
        let weights = Weights::load_safetensors(&dir.join("model.safetensors"), &device)?;
        weights.validate(&model_cfg)?;
        let mut t = Self::with_weights(cfg, model_cfg, &weights, device)?;
        if st.data_hash != t.data_hash {
            return Err(TrainError::Checkpoint(
                "the dataset changed since the checkpoint (manifest hash differs)".into(),
            ));
        }
        let opt_state = Weights::load_safetensors(&dir.join("optimizer.safetensors"), &t.device)?;
        let map: BTreeMap<String, Tensor> = opt_state.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        t.opt.load_state(&map, st.adam_t).map_err(TrainError::Checkpoint)?;
        t.step = st.step;
        t.tokens_seen = st.tokens_seen;
        t.train_seconds = st.train_seconds;
        Ok(t)
    }

    /// Examples available, and those skipped for length.
    pub fn data_summary(&self) -> (usize, usize, BTreeMap<String, usize>) {
        (self.data.len(), self.data.too_long, self.data.tasks())
    }

    /// Current weights (detached copies share storage with the vars).
    pub fn weights(&self) -> Weights {
        self.vars.weights().detached()
    }

    /// Overwrite the trainable weights with `w` (same names and shapes); the optimizer's
    /// moments stay, as a DiLoCo node's inner AdamW does from round to round.
    pub fn set_weights(&mut self, w: &Weights) -> Result<()> {
        for (name, var) in self.vars.iter() {
            let t = w.get(name, var.as_tensor().dims())?;
            var.set(&t.to_device(&self.device)?)?;
        }
        Ok(())
    }

    /// Mean answer-token loss of the current weights on `batches` fixed batches of
    /// [`HELDOUT_ROWS`] rows of the dataset's `test` split: the same batches on every call,
    /// every node and every batch size of the run (their sampler's seed and shape are fixed),
    /// so runs compare on equal terms.
    pub fn heldout_loss(&self, batches: usize) -> Result<f64> {
        let cfg = &self.cfg;
        let manifest = odin_data::read_manifest(&cfg.data.dir)?;
        let records = odin_data::read_split(&cfg.data.dir, &manifest, "test")?;
        let data = TokenData::new(&self.tokenizer, &records, cfg.batch.seq_len)?;
        if data.is_empty() || batches == 0 {
            return Err(TrainError::Data("the test split has no record that fits in batch.seq_len tokens".into()));
        }
        let shard = Shard::full(&self.model_cfg, &self.vars.weights().detached())?;
        let mut sum = 0.0;
        for b in 0..batches {
            let mut rng = batch_rng(HELDOUT_SEED, 0, b);
            let batch = data.batch(&mut rng, HELDOUT_ROWS, cfg.batch.seq_len, &BTreeMap::new(), u8::MAX)?;
            let (x, y, mask) = batch.tensors(&self.device)?;
            let logits = shard.forward(&x, None)?;
            sum += f64::from(masked_cross_entropy(&logits, &y, &mask)?.to_scalar::<f32>()?);
        }
        Ok(sum / batches as f64)
    }

    /// The device it trains on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// One optimizer step over `accumulation` micro-batches.
    pub fn train_step(&mut self) -> Result<StepStats> {
        let started = Instant::now();
        let cfg = &self.cfg;
        let lr = cfg.schedule().lr_at(self.step);
        let max_level = cfg.max_level(self.step, self.data.levels);
        let shard = Shard::full(&self.model_cfg, &self.vars.weights())?;
        let micro = cfg.batch.accumulation;
        let mut grads: BTreeMap<String, Tensor> = BTreeMap::new();
        let mut loss_sum = 0.0;
        let mut tokens = 0;
        for m in 0..micro {
            let mut rng = batch_rng(self.batch_seed, self.step, m);
            let batch: Batch =
                self.data.batch(&mut rng, cfg.batch.rows, cfg.batch.seq_len, &cfg.data.weights, max_level)?;
            tokens += batch.real_tokens;
            let (x, y, mask) = batch.tensors(&self.device)?;
            let logits = shard.forward(&x, None)?;
            let loss = (masked_cross_entropy(&logits, &y, &mask)? / micro as f64)?;
            let lv = f64::from(loss.to_scalar::<f32>()?);
            if !lv.is_finite() {
                return Err(TrainError::Diverged { step: self.step, what: format!("loss is {lv}") });
            }
            loss_sum += lv;
            let g = loss.backward()?;
            for (name, var) in self.vars.iter() {
                if let Some(gv) = g.get(var.as_tensor()) {
                    // Detached: a gradient still carries its autodiff graph, and keeping it (in
                    // the sum, or later in the optimizer's moments) would keep every step's
                    // whole forward graph alive.
                    let gv = gv.detach();
                    let acc = match grads.remove(name) {
                        Some(prev) => (prev + gv)?,
                        None => gv,
                    };
                    grads.insert(name.clone(), acc);
                }
            }
        }
        let grad_norm = clip_global_norm(&mut grads, cfg.optim.clip)?;
        if !grad_norm.is_finite() {
            return Err(TrainError::Diverged { step: self.step, what: format!("gradient norm is {grad_norm}") });
        }
        self.opt.step(self.vars.iter(), &grads, lr)?;
        self.step += 1;
        self.tokens_seen += tokens as u64;
        let secs = started.elapsed().as_secs_f64();
        self.train_seconds += secs;
        Ok(StepStats {
            step: self.step,
            loss: loss_sum,
            lr,
            grad_norm,
            tokens,
            tokens_per_s: tokens as f64 / secs.max(1e-9),
            seconds: secs,
            max_level,
        })
    }

    /// Save weights, optimizer moments and the step to `out/checkpoint`, atomically.
    pub fn save_checkpoint(&self) -> Result<()> {
        let out = &self.cfg.out;
        std::fs::create_dir_all(out).map_err(io_err(out))?;
        let tmp = out.join("checkpoint.tmp");
        let dir = out.join("checkpoint");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        self.weights().save_safetensors(&tmp.join("model.safetensors"))?;
        Weights::new(self.opt.state()).save_safetensors(&tmp.join("optimizer.safetensors"))?;
        let st = CheckpointState {
            step: self.step,
            seed: self.cfg.seed,
            adam_t: self.opt.t,
            tokens_seen: self.tokens_seen,
            train_seconds: self.train_seconds,
            config_hash: config_hash(&self.cfg)?,
            data_hash: self.data_hash.clone(),
        };
        let text = serde_json::to_string_pretty(&st).map_err(|e| TrainError::Checkpoint(e.to_string()))?;
        let p = tmp.join("state.json");
        std::fs::write(&p, text).map_err(io_err(&p))?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        }
        std::fs::rename(&tmp, &dir).map_err(io_err(&dir))?;
        Ok(())
    }

    /// Write the trained model as a model directory (config, weights, tokenizer) to `dir`.
    pub fn export(&self, dir: &Path) -> Result<odin_model::ModelId> {
        Ok(odin_model::ModelDir::save(&self.model_cfg, &self.weights(), Some(&self.cfg.data.tokenizer), dir)?)
    }

    /// Train until `run.steps` or until `stop` is set, checkpointing on the way and at the end,
    /// and appending metrics to `out/metrics.jsonl`. `on_step` sees every step.
    pub fn run(&mut self, stop: &AtomicBool, mut on_step: impl FnMut(&StepStats)) -> Result<RunEnd> {
        let out = self.cfg.out.clone();
        std::fs::create_dir_all(&out).map_err(io_err(&out))?;
        let metrics_path = out.join("metrics.jsonl");
        truncate_metrics(&metrics_path, self.step)?;
        let mut metrics =
            std::fs::OpenOptions::new().create(true).append(true).open(&metrics_path).map_err(io_err(&metrics_path))?;
        while self.step < self.cfg.run.steps {
            if stop.load(Ordering::SeqCst) {
                self.save_checkpoint()?;
                return Ok(RunEnd::Interrupted);
            }
            let s = self.train_step()?;
            if s.step % self.cfg.run.log_every == 0 || s.step == self.cfg.run.steps {
                let line = serde_json::to_string(&s).map_err(|e| TrainError::Config(e.to_string()))?;
                writeln!(metrics, "{line}").map_err(io_err(&metrics_path))?;
            }
            on_step(&s);
            if s.step % self.cfg.run.checkpoint_every == 0 {
                self.save_checkpoint()?;
            }
        }
        self.save_checkpoint()?;
        Ok(RunEnd::Finished)
    }
}

/// Drop metric lines past `step`, so a resumed run's log has each step once.
fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let kept: String = text
        .lines()
        .filter(|l| serde_json::from_str::<StepStats>(l).map(|s| s.step <= step).unwrap_or(false))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(path, kept).map_err(io_err(path))
}

/// Read `out/metrics.jsonl`.
pub fn read_metrics(out: &Path) -> Result<Vec<StepStats>> {
    let p = out.join("metrics.jsonl");
    let text = std::fs::read_to_string(&p).map_err(io_err(&p))?;
    Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
}
