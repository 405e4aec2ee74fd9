//! `testpeer`: the TCP server and client used by the interceptor integration tests.
//!
//! Every line it prints on stdout is one JSON object, so the harness can parse what the peer
//! saw.
//!
//! ```text
//! testpeer server --listen ADDR [--listen ADDR2 ...] [--mode echo|sink|source] [--source-bytes N]
//!     prints {"event":"listening","addrs":[...]} once every listener is bound, then per
//!     connection {"event":"accepted","peer":..,"local":..} and, when it ends,
//!     {"event":"closed","peer":..,"bytes_in":N,"bytes_out":N,"error":..}.
//!     IPv6 listeners are IPV6_V6ONLY, so `0.0.0.0:P` and `[::]:P` can be used together.
//!
//! testpeer client --connect ADDR [--bytes N] [--expect N] [--bind-any] [--timeout-ms MS]
//!     connects (optionally after binding the unspecified address, port 0), sends N bytes of
//!     a deterministic pattern, shuts down its write side, reads everything back and verifies
//!     it byte for byte against the same pattern (expected length: --expect, default N, i.e.
//!     an echo server). Prints one JSON result
//!     {"ok":..,"pid":..,"comm":..,"uid":..,"gid":..,"cgroup":..,"peer":..,"local":..,"sent":..,"received":..,
//!      "checksum_sent":..,"checksum_received":..,"elapsed_ms":..,"error":..,"error_kind":..,
//!      "errno":..}
//!     and exits 0 on success, 2 when the connection was refused, 1 on any other failure.
//!
//! testpeer webhook --listen ADDR [--status CODE]
//!     a minimal HTTP/1.1 receiver: prints {"event":"listening","addr":..} once bound, then per
//!     request {"event":"webhook","method":..,"path":..,"headers":{lower-case name: value},
//!     "body_raw":"<body as text>","body":<body parsed as JSON, or null>} and answers
//!     CODE (default 204) with an empty body.
//! ```
use std::{
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    process::ExitCode,
    sync::OnceLock,
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

const BUF: usize = 64 * 1024;
/// Period of the test pattern: a prime, so it never lines up with buffer sizes.
const PATTERN_LEN: usize = 65_521;

fn pattern() -> &'static [u8] {
    static P: OnceLock<Vec<u8>> = OnceLock::new();
    P.get_or_init(|| {
        let mut x: u32 = 0x9e37_79b9;
        (0..PATTERN_LEN)
            .map(|_| {
                // xorshift32: cheap and deterministic.
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x >> 24) as u8
            })
            .collect()
    })
}

/// Copies `len` pattern bytes starting at stream offset `offset` into `out`.
fn fill_pattern(offset: u64, out: &mut [u8]) {
    let p = pattern();
    let mut pos = (offset % PATTERN_LEN as u64) as usize;
    let mut done = 0;
    while done < out.len() {
        let n = (PATTERN_LEN - pos).min(out.len() - done);
        out[done..done + n].copy_from_slice(&p[pos..pos + n]);
        done += n;
        pos = 0;
    }
}

/// Whether `data` equals the pattern at stream offset `offset`; returns the first mismatch.
fn check_pattern(offset: u64, data: &[u8]) -> Option<u64> {
    let p = pattern();
    let mut pos = (offset % PATTERN_LEN as u64) as usize;
    let mut done = 0;
    while done < data.len() {
        let n = (PATTERN_LEN - pos).min(data.len() - done);
        if data[done..done + n] != p[pos..pos + n] {
            let i = (0..n).find(|&i| data[done + i] != p[pos + i]).unwrap_or(0);
            return Some(offset + (done + i) as u64);
        }
        done += n;
        pos = 0;
    }
    None
}

/// Fletcher-64-style running checksum (order sensitive), cheap enough for 100 MB in debug.
#[derive(Default, Clone, Copy)]
struct Checksum {
    a: u64,
    b: u64,
}

