//! The HTTP side of an MCP service: TLS termination, HTTP/1.1 and HTTP/2 toward callers,
//! request limits and smuggling defences, MCP request classification, the exchange pipeline,
//! and the pooled upstream client (optionally TLS, HTTP/1.1 or HTTP/2) toward the real server.
//!
//! Requests are small and are read whole (up to `limits.max_body_bytes`) because every phase
//! needs the parsed JSON-RPC body before anything reaches the server. Responses are never
//! buffered: JSON bodies stream through an envelope scanner, SSE streams through an event
//! parser, both only observing the bytes they forward, so a 25 MB result or a long-lived
//! notification stream costs a few buffers, not its size.
use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Instant, SystemTime},
};

use bytes::Bytes;
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, header,
};
use http_body::Frame;
use http_body_util::{BodyExt, Full, Limited, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{
        Client,
        connect::{Connected, Connection},
    },
    rt::{TokioExecutor, TokioIo},
};
use sha2::{Digest, Sha256};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::{Notify, watch},
};
use tracing::{debug, warn};

use crate::{
    auth::{Auth, Authenticated, AuthnFailure},
    config::{NonMcp, ServiceAuth, ServiceConfig},
    error::ProxyError,
    mcp,
    net::ConnInfo,
    pipeline::{Decision, ExchangeRecord, Pipeline, RequestView, Transport, durable},
    policy::{PolicyDecision, PolicyRequest, Principal},
    redact::{
        Finding, TextRedactor,
        engine::{Engine, MaskView},
        stream::Redacting,
        view::{ViewRedactor, common_view, recordable_params},
    },
    tls::{TlsTerminator, UpstreamTls},
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type RespBody = UnsyncBoxBody<Bytes, BoxError>;

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
];

// ------------------------------------------------------------------ upstream connector

/// Opens the agent's connection to the real server: marked TCP (never steered back to the
/// agent), then TLS when the service's server speaks it.
#[derive(Clone)]
pub struct Dialer {
    pub mark: u32,
    pub timeout: std::time::Duration,
    pub tls: Option<Arc<UpstreamTls>>,
}

pub enum UpstreamIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>, bool),
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s, _) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s, _) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s, _) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s, _) => s.is_write_vectored(),
        }
    }
}

/// hyper-util's client wants to know about the connection it got.
pub struct UpstreamConn(TokioIo<UpstreamIo>);

impl Connection for UpstreamConn {
    fn connected(&self) -> Connected {
        match self.0.inner() {
            UpstreamIo::Tls(_, true) => Connected::new().negotiated_h2(),
            _ => Connected::new(),
        }
    }
}

impl hyper::rt::Read for UpstreamConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for UpstreamConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

impl tower_service::Service<Uri> for Dialer {
    type Response = UpstreamConn;
    type Error = ProxyError;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<UpstreamConn, ProxyError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let d = self.clone();
        Box::pin(async move {
            let addr: SocketAddr = uri
                .authority()
                .and_then(|a| a.as_str().parse().ok())
                .ok_or_else(|| {
                    ProxyError::internal(format!("upstream URI {uri} has no address"))
                })?;
            let tcp = crate::net::connect_marked(addr, d.mark, d.timeout).await?;
            match &d.tls {
                None => Ok(UpstreamConn(TokioIo::new(UpstreamIo::Plain(tcp)))),
                Some(tls) => {
                    let (s, alpn) = tls.connect(tcp, addr.ip()).await.map_err(|e| {
                        ProxyError::upstream(format!("TLS handshake with {addr}"), true).because(e)
                    })?;
                    let h2 = alpn.as_deref() == Some("h2");
                    Ok(UpstreamConn(TokioIo::new(UpstreamIo::Tls(Box::new(s), h2))))
                }
            }
        })
    }
}

// ------------------------------------------------------------------ the service

/// Everything one MCP service needs at run time.
pub struct McpService {
    pub cfg: Arc<ServiceConfig>,
    pub tls: Option<TlsTerminator>,
    client: Client<Dialer, Full<Bytes>>,
    upstream_scheme: &'static str,
    upstream_h2: bool,
    upstream_auth: Option<(HeaderName, HeaderValue)>,
    pub pipeline: Pipeline,
    /// Identity and policy (only for services with `[services.auth]`).
    pub auth: Option<Arc<Auth>>,
    /// Redaction of everything the server sends back (services with `[services.redact]`);
    /// each exchange sees it through the masking its policy decision chose.
    pub redaction: Option<Engine>,
    /// Redacts request parameters and names before they reach a log or record (every
    /// service; the built-in detectors where the service has no redaction of its own).
    records: Arc<dyn TextRedactor>,
    /// Legacy HTTP+SSE: exchanges waiting for their response on a session's GET /sse stream.
    legacy: Arc<LegacySessions>,
}

#[derive(Default)]
struct LegacySessions {
    pending: Mutex<HashMap<(String, String), Pending>>,
}

const LEGACY_PENDING_MAX: usize = 65_536;

impl McpService {
    pub fn new(
        cfg: Arc<ServiceConfig>,
        mark: u32,
        connect_timeout: std::time::Duration,
        pipeline: Pipeline,
        auth: Option<Arc<Auth>>,
        redaction: Option<Engine>,
        record_engine: Engine,
    ) -> anyhow::Result<McpService> {
        use anyhow::Context as _;
        let tls = match &cfg.tls {
            Some(t) => Some(TlsTerminator::new(&cfg.name, t)?),
            None => None,
        };
        let up_tls = match &cfg.upstream.tls {
            Some(t) => {
                // HTTP/2 toward a TLS server is negotiated with ALPN: offer h2 (only).
                let mut t = t.clone();
                if cfg.upstream.http2 {
                    t.alpn = vec!["h2".into()];
                }
                Some(Arc::new(UpstreamTls::new(&cfg.name, &t)?))
            }
            None => None,
        };
        let upstream_scheme = if up_tls.is_some() { "https" } else { "http" };
        let dialer = Dialer {
            mark,
            timeout: connect_timeout,
            tls: up_tls,
        };
        let mut b = Client::builder(TokioExecutor::new());
        // Idle connections are dropped before the server's keep-alive timeout can close them
        // under a request (see `UpstreamConfig::idle_timeout_ms`); 0 keeps none.
        let idle = cfg.upstream.idle_timeout_ms;
        b.pool_idle_timeout(std::time::Duration::from_millis(idle))
            .pool_max_idle_per_host(if idle == 0 { 0 } else { 256 })
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .http2_only(cfg.upstream.http2)
            .set_host(false);
        let client = b.build(dialer);
        let upstream_auth = match (&cfg.upstream.auth_header, &cfg.upstream.auth_value_file) {
            (Some(h), Some(f)) => {
                let v = std::fs::read_to_string(f)
                    .with_context(|| format!("service {}: reading {}", cfg.name, f.display()))?;
                let name = HeaderName::from_bytes(h.as_bytes())?;
                let mut value = HeaderValue::from_str(v.trim()).with_context(|| {
                    format!(
                        "service {}: {} is not a valid header value",
                        cfg.name,
                        f.display()
                    )
                })?;
                value.set_sensitive(true);
                Some((name, value))
            }
            _ => None,
        };
        let cfg_auth = cfg.auth.is_some();
        Ok(McpService {
            upstream_h2: cfg.upstream.http2,
            cfg,
            tls,
            client,
            upstream_scheme,
            upstream_auth,
            pipeline,
            auth: if cfg_auth { auth } else { None },
            redaction,
            records: crate::redact::view::for_records(&record_engine),
            legacy: Arc::new(LegacySessions::default()),
        })
    }
}

/// Per-connection state shared by the requests of one caller connection.
struct ConnCtx {
    svc: Arc<McpService>,
    info: ConnInfo,
    malformed: AtomicU32,
    close: Notify,
}

/// A stream that counts the bytes read from and written to it.
pub struct Counted<T> {
    inner: T,
    read: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.read
            .fetch_add((buf.filled().len() - before) as u64, Ordering::Relaxed);
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            this.written.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &r {
            this.written.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Serves one accepted connection of an MCP service until it closes. Returns the bytes the
/// caller sent and received on the wire, and why the connection ended.
pub async fn serve(
    svc: Arc<McpService>,
    info: ConnInfo,
    tcp: TcpStream,
    mut hard_stop: watch::Receiver<bool>,
) -> (u64, u64, String) {
    let ctx = Arc::new(ConnCtx {
        svc: svc.clone(),
        info,
        malformed: AtomicU32::new(0),
        close: Notify::new(),
    });
    if let Decision::Deny { reason, rule, .. } = svc.pipeline.connection_accepted(&ctx.info) {
        warn!(
            event = "conn_denied",
            conn_id = ctx.info.id,
            service = %svc.cfg.name,
            peer = %ctx.info.caller.peer(),
            rule = %rule,
            reason = %reason,
            "connection refused by the pipeline"
        );
        return (0, 0, format!("denied by {rule}: {reason}"));
    }
    let (read, written) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let reason = match &svc.tls {
        Some(tls) => {
            if let Err(e) = tls.sniff(&tcp).await {
                log_tls_error(&ctx, &e);
                return (0, 0, format!("tls: {e}"));
            }
            let counted = Counted {
                inner: tcp,
                read: read.clone(),
                written: written.clone(),
            };
            match tls.accept(counted).await {
                Ok((stream, hs)) => {
                    debug!(conn_id = ctx.info.id, sni = ?hs.server_name, alpn = ?hs.alpn, version = %hs.version, "TLS established");
                    serve_io(ctx, TokioIo::new(stream), &mut hard_stop).await
                }
                Err(e) => {
                    log_tls_error(&ctx, &e);
                    format!("tls: {e}")
                }
            }
        }
        None => {
            let counted = Counted {
                inner: tcp,
                read: read.clone(),
                written: written.clone(),
            };
            serve_io(ctx, TokioIo::new(counted), &mut hard_stop).await
        }
    };
    (
        read.load(Ordering::Relaxed),
        written.load(Ordering::Relaxed),
        reason,
    )
}

fn log_tls_error(ctx: &ConnCtx, e: &crate::tls::TlsAcceptError) {
    warn!(
        event = "tls_error",
        conn_id = ctx.info.id,
        service = %ctx.svc.cfg.name,
        peer = %ctx.info.caller.peer(),
        error = %e,
        "TLS handshake failed; connection closed"
    );
}

async fn serve_io<I>(ctx: Arc<ConnCtx>, io: I, hard_stop: &mut watch::Receiver<bool>) -> String
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let limits = ctx.svc.cfg.limits.clone();
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .max_buf_size(limits.max_header_bytes.max(8192))
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(30));
    builder
        .http2()
        .max_header_list_size(limits.max_header_bytes as u32)
        .max_concurrent_streams(256);
    let svc_ctx = ctx.clone();
    let service = hyper::service::service_fn(move |req| {
        let ctx = svc_ctx.clone();
        async move { Ok::<_, Infallible>(handle(ctx, req).await) }
    });
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let reason = tokio::select! {
        r = conn.as_mut() => match r { Ok(()) => "closed".to_string(), Err(e) => format!("http: {e}") },
        _ = ctx.close.notified() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
            "closed: too many malformed requests".to_string()
        }
        _ = wait_true(hard_stop) => "agent shutdown: grace period over".to_string(),
    };
    reason
}

