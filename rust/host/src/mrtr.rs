//! Multi round-trip requests (2026-07-28) in front of legacy backends.
//!
//! A legacy stdio server that needs its client's input in the middle of a
//! call sends it a request (`elicitation/create`, `sampling/createMessage`,
//! `roots/list`) and waits. A 2026-07-28 client cannot be sent requests: the
//! server answers the call with an `input_required` result instead, and the
//! client calls again with the answers and the result's `requestState`.
//!
//! The bridge translates: it gathers what the backend asks in one round,
//! parks the call (its pooled backend stays leased to it) under a random
//! handle, and answers the client with an `input_required` result whose
//! `requestState` is a MAC-protected token naming the host, the handle, the
//! route and consumer, the method, a digest of the call's parameters and an
//! expiry. The retry is routed to that host, checked, and its answers go to
//! the backend as the responses it waits for; the call then goes on, to its
//! result or to another round. A state is good for one retry.
//!
//! Parked calls are bounded per consumer (the oldest gives way) and per
//! worker (a call past it is cancelled, 503), expire after `input_wait_ms`,
//! and give way when the pool needs their backend for a live request. An
//! expired or evicted call's questions are answered with errors and the
//! call is cancelled, so the backend is drained (or recycled) like any
//! cancelled call.

use crate::binding::Binding;
use crate::log;
use crate::mcp::{self, code};
use crate::message;
use crate::pool::{CallEvent, Lease};
use hmac::{Hmac, Mac};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio::task::spawn_local;

/// The key of a question in a legacy request's `params._meta`: the name its
/// entry gets in `inputRequests` (a legacy client ignores it).
pub const INPUT_KEY_HINT: &str = "mcp-bridge/inputKey";

/// Questions that arrive within this much of each other are one round.
pub const ROUND_QUIET: Duration = Duration::from_millis(30);

/// ... but a round is asked after this long in any case.
pub const ROUND_LIMIT: Duration = Duration::from_millis(500);

/// Random bytes of a parked call's handle.
const HANDLE_BYTES: usize = 16;

/// The longest key hint taken as it is.
const MAX_KEY: usize = 64;

type HmacSha256 = Hmac<Sha256>;

/// A question of the backend's that the client must answer.
pub struct Asked {
    pub key: String,
    /// The backend's id of its request.
    pub id: Value,
    pub method: String,
    /// Its params, without the key hint.
    pub params: Value,
}

/// A call on a pooled backend, as it goes from round to round.
pub struct CallRun {
    pub lease: Lease,
    pub call_id: u64,
    pub events: mpsc::Receiver<CallEvent>,
    pub method: String,
    /// The call's parameters, for the digest a state binds it to: made
    /// only when the call is parked, which few are.
    params: Value,
    digest: Option<String>,
    /// Capabilities the backend asked for that the client did not declare
    /// (see `stateless::complete`).
    pub refused: Vec<String>,
    /// Questions waiting for the client.
    pub waiting: Vec<Asked>,
    generated: u32,
}

impl CallRun {
    pub fn new(lease: Lease, call_id: u64, events: mpsc::Receiver<CallEvent>, method: &str, params: Value) -> CallRun {
        CallRun {
            lease,
            call_id,
            events,
            method: method.to_string(),
            params,
            digest: None,
            refused: Vec::new(),
            waiting: Vec::new(),
            generated: 0,
        }
    }

    /// Handles one question of the backend's: answered at once when the
    /// client cannot be asked it (an error) or answered it already (in
    /// `answers`); otherwise it waits for the client. Returns whether it
    /// waits.
    pub fn asked(&mut self, id: Value, method: String, mut params: Value, declared: &Value, answers: &Answers) -> bool {
        let capability = capability_of(&method);
        if declared.get(capability).is_none() {
            let why = format!("the client did not declare the {capability} capability");
            self.lease.answer(mcp::error(&id, code::METHOD_NOT_FOUND, &why, None));
            if !self.refused.iter().any(|r| r == capability) {
                self.refused.push(capability.to_string());
            }
            return false;
        }
        let key = self.key_for(&mut params, capability);
        if let Some(answer) = answers.usable(&key, &method) {
            self.lease.answer(json!({"jsonrpc": "2.0", "id": id, "result": answer}));
            return false;
        }
        self.waiting.push(Asked { key, id, method, params });
        true
    }

