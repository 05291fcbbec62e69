//! The ledger service (`/odin/ledger/1`): the entries of each node's signed, hash-chained feed,
//! the feed heads nodes gossip, and the ranges they fetch from each other.
//!
//! An entry's bytes are an envelope whose id slot holds the network id (not a model id), so
//! an entry signed for one network is refused by name in another before its fields are read,
//! and a replay into another network fails its signature check as well. An entry is stored
//! and relayed as exactly these bytes plus the author's signature ([`Signed`]); its id is the
//! blake3 of the bytes ([`Signed::id`]), and the next entry of the feed names it in `prev`.
//!
//! Keys are raw ed25519 public keys (32 bytes): this crate has no key types, and a feed's
//! author has to be an ed25519 key anyway to be checked with `verify_strict`.

use odin_format::ModelId;

use crate::codec::{Reader, Writer};
use crate::envelope::{header, Message, Service};
use crate::error::{ProtoError, Result};

/// The ledger service's version; a change to its bytes bumps it.
pub const PROTOCOL_VERSION: u16 = 1;
/// The stream protocol id of the ledger service.
pub const PROTOCOL_ID: &str = "/odin/ledger/1";
/// Largest entry (its signed bytes): a slash carrying a step fraud proof (the step's input
/// and session state: about 59 KB on odin-tiny, a few MB on a 100M model) fits, as does a
/// genesis with [`MAX_ALLOCATIONS`] accounts. Entries travel on streams, never on gossip.
pub const MAX_ENTRY: usize = 8 << 20;
/// Most accounts a genesis entry allocates to.
pub const MAX_ALLOCATIONS: usize = 1024;
/// Largest fraud proof a slash carries (a step proof with its revealed input and state).
pub const MAX_PROOF: usize = MAX_ENTRY - (64 << 10);
/// Most bytes of entries one range answer carries (it stops early, after at least one entry):
/// well inside a frame.
pub const MAX_RANGE_BYTES: usize = 16 << 20;
/// Most entries one range answer carries (and one request asks for).
pub const MAX_RANGE: usize = 512;
/// Most feed heads one gossip message lists.
pub const MAX_HEADS: usize = 256;
/// An ed25519 signature's length.
pub const SIG_LEN: usize = 64;

/// The kind byte of an entry's envelope.
const ENTRY_KIND: u8 = 0x40;
/// The kind byte of the bytes a requester countersigns.
const COUNTERSIGN_KIND: u8 = 0x41;
/// The kind byte of the bytes a challenger signs to attest an answer.
const ATTEST_KIND: u8 = 0x42;
/// The kind byte of the bytes a challenged node signs as its answer.
const ANSWER_KIND: u8 = 0x43;
/// The kind byte of a heads gossip message.
const HEADS_KIND: u8 = 0x44;

/// An ed25519 public key: an account, a feed's author.
pub type Key = [u8; 32];

/// The ledger service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ledger;

impl Service for Ledger {
    const NAME: &'static str = "ledger";
    const PROTOCOL_ID: &'static str = PROTOCOL_ID;
    const VERSION: u16 = PROTOCOL_VERSION;
    type Request = Request;
    type Response = Response;
}

/// One entry of a feed, before it is signed.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The network the entry belongs to.
    pub network: [u8; 32],
    /// The feed's author, who signs it.
    pub author: Key,
    /// Its place in the author's feed, from 0.
    pub seq: u64,
    /// The id of entry `seq - 1` of the same feed; zeros for the first entry.
    pub prev: [u8; 32],
    /// When the author wrote it, in milliseconds since the Unix epoch (the author's word: no
    /// reward is computed from it).
    pub time_ms: u64,
    /// What the entry says.
    pub body: Body,
}

