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