    /// Answers the waiting questions `answers` has a usable answer for;
    /// the others keep waiting.
    pub fn answer_waiting(&mut self, answers: &Answers) {
        let lease = &self.lease;
        self.waiting.retain(|asked| match answers.usable(&asked.key, &asked.method) {
            Some(answer) => {
                lease.answer(json!({"jsonrpc": "2.0", "id": asked.id, "result": answer}));
                false
            }
            None => true,
        });
    }

    /// The key hint of a question (taken out of its params), or a made-up
    /// key unique in this call.
    fn key_for(&mut self, params: &mut Value, capability: &str) -> String {
        let hint = params
            .get_mut("_meta")
            .and_then(Value::as_object_mut)
            .and_then(|meta| meta.remove(INPUT_KEY_HINT))
            .and_then(|v| v.as_str().map(str::to_string))
            .filter(|k| !k.is_empty() && k.len() <= MAX_KEY);
        if params.get("_meta").and_then(Value::as_object).is_some_and(Map::is_empty) {
            if let Some(p) = params.as_object_mut() {
                p.remove("_meta");
            }
        }
        let taken = |k: &str| self.waiting.iter().any(|a| a.key == k);
        match hint {
            Some(key) if !taken(&key) => key,
            _ => loop {
                self.generated += 1;
                let key = format!("{capability}_{}", self.generated);
                if !taken(&key) {
                    break key;
                }
            },
        }
    }

    /// The digest of the call's parameters (see [`digest`]).
    fn digest(&mut self) -> String {
        if self.digest.is_none() {
            self.digest = Some(digest(Some(&std::mem::take(&mut self.params))));
        }
        self.digest.clone().unwrap_or_default()
    }

    /// The `input_required` result for the waiting questions.
    pub fn input_required(&self, client_id: &Value, state: &str) -> Vec<u8> {
        let requests: Map<String, Value> =
            self.waiting.iter().map(|a| (a.key.clone(), json!({"method": a.method, "params": a.params}))).collect();
        let result = json!({"resultType": "input_required", "inputRequests": requests, "requestState": state});
        message::to_bytes(&json!({"jsonrpc": "2.0", "id": client_id, "result": result}))
    }

    /// Gives the call up: its questions get errors and the call is
    /// cancelled (the backend is drained, or recycled if it keeps talking).
    pub fn abandon(self, why: &str) {
        for asked in &self.waiting {
            self.lease.answer(mcp::error(&asked.id, code::INTERNAL_ERROR, why, None));
        }
        self.lease.cancel(self.call_id);
    }
}

/// The client capability a question needs.
fn capability_of(method: &str) -> &'static str {
    match method {
        "sampling/createMessage" => "sampling",
        "roots/list" => "roots",
        _ => "elicitation",
    }
}

/// The `inputResponses` of a request, checked.
#[derive(Default)]
pub struct Answers(Map<String, Value>);

impl Answers {
    /// The answer under `key` if it is one `method` can use: an answer that
    /// is not is treated as missing (the client is asked again).
    fn usable(&self, key: &str, method: &str) -> Option<Value> {
        let answer = self.0.get(key)?;
        usable(method, answer).then(|| answer.clone())
    }
}

fn usable(method: &str, answer: &Value) -> bool {
    let Some(obj) = answer.as_object() else { return false };
    match method {
        "elicitation/create" => {
            matches!(obj.get("action").and_then(Value::as_str), Some("accept" | "decline" | "cancel"))
                && obj.get("content").is_none_or(Value::is_object)
        }
        "sampling/createMessage" => matches!(obj.get("content"), Some(Value::Object(_) | Value::Array(_))),
        "roots/list" => obj
            .get("roots")
            .and_then(Value::as_array)
            .is_some_and(|roots| roots.iter().all(|r| r.get("uri").is_some_and(Value::is_string))),
        _ => false,
    }
}

