//! Stateless requests (revision 2026-07-28): no session and no
//! `initialize`; every request carries its protocol version and the
//! client's capabilities in `params._meta`. The bridge answers
//! `server/discover` and `subscriptions/listen` itself and runs every other
//! request on a pooled backend of the older revisions (see `pool`), whose
//! results it completes with what 2026-07-28 requires.

use crate::binding::Binding;
use crate::endpoint::VERSION_KEY;
use crate::host::Host;
use crate::http::{relay, Body, Item, Reply, Request};
use crate::mcp::{self, code, Shape};
use crate::message;
use crate::mrtr::{self, Answers, CallRun, Input};
use crate::pool::{CallEvent, Listener, Refusal as PoolRefusal};
use crate::spec::SpawnSpec;
use serde_json::{json, Map, Value};
use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

const CAPABILITIES_KEY: &str = "io.modelcontextprotocol/clientCapabilities";
const LOG_LEVEL_KEY: &str = "io.modelcontextprotocol/logLevel";
const SERVER_INFO_KEY: &str = "io.modelcontextprotocol/serverInfo";
const SUBSCRIPTION_KEY: &str = "io.modelcontextprotocol/subscriptionId";

/// The requests of 2026-07-28 the bridge serves; anything else gets 404.
const SERVED: [&str; 10] = [
    "server/discover",
    "subscriptions/listen",
    "tools/list",
    "tools/call",
    "prompts/list",
    "prompts/get",
    "resources/list",
    "resources/read",
    "resources/templates/list",
    "completion/complete",
];

/// Results that 2026-07-28 wants cache hints on.
const CACHEABLE: [&str; 5] =
    ["tools/list", "prompts/list", "resources/list", "resources/templates/list", "resources/read"];

/// Messages of a call waiting for its HTTP request.
const CALL_QUEUE: usize = 16;

/// An answer the bridge gives itself.
struct Refusal {
    status: u16,
    body: Vec<u8>,
    retry_after: Option<u32>,
}

fn refuse(status: u16, id: &Value, code: i64, message: &str, data: Option<Value>) -> Refusal {
    Refusal { status, body: mcp::error_bytes(id, code, message, data), retry_after: None }
}

/// Serves a stateless request on the worker's connection. Returns whether
/// the connection can be used again.
pub async fn serve<R, W>(
    host: &Rc<Host>,
    request: Request<'_>,
    parsed: Option<(Value, Shape)>,
    reader: &mut R,
    writer: W,
) -> bool
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut reply = Reply::new(writer);
    match handle(host, &request, parsed, reader, &mut reply).await {
        Ok(reusable) => reusable,
        Err(r) => {
            let head = reply.head_with(r.status, Body::Json, None, r.retry_after).await;
            head.is_ok() && reply.message(&r.body).await.is_ok() && reply.end().await.is_ok()
        }
    }
}

async fn handle<R, W>(
    host: &Rc<Host>,
    request: &Request<'_>,
    parsed: Option<(Value, Shape)>,
    reader: &mut R,
    reply: &mut Reply<W>,
) -> Result<bool, Refusal>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (message, shape) = match parsed {
        Some(p) => p,
        None => {
            let (c, why) = mcp::parse(request.body).map_err(|(c, why)| refuse(400, &Value::Null, c, &why, None))?;
            (c, why)
        }
    };
    let (id, method) = match shape {
        Shape::Request { id, method } => (id, method),
        // Core 2026-07-28 defines no notification a client sends over HTTP.
        Shape::Notification { .. } => return Ok(reply.empty(202, None).await.is_ok()),
        Shape::Response { id } => {
            return Err(refuse(400, &id, code::INVALID_REQUEST, "clients do not send responses in 2026-07-28", None))
        }
    };
    validate(request, &message, &id, &method)?;
    let spec = host
        .spec(request.spec)
        .map_err(|e| refuse(500, &id, code::INTERNAL_ERROR, &format!("the bridge sent {e}"), None))?;
    match method.as_str() {
        "server/discover" => discover(host, request, spec, &id, reply).await,
        "subscriptions/listen" => listen(host, request, spec, &message, &id, reader, reply).await,
        _ => call(host, request, spec, message, id, method, reader, reply).await,
    }
}

