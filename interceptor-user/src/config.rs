//! The agent's configuration file (TOML): protected services and agent settings.
//!
//! Owns parsing and validation. Invalid configuration is rejected as a whole with a message
//! naming the file, the key and the problem, so the agent never starts half-configured.
use std::{
    collections::HashSet,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

/// Default loopback port where redirected local connections reach the agent.
pub const DEFAULT_LISTEN_PORT: u16 = 15001;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub agent: AgentSettings,
    #[serde(default, rename = "services")]
    pub services: Vec<ServiceConfig>,
    #[serde(default)]
    pub auth: AuthSettings,
    #[serde(default)]
    pub audit: AuditSettings,
    #[serde(default)]
    pub approvals: ApprovalSettings,
}

/// Just-in-time approvals: how approvers reach the agent (the rules are in the policy).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApprovalSettings {
    /// Group (name or gid) whose members may connect to the control socket (it becomes
    /// `root:<group>`, mode 0660); every command is still checked against the peer's uid.
    /// Absent: the socket stays root-only (0600).
    pub control_group: Option<GroupRef>,
    /// The `aud` approvers' own tokens must carry (`interceptor approvals --token`, HTTP
    /// endpoint); one of an issuer's `audiences`. Absent: approvers act by uid only.
    pub audience: Option<String>,
    /// Listen address of the HTTP endpoint for approvers (absent: no endpoint).
    pub http_listen: Option<std::net::SocketAddr>,
    /// TLS for the HTTP endpoint (required unless it listens on loopback).
    pub http_tls: Option<crate::tls::ServerTlsConfig>,
    /// JSON POSTs when a call is held and when it is decided.
    pub webhook: Option<WebhookConfig>,
    /// How often a held SSE stream is told it is still waiting (seconds).
    pub keepalive_secs: u64,
    /// Most calls held at once (more are refused with 503).
    pub max_pending: usize,
    /// Decided requests kept for `approvals list --all` / `show`.
    pub history: usize,
}

impl Default for ApprovalSettings {
    fn default() -> Self {
        ApprovalSettings {
            control_group: None,
            audience: None,
            http_listen: None,
            http_tls: None,
            webhook: None,
            keepalive_secs: 15,
            max_pending: 1000,
            history: 1000,
        }
    }
}

/// The tamper-evident audit log (see `audit`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSettings {
    /// Record every exchange durably before it is answered (default). Turning this off means
    /// exchanges are only logged; the benchmark uses it as its baseline.
    pub enabled: bool,
    /// The SQLite database; default `<agent.state_dir>/audit.db`.
    pub db: Option<PathBuf>,
    /// Ed25519 checkpoint signing key (C2SP note private key), created when missing. Keep it
    /// apart from the database: whoever can rewrite the database must not be able to sign.
    pub signing_key: PathBuf,
    /// Checkpoint origin line and key name; default `<hostname>/interceptor/<instance>`.
    pub origin: Option<String>,
    /// A checkpoint is signed when the log has grown and this much time has passed...
    pub checkpoint_interval_secs: u64,
    /// ...or this many records were added since the last one.
    pub checkpoint_max_records: u64,
    /// Bodies of records older than this are removed (the tree stays verifiable); 0 = keep.
    pub retention_days: u64,
    /// Most records committed in one transaction (group commit).
    pub max_batch: usize,
    /// The controller named in the GDPR Art. 30 export.
    pub controller: Controller,
    /// Transfers of personal data to third countries or international organisations, as the
    /// Art. 30(1)(e) record lists them.
    pub transfers: Vec<Transfer>,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            enabled: true,
            db: None,
            signing_key: "/etc/interceptor/audit-signing.key".into(),
            origin: None,
            checkpoint_interval_secs: 10,
            checkpoint_max_records: 10_000,
            retention_days: 0,
            max_batch: 1024,
            controller: Controller::default(),
            transfers: Vec::new(),
        }
    }
}

