//! A network that survives, as real `odin node` processes on loopback: servers killed with
//! SIGKILL in the middle of a generation change no token, and only the server at fault is blamed.
//!
//! `ODIN_KILL_RUNS=100 cargo test --release -p odin-cli --test failover -- --nocapture` runs the
//! full hundred kills (half on TCP, half on QUIC) and prints the recovery times (BENCHMARKS.md);
//! CI runs 20. Each node logs to `node.log` in its data directory: `ODIN_TEST_KEEP=1` keeps the
//! directories, and `ODIN_TEST_LOG` sets the filter (for example
//! `odin_node=debug,libp2p_stream=debug,warn`).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use odin_net::PeerId;
use odin_node::cluster::{ClusterConfig, Logs, Signal};
use odin_node::{GenerateRequest, LocalCluster, Node, Relay};

mod common;
use common::{bundled, generate, PROMPT};

/// One test at a time: each starts several node processes, and on a two-core machine five tests'
/// worth of them at once would turn scheduling delays into stalls the tests do not mean to test.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The one transport a test network runs on, so each test knows how a death shows: TCP resets
/// a killed peer's connections at once; QUIC hears nothing and times the connection out.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Transport {
    Tcp,
    Quic,
}

impl Transport {
    fn listen(self) -> &'static str {
        match self {
            Transport::Tcp => "/ip4/127.0.0.1/tcp/0",
            Transport::Quic => "/ip4/127.0.0.1/udp/0/quic-v1",
        }
    }
}

/// A network of `odin node` processes on `t`, each announcing every 0.5 s, with its data
/// directory under `dir`.
fn cluster(t: Transport, dir: &Path) -> LocalCluster {
    let mut cfg = ClusterConfig::processes(Path::new(env!("CARGO_BIN_EXE_odin")), &bundled(), dir);
    cfg.listen = vec![t.listen().parse().unwrap()];
    cfg.announce = Duration::from_millis(500);
    // Each node's log stays in its data directory, for a failing test to show (see `logs`).
    cfg.logs = Logs::File(log_filter());
    // Its own process group, so a server frozen with SIGSTOP is not killed by the SIGHUP of an
    // orphaned group, turning a freeze into a death (see `ClusterConfig::own_group`).
    cfg.own_group = true;
    LocalCluster::new(cfg)
}

/// Member `i`'s peer id.
fn peer(net: &LocalCluster, i: usize) -> PeerId {
    net.members()[i].peer
}

/// What the nodes and the client log: `ODIN_TEST_LOG` (an `ODIN_LOG` filter) when set.
fn log_filter() -> String {
    std::env::var("ODIN_TEST_LOG").unwrap_or_else(|_| "odin_node=debug,warn".into())
}

/// A scratch directory for a test's nodes; `ODIN_TEST_KEEP=1` keeps it (and the nodes' logs).
fn scratch() -> tempfile::TempDir {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(log_filter()))
        .with_test_writer()
        .try_init();
    let keep = std::env::var_os("ODIN_TEST_KEEP").is_some();
    let t = tempfile::Builder::new().prefix("odin-failover-").disable_cleanup(keep).tempdir().unwrap();
    eprintln!("scratch: {}", t.path().display());
    t
}

