//! `cargo xtask vm-test`: the interceptor installed as a systemd service in a real VM, checked
//! end to end from outside the guest.
//!
//! Flow (per kernel, every boot from the same cached image with `snapshot=on`):
//! 1. `scripts/setup-vm.sh` installs and caches qemu (bookworm-backports, private sysroot),
//!    mmdebstrap, cargo-deb, the bookworm 6.1 and backports 6.12 cloud kernels and a bookworm
//!    root filesystem with systemd, openssh and the official Python MCP SDK 2.x.
//! 2. The agent is built and packaged (`cargo deb`); the real OpenID provider
//!    (`tests/peers/oidc`) runs on the test host, reachable from the guest through qemu's
//!    user network at 10.0.2.2.
//! 3. qemu boots the kernel (TCG) with the image; the test host reaches the guest's sshd and
//!    port 8080 through `hostfwd` on 127.0.0.1 (the guest sees the test host as 10.0.2.2, a
//!    remote caller).
//! 4. In the guest: the interceptor is installed as a service (the .deb on one kernel,
//!    `interceptor install` on the other), configured to protect the real MCP server
//!    (`tests/peers/py2_server.py`, a systemd unit of its own) with bearer tokens and a policy.
//! 5. Checks (`Check` lines, each PASS/FAIL): unit active as Type=notify with its status text;
//!    exactly CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON, no_new_privs, seccomp; the official MCP
//!    client on the test host calls the server through the interceptor; structured exchange
//!    records in the journal; `systemctl reload` swaps the policy (a tool becomes denied);
//!    `systemctl restart`, `kill -9` and a hung agent (watchdog) while a prober calls the
//!    server all the time: every answered call has an exchange record, the server never sees
//!    the test host's address (nothing bypassed the agent), the service comes back by itself
//!    and takes the pins over; uninstall leaves the programs pinned (ports still refuse).
//!
//! A VM test that cannot run fails; `INTERCEPTOR_SKIP_VM=1` (or `INTERCEPTOR_TESTS_ALLOW_SKIP=1`)
//! turns that into an explicit skip.
use std::{
    collections::{BTreeMap, HashSet},
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::node::workspace_root;

#[derive(clap::Args, Debug)]
pub struct VmArgs {
    /// Kernels to boot: `6.1` (bookworm), `6.12` (bookworm-backports), or `all`.
    #[arg(long, default_value = "all")]
    pub kernel: String,
    /// Package a release build (default: the dev build the test suite already has).
    #[arg(long)]
    pub release: bool,
    /// CI set: the hung-agent (watchdog kill) phase runs on the last kernel only (saves about
    /// a minute per other kernel); every other check runs on every kernel.
    #[arg(long)]
    pub lean: bool,
    /// Keep the serial logs and guest journals here (default: target/vm-test).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

const GUEST_MCP_PORT: u16 = 8080;
const RESOURCE: &str = "https://crm.vm.test/mcp";
const CAPS_WANTED: u64 = (1 << 12) | (1 << 38) | (1 << 39); // NET_ADMIN, PERFMON, BPF

pub fn vm_test(args: VmArgs) -> Result<()> {
    let skip = |v: &str| std::env::var(v).is_ok_and(|x| x == "1");
    if skip("INTERCEPTOR_SKIP_VM") {
        println!("vm-test: SKIPPED (INTERCEPTOR_SKIP_VM=1)");
        return Ok(());
    }
    match run_all(&args) {
        Ok(()) => Ok(()),
        Err(e) if skip("INTERCEPTOR_TESTS_ALLOW_SKIP") && e.to_string().contains("setup-vm") => {
            println!("vm-test: SKIPPED (INTERCEPTOR_TESTS_ALLOW_SKIP=1): {e:#}");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

fn run_all(args: &VmArgs) -> Result<()> {
    let root = workspace_root();
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| root.join("target/vm-test"));
    std::fs::create_dir_all(&out)?;
    let t0 = Instant::now();
    let env = setup(&root).context("scripts/setup-vm.sh (setup-vm) failed")?;
    let t_setup = t0.elapsed();
    println!("vm-test: setup {:.1}s", t_setup.as_secs_f64());

    let t1 = Instant::now();
    let deb = build_deb(&root, args.release, &out)?;
    // `interceptor install` gets the same binary, without debug info (scp into the guest).
    let bin = out.join("interceptor");
    run_ok(
        Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(&bin)
            .arg(root.join(if args.release {
                "target/release/interceptor"
            } else {
                "target/debug/interceptor"
            })),
        "strip",
    )?;
    println!(
        "vm-test: build + package {:.1}s",
        t1.elapsed().as_secs_f64()
    );

    let kernels: Vec<&str> = match args.kernel.as_str() {
        "all" => vec!["6.1", "6.12"],
        k => vec![k],
    };
    let oidc = Oidc::start(&root)?;
    let mut summary = Vec::new();
    let mut failed = 0;
    for (i, k) in kernels.iter().enumerate() {
        let key = format!("KERNEL_{}", k.replace('.', "_"));
        let kernel = env
            .get(&key)
            .with_context(|| format!("setup-vm printed no {key}"))?;
        let install = if i % 2 == 0 {
            Install::Deb(deb.clone())
        } else {
            Install::Command(bin.clone())
        };
        let t = Instant::now();
        let hung_phase = !args.lean || i + 1 == kernels.len();
        let res = run_kernel(
            &env,
            &root,
            &out,
            k,
            Path::new(kernel),
            &install,
            &oidc,
            hung_phase,
        );
        let secs = t.elapsed().as_secs_f64();
        match res {
            Ok(checks) => {
                let bad = checks.iter().filter(|c| !c.ok).count();
                failed += bad;
                summary.push(format!(
                    "kernel {k} ({}): {} checks, {bad} failed, {secs:.0}s",
                    install.name(),
                    checks.len()
                ));
            }
            Err(e) => {
                failed += 1;
                println!("vm-test: kernel {k}: ERROR {e:#}");
                summary.push(format!("kernel {k}: ERROR after {secs:.0}s: {e:#}"));
            }
        }
    }
    println!("\nvm-test summary (logs in {}):", out.display());
    for s in &summary {
        println!("  {s}");
    }
    println!("  total {:.0}s", t0.elapsed().as_secs_f64());
    if failed > 0 {
        bail!("vm-test: {failed} check(s) failed");
    }
    Ok(())
}

/// Runs scripts/setup-vm.sh and reads its KEY=VALUE lines.
fn setup(root: &Path) -> Result<BTreeMap<String, String>> {
    let out = Command::new("bash")
        .arg(root.join("scripts/setup-vm.sh"))
        .stderr(Stdio::inherit())
        .output()
        .context("running scripts/setup-vm.sh")?;
    if !out.status.success() {
        bail!("scripts/setup-vm.sh exited with {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

/// Builds the agent and its Debian package; returns the .deb.
pub fn build_deb(root: &Path, release: bool, out: &Path) -> Result<PathBuf> {
    let mut build = Command::new("cargo");
    build
        .current_dir(root)
        // The whole workspace, as `scripts/test.sh` builds it: the same feature resolution, so
        // the suite's build is reused instead of rebuilding dependencies.
        .args(["build", "--workspace", "--bins"]);
    if release {
        build.arg("--release");
    }
    run_ok(&mut build, "cargo build")?;
    let deb_dir = out.join("deb");
    let _ = std::fs::remove_dir_all(&deb_dir);
    std::fs::create_dir_all(&deb_dir)?;
    let mut deb = Command::new("cargo");
    deb.current_dir(root)
        .args(["deb", "-p", "interceptor-user", "--no-build", "--output"]);
    deb.arg(&deb_dir).arg("--strip");
    if !release {
        deb.args(["--profile", "dev"]);
    }
    run_ok(&mut deb, "cargo deb")?;
    std::fs::read_dir(&deb_dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("cargo deb produced no .deb")
}

fn run_ok(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

// ------------------------------------------------------------------ OpenID provider

/// The real OpenID provider on the test host. The guest reaches it at 10.0.2.2 (qemu's
/// user-network alias of the host's loopback), which is therefore the issuer URL.
struct Oidc {
    child: Child,
    port: u16,
}

impl Oidc {
    fn start(root: &Path) -> Result<Oidc> {
        let port = free_port()?;
        let mut child = Command::new("node")
            .arg(root.join("tests/peers/oidc/provider.mjs"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--issuer", &format!("http://10.0.2.2:{port}")])
            .args(["--resources", RESOURCE, "--access-token-ttl", "3600"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the OpenID provider (node tests/peers/oidc/provider.mjs)")?;
        let mut line = String::new();
        let mut stdout = std::io::BufReader::new(child.stdout.take().context("stdout")?);
        std::io::BufRead::read_line(&mut stdout, &mut line)?;
        if !line.starts_with("READY") {
            let _ = child.kill();
            bail!("OpenID provider did not start: {line:?}");
        }
        Ok(Oidc { child, port })
    }

    /// A client-credentials access token of `crm-batch` for the VM's MCP service.
    fn token(&self) -> Result<String> {
        let out = run_ok(
            Command::new("curl").args([
                "-sS",
                "--fail-with-body",
                "-u",
                "crm-batch:crm-batch-secret",
                "-d",
                "grant_type=client_credentials",
                "--data-urlencode",
                &format!("resource={RESOURCE}"),
                "-d",
                "scope=mcp",
                &format!("http://127.0.0.1:{}/token", self.port),
            ]),
            "token request",
        )?;
        let v: Value = serde_json::from_str(&out).context("token response")?;
        v["access_token"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("no access_token in {out}"))
    }
}

impl Drop for Oidc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------ the guest

#[derive(Clone)]
enum Install {
    Deb(PathBuf),
    Command(PathBuf),
}

impl Install {
    fn name(&self) -> &'static str {
        match self {
            Install::Deb(_) => "installed from the .deb",
            Install::Command(_) => "installed by `interceptor install`",
        }
    }
}

struct Vm {
    child: Child,
    ssh_port: u16,
    mcp_port: u16,
    key: PathBuf,
    control: PathBuf,
    serial: PathBuf,
}

impl Vm {
    fn boot(env: &BTreeMap<String, String>, kernel: &Path, out: &Path, tag: &str) -> Result<Vm> {
        let get = |k: &str| {
            env.get(k)
                .with_context(|| format!("setup-vm printed no {k}"))
        };
        let ssh_port = free_port()?;
        let mcp_port = free_port()?;
        let serial = out.join(format!("serial-{tag}.log"));
        let mut cmd = Command::new(get("QEMU")?);
        cmd.env("LD_LIBRARY_PATH", get("QEMU_LD_LIBRARY_PATH")?)
            .env("QEMU_MODULE_DIR", get("QEMU_MODULE_DIR")?);
        for dir in get("QEMU_FIRMWARE")?.split(':') {
            cmd.args(["-L", dir]);
        }
        cmd.args(["-accel", "tcg,thread=multi", "-cpu", "max", "-smp", "2", "-m", "2048"])
            .args(["-display", "none", "-monitor", "none", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .arg("-kernel")
            .arg(kernel)
            .args([
                "-append",
                "root=/dev/nvme0n1 rw console=ttyS0 panic=-1 net.ifnames=0 systemd.show_status=0",
            ])
            .arg("-drive")
            .arg(format!(
                "file={},if=none,id=root,format=raw,snapshot=on",
                get("IMAGE")?
            ))
            .args(["-device", "nvme,serial=root,drive=root"])
            .arg("-netdev")
            .arg(format!(
                "user,id=n0,hostfwd=tcp:127.0.0.1:{ssh_port}-:22,hostfwd=tcp:127.0.0.1:{mcp_port}-:{GUEST_MCP_PORT}"
            ))
            .args(["-device", "virtio-net-pci,netdev=n0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let child = cmd.spawn().context("starting qemu")?;
        let vm = Vm {
            child,
            ssh_port,
            mcp_port,
            key: PathBuf::from(get("SSH_KEY")?),
            control: out.join(format!("ssh-{tag}.ctl")),
            serial,
        };
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            if let Ok(o) = vm.ssh_raw("true", Duration::from_secs(20))
                && o.0 == 0
            {
                // One master connection for every later command (key exchange is slow under
                // TCG); stdio detached so nothing waits on its pipes.
                let mut m = vm.ssh_base();
                m.args([
                    "-o",
                    "ControlMaster=yes",
                    "-o",
                    "ControlPersist=900",
                    "-N",
                    "-f",
                ])
                .arg("root@127.0.0.1")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
                let _ = m.status();
                return Ok(vm);
            }
            if Instant::now() > deadline {
                bail!(
                    "the guest did not answer on ssh within 240 s; serial log:\n{}",
                    tail(&vm.serial, 40)
                );
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    fn ssh_base(&self) -> Command {
        let mut c = Command::new("ssh");
        c.arg("-i")
            .arg(&self.key)
            .args(["-p", &self.ssh_port.to_string()])
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=15",
                "-o",
                "ControlMaster=no",
            ])
            .arg("-o")
            .arg(format!("ControlPath={}", self.control.display()));
        c
    }

    /// Runs a shell command in the guest: (exit code, stdout, stderr).
    fn ssh_raw(&self, script: &str, timeout: Duration) -> Result<(i32, String, String)> {
        let mut c = self.ssh_base();
        c.arg("root@127.0.0.1").arg(script);
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn()?;
        // Drain both pipes while waiting: a large journal must not block ssh on a full pipe.
        let drain = |p: Option<Box<dyn std::io::Read + Send>>| {
            std::thread::spawn(move || {
                let mut s = String::new();
                if let Some(mut p) = p {
                    let _ = p.read_to_string(&mut s);
                }
                s
            })
        };
        let out = drain(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        );
        let err = drain(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        );
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = child.try_wait()? {
                let o = out.join().unwrap_or_default();
                let e = err.join().unwrap_or_default();
                return Ok((st.code().unwrap_or(-1), o, e));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("guest command timed out after {timeout:?}: {script}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs a command that must succeed; returns its stdout.
    fn sh(&self, script: &str) -> Result<String> {
        let (rc, o, e) = self.ssh_raw(script, Duration::from_secs(180))?;
        if rc != 0 {
            bail!("guest command failed ({rc}): {script}\n{o}{e}");
        }
        Ok(o)
    }

    fn copy_in(&self, files: &[&Path], dest: &str) -> Result<()> {
        let mut c = Command::new("scp");
        c.arg("-q")
            .arg("-i")
            .arg(&self.key)
            .args(["-P", &self.ssh_port.to_string()])
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "BatchMode=yes",
            ])
            .arg("-o")
            .arg(format!("ControlPath={}", self.control.display()));
        c.args(files);
        c.arg(format!("root@127.0.0.1:{dest}"));
        run_ok(&mut c, "scp").map(|_| ())
    }

    fn mcp_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.mcp_port))
    }

    /// systemctl show properties of a unit.
    fn show(&self, unit: &str) -> Result<BTreeMap<String, String>> {
        let o = self.sh(&format!(
            "systemctl show {unit} -p ActiveState -p SubState -p MainPID -p NRestarts -p Result \
             -p StatusText -p Type -p WatchdogUSec -p ExecMainStartTimestampMonotonic"
        ))?;
        Ok(o.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    /// Waits until `unit` is active with a MainPID other than `not_pid`.
    fn wait_active(
        &self,
        unit: &str,
        not_pid: &str,
        timeout: Duration,
    ) -> Result<BTreeMap<String, String>> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.show(unit)?;
            if s.get("ActiveState").map(String::as_str) == Some("active")
                && s.get("MainPID").is_some_and(|p| p != not_pid && p != "0")
            {
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!("{unit} not active again within {timeout:?}: {s:?}");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Journal entries of `unit` (JSON objects), optionally only those with FIELD=VALUE.
    fn journal(&self, unit: &str, matching: &str) -> Result<Vec<Value>> {
        let o = self.sh(&format!(
            "journalctl --no-pager -o json -u {unit} {matching}"
        ))?;
        Ok(o.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let mut exit = self.ssh_base();
        exit.args(["-O", "exit", "root@127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = exit.status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.control);
    }
}

fn tail(path: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ------------------------------------------------------------------ checks

struct Check {
    ok: bool,
}

struct Checks {
    list: Vec<Check>,
    tag: String,
}

impl Checks {
    fn record(&mut self, name: &str, ok: bool, detail: impl std::fmt::Display) {
        println!(
            "vm-test [{}] {} {name}{}",
            self.tag,
            if ok { "PASS" } else { "FAIL" },
            {
                let d = detail.to_string();
                if d.is_empty() { d } else { format!(": {d}") }
            }
        );
        self.list.push(Check { ok });
    }

    fn result(&mut self, name: &str, r: Result<String>) {
        match r {
            Ok(d) => self.record(name, true, d),
            Err(e) => self.record(name, false, format!("{e:#}")),
        }
    }
}

fn guest_config(oidc_port: u16) -> String {
    format!(
        r#"# Written by cargo xtask vm-test.
[agent]
instance = "default"
log_format = "journal"
runtime_dir = "/run/interceptor"
state_dir = "/var/lib/interceptor"
grace_period_ms = 2000

[auth]
policy = ["/etc/interceptor/policies"]

[[auth.issuers]]
issuer = "http://10.0.2.2:{oidc_port}"
audiences = ["{RESOURCE}"]
allow_http = true

[[services]]
name = "crm"
port = {GUEST_MCP_PORT}

[services.auth]
resource = "{RESOURCE}"
"#
    )
}

fn policy(tools: &str) -> String {
    format!(
        r#"# Written by cargo xtask vm-test.
[[roles]]
name = "batch"
clients = ["crm-batch"]

[[roles.grants]]
service = "crm"
methods = ["tools/call", "tools/list"]
tools = [{tools}]
purpose = "VM integration test"
lawful_basis = "legitimate_interests"
data_subjects = ["customers"]
"#
    )
}

const MCP_SERVER_UNIT: &str = "[Unit]
Description=MCP server under test (official Python SDK 2.x)
After=network.target
[Service]
ExecStart=/opt/mcp-venv/bin/python /opt/peers/py2_server.py --host 0.0.0.0 --port 8080 --json-response --log-level info
Restart=no
";

#[allow(clippy::too_many_arguments)]
fn run_kernel(
    env: &BTreeMap<String, String>,
    root: &Path,
    out: &Path,
    k: &str,
    kernel: &Path,
    install: &Install,
    oidc: &Oidc,
    hung_phase: bool,
) -> Result<Vec<Check>> {
    let tag = format!("linux-{k}");
    let t = Instant::now();
    println!("vm-test [{tag}] booting {}", kernel.display());
    let vm = Vm::boot(env, kernel, out, &tag)?;
    let mut c = Checks {
        list: Vec::new(),
        tag: tag.clone(),
    };
    c.record(
        "boot to ssh",
        true,
        format!(
            "{:.0}s, {}",
            t.elapsed().as_secs_f64(),
            vm.sh("uname -r")?.trim()
        ),
    );
    let res = guest_checks(&vm, root, out, install, oidc, hung_phase, &mut c);
    // Keep the guest's journal for whoever reads the failure.
    if let Ok(j) = vm.sh("journalctl --no-pager -b -o short-monotonic") {
        let _ = std::fs::write(out.join(format!("journal-{tag}.log")), j);
    }
    // The agent's records with every field (the text journal keeps only the message: an
    // `upstream_error` line there does not say what the error was).
    if let Ok(j) = vm.sh("journalctl --no-pager -b -o json -u interceptor") {
        let _ = std::fs::write(out.join(format!("journal-{tag}-interceptor.json")), j);
    }
    if let Err(e) = res {
        c.record("guest checks ran to the end", false, format!("{e:#}"));
    }
    let _ = vm.ssh_raw("systemctl poweroff --force --force", Duration::from_secs(5));
    Ok(c.list)
}

fn guest_checks(
    vm: &Vm,
    root: &Path,
    out: &Path,
    install: &Install,
    oidc: &Oidc,
    hung_phase: bool,
    c: &mut Checks,
) -> Result<()> {
    // --- files in ---
    let stage = out.join("stage");
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::create_dir_all(&stage)?;
    std::fs::write(stage.join("interceptor.toml"), guest_config(oidc.port))?;
    std::fs::write(stage.join("v1.policy.toml"), policy("\"echo\", \"add\""))?;
    std::fs::write(stage.join("v2.policy.toml"), policy("\"add\""))?;
    std::fs::write(stage.join("mcp-server.service"), MCP_SERVER_UNIT)?;
    let peers = root.join("tests/peers");
    let mut files: Vec<PathBuf> = [
        "interceptor.toml",
        "v1.policy.toml",
        "v2.policy.toml",
        "mcp-server.service",
    ]
    .iter()
    .map(|f| stage.join(f))
    .collect();
    for f in std::fs::read_dir(&peers)?.flatten() {
        let p = f.path();
        if p.extension().is_some_and(|x| x == "py") {
            files.push(p);
        }
    }
    let payload = match install {
        Install::Deb(p) | Install::Command(p) => p.clone(),
    };
    files.push(payload.clone());
    vm.sh("mkdir -p /tmp/in /opt/peers")?;
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    vm.copy_in(&refs, "/tmp/in/")?;
    vm.sh(
        "cp /tmp/in/*.py /opt/peers/ && cp /tmp/in/mcp-server.service /etc/systemd/system/ \
         && systemctl daemon-reload && systemctl start mcp-server",
    )?;

    // --- install ---
    let fname = payload
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .to_string();
    let bin = match install {
        Install::Deb(_) => {
            let o = vm.sh(&format!("dpkg -i /tmp/in/{fname} 2>&1"))?;
            c.record(
                "dpkg -i interceptor.deb",
                true,
                o.lines().last().unwrap_or(""),
            );
            "/usr/bin/interceptor"
        }
        Install::Command(_) => {
            let o = vm.sh(&format!(
                "chmod 755 /tmp/in/{fname} && /tmp/in/{fname} install --bin-dir /usr/local/bin 2>&1"
            ))?;
            c.record(
                "interceptor install",
                true,
                o.lines().count().to_string() + " actions",
            );
            "/usr/local/bin/interceptor"
        }
    };
    c.result(
        "installed files, account and modes",
        (|| {
            let o = vm.sh(&format!(
                "stat -c '%n %a %U:%G' {bin} /etc/interceptor /etc/interceptor/interceptor.toml \
                 /var/lib/interceptor; getent passwd interceptor; systemctl is-enabled interceptor; \
                 systemctl cat interceptor | grep -E '^(Type|ExecStart|CapabilityBoundingSet)='"
            ))?;
            for want in [
                &format!("{bin} 755 root:root"),
                "/etc/interceptor 750 root:interceptor",
                "/etc/interceptor/interceptor.toml 640 root:interceptor",
                "/var/lib/interceptor 750 root:interceptor",
                "interceptor:x:",
                "enabled",
                "Type=notify",
                &format!("ExecStart={bin} run --config /etc/interceptor/interceptor.toml"),
                "CapabilityBoundingSet=CAP_BPF CAP_NET_ADMIN CAP_PERFMON",
            ] {
                if !o.contains(want) {
                    bail!("missing {want:?} in\n{o}");
                }
            }
            Ok(String::new())
        })(),
    );
    // The skeleton refuses to start until a service is declared.
    c.result(
        "skeleton configuration is refused with a clear error",
        (|| {
            let (rc, o, e) = vm.ssh_raw(
                &format!("{bin} check-config /etc/interceptor/interceptor.toml"),
                Duration::from_secs(30),
            )?;
            if rc == 0 || !(o.clone() + &e).contains("no protected service") {
                bail!("rc {rc}: {o}{e}");
            }
            Ok(String::new())
        })(),
    );
    vm.sh(
        "cp /tmp/in/interceptor.toml /etc/interceptor/interceptor.toml && \
         cp /tmp/in/v1.policy.toml /etc/interceptor/policies/vm.policy.toml",
    )?;
    // The server must be listening before it gets protected (python under TCG is slow).
    wait_guest(
        vm,
        "ss -Hltn 'sport = :8080' | grep -q LISTEN",
        Duration::from_secs(120),
    )
    .context("the MCP server did not start in the guest")?;
    let t = Instant::now();
    vm.sh("systemctl start interceptor")?;
    let st = vm.show("interceptor")?;
    c.record(
        "systemctl start returns once READY=1 (Type=notify)",
        st.get("ActiveState").map(String::as_str) == Some("active")
            && st
                .get("StatusText")
                .is_some_and(|s| s.starts_with("serving 1 service")),
        format!("{:.1}s, {st:?}", t.elapsed().as_secs_f64()),
    );
    let pid = st.get("MainPID").cloned().unwrap_or_default();

    // --- hardening as the kernel sees it ---
    c.result(
        "capabilities exactly BPF, NET_ADMIN, PERFMON; no_new_privs; seccomp",
        (|| {
            let o = vm.sh(&format!(
                "grep -E '^(Cap|NoNewPrivs|Seccomp:|Uid)' /proc/{pid}/status"
            ))?;
            let field = |name: &str| -> Result<u64> {
                let v = o
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .with_context(|| format!("no {name} in {o}"))?;
                Ok(u64::from_str_radix(v.trim(), 16)?)
            };
            for f in ["CapEff:", "CapPrm:", "CapBnd:"] {
                let v = field(f)?;
                if v != CAPS_WANTED {
                    bail!("{f} {v:016x}, want {CAPS_WANTED:016x}\n{o}");
                }
            }
            if !o.contains("NoNewPrivs:\t1") || !o.contains("Seccomp:\t2") {
                bail!("{o}");
            }
            let ro = vm.sh(&format!(
                "nsenter -t {pid} -m sh -c 'touch /usr/x 2>&1; touch /etc/x 2>&1; \
                 test -w /var/lib/interceptor && echo statedir-rw'"
            ))?;
            if ro.matches("Read-only file system").count() != 2 || !ro.contains("statedir-rw") {
                bail!("ProtectSystem=strict not in effect: {ro}");
            }
            Ok(format!("{CAPS_WANTED:016x}"))
        })(),
    );
    c.result(
        "programs pinned in /sys/fs/bpf, status sees the agent",
        (|| {
            let o = vm.sh(&format!("{bin} status --json"))?;
            let v: Value = serde_json::from_str(&o)?;
            if v["agent"]["running"] != true
                || v["programs"]
                    .as_array()
                    .is_none_or(|p| p.is_empty() || p.iter().any(|p| p["attached"] != true))
            {
                bail!("{o}");
            }
            Ok(v["pin_dir"].as_str().unwrap_or("").to_string())
        })(),
    );

    // --- a real MCP client on the test host, through the interceptor ---
    let token = oidc.token()?;
    let url = format!("http://{}/mcp", vm.mcp_addr());
    c.result(
        "official MCP client (py2) on the test host calls echo through the interceptor",
        (|| {
            let v = py_client(
                root,
                &url,
                &token,
                "echo",
                r#"{"text":"hello from the test host"}"#,
            )?;
            let text = v["result"]["content"][0]["text"].as_str().unwrap_or("");
            if v["ok"] != true || text != "hello from the test host" {
                bail!("{v}");
            }
            Ok(String::new())
        })(),
    );
    c.result(
        "structured exchange records in the journal",
        (|| {
            let recs = vm.journal("interceptor", "EVENT=exchange")?;
            let r = recs
                .iter()
                .find(|r| r["MCP_NAME"] == "echo" && r["OUTCOME"] == "result")
                .with_context(|| format!("no echo exchange among {} records", recs.len()))?;
            for (k, want) in [
                ("SERVICE", "crm"),
                ("CALLER_KIND", "remote"),
                ("CLIENT_ID", "crm-batch"),
                ("ROLE", "batch"),
                ("SYSLOG_IDENTIFIER", "interceptor"),
                ("PRIORITY", "6"), // informational
            ] {
                if r[k] != want {
                    bail!("{k} = {}, want {want}: {r}", r[k]);
                }
            }
            if !r["PEER"]
                .as_str()
                .is_some_and(|p| p.starts_with("10.0.2.2:"))
            {
                bail!(
                    "PEER {}: the test host should be seen as 10.0.2.2",
                    r["PEER"]
                );
            }
            Ok(format!("{} records", recs.len()))
        })(),
    );

    // --- policy reload through systemctl reload ---
    c.result("systemctl reload swaps the policy (echo becomes denied, add stays allowed)", (|| {
        vm.sh("cp /tmp/in/v2.policy.toml /etc/interceptor/policies/vm.policy.toml && systemctl reload interceptor")?;
        wait_guest(
            vm,
            "journalctl -u interceptor EVENT=policy_reloaded -o cat | grep -q .",
            Duration::from_secs(30),
        )?;
        let denied = probe(vm.mcp_addr(), &token, "echo", 900_001);
        let allowed = probe(vm.mcp_addr(), &token, "add", 900_002);
        let recs = vm.journal("interceptor", "EVENT=exchange JSONRPC_ID=900001")?;
        vm.sh("cp /tmp/in/v1.policy.toml /etc/interceptor/policies/vm.policy.toml && systemctl reload interceptor")?;
        if denied.status != Some(403) || allowed.status != Some(200) {
            bail!("echo {denied:?}, add {allowed:?}");
        }
        if recs.first().is_none_or(|r| r["OUTCOME"] != "denied") {
            bail!("no denied exchange record: {recs:?}");
        }
        let st = vm.show("interceptor")?;
        if st.get("MainPID") != Some(&pid) {
            bail!("reload restarted the agent: {st:?}");
        }
        Ok(String::new())
    })());

    // --- the watchdog: pings keep a healthy agent alive past WatchdogSec ---
    c.result(
        "watchdog pings keep the agent running past WatchdogSec=20s",
        (|| {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let up = vm.sh(
                    "echo $(( $(awk '{printf \"%d\", $1*1000000}' /proc/uptime) - \
                 $(systemctl show -p ExecMainStartTimestampMonotonic --value interceptor) ))",
                )?;
                let up: u64 = up.trim().parse().unwrap_or(0);
                if up > 25_000_000 {
                    let st = vm.show("interceptor")?;
                    if st.get("MainPID") != Some(&pid)
                        || st.get("NRestarts").map(String::as_str) != Some("0")
                    {
                        bail!("restarted meanwhile: {st:?}");
                    }
                    return Ok(format!(
                        "up {}s, WatchdogUSec={}",
                        up / 1_000_000,
                        st.get("WatchdogUSec").cloned().unwrap_or_default()
                    ));
                }
                if Instant::now() > deadline {
                    bail!("not up long enough");
                }
                std::thread::sleep(Duration::from_secs(2));
            }
        })(),
    );

    // --- disruptions under load: nothing bypasses the agent ---
    let mut last_pid = pid.clone();
    let phases: Vec<(&str, String)> = {
        let mut p = vec![
            (
                "systemctl restart",
                "systemctl restart interceptor".to_string(),
            ),
            (
                "kill -9 of the agent",
                "kill -9 $(systemctl show -p MainPID --value interceptor)".to_string(),
            ),
        ];
        if hung_phase {
            p.push((
                "hung agent (SIGSTOP): watchdog kills and restarts it",
                "kill -STOP $(systemctl show -p MainPID --value interceptor)".to_string(),
            ));
        }
        p
    };
    let mut next_id = 1_000_000u64;
    for (name, action) in phases {
        let res = disruption(vm, &token, name, &action, &mut last_pid, &mut next_id);
        c.result(
            &format!("{name}: no request bypasses the agent; it comes back"),
            res,
        );
    }
    c.result(
        "restarted agents took the pins over (no second attachment)",
        (|| {
            let readies = vm.journal("interceptor", "EVENT=ready")?;
            let takeovers = readies.iter().filter(|r| r["TAKEOVER"] == "true").count();
            if readies.len() < 3 || takeovers != readies.len() - 1 {
                bail!(
                    "{} ready records, {takeovers} with TAKEOVER=true",
                    readies.len()
                );
            }
            Ok(format!("{} starts, {takeovers} takeovers", readies.len()))
        })(),
    );
    c.result(
        "server never saw the test host (every connection came from the agent)",
        (|| {
            let log = vm.sh("journalctl -u mcp-server -o cat --no-pager")?;
            let posts: Vec<&str> = log.lines().filter(|l| l.contains("\"POST /mcp")).collect();
            let direct: Vec<&&str> = posts.iter().filter(|l| l.contains("10.0.2.2:")).collect();
            if posts.is_empty() || !direct.is_empty() {
                bail!(
                    "{} POSTs, {} from 10.0.2.2: {direct:?}",
                    posts.len(),
                    direct.len()
                );
            }
            Ok(format!(
                "{} POSTs, all from the guest's own address",
                posts.len()
            ))
        })(),
    );

    // --- the audit log, after restarts, kill -9 and a hang: verifies offline, misses nothing ---
    c.result(
        "audit log verifies offline and holds every journalled exchange",
        (|| {
            let verdict = vm.sh(&format!(
                "{bin} audit verify --pubkey /etc/interceptor/audit-signing.key.pub 2>&1"
            ))?;
            // An exchange is in the log as its final record or, when the agent was killed
            // between logging it and committing that record (its response then never
            // completed), as the `request` record committed before it was forwarded.
            let rows = vm.sh(&format!("{bin} audit tail -n 1000000 --json"))?;
            let rows: Vec<serde_json::Value> = rows
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            let finished: std::collections::HashSet<u64> = rows
                .iter()
                .filter(|r| r["kind"] == "exchange")
                .filter_map(|r| r["body"]["request_seq"].as_u64())
                .collect();
            let finals = rows.iter().filter(|r| r["kind"] == "exchange").count();
            let incomplete = rows
                .iter()
                .filter(|r| r["kind"] == "request")
                .filter(|r| r["seq"].as_u64().is_some_and(|s| !finished.contains(&s)))
                .count();
            let audited = finals + incomplete;
            let journalled = vm.journal("interceptor", "EVENT=exchange")?.len();
            if audited == 0 || audited < journalled {
                bail!("{audited} exchanges audited, {journalled} in the journal");
            }
            Ok(format!(
                "{audited} exchanges audited ({finals} final records, {incomplete} cut by a kill; {journalled} journalled); {}",
                verdict.lines().last().unwrap_or("")
            ))
        })(),
    );

    // --- uninstall: the service goes, the pins stay (fail closed) ---
    c.result("uninstall removes the service; pinned programs keep the port closed", (|| {
        match install {
            Install::Deb(_) => vm.sh("dpkg -r interceptor >/dev/null 2>&1")?,
            Install::Command(_) => vm.sh(&format!("{bin} uninstall --bin-dir /usr/local/bin"))?,
        };
        // dpkg -r masks the unit (deb-systemd-helper); uninstall removes it.
        let state = vm.sh("systemctl show -p LoadState -p ActiveState --value interceptor | tr '\\n' ' '")?;
        let gone = if (state.contains("not-found") || state.contains("masked")) && state.contains("inactive") {
            "gone".to_string()
        } else {
            state
        };
        let pins = vm.sh("ls /sys/fs/bpf/interceptor/default/*/ | wc -l")?;
        let after = probe(vm.mcp_addr(), &token, "add", 2_000_000);
        let kept = vm.sh("test -d /var/lib/interceptor && test -f /etc/interceptor/interceptor.toml && echo kept")?;
        if gone.trim() != "gone" || pins.trim() == "0" || after.answered() || kept.trim() != "kept" {
            bail!("unit {gone}, {pins} pins, probe {after:?}, state {kept}");
        }
        Ok(String::new())
    })());
    Ok(())
}

fn wait_guest(vm: &Vm, cond: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if vm.ssh_raw(cond, Duration::from_secs(30))?.0 == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("guest condition not met within {timeout:?}: {cond}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn py_client(root: &Path, url: &str, token: &str, tool: &str, args: &str) -> Result<Value> {
    let peers = root.join("tests/peers");
    let out = Command::new(peers.join(".venv-mcp2/bin/python"))
        .arg(peers.join("py2_client.py"))
        .args([
            "--url",
            url,
            "--scenario",
            "call",
            "--tool",
            tool,
            "--args",
            args,
        ])
        .args([
            "--header",
            &format!("Authorization: Bearer {token}"),
            "--timeout",
            "60",
        ])
        .output()
        .context("running py2_client.py")?;
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "py2_client output: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// What one raw `tools/call` got.
#[derive(Debug, Clone)]
struct Probe {
    id: u64,
    status: Option<u16>,
    body: String,
    error: Option<String>,
}

impl Probe {
    fn answered(&self) -> bool {
        self.status.is_some()
    }
    fn ok(&self) -> bool {
        self.status == Some(200) && self.body.contains("\"result\"")
    }
}

/// One stateless (2026-07-28) `tools/call` on its own connection, as the SDK 2.x client sends it.
fn probe(addr: SocketAddr, token: &str, tool: &str, id: u64) -> Probe {
    let mut p = Probe {
        id,
        status: None,
        body: String::new(),
        error: None,
    };
    let args = if tool == "add" {
        r#"{"a":1,"b":2}"#.to_string()
    } else {
        format!(r#"{{"text":"probe-{id}"}}"#)
    };
    let body = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"tools/call\",\"params\":{{\"name\":\"{tool}\",\
         \"arguments\":{args},\"_meta\":{{\"io.modelcontextprotocol/protocolVersion\":\"2026-07-28\",\
         \"io.modelcontextprotocol/clientCapabilities\":{{}},\
         \"io.modelcontextprotocol/clientInfo\":{{\"name\":\"vm-test-probe\",\"version\":\"1\"}}}}}}}}"
    );
    let req = format!(
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2026-07-28\r\n\
         Mcp-Method: tools/call\r\nMcp-Name: {tool}\r\nAuthorization: Bearer {token}\r\n\
         Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let run = || -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        s.write_all(req.as_bytes())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    match run() {
        Ok(resp) if resp.starts_with("HTTP/1.1 ") => {
            p.status = resp[9..12].parse().ok();
            p.body = resp
                .split_once("\r\n\r\n")
                .map(|x| x.1.to_string())
                .unwrap_or_default();
        }
        Ok(resp) if resp.is_empty() => p.error = Some("closed without a response".into()),
        Ok(resp) => p.error = Some(format!("not HTTP: {:.60}", resp)),
        Err(e) => p.error = Some(e.to_string()),
    }
    p
}

/// Calls the server continuously while `action` disrupts the agent; then checks that every
/// answered call went through the agent (an exchange record with its JSON-RPC id) and that the
/// service came back by itself.
fn disruption(
    vm: &Vm,
    token: &str,
    name: &str,
    action: &str,
    last_pid: &mut String,
    next_id: &mut u64,
) -> Result<String> {
    let before = vm.show("interceptor")?;
    let restarts_before: u64 = before
        .get("NRestarts")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let stop = Arc::new(AtomicBool::new(false));
    let results = Arc::new(Mutex::new(Vec::<Probe>::new()));
    let ids = Arc::new(AtomicU64::new(*next_id));
    let addr = vm.mcp_addr();
    let prober = {
        let (stop, results, ids, token) = (
            stop.clone(),
            results.clone(),
            ids.clone(),
            token.to_string(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let id = ids.fetch_add(1, Ordering::Relaxed);
                let p = probe(addr, &token, "echo", id);
                let failed = !p.ok();
                results.lock().expect("results").push(p);
                std::thread::sleep(Duration::from_millis(if failed { 200 } else { 100 }));
            }
        })
    };
    // Some calls before, the disruption, then until the service is back and answering.
    std::thread::sleep(Duration::from_secs(2));
    vm.sh(action)?;
    let back = vm.wait_active("interceptor", last_pid, Duration::from_secs(120));
    let answering = Instant::now();
    while back.is_ok() && answering.elapsed() < Duration::from_secs(60) {
        let n_ok_after = results
            .lock()
            .expect("results")
            .iter()
            .rev()
            .take_while(|p| p.ok())
            .count();
        if n_ok_after >= 5 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = prober.join();
    *next_id = ids.load(Ordering::Relaxed) + 1;
    let after = back?;
    let probes = results.lock().expect("results").clone();
    let ok: Vec<&Probe> = probes.iter().filter(|p| p.ok()).collect();
    let unanswered = probes.iter().filter(|p| !p.answered()).count();
    let other: Vec<&Probe> = probes.iter().filter(|p| p.answered() && !p.ok()).collect();
    // Every answered call has the agent's exchange record (the agent saw it, decided it).
    std::thread::sleep(Duration::from_secs(1));
    let recs = vm.journal("interceptor", "EVENT=exchange")?;
    let recorded: HashSet<String> = recs
        .iter()
        .filter_map(|r| r["JSONRPC_ID"].as_str().map(str::to_string))
        .collect();
    let missing: Vec<u64> = ok
        .iter()
        .filter(|p| !recorded.contains(&p.id.to_string()))
        .map(|p| p.id)
        .collect();
    let restarts_after: u64 = after
        .get("NRestarts")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let new_pid = after.get("MainPID").cloned().unwrap_or_default();
    let detail = format!(
        "{} calls: {} answered through the agent, {} refused/closed while it was down, {} other; \
         pid {last_pid} -> {new_pid}, NRestarts {restarts_before} -> {restarts_after}",
        probes.len(),
        ok.len(),
        unanswered,
        other.len()
    );
    *last_pid = new_pid;
    if !missing.is_empty() {
        bail!("{detail}; answered without an exchange record (bypass?): {missing:?}");
    }
    let auto_restart = !name.starts_with("systemctl restart");
    // A response cut off by the kill (headers sent, body never finished) went through the
    // agent, but its record dies with it: exchanges are recorded when they complete.
    let cut: Vec<u64> = other
        .iter()
        .filter(|p| auto_restart && !p.body.contains("\"jsonrpc\""))
        .map(|p| p.id)
        .collect();
    // Other answers (e.g. 502 while the server was unreachable) must come from the agent,
    // with its record.
    let unrecorded: Vec<&&Probe> = other
        .iter()
        .filter(|p| !cut.contains(&p.id) && !recorded.contains(&p.id.to_string()))
        .collect();
    if !unrecorded.is_empty() {
        bail!("{detail}; non-result answers without records: {unrecorded:?}");
    }
    if ok.is_empty() {
        bail!("{detail}; no call got through at all");
    }
    if auto_restart {
        if restarts_after <= restarts_before {
            bail!("{detail}; systemd did not restart it (Restart=on-failure)");
        }
        if unanswered == 0 {
            bail!("{detail}; no call was refused while the agent was down: was it down?");
        }
    }
    if name.starts_with("hung") {
        let j = vm.sh(
            "journalctl -u interceptor -o cat --no-pager | grep -c 'Watchdog timeout' || true",
        )?;
        if j.trim() == "0" {
            bail!("{detail}; systemd logged no watchdog timeout");
        }
    }
    let errors: BTreeMap<String, usize> =
        probes
            .iter()
            .filter_map(|p| p.error.clone())
            .fold(BTreeMap::new(), |mut m, e| {
                *m.entry(e).or_default() += 1;
                m
            });
    Ok(format!(
        "{detail}; client-side errors {errors:?}; responses cut off by the kill {cut:?}"
    ))
}
