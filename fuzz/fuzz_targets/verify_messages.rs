//! The verification service's fraud proofs (gossip from any peer): refused or accepted, never a
//! panic, and what is accepted is what its checks promise.
#![no_main]

use libfuzzer_sys::fuzz_target;
use odin_proto::infer::StepInput;
use odin_proto::verify::Gossip;
use odin_proto::{Dtype, Envelope};

fuzz_target!(|data: &[u8]| {
    if let Ok(Envelope { msg: Gossip::Proof(p), .. }) = Envelope::<Gossip>::from_bytes(data) {
        assert!(p.claim.start < p.claim.end);
        // A proof's state is exact and finite: the thing a verifier recomputes from.
        assert_eq!(p.before.dtype, Dtype::F32);
        assert!(p.before.decode().expect("an accepted state decodes").iter().all(|v| v.is_finite()));
        if let StepInput::Tokens(t) = &p.input {
            assert!(!t.is_empty());
        }
    }
});