async fn wait_true(rx: &mut watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

fn json_response(status: StatusCode, body: Bytes, close: bool) -> Response<RespBody> {
    let mut r = Response::new(Full::new(body).map_err(|e| match e {}).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if close {
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

/// A JSON-RPC error answer to a request we refuse, with a log line saying what and where.
fn refuse(
    ctx: &ConnCtx,
    status: StatusCode,
    code: i64,
    id: Option<&mcp::Id>,
    what: &str,
    malformed: bool,
) -> Response<RespBody> {
    let mut close = false;
    if malformed {
        let n = ctx.malformed.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= ctx.svc.cfg.limits.max_malformed_per_connection {
            close = true;
            ctx.close.notify_one();
        }
    }
    // The caller gets the reason as it is; a log or record gets it redacted (it can quote
    // what was sent: a header, a value, a path).
    let shown = recordable_text(ctx, what);
    warn!(
        event = "request_refused",
        service = %ctx.svc.cfg.name,
        conn_id = ctx.info.id,
        peer = %ctx.info.caller.peer(),
        status = status.as_u16(),
        code,
        reason = %shown,
        "request refused"
    );
    if let Some(a) = ctx.svc.pipeline.audit() {
        a.record(crate::audit::AuditEvent::new(
            "refused",
            serde_json::json!({
                "service": ctx.svc.cfg.name,
                "conn_id": ctx.info.id,
                "caller_kind": ctx.info.caller.kind(),
                "peer": ctx.info.caller.peer().to_string(),
                "http_status": status.as_u16(),
                "error_code": code,
                "reason": shown,
                "malformed": malformed,
            }),
        ));
    }
    json_response(status, mcp::error_response(id, code, what, None), close)
}

/// The request's target could not be turned into an upstream request.
fn bad_target(ctx: &ConnCtx, e: &ProxyError) -> Response<RespBody> {
    refuse(
        ctx,
        StatusCode::BAD_REQUEST,
        mcp::INVALID_REQUEST,
        None,
        &e.to_string(),
        true,
    )
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

async fn handle(ctx: Arc<ConnCtx>, req: Request<Incoming>) -> Response<RespBody> {
    // Smuggling defences (hyper already rejects obs-fold and invalid chunking in HTTP/1.1).
    let h = req.headers();
    if h.contains_key(header::TRANSFER_ENCODING) && h.contains_key(header::CONTENT_LENGTH) {
        return refuse(
            &ctx,
            StatusCode::BAD_REQUEST,
            mcp::INVALID_REQUEST,
            None,
            "both Transfer-Encoding and Content-Length present (request smuggling attempt)",
            true,
        );
    }
    if h.get_all(header::CONTENT_LENGTH).iter().count() > 1 {
        return refuse(
            &ctx,
            StatusCode::BAD_REQUEST,
            mcp::INVALID_REQUEST,
            None,
            "several Content-Length headers",
            true,
        );
    }
    let accepts_sse = header_str(h, "accept").is_some_and(|a| a.contains("text/event-stream"));
    // The masking of what a stream carries: the caller's grants, combined (see below).
    let mut stream_view = None;
    if let (Some(sa), Some(auth)) = (&ctx.svc.cfg.auth, &ctx.svc.auth) {
        let path = req.uri().path();
        if req.method() == Method::GET
            && (path == crate::auth::metadata_path(&sa.resource)
                || path == "/.well-known/oauth-protected-resource")
        {
            let doc = crate::auth::metadata_document(sa, auth.verifier.authorization_servers());
            return json_response(StatusCode::OK, Bytes::from(doc.to_string()), false);
        }
        if req.method() != Method::POST {
            // Streams and session ends need a valid token too (no per-message policy there).
            match auth
                .authenticate(sa, header_str(h, "authorization"), &ctx.info.caller)
                .await
            {
                Err(f) => return deny_authn(&ctx, sa, &f, Vec::new()).await,
                // A stream carries answers to several calls (all of them on the legacy SSE
                // channel): it gets what every grant of the caller allows, as a batch does.
                Ok(a) if req.method() == Method::GET => {
                    stream_view = caller_stream_view(&ctx, auth, &a.principal);
                }
                Ok(_) => {}
            }
        }
    }
    match *req.method() {
        Method::POST => {
            // A call held for approval may answer an SSE caller with a stream at once.
            let sse = accepts_sse
                && ctx
                    .svc
                    .auth
                    .as_ref()
                    .is_some_and(|a| !a.policy().approval_rules().is_empty());
            crate::approval::gate::serve(sse, |hold| handle_post(ctx, req, hold)).await
        }
        Method::GET if accepts_sse => forward_stream(ctx, req, stream_view).await,
        Method::DELETE if h.contains_key("mcp-session-id") => forward_plain(ctx, req).await,
        _ => {
            if ctx.svc.cfg.non_mcp == NonMcp::Forward {
                forward_plain(ctx, req).await
            } else {
                let what = format!(
                    "{} {} is not an MCP request (this port only serves MCP)",
                    req.method(),
                    req.uri().path()
                );
                refuse(
                    &ctx,
                    StatusCode::NOT_FOUND,
                    mcp::INVALID_REQUEST,
                    None,
                    &what,
                    true,
                )
            }
        }
    }
}

/// The masking of a stream that carries answers to several calls of `who` (the GET stream;
/// the legacy SSE channel, where every answer of that transport comes): every grant the caller
/// holds for the service, combined as for a batch. `None` when the service does not redact.
fn caller_stream_view(ctx: &ConnCtx, auth: &Auth, who: &Principal) -> Option<MaskView> {
    ctx.svc.redaction.as_ref().map(|e| {
        let views = auth.policy().grant_views(&ctx.svc.cfg.name, who);
        let grants: Vec<_> = views.iter().map(|(m, r)| (&m[..], &r[..])).collect();
        common_view(e.default_view(), &grants)
    })
}

/// The legacy transport's POST target carries `session_id` in its query.
fn legacy_session(uri: &Uri) -> Option<String> {
    uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == "session_id" || k == "sessionId").then(|| v.to_string())
    })
}

struct Pending {
    rec: ExchangeRecord,
    started: Instant,
}

fn new_record(
    ctx: &ConnCtx,
    parts: &http::request::Parts,
    transport: Transport,
    msg: Option<(&mcp::Message, &serde_json::Value)>,
    request_bytes: u64,
) -> ExchangeRecord {
    let p = ctx.info.caller.process();
    // Names and parameters can carry personal data (`customers://jane@example.com`): they are
    // redacted before they are part of any record.
    let mut found: Vec<Finding> = Vec::new();
    let target = msg.and_then(|(m, _)| m.target_str()).map(|t| {
        let (t, mut f) = ctx.svc.records.redact(t);
        found.append(&mut f);
        t
    });
    let params = msg.and_then(|(_, v)| v.get("params")).map(|p| {
        let (p, mut f) = recordable_params(ctx.svc.records.as_ref(), p);
        found.append(&mut f);
        p
    });
    let msg = msg.map(|(m, _)| m);
    let recorded = |t: &str| recordable_text(ctx, t).into_owned();
    ExchangeRecord {
        service: ctx.svc.cfg.name.clone(),
        conn_id: ctx.info.id,
        caller_kind: ctx.info.caller.kind(),
        peer: ctx.info.caller.peer().to_string(),
        tgid: p.map(|p| p.tgid),
        uid: p.map(|p| p.uid),
        comm: p.map(|p| p.comm.clone()),
        cgroup: p.and_then(|p| p.cgroup.clone()),
        unit: p.and_then(|p| p.unit.clone()),
        transport,
        http_version: format!("{:?}", parts.version),
        // What the caller chose freely (a string id, a method name, a session or revision
        // header) is redacted like any text of the request: `"id": "export-jane@x.com"`.
        revision: header_str(&parts.headers, "mcp-protocol-version").map(&recorded),
        session: header_str(&parts.headers, "mcp-session-id")
            .map(&recorded)
            .or_else(|| legacy_session(&parts.uri).map(|s| recorded(&s))),
        jsonrpc_id: msg
            .and_then(|m| m.id.as_ref())
            .map(|i| recorded(&i.to_string())),
        method: msg.and_then(|m| m.method.as_deref()).map(&recorded),
        target,
        params,
        request_pseudonyms: found
            .iter()
            .map(|f| format!("{}:{}", f.entity, f.pseudonym))
            .collect(),
        request_bytes,
        response_bytes: 0,
        http_status: 0,
        outcome: String::new(),
        error_code: None,
        notifications: 0,
        upstream_attempts: 1,
        subject: None,
        issuer: None,
        client_id: None,
        groups: None,
        role: None,
        rule: None,
        purpose: None,
        lawful_basis: None,
        policy_version: None,
        masked: Default::default(),
        pseudonyms: Vec::new(),
        released: Vec::new(),
        arguments_redacted: false,
        response_sha256: None,
        response_excerpt: None,
        approval: None,
        started: SystemTime::now(),
        duration_ms: 0,
        request_record: None,
    }
}

/// The request body the server gets when the grant that allowed a message says
/// `redact_arguments`: that message's `arguments` (tools/call, prompts/get), or its completion
/// value and context arguments (completion/complete), redacted as the grant masks answers
/// (each value under its key; keys, names and everything else as they were). On a service
/// without `[services.redact]`, the built-in detectors mask as records do. `None` when no
/// message is to be rewritten; otherwise the new body and which messages were rewritten.
fn with_redacted_arguments(
    ctx: &ConnCtx,
    tree: &serde_json::Value,
    batch: bool,
    messages: &[mcp::Message],
    decisions: &[Option<PolicyDecision>],
) -> Option<(Bytes, Vec<bool>)> {
    use crate::redact::json::redact_value;
    let wanted = |i: usize| {
        decisions
            .get(i)
            .and_then(|d| d.as_ref())
            .filter(|d| d.allowed && d.redact_arguments)
    };
    if !(0..messages.len()).any(|i| wanted(i).is_some()) {
        return None;
    }
    let mut tree = tree.clone();
    let mut rewritten = vec![false; messages.len()];
    for (i, m) in messages.iter().enumerate() {
        let Some(d) = wanted(i) else { continue };
        let redactor: Arc<dyn crate::redact::TextRedactor> = match &ctx.svc.redaction {
            Some(e) => {
                let grant = [(&d.masking[..], &d.release[..])];
                exchange_redactor(e, Some(common_view(e.default_view(), &grant)))
            }
            None => ctx.svc.records.clone(),
        };
        let item = if batch {
            tree.get_mut(i)
        } else {
            Some(&mut tree)
        };
        let Some(params) = item.and_then(|v| v.get_mut("params")) else {
            continue;
        };
        match m.method.as_deref() {
            Some("tools/call" | "prompts/get") => {
                if let Some(a) = params.get_mut("arguments") {
                    redact_value(a, &*redactor);
                    rewritten[i] = true;
                }
            }
            Some("completion/complete") => {
                let label = params
                    .pointer("/argument/name")
                    .and_then(|n| n.as_str())
                    .map(str::to_string);
                if let Some(serde_json::Value::String(v)) = params.pointer_mut("/argument/value") {
                    let red = redactor.redact_labelled(label.as_deref(), v).0.into_owned();
                    *v = red;
                    rewritten[i] = true;
                }
                if let Some(a) = params.pointer_mut("/context/arguments") {
                    redact_value(a, &*redactor);
                    rewritten[i] = true;
                }
            }
            _ => {}
        }
    }
    Some((Bytes::from(tree.to_string()), rewritten))
}

fn upstream_request(
    ctx: &ConnCtx,
    parts: &http::request::Parts,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, ProxyError> {
    let svc = &ctx.svc;
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let uri: Uri = format!("{}://{}{}", svc.upstream_scheme, ctx.info.orig_dst, pq)
        .parse()
        .map_err(|e| ProxyError::client(format!("bad request target {pq:?}")).because(e))?;
    let mut b = Request::builder().method(parts.method.clone()).uri(uri);
    b = b.version(if svc.upstream_h2 {
        http::Version::HTTP_2
    } else {
        http::Version::HTTP_11
    });
    let mut req = b
        .body(Full::new(body))
        .map_err(|e| ProxyError::internal("building upstream request").because(e))?;
    let headers = req.headers_mut();
    // A redacting service's answers are rewritten as they stream: they must come as they
    // are, not compressed (a compressed body cannot be read, so nothing in it can be masked).
    let redacting = svc.redaction.is_some();
    for (k, v) in parts.headers.iter() {
        if HOP_BY_HOP.contains(&k.as_str()) || k == header::HOST || k == header::CONTENT_LENGTH {
            continue;
        }
        if redacting && k == header::ACCEPT_ENCODING {
            continue;
        }
        let forward_auth = svc.cfg.upstream.forward_client_authorization
            || svc.cfg.auth.as_ref().is_some_and(|a| a.forward_token);
        if k == header::AUTHORIZATION && !forward_auth {
            continue;
        }
        headers.append(k.clone(), v.clone());
    }
    if redacting {
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
    }
    // Keep the caller's Host (the server may check it); HTTP/2 callers carry it in :authority.
    let host = parts
        .headers
        .get(header::HOST)
        .cloned()
        .or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        })
        .or_else(|| HeaderValue::from_str(&ctx.info.orig_dst.to_string()).ok());
    if let Some(host) = host
        && !svc.upstream_h2
    {
        headers.insert(header::HOST, host);
    }
    if let Some((k, v)) = &svc.upstream_auth {
        headers.insert(k.clone(), v.clone());
    }
    Ok(req)
}

fn client_response(parts: http::response::Parts, body: RespBody) -> Response<RespBody> {
    let mut r = Response::from_parts(parts, body);
    r.headers_mut()
        .retain_names(|k| !HOP_BY_HOP.contains(&k.as_str()));
    r
}

/// Removes hop-by-hop headers from a response; `HeaderMap` has no retain, hence this helper.
trait RetainNames {
    fn retain_names(&mut self, keep: impl Fn(&HeaderName) -> bool);
}
impl RetainNames for HeaderMap {
    fn retain_names(&mut self, keep: impl Fn(&HeaderName) -> bool) {
        let drop: Vec<HeaderName> = self.keys().filter(|k| !keep(k)).cloned().collect();
        for k in drop {
            self.remove(k);
        }
    }
}

/// Methods that change nothing on the server (MCP has no idempotency key: `tools/call` and
/// everything else may act, and are never sent twice). `initialize` may open a session: one
/// opened twice leaves an unused session, which the server expires.
const REPLAYABLE: &[&str] = &[
    "initialize",
    "ping",
    "server/discover",
    "tools/list",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "prompts/list",
    "prompts/get",
    "completion/complete",
];

/// Whether the request (every message of a batch) may be sent again: only requests, only of
/// [`REPLAYABLE`] methods.
fn replayable(messages: &[mcp::Message]) -> bool {
    !messages.is_empty()
        && messages.iter().all(|m| {
            m.kind == mcp::Kind::Request
                && m.method.as_deref().is_some_and(|x| REPLAYABLE.contains(&x))
        })
}

fn copy_request(r: &Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    let mut c = Request::new(r.body().clone());
    *c.method_mut() = r.method().clone();
    *c.uri_mut() = r.uri().clone();
    *c.version_mut() = r.version();
    *c.headers_mut() = r.headers().clone();
    c
}

/// An established connection that ended before any answer: closed (end of stream before a
/// complete response) or reset. Not a failure to connect, which says nothing was sent.
fn closed_before_answer(e: &hyper_util::client::legacy::Error) -> bool {
    if e.is_connect() {
        return false;
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<hyper::Error>()
            && (h.is_incomplete_message() || h.is_canceled())
        {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionAborted
            )
        {
            return true;
        }
        cur = err.source();
    }
    false
}

fn upstream_failed(ctx: &ConnCtx, e: &dyn std::fmt::Display) -> Response<RespBody> {
    warn!(
        event = "upstream_error",
        service = %ctx.svc.cfg.name,
        conn_id = ctx.info.id,
        orig_dst = %ctx.info.orig_dst,
        side = "upstream",
        error = %e,
        "upstream request failed"
    );
    json_response(
        StatusCode::BAD_GATEWAY,
        mcp::error_response(
            None,
            mcp::INTERNAL_ERROR,
            "the MCP server could not be reached through the interceptor",
            None,
        ),
        false,
    )
}

async fn handle_post(
    ctx: Arc<ConnCtx>,
    req: Request<Incoming>,
    hold: crate::approval::gate::HoldSignal,
) -> Response<RespBody> {
    let limits = ctx.svc.cfg.limits.clone();
    let (parts, body) = req.into_parts();
    if let Some(len) =
        header_str(&parts.headers, "content-length").and_then(|v| v.parse::<u64>().ok())
        && len > limits.max_body_bytes as u64
    {
        return refuse(
            &ctx,
            StatusCode::PAYLOAD_TOO_LARGE,
            mcp::INVALID_REQUEST,
            None,
            &format!(
                "request body of {len} bytes exceeds the limit of {}",
                limits.max_body_bytes
            ),
            true,
        );
    }
    let bytes = match Limited::new(body, limits.max_body_bytes).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let too_big = e
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            return if too_big {
                refuse(
                    &ctx,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    mcp::INVALID_REQUEST,
                    None,
                    &format!(
                        "request body exceeds the limit of {} bytes",
                        limits.max_body_bytes
                    ),
                    true,
                )
            } else {
                refuse(
                    &ctx,
                    StatusCode::BAD_REQUEST,
                    mcp::INVALID_REQUEST,
                    None,
                    &format!("request body could not be read: {e}"),
                    true,
                )
            };
        }
    };
    let ct_json = header_str(&parts.headers, "content-type")
        .is_some_and(|c| c.to_ascii_lowercase().starts_with("application/json"));
    if !ct_json && ctx.svc.cfg.non_mcp == NonMcp::Forward {
        return forward_buffered(ctx, parts, bytes).await;
    }
    let mcp_limits = mcp::Limits {
        max_depth: limits.max_json_depth,
        max_bytes: limits.max_body_bytes,
    };
    let (tree, body) = match mcp::parse_body_value(&bytes, &mcp_limits) {
        Ok(b) => b,
        Err(e) => {
            let what = if ct_json {
                format!("invalid JSON-RPC body: {e}")
            } else {
                format!("not an MCP request (content-type is not application/json): {e}")
            };
            return refuse(&ctx, StatusCode::BAD_REQUEST, e.code(), None, &what, true);
        }
    };
    let messages = body.messages();
    if let Err(e) = mcp::check_headers(
        header_str(&parts.headers, "mcp-protocol-version"),
        header_str(&parts.headers, "mcp-method"),
        header_str(&parts.headers, "mcp-name"),
        &body,
    ) {
        let id = messages.first().and_then(|m| m.id.as_ref());
        return refuse(
            &ctx,
            StatusCode::BAD_REQUEST,
            e.code(),
            id,
            &e.to_string(),
            true,
        );
    }
    let legacy =
        legacy_session(&parts.uri).filter(|_| !parts.headers.contains_key("mcp-session-id"));
    let transport = if legacy.is_some() {
        Transport::LegacySse
    } else {
        Transport::StreamableJson
    };
    let view = RequestView {
        conn: &ctx.info,
        http_method: &parts.method,
        path: parts.uri.path(),
        headers: &parts.headers,
        transport,
        revision: header_str(&parts.headers, "mcp-protocol-version"),
        session: header_str(&parts.headers, "mcp-session-id").or(legacy.as_deref()),
        messages,
    };
    let started = Instant::now();
    let req_len = bytes.len() as u64;
    let item = |i: usize| if body.is_batch() { &tree[i] } else { &tree };
    let per_msg = |i: usize, m: &mcp::Message| {
        new_record(&ctx, &parts, transport, Some((m, item(i))), req_len)
    };

    // Who is calling, and may they? (MCP authorization spec; deny by default.)
    let mut decisions: Vec<Option<PolicyDecision>> = vec![None; messages.len()];
    let mut authn: Option<Authenticated> = None;
    if let (Some(sa), Some(auth)) = (&ctx.svc.cfg.auth, &ctx.svc.auth) {
        let a = match auth
            .authenticate(
                sa,
                header_str(&parts.headers, "authorization"),
                &ctx.info.caller,
            )
            .await
        {
            Ok(a) => a,
            Err(f) => {
                return deny_authn(
                    &ctx,
                    sa,
                    &f,
                    messages
                        .iter()
                        .enumerate()
                        .map(|(i, m)| per_msg(i, m))
                        .collect(),
                )
                .await;
            }
        };
        let policy = auth.policy();
        let mut denied: Option<PolicyDecision> = None;
        for (i, m) in messages.iter().enumerate() {
            let Some(method) = m.method.as_deref() else {
                continue;
            };
            let d = policy.decide(&PolicyRequest {
                service: &ctx.svc.cfg.name,
                who: &a.principal,
                method,
                name: m.target_str(),
                arguments: item(i).get("params").and_then(|p| p.get("arguments")),
            });
            if !d.allowed && denied.is_none() {
                denied = Some(d.clone());
            }
            decisions[i] = Some(d);
        }
        if let Some(d) = denied {
            let mut acks = Vec::new();
            for (i, m) in messages.iter().enumerate() {
                let mut rec = per_msg(i, m);
                annotate(&mut rec, Some(&a), decisions[i].as_ref().or(Some(&d)));
                rec.outcome = "denied".into();
                rec.http_status = 403;
                rec.error_code = Some(mcp::INVALID_REQUEST);
                acks.push(ctx.svc.pipeline.exchange_complete(&rec));
            }
            record_denial(&ctx, acks).await;
            warn!(
                event = "request_denied",
                service = %ctx.svc.cfg.name,
                conn_id = ctx.info.id,
                subject = %a.principal.subject,
                rule = %d.rule,
                // Reasons quote argument values: redacted like every other record.
                reason = %ctx.svc.records.redact(&d.reason).0,
                "request denied by policy"
            );
            let id = messages.first().and_then(|m| m.id.as_ref());
            return json_response(
                StatusCode::FORBIDDEN,
                mcp::error_response(
                    id,
                    mcp::INVALID_REQUEST,
                    &format!("denied by policy: {}", d.reason),
                    Some(serde_json::json!({ "rule": d.rule, "policy_version": d.policy_version })),
                ),
                false,
            );
        }
        authn = Some(a);
    }
    // The record of message `i`, with who asked and what the policy decided about it.
    let decided = |i: usize, m: &mcp::Message| {
        let mut rec = per_msg(i, m);
        annotate(
            &mut rec,
            authn.as_ref(),
            decisions.get(i).and_then(|d| d.as_ref()),
        );
        rec
    };
    let filter_lists = authn.as_ref().map(|a| a.principal.clone()).filter(|_| {
        messages
            .iter()
            .any(|m| m.method.as_deref().is_some_and(is_list_method))
    });
    if let Decision::Deny {
        http_status,
        code,
        reason,
        rule,
    } = ctx.svc.pipeline.request_parsed(&view)
    {
        let mut acks = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            let mut rec = decided(i, m);
            rec.outcome = "denied".into();
            rec.http_status = http_status;
            rec.error_code = Some(code);
            rec.rule = Some(rule.clone());
            acks.push(ctx.svc.pipeline.exchange_complete(&rec));
        }
        record_denial(&ctx, acks).await;
        let id = messages.first().and_then(|m| m.id.as_ref());
        let status = StatusCode::from_u16(http_status).unwrap_or(StatusCode::FORBIDDEN);
        return json_response(
            status,
            mcp::error_response(id, code, &reason, Some(serde_json::json!({ "rule": rule }))),
            false,
        );
    }
    // Privileged calls wait here until approved (approval/gate.rs): nothing is sent before.
    let approval = match &authn {
        Some(a) => {
            let call = crate::approval::gate::Call {
                service: &ctx.svc.cfg.name,
                conn: &ctx.info,
                who: &a.principal,
                messages,
                tree: &tree,
                batch: body.is_batch(),
                decisions: &decisions,
                accepts_sse: header_str(&parts.headers, "accept")
                    .is_some_and(|a| a.contains("text/event-stream")),
            };
            let record = |i: usize| decided(i, &messages[i]);
            let auth = ctx.svc.auth.as_deref();
            match crate::approval::gate::hold(auth, &call, &record, &ctx.svc.pipeline, hold).await {
                Ok(id) => id,
                Err(resp) => return *resp,
            }
        }
        None => None,
    };
    // A grant can have the server get the call's arguments redacted (data minimisation).
    let (bytes, rewritten) =
        with_redacted_arguments(&ctx, &tree, body.is_batch(), messages, &decisions)
            .unwrap_or((bytes, Vec::new()));
    let mut up = match upstream_request(&ctx, &parts, bytes) {
        Ok(r) => r,
        Err(e) => return bad_target(&ctx, &e),
    };
    ctx.svc.pipeline.upstream_request(&view, up.headers_mut());

    // What the caller may see: the masking of the grants that allowed the request.
    let mask_view = ctx.svc.redaction.as_ref().map(|e| {
        let grants: Vec<_> = decisions
            .iter()
            .flatten()
            .map(|d| (&d.masking[..], &d.release[..]))
            .collect();
        common_view(e.default_view(), &grants)
    });
    let mut released: Vec<String> = mask_view
        .as_ref()
        .map(|v| {
            let mut r: Vec<String> = v.clear.iter().cloned().collect();
            r.sort();
            r
        })
        .unwrap_or_default();
    // On the legacy transport the answers come on the session's SSE stream, masked by every
    // grant the caller holds: the records say released only what that stream shows in clear
    // (under the policy in force now; the stream's view was taken when it opened).
    if let (Some(_), Some(a), Some(auth)) = (&legacy, &authn, &ctx.svc.auth) {
        if let Some(stream) = caller_stream_view(&ctx, auth, &a.principal) {
            released.retain(|e| stream.clear.contains(e));
        }
    }

    // The exchanges this request opens, keyed by JSON-RPC id.
    let mut pending: HashMap<String, Pending> = HashMap::new();
    let mut no_reply = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let mut rec = decided(i, m);
        rec.released = released.clone();
        rec.approval = approval.clone();
        rec.arguments_redacted = rewritten.get(i).copied().unwrap_or(false);
        match (&m.kind, &m.id) {
            (mcp::Kind::Request, Some(id)) => {
                pending.insert(id.to_string(), Pending { rec, started });
            }
            _ => no_reply.push(rec),
        }
    }
    // No access without its record: every message is recorded durably before it goes upstream.
    if ctx.svc.pipeline.audit().is_some() {
        let acks: Vec<_> = pending
            .values()
            .map(|p| &p.rec)
            .chain(no_reply.iter())
            .map(|r| ctx.svc.pipeline.record_request(r))
            .collect();
        match durable(acks).await {
            Ok(seqs) => {
                let recs = pending
                    .values_mut()
                    .map(|p| &mut p.rec)
                    .chain(no_reply.iter_mut());
                for (rec, seq) in recs.zip(seqs) {
                    rec.request_record = Some(seq);
                }
            }
            Err(e) => {
                let id = messages.first().and_then(|m| m.id.as_ref());
                let recs = pending.into_values().map(|p| p.rec).chain(no_reply);
                return audit_unavailable(&ctx, recs, id, &e);
            }
        }
    }
    // Legacy transport: the responses come on the session's GET /sse stream, possibly before
    // this POST's 202 does, so the exchanges are registered before anything is sent.
    let mut legacy_keys: Vec<(String, String)> = Vec::new();
    if let Some(session) = &legacy {
        let mut reg = ctx
            .svc
            .legacy
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (id, mut p) in pending.drain() {
            if reg.len() < LEGACY_PENDING_MAX {
                legacy_keys.push((session.clone(), id.clone()));
                reg.insert((session.clone(), id), p);
            } else {
                p.rec.outcome = "incomplete".into();
                let _ = finish(&ctx.svc.pipeline, p);
            }
        }
    }
    // A request without side effects is sent once more, on another connection, when the
    // pooled connection it went out on was closed by the server before any answer (its
    // keep-alive ending as the request arrived): the server may or may not have read it,
    // which only matters for a request that changes something.
    let replay = (legacy.is_none() && replayable(messages)).then(|| copy_request(&up));
    let sent = match (ctx.svc.client.request(up).await, replay) {
        (Err(e), Some(again)) if closed_before_answer(&e) => {
            warn!(
                event = "upstream_retry",
                service = %ctx.svc.cfg.name,
                conn_id = ctx.info.id,
                side = "upstream",
                error = %e,
                "the server closed the connection before answering; sent again on another connection (no side effects)"
            );
            for p in pending.values_mut() {
                p.rec.upstream_attempts = 2;
            }
            ctx.svc.client.request(again).await
        }
        (sent, _) => sent,
    };
    let resp = match sent {
        Ok(r) => r,
        Err(e) => {
            let mut failed: Vec<Pending> = pending.into_values().collect();
            if !legacy_keys.is_empty() {
                let mut reg = ctx
                    .svc
                    .legacy
                    .pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                failed.extend(legacy_keys.iter().filter_map(|k| reg.remove(k)));
            }
            for mut p in failed {
                p.rec.outcome = "upstream_error".into();
                p.rec.http_status = 502;
                let _ = finish(&ctx.svc.pipeline, p);
            }
            return upstream_failed(&ctx, &e);
        }
    };

    let (rparts, rbody) = resp.into_parts();
    let status = rparts.status.as_u16();
    let mut acks = Vec::new();
    for mut rec in no_reply {
        rec.outcome = "notification".into();
        rec.http_status = status;
        rec.duration_ms = started.elapsed().as_millis() as u64;
        acks.push(ctx.svc.pipeline.exchange_complete(&rec));
    }
    if let Err(e) = durable(acks).await {
        return audit_failed_response(&ctx, &e);
    }
    let ct = header_str(&rparts.headers, "content-type")
        .unwrap_or("")
        .to_ascii_lowercase();
    if legacy.is_some() {
        {
            let mut reg = ctx
                .svc
                .legacy
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for k in &legacy_keys {
                if let Some(p) = reg.get_mut(k) {
                    p.rec.http_status = status;
                }
            }
        }
        // The answers come on the SSE channel; this is the POST's own (`202 Accepted`, or an
        // error page), redacted on a redacting service as any other answer.
        return respond_observed(&ctx, rparts, rbody, Box::new(Unrecorded), None).await;
    }
    for p in pending.values_mut() {
        p.rec.http_status = status;
    }
    if let (Some(who), Some(auth)) = (filter_lists, &ctx.svc.auth) {
        return filtered_list_response(
            &ctx, auth, &who, rparts, rbody, pending, status, &ct, mask_view,
        )
        .await;
    }
    let observer: Box<dyn Observer> = if ct.starts_with("text/event-stream") {
        for p in pending.values_mut() {
            p.rec.transport = Transport::StreamableSse;
        }
        Box::new(SseObserver::new(ctx.svc.clone(), pending, None))
    } else {
        Box::new(JsonObserver {
            evidence: None,
            pipeline: ctx.svc.pipeline.clone(),
            pending,
            scanner: mcp::EnvelopeScanner::new(),
            bytes: 0,
            status,
            // What the caller saw in clear (released) never goes into a record.
            seen: ResponseDigest::new(if released.is_empty() {
                excerpt_len(&ctx.svc)
            } else {
                0
            }),
        })
    };
    respond_observed(&ctx, rparts, rbody, observer, mask_view).await
}

