//! Verification with real processes: `odin swarm --cheat 1` starts four node processes, one of
//! which lies in the way it is told to; the client's audits must catch and ban it, ban no
//! honest server, and every answer must be the one one machine gives.

mod common;
use common::{bundled, json, odin};

fn verify(kind: &str, relay: &str) -> serde_json::Value {
    // Half the hop-steps audited: the liar is caught within a few tokens of the first answer.
    swarm(&["--cheat", "1", "--cheat-kind", kind, "--relay", relay, "--audit", "0.5", "--max-tokens", "24"])
}

#[test]
fn a_lying_node_is_caught_banned_and_every_answer_is_one_machines() {
    for (kind, relay) in [("flip-bit", "chain"), ("skip-blocks", "client")] {
        let v = verify(kind, relay);
        let case = format!("{kind} {relay}: {v}");
        assert_eq!(v["all_liars_banned"], true, "{case}");
        assert_eq!(v["all_correct"], true, "{case}");
        assert_eq!(v["honest_banned"], false, "{case}");
        let liar = v["liars"][0].as_str().unwrap();
        let banned = v["report"]["banned"].as_array().unwrap();
        assert_eq!(banned.len(), 1, "{case}");
        assert_eq!(banned[0][0].as_str(), Some(liar), "{case}");
        assert_eq!(v["proofs"], 1, "{case}");
        assert!(v["report"]["passed"].as_u64().unwrap() > 0, "{case}");
    }
}

/// `odin swarm --json --nodes 4` with `flags`.
fn swarm(flags: &[&str]) -> serde_json::Value {
    let out =
        odin().args(["swarm", "--json", "--nodes", "4"]).args(flags).arg("--model").arg(bundled()).output().unwrap();
    json(out)
}

#[test]
fn a_new_liar_is_caught_on_its_first_step_by_probation_and_honest_kernels_never_disagree() {
    // Audits at 1 in 10,000, but a new server has every step audited until it passes 1,000.
    // Routes weigh measured speed, so the liar is not on every route: up to six answers, until the ban.
    let v = swarm(&[
        "--cheat",
        "1",
        "--audit",
        "0.0001",
        "--probation-audits",
        "1000",
        "--until-banned",
        "--max-tokens",
        "16",
    ]);
    assert_eq!((v["all_liars_banned"].clone(), v["all_correct"].clone()), (true.into(), true.into()), "{v}");
    assert_eq!(v["liar_steps"][0], 1, "caught on the first step it served: {v}");
    // No liar, every hop-step audited, nodes on the scalar kernel and the fastest one in turn:
    // every recomputation agrees bit for bit.
    let v = swarm(&["--verify", "--kernels", "scalar,auto", "--audit", "1", "--answers", "2", "--max-tokens", "16"]);
    let r = &v["report"];
    assert_eq!(v["all_correct"], true, "{v}");
    assert!(r["audits"].as_u64().unwrap() > 0 && r["audits"] == r["claims"], "every hop-step audited: {v}");
    assert_eq!(r["passed"], r["audits"], "{v}");
    assert_eq!((r["caught"].as_u64(), r["broken"].as_u64()), (Some(0), Some(0)), "{v}");
    assert!(r["banned"].as_array().unwrap().is_empty(), "{v}");
}

#[test]
fn more_liars_than_honest_servers_is_refused() {
    let out = odin().args(["swarm", "--nodes", "4", "--cheat", "3"]).arg("--model").arg(bundled()).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at most half"), "{}", String::from_utf8_lossy(&out.stderr));
}