/// Art. 30(1)(a): name and contact details of the controller, its representative and DPO.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Controller {
    pub name: String,
    pub contact: String,
    pub representative: String,
    pub dpo: String,
}

/// Art. 30(1)(e): a transfer to a third country or international organisation.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Transfer {
    pub recipient: String,
    pub country: String,
    /// Art. 46/49 safeguards (e.g. "standard contractual clauses").
    #[serde(default)]
    pub safeguards: String,
}

/// A group by number or by name (looked up in /etc/group).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum GroupRef {
    Gid(u32),
    Name(String),
}

impl GroupRef {
    /// The numeric gid.
    pub fn resolve(&self) -> Result<u32, String> {
        match self {
            GroupRef::Gid(g) => Ok(*g),
            GroupRef::Name(n) => {
                if let Ok(g) = n.parse::<u32>() {
                    return Ok(g);
                }
                let groups = std::fs::read_to_string("/etc/group")
                    .map_err(|e| format!("reading /etc/group: {e}"))?;
                groups
                    .lines()
                    .find_map(|l| {
                        let mut f = l.split(':');
                        (f.next() == Some(n.as_str()))
                            .then(|| f.nth(1).and_then(|g| g.parse().ok()))
                            .flatten()
                    })
                    .ok_or_else(|| format!("no group named {n:?} in /etc/group"))
            }
        }
    }
}

/// Where approval events are POSTed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL.
    pub url: String,
    /// HMAC-SHA256 key for `X-Interceptor-Signature` (file readable by its owner only).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// CA bundle for an `https://` URL (default: the system roots).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Time allowed per delivery attempt.
    #[serde(default = "default_webhook_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_webhook_timeout_ms() -> u64 {
    5000
}

/// Identity providers and policy files, shared by every service.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// Accepted OIDC issuers.
    #[serde(default)]
    pub issuers: Vec<crate::oidc::IssuerConfig>,
    /// Policy files, or directories whose `*.policy.toml` files are loaded.
    #[serde(default)]
    pub policy: Vec<PathBuf>,
}

/// Per-service authentication and authorization.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceAuth {
    /// This service's protected resource URL (RFC 8707/9728): the `aud` its tokens must carry,
    /// e.g. `https://crm.example.com/mcp`.
    pub resource: String,
    /// Forward the caller's token to the server (default: never).
    #[serde(default)]
    pub forward_token: bool,
    /// Local processes bound to the identities they may present.
    #[serde(default)]
    pub local_bindings: Vec<LocalBinding>,
    /// Scopes advertised in the protected resource metadata.
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// A local process (by uid or systemd unit) may only present these identities.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalBinding {
    pub uid: Option<u32>,
    pub unit: Option<String>,
    #[serde(default)]
    pub subjects: Vec<String>,
    #[serde(default)]
    pub clients: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSettings {
    /// Names this agent's pin directory: `<bpffs>/interceptor/<instance>`.
    pub instance: String,
    /// Where bpffs is (or gets) mounted.
    pub bpffs: PathBuf,
    /// Where the cgroup2 hierarchy is mounted; `None` = find it, or mount one under
    /// `runtime_dir`.
    pub cgroup2: Option<PathBuf>,
    /// Cgroup, relative to the cgroup2 mount, where the cgroup programs attach ("/" = root).
    pub cgroup_path: String,
    /// Loopback port the agent listens on for redirected local connections.
    pub listen_port: u16,
    /// Directory for the control socket and other runtime files.
    pub runtime_dir: PathBuf,
    /// How long in-flight connections may finish after SIGTERM.
    pub grace_period_ms: u64,
    /// Timeout for the agent's connection to the real server.
    pub connect_timeout_ms: u64,
    /// How often the agent refreshes the set of local addresses (for wildcard services).
    pub local_addrs_refresh_ms: u64,
    /// "text", "json" (one object per line on stderr) or "journal" (systemd journal fields).
    pub log_format: String,
    /// How often certificate files are checked for replacement (also on SIGHUP).
    pub cert_reload_ms: u64,
    /// The agent's state: the audit database (by default) and the pseudonym keys.
    pub state_dir: PathBuf,
    /// The pseudonym key ring (`<id>.key`, newest in force); default `<state_dir>/pseudonym-keys`.
    /// Keys never go into the audit store; erasing one makes its pseudonyms unlinkable.
    pub pseudonym_key_dir: Option<PathBuf>,
}

