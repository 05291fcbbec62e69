//! The envelope every message travels in, and the [`Service`] abstraction that gives each
//! service its own protocol id, version and message set.
//!
//! A frame's payload is: the service's protocol version (`u16` LE), the model id (32 bytes),
//! the message kind (one byte), then the message's fields. A message for other weights or
//! another version is thereby refused by name, before its fields are read.

use odin_format::ModelId;

use crate::codec::{Reader, Writer};
use crate::error::{ProtoError, Result};

/// One service of the network: its own stream protocol, version and pair of message sets.
///
/// A new service (training rounds, verification, the ledger) is one module of this crate:
/// a unit struct implementing `Service`, and its `Request` and `Response` enums implementing
/// [`Message`]. Framing, caps, the tensor codec and the envelope come with it.
pub trait Service {
    /// A short name for people and logs ("inference").
    const NAME: &'static str;
    /// The libp2p stream protocol id its streams are opened with ("/odin/…").
    const PROTOCOL_ID: &'static str;
    /// The version every envelope of this service carries; peers with another are refused.
    const VERSION: u16;
    /// What a client sends.
    type Request: Message<Service = Self>;
    /// What a server answers.
    type Response: Message<Service = Self>;
}

/// A message set of one [`Service`]: each message is a kind byte and its fields.
pub trait Message: Sized {
    /// The service whose version the envelope carries.
    type Service: Service;
    /// The kind byte that names this message on the wire.
    fn kind(&self) -> u8;
    /// Write the message's fields (after the envelope and the kind byte).
    fn write(&self, w: &mut Writer);
    /// Read the fields of a message of `kind`; every length is checked against a cap first.
    fn read(kind: u8, r: &mut Reader<'_>) -> Result<Self>;
}

/// A message with the envelope every frame carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope<M> {
    /// The model the message is about.
    pub model: ModelId,
    /// The message.
    pub msg: M,
}

impl<M: Message> Envelope<M> {
    /// Encode as a frame payload.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = header::<M::Service>(&self.model, self.msg.kind());
        self.msg.write(&mut w);
        w.into_bytes()
    }

    /// Decode a frame payload. Never panics; says what was wrong.
    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        let mut r = Reader::new(b);
        let ours = M::Service::VERSION;
        let theirs = r.u16("protocol version")?;
        if theirs != ours {
            return Err(ProtoError::Version { ours, theirs });
        }
        let model = ModelId(r.array("model id")?);
        let kind = r.u8("message kind")?;
        let msg = M::read(kind, &mut r)?;
        r.end()?;
        Ok(Self { model, msg })
    }
}

/// A writer holding the envelope of a `kind` message of service `S`: what
/// [`Envelope::to_bytes`] starts with (tests build malformed messages on it).
pub fn header<S: Service>(model: &ModelId, kind: u8) -> Writer {
    let mut w = Writer::new();
    w.u16(S::VERSION);
    w.raw(&model.0);
    w.u8(kind);
    w
}
