//! A leaving server hands its part of a session back: resume it on other servers from the
//! handed-over state, with nothing replayed.

use std::time::Duration;

use odin_proto::infer::Request;
use odin_proto::{Dtype, Tensor};

use crate::blame::Failure;
use crate::directory::Hop;
use crate::error::NodeError;
use crate::hop::{connect, HopRun, Reach};
use crate::request::{GenerateRequest, Progress};

/// Longest a session waits for another server of a leaving server's blocks.
const TAKE_OVER_WAIT: Duration = Duration::from_secs(10);

/// `old`'s server left and handed back the session's `state` over its blocks: resume the session
/// on other servers for those blocks (several, when no one server holds them all), each from its
/// slice of the state. The step `old` refused is then run on them; nothing is replayed.
pub(crate) async fn take_over(
    reach: Reach<'_>,
    session: u64,
    old: Hop,
    state: Tensor,
    req: &GenerateRequest,
    progress: &Progress,
) -> Result<Vec<HopRun>, Failure> {
    let router = reach.router;
    let (start, end) = (old.start, old.end);
    let bad = |what: String| {
        router.report_failure(&old.peer);
        Failure { error: NodeError::Protocol { peer: old.peer.to_string(), what }, peer: Some(old.peer) }
    };
    if !state.rows.is_multiple_of(end - start) {
        return Err(bad(format!("handed over {} state rows for {} blocks", state.rows, end - start)));
    }
    let per_block = state.rows / (end - start);
    let rows = state.decode().map_err(|e| bad(e.to_string()))?;
    let route = router.wait_for_span(start..end, &[old.peer], TAKE_OVER_WAIT).await.map_err(|error| {
        router.report_failure(&old.peer);
        Failure { error, peer: Some(old.peer) }
    })?;
    let mut hops = Vec::with_capacity(route.len());
    for hop in &route {
        let mut h = connect(reach, session, hop).await?;
        let slice = &rows[(hop.start - start) * per_block * state.cols..(hop.end - start) * per_block * state.cols];
        let state = Tensor::encode(slice, state.cols, Dtype::F32).map_err(|e| bad(e.to_string()))?;
        let resume = Request::Resume {
            session,
            start: hop.start as u32,
            end: hop.end as u32,
            sampling: req.sampling,
            drawn: progress.draws(req),
            reply: req.wire,
            state,
        };
        h.open(router, resume).await?;
        hops.push(h);
    }
    Ok(hops)
}
