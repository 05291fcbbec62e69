//! The router handle: the [`Directory`] of known servers behind a lock, the waits for it to
//! cover the blocks a generation needs, the DHT pulls that fill it when gossip has not, and the
//! failure reports that put a server on backoff.
//!
//! The node feeds it what the swarm hears ([`Router::heard`], [`Router::gone`]); the session
//! driver asks it for routes and tells it who failed. It reaches peers only through a
//! [`Transport`], so it runs as well against an in-process network in tests.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use odin_format::ModelId;
use odin_net::{PeerId, ServerInfo};
use tokio::sync::Notify;

use crate::directory::{Directory, Hop};
use crate::error::{NodeError, Result};
use crate::link::fetch_info;
use crate::transport::Transport;

/// Longest one DHT lookup or one announcement fetch may take while looking for servers.
const PULL_DEADLINE: Duration = Duration::from_secs(1);
/// A provider that did not answer is not asked again for this long.
const SHUN: Duration = Duration::from_secs(30);
/// Pause between DHT pulls while waiting for a route (an announcement ends the wait sooner).
const PULL_EVERY: Duration = Duration::from_millis(250);

/// A session this node has open through some servers; closes when dropped.
pub struct OpenSession {
    router: Arc<Router>,
    peers: Vec<PeerId>,
}

impl Drop for OpenSession {
    fn drop(&mut self) {
        if let Ok(mut d) = self.router.dir.lock() {
            d.sessions(&self.peers, false);
        }
    }
}

/// A node's knowledge of its model's servers, and the routes through them.
pub struct Router {
    model: ModelId,
    me: PeerId,
    transport: Arc<dyn Transport>,
    dir: Mutex<Directory>,
    /// Woken whenever the directory gains or loses a server.
    changed: Notify,
    /// Providers that did not answer, and when.
    unreachable: Mutex<HashMap<PeerId, Instant>>,
    /// The route the latest generation through this node runs on.
    in_use: Mutex<Option<Vec<Hop>>>,
}

impl Router {
    /// A router for `model` (of `layers` blocks) as seen from peer `me`; announcements live for `ttl`.
    pub fn new(model: ModelId, me: PeerId, layers: usize, ttl: Duration, transport: Arc<dyn Transport>) -> Self {
        Self {
            model,
            me,
            transport,
            dir: Mutex::new(Directory::new(layers, ttl)),
            changed: Notify::new(),
            unreachable: Mutex::new(HashMap::new()),
            in_use: Mutex::new(None),
        }
    }

    /// The model it routes for.
    pub fn model(&self) -> ModelId {
        self.model
    }

    /// The peer it routes from.
    pub fn peer_id(&self) -> PeerId {
        self.me
    }

    /// How it reaches peers.
    pub fn transport(&self) -> &dyn Transport {
        self.transport.as_ref()
    }

    /// `peer` announced `info` (over gossip, or this node about itself).
    pub fn heard(&self, peer: PeerId, info: ServerInfo) {
        if let Ok(mut d) = self.dir.lock() {
            d.update(peer, info);
        }
        self.changed.notify_waiters();
    }

    /// A fresh round-trip time to `peer`.
    pub fn rtt(&self, peer: PeerId, rtt: Duration) {
        if let Ok(mut d) = self.dir.lock() {
            d.rtt(peer, rtt);
        }
    }

    /// `peer` left: forget it.
    pub fn gone(&self, peer: &PeerId) {
        if let Ok(mut d) = self.dir.lock() {
            d.remove(peer);
        }
        self.changed.notify_waiters();
    }

    /// Drop announcements past their lifetime.
    pub fn expire(&self) {
        if let Ok(mut d) = self.dir.lock() {
            d.expire();
        }
    }

    /// Wake whoever waits on the directory (this node's own blocks changed).
    pub fn touch(&self) {
        self.changed.notify_waiters();
    }

    /// Look at the directory; `None` when its lock is poisoned.
    pub fn read<T>(&self, f: impl FnOnce(&Directory) -> T) -> Option<T> {
        self.dir.lock().ok().map(|d| f(&d))
    }

    /// Servers with a live announcement, and what they announced.
    pub fn live_servers(&self) -> Vec<(PeerId, ServerInfo)> {
        self.read(|d| d.entries().into_iter().map(|(p, e)| (p, e.info)).collect()).unwrap_or_default()
    }

