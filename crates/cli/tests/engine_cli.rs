//! `odin quantize` and `odin generate` on the int8 engine, as real processes
//! on the bundled model: the output is the same before and after
//! quantizing, for any thread count and any kernel.

use std::path::Path;

mod common;
use common::{bundled, odin, ok};

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

#[test]
fn export_and_bench_run_on_the_bundled_model() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = tmp.path().join("m.gguf");
    let out = ok(odin().args(["export", "gguf", "--model"]).arg(bundled()).arg("--out").arg(&gguf).output().unwrap());
    assert!(String::from_utf8_lossy(&out.stdout).contains("gguf"));
    assert_eq!(&std::fs::read(&gguf).unwrap()[..4], b"GGUF");
    let st = tmp.path().join("m.st");
    ok(odin().args(["export", "st", "--model"]).arg(bundled()).arg("--out").arg(&st).output().unwrap());
    assert!(std::fs::metadata(&st).unwrap().len() > 1_000_000);

    let out = ok(odin()
        .args(["bench", "--threads", "1,2", "--runs", "1", "--prompt-tokens", "8", "--decode-tokens", "4", "--json"])
        .arg("--model")
        .arg(bundled())
        .output()
        .unwrap());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r["decode_tok_s"].as_f64().unwrap() > 0.0));
    assert!(v["roofline"][0]["bandwidth_gb_s"].as_f64().unwrap() > 0.0);
    assert!(v["weights_bytes_per_token"].as_u64().unwrap() > 1_000_000);
}

/// The Llama-style model runs on the int8 engine through the same commands: random llama-tiny
/// weights (MLP width 656, padded to 672 in the engine file), greedy tokens unchanged by
/// quantizing, threads and kernel; the RWKV-6-only exports refuse it clearly.
#[test]
fn a_llama_model_quantizes_generates_and_benches_on_the_int8_engine() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("llama");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/llama-tiny.json");
    ok(odin().args(["model", "init", "--seed", "1", "--config"]).arg(&config).arg("--out").arg(&dir).output().unwrap());
    std::fs::copy(bundled().join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    let greedy = |extra: &[&str], env: Option<(&str, &str)>| {
        let mut cmd = odin();
        cmd.args(["generate", "--json", "--quiet", "--max-tokens", "12", "--prompt", "work: 48+97=", "--model"])
            .arg(&dir)
            .args(extra);
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        common::json(cmd.output().unwrap())
    };
    let before = greedy(&[], None);
    assert_eq!(before["architecture"], "llama");
    let ids = before["ids"].clone();
    assert!(!ids.as_array().unwrap().is_empty(), "{before}");

    ok(odin().args(["quantize", "--model"]).arg(&dir).output().unwrap());
    assert_eq!(greedy(&[], None)["ids"], ids, "after quantize");
    assert_eq!(greedy(&["--threads", "2"], None)["ids"], ids, "2 threads");
    assert_eq!(greedy(&[], Some(("ODIN_KERNEL", "scalar")))["ids"], ids, "scalar kernel");

    let out = odin()
        .args(["export", "gguf", "--model"])
        .arg(&dir)
        .arg("--out")
        .arg(tmp.path().join("m.gguf"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("llama model") && err.contains("RWKV-6 models only"), "{err}");

    let out = ok(odin()
        .args(["bench", "--threads", "1", "--runs", "1", "--prompt-tokens", "8", "--decode-tokens", "4", "--json"])
        .arg("--model")
        .arg(&dir)
        .output()
        .unwrap());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["rows"][0]["decode_tok_s"].as_f64().unwrap() > 0.0, "{v}");
}
