//! Generating through the network: the client's public face.
//!
//! [`Client::generate`] asks the [`Router`] for the cheapest route, runs a session on it
//! (`session.rs`), and when a server fails routes around that server and carries on from the
//! tokens generated so far.

use std::sync::Arc;
use std::time::Duration;

use crate::audit::Auditor;
use crate::blame::Failure;
use crate::error::{NodeError, Result};
use crate::hop::Reach;
use crate::request::{GenerateRequest, Generation, Progress};
use crate::router::Router;
use crate::server::Server;
use crate::session::generate_on;

/// Most reroutes one generation makes before it gives up.
pub const MAX_FAILOVERS: usize = 8;
/// Longest a generation waits for a route (at the start, and after each failure).
const ROUTE_WAIT: Duration = Duration::from_secs(10);

/// Generates through the servers a [`Router`] knows, calling this node's own server in-process.
pub struct Client {
    router: Arc<Router>,
    local: Option<Arc<Server>>,
    auditor: Option<Arc<Auditor>>,
}

impl Client {
    /// A client routing through `router`; `local` is this node's server, if it serves.
    pub fn new(router: Arc<Router>, local: Option<Arc<Server>>) -> Self {
        Self { router, local, auditor: None }
    }

    /// Verify the servers with `auditor`: check every claim, recompute a random few steps,
    /// and ban a server caught lying.
    pub fn with_auditor(mut self, auditor: Arc<Auditor>) -> Self {
        self.auditor = Some(auditor);
        self
    }

    /// Generate: find a route, run the request, stream tokens to `on_token` (which may stop the
    /// generation by returning false).
    ///
    /// When a server dies, stalls past the deadline, answers garbage or refuses, the generation
    /// routes around it and continues; the tokens are those a fault-free run gives. It gives
    /// up after [`MAX_FAILOVERS`] reroutes or when no other route appears.
    ///
    /// With an auditor, a server caught lying is banned and the generation starts over from
    /// the prompt on a route without it: `on_token` then sees the answer's tokens again from
    /// the first, since those before the restart passed through the liar.
    pub async fn generate(&self, req: &GenerateRequest, mut on_token: impl FnMut(u32) -> bool) -> Result<Generation> {
        let reach = Reach { router: &self.router, local: self.local.as_ref(), auditor: self.auditor.as_deref() };
        let mut progress = Progress::default();
        // Servers that failed are skipped by the directory until they announce themselves again
        // (a dead one never does) and their backoff has passed; a transient failure costs a
        // server this generation only until then.
        let mut why: Vec<String> = Vec::new();
        loop {
            let route = match self.router.wait_for_route_avoiding(1, &[], ROUTE_WAIT).await {
                Ok(r) => r,
                Err(NodeError::NoRoute(m)) if !why.is_empty() => {
                    return Err(NodeError::NoRoute(format!("{m}; failed on the way: {}", why.join("; "))))
                }
                Err(e) => return Err(e),
            };
            self.router.set_in_use(&route);
            let _open = self.router.open_session(&route);
            match generate_on(reach, &route, req, &mut progress, &mut on_token).await {
                Ok(mut g) => {
                    g.failovers = why.len() as u32;
                    g.failures = why;
                    return Ok(g);
                }
                Err(Failure { peer: Some(p), error }) if why.len() < MAX_FAILOVERS => {
                    tracing::warn!("server {p} failed ({error}); routing around it");
                    if matches!(error, NodeError::Fraud { .. }) {
                        // Nothing a liar touched can be trusted: start over from the prompt.
                        progress = Progress::default();
                    }
                    why.push(format!("{p} ({error})"));
                }
                Err(f) => return Err(f.error),
            }
        }
    }
}

/// The session driver against an in-process network of real servers on a tiny model: kills,
/// freezes, broken links and garbage, each a failover that changes no token and blames only
/// the server at fault. Time is paused, so the stall deadlines pass at once.
#[cfg(test)]
mod tests {
    use odin_format::Sampling;
    use odin_net::PeerId;
    use odin_proto::infer::Response;
    use odin_proto::{Dtype, Envelope};

