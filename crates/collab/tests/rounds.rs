//! Training rounds between real members on loopback: agreement bit for bit, and a run that
//! goes on through a killed member, a silent one, a slow one and a newcomer.

mod common;

use common::*;
use odin_collab::Behaviour;

#[test]
fn members_agree_bit_for_bit_and_the_held_out_loss_falls() {
    logs();
    let tmp = tempfile::tempdir().unwrap();
    let run = run_config(tmp.path(), "rounds = 4\ninner_steps = 4\nquorum = 2\ndeadline_ms = 20000\nvote_ms = 5000");
    let mut first = Start::new(&run, tmp.path().join("a"), 2);
    first.heldout_batches = 2;
    let a = launch(first);
    let others: Vec<Running> = ["b", "c"]
        .iter()
        .map(|n| {
            let mut s = Start::new(&run, tmp.path().join(n), 2);
            s.bootstrap = a.addrs.clone();
            launch(s)
        })
        .collect();
    let (sa, ra) = a.finished();
    let rest: Vec<_> = others.into_iter().map(|o| o.finished()).collect();
    for (s, r) in &rest {
        assert_eq!(s.state, sa.state, "the members' final states differ");
        assert_eq!(s.model, sa.model);
        assert_eq!(r.len(), 4);
    }
    for r in &ra {
        assert_eq!((r.members, r.accepted, r.rejected), (3, 3, 0), "{r:?}");
        assert!(r.update_bytes > 0 && r.sent > 0 && r.received > 0);
    }
    let (l0, l3) = (ra[0].heldout.unwrap(), ra[3].heldout.unwrap());
    assert!(l3 < l0, "held-out loss went from {l0} to {l3}");
    assert!(tmp.path().join("a/model/model.safetensors").is_file());
}

/// Five members: one never sends, one is slower than the deadline every round, one is killed
/// in the middle of round 1. The other two go through every round, agree, and the slow one
/// ends on their weights too (it catches up by fetching them).
#[test]
fn the_run_goes_on_through_a_silent_a_slow_and_a_killed_member() {
    logs();
    let tmp = tempfile::tempdir().unwrap();
    let run = run_config(tmp.path(), "rounds = 3\ninner_steps = 2\nquorum = 2\ndeadline_ms = 2500\nvote_ms = 1500");
    let a = launch(Start::new(&run, tmp.path().join("a"), 4));
    let start = |name: &str, b: Behaviour| {
        let mut s = Start::new(&run, tmp.path().join(name), 4);
        s.bootstrap = a.addrs.clone();
        s.behaviour = b;
        launch(s)
    };
    let b = start("b", Behaviour::Honest);
    let silent = start("silent", Behaviour::Silent);
    let slow = start("slow", Behaviour::Slow(4000));
    let mut victim = start("victim", Behaviour::Slow(1000));
    // Killed the moment it reports round 0: it is starting round 1, which the others are in,
    // and (a second slower than them) cannot have committed to it yet.
    victim.reports.recv_timeout(std::time::Duration::from_secs(120)).unwrap();
    victim.kill();
    assert!(matches!(victim.join(), Outcome::Killed(_)));

    let (sa, ra) = a.finished();
    let (sb, _) = b.finished();
    let (ss, _) = silent.finished();
    let (sl, rl) = slow.finished();
    assert_eq!(sa.state, sb.state);
    assert_eq!(sa.state, ss.state, "the silent member still follows the run");
    assert_eq!(sa.state, sl.state, "the slow member did not end on the others' weights");
    assert_eq!(ra.len(), 3);
    for r in &ra {
        assert!(!r.skipped && r.accepted >= 2, "{r:?}");
    }
    // Round 0: a, b and the victim count; the silent member sends nothing, the slow one is late.
    assert_eq!(ra[0].accepted, 3, "{:?}", ra[0]);
    assert!(
        ra.iter().any(|r| r.refused.iter().any(|w| w.contains("late"))),
        "the slow member's updates were never late: {ra:?}"
    );
    // Rounds 1 and 2: the victim is gone.
    assert_eq!(ra[2].accepted, 2, "{:?}", ra[2]);
    assert!(rl.iter().all(|r| r.loss.is_some() || r.fetched_state));
}