/// Checks a request in the order the revision gives: the envelope, the
/// version header against it, the version, the method headers, the method.
fn validate(request: &Request<'_>, message: &Value, id: &Value, method: &str) -> Result<(), Refusal> {
    let meta = mcp::meta(message);
    let version = meta.and_then(|m| m.get(VERSION_KEY)).and_then(Value::as_str);
    let capabilities = meta.and_then(|m| m.get(CAPABILITIES_KEY)).filter(|c| c.is_object());
    let (Some(version), Some(_)) = (version, capabilities) else {
        let missing = match (meta, version) {
            (None, _) => "params._meta".to_string(),
            (_, None) => format!("params._meta[\"{VERSION_KEY}\"]"),
            _ => format!("params._meta[\"{CAPABILITIES_KEY}\"]"),
        };
        return Err(refuse(400, id, code::INVALID_PARAMS, &format!("the request has no {missing}"), None));
    };
    let header = &*request.headers.version;
    if header != version {
        let why = match header.is_empty() {
            true => "the MCP-Protocol-Version header is missing".to_string(),
            false => format!("the MCP-Protocol-Version header ({header}) differs from params._meta ({version})"),
        };
        return Err(refuse(400, id, code::HEADER_MISMATCH, &why, None));
    }
    if version != mcp::MODERN_VERSION {
        let data = json!({"supported": mcp::supported_versions(), "requested": version});
        return Err(refuse(
            400,
            id,
            code::UNSUPPORTED_VERSION,
            &format!("unsupported protocol version \"{version}\""),
            Some(data),
        ));
    }
    match request.headers.mcp_method.as_deref().map(decode_header) {
        None => return Err(refuse(400, id, code::HEADER_MISMATCH, "the Mcp-Method header is missing", None)),
        Some(m) if m != method => {
            let why = format!("the Mcp-Method header ({m}) differs from the method ({method})");
            return Err(refuse(400, id, code::HEADER_MISMATCH, &why, None));
        }
        _ => {}
    }
    let named = match method {
        "tools/call" | "prompts/get" => message.get("params").and_then(|p| p.get("name")),
        "resources/read" => message.get("params").and_then(|p| p.get("uri")),
        _ => None,
    };
    if let Some(name) = named.and_then(Value::as_str) {
        match request.headers.mcp_name.as_deref().map(decode_header) {
            None => return Err(refuse(400, id, code::HEADER_MISMATCH, "the Mcp-Name header is missing", None)),
            Some(n) if n != name => {
                let why = format!("the Mcp-Name header ({n}) differs from the request ({name})");
                return Err(refuse(400, id, code::HEADER_MISMATCH, &why, None));
            }
            _ => {}
        }
    }
    if !SERVED.contains(&method) {
        let why = format!("method \"{method}\" is not served in {}", mcp::MODERN_VERSION);
        return Err(refuse(404, id, code::METHOD_NOT_FOUND, &why, None));
    }
    Ok(())
}

/// A header value as sent: surrounding whitespace dropped, and a
/// `=?base64?…?=` value decoded.
pub(crate) fn decode_header(value: &str) -> String {
    let value = value.trim();
    match value.strip_prefix("=?base64?").and_then(|v| v.strip_suffix("?=")) {
        Some(encoded) => base64_decode(encoded).and_then(|b| String::from_utf8(b).ok()).unwrap_or_default(),
        None => value.to_string(),
    }
}

pub(crate) fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (n, chunk) in bytes.chunks(4).enumerate() {
        let last = n + 1 == bytes.len() / 4;
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut acc = 0u32;
        for &c in &chunk[..4 - pad] {
            acc = (acc << 6) | value(c)?;
        }
        acc <<= 6 * pad as u32;
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..4 - pad]);
    }
    Some(out)
}

fn pool_refusal(refusal: PoolRefusal, id: &Value) -> Refusal {
    match refusal {
        PoolRefusal::Saturated => Refusal {
            retry_after: Some(1),
            ..refuse(503, id, code::SERVER_ERROR, "every backend is busy; try again later", None)
        },
        PoolRefusal::Failed(why) => {
            refuse(502, id, code::SERVER_ERROR, &format!("{why} (the gateway's error log says why)"), None)
        }
    }
}