/// The redactor of one exchange: the service's engine through the caller's masking (the
/// service's own masking when the request was not decided by a grant).
fn exchange_redactor(engine: &Engine, view: Option<MaskView>) -> Arc<dyn TextRedactor> {
    match view {
        Some(v) if v != *engine.default_view() => Arc::new(ViewRedactor::new(engine.clone(), v)),
        _ => Arc::new(engine.clone()),
    }
}

/// Findings (pseudonyms) kept per exchange record; more are counted, not listed.
const MAX_RECORDED_FINDINGS: usize = crate::redact::json::MAX_FINDINGS;

/// Largest response of another content type than JSON or SSE that a redacting service passes:
/// such a body is redacted as text, which needs it whole.
const MAX_TEXT_REDACT: usize = 1024 * 1024;

/// Redacts the headers of a server response (see `redact::headers`), logging each one removed
/// (not UTF-8 text), and adds what was masked to the exchange's evidence.
fn redact_head(
    ctx: &ConnCtx,
    headers: &mut http::HeaderMap,
    redactor: &dyn crate::redact::TextRedactor,
    evidence: &crate::redact::stream::Evidence,
) {
    let head = crate::redact::headers::redact_headers(headers, redactor);
    for name in &head.dropped {
        warn!(
            service = %ctx.svc.cfg.name,
            header = %name,
            "a response header that is not UTF-8 text cannot be redacted: removed"
        );
    }
    evidence
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .merge(head.summary, MAX_RECORDED_FINDINGS);
}

