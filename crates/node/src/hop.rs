//! One hop of a session: the link to its server, the figures of its steps, and the deadlines
//! that tell a slow server from a stalled one.

use std::sync::Arc;
use std::time::Duration;

use odin_proto::infer::{Request, Response};
use odin_proto::PeerBytes;

use crate::blame::{blame, fault, unexpected, Failure};
use crate::directory::Hop;
use crate::error::{NodeError, Result};
use crate::link::{Link, Remote};
use crate::router::Router;
use crate::server::Server;

/// Longest a client waits for one hop's answer (a long prefill on a slow machine).
pub const STEP_DEADLINE: Duration = Duration::from_secs(30);
/// A decode step taking this many times the hop's usual round trip counts as a stall…
const STALL_FACTOR: f64 = 50.0;
/// …but never before this long (a busy machine's scheduling hiccups are not stalls).
pub(crate) const MIN_STALL: Duration = Duration::from_secs(2);
/// Longest a hop of a stalled push may take to say how far it got.
pub(crate) const PROBE_DEADLINE: Duration = Duration::from_secs(1);

/// How long a step may take before it counts as stalled: a decode step gets [`STALL_FACTOR`]
/// times the usual round trip `usual_us` (within [`MIN_STALL`] and [`STEP_DEADLINE`]); a
/// prefill, or any step before there is a usual, gets the whole [`STEP_DEADLINE`].
pub(crate) fn stall_deadline(decoding: bool, usual_us: f64) -> Duration {
    if decoding && usual_us > 0.0 {
        Duration::from_secs_f64(usual_us * STALL_FACTOR / 1e6).clamp(MIN_STALL, STEP_DEADLINE)
    } else {
        STEP_DEADLINE
    }
}

/// What a session reaches its servers through: the router (routes, backoff, the transport)
/// and this node's own server, which it calls in-process.
#[derive(Clone, Copy)]
pub(crate) struct Reach<'a> {
    /// Routes, failure reports, and the transport to other peers.
    pub(crate) router: &'a Router,
    /// This node's server, if it serves.
    pub(crate) local: Option<&'a Arc<Server>>,
    /// Checks the servers' claims and audits their steps, when the client verifies.
    pub(crate) auditor: Option<&'a crate::audit::Auditor>,
}

/// A hop of a running session.
pub(crate) struct HopRun {
    /// The server and the blocks it runs.
    pub(crate) hop: Hop,
    /// The stream to it (or its in-process server).
    pub(crate) link: Link,
    /// Decode steps run.
    pub(crate) steps: u64,
    /// Their round trips in all, µs.
    pub(crate) rtt_us: f64,
    /// The server's compute time in all, µs.
    pub(crate) compute_us: f64,
    /// Bytes sent and received in all.
    pub(crate) bytes: f64,
    /// Round trip of the prefill step, µs: the first decode step costs no more.
    pub(crate) prefill_us: f64,
}

impl HopRun {
    /// Call this hop; a failure puts its server on backoff.
    pub(crate) async fn call(&mut self, router: &Router, msg: Request) -> Result<(Response, usize)> {
        self.call_within(router, msg, STEP_DEADLINE).await
    }

    /// [`HopRun::call`] with its own deadline.
    pub(crate) async fn call_within(
        &mut self,
        router: &Router,
        msg: Request,
        deadline: Duration,
    ) -> Result<(Response, usize)> {
        let r = self.link.call(router.model(), msg, deadline).await;
        if r.is_err() {
            router.report_failure(&self.hop.peer);
        }
        r
    }

    /// One step. A decode step that takes far longer than this hop's usual one (its mean decode
    /// round trip; before the first, its prefill's, which did more work) is a stall, so a server
    /// that hangs, or died without a word as a killed QUIC peer does, is left fast.
    pub(crate) async fn step(&mut self, router: &Router, msg: Request, decoding: bool) -> Result<(Response, usize)> {
        let usual_us = if self.steps > 0 { self.rtt_us / self.steps as f64 } else { self.prefill_us };
        self.call_within(router, msg, stall_deadline(decoding, usual_us)).await
    }

    /// The next hop this hop said was down while answering a request, and why.
    pub(crate) fn reported_down(&self) -> Option<(PeerBytes, String)> {
        match &self.link {
            Link::Remote(r) => r.down.clone(),
            Link::Local(_) => None,
        }
    }

    /// Open (or resume) the session on this hop.
    pub(crate) async fn open(&mut self, router: &Router, msg: Request) -> std::result::Result<(), Failure> {
        match self.call(router, msg).await {
            Ok((Response::Opened { .. }, _)) => Ok(()),
            Ok((r, _)) => Err(blame(self.refused(router, r), self.hop.peer)),
            Err(e) => Err(blame(e, self.hop.peer)),
        }
    }

    /// The answer was not the one expected: say so, and back off from the server.
    pub(crate) fn refused(&self, router: &Router, r: Response) -> NodeError {
        router.report_failure(&self.hop.peer);
        unexpected(&self.hop.peer, r)
    }
}

/// Open a link to `hop`'s server for `session` (a local call when it is this node).
pub(crate) async fn connect(reach: Reach<'_>, session: u64, hop: &Hop) -> std::result::Result<HopRun, Failure> {
    let router = reach.router;
    let link = if hop.peer == router.peer_id() {
        match reach.local {
            Some(s) => Link::Local(s.clone()),
            None => return Err(NodeError::NoRoute("the route names this node, which serves nothing".into()).into()),
        }
    } else {
        let opened = tokio::time::timeout(STEP_DEADLINE, router.transport().open(hop.peer))
            .await
            .map_err(|_| NodeError::Timeout(hop.peer.to_string()))
            .and_then(|r| r.map_err(NodeError::from));
        match opened {
            Ok(stream) => Link::Remote(Remote::new(hop.peer, Some(session), stream)),
            Err(e) => return Err(fault(router, e, hop.peer)),
        }
    };
    Ok(HopRun { hop: hop.clone(), link, steps: 0, rtt_us: 0.0, compute_us: 0.0, bytes: 0.0, prefill_us: 0.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stall_is_fifty_usual_steps_within_the_bounds() {
        assert_eq!(stall_deadline(false, 1e6), STEP_DEADLINE, "a prefill gets the whole deadline");
        assert_eq!(stall_deadline(true, 0.0), STEP_DEADLINE, "no usual step yet");
        assert_eq!(stall_deadline(true, 100.0), MIN_STALL, "a fast hop still gets the floor");
        assert_eq!(stall_deadline(true, 100_000.0), Duration::from_secs(5));
        assert_eq!(stall_deadline(true, 10e6), STEP_DEADLINE, "never past the step deadline");
    }
}
