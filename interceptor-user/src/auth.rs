//! Authentication and authorization of MCP requests, following the MCP authorization spec.
//!
//! A request to a service with `[services.auth]` must carry a bearer token (RFC 6750) that one
//! of the configured issuers signed for this service's resource URL (RFC 8707). Missing or
//! invalid tokens get `401` with `WWW-Authenticate: Bearer resource_metadata=...`, pointing
//! standard MCP clients to the protected resource metadata document (RFC 9728) the agent
//! serves, from which they discover the authorization server. A verified token becomes a
//! [`Principal`]; local callers must also match the service's process bindings. Every MCP
//! message is then decided by the [`PolicySet`] (deny by default), and the decision carries
//! the role, the rule, the purpose, the lawful basis and the policy version.
use std::{
    path::PathBuf,
    sync::{Arc, RwLock},
};

use serde_json::json;
use tracing::info;

use crate::{
    config::{LocalBinding, ServiceAuth},
    identity::Caller,
    oidc::{TokenError, VerifiedToken, Verifier},
    policy::{PolicyDecision, PolicyRequest, PolicySet, Principal},
};

/// The identity and policy state shared by all services.
pub struct Auth {
    pub verifier: Verifier,
    policy: RwLock<Arc<PolicySet>>,
    policy_paths: Vec<PathBuf>,
    /// Calls held for approval (the rules are in the policy). `None` only outside the agent;
    /// a call a rule holds is then refused (fail closed).
    pub approvals: Option<Arc<crate::approval::Approvals>>,
}

/// Why a request was not authenticated.
#[derive(Debug)]
pub enum AuthnFailure {
    /// No bearer token at all (401 without an error code, per RFC 6750 §3.1).
    Missing,
    /// A token was presented and refused.
    Invalid(TokenError),
    /// The token is valid but this local process may not present it (403).
    BindingViolated(String),
}

impl AuthnFailure {
    pub fn rule(&self) -> String {
        match self {
            AuthnFailure::Missing => "authn/missing_token".into(),
            AuthnFailure::Invalid(e) => format!("authn/{}", e.code()),
            AuthnFailure::BindingViolated(_) => "authn/local_binding".into(),
        }
    }
    pub fn reason(&self) -> String {
        match self {
            AuthnFailure::Missing => "a bearer token is required".into(),
            AuthnFailure::Invalid(e) => e.description(),
            AuthnFailure::BindingViolated(r) => r.clone(),
        }
    }
}

/// A verified caller.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub token: VerifiedToken,
    pub principal: Principal,
}

impl Auth {
    pub fn new(verifier: Verifier, policy: PolicySet, policy_paths: Vec<PathBuf>) -> Self {
        Auth {
            verifier,
            policy: RwLock::new(Arc::new(policy)),
            policy_paths,
            approvals: None,
        }
    }

    /// Holds the calls that approval rules match in `approvals`.
    pub fn with_approvals(mut self, approvals: Arc<crate::approval::Approvals>) -> Self {
        self.approvals = Some(approvals);
        self
    }

    pub fn policy(&self) -> Arc<PolicySet> {
        self.policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-reads the policy files and swaps them in atomically. An invalid policy leaves the
    /// running one in force; the error says why.
    pub fn reload_policy(&self) -> Result<(String, String), String> {
        let new = PolicySet::load(&self.policy_paths).map_err(|e| e.to_string())?;
        let new_version = new.version().to_string();
        let mut guard = self.policy.write().unwrap_or_else(|p| p.into_inner());
        let old_version = guard.version().to_string();
        *guard = Arc::new(new);
        info!(
            event = "policy_reloaded",
            old_version = %old_version,
            new_version = %new_version,
            "policy reloaded"
        );
        Ok((old_version, new_version))
    }

    /// Checks the `Authorization` header of a request for `svc`.
    pub async fn authenticate(
        &self,
        svc: &ServiceAuth,
        authorization: Option<&str>,
        caller: &Caller,
    ) -> Result<Authenticated, AuthnFailure> {
        let Some(value) = authorization else {
            return Err(AuthnFailure::Missing);
        };
        let token = match value.split_once(' ') {
            Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") && !t.trim().is_empty() => {
                t.trim()
            }
            _ => {
                return Err(AuthnFailure::Invalid(TokenError::Malformed(
                    "the Authorization header is not a Bearer token".into(),
                )));
            }
        };
        let token = self
            .verifier
            .verify(token, &svc.resource)
            .await
            .map_err(AuthnFailure::Invalid)?;
        let principal = Principal {
            subject: token.subject.clone(),
            issuer: token.issuer.clone(),
            client_id: token.client_id.clone(),
            groups: token.groups.clone(),
        };
        check_bindings(&svc.local_bindings, caller, &principal)
            .map_err(AuthnFailure::BindingViolated)?;
        Ok(Authenticated { token, principal })
    }

