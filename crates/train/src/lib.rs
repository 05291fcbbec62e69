//! ODIN's `train` layer: the local trainer (`odin train`) and held-out
//! evaluation (`odin eval`), on the model and data layers, and the math of training
//! together over the network ([`collab`]).

#![warn(missing_docs)]

pub mod collab;
pub mod config;
pub mod curves;
pub mod data;
pub mod error;
pub mod eval;
pub mod generate;
pub mod optim;
pub mod plot;
pub mod report;
pub mod trainer;

pub use config::TrainConfig;
pub use error::{Result, TrainError};
pub use trainer::{RunEnd, StepStats, Trainer};