impl Checksum {
    fn update(&mut self, data: &[u8]) {
        for chunk in data.chunks(4096) {
            for &byte in chunk {
                self.a += u64::from(byte);
                self.b += self.a;
            }
            self.a %= 0xffff_fffb;
            self.b %= 0xffff_fffb;
        }
    }
    fn value(&self) -> u64 {
        (self.b << 32) | self.a
    }
}

fn emit(v: Value) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

struct Args {
    items: Vec<String>,
}

impl Args {
    fn values(&self, flag: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut it = self.items.iter();
        while let Some(a) = it.next() {
            if a == flag {
                if let Some(v) = it.next() {
                    out.push(v.clone());
                }
            } else if let Some(v) = a.strip_prefix(&format!("{flag}=")) {
                out.push(v.to_string());
            }
        }
        out
    }
    fn value(&self, flag: &str) -> Option<String> {
        self.values(flag).pop()
    }
    fn flag(&self, flag: &str) -> bool {
        self.items.iter().any(|a| a == flag)
    }
    fn num(&self, flag: &str, default: u64) -> Result<u64, String> {
        match self.value(flag) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|e| format!("{flag} {v}: {e}")),
        }
    }
}

fn main() -> ExitCode {
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.is_empty() {
        eprintln!("usage: testpeer server|client ...");
        return ExitCode::from(64);
    }
    let cmd = argv.remove(0);
    let args = Args { items: argv };
    let res = match cmd.as_str() {
        "server" => server(&args),
        "client" => return client(&args),
        "raw" => raw(&args),
        "webhook" => webhook(&args),
        other => Err(format!("unknown subcommand {other}")),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            emit(json!({"event": "error", "error": e}));
            eprintln!("testpeer: {e}");
            ExitCode::from(1)
        }
    }
}

// ---------------------------------------------------------------- server

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Echo,
    Sink,
    Source(u64),
    /// A minimal, fast MCP-over-HTTP/1.1 responder (keep-alive): every JSON-RPC request gets a
    /// result echoing its method, params and the request headers it received. A connection
    /// idle for `keep_alive_ms` (0: never) is closed, as uvicorn or Node do after 5 s.
    /// With `drop_reused`, a request that is not the first on its connection is read and the
    /// connection closed without an answer (what a client sees when the server's keep-alive
    /// ends just as its request arrives).
    McpEcho {
        keep_alive_ms: u64,
        drop_reused: bool,
    },
}

fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.bind(&SockAddr::from(addr))?;
    sock.listen(1024)?;
    Ok(sock.into())
}

fn server(args: &Args) -> Result<(), String> {
    let addrs: Vec<SocketAddr> = args
        .values("--listen")
        .iter()
        .map(|a| a.parse().map_err(|e| format!("--listen {a}: {e}")))
        .collect::<Result<_, _>>()?;
    if addrs.is_empty() {
        return Err("server needs --listen ADDR".into());
    }
    let mode = match args.value("--mode").as_deref().unwrap_or("echo") {
        "echo" => Mode::Echo,
        "sink" => Mode::Sink,
        "source" => Mode::Source(args.num("--source-bytes", 1 << 20)?),
        "mcp-echo" => Mode::McpEcho {
            keep_alive_ms: args.num("--keep-alive-ms", 0)?,
            drop_reused: args.flag("--drop-reused"),
        },
        m => return Err(format!("unknown --mode {m}")),
    };
    let listeners: Vec<TcpListener> = addrs
        .iter()
        .map(|&a| bind_listener(a).map_err(|e| format!("bind {a}: {e}")))
        .collect::<Result<_, _>>()?;
    let bound: Vec<String> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok().map(|a| a.to_string()))
        .collect();
    let mut handles = Vec::new();
    for l in listeners {
        handles.push(thread::spawn(move || accept_loop(l, mode)));
    }
    emit(json!({"event": "listening", "addrs": bound, "pid": std::process::id()}));
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

