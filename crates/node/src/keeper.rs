//! The node's side of the ledger: its feed in `ledger.sqlite`, the feeds of others kept in
//! step by gossip and streams, and the entries the node's work produces.
//!
//! - **Replication**: every `sync_every` the node gossips the heads of the feeds it holds on
//!   the network's ledger topic; a node that hears a head newer than its own copy fetches
//!   the missing range from that peer (`/odin/ledger/1`) and checks every entry on the way
//!   in. Two entries with one seq become a slash carrying both.
//! - **Receipts**: after a generation the node countersigns, for each server it used, the
//!   work that server's signed claims commit to; the server appends the receipt.
//! - **Uptime**: every `challenge_every` the node challenges a few peers with a fresh nonce;
//!   a peer that signs the answer gets the signed attestation back to append.
//! - **Slashes**: a liar this node convicts (its own audit, or a fraud proof it checked) is
//!   slashed with the proof; a slash from elsewhere is judged by recomputing the step.
//! - **Stake**: the node keeps `stake` bonded when its balance allows.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use odin_format::ModelId;
use odin_ledger::{account_of, Account, Author, Books, Inserted, NetworkId, Params, Store, MICRO};
use odin_net::{Net, PeerId, StreamProtocol};
use odin_proto::ledger::{
    Body, Genesis, Heads, Key, Ledger, Proof, Receipt, Request, Response, Signed, Slash, Uptime, Work as Paid,
    MAX_RANGE, MAX_RANGE_BYTES,
};
use odin_proto::{read_frame, write_frame, Envelope, Service, MAX_FRAME};

use crate::audit::{Auditor, Work};
use crate::error::{NodeError, Result};

/// The ledger's stream protocol.
pub const LEDGER_PROTOCOL: StreamProtocol = StreamProtocol::new(<Ledger as Service>::PROTOCOL_ID);
/// How long one ledger request and its answer may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request frame (a receipt or an attestation is a few hundred bytes).
const MAX_REQUEST: usize = 4096;
/// Peers challenged per round.
const CHALLENGED: usize = 8;
/// How far ahead of this node's clock an entry may be dated and still be taken.
const MAX_SKEW_MS: u64 = 5 * 60_000;

/// What a node's ledger is set up with.
#[derive(Debug, Clone)]
pub struct LedgerConfig {
    /// The network's name.
    pub name: String,
    /// The genesis node; `None`: the first bootstrap peer, or this node when it has none.
    pub genesis: Option<PeerId>,
    /// What the genesis entry allocates to others (this node, when genesis, gets
    /// [`GENESIS_SUPPLY`]), micro-units.
    pub allocations: Vec<(PeerId, u64)>,
    /// Bond this node keeps staked when its balance allows, micro-units.
    pub stake: u64,
    /// Reward epoch length, minutes (the genesis node's setting is the network's).
    pub epoch_minutes: u32,
    /// How often the node gossips its feeds' heads.
    pub sync_every: Duration,
    /// How often it challenges peers for uptime.
    pub challenge_every: Duration,
}

/// What the genesis node allocates to itself: the supply requesters pay servers from.
pub const GENESIS_SUPPLY: u64 = 1_000_000 * MICRO;

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            name: "odin".into(),
            genesis: None,
            allocations: Vec::new(),
            stake: 100 * MICRO,
            epoch_minutes: 60,
            sync_every: Duration::from_secs(5),
            challenge_every: Duration::from_secs(60),
        }
    }
}

/// The ledger topic of network `id`.
pub fn ledger_topic(id: &[u8; 32]) -> String {
    format!("odin/ledger/{}", odin_ledger::key::hex(&id[..8]))
}

/// What a keeper tells of each requester that hands over a receipt.
type ReceiptHook = Box<dyn Fn(&PeerId) + Send + Sync>;

