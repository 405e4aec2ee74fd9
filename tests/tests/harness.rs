//! Self-tests of the harness and `testpeer`, without the agent: the fake node's plumbing
//! (netns, veth, cgroups, users) and the peer's verification work on their own, so an L4
//! failure points at the interceptor, not at the harness.
use std::time::Duration;

use interceptor_tests::*;

macro_rules! node {
    ($name:expr) => {
        match Node::new($name) {
            Some(n) => n,
            None => return,
        }
    };
}

#[test]
fn direct_connections_without_agent() {
    let node = node!("direct_connections_without_agent");
    let port = node.port(0);
    let listen = [addr("0.0.0.0", port), addr("::", port)];
    let server = node.server(&node.server, &[&listen[0], &listen[1]], "echo");

    let mut clients = Vec::new();
    for ip in [SERVER_IP, SERVER_IP6] {
        let c = node.remote_client(&addr(ip, port), &ClientOpts::bytes(1 << 20));
        c.assert_ok();
        assert_eq!(c.peer(), addr(ip, port));
        clients.push(c);
    }
    let cg = node.cgroup("client");
    for ip in ["127.0.0.1", "::1"] {
        let opts = ClientOpts {
            cgroup: Some(cg.clone()),
            user: Some((65_534, 65_534)),
            bind_any: true,
            ..ClientOpts::bytes(100_000)
        };
        let c = node.local_client(&addr(ip, port), &opts);
        c.assert_ok();
        assert_eq!(c.json["comm"], "testpeer");
        assert_eq!(c.json["uid"], 65_534);
        assert_eq!(c.json["gid"], 65_534);
        assert_eq!(c.json["cgroup"], cg.rel.as_str());
        clients.push(c);
    }
    server.wait_accepted(clients.len()).expect("accepted");
    let peers = server.accepted_peers();
    for c in &clients {
        assert!(peers.contains(&c.local()), "{peers:?} / {}", c.local());
    }
}

#[test]
fn closed_port_is_reported_as_refused() {
    let node = node!("closed_port_is_reported_as_refused");
    let c = node.remote_client(&addr(SERVER_IP, node.port(3)), &ClientOpts::default());
    c.assert_refused();
    let c = node.local_client(&addr("::1", node.port(3)), &ClientOpts::default());
    c.assert_refused();
}

#[test]
fn hundred_megabytes_direct() {
    let node = node!("hundred_megabytes_direct");
    let port = node.port(0);
    let listen = addr("0.0.0.0", port);
    let server = node.server(&node.server, &[&listen], "echo");
    let opts = ClientOpts {
        timeout: Duration::from_secs(120),
        ..ClientOpts::bytes(100 * 1024 * 1024)
    };
    let c = node.remote_client(&addr(SERVER_IP, port), &opts);
    c.assert_ok();
    assert_eq!(c.received(), 100 * 1024 * 1024);
    assert!(wait_until(WAIT, || server.closed().len() == 1));
}

#[test]
fn source_and_sink_modes() {
    let node = node!("source_and_sink_modes");
    let (p1, p2) = (node.port(0), node.port(1));
    let l1 = addr("0.0.0.0", p1);
    let l2 = addr("0.0.0.0", p2);
    let _sink = node.server(&node.server, &[&l1], "sink");
    let _source = node.server(&node.server, &[&l2], "source");
    let c = node.remote_client(
        &addr(SERVER_IP, p1),
        &ClientOpts {
            expect: Some(0),
            ..ClientOpts::bytes(1000)
        },
    );
    c.assert_ok();
    let c = node.remote_client(
        &addr(SERVER_IP, p2),
        &ClientOpts {
            expect: Some(1 << 20),
            ..ClientOpts::bytes(0)
        },
    );
    c.assert_ok();
    assert_eq!(c.received(), 1 << 20);
}
