//! Real nodes on loopback, in one process: discovery, routing, generation through a
//! chain equal to one machine's, bad input, and a 20-node network.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use odin_engine::{Options, Sampler, Shard};
use odin_format::Sampling;
use odin_node::cluster::{ClusterConfig, Join};
use odin_node::{split_blocks, GenerateRequest, LocalCluster, Node, NodeConfig, Relay};
use odin_proto::infer::{ErrorCode, Request, Response, StepInput};
use odin_proto::{read_frame, write_frame, MAX_FRAME};
use odin_proto::{Dtype, Envelope, Tensor};

fn tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/odin-tiny")
}

const PROMPT: [u32; 8] = [0, 3, 40, 41, 42, 43, 44, 4];

/// The same generation on one machine, with the engine alone.
fn local(max_new: usize, sampling: Sampling) -> Vec<u32> {
    local_until(max_new, sampling, Some(1))
}

/// [`local`], stopping before `stop` (or never).
fn local_until(max_new: usize, sampling: Sampling, stop: Option<u32>) -> Vec<u32> {
    let shard = Shard::load(&tiny(), None, Options::default()).unwrap();
    odin_engine::generate(&shard, &PROMPT, max_new, &mut Sampler::new(sampling), stop, |_| true).unwrap().0
}

/// A network of nodes in this process under `tmp`, announcing every 0.5 s; every node after
/// the first joins through it.
fn cluster(tmp: &Path) -> LocalCluster {
    let mut cfg = ClusterConfig::in_process(&tiny(), tmp);
    cfg.announce = Duration::from_millis(500);
    LocalCluster::new(cfg)
}

