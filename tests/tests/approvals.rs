//! Just-in-time approval of privileged and bulk calls, end to end: the official MCP SDK
//! clients (Python 2.x, TypeScript) against the official Python SDK server, tokens from a real
//! OpenID provider, approvers acting through the CLI (as local users, identified by the kernel)
//! and through the HTTP endpoint (TLS, their own tokens), and a webhook receiver on loopback.
//!
//! Every test asserts on the agent's JSON log: `event = "approval"` lines (one per step, the
//! interface the audit store consumes) and `event = "exchange"` records carrying the approval
//! id; and on what the MCP server saw (`--log-calls`): nothing before an approval.
use std::{
    path::PathBuf,
    process::Output,
    time::{Duration, Instant},
};

use interceptor_tests::*;
use serde_json::{Value, json};

/// Group of the control socket; approvers run with it as their gid.
const APPROVER_GID: u32 = 4242;
const DANA: (u32, u32) = (4001, APPROVER_GID);
const ERIN: (u32, u32) = (4002, APPROVER_GID);
/// Bob requests exports (analyst) and, on this host, is also listed as an approver.
const BOB_UID: (u32, u32) = (4003, APPROVER_GID);

const POLICY: &str = r#"
[[roles]]
name = "analyst"
groups = ["analytics"]

[[roles.grants]]
service = "crm"
methods = ["tools/call"]
tools = ["export_customers", "echo"]
purpose = "Aggregate analysis of the customer base"
lawful_basis = "legitimate_interests"

[[roles.grants.constraints]]
tool = "export_customers"
expr = "limit <= 100000"

[[approvers]]
name = "dana"
uids = [4001]
subjects = ["dana"]
groups = ["dpo"]

[[approvers]]
name = "erin"
uids = [4002]
subjects = ["erin"]
groups = ["dpo"]

[[approvers]]
name = "bob"
uids = [4003]
subjects = ["bob"]
groups = ["dpo"]

[[approvals]]
name = "huge-export"
service = "crm"
roles = ["analyst"]
methods = ["tools/call"]
tools = ["export_customers"]
when = "limit > 5000"
approvers = ["dpo"]
required = 2
max_wait = "2m"

[[approvals]]
name = "bulk-export"
service = "crm"
roles = ["analyst"]
methods = ["tools/call"]
tools = ["export_customers"]
when = "limit > 100"
approvers = ["dpo"]
max_wait = "2m"
max_grant = "30m"

[[approvals]]
name = "quick-expiry"
service = "crm"
methods = ["tools/call"]
tools = ["echo"]
when = "exists(text)"
approvers = ["dpo"]
max_wait = "2s"
"#;

const ACCOUNTS: &str = r#"{
  "alice": {"groups": ["support"]},
  "bob": {"groups": ["analytics", "dpo"]},
  "dana": {"groups": ["dpo"]},
  "erin": {"groups": ["dpo"]}
}"#;

struct Fx {
    node: Node,
    idp: Oidc,
    cfg: AgentConfig,
    /// The MCP service's resource URL (aud of callers' tokens).
    resource: String,
    /// The approvals endpoint's audience and base URL.
    audience: String,
    api: String,
    api_ca: PathBuf,
    port: u16,
    hook: Proc,
    server: PeerServer,
    agent: Agent,
}

fn fixture(name: &str) -> Option<Fx> {
    let node = Node::new(name)?;
    let keys = node.oidc_keys("k1", None);
    let accounts = node.dir.join("accounts.json");
    std::fs::write(&accounts, ACCOUNTS).expect("accounts");
    let acc = accounts.display().to_string();
    let idp = node.oidc(node.port(9), &keys, None, &["--accounts", &acc]);
    let port = node.port(0);
    let resource = format!("http://{SERVER_IP}:{port}/mcp");
    let api_port = node.port(3);
    let audience = format!("https://{SERVER_IP}:{api_port}/approvals");
    let (api_ca, api_cert, api_key) =
        make_tls(&node.dir, "approvals", &["approvals.test"], &[SERVER_IP]);
    let hook_port = node.port(4);
    let secret = node.dir.join("hook.secret");
    std::fs::write(&secret, "hook-secret\n").expect("secret");
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let policy = node.dir.join("crm.policy.toml");
    std::fs::write(&policy, POLICY).expect("policy");
    let mut cfg = node.agent_config().mcp_service(
        "crm",
        port,
        &format!("[services.auth]\nresource = {resource:?}\n"),
    );
    let p = |p: &std::path::Path| format!("{:?}", p.display().to_string());
    cfg.extra_agent_toml = format!(
        r#"
[auth]
policy = [{policy}]
[[auth.issuers]]
issuer = {issuer:?}
audiences = [{resource:?}, {audience:?}]
ca_file = {ca}

[approvals]
control_group = {APPROVER_GID}
audience = {audience:?}
http_listen = "{SERVER_IP}:{api_port}"
keepalive_secs = 2
[approvals.http_tls]
certs = [{{ cert = {cert}, key = {key} }}]
[approvals.webhook]
url = "http://127.0.0.1:{hook_port}/hook"
secret_file = {secret}
"#,
        policy = p(&policy),
        issuer = idp.issuer,
        ca = p(&idp.ca),
        cert = p(&api_cert),
        key = p(&api_key),
        secret = p(&secret),
    );
    let hook = node.webhook_receiver(&format!("127.0.0.1:{hook_port}"));
    let server = node.mcp_server(Sdk::Py2, port, &["--log-calls"]);
    let agent = node.start_agent(&cfg);
    Some(Fx {
        api: audience.clone(),
        node,
        idp,
        cfg,
        resource,
        audience,
        api_ca,
        port,
        hook,
        server,
        agent,
    })
}

