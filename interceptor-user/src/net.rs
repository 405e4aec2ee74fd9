//! Connections steered into the agent: listening sockets, accepting, learning each
//! connection's original destination and caller, connecting to the real server, and relaying.
//!
//! A connection arrives one of two ways. Steered by sk_lookup (remote callers, and local ones
//! the cgroup hooks did not see), its local address *is* the original destination. Redirected
//! by connect4/6, it arrives on the agent's loopback port and the kernel's `ORIGINS` map,
//! keyed by the client's address, holds the original destination and the calling process.
//! Everything after that (`ConnInfo` + both streams) is handed to the connection pipeline,
//! which for now relays bytes (L4); the TLS/HTTP/MCP layers plug in at [`serve_connection`].
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use tokio::{
    net::{TcpListener, TcpSocket, TcpStream},
    sync::watch,
};
use tracing::{info, warn};

use crate::{
    config::{Config, ServiceConfig, ServiceMode},
    ebpf::{Kernel, socket_addr_of},
    error::ProxyError,
    http::McpService,
    identity::{Caller, CgroupResolver},
    pipeline::Pipeline,
    redact::engine::{Engine, PseudonymKey},
};

/// Relay buffer size per direction.
const RELAY_BUF: usize = 64 * 1024;

/// The agent's listening sockets: IPv4 loopback, and IPv6 loopback when the host has IPv6.
pub struct Listeners {
    pub v4: TcpListener,
    pub v6: Option<TcpListener>,
}

impl Listeners {
    pub fn bind(port: u16) -> Result<Listeners> {
        let v4 = listen(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
            .with_context(|| format!("listening on 127.0.0.1:{port}"))?;
        let v6 = match listen(SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port)) {
            Ok(l) => Some(l),
            Err(e) => {
                warn!(error = %e, "no IPv6 listener ([::1]); IPv6 connections will be refused");
                None
            }
        };
        Ok(Listeners { v4, v6 })
    }
}

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        let s = TcpSocket::new_v6()?;
        socket2::SockRef::from(&s).set_only_v6(true)?;
        s
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(4096)
}

/// Everything known about an accepted connection before any byte is read.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub id: u64,
    pub service_idx: u32,
    pub service: Arc<ServiceConfig>,
    pub orig_dst: SocketAddr,
    pub caller: Caller,
    pub accepted_at: Instant,
}

/// Shared state of the data path.
pub struct DataPath {
    pub config: Arc<Config>,
    pub kernel: Arc<Kernel>,
    pub cgroups: CgroupResolver,
    pub listen_port: u16,
    pub mark: u32,
    pub next_id: AtomicU64,
    pub active: AtomicUsize,
    pub total: AtomicU64,
    services: Vec<Arc<ServiceConfig>>,
    /// The HTTP/MCP side of each service (None for `mode = "tcp"`).
    pub mcp: Vec<Option<Arc<McpService>>>,
    /// Identity and policy, when any service requires authentication.
    pub auth: Option<Arc<crate::auth::Auth>>,
    /// The audit log (None when `audit.enabled = false`).
    pub audit: Option<Arc<crate::audit::Audit>>,
}

impl DataPath {
    pub fn new(
        config: Arc<Config>,
        kernel: Arc<Kernel>,
        cgroups: CgroupResolver,
        mark: u32,
        pipeline: Pipeline,
        auth: Option<Arc<crate::auth::Auth>>,
    ) -> Result<Self> {
        let services: Vec<Arc<ServiceConfig>> =
            config.services.iter().cloned().map(Arc::new).collect();
        let audit = pipeline.audit().cloned();
        let mut mcp = Vec::with_capacity(services.len());
        // Request parameters are redacted before any log or record, on every MCP service: a
        // service without its own `[services.redact]` uses the built-in detectors for that.
        // The pseudonym key is the one in force in the key ring (newest), loaded once.
        let mut key = None;
        let mut builtin = None;
        for s in &services {
            mcp.push(match s.mode {
                ServiceMode::Tcp => None,
                ServiceMode::Mcp => {
                    if key.is_none() {
                        key = Some(PseudonymKey::new(load_pseudonym_key(&config.agent)?.1));
                    }
                    let key = key.clone().unwrap_or_else(|| unreachable!());
                    let (responses, records) = match &s.redact {
                        Some(r) => {
                            let e = Engine::new(r, key)
                                .map_err(|e| anyhow::anyhow!("services.{}.redact: {e}", s.name))?;
                            for c in Engine::costly_custom_detectors(r) {
                                warn!(
                                    event = "redact_costly_detector",
                                    service = %s.name,
                                    entity = %c.entity,
                                    automaton_bytes = c.automaton_bytes,
                                    "{c}"
                                );
                            }
                            (Some(e.clone()), e)
                        }
                        None => (
                            None,
                            builtin.get_or_insert_with(|| Engine::builtin(key)).clone(),
                        ),
                    };
                    Some(Arc::new(McpService::new(
                        s.clone(),
                        mark,
                        config.agent.connect_timeout(),
                        pipeline.clone(),
                        auth.clone(),
                        responses,
                        records,
                    )?))
                }
            });
        }
        Ok(DataPath {
            mcp,
            auth,
            audit,
            listen_port: config.agent.listen_port,
            config,
            kernel,
            cgroups,
            mark,
            next_id: AtomicU64::new(1),
            active: AtomicUsize::new(0),
            total: AtomicU64::new(0),
            services,
        })
    }

