//! The NEON kernel (and the portable path) on AArch64 must reproduce the
//! x86-64 golden hash bit for bit: cross-built and run under qemu-aarch64.
//! Needs `rustup target add aarch64-unknown-linux-gnu` and Debian's
//! `gcc-aarch64-linux-gnu` and `qemu-user` (`.ci/run` installs them).

use std::path::Path;
use std::process::Command;

#[test]
fn aarch64_neon_reproduces_the_golden_hash() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target_dir = root.join("target/cross-aarch64");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "-p", "odin-engine", "--bin", "odin-golden", "--release"])
        .args(["--target", "aarch64-unknown-linux-gnu"])
        .current_dir(&root)
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER", "aarch64-linux-gnu-gcc")
        .env_remove("RUSTFLAGS")
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "cross-building for aarch64 failed (needs `rustup target add aarch64-unknown-linux-gnu` and \
         `apt-get install gcc-aarch64-linux-gnu`):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exe = target_dir.join("aarch64-unknown-linux-gnu/release/odin-golden");
    let out = Command::new("qemu-aarch64")
        .args(["-L", "/usr/aarch64-linux-gnu"])
        .arg(&exe)
        .output()
        .expect("qemu-aarch64 is installed (`apt-get install qemu-user`)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.iter().any(|l| l.starts_with("neon ")), "the NEON kernel did not run:\n{text}");
    assert_eq!(lines.len(), 6, "scalar and neon at 1, 2, 3 threads:\n{text}");
    for l in lines {
        assert!(l.ends_with(odin_engine::synthetic::GOLDEN_HASH), "{l}");
    }
}
