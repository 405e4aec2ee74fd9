//! The MCP load generator and the fast TLS-capable echo server used by `bench-mcp`.
//!
//! The client writes hand-built HTTP/1.1 requests on keep-alive connections and parses only
//! what it needs of the responses (status, Content-Length or chunked framing), so that the
//! generator costs as little CPU as possible: on a small machine it shares the cores with the
//! server and the agent, and a heavy client would make the proxy's share look smaller.

use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{TcpListener, TcpStream},
};

use crate::node::{cpu_us, percentile};

// ------------------------------------------------------------------ streams

/// A client connection, plain or TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Where and how to connect.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub tls: Option<tokio_rustls::TlsConnector>,
}

impl Target {
    pub fn new(addr: SocketAddr, ca: Option<&Path>) -> Result<Target> {
        let tls = match ca {
            None => None,
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_file_iter(ca)
                    .with_context(|| format!("reading {}", ca.display()))?
                {
                    roots.add(c?)?;
                }
                let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
                Some(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
            }
        };
        Ok(Target { addr, tls })
    }

    pub async fn connect(&self) -> Result<Stream> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("connect {}", self.addr))?;
        tcp.set_nodelay(true)?;
        Ok(match &self.tls {
            None => Stream::Plain(tcp),
            Some(c) => {
                let name = ServerName::IpAddress(self.addr.ip().into());
                let s = c
                    .connect(name, tcp)
                    .await
                    .with_context(|| format!("TLS handshake with {}", self.addr))?;
                Stream::Tls(Box::new(s))
            }
        })
    }
}

// ------------------------------------------------------------------ HTTP/1.1 client

/// What a load run sends: one `tools/call` per request.
#[derive(Clone)]
pub struct Call {
    pub tool: String,
    /// JSON text of the `arguments` object.
    pub arguments: String,
    /// Extra request header lines (`Name: value`), sent verbatim with every request.
    pub headers: Vec<String>,
    /// A bare JSON-RPC body (`jsonrpc`, `id`, `method`, `params.name`, `params.arguments`) with
    /// only `Host`, `Content-Type`, the extra headers and `Content-Length`; otherwise the full
    /// 2026-07-28 stateless shape (see `tools_call`).
    pub minimal: bool,
}

impl Default for Call {
    fn default() -> Call {
        Call {
            tool: "echo".into(),
            arguments: r#"{"text":"hello"}"#.into(),
            headers: Vec::new(),
            minimal: false,
        }
    }
}

