//! The training service (`/odin/train/1`): what nodes training together say on a run's
//! gossip topic, and what they fetch from each other on direct streams.
//!
//! Every envelope carries the run id where inference carries the model id, so a message for
//! another run is refused by name before its fields are read.
//!
//! - On gossip ([`Gossip`]): a node's signed [`Commit`] to its pseudo-gradient, its signed
//!   [`Vote`] on which updates count, and its signed [`Announce`] of the weights a round
//!   starts from.
//! - On streams ([`Request`], [`Response`]): an [`Update`] by its hash, and the weights and
//!   outer momentum as content-addressed chunks listed by a [`Manifest`].
//!
//! Signatures are bytes here (this crate has no key types); the signer signs
//! [`Gossip::signing_bytes`], the envelope with the signature left empty, so a signature for
//! one run, round or kind of message is never valid for another.

use odin_format::{int8, ModelId};

use crate::codec::{Reader, Writer};
use crate::envelope::{header, Message, Service};
use crate::error::{ProtoError, Result};
use crate::peer::PeerBytes;

/// The training service's version; a change to its bytes bumps it.
pub const PROTOCOL_VERSION: u16 = 1;
/// The stream protocol id of the training service.
pub const PROTOCOL_ID: &str = "/odin/train/1";
/// Most values in an update or a weights vector: an int8 update of this many values
/// (codes, one f16 scale per 32, a header) fits in one frame.
pub const MAX_PARAMS: usize = 56 << 20;
/// Largest chunk of a weights-and-momentum blob.
pub const MAX_CHUNK: usize = 4 << 20;
/// Most chunks one manifest lists.
pub const MAX_CHUNKS: usize = 1 << 16;
/// Most updates one vote names (the run's participants in a round).
pub const MAX_VOTERS: usize = 4096;
/// Largest signature (ed25519's are 64 bytes).
pub const MAX_SIG: usize = 128;

/// The training service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Training;

impl Service for Training {
    const NAME: &'static str = "training";
    const PROTOCOL_ID: &'static str = PROTOCOL_ID;
    const VERSION: u16 = PROTOCOL_VERSION;
    type Request = Request;
    type Response = Response;
}

/// A node's promise about its pseudo-gradient for a round, published before anyone fetches it.
#[derive(Debug, Clone, PartialEq)]
pub struct Commit {
    /// The round the update belongs to.
    pub round: u64,
    /// The node that computed it (and signed this).
    pub node: PeerBytes,
    /// The id of the state the update was computed from ([`Manifest::id`]): an update
    /// counts only in a round that starts from that state.
    pub base: [u8; 32],
    /// blake3 of the update's bytes ([`Update::to_bytes`]).
    pub update: [u8; 32],
    /// Training samples (rows) behind it.
    pub samples: u64,
    /// Mean inner loss over the round.
    pub loss: f64,
    /// The signature over [`Gossip::signing_bytes`].
    pub sig: Vec<u8>,
}

/// A node's view, after a round's deadline, of the updates it holds and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Vote {
    /// The round.
    pub round: u64,
    /// The voter.
    pub node: PeerBytes,
    /// (author, update hash) for each update the voter fetched and checked, sorted by author.
    pub held: Vec<(PeerBytes, [u8; 32])>,
    /// The signature over [`Gossip::signing_bytes`].
    pub sig: Vec<u8>,
}

/// The weights (and outer momentum) a node starts `round` from.
#[derive(Debug, Clone, PartialEq)]
pub struct Announce {
    /// The round these weights start.
    pub round: u64,
    /// The announcer.
    pub node: PeerBytes,
    /// The id of the weights-and-momentum manifest ([`Manifest::id`]).
    pub state: [u8; 32],
    /// The signature over [`Gossip::signing_bytes`].
    pub sig: Vec<u8>,
}

/// What travels on a run's gossip topic.
#[derive(Debug, Clone, PartialEq)]
pub enum Gossip {
    /// A commitment to an update.
    Commit(Commit),
    /// A vote on a round's updates.
    Vote(Vote),
    /// Which state a round starts from.
    Announce(Announce),
}

impl Gossip {
    /// The node that signed it.
    pub fn node(&self) -> &PeerBytes {
        match self {
            Gossip::Commit(c) => &c.node,
            Gossip::Vote(v) => &v.node,
            Gossip::Announce(a) => &a.node,
        }
    }

