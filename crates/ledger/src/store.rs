//! The ledger on disk: every feed this node holds, in SQLite (WAL, `synchronous=FULL`, so an
//! append is on disk when it returns), each entry as the exact bytes its author signed.
//!
//! An entry goes in only after the entry before it in its feed, so what is stored is always
//! whole chains from seq 0. A second entry for a stored (author, seq) is never stored: it is
//! kept as an equivocation proof instead, for the node to publish as a slash.

use std::io::{Read, Write};
use std::path::Path;

use odin_proto::ledger::{Body, Entry, Head, Key, Signed, MAX_ENTRY, SIG_LEN};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::books::{compute, Books, Judge, Params};
use crate::error::{LedgerError, Refused, Result};
use crate::feed::{check, follows, Checked};
use crate::key::{hex, Author};
use crate::network::NetworkId;

/// What became of an entry offered to the store.
#[derive(Debug, Clone, PartialEq)]
pub enum Inserted {
    /// It is new and now stored.
    New,
    /// It was already stored.
    Duplicate,
    /// Another entry with its author and seq is stored: the two prove an equivocation. The
    /// stored one stays; the proof is kept ([`Store::equivocations`]).
    Equivocation {
        /// The one stored first.
        stored: Box<Signed>,
        /// The one offered.
        offered: Box<Signed>,
    },
    /// Another entry with its author and seq is stored, and that equivocation was proven before
    /// (nothing new to publish).
    KnownFork,
    /// The entry before it is not stored yet: fetch the feed from `next` first.
    Gap {
        /// The first seq of the author's feed this store lacks.
        next: u64,
    },
}

/// What `odin ledger verify` found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Verified {
    /// Entries whose signature, network and link to the previous entry all hold.
    pub good: u64,
    /// Feeds.
    pub feeds: u64,
    /// What was wrong with the others, one line each.
    pub bad: Vec<String>,
}

/// The ledger's SQLite file.
pub struct Store {
    db: Connection,
    network: [u8; 32],
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    id BLOB PRIMARY KEY,
    author BLOB NOT NULL,
    seq INTEGER NOT NULL,
    time_ms INTEGER NOT NULL,
    bytes BLOB NOT NULL,
    sig BLOB NOT NULL,
    UNIQUE (author, seq)
);
CREATE TABLE IF NOT EXISTS equivocations (
    author BLOB NOT NULL,
    seq INTEGER NOT NULL,
    a BLOB NOT NULL,
    b BLOB NOT NULL,
    PRIMARY KEY (author, seq)
);
CREATE TABLE IF NOT EXISTS verdicts (proof BLOB PRIMARY KEY, guilty INTEGER NOT NULL);
";

impl Store {
    /// Open (or create) the ledger of `network` at `path`.
    pub fn open(path: &Path, network: [u8; 32]) -> Result<Self> {
        let db = connect(path)?;
        let stored: Option<Vec<u8>> =
            db.query_row("SELECT value FROM meta WHERE name = 'network'", [], |r| r.get(0)).optional()?;
        match stored {
            None => {
                db.execute("INSERT INTO meta (name, value) VALUES ('network', ?1)", [&network[..]])?;
            }
            Some(n) if n == network => {}
            Some(n) => {
                return Err(LedgerError::Mismatch(format!(
                    "{} holds the ledger of network {}, not {}; use another --data-dir",
                    path.display(),
                    hex(&n),
                    hex(&network)
                )))
            }
        }
        Ok(Self { db, network })
    }

