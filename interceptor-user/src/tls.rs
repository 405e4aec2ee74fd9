//! TLS for protected MCP services (rustls, `ring` provider only).
//!
//! This module owns both TLS legs of a proxied connection:
//! - [`TlsTerminator`]: terminates TLS from callers with the service's own certificates
//!   (SNI selection among several certificates, exact and wildcard names, default certificate
//!   when no SNI is sent, ALPN, minimum protocol version, handshake timeout, plaintext
//!   detection, hot reload of certificate/key files).
//! - [`UpstreamTls`]: re-encrypts toward the real server, always verifying its certificate
//!   against the system roots or a configured CA (there is deliberately no way to skip
//!   verification), by DNS name or by the IP address of the original destination, with an
//!   optional client certificate (mTLS).
//!
//! The configuration types ([`ServerTlsConfig`], [`UpstreamTlsConfig`]) are the
//! `[services.tls]` and `[services.upstream]` tables of the configuration file.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::server::{Acceptor, ClientHello, ResolvesServerCert};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{
    ClientConfig, RootCertStore, ServerConfig, ServerConnection, SupportedProtocolVersion,
};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::{LazyConfigAcceptor, TlsConnector};

/// First byte of a TLS handshake record (`ContentType::Handshake`).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The one crypto provider this module uses; never the process default.
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// TLS termination toward callers: the service's `[services.tls]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// Certificates with their keys and the names they serve. At least one; the first is used
    /// when the client sends no SNI.
    pub certs: Vec<CertEntry>,
    /// Lowest protocol version accepted: `"1.2"` (default) or `"1.3"`.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// ALPN protocols offered, in order of preference (default `["h2", "http/1.1"]`).
    #[serde(default = "default_server_alpn")]
    pub alpn: Vec<String>,
    /// Time allowed for the whole handshake, from accept to the client's Finished.
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
}

/// One certificate chain (PEM, end-entity first) and its private key (PEM: PKCS#8, PKCS#1 or
/// SEC1), served for the SNI names in `server_names` (exact, or wildcard like
/// `*.example.com` matching exactly one extra label; case-insensitive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertEntry {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// May be empty only for the first (default) entry, which then serves clients sending no
    /// SNI only.
    #[serde(default)]
    pub server_names: Vec<String>,
}

/// A TLS protocol version; written `"1.2"` / `"1.3"` in the configuration (a bare TOML float
/// `1.2` / `1.3` is accepted too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum TlsVersion {
    #[default]
    V1_2,
    V1_3,
}

impl TlsVersion {
    /// The configuration spelling: `"1.2"` or `"1.3"`.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsVersion::V1_2 => "1.2",
            TlsVersion::V1_3 => "1.3",
        }
    }

    fn protocol_versions(self) -> &'static [&'static SupportedProtocolVersion] {
        static BOTH: &[&SupportedProtocolVersion] =
            &[&rustls::version::TLS13, &rustls::version::TLS12];
        static ONLY_13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
        match self {
            TlsVersion::V1_2 => BOTH,
            TlsVersion::V1_3 => ONLY_13,
        }
    }
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TlsVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "1.2" => Ok(TlsVersion::V1_2),
            "1.3" => Ok(TlsVersion::V1_3),
            other => Err(format!(
                "unsupported TLS version {other:?} (expected \"1.2\" or \"1.3\")"
            )),
        }
    }
}

impl Serialize for TlsVersion {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for TlsVersion {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = TlsVersion;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a TLS version, \"1.2\" or \"1.3\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<TlsVersion, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<TlsVersion, E> {
                if (v - 1.2).abs() < 1e-9 {
                    Ok(TlsVersion::V1_2)
                } else if (v - 1.3).abs() < 1e-9 {
                    Ok(TlsVersion::V1_3)
                } else {
                    Err(E::custom(format!(
                        "unsupported TLS version {v} (expected \"1.2\" or \"1.3\")"
                    )))
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

fn default_server_alpn() -> Vec<String> {
    vec!["h2".to_owned(), "http/1.1".to_owned()]
}

fn default_upstream_alpn() -> Vec<String> {
    vec!["http/1.1".to_owned()]
}

fn default_handshake_timeout_ms() -> u64 {
    10_000
}

/// TLS toward the real server: the TLS part of the service's `[services.upstream]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// PEM bundle of trusted CA certificates; `None` = the system roots.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Name sent as SNI and verified in the server certificate (a DNS name, or an IP literal
    /// verified against IP SANs); `None` = verify the IP address of the original destination
    /// (IP SAN), no SNI sent.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Client certificate chain (PEM) for mTLS; set together with `client_key`.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// ALPN protocols offered (default `["http/1.1"]`; empty = no ALPN extension).
    #[serde(default = "default_upstream_alpn")]
    pub alpn: Vec<String>,
}

impl Default for UpstreamTlsConfig {
    fn default() -> Self {
        UpstreamTlsConfig {
            ca: None,
            server_name: None,
            client_cert: None,
            client_key: None,
            alpn: default_upstream_alpn(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// A TLS configuration problem, naming the service, the file (when there is one) and the
/// problem: `service crm: /etc/x.key: no private key found ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfigError {
    pub service: String,
    pub path: Option<PathBuf>,
    pub problem: String,
}

impl TlsConfigError {
    fn new(service: &str, path: Option<&Path>, problem: impl Into<String>) -> Self {
        TlsConfigError {
            service: service.to_owned(),
            path: path.map(Path::to_path_buf),
            problem: problem.into(),
        }
    }
}

impl fmt::Display for TlsConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(path) => write!(
                f,
                "service {}: {}: {}",
                self.service,
                path.display(),
                self.problem
            ),
            None => write!(f, "service {}: {}", self.service, self.problem),
        }
    }
}

impl std::error::Error for TlsConfigError {}

/// Why a caller's TLS handshake did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsAcceptError {
    /// The first byte is not a TLS handshake record: plaintext (e.g. HTTP) on the TLS port.
    #[error("not TLS: the client sent plaintext on a TLS port")]
    NotTls,
    /// The client asked (SNI) for a name that no configured certificate serves.
    #[error("unknown server name (SNI) {0:?}: no certificate configured for it")]
    UnknownServerName(String),
    /// The handshake did not complete within `handshake_timeout_ms`.
    #[error("TLS handshake timed out")]
    Timeout,
    /// Any other handshake failure (protocol error, no common version/cipher/ALPN,
    /// connection closed or reset).
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
}

// ---------------------------------------------------------------------------------------------
// File loading
// ---------------------------------------------------------------------------------------------

/// What identifies a version of a file on disk: a replaced file (new inode via rename, or
/// rewritten in place) changes at least one of these.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    dev: u64,
    ino: u64,
}

fn stamp_of(path: &Path) -> io::Result<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    Ok(FileStamp {
        len: meta.len(),
        modified: meta.modified().ok(),
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

/// The files a loaded configuration came from, with their stamps taken *before* reading
/// (so a change racing the read is seen by the next check).
#[derive(Debug, Default)]
struct FileSet {
    files: Vec<(PathBuf, FileStamp)>,
}

impl FileSet {
    /// Stamps then reads `path`.
    fn read(&mut self, service: &str, path: &Path) -> Result<Vec<u8>, TlsConfigError> {
        let cannot_read = |e: io::Error| {
            TlsConfigError::new(service, Some(path), format!("cannot read file: {e}"))
        };
        let stamp = stamp_of(path).map_err(cannot_read)?;
        let bytes = std::fs::read(path).map_err(cannot_read)?;
        if !self.files.iter().any(|(p, _)| p == path) {
            self.files.push((path.to_path_buf(), stamp));
        }
        Ok(bytes)
    }

    /// Whether any file changed (or vanished) since it was read.
    fn changed(&self) -> bool {
        self.files
            .iter()
            .any(|(path, stamp)| stamp_of(path).map_or(true, |now| now != *stamp))
    }
}

fn pem_problem(what: &str, e: &pem::Error) -> String {
    format!("invalid PEM while looking for {what}: {e}")
}

fn load_certs(
    service: &str,
    files: &mut FileSet,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let bytes = files.read(service, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsConfigError::new(service, Some(path), pem_problem("certificates", &e)))?;
    if certs.is_empty() {
        return Err(TlsConfigError::new(
            service,
            Some(path),
            "no certificate found (expected PEM \"CERTIFICATE\" blocks)",
        ));
    }
    Ok(certs)
}

fn load_key(
    service: &str,
    files: &mut FileSet,
    path: &Path,
) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    let bytes = files.read(service, path)?;
    match PrivateKeyDer::from_pem_slice(&bytes) {
        Ok(key) => Ok(key),
        Err(pem::Error::NoItemsFound) => Err(TlsConfigError::new(
            service,
            Some(path),
            "no private key found (expected PEM \"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \
             \"EC PRIVATE KEY\"; encrypted keys are not supported)",
        )),
        Err(e) => Err(TlsConfigError::new(
            service,
            Some(path),
            pem_problem("a private key", &e),
        )),
    }
}

/// Loads a certificate chain and its key, checking that the key belongs to the certificate.
fn load_certified_key(
    service: &str,
    files: &mut FileSet,
    cert_path: &Path,
    key_path: &Path,
) -> Result<CertifiedKey, TlsConfigError> {
    let chain = load_certs(service, files, cert_path)?;
    let key = load_key(service, files, key_path)?;
    let signing_key = provider().key_provider.load_private_key(key).map_err(|e| {
        TlsConfigError::new(
            service,
            Some(key_path),
            format!("unsupported or malformed private key: {e}"),
        )
    })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(TlsConfigError::new(
                service,
                Some(key_path),
                format!(
                    "private key does not match the certificate in {}",
                    cert_path.display()
                ),
            ))
        }
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            tracing::debug!(service, key = %key_path.display(), "cannot check that the key matches its certificate");
            Ok(certified)
        }
        Err(e) => Err(TlsConfigError::new(
            service,
            Some(cert_path),
            format!("cannot parse the end-entity certificate: {e}"),
        )),
    }
}

