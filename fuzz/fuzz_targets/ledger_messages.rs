//! The ledger's bytes from any peer (entries in a range answer, gossiped heads, requests):
//! refused or accepted, never a panic, and what is accepted re-encodes to the same bytes (an
//! entry's id and signature are over its exact bytes, so two encodings of one entry would be
//! two entries).
#![no_main]

use libfuzzer_sys::fuzz_target;
use odin_proto::ledger::{Entry, Heads, Request, Response, Signed};
use odin_proto::Envelope;

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = Entry::from_bytes(data) {
        assert_eq!(e.to_bytes(), data);
    }
    if let Ok(s) = Signed::from_bytes(data) {
        assert_eq!(s.to_bytes(), data);
        let _ = s.entry();
    }
    if let Ok(h) = Heads::from_bytes(data) {
        assert_eq!(h.to_bytes(), data);
    }
    let _ = Envelope::<Request>::from_bytes(data);
    if let Ok(Envelope { msg: Response::Entries(es), .. }) = Envelope::<Response>::from_bytes(data) {
        for e in es {
            let _ = e.entry();
        }
    }
});
