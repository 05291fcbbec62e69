//! ODIN's OpenAI-compatible HTTP API over a node.
//!
//! `/v1/completions` and `/v1/chat/completions` (streaming with server-sent
//! events, or not), `/v1/models`, `/health` and `/status`. A completion
//! travels through the network like any other: the node picks a route and
//! the tokens come back as the last hop samples them. Bad requests get
//! OpenAI-style JSON errors with a 4xx code.

#![warn(missing_docs)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use odin_format::Sampling;
use odin_node::{GenerateRequest, Node, Relay};
use odin_proto::Dtype;
use odin_text::{prompt_ids, special, TextStream, Tokenizer};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// Most tokens one request may ask for.
pub const MAX_TOKENS: usize = 4096;

/// What the handlers share.
pub struct Api {
    node: Arc<Node>,
    tokenizer: Tokenizer,
    name: String,
    wire: Dtype,
    relay: Relay,
}

impl Api {
    /// An API over `node`, naming the model `name`, moving activations as `wire` along `relay`.
    pub fn new(node: Arc<Node>, tokenizer: Tokenizer, name: String, wire: Dtype, relay: Relay) -> Arc<Self> {
        Arc::new(Self { node, tokenizer, name, wire, relay })
    }
}

/// The routes.
pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/status", get(status))
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such endpoint; see /v1/models, /v1/completions, /v1/chat/completions, /health, /status",
                "not_found",
            )
        })
        .with_state(api)
}

/// Serve `api` on `listener` until the future `stop` completes.
pub async fn serve(
    api: Arc<Api>,
    listener: tokio::net::TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(api)).with_graceful_shutdown(stop).await
}

/// Bind `addr` for [`serve`] (port 0 picks a free one).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

fn error(status: StatusCode, message: &str, code: &str) -> Response {
    let kind = if status.is_client_error() { "invalid_request_error" } else { "server_error" };
    (status, Json(json!({"error": {"message": message, "type": kind, "param": null, "code": code}}))).into_response()
}

async fn health(State(api): State<Arc<Api>>) -> Response {
    let route = api.node.route();
    let body = json!({"status": if route.is_some() { "ok" } else { "no_route" }, "model": api.name, "model_id": api.node.model().to_string()});
    (if route.is_some() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, Json(body)).into_response()
}

async fn status(State(api): State<Arc<Api>>) -> Response {
    let mut v = serde_json::to_value(api.node.status().await).unwrap_or(Value::Null);
    v["route"] = serde_json::to_value(api.node.route()).unwrap_or(Value::Null);
    Json(v).into_response()
}

