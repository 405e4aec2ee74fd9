//! L4 interception on a real kernel: sk_lookup steering of remote clients, cgroup
//! connect4/connect6 redirection of local clients, fail-closed behaviour when the agent is
//! dead, takeover of pinned programs on restart, kernel counters, detach.
//!
//! Every test builds its own fake node (see the `interceptor_tests` crate docs): the agent and
//! the real server run in the server netns, remote clients in the client netns.
use std::{path::Path, time::Duration};

use interceptor_tests::*;

/// Builds the node, or returns from the test when it must be skipped.
macro_rules! node {
    ($name:expr) => {
        match Node::new($name) {
            Some(n) => n,
            None => return,
        }
    };
}

const MB100: u64 = 100 * 1024 * 1024;
const NOBODY: (u32, u32) = (65_534, 65_534);

/// Local clients run as nobody when `setpriv` exists (so uid/gid are meaningful), else as root.
fn local_user() -> Option<(u32, u32)> {
    ["/usr/bin/setpriv", "/bin/setpriv", "/usr/sbin/setpriv"]
        .iter()
        .any(|p| Path::new(p).is_file())
        .then_some(NOBODY)
}

/// Listen addresses for a server on `port`, IPv4 and IPv6 (v6only).
fn listen(port: u16) -> Vec<String> {
    vec![addr("0.0.0.0", port), addr("::", port)]
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn same_ip(a: &str, b: &str) -> bool {
    sockaddr(a).ip() == sockaddr(b).ip()
}

/// Asserts a remote conn_open and the server side of one proxied connection.
#[track_caller]
fn check_remote(agent: &Agent, c: &ClientResult, service: &str, dst: &str) -> serde_json::Value {
    c.assert_ok();
    assert_eq!(
        c.peer(),
        dst,
        "client's getpeername must be the server address"
    );
    let open = agent.conn_open_from(&c.local());
    assert_eq!(open["caller_kind"], "remote", "{open}");
    assert_eq!(open["service"], service, "{open}");
    assert_eq!(open["orig_dst"], dst, "{open}");
    open
}

#[test]
fn remote_client_is_steered_through_sk_lookup() {
    let node = node!("remote_client_is_steered_through_sk_lookup");
    let port = node.port(0);
    let cfg = node.agent_config().service("crm", port);
    let server = node.server(&node.server, &refs(&listen(port)), "echo");
    let agent = node.start_agent(&cfg);

    let ready = agent.ready();
    assert_eq!(ready["pid"], agent.pid(), "{ready}");
    assert_eq!(ready["takeover"], false, "{ready}");
    // Spec: pin dir = <bpffs>/interceptor/<instance> (a per-netns subdirectory is tolerated).
    let pin_dir = ready["pin_dir"].as_str().unwrap_or_default();
    assert!(
        Path::new(pin_dir).starts_with(node.pin_dir(&cfg)),
        "pin_dir {pin_dir} must be under {}",
        node.pin_dir(&cfg).display()
    );
    assert!(Path::new(pin_dir).is_dir(), "{ready}");

    let dst = addr(SERVER_IP, port);
    let c = node.remote_client(&dst, &ClientOpts::bytes(100_000));
    let open = check_remote(&agent, &c, "crm", &dst);
    assert!(open["conn_id"].is_u64(), "{open}");
    assert!(open.get("pid").is_none() || open["pid"].is_null(), "{open}");

    // The server saw the agent's upstream connection, not the client.
    let accepted = server.wait_accepted(1).expect("server accepted");
    assert_eq!(accepted.len(), 1);
    let peer = accepted[0]["peer"].as_str().unwrap_or_default().to_string();
    assert_ne!(peer, c.local(), "server must not see the client directly");
    assert!(
        !same_ip(&peer, &c.local()),
        "server's peer {peer} should be the agent (an address of the server netns), not the \
         client {}",
        c.local()
    );

    let close = agent.conn_close(&open["conn_id"]);
    assert_eq!(close["bytes_to_server"], 100_000u64, "{close}");
    assert_eq!(close["bytes_to_client"], 100_000u64, "{close}");
    assert_eq!(close["caller_kind"], "remote", "{close}");
    assert_eq!(close["orig_dst"], dst.as_str(), "{close}");
    assert_eq!(close["peer"], c.local(), "{close}");
    assert!(close["duration_ms"].is_u64(), "{close}");
    assert!(close["close_reason"].is_string(), "{close}");
}

#[test]
fn remote_ipv6_client_is_steered_through_sk_lookup() {
    let node = node!("remote_ipv6_client_is_steered_through_sk_lookup");
    let port = node.port(0);
    let cfg = node.agent_config().service("crm", port);
    let server = node.server(&node.server, &refs(&listen(port)), "echo");
    let agent = node.start_agent(&cfg);

    let dst = addr(SERVER_IP6, port);
    let c = node.remote_client(&dst, &ClientOpts::bytes(50_000));
    check_remote(&agent, &c, "crm", &dst);
    let accepted = server.wait_accepted(1).expect("server accepted");
    assert_eq!(accepted.len(), 1);
    assert_ne!(accepted[0]["peer"], c.local());
}

/// A local client (server netns, child cgroup, as nobody) connecting to `dst`.
fn local_case(ip: &str, test: &str) {
    let node = node!(test);
    let port = node.port(0);
    let cfg = node.agent_config().service("crm", port);
    let server = node.server(&node.server, &refs(&listen(port)), "echo");
    let agent = node.start_agent(&cfg);
    let cg = node.cgroup("client");
    let user = local_user();
    let (uid, gid) = user.unwrap_or((0, 0));
    let dst = addr(ip, port);

    for (i, bind_any) in [false, true].into_iter().enumerate() {
        let opts = ClientOpts {
            bytes: 200_000,
            cgroup: Some(cg.clone()),
            user,
            bind_any,
            ..Default::default()
        };
        let c = node.local_client(&dst, &opts);
        c.assert_ok();
        assert_eq!(c.json["comm"], "testpeer");
        assert_eq!(
            c.json["cgroup"],
            cg.rel.as_str(),
            "the client runs in the child cgroup"
        );
        assert_eq!(
            c.peer(),
            dst,
            "getpeername must show the original destination (bind_any={bind_any})"
        );

        let open = agent.wait_event("conn_open", |v| v["tgid"] == c.pid);
        assert_eq!(open["caller_kind"], "local", "{open}");
        assert_eq!(open["service"], "crm", "{open}");
        assert_eq!(open["orig_dst"], dst.as_str(), "{open}");
        assert_eq!(
            open["pid"], c.pid,
            "single-threaded connect: pid == tgid: {open}"
        );
        assert_eq!(open["uid"], uid, "{open}");
        assert_eq!(open["gid"], gid, "{open}");
        assert_eq!(open["comm"], "testpeer", "{open}");
        assert_eq!(open["cgroup"], cg.rel.as_str(), "{open}");
        assert!(open["cgroup_id"].as_u64().unwrap_or(0) > 0, "{open}");
        assert_eq!(open["peer"], c.local(), "{open}");

        let close = agent.conn_close(&open["conn_id"]);
        assert_eq!(close["bytes_to_server"], 200_000u64, "{close}");
        assert_eq!(close["bytes_to_client"], 200_000u64, "{close}");
        assert_eq!(close["caller_kind"], "local", "{close}");

        let accepted = server.wait_accepted(i + 1).expect("server accepted");
        assert_eq!(accepted.len(), i + 1);
        assert_ne!(
            accepted[i]["peer"],
            c.local(),
            "the server sees the agent's upstream"
        );
    }
}

#[test]
fn local_client_is_redirected_by_connect4() {
    local_case("127.0.0.1", "local_client_is_redirected_by_connect4");
}

#[test]
fn local_client_is_redirected_by_connect6() {
    local_case("::1", "local_client_is_redirected_by_connect6");
}

#[test]
fn hundred_megabytes_arrive_byte_for_byte_both_ways() {
    let node = node!("hundred_megabytes_arrive_byte_for_byte_both_ways");
    let port = node.port(0);
    let cfg = node.agent_config().service("crm", port);
    let server = node.server(&node.server, &refs(&listen(port)), "echo");
    let agent = node.start_agent(&cfg);
    let opts = ClientOpts {
        bytes: MB100,
        timeout: Duration::from_secs(180),
        ..Default::default()
    };

    // Remote (sk_lookup) and local (connect4).
    let remote = node.remote_client(&addr(SERVER_IP, port), &opts);
    let local = node.local_client(&addr("127.0.0.1", port), &opts);
    for c in [&remote, &local] {
        c.assert_ok();
        assert_eq!(c.sent(), MB100, "{c:?}");
        assert_eq!(c.received(), MB100, "{c:?}");
        assert_eq!(
            c.json["checksum_sent"], c.json["checksum_received"],
            "{c:?}"
        );
        let open = agent.conn_open_from(&c.local());
        let close = agent.conn_close(&open["conn_id"]);
        assert_eq!(close["bytes_to_server"], MB100, "{close}");
        assert_eq!(close["bytes_to_client"], MB100, "{close}");
    }
    assert!(wait_until(WAIT, || server.closed().len() >= 2));
    for closed in server.closed() {
        assert_eq!(closed["bytes_in"], MB100, "{closed}");
        assert_eq!(closed["bytes_out"], MB100, "{closed}");
        assert!(closed["error"].is_null(), "{closed}");
    }
}

#[test]
fn dead_agent_means_connection_refused() {
    let node = node!("dead_agent_means_connection_refused");
    let port = node.port(0);
    let cfg = node.agent_config().service("crm", port);
    let server = node.server(&node.server, &refs(&listen(port)), "echo");
    let mut agent = node.start_agent(&cfg);
    let dst = addr(SERVER_IP, port);

    node.remote_client(&dst, &ClientOpts::default()).assert_ok();
    server
        .wait_accepted(1)
        .expect("one connection through the agent");

    agent.kill9();
    let status = node.status(&cfg);
    assert!(!status.agent.running, "{}", status.raw);
    assert!(
        !status.programs.is_empty() && status.programs.iter().all(|p| p.attached),
        "programs stay attached while the agent is dead: {}",
        status.raw
    );

    let remote = node.remote_client(&dst, &ClientOpts::default());
    remote.assert_refused();
    for ip in ["127.0.0.1", "::1"] {
        let local = node.local_client(&addr(ip, port), &ClientOpts::default());
        local.assert_refused();
    }
    let local_direct = node.local_client(&dst, &ClientOpts::default());
    local_direct.assert_refused();

    settle();
    assert_eq!(
        server.accepted().len(),
        1,
        "the server must not see connections while the agent is dead: {:?}",
        server.accepted_peers()
    );
}

#[test]
fn restarted_agent_takes_over_the_pins() {
    let node = node!("restarted_agent_takes_over_the_pins");
    let port = node.port(0);
    let cfg = node.agent_config().service("crm", port);
    let server = node.server(&node.server, &refs(&listen(port)), "echo");
    let dst = addr(SERVER_IP, port);

    let mut first = node.start_agent(&cfg);
    let before = node.status(&cfg);
    assert!(before.agent.running, "{}", before.raw);
    assert_eq!(
        before.agent.pid,
        Some(u64::from(first.pid())),
        "{}",
        before.raw
    );
    assert!(
        !before.programs.is_empty() && before.programs.iter().all(|p| p.attached),
        "{}",
        before.raw
    );
    assert!(
        before.programs.iter().all(|p| p.link_id.is_some()),
        "{}",
        before.raw
    );
    node.remote_client(&dst, &ClientOpts::default()).assert_ok();
    first.kill9();
    node.remote_client(&dst, &ClientOpts::default())
        .assert_refused();

    let mut second = node.start_agent(&cfg);
    let ready = second.ready();
    assert_eq!(ready["takeover"], true, "{ready}");
    let after = node.status(&cfg);
    assert!(after.agent.running, "{}", after.raw);
    assert_eq!(
        after.agent.pid,
        Some(u64::from(second.pid())),
        "{}",
        after.raw
    );
    assert_eq!(
        after.programs.len(),
        before.programs.len(),
        "same programs, no duplicates: before {} after {}",
        before.raw,
        after.raw
    );
    assert_eq!(
        after.attached_links(),
        before.attached_links(),
        "same link ids: before {} after {}",
        before.raw,
        after.raw
    );

    // Works again, remote and local.
    let c = node.remote_client(&dst, &ClientOpts::default());
    check_remote(&second, &c, "crm", &dst);
    let l = node.local_client(&addr("127.0.0.1", port), &ClientOpts::default());
    l.assert_ok();
    second.wait_event("conn_open", |v| v["tgid"] == l.pid);
    server.wait_accepted(3).expect("three proxied connections");

    // Graceful stop.
    let st = second
        .terminate(Duration::from_secs(10))
        .expect("agent exits after SIGTERM");
    assert_eq!(st.code(), Some(0), "SIGTERM exit status");
    settle();
    assert_eq!(server.accepted().len(), 3, "{:?}", server.accepted_peers());
}

#[test]
fn agent_upstream_is_not_looped() {
    let node = node!("agent_upstream_is_not_looped");
    let port = node.port(0);
    let cfg = node.agent_config().service("crm", port);
    let server = node.server(&node.server, &refs(&listen(port)), "echo");
    let agent = node.start_agent(&cfg);

    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(node.remote_client(&addr(SERVER_IP, port), &ClientOpts::default()));
    }
    for ip in ["127.0.0.1", "::1", SERVER_IP] {
        clients.push(node.local_client(&addr(ip, port), &ClientOpts::default()));
    }
    for c in &clients {
        c.assert_ok();
        agent.conn_open_from(&c.local());
    }
    server.wait_accepted(clients.len()).expect("accepted");
    settle();

    let opens = agent.events("conn_open");
    assert_eq!(
        opens.len(),
        clients.len(),
        "exactly one conn_open per client connection: {opens:#?}"
    );
    for c in &clients {
        let n = opens.iter().filter(|o| o["peer"] == c.local()).count();
        assert_eq!(n, 1, "conn_open for {} : {opens:#?}", c.local());
    }
    assert_eq!(
        server.accepted().len(),
        clients.len(),
        "one accepted per client connection: {:?}",
        server.accepted_peers()
    );
    // The server's peers are the agent's upstream sockets, never a client.
    for p in server.accepted_peers() {
        assert!(
            clients.iter().all(|c| c.local() != p),
            "server saw a client directly: {p}"
        );
    }
}

