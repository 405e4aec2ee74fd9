//! `cargo xtask bench-mcp`: what the MCP-aware data path costs per `tools/call`.
//!
//! One fake node (see `node.rs`), servers on the server host, the load generator in the client
//! host (remote path: veth + sk_lookup). Every figure is measured in the same run against a
//! server on an unprotected port (direct) and against the same kind of server on a protected
//! port (through the agent), and printed with the ratio and the goal. Nothing is asserted.
//!
//! Ports on 10.213.99.1 (protected = listed in the agent's config):
//!
//! | port | server | path |
//! | ---- | ------ | ---- |
//! | 9000 | testpeer mcp-echo (plain) | protected, plain |
//! | 9001 | the same process | direct, plain |
//! | 9010 | xtask bench-mcp-echo (plain) | protected, the agent terminates TLS |
//! | 9011 | the same process, rustls | direct, TLS |
//! | 9020 / 9021 | py2_server.py (mcp 2.3.0, uvicorn) | protected / direct, plain |
//! | 9030 / 9031 | py2_server.py plain / with uvicorn's TLS | protected (agent TLS) / direct TLS |
//! | 9040 | py2_server.py | protected, SSE streams for the memory figure |

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::node::{Node, SERVER_IP, cpu_us, sh, system_busy_us, wait_for_line, workspace_root};

/// Runs a Python peer server with TCP_NODELAY on its connections. `serve_asgi.py` binds its
/// listening socket with `socket.create_server`, whose protocol number is 0; asyncio only sets
/// TCP_NODELAY on sockets whose `proto` is IPPROTO_TCP, so uvicorn answers with Nagle on and
/// every call on a keep-alive connection after the first few waits for the client's delayed
/// ACK (~40 ms, direct and proxied alike). Same server, same code, socket created with
/// IPPROTO_TCP instead.
const PY_NODELAY: &str = r#"import os, runpy, socket, sys
def create_server(address, *, family=socket.AF_INET, backlog=None, reuse_port=False, dualstack_ipv6=False):
    s = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(address)
    s.listen(backlog if backlog is not None else 128)
    return s
socket.create_server = create_server
script = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
runpy.run_path(script, run_name="__main__")
"#;

#[derive(clap::Args)]
pub struct McpArgs {
    /// Seconds of measurement per RPS run against the fast upstream.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds of warm-up before each RPS/latency measurement.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Keep-alive connections in the RPS runs.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Sequential calls per latency run against the fast upstream.
    #[arg(long, default_value_t = 3000)]
    requests: usize,
    /// Seconds of measurement per RPS run against the SDK server.
    #[arg(long, default_value_t = 3.0)]
    py_duration: f64,
    /// Sequential calls per latency run against the SDK server.
    #[arg(long, default_value_t = 400)]
    py_requests: usize,
    /// SSE streams held open for the memory figure (0 = skip).
    #[arg(long, default_value_t = 200)]
    sse_streams: usize,
    /// Load generator threads (1 = a current-thread runtime: the least CPU taken from the
    /// server and the agent, which share the machine with it).
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Skip the official SDK server (py2) rows and the SSE memory figure.
    #[arg(long)]
    no_py: bool,
    /// Skip the TLS rows.
    #[arg(long)]
    no_tls: bool,
    /// Skip the extra run with per-exchange logging at info level.
    #[arg(long)]
    no_info_logging: bool,
    /// Run the Python peer exactly as tests/peers ships it (Nagle on: ~40 ms per keep-alive
    /// call, see PY_NODELAY in xtask/src/mcp.rs) instead of with TCP_NODELAY.
    #[arg(long)]
    py_as_is: bool,
    /// Do not build; use the binaries already in target/release.
    #[arg(long)]
    no_build: bool,
}

/// One side of a comparison: figures from a bench-mcp-client run.
pub(crate) struct Figures(pub(crate) serde_json::Value);

impl Figures {
    pub(crate) fn get(&self, k: &str) -> f64 {
        self.0[k].as_f64().unwrap_or(f64::NAN)
    }
}

struct Bins {
    agent: PathBuf,
    testpeer: PathBuf,
    load: PathBuf,
    py2: PathBuf,
}

struct Bench<'a> {
    node: Node,
    bins: &'a Bins,
    ca: PathBuf,
    args: &'a McpArgs,
    /// Server process per port, for CPU accounting.
    server_pid: HashMap<u16, u32>,
    agent_pid: u32,
    /// `other_cores` of every run.
    other_load: std::cell::RefCell<Vec<f64>>,
}