/// `server/discover`, from a pooled backend's `initialize` result.
async fn discover<W: AsyncWrite + Unpin>(
    host: &Rc<Host>,
    request: &Request<'_>,
    spec: Rc<SpawnSpec>,
    id: &Value,
    reply: &mut Reply<W>,
) -> Result<bool, Refusal> {
    let (_, init) = host.pools.with_init(host, &request.binding, &spec).await.map_err(|r| pool_refusal(r, id))?;
    let mut capabilities = init.get("capabilities").cloned().unwrap_or_else(|| json!({}));
    if let Some(caps) = capabilities.as_object_mut() {
        // logging/setLevel and resources/subscribe are gone in 2026-07-28.
        caps.remove("logging");
        if let Some(resources) = caps.get_mut("resources").and_then(Value::as_object_mut) {
            resources.remove("subscribe");
        }
    }
    let mut result = json!({
        "resultType": "complete",
        "supportedVersions": mcp::supported_versions(),
        "capabilities": capabilities,
        "ttlMs": 0,
        "cacheScope": "private",
        "_meta": {SERVER_INFO_KEY: init.get("serverInfo").cloned().unwrap_or(Value::Null)},
    });
    if let Some(instructions) = init.get("instructions") {
        result["instructions"] = instructions.clone();
    }
    let response = json!({"jsonrpc": "2.0", "id": id, "result": result});
    Ok(reply.json(200, None, response.to_string().as_bytes()).await.is_ok())
}

/// The list-change notifications a listen filter asks for and the pool's
/// backends said they send.
fn honoured(filter: Option<&Map<String, Value>>, init: &Value) -> (Map<String, Value>, Vec<&'static str>) {
    let mut honoured = Map::new();
    let mut methods = Vec::new();
    for (flag, capability, method) in [
        ("toolsListChanged", "tools", "notifications/tools/list_changed"),
        ("promptsListChanged", "prompts", "notifications/prompts/list_changed"),
        ("resourcesListChanged", "resources", "notifications/resources/list_changed"),
    ] {
        let asked = filter.and_then(|f| f.get(flag)).and_then(Value::as_bool) == Some(true);
        let offered = init.get("capabilities").and_then(|c| c.get(capability)).and_then(|c| c.get("listChanged"))
            == Some(&json!(true));
        if asked && offered {
            honoured.insert(flag.into(), json!(true));
            methods.push(method);
        }
    }
    (honoured, methods)
}

/// `subscriptions/listen`: acknowledged at once, then every list change of
/// the pool's backends that the filter asks for, each tagged with the
/// subscription's id, until the client closes the stream.
async fn listen<R, W>(
    host: &Rc<Host>,
    request: &Request<'_>,
    spec: Rc<SpawnSpec>,
    message: &Value,
    id: &Value,
    reader: &mut R,
    reply: &mut Reply<W>,
) -> Result<bool, Refusal>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let keepalive = spec.keepalive_interval();
    let (pool, init) = host.pools.with_init(host, &request.binding, &spec).await.map_err(|r| pool_refusal(r, id))?;
    let filter = message.get("params").and_then(|p| p.get("notifications")).and_then(Value::as_object);
    let (honoured, methods) = honoured(filter, &init);
    let (tx, mut changes) = mpsc::channel(CALL_QUEUE);
    pool.listen(Listener { methods, tx });
    let tag = json!({SUBSCRIPTION_KEY: id});
    let ack = json!({"jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged",
                     "params": {"_meta": tag, "notifications": honoured}});
    let (items, stream) = mpsc::channel(CALL_QUEUE);
    let _ = items.try_send(Item::Message(message::to_bytes(&ack)));
    let mut shutdown = host.shutdown_watch();
    let forward = async {
        loop {
            tokio::select! {
                change = changes.recv() => {
                    let Some(method) = change else { break };
                    let n = json!({"jsonrpc": "2.0", "method": method, "params": {"_meta": tag}});
                    if items.send(Item::Message(message::to_bytes(&n))).await.is_err() {
                        return;
                    }
                }
                _ = shutdown.wait_for(|&down| down) => break,
            }
        }
        // A graceful end: the listen request's response.
        let done = json!({"jsonrpc": "2.0", "id": id, "result": {"resultType": "complete", "_meta": tag}});
        let _ = items.send(Item::Final(200, message::to_bytes(&done))).await;
    };
    if reply.head(200, Body::Sse, None).await.is_err() {
        return Ok(false);
    }
    Ok(until_relayed(forward, relay(stream, reader, reply, keepalive, None)).await)
}

/// Ids of calls on pooled backends, unique in this host.
fn next_call_id() -> u64 {
    thread_local! { static NEXT: Cell<u64> = const { Cell::new(1) }; }
    NEXT.with(|n| {
        let id = n.get();
        n.set(id + 1);
        id
    })
}

