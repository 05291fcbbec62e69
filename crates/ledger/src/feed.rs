//! The rules an entry meets on its own and against the entry before it in its feed. Pure:
//! the store applies them on every insert, `odin ledger verify` again over the whole file,
//! and the balances read only what passed.

use odin_proto::ledger::{Body, Entry, Key, Proof, Signed};

use crate::error::Refused;
use crate::key::verify;

/// How far an uptime entry's date may be from the minute it attests.
pub const MAX_UPTIME_SKEW_MS: u64 = 10 * 60_000;

/// An entry that passed [`check`]: its bytes, what they say, and its id.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    /// As signed and stored.
    pub signed: Signed,
    /// Decoded.
    pub entry: Entry,
    /// blake3 of the bytes.
    pub id: [u8; 32],
}

/// Check `s` on its own as an entry of `network`: it decodes, names the network, is signed by
/// its author (strictly), and whatever it carries from another party verifies.
pub fn check(network: &[u8; 32], s: &Signed) -> Result<Checked, Refused> {
    let entry = s.entry().map_err(|e| Refused::Malformed(e.to_string()))?;
    if &entry.network != network {
        return Err(Refused::OtherNetwork);
    }
    // SQLite stores integers signed: a seq above i64::MAX could not be kept.
    if entry.seq > i64::MAX as u64 {
        return Err(Refused::Seq(entry.seq));
    }
    if !verify(&entry.author, &s.bytes, &s.sig) {
        return Err(Refused::BadSignature);
    }
    if entry.seq == 0 && entry.prev != [0; 32] {
        return Err(Refused::Chain { seq: 0, why: "the first entry names a previous one".into() });
    }
    let author = entry.author;
    match &entry.body {
        Body::Genesis(_) if entry.seq != 0 => return Err(Refused::Genesis),
        Body::Receipt(r) => {
            if r.requester == author {
                return Err(Refused::SelfDealing("requester"));
            }
            if !verify(&r.requester, &r.countersign_bytes(network, &author), &r.countersig) {
                return Err(Refused::BadWitness("requester's countersignature"));
            }
        }
        Body::Uptime(u) => {
            if u.challenger == author {
                return Err(Refused::SelfDealing("challenger"));
            }
            // The attested minute is the entry's own (give or take the clocks' skew): with feed
            // time never running back, a feed cannot collect minutes before its last entry.
            let at = u.minute.saturating_mul(60_000);
            if at.abs_diff(entry.time_ms) > MAX_UPTIME_SKEW_MS {
                return Err(Refused::Malformed(format!(
                    "an attestation of minute {} in an entry dated {} ms",
                    u.minute, entry.time_ms
                )));
            }
            let msg = odin_proto::ledger::Uptime::attest_bytes(network, &author, u.minute, &u.nonce);
            if !verify(&u.challenger, &msg, &u.attestation) {
                return Err(Refused::BadWitness("challenger's attestation"));
            }
        }
        Body::Slash(sl) if sl.offender == author => return Err(Refused::SelfDealing("accuser")),
        _ => {}
    }
    let id = s.id();
    Ok(Checked { signed: s.clone(), entry, id })
}

/// Check that `next` follows `prev` in one feed: the next seq, naming `prev`'s id, and not
/// dated before it (so an entry cannot be backdated past the one before it).
pub fn follows(prev: &Checked, next: &Checked) -> Result<(), Refused> {
    let (p, n) = (&prev.entry, &next.entry);
    let seq = n.seq;
    if p.author != n.author {
        return Err(Refused::Chain { seq, why: "another author's feed".into() });
    }
    if Some(seq) != p.seq.checked_add(1) {
        return Err(Refused::Chain { seq, why: format!("it comes after {}", p.seq) });
    }
    if n.prev != prev.id {
        return Err(Refused::Chain { seq, why: "it names another previous entry (reordered or forked)".into() });
    }
    if n.time_ms < p.time_ms {
        return Err(Refused::Chain {
            seq,
            why: format!("dated {} ms before the entry it follows", p.time_ms - n.time_ms),
        });
    }
    Ok(())
}

/// Whether `a` and `b` prove that `offender` equivocated: two different entries of its feed,
/// both validly signed for `network`, with one seq. Returns that seq.
pub fn equivocation(network: &[u8; 32], offender: &Key, a: &Signed, b: &Signed) -> Option<u64> {
    if a.bytes == b.bytes {
        return None;
    }
    let (ca, cb) = (check(network, a).ok()?, check(network, b).ok()?);
    let same = ca.entry.author == *offender && cb.entry.author == *offender && ca.entry.seq == cb.entry.seq;
    same.then_some(ca.entry.seq)
}

