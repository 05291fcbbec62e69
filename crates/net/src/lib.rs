//! ODIN's network layer: the libp2p behaviour ([`swarm`]) and server announcements
//! ([`info`]). The messages themselves, their framing and caps are `odin_proto`'s; [`peer`]
//! converts the peer ids they carry to libp2p's.
//!
//! Nodes find each other over Kademlia (provider records keyed by model id
//! and block), announce their servers over gossipsub (validated), and move
//! activations over direct streams in length-prefixed frames whose every size
//! is checked against a cap before anything is allocated.

#![warn(missing_docs)]

pub mod error;
pub mod info;
pub mod peer;
pub mod swarm;

pub use error::{NetError, Result};
pub use info::{now_ms, ServerInfo};
pub use libp2p::identity::{Keypair, PublicKey};
pub use libp2p::{Multiaddr, PeerId, Stream};
pub use odin_proto::PeerBytes;
pub use peer::{peer_from_wire, peer_to_wire};
pub use swarm::{block_key, info_topic, load_or_create_identity, Net, NetConfig, NetEvent};

// transitional: node imports odin_proto directly once issue 24's router lands
/// The protocol's old home in this crate, kept so that `odin_net::wire::…` paths resolve while
/// the node moves to `odin_proto` (transitional: to be removed).
pub mod wire {
    pub use odin_format::Sampling;
    pub use odin_proto::infer::{
        ErrorCode, HopTime, Request, Response, StepInput, MAX_HOPS, MAX_INFO, PROTOCOL_VERSION,
    };
    pub use odin_proto::{
        Dtype, Envelope, PeerBytes, Tensor, MAX_FRAME, MAX_MESSAGE, MAX_PEER_ID, MAX_TOKENS, MAX_WIDTH, WIRE_BLOCK,
    };

    /// [`odin_proto::read_frame`], with its error as a [`crate::NetError`] (a stream that ended
    /// is still [`crate::NetError::Io`]).
    pub async fn read_frame<R: futures::AsyncRead + Unpin>(r: &mut R, cap: usize) -> crate::Result<Vec<u8>> {
        Ok(odin_proto::read_frame(r, cap).await?)
    }

    /// [`odin_proto::write_frame`], with its error as a [`crate::NetError`].
    pub async fn write_frame<W: futures::AsyncWrite + Unpin>(w: &mut W, payload: &[u8]) -> crate::Result<()> {
        Ok(odin_proto::write_frame(w, payload).await?)
    }
}
// transitional: node imports odin_proto directly once issue 24's router lands
pub use wire::{Dtype, Envelope, ErrorCode, HopTime, Request, Response, Sampling, StepInput, Tensor};