fn accept_loop(listener: TcpListener, mode: Mode) {
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                let local = stream.local_addr().map(|a| a.to_string()).ok();
                emit(json!({"event": "accepted", "peer": peer.to_string(), "local": local}));
                thread::spawn(move || {
                    let (bytes_in, bytes_out, err) = serve(stream, mode);
                    emit(json!({
                        "event": "closed", "peer": peer.to_string(),
                        "bytes_in": bytes_in, "bytes_out": bytes_out, "error": err,
                    }));
                });
            }
            Err(e) => {
                emit(json!({"event": "accept_error", "error": e.to_string()}));
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn serve(mut stream: TcpStream, mode: Mode) -> (u64, u64, Option<String>) {
    if let Mode::McpEcho {
        keep_alive_ms,
        drop_reused,
    } = mode
    {
        let _ = stream.set_nodelay(true);
        return match serve_mcp_echo(&mut stream, keep_alive_ms, drop_reused) {
            Ok((i, o)) => (i, o, None),
            Err(e) => (0, 0, Some(e.to_string())),
        };
    }
    let mut bytes_in = 0u64;
    let mut bytes_out = 0u64;
    let mut buf = vec![0u8; BUF];
    let res: io::Result<()> = (|| {
        match mode {
            Mode::Echo => loop {
                let n = stream.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                bytes_in += n as u64;
                stream.write_all(&buf[..n])?;
                bytes_out += n as u64;
            },
            Mode::Sink => loop {
                let n = stream.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                bytes_in += n as u64;
            },
            Mode::McpEcho { .. } => unreachable!("handled before"),
            Mode::Source(total) => {
                while bytes_out < total {
                    let n = ((total - bytes_out) as usize).min(BUF);
                    fill_pattern(bytes_out, &mut buf[..n]);
                    stream.write_all(&buf[..n])?;
                    bytes_out += n as u64;
                }
                stream.shutdown(Shutdown::Write)?;
                loop {
                    let n = stream.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    bytes_in += n as u64;
                }
            }
        }
        let _ = stream.shutdown(Shutdown::Write);
        Ok(())
    })();
    (bytes_in, bytes_out, res.err().map(|e| e.to_string()))
}

// ---------------------------------------------------------------- webhook receiver

fn webhook(args: &Args) -> Result<(), String> {
    let addr: SocketAddr = args
        .value("--listen")
        .ok_or("webhook needs --listen ADDR")?
        .parse()
        .map_err(|e| format!("--listen: {e}"))?;
    let status = args.num("--status", 204)?;
    let listener = bind_listener(addr).map_err(|e| format!("bind {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    emit(json!({"event": "listening", "addr": bound.to_string(), "pid": std::process::id()}));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        thread::spawn(move || {
            if let Err(e) = webhook_conn(stream, status) {
                emit(json!({"event": "webhook_error", "error": e.to_string()}));
            }
        });
    }
    Ok(())
}

/// Reads HTTP/1.1 requests with a Content-Length body and answers each with `status`.
fn webhook_conn(mut stream: TcpStream, status: u64) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or("");
        let mut parts = request_line.split(' ');
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let mut headers = serde_json::Map::new();
        let mut len = 0usize;
        for l in lines {
            if let Some((k, v)) = l.split_once(':') {
                let k = k.trim().to_ascii_lowercase();
                let v = v.trim().to_string();
                if k == "content-length" {
                    len = v.parse().unwrap_or(0);
                }
                headers.insert(k, Value::String(v));
            }
        }
        while buf.len() < head_end + len {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = buf[head_end..head_end + len].to_vec();
        buf.drain(..head_end + len);
        let text = String::from_utf8_lossy(&body).to_string();
        emit(json!({
            "event": "webhook", "method": method, "path": path, "headers": headers,
            "body_raw": text,
            "body": serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null),
        }));
        let reply = format!("HTTP/1.1 {status} Webhook\r\nContent-Length: 0\r\n\r\n");
        stream.write_all(reply.as_bytes())?;
    }
}

