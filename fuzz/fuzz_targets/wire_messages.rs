//! Every decoder of the wire protocol (`odin_proto`), on the same bytes: request and response
//! envelopes (with their tensors, states, peer ids, hop lists and texts), a bare tensor and a
//! bare session state, a peer id, and frame reading. Server announcements (JSON, in `odin_net`)
//! have their own target, `server_info`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use odin_proto::infer::{Request, Response};
use odin_proto::{read_frame, Envelope, PeerBytes, Reader, Writer};

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
    // A tensor of either dtype, and one that must be f32: what decodes is checked, decodes to
    // rows * cols values and encodes back to the bytes it was read from.
    let mut r = Reader::new(data);
    if let Ok(t) = r.tensor() {
        assert_eq!(t.decode().map(|v| v.len()).ok(), Some(t.rows * t.cols));
        let mut w = Writer::new();
        w.tensor(&t);
        assert_eq!(w.into_bytes(), data[..data.len() - r.remaining()]);
    }
    if let Ok(t) = Reader::new(data).f32_tensor("a session state") {
        assert_eq!(t.dtype, odin_proto::Dtype::F32);
    }
    if let Ok(p) = PeerBytes::new(data) {
        assert_eq!(p.as_bytes(), data);
        // odin_net promises that every id the protocol accepts converts to a libp2p PeerId.
        assert!(odin_net::peer_from_wire(&p).is_ok());
    }
    let _ = futures::executor::block_on(read_frame(&mut futures::io::Cursor::new(data), 1 << 16));
});
