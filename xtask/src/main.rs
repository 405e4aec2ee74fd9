//! Project tasks: `cargo xtask bench` (L4 benchmark against a direct connection).
//!
//! The benchmark builds a fake node out of network namespaces (a server host and a client
//! host joined by veth), runs a small echo/sink server on two ports of the server host, and
//! protects only one of them with the real agent (release build, eBPF attached). Every figure
//! is measured in the same run through the protected port and, as the baseline, through the
//! unprotected one, and printed with the ratio. It is a benchmark, not a test: nothing here
//! asserts a timing.
#![forbid(unsafe_code)]

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Connect latency and throughput through the interceptor vs. a direct connection.
    Bench {
        /// Connections per latency measurement.
        #[arg(long, default_value_t = 2000)]
        connections: usize,
        /// MiB per throughput measurement.
        #[arg(long, default_value_t = 1024)]
        mib: usize,
        /// Use an already built agent binary instead of building the release one.
        #[arg(long)]
        agent: Option<PathBuf>,
    },
    /// (internal) echo/sink server used by the benchmark.
    BenchServer {
        #[arg(long, required = true)]
        listen: Vec<SocketAddr>,
    },
    /// (internal) load generator used by the benchmark; prints one JSON line.
    BenchClient {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        mode: String,
        #[arg(long, default_value_t = 1000)]
        n: usize,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Bench {
            connections,
            mib,
            agent,
        } => bench(connections, mib, agent),
        Cmd::BenchServer { listen } => server(listen),
        Cmd::BenchClient { addr, mode, n } => client(addr, &mode, n),
    }
}

// ------------------------------------------------------------------ server and client

/// First byte of a connection picks the mode: 'e' echo one byte per round, 's' sink (reply
/// with the byte count as 8 bytes after the client's EOF).
fn server(listen: Vec<SocketAddr>) -> Result<()> {
    let mut handles = Vec::new();
    for addr in listen {
        let l = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
        handles.push(std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                std::thread::spawn(move || serve(s));
            }
        }));
    }
    println!("listening");
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

fn serve(mut s: TcpStream) {
    let _ = s.set_nodelay(true);
    let mut mode = [0u8; 1];
    if s.read_exact(&mut mode).is_err() {
        return;
    }
    match mode[0] {
        b'e' => {
            let _ = s.write_all(b"e");
        }
        b's' => {
            let mut buf = vec![0u8; 256 * 1024];
            let mut n: u64 = 0;
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k as u64,
                }
            }
            let _ = s.write_all(&n.to_be_bytes());
        }
        _ => {}
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn client(addr: SocketAddr, mode: &str, n: usize) -> Result<()> {
    match mode {
        // connect + one-byte round trip + close, n times sequentially
        "latency" => {
            let mut us = Vec::with_capacity(n);
            for _ in 0..n {
                let t = Instant::now();
                let mut s = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
                s.set_nodelay(true)?;
                s.write_all(b"e")?;
                let mut b = [0u8; 1];
                s.read_exact(&mut b)?;
                us.push(t.elapsed().as_secs_f64() * 1e6);
            }
            us.sort_by(|a, b| a.total_cmp(b));
            let mean = us.iter().sum::<f64>() / us.len().max(1) as f64;
            println!(
                "{{\"p50_us\":{:.1},\"p99_us\":{:.1},\"mean_us\":{:.1},\"n\":{}}}",
                percentile(&us, 0.5),
                percentile(&us, 0.99),
                mean,
                us.len()
            );
        }
        // one connection, n MiB written, server confirms the count
        "throughput" => {
            let total = (n as u64) << 20;
            let mut s = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
            s.write_all(b"s")?;
            let buf = vec![0x5au8; 256 * 1024];
            let t = Instant::now();
            let mut sent = 0u64;
            while sent < total {
                let k = buf.len().min((total - sent) as usize);
                s.write_all(&buf[..k])?;
                sent += k as u64;
            }
            s.shutdown(Shutdown::Write)?;
            let mut c = [0u8; 8];
            s.read_exact(&mut c)?;
            let secs = t.elapsed().as_secs_f64();
            let got = u64::from_be_bytes(c);
            if got != total {
                bail!("server received {got} bytes, sent {total}");
            }
            println!(
                "{{\"mib_per_s\":{:.1},\"bytes\":{total},\"secs\":{secs:.3}}}",
                total as f64 / (1 << 20) as f64 / secs
            );
        }
        other => bail!("unknown mode {other}"),
    }
    Ok(())
}

