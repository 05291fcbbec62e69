//! An in-process network for unit tests: real [`Server`]s on the tiny synthetic model of
//! `testmodel.rs`, joined by in-memory pipes that a test can break the way machines break. A peer can be killed (every
//! stream to and from it ends, as when a process dies and its kernel resets the connections),
//! frozen (it reads and writes nothing, as under SIGSTOP), cut off from one other peer (a
//! broken link between two servers), or made to tamper with the frames it sends.
//!
//! With tokio's paused clock the deadlines a frozen peer runs into pass at once, so a stall
//! costs milliseconds.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};

use futures::future::BoxFuture;
use futures::{AsyncRead, AsyncWrite};
use odin_format::ModelId;
use odin_net::{NetError, PeerId, ServerInfo};

use crate::server::{Server, ServerConfig};
use crate::testmodel::shard;
use crate::transport::{Conn, Transport};

/// Rewrites each frame a peer sends.
type Tamper = Box<dyn FnMut(Vec<u8>) -> Vec<u8> + Send>;

/// One peer of the fake network, and what is wrong with it.
struct Peer {
    id: PeerId,
    server: Option<Arc<Server>>,
    dead: AtomicBool,
    frozen: AtomicBool,
    /// Peers it can no longer reach, nor they it.
    cut: Mutex<HashSet<PeerId>>,
    tamper: Mutex<Option<Tamper>>,
    /// Pipes it is an end of, to wake when it breaks.
    pipes: Mutex<Vec<Weak<Mutex<Pipe>>>>,
}

impl Peer {
    fn cut_from(&self, other: &PeerId) -> bool {
        self.cut.lock().map(|c| c.contains(other)).unwrap_or(true)
    }

    /// Wake every reader of every pipe it is an end of, so each sees what changed.
    fn wake_pipes(&self) {
        let pipes: Vec<_> = self.pipes.lock().map(|p| p.iter().filter_map(Weak::upgrade).collect()).unwrap_or_default();
        for p in pipes {
            if let Ok(mut p) = p.lock() {
                p.flows.iter_mut().for_each(Flow::wake);
            }
        }
    }
}

/// Bytes on their way to one end of a pipe.
#[derive(Default)]
struct Flow {
    bytes: VecDeque<u8>,
    reader: Option<Waker>,
    /// The writing end hung up.
    closed: bool,
}

impl Flow {
    fn wake(&mut self) {
        if let Some(w) = self.reader.take() {
            w.wake();
        }
    }
}

/// An in-memory stream: `flows[i]` goes to end `i`.
#[derive(Default)]
struct Pipe {
    flows: [Flow; 2],
}

/// One end of a [`Pipe`], held by peer `me`.
struct End {
    pipe: Arc<Mutex<Pipe>>,
    side: usize,
    me: Arc<Peer>,
    other: Arc<Peer>,
    /// Bytes of a frame not yet whole, while `me` tampers.
    partial: Vec<u8>,
}

impl End {
    /// The pipe is broken: either end dead, or the two cut off from each other.
    fn broken(&self) -> bool {
        self.me.dead.load(Ordering::SeqCst)
            || self.other.dead.load(Ordering::SeqCst)
            || self.me.cut_from(&self.other.id)
            || self.other.cut_from(&self.me.id)
    }

    /// What `me` puts on the wire for `data`: the same bytes, or its frames rewritten.
    fn outgoing(&mut self, data: &[u8]) -> Vec<u8> {
        let Ok(mut tamper) = self.me.tamper.lock() else { return data.to_vec() };
        let Some(tamper) = tamper.as_mut() else { return data.to_vec() };
        self.partial.extend_from_slice(data);
        let mut out = Vec::new();
        while self.partial.len() >= 4 {
            let n = u32::from_le_bytes([self.partial[0], self.partial[1], self.partial[2], self.partial[3]]) as usize;
            if self.partial.len() < 4 + n {
                break;
            }
            let frame: Vec<u8> = self.partial.drain(..4 + n).skip(4).collect();
            let frame = tamper(frame);
            out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            out.extend_from_slice(&frame);
        }
        out
    }
}

