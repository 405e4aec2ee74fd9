//! Project tasks: `cargo xtask vm-test` (the service in a VM, see `vm.rs`), `cargo xtask deb`,
//! `cargo xtask bench` (L4 benchmark against a direct connection) and
//! `cargo xtask bench-mcp` (the MCP-aware data path: see `mcp.rs`) and `cargo xtask bench-auth`
//! (identity and policy per request: see `auth.rs`).
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
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

mod auth;
mod load;
mod mcp;
mod node;
mod vm;

use node::{Node, percentile, sh, wait_for_line, workspace_root};

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
    /// MCP benchmark: added latency per tools/call (c=1 p50/p99), RPS at concurrency 32,
    /// plain and TLS, fast upstream and the official SDK server, agent memory per SSE stream.
    BenchMcp(mcp::McpArgs),
    /// Per-request cost of bearer-token verification plus policy (warm key cache): tools/call
    /// through the same agent to a service with `[services.auth]` and to one without, and
    /// direct; c=1 p50/p99 and RPS at concurrency 32.
    BenchAuth(auth::AuthArgs),
    /// The interceptor as a systemd service in a VM (qemu, Debian cloud kernels 6.1 and 6.12),
    /// checked end to end from the test host. See xtask/src/vm.rs and README.
    VmTest(vm::VmArgs),
    /// Build the Debian package (release) into target/debian/.
    Deb,
    /// (internal) MCP load generator used by bench-mcp and bench-auth; prints one JSON line.
    BenchMcpClient {
        #[arg(long)]
        addr: SocketAddr,
        /// latency | rps | probe | sse | wait
        #[arg(long)]
        mode: String,
        /// Tool called by every request.
        #[arg(long, default_value = "echo")]
        tool: String,
        /// JSON `arguments` of the call.
        #[arg(long, default_value = r#"{"text":"hello"}"#)]
        arguments: String,
        /// Extra request header (`Name: value`), repeatable.
        #[arg(long)]
        header: Vec<String>,
        /// Bare JSON-RPC body and headers (no `_meta`, no MCP-* headers).
        #[arg(long)]
        minimal: bool,
        /// Trust this CA and speak TLS.
        #[arg(long)]
        tls_ca: Option<PathBuf>,
        #[arg(long, default_value_t = 1000)]
        n: usize,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
    },
    /// (internal) fast MCP echo server for bench-mcp, plain and TLS.
    BenchMcpEcho {
        #[arg(long)]
        listen: Vec<SocketAddr>,
        #[arg(long)]
        tls_listen: Vec<SocketAddr>,
        #[arg(long)]
        cert: Option<PathBuf>,
        #[arg(long)]
        key: Option<PathBuf>,
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
        Cmd::BenchMcp(args) => mcp::bench_mcp(args),
        Cmd::BenchAuth(args) => auth::bench_auth(args),
        Cmd::VmTest(args) => vm::vm_test(args),
        Cmd::Deb => {
            let root = node::workspace_root();
            let deb = vm::build_deb(&root, true, &root.join("target/debian"))?;
            println!("{}", deb.display());
            Ok(())
        }
        Cmd::BenchMcpClient {
            addr,
            mode,
            tool,
            arguments,
            header,
            minimal,
            tls_ca,
            n,
            concurrency,
            warmup,
            duration,
            threads,
            timeout,
        } => load::client(load::ClientOpts {
            target: load::Target::new(addr, tls_ca.as_deref())?,
            mode,
            n,
            concurrency,
            warmup: Duration::from_secs_f64(warmup),
            duration: Duration::from_secs_f64(duration),
            threads,
            timeout: Duration::from_secs_f64(timeout),
            call: load::Call {
                tool,
                arguments,
                headers: header,
                minimal,
            },
        }),
        Cmd::BenchMcpEcho {
            listen,
            tls_listen,
            cert,
            key,
        } => load::echo_server(listen, tls_listen, cert, key),
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
    let root = workspace_root();
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
    let mut node = Node::new(agent_bin)?;
    let (srv, cli) = (node.srv(), node.cli());
    let me = std::env::current_exe()?;
    let slog = node.dir.join("server.log");
    node.spawn_in(
        &srv,
        &me,
        &[
            "bench-server",
            "--listen",
            "0.0.0.0:9000",
            "--listen",
            "0.0.0.0:9001",
        ],
        std::fs::File::create(&slog)?.into(),
        Stdio::inherit(),
    )?;
    wait_for_line(&slog, "listening", Duration::from_secs(10))?;

    // mode = "tcp": this benchmark's echo/sink protocol is not HTTP, and the L4 figures are
    // about the byte relay (the MCP-aware path is measured by `bench-mcp`).
    node.write_agent_config("[[services]]\nname = \"bench\"\nport = 9000\nmode = \"tcp\"\n")?;
    let alog = node.dir.join("agent.log");
    node.start_agent("warn,interceptor::agent=info", &alog)?;

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
    println!("\n{}", node.agent_status()?);
    Ok(())
}