impl Bench<'_> {
    /// Runs the load generator in the client namespace; returns its (last) JSON line.
    fn client(&self, port: u16, tls: bool, mode: &str, extra: &[String]) -> Result<Figures> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.node.cli()])
            .arg(&self.bins.load)
            .args(["bench-mcp-client", "--addr", &format!("{SERVER_IP}:{port}")])
            .args(["--mode", mode])
            .args(["--threads", &self.args.client_threads.to_string()])
            .args(extra);
        if tls {
            cmd.arg("--tls-ca").arg(&self.ca);
        }
        let what = format!("bench-mcp-client {port} {mode}");
        run_load(
            cmd,
            &what,
            self.server_pid.get(&port).copied(),
            Some(self.agent_pid),
            &self.other_load,
        )
    }

    fn latency(&self, port: u16, tls: bool, n: usize) -> Result<Figures> {
        self.client(
            port,
            tls,
            "latency",
            &[
                "--n".into(),
                n.to_string(),
                "--warmup".into(),
                self.args.warmup.to_string(),
            ],
        )
    }

    fn rps(&self, port: u16, tls: bool, duration: f64) -> Result<Figures> {
        self.client(
            port,
            tls,
            "rps",
            &[
                "--concurrency".into(),
                self.args.concurrency.to_string(),
                "--warmup".into(),
                self.args.warmup.to_string(),
                "--duration".into(),
                duration.to_string(),
            ],
        )
    }

    fn wait_port(&self, port: u16) -> Result<()> {
        self.client(port, false, "wait", &["--timeout".into(), "30".into()])
            .map(|_| ())
    }

    fn py2(&mut self, port: u16, tls: bool) -> Result<PathBuf> {
        let root = workspace_root();
        let out = self.node.dir.join(format!("py2-{port}.out"));
        let err = self.node.dir.join(format!("py2-{port}.err"));
        let script = root.join("tests/peers/py2_server.py").display().to_string();
        let mut args = Vec::new();
        if !self.args.py_as_is {
            let wrapper = self.node.dir.join("py_nodelay.py");
            std::fs::write(&wrapper, PY_NODELAY)?;
            args.push(wrapper.display().to_string());
        }
        args.extend([
            script,
            "--host".into(),
            "0.0.0.0".into(),
            "--port".into(),
            port.to_string(),
            "--no-dns-rebinding-protection".into(),
        ]);
        if tls {
            args.push("--certfile".into());
            args.push(self.node.dir.join("tls/server.pem").display().to_string());
            args.push("--keyfile".into());
            args.push(self.node.dir.join("tls/server.key").display().to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let srv = self.node.srv();
        let py = self.bins.py2.clone();
        let pid = self.node.spawn_in(
            &srv,
            &py,
            &args,
            std::fs::File::create(&out)?.into(),
            std::fs::File::create(&err)?.into(),
        )?;
        self.server_pid.insert(port, pid);
        Ok(out)
    }
}

/// Runs one load-generator command (`bench-mcp-client ...`, already in the client namespace)
/// and returns its (last) JSON line, with the CPU figures added: `other_cores` (CPU taken by
/// processes other than client, server and agent during the run, in cores; also pushed to
/// `other_load`) and, for runs that report `total_calls`, `server_cpu_per_call_us` and
/// `agent_cpu_per_call_us` over the whole run (warm-up included).
/// The median of the figures that were measured (NaN when none was).
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Figures of one configuration over all rounds (latency and RPS runs); each figure is the
/// median over the rounds.
#[derive(Default)]
pub(crate) struct Runs {
    pub(crate) lat: Vec<Figures>,
    pub(crate) rps: Vec<Figures>,
}

impl Runs {
    pub(crate) fn lat(&self, k: &str) -> f64 {
        median(self.lat.iter().map(|f| f.get(k)).collect())
    }
    pub(crate) fn rps(&self, k: &str) -> f64 {
        median(self.rps.iter().map(|f| f.get(k)).collect())
    }
}

pub(crate) fn run_load(
    mut cmd: Command,
    what: &str,
    server_pid: Option<u32>,
    agent_pid: Option<u32>,
    other_load: &std::cell::RefCell<Vec<f64>>,
) -> Result<Figures> {
    let cpu = |pid: Option<u32>| pid.and_then(|p| cpu_us(&p.to_string()).ok());
    let (s0, a0) = (cpu(server_pid), cpu(agent_pid));
    let (t0, busy0) = (Instant::now(), system_busy_us().unwrap_or(0));
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    let (s1, a1) = (cpu(server_pid), cpu(agent_pid));
    let (wall, busy1) = (t0.elapsed(), system_busy_us().unwrap_or(0));
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or("");
    let mut v: serde_json::Value =
        serde_json::from_str(last).with_context(|| format!("{what} output {text:?}"))?;
    // CPU taken by other processes on this machine during the run (other builds, ...),
    // in cores: everything busy minus client, server and agent.
    let ours = v["client_cpu_total_us"].as_f64().unwrap_or(0.0)
        + s1.zip(s0).map_or(0.0, |(b, a)| b.saturating_sub(a) as f64)
        + a1.zip(a0).map_or(0.0, |(b, a)| b.saturating_sub(a) as f64);
    let busy = busy1.saturating_sub(busy0) as f64;
    let other = (busy - ours).max(0.0) / wall.as_micros().max(1) as f64;
    if wall >= Duration::from_secs(1) {
        // (shorter runs: 10 ms ticks make the difference meaningless)
        v["other_cores"] = serde_json::json!(other);
        other_load.borrow_mut().push(other);
    }
    // Server and agent CPU over the whole client run (warm-up included), per call.
    if let Some(calls) = v["total_calls"].as_f64().filter(|&c| c > 0.0) {
        for (k, a, b) in [("server", s0, s1), ("agent", a0, a1)] {
            if let (Some(a), Some(b)) = (a, b) {
                v[format!("{k}_cpu_per_call_us")] =
                    serde_json::json!(b.saturating_sub(a) as f64 / calls);
            }
        }
    }
    Ok(Figures(v))
}

fn vm_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS missing")
}

