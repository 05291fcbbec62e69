//! ODIN's data layer: verified synthetic math and code datasets.
//!
//! Generators draft records; an independent verifier per family re-derives
//! every answer (big integers, exact rationals, CPython execution) before a
//! record is written. Builds are deterministic in the seed, split train and
//! test by seed and by held-out template family, and guard against
//! collapse with duplicate, diversity and overlap statistics.
#![warn(missing_docs)]

pub mod algebra;
pub mod arith;
pub mod build;
pub mod check;
pub mod code;
pub mod error;
pub mod record;
pub mod sandbox;
pub mod stats;
pub mod tokenizer;
pub mod word;

pub use build::{build, build_excluding, read_manifest, read_split, BuildOptions, Excluded, Manifest};
pub use error::{DataError, Result};
pub use record::{extract_answer, prompt_hash, Record};
