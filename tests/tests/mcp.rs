//! The MCP-aware data path with real MCP software: the official Python (2.x and 1.x) and
//! TypeScript SDKs as servers and clients, through the interceptor, on a namespaced fake node.
//! Every transport (Streamable HTTP with JSON and SSE responses, the 2026-07-28 stateless
//! revision, the legacy HTTP+SSE transport), TLS termination and re-encryption, HTTP/2,
//! progress streaming, a 25 MB result, hostile input, upstream credentials, batches.
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

/// The exchange records the agent logged, waited for until `n` are there.
fn exchanges(agent: &Agent, n: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let ex = agent.events("exchange");
        if ex.len() >= n || std::time::Instant::now() > deadline {
            return ex;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn by_method<'a>(ex: &'a [Value], method: &str) -> Vec<&'a Value> {
    ex.iter().filter(|e| e["method"] == method).collect()
}

/// The basic scenario's answers must be the catalogue's, whatever the SDK.
fn check_basic(out: &Value) {
    let tools: Vec<&str> = out["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    for t in [
        "echo",
        "add",
        "slow_progress",
        "big_result",
        "customer_lookup",
    ] {
        assert!(tools.contains(&t), "tool {t} missing: {tools:?}");
    }
    let s = out.to_string();
    assert!(
        s.contains("jane.doe@example.com"),
        "resource/prompt content: {s}"
    );
}

#[test]
fn python2_client_and_server_speak_2026_07_28_through_the_interceptor() {
    let node = node!("mcp_py2_2026");
    let port = node.port(0);
    let server = node.mcp_server(Sdk::Py2, port, &[]);
    let cfg = node.agent_config().mcp_service("crm", port, "");
    let agent = node.start_agent(&cfg);
    let url = format!("http://{SERVER_IP}:{port}/mcp");
    let c = node.mcp_client(&node.client, Sdk::Py2, &url, &["--scenario", "basic"]);
    let out = c.assert_ok();
    assert_eq!(out["protocol_version"], "2026-07-28", "{out}");
    check_basic(out);

    let ex = exchanges(&agent, 8);
    for e in &ex {
        assert_eq!(e["service"], "crm", "{e}");
        assert_eq!(e["caller_kind"], "remote", "{e}");
    }
    let calls = by_method(&ex, "tools/call");
    assert!(calls.len() >= 2, "{ex:#?}");
    let echo = calls
        .iter()
        .find(|e| e["mcp_name"] == "echo")
        .expect("tools/call echo recorded with its tool name");
    assert_eq!(echo["outcome"], "result", "{echo}");
    assert_eq!(echo["revision"], "2026-07-28", "{echo}");
    assert!(echo["jsonrpc_id"].is_string(), "{echo}");
    assert!(echo["request_bytes"].as_u64().unwrap_or(0) > 0, "{echo}");
    assert!(echo["response_bytes"].as_u64().unwrap_or(0) > 0, "{echo}");
    for m in [
        "tools/list",
        "resources/read",
        "prompts/get",
        "prompts/list",
    ] {
        let e = by_method(&ex, m);
        assert!(!e.is_empty(), "no exchange for {m}: {ex:#?}");
        assert!(e.iter().all(|e| e["outcome"] == "result"), "{m}: {e:#?}");
    }
    let closes = agent.events("conn_close");
    assert!(!closes.is_empty());
    for c in &closes {
        assert!(c["bytes_to_server"].as_u64().unwrap_or(0) > 0, "{c}");
        assert!(c["bytes_to_client"].as_u64().unwrap_or(0) > 0, "{c}");
    }
    let read = by_method(&ex, "resources/read");
    assert!(
        read.iter()
            .any(|e| e["mcp_name"].as_str().unwrap_or("").contains("://")),
        "resources/read names its URI: {read:#?}"
    );
    drop(server);
}

#[test]
fn python1_legacy_sse_transport_is_correlated_on_the_sse_channel() {
    let node = node!("mcp_py1_legacy_sse");
    let port = node.port(0);
    let server = node.mcp_server(Sdk::Py1, port, &["--transport", "sse"]);
    let cfg = node.agent_config().mcp_service("crm", port, "");
    let agent = node.start_agent(&cfg);
    let url = format!("http://{SERVER_IP}:{port}/sse");
    let c = node.mcp_client(
        &node.client,
        Sdk::Py1,
        &url,
        &["--transport", "sse", "--scenario", "basic"],
    );
    check_basic(c.assert_ok());
    let ex = exchanges(&agent, 6);
    let calls = by_method(&ex, "tools/call");
    assert!(!calls.is_empty(), "{ex:#?}");
    for e in &calls {
        assert_eq!(e["transport"], "legacy_sse", "{e}");
        assert_eq!(
            e["outcome"], "result",
            "response found on the SSE channel: {e}"
        );
        assert!(e["session"].is_string(), "{e}");
        assert!(e["response_bytes"].as_u64().unwrap_or(0) > 0, "{e}");
    }
    let init = by_method(&ex, "initialize");
    assert_eq!(init.len(), 1, "{ex:#?}");
    assert_eq!(init[0]["outcome"], "result", "{}", init[0]);
    drop(server);
}