/// Sends a server response on, redacted when the service redacts, observed in any case.
/// JSON bodies and SSE streams are redacted as they stream; an empty body passes as it is;
/// any other body is redacted as text (up to [`MAX_TEXT_REDACT`], refused beyond: nothing
/// leaves unredacted).
async fn respond_observed<B>(
    ctx: &ConnCtx,
    mut rparts: http::response::Parts,
    rbody: B,
    mut observer: Box<dyn Observer>,
    view: Option<MaskView>,
) -> Response<RespBody>
where
    B: http_body::Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError> + std::fmt::Display,
{
    let Some(engine) = &ctx.svc.redaction else {
        return client_response(rparts, Observed::new(rbody, observer).boxed_unsync());
    };
    let redactor = exchange_redactor(engine, view);
    let evidence: crate::redact::stream::Evidence = Arc::default();
    observer.set_evidence(evidence.clone());
    // The head first: header values can carry data as well as the body.
    redact_head(ctx, &mut rparts.headers, &*redactor, &evidence);
    let status = rparts.status;
    if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || rbody.size_hint().exact() == Some(0)
    {
        return client_response(rparts, Observed::new(rbody, observer).boxed_unsync());
    }
    // Asked for as it is (`upstream_request`); a server that compresses anyway sends what
    // cannot be read, so cannot be redacted: refused, never passed. Every `Content-Encoding`
    // line and every coding in it counts; one that cannot be read is not `identity` either.
    let encoded = rparts
        .headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .find_map(|v| match v.to_str() {
            Ok(list) => list
                .split(',')
                .map(str::trim)
                .find(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"))
                .map(str::to_string),
            Err(_) => Some(String::from_utf8_lossy(v.as_bytes()).into_owned()),
        });
    if let Some(coding) = encoded {
        observer.end(End::Error);
        return upstream_failed(
            ctx,
            &format!(
                "a response with Content-Encoding {coding:?} cannot be redacted (the interceptor asked for identity)"
            ),
        );
    }
    let ct = header_str(&rparts.headers, "content-type")
        .unwrap_or("")
        .to_ascii_lowercase();
    let media = ct.split(';').next().unwrap_or("").trim().to_string();
    // The length changes: the redacted body is sent chunked (HTTP/1.1) or framed (HTTP/2).
    rparts.headers.remove(header::CONTENT_LENGTH);
    if media == "text/event-stream" {
        let body = Redacting::sse(rbody, redactor, evidence);
        return client_response(rparts, Observed::new(body, observer).boxed_unsync());
    }
    if media == "application/json" || media.ends_with("+json") {
        let body = Redacting::json(rbody, redactor, evidence);
        return client_response(rparts, Observed::new(body, observer).boxed_unsync());
    }
    // Anything else (a plain-text error page, say) is redacted as one text.
    let bytes = match Limited::new(rbody, MAX_TEXT_REDACT).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            observer.end(End::Error);
            return upstream_failed(
                ctx,
                &format!(
                    "a {media:?} response that cannot be redacted as it streams ({e}; at most {MAX_TEXT_REDACT} bytes are redacted whole)"
                ),
            );
        }
    };
    // Only UTF-8 text can be read, so redacted: anything else (an image, a text in another
    // charset) is refused, not passed unread nor mangled.
    let charset = ct
        .split(';')
        .skip(1)
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim() == "charset")
        .map(|(_, v)| v.trim().trim_matches('"').to_string());
    let text = match (std::str::from_utf8(&bytes), charset.as_deref()) {
        (Ok(t), None | Some("utf-8" | "utf8" | "us-ascii")) => t,
        (_, charset) => {
            observer.end(End::Error);
            return upstream_failed(
                ctx,
                &format!(
                    "a {media:?} response that is not UTF-8 text (charset {charset:?}) cannot be redacted"
                ),
            );
        }
    };
    let (text, findings) = redactor.redact(text);
    let mut found = crate::redact::json::Summary::default();
    found.record(findings, MAX_RECORDED_FINDINGS);
    evidence
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .merge(found, MAX_RECORDED_FINDINGS);
    let body = Full::new(Bytes::from(text)).map_err(|e| match e {});
    client_response(rparts, Observed::new(body, observer).boxed_unsync())
}

