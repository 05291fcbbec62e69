//! Balances, stake and rewards: a pure function of the set of valid entries, in integer
//! micro-units, so every node holding the same entries prints the same numbers whatever order
//! they arrived in.
//!
//! # The economics, and why no one mints by dealing with themselves
//!
//! - **Work is paid by whoever asked for it.** A receipt moves the seeds' reward for the work
//!   (serving: R_inference per million token·models, scaled by the blocks served; training:
//!   per batch and per sample, 1.5× for low loss; both times the server's stake multiplier)
//!   from the countersigning requester to the server, up to the requester's balance. Work
//!   mints nothing, so two colluders countersigning each other's invented work only move
//!   their own money between them.
//! - **Uptime is the only reward minted**, R_base per attested minute times the stake
//!   multiplier, and only for a bonded node attested by another bonded node (each at least
//!   [`Params::min_bond`]). A minute counts once however many attest it. Unbonded identities,
//!   however many collude, mint nothing; bonded ones earn on capital they have locked and can
//!   lose to a slash.
//! - **Only audited work counts**: a server's unaudited receipts in an epoch count only if
//!   its requesters audited at least [`Params::audit_rate_ppm`] of its receipts that epoch,
//!   and never after it was slashed.
//! - **Slashing** burns [`Params::slash_percent`] of the offender's bond (bonded and
//!   unbonding), once per proof: an equivocation (two entries with one seq, checked here) or a
//!   step fraud proof (judged by recomputation, through [`Judge`]). An equivocator's entries
//!   from the forked seq on are ignored.
//! - **Epochs**: receipts count in the epoch the requester attests, uptime in the minute the
//!   challenger attests; stake, unstake and slash entries in the epoch of their feed time.
//!   Within an epoch: unbonded stake returns, then stakes and unstakes, slashes, payments
//!   (by server, then requester), uptime.

use std::collections::{BTreeMap, BTreeSet};

use odin_proto::ledger::{Body, Genesis, Key, Proof, Receipt, Work};

use crate::feed::{proven_equivocation, Checked};

/// One token, in micro-units.
pub const MICRO: u64 = 1_000_000;

/// The reward rules (the seeds' numbers by default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// R_base: minted per attested minute of uptime (0.1 token).
    pub uptime_per_minute: u64,
    /// R_inference: paid per million tokens through the whole model (0.9 token).
    pub serve_per_million: u64,
    /// Paid per training batch (0.001 token).
    pub train_per_batch: u64,
    /// Paid per training sample (0.0001 token).
    pub train_per_sample: u64,
    /// Training pay for a low-loss update, in percent (150).
    pub low_loss_percent: u64,
    /// β in parts per thousand: the multiplier is 1 + β·stake/1000 tokens (100, β = 0.1).
    pub beta_per_mille: u64,
    /// The multiplier's cap, in parts per million (2×).
    pub max_multiplier_ppm: u64,
    /// Share of the bond a slash burns, in percent (50).
    pub slash_percent: u64,
    /// Epochs an unstaked amount stays bonded (and slashable) before it returns (2).
    pub unbond_epochs: u64,
    /// The least share of a server's receipts in an epoch that must be audited for its
    /// unaudited ones to count, in parts per million (5%).
    pub audit_rate_ppm: u64,
    /// The least bond of a node that earns uptime and of a peer whose attestation counts (10
    /// tokens).
    pub min_bond: u64,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            uptime_per_minute: MICRO / 10,
            serve_per_million: 9 * MICRO / 10,
            train_per_batch: MICRO / 1000,
            train_per_sample: MICRO / 10_000,
            low_loss_percent: 150,
            beta_per_mille: 100,
            max_multiplier_ppm: 2 * MICRO,
            slash_percent: 50,
            unbond_epochs: 2,
            audit_rate_ppm: 50_000,
            min_bond: 10 * MICRO,
        }
    }
}

/// Decides step fraud proofs (by recomputing the step; the node has the model).
pub trait Judge {
    /// Whether `proof` shows `offender` signed a step that is not what its inputs give.
    fn guilty(&self, offender: &Key, proof: &[u8]) -> bool;
}

/// A judge that convicts no step proof (where no verdict is known).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoVerdicts;

