//! `odin ledger` as a real process, on a ledger written here with the library: the balances
//! it prints, a full verify, the entries listed, export and import, and clear errors.

use std::path::Path;
use std::process::{Command, Output};

use odin_ledger::{Author, NetworkId, Store, MICRO};
use odin_proto::ledger::{Body, Genesis, Receipt, Work};

fn odin(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_odin")).args(args).arg("--data-dir").arg(dir).output().unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A genesis `g` giving 1000 tokens to itself and 500 to `s`, `g` staking 100, and a receipt
/// of `s` serving `g` a million tokens through 2 of 4 blocks.
fn write_ledger(dir: &Path) -> (Author, Author) {
    let (g, s) = (Author::generate(), Author::generate());
    let net = NetworkId::new("cli-test", g.key());
    let mut store = Store::open(&dir.join("ledger.sqlite"), net.id()).unwrap();
    store.set_network(&net).unwrap();
    let mut allocations = vec![(g.key(), 1000 * MICRO), (s.key(), 500 * MICRO)];
    allocations.sort();
    store.append(&g, 1_000, Body::Genesis(Genesis { epoch_minutes: 60, allocations })).unwrap();
    store.append(&g, 2_000, Body::Stake(100 * MICRO)).unwrap();
    let mut r = Receipt {
        requester: g.key(),
        epoch: 0,
        work: Work::Serve { session: 7, tokens: 1_000_000, blocks: 2, model_blocks: 4 },
        commitment: [1; 32],
        audited: true,
        countersig: [0; 64],
    };
    r.countersig = g.sign(&r.countersign_bytes(&net.id(), &s.key()));
    store.append(&s, 3_000, Body::Receipt(r)).unwrap();
    (g, s)
}

#[test]
fn balance_verify_show_export_and_import_read_the_ledger_a_node_wrote() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    std::fs::create_dir_all(&dir).unwrap();
    let (g, s) = write_ledger(&dir);

    let b = json(&odin(&["ledger", "balance", "--json"], &dir));
    let account = |a: &Author| {
        let id = odin_ledger::show(&a.key());
        b["accounts"].as_array().unwrap().iter().find(|x| x["account"] == id.as_str()).unwrap().clone()
    };
    // 0.9 per million whole-model tokens, half the model: 0.45 token, paid by the requester.
    assert_eq!(account(&s)["balance"], 500 * MICRO + 450_000);
    assert_eq!(account(&s)["earned_serving"], 450_000);
    assert_eq!(account(&g)["balance"], 900 * MICRO - 450_000);
    assert_eq!(account(&g)["bond"], 100 * MICRO);
    assert_eq!((b["supply"].as_u64(), b["minted"].as_u64()), (Some(1500 * MICRO), Some(0)));

    let v = json(&odin(&["ledger", "verify", "--json"], &dir));
    assert_eq!((v["good"].as_u64(), v["feeds"].as_u64()), (Some(3), Some(2)), "{v}");
    let shown = json(&odin(&["ledger", "show", "--json"], &dir));
    let what: Vec<&str> = shown.as_array().unwrap().iter().map(|e| e["what"].as_str().unwrap()).collect();
    assert!(what[0].starts_with("genesis: 2 accounts") && what[2].contains("served 1000000 tokens"), "{what:?}");

    let export = tmp.path().join("ledger.bin");
    let out = odin(&["ledger", "export", "--out", export.to_str().unwrap()], &dir);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("3 entries written"));
    let out = odin(&["ledger", "import", export.to_str().unwrap()], &dir);
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 new entries, 3 already held"), "{out:?}");

    // A directory without a ledger says so and what to pass.
    let out = odin(&["ledger", "balance"], &tmp.path().join("nowhere"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("there is no ledger at"), "{out:?}");
}