    use super::*;
    use crate::cheat::Cheat;
    use crate::fake::World;
    use crate::request::Relay;
    use crate::server::ServerConfig;
    use crate::testmodel::local_tokens;

    const PROMPT: [u32; 6] = [5, 17, 42, 3, 88, 61];
    const MAX_NEW: usize = 16;
    /// The token after which a test breaks something.
    const BREAK_AT: usize = 5;

    fn request(relay: Relay, sampling: Sampling) -> GenerateRequest {
        GenerateRequest { prompt: PROMPT.to_vec(), max_new: MAX_NEW, sampling, wire: Dtype::F32, stop: None, relay }
    }

    fn sampled() -> Sampling {
        Sampling { temperature: 0.8, top_k: 20, top_p: 0.95, seed: 7 }
    }

    /// The servers `router` has blamed for anything.
    fn blamed(router: &Router) -> Vec<PeerId> {
        router
            .read(|d| d.entries().into_iter().filter(|(_, e)| e.blamed > 0).map(|(p, _)| p).collect())
            .unwrap_or_default()
    }

    /// A chain of three (0..2, 2..3, 3..4) and a slower spare for each of the last two hops.
    struct Net {
        world: Arc<World>,
        chain: [PeerId; 3],
        router: Arc<Router>,
        client: Client,
    }

    fn network(last: ServerConfig) -> Net {
        let world = World::new();
        let chain = [world.serve(0..2), world.serve(2..3), world.serve_with(3..4, last)];
        let spares = [world.serve(2..3), world.serve(3..4)];
        let router = Router::hearing(&world, None, &spares);
        let client = Client::new(router.clone(), None);
        Net { world, chain, router, client }
    }

    /// Generate `req` on `net`, doing `hit` to the network after [`BREAK_AT`] tokens; checks
    /// that the answer is one machine's and that exactly one failover blamed `guilty` alone.
    async fn survives(net: &Net, req: &GenerateRequest, guilty: PeerId, hit: impl Fn(&World)) -> Generation {
        let mut n = 0;
        let g = net
            .client
            .generate(req, |_| {
                n += 1;
                if n == BREAK_AT {
                    hit(&net.world);
                }
                true
            })
            .await
            .unwrap_or_else(|e| panic!("{:?}: {e}", req.relay));
        let what = format!("{:?} {:?}", req.relay, g.failures);
        assert_eq!(g.tokens, local_tokens(&PROMPT, MAX_NEW, req.sampling), "{what}");
        assert_eq!(g.failovers, 1, "{what}");
        assert!(g.failures[0].starts_with(&guilty.to_string()), "{what}: not {guilty}");
        assert_eq!(blamed(&net.router), vec![guilty], "{what}: only the guilty server is blamed");
        assert!(g.route.iter().all(|h| h.hop.peer != guilty), "{what}");
        g
    }