    /// The round it is about.
    pub fn round(&self) -> u64 {
        match self {
            Gossip::Commit(c) => c.round,
            Gossip::Vote(v) => v.round,
            Gossip::Announce(a) => a.round,
        }
    }

    /// The signature it carries.
    pub fn sig(&self) -> &[u8] {
        match self {
            Gossip::Commit(c) => &c.sig,
            Gossip::Vote(v) => &v.sig,
            Gossip::Announce(a) => &a.sig,
        }
    }

    /// Put the signature in.
    pub fn set_sig(&mut self, sig: Vec<u8>) {
        match self {
            Gossip::Commit(c) => c.sig = sig,
            Gossip::Vote(v) => v.sig = sig,
            Gossip::Announce(a) => a.sig = sig,
        }
    }

    /// The bytes a signature covers: the whole envelope for `run` with the signature empty.
    pub fn signing_bytes(&self, run: &ModelId) -> Vec<u8> {
        let mut unsigned = self.clone();
        unsigned.set_sig(Vec::new());
        crate::Envelope { model: *run, msg: unsigned }.to_bytes()
    }
}

impl Message for Gossip {
    type Service = Training;

    fn kind(&self) -> u8 {
        match self {
            Gossip::Commit(_) => 1,
            Gossip::Vote(_) => 2,
            Gossip::Announce(_) => 3,
        }
    }

    fn write(&self, w: &mut Writer) {
        match self {
            Gossip::Commit(c) => {
                w.u64(c.round);
                w.peer(&c.node);
                w.raw(&c.base);
                w.raw(&c.update);
                w.u64(c.samples);
                w.f64(c.loss);
                w.bytes(&c.sig);
            }
            Gossip::Vote(v) => {
                w.u64(v.round);
                w.peer(&v.node);
                w.u32(v.held.len() as u32);
                for (p, h) in &v.held {
                    w.peer(p);
                    w.raw(h);
                }
                w.bytes(&v.sig);
            }
            Gossip::Announce(a) => {
                w.u64(a.round);
                w.peer(&a.node);
                w.raw(&a.state);
                w.bytes(&a.sig);
            }
        }
    }

    fn read(kind: u8, r: &mut Reader<'_>) -> Result<Self> {
        Ok(match kind {
            1 => {
                let round = r.u64("round")?;
                let node = r.peer("committer")?;
                let base = r.array("base state id")?;
                let update = r.array("update hash")?;
                let samples = r.u64("samples")?;
                let loss = r.f64("loss")?;
                let sig = r.bytes(MAX_SIG, "signature")?.to_vec();
                Gossip::Commit(Commit { round, node, base, update, samples, loss, sig })
            }
            2 => {
                let round = r.u64("round")?;
                let node = r.peer("voter")?;
                let n = r.u32("vote length")? as usize;
                if n > MAX_VOTERS {
                    return Err(ProtoError::TooLarge { what: "vote".into(), size: n, cap: MAX_VOTERS });
                }
                // Each entry is at least a 4-byte length, a 2-byte peer id and a hash.
                if !r.fits(n, 4 + 2 + 32) {
                    return Err(ProtoError::Malformed(format!("a vote of {n} entries is cut short")));
                }
                let mut held = Vec::with_capacity(n);
                for _ in 0..n {
                    held.push((r.peer("voted author")?, r.array("voted hash")?));
                }
                if held.windows(2).any(|w| w[0].0.as_bytes() >= w[1].0.as_bytes()) {
                    return Err(ProtoError::Malformed("a vote's authors are not strictly sorted".into()));
                }
                let sig = r.bytes(MAX_SIG, "signature")?.to_vec();
                Gossip::Vote(Vote { round, node, held, sig })
            }
            3 => {
                let round = r.u64("round")?;
                let node = r.peer("announcer")?;
                let state = r.array("state id")?;
                let sig = r.bytes(MAX_SIG, "signature")?.to_vec();
                Gossip::Announce(Announce { round, node, state, sig })
            }
            k => return Err(ProtoError::Malformed(format!("unknown training gossip kind {k}"))),
        })
    }
}

/// A pseudo-gradient as it travels: blockwise int8 (an f16 scale per [`int8::BLOCK`] values,
/// the engine's quantizer), dense or at a sorted set of coordinates (top-k).
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    /// Values in the dense vector.
    pub len: u32,
    /// The coordinates kept, strictly ascending; `None` for a dense update.
    pub idx: Option<Vec<u32>>,
    /// f16 bits of each block's scale; every one finite.
    pub scales: Vec<u16>,
    /// One code per value kept.
    pub codes: Vec<i8>,
}

