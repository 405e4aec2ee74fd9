//! Loading, attaching, pinning and taking over the eBPF programs, and the agent's view of
//! their maps (services, agent sockets, connection origins, kernel counters).
//!
//! Pins live in `<bpffs>/interceptor/<instance>/<generation>/`, where the generation is a hash
//! of the embedded object. A restarted agent with the same object takes the existing pins over
//! (no second attachment); a different object is attached first and the old generation removed
//! after, so redirection never lapses. The agent does not keep link file descriptors: only the
//! pins hold the programs attached, so `interceptor detach` (removing the pins) detaches them.
use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::Mutex,
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, PerCpuArray, SockMap},
    programs::{
        CgroupAttachMode, CgroupSockAddr, SkLookup, SockOps,
        links::{FdLink, PinnedLink},
    },
};
use interceptor_common::{
    AgentConfig, CONFIG_VALID, ConnOrigin, Counters, Endpoint, MAP_AGENT_SOCKS, MAP_CONFIG,
    MAP_COUNTERS, MAP_LOCAL_ADDRS, MAP_ORIGINS, MAP_SERVICES, PROG_CONNECT4, PROG_CONNECT6,
    PROG_GETPEERNAME4, PROG_GETPEERNAME6, PROG_SK_LOOKUP, PROG_SOCK_OPS, SOCK_IDX_V4, SOCK_IDX_V6,
    ServiceValue,
};
use tracing::{info, warn};

use crate::{config::ServiceConfig, sys};

/// The eBPF object built by build.rs from `interceptor-ebpf`.
pub static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/interceptor-ebpf"));

/// Every program, in attach order, with its pin file name.
pub const PROGRAMS: [&str; 6] = [
    PROG_SOCK_OPS,
    PROG_CONNECT4,
    PROG_CONNECT6,
    PROG_GETPEERNAME4,
    PROG_GETPEERNAME6,
    PROG_SK_LOOKUP,
];

/// FNV-1a of the object: names the pin generation.
pub fn object_generation() -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in OBJECT {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

fn link_pin(dir: &Path, prog: &str) -> PathBuf {
    dir.join(format!("link_{prog}"))
}

/// Where the programs attach.
pub struct AttachPoints {
    pub bpffs: PathBuf,
    pub pin_root: PathBuf,
    /// The cgroup directory (inside a cgroup2 mount) for connect/getpeername/sock_ops.
    pub cgroup_dir: PathBuf,
}

/// One attached program as seen through its pin.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LinkState {
    pub name: String,
    pub attached: bool,
    pub link_id: Option<u32>,
    pub program_id: Option<u32>,
}

/// Handles on the pinned maps, owned by the running agent.
pub struct Kernel {
    pub generation_dir: PathBuf,
    pub took_over: bool,
    pub links: Vec<LinkState>,
    config: Mutex<Array<MapData, AgentConfig>>,
    services: Mutex<HashMap<MapData, Endpoint, ServiceValue>>,
    local_addrs: Mutex<HashMap<MapData, Endpoint, u8>>,
    sockets: Mutex<SockMap<MapData>>,
    origins: Mutex<HashMap<MapData, Endpoint, ConnOrigin>>,
    counters: PerCpuArray<MapData, Counters>,
    // Keeps the object's other maps (AYA_LOGS etc.) alive.
    _ebpf: Ebpf,
}

fn take<T: TryFrom<Map>>(ebpf: &mut Ebpf, name: &str) -> Result<T>
where
    <T as TryFrom<Map>>::Error: std::error::Error + Send + Sync + 'static,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

/// Makes sure `dir` is a bpffs mount (mounting one if it is not).
pub fn ensure_bpffs(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if sys::fs_magic(dir)? != sys::BPF_FS_MAGIC {
        sys::mount_pseudo("bpf", dir)
            .with_context(|| format!("mounting bpffs on {}", dir.display()))?;
        info!(path = %dir.display(), "mounted bpffs");
    }
    Ok(())
}