/// A node's ledger.
pub struct Keeper {
    store: Mutex<Store>,
    author: Author,
    network: NetworkId,
    id: [u8; 32],
    net: Net,
    params: Params,
    cfg: LedgerConfig,
    auditor: Arc<Auditor>,
    layers: u32,
    /// Counts entries taken from peers and appended; [`Keeper::wait_until`] waits on it.
    changed: tokio::sync::watch::Sender<u64>,
    /// Feeds being fetched now (one fetch per feed at a time).
    fetching: Mutex<std::collections::HashSet<Key>>,
    /// Told of each requester that hands over a receipt (the server's count of what it owes).
    on_receipt: std::sync::OnceLock<ReceiptHook>,
    /// The genesis entry's epoch length, once known.
    epoch: std::sync::OnceLock<u32>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn nonce() -> [u8; 32] {
    rand::random()
}

impl Keeper {
    /// Open this node's ledger in `data_dir` and start keeping it: serve the ledger protocol,
    /// gossip heads, challenge peers. The genesis node writes the genesis entry first.
    pub async fn start(
        key: &odin_net::Keypair,
        data_dir: &Path,
        mut cfg: LedgerConfig,
        bootstrap: Option<PeerId>,
        net: Net,
        auditor: Arc<Auditor>,
        layers: usize,
    ) -> Result<Arc<Keeper>> {
        let author = Author::new(key).map_err(ledger)?;
        let genesis_peer = cfg.genesis.or(bootstrap).unwrap_or_else(|| key.public().to_peer_id());
        cfg.genesis = Some(genesis_peer);
        let genesis = account_of(&genesis_peer)
            .ok_or_else(|| NodeError::Config(format!("the genesis node {genesis_peer} has no ed25519 key")))?;
        let network = NetworkId::new(&cfg.name, genesis);
        let id = network.id();
        std::fs::create_dir_all(data_dir)
            .map_err(|e| NodeError::Config(format!("cannot create {}: {e}", data_dir.display())))?;
        let store = Store::open(&data_dir.join("ledger.sqlite"), id).map_err(ledger)?;
        store.set_network(&network).map_err(ledger)?;
        let keeper = Arc::new(Keeper {
            store: Mutex::new(store),
            author,
            network,
            id,
            net,
            params: Params::default(),
            cfg,
            auditor,
            layers: layers as u32,
            changed: tokio::sync::watch::Sender::new(0),
            fetching: Mutex::new(Default::default()),
            on_receipt: std::sync::OnceLock::new(),
            epoch: std::sync::OnceLock::new(),
        });
        if genesis == keeper.author.key() && keeper.with(|s| s.head(&genesis))?.is_none() {
            keeper.open_genesis()?;
        }
        keeper.net.subscribe(&ledger_topic(&id)).await?;
        let incoming = keeper.net.accept_for(LEDGER_PROTOCOL)?;
        let weak = Arc::downgrade(&keeper);
        tokio::spawn(async move {
            let mut incoming = incoming;
            while let Some((peer, stream)) = incoming.next().await {
                let Some(k) = weak.upgrade() else { return };
                tokio::spawn(async move { k.answer(peer, stream).await });
            }
        });
        let weak = Arc::downgrade(&keeper);
        let (sync, challenge) = (keeper.cfg.sync_every, keeper.cfg.challenge_every);
        tokio::spawn(async move {
            let mut heads = tokio::time::interval(sync);
            let mut chall = tokio::time::interval(challenge);
            chall.tick().await;
            loop {
                tokio::select! {
                    _ = heads.tick() => {
                        let Some(k) = weak.upgrade() else { return };
                        k.publish_heads().await;
                    }
                    _ = chall.tick() => {
                        let Some(k) = weak.upgrade() else { return };
                        // The books read every entry: once a challenge round, not every gossip.
                        k.keep_stake();
                        k.challenge_round().await;
                    }
                }
            }
        });
        Ok(keeper)
    }

    fn open_genesis(&self) -> Result<()> {
        let me = self.author.key();
        let mut alloc: std::collections::BTreeMap<Key, u64> = std::collections::BTreeMap::new();
        alloc.insert(me, GENESIS_SUPPLY);
        for (peer, v) in &self.cfg.allocations {
            let k = account_of(peer)
                .ok_or_else(|| NodeError::Config(format!("cannot allocate to {peer}: not an ed25519 peer id")))?;
            *alloc.entry(k).or_default() += v;
        }
        let g = Genesis { epoch_minutes: self.cfg.epoch_minutes.max(1), allocations: alloc.into_iter().collect() };
        self.append(Body::Genesis(g))?;
        tracing::info!("opened the ledger of network {}", self.network);
        Ok(())
    }

    fn with<T>(&self, f: impl FnOnce(&mut Store) -> odin_ledger::Result<T>) -> Result<T> {
        let mut s = self.store.lock().map_err(|_| NodeError::Config("the ledger store lock is poisoned".into()))?;
        f(&mut s).map_err(ledger)
    }