impl Update {
    /// Quantize `values` (dense, or the values at `idx`) into an update of a `len`-vector.
    pub fn quantize(len: usize, idx: Option<Vec<u32>>, values: &[f32]) -> Self {
        let mut codes = vec![0i8; values.len()];
        let scales = values
            .chunks(int8::BLOCK)
            .zip(codes.chunks_mut(int8::BLOCK))
            .map(|(x, q)| int8::quantize_block(x, q).to_bits())
            .collect();
        Self { len: len as u32, idx, scales, codes }
    }

    /// Check the shape: counts agree, indices ascend inside the vector, scales are finite.
    pub fn check(&self) -> Result<()> {
        let len = self.len as usize;
        if len > MAX_PARAMS {
            return Err(ProtoError::TooLarge { what: "update".into(), size: len, cap: MAX_PARAMS });
        }
        let kept = match &self.idx {
            None => len,
            Some(idx) => {
                if idx.windows(2).any(|w| w[0] >= w[1]) || idx.last().is_some_and(|&i| i as usize >= len) {
                    return Err(ProtoError::Malformed(
                        "an update's coordinates are not strictly ascending inside the vector".into(),
                    ));
                }
                idx.len()
            }
        };
        if self.codes.len() != kept || self.scales.len() != kept.div_ceil(int8::BLOCK) {
            return Err(ProtoError::Malformed(format!(
                "an update of {kept} values has {} codes and {} scales",
                self.codes.len(),
                self.scales.len()
            )));
        }
        if let Some(bad) = self.scales.iter().find(|&&s| !half::f16::from_bits(s).is_finite()) {
            return Err(ProtoError::Malformed(format!("an update has a non-finite scale (f16 bits {bad:#06x})")));
        }
        Ok(())
    }

    /// The dense vector it stands for.
    pub fn decode(&self) -> Result<Vec<f32>> {
        self.check()?;
        let kept: Vec<f32> = self
            .codes
            .chunks(int8::BLOCK)
            .zip(&self.scales)
            .flat_map(|(q, &s)| {
                let d = half::f16::from_bits(s).to_f32();
                q.iter().map(move |&c| int8::dequantize(c, d))
            })
            .collect();
        Ok(match &self.idx {
            None => kept,
            Some(idx) => {
                let mut dense = vec![0.0; self.len as usize];
                for (&i, v) in idx.iter().zip(kept) {
                    dense[i as usize] = v;
                }
                dense
            }
        })
    }

    /// Its bytes: the thing a [`Commit`] hashes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.write(&mut w);
        w.into_bytes()
    }

    /// Read one from bytes that hold exactly it.
    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        let mut r = Reader::new(b);
        let u = Self::read(&mut r)?;
        r.end()?;
        Ok(u)
    }

    /// blake3 of its bytes.
    pub fn hash(&self) -> [u8; 32] {
        *blake3::hash(&self.to_bytes()).as_bytes()
    }

    fn write(&self, w: &mut Writer) {
        w.u32(self.len);
        match &self.idx {
            None => w.u8(0),
            Some(idx) => {
                w.u8(1);
                w.u32(idx.len() as u32);
                idx.iter().for_each(|&i| w.u32(i));
            }
        }
        self.scales.iter().for_each(|&s| w.u16(s));
        w.raw(&self.codes.iter().map(|&c| c as u8).collect::<Vec<u8>>());
    }

    fn read(r: &mut Reader<'_>) -> Result<Self> {
        let len = r.u32("update length")?;
        if len as usize > MAX_PARAMS {
            return Err(ProtoError::TooLarge { what: "update".into(), size: len as usize, cap: MAX_PARAMS });
        }
        let idx = match r.u8("update layout")? {
            0 => None,
            1 => {
                let k = r.u32("kept coordinates")? as usize;
                if k > len as usize {
                    return Err(ProtoError::Malformed(format!("an update keeps {k} of {len} coordinates")));
                }
                let raw = r.take(k * 4, "coordinates")?;
                Some(raw.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
            }
            l => return Err(ProtoError::Malformed(format!("unknown update layout {l}"))),
        };
        let kept = idx.as_ref().map_or(len as usize, |i: &Vec<u32>| i.len());
        let n_scales = kept.div_ceil(int8::BLOCK);
        let raw = r.take(n_scales * 2, "scales")?;
        let scales = raw.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        let codes = r.take(kept, "codes")?.iter().map(|&b| b as i8).collect();
        let u = Self { len, idx, scales, codes };
        u.check()?;
        Ok(u)
    }
}

