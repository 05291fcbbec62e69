//! A training run's config: the local trainer's TOML (model, data, inner AdamW, batches)
//! plus how the rounds go.
//!
//! ```toml
//! name = "tiny-together"
//! train = "train-tiny.toml"     # relative to this file
//! [rounds]
//! rounds = 10                   # outer rounds
//! inner_steps = 8               # H: local AdamW steps per round
//! deadline_ms = 30000           # commitments after this are late and dropped
//! vote_ms = 3000                # how long votes are waited for
//! quorum = 2                    # fewer accepted updates: the round is skipped
//! aggregator = { rule = "centered_clip" }
//! outer = { lr = 0.7, momentum = 0.9 }
//! # topk = 0.1                  # send only the largest 10% of coordinates
//! # privacy = { clip = 1.0, noise = 0.5 }
//! ```

use std::path::{Path, PathBuf};

use odin_train::collab::{Outer, Privacy, Rule};
use odin_train::TrainConfig;
use serde::{Deserialize, Serialize};

use crate::error::{CollabError, Result};

/// `odin node --train RUN.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// The run's name (part of its id).
    pub name: String,
    /// The local trainer's config.
    pub train: PathBuf,
    /// How the rounds go.
    #[serde(default)]
    pub rounds: Rounds,
}

/// `[rounds]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rounds {
    /// Outer rounds in the run.
    #[serde(default = "ten")]
    pub rounds: u64,
    /// Local AdamW steps per round (H).
    #[serde(default = "ten")]
    pub inner_steps: u64,
    /// Milliseconds from a round's start after which commitments are late.
    #[serde(default = "deadline")]
    pub deadline_ms: u64,
    /// Milliseconds votes are waited for after a node votes.
    #[serde(default = "vote")]
    pub vote_ms: u64,
    /// Fewest accepted updates that make a round; with fewer, the weights stay.
    #[serde(default = "one")]
    pub quorum: usize,
    /// How accepted updates combine.
    #[serde(default)]
    pub aggregator: Rule,
    /// The outer optimizer.
    #[serde(default)]
    pub outer: Outer,
    /// Send only this fraction of the coordinates (the largest); none: all of them.
    #[serde(default)]
    pub topk: Option<f32>,
    /// Clip and noise each update.
    #[serde(default)]
    pub privacy: Option<Privacy>,
    /// Bytes per chunk of the weights-and-momentum blob joiners fetch.
    #[serde(default = "chunk")]
    pub chunk_bytes: usize,
}

fn ten() -> u64 {
    10
}
fn deadline() -> u64 {
    60_000
}
fn vote() -> u64 {
    3_000
}
fn one() -> usize {
    1
}
fn chunk() -> usize {
    1 << 20
}

impl Default for Rounds {
    fn default() -> Self {
        toml::from_str("").unwrap_or(Self {
            rounds: ten(),
            inner_steps: ten(),
            deadline_ms: deadline(),
            vote_ms: vote(),
            quorum: one(),
            aggregator: Rule::default(),
            outer: Outer::default(),
            topk: None,
            privacy: None,
            chunk_bytes: chunk(),
        })
    }
}

impl RunConfig {
    /// Read and check a run config; `train` becomes relative to its directory.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CollabError::Config(format!("cannot read {}: {e}", path.display())))?;
        let mut c: RunConfig =
            toml::from_str(&text).map_err(|e| CollabError::Config(format!("{}: {e}", path.display())))?;
        if c.train.is_relative() {
            c.train = path.parent().unwrap_or(Path::new(".")).join(&c.train);
        }
        c.validate()?;
        Ok(c)
    }

    /// Check the round settings.
    pub fn validate(&self) -> Result<()> {
        let r = &self.rounds;
        let bad = |m: String| Err(CollabError::Config(m));
        if r.rounds == 0 || r.inner_steps == 0 {
            return bad("rounds.rounds and rounds.inner_steps must be at least 1".into());
        }
        if r.quorum == 0 {
            return bad("rounds.quorum must be at least 1".into());
        }
        if r.deadline_ms == 0 || r.vote_ms == 0 {
            return bad("rounds.deadline_ms and rounds.vote_ms must be above 0".into());
        }
        if let Some(k) = r.topk {
            if !(k > 0.0 && k <= 1.0) {
                return bad(format!("rounds.topk must be in (0, 1], got {k}"));
            }
        }
        if !(r.outer.lr > 0.0 && r.outer.lr.is_finite() && (0.0..1.0).contains(&r.outer.momentum)) {
            return bad(format!("rounds.outer needs lr > 0 and 0 ≤ momentum < 1 (got {:?})", r.outer));
        }
        if r.chunk_bytes == 0 || r.chunk_bytes > odin_proto::train::MAX_CHUNK {
            return bad(format!("rounds.chunk_bytes must be in 1..={}", odin_proto::train::MAX_CHUNK));
        }
        r.aggregator.validate().map_err(CollabError::Config)?;
        if let Some(p) = &r.privacy {
            p.validate().map_err(CollabError::Config)?;
        }
        Ok(())
    }

    /// The local trainer's config.
    pub fn train_config(&self) -> Result<TrainConfig> {
        Ok(TrainConfig::load(&self.train)?)
    }

    /// The run's id: its name, the id of the state it starts from and the hash of both configs.
    pub fn run_id(&self, train: &TrainConfig, start: &[u8; 32]) -> Result<odin_format::ModelId> {
        let rounds = serde_json::to_string(&self.rounds).map_err(|e| CollabError::Config(e.to_string()))?;
        let mut h = blake3::Hasher::new();
        h.update(b"odin-run/1\0");
        h.update(self.name.as_bytes());
        h.update(b"\0");
        h.update(start);
        h.update(odin_train::trainer::config_hash(train)?.as_bytes());
        h.update(rounds.as_bytes());
        Ok(odin_format::ModelId(*h.finalize().as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_in_and_bad_values_are_named() {
        let c: RunConfig = toml::from_str("name = \"x\"\ntrain = \"t.toml\"\n").unwrap();
        assert_eq!(c.rounds.rounds, 10);
        assert_eq!(c.rounds.aggregator, Rule::default());
        c.validate().unwrap();
        let c: RunConfig = toml::from_str(
            "name = \"x\"\ntrain = \"t.toml\"\n[rounds]\nquorum = 2\naggregator = { rule = \"trimmed_mean\", trim = 0.25 }\ntopk = 0.1\n",
        )
        .unwrap();
        assert_eq!(c.rounds.aggregator, Rule::TrimmedMean { trim: 0.25 });
        c.validate().unwrap();
        for bad in [
            "topk = 1.5",
            "quorum = 0",
            "aggregator = { rule = \"trimmed_mean\", trim = 0.7 }",
            "outer = { lr = 0.7, momentum = 1.0 }",
        ] {
            let c: RunConfig = toml::from_str(&format!("name = \"x\"\ntrain = \"t.toml\"\n[rounds]\n{bad}\n")).unwrap();
            assert!(c.validate().is_err(), "{bad} passed");
        }
        assert!(toml::from_str::<RunConfig>("name = \"x\"\ntrain = \"t\"\n[rounds]\nrouns = 3\n").is_err());
    }
}