/// Two members start; a third joins after round 0, fetches the state in chunks from both,
/// and from then on all three agree.
#[test]
fn a_member_joining_mid_run_fetches_the_state_from_several_peers_and_agrees() {
    logs();
    let tmp = tempfile::tempdir().unwrap();
    let run = run_config(
        tmp.path(),
        "rounds = 6\ninner_steps = 3\nquorum = 2\ndeadline_ms = 4000\nvote_ms = 1500\nchunk_bytes = 16384",
    );
    // Rounds of about a second, so the newcomer arrives while the run is going.
    let mut first = Start::new(&run, tmp.path().join("a"), 1);
    first.behaviour = Behaviour::Slow(700);
    let a = launch(first);
    let mut sb = Start::new(&run, tmp.path().join("b"), 1);
    sb.bootstrap = a.addrs.clone();
    sb.behaviour = Behaviour::Slow(700);
    let b = launch(sb);
    a.reports.recv_timeout(std::time::Duration::from_secs(120)).unwrap();
    let mut sc = Start::new(&run, tmp.path().join("c"), 1);
    sc.bootstrap = a.addrs.clone();
    sc.join = true;
    let c = launch(sc);
    let (sa, ra) = a.finished();
    let (sb, _) = b.finished();
    let (scs, rc) = c.finished();
    assert_eq!(sa.state, sb.state);
    assert_eq!(sa.state, scs.state, "the newcomer ended on other weights");
    assert!(rc.len() < 6 && rc.len() >= 2, "the newcomer ran {} rounds", rc.len());
    assert!(rc[0].fetched_state, "the newcomer did not fetch the state: {:?}", rc[0]);
    assert!(rc[0].received > 0);
    assert_eq!(ra.last().unwrap().accepted, 3, "{:?}", ra.last());
}

/// Four members, one of which sends its update ×100: the plain mean is thrown off, centered
/// clipping (the default) is not.
#[test]
fn a_member_scaling_its_update_is_contained_by_centered_clipping_but_not_by_the_mean() {
    logs();
    let heldout_after = |rule: &str| {
        let tmp = tempfile::tempdir().unwrap();
        let run = run_config(
            tmp.path(),
            &format!("rounds = 3\ninner_steps = 3\nquorum = 3\ndeadline_ms = 20000\nvote_ms = 3000\naggregator = {{ rule = \"{rule}\" }}"),
        );
        let mut first = Start::new(&run, tmp.path().join("a"), 3);
        first.heldout_batches = 2;
        let a = launch(first);
        let others: Vec<Running> = [Behaviour::Honest, Behaviour::Honest, Behaviour::Scale(100.0)]
            .into_iter()
            .enumerate()
            .map(|(i, b)| {
                let mut s = Start::new(&run, tmp.path().join(i.to_string()), 3);
                s.bootstrap = a.addrs.clone();
                s.behaviour = b;
                launch(s)
            })
            .collect();
        let (sa, ra) = a.finished();
        for o in others {
            assert_eq!(o.finished().0.state, sa.state);
        }
        assert!(ra.iter().all(|r| r.accepted == 4), "{ra:?}");
        (ra[0].heldout.unwrap(), sa.heldout.unwrap())
    };
    let (first, robust) = heldout_after("centered_clip");
    let (_, mean) = heldout_after("mean");
    eprintln!("held-out loss: {first} after round 0; at the end {robust} with centered clipping, {mean} with the mean");
    assert!(robust < first, "centered clipping did not learn: {first} then {robust}");
    // A NaN mean (a run thrown off completely) counts as thrown off.
    assert!(mean.is_nan() || mean >= 2.0 * robust, "the mean was not thrown off: {mean} against {robust}");
}

/// With privacy on, every update is clipped and noised before it leaves its member, the run
/// still agrees, and each member reports its (ε, δ) from the accountant.
#[test]
fn a_private_run_reports_its_epsilon_and_still_agrees() {
    logs();
    let tmp = tempfile::tempdir().unwrap();
    let run = run_config(
        tmp.path(),
        "rounds = 2\ninner_steps = 2\nquorum = 2\ndeadline_ms = 20000\nvote_ms = 3000\nprivacy = { clip = 1.0, noise = 0.8 }",
    );
    let a = launch(Start::new(&run, tmp.path().join("a"), 1));
    let mut sb = Start::new(&run, tmp.path().join("b"), 1);
    sb.bootstrap = a.addrs.clone();
    let b = launch(sb);
    let (sa, ra) = a.finished();
    let (sb, _) = b.finished();
    assert_eq!(sa.state, sb.state);
    assert!(ra.iter().all(|r| r.accepted == 2));
    let (eps, delta) = sa.privacy.unwrap();
    assert_eq!(delta, 1e-5);
    assert!((eps - odin_train::collab::epsilon(0.8, 2, 1e-5).0).abs() < 1e-6, "ε = {eps}");
}