/// The table of contents of a weights-and-momentum blob: f32 LE weights, then f32 LE outer
/// momentum, cut into chunks that are fetched from any peer and checked one by one.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// The round this state starts.
    pub round: u64,
    /// Values in the weights (the momentum has as many).
    pub params: u64,
    /// Bytes per chunk (the last may be shorter).
    pub chunk_size: u32,
    /// blake3 of each chunk.
    pub chunks: Vec<[u8; 32]>,
}

impl Manifest {
    /// Build the manifest of `blob` cut into `chunk_size`-byte chunks.
    pub fn of(round: u64, params: u64, chunk_size: usize, blob: &[u8]) -> Self {
        let chunks = blob.chunks(chunk_size.max(1)).map(|c| *blake3::hash(c).as_bytes()).collect();
        Self { round, params, chunk_size: chunk_size as u32, chunks }
    }

    /// The id announcements name: blake3 of its bytes.
    pub fn id(&self) -> [u8; 32] {
        let mut w = Writer::new();
        self.write(&mut w);
        *blake3::hash(&w.into_bytes()).as_bytes()
    }

    /// Check that the chunks cover exactly the blob the counts imply.
    pub fn check(&self) -> Result<()> {
        let params = self.params as usize;
        if params > MAX_PARAMS {
            return Err(ProtoError::TooLarge { what: "weights".into(), size: params, cap: MAX_PARAMS });
        }
        let size = self.chunk_size as usize;
        if size == 0 || size > MAX_CHUNK {
            return Err(ProtoError::Malformed(format!("a chunk size of {size} bytes is outside 1..={MAX_CHUNK}")));
        }
        let want = (params * 8).div_ceil(size);
        if self.chunks.len() != want {
            return Err(ProtoError::Malformed(format!(
                "{} chunks of {size} bytes cannot hold {params} weights and their momentum ({want} needed)",
                self.chunks.len()
            )));
        }
        Ok(())
    }

    /// Bytes in chunk `i`.
    pub fn chunk_len(&self, i: usize) -> usize {
        let total = self.params as usize * 8;
        let size = self.chunk_size as usize;
        total.saturating_sub(i * size).min(size)
    }

    fn write(&self, w: &mut Writer) {
        w.u64(self.round);
        w.u64(self.params);
        w.u32(self.chunk_size);
        w.u32(self.chunks.len() as u32);
        self.chunks.iter().for_each(|h| w.raw(h));
    }

    fn read(r: &mut Reader<'_>) -> Result<Self> {
        let round = r.u64("round")?;
        let params = r.u64("params")?;
        let chunk_size = r.u32("chunk size")?;
        let n = r.u32("chunk count")? as usize;
        if n > MAX_CHUNKS {
            return Err(ProtoError::TooLarge { what: "manifest".into(), size: n, cap: MAX_CHUNKS });
        }
        let raw = r.take(n * 32, "chunk hashes")?;
        let chunks = raw.chunks_exact(32).map(|c| c.try_into().unwrap_or([0; 32])).collect();
        let m = Self { round, params, chunk_size, chunks };
        m.check()?;
        Ok(m)
    }
}

/// Asked on a training stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// The update with this hash (any holder may serve it: it is named by content).
    Update {
        /// The round it belongs to.
        round: u64,
        /// blake3 of its bytes.
        hash: [u8; 32],
    },
    /// The manifest with this id.
    Manifest {
        /// [`Manifest::id`].
        id: [u8; 32],
    },
    /// One chunk of the blob a manifest lists.
    Chunk {
        /// The manifest's id.
        id: [u8; 32],
        /// The chunk's index.
        index: u32,
    },
}

/// Answered on a training stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    /// The update asked for.
    Update(Update),
    /// The manifest asked for.
    Manifest(Manifest),
    /// The chunk asked for.
    Chunk(Vec<u8>),
    /// This node does not hold it (any more); ask another.
    Missing(String),
}

impl Message for Request {
    type Service = Training;

    fn kind(&self) -> u8 {
        match self {
            Request::Update { .. } => 1,
            Request::Manifest { .. } => 2,
            Request::Chunk { .. } => 3,
        }
    }

