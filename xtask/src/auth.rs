//! `cargo xtask bench-auth`: what bearer-token verification plus the policy decision cost per
//! MCP request, with a warm key cache.
//!
//! One fake node (see `node.rs`), one agent, one fast upstream process (`testpeer --mode
//! mcp-echo`) listening on three ports of the server host, the load generator in the client
//! host (remote path: veth + sk_lookup), a real OpenID provider (`tests/peers/oidc`,
//! oidc-provider) in the server host:
//!
//! | port | path |
//! | ---- | ---- |
//! | 9000 | direct (not protected) |
//! | 9001 | through the agent, service `open`: no `[services.auth]` |
//! | 9002 | through the agent, service `crm`: `[services.auth]`, policy `policies/crm.policy.toml` |
//! | 9443 | the OpenID provider (HTTPS), issuer `https://10.213.99.1:9443` |
//!
//! Every request is the same bytes on every port: `POST /mcp`, `tools/call` of
//! `export_customers` with `{"limit": 1}` and `Authorization: Bearer <token>`, a real
//! `client_credentials` token of the `crm-batch` service account (role `batch` in the example
//! policy, which allows exactly this call). The `open` service drops the header; `crm` verifies
//! the JWT (RS256 signature against the cached JWKS, `typ`, `iss`, `aud`, `exp`), maps the
//! claims to roles and decides the call, then drops the header too. Nothing is asserted about
//! timings; the run fails if the authenticated path does not answer 200 (or an anonymous
//! request does not get 401) before measuring.

use std::{
    cell::RefCell,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{
    mcp::{Figures, Runs, make_certs, run_load},
    node::{Node, SERVER_IP, sh, wait_for_line, workspace_root},
};

const DIRECT: u16 = 9000;
const OPEN: u16 = 9001;
const CRM: u16 = 9002;
const IDP_PORT: u16 = 9443;
const TOOL: &str = "export_customers";
const ARGUMENTS: &str = r#"{"limit":1}"#;

#[derive(clap::Args)]
pub struct AuthArgs {
    /// Seconds of measurement per RPS run.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds of warm-up before each RPS/latency measurement.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Keep-alive connections in the RPS runs.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Sequential calls per latency run.
    #[arg(long, default_value_t = 3000)]
    requests: usize,
    /// Rounds over the three targets (odd rounds: direct, no auth, auth; even rounds the
    /// reverse order); each figure is the median over the rounds.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Load generator threads (1 = a current-thread runtime).
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Do not build; use the binaries already in target/release.
    #[arg(long)]
    no_build: bool,
}

struct Ctx {
    node: Node,
    load: PathBuf,
    threads: usize,
    header: String,
    server_pid: u32,
    agent_pid: u32,
    other_load: RefCell<Vec<f64>>,
}

impl Ctx {
    /// `bench-mcp-client` in the client namespace against `port`, sending the benchmark's
    /// request (with the bearer token when `token`).
    fn client(&self, port: u16, mode: &str, token: bool, extra: &[String]) -> Result<Figures> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.node.cli()])
            .arg(&self.load)
            .args(["bench-mcp-client", "--addr", &format!("{SERVER_IP}:{port}")])
            .args(["--mode", mode, "--minimal", "--tool", TOOL])
            .args(["--arguments", ARGUMENTS])
            .args(["--threads", &self.threads.to_string()])
            .args(extra);
        if token {
            cmd.args(["--header", &self.header]);
        }
        run_load(
            cmd,
            &format!("bench-mcp-client {port} {mode}"),
            Some(self.server_pid),
            Some(self.agent_pid),
            &self.other_load,
        )
    }

    /// One request on a fresh connection: (HTTP status, body).
    fn probe(&self, port: u16, token: bool, tool: &str) -> Result<(u64, String)> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.node.cli()])
            .arg(&self.load)
            .args(["bench-mcp-client", "--addr", &format!("{SERVER_IP}:{port}")])
            .args(["--mode", "probe", "--minimal", "--tool", tool])
            .args(["--arguments", ARGUMENTS]);
        if token {
            cmd.args(["--header", &self.header]);
        }
        let out = cmd.output().context("running bench-mcp-client probe")?;
        if !out.status.success() {
            bail!(
                "request to {SERVER_IP}:{port} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let v: Value = serde_json::from_slice(&out.stdout).context("probe output")?;
        Ok((
            v["status"].as_u64().unwrap_or(0),
            v["body"].as_str().unwrap_or("").to_string(),
        ))
    }
}

