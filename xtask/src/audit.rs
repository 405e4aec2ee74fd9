//! `cargo xtask bench-audit`: what the durable audit log costs per MCP exchange.
//!
//! One fake node (see `node.rs`), one fast upstream (`testpeer --mode mcp-echo`) on port 9001
//! of the server host, protected as service `echo`, the load generator in the client host
//! (remote path: veth + sk_lookup). The same agent binary runs the same pipeline twice per
//! round, restarted in between: once with `audit.enabled = false` (exchanges only logged) and
//! once with the audit log on (two records per exchange, each committed with `fsync` before
//! the request is forwarded and before the response's last bytes are released; group commit).
//! Rounds alternate the order; each figure is the median over the rounds. The audit database
//! is verified offline at the end. Nothing here asserts a timing.
use std::{
    cell::RefCell,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    mcp::{Figures, Runs, median, run_load},
    node::{Node, SERVER_IP, sh, workspace_root},
};

const PORT: u16 = 9001;

#[derive(clap::Args)]
pub struct AuditArgs {
    /// Seconds of measurement per RPS run.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds of warm-up before each measurement.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Keep-alive connections in the RPS runs.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Sequential calls per latency run.
    #[arg(long, default_value_t = 3000)]
    requests: usize,
    /// Rounds (each: without and with audit, order alternating).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Load generator threads.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Do not build; use the binaries already in target/release.
    #[arg(long)]
    no_build: bool,
}

/// The writer's `audit_writer_stats` line (logged at shutdown; the agent's JSON log flattens
/// fields into the event): records per transaction.
fn records_per_transaction(log: &std::path::Path) -> f64 {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("audit_writer_stats"))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["records_per_transaction"].as_str()?.parse().ok())
        .next_back()
        .unwrap_or(f64::NAN)
}