/// What an entry says.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// The network's first entry, by the genesis node: the epoch length and who holds what.
    Genesis(Genesis),
    /// Work the author did, countersigned by whoever asked for it.
    Receipt(Receipt),
    /// A peer's attestation that the author answered its challenge in a given minute.
    Uptime(Uptime),
    /// Bond `amount` micro-units of the author's balance.
    Stake(u64),
    /// Start unbonding `amount` micro-units of the author's bond.
    Unstake(u64),
    /// A cheater's bond is cut, with the proof.
    Slash(Slash),
}

/// The genesis entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Genesis {
    /// Length of a reward epoch, in minutes.
    pub epoch_minutes: u32,
    /// The opening balances, in micro-units, sorted by account with no repeats.
    pub allocations: Vec<(Key, u64)>,
}

/// What a receipt is for.
#[derive(Debug, Clone, PartialEq)]
pub enum Work {
    /// Serving a session: `tokens` steps through `blocks` of the model's `model_blocks`.
    Serve {
        /// The session.
        session: u64,
        /// Tokens (steps) served.
        tokens: u64,
        /// Blocks the author ran per token.
        blocks: u32,
        /// Blocks in the whole model.
        model_blocks: u32,
    },
    /// Training: updates of a run accepted into rounds.
    Train {
        /// The run id.
        run: [u8; 32],
        /// The round.
        round: u64,
        /// Inner batches behind the update.
        batches: u64,
        /// Training samples behind the update.
        samples: u64,
        /// Whether the update's loss was among the round's lowest.
        low_loss: bool,
    },
}

/// A work receipt: the server's commitment to the work, countersigned by the requester.
#[derive(Debug, Clone, PartialEq)]
pub struct Receipt {
    /// Who asked for the work and countersigned (and pays for it).
    pub requester: Key,
    /// The reward epoch, as the requester attests it.
    pub epoch: u64,
    /// The work.
    pub work: Work,
    /// The server's commitment: the digest of its signed step claims (serving) or its signed
    /// update commitment (training).
    pub commitment: [u8; 32],
    /// Whether the requester audited this work (and it passed).
    pub audited: bool,
    /// The requester's signature over [`Receipt::countersign_bytes`].
    pub countersig: [u8; SIG_LEN],
}

/// An uptime attestation.
#[derive(Debug, Clone, PartialEq)]
pub struct Uptime {
    /// The peer that challenged.
    pub challenger: Key,
    /// The minute (since the Unix epoch) the challenge was answered in, as the challenger saw it.
    pub minute: u64,
    /// The challenger's random nonce.
    pub nonce: [u8; 32],
    /// The challenger's signature over [`Uptime::attest_bytes`].
    pub attestation: [u8; SIG_LEN],
}

/// A slash.
#[derive(Debug, Clone, PartialEq)]
pub struct Slash {
    /// The cheater.
    pub offender: Key,
    /// Why.
    pub proof: Proof,
}

/// The proof a slash carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Proof {
    /// Two different entries the offender signed with one seq.
    Equivocation(Box<Signed>, Box<Signed>),
    /// A verification fraud proof (`crate::verify`'s bytes), judged by recomputation.
    Step(Vec<u8>),
}

/// An entry as stored and relayed: its exact signed bytes and the signature.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Signed {
    /// [`Entry::to_bytes`].
    pub bytes: Vec<u8>,
    /// The author's ed25519 signature over `bytes`.
    pub sig: [u8; SIG_LEN],
}

impl Signed {
    /// The entry's id: blake3 of its signed bytes.
    pub fn id(&self) -> [u8; 32] {
        *blake3::hash(&self.bytes).as_bytes()
    }

    /// Decode the entry (the signature is the caller's to check).
    pub fn entry(&self) -> Result<Entry> {
        Entry::from_bytes(&self.bytes)
    }

    fn write(&self, w: &mut Writer) {
        w.bytes(&self.bytes);
        w.raw(&self.sig);
    }

    fn read(r: &mut Reader<'_>, cap: usize) -> Result<Self> {
        let bytes = r.bytes(cap, "entry")?.to_vec();
        let sig = r.array("entry signature")?;
        Ok(Self { bytes, sig })
    }