/// A `tools/call` request. Not minimal: at protocol revision 2026-07-28 (stateless: the `_meta`
/// envelope and the `Mcp-Method`/`Mcp-Name` headers, as the official Python SDK 2.x client
/// sends it); the mcp-echo servers answer anything, the SDK server needs all of it.
fn tools_call(out: &mut Vec<u8>, host: &SocketAddr, id: u64, call: &Call, progress: bool) {
    use std::io::Write as _;
    let (tool, args) = (&call.tool, &call.arguments);
    let body = if call.minimal {
        format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"tools/call\",\"params\":{{\"name\":\"{tool}\",\
             \"arguments\":{args}}}}}"
        )
    } else {
        let token = if progress {
            format!("\"progressToken\":\"p{id}\",")
        } else {
            String::new()
        };
        format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"tools/call\",\"params\":{{\"name\":\"{tool}\",\
             \"arguments\":{args},\"_meta\":{{{token}\"io.modelcontextprotocol/protocolVersion\":\"2026-07-28\",\
             \"io.modelcontextprotocol/clientCapabilities\":{{}},\
             \"io.modelcontextprotocol/clientInfo\":{{\"name\":\"xtask-bench\",\"version\":\"1\"}}}}}}}}"
        )
    };
    out.clear();
    let _ = write!(
        out,
        "POST /mcp HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    );
    if !call.minimal {
        let _ = write!(
            out,
            "Accept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2026-07-28\r\n\
             Mcp-Method: tools/call\r\nMcp-Name: {tool}\r\n"
        );
    }
    for h in &call.headers {
        let _ = write!(out, "{h}\r\n");
    }
    let _ = write!(out, "Content-Length: {}\r\n\r\n{body}", body.len());
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One keep-alive connection with a read buffer.
struct Conn {
    s: Stream,
    buf: Vec<u8>,
}

struct Head {
    status: u16,
    len: usize,
    content_length: Option<usize>,
    chunked: bool,
    event_stream: bool,
}

impl Conn {
    async fn fill(&mut self) -> Result<()> {
        self.buf.reserve(16 * 1024);
        let n = self.s.read_buf(&mut self.buf).await?;
        if n == 0 {
            bail!(
                "connection closed by the server (buffered: {:?})",
                String::from_utf8_lossy(&self.buf)
            );
        }
        Ok(())
    }

    async fn head(&mut self) -> Result<Head> {
        let end = loop {
            if let Some(p) = find(&self.buf, b"\r\n\r\n") {
                break p + 4;
            }
            self.fill().await?;
        };
        let text = std::str::from_utf8(&self.buf[..end]).context("response head")?;
        let mut lines = text.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("bad status line in {text:?}"))?;
        let mut h = Head {
            status,
            len: end,
            content_length: None,
            chunked: false,
            event_stream: false,
        };
        for l in lines {
            if let Some((k, v)) = l.split_once(':') {
                let v = v.trim();
                if k.eq_ignore_ascii_case("content-length") {
                    h.content_length = v.parse().ok();
                } else if k.eq_ignore_ascii_case("transfer-encoding") {
                    h.chunked = v.to_ascii_lowercase().contains("chunked");
                } else if k.eq_ignore_ascii_case("content-type") {
                    h.event_stream = v.to_ascii_lowercase().starts_with("text/event-stream");
                }
            }
        }
        Ok(h)
    }

    /// Reads one whole response; returns (status, body). The buffer keeps what follows.
    async fn response(&mut self, body: &mut Vec<u8>) -> Result<u16> {
        let h = self.head().await?;
        body.clear();
        let mut pos = h.len;
        if let Some(n) = h.content_length {
            while self.buf.len() < pos + n {
                self.fill().await?;
            }
            body.extend_from_slice(&self.buf[pos..pos + n]);
            pos += n;
        } else if h.chunked {
            loop {
                let line_end = loop {
                    if let Some(p) = find(&self.buf[pos..], b"\r\n") {
                        break pos + p;
                    }
                    self.fill().await?;
                };
                let size_text = std::str::from_utf8(&self.buf[pos..line_end])?;
                let size_text = size_text.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(size_text, 16)
                    .with_context(|| format!("bad chunk size {size_text:?}"))?;
                pos = line_end + 2;
                if size == 0 {
                    // No trailers expected: the empty line ends the message.
                    while self.buf.len() < pos + 2 {
                        self.fill().await?;
                    }
                    pos += 2;
                    break;
                }
                while self.buf.len() < pos + size + 2 {
                    self.fill().await?;
                }
                body.extend_from_slice(&self.buf[pos..pos + size]);
                pos += size + 2;
            }
        } else if !(h.status == 204 || h.status == 304 || h.status < 200) {
            bail!(
                "response without Content-Length or chunked framing (status {})",
                h.status
            );
        }
        self.buf.drain(..pos);
        Ok(h.status)
    }

    /// Sends `req` and reads the answer; fails unless it is a 200 carrying a JSON-RPC result.
    async fn call(&mut self, req: &[u8], body: &mut Vec<u8>) -> Result<()> {
        self.s.write_all(req).await?;
        self.s.flush().await?;
        let status = self.response(body).await?;
        if status != 200 || find(body, b"\"result\"").is_none() {
            bail!(
                "unexpected answer: status {status}, body {:?}",
                String::from_utf8_lossy(body)
            );
        }
        Ok(())
    }
}

