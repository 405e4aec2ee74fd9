//! Identity and authorization with a real OpenID provider (npm oidc-provider, OpenID Certified)
//! and the official MCP SDK clients: the 401 + RFC 9728 discovery flow, real tokens from the
//! client_credentials and authorization_code + PKCE grants, roles per call, argument
//! constraints, filtered lists, key rotation and provider outage, a catalogue of bad tokens,
//! policy reload and the policy CLI.
use std::time::Duration;

use interceptor_tests::*;
use serde_json::{Value, json};

struct Fixture {
    node: Node,
    idp: Oidc,
    cfg: AgentConfig,
    resource: String,
    port: u16,
}

fn policy_file() -> String {
    workspace_root()
        .join("policies/crm.policy.toml")
        .display()
        .to_string()
}

/// Provider on port(9), an MCP server (`backend`) on port(0) protected with auth.
fn fixture(name: &str, policy: &str, idp_port_slot: u16) -> Option<Fixture> {
    let node = Node::new(name)?;
    let keys = node.oidc_keys("k1", None);
    let idp = node.oidc(node.port(idp_port_slot), &keys, None, &[]);
    let port = node.port(0);
    let resource = format!("http://{SERVER_IP}:{port}/mcp");
    let mut cfg = node.agent_config().mcp_service(
        "crm",
        port,
        &format!("[services.auth]\nresource = {resource:?}\n"),
    );
    cfg.extra_agent_toml = format!(
        "\n[auth]\npolicy = [{policy:?}]\n[[auth.issuers]]\nissuer = {:?}\naudiences = [{resource:?}]\nca_file = {:?}\n",
        idp.issuer,
        idp.ca.display().to_string()
    );
    Some(Fixture {
        node,
        idp,
        cfg,
        resource,
        port,
    })
}

fn bearer(t: &str) -> String {
    format!("Authorization: Bearer {t}")
}

fn user_token(f: &Fixture, user: &str) -> String {
    f.node.oidc_token(
        &f.idp,
        &[
            "--grant",
            "authorization_code",
            "--client-id",
            "mcp-cli",
            "--user",
            user,
        ],
        &f.resource,
    )
}

fn batch_token(f: &Fixture) -> String {
    f.node.oidc_token(
        &f.idp,
        &[
            "--grant",
            "client_credentials",
            "--client-id",
            "crm-batch",
            "--client-secret",
            "crm-batch-secret",
        ],
        &f.resource,
    )
}