/// Severity order of `notifications/message` levels.
const LOG_LEVELS: [&str; 8] = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"];

/// The requests that may come back `input_required` (and be retried).
const MULTI_ROUND: [&str; 3] = ["tools/call", "prompts/get", "resources/read"];

/// What a call's messages are judged by.
struct CallContext<'a> {
    host: &'a Rc<Host>,
    binding: &'a Binding,
    client_id: &'a Value,
    method: &'a str,
    init: Rc<Value>,
    declared: Value,
    log_level: Option<usize>,
    answers: Answers,
    spec: &'a SpawnSpec,
    state_prefix: &'a str,
}

/// How a call's run over one request ended.
enum Driven {
    /// Its response (or an error) went to the client.
    Done,
    /// It waits for the client's input under this handle, whose
    /// `input_required` result went to the client.
    Parked(String),
    /// It could not wait for input: cancelled, the client told why.
    Refused,
}

/// Any other request: on a pooled backend, its result completed. A call
/// whose backend asks the client something comes back `input_required`
/// and waits, parked, for the client's retry (see `mrtr`).
#[allow(clippy::too_many_arguments)]
async fn call<R, W>(
    host: &Rc<Host>,
    request: &Request<'_>,
    spec: Rc<SpawnSpec>,
    mut message: Value,
    client_id: Value,
    method: String,
    reader: &mut R,
    reply: &mut Reply<W>,
) -> Result<bool, Refusal>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let keepalive = spec.keepalive_interval();
    let meta = mcp::meta(&message).cloned().unwrap_or_default();
    let declared = meta.get(CAPABILITIES_KEY).cloned().unwrap_or_else(|| json!({}));
    let log_level =
        meta.get(LOG_LEVEL_KEY).and_then(Value::as_str).and_then(|l| LOG_LEVELS.iter().position(|&x| x == l));
    // The backend speaks an older revision: the envelope stays here.
    if let Some(m) = message.get_mut("params").and_then(|p| p.get_mut("_meta")).and_then(Value::as_object_mut) {
        m.retain(|k, _| !k.starts_with("io.modelcontextprotocol/"));
        if m.is_empty() {
            if let Some(params) = message.get_mut("params").and_then(Value::as_object_mut) {
                params.remove("_meta");
            }
        }
    }
    let multi_round = MULTI_ROUND.contains(&method.as_str());
    let input = match multi_round {
        true => Input::take(message.get_mut("params"))
            .map_err(|why| refuse(400, &client_id, code::INVALID_PARAMS, &why, None))?,
        false => Input { answers: Answers::default(), state: None },
    };
    let mut run = match input.state {
        Some(state) => host
            .parked
            .resume(&state, &request.binding, &method, message.get("params"))
            .map_err(|why| refuse(400, &client_id, code::INVALID_PARAMS, why, None))?,
        None => {
            let lease =
                host.pools.lease(host, &request.binding, &spec).await.map_err(|r| pool_refusal(r, &client_id))?;
            let call_id = next_call_id();
            message["id"] = json!(call_id);
            let params = match multi_round {
                true => message.get("params").cloned().unwrap_or(Value::Null),
                false => Value::Null,
            };
            let (events_tx, events) = mpsc::channel(CALL_QUEUE);
            if !lease.call(message, events_tx) {
                return Err(refuse(502, &client_id, code::SERVER_ERROR, "the MCP server ended", None));
            }
            CallRun::new(lease, call_id, events, &method, params)
        }
    };
    run.answer_waiting(&input.answers);
    let context = CallContext {
        host,
        binding: &request.binding,
        client_id: &client_id,
        method: &method,
        init: run.lease.pool.init_result().unwrap_or_default(),
        declared,
        log_level,
        answers: input.answers,
        spec: &spec,
        state_prefix: &request.headers.state_prefix,
    };
    let (items, stream) = mpsc::channel(CALL_QUEUE);
    let (reusable, driven) = {
        let drive = drive(&mut run, items, &context, multi_round);
        let relay = relay(stream, reader, reply, keepalive, None);
        tokio::pin!(drive, relay);
        tokio::select! {
            reusable = &mut relay => (reusable, None),
            driven = &mut drive => (relay.await, Some(driven)),
        }
    };
    match driven {
        Some(Driven::Parked(handle)) if reusable => {
            let wait = Duration::from_millis(spec.input_wait_ms);
            host.parked.insert(handle, run, &request.binding, wait);
        }
        Some(Driven::Refused) => run.abandon("the call could not wait for input"),
        // The client closed its stream: in 2026-07-28 that cancels the request.
        _ if !reusable => run.abandon("the client closed its stream"),
        _ => {}
    }
    Ok(reusable)
}