#[test]
fn unprotected_port_is_untouched() {
    let node = node!("unprotected_port_is_untouched");
    let protected = node.port(0);
    let other = node.port(1);
    let cfg = node.agent_config().service("crm", protected);
    let server = node.server(&node.server, &refs(&listen(other)), "echo");
    let agent = node.start_agent(&cfg);

    let remote = node.remote_client(&addr(SERVER_IP, other), &ClientOpts::default());
    let local4 = node.local_client(&addr("127.0.0.1", other), &ClientOpts::default());
    let local6 = node.local_client(&addr("::1", other), &ClientOpts::default());
    for (c, dst) in [
        (&remote, addr(SERVER_IP, other)),
        (&local4, addr("127.0.0.1", other)),
        (&local6, addr("::1", other)),
    ] {
        c.assert_ok();
        assert_eq!(c.peer(), dst);
    }
    server.wait_accepted(3).expect("accepted");
    let peers = server.accepted_peers();
    for c in [&remote, &local4, &local6] {
        assert!(
            peers.contains(&c.local()),
            "server must see the client itself ({}) on an unprotected port: {peers:?}",
            c.local()
        );
    }
    settle();
    assert!(
        agent.events("conn_open").is_empty(),
        "{:?}",
        agent.events("conn_open")
    );
    let st = node.status(&cfg);
    let s = st.service("crm");
    assert_eq!(
        (s.steered, s.refused, s.local_redirects, s.upstream),
        (0, 0, 0, 0),
        "{}",
        st.raw
    );
}

