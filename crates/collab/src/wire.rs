//! The training service on streams: answering what others ask of this member's [`Store`],
//! and asking others for updates, manifests and chunks.
//!
//! One request per stream for updates (fetched once each), one stream per peer for a
//! state's chunks. Every answer is checked against what was asked for before it is used:
//! an update against the committed hash, a manifest against its id, a chunk against the
//! manifest's hash of it.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use odin_format::ModelId;
use odin_net::{Net, PeerId, StreamProtocol};
use odin_proto::train::{Manifest, Request, Response, Training, Update};
use odin_proto::{read_frame, write_frame, Envelope, Service, MAX_FRAME};

use crate::store::{Shared, Traffic};

/// The training service's stream protocol.
pub const TRAIN_PROTOCOL: StreamProtocol = StreamProtocol::new(<Training as Service>::PROTOCOL_ID);
/// How long a request and its answer may take.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(20);
/// A stream idle this long is closed by the server.
const IDLE: Duration = Duration::from_secs(30);
/// Largest request frame (requests are a few dozen bytes).
const MAX_REQUEST: usize = 4096;

/// Answer training streams from `store` until the swarm stops.
pub async fn serve(net: Net, run: ModelId, store: Shared, traffic: Arc<Traffic>) -> odin_net::Result<()> {
    let mut incoming = net.accept_for(TRAIN_PROTOCOL)?;
    while let Some((peer, stream)) = incoming.next().await {
        let (store, traffic) = (store.clone(), traffic.clone());
        tokio::spawn(async move {
            if let Err(e) = answer(stream, run, store, traffic).await {
                tracing::debug!("training stream from {peer} ended: {e}");
            }
        });
    }
    Ok(())
}

async fn answer(mut s: odin_net::Stream, run: ModelId, store: Shared, traffic: Arc<Traffic>) -> Result<(), String> {
    loop {
        let frame = match tokio::time::timeout(IDLE, read_frame(&mut s, MAX_REQUEST)).await {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Ok(()),
        };
        let reply = match Envelope::<Request>::from_bytes(&frame) {
            Ok(env) if env.model != run => Response::Missing(format!("this node trains run {run}, not {}", env.model)),
            Ok(env) => respond(&store, env.msg),
            Err(e) => Response::Missing(format!("unreadable request: {e}")),
        };
        let bytes = Envelope { model: run, msg: reply }.to_bytes();
        traffic.sent(bytes.len() + 4);
        write_frame(&mut s, &bytes).await.map_err(|e| e.to_string())?;
    }
}

fn respond(store: &Shared, req: Request) -> Response {
    let Ok(st) = store.lock() else { return Response::Missing("store unavailable".into()) };
    match req {
        Request::Update { hash, .. } => match st.update(&hash) {
            Some((_, u)) => Response::Update((*u).clone()),
            None => Response::Missing("no such update here (pruned, or never held)".into()),
        },
        Request::Manifest { id } => match st.manifest(&id) {
            Some(m) => Response::Manifest(m),
            None => Response::Missing("no such state here".into()),
        },
        Request::Chunk { id, index } => match st.chunk(&id, index as usize) {
            Some(c) => Response::Chunk(c),
            None => Response::Missing("no such chunk here".into()),
        },
    }
}

/// A stream to one peer's training service.
pub struct Asker {
    stream: odin_net::Stream,
    run: ModelId,
    traffic: Arc<Traffic>,
}

impl Asker {
    /// Open a stream to `peer`.
    pub async fn open(net: &Net, peer: PeerId, run: ModelId, traffic: Arc<Traffic>) -> Result<Self, String> {
        let stream = tokio::time::timeout(ASK_TIMEOUT, net.open_stream_for(peer, TRAIN_PROTOCOL))
            .await
            .map_err(|_| format!("opening a training stream to {peer} timed out"))?
            .map_err(|e| e.to_string())?;
        Ok(Self { stream, run, traffic })
    }

    /// Ask one thing and read the answer, within [`ASK_TIMEOUT`].
    pub async fn ask(&mut self, req: Request) -> Result<Response, String> {
        let bytes = Envelope { model: self.run, msg: req }.to_bytes();
        let round_trip = async {
            write_frame(&mut self.stream, &bytes).await.map_err(|e| e.to_string())?;
            read_frame(&mut self.stream, MAX_FRAME).await.map_err(|e| e.to_string())
        };
        let frame =
            tokio::time::timeout(ASK_TIMEOUT, round_trip).await.map_err(|_| "no answer in time".to_string())??;
        self.traffic.sent(bytes.len() + 4);
        self.traffic.received(frame.len() + 4);
        let env = Envelope::<Response>::from_bytes(&frame).map_err(|e| format!("a bad answer: {e}"))?;
        if env.model != self.run {
            return Err(format!("an answer for run {}", env.model));
        }
        Ok(env.msg)
    }
}

