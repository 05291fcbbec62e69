//! The ledger between real nodes on loopback: served work paid by receipts, uptime attested,
//! a liar slashed with its proof, and every node computing the same books.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use odin_format::Sampling;
use odin_ledger::{Books, MICRO};
use odin_node::cluster::ClusterConfig;
use odin_node::{GenerateRequest, LedgerConfig, LocalCluster, Node, Relay};
use odin_proto::Dtype;

fn tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/odin-tiny")
}

const PROMPT: [u32; 8] = [0, 3, 40, 41, 42, 43, 44, 4];

/// A fast ledger: heads every 200 ms, a challenge round every 2 s (the quiet between rounds is
/// when every node can hold the same entries: attestations are appended all the time).
fn ledger(allocations: Vec<(odin_net::PeerId, u64)>) -> LedgerConfig {
    LedgerConfig {
        name: "test".into(),
        allocations,
        sync_every: Duration::from_millis(200),
        challenge_every: Duration::from_secs(2),
        ..LedgerConfig::default()
    }
}

/// The identity a member named `name` will have (made now, so the genesis can allocate to it).
fn identity(tmp: &Path, name: &str) -> odin_net::PeerId {
    let key = odin_net::load_or_create_identity_with(
        &tmp.join(name).join("identity.key"),
        odin_net::puzzle::DEFAULT_IDENTITY_BITS,
    )
    .unwrap();
    key.public().to_peer_id()
}

fn books(n: &Node) -> Books {
    n.ledger().expect("a ledger").books().unwrap()
}

/// Wait (on the nodes' ledger changes, at most 60 s) until `done` holds of every node's books
/// and they are all the same; panics with the books if not.
async fn converge(nodes: &[&Arc<Node>], done: impl Fn(&Books) -> bool) -> Books {
    let mut changes: Vec<_> = nodes.iter().map(|n| n.ledger().unwrap().changes()).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let all: Vec<Books> = nodes.iter().map(|n| books(n)).collect();
        if all.iter().all(|b| b == &all[0]) && done(&all[0]) {
            return all[0].clone();
        }
        let any = futures::future::select_all(changes.iter_mut().map(|c| Box::pin(c.changed())));
        if tokio::time::timeout_at(deadline, any).await.is_err() {
            panic!("the ledgers did not converge: {all:#?}");
        }
    }
}

/// A client with a ledger that audits every hop-step.
async fn auditing_client(net: &mut LocalCluster) -> Arc<Node> {
    let i = net
        .launch_in_process_with("client", None, |c| {
            c.audit = 1.0;
            c.ledger = Some(ledger(vec![]));
        })
        .await
        .unwrap();
    net.node(i).unwrap().clone()
}