// ---------------------------------------------------------------- client

fn comm() -> String {
    std::fs::read_to_string("/proc/self/comm")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// (uid, gid) from /proc/self/status (real ids).
fn ids() -> (Option<u64>, Option<u64>) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    (field("Uid:"), field("Gid:"))
}

/// The cgroup2 path of this process ("0::PATH" in /proc/self/cgroup).
fn cgroup2_path() -> Option<String> {
    std::fs::read_to_string("/proc/self/cgroup")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
}

fn connect(addr: SocketAddr, bind_any: bool, timeout: Duration) -> io::Result<TcpStream> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if bind_any {
        let any: SocketAddr = if addr.is_ipv6() {
            "[::]:0".parse().expect("literal")
        } else {
            "0.0.0.0:0".parse().expect("literal")
        };
        sock.bind(&SockAddr::from(any))?;
    }
    sock.connect_timeout(&SockAddr::from(addr), timeout)?;
    Ok(sock.into())
}

fn client(args: &Args) -> ExitCode {
    let started = Instant::now();
    let mut result = json!({
        "ok": false, "pid": std::process::id(), "comm": comm(),
        "uid": ids().0, "gid": ids().1, "cgroup": cgroup2_path(),
        "peer": null, "local": null, "sent": 0, "received": 0,
        "checksum_sent": null, "checksum_received": null,
        "error": null, "error_kind": null, "errno": null,
    });
    let code = match run_client(args, &mut result) {
        Ok(()) => {
            result["ok"] = json!(true);
            0
        }
        Err(ClientError { stage, err }) => {
            result["error"] = json!(format!("{stage}: {err}"));
            result["error_kind"] = json!(format!("{:?}", err.kind()));
            result["errno"] = json!(err.raw_os_error());
            if err.kind() == io::ErrorKind::ConnectionRefused {
                2
            } else {
                1
            }
        }
    };
    result["elapsed_ms"] = json!(started.elapsed().as_millis() as u64);
    emit(result);
    ExitCode::from(code)
}

struct ClientError {
    stage: &'static str,
    err: io::Error,
}