#[test]
fn two_services_are_both_intercepted() {
    let node = node!("two_services_are_both_intercepted");
    let (p1, p2) = (node.port(0), node.port(1));
    let cfg = node
        .agent_config()
        .service("crm", p1)
        .service("billing", p2);
    let s1 = node.server(&node.server, &refs(&listen(p1)), "echo");
    let s2 = node.server(&node.server, &refs(&listen(p2)), "echo");
    let agent = node.start_agent(&cfg);

    for (name, port, server) in [("crm", p1, &s1), ("billing", p2, &s2)] {
        let dst = addr(SERVER_IP, port);
        let r = node.remote_client(&dst, &ClientOpts::default());
        check_remote(&agent, &r, name, &dst);
        let ldst = addr("127.0.0.1", port);
        let l = node.local_client(&ldst, &ClientOpts::default());
        l.assert_ok();
        let open = agent.conn_open_from(&l.local());
        assert_eq!(open["service"], name, "{open}");
        assert_eq!(open["caller_kind"], "local", "{open}");
        assert_eq!(open["orig_dst"], ldst.as_str(), "{open}");
        server.wait_accepted(2).expect("accepted");
    }
    settle();
    assert_eq!(s1.accepted().len(), 2);
    assert_eq!(s2.accepted().len(), 2);
    let st = node.status(&cfg);
    for name in ["crm", "billing"] {
        let s = st.service(name);
        assert_eq!((s.steered, s.local_redirects), (2, 1), "{name}: {}", st.raw);
    }
}