    /// Encode for a file or a stream (length-prefixed bytes, then the signature).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.write(&mut w);
        w.into_bytes()
    }

    /// Decode what [`Signed::to_bytes`] wrote, with nothing after it.
    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        let mut r = Reader::new(b);
        let s = Self::read(&mut r, MAX_ENTRY)?;
        r.end()?;
        Ok(s)
    }
}

impl Entry {
    /// The bytes the author signs, stores and relays.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = header::<Ledger>(&ModelId(self.network), ENTRY_KIND);
        w.raw(&self.author);
        w.u64(self.seq);
        w.raw(&self.prev);
        w.u64(self.time_ms);
        self.body.write(&mut w);
        w.into_bytes()
    }

    /// Decode an entry's signed bytes. Never panics; says what was wrong.
    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        if b.len() > MAX_ENTRY {
            return Err(ProtoError::TooLarge { what: "ledger entry".into(), size: b.len(), cap: MAX_ENTRY });
        }
        let mut r = Reader::new(b);
        let network = read_header(&mut r, ENTRY_KIND)?;
        let author = r.array("author")?;
        let seq = r.u64("seq")?;
        let prev = r.array("prev")?;
        let time_ms = r.u64("time")?;
        let body = Body::read(&mut r)?;
        r.end()?;
        Ok(Self { network, author, seq, prev, time_ms, body })
    }
}

/// Check the envelope of ledger bytes of `kind`; returns the network id.
fn read_header(r: &mut Reader<'_>, kind: u8) -> Result<[u8; 32]> {
    let theirs = r.u16("protocol version")?;
    if theirs != PROTOCOL_VERSION {
        return Err(ProtoError::Version { ours: PROTOCOL_VERSION, theirs });
    }
    let network = r.array("network id")?;
    let k = r.u8("kind")?;
    if k != kind {
        return Err(ProtoError::Malformed(format!("ledger kind {k:#04x} where {kind:#04x} belongs")));
    }
    Ok(network)
}

impl Body {
    fn tag(&self) -> u8 {
        match self {
            Body::Genesis(_) => 0,
            Body::Receipt(_) => 1,
            Body::Uptime(_) => 2,
            Body::Stake(_) => 3,
            Body::Unstake(_) => 4,
            Body::Slash(_) => 5,
        }
    }

