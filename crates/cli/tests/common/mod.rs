//! Helpers shared by the tests that run `odin` on the bundled model.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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
