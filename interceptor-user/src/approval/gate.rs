//! The data-path side of approvals: holding a call until it is decided.
//!
//! [`hold`] runs in `http::handle_post` after the policy allowed every message and before
//! anything is built for the server. A call that matches an approval rule is held right
//! there: nothing reaches the MCP server until enough approvers approved it.
//!
//! What the caller sees while held:
//! * a caller that accepts `text/event-stream` gets `200` and an SSE stream at once: a
//!   `notifications/progress` (when the request carries a `progressToken`) or else a
//!   `notifications/message` (level `info`, logger `interceptor`) saying `awaiting approval
//!   <id>`, repeated every `approvals.keepalive_secs` and whenever an approval arrives; then
//!   the server's own response (its SSE events, or its JSON body as one `message` event);
//! * a JSON-only caller's HTTP request is simply held open.
//!
//! Denied, expired, or abandoned at shutdown: a JSON-RPC error (code
//! [`APPROVAL_NOT_GRANTED`], HTTP 200) whose message names the approval id and the reason and
//! whose `data` carries `approval_id`, `state`, `reason`, `decided_by` and `rule`.
//!
//! [`serve`] wraps `handle_post` so that the SSE switch can happen while the request is held:
//! the handler future is polled by the response body, so the hold itself needs no task.
use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::SystemTime,
};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::{
    Approvals,
    canon::{self, CallerId},
    event::Requester,
    registry::{Hold, NewRequest, RuleSnapshot, State, Status},
};
use crate::{
    auth::Auth,
    http::RespBody,
    mcp,
    net::ConnInfo,
    pipeline::{ExchangeRecord, Pipeline},
    policy::{PolicyDecision, Principal},
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// JSON-RPC error code of a held call that was not approved (denied, expired, abandoned).
pub const APPROVAL_NOT_GRANTED: i64 = -32050;

/// Lets a held request switch its response to an SSE stream (see [`serve`]).
pub struct HoldSignal(Option<oneshot::Sender<mpsc::Receiver<Bytes>>>);

impl HoldSignal {
    /// No SSE switch: a held request stays an open HTTP request.
    pub fn none() -> HoldSignal {
        HoldSignal(None)
    }
}

/// Runs `handler` (a POST handler that may call [`hold`]); when it holds a call in SSE mode,
/// answers at once with an SSE stream that carries the waiting notifications and then the
/// handler's own response.
pub async fn serve<F, Fut>(sse: bool, handler: F) -> Response<RespBody>
where
    F: FnOnce(HoldSignal) -> Fut,
    Fut: Future<Output = Response<RespBody>> + Send + 'static,
{
    if !sse {
        return handler(HoldSignal::none()).await;
    }
    let (tx, rx) = oneshot::channel();
    let mut fut: Pin<Box<dyn Future<Output = Response<RespBody>> + Send>> =
        Box::pin(handler(HoldSignal(Some(tx))));
    tokio::select! {
        biased;
        r = &mut fut => r,
        Ok(notes) = rx => held_sse(fut, notes),
    }
}

/// One held POST as the data path knows it.
pub struct Call<'a> {
    pub service: &'a str,
    pub conn: &'a ConnInfo,
    pub who: &'a Principal,
    pub messages: &'a [mcp::Message],
    /// The parsed body: the message itself, or the batch array.
    pub tree: &'a Value,
    pub batch: bool,
    pub decisions: &'a [Option<PolicyDecision>],
    pub accepts_sse: bool,
}

