//! kill -9 during appends: a child process appends as fast as it can and prints each seq once
//! `append` has returned (acknowledged); the parent kills it at a random moment, reopens the
//! file, and checks that every acknowledged entry is there and the file verifies clean. The
//! child is this test binary again, running the ignored `appender` test.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use odin_ledger::{Author, Store};
use odin_proto::ledger::Body;

const NET: [u8; 32] = [0x5a; 32];
const RUNS: usize = 200;

#[test]
#[ignore = "the child process of kill_9_during_appends_loses_no_acknowledged_entry"]
fn appender() {
    let Ok(path) = std::env::var("ODIN_LEDGER_CRASH_DB") else { return };
    let mut store = Store::open(std::path::Path::new(&path), NET).expect("open");
    let me = Author::generate();
    let mut out = std::io::stdout().lock();
    for i in 0.. {
        let c = store.append(&me, i, Body::Stake(i)).expect("append");
        use std::io::Write;
        writeln!(out, "{}", c.entry.seq).expect("stdout");
        out.flush().expect("flush");
    }
}

#[test]
fn kill_9_during_appends_loses_no_acknowledged_entry() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut killed_mid_run = 0;
    for run in 0..RUNS {
        let path = dir.path().join(format!("ledger-{}.sqlite", run % 8));
        let before = Store::open(&path, NET).unwrap().len().unwrap();
        let mut child = Command::new(&exe)
            .args(["appender", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
            .env("ODIN_LEDGER_CRASH_DB", &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Wait for a varying number of acknowledgements, then kill without warning: the
        // kill lands between, or inside, later appends.
        let wait_for = 1 + (run * 7919) % 40;
        let mut acked = None;
        for line in lines.by_ref() {
            let Ok(seq) = line.unwrap_or_default().trim().parse::<u64>() else { continue };
            acked = Some(seq);
            if seq as usize + 1 >= wait_for {
                break;
            }
        }
        std::thread::sleep(Duration::from_micros((run as u64 * 104_729) % 3000));
        child.kill().unwrap();
        child.wait().unwrap();
        // Whatever the child printed after we stopped reading was acknowledged too.
        for line in lines {
            if let Ok(seq) = line.unwrap_or_default().trim().parse::<u64>() {
                acked = Some(seq);
            }
        }
        let acked = acked.expect("the appender acknowledged nothing");
        let store = Store::open(&path, NET).unwrap();
        let v = store.verify().unwrap();
        assert!(v.bad.is_empty(), "run {run}: the file does not verify clean: {:?}", v.bad);
        let now = store.len().unwrap();
        assert!(now > before + acked, "run {run}: {} entries after, {before} before, seq {acked} acknowledged", now);
        killed_mid_run += usize::from(now > before + acked + 1);
    }
    eprintln!("{RUNS} kills; {killed_mid_run} landed after an append committed but before it was printed");
}