fn alpn_bytes(service: &str, alpn: &[String]) -> Result<Vec<Vec<u8>>, TlsConfigError> {
    alpn.iter()
        .map(|p| {
            if p.is_empty() || p.len() > 255 {
                Err(TlsConfigError::new(
                    service,
                    None,
                    format!("invalid ALPN protocol {p:?} (must be 1 to 255 bytes)"),
                ))
            } else {
                Ok(p.as_bytes().to_vec())
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Server side: names and certificate selection
// ---------------------------------------------------------------------------------------------

/// A configured server name, normalised (lower case, no trailing dot).
#[derive(Debug, Clone, PartialEq, Eq)]
enum NamePattern {
    Exact(String),
    /// `*.example.com`, stored as the suffix `.example.com`.
    Wildcard(String),
}

impl NamePattern {
    fn parse(name: &str) -> Result<Self, String> {
        let norm = normalize_name(name);
        if norm.is_empty() {
            return Err("empty server name".to_owned());
        }
        if norm.parse::<IpAddr>().is_ok() {
            return Err(format!(
                "server name {name:?} is an IP address; clients never send IP addresses as SNI \
                 (connections without SNI get the first certificate)"
            ));
        }
        let (pattern, dns_part) = match norm.strip_prefix("*.") {
            Some(rest) => (NamePattern::Wildcard(format!(".{rest}")), rest.to_owned()),
            None => (NamePattern::Exact(norm.clone()), norm.clone()),
        };
        if dns_part.contains('*') {
            return Err(format!(
                "invalid server name {name:?}: a wildcard is only allowed as the whole leftmost label (\"*.example.com\")"
            ));
        }
        match ServerName::try_from(dns_part.as_str()) {
            Ok(ServerName::DnsName(_)) => Ok(pattern),
            _ => Err(format!("invalid server name {name:?}")),
        }
    }

    /// `name` must already be normalised.
    fn matches(&self, name: &str) -> bool {
        match self {
            NamePattern::Exact(exact) => exact == name,
            NamePattern::Wildcard(suffix) => name
                .strip_suffix(suffix.as_str())
                .is_some_and(|label| !label.is_empty() && !label.contains('.')),
        }
    }
}

/// Lower case, without a trailing dot.
fn normalize_name(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

#[derive(Debug)]
struct LoadedCert {
    key: Arc<CertifiedKey>,
    names: Vec<NamePattern>,
}

#[derive(Debug)]
struct CertTable {
    certs: Vec<LoadedCert>,
}

impl CertTable {
    /// The certificate for `sni`: an exact name wins over a wildcard; among equals the first
    /// entry wins; no SNI gets the first entry. `None` = unknown name.
    fn select(&self, sni: Option<&str>) -> Option<&LoadedCert> {
        let Some(sni) = sni else {
            return self.certs.first();
        };
        let name = normalize_name(sni);
        let exact = |p: &NamePattern| matches!(p, NamePattern::Exact(_)) && p.matches(&name);
        let wildcard = |p: &NamePattern| matches!(p, NamePattern::Wildcard(_)) && p.matches(&name);
        self.certs
            .iter()
            .find(|c| c.names.iter().any(exact))
            .or_else(|| self.certs.iter().find(|c| c.names.iter().any(wildcard)))
    }
}

#[derive(Debug)]
struct SniResolver(Arc<CertTable>);

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0
            .select(client_hello.server_name())
            .map(|c| c.key.clone())
    }
}

/// Everything loaded from the certificate files at one point in time.
#[derive(Debug)]
struct ServerSnapshot {
    table: Arc<CertTable>,
    config: Arc<ServerConfig>,
    files: FileSet,
}

/// What the handshake negotiated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HandshakeInfo {
    /// SNI sent by the client (lower case), if any.
    pub server_name: Option<String>,
    /// Negotiated ALPN protocol, if any.
    pub alpn: Option<String>,
    /// `"TLSv1.2"` or `"TLSv1.3"`.
    pub version: String,
    /// IANA name of the cipher suite, e.g. `"TLS13_AES_128_GCM_SHA256"`.
    pub cipher: String,
}

fn version_name(v: Option<rustls::ProtocolVersion>) -> String {
    match v {
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_owned(),
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_owned(),
        Some(other) => format!("{other:?}"),
        None => "unknown".to_owned(),
    }
}

fn handshake_info(conn: &ServerConnection) -> HandshakeInfo {
    HandshakeInfo {
        server_name: conn.server_name().map(normalize_name),
        alpn: conn
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned()),
        version: version_name(conn.protocol_version()),
        cipher: conn
            .negotiated_cipher_suite()
            .map(|s| {
                let suite = s.suite();
                suite
                    .as_str()
                    .map_or_else(|| format!("{suite:?}"), str::to_owned)
            })
            .unwrap_or_else(|| "unknown".to_owned()),
    }
}

// ---------------------------------------------------------------------------------------------
// TlsTerminator
// ---------------------------------------------------------------------------------------------

/// Terminates callers' TLS for one service. Cheap to clone and share (an `Arc` inside).
#[derive(Clone)]
pub struct TlsTerminator {
    inner: Arc<TerminatorInner>,
}

struct TerminatorInner {
    service: String,
    cfg: ServerTlsConfig,
    timeout: Duration,
    current: RwLock<Arc<ServerSnapshot>>,
    reload_lock: Mutex<()>,
}

impl fmt::Debug for TlsTerminator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsTerminator")
            .field("service", &self.inner.service)
            .field("config", &self.inner.cfg)
            .finish_non_exhaustive()
    }
}

impl TlsTerminator {
    /// Validates `cfg` and loads every certificate and key.
    pub fn new(service: &str, cfg: &ServerTlsConfig) -> Result<Self, TlsConfigError> {
        if cfg.handshake_timeout_ms == 0 {
            return Err(TlsConfigError::new(
                service,
                None,
                "handshake_timeout_ms must be greater than 0",
            ));
        }
        let snapshot = load_server(service, cfg)?;
        Ok(TlsTerminator {
            inner: Arc::new(TerminatorInner {
                service: service.to_owned(),
                cfg: cfg.clone(),
                timeout: Duration::from_millis(cfg.handshake_timeout_ms),
                current: RwLock::new(Arc::new(snapshot)),
                reload_lock: Mutex::new(()),
            }),
        })
    }

    /// The service this terminator belongs to.
    pub fn service(&self) -> &str {
        &self.inner.service
    }

    /// The configured handshake timeout.
    pub fn handshake_timeout(&self) -> Duration {
        self.inner.timeout
    }

    fn snapshot(&self) -> Arc<ServerSnapshot> {
        self.inner
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Re-reads the certificate/key files if any changed (size, mtime or inode) and swaps
    /// them in atomically: established connections are unaffected, new handshakes use the new
    /// certificates. Returns `Ok(false)` when nothing changed. On a bad new file the old
    /// certificates stay in force and the error is returned (every call retries until the
    /// files are fixed).
    pub fn reload_if_changed(&self) -> Result<bool, TlsConfigError> {
        let _serialize = self
            .inner
            .reload_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !self.snapshot().files.changed() {
            return Ok(false);
        }
        let fresh = load_server(&self.inner.service, &self.inner.cfg)?;
        *self
            .inner
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(fresh);
        tracing::debug!(service = %self.inner.service, "reloaded TLS certificates");
        Ok(true)
    }

    /// Peeks (without consuming) at the first byte of `tcp`: `Ok(())` if it starts a TLS
    /// handshake record, `NotTls` if the client speaks plaintext. Bounded by the handshake
    /// timeout. Use it before [`accept`](Self::accept) to keep the stream on `NotTls` (e.g. to
    /// answer in plaintext); [`accept_tcp`](Self::accept_tcp) does both.
    pub async fn sniff(&self, tcp: &TcpStream) -> Result<(), TlsAcceptError> {
        tokio::time::timeout(self.inner.timeout, sniff_first_byte(tcp))
            .await
            .unwrap_or(Err(TlsAcceptError::Timeout))
    }

    /// Handshake with a caller over TCP: detects plaintext by peeking at the first byte
    /// (`NotTls`, the stream is then dropped), then completes the handshake. The handshake
    /// timeout covers both steps.
    pub async fn accept_tcp(
        &self,
        tcp: TcpStream,
    ) -> Result<(tokio_rustls::server::TlsStream<TcpStream>, HandshakeInfo), TlsAcceptError> {
        let deadline = Instant::now() + self.inner.timeout;
        tokio::time::timeout_at(deadline, sniff_first_byte(&tcp))
            .await
            .unwrap_or(Err(TlsAcceptError::Timeout))?;
        self.handshake(tcp, deadline).await
    }

    /// Handshake with a caller over any stream. Without a way to peek, plaintext is still
    /// reported as `NotTls` (from rustls's record-layer error), but the bytes read are
    /// consumed; prefer [`accept_tcp`](Self::accept_tcp) for TCP.
    pub async fn accept<IO: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: IO,
    ) -> Result<(tokio_rustls::server::TlsStream<IO>, HandshakeInfo), TlsAcceptError> {
        self.handshake(io, Instant::now() + self.inner.timeout)
            .await
    }

