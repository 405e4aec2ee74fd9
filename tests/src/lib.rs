//! Real-kernel test harness for the interceptor.
//!
//! # The fake node
//!
//! Every test builds its own [`Node`], so tests run in parallel without sharing anything but the
//! (single, unified) cgroup2 hierarchy, where each node uses its own uniquely named subtree:
//!
//! ```text
//!   host netns (the test process; nothing happens here)
//!   │
//!   ├── netns "it<pid>x<n>-srv"  ← the protected "node"
//!   │     lo       127.0.0.1/8, ::1
//!   │     veth0    10.213.1.1/24, fd00:213::1/64 (nodad)
//!   │     processes: `interceptor run` (the agent), testpeer servers,
//!   │                local testpeer clients (optionally in a child cgroup)
//!   │        │ veth pair
//!   └── netns "it<pid>x<n>-cli"  ← a "remote" host
//!         lo, veth1 10.213.1.2/24, fd00:213::2/64
//!         processes: remote testpeer clients
//!
//!   /tmp/interceptor-tests/it<pid>x<n>/
//!     bpf/        a private bpffs instance (the agent's `bpffs`; pins live under
//!                 bpf/interceptor/<instance>/)
//!     cg2/        a cgroup2 mount (the agent's `cgroup2`; it attaches at "/")
//!     cg2/it<pid>x<n>/<name>   child cgroups made by [`Node::cgroup`]
//!     run/        the agent's runtime_dir
//!     *.toml      agent configs
//! ```
//!
//! Processes run inside a netns through `ip netns exec NAME ...` (which `exec`s, so the PID
//! we hold is the PID of the program itself); in a cgroup through
//! `sh -c 'echo $$ > CG/cgroup.procs && exec "$@"'`; as another user through `setpriv`.
//!
//! Everything is cleaned up by `Drop` impls, also when a test panics: processes this harness
//! started are SIGKILLed by PID and reaped, agent configs are detached, child cgroups are
//! emptied (into the root `cgroup.procs`) and removed, bpffs/cgroup2 are unmounted and the
//! netns deleted. When a test panics, the agent's and the servers' logs are printed.
//!
//! # Running
//!
//! ```text
//! cargo build                                   # builds target/debug/interceptor
//! cargo test -p interceptor-tests               # as root (needs netns, bpf, mounts)
//! ```
//!
//! Environment: `INTERCEPTOR_BIN` (the agent binary; default
//! `<workspace>/target/debug/interceptor`), `INTERCEPTOR_TESTPEER_BIN` (default: next to the
//! test executable), `INTERCEPTOR_TESTS_ALLOW_SKIP=1` (skip instead of failing without
//! privileges).
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{BufRead, BufReader, Read},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::Value;

pub use serde_json::json;

/// Default timeout for waits on events.
pub const WAIT: Duration = Duration::from_secs(20);

pub const SERVER_IP: &str = "10.213.1.1";
pub const CLIENT_IP: &str = "10.213.1.2";
pub const SERVER_IP6: &str = "fd00:213::1";
pub const CLIENT_IP6: &str = "fd00:213::2";

// ------------------------------------------------------------------------------------------
// Binaries and small process helpers

/// The workspace root (parent of this crate's manifest dir).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate lives inside the workspace")
        .to_path_buf()
}

/// The `interceptor` binary under test; panics with a clear message when it is missing.
pub fn interceptor_bin() -> PathBuf {
    let path = std::env::var_os("INTERCEPTOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/debug/interceptor"));
    if !path.is_file() {
        panic!(
            "interceptor binary not found at {} (set INTERCEPTOR_BIN, or run `cargo build` \
             first)",
            path.display()
        );
    }
    path
}

/// The `testpeer` binary (built by cargo next to the test executables).
pub fn testpeer_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("INTERCEPTOR_TESTPEER_BIN") {
        return PathBuf::from(p);
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        // target/debug/deps/l4-<hash> -> target/debug/testpeer
        if let Some(dir) = exe.parent().and_then(Path::parent) {
            candidates.push(dir.join("testpeer"));
        }
        if let Some(dir) = exe.parent() {
            candidates.push(dir.join("testpeer"));
        }
    }
    candidates.push(workspace_root().join("target/debug/testpeer"));
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "testpeer binary not found (looked at {candidates:?}); run `cargo test -p \
                 interceptor-tests` or set INTERCEPTOR_TESTPEER_BIN"
            )
        })
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a command to completion, killing it after `timeout`.
pub fn run_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let what = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {what}"))?;
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let t_out = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{what}` did not finish within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    Ok(Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    })
}

/// Runs a short command (e.g. `ip`), failing with its stderr when it fails.
pub fn sh(prog: &str, args: &[&str]) -> Result<String> {
    let out = run_timeout(Command::new(prog).args(args), Duration::from_secs(20))?;
    if !out.status.success() {
        bail!(
            "`{prog} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Privilege gate: `Ok(())` when tests can run; otherwise panics, or (with
/// `INTERCEPTOR_TESTS_ALLOW_SKIP=1`) prints a note and returns `Err(())` so the test can return.
fn privileged_or_skip(test: &str, problem: Option<String>) -> std::result::Result<(), ()> {
    let Some(problem) = problem else {
        return Ok(());
    };
    if std::env::var("INTERCEPTOR_TESTS_ALLOW_SKIP").as_deref() == Ok("1") {
        eprintln!("SKIPPED {test}: {problem} (INTERCEPTOR_TESTS_ALLOW_SKIP=1)");
        return Err(());
    }
    panic!(
        "{test}: these tests need root (CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_BPF): {problem}. \
         Run them as root, or set INTERCEPTOR_TESTS_ALLOW_SKIP=1 to skip them."
    );
}

// ------------------------------------------------------------------------------------------
// Line capture (agent stderr, server stdout)

#[derive(Default)]
struct LinesInner {
    lines: Vec<String>,
    eof: bool,
}

/// Lines read by a background thread from a child's pipe, waitable.
#[derive(Clone, Default)]
pub struct Lines {
    inner: Arc<(Mutex<LinesInner>, Condvar)>,
}

impl Lines {
    fn capture(pipe: impl Read + Send + 'static) -> Lines {
        let lines = Lines::default();
        let l2 = lines.clone();
        thread::spawn(move || {
            let mut r = BufReader::new(pipe);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let s = String::from_utf8_lossy(&buf).trim_end().to_string();
                        let (m, cv) = &*l2.inner;
                        m.lock().expect("lines lock").lines.push(s);
                        cv.notify_all();
                    }
                }
            }
            let (m, cv) = &*l2.inner;
            m.lock().expect("lines lock").eof = true;
            cv.notify_all();
        });
        lines
    }

    pub fn all(&self) -> Vec<String> {
        self.inner.0.lock().expect("lines lock").lines.clone()
    }

    pub fn eof(&self) -> bool {
        self.inner.0.lock().expect("lines lock").eof
    }

    /// Every line that parses as a JSON object.
    pub fn json(&self) -> Vec<Value> {
        self.all()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(Value::is_object)
            .collect()
    }

    /// JSON lines whose `"event"` is `event`.
    pub fn events(&self, event: &str) -> Vec<Value> {
        self.json()
            .into_iter()
            .filter(|v| v["event"] == event)
            .collect()
    }

    /// Waits for a JSON line with `"event" == event` that satisfies `pred`.
    pub fn wait_event(
        &self,
        event: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.inner;
        let mut g = m.lock().expect("lines lock");
        let mut seen = 0;
        loop {
            for l in &g.lines[seen..] {
                if let Ok(v) = serde_json::from_str::<Value>(l) {
                    if v["event"] == event && pred(&v) {
                        return Ok(v);
                    }
                }
            }
            seen = g.lines.len();
            if g.eof {
                bail!("stream ended before a matching {event:?} event");
            }
            let now = Instant::now();
            if now >= deadline {
                bail!("no matching {event:?} event within {timeout:?}");
            }
            g = cv.wait_timeout(g, deadline - now).expect("lines lock").0;
        }
    }

    /// Waits until at least `n` events named `event` were seen.
    pub fn wait_count(&self, event: &str, n: usize, timeout: Duration) -> Result<Vec<Value>> {
        let ok = wait_until(timeout, || self.events(event).len() >= n);
        let got = self.events(event);
        if !ok {
            bail!(
                "expected {n} {event:?} events within {timeout:?}, got {}",
                got.len()
            );
        }
        Ok(got)
    }
}