fn stage(stage: &'static str) -> impl FnOnce(io::Error) -> ClientError {
    move |err| ClientError { stage, err }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn run_client(args: &Args, result: &mut Value) -> Result<(), ClientError> {
    let usage = |m: String| ClientError {
        stage: "usage",
        err: io::Error::new(io::ErrorKind::InvalidInput, m),
    };
    let addr: SocketAddr = args
        .value("--connect")
        .ok_or_else(|| usage("client needs --connect ADDR".into()))?
        .parse()
        .map_err(|e| usage(format!("--connect: {e}")))?;
    let bytes = args.num("--bytes", 0).map_err(usage)?;
    let expect = args.num("--expect", bytes).map_err(usage)?;
    let timeout = Duration::from_millis(args.num("--timeout-ms", 30_000).map_err(usage)?);

    let pause = Duration::from_millis(args.num("--pause-ms", 0).map_err(usage)?);

    let stream = connect(addr, args.flag("--bind-any"), timeout).map_err(stage("connect"))?;
    // An optional pause between connecting and sending keeps the connection in flight.
    thread::sleep(pause);
    result["peer"] = json!(stream.peer_addr().ok().map(|a| a.to_string()));
    result["local"] = json!(stream.local_addr().ok().map(|a| a.to_string()));
    stream
        .set_read_timeout(Some(timeout))
        .map_err(stage("setsockopt"))?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(stage("setsockopt"))?;

    let mut writer = stream.try_clone().map_err(stage("dup"))?;
    let sender = thread::spawn(move || -> io::Result<(u64, u64)> {
        let mut buf = vec![0u8; BUF];
        let mut sent = 0u64;
        let mut sum = Checksum::default();
        while sent < bytes {
            let n = ((bytes - sent) as usize).min(BUF);
            fill_pattern(sent, &mut buf[..n]);
            writer.write_all(&buf[..n])?;
            sum.update(&buf[..n]);
            sent += n as u64;
        }
        writer.shutdown(Shutdown::Write)?;
        Ok((sent, sum.value()))
    });

    let mut reader = stream;
    let mut buf = vec![0u8; BUF];
    let mut received = 0u64;
    let mut sum = Checksum::default();
    let read_res: io::Result<()> = loop {
        match reader.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                if let Some(at) = check_pattern(received, &buf[..n]) {
                    break Err(invalid(format!("data mismatch at byte {at}")));
                }
                if received + n as u64 > expect {
                    break Err(invalid(format!(
                        "received more than the expected {expect} bytes"
                    )));
                }
                sum.update(&buf[..n]);
                received += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(e),
        }
    };
    result["received"] = json!(received);
    result["checksum_received"] = json!(sum.value());
    let send_res = sender
        .join()
        .unwrap_or_else(|_| Err(invalid("sender thread panicked".into())));
    match &send_res {
        Ok((sent, s)) => {
            result["sent"] = json!(sent);
            result["checksum_sent"] = json!(s);
        }
        Err(_) => result["sent"] = json!(null),
    }
    read_res.map_err(stage("read"))?;
    send_res.map_err(stage("write"))?;
    if received != expect {
        return Err(ClientError {
            stage: "verify",
            err: invalid(format!("received {received} bytes, expected {expect}")),
        });
    }
    if expect == bytes && result["checksum_sent"] != result["checksum_received"] {
        return Err(ClientError {
            stage: "verify",
            err: invalid("checksum mismatch".into()),
        });
    }
    Ok(())
}

// ---------------------------------------------------------------- mcp-echo

fn mcp_answer(req: &Value, headers: &serde_json::Map<String, Value>) -> Option<Value> {
    let id = req.get("id")?.clone();
    let method = req.get("method").cloned().unwrap_or(Value::Null);
    Some(json!({
        "jsonrpc": "2.0",
        "id": id,
        "result": {
            "content": [{"type": "text", "text": "echo"}],
            "method": method,
            "params": req.get("params").cloned().unwrap_or(Value::Null),
            "received_headers": headers,
        }
    }))
}

