//! The `odin model` subcommands, run as a real process.

use std::path::PathBuf;
use std::process::Command;

fn odin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_odin"))
}

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join(path)
}

#[test]
fn model_info_reports_odin_100m_counts_as_json() {
    let out =
        odin().args(["model", "info", "--json", "--config"]).arg(repo("configs/odin-100m.json")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let non_emb = v["params"]["non_embedding"].as_u64().unwrap();
    assert!((95_000_000..=105_000_000).contains(&non_emb), "{non_emb}");
    let total = v["params"]["total"].as_u64().unwrap();
    assert_eq!(total, non_emb + 2 * 32768 * 768 + 2 * 768);
    assert_eq!(v["architecture"], "rwkv6");
    let blocks = v["params"]["block_bytes_int8"].as_array().unwrap();
    assert_eq!(blocks.len(), 12);
}

#[test]
fn model_init_then_id_and_info_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    let out = odin()
        .args(["model", "init", "--seed", "3", "--config"])
        .arg(repo("configs/rwkv6-tiny.json"))
        .arg("--out")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(id.len(), 64);
    let out = odin().args(["model", "id"]).arg(&dir).output().unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), id);
    let out = odin().args(["model", "info", "--json", "--model"]).arg(&dir).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["id"], id.as_str());
    // A second init refuses to overwrite without --force.
    let out = odin()
        .args(["model", "init", "--config"])
        .arg(repo("configs/rwkv6-tiny.json"))
        .arg("--out")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
}

#[test]
fn bad_input_gets_a_clear_error_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let out = odin().args(["model", "info", "--config"]).arg(tmp.path().join("missing.json")).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing.json") && !err.contains("panicked"), "{err}");
    let bad = tmp.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"architecture":"rwkv6","vocab_size":10,"hidden_size":30,"num_layers":1,"head_size":7,"ffn_size":4}"#,
    )
    .unwrap();
    let out = odin().args(["model", "info", "--config"]).arg(&bad).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a multiple of head_size"), "{err}");
}

#[test]
fn every_bundled_model_has_its_recorded_id_and_solves_problems_it_was_scored_on() {
    // 4821 + 79 = 4900, written least-significant digit first.
    let rev_add = [("rev work: 1284+97=", "0094")];
    // Held-out test problems each model answered correctly in its evaluation (greedy is deterministic).
    let cases: [(&str, &[(&str, &str)]); 5] = [
        (
            "models/odin-tiny",
            &[
                ("Solve for x: 6x - 5 = -10x + 59", "x = 4"),
                ("rev work: 6966917082+9033082917=", "50000000001"),
                ("# trace\ndef f(xs):\n    acc = 0\n    for x in xs:\n        acc = acc + 1\n    return acc\nprint(f([27, 2, -19]))", "3"),
            ],
        ),
        (
            "models/odin-tiny-base",
            &[("Solve for x: 6x - 5 = -10x + 59", "x = 4"), ("work: 831163096+168836905=", "1000000001")],
        ),
        ("models/odin-tiny-rev", &rev_add),
        ("models/odin-tiny-rev2", &rev_add),
        ("models/odin-tiny-rev3", &rev_add),
    ];
    for (name, problems) in cases {
        let dir = repo(name);
        let out = odin().args(["model", "id"]).arg(&dir).output().unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let eval: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("eval.json")).unwrap()).unwrap();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap().trim(),
            eval["test"]["model_id"].as_str().unwrap(),
            "{name}: the weights are not the ones evaluated"
        );
        for (prompt, answer) in problems {
            let out = odin().args(["generate", "--prompt", prompt, "--model"]).arg(&dir).output().unwrap();
            assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
            let text = String::from_utf8(out.stdout).unwrap();
            assert_eq!(text.trim_end().lines().last(), Some(*answer), "{name}: {prompt} -> {text}");
        }
    }
}
