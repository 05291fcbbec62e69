//! The seam between a node's logic and the network: open a byte stream to a peer's shard
//! protocol, and ask the DHT who serves a block.
//!
//! The swarm ([`Net`]) implements it for real. The session driver, the router and the server
//! only ever see this trait, so tests run them against an in-process network in milliseconds.

use futures::future::BoxFuture;
use futures::{AsyncRead, AsyncWrite};
use odin_format::ModelId;
use odin_net::{block_key, Net, PeerId};

/// A byte stream to one peer, which the shard protocol's frames travel on.
pub trait Duplex: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Duplex for T {}

/// A stream to a peer, whatever carries it.
pub type Conn = Box<dyn Duplex>;

/// How a node reaches other peers.
pub trait Transport: Send + Sync + 'static {
    /// Open a stream to `peer`'s shard protocol.
    fn open(&self, peer: PeerId) -> BoxFuture<'_, odin_net::Result<Conn>>;

    /// The peers the DHT names as serving `block` of `model`.
    fn providers(&self, model: ModelId, block: usize) -> BoxFuture<'_, odin_net::Result<Vec<PeerId>>>;
}

impl Transport for Net {
    fn open(&self, peer: PeerId) -> BoxFuture<'_, odin_net::Result<Conn>> {
        Box::pin(async move { Ok(Box::new(self.open_stream(peer).await?) as Conn) })
    }

    fn providers(&self, model: ModelId, block: usize) -> BoxFuture<'_, odin_net::Result<Vec<PeerId>>> {
        Box::pin(async move { Ok(Net::providers(self, block_key(&model, block)).await?.into_iter().collect()) })
    }
}