/// What a request brings for a multi round-trip call, taken out of its
/// params (the backend never sees them).
pub struct Input {
    pub answers: Answers,
    pub state: Option<String>,
}

impl Input {
    /// Takes `inputResponses` and `requestState` out of `params`. The error
    /// is for the client: `inputResponses` that is not an object of
    /// objects, a `requestState` that is not a string.
    pub fn take(params: Option<&mut Value>) -> Result<Input, String> {
        let Some(params) = params.and_then(Value::as_object_mut) else {
            return Ok(Input { answers: Answers::default(), state: None });
        };
        let answers = match params.remove("inputResponses") {
            None => Map::new(),
            Some(Value::Object(map)) => {
                if let Some((key, _)) = map.iter().find(|(_, v)| !v.is_object()) {
                    return Err(format!("inputResponses[\"{key}\"] must be an object"));
                }
                map
            }
            Some(_) => return Err("inputResponses must be an object".into()),
        };
        let state = match params.remove("requestState") {
            None => None,
            Some(Value::String(s)) => Some(s),
            Some(_) => return Err("requestState must be a string".into()),
        };
        Ok(Input { answers: Answers(answers), state })
    }
}

/// A digest of a call's parameters (without the envelope and the
/// multi round-trip members), which a retry must repeat.
pub fn digest(params: Option<&Value>) -> String {
    let mut params = params.cloned().unwrap_or(Value::Null);
    if let Some(p) = params.as_object_mut() {
        p.remove("_meta");
        p.remove("inputResponses");
        p.remove("requestState");
    }
    // serde_json's maps are sorted, so equal params have equal text.
    hex(&Sha256::digest(params.to_string().as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// What a `requestState` says, once its MAC is checked.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Claims {
    /// The parked call.
    h: String,
    r: String,
    c: String,
    m: String,
    d: String,
    /// Expiry, milliseconds since the epoch.
    e: u64,
}

/// How the bridge tells a client that its state cannot be used.
pub const STALE_STATE: &str = "requestState is unknown, used, expired or of another request; call again without it";

/// The calls of this host that wait for their client's input.
pub struct Parked {
    token: String,
    /// None if the kernel gave no random bytes: nothing is parked then.
    key: Option<Vec<u8>>,
    calls: RefCell<HashMap<String, Entry>>,
}

struct Entry {
    run: CallRun,
    binding: Binding,
    parked_at: Instant,
}

impl Parked {
    /// `token` names this host in every state it makes; the MAC key is
    /// drawn at random, so no other process can make a state it accepts.
    pub fn new(token: &str) -> Parked {
        let key = mcp_bridge_core::random::hex(32).map(String::into_bytes);
        if let Err(e) = &key {
            log!(Error, "no key for input_required states ({e}): calls that need input will be refused");
        }
        Parked { token: token.to_string(), key: key.ok(), calls: RefCell::default() }
    }

    pub fn len(&self) -> usize {
        self.calls.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The handle and `requestState` under which `run` will wait for
    /// `binding`'s input, for `wait`. The oldest parked call of the same
    /// consumer gives way when it has `per_consumer` already; none is made
    /// past `per_worker` (the error is for the client). The state starts
    /// with `prefix` (see `Headers::state_prefix`).
    pub fn reserve(
        &self,
        run: &mut CallRun,
        binding: &Binding,
        wait: Duration,
        (per_consumer, per_worker): (usize, usize),
        prefix: &str,
    ) -> Result<(String, String), &'static str> {
        if self.of(binding) >= per_consumer {
            self.evict_oldest(|b| b == binding, "too many calls of this consumer wait for input");
        }
        if self.len() >= per_worker {
            return Err("too many calls wait for their client's input; try again later");
        }
        if self.key.is_none() {
            return Err("the bridge cannot sign input_required states");
        }
        let handle = mcp_bridge_core::random::hex(HANDLE_BYTES).map_err(|_| "the bridge has no random bytes")?;
        let expires = SystemTime::now() + wait;
        let claims = Claims {
            h: handle.clone(),
            r: binding.route.clone(),
            c: binding.consumer.clone(),
            m: run.method.clone(),
            d: run.digest(),
            e: expires.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
        };
        Ok((handle, self.seal(&claims, prefix)))
    }

    /// Parks `run` under a handle [`Parked::reserve`] gave, until `wait`
    /// passes.
    pub fn insert(self: &Rc<Self>, handle: String, run: CallRun, binding: &Binding, wait: Duration) {
        self.calls
            .borrow_mut()
            .insert(handle.clone(), Entry { run, binding: binding.clone(), parked_at: Instant::now() });
        let me = Rc::downgrade(self);
        spawn_local(async move {
            tokio::time::sleep(wait).await;
            let Some(parked) = me.upgrade() else { return };
            let entry = parked.calls.borrow_mut().remove(&handle);
            if let Some(entry) = entry {
                log!(Info, "a call of {} waited for input longer than input_wait_ms: cancelled", entry.binding);
                entry.run.abandon("the client did not answer in time");
            }
        });
    }

    /// The parked call a retry's `state` names, if the state is genuine,
    /// unexpired, of this host, and of this request (route, consumer,
    /// method, parameters). A state is good once: the call leaves here.
    pub fn resume(
        &self,
        state: &str,
        binding: &Binding,
        method: &str,
        params: Option<&Value>,
    ) -> Result<CallRun, &'static str> {
        let claims = self.open(state).ok_or(STALE_STATE)?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(u64::MAX);
        if claims.r != binding.route || claims.c != binding.consumer || claims.m != method || claims.d != digest(params)
        {
            return Err(STALE_STATE);
        }
        if claims.e <= now {
            return Err(STALE_STATE);
        }
        let entry = self.calls.borrow_mut().remove(&claims.h).ok_or(STALE_STATE)?;
        Ok(entry.run)
    }

    /// Parked calls of `binding`.
    fn of(&self, binding: &Binding) -> usize {
        self.calls.borrow().values().filter(|e| &e.binding == binding).count()
    }

    /// Gives up the oldest parked call whose binding `which` picks; returns
    /// whether there was one.
    pub fn evict_oldest(&self, which: impl Fn(&Binding) -> bool, why: &str) -> bool {
        let oldest = {
            let calls = self.calls.borrow();
            calls.iter().filter(|(_, e)| which(&e.binding)).min_by_key(|(_, e)| e.parked_at).map(|(h, _)| h.clone())
        };
        let Some(handle) = oldest else { return false };
        let entry = self.calls.borrow_mut().remove(&handle);
        match entry {
            Some(entry) => {
                log!(Info, "a call of {} that waited for input gave way: {why}", entry.binding);
                entry.run.abandon(why);
                true
            }
            None => false,
        }
    }

    /// Gives every parked call up (the host is shutting down).
    pub fn abandon_all(&self) {
        let calls: Vec<Entry> = self.calls.borrow_mut().drain().map(|(_, e)| e).collect();
        for entry in calls {
            entry.run.abandon("the worker is shutting down");
        }
    }

    /// `[<prefix>]<host token>.<claims, hex>.<MAC, hex>`: the node's tag
    /// and the host's token first, so that a worker of any node can send
    /// the retry to this host. The MAC covers the prefix too.
    fn seal(&self, claims: &Claims, prefix: &str) -> String {
        let payload = serde_json::to_vec(claims).unwrap_or_default();
        let signed = format!("{prefix}{}.{}", self.token, hex(&payload));
        format!("{signed}.{}", hex(&self.mac(signed.as_bytes())))
    }

    fn open(&self, state: &str) -> Option<Claims> {
        let (signed, mac) = state.rsplit_once('.')?;
        let ours = signed.rsplit_once('~').map_or(signed, |(_, ours)| ours);
        let (token, payload) = ours.split_once('.')?;
        if token != self.token {
            return None;
        }
        let mut check = HmacSha256::new_from_slice(self.key.as_deref()?).ok()?;
        check.update(signed.as_bytes());
        check.verify_slice(&unhex(mac)?).ok()?;
        serde_json::from_slice(&unhex(payload)?).ok()
    }

    fn mac(&self, bytes: &[u8]) -> Vec<u8> {
        match HmacSha256::new_from_slice(self.key.as_deref().unwrap_or_default()) {
            Ok(mut mac) => {
                mac.update(bytes);
                mac.finalize().into_bytes().to_vec()
            }
            Err(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parked() -> Parked {
        Parked::new("0123456789abcdef")
    }

    fn claims() -> Claims {
        Claims { h: "h".into(), r: "route".into(), c: "".into(), m: "tools/call".into(), d: "d".into(), e: 1 }
    }

    #[test]
    fn a_state_opens_only_as_sealed_and_only_here() {
        let p = parked();
        let state = p.seal(&claims(), "");
        assert!(state.starts_with("0123456789abcdef."));
        assert_eq!(p.open(&state), Some(claims()));
        assert_eq!(p.open(&format!("{state}-TAMPERED")), None);
        let mut flipped = state.clone().into_bytes();
        let at = 20;
        flipped[at] = if flipped[at] == b'0' { b'1' } else { b'0' };
        assert_eq!(p.open(&String::from_utf8(flipped).expect("ascii")), None, "a changed claim");
        // Another host (another key, or another token) accepts none of it.
        assert_eq!(parked().open(&state), None);
        let other = Parked { token: "fedcba9876543210".into(), key: p.key.clone(), calls: RefCell::default() };
        assert_eq!(other.open(&state), None);
        assert_eq!(p.open("garbage"), None);
        assert_eq!(p.open("0123456789abcdef.zz.zz"), None);
    }

    #[test]
    fn a_node_prefix_goes_first_and_is_signed_with_the_rest() {
        let p = parked();
        let state = p.seal(&claims(), "3132-abcd~");
        assert!(state.starts_with("3132-abcd~0123456789abcdef."), "{state}");
        assert_eq!(p.open(&state), Some(claims()));
        // Another node's tag on the same state: refused.
        assert_eq!(p.open(&state.replacen("3132-abcd~", "3133-abcd~", 1)), None);
        assert_eq!(p.open(&state.replacen("3132-abcd~", "", 1)), None);
    }

    #[test]
    fn inputs_are_taken_out_of_params_and_checked() {
        let mut params = json!({"name": "t", "inputResponses": {"a": {"action": "accept"}}, "requestState": "s"});
        let input = Input::take(Some(&mut params)).expect("valid");
        assert_eq!(params, json!({"name": "t"}));
        assert_eq!(input.state.as_deref(), Some("s"));
        assert!(input.answers.usable("a", "elicitation/create").is_some());
        assert!(input.answers.usable("a", "roots/list").is_none(), "not an answer to roots/list");
        for bad in
            [json!({"inputResponses": null}), json!({"inputResponses": {"k": 12345}}), json!({"requestState": 7})]
        {
            let mut params = bad.clone();
            assert!(Input::take(Some(&mut params)).is_err(), "{bad}");
        }
    }

    #[test]
    fn answers_must_fit_their_question() {
        assert!(usable("elicitation/create", &json!({"action": "accept", "content": {"name": "A"}})));
        assert!(!usable("elicitation/create", &json!({"action": "maybe"})));
        assert!(!usable("elicitation/create", &json!({"action": "accept", "content": "x"})));
        assert!(usable("sampling/createMessage", &json!({"role": "assistant", "content": {"type": "text"}})));
        assert!(!usable("sampling/createMessage", &json!({"role": "assistant"})));
        assert!(usable("roots/list", &json!({"roots": [{"uri": "file:///"}]})));
        assert!(!usable("roots/list", &json!({"roots": [{"name": "x"}]})));
    }

    #[test]
    fn the_digest_ignores_the_envelope_and_the_inputs() {
        let a = digest(Some(&json!({"name": "t", "arguments": {"x": 1}, "_meta": {"k": 1}})));
        let b = digest(Some(&json!({"arguments": {"x": 1}, "name": "t", "inputResponses": {}, "requestState": "s"})));
        assert_eq!(a, b);
        assert_ne!(a, digest(Some(&json!({"name": "t", "arguments": {"x": 2}}))));
    }
}
