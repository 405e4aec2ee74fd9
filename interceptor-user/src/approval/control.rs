//! Approvals over the control socket: the `approvals.*` commands the agent answers, and the
//! `interceptor approvals` command line that sends them.
//!
//! Requests are one JSON line: `{"cmd": "approvals.list", "all": false}`,
//! `{"cmd": "approvals.show", "id": ID}`, `{"cmd": "approvals.approve", "id": ID,
//! "reason": R, "grant": {"minutes": N, "bounds": EXPR}}`, `{"cmd": "approvals.deny", "id":
//! ID, "reason": R}`; each may carry `"token"` (the approver's own OIDC token, for
//! `approvals.audience`). Without a token the approver is the socket peer's uid
//! (SO_PEERCRED) as `[[approvers]]` maps it. The agent's own uid and root may list and show
//! everything; deciding always takes an approver. Answers: `{"ok": true, ...}` or
//! `{"ok": false, "error": "..."}`.
use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::{
    Approvals,
    approver::Approver,
    registry::{GrantSpec, RequestView, VoteError},
};
use crate::auth::Auth;

/// Who is asking, once established.
pub enum Asker {
    /// Root or the agent's own user: may see everything, may not decide.
    Admin,
    Approver(Approver),
}

impl Asker {
    /// Whether this asker may see `v`: admins everything, approvers the requests of rules
    /// they may decide on.
    pub fn sees(&self, v: &RequestView) -> bool {
        match self {
            Asker::Admin => true,
            Asker::Approver(a) => a.groups.iter().any(|g| v.approvers.contains(g)),
        }
    }
}

/// Establishes the approver behind `token` (for `audience`).
pub async fn approver_by_token(
    auth: &Auth,
    audience: Option<&str>,
    token: &str,
) -> Result<Approver, String> {
    let Some(aud) = audience else {
        return Err(
            "approvals by token need approvals.audience in the agent's configuration".into(),
        );
    };
    let t = auth
        .verifier
        .verify(token.trim(), aud)
        .await
        .map_err(|e| format!("approver token refused: {}", e.description()))?;
    let policy = auth.policy();
    let rules = policy.approval_rules();
    let a = Approver::by_token(rules, &t);
    if !rules.is_approver_group_member(&a.groups) {
        return Err(format!(
            "{} is in no approver group of any approval rule",
            a.display
        ));
    }
    Ok(a)
}

/// Answers one `approvals.*` command from a control socket peer with `uid`.
pub async fn handle(
    auth: Option<&Auth>,
    audience: Option<&str>,
    uid: Option<u32>,
    cmd: &Value,
) -> Value {
    match answer(auth, audience, uid, cmd).await {
        Ok(v) => v,
        Err(e) => json!({"ok": false, "error": e}),
    }
}

async fn answer(
    auth: Option<&Auth>,
    audience: Option<&str>,
    uid: Option<u32>,
    cmd: &Value,
) -> Result<Value, String> {
    let auth = auth.ok_or("no service uses a policy: there are no approvals")?;
    let approvals = auth
        .approvals
        .as_ref()
        .ok_or("approvals are not running in this agent")?;
    let name = cmd["cmd"].as_str().unwrap_or("");
    let asker = match cmd.get("token").and_then(Value::as_str) {
        Some(t) => Asker::Approver(approver_by_token(auth, audience, t).await?),
        None => {
            let uid = uid.ok_or("the peer's credentials are unknown")?;
            let policy = auth.policy();
            match Approver::by_uid(policy.approval_rules(), uid) {
                Ok(a) => Asker::Approver(a),
                Err(_) if uid == 0 || uid == crate::sys::geteuid() => Asker::Admin,
                Err(e) => return Err(e),
            }
        }
    };
    let id = || {
        cmd["id"]
            .as_str()
            .filter(|s| !s.is_empty() && s.len() <= 64)
            .ok_or_else(|| "missing approval id".to_string())
    };
    match name {
        "approvals.list" => {
            let all = cmd["all"].as_bool().unwrap_or(false);
            Ok(json!({"ok": true, "approvals": approvals.list(all, |v| asker.sees(v))}))
        }
        "approvals.show" => {
            let id = id()?;
            match approvals.show(id) {
                Some(v) if asker.sees(&v) => Ok(json!({"ok": true, "approval": v})),
                _ => Err(format!("no approval request {id}")),
            }
        }
        "approvals.approve" | "approvals.deny" => {
            let id = id()?;
            let Asker::Approver(who) = &asker else {
                return Err(
                    "only approvers decide: this user is not in [[approvers]] (root is not an approver unless listed)"
                        .into(),
                );
            };
            let grant = match cmd.get("grant") {
                None | Some(Value::Null) => None,
                Some(g) => Some(
                    serde_json::from_value::<GrantSpec>(g.clone())
                        .map_err(|e| format!("grant: {e}"))?,
                ),
            };
            let approve = name == "approvals.approve";
            if !approve && grant.is_some() {
                return Err("a denial carries no grant".into());
            }
            decide(approvals, who, id, approve, cmd["reason"].as_str(), grant).map_err(|(_, e)| e)
        }
        other => Err(format!("unknown command {other:?}")),
    }
}

