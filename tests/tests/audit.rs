//! The audit log in the real data path: the agent with its eBPF programs, the official MCP
//! SDKs and a real OpenID provider. Every exchange recorded, the log verified offline with the
//! exported public key (and the kernel's connection counters matched), the GDPR Art. 30 record
//! of a scripted scenario, data-subject search, evidence bundles; kill -9 under concurrent
//! load loses no answered exchange; a full disk refuses requests with a clear error and loses
//! nothing already recorded. (Tamper scenarios with the sqlite3 tool:
//! `interceptor-user/tests/audit_tamper.rs`.)
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use interceptor_tests::*;
use serde_json::{Value, json};

fn policy_file() -> String {
    workspace_root()
        .join("policies/crm.policy.toml")
        .display()
        .to_string()
}

fn sqlite(db: &Path, sql: &str) -> String {
    let out = Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .output()
        .expect("sqlite3 (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "sqlite3 {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Copies the database files (as an auditor takes them away).
fn take_copy(cfg: &AgentConfig, to: &Path) -> PathBuf {
    std::fs::create_dir_all(to).unwrap();
    let db = cfg.state_dir.join("audit.db");
    for side in ["", "-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{side}", db.display()));
        if from.exists() {
            std::fs::copy(&from, to.join(format!("audit.db{side}"))).unwrap();
        }
    }
    to.join("audit.db")
}

#[test]
fn exchanges_are_recorded_verified_and_reported_per_article_30() {
    let Some(node) = Node::new("audit_art30") else {
        return;
    };
    let keys = node.oidc_keys("k1", None);
    let idp = node.oidc(node.port(9), &keys, None, &[]);
    let port = node.port(0);
    let resource = format!("http://{SERVER_IP}:{port}/mcp");
    let mut cfg = node.agent_config().mcp_service(
        "crm",
        port,
        &format!("[services.auth]\nresource = {resource:?}\n[services.redact]\n"),
    );
    let policy = policy_file();
    cfg.extra_agent_toml = format!(
        "\n[auth]\npolicy = [{policy:?}]\n[[auth.issuers]]\nissuer = {:?}\naudiences = [{resource:?}]\nca_file = {:?}\n",
        idp.issuer,
        idp.ca.display().to_string()
    );
    cfg.audit_toml =
        "[audit.controller]\nname = \"Example CRM Ltd\"\ncontact = \"privacy@example.com\"\n"
            .into();
    let server = node.mcp_server(Sdk::Py2, port, &[]);
    let mut agent = node.start_agent(&cfg);
    let token = |args: &[&str]| node.oidc_token(&idp, args, &resource);
    let alice = token(&[
        "--grant",
        "authorization_code",
        "--client-id",
        "mcp-cli",
        "--user",
        "alice",
    ]);
    let bob = token(&[
        "--grant",
        "authorization_code",
        "--client-id",
        "mcp-cli",
        "--user",
        "bob",
    ]);
    let batch = token(&[
        "--grant",
        "client_credentials",
        "--client-id",
        "crm-batch",
        "--client-secret",
        "crm-batch-secret",
    ]);
    let url = format!("http://{SERVER_IP}:{port}/mcp");
    let call = |t: &str, tool: &str, args: Value| {
        let h = format!("Authorization: Bearer {t}");
        let a = args.to_string();
        node.mcp_client(
            &node.client,
            Sdk::Py2,
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
            ],
        )
    };
    // The scripted scenario: support looks a customer up, the analyst and the batch job
    // export, and one call outside its role is denied.
    call(&alice, "customer_lookup", json!({"id": "42"})).assert_ok();
    call(&bob, "export_customers", json!({"limit": 10})).assert_ok();
    call(&batch, "export_customers", json!({"limit": 5})).assert_ok();
    let denied = call(&alice, "export_customers", json!({"limit": 1}));
    assert_ne!(denied.exit_code, Some(0));
    let calls: Vec<Value> = agent
        .events("exchange")
        .into_iter()
        .filter(|e| e["method"] == "tools/call")
        .collect();
    assert_eq!(calls.len(), 4, "{calls:?}");
    agent
        .terminate(Duration::from_secs(20))
        .expect("agent stops");

    // The auditor's public key, and the database taken away and verified offline.
    let pubkey = node.audit_pubkey(&cfg);
    let db = take_copy(&cfg, &node.dir.join("copy"));
    let (ok, out) = node.audit_verify(&cfg, Some(&db), &pubkey);
    assert!(ok, "{out}");
    assert!(out.contains("PASS"), "{out}");
    // The kernel's count of steered connections is matched by connection records.
    assert!(
        out.contains("service crm:") && out.contains("every steered connection is recorded"),
        "{out}"
    );
    // One request record and one final record per allowed call, linked; the denial once.
    let rows = sqlite(
        &db,
        "SELECT r.kind, b.outcome, b.target, b.request_seq IS NOT NULL FROM records r JOIN bodies b ON b.seq = r.seq \
         WHERE b.method = 'tools/call' ORDER BY r.seq",
    );
    let lines: Vec<&str> = rows.lines().collect();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("exchange|result|"))
            .count(),
        3,
        "{rows}"
    );
    assert!(
        lines
            .iter()
            .all(|l| !l.starts_with("exchange|result|") || l.ends_with("|1")),
        "{rows}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("request|")).count(),
        3,
        "{rows}"
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("exchange|denied|export_customers|0"))
            .count(),
        1,
        "{rows}"
    );
    for kind in [
        "conn_open",
        "conn_close",
        "agent_start",
        "agent_stop",
        "policy",
    ] {
        let n: u64 = sqlite(
            &db,
            &format!("SELECT count(*) FROM records WHERE kind = '{kind}'"),
        )
        .trim()
        .parse()
        .unwrap();
        assert!(n >= 1, "no {kind} record");
    }

    // Art. 30: exactly the purposes, categories and recipients the scenario produced.
    let art = node.cli_ok(
        &cfg,
        &[
            "audit",
            "export",
            "--format",
            "art30",
            "--from",
            "2000-01-01",
            "--to",
            "2100-01-01",
            "--db",
            db.to_str().unwrap(),
        ],
    );
    let art: Value = serde_json::from_str(&art).expect("art30 JSON");
    assert_eq!(art["controller"]["name"], "Example CRM Ltd");
    let acts = art["activities"].as_array().unwrap();
    let purposes: BTreeSet<&str> = acts
        .iter()
        .map(|a| a["purpose"].as_str().unwrap())
        .collect();
    let by_purpose = |role: &str| {
        calls
            .iter()
            .find(|e| e["role"] == role && e["outcome"] == "result")
            .and_then(|e| e["purpose"].as_str())
            .unwrap_or_else(|| panic!("no {role} exchange: {calls:?}"))
            .to_string()
    };
    let want: BTreeSet<String> = ["support", "analyst", "batch"]
        .iter()
        .map(|r| by_purpose(r))
        .collect();
    assert_eq!(
        purposes,
        want.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        "{art}"
    );
    // Masked entity types per purpose, as the exchange log lines counted them.
    let mut masked: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for e in calls.iter().filter(|e| e["outcome"] == "result") {
        let m: Value = serde_json::from_str(e["masked"].as_str().unwrap_or("{}")).unwrap();
        let set = masked
            .entry(e["purpose"].as_str().unwrap().to_string())
            .or_default();
        set.extend(m.as_object().unwrap().keys().cloned());
        // Entity types released in clear by the grant count as disclosed categories too.
        if let Some(r) = e["released"].as_str() {
            set.extend(r.split(',').filter(|x| !x.is_empty()).map(str::to_string));
        }
    }
    for a in acts {
        let p = a["purpose"].as_str().unwrap();
        assert_eq!(a["data_subject_categories"], json!(["customers"]), "{a}");
        let cats: BTreeSet<String> = a["personal_data_categories"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
        assert_eq!(cats, masked[p], "{a}");
        assert_eq!(a["exchanges"], 1, "{a}");
        let recips = a["recipients"].as_array().unwrap();
        assert_eq!(recips.len(), 1, "{a}");
        let role = a["recipient_roles"][0].as_str().unwrap();
        let who = match role {
            "support" => "alice",
            "analyst" => "bob",
            "batch" => "crm-batch",
            r => panic!("unexpected role {r}"),
        };
        assert!(recips[0].as_str().unwrap().starts_with(who), "{a}");
    }
    assert!(
        !masked[&by_purpose("support")].is_empty(),
        "customer_lookup masks personal data: {masked:?}"
    );
    let md = node.cli_ok(
        &cfg,
        &[
            "audit",
            "export",
            "--format",
            "art30-md",
            "--from",
            "2000-01-01",
            "--to",
            "2100-01-01",
            "--db",
            db.to_str().unwrap(),
        ],
    );
    assert!(
        md.contains("# Record of processing activities") && md.contains("Example CRM Ltd"),
        "{md}"
    );

    // Data-subject search through the keyed pseudonyms; the value is nowhere in the log.
    let found = node.cli_ok(
        &cfg,
        &[
            "audit",
            "search",
            "--subject",
            "Jane.Doe@example.com",
            "--json",
            "--db",
            db.to_str().unwrap(),
        ],
    );
    let found: Value = serde_json::from_str(&found).unwrap();
    let hits = found["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 1, "{found}");
    assert_eq!(hits[0]["target"], "customer_lookup");
    assert_eq!(hits[0]["caller"], "alice");
    let n = sqlite(
        &db,
        "SELECT count(*) FROM bodies WHERE body LIKE '%jane.doe%'",
    );
    assert_eq!(n.trim(), "0");

    // An evidence bundle of the period verifies offline.
    let bundle = node.dir.join("bundle");
    node.cli_ok(
        &cfg,
        &[
            "audit",
            "export",
            "--format",
            "jsonl",
            "--from",
            "2000-01-01",
            "--to",
            "2100-01-01",
            "--out",
            bundle.to_str().unwrap(),
        ],
    );
    let out = node.cli_ok(
        &cfg,
        &[
            "audit",
            "verify",
            "--bundle",
            bundle.to_str().unwrap(),
            "--pubkey",
            pubkey.to_str().unwrap(),
        ],
    );
    assert!(out.contains("PASS"), "{out}");
    // Operators' views.
    let tail = node.cli_ok(&cfg, &["audit", "tail", "-n", "5"]);
    assert!(tail.contains("agent_stop"), "{tail}");
    let first: u64 = sqlite(&db, "SELECT min(seq) FROM records WHERE kind = 'exchange'")
        .trim()
        .parse()
        .unwrap();
    let show = node.cli_ok(&cfg, &["audit", "show", &first.to_string()]);
    let show: Value = serde_json::from_str(&show).unwrap();
    assert_eq!(show["kind"], "exchange");
    drop(server);
}

/// Concurrent callers with curl, one JSON-RPC id each; returns the ids whose complete
/// response reached the caller.
fn load(
    node: &Node,
    port: u16,
    workers: usize,
    per_worker: usize,
    out: &Path,
) -> Vec<std::process::Child> {
    std::fs::create_dir_all(out).unwrap();
    (0..workers)
        .map(|w| {
            let script = format!(
                "for i in $(seq 1 {per_worker}); do id=w{w}-$i; \
                 curl -s -m 5 -o {out}/$id.part -w '%{{http_code}}' -H 'content-type: application/json' \
                 -H 'accept: application/json, text/event-stream' \
                 -d '{{\"jsonrpc\":\"2.0\",\"id\":\"'$id'\",\"method\":\"tools/call\",\"params\":{{\"name\":\"echo\",\"arguments\":{{}}}}}}' \
                 http://{SERVER_IP}:{port}/mcp > {out}/$id.status && mv {out}/$id.part {out}/$id.json; done",
                out = out.display()
            );
            node.client
                .command("sh")
                .args(["-c", &script])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("load worker")
        })
        .collect()
}

fn answered(out: &Path) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for e in std::fs::read_dir(out).unwrap() {
        let p = e.unwrap().path();
        if p.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        let id = p.file_stem().unwrap().to_string_lossy().to_string();
        let status = std::fs::read_to_string(p.with_extension("status")).unwrap_or_default();
        let body: Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap_or_default();
        if status.trim() == "200" && body["result"].is_object() {
            ids.insert(id);
        }
    }
    ids
}