    /// A request to `peer` failed: it sits out a backoff.
    pub fn report_failure(&self, peer: &PeerId) {
        if let Ok(mut d) = self.dir.lock() {
            d.failed(peer);
        }
    }

    /// Ignore servers whose peer ids do not show `bits` of identity work.
    pub fn require_identity_bits(&self, bits: u32) {
        if let Ok(mut d) = self.dir.lock() {
            d.require_identity_bits(bits);
        }
    }

    /// `peer` was proven to cheat: it is never routed to again.
    pub fn ban(&self, peer: &PeerId) {
        if let Ok(mut d) = self.dir.lock() {
            d.ban(*peer);
        }
    }

    /// How fast `peer` turned out to be: µs per block per decode step.
    pub fn report_observed(&self, peer: &PeerId, us_per_block: f64) {
        if let Ok(mut d) = self.dir.lock() {
            d.observed(peer, us_per_block);
        }
    }

    /// A generation through `peer` succeeded (its backoff ends).
    pub fn report_success(&self, peer: &PeerId) {
        if let Ok(mut d) = self.dir.lock() {
            d.succeeded(peer);
            d.reputation_mut().record(*peer, |r| r.served += 1);
        }
    }

    /// An audit of `peer` ended: it `passed`, or its step did not recompute to its claim.
    pub fn report_audit(&self, peer: &PeerId, passed: bool) {
        if let Ok(mut d) = self.dir.lock() {
            d.reputation_mut().record(*peer, |r| if passed { r.passed += 1 } else { r.failed += 1 });
        }
    }

    /// The fraction of `peer`'s steps to audit when this node's own setting is `base` (0
    /// audits nothing, probation included: the node's operator turned audits off).
    pub fn audit_p(&self, peer: &PeerId, base: f64) -> f64 {
        if base <= 0.0 {
            return 0.0;
        }
        self.read(|d| d.reputation().audit_p(peer, base)).unwrap_or(base)
    }

    /// Whether `peer` is on probation at this node.
    pub fn on_probation(&self, peer: &PeerId) -> bool {
        self.read(|d| d.reputation().on_probation(peer)).unwrap_or(true)
    }

    /// This node's opinions of the servers it used, for its announcements.
    pub fn opinions(&self) -> Vec<odin_net::Opinion> {
        self.read(|d| d.reputation().opinions()).unwrap_or_default()
    }

    /// Trust what `peer` says about others fully (a genesis peer this node was started with).
    pub fn trust(&self, peer: PeerId) {
        if let Ok(mut d) = self.dir.lock() {
            d.reputation_mut().add_genesis(peer);
        }
    }

    /// Set how reputation acts on audits and routes.
    pub fn set_policy(&self, policy: crate::reputation::Policy) {
        if let Ok(mut d) = self.dir.lock() {
            d.reputation_mut().set_policy(policy);
        }
    }

    /// Count a session of this node through `route`'s servers until the guard drops.
    pub fn open_session(self: &Arc<Self>, route: &[Hop]) -> OpenSession {
        let peers: Vec<PeerId> = route.iter().map(|h| h.peer).collect();
        if let Ok(mut d) = self.dir.lock() {
            d.sessions(&peers, true);
        }
        OpenSession { router: self.clone(), peers }
    }

    /// Record the route a generation starts on.
    pub fn set_in_use(&self, route: &[Hop]) {
        if let Ok(mut u) = self.in_use.lock() {
            *u = Some(route.to_vec());
        }
    }

    /// The route the latest generation started on (before any failover or handoff it has not
    /// reached yet); `None` before the first.
    pub fn route_in_use(&self) -> Option<Vec<Hop>> {
        self.in_use.lock().ok()?.clone()
    }

    /// The current best route, if every block is covered.
    pub fn route(&self) -> Option<Vec<Hop>> {
        self.read(|d| d.route(&[])).flatten()
    }