fn call(f: &Fixture, token: &str, tool: &str, args: &Value) -> PeerClient {
    let url = format!("http://{SERVER_IP}:{}/mcp", f.port);
    let h = bearer(token);
    let a = args.to_string();
    f.node.mcp_client(
        &f.node.client,
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
}

fn last_exchange(agent: &Agent, method: &str, pred: impl Fn(&Value) -> bool) -> Value {
    agent.wait_event("exchange", |e| e["method"] == method && pred(e))
}

#[test]
fn missing_token_gets_401_and_metadata_leads_to_the_authorization_server() {
    let Some(f) = fixture("auth_discovery", &policy_file(), 9) else {
        return;
    };
    let server = f.node.mcp_server(Sdk::Py2, f.port, &[]);
    let agent = f.node.start_agent(&f.cfg);
    let url = format!("http://{SERVER_IP}:{}/mcp", f.port);
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
    let (status, head, _) = f.node.post_jsonrpc(&url, body, &[]);
    assert_eq!(status, 401, "{head}");
    let meta_url = format!(
        "http://{SERVER_IP}:{}/.well-known/oauth-protected-resource/mcp",
        f.port
    );
    assert!(
        head.to_ascii_lowercase().contains(&format!(
            "www-authenticate: bearer resource_metadata=\"{meta_url}\""
        )),
        "{head}"
    );
    // RFC 9728: the metadata names the authorization server...
    let (status, _, meta) = f.node.curl(&[&meta_url]);
    assert_eq!(status, 200, "{meta}");
    let meta: Value = serde_json::from_str(&meta).expect("metadata JSON");
    assert_eq!(meta["resource"], f.resource.as_str(), "{meta}");
    assert_eq!(
        meta["authorization_servers"][0],
        f.idp.issuer.as_str(),
        "{meta}"
    );
    // ...whose discovery document leads to its token endpoint.
    let ca = f.idp.ca.display().to_string();
    let (status, _, disc) = f.node.curl(&[
        "--cacert",
        &ca,
        &format!("{}/.well-known/openid-configuration", f.idp.issuer),
    ]);
    assert_eq!(status, 200);
    let disc: Value = serde_json::from_str(&disc).expect("discovery");
    assert!(disc["token_endpoint"].is_string(), "{disc}");

    // A service account (client_credentials) then calls through with its token.
    let token = batch_token(&f);
    let c = call(&f, &token, "export_customers", &json!({"limit": 10}));
    c.assert_ok();
    let e = last_exchange(&agent, "tools/call", |e| e["outcome"] == "result");
    assert_eq!(e["subject"], "crm-batch", "{e}");
    assert_eq!(e["client_id"], "crm-batch", "{e}");
    assert_eq!(e["role"], "batch", "{e}");
    assert_eq!(e["lawful_basis"], "legitimate_interests", "{e}");
    assert!(e["purpose"].is_string(), "{e}");
    assert!(e["policy_version"].as_str().unwrap_or("").len() >= 8, "{e}");
    // The unauthenticated attempt was recorded as a denial.
    let denied = agent.wait_event("exchange", |e| e["outcome"] == "denied");
    assert_eq!(denied["http_status"], 401, "{denied}");
    drop(server);
}

#[test]
fn roles_decide_each_call_and_lists_are_filtered() {
    let Some(f) = fixture("auth_roles", &policy_file(), 9) else {
        return;
    };
    let server = f.node.mcp_server(Sdk::Py2, f.port, &[]);
    let agent = f.node.start_agent(&f.cfg);
    let alice = user_token(&f, "alice"); // support
    let bob = user_token(&f, "bob"); // analytics
    let mallory = user_token(&f, "mallory"); // no groups

    call(&f, &alice, "customer_lookup", &json!({"id": "42"})).assert_ok();
    let e = last_exchange(&agent, "tools/call", |e| e["subject"] == "alice");
    assert_eq!(e["outcome"], "result", "{e}");
    assert_eq!(e["role"], "support", "{e}");
    assert_eq!(e["lawful_basis"], "contract", "{e}");

    let denied = call(&f, &alice, "export_customers", &json!({"limit": 1}));
    assert_ne!(
        denied.exit_code,
        Some(0),
        "support may not export: {}",
        denied.json
    );
    let e = last_exchange(&agent, "tools/call", |e| {
        e["subject"] == "alice" && e["outcome"] == "denied"
    });
    assert_eq!(e["mcp_name"], "export_customers", "{e}");
    assert_eq!(e["http_status"], 403, "{e}");
    assert!(e["rule"].is_string(), "{e}");

    // Argument constraint: analytics may export at most 100 records.
    call(&f, &bob, "export_customers", &json!({"limit": 50})).assert_ok();
    let over = call(&f, &bob, "export_customers", &json!({"limit": 5000}));
    assert_ne!(over.exit_code, Some(0));
    let e = last_exchange(&agent, "tools/call", |e| {
        e["subject"] == "bob" && e["outcome"] == "denied"
    });
    assert!(
        e["rule"].as_str().unwrap_or("").contains("constraint")
            || e["rule"].as_str().unwrap_or("").contains("limit"),
        "the rule names the constraint: {e}"
    );

    // No role: nothing at all.
    let url = format!("http://{SERVER_IP}:{}/mcp", f.port);
    let h = bearer(&mallory);
    let c = f.node.mcp_client(
        &f.node.client,
        Sdk::Py2,
        &url,
        &["--scenario", "basic", "--header", &h],
    );
    assert_ne!(c.exit_code, Some(0), "mallory holds no role: {}", c.json);

    // Lists are filtered to what the caller may use.
    let h = bearer(&alice);
    let c = f.node.mcp_client(
        &f.node.client,
        Sdk::Py2,
        &url,
        &["--scenario", "lists", "--header", &h],
    );
    let out = c.assert_ok();
    let tools: Vec<&str> = out["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(tools.contains(&"customer_lookup"), "{tools:?}");
    assert!(!tools.contains(&"export_customers"), "{tools:?}");
    assert!(!tools.contains(&"big_result"), "{tools:?}");
    let prompts: Vec<&str> = out["prompts"]
        .as_array()
        .expect("prompts")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(prompts, vec!["summarize_customer"], "{out}");
    let e = last_exchange(&agent, "tools/list", |e| e["subject"] == "alice");
    assert_eq!(e["outcome"], "result", "{e}");
    drop(server);
}

/// Masking is part of the decision: the support role's purpose releases phone numbers, the
/// analyst role's removes e-mail addresses, the admin sees the service's own masking; each
/// record says what was released to whom.
#[test]
fn each_role_sees_what_its_purpose_allows() {
    let Some(mut f) = fixture("auth_masking", &policy_file(), 9) else {
        return;
    };
    for s in &mut f.cfg.services {
        s.extra.push_str("[services.redact]\n");
    }
    // (The server also names a caller in a header of every answer: `--debug-routes`.)
    let server = f.node.mcp_server(Sdk::Py2, f.port, &["--debug-routes"]);
    let agent = f.node.start_agent(&f.cfg);
    let alice = user_token(&f, "alice"); // support: release PHONE
    let bob = user_token(&f, "bob"); // analytics: EMAIL removed
    let carol = user_token(&f, "carol"); // admin: the service's masking

    let a = call(&f, &alice, "customer_lookup", &json!({"id": "42"}));
    let a = a.assert_ok().to_string();
    assert!(
        a.contains("+44 20 7946 0958"),
        "support sees the phone: {a}"
    );
    assert!(!a.contains("jane.doe@example.com"), "{a}");
    assert!(a.contains("[EMAIL:"), "{a}");
    let e = last_exchange(&agent, "tools/call", |e| e["subject"] == "alice");
    assert_eq!(e["role"], "support", "{e}");
    assert_eq!(e["released"], "PHONE", "{e}");
    // Released values are still evidence (counted, pseudonymised), never in a record.
    assert!(!e.to_string().contains("7946 0958"), "{e}");
    assert!(
        e["response_excerpt"].is_null(),
        "no excerpt of a released answer: {e}"
    );

    let c = call(&f, &carol, "customer_lookup", &json!({"id": "42"}));
    let c = c.assert_ok().to_string();
    assert!(!c.contains("7946 0958"), "admin does not: {c}");
    assert!(c.contains("[PHONE:") && c.contains("[EMAIL:"), "{c}");
    let e = last_exchange(&agent, "tools/call", |e| e["subject"] == "carol");
    assert_eq!(e["released"], "", "{e}");
    assert!(
        e["response_excerpt"]
            .as_str()
            .unwrap_or("")
            .contains("[EMAIL:"),
        "{e}"
    );

    let b = call(&f, &bob, "export_customers", &json!({"limit": 3}));
    let b = b.assert_ok().to_string();
    assert!(
        b.contains("[EMAIL]") && !b.contains("[EMAIL:"),
        "analysts get no pseudonyms: {b}"
    );
    assert!(!b.contains("@example.com"), "{b}");

    // Response heads are redacted for the caller's role, also those of the list results
    // filtered by policy (read whole, sent on another way).
    let url = format!("http://{SERVER_IP}:{}/mcp", f.port);
    let auth = format!("Authorization: Bearer {carol}");
    let (status, head, _) = f.node.post_jsonrpc(&url, INITIALIZE, &[&auth]);
    assert_eq!(status, 200, "{head}");
    let sess = format!("mcp-session-id: {}", session_id(&head).expect("session id"));
    let (status, head, _) = f.node.post_jsonrpc(
        &url,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        &[&auth, &sess],
    );
    assert_eq!(status, 202, "{head}");
    let (status, head, list) = f.node.post_jsonrpc(
        &url,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
        &[&auth, &sess],
    );
    assert_eq!(status, 200, "{head}\n{list}");
    assert!(list.contains("customer_lookup"), "{list}");
    assert!(!head.contains("jane.doe@example.com"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("x-debug-caller: [email:"),
        "{head}"
    );
    drop(server);
}

/// `export_customers` (3 records) with `token` through the Python SDK 1.x client on the legacy
/// HTTP+SSE transport.
fn legacy_export(f: &Fixture, token: &str) -> PeerClient {
    let url = format!("http://{SERVER_IP}:{}/sse", f.port);
    f.node.mcp_client(
        &f.node.client,
        Sdk::Py1,
        &url,
        &[
            "--transport",
            "sse",
            "--scenario",
            "call",
            "--tool",
            "export_customers",
            "--args",
            r#"{"limit": 3}"#,
            "--header",
            &bearer(token),
        ],
    )
}

/// The legacy HTTP+SSE transport answers every call on the caller's GET /sse stream: that
/// stream is masked by the caller's grants (as a batch is), not by the service's defaults.
#[test]
fn a_legacy_sse_caller_gets_the_masking_of_its_grants() {
    let Some(mut f) = fixture("auth_legacy_mask", &policy_file(), 9) else {
        return;
    };
    for s in &mut f.cfg.services {
        s.extra.push_str("[services.redact]\n");
    }
    let server = f.node.mcp_server(Sdk::Py1, f.port, &["--transport", "sse"]);
    let agent = f.node.start_agent(&f.cfg);
    let call = |token: &str| legacy_export(&f, token);
    // Analysts' grant removes e-mail addresses (no pseudonyms to tell customers apart).
    let bob = user_token(&f, "bob");
    let b = call(&bob).assert_ok().to_string();
    assert!(
        b.contains("[EMAIL]") && !b.contains("[EMAIL:") && !b.contains("@example.com"),
        "{b}"
    );
    let e = last_exchange(&agent, "tools/call", |e| e["subject"] == "bob");
    assert_eq!(e["transport"], "legacy_sse", "{e}");
    // An admin's grant keeps the service's masking: pseudonyms.
    let carol = user_token(&f, "carol");
    let c = call(&carol).assert_ok().to_string();
    assert!(c.contains("[EMAIL:") && !c.contains("@example.com"), "{c}");
    drop(server);
}

/// On the legacy transport the answer comes on the SSE stream, masked by every grant the
/// caller holds: a grant that releases e-mail addresses for the call does not release them
/// there when another grant of the caller does not, and the record says what the caller got.
#[test]
fn a_legacy_call_records_what_its_stream_released() {
    let Some(f) = fixture("auth_legacy_released", "__POLICY__", 9) else {
        return;
    };
    let policy = f.node.dir.join("two-grants.policy.toml");
    std::fs::write(
        &policy,
        "[[roles]]\nname = \"support\"\ngroups = [\"support\"]\n\
         [[roles.grants]]\nservice = \"crm\"\nmethods = [\"tools/call\"]\ntools = [\"export_customers\"]\n\
         purpose = \"Testing\"\nlawful_basis = \"contract\"\nrelease = [\"EMAIL\"]\n\
         [[roles.grants]]\nservice = \"crm\"\nmethods = [\"tools/list\"]\n\
         purpose = \"Testing\"\nlawful_basis = \"contract\"\n",
    )
    .expect("policy");
    let mut cfg = f.cfg.clone();
    cfg.extra_agent_toml = cfg.extra_agent_toml.replace(
        "\"__POLICY__\"",
        &format!("{:?}", policy.display().to_string()),
    );
    for s in &mut cfg.services {
        s.extra.push_str("[services.redact]\n");
    }
    let server = f.node.mcp_server(Sdk::Py1, f.port, &["--transport", "sse"]);
    let agent = f.node.start_agent(&cfg);
    let alice = user_token(&f, "alice");
    let out = legacy_export(&f, &alice).assert_ok().to_string();
    assert!(
        out.contains("[EMAIL:") && !out.contains("@example.com"),
        "the stream masks what not every grant releases: {out}"
    );
    let e = last_exchange(&agent, "tools/call", |e| e["subject"] == "alice");
    assert_eq!(e["transport"], "legacy_sse", "{e}");
    assert_eq!(e["role"], "support", "{e}");
    assert_eq!(
        e["released"].as_str().unwrap_or_default(),
        "",
        "the record says released only what the stream showed: {e}"
    );
    drop(server);
}

/// Data minimisation: a grant with `redact_arguments` has the server get the call's
/// arguments masked as the grant masks answers; another grant's calls reach it as sent.
#[test]
fn a_grant_can_have_the_server_get_the_arguments_redacted() {
    let Some(f) = fixture("auth_redact_args", "__POLICY__", 9) else {
        return;
    };
    let policy = f.node.dir.join("minimise.policy.toml");
    let grant = |group: &str, extra: &str| {
        format!(
            "[[roles]]\nname = \"{group}\"\ngroups = [\"{group}\"]\n[[roles.grants]]\nservice = \"crm\"\nmethods = [\"tools/call\"]\ntools = [\"echo\"]\npurpose = \"Testing\"\nlawful_basis = \"contract\"\n{extra}\n"
        )
    };
    std::fs::write(
        &policy,
        grant("support", "redact_arguments = true") + &grant("crm-admins", ""),
    )
    .expect("policy");
    let mut cfg = f.cfg.clone();
    cfg.extra_agent_toml = cfg.extra_agent_toml.replace(
        "\"__POLICY__\"",
        &format!("{:?}", policy.display().to_string()),
    );
    let server = f.node.mcp_server(Sdk::Py2, f.port, &["--log-calls"]);
    let agent = f.node.start_agent(&cfg);
    let text = "call back jane.doe@example.com about IBAN GB82 WEST 1234 5698 7654 32";

    // Support (redact_arguments): the server sees the arguments masked.
    let alice = user_token(&f, "alice");
    let out = call(&f, &alice, "echo", &json!({ "text": text }));
    out.assert_ok();
    let seen = server
        .proc
        .stdout
        .wait_event("tool_call", WAIT, |e| e["name"] == "echo")
        .expect("the call reached the server");
    let got = seen["arguments"]["text"].as_str().unwrap_or("").to_string();
    assert!(
        got.starts_with("call back [EMAIL:") && got.contains("[IBAN:") && !got.contains("jane"),
        "{seen}"
    );
    let e = last_exchange(&agent, "tools/call", |e| e["subject"] == "alice");
    assert_eq!(e["arguments_redacted"], true, "{e}");

    // An admin's grant does not say so: the server gets what was sent.
    let carol = user_token(&f, "carol");
    call(&f, &carol, "echo", &json!({ "text": text })).assert_ok();
    let seen = server
        .proc
        .stdout
        .wait_event("tool_call", WAIT, |e| {
            e["arguments"]["text"].as_str() == Some(text)
        })
        .expect("the admin's call reached the server as sent");
    assert_eq!(seen["name"], "echo");
    let e = last_exchange(&agent, "tools/call", |e| e["subject"] == "carol");
    assert!(
        e.get("arguments_redacted").is_none_or(|v| v == false),
        "{e}"
    );
    drop(server);
}

#[test]
fn bad_tokens_are_refused_with_401_and_recorded() {
    let Some(f) = fixture("auth_bad_tokens", &policy_file(), 9) else {
        return;
    };
    let _server = f.node.server(
        &f.node.server,
        &[&format!("0.0.0.0:{}", f.port)],
        "mcp-echo",
    );
    let agent = f.node.start_agent(&f.cfg);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let base =
        json!({"sub": "alice", "aud": f.resource, "client_id": "mcp-cli", "groups": ["support"]});
    let mint = |claims: Value, extra: Value| {
        let mut body = json!({ "claims": claims });
        if let Value::Object(m) = extra {
            for (k, v) in m {
                body[k] = v;
            }
        }
        f.node.oidc_mint(&f.idp, &body)
    };
    let with = |k: &str, v: Value| {
        let mut c = base.clone();
        c[k] = v;
        c
    };
    // A valid minted token works (the catalogue below differs from it in one way each).
    let good = mint(base.clone(), json!({}));
    let body =
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{}}}"#;
    let ok_req = format!(
        "POST /mcp HTTP/1.1\\r\\nHost: crm\\r\\nContent-Type: application/json\\r\\n{}\\r\\nContent-Length: {}\\r\\n\\r\\n{body}",
        bearer(&good),
        body.len()
    );
    let (reply, _) = f
        .node
        .raw(&f.node.client, &addr(SERVER_IP, f.port), &ok_req);
    assert!(
        reply.starts_with("HTTP/1.1 200"),
        "a valid token is accepted: {reply}"
    );

    let tampered = {
        let parts: Vec<&str> = good.split('.').collect();
        let mut payload: Vec<char> = parts[1].chars().collect();
        let i = payload.len() / 2;
        payload[i] = if payload[i] == 'A' { 'B' } else { 'A' };
        format!(
            "{}.{}.{}",
            parts[0],
            payload.iter().collect::<String>(),
            parts[2]
        )
    };
    let other_resource = f.node.oidc_token(
        &f.idp,
        &[
            "--grant",
            "client_credentials",
            "--client-id",
            "crm-batch",
            "--client-secret",
            "crm-batch-secret",
        ],
        "http://other.example/mcp",
    );
    // Signed with a throw-away key under the provider's own kid: the signature cannot verify.
    let foreign_idp_token = mint(base.clone(), json!({"foreign_key": true}));
    let catalogue: Vec<(&str, String)> = vec![
        ("expired", mint(with("exp", json!(now - 3600)), json!({}))),
        (
            "not yet valid",
            mint(with("nbf", json!(now + 3600)), json!({})),
        ),
        (
            "wrong audience",
            mint(with("aud", json!("http://10.213.1.1:1/other")), json!({})),
        ),
        (
            "wrong issuer",
            mint(with("iss", json!("https://evil.example")), json!({})),
        ),
        ("foreign signing key", foreign_idp_token),
        (
            "alg none",
            mint(base.clone(), json!({"header": {"alg": "none"}})),
        ),
        (
            "HS256 with the public key",
            mint(base.clone(), json!({"hs256_with_public_key": true})),
        ),
        ("tampered payload", tampered),
        (
            "unknown kid",
            mint(base.clone(), json!({"header": {"kid": "no-such-key"}})),
        ),
        ("token for another resource", other_resource),
        ("malformed", "not.a.jwt".to_string()),
        (
            "wrong typ",
            mint(base.clone(), json!({"header": {"typ": "JWT"}})),
        ),
    ];
    let before = agent.events("exchange").len();
    for (what, token) in &catalogue {
        let req = ok_req.replace(&bearer(&good), &bearer(token));
        let (reply, _) = f.node.raw(&f.node.client, &addr(SERVER_IP, f.port), &req);
        assert!(reply.starts_with("HTTP/1.1 401"), "{what}: {reply}");
        assert!(
            reply
                .to_ascii_lowercase()
                .contains("error=\"invalid_token\""),
            "{what}: {reply}"
        );
    }
    settle();
    let recorded: Vec<Value> = agent.events("exchange")[before..]
        .iter()
        .filter(|e| e["outcome"] == "denied" && e["http_status"] == 401)
        .cloned()
        .collect();
    assert_eq!(
        recorded.len(),
        catalogue.len(),
        "every refusal recorded: {recorded:#?}"
    );
    assert!(
        recorded
            .iter()
            .all(|e| e["rule"].as_str().unwrap_or("").starts_with("authn/")),
        "{recorded:#?}"
    );
}

#[test]
fn key_rotation_at_the_provider_and_provider_outage() {
    let Some(f) = fixture("auth_rotation", &policy_file(), 9) else {
        return;
    };
    let _server = f.node.server(
        &f.node.server,
        &[&format!("0.0.0.0:{}", f.port)],
        "mcp-echo",
    );
    let mut cfg = f.cfg.clone();
    cfg.extra_agent_toml = cfg.extra_agent_toml.replace(
        "audiences =",
        "unknown_kid_min_interval_secs = 1\naudiences =",
    );
    let agent = f.node.start_agent(&cfg);
    let req = |token: &str| {
        let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"export_customers","arguments":{"limit":1}}}"#;
        format!(
            "POST /mcp HTTP/1.1\\r\\nHost: crm\\r\\nContent-Type: application/json\\r\\n{}\\r\\nContent-Length: {}\\r\\n\\r\\n{body}",
            bearer(token),
            body.len()
        )
    };
    let status = |token: &str| {
        let (reply, _) = f
            .node
            .raw(&f.node.client, &addr(SERVER_IP, f.port), &req(token));
        reply.get(9..12).unwrap_or("").to_string()
    };
    let t1 = batch_token(&f);
    assert_eq!(status(&t1), "200");

    // Rotate: the provider restarts with new keys first (old ones still published).
    let Fixture { node, idp, .. } = f;
    let keys1 = node.dir.join("keys-k1.json");
    let keys2 = node.oidc_keys("k2", Some(&keys1));
    let (ca, cert, key, port) = (idp.ca.clone(), idp.cert.clone(), idp.key.clone(), idp.port);
    drop(idp);
    let idp2 = node.oidc(port, &keys2, Some((&ca, &cert, &key)), &[]);
    let f2 = Fixture {
        node,
        idp: idp2,
        cfg: cfg.clone(),
        resource: format!("http://{SERVER_IP}:{}/mcp", cfg.services[0].port),
        port: cfg.services[0].port,
    };
    let t2 = batch_token(&f2);
    let kid = |t: &str| {
        let h = t.split('.').next().unwrap_or("");
        let bytes = base64_url_decode(h);
        serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null)["kid"].clone()
    };
    assert_eq!(kid(&t2), "k2-rs256", "the new token uses the new key");
    std::thread::sleep(Duration::from_millis(1100));
    let s2 = {
        let (reply, _) = f2
            .node
            .raw(&f2.node.client, &addr(SERVER_IP, f2.port), &req(&t2));
        reply.get(9..12).unwrap_or("").to_string()
    };
    assert_eq!(s2, "200", "rotated key picked up without a restart");

    // A token under a key the provider never published (minted by a third key set).
    let stray = f2.node.oidc_mint(
        &f2.idp,
        &json!({"claims": {"sub": "crm-batch", "aud": f2.resource, "client_id": "crm-batch"}, "foreign_key": true, "header": {"kid": "k3-rs256"}}),
    );
    // Provider down: cached keys keep working, unknown keys are refused.
    let Fixture { node, idp, .. } = f2;
    drop(idp);
    std::thread::sleep(Duration::from_millis(1100));
    for t in [&t1, &t2] {
        let (reply, _) = node.raw(&node.client, &addr(SERVER_IP, port_of(&cfg)), &req(t));
        assert!(
            reply.starts_with("HTTP/1.1 200"),
            "cached key still verifies: {reply}"
        );
    }
    let (reply, _) = node.raw(&node.client, &addr(SERVER_IP, port_of(&cfg)), &req(&stray));
    assert!(
        reply.starts_with("HTTP/1.1 401") || reply.starts_with("HTTP/1.1 503"),
        "unknown key refused while the provider is down: {reply}"
    );
    drop(agent);
}

