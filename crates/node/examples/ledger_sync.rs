//! The ledger between nodes on loopback, for BENCHMARKS.md:
//!
//! 1. **Replication**: a node holding a feed of N entries (100,000 by default) and a newcomer
//!    that joins it: seconds until the newcomer holds all of them, and the entries' bytes on
//!    the wire (the range answers' frames; transport framing and encryption not counted).
//! 2. **Partition**: 10 nodes in two halves of 5 that cannot reach each other, each half
//!    writing uptime attestations for a while; then one link heals the partition: seconds until
//!    every node holds every entry that existed when it healed.
//!
//! `cargo run --release -p odin-node --example ledger_sync -- [ENTRIES] [PARTITION_SECS]`

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use odin_ledger::{Author, NetworkId, Store};
use odin_node::{LedgerConfig, Node, NodeConfig};
use odin_proto::ledger::{Body, Entry, Genesis, Key, Signed, MAX_RANGE};

fn tiny() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/odin-tiny")
}

fn ledger(genesis: Option<odin_net::PeerId>) -> LedgerConfig {
    LedgerConfig {
        name: "bench".into(),
        genesis,
        sync_every: Duration::from_millis(200),
        challenge_every: Duration::from_millis(500),
        ..LedgerConfig::default()
    }
}

async fn start(dir: &Path, boot: Option<&Arc<Node>>, genesis: Option<odin_net::PeerId>) -> Arc<Node> {
    let mut cfg = NodeConfig::loopback(&tiny(), None, dir);
    cfg.net.bootstrap = boot
        .map(|b| {
            let a = b.net().addrs()[0].clone();
            vec![format!("{a}/p2p/{}", b.peer_id()).parse().expect("an address")]
        })
        .unwrap_or_default();
    cfg.ledger = Some(ledger(genesis));
    Node::start(cfg).await.expect("a node")
}

/// Highest seq held of each feed.
fn heads(n: &Node) -> BTreeMap<Key, u64> {
    n.ledger().expect("a ledger").heads().expect("heads").into_iter().map(|h| (h.author, h.seq)).collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let entries: u64 = args.first().map(|a| a.parse()).transpose()?.unwrap_or(100_000);
    let partition_secs: u64 = args.get(1).map(|a| a.parse()).transpose()?.unwrap_or(10);
    let tmp = tempfile::tempdir()?;

    // 1. A feed of `entries` written ahead into the first node's ledger, then a newcomer.
    let a_dir = tmp.path().join("a");
    let key =
        odin_net::load_or_create_identity_with(&a_dir.join("identity.key"), odin_net::puzzle::DEFAULT_IDENTITY_BITS)?;
    let me = Author::new(&key)?;
    let network = NetworkId::new("bench", me.key());
    let id = network.id();
    let mut store = Store::open(&a_dir.join("ledger.sqlite"), id)?;
    store.set_network(&network)?;
    let mut prev = [0u8; 32];
    let mut batch: Vec<Signed> = Vec::with_capacity(MAX_RANGE);
    let mut bytes = 0usize;
    for seq in 0..entries {
        let body = if seq == 0 {
            Body::Genesis(Genesis { epoch_minutes: 60, allocations: vec![(me.key(), 1_000_000)] })
        } else {
            Body::Stake(0)
        };
        let b = Entry { network: id, author: me.key(), seq, prev, time_ms: seq, body }.to_bytes();
        let s = Signed { sig: me.sign(&b), bytes: b };
        prev = s.id();
        bytes += s.to_bytes().len();
        batch.push(s);
        if batch.len() == MAX_RANGE {
            store.insert_all(&batch)?;
            batch.clear();
        }
    }
    store.insert_all(&batch)?;
    drop(store);
    let a = start(&a_dir, None, None).await;
    let t = Instant::now();
    let b = start(&tmp.path().join("b"), Some(&a), None).await;
    let want = entries;
    let done = b
        .ledger()
        .expect("a ledger")
        .wait_until(Duration::from_secs(600), |k| {
            k.heads().ok().and_then(|h| h.iter().find(|h| h.author == me.key()).map(|h| h.seq + 1)) >= Some(want)
        })
        .await;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "replication: {entries} entries in {secs:.2} s from the newcomer's start ({:.0} entries/s), {:.1} MB of entries on the wire ({} B each); complete: {done}",
        entries as f64 / secs,
        bytes as f64 / 1e6,
        bytes / entries as usize
    );
    drop((a, b));

    // 2. Ten nodes, two halves that do not know each other, one network.
    let g = start(&tmp.path().join("g0"), None, None).await;
    let mut left = vec![g.clone()];
    for i in 1..5 {
        left.push(start(&tmp.path().join(format!("g{i}")), Some(&g), None).await);
    }
    let r0 = start(&tmp.path().join("h0"), None, Some(g.peer_id())).await;
    let mut right = vec![r0.clone()];
    for i in 1..5 {
        right.push(start(&tmp.path().join(format!("h{i}")), Some(&r0), Some(g.peer_id())).await);
    }
    tokio::time::sleep(Duration::from_secs(partition_secs)).await;
    let all: Vec<Arc<Node>> = left.iter().chain(right.iter()).cloned().collect();
    let mut union: BTreeMap<Key, u64> = BTreeMap::new();
    for n in &all {
        for (k, s) in heads(n) {
            let e = union.entry(k).or_default();
            *e = (*e).max(s);
        }
    }
    let before: Vec<usize> = all.iter().map(|n| heads(n).len()).collect();
    let t = Instant::now();
    let a0 = g.net().addrs()[0].clone();
    r0.net().dial(format!("{a0}/p2p/{}", g.peer_id()).parse()?).await?;
    let mut healed = false;
    while t.elapsed() < Duration::from_secs(120) {
        if all.iter().all(|n| {
            let h = heads(n);
            union.iter().all(|(k, s)| h.get(k).is_some_and(|x| x >= s))
        }) {
            healed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "partition: 10 nodes, 2 halves for {partition_secs} s ({} feeds, {} entries in all at the heal; feeds known per node before: {before:?}); every node held all of them {:.2} s after one link healed it; converged: {healed}",
        union.len(),
        union.values().map(|s| s + 1).sum::<u64>(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