/// A child process this harness started; SIGKILLed (by PID, via `Child::kill`) and reaped on
/// drop.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub stdout: Lines,
    pub stderr: Lines,
    exit: Option<ExitStatus>,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command) -> Result<Proc> {
        let what = describe(&cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawn {what}"))?;
        let stdout = Lines::capture(child.stdout.take().expect("piped"));
        let stderr = Lines::capture(child.stderr.take().expect("piped"));
        Ok(Proc {
            name: name.to_string(),
            child: Some(child),
            stdout,
            stderr,
            exit: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// The exit status, if the process has exited (reaps it).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    self.exit = Some(st);
                }
            }
        }
        self.exit
    }

    /// Waits for exit up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if wait_until(timeout, || self.try_exit().is_some()) {
            // Let the pipe readers drain.
            wait_until(Duration::from_secs(2), || {
                self.stdout.eof() && self.stderr.eof()
            });
            Ok(self.exit.expect("exited"))
        } else {
            bail!(
                "{} (pid {}) still running after {timeout:?}",
                self.name,
                self.pid()
            )
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) -> Result<ExitStatus> {
        if let Some(st) = self.try_exit() {
            return Ok(st);
        }
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
        }
        self.wait_exit(Duration::from_secs(10))
    }

    /// SIGTERM (by PID) and wait up to `timeout`.
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if let Some(st) = self.try_exit() {
            return Ok(st);
        }
        sh("kill", &["-TERM", &self.pid().to_string()])?;
        self.wait_exit(timeout)
    }

    pub fn dump(&self) -> String {
        let mut s = format!("----- {} (pid {}) -----\n", self.name, self.pid());
        for (label, lines) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            for l in lines.all() {
                let _ = writeln!(s, "[{label}] {l}");
            }
        }
        s
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.dump());
        }
        let _ = self.kill9();
    }
}

// ------------------------------------------------------------------------------------------
// Namespaces, mounts, cgroups

/// A network namespace made with `ip netns add`; deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> Result<Netns> {
        sh("ip", &["netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n NAME ARGS...`
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut a = vec!["-n", &self.name];
        a.extend_from_slice(args);
        sh("ip", &a)
    }

    /// A `Command` running `prog` inside this netns.
    pub fn command(&self, prog: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(prog);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = sh("ip", &["netns", "del", &self.name]) {
            eprintln!("cleanup: {e}");
        }
    }
}

/// Joins `a` and `b` with a veth pair (`veth0` in `a`, `veth1` in `b`) on 10.213.1.0/24 and
/// fd00:213::/64.
pub fn veth_pair(a: &Netns, b: &Netns) -> Result<()> {
    a.ip(&[
        "link", "add", "veth0", "type", "veth", "peer", "name", "veth1", "netns", &b.name,
    ])?;
    for (ns, dev, v4, v6) in [
        (a, "veth0", SERVER_IP, SERVER_IP6),
        (b, "veth1", CLIENT_IP, CLIENT_IP6),
    ] {
        ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", dev])?;
        ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{v6}/64"),
            "dev",
            dev,
            "nodad",
        ])?;
        ns.ip(&["link", "set", dev, "up"])?;
    }
    Ok(())
}

/// A filesystem mounted by the harness; unmounted (lazily if busy) on drop.
pub struct Mount {
    pub path: PathBuf,
    mounted: bool,
}

impl Mount {
    pub fn new(fstype: &str, source: &str, path: &Path) -> Result<Mount> {
        std::fs::create_dir_all(path)?;
        sh(
            "mount",
            &["-t", fstype, source, path.to_str().context("utf-8 path")?],
        )?;
        Ok(Mount {
            path: path.to_path_buf(),
            mounted: true,
        })
    }