/// GET streams: the Streamable HTTP GET stream and the legacy `GET /sse` channel.
async fn forward_stream(
    ctx: Arc<ConnCtx>,
    req: Request<Incoming>,
    view: Option<MaskView>,
) -> Response<RespBody> {
    let (parts, _body) = req.into_parts();
    if let Err(r) = record_http(&ctx, &parts, "stream_open").await {
        return r;
    }
    let up = match upstream_request(&ctx, &parts, Bytes::new()) {
        Ok(r) => r,
        Err(e) => return bad_target(&ctx, &e),
    };
    let resp = match ctx.svc.client.request(up).await {
        Ok(r) => r,
        Err(e) => return upstream_failed(&ctx, &e),
    };
    let (rparts, rbody) = resp.into_parts();
    let ct = header_str(&rparts.headers, "content-type")
        .unwrap_or("")
        .to_ascii_lowercase();
    if !ct.starts_with("text/event-stream") {
        // An error page, say: redacted on a redacting service as any other answer.
        return respond_observed(&ctx, rparts, rbody, Box::new(Unrecorded), view).await;
    }
    let observer = SseObserver::new(ctx.svc.clone(), HashMap::new(), Some(LegacyLink::default()));
    respond_observed(&ctx, rparts, rbody, Box::new(observer), view).await
}

