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
pub mod puzzle;
pub mod swarm;

pub use error::{NetError, Result};
pub use info::{now_ms, Opinion, ServerInfo, MAX_OPINIONS};
pub use libp2p::identity::{Keypair, PublicKey};
pub use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol};
pub use peer::{peer_from_wire, peer_of, peer_to_wire, verify_signed_by};
pub use swarm::{
    block_key, info_topic, load_or_create_identity, load_or_create_identity_with, verify_topic, Net, NetConfig,
    NetEvent, MAX_GOSSIP,
};