/// Relays a call's messages to its client until its response, or until a
/// round of questions for the client is asked.
async fn drive(run: &mut CallRun, items: mpsc::Sender<Item>, cx: &CallContext<'_>, multi_round: bool) -> Driven {
    // Questions still unanswered by a retry are asked again at once.
    let mut round: Option<Instant> = (!run.waiting.is_empty()).then(Instant::now);
    loop {
        let event = match round {
            Some(started) => {
                let deadline = (Instant::now() + mrtr::ROUND_QUIET).min(started + mrtr::ROUND_LIMIT);
                match tokio::time::timeout_at(deadline.into(), run.events.recv()).await {
                    Ok(event) => event,
                    Err(_) => return ask(run, &items, cx).await,
                }
            }
            None => run.events.recv().await,
        };
        let Some(event) = event else {
            let body =
                mcp::error_bytes(cx.client_id, code::SERVER_ERROR, "the MCP server ended before responding", None);
            let _ = items.send(Item::Final(200, body)).await;
            return Driven::Done;
        };
        let item = match event {
            CallEvent::Notification(n) => {
                let method = n.get("method").and_then(Value::as_str).unwrap_or_default();
                if method == "notifications/message" {
                    // Only to a client that asked for log messages, and at its level.
                    let level = n.get("params").and_then(|p| p.get("level")).and_then(Value::as_str);
                    let severity = level.and_then(|l| LOG_LEVELS.iter().position(|&x| x == l));
                    match (cx.log_level, severity) {
                        (Some(wanted), Some(s)) if s >= wanted => {}
                        _ => continue,
                    }
                } else if method != "notifications/progress" {
                    continue;
                }
                Item::Message(message::to_bytes(&n))
            }
            CallEvent::Asked { id, method, params } => {
                if !multi_round {
                    let why = format!("{} cannot ask the client anything in {}", cx.method, mcp::MODERN_VERSION);
                    run.lease.answer(mcp::error(&id, code::METHOD_NOT_FOUND, &why, None));
                    continue;
                }
                if run.asked(id, method, params, &cx.declared, &cx.answers) && round.is_none() {
                    round = Some(Instant::now());
                }
                continue;
            }
            CallEvent::Response(response) => {
                let (status, body) = complete(response, cx.client_id, cx.method, &cx.init, &run.refused);
                let _ = items.send(Item::Final(status, body)).await;
                return Driven::Done;
            }
            CallEvent::Ended(why) => {
                let body = mcp::error_bytes(
                    cx.client_id,
                    code::SERVER_ERROR,
                    &format!("the MCP server ended before responding ({why})"),
                    None,
                );
                let _ = items.send(Item::Final(200, body)).await;
                return Driven::Done;
            }
        };
        if items.send(item).await.is_err() {
            return Driven::Done;
        }
    }
}

/// Asks the client the round's questions: an `input_required` result whose
/// state names the call, which then waits for the retry.
async fn ask(run: &mut CallRun, items: &mpsc::Sender<Item>, cx: &CallContext<'_>) -> Driven {
    let wait = Duration::from_millis(cx.spec.input_wait_ms);
    let limits = (cx.spec.max_parked_per_consumer, cx.spec.max_parked_per_worker);
    let reserved = cx.host.parked.reserve(run, cx.binding, wait, limits, cx.state_prefix);
    match reserved {
        Ok((handle, state)) => {
            let _ = items.send(Item::Final(200, run.input_required(cx.client_id, &state))).await;
            Driven::Parked(handle)
        }
        Err(why) => {
            let body = mcp::error_bytes(cx.client_id, code::SERVER_ERROR, why, None);
            let _ = items.send(Item::Final(503, body)).await;
            Driven::Refused
        }
    }
}

/// Runs `producer` beside `relay` until the relay is done: if the producer
/// finishes first, what it queued is still relayed; if the client goes
/// first, the producer is dropped.
async fn until_relayed(
    producer: impl std::future::Future<Output = ()>,
    relay: impl std::future::Future<Output = bool>,
) -> bool {
    tokio::pin!(relay);
    tokio::select! {
        reusable = &mut relay => reusable,
        _ = producer => relay.await,
    }
}