    /// Open an existing ledger, whatever its network (`odin ledger` reads one this way).
    pub fn open_existing(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(LedgerError::Mismatch(format!(
                "there is no ledger at {}; pass the --data-dir of a node that has run",
                path.display()
            )));
        }
        let db = connect(path)?;
        let n: Option<Vec<u8>> =
            db.query_row("SELECT value FROM meta WHERE name = 'network'", [], |r| r.get(0)).optional()?;
        let network = n.and_then(|n| <[u8; 32]>::try_from(n).ok()).ok_or_else(|| {
            LedgerError::Mismatch(format!("{} is not an odin ledger (no network id)", path.display()))
        })?;
        Ok(Self { db, network })
    }

    /// The network this ledger belongs to.
    pub fn network(&self) -> [u8; 32] {
        self.network
    }

    /// Record the network's name and genesis node (what `odin ledger` reads the books with);
    /// refused if they do not give this ledger's network id.
    pub fn set_network(&self, n: &NetworkId) -> Result<()> {
        if n.id() != self.network {
            return Err(LedgerError::Mismatch(format!("network {n} is not the one this ledger holds")));
        }
        self.db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('name', ?1)", [n.name.as_bytes()])?;
        self.db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('genesis', ?1)", [&n.genesis[..]])?;
        Ok(())
    }

    /// The network's name and genesis node, as [`Store::set_network`] recorded them.
    pub fn network_id(&self) -> Result<Option<NetworkId>> {
        let get = |k: &str| -> Result<Option<Vec<u8>>> {
            Ok(self.db.query_row("SELECT value FROM meta WHERE name = ?1", [k], |r| r.get(0)).optional()?)
        };
        let (Some(name), Some(genesis)) = (get("name")?, get("genesis")?) else { return Ok(None) };
        Ok(Some(NetworkId::new(&String::from_utf8_lossy(&name), id32(&genesis)?)))
    }

    /// Sign `body` as the next entry of `author`'s feed, dated `time_ms` (or its previous
    /// entry's time, if later), and store it. On disk when this returns.
    pub fn append(&mut self, author: &Author, time_ms: u64, body: Body) -> Result<Checked> {
        let tx = self.db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let me = author.key();
        let head: Option<(i64, Vec<u8>, i64)> = tx
            .query_row(
                "SELECT seq, id, time_ms FROM entries WHERE author = ?1 ORDER BY seq DESC LIMIT 1",
                [&me[..]],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let (seq, prev, time_ms) = match head {
            None => (0, [0; 32], time_ms),
            Some((s, id, t)) => (s as u64 + 1, id32(&id)?, time_ms.max(t as u64)),
        };
        let bytes = Entry { network: self.network, author: me, seq, prev, time_ms, body }.to_bytes();
        if bytes.len() > MAX_ENTRY {
            return Err(Refused::Malformed(format!(
                "an entry of {} bytes is over the cap of {MAX_ENTRY}",
                bytes.len()
            ))
            .into());
        }
        let sig = author.sign(&bytes);
        let signed = Signed { bytes, sig };
        // What peers would refuse must not enter the feed: every later entry chains to it.
        let c = check(&self.network, &signed)?;
        put(&tx, &c.id, &c.entry, &c.signed)?;
        tx.commit()?;
        Ok(c)
    }

    /// Offer an entry from a peer: checked on its own and against the feed, then stored.
    pub fn insert(&mut self, s: &Signed) -> Result<Inserted> {
        let c = check(&self.network, s)?;
        let tx = self.db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = insert_checked(&tx, &c)?;
        tx.commit()?;
        Ok(out)
    }

    /// Offer many entries in one transaction (one fsync): a fetched range. Entries are taken in
    /// order, so a range from seq `k` goes in whole once `k - 1` is stored. Stops at the
    /// first refused entry and returns what it was.
    pub fn insert_all(&mut self, entries: &[Signed]) -> Result<Vec<Inserted>> {
        let checked = entries.iter().map(|s| check(&self.network, s)).collect::<std::result::Result<Vec<_>, _>>()?;
        let tx = self.db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut out = Vec::with_capacity(checked.len());
        for c in &checked {
            out.push(insert_checked(&tx, c)?);
        }
        tx.commit()?;
        Ok(out)
    }

    /// The newest entry held of `author`'s feed: (seq, id).
    pub fn head(&self, author: &Key) -> Result<Option<(u64, [u8; 32])>> {
        let h: Option<(i64, Vec<u8>)> = self
            .db
            .query_row("SELECT seq, id FROM entries WHERE author = ?1 ORDER BY seq DESC LIMIT 1", [&author[..]], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        h.map(|(s, id)| Ok((s as u64, id32(&id)?))).transpose()
    }

    /// The head of every feed held, sorted by author.
    pub fn heads(&self) -> Result<Vec<Head>> {
        let mut st = self.db.prepare(
            "SELECT e.author, e.seq, e.id FROM entries e
             JOIN (SELECT author, MAX(seq) AS seq FROM entries GROUP BY author) m
             ON e.author = m.author AND e.seq = m.seq ORDER BY e.author",
        )?;
        let rows = st.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?, r.get::<_, Vec<u8>>(2)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (a, s, id) = row?;
            out.push(Head { author: id32(&a)?, seq: s as u64, id: id32(&id)? });
        }
        Ok(out)
    }

    /// Entries `from..from + count` of `author`'s feed that are held, in order.
    pub fn range(&self, author: &Key, from: u64, count: usize) -> Result<Vec<Signed>> {
        self.range_within(author, from, count, usize::MAX)
    }

    /// [`Store::range`], stopping once the entries' bytes pass `max_bytes` (at least one entry
    /// is returned): what a peer's range request gets, whatever size the entries are.
    pub fn range_within(&self, author: &Key, from: u64, count: usize, max_bytes: usize) -> Result<Vec<Signed>> {
        let from = i64::try_from(from).unwrap_or(i64::MAX);
        let mut st = self
            .db
            .prepare_cached("SELECT bytes, sig FROM entries WHERE author = ?1 AND seq >= ?2 ORDER BY seq LIMIT ?3")?;
        let mut rows = st.query(params![&author[..], from, count as i64])?;
        let (mut out, mut bytes) = (Vec::new(), 0usize);
        while let Some(r) = rows.next()? {
            let s = Signed { bytes: r.get(0)?, sig: sig64(&r.get::<_, Vec<u8>>(1)?)? };
            bytes = bytes.saturating_add(s.bytes.len() + 4 + SIG_LEN);
            if bytes > max_bytes && !out.is_empty() {
                break;
            }
            out.push(s);
        }
        Ok(out)
    }

    /// Every stored entry, decoded, by author then seq. Signatures were checked on the way in
    /// ([`Store::verify`] checks them again).
    pub fn entries(&self) -> Result<Vec<Checked>> {
        let mut st = self.db.prepare("SELECT id, bytes, sig FROM entries ORDER BY author, seq")?;
        let rows =
            st.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?, r.get::<_, Vec<u8>>(2)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, bytes, sig) = row?;
            let signed = Signed { bytes, sig: sig64(&sig)? };
            let entry = signed.entry().map_err(|e| LedgerError::Damaged { id: hex(&id), why: e.to_string() })?;
            out.push(Checked { id: id32(&id)?, signed, entry });
        }
        Ok(out)
    }

    /// How many entries are stored.
    pub fn len(&self) -> Result<u64> {
        Ok(self.db.query_row("SELECT COUNT(*) FROM entries", [], |r| r.get::<_, i64>(0))? as u64)
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// The equivocation proofs seen: (author, the stored entry, the other).
    pub fn equivocations(&self) -> Result<Vec<(Key, Signed, Signed)>> {
        let mut st = self.db.prepare("SELECT author, a, b FROM equivocations ORDER BY author, seq")?;
        let rows =
            st.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?, r.get::<_, Vec<u8>>(2)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (k, a, b) = row?;
            let read =
                |b: &[u8]| Signed::from_bytes(b).map_err(|e| LedgerError::Damaged { id: hex(&k), why: e.to_string() });
            out.push((id32(&k)?, read(&a)?, read(&b)?));
        }
        Ok(out)
    }

    /// Re-check every stored entry: signature, network, and its link to the one before.
    pub fn verify(&self) -> Result<Verified> {
        let mut st = self.db.prepare("SELECT id, author, seq, bytes, sig FROM entries ORDER BY author, seq")?;
        let mut rows = st.query([])?;
        let mut out = Verified::default();
        let mut prev: Option<Checked> = None;
        while let Some(r) = rows.next()? {
            let (id, author, seq): (Vec<u8>, Vec<u8>, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
            let signed = Signed { bytes: r.get(3)?, sig: sig64(&r.get::<_, Vec<u8>>(4)?)? };
            let c = match check(&self.network, &signed) {
                Ok(c) => c,
                Err(e) => {
                    out.bad.push(format!("{} #{seq}: {e}", hex(&author)));
                    prev = None;
                    continue;
                }
            };
            if c.id[..] != id[..] || c.entry.author[..] != author[..] || c.entry.seq != seq as u64 {
                out.bad.push(format!("{} #{seq}: stored under another id, author or seq", hex(&author)));
                prev = None;
                continue;
            }
            let new_feed = prev.as_ref().is_none_or(|p| p.entry.author != c.entry.author);
            let linked = if new_feed {
                if c.entry.seq == 0 {
                    Ok(())
                } else {
                    Err(Refused::Chain { seq: c.entry.seq, why: "the feed does not start at 0".into() })
                }
            } else {
                prev.as_ref().map_or(Ok(()), |p| follows(p, &c))
            };
            match linked {
                Ok(()) => {
                    out.good += 1;
                    out.feeds += u64::from(new_feed);
                }
                Err(e) => out.bad.push(format!("{} #{seq}: {e}", hex(&author))),
            }
            prev = Some(c);
        }
        Ok(out)
    }

    /// Write every entry, feed by feed in seq order, as [`Signed::to_bytes`] one after another
    /// (what [`Store::import`] and `odin ledger export` read and write). Returns the count.
    pub fn export(&self, w: &mut impl Write) -> Result<u64> {
        let mut st = self.db.prepare("SELECT bytes, sig FROM entries ORDER BY author, seq")?;
        let mut rows = st.query([])?;
        let mut n = 0;
        while let Some(r) = rows.next()? {
            let s = Signed { bytes: r.get(0)?, sig: sig64(&r.get::<_, Vec<u8>>(1)?)? };
            w.write_all(&s.to_bytes())
                .map_err(|source| LedgerError::Io { what: "cannot write the export".into(), source })?;
            n += 1;
        }
        Ok(n)
    }

    /// Read what [`Store::export`] wrote and offer every entry; returns (new, already held).
    pub fn import(&mut self, r: &mut impl Read) -> Result<(u64, u64)> {
        let mut all = Vec::new();
        r.read_to_end(&mut all).map_err(|source| LedgerError::Io { what: "cannot read the export".into(), source })?;
        let mut rest = &all[..];
        let mut batch = Vec::new();
        while !rest.is_empty() {
            let n = rest.get(..4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize).unwrap_or(usize::MAX);
            let len = n.saturating_add(4 + SIG_LEN);
            if n > MAX_ENTRY || len > rest.len() {
                return Err(
                    Refused::Malformed("the export ends inside an entry or holds an oversized one".into()).into()
                );
            }
            batch.push(Signed::from_bytes(&rest[..len]).map_err(|e| Refused::Malformed(e.to_string()))?);
            rest = &rest[len..];
        }
        let (mut new, mut old) = (0, 0);
        for res in self.insert_all(&batch)? {
            match res {
                Inserted::New => new += 1,
                Inserted::Duplicate => old += 1,
                Inserted::Equivocation { .. } | Inserted::KnownFork => {}
                Inserted::Gap { next } => {
                    return Err(Refused::Chain { seq: next, why: "the export lacks the start of a feed".into() }.into())
                }
            }
        }
        Ok((new, old))
    }

    /// Record a judge's verdict that `proof` does (or does not) convict `offender`, so balances
    /// read later and elsewhere on this node (`odin ledger balance`) need not recompute it.
    pub fn set_verdict(&self, offender: &Key, proof: &[u8], guilty: bool) -> Result<()> {
        self.db.execute(
            "INSERT OR REPLACE INTO verdicts (proof, guilty) VALUES (?1, ?2)",
            params![&verdict_key(offender, proof)[..], guilty],
        )?;
        Ok(())
    }

    /// The recorded verdict on `proof` against `offender`, if any.
    pub fn verdict(&self, offender: &Key, proof: &[u8]) -> Result<Option<bool>> {
        Ok(self
            .db
            .query_row("SELECT guilty FROM verdicts WHERE proof = ?1", [&verdict_key(offender, proof)[..]], |r| {
                r.get(0)
            })
            .optional()?)
    }
}