// ------------------------------------------------------------------ client modes

pub struct ClientOpts {
    pub target: Target,
    pub mode: String,
    pub n: usize,
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub threads: usize,
    pub timeout: Duration,
    pub call: Call,
}

pub fn client(o: ClientOpts) -> Result<()> {
    let rt = if o.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(o.threads)
            .enable_all()
            .build()?
    };
    let out = rt.block_on(async {
        match o.mode.as_str() {
            "wait" => wait(&o).await,
            "latency" => latency(&o).await,
            "rps" => rps(&o).await,
            "probe" => probe(&o).await,
            "sse" => sse(&o).await,
            m => bail!("unknown mode {m}"),
        }
    })?;
    let mut out = out;
    out["client_cpu_total_us"] = json!(cpu_us("self")?);
    println!("{out}");
    Ok(())
}

/// Retries connecting until the port accepts (servers that only say they listen on stdout).
async fn wait(o: &ClientOpts) -> Result<Value> {
    let deadline = Instant::now() + o.timeout;
    loop {
        match TcpStream::connect(o.target.addr).await {
            Ok(_) => return Ok(json!({"ok": true})),
            Err(e) if Instant::now() > deadline => bail!("{} never accepted: {e}", o.target.addr),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn summary(mut us: Vec<f64>) -> Value {
    us.sort_by(|a, b| a.total_cmp(b));
    let mean = us.iter().sum::<f64>() / us.len().max(1) as f64;
    json!({
        "p50_us": percentile(&us, 0.5),
        "p99_us": percentile(&us, 0.99),
        "mean_us": mean,
        "n": us.len(),
    })
}

/// Sequential tools/call on one keep-alive connection: warm-up, then `n` timed calls.
async fn latency(o: &ClientOpts) -> Result<Value> {
    let mut c = Conn {
        s: o.target.connect().await?,
        buf: Vec::with_capacity(16 * 1024),
    };
    let (mut req, mut body) = (Vec::with_capacity(1024), Vec::with_capacity(4096));
    let warm_until = Instant::now() + o.warmup;
    let mut id = 0u64;
    while Instant::now() < warm_until {
        id += 1;
        tools_call(&mut req, &o.target.addr, id, &o.call, false);
        c.call(&req, &mut body).await?;
    }
    let mut us = Vec::with_capacity(o.n);
    for _ in 0..o.n {
        id += 1;
        tools_call(&mut req, &o.target.addr, id, &o.call, false);
        let t = Instant::now();
        c.call(&req, &mut body).await?;
        us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(summary(us))
}

/// One request on a fresh connection; reports the answer whatever it is:
/// `{"status": 200, "body": "..."}`.
async fn probe(o: &ClientOpts) -> Result<Value> {
    let mut c = Conn {
        s: o.target.connect().await?,
        buf: Vec::with_capacity(16 * 1024),
    };
    let (mut req, mut body) = (Vec::new(), Vec::new());
    tools_call(&mut req, &o.target.addr, 1, &o.call, false);
    c.s.write_all(&req).await?;
    c.s.flush().await?;
    let status = c.response(&mut body).await?;
    Ok(json!({"status": status, "body": String::from_utf8_lossy(&body)}))
}

/// `concurrency` keep-alive connections, each sending sequential calls; counts completions
/// in the `duration` window that follows `warmup`.
async fn rps(o: &ClientOpts) -> Result<Value> {
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut conns = Vec::with_capacity(o.concurrency);
    for _ in 0..o.concurrency {
        conns.push(o.target.connect().await?);
    }
    let mut tasks = Vec::with_capacity(o.concurrency);
    for (i, s) in conns.into_iter().enumerate() {
        let (measuring, stop, addr) = (measuring.clone(), stop.clone(), o.target.addr);
        let call = o.call.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Conn {
                s,
                buf: Vec::with_capacity(16 * 1024),
            };
            let (mut req, mut body) = (Vec::with_capacity(1024), Vec::with_capacity(4096));
            let mut us = Vec::with_capacity(64 * 1024);
            let mut id = (i as u64) << 32;
            let mut calls = 0u64;
            while !stop.load(Ordering::Relaxed) {
                calls += 1;
                id += 1;
                tools_call(&mut req, &addr, id, &call, false);
                let t = Instant::now();
                c.call(&req, &mut body).await?;
                if measuring.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
                    us.push(t.elapsed().as_secs_f64() * 1e6);
                }
            }
            anyhow::Ok((us, calls))
        }));
    }
    tokio::time::sleep(o.warmup).await;
    measuring.store(true, Ordering::Relaxed);
    let (t0, cpu0) = (Instant::now(), cpu_us("self")?);
    tokio::time::sleep(o.duration).await;
    stop.store(true, Ordering::Relaxed);
    let (secs, cpu) = (t0.elapsed().as_secs_f64(), cpu_us("self")? - cpu0);
    let (mut all, mut total) = (Vec::new(), 0);
    for t in tasks {
        let (us, calls) = t.await??;
        all.extend(us);
        total += calls;
    }
    let count = all.len();
    let mut v = summary(all);
    v["rps"] = json!(count as f64 / secs);
    v["secs"] = json!(secs);
    v["total_calls"] = json!(total);
    v["client_cpu_per_call_us"] = json!(cpu as f64 / count.max(1) as f64);
    v["client_cpu_share"] = json!(cpu as f64 / 1e6 / secs);
    Ok(v)
}

