//! The approval events: one per step of an approval, for the log, the audit store and the
//! webhook.
//!
//! Every step goes through [`crate::pipeline::Phase::approval_event`]; the audit store
//! consumes the same [`ApprovalEvent`] values the log prints (`event = "approval"` lines).
use serde::{Deserialize, Serialize};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// A call was held; a new approval request exists (with its request hash).
    Held,
    /// A retry of a held call (same request hash) took the place of a caller that was gone.
    Reattached,
    /// One approver approved (`approvals` of `required` so far).
    Vote,
    /// Enough approvals: the call may go to the server.
    Approved,
    /// An approver denied: the call is refused.
    Denied,
    /// An attempt to decide was refused (self-approval, not an approver of this rule,
    /// second vote of the same person, grant not allowed).
    Refused,
    /// Nobody decided within `max_wait`.
    Expired,
    /// The agent shut down while the call was held.
    Abandoned,
    /// The call was forwarded to the server (after approval, or under a grant).
    Released,
    /// The caller went away while the call was held (the request stays open for a retry).
    CallerGone,
    /// An approval nobody used within `valid_for` (the caller was gone) is void.
    Lapsed,
    /// An approver issued a time-bound grant.
    Granted,
    /// The exchange of a held call is over; `outcome` is its final result.
    Completed,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Held => "held",
            Step::Reattached => "reattached",
            Step::Vote => "vote",
            Step::Approved => "approved",
            Step::Denied => "denied",
            Step::Refused => "refused",
            Step::Expired => "expired",
            Step::Abandoned => "abandoned",
            Step::Released => "released",
            Step::CallerGone => "caller_gone",
            Step::Lapsed => "lapsed",
            Step::Granted => "granted",
            Step::Completed => "completed",
        }
    }

    /// Steps the webhook announces: a call was held, or its approval was decided.
    pub fn notifies(self) -> bool {
        matches!(
            self,
            Step::Held | Step::Approved | Step::Denied | Step::Expired | Step::Abandoned
        )
    }
}

/// Who asked for the held call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requester {
    pub subject: String,
    pub issuer: String,
    pub client_id: Option<String>,
    /// Local callers: process owner and command.
    pub uid: Option<u32>,
    pub comm: Option<String>,
    /// `local`, `remote`.
    pub caller_kind: String,
    pub peer: String,
}

/// A time-bound grant issued with an approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantInfo {
    pub id: String,
    /// Argument bounds (constraint expression); `None`: only the identical arguments.
    pub bounds: Option<String>,
    /// Milliseconds since the epoch.
    pub expires_at: u64,
}

/// One step of one approval. Arguments appear only as a summary (numbers and booleans as
/// they are, strings and containers by size): string values never reach the log, the audit
/// store or the webhook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalEvent {
    pub approval_id: String,
    pub step: Step,
    /// SHA-256 of the canonical request (see [`crate::approval::canon`]).
    pub request_hash: String,
    pub service: String,
    /// The approval rule, e.g. `crm.policy.toml:approvals[bulk-export]`.
    pub rule: String,
    pub requester: Requester,
    pub method: String,
    /// Tool or prompt name, resource URI.
    pub target: Option<String>,
    pub arguments: serde_json::Value,
    /// Why the call was held: `tools/call export_customers when limit > 1000 (limit = 5000)`.
    pub matched: String,
    /// Who acted (approver, or `agent` for expiry/shutdown), when someone did.
    pub actor: Option<String>,
    pub reason: Option<String>,
    /// Approvals counted so far, and how many are required.
    pub approvals: u32,
    pub required: u32,
    pub grant: Option<GrantInfo>,
    /// `completed`: the exchange's outcome (`result`, `error`, `approval_denied`, ...).
    pub outcome: Option<String>,
    /// When the held call expires (ms since the epoch).
    pub expires_at: u64,
    /// When this step happened (ms since the epoch).
    pub time: u64,
}

/// Milliseconds since the epoch.
pub fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A summary of arguments that keeps their shape and numbers but no string content.
pub fn summarize(v: &serde_json::Value) -> serde_json::Value {
    summarize_at(v, 0)
}

fn summarize_at(v: &serde_json::Value, depth: usize) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Null | Value::Bool(_) | Value::Number(_) => v.clone(),
        Value::String(s) => Value::String(format!("<string:{}>", s.chars().count())),
        Value::Array(a) => Value::String(format!("<array:{}>", a.len())),
        Value::Object(m) if depth < 2 && m.len() <= 64 => Value::Object(
            m.iter()
                .map(|(k, x)| (clip_key(k), summarize_at(x, depth + 1)))
                .collect(),
        ),
        Value::Object(m) => Value::String(format!("<object:{}>", m.len())),
    }
}

fn clip_key(k: &str) -> String {
    match k.char_indices().nth(64) {
        Some((i, _)) => format!("{}…", &k[..i]),
        None => k.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn summary_keeps_numbers_and_shape_never_strings() {
        let s = summarize(&json!({
            "limit": 5000, "dry_run": false, "note": null,
            "email": "jane.doe@example.com", "ids": [1, 2, 3],
            "filter": {"country": "DE", "min": 3, "deep": {"x": "secret"}}
        }));
        assert_eq!(
            s,
            json!({
                "limit": 5000, "dry_run": false, "note": null,
                "email": "<string:20>", "ids": "<array:3>",
                "filter": {"country": "<string:2>", "min": 3, "deep": "<object:1>"}
            })
        );
        assert!(!s.to_string().contains("jane"));
        assert!(!s.to_string().contains("secret"));
    }
}
