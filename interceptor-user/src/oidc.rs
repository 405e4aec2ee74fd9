//! Caller identity from OAuth 2.0 / OpenID Connect bearer tokens.
//!
//! A [`Verifier`] holds one or more configured issuers ([`IssuerConfig`]). For each issuer it
//! fetches the OpenID Connect discovery document and the JSON Web Key Set (through the
//! `openidconnect` crate's [`ProviderMetadata`] / [`JsonWebKeySet`] types, over a small hyper +
//! tokio-rustls client implementing its [`AsyncHttpClient`] trait), keeps the keys fresh in the
//! background, and verifies bearer tokens on every request:
//!
//! - JWTs (RFC 9068 access tokens, or ID tokens when explicitly enabled): the header is decoded
//!   without trusting it; `none`, HMAC and unknown algorithms are refused; the issuer is chosen
//!   by `iss` and only that issuer's keys are used; the key is chosen by `kid` (refreshing the key
//!   set, rate limited, on an unknown `kid`) and must match the algorithm (`kty`, `crv`, `alg`);
//!   then `typ`, `exp`/`nbf`/`iat` (with leeway) and `aud` against the requested resource
//!   (RFC 8707) are checked. Signatures are verified by `openidconnect`'s [`JsonWebKey`]
//!   implementation (RS256/384/512, PS256/384/512, ES256/384, EdDSA with Ed25519).
//! - Opaque tokens: RFC 7662 introspection with HTTP Basic client authentication, where
//!   configured; positive answers are cached (bounded) until the token expires.
//!
//! Errors ([`TokenError`]) carry a `WWW-Authenticate` error code and a short description that is
//! safe to send to the client (attacker-controlled strings are sanitized and truncated).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::header::{
    ACCEPT, AUTHORIZATION, CONNECTION, CONTENT_TYPE, HOST, HeaderValue, USER_AGENT,
};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use openidconnect::core::{
    CoreAuthDisplay, CoreClaimName, CoreClaimType, CoreClientAuthMethod, CoreGrantType,
    CoreJsonWebKey, CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm,
    CoreJwsSigningAlgorithm, CoreResponseMode, CoreResponseType, CoreSubjectIdentifierType,
};
use openidconnect::{
    AdditionalProviderMetadata, AsyncHttpClient, HttpRequest, HttpResponse, IssuerUrl, JsonWebKey,
    JsonWebKeySet, JsonWebKeySetUrl, ProviderMetadata, SignatureVerificationError,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;

/// Longest bearer token accepted (bytes).
const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Largest discovery / JWKS / introspection response read (bytes).
const MAX_RESPONSE_LEN: usize = 1024 * 1024;
/// Time limit for one HTTP exchange with a provider (connect, TLS, request, response).
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// Most introspection results kept in the cache, per issuer.
const INTROSPECTION_CACHE_MAX: usize = 4096;
/// Cache lifetime of an introspection result without `exp`.
const INTROSPECTION_NO_EXP_TTL: u64 = 60;
/// Largest leeway accepted in the configuration (seconds).
const MAX_LEEWAY_SECS: u64 = 600;
/// Smallest RSA modulus accepted from a JWKS (bits).
const MIN_RSA_BITS: usize = 2048;

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// One trusted OpenID Connect issuer.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Exact `iss` value; discovery at `{issuer}/.well-known/openid-configuration`.
    pub issuer: String,
    /// Accepted `aud` values: the protected resource URL(s) (RFC 8707), and the client id(s)
    /// when ID tokens are accepted. At least one is required.
    pub audiences: Vec<String>,
    /// PEM CA certificate(s) to trust for the issuer's HTTPS; system roots when absent.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Dotted path of the groups claim, e.g. `groups` or `realm_access.roles`.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Accept OpenID Connect ID tokens too (default: only RFC 9068 access tokens).
    #[serde(default)]
    pub accept_id_tokens: bool,
    /// Leeway for `exp`, `nbf` and `iat` (seconds).
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
    /// Scheduled discovery + JWKS refresh period (seconds).
    #[serde(default = "default_jwks_refresh_secs")]
    pub jwks_refresh_secs: u64,
    /// Least time between two JWKS refreshes caused by an unknown `kid` (seconds).
    #[serde(default = "default_unknown_kid_min_interval_secs")]
    pub unknown_kid_min_interval_secs: u64,
    /// RFC 7662 introspection for opaque (non-JWT) tokens.
    #[serde(default)]
    pub introspection: Option<IntrospectionConfig>,
    /// Allow a plain-HTTP issuer (never in production; explicit opt-in).
    #[serde(default)]
    pub allow_http: bool,
}

/// RFC 7662 token introspection for one issuer.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionConfig {
    /// Introspection endpoint; from the discovery document's `introspection_endpoint` if absent.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Client id used for HTTP Basic authentication at the endpoint.
    pub client_id: String,
    /// File holding the client secret (trailing whitespace is ignored).
    pub client_secret_file: PathBuf,
}

fn default_groups_claim() -> String {
    "groups".to_owned()
}
fn default_leeway_secs() -> u64 {
    60
}
fn default_jwks_refresh_secs() -> u64 {
    300
}
fn default_unknown_kid_min_interval_secs() -> u64 {
    30
}

impl IssuerConfig {
    /// A configuration with every optional setting at its default.
    pub fn new(issuer: impl Into<String>, audiences: Vec<String>) -> IssuerConfig {
        IssuerConfig {
            issuer: issuer.into(),
            audiences,
            ca_file: None,
            groups_claim: default_groups_claim(),
            accept_id_tokens: false,
            leeway_secs: default_leeway_secs(),
            jwks_refresh_secs: default_jwks_refresh_secs(),
            unknown_kid_min_interval_secs: default_unknown_kid_min_interval_secs(),
            introspection: None,
            allow_http: false,
        }
    }
}

/// A configuration the verifier cannot work with.
#[derive(Debug, thiserror::Error)]
pub enum OidcConfigError {
    #[error("no OIDC issuer configured")]
    NoIssuers,
    #[error("OIDC issuer {issuer:?}: {reason}")]
    Invalid { issuer: String, reason: String },
    #[error("OIDC issuer {issuer:?} is configured twice")]
    Duplicate { issuer: String },
    #[error("OIDC issuer {issuer:?}: cannot use {path}: {reason}")]
    File {
        issuer: String,
        path: PathBuf,
        reason: String,
    },
}

// ---------------------------------------------------------------------------------------------
// Results and errors
// ---------------------------------------------------------------------------------------------

/// What kind of token was verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// RFC 9068 JWT access token (`typ` `at+jwt`).
    AccessJwt,
    /// OpenID Connect ID token (only with `accept_id_tokens`).
    IdToken,
    /// Opaque token verified by RFC 7662 introspection.
    Opaque,
}

/// The identity carried by a valid token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VerifiedToken {
    /// The issuer (`iss`), exactly as configured.
    pub issuer: String,
    /// `sub` (for introspection, `sub`, else `username`, else `client_id`).
    pub subject: String,
    /// `client_id`, else `azp`.
    pub client_id: Option<String>,
    /// Values of the configured groups claim.
    pub groups: Vec<String>,
    /// `scope` (space separated), else `scp` (array or string).
    pub scopes: Vec<String>,
    pub kind: TokenKind,
    /// `exp` (seconds since the epoch).
    pub expires_at: Option<u64>,
    /// `jti`.
    pub token_id: Option<String>,
    /// `kid` of the key that verified the signature.
    pub key_id: Option<String>,
}

/// Why a token was refused. `Display` is for logs; [`TokenError::description`] for the client.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("signature algorithm not allowed: {0}")]
    AlgorithmNotAllowed(String),
    #[error("unknown issuer: {0}")]
    UnknownIssuer(String),
    #[error("unknown signing key: {0}")]
    UnknownKey(String),
    #[error("bad signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("wrong audience: {0}")]
    WrongAudience(String),
    #[error("wrong token type: {0}")]
    WrongType(String),
    #[error("token is not active")]
    Inactive,
    #[error("identity provider unavailable: {0}")]
    ProviderUnavailable(String),
}

impl TokenError {
    /// The `error` code for `WWW-Authenticate: Bearer` (RFC 6750; RFC 6749 for unavailability).
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::ProviderUnavailable(_) => "temporarily_unavailable",
            _ => "invalid_token",
        }
    }

    /// The HTTP status to answer with: 503 when the provider is unavailable, else 401.
    pub fn status(&self) -> http::StatusCode {
        match self {
            TokenError::ProviderUnavailable(_) => http::StatusCode::SERVICE_UNAVAILABLE,
            _ => http::StatusCode::UNAUTHORIZED,
        }
    }

    /// A short description, safe to send to the client (no secrets, no quotes or controls).
    pub fn description(&self) -> String {
        let text = match self {
            TokenError::ProviderUnavailable(_) => {
                "the identity provider is unavailable, retry later".to_owned()
            }
            TokenError::UnknownIssuer(_) => "the token issuer is not trusted".to_owned(),
            other => other.to_string(),
        };
        clean(&text, 160)
    }
}

/// Keeps printable ASCII other than `"` and `\`, up to `max` characters: attacker-controlled
/// strings end up in logs and in a quoted-string of `WWW-Authenticate`.
fn clean(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .filter(|c| (c.is_ascii_graphic() || *c == ' ') && *c != '"' && *c != '\\')
        .take(max)
        .collect();
    if s.chars().count() > max {
        out.push_str("...");
    }
    out
}

/// Sanitized short form of an attacker-controlled value, for error messages.
fn shown(s: &str) -> String {
    clean(s, 64)
}

// ---------------------------------------------------------------------------------------------
// HTTP client (openidconnect's AsyncHttpClient over hyper + tokio-rustls)
// ---------------------------------------------------------------------------------------------

/// An HTTP failure talking to a provider.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct FetchError(String);

impl FetchError {
    fn new(what: &str, e: impl fmt::Display) -> FetchError {
        FetchError(format!("{what}: {e}"))
    }
}

/// One connection per exchange: providers are contacted rarely (discovery, JWKS, and
/// introspection of tokens not yet cached), so pooling is not worth its state.
#[derive(Clone)]
struct HttpFetcher {
    tls: tokio_rustls::TlsConnector,
    allow_http: bool,
    timeout: Duration,
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl<'c> AsyncHttpClient<'c> for HttpFetcher {
    type Error = FetchError;
    type Future = BoxFuture<'c, Result<HttpResponse, FetchError>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(self.execute(request))
    }
}

/// Aborts the connection task when the exchange ends (or is cancelled by the timeout).
struct AbortOnDrop(JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The system's root certificates, loaded once.
fn native_roots() -> &'static rustls::RootCertStore {
    static ROOTS: std::sync::OnceLock<rustls::RootCertStore> = std::sync::OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            tracing::warn!("no system root certificates found; HTTPS issuers will fail");
        }
        roots
    })
}

impl HttpFetcher {
    fn new(ca_file: Option<&Path>, allow_http: bool) -> Result<HttpFetcher, String> {
        let mut roots = rustls::RootCertStore::empty();
        match ca_file {
            Some(path) => {
                use rustls_pki_types::pem::PemObject as _;
                let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
                    .map_err(|e| e.to_string())?;
                for cert in certs {
                    let cert = cert.map_err(|e| e.to_string())?;
                    roots.add(cert).map_err(|e| e.to_string())?;
                }
                if roots.is_empty() {
                    return Err("no certificate in the file".to_owned());
                }
            }
            None => roots = native_roots().clone(),
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(HttpFetcher {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            allow_http,
            timeout: HTTP_TIMEOUT,
        })
    }

    async fn execute(&self, request: HttpRequest) -> Result<HttpResponse, FetchError> {
        match tokio::time::timeout(self.timeout, self.exchange(request)).await {
            Ok(result) => result,
            Err(_) => Err(FetchError("request timed out".to_owned())),
        }
    }

    async fn exchange(&self, request: HttpRequest) -> Result<HttpResponse, FetchError> {
        let (mut parts, body) = request.into_parts();
        let uri = parts.uri.clone();
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") if self.allow_http => false,
            Some("http") => {
                return Err(FetchError(format!(
                    "refusing plain HTTP to {uri} (allow_http is off)"
                )));
            }
            _ => return Err(FetchError(format!("unsupported URL {uri}"))),
        };
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| FetchError(format!("URL without host: {uri}")))?;
        if authority.as_str().contains('@') {
            return Err(FetchError("URL with credentials refused".to_owned()));
        }
        let host = authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .to_owned();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        parts.uri = path
            .parse()
            .map_err(|e| FetchError::new("bad request path", e))?;
        let host_header = HeaderValue::from_str(authority.as_str())
            .map_err(|e| FetchError::new("bad host", e))?;
        parts.headers.insert(HOST, host_header);
        parts
            .headers
            .insert(USER_AGENT, HeaderValue::from_static("interceptor-oidc"));
        parts
            .headers
            .insert(CONNECTION, HeaderValue::from_static("close"));
        let request = http::Request::from_parts(parts, Full::new(Bytes::from(body)));

        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| FetchError::new(&format!("connect to {authority}"), e))?;
        let _ = tcp.set_nodelay(true);
        if https {
            let name = rustls_pki_types::ServerName::try_from(host)
                .map_err(|e| FetchError::new("bad server name", e))?;
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| FetchError::new(&format!("TLS with {authority}"), e))?;
            send(TokioIo::new(tls), request).await
        } else {
            send(TokioIo::new(tcp), request).await
        }
    }
}