/// Holds the call if an approval rule says so. `Ok(None)`: no rule matched, forward as
/// usual; `Ok(Some(id))`: approval `id` released it, forward (and record the id);
/// `Err(response)`: answer with this (the exchange records are written).
pub async fn hold(
    auth: Option<&Auth>,
    call: &Call<'_>,
    record: &(dyn Fn(usize) -> ExchangeRecord + Sync),
    pipeline: &Pipeline,
    signal: HoldSignal,
) -> Result<Option<String>, Box<Response<RespBody>>> {
    let Some(auth) = auth else {
        return Ok(None);
    };
    let policy = auth.policy();
    let rules = policy.approval_rules();
    if rules.is_empty() {
        return Ok(None);
    }
    let item = |i: usize| {
        if call.batch { &call.tree[i] } else { call.tree }
    };
    let mut hit = None;
    for (i, m) in call.messages.iter().enumerate() {
        let Some(method) = m.method.as_deref() else {
            continue;
        };
        let role = call
            .decisions
            .get(i)
            .and_then(|d| d.as_ref())
            .and_then(|d| d.role.as_deref());
        let args = item(i).get("params").and_then(|p| p.get("arguments"));
        if let Some(found) = rules.find(call.service, role, method, m.target_str(), args) {
            hit = Some((i, found));
            break;
        }
    }
    let Some((i, found)) = hit else {
        return Ok(None);
    };
    let m = &call.messages[i];
    let rule = found.rule;
    let id = m.id.as_ref();
    // What records and logs may show: the exchange record's (redacted) target and arguments.
    let shown = record(i);
    let shown_target = shown.target.clone();
    let shown_matched = rule.describe_recorded(
        m.method.as_deref().unwrap_or(""),
        item(i).get("params"),
        (shown_target.as_deref(), shown.params.as_ref()),
    );
    // `why` follows "<call> needs approval (rule R)": the caller reads its own call, the log
    // its redacted description.
    let refuse = |status: StatusCode, code: i64, why: String| {
        let what = format!("{} needs approval (rule {}){why}", found.matched, rule.rule);
        warn!(
            event = "request_refused",
            service = %call.service,
            conn_id = call.conn.id,
            rule = %rule.rule,
            reason = %format!("{shown_matched} needs approval (rule {}){why}", rule.rule),
            "call that needs approval refused"
        );
        for j in 0..call.messages.len() {
            let mut rec = record(j);
            rec.outcome = "denied".into();
            rec.http_status = status.as_u16();
            rec.error_code = Some(code);
            rec.rule = Some(rule.rule.clone());
            pipeline.exchange_complete(&rec);
        }
        Err(Box::new(json_response(
            status,
            mcp::error_response(id, code, &what, Some(json!({ "approval_rule": rule.rule }))),
        )))
    };
    if call.batch {
        return refuse(
            StatusCode::FORBIDDEN,
            mcp::INVALID_REQUEST,
            " and cannot be sent in a JSON-RPC batch; send it alone".to_string(),
        );
    }
    if m.kind != mcp::Kind::Request || id.is_none() {
        return refuse(
            StatusCode::FORBIDDEN,
            mcp::INVALID_REQUEST,
            " but is a notification, which cannot wait for one".to_string(),
        );
    }
    let Some(approvals) = auth.approvals.as_ref() else {
        // Fail closed: a rule says hold, and nothing here could.
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            mcp::INTERNAL_ERROR,
            " but approvals are not running in this agent".to_string(),
        );
    };
    let method = m.method.clone().unwrap_or_default();
    let params = item(i).get("params");
    let caller = CallerId {
        issuer: &call.who.issuer,
        subject: &call.who.subject,
        client_id: call.who.client_id.as_deref(),
    };
    let hash = match canon::request_hash(&caller, call.service, &method, m.target_str(), params) {
        Ok(h) => h,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                mcp::INVALID_PARAMS,
                format!(": {e}"),
            );
        }
    };
    let process = call.conn.caller.process();
    let summary = shown
        .params
        .as_ref()
        .and_then(|p| p.get("arguments"))
        .map(super::event::summarize)
        .unwrap_or(Value::Null);
    let new = NewRequest {
        hash,
        service: call.service.to_string(),
        rule: RuleSnapshot {
            rule: rule.rule.clone(),
            approvers: rule.approvers.clone(),
            required: rule.required,
            max_wait: rule.max_wait,
            valid_for: rule.valid_for,
            max_grant: rule.max_grant,
        },
        requester: Requester {
            subject: call.who.subject.clone(),
            issuer: call.who.issuer.clone(),
            client_id: call.who.client_id.clone(),
            uid: process.map(|p| p.uid),
            comm: process.map(|p| p.comm.clone()),
            caller_kind: call.conn.caller.kind().to_string(),
            peer: call.conn.caller.peer().to_string(),
        },
        method,
        target: m.target(),
        params: canon::params_without_meta(params),
        arguments: params.and_then(|p| p.get("arguments")).cloned(),
        matched: shown_matched.clone(),
        shown_target,
        summary,
    };
    let matched = found.matched.clone();
    let approvers = rule.approvers.clone();
    let progress_token = params
        .and_then(|p| p.get("_meta"))
        .and_then(|m| m.get("progressToken"))
        .filter(|t| t.is_string() || t.is_i64() || t.is_u64())
        .cloned();

    let (approval_id, waiter, mut rx, expires_at) = match approvals.hold(new) {
        Hold::Release { id, grant } => {
            info!(
                event = "approval_released",
                approval_id = %id,
                grant = grant.as_deref(),
                service = %call.service,
                "call released without holding"
            );
            return Ok(Some(id));
        }
        Hold::Refuse(why) => {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                mcp::INTERNAL_ERROR,
                format!(" but {why}"),
            );
        }
        Hold::Wait {
            id,
            waiter,
            rx,
            expires_at,
        } => (id, waiter, rx, expires_at),
    };
    let started = std::time::Instant::now();
    let mut guard = WaitGuard {
        approvals,
        id: approval_id.clone(),
        waiter,
        records: Some((0..call.messages.len()).map(record).collect()),
        pipeline: pipeline.clone(),
        started,
    };

    // SSE mode: answer now, keep the caller informed.
    let mut notes: Option<mpsc::Sender<Bytes>> = None;
    if call.accepts_sse
        && let Some(tx) = signal.0
    {
        let (ntx, nrx) = mpsc::channel(16);
        if tx.send(nrx).is_ok() {
            notes = Some(ntx);
        }
    }
    let mut note_seq = 0u64;
    let mut note = |st: &Status| {
        if let Some(n) = &notes {
            let text = format!(
                "awaiting approval {approval_id}: {matched}; approvers [{}], {} of {} approvals; expires at {}",
                approvers.join(", "),
                st.approvals,
                st.required,
                super::render_time(
                    SystemTime::now()
                        + expires_at.saturating_duration_since(std::time::Instant::now())
                )
            );
            let _ = n.try_send(notification(progress_token.as_ref(), note_seq, &text));
            note_seq += 1;
        }
    };
    note(&rx.borrow().clone());
    let keepalive = approvals.keepalive();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
    let mut deadline = tokio::time::Instant::from_std(expires_at);
    let mut last_approvals = 0;
    loop {
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    // The request is gone from the registry (cannot happen while waited on).
                    let st = Status { state: State::Abandoned, actor: None, reason: Some("approval request lost".into()), approvals: 0, required: 0 };
                    return Err(Box::new(guard.finish(&st, call, id)));
                }
                let st = rx.borrow_and_update().clone();
                match st.state {
                    State::Pending => {
                        if st.approvals != last_approvals {
                            last_approvals = st.approvals;
                            note(&st);
                        }
                    }
                    State::Approved => {
                        if approvals.take(&guard.id, waiter) {
                            guard.disarm();
                            info!(event = "approval_released", approval_id = %approval_id, service = %call.service, waited_ms = started.elapsed().as_millis() as u64, "approved call goes to the server");
                            return Ok(Some(approval_id));
                        }
                    }
                    _ => return Err(Box::new(guard.finish(&st, call, id))),
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                approvals.sweep();
                deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(250);
            }
            _ = tick.tick(), if notes.is_some() => {
                note(&rx.borrow().clone());
            }
        }
    }
}