    fn unmount(&mut self) -> bool {
        if !self.mounted {
            return true;
        }
        let p = self.path.to_string_lossy().into_owned();
        if sh("umount", &[&p]).is_ok() || sh("umount", &["-l", &p]).is_ok() {
            self.mounted = false;
        } else {
            eprintln!("cleanup: could not unmount {p}");
        }
        !self.mounted
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// A cgroup made by [`Node::cgroup`].
#[derive(Clone, Debug)]
pub struct Cgroup {
    /// Absolute directory (inside the harness's cgroup2 mount).
    pub dir: PathBuf,
    /// Path relative to the cgroup2 root, e.g. `/it123x4/client` (what the agent reports).
    pub rel: String,
}

impl Cgroup {
    pub fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// Moves `pid` into this cgroup.
    pub fn add_pid(&self, pid: u32) -> Result<()> {
        std::fs::write(self.procs(), pid.to_string())
            .with_context(|| format!("move {pid} into {}", self.rel))
    }
}

/// cgroup2 mount plus the cgroups made under it; emptied and removed on drop.
struct Cgroup2 {
    mount: Mount,
    made: Mutex<Vec<PathBuf>>,
}

impl Cgroup2 {
    fn cleanup(&mut self) -> bool {
        let root_procs = self.mount.path.join("cgroup.procs");
        let made = std::mem::take(&mut *self.made.lock().expect("cgroup lock"));
        let mut ok = true;
        for dir in made.iter().rev() {
            let removed = wait_until(Duration::from_secs(5), || {
                if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                    for pid in procs.split_whitespace() {
                        let _ = std::fs::write(&root_procs, pid);
                    }
                }
                std::fs::remove_dir(dir).is_ok() || !dir.exists()
            });
            if !removed {
                eprintln!("cleanup: could not remove cgroup {}", dir.display());
                ok = false;
            }
        }
        ok && self.mount.unmount()
    }
}

// ------------------------------------------------------------------------------------------
// The node

static NEXT_NODE: AtomicU32 = AtomicU32::new(0);

/// One service in an agent config.
#[derive(Clone, Debug)]
pub struct ServiceCfg {
    pub name: String,
    pub port: u16,
    pub address: Option<String>,
    /// Raw TOML for the rest of the `[[services]]` table (mode, tls, upstream, limits...).
    /// Empty means `mode = "tcp"`: the L4 tests relay raw bytes.
    pub extra: String,
}

/// An agent config; [`Node::agent_config`] fills in paths and a unique instance.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub instance: String,
    pub bpffs: PathBuf,
    pub cgroup2: PathBuf,
    pub cgroup_path: String,
    pub listen_port: u16,
    pub runtime_dir: PathBuf,
    pub grace_period_ms: u64,
    pub connect_timeout_ms: u64,
    pub services: Vec<ServiceCfg>,
    /// Raw TOML appended to the `[agent]` table (for negative tests).
    pub extra_agent_toml: String,
    /// The agent's state directory (audit database, pseudonym keys).
    pub state_dir: PathBuf,
    /// Raw TOML for the `[audit]` table (its `signing_key` is set to a file in the node).
    pub audit_toml: String,
    /// The audit signing key file.
    pub audit_key: PathBuf,
    /// Where [`Node::write_config`] writes it.
    pub path: PathBuf,
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("string")
}

impl AgentConfig {
    pub fn service(mut self, name: &str, port: u16) -> Self {
        self.services.push(ServiceCfg {
            name: name.into(),
            port,
            address: None,
            extra: String::new(),
        });
        self
    }

    pub fn service_at(mut self, name: &str, port: u16, address: &str) -> Self {
        self.services.push(ServiceCfg {
            name: name.into(),
            port,
            address: Some(address.into()),
            extra: String::new(),
        });
        self
    }

    /// An MCP-aware service; `extra` is raw TOML appended to its table (tls, upstream...).
    pub fn mcp_service(mut self, name: &str, port: u16, extra: &str) -> Self {
        self.services.push(ServiceCfg {
            name: name.into(),
            port,
            address: None,
            extra: format!("mode = \"mcp\"\n{extra}"),
        });
        self
    }

    pub fn to_toml(&self) -> String {
        let p = |p: &Path| toml_str(&p.to_string_lossy());
        let mut s = String::from("[agent]\n");
        let _ = writeln!(s, "instance = {}", toml_str(&self.instance));
        let _ = writeln!(s, "bpffs = {}", p(&self.bpffs));
        let _ = writeln!(s, "cgroup2 = {}", p(&self.cgroup2));
        let _ = writeln!(s, "cgroup_path = {}", toml_str(&self.cgroup_path));
        let _ = writeln!(s, "listen_port = {}", self.listen_port);
        let _ = writeln!(s, "runtime_dir = {}", p(&self.runtime_dir));
        let _ = writeln!(s, "grace_period_ms = {}", self.grace_period_ms);
        let _ = writeln!(s, "connect_timeout_ms = {}", self.connect_timeout_ms);
        s.push_str("log_format = \"json\"\n");
        let _ = writeln!(s, "state_dir = {}", p(&self.state_dir));
        s.push_str(&self.extra_agent_toml);
        if !s.ends_with('\n') {
            s.push('\n');
        }
        s.push_str("\n[audit]\n");
        let _ = writeln!(s, "signing_key = {}", p(&self.audit_key));
        s.push_str(&self.audit_toml);
        if !s.ends_with('\n') {
            s.push('\n');
        }
        for svc in &self.services {
            s.push_str("\n[[services]]\n");
            let _ = writeln!(s, "name = {}", toml_str(&svc.name));
            let _ = writeln!(s, "port = {}", svc.port);
            if let Some(a) = &svc.address {
                let _ = writeln!(s, "address = {}", toml_str(a));
            }
            if svc.extra.is_empty() {
                s.push_str("mode = \"tcp\"\n");
            } else {
                s.push_str(&svc.extra);
                if !s.ends_with('\n') {
                    s.push('\n');
                }
            }
        }
        s
    }
}

/// Options for [`Node::client`].
#[derive(Clone, Debug)]
pub struct ClientOpts {
    pub bytes: u64,
    pub expect: Option<u64>,
    pub bind_any: bool,
    pub cgroup: Option<Cgroup>,
    /// Run as (uid, gid) via `setpriv`.
    pub user: Option<(u32, u32)>,
    pub timeout: Duration,
    /// Pause between connecting and sending (keeps the connection in flight).
    pub pause: Duration,
}

impl Default for ClientOpts {
    fn default() -> Self {
        ClientOpts {
            bytes: 4096,
            expect: None,
            bind_any: false,
            cgroup: None,
            user: None,
            timeout: Duration::from_secs(30),
            pause: Duration::ZERO,
        }
    }
}

impl ClientOpts {
    pub fn bytes(n: u64) -> Self {
        ClientOpts {
            bytes: n,
            ..Default::default()
        }
    }
}

/// What a `testpeer client` run reported.
#[derive(Clone, Debug)]
pub struct ClientResult {
    /// PID of the process we spawned (the client itself: `ip netns exec`, `sh` and `setpriv`
    /// all `exec`).
    pub pid: u32,
    pub exit_code: Option<i32>,
    /// The JSON result line (Null when the client printed none).
    pub json: Value,
    pub stderr: String,
}