async fn models(State(api): State<Arc<Api>>) -> Response {
    Json(json!({"object": "list", "data": [
        {"id": api.name, "object": "model", "created": 0, "owned_by": "odin", "odin_model_id": api.node.model().to_string()}
    ]}))
    .into_response()
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct Message {
    role: String,
    content: Value,
}

#[derive(Deserialize)]
struct Body {
    model: Option<String>,
    prompt: Option<Value>,
    messages: Option<Vec<Message>>,
    max_tokens: Option<usize>,
    max_completion_tokens: Option<usize>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<u32>,
    seed: Option<u64>,
    stream: Option<bool>,
    n: Option<usize>,
    stop: Option<Stop>,
}

struct Job {
    prompt: String,
    req: GenerateRequest,
    stop: Vec<String>,
    stream: bool,
}

/// A refused request: status, message and OpenAI error code.
struct Refusal(StatusCode, String, &'static str);

fn parse(api: &Api, raw: &[u8], chat: bool) -> Result<Job, Refusal> {
    let bad = |m: String| Refusal(StatusCode::BAD_REQUEST, m, "invalid_request");
    let b: Body = serde_json::from_slice(raw)
        .map_err(|e| bad(format!("the request body is not valid JSON for this endpoint: {e}")))?;
    match b.model.as_deref() {
        None => return Err(bad("missing field `model`; GET /v1/models lists it".into())),
        Some(m) if m == api.name || m == api.node.model().to_string() => {}
        Some(m) => {
            return Err(Refusal(
                StatusCode::NOT_FOUND,
                format!("the model `{m}` does not exist here; this node serves `{}`", api.name),
                "model_not_found",
            ))
        }
    }
    if b.n.unwrap_or(1) != 1 {
        return Err(bad("only n = 1 is supported".into()));
    }
    let prompt = if chat {
        let msgs = b.messages.ok_or_else(|| bad("missing field `messages`".into()))?;
        // The model answers one task prompt: the last user message is the task.
        let last =
            msgs.iter().rev().find(|m| m.role == "user").ok_or_else(|| bad("`messages` has no user message".into()))?;
        match &last.content {
            Value::String(s) => s.clone(),
            Value::Array(parts) => {
                parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join("")
            }
            _ => return Err(bad("a message's `content` must be a string or a list of text parts".into())),
        }
    } else {
        match b.prompt {
            Some(Value::String(s)) => s,
            Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => a[0].as_str().unwrap_or_default().to_string(),
            Some(_) => return Err(bad("`prompt` must be a string (one prompt per request)".into())),
            None => return Err(bad("missing field `prompt`".into())),
        }
    };
    if prompt.trim().is_empty() {
        return Err(bad("the prompt is empty".into()));
    }
    let max_new = b.max_completion_tokens.or(b.max_tokens).unwrap_or(256);
    if max_new == 0 || max_new > MAX_TOKENS {
        return Err(bad(format!("max_tokens must be within 1..={MAX_TOKENS}")));
    }
    // Greedy unless asked: the bundled model is a task solver, and greedy answers are the verified ones.
    let temperature = b.temperature.unwrap_or(0.0);
    let top_p = b.top_p.unwrap_or(1.0);
    // OpenAI's own range; the sampler itself takes any finite temperature.
    if !(temperature.is_finite() && (0.0..=2.0).contains(&temperature)) {
        return Err(bad("temperature must be within [0, 2]".into()));
    }
    let sampling = Sampling { temperature, top_k: b.top_k.unwrap_or(0), top_p, seed: b.seed.unwrap_or(0) };
    sampling.check().map_err(bad)?;
    let ids = prompt_ids(&api.tokenizer, &prompt).map_err(|e| bad(e.to_string()))?;
    let stop = match b.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) if v.len() <= 4 => v,
        Some(Stop::Many(_)) => return Err(bad("at most 4 stop sequences".into())),
    };
    Ok(Job {
        prompt,
        req: GenerateRequest {
            prompt: ids,
            max_new,
            sampling,
            wire: api.wire,
            relay: api.relay,
            stop: Some(special::EOS),
        },
        stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
        stream: b.stream.unwrap_or(false),
    })
}

enum Piece {
    Text(String),
    Done { finish: &'static str, completion_tokens: usize, extra: Value },
    Failed(String),
}

/// Run the job in its own task; text pieces (already cut at stop sequences) come back on the channel.
fn spawn(api: Arc<Api>, job: Job) -> mpsc::UnboundedReceiver<Piece> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = TextStream::new(&api.tokenizer);
        let mut text = String::new();
        let mut sent = 0usize;
        let mut stopped = false;
        let max_new = job.req.max_new;
        let r = api
            .node
            .generate(&job.req, |tok| {
                if let Ok(Some(piece)) = stream.push(tok) {
                    text.push_str(&piece);
                    if let Some(cut) = job.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
                        text.truncate(cut);
                        stopped = true;
                    }
                    // Hold back a tail that could still become a stop sequence.
                    let hold = if stopped { 0 } else { job.stop.iter().map(|s| s.len() - 1).max().unwrap_or(0) };
                    let mut upto = text.len().saturating_sub(hold).max(sent);
                    while !text.is_char_boundary(upto) {
                        upto -= 1;
                    }
                    if upto > sent {
                        let _ = tx.send(Piece::Text(text[sent..upto].to_string()));
                        sent = upto;
                    }
                }
                !stopped && !tx.is_closed()
            })
            .await;
        match r {
            Ok(g) => {
                if sent < text.len() {
                    let _ = tx.send(Piece::Text(text[sent..].to_string()));
                }
                let finish = if !stopped && g.tokens.len() >= max_new { "length" } else { "stop" };
                let extra = json!({"route": g.route, "decode_tok_s": g.decode_tok_s, "prefill_ms": g.prefill_ms});
                let _ = tx.send(Piece::Done { finish, completion_tokens: g.tokens.len(), extra });
            }
            Err(e) => {
                let _ = tx.send(Piece::Failed(e.to_string()));
            }
        }
    });
    rx
}