impl Judge for NoVerdicts {
    fn guilty(&self, _: &Key, _: &[u8]) -> bool {
        false
    }
}

/// One account.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Account {
    /// Spendable.
    pub balance: u64,
    /// Bonded stake.
    pub bond: u64,
    /// Unstaked but not yet returned: (the epoch it returns in, amount).
    pub unbonding: Vec<(u64, u64)>,
    /// Received for serving.
    pub earned_serving: u64,
    /// Received for training.
    pub earned_training: u64,
    /// Minted for uptime.
    pub earned_uptime: u64,
    /// Paid to others for work.
    pub paid: u64,
    /// Burned by slashes.
    pub slashed: u64,
    /// Receipts that counted (as the server).
    pub receipts: u64,
    /// Attested minutes that counted.
    pub minutes: u64,
}

impl Account {
    /// Bonded plus unbonding: what a slash can reach.
    pub fn at_stake(&self) -> u64 {
        self.unbonding.iter().fold(self.bond, |s, (_, a)| s.saturating_add(*a))
    }
}

/// Every account, and the supply's sums.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Books {
    /// Accounts that ever held or earned anything, by key.
    pub accounts: BTreeMap<Key, Account>,
    /// Whether the genesis entry was among the entries.
    pub genesis: bool,
    /// The epoch length, minutes.
    pub epoch_minutes: u32,
    /// The genesis allocations' sum.
    pub allocated: u64,
    /// Minted since (uptime).
    pub minted: u64,
    /// Burned since (slashes).
    pub burned: u64,
    /// Authors caught equivocating, with the seq their feed forked at.
    pub equivocators: BTreeMap<Key, u64>,
    /// The last epoch anything happened in.
    pub last_epoch: u64,
}

impl Books {
    /// Balance, bond and unbonding over all accounts: always allocated + minted − burned.
    pub fn supply(&self) -> u64 {
        self.accounts.values().fold(0u64, |s, a| s.saturating_add(a.balance).saturating_add(a.at_stake()))
    }

    /// The account of `key` (empty if it has none).
    pub fn account(&self, key: &Key) -> Account {
        self.accounts.get(key).cloned().unwrap_or_default()
    }
}

/// What happens in an epoch, gathered before it is applied in the fixed order.
#[derive(Default)]
struct Epoch<'a> {
    bonds: Vec<&'a Checked>,
    slashes: Vec<&'a Checked>,
    receipts: Vec<(Key, &'a Receipt)>,
    minutes: Vec<(Key, Key, u64)>,
}

/// Compute the books from `entries` (each already checked and chained, as the store holds
/// them) of the network whose genesis node is `genesis`.
pub fn compute(genesis: &Key, network: &[u8; 32], entries: &[Checked], p: &Params, judge: &dyn Judge) -> Books {
    let mut books = Books { epoch_minutes: 60, ..Books::default() };
    for c in entries {
        if let (Body::Genesis(g), true) = (&c.entry.body, c.entry.author == *genesis && c.entry.seq == 0) {
            open(&mut books, g);
        }
    }
    for c in entries {
        if let Some((who, seq)) = proven_equivocation(network, c) {
            let s = books.equivocators.entry(who).or_insert(seq);
            *s = (*s).min(seq);
        }
    }
    let live = |c: &&Checked| books.equivocators.get(&c.entry.author).is_none_or(|&fork| c.entry.seq < fork);
    let epoch_ms = u64::from(books.epoch_minutes) * 60_000;
    let mut epochs: BTreeMap<u64, Epoch<'_>> = BTreeMap::new();
    // Entries come sorted by (author, seq) or not; sort what each epoch applies so the result
    // does not depend on it.
    let mut sorted: Vec<&Checked> = entries.iter().filter(live).collect();
    sorted.sort_by_key(|c| (c.entry.author, c.entry.seq));
    for c in sorted {
        let at = c.entry.time_ms / epoch_ms;
        match &c.entry.body {
            Body::Stake(_) | Body::Unstake(_) => epochs.entry(at).or_default().bonds.push(c),
            Body::Slash(_) => epochs.entry(at).or_default().slashes.push(c),
            Body::Receipt(r) => epochs.entry(r.epoch).or_default().receipts.push((c.entry.author, r)),
            Body::Uptime(u) => epochs.entry(u.minute / u64::from(books.epoch_minutes)).or_default().minutes.push((
                c.entry.author,
                u.challenger,
                u.minute,
            )),
            Body::Genesis(_) => {}
        }
    }
    let mut slashed: BTreeSet<[u8; 32]> = BTreeSet::new();
    let mut convicted: BTreeSet<Key> = BTreeSet::new();
    let mut paid: BTreeSet<[u8; 64]> = BTreeSet::new();
    for (e, ep) in epochs {
        books.last_epoch = e;
        release(&mut books, e);
        bonds(&mut books, e, p, &ep.bonds);
        slashes(&mut books, network, p, judge, &ep.slashes, &mut slashed, &mut convicted);
        pay(&mut books, p, &ep.receipts, &convicted, &mut paid);
        uptime(&mut books, p, &ep.minutes, &convicted);
    }
    books
}