#[test]
fn typescript_client_and_server_through_the_interceptor() {
    let node = node!("mcp_node_streamable");
    let port = node.port(0);
    let server = node.mcp_server(Sdk::Node, port, &[]);
    let cfg = node.agent_config().mcp_service("crm", port, "");
    let agent = node.start_agent(&cfg);
    let url = format!("http://{SERVER_IP}:{port}/mcp");
    let c = node.mcp_client(&node.client, Sdk::Node, &url, &["--scenario", "basic"]);
    check_basic(c.assert_ok());
    let ex = exchanges(&agent, 6);
    let init = by_method(&ex, "initialize");
    assert_eq!(init.len(), 1, "{ex:#?}");
    let calls = by_method(&ex, "tools/call");
    assert!(!calls.is_empty(), "{ex:#?}");
    for e in &calls {
        assert_eq!(e["outcome"], "result", "{e}");
        assert!(e["session"].is_string(), "Mcp-Session-Id recorded: {e}");
    }
    // The client's initialized notification is an exchange without a response.
    assert!(
        by_method(&ex, "notifications/initialized")
            .iter()
            .all(|e| e["outcome"] == "notification"),
        "{ex:#?}"
    );
    drop(server);
}

#[test]
fn tls_is_terminated_and_http2_is_served() {
    let node = node!("mcp_tls_h2");
    let port = node.port(0);
    let (ca, cert, key) = make_tls(&node.dir, "front", &["crm.test"], &[SERVER_IP]);
    let server = node.mcp_server(Sdk::Py2, port, &[]);
    let extra = format!(
        "[services.tls]\ncerts = [{{ cert = {:?}, key = {:?} }}]\n",
        cert.display().to_string(),
        key.display().to_string()
    );
    let cfg = node.agent_config().mcp_service("crm", port, &extra);
    let agent = node.start_agent(&cfg);
    let url = format!("https://{SERVER_IP}:{port}/mcp");
    let ca_s = ca.display().to_string();
    for h2 in [false, true] {
        let mut args = vec!["--scenario", "basic", "--cacert", ca_s.as_str()];
        if h2 {
            args.push("--http2");
        }
        let c = node.mcp_client(&node.client, Sdk::Py2, &url, &args);
        check_basic(c.assert_ok());
    }
    let ex = exchanges(&agent, 16);
    let versions: std::collections::BTreeSet<String> = ex
        .iter()
        .filter_map(|e| e["http_version"].as_str().map(str::to_string))
        .collect();
    assert!(versions.contains("HTTP/1.1"), "{versions:?}");
    assert!(versions.contains("HTTP/2.0"), "{versions:?}");

    // Plaintext on the TLS port: a clean close and a log line, nothing forwarded.
    let (reply, closed) = node.raw(
        &node.client,
        &addr(SERVER_IP, port),
        "GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n",
    );
    assert!(closed, "connection closed");
    assert!(!reply.contains("200"), "{reply}");
    agent.wait_event("tls_error", |_| true);
    drop(server);
}

#[test]
fn upstream_tls_is_verified_against_the_configured_ca() {
    let node = node!("mcp_upstream_tls");
    let port = node.port(0);
    let (ca, cert, key) = make_tls(
        &node.dir,
        "back",
        &["backend.test"],
        &[SERVER_IP, "127.0.0.1"],
    );
    let (c_s, k_s) = (cert.display().to_string(), key.display().to_string());
    let server = node.mcp_server(Sdk::Py2, port, &["--certfile", &c_s, "--keyfile", &k_s]);
    let extra = format!(
        "[services.upstream.tls]\nca = {:?}\n",
        ca.display().to_string()
    );
    let cfg = node.agent_config().mcp_service("crm", port, &extra);
    let agent = node.start_agent(&cfg);
    // The caller speaks plain HTTP to the agent; the agent re-encrypts toward the server.
    let url = format!("http://{SERVER_IP}:{port}/mcp");
    let c = node.mcp_client(&node.client, Sdk::Py2, &url, &["--scenario", "basic"]);
    check_basic(c.assert_ok());
    assert!(!exchanges(&agent, 4).is_empty());

    // A server certificate from another CA is refused (the client sees a gateway error).
    let (other_ca, _, _) = make_tls(&node.dir, "other", &["backend.test"], &[SERVER_IP]);
    let mut cfg2 = node.agent_config().mcp_service(
        "crm",
        port,
        &format!(
            "[services.upstream.tls]\nca = {:?}\n",
            other_ca.display().to_string()
        ),
    );
    cfg2.instance = format!("{}b", cfg2.instance);
    cfg2.path = node.dir.join("agent2.toml");
    drop(agent);
    let agent2 = node.start_agent(&cfg2);
    let c = node.mcp_client(&node.client, Sdk::Py2, &url, &["--scenario", "basic"]);
    assert_ne!(
        c.exit_code,
        Some(0),
        "must fail against an untrusted server certificate"
    );
    agent2.wait_event("upstream_error", |_| true);
    drop(server);
}