/// Opens `n` long-lived SSE streams (POST tools/call `slow_progress` with a progress token: the
/// SDK server answers with `text/event-stream` and sends one progress event per step), waits
/// until each delivered its first event, prints `{"opened": n, ...}`, keeps reading them until
/// a line (or EOF) arrives on stdin, then reports how many were still open.
async fn sse(o: &ClientOpts) -> Result<Value> {
    let t0 = Instant::now();
    let alive = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::with_capacity(o.n);
    // Open in batches so the SDK server's accept backlog is never the limit.
    let mut opened = 0;
    while opened < o.n {
        let batch = (o.n - opened).min(25);
        let mut pending = Vec::with_capacity(batch);
        for i in opened..opened + batch {
            let target = o.target.clone();
            pending.push(tokio::spawn(async move {
                let mut c = Conn {
                    s: target.connect().await?,
                    buf: Vec::with_capacity(4096),
                };
                let mut req = Vec::new();
                let call = Call {
                    tool: "slow_progress".into(),
                    arguments: r#"{"steps":120,"delay_ms":500}"#.into(),
                    ..Call::default()
                };
                tools_call(&mut req, &target.addr, i as u64 + 1, &call, true);
                c.s.write_all(&req).await?;
                c.s.flush().await?;
                let h = c.head().await?;
                if h.status != 200 || !h.event_stream {
                    bail!(
                        "stream {i}: expected 200 text/event-stream, got {:?}",
                        String::from_utf8_lossy(&c.buf[..h.len])
                    );
                }
                while find(&c.buf[h.len..], b"data:").is_none() {
                    c.fill().await?;
                }
                anyhow::Ok(c)
            }));
        }
        for p in pending {
            let mut c = p.await??;
            let (alive, stop) = (alive.clone(), stop.clone());
            alive.fetch_add(1, Ordering::SeqCst);
            tasks.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    match c.s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                if !stop.load(Ordering::Relaxed) {
                    alive.fetch_sub(1, Ordering::SeqCst);
                }
            }));
        }
        opened += batch;
    }
    let open_ms = t0.elapsed().as_secs_f64() * 1e3;
    println!(
        "{}",
        json!({"opened": alive.load(Ordering::SeqCst), "open_ms": open_ms})
    );
    let mut line = String::new();
    let _ = tokio::io::BufReader::new(tokio::io::stdin())
        .read_line(&mut line)
        .await;
    let still_open = alive.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    for t in &tasks {
        t.abort();
    }
    Ok(json!({"still_open": still_open}))
}