    fn write(&self, w: &mut Writer) {
        w.u8(self.tag());
        match self {
            Body::Genesis(g) => {
                w.u32(g.epoch_minutes);
                w.u32(g.allocations.len() as u32);
                for (k, v) in &g.allocations {
                    w.raw(k);
                    w.u64(*v);
                }
            }
            Body::Receipt(rc) => rc.write(w),
            Body::Uptime(u) => u.write(w),
            Body::Stake(a) | Body::Unstake(a) => w.u64(*a),
            Body::Slash(s) => {
                w.raw(&s.offender);
                match &s.proof {
                    Proof::Equivocation(a, b) => {
                        w.u8(0);
                        a.write(w);
                        b.write(w);
                    }
                    Proof::Step(p) => {
                        w.u8(1);
                        w.bytes(p);
                    }
                }
            }
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self> {
        Ok(match r.u8("entry body kind")? {
            0 => {
                let epoch_minutes = r.u32("epoch length")?;
                if epoch_minutes == 0 {
                    return Err(ProtoError::Malformed("a genesis epoch of 0 minutes".into()));
                }
                let n = r.u32("allocations")? as usize;
                if n > MAX_ALLOCATIONS {
                    return Err(ProtoError::TooLarge { what: "allocations".into(), size: n, cap: MAX_ALLOCATIONS });
                }
                if !r.fits(n, 40) {
                    return Err(ProtoError::Malformed("the allocations end early".into()));
                }
                let mut allocations = Vec::with_capacity(n);
                for _ in 0..n {
                    let k: Key = r.array("account")?;
                    let v = r.u64("allocation")?;
                    if allocations.last().is_some_and(|(p, _): &(Key, u64)| *p >= k) {
                        return Err(ProtoError::Malformed("genesis accounts out of order or repeated".into()));
                    }
                    allocations.push((k, v));
                }
                Body::Genesis(Genesis { epoch_minutes, allocations })
            }
            1 => Body::Receipt(Receipt::read(r)?),
            2 => Body::Uptime(Uptime::read(r)?),
            3 => Body::Stake(r.u64("stake")?),
            4 => Body::Unstake(r.u64("unstake")?),
            5 => {
                let offender = r.array("offender")?;
                let proof = match r.u8("proof kind")? {
                    // Each half is capped at half an entry, so the whole slash fits in one.
                    0 => Proof::Equivocation(
                        Box::new(Signed::read(r, MAX_ENTRY / 2)?),
                        Box::new(Signed::read(r, MAX_ENTRY / 2)?),
                    ),
                    1 => Proof::Step(r.bytes(MAX_PROOF, "fraud proof")?.to_vec()),
                    k => return Err(ProtoError::Malformed(format!("unknown proof kind {k}"))),
                };
                Body::Slash(Slash { offender, proof })
            }
            k => return Err(ProtoError::Malformed(format!("unknown entry body kind {k}"))),
        })
    }
}

fn read_bool(r: &mut Reader<'_>, what: &str) -> Result<bool> {
    match r.u8(what)? {
        0 => Ok(false),
        1 => Ok(true),
        b => Err(ProtoError::Malformed(format!("{what} is {b}, not 0 or 1"))),
    }
}

impl Receipt {
    fn write(&self, w: &mut Writer) {
        self.write_fields(w);
        w.raw(&self.countersig);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self> {
        let requester = r.array("requester")?;
        let epoch = r.u64("epoch")?;
        let work = match r.u8("work kind")? {
            0 => Work::Serve {
                session: r.u64("session")?,
                tokens: r.u64("tokens")?,
                blocks: r.u32("blocks")?,
                model_blocks: r.u32("model blocks")?,
            },
            1 => Work::Train {
                run: r.array("run")?,
                round: r.u64("round")?,
                batches: r.u64("batches")?,
                samples: r.u64("samples")?,
                low_loss: read_bool(r, "low loss")?,
            },
            k => return Err(ProtoError::Malformed(format!("unknown work kind {k}"))),
        };
        if let Work::Serve { blocks, model_blocks, .. } = work {
            if blocks == 0 || blocks > model_blocks {
                return Err(ProtoError::Malformed(format!("{blocks} blocks of a {model_blocks}-block model")));
            }
        }
        let commitment = r.array("commitment")?;
        let audited = read_bool(r, "audited")?;
        let countersig = r.array("countersignature")?;
        Ok(Receipt { requester, epoch, work, commitment, audited, countersig })
    }

    fn write_fields(&self, w: &mut Writer) {
        w.raw(&self.requester);
        w.u64(self.epoch);
        match &self.work {
            Work::Serve { session, tokens, blocks, model_blocks } => {
                w.u8(0);
                w.u64(*session);
                w.u64(*tokens);
                w.u32(*blocks);
                w.u32(*model_blocks);
            }
            Work::Train { run, round, batches, samples, low_loss } => {
                w.u8(1);
                w.raw(run);
                w.u64(*round);
                w.u64(*batches);
                w.u64(*samples);
                w.u8(u8::from(*low_loss));
            }
        }
        w.raw(&self.commitment);
        w.u8(u8::from(self.audited));
    }

    /// The bytes the requester signs: the receipt without its countersignature, for `server`
    /// on `network`, so it counts for no other server and in no other network.
    pub fn countersign_bytes(&self, network: &[u8; 32], server: &Key) -> Vec<u8> {
        let mut w = header::<Ledger>(&ModelId(*network), COUNTERSIGN_KIND);
        w.raw(server);
        self.write_fields(&mut w);
        w.into_bytes()
    }
}

impl Uptime {
    fn write(&self, w: &mut Writer) {
        w.raw(&self.challenger);
        w.u64(self.minute);
        w.raw(&self.nonce);
        w.raw(&self.attestation);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self> {
        Ok(Uptime {
            challenger: r.array("challenger")?,
            minute: r.u64("minute")?,
            nonce: r.array("nonce")?,
            attestation: r.array("attestation")?,
        })
    }

    /// The bytes the challenger signs: `node` answered `nonce` in `minute` on `network`.
    pub fn attest_bytes(network: &[u8; 32], node: &Key, minute: u64, nonce: &[u8; 32]) -> Vec<u8> {
        let mut w = header::<Ledger>(&ModelId(*network), ATTEST_KIND);
        w.raw(node);
        w.u64(minute);
        w.raw(nonce);
        w.into_bytes()
    }

    /// The bytes a challenged node signs as its answer to `challenger`'s `nonce`.
    pub fn answer_bytes(network: &[u8; 32], challenger: &Key, minute: u64, nonce: &[u8; 32]) -> Vec<u8> {
        let mut w = header::<Ledger>(&ModelId(*network), ANSWER_KIND);
        w.raw(challenger);
        w.u64(minute);
        w.raw(nonce);
        w.into_bytes()
    }
}

/// The newest entry a node holds of one feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The feed's author.
    pub author: Key,
    /// The newest seq held.
    pub seq: u64,
    /// That entry's id.
    pub id: [u8; 32],
}

/// What a node gossips on the network's ledger topic: the heads of the feeds it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Heads {
    /// The network.
    pub network: [u8; 32],
    /// The feeds' heads.
    pub heads: Vec<Head>,
}

impl Heads {
    /// Encode for gossip.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = header::<Ledger>(&ModelId(self.network), HEADS_KIND);
        w.u32(self.heads.len() as u32);
        for h in &self.heads {
            write_head(&mut w, h);
        }
        w.into_bytes()
    }

    /// Decode a gossip message. Never panics; says what was wrong.
    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        let mut r = Reader::new(b);
        let network = read_header(&mut r, HEADS_KIND)?;
        let heads = read_heads(&mut r)?;
        r.end()?;
        Ok(Self { network, heads })
    }
}