impl Default for AgentSettings {
    fn default() -> Self {
        AgentSettings {
            instance: "default".into(),
            bpffs: "/sys/fs/bpf".into(),
            cgroup2: None,
            cgroup_path: "/".into(),
            listen_port: DEFAULT_LISTEN_PORT,
            runtime_dir: "/run/interceptor".into(),
            grace_period_ms: 10_000,
            connect_timeout_ms: 5_000,
            local_addrs_refresh_ms: 2_000,
            log_format: "text".into(),
            cert_reload_ms: 5_000,
            state_dir: "/var/lib/interceptor".into(),
            pseudonym_key_dir: None,
        }
    }
}

impl AgentSettings {
    pub fn grace_period(&self) -> Duration {
        Duration::from_millis(self.grace_period_ms)
    }
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn pin_root(&self) -> PathBuf {
        self.bpffs.join("interceptor").join(&self.instance)
    }
    pub fn control_socket(&self) -> PathBuf {
        self.runtime_dir.join(format!("{}.sock", self.instance))
    }
    pub fn pseudonym_keys(&self) -> PathBuf {
        self.pseudonym_key_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("pseudonym-keys"))
    }
}

impl Config {
    /// The audit database path.
    pub fn audit_db(&self) -> PathBuf {
        self.audit
            .db
            .clone()
            .unwrap_or_else(|| self.agent.state_dir.join("audit.db"))
    }
    /// The checkpoint origin (also the signing key's name).
    pub fn audit_origin(&self) -> String {
        self.audit.origin.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "localhost".into());
            format!("{host}/interceptor/{}", self.agent.instance)
        })
    }
}

/// One protected MCP service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub name: String,
    pub port: u16,
    /// Only connections to this address are intercepted; all local addresses when absent.
    pub address: Option<IpAddr>,
    /// `mcp` (default): HTTP/MCP-aware proxy. `tcp`: byte relay only (no inspection).
    #[serde(default)]
    pub mode: ServiceMode,
    /// Terminate TLS from callers with these certificates (plain HTTP when absent).
    pub tls: Option<crate::tls::ServerTlsConfig>,
    #[serde(default)]
    pub upstream: UpstreamConfig,
    #[serde(default)]
    pub limits: HttpLimits,
    /// What to do with HTTP traffic that is not MCP: `reject` (default) or `forward`.
    #[serde(default)]
    pub non_mcp: NonMcp,
    /// Bearer-token authentication and policy; absent = no authentication (not recommended).
    pub auth: Option<ServiceAuth>,
    /// Redaction of personal data in responses (detectors and masking); absent = none.
    pub redact: Option<crate::redact::engine::EngineConfig>,
    /// How much of each (redacted) response an exchange record keeps, besides its SHA-256.
    /// Only services that redact keep any; at most [`MAX_RESPONSE_EXCERPT_BYTES`].
    #[serde(default = "default_excerpt")]
    pub response_excerpt_bytes: usize,
}

/// Largest `response_excerpt_bytes`: enough for whole typical results, bounded per record.
pub const MAX_RESPONSE_EXCERPT_BYTES: usize = 1024 * 1024;