fn open(books: &mut Books, g: &Genesis) {
    books.genesis = true;
    books.epoch_minutes = g.epoch_minutes.max(1);
    for (k, v) in &g.allocations {
        let a = books.accounts.entry(*k).or_default();
        a.balance = a.balance.saturating_add(*v);
        books.allocated = books.allocated.saturating_add(*v);
    }
}

fn release(books: &mut Books, e: u64) {
    for a in books.accounts.values_mut() {
        let (due, later): (Vec<_>, Vec<_>) = a.unbonding.iter().partition(|(at, _)| *at <= e);
        a.balance = due.iter().fold(a.balance, |b, (_, v)| b.saturating_add(*v));
        a.unbonding = later;
    }
}

fn bonds(books: &mut Books, e: u64, p: &Params, entries: &[&Checked]) {
    for c in entries {
        let a = books.accounts.entry(c.entry.author).or_default();
        match c.entry.body {
            // More than the balance (or the bond) is refused whole: a partial stake would make
            // the outcome depend on how much arrived first.
            Body::Stake(v) if v <= a.balance => {
                a.balance -= v;
                a.bond = a.bond.saturating_add(v);
            }
            Body::Unstake(v) if v <= a.bond => {
                a.bond -= v;
                a.unbonding.push((e + p.unbond_epochs, v));
            }
            _ => {}
        }
    }
}

fn slashes(
    books: &mut Books,
    network: &[u8; 32],
    p: &Params,
    judge: &dyn Judge,
    entries: &[&Checked],
    done: &mut BTreeSet<[u8; 32]>,
    convicted: &mut BTreeSet<Key>,
) {
    for c in entries {
        let Body::Slash(s) = &c.entry.body else { continue };
        let (proof_id, valid) = match &s.proof {
            Proof::Equivocation(..) => {
                // One slash per fork however many accusers publish it.
                let fork = proven_equivocation(network, c);
                let mut id = blake3::Hasher::new();
                id.update(&s.offender);
                id.update(&fork.map_or(0, |(_, seq)| seq).to_le_bytes());
                (*id.finalize().as_bytes(), fork.is_some())
            }
            Proof::Step(bytes) => match step_key(bytes, &s.offender) {
                // One slash per lied step, however many accusers publish proofs of it.
                Some(key) => (key, judge.guilty(&s.offender, bytes)),
                None => continue,
            },
        };
        if !valid || !done.insert(proof_id) {
            continue;
        }
        convicted.insert(s.offender);
        let a = books.accounts.entry(s.offender).or_default();
        let mut cut = (u128::from(a.at_stake()) * u128::from(p.slash_percent.min(100)) / 100) as u64;
        let total = cut;
        let from_bond = cut.min(a.bond);
        a.bond -= from_bond;
        cut -= from_bond;
        // Then the unbonding amounts, the latest first: leaving early does not escape a slash.
        for (_, v) in a.unbonding.iter_mut().rev() {
            let take = cut.min(*v);
            *v -= take;
            cut -= take;
        }
        a.unbonding.retain(|(_, v)| *v > 0);
        a.slashed = a.slashed.saturating_add(total);
        books.burned = books.burned.saturating_add(total);
    }
}