/// Start a node of `net` serving `blocks` (none: a client).
async fn start(net: &mut LocalCluster, blocks: Option<Range<usize>>) -> Arc<Node> {
    let i = net.launch_in_process(&format!("n{}", net.members().len()), blocks).await.unwrap();
    net.node(i).unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_three_generates_what_one_machine_does() {
    let tmp = tempfile::tempdir().unwrap();
    let mut net = cluster(tmp.path());
    let ranges = split_blocks(4, 3);
    let first = start(&mut net, Some(ranges[0].clone())).await;
    let _b = start(&mut net, Some(ranges[1].clone())).await;
    let _c = start(&mut net, Some(ranges[2].clone())).await;
    let client = start(&mut net, None).await;
    let route = client.wait_for_route(3, Duration::from_secs(30)).await.unwrap();
    assert_eq!(route.len(), 3, "{route:?}");
    // A client that serves nothing, and the first server generating itself (its own blocks are
    // a local first hop): with servers pushing along the chain, and with the client relaying.
    for (who, node) in [("client", &client), ("first server", &first)] {
        for relay in [Relay::Chain, Relay::Client] {
            for (wire, sampling) in [
                (Dtype::F32, Sampling::default()),
                (Dtype::F32, Sampling { temperature: 0.8, top_k: 20, top_p: 0.95, seed: 7 }),
                (Dtype::Q8, Sampling::default()),
            ] {
                let req =
                    GenerateRequest { prompt: PROMPT.to_vec(), max_new: 24, sampling, wire, stop: Some(1), relay };
                let mut streamed = Vec::new();
                let g = node
                    .generate(&req, |t| {
                        streamed.push(t);
                        true
                    })
                    .await
                    .unwrap();
                let want = local(24, sampling);
                let case = format!("{who}, relay {relay:?}, wire {wire:?}, sampling {sampling:?}");
                assert_eq!(g.tokens, streamed, "{case}");
                assert_eq!(g.tokens, want, "{case}");
                assert_eq!(g.relay, relay, "{case}");
                assert_eq!(g.route.len(), 3);
                assert!(g.route.iter().all(|h| h.steps as usize + 1 >= g.tokens.len()), "{case}");
                assert!(
                    g.route.iter().all(|h| h.mean_compute_us > 0.0 && h.mean_rtt_us >= h.mean_compute_us),
                    "{case}"
                );
            }
        }
    }
}

async fn call(stream: &mut odin_net::Stream, bytes: &[u8]) -> Response {
    write_frame(stream, bytes).await.unwrap();
    Envelope::<Response>::from_bytes(&read_frame(stream, MAX_FRAME).await.unwrap()).unwrap().msg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_the_server_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let mut net = cluster(tmp.path());
    let server = start(&mut net, Some(2..4)).await;
    let client = start(&mut net, None).await;
    let model = server.model();
    let mut s = client.net().open_stream(server.peer_id()).await.unwrap();
    let env = |msg: Request| Envelope { model, msg }.to_bytes();
    let err = |r: Response| match r {
        Response::Error { code, message } => (code, message),
        other => panic!("expected an error, got {other:?}"),
    };

    // Unknown session.
    let step = |session, v: &[f32]| Request::Step {
        session,
        input: StepInput::Hidden(Tensor::encode(v, 192, Dtype::F32).unwrap()),
    };
    let (code, _) = err(call(&mut s, &env(step(9, &[0.0; 192]))).await);
    assert_eq!(code, ErrorCode::UnknownSession);
    // Wrong model id.
    let wrong = Envelope { model: odin_format::ModelId([1; 32]), msg: Request::Info }.to_bytes();
    let (code, msg) = err(call(&mut s, &wrong).await);
    assert_eq!(code, ErrorCode::WrongModel, "{msg}");
    // Blocks it does not hold.
    let open = |session, start, end| Request::Open {
        session,
        start,
        end,
        sampling: Sampling::default(),
        drawn: 0,
        reply: Dtype::Q8,
    };
    let (code, _) = err(call(&mut s, &env(open(1, 0, 3))).await);
    assert_eq!(code, ErrorCode::BadBlocks);
    // Protocol version mismatch.
    let mut v = env(Request::Info);
    v[0] = 99;
    let (code, msg) = err(call(&mut s, &v).await);
    assert_eq!(code, ErrorCode::Version, "{msg}");
    // Truncated and garbage payloads.
    let good = env(step(1, &[0.5; 192]));
    let (code, _) = err(call(&mut s, &good[..good.len() - 3]).await);
    assert_eq!(code, ErrorCode::Malformed);
    // Non-finite values inside an otherwise well-formed tensor.
    assert!(matches!(call(&mut s, &env(open(1, 2, 4))).await, Response::Opened { session: 1 }));
    let mut nan = good.clone();
    let at = nan.len() - 4;
    nan[at..].copy_from_slice(&f32::NAN.to_le_bytes());
    let (code, msg) = err(call(&mut s, &nan).await);
    assert_eq!(code, ErrorCode::Malformed, "{msg}");
    // Wrong width.
    let (code, msg) = err(call(
        &mut s,
        &env(Request::Step {
            session: 1,
            input: StepInput::Hidden(Tensor::encode(&[0.5; 100], 100, Dtype::F32).unwrap()),
        }),
    )
    .await);
    assert_eq!(code, ErrorCode::BadInput, "{msg}");
    // After all that, the session still works on the same stream...
    assert!(matches!(call(&mut s, &good).await, Response::Token { .. }));
    // Pushes and probes: progress counts finished steps only; a push on an unknown session is
    // refused on the stream it came in on; a next hop that cannot be reached is the next hop's fault.
    let probe = env(Request::Probe { session: 1 });
    assert_eq!(call(&mut s, &probe).await, Response::Progress { steps: 1, running: false });
    let (code, _) = err(call(&mut s, &env(Request::Probe { session: 9 })).await);
    assert_eq!(code, ErrorCode::UnknownSession);
    let push = |session| {
        let input = StepInput::Hidden(Tensor::encode(&[0.5; 192], 192, Dtype::F32).unwrap());
        env(Request::Push { session, input, hops: Vec::new(), claims: Vec::new() })
    };
    let (code, _) = err(call(&mut s, &push(9)).await);
    assert_eq!(code, ErrorCode::UnknownSession);
    let nowhere = odin_net::PeerId::random();
    let link = Request::Link { session: 1, next: odin_net::peer_to_wire(&nowhere).unwrap() };
    let (code, msg) = err(call(&mut s, &env(link)).await);
    assert_eq!(code, ErrorCode::NextHop, "{msg}");
    assert!(msg.contains(&nowhere.to_string()), "{msg}");
    // This server holds the last blocks: a push ends here, and the token comes to the client's stream.
    match call(&mut s, &push(1)).await {
        Response::Pushed { hops, .. } => {
            assert_eq!(hops.len(), 1);
            assert!(hops[0].elapsed_us >= hops[0].compute_us && hops[0].compute_us > 0, "{hops:?}");
            assert_eq!(hops[0].bytes_in as usize, push(1).len());
        }
        other => panic!("expected the pushed token, got {other:?}"),
    }
    assert_eq!(call(&mut s, &probe).await, Response::Progress { steps: 2, running: false });
    // ...and an oversized frame is refused before it is read, then the stream is closed.
    futures::AsyncWriteExt::write_all(&mut s, &(u32::MAX).to_le_bytes()).await.unwrap();
    let r = Envelope::<Response>::from_bytes(&read_frame(&mut s, MAX_FRAME).await.unwrap()).unwrap().msg;
    assert!(matches!(r, Response::Error { code: ErrorCode::Malformed, .. }), "{r:?}");
    // Another stream is served as before.
    let mut s2 = client.net().open_stream(server.peer_id()).await.unwrap();
    assert!(matches!(call(&mut s2, &env(Request::Info)).await, Response::Info(_)));
    assert!(matches!(call(&mut s2, &good).await, Response::Token { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_nodes_each_find_a_full_route() {
    let tmp = tempfile::tempdir().unwrap();
    let mut net = cluster(tmp.path());
    let mut nodes = vec![start(&mut net, Some(0..1)).await];
    for i in 1..20 {
        let r = [0..1, 1..2, 2..3, 3..4, 0..2, 2..4, 1..4][i % 7].clone();
        nodes.push(start(&mut net, Some(r)).await);
    }
    for n in &nodes {
        let r = n.wait_for_route(1, Duration::from_secs(60)).await.unwrap();
        assert_eq!(r.first().map(|h| h.start), Some(0));
        assert_eq!(r.last().map(|h| h.end), Some(4));
        assert!(r.windows(2).all(|w| w[0].end == w[1].start));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_joined_over_quic_alone_generate() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = ClusterConfig::in_process(&tiny(), tmp.path());
    cfg.announce = Duration::from_millis(500);
    // Everyone joins through the first node's QUIC address alone.
    cfg.join = Join::Quic;
    let mut net = LocalCluster::new(cfg);
    let first = start(&mut net, Some(0..2)).await;
    assert_eq!(net.boot().len(), 1, "{:?}", first.net().addrs());
    assert!(net.boot()[0].to_string().contains("/quic-v1"));
    let _second = start(&mut net, Some(2..4)).await;
    let client = start(&mut net, None).await;
    client.wait_for_route(2, Duration::from_secs(30)).await.unwrap();
    let req = GenerateRequest {
        prompt: PROMPT.to_vec(),
        max_new: 8,
        sampling: Sampling::default(),
        wire: Dtype::Q8,
        stop: Some(1),
        relay: Relay::Chain,
    };
    let g = client.generate(&req, |_| true).await.unwrap();
    assert_eq!(g.tokens, local(8, Sampling::default()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_moving_to_other_blocks_hands_its_sessions_over() {
    let tmp = tempfile::tempdir().unwrap();
    let mut net = cluster(tmp.path());
    let _first = start(&mut net, Some(0..2)).await;
    let mover = start(&mut net, Some(2..4)).await;
    let client = start(&mut net, None).await;
    client.wait_for_route(2, Duration::from_secs(30)).await.unwrap();
    // The other server of 2..4 joins once the route through the mover is fixed.
    let other = start(&mut net, Some(2..4)).await;
    client.wait_for_server(&other.peer_id(), Duration::from_secs(30)).await.unwrap();
    // No stop token: 24 tokens, so the move falls in the middle.
    let want = local_until(24, Sampling { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 }, None);
    let req = GenerateRequest {
        prompt: PROMPT.to_vec(),
        max_new: 24,
        sampling: Sampling::default(),
        wire: Dtype::Q8,
        stop: None,
        relay: Relay::Chain,
    };
    let mut n = 0;
    let mut moved_from = None;
    let g = client
        .generate(&req, |_| {
            n += 1;
            if n == 5 {
                let last = client.route_in_use().unwrap().last().unwrap().peer;
                let node = if last == mover.peer_id() { &mover } else { &other };
                // The move completes between two steps: load, announce, withdraw.
                tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(node.move_to(0..2))).unwrap();
                moved_from = Some(last);
            }
            true
        })
        .await
        .unwrap();
    assert_eq!(g.tokens, want, "the session continued from its moved state");
    assert_eq!((g.handoffs, g.failovers), (1, 0), "{:?}", g.failures);
    let moved_from = moved_from.unwrap();
    assert_ne!(g.route.last().unwrap().hop.peer, moved_from, "blocks 2..4 now run elsewhere");
    let moved = if moved_from == mover.peer_id() { &mover } else { &other };
    assert_eq!(moved.serving(), Some(0..2), "the moved server serves its new blocks");
}

/// `odin node` runs on one network thread: a decode step runs inline there while its session is
/// the only busy one, and on the blocking pool while others compute too. Two clients generating at
/// once, alone and then together, get the tokens of one machine.
#[tokio::test(flavor = "current_thread")]
async fn on_one_network_thread_concurrent_sessions_generate_what_one_machine_does() {
    let tmp = tempfile::tempdir().unwrap();
    let mut net = cluster(tmp.path());
    let _first = start(&mut net, Some(0..2)).await;
    let _second = start(&mut net, Some(2..4)).await;
    let (a, b) = (start(&mut net, None).await, start(&mut net, None).await);
    for c in [&a, &b] {
        c.wait_for_route(2, Duration::from_secs(30)).await.unwrap();
    }
    let greedy = Sampling::default();
    let sampled = Sampling { temperature: 0.8, top_k: 20, top_p: 0.95, seed: 3 };
    let want = |s: Sampling| local(32, s);
    let req = |sampling| GenerateRequest {
        prompt: PROMPT.to_vec(),
        max_new: 32,
        sampling,
        wire: Dtype::F32,
        stop: Some(1),
        relay: Relay::Chain,
    };
    let alone = a.generate(&req(greedy), |_| true).await.unwrap();
    assert_eq!(alone.tokens, want(greedy));
    let (ra, rb) = (req(greedy), req(sampled));
    let (ga, gb) = tokio::join!(a.generate(&ra, |_| true), b.generate(&rb, |_| true));
    let (ga, gb) = (ga.unwrap(), gb.unwrap());
    assert_eq!(ga.tokens, want(greedy));
    assert_eq!(gb.tokens, want(sampled));
    // With four nodes on one thread, a stream sometimes lands on a duplicate connection that the
    // other side then closes (yamux: "connection is closed"; QUIC: "stopped by peer"); the client
    // fails over from that, and nothing else may go wrong: a step refused, garbled or stalled on
    // either path would show here.
    for f in [&alone, &ga, &gb].iter().flat_map(|g| &g.failures) {
        assert!(f.contains("connection is closed") || f.contains("stopped by peer"), "{f}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_signs_with_the_identity_its_peer_id_names_and_keeps_it_across_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = || NodeConfig::loopback(&tiny(), None, &tmp.path().join("same"));
    let node = Node::start(cfg()).await.unwrap();
    let msg = b"step 7 of session 42: output 9f86d081";
    let sig = node.sign(msg).unwrap();
    assert_eq!(node.public_key().to_peer_id(), node.peer_id());
    assert!(node.public_key().verify(msg, &sig));
    assert!(!node.public_key().verify(b"step 8 of session 42: output 9f86d081", &sig), "another message");
    let (peer, key) = (node.peer_id(), node.public_key());
    drop(node);
    // The same data directory: the same key, so an old signature still checks against the new
    // node, and its new signatures against the old key.
    let again = Node::start(cfg()).await.unwrap();
    assert_eq!(again.peer_id(), peer);
    assert!(again.public_key().verify(msg, &sig));
    assert!(key.verify(msg, &again.sign(msg).unwrap()));
    // Another node's key does not check it.
    let other = Node::start(NodeConfig::loopback(&tiny(), None, &tmp.path().join("other"))).await.unwrap();
    assert_ne!(other.peer_id(), peer);
    assert!(!other.public_key().verify(msg, &sig));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_liar_caught_by_one_node_is_banned_by_every_node_that_checks_the_proof() {
    let tmp = tempfile::tempdir().unwrap();
    let mut net = cluster(tmp.path());
    let _first = start(&mut net, Some(0..2)).await;
    let liar = net
        .launch_in_process_with("liar", Some(2..4), |c| c.server.cheat = Some(odin_node::Cheat::Noise))
        .await
        .unwrap();
    let liar = net.node(liar).unwrap().peer_id();
    let _spare = start(&mut net, Some(2..4)).await;
    let watcher = start(&mut net, Some(0..2)).await;
    let client = net.launch_in_process_with("client", None, |c| c.audit = 1.0).await.unwrap();
    let client = net.node(client).unwrap().clone();
    client.wait_for_route(4, Duration::from_secs(30)).await.unwrap();
    let req = GenerateRequest {
        prompt: PROMPT.to_vec(),
        max_new: 8,
        sampling: Sampling::default(),
        wire: Dtype::Q8,
        stop: None,
        relay: Relay::Chain,
    };
    let g = client.generate(&req, |_| true).await.unwrap();
    assert_eq!(g.tokens, local_until(8, Sampling::default(), None));
    assert!(client.has_banned(&liar), "{:?}", client.audit_report());
    assert_eq!(client.audit_proofs().len(), 1);
    // The liar's gossip is dropped from now on: its score is far under the graylist threshold.
    assert_eq!(client.gossip_score(&liar).await.unwrap(), Some(odin_net::swarm::BANNED_SCORE));
    // The proof spreads on gossip; the watcher recomputes the step and bans the liar too.
    let banned = watcher.wait_banned(&liar, Duration::from_secs(20)).await;
    assert!(banned, "the watcher never banned the liar: {:?}", watcher.audit_report());
    let r = watcher.audit_report();
    assert_eq!((r.convictions, r.false_accusations), (1, 0), "{r:?}");
}
