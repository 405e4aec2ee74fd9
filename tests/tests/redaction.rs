//! Redaction end to end, with the official MCP SDK (Python 2.x) as client and server: personal
//! data in every place an MCP answer can carry it reaches the client masked, over SSE and JSON
//! responses; request parameters are redacted before they are logged; exchange records hold
//! counts and keyed pseudonyms, never values; a 100 000-record export streams through masked
//! in bounded agent memory.
use std::time::Duration;

use interceptor_tests::*;
use serde_json::Value;

macro_rules! node {
    ($name:expr) => {
        match Node::new($name) {
            Some(n) => n,
            None => return,
        }
    };
}

/// Raw values the peers' catalogue serves (tests/peers/catalogue.py), and a credential. The
/// mobile number (digits without `+`) is a phone number only under its key: masked in the
/// JSON resources' text because a document carried in a string is read as one.
const PII: [&str; 7] = [
    "jane.doe@example.com",
    "447700900123",
    "john.roe@example.org",
    "GB82WEST12345698765432",
    "7946 0958",
    "GB82 WEST",
    "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
];

fn no_pii(what: &str, s: &str) {
    for p in PII {
        assert!(!s.contains(p), "{p} in clear in {what}: {s}");
    }
}

fn has_mask(what: &str, v: &Value) {
    let s = v.to_string();
    assert!(
        s.contains("[EMAIL:"),
        "{what} carries no e-mail pseudonym: {s}"
    );
}

/// The pseudonyms ("4f1c9a2b") of e-mail masks in a text.
fn email_pseudonyms(s: &str) -> Vec<String> {
    s.match_indices("[EMAIL:")
        .map(|(i, m)| s[i + m.len()..].chars().take(8).collect())
        .collect()
}

/// `notifications`: the server could stream notifications (an SSE response; a server that
/// answers with plain JSON has nowhere to send them).
fn check_pii_scenario(out: &Value, notifications: bool) {
    no_pii("the client's view", &out.to_string());
    let r = &out["result"];
    has_mask("text content", &r["content"][0]["text"]);
    assert_eq!(r["content"][1]["type"], "resource", "{r}");
    has_mask("embedded resource", &r["content"][1]["resource"]["text"]);
    assert_eq!(r["content"][2]["type"], "resource_link", "{r}");
    has_mask("resource link", &r["content"][2]["description"]);
    has_mask("structuredContent", &r["structuredContent"]["email"]);
    // A credential, under its key (no pattern of its own).
    assert!(
        r["structuredContent"]["portal_api_key"]
            .as_str()
            .is_some_and(|k| k.starts_with("[SECRET:")),
        "{r}"
    );
    assert_eq!(out["tool_error"]["isError"], true, "{out}");
    has_mask("tool error", &out["tool_error"]["content"]);
    assert_eq!(out["rpc_error"]["code"], -32603, "{out}");
    has_mask("JSON-RPC error message", &out["rpc_error"]["message"]);
    has_mask("resource contents", &out["resource"]["contents"][0]["text"]);
    has_mask(
        "prompt message",
        &out["prompt"]["messages"][0]["content"]["text"],
    );
    has_mask(
        "completion values",
        &out["completion"]["completion"]["values"],
    );
    if !notifications {
        return;
    }
    let events = out["events"].as_array().expect("events");
    let log = events
        .iter()
        .find(|e| e["type"] == "log")
        .unwrap_or_else(|| panic!("no log notification: {out}"));
    has_mask("logging notification", &log["data"]);
    let progress = events
        .iter()
        .find(|e| e["type"] == "progress")
        .expect("progress");
    has_mask("progress notification", &progress["message"]);
    // Structure untouched: the masked JSON inside the embedded resource is still JSON.
    let inner: Value = serde_json::from_str(r["content"][1]["resource"]["text"].as_str().unwrap())
        .expect("embedded JSON stays valid");
    assert_eq!(inner["id"], "42");
}

