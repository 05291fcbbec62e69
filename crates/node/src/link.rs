//! One server as a client sees it: a stream of request and answer frames to it, or this
//! node's own server, called in-process.

use std::sync::Arc;
use std::time::Duration;

use futures::io::WriteHalf;
use futures::AsyncReadExt;
use odin_format::ModelId;
use odin_net::{PeerId, ServerInfo};
use odin_proto::infer::{Request, Response};
use odin_proto::{read_frame, write_frame, MAX_FRAME};
use odin_proto::{Envelope, PeerBytes};
use tokio::sync::mpsc;

use crate::error::{NodeError, Result};
use crate::server::Server;
use crate::transport::{Conn, Transport};

/// How a client reaches one hop.
pub(crate) enum Link {
    /// Over a stream.
    Remote(Remote),
    /// This node's own server: the same request path, but no byte crosses a wire.
    Local(Arc<Server>),
}

/// Frames a hop's reader may queue before it stops reading that hop's stream.
const FRAME_SLACK: usize = 4;

/// A stream to a remote hop. A task reads its frames into a queue, so the client can wait on
/// every hop of a chain at once without losing half-read frames.
pub(crate) struct Remote {
    peer: PeerId,
    /// The session this stream serves: an answer naming another is out of protocol.
    session: Option<u64>,
    out: WriteHalf<Conn>,
    frames: mpsc::Receiver<odin_proto::Result<Vec<u8>>>,
    reader: tokio::task::JoinHandle<()>,
    /// The next hop this hop said was down, unasked ([`Response::NextHopDown`]), and why. Kept
    /// when it arrives during a request, which it does not answer.
    pub(crate) down: Option<(PeerBytes, String)>,
}

impl Drop for Remote {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Remote {
    /// Start reading `stream` to `peer`, for `session` (none for a one-off request).
    pub(crate) fn new(peer: PeerId, session: Option<u64>, stream: Conn) -> Self {
        let (mut rd, out) = stream.split();
        // Bounded: a server gets one answer in per request, so a few frames of slack suffice, and
        // one that floods frames nobody asked for stalls on its own stream instead of filling
        // this node's memory.
        let (tx, frames) = mpsc::channel(FRAME_SLACK);
        let reader = tokio::spawn(async move {
            loop {
                let frame = read_frame(&mut rd, MAX_FRAME).await;
                let end = frame.is_err();
                if tx.send(frame).await.is_err() || end {
                    return;
                }
            }
        });
        Remote { peer, session, out, frames, reader, down: None }
    }

    /// Write one frame.
    pub(crate) async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        Ok(write_frame(&mut self.out, bytes).await?)
    }

    /// The next frame from the server (cancel-safe: a frame is never half taken).
    pub(crate) async fn recv(&mut self) -> odin_proto::Result<Vec<u8>> {
        match self.frames.recv().await {
            Some(f) => f,
            None => Err(odin_proto::ProtoError::Io(std::io::Error::from(std::io::ErrorKind::UnexpectedEof))),
        }
    }

    /// Decode a frame from this server: a response for `model` and for this stream's session.
    pub(crate) fn decode(&self, model: ModelId, frame: &[u8]) -> Result<Response> {
        let bad = |what: String| NodeError::Protocol { peer: self.peer.to_string(), what };
        let env = Envelope::<Response>::from_bytes(frame).map_err(|e| bad(e.to_string()))?;
        if env.model != model {
            return Err(bad(format!("answered for model {}", env.model)));
        }
        let named = match &env.msg {
            Response::Opened { session } | Response::Linked { session } | Response::NextHopDown { session, .. } => {
                Some(*session)
            }
            _ => None,
        };
        if let (Some(ours), Some(theirs)) = (self.session, named) {
            if ours != theirs {
                return Err(bad(format!("answered for session {theirs:016x}, not {ours:016x}")));
            }
        }
        Ok(env.msg)
    }

    /// The next frame that answers a request, and its length. A next-hop notice on the way is
    /// no answer: it is kept in `down`, for whoever looks for the hop at fault.
    async fn answer(&mut self, model: ModelId) -> Result<(Response, usize)> {
        loop {
            let frame = self.recv().await?;
            match self.decode(model, &frame)? {
                Response::NextHopDown { next, reason, .. } => self.down = Some((next, reason)),
                r => return Ok((r, frame.len())),
            }
        }
    }
}

impl Link {
    /// Decode a frame this hop sent on its own (only a remote hop sends frames unasked).
    pub(crate) fn decode(&self, model: ModelId, frame: &[u8]) -> Result<Response> {
        match self {
            Link::Remote(r) => r.decode(model, frame),
            Link::Local(_) => Err(NodeError::Model("this node's own server sends no frames".into())),
        }
    }

    /// Send `msg` and wait at most `deadline` for its answer; also returns the bytes that
    /// crossed the wire both ways.
    pub(crate) async fn call(&mut self, model: ModelId, msg: Request, deadline: Duration) -> Result<(Response, usize)> {
        let bytes = Envelope { model, msg }.to_bytes();
        match self {
            Link::Local(server) => match server.clone().respond(&bytes).await {
                Some(r) => Ok((r, 0)),
                None => Err(NodeError::Model("this node's server passed a request on instead of answering".into())),
            },
            Link::Remote(r) => {
                let peer = r.peer;
                let fut = async {
                    r.send(&bytes).await?;
                    r.answer(model).await
                };
                let (resp, len) =
                    tokio::time::timeout(deadline, fut).await.map_err(|_| NodeError::Timeout(peer.to_string()))??;
                Ok((resp, bytes.len() + len + 8))
            }
        }
    }
}

/// Ask `peer` for its announcement over the shard protocol, waiting at most `deadline` for the answer.
pub(crate) async fn fetch_info(
    transport: &dyn Transport,
    model: ModelId,
    peer: PeerId,
    deadline: Duration,
) -> Result<ServerInfo> {
    let stream = transport.open(peer).await?;
    let mut link = Link::Remote(Remote::new(peer, None, stream));
    match link.call(model, Request::Info, deadline).await?.0 {
        Response::Info(json) => Ok(ServerInfo::from_bytes(&json)?),
        other => Err(NodeError::Protocol { peer: peer.to_string(), what: format!("answered Info with {other:?}") }),
    }
}
