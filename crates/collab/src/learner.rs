//! A member's local trainer: H inner AdamW steps on its own data from the round's weights.
//!
//! It wraps the ordinary [`Trainer`]: the same model, data pipeline and optimizer as
//! `odin train`. The weights every node starts from come from the run's config (the seeded
//! init or `model.init`), so all members compute the same round-0 state; each member draws
//! its own batches (its batch seed comes from its peer id), and no record leaves the node.

use std::path::Path;

use odin_train::collab::Layout;
use odin_train::{TrainConfig, Trainer};

use crate::error::Result;

/// What one round's inner loop did.
#[derive(Debug, Clone)]
pub struct Inner {
    /// The weights after the inner steps.
    pub local: Vec<f32>,
    /// Rows trained on.
    pub samples: u64,
    /// Mean loss over the inner steps.
    pub loss: f64,
}

/// A member's trainer and the layout of its flat weights.
pub struct Learner {
    trainer: Trainer,
    layout: Layout,
}

impl Learner {
    /// A learner for `cfg` that draws its batches with `batch_seed`.
    pub fn new(cfg: TrainConfig, batch_seed: u64) -> Result<Self> {
        let mut trainer = Trainer::new(cfg)?;
        trainer.batch_seed = batch_seed;
        let layout = Layout::of(&trainer.weights());
        Ok(Self { trainer, layout })
    }

    /// The flat layout of the weights.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The weights the run starts from.
    pub fn start(&self) -> Result<Vec<f32>> {
        Ok(self.layout.flatten(&self.trainer.weights())?)
    }

    /// Run `steps` inner steps from `theta`, at schedule position `round * steps`.
    pub fn inner(&mut self, theta: &[f32], round: u64, steps: u64) -> Result<Inner> {
        let w = self.layout.unflatten(theta, self.trainer.device())?;
        self.trainer.set_weights(&w)?;
        self.trainer.step = round * steps;
        let (mut loss, mut samples) = (0.0, 0);
        let rows = (self.trainer.cfg.batch.rows * self.trainer.cfg.batch.accumulation) as u64;
        for _ in 0..steps {
            let s = self.trainer.train_step()?;
            loss += s.loss;
            samples += rows;
        }
        Ok(Inner { local: self.layout.flatten(&self.trainer.weights())?, samples, loss: loss / steps as f64 })
    }

    /// Held-out loss of `theta` on the test split's fixed batches.
    pub fn heldout_loss(&mut self, theta: &[f32], batches: usize) -> Result<f64> {
        let w = self.layout.unflatten(theta, self.trainer.device())?;
        self.trainer.set_weights(&w)?;
        Ok(self.trainer.heldout_loss(batches)?)
    }

    /// Write `theta` as a model directory.
    pub fn export(&mut self, theta: &[f32], dir: &Path) -> Result<odin_format::ModelId> {
        let w = self.layout.unflatten(theta, self.trainer.device())?;
        self.trainer.set_weights(&w)?;
        Ok(self.trainer.export(dir)?)
    }
}