/// Fetch the update committed as `hash` from `peer` and check it: the hash, the shape, the
/// values, the length. Returns it with its dense values.
pub async fn fetch_update(
    net: &Net,
    peer: PeerId,
    run: ModelId,
    traffic: Arc<Traffic>,
    round: u64,
    hash: [u8; 32],
    params: usize,
) -> Result<(Update, Vec<f32>), String> {
    let mut a = Asker::open(net, peer, run, traffic).await?;
    match a.ask(Request::Update { round, hash }).await? {
        Response::Update(u) => check_update(u, &hash, params),
        Response::Missing(why) => Err(format!("{peer} does not hold it: {why}")),
        other => Err(format!("answered an update request with {other:?}")),
    }
}

/// The checks every fetched update passes before it can count.
pub fn check_update(u: Update, hash: &[u8; 32], params: usize) -> Result<(Update, Vec<f32>), String> {
    if u.hash() != *hash {
        return Err("its bytes do not hash to the committed value".into());
    }
    if u.len as usize != params {
        return Err(format!("it has {} values; the model has {params}", u.len));
    }
    let dense = u.decode().map_err(|e| e.to_string())?;
    if dense.iter().any(|v| !v.is_finite()) {
        return Err("it holds NaN or infinite values".into());
    }
    Ok((u, dense))
}

/// Fetch the state blob whose manifest id is `id` from `peers`, chunks spread over them in
/// parallel; a chunk that fails on one peer is asked of the next.
pub async fn fetch_state(
    net: &Net,
    peers: &[PeerId],
    run: ModelId,
    traffic: Arc<Traffic>,
    id: [u8; 32],
) -> Result<(Manifest, Vec<u8>), String> {
    if peers.is_empty() {
        return Err("no peer to fetch the state from".into());
    }
    let mut manifest = None;
    let mut why = Vec::new();
    for &p in peers {
        let got = async {
            let mut a = Asker::open(net, p, run, traffic.clone()).await?;
            match a.ask(Request::Manifest { id }).await? {
                Response::Manifest(m) if m.id() == id => Ok(m),
                Response::Manifest(_) => Err("a manifest that is not the one announced".to_string()),
                Response::Missing(w) => Err(w),
                other => Err(format!("answered a manifest request with {other:?}")),
            }
        }
        .await;
        match got {
            Ok(m) => {
                manifest = Some(m);
                break;
            }
            Err(e) => why.push(format!("{p}: {e}")),
        }
    }
    let m = manifest.ok_or_else(|| format!("no peer gave the manifest: {}", why.join("; ")))?;
    let n = m.chunks.len();
    let mut chunks: Vec<Option<Vec<u8>>> = vec![None; n];
    // Worker w starts at peer w and takes chunks w, w + P, …; what it cannot get, the
    // remaining passes ask of the other peers in turn.
    for pass in 0..peers.len() {
        let missing: Vec<usize> = (0..n).filter(|&i| chunks[i].is_none()).collect();
        if missing.is_empty() {
            break;
        }
        let jobs = peers.iter().enumerate().map(|(w, &p)| {
            let mine: Vec<usize> = missing.iter().copied().filter(|i| (i + pass) % peers.len() == w).collect();
            let (m, traffic) = (&m, traffic.clone());
            async move {
                let mut got = Vec::new();
                if mine.is_empty() {
                    return got;
                }
                let Ok(mut a) = Asker::open(net, p, run, traffic).await else { return got };
                for i in mine {
                    match a.ask(Request::Chunk { id, index: i as u32 }).await {
                        Ok(Response::Chunk(c)) if *blake3::hash(&c).as_bytes() == m.chunks[i] => got.push((i, c)),
                        Ok(_) => tracing::warn!("{p} sent a wrong chunk {i} of state {}; asking another", hex(&id)),
                        Err(e) => {
                            tracing::debug!("chunk {i} from {p}: {e}");
                            break;
                        }
                    }
                }
                got
            }
        });
        for (i, c) in futures::future::join_all(jobs).await.into_iter().flatten() {
            chunks[i] = Some(c);
        }
    }
    let missing = chunks.iter().filter(|c| c.is_none()).count();
    if missing > 0 {
        return Err(format!("{missing} of {n} chunks could not be fetched from {} peers", peers.len()));
    }
    Ok((m, chunks.into_iter().flatten().flatten().collect()))
}

/// The first bytes of an id, in hex, for logs and tables.
pub fn hex(id: &[u8; 32]) -> String {
    id[..6].iter().map(|b| format!("{b:02x}")).collect()
}