    /// Wait until `found` finds something in the directory (checked at once and after every
    /// change), for at most `timeout`.
    pub async fn wait_for<T>(&self, timeout: Duration, found: impl Fn(&Directory) -> Option<T>) -> Option<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if let Some(t) = self.read(&found).flatten() {
                return Some(t);
            }
            tokio::time::timeout_at(deadline, notified).await.ok()?;
        }
    }

    /// The cheapest chain over blocks `span` avoiding `avoid`, waiting up to `timeout` for one.
    pub async fn wait_for_span(&self, span: Range<usize>, avoid: &[PeerId], timeout: Duration) -> Result<Vec<Hop>> {
        self.wait_for(timeout, |d| d.route_span(span.clone(), avoid)).await.ok_or_else(|| {
            NodeError::NoRoute(format!(
                "no server took over blocks {}..{} within {:.0} s; start a node serving them",
                span.start,
                span.end,
                timeout.as_secs_f64()
            ))
        })
    }

    /// Wait until the directory knows `peer` as a server, for at most `timeout`.
    pub async fn wait_for_server(&self, peer: &PeerId, timeout: Duration) -> Result<()> {
        self.wait_for(timeout, |d| d.knows(peer).then_some(())).await.ok_or_else(|| {
            NodeError::NoRoute(format!(
                "server {peer} did not announce itself within {:.0} s; is it running and bootstrapped to this network?",
                timeout.as_secs_f64()
            ))
        })
    }

    /// Wait until every block is covered (and at least `min_servers` servers are known), never
    /// through the servers in `avoid`, for at most `timeout`.
    ///
    /// Gossip usually delivers the announcements; when it has not, the DHT names the providers
    /// of each uncovered block and they are asked directly.
    pub async fn wait_for_route_avoiding(
        &self,
        min_servers: usize,
        avoid: &[PeerId],
        timeout: Duration,
    ) -> Result<Vec<Hop>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            let (route, known, missing) = self
                .read(|d| {
                    let cov = d.coverage();
                    let missing: Vec<usize> = (0..cov.len()).filter(|&b| cov[b] == 0).collect();
                    (d.route(avoid), d.entries().len(), missing)
                })
                .ok_or_else(|| NodeError::NoRoute("directory poisoned".into()))?;
            if let Some(r) = route {
                if known >= min_servers {
                    return Ok(r);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(NodeError::NoRoute(format!(
                    "after {:.0} s, {known} server(s) known ({} set aside after failures) and blocks {missing:?} \
                     uncovered; start nodes serving them",
                    timeout.as_secs_f64(),
                    avoid.len()
                )));
            }
            // Ask the DHT meanwhile, but an announcement arriving ends the wait at once.
            let ask = async {
                self.pull(&missing).await;
                tokio::time::sleep(PULL_EVERY).await;
            };
            tokio::select! {
                _ = notified => {}
                _ = ask => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// Ask the DHT who serves `blocks` (all blocks when empty) and fetch unknown servers'
    /// announcements directly.
    pub async fn pull(&self, blocks: &[usize]) {
        let all: Vec<usize> = (0..self.read(|d| d.layers()).unwrap_or(0)).collect();
        let blocks = if blocks.is_empty() { &all[..] } else { blocks };
        for &b in blocks {
            // Provider records outlive their servers, and a dead server's dial can hang:
            // every lookup is bounded, and a peer that did not answer is not asked again soon.
            let Ok(Ok(peers)) = tokio::time::timeout(PULL_DEADLINE, self.transport.providers(self.model, b)).await
            else {
                continue;
            };
            for p in peers {
                let known = self.read(|d| d.knows(&p)).unwrap_or(true);
                let shunned =
                    self.unreachable.lock().map(|u| u.get(&p).is_some_and(|t| t.elapsed() < SHUN)).unwrap_or(false);
                if known || shunned || p == self.me {
                    continue;
                }
                let fetched = fetch_info(self.transport.as_ref(), self.model, p, PULL_DEADLINE);
                match tokio::time::timeout(PULL_DEADLINE, fetched).await {
                    Ok(Ok(info)) if info.peer == p.to_string() && info.model == self.model.to_string() => {
                        // Not `heard`: a pull runs inside a wait, which looks again on its own.
                        if let Ok(mut d) = self.dir.lock() {
                            d.update(p, info);
                        }
                    }
                    _ => {
                        if let Ok(mut u) = self.unreachable.lock() {
                            u.retain(|_, t| t.elapsed() < SHUN);
                            u.insert(p, Instant::now());
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
impl Router {
    /// A router for peer `me` of the fake network `world` (a new client peer when `None`) that
    /// has heard every server announce itself; those in `slow` say they are ten times slower.
    pub(crate) fn hearing(world: &Arc<crate::fake::World>, me: Option<PeerId>, slow: &[PeerId]) -> Arc<Router> {
        use crate::testmodel::{LAYERS, MODEL};
        let me = me.unwrap_or_else(|| world.client());
        let router = Arc::new(Router::new(MODEL, me, LAYERS, Duration::from_secs(3600), world.transport(me)));
        for (peer, info) in world.announcements(slow) {
            router.heard(peer, info);
        }
        router
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use super::*;
    use crate::fake::World;
    use crate::testmodel::{LAYERS, MODEL};

    /// Whether `elapsed` is `want`, give or take the paused clock's millisecond.
    fn about(elapsed: Duration, want: Duration) -> bool {
        elapsed >= want && elapsed <= want + Duration::from_millis(1)
    }

    /// A router that has heard of no server yet.
    fn deaf(world: &Arc<World>) -> Router {
        let me = world.client();
        Router::new(MODEL, me, LAYERS, Duration::from_secs(3600), world.transport(me))
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_when_the_announcement_arrives_or_at_its_deadline() {
        let world = World::new();
        let server = world.serve(0..4);
        let heard = Router::hearing(&world, None, &[]);
        let router = Arc::new(deaf(&world));
        let wait = Duration::from_secs(10);
        let started = Instant::now();
        let err = router.wait_for_span(1..3, &[], wait).await.unwrap_err();
        assert!(err.to_string().contains("blocks 1..3 within 10 s"), "{err}");
        assert!(about(started.elapsed(), wait), "{:?}", started.elapsed());

        let info = heard.live_servers().remove(0).1;
        let late = router.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            late.heard(server, info);
        });
        let started = Instant::now();
        let route = router.wait_for_span(1..3, &[], wait).await.unwrap();
        assert_eq!(route, vec![Hop { peer: server, start: 1, end: 3 }]);
        assert!(about(started.elapsed(), Duration::from_secs(3)), "woken by the announcement");
        assert!(router.wait_for_span(1..3, &[server], Duration::from_secs(1)).await.is_err(), "avoided");
        router.wait_for_server(&server, Duration::ZERO).await.unwrap();
        router.gone(&server);
        assert!(router.route().is_none() && router.wait_for_server(&server, Duration::ZERO).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn servers_gossip_missed_are_found_through_the_dht() {
        let world = World::new();
        let (a, b) = (world.serve(0..2), world.serve(2..4));
        let router = deaf(&world);
        let route = router.wait_for_route_avoiding(2, &[], Duration::from_secs(10)).await.unwrap();
        assert_eq!(route.iter().map(|h| h.peer).collect::<Vec<_>>(), [a, b]);
        let learned = router.live_servers();
        assert_eq!(learned.len(), 2);
        assert!(learned.iter().all(|(p, i)| i.peer == p.to_string() && i.model == MODEL.to_string()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_provider_that_does_not_answer_is_not_asked_again_soon() {
        let world = World::new();
        let frozen = world.serve(0..4);
        world.freeze(&frozen);
        let router = deaf(&world);
        let started = Instant::now();
        router.pull(&[0]).await;
        assert!(about(started.elapsed(), PULL_DEADLINE), "its announcement was waited for");
        let started = Instant::now();
        router.pull(&[0, 1]).await;
        assert!(about(started.elapsed(), Duration::ZERO), "shunned");
        assert!(router.live_servers().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_server_is_routed_around_until_it_succeeds() {
        let world = World::new();
        let (a, b) = (world.serve(0..4), world.serve(0..4));
        let router = Router::hearing(&world, None, &[]);
        let first = router.route().unwrap()[0].peer;
        let other = if first == a { b } else { a };
        router.report_failure(&first);
        assert_eq!(router.route().unwrap()[0].peer, other);
        router.report_failure(&other);
        assert!(router.route().is_none(), "both on backoff");
        router.report_success(&first);
        assert_eq!(router.route().unwrap()[0].peer, first);
        let failures =
            |p: PeerId| router.read(|d| d.entries().into_iter().find(|(q, _)| *q == p).map(|(_, e)| e.blamed));
        assert_eq!((failures(first), failures(other)), (Some(Some(1)), Some(Some(1))));
        router.set_in_use(&router.route().unwrap());
        assert_eq!(router.route_in_use(), router.route());
    }
}
