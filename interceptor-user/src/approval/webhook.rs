//! The approval webhook: a JSON POST when a call is held and when it is decided (approved,
//! denied, expired, abandoned), so approvers learn of it without watching the CLI.
//!
//! Body: `{"type": "approval.<step>", "event": <ApprovalEvent>}` (arguments only as a
//! summary, never string values). Headers: `Content-Type: application/json`,
//! `X-Interceptor-Event: <step>`, `X-Interceptor-Timestamp: <unix seconds>` and, with a
//! `secret_file`, `X-Interceptor-Signature: sha256=<hex HMAC-SHA256(secret, timestamp "." body)>`.
//! Deliveries go out in order from one task, each tried three times (0.5 s and 2 s apart)
//! with `timeout_ms` per attempt; a 2xx answer is success. Failures are logged
//! (`event = "webhook_failed"`) and never hold up the data path: the queue is bounded and a
//! full queue drops the delivery with a log line.
use std::{
    net::SocketAddr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{Request, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use sha2::Sha256;
use tokio::{net::TcpStream, sync::mpsc};
use tracing::{debug, warn};

use super::event::ApprovalEvent;
use crate::config::WebhookConfig;

const QUEUE: usize = 1024;

/// Sends approval events to one URL.
pub struct Webhook {
    tx: mpsc::Sender<(String, Bytes)>,
    outstanding: Arc<AtomicUsize>,
}

struct Target {
    uri: Uri,
    host: String,
    port: u16,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls_pki_types::ServerName<'static>,
    )>,
    secret: Option<Vec<u8>>,
    timeout: Duration,
}

fn roots(ca: Option<&Path>) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            use rustls_pki_types::pem::PemObject as _;
            let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            for c in certs {
                let c = c.map_err(|e| format!("{}: {e}", path.display()))?;
                roots
                    .add(c)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
        }
    }
    if roots.is_empty() {
        return Err("no CA certificate to verify the webhook's HTTPS with".into());
    }
    Ok(roots)
}

impl Webhook {
    /// Checks the configuration and starts the delivery task (needs a tokio runtime).
    pub fn start(cfg: &WebhookConfig) -> Result<Webhook, String> {
        let uri: Uri = cfg
            .url
            .parse()
            .map_err(|e| format!("url {:?}: {e}", cfg.url))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("url {:?} must be http:// or https://", cfg.url)),
        };
        let host = uri
            .host()
            .ok_or_else(|| format!("url {:?} has no host", cfg.url))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots(cfg.ca.as_deref())?)
                .with_no_client_auth();
            let name = rustls_pki_types::ServerName::try_from(host.clone())
                .map_err(|_| format!("url {:?}: {host:?} is not a valid TLS name", cfg.url))?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        let secret = match &cfg.secret_file {
            None => None,
            Some(f) => {
                crate::config::check_secret_file(f)?;
                let s = std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?;
                let s = String::from_utf8_lossy(&s).trim_end().as_bytes().to_vec();
                if s.is_empty() {
                    return Err(format!("{} is empty", f.display()));
                }
                Some(s)
            }
        };
        let target = Arc::new(Target {
            uri,
            host,
            port,
            tls,
            secret,
            timeout: Duration::from_millis(cfg.timeout_ms.max(100)),
        });
        let (tx, mut rx) = mpsc::channel::<(String, Bytes)>(QUEUE);
        let outstanding = Arc::new(AtomicUsize::new(0));
        let out2 = outstanding.clone();
        tokio::spawn(async move {
            while let Some((step, body)) = rx.recv().await {
                let mut last = String::new();
                let mut ok = false;
                for (attempt, pause) in [0u64, 500, 2000].into_iter().enumerate() {
                    if pause > 0 {
                        tokio::time::sleep(Duration::from_millis(pause)).await;
                    }
                    match tokio::time::timeout(target.timeout, deliver(&target, &step, &body)).await
                    {
                        Ok(Ok(())) => {
                            debug!(event = "webhook_delivered", step = %step, attempt = attempt + 1, "approval webhook delivered");
                            ok = true;
                            break;
                        }
                        Ok(Err(e)) => last = e,
                        Err(_) => last = format!("no answer within {:?}", target.timeout),
                    }
                }
                if !ok {
                    warn!(event = "webhook_failed", step = %step, url = %target.uri, error = %last, "approval webhook not delivered after 3 attempts");
                }
                out2.fetch_sub(1, Ordering::AcqRel);
            }
        });
        Ok(Webhook { tx, outstanding })
    }

    /// Queues one event (never blocks).
    pub fn send(&self, e: &ApprovalEvent) {
        let body = serde_json::json!({
            "type": format!("approval.{}", e.step.as_str()),
            "event": e,
        });
        let body = Bytes::from(body.to_string());
        self.outstanding.fetch_add(1, Ordering::AcqRel);
        if self
            .tx
            .try_send((e.step.as_str().to_string(), body))
            .is_err()
        {
            self.outstanding.fetch_sub(1, Ordering::AcqRel);
            warn!(event = "webhook_failed", approval_id = %e.approval_id, step = e.step.as_str(), error = "queue full", "approval webhook dropped");
        }
    }

    /// Waits until every queued delivery was attempted, at most `within`.
    pub async fn flush(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.outstanding.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// HMAC-SHA256 over `timestamp "." body`, hex.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

async fn deliver(t: &Target, step: &str, body: &Bytes) -> Result<(), String> {
    let addr: SocketAddr = tokio::net::lookup_host((t.host.as_str(), t.port))
        .await
        .map_err(|e| format!("resolving {}: {e}", t.host))?
        .next()
        .ok_or_else(|| format!("{} has no address", t.host))?;
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let ts = super::event::unix_ms(std::time::SystemTime::now()) / 1000;
    let path = t
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    let authority = t
        .uri
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_else(|| t.host.clone());
    let mut b = Request::post(path)
        .header(header::HOST, authority)
        .header(header::CONTENT_TYPE, "application/json")
        .header(
            header::USER_AGENT,
            concat!("interceptor/", env!("CARGO_PKG_VERSION")),
        )
        .header("x-interceptor-event", step)
        .header("x-interceptor-timestamp", ts.to_string());
    if let Some(s) = &t.secret {
        b = b.header(
            "x-interceptor-signature",
            format!("sha256={}", signature(s, ts, body)),
        );
    }
    let req = b.body(Full::new(body.clone())).map_err(|e| e.to_string())?;
    let status = match &t.tls {
        None => send(TokioIo::new(tcp), req).await?,
        Some((connector, name)) => {
            let tls = connector
                .connect(name.clone(), tcp)
                .await
                .map_err(|e| format!("TLS with {}: {e}", t.host))?;
            send(TokioIo::new(tls), req).await?
        }
    };
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("answered HTTP {}", status.as_u16()))
    }
}

async fn send<I>(io: I, req: Request<Full<Bytes>>) -> Result<http::StatusCode, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("sending: {e}"));
    let out = match resp {
        Ok(r) => {
            let status = r.status();
            let _ = r.into_body().collect().await;
            Ok(status)
        }
        Err(e) => Err(e),
    };
    task.abort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // RFC 4231-style check with a known key: HMAC-SHA256("key", "1.{}").
        let s = signature(b"key", 1, b"{}");
        assert_eq!(s.len(), 64);
        assert_ne!(s, signature(b"key", 2, b"{}"));
        assert_ne!(s, signature(b"other", 1, b"{}"));
        let mut mac = Hmac::<Sha256>::new_from_slice(b"key").unwrap();
        mac.update(b"1.{}");
        assert_eq!(s, hex::encode(mac.finalize().into_bytes()));
    }
}