async fn send<I>(io: I, request: http::Request<Full<Bytes>>) -> Result<HttpResponse, FetchError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| FetchError::new("HTTP handshake", e))?;
    let _driver = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| FetchError::new("HTTP request", e))?;
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, MAX_RESPONSE_LEN)
        .collect()
        .await
        .map_err(|e| FetchError::new("HTTP response body", e))?
        .to_bytes();
    Ok(http::Response::from_parts(parts, body.to_vec()))
}

// ---------------------------------------------------------------------------------------------
// Provider state
// ---------------------------------------------------------------------------------------------

/// Discovery fields beyond OpenID Connect Core that the verifier uses.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
struct ExtraMetadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    introspection_endpoint: Option<String>,
}
impl AdditionalProviderMetadata for ExtraMetadata {}

type Metadata = ProviderMetadata<
    ExtraMetadata,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

/// A usable public signing key, with the JWK parameters the algorithm checks need.
#[derive(Clone, Debug)]
struct KeyEntry {
    jwk: CoreJsonWebKey,
    kid: Option<String>,
    kty: String,
    crv: Option<String>,
    alg: Option<String>,
}

#[derive(Default)]
struct ProviderState {
    /// None until the first successful fetch; then never emptied (cached keys keep working
    /// while the provider is down).
    keys: Option<Arc<Vec<KeyEntry>>>,
    jwks_uri: Option<JsonWebKeySetUrl>,
    introspection_endpoint: Option<String>,
    /// Incremented on every successful key fetch.
    generation: u64,
    last_error: Option<String>,
}

#[derive(Default)]
struct RateLimits {
    /// Last refresh caused by an unknown `kid` (keys already known).
    unknown_kid: Option<Instant>,
    /// Last on-demand fetch while no keys were known yet.
    initial: Option<Instant>,
}

struct CachedIntrospection {
    claims: Map<String, Value>,
    until: u64,
}

struct Issuer {
    cfg: IssuerConfig,
    client: HttpFetcher,
    issuer_url: IssuerUrl,
    introspection_secret: Option<String>,
    state: RwLock<ProviderState>,
    refresh_lock: tokio::sync::Mutex<()>,
    limits: Mutex<RateLimits>,
    introspection_cache: Mutex<HashMap<[u8; 32], CachedIntrospection>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

enum Refresh {
    Done,
    RateLimited,
    Failed(String),
}

impl Issuer {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, ProviderState> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, ProviderState> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Fetches discovery (when `full`, or when the JWKS location is not known yet) and the JWKS.
    /// Callers hold `refresh_lock`.
    async fn refresh(&self, full: bool) -> Result<(), String> {
        let known = if full {
            None
        } else {
            self.read().jwks_uri.clone()
        };
        let result = match known {
            Some(jwks_uri) => {
                match JsonWebKeySet::<CoreJsonWebKey>::fetch_async(&jwks_uri, &self.client).await {
                    Ok(jwks) => Ok((jwks, jwks_uri, None)),
                    Err(e) => Err(format!("JWKS {}: {}", jwks_uri.as_str(), error_chain(&e))),
                }
            }
            None => Metadata::discover_async(self.issuer_url.clone(), &self.client)
                .await
                .map(|md| {
                    let introspection = md.additional_metadata().introspection_endpoint.clone();
                    (
                        md.jwks().clone(),
                        md.jwks_uri().clone(),
                        Some(introspection),
                    )
                })
                .map_err(|e| format!("discovery: {}", error_chain(&e))),
        };
        let outcome = result.and_then(|(jwks, jwks_uri, introspection)| {
            let keys = usable_keys(&jwks, &self.cfg.issuer);
            if keys.is_empty() {
                Err("the JWKS has no usable signing key".to_owned())
            } else {
                Ok((keys, jwks_uri, introspection))
            }
        });
        let mut st = self.write();
        match outcome {
            Ok((keys, jwks_uri, introspection)) => {
                tracing::debug!(issuer = %self.cfg.issuer, keys = keys.len(), "OIDC keys loaded");
                st.keys = Some(Arc::new(keys));
                st.jwks_uri = Some(jwks_uri);
                if let Some(introspection) = introspection {
                    st.introspection_endpoint = introspection;
                }
                st.generation = st.generation.wrapping_add(1);
                st.last_error = None;
                Ok(())
            }
            Err(e) => {
                st.last_error = Some(e.clone());
                Err(e)
            }
        }
    }

    /// A refresh triggered by a request (unknown `kid`, or no keys yet), rate limited.
    /// `seen_generation` is the key generation the caller looked at: if another task refreshed
    /// since, no new fetch is made.
    async fn refresh_on_demand(&self, seen_generation: u64) -> Refresh {
        let _guard = self.refresh_lock.lock().await;
        let (generation, loaded) = {
            let st = self.read();
            (st.generation, st.keys.is_some())
        };
        if generation != seen_generation {
            return Refresh::Done;
        }
        {
            let min = Duration::from_secs(self.cfg.unknown_kid_min_interval_secs);
            let mut limits = lock(&self.limits);
            let slot = if loaded {
                &mut limits.unknown_kid
            } else {
                &mut limits.initial
            };
            if slot.is_some_and(|t| t.elapsed() < min) {
                return Refresh::RateLimited;
            }
            *slot = Some(Instant::now());
        }
        match self.refresh(!loaded).await {
            Ok(()) => Refresh::Done,
            Err(e) => {
                tracing::warn!(issuer = %self.cfg.issuer, error = %e, "OIDC key refresh failed");
                Refresh::Failed(e)
            }
        }
    }

    /// Chooses the verification key for `alg` and `kid`, refreshing the key set once (rate
    /// limited) when no key matches.
    async fn select_key(&self, kid: Option<&str>, alg: Alg) -> Result<KeyEntry, TokenError> {
        let mut refreshed = false;
        loop {
            let (keys, generation) = {
                let st = self.read();
                (st.keys.clone(), st.generation)
            };
            if let Some(keys) = &keys {
                match pick_key(keys, kid, alg) {
                    Pick::Found(key) => return Ok(key.clone()),
                    Pick::Incompatible => {
                        return Err(TokenError::AlgorithmNotAllowed(format!(
                            "{} does not match key {}",
                            alg.name(),
                            shown(kid.unwrap_or("(no kid)"))
                        )));
                    }
                    Pick::Ambiguous => {
                        return Err(TokenError::UnknownKey(
                            "several keys match and the token has no kid".to_owned(),
                        ));
                    }
                    Pick::Missing => {}
                }
            }
            if refreshed {
                return Err(missing_key(kid, keys.is_some()));
            }
            refreshed = true;
            match self.refresh_on_demand(generation).await {
                Refresh::Done => continue,
                Refresh::RateLimited => return Err(missing_key(kid, keys.is_some())),
                Refresh::Failed(e) => {
                    return Err(TokenError::ProviderUnavailable(format!(
                        "{}: {}",
                        self.cfg.issuer,
                        clean(&e, 200)
                    )));
                }
            }
        }
    }

    fn introspection_endpoint(&self) -> Option<String> {
        let configured = self.cfg.introspection.as_ref()?.endpoint.clone();
        configured.or_else(|| self.read().introspection_endpoint.clone())
    }

    /// RFC 7662 introspection of `token`; the response claims when `active` is true.
    async fn introspect(&self, token: &str) -> Result<Map<String, Value>, TokenError> {
        let (Some(cfg), Some(secret)) = (&self.cfg.introspection, &self.introspection_secret)
        else {
            return Err(TokenError::Malformed("not a JWT".to_owned()));
        };
        let mut endpoint = self.introspection_endpoint();
        if endpoint.is_none() && self.read().keys.is_none() {
            let generation = self.read().generation;
            if let Refresh::Failed(e) = self.refresh_on_demand(generation).await {
                return Err(TokenError::ProviderUnavailable(format!(
                    "{}: {}",
                    self.cfg.issuer,
                    clean(&e, 200)
                )));
            }
            endpoint = self.introspection_endpoint();
        }
        let Some(endpoint) = endpoint else {
            return Err(TokenError::ProviderUnavailable(format!(
                "{}: no introspection endpoint known",
                self.cfg.issuer
            )));
        };
        let credentials = format!("{}:{}", form_encode(&cfg.client_id), form_encode(secret));
        let body = format!("token={}&token_type_hint=access_token", form_encode(token));
        let unavailable = |e: String| {
            TokenError::ProviderUnavailable(format!(
                "{} introspection: {}",
                self.cfg.issuer,
                clean(&e, 200)
            ))
        };
        let request = http::Request::builder()
            .method(http::Method::POST)
            .uri(endpoint.as_str())
            .header(
                AUTHORIZATION,
                format!("Basic {}", STANDARD.encode(credentials)),
            )
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json")
            .body(body.into_bytes())
            .map_err(|e| unavailable(e.to_string()))?;
        let response = self
            .client
            .execute(request)
            .await
            .map_err(|e| unavailable(e.0))?;
        if response.status() != http::StatusCode::OK {
            return Err(unavailable(format!("HTTP status {}", response.status())));
        }
        let claims: Map<String, Value> = serde_json::from_slice(response.body())
            .map_err(|e| unavailable(format!("bad JSON: {e}")))?;
        match claims.get("active") {
            Some(Value::Bool(true)) => Ok(claims),
            _ => Err(TokenError::Inactive),
        }
    }

    fn cache_get(&self, key: &[u8; 32], now: u64) -> Option<Map<String, Value>> {
        let mut cache = lock(&self.introspection_cache);
        match cache.get(key) {
            Some(entry) if entry.until > now => Some(entry.claims.clone()),
            Some(_) => {
                cache.remove(key);
                None
            }
            None => None,
        }
    }

