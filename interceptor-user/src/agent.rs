//! `interceptor run`: brings the agent up, keeps it serving, and shuts it down cleanly.
//!
//! Order matters for the no-bypass promise. Listeners are bound first; programs are attached
//! (or the pinned ones taken over) before the agent announces itself in the kernel's config
//! map; only then are the listeners published in the sockmap. On SIGTERM the listeners close
//! first (new connections are refused by the kernel, not let through), in-flight connections
//! get the grace period, and the programs stay pinned so protection outlives the process.
use std::{path::PathBuf, sync::Arc, time::Instant};

use anyhow::{Context as _, Result, bail};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
};
use tracing::{error, info, warn};

use crate::{
    approval::{ApprovalPhase, Approvals, webhook::Webhook},
    audit::{Audit, AuditEvent},
    auth::Auth,
    config::Config,
    control::ControlServer,
    ebpf::{AttachPoints, Kernel, ensure_cgroup2},
    identity::CgroupResolver,
    net::{DataPath, Listeners, accept_loop},
    notify::Notifier,
    oidc::Verifier,
    pipeline::{ExchangeLog, Pipeline},
    policy::PolicySet,
    sys,
};

/// Default SO_MARK of the agent's upstream sockets ("1c9e" ~ "icpt").
pub const DEFAULT_MARK: u32 = 0x1c9e_0001;

pub fn cgroup_dir(cgroup2: &std::path::Path, cgroup_path: &str) -> PathBuf {
    cgroup2.join(cgroup_path.trim_start_matches('/'))
}

/// The agent's own cgroup2 path, from /proc/self/cgroup ("0::/path").
fn own_cgroup() -> Option<String> {
    let s = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim().to_string())
}

