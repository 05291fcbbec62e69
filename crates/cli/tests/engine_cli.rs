//! `odin quantize` and `odin generate` on the int8 engine, as real processes
//! on the bundled model: the output is the same before and after
//! quantizing, for any thread count and any kernel.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn odin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_odin"))
}

fn bundled() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/odin-tiny")
}

fn ok(out: Output) -> Output {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn generate(dir: &Path, extra: &[&str], env: Option<(&str, &str)>) -> (String, String) {
    let mut cmd = odin();
    let seed = if extra.contains(&"--seed") { &[][..] } else { &["--seed", "3"][..] };
    cmd.args(["generate", "--prompt", "work: 4821+977=", "--temperature", "2"])
        .args(seed)
        .arg("--model")
        .arg(dir)
        .args(extra);
    if let Some((k, v)) = env {
        cmd.env(k, v);
    }
    let out = ok(cmd.output().unwrap());
    (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

#[test]
fn quantize_then_generate_gives_the_same_tokens_for_any_threads_and_kernel() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(bundled().join(f), dir.join(f)).unwrap();
    }
    let (before, stderr) = generate(dir, &[], None);
    assert!(stderr.contains("decode") && stderr.contains("tok/s"), "{stderr}");
    assert!(!before.trim().is_empty());

    let out = ok(odin().args(["quantize", "--model"]).arg(dir).output().unwrap());
    assert!(String::from_utf8_lossy(&out.stdout).contains("model.int8.safetensors"));
    assert!(dir.join("model.int8.safetensors").is_file());

    assert_eq!(generate(dir, &[], None).0, before, "after quantize");
    assert_eq!(generate(dir, &["--threads", "2"], None).0, before, "2 threads");
    assert_eq!(generate(dir, &[], Some(("ODIN_KERNEL", "scalar"))).0, before, "scalar kernel");
    let (other_seed, _) = generate(dir, &["--seed", "4"], None);
    assert_ne!(other_seed, before, "the seed must matter at temperature 2");
}

#[test]
fn engine_errors_are_clear() {
    let out = odin().args(["quantize", "--model", "/nonexistent/odin-model"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/odin-model") && !err.contains("panicked"), "{err}");
    let out = odin()
        .args(["generate", "--prompt", "1+1=", "--model"])
        .arg(bundled())
        .env("ODIN_KERNEL", "sse9")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown kernel"));
}