/// A verdict is about one proof against one offender: the same proof names no one else.
fn verdict_key(offender: &Key, proof: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(offender);
    h.update(proof);
    *h.finalize().as_bytes()
}

/// Step fraud proofs count as this node's recorded verdicts say.
impl Judge for Store {
    fn guilty(&self, offender: &Key, proof: &[u8]) -> bool {
        self.verdict(offender, proof).ok().flatten().unwrap_or(false)
    }
}

impl Store {
    /// The books over every stored entry, for the network opened by `genesis`.
    pub fn books(&self, genesis: &Key, params: &Params) -> Result<Books> {
        Ok(compute(genesis, &self.network, &self.entries()?, params, self))
    }
}

fn connect(path: &Path) -> Result<Connection> {
    let db = Connection::open(path)?;
    // WAL: readers (the API, `odin ledger`) do not block the node's appends. FULL: a commit
    // is on disk before it returns, so an acknowledged entry survives a kill or power loss.
    db.pragma_update(None, "journal_mode", "WAL")?;
    db.pragma_update(None, "synchronous", "FULL")?;
    db.busy_timeout(std::time::Duration::from_secs(10))?;
    db.execute_batch(SCHEMA)?;
    Ok(db)
}

fn insert_checked(tx: &rusqlite::Transaction<'_>, c: &Checked) -> Result<Inserted> {
    let e = &c.entry;
    let seq = e.seq as i64;
    let same: Option<(Vec<u8>, Vec<u8>, Vec<u8>)> = tx
        .query_row(
            "SELECT id, bytes, sig FROM entries WHERE author = ?1 AND seq = ?2",
            params![&e.author[..], seq],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    if let Some((id, bytes, sig)) = same {
        if id[..] == c.id[..] {
            return Ok(Inserted::Duplicate);
        }
        let stored = Signed { bytes, sig: sig64(&sig)? };
        let added = tx.execute(
            "INSERT OR IGNORE INTO equivocations (author, seq, a, b) VALUES (?1, ?2, ?3, ?4)",
            params![&e.author[..], seq, stored.to_bytes(), c.signed.to_bytes()],
        )?;
        if added == 0 {
            return Ok(Inserted::KnownFork);
        }
        return Ok(Inserted::Equivocation { stored: Box::new(stored), offered: Box::new(c.signed.clone()) });
    }
    if e.seq > 0 {
        let prev: Option<(Vec<u8>, Vec<u8>, Vec<u8>)> = tx
            .query_row(
                "SELECT id, bytes, sig FROM entries WHERE author = ?1 AND seq = ?2",
                params![&e.author[..], seq - 1],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((id, bytes, sig)) = prev else {
            let next: Option<i64> =
                tx.query_row("SELECT MAX(seq) FROM entries WHERE author = ?1", [&e.author[..]], |r| r.get(0))?;
            return Ok(Inserted::Gap { next: next.map_or(0, |s| s as u64 + 1) });
        };
        let signed = Signed { bytes, sig: sig64(&sig)? };
        let entry = signed.entry().map_err(|err| LedgerError::Damaged { id: hex(&id), why: err.to_string() })?;
        follows(&Checked { id: id32(&id)?, signed, entry }, c)?;
    }
    put(tx, &c.id, e, &c.signed)?;
    Ok(Inserted::New)
}

fn put(tx: &rusqlite::Transaction<'_>, id: &[u8; 32], e: &Entry, s: &Signed) -> Result<()> {
    tx.prepare_cached("INSERT INTO entries (id, author, seq, time_ms, bytes, sig) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?
        .execute(params![&id[..], &e.author[..], e.seq as i64, e.time_ms as i64, &s.bytes, &s.sig[..]])?;
    Ok(())
}

fn id32(b: &[u8]) -> Result<[u8; 32]> {
    <[u8; 32]>::try_from(b)
        .map_err(|_| LedgerError::Damaged { id: hex(b), why: "a stored id or key is not 32 bytes".into() })
}

fn sig64(b: &[u8]) -> Result<[u8; SIG_LEN]> {
    <[u8; SIG_LEN]>::try_from(b)
        .map_err(|_| LedgerError::Damaged { id: hex(b), why: "a stored signature is not 64 bytes".into() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::tests::{signed, NET};

    fn store(dir: &tempfile::TempDir) -> Store {
        Store::open(&dir.path().join("ledger.sqlite"), NET).unwrap()
    }

    #[test]
    fn appends_chain_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let a = Author::generate();
        let mut s = store(&dir);
        let e0 = s.append(&a, 100, Body::Stake(1)).unwrap();
        let e1 = s.append(&a, 50, Body::Stake(2)).unwrap();
        assert_eq!((e1.entry.seq, e1.entry.prev, e1.entry.time_ms), (1, e0.id, 100), "time never runs back");
        drop(s);
        let s = store(&dir);
        assert_eq!(s.head(&a.key()).unwrap(), Some((1, e1.id)));
        assert_eq!(s.range(&a.key(), 0, 10).unwrap(), vec![e0.signed, e1.signed]);
        assert_eq!(s.verify().unwrap(), Verified { good: 2, feeds: 1, bad: vec![] });
        assert!(Store::open(&dir.path().join("ledger.sqlite"), [1; 32]).is_err(), "another network's file");
    }

    #[test]
    fn foreign_entries_go_in_only_after_their_predecessor_and_a_fork_is_kept_as_proof() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = store(&dir);
        let a = Author::generate();
        let e0 = signed(&a, 0, [0; 32], 1, Body::Stake(1));
        let e1 = signed(&a, 1, e0.id(), 2, Body::Stake(2));
        let e2 = signed(&a, 2, e1.id(), 3, Body::Stake(3));
        assert_eq!(s.insert(&e1).unwrap(), Inserted::Gap { next: 0 });
        assert_eq!(s.insert_all(&[e0.clone(), e1.clone()]).unwrap(), vec![Inserted::New, Inserted::New]);
        assert_eq!(s.insert(&e1).unwrap(), Inserted::Duplicate);
        // Replayed out of order: an entry naming the wrong predecessor is refused.
        let reordered = signed(&a, 2, e0.id(), 3, Body::Stake(3));
        assert!(matches!(s.insert(&reordered), Err(LedgerError::Refused(Refused::Chain { .. }))));
        s.insert(&e2).unwrap();
        let fork = signed(&a, 1, e0.id(), 2, Body::Stake(99));
        let Inserted::Equivocation { stored, offered } = s.insert(&fork).unwrap() else {
            panic!("not an equivocation")
        };
        assert_eq!((*stored, *offered), (e1.clone(), fork.clone()));
        assert_eq!(s.insert(&fork).unwrap(), Inserted::KnownFork, "a fork is proven once");
        assert_eq!(s.equivocations().unwrap(), vec![(a.key(), e1, fork)]);
        assert_eq!(s.len().unwrap(), 3);
        // Forged and replayed-into-another-network entries never reach the table.
        let mut forged = e2.clone();
        forged.sig[5] ^= 1;
        assert!(matches!(s.insert(&forged), Err(LedgerError::Refused(Refused::BadSignature))));
        let mut other = Store::open(&dir.path().join("other.sqlite"), [9; 32]).unwrap();
        assert!(matches!(other.insert(&e0), Err(LedgerError::Refused(Refused::OtherNetwork))));
    }

    #[test]
    fn export_and_import_carry_every_feed_and_verify_finds_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = store(&dir);
        let (a, b) = (Author::generate(), Author::generate());
        for i in 0..5 {
            s.append(&a, i, Body::Stake(i)).unwrap();
            s.append(&b, i, Body::Unstake(i)).unwrap();
        }
        let mut out = Vec::new();
        assert_eq!(s.export(&mut out).unwrap(), 10);
        let mut t = Store::open(&dir.path().join("copy.sqlite"), NET).unwrap();
        assert_eq!(t.import(&mut &out[..]).unwrap(), (10, 0));
        assert_eq!(t.import(&mut &out[..]).unwrap(), (0, 10));
        assert_eq!(t.heads().unwrap(), s.heads().unwrap());
        assert!(t.import(&mut &out[..out.len() - 1]).is_err(), "a cut export");
        // Someone edits a stored entry's bytes behind the node's back.
        t.db.execute(
            "UPDATE entries SET bytes = ?1 WHERE seq = 2 AND author = ?2",
            params![vec![0u8; 10], &a.key()[..]],
        )
        .unwrap();
        let v = t.verify().unwrap();
        assert_eq!(v.good, 8, "{v:?}");
        assert_eq!(v.bad.len(), 2, "the edited entry, and the next no longer links: {v:?}");
    }
}
