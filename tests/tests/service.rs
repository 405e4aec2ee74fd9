//! The agent under a service manager's notification protocol, on a real kernel: the test plays
//! systemd by binding the `NOTIFY_SOCKET` datagram socket itself, then checks that `READY=1`
//! comes only once the protected port is really steered, that `WATCHDOG=1` pings arrive at
//! half of `WATCHDOG_USEC`, that SIGHUP is framed by `RELOADING=1` (+ `MONOTONIC_USEC`) and
//! `READY=1`, and that SIGTERM announces `STOPPING=1`. (The real systemd, with the unit file,
//! is exercised by `cargo xtask vm-test`.)
use std::{
    os::unix::net::UnixDatagram,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use interceptor_tests::*;

macro_rules! node {
    ($name:expr) => {
        match Node::new($name) {
            Some(n) => n,
            None => return,
        }
    };
}

/// A datagram socket standing in for systemd's notification socket; removed on drop.
struct NotifySocket {
    sock: UnixDatagram,
    path: PathBuf,
    dir: PathBuf,
}

impl NotifySocket {
    fn new(test: &str) -> NotifySocket {
        let dir = std::env::temp_dir().join(format!("icpt-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("notify dir");
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        NotifySocket { sock, path, dir }
    }

    /// The next message, or None after `timeout`.
    fn next(&self, timeout: Duration) -> Option<String> {
        self.sock.set_read_timeout(Some(timeout)).ok()?;
        let mut buf = [0u8; 4096];
        let n = self.sock.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Waits for a message starting with `prefix`, returning it and what came before.
    fn wait_for(&self, prefix: &str, timeout: Duration) -> (Option<String>, Vec<String>) {
        let deadline = Instant::now() + timeout;
        let mut before = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.next(left) {
                Some(m) if m.starts_with(prefix) => return (Some(m), before),
                Some(m) => before.push(m),
                None => break,
            }
        }
        (None, before)
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn notifies_ready_watchdog_reload_and_stopping() {
    let node = node!("notifies_ready_watchdog_reload_and_stopping");
    let port = node.port(0);
    let cfg = node.agent_config().service("crm", port);
    let server = node.server(
        &node.server,
        &[&addr("0.0.0.0", port), &addr("::", port)],
        "echo",
    );
    let notify = NotifySocket::new("notify");

    let path = node.write_config(&cfg);
    let mut cmd = node.server.command(interceptor_bin());
    cmd.arg("run")
        .arg("--config")
        .arg(&path)
        .env("NOTIFY_SOCKET", &notify.path)
        // 600 ms: pings every 300 ms.
        .env("WATCHDOG_USEC", "600000")
        .env_remove("WATCHDOG_PID");
    let mut agent = Agent {
        proc: Proc::spawn("agent notify", cmd).expect("spawn agent"),
    };

    let (ready, before) = notify.wait_for("READY=1", WAIT);
    let ready =
        ready.unwrap_or_else(|| panic!("no READY=1; got {before:?}\n{}", agent.proc.dump()));
    assert!(
        before.iter().all(|m| !m.contains("WATCHDOG=1")),
        "watchdog pings before readiness: {before:?}"
    );
    assert!(
        ready.contains(&format!("MAINPID={}", agent.pid())),
        "{ready}"
    );
    // At the moment READY=1 arrives, the agent has logged `ready`, its programs are attached
    // and a remote client is already steered through it to the server.
    let status = node.status(&cfg);
    assert!(status.agent.running, "{}", status.raw);
    assert!(
        !status.programs.is_empty() && status.programs.iter().all(|p| p.attached),
        "{}",
        status.raw
    );
    let c = node.remote_client(&addr(SERVER_IP, port), &ClientOpts::bytes(1000));
    c.assert_ok();
    assert!(
        agent.proc.stderr.events("ready").len() == 1,
        "ready logged once: {}",
        agent.proc.dump()
    );
    server
        .wait_accepted(1)
        .expect("the server got the proxied connection");
    agent.conn_open_from(&c.local());

    // Watchdog: at least three pings in a window that fits at least four intervals.
    let mut pings = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while pings < 3 && Instant::now() < deadline {
        if let Some(m) = notify.next(Duration::from_secs(2)) {
            assert_eq!(m, "WATCHDOG=1", "unexpected message");
            pings += 1;
        }
    }
    assert!(pings >= 3, "only {pings} watchdog pings");

    // Reload: RELOADING=1 with a plausible CLOCK_MONOTONIC, then READY=1 again.
    let before_hup = read_uptime_usec();
    Command::new("kill")
        .args(["-HUP", &agent.pid().to_string()])
        .status()
        .expect("kill -HUP");
    let (reloading, _) = notify.wait_for("RELOADING=1", WAIT);
    let reloading = reloading.expect("RELOADING=1 after SIGHUP");
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .expect("MONOTONIC_USEC")
        .parse()
        .expect("a number");
    assert!(
        usec + 5_000_000 >= before_hup && usec <= read_uptime_usec() + 5_000_000,
        "MONOTONIC_USEC={usec} is not CLOCK_MONOTONIC (uptime {before_hup})"
    );
    let (again, _) = notify.wait_for("READY=1", WAIT);
    assert!(again.is_some(), "READY=1 after the reload");

    // Stop: STOPPING=1 is the first thing after SIGTERM (pings may be interleaved).
    agent.proc.terminate(WAIT).expect("agent stops on SIGTERM");
    let (stopping, _) = notify.wait_for("STOPPING=1", Duration::from_secs(5));
    assert!(stopping.is_some(), "STOPPING=1 at shutdown");
}

/// CLOCK_MONOTONIC is close to /proc/uptime (both count from boot; suspend aside).
fn read_uptime_usec() -> u64 {
    let s = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
    let secs: f64 = s
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    (secs * 1e6) as u64
}

#[test]
fn without_notify_socket_nothing_changes() {
    let node = node!("without_notify_socket_nothing_changes");
    let port = node.port(0);
    let cfg = node.agent_config().service("crm", port);
    let _server = node.server(&node.server, &[&addr("0.0.0.0", port)], "echo");
    // start_agent runs without NOTIFY_SOCKET: readiness is only the log line.
    let agent = node.start_agent(&cfg);
    let c = node.remote_client(&addr(SERVER_IP, port), &ClientOpts::bytes(10));
    c.assert_ok();
    assert!(
        agent.proc.stderr.events("watchdog").is_empty(),
        "no watchdog without WATCHDOG_USEC: {}",
        agent.proc.dump()
    );
}