    fn append(&self, body: Body) -> Result<u64> {
        let c = self.with(|s| s.append(&self.author, now_ms(), body))?;
        self.changed.send_modify(|n| *n += 1);
        Ok(c.entry.seq)
    }

    /// Call `f` with each requester that hands this node a receipt.
    pub fn on_receipt(&self, f: impl Fn(&PeerId) + Send + Sync + 'static) {
        let _ = self.on_receipt.set(Box::new(f));
    }

    /// The network this ledger belongs to.
    pub fn network(&self) -> &NetworkId {
        &self.network
    }

    /// The books over every entry held.
    pub fn books(&self) -> Result<Books> {
        let genesis = self.network.genesis;
        self.with(|s| s.books(&genesis, &self.params))
    }

    /// `peer`'s account in the books held here.
    pub fn account(&self, peer: &PeerId) -> Result<Account> {
        let books = self.books()?;
        Ok(account_of(peer).map(|k| books.account(&k)).unwrap_or_default())
    }

    /// The head of every feed held.
    pub fn heads(&self) -> Result<Vec<odin_proto::ledger::Head>> {
        self.with(|s| s.heads())
    }

    /// Entries held.
    pub fn len(&self) -> Result<u64> {
        self.with(|s| s.len())
    }

    /// Whether it holds no entry.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// A receiver that sees every change to this ledger (entries appended or taken in).
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Wait until `done` holds of this ledger (checked after every change), at most `timeout`.
    pub async fn wait_until(&self, timeout: Duration, mut done: impl FnMut(&Keeper) -> bool) -> bool {
        let mut changed = self.changed.subscribe();
        let wait = async {
            while !done(self) {
                if changed.changed().await.is_err() {
                    return false;
                }
            }
            true
        };
        tokio::time::timeout(timeout, wait).await.unwrap_or(false)
    }

    /// Gossip the heads of the feeds held.
    pub async fn publish_heads(&self) {
        let Ok(mut heads) = self.with(|s| s.heads()) else { return };
        // A big network's heads go round in turns of the cap.
        if heads.len() > odin_proto::ledger::MAX_HEADS {
            let start = (now_ms() / 1000) as usize % heads.len();
            heads.rotate_left(start);
            heads.truncate(odin_proto::ledger::MAX_HEADS);
        }
        let msg = Heads { network: self.id, heads }.to_bytes();
        if let Err(e) = self.net.publish_on(&ledger_topic(&self.id), msg).await {
            tracing::debug!("cannot gossip ledger heads: {e}");
        }
    }

    /// Whether gossip on `topic` is this ledger's.
    pub fn is_topic(&self, topic: &str) -> bool {
        topic == ledger_topic(&self.id)
    }

    /// Heads gossiped by `source`: fetch what is newer than what is held, from it.
    pub async fn on_heads(self: &Arc<Self>, source: PeerId, data: &[u8]) {
        let heads = match Heads::from_bytes(data) {
            Ok(h) if h.network == self.id => h.heads,
            Ok(_) => return,
            Err(e) => {
                tracing::debug!("unreadable ledger heads from {source}: {e}");
                return;
            }
        };
        for h in heads {
            let ours = match self.with(|s| s.head(&h.author)) {
                Ok(o) => o,
                Err(_) => return,
            };
            let from = match ours {
                Some((seq, _)) if seq >= h.seq => {
                    // Same length: a different id at that seq is a fork; fetch it for the proof.
                    let held = self.with(|s| s.range(&h.author, h.seq, 1)).unwrap_or_default();
                    if held.first().is_some_and(|e| e.id() != h.id) {
                        h.seq
                    } else {
                        continue;
                    }
                }
                Some((seq, _)) => seq + 1,
                None => 0,
            };
            let fresh = self.fetching.lock().map(|mut f| f.insert(h.author)).unwrap_or(false);
            if !fresh {
                continue;
            }
            let k = self.clone();
            tokio::spawn(async move {
                // Released however the fetch ends (an error, a panic, the task dropped).
                let _slot = Fetching { keeper: k.clone(), author: h.author };
                if let Err(e) = k.fetch(source, h.author, from, h.seq).await {
                    tracing::debug!("fetching a feed from {source}: {e}");
                }
            });
        }
    }