    /// Works out where an accepted connection was going and who opened it.
    pub fn classify(&self, local: SocketAddr, peer: SocketAddr) -> Result<ConnInfo, ProxyError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let accepted_at = Instant::now();
        if local.port() == self.listen_port && local.ip().is_loopback() {
            let origin = self.kernel.take_origin(peer).ok_or_else(|| {
                ProxyError::client(format!(
                    "connection from {peer} to the agent port has no recorded origin \
                     (not redirected by the kernel)"
                ))
            })?;
            let service = self
                .services
                .get(origin.service_id as usize)
                .cloned()
                .ok_or_else(|| {
                    ProxyError::internal(format!("unknown service slot {}", origin.service_id))
                })?;
            let process = self.cgroups.local_process(&origin);
            return Ok(ConnInfo {
                id,
                service_idx: origin.service_id,
                service,
                orig_dst: socket_addr_of(&origin.orig),
                caller: Caller::Local { peer, process },
                accepted_at,
            });
        }
        let (idx, _) = self
            .config
            .service_for(local.ip(), local.port())
            .ok_or_else(|| {
                ProxyError::internal(format!("steered connection to {local} matches no service"))
            })?;
        Ok(ConnInfo {
            id,
            service_idx: idx,
            service: self.services[idx as usize].clone(),
            orig_dst: SocketAddr::new(crate::config::canonical(local.ip()), local.port()),
            caller: Caller::Remote { peer },
            accepted_at,
        })
    }

    /// Opens the agent's own connection to the real server.
    pub async fn connect_upstream(&self, dst: SocketAddr) -> Result<TcpStream, ProxyError> {
        connect_marked(dst, self.mark, self.config.agent.connect_timeout()).await
    }
}

/// The pseudonym key in force: id and key (the ring's first key is created when empty).
pub fn load_pseudonym_key(agent: &crate::config::AgentSettings) -> Result<(String, [u8; 32])> {
    let dir = agent.pseudonym_keys();
    crate::audit::keys::KeyRing::new(&dir)
        .current_or_create()
        .with_context(|| format!("agent.pseudonym_key_dir {}", dir.display()))
}

/// Connects to the real server with the agent's socket mark, so the kernel neither redirects
/// the connection nor steers it back to the agent.
pub async fn connect_marked(
    dst: SocketAddr,
    mark: u32,
    timeout: Duration,
) -> Result<TcpStream, ProxyError> {
    let sock = if dst.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| ProxyError::internal("creating upstream socket").because(e))?;
    socket2::SockRef::from(&sock)
        .set_mark(mark)
        .map_err(|e| ProxyError::internal("setting SO_MARK on upstream socket").because(e))?;
    match tokio::time::timeout(timeout, sock.connect(dst)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(ProxyError::upstream(format!("connecting to {dst}"), true).because(e)),
        Err(_) => Err(ProxyError::upstream(
            format!("connecting to {dst}: timed out after {timeout:?}"),
            true,
        )),
    }
}

