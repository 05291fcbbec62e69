//! The engine compiled to wasm32, with and without simd128, must reproduce
//! the native golden hash bit for bit when run under node.

use std::path::Path;
use std::process::Command;

fn build_and_run(simd: bool) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target_dir = root.join(if simd { "target/wasm-simd" } else { "target/wasm-scalar" });
    // RUSTFLAGS replaces .cargo/config.toml's flags, so the getrandom cfg is repeated here.
    let getrandom = r#"--cfg getrandom_backend="custom""#;
    let flags = if simd { format!("-C target-feature=+simd128 {getrandom}") } else { getrandom.to_string() };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "-p", "odin-web", "--release", "--target", "wasm32-unknown-unknown"])
        .current_dir(&root)
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("RUSTFLAGS", flags)
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "building for wasm32 failed (install the target with `rustup target add wasm32-unknown-unknown`):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wasm = target_dir.join("wasm32-unknown-unknown/release/odin_web.wasm");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden.mjs");
    let out = Command::new("node").arg(&script).arg(&wasm).output().expect("node is installed (Node.js 18 or newer)");
    assert!(out.status.success(), "node failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn wasm_builds_reproduce_the_golden_hash() {
    let want = odin_engine::synthetic::GOLDEN_HASH;
    assert_eq!(odin_engine::synthetic::golden_hash(odin_engine::Options::default()).unwrap(), want);
    assert_eq!(build_and_run(true), format!("{want} simd128"));
    assert_eq!(build_and_run(false), format!("{want} scalar"));
}