    #[tokio::test(start_paused = true)]
    async fn a_chain_of_three_generates_what_one_machine_does() {
        let net = network(ServerConfig::default());
        for relay in [Relay::Chain, Relay::Client] {
            for sampling in [Sampling::default(), sampled()] {
                let mut streamed = Vec::new();
                let g = net
                    .client
                    .generate(&request(relay, sampling), |t| {
                        streamed.push(t);
                        true
                    })
                    .await
                    .unwrap();
                let case = format!("{relay:?} {sampling:?}");
                assert_eq!(g.tokens, local_tokens(&PROMPT, MAX_NEW, sampling), "{case}");
                assert_eq!(g.tokens, streamed, "{case}");
                assert_eq!((g.relay, g.failovers, g.handoffs), (relay, 0, 0), "{case}");
                assert_eq!(g.route.iter().map(|h| h.hop.peer).collect::<Vec<_>>(), net.chain, "{case}");
                assert!(g.route.iter().all(|h| h.steps as usize == MAX_NEW - 1), "{case}");
                assert_eq!(net.router.route_in_use().map(|r| r.len()), Some(3));
            }
        }
        // A stop token ends the answer before it, and on_token can end it early.
        let want = local_tokens(&PROMPT, MAX_NEW, Sampling::default());
        let req = GenerateRequest { stop: Some(want[3]), ..request(Relay::Chain, Sampling::default()) };
        let stop_at = want.iter().position(|&t| t == want[3]).unwrap_or(3);
        assert_eq!(net.client.generate(&req, |_| true).await.unwrap().tokens, want[..stop_at]);
        let g = net.client.generate(&request(Relay::Chain, Sampling::default()), |_| false).await.unwrap();
        assert_eq!(g.tokens, want[..1]);
        assert!(blamed(&net.router).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_serving_the_first_blocks_runs_them_in_process() {
        let world = World::new();
        let (first, last) = (world.serve(0..2), world.serve(2..4));
        let client = Client::new(Router::hearing(&world, Some(first), &[]), Some(world.server(&first)));
        for relay in [Relay::Chain, Relay::Client] {
            let g = client.generate(&request(relay, sampled()), |_| true).await.unwrap();
            assert_eq!(g.tokens, local_tokens(&PROMPT, MAX_NEW, sampled()), "{relay:?}");
            assert_eq!(g.relay, relay);
            assert_eq!(g.route.iter().map(|h| h.hop.peer).collect::<Vec<_>>(), [first, last]);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_killed_hop_is_routed_around() {
        for relay in [Relay::Chain, Relay::Client] {
            for hop in [1, 2] {
                let net = network(ServerConfig::default());
                let dead = net.chain[hop];
                let g = survives(&net, &request(relay, sampled()), dead, |w| w.kill(&dead)).await;
                // Its streams ended: the transport said so, not the stall deadline.
                assert!(!g.failures[0].contains("deadline"), "{relay:?} hop {hop}: {:?}", g.failures);
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_frozen_hop_is_left_at_the_stall_deadline() {
        for relay in [Relay::Chain, Relay::Client] {
            for hop in [1, 2] {
                let net = network(ServerConfig::default());
                let frozen = net.chain[hop];
                let started = tokio::time::Instant::now();
                let g = survives(&net, &request(relay, Sampling::default()), frozen, |w| w.freeze(&frozen)).await;
                assert!(g.failures[0].contains("within the deadline"), "{relay:?} hop {hop}: {:?}", g.failures);
                // Left at the stall deadline, not the whole step deadline.
                assert!(started.elapsed() < crate::hop::STEP_DEADLINE, "{:?}", started.elapsed());
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_hop_that_loses_its_next_hop_names_it_and_only_that_hop_is_blamed() {
        let net = network(ServerConfig::default());
        let [first, mid, _] = net.chain;
        let g = survives(&net, &request(Relay::Chain, sampled()), mid, |w| w.cut(&first, &mid)).await;
        assert!(g.failures[0].contains(&format!("reported by the hop before it ({first})")), "{:?}", g.failures);
        assert_eq!(g.relay, Relay::Chain, "the new route pushes too");
    }

    #[tokio::test(start_paused = true)]
    async fn a_hop_that_answers_garbage_is_routed_around() {
        for relay in [Relay::Chain, Relay::Client] {
            // Bytes that do not decode, from the fifth result on.
            let net = network(ServerConfig { garbage_after: Some(BREAK_AT as u64), ..ServerConfig::default() });
            let g = survives(&net, &request(relay, sampled()), net.chain[2], |_| {}).await;
            assert!(g.failures[0].contains("out of protocol"), "{relay:?}: {:?}", g.failures);

            // Answers for another model.
            let net = network(ServerConfig::default());
            let last = net.chain[2];
            let g = survives(&net, &request(relay, sampled()), last, |w| {
                w.tamper(&last, |frame| match Envelope::<Response>::from_bytes(&frame) {
                    Ok(e) => Envelope { model: odin_format::ModelId([9; 32]), msg: e.msg }.to_bytes(),
                    Err(_) => frame,
                })
            })
            .await;
            assert!(g.failures[0].contains("answered for model"), "{relay:?}: {:?}", g.failures);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_hop_that_answers_for_another_session_is_routed_around() {
        let net = network(ServerConfig::default());
        let mid = net.chain[1];
        net.world.tamper(&mid, |frame| match Envelope::<Response>::from_bytes(&frame) {
            Ok(Envelope { model, msg: Response::Opened { session } }) => {
                Envelope { model, msg: Response::Opened { session: session ^ 1 } }.to_bytes()
            }
            _ => frame,
        });
        let req = request(Relay::Chain, Sampling::default());
        let g = net.client.generate(&req, |_| true).await.unwrap();
        assert_eq!(g.tokens, local_tokens(&PROMPT, MAX_NEW, req.sampling));
        assert_eq!(g.failovers, 1);
        assert!(g.failures[0].starts_with(&mid.to_string()) && g.failures[0].contains("answered for session"));
        assert_eq!(blamed(&net.router), vec![mid]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_server_is_routed_around_and_no_route_is_a_clear_error() {
        let world = World::new();
        let first = world.serve(0..2);
        let full = world.serve_with(2..4, ServerConfig { max_sessions: 0, ..ServerConfig::default() });
        let router = Router::hearing(&world, None, &[]);
        let client = Client::new(router.clone(), None);
        // The only server of 2..4 refuses: no other route appears within the wait.
        let e = client.generate(&request(Relay::Chain, Sampling::default()), |_| true).await.unwrap_err();
        let m = e.to_string();
        assert!(m.contains("failed on the way") && m.contains(&full.to_string()) && m.contains("maximum"), "{m}");
        assert_eq!(blamed(&router), vec![full]);
        // Another server of 2..4 appears: the next generation uses it.
        let good = world.serve(2..4);
        let client = Client::new(Router::hearing(&world, None, &[]), None);
        let g = client.generate(&request(Relay::Chain, Sampling::default()), |_| true).await.unwrap();
        assert_eq!(g.tokens, local_tokens(&PROMPT, MAX_NEW, Sampling::default()));
        assert_eq!(g.route.iter().map(|h| h.hop.peer).collect::<Vec<_>>()[0], first);
        assert!(g.route.iter().any(|h| h.hop.peer == good) && g.failovers <= 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_leaving_server_hands_its_part_over_and_nothing_is_replayed() {
        let net = network(ServerConfig::default());
        let leaving = net.chain[1];
        let mut n = 0;
        let g = net
            .client
            .generate(&request(Relay::Chain, sampled()), |_| {
                n += 1;
                if n == BREAK_AT {
                    net.world.server(&leaving).drain();
                }
                true
            })
            .await
            .unwrap();
        assert_eq!(g.tokens, local_tokens(&PROMPT, MAX_NEW, sampled()));
        assert_eq!((g.handoffs, g.failovers), (1, 0), "{:?}", g.failures);
        assert_eq!(g.relay, Relay::Client, "after a handoff the client relays every hop");
        assert!(g.route.iter().all(|h| h.hop.peer != leaving));
        assert!(blamed(&net.router).is_empty(), "a handoff blames no one");
    }

    /// An auditor of every `p`-th hop-step; with `local`, it recomputes in-process.
    fn auditor(p: f64, local: bool) -> Arc<Auditor> {
        let a = Auditor::new(crate::audit::AuditConfig { p, model_dir: None }, crate::testmodel::MODEL, None);
        if local {
            a.hold(Arc::new(crate::testmodel::shard(0..crate::testmodel::LAYERS)));
        }
        Arc::new(a)
    }

    /// The chain of [`network`] with `cheat` on its middle hop, and an honest spare for it.
    fn cheating(cheat: Cheat) -> (Arc<World>, [PeerId; 3], Arc<Router>) {
        let world = World::new();
        let liar = ServerConfig { cheat: Some(cheat), ..ServerConfig::default() };
        let chain = [world.serve(0..2), world.serve_with(2..3, liar), world.serve(3..4)];
        let spares = [world.serve(2..3)];
        let router = Router::hearing(&world, None, &spares);
        (world, chain, router)
    }

    #[tokio::test(start_paused = true)]
    async fn every_kind_of_liar_is_caught_banned_and_the_answer_is_one_machines() {
        // The rare cheat lies one step in three here, so that a short answer holds a lie.
        for cheat in Cheat::ALL.map(|c| if let Cheat::OneIn(_) = c { Cheat::OneIn(3) } else { c }) {
            for relay in [Relay::Chain, Relay::Client] {
                let (_world, [_, liar, _], router) = cheating(cheat);
                let req = request(relay, sampled());
                if cheat == Cheat::OtherSession {
                    // An unaudited session first, so the liar has another session's output to send.
                    Client::new(router.clone(), None).generate(&req, |_| true).await.unwrap();
                }
                let audit = auditor(1.0, true);
                let client = Client::new(router.clone(), None).with_auditor(audit.clone());
                let g = client.generate(&req, |_| true).await.unwrap();
                let case = format!("{cheat} {relay:?}");
                assert_eq!(g.tokens, local_tokens(&PROMPT, MAX_NEW, sampled()), "{case}");
                let r = audit.report();
                assert_eq!((r.caught, r.banned.len()), (1, 1), "{case}: {r:?}");
                assert_eq!(r.banned[0].0, liar.to_string(), "{case}");
                assert!(g.failures[0].contains("cheated"), "{case}: {:?}", g.failures);
                assert!(g.route.iter().all(|h| h.hop.peer != liar), "{case}");
                assert_eq!(router.read(|d| d.is_banned(&liar)), Some(true), "{case}");
                assert_eq!(audit.proofs().len(), 1, "{case}");
                // After the ban, every audit of the honest route passes.
                assert_eq!(r.passed + r.caught, r.audits, "{case}: {r:?}");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn honest_servers_pass_every_audit_whoever_recomputes() {
        for local in [true, false] {
            let world = World::new();
            // Two spares of each hop: a remote audit has servers to ask besides the audited one.
            for r in [0..2, 2..3, 3..4, 0..2, 2..3, 3..4] {
                world.serve(r);
            }
            let router = Router::hearing(&world, None, &[]);
            let audit = auditor(1.0, local);
            let client = Client::new(router.clone(), None).with_auditor(audit.clone());
            let req = request(Relay::Chain, sampled());
            let g = client.generate(&req, |_| true).await.unwrap();
            assert_eq!(g.tokens, local_tokens(&PROMPT, MAX_NEW, sampled()));
            let r = audit.report();
            assert_eq!(r.audits, 3 * MAX_NEW as u64, "local {local}: {r:?}");
            assert_eq!((r.passed, r.caught, r.broken, r.undone), (r.audits, 0, 0, 0), "local {local}: {r:?}");
            assert_eq!(r.claims, 3 * MAX_NEW as u64);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_server_has_every_step_audited_until_it_passes_its_probation() {
        let world = World::new();
        let chain = [world.serve(0..2), world.serve(2..4)];
        let router = Router::hearing(&world, None, &[]);
        router.set_policy(crate::reputation::Policy { probation_audits: 4, ..Default::default() });
        // So rare a base fraction that no audit comes from it in a test's lifetime.
        let audit = auditor(1e-12, true);
        let client = Client::new(router.clone(), None).with_auditor(audit.clone());
        let g = client.generate(&request(Relay::Chain, sampled()), |_| true).await.unwrap();
        assert_eq!(g.tokens, local_tokens(&PROMPT, MAX_NEW, sampled()));
        let r = audit.report();
        assert_eq!((r.audits, r.passed), (8, 8), "4 steps of each server, then none: {r:?}");
        for peer in chain {
            let rep = router.read(|d| (d.reputation().on_probation(&peer), d.reputation().own(&peer))).unwrap();
            assert_eq!((rep.0, rep.1.passed, rep.1.served), (false, 4, 1));
        }
        // What the client saw travels in its announcements, best-known servers first.
        let said = router.opinions();
        assert_eq!(said.len(), 2);
        assert!(said.iter().all(|o| o.passed == 4 && o.failed == 0));
        // With audits off (0), probation audits nothing either: the operator's choice.
        assert_eq!(router.audit_p(&PeerId::random(), 0.0), 0.0);
    }

    #[tokio::test(start_paused = true)]
    async fn two_hundred_fresh_identities_serve_nothing_unaudited_until_their_probation_ends() {
        let world = World::new();
        let established = [world.serve(0..2), world.serve(2..4)];
        // 200 newcomers: 6 liars announcing themselves fastest of all, 4 honest ones next, then
        // the two established servers, then the other 190; so routes meet every liar first.
        let liar = ServerConfig { cheat: Some(Cheat::FlipBit), ..ServerConfig::default() };
        let range = |i: usize| if i.is_multiple_of(2) { 0..2 } else { 2..4 };
        let liars: Vec<PeerId> = (0..6).map(|i| world.serve_with(range(i), liar.clone())).collect();
        let quick: Vec<PeerId> = (0..4).map(|i| world.serve(range(i))).collect();
        let rest: Vec<PeerId> = (0..190).map(|i| world.serve(range(i))).collect();
        let router = Router::hearing(&world, None, &[]);
        for (peer, mut info) in world.announcements(&[]) {
            info.ms_per_block = if liars.contains(&peer) {
                0.1
            } else if quick.contains(&peer) {
                1.0
            } else {
                10.0
            };
            router.heard(peer, info);
        }
        router.set_policy(crate::reputation::Policy { probation_audits: 3, ..Default::default() });
        for p in established {
            for _ in 0..20 {
                router.report_audit(&p, true);
            }
        }
        let audit = auditor(0.01, true);
        let client = Client::new(router.clone(), None).with_auditor(audit.clone());
        let req = request(Relay::Chain, sampled());
        for _ in 0..6 {
            let g = client.generate(&req, |_| true).await.unwrap();
            assert_eq!(g.tokens, local_tokens(&PROMPT, MAX_NEW, sampled()));
        }
        let r = audit.report();
        assert!(r.probation_steps > 0, "{r:?}");
        assert_eq!(r.probation_unaudited, 0, "every step a newcomer served on probation was audited: {r:?}");
        // Every liar got work and was caught at its first audit, which came at the first step of
        // it the client kept (a step where another hop was caught first is thrown away whole).
        for p in &liars {
            assert_eq!(r.per_server.get(&p.to_string()), Some(&(1, 1)), "{p}: {r:?}");
            assert_eq!(router.read(|d| d.is_banned(p)), Some(true));
        }
        // The honest newcomers routes met next passed probation and serve at the base fraction;
        // the 190 others never got work: the trusted servers cost less than strangers.
        assert!(quick.iter().any(|p| !router.on_probation(p)), "{r:?}");
        assert!(rest.iter().all(|p| !r.steps.contains_key(&p.to_string())), "{r:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn two_remote_auditors_convict_a_liar_and_one_alone_cannot() {
        for spares in [2, 1] {
            let world = World::new();
            let liar = ServerConfig { cheat: Some(Cheat::FlipBit), ..ServerConfig::default() };
            let chain = [world.serve(0..2), world.serve_with(2..4, liar)];
            // Slower spares, so the route goes through the liar.
            let slow: Vec<PeerId> = (0..spares).map(|_| world.serve(2..4)).collect();
            let router = Router::hearing(&world, None, &slow);
            let audit = auditor(1.0, false);
            let client = Client::new(router.clone(), None).with_auditor(audit.clone());
            let g = client.generate(&request(Relay::Client, Sampling::default()), |_| true).await.unwrap();
            let r = audit.report();
            if spares == 2 {
                assert_eq!(r.banned.iter().map(|b| b.0.clone()).collect::<Vec<_>>(), [chain[1].to_string()], "{r:?}");
                assert!(g.route.iter().all(|h| h.hop.peer != chain[1]));
            } else {
                // One other server's word is not enough to ban; the audit stays undone.
                assert!(r.banned.is_empty() && r.undone > 0, "{r:?}");
            }
        }
    }
}
