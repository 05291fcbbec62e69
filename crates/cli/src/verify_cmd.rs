//! `odin swarm --cheat N`: a local network where N servers lie (none with `--verify` alone),
//! a client that audits them, and a table of what it checked, caught and banned.
//!
//! Every block is served twice (so a banned liar leaves a route), the honest servers of a
//! liar's blocks are slowed (so routes go through the liar), and the client answers a handful
//! of prompts; each answer is
//! compared with what one machine generates from the same model. The run ends with the liars
//! banned and every answer correct, or says which was not.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use odin_engine::{Options, Sampler, Shard};
use odin_format::Sampling;
use odin_node::cluster::{ClusterConfig, Join};
use odin_node::{Cheat, GenerateRequest, LocalCluster, Relay};
use odin_proto::Dtype;
use odin_text::{load_tokenizer, prompt_ids, special};
use serde_json::json;

/// The prompts a verification swarm answers, in the forms the model was trained on.
const PROMPTS: [&str; 6] = [
    "Solve for x: 6x - 5 = -10x + 59",
    "work: 487+906=",
    "work: 73*18=",
    "work: 1450-867=",
    "Solve for x: 3x + 7 = 31",
    "912/8=",
];

/// What `odin swarm --cheat` needs.
pub struct VerifySwarm {
    /// Node processes.
    pub nodes: usize,
    /// How many of them lie.
    pub cheats: usize,
    /// How they lie.
    pub kind: Cheat,
    /// Fraction of hop-steps the client recomputes.
    pub audit: f64,
    /// The model.
    pub model: PathBuf,
    /// Most tokens per answer.
    pub max_tokens: usize,
    /// Sampling.
    pub sampling: Sampling,
    /// Hidden states on the wire.
    pub wire: Dtype,
    /// How steps travel.
    pub relay: Relay,
    /// Print JSON.
    pub json: bool,
    /// Answers to give (the prompts in turn).
    pub answers: usize,
    /// `ODIN_KERNEL` for the node processes in turn (empty: each picks its fastest).
    pub kernels: Vec<String>,
    /// Audits a new server passes before the client trusts it at `audit` (0: no probation).
    pub probation_audits: u32,
    /// Stop answering once every liar is banned (the detection benchmark's trials).
    pub until_banned: bool,
}

