//! The network as real processes: `odin swarm` starts node processes on loopback and must
//! answer exactly as `odin generate` does on one machine; `--serve` speaks to the official
//! `openai` Python client.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod common;
use common::{bundled, generate, json, odin, ok, PROMPT};

fn swarm(extra: &[&str]) -> serde_json::Value {
    json(
        odin()
            .args(["swarm", "--json", "--nodes", "3", "--prompt", PROMPT])
            .arg("--model")
            .arg(bundled())
            .args(extra)
            .output()
            .unwrap(),
    )
}

#[test]
fn three_node_processes_answer_token_for_token_like_one_machine() {
    let sampled = ["--temperature", "0.9", "--top-k", "30", "--seed", "11", "--max-tokens", "48"];
    for (extra, wire) in [(&[][..], "int8"), (&sampled[..], "f32"), (&sampled[..], "int8")] {
        let want = generate(extra);
        let got = swarm(&[extra, &["--wire", wire]].concat());
        assert_eq!(got["ids"], want["ids"], "wire {wire} {extra:?}");
        assert_eq!(got["text"], want["text"]);
        let route = got["route"].as_array().unwrap();
        assert_eq!(route.len(), 3);
        let peers: std::collections::HashSet<_> = route.iter().map(|h| h["peer"].as_str().unwrap()).collect();
        assert_eq!(peers.len(), 3, "three distinct node processes");
        assert_eq!(route.iter().map(|h| h["start"].as_u64().unwrap()).collect::<Vec<_>>(), vec![0, 2, 3]);
    }
    assert!(generate(&[])["text"].as_str().unwrap().contains("x = 4"));
}

/// The Python that has the `openai` package: `ODIN_PYTHON`, the repository's `.venv`, or `python3`.
fn python_with_openai() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python3");
    let candidates: Vec<PathBuf> = std::env::var_os("ODIN_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain([venv, PathBuf::from("python3")])
        .collect();
    for p in &candidates {
        let has = Command::new(p).args(["-c", "import openai"]).output().map(|o| o.status.success()).unwrap_or(false);
        if has {
            return p.clone();
        }
    }
    panic!(
        "no Python with the `openai` package; install it with `python3 -m venv .venv && .venv/bin/pip install openai` \
         (see README), or point ODIN_PYTHON at one (tried {candidates:?})"
    );
}

#[test]
fn the_api_serves_the_official_openai_client_and_ctrl_c_stops_every_node() {
    let python = python_with_openai();
    let mut child = odin()
        .args(["swarm", "--nodes", "2", "--serve", "--api", "127.0.0.1:0"])
        .arg("--model")
        .arg(bundled())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next().expect("the swarm printed nothing").unwrap();
    let url =
        line.split_whitespace().find(|w| w.starts_with("http://")).unwrap_or_else(|| panic!("{line}")).to_string();

    let out = ok(Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_client.py"))
        .args([&url, "odin-tiny", PROMPT])
        .output()
        .unwrap());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let want = generate(&["--max-tokens", "64"])["text"].as_str().unwrap().to_string();
    for k in ["completion", "chat_stream", "chat", "completion_stream"] {
        assert_eq!(v[k].as_str().unwrap(), want, "{k}: {v}");
    }
    assert!(v["chat_stream_chunks"].as_u64().unwrap() > 1, "the answer streamed in pieces: {v}");
    assert_eq!(v["completion_finish"], "stop");
    assert_eq!(v["models"], serde_json::json!(["odin-tiny"]));
    let e = &v["errors"];
    assert_eq!(e["unknown_model"], 404, "{v}");
    for k in ["bad_temperature", "no_messages", "zero_tokens"] {
        assert_eq!(e[k], 400, "{k}: {v}");
    }
    // The API's own node: healthy with a route, and its status shows every block covered once
    // (two servers of two blocks each), the servers it knows and its connected peers.
    let base = url.trim_end_matches('/').trim_end_matches("/v1");
    let get = |path: &str| -> serde_json::Value {
        ureq::get(format!("{base}{path}")).call().unwrap().body_mut().read_json().unwrap()
    };
    assert_eq!(get("/health")["status"], "ok");
    let status = get("/status");
    assert_eq!(status["coverage"], serde_json::json!([1, 1, 1, 1]), "{status}");
    assert_eq!(status["servers"].as_array().map(Vec::len), Some(2), "{status}");
    assert!(status["peers"].as_u64().is_some_and(|p| p >= 2), "{status}");
    assert!(status["sessions"].is_u64() && status["route"].is_array(), "{status}");

    // Ctrl-C: the swarm exits and takes its node processes with it.
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    let peers: Vec<&str> =
        err.lines().filter_map(|l| l.strip_prefix("node ")).filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(peers.len(), 2, "{err}");
    // Every process's command line, from /proc (no `ps` needed).
    let alive = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .any(|l| l.contains(" node --model") && l.contains(&format!("odin-swarm-{pid}")));
    assert!(!alive, "a node outlived the swarm");
}