// ------------------------------------------------------------------ echo server

/// A fast MCP-over-HTTP/1.1 responder like `testpeer --mode mcp-echo`, which also speaks TLS
/// itself: the direct TLS baseline for the fast upstream.
pub fn echo_server(
    plain: Vec<SocketAddr>,
    tls: Vec<SocketAddr>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let acceptor = match (&cert, &key) {
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .with_context(|| format!("reading {}", cert.display()))?
                    .collect::<Result<Vec<_>, _>>()?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .with_context(|| format!("reading {}", key.display()))?;
                let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()?
                    .with_no_client_auth()
                    .with_single_cert(chain, key)?;
                cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
                Some(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
            }
            _ if tls.is_empty() => None,
            _ => bail!("--tls-listen needs --cert and --key"),
        };
        let mut listeners = Vec::new();
        for a in &plain {
            listeners.push((TcpListener::bind(a).await?, None));
        }
        for a in &tls {
            listeners.push((TcpListener::bind(a).await?, acceptor.clone()));
        }
        println!("listening");
        let mut handles = Vec::new();
        for (l, acc) in listeners {
            handles.push(tokio::spawn(async move {
                loop {
                    let Ok((s, _)) = l.accept().await else {
                        continue;
                    };
                    let _ = s.set_nodelay(true);
                    let acc = acc.clone();
                    tokio::spawn(async move {
                        match acc {
                            None => {
                                let _ = serve_echo(s).await;
                            }
                            Some(acc) => {
                                if let Ok(s) = acc.accept(s).await {
                                    let _ = serve_echo(s).await;
                                }
                            }
                        }
                    });
                }
            }));
        }
        for h in handles {
            let _ = h.await;
        }
        Ok(())
    })
}

async fn serve_echo<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    loop {
        let end = loop {
            if let Some(p) = find(&buf, b"\r\n\r\n") {
                break p + 4;
            }
            if buf.len() > 64 * 1024 {
                bail!("request head too large");
            }
            buf.reserve(16 * 1024);
            if s.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        };
        let head = std::str::from_utf8(&buf[..end])?;
        let mut lines = head.split("\r\n");
        let is_post = lines.next().is_some_and(|l| l.starts_with("POST "));
        let mut headers = serde_json::Map::new();
        let mut len = 0usize;
        for l in lines {
            if let Some((k, v)) = l.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                if k == "content-length" {
                    len = v.parse().unwrap_or(0);
                }
                headers.insert(k, Value::String(v.to_string()));
            }
        }
        while buf.len() < end + len {
            buf.reserve(16 * 1024);
            if s.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        }
        let req: Option<Value> = serde_json::from_slice(&buf[end..end + len]).ok();
        buf.drain(..end + len);
        let (status, payload) = match (is_post, req) {
            (true, Some(r)) => match r.get("id") {
                Some(id) => (
                    "200 OK",
                    json!({
                        "jsonrpc": "2.0",
                        "id": id,
                        "result": {
                            "content": [{"type": "text", "text": "echo"}],
                            "method": r.get("method"),
                            "params": r.get("params"),
                            "received_headers": headers,
                        }
                    })
                    .to_string(),
                ),
                None => ("202 Accepted", String::new()),
            },
            _ => (
                "400 Bad Request",
                r#"{"error":"only JSON-RPC POSTs"}"#.to_string(),
            ),
        };
        out.clear();
        out.extend_from_slice(
            format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                payload.len()
            )
            .as_bytes(),
        );
        out.extend_from_slice(payload.as_bytes());
        s.write_all(&out).await?;
        s.flush().await?;
    }
}