/// Finds the cgroup2 mount (or mounts one at `fallback`).
pub fn ensure_cgroup2(configured: Option<&Path>, fallback: &Path) -> Result<PathBuf> {
    if let Some(dir) = configured {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        if sys::fs_magic(dir)? != sys::CGROUP2_SUPER_MAGIC {
            sys::mount_pseudo("cgroup2", dir)
                .with_context(|| format!("mounting cgroup2 on {}", dir.display()))?;
            info!(path = %dir.display(), "mounted cgroup2");
        }
        return Ok(dir.to_path_buf());
    }
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    for line in mounts.lines() {
        let mut f = line.split_whitespace();
        let (_, Some(target), Some(fstype)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if fstype == "cgroup2" {
            return Ok(PathBuf::from(target.replace("\\040", " ")));
        }
    }
    ensure_cgroup2(Some(fallback), fallback)
}

fn endpoint_of(ip: IpAddr, port: u16) -> Endpoint {
    match crate::config::canonical(ip) {
        IpAddr::V4(v4) => Endpoint::v4(u32::from_ne_bytes(v4.octets()), port),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            Endpoint::v6([w(0), w(4), w(8), w(12)], port)
        }
    }
}

/// The socket address an endpoint stands for.
pub fn socket_addr_of(ep: &Endpoint) -> SocketAddr {
    if ep.family == interceptor_common::AF_INET {
        SocketAddr::new(
            IpAddr::V4(Ipv4Addr::from(ep.addr[0].to_ne_bytes())),
            ep.port,
        )
    } else {
        let mut o = [0u8; 16];
        for (i, w) in ep.addr.iter().enumerate() {
            o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        SocketAddr::new(IpAddr::V6(Ipv6Addr::from(o)), ep.port)
    }
}

/// The generation directory currently pinned under `pin_root`, if any.
pub fn current_generation(pin_root: &Path) -> Option<PathBuf> {
    let wanted = pin_root.join(object_generation());
    if wanted.is_dir() {
        return Some(wanted);
    }
    std::fs::read_dir(pin_root)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.is_dir())
}

/// The state of each program's link, read from the pins (works with the agent down).
pub fn link_states(generation_dir: Option<&Path>) -> Vec<LinkState> {
    PROGRAMS
        .iter()
        .map(|name| {
            let info = generation_dir
                .and_then(|d| PinnedLink::from_pin(link_pin(d, name)).ok())
                .and_then(|l| FdLink::from(l).info().ok());
            LinkState {
                name: (*name).to_string(),
                attached: info.is_some(),
                link_id: info.as_ref().map(|i| i.id()),
                program_id: info.as_ref().map(|i| i.program_id()),
            }
        })
        .collect()
}

/// Per-service counters summed over CPUs, read from the pins.
pub fn read_counters(generation_dir: &Path, slots: usize) -> Result<Vec<Counters>> {
    let data = MapData::from_pin(generation_dir.join(MAP_COUNTERS)).with_context(|| {
        format!(
            "opening pinned {MAP_COUNTERS} in {}",
            generation_dir.display()
        )
    })?;
    let arr: PerCpuArray<MapData, Counters> = PerCpuArray::try_from(Map::PerCpuArray(data))?;
    sum_counters(&arr, slots)
}

fn sum_counters(arr: &PerCpuArray<MapData, Counters>, slots: usize) -> Result<Vec<Counters>> {
    let mut out = Vec::with_capacity(slots);
    for i in 0..slots as u32 {
        let per_cpu = arr.get(&i, 0)?;
        let mut c = Counters::default();
        for v in per_cpu.iter() {
            c.steered += v.steered;
            c.refused += v.refused;
            c.local_redirects += v.local_redirects;
            c.upstream += v.upstream;
        }
        out.push(c);
    }
    Ok(out)
}

/// Removes every pin of an instance: the programs detach as their link pins go.
pub fn detach(pin_root: &Path) -> Result<bool> {
    if !pin_root.exists() {
        return Ok(false);
    }
    remove_pins(pin_root)?;
    Ok(true)
}

fn remove_pins(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            remove_pins(&path)?;
        } else {
            std::fs::remove_file(&path).with_context(|| format!("unpinning {}", path.display()))?;
        }
    }
    std::fs::remove_dir(dir).with_context(|| format!("removing {}", dir.display()))
}

impl Kernel {
    /// Loads the programs (or takes over the pinned ones) and returns handles on the maps.
    pub fn start(points: &AttachPoints) -> Result<Kernel> {
        ensure_bpffs(&points.bpffs)?;
        let generation_dir = points.pin_root.join(object_generation());
        let complete = PROGRAMS
            .iter()
            .all(|p| link_pin(&generation_dir, p).exists());
        if generation_dir.exists() && !complete {
            warn!(dir = %generation_dir.display(), "incomplete pin generation found; recreating it");
            remove_pins(&generation_dir)?;
        }
        std::fs::create_dir_all(&generation_dir)
            .with_context(|| format!("creating {}", generation_dir.display()))?;

        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&generation_dir)
            .load(OBJECT)
            .context("loading the eBPF object (maps)")?;