    async fn handshake<IO: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: IO,
        deadline: Instant,
    ) -> Result<(tokio_rustls::server::TlsStream<IO>, HandshakeInfo), TlsAcceptError> {
        let snapshot = self.snapshot();
        let result = tokio::time::timeout_at(deadline, handshake_with(io, &snapshot))
            .await
            .unwrap_or(Err(TlsAcceptError::Timeout));
        if let Err(e) = &result {
            tracing::debug!(service = %self.inner.service, error = %e, "caller TLS handshake failed");
        }
        result
    }
}

async fn sniff_first_byte(tcp: &TcpStream) -> Result<(), TlsAcceptError> {
    let mut first = [0u8; 1];
    loop {
        return match tcp.peek(&mut first).await {
            Ok(0) => Err(TlsAcceptError::Handshake(
                "connection closed before the TLS handshake".to_owned(),
            )),
            Ok(_) if first[0] == TLS_HANDSHAKE_RECORD => Ok(()),
            Ok(_) => Err(TlsAcceptError::NotTls),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Err(TlsAcceptError::Handshake(format!(
                "reading the first byte: {e}"
            ))),
        };
    }
}

async fn handshake_with<IO: AsyncRead + AsyncWrite + Unpin>(
    io: IO,
    snapshot: &ServerSnapshot,
) -> Result<(tokio_rustls::server::TlsStream<IO>, HandshakeInfo), TlsAcceptError> {
    let start = LazyConfigAcceptor::new(Acceptor::default(), io)
        .await
        .map_err(classify_client_hello_error)?;
    let unknown = start
        .client_hello()
        .server_name()
        .map(normalize_name)
        .filter(|name| snapshot.table.select(Some(name)).is_none());
    if let Some(name) = unknown {
        // Let rustls refuse it (the resolver finds nothing either) so the client gets a
        // TLS alert rather than a bare close; the outcome is known already.
        let _ = start.into_stream(snapshot.config.clone()).await;
        return Err(TlsAcceptError::UnknownServerName(name));
    }
    let stream = start
        .into_stream(snapshot.config.clone())
        .await
        .map_err(|e| TlsAcceptError::Handshake(io_error_text(&e)))?;
    let info = handshake_info(stream.get_ref().1);
    Ok((stream, info))
}

fn classify_client_hello_error(e: io::Error) -> TlsAcceptError {
    let rustls_error = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    if let Some(rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)) =
        rustls_error
    {
        return TlsAcceptError::NotTls;
    }
    TlsAcceptError::Handshake(io_error_text(&e))
}

fn io_error_text(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => "connection closed during the handshake".to_owned(),
        _ => e.to_string(),
    }
}