async fn forward_plain(ctx: Arc<ConnCtx>, req: Request<Incoming>) -> Response<RespBody> {
    let limits = ctx.svc.cfg.limits.clone();
    let (parts, body) = req.into_parts();
    let bytes = match Limited::new(body, limits.max_body_bytes).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return refuse(
                &ctx,
                StatusCode::PAYLOAD_TOO_LARGE,
                mcp::INVALID_REQUEST,
                None,
                &format!("request body: {e}"),
                true,
            );
        }
    };
    forward_buffered(ctx, parts, bytes).await
}

async fn forward_buffered(
    ctx: Arc<ConnCtx>,
    parts: http::request::Parts,
    bytes: Bytes,
) -> Response<RespBody> {
    let what = if parts.method == Method::DELETE && parts.headers.contains_key("mcp-session-id") {
        "session_end"
    } else {
        "http_forward"
    };
    if let Err(r) = record_http(&ctx, &parts, what).await {
        return r;
    }
    let up = match upstream_request(&ctx, &parts, bytes) {
        Ok(r) => r,
        Err(e) => return bad_target(&ctx, &e),
    };
    match ctx.svc.client.request(up).await {
        // Not an MCP exchange (no record of its own), but on a redacting service its answer
        // is redacted all the same: everything the server sends back is.
        Ok(r) => {
            let (p, b) = r.into_parts();
            respond_observed(&ctx, p, b, Box::new(Unrecorded), None).await
        }
        Err(e) => upstream_failed(&ctx, &e),
    }
}

/// The observer of an answer that is no MCP exchange (plain HTTP forwarding): it records
/// nothing beyond the `http_forward` or `stream_open` record written before.
struct Unrecorded;

impl Observer for Unrecorded {
    fn data(&mut self, _: &Bytes) -> Acks {
        Acks::new()
    }
    fn end(&mut self, _: End) -> Acks {
        Acks::new()
    }
    fn set_evidence(&mut self, _: crate::redact::stream::Evidence) {}
}

/// Completes an exchange: its final record goes to every phase and to the audit log; the
/// acknowledgement says when that record is durable.
fn finish(pipeline: &Pipeline, mut p: Pending) -> Option<crate::audit::Ack> {
    p.rec.duration_ms = p.started.elapsed().as_millis() as u64;
    if p.rec.outcome.is_empty() {
        p.rec.outcome = "incomplete".into();
    }
    pipeline.exchange_complete(&p.rec)
}

/// Waits for the records of a denial (logged when they cannot be written: the denial stands).
async fn record_denial(ctx: &ConnCtx, acks: Vec<Option<crate::audit::Ack>>) {
    if let Err(e) = durable(acks).await {
        tracing::error!(
            event = "audit_unavailable",
            service = %ctx.svc.cfg.name,
            conn_id = ctx.info.id,
            side = "internal",
            error = %e,
            "a denial could not be recorded"
        );
    }
}

/// The audit log cannot record the request: it is refused and never forwarded (fail closed).
fn audit_unavailable(
    ctx: &ConnCtx,
    recs: impl Iterator<Item = ExchangeRecord>,
    id: Option<&mcp::Id>,
    e: &crate::audit::AuditError,
) -> Response<RespBody> {
    for mut rec in recs {
        rec.outcome = "denied".into();
        rec.http_status = 503;
        rec.error_code = Some(mcp::INTERNAL_ERROR);
        rec.rule = Some("audit/unavailable".into());
        rec.request_record = None;
        let _ = ctx.svc.pipeline.exchange_complete(&rec);
    }
    tracing::error!(
        event = "audit_unavailable",
        service = %ctx.svc.cfg.name,
        conn_id = ctx.info.id,
        peer = %ctx.info.caller.peer(),
        side = "internal",
        error = %e,
        "request refused: it could not be recorded in the audit log"
    );
    json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        mcp::error_response(
            id,
            mcp::INTERNAL_ERROR,
            &format!("request refused: the interceptor cannot record it ({e})"),
            Some(serde_json::json!({ "rule": "audit/unavailable" })),
        ),
        false,
    )
}

/// A response that was obtained but whose record could not be made durable: withheld.
fn audit_failed_response(ctx: &ConnCtx, e: &crate::audit::AuditError) -> Response<RespBody> {
    tracing::error!(
        event = "audit_unavailable",
        service = %ctx.svc.cfg.name,
        conn_id = ctx.info.id,
        side = "internal",
        error = %e,
        "response withheld: its exchange could not be recorded in the audit log"
    );
    json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        mcp::error_response(
            None,
            mcp::INTERNAL_ERROR,
            &format!("response withheld: the interceptor cannot record it ({e})"),
            Some(serde_json::json!({ "rule": "audit/unavailable" })),
        ),
        false,
    )
}

/// A text from a request (a path, a refusal reason quoting what was sent) as it may be written
/// to a record or a log: redacted as request parameters are (every service), percent-decoded
/// first (`/users/jane.doe%40example.com`). A REST-style path or a quoted header can name a
/// person, and an audit record cannot be taken back. Unchanged when nothing in it is masked.
fn recordable_text<'a>(ctx: &ConnCtx, path: &'a str) -> std::borrow::Cow<'a, str> {
    use std::borrow::Cow;
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    match ctx.svc.records.redact_labelled(None, &decoded) {
        (_, f) if f.is_empty() => Cow::Borrowed(path),
        (red, _) => Cow::Owned(red.into_owned()),
    }
}

/// Records a forwarded HTTP request that is not a JSON-RPC exchange (GET stream, session
/// DELETE, non-MCP traffic let through) before it goes upstream.
async fn record_http(
    ctx: &ConnCtx,
    parts: &http::request::Parts,
    what: &str,
) -> Result<(), Response<RespBody>> {
    let Some(audit) = ctx.svc.pipeline.audit() else {
        return Ok(());
    };
    let p = ctx.info.caller.process();
    let ev = crate::audit::AuditEvent::new(
        what,
        serde_json::json!({
            "service": ctx.svc.cfg.name,
            "conn_id": ctx.info.id,
            "caller_kind": ctx.info.caller.kind(),
            "peer": ctx.info.caller.peer().to_string(),
            "tgid": p.map(|p| p.tgid),
            "uid": p.map(|p| p.uid),
            "comm": p.map(|p| p.comm.clone()),
            "http_method": parts.method.as_str(),
            "path": recordable_text(ctx, parts.uri.path()),
            "session": header_str(&parts.headers, "mcp-session-id").map(|s| recordable_text(ctx, s)),
        }),
    );
    audit
        .append(ev)
        .await
        .map(|_| ())
        .map_err(|e| audit_unavailable(ctx, std::iter::empty(), None, &e))
}

fn is_list_method(m: &str) -> bool {
    matches!(
        m,
        "tools/list" | "resources/list" | "resources/templates/list" | "prompts/list"
    )
}

/// Puts who asked and what the policy decided into an exchange record.
fn annotate(rec: &mut ExchangeRecord, a: Option<&Authenticated>, d: Option<&PolicyDecision>) {
    if let Some(a) = a {
        rec.subject = Some(a.principal.subject.clone());
        rec.issuer = Some(a.principal.issuer.clone());
        rec.client_id = a.principal.client_id.clone();
        rec.groups = Some(a.principal.groups.clone());
    }
    if let Some(d) = d {
        rec.role = d.role.clone();
        rec.rule = Some(d.rule.clone());
        rec.purpose = d.purpose.clone();
        rec.lawful_basis = d.lawful_basis.clone();
        rec.policy_version = Some(d.policy_version.clone());
    }
}