/// The notification a held SSE stream carries.
fn notification(progress_token: Option<&Value>, seq: u64, text: &str) -> Bytes {
    let msg = match progress_token {
        Some(t) => json!({
            "jsonrpc": "2.0",
            "method": "notifications/progress",
            "params": {"progressToken": t, "progress": seq, "message": text},
        }),
        None => json!({
            "jsonrpc": "2.0",
            "method": "notifications/message",
            "params": {"level": "info", "logger": "interceptor", "data": text},
        }),
    };
    Bytes::from(format!("event: message\ndata: {msg}\n\n"))
}

/// Records the end of a held call that did not go to the server.
struct WaitGuard<'a> {
    approvals: &'a std::sync::Arc<Approvals>,
    id: String,
    waiter: u64,
    records: Option<Vec<ExchangeRecord>>,
    pipeline: Pipeline,
    started: std::time::Instant,
}

impl WaitGuard<'_> {
    fn disarm(&mut self) {
        self.records = None;
    }

    /// Denied, expired, abandoned: the records, a log line and the caller's error.
    fn finish(&mut self, st: &Status, call: &Call<'_>, id: Option<&mcp::Id>) -> Response<RespBody> {
        let state = st.state.as_str();
        let reason = st.reason.clone().unwrap_or_else(|| state.to_string());
        let message = match st.state {
            State::Denied => format!(
                "approval {} denied by {}: {reason}",
                self.id,
                st.actor.as_deref().unwrap_or("an approver")
            ),
            State::Abandoned => format!("agent shutting down: approval {} abandoned", self.id),
            State::Expired => format!("approval {} expired: {reason}", self.id),
            other => format!("approval {} {}: {reason}", self.id, other.as_str()),
        };
        for mut rec in self.records.take().unwrap_or_default() {
            rec.outcome = format!("approval_{state}");
            rec.http_status = 200;
            rec.error_code = Some(APPROVAL_NOT_GRANTED);
            rec.approval = Some(self.id.clone());
            rec.duration_ms = self.started.elapsed().as_millis() as u64;
            self.pipeline.exchange_complete(&rec);
        }
        warn!(
            event = "approval_not_granted",
            approval_id = %self.id,
            service = %call.service,
            conn_id = call.conn.id,
            state,
            reason = %reason,
            "held call not forwarded"
        );
        json_response(
            StatusCode::OK,
            mcp::error_response(
                id,
                APPROVAL_NOT_GRANTED,
                &message,
                Some(json!({
                    "approval_id": self.id,
                    "state": state,
                    "reason": reason,
                    "decided_by": st.actor,
                })),
            ),
        )
    }
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        let Some(records) = self.records.take() else {
            return;
        };
        // The caller went away while the call was held.
        self.approvals.caller_gone(&self.id, self.waiter);
        for mut rec in records {
            rec.outcome = "client_gone".into();
            rec.approval = Some(self.id.clone());
            rec.duration_ms = self.started.elapsed().as_millis() as u64;
            self.pipeline.exchange_complete(&rec);
        }
    }
}