/// Serves keep-alive HTTP/1.1 requests until the peer closes, or until the connection has been
/// idle for `keep_alive_ms` (when not 0). Returns bytes in/out. Each `mcp_request` event says
/// which connection (`peer`) carried it and how long that connection had been idle (`idle_ms`,
/// null for its first request).
fn serve_mcp_echo(
    stream: &mut TcpStream,
    keep_alive_ms: u64,
    drop_reused: bool,
) -> io::Result<(u64, u64)> {
    let (mut bytes_in, mut bytes_out) = (0u64, 0u64);
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut tmp = vec![0u8; 64 * 1024];
    let peer = stream.peer_addr().map(|a| a.to_string()).ok();
    let mut answered: Option<Instant> = None;
    loop {
        // Read the head; between requests, an idle connection is closed after keep_alive_ms.
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            if buf.len() > 64 * 1024 {
                return Err(io::Error::other("request head too large"));
            }
            let idle_limit = match answered {
                Some(t) if keep_alive_ms > 0 && buf.is_empty() => {
                    let left = Duration::from_millis(keep_alive_ms).saturating_sub(t.elapsed());
                    if left.is_zero() {
                        emit(json!({"event": "keep_alive_expired", "peer": peer}));
                        return Ok((bytes_in, bytes_out));
                    }
                    Some(left)
                }
                _ => None,
            };
            stream.set_read_timeout(idle_limit)?;
            let n = match stream.read(&mut tmp) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(e),
            };
            if n == 0 {
                return Ok((bytes_in, bytes_out));
            }
            bytes_in += n as u64;
            buf.extend_from_slice(&tmp[..n]);
        };
        stream.set_read_timeout(None)?;
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or("").to_string();
        let mut headers = serde_json::Map::new();
        let mut len = 0usize;
        for l in lines {
            if let Some((k, v)) = l.split_once(':') {
                let k = k.trim().to_ascii_lowercase();
                let v = v.trim().to_string();
                if k == "content-length" {
                    len = v.parse().unwrap_or(0);
                }
                headers.insert(k, Value::String(v));
            }
        }
        while buf.len() < head_end + len {
            let n = stream.read(&mut tmp)?;
            if n == 0 {
                return Ok((bytes_in, bytes_out));
            }
            bytes_in += n as u64;
            buf.extend_from_slice(&tmp[..n]);
        }
        let body: Vec<u8> = buf[head_end..head_end + len].to_vec();
        buf.drain(..head_end + len);
        let method = request_line.split(' ').next().unwrap_or("").to_string();
        let parsed: Option<Value> = serde_json::from_slice(&body).ok();
        emit(json!({
            "event": "mcp_request", "request_line": request_line, "headers": headers, "body": parsed,
            "peer": peer, "idle_ms": answered.map(|t| t.elapsed().as_millis() as u64),
        }));
        if drop_reused && answered.is_some() {
            emit(json!({"event": "dropped", "peer": peer, "body": parsed}));
            return Ok((bytes_in, bytes_out));
        }
        let (status, payload) = match (method.as_str(), parsed) {
            ("POST", Some(Value::Array(items))) => {
                let out: Vec<Value> = items
                    .iter()
                    .filter_map(|r| mcp_answer(r, &headers))
                    .collect();
                if out.is_empty() {
                    ("202 Accepted", None)
                } else {
                    ("200 OK", Some(Value::Array(out)))
                }
            }
            ("POST", Some(v)) => match mcp_answer(&v, &headers) {
                Some(a) => ("200 OK", Some(a)),
                None => ("202 Accepted", None),
            },
            _ => (
                "400 Bad Request",
                Some(json!({"error": "mcp-echo only answers JSON-RPC POSTs"})),
            ),
        };
        let body = payload.map(|p| p.to_string()).unwrap_or_default();
        let resp = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(resp.as_bytes())?;
        bytes_out += resp.len() as u64;
        answered = Some(Instant::now());
    }
}

// ---------------------------------------------------------------- raw

/// `raw --connect ADDR --data STR [--wait-ms N]`: sends STR (with \r\n escapes written as
/// the two characters \\r\\n), then prints what came back before the peer closed or the wait
/// ran out: {"response": "...", "closed": bool}.
fn raw(args: &Args) -> Result<(), String> {
    let addr: SocketAddr = args
        .value("--connect")
        .ok_or("raw needs --connect")?
        .parse()
        .map_err(|e| format!("--connect: {e}"))?;
    let data = args
        .value("--data")
        .ok_or("raw needs --data")?
        .replace("\\r", "\r")
        .replace("\\n", "\n");
    let repeat = args.num("--repeat", 1)?;
    let wait = Duration::from_millis(args.num("--wait-ms", 2000)?);
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    for _ in 0..repeat {
        s.write_all(data.as_bytes())
            .map_err(|e| format!("write: {e}"))?;
    }
    let _ = s.set_read_timeout(Some(wait));
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    let mut closed = false;
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if repeat == 1 && complete_response(&out) {
                    break;
                }
            }
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                break;
            }
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    emit(json!({"response": String::from_utf8_lossy(&out), "closed": closed}));
    Ok(())
}

/// A whole HTTP/1.1 response with a Content-Length body has arrived.
fn complete_response(b: &[u8]) -> bool {
    let Some(end) = b.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&b[..end]).to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    match len {
        Some(n) => b.len() >= end + 4 + n,
        None => false,
    }
}
