//! The math of training together, DiLoCo-style: each node's weights as one flat vector
//! ([`flat`]), its pseudo-gradient compressed to int8 with error feedback ([`compress`]),
//! the robust and deterministic aggregation of everyone's updates ([`robust`]), the outer
//! Nesterov step ([`outer`]) and optional differential privacy ([`privacy`]).
//!
//! Everything here is plain `f32` slices in a fixed order, with sums in a fixed order, so
//! every honest node that aggregates the same updates gets the same bits.

pub mod compress;
pub mod flat;
pub mod outer;
pub mod privacy;
pub mod robust;

pub use compress::{Compressor, Sparsity};
pub use flat::{Layout, StateBlob};
pub use outer::Outer;
pub use privacy::{epsilon, Privacy};
pub use robust::Rule;
