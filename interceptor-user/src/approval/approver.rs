//! Who is deciding: an approver identified by the kernel (the control socket peer's uid,
//! mapped through `[[approvers]]`) or by their own OIDC token.
use serde::Serialize;

use super::rules::ApprovalRules;
use crate::oidc::VerifiedToken;

/// How the approver proved who they are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Via {
    /// SO_PEERCRED uid of the control socket peer.
    Uid { uid: u32 },
    /// A verified bearer token (control socket `--token`, or the HTTP endpoint).
    Token { issuer: String, subject: String },
}

/// A person about to decide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Approver {
    /// One key per person: `approver:<name>` when `[[approvers]]` knows them (by uid or
    /// token subject), else `subject:<issuer>#<subject>`. Votes are counted per key.
    pub key: String,
    /// For records: `dana (uid 4001)`, `erin (token https://idp)`.
    pub display: String,
    pub via: Via,
    /// Approver groups: `[[approvers]] groups` by uid, the token's groups claim by token.
    pub groups: Vec<String>,
    /// Token subjects that are this person (their `[[approvers]]` entry's, and the token's).
    pub subjects: Vec<String>,
}

impl Approver {
    /// The local user `uid`, if the policy names them as an approver.
    pub fn by_uid(rules: &ApprovalRules, uid: u32) -> Result<Approver, String> {
        let e = rules.approver_by_uid(uid).ok_or_else(|| {
            format!("uid {uid} is not an approver: no [[approvers]] entry of the policy lists it")
        })?;
        Ok(Approver {
            key: format!("approver:{}", e.name),
            display: format!("{} (uid {uid})", e.name),
            via: Via::Uid { uid },
            groups: e.groups.clone(),
            subjects: e.subjects.clone(),
        })
    }

    /// The holder of a verified token.
    pub fn by_token(rules: &ApprovalRules, t: &VerifiedToken) -> Approver {
        let entry = rules.approver_by_subject(&t.subject);
        let mut subjects = entry.map(|e| e.subjects.clone()).unwrap_or_default();
        if !subjects.contains(&t.subject) {
            subjects.push(t.subject.clone());
        }
        Approver {
            key: match entry {
                Some(e) => format!("approver:{}", e.name),
                None => format!("subject:{}#{}", t.issuer, t.subject),
            },
            display: match entry {
                Some(e) => format!("{} (token {}#{})", e.name, t.issuer, t.subject),
                None => format!("{} (token {})", t.subject, t.issuer),
            },
            via: Via::Token {
                issuer: t.issuer.clone(),
                subject: t.subject.clone(),
            },
            groups: t.groups.clone(),
            subjects,
        }
    }

    /// Whether this approver is the person who made the request (separation of duties):
    /// same token subject and issuer, a subject their `[[approvers]]` entry lists, or (acting
    /// by uid) the uid of the local process that sent the call.
    pub fn is_requester(&self, req_issuer: &str, req_subject: &str, req_uid: Option<u32>) -> bool {
        if let Via::Token { issuer, subject } = &self.via
            && issuer == req_issuer
            && subject == req_subject
        {
            return true;
        }
        if self.subjects.iter().any(|s| s == req_subject) {
            return true;
        }
        matches!(self.via, Via::Uid { uid } if Some(uid) == req_uid)
    }
}