    fn write(&self, w: &mut Writer) {
        match self {
            Request::Update { round, hash } => {
                w.u64(*round);
                w.raw(hash);
            }
            Request::Manifest { id } => w.raw(id),
            Request::Chunk { id, index } => {
                w.raw(id);
                w.u32(*index);
            }
        }
    }

    fn read(kind: u8, r: &mut Reader<'_>) -> Result<Self> {
        Ok(match kind {
            1 => Request::Update { round: r.u64("round")?, hash: r.array("update hash")? },
            2 => Request::Manifest { id: r.array("manifest id")? },
            3 => Request::Chunk { id: r.array("manifest id")?, index: r.u32("chunk index")? },
            k => return Err(ProtoError::Malformed(format!("unknown training request kind {k}"))),
        })
    }
}

impl Message for Response {
    type Service = Training;

    fn kind(&self) -> u8 {
        match self {
            Response::Update(_) => 1,
            Response::Manifest(_) => 2,
            Response::Chunk(_) => 3,
            Response::Missing(_) => 4,
        }
    }

    fn write(&self, w: &mut Writer) {
        match self {
            Response::Update(u) => u.write(w),
            Response::Manifest(m) => m.write(w),
            Response::Chunk(b) => w.bytes(b),
            Response::Missing(why) => w.message(why),
        }
    }

    fn read(kind: u8, r: &mut Reader<'_>) -> Result<Self> {
        Ok(match kind {
            1 => Response::Update(Update::read(r)?),
            2 => Response::Manifest(Manifest::read(r)?),
            3 => Response::Chunk(r.bytes(MAX_CHUNK, "chunk")?.to_vec()),
            4 => Response::Missing(r.message("reason")?),
            k => return Err(ProtoError::Malformed(format!("unknown training response kind {k}"))),
        })
    }
}