impl ClientResult {
    pub fn ok(&self) -> bool {
        self.json["ok"] == true && self.exit_code == Some(0)
    }
    pub fn refused(&self) -> bool {
        self.json["error_kind"] == "ConnectionRefused" && self.exit_code == Some(2)
    }
    pub fn peer(&self) -> String {
        self.json["peer"].as_str().unwrap_or_default().to_string()
    }
    pub fn local(&self) -> String {
        self.json["local"].as_str().unwrap_or_default().to_string()
    }
    pub fn received(&self) -> u64 {
        self.json["received"].as_u64().unwrap_or(0)
    }
    pub fn sent(&self) -> u64 {
        self.json["sent"].as_u64().unwrap_or(0)
    }
    #[track_caller]
    pub fn assert_ok(&self) -> &Self {
        assert!(self.ok(), "client failed: {self:?}");
        self
    }
    #[track_caller]
    pub fn assert_refused(&self) -> &Self {
        assert!(self.refused(), "expected ECONNREFUSED, got: {self:?}");
        self
    }
}

/// A running `testpeer server`.
pub struct Server {
    pub proc: Proc,
}

impl Server {
    /// Every `accepted` event so far.
    pub fn accepted(&self) -> Vec<Value> {
        self.proc.stdout.events("accepted")
    }
    /// Peers of every accepted connection.
    pub fn accepted_peers(&self) -> Vec<String> {
        self.accepted()
            .iter()
            .filter_map(|v| v["peer"].as_str().map(str::to_string))
            .collect()
    }
    pub fn wait_accepted(&self, n: usize) -> Result<Vec<Value>> {
        self.proc.stdout.wait_count("accepted", n, WAIT)
    }
    /// `closed` events (per connection: bytes_in, bytes_out).
    pub fn closed(&self) -> Vec<Value> {
        self.proc.stdout.events("closed")
    }
}

/// A fake node: server netns + client netns joined by veth, private bpffs, cgroup2 mount.
/// See the crate docs.
pub struct Node {
    pub id: String,
    pub test: String,
    pub dir: PathBuf,
    port_base: u16,
    configs: Mutex<Vec<PathBuf>>,
    cgroup2: Cgroup2,
    bpffs: Mount,
    pub server: Netns,
    pub client: Netns,
}

impl Node {
    /// Builds the node for test `test`. Returns `None` (after printing a note) only when
    /// privileges are missing and `INTERCEPTOR_TESTS_ALLOW_SKIP=1`; panics on any other
    /// failure.
    pub fn new(test: &str) -> Option<Node> {
        let problem = match effective_uid() {
            Some(0) => None,
            Some(uid) => Some(format!("running as uid {uid}, not root")),
            None => Some("cannot read /proc/self/status".to_string()),
        };
        privileged_or_skip(test, problem).ok()?;

        let idx = NEXT_NODE.fetch_add(1, Ordering::SeqCst);
        let id = format!("it{}x{}", std::process::id(), idx);
        let server = match Netns::new(&format!("{id}-srv")) {
            Ok(ns) => ns,
            Err(e) => {
                privileged_or_skip(test, Some(format!("cannot create a netns: {e:#}"))).ok()?;
                unreachable!("privileged_or_skip returns Ok only without a problem")
            }
        };
        match Node::build(test, id, idx, server) {
            Ok(n) => Some(n),
            Err(e) => panic!("{test}: cannot build the fake node: {e:#}"),
        }
    }

    fn build(test: &str, id: String, idx: u32, server: Netns) -> Result<Node> {
        let client = Netns::new(&format!("{id}-cli"))?;
        veth_pair(&server, &client)?;
        let dir = std::env::temp_dir().join("interceptor-tests").join(&id);
        std::fs::create_dir_all(dir.join("run"))?;
        let bpffs = Mount::new("bpf", "bpf", &dir.join("bpf"))?;
        let cg_mount = Mount::new("cgroup2", "none", &dir.join("cg2"))?;
        let cgroup2 = Cgroup2 {
            mount: cg_mount,
            made: Mutex::new(Vec::new()),
        };
        let node = Node {
            port_base: 20_000 + (idx % 2000) as u16 * 20,
            id,
            test: test.to_string(),
            dir,
            configs: Mutex::new(Vec::new()),
            cgroup2,
            bpffs,
            server,
            client,
        };
        // The node's own cgroup subtree on the (shared) unified hierarchy.
        node.mkcg(&format!("/{}", node.id))?;
        Ok(node)
    }

    /// A port unique to this node (`k` < 20).
    pub fn port(&self, k: u16) -> u16 {
        assert!(k < 20, "port index out of the node's range");
        self.port_base + k
    }

    pub fn bpffs(&self) -> &Path {
        &self.bpffs.path
    }

    pub fn cgroup2(&self) -> &Path {
        &self.cgroup2.mount.path
    }

    fn mkcg(&self, rel: &str) -> Result<Cgroup> {
        let dir = self.cgroup2().join(rel.trim_start_matches('/'));
        std::fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        self.cgroup2
            .made
            .lock()
            .expect("cgroup lock")
            .push(dir.clone());
        Ok(Cgroup {
            dir,
            rel: rel.to_string(),
        })
    }

    /// Creates the child cgroup `/<node id>/<name>`.
    pub fn cgroup(&self, name: &str) -> Cgroup {
        self.mkcg(&format!("/{}/{name}", self.id))
            .expect("create child cgroup")
    }

    /// A config for this node: unique instance, private bpffs/cgroup2/runtime dir, JSON logs,
    /// listen port `port(19)`, no services.
    pub fn agent_config(&self) -> AgentConfig {
        AgentConfig {
            instance: format!("t-{}", self.id),
            bpffs: self.bpffs().to_path_buf(),
            cgroup2: self.cgroup2().to_path_buf(),
            cgroup_path: "/".into(),
            listen_port: self.port(19),
            runtime_dir: self.dir.join("run"),
            grace_period_ms: 3000,
            connect_timeout_ms: 2000,
            services: Vec::new(),
            extra_agent_toml: String::new(),
            state_dir: self.dir.join("state"),
            audit_toml: String::new(),
            audit_key: self.dir.join("keys/audit-signing.key"),
            path: self.dir.join("agent.toml"),
        }
    }

    /// Writes `cfg` to `cfg.path` and remembers it for cleanup (detach).
    pub fn write_config(&self, cfg: &AgentConfig) -> PathBuf {
        std::fs::write(&cfg.path, cfg.to_toml()).expect("write agent config");
        let mut c = self.configs.lock().expect("configs lock");
        if !c.contains(&cfg.path) {
            c.push(cfg.path.clone());
        }
        cfg.path.clone()
    }

    /// The pin directory of `cfg`'s instance.
    pub fn pin_dir(&self, cfg: &AgentConfig) -> PathBuf {
        cfg.bpffs.join("interceptor").join(&cfg.instance)
    }

