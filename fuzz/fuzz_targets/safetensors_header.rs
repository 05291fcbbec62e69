//! The safetensors header parser reads bytes from model files that may come
//! from anyone: it must reject, never panic or over-allocate.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let data_len = u64::from_le_bytes(data[..8].try_into().unwrap_or([0; 8]));
    if let Ok((tensors, _)) = odin_engine::weights::parse_header(&data[8..], data_len) {
        for t in tensors.values() {
            assert!(t.start <= t.end && t.end <= data_len);
        }
    }
});