#[test]
fn personal_data_in_every_kind_of_answer_reaches_the_client_masked() {
    let node = node!("redact_everywhere");
    let (sse_port, json_port) = (node.port(0), node.port(1));
    let s1 = node.mcp_server(Sdk::Py2, sse_port, &[]);
    let s2 = node.mcp_server(Sdk::Py2, json_port, &["--json-response"]);
    let cfg = node
        .agent_config()
        .mcp_service("crm", sse_port, "[services.redact]\n")
        .mcp_service("crm-json", json_port, "[services.redact]\n");
    let agent = node.start_agent(&cfg);
    let mut pseudonyms = Vec::new();
    // 2026-07-28 (stateless) and the initialize handshake era (session, GET stream, 202s).
    for (port, mode) in [
        (sse_port, "auto"),
        (sse_port, "legacy"),
        (json_port, "auto"),
    ] {
        let url = format!("http://{SERVER_IP}:{port}/mcp");
        let out = node.mcp_client(
            &node.client,
            Sdk::Py2,
            &url,
            &["--scenario", "pii", "--mode", mode],
        );
        let out = out.assert_ok();
        check_pii_scenario(out, port == sse_port);
        pseudonyms.push(email_pseudonyms(&out["result"].to_string()));
    }
    // The same value gets the same pseudonym, whatever the transport.
    assert!(!pseudonyms[0].is_empty());
    assert!(
        pseudonyms
            .iter()
            .all(|p| p.first() == pseudonyms[0].first()),
        "{pseudonyms:?}"
    );

    for service in ["crm", "crm-json"] {
        let e = agent.wait_event("exchange", |e| {
            e["service"] == service && e["mcp_name"] == "pii_everywhere"
        });
        assert_eq!(e["outcome"], "result", "{e}");
        let masked: Value = serde_json::from_str(e["masked"].as_str().unwrap_or("{}")).unwrap();
        // Text, embedded resource, resource link, structuredContent; over SSE also the log
        // and progress notifications of the same exchange.
        let emails = if service == "crm" { 6 } else { 4 };
        assert_eq!(masked["EMAIL"], emails, "{e}");
        assert_eq!(masked["IBAN"], 3, "{e}");
        // The request's e-mail argument is in the record as the same pseudonym the response
        // used, never in clear: "which exchanges involved this person" can be answered.
        let params = e["params"].as_str().expect("params recorded");
        assert!(params.contains("[EMAIL:"), "{e}");
        assert!(
            e["request_pseudonyms"]
                .as_str()
                .unwrap_or("")
                .contains(&format!("EMAIL:{}", pseudonyms[0][0])),
            "{e}"
        );
        let sha = e["response_sha256"].as_str().unwrap_or("");
        assert_eq!(sha.len(), 64, "{e}");
        for tool in ["fail", "fail_rpc"] {
            let f = agent.wait_event("exchange", |e| {
                e["service"] == service && e["mcp_name"] == tool
            });
            assert!(
                f["params"].as_str().unwrap_or("").contains("[EMAIL:"),
                "{f}"
            );
        }
        let rpc = agent.wait_event("exchange", |e| {
            e["service"] == service && e["mcp_name"] == "fail_rpc"
        });
        assert_eq!(rpc["outcome"], "error", "{rpc}");
    }
    // `interceptor redact`, the operators' dry run, masks a sample as the agent masked the
    // live answers: the same settings and the key in force give the same pseudonym.
    let sample = cfg.path.with_file_name("sample.txt");
    std::fs::write(&sample, "reply to jane.doe@example.com today\n").expect("sample");
    let mut cmd = node.server.command(interceptor_bin());
    cmd.arg("redact")
        .arg("--config")
        .arg(&cfg.path)
        .args(["--service", "crm"])
        .arg(&sample);
    let out = run_timeout(&mut cmd, Duration::from_secs(60)).expect("interceptor redact");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stdout,
        format!("reply to [EMAIL:{}] today\n", pseudonyms[0][0]),
        "{stderr}"
    );
    assert!(stderr.contains("masked 1 value(s): EMAIL 1"), "{stderr}");
    assert!(stderr.contains("EMAIL (confidence"), "{stderr}");
    // A service that does not redact its answers is named as such, not dry-run silently.
    let mut cmd = node.server.command(interceptor_bin());
    cmd.arg("redact")
        .arg("--config")
        .arg(&cfg.path)
        .args(["--service", "nope"])
        .arg(&sample);
    let out = run_timeout(&mut cmd, Duration::from_secs(60)).expect("interceptor redact");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no service \"nope\""),
        "{out:?}"
    );

    // Nothing the agent wrote anywhere holds a value in clear.
    std::thread::sleep(Duration::from_millis(200));
    let log = agent.proc.stderr.all().join("\n") + &agent.proc.stdout.all().join("\n");
    no_pii("the agent's log", &log);
    drop((s1, s2));
}