/// A backend's response as a 2026-07-28 client expects it: the client's
/// id, `resultType`, cache hints, the server's identity, the renumbered
/// error codes; and -32021 when the call failed for want of a capability
/// the client did not declare.
fn complete(mut response: Value, client_id: &Value, method: &str, init: &Value, refused: &[String]) -> (u16, Vec<u8>) {
    response["id"] = client_id.clone();
    let failed = response.get("error").is_some() || mcp::is_tool_error(&response);
    if failed && !refused.is_empty() {
        let required: Map<String, Value> = refused.iter().map(|c| (c.clone(), json!({}))).collect();
        let why = format!("the tool needs client capabilities the request did not declare: {}", refused.join(", "));
        let body = mcp::error_bytes(
            client_id,
            code::MISSING_CAPABILITY,
            &why,
            Some(json!({"requiredCapabilities": required})),
        );
        return (400, body);
    }
    if let Some(error) = response.get_mut("error").and_then(Value::as_object_mut) {
        let code = error.get("code").and_then(Value::as_i64);
        if code == Some(code::LEGACY_RESOURCE_NOT_FOUND) {
            error.insert("code".into(), json!(code::INVALID_PARAMS));
        }
        let status = if code == Some(code::METHOD_NOT_FOUND) { 404 } else { 200 };
        return (status, message::to_bytes(&response));
    }
    if let Some(result) = response.get_mut("result").and_then(Value::as_object_mut) {
        result.entry("resultType").or_insert(json!("complete"));
        if CACHEABLE.contains(&method) {
            result.entry("ttlMs").or_insert(json!(0));
            result.entry("cacheScope").or_insert(json!("private"));
        }
        if let Some(info) = init.get("serverInfo") {
            let meta = result.entry("_meta").or_insert(json!({}));
            if let Some(meta) = meta.as_object_mut() {
                meta.entry(SERVER_INFO_KEY).or_insert(info.clone());
            }
        }
    }
    (200, message::to_bytes(&response))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_header_values_decode_and_bad_ones_do_not() {
        assert_eq!(decode_header("  tools/list "), "tools/list");
        assert_eq!(decode_header("=?base64?dG9vbHMvbGlzdA==?="), "tools/list");
        assert_eq!(decode_header("=?base64?dG9vbHMvbGlzdA=?="), "", "bad padding");
        assert_eq!(decode_header("=?base64?dG9v*HMvbGlzdA==?="), "", "bad alphabet");
        assert_eq!(base64_decode("TWFu"), Some(b"Man".to_vec()));
        assert_eq!(base64_decode("TWE="), Some(b"Ma".to_vec()));
        assert_eq!(base64_decode("TQ=="), Some(b"M".to_vec()));
    }

    #[test]
    fn results_are_completed_for_2026_clients() {
        let init = json!({"serverInfo": {"name": "s", "version": "1"}});
        let (status, body) = complete(json!({"id": 5, "result": {"tools": []}}), &json!("a"), "tools/list", &init, &[]);
        let v: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(status, 200);
        assert_eq!(v["id"], "a");
        assert_eq!((v["result"]["resultType"].as_str(), v["result"]["ttlMs"].as_i64()), (Some("complete"), Some(0)));
        assert_eq!(v["result"]["cacheScope"], "private");
        assert_eq!(v["result"]["_meta"][SERVER_INFO_KEY]["name"], "s");
        let (status, body) = complete(
            json!({"id": 5, "error": {"code": -32002, "message": "no"}}),
            &json!(1),
            "resources/read",
            &init,
            &[],
        );
        assert_eq!(
            (status, serde_json::from_slice::<Value>(&body).expect("json")["error"]["code"].as_i64()),
            (200, Some(-32602))
        );
        let (status, _) =
            complete(json!({"id": 5, "error": {"code": -32601, "message": "no"}}), &json!(1), "tools/call", &init, &[]);
        assert_eq!(status, 404);
        let refused = vec!["sampling".to_string()];
        let (status, body) =
            complete(json!({"id": 5, "result": {"isError": true}}), &json!(3), "tools/call", &init, &refused);
        let v: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!((status, v["error"]["code"].as_i64()), (400, Some(-32021)));
        assert_eq!(v["error"]["data"]["requiredCapabilities"], json!({"sampling": {}}));
        let (status, _) =
            complete(json!({"id": 5, "result": {"content": []}}), &json!(3), "tools/call", &init, &refused);
        assert_eq!(status, 200, "a call that went on without the capability keeps its result");
    }
}