        let logger = if complete {
            // Programs already attached from an earlier run of this agent: take them over.
            let sk_lookup_prog = link_states(Some(&generation_dir))
                .into_iter()
                .find(|l| l.name == PROG_SK_LOOKUP)
                .and_then(|l| l.program_id);
            sk_lookup_prog.and_then(|id| aya_log::EbpfLogger::init_from_id(id).ok())
        } else {
            let logger = aya_log::EbpfLogger::init(&mut ebpf).ok();
            attach_all(&mut ebpf, points, &generation_dir)?;
            logger
        };
        if let Some(logger) = logger {
            spawn_log_pump(logger);
        }

        // Older generations (a different agent build) go only after ours is attached.
        if let Ok(entries) = std::fs::read_dir(&points.pin_root) {
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() && p != generation_dir {
                    info!(dir = %p.display(), "removing pins of an older program generation");
                    if let Err(e) = remove_pins(&p) {
                        warn!(dir = %p.display(), error = %e, "could not remove old pins");
                    }
                }
            }
        }

        let links = link_states(Some(&generation_dir));
        if let Some(l) = links.iter().find(|l| !l.attached) {
            bail!("program {} is not attached after setup", l.name);
        }
        Ok(Kernel {
            config: Mutex::new(take(&mut ebpf, MAP_CONFIG)?),
            services: Mutex::new(take(&mut ebpf, MAP_SERVICES)?),
            local_addrs: Mutex::new(take(&mut ebpf, MAP_LOCAL_ADDRS)?),
            sockets: Mutex::new(take(&mut ebpf, MAP_AGENT_SOCKS)?),
            origins: Mutex::new(take(&mut ebpf, MAP_ORIGINS)?),
            counters: take(&mut ebpf, MAP_COUNTERS)?,
            took_over: complete,
            generation_dir,
            links,
            _ebpf: ebpf,
        })
    }

    /// Publishes the agent's identity (netns, pid, socket mark, loopback port).
    pub fn set_agent(&self, netns_cookie: u64, listen_port: u16, mark: u32) -> Result<()> {
        let cfg = AgentConfig {
            netns_cookie,
            agent_tgid: std::process::id(),
            flags: CONFIG_VALID,
            agent_port: listen_port,
            _pad: 0,
            agent_addr4: u32::from_ne_bytes(Ipv4Addr::LOCALHOST.octets()),
            agent_addr6: endpoint_of(IpAddr::V6(Ipv6Addr::LOCALHOST), 0).addr,
            agent_mark: mark,
            _pad2: 0,
        };
        lock(&self.config)
            .set(0, cfg, 0)
            .context("writing agent config map")?;
        Ok(())
    }

    /// Puts the agent's listening sockets where sk_lookup finds them.
    pub fn register_listeners(&self, v4: &impl AsRawFd, v6: Option<&impl AsRawFd>) -> Result<()> {
        let mut socks = lock(&self.sockets);
        socks
            .set(SOCK_IDX_V4, v4, 0)
            .context("inserting the IPv4 listener into the sockmap")?;
        if let Some(v6) = v6 {
            socks
                .set(SOCK_IDX_V6, v6, 0)
                .context("inserting the IPv6 listener into the sockmap")?;
        }
        Ok(())
    }

    /// Makes the kernel's service table equal to the configuration.
    pub fn sync_services(&self, services: &[ServiceConfig]) -> Result<()> {
        let mut map = lock(&self.services);
        let wanted: Vec<(Endpoint, ServiceValue)> = services
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let key = match s.address {
                    Some(a) => endpoint_of(a, s.port),
                    None => Endpoint::any(s.port),
                };
                (
                    key,
                    ServiceValue {
                        id: i as u32,
                        flags: 0,
                    },
                )
            })
            .collect();
        let stale: Vec<Endpoint> = map
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !wanted.iter().any(|(w, _)| w == k))
            .collect();
        for k in stale {
            map.remove(&k).context("removing a stale service")?;
        }
        for (k, v) in wanted {
            map.insert(k, v, 0).context("inserting a service")?;
        }
        Ok(())
    }

    /// Makes the kernel's local-address set equal to `addrs`.
    pub fn sync_local_addrs(&self, addrs: &[IpAddr]) -> Result<()> {
        let mut map = lock(&self.local_addrs);
        let wanted: Vec<Endpoint> = addrs.iter().map(|a| endpoint_of(*a, 0)).collect();
        let stale: Vec<Endpoint> = map
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !wanted.contains(k))
            .collect();
        for k in stale {
            let _ = map.remove(&k);
        }
        for k in wanted {
            map.insert(k, 1, 0).context("inserting a local address")?;
        }
        Ok(())
    }

    /// What connect4/6 recorded for the local client whose socket is `peer` (removed once read).
    pub fn take_origin(&self, peer: SocketAddr) -> Option<ConnOrigin> {
        let key = endpoint_of(peer.ip(), peer.port());
        let mut map = lock(&self.origins);
        let v = map.get(&key, 0).ok()?;
        let _ = map.remove(&key);
        Some(v)
    }

    pub fn counters(&self, slots: usize) -> Result<Vec<Counters>> {
        sum_counters(&self.counters, slots)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// Cgroup programs attach through bpf_link (Linux 5.7+), which always allows several programs
// per cgroup; the link API takes no attach flags, hence `CgroupAttachMode::Single` (0).
fn attach_all(ebpf: &mut Ebpf, points: &AttachPoints, dir: &Path) -> Result<()> {
    let cgroup = File::open(&points.cgroup_dir)
        .with_context(|| format!("opening cgroup {}", points.cgroup_dir.display()))?;
    let netns = File::open("/proc/self/ns/net").context("opening /proc/self/ns/net")?;
    for name in PROGRAMS {
        let prog = ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?;
        let link: FdLink = if name == PROG_SK_LOOKUP {
            let p: &mut SkLookup = prog.try_into()?;
            p.load().with_context(|| format!("loading {name}"))?;
            let id = p
                .attach(&netns)
                .with_context(|| format!("attaching {name} to the netns"))?;
            p.take_link(id)?.into()
        } else if name == PROG_SOCK_OPS {
            let p: &mut SockOps = prog.try_into()?;
            p.load().with_context(|| format!("loading {name}"))?;
            let id = p
                .attach(&cgroup, CgroupAttachMode::Single)
                .with_context(|| format!("attaching {name} to {}", points.cgroup_dir.display()))?;
            p.take_link(id)?.try_into()?
        } else {
            let p: &mut CgroupSockAddr = prog.try_into()?;
            p.load().with_context(|| format!("loading {name}"))?;
            let id = p
                .attach(&cgroup, CgroupAttachMode::Single)
                .with_context(|| format!("attaching {name} to {}", points.cgroup_dir.display()))?;
            p.take_link(id)?.try_into()?
        };
        // Dropping the PinnedLink closes our fd; the pin alone keeps the program attached.
        drop(
            link.pin(link_pin(dir, name))
                .with_context(|| format!("pinning the link of {name}"))?,
        );
        info!(program = name, "attached");
    }
    Ok(())
}

/// Forwards aya-log records from the programs to the agent's log.
fn spawn_log_pump<T: log::Log + Send + 'static>(logger: aya_log::EbpfLogger<T>) {
    match sys::register_owned_fd(logger) {
        Ok(mut fd) => {
            tokio::spawn(async move {
                loop {
                    let Ok(mut guard) = fd.readable_mut().await else {
                        return;
                    };
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
            });
        }
        Err(e) => warn!(error = %e, "eBPF log forwarding unavailable"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_round_trip() {
        for s in ["10.1.2.3:8080", "[::1]:443", "[fe80::1:2]:1"] {
            let a: SocketAddr = s.parse().unwrap();
            assert_eq!(socket_addr_of(&endpoint_of(a.ip(), a.port())), a);
        }
        // The first octet is the low byte of the word, as the eBPF side expects.
        let e = endpoint_of("127.0.0.1".parse().unwrap(), 1);
        assert_eq!(e.addr[0] & 0xff, 127);
        let mapped = endpoint_of("::ffff:10.0.0.1".parse().unwrap(), 5);
        assert_eq!(mapped.family, interceptor_common::AF_INET);
    }

    #[test]
    fn shared_types_have_no_padding() {
        use std::mem::size_of;
        assert_eq!(size_of::<Endpoint>(), 20);
        assert_eq!(size_of::<interceptor_common::FourTuple>(), 40);
        assert_eq!(size_of::<ConnOrigin>(), 72);
        assert_eq!(size_of::<AgentConfig>(), 48);
        assert_eq!(size_of::<Counters>(), 32);
    }
}