fn load_server(service: &str, cfg: &ServerTlsConfig) -> Result<ServerSnapshot, TlsConfigError> {
    if cfg.certs.is_empty() {
        return Err(TlsConfigError::new(
            service,
            None,
            "no certificates configured (tls.certs needs at least one entry)",
        ));
    }
    let alpn = alpn_bytes(service, &cfg.alpn)?;
    let mut files = FileSet::default();
    let mut certs = Vec::with_capacity(cfg.certs.len());
    for (index, entry) in cfg.certs.iter().enumerate() {
        let names = entry
            .server_names
            .iter()
            .map(|n| {
                NamePattern::parse(n)
                    .map_err(|p| TlsConfigError::new(service, Some(&entry.cert), p))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if names.is_empty() && index > 0 {
            return Err(TlsConfigError::new(
                service,
                Some(&entry.cert),
                "server_names is empty: only the first certificate (the default) may have no names",
            ));
        }
        let key = load_certified_key(service, &mut files, &entry.cert, &entry.key)?;
        certs.push(LoadedCert {
            key: Arc::new(key),
            names,
        });
    }
    let table = Arc::new(CertTable { certs });
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(cfg.min_version.protocol_versions())
        .map_err(|e| TlsConfigError::new(service, None, format!("protocol versions: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver(table.clone())));
    config.alpn_protocols = alpn;
    Ok(ServerSnapshot {
        table,
        config: Arc::new(config),
        files,
    })
}

// ---------------------------------------------------------------------------------------------
// UpstreamTls
// ---------------------------------------------------------------------------------------------

/// Re-encrypts toward one service's real server. Cheap to clone and share (an `Arc` inside).
#[derive(Clone)]
pub struct UpstreamTls {
    inner: Arc<UpstreamInner>,
}

struct UpstreamInner {
    service: String,
    cfg: UpstreamTlsConfig,
    server_name: Option<ServerName<'static>>,
    current: RwLock<Arc<ClientSnapshot>>,
    reload_lock: Mutex<()>,
}

struct ClientSnapshot {
    config: Arc<ClientConfig>,
    files: FileSet,
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("service", &self.inner.service)
            .field("config", &self.inner.cfg)
            .finish_non_exhaustive()
    }
}

impl UpstreamTls {
    /// Validates `cfg` and loads the trust roots (configured CA or system roots) and the
    /// optional client certificate.
    pub fn new(service: &str, cfg: &UpstreamTlsConfig) -> Result<Self, TlsConfigError> {
        let server_name = match &cfg.server_name {
            None => None,
            Some(name) => Some(
                ServerName::try_from(name.trim().trim_end_matches('.').to_owned()).map_err(
                    |_| {
                        TlsConfigError::new(
                            service,
                            None,
                            format!("invalid upstream server_name {name:?}"),
                        )
                    },
                )?,
            ),
        };
        let snapshot = load_client(service, cfg)?;
        Ok(UpstreamTls {
            inner: Arc::new(UpstreamInner {
                service: service.to_owned(),
                cfg: cfg.clone(),
                server_name,
                current: RwLock::new(Arc::new(snapshot)),
                reload_lock: Mutex::new(()),
            }),
        })
    }

    fn snapshot(&self) -> Arc<ClientSnapshot> {
        self.inner
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The name that will be verified for a connection to `dst_ip`.
    pub fn server_name_for(&self, dst_ip: IpAddr) -> ServerName<'static> {
        match &self.inner.server_name {
            Some(name) => name.clone(),
            None => ServerName::IpAddress(dst_ip.into()),
        }
    }

    /// TLS handshake with the real server over `io` (already connected to `dst_ip`), verifying
    /// its certificate for `server_name` (sent as SNI) or, when none is configured, for the IP
    /// address `dst_ip`. Returns the stream and the negotiated ALPN protocol. No timeout of its
    /// own: wrap it if needed.
    pub async fn connect<IO: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: IO,
        dst_ip: IpAddr,
    ) -> io::Result<(tokio_rustls::client::TlsStream<IO>, Option<String>)> {
        let name = self.server_name_for(dst_ip);
        let connector = TlsConnector::from(self.snapshot().config.clone());
        let stream = connector.connect(name, io).await.inspect_err(|e| {
            tracing::debug!(service = %self.inner.service, %dst_ip, error = %e, "upstream TLS handshake failed");
        })?;
        let alpn = stream
            .get_ref()
            .1
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        Ok((stream, alpn))
    }

    /// Re-reads the CA bundle and client certificate/key if any changed; same contract as
    /// [`TlsTerminator::reload_if_changed`]. System roots are not re-read.
    pub fn reload_if_changed(&self) -> Result<bool, TlsConfigError> {
        let _serialize = self
            .inner
            .reload_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !self.snapshot().files.changed() {
            return Ok(false);
        }
        let fresh = load_client(&self.inner.service, &self.inner.cfg)?;
        *self
            .inner
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(fresh);
        tracing::debug!(service = %self.inner.service, "reloaded upstream TLS files");
        Ok(true)
    }
}

fn load_client(service: &str, cfg: &UpstreamTlsConfig) -> Result<ClientSnapshot, TlsConfigError> {
    let alpn = alpn_bytes(service, &cfg.alpn)?;
    let mut files = FileSet::default();
    let mut roots = RootCertStore::empty();
    match &cfg.ca {
        Some(ca) => {
            for cert in load_certs(service, &mut files, ca)? {
                roots.add(cert).map_err(|e| {
                    TlsConfigError::new(service, Some(ca), format!("unusable CA certificate: {e}"))
                })?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for e in &native.errors {
                tracing::warn!(service, error = %e, "problem loading system root certificates");
            }
            let (added, ignored) = roots.add_parsable_certificates(native.certs);
            if ignored > 0 {
                tracing::debug!(
                    service,
                    ignored,
                    "ignored unparsable system root certificates"
                );
            }
            if added == 0 {
                return Err(TlsConfigError::new(
                    service,
                    None,
                    "no usable system root certificates found; set upstream.ca",
                ));
            }
        }
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsConfigError::new(service, None, format!("protocol versions: {e}")))?
        .with_root_certificates(roots);
    let mut config = match (&cfg.client_cert, &cfg.client_key) {
        (Some(cert), Some(key)) => {
            let certified = load_certified_key(service, &mut files, cert, key)?;
            builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(certified)))
        }
        (None, None) => builder.with_no_client_auth(),
        (Some(path), None) | (None, Some(path)) => {
            return Err(TlsConfigError::new(
                service,
                Some(path),
                "client_cert and client_key must be set together",
            ));
        }
    };
    config.alpn_protocols = alpn;
    Ok(ClientSnapshot {
        config: Arc::new(config),
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    // ----- fixtures ---------------------------------------------------------------------------

    /// A unique temporary directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            static COUNTER: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "interceptor-tls-test-{}-{tag}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }

        /// Writes `name` atomically (temporary file + rename), like certificate tooling does.
        fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
            let path = self.path(name);
            let tmp = self.path(&format!("{name}.tmp"));
            std::fs::write(&tmp, contents).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    struct Ca {
        cert: rcgen::Certificate,
        key: KeyPair,
    }

    impl Ca {
        fn new(cn: &str) -> Self {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, cn);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let cert = params.self_signed(&key).unwrap();
            Ca { cert, key }
        }

        fn pem(&self) -> String {
            self.cert.pem()
        }

        fn roots(&self) -> Arc<RootCertStore> {
            let mut roots = RootCertStore::empty();
            roots.add(self.cert.der().clone()).unwrap();
            Arc::new(roots)
        }

        fn leaf(&self, names: &[&str]) -> Leaf {
            self.leaf_with_key(names, KeyPair::generate().unwrap())
        }

        fn leaf_with_key(&self, names: &[&str], key: KeyPair) -> Leaf {
            let mut params =
                CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                    .unwrap();
            params.distinguished_name.push(DnType::CommonName, names[0]);
            let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
            Leaf {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
                der: cert.der().clone(),
                key_der: key.serialize_der(),
            }
        }
    }

    struct Leaf {
        cert_pem: String,
        key_pem: String,
        der: CertificateDer<'static>,
        key_der: Vec<u8>,
    }

    impl Leaf {
        /// Writes `<name>.crt` and `<name>.key`; returns the entry serving `names`.
        fn write(&self, dir: &TempDir, name: &str, names: &[&str]) -> CertEntry {
            CertEntry {
                cert: dir.write(&format!("{name}.crt"), &self.cert_pem),
                key: dir.write(&format!("{name}.key"), &self.key_pem),
                server_names: names.iter().map(|n| n.to_string()).collect(),
            }
        }
    }

    fn server_cfg(certs: Vec<CertEntry>) -> ServerTlsConfig {
        ServerTlsConfig {
            certs,
            min_version: TlsVersion::V1_2,
            alpn: default_server_alpn(),
            handshake_timeout_ms: 5_000,
        }
    }

    /// Default cert `default.test`, a wildcard `*.example.com` and an exact `api.example.com`
    /// (listed after the wildcard, so that exact-before-wildcard is really tested).
    struct Sni {
        _dir: TempDir,
        ca: Ca,
        default: Leaf,
        wild: Leaf,
        api: Leaf,
        cfg: ServerTlsConfig,
    }

    fn sni_fixture() -> Sni {
        let dir = TempDir::new("sni");
        let ca = Ca::new("Test CA");
        let default = ca.leaf(&["default.test"]);
        let wild = ca.leaf(&["*.example.com"]);
        let api = ca.leaf(&["api.example.com"]);
        let cfg = server_cfg(vec![
            default.write(&dir, "default", &["default.test"]),
            wild.write(&dir, "wild", &["*.Example.com"]),
            api.write(&dir, "api", &["API.example.com."]),
        ]);
        Sni {
            _dir: dir,
            ca,
            default,
            wild,
            api,
            cfg,
        }
    }

    fn client_config(
        roots: Arc<RootCertStore>,
        versions: &[&'static SupportedProtocolVersion],
        alpn: &[&str],
        sni: bool,
    ) -> Arc<ClientConfig> {
        let mut cfg = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        cfg.enable_sni = sni;
        Arc::new(cfg)
    }

    const ALL: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];
    const TLS12_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
    const TLS13_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];

    /// What the test client saw.
    #[derive(Debug)]
    struct ClientView {
        peer: CertificateDer<'static>,
        alpn: Option<String>,
        version: Option<rustls::ProtocolVersion>,
    }

    /// Serves one connection with `term.accept_tcp` (answering "ok" on success).
    async fn serve_one(
        term: &TlsTerminator,
    ) -> (
        SocketAddr,
        JoinHandle<Result<HandshakeInfo, TlsAcceptError>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let term = term.clone();
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let (mut tls, info) = term.accept_tcp(tcp).await?;
            tls.write_all(b"ok").await.unwrap();
            tls.flush().await.unwrap();
            Ok(info)
        });
        (addr, task)
    }

    /// One handshake: the server's outcome and the client's (including reading "ok").
    async fn handshake(
        term: &TlsTerminator,
        client: Arc<ClientConfig>,
        name: &str,
    ) -> (
        Result<HandshakeInfo, TlsAcceptError>,
        io::Result<ClientView>,
    ) {
        let (addr, server) = serve_one(term).await;
        let client = async {
            let tcp = TcpStream::connect(addr).await?;
            let name = ServerName::try_from(name.to_owned()).unwrap();
            let mut tls = TlsConnector::from(client).connect(name, tcp).await?;
            let mut buf = [0u8; 2];
            tls.read_exact(&mut buf).await?;
            assert_eq!(&buf, b"ok");
            let conn = tls.get_ref().1;
            Ok(ClientView {
                peer: conn.peer_certificates().unwrap()[0].clone(),
                alpn: conn
                    .alpn_protocol()
                    .map(|p| String::from_utf8_lossy(p).into_owned()),
                version: conn.protocol_version(),
            })
        }
        .await;
        (server.await.unwrap(), client)
    }

    // ----- DER/PEM helpers for key-format tests ------------------------------------------------

    /// Reads one DER TLV: (tag, contents, rest).
    fn der_tlv(input: &[u8]) -> (u8, &[u8], &[u8]) {
        let tag = input[0];
        let (len, header) = match input[1] {
            n if n < 0x80 => (n as usize, 2),
            n => {
                let count = (n & 0x7f) as usize;
                let len = input[2..2 + count]
                    .iter()
                    .fold(0usize, |acc, b| (acc << 8) | *b as usize);
                (len, 2 + count)
            }
        };
        (tag, &input[header..header + len], &input[header + len..])
    }

    /// The `privateKey` inside a PKCS#8 `PrivateKeyInfo`: PKCS#1 for RSA, SEC1 for EC.
    fn pkcs8_inner(pkcs8: &[u8]) -> Vec<u8> {
        let (tag, info, _) = der_tlv(pkcs8);
        assert_eq!(tag, 0x30);
        let (tag, _version, rest) = der_tlv(info);
        assert_eq!(tag, 0x02);
        let (tag, _algorithm, rest) = der_tlv(rest);
        assert_eq!(tag, 0x30);
        let (tag, key, _) = der_tlv(rest);
        assert_eq!(tag, 0x04);
        key.to_vec()
    }

    fn pem_encode(label: &str, der: &[u8]) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut b64 = String::new();
        for chunk in der.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, b)| acc | (*b as u32) << (16 - 8 * i));
            for i in 0..4 {
                if i <= chunk.len() {
                    b64.push(ALPHABET[(n >> (18 - 6 * i) & 0x3f) as usize] as char);
                } else {
                    b64.push('=');
                }
            }
        }
        let mut out = format!("-----BEGIN {label}-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap());
            out.push('\n');
        }
        out.push_str(&format!("-----END {label}-----\n"));
        out
    }

    /// A throwaway RSA-2048 test key (ring cannot generate RSA keys). Not a secret.
    const TEST_RSA_PKCS8: &str = "-----BEGIN PRIVATE KEY-----
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQCyhOubLviPyjY3
VoXtjx2UP2cQ5Ld7TR2OL2AMqIgHlsxdiZeekfh5UGJz75TBMAzXaacNlf9ZGz8W
sIvf/hxvip4XX7I3TC/9k8iMMfc9Sm7h+601LPeVg2/Uesk8ELKmSoRZQNZlJWdc
1VTXG9QEejQY3dJTtWuTus1+1vgNeA/cGEmXPuWGnmpsV5yjp2kQC38/XxCANNyg
BLfbPeBHdwXhZ+kv7ZVIOARdIaY/VuPVwPtb8ZF8OymFIYmOqXLn1BqDmD17dr0g
zkwiMIJt9YH28P+4Xo6XRrTVZ6RXe8/fhtPI/e/+qEB1pD0MlVJT5zvmRLtyWDrh
qeHvkuETAgMBAAECggEAQhhdhSTEabR0E1QJHRX+XRuGZOZRmqjIFxMqTDV/u9OU
0dL2HIMuDHh7IzKikE5iisT20VxmYM7qMlPmTeXvEEsx0jSfrsKaCBhVybZcNEih
OjEtBYGjHyu9VV2qsP77rf7r9oG/f050cRYZJdWLT6cRL929GDoU3OruV5Zu28km
oXBbfoXP2q0KgY4NEnEP9zQ2HCZzaDVJZT02WKtGbZMDgIYhmt9vEXNPqbFVgivY
clXaBlq1EcDDi0OwZxMqtzobJK9I4Glhholi9hWoKX4xVirWjUGmfV+e5r2UOxUQ
X+SUrtvtO2J1wwsKrHZtrOo2maU88GEC7PgHv2FRxQKBgQD21TO4cEfZdg8yNai6
FhFd23icNPgZ1G9DvN2F+lMv8llsIrEI8ELmR4OzqjDI6LJzFMgM5jzuGSgXzZ45
3QRIczgwsXQDePcsryFDnAWs9dMK8s3EpgyPeXqLKV9o3sRSVf2OHj+0tsuqApZi
+NQhGHH4qFE56XJKlV75vQaEnQKBgQC5JjeSqt46h1ukXrSYv3TWXxhjYzsH93gI
7/9ACdiBEXz8YVTYe8sCuKmKxgmAv4Z8lDGBENzN69yx0vO5VmY9gAVrLRjiYEnf
uypkoRtDn9T+w6ba6g7Qd7OWiExV3JVrGHqLATk3borru8ZWyby/x79v4de7L6cn
xFSFe9CVbwKBgQCGOU3UwAnyMQb2cMN93b434b7mgs9fjGus1ClKT+OosQr7iKno
iG54tu7hZmz8870GY4idqx37A+cPeprOMGfB1hX6NKU3tjIDNIDMOS3E7jCDRaGr
i/hMlOyUfD0L1AfCFky5Wa2e4cBChQGudE02agqgAzeYXF/wOuXYvHes6QKBgAmf
UNgQhUgpbLvYKC6gFKRngM75g0HgvJ5KSsu7N0NN817yeARgOqbDjhwmOqw0R/sF
gKUiiTcygN/FBOGm+d1MX/u39kkdk/lKsuNT9CTJk7pB1NQfwfFXpz+1ibIUqrdM
KGI9CAo3doTV13L/PQ4ChZJ8/EdALMHGVFYznx2FAoGBANX/rcYsdf92aLhn7kUI
HAJNtXVagOJxS4bDM15/3yoRgId/peOn9aFMR874MgXoIQFCBErm9hBlBHBnVq61
LQ8mYaV1wOCGkNCrEnm2DouB8Nmc7kmzNMveFhXaSCoh8jJ4GddKjqs1aVUaQXfP
gfpK4N/waaaMGU4dS77tiZlK
-----END PRIVATE KEY-----
";

    // ----- configuration -----------------------------------------------------------------------

    #[test]
    fn server_config_from_toml_with_defaults() {
        let cfg: ServerTlsConfig = toml::from_str(
            r#"
            [[certs]]
            cert = "/etc/a.crt"
            key = "/etc/a.key"
            server_names = ["a.example.com", "*.example.com"]
            "#,
        )
        .unwrap();
        assert_eq!(cfg.min_version, TlsVersion::V1_2);
        assert_eq!(cfg.alpn, vec!["h2", "http/1.1"]);
        assert_eq!(cfg.handshake_timeout_ms, 10_000);
        assert_eq!(
            cfg.certs[0].server_names,
            vec!["a.example.com", "*.example.com"]
        );

        let cfg: ServerTlsConfig = toml::from_str(
            "min_version = \"1.3\"\nalpn = [\"http/1.1\"]\nhandshake_timeout_ms = 50\n\
             certs = [{ cert = \"c\", key = \"k\" }]",
        )
        .unwrap();
        assert_eq!(cfg.min_version, TlsVersion::V1_3);
        assert_eq!(cfg.alpn, vec!["http/1.1"]);
        assert_eq!(cfg.handshake_timeout_ms, 50);
        assert!(cfg.certs[0].server_names.is_empty());

        let float: ServerTlsConfig = toml::from_str("min_version = 1.3\ncerts = []").unwrap();
        assert_eq!(float.min_version, TlsVersion::V1_3);
        assert!(toml::from_str::<ServerTlsConfig>("min_version = \"1.1\"\ncerts = []").is_err());
        assert!(toml::from_str::<ServerTlsConfig>("cert = \"x\"\ncerts = []").is_err());
        assert!(
            toml::from_str::<ServerTlsConfig>("certs = [{ cert = \"c\", key = \"k\", extra = 1 }]")
                .is_err()
        );
        // Round trip.
        let again: ServerTlsConfig = toml::from_str(&toml::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(again, cfg);
    }

    #[test]
    fn upstream_config_from_toml_with_defaults() {
        let cfg: UpstreamTlsConfig = toml::from_str("").unwrap();
        assert_eq!(cfg, UpstreamTlsConfig::default());
        assert_eq!(cfg.alpn, vec!["http/1.1"]);
        let cfg: UpstreamTlsConfig = toml::from_str(
            "ca = \"/ca.pem\"\nserver_name = \"crm.internal\"\nclient_cert = \"c\"\nclient_key = \"k\"\nalpn = [\"h2\"]",
        )
        .unwrap();
        assert_eq!(cfg.ca.as_deref(), Some(Path::new("/ca.pem")));
        assert_eq!(cfg.server_name.as_deref(), Some("crm.internal"));
        assert_eq!(cfg.alpn, vec!["h2"]);
        assert!(toml::from_str::<UpstreamTlsConfig>("insecure = true").is_err());
    }

    #[test]
    fn config_errors_name_service_file_and_problem() {
        let dir = TempDir::new("errors");
        let ca = Ca::new("Test CA");
        let a = ca.leaf(&["a.test"]);
        let b = ca.leaf(&["b.test"]);
        let good = a.write(&dir, "a", &["a.test"]);
        let err = |cfg: &ServerTlsConfig| TlsTerminator::new("crm", cfg).unwrap_err();

        let e = err(&server_cfg(vec![]));
        assert_eq!(e.path, None);
        assert!(
            e.to_string()
                .starts_with("service crm: no certificates configured"),
            "{e}"
        );

        let missing = dir.path("missing.crt");
        let e = err(&server_cfg(vec![CertEntry {
            cert: missing.clone(),
            ..good.clone()
        }]));
        assert_eq!(e.path.as_deref(), Some(missing.as_path()));
        assert!(
            e.to_string().starts_with(&format!(
                "service crm: {}: cannot read file",
                missing.display()
            )),
            "{e}"
        );

        // A key where the certificate should be, and a certificate where the key should be.
        let e = err(&server_cfg(vec![CertEntry {
            cert: good.key.clone(),
            ..good.clone()
        }]));
        assert_eq!(e.path.as_deref(), Some(good.key.as_path()));
        assert!(e.problem.contains("no certificate found"), "{e}");
        let e = err(&server_cfg(vec![CertEntry {
            key: good.cert.clone(),
            ..good.clone()
        }]));
        assert_eq!(e.path.as_deref(), Some(good.cert.as_path()));
        assert!(e.problem.contains("no private key found"), "{e}");

        // Key of another certificate.
        let other_key = dir.write("b.key", &b.key_pem);
        let e = err(&server_cfg(vec![CertEntry {
            key: other_key.clone(),
            ..good.clone()
        }]));
        assert_eq!(e.path.as_deref(), Some(other_key.as_path()));
        assert!(e.problem.contains("does not match"), "{e}");

        // Garbage in a PEM block.
        let garbage = dir.write(
            "garbage.key",
            "-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n",
        );
        let e = err(&server_cfg(vec![CertEntry {
            key: garbage,
            ..good.clone()
        }]));
        assert!(
            e.problem.contains("PEM") || e.problem.contains("private key"),
            "{e}"
        );

        // Names.
        for bad in ["foo.*.example.com", "*", "10.0.0.1", "bad name.test", ""] {
            let e = err(&server_cfg(vec![CertEntry {
                server_names: vec![bad.to_owned()],
                ..good.clone()
            }]));
            assert!(
                e.problem.contains("server name") || e.problem.contains("IP"),
                "{bad}: {e}"
            );
        }
        let e = err(&server_cfg(vec![
            good.clone(),
            CertEntry {
                server_names: vec![],
                ..good.clone()
            },
        ]));
        assert!(e.problem.contains("server_names is empty"), "{e}");

        // ALPN and timeout.
        let mut cfg = server_cfg(vec![good.clone()]);
        cfg.alpn = vec![String::new()];
        assert!(err(&cfg).problem.contains("ALPN"));
        let mut cfg = server_cfg(vec![good.clone()]);
        cfg.handshake_timeout_ms = 0;
        assert!(err(&cfg).problem.contains("handshake_timeout_ms"));

        // The good one, for contrast.
        TlsTerminator::new("crm", &server_cfg(vec![good.clone()])).unwrap();

        // Upstream.
        let up_err = |cfg: &UpstreamTlsConfig| UpstreamTls::new("crm", cfg).unwrap_err();
        let e = up_err(&UpstreamTlsConfig {
            ca: Some(missing.clone()),
            ..Default::default()
        });
        assert!(
            e.to_string().starts_with(&format!(
                "service crm: {}: cannot read file",
                missing.display()
            )),
            "{e}"
        );
        let e = up_err(&UpstreamTlsConfig {
            ca: Some(good.key.clone()),
            ..Default::default()
        });
        assert!(e.problem.contains("no certificate found"), "{e}");
        let ca_file = dir.write("ca.pem", ca.pem());
        let e = up_err(&UpstreamTlsConfig {
            ca: Some(ca_file.clone()),
            client_cert: Some(good.cert.clone()),
            ..Default::default()
        });
        assert!(e.problem.contains("set together"), "{e}");
        let e = up_err(&UpstreamTlsConfig {
            ca: Some(ca_file.clone()),
            client_cert: Some(good.cert.clone()),
            client_key: Some(other_key),
            ..Default::default()
        });
        assert!(e.problem.contains("does not match"), "{e}");
        let e = up_err(&UpstreamTlsConfig {
            ca: Some(ca_file.clone()),
            server_name: Some("not a name!".to_owned()),
            ..Default::default()
        });
        assert!(e.problem.contains("server_name"), "{e}");
        UpstreamTls::new(
            "crm",
            &UpstreamTlsConfig {
                ca: Some(ca_file),
                client_cert: Some(good.cert.clone()),
                client_key: Some(good.key.clone()),
                ..Default::default()
            },
        )
        .unwrap();
    }

    // ----- name selection ----------------------------------------------------------------------

    #[test]
    fn name_patterns_exact_and_wildcard() {
        let wild = NamePattern::parse("*.Example.COM.").unwrap();
        assert_eq!(wild, NamePattern::Wildcard(".example.com".to_owned()));
        assert!(wild.matches("a.example.com"));
        assert!(!wild.matches("example.com"));
        assert!(!wild.matches("a.b.example.com"));
        assert!(!wild.matches(".example.com"));
        assert!(!wild.matches("aexample.com"));
        let exact = NamePattern::parse("API.example.com").unwrap();
        assert!(exact.matches("api.example.com"));
        assert!(!exact.matches("x.api.example.com"));
    }

    /// A table with an exact, a wildcard and a name-less default entry (one shared key).
    fn name_table() -> &'static CertTable {
        static TABLE: OnceLock<CertTable> = OnceLock::new();
        TABLE.get_or_init(|| {
            let ca = Ca::new("Test CA");
            let leaf = ca.leaf(&["x.test"]);
            let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
            let key = Arc::new(CertifiedKey::from_der(vec![leaf.der], key, &provider()).unwrap());
            let entry = |names: &[&str]| LoadedCert {
                key: key.clone(),
                names: names
                    .iter()
                    .map(|n| NamePattern::parse(n).unwrap())
                    .collect(),
            };
            CertTable {
                certs: vec![
                    entry(&[]),
                    entry(&["*.example.com"]),
                    entry(&["api.example.com"]),
                ],
            }
        })
    }

    /// Index of the entry `select` picked.
    fn selected(sni: Option<&str>) -> Option<usize> {
        let table = name_table();
        let chosen = table.select(sni)?;
        table.certs.iter().position(|c| std::ptr::eq(c, chosen))
    }

    #[test]
    fn selection_prefers_exact_then_wildcard_then_default_without_sni() {
        assert_eq!(selected(None), Some(0));
        assert_eq!(selected(Some("api.example.com")), Some(2));
        assert_eq!(selected(Some("API.Example.com.")), Some(2));
        assert_eq!(selected(Some("web.example.com")), Some(1));
        assert_eq!(selected(Some("example.com")), None);
        assert_eq!(selected(Some("a.b.example.com")), None);
        assert_eq!(selected(Some("")), None);
    }

    proptest::proptest! {
        #[test]
        fn selection_is_case_insensitive_and_total(
            label in "[a-zA-Z0-9]([a-zA-Z0-9-]{0,18}[a-zA-Z0-9])?",
            junk in "\\PC{0,60}",
        ) {
            // Never panics, whatever the input.
            let _ = selected(Some(&junk));
            let upper = format!("{}.EXAMPLE.com", label.to_uppercase());
            let expected = if label.eq_ignore_ascii_case("api") { 2 } else { 1 };
            proptest::prop_assert_eq!(selected(Some(&upper)), Some(expected));
            proptest::prop_assert_eq!(selected(Some(&format!("x.{label}.example.com"))), None);
            let exact = NamePattern::parse(&format!("{label}.example.com")).unwrap();
            proptest::prop_assert!(exact.matches(&normalize_name(&upper)));
        }
    }

    // ----- handshakes --------------------------------------------------------------------------

    #[tokio::test]
    async fn negotiates_tls12_and_tls13() {
        let f = sni_fixture();
        let term = TlsTerminator::new("svc", &f.cfg).unwrap();

        let (server, client) = handshake(
            &term,
            client_config(f.ca.roots(), TLS12_ONLY, &[], true),
            "default.test",
        )
        .await;
        let info = server.unwrap();
        assert_eq!(info.version, "TLSv1.2");
        assert!(info.cipher.starts_with("TLS_ECDHE_"), "{}", info.cipher);
        assert_eq!(
            client.unwrap().version,
            Some(rustls::ProtocolVersion::TLSv1_2)
        );

        let (server, client) = handshake(
            &term,
            client_config(f.ca.roots(), TLS13_ONLY, &[], true),
            "default.test",
        )
        .await;
        let info = server.unwrap();
        assert_eq!(info.version, "TLSv1.3");
        assert!(info.cipher.starts_with("TLS13_"), "{}", info.cipher);
        assert_eq!(
            client.unwrap().version,
            Some(rustls::ProtocolVersion::TLSv1_3)
        );

        // Both offered: 1.3 wins.
        let (server, _) = handshake(
            &term,
            client_config(f.ca.roots(), ALL, &[], true),
            "default.test",
        )
        .await;
        assert_eq!(server.unwrap().version, "TLSv1.3");
    }

    #[tokio::test]
    async fn min_version_13_refuses_tls12_client() {
        let f = sni_fixture();
        let mut cfg = f.cfg.clone();
        cfg.min_version = TlsVersion::V1_3;
        let term = TlsTerminator::new("svc", &cfg).unwrap();

        let (server, client) = handshake(
            &term,
            client_config(f.ca.roots(), TLS12_ONLY, &[], true),
            "default.test",
        )
        .await;
        assert!(
            matches!(server, Err(TlsAcceptError::Handshake(_))),
            "{server:?}"
        );
        assert!(client.is_err());

        let (server, client) = handshake(
            &term,
            client_config(f.ca.roots(), ALL, &[], true),
            "default.test",
        )
        .await;
        assert_eq!(server.unwrap().version, "TLSv1.3");
        client.unwrap();
    }

    #[tokio::test]
    async fn alpn_chosen_as_offered() {
        let f = sni_fixture();
        let term = TlsTerminator::new("svc", &f.cfg).unwrap();
        for (offered, expected) in [
            (&["http/1.1"][..], Some("http/1.1")),
            (&["h2"][..], Some("h2")),
            (&["http/1.1", "h2"][..], Some("h2")), // server preference
            (&[][..], None),
        ] {
            for versions in [TLS12_ONLY, TLS13_ONLY] {
                let (server, client) = handshake(
                    &term,
                    client_config(f.ca.roots(), versions, offered, true),
                    "default.test",
                )
                .await;
                assert_eq!(server.unwrap().alpn.as_deref(), expected, "{offered:?}");
                assert_eq!(client.unwrap().alpn.as_deref(), expected, "{offered:?}");
            }
        }

        // A service speaking only http/1.1 refuses an h2-only client.
        let mut cfg = f.cfg.clone();
        cfg.alpn = vec!["http/1.1".to_owned()];
        let term = TlsTerminator::new("svc", &cfg).unwrap();
        let (server, client) = handshake(
            &term,
            client_config(f.ca.roots(), ALL, &["h2"], true),
            "default.test",
        )
        .await;
        assert!(
            matches!(server, Err(TlsAcceptError::Handshake(_))),
            "{server:?}"
        );
        assert!(client.is_err());
    }

    #[tokio::test]
    async fn sni_selects_certificate() {
        let f = sni_fixture();
        let term = TlsTerminator::new("svc", &f.cfg).unwrap();
        for (name, leaf) in [
            ("api.example.com", &f.api),  // exact beats the earlier wildcard
            ("foo.example.com", &f.wild), // wildcard
            ("default.test", &f.default), // exact on the default entry
        ] {
            for versions in [TLS12_ONLY, TLS13_ONLY] {
                let (server, client) = handshake(
                    &term,
                    client_config(f.ca.roots(), versions, &[], true),
                    name,
                )
                .await;
                assert_eq!(server.unwrap().server_name.as_deref(), Some(name));
                assert_eq!(client.unwrap().peer, leaf.der, "{name}");
            }
        }
    }

    #[tokio::test]
    async fn no_sni_gets_default_certificate() {
        let f = sni_fixture();
        let term = TlsTerminator::new("svc", &f.cfg).unwrap();
        // Without SNI the client still verifies the certificate for `default.test`.
        let (server, client) = handshake(
            &term,
            client_config(f.ca.roots(), ALL, &[], false),
            "default.test",
        )
        .await;
        assert_eq!(server.unwrap().server_name, None);
        assert_eq!(client.unwrap().peer, f.default.der);
    }

    #[tokio::test]
    async fn unknown_sni_is_refused() {
        let f = sni_fixture();
        let term = TlsTerminator::new("svc", &f.cfg).unwrap();
        for name in ["other.test", "example.com", "a.b.example.com"] {
            let (server, client) =
                handshake(&term, client_config(f.ca.roots(), ALL, &[], true), name).await;
            assert_eq!(
                server.unwrap_err(),
                TlsAcceptError::UnknownServerName(name.to_owned())
            );
            assert!(client.is_err());
        }
        let (server, _) = handshake(
            &term,
            client_config(f.ca.roots(), ALL, &[], true),
            "OTHER.test",
        )
        .await;
        assert_eq!(
            server.unwrap_err(),
            TlsAcceptError::UnknownServerName("other.test".to_owned())
        );
    }

    #[tokio::test]
    async fn plaintext_is_not_tls_and_not_consumed() {
        let f = sni_fixture();
        let term = TlsTerminator::new("svc", &f.cfg).unwrap();
        let request = b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n";

        // accept_tcp
        let (addr, server) = serve_one(&term).await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(request).await.unwrap();
        assert_eq!(server.await.unwrap().unwrap_err(), TlsAcceptError::NotTls);

        // sniff leaves the bytes for the caller.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(request).await.unwrap();
        let (mut accepted, _) = listener.accept().await.unwrap();
        assert_eq!(term.sniff(&accepted).await, Err(TlsAcceptError::NotTls));
        let mut buf = vec![0u8; request.len()];
        accepted.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, request);

        // The generic variant (no peek) still classifies it.
        let (mut client, server) = tokio::io::duplex(4096);
        client.write_all(request).await.unwrap();
        assert_eq!(
            term.accept(server).await.unwrap_err(),
            TlsAcceptError::NotTls
        );

        // A client closing at once is a handshake failure, not NotTls.
        let (addr, server) = serve_one(&term).await;
        drop(TcpStream::connect(addr).await.unwrap());
        assert!(matches!(
            server.await.unwrap(),
            Err(TlsAcceptError::Handshake(_))
        ));
    }

    #[tokio::test]
    async fn generic_accept_handshakes() {
        let f = sni_fixture();
        let term = TlsTerminator::new("svc", &f.cfg).unwrap();
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let connector = TlsConnector::from(client_config(f.ca.roots(), ALL, &["h2"], true));
        // The client stream is handed back (not dropped) so the server can finish writing.
        let client = tokio::spawn(async move {
            connector
                .connect(ServerName::try_from("api.example.com").unwrap(), client_io)
                .await
        });
        let (_tls, info) = term.accept(server_io).await.unwrap();
        assert_eq!(info.alpn.as_deref(), Some("h2"));
        assert_eq!(info.server_name.as_deref(), Some("api.example.com"));
        let client = client.await.unwrap().unwrap();
        assert_eq!(
            client.get_ref().1.peer_certificates().unwrap()[0],
            f.api.der
        );
    }

    #[tokio::test]
    async fn silent_client_times_out() {
        let f = sni_fixture();
        let mut cfg = f.cfg.clone();
        cfg.handshake_timeout_ms = 200;
        let term = TlsTerminator::new("svc", &cfg).unwrap();

        // Sends nothing.
        let (addr, server) = serve_one(&term).await;
        let _tcp = TcpStream::connect(addr).await.unwrap();
        let started = std::time::Instant::now();
        assert_eq!(server.await.unwrap().unwrap_err(), TlsAcceptError::Timeout);
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(150) && elapsed < Duration::from_secs(3),
            "{elapsed:?}"
        );

        // Starts a handshake record and stalls: the deadline covers the whole handshake.
        let (addr, server) = serve_one(&term).await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
        assert_eq!(server.await.unwrap().unwrap_err(), TlsAcceptError::Timeout);
    }

    #[tokio::test]
    async fn loads_pkcs8_pkcs1_and_sec1_keys() {
        let dir = TempDir::new("keys");
        let ca = Ca::new("Test CA");
        let rsa = ca.leaf_with_key(&["rsa.test"], KeyPair::from_pem(TEST_RSA_PKCS8).unwrap());
        let ec = ca.leaf(&["ec.test"]);
        let pkcs8 = ca.leaf(&["pkcs8.test"]);
        let rsa_entry = CertEntry {
            cert: dir.write("rsa.crt", &rsa.cert_pem),
            key: dir.write(
                "rsa.key",
                pem_encode("RSA PRIVATE KEY", &pkcs8_inner(&rsa.key_der)),
            ),
            server_names: vec!["rsa.test".to_owned()],
        };
        let ec_entry = CertEntry {
            cert: dir.write("ec.crt", &ec.cert_pem),
            key: dir.write(
                "ec.key",
                pem_encode("EC PRIVATE KEY", &pkcs8_inner(&ec.key_der)),
            ),
            server_names: vec!["ec.test".to_owned()],
        };
        assert!(
            std::fs::read_to_string(&rsa_entry.key)
                .unwrap()
                .contains("BEGIN RSA PRIVATE KEY")
        );
        assert!(
            std::fs::read_to_string(&ec_entry.key)
                .unwrap()
                .contains("BEGIN EC PRIVATE KEY")
        );
        let cfg = server_cfg(vec![
            pkcs8.write(&dir, "pkcs8", &["pkcs8.test"]),
            rsa_entry.clone(),
            ec_entry,
        ]);
        let term = TlsTerminator::new("svc", &cfg).unwrap();
        for (name, leaf) in [("rsa.test", &rsa), ("ec.test", &ec), ("pkcs8.test", &pkcs8)] {
            for versions in [TLS12_ONLY, TLS13_ONLY] {
                let (server, client) =
                    handshake(&term, client_config(ca.roots(), versions, &[], true), name).await;
                server.unwrap();
                assert_eq!(client.unwrap().peer, leaf.der, "{name}");
            }
        }

        // An RSA key does not match an EC certificate.
        let e = TlsTerminator::new(
            "svc",
            &server_cfg(vec![CertEntry {
                cert: dir.path("ec.crt"),
                ..rsa_entry
            }]),
        )
        .unwrap_err();
        assert!(e.problem.contains("does not match"), "{e}");
    }

    #[tokio::test]
    async fn hot_reload_swaps_certificates_and_keeps_old_on_error() {
        let dir = TempDir::new("reload");
        let ca = Ca::new("Test CA");
        let first = ca.leaf(&["reload.test"]);
        let entry = first.write(&dir, "svc", &["reload.test"]);
        let term = TlsTerminator::new("svc", &server_cfg(vec![entry.clone()])).unwrap();
        let client = || client_config(ca.roots(), ALL, &[], true);

        assert_eq!(term.reload_if_changed(), Ok(false));
        let (server, view) = handshake(&term, client(), "reload.test").await;
        server.unwrap();
        assert_eq!(view.unwrap().peer, first.der);

        // An established connection, to check it survives the swap.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let term2 = term.clone();
        let echo = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let (mut tls, _) = term2.accept_tcp(tcp).await.unwrap();
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await.unwrap();
            tls.write_all(&buf).await.unwrap();
            tls.flush().await.unwrap();
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut established = TlsConnector::from(client())
            .connect(ServerName::try_from("reload.test").unwrap(), tcp)
            .await
            .unwrap();

        // New certificate and key on disk.
        let second = ca.leaf(&["reload.test"]);
        second.write(&dir, "svc", &["reload.test"]);
        assert_eq!(term.reload_if_changed(), Ok(true));
        assert_eq!(term.reload_if_changed(), Ok(false));
        let (server, view) = handshake(&term, client(), "reload.test").await;
        server.unwrap();
        assert_eq!(view.unwrap().peer, second.der);

        established.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        established.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        assert_eq!(
            established.get_ref().1.peer_certificates().unwrap()[0],
            first.der
        );
        echo.await.unwrap();

        // A bad replacement: a key that does not match, then a truncated certificate.
        let third = ca.leaf(&["reload.test"]);
        dir.write("svc.key", &third.key_pem);
        let e = term.reload_if_changed().unwrap_err();
        assert!(e.problem.contains("does not match"), "{e}");
        assert_eq!(e.path.as_deref(), Some(entry.key.as_path()));
        dir.write("svc.key", &second.key_pem);
        dir.write("svc.crt", &second.cert_pem[..40]);
        let e = term.reload_if_changed().unwrap_err();
        assert_eq!(e.path.as_deref(), Some(entry.cert.as_path()));
        let (server, view) = handshake(&term, client(), "reload.test").await;
        server.unwrap();
        assert_eq!(
            view.unwrap().peer,
            second.der,
            "the old certificate stays in force"
        );

        // Removing a file is an error too; fixing the files recovers.
        std::fs::remove_file(&entry.cert).unwrap();
        assert!(
            term.reload_if_changed()
                .unwrap_err()
                .problem
                .contains("cannot read file")
        );
        third.write(&dir, "svc", &["reload.test"]);
        assert_eq!(term.reload_if_changed(), Ok(true));
        let (server, view) = handshake(&term, client(), "reload.test").await;
        server.unwrap();
        assert_eq!(view.unwrap().peer, third.der);
    }

    // ----- upstream ----------------------------------------------------------------------------

    /// A plain rustls server for one connection; answers "ok"; reports whether the client
    /// presented a certificate.
    async fn upstream_server(
        leaf: &Leaf,
        client_ca: Option<&Ca>,
        alpn: &[&str],
    ) -> (
        SocketAddr,
        JoinHandle<Result<Option<CertificateDer<'static>>, String>>,
    ) {
        let chain = vec![leaf.der.clone()];
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            Some(ca) => builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(ca.roots(), provider())
                    .build()
                    .unwrap(),
            ),
            None => builder.with_no_client_auth(),
        };
        let mut cfg = builder.with_single_cert(chain, key).unwrap();
        cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
            tls.write_all(b"ok").await.map_err(|e| e.to_string())?;
            tls.flush().await.map_err(|e| e.to_string())?;
            Ok(tls.get_ref().1.peer_certificates().map(|c| c[0].clone()))
        });
        (addr, task)
    }

    /// Connects through `up` (claiming the destination was `dst_ip`) and reads "ok".
    async fn upstream_roundtrip(
        up: &UpstreamTls,
        addr: SocketAddr,
        dst_ip: IpAddr,
    ) -> io::Result<Option<String>> {
        let tcp = TcpStream::connect(addr).await?;
        let (mut tls, alpn) = up.connect(tcp, dst_ip).await?;
        let mut buf = [0u8; 2];
        tls.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"ok");
        Ok(alpn)
    }

    const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[tokio::test]
    async fn upstream_verifies_with_configured_ca() {
        let dir = TempDir::new("upstream");
        let ca = Ca::new("Test CA");
        let other_ca = Ca::new("Other CA");
        let ca_file = dir.write("ca.pem", ca.pem());
        let good = ca.leaf(&["upstream.test"]);
        let foreign = other_ca.leaf(&["upstream.test"]);
        let up = |alpn: &[&str], name: &str| {
            UpstreamTls::new(
                "svc",
                &UpstreamTlsConfig {
                    ca: Some(ca_file.clone()),
                    server_name: Some(name.to_owned()),
                    alpn: alpn.iter().map(|p| p.to_string()).collect(),
                    ..Default::default()
                },
            )
            .unwrap()
        };

        // Right CA, ALPN as configured.
        let (addr, server) = upstream_server(&good, None, &["h2", "http/1.1"]).await;
        let alpn = upstream_roundtrip(&up(&["h2"], "upstream.test"), addr, LOCALHOST)
            .await
            .unwrap();
        assert_eq!(alpn.as_deref(), Some("h2"));
        assert_eq!(server.await.unwrap(), Ok(None));
        let (addr, _server) = upstream_server(&good, None, &["h2", "http/1.1"]).await;
        let alpn = upstream_roundtrip(&up(&["http/1.1"], "upstream.test"), addr, LOCALHOST)
            .await
            .unwrap();
        assert_eq!(alpn.as_deref(), Some("http/1.1"));

        // Certificate from another CA.
        let (addr, server) = upstream_server(&foreign, None, &[]).await;
        let err = upstream_roundtrip(&up(&[], "upstream.test"), addr, LOCALHOST)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("certificate"), "{err}");
        assert!(server.await.unwrap().is_err());

        // Right CA, wrong name.
        let (addr, _server) = upstream_server(&good, None, &[]).await;
        let err = upstream_roundtrip(&up(&[], "elsewhere.test"), addr, LOCALHOST)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("certificate"), "{err}");

        // System roots do not trust the test CA (or there are none at all).
        match UpstreamTls::new(
            "svc",
            &UpstreamTlsConfig {
                server_name: Some("upstream.test".to_owned()),
                ..Default::default()
            },
        ) {
            Err(e) => assert!(e.problem.contains("system root"), "{e}"),
            Ok(system) => {
                let (addr, _server) = upstream_server(&good, None, &[]).await;
                assert!(upstream_roundtrip(&system, addr, LOCALHOST).await.is_err());
            }
        }
    }

    #[tokio::test]
    async fn upstream_verifies_ip_san_without_server_name() {
        let dir = TempDir::new("upstream-ip");
        let ca = Ca::new("Test CA");
        let ca_file = dir.write("ca.pem", ca.pem());
        let by_ip = ca.leaf(&["127.0.0.1"]);
        let up = UpstreamTls::new(
            "svc",
            &UpstreamTlsConfig {
                ca: Some(ca_file),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            up.server_name_for(LOCALHOST),
            ServerName::IpAddress(LOCALHOST.into())
        );

        let (addr, server) = upstream_server(&by_ip, None, &["http/1.1"]).await;
        let alpn = upstream_roundtrip(&up, addr, LOCALHOST).await.unwrap();
        assert_eq!(alpn.as_deref(), Some("http/1.1"));
        server.await.unwrap().unwrap();

        // The original destination is what gets verified: another IP fails.
        let (addr, _server) = upstream_server(&by_ip, None, &[]).await;
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(upstream_roundtrip(&up, addr, other).await.is_err());
    }

    #[tokio::test]
    async fn upstream_mtls_client_certificate() {
        let dir = TempDir::new("upstream-mtls");
        let ca = Ca::new("Test CA");
        let client_ca = Ca::new("Client CA");
        let server_leaf = ca.leaf(&["upstream.test"]);
        let client_leaf = client_ca.leaf(&["interceptor.client"]);
        let ca_file = dir.write("ca.pem", ca.pem());
        let client_entry = client_leaf.write(&dir, "client", &[]);
        let with_cert = UpstreamTls::new(
            "svc",
            &UpstreamTlsConfig {
                ca: Some(ca_file.clone()),
                server_name: Some("upstream.test".to_owned()),
                client_cert: Some(client_entry.cert.clone()),
                client_key: Some(client_entry.key.clone()),
                ..Default::default()
            },
        )
        .unwrap();
        let without_cert = UpstreamTls::new(
            "svc",
            &UpstreamTlsConfig {
                ca: Some(ca_file),
                server_name: Some("upstream.test".to_owned()),
                ..Default::default()
            },
        )
        .unwrap();

        let (addr, server) = upstream_server(&server_leaf, Some(&client_ca), &[]).await;
        upstream_roundtrip(&with_cert, addr, LOCALHOST)
            .await
            .unwrap();
        assert_eq!(
            server.await.unwrap().unwrap(),
            Some(client_leaf.der.clone())
        );

        let (addr, server) = upstream_server(&server_leaf, Some(&client_ca), &[]).await;
        assert!(
            upstream_roundtrip(&without_cert, addr, LOCALHOST)
                .await
                .is_err()
        );
        assert!(server.await.unwrap().is_err());
    }

    #[tokio::test]
    async fn upstream_reloads_ca() {
        let dir = TempDir::new("upstream-reload");
        let ca = Ca::new("Test CA");
        let other_ca = Ca::new("Other CA");
        let ca_file = dir.write("ca.pem", ca.pem());
        let leaf = ca.leaf(&["upstream.test"]);
        let up = UpstreamTls::new(
            "svc",
            &UpstreamTlsConfig {
                ca: Some(ca_file),
                server_name: Some("upstream.test".to_owned()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(up.reload_if_changed(), Ok(false));
        let (addr, _server) = upstream_server(&leaf, None, &[]).await;
        upstream_roundtrip(&up, addr, LOCALHOST).await.unwrap();

        dir.write("ca.pem", "not a certificate");
        assert!(
            up.reload_if_changed()
                .unwrap_err()
                .problem
                .contains("no certificate found")
        );
        let (addr, _server) = upstream_server(&leaf, None, &[]).await;
        upstream_roundtrip(&up, addr, LOCALHOST).await.unwrap();

        dir.write("ca.pem", other_ca.pem());
        assert_eq!(up.reload_if_changed(), Ok(true));
        let (addr, _server) = upstream_server(&leaf, None, &[]).await;
        assert!(upstream_roundtrip(&up, addr, LOCALHOST).await.is_err());
    }
}
