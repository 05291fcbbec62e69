//! The ledger's speed on this machine, for BENCHMARKS.md:
//!
//! - appends with fsync (each its own transaction, on disk when it returns), entries/s;
//! - replicating a feed of N entries from one store to another the way nodes do (ranges of
//!   512, each checked and inserted in one transaction), entries/s and bytes on the wire;
//! - computing the books over all of it.
//!
//! `cargo run --release -p odin-ledger --example ledger_bench -- [APPENDS] [REPLICATED] [DIR]`
//! (defaults 2000, 100000, a temporary directory; DIR picks the disk).

use std::time::Instant;

use odin_ledger::{Author, NoVerdicts, Params, Store};
use odin_proto::ledger::{Body, MAX_RANGE};

const NET: [u8; 32] = [0x42; 32];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let appends: usize = args.first().map(|a| a.parse()).transpose()?.unwrap_or(2000);
    let replicated: usize = args.get(1).map(|a| a.parse()).transpose()?.unwrap_or(100_000);
    let tmp = tempfile::tempdir()?;
    let dir = args.get(2).map(std::path::PathBuf::from).unwrap_or_else(|| tmp.path().to_path_buf());
    let me = Author::generate();

    // Appends with fsync, three runs.
    let mut rates = Vec::new();
    for run in 0..3 {
        let path = dir.join(format!("append-{run}.sqlite"));
        let _ = std::fs::remove_file(&path);
        let mut s = Store::open(&path, NET)?;
        let t = Instant::now();
        for i in 0..appends as u64 {
            s.append(&me, i, Body::Stake(i))?;
        }
        rates.push(appends as f64 / t.elapsed().as_secs_f64());
    }
    println!(
        "append (fsync each): median {:.0} entries/s over 3 runs of {appends} ({:?})",
        median(rates.clone()),
        rates
    );

    // The anchor: the same number of rows of the same size, inserted by SQLite alone in the same
    // mode (WAL, synchronous=FULL, one transaction each): the disk's floor, no signing or checks.
    let size = Store::open(&dir.join("append-0.sqlite"), NET)?.range(&me.key(), 0, 1)?[0].bytes.len() + 64;
    let mut raw = Vec::new();
    for run in 0..3 {
        let path = dir.join(format!("raw-{run}.sqlite"));
        let _ = std::fs::remove_file(&path);
        let db = rusqlite::Connection::open(&path)?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        db.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB NOT NULL)")?;
        let blob = vec![7u8; size];
        let t = Instant::now();
        for i in 0..appends as i64 {
            db.execute("INSERT INTO t (id, b) VALUES (?1, ?2)", rusqlite::params![i, &blob])?;
        }
        raw.push(appends as f64 / t.elapsed().as_secs_f64());
    }
    println!(
        "anchor, SQLite alone ({size}-byte rows, same mode): median {:.0} rows/s ({:?}); the ledger's append is {:.2}x of it",
        median(raw.clone()),
        raw,
        median(rates.clone()) / median(raw.clone())
    );

    // A source feed of `replicated` entries, written in one transaction per 512 (setup).
    let src_path = dir.join("source.sqlite");
    let _ = std::fs::remove_file(&src_path);
    let mut src = Store::open(&src_path, NET)?;
    let other = Author::generate();
    let mut batch = Vec::with_capacity(MAX_RANGE);
    let mut prev = [0u8; 32];
    for i in 0..replicated as u64 {
        let e = odin_proto::ledger::Entry {
            network: NET,
            author: other.key(),
            seq: i,
            prev,
            time_ms: i,
            body: Body::Stake(i),
        };
        let bytes = e.to_bytes();
        let signed = odin_proto::ledger::Signed { sig: other.sign(&bytes), bytes };
        prev = signed.id();
        batch.push(signed);
        if batch.len() == MAX_RANGE {
            src.insert_all(&batch)?;
            batch.clear();
        }
    }
    src.insert_all(&batch)?;

    // Replication as a node does it: ranges of 512 read, encoded as the answer frame, decoded,
    // checked and inserted.
    let mut times = Vec::new();
    let mut wire = 0usize;
    for run in 0..3 {
        let path = dir.join(format!("replica-{run}.sqlite"));
        let _ = std::fs::remove_file(&path);
        let mut dst = Store::open(&path, NET)?;
        wire = 0;
        let t = Instant::now();
        let mut from = 0u64;
        loop {
            let es = src.range(&other.key(), from, MAX_RANGE)?;
            if es.is_empty() {
                break;
            }
            let frame = odin_proto::Envelope {
                model: odin_format::ModelId(NET),
                msg: odin_proto::ledger::Response::Entries(es),
            }
            .to_bytes();
            wire += frame.len() + 4 + 60;
            let odin_proto::ledger::Response::Entries(got) =
                odin_proto::Envelope::<odin_proto::ledger::Response>::from_bytes(&frame)?.msg
            else {
                unreachable!()
            };
            from += got.len() as u64;
            dst.insert_all(&got)?;
        }
        times.push(t.elapsed().as_secs_f64());
        assert_eq!(dst.len()?, replicated as u64);
    }
    let m = median(times.clone());
    println!(
        "replicate {replicated} entries: median {m:.2} s ({:.0} entries/s), {:.1} MB on the wire ({:.0} B/entry); runs {times:?}",
        replicated as f64 / m,
        wire as f64 / 1e6,
        wire as f64 / replicated as f64
    );

    let t = Instant::now();
    let books = odin_ledger::compute(&me.key(), &NET, &src.entries()?, &Params::default(), &NoVerdicts);
    println!("books over {replicated} entries: {:.2} s ({} accounts)", t.elapsed().as_secs_f64(), books.accounts.len());
    Ok(())
}