impl Fx {
    /// A user's token (authorization code + PKCE) for `resource`.
    fn token(&self, user: &str, resource: &str) -> String {
        self.node.oidc_token(
            &self.idp,
            &[
                "--grant",
                "authorization_code",
                "--client-id",
                "mcp-cli",
                "--user",
                user,
            ],
            resource,
        )
    }

    /// Starts `tool(args)` from the client netns with `token`.
    fn call(&self, sdk: Sdk, token: &str, tool: &str, args: &Value) -> RunningClient {
        let url = format!("http://{SERVER_IP}:{}/mcp", self.port);
        let h = format!("Authorization: Bearer {token}");
        let a = args.to_string();
        self.node.start_mcp_client(
            &self.node.client,
            sdk,
            &url,
            &[
                "--scenario",
                "call",
                "--tool",
                tool,
                "--args",
                &a,
                "--header",
                &h,
                "--timeout",
                "90",
            ],
        )
    }

    /// The `held` step of the call whose arguments satisfy `pred`.
    #[track_caller]
    fn held(&self, pred: impl Fn(&Value) -> bool) -> Value {
        self.agent
            .wait_event("approval", |e| e["step"] == "held" && pred(&args_of(e)))
    }

    /// Every approval step of `id`, in order.
    fn steps(&self, id: &str) -> Vec<Value> {
        self.agent
            .events("approval")
            .into_iter()
            .filter(|e| e["approval_id"] == id)
            .collect()
    }

    /// The approval's steps and its exchange's records as the audit log holds them (the
    /// database read by `interceptor audit tail --json`), after checking the log verifies.
    fn audit_records(&self, id: &str) -> (Vec<String>, Vec<Value>) {
        let pubkey = self.node.audit_pubkey(&self.cfg);
        let (ok, out) = self.node.audit_verify(&self.cfg, None, &pubkey);
        assert!(ok, "audit verify: {out}");
        let out = self
            .node
            .cli(&self.cfg, &["audit", "tail", "-n", "100000", "--json"]);
        assert!(out.status.success(), "{}", text(&out));
        let rows: Vec<Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let steps = rows
            .iter()
            .filter(|r| r["kind"] == "approval" && r["body"]["data"]["approval_id"] == id)
            .map(|r| r["body"]["data"]["step"].as_str().unwrap_or("").to_string())
            .collect();
        let exchanges = rows
            .into_iter()
            .filter(|r| {
                (r["kind"] == "exchange" || r["kind"] == "request")
                    && r["body"]["data"]["approval"] == id
            })
            .map(|r| r["body"].clone())
            .collect();
        (steps, exchanges)
    }

    #[track_caller]
    fn wait_step(&self, id: &str, step: &str) -> Value {
        self.agent
            .wait_event("approval", |e| e["approval_id"] == id && e["step"] == step)
    }

    /// `interceptor approvals ARGS` as `user` (uid, gid).
    fn approvals(&self, user: Option<(u32, u32)>, args: &[&str]) -> Output {
        let mut all = vec!["approvals"];
        all.extend_from_slice(args);
        self.node.cli_as(&self.cfg, user, &all, &[])
    }

