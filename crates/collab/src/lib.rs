//! ODIN's `collab` layer: training together over the network.
//!
//! Nodes train one model in DiLoCo rounds: each runs H local AdamW steps on its own data,
//! commits to its compressed pseudo-gradient over gossip, serves it on a stream, fetches
//! and checks the others', agrees by a majority of signed votes on which count, and
//! aggregates them robustly and bit-identically into the next round's weights. The math is
//! `odin_train::collab`'s; the messages are `odin_proto::train`'s.
//!
//! - [`config`]: the run config (the trainer's TOML plus `[rounds]`) and the run id.
//! - [`member`]: the round driver ([`Member`]).
//! - [`book`]: what was heard per round, and the rules that make every member agree.
//! - [`wire`]: the training service on streams: serving and fetching updates and state chunks.
//! - [`store`]: the content-addressed blobs a member serves, and its traffic counters.
//! - [`learner`]: the local trainer a member runs its inner steps with.
//! - [`adversary`]: faults and attacks the tests and benchmarks inject.
//! - [`stage`], [`plan`] and [`relay`]: the backward relay: a model none of the nodes holds whole,
//!   trained through a chain of stages (activations down, gradients up, each stage stepping
//!   its own blocks' optimizer).

#![warn(missing_docs)]

pub mod adversary;
pub mod book;
pub mod config;
pub mod error;
pub mod learner;
pub mod member;
pub mod plan;
pub mod relay;
pub mod stage;
pub mod store;
pub mod wire;

pub use adversary::Behaviour;
pub use config::{Rounds, RunConfig};
pub use error::{CollabError, Result};
pub use member::{run_topic, Member, MemberOptions, RoundReport, Summary};