#[test]
fn kernel_counters_match_what_happened() {
    let node = node!("kernel_counters_match_what_happened");
    let port = node.port(0);
    let cfg = node.agent_config().service("crm", port);
    let server = node.server(&node.server, &refs(&listen(port)), "echo");
    let mut agent = node.start_agent(&cfg);

    let zero = node.status(&cfg);
    let s = zero.service("crm");
    assert_eq!(s.port, port);
    assert_eq!(
        (s.steered, s.refused, s.local_redirects, s.upstream),
        (0, 0, 0, 0),
        "{}",
        zero.raw
    );

    let remote_ok = 3;
    for _ in 0..remote_ok {
        node.remote_client(&addr(SERVER_IP, port), &ClientOpts::default())
            .assert_ok();
    }
    let locals = ["127.0.0.1", "::1"];
    for ip in locals {
        node.local_client(&addr(ip, port), &ClientOpts::default())
            .assert_ok();
    }
    let ok = remote_ok + locals.len() as u64;
    server.wait_accepted(ok as usize).expect("accepted");

    let live = node.status(&cfg);
    assert!(live.agent.running, "{}", live.raw);
    let s = live.service("crm");
    assert_eq!(s.steered, ok, "steered: {}", live.raw);
    assert_eq!(
        s.local_redirects,
        locals.len() as u64,
        "local_redirects: {}",
        live.raw
    );
    assert_eq!(s.upstream, ok, "upstream: {}", live.raw);
    assert_eq!(s.refused, 0, "refused: {}", live.raw);

    agent.kill9();
    let refused = 2;
    for _ in 0..refused {
        node.remote_client(&addr(SERVER_IP, port), &ClientOpts::default())
            .assert_refused();
    }
    let dead = node.status(&cfg);
    assert!(!dead.agent.running, "{}", dead.raw);
    let s = dead.service("crm");
    assert_eq!(s.refused, refused, "refused: {}", dead.raw);
    assert_eq!(s.steered, ok, "steered: {}", dead.raw);
    assert_eq!(s.local_redirects, locals.len() as u64, "{}", dead.raw);
    assert_eq!(s.upstream, ok, "{}", dead.raw);
    settle();
    assert_eq!(server.accepted().len(), ok as usize);
}