fn write_head(w: &mut Writer, h: &Head) {
    w.raw(&h.author);
    w.u64(h.seq);
    w.raw(&h.id);
}

fn read_heads(r: &mut Reader<'_>) -> Result<Vec<Head>> {
    let n = r.u32("heads")? as usize;
    if n > MAX_HEADS {
        return Err(ProtoError::TooLarge { what: "heads".into(), size: n, cap: MAX_HEADS });
    }
    if !r.fits(n, 72) {
        return Err(ProtoError::Malformed("the heads end early".into()));
    }
    (0..n).map(|_| Ok(Head { author: r.array("author")?, seq: r.u64("seq")?, id: r.array("head id")? })).collect()
}

/// What a node asks a peer for.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Entries `from..from + count` of `author`'s feed.
    Range {
        /// The feed.
        author: Key,
        /// The first seq wanted.
        from: u64,
        /// How many (at most [`MAX_RANGE`]).
        count: u32,
    },
    /// The heads of every feed the peer holds.
    Heads,
    /// A receipt for work the peer did for the sender, countersigned: the peer appends it.
    Receipt(Receipt),
    /// Prove you are up: sign [`Uptime::answer_bytes`] for this minute and nonce.
    Challenge {
        /// The challenger's minute.
        minute: u64,
        /// A fresh random nonce.
        nonce: [u8; 32],
    },
    /// The attestation of an answered challenge: the peer appends it.
    Attest(Uptime),
}