/// The equivocation a slash entry proves, if it carries one: (offender, seq).
pub fn proven_equivocation(network: &[u8; 32], c: &Checked) -> Option<(Key, u64)> {
    match &c.entry.body {
        Body::Slash(s) => match &s.proof {
            Proof::Equivocation(a, b) => equivocation(network, &s.offender, a, b).map(|seq| (s.offender, seq)),
            Proof::Step(_) => None,
        },
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::key::Author;
    use odin_proto::ledger::{Receipt, Uptime, Work};

    pub const NET: [u8; 32] = [0x0d; 32];

    /// `author`'s entry `seq` after `prev`, signed.
    pub fn signed(a: &Author, seq: u64, prev: [u8; 32], time_ms: u64, body: Body) -> Signed {
        let e = Entry { network: NET, author: a.key(), seq, prev, time_ms, body };
        let bytes = e.to_bytes();
        let sig = a.sign(&bytes);
        Signed { bytes, sig }
    }

    /// A serving receipt from `server` countersigned by `requester` (each a different session).
    pub fn receipt(server: &Author, requester: &Author, epoch: u64, tokens: u64, audited: bool) -> Body {
        static SESSION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let session = SESSION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut r = Receipt {
            requester: requester.key(),
            epoch,
            work: Work::Serve { session, tokens, blocks: 2, model_blocks: 4 },
            commitment: [3; 32],
            audited,
            countersig: [0; 64],
        };
        r.countersig = requester.sign(&r.countersign_bytes(&NET, &server.key()));
        Body::Receipt(r)
    }

    /// `node`'s uptime attested by `challenger` for `minute`.
    pub fn uptime(node: &Author, challenger: &Author, minute: u64) -> Body {
        let nonce = [minute as u8; 32];
        let attestation = challenger.sign(&Uptime::attest_bytes(&NET, &node.key(), minute, &nonce));
        Body::Uptime(Uptime { challenger: challenger.key(), minute, nonce, attestation })
    }

    #[test]
    fn a_good_entry_passes_and_each_kind_of_forgery_is_refused_for_its_reason() {
        let (a, b) = (Author::generate(), Author::generate());
        let s = signed(&a, 0, [0; 32], 5, receipt(&a, &b, 0, 10, true));
        let c = check(&NET, &s).unwrap();
        assert_eq!(c.id, s.id());

        // Forged: one byte of the body changed after signing.
        let mut forged = s.clone();
        let n = forged.bytes.len();
        forged.bytes[n - 70] ^= 1;
        assert!(matches!(check(&NET, &forged), Err(Refused::BadSignature) | Err(Refused::Malformed(_))));
        // Signed by someone else.
        let mut stolen = s.clone();
        stolen.sig = b.sign(&s.bytes);
        assert_eq!(check(&NET, &stolen), Err(Refused::BadSignature));
        // Replayed into another network.
        assert_eq!(check(&[1; 32], &s), Err(Refused::OtherNetwork));
        // A countersignature made for another server, pasted in.
        let Body::Receipt(mut r) = receipt(&b, &b, 0, 10, true) else { unreachable!() };
        r.requester = b.key();
        let pasted = signed(&a, 0, [0; 32], 5, Body::Receipt(r));
        assert_eq!(check(&NET, &pasted), Err(Refused::BadWitness("requester's countersignature")));
        // Self-dealing: countersigning one's own work, attesting one's own uptime.
        assert_eq!(
            check(&NET, &signed(&a, 0, [0; 32], 5, receipt(&a, &a, 0, 10, true))),
            Err(Refused::SelfDealing("requester"))
        );
        assert_eq!(check(&NET, &signed(&a, 0, [0; 32], 5, uptime(&a, &a, 7))), Err(Refused::SelfDealing("challenger")));
        // An attestation b made for another node, pasted into a's feed.
        let c2 = Author::generate();
        assert_eq!(
            check(&NET, &signed(&a, 0, [0; 32], 5, uptime(&c2, &b, 7))),
            Err(Refused::BadWitness("challenger's attestation"))
        );
        // An attestation of a minute far from the entry's date (a feed collecting old minutes).
        let far = check(&NET, &signed(&a, 0, [0; 32], 5, uptime(&a, &b, 100)));
        assert!(matches!(&far, Err(Refused::Malformed(m)) if m.contains("minute 100")), "{far:?}");
        // A genesis anywhere but first.
        let g = Body::Genesis(odin_proto::ledger::Genesis { epoch_minutes: 1, allocations: vec![] });
        assert_eq!(check(&NET, &signed(&a, 1, [1; 32], 5, g)), Err(Refused::Genesis));
    }

    #[test]
    fn a_feed_links_by_id_seq_and_time_and_a_reorder_breaks_it() {
        let a = Author::generate();
        let e0 = check(&NET, &signed(&a, 0, [0; 32], 10, Body::Stake(1))).unwrap();
        let e1 = check(&NET, &signed(&a, 1, e0.id, 10, Body::Stake(2))).unwrap();
        let e2 = check(&NET, &signed(&a, 2, e1.id, 11, Body::Stake(3))).unwrap();
        follows(&e0, &e1).unwrap();
        follows(&e1, &e2).unwrap();
        assert!(follows(&e0, &e2).is_err(), "a skipped entry");
        assert!(follows(&e1, &e0).is_err(), "reordered");
        let fork = check(&NET, &signed(&a, 2, e0.id, 11, Body::Stake(3))).unwrap();
        assert!(follows(&e1, &fork).unwrap_err().to_string().contains("another previous entry"));
        let back = check(&NET, &signed(&a, 2, e1.id, 9, Body::Stake(3))).unwrap();
        assert!(follows(&e1, &back).unwrap_err().to_string().contains("before the entry it follows"));
        let other = check(&NET, &signed(&Author::generate(), 2, e1.id, 11, Body::Stake(3))).unwrap();
        assert!(follows(&e1, &other).is_err());
    }

    #[test]
    fn two_entries_with_one_seq_prove_equivocation_and_nothing_else_does() {
        let a = Author::generate();
        let x = signed(&a, 4, [1; 32], 10, Body::Stake(1));
        let y = signed(&a, 4, [1; 32], 10, Body::Stake(2));
        assert_eq!(equivocation(&NET, &a.key(), &x, &y), Some(4));
        assert_eq!(equivocation(&NET, &a.key(), &x, &x), None);
        let z = signed(&a, 5, [1; 32], 10, Body::Stake(2));
        assert_eq!(equivocation(&NET, &a.key(), &x, &z), None);
        let b = Author::generate();
        assert_eq!(equivocation(&NET, &b.key(), &x, &y), None, "names the wrong offender");
        let mut bad = y.clone();
        bad.sig[0] ^= 1;
        assert_eq!(equivocation(&NET, &a.key(), &x, &bad), None, "a forged second entry");
    }
}