#[test]
fn detach_restores_direct_connections() {
    let node = node!("detach_restores_direct_connections");
    let port = node.port(0);
    let cfg = node.agent_config().service("crm", port);
    let server = node.server(&node.server, &refs(&listen(port)), "echo");
    let mut agent = node.start_agent(&cfg);
    let dst = addr(SERVER_IP, port);
    let instance_dir = node.pin_dir(&cfg);
    let pin_dir = std::path::PathBuf::from(agent.ready()["pin_dir"].as_str().unwrap_or_default());
    assert!(
        pin_dir.is_dir() && pin_dir.starts_with(&instance_dir),
        "pin dir {} exists while attached (under {})",
        pin_dir.display(),
        instance_dir.display()
    );

    let c = node.remote_client(&dst, &ClientOpts::default());
    check_remote(&agent, &c, "crm", &dst);
    agent.kill9();
    node.remote_client(&dst, &ClientOpts::default())
        .assert_refused();

    node.detach(&cfg);
    assert!(
        !pin_dir.exists(),
        "pin dir {} must be gone after detach",
        pin_dir.display()
    );
    let leftovers: Vec<_> = std::fs::read_dir(&instance_dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    assert!(
        leftovers.is_empty(),
        "nothing of the instance may stay pinned: {leftovers:?}"
    );

    let remote = node.remote_client(&dst, &ClientOpts::default());
    remote.assert_ok();
    assert_eq!(remote.peer(), dst);
    let ldst = addr("127.0.0.1", port);
    let local = node.local_client(&ldst, &ClientOpts::default());
    local.assert_ok();
    assert_eq!(local.peer(), ldst);
    server.wait_accepted(3).expect("accepted");
    let peers = server.accepted_peers();
    assert!(
        peers.contains(&remote.local()),
        "{peers:?} vs {}",
        remote.local()
    );
    assert!(
        peers.contains(&local.local()),
        "{peers:?} vs {}",
        local.local()
    );
    assert_eq!(agent.events("conn_open").len(), 1);
}

#[test]
fn invalid_config_is_rejected_naming_the_key() {
    let node = node!("invalid_config_is_rejected_naming_the_key");
    let port = node.port(0);
    let cases = [
        ("bogus_agent_key", "bogus_agent_key = 1\n", None),
        ("listen_port", "", Some("listen_port = \"not a port\"")),
        ("prot", "", None),
    ];
    for (i, (key, extra, replace)) in cases.into_iter().enumerate() {
        let mut cfg = node.agent_config().service("crm", port);
        cfg.instance = format!("{}-bad{i}", cfg.instance);
        cfg.path = node.dir.join(format!("bad{i}.toml"));
        cfg.extra_agent_toml = extra.to_string();
        let mut text = cfg.to_toml();
        if let Some(r) = replace {
            text = text.replace(&format!("listen_port = {}", cfg.listen_port), r);
        }
        if key == "prot" {
            text.push_str("prot = 80\n");
        }
        std::fs::write(&cfg.path, &text).expect("write config");

        let started = std::time::Instant::now();
        let out = node.cli(&cfg, &["run"]);
        let elapsed = started.elapsed();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !out.status.success(),
            "case {key}: must fail\n{text}\n{all}"
        );
        assert!(
            all.contains(key),
            "case {key}: error must name the key:\n{all}"
        );
        assert!(
            elapsed < Duration::from_secs(10),
            "case {key}: took {elapsed:?}"
        );
        assert!(
            !node.pin_dir(&cfg).exists(),
            "case {key}: nothing may be pinned"
        );
    }
}

