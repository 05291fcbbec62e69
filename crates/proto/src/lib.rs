//! ODIN's wire protocol, with no libp2p and no async runtime, so it builds for wasm32 and
//! fuzzes alone.
//!
//! - [`frame`]: length-prefixed frames ([`read_frame`], [`write_frame`]) under [`MAX_FRAME`].
//! - [`codec`]: the bounds-checked [`Reader`] and the [`Writer`] every message uses.
//! - [`tensor`]: hidden and session states as f32 or int8 blocks ([`Tensor`], [`Dtype`]), the
//!   int8 blocks by `odin_format::int8`, the quantizer the engine's weights use too.
//! - [`peer`]: peer ids as checked bytes ([`PeerBytes`]); `odin_net` converts them to libp2p's.
//! - [`envelope`]: the [`Envelope`] (version, model id, kind) and the [`Service`] and
//!   [`Message`] traits.
//! - One module per service, each with its own stream protocol id and version:
//!   - [`infer`]: inference sessions, steps, pushes and handoffs ([`infer::Inference`]:
//!     `/odin/shard/1`, version [`infer::PROTOCOL_VERSION`] = 5).
//!
//!   - [`train`]: training rounds: commitments, votes and state announcements on gossip,
//!     updates and content-addressed weight chunks on streams ([`train::Training`]:
//!     `/odin/train/1`, version [`train::PROTOCOL_VERSION`] = 1).
//!
//!   - [`pipeline`]: the backward relay: forward, loss, backward and apply between the
//!     stages of a model split over nodes ([`pipeline::Pipeline`]: `/odin/pipeline/1`,
//!     version 1).
//!
//!   - [`verify`]: signed step claims and the fraud proofs gossiped about them
//!     ([`verify::Verification`]: `/odin/verify/1`, version 1).
//!
//!   - [`ledger`]: the signed entries of each node's feed, the heads gossiped about them and
//!     the ranges fetched ([`ledger::Ledger`]: `/odin/ledger/1`, version 1).
//!
//!   Each is a unit struct implementing [`Service`] with its own `PROTOCOL_ID` and `VERSION`,
//!   and `Request` and `Response` enums implementing [`Message`]. Their versions move
//!   independently, so a change to one service's messages never refuses another's peers.
//!
//! Written by hand rather than with serde: every length read from the network is checked
//! against a cap *before* anything is allocated (inside a message, also against the bytes
//! actually present; a frame's buffer grows only as its bytes arrive), and a tensor's values
//! are checked for NaN and infinity on the way in.
//!
//! # Versions
//!
//! A change to a service's bytes bumps that service's `VERSION` and is listed here and on the
//! constant. Inference: 3, servers push activations straight to the next hop; 4, a hop names
//! the next hop it cannot reach; 5, every step's answer carries a signed claim, and steps can
//! be revealed and audited. Moving the codec into this crate changed no byte: peer ids
//! are the same bytes, sampling settings the same fields. The int8 encoder now rounds half to
//! even against the inverse scale (the engine's rounding, see `odin_format::int8`) where it
//! rounded half away from zero after a division: a code can differ by one where a value sits
//! on (or within a rounding error of) a half step. The format and the decoder are unchanged,
//! so the version stays 4.

#![warn(missing_docs)]

pub mod codec;
pub mod envelope;
pub mod error;
pub mod frame;
pub mod infer;
pub mod ledger;
pub mod peer;
pub mod pipeline;
pub mod tensor;
pub mod train;
pub mod verify;

pub use codec::{Reader, Writer, MAX_MESSAGE};
pub use envelope::{Envelope, Message, Service};
pub use error::{ProtoError, Result};
pub use frame::{read_frame, write_frame, MAX_FRAME};
pub use peer::{PeerBytes, MAX_PEER_ID};
pub use tensor::{Dtype, Tensor, MAX_TOKENS, MAX_WIDTH, WIRE_BLOCK};