    /// Fetch `author`'s entries `from..=to` from `peer` and offer them to the store.
    async fn fetch(
        self: &Arc<Self>,
        peer: PeerId,
        author: Key,
        mut from: u64,
        to: u64,
    ) -> std::result::Result<(), String> {
        let mut s = self.open(peer).await?;
        let range = |from: u64| Request::Range {
            author,
            from,
            count: to.saturating_sub(from).saturating_add(1).min(MAX_RANGE as u64) as u32,
        };
        send(&mut s, self.id, range(from)).await?;
        while from <= to {
            let Response::Entries(es) = receive(&mut s, self.id).await? else {
                return Err("a range answered with something else".into());
            };
            // Only `author`'s entries from `from` on, in order, are what was asked for.
            let asked = es
                .iter()
                .enumerate()
                .all(|(k, e)| e.entry().is_ok_and(|x| x.author == author && Some(x.seq) == from.checked_add(k as u64)));
            if es.is_empty() || !asked {
                return if asked { Ok(()) } else { Err(format!("{peer} answered a range with other entries")) };
            }
            from = from.saturating_add(es.len() as u64);
            // Ask for the next range before checking this one: the peer reads it meanwhile.
            if from <= to && from != u64::MAX {
                send(&mut s, self.id, range(from)).await?;
            }
            self.take(&es).await?;
            if from == u64::MAX {
                break;
            }
        }
        Ok(())
    }

    /// Offer fetched entries: store them, slash forks, judge slashes.
    async fn take(self: &Arc<Self>, es: &[Signed]) -> std::result::Result<(), String> {
        // An entry dated in the future is not taken (yet): time in a feed never runs back, so a
        // feed dated ahead could claim minutes that have not happened.
        let horizon = now_ms().saturating_add(MAX_SKEW_MS);
        let n = es.iter().take_while(|e| e.entry().is_ok_and(|x| x.time_ms <= horizon)).count();
        let es = &es[..n];
        let results = self.with(|s| s.insert_all(es)).map_err(|e| e.to_string())?;
        let mut new = 0;
        for (r, e) in results.into_iter().zip(es) {
            match r {
                Inserted::New => {
                    new += 1;
                    self.judge_if_slash(e).await;
                }
                Inserted::Equivocation { stored, offered } => {
                    let offender = e.entry().map(|x| x.author).map_err(|e| e.to_string())?;
                    tracing::warn!("{} signed two entries with one seq: slashing", odin_ledger::show(&offender));
                    let proof = Proof::Equivocation(stored, offered);
                    if let Err(e) = self.append(Body::Slash(Slash { offender, proof })) {
                        tracing::warn!("cannot append a slash: {e}");
                    }
                }
                Inserted::Duplicate | Inserted::KnownFork | Inserted::Gap { .. } => {}
            }
        }
        if new > 0 {
            self.changed.send_modify(|n| *n += new);
        }
        Ok(())
    }

    /// A slash for a false step, heard from elsewhere: recompute it and record the verdict.
    async fn judge_if_slash(&self, e: &Signed) {
        let Ok(entry) = e.entry() else { return };
        let Body::Slash(Slash { offender, proof: Proof::Step(bytes) }) = entry.body else { return };
        if self.with(|s| s.verdict(&offender, &bytes)).ok().flatten().is_some() {
            return;
        }
        let auditor = self.auditor.clone();
        let proof = bytes.clone();
        let judged = tokio::task::spawn_blocking(move || auditor.verdict(&proof)).await;
        // Only a recomputation decides: a node that cannot recompute records nothing.
        let guilty = match judged {
            Ok(Ok(accused)) => accused.and_then(|p| account_of(&p)) == Some(offender),
            Ok(Err(why)) => {
                tracing::info!("a slash of {} left unjudged: {why}", odin_ledger::show(&offender));
                return;
            }
            Err(_) => return,
        };
        if let Err(e) = self.with(|s| s.set_verdict(&offender, &bytes, guilty)) {
            tracing::warn!("cannot record a verdict: {e}");
        }
    }

    /// Slash `liar` with the fraud proof (its gossip bytes) this node convicted it with.
    pub fn slash(&self, liar: &PeerId, proof: Vec<u8>) {
        let Some(offender) = account_of(liar) else { return };
        let res = self
            .with(|s| s.set_verdict(&offender, &proof, true))
            .and_then(|_| self.append(Body::Slash(Slash { offender, proof: Proof::Step(proof) })));
        if let Err(e) = res {
            tracing::warn!("cannot slash {liar}: {e}");
        }
    }