const SSE_ACCEPT: &str = "accept: application/json, text/event-stream";

/// Everything a redacting service's server sends back is redacted, heads as well as bodies, also answers that are no
/// MCP exchange (a debug page; a JSON error to a GET of the MCP endpoint), and they come as
/// they are: the agent asks the server for `identity` whatever the caller accepts, and refuses
/// a compressed answer it gets anyway (nothing in it could be read, so nothing masked).
#[test]
fn plain_and_compressed_answers_of_a_redacting_service_never_pass_unmasked() {
    let node = node!("redact_plain_answers");
    let (accepting, always) = (node.port(0), node.port(1));
    let server = |port: u16, compress: &str| {
        node.mcp_server(
            Sdk::Py2,
            port,
            &["--json-response", "--debug-routes", "--compress", compress],
        )
    };
    let (s1, s2) = (server(accepting, "accept"), server(always, "always"));
    let cfg = node
        .agent_config()
        .mcp_service(
            "crm",
            accepting,
            "non_mcp = \"forward\"\n[services.redact]\nnumbers = true\nkeys = true\n",
        )
        .mcp_service(
            "crm-gz",
            always,
            "non_mcp = \"forward\"\n[services.redact]\n",
        );
    let agent = node.start_agent(&cfg);
    for path in ["/debug", "/mcp?debug=1"] {
        // curl accepts gzip (and would inflate it: a compressed answer passed through would
        // show the data in clear here).
        // (A GET of the MCP endpoint is a stream request: it must accept SSE.)
        let url = format!("http://{SERVER_IP}:{accepting}{path}");
        let (code, head, body) = node.curl(&["--compressed", "-H", SSE_ACCEPT, &url]);
        assert_eq!(code, 200, "{path}: {head}\n{body}");
        no_pii(path, &body);
        assert!(
            body.contains("[EMAIL:") && body.contains("[IBAN:"),
            "{path}: {body}"
        );
        // The head too: the file name and the server's own header name the caller.
        no_pii(path, &head);
        let lower = head.to_ascii_lowercase();
        assert!(
            lower.contains("content-disposition: attachment; filename=\"[email:")
                && lower.contains("x-debug-caller: [email:"),
            "{head}"
        );
        assert!(
            !head.to_ascii_lowercase().contains("content-encoding"),
            "{head}"
        );
        let seen = s1
            .proc
            .stdout
            .wait_event("debug_request", WAIT, |e| {
                path.starts_with(e["path"].as_str().unwrap_or("-"))
            })
            .expect("the server got the request");
        assert_eq!(seen["accept_encoding"], "identity", "{seen}");
        // Through the agent; the server's answer was plain, redacted as text and as JSON.
        if path == "/debug" {
            assert!(head.to_ascii_lowercase().contains("text/plain"), "{head}");
        } else {
            let v: Value = serde_json::from_str(&body).expect("JSON stays JSON");
            assert!(v["error"].as_str().unwrap_or("").contains("[EMAIL:"), "{v}");
            // `numbers = true`: a number that is personal data under its key becomes its
            // mask; another number stays a number.
            assert!(
                v["bsn"].as_str().unwrap_or("").starts_with("[NL_BSN:"),
                "{v}"
            );
            assert_eq!(v["count"], 111222333, "{v}");
            // `keys = true`: a key that is an address is masked, its value kept.
            let by_caller = v["by_caller"].as_object().expect("by_caller");
            assert!(
                by_caller.keys().all(|k| k.starts_with("[EMAIL:")) && by_caller.len() == 1,
                "{v}"
            );
        }
    }
    // A path naming a person (forwarded as it is) is recorded redacted: an audit record
    // cannot be taken back.
    let url = format!("http://{SERVER_IP}:{accepting}/records/jane.doe%40example.com/export");
    let (code, head, _) = node.curl(&[&url]);
    assert!(code >= 200, "{head}");
    // So is what a refusal quotes (the caller reads its own), and an id the caller chose.
    let mcp_url = format!("http://{SERVER_IP}:{accepting}/mcp");
    let post = |body: &str| node.post_jsonrpc(&mcp_url, body, &[]);
    let (code, head, reply) =
        post(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":"jane.doe@example.com"}"#);
    assert_eq!(code, 400, "{head}\n{reply}");
    let (code, head, reply) =
        post(r#"{"jsonrpc":"2.0","id":"export:jane.doe@example.com","method":"ping"}"#);
    assert!(code < 500, "{head}\n{reply}");
    let mut stored = Vec::new();
    for side in ["", "-wal"] {
        let f = cfg.state_dir.join(format!("audit.db{side}"));
        stored.extend(std::fs::read(&f).unwrap_or_default());
    }
    let stored = String::from_utf8_lossy(&stored);
    assert!(stored.contains("/records/"), "the forward is recorded");
    assert!(stored.contains("got string"), "the refusal is recorded");
    assert!(stored.contains("export:[EMAIL:"), "the ping is recorded");
    assert!(
        !stored.contains("jane.doe") && !stored.contains("jane.doe%40"),
        "a path, a refusal's reason or an id is in the audit store in clear"
    );
    // An MCP answer's head as well; what frames the exchange passes (the session id the
    // caller must send back).
    let (code, head, body) = post(INITIALIZE);
    assert_eq!(code, 200, "{head}\n{body}");
    no_pii("initialize", &head);
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("x-debug-caller: [email:"), "{head}");
    assert!(lower.contains("mcp-session-id: "), "{head}");
    // What is not UTF-8 text cannot be read, so not redacted: refused, neither passed nor
    // mangled (an image; a text in UTF-16 that holds an address).
    for path in ["/debug.png", "/debug16"] {
        let url = format!("http://{SERVER_IP}:{accepting}{path}");
        let (code, head, body) = node.curl(&["--compressed", &url]);
        assert_eq!(code, 502, "{path}: {head}\n{body}");
        no_pii(path, &body);
        let e = agent.wait_event("upstream_error", |e| {
            e["service"] == "crm" && e["error"].as_str().unwrap_or("").contains("not UTF-8")
        });
        assert!(
            e["error"]
                .as_str()
                .unwrap_or("")
                .contains("cannot be redacted"),
            "{e}"
        );
    }
    // A server that compresses anyway (here on a second Content-Encoding line after
    // `identity`): refused, with the reason in the agent's log.
    for path in ["/debug", "/mcp?debug=1"] {
        let url = format!("http://{SERVER_IP}:{always}{path}");
        let (code, head, body) = node.curl(&["--compressed", "-H", SSE_ACCEPT, &url]);
        assert_eq!(code, 502, "{path}: {head}\n{body}");
        no_pii(path, &body);
    }
    let e = agent.wait_event("upstream_error", |e| {
        e["service"] == "crm-gz"
            && e["error"]
                .as_str()
                .unwrap_or("")
                .contains("Content-Encoding")
    });
    assert!(e["error"].as_str().unwrap_or("").contains("gzip"), "{e}");
    drop((s1, s2));
}

/// Peak resident memory of a process since the last [`reset_peak`] (kB).
fn peak_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Resets the peak-RSS counter (`VmHWM`) of a process (proc(5): clear_refs, value 5).
fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset VmHWM");
}