fn default_excerpt() -> usize {
    512
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ServiceMode {
    #[default]
    Mcp,
    Tcp,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NonMcp {
    #[default]
    Reject,
    Forward,
}

/// How the agent talks to the real server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The server speaks TLS: re-encrypt toward it and verify its certificate.
    pub tls: Option<crate::tls::UpstreamTlsConfig>,
    /// Speak HTTP/2 (prior knowledge on plain HTTP, ALPN `h2` with TLS) instead of HTTP/1.1.
    #[serde(default)]
    pub http2: bool,
    /// Header carrying the credential the server expects (e.g. "Authorization", "X-Api-Key").
    pub auth_header: Option<String>,
    /// File holding that header's value (must not be readable by group or others).
    pub auth_value_file: Option<PathBuf>,
    /// Forward the caller's own `Authorization` header (default: strip it).
    #[serde(default)]
    pub forward_client_authorization: bool,
    /// A pooled connection to the server idle longer than this (ms) is not reused; 0 never
    /// reuses one. It must stay below the server's own keep-alive timeout: a server that closes
    /// an idle connection just as a request is written to it fails that request, and a POST
    /// cannot be retried safely (the tool may already have run). uvicorn, hypercorn, Node and
    /// Apache close after 5 s, gunicorn after 2 s; the default stays under all of them.
    #[serde(default = "UpstreamConfig::default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
}

impl UpstreamConfig {
    fn default_idle_timeout_ms() -> u64 {
        1_500
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            tls: None,
            http2: false,
            auth_header: None,
            auth_value_file: None,
            forward_client_authorization: false,
            idle_timeout_ms: Self::default_idle_timeout_ms(),
        }
    }
}

/// Limits on what a caller may send; exceeding one gets a clear HTTP/JSON-RPC error.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpLimits {
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
    pub max_json_depth: usize,
    /// Malformed requests tolerated on one connection before it is closed.
    pub max_malformed_per_connection: u32,
    /// Largest single SSE event from the server (bounded memory).
    pub max_sse_event_bytes: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_header_bytes: 16 * 1024,
            max_body_bytes: 4 * 1024 * 1024,
            max_json_depth: 64,
            max_malformed_per_connection: 8,
            max_sse_event_bytes: 64 * 1024 * 1024,
        }
    }
}

