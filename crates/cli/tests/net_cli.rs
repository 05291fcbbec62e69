//! The network as real processes: `odin swarm` starts node processes on loopback and must
//! answer exactly as `odin generate` does on one machine; `--serve` speaks to the official
//! `openai` Python client.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod common;
use common::{bundled, odin, ok};

fn json(out: Output) -> serde_json::Value {
    let s = String::from_utf8(ok(out).stdout).unwrap();
    serde_json::from_str(s.lines().last().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}: {s}"))
}

const PROMPT: &str = "Solve for x: 6x - 5 = -10x + 59";

fn generate(extra: &[&str]) -> serde_json::Value {
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

/// An `odin node` process and what it printed when ready.
struct NodeProc {
    child: std::process::Child,
    peer: String,
    addrs: Vec<String>,
}

fn node_proc(blocks: &str, boot: &[String], dir: &Path) -> NodeProc {
    let mut cmd = odin();
    cmd.args(["node", "--blocks", blocks, "--no-upnp", "--announce-secs", "0.5"])
        .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--listen", "/ip4/127.0.0.1/udp/0/quic-v1"])
        .arg("--model")
        .arg(bundled())
        .arg("--data-dir")
        .arg(dir);
    for b in boot {
        cmd.args(["--bootstrap", b]);
    }
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    let addrs = v["addrs"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect();
    NodeProc { child, peer: v["peer"].as_str().unwrap().to_string(), addrs }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_server_mid_generation_changes_no_token() {
    use odin_node::{GenerateRequest, Node, NodeConfig};
    let tmp = tempfile::tempdir().unwrap();
    let first = node_proc("0..2", &[], &tmp.path().join("a"));
    let boot: Vec<String> = first.addrs.iter().filter(|a| a.contains("/tcp/")).cloned().collect();
    let mut rest: Vec<NodeProc> = ["2..4", "2..4", "1..4"]
        .iter()
        .enumerate()
        .map(|(i, b)| node_proc(b, &boot, &tmp.path().join(i.to_string())))
        .collect();
    let mut cfg = NodeConfig::loopback(&bundled(), None, &tmp.path().join("client"));
    cfg.net.bootstrap = boot.iter().map(|a| a.parse().unwrap()).collect();
    let client = Node::start(cfg).await.unwrap();
    client.wait_for_route(4, std::time::Duration::from_secs(60)).await.unwrap();
    let tk = odin_train::generate::load_tokenizer(&bundled()).unwrap();
    let prompt = odin_train::data::prompt_ids(&tk, PROMPT).unwrap();

    for (k, (extra, sampling)) in [
        (&["--max-tokens", "48"][..], odin_net::Sampling::default()),
        (
            &["--max-tokens", "48", "--temperature", "0.9", "--top-k", "30", "--seed", "11"][..],
            odin_net::Sampling { temperature: 0.9, top_k: 30, top_p: 1.0, seed: 11 },
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let want = generate(extra)["ids"].clone();
        let req =
            GenerateRequest { prompt: prompt.clone(), max_new: 48, sampling, wire: odin_net::Dtype::Q8, stop: Some(1) };
        let mut streamed = Vec::new();
        let mut killed = None;
        let g = client
            .generate(&req, |t| {
                streamed.push(t);
                if streamed.len() == 3 + k {
                    // Kill -9 the last server of the route being used, between two tokens.
                    let last = client.route().unwrap().last().unwrap().peer.to_string();
                    let i = rest
                        .iter()
                        .position(|n| n.peer == last)
                        .expect("the last hop is one of the 2..4 / 1..4 servers");
                    let mut dead = rest.remove(i);
                    dead.child.kill().unwrap();
                    dead.child.wait().unwrap();
                    killed = Some(last);
                }
                true
            })
            .await
            .unwrap();
        assert!(killed.is_some(), "the generation ended before the kill");
        assert_eq!(serde_json::json!(g.tokens), want, "run {k}");
        assert_eq!(g.tokens, streamed, "every token streamed once");
        assert_eq!(g.failovers, 1);
        assert!(g.route.iter().all(|h| Some(h.hop.peer.to_string()) != killed));
    }
    for mut n in rest.into_iter().chain([first]) {
        let _ = n.child.kill();
        let _ = n.child.wait();
    }
}