impl AsyncRead for End {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let broken = self.broken();
        let frozen = self.me.frozen.load(Ordering::SeqCst);
        let Ok(mut pipe) = self.pipe.lock() else { return Poll::Ready(Err(io::ErrorKind::Other.into())) };
        let flow = &mut pipe.flows[self.side];
        if frozen {
            flow.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        if broken {
            return Poll::Ready(Ok(0));
        }
        if flow.bytes.is_empty() {
            if flow.closed {
                return Poll::Ready(Ok(0));
            }
            flow.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = buf.len().min(flow.bytes.len());
        for (b, v) in buf.iter_mut().zip(flow.bytes.drain(..n)) {
            *b = v;
        }
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for End {
    fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        if self.me.frozen.load(Ordering::SeqCst) {
            // Frozen for good: nothing will wake it.
            return Poll::Pending;
        }
        if self.broken() {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let bytes = self.outgoing(data);
        let Ok(mut pipe) = self.pipe.lock() else { return Poll::Ready(Err(io::ErrorKind::Other.into())) };
        let flow = &mut pipe.flows[1 - self.side];
        flow.bytes.extend(bytes);
        flow.wake();
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.hang_up();
        Poll::Ready(Ok(()))
    }
}

impl End {
    fn hang_up(&self) {
        if let Ok(mut pipe) = self.pipe.lock() {
            let flow = &mut pipe.flows[1 - self.side];
            flow.closed = true;
            flow.wake();
        }
    }
}

impl Drop for End {
    fn drop(&mut self) {
        self.hang_up();
    }
}

/// The fake network: its peers, each a server or a client.
#[derive(Default)]
pub(crate) struct World {
    peers: Mutex<HashMap<PeerId, Arc<Peer>>>,
}

/// One peer's way into the [`World`].
struct FakeTransport {
    world: Weak<World>,
    me: PeerId,
}

impl Transport for FakeTransport {
    fn open(&self, peer: PeerId) -> BoxFuture<'_, odin_net::Result<Conn>> {
        Box::pin(async move {
            let world = self.world.upgrade().ok_or_else(|| refused("the world ended"))?;
            world.connect(self.me, peer)
        })
    }

    fn providers(&self, _: ModelId, block: usize) -> BoxFuture<'_, odin_net::Result<Vec<PeerId>>> {
        Box::pin(async move {
            let world = self.world.upgrade().ok_or_else(|| refused("the world ended"))?;
            Ok(world.servers().into_iter().filter(|(_, s)| s.range().contains(&block)).map(|(p, _)| p).collect())
        })
    }
}

fn refused(why: &str) -> NetError {
    NetError::from(io::Error::new(io::ErrorKind::ConnectionRefused, why.to_string()))
}

impl World {
    /// An empty network.
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn add(self: &Arc<Self>, id: PeerId, server: Option<Arc<Server>>) -> PeerId {
        let peer = Peer {
            id,
            server,
            dead: AtomicBool::new(false),
            frozen: AtomicBool::new(false),
            cut: Mutex::new(HashSet::new()),
            tamper: Mutex::new(None),
            pipes: Mutex::new(Vec::new()),
        };
        if let Ok(mut p) = self.peers.lock() {
            p.insert(id, Arc::new(peer));
        }
        id
    }

    fn peer(&self, id: &PeerId) -> Option<Arc<Peer>> {
        self.peers.lock().ok()?.get(id).cloned()
    }

    fn servers(&self) -> Vec<(PeerId, Arc<Server>)> {
        let peers = self.peers.lock().map(|p| p.values().cloned().collect::<Vec<_>>()).unwrap_or_default();
        peers.into_iter().filter_map(|p| Some((p.id, p.server.clone()?))).collect()
    }

    /// The transport of peer `me`.
    pub(crate) fn transport(self: &Arc<Self>, me: PeerId) -> Arc<dyn Transport> {
        Arc::new(FakeTransport { world: Arc::downgrade(self), me })
    }

    /// A peer that serves nothing.
    pub(crate) fn client(self: &Arc<Self>) -> PeerId {
        self.add(PeerId::random(), None)
    }