/// A configuration error: which file, which key, what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {problem}")]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub problem: String,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            key: "-".into(),
            problem: format!("cannot read: {e}"),
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError {
            file: file.into(),
            key: e
                .span()
                .map(|s| key_at(text, s.start))
                .unwrap_or_else(|| "-".into()),
            problem: e.message().to_string(),
        })?;
        cfg.validate(file)?;
        Ok(cfg)
    }

    fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let err = |key: String, problem: String| ConfigError {
            file: file.into(),
            key,
            problem,
        };
        let a = &self.agent;
        if a.instance.is_empty()
            || a.instance.len() > 64
            || !a
                .instance
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(err(
                "agent.instance".into(),
                format!("{:?} must be 1-64 characters of [A-Za-z0-9_-]", a.instance),
            ));
        }
        if a.listen_port == 0 {
            return Err(err("agent.listen_port".into(), "must not be 0".into()));
        }
        if !a.cgroup_path.starts_with('/') || a.cgroup_path.contains("..") {
            return Err(err(
                "agent.cgroup_path".into(),
                format!(
                    "{:?} must be an absolute cgroup path without '..'",
                    a.cgroup_path
                ),
            ));
        }
        if !["text", "json", "journal"].contains(&a.log_format.as_str()) {
            return Err(err(
                "agent.log_format".into(),
                format!(
                    "{:?} is not one of \"text\", \"json\", \"journal\"",
                    a.log_format
                ),
            ));
        }
        if a.grace_period_ms > 600_000 {
            return Err(err(
                "agent.grace_period_ms".into(),
                "must be at most 600000".into(),
            ));
        }
        if a.connect_timeout_ms == 0 {
            return Err(err(
                "agent.connect_timeout_ms".into(),
                "must not be 0".into(),
            ));
        }
        if a.local_addrs_refresh_ms < 100 {
            return Err(err(
                "agent.local_addrs_refresh_ms".into(),
                "must be at least 100".into(),
            ));
        }
        let au = &self.audit;
        if let Some(o) = &au.origin
            && (o.is_empty() || !o.is_ascii() || o.contains(['+', ' ', '\n', '\t']))
        {
            return Err(err(
                "audit.origin".into(),
                format!("{o:?} must be non-empty ASCII without '+' or whitespace"),
            ));
        }
        if au.checkpoint_interval_secs == 0 || au.checkpoint_max_records == 0 {
            return Err(err(
                "audit.checkpoint_interval_secs".into(),
                "checkpoint_interval_secs and checkpoint_max_records must not be 0".into(),
            ));
        }
        if au.max_batch == 0 || au.max_batch > 65_536 {
            return Err(err("audit.max_batch".into(), "must be 1..=65536".into()));
        }
        if self.services.is_empty() {
            return Err(err(
                "services".into(),
                "no protected service is declared (add a [[services]] table)".into(),
            ));
        }
        if self.services.len() > interceptor_common::MAX_SERVICES as usize {
            return Err(err(
                "services".into(),
                format!("at most {} services", interceptor_common::MAX_SERVICES),
            ));
        }
        let mut names = HashSet::new();
        let mut endpoints = HashSet::new();
        for (i, s) in self.services.iter().enumerate() {
            let key = |k: &str| format!("services[{i}].{k}");
            if s.name.is_empty()
                || !s
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(err(
                    key("name"),
                    format!("{:?} must be non-empty [A-Za-z0-9._-]", s.name),
                ));
            }
            if !names.insert(s.name.clone()) {
                return Err(err(
                    key("name"),
                    format!("duplicate service name {:?}", s.name),
                ));
            }
            if s.port == 0 {
                return Err(err(key("port"), "must not be 0".into()));
            }
            if s.port == a.listen_port {
                return Err(err(
                    key("port"),
                    format!("{} is the agent's own listen_port", s.port),
                ));
            }
            if let Some(addr) = s.address
                && addr.is_unspecified()
            {
                return Err(err(
                    key("address"),
                    "leave address out to protect every local address".into(),
                ));
            }
            let l = &s.limits;
            if l.max_header_bytes < 1024 || l.max_body_bytes < 1024 || l.max_json_depth < 4 {
                return Err(err(
                    key("limits"),
                    "max_header_bytes and max_body_bytes must be at least 1024, max_json_depth at least 4"
                        .into(),
                ));
            }
            if s.response_excerpt_bytes > MAX_RESPONSE_EXCERPT_BYTES {
                return Err(err(
                    key("response_excerpt_bytes"),
                    format!("at most {MAX_RESPONSE_EXCERPT_BYTES}"),
                ));
            }
            if s.mode == ServiceMode::Tcp && s.redact.is_some() {
                return Err(err(key("redact"), "redaction needs mode = \"mcp\"".into()));
            }
            if s.mode == ServiceMode::Tcp && (s.tls.is_some() || s.upstream.tls.is_some()) {
                return Err(err(
                    key("mode"),
                    "tls needs mode = \"mcp\" (a tcp service relays bytes as they are)".into(),
                ));
            }
            match (&s.upstream.auth_header, &s.upstream.auth_value_file) {
                (Some(_), None) | (None, Some(_)) => {
                    return Err(err(
                        key("upstream"),
                        "auth_header and auth_value_file go together".into(),
                    ));
                }
                (Some(h), Some(_)) if http::HeaderName::from_bytes(h.as_bytes()).is_err() => {
                    return Err(err(
                        key("upstream.auth_header"),
                        format!("{h:?} is not a valid HTTP header name"),
                    ));
                }
                _ => {}
            }
            if s.upstream.idle_timeout_ms > 3_600_000 {
                return Err(err(
                    key("upstream.idle_timeout_ms"),
                    "must be at most 3600000 (one hour)".into(),
                ));
            }
            if let Some(f) = &s.upstream.auth_value_file {
                check_secret_file(f).map_err(|p| err(key("upstream.auth_value_file"), p))?;
            }
            if let Some(auth) = &s.auth {
                if self.auth.issuers.is_empty() {
                    return Err(err(
                        key("auth"),
                        "needs at least one [[auth.issuers]] to verify tokens".into(),
                    ));
                }
                if self.auth.policy.is_empty() {
                    return Err(err(
                        key("auth"),
                        "needs [auth] policy files (deny by default: without a policy nothing is allowed)"
                            .into(),
                    ));
                }
                if s.mode == ServiceMode::Tcp {
                    return Err(err(key("auth"), "auth needs mode = \"mcp\"".into()));
                }
                match auth.resource.parse::<http::Uri>() {
                    Ok(u) if u.scheme().is_some() && u.authority().is_some() => {}
                    _ => {
                        return Err(err(
                            key("auth.resource"),
                            format!(
                                "{:?} must be an absolute URL like https://host/mcp",
                                auth.resource
                            ),
                        ));
                    }
                }
                for (j, b) in auth.local_bindings.iter().enumerate() {
                    if b.uid.is_none() && b.unit.is_none() {
                        return Err(err(
                            key(&format!("auth.local_bindings[{j}]")),
                            "needs uid or unit".into(),
                        ));
                    }
                }
            }
            if let Some(l) = self.approvals.http_listen
                && l.port() == s.port
            {
                return Err(err(
                    "approvals.http_listen".into(),
                    format!("port {} is a protected service's port", s.port),
                ));
            }
            if !endpoints.insert((s.address, s.port)) {
                return Err(err(
                    key("port"),
                    format!(
                        "another service already protects {:?} port {}",
                        s.address, s.port
                    ),
                ));
            }
        }
        self.validate_approvals(file)
    }

    fn validate_approvals(&self, file: &str) -> Result<(), ConfigError> {
        let err = |key: &str, problem: String| ConfigError {
            file: file.into(),
            key: format!("approvals.{key}"),
            problem,
        };
        let a = &self.approvals;
        if let Some(g) = &a.control_group {
            g.resolve().map_err(|p| err("control_group", p))?;
        }
        if let Some(aud) = &a.audience {
            if !self.auth.issuers.iter().any(|i| i.audiences.contains(aud)) {
                return Err(err(
                    "audience",
                    format!("{aud:?} is not among the audiences of any [[auth.issuers]]"),
                ));
            }
        }
        if let Some(l) = a.http_listen {
            if a.audience.is_none() {
                return Err(err(
                    "http_listen",
                    "the HTTP endpoint authenticates approvers by token: set approvals.audience"
                        .into(),
                ));
            }
            if a.http_tls.is_none() && !l.ip().is_loopback() {
                return Err(err(
                    "http_tls",
                    format!(
                        "{l} is not a loopback address: approvers' tokens need TLS (set approvals.http_tls)"
                    ),
                ));
            }
            if l.port() == self.agent.listen_port {
                return Err(err("http_listen", "is the agent's own listen_port".into()));
            }
        }
        if let Some(w) = &a.webhook {
            match w.url.parse::<http::Uri>() {
                Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {
                }
                _ => {
                    return Err(err(
                        "webhook.url",
                        format!("{:?} must be an http:// or https:// URL", w.url),
                    ));
                }
            }
            if let Some(f) = &w.secret_file {
                check_secret_file(f).map_err(|p| err("webhook.secret_file", p))?;
            }
            if w.timeout_ms == 0 {
                return Err(err("webhook.timeout_ms", "must not be 0".into()));
            }
        }
        if a.keepalive_secs == 0 || a.keepalive_secs > 300 {
            return Err(err("keepalive_secs", "must be 1 to 300".into()));
        }
        if a.max_pending == 0 {
            return Err(err("max_pending", "must not be 0".into()));
        }
        Ok(())
    }

    /// The service that protects `addr:port`, preferring an exact address over a wildcard.
    pub fn service_for(&self, addr: IpAddr, port: u16) -> Option<(u32, &ServiceConfig)> {
        let addr = canonical(addr);
        let mut wildcard = None;
        for (i, s) in self.services.iter().enumerate() {
            if s.port != port {
                continue;
            }
            match s.address {
                Some(a) if canonical(a) == addr => return Some((i as u32, s)),
                None => wildcard = Some((i as u32, s)),
                _ => {}
            }
        }
        wildcard
    }
}

