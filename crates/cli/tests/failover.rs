//! A network that survives, as real `odin node` processes on loopback: servers killed with
//! SIGKILL in the middle of a generation change no token.
//!
//! `ODIN_KILL_RUNS=100 cargo test --release -p odin-cli --test failover -- --nocapture` runs the
//! full hundred kills and prints the recovery times (BENCHMARKS.md); CI runs 20.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use odin_node::{GenerateRequest, Node, NodeConfig};

mod common;
use common::{bundled, generate, odin, PROMPT};

/// An `odin node` process and what it printed when ready; killed when dropped.
struct NodeProc {
    child: Child,
    peer: String,
    addrs: Vec<String>,
    blocks: String,
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn node_proc(blocks: &str, extra: &[&str], boot: &[String], dir: &Path) -> NodeProc {
    let mut cmd = odin();
    cmd.args(["node", "--blocks", blocks, "--no-upnp", "--announce-secs", "0.5"])
        .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--listen", "/ip4/127.0.0.1/udp/0/quic-v1"])
        .args(extra)
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
    NodeProc { child, peer: v["peer"].as_str().unwrap().to_string(), addrs, blocks: blocks.to_string() }
}

fn tcp_addrs(n: &NodeProc) -> Vec<String> {
    n.addrs.iter().filter(|a| a.contains("/tcp/")).cloned().collect()
}

async fn client(boot: &[String], dir: &Path) -> std::sync::Arc<Node> {
    let mut cfg = NodeConfig::loopback(&bundled(), None, dir);
    cfg.net.bootstrap = boot.iter().map(|a| a.parse().unwrap()).collect();
    Node::start(cfg).await.unwrap()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_server_mid_generation_changes_no_token() {
    let runs: usize = std::env::var("ODIN_KILL_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let tmp = tempfile::tempdir().unwrap();
    let first = node_proc("0..2", &[], &[], &tmp.path().join("first"));
    let boot = tcp_addrs(&first);
    // Two servers can take the last blocks; the one in use is killed each run and replaced.
    let mut pool: Vec<NodeProc> = ["2..4", "1..4"]
        .iter()
        .enumerate()
        .map(|(i, b)| node_proc(b, &[], &boot, &tmp.path().join(format!("s{i}"))))
        .collect();
    let client = client(&boot, &tmp.path().join("client")).await;
    client.wait_for_route(3, Duration::from_secs(60)).await.unwrap();
    let tk = odin_train::generate::load_tokenizer(&bundled()).unwrap();
    let prompt = odin_train::data::prompt_ids(&tk, PROMPT).unwrap();
    let greedy = odin_net::Sampling::default();
    let sampled = odin_net::Sampling { temperature: 0.9, top_k: 30, top_p: 1.0, seed: 11 };
    let want_greedy: Vec<u32> = serde_json::from_value(generate(&["--max-tokens", "48"])["ids"].clone()).unwrap();
    let want_sampled: Vec<u32> = serde_json::from_value(
        generate(&["--max-tokens", "48", "--temperature", "0.9", "--top-k", "30", "--seed", "11"])["ids"].clone(),
    )
    .unwrap();
    assert!(want_greedy.len() > 20 && want_sampled.len() > 20, "the answers are long enough to kill in");

    let mut recoveries = Vec::new();
    for run in 0..runs {
        let (sampling, want) = if run % 2 == 0 { (greedy, &want_greedy) } else { (sampled, &want_sampled) };
        // Kill at a different token each run, from the first to well into the answer.
        let kill_at = 1 + (run * 7) % 20;
        let req =
            GenerateRequest { prompt: prompt.clone(), max_new: 48, sampling, wire: odin_net::Dtype::Q8, stop: Some(1) };
        let mut streamed = Vec::new();
        let mut killed: Option<(NodeProc, Instant)> = None;
        let mut recovery = None;
        let g = client
            .generate(&req, |t| {
                streamed.push(t);
                if let (Some((_, at)), None) = (&killed, recovery) {
                    recovery = Some(at.elapsed());
                }
                if streamed.len() == kill_at {
                    let last = client.route_in_use().unwrap().last().unwrap().peer.to_string();
                    let i = pool.iter().position(|n| n.peer == last).expect("the last hop is a pool server");
                    let mut dead = pool.remove(i);
                    dead.child.kill().unwrap();
                    dead.child.wait().unwrap();
                    killed = Some((dead, Instant::now()));
                }
                true
            })
            .await
            .unwrap_or_else(|e| panic!("run {run}: {e}"));
        let (dead, _) = killed.unwrap_or_else(|| panic!("run {run}: the generation ended before the kill"));
        assert_eq!(&g.tokens, want, "run {run} (kill after {kill_at} tokens)");
        assert_eq!(g.tokens, streamed, "run {run}: every token streamed once");
        assert_eq!(g.failovers, 1, "run {run}: {:?}", g.failures);
        assert!(g.route.iter().all(|h| h.hop.peer.to_string() != dead.peer), "run {run}");
        recoveries.push(recovery.expect("a token came after the kill").as_secs_f64() * 1e3);
        // A fresh process takes the dead one's blocks, so the next run again has two to choose from.
        let fresh = node_proc(&dead.blocks, &[], &boot, &tmp.path().join(format!("r{run}")));
        client.wait_for_server(&fresh.peer.parse().unwrap(), Duration::from_secs(60)).await.unwrap();
        pool.push(fresh);
    }
    let max = recoveries.iter().cloned().fold(0.0, f64::max);
    eprintln!(
        "{runs} of {runs} generations survived a SIGKILL with identical tokens; recovery (kill to next token) \
         median {:.0} ms, max {max:.0} ms",
        median(&mut recoveries)
    );
}