/// One vote, as both the control socket and the HTTP endpoint answer it; errors carry the
/// HTTP status that fits them. Eligibility and separation of duties are the registry's to
/// check (and to record).
pub fn decide(
    approvals: &Approvals,
    who: &Approver,
    id: &str,
    approve: bool,
    reason: Option<&str>,
    grant: Option<GrantSpec>,
) -> Result<Value, (u16, String)> {
    match approvals.vote(id, who, approve, reason.map(str::to_string), grant) {
        Ok(st) => Ok(json!({
            "ok": true,
            "state": st.state.as_str(),
            "approvals": st.approvals,
            "required": st.required,
            "approval": approvals.show(id),
        })),
        Err(e) => Err((vote_status(&e), e.to_string())),
    }
}

/// HTTP status for a vote error.
pub fn vote_status(e: &VoteError) -> u16 {
    match e {
        VoteError::Unknown(_) => 404,
        VoteError::Closed { .. } => 409,
        VoteError::Refused(_) => 403,
    }
}

// ------------------------------------------------------------------ command line

/// Where the agent is and who is acting.
#[derive(Args, Debug, Clone)]
pub struct Conn {
    #[arg(long, short, global = true, default_value = crate::cli::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// The control socket (default: from the configuration).
    #[arg(long, global = true)]
    pub socket: Option<PathBuf>,
    /// Act with this OIDC access token instead of as the local user (its `aud` must be
    /// `approvals.audience`). Also read from INTERCEPTOR_APPROVER_TOKEN.
    #[arg(long, global = true, conflicts_with = "token_file")]
    pub token: Option<String>,
    /// Read the token from this file.
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
    /// Print JSON.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum ApprovalsCommand {
    /// Calls awaiting approval (with --all: decided ones too).
    List {
        #[arg(long)]
        all: bool,
    },
    /// One request: who asked, what exactly (all arguments), why it is held, votes so far.
    Show { id: String },
    /// Approve a held call (approvals from `required` different people release it).
    Approve {
        id: String,
        #[arg(long)]
        reason: Option<String>,
        /// Also grant this caller this tool for N minutes (at most the rule's max_grant)...
        #[arg(long = "grant-minutes")]
        grant_minutes: Option<u32>,
        /// ...for arguments within these bounds (a constraint expression, e.g.
        /// "limit <= 5000"); without bounds, the identical arguments only.
        #[arg(long = "grant-bounds", requires = "grant_minutes")]
        grant_bounds: Option<String>,
    },
    /// Deny a held call; the caller gets an error with the reason.
    Deny {
        id: String,
        #[arg(long)]
        reason: String,
    },
}

fn socket_path(conn: &Conn) -> Result<PathBuf> {
    if let Some(s) = &conn.socket {
        return Ok(s.clone());
    }
    let cfg = crate::config::Config::load(&conn.config)
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e} (or give --socket)"))?;
    Ok(cfg.agent.control_socket())
}