/// A secret file must exist, be a regular file and not be readable by group or others.
pub fn check_secret_file(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let md = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !md.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    let mode = md.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} has mode {:o}; a secret must not be accessible to group or others (chmod 600)",
            path.display(),
            mode & 0o777
        ));
    }
    Ok(())
}

/// Names the key at byte `offset` of a TOML document as `table.key (line N)`, from the line
/// the offset falls on and the nearest table header above it.
fn key_at(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let line_no = text[..offset].matches('\n').count() + 1;
    let line_start = text[..offset].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_string())
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    match (table, key) {
        (Some(t), Some(k)) => format!("{t}.{k} (line {line_no})"),
        (None, Some(k)) => format!("{k} (line {line_no})"),
        _ => format!("line {line_no}"),
    }
}

/// IPv4-mapped IPv6 addresses compare as the IPv4 address they carry.
pub fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_configuration_is_valid() {
        let text = include_str!("../../policies/interceptor.toml");
        let cfg = Config::parse(text, "policies/interceptor.toml").expect("example parses");
        assert_eq!(cfg.agent.state_dir, PathBuf::from("/var/lib/interceptor"));
        assert_eq!(
            cfg.audit.signing_key,
            PathBuf::from("/etc/interceptor/audit-signing.key")
        );
        assert_eq!(cfg.audit.controller.name, "Example Ltd");
        let crm = &cfg.services[0];
        assert_eq!(crm.name, "crm");
        let redact = crm
            .redact
            .as_ref()
            .expect("the example masks personal data");
        assert_eq!(
            redact.masking.get("IBAN"),
            Some(&crate::redact::engine::MaskMode::Partial)
        );
    }

    const OK: &str = r#"