#[test]
fn progress_notifications_arrive_spread_in_time() {
    let node = node!("mcp_progress");
    let port = node.port(0);
    let server = node.mcp_server(Sdk::Py2, port, &[]);
    let cfg = node.agent_config().mcp_service("crm", port, "");
    let agent = node.start_agent(&cfg);
    let url = format!("http://{SERVER_IP}:{port}/mcp");
    let c = node.mcp_client(
        &node.client,
        Sdk::Py2,
        &url,
        &[
            "--scenario",
            "progress",
            "--steps",
            "5",
            "--delay-ms",
            "400",
        ],
    );
    let out = c.assert_ok();
    let times: Vec<f64> = out["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["type"] == "progress")
        .filter_map(|e| e["t"].as_f64())
        .collect();
    assert_eq!(times.len(), 5, "{out}");
    for w in times.windows(2) {
        let gap = w[1] - w[0];
        assert!(
            gap > 0.25,
            "progress notifications must arrive as the server sends them (gap {gap:.3}s): {times:?}"
        );
    }
    let ex = exchanges(&agent, 3);
    let call = by_method(&ex, "tools/call");
    assert_eq!(call.len(), 1, "{ex:#?}");
    assert_eq!(call[0]["transport"], "streamable_sse", "{}", call[0]);
    assert_eq!(call[0]["outcome"], "result", "{}", call[0]);
    assert!(
        call[0]["notifications"].as_u64().unwrap_or(0) >= 5,
        "{}",
        call[0]
    );
    drop(server);
}

fn vm_rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_25_mb_result_passes_intact_with_bounded_agent_memory() {
    let node = node!("mcp_big_result");
    let port = node.port(0);
    let direct_port = node.port(1);
    let server = node.mcp_server(Sdk::Py2, port, &[]);
    let direct = node.mcp_server(Sdk::Py2, direct_port, &[]);
    let cfg = node.agent_config().mcp_service("crm", port, "");
    let agent = node.start_agent(&cfg);
    let args = ["--scenario", "big", "--mb", "25"];
    let want = node.mcp_client(
        &node.client,
        Sdk::Py2,
        &format!("http://{SERVER_IP}:{direct_port}/mcp"),
        &args,
    );
    let want = want.assert_ok()["big"].clone();
    let before = vm_rss_kb(agent.pid());
    let got = node.mcp_client(
        &node.client,
        Sdk::Py2,
        &format!("http://{SERVER_IP}:{port}/mcp"),
        &args,
    );
    let got = got.assert_ok()["big"].clone();
    assert_eq!(got["bytes"], 25u64 * 1024 * 1024, "{got}");
    assert_eq!(
        got["sha256"], want["sha256"],
        "result must pass byte for byte"
    );
    let after = vm_rss_kb(agent.pid());
    assert!(
        after < before + 20 * 1024,
        "agent memory grew from {before} kB to {after} kB for a 25 MB result (not streamed?)"
    );
    let ex = exchanges(&agent, 3);
    let call = by_method(&ex, "tools/call");
    assert!(
        call[0]["response_bytes"].as_u64().unwrap_or(0) > 25 * 1024 * 1024,
        "{}",
        call[0]
    );
    assert_eq!(call[0]["outcome"], "result", "{}", call[0]);
    drop((server, direct));
}

const GOOD: &str = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}"#;

fn post(body: &str, extra_headers: &str) -> String {
    format!(
        "POST /mcp HTTP/1.1\\r\\nHost: crm\\r\\nContent-Type: application/json\\r\\nAccept: application/json, text/event-stream\\r\\n{extra_headers}Content-Length: {}\\r\\n\\r\\n{body}",
        body.len()
    )
}