/// 401 (or 403 for a local-binding violation) with the RFC 9728 challenge; every message of
/// the request is recorded as denied.
async fn deny_authn(
    ctx: &ConnCtx,
    sa: &ServiceAuth,
    f: &AuthnFailure,
    records: Vec<ExchangeRecord>,
) -> Response<RespBody> {
    let status = match f {
        AuthnFailure::BindingViolated(_) => StatusCode::FORBIDDEN,
        _ => StatusCode::UNAUTHORIZED,
    };
    let rule = f.rule();
    let reason = f.reason();
    let mut acks = Vec::new();
    for mut rec in records {
        rec.outcome = "denied".into();
        rec.http_status = status.as_u16();
        rec.rule = Some(rule.clone());
        acks.push(ctx.svc.pipeline.exchange_complete(&rec));
    }
    record_denial(ctx, acks).await;
    warn!(
        event = "authn_failed",
        service = %ctx.svc.cfg.name,
        conn_id = ctx.info.id,
        peer = %ctx.info.caller.peer(),
        status = status.as_u16(),
        rule = %rule,
        reason = %reason,
        "request not authenticated"
    );
    let mut r = json_response(
        status,
        mcp::error_response(
            None,
            mcp::INVALID_REQUEST,
            &format!("unauthorized: {reason}"),
            Some(serde_json::json!({ "rule": rule })),
        ),
        false,
    );
    if status == StatusCode::UNAUTHORIZED
        && let Ok(v) = HeaderValue::from_str(&crate::auth::challenge(sa, f))
    {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

/// Largest list response the agent buffers to filter it.
const MAX_LIST_BYTES: usize = 16 * 1024 * 1024;

/// List results are filtered to what the caller may use: the (small) response is read whole,
/// every list result in it rewritten, and sent on with a corrected length.
#[allow(clippy::too_many_arguments)]
async fn filtered_list_response(
    ctx: &ConnCtx,
    auth: &Auth,
    who: &Principal,
    mut rparts: http::response::Parts,
    rbody: Incoming,
    mut pending: HashMap<String, Pending>,
    status: u16,
    ct: &str,
    view: Option<MaskView>,
) -> Response<RespBody> {
    let bytes = match Limited::new(rbody, MAX_LIST_BYTES).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            for (_, mut p) in pending.drain() {
                p.rec.outcome = "upstream_error".into();
                let _ = finish(&ctx.svc.pipeline, p);
            }
            return upstream_failed(ctx, &format!("reading a list response: {e}"));
        }
    };
    let policy = auth.policy();
    let service = ctx.svc.cfg.name.clone();
    let mut removed = 0usize;
    let mut rewrite = |v: &mut serde_json::Value, pending: &mut HashMap<String, Pending>| {
        let items: Vec<&mut serde_json::Value> = match v {
            serde_json::Value::Array(a) => a.iter_mut().collect(),
            other => vec![other],
        };
        for item in items {
            let id = item
                .get("id")
                .and_then(mcp::Id::from_value)
                .map(|i| i.to_string());
            let Some(p) = id.as_ref().and_then(|id| pending.get_mut(id)) else {
                continue;
            };
            if let (Some(method), Some(result)) = (p.rec.method.clone(), item.get_mut("result"))
                && is_list_method(&method)
            {
                removed += policy.filter_list(&service, who, &method, result);
            }
            p.rec.outcome = if item.get("error").is_some() {
                p.rec.error_code = item["error"]["code"].as_i64();
                "error".into()
            } else {
                "result".into()
            };
        }
    };
    let out: Bytes = if ct.starts_with("text/event-stream") {
        let mut parser = mcp::SseParser::new(MAX_LIST_BYTES);
        let mut out = Vec::with_capacity(bytes.len());
        match parser.push(&bytes) {
            Ok(events) => {
                for mut ev in events {
                    if let Ok(mut v) = serde_json::from_str::<serde_json::Value>(&ev.data) {
                        rewrite(&mut v, &mut pending);
                        ev.data = v.to_string();
                    }
                    out.extend_from_slice(&mcp::encode(&ev));
                }
            }
            Err(e) => return upstream_failed(ctx, &format!("list response stream: {e}")),
        }
        Bytes::from(out)
    } else {
        match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(mut v) => {
                rewrite(&mut v, &mut pending);
                Bytes::from(v.to_string())
            }
            Err(_) => bytes,
        }
    };
    // Lists are redacted like every other response (descriptions can carry personal data).
    let mut evidence = None;
    let out = match &ctx.svc.redaction {
        None => out,
        Some(engine) => {
            let ev: crate::redact::stream::Evidence = Arc::default();
            let r = exchange_redactor(engine, view);
            redact_head(ctx, &mut rparts.headers, &*r, &ev);
            let body = if ct.starts_with("text/event-stream") {
                Redacting::sse(Full::new(out), r, ev.clone())
            } else {
                Redacting::json(Full::new(out), r, ev.clone())
            };
            match body.collect().await {
                Ok(b) => {
                    evidence = Some(ev);
                    b.to_bytes()
                }
                Err(e) => {
                    for (_, mut p) in pending.drain() {
                        p.rec.outcome = "upstream_error".into();
                        let _ = finish(&ctx.svc.pipeline, p);
                    }
                    return upstream_failed(ctx, &format!("redacting a list response: {e}"));
                }
            }
        }
    };
    let len = out.len() as u64;
    let mut acks = Vec::new();
    let digest = hex::encode(Sha256::digest(&out));
    for (_, mut p) in pending.drain() {
        p.rec.http_status = status;
        p.rec.response_bytes = len;
        p.rec.response_sha256 = Some(digest.clone());
        apply_evidence(&mut p.rec, &evidence);
        if p.rec.outcome.is_empty() {
            p.rec.outcome = "incomplete".into();
        }
        acks.push(finish(&ctx.svc.pipeline, p));
    }
    if let Err(e) = durable(acks).await {
        return audit_failed_response(ctx, &e);
    }
    if removed > 0 {
        debug!(service = %ctx.svc.cfg.name, removed, "list filtered by policy");
    }
    rparts.headers.remove(header::CONTENT_LENGTH);
    rparts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    client_response(
        rparts,
        Full::new(out).map_err(|e| match e {}).boxed_unsync(),
    )
}

// ------------------------------------------------------------------ response observers

/// How a response body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Complete,
    Error,
    /// The caller went away before the body was finished.
    Dropped,
}

/// Acknowledgements of the audit records an observed frame completed: the frame is released
/// only once they are durable.
type Acks = Vec<crate::audit::Ack>;

trait Observer: Send {
    fn data(&mut self, chunk: &Bytes) -> Acks;
    fn end(&mut self, how: End) -> Acks;
    /// Where the redaction of this response reports what it masked.
    fn set_evidence(&mut self, evidence: crate::redact::stream::Evidence);
}

/// Copies what redaction masked (counts per entity type, keyed pseudonyms) into a record.
fn apply_evidence(rec: &mut ExchangeRecord, evidence: &Option<crate::redact::stream::Evidence>) {
    if let Some(e) = evidence {
        let e = e.lock().unwrap_or_else(|p| p.into_inner());
        rec.masked = e.counts.clone();
        rec.pseudonyms = e
            .findings
            .iter()
            .map(|f| format!("{}:{}", f.entity, f.pseudonym))
            .collect();
    }
}

/// A response body that lets an observer see every data frame it forwards.
///
/// A frame that completes an exchange (or the end of the body, when that is what completes
/// it) is held back until the exchange's audit record is durable; if that record cannot be
/// written the body ends with an error instead, so the caller never gets a complete response
/// that is not recorded.
struct Observed<B: http_body::Body = Incoming> {
    inner: B,
    observer: Option<Box<dyn Observer>>,
    /// The body's announced length, when it has one.
    expected: Option<u64>,
    seen: u64,
    /// A frame (`None`: the end of the body) waiting for its records to be durable.
    held: Option<(Option<Frame<Bytes>>, Acks)>,
}

impl<B: http_body::Body> Observed<B> {
    fn new(inner: B, observer: Box<dyn Observer>) -> Self {
        Observed {
            expected: inner.size_hint().exact(),
            inner,
            observer: Some(observer),
            seen: 0,
            held: None,
        }
    }

    /// Everything the server sent has passed (the end-of-stream marker may still be pending,
    /// e.g. an HTTP/2 END_STREAM frame the caller's side never waits for).
    fn finished(&self) -> bool {
        self.inner.is_end_stream() || self.expected == Some(self.seen)
    }
}