#[test]
fn a_100000_record_export_streams_through_masked_in_bounded_memory() {
    let node = node!("redact_export");
    let (sse_port, json_port) = (node.port(0), node.port(1));
    let s1 = node.mcp_server(Sdk::Py2, sse_port, &[]);
    let s2 = node.mcp_server(Sdk::Py2, json_port, &["--json-response"]);
    let cfg = node
        .agent_config()
        .mcp_service("crm", sse_port, "[services.redact]\n")
        .mcp_service("crm-json", json_port, "[services.redact]\n");
    let agent = node.start_agent(&cfg);
    // Warm up (first connections, pools, lazy DFA caches) so the peak below is the export's.
    for port in [sse_port, json_port] {
        let url = format!("http://{SERVER_IP}:{port}/mcp");
        node.mcp_client(
            &node.client,
            Sdk::Py2,
            &url,
            &["--scenario", "export", "--limit", "1000"],
        )
        .assert_ok();
    }
    for (service, port) in [("crm-json", json_port), ("crm", sse_port)] {
        let url = format!("http://{SERVER_IP}:{port}/mcp");
        let base = rss_kb(agent.pid());
        reset_peak(agent.pid());
        let out = node.mcp_client(
            &node.client,
            Sdk::Py2,
            &url,
            &[
                "--scenario",
                "export",
                "--limit",
                "100000",
                "--timeout",
                "300",
            ],
        );
        let peak = peak_kb(agent.pid());
        let x = &out.assert_ok()["export"];
        assert_eq!(x["records"], 100_000, "{service}: {x}");
        assert_eq!(
            x["parsed"], 100_000,
            "{service}: every line still JSON: {x}"
        );
        assert_eq!(x["emails_in_clear"], 0, "{service}: {x}");
        assert_eq!(x["email_masks"], 100_000, "{service}: {x}");
        assert_eq!(x["iban_masks"], 100_000, "{service}: {x}");
        let payload_kb = x["bytes"].as_u64().unwrap_or(0) / 1024;
        assert!(payload_kb > 10 * 1024, "{service}: {x}");
        // The result is one JSON string of ~13 MB (one SSE event, or one JSON body): the agent
        // must not hold it whole, let alone twice.
        let grew = peak.saturating_sub(base);
        eprintln!("{service}: payload {payload_kb} kB, agent RSS {base} kB, peak +{grew} kB");
        assert!(
            grew < payload_kb / 2,
            "{service}: agent peak memory grew by {grew} kB for a {payload_kb} kB export (held whole?)"
        );
        let e = agent.wait_event("exchange", |e| {
            e["service"] == service
                && e["mcp_name"] == "export_customers"
                && e["params"].as_str().unwrap_or("").contains("100000")
        });
        assert_eq!(e["outcome"], "result", "{e}");
        let masked: Value = serde_json::from_str(e["masked"].as_str().unwrap_or("{}")).unwrap();
        assert_eq!(masked["EMAIL"], 100_000, "{e}");
    }
    drop((s1, s2));
}

