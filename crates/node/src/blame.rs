//! Which server a failed step is the fault of: a failover routes around that server, and only
//! that one, so a healthy server is never set aside for another's death.

use odin_net::PeerId;
use odin_proto::infer::Response;
use odin_proto::PeerBytes;

use crate::error::NodeError;
use crate::router::Router;

/// A failed attempt: the error, and the server to route around when another route may succeed.
#[derive(Debug)]
pub(crate) struct Failure {
    /// What went wrong.
    pub(crate) error: NodeError,
    /// The server that failed, when the failure is the server's (dead, stalled, garbage, refusing).
    pub(crate) peer: Option<PeerId>,
}

impl From<NodeError> for Failure {
    fn from(error: NodeError) -> Self {
        Failure { error, peer: None }
    }
}

/// Whether another server could do better than `peer` did: transport failures, deadlines,
/// garbage and server-side refusals; not our own bad input.
pub(crate) fn blame(error: NodeError, peer: PeerId) -> Failure {
    use odin_proto::infer::ErrorCode::{BadInput, Malformed};
    let server_side = match &error {
        NodeError::Remote { code, .. } => !matches!(code, BadInput | Malformed),
        NodeError::Net(_)
        | NodeError::Timeout(_)
        | NodeError::Protocol { .. }
        | NodeError::HopDown { .. }
        | NodeError::Fraud { .. } => true,
        _ => false,
    };
    Failure { error, peer: server_side.then_some(peer) }
}

/// [`blame`], after putting `peer` on backoff.
pub(crate) fn fault(router: &Router, error: NodeError, peer: PeerId) -> Failure {
    router.report_failure(&peer);
    blame(error, peer)
}

/// The error for `peer` answering `r` where something else was expected.
pub(crate) fn unexpected(peer: &PeerId, r: Response) -> NodeError {
    match r {
        Response::Error { code, message } => NodeError::Remote { peer: peer.to_string(), code, message },
        other => NodeError::Protocol { peer: peer.to_string(), what: format!("unexpected answer {}", kind(&other)) },
    }
}

/// A response's name, for messages.
pub(crate) fn kind(r: &Response) -> &'static str {
    match r {
        Response::Info(_) => "Info",
        Response::Opened { .. } => "Opened",
        Response::Hidden { .. } => "Hidden",
        Response::Token { .. } => "Token",
        Response::Closed => "Closed",
        Response::Handoff { .. } => "Handoff",
        Response::Error { .. } => "Error",
        Response::Linked { .. } => "Linked",
        Response::Pushed { .. } => "Pushed",
        Response::Progress { .. } => "Progress",
        Response::NextHopDown { .. } => "NextHopDown",
        Response::Revealed { .. } => "Revealed",
        Response::Audited { .. } => "Audited",
    }
}

/// Hop `by`, whose next hop in the chain is `after`, says `next` is down: blame `next`. A hop
/// naming a peer that is not its next hop is out of protocol, and is blamed itself.
pub(crate) fn next_hop_down(
    router: &Router,
    by: PeerId,
    after: Option<PeerId>,
    next: PeerBytes,
    reason: String,
) -> Failure {
    let named = odin_net::peer_from_wire(&next).ok();
    let Some(next) = named.filter(|n| after == Some(*n)) else {
        router.report_failure(&by);
        let who = named.map_or_else(|| format!("{next:?}"), |n| n.to_string());
        let what = format!("said {who} was down, which is not its next hop");
        return Failure { error: NodeError::Protocol { peer: by.to_string(), what }, peer: Some(by) };
    };
    router.report_failure(&next);
    Failure { error: NodeError::HopDown { peer: next.to_string(), by: by.to_string(), reason }, peer: Some(next) }
}

#[cfg(test)]
mod tests {
    use odin_proto::infer::ErrorCode;

    use super::*;
    use crate::fake::World;

    fn remote(code: ErrorCode) -> NodeError {
        NodeError::Remote { peer: "p".into(), code, message: "no".into() }
    }

    #[test]
    fn a_server_is_blamed_for_its_own_faults_only() {
        let p = PeerId::random();
        for e in [
            remote(ErrorCode::Full),
            remote(ErrorCode::UnknownSession),
            NodeError::Timeout("p".into()),
            NodeError::Protocol { peer: "p".into(), what: "junk".into() },
            NodeError::Net(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()),
        ] {
            assert_eq!(blame(e, p).peer, Some(p));
        }
        // Our own bad input would fail anywhere: no server is at fault.
        for e in [remote(ErrorCode::BadInput), remote(ErrorCode::Malformed), NodeError::Model("empty prompt".into())] {
            assert_eq!(blame(e, p).peer, None);
        }
    }

    #[test]
    fn an_unexpected_answer_says_what_it_was() {
        let p = PeerId::random();
        let e = unexpected(&p, Response::Closed);
        assert!(matches!(&e, NodeError::Protocol { what, .. } if what.contains("Closed")), "{e}");
        let e = unexpected(&p, Response::Error { code: ErrorCode::Full, message: "full".into() });
        assert!(matches!(e, NodeError::Remote { code: ErrorCode::Full, .. }));
    }

    #[test]
    fn a_next_hop_reported_down_is_blamed_unless_it_is_not_the_next_hop() {
        let world = World::new();
        let (by, next, stranger) = (world.serve(0..2), world.serve(2..4), PeerId::random());
        let router = Router::hearing(&world, None, &[]);
        let wire = |p: PeerId| odin_net::peer_to_wire(&p).unwrap();
        let f = next_hop_down(&router, by, Some(next), wire(next), "it dropped the link".into());
        assert_eq!(f.peer, Some(next));
        assert!(matches!(&f.error, NodeError::HopDown { by: b, .. } if *b == by.to_string()), "{}", f.error);
        // Naming a peer that is not its next hop (or having none) is the reporter's own fault.
        for after in [Some(next), None] {
            let f = next_hop_down(&router, by, after, wire(stranger), "?".into());
            assert_eq!(f.peer, Some(by));
            assert!(f.error.to_string().contains("not its next hop"), "{}", f.error);
        }
        let blamed = |p: PeerId| router.read(|d| d.entries().into_iter().find(|(q, _)| *q == p).map(|(_, e)| e.blamed));
        assert_eq!((blamed(next), blamed(by)), (Some(Some(1)), Some(Some(2))));
    }
}