    /// Countersign the work servers did for this node and hand each its receipt.
    pub async fn countersign(&self, work: Vec<(PeerId, Work)>) {
        let epoch = now_ms() / (u64::from(self.epoch_minutes()) * 60_000);
        let me = self.net.peer_id();
        for (server, w) in work {
            let Some(server_key) = account_of(&server) else { continue };
            if server == me || w.steps == 0 || w.blocks.is_empty() {
                continue;
            }
            let mut r = Receipt {
                requester: self.author.key(),
                epoch,
                work: Paid::Serve {
                    session: 0,
                    tokens: w.steps,
                    blocks: w.blocks.len() as u32,
                    model_blocks: self.layers.max(w.blocks.len() as u32),
                },
                commitment: *w.digest.finalize().as_bytes(),
                audited: w.audited,
                countersig: [0; 64],
            };
            r.countersig = self.author.sign(&r.countersign_bytes(&self.id, &server_key));
            match self.request(server, Request::Receipt(r)).await {
                Ok(Response::Appended(seq)) => tracing::debug!("{server} appended our receipt as #{seq}"),
                Ok(other) => tracing::info!("{server} did not take our receipt: {other:?}"),
                Err(e) => tracing::info!("cannot hand {server} its receipt: {e}"),
            }
        }
    }

    /// The network's epoch length: the genesis entry's, read once it is here (the books read
    /// every entry, too much for every generation).
    fn epoch_minutes(&self) -> u32 {
        if let Some(m) = self.epoch.get() {
            return *m;
        }
        match self.books() {
            Ok(b) if b.genesis => *self.epoch.get_or_init(|| b.epoch_minutes),
            _ => self.cfg.epoch_minutes,
        }
    }

    /// Challenge a few connected peers; append nothing here: each answered challenge's
    /// attestation goes to the peer that answered.
    pub async fn challenge_round(&self) {
        let Ok(mut peers) = self.net.peers().await else { return };
        // Random peers, so which are checked cannot be planned for.
        use rand::seq::SliceRandom;
        peers.shuffle(&mut rand::rng());
        for peer in peers.into_iter().take(CHALLENGED) {
            if let Err(e) = self.challenge(peer).await {
                tracing::debug!("uptime challenge to {peer}: {e}");
            }
        }
    }

    async fn challenge(&self, peer: PeerId) -> std::result::Result<(), String> {
        let node = account_of(&peer).ok_or("not an ed25519 peer")?;
        let minute = now_ms() / 60_000;
        let nonce = nonce();
        let mut s = self.open(peer).await?;
        let Response::Answer(sig) = ask(&mut s, self.id, Request::Challenge { minute, nonce }).await? else {
            return Err("no answer to the challenge".into());
        };
        let me = self.author.key();
        if !odin_ledger::verify(&node, &Uptime::answer_bytes(&self.id, &me, minute, &nonce), &sig) {
            return Err("a wrong answer to the challenge".into());
        }
        let attestation = self.author.sign(&Uptime::attest_bytes(&self.id, &node, minute, &nonce));
        let up = Uptime { challenger: me, minute, nonce, attestation };
        match ask(&mut s, self.id, Request::Attest(up)).await? {
            Response::Appended(_) => Ok(()),
            other => Err(format!("the attestation was not taken: {other:?}")),
        }
    }

    /// Stake up to the configured bond when the balance allows.
    fn keep_stake(&self) {
        let Ok(books) = self.books() else { return };
        let a = books.account(&self.author.key());
        let want = self.cfg.stake.saturating_sub(a.bond);
        let v = want.min(a.balance);
        // Pending stakes already in the feed this epoch count when the books run; stake only
        // whole missing amounts, never in dribbles.
        if want > 0 && v == want {
            if let Err(e) = self.append(Body::Stake(v)) {
                tracing::warn!("cannot stake: {e}");
            }
        }
    }

    async fn open(&self, peer: PeerId) -> std::result::Result<odin_net::Stream, String> {
        tokio::time::timeout(ASK_TIMEOUT, self.net.open_stream_for(peer, LEDGER_PROTOCOL))
            .await
            .map_err(|_| format!("opening a ledger stream to {peer} timed out"))?
            .map_err(|e| e.to_string())
    }

