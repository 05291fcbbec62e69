//! Every decoder of bytes from the network: shard-protocol requests and
//! responses (with their tensors), server announcements, and frame reading.
#![no_main]

use libfuzzer_sys::fuzz_target;
use odin_net::wire::{read_frame, Envelope, Request, Response};
use odin_net::ServerInfo;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = Envelope::<Request>::from_bytes(data) {
        // What decodes must encode back to the same bytes.
        assert_eq!(env.to_bytes(), data);
    }
    if let Ok(env) = Envelope::<Response>::from_bytes(data) {
        if let Response::Hidden { tensor, .. } | Response::Handoff { state: tensor, .. } = &env.msg {
            assert!(tensor.decode().is_ok());
        }
    }
    let _ = ServerInfo::from_bytes(data);
    let _ = futures::executor::block_on(read_frame(&mut futures::io::Cursor::new(data), 1 << 16));
});