/// What a step fraud proof is about: the blake3 key of the lied step, when the proof parses
/// and the claim it carries was signed by `offender` (a proof against one server never
/// slashes another).
fn step_key(bytes: &[u8], offender: &Key) -> Option<[u8; 32]> {
    let env = odin_proto::Envelope::<odin_proto::verify::Gossip>::from_bytes(bytes).ok()?;
    let odin_proto::verify::Gossip::Proof(p) = &env.msg;
    let server = libp2p_identity::PeerId::from_bytes(p.claim.server.as_bytes()).ok()?;
    (crate::key::account_of(&server)? == *offender).then(|| p.claim.step_key(&env.model))
}

/// The stake multiplier of a bond, in parts per million: 1 + β·stake/1000 tokens, capped.
pub fn multiplier_ppm(p: &Params, bond: u64) -> u64 {
    let bonus = u128::from(bond) * u128::from(p.beta_per_mille) / 1_000_000;
    (u128::from(MICRO) + bonus).min(u128::from(p.max_multiplier_ppm)) as u64
}

fn pay(
    books: &mut Books,
    p: &Params,
    receipts: &[(Key, &Receipt)],
    convicted: &BTreeSet<Key>,
    seen: &mut BTreeSet<[u8; 64]>,
) {
    // Whether each server's unaudited receipts count this epoch.
    let mut audits: BTreeMap<Key, (u64, u64)> = BTreeMap::new();
    for (server, r) in receipts {
        let t = audits.entry(*server).or_default();
        t.0 += u64::from(r.audited);
        t.1 += 1;
    }
    // Sums per (server, requester): token·blocks in millionths of a whole-model token, so a
    // small receipt rounds once per epoch, not once per receipt.
    const UNIT: u128 = 1_000_000;
    let mut owed: BTreeMap<(Key, Key), (u128, u128, u64)> = BTreeMap::new();
    for (server, r) in receipts {
        // A receipt appended twice is paid once: the countersignature names it.
        if !seen.insert(r.countersig) {
            continue;
        }
        let (audited, total) = audits.get(server).copied().unwrap_or_default();
        let counts = r.audited
            || (!convicted.contains(server)
                && u128::from(audited) * 1_000_000 >= u128::from(p.audit_rate_ppm) * u128::from(total));
        if !counts {
            continue;
        }
        let o = owed.entry((*server, r.requester)).or_default();
        o.2 += 1;
        match r.work {
            Work::Serve { tokens, blocks, model_blocks, .. } => {
                o.0 += u128::from(tokens) * u128::from(blocks) * UNIT / u128::from(model_blocks.max(1));
            }
            Work::Train { batches, samples, low_loss, .. } => {
                let base = u128::from(batches) * u128::from(p.train_per_batch)
                    + u128::from(samples) * u128::from(p.train_per_sample);
                o.1 += if low_loss { base * u128::from(p.low_loss_percent) / 100 } else { base };
            }
        }
    }
    for ((server, requester), (units, train, n)) in owed {
        let mult = u128::from(multiplier_ppm(p, books.account(&server).bond));
        let serve = units * u128::from(p.serve_per_million) / (UNIT * 1_000_000);
        let want = |x: u128| (x * mult / u128::from(MICRO)).min(u128::from(u64::MAX)) as u64;
        let (serve, train) = (want(serve), want(train));
        let payer = books.accounts.entry(requester).or_default();
        // A requester pays what it has: serving first, then training.
        let serve_paid = serve.min(payer.balance);
        let train_paid = train.min(payer.balance - serve_paid);
        payer.balance -= serve_paid + train_paid;
        payer.paid = payer.paid.saturating_add(serve_paid + train_paid);
        let a = books.accounts.entry(server).or_default();
        a.balance = a.balance.saturating_add(serve_paid + train_paid);
        a.earned_serving = a.earned_serving.saturating_add(serve_paid);
        a.earned_training = a.earned_training.saturating_add(train_paid);
        a.receipts += n;
    }
}

