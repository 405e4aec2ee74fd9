//! The exchange pipeline: the explicit phases every MCP exchange goes through, and the record
//! each completed exchange produces.
//!
//! In the style of pingora's phase hooks, later capabilities register a [`Phase`] instead of
//! editing the data path: identity and policy decide in `request_parsed`, approval holds there,
//! redaction rewrites in `response_event`, audit writes in `exchange_complete`. Phases run in
//! registration order; the first denial wins and names the phase and rule that denied.
use std::{sync::Arc, time::SystemTime};

use serde::Serialize;
use tracing::info;

use crate::net::ConnInfo;

/// How an MCP message travelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// Streamable HTTP, response as one JSON body.
    StreamableJson,
    /// Streamable HTTP, response on the request's SSE stream.
    StreamableSse,
    /// Streamable HTTP GET stream (server-initiated messages).
    StreamableGet,
    /// The 2024-11-05 HTTP+SSE transport (responses on the GET /sse channel).
    LegacySse,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::StreamableJson => "streamable_json",
            Transport::StreamableSse => "streamable_sse",
            Transport::StreamableGet => "streamable_get",
            Transport::LegacySse => "legacy_sse",
        }
    }
}

/// What a phase decided about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Continue,
    Deny {
        /// HTTP status for the whole request (e.g. 401, 403).
        http_status: u16,
        /// JSON-RPC error code for each denied message.
        code: i64,
        reason: String,
        /// The rule that decided ("phase/rule").
        rule: String,
    },
}

/// A parsed request as phases see it.
#[derive(Debug)]
pub struct RequestView<'a> {
    pub conn: &'a ConnInfo,
    pub http_method: &'a http::Method,
    pub path: &'a str,
    pub headers: &'a http::HeaderMap,
    pub transport: Transport,
    pub revision: Option<&'a str>,
    pub session: Option<&'a str>,
    pub messages: &'a [crate::mcp::Message],
}

/// One MCP exchange: a request and what became of it. Identity, redaction, approval and
/// audit extend this record.
#[derive(Debug, Clone, Serialize)]
pub struct ExchangeRecord {
    pub service: String,
    pub conn_id: u64,
    pub caller_kind: &'static str,
    pub peer: String,
    pub tgid: Option<u32>,
    pub uid: Option<u32>,
    pub comm: Option<String>,
    pub cgroup: Option<String>,
    /// The systemd unit of a local caller's cgroup.
    pub unit: Option<String>,
    pub transport: Transport,
    pub http_version: String,
    pub revision: Option<String>,
    pub session: Option<String>,
    pub jsonrpc_id: Option<String>,
    pub method: Option<String>,
    /// Tool or prompt name, or resource URI, redacted like `params`.
    pub target: Option<String>,
    /// The request's `params` (tool name and arguments, resource URI, prompt arguments)
    /// without `_meta`, every string redacted: never a value in clear.
    pub params: Option<serde_json::Value>,
    /// Keyed pseudonyms of the values masked in `params` and `target`.
    pub request_pseudonyms: Vec<String>,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub http_status: u16,
    /// result, error, accepted, denied, upstream_error, incomplete, notification
    pub outcome: String,
    pub error_code: Option<i64>,
    pub notifications: u32,
    /// How many times the request was sent to the server: 2 when a request without side
    /// effects went out again after the server closed the connection before answering (the
    /// server may have read it both times). Written only when above 1.
    #[serde(skip_serializing_if = "sent_once")]
    pub upstream_attempts: u32,
    /// Verified caller (from the bearer token), when the service requires one.
    pub subject: Option<String>,
    pub issuer: Option<String>,
    pub client_id: Option<String>,
    pub groups: Option<Vec<String>>,
    /// The policy decision: role, deciding rule, purpose, lawful basis, policy version.
    pub role: Option<String>,
    pub rule: Option<String>,
    pub purpose: Option<String>,
    pub lawful_basis: Option<String>,
    pub policy_version: Option<String>,
    /// What redaction masked in the response: count per entity type...
    pub masked: std::collections::BTreeMap<String, u64>,
    /// ...and the keyed pseudonym of each masked value ("EMAIL:4f1c9a2b"), never the value.
    pub pseudonyms: Vec<String>,
    /// Entity types the policy released in clear to this caller (the grant's `release`).
    pub released: Vec<String>,
    /// The server got this call's arguments redacted (the deciding grant's
    /// `redact_arguments`). Written only when so.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub arguments_redacted: bool,
    /// SHA-256 (hex) of the response as the caller received it (the JSON body, or the
    /// response's SSE event data).
    pub response_sha256: Option<String>,
    /// The start of that response, redacted (only for services that redact; at most
    /// `audit_excerpt_bytes`).
    pub response_excerpt: Option<String>,
    /// The approval that released (or refused) this call, when one was needed; its steps are
    /// [`crate::approval::ApprovalEvent`]s with this `approval_id`.
    pub approval: Option<String>,
    #[serde(with = "unix_ms")]
    pub started: SystemTime,
    pub duration_ms: u64,
    /// Sequence number of this exchange's `request` record in the audit log (the final record
    /// links to it as `request_seq`).
    #[serde(skip)]
    pub request_record: Option<u64>,
}