[agent]
instance = "t1"
listen_port = 15001

[[services]]
name = "crm"
port = 8080

[[services]]
name = "hr"
port = 9090
address = "10.0.0.1"
"#;

    #[test]
    fn parses_and_finds_services() {
        let c = Config::parse(OK, "t.toml").unwrap();
        assert_eq!(c.services.len(), 2);
        assert_eq!(
            c.service_for("127.0.0.1".parse().unwrap(), 8080)
                .unwrap()
                .1
                .name,
            "crm"
        );
        assert_eq!(
            c.service_for("10.0.0.1".parse().unwrap(), 9090)
                .unwrap()
                .1
                .name,
            "hr"
        );
        assert!(c.service_for("10.0.0.2".parse().unwrap(), 9090).is_none());
        assert_eq!(
            c.service_for("::ffff:10.0.0.1".parse().unwrap(), 9090)
                .unwrap()
                .0,
            1
        );
    }

    #[test]
    fn rejects_with_key_and_problem() {
        let bad = OK.replace("port = 9090", "port = 8080\naddress2 = 1");
        let e = Config::parse(&bad, "t.toml").unwrap_err().to_string();
        assert!(e.contains("t.toml") && e.contains("address2"), "{e}");
        let dup = OK.replace("name = \"hr\"", "name = \"crm\"");
        let e = Config::parse(&dup, "t.toml").unwrap_err().to_string();
        assert!(
            e.contains("services[1].name") && e.contains("duplicate"),
            "{e}"
        );
        let same_port = OK.replace("port = 9090", "port = 15001");
        let e = Config::parse(&same_port, "t.toml").unwrap_err().to_string();
        assert!(e.contains("services[1].port"), "{e}");
        let typed = OK.replace("listen_port = 15001", "listen_port = \"x\"");
        let e = Config::parse(&typed, "t.toml").unwrap_err().to_string();
        assert!(e.contains("agent.listen_port (line 4)"), "{e}");
        let svc = OK.replace("port = 9090", "port = 70000");
        let e = Config::parse(&svc, "t.toml").unwrap_err().to_string();
        assert!(e.contains("services.port (line 12)"), "{e}");
        let none = "[agent]\ninstance = \"x\"\n";
        let e = Config::parse(none, "t.toml").unwrap_err().to_string();
        assert!(
            e.contains("services") && e.contains("no protected service"),
            "{e}"
        );
        let badfmt = OK.replace(
            "listen_port = 15001",
            "listen_port = 15001\nlog_format = \"xml\"",
        );
        let e = Config::parse(&badfmt, "t.toml").unwrap_err().to_string();
        assert!(e.contains("agent.log_format"), "{e}");
    }

    #[test]
    fn upstream_idle_timeout_defaults_below_common_keep_alives_and_is_bounded() {
        let c = Config::parse(OK, "t.toml").unwrap();
        // Under gunicorn's 2 s (and uvicorn's, Node's 5 s): see UpstreamConfig::idle_timeout_ms.
        assert_eq!(c.services[0].upstream.idle_timeout_ms, 1_500);
        assert_eq!(UpstreamConfig::default().idle_timeout_ms, 1_500);
        let set = format!("{OK}\n[services.upstream]\nidle_timeout_ms = 0\n");
        let c = Config::parse(&set, "t.toml").unwrap();
        assert_eq!(c.services[1].upstream.idle_timeout_ms, 0);
        let big = format!("{OK}\n[services.upstream]\nidle_timeout_ms = 3600001\n");
        let e = Config::parse(&big, "t.toml").unwrap_err().to_string();
        assert!(e.contains("services[1].upstream.idle_timeout_ms"), "{e}");
    }

    #[test]
    fn approvals_settings() {
        let with = |extra: &str| format!("{OK}\n{extra}");
        let issuer = "[[auth.issuers]]\nissuer = \"https://idp\"\naudiences = [\"https://mcp/mcp\", \"https://host:15002/approvals\"]\n";
        let ok = with(&format!(
            "{issuer}[approvals]\ncontrol_group = 4242\naudience = \"https://host:15002/approvals\"\nhttp_listen = \"127.0.0.1:15002\"\n[approvals.webhook]\nurl = \"http://127.0.0.1:9999/hook\"\n"
        ));
        let c = Config::parse(&ok, "t.toml").unwrap();
        assert_eq!(c.approvals.control_group, Some(GroupRef::Gid(4242)));
        assert_eq!(c.approvals.keepalive_secs, 15);
        assert_eq!(c.approvals.webhook.as_ref().unwrap().timeout_ms, 5000);
        // The endpoint needs an audience some issuer signs for, and TLS off loopback.
        let e = Config::parse(
            &with("[approvals]\nhttp_listen = \"127.0.0.1:15002\"\n"),
            "t.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("approvals.http_listen") && e.contains("audience"),
            "{e}"
        );
        let e = Config::parse(
            &with(&format!(
                "{issuer}[approvals]\naudience = \"https://other/approvals\"\n"
            )),
            "t.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("approvals.audience") && e.contains("not among the audiences"),
            "{e}"
        );
        let e = Config::parse(&ok.replace("127.0.0.1:15002", "0.0.0.0:15002"), "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("approvals.http_tls"), "{e}");
        let e = Config::parse(
            &ok.replace("http://127.0.0.1:9999/hook", "ftp://x/hook"),
            "t.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("approvals.webhook.url"), "{e}");
        let e = Config::parse(
            &ok.replace(
                "control_group = 4242",
                "control_group = \"no-such-group-xyz\"",
            ),
            "t.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("approvals.control_group") && e.contains("no group named"),
            "{e}"
        );
        let e = Config::parse(&with("[approvals]\nkeepalive_secs = 0\n"), "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("approvals.keepalive_secs"), "{e}");
        let e = Config::parse(&with("[approvals]\nbogus = 1\n"), "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
        assert_eq!(GroupRef::Name("root".into()).resolve(), Ok(0));
    }
}