// ------------------------------------------------------------------ orchestration

fn sh(cmd: &str, args: &[&str]) -> Result<()> {
    let st = Command::new(cmd)
        .args(args)
        .status()
        .with_context(|| format!("running {cmd}"))?;
    if !st.success() {
        bail!("{cmd} {args:?} failed: {st}");
    }
    Ok(())
}

struct Node {
    id: String,
    dir: PathBuf,
    children: Vec<Child>,
    agent_cfg: Option<PathBuf>,
    agent_bin: PathBuf,
}

impl Node {
    fn srv(&self) -> String {
        format!("{}-srv", self.id)
    }
    fn cli(&self) -> String {
        format!("{}-cli", self.id)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
        for c in &mut self.children {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(cfg) = &self.agent_cfg {
            let _ = Command::new(&self.agent_bin)
                .args(["detach", "--config"])
                .arg(cfg)
                .stdout(Stdio::null())
                .status();
        }
        for m in ["bpf", "cg2"] {
            let _ = Command::new("umount").arg(self.dir.join(m)).status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.srv()])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.cli()])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_for_line(path: &Path, needle: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::fs::read_to_string(path)
            .map(|s| s.contains(needle))
            .unwrap_or(false)
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "timed out waiting for {needle:?} in {}:\n{}",
        path.display(),
        std::fs::read_to_string(path).unwrap_or_default()
    )
}

fn run_client(netns: &str, addr: &str, mode: &str, n: usize) -> Result<Figures> {
    let me = std::env::current_exe()?;
    let out = Command::new("ip")
        .args(["netns", "exec", netns])
        .arg(&me)
        .args([
            "bench-client",
            "--addr",
            addr,
            "--mode",
            mode,
            "--n",
            &n.to_string(),
        ])
        .output()
        .context("running bench client")?;
    if !out.status.success() {
        bail!(
            "bench client {addr} {mode} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(Figures(
        serde_json::from_slice(&out.stdout).context("bench client output")?,
    ))
}

struct Figures(serde_json::Value);
impl Figures {
    fn get(&self, k: &str) -> Result<f64> {
        self.0[k]
            .as_f64()
            .with_context(|| format!("{k} missing in {}", self.0))
    }
}