    /// `interceptor approvals --json ARGS` as `user`, parsed.
    fn approvals_json(&self, user: Option<(u32, u32)>, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.approvals(user, &all);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "approvals {args:?}: not JSON ({e}): {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// A request to the approvals HTTP endpoint from the client netns ("remote reviewer").
    fn api(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let ca = self.api_ca.display().to_string();
        let url = format!("{}{path}", self.api.trim_end_matches("/approvals"));
        let mut args: Vec<String> = vec!["--cacert".into(), ca, "-X".into(), method.into()];
        if let Some(t) = token {
            args.extend(["-H".into(), format!("Authorization: Bearer {t}")]);
        }
        if let Some(b) = body {
            args.extend([
                "-H".into(),
                "content-type: application/json".into(),
                "-d".into(),
                b.to_string(),
            ]);
        }
        args.push(url);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (status, _, body) = self.node.curl(&refs);
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    /// The calls that reached the MCP server.
    fn server_calls(&self) -> Vec<Value> {
        self.server.proc.stdout.events("tool_call")
    }

    /// Webhook deliveries so far.
    fn hooks(&self) -> Vec<Value> {
        self.hook.stdout.events("webhook")
    }

    #[track_caller]
    fn wait_hook(&self, id: &str, step: &str) -> Value {
        match self.hook.stdout.wait_event("webhook", WAIT, |h| {
            h["body"]["event"]["approval_id"] == id && h["body"]["event"]["step"] == step
        }) {
            Ok(v) => v,
            Err(e) => panic!("webhook {step} for {id}: {e:#}; got {:#?}", self.hooks()),
        }
    }
}

fn args_of(e: &Value) -> Value {
    e["arguments"]
        .as_str()
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(Value::Null)
}

fn id_of(e: &Value) -> String {
    e["approval_id"].as_str().expect("approval_id").to_string()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Lines of the text content of a tool result.
fn result_lines(c: &Value) -> usize {
    c["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or("")
        .lines()
        .count()
}

/// The client is still waiting (held), after giving a wrongly released call time to show.
#[track_caller]
fn still_held(c: &mut RunningClient) {
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        c.running(),
        "the held call must not complete: {}",
        c.proc.dump()
    );
}

#[test]
fn a_held_call_completes_after_cli_approval_and_nothing_reached_the_server_before() {
    let Some(f) = fixture("appr_approve") else {
        return;
    };
    let t0 = Instant::now();
    let bob = f.token("bob", &f.resource);
    let mut client = f.call(Sdk::Py2, &bob, "export_customers", &json!({"limit": 500}));
    let held = f.held(|a| a["limit"] == 500);
    let id = id_of(&held);
    assert_eq!(
        held["rule"], "crm.policy.toml:approvals[bulk-export]",
        "{held}"
    );
    assert_eq!(held["subject"], "bob", "{held}");
    assert_eq!(held["mcp_name"], "export_customers", "{held}");
    assert_eq!(
        held["matched"], "tools/call export_customers when limit > 100 (limit = 500)",
        "{held}"
    );
    let hash = held["request_hash"].as_str().unwrap_or("");
    assert!(
        hash.len() == 64 && hash.chars().all(|c| c.is_ascii_hexdigit()),
        "{held}"
    );
    still_held(&mut client);
    assert!(
        f.server_calls().is_empty(),
        "nothing before approval: {:?}",
        f.server_calls()
    );

    // The approver sees exactly what was asked (every argument) and why it is held.
    let list = f.approvals_json(Some(DANA), &["list"]);
    let mine: Vec<&Value> = list["approvals"]
        .as_array()
        .expect("list")
        .iter()
        .filter(|a| a["id"] == id.as_str())
        .collect();
    assert_eq!(mine.len(), 1, "{list}");
    assert_eq!(mine[0]["state"], "pending");
    assert_eq!(mine[0]["params"]["arguments"]["limit"], 500, "{list}");
    assert_eq!(mine[0]["request_hash"], hash, "{list}");
    assert_eq!(mine[0]["caller_waiting"], true, "{list}");
    let show = f.approvals(Some(DANA), &["show", &id]);
    assert!(show.status.success(), "{}", text(&show));
    let shown = text(&show);
    assert!(
        shown.contains("tools/call export_customers") && shown.contains("\"limit\": 500"),
        "{shown}"
    );
    assert!(shown.contains("requester:  bob"), "{shown}");
    // A local user who is not an approver cannot even list.
    let out = f.approvals(Some((4999, APPROVER_GID)), &["list"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("uid 4999 is not an approver"),
        "{}",
        text(&out)
    );

    // `policy explain` says the call would be held, and by which rule.
    let args = r#"{"limit": 500}"#;
    let out = f.node.cli(
        &f.cfg,
        &[
            "policy",
            "explain",
            "--service",
            "crm",
            "--token",
            &bob,
            "--method",
            "tools/call",
            "--name",
            "export_customers",
            "--args",
            args,
            "--json",
        ],
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", text(&out)));
    assert_eq!(v["decision"]["allowed"], true, "{v}");
    assert_eq!(
        v["held_for_approval"]["rule"], "crm.policy.toml:approvals[bulk-export]",
        "{v}"
    );
    assert_eq!(v["approval_rules"].as_array().map(Vec::len), Some(3), "{v}");

    let out = f.approvals(
        Some(DANA),
        &["approve", &id, "--reason", "quarterly report"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("approved"), "{}", text(&out));
    let c = client.wait(Duration::from_secs(60));
    let out = c.assert_ok();
    assert_eq!(result_lines(out), 500, "the export arrived whole");
    let waiting = out["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| {
            e["type"] == "log"
                && e["data"]
                    .as_str()
                    .unwrap_or("")
                    .contains(&format!("awaiting approval {id}"))
        })
        .count();
    assert!(waiting >= 1, "the held stream told the client: {out}");
    let calls = f.server_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["arguments"]["limit"], 500);

    // The record: every step, in order, and the exchange referencing the approval.
    let done = f.wait_step(&id, "completed");
    assert_eq!(done["outcome"], "result", "{done}");
    let steps: Vec<String> = f
        .steps(&id)
        .iter()
        .map(|e| e["step"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        steps,
        ["held", "vote", "approved", "released", "completed"],
        "{steps:?}"
    );
    let approved = f.wait_step(&id, "approved");
    assert_eq!(approved["actor"], "dana (uid 4001)", "{approved}");
    // The audit log holds the same steps, and the exchange (its request record, written before
    // the call was forwarded, and its final record) names the approval.
    let (audit_steps, records) = f.audit_records(&id);
    assert_eq!(audit_steps, steps, "audit log");
    let kinds: Vec<&str> = records
        .iter()
        .map(|r| r["kind"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(kinds, ["request", "exchange"], "{records:?}");
    assert_eq!(records[1]["data"]["outcome"], "result", "{records:?}");
    assert_eq!(approved["reason"], "quarterly report", "{approved}");
    assert!(f.steps(&id).iter().all(|e| e["request_hash"] == hash));
    let ex = f
        .agent
        .wait_event("exchange", |e| e["approval"] == id.as_str());
    assert_eq!(ex["outcome"], "result", "{ex}");
    assert_eq!(ex["method"], "tools/call", "{ex}");
    assert_eq!(ex["subject"], "bob", "{ex}");

    // The webhook heard about the hold and the decision, signed.
    let h = f.wait_hook(&id, "held");
    assert_eq!(h["body"]["type"], "approval.held", "{h}");
    assert_eq!(h["body"]["event"]["arguments"]["limit"], 500, "{h}");
    assert_eq!(h["headers"]["x-interceptor-event"], "held", "{h}");
    let ts = h["headers"]["x-interceptor-timestamp"]
        .as_str()
        .unwrap_or("");
    let sig = h["headers"]["x-interceptor-signature"]
        .as_str()
        .unwrap_or("");
    assert_eq!(
        sig,
        format!(
            "sha256={}",
            hmac_sha256(
                "hook-secret",
                &format!("{ts}.{}", h["body_raw"].as_str().unwrap_or(""))
            )
        )
    );
    let h = f.wait_hook(&id, "approved");
    assert_eq!(h["body"]["event"]["actor"], "dana (uid 4001)", "{h}");
    eprintln!("appr_approve: {:?}", t0.elapsed());
}

/// HMAC-SHA256 with openssl (the test crate has no crypto of its own).
fn hmac_sha256(key: &str, data: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", key, "-r"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(data.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("openssl");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

#[test]
fn denial_and_expiry_reach_the_client_as_errors() {
    let Some(f) = fixture("appr_deny_expire") else {
        return;
    };
    let bob = f.token("bob", &f.resource);
    let dana_api = f.token("dana", &f.audience);

    // Denied by a reviewer who is not on the host (HTTP endpoint, TLS, her own token).
    let client = f.call(Sdk::Py2, &bob, "export_customers", &json!({"limit": 700}));
    let id = id_of(&f.held(|a| a["limit"] == 700));
    let (status, v) = f.api("GET", &format!("/approvals/{id}"), Some(&dana_api), None);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["approval"]["params"]["arguments"]["limit"], 700, "{v}");
    let (status, v) = f.api(
        "POST",
        &format!("/approvals/{id}/deny"),
        Some(&dana_api),
        Some(&json!({"reason": "not covered by the purpose"})),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["state"], "denied", "{v}");
    let c = client.wait(Duration::from_secs(60));
    assert_eq!(c.exit_code, Some(1), "{}", c.json);
    let msg = c.json["error"]["message"].as_str().unwrap_or("");
    assert!(
        msg.contains(&id) && msg.contains("denied") && msg.contains("not covered by the purpose"),
        "{}",
        c.json
    );
    assert_eq!(c.json["error"]["code"], -32050, "{}", c.json);
    assert!(f.server_calls().is_empty(), "{:?}", f.server_calls());
    let d = f.wait_step(&id, "denied");
    assert!(d["actor"].as_str().unwrap_or("").contains("dana"), "{d}");
    assert_eq!(d["reason"], "not covered by the purpose", "{d}");
    let ex = f
        .agent
        .wait_event("exchange", |e| e["approval"] == id.as_str());
    assert_eq!(ex["outcome"], "approval_denied", "{ex}");
    assert_eq!(ex["error_code"], -32050, "{ex}");
    assert_eq!(
        f.wait_hook(&id, "denied")["body"]["event"]["reason"],
        "not covered by the purpose"
    );

    // Nobody decides: the call expires after max_wait (2 s) with an error naming it.
    let client = f.call(Sdk::Py2, &bob, "echo", &json!({"text": "expire me"}));
    let held2 = f.held(|a| a["text"] == "<string:9>");
    let id2 = id_of(&held2);
    assert_eq!(
        held2["matched"], "tools/call echo when exists(text) (text = \"<string:9>\")",
        "{held2}"
    );
    let c = client.wait(Duration::from_secs(60));
    assert_eq!(c.exit_code, Some(1), "{}", c.json);
    let msg = c.json["error"]["message"].as_str().unwrap_or("");
    assert!(
        msg.contains(&id2) && msg.contains("expired") && msg.contains("no decision within 2s"),
        "{}",
        c.json
    );
    let e = f.wait_step(&id2, "expired");
    assert_eq!(e["actor"], "agent", "{e}");
    let ex = f
        .agent
        .wait_event("exchange", |e| e["approval"] == id2.as_str());
    assert_eq!(ex["outcome"], "approval_expired", "{ex}");
    f.wait_hook(&id2, "expired");
    // String arguments never reach the log or the webhook, only their size.
    assert!(
        f.steps(&id2)
            .iter()
            .all(|e| !e.to_string().contains("expire me"))
    );
    assert!(
        f.hooks()
            .iter()
            .all(|h| !h.to_string().contains("expire me"))
    );

    // A JSON-only caller is held on its open HTTP request and gets the error as JSON.
    let body = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"expire me"}}}"#;
    let url = format!("http://{SERVER_IP}:{}/mcp", f.port);
    let auth = format!("Authorization: Bearer {bob}");
    let (status, _, reply) = f.node.curl(&[
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-H",
        "accept: application/json",
        "-H",
        &auth,
        "-d",
        body,
        &url,
    ]);
    assert_eq!(status, 200, "{reply}");
    let v: Value = serde_json::from_str(&reply).expect("JSON-RPC error");
    assert_eq!(v["id"], 7, "{v}");
    assert_eq!(v["error"]["code"], -32050, "{v}");
    assert_eq!(v["error"]["data"]["state"], "expired", "{v}");
    assert!(f.server_calls().is_empty(), "{:?}", f.server_calls());

    // The endpoint is for approvers with a token for it, and only them.
    let (status, _) = f.api("GET", "/approvals", None, None);
    assert_eq!(status, 401);
    let alice_api = f.token("alice", &f.audience);
    let (status, v) = f.api("GET", "/approvals", Some(&alice_api), None);
    assert_eq!(status, 403, "{v}");
    let (status, _) = f.api("GET", "/approvals", Some(&bob), None); // token for the MCP service
    assert_eq!(status, 401);
}

#[test]
fn self_approval_is_refused() {
    let Some(f) = fixture("appr_self") else {
        return;
    };
    let bob = f.token("bob", &f.resource);
    let mut client = f.call(Sdk::Py2, &bob, "export_customers", &json!({"limit": 800}));
    let id = id_of(&f.held(|a| a["limit"] == 800));

    // Bob as the local user the policy maps to him.
    let out = f.approvals(Some(BOB_UID), &["approve", &id, "--reason", "mine"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("separation of duties"),
        "{}",
        text(&out)
    );
    // Bob with another token of his (a new session, for the approvals endpoint), over HTTP...
    let bob_api = f.token("bob", &f.audience);
    let (status, v) = f.api(
        "POST",
        &format!("/approvals/{id}/approve"),
        Some(&bob_api),
        Some(&json!({})),
    );
    assert_eq!(status, 403, "{v}");
    assert!(
        v["error"].as_str().unwrap_or("").contains("own request"),
        "{v}"
    );
    // ...and through the CLI with that token (as root, who is no approver by uid).
    let out = f.node.cli_as(
        &f.cfg,
        None,
        &["approvals", "approve", &id],
        &[("INTERCEPTOR_APPROVER_TOKEN", &bob_api)],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("own request"), "{}", text(&out));
    // Root may look but not decide.
    let out = f.approvals(None, &["approve", &id]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("only approvers decide"),
        "{}",
        text(&out)
    );

    still_held(&mut client);
    assert!(f.server_calls().is_empty());
    let refused: Vec<Value> = f
        .steps(&id)
        .into_iter()
        .filter(|e| e["step"] == "refused")
        .collect();
    assert_eq!(refused.len(), 3, "every attempt is recorded: {refused:#?}");
    assert!(refused.iter().all(|e| {
        e["reason"]
            .as_str()
            .unwrap_or("")
            .contains("separation of duties")
    }));
    let v = f.approvals_json(Some(DANA), &["show", &id]);
    assert_eq!(v["approval"]["state"], "pending", "{v}");
    assert_eq!(v["approval"]["votes"], json!([]), "{v}");

    // Someone else approves: released.
    let out = f.approvals(Some(DANA), &["approve", &id]);
    assert!(out.status.success(), "{}", text(&out));
    let c = client.wait(Duration::from_secs(60));
    assert_eq!(result_lines(c.assert_ok()), 800);
}

#[test]
fn an_approval_binds_the_exact_arguments_and_grants_are_explicit() {
    let Some(f) = fixture("appr_binding") else {
        return;
    };
    let bob = f.token("bob", &f.resource);
    let a = f.call(Sdk::Py2, &bob, "export_customers", &json!({"limit": 300}));
    let id_a = id_of(&f.held(|x| x["limit"] == 300));
    let mut b = f.call(Sdk::Py2, &bob, "export_customers", &json!({"limit": 301}));
    let held_b = f.held(|x| x["limit"] == 301);
    let id_b = id_of(&held_b);
    assert_ne!(id_a, id_b);
    let hash_a = f.steps(&id_a)[0]["request_hash"].clone();
    assert_ne!(
        hash_a, held_b["request_hash"],
        "one changed argument, another request hash"
    );

    let out = f.approvals(Some(DANA), &["approve", &id_a]);
    assert!(out.status.success(), "{}", text(&out));
    let ca = a.wait(Duration::from_secs(60));
    assert_eq!(result_lines(ca.assert_ok()), 300);
    still_held(&mut b);
    let calls = f.server_calls();
    assert_eq!(
        calls.len(),
        1,
        "only the approved arguments reached the server: {calls:?}"
    );
    assert_eq!(calls[0]["arguments"]["limit"], 300);

    // An explicit grant with the approval: this caller, this tool, limit <= 400, 5 minutes.
    let out = f.approvals(
        Some(ERIN),
        &[
            "approve",
            &id_b,
            "--grant-minutes",
            "5",
            "--grant-bounds",
            "limit <= 400",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        result_lines(b.wait(Duration::from_secs(60)).assert_ok()),
        301
    );
    let granted = f.wait_step(&id_b, "granted");
    assert_eq!(granted["grant_bounds"], "limit <= 400", "{granted}");
    // Within the bounds: released at once, never held.
    let c = f.call(Sdk::Py2, &bob, "export_customers", &json!({"limit": 350}));
    assert_eq!(
        result_lines(c.wait(Duration::from_secs(60)).assert_ok()),
        350
    );
    let rel = f.agent.wait_event("approval", |e| {
        e["step"] == "released" && args_of(e)["limit"] == 350
    });
    assert_eq!(rel["approval_id"], id_b.as_str(), "{rel}");
    assert_eq!(rel["grant"], granted["grant"], "{rel}");
    assert!(
        f.agent
            .events("approval")
            .iter()
            .all(|e| !(e["step"] == "held" && args_of(e)["limit"] == 350)),
        "a call under a grant is not held"
    );
    // Outside the bounds: held again; and another caller is not covered either.
    let mut d = f.call(Sdk::Py2, &bob, "export_customers", &json!({"limit": 450}));
    let id_d = id_of(&f.held(|x| x["limit"] == 450));
    still_held(&mut d);
    let out = f.approvals(Some(DANA), &["deny", &id_d, "--reason", "beyond the grant"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(d.wait(Duration::from_secs(60)).exit_code, Some(1));
    // A grant beyond the rule's max_grant is refused.
    let mut e = f.call(Sdk::Py2, &bob, "export_customers", &json!({"limit": 460}));
    let id_e = id_of(&f.held(|x| x["limit"] == 460));
    let out = f.approvals(Some(DANA), &["approve", &id_e, "--grant-minutes", "31"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("outside what rule"), "{}", text(&out));
    still_held(&mut e);
    let out = f.approvals(Some(DANA), &["deny", &id_e, "--reason", "done"]);
    assert!(out.status.success(), "{}", text(&out));
    let _ = e.wait(Duration::from_secs(60));
    let limits: Vec<i64> = f
        .server_calls()
        .iter()
        .filter_map(|c| c["arguments"]["limit"].as_i64())
        .collect();
    assert_eq!(limits, [300, 301, 350]);
}

#[test]
fn two_approvals_required_means_one_is_not_enough() {
    let Some(f) = fixture("appr_two") else {
        return;
    };
    let bob = f.token("bob", &f.resource);
    // The TypeScript SDK client this time.
    let mut client = f.call(Sdk::Node, &bob, "export_customers", &json!({"limit": 6000}));
    let held = f.held(|a| a["limit"] == 6000);
    let id = id_of(&held);
    assert_eq!(
        held["rule"], "crm.policy.toml:approvals[huge-export]",
        "{held}"
    );
    assert_eq!(held["required"], 2, "{held}");

    let out = f.approvals(Some(DANA), &["approve", &id, "--reason", "first"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("pending (1 of 2 approvals)"),
        "{}",
        text(&out)
    );
    still_held(&mut client);
    assert!(f.server_calls().is_empty());
    // Dana again, with her token over HTTP: the same person does not count twice.
    let dana_api = f.token("dana", &f.audience);
    let (status, v) = f.api(
        "POST",
        &format!("/approvals/{id}/approve"),
        Some(&dana_api),
        Some(&json!({"reason": "again"})),
    );
    assert_eq!(status, 403, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or("")
            .contains("already approved"),
        "{v}"
    );
    still_held(&mut client);
    // A second person: released.
    let erin_api = f.token("erin", &f.audience);
    let (status, v) = f.api(
        "POST",
        &format!("/approvals/{id}/approve"),
        Some(&erin_api),
        Some(&json!({"reason": "second"})),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["state"], "approved", "{v}");
    let c = client.wait(Duration::from_secs(60));
    assert_eq!(result_lines(c.assert_ok()), 6000);
    let votes: Vec<Value> = f
        .steps(&id)
        .into_iter()
        .filter(|e| e["step"] == "vote")
        .collect();
    assert_eq!(votes.len(), 2, "{votes:#?}");
    assert_eq!(votes[0]["approvals"], 1);
    assert_eq!(votes[1]["approvals"], 2);
    let approved = f.wait_step(&id, "approved");
    assert!(
        approved["actor"].as_str().unwrap_or("").contains("dana")
            && approved["actor"].as_str().unwrap_or("").contains("erin"),
        "{approved}"
    );
    assert_eq!(f.server_calls().len(), 1);
}

#[test]
fn an_agent_restart_while_a_call_is_held_gives_the_caller_a_clear_error() {
    let Some(mut f) = fixture("appr_restart") else {
        return;
    };
    let bob = f.token("bob", &f.resource);
    let client = f.call(Sdk::Py2, &bob, "export_customers", &json!({"limit": 900}));
    let id = id_of(&f.held(|a| a["limit"] == 900));
    f.agent
        .terminate(Duration::from_secs(20))
        .expect("agent stops");
    let c = client.wait(Duration::from_secs(60));
    assert_eq!(c.exit_code, Some(1), "{}", c.json);
    let msg = c.json["error"]["message"].as_str().unwrap_or("");
    assert!(
        msg.contains(&format!("agent shutting down: approval {id} abandoned")),
        "{}",
        c.json
    );
    // The record shows it: the abandoned step and the exchange's final result.
    let ab = f.wait_step(&id, "abandoned");
    assert_eq!(ab["actor"], "agent", "{ab}");
    let ex = f
        .agent
        .wait_event("exchange", |e| e["approval"] == id.as_str());
    assert_eq!(ex["outcome"], "approval_abandoned", "{ex}");
    f.wait_hook(&id, "abandoned");
    // The audit log shows it too (the agent is down: read from the database).
    let (audit_steps, records) = f.audit_records(&id);
    let logged: Vec<String> = f
        .steps(&id)
        .iter()
        .map(|e| e["step"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(audit_steps, logged, "audit log");
    assert_eq!(audit_steps.first().map(String::as_str), Some("held"));
    assert!(
        audit_steps.iter().any(|s| s == "abandoned"),
        "{audit_steps:?}"
    );
    assert_eq!(
        records.len(),
        1,
        "no request record: never forwarded: {records:?}"
    );
    assert_eq!(
        records[0]["data"]["outcome"], "approval_abandoned",
        "{records:?}"
    );
    assert!(f.server_calls().is_empty());

    // The restarted agent knows no held call; the same call is held anew and can be approved.
    f.agent = f.node.start_agent(&f.cfg);
    let list = f.approvals_json(Some(DANA), &["list", "--all"]);
    assert_eq!(list["approvals"], json!([]), "{list}");
    let client = f.call(Sdk::Py2, &bob, "export_customers", &json!({"limit": 900}));
    let id2 = id_of(&f.held(|a| a["limit"] == 900));
    assert_ne!(id, id2);
    let out = f.approvals(Some(DANA), &["approve", &id2]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        result_lines(client.wait(Duration::from_secs(60)).assert_ok()),
        900
    );
}

#[test]
fn a_caller_that_gives_up_can_retry_the_identical_call() {
    let Some(f) = fixture("appr_retry") else {
        return;
    };
    let bob = f.token("bob", &f.resource);
    let url = format!("http://{SERVER_IP}:{}/mcp", f.port);
    let auth = format!("Authorization: Bearer {bob}");
    // A session with the server (initialize handshake), as a plain HTTP client.
    let (status, head, _) = f.node.post_jsonrpc(&url, INITIALIZE, &[&auth]);
    assert_eq!(status, 200, "{head}");
    let sess = format!("mcp-session-id: {}", session_id(&head).expect("session id"));
    let ver = "mcp-protocol-version: 2025-11-25";
    let (status, _, _) = f.node.post_jsonrpc(
        &url,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        &[&auth, &sess, ver],
    );
    assert_eq!(status, 202);
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"export_customers","arguments":{"limit":250},"_meta":{"progressToken":"first"}}}"#;
    // A JSON-only caller whose HTTP client gives up after 2 s while the call is held.
    let (status, _, _) = f.node.curl(&[
        "--max-time",
        "2",
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-H",
        "accept: application/json",
        "-H",
        &auth,
        "-H",
        &sess,
        "-H",
        ver,
        "-d",
        body,
        &url,
    ]);
    assert_eq!(status, 0, "curl gave up");
    let id = id_of(&f.held(|a| a["limit"] == 250));
    f.wait_step(&id, "caller_gone");
    let ex = f
        .agent
        .wait_event("exchange", |e| e["approval"] == id.as_str());
    assert_eq!(ex["outcome"], "client_gone", "{ex}");
    // The request stays open; the approver approves it while nobody waits.
    let out = f.approvals(Some(DANA), &["approve", &id]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(f.server_calls().is_empty(), "nothing without a caller");
    // The retry (same arguments, another progress token) takes that approval at once.
    let retry = body.replace("\"first\"", "\"second\"");
    let (status, _, reply) = f.node.post_jsonrpc(&url, &retry, &[&auth, &sess, ver]);
    assert_eq!(status, 200, "{reply}");
    assert!(
        reply.contains("Customer 250"),
        "{}",
        &reply[..reply.len().min(500)]
    );
    let rel = f.wait_step(&id, "released");
    assert_eq!(rel["approval_id"], id.as_str());
    assert_eq!(f.server_calls().len(), 1);
    // Once: a second retry is held anew.
    let c = f.call(Sdk::Py2, &bob, "export_customers", &json!({"limit": 250}));
    let again = f.agent.wait_event("approval", |e| {
        e["step"] == "held" && args_of(e)["limit"] == 250 && e["approval_id"] != id.as_str()
    });
    let out = f.approvals(
        Some(DANA),
        &["deny", &id_of(&again), "--reason", "once is enough"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(c.wait(Duration::from_secs(60)).exit_code, Some(1));
}