    /// A server of `range`, with `cfg`.
    pub(crate) fn serve_with(self: &Arc<Self>, range: Range<usize>, cfg: ServerConfig) -> PeerId {
        // The server signs its claims with the key its peer id is made from, as a real node does.
        let key = odin_net::Keypair::generate_ed25519();
        let id = key.public().to_peer_id();
        let server = Arc::new(Server::new(shard(range), cfg, key));
        let id = self.add(id, Some(server.clone()));
        server.attach_transport(self.transport(id));
        server.set_info(announced(id, &server, 1.0).to_bytes());
        id
    }

    /// A server of `range`.
    pub(crate) fn serve(self: &Arc<Self>, range: Range<usize>) -> PeerId {
        self.serve_with(range, ServerConfig::default())
    }

    /// Peer `id`'s server.
    pub(crate) fn server(&self, id: &PeerId) -> Arc<Server> {
        match self.peer(id).and_then(|p| p.server.clone()) {
            Some(s) => s,
            None => panic!("{id} is no server of this world"),
        }
    }

    /// What every server announces; a server in `slow` says it is ten times slower, so
    /// routes prefer the others.
    pub(crate) fn announcements(&self, slow: &[PeerId]) -> Vec<(PeerId, ServerInfo)> {
        let speed = |id: &PeerId| if slow.contains(id) { 10.0 } else { 1.0 };
        self.servers().into_iter().map(|(id, server)| (id, announced(id, &server, speed(&id)))).collect()
    }

    fn connect(&self, from: PeerId, to: PeerId) -> odin_net::Result<Conn> {
        let (Some(a), Some(b)) = (self.peer(&from), self.peer(&to)) else { return Err(refused("no such peer")) };
        if a.dead.load(Ordering::SeqCst) || b.dead.load(Ordering::SeqCst) || a.cut_from(&to) || b.cut_from(&from) {
            return Err(refused("unreachable"));
        }
        let Some(server) = b.server.clone() else { return Err(refused("it serves no shard protocol")) };
        let pipe = Arc::new(Mutex::new(Pipe::default()));
        for p in [&a, &b] {
            if let Ok(mut pipes) = p.pipes.lock() {
                pipes.retain(|w| w.strong_count() > 0);
                pipes.push(Arc::downgrade(&pipe));
            }
        }
        let near = End { pipe: pipe.clone(), side: 0, me: a.clone(), other: b.clone(), partial: Vec::new() };
        let far = End { pipe, side: 1, me: b, other: a, partial: Vec::new() };
        tokio::spawn(server.serve_stream(from, Box::new(far)));
        Ok(Box::new(near))
    }

    /// Peer `id` dies: every stream to and from it ends, and no new one opens.
    pub(crate) fn kill(&self, id: &PeerId) {
        if let Some(p) = self.peer(id) {
            p.dead.store(true, Ordering::SeqCst);
            p.wake_pipes();
        }
    }

    /// Peer `id` freezes: it reads and writes nothing, but its streams stay open.
    pub(crate) fn freeze(&self, id: &PeerId) {
        if let Some(p) = self.peer(id) {
            p.frozen.store(true, Ordering::SeqCst);
        }
    }

    /// Peers `a` and `b` can no longer reach each other (each is fine to everyone else).
    pub(crate) fn cut(&self, a: &PeerId, b: &PeerId) {
        if let Some(p) = self.peer(a) {
            if let Ok(mut c) = p.cut.lock() {
                c.insert(*b);
            }
            p.wake_pipes();
        }
    }

    /// Peer `id` rewrites every frame it sends with `f` from now on.
    pub(crate) fn tamper(&self, id: &PeerId, f: impl FnMut(Vec<u8>) -> Vec<u8> + Send + 'static) {
        if let Some(p) = self.peer(id) {
            if let Ok(mut t) = p.tamper.lock() {
                *t = Some(Box::new(f));
            }
        }
    }
}

/// What `server` announced as peer `id`, at a moment it had room: gossip is always a little
/// old, so a server that is full now may still be named (the refusal path under test).
fn announced(id: PeerId, server: &Server, ms_per_block: f64) -> ServerInfo {
    ServerInfo { free_slots: 64, ..server.announcement(id, ms_per_block, &[], false) }
}