pub fn bench_audit(args: AuditArgs) -> Result<()> {
    let t_start = Instant::now();
    let root = workspace_root().canonicalize().context("workspace root")?;
    if !args.no_build {
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
    let (agent, testpeer, load) = (
        rel.join("interceptor"),
        rel.join("testpeer"),
        rel.join("xtask"),
    );
    for b in [&agent, &testpeer, &load] {
        if !b.exists() {
            bail!("{} is missing (drop --no-build)", b.display());
        }
    }
    let mut node = Node::new(agent.clone())?;
    let srv = node.srv();
    let server_pid = node.spawn_in(
        &srv,
        &testpeer,
        &[
            "server",
            "--mode",
            "mcp-echo",
            "--listen",
            &format!("0.0.0.0:{PORT}"),
        ],
        Stdio::null(),
        Stdio::inherit(),
    )?;
    let services = format!("[[services]]\nname = \"echo\"\nport = {PORT}\n");
    let alog = node.dir.join("agent.log");
    let other_load = RefCell::new(Vec::new());
    let client = |node: &Node, agent_pid: u32, mode: &str, extra: &[String]| -> Result<Figures> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &node.cli()])
            .arg(&load)
            .args(["bench-mcp-client", "--addr", &format!("{SERVER_IP}:{PORT}")])
            .args(["--mode", mode, "--minimal"])
            .args(["--threads", &args.client_threads.to_string()])
            .args(extra);
        run_load(
            cmd,
            &format!("bench-mcp-client {mode}"),
            Some(server_pid),
            Some(agent_pid),
            &other_load,
        )
    };
    let lat_args = [
        "--n".into(),
        args.requests.to_string(),
        "--warmup".into(),
        args.warmup.to_string(),
    ];
    let rps_args = [
        "--concurrency".into(),
        args.concurrency.to_string(),
        "--warmup".into(),
        args.warmup.to_string(),
        "--duration".into(),
        args.duration.to_string(),
    ];
    let t_measure = Instant::now();
    let mut runs: [Runs; 2] = Default::default();
    let mut batches = Vec::new();
    let labels = ["no audit", "audit"];
    for round in 0..args.rounds.max(1) {
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            node.write_agent_config_with(
                &services,
                if i == 0 {
                    "enabled = false"
                } else {
                    "enabled = true"
                },
            )?;
            let pid = node
                .start_agent(
                    "warn,interceptor::agent=info,interceptor::audit=info",
                    &alog,
                )
                .with_context(|| {
                    format!(
                        "agent log:\n{}",
                        std::fs::read_to_string(&alog).unwrap_or_default()
                    )
                })?;
            client(&node, pid, "wait", &["--timeout".into(), "30".into()])?;
            let (status, body) = {
                let out = Command::new("ip")
                    .args(["netns", "exec", &node.cli()])
                    .arg(&load)
                    .args(["bench-mcp-client", "--addr", &format!("{SERVER_IP}:{PORT}")])
                    .args(["--mode", "probe", "--minimal"])
                    .output()?;
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
                (v["status"].as_u64().unwrap_or(0), v.to_string())
            };
            if status != 200 {
                bail!(
                    "probe through the agent ({}) got {status}: {body}",
                    labels[i]
                );
            }
            eprintln!("bench-audit: round {} {} c=1", round + 1, labels[i]);
            runs[i].lat.push(client(&node, pid, "latency", &lat_args)?);
            eprintln!(
                "bench-audit: round {} {} c={}",
                round + 1,
                labels[i],
                args.concurrency
            );
            runs[i].rps.push(client(&node, pid, "rps", &rps_args)?);
            node.stop_agent();
            if i == 1 {
                batches.push(records_per_transaction(&alog));
            }
        }
    }
    let measure_secs = t_measure.elapsed().as_secs_f64();

    // The log written under load verifies offline.
    let cfg = node.dir.join("agent.toml");
    let pubkey = node.dir.join("audit.vkey");
    let db = node.dir.join("state/audit.db");
    let out = Command::new(&agent)
        .args(["audit", "pubkey", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(&pubkey)
        .output()?;
    if !out.status.success() {
        bail!("audit pubkey: {}", String::from_utf8_lossy(&out.stderr));
    }
    let t_verify = Instant::now();
    let out = Command::new(&agent)
        .args(["audit", "verify", "--db"])
        .arg(&db)
        .arg("--pubkey")
        .arg(&pubkey)
        .output()?;
    let verify_secs = t_verify.elapsed().as_secs_f64();
    let verify_text = String::from_utf8_lossy(&out.stdout).to_string();
    let db_bytes: u64 = ["", "-wal"]
        .iter()
        .filter_map(|s| std::fs::metadata(format!("{}{s}", db.display())).ok())
        .map(|m| m.len())
        .sum();
    let records: u64 = Command::new("sqlite3")
        .arg(&db)
        .arg("SELECT count(*) FROM records")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(0);

    // ---------------------------------------------------------------- report
    let [n, a] = &runs;
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    println!();
    println!(
        "interceptor audit benchmark: tools/call over HTTP/1.1 keep-alive, client netns -> server \
         netns over veth (remote path, sk_lookup); {cpus} CPUs shared by client, upstream, agent"
    );
    println!(
        "same agent binary and pipeline, restarted between runs: audit.enabled = false vs the \
         durable audit log (request record committed before forwarding, final record before the \
         response is released; SQLite WAL, synchronous=FULL, group commit, Merkle tree in the \
         same transaction)"
    );
    println!(
        "c=1: {} sequential calls; c={}: {} keep-alive connections for {} s; {} s warm-up; median \
         of {} round(s), order alternating\n",
        args.requests,
        args.concurrency,
        args.concurrency,
        args.duration,
        args.warmup,
        args.rounds.max(1)
    );
    println!(
        "{:<22} {:>11} {:>11} {:>9} {:>10}",
        "measurement", "no audit", "audit", "ratio", "added"
    );
    for (name, k) in [("c=1 p50", "p50_us"), ("c=1 p99", "p99_us")] {
        let (x, y) = (n.lat(k), a.lat(k));
        println!(
            "{:<22} {:>9.1}us {:>9.1}us {:>8.2}x {:>+8.1}us",
            name,
            x,
            y,
            y / x,
            y - x
        );
    }
    let (x, y) = (n.rps("rps"), a.rps("rps"));
    println!(
        "{:<22} {:>9.0}/s {:>9.0}/s {:>8.2}x {:>+8.0}/s   (throughput cost {:.1}%; goal <= 10%)",
        format!("c={} RPS", args.concurrency),
        x,
        y,
        y / x,
        y - x,
        (1.0 - y / x) * 100.0
    );
    for (name, k) in [("p50", "p50_us"), ("p99", "p99_us")] {
        let (x, y) = (n.rps(k), a.rps(k));
        println!(
            "{:<22} {:>9.1}us {:>9.1}us {:>8.2}x {:>+8.1}us",
            format!("c={} {name}", args.concurrency),
            x,
            y,
            y / x,
            y - x
        );
    }
    let (x, y) = (
        n.rps("agent_cpu_per_call_us"),
        a.rps("agent_cpu_per_call_us"),
    );
    println!(
        "{:<22} {:>9.1}us {:>9.1}us {:>8.2}x {:>+8.1}us",
        format!("agent CPU/call c={}", args.concurrency),
        x,
        y,
        y / x,
        y - x
    );
    println!(
        "{:<22} {:>11} {:>11.2}   (group commit: records per transaction, whole run)",
        "records/transaction",
        "-",
        median(batches)
    );
    let other = other_load.borrow();
    let max = other.iter().copied().fold(0.0, f64::max);
    let avg = other.iter().sum::<f64>() / other.len().max(1) as f64;
    println!(
        "\naudit database after the run: {records} records, {:.1} MiB (with WAL); offline verify \
         took {verify_secs:.1} s: {}",
        db_bytes as f64 / (1024.0 * 1024.0),
        verify_text.lines().last().unwrap_or("?")
    );
    println!(
        "(other load = CPU used outside this benchmark during the runs: {:.0}% of a core on \
         average, {:.0}% at most{})",
        avg * 100.0,
        max * 100.0,
        if max > 0.2 {
            "; the machine was shared, figures are noisier than they should be"
        } else {
            ""
        }
    );
    println!(
        "runtime: {:.1} s (measurement {measure_secs:.1} s)",
        t_start.elapsed().as_secs_f64()
    );
    if !out.status.success() {
        bail!("the audit log written under load does not verify:\n{verify_text}");
    }
    Ok(())
}