fn uptime(books: &mut Books, p: &Params, minutes: &[(Key, Key, u64)], convicted: &BTreeSet<Key>) {
    let bonded = |books: &Books, k: &Key| {
        books.accounts.get(k).is_some_and(|a| a.bond >= p.min_bond)
            && !convicted.contains(k)
            && !books.equivocators.contains_key(k)
    };
    let mut counted: BTreeMap<Key, BTreeSet<u64>> = BTreeMap::new();
    for (node, challenger, minute) in minutes {
        if bonded(books, node) && bonded(books, challenger) {
            counted.entry(*node).or_default().insert(*minute);
        }
    }
    for (node, ms) in counted {
        let mult = u128::from(multiplier_ppm(p, books.account(&node).bond));
        let mint = (u128::from(p.uptime_per_minute) * ms.len() as u128 * mult / u128::from(MICRO)) as u64;
        let a = books.accounts.entry(node).or_default();
        a.balance = a.balance.saturating_add(mint);
        a.earned_uptime = a.earned_uptime.saturating_add(mint);
        a.minutes += ms.len() as u64;
        books.minted = books.minted.saturating_add(mint);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::check;
    use crate::feed::tests::{receipt, signed, uptime as attest, NET};
    use crate::key::Author;
    use odin_proto::ledger::{Signed, Slash};

    /// Feeds built entry by entry, each chained to its author's last.
    struct World {
        genesis: Author,
        heads: BTreeMap<Key, (u64, [u8; 32])>,
        entries: Vec<Checked>,
    }

    const MIN: u64 = 60_000;

    impl World {
        fn new(alloc: &[(&Author, u64)]) -> Self {
            let genesis = Author::generate();
            let mut allocations: Vec<(Key, u64)> = alloc.iter().map(|(a, v)| (a.key(), *v)).collect();
            allocations.sort();
            let mut w = Self { genesis: genesis.clone(), heads: BTreeMap::new(), entries: vec![] };
            w.add(&genesis, 0, Body::Genesis(Genesis { epoch_minutes: 10, allocations }));
            w
        }

        fn add(&mut self, a: &Author, time_ms: u64, body: Body) -> Signed {
            let (seq, prev) = self.heads.get(&a.key()).map_or((0, [0; 32]), |(s, id)| (s + 1, *id));
            let s = signed(a, seq, prev, time_ms, body);
            let c = check(&NET, &s).unwrap();
            self.heads.insert(a.key(), (seq, c.id));
            self.entries.push(c);
            s
        }

        fn books(&self) -> Books {
            compute(&self.genesis.key(), &NET, &self.entries, &Params::default(), &NoVerdicts)
        }
    }

    #[test]
    fn serving_moves_the_seeds_rate_from_requester_to_server_with_the_stake_multiplier() {
        let (server, client) = (Author::generate(), Author::generate());
        let mut w = World::new(&[(&server, 2000 * MICRO), (&client, 100 * MICRO)]);
        // 1M tokens through 2 of 4 blocks is half a million whole-model tokens: 0.45 token.
        w.add(&server, 0, receipt(&server, &client, 0, 1_000_000, true));
        let b = w.books();
        assert_eq!(b.account(&server.key()).earned_serving, 450_000);
        assert_eq!(b.account(&client.key()).balance, 100 * MICRO - 450_000);
        // With 1000 tokens bonded, β = 0.1: × 1.1 in the next epoch.
        w.add(&server, 10 * MIN, Body::Stake(1000 * MICRO));
        w.add(&server, 10 * MIN, receipt(&server, &client, 1, 1_000_000, true));
        assert_eq!(w.books().account(&server.key()).earned_serving, 450_000 + 495_000);
        // Capped at 2× however much is bonded (10,000 tokens reaches it).
        assert_eq!(multiplier_ppm(&Params::default(), 1_000_000 * MICRO), 2 * MICRO);
        assert_eq!(multiplier_ppm(&Params::default(), 10_000 * MICRO), 2 * MICRO);
        assert_eq!(multiplier_ppm(&Params::default(), 5_000 * MICRO), 1_500_000);
    }

    #[test]
    fn colluding_self_dealers_mint_nothing() {
        // Two colluders with 10 tokens each and a third identity with nothing countersign each
        // other's invented work all epoch long and attest each other's uptime every minute.
        let (a, b, c) = (Author::generate(), Author::generate(), Author::generate());
        let mut w = World::new(&[(&a, 10 * MICRO), (&b, 10 * MICRO)]);
        for m in 0..30 {
            let t = m * MIN;
            w.add(&a, t, receipt(&a, &b, m / 10, 5_000_000, true));
            w.add(&b, t, receipt(&b, &a, m / 10, 7_000_000, true));
            w.add(&c, t, receipt(&c, &a, m / 10, 1_000_000, true));
            w.add(&a, t, attest(&a, &b, m));
            w.add(&b, t, attest(&b, &c, m));
            w.add(&c, t, attest(&c, &a, m));
        }
        let books = w.books();
        // What they hold together is what they were given: work moved it, nothing minted it.
        assert_eq!(books.minted, 0);
        assert_eq!(books.supply(), 20 * MICRO);
        let total: u64 = [&a, &b, &c].iter().map(|x| books.account(&x.key()).balance).sum();
        assert_eq!(total, 20 * MICRO);
        assert!(books.account(&a.key()).earned_serving > 0, "the receipts were counted, and paid by the colluders");
    }

    #[test]
    fn uptime_is_minted_per_attested_minute_between_bonded_nodes_once_per_minute() {
        let (a, b, c) = (Author::generate(), Author::generate(), Author::generate());
        let mut w = World::new(&[(&a, 100 * MICRO), (&b, 100 * MICRO)]);
        w.add(&a, 0, Body::Stake(10 * MICRO));
        w.add(&b, 0, Body::Stake(10 * MICRO));
        for m in 0..5 {
            w.add(&a, m * MIN, attest(&a, &b, m));
            w.add(&a, m * MIN, attest(&a, &b, m)); // the same minute twice
            w.add(&c, m * MIN, attest(&c, &b, m)); // c is not bonded
            w.add(&b, m * MIN, attest(&b, &c, m)); // nor is its attestation worth anything
        }
        let books = w.books();
        // 5 minutes × 0.1 × (1 + 0.1·10/1000).
        assert_eq!(books.account(&a.key()).minutes, 5);
        assert_eq!(books.account(&a.key()).earned_uptime, 5 * 100_000 * 1_001_000 / MICRO);
        assert_eq!(books.account(&b.key()).earned_uptime, 0);
        assert_eq!(books.account(&c.key()).earned_uptime, 0);
        assert_eq!(books.minted, books.account(&a.key()).earned_uptime);
        assert_eq!(books.supply(), books.allocated + books.minted - books.burned);
    }

    #[test]
    fn unaudited_work_counts_only_while_audits_pass_at_the_set_rate() {
        let (s, r) = (Author::generate(), Author::generate());
        let mut w = World::new(&[(&r, 100 * MICRO)]);
        // Epoch 0: 1 audited in 20 (5%) — the unaudited 19 count. Epoch 1: 1 in 21 — none do.
        for i in 0..20 {
            w.add(&s, 0, receipt(&s, &r, 0, 1_000_000, i == 0));
        }
        for i in 0..21 {
            w.add(&s, 0, receipt(&s, &r, 1, 1_000_000, i == 0));
        }
        let b = w.books();
        assert_eq!(b.account(&s.key()).receipts, 21);
        assert_eq!(b.account(&s.key()).earned_serving, 21 * 450_000);
    }

    #[test]
    fn a_receipt_appended_twice_is_paid_once() {
        let (s, r) = (Author::generate(), Author::generate());
        let mut w = World::new(&[(&r, 100 * MICRO)]);
        let once = receipt(&s, &r, 0, 1_000_000, true);
        w.add(&s, 0, once.clone());
        w.add(&s, 0, once);
        let b = w.books();
        assert_eq!((b.account(&s.key()).earned_serving, b.account(&s.key()).receipts), (450_000, 1));
    }

    #[test]
    fn a_requester_pays_only_what_it_has() {
        let (s, r) = (Author::generate(), Author::generate());
        let mut w = World::new(&[(&r, 100_000)]);
        w.add(&s, 0, receipt(&s, &r, 0, 1_000_000, true));
        let b = w.books();
        assert_eq!(b.account(&s.key()).earned_serving, 100_000);
        assert_eq!(b.account(&r.key()).balance, 0);
    }

    #[test]
    fn an_equivocator_is_slashed_once_and_its_feed_stops_at_the_fork() {
        let (x, acc1, acc2) = (Author::generate(), Author::generate(), Author::generate());
        let mut w = World::new(&[(&x, 100 * MICRO)]);
        w.add(&x, 0, Body::Stake(40 * MICRO));
        let e1 = w.add(&x, MIN, Body::Unstake(10 * MICRO));
        // x signs a second seq 2 that it shows someone else.
        let (_, prev) = w.heads[&x.key()];
        let a = w.add(&x, MIN, Body::Stake(1));
        let b = signed(&x, 2, prev, MIN, Body::Stake(2));
        assert_eq!(e1.entry().unwrap().seq, 1);
        w.add(&x, MIN, Body::Stake(5 * MICRO)); // after the fork: ignored
        let proof = Proof::Equivocation(Box::new(a.clone()), Box::new(b.clone()));
        w.add(&acc1, 2 * MIN, Body::Slash(Slash { offender: x.key(), proof: proof.clone() }));
        w.add(&acc2, 3 * MIN, Body::Slash(Slash { offender: x.key(), proof }));
        let books = w.books();
        let acct = books.account(&x.key());
        assert_eq!(books.equivocators.get(&x.key()), Some(&2));
        // Bond 30 + unbonding 10 = 40 at stake; half is burned, from the bond first.
        assert_eq!(acct.slashed, 20 * MICRO);
        assert_eq!((acct.bond, acct.at_stake(), acct.balance), (10 * MICRO, 20 * MICRO, 60 * MICRO));
        assert_eq!(books.burned, 20 * MICRO);
        assert_eq!(books.supply(), books.allocated - books.burned);
        // A slash with a bogus proof (two copies of one entry) burns nothing.
        let y = Author::generate();
        let mut w2 = World::new(&[(&y, 10 * MICRO)]);
        w2.add(&y, 0, Body::Stake(10 * MICRO));
        let only = w2.add(&y, 0, Body::Stake(0));
        w2.add(
            &acc1,
            0,
            Body::Slash(Slash {
                offender: y.key(),
                proof: Proof::Equivocation(Box::new(only.clone()), Box::new(only)),
            }),
        );
        assert_eq!(w2.books().burned, 0);
    }

    #[test]
    fn a_step_fraud_proof_slashes_when_the_judge_convicts_and_unbonding_does_not_escape_it() {
        /// Convicts proofs of steps numbered below 10.
        struct Convicts;
        impl Judge for Convicts {
            fn guilty(&self, _: &Key, proof: &[u8]) -> bool {
                let env = odin_proto::Envelope::<odin_proto::verify::Gossip>::from_bytes(proof).unwrap();
                let odin_proto::verify::Gossip::Proof(p) = env.msg;
                p.claim.step < 10
            }
        }
        let (x, acc, acc2, other) = (Author::generate(), Author::generate(), Author::generate(), Author::generate());
        let mut w = World::new(&[(&x, 100 * MICRO), (&other, 100 * MICRO)]);
        w.add(&x, 0, Body::Stake(100 * MICRO));
        w.add(&other, 0, Body::Stake(100 * MICRO));
        w.add(&x, 0, Body::Unstake(100 * MICRO)); // leaving in epoch 0, due back in epoch 2
        let lie = step_proof(&x, &acc, 3);
        let slash = |offender: &Author, proof: &Vec<u8>| {
            Body::Slash(Slash { offender: offender.key(), proof: Proof::Step(proof.clone()) })
        };
        w.add(&acc, 10 * MIN, slash(&x, &lie));
        // The same lie proven by a second accuser (other bytes): burned once.
        w.add(&acc2, 10 * MIN, slash(&x, &step_proof(&x, &acc2, 3)));
        // A proof the judge does not uphold, and a true proof pinned on someone else.
        w.add(&acc, 10 * MIN, slash(&x, &step_proof(&x, &acc, 12)));
        w.add(&acc, 10 * MIN, slash(&other, &lie));
        w.add(&acc, 10 * MIN, slash(&x, &b"not a proof".to_vec()));
        w.add(&acc, 30 * MIN, Body::Stake(0)); // an entry in epoch 3: the unbonded rest is back
        let b = compute(&w.genesis.key(), &NET, &w.entries, &Params::default(), &Convicts);
        assert_eq!(b.account(&x.key()).slashed, 50 * MICRO);
        assert_eq!(b.account(&x.key()).balance, 50 * MICRO);
        assert_eq!(b.account(&other.key()).slashed, 0);
        assert_eq!(b.burned, 50 * MICRO);
        assert_eq!(compute(&w.genesis.key(), &NET, &w.entries, &Params::default(), &NoVerdicts).burned, 0);
    }

    /// A fraud proof by `accuser` about step `step` of a claim signed (in name) by `offender`.
    fn step_proof(offender: &Author, accuser: &Author, step: u64) -> Vec<u8> {
        use odin_proto::verify::{Claim, Gossip, Proof as StepProof, NO_TOKEN};
        let peer = |a: &Author| odin_proto::PeerBytes::new(&crate::key::peer_id(&a.key()).unwrap().to_bytes()).unwrap();
        let claim = Claim {
            server: peer(offender),
            session: 1,
            step,
            start: 0,
            end: 1,
            input: [0; 32],
            before: [0; 32],
            output: [0; 32],
            after: [0; 32],
            token: NO_TOKEN,
            sig: vec![1; 64],
        };
        let p = StepProof {
            claim,
            input: odin_proto::infer::StepInput::Tokens(vec![1]),
            before: odin_proto::Tensor::encode(&[0.0; 4], 4, odin_proto::Dtype::F32).unwrap(),
            sampling: Default::default(),
            drawn: 0,
            reply: odin_proto::Dtype::F32,
            accuser: peer(accuser),
            sig: vec![2; 64],
        };
        odin_proto::Envelope { model: odin_format::ModelId([1; 32]), msg: Gossip::Proof(Box::new(p)) }.to_bytes()
    }

    #[test]
    fn only_the_named_genesis_allocates() {
        let (a, fake) = (Author::generate(), Author::generate());
        let mut w = World::new(&[(&a, 5)]);
        w.add(
            &fake,
            0,
            Body::Genesis(Genesis { epoch_minutes: 1, allocations: vec![(fake.key(), 1_000_000 * MICRO)] }),
        );
        let b = w.books();
        assert_eq!((b.allocated, b.account(&fake.key()).balance, b.epoch_minutes), (5, 0, 10));
    }

    proptest::proptest! {
        /// Whatever happens and in whatever order the entries arrived, supply is conserved
        /// (allocated + minted − burned) and the books are the same.
        #[test]
        fn books_conserve_supply_and_ignore_arrival_order(ops in proptest::collection::vec((0u8..6, 0usize..4, 0usize..4, 0u64..50, 1u64..3_000_000), 1..60), seed: u64) {
            let people: Vec<Author> = (0..4).map(|_| Author::generate()).collect();
            let mut w = World::new(&[(&people[0], 50 * MICRO), (&people[1], 20 * MICRO), (&people[2], MICRO)]);
            for (kind, i, j, minute, amount) in ops {
                let (x, y) = (&people[i], &people[j]);
                // Feed time never runs back.
                let t = (minute * MIN).max(w.entries.iter().filter(|c| c.entry.author == x.key()).map(|c| c.entry.time_ms).max().unwrap_or(0));
                let body = match kind {
                    0 => Body::Stake(amount * 10),
                    1 => Body::Unstake(amount * 5),
                    2 if i != j => receipt(x, y, minute / 10, amount, amount % 3 == 0),
                    // An attestation is of the entry's own minute.
                    3 if i != j => attest(x, y, t / MIN),
                    4 if i != j => Body::Slash(Slash { offender: y.key(), proof: Proof::Step(step_proof(y, x, amount)) }),
                    _ => Body::Stake(0),
                };
                w.add(x, t, body);
            }
            let b = w.books();
            proptest::prop_assert_eq!(b.supply(), b.allocated + b.minted - b.burned);
            let mut shuffled = w.entries.clone();
            let n = shuffled.len();
            for k in 0..n {
                shuffled.swap(k, (seed as usize).wrapping_mul(k + 7) % n);
            }
            proptest::prop_assert_eq!(compute(&w.genesis.key(), &NET, &shuffled, &Params::default(), &NoVerdicts), b);
        }
    }
}