    fn cache_put(&self, key: [u8; 32], claims: Map<String, Value>, now: u64) {
        let until = match claim_u64(&claims, "exp") {
            Ok(Some(exp)) => exp,
            _ => now.saturating_add(INTROSPECTION_NO_EXP_TTL),
        };
        if until <= now {
            return;
        }
        let mut cache = lock(&self.introspection_cache);
        if cache.len() >= INTROSPECTION_CACHE_MAX {
            cache.retain(|_, e| e.until > now);
            if cache.len() >= INTROSPECTION_CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(key, CachedIntrospection { claims, until });
    }
}

fn missing_key(kid: Option<&str>, loaded: bool) -> TokenError {
    if !loaded {
        return TokenError::ProviderUnavailable("signing keys not loaded yet".to_owned());
    }
    match kid {
        Some(kid) => TokenError::UnknownKey(format!("kid {}", shown(kid))),
        None => TokenError::UnknownKey("no key for the algorithm".to_owned()),
    }
}

/// `e` and its sources, for logs.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn form_encode(s: &str) -> String {
    openidconnect::url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Keeps the keys that can verify signatures: RSA (at least 2048 bits), EC and OKP keys whose
/// `use` (if any) is `sig`. Symmetric keys are never used.
fn usable_keys(jwks: &JsonWebKeySet<CoreJsonWebKey>, issuer: &str) -> Vec<KeyEntry> {
    jwks.keys()
        .iter()
        .filter_map(|jwk| {
            let v = serde_json::to_value(jwk).ok()?;
            let field = |name: &str| v.get(name).and_then(Value::as_str).map(str::to_owned);
            let kty = field("kty")?;
            if !matches!(kty.as_str(), "RSA" | "EC" | "OKP") {
                return None;
            }
            if field("use").is_some_and(|u| u != "sig") {
                return None;
            }
            if kty == "RSA" {
                let n = URL_SAFE_NO_PAD.decode(field("n")?).ok()?;
                let bits = modulus_bits(&n);
                if bits < MIN_RSA_BITS {
                    tracing::warn!(%issuer, kid = ?field("kid"), bits, "ignoring weak RSA key");
                    return None;
                }
            }
            Some(KeyEntry {
                jwk: jwk.clone(),
                kid: field("kid"),
                kty,
                crv: field("crv"),
                alg: field("alg"),
            })
        })
        .collect()
}

fn modulus_bits(n: &[u8]) -> usize {
    let n = match n.iter().position(|b| *b != 0) {
        Some(i) => &n[i..],
        None => return 0,
    };
    match n.first() {
        Some(first) => n.len() * 8 - first.leading_zeros() as usize,
        None => 0,
    }
}

enum Pick<'a> {
    Found(&'a KeyEntry),
    Missing,
    Incompatible,
    Ambiguous,
}

fn pick_key<'a>(keys: &'a [KeyEntry], kid: Option<&str>, alg: Alg) -> Pick<'a> {
    match kid {
        Some(kid) => {
            let mut named = keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid))
                .peekable();
            if named.peek().is_none() {
                return Pick::Missing;
            }
            match named.find(|k| alg.fits(k)) {
                Some(key) => Pick::Found(key),
                None => Pick::Incompatible,
            }
        }
        None => {
            let mut fitting = keys.iter().filter(|k| alg.fits(k));
            match (fitting.next(), fitting.next()) {
                (Some(key), None) => Pick::Found(key),
                (None, _) => Pick::Missing,
                (Some(_), Some(_)) => Pick::Ambiguous,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Algorithms
// ---------------------------------------------------------------------------------------------

/// The JWS algorithms accepted. `none`, HMAC and anything else are refused before any key is
/// looked at: a public key must never serve as an HMAC secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Alg {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    EdDsa,
}

impl Alg {
    fn parse(name: &str) -> Result<Alg, TokenError> {
        Ok(match name {
            "RS256" => Alg::Rs256,
            "RS384" => Alg::Rs384,
            "RS512" => Alg::Rs512,
            "PS256" => Alg::Ps256,
            "PS384" => Alg::Ps384,
            "PS512" => Alg::Ps512,
            "ES256" => Alg::Es256,
            "ES384" => Alg::Es384,
            "EdDSA" => Alg::EdDsa,
            other => return Err(TokenError::AlgorithmNotAllowed(shown(other))),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Rs384 => "RS384",
            Alg::Rs512 => "RS512",
            Alg::Ps256 => "PS256",
            Alg::Ps384 => "PS384",
            Alg::Ps512 => "PS512",
            Alg::Es256 => "ES256",
            Alg::Es384 => "ES384",
            Alg::EdDsa => "EdDSA",
        }
    }

    fn core(self) -> CoreJwsSigningAlgorithm {
        match self {
            Alg::Rs256 => CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
            Alg::Rs384 => CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
            Alg::Rs512 => CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
            Alg::Ps256 => CoreJwsSigningAlgorithm::RsaSsaPssSha256,
            Alg::Ps384 => CoreJwsSigningAlgorithm::RsaSsaPssSha384,
            Alg::Ps512 => CoreJwsSigningAlgorithm::RsaSsaPssSha512,
            Alg::Es256 => CoreJwsSigningAlgorithm::EcdsaP256Sha256,
            Alg::Es384 => CoreJwsSigningAlgorithm::EcdsaP384Sha384,
            Alg::EdDsa => CoreJwsSigningAlgorithm::EdDsa,
        }
    }

    /// Whether the key's type, curve and (if stated) algorithm allow this algorithm.
    fn fits(self, key: &KeyEntry) -> bool {
        let (kty, crv) = match self {
            Alg::Rs256 | Alg::Rs384 | Alg::Rs512 | Alg::Ps256 | Alg::Ps384 | Alg::Ps512 => {
                ("RSA", None)
            }
            Alg::Es256 => ("EC", Some("P-256")),
            Alg::Es384 => ("EC", Some("P-384")),
            Alg::EdDsa => ("OKP", Some("Ed25519")),
        };
        key.kty == kty
            && crv.is_none_or(|c| key.crv.as_deref() == Some(c))
            && key.alg.as_deref().is_none_or(|a| a == self.name())
    }
}

// ---------------------------------------------------------------------------------------------
// JWT parsing and claims
// ---------------------------------------------------------------------------------------------

struct Jwt<'a> {
    header: Map<String, Value>,
    claims: Map<String, Value>,
    signing_input: &'a str,
    signature: Vec<u8>,
}

fn b64_json(part: &str, what: &str) -> Result<Map<String, Value>, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed(format!("{what} is not base64url")))?;
    serde_json::from_slice(&bytes)
        .map_err(|_| TokenError::Malformed(format!("{what} is not a JSON object")))
}

/// Decodes the JOSE header only (the first of three parts), without trusting it.
fn jwt_header(token: &str) -> Result<Map<String, Value>, TokenError> {
    let mut parts = token.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(header), Some(_), Some(_), None) => b64_json(header, "header"),
        _ => Err(TokenError::Malformed("not a JWT (three parts)".to_owned())),
    }
}

fn parse_jwt(token: &str, header: Map<String, Value>) -> Result<(Jwt<'_>, Alg), TokenError> {
    if header.contains_key("crit") {
        return Err(TokenError::Malformed(
            "unsupported critical header parameters".to_owned(),
        ));
    }
    let alg = match header.get("alg") {
        Some(Value::String(alg)) => Alg::parse(alg)?,
        Some(_) => return Err(TokenError::Malformed("alg is not a string".to_owned())),
        None => return Err(TokenError::Malformed("no alg".to_owned())),
    };
    let (signing_input, signature) = token
        .rsplit_once('.')
        .ok_or_else(|| TokenError::Malformed("not a JWT".to_owned()))?;
    let payload = signing_input
        .split_once('.')
        .map(|(_, p)| p)
        .ok_or_else(|| TokenError::Malformed("not a JWT".to_owned()))?;
    let claims = b64_json(payload, "payload")?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| TokenError::Malformed("signature is not base64url".to_owned()))?;
    if signature.is_empty() {
        return Err(TokenError::Malformed("empty signature".to_owned()));
    }
    Ok((
        Jwt {
            header,
            claims,
            signing_input,
            signature,
        },
        alg,
    ))
}

fn claim_str<'a>(
    claims: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a str>, TokenError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(TokenError::Malformed(format!("{name} is not a string"))),
    }
}

/// A NumericDate claim (integer or non-negative finite number; fractions are dropped).
fn claim_u64(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, TokenError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(v) = n.as_u64() {
                Ok(Some(v))
            } else {
                match n.as_f64() {
                    Some(f) if f.is_finite() && f >= 0.0 => Ok(Some(f as u64)),
                    _ => Err(TokenError::Malformed(format!("{name} is not a valid time"))),
                }
            }
        }
        Some(_) => Err(TokenError::Malformed(format!("{name} is not a number"))),
    }
}

/// `aud`: a string or an array of strings.
fn audiences(claims: &Map<String, Value>) -> Result<Vec<String>, TokenError> {
    match claims.get("aud") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| TokenError::Malformed("aud holds a non-string".to_owned()))
            })
            .collect(),
        Some(_) => Err(TokenError::Malformed(
            "aud is not a string or array".to_owned(),
        )),
    }
}

/// Strings at a claim: an array (non-strings ignored) or a single string.
fn strings(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// The value at a dotted claim path. A top-level claim whose name is the whole path (such as
/// a namespaced `https://example.com/groups`) wins over the nested reading.
fn claim_path<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let mut segments = path.split('.');
    let mut current = claims.get(segments.next()?)?;
    for segment in segments {
        current = current.as_object()?.get(segment)?;
    }
    Some(current)
}

fn scopes(claims: &Map<String, Value>) -> Vec<String> {
    match claims.get("scope") {
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        Some(Value::Array(_)) => strings(claims.get("scope")),
        _ => match claims.get("scp") {
            Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
            other => strings(other),
        },
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `exp`, `nbf` and `iat` against now, with leeway.
fn check_times(
    claims: &Map<String, Value>,
    now: u64,
    leeway: u64,
    exp_required: bool,
) -> Result<Option<u64>, TokenError> {
    let exp = claim_u64(claims, "exp")?;
    match exp {
        Some(exp) if now >= exp.saturating_add(leeway) => return Err(TokenError::Expired),
        None if exp_required => return Err(TokenError::Malformed("no exp".to_owned())),
        _ => {}
    }
    if let Some(nbf) = claim_u64(claims, "nbf")? {
        if nbf > now.saturating_add(leeway) {
            return Err(TokenError::NotYetValid);
        }
    }
    if let Some(iat) = claim_u64(claims, "iat")? {
        if iat > now.saturating_add(leeway) {
            return Err(TokenError::NotYetValid);
        }
    }
    Ok(exp)
}

/// The protected resource must be served by this issuer and named in `aud`.
fn check_resource(cfg: &IssuerConfig, aud: &[String], resource: &str) -> Result<(), TokenError> {
    if !cfg.audiences.iter().any(|a| a == resource) {
        return Err(TokenError::WrongAudience(
            "the resource does not accept tokens of this issuer".to_owned(),
        ));
    }
    if !aud.iter().any(|a| a == resource) {
        return Err(TokenError::WrongAudience(
            "the token is not for this resource".to_owned(),
        ));
    }
    Ok(())
}

fn non_empty(s: Option<&str>) -> Option<String> {
    s.filter(|s| !s.is_empty()).map(str::to_owned)
}

fn identity(
    cfg: &IssuerConfig,
    claims: &Map<String, Value>,
    subject: String,
    kind: TokenKind,
    expires_at: Option<u64>,
    key_id: Option<String>,
) -> Result<VerifiedToken, TokenError> {
    let client_id = match non_empty(claim_str(claims, "client_id")?) {
        Some(id) => Some(id),
        None => non_empty(claim_str(claims, "azp")?),
    };
    Ok(VerifiedToken {
        issuer: cfg.issuer.clone(),
        subject,
        client_id,
        groups: strings(claim_path(claims, &cfg.groups_claim)),
        scopes: scopes(claims),
        kind,
        expires_at,
        token_id: non_empty(claim_str(claims, "jti")?),
        key_id,
    })
}

/// Claims of a JWT whose signature has been verified.
fn check_jwt_claims(
    cfg: &IssuerConfig,
    jwt: &Jwt<'_>,
    resource: &str,
    key_id: Option<String>,
    now: u64,
) -> Result<VerifiedToken, TokenError> {
    let typ = match jwt.header.get("typ") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) => Some(t.to_ascii_lowercase()),
        Some(_) => return Err(TokenError::Malformed("typ is not a string".to_owned())),
    };
    let kind = match typ.as_deref() {
        Some("at+jwt") | Some("application/at+jwt") => TokenKind::AccessJwt,
        None | Some("jwt") | Some("application/jwt") if cfg.accept_id_tokens => TokenKind::IdToken,
        Some(other) => {
            return Err(TokenError::WrongType(format!(
                "typ {} (expected at+jwt)",
                shown(other)
            )));
        }
        None => return Err(TokenError::WrongType("no typ (expected at+jwt)".to_owned())),
    };
    let expires_at = check_times(&jwt.claims, now, cfg.leeway_secs, true)?;
    let aud = audiences(&jwt.claims)?;
    match kind {
        TokenKind::IdToken => {
            if !aud.iter().any(|a| cfg.audiences.contains(a)) {
                return Err(TokenError::WrongAudience(
                    "the ID token is not for an accepted client".to_owned(),
                ));
            }
        }
        _ => check_resource(cfg, &aud, resource)?,
    }
    let subject = non_empty(claim_str(&jwt.claims, "sub")?)
        .ok_or_else(|| TokenError::Malformed("no sub".to_owned()))?;
    identity(cfg, &jwt.claims, subject, kind, expires_at, key_id)
}

/// Claims of an active introspection response.
fn check_introspection(
    cfg: &IssuerConfig,
    claims: &Map<String, Value>,
    resource: &str,
    now: u64,
) -> Result<VerifiedToken, TokenError> {
    if let Some(iss) = claim_str(claims, "iss")? {
        if iss != cfg.issuer {
            return Err(TokenError::UnknownIssuer(shown(iss)));
        }
    }
    let expires_at = check_times(claims, now, cfg.leeway_secs, false)?;
    check_resource(cfg, &audiences(claims)?, resource)?;
    let subject = match non_empty(claim_str(claims, "sub")?) {
        Some(s) => s,
        None => match non_empty(claim_str(claims, "username")?) {
            Some(s) => s,
            None => non_empty(claim_str(claims, "client_id")?)
                .ok_or_else(|| TokenError::Malformed("introspection gave no subject".to_owned()))?,
        },
    };
    identity(cfg, claims, subject, TokenKind::Opaque, expires_at, None)
}

/// RFC 6750 `b64token` characters: what an opaque token may be made of.
fn is_b64token(token: &str) -> bool {
    token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b))
}

// ---------------------------------------------------------------------------------------------
// Verifier
// ---------------------------------------------------------------------------------------------

/// Bound of the verified-token cache.
const VERIFIED_CACHE_MAX: usize = 16_384;

fn verified_key(token: &str, resource: &str) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(token.as_bytes());
    h.update([0u8]);
    h.update(resource.as_bytes());
    h.finalize().into()
}