/// The JSON-RPC ids of the exchanges recorded as answered.
fn recorded(db: &Path, kind: &str, outcome: Option<&str>) -> BTreeSet<String> {
    let cond = outcome
        .map(|o| format!(" AND b.outcome = '{o}'"))
        .unwrap_or_default();
    sqlite(
        db,
        &format!("SELECT json_extract(b.body, '$.data.jsonrpc_id') FROM records r JOIN bodies b ON b.seq = r.seq WHERE r.kind = '{kind}'{cond}"),
    )
    .lines()
    .map(|l| l.trim().trim_matches('"').to_string())
    .filter(|l| !l.is_empty())
    .collect()
}

#[test]
fn kill_9_under_load_loses_no_answered_exchange() {
    let Some(node) = Node::new("audit_crash") else {
        return;
    };
    let port = node.port(0);
    let bind = format!("0.0.0.0:{port}");
    let server = node.server(&node.server, &[&bind], "mcp-echo");
    let cfg = node.agent_config().mcp_service("echo", port, "");
    let mut agent = node.start_agent(&cfg);
    let out = node.dir.join("load");
    let mut workers = load(&node, port, 8, 400, &out);
    // Let the load run, then kill the agent in the middle of it.
    assert!(
        wait_until(Duration::from_secs(30), || answered(&out).len() >= 150),
        "the load did not get going"
    );
    agent.kill9();
    for w in &mut workers {
        let _ = w.kill();
        let _ = w.wait();
    }
    let got = answered(&out);
    let pubkey = node.audit_pubkey(&cfg);
    let db = take_copy(&cfg, &node.dir.join("copy"));
    let done = recorded(&db, "exchange", Some("result"));
    let missing: Vec<&String> = got.iter().filter(|id| !done.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} answered exchanges have no record: {missing:?}",
        missing.len(),
        got.len()
    );
    // What the server saw was recorded before it was forwarded.
    let seen: BTreeSet<String> = server
        .proc
        .stdout
        .events("mcp_request")
        .iter()
        .filter_map(|e| e["body"]["id"].as_str().map(str::to_string))
        .collect();
    let requested = recorded(&db, "request", None);
    let unrecorded: Vec<&String> = seen.iter().filter(|id| !requested.contains(*id)).collect();
    assert!(
        unrecorded.is_empty(),
        "the server got unrecorded requests: {unrecorded:?}"
    );
    let (ok, text) = node.audit_verify(&cfg, Some(&db), &pubkey);
    assert!(ok, "{text}");
    eprintln!(
        "answered before the kill: {}, recorded: {}",
        got.len(),
        done.len()
    );
}