fn bench(connections: usize, mib: usize, agent: Option<PathBuf>) -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let agent_bin = match agent {
        Some(a) => a,
        None => {
            sh(
                "cargo",
                &[
                    "build",
                    "--release",
                    "-p",
                    "interceptor-user",
                    "--bin",
                    "interceptor",
                ],
            )?;
            root.join("target/release/interceptor")
        }
    };
    let id = format!("icb{}", std::process::id() % 100000);
    let dir = std::env::temp_dir().join(&id);
    let mut node = Node {
        id: id.clone(),
        dir: dir.clone(),
        children: Vec::new(),
        agent_cfg: None,
        agent_bin: agent_bin.clone(),
    };
    std::fs::create_dir_all(dir.join("bpf"))?;
    std::fs::create_dir_all(dir.join("cg2"))?;
    sh(
        "mount",
        &["-t", "bpf", "bpf", &dir.join("bpf").display().to_string()],
    )?;
    sh(
        "mount",
        &[
            "-t",
            "cgroup2",
            "none",
            &dir.join("cg2").display().to_string(),
        ],
    )?;
    let (srv, cli) = (node.srv(), node.cli());
    sh("ip", &["netns", "add", &srv])?;
    sh("ip", &["netns", "add", &cli])?;
    let (va, vb) = (format!("{id}a"), format!("{id}b"));
    sh(
        "ip",
        &[
            "link", "add", &va, "netns", &srv, "type", "veth", "peer", "name", &vb, "netns", &cli,
        ],
    )?;
    sh(
        "ip",
        &["-n", &srv, "addr", "add", "10.213.99.1/24", "dev", &va],
    )?;
    sh(
        "ip",
        &["-n", &cli, "addr", "add", "10.213.99.2/24", "dev", &vb],
    )?;
    for (ns, dev) in [(&srv, &va), (&cli, &vb)] {
        sh("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        sh("ip", &["-n", ns, "link", "set", dev, "up"])?;
    }

    let me = std::env::current_exe()?;
    let slog = dir.join("server.log");
    node.children.push(
        Command::new("ip")
            .args(["netns", "exec", &srv])
            .arg(&me)
            .args([
                "bench-server",
                "--listen",
                "0.0.0.0:9000",
                "--listen",
                "0.0.0.0:9001",
            ])
            .stdout(std::fs::File::create(&slog)?)
            .spawn()?,
    );
    wait_for_line(&slog, "listening", Duration::from_secs(10))?;

    let cfg = dir.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\ninstance = \"{id}\"\nbpffs = \"{b}\"\ncgroup2 = \"{c}\"\nruntime_dir = \"{r}\"\n\
             log_format = \"json\"\nlisten_port = 15001\n[[services]]\nname = \"bench\"\nport = 9000\n",
            b = dir.join("bpf").display(),
            c = dir.join("cg2").display(),
            r = dir.join("run").display(),
        ),
    )?;
    node.agent_cfg = Some(cfg.clone());
    let alog = dir.join("agent.log");
    node.children.push(
        Command::new("ip")
            .args(["netns", "exec", &srv])
            .arg(&agent_bin)
            .args(["run", "--config"])
            .arg(&cfg)
            .env("INTERCEPTOR_LOG", "warn,interceptor::agent=info")
            .stderr(std::fs::File::create(&alog)?)
            .spawn()?,
    );
    wait_for_line(&alog, "\"ready\"", Duration::from_secs(20))?;

    println!(
        "interceptor L4 benchmark ({} connections per latency run, {mib} MiB per throughput run)",
        connections
    );
    println!("baseline = the same server on an unprotected port, same host, same run\n");
    println!(
        "{:<44} {:>12} {:>12} {:>8}",
        "measurement", "direct", "interceptor", "ratio"
    );
    for (label, ns, host) in [
        ("remote (veth, sk_lookup)", &cli, "10.213.99.1"),
        ("local (loopback, connect4)", &srv, "127.0.0.1"),
    ] {
        // Warm up both paths.
        run_client(ns, &format!("{host}:9001"), "latency", 50)?;
        run_client(ns, &format!("{host}:9000"), "latency", 50)?;
        let d = run_client(ns, &format!("{host}:9001"), "latency", connections)?;
        let p = run_client(ns, &format!("{host}:9000"), "latency", connections)?;
        for key in ["p50_us", "p99_us"] {
            let (a, b) = (d.get(key)?, p.get(key)?);
            println!(
                "{:<44} {:>10.1}us {:>10.1}us {:>7.2}x",
                format!("{label} connect+rtt {key}"),
                a,
                b,
                b / a
            );
        }
        let d = run_client(ns, &format!("{host}:9001"), "throughput", mib)?;
        let p = run_client(ns, &format!("{host}:9000"), "throughput", mib)?;
        let (a, b) = (d.get("mib_per_s")?, p.get("mib_per_s")?);
        println!(
            "{:<44} {:>8.0}MiB/s {:>8.0}MiB/s {:>7.2}x",
            format!("{label} throughput"),
            a,
            b,
            b / a
        );
    }
    let st = Command::new(&agent_bin)
        .args(["status", "--config"])
        .arg(&cfg)
        .output()?;
    println!("\n{}", String::from_utf8_lossy(&st.stdout));
    Ok(())
}