/// An in-process client (it serves nothing) joined to `net`, once it has a route through every
/// server of `net`; it forgets servers whose announcements stop after 1.5 s, like the test nodes
/// announcing every 0.5 s.
async fn client(t: Transport, net: &LocalCluster, dir: &Path) -> Arc<Node> {
    let mut cfg = net.client_config(dir);
    cfg.net.listen = vec![t.listen().parse().unwrap()];
    cfg.announce_every = Duration::from_millis(500);
    net.join(cfg, Duration::from_secs(60)).await.unwrap()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The failovers of `g`: exactly one, blamed on `guilty`, and at `client` no other server has
/// been blamed for anything (an innocent server is never put on backoff).
async fn blamed_only(client: &Node, g: &odin_node::Generation, guilty: PeerId, what: &str) {
    let guilty = guilty.to_string();
    let guilty = guilty.as_str();
    assert_eq!(g.failovers, 1, "{what}: {:?}", g.failures);
    assert!(g.failures[0].starts_with(guilty), "{what}: blamed {:?}, not {guilty}", g.failures);
    let status = client.status().await;
    let wronged: Vec<_> = status.servers.iter().filter(|s| s.peer != guilty && s.failures > 0).collect();
    assert!(wronged.is_empty(), "{what}: innocent servers blamed: {wronged:?} ({:?})", g.failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_server_mid_generation_changes_no_token() {
    let _one_at_a_time = SERIAL.lock().await;
    let runs: usize = std::env::var("ODIN_KILL_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    // Half the kills on each transport: TCP resets a killed peer's connections at once, QUIC
    // notices only when its keep-alives go unanswered.
    kill_runs(Transport::Tcp, runs.div_ceil(2)).await;
    kill_runs(Transport::Quic, runs / 2).await;
}

/// `runs` generations over `t`, each killing (SIGKILL) the last hop in use after a different
/// number of tokens; the hop before it is healthy and must not be blamed.
async fn kill_runs(t: Transport, runs: usize) {
    let tmp = scratch();
    let mut net = cluster(t, tmp.path());
    net.launch("first", "0..2", &[]).unwrap();
    // Two servers can take the last blocks; the one in use is killed each run and replaced.
    let mut pool: Vec<usize> =
        ["2..4", "1..4"].iter().enumerate().map(|(i, b)| net.launch(&format!("s{i}"), b, &[]).unwrap()).collect();
    let client = client(t, &net, &tmp.path().join("client")).await;
    let greedy = odin_format::Sampling::default();
    let sampled = odin_format::Sampling { temperature: 0.9, top_k: 30, top_p: 1.0, seed: 11 };
    let want_greedy: Vec<u32> = serde_json::from_value(generate(&["--max-tokens", "48"])["ids"].clone()).unwrap();
    let want_sampled: Vec<u32> = serde_json::from_value(
        generate(&["--max-tokens", "48", "--temperature", "0.9", "--top-k", "30", "--seed", "11"])["ids"].clone(),
    )
    .unwrap();
    assert!(want_greedy.len() > 20 && want_sampled.len() > 20, "the answers are long enough to kill in");

    // Fault-free speed first, on the same network, for the churn comparison.
    let (mut calm_tokens, mut calm_s) = (0usize, 0.0f64);
    for sampling in [greedy, sampled] {
        let req = GenerateRequest { sampling, ..greedy_request() };
        let started = Instant::now();
        let g = client.generate(&req, |_| true).await.unwrap();
        calm_s += started.elapsed().as_secs_f64();
        calm_tokens += g.tokens.len();
        assert_eq!(g.failovers, 0, "{t:?}: {:?}", g.failures);
    }

    let mut recoveries = Vec::new();
    let (mut churn_tokens, mut churn_s) = (0usize, 0.0f64);
    for run in 0..runs {
        let what = format!("{t:?} run {run}");
        let (sampling, want) = if run % 2 == 0 { (greedy, &want_greedy) } else { (sampled, &want_sampled) };
        // Kill at a different token each run, from the first to well into the answer.
        let kill_at = 1 + (run * 7) % 20;
        let req = GenerateRequest { sampling, ..greedy_request() };
        let mut streamed = Vec::new();
        let mut killed: Option<(usize, Instant)> = None;
        let mut recovery = None;
        let started = Instant::now();
        let g = client
            .generate(&req, |tok| {
                streamed.push(tok);
                if let (Some((_, at)), None) = (&killed, recovery) {
                    recovery = Some(at.elapsed());
                }
                if streamed.len() == kill_at {
                    let last = client.route_in_use().unwrap().last().unwrap().peer;
                    let i = pool.iter().position(|&n| peer(&net, n) == last).expect("the last hop is a pool server");
                    let dead = pool.remove(i);
                    net.kill(dead).unwrap();
                    killed = Some((dead, Instant::now()));
                }
                true
            })
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}\n{}", logs(tmp.path())));
        churn_s += started.elapsed().as_secs_f64();
        churn_tokens += g.tokens.len();
        let (dead, _) = killed.unwrap_or_else(|| panic!("{what}: the generation ended before the kill"));
        assert_eq!(&g.tokens, want, "{what} (kill after {kill_at} tokens)");
        assert_eq!(g.tokens, streamed, "{what}: every token streamed once");
        let dead_peer = peer(&net, dead);
        blamed_only(&client, &g, dead_peer, &what).await;
        // Found by the transport (its own stream ending, or the hop before it reporting it), not
        // by waiting out the client's stall deadline.
        assert!(!g.failures[0].contains("within the deadline"), "{what}: {:?}", g.failures);
        assert!(g.route.iter().all(|h| h.hop.peer != dead_peer), "{what}");
        let ms = recovery.expect("a token came after the kill").as_secs_f64() * 1e3;
        recoveries.push(ms);
        // A fresh process takes the dead one's blocks, so the next run again has two to choose from.
        let blocks = net.members()[dead].blocks.clone();
        let fresh = net.launch(&format!("r{run}"), &blocks, &[]).unwrap();
        client.wait_for_server(&peer(&net, fresh), Duration::from_secs(60)).await.unwrap();
        pool.push(fresh);
    }
    if runs == 0 {
        return;
    }
    let max = recoveries.iter().cloned().fold(0.0, f64::max);
    let (calm, churn) = (calm_tokens as f64 / calm_s, churn_tokens as f64 / churn_s);
    eprintln!(
        "{t:?}: {runs} of {runs} generations survived a SIGKILL with identical tokens, each blaming only the \
         killed server; recovery (kill to next token) median {:.0} ms, max {max:.0} ms; {churn:.0} tok/s with a \
         kill in every generation vs {calm:.0} tok/s without ({:.2}x)",
        median(&mut recoveries),
        churn / calm
    );
}

/// Every node log under `dir`, for a failure message.
fn logs(dir: &Path) -> String {
    let mut out = String::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if let Ok(text) = std::fs::read_to_string(e.path().join("node.log")) {
            out += &format!("--- {} ---\n{text}", e.path().display());
        }
    }
    out
}

/// The bundled model's prompt as token ids.
fn prompt_ids() -> Vec<u32> {
    let tk = odin_text::load_tokenizer(&bundled()).unwrap();
    odin_text::prompt_ids(&tk, PROMPT).unwrap()
}

fn greedy_request() -> GenerateRequest {
    GenerateRequest {
        prompt: prompt_ids(),
        max_new: 48,
        sampling: odin_format::Sampling::default(),
        wire: odin_proto::Dtype::Q8,
        stop: Some(1),
        relay: Relay::Chain,
    }
}

fn reference() -> Vec<u32> {
    serde_json::from_value(generate(&["--max-tokens", "48"])["ids"].clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_sends_garbage_is_dropped_and_the_answer_is_unchanged() {
    let _one_at_a_time = SERIAL.lock().await;
    let tmp = scratch();
    let t = Transport::Tcp;
    let mut net = cluster(t, tmp.path());
    net.launch("first", "0..2", &[]).unwrap();
    let garbage = net.launch("garbage", "2..4", &["--garbage-after", "5"]).unwrap();
    let client = client(t, &net, &tmp.path().join("client")).await;
    // The only server of 2..4 turns to garbage after five steps; a good one joins meanwhile.
    let mut good = None;
    let g = client
        .generate(&greedy_request(), |_| {
            if good.is_none() {
                good = Some(net.launch("good", "2..4", &[]).unwrap());
            }
            true
        })
        .await
        .unwrap();
    assert_eq!(g.tokens, reference());
    blamed_only(&client, &g, peer(&net, garbage), "garbage").await;
    assert!(g.failures[0].contains("protocol"), "{:?}", g.failures);
    let good = good.unwrap();
    assert_eq!(g.route.last().unwrap().hop.peer, peer(&net, good));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_learns_that_a_server_is_slow_and_routes_around_it() {
    let _one_at_a_time = SERIAL.lock().await;
    let tmp = scratch();
    let t = Transport::Tcp;
    let mut net = cluster(t, tmp.path());
    net.launch("first", "0..2", &[]).unwrap();
    // It announces the speed it measured at start, then waits 30 ms before every step.
    let slow = net.launch("slow", "2..4", &["--delay-ms", "30"]).unwrap();
    let slow = peer(&net, slow);
    let client = client(t, &net, &tmp.path().join("client")).await;
    let mut req = greedy_request();
    req.max_new = 8;
    let g = client.generate(&req, |_| true).await.unwrap();
    assert_eq!(g.route.last().unwrap().hop.peer, slow, "the only server of 2..4");
    assert_eq!(g.failovers, 0, "slow is not failed: {:?}", g.failures);
    let fast = net.launch("fast", "2..4", &[]).unwrap();
    let fast = peer(&net, fast);
    client.wait_for_server(&fast, Duration::from_secs(60)).await.unwrap();
    let status = client.status().await;
    let learned = status.servers.iter().find(|s| s.peer == slow.to_string()).unwrap().observed_ms_per_block.unwrap();
    assert!(learned >= 10.0, "30 ms per step over 2 blocks was measured as {learned} ms per block");
    for _ in 0..3 {
        let g = client.generate(&req, |_| true).await.unwrap();
        assert_eq!(g.route.last().unwrap().hop.peer, fast, "the slow server is avoided");
        assert_eq!(g.failovers, 0, "avoided, not failed: {:?}", g.failures);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_on_a_server_hands_its_sessions_over_without_replay() {
    let _one_at_a_time = SERIAL.lock().await;
    let tmp = scratch();
    let (g, leaving, mut net, client) = signal_the_last_hop_mid_generation(Signal::Interrupt, tmp.path()).await;
    assert_eq!(g.tokens, reference());
    assert_eq!((g.handoffs, g.failovers), (1, 0), "{:?}", g.failures);
    let blamed: Vec<_> = client.status().await.servers.into_iter().filter(|s| s.failures > 0).collect();
    assert!(blamed.is_empty(), "a handoff blames no one: {blamed:?}");
    assert!(g.route.iter().all(|h| h.hop.peer != peer(&net, leaving)));
    // Its sessions gone, it exits on its own, cleanly.
    let status = net.wait(leaving).unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_nodes_cover_the_model_and_re_cover_it_when_one_dies() {
    let _one_at_a_time = SERIAL.lock().await;
    let tmp = scratch();
    let t = Transport::Tcp;
    let auto = ["--max-blocks", "2", "--rebalance-secs", "0.5"];
    let mut net = cluster(t, tmp.path());
    // One after another, as a user would start them: each looks at the network first.
    let nodes: Vec<usize> = ["a", "b", "c"].iter().map(|name| net.launch(name, "auto", &auto).unwrap()).collect();
    let client = client(t, &net, &tmp.path().join("client")).await;
    let status = client.status().await;
    assert_eq!(status.coverage.iter().min(), Some(&1), "every block covered: {:?}", status.coverage);
    let blocks = |p: PeerId| status.servers.iter().find(|s| s.peer == p.to_string()).unwrap().blocks;
    let ranges: Vec<_> = nodes.iter().map(|&n| blocks(peer(&net, n))).collect();
    assert!(ranges.iter().all(|r| r[1] - r[0] == 2), "--max-blocks 2: {ranges:?}");
    assert_eq!(client.generate(&greedy_request(), |_| true).await.unwrap().tokens, reference());

    // Kill the sole server of some blocks; the others re-cover them by moving.
    let dead = nodes
        .into_iter()
        .find(|&n| {
            let r = blocks(peer(&net, n));
            (r[0]..r[1]).any(|blk| status.coverage[blk as usize] == 1)
        })
        .unwrap();
    net.kill(dead).unwrap();
    let killed = Instant::now();
    let dead_peer = peer(&net, dead);
    // The stated bound (README): a dead server's announcements expire after three announce
    // intervals, and a survivor moves at its next rebalancing check; 20 s leaves CI room.
    client.router().wait_for_route_avoiding(1, &[dead_peer], Duration::from_secs(20)).await.unwrap();
    let recovered = killed.elapsed();
    eprintln!("blocks re-covered {:.0} ms after the kill", recovered.as_secs_f64() * 1e3);
    let g = client.generate(&greedy_request(), |_| true).await.unwrap();
    assert_eq!(g.tokens, reference());
    assert!(g.route.iter().all(|h| h.hop.peer != dead_peer));
    // Whatever the generation met on the way, only the dead server is blamed for it.
    assert!(g.failures.iter().all(|f| f.starts_with(&dead_peer.to_string())), "{:?}", g.failures);
    let blamed =
        client.status().await.servers.into_iter().filter(|s| s.peer != dead_peer.to_string() && s.failures > 0);
    assert_eq!(blamed.count(), 0, "a survivor was blamed: {:?}", g.failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stops_answering_is_left_at_the_stall_deadline() {
    let _one_at_a_time = SERIAL.lock().await;
    let tmp = scratch();
    // SIGSTOP: the process and its connections stay up, but it answers nothing.
    let (g, frozen, net, client) = signal_the_last_hop_mid_generation(Signal::Stop, tmp.path()).await;
    let frozen = peer(&net, frozen);
    assert_eq!(g.tokens, reference());
    blamed_only(&client, &g, frozen, "-STOP").await;
    assert!(g.failures[0].contains("deadline"), "{:?}", g.failures);
    assert!(g.route.iter().all(|h| h.hop.peer != frozen));
}

/// A server of 0..2 and two of 2..4, on TCP; a greedy generation during which the 2..4 server
/// in use gets `signal` after five tokens. Returns the generation, that server, the network
/// (alive until dropped) and the client.
async fn signal_the_last_hop_mid_generation(
    signal: Signal,
    tmp: &Path,
) -> (odin_node::Generation, usize, LocalCluster, Arc<Node>) {
    signal_mid_generation(Transport::Tcp, signal, tmp, &["0..2"], "2..4").await
}

/// Servers of `fixed` (the first is the genesis node) and two of `pooled`, which is the second hop
/// of the route, on `t`; a greedy generation during which the `pooled` server in use gets
/// `signal` after five tokens. Returns the generation, that server, the network (alive until
/// dropped) and the client.
async fn signal_mid_generation(
    t: Transport,
    signal: Signal,
    tmp: &Path,
    fixed: &[&str],
    pooled: &str,
) -> (odin_node::Generation, usize, LocalCluster, Arc<Node>) {
    let mut net = cluster(t, tmp);
    net.launch("first", fixed[0], &[]).unwrap();
    for (i, b) in fixed[1..].iter().enumerate() {
        net.launch(&format!("f{i}"), b, &[]).unwrap();
    }
    let mut pool: Vec<usize> = (0..2).map(|i| net.launch(&format!("s{i}"), pooled, &[]).unwrap()).collect();
    let client = client(t, &net, &tmp.join("client")).await;
    let mut streamed = 0;
    let mut signalled = None;
    let g = client
        .generate(&greedy_request(), |_| {
            streamed += 1;
            if streamed == 5 {
                let route = client.route_in_use().unwrap();
                assert_eq!(route.len(), fixed.len() + 1, "{route:?}");
                let target = route[1].peer;
                let n = pool.remove(pool.iter().position(|&n| peer(&net, n) == target).unwrap());
                net.signal(n, signal).unwrap();
                signalled = Some(n);
            }
            true
        })
        .await
        .unwrap_or_else(|e| panic!("{signal:?}: {e}\n{}", logs(tmp)));
    (g, signalled.expect("the generation ended before the signal"), net, client)
}

/// A chain of three hops whose servers push to each other: the middle hop, in use, gets `signal`
/// after five tokens. A killed middle hop is reported by the hop before it (its link dropped:
/// at once on TCP, at the keep-alive bound on QUIC) or by the client's own stream; a frozen one
/// is found by probing the chain hop by hop. Only the middle hop is ever blamed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_routes_around_a_middle_hop_that_dies_or_freezes() {
    let _one_at_a_time = SERIAL.lock().await;
    for (t, signal) in [(Transport::Tcp, Signal::Kill), (Transport::Quic, Signal::Kill), (Transport::Tcp, Signal::Stop)]
    {
        let what = format!("{t:?} {signal:?}");
        let tmp = scratch();
        let (g, hit, net, client) = signal_mid_generation(t, signal, tmp.path(), &["0..1", "3..4"], "1..3").await;
        let hit = peer(&net, hit);
        assert_eq!(g.tokens, reference(), "{what}");
        blamed_only(&client, &g, hit, &what).await;
        // A death is the transport's to find; only a freeze waits out the stall deadline.
        assert_eq!(g.failures[0].contains("within the deadline"), signal == Signal::Stop, "{what}: {:?}", g.failures);
        assert!(g.route.iter().all(|h| h.hop.peer != hit), "{what}");
        assert_eq!(g.relay, Relay::Chain, "{what}: the new route pushes too");
    }
}

/// One request on a raw shard-protocol stream, and its answer.
async fn call(
    s: &mut odin_net::Stream,
    model: odin_format::ModelId,
    msg: odin_proto::infer::Request,
) -> odin_proto::infer::Response {
    use odin_proto::{read_frame, write_frame, MAX_FRAME};
    write_frame(s, &odin_proto::Envelope { model, msg }.to_bytes()).await.unwrap();
    let frame = read_frame(s, MAX_FRAME).await.unwrap();
    odin_proto::Envelope::<odin_proto::infer::Response>::from_bytes(&frame).unwrap().msg
}

/// The server before a dead hop, seen on the protocol: it names the dead hop to its client unasked,
/// within the transport's bound (TCP: the reset; QUIC: the keep-alive idle timeout), and keeps
/// answering that client's probes and pushes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hop_whose_next_hop_dies_names_it_and_keeps_answering() {
    use odin_proto::infer::{Request, Response, StepInput};
    use odin_proto::Envelope;
    use odin_proto::{read_frame, write_frame, MAX_FRAME};
    let _one_at_a_time = SERIAL.lock().await;
    // The bounds, with room for a busy machine's scheduling: a TCP peer's kernel resets its
    // connections as it dies; a QUIC peer is given up QUIC_IDLE after the last keep-alive.
    let quic = odin_net::swarm::QUIC_IDLE + odin_net::swarm::QUIC_KEEP_ALIVE;
    let slack = Duration::from_millis(500);
    for (t, bound) in [(Transport::Tcp, slack), (Transport::Quic, quic + slack)] {
        let tmp = scratch();
        let mut net = cluster(t, tmp.path());
        let first = net.launch("first", "0..2", &[]).unwrap();
        let next = net.launch("next", "2..4", &[]).unwrap();
        let client = client(t, &net, &tmp.path().join("client")).await;
        let (model, session) = (client.model(), 7);
        let (f_peer, n_peer) = (peer(&net, first), peer(&net, next));
        let n_wire = odin_net::peer_to_wire(&n_peer).unwrap();
        let mut to_first = client.net().open_stream(f_peer).await.unwrap();
        let mut to_next = client.net().open_stream(n_peer).await.unwrap();
        let open = |start, end| Request::Open {
            session,
            start,
            end,
            sampling: odin_format::Sampling::default(),
            drawn: 0,
            reply: odin_proto::Dtype::Q8,
        };
        assert_eq!(call(&mut to_first, model, open(0, 2)).await, Response::Opened { session });
        assert_eq!(call(&mut to_next, model, open(2, 4)).await, Response::Opened { session });
        assert_eq!(
            call(&mut to_first, model, Request::Link { session, next: n_wire.clone() }).await,
            Response::Linked { session }
        );
        // One step down the chain: the token comes from the next hop.
        let push = Envelope {
            model,
            msg: Request::Push { session, input: StepInput::Tokens(prompt_ids()), hops: vec![], claims: vec![] },
        };
        write_frame(&mut to_first, &push.to_bytes()).await.unwrap();
        let token = Envelope::<Response>::from_bytes(&read_frame(&mut to_next, MAX_FRAME).await.unwrap()).unwrap().msg;
        assert!(matches!(token, Response::Pushed { .. }), "{t:?}: {token:?}");

        net.kill(next).unwrap();
        let killed = Instant::now();
        // Unasked: nothing is pushed after the kill.
        let frame = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut to_first, MAX_FRAME))
            .await
            .unwrap_or_else(|_| panic!("{t:?}: no word of the dead next hop in 10 s\n{}", logs(tmp.path())))
            .unwrap();
        let after = killed.elapsed();
        match Envelope::<Response>::from_bytes(&frame).unwrap().msg {
            Response::NextHopDown { session: s, next: named, reason } => {
                assert_eq!((s, &named), (session, &n_wire), "{t:?}: {reason}");
                eprintln!(
                    "{t:?}: the hop before a SIGKILLed server named it {:.0} ms after the kill ({reason})",
                    after.as_secs_f64() * 1e3
                );
            }
            other => panic!("{t:?}: expected NextHopDown, got {other:?}"),
        }
        assert!(after < bound, "{t:?}: reported {after:?} after the kill, past the {bound:?} bound");
        // It still answers: its step is done, and a push now is refused at once, naming the same hop.
        let progress = call(&mut to_first, model, Request::Probe { session }).await;
        assert_eq!(progress, Response::Progress { steps: 1, running: false }, "{t:?}");
        let again = Envelope {
            model,
            msg: Request::Push { session, input: StepInput::Tokens(vec![5]), hops: vec![], claims: vec![] },
        };
        write_frame(&mut to_first, &again.to_bytes()).await.unwrap();
        let r = Envelope::<Response>::from_bytes(&read_frame(&mut to_first, MAX_FRAME).await.unwrap()).unwrap().msg;
        assert!(matches!(&r, Response::NextHopDown { next, .. } if *next == n_wire), "{t:?}: {r:?}");
    }
}