fn now() -> u64 {
    odin_net::now_ms() / 1000
}

async fn completions(State(api): State<Arc<Api>>, body: Bytes) -> Response {
    run(api, body, false).await
}

async fn chat(State(api): State<Arc<Api>>, body: Bytes) -> Response {
    run(api, body, true).await
}

async fn run(api: Arc<Api>, body: Bytes, chat: bool) -> Response {
    let job = match parse(&api, &body, chat) {
        Ok(j) => j,
        Err(Refusal(status, message, code)) => return error(status, &message, code),
    };
    let id = format!("{}-{:016x}", if chat { "chatcmpl" } else { "cmpl" }, rand::random::<u64>());
    let created = now();
    let prompt_tokens = job.req.prompt.len();
    let stream = job.stream;
    tracing::debug!(prompt = %job.prompt, "completion request");
    let mut rx = spawn(api.clone(), job);
    let name = api.name.clone();
    if !stream {
        let mut text = String::new();
        while let Some(p) = rx.recv().await {
            match p {
                Piece::Text(t) => text.push_str(&t),
                Piece::Failed(e) => {
                    return error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &format!("generation failed: {e}"),
                        "generation_failed",
                    )
                }
                Piece::Done { finish, completion_tokens, extra } => {
                    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens});
                    let choice = if chat {
                        json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish, "logprobs": null})
                    } else {
                        json!({"index": 0, "text": text, "finish_reason": finish, "logprobs": null})
                    };
                    let object = if chat { "chat.completion" } else { "text_completion" };
                    return Json(json!({"id": id, "object": object, "created": created, "model": name, "choices": [choice], "usage": usage, "odin": extra})).into_response();
                }
            }
        }
        return error(StatusCode::INTERNAL_SERVER_ERROR, "the generation ended without a result", "internal");
    }
    let object = if chat { "chat.completion.chunk" } else { "text_completion" };
    let chunk = move |delta: Option<&str>, finish: Option<&str>| -> Value {
        let choice = if chat {
            let d = match delta {
                Some(t) => json!({"role": "assistant", "content": t}),
                None => json!({}),
            };
            json!({"index": 0, "delta": d, "finish_reason": finish, "logprobs": null})
        } else {
            json!({"index": 0, "text": delta.unwrap_or(""), "finish_reason": finish, "logprobs": null})
        };
        json!({"id": id, "object": object, "created": created, "model": name, "choices": [choice]})
    };
    let events = async_stream(rx, chunk);
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}

fn async_stream(
    rx: mpsc::UnboundedReceiver<Piece>,
    chunk: impl Fn(Option<&str>, Option<&str>) -> Value + Send + 'static,
) -> impl futures::Stream<Item = Result<Event, Infallible>> {
    use futures::StreamExt;
    let pieces = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
    pieces
        .flat_map(move |p| {
            let evs: Vec<Event> = match p {
                Piece::Text(t) => vec![Event::default().data(chunk(Some(&t), None).to_string())],
                Piece::Done { finish, .. } => {
                    vec![Event::default().data(chunk(None, Some(finish)).to_string()), Event::default().data("[DONE]")]
                }
                // Headers are sent already: report the failure in-band, as OpenAI does.
                Piece::Failed(e) => vec![
                    Event::default()
                        .data(json!({"error": {"message": format!("generation failed: {e}"), "type": "server_error", "code": "generation_failed"}}).to_string()),
                    Event::default().data("[DONE]"),
                ],
            };
            futures::stream::iter(evs.into_iter().map(Ok))
        })
}
