//! wasm32 exports of the int8 engine.
//!
//! Plain C-ABI functions, so any WebAssembly host (a browser, node,
//! wasmtime) can call them without generated glue. `golden` recomputes the
//! engine's golden hash in wasm arithmetic; the engine's tests run it under
//! node and compare it with the native value.
//!
//! Build: `cargo build -p odin-web --release --target wasm32-unknown-unknown`
//! (add `RUSTFLAGS="-C target-feature=+simd128"` for the simd128 kernel).

#![warn(missing_docs)]

/// Write the golden hash (64 hex bytes) at `out`. Returns the length of the
/// kernel's name (written after the hash), or 0 on error.
///
/// # Safety
/// `out` must point to 96 writable bytes, e.g. from [`buffer`].
#[no_mangle]
pub unsafe extern "C" fn golden(out: *mut u8) -> u32 {
    let Ok(h) = odin_engine::synthetic::golden_hash(odin_engine::Options::default()) else { return 0 };
    let Ok(k) = odin_engine::Kernel::detect() else { return 0 };
    // SAFETY: the caller provides 96 bytes; the hash is 64 and kernel names are under 32.
    unsafe {
        std::ptr::copy_nonoverlapping(h.as_ptr(), out, 64);
        std::ptr::copy_nonoverlapping(k.name().as_ptr(), out.add(64), k.name().len());
    }
    k.name().len() as u32
}

/// A 96-byte buffer for [`golden`], owned by the module for its lifetime.
#[no_mangle]
pub extern "C" fn buffer() -> *mut u8 {
    Box::leak(Box::new([0u8; 96])).as_mut_ptr()
}