/// What a peer answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    /// The entries asked for that the peer holds, in seq order (fewer when it holds fewer).
    Entries(Vec<Signed>),
    /// The heads of the feeds it holds.
    Heads(Vec<Head>),
    /// The request was refused, and why.
    Refused(String),
    /// The entry was appended to the peer's feed at this seq.
    Appended(u64),
    /// A challenge's answer: the signature over [`Uptime::answer_bytes`].
    Answer([u8; SIG_LEN]),
}

impl Message for Request {
    type Service = Ledger;

    fn kind(&self) -> u8 {
        match self {
            Request::Range { .. } => 0,
            Request::Heads => 1,
            Request::Receipt(_) => 2,
            Request::Challenge { .. } => 3,
            Request::Attest(_) => 4,
        }
    }

    fn write(&self, w: &mut Writer) {
        match self {
            Request::Range { author, from, count } => {
                w.raw(author);
                w.u64(*from);
                w.u32(*count);
            }
            Request::Heads => {}
            Request::Receipt(r) => r.write(w),
            Request::Challenge { minute, nonce } => {
                w.u64(*minute);
                w.raw(nonce);
            }
            Request::Attest(u) => u.write(w),
        }
    }

    fn read(kind: u8, r: &mut Reader<'_>) -> Result<Self> {
        match kind {
            0 => {
                let author = r.array("author")?;
                let from = r.u64("from")?;
                let count = r.u32("count")?;
                if count as usize > MAX_RANGE {
                    return Err(ProtoError::TooLarge { what: "range".into(), size: count as usize, cap: MAX_RANGE });
                }
                Ok(Request::Range { author, from, count })
            }
            1 => Ok(Request::Heads),
            2 => Ok(Request::Receipt(Receipt::read(r)?)),
            3 => Ok(Request::Challenge { minute: r.u64("minute")?, nonce: r.array("nonce")? }),
            4 => Ok(Request::Attest(Uptime::read(r)?)),
            k => Err(ProtoError::Malformed(format!("unknown ledger request kind {k}"))),
        }
    }
}

impl Message for Response {
    type Service = Ledger;

    fn kind(&self) -> u8 {
        match self {
            Response::Entries(_) => 0,
            Response::Heads(_) => 1,
            Response::Refused(_) => 2,
            Response::Appended(_) => 3,
            Response::Answer(_) => 4,
        }
    }

    fn write(&self, w: &mut Writer) {
        match self {
            Response::Entries(es) => {
                w.u32(es.len() as u32);
                for e in es {
                    e.write(w);
                }
            }
            Response::Heads(hs) => {
                w.u32(hs.len() as u32);
                for h in hs {
                    write_head(w, h);
                }
            }
            Response::Refused(why) => w.message(why),
            Response::Appended(seq) => w.u64(*seq),
            Response::Answer(sig) => w.raw(sig),
        }
    }