mod unix_ms {
    use std::time::{SystemTime, UNIX_EPOCH};
    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let ms = t
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        s.serialize_u64(ms as u64)
    }
}

/// A hook into the exchange pipeline. Every method has a neutral default.
pub trait Phase: Send + Sync {
    fn name(&self) -> &'static str;
    /// A connection was accepted and attributed.
    fn connection_accepted(&self, _conn: &ConnInfo) -> Decision {
        Decision::Continue
    }
    /// A request's JSON-RPC body was parsed and validated.
    fn request_parsed(&self, _req: &RequestView<'_>) -> Decision {
        Decision::Continue
    }
    /// The request is about to go upstream (headers may be changed).
    fn upstream_request(&self, _req: &RequestView<'_>, _headers: &mut http::HeaderMap) {}
    /// A message arrived from the server for an exchange (response or notification).
    fn response_event(&self, _rec: &ExchangeRecord, _msg: &crate::mcp::EnvelopeMessage) {}
    /// The exchange is over; the record is final.
    fn exchange_complete(&self, _rec: &ExchangeRecord) {}
    /// One step of an approval (held, vote, approved, denied, expired, released, ...). Every
    /// step of every approval comes here, in order, from the data path, the control socket,
    /// the HTTP endpoint and the expiry timer.
    fn approval_event(&self, _ev: &crate::approval::ApprovalEvent) {}
}

#[derive(Clone, Default)]
pub struct Pipeline {
    phases: Vec<Arc<dyn Phase>>,
    /// The audit log, when enabled: exchanges are recorded durably through it.
    audit: Option<Arc<crate::audit::Audit>>,
}

impl Pipeline {
    pub fn new() -> Self {
        Pipeline::default()
    }
    pub fn with(mut self, phase: Arc<dyn Phase>) -> Self {
        self.phases.push(phase);
        self
    }
    pub fn with_audit(mut self, audit: Option<Arc<crate::audit::Audit>>) -> Self {
        self.audit = audit;
        self
    }
    /// The audit log, for modules that record events of their own (approvals, reloads):
    /// `pipeline.audit().map(|a| a.submit(AuditEvent::new("approval", json)))`.
    pub fn audit(&self) -> Option<&Arc<crate::audit::Audit>> {
        self.audit.as_ref()
    }
    /// Records that a request is about to be forwarded. `None` when there is no audit log;
    /// otherwise the request may only go upstream once the acknowledgement says it is durable.
    pub fn record_request(&self, rec: &ExchangeRecord) -> Option<crate::audit::Ack> {
        let audit = self.audit.as_ref()?;
        Some(match audit.exchange_entry(rec, None, "request") {
            Ok(e) => audit.submit_entry(e),
            Err(e) => failed(e),
        })
    }
    pub fn connection_accepted(&self, conn: &ConnInfo) -> Decision {
        self.first_denial(|p| p.connection_accepted(conn))
    }
    pub fn request_parsed(&self, req: &RequestView<'_>) -> Decision {
        self.first_denial(|p| p.request_parsed(req))
    }
    pub fn upstream_request(&self, req: &RequestView<'_>, headers: &mut http::HeaderMap) {
        for p in &self.phases {
            p.upstream_request(req, headers);
        }
    }
    pub fn response_event(&self, rec: &ExchangeRecord, msg: &crate::mcp::EnvelopeMessage) {
        for p in &self.phases {
            p.response_event(rec, msg);
        }
    }
    /// The exchange is over: every phase sees the final record, and the audit log records it.
    /// The acknowledgement says when that record is durable: the response's last bytes wait
    /// for it.
    pub fn exchange_complete(&self, rec: &ExchangeRecord) -> Option<crate::audit::Ack> {
        for p in &self.phases {
            p.exchange_complete(rec);
        }
        let audit = self.audit.as_ref()?;
        Some(
            match audit.exchange_entry(rec, rec.request_record, "exchange") {
                Ok(e) => audit.submit_entry(e),
                Err(e) => failed(e),
            },
        )
    }
    /// One step of an approval: every phase hears it, and the audit log records it (queued
    /// on the same writer as the exchange records, so a step that releases a call is committed
    /// no later than the call's `request` record, which is durable before the call is
    /// forwarded).
    pub fn approval_event(&self, ev: &crate::approval::ApprovalEvent) {
        for p in &self.phases {
            p.approval_event(ev);
        }
        if let Some(a) = &self.audit {
            match serde_json::to_value(ev) {
                Ok(v) => {
                    let mut ack = a.submit(crate::audit::AuditEvent::new("approval", v));
                    // Refused at once (queue full, writer stopped): say so; the exchange's own
                    // records still name the approval.
                    if let Ok(Err(e)) = ack.try_recv() {
                        tracing::error!(event = "audit_failed", approval_id = %ev.approval_id, error = %e.0, "approval step not recorded");
                    }
                }
                Err(e) => {
                    tracing::error!(event = "audit_failed", approval_id = %ev.approval_id, error = %e, "approval step not recorded")
                }
            }
        }
    }
    fn first_denial(&self, f: impl Fn(&dyn Phase) -> Decision) -> Decision {
        for p in &self.phases {
            if let Decision::Deny {
                http_status,
                code,
                reason,
                rule,
            } = f(p.as_ref())
            {
                return Decision::Deny {
                    http_status,
                    code,
                    reason,
                    rule: format!("{}/{rule}", p.name()),
                };
            }
        }
        Decision::Continue
    }
}

fn failed(e: crate::audit::AuditError) -> crate::audit::Ack {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let _ = tx.send(Err(e));
    rx
}

/// Waits until every record is durable; the first failure wins.
pub async fn durable(
    acks: impl IntoIterator<Item = Option<crate::audit::Ack>>,
) -> Result<Vec<u64>, crate::audit::AuditError> {
    let mut out = Vec::new();
    for a in acks.into_iter().flatten() {
        match a.await {
            Ok(Ok(s)) => out.push(s),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(crate::audit::AuditError("audit writer stopped".into())),
        }
    }
    Ok(out)
}

/// Writes one structured log line per completed exchange.
pub struct ExchangeLog;

impl Phase for ExchangeLog {
    fn name(&self) -> &'static str {
        "log"
    }
    fn exchange_complete(&self, r: &ExchangeRecord) {
        info!(
            event = "exchange",
            service = %r.service,
            conn_id = r.conn_id,
            caller_kind = r.caller_kind,
            peer = %r.peer,
            tgid = r.tgid,
            uid = r.uid,
            comm = r.comm.as_deref(),
            cgroup = r.cgroup.as_deref(),
            unit = r.unit.as_deref(),
            transport = r.transport.as_str(),
            http_version = %r.http_version,
            revision = r.revision.as_deref(),
            session = r.session.as_deref(),
            jsonrpc_id = r.jsonrpc_id.as_deref(),
            method = r.method.as_deref(),
            mcp_name = r.target.as_deref(),
            params = r.params.as_ref().map(|p| p.to_string()),
            request_pseudonyms = %r.request_pseudonyms.join(","),
            request_bytes = r.request_bytes,
            response_bytes = r.response_bytes,
            http_status = r.http_status,
            outcome = %r.outcome,
            error_code = r.error_code,
            notifications = r.notifications,
            upstream_attempts = r.upstream_attempts,
            subject = r.subject.as_deref(),
            issuer = r.issuer.as_deref(),
            client_id = r.client_id.as_deref(),
            groups = r.groups.as_ref().map(|g| g.join(",")),
            role = r.role.as_deref(),
            rule = r.rule.as_deref(),
            purpose = r.purpose.as_deref(),
            lawful_basis = r.lawful_basis.as_deref(),
            policy_version = r.policy_version.as_deref(),
            masked = %serde_json::to_string(&r.masked).unwrap_or_default(),
            pseudonyms = %r.pseudonyms.join(","),
            released = %r.released.join(","),
            arguments_redacted = r.arguments_redacted.then_some(true),
            response_sha256 = r.response_sha256.as_deref(),
            response_excerpt = r.response_excerpt.as_deref(),
            approval = r.approval.as_deref(),
            duration_ms = r.duration_ms,
            "exchange complete"
        );
    }
    fn approval_event(&self, e: &crate::approval::ApprovalEvent) {
        info!(
            event = "approval",
            approval_id = %e.approval_id,
            step = e.step.as_str(),
            request_hash = %e.request_hash,
            service = %e.service,
            rule = %e.rule,
            subject = %e.requester.subject,
            issuer = %e.requester.issuer,
            client_id = e.requester.client_id.as_deref(),
            uid = e.requester.uid,
            peer = %e.requester.peer,
            method = %e.method,
            mcp_name = e.target.as_deref(),
            arguments = %e.arguments,
            matched = %e.matched,
            actor = e.actor.as_deref(),
            reason = e.reason.as_deref(),
            approvals = e.approvals,
            required = e.required,
            grant = e.grant.as_ref().map(|g| g.id.as_str()),
            grant_bounds = e.grant.as_ref().and_then(|g| g.bounds.as_deref()),
            outcome = e.outcome.as_deref(),
            expires_at = e.expires_at,
            time = e.time,
            "approval {}", e.step.as_str()
        );
    }
}

fn sent_once(n: &u32) -> bool {
    *n <= 1
}