#[test]
fn hostile_input_gets_clear_errors_while_others_are_served() {
    let node = node!("mcp_hostile");
    let port = node.port(0);
    let server = node.server(&node.server, &[&format!("0.0.0.0:{port}")], "mcp-echo");
    let cfg = node.agent_config().mcp_service(
        "crm",
        port,
        "[services.limits]\nmax_body_bytes = 65536\nmax_json_depth = 32\nmax_header_bytes = 8192\n",
    );
    let agent = node.start_agent(&cfg);
    let dst = addr(SERVER_IP, port);
    let deep = format!("{}{}", "[".repeat(1000), "]".repeat(1000));
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"x","params":{{"p":"{}"}}}}"#,
        "a".repeat(70_000)
    );
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "conflicting Content-Length and Transfer-Encoding",
            "POST /mcp HTTP/1.1\\r\\nHost: crm\\r\\nContent-Type: application/json\\r\\nContent-Length: 5\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n0\\r\\n\\r\\n".to_string(),
            "400",
        ),
        (
            "obs-fold header",
            "POST /mcp HTTP/1.1\\r\\nHost: crm\\r\\nX-Fold: a\\r\\n  b\\r\\nContent-Length: 2\\r\\n\\r\\n{}".to_string(),
            "400",
        ),
        (
            "invalid chunking",
            "POST /mcp HTTP/1.1\\r\\nHost: crm\\r\\nContent-Type: application/json\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\nzz\\r\\nabc\\r\\n0\\r\\n\\r\\n".to_string(),
            "400",
        ),
        ("body over the limit", post(&big, ""), "413"),
        ("JSON nested too deep", post(&deep, ""), "400"),
        ("not JSON", post("hello", ""), "400"),
        (
            "JSON-RPC without method",
            post(r#"{"jsonrpc":"2.0","id":1}"#, ""),
            "400",
        ),
        (
            "Mcp-Method header disagrees with the body",
            post(GOOD, "MCP-Protocol-Version: 2026-07-28\\r\\nMcp-Method: tools/list\\r\\n"),
            "400",
        ),
        (
            "Mcp-Name header disagrees with the body",
            post(GOOD, "MCP-Protocol-Version: 2026-07-28\\r\\nMcp-Method: tools/call\\r\\nMcp-Name: delete_all\\r\\n"),
            "400",
        ),
        (
            "headers too large",
            format!("GET /mcp HTTP/1.1\\r\\nHost: crm\\r\\nX-Big: {}\\r\\n\\r\\n", "a".repeat(20_000)),
            "431",
        ),
        ("not MCP", "GET /index.html HTTP/1.1\\r\\nHost: crm\\r\\n\\r\\n".to_string(), "404"),
    ];
    std::thread::scope(|s| {
        // A well-behaved client keeps being served during the attack.
        let good = s.spawn(|| {
            let mut ok = 0;
            for _ in 0..20 {
                let (reply, _) = node.raw(&node.client, &dst, &post(GOOD, ""));
                if reply.starts_with("HTTP/1.1 200") && reply.contains("\"echo\"") {
                    ok += 1;
                }
            }
            ok
        });
        for (what, req, status) in &cases {
            let (reply, _) = node.raw(&node.client, &dst, req);
            assert!(
                reply.starts_with(&format!("HTTP/1.1 {status}")),
                "{what}: expected {status}, got {reply:?}"
            );
        }
        assert_eq!(
            good.join().expect("good client"),
            20,
            "every good request served"
        );
    });
    // Nothing hostile reached the server: it saw only the good requests.
    settle();
    let seen = server.proc.stdout.events("mcp_request");
    assert_eq!(
        seen.len(),
        20,
        "server saw only the 20 good requests: {seen:#?}"
    );
    assert!(!agent.events("request_refused").is_empty());
    // Malformed requests beyond the per-connection limit close the connection.
    let (reply, closed) = node.raw_repeat(&node.client, &dst, &post("x", ""), 10);
    assert!(
        closed,
        "connection closed after too many malformed requests: {reply}"
    );
}

#[test]
fn upstream_credential_replaces_the_callers_token() {
    let node = node!("mcp_upstream_credential");
    let port = node.port(0);
    let server = node.server(&node.server, &[&format!("0.0.0.0:{port}")], "mcp-echo");
    let secret = node.dir.join("api-key");
    std::fs::write(&secret, "s3cret-upstream-key\n").expect("secret");
    let loose = node.dir.join("loose-key");
    std::fs::write(&loose, "x").expect("loose");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    // A world-readable secret is refused at start, naming the key.
    let bad = node.agent_config().mcp_service(
        "crm",
        port,
        &format!(
            "[services.upstream]\nauth_header = \"X-Api-Key\"\nauth_value_file = {:?}\n",
            loose.display().to_string()
        ),
    );
    let mut bad_agent = node.spawn_agent(&bad);
    let st = bad_agent.proc.wait_exit(WAIT).expect("agent exits");
    assert!(!st.success());
    assert!(
        bad_agent
            .proc
            .stderr
            .all()
            .join("\n")
            .contains("services[0].upstream.auth_value_file"),
        "{}",
        bad_agent.proc.dump()
    );

    let cfg = node.agent_config().mcp_service(
        "crm",
        port,
        &format!(
            "[services.upstream]\nauth_header = \"X-Api-Key\"\nauth_value_file = {:?}\n",
            secret.display().to_string()
        ),
    );
    let _agent = node.start_agent(&cfg);
    let (reply, _) = node.raw(
        &node.client,
        &addr(SERVER_IP, port),
        &post(GOOD, "Authorization: Bearer caller-token\\r\\n"),
    );
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let seen = server.proc.stdout.events("mcp_request");
    assert_eq!(seen.len(), 1);
    let h = &seen[0]["headers"];
    assert_eq!(h["x-api-key"], "s3cret-upstream-key", "{h}");
    assert!(
        h.get("authorization").is_none(),
        "caller token must not reach the server: {h}"
    );
}

