//! One session on one route: open it on every hop, link the hops into a chain, run the steps
//! until the answer is done, close it, and sum up each hop's figures.
//!
//! Two ways a step travels ([`Relay`]). By default the servers pass it along the chain
//! themselves: the client sends the input to the first hop, each hop pushes its output to the
//! next, and the last sends the sampled token back to the client, one message per hop. With
//! [`Relay::Client`] the client drives every hop itself (as Petals does): a round trip per hop.
//! Either way the client holds the token history and a stream to every hop, and learns which
//! hop failed: a pushing hop that fails, or cannot reach its next hop, says so on the client's
//! stream, and a stalled chain is probed hop by hop. That is what failover needs; after a
//! handoff the generation goes on hop by hop.

use std::collections::HashMap;
use std::time::Instant;

use odin_proto::infer::{Request, Response, StepInput};
use odin_proto::verify::input_hash;

use crate::blame::{blame, kind, Failure};
use crate::directory::Hop;
use crate::error::NodeError;
use crate::handoff::take_over;
use crate::hop::{connect, HopRun, Reach, MIN_STALL};
use crate::link::Link;
use crate::request::{GenerateRequest, Generation, HopStats, Progress, Relay};
use crate::step::{push_step, relay, ChainStats, Pushed, Sampled};