    async fn request(&self, peer: PeerId, req: Request) -> std::result::Result<Response, String> {
        let mut s = self.open(peer).await?;
        ask(&mut s, self.id, req).await
    }

    /// Answer one peer's ledger stream.
    async fn answer(&self, peer: PeerId, mut s: odin_net::Stream) {
        loop {
            let frame = match tokio::time::timeout(ASK_TIMEOUT * 3, read_frame(&mut s, MAX_REQUEST)).await {
                Ok(Ok(f)) => f,
                _ => return,
            };
            let reply = match Envelope::<Request>::from_bytes(&frame) {
                Ok(env) if env.model.0 != self.id => Response::Refused("another network's ledger".into()),
                Ok(env) => self.respond(peer, env.msg),
                Err(e) => Response::Refused(format!("unreadable request: {e}")),
            };
            let bytes = Envelope { model: ModelId(self.id), msg: reply }.to_bytes();
            if write_frame(&mut s, &bytes).await.is_err() {
                return;
            }
        }
    }

    fn respond(&self, peer: PeerId, req: Request) -> Response {
        let Some(them) = account_of(&peer) else { return Response::Refused("not an ed25519 peer".into()) };
        let refused = |e: NodeError| Response::Refused(e.to_string());
        match req {
            Request::Range { author, from, count } => self
                .with(|s| s.range_within(&author, from, count as usize, MAX_RANGE_BYTES))
                .map(Response::Entries)
                .unwrap_or_else(refused),
            Request::Heads => self
                .with(|s| s.heads())
                .map(|mut h| {
                    h.truncate(odin_proto::ledger::MAX_HEADS);
                    Response::Heads(h)
                })
                .unwrap_or_else(refused),
            // Only the requester on the stream can hand over its countersignature: nobody
            // appends receipts in others' names.
            Request::Receipt(r) if r.requester == them => match self.append(Body::Receipt(r)) {
                Ok(seq) => {
                    if let Some(f) = self.on_receipt.get() {
                        f(&peer);
                    }
                    Response::Appended(seq)
                }
                Err(e) => refused(e),
            },
            Request::Receipt(_) => Response::Refused("a receipt must come from its requester".into()),
            Request::Challenge { minute, nonce } => {
                Response::Answer(self.author.sign(&Uptime::answer_bytes(&self.id, &them, minute, &nonce)))
            }
            Request::Attest(u) if u.challenger == them => {
                self.append(Body::Uptime(u)).map(Response::Appended).unwrap_or_else(refused)
            }
            Request::Attest(_) => Response::Refused("an attestation must come from its challenger".into()),
        }
    }
}

/// A feed being fetched; dropping it lets the feed be fetched again.
struct Fetching {
    keeper: Arc<Keeper>,
    author: Key,
}

impl Drop for Fetching {
    fn drop(&mut self) {
        if let Ok(mut f) = self.keeper.fetching.lock() {
            f.remove(&self.author);
        }
    }
}

async fn ask(s: &mut odin_net::Stream, id: [u8; 32], req: Request) -> std::result::Result<Response, String> {
    send(s, id, req).await?;
    receive(s, id).await
}

async fn send(s: &mut odin_net::Stream, id: [u8; 32], req: Request) -> std::result::Result<(), String> {
    let bytes = Envelope { model: ModelId(id), msg: req }.to_bytes();
    tokio::time::timeout(ASK_TIMEOUT, write_frame(s, &bytes))
        .await
        .map_err(|_| "the request could not be sent in time".to_string())?
        .map_err(|e| e.to_string())
}

async fn receive(s: &mut odin_net::Stream, id: [u8; 32]) -> std::result::Result<Response, String> {
    let frame = tokio::time::timeout(ASK_TIMEOUT, read_frame(s, MAX_FRAME))
        .await
        .map_err(|_| "no answer in time".to_string())?
        .map_err(|e| e.to_string())?;
    let env = Envelope::<Response>::from_bytes(&frame).map_err(|e| format!("a bad answer: {e}"))?;
    if env.model.0 != id {
        return Err("an answer from another network's ledger".into());
    }
    match env.msg {
        Response::Refused(why) => Err(format!("refused: {why}")),
        m => Ok(m),
    }
}

fn ledger(e: odin_ledger::LedgerError) -> NodeError {
    NodeError::Ledger(e.to_string())
}