    /// A command for `prog` in `ns`, optionally in `cgroup` and as `user`.
    pub fn command_in(
        &self,
        ns: &Netns,
        cgroup: Option<&Cgroup>,
        user: Option<(u32, u32)>,
        prog: &Path,
    ) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns.name]);
        if let Some(cg) = cgroup {
            c.args(["sh", "-c", "echo $$ > \"$1\" && shift && exec \"$@\"", "sh"])
                .arg(cg.procs());
        }
        if let Some((uid, gid)) = user {
            c.arg("setpriv")
                .arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .arg("--clear-groups");
        }
        c.arg(prog);
        c
    }

    /// Starts `testpeer server` in `ns` listening on every address in `listen`.
    pub fn server(&self, ns: &Netns, listen: &[&str], mode: &str) -> Server {
        self.server_with(ns, listen, mode, &[])
    }

    /// [`Node::server`] with extra `testpeer server` arguments (e.g. `--keep-alive-ms`).
    pub fn server_with(&self, ns: &Netns, listen: &[&str], mode: &str, extra: &[&str]) -> Server {
        let mut cmd = self.command_in(ns, None, None, &testpeer_bin());
        cmd.arg("server").args(["--mode", mode]).args(extra);
        for l in listen {
            cmd.args(["--listen", l]);
        }
        let proc = Proc::spawn(&format!("server {listen:?}"), cmd).expect("spawn server");
        let srv = Server { proc };
        if let Err(e) = srv.proc.stdout.wait_event("listening", WAIT, |_| true) {
            panic!(
                "server {listen:?} did not start: {e:#}\n{}",
                srv.proc.dump()
            );
        }
        srv
    }

    /// Runs `testpeer client --connect addr` in `ns` to completion.
    pub fn client(&self, ns: &Netns, addr: &str, opts: &ClientOpts) -> ClientResult {
        let mut cmd = self.command_in(ns, opts.cgroup.as_ref(), opts.user, &testpeer_bin());
        cmd.args(["client", "--connect", addr])
            .args(["--bytes", &opts.bytes.to_string()])
            .args(["--timeout-ms", &opts.timeout.as_millis().to_string()]);
        if let Some(e) = opts.expect {
            cmd.args(["--expect", &e.to_string()]);
        }
        if opts.bind_any {
            cmd.arg("--bind-any");
        }
        if !opts.pause.is_zero() {
            cmd.args(["--pause-ms", &opts.pause.as_millis().to_string()]);
        }
        let mut proc = Proc::spawn(&format!("client {addr}"), cmd).expect("spawn client");
        let pid = proc.pid();
        let status = proc
            .wait_exit(opts.timeout + Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("client {addr}: {e:#}"));
        let json = proc
            .stdout
            .json()
            .into_iter()
            .rfind(|v| v.get("ok").is_some())
            .unwrap_or(Value::Null);
        ClientResult {
            pid,
            exit_code: status.code(),
            json,
            stderr: proc.stderr.all().join("\n"),
        }
    }

    /// Client in the client netns ("remote host").
    pub fn remote_client(&self, addr: &str, opts: &ClientOpts) -> ClientResult {
        self.client(&self.client, addr, opts)
    }

    /// Client in the server netns ("local process").
    pub fn local_client(&self, addr: &str, opts: &ClientOpts) -> ClientResult {
        self.client(&self.server, addr, opts)
    }

    /// `interceptor ARGS... --config cfg` in the server netns (no timeout surprises: 30 s).
    pub fn cli(&self, cfg: &AgentConfig, args: &[&str]) -> Output {
        let mut cmd = self.server.command(interceptor_bin());
        cmd.args(args).arg("--config").arg(&cfg.path);
        run_timeout(&mut cmd, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("interceptor {args:?}: {e:#}"))
    }

    /// `interceptor ARGS --config CFG`, which must succeed; its standard output.
    #[track_caller]
    pub fn cli_ok(&self, cfg: &AgentConfig, args: &[&str]) -> String {
        let out = self.cli(cfg, args);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "interceptor {args:?} failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    /// Exports the audit log's verifier key (`interceptor audit pubkey --out FILE`) as an
    /// auditor keeps it, and returns FILE (`<node dir>/audit.vkey`).
    #[track_caller]
    pub fn audit_pubkey(&self, cfg: &AgentConfig) -> PathBuf {
        let pubkey = self.dir.join("audit.vkey");
        let path = pubkey.to_str().expect("UTF-8 test directory");
        self.cli_ok(cfg, &["audit", "pubkey", "--out", path]);
        pubkey
    }

    /// `interceptor audit verify [--db DB] --pubkey PUBKEY`: whether it passed, and what it
    /// printed.
    pub fn audit_verify(
        &self,
        cfg: &AgentConfig,
        db: Option<&Path>,
        pubkey: &Path,
    ) -> (bool, String) {
        let mut args = vec!["audit", "verify"];
        if let Some(db) = db {
            args.extend(["--db", db.to_str().expect("UTF-8 path")]);
        }
        args.extend(["--pubkey", pubkey.to_str().expect("UTF-8 path")]);
        let out = self.cli(cfg, &args);
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// `interceptor status --json`, parsed.
    pub fn status(&self, cfg: &AgentConfig) -> Status {
        let out = self.cli(cfg, &["status", "--json"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "interceptor status failed ({}): {}\n{stdout}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let raw: Value = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("status output is not JSON ({e}): {stdout}"));
        let mut st: Status = serde_json::from_value(raw.clone())
            .unwrap_or_else(|e| panic!("unexpected status shape ({e}): {raw}"));
        st.raw = raw;
        st
    }

    /// `interceptor detach`; panics unless it exits 0.
    pub fn detach(&self, cfg: &AgentConfig) {
        let out = self.cli(cfg, &["detach"]);
        assert!(
            out.status.success(),
            "interceptor detach failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts `interceptor run` for `cfg` (written first) and waits for `ready`.
    pub fn start_agent(&self, cfg: &AgentConfig) -> Agent {
        let agent = self.spawn_agent(cfg);
        if let Err(e) = agent
            .proc
            .stderr
            .wait_event("ready", Duration::from_secs(30), |_| true)
        {
            panic!("agent did not become ready: {e:#}\n{}", agent.proc.dump());
        }
        agent
    }

    /// Spawns `interceptor run` for `cfg` without waiting for anything.
    pub fn spawn_agent(&self, cfg: &AgentConfig) -> Agent {
        let path = self.write_config(cfg);
        let mut cmd = self.server.command(interceptor_bin());
        cmd.arg("run").arg("--config").arg(&path);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let proc = Proc::spawn(&format!("agent {}", cfg.instance), cmd).expect("spawn agent");
        Agent { proc }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Processes belong to handles the test owns and are gone by now (they are declared
        // after the node). Remove the programs of every instance this node configured.
        let configs = std::mem::take(&mut *self.configs.lock().expect("configs lock"));
        if interceptor_bin_exists() {
            for cfg in configs {
                let mut cmd = self.server.command(interceptor_bin());
                cmd.arg("detach").arg("--config").arg(&cfg);
                let _ = run_timeout(&mut cmd, Duration::from_secs(20));
            }
        }
        let cg_ok = self.cgroup2.cleanup();
        // Unmounting the bpffs instance drops any pins that are left, releasing the links.
        let bpf_ok = self.bpffs.unmount();
        if cg_ok && bpf_ok {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("cleanup: leaving {} behind", self.dir.display());
        }
        // Netns fields drop after this.
    }
}

fn interceptor_bin_exists() -> bool {
    std::env::var_os("INTERCEPTOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/debug/interceptor"))
        .is_file()
}

// ------------------------------------------------------------------------------------------
// Agent and status

/// A running (or killed) `interceptor run`.
pub struct Agent {
    pub proc: Proc,
}

impl Agent {
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The `ready` event.
    pub fn ready(&self) -> Value {
        self.proc
            .stderr
            .events("ready")
            .into_iter()
            .next()
            .unwrap_or(Value::Null)
    }

    /// Every JSON log line whose `"event"` is `event`.
    pub fn events(&self, event: &str) -> Vec<Value> {
        self.proc.stderr.events(event)
    }

    /// Waits for an `event` matching `pred`; panics (with the log) on timeout.
    #[track_caller]
    pub fn wait_event(&self, event: &str, pred: impl Fn(&Value) -> bool) -> Value {
        match self.proc.stderr.wait_event(event, WAIT, pred) {
            Ok(v) => v,
            Err(e) => panic!("agent: {e:#}"),
        }
    }

    /// The `conn_open` whose `peer` is `peer`.
    #[track_caller]
    pub fn conn_open_from(&self, peer: &str) -> Value {
        self.wait_event("conn_open", |v| v["peer"] == peer)
    }

    /// The `conn_close` for `conn_id`.
    #[track_caller]
    pub fn conn_close(&self, conn_id: &Value) -> Value {
        self.wait_event("conn_close", |v| v["conn_id"] == *conn_id)
    }

    #[track_caller]
    pub fn kill9(&mut self) {
        self.proc.kill9().expect("kill -9 agent");
    }

    /// SIGTERM and wait for exit.
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        self.proc.terminate(timeout)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ProgramStatus {
    pub name: String,
    pub attached: bool,
    pub link_id: Option<u64>,
    pub program_id: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct AgentStatus {
    pub running: bool,
    pub pid: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ServiceStatus {
    pub name: String,
    pub port: u16,
    pub address: Option<String>,
    pub steered: u64,
    pub refused: u64,
    pub local_redirects: u64,
    pub upstream: u64,
}

/// `interceptor status --json`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Status {
    pub instance: String,
    pub pin_dir: Option<String>,
    pub programs: Vec<ProgramStatus>,
    pub agent: AgentStatus,
    pub services: Vec<ServiceStatus>,
    #[serde(skip)]
    pub raw: Value,
}

impl Status {
    /// The counters of service `name`.
    #[track_caller]
    pub fn service(&self, name: &str) -> &ServiceStatus {
        self.services
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("service {name} not in status: {}", self.raw))
    }

    /// name -> link id of every attached program.
    pub fn attached_links(&self) -> BTreeMap<String, Option<u64>> {
        self.programs
            .iter()
            .filter(|p| p.attached)
            .map(|p| (p.name.clone(), p.link_id))
            .collect()
    }
}

// ------------------------------------------------------------------------------------------
// Small helpers for assertions

/// Parses "ip:port".
#[track_caller]
pub fn sockaddr(s: &str) -> SocketAddr {
    s.parse()
        .unwrap_or_else(|e| panic!("not a socket address: {s:?} ({e})"))
}

/// Formats `ip:port`, bracketing IPv6.
pub fn addr(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// Lets stray events (duplicates, loops) show up before counting.
pub fn settle() {
    thread::sleep(Duration::from_millis(500));
}

// ------------------------------------------------------------------------------------------
// MCP peers (official SDKs, installed by scripts/setup-peers.sh)

/// Which official MCP SDK a peer uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sdk {
    /// Python `mcp` 2.x (speaks 2026-07-28 and older revisions).
    Py2,
    /// Python `mcp` 1.x (FastMCP; up to 2025-11-25, legacy SSE).
    Py1,
    /// TypeScript `@modelcontextprotocol/sdk`.
    Node,
}

impl Sdk {
    fn program(self, role: &str) -> (PathBuf, Vec<String>) {
        let peers = workspace_root().join("tests/peers");
        match self {
            Sdk::Py2 | Sdk::Py1 => {
                let (venv, prefix) = if self == Sdk::Py2 {
                    (".venv-mcp2", "py2")
                } else {
                    (".venv-mcp1", "py1")
                };
                let py = peers.join(venv).join("bin/python");
                assert!(
                    py.exists(),
                    "{} missing: run scripts/setup-peers.sh",
                    py.display()
                );
                (
                    py,
                    vec![
                        peers
                            .join(format!("{prefix}_{role}.py"))
                            .display()
                            .to_string(),
                    ],
                )
            }
            Sdk::Node => {
                let script = peers.join(format!("node/{role}.mjs"));
                assert!(
                    peers.join("node/node_modules").exists(),
                    "node peers missing: run scripts/setup-peers.sh"
                );
                (PathBuf::from("node"), vec![script.display().to_string()])
            }
        }
    }
}

/// A running SDK server; its `READY <url>` line has been seen.
pub struct PeerServer {
    pub proc: Proc,
    pub url: String,
}

/// What an SDK client printed and how it exited.
#[derive(Debug)]
pub struct PeerClient {
    pub exit_code: Option<i32>,
    pub json: Value,
    pub stderr: String,
    /// Everything printed on stdout (`json` is this, parsed).
    pub stdout: String,
}

/// An SDK client started with [`Node::start_mcp_client`], still running or finished.
pub struct RunningClient {
    pub proc: Proc,
    sdk: Sdk,
}

impl RunningClient {
    /// Whether the client is still running.
    pub fn running(&mut self) -> bool {
        self.proc.try_exit().is_none()
    }

    /// Waits for the client to finish and returns what it printed.
    pub fn wait(mut self, timeout: Duration) -> PeerClient {
        let sdk = self.sdk;
        let status = self
            .proc
            .wait_exit(timeout)
            .unwrap_or_else(|e| panic!("{sdk:?} client: {e:#}\n{}", self.proc.dump()));
        let out = self.proc.stdout.all().join("\n");
        PeerClient {
            exit_code: status.code(),
            json: serde_json::from_str(&out).unwrap_or(Value::Null),
            stderr: self.proc.stderr.all().join("\n"),
            stdout: out,
        }
    }
}

impl PeerClient {
    #[track_caller]
    pub fn assert_ok(&self) -> &Value {
        assert!(
            self.exit_code == Some(0) && self.json["ok"] == true,
            "MCP client failed (exit {:?}): {}\nstderr:\n{}\nstdout (first 2000 bytes):\n{}",
            self.exit_code,
            self.json,
            self.stderr,
            self.stdout.chars().take(2000).collect::<String>()
        );
        &self.json
    }
}

impl Node {
    /// Starts an SDK server in the server netns and waits for it to listen.
    pub fn mcp_server(&self, sdk: Sdk, port: u16, args: &[&str]) -> PeerServer {
        let (prog, mut argv) = sdk.program("server");
        argv.extend(
            ["--host", "0.0.0.0", "--port", &port.to_string()]
                .iter()
                .map(|s| s.to_string()),
        );
        if sdk != Sdk::Node {
            argv.push("--no-dns-rebinding-protection".into());
        }
        argv.extend(args.iter().map(|s| s.to_string()));
        let mut cmd = self.server.command(&prog);
        cmd.args(&argv);
        let proc = Proc::spawn(&format!("{sdk:?} server"), cmd).expect("spawn MCP server");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(l) = proc.stdout.all().iter().find(|l| l.starts_with("READY ")) {
                let url = l.trim_start_matches("READY ").to_string();
                return PeerServer { proc, url };
            }
            if Instant::now() > deadline || proc.stdout.eof() {
                panic!("{sdk:?} server did not become ready:\n{}", proc.dump());
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs an SDK client scenario in `ns` to completion.
    pub fn mcp_client(&self, ns: &Netns, sdk: Sdk, url: &str, args: &[&str]) -> PeerClient {
        self.start_mcp_client(ns, sdk, url, args)
            .wait(Duration::from_secs(120))
    }

    /// Starts an SDK client scenario in `ns` and returns while it runs.
    pub fn start_mcp_client(
        &self,
        ns: &Netns,
        sdk: Sdk,
        url: &str,
        args: &[&str],
    ) -> RunningClient {
        let (prog, mut argv) = sdk.program("client");
        argv.extend(["--url".to_string(), url.to_string()]);
        argv.extend(args.iter().map(|s| s.to_string()));
        let mut cmd = ns.command(&prog);
        cmd.args(&argv);
        let proc = Proc::spawn(&format!("{sdk:?} client"), cmd).expect("spawn MCP client");
        RunningClient { proc, sdk }
    }

    /// `interceptor ARGS... --config cfg` in the server netns as `user` (uid, gid; no
    /// supplementary groups), with extra environment variables.
    pub fn cli_as(
        &self,
        cfg: &AgentConfig,
        user: Option<(u32, u32)>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Output {
        let mut cmd = self.command_in(&self.server, None, user, &interceptor_bin());
        cmd.args(args).arg("--config").arg(&cfg.path);
        for (k, v) in env {
            cmd.env(k, v);
        }
        run_timeout(&mut cmd, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("interceptor {args:?}: {e:#}"))
    }

    /// `testpeer webhook` in the server netns, listening on `listen`; waits until it is bound.
    pub fn webhook_receiver(&self, listen: &str) -> Proc {
        let mut cmd = self.server.command(testpeer_bin());
        cmd.args(["webhook", "--listen", listen]);
        let proc = Proc::spawn("webhook receiver", cmd).expect("spawn webhook receiver");
        if let Err(e) = proc.stdout.wait_event("listening", WAIT, |_| true) {
            panic!("webhook receiver did not start: {e:#}\n{}", proc.dump());
        }
        proc
    }

    /// `testpeer raw` from `ns`: sends `data` (\r\n escapes allowed) and returns the reply
    /// (read until one whole response, the peer's close, or 3 s).
    pub fn raw(&self, ns: &Netns, addr: &str, data: &str) -> (String, bool) {
        self.raw_repeat(ns, addr, data, 1)
    }

    /// `raw` as a local process of `user` (uid, gid) in the server netns.
    pub fn raw_as(&self, user: (u32, u32), addr: &str, data: &str) -> (String, bool) {
        let mut cmd = self.command_in(&self.server, None, Some(user), &testpeer_bin());
        cmd.args([
            "raw",
            "--connect",
            addr,
            "--data",
            data,
            "--wait-ms",
            "3000",
        ]);
        let out = run_timeout(&mut cmd, Duration::from_secs(20)).expect("testpeer raw");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (
            v["response"].as_str().unwrap_or("").to_string(),
            v["closed"].as_bool().unwrap_or(false),
        )
    }

    /// Sends `data` `n` times on one connection and reads until close or 3 s.
    pub fn raw_repeat(&self, ns: &Netns, addr: &str, data: &str, n: u32) -> (String, bool) {
        let mut cmd = ns.command(testpeer_bin());
        cmd.args([
            "raw",
            "--connect",
            addr,
            "--data",
            data,
            "--wait-ms",
            "3000",
        ]);
        cmd.args(["--repeat", &n.to_string()]);
        let out = run_timeout(&mut cmd, Duration::from_secs(20)).expect("testpeer raw");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (
            v["response"].as_str().unwrap_or("").to_string(),
            v["closed"].as_bool().unwrap_or(false),
        )
    }
}

/// A throwaway CA and a server certificate for `names` (DNS) and `ips`, made with openssl.
/// Returns (ca.pem, cert.pem, key.pem).
pub fn make_tls(
    dir: &Path,
    tag: &str,
    names: &[&str],
    ips: &[&str],
) -> (PathBuf, PathBuf, PathBuf) {
    let d = dir.join(format!("tls-{tag}"));
    std::fs::create_dir_all(&d).expect("tls dir");
    let p = |f: &str| d.join(f).display().to_string();
    let ossl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ossl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &p("ca.key"),
        "-out",
        &p("ca.pem"),
        "-days",
        "2",
        "-subj",
        &format!("/CN=interceptor test CA {tag}"),
    ]);
    let mut san: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
    san.extend(ips.iter().map(|i| format!("IP:{i}")));
    std::fs::write(
        d.join("ext.cnf"),
        format!(
            "subjectAltName={}\nextendedKeyUsage=serverAuth\n",
            san.join(",")
        ),
    )
    .expect("ext");
    ossl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &p("key.pem"),
        "-out",
        &p("csr.pem"),
        "-subj",
        &format!("/CN={}", names.first().unwrap_or(&"server")),
    ]);
    ossl(&[
        "x509",
        "-req",
        "-in",
        &p("csr.pem"),
        "-CA",
        &p("ca.pem"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-out",
        &p("cert.pem"),
        "-days",
        "2",
        "-extfile",
        &p("ext.cnf"),
    ]);
    (d.join("ca.pem"), d.join("cert.pem"), d.join("key.pem"))
}

// ------------------------------------------------------------------------------------------
// A real OpenID provider (npm oidc-provider, tests/peers/oidc)

/// oidc-provider running in the server netns over HTTPS, with keys from a file.
pub struct Oidc {
    pub proc: Proc,
    pub issuer: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub port: u16,
}

fn oidc_script(name: &str) -> String {
    workspace_root()
        .join("tests/peers/oidc")
        .join(name)
        .display()
        .to_string()
}

impl Node {
    /// Writes a fresh signing key set (kids `<prefix>-rs256`, ...), keeping `keep`'s keys after.
    pub fn oidc_keys(&self, prefix: &str, keep: Option<&Path>) -> PathBuf {
        let path = self.dir.join(format!("keys-{prefix}.json"));
        let mut cmd = Command::new("node");
        cmd.arg(oidc_script("provider.mjs"))
            .arg("--gen-keys")
            .arg(&path)
            .args(["--kid-prefix", prefix]);
        if let Some(k) = keep {
            cmd.arg("--keep").arg(k);
        }
        let out = run_timeout(&mut cmd, Duration::from_secs(60)).expect("gen keys");
        assert!(
            out.status.success(),
            "gen-keys: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        path
    }

    /// Starts the provider on SERVER_IP:`port` (HTTPS, test admin on) with `keys`.
    pub fn oidc(
        &self,
        port: u16,
        keys: &Path,
        tls: Option<(&Path, &Path, &Path)>,
        extra: &[&str],
    ) -> Oidc {
        let (ca, cert, key) = match tls {
            Some((a, b, c)) => (a.to_path_buf(), b.to_path_buf(), c.to_path_buf()),
            None => make_tls(&self.dir, "oidc", &["oidc.test"], &[SERVER_IP]),
        };
        let issuer = format!("https://{SERVER_IP}:{port}");
        let mut cmd = self.server.command("node");
        cmd.arg(oidc_script("provider.mjs"))
            .args([
                "--host",
                SERVER_IP,
                "--port",
                &port.to_string(),
                "--issuer",
                &issuer,
            ])
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .arg("--keys")
            .arg(keys)
            .arg("--enable-test-admin")
            .args(extra);
        let proc = Proc::spawn("oidc-provider", cmd).expect("spawn oidc-provider");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if proc.stdout.all().iter().any(|l| l.starts_with("READY ")) {
                break;
            }
            if Instant::now() > deadline || proc.stdout.eof() {
                panic!("oidc-provider did not start:\n{}", proc.dump());
            }
            thread::sleep(Duration::from_millis(50));
        }
        Oidc {
            proc,
            issuer,
            ca,
            cert,
            key,
            port,
        }
    }

    /// A real token from the provider (`token.mjs`), requested from the client netns.
    /// `grant`: ("client_credentials", client_id, Some(secret)) or ("authorization_code", client_id, user).
    pub fn oidc_token(&self, idp: &Oidc, args: &[&str], resource: &str) -> String {
        let mut cmd = self.client.command("node");
        cmd.arg(oidc_script("token.mjs"))
            .args(["--issuer", &idp.issuer])
            .arg("--cacert")
            .arg(&idp.ca)
            .args(["--resource", resource])
            .args(args);
        let out = run_timeout(&mut cmd, Duration::from_secs(60)).expect("token.mjs");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        match v["access_token"].as_str() {
            Some(t) if out.status.success() => t.to_string(),
            _ => panic!(
                "no token: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }

    /// A token signed by the provider's current key with arbitrary claims (POST /test/mint).
    pub fn oidc_mint(&self, idp: &Oidc, body: &Value) -> String {
        let mut cmd = self.client.command("curl");
        cmd.args(["-sS", "--fail-with-body", "--cacert"])
            .arg(&idp.ca)
            .args([
                "-H",
                "content-type: application/json",
                "-d",
                &body.to_string(),
            ])
            .arg(format!("{}/test/mint", idp.issuer));
        let out = run_timeout(&mut cmd, Duration::from_secs(30)).expect("mint");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        v["token"]
            .as_str()
            .or(v["access_token"].as_str())
            .map(str::to_string)
            .unwrap_or_else(|| panic!("mint failed: {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// `curl` from the client netns; returns (status, headers, body).
    /// POSTs a JSON-RPC `body` to the MCP endpoint `url` with curl, accepting JSON and SSE,
    /// with more header lines (`"Name: value"`): status, head and body.
    pub fn post_jsonrpc(&self, url: &str, body: &str, headers: &[&str]) -> (u16, String, String) {
        let mut args = vec![
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-H",
            "accept: application/json, text/event-stream",
        ];
        for h in headers {
            args.extend_from_slice(&["-H", h]);
        }
        args.extend_from_slice(&["-d", body, url]);
        self.curl(&args)
    }

    pub fn curl(&self, args: &[&str]) -> (u16, String, String) {
        let mut cmd = self.client.command("curl");
        cmd.args(["-sS", "-D", "-", "-o", "-", "-w", "\n%{http_code}"])
            .args(args);
        let out = run_timeout(&mut cmd, Duration::from_secs(30)).expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (rest, code) = text.rsplit_once('\n').unwrap_or((&text, "0"));
        let (head, body) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
        (
            code.trim().parse().unwrap_or(0),
            head.to_string(),
            body.to_string(),
        )
    }
}

/// An `initialize` request (revision 2025-11-25) as a plain HTTP client sends it.
pub const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"curl","version":"1"}}}"#;

/// The `Mcp-Session-Id` of a response head, if any.
pub fn session_id(head: &str) -> Option<String> {
    head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("mcp-session-id:")
            .map(|v| v.trim().to_string())
    })
}
