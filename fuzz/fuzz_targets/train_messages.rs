//! The training and pipeline services' messages (gossip from any peer of a run, stream answers from any
//! peer asked for an update or a chunk): refused or accepted, never a panic, and what is
//! accepted is what its checks promise.
#![no_main]

use libfuzzer_sys::fuzz_target;
use odin_proto::pipeline;
use odin_proto::train::{Gossip, Request, Response, Update};
use odin_proto::Envelope;

fuzz_target!(|data: &[u8]| {
    let _ = Envelope::<Gossip>::from_bytes(data);
    let _ = Envelope::<Request>::from_bytes(data);
    // The backward relay's messages, from a driver or a stage.
    let _ = Envelope::<pipeline::Request>::from_bytes(data);
    let _ = Envelope::<pipeline::Response>::from_bytes(data);
    if let Ok(Envelope { msg: a, .. }) = Envelope::<pipeline::Announce>::from_bytes(data) {
        assert!(a.start < a.end && a.addrs.len() <= pipeline::MAX_ADDRS);
    }
    if let Ok(Envelope { msg: Response::Manifest(m), .. }) = Envelope::<Response>::from_bytes(data) {
        assert!(m.check().is_ok());
    }
    if let Ok(u) = Update::from_bytes(data) {
        // Accepted updates decode to the length they claim, with finite values only.
        let dense = u.decode().expect("a checked update decodes");
        assert_eq!(dense.len(), u.len as usize);
        assert!(dense.iter().all(|v| v.is_finite()));
    }
});