/// `check-config` compiles each service's detectors as the agent will (an unbounded custom
/// pattern used to pass the check and then stop the agent at start), and names a custom
/// detector that would make the automaton thrash on base64-like content; the agent logs the
/// same warning at start and still serves.
#[test]
fn check_config_compiles_detectors_and_names_costly_ones() {
    let node = node!("redact_check_config");
    let port = node.port(0);
    let check = |cfg: &AgentConfig| {
        let mut cmd = node.server.command(interceptor_bin());
        cmd.arg("check-config").arg(&cfg.path);
        run_timeout(&mut cmd, Duration::from_secs(60)).expect("interceptor check-config")
    };
    let detector = |entity: &str, pattern: &str| {
        format!(
            "[services.redact]\n[[services.redact.custom]]\nentity = {entity:?}\npattern = {pattern:?}\n"
        )
    };
    let broken = node
        .agent_config()
        .mcp_service("crm", port, &detector("TICKET", r"\bT-[0-9]+\b"));
    node.write_config(&broken);
    let out = check(&broken);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an unbounded pattern passed: {err}");
    assert!(
        err.contains("services.crm.redact") && err.contains("TICKET"),
        "{err}"
    );

    let costly = node.agent_config().mcp_service(
        "crm",
        port,
        &detector(
            "CORP_LOGIN",
            r"\b[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@corp\.example\b",
        ),
    );
    node.write_config(&costly);
    let out = check(&costly);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning: services.crm.redact: custom detector CORP_LOGIN"),
        "{err}"
    );
    let agent = node.start_agent(&costly);
    let w = agent.wait_event("redact_costly_detector", |e| e["entity"] == "CORP_LOGIN");
    assert_eq!(w["service"], "crm", "{w}");

    let fine =
        node.agent_config()
            .mcp_service("crm", port, &detector("EMPLOYEE_ID", r"\bEMP-[0-9]{6}\b"));
    node.write_config(&fine);
    let out = check(&fine);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !err.contains("warning"), "{err}");
}