/// Pooled connections to the server are reused while fresh and closed once idle longer than
/// `upstream.idle_timeout_ms` (1.5 s by default; 3 s here, so that starting the next client
/// on a loaded machine does not count as idle time), so that a server's keep-alive timeout
/// (uvicorn's 5 s) never closes a connection under a request the agent is writing. The
/// server reports which connection carried each request and how long it had been idle.
#[test]
fn idle_upstream_connections_are_not_reused_past_the_idle_timeout() {
    let node = node!("mcp_upstream_idle");
    let port = node.port(0);
    let server = node.server_with(
        &node.server,
        &[&format!("0.0.0.0:{port}")],
        "mcp-echo",
        &["--keep-alive-ms", "30000"],
    );
    let cfg = node.agent_config().mcp_service(
        "crm",
        port,
        "[services.upstream]\nidle_timeout_ms = 3000\n",
    );
    let _agent = node.start_agent(&cfg);
    let call = |id: u32| {
        let body = GOOD.replace("\"id\":7", &format!("\"id\":{id}"));
        let (reply, _) = node.raw(
            &node.client,
            &addr(SERVER_IP, port),
            &post(&body, "Connection: close\\r\\n"),
        );
        assert!(reply.starts_with("HTTP/1.1 200"), "request {id}: {reply}");
        let seen = server.proc.stdout.events("mcp_request");
        let ev = seen
            .iter()
            .find(|e| e["body"]["id"] == id)
            .unwrap_or_else(|| panic!("request {id} did not reach the server: {seen:?}"))
            .clone();
        (
            ev["peer"].as_str().unwrap_or_default().to_string(),
            ev["idle_ms"].clone(),
        )
    };
    let (first, idle) = call(1);
    assert!(
        idle.is_null(),
        "the first request opens a connection: {idle}"
    );
    // Back to back: the pooled connection is reused (a new caller connection each time).
    let (second, idle) = call(2);
    assert_eq!(
        second,
        first,
        "a fresh pooled connection should be reused\n{}",
        server.proc.dump()
    );
    assert!(idle.as_u64().is_some_and(|ms| ms < 3_000), "{idle}");
    // Idle for 4.5 s, past the agent's 3 s: a new connection.
    std::thread::sleep(Duration::from_millis(4_500));
    let (third, idle) = call(3);
    assert_ne!(
        third,
        second,
        "a connection idle past upstream.idle_timeout_ms was reused (idle {idle} ms)\n{}",
        server.proc.dump()
    );
    assert!(idle.is_null(), "{idle}");
    // The old connection was closed by the agent, not left open for the server to time out.
    let closed = server
        .proc
        .stdout
        .wait_event("closed", WAIT, |e| e["peer"] == first.as_str());
    assert!(closed.is_ok(), "{}", server.proc.dump());
    assert!(
        server.proc.stdout.events("keep_alive_expired").is_empty(),
        "{}",
        server.proc.dump()
    );
}