/// Run the verification swarm.
pub fn swarm_verify(v: VerifySwarm) -> Result<()> {
    if v.cheats * 2 > v.nodes {
        bail!(
            "--cheat {} with --nodes {}: at most half the nodes may lie, so that every block keeps an honest server",
            v.cheats,
            v.nodes
        );
    }
    let copies = odin_node::cluster::split_model(&v.model, v.nodes.div_ceil(2))?;
    let tk = load_tokenizer(&v.model)?;
    let one = Shard::load(&v.model, None, Options::default())
        .with_context(|| format!("cannot load {} to check the answers", v.model.display()))?;
    let exe = std::env::current_exe().context("cannot find the odin binary to start nodes")?;
    let work = std::env::temp_dir().join(format!("odin-verify-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let result = rt.block_on(async {
        let mut cfg = ClusterConfig::processes(&exe, &v.model, &work);
        cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse()?];
        cfg.join = Join::Tcp;
        cfg.announce = Duration::from_secs(1);
        let mut cluster = LocalCluster::new(cfg);
        let kind = v.kind.to_string();
        let mut liars = Vec::new();
        let liar_ranges: Vec<usize> = (v.nodes - v.cheats..v.nodes).map(|i| i % copies.len()).collect();
        for i in 0..v.nodes {
            let r = &copies[i % copies.len()];
            // The last nodes lie: the first, which the others join through, stays honest.
            let lies = i >= v.nodes - v.cheats;
            // A liar says it is fast, but routes weigh round trips and what the client measured
            // more than what a server says, and a server that has passed audits costs down to
            // half as much as a stranger whose round trip is not known yet (assumed 5 ms). The
            // honest servers of a liar's blocks are made slower (15 ms a step), so that from the
            // second answer on routes go through the liar and the audits meet it.
            let extra: Vec<&str> = if lies {
                vec!["--cheat", &kind]
            } else if liar_ranges.contains(&(i % copies.len())) {
                vec!["--delay-ms", "15"]
            } else {
                vec![]
            };
            let env: Vec<(&str, &str)> =
                v.kernels.get(i % v.kernels.len().max(1)).filter(|k| *k != "auto").map(|k| ("ODIN_KERNEL", k.as_str())).into_iter().collect();
            let m = cluster.launch_with_env(&format!("node-{i}"), &format!("{}..{}", r.start, r.end), &extra, &env)?;
            if lies {
                liars.push(cluster.member(m)?.peer);
            }
        }
        let mut cfg = cluster.client_config(&work.join("client"));
        cfg.net.dht_server = false;
        cfg.audit = v.audit;
        cfg.probation_audits = v.probation_audits;
        let client = cluster.join(cfg, Duration::from_secs(60)).await?;
        let mut answers = Vec::new();
        for prompt in PROMPTS.iter().cycle().take(v.answers).copied() {
            let ids = prompt_ids(&tk, prompt)?;
            let req = GenerateRequest {
                prompt: ids.clone(),
                max_new: v.max_tokens,
                sampling: v.sampling,
                wire: v.wire,
                stop: Some(special::EOS),
                relay: v.relay,
            };
            let g = client.generate(&req, |_| true).await?;
            let want = odin_engine::generate(&one, &ids, v.max_tokens, &mut Sampler::new(v.sampling), Some(special::EOS), |_| true)
                .map_err(|e| anyhow::anyhow!("one machine cannot answer {prompt:?}: {e}"))?
                .0;
            let text = tk.decode(&g.tokens, true).unwrap_or_default();
            answers.push((prompt, text, g.tokens == want, g.failovers));
            if v.until_banned && !liars.is_empty() && liars.iter().all(|l| client.has_banned(l)) {
                break;
            }
        }
        let report = client.audit_report();
        let banned: Vec<String> = report.banned.iter().map(|b| b.0.clone()).collect();
        let all_banned = liars.iter().all(|l| banned.contains(&l.to_string()));
        let correct = answers.iter().all(|a| a.2);
        let honest_banned = banned.iter().any(|b| !liars.iter().any(|l| l.to_string() == *b));
        if v.json {
            println!(
                "{}",
                json!({
                    "cheat": kind, "audit": v.audit, "probation_audits": v.probation_audits, "kernels": v.kernels,
                    "liars": liars.iter().map(|l| l.to_string()).collect::<Vec<_>>(),
                    "liar_steps": liars.iter().map(|l| report.steps.get(&l.to_string()).copied().unwrap_or(0)).collect::<Vec<_>>(),
                    "report": report, "proofs": client.audit_proofs().len(),
                    "answers": answers.iter().map(|(p, t, ok, f)| json!({"prompt": p, "text": t, "correct": ok, "failovers": f})).collect::<Vec<_>>(),
                    "all_liars_banned": all_banned, "all_correct": correct, "honest_banned": honest_banned,
                })
            );
        } else {
            println!("{} nodes, {} lying ({kind}), audit p = {}", v.nodes, v.cheats, v.audit);
            println!("{:<54} {:>7} {:>7} {:>7}  role     banned at step", "server", "blocks", "audits", "caught");
            for m in cluster.members() {
                let id = m.peer.to_string();
                let (audits, caught) = report.per_server.get(&id).copied().unwrap_or_default();
                let at = report.banned.iter().find(|b| b.0 == id).map_or("-".to_string(), |b| b.1.to_string());
                let role = if liars.contains(&m.peer) { "liar" } else { "honest" };
                println!("{id:<54} {:>7} {audits:>7} {caught:>7}  {role:<8} {at}", m.blocks);
            }
            println!(
                "claims checked {} · audits {} (passed {}, caught {}, undone {}) · broken chains {} · fraud proofs {}",
                report.claims,
                report.audits,
                report.passed,
                report.caught,
                report.undone,
                report.broken,
                client.audit_proofs().len()
            );
            for (p, t, ok, f) in &answers {
                println!("{} {p:?} → {:?}{}", if *ok { "ok   " } else { "WRONG" }, t.trim(), if *f > 0 { format!(" ({f} failover)") } else { String::new() });
            }
        }
        drop(cluster);
        if !correct {
            bail!("an answer differs from one machine's: a lie went through unchecked");
        }
        if honest_banned {
            bail!("an honest server was banned");
        }
        if !all_banned {
            bail!("a liar was not caught in {} answers at audit p = {}: raise --audit, --answers or --max-tokens", v.answers, v.audit);
        }
        Ok::<(), anyhow::Error>(())
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    let _ = std::fs::remove_dir_all(&work);
    result
}