/// A throwaway CA and a server certificate for 10.213.99.1 (EC P-256), made with openssl.
pub(crate) fn make_certs(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let p = |f: &str| dir.join(f).display().to_string();
    let quiet = |args: &[&str]| -> Result<()> {
        let out = Command::new("openssl").args(args).output()?;
        if !out.status.success() {
            bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    for k in ["ca.key", "server.key"] {
        quiet(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &p(k),
        ])?;
    }
    quiet(&[
        "req",
        "-x509",
        "-new",
        "-key",
        &p("ca.key"),
        "-subj",
        "/CN=interceptor bench CA",
        "-days",
        "2",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-out",
        &p("ca.pem"),
    ])?;
    quiet(&[
        "req",
        "-new",
        "-key",
        &p("server.key"),
        "-subj",
        &format!("/CN={SERVER_IP}"),
        "-out",
        &p("server.csr"),
    ])?;
    std::fs::write(
        dir.join("ext.cnf"),
        format!(
            "subjectAltName=IP:{SERVER_IP}\nbasicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        ),
    )?;
    quiet(&[
        "x509",
        "-req",
        "-in",
        &p("server.csr"),
        "-CA",
        &p("ca.pem"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &p("ext.cnf"),
        "-out",
        &p("server.pem"),
    ])?;
    Ok(())
}

/// One scenario's four runs.
struct Row {
    label: &'static str,
    lat: (Figures, Figures),
    rps: (Figures, Figures),
}

fn print_row(r: &Row, conc: usize) {
    let (d, p) = &r.lat;
    for (k, name) in [("p50_us", "c=1 p50"), ("p99_us", "c=1 p99")] {
        let (a, b) = (d.get(k), p.get(k));
        let goal = if k == "p99_us" {
            let added = b - a;
            format!(
                "goal <= 1 ms added: {}",
                if added <= 1000.0 { "met" } else { "MISSED" }
            )
        } else {
            String::new()
        };
        println!(
            "{:<34} {:>10.1}us {:>10.1}us {:>6.2}x {:>+9.1}us  {goal}",
            format!("{} {name}", r.label),
            a,
            b,
            b / a,
            b - a
        );
    }
    let (d, p) = &r.rps;
    let (a, b) = (d.get("rps"), p.get("rps"));
    println!(
        "{:<34} {:>10.0}/s {:>10.0}/s {:>6.2}x {:>11}  goal >= 0.9x: {}",
        format!("{} c={conc} RPS", r.label),
        a,
        b,
        b / a,
        "",
        if b / a >= 0.9 { "met" } else { "MISSED" }
    );
    for (k, name) in [("p50_us", "p50"), ("p99_us", "p99")] {
        let (a, b) = (d.get(k), p.get(k));
        println!(
            "{:<34} {:>10.1}us {:>10.1}us {:>6.2}x {:>+9.1}us",
            format!("{} c={conc} {name}", r.label),
            a,
            b,
            b / a,
            b - a
        );
    }
}

fn print_cpu(r: &Row) {
    let (d, p) = &r.rps;
    let f = |x: f64| {
        if x.is_nan() {
            "-".to_string()
        } else {
            format!("{x:.1}")
        }
    };
    println!(
        "{:<34} {:>7} {:>7}   {:>7} {:>7}   {:>7} {:>7}   {:>4.0}% {:>4.0}%   {:>4.0}% {:>4.0}%",
        r.label,
        f(d.get("client_cpu_per_call_us")),
        f(p.get("client_cpu_per_call_us")),
        f(d.get("server_cpu_per_call_us")),
        f(p.get("server_cpu_per_call_us")),
        f(d.get("agent_cpu_per_call_us")),
        f(p.get("agent_cpu_per_call_us")),
        d.get("client_cpu_share") * 100.0,
        p.get("client_cpu_share") * 100.0,
        d.get("other_cores") * 100.0,
        p.get("other_cores") * 100.0,
    );
}

pub fn bench_mcp(args: McpArgs) -> Result<()> {
    let root = workspace_root();
    if !args.no_build {
        // The load generator is this crate's release build: a debug client would be the
        // bottleneck and hide the proxy's cost.
        sh(
            "cargo",
            &[
                "build",
                "--release",
                "-p",
                "interceptor-user",
                "-p",
                "interceptor-tests",
                "-p",
                "xtask",
            ],
        )?;
    }
    let rel = root.join("target/release");
    let bins = Bins {
        agent: rel.join("interceptor"),
        testpeer: rel.join("testpeer"),
        load: rel.join("xtask"),
        py2: root.join("tests/peers/.venv-mcp2/bin/python"),
    };
    for b in [&bins.agent, &bins.testpeer, &bins.load] {
        if !b.exists() {
            bail!("{} is missing (drop --no-build)", b.display());
        }
    }
    let with_py = !args.no_py;
    if with_py && !bins.py2.exists() {
        bail!(
            "{} is missing: run scripts/setup-peers.sh (or pass --no-py)",
            bins.py2.display()
        );
    }

    let node = Node::new(bins.agent.clone())?;
    let tls_dir = node.dir.join("tls");
    make_certs(&tls_dir)?;
    let mut b = Bench {
        node,
        bins: &bins,
        ca: tls_dir.join("ca.pem"),
        args: &args,
        server_pid: HashMap::new(),
        agent_pid: 0,
        other_load: Default::default(),
    };
    let srv = b.node.srv();

    // Servers.
    let pid = b.node.spawn_in(
        &srv,
        &bins.testpeer,
        &[
            "server",
            "--mode",
            "mcp-echo",
            "--listen",
            "0.0.0.0:9000",
            "--listen",
            "0.0.0.0:9001",
        ],
        Stdio::null(), // one JSON line per request otherwise
        Stdio::inherit(),
    )?;
    b.server_pid.extend([(9000, pid), (9001, pid)]);
    let cert = tls_dir.join("server.pem").display().to_string();
    let key = tls_dir.join("server.key").display().to_string();
    let pid = b.node.spawn_in(
        &srv,
        &bins.load,
        &[
            "bench-mcp-echo",
            "--listen",
            "0.0.0.0:9010",
            "--tls-listen",
            "0.0.0.0:9011",
            "--cert",
            &cert,
            "--key",
            &key,
        ],
        Stdio::null(),
        Stdio::inherit(),
    )?;
    b.server_pid.extend([(9010, pid), (9011, pid)]);
    let mut ready_files = Vec::new();
    if with_py {
        for (port, tls) in [
            (9020, false),
            (9021, false),
            (9030, false),
            (9031, true),
            (9040, false),
        ] {
            if port == 9040 && args.sse_streams == 0 {
                continue;
            }
            ready_files.push(b.py2(port, tls)?);
        }
    }
    for f in &ready_files {
        wait_for_line(f, "READY", Duration::from_secs(60))?;
    }
    for port in [9000, 9001, 9010, 9011] {
        b.wait_port(port)?;
    }

    let tls_table = format!("[services.tls]\ncerts = [{{ cert = \"{cert}\", key = \"{key}\" }}]\n");
    let mut services = String::from("[[services]]\nname = \"echo\"\nport = 9000\nmode = \"mcp\"\n");
    services += &format!("[[services]]\nname = \"echo-tls\"\nport = 9010\n{tls_table}");
    if with_py {
        services += "[[services]]\nname = \"py2\"\nport = 9020\n";
        services += &format!("[[services]]\nname = \"py2-tls\"\nport = 9030\n{tls_table}");
        services += "[[services]]\nname = \"py2-sse\"\nport = 9040\n";
    }
    b.node.write_agent_config(&services)?;
    let alog = b.node.dir.join("agent.log");
    b.agent_pid = b.node.start_agent("warn,interceptor::agent=info", &alog)?;
    let agent_pid = b.agent_pid;

    // Memory per SSE stream first, before the load runs have grown the agent's heap.
    let mut sse_line = None;
    if with_py && args.sse_streams > 0 {
        eprintln!("bench-mcp: {} SSE streams", args.sse_streams);
        // Warm the path (first connection, first exchange) so the baseline is steady.
        b.latency(9040, false, 20)?;
        std::thread::sleep(Duration::from_millis(300));
        let before = vm_rss_kib(agent_pid)?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &b.node.cli()])
            .arg(&bins.load)
            .args([
                "bench-mcp-client",
                "--addr",
                &format!("{SERVER_IP}:9040"),
                "--mode",
                "sse",
                "--n",
                &args.sse_streams.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("bench-mcp-client sse")?;
        let mut out = BufReader::new(child.stdout.take().context("stdout")?);
        let mut line = String::new();
        out.read_line(&mut line)?;
        let opened: serde_json::Value = serde_json::from_str(line.trim())
            .with_context(|| format!("sse client said {line:?}"))?;
        // Let every stream deliver a couple more events through the agent.
        std::thread::sleep(Duration::from_millis(1500));
        let with = vm_rss_kib(agent_pid)?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(b"done\n");
        }
        line.clear();
        out.read_line(&mut line)?;
        let status = child.wait()?;
        if !status.success() {
            bail!("sse client failed: {status}");
        }
        let closing: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_default();
        std::thread::sleep(Duration::from_millis(1500));
        let after = vm_rss_kib(agent_pid)?;
        // Its tool calls would go on sleeping and sending progress after the client left,
        // taking CPU from the runs below.
        if let Some(pid) = b.server_pid.remove(&9040) {
            b.node.stop(pid, Duration::from_secs(3));
        }
        let n = opened["opened"].as_u64().unwrap_or(0);
        sse_line = Some(format!(
            "SSE streams through the agent: {n} open (POST tools/call slow_progress on py2, \
             {} still open when measured)\n  agent VmRSS {before} KiB -> {with} KiB with the \
             streams open = {:.1} KiB per stream (client and upstream side together); \
             {after} KiB 1.5 s after they closed",
            closing["still_open"],
            (with as f64 - before as f64) / n.max(1) as f64
        ));
    }

    let mut rows = Vec::new();
    let mut scenarios: Vec<(&'static str, u16, u16, bool, usize, f64)> = vec![(
        "fast plain",
        9001,
        9000,
        false,
        args.requests,
        args.duration,
    )];
    if !args.no_tls {
        scenarios.push(("fast TLS", 9011, 9010, true, args.requests, args.duration));
    }
    if with_py {
        scenarios.push((
            "py2 plain",
            9021,
            9020,
            false,
            args.py_requests,
            args.py_duration,
        ));
        if !args.no_tls {
            scenarios.push((
                "py2 TLS",
                9031,
                9030,
                true,
                args.py_requests,
                args.py_duration,
            ));
        }
    }
    for &(label, direct, protected, tls, n, dur) in &scenarios {
        eprintln!("bench-mcp: {label}");
        let lat = (b.latency(direct, tls, n)?, b.latency(protected, tls, n)?);
        let rps = (b.rps(direct, tls, dur)?, b.rps(protected, tls, dur)?);
        rows.push(Row { label, lat, rps });
    }
    let status = b.node.agent_status()?;

    // The same fast plain runs with one JSON log line per exchange (INTERCEPTOR_LOG=info).
    let mut info_row = None;
    if !args.no_info_logging {
        eprintln!("bench-mcp: fast plain with exchange logging at info");
        b.node.stop_agent();
        let ilog = b.node.dir.join("agent-info.log");
        b.agent_pid = b.node.start_agent("info", &ilog)?;
        let lat = (
            b.latency(9001, false, args.requests)?,
            b.latency(9000, false, args.requests)?,
        );
        let rps = (
            b.rps(9001, false, args.duration)?,
            b.rps(9000, false, args.duration)?,
        );
        let lines = std::fs::read_to_string(&ilog)
            .map(|s| s.lines().count())
            .unwrap_or(0);
        info_row = Some((
            Row {
                label: "fast plain, info log",
                lat,
                rps,
            },
            lines,
        ));
    }

    // ---------------------------------------------------------------- report
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    println!();
    println!(
        "interceptor MCP benchmark: tools/call over HTTP/1.1 keep-alive, client netns -> server \
         netns over veth (remote path, sk_lookup); {cpus} CPUs shared by client, servers and agent"
    );
    println!(
        "direct = the same kind of server on an unprotected port, same host, same run; \
         c=1: {} sequential calls (py2: {}), c={}: {} keep-alive connections for {} s (py2: {} s) \
         after {} s warm-up",
        args.requests,
        args.py_requests,
        args.concurrency,
        args.concurrency,
        args.duration,
        args.py_duration,
        args.warmup
    );
    println!(
        "fast = testpeer --mode mcp-echo (plain rows); fast TLS = xtask bench-mcp-echo: direct it \
         terminates TLS itself (rustls), through the agent the agent terminates TLS and forwards \
         plain HTTP to the same process"
    );
    println!(
        "py2 = official Python SDK 2.x server (tests/peers/py2_server.py, uvicorn), 2026-07-28 \
         stateless tools/call echo; py2 TLS direct = uvicorn's own TLS, through the agent = agent \
         TLS + plain upstream; {}",
        if args.py_as_is {
            "run as shipped (Nagle on: ~40 ms per keep-alive call, direct and proxied)"
        } else {
            "run with TCP_NODELAY (serve_asgi.py's socket has proto 0, so asyncio leaves Nagle \
             on: ~40 ms per keep-alive call; --py-as-is to see it)"
        }
    );
    println!("agent log level: warn (no per-exchange log lines) unless the row says info log");
    println!("goals (issue): >= 0.9x direct RPS at concurrency 32, <= 1 ms added p99\n");
    println!(
        "{:<34} {:>12} {:>12} {:>7} {:>11}",
        "measurement", "direct", "interceptor", "ratio", "added"
    );
    for r in &rows {
        print_row(r, args.concurrency);
    }
    if let Some((r, lines)) = &info_row {
        print_row(r, args.concurrency);
        println!(
            "  (info log: {lines} lines written by the agent during these runs, JSON to a file)"
        );
    }
    println!(
        "\nCPU per call in the c={} runs, microseconds (user+sys from /proc/PID/stat, 10 ms ticks; \
         client: measurement window, server and agent: whole run incl. warm-up)",
        args.concurrency
    );
    println!(
        "{:<34} {:>15}   {:>15}   {:>15}   {:>11}   {:>11}",
        "", "client", "server", "agent", "client core", "other load"
    );
    println!(
        "{:<34} {:>7} {:>7}   {:>7} {:>7}   {:>7} {:>7}   {:>5} {:>5}   {:>5} {:>5}",
        "",
        "direct",
        "interc.",
        "direct",
        "interc.",
        "direct",
        "interc.",
        "dir",
        "int",
        "dir",
        "int"
    );
    for r in rows.iter().chain(info_row.as_ref().map(|(r, _)| r)) {
        print_cpu(r);
    }
    let other = b.other_load.borrow();
    let max = other.iter().copied().fold(0.0, f64::max);
    let avg = other.iter().sum::<f64>() / other.len().max(1) as f64;
    println!(
        "(other load = CPU used by processes outside this benchmark while a run went on, in % of \
         one core: {:.0}% on average, {:.0}% at most over all runs{})",
        avg * 100.0,
        max * 100.0,
        if max > 0.2 {
            "; the machine was shared, figures are noisier than they should be"
        } else {
            ""
        }
    );
    if let Some(l) = sse_line {
        println!("\n{l}");
    }
    println!("\n{status}");
    Ok(())
}