fn request() -> GenerateRequest {
    GenerateRequest {
        prompt: PROMPT.to_vec(),
        max_new: 8,
        sampling: Sampling::default(),
        wire: Dtype::F32,
        stop: None,
        relay: Relay::Client,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_work_is_paid_uptime_is_minted_and_every_node_keeps_the_same_books() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = ClusterConfig::in_process(&tiny(), tmp.path());
    cfg.announce = Duration::from_millis(500);
    let mut net = LocalCluster::new(cfg);
    let (server, client) = (identity(tmp.path(), "server"), identity(tmp.path(), "client"));
    let alloc = vec![(server, 1000 * MICRO), (client, 1000 * MICRO)];
    let g = net.launch_in_process_with("genesis", Some(0..2), |c| c.ledger = Some(ledger(alloc))).await.unwrap();
    let s = net.launch_in_process_with("server", Some(2..4), |c| c.ledger = Some(ledger(vec![]))).await.unwrap();
    let c = auditing_client(&mut net).await;
    let (g, s) = (net.node(g).unwrap().clone(), net.node(s).unwrap().clone());
    assert_eq!(c.ledger().unwrap().network().genesis, odin_ledger::account_of(&g.peer_id()).unwrap());
    c.wait_for_route(2, Duration::from_secs(30)).await.unwrap();
    let out = c.generate(&request(), |_| true).await.unwrap();
    assert!(!out.tokens.is_empty());
    let acct = |b: &Books, p: &odin_net::PeerId| b.account(&odin_ledger::account_of(p).unwrap());
    let b = converge(&[&g, &s, &c], |b| {
        acct(b, &s.peer_id()).earned_serving > 0
            && acct(b, &g.peer_id()).earned_serving > 0
            && acct(b, &s.peer_id()).earned_uptime > 0
    })
    .await;
    // What the client paid is what the servers earned for serving: work mints nothing.
    let (gs, ss, cs) = (acct(&b, &g.peer_id()), acct(&b, &s.peer_id()), acct(&b, &c.peer_id()));
    assert_eq!(cs.paid, gs.earned_serving + ss.earned_serving, "{b:#?}");
    assert_eq!(b.supply(), b.allocated + b.minted - b.burned);
    assert!(gs.bond >= 100 * MICRO && ss.bond >= 100 * MICRO, "both servers keep their stake: {b:#?}");
    // /status shows the same figures.
    let st = c.status().await;
    let l = st.ledger.expect("the client's ledger status");
    assert!(l.entries > 3 && (l.balance - cs.balance as f64 / MICRO as f64).abs() < 1e-9, "{l:?}");
    assert!(st.servers.iter().all(|x| x.balance.is_some() && x.stake.is_some()), "{:?}", st.servers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_liar_caught_by_an_audit_is_slashed_in_every_ledger() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = ClusterConfig::in_process(&tiny(), tmp.path());
    cfg.announce = Duration::from_millis(500);
    let mut net = LocalCluster::new(cfg);
    let liar = identity(tmp.path(), "liar");
    let g = net
        .launch_in_process_with("genesis", Some(0..2), |c| c.ledger = Some(ledger(vec![(liar, 1000 * MICRO)])))
        .await
        .unwrap();
    let l = net
        .launch_in_process_with("liar", Some(2..4), |c| {
            c.server.cheat = Some(odin_node::Cheat::Noise);
            c.ledger = Some(ledger(vec![]));
        })
        .await
        .unwrap();
    let (g, l) = (net.node(g).unwrap().clone(), net.node(l).unwrap().clone());
    // The liar has bonded its stake before it serves anyone.
    let liar_key = odin_ledger::account_of(&liar).unwrap();
    converge(&[&g, &l], |b| b.account(&liar_key).bond >= 100 * MICRO).await;
    let c = auditing_client(&mut net).await;
    c.wait_for_route(2, Duration::from_secs(30)).await.unwrap();
    // The client's audit catches the lie; the generation fails over to nowhere or errs.
    let _ = c.generate(&request(), |_| true).await;
    assert!(c.has_banned(&liar));
    let b = converge(&[&g, &l, &c], |b| b.account(&liar_key).slashed > 0).await;
    let a = b.account(&liar_key);
    assert_eq!(a.slashed, 50 * MICRO, "half of its 100-token bond: {a:?}");
    assert_eq!(b.burned, a.slashed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_countersigns_is_no_longer_served() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = ClusterConfig::in_process(&tiny(), tmp.path());
    cfg.announce = Duration::from_millis(500);
    let mut net = LocalCluster::new(cfg);
    let g = net.launch_in_process_with("genesis", Some(0..4), |c| c.ledger = Some(ledger(vec![]))).await.unwrap();
    // No ledger: it never hands over a receipt.
    let c = net.launch_in_process("client", None).await.unwrap();
    let (g, c) = (net.node(g).unwrap().clone(), net.node(c).unwrap().clone());
    c.wait_for_route(1, Duration::from_secs(30)).await.unwrap();
    let one = GenerateRequest { max_new: 1, ..request() };
    for i in 0..odin_node::server::MAX_UNPAID_SESSIONS {
        c.generate(&one, |_| true).await.unwrap_or_else(|e| panic!("generation {i} within the allowance: {e}"));
    }
    let e = c.generate(&one, |_| true).await.unwrap_err().to_string();
    assert!(e.contains("countersign"), "{e}");
    assert!(g.ledger().unwrap().books().unwrap().accounts.values().all(|a| a.receipts == 0));
}