fn token(conn: &Conn) -> Result<Option<String>> {
    if let Some(t) = &conn.token {
        return Ok(Some(t.clone()));
    }
    if let Some(f) = &conn.token_file {
        let t = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        return Ok(Some(t.trim().to_string()));
    }
    Ok(std::env::var("INTERCEPTOR_APPROVER_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty()))
}

/// `interceptor approvals ...`.
pub fn cli(conn: Conn, cmd: ApprovalsCommand) -> Result<ExitCode> {
    let path = socket_path(&conn)?;
    let mut req = match &cmd {
        ApprovalsCommand::List { all } => json!({"cmd": "approvals.list", "all": all}),
        ApprovalsCommand::Show { id } => json!({"cmd": "approvals.show", "id": id}),
        ApprovalsCommand::Approve {
            id,
            reason,
            grant_minutes,
            grant_bounds,
        } => json!({
            "cmd": "approvals.approve", "id": id, "reason": reason,
            "grant": grant_minutes.map(|m| json!({"minutes": m, "bounds": grant_bounds})),
        }),
        ApprovalsCommand::Deny { id, reason } => {
            if reason.trim().is_empty() {
                bail!("--reason must say why");
            }
            json!({"cmd": "approvals.deny", "id": id, "reason": reason})
        }
    };
    if let Some(t) = token(&conn)? {
        req["token"] = json!(t);
    }
    let answer = crate::control::request(&path, &req.to_string())?;
    if conn.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(if answer["ok"] == true {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    if answer["ok"] != true {
        eprintln!(
            "interceptor: {}",
            answer["error"].as_str().unwrap_or("the agent refused")
        );
        return Ok(ExitCode::from(1));
    }
    match cmd {
        ApprovalsCommand::List { .. } => print_list(&answer["approvals"]),
        ApprovalsCommand::Show { .. } => print_one(&answer["approval"]),
        ApprovalsCommand::Approve { id, .. } | ApprovalsCommand::Deny { id, .. } => {
            println!(
                "approval {id}: {} ({} of {} approvals)",
                answer["state"].as_str().unwrap_or("?"),
                answer["approvals"],
                answer["required"]
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn when(ms: &Value) -> String {
    ms.as_u64()
        .map(|m| super::render_time(std::time::UNIX_EPOCH + std::time::Duration::from_millis(m)))
        .unwrap_or_else(|| "-".into())
}

fn call_text(v: &Value) -> String {
    format!(
        "{}{}",
        v["method"].as_str().unwrap_or("?"),
        v["target"]
            .as_str()
            .map(|t| format!(" {t}"))
            .unwrap_or_default()
    )
}

fn print_list(list: &Value) {
    let items = list.as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        println!("no calls awaiting approval");
        return;
    }
    println!(
        "{:<13} {:<9} {:<10} {:<20} {:<34} {:<9} EXPIRES",
        "ID", "STATE", "SERVICE", "REQUESTER", "CALL", "APPROVALS"
    );
    for v in items {
        println!(
            "{:<13} {:<9} {:<10} {:<20} {:<34} {:<9} {}",
            v["id"].as_str().unwrap_or("?"),
            v["state"].as_str().unwrap_or("?"),
            v["service"].as_str().unwrap_or("?"),
            v["requester"]["subject"].as_str().unwrap_or("?"),
            call_text(&v),
            format!("{}/{}", v["approvals"], v["required"]),
            when(&v["expires_at"])
        );
    }
}

fn print_one(v: &Value) {
    let r = &v["requester"];
    println!(
        "approval {}  ({})",
        v["id"].as_str().unwrap_or("?"),
        v["state"].as_str().unwrap_or("?")
    );
    println!("  service:    {}", v["service"].as_str().unwrap_or("?"));
    println!("  call:       {}", call_text(v));
    println!(
        "  requester:  {} (issuer {}, client {}){}",
        r["subject"].as_str().unwrap_or("?"),
        r["issuer"].as_str().unwrap_or("?"),
        r["client_id"].as_str().unwrap_or("-"),
        match (r["uid"].as_u64(), r["comm"].as_str()) {
            (Some(uid), Some(c)) => format!(", local process {c} uid {uid}"),
            _ => format!(", from {}", r["peer"].as_str().unwrap_or("?")),
        }
    );
    println!(
        "  held by:    {} ({})",
        v["rule"].as_str().unwrap_or("?"),
        v["matched"].as_str().unwrap_or("")
    );
    println!(
        "  approvers:  [{}], {} of {} approvals, expires {}",
        v["approvers"]
            .as_array()
            .map(|a| a
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default(),
        v["approvals"],
        v["required"],
        when(&v["expires_at"])
    );
    println!("  created:    {}", when(&v["created"]));
    println!(
        "  request:    sha256 {}",
        v["request_hash"].as_str().unwrap_or("?")
    );
    println!(
        "  caller:     {}",
        if v["caller_waiting"] == true {
            "waiting"
        } else {
            "not connected (a retry of the identical call takes the approval)"
        }
    );
    if let Some(g) = v["max_grant"].as_str() {
        println!("  grants:     up to {g} (--grant-minutes, --grant-bounds)");
    }
    println!(
        "  params:\n{}",
        serde_json::to_string_pretty(&v["params"])
            .unwrap_or_default()
            .lines()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for vote in v["votes"].as_array().into_iter().flatten() {
        println!(
            "  {} by {} at {}{}",
            if vote["approve"] == true {
                "approved"
            } else {
                "denied"
            },
            vote["approver"].as_str().unwrap_or("?"),
            when(&vote["at"]),
            vote["reason"]
                .as_str()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        );
    }
    if let Some(by) = v["decided_by"].as_str() {
        println!(
            "  decided by: {by}{}",
            v["reason"]
                .as_str()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        );
    }
}