struct Inner {
    issuers: Vec<Arc<Issuer>>,
    /// Verified JWTs by sha256(token, resource), until they expire: a token presented again
    /// (every request of a session) skips the signature check, which dominates the cost.
    verified: Mutex<HashMap<[u8; 32], VerifiedToken>>,
    started: AtomicBool,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
    }
}

/// Verifies bearer tokens against the configured issuers. Cheap to clone (shared state); the
/// background refresh tasks stop when the last clone is dropped.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("issuers", &self.authorization_servers())
            .finish()
    }
}

fn invalid(issuer: &str, reason: impl Into<String>) -> OidcConfigError {
    OidcConfigError::Invalid {
        issuer: issuer.to_owned(),
        reason: reason.into(),
    }
}

fn check_url(issuer: &str, what: &str, url: &str, allow_http: bool) -> Result<(), OidcConfigError> {
    let parsed = openidconnect::url::Url::parse(url)
        .map_err(|e| invalid(issuer, format!("{what} {url:?} is not a URL: {e}")))?;
    match parsed.scheme() {
        "https" => {}
        "http" if allow_http => {}
        "http" => {
            return Err(invalid(
                issuer,
                format!("{what} uses plain HTTP (set allow_http only for tests)"),
            ));
        }
        other => return Err(invalid(issuer, format!("{what} has scheme {other:?}"))),
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid(issuer, format!("{what} has no host")));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid(issuer, format!("{what} holds credentials")));
    }
    Ok(())
}

fn build_issuer(cfg: IssuerConfig) -> Result<Issuer, OidcConfigError> {
    let name = cfg.issuer.clone();
    check_url(&name, "issuer", &cfg.issuer, cfg.allow_http)?;
    let parsed =
        openidconnect::url::Url::parse(&cfg.issuer).map_err(|e| invalid(&name, e.to_string()))?;
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(invalid(&name, "issuer has a query or fragment"));
    }
    let issuer_url =
        IssuerUrl::new(cfg.issuer.clone()).map_err(|e| invalid(&name, e.to_string()))?;
    if cfg.audiences.is_empty() || cfg.audiences.iter().any(|a| a.trim().is_empty()) {
        return Err(invalid(
            &name,
            "at least one non-empty audience is required",
        ));
    }
    if cfg.groups_claim.is_empty() || cfg.groups_claim.split('.').any(str::is_empty) {
        return Err(invalid(&name, "groups_claim must be a dotted claim path"));
    }
    if cfg.leeway_secs > MAX_LEEWAY_SECS {
        return Err(invalid(
            &name,
            format!("leeway_secs must be at most {MAX_LEEWAY_SECS}"),
        ));
    }
    if cfg.jwks_refresh_secs == 0 {
        return Err(invalid(&name, "jwks_refresh_secs must be positive"));
    }
    let introspection_secret = match &cfg.introspection {
        None => None,
        Some(intro) => {
            if intro.client_id.is_empty() {
                return Err(invalid(&name, "introspection client_id is empty"));
            }
            if let Some(endpoint) = &intro.endpoint {
                check_url(&name, "introspection endpoint", endpoint, cfg.allow_http)?;
            }
            let secret = std::fs::read_to_string(&intro.client_secret_file).map_err(|e| {
                OidcConfigError::File {
                    issuer: name.clone(),
                    path: intro.client_secret_file.clone(),
                    reason: e.to_string(),
                }
            })?;
            let secret = secret.trim_end().to_owned();
            if secret.is_empty() {
                return Err(OidcConfigError::File {
                    issuer: name.clone(),
                    path: intro.client_secret_file.clone(),
                    reason: "empty client secret".to_owned(),
                });
            }
            Some(secret)
        }
    };
    let client = HttpFetcher::new(cfg.ca_file.as_deref(), cfg.allow_http).map_err(|reason| {
        OidcConfigError::File {
            issuer: name.clone(),
            path: cfg.ca_file.clone().unwrap_or_default(),
            reason,
        }
    })?;
    Ok(Issuer {
        cfg,
        client,
        issuer_url,
        introspection_secret,
        state: RwLock::new(ProviderState::default()),
        refresh_lock: tokio::sync::Mutex::new(()),
        limits: Mutex::new(RateLimits::default()),
        introspection_cache: Mutex::new(HashMap::new()),
    })
}

/// Background discovery + JWKS refresh of one issuer: on schedule after a success, with
/// exponential backoff after a failure. Ends when the verifier is dropped.
async fn refresh_loop(issuer: Weak<Issuer>) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let Some(strong) = issuer.upgrade() else {
            return;
        };
        let result = {
            let _guard = strong.refresh_lock.lock().await;
            strong.refresh(true).await
        };
        let period = Duration::from_secs(strong.cfg.jwks_refresh_secs);
        let delay = match result {
            Ok(()) => {
                backoff = Duration::from_secs(1);
                period
            }
            Err(e) => {
                let cached = strong.read().keys.is_some();
                tracing::warn!(
                    issuer = %strong.cfg.issuer, error = %e, cached_keys = cached,
                    retry_in = ?backoff, "OIDC provider refresh failed"
                );
                let delay = backoff;
                backoff = (backoff * 2).min(period.min(Duration::from_secs(60)));
                delay
            }
        };
        drop(strong);
        tokio::time::sleep(delay).await;
    }
}

impl Verifier {
    /// Checks the configuration, reads CA and secret files; no network yet.
    pub fn new(issuers: Vec<IssuerConfig>) -> Result<Verifier, OidcConfigError> {
        if issuers.is_empty() {
            return Err(OidcConfigError::NoIssuers);
        }
        let mut built: Vec<Arc<Issuer>> = Vec::with_capacity(issuers.len());
        for cfg in issuers {
            if built.iter().any(|i| i.cfg.issuer == cfg.issuer) {
                return Err(OidcConfigError::Duplicate { issuer: cfg.issuer });
            }
            built.push(Arc::new(build_issuer(cfg)?));
        }
        Ok(Verifier {
            inner: Arc::new(Inner {
                issuers: built,
                verified: Mutex::new(HashMap::new()),
                started: AtomicBool::new(false),
                tasks: Mutex::new(Vec::new()),
            }),
        })
    }

