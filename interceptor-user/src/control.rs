//! The local control socket: how the CLI talks to a running agent.
//!
//! A Unix stream socket in the runtime directory. One request line, one JSON response line.
//! Commands: `status`, `policy-reload`, `audit-checkpoint`, and the JSON `approvals.*` commands
//! ([`crate::approval::control`]).
//!
//! The socket is mode 0600 (root only), or, with `approvals.control_group`, `root:<group>`
//! mode 0660 so that approvers who are not root can reach it. Every command is checked
//! against the peer's credentials (SO_PEERCRED): `policy-reload` needs root or the agent's
//! own uid; the approval commands need an approver (uid mapped by the policy's
//! `[[approvers]]`, or the approver's own token) or, for reading, root; `status` is open to
//! anyone who can connect.
use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};
use tracing::warn;

use crate::net::DataPath;

/// What a running agent reports about itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentHealth {
    pub running: bool,
    pub pid: Option<u32>,
    pub uptime_s: Option<u64>,
    pub active_connections: Option<usize>,
    pub total_connections: Option<u64>,
    pub took_over_pins: Option<bool>,
}

impl AgentHealth {
    pub fn down() -> Self {
        AgentHealth {
            running: false,
            pid: None,
            uptime_s: None,
            active_connections: None,
            total_connections: None,
            took_over_pins: None,
        }
    }
}

pub struct ControlServer {
    path: PathBuf,
}

impl ControlServer {
    /// Binds the control socket, replacing a stale one left by a dead agent.
    pub fn bind(path: &Path, dp: Arc<DataPath>, started: std::time::Instant) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                anyhow::bail!(
                    "another agent is already running for this instance (control socket {} answers)",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing stale {}", path.display()))?;
        }
        let listener =
            UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
        match &dp.config.approvals.control_group {
            None => std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?,
            Some(g) => {
                let gid = g
                    .resolve()
                    .map_err(|e| anyhow::anyhow!("approvals.control_group: {e}"))?;
                std::os::unix::fs::chown(path, None, Some(gid))
                    .with_context(|| format!("chown {} to group {gid}", path.display()))?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
            }
        }
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let dp = dp.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, dp, started).await {
                        warn!(error = %e, "control request failed");
                    }
                });
            }
        });
        Ok(ControlServer {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Longest request line (approver tokens and reasons fit).
const MAX_LINE: u64 = 64 * 1024;

async fn handle(stream: UnixStream, dp: Arc<DataPath>, started: std::time::Instant) -> Result<()> {
    let peer_uid = stream.peer_cred().ok().map(|c| c.uid());
    let admin = peer_uid.is_some_and(|u| u == 0 || u == crate::sys::geteuid());
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut r = BufReader::new(r).take(MAX_LINE);
    tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line)).await??;
    let reply = match line.trim() {
        json if json.starts_with('{') => match serde_json::from_str::<serde_json::Value>(json) {
            Ok(cmd) => crate::approval::control::handle(
                dp.auth.as_deref(),
                dp.config.approvals.audience.as_deref(),
                peer_uid,
                &cmd,
            )
            .await
            .to_string(),
            Err(e) => serde_json::json!({"ok": false, "error": format!("not JSON: {e}")})
                .to_string(),
        },
        "policy-reload" if !admin => serde_json::json!({
            "ok": false,
            "error": format!("uid {} may not reload the policy (root or the agent's user only)", peer_uid.map(|u| u.to_string()).unwrap_or_else(|| "?".into())),
            "in_force": dp.auth.as_ref().map(|a| a.policy().version().to_string()),
        })
        .to_string(),
        "status" => serde_json::to_string(&AgentHealth {
            running: true,
            pid: Some(std::process::id()),
            uptime_s: Some(started.elapsed().as_secs()),
            active_connections: Some(dp.active.load(std::sync::atomic::Ordering::Relaxed)),
            total_connections: Some(dp.total.load(std::sync::atomic::Ordering::Relaxed)),
            took_over_pins: Some(dp.kernel.took_over),
        })?,
        "policy-reload" => match &dp.auth {
            None => {
                serde_json::json!({"ok": false, "error": "no service uses a policy"}).to_string()
            }
            Some(auth) => match auth.reload_policy() {
                Ok((old, new)) => {
                    if let Some(a) = &dp.audit {
                        let _ = a
                            .append(crate::audit::policy_event(&auth.policy(), "reload"))
                            .await;
                    }
                    serde_json::json!({"ok": true, "old_version": old, "new_version": new})
                        .to_string()
                }
                Err(e) => {
                    tracing::error!(event = "policy_reload_failed", error = %e, "invalid policy; the running policy stays in force");
                    if let Some(a) = &dp.audit {
                        a.record(crate::audit::AuditEvent::new(
                            "policy_rejected",
                            serde_json::json!({"error": e.to_string(), "in_force": auth.policy().version()}),
                        ));
                    }
                    serde_json::json!({"ok": false, "error": e, "in_force": auth.policy().version()}).to_string()
                }
            },
        },
        "audit-checkpoint" if !admin => serde_json::json!({
            "ok": false,
            "error": format!("uid {} may not sign checkpoints (root or the agent's user only)", peer_uid.map(|u| u.to_string()).unwrap_or_else(|| "?".into())),
        })
        .to_string(),
        "audit-checkpoint" => match &dp.audit {
            None => {
                serde_json::json!({"ok": false, "error": "the audit log is disabled"}).to_string()
            }
            Some(a) => match a.checkpoint("request").await {
                Ok(s) => serde_json::json!({"ok": true, "checkpoint": s}).to_string(),
                Err(e) => serde_json::json!({"ok": false, "error": e.to_string()}).to_string(),
            },
        },
        other => serde_json::json!({"error": format!("unknown command {other:?}")}).to_string(),
    };
    w.write_all(reply.as_bytes()).await?;
    w.write_all(b"\n").await?;
    Ok(())
}

use tokio::io::AsyncReadExt as _;

/// Sends one command line to a running agent and returns its JSON answer.
pub fn request(path: &Path, command: &str) -> Result<serde_json::Value> {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path)
        .with_context(|| format!("no agent answers on {}", path.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(format!("{command}\n").as_bytes())?;
    let mut line = String::new();
    std::io::BufReader::new(s).read_line(&mut line)?;
    Ok(serde_json::from_str(&line)?)
}

/// Asks a running agent for its health; `down()` when nothing answers.
pub fn query_health(path: &Path) -> AgentHealth {
    use std::io::{BufRead, Write};
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(path) else {
        return AgentHealth::down();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"status\n").is_err() {
        return AgentHealth::down();
    }
    let mut line = String::new();
    if std::io::BufReader::new(s).read_line(&mut line).is_err() {
        return AgentHealth::down();
    }
    serde_json::from_str(&line).unwrap_or_else(|_| AgentHealth::down())
}