pub async fn run(config: Config) -> Result<()> {
    let started = Instant::now();
    // systemd's notification socket (Type=notify); a no-op when not started by systemd.
    let notifier = Arc::new(Notifier::from_env().unwrap_or_else(|e| {
        warn!(error = %e, "NOTIFY_SOCKET unusable; not notifying the service manager");
        Notifier::disabled()
    }));
    let config = Arc::new(config);
    let a = &config.agent;
    if sys::geteuid() != 0 {
        warn!(
            "not running as root: attaching eBPF programs needs CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN"
        );
    }

    let listeners = Listeners::bind(a.listen_port)?;
    // The audit log opens before the programs are (re)attached: its first checkpoint reads the
    // kernel counters of the generation in place, which a new generation would reset.
    let audit = if config.audit.enabled {
        Some(start_audit(&config)?)
    } else {
        warn!(
            event = "audit_disabled",
            "audit.enabled = false: exchanges are logged but not recorded durably"
        );
        None
    };
    let cgroup2 = ensure_cgroup2(a.cgroup2.as_deref(), &a.runtime_dir.join("cgroup2"))?;
    let cgroup_dir = cgroup_dir(&cgroup2, &a.cgroup_path);
    if !cgroup_dir.is_dir() {
        bail!("agent.cgroup_path: {} does not exist", cgroup_dir.display());
    }
    // The agent's upstream sockets must be seen by sock_ops (attached at cgroup_path) to be
    // exempted from steering; an agent outside that subtree would loop onto itself.
    if let Some(own) = own_cgroup() {
        let scope = a.cgroup_path.trim_end_matches('/');
        if !(scope.is_empty() || own == scope || own.starts_with(&format!("{scope}/"))) {
            bail!(
                "agent.cgroup_path: the agent runs in cgroup {own:?}, outside {:?}; its own upstream \
                 connections would not be exempted",
                a.cgroup_path
            );
        }
    }

    let kernel = Arc::new(
        Kernel::start(&AttachPoints {
            bpffs: a.bpffs.clone(),
            pin_root: a.pin_root(),
            cgroup_dir: cgroup_dir.clone(),
        })
        .context("setting up the eBPF programs")?,
    );
    let netns = sys::netns_cookie(&listeners.v4).context("reading SO_NETNS_COOKIE")?;
    let mark = DEFAULT_MARK;
    kernel.set_agent(netns, a.listen_port, mark)?;
    kernel.sync_services(&config.services)?;
    kernel.sync_local_addrs(&sys::local_addrs().unwrap_or_default())?;
    kernel.register_listeners(&listeners.v4, listeners.v6.as_ref())?;

    // Phases that hear every approval step; the approval phase itself is added after (it
    // reports exchange completions to the approvals, which report to these phases).
    // The audit log hears them too (`Pipeline::approval_event`).
    let base = Pipeline::new()
        .with(Arc::new(ExchangeLog))
        .with_audit(audit.clone());
    let mut approvals = None;
    let auth = if config.services.iter().any(|s| s.auth.is_some()) {
        let policy = PolicySet::load(&config.auth.policy)
            .map_err(|e| anyhow::anyhow!("auth.policy: invalid policy, not starting:\n{e}"))?;
        let verifier = Verifier::new(config.auth.issuers.clone())
            .map_err(|e| anyhow::anyhow!("auth.issuers: {e}"))?;
        verifier.start();
        info!(
            event = "policy_loaded",
            policy_version = %policy.version(),
            issuers = config.auth.issuers.len(),
            "identity and policy enabled"
        );
        let webhook = match &config.approvals.webhook {
            Some(w) => {
                Some(Webhook::start(w).map_err(|e| anyhow::anyhow!("approvals.webhook: {e}"))?)
            }
            None => None,
        };
        let a = Approvals::new(&config.approvals, base.clone(), webhook);
        approvals = Some(a.clone());
        Some(Arc::new(
            Auth::new(verifier, policy, config.auth.policy.clone()).with_approvals(a),
        ))
    } else {
        None
    };
    if let Some(audit) = &audit {
        audit
            .append(AuditEvent::new(
                "agent_start",
                serde_json::json!({
                    "pid": std::process::id(),
                    "version": env!("CARGO_PKG_VERSION"),
                    "instance": a.instance,
                    "takeover": kernel.took_over,
                    "services": config.services.iter().map(|s| serde_json::json!({
                        "name": s.name, "port": s.port, "address": s.address,
                        "mode": format!("{:?}", s.mode).to_lowercase(),
                        "tls": s.tls.is_some(), "auth": s.auth.is_some(), "redact": s.redact.is_some(),
                    })).collect::<Vec<_>>(),
                }),
            ))
            .await
            .map_err(|e| anyhow::anyhow!("audit.db: cannot record the agent start: {e}"))?;
        if let Some(auth) = &auth {
            audit
                .append(crate::audit::policy_event(&auth.policy(), "start"))
                .await
                .map_err(|e| anyhow::anyhow!("audit.db: cannot record the policy: {e}"))?;
        }
    }
    let pipeline = match &approvals {
        Some(a) => base.with(Arc::new(ApprovalPhase(a.clone()))),
        None => base,
    };
    let dp = Arc::new(DataPath::new(
        config.clone(),
        kernel.clone(),
        CgroupResolver::new(cgroup2.clone()),
        mark,
        pipeline,
        auth,
    )?);
    spawn_cert_reload(
        dp.clone(),
        notifier.clone(),
        std::time::Duration::from_millis(config.agent.cert_reload_ms.max(200)),
    );
    let _control = ControlServer::bind(&a.control_socket(), dp.clone(), started)?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let (hard_tx, hard_rx) = watch::channel(false);
    if let Some(a) = &approvals {
        a.spawn_sweeper(stop_rx.clone());
    }
    if let Some(addr) = config.approvals.http_listen {
        let (Some(auth), Some(audience)) = (&dp.auth, &config.approvals.audience) else {
            bail!(
                "approvals.http_listen: approvals need a service with [services.auth] and approvals.audience"
            );
        };
        let tls = match &config.approvals.http_tls {
            Some(t) => Some(
                crate::tls::TlsTerminator::new("approvals", t)
                    .map_err(|e| anyhow::anyhow!("approvals.http_tls: {e}"))?,
            ),
            None => None,
        };
        crate::approval::api::start(addr, tls, auth.clone(), audience.clone(), stop_rx.clone())
            .await?;
    }
    let mut loops = Vec::new();
    loops.push(tokio::spawn(accept_loop(
        dp.clone(),
        listeners.v4,
        stop_rx.clone(),
        hard_rx.clone(),
    )));
    if let Some(v6) = listeners.v6 {
        loops.push(tokio::spawn(accept_loop(
            dp.clone(),
            v6,
            stop_rx.clone(),
            hard_rx.clone(),
        )));
    }
    spawn_local_addr_refresh(kernel.clone(), a.local_addrs_refresh_ms, stop_rx.clone());

    info!(
        event = "ready",
        pid = std::process::id(),
        takeover = kernel.took_over,
        pin_dir = %kernel.generation_dir.display(),
        cgroup = %cgroup_dir.display(),
        services = config.services.len(),
        "interceptor agent ready"
    );
    // Only now: programs attached, listeners in the sockmap, control socket bound.
    if let Err(e) = notifier.ready(&format!(
        "serving {} service(s); programs {}",
        config.services.len(),
        if kernel.took_over {
            "taken over"
        } else {
            "attached"
        }
    )) {
        warn!(error = %e, "could not notify the service manager (READY=1)");
    }
    spawn_watchdog(notifier.clone(), kernel.clone(), stop_rx.clone());

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => info!(event = "shutdown", signal = "SIGTERM", "shutting down"),
        _ = int.recv() => info!(event = "shutdown", signal = "SIGINT", "shutting down"),
    }
    let _ = notifier.stopping("closing listeners; in-flight exchanges finish");
    let _ = stop_tx.send(true);
    for l in loops {
        let _ = l.await;
    }
    // Held calls cannot outlive the agent: their callers get a clear error now.
    if let Some(a) = &approvals {
        let n = a.abandon_all();
        if n > 0 {
            warn!(
                event = "shutdown",
                abandoned = n,
                "calls held for approval abandoned"
            );
        }
    }
    let grace = a.grace_period();
    let deadline = Instant::now() + grace;
    while dp.active.load(std::sync::atomic::Ordering::Acquire) > 0 && Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let left = dp.active.load(std::sync::atomic::Ordering::Acquire);
    if left > 0 {
        warn!(
            event = "shutdown",
            connections = left,
            "grace period over; closing remaining connections"
        );
        let _ = hard_tx.send(true);
        let deadline = Instant::now() + std::time::Duration::from_secs(2);
        while dp.active.load(std::sync::atomic::Ordering::Acquire) > 0 && Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    if let Some(a) = &approvals {
        a.flush(std::time::Duration::from_secs(2)).await;
    }
    if let Some(audit) = &audit {
        let _ = audit
            .append(AuditEvent::new(
                "agent_stop",
                serde_json::json!({"pid": std::process::id(), "connections_cut": left}),
            ))
            .await;
        match audit.shutdown().await {
            Ok(Some(cp)) => {
                info!(event = "audit_checkpoint", size = cp.size, root = %cp.root_hex, reason = "shutdown", "final checkpoint signed")
            }
            Ok(None) => {}
            Err(e) => {
                error!(event = "audit_checkpoint_failed", error = %e, "final checkpoint failed")
            }
        }
    }
    info!(
        event = "stopped",
        "interceptor agent stopped; programs stay pinned"
    );
    Ok(())
}

