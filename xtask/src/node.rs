//! A fake node for the benchmarks: a server host and a client host (network namespaces joined
//! by veth, 10.213.99.1 and .2), bpffs and cgroup2 mounted in a temp dir, and the real agent.
//! Everything is torn down in `Drop`.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

pub const SERVER_IP: &str = "10.213.99.1";
pub const CLIENT_IP: &str = "10.213.99.2";

pub fn sh(cmd: &str, args: &[&str]) -> Result<()> {
    let st = Command::new(cmd)
        .args(args)
        .status()
        .with_context(|| format!("running {cmd}"))?;
    if !st.success() {
        bail!("{cmd} {args:?} failed: {st}");
    }
    Ok(())
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn wait_for_line(path: &Path, needle: &str, timeout: Duration) -> Result<()> {
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

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn terminate(c: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &c.id().to_string()])
        .status();
}

fn reap(c: &mut Child, grace: Duration) {
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    let _ = c.wait();
}

pub struct Node {
    pub id: String,
    pub dir: PathBuf,
    children: Vec<Child>,
    agent: Option<Child>,
    agent_cfg: Option<PathBuf>,
    agent_bin: PathBuf,
}

impl Node {
    /// Creates the namespaces, the veth pair and the bpffs/cgroup2 mounts.
    pub fn new(agent_bin: PathBuf) -> Result<Node> {
        let id = format!("icb{}", std::process::id() % 100000);
        let dir = std::env::temp_dir().join(&id);
        let node = Node {
            id: id.clone(),
            dir: dir.clone(),
            children: Vec::new(),
            agent: None,
            agent_cfg: None,
            agent_bin,
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
                "link", "add", &va, "netns", &srv, "type", "veth", "peer", "name", &vb, "netns",
                &cli,
            ],
        )?;
        let (sa, ca) = (format!("{SERVER_IP}/24"), format!("{CLIENT_IP}/24"));
        sh("ip", &["-n", &srv, "addr", "add", &sa, "dev", &va])?;
        sh("ip", &["-n", &cli, "addr", "add", &ca, "dev", &vb])?;
        for (ns, dev) in [(&srv, &va), (&cli, &vb)] {
            sh("ip", &["-n", ns, "link", "set", "lo", "up"])?;
            sh("ip", &["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(node)
    }

    pub fn srv(&self) -> String {
        format!("{}-srv", self.id)
    }

    pub fn cli(&self) -> String {
        format!("{}-cli", self.id)
    }

    /// `ip netns exec NS PROGRAM ARGS...` (ip execs the program: the child's pid is the
    /// program's pid). Stopped with SIGTERM when the node is dropped.
    pub fn spawn_in(
        &mut self,
        netns: &str,
        program: &Path,
        args: &[&str],
        stdout: Stdio,
        stderr: Stdio,
    ) -> Result<u32> {
        let c = Command::new("ip")
            .args(["netns", "exec", netns])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let pid = c.id();
        self.children.push(c);
        Ok(pid)
    }

    /// Stops one process started with `spawn_in` (SIGTERM, then SIGKILL after `grace`).
    pub fn stop(&mut self, pid: u32, grace: Duration) {
        if let Some(i) = self.children.iter().position(|c| c.id() == pid) {
            let mut c = self.children.swap_remove(i);
            terminate(&mut c);
            reap(&mut c, grace);
        }
    }

    /// Writes the agent configuration: the `[agent]` table for this node plus `services`
    /// (TOML `[[services]]` tables).
    pub fn write_agent_config(&mut self, services: &str) -> Result<PathBuf> {
        self.write_agent_config_with(services, "")
    }

    /// Like [`Node::write_agent_config`], with extra keys for the `[audit]` table (the audit
    /// log lives in the node's directory: `state/audit.db`, key `keys/audit-signing.key`).
    pub fn write_agent_config_with(&mut self, services: &str, audit: &str) -> Result<PathBuf> {
        let cfg = self.dir.join("agent.toml");
        std::fs::write(
            &cfg,
            format!(
                "[agent]\ninstance = \"{id}\"\nbpffs = \"{b}\"\ncgroup2 = \"{c}\"\nruntime_dir = \"{r}\"\n\
                 log_format = \"json\"\nlisten_port = 15001\nstate_dir = \"{st}\"\n\
                 [audit]\nsigning_key = \"{k}\"\n{audit}\n{services}",
                id = self.id,
                b = self.dir.join("bpf").display(),
                c = self.dir.join("cg2").display(),
                r = self.dir.join("run").display(),
                st = self.dir.join("state").display(),
                k = self.dir.join("keys/audit-signing.key").display(),
            ),
        )?;
        self.agent_cfg = Some(cfg.clone());
        Ok(cfg)
    }

    /// Starts the agent in the server namespace with `INTERCEPTOR_LOG=log_filter` (which must
    /// let `interceptor::agent=info` through), its stderr to `log`, and waits for "ready".
    /// Returns the agent's pid.
    pub fn start_agent(&mut self, log_filter: &str, log: &Path) -> Result<u32> {
        let cfg = self.agent_cfg.clone().context("write_agent_config first")?;
        if self.agent.is_some() {
            bail!("the agent is already running");
        }
        let c = Command::new("ip")
            .args(["netns", "exec", &self.srv()])
            .arg(&self.agent_bin)
            .args(["run", "--config"])
            .arg(&cfg)
            .env("INTERCEPTOR_LOG", log_filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .context("starting the agent")?;
        let pid = c.id();
        self.agent = Some(c);
        wait_for_line(log, "\"ready\"", Duration::from_secs(20))?;
        Ok(pid)
    }

    /// SIGTERM to the agent and wait for it to exit (its programs stay pinned, so the next
    /// `start_agent` takes them over).
    pub fn stop_agent(&mut self) {
        if let Some(mut c) = self.agent.take() {
            terminate(&mut c);
            reap(&mut c, Duration::from_secs(10));
        }
    }

    /// `interceptor status` output.
    pub fn agent_status(&self) -> Result<String> {
        let cfg = self.agent_cfg.as_ref().context("no agent config")?;
        let st = Command::new(&self.agent_bin)
            .args(["status", "--config"])
            .arg(cfg)
            .output()?;
        Ok(String::from_utf8_lossy(&st.stdout).into_owned())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop_agent();
        for c in &mut self.children {
            terminate(c);
        }
        for c in &mut self.children {
            reap(c, Duration::from_secs(5));
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

/// CPU time (user + system, all threads) of a process, in microseconds, from
/// `/proc/<pid>/stat` (clock ticks of 10 ms: USER_HZ is 100 in the Linux ABI).
pub fn cpu_us(pid: &str) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after "(comm)": state is the first, utime the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64> {
        f.get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .context("malformed stat")
    };
    Ok((ticks(11)? + ticks(12)?) * 10_000)
}

/// CPU time all processors spent running tasks (user, nice, system, steal: not idle, I/O
/// wait or interrupt time, which the kernel does not charge to any process) since boot, in
/// microseconds, from the first line of `/proc/stat`.
pub fn system_busy_us() -> Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy = [0, 1, 2, 7]
        .iter()
        .map(|&i| f.get(i).copied().unwrap_or(0))
        .sum::<u64>();
    Ok(busy * 10_000)
}