/// When the server closes a pooled connection without answering the request just written to
/// it (its keep-alive ending as the request arrived), a request without side effects is sent
/// again on another connection and the caller gets its answer; a `tools/call` is not (the tool
/// may have run): the caller gets a 502 and the server saw it once. The server here drops
/// every request that is not the first on its connection.
#[test]
fn requests_without_side_effects_are_retried_when_the_server_closes_a_pooled_connection() {
    let node = node!("mcp_upstream_retry");
    let port = node.port(0);
    let server = node.server_with(
        &node.server,
        &[&format!("0.0.0.0:{port}")],
        "mcp-echo",
        &["--drop-reused"],
    );
    let cfg = node.agent_config().mcp_service("crm", port, "");
    let agent = node.start_agent(&cfg);
    let send = |body: &str| {
        node.raw(
            &node.client,
            &addr(SERVER_IP, port),
            &post(body, "Connection: close\\r\\n"),
        )
        .0
    };
    let seen = |id: u32| {
        server
            .proc
            .stdout
            .events("mcp_request")
            .iter()
            .filter(|e| e["body"]["id"] == id)
            .count()
    };
    let list = |id: u32| format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/list"}}"#);
    // Opens connection A.
    let reply = send(&list(1));
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    // Goes out on A, which the server drops: sent again, on B.
    let reply = send(&list(2));
    assert!(
        reply.starts_with("HTTP/1.1 200") && reply.contains("tools/list"),
        "{reply}\n{}",
        server.proc.dump()
    );
    assert_eq!(seen(2), 2, "{}", server.proc.dump());
    let retry = agent.wait_event("upstream_retry", |_| true);
    assert_eq!(retry["side"], "upstream", "{retry}");
    // The exchange record says the server was sent it twice (it may have read it twice).
    let ex = agent.wait_event("exchange", |e| e["jsonrpc_id"] == "2");
    assert_eq!(ex["upstream_attempts"], 2, "{ex}");
    assert_eq!(ex["outcome"], "result", "{ex}");
    let ex = agent.wait_event("exchange", |e| e["jsonrpc_id"] == "1");
    assert_eq!(ex["upstream_attempts"], 1, "{ex}");
    // And so does the audit store's record (written only when above 1).
    let db = cfg.state_dir.join("audit.db");
    let stored = |id: u32| {
        let sql = format!(
            "SELECT coalesce(json_extract(b.body, '$.data.upstream_attempts'), 'absent') FROM records r JOIN bodies b ON b.seq = r.seq WHERE r.kind = 'exchange' AND json_extract(b.body, '$.data.jsonrpc_id') = '{id}'"
        );
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let out = std::process::Command::new("sqlite3")
                .arg(&db)
                .arg(&sql)
                .output()
                .expect("sqlite3");
            let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if !v.is_empty() || std::time::Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert_eq!(stored(2), "2");
    assert_eq!(stored(1), "absent");
    // A tool call goes out on B, which the server drops: not sent again.
    let call = GOOD.replace("\"id\":7", "\"id\":3");
    let reply = send(&call);
    assert!(reply.starts_with("HTTP/1.1 502"), "{reply}");
    assert_eq!(
        seen(3),
        1,
        "a tool call was sent twice: {}",
        server.proc.dump()
    );
    let ex = agent.wait_event("exchange", |e| e["jsonrpc_id"] == "3");
    assert_eq!(ex["outcome"], "upstream_error", "{ex}");
    assert_eq!(
        server.proc.stdout.events("dropped").len(),
        2,
        "{}",
        server.proc.dump()
    );
}

#[test]
fn batches_and_notifications_are_separate_exchanges() {
    let node = node!("mcp_batch");
    let port = node.port(0);
    let _server = node.server(&node.server, &[&format!("0.0.0.0:{port}")], "mcp-echo");
    let cfg = node.agent_config().mcp_service("crm", port, "");
    let agent = node.start_agent(&cfg);
    let batch = r#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1}},{"jsonrpc":"2.0","id":"b","method":"tools/call","params":{"name":"echo","arguments":{}}}]"#;
    let (reply, _) = node.raw(&node.client, &addr(SERVER_IP, port), &post(batch, ""));
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let ex = exchanges(&agent, 3);
    assert_eq!(ex.len(), 3, "{ex:#?}");
    let list = by_method(&ex, "tools/list");
    assert_eq!(list[0]["jsonrpc_id"], "1");
    assert_eq!(list[0]["outcome"], "result");
    let call = by_method(&ex, "tools/call");
    assert_eq!(call[0]["jsonrpc_id"], "\"b\"");
    assert_eq!(call[0]["outcome"], "result");
    let n = by_method(&ex, "notifications/progress");
    assert_eq!(n[0]["outcome"], "notification");
}

#[test]
fn http2_toward_a_tls_server() {
    let node = node!("mcp_upstream_h2");
    let port = node.port(0);
    let (ca, cert, key) = make_tls(&node.dir, "h2", &["backend.test"], &[SERVER_IP]);
    let (c_s, k_s) = (cert.display().to_string(), key.display().to_string());
    let server = node.mcp_server(
        Sdk::Py2,
        port,
        &[
            "--http-server",
            "hypercorn",
            "--certfile",
            &c_s,
            "--keyfile",
            &k_s,
        ],
    );
    let extra = format!(
        "[services.upstream]\nhttp2 = true\n[services.upstream.tls]\nca = {:?}\n",
        ca.display().to_string()
    );
    let cfg = node.agent_config().mcp_service("crm", port, &extra);
    let agent = node.start_agent(&cfg);
    let url = format!("http://{SERVER_IP}:{port}/mcp");
    let c = node.mcp_client(&node.client, Sdk::Py2, &url, &["--scenario", "basic"]);
    check_basic(c.assert_ok());
    let ex = exchanges(&agent, 6);
    assert!(
        by_method(&ex, "tools/call")
            .iter()
            .all(|e| e["outcome"] == "result"),
        "{ex:#?}"
    );
    drop(server);
}

#[test]
fn non_mcp_traffic_is_refused_unless_the_service_forwards_it() {
    let node = node!("mcp_non_mcp");
    let (p1, p2) = (node.port(0), node.port(1));
    let s1 = node.server(&node.server, &[&format!("0.0.0.0:{p1}")], "mcp-echo");
    let s2 = node.server(&node.server, &[&format!("0.0.0.0:{p2}")], "mcp-echo");
    let cfg = node
        .agent_config()
        .mcp_service("strict", p1, "")
        .mcp_service("lenient", p2, "non_mcp = \"forward\"\n");
    let _agent = node.start_agent(&cfg);
    let get = "GET /index.html HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n";
    let (reply, _) = node.raw(&node.client, &addr(SERVER_IP, p1), get);
    assert!(reply.starts_with("HTTP/1.1 404"), "{reply}");
    assert!(reply.contains("not an MCP request"), "{reply}");
    let (reply, _) = node.raw(&node.client, &addr(SERVER_IP, p2), get);
    // Forwarded: the server's own answer comes back.
    assert!(
        reply.contains("mcp-echo only answers JSON-RPC POSTs"),
        "{reply}"
    );
    settle();
    assert!(s1.proc.stdout.events("mcp_request").is_empty());
    assert_eq!(s2.proc.stdout.events("mcp_request").len(), 1);
}

/// Every SDK and transport through TLS termination, over HTTP/1.1 and, where the SDK's client
/// supports it, HTTP/2.
#[test]
fn every_sdk_and_transport_through_tls() {
    let node = node!("mcp_tls_matrix");
    let cases: &[(Sdk, &[&str], &str, bool)] = &[
        (Sdk::Py2, &[], "/mcp", true),
        (Sdk::Py2, &["--json-response"], "/mcp", true),
        (Sdk::Py1, &[], "/mcp", true),
        (Sdk::Py1, &["--transport", "sse"], "/sse", false),
        (Sdk::Node, &[], "/mcp", true),
        (Sdk::Node, &["--transport", "sse"], "/sse", false),
    ];
    let (ca, cert, key) = make_tls(&node.dir, "matrix", &["crm.test"], &[SERVER_IP]);
    let extra = format!(
        "[services.tls]\ncerts = [{{ cert = {:?}, key = {:?} }}]\n",
        cert.display().to_string(),
        key.display().to_string()
    );
    let mut cfg = node.agent_config();
    let mut servers = Vec::new();
    for (i, (sdk, args, _, _)) in cases.iter().enumerate() {
        let port = node.port(i as u16);
        servers.push(node.mcp_server(*sdk, port, args));
        cfg = cfg.mcp_service(&format!("svc{i}"), port, &extra);
    }
    let agent = node.start_agent(&cfg);
    let ca_s = ca.display().to_string();
    for (i, (sdk, args, path, h2)) in cases.iter().enumerate() {
        let port = node.port(i as u16);
        let url = format!("https://{SERVER_IP}:{port}{path}");
        let sse = args.contains(&"sse");
        for http2 in [false, true] {
            if http2 && !h2 {
                continue;
            }
            let mut cargs = vec!["--scenario", "basic", "--cacert", ca_s.as_str()];
            if sse {
                cargs.extend(["--transport", "sse"]);
            }
            if http2 {
                cargs.push("--http2");
            }
            let c = node.mcp_client(&node.client, *sdk, &url, &cargs);
            let out = c.assert_ok();
            check_basic(out);
            let ex = agent.events("exchange");
            let svc_calls: Vec<&Value> = ex
                .iter()
                .filter(|e| e["service"] == format!("svc{i}") && e["method"] == "tools/call")
                .collect();
            assert!(
                svc_calls.len() >= 2,
                "{sdk:?} {args:?} http2={http2}: {svc_calls:#?}"
            );
            assert!(
                svc_calls.iter().all(|e| e["outcome"] == "result"),
                "{sdk:?} {args:?} http2={http2}: {svc_calls:#?}"
            );
            if http2 {
                assert!(
                    svc_calls.iter().any(|e| e["http_version"] == "HTTP/2.0"),
                    "{sdk:?}: {svc_calls:#?}"
                );
            }
            if sse {
                assert!(
                    svc_calls.iter().all(|e| e["transport"] == "legacy_sse"),
                    "{svc_calls:#?}"
                );
            }
        }
    }
    drop(servers);
}

#[test]
fn replaced_certificates_are_served_without_a_restart() {
    let node = node!("mcp_cert_reload");
    let port = node.port(0);
    let (ca_a, cert_a, key_a) = make_tls(&node.dir, "a", &["crm.test"], &[SERVER_IP]);
    let (ca_b, cert_b, key_b) = make_tls(&node.dir, "b", &["crm.test"], &[SERVER_IP]);
    let live = node.dir.join("live");
    std::fs::create_dir_all(&live).expect("dir");
    let (cert, key) = (live.join("cert.pem"), live.join("key.pem"));
    std::fs::copy(&cert_a, &cert).expect("cert");
    std::fs::copy(&key_a, &key).expect("key");
    let server = node.mcp_server(Sdk::Py2, port, &[]);
    let extra = format!(
        "[services.tls]\ncerts = [{{ cert = {:?}, key = {:?} }}]\n",
        cert.display().to_string(),
        key.display().to_string()
    );
    let mut cfg = node.agent_config().mcp_service("crm", port, &extra);
    cfg.extra_agent_toml = "cert_reload_ms = 300\n".into();
    let agent = node.start_agent(&cfg);
    let url = format!("https://{SERVER_IP}:{port}/mcp");
    let call = |ca: &std::path::Path| {
        let ca = ca.display().to_string();
        node.mcp_client(
            &node.client,
            Sdk::Py2,
            &url,
            &["--scenario", "basic", "--cacert", &ca],
        )
    };
    call(&ca_a).assert_ok();
    assert_ne!(call(&ca_b).exit_code, Some(0), "CA b does not trust cert a");

    // Replace the files (new key first, then the certificate, as an operator would).
    let tmp = live.join("new.pem");
    std::fs::copy(&key_b, &tmp).expect("copy");
    std::fs::rename(&tmp, &key).expect("rename key");
    std::fs::copy(&cert_b, &tmp).expect("copy");
    std::fs::rename(&tmp, &cert).expect("rename cert");
    agent.wait_event("cert_reloaded", |_| true);
    call(&ca_b).assert_ok();
    assert_ne!(
        call(&ca_a).exit_code,
        Some(0),
        "the old certificate is no longer served"
    );
    drop(server);
}

/// Personal data in results, resources, prompts and notifications reaches the client masked,
/// over JSON and SSE responses, and the exchange records carry counts and pseudonyms only.
#[test]
fn personal_data_reaches_the_client_masked() {
    let node = node!("mcp_redaction");
    let (p1, p2) = (node.port(0), node.port(1));
    let s1 = node.mcp_server(Sdk::Py2, p1, &[]);
    let s2 = node.mcp_server(Sdk::Py1, p2, &["--transport", "sse"]);
    let cfg = node
        .agent_config()
        .mcp_service("crm", p1, "[services.redact]\n")
        .mcp_service(
            "legacy",
            p2,
            "[services.redact]\ndefault_mask = \"remove\"\n",
        );
    let agent = node.start_agent(&cfg);
    let url = format!("http://{SERVER_IP}:{p1}/mcp");
    let c = node.mcp_client(
        &node.client,
        Sdk::Py2,
        &url,
        &[
            "--scenario",
            "call",
            "--tool",
            "customer_lookup",
            "--args",
            "{\"id\":\"42\"}",
        ],
    );
    let out = c.assert_ok().to_string();
    for pii in [
        "jane.doe@example.com",
        "GB82WEST12345698765432",
        "7946 0958",
        "447700900123",
    ] {
        assert!(!out.contains(pii), "{pii} leaked: {out}");
    }
    assert!(out.contains("[EMAIL:"), "pseudonymized email: {out}");
    let e = agent.wait_event("exchange", |e| e["mcp_name"] == "customer_lookup");
    let masked: Value =
        serde_json::from_str(e["masked"].as_str().unwrap_or("{}")).unwrap_or_default();
    assert!(masked["EMAIL"].as_u64().unwrap_or(0) >= 1, "{e}");
    assert!(
        e["pseudonyms"].as_str().unwrap_or("").contains("EMAIL:"),
        "{e}"
    );
    assert!(
        !e.to_string().contains("jane.doe"),
        "no value in the record: {e}"
    );

    // The same value gets the same pseudonym (tickets can still be correlated).
    let again = node.mcp_client(
        &node.client,
        Sdk::Py2,
        &url,
        &[
            "--scenario",
            "call",
            "--tool",
            "customer_lookup",
            "--args",
            "{\"id\":\"42\"}",
        ],
    );
    let again = again.assert_ok().to_string();
    let pseud = |s: &str| -> Vec<String> {
        s.match_indices("[EMAIL:")
            .map(|(i, _)| s[i..(i + 16).min(s.len())].to_string())
            .collect()
    };
    assert_eq!(pseud(&out), pseud(&again));

    // Legacy SSE transport, remove mode: basic scenario (resources, prompts) masked too.
    let c = node.mcp_client(
        &node.client,
        Sdk::Py1,
        &format!("http://{SERVER_IP}:{p2}/sse"),
        &["--transport", "sse", "--scenario", "basic"],
    );
    let out = c.assert_ok().to_string();
    assert!(!out.contains("jane.doe@example.com"), "{out}");
    assert!(out.contains("[EMAIL]"), "{out}");
    drop((s1, s2));
}