impl<B> http_body::Body for Observed<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Some((_, acks)) = this.held.as_mut() {
                while let Some(a) = acks.last_mut() {
                    match Pin::new(a).poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(Ok(_))) => {
                            acks.pop();
                        }
                        Poll::Ready(Ok(Err(e))) => {
                            this.held = None;
                            this.observer = None;
                            return Poll::Ready(Some(Err(withheld(e))));
                        }
                        Poll::Ready(Err(_)) => {
                            this.held = None;
                            this.observer = None;
                            return Poll::Ready(Some(Err(withheld(crate::audit::AuditError(
                                "audit writer stopped".into(),
                            )))));
                        }
                    }
                }
                let frame = this.held.take().and_then(|(f, _)| f);
                return Poll::Ready(frame.map(Ok));
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    let mut acks = Acks::new();
                    if let (Some(data), Some(o)) = (frame.data_ref(), this.observer.as_mut()) {
                        this.seen += data.len() as u64;
                        acks = o.data(data);
                    }
                    // hyper stops polling once the body says it has ended; finish here then.
                    if this.finished()
                        && let Some(mut o) = this.observer.take()
                    {
                        acks.extend(o.end(End::Complete));
                    }
                    if acks.is_empty() {
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    this.held = Some((Some(frame), acks));
                }
                Poll::Ready(Some(Err(e))) => {
                    if let Some(mut o) = this.observer.take() {
                        o.end(End::Error);
                    }
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(None) => {
                    let acks = match this.observer.take() {
                        Some(mut o) => o.end(End::Complete),
                        None => Acks::new(),
                    };
                    if acks.is_empty() {
                        return Poll::Ready(None);
                    }
                    this.held = Some((None, acks));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

fn withheld(e: crate::audit::AuditError) -> BoxError {
    tracing::error!(
        event = "audit_unavailable",
        side = "internal",
        error = %e,
        "response cut before its end: its exchange could not be recorded in the audit log"
    );
    Box::new(e)
}

impl<B: http_body::Body> Drop for Observed<B> {
    fn drop(&mut self) {
        if let Some(mut o) = self.observer.take() {
            o.end(if self.finished() {
                End::Complete
            } else {
                End::Dropped
            });
        }
    }
}

/// How much of a response its record keeps: none unless the service redacts (a record must
/// never hold what redaction would have masked).
fn excerpt_len(svc: &McpService) -> usize {
    if svc.redaction.is_some() {
        svc.cfg.response_excerpt_bytes
    } else {
        0
    }
}

/// The SHA-256 and the first bytes of a response as the caller received it.
struct ResponseDigest {
    hash: Sha256,
    excerpt: Vec<u8>,
    max: usize,
}

impl ResponseDigest {
    fn new(max: usize) -> Self {
        ResponseDigest {
            hash: Sha256::new(),
            excerpt: Vec::new(),
            max,
        }
    }
    fn update(&mut self, data: &[u8]) {
        self.hash.update(data);
        let room = self.max.saturating_sub(self.excerpt.len());
        self.excerpt
            .extend_from_slice(&data[..room.min(data.len())]);
    }
    fn record(self, rec: &mut ExchangeRecord) {
        rec.response_sha256 = Some(hex::encode(self.hash.finalize()));
        if self.max > 0 {
            // Cut at a character boundary: the excerpt is text.
            let s = match std::str::from_utf8(&self.excerpt) {
                Ok(s) => s,
                Err(e) => std::str::from_utf8(&self.excerpt[..e.valid_up_to()]).unwrap_or(""),
            };
            rec.response_excerpt = Some(s.to_string());
        }
    }
}

/// application/json responses: one envelope, scanned in bounded memory.
struct JsonObserver {
    evidence: Option<crate::redact::stream::Evidence>,
    pipeline: Pipeline,
    pending: HashMap<String, Pending>,
    scanner: mcp::EnvelopeScanner,
    bytes: u64,
    status: u16,
    seen: ResponseDigest,
}

impl Observer for JsonObserver {
    fn set_evidence(&mut self, evidence: crate::redact::stream::Evidence) {
        self.evidence = Some(evidence);
    }
    fn data(&mut self, chunk: &Bytes) -> Acks {
        self.bytes += chunk.len() as u64;
        self.scanner.push(chunk);
        self.seen.update(chunk);
        Acks::new()
    }
    fn end(&mut self, how: End) -> Acks {
        let mut acks = Acks::new();
        let summary = self.scanner.summary();
        let single = self.pending.len() == 1;
        let seen = std::mem::replace(&mut self.seen, ResponseDigest::new(0));
        let mut seen = Some(seen);
        for (id, mut p) in self.pending.drain() {
            p.rec.response_bytes = if single { self.bytes } else { 0 };
            if single && let Some(seen) = seen.take() {
                seen.record(&mut p.rec);
            }
            p.rec.outcome = match how {
                End::Complete => match summary.outcome_for(&id) {
                    Some((true, code)) => {
                        p.rec.error_code = code;
                        "error".into()
                    }
                    Some((false, _)) => "result".into(),
                    None if self.status >= 400 => "error".into(),
                    None => "incomplete".into(),
                },
                End::Error => "upstream_error".into(),
                End::Dropped => "client_gone".into(),
            };
            apply_evidence(&mut p.rec, &self.evidence);
            acks.extend(finish(&self.pipeline, p));
        }
        acks
    }
}

/// Links a legacy `GET /sse` stream to its session once the `endpoint` event names it.
#[derive(Default)]
struct LegacyLink {
    session: Option<String>,
}

/// text/event-stream responses: events read as they pass (never held whole: a 100 MB event
/// costs the envelope scanner's few bytes), responses matched to requests.
struct SseObserver {
    evidence: Option<crate::redact::stream::Evidence>,
    svc: Arc<McpService>,
    pending: HashMap<String, Pending>,
    legacy: Option<LegacyLink>,
    tokens: mcp::SseTokenizer,
    event: SseEventState,
    notifications: u32,
    /// Acknowledgements of exchanges completed by the frame being observed.
    acks: Acks,
}

/// What is known of the event being read.
struct SseEventState {
    name: Option<Vec<u8>>,
    lines: usize,
    bytes: u64,
    scanner: mcp::EnvelopeScanner,
    /// Digest and start of the data (the start also gives the legacy `endpoint`).
    seen: ResponseDigest,
}

/// Bytes of an event's data kept for the legacy transport's `endpoint` URL.
const ENDPOINT_MAX: usize = 4096;

impl SseEventState {
    fn new(excerpt: usize) -> Self {
        SseEventState {
            name: None,
            lines: 0,
            bytes: 0,
            scanner: mcp::EnvelopeScanner::new(),
            seen: ResponseDigest::new(excerpt.max(ENDPOINT_MAX)),
        }
    }
    fn data(&mut self, d: &[u8]) {
        self.bytes += d.len() as u64;
        self.scanner.push(d);
        self.seen.update(d);
    }
}

impl SseObserver {
    fn new(
        svc: Arc<McpService>,
        pending: HashMap<String, Pending>,
        legacy: Option<LegacyLink>,
    ) -> Self {
        let excerpt = excerpt_len(&svc);
        SseObserver {
            evidence: None,
            svc,
            pending,
            legacy,
            tokens: mcp::SseTokenizer::new(),
            event: SseEventState::new(excerpt),
            notifications: 0,
            acks: Acks::new(),
        }
    }

    fn on_event(&mut self, ev: SseEventState) {
        if ev.lines == 0 {
            return;
        }
        if ev.name.as_deref() == Some(b"endpoint") {
            if let Some(link) = self.legacy.as_mut()
                && let Ok(data) = std::str::from_utf8(&ev.seen.excerpt)
                && let Some(ep) = mcp::LegacyEndpoint::parse(data)
            {
                link.session = ep.session_id;
            }
            return;
        }
        let summary = ev.scanner.summary();
        if summary.shape == mcp::Shape::Empty || summary.error.is_some() {
            debug!(service = %self.svc.cfg.name, error = ?summary.error, "SSE event without JSON-RPC data");
            return;
        }
        let excerpt = excerpt_len(&self.svc);
        let mut seen = Some(ev.seen);
        for msg in &summary.messages {
            let Some(id) = msg.id.as_ref().filter(|_| msg.has_result || msg.has_error) else {
                self.notifications += 1;
                continue;
            };
            let key = id.to_string();
            let found = self.pending.remove(&key).or_else(|| {
                let session = self.legacy.as_ref()?.session.clone()?;
                self.svc
                    .legacy
                    .pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&(session, key.clone()))
            });
            let Some(mut p) = found else {
                continue;
            };
            if p.rec.http_status == 0 {
                // Answered on the SSE channel before the POST's own status arrived.
                p.rec.http_status = 202;
            }
            p.rec.response_bytes = ev.bytes;
            if let Some(mut s) = seen.take() {
                // What the caller saw in clear (released) never goes into a record.
                s.max = if p.rec.released.is_empty() {
                    excerpt
                } else {
                    0
                };
                s.excerpt.truncate(s.max);
                s.record(&mut p.rec);
            }
            p.rec.notifications += self.notifications;
            if msg.has_error {
                p.rec.outcome = "error".into();
                p.rec.error_code = msg.error_code;
            } else {
                p.rec.outcome = "result".into();
            }
            apply_evidence(&mut p.rec, &self.evidence);
            self.svc.pipeline.response_event(&p.rec, msg);
            self.acks.extend(finish(&self.svc.pipeline, p));
        }
    }
}

impl Observer for SseObserver {
    fn set_evidence(&mut self, evidence: crate::redact::stream::Evidence) {
        self.evidence = Some(evidence);
    }
    fn data(&mut self, chunk: &Bytes) -> Acks {
        let mut done: Vec<SseEventState> = Vec::new();
        let excerpt = excerpt_len(&self.svc);
        let event = &mut self.event;
        self.tokens.push(chunk, &mut |piece| match piece {
            mcp::SsePiece::DataLineStart => {
                if event.lines > 0 {
                    event.data(b"\n");
                }
                event.lines += 1;
            }
            mcp::SsePiece::Data(d) => event.data(d),
            mcp::SsePiece::Field { name, value } => {
                if name == b"event" {
                    event.name = Some(value.to_vec());
                }
            }
            mcp::SsePiece::EventEnd => {
                done.push(std::mem::replace(event, SseEventState::new(excerpt)));
            }
            mcp::SsePiece::Comment => {}
        });
        for ev in done {
            self.on_event(ev);
        }
        std::mem::take(&mut self.acks)
    }
    fn end(&mut self, how: End) -> Acks {
        let mut acks = std::mem::take(&mut self.acks);
        for (_, mut p) in self.pending.drain() {
            p.rec.outcome = match how {
                End::Dropped => "client_gone".into(),
                End::Error => "upstream_error".into(),
                End::Complete => "incomplete".into(),
            };
            acks.extend(finish(&self.svc.pipeline, p));
        }
        if let Some(session) = self.legacy.as_ref().and_then(|l| l.session.clone()) {
            let mut reg = self
                .svc
                .legacy
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let keys: Vec<_> = reg.keys().filter(|(s, _)| *s == session).cloned().collect();
            let mut left = Vec::new();
            for k in keys {
                if let Some(p) = reg.remove(&k) {
                    left.push(p);
                }
            }
            drop(reg);
            for mut p in left {
                p.rec.outcome = "incomplete".into();
                acks.extend(finish(&self.svc.pipeline, p));
            }
        }
        acks
    }
}