fn json_response(status: StatusCode, body: Bytes) -> Response<RespBody> {
    let mut r = Response::new(Full::new(body).map_err(|e| match e {}).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

// ------------------------------------------------------------------ the held SSE stream

type HandlerFuture = Pin<Box<dyn Future<Output = Response<RespBody>> + Send>>;

/// `200 text/event-stream` now; the body carries the waiting notifications, then the
/// handler's response.
fn held_sse(fut: HandlerFuture, notes: mpsc::Receiver<Bytes>) -> Response<RespBody> {
    let body = HeldSse {
        notes: Some(notes),
        fut: Some(fut),
        inner: Inner::Waiting,
    };
    let mut r = Response::new(body.boxed_unsync());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

enum Inner {
    Waiting,
    /// The server answered with SSE: its events follow ours.
    Sse(RespBody),
    /// The server (or the agent) answered with JSON: one `message` event.
    Json {
        body: RespBody,
        started: bool,
    },
    Done,
}

struct HeldSse {
    notes: Option<mpsc::Receiver<Bytes>>,
    fut: Option<HandlerFuture>,
    inner: Inner,
}

/// A JSON chunk as part of an SSE `data:` field (a raw line break in JSON is whitespace).
fn json_as_data(chunk: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(chunk.len() + 16);
    for &b in chunk {
        match b {
            b'\n' => out.extend_from_slice(b"\ndata: "),
            b'\r' => {}
            b => out.push(b),
        }
    }
    out
}

fn error_event(text: &str) -> Bytes {
    let msg = mcp::error_response(None, mcp::INTERNAL_ERROR, text, None);
    let mut out = b"event: message\ndata: ".to_vec();
    out.extend_from_slice(&json_as_data(&msg));
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

impl http_body::Body for HeldSse {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            // Notifications first (the waiting caller's progress).
            if let Some(n) = this.notes.as_mut() {
                match n.poll_recv(cx) {
                    Poll::Ready(Some(b)) => return Poll::Ready(Some(Ok(Frame::data(b)))),
                    Poll::Ready(None) => this.notes = None,
                    Poll::Pending => {}
                }
            }
            match &mut this.inner {
                Inner::Waiting => {
                    let Some(fut) = this.fut.as_mut() else {
                        this.inner = Inner::Done;
                        continue;
                    };
                    match fut.as_mut().poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(resp) => {
                            this.fut = None;
                            let ct = resp
                                .headers()
                                .get(header::CONTENT_TYPE)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_ascii_lowercase();
                            let status = resp.status();
                            let body = resp.into_body();
                            if ct.starts_with("text/event-stream") {
                                this.inner = Inner::Sse(body);
                            } else if ct.starts_with("application/json") {
                                this.inner = Inner::Json {
                                    body,
                                    started: false,
                                };
                            } else {
                                this.inner = Inner::Done;
                                return Poll::Ready(Some(Ok(Frame::data(error_event(&format!(
                                    "the MCP server answered HTTP {} ({ct:?}) after approval",
                                    status.as_u16()
                                ))))));
                            }
                        }
                    }
                }
                Inner::Sse(body) => {
                    return match Pin::new(body).poll_frame(cx) {
                        Poll::Pending => Poll::Pending,
                        Poll::Ready(None) => {
                            this.inner = Inner::Done;
                            Poll::Ready(None)
                        }
                        Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                        Poll::Ready(Some(Ok(f))) => match f.into_data() {
                            Ok(d) => Poll::Ready(Some(Ok(Frame::data(d)))),
                            Err(_) => continue,
                        },
                    };
                }
                Inner::Json { body, started } => {
                    return match Pin::new(body).poll_frame(cx) {
                        Poll::Pending => Poll::Pending,
                        Poll::Ready(None) => {
                            let was = *started;
                            this.inner = Inner::Done;
                            if was {
                                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"\n\n")))))
                            } else {
                                Poll::Ready(Some(Ok(Frame::data(error_event(
                                    "the MCP server sent an empty response after approval",
                                )))))
                            }
                        }
                        Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                        Poll::Ready(Some(Ok(f))) => match f.into_data() {
                            Ok(d) => {
                                let mut out = Vec::with_capacity(d.len() + 32);
                                if !*started {
                                    *started = true;
                                    out.extend_from_slice(b"event: message\ndata: ");
                                }
                                out.extend_from_slice(&json_as_data(&d));
                                Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))))
                            }
                            Err(_) => continue,
                        },
                    };
                }
                Inner::Done => return Poll::Ready(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_becomes_one_sse_data_field() {
        assert_eq!(
            json_as_data(b"{\"a\":\r\n 1,\n\"b\":2}"),
            b"{\"a\":\ndata:  1,\ndata: \"b\":2}".to_vec()
        );
        let ev = String::from_utf8(error_event("x").to_vec()).unwrap();
        assert!(ev.starts_with("event: message\ndata: {"), "{ev}");
        assert!(ev.ends_with("}\n\n"), "{ev}");
    }

    #[test]
    fn notifications_name_the_approval() {
        let n = String::from_utf8(notification(None, 0, "awaiting approval abc").to_vec()).unwrap();
        assert!(n.contains("\"method\":\"notifications/message\""), "{n}");
        assert!(n.contains("awaiting approval abc"), "{n}");
        let p = String::from_utf8(
            notification(Some(&json!("tok")), 3, "awaiting approval abc").to_vec(),
        )
        .unwrap();
        assert!(p.contains("\"method\":\"notifications/progress\""), "{p}");
        assert!(p.contains("\"progressToken\":\"tok\""), "{p}");
        assert!(p.contains("\"progress\":3"), "{p}");
    }

    #[tokio::test]
    async fn held_stream_carries_notes_then_the_json_response() {
        let (tx, rx) = mpsc::channel(4);
        tx.send(Bytes::from_static(b"event: message\ndata: {\"n\":1}\n\n"))
            .await
            .unwrap();
        drop(tx);
        let fut: HandlerFuture = Box::pin(async {
            json_response(
                StatusCode::OK,
                Bytes::from_static(b"{\"jsonrpc\":\"2.0\",\n\"id\":1,\"result\":{}}"),
            )
        });
        let resp = held_sse(fut, rx);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
        let all = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8(all.to_vec()).unwrap();
        assert_eq!(
            text,
            "event: message\ndata: {\"n\":1}\n\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\ndata: \"id\":1,\"result\":{}}\n\n"
        );
        let mut p = mcp::SseParser::new(1 << 20);
        let evs = p.push(text.as_bytes()).unwrap();
        assert_eq!(evs.len(), 2);
        let v: Value = serde_json::from_str(&evs[1].data).unwrap();
        assert_eq!(v["id"], 1);
    }
}