    /// Spawns the discovery + JWKS refresh task of every issuer (once; needs a tokio runtime).
    /// A provider that is down does not fail start-up: it is retried with backoff, and its
    /// tokens are refused with [`TokenError::ProviderUnavailable`] until its keys are known.
    pub fn start(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!("oidc::Verifier::start called outside a tokio runtime");
            return;
        };
        if self.inner.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let mut tasks = lock(&self.inner.tasks);
        for issuer in &self.inner.issuers {
            tasks.push(runtime.spawn(refresh_loop(Arc::downgrade(issuer))));
        }
    }

    /// Whether the signing keys of every issuer are known.
    pub fn ready(&self) -> bool {
        self.inner.issuers.iter().all(|i| i.read().keys.is_some())
    }

    /// The configured issuers, for the RFC 9728 protected resource metadata document.
    pub fn authorization_servers(&self) -> Vec<String> {
        self.inner
            .issuers
            .iter()
            .map(|i| i.cfg.issuer.clone())
            .collect()
    }

    /// Verifies a bearer token (without the `Bearer ` prefix) presented for `resource`.
    pub async fn verify(&self, token: &str, resource: &str) -> Result<VerifiedToken, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Malformed("empty token".to_owned()));
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed("token too long".to_owned()));
        }
        match jwt_header(token) {
            Ok(header) => {
                let key = verified_key(token, resource);
                let now = now_secs();
                if let Some(v) = lock(&self.inner.verified).get(&key)
                    && v.expires_at.is_some_and(|exp| now < exp)
                {
                    return Ok(v.clone());
                }
                let v = self.verify_jwt(token, header, resource).await?;
                if v.expires_at.is_some_and(|exp| now < exp) {
                    let mut cache = lock(&self.inner.verified);
                    if cache.len() >= VERIFIED_CACHE_MAX {
                        cache.retain(|_, t| t.expires_at.is_some_and(|exp| now < exp));
                        if cache.len() >= VERIFIED_CACHE_MAX {
                            cache.clear();
                        }
                    }
                    cache.insert(key, v.clone());
                }
                Ok(v)
            }
            Err(not_jwt) => {
                if self
                    .inner
                    .issuers
                    .iter()
                    .any(|i| i.introspection_secret.is_some())
                    && is_b64token(token)
                {
                    self.verify_opaque(token, resource).await
                } else {
                    Err(not_jwt)
                }
            }
        }
    }

    async fn verify_jwt(
        &self,
        token: &str,
        header: Map<String, Value>,
        resource: &str,
    ) -> Result<VerifiedToken, TokenError> {
        let (jwt, alg) = parse_jwt(token, header)?;
        let iss = claim_str(&jwt.claims, "iss")?
            .ok_or_else(|| TokenError::Malformed("no iss".to_owned()))?;
        let issuer = self
            .inner
            .issuers
            .iter()
            .find(|i| i.cfg.issuer == iss)
            .ok_or_else(|| TokenError::UnknownIssuer(shown(iss)))?;
        let kid = match jwt.header.get("kid") {
            None | Some(Value::Null) => None,
            Some(Value::String(kid)) => Some(kid.as_str()),
            Some(_) => return Err(TokenError::Malformed("kid is not a string".to_owned())),
        };
        let key = issuer.select_key(kid, alg).await?;
        key.jwk
            .verify_signature(&alg.core(), jwt.signing_input.as_bytes(), &jwt.signature)
            .map_err(|e| match e {
                SignatureVerificationError::CryptoError(_) => TokenError::BadSignature,
                other => {
                    tracing::debug!(issuer = %issuer.cfg.issuer, error = %other, "signature check failed");
                    TokenError::BadSignature
                }
            })?;
        let key_id = key.kid.clone().or_else(|| kid.map(str::to_owned));
        check_jwt_claims(&issuer.cfg, &jwt, resource, key_id, now_secs())
    }

    /// Opaque token: the (cached) introspection answer of the first issuer that knows it.
    async fn verify_opaque(
        &self,
        token: &str,
        resource: &str,
    ) -> Result<VerifiedToken, TokenError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut last = TokenError::Inactive;
        for issuer in self
            .inner
            .issuers
            .iter()
            .filter(|i| i.introspection_secret.is_some())
        {
            let now = now_secs();
            if let Some(claims) = issuer.cache_get(&key, now) {
                return check_introspection(&issuer.cfg, &claims, resource, now);
            }
            match issuer.introspect(token).await {
                Ok(claims) => {
                    let now = now_secs();
                    let verified = check_introspection(&issuer.cfg, &claims, resource, now);
                    // Cache what the provider said even if this resource is not in `aud`:
                    // the checks are re-run on every hit.
                    if !matches!(
                        verified,
                        Err(TokenError::Expired
                            | TokenError::UnknownIssuer(_)
                            | TokenError::Malformed(_))
                    ) {
                        issuer.cache_put(key, claims, now);
                    }
                    return verified;
                }
                Err(TokenError::Inactive) => {}
                Err(e @ TokenError::ProviderUnavailable(_)) => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use proptest::prelude::*;
    use ring::rand::SystemRandom;
    use ring::signature::{self as sig, KeyPair as _};
    use serde_json::json;
    use std::convert::Infallible;

    /// Fixed 2048-bit test keys (PKCS#1 DER, base64): ring cannot generate RSA keys.
    const RSA1_PKCS1: &str = "MIIEogIBAAKCAQEA0iCli0fSKqTW/CC8VNpnW1GpS4mELxOLJyCETBQ3jsCGZrFH4HyI8zBNCwQm2y77azyHCXTRlNUPgqCEe0D/lkgiLND/ulGjQLVYSSjiRt1wDOstzJE+RhVXc1rYzINsrqY+KoOCw3Lt+63cUfuaG7kin2WIW/593YAc2RtRM2nCsJ/asc3iYzUozNmw/SBRxiolAgj17YOCJvUudNyC+46k9iUUIEPVv21NO+OWL7ppESGz0oQLXtCtb6Du+253uUZtHf0RBK94xq5WcrbCwzjrN/iDRkObCRDEhEcqLg4GgsGaTdQT9KUEAWRmba39ctd1jQRgkeZJOFjqUdnaUQIDAQABAoIBAAJQGK4dBfds7jMg/T+Qp3YfKSdAiBSCCkM8n9LVnxEynk6AmPrF9CVqdB8sr9MR/9FTQd1jajieQ55obwmteMb/dYeB468+XYgWgZRNX3f40UU4/719IYQ/GbDSQry10LCIpOllfC4Ew4jVjoKjCZH7SFU+wRdARF2IwPd4AUX48oDibTjEf7i0vydpzSPJDOotBaBm8wka10k3zVNK7CIguryJo3UhoclueqtTYKwVCXD++KskT49JEkOwtVAov0tbM2DjJUceKpUoxJxVShv5nw4fX7Numwawiat+jVeMbfeTteeCQYtwVAS+xfV6BeIiQs/yHm+nNYFg5BXhe0kCgYEA7HPnyHPZ5YNxjs2JDOPmZCMLxQO2sfYxKXrvBZgh7yuDtEA3Uksb/0ljOf+GE57H8WUs5Y8Onbu6rEbHI86I8dsS4pZYd0qfzMcPtEUEtHCKHdYD3JyajgyRqlWlwNJOjEeLD/kUuX9OgFrf7lUoiEj1LT2qqevn5GmgKTml/u0CgYEA43+djCtux+NxRXR6Nt7gFX4vohlxYBC6S2bx0kLVxpojNwxQ3ZVQ6i6K7rd7GJnT6mS0CmA2I/P87qLzoLsx08No1QMS/jTz951h11DUKy/8+NcReI+9Zno4ZoeOXXs/d0uXxdZ+mplkSXiZQH3hzOHQuRzZ/G2ZSnG4Y3aKuHUCgYBK7QNyent+heNTDAA0rHbSHmTZXi7jP48ehMz+6dE+93v5fyvIkPJjN78Qns6+ot7auGO8rlNEWjtx4c+yofy1HuViFaAc1PHEMwPf7Mrr3ol1oN6CZsF257a00gT/D+VCAF2phxUxHo0ikSlKXYPFg9DlMBhHVfCaaXoN9i2KlQKBgFnB4uYHyNiCqxEtKH73pk+0jpSVFz9Auk+/mQ9NIU0PSW+Ro2IZZGhQ3q3apG2LW6nx+3rQhOvget2oWxkCYmFbisPoR5kWSV9br9uk32D+uP9w00rO43pIJHKHbysA0oR9xa7ftunGNWQrecORJwKP4ar3cCYBE+bkQUy023x1AoGAdbYwZ9H0ErUzFsSV9b7r83iV/oMb0IBkv8qf96+y2b8MT7ZUiRK2vh41l1kBP+WKKg8uERftEM6kTZQzrn1esTpn5iEDz2aeC4JsobJEMzU+9sPmM+v12b07sUt5SdvdT84xMkuiIMlC0UTCUMWZ1F0SYbLB3VnIPtFQranu620=";
    const RSA2_PKCS1: &str = "MIIEogIBAAKCAQEA5C33v3pycHAmMEGD2ohLzZS7E4dddBGh0zq4qyX2BEbxmhI+rXN8d//DsHrrPnppwLXFglk7yAy3ebChXSfjMzYeKgIoUxt7XxlxCZxSKfzSzWh7sF6Qa2KFEfNsGXsClBX+1rwIVH0+WIlU0UYkHl9LfmECltQMtHxZaeUHqdb8h8XK3mbEWN+mUB+faJtSNa2FgUsMy966DO/QZbk+kxoUXX8Pe0T8wYlkwY7Ny8wccC1BGkPcNF3I23BW4bAv7HnyND6Vm7PTAdYFKrZZtFaOHHWAR5jEQnNYVSa4f4OD4DsIBnzvCnk+Sz27Mn2DPaKzXaEIMhNzy6Uudjfi1QIDAQABAoH/eWx2rVQH1x7jK2k3z3Ji3CYCWztyplN2n1S+w/tlSu2SMhu4NrmhiNx/reo9YYooZznZod8z0ltj0aUikuPd2PcBvNsb21bCfuMRHXPC8B8yb/fGO+nt8Fuvzd+tW5CWDal+JgguwAQvEtnxj92k/VfthVkyvFnF3uAknE/YyjxVBKNh4eOaloRLPvChzoqfE6bjjfXYNIWLyS3tiHIPw2kpVUdSFkF6A/64MqBoTQnIhJyOgS7j1E8f6V5/sNXADmW7vTYR1JOWD0oJ9hxFtiA0op4vsl/Jro+kWdqCV4wA1hodYIvx4/W9seTXWRzq7UpMVGmXMsFp716cZAKxAoGBAPYkNt9RQDnPgetEXaZhDA+9YE/uUJ4Dt1A3Bv8yZLAkWd4ly0C0sfQ8jR5rGrBHEehSbxVMQFOtGF/EtAVRpsoYz0pg+2wz96Poy9+i0r6ZOJJ2e6KkiFtWzVlFnC6nRFeIFz0MChKTHdHdus2iCG7GdhkLVlZEy6fb6Km3GuT9AoGBAO1RlTyhWys/v0/IVs5UQ8Abh5Kq5oDYUZSoWxcAfMu5hbIzxferUSSOF3QqEzrPyaFrjaZI0/Jdb51C2SMNayLbuefGF87X6ZrhG4AM+FRvTfu1q05CINgiP9Z7DNZI5E8qFMqwfBlvDMXzCYEd4lVIHg5lW9yU8z842XwdSoi5AoGAZFyLyy60A15q2OT9UnPLmTdcZ/sCAAv/2MM3JSMFDxUjV4MNhwqmbLGr0LVXIn03/gRuqr52lCfGAnaP+IM8gLbw/qDgo1PlK34mcr9PMswC1yVccAqqVqPkAvxxHEyzfwVMhGW+TaiSxhmkq2fgDFr7mGaZA3/1kjIGgfzZCHkCgYEAmnH8uK+eIKBlBiwwaikmynBgI9B7IKEnPqLuXSLhFMiRPO86yDtDHJIoq13yk9TEuPvA/NXqsZGjYOovXAOQlOgArdkah2+2xSf4+LX4KyMg0k5hxRV+QIrRlukP6qkXhHmzfFGtAfRmkLDhn5juQmgjv2SxivWY9K0vxPlfF2kCgYEAsGTIhdYz9FKDQtbbni9JnVe1LM0f1PH9VtgcRpslClWbFDqnMnqdY2Vy2QSfDHE9HbDTYS74yz6Xs9bg9sDqBXBElH9jd/bExtmFWZMZf/Vr4nxJq+g8KoOPh3/yIzwv+BIX8VoxEsUxWJy5hMKTabzngIp4EIGTQWYDGbEnK0Y=";
    const RESOURCE: &str = "https://mcp.example.com/mcp";
    const OTHER_RESOURCE: &str = "https://other.example.com/mcp";

    fn b64(bytes: impl AsRef<[u8]>) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn now() -> u64 {
        now_secs()
    }

    // ---- keys and token minting -------------------------------------------------------------

    enum Signer {
        Rsa(sig::RsaKeyPair),
        Ec(sig::EcdsaKeyPair),
        Ed(sig::Ed25519KeyPair),
    }

    struct TestKey {
        kid: String,
        signer: Signer,
        alg: Option<&'static str>,
    }

    impl TestKey {
        fn rsa(kid: &str, pkcs1_b64: &str) -> TestKey {
            let der = STANDARD.decode(pkcs1_b64).unwrap();
            TestKey {
                kid: kid.to_owned(),
                signer: Signer::Rsa(sig::RsaKeyPair::from_der(&der).unwrap()),
                alg: None,
            }
        }
        fn ec(kid: &str) -> TestKey {
            let rng = SystemRandom::new();
            let alg = &sig::ECDSA_P256_SHA256_FIXED_SIGNING;
            let pkcs8 = sig::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
            TestKey {
                kid: kid.to_owned(),
                signer: Signer::Ec(
                    sig::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap(),
                ),
                alg: None,
            }
        }
        fn ed(kid: &str) -> TestKey {
            let pkcs8 = sig::Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
            TestKey {
                kid: kid.to_owned(),
                signer: Signer::Ed(sig::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()),
                alg: None,
            }
        }
        fn with_alg(mut self, alg: &'static str) -> TestKey {
            self.alg = Some(alg);
            self
        }
        fn jwk(&self) -> Value {
            let mut jwk = match &self.signer {
                Signer::Rsa(k) => {
                    let c = sig::RsaPublicKeyComponents::<Vec<u8>>::from(k.public());
                    json!({"kty": "RSA", "use": "sig", "n": b64(&c.n), "e": b64(&c.e)})
                }
                Signer::Ec(k) => {
                    let p = k.public_key().as_ref();
                    json!({"kty": "EC", "crv": "P-256", "x": b64(&p[1..33]), "y": b64(&p[33..65])})
                }
                Signer::Ed(k) => {
                    json!({"kty": "OKP", "crv": "Ed25519", "x": b64(k.public_key().as_ref())})
                }
            };
            jwk["kid"] = json!(self.kid);
            if let Some(alg) = self.alg {
                jwk["alg"] = json!(alg);
            }
            jwk
        }
        fn sign(&self, alg: &str, input: &[u8]) -> Vec<u8> {
            let rng = SystemRandom::new();
            match &self.signer {
                Signer::Rsa(k) => {
                    let encoding: &'static dyn sig::RsaEncoding = if alg.starts_with("PS") {
                        &sig::RSA_PSS_SHA256
                    } else {
                        &sig::RSA_PKCS1_SHA256
                    };
                    let mut out = vec![0; k.public().modulus_len()];
                    k.sign(encoding, &rng, input, &mut out).unwrap();
                    out
                }
                Signer::Ec(k) => k.sign(&rng, input).unwrap().as_ref().to_vec(),
                Signer::Ed(k) => k.sign(input).as_ref().to_vec(),
            }
        }
        fn default_alg(&self) -> &'static str {
            match self.signer {
                Signer::Rsa(_) => "RS256",
                Signer::Ec(_) => "ES256",
                Signer::Ed(_) => "EdDSA",
            }
        }
    }

    fn jwt_with(header: &Value, claims: &Value, key: &TestKey, alg: &str) -> String {
        let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
        let signature = key.sign(alg, input.as_bytes());
        format!("{input}.{}", b64(signature))
    }

    /// An RFC 9068 access token signed by `key` with its default algorithm.
    fn token(key: &TestKey, claims: &Value) -> String {
        token_alg(key, key.default_alg(), claims)
    }

    fn token_alg(key: &TestKey, alg: &str, claims: &Value) -> String {
        let header = json!({"alg": alg, "typ": "at+jwt", "kid": key.kid});
        jwt_with(&header, claims, key, alg)
    }

    fn claims(issuer: &str) -> Value {
        let now = now();
        json!({
            "iss": issuer, "sub": "alice", "aud": RESOURCE, "exp": now + 300, "iat": now,
            "nbf": now - 10, "client_id": "cli-1", "scope": "tools:read tools:call",
            "groups": ["dev", "ops"], "jti": "token-1"
        })
    }

    // ---- test identity provider -----------------------------------------------------------

    #[derive(Default)]
    struct IdpState {
        jwks: Value,
        jwks_fetches: usize,
        discovery_fetches: usize,
        introspection: HashMap<String, Value>,
        introspections: usize,
        last_auth: Option<String>,
    }

    struct TestIdp {
        issuer: String,
        state: Arc<Mutex<IdpState>>,
        task: JoinHandle<()>,
    }

    fn jwks(keys: &[&TestKey]) -> Value {
        json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()})
    }

    async fn handle(
        req: http::Request<Incoming>,
        state: Arc<Mutex<IdpState>>,
        issuer: String,
    ) -> Result<http::Response<Full<Bytes>>, Infallible> {
        let path = req.uri().path().to_owned();
        let auth = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let (status, doc) = {
            let mut st = lock(&state);
            match path.as_str() {
                "/.well-known/openid-configuration" => {
                    st.discovery_fetches += 1;
                    (
                        200,
                        json!({
                            "issuer": issuer,
                            "authorization_endpoint": format!("{issuer}/authorize"),
                            "token_endpoint": format!("{issuer}/token"),
                            "jwks_uri": format!("{issuer}/jwks"),
                            "introspection_endpoint": format!("{issuer}/introspect"),
                            "response_types_supported": ["code"],
                            "subject_types_supported": ["public"],
                            "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
                        }),
                    )
                }
                "/jwks" => {
                    st.jwks_fetches += 1;
                    (200, st.jwks.clone())
                }
                "/introspect" => {
                    st.introspections += 1;
                    st.last_auth = auth;
                    let token = openidconnect::url::form_urlencoded::parse(&body)
                        .find(|(k, _)| k == "token")
                        .map(|(_, v)| v.into_owned())
                        .unwrap_or_default();
                    let answer = st.introspection.get(&token).cloned();
                    (200, answer.unwrap_or_else(|| json!({"active": false})))
                }
                _ => (404, json!({})),
            }
        };
        Ok(http::Response::builder()
            .status(status)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(doc.to_string())))
            .unwrap())
    }

    impl TestIdp {
        async fn start(keys: &[&TestKey]) -> TestIdp {
            TestIdp::start_with(keys, None).await
        }

        async fn start_with(keys: &[&TestKey], tls: Option<Arc<rustls::ServerConfig>>) -> TestIdp {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let scheme = if tls.is_some() { "https" } else { "http" };
            let issuer = format!("{scheme}://127.0.0.1:{port}");
            let state = Arc::new(Mutex::new(IdpState {
                jwks: jwks(keys),
                ..IdpState::default()
            }));
            let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
            let (st, iss) = (state.clone(), issuer.clone());
            let task = tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let (st, iss, acceptor) = (st.clone(), iss.clone(), acceptor.clone());
                    tokio::spawn(async move {
                        let svc = service_fn(move |req| handle(req, st.clone(), iss.clone()));
                        let http = hyper::server::conn::http1::Builder::new();
                        match acceptor {
                            Some(acceptor) => {
                                if let Ok(tls) = acceptor.accept(stream).await {
                                    let _ = http.serve_connection(TokioIo::new(tls), svc).await;
                                }
                            }
                            None => {
                                let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                            }
                        }
                    });
                }
            });
            TestIdp {
                issuer,
                state,
                task,
            }
        }

        fn set_keys(&self, keys: &[&TestKey]) {
            lock(&self.state).jwks = jwks(keys);
        }
        fn jwks_fetches(&self) -> usize {
            lock(&self.state).jwks_fetches
        }
        fn introspections(&self) -> usize {
            lock(&self.state).introspections
        }
        fn set_introspection(&self, token: &str, answer: Value) {
            lock(&self.state)
                .introspection
                .insert(token.to_owned(), answer);
        }
        fn stop(&self) {
            self.task.abort();
        }
        fn config(&self) -> IssuerConfig {
            let mut cfg = IssuerConfig::new(self.issuer.clone(), vec![RESOURCE.to_owned()]);
            cfg.allow_http = self.issuer.starts_with("http:");
            cfg
        }
        fn verifier(&self) -> Verifier {
            Verifier::new(vec![self.config()]).unwrap()
        }
    }

    impl Drop for TestIdp {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    fn temp_file(name: &str, contents: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!(
            "interceptor-oidc-{}-{}-{name}",
            std::process::id(),
            now_nanos()
        ));
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn now_nanos() -> u128 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    }

    fn dead_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }

    // ---- valid tokens -----------------------------------------------------------------------

    #[tokio::test]
    async fn valid_access_tokens_of_every_algorithm() {
        let rsa = TestKey::rsa("rsa-1", RSA1_PKCS1);
        let ec = TestKey::ec("ec-1");
        let ed = TestKey::ed("ed-1");
        let idp = TestIdp::start(&[&rsa, &ec, &ed]).await;
        let v = idp.verifier();
        let c = claims(&idp.issuer);
        for (key, alg) in [
            (&rsa, "RS256"),
            (&rsa, "PS256"),
            (&ec, "ES256"),
            (&ed, "EdDSA"),
        ] {
            let t = v.verify(&token_alg(key, alg, &c), RESOURCE).await;
            let t = t.unwrap_or_else(|e| panic!("{alg}: {e}"));
            assert_eq!(t.issuer, idp.issuer);
            assert_eq!(t.subject, "alice");
            assert_eq!(t.client_id.as_deref(), Some("cli-1"));
            assert_eq!(t.groups, ["dev", "ops"]);
            assert_eq!(t.scopes, ["tools:read", "tools:call"]);
            assert_eq!(t.kind, TokenKind::AccessJwt);
            assert_eq!(t.expires_at, c["exp"].as_u64());
            assert_eq!(t.token_id.as_deref(), Some("token-1"));
            assert_eq!(t.key_id.as_deref(), Some(key.kid.as_str()));
        }
        assert!(v.ready());
        assert_eq!(v.authorization_servers(), vec![idp.issuer.clone()]);
        // The whole media type is accepted too, and aud may be an array; azp stands in for
        // client_id.
        let mut c2 = claims(&idp.issuer);
        c2["aud"] = json!([OTHER_RESOURCE, RESOURCE]);
        c2.as_object_mut().unwrap().remove("client_id");
        c2["azp"] = json!("cli-2");
        let header = json!({"alg": "ES256", "typ": "application/at+jwt", "kid": "ec-1"});
        let t = v
            .verify(&jwt_with(&header, &c2, &ec, "ES256"), RESOURCE)
            .await
            .unwrap();
        assert_eq!(t.client_id.as_deref(), Some("cli-2"));
    }

    #[tokio::test]
    async fn start_loads_keys_in_the_background() {
        let ec = TestKey::ec("ec-1");
        let idp = TestIdp::start(&[&ec]).await;
        let v = idp.verifier();
        assert!(!v.ready());
        v.start();
        v.start(); // idempotent
        for _ in 0..200 {
            if v.ready() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(v.ready());
        let fetches = idp.jwks_fetches();
        v.verify(&token(&ec, &claims(&idp.issuer)), RESOURCE)
            .await
            .unwrap();
        assert_eq!(idp.jwks_fetches(), fetches, "no fetch needed once loaded");
    }

    #[tokio::test]
    async fn https_issuer_with_private_ca() {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "interceptor test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &ca, &ca_key)
            .unwrap();
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
        let ec = TestKey::ec("ec-1");
        let idp = TestIdp::start_with(&[&ec], Some(Arc::new(server))).await;
        let ca_file = temp_file("ca.pem", &ca.pem());
        let mut cfg = idp.config();
        assert!(!cfg.allow_http);
        cfg.ca_file = Some(ca_file.clone());
        let v = Verifier::new(vec![cfg]).unwrap();
        let t = v.verify(&token(&ec, &claims(&idp.issuer)), RESOURCE).await;
        assert_eq!(t.unwrap().subject, "alice");

        // Without the private CA the provider's certificate is not trusted.
        let v = Verifier::new(vec![idp.config()]).unwrap();
        let err = v.verify(&token(&ec, &claims(&idp.issuer)), RESOURCE).await;
        assert!(
            matches!(err, Err(TokenError::ProviderUnavailable(_))),
            "{err:?}"
        );
        let _ = std::fs::remove_file(ca_file);
    }

    // ---- token types ------------------------------------------------------------------------

    #[tokio::test]
    async fn id_tokens_only_when_enabled() {
        let rsa = TestKey::rsa("rsa-1", RSA1_PKCS1);
        let idp = TestIdp::start(&[&rsa]).await;
        let mut c = claims(&idp.issuer);
        c["aud"] = json!("my-client");
        for typ in [Some("JWT"), None] {
            let mut header = json!({"alg": "RS256", "kid": "rsa-1"});
            if let Some(typ) = typ {
                header["typ"] = json!(typ);
            }
            let id_token = jwt_with(&header, &c, &rsa, "RS256");

            let strict = idp.verifier();
            let err = strict.verify(&id_token, RESOURCE).await;
            assert!(matches!(err, Err(TokenError::WrongType(_))), "{err:?}");

            let mut cfg = idp.config();
            cfg.accept_id_tokens = true;
            cfg.audiences.push("my-client".to_owned());
            let lenient = Verifier::new(vec![cfg]).unwrap();
            let t = lenient.verify(&id_token, RESOURCE).await.unwrap();
            assert_eq!(t.kind, TokenKind::IdToken);

            // An ID token for another client is refused even then.
            let mut other = c.clone();
            other["aud"] = json!("someone-else");
            let err = lenient
                .verify(&jwt_with(&header, &other, &rsa, "RS256"), RESOURCE)
                .await;
            assert!(matches!(err, Err(TokenError::WrongAudience(_))), "{err:?}");
        }
        // Other types are never accepted.
        let header = json!({"alg": "RS256", "kid": "rsa-1", "typ": "logout+jwt"});
        let err = idp
            .verifier()
            .verify(&jwt_with(&header, &c, &rsa, "RS256"), RESOURCE)
            .await;
        assert!(matches!(err, Err(TokenError::WrongType(_))), "{err:?}");
    }

    // ---- time -------------------------------------------------------------------------------

    #[tokio::test]
    async fn expiry_not_before_and_leeway() {
        let ec = TestKey::ec("ec-1");
        let idp = TestIdp::start(&[&ec]).await;
        let v = idp.verifier(); // leeway 60 s
        let now = now();
        let check = |exp: Option<u64>, nbf: Option<u64>, iat: Option<u64>| {
            let mut c = claims(&idp.issuer);
            let o = c.as_object_mut().unwrap();
            for (name, value) in [("exp", exp), ("nbf", nbf), ("iat", iat)] {
                match value {
                    Some(v) => o.insert(name.to_owned(), json!(v)),
                    None => o.remove(name),
                };
            }
            let v = v.clone();
            let t = token(&ec, &c);
            async move { v.verify(&t, RESOURCE).await }
        };
        assert_eq!(
            check(Some(now - 120), None, None).await,
            Err(TokenError::Expired)
        );
        assert!(
            check(Some(now - 30), None, None).await.is_ok(),
            "within leeway"
        );
        assert!(matches!(
            check(None, None, None).await,
            Err(TokenError::Malformed(_))
        ));
        assert_eq!(
            check(Some(now + 600), Some(now + 300), None).await,
            Err(TokenError::NotYetValid)
        );
        assert!(check(Some(now + 600), Some(now + 30), None).await.is_ok());
        assert_eq!(
            check(Some(now + 600), None, Some(now + 300)).await,
            Err(TokenError::NotYetValid)
        );

        let mut cfg = idp.config();
        cfg.leeway_secs = 0;
        let strict = Verifier::new(vec![cfg]).unwrap();
        let mut c = claims(&idp.issuer);
        c["exp"] = json!(now - 30);
        assert_eq!(
            strict.verify(&token(&ec, &c), RESOURCE).await,
            Err(TokenError::Expired)
        );
        // Non-numeric times are malformed.
        c["exp"] = json!("tomorrow");
        let err = strict.verify(&token(&ec, &c), RESOURCE).await;
        assert!(matches!(err, Err(TokenError::Malformed(_))), "{err:?}");
    }

    // ---- audience and issuer ----------------------------------------------------------------

    #[tokio::test]
    async fn audience_and_resource() {
        let ec = TestKey::ec("ec-1");
        let idp = TestIdp::start(&[&ec]).await;
        let mut cfg = idp.config();
        cfg.audiences = vec![RESOURCE.to_owned(), OTHER_RESOURCE.to_owned()];
        let v = Verifier::new(vec![cfg]).unwrap();
        let mut c = claims(&idp.issuer);

        c["aud"] = json!("https://elsewhere.example.com/");
        let err = v.verify(&token(&ec, &c), RESOURCE).await;
        assert!(matches!(err, Err(TokenError::WrongAudience(_))), "{err:?}");

        // A token for another resource of the same issuer is not valid here.
        c["aud"] = json!(OTHER_RESOURCE);
        let t = token(&ec, &c);
        assert!(v.verify(&t, OTHER_RESOURCE).await.is_ok());
        let err = v.verify(&t, RESOURCE).await;
        assert!(matches!(err, Err(TokenError::WrongAudience(_))), "{err:?}");

        // The resource must be one this issuer serves, even if the token names it.
        c["aud"] = json!("https://third.example.com/mcp");
        let err = v
            .verify(&token(&ec, &c), "https://third.example.com/mcp")
            .await;
        assert!(matches!(err, Err(TokenError::WrongAudience(_))), "{err:?}");

        c.as_object_mut().unwrap().remove("aud");
        let err = v.verify(&token(&ec, &c), RESOURCE).await;
        assert!(matches!(err, Err(TokenError::WrongAudience(_))), "{err:?}");
    }

    #[tokio::test]
    async fn unknown_issuer_and_cross_issuer_keys() {
        let ec_a = TestKey::ec("ec-a");
        let ec_b = TestKey::ec("ec-b");
        let idp_a = TestIdp::start(&[&ec_a]).await;
        let idp_b = TestIdp::start(&[&ec_b]).await;
        let v = Verifier::new(vec![idp_a.config(), idp_b.config()]).unwrap();
        assert_eq!(
            v.authorization_servers(),
            vec![idp_a.issuer.clone(), idp_b.issuer.clone()]
        );
        assert!(
            v.verify(&token(&ec_a, &claims(&idp_a.issuer)), RESOURCE)
                .await
                .is_ok()
        );
        assert!(
            v.verify(&token(&ec_b, &claims(&idp_b.issuer)), RESOURCE)
                .await
                .is_ok()
        );

        let err = v
            .verify(&token(&ec_a, &claims("https://evil.example.com")), RESOURCE)
            .await;
        assert!(matches!(err, Err(TokenError::UnknownIssuer(_))), "{err:?}");
        assert_eq!(
            err.unwrap_err().description(),
            "the token issuer is not trusted"
        );

        // Claiming issuer A but signed with issuer B's key: only A's keys are consulted.
        let err = v
            .verify(&token(&ec_b, &claims(&idp_a.issuer)), RESOURCE)
            .await;
        assert!(matches!(err, Err(TokenError::UnknownKey(_))), "{err:?}");
    }

    // ---- signatures and algorithms ----------------------------------------------------------

    #[tokio::test]
    async fn foreign_key_and_tampering() {
        let rsa = TestKey::rsa("rsa-1", RSA1_PKCS1);
        let ec = TestKey::ec("ec-1");
        let idp = TestIdp::start(&[&rsa, &ec]).await;
        let v = idp.verifier();
        let c = claims(&idp.issuer);

        // Same kid, different key.
        let forged_rsa = TestKey::rsa("rsa-1", RSA2_PKCS1);
        assert_eq!(
            v.verify(&token(&forged_rsa, &c), RESOURCE).await,
            Err(TokenError::BadSignature)
        );
        let forged_ec = TestKey::ec("ec-1");
        assert_eq!(
            v.verify(&token(&forged_ec, &c), RESOURCE).await,
            Err(TokenError::BadSignature)
        );

        // Tampered payload.
        let good = token(&ec, &c);
        let mut parts: Vec<&str> = good.split('.').collect();
        let mut evil = c.clone();
        evil["sub"] = json!("root");
        let evil_payload = b64(evil.to_string());
        parts[1] = &evil_payload;
        assert_eq!(
            v.verify(&parts.join("."), RESOURCE).await,
            Err(TokenError::BadSignature)
        );

        // Truncated signature.
        let sig_len = good.rsplit('.').next().unwrap().len();
        let truncated = &good[..good.len() - sig_len / 2];
        let err = v.verify(truncated, RESOURCE).await;
        assert!(
            matches!(
                err,
                Err(TokenError::BadSignature | TokenError::Malformed(_))
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn refused_algorithms() {
        let rsa = TestKey::rsa("rsa-1", RSA1_PKCS1);
        let ec = TestKey::ec("ec-1");
        let rs_only = TestKey::rsa("rsa-pinned", RSA2_PKCS1).with_alg("RS256");
        let idp = TestIdp::start(&[&rsa, &ec, &rs_only]).await;
        let v = idp.verifier();
        let c = claims(&idp.issuer);
        let payload = b64(c.to_string());

        // alg none, with and without a signature part, in any case.
        for alg in ["none", "None", "NONE"] {
            let header = b64(json!({"alg": alg, "typ": "at+jwt", "kid": "rsa-1"}).to_string());
            for t in [
                format!("{header}.{payload}."),
                format!("{header}.{payload}.AAAA"),
            ] {
                let err = v.verify(&t, RESOURCE).await;
                assert!(
                    matches!(err, Err(TokenError::AlgorithmNotAllowed(_))),
                    "{alg}: {err:?}"
                );
            }
        }

        // HS256 keyed with the public key (as JWK members, JSON and raw modulus): the classic
        // key confusion attack.
        let jwk = rsa.jwk();
        let n = URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap();
        for (alg, hmac_alg) in [
            ("HS256", ring::hmac::HMAC_SHA256),
            ("HS384", ring::hmac::HMAC_SHA384),
            ("HS512", ring::hmac::HMAC_SHA512),
        ] {
            for secret in [n.clone(), jwk.to_string().into_bytes()] {
                let header = b64(json!({"alg": alg, "typ": "at+jwt", "kid": "rsa-1"}).to_string());
                let input = format!("{header}.{payload}");
                let key = ring::hmac::Key::new(hmac_alg, &secret);
                let mac = ring::hmac::sign(&key, input.as_bytes());
                let t = format!("{input}.{}", b64(mac.as_ref()));
                let err = v.verify(&t, RESOURCE).await;
                assert!(
                    matches!(err, Err(TokenError::AlgorithmNotAllowed(_))),
                    "{alg}: {err:?}"
                );
            }
        }

        // Algorithm / key type mismatches.
        let header = json!({"alg": "ES256", "typ": "at+jwt", "kid": "rsa-1"});
        let err = v
            .verify(&jwt_with(&header, &c, &ec, "ES256"), RESOURCE)
            .await;
        assert!(
            matches!(err, Err(TokenError::AlgorithmNotAllowed(_))),
            "{err:?}"
        );
        let header = json!({"alg": "RS256", "typ": "at+jwt", "kid": "ec-1"});
        let err = v
            .verify(&jwt_with(&header, &c, &rsa, "RS256"), RESOURCE)
            .await;
        assert!(
            matches!(err, Err(TokenError::AlgorithmNotAllowed(_))),
            "{err:?}"
        );
        let header = json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "ec-1"});
        let err = v
            .verify(&jwt_with(&header, &c, &ec, "ES256"), RESOURCE)
            .await;
        assert!(
            matches!(err, Err(TokenError::AlgorithmNotAllowed(_))),
            "{err:?}"
        );
        // The JWK's own alg binds it.
        assert!(
            v.verify(&token_alg(&rs_only, "RS256", &c), RESOURCE)
                .await
                .is_ok()
        );
        let err = v.verify(&token_alg(&rs_only, "PS256", &c), RESOURCE).await;
        assert!(
            matches!(err, Err(TokenError::AlgorithmNotAllowed(_))),
            "{err:?}"
        );
        // Unsupported or unknown algorithms.
        for alg in ["ES512", "RSA-OAEP", "XYZ", ""] {
            let header = b64(json!({"alg": alg, "typ": "at+jwt"}).to_string());
            let err = v
                .verify(&format!("{header}.{payload}.AAAA"), RESOURCE)
                .await;
            assert!(
                matches!(err, Err(TokenError::AlgorithmNotAllowed(_))),
                "{alg}: {err:?}"
            );
        }
        // crit is refused.
        let header = json!({"alg": "ES256", "typ": "at+jwt", "kid": "ec-1", "crit": ["exp"]});
        let err = v
            .verify(&jwt_with(&header, &c, &ec, "ES256"), RESOURCE)
            .await;
        assert!(matches!(err, Err(TokenError::Malformed(_))), "{err:?}");
    }

    #[tokio::test]
    async fn key_without_kid() {
        let rsa = TestKey::rsa("rsa-1", RSA1_PKCS1);
        let ec = TestKey::ec("ec-1");
        let idp = TestIdp::start(&[&rsa, &ec]).await;
        let v = idp.verifier();
        let c = claims(&idp.issuer);
        // Exactly one key of the right type: used.
        let header = json!({"alg": "ES256", "typ": "at+jwt"});
        let t = v
            .verify(&jwt_with(&header, &c, &ec, "ES256"), RESOURCE)
            .await
            .unwrap();
        assert_eq!(t.key_id.as_deref(), Some("ec-1"));
        // Two RSA keys: ambiguous.
        let rsa2 = TestKey::rsa("rsa-2", RSA2_PKCS1);
        idp.set_keys(&[&rsa, &rsa2]);
        let v = idp.verifier();
        let header = json!({"alg": "RS256", "typ": "at+jwt"});
        let err = v
            .verify(&jwt_with(&header, &c, &rsa, "RS256"), RESOURCE)
            .await;
        assert!(matches!(err, Err(TokenError::UnknownKey(_))), "{err:?}");
    }

    // ---- key refresh ------------------------------------------------------------------------

    #[tokio::test]
    async fn unknown_kid_refresh_picks_up_rotated_key() {
        let old = TestKey::ec("2024");
        let idp = TestIdp::start(&[&old]).await;
        let v = idp.verifier();
        let c = claims(&idp.issuer);
        v.verify(&token(&old, &c), RESOURCE).await.unwrap();
        let fetches = idp.jwks_fetches();

        let new = TestKey::ed("2025");
        idp.set_keys(&[&old, &new]);
        let t = v.verify(&token(&new, &c), RESOURCE).await.unwrap();
        assert_eq!(t.key_id.as_deref(), Some("2025"));
        assert_eq!(idp.jwks_fetches(), fetches + 1);
        // Both keys keep working without further fetches.
        v.verify(&token(&old, &c), RESOURCE).await.unwrap();
        v.verify(&token(&new, &c), RESOURCE).await.unwrap();
        assert_eq!(idp.jwks_fetches(), fetches + 1);
    }

    #[tokio::test]
    async fn unknown_kid_refresh_is_rate_limited() {
        let ec = TestKey::ec("ec-1");
        let idp = TestIdp::start(&[&ec]).await;
        let v = idp.verifier(); // 30 s between unknown-kid refreshes
        let c = claims(&idp.issuer);
        v.verify(&token(&ec, &c), RESOURCE).await.unwrap();
        let fetches = idp.jwks_fetches();
        for i in 0..20 {
            let stranger = TestKey::ec(&format!("unknown-{i}"));
            let err = v.verify(&token(&stranger, &c), RESOURCE).await;
            assert!(matches!(err, Err(TokenError::UnknownKey(_))), "{err:?}");
        }
        assert_eq!(idp.jwks_fetches(), fetches + 1, "one refresh per interval");

        // Concurrent unknown kids share one refresh too.
        let mut cfg = idp.config();
        cfg.unknown_kid_min_interval_secs = 3600;
        let v = Verifier::new(vec![cfg]).unwrap();
        v.verify(&token(&ec, &c), RESOURCE).await.unwrap();
        let fetches = idp.jwks_fetches();
        let stranger = TestKey::ec("unknown");
        let t = token(&stranger, &c);
        let results = futures_util::future::join_all((0..10).map(|_| v.verify(&t, RESOURCE))).await;
        assert!(
            results
                .iter()
                .all(|r| matches!(r, Err(TokenError::UnknownKey(_))))
        );
        assert_eq!(idp.jwks_fetches(), fetches + 1);
    }

    #[tokio::test]
    async fn cached_keys_survive_a_provider_outage() {
        let ec = TestKey::ec("ec-1");
        let idp = TestIdp::start(&[&ec]).await;
        let mut cfg = idp.config();
        cfg.unknown_kid_min_interval_secs = 0;
        let v = Verifier::new(vec![cfg]).unwrap();
        let c = claims(&idp.issuer);
        v.verify(&token(&ec, &c), RESOURCE).await.unwrap();
        idp.stop();
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Known key: still verifies.
        v.verify(&token(&ec, &c), RESOURCE).await.unwrap();
        // Unknown key: cannot be fetched.
        let stranger = TestKey::ec("new");
        let err = v.verify(&token(&stranger, &c), RESOURCE).await;
        assert!(
            matches!(
                err,
                Err(TokenError::UnknownKey(_) | TokenError::ProviderUnavailable(_))
            ),
            "{err:?}"
        );
        // Known key, still fine after the failed refresh.
        v.verify(&token(&ec, &c), RESOURCE).await.unwrap();
    }

    #[tokio::test]
    async fn provider_down_from_the_start() {
        let issuer = format!("http://127.0.0.1:{}", dead_port());
        let mut cfg = IssuerConfig::new(issuer.clone(), vec![RESOURCE.to_owned()]);
        cfg.allow_http = true;
        let v = Verifier::new(vec![cfg]).unwrap();
        v.start(); // must not fail
        let ec = TestKey::ec("ec-1");
        let err = v.verify(&token(&ec, &claims(&issuer)), RESOURCE).await;
        assert!(
            matches!(err, Err(TokenError::ProviderUnavailable(_))),
            "{err:?}"
        );
        let err = err.unwrap_err();
        assert_eq!(err.code(), "temporarily_unavailable");
        assert_eq!(err.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        // Rate limited: no new attempt, still unavailable.
        let err = v.verify(&token(&ec, &claims(&issuer)), RESOURCE).await;
        assert!(
            matches!(err, Err(TokenError::ProviderUnavailable(_))),
            "{err:?}"
        );
        assert!(!v.ready());
    }

    // ---- malformed input --------------------------------------------------------------------

    #[tokio::test]
    async fn malformed_tokens() {
        let ec = TestKey::ec("ec-1");
        let idp = TestIdp::start(&[&ec]).await;
        let v = idp.verifier();
        let c = claims(&idp.issuer);
        let good = token(&ec, &c);
        let (h, rest) = good.split_once('.').unwrap();
        let (p, s) = rest.split_once('.').unwrap();
        let json_b64 = |v: &str| b64(v.as_bytes());
        let cases: Vec<String> = vec![
            String::new(),
            "abc".into(),
            "a.b".into(),
            format!("{good}.extra"),
            "..".into(),
            format!("!!!.{p}.{s}"),
            format!("{h}.!!!.{s}"),
            format!("{h}.{p}.!!!"),
            format!("{}.{p}.{s}", json_b64("not json")),
            format!("{}.{p}.{s}", json_b64("[1,2]")),
            format!("{}.{p}.{s}", json_b64("{}")),
            format!("{}.{p}.{s}", json_b64(r#"{"alg":5}"#)),
            format!("{h}.{}.{s}", json_b64("not json")),
            format!("{h}.{}.{s}", json_b64("\"string\"")),
            format!("{h}=.{p}.{s}"),
            format!("{h}.{p}."),
            format!("{h}.{}.{s}", json_b64(r#"{"iss":5}"#)),
            format!("{}.{p}.{s}", json_b64(r#"{"alg":"ES256","kid":7}"#)),
            "é.é.é".into(),
            "x".repeat(MAX_TOKEN_LEN + 1),
        ];
        for case in cases {
            let err = v.verify(&case, RESOURCE).await;
            assert!(
                matches!(
                    err,
                    Err(TokenError::Malformed(_) | TokenError::BadSignature)
                ),
                "{:?}: {err:?}",
                &case[..case.len().min(40)]
            );
            let err = err.unwrap_err();
            assert_eq!(err.code(), "invalid_token");
            assert_eq!(err.status(), http::StatusCode::UNAUTHORIZED);
        }
        // Missing sub.
        let mut no_sub = c.clone();
        no_sub.as_object_mut().unwrap().remove("sub");
        let err = v.verify(&token(&ec, &no_sub), RESOURCE).await;
        assert!(matches!(err, Err(TokenError::Malformed(_))), "{err:?}");
    }

    #[test]
    fn descriptions_are_safe() {
        let err = TokenError::UnknownKey(format!("kid {}", shown("a\"b\\c\r\nd\u{7f}é")));
        let d = err.description();
        assert!(!d.contains(['"', '\\', '\r', '\n', '\u{7f}', 'é']), "{d}");
        let long = TokenError::AlgorithmNotAllowed(shown(&"A".repeat(1000)));
        assert!(long.description().len() < 200);
        let unavailable = TokenError::ProviderUnavailable("connect to 10.0.0.1: refused".into());
        assert!(!unavailable.description().contains("10.0.0.1"));
    }

    // ---- claims -----------------------------------------------------------------------------

    #[tokio::test]
    async fn groups_claim_paths_and_scopes() {
        let ec = TestKey::ec("ec-1");
        let idp = TestIdp::start(&[&ec]).await;
        let mut c = claims(&idp.issuer);
        c["realm_access"] = json!({"roles": ["admin", 7, "auditor"]});
        c["https://example.com/groups"] = json!("namespaced");
        c["single"] = json!({"group": "one"});
        c.as_object_mut().unwrap().remove("scope");
        c["scp"] = json!(["a", "b"]);
        let t = token(&ec, &c);
        for (path, expected) in [
            ("realm_access.roles", vec!["admin", "auditor"]),
            ("https://example.com/groups", vec!["namespaced"]),
            ("single.group", vec!["one"]),
            ("groups", vec!["dev", "ops"]),
            ("missing.path", vec![]),
            ("realm_access.roles.deeper", vec![]),
        ] {
            let mut cfg = idp.config();
            cfg.groups_claim = path.to_owned();
            let v = Verifier::new(vec![cfg]).unwrap();
            let verified = v.verify(&t, RESOURCE).await.unwrap();
            assert_eq!(verified.groups, expected, "{path}");
            assert_eq!(verified.scopes, ["a", "b"]);
        }
    }

    // ---- introspection ----------------------------------------------------------------------

    #[tokio::test]
    async fn introspection_of_opaque_tokens() {
        let ec = TestKey::ec("ec-1");
        let idp = TestIdp::start(&[&ec]).await;
        let secret = temp_file("secret", "s3cret:&=\n");
        let mut cfg = idp.config();
        cfg.introspection = Some(IntrospectionConfig {
            endpoint: None,
            client_id: "interceptor".to_owned(),
            client_secret_file: secret.clone(),
        });
        cfg.groups_claim = "roles".to_owned();
        let v = Verifier::new(vec![cfg]).unwrap();
        let now = now();
        idp.set_introspection(
            "opaque-good",
            json!({"active": true, "iss": idp.issuer, "sub": "bob", "aud": [RESOURCE],
                   "exp": now + 300, "client_id": "cli-9", "scope": "a b", "roles": ["r1"],
                   "jti": "op-1"}),
        );
        idp.set_introspection(
            "opaque-other",
            json!({"active": true, "sub": "bob", "aud": OTHER_RESOURCE, "exp": now + 300}),
        );
        idp.set_introspection(
            "opaque-old",
            json!({"active": true, "sub": "bob", "aud": RESOURCE, "exp": now - 600}),
        );
        idp.set_introspection(
            "opaque-foreign",
            json!({"active": true, "sub": "bob", "aud": RESOURCE, "iss": "https://evil"}),
        );
        idp.set_introspection("opaque-inactive", json!({"active": false, "sub": "bob"}));
        idp.set_introspection(
            "opaque-stringy",
            json!({"active": "true", "sub": "bob", "aud": RESOURCE}),
        );

        let t = v.verify("opaque-good", RESOURCE).await.unwrap();
        assert_eq!(t.kind, TokenKind::Opaque);
        assert_eq!(t.issuer, idp.issuer);
        assert_eq!(t.subject, "bob");
        assert_eq!(t.client_id.as_deref(), Some("cli-9"));
        assert_eq!(t.scopes, ["a", "b"]);
        assert_eq!(t.groups, ["r1"]);
        assert_eq!(t.expires_at, Some(now + 300));
        assert_eq!(t.token_id.as_deref(), Some("op-1"));
        let expected_auth = format!("Basic {}", STANDARD.encode("interceptor:s3cret%3A%26%3D"));
        assert_eq!(
            lock(&idp.state).last_auth.as_deref(),
            Some(expected_auth.as_str())
        );

        // Cached: no second call; the audience is still checked on a cache hit.
        let calls = idp.introspections();
        assert_eq!(
            v.verify("opaque-good", RESOURCE).await.unwrap().subject,
            "bob"
        );
        let err = v.verify("opaque-good", OTHER_RESOURCE).await;
        assert!(matches!(err, Err(TokenError::WrongAudience(_))), "{err:?}");
        assert_eq!(idp.introspections(), calls);

        assert_eq!(
            v.verify("opaque-inactive", RESOURCE).await,
            Err(TokenError::Inactive)
        );
        assert_eq!(
            v.verify("opaque-unknown", RESOURCE).await,
            Err(TokenError::Inactive)
        );
        assert_eq!(
            v.verify("opaque-stringy", RESOURCE).await,
            Err(TokenError::Inactive)
        );
        assert_eq!(
            v.verify("opaque-old", RESOURCE).await,
            Err(TokenError::Expired)
        );
        let err = v.verify("opaque-other", RESOURCE).await;
        assert!(matches!(err, Err(TokenError::WrongAudience(_))), "{err:?}");
        let err = v.verify("opaque-foreign", RESOURCE).await;
        assert!(matches!(err, Err(TokenError::UnknownIssuer(_))), "{err:?}");
        // Inactive answers are not cached.
        let calls = idp.introspections();
        assert_eq!(
            v.verify("opaque-inactive", RESOURCE).await,
            Err(TokenError::Inactive)
        );
        assert_eq!(idp.introspections(), calls + 1);
        // Not a b64token: never sent to the provider.
        let err = v.verify("has space", RESOURCE).await;
        assert!(matches!(err, Err(TokenError::Malformed(_))), "{err:?}");
        assert_eq!(idp.introspections(), calls + 1);
        // JWTs still go the JWT way.
        assert!(
            v.verify(&token(&ec, &claims(&idp.issuer)), RESOURCE)
                .await
                .is_ok()
        );

        // Provider down: unavailable, not inactive.
        idp.stop();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let err = v.verify("opaque-new", RESOURCE).await;
        assert!(
            matches!(err, Err(TokenError::ProviderUnavailable(_))),
            "{err:?}"
        );
        // Cached results survive.
        assert!(v.verify("opaque-good", RESOURCE).await.is_ok());
        let _ = std::fs::remove_file(secret);
    }

    // ---- configuration ----------------------------------------------------------------------

    #[test]
    fn configuration_checks() {
        let ok = |cfg: IssuerConfig| Verifier::new(vec![cfg]);
        let base = || {
            let mut cfg = IssuerConfig::new("http://127.0.0.1:1", vec![RESOURCE.to_owned()]);
            cfg.allow_http = true;
            cfg
        };
        assert!(ok(base()).is_ok());
        assert!(matches!(
            Verifier::new(vec![]),
            Err(OidcConfigError::NoIssuers)
        ));
        let mut c = base();
        c.allow_http = false;
        assert!(ok(c).is_err(), "plain HTTP needs allow_http");
        let mut c = base();
        c.audiences.clear();
        assert!(ok(c).is_err());
        let mut c = base();
        c.groups_claim = "a..b".into();
        assert!(ok(c).is_err());
        let mut c = base();
        c.issuer = "not a url".into();
        assert!(ok(c).is_err());
        let mut c = base();
        c.leeway_secs = 86400;
        assert!(ok(c).is_err());
        let mut c = base();
        c.ca_file = Some("/nonexistent/ca.pem".into());
        assert!(ok(c).is_err());
        let mut c = base();
        c.introspection = Some(IntrospectionConfig {
            endpoint: None,
            client_id: "x".into(),
            client_secret_file: "/nonexistent/secret".into(),
        });
        assert!(matches!(ok(c), Err(OidcConfigError::File { .. })));
        assert!(matches!(
            Verifier::new(vec![base(), base()]),
            Err(OidcConfigError::Duplicate { .. })
        ));

        // Serde defaults and strictness.
        let cfg: IssuerConfig = toml::from_str(
            "issuer = \"https://idp.example.com/realms/x\"\naudiences = [\"https://mcp\"]\n",
        )
        .unwrap();
        assert_eq!(
            cfg,
            IssuerConfig::new(
                "https://idp.example.com/realms/x",
                vec!["https://mcp".into()]
            )
        );
        assert_eq!(cfg.groups_claim, "groups");
        assert_eq!(
            (
                cfg.leeway_secs,
                cfg.jwks_refresh_secs,
                cfg.unknown_kid_min_interval_secs
            ),
            (60, 300, 30)
        );
        assert!(
            toml::from_str::<IssuerConfig>("issuer = \"https://a\"\naudiences = []\nbogus = 1\n")
                .is_err()
        );
        // No network before start: a verifier for an unreachable provider builds fine.
        assert!(Verifier::new(vec![cfg]).is_ok());
    }

    #[test]
    fn start_without_runtime_does_not_panic() {
        let mut cfg = IssuerConfig::new("http://127.0.0.1:1", vec![RESOURCE.to_owned()]);
        cfg.allow_http = true;
        Verifier::new(vec![cfg]).unwrap().start();
    }

    // ---- never panics -----------------------------------------------------------------------

    fn fuzz_secret() -> &'static PathBuf {
        static SECRET: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
        SECRET.get_or_init(|| temp_file("fuzz-secret", "s"))
    }

    fn fuzz_verifier() -> (Verifier, String) {
        let issuer = format!("http://127.0.0.1:{}", dead_port());
        let mut cfg = IssuerConfig::new(issuer.clone(), vec![RESOURCE.to_owned()]);
        cfg.allow_http = true;
        cfg.accept_id_tokens = true;
        cfg.introspection = Some(IntrospectionConfig {
            endpoint: Some(format!("{issuer}/introspect")),
            client_id: "c".into(),
            client_secret_file: fuzz_secret().clone(),
        });
        (Verifier::new(vec![cfg]).unwrap(), issuer)
    }

    fn run<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn verify_never_panics_on_arbitrary_strings(token in any::<String>(), resource in ".{0,20}") {
            let (v, _) = fuzz_verifier();
            let _ = run(v.verify(&token, &resource));
        }

        #[test]
        fn verify_never_panics_on_jwt_shaped_input(
            alg in prop::sample::select(vec!["RS256", "PS256", "ES256", "ES384", "EdDSA", "HS256", "none", "x"]),
            kid in prop::option::of(".{0,8}"),
            typ in prop::option::of(prop::sample::select(vec!["at+jwt", "JWT", "x"])),
            exp in any::<i64>(),
            extra in any::<Vec<u8>>(),
            sig in any::<Vec<u8>>(),
            aud_array in any::<bool>(),
        ) {
            let (v, issuer) = fuzz_verifier();
            let header = json!({"alg": alg, "kid": kid, "typ": typ});
            let aud = if aud_array { json!([RESOURCE, 1]) } else { json!(RESOURCE) };
            let claims = json!({"iss": issuer, "sub": "s", "aud": aud, "exp": exp,
                                "x": String::from_utf8_lossy(&extra)});
            let token = format!("{}.{}.{}", b64(header.to_string()), b64(claims.to_string()), b64(&sig));
            let _ = run(v.verify(&token, RESOURCE));
            let raw = format!("{}.{}.{}", b64(&extra), b64(claims.to_string()), b64(&sig));
            let _ = run(v.verify(&raw, RESOURCE));
        }
    }
}