/// The envelope header of a training message of `kind` for `run` (tests build bad ones on it).
pub fn training_header(run: &ModelId, kind: u8) -> Writer {
    header::<Training>(run, kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Envelope;
    use proptest::prelude::*;

    fn peer(b: u8) -> PeerBytes {
        let mut v = vec![0x00, 36, 0x08, 0x01, 0x12, 0x20];
        v.extend_from_slice(&[b; 32]);
        PeerBytes::new(&v).unwrap()
    }

    const RUN: ModelId = ModelId([9; 32]);

    fn roundtrip<M: Message + PartialEq + std::fmt::Debug + Clone>(m: M) {
        let bytes = Envelope { model: RUN, msg: m.clone() }.to_bytes();
        assert_eq!(Envelope::<M>::from_bytes(&bytes).unwrap().msg, m);
        for cut in 0..bytes.len() {
            assert!(Envelope::<M>::from_bytes(&bytes[..cut]).is_err(), "a message cut at {cut} parsed");
        }
    }

    #[test]
    fn every_gossip_request_and_response_round_trips_and_refuses_truncation() {
        roundtrip(Gossip::Commit(Commit {
            round: 3,
            node: peer(1),
            base: [6; 32],
            update: [4; 32],
            samples: 64,
            loss: 1.25,
            sig: vec![5; 64],
        }));
        roundtrip(Gossip::Vote(Vote {
            round: 3,
            node: peer(1),
            held: vec![(peer(1), [1; 32]), (peer(2), [2; 32])],
            sig: vec![],
        }));
        roundtrip(Gossip::Announce(Announce { round: 4, node: peer(2), state: [7; 32], sig: vec![1; 64] }));
        roundtrip(Request::Update { round: 1, hash: [3; 32] });
        roundtrip(Request::Manifest { id: [3; 32] });
        roundtrip(Request::Chunk { id: [3; 32], index: 9 });
        roundtrip(Response::Update(Update::quantize(40, None, &[0.5; 40])));
        roundtrip(Response::Update(Update::quantize(40, Some(vec![1, 7, 39]), &[0.5, -1.0, 2.0])));
        roundtrip(Response::Manifest(Manifest::of(2, 10, 32, &[0u8; 80])));
        roundtrip(Response::Chunk(vec![1, 2, 3]));
        roundtrip(Response::Missing("gone".into()));
    }

    #[test]
    fn the_signature_covers_run_round_and_kind_but_not_itself() {
        let c = Gossip::Commit(Commit {
            round: 3,
            node: peer(1),
            base: [6; 32],
            update: [4; 32],
            samples: 1,
            loss: 0.5,
            sig: vec![],
        });
        let mut signed = c.clone();
        signed.set_sig(vec![8; 64]);
        assert_eq!(c.signing_bytes(&RUN), signed.signing_bytes(&RUN));
        assert_ne!(c.signing_bytes(&RUN), c.signing_bytes(&ModelId([8; 32])));
        let mut later = c.clone();
        if let Gossip::Commit(x) = &mut later {
            x.round = 4;
        }
        assert_ne!(c.signing_bytes(&RUN), later.signing_bytes(&RUN));
    }

    #[test]
    fn bad_updates_are_refused_with_a_reason() {
        let mut u = Update::quantize(64, None, &[1.0; 64]);
        u.scales[1] = half::f16::NAN.to_bits();
        assert!(u.check().unwrap_err().to_string().contains("non-finite"));
        let mut u = Update::quantize(64, None, &[1.0; 64]);
        u.scales[0] = half::f16::INFINITY.to_bits();
        assert!(Update::from_bytes(&u.to_bytes()).is_err());
        let u = Update { len: 10, idx: Some(vec![3, 3]), scales: vec![0], codes: vec![1, 1] };
        assert!(u.check().unwrap_err().to_string().contains("ascending"));
        let u = Update { len: 10, idx: Some(vec![3, 10]), scales: vec![0], codes: vec![1, 1] };
        assert!(u.check().is_err());
        let u = Update { len: 64, idx: None, scales: vec![0], codes: vec![1; 64] };
        assert!(u.check().unwrap_err().to_string().contains("scales"));
        // An announced length over the cap is refused before anything is allocated.
        let mut w = Writer::new();
        w.u32(u32::MAX);
        w.u8(0);
        assert!(matches!(Update::from_bytes(&w.into_bytes()), Err(ProtoError::TooLarge { .. })));
        // A vote whose authors are out of order could name one author twice.
        let v = Gossip::Vote(Vote {
            round: 1,
            node: peer(1),
            held: vec![(peer(2), [0; 32]), (peer(1), [0; 32])],
            sig: vec![],
        });
        let b = Envelope { model: RUN, msg: v }.to_bytes();
        assert!(Envelope::<Gossip>::from_bytes(&b).unwrap_err().to_string().contains("sorted"));
    }

    #[test]
    fn a_manifest_must_cover_exactly_the_weights_and_momentum() {
        let m = Manifest::of(1, 10, 32, &[0u8; 80]);
        assert_eq!(m.chunks.len(), 3);
        assert_eq!((m.chunk_len(0), m.chunk_len(2), m.chunk_len(3)), (32, 16, 0));
        m.check().unwrap();
        let short = Manifest { chunks: m.chunks[..2].to_vec(), ..m.clone() };
        assert!(short.check().is_err());
        assert_ne!(m.id(), Manifest { round: 2, ..m.clone() }.id());
    }

    proptest! {
        #[test]
        fn updates_decode_within_half_a_step(values in prop::collection::vec(-50.0f32..50.0, 1..200), sparse in any::<bool>()) {
            let n = values.len();
            let (idx, kept): (Option<Vec<u32>>, Vec<f32>) = if sparse {
                let idx: Vec<u32> = (0..n as u32).step_by(3).collect();
                let kept = idx.iter().map(|&i| values[i as usize]).collect();
                (Some(idx), kept)
            } else {
                (None, values.clone())
            };
            let u = Update::quantize(n, idx.clone(), &kept);
            let back = Update::from_bytes(&u.to_bytes()).unwrap();
            prop_assert_eq!(&back, &u);
            let dense = back.decode().unwrap();
            prop_assert_eq!(dense.len(), n);
            for (b, block) in kept.chunks(int8::BLOCK).enumerate() {
                let step = half::f16::from_bits(u.scales[b]).to_f32();
                for (j, &x) in block.iter().enumerate() {
                    let i = b * int8::BLOCK + j;
                    let at = idx.as_ref().map_or(i, |idx| idx[i] as usize);
                    prop_assert!((dense[at] - x).abs() <= step * 0.5 + x.abs() * 1e-3, "{} vs {}", dense[at], x);
                }
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = Envelope::<Gossip>::from_bytes(&b);
            let _ = Envelope::<Request>::from_bytes(&b);
            let _ = Envelope::<Response>::from_bytes(&b);
            let _ = Update::from_bytes(&b);
        }
    }
}