#[test]
fn full_disk_refuses_requests_and_loses_nothing() {
    let Some(node) = Node::new("audit_disk") else {
        return;
    };
    let port = node.port(0);
    let bind = format!("0.0.0.0:{port}");
    let server = node.server(&node.server, &[&bind], "mcp-echo");
    let state = node.dir.join("small");
    let _mount = Mount::new("tmpfs", "tmpfs", &state).expect("tmpfs");
    sh("mount", &["-o", "remount,size=3m", state.to_str().unwrap()]).expect("resize tmpfs");
    let mut cfg = node.agent_config().mcp_service("echo", port, "");
    cfg.state_dir = state.clone();
    let mut agent = node.start_agent(&cfg);
    let post = |id: &str| {
        node.curl(&[
            "-m",
            "10",
            "-H",
            "content-type: application/json",
            "-H",
            "accept: application/json, text/event-stream",
            "-d",
            &format!(r#"{{"jsonrpc":"2.0","id":"{id}","method":"tools/call","params":{{"name":"echo","arguments":{{}}}}}}"#),
            &format!("http://{SERVER_IP}:{port}/mcp"),
        ])
    };
    let mut ok_before = Vec::new();
    for i in 0..5 {
        let id = format!("before-{i}");
        let (status, _, body) = post(&id);
        assert_eq!(status, 200, "{body}");
        ok_before.push(id);
    }
    // Fill the filesystem.
    let filler = state.join("filler");
    let _ = Command::new("dd")
        .args([
            "if=/dev/zero",
            &format!("of={}", filler.display()),
            "bs=16k",
        ])
        .stderr(std::process::Stdio::null())
        .status();
    let mut refused = 0;
    let mut answered_full = Vec::new();
    for i in 0..40 {
        let id = format!("full-{i}");
        let (status, _, body) = post(&id);
        match status {
            200 => answered_full.push(id),
            503 => {
                let v: Value = serde_json::from_str(&body).expect("JSON-RPC error body");
                let msg = v["error"]["message"].as_str().unwrap_or("");
                assert!(msg.contains("cannot record"), "{body}");
                assert_eq!(v["error"]["data"]["rule"], "audit/unavailable", "{body}");
                refused += 1;
            }
            s => panic!("unexpected status {s}: {body}"),
        }
    }
    assert!(refused > 0, "nothing was refused on a full disk");
    assert!(
        agent
            .events("audit_unavailable")
            .iter()
            .any(|e| e["side"] == "internal"),
        "the refusal is logged"
    );
    // Space again: requests go through again.
    std::fs::remove_file(&filler).unwrap();
    for i in 0..3 {
        let (status, _, body) = post(&format!("after-{i}"));
        assert_eq!(status, 200, "{body}");
    }
    agent
        .terminate(Duration::from_secs(20))
        .expect("agent stops");
    let db = state.join("audit.db");
    // Nothing recorded was lost; every answered call and every request the server saw is there.
    let done = recorded(&db, "exchange", Some("result"));
    for id in ok_before.iter().chain(answered_full.iter()) {
        assert!(done.contains(id), "{id} answered but not recorded");
    }
    let requested = recorded(&db, "request", None);
    for e in server.proc.stdout.events("mcp_request") {
        if let Some(id) = e["body"]["id"].as_str() {
            assert!(requested.contains(id), "the server got {id} unrecorded");
        }
    }
    let pubkey = node.audit_pubkey(&cfg);
    let (ok, text) = node.audit_verify(&cfg, Some(&db), &pubkey);
    assert!(ok, "{text}");
}