/// Opens the audit log: database, signing key (created on first start), kernel counters.
fn start_audit(config: &Config) -> Result<Arc<Audit>> {
    let au = &config.audit;
    let origin = config.audit_origin();
    let signer = crate::audit::note::Signer::load_or_create(&au.signing_key, &origin)
        .map_err(|e| anyhow::anyhow!("audit.signing_key {}: {e}", au.signing_key.display()))?;
    let pin_root = config.agent.pin_root();
    let names: Vec<String> = config.services.iter().map(|s| s.name.clone()).collect();
    // Every MCP service redacts at least request parameters with the key in force.
    let pseudonym_key = if config
        .services
        .iter()
        .any(|s| s.mode == crate::config::ServiceMode::Mcp)
    {
        Some(crate::net::load_pseudonym_key(&config.agent)?.0)
    } else {
        None
    };
    let db = config.audit_db();
    let audit = Audit::start(crate::audit::Options {
        db: db.clone(),
        signer,
        origin,
        checkpoint_interval: std::time::Duration::from_secs(au.checkpoint_interval_secs),
        checkpoint_max_records: au.checkpoint_max_records,
        retention: (au.retention_days > 0)
            .then(|| std::time::Duration::from_secs(au.retention_days * 86_400)),
        max_batch: au.max_batch,
        counters: Some(Box::new(move || {
            crate::audit::counters::read(&pin_root, &names)
        })),
        pseudonym_key,
    })?;
    info!(event = "audit_ready", db = %db.display(), "audit log open");
    Ok(audit)
}