/// Run `req` through `route`, continuing from `progress`, calling `on_token` with each new
/// token; `on_token` may stop the generation by returning false.
///
/// After a failover the new route replays the prompt and every token generated so far in one
/// prefill, and the last hop's sampler skips the draws already made: the engine is
/// deterministic, so the continuation is the one the failed route would have produced.
pub(crate) async fn generate_on(
    reach: Reach<'_>,
    route: &[Hop],
    req: &GenerateRequest,
    progress: &mut Progress,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<Generation, Failure> {
    if req.prompt.is_empty() {
        return Err(NodeError::Model("the prompt has no tokens".into()).into());
    }
    let router = reach.router;
    let model = router.model();
    let session: u64 = rand::random();
    let mut hops = Vec::with_capacity(route.len());
    for hop in route {
        hops.push(connect(reach, session, hop).await?);
    }
    let drawn = progress.draws(req);
    for h in &mut hops {
        let open = Request::Open {
            session,
            start: h.hop.start as u32,
            end: h.hop.end as u32,
            sampling: req.sampling,
            drawn,
            reply: req.wire,
        };
        h.open(router, open).await?;
    }
    // The chain needs a stream from the client to every hop after the first, for the token
    // and for failures; this node's own server can only be the first hop.
    let chain = req.relay == Relay::Chain
        && hops.len() > 1
        && hops[1..].iter().all(|h| matches!(h.link, Link::Remote(_)))
        && link_chain(reach, session, &mut hops).await?;
    let result = run_steps(reach, session, &mut hops, req, progress, &mut on_token, chain).await;
    let failed = result.as_ref().err().and_then(|f| f.peer);
    for h in hops.iter_mut().filter(|h| Some(h.hop.peer) != failed) {
        // Closing is a courtesy (sessions also expire on their own), and never to the server
        // that just failed: a dead one would only make the failover wait.
        let _ = h.link.call(model, Request::Close { session }, MIN_STALL).await;
    }
    let chain = result?;
    for h in &hops {
        router.report_success(&h.hop.peer);
        if h.steps > 0 {
            router.report_observed(&h.hop.peer, h.rtt_us / h.steps as f64 / h.hop.blocks() as f64);
        }
    }
    let decoded = progress.decode_steps;
    let decode_s = progress.decode_start.map_or(0.0, |t| t.elapsed().as_secs_f64());
    Ok(Generation {
        tokens: progress.tokens.clone(),
        logits_hashes: progress.hashes.clone(),
        route: hops
            .iter()
            .map(|h| {
                let n = h.steps.max(1) as f64;
                HopStats {
                    hop: h.hop.clone(),
                    steps: h.steps,
                    mean_rtt_us: h.rtt_us / n,
                    mean_compute_us: h.compute_us / n,
                    mean_overhead_us: (h.rtt_us - h.compute_us) / n,
                    bytes_per_token: h.bytes / n,
                }
            })
            .collect(),
        prefill_ms: progress.prefill_ms.unwrap_or(0.0),
        decode_tok_s: if decode_s > 0.0 { decoded as f64 / decode_s } else { 0.0 },
        failovers: 0,
        failures: Vec::new(),
        handoffs: progress.handoffs,
        relay: if chain { Relay::Chain } else { Relay::Client },
    })
}

/// Ask each hop but the last to push its outputs to the next. False when a server could not
/// link (it cannot reach the next hop, say): the generation then goes hop by hop.
async fn link_chain(reach: Reach<'_>, session: u64, hops: &mut [HopRun]) -> Result<bool, Failure> {
    for i in 0..hops.len() - 1 {
        let next = hops[i + 1].hop.peer;
        let h = &mut hops[i];
        let wire = odin_net::peer_to_wire(&next).map_err(|e| Failure::from(NodeError::from(e)))?;
        match h.call(reach.router, Request::Link { session, next: wire }).await {
            Ok((Response::Linked { .. }, _)) => {}
            Ok((r, _)) => {
                tracing::info!(
                    "server {} cannot push to {next} ({}); the client relays every hop",
                    h.hop.peer,
                    kind(&r)
                );
                return Ok(false);
            }
            Err(e) => return Err(blame(e, h.hop.peer)),
        }
    }
    Ok(true)
}

/// Run the steps of a generation; returns whether every step went down the chain.
#[allow(clippy::too_many_arguments)]
async fn run_steps(
    reach: Reach<'_>,
    session: u64,
    hops: &mut Vec<HopRun>,
    req: &GenerateRequest,
    progress: &mut Progress,
    on_token: &mut impl FnMut(u32) -> bool,
    mut chain: bool,
) -> Result<bool, Failure> {
    if req.max_new == 0 || progress.done {
        return Ok(chain);
    }
    // The prompt and every token generated so far: the whole history on a fresh route.
    let mut input: Vec<u32> = req.prompt.iter().chain(&progress.tokens).copied().collect();
    let mut stats = ChainStats::default();
    let t0 = Instant::now();
    // Each hop's last claim in this session, for the next one to continue.
    let mut prev = HashMap::new();
    for step in 0u64.. {
        let decoding = step > 0;
        let x = StepInput::Tokens(std::mem::take(&mut input));
        let sent = input_hash(&x);
        let drawn = progress.draws(req);
        let sampled: Sampled = if chain {
            match push_step(reach.router, session, hops, x, decoding, step + 1, &mut stats).await? {
                Pushed::Token(sampled) => {
                    progress.decode_steps += u64::from(decoding);
                    sampled
                }
                Pushed::Handoff { at, state, input } => {
                    // The hops before `at` ran this step; its successors run the rest of it,
                    // and from now on the client relays every hop (the chain's links are stale).
                    tracing::info!("server {} is leaving; moving its part of the session", hops[at].hop.peer);
                    chain = false;
                    let new = take_over(reach, session, hops[at].hop.clone(), state, req, progress).await?;
                    hops.splice(at..=at, new);
                    progress.handoffs += 1;
                    relay(reach, session, hops, at, input, decoding, req, progress).await?
                }
            }
        } else {
            relay(reach, session, hops, 0, x, decoding, req, progress).await?
        };
        if let Some(auditor) = reach.auditor {
            if sampled.claims.len() == hops.len() {
                let got = (sampled.id, sampled.logits);
                auditor.after_step(reach, hops, &mut prev, &sampled.claims, sent, got, req, drawn).await?;
            } else {
                // The step changed hops on the way (a handoff): the new hops start afresh.
                prev.clear();
            }
        }
        let (tok, hash) = (sampled.id, sampled.hash_hex());
        if progress.prefill_ms.is_none() {
            progress.prefill_ms = Some(t0.elapsed().as_secs_f64() * 1e3);
            progress.decode_start = Some(Instant::now());
        }
        // The stop token is sampled but is not part of the answer.
        if Some(tok) == req.stop {
            progress.done = true;
            break;
        }
        progress.tokens.push(tok);
        progress.hashes.push(hash);
        if !on_token(tok) || progress.tokens.len() == req.max_new {
            progress.done = true;
            break;
        }
        input = vec![tok];
    }
    Ok(chain)
}