#[test]
fn sigterm_lets_in_flight_connections_finish_and_refuses_new_ones() {
    let node = node!("sigterm_lets_in_flight_connections_finish");
    let port = node.port(0);
    let mut cfg = node.agent_config().service("crm", port);
    cfg.grace_period_ms = 8000;
    let server = node.server(&node.server, &refs(&listen(port)), "echo");
    let mut agent = node.start_agent(&cfg);
    let dst = addr(SERVER_IP, port);
    let slow = ClientOpts {
        bytes: 50_000,
        pause: Duration::from_millis(2500),
        ..ClientOpts::default()
    };
    std::thread::scope(|s| {
        let in_flight = s.spawn(|| node.remote_client(&dst, &slow));
        agent.wait_event("conn_open", |_| true);
        let late = s.spawn(|| {
            std::thread::sleep(Duration::from_millis(500));
            node.remote_client(&dst, &ClientOpts::default())
        });
        let status = agent
            .terminate(Duration::from_secs(20))
            .expect("agent exits");
        assert_eq!(status.code(), Some(0), "SIGTERM exit status");
        let c = in_flight.join().expect("client thread");
        c.assert_ok();
        assert_eq!(c.received(), 50_000, "{c:?}");
        late.join().expect("client thread").assert_refused();
    });
    let close = agent.wait_event("conn_close", |_| true);
    assert_eq!(close["close_reason"], "closed", "{close}");
    assert_eq!(close["bytes_to_client"], 50_000u64, "{close}");
    assert_eq!(server.accepted().len(), 1, "{:?}", server.accepted_peers());
}

