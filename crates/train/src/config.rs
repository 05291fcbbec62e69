//! The training config: one TOML file with the model, data, optimizer, schedule and budget.
//!
//! Relative paths are resolved against the directory of the TOML file, so a
//! config works from any working directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{io_err, Result, TrainError};
use crate::optim::{AdamWParams, Schedule};

/// `odin train --config FILE`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Seed for initialisation and batch sampling.
    pub seed: u64,
    /// Run directory: checkpoints, metrics, report and the final model.
    pub out: PathBuf,
    /// Model to train.
    pub model: ModelSection,
    /// Data and tokenizer.
    pub data: DataSection,
    /// Optimizer.
    pub optim: OptimSection,
    /// Batches.
    pub batch: BatchSection,
    /// Budget and cadence.
    pub run: RunSection,
    /// Optional curriculum over the data's difficulty levels.
    #[serde(default)]
    pub curriculum: Curriculum,
}

/// `[model]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Model config JSON (see `configs/`).
    pub config: PathBuf,
    /// Start from these weights (a `model.safetensors`) instead of a seeded init: fine-tuning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<PathBuf>,
}

/// `[data]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Dataset directory from `odin data build`.
    pub dir: PathBuf,
    /// `tokenizer.json` from `odin tokenizer train`.
    pub tokenizer: PathBuf,
    /// Sampling weight per task; tasks left out keep weight 0. Empty: the dataset's own mix.
    #[serde(default)]
    pub weights: BTreeMap<String, f64>,
}

/// `[optim]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimSection {
    /// Peak learning rate.
    pub lr: f64,
    /// Learning rate at the end of the cosine.
    pub min_lr: f64,
    /// Linear warmup, in optimizer steps.
    pub warmup_steps: u64,
    /// AdamW beta1.
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    /// AdamW beta2.
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    /// AdamW epsilon.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Decoupled weight decay on matrices.
    #[serde(default)]
    pub weight_decay: f64,
    /// Global gradient-norm bound (0: no clipping).
    #[serde(default = "default_clip")]
    pub clip: f64,
}

fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.99
}
fn default_eps() -> f64 {
    1e-8
}
fn default_clip() -> f64 {
    1.0
}

/// `[batch]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSection {
    /// Rows per micro-batch.
    pub rows: usize,
    /// Tokens per row; records are packed into rows and longer records are skipped.
    pub seq_len: usize,
    /// Micro-batches per optimizer step.
    #[serde(default = "one")]
    pub accumulation: usize,
}

fn one() -> usize {
    1
}

/// `[run]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    /// Optimizer steps in the whole run (the schedule's length).
    pub steps: u64,
    /// Save a checkpoint every this many steps.
    pub checkpoint_every: u64,
    /// Append a metrics line every this many steps.
    #[serde(default = "ten")]
    pub log_every: u64,
    /// Records per task for the final evaluation in the report (0: skip).
    #[serde(default)]
    pub eval_per_task: usize,
}

fn ten() -> u64 {
    10
}

/// `[curriculum]`: difficulty level d (1-based) opens when the run is
/// `(d - 1) / (levels - 1) * ramp` of the way through.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Curriculum {
    /// Follow the difficulty levels.
    #[serde(default)]
    pub enabled: bool,
    /// Fraction of the run over which levels open (0..=1).
    #[serde(default)]
    pub ramp: f64,
}

impl TrainConfig {
    /// Read and check a TOML config; relative paths become relative to its directory.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        let mut c: TrainConfig =
            toml::from_str(&text).map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut c.out, &mut c.model.config, &mut c.data.dir, &mut c.data.tokenizer]
            .into_iter()
            .chain(c.model.init.as_mut())
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        c.validate()?;
        Ok(c)
    }

    /// Reject values that cannot train.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(TrainError::Config(m.to_string()));
        let o = &self.optim;
        if !(o.lr > 0.0 && o.lr.is_finite() && (0.0..=o.lr).contains(&o.min_lr)) {
            return bad("optim.lr must be positive and finite, with 0 <= min_lr <= lr");
        }
        if !(0.0..1.0).contains(&o.beta1) || !(0.0..1.0).contains(&o.beta2) || o.eps <= 0.0 {
            return bad("optim.beta1 and beta2 must be in [0, 1) and eps positive");
        }
        if o.weight_decay < 0.0 || o.clip < 0.0 {
            return bad("optim.weight_decay and optim.clip must not be negative");
        }
        if self.batch.rows == 0 || self.batch.seq_len < 8 || self.batch.accumulation == 0 {
            return bad("batch.rows and batch.accumulation must be at least 1 and batch.seq_len at least 8");
        }
        if self.run.steps == 0 || self.run.checkpoint_every == 0 || self.run.log_every == 0 {
            return bad("run.steps, run.checkpoint_every and run.log_every must be at least 1");
        }
        if o.warmup_steps > self.run.steps {
            return bad("optim.warmup_steps cannot exceed run.steps");
        }
        if !(0.0..=1.0).contains(&self.curriculum.ramp) {
            return bad("curriculum.ramp must be a fraction in 0..=1");
        }
        if self.data.weights.values().any(|w| !(w.is_finite() && *w >= 0.0)) {
            return bad("data.weights must be finite and non-negative");
        }
        Ok(())
    }

    /// The learning-rate schedule.
    pub fn schedule(&self) -> Schedule {
        Schedule {
            lr: self.optim.lr,
            min_lr: self.optim.min_lr,
            warmup: self.optim.warmup_steps,
            total: self.run.steps,
        }
    }

    /// AdamW hyper-parameters.
    pub fn adamw(&self) -> AdamWParams {
        AdamWParams {
            beta1: self.optim.beta1,
            beta2: self.optim.beta2,
            eps: self.optim.eps,
            weight_decay: self.optim.weight_decay,
        }
    }

    /// The highest difficulty level open at `step` when the data has `levels` levels.
    pub fn max_level(&self, step: u64, levels: u8) -> u8 {
        if !self.curriculum.enabled || levels <= 1 || self.curriculum.ramp <= 0.0 {
            return u8::MAX;
        }
        let p = step as f64 / (self.run.steps as f64 * self.curriculum.ramp);
        (1 + (p * f64::from(levels - 1)).floor() as i64).clamp(1, i64::from(levels)) as u8
    }
}