    fn read(kind: u8, r: &mut Reader<'_>) -> Result<Self> {
        match kind {
            0 => {
                let n = r.u32("entries")? as usize;
                if n > MAX_RANGE {
                    return Err(ProtoError::TooLarge { what: "entries".into(), size: n, cap: MAX_RANGE });
                }
                // Each entry is at least its length prefix and signature.
                if !r.fits(n, 4 + SIG_LEN) {
                    return Err(ProtoError::Malformed("the entries end early".into()));
                }
                (0..n).map(|_| Signed::read(r, MAX_ENTRY)).collect::<Result<_>>().map(Response::Entries)
            }
            1 => read_heads(r).map(Response::Heads),
            2 => Ok(Response::Refused(r.message("reason")?)),
            3 => Ok(Response::Appended(r.u64("seq")?)),
            4 => Ok(Response::Answer(r.array("answer")?)),
            k => Err(ProtoError::Malformed(format!("unknown ledger response kind {k}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Envelope;
    use proptest::prelude::*;

    const NET: [u8; 32] = [7; 32];

    fn entry(body: Body) -> Entry {
        Entry { network: NET, author: [1; 32], seq: 3, prev: [2; 32], time_ms: 1_700_000_000_000, body }
    }

    fn bodies() -> Vec<Body> {
        let signed = Signed { bytes: entry(Body::Stake(5)).to_bytes(), sig: [9; 64] };
        vec![
            Body::Genesis(Genesis { epoch_minutes: 60, allocations: vec![([1; 32], 10), ([2; 32], 20)] }),
            Body::Receipt(Receipt {
                requester: [4; 32],
                epoch: 9,
                work: Work::Serve { session: 1, tokens: 64, blocks: 2, model_blocks: 4 },
                commitment: [5; 32],
                audited: true,
                countersig: [6; 64],
            }),
            Body::Receipt(Receipt {
                requester: [4; 32],
                epoch: 9,
                work: Work::Train { run: [8; 32], round: 2, batches: 60, samples: 480, low_loss: true },
                commitment: [5; 32],
                audited: false,
                countersig: [6; 64],
            }),
            Body::Uptime(Uptime { challenger: [3; 32], minute: 29_000_000, nonce: [4; 32], attestation: [5; 64] }),
            Body::Stake(1_000_000),
            Body::Unstake(1),
            Body::Slash(Slash {
                offender: [1; 32],
                proof: Proof::Equivocation(Box::new(signed.clone()), Box::new(signed)),
            }),
            Body::Slash(Slash { offender: [1; 32], proof: Proof::Step(vec![1, 2, 3]) }),
        ]
    }

    #[test]
    fn every_body_round_trips() {
        for b in bodies() {
            let e = entry(b);
            assert_eq!(Entry::from_bytes(&e.to_bytes()).unwrap(), e);
            let s = Signed { bytes: e.to_bytes(), sig: [1; 64] };
            assert_eq!(Signed::from_bytes(&s.to_bytes()).unwrap(), s);
            assert_eq!(s.entry().unwrap(), e);
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        for b in bodies() {
            let bytes = entry(b).to_bytes();
            for n in 0..bytes.len() {
                assert!(Entry::from_bytes(&bytes[..n]).is_err(), "cut at {n} of {}", bytes.len());
            }
            let signed = Signed { bytes, sig: [1; 64] }.to_bytes();
            for n in 0..signed.len() {
                assert!(Signed::from_bytes(&signed[..n]).is_err());
            }
        }
    }

    #[test]
    fn an_entry_for_another_network_or_version_or_kind_is_refused_by_name() {
        let b = entry(Body::Stake(1)).to_bytes();
        let mut other = b.clone();
        other[0] ^= 1;
        assert!(matches!(Entry::from_bytes(&other), Err(ProtoError::Version { .. })));
        // The network id is part of the bytes (and so of what is signed): another network reads
        // a different id.
        let mut net = b.clone();
        net[2] ^= 1;
        assert_ne!(Entry::from_bytes(&net).unwrap().network, NET);
        let cs = Receipt {
            requester: [0; 32],
            epoch: 0,
            work: Work::Serve { session: 0, tokens: 1, blocks: 1, model_blocks: 1 },
            commitment: [0; 32],
            audited: false,
            countersig: [0; 64],
        }
        .countersign_bytes(&NET, &[1; 32]);
        let e = Entry::from_bytes(&cs).unwrap_err();
        assert!(e.to_string().contains("kind"), "{e}");
    }

    #[test]
    fn malformed_bodies_say_what() {
        let mut bad =
            entry(Body::Genesis(Genesis { epoch_minutes: 60, allocations: vec![([2; 32], 1), ([1; 32], 2)] }))
                .to_bytes();
        assert!(Entry::from_bytes(&bad).unwrap_err().to_string().contains("out of order"));
        bad = entry(Body::Genesis(Genesis { epoch_minutes: 0, allocations: vec![] })).to_bytes();
        assert!(Entry::from_bytes(&bad).unwrap_err().to_string().contains("0 minutes"));
        let over = Receipt {
            requester: [0; 32],
            epoch: 0,
            work: Work::Serve { session: 0, tokens: 1, blocks: 5, model_blocks: 4 },
            commitment: [0; 32],
            audited: false,
            countersig: [0; 64],
        };
        let e = Entry::from_bytes(&entry(Body::Receipt(over)).to_bytes()).unwrap_err();
        assert!(e.to_string().contains("5 blocks of a 4-block"), "{e}");
        // A huge allocation count is refused before anything is allocated.
        let mut w = header::<Ledger>(&ModelId(NET), ENTRY_KIND);
        w.raw(&[1; 32]);
        w.u64(0);
        w.raw(&[0; 32]);
        w.u64(0);
        w.u8(0);
        w.u32(60);
        w.u32(u32::MAX);
        assert!(matches!(Entry::from_bytes(&w.into_bytes()), Err(ProtoError::TooLarge { .. })));
    }

    #[test]
    fn messages_round_trip_and_caps_hold() {
        let Body::Receipt(rc) = bodies().swap_remove(1) else { unreachable!() };
        let Body::Uptime(up) = bodies().swap_remove(3) else { unreachable!() };
        let reqs = [
            Request::Range { author: [1; 32], from: 5, count: 100 },
            Request::Heads,
            Request::Receipt(rc),
            Request::Challenge { minute: 5, nonce: [3; 32] },
            Request::Attest(up),
        ];
        for m in reqs {
            let env = Envelope { model: ModelId(NET), msg: m };
            assert_eq!(Envelope::<Request>::from_bytes(&env.to_bytes()).unwrap(), env);
        }
        let too_many = Envelope { model: ModelId(NET), msg: Request::Range { author: [1; 32], from: 0, count: 513 } };
        assert!(matches!(Envelope::<Request>::from_bytes(&too_many.to_bytes()), Err(ProtoError::TooLarge { .. })));
        let head = Head { author: [1; 32], seq: 2, id: [3; 32] };
        let resps = [
            Response::Entries(vec![Signed { bytes: entry(Body::Stake(1)).to_bytes(), sig: [2; 64] }]),
            Response::Heads(vec![head]),
            Response::Refused("no".into()),
            Response::Appended(7),
            Response::Answer([8; 64]),
        ];
        for m in resps {
            let env = Envelope { model: ModelId(NET), msg: m };
            assert_eq!(Envelope::<Response>::from_bytes(&env.to_bytes()).unwrap(), env);
        }
        let heads = Heads { network: NET, heads: vec![head; 3] };
        assert_eq!(Heads::from_bytes(&heads.to_bytes()).unwrap(), heads);
        let over = Heads { network: NET, heads: vec![head; MAX_HEADS + 1] };
        assert!(matches!(Heads::from_bytes(&over.to_bytes()), Err(ProtoError::TooLarge { .. })));
    }

    proptest! {
        #[test]
        fn entries_round_trip(seq: u64, time_ms: u64, amount: u64, tokens: u64, blocks in 1u32..64, extra in 0u32..64,
                              audited: bool, alloc in proptest::collection::btree_map(any::<[u8; 32]>(), any::<u64>(), 0..20)) {
            let bodies = [
                Body::Stake(amount),
                Body::Genesis(Genesis { epoch_minutes: blocks, allocations: alloc.into_iter().collect() }),
                Body::Receipt(Receipt {
                    requester: [4; 32], epoch: amount,
                    work: Work::Serve { session: seq, tokens, blocks, model_blocks: blocks + extra },
                    commitment: [5; 32], audited, countersig: [6; 64],
                }),
            ];
            for body in bodies {
                let e = Entry { network: NET, author: [1; 32], seq, prev: [2; 32], time_ms, body };
                prop_assert_eq!(Entry::from_bytes(&e.to_bytes()).unwrap(), e);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Entry::from_bytes(&b);
            let _ = Signed::from_bytes(&b);
            let _ = Heads::from_bytes(&b);
            let _ = Envelope::<Request>::from_bytes(&b);
            let _ = Envelope::<Response>::from_bytes(&b);
        }
    }
}