#[test]
fn sigterm_closes_connections_still_open_after_the_grace_period() {
    let node = node!("sigterm_grace_period_over");
    let port = node.port(0);
    let mut cfg = node.agent_config().service("crm", port);
    cfg.grace_period_ms = 300;
    let _server = node.server(&node.server, &refs(&listen(port)), "echo");
    let mut agent = node.start_agent(&cfg);
    let dst = addr(SERVER_IP, port);
    let slow = ClientOpts {
        bytes: 10_000,
        pause: Duration::from_millis(4000),
        timeout: Duration::from_secs(10),
        ..ClientOpts::default()
    };
    std::thread::scope(|s| {
        let in_flight = s.spawn(|| node.remote_client(&dst, &slow));
        agent.wait_event("conn_open", |_| true);
        let status = agent
            .terminate(Duration::from_secs(20))
            .expect("agent exits");
        assert_eq!(status.code(), Some(0), "SIGTERM exit status");
        let c = in_flight.join().expect("client thread");
        assert!(
            !c.ok(),
            "the connection must be cut after the grace period: {c:?}"
        );
    });
    let close = agent.wait_event("conn_close", |_| true);
    assert!(
        close["close_reason"]
            .as_str()
            .unwrap_or("")
            .contains("grace period over"),
        "{close}"
    );
}

#[test]
fn detach_with_a_running_agent_removes_interception() {
    let node = node!("detach_with_a_running_agent");
    let port = node.port(0);
    let cfg = node.agent_config().service("crm", port);
    let server = node.server(&node.server, &refs(&listen(port)), "echo");
    let mut agent = node.start_agent(&cfg);
    let dst = addr(SERVER_IP, port);
    let first = node.remote_client(&dst, &ClientOpts::default());
    first.assert_ok();
    agent.conn_open_from(&first.local());

    node.detach(&cfg);
    assert!(
        !node.pin_dir(&cfg).exists(),
        "pins must be gone after detach"
    );
    let st = node.status(&cfg);
    assert!(st.programs.iter().all(|p| !p.attached), "{}", st.raw);

    // The agent still runs, but the kernel no longer steers anything to it.
    let direct = node.remote_client(&dst, &ClientOpts::default());
    direct.assert_ok();
    let peers = server.accepted_peers();
    assert_eq!(peers.len(), 2, "{peers:?}");
    assert_eq!(
        peers[1],
        direct.local(),
        "server sees the client itself after detach"
    );
    settle();
    assert_eq!(
        agent.events("conn_open").len(),
        1,
        "no new connection reached the agent"
    );
    let _ = agent.terminate(Duration::from_secs(10));
}