/// Accepts connections until `stop` flips, handing each to its own task.
pub async fn accept_loop(
    dp: Arc<DataPath>,
    listener: TcpListener,
    stop: watch::Receiver<bool>,
    hard_stop: watch::Receiver<bool>,
) {
    let mut stop_rx = stop.clone();
    loop {
        tokio::select! {
            _ = stop_rx.changed() => break,
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    let dp = dp.clone();
                    let hard = hard_stop.clone();
                    tokio::spawn(async move { serve_connection(dp, stream, peer, hard).await });
                }
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    // Dropping the listener closes it: the kernel removes it from the sockmap and new
    // connections to protected ports are refused from here on.
}

struct ActiveGuard<'a>(&'a AtomicUsize);
impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One connection, start to finish: classify, connect upstream, relay, log.
pub async fn serve_connection(
    dp: Arc<DataPath>,
    client: TcpStream,
    peer: SocketAddr,
    mut hard_stop: watch::Receiver<bool>,
) {
    dp.active.fetch_add(1, Ordering::AcqRel);
    dp.total.fetch_add(1, Ordering::Relaxed);
    let _guard = ActiveGuard(&dp.active);
    let local = match client.local_addr() {
        Ok(a) => a,
        Err(e) => {
            warn!(event = "conn_error", %peer, error = %e, "accepted socket has no local address");
            return;
        }
    };
    let info = match dp.classify(local, peer) {
        Ok(i) => i,
        Err(e) => {
            warn!(event = "conn_rejected", %peer, %local, side = ?e.side, error = %e, "closing connection");
            if let Some(a) = &dp.audit {
                a.record(crate::audit::AuditEvent::new(
                    "conn_rejected",
                    serde_json::json!({"peer": peer.to_string(), "local": local.to_string(), "error": e.to_string()}),
                ));
            }
            return;
        }
    };
    log_open(&info);
    // The connection is recorded before a byte of it is served. A tcp service relays bytes
    // nobody inspects, so it is closed when that fails; on an MCP service every request is
    // recorded (or refused with a clear error) on its own.
    if let Some(a) = &dp.audit
        && let Err(e) = a
            .append(crate::audit::AuditEvent::new(
                "conn_open",
                conn_json(&info, None),
            ))
            .await
    {
        tracing::error!(event = "audit_unavailable", conn_id = info.id, service = %info.service.name, side = "internal", error = %e, "the connection could not be recorded in the audit log");
        if info.service.mode == ServiceMode::Tcp {
            log_close(&info, 0, 0, "refused: audit log unavailable");
            return;
        }
    }
    let _ = client.set_nodelay(true);
    if let Some(svc) = dp.mcp.get(info.service_idx as usize).cloned().flatten() {
        let (up, down, reason) = crate::http::serve(svc, info.clone(), client, hard_stop).await;
        log_close(&info, up, down, &reason);
        record_close(&dp, &info, up, down, &reason);
        return;
    }
    let upstream = match dp.connect_upstream(info.orig_dst).await {
        Ok(u) => u,
        Err(e) => {
            log_close(&info, 0, 0, &e.to_string());
            record_close(&dp, &info, 0, 0, &e.to_string());
            return;
        }
    };
    let (mut client, mut upstream) = (client, upstream);
    let relay =
        tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, RELAY_BUF, RELAY_BUF);
    let (up, down, reason) = tokio::select! {
        r = relay => match r {
            Ok((up, down)) => (up, down, "closed".to_string()),
            Err(e) => (0, 0, format!("relay error: {e}")),
        },
        _ = wait_true(&mut hard_stop) => (0, 0, "agent shutdown: grace period over".to_string()),
    };
    log_close(&info, up, down, &reason);
    record_close(&dp, &info, up, down, &reason);
}

/// A connection as the audit log records it (open, and close with its byte counts).
fn conn_json(i: &ConnInfo, close: Option<(u64, u64, &str)>) -> serde_json::Value {
    let p = i.caller.process();
    let mut v = serde_json::json!({
        "service": i.service.name,
        "conn_id": i.id,
        "orig_dst": i.orig_dst.to_string(),
        "caller_kind": i.caller.kind(),
        "peer": i.caller.peer().to_string(),
        "tgid": p.map(|p| p.tgid),
        "pid": p.map(|p| p.pid),
        "uid": p.map(|p| p.uid),
        "gid": p.map(|p| p.gid),
        "comm": p.map(|p| p.comm.clone()),
        "cgroup": p.and_then(|p| p.cgroup.clone()),
        "unit": p.and_then(|p| p.unit.clone()),
    });
    if let Some((up, down, reason)) = close {
        v["bytes_to_server"] = up.into();
        v["bytes_to_client"] = down.into();
        v["duration_ms"] = (i.accepted_at.elapsed().as_millis() as u64).into();
        v["close_reason"] = reason.into();
    }
    v
}

fn record_close(dp: &DataPath, i: &ConnInfo, up: u64, down: u64, reason: &str) {
    if let Some(a) = &dp.audit {
        a.record(crate::audit::AuditEvent::new(
            "conn_close",
            conn_json(i, Some((up, down, reason))),
        ));
    }
}

async fn wait_true(rx: &mut watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

fn log_open(i: &ConnInfo) {
    match i.caller.process() {
        Some(p) => info!(
            event = "conn_open",
            conn_id = i.id,
            service = %i.service.name,
            orig_dst = %i.orig_dst,
            peer = %i.caller.peer(),
            caller_kind = i.caller.kind(),
            tgid = p.tgid,
            pid = p.pid,
            uid = p.uid,
            gid = p.gid,
            comm = %p.comm,
            cgroup_id = p.cgroup_id,
            cgroup = p.cgroup.as_deref().unwrap_or(""),
            unit = p.unit.as_deref().unwrap_or(""),
            "connection opened"
        ),
        None => info!(
            event = "conn_open",
            conn_id = i.id,
            service = %i.service.name,
            orig_dst = %i.orig_dst,
            peer = %i.caller.peer(),
            caller_kind = i.caller.kind(),
            "connection opened"
        ),
    }
}

fn log_close(i: &ConnInfo, to_server: u64, to_client: u64, reason: &str) {
    info!(
        event = "conn_close",
        conn_id = i.id,
        service = %i.service.name,
        orig_dst = %i.orig_dst,
        peer = %i.caller.peer(),
        caller_kind = i.caller.kind(),
        bytes_to_server = to_server,
        bytes_to_client = to_client,
        duration_ms = i.accepted_at.elapsed().as_millis() as u64,
        close_reason = reason,
        "connection closed"
    );
}
