//! `odin ledger show | balance | verify | export | import`: read a node's ledger file. Only
//! parsing and printing here; the work is `odin_ledger`'s.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use odin_ledger::key::{hex, short};
use odin_ledger::{show, Books, Params, Store, MICRO};
use odin_proto::ledger::{Body, Proof, Work};
use serde_json::json;

/// The ledger subcommands.
#[derive(Subcommand)]
pub enum LedgerCmd {
    /// List entries, newest last.
    Show(ShowArgs),
    /// Every account's balance, stake and earnings, computed from the entries held.
    Balance(Common),
    /// Re-check every entry's signature and chain; fails if any is bad.
    Verify(Common),
    /// Write every entry to a file (signed bytes, feed by feed).
    Export {
        #[command(flatten)]
        common: Common,
        /// The file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Offer every entry of an export to this ledger (each is checked).
    Import {
        #[command(flatten)]
        common: Common,
        /// The export to read.
        file: PathBuf,
    },
}

/// What every ledger command reads.
#[derive(Args)]
pub struct Common {
    /// The node's data directory (its ledger is ledger.sqlite there).
    #[arg(long, default_value = ".odin/node")]
    pub data_dir: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `odin ledger show`.
#[derive(Args)]
pub struct ShowArgs {
    #[command(flatten)]
    common: Common,
    /// Only this author's feed (peer id).
    #[arg(long)]
    author: Option<String>,
    /// The last N entries.
    #[arg(long, default_value_t = 50)]
    limit: usize,
}

/// Where a node keeps its ledger.
pub fn ledger_path(data_dir: &Path) -> PathBuf {
    data_dir.join("ledger.sqlite")
}

/// Run a ledger subcommand.
pub fn run(cmd: LedgerCmd) -> Result<()> {
    match cmd {
        LedgerCmd::Show(a) => show_entries(a),
        LedgerCmd::Balance(c) => balance(&c),
        LedgerCmd::Verify(c) => verify(&c),
        LedgerCmd::Export { common, out } => {
            let store = open(&common)?;
            let mut f = std::io::BufWriter::new(
                std::fs::File::create(&out).with_context(|| format!("cannot create {}", out.display()))?,
            );
            let n = store.export(&mut f)?;
            std::io::Write::flush(&mut f).with_context(|| format!("cannot write {}", out.display()))?;
            println!("{n} entries written to {}", out.display());
            Ok(())
        }
        LedgerCmd::Import { common, file } => {
            let mut store = open(&common)?;
            let mut f = std::fs::File::open(&file).with_context(|| format!("cannot open {}", file.display()))?;
            let (new, old) = store.import(&mut f)?;
            println!("{new} new entries, {old} already held");
            Ok(())
        }
    }
}

fn open(c: &Common) -> Result<Store> {
    Ok(Store::open_existing(&ledger_path(&c.data_dir))?)
}

fn kind(b: &Body) -> String {
    let tok = |v: u64| format!("{:.6}", v as f64 / MICRO as f64);
    match b {
        Body::Genesis(g) => format!("genesis: {} accounts, {}-minute epochs", g.allocations.len(), g.epoch_minutes),
        Body::Receipt(r) => match &r.work {
            Work::Serve { tokens, blocks, model_blocks, .. } => format!(
                "receipt: served {tokens} tokens × {blocks}/{model_blocks} blocks for {} in epoch {}{}",
                short(&r.requester),
                r.epoch,
                if r.audited { ", audited" } else { "" }
            ),
            Work::Train { round, batches, samples, .. } => {
                format!(
                    "receipt: trained round {round}, {batches} batches, {samples} samples for {}",
                    short(&r.requester)
                )
            }
        },
        Body::Uptime(u) => format!("uptime: minute {} attested by {}", u.minute, short(&u.challenger)),
        Body::Stake(v) => format!("stake {}", tok(*v)),
        Body::Unstake(v) => format!("unstake {}", tok(*v)),
        Body::Slash(s) => format!(
            "slash {} for {}",
            short(&s.offender),
            match s.proof {
                Proof::Equivocation(..) => "equivocating",
                Proof::Step(_) => "a false step",
            }
        ),
    }
}

fn show_entries(a: ShowArgs) -> Result<()> {
    let store = open(&a.common)?;
    let mut entries = store.entries()?;
    if let Some(p) = &a.author {
        let peer: odin_net::PeerId = p.parse().with_context(|| format!("--author {p} is not a peer id"))?;
        let Some(key) = odin_ledger::account_of(&peer) else { bail!("--author {p} is not an ed25519 peer id") };
        entries.retain(|c| c.entry.author == key);
    }
    entries.sort_by_key(|c| (c.entry.time_ms, c.entry.author, c.entry.seq));
    let skip = entries.len().saturating_sub(a.limit);
    if a.common.json {
        let rows: Vec<_> = entries[skip..]
            .iter()
            .map(|c| {
                json!({"id": hex(&c.id), "author": show(&c.entry.author), "seq": c.entry.seq,
                       "time_ms": c.entry.time_ms, "what": kind(&c.entry.body)})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    for c in &entries[skip..] {
        println!("{:>8} #{:<6} {:>14}  {}", short(&c.entry.author), c.entry.seq, c.entry.time_ms, kind(&c.entry.body));
    }
    println!("{} of {} entries", entries.len() - skip, entries.len());
    Ok(())
}

/// The books of a ledger file, as the node that wrote it computes them.
pub fn books(store: &Store) -> Result<Books> {
    let Some(net) = store.network_id()? else {
        bail!("this ledger does not name its genesis node; run `odin node` with it once")
    };
    Ok(store.books(&net.genesis, &Params::default())?)
}

fn balance(c: &Common) -> Result<()> {
    let store = open(c)?;
    let b = books(&store)?;
    let tok = |v: u64| v as f64 / MICRO as f64;
    if c.json {
        let accounts: Vec<_> = b
            .accounts
            .iter()
            .map(|(k, a)| {
                json!({"account": show(k), "balance": a.balance, "bond": a.bond, "unbonding": a.at_stake() - a.bond,
                       "earned_serving": a.earned_serving, "earned_training": a.earned_training,
                       "earned_uptime": a.earned_uptime, "paid": a.paid, "slashed": a.slashed,
                       "receipts": a.receipts, "minutes": a.minutes})
            })
            .collect();
        let out = json!({"micro_units_per_token": MICRO, "genesis": b.genesis, "allocated": b.allocated,
                         "minted": b.minted, "burned": b.burned, "supply": b.supply(), "accounts": accounts});
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{:<54} {:>14} {:>12} {:>12} {:>12} {:>12} {:>10}",
        "account", "balance", "bond", "serving", "uptime", "paid", "slashed"
    );
    for (k, a) in &b.accounts {
        println!(
            "{:<54} {:>14.6} {:>12.6} {:>12.6} {:>12.6} {:>12.6} {:>10.6}",
            show(k),
            tok(a.balance),
            tok(a.at_stake()),
            tok(a.earned_serving + a.earned_training),
            tok(a.earned_uptime),
            tok(a.paid),
            tok(a.slashed)
        );
    }
    println!(
        "supply {:.6} = allocated {:.6} + minted {:.6} − burned {:.6}{}",
        tok(b.supply()),
        tok(b.allocated),
        tok(b.minted),
        tok(b.burned),
        if b.genesis { "" } else { " (the genesis entry has not arrived yet)" }
    );
    Ok(())
}

fn verify(c: &Common) -> Result<()> {
    let store = open(c)?;
    let v = store.verify()?;
    let forks = store.equivocations()?;
    if c.json {
        println!(
            "{}",
            json!({"good": v.good, "feeds": v.feeds, "bad": v.bad, "equivocators": forks.iter().map(|f| show(&f.0)).collect::<Vec<_>>()})
        );
    } else {
        println!("{} entries in {} feeds verify", v.good, v.feeds);
        for b in &v.bad {
            println!("bad: {b}");
        }
        for (k, _, _) in &forks {
            println!("equivocation by {} (proof held)", show(k));
        }
    }
    if !v.bad.is_empty() {
        bail!("{} entries do not verify; restore the ledger from a peer or an export", v.bad.len());
    }
    Ok(())
}