fn port_of(cfg: &AgentConfig) -> u16 {
    cfg.services[0].port
}

fn base64_url_decode(s: &str) -> Vec<u8> {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = Vec::new();
    let (mut buf, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let Some(v) = A.iter().position(|x| *x == c) else {
            continue;
        };
        buf = (buf << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
            buf &= (1 << bits) - 1;
        }
    }
    out
}

#[test]
fn the_callers_token_never_reaches_the_server() {
    let Some(f) = fixture("auth_no_forward", &policy_file(), 9) else {
        return;
    };
    let server = f.node.server(
        &f.node.server,
        &[&format!("0.0.0.0:{}", f.port)],
        "mcp-echo",
    );
    let _agent = f.node.start_agent(&f.cfg);
    let token = batch_token(&f);
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"export_customers","arguments":{"limit":1}}}"#;
    let req = format!(
        "POST /mcp HTTP/1.1\\r\\nHost: crm\\r\\nContent-Type: application/json\\r\\n{}\\r\\nContent-Length: {}\\r\\n\\r\\n{body}",
        bearer(&token),
        body.len()
    );
    let (reply, _) = f.node.raw(&f.node.client, &addr(SERVER_IP, f.port), &req);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let seen = server.proc.stdout.events("mcp_request");
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0]["headers"].get("authorization").is_none(),
        "{}",
        seen[0]
    );
}

