//! Helpers shared by the tests that run `odin` on the bundled model.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The prompt the network tests answer.
#[allow(dead_code)]
pub const PROMPT: &str = "Solve for x: 6x - 5 = -10x + 59";

/// The `odin` binary under test.
pub fn odin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_odin"))
}

/// The bundled model directory.
pub fn bundled() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/odin-tiny")
}

/// `out`, after asserting that the process succeeded (its stderr is the failure message).
pub fn ok(out: Output) -> Output {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// The last line of a successful run's stdout, as JSON.
#[allow(dead_code)]
pub fn json(out: Output) -> serde_json::Value {
    let s = String::from_utf8(ok(out).stdout).unwrap();
    serde_json::from_str(s.lines().last().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}: {s}"))
}

/// `odin generate --json` on the bundled model with [`PROMPT`] and `extra` flags: the single-machine answer.
#[allow(dead_code)]
pub fn generate(extra: &[&str]) -> serde_json::Value {
    json(
        odin()
            .args(["generate", "--json", "--quiet", "--prompt", PROMPT])
            .arg("--model")
            .arg(bundled())
            .args(extra)
            .output()
            .unwrap(),
    )
}
