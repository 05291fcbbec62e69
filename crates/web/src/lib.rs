//! wasm32 exports of the int8 engine. The crate also carries the text layer
//! (`odin-text`) and the protocol (`odin-proto`), which the chat page will use.
//!
//! Plain C-ABI functions, so any WebAssembly host (a browser, node,
//! wasmtime) can call them without generated glue. `golden` recomputes the
//! engine's golden hash in wasm arithmetic; the engine's tests run it under
//! node and compare it with the native value.
//!
//! Build: `cargo build -p odin-web --release --target wasm32-unknown-unknown`
//! (for the simd128 kernel, `RUSTFLAGS='-C target-feature=+simd128 --cfg getrandom_backend="custom"'`:
//! RUSTFLAGS replaces the cfg that .cargo/config.toml sets).
//!
//! Imports: `odin.entropy(ptr, len)` must fill `len` random bytes at `ptr`
//! (`crypto.getRandomValues` in a page), used only to seed hash maps.

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

/// getrandom's custom backend for wasm32: random bytes come from the host's
/// `odin.entropy` import, so the module needs no generated JavaScript glue.
#[cfg(target_arch = "wasm32")]
mod entropy {
    #[link(wasm_import_module = "odin")]
    extern "C" {
        fn entropy(dest: *mut u8, len: usize);
    }

    /// Called by getrandom when built with `--cfg getrandom_backend="custom"`.
    ///
    /// # Safety
    /// getrandom passes `len` writable bytes at `dest`.
    #[no_mangle]
    unsafe extern "Rust" fn __getrandom_v03_custom(dest: *mut u8, len: usize) -> Result<(), getrandom::Error> {
        // SAFETY: the host writes exactly `len` bytes at `dest`, which getrandom owns.
        unsafe { entropy(dest, len) };
        Ok(())
    }
}
