//! Server announcements (JSON from gossip or an `Info` answer): refused or accepted, never a
//! panic, and what is accepted passes the checks every reader relies on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use odin_net::ServerInfo;

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = ServerInfo::from_bytes(data) {
        assert!(info.start < info.end);
        assert!(info.ms_per_block.is_finite() && info.ms_per_block >= 0.0);
    }
});