fn spawn_local_addr_refresh(kernel: Arc<Kernel>, every_ms: u64, mut stop: watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut last = Vec::new();
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(every_ms));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            match sys::local_addrs() {
                Ok(mut addrs) => {
                    addrs.sort();
                    if addrs != last {
                        if let Err(e) = kernel.sync_local_addrs(&addrs) {
                            error!(error = %e, "updating the local address set failed");
                        }
                        last = addrs;
                    }
                }
                Err(e) => warn!(error = %e, "listing local addresses failed"),
            }
        }
    });
}

/// Pings systemd's watchdog at half of `WatchdogSec=` while the agent is healthy: the runtime
/// schedules timers and the pinned programs of this generation are still there (someone
/// removing them behind the agent's back gets it restarted, which re-attaches them).
fn spawn_watchdog(notifier: Arc<Notifier>, kernel: Arc<Kernel>, mut stop: watch::Receiver<bool>) {
    let Some(every) = notifier.watchdog_interval() else {
        return;
    };
    info!(
        event = "watchdog",
        interval_ms = every.as_millis() as u64,
        "watchdog pings enabled"
    );
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            if !kernel.generation_dir.is_dir() {
                error!(
                    event = "watchdog",
                    pin_dir = %kernel.generation_dir.display(),
                    "pins are gone; withholding watchdog pings so the service is restarted"
                );
                continue;
            }
            if let Err(e) = notifier.watchdog() {
                warn!(error = %e, "watchdog ping failed");
            }
        }
    });
}

/// Certificates can be replaced on disk without a restart: check every period and on SIGHUP.
fn spawn_cert_reload(dp: Arc<DataPath>, notifier: Arc<Notifier>, every: std::time::Duration) {
    tokio::spawn(async move {
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "no SIGHUP handler");
                return;
            }
        };
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = hup.recv() => {
                    info!(event = "reload", "SIGHUP: reloading policy and certificates");
                    let _ = notifier.reloading();
                    if let Some(auth) = &dp.auth {
                        match auth.reload_policy() {
                            Ok(_) => {
                                if let Some(a) = &dp.audit {
                                    let _ = a.append(crate::audit::policy_event(&auth.policy(), "reload")).await;
                                }
                            }
                            Err(e) => {
                                error!(event = "policy_reload_failed", error = %e, "invalid policy; the running policy stays in force");
                                if let Some(a) = &dp.audit {
                                    a.record(AuditEvent::new(
                                        "policy_rejected",
                                        serde_json::json!({"error": e.to_string(), "in_force": auth.policy().version()}),
                                    ));
                                }
                            }
                        }
                    }
                    reload_certs(&dp);
                    let _ = notifier.ready("reloaded");
                    continue;
                }
            }
            reload_certs(&dp);
        }
    });
}

fn reload_certs(dp: &DataPath) {
    for svc in dp.mcp.iter().flatten() {
        if let Some(tls) = &svc.tls {
            match tls.reload_if_changed() {
                Ok(true) => {
                    info!(event = "cert_reloaded", service = %svc.cfg.name, "certificate reloaded")
                }
                Ok(false) => {}
                Err(e) => {
                    error!(event = "cert_reload_failed", service = %svc.cfg.name, error = %e, "certificate reload failed; the previous certificate stays in force")
                }
            }
        }
    }
}