/// Runs `node SCRIPT ARGS` (in `netns` when given) and returns its stdout.
fn node_script(netns: Option<&str>, script: &str, args: &[&str]) -> Result<String> {
    let path = workspace_root().join("tests/peers/oidc").join(script);
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "node"]);
            c
        }
        None => Command::new("node"),
    };
    let out = cmd
        .arg(&path)
        .args(args)
        .output()
        .with_context(|| format!("running node {}", path.display()))?;
    if !out.status.success() {
        bail!(
            "node {script} {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn bench_auth(args: AuthArgs) -> Result<()> {
    let t_start = Instant::now();
    let root = workspace_root().canonicalize().context("workspace root")?;
    if !args.no_build {
        // Release load generator, as in bench-mcp: a debug client would hide the proxy's cost.
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
    let policy = root.join("policies/crm.policy.toml");
    if !policy.exists() {
        bail!("{} is missing", policy.display());
    }
    if !root
        .join("tests/peers/node/node_modules/oidc-provider")
        .exists()
    {
        bail!("oidc-provider is not installed: run scripts/setup-peers.sh");
    }
    let t_setup = Instant::now();

    let mut node = Node::new(agent)?;
    let (srv, cli) = (node.srv(), node.cli());
    let tls = node.dir.join("tls");
    make_certs(&tls)?;
    let p = |d: &Path, f: &str| d.join(f).display().to_string();
    let (ca, cert, key) = (
        p(&tls, "ca.pem"),
        p(&tls, "server.pem"),
        p(&tls, "server.key"),
    );

    // The OpenID provider, in the server host.
    let keys = p(&node.dir, "keys-k1.json");
    node_script(
        None,
        "provider.mjs",
        &["--gen-keys", &keys, "--kid-prefix", "k1"],
    )?;
    let issuer = format!("https://{SERVER_IP}:{IDP_PORT}");
    let idp_out = node.dir.join("idp.out");
    let idp_err = node.dir.join("idp.err");
    let port = IDP_PORT.to_string();
    node.spawn_in(
        &srv,
        Path::new("node"),
        &[
            &p(&root, "tests/peers/oidc/provider.mjs"),
            "--host",
            SERVER_IP,
            "--port",
            &port,
            "--issuer",
            &issuer,
            "--cert",
            &cert,
            "--key",
            &key,
            "--keys",
            &keys,
            // Longer than any run: no token expires while measuring.
            "--access-token-ttl",
            "3600",
        ],
        std::fs::File::create(&idp_out)?.into(),
        std::fs::File::create(&idp_err)?.into(),
    )?;
    wait_for_line(&idp_out, "READY", Duration::from_secs(60)).with_context(|| {
        format!(
            "the OpenID provider did not start: {}",
            std::fs::read_to_string(&idp_err).unwrap_or_default()
        )
    })?;

    // The fast upstream: one process, three ports.
    let server_pid = node.spawn_in(
        &srv,
        &testpeer,
        &[
            "server",
            "--mode",
            "mcp-echo",
            "--listen",
            &format!("0.0.0.0:{DIRECT}"),
            "--listen",
            &format!("0.0.0.0:{OPEN}"),
            "--listen",
            &format!("0.0.0.0:{CRM}"),
        ],
        Stdio::null(), // one JSON line per request otherwise
        Stdio::inherit(),
    )?;

    let resource = format!("http://{SERVER_IP}:{CRM}/mcp");
    node.write_agent_config(&format!(
        "[auth]\npolicy = [{policy:?}]\n\
         [[auth.issuers]]\nissuer = {issuer:?}\naudiences = [{resource:?}]\nca_file = {ca:?}\n\
         [[services]]\nname = \"crm\"\nport = {CRM}\n[services.auth]\nresource = {resource:?}\n\
         [[services]]\nname = \"open\"\nport = {OPEN}\n",
        policy = policy.display().to_string(),
    ))?;
    let alog = node.dir.join("agent.log");
    let agent_pid = node
        .start_agent("warn,interceptor::agent=info", &alog)
        .with_context(|| {
            format!(
                "agent log:\n{}",
                std::fs::read_to_string(&alog).unwrap_or_default()
            )
        })?;

    // A real service-account token, requested from the client host.
    let out = node_script(
        Some(&cli),
        "token.mjs",
        &[
            "--issuer",
            &issuer,
            "--cacert",
            &ca,
            "--grant",
            "client_credentials",
            "--client-id",
            "crm-batch",
            "--client-secret",
            "crm-batch-secret",
            "--resource",
            &resource,
        ],
    )?;
    let tok: Value = serde_json::from_str(out.trim()).context("token.mjs output")?;
    let token = tok["access_token"]
        .as_str()
        .with_context(|| format!("no access_token from token.mjs: {out}"))?
        .to_string();

    let b = Ctx {
        node,
        load,
        threads: args.client_threads,
        header: format!("Authorization: Bearer {token}"),
        server_pid,
        agent_pid,
        other_load: RefCell::new(Vec::new()),
    };
    b.client(DIRECT, "wait", false, &["--timeout".into(), "30".into()])?;

    // Before measuring: the protected service really authenticates and authorizes.
    let (status, body) = b.probe(CRM, true, TOOL)?;
    if status != 200 || !body.contains("\"result\"") {
        bail!(
            "the first authenticated tools/call {TOOL} on service crm ({SERVER_IP}:{CRM}) got \
             HTTP {status}, expected 200 with a JSON-RPC result: {body}\nagent log:\n{}",
            std::fs::read_to_string(&alog).unwrap_or_default()
        );
    }
    let (status, body) = b.probe(CRM, false, TOOL)?;
    if status != 401 {
        bail!(
            "a tools/call without a token on service crm got HTTP {status}, expected 401: {body}"
        );
    }
    // The policy is in the path: the same account may not call a tool outside its grant.
    let (status, body) = b.probe(CRM, true, "customer_lookup")?;
    if status != 403 {
        bail!(
            "tools/call customer_lookup as crm-batch on service crm got HTTP {status}, expected \
             403 (policy deny): {body}"
        );
    }
    for port in [OPEN, DIRECT] {
        let (status, body) = b.probe(port, true, TOOL)?;
        if status != 200 || !body.contains("\"result\"") {
            bail!("tools/call on {SERVER_IP}:{port} got HTTP {status}: {body}");
        }
    }
    eprintln!(
        "bench-auth: checks passed (crm: 200 with the token, 401 without, 403 outside the \
         grant); setup took {:.1} s",
        t_setup.elapsed().as_secs_f64()
    );

    // ---------------------------------------------------------------- measure
    // (the checks above logged their 401 and 403 at warn: only later lines are reported)
    let log_checked = std::fs::metadata(&alog).map(|m| m.len()).unwrap_or(0) as usize;
    let t_measure = Instant::now();
    let targets = [("direct", DIRECT), ("no auth", OPEN), ("auth", CRM)];
    let mut runs: [Runs; 3] = Default::default();
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
    for round in 0..args.rounds.max(1) {
        let mut order = [0, 1, 2];
        if round % 2 == 1 {
            order.reverse();
        }
        for &i in &order {
            let (label, port) = targets[i];
            eprintln!("bench-auth: round {} {label} c=1", round + 1);
            runs[i]
                .lat
                .push(b.client(port, "latency", true, &lat_args)?);
        }
        for &i in &order {
            let (label, port) = targets[i];
            eprintln!(
                "bench-auth: round {} {label} c={}",
                round + 1,
                args.concurrency
            );
            runs[i].rps.push(b.client(port, "rps", true, &rps_args)?);
        }
    }
    let measure_secs = t_measure.elapsed().as_secs_f64();
    let status = b.node.agent_status()?;
    let agent_warnings: Vec<String> = std::fs::read(&alog)
        .map(|b| String::from_utf8_lossy(b.get(log_checked..).unwrap_or_default()).into_owned())
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"WARN\"") || l.contains("\"ERROR\""))
        .map(|l| l.chars().take(300).collect())
        .collect();

    // ---------------------------------------------------------------- report
    let [d, o, a] = &runs;
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let rounds = args.rounds.max(1);
    println!();
    println!(
        "interceptor auth benchmark: tools/call over HTTP/1.1 keep-alive, client netns -> server \
         netns over veth (remote path, sk_lookup); {cpus} CPUs shared by client, upstream, agent"
    );
    println!(
        "same agent, same upstream process (testpeer mcp-echo): direct = unprotected port {DIRECT}, \
         no auth = service \"open\" (port {OPEN}), auth = service \"crm\" (port {CRM}, \
         [services.auth])"
    );
    println!(
        "request on every port: POST /mcp tools/call {TOOL} {ARGUMENTS} with Authorization: \
         Bearer <crm-batch client_credentials token, {} bytes, RS256>",
        token.len()
    );
    println!(
        "c=1: {} sequential calls on one connection; c={}: {} keep-alive connections for {} s; \
         each after {} s warm-up; median of {rounds} round(s), order alternating",
        args.requests, args.concurrency, args.concurrency, args.duration, args.warmup
    );
    println!(
        "auth column includes: bearer parsing, JWT verification (the RS256 signature is checked \
         once per token with the cached JWKS key, then the token is served from the agent's \
         verified-token cache until it expires; exp checked on every use), claims -> roles, \
         policy decision for the call; no list filtering, no key fetch (warm cache), \
         no per-exchange log (agent log: warn)\n"
    );
    println!(
        "{:<20} {:>11} {:>11} {:>11} {:>9} {:>10} {:>11}",
        "measurement", "direct", "no auth", "auth", "auth/no", "auth-no", "no/direct"
    );
    let lat_row = |name: &str, k: &str| {
        let (x, y, z) = (d.lat(k), o.lat(k), a.lat(k));
        println!(
            "{:<20} {:>9.1}us {:>9.1}us {:>9.1}us {:>8.2}x {:>+8.1}us {:>10.2}x",
            name,
            x,
            y,
            z,
            z / y,
            z - y,
            y / x
        );
    };
    lat_row("c=1 p50", "p50_us");
    lat_row("c=1 p99", "p99_us");
    let (x, y, z) = (d.rps("rps"), o.rps("rps"), a.rps("rps"));
    println!(
        "{:<20} {:>9.0}/s {:>9.0}/s {:>9.0}/s {:>8.2}x {:>+8.0}/s {:>10.2}x",
        format!("c={} RPS", args.concurrency),
        x,
        y,
        z,
        z / y,
        z - y,
        y / x
    );
    for (name, k) in [("p50", "p50_us"), ("p99", "p99_us")] {
        let (x, y, z) = (d.rps(k), o.rps(k), a.rps(k));
        println!(
            "{:<20} {:>9.1}us {:>9.1}us {:>9.1}us {:>8.2}x {:>+8.1}us {:>10.2}x",
            format!("c={} {name}", args.concurrency),
            x,
            y,
            z,
            z / y,
            z - y,
            y / x
        );
    }
    let (y, z) = (
        o.rps("agent_cpu_per_call_us"),
        a.rps("agent_cpu_per_call_us"),
    );
    println!(
        "{:<20} {:>11} {:>9.1}us {:>9.1}us {:>8.2}x {:>+8.1}us",
        format!("agent CPU/call c={}", args.concurrency),
        "-",
        y,
        z,
        z / y,
        z - y
    );
    let (x, y, z) = (
        d.rps("server_cpu_per_call_us"),
        o.rps("server_cpu_per_call_us"),
        a.rps("server_cpu_per_call_us"),
    );
    println!(
        "{:<20} {:>9.1}us {:>9.1}us {:>9.1}us {:>8.2}x {:>+8.1}us {:>10.2}x",
        "upstream CPU/call",
        x,
        y,
        z,
        z / y,
        z - y,
        y / x
    );
    let other = b.other_load.borrow();
    let max = other.iter().copied().fold(0.0, f64::max);
    let avg = other.iter().sum::<f64>() / other.len().max(1) as f64;
    println!(
        "\n(CPU/call: user+sys from /proc/PID/stat over the whole c={} run incl. warm-up, 10 ms \
         ticks; direct responses are larger: mcp-echo echoes the request headers, and only the \
         agent drops Authorization)",
        args.concurrency
    );
    println!(
        "(other load = CPU used outside this benchmark during the runs: {:.0}% of a core on \
         average, {:.0}% at most{}; agent warnings/errors logged while measuring: {})",
        avg * 100.0,
        max * 100.0,
        if max > 0.2 {
            "; the machine was shared, figures are noisier than they should be"
        } else {
            ""
        },
        agent_warnings.len()
    );
    for l in &agent_warnings {
        println!("  {l}");
    }
    println!(
        "runtime: {:.1} s (build {:.1} s, setup and checks {:.1} s, measurement {measure_secs:.1} s)",
        t_start.elapsed().as_secs_f64(),
        t_setup.duration_since(t_start).as_secs_f64(),
        t_measure.duration_since(t_setup).as_secs_f64()
    );
    println!("\n{status}");
    Ok(())
}