    pub fn decide(&self, req: &PolicyRequest<'_>) -> PolicyDecision {
        self.policy().decide(req)
    }
}

/// A local caller whose uid or systemd unit is bound may only present the listed identities.
fn check_bindings(
    bindings: &[LocalBinding],
    caller: &Caller,
    who: &Principal,
) -> Result<(), String> {
    let Some(p) = caller.process() else {
        return Ok(());
    };
    for b in bindings {
        let applies = b.uid.is_some_and(|u| u == p.uid)
            || b.unit
                .as_deref()
                .is_some_and(|u| p.unit.as_deref() == Some(u));
        if !applies {
            continue;
        }
        let ok = b.subjects.contains(&who.subject)
            || who
                .client_id
                .as_ref()
                .is_some_and(|c| b.clients.iter().any(|x| x == c));
        if !ok {
            return Err(format!(
                "local process uid {} ({}) may not present the identity of subject {:?}",
                p.uid,
                p.unit.as_deref().unwrap_or(&p.comm),
                who.subject
            ));
        }
    }
    Ok(())
}

/// The RFC 9728 metadata document path for a resource URL ("/.well-known/oauth-protected-resource/mcp").
pub fn metadata_path(resource: &str) -> String {
    let path = resource
        .parse::<http::Uri>()
        .ok()
        .map(|u| u.path().trim_end_matches('/').to_string())
        .unwrap_or_default();
    format!("/.well-known/oauth-protected-resource{path}")
}

/// The metadata document's absolute URL, on the same origin as the resource.
pub fn metadata_url(resource: &str) -> String {
    match resource.parse::<http::Uri>() {
        Ok(u) => format!(
            "{}://{}{}",
            u.scheme_str().unwrap_or("https"),
            u.authority().map(|a| a.as_str()).unwrap_or(""),
            metadata_path(resource)
        ),
        Err(_) => metadata_path(resource),
    }
}

/// The protected resource metadata document (RFC 9728 §2).
pub fn metadata_document(
    svc: &ServiceAuth,
    authorization_servers: Vec<String>,
) -> serde_json::Value {
    let mut doc = json!({
        "resource": svc.resource,
        "authorization_servers": authorization_servers,
        "bearer_methods_supported": ["header"],
    });
    if !svc.scopes.is_empty() {
        doc["scopes_supported"] = json!(svc.scopes);
    }
    doc
}

/// The `WWW-Authenticate` challenge for a 401 (RFC 6750 §3, RFC 9728 §5.1).
pub fn challenge(svc: &ServiceAuth, failure: &AuthnFailure) -> String {
    let meta = metadata_url(&svc.resource);
    match failure {
        AuthnFailure::Missing => format!("Bearer resource_metadata=\"{meta}\""),
        other => format!(
            "Bearer resource_metadata=\"{meta}\", error=\"invalid_token\", error_description=\"{}\"",
            other.reason().replace(['"', '\\'], "'")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_locations_follow_rfc_9728() {
        assert_eq!(
            metadata_path("https://crm.example.com/mcp"),
            "/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(
            metadata_url("https://crm.example.com:8443/mcp/"),
            "https://crm.example.com:8443/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(
            metadata_path("https://crm.example.com"),
            "/.well-known/oauth-protected-resource"
        );
    }

    #[test]
    fn challenge_names_the_metadata_and_the_error() {
        let svc = ServiceAuth {
            resource: "https://crm.test/mcp".into(),
            forward_token: false,
            local_bindings: vec![],
            scopes: vec![],
        };
        let c = challenge(&svc, &AuthnFailure::Missing);
        assert_eq!(
            c,
            "Bearer resource_metadata=\"https://crm.test/.well-known/oauth-protected-resource/mcp\""
        );
        let c = challenge(&svc, &AuthnFailure::Invalid(TokenError::Expired));
        assert!(c.contains("error=\"invalid_token\""), "{c}");
        assert!(c.contains("error_description="), "{c}");
    }
}