#[test]
fn policy_reload_check_and_explain() {
    let Some(f) = fixture("auth_policy_cli", "__POLICY__", 9) else {
        return;
    };
    let policy = f.node.dir.join("crm.policy.toml");
    std::fs::copy(policy_file(), &policy).expect("copy policy");
    let mut cfg = f.cfg.clone();
    cfg.extra_agent_toml = cfg.extra_agent_toml.replace(
        "\"__POLICY__\"",
        &format!("{:?}", policy.display().to_string()),
    );
    let _server = f.node.server(
        &f.node.server,
        &[&format!("0.0.0.0:{}", f.port)],
        "mcp-echo",
    );
    let agent = f.node.start_agent(&cfg);
    let v1 = agent.wait_event("policy_loaded", |_| true)["policy_version"].clone();

    // policy check names file, line and key.
    let bad = f.node.dir.join("bad.policy.toml");
    std::fs::write(
        &bad,
        "[[roles]]\nname = \"x\"\ngroups = [\"g\"]\n[[roles.grants]]\nservice = \"crm\"\nmethods = [\"tools/call\"]\ntools = [\"a\"]\npurpose = \"p\"\nlawful_basis = \"because\"\n",
    )
    .expect("bad policy");
    let out = f
        .node
        .cli(&cfg, &["policy", "check", &bad.display().to_string()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.policy.toml:9"), "{err}");
    assert!(err.contains("lawful_basis"), "{err}");

    // An invalid policy on disk: reload refused, the running one stays.
    std::fs::copy(&bad, &policy).expect("break policy");
    let out = f.node.cli(&cfg, &["policy", "reload"]);
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOT reloaded"));
    // A valid change: reload swaps it and decisions carry the new version.
    let text = std::fs::read_to_string(policy_file()).expect("policy");
    std::fs::write(&policy, format!("{text}\n# edited\n")).expect("edit policy");
    let out = f.node.cli(&cfg, &["policy", "reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = batch_token(&f);
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"export_customers","arguments":{"limit":1}}}"#;
    let req = format!(
        "POST /mcp HTTP/1.1\\r\\nHost: crm\\r\\nContent-Type: application/json\\r\\n{}\\r\\nContent-Length: {}\\r\\n\\r\\n{body}",
        bearer(&token),
        body.len()
    );
    let (reply, _) = f.node.raw(&f.node.client, &addr(SERVER_IP, f.port), &req);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let e = agent.wait_event("exchange", |e| e["method"] == "tools/call");
    assert_ne!(e["policy_version"], v1, "{e}");

    // explain: what the token holder may do and why.
    let out = f.node.cli(
        &cfg,
        &[
            "policy",
            "explain",
            "--service",
            "crm",
            "--token",
            &token,
            "--method",
            "tools/call",
            "--name",
            "export_customers",
            "--args",
            "{\"limit\": 5}",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("explain JSON");
    assert_eq!(v["decision"]["allowed"], true, "{v}");
    assert_eq!(v["decision"]["role"], "batch", "{v}");
    assert_eq!(v["token"]["subject"], "crm-batch", "{v}");
}

fn call_req(token: &str, tool: &str) -> String {
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{tool}","arguments":{{"limit":1,"id":"1"}}}}}}"#
    );
    format!(
        "POST /mcp HTTP/1.1\\r\\nHost: crm\\r\\nContent-Type: application/json\\r\\n{}\\r\\nContent-Length: {}\\r\\n\\r\\n{body}",
        bearer(token),
        body.len()
    )
}

#[test]
fn a_bound_local_process_may_only_present_its_identities() {
    let Some(f) = fixture("auth_local_binding", &policy_file(), 9) else {
        return;
    };
    let _server = f.node.server(
        &f.node.server,
        &[&format!("0.0.0.0:{}", f.port)],
        "mcp-echo",
    );
    let mut cfg = f.cfg.clone();
    // uid 65534 (nobody) may only present the crm-batch service account.
    cfg.services[0].extra = cfg.services[0].extra.replace(
        "[services.auth]\n",
        "[services.auth]\nlocal_bindings = [{ uid = 65534, clients = [\"crm-batch\"] }]\n",
    );
    let agent = f.node.start_agent(&cfg);
    let batch = batch_token(&f);
    let alice = user_token(&f, "alice");
    let dst = addr("127.0.0.1", f.port);
    let (reply, _) = f.node.raw_as(
        (65_534, 65_534),
        &dst,
        &call_req(&batch, "export_customers"),
    );
    assert!(
        reply.starts_with("HTTP/1.1 200"),
        "bound identity accepted: {reply}"
    );
    let (reply, _) = f
        .node
        .raw_as((65_534, 65_534), &dst, &call_req(&alice, "customer_lookup"));
    assert!(
        reply.starts_with("HTTP/1.1 403"),
        "another identity refused: {reply}"
    );
    assert!(reply.contains("local process uid 65534"), "{reply}");
    let e = agent.wait_event("exchange", |e| e["rule"] == "authn/local_binding");
    assert_eq!(e["caller_kind"], "local", "{e}");
    assert_eq!(e["uid"], 65534, "{e}");
    // Root (not bound) may present alice's token.
    let (reply, _) = f
        .node
        .raw(&f.node.server, &dst, &call_req(&alice, "customer_lookup"));
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}

#[test]
fn sighup_reloads_the_policy() {
    let Some(f) = fixture("auth_sighup", "__POLICY__", 9) else {
        return;
    };
    let policy = f.node.dir.join("crm.policy.toml");
    std::fs::copy(policy_file(), &policy).expect("copy policy");
    let mut cfg = f.cfg.clone();
    cfg.extra_agent_toml = cfg.extra_agent_toml.replace(
        "\"__POLICY__\"",
        &format!("{:?}", policy.display().to_string()),
    );
    let _server = f.node.server(
        &f.node.server,
        &[&format!("0.0.0.0:{}", f.port)],
        "mcp-echo",
    );
    let agent = f.node.start_agent(&cfg);
    let batch = batch_token(&f);
    let dst = addr(SERVER_IP, f.port);
    let (reply, _) = f
        .node
        .raw(&f.node.client, &dst, &call_req(&batch, "export_customers"));
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    // Take the batch role's export grant away and send SIGHUP.
    let text = std::fs::read_to_string(&policy).expect("policy");
    let edited = text.replace("clients = [\"crm-batch\"]", "clients = [\"someone-else\"]");
    assert_ne!(
        text, edited,
        "the example policy names the crm-batch client"
    );
    std::fs::write(&policy, edited).expect("edit");
    let st = std::process::Command::new("kill")
        .args(["-HUP", &agent.pid().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(st.success());
    agent.wait_event("policy_reloaded", |_| true);
    let (reply, _) = f
        .node
        .raw(&f.node.client, &dst, &call_req(&batch, "export_customers"));
    assert!(reply.starts_with("HTTP/1.1 403"), "{reply}");
}
