//! Types shared by the interceptor's eBPF programs (`interceptor-ebpf`) and its agent
//! (`interceptor-user`): map keys and values, map names and constants.
//!
//! Every type is `#[repr(C)]`, has no implicit padding, and stores addresses exactly as the
//! kernel's BPF contexts present them: IPv4 and IPv6 addresses as network-order 32-bit words
//! (an IPv4 address lives in `addr[0]`, the other words are zero), ports in host order.
#![no_std]
#![cfg_attr(not(feature = "user"), forbid(unsafe_code))]
#![cfg_attr(feature = "user", deny(unsafe_code))]

/// Linux address family numbers, as they appear in BPF contexts.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Maximum number of protected services (and size of the per-service counter array).
pub const MAX_SERVICES: u32 = 256;
/// Capacity of the per-connection LRU maps.
pub const MAX_FLOWS: u32 = 65536;
/// Capacity of the local-address set used for wildcard services.
pub const MAX_LOCAL_ADDRS: u32 = 1024;

/// Index of the agent's IPv4 and IPv6 listening sockets in the `AGENT_SOCKS` sockmap.
pub const SOCK_IDX_V4: u32 = 0;
pub const SOCK_IDX_V6: u32 = 1;

/// Names of the maps, as pinned under the agent's bpffs directory.
pub const MAP_CONFIG: &str = "ICPT_CONFIG";
pub const MAP_SERVICES: &str = "ICPT_SERVICES";
pub const MAP_LOCAL_ADDRS: &str = "ICPT_LOCALADDR";
pub const MAP_AGENT_SOCKS: &str = "ICPT_AGENTSOCKS";
pub const MAP_SOCK_ORIGIN: &str = "ICPT_SOCKORIGIN";
pub const MAP_ORIGINS: &str = "ICPT_ORIGINS";
pub const MAP_EXEMPT: &str = "ICPT_EXEMPT";
pub const MAP_COUNTERS: &str = "ICPT_COUNTERS";

/// Names of the programs in the object file.
pub const PROG_SK_LOOKUP: &str = "icpt_lookup";
pub const PROG_CONNECT4: &str = "icpt_conn4";
pub const PROG_CONNECT6: &str = "icpt_conn6";
pub const PROG_GETPEERNAME4: &str = "icpt_peer4";
pub const PROG_GETPEERNAME6: &str = "icpt_peer6";
pub const PROG_SOCK_OPS: &str = "icpt_sockops";

/// An endpoint: family, host-order port and network-order address words.
///
/// Used as the key of `SERVICES` (a service bound to every local address has `family == 0`
/// and a zero address), of `LOCAL_ADDRS` (port 0) and of `ORIGINS` (the client's local
/// endpoint of a redirected connection).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Endpoint {
    pub family: u16,
    pub port: u16,
    pub addr: [u32; 4],
}

impl Endpoint {
    pub const fn v4(addr_be: u32, port: u16) -> Self {
        Endpoint {
            family: AF_INET,
            port,
            addr: [addr_be, 0, 0, 0],
        }
    }
    pub const fn v6(addr_be: [u32; 4], port: u16) -> Self {
        Endpoint {
            family: AF_INET6,
            port,
            addr: addr_be,
        }
    }
    /// The wildcard-address key for a port.
    pub const fn any(port: u16) -> Self {
        Endpoint {
            family: 0,
            port,
            addr: [0; 4],
        }
    }
}

/// Value of `SERVICES`: the service's index into `COUNTERS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceValue {
    pub id: u32,
    pub flags: u32,
}

/// A TCP connection as seen from its initiator: source and destination endpoints.
/// Key of `EXEMPT` (the agent's own upstream connections, which must not be steered).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FourTuple {
    pub src: Endpoint,
    pub dst: Endpoint,
}

/// `ConnOrigin::flags`: the socket belongs to the agent itself (exempt from redirection).
pub const ORIGIN_AGENT: u32 = 1;

/// What the kernel knew when a local process connected to a protected service: the original
/// destination and the calling task. Value of `SOCK_ORIGIN` (keyed by socket cookie) and of
/// `ORIGINS` (keyed by the client's local endpoint, read by the agent on accept).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ConnOrigin {
    pub orig: Endpoint,
    pub service_id: u32,
    pub flags: u32,
    pub tgid: u32,
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub _pad: u32,
    pub cgroup_id: u64,
    pub comm: [u8; 16],
}

/// `AgentConfig::flags`: the configuration has been written by an agent.
pub const CONFIG_VALID: u32 = 1;

/// Single entry of `CONFIG`, written by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AgentConfig {
    /// Network namespace the agent serves (`SO_NETNS_COOKIE`); cgroup hooks ignore others.
    pub netns_cookie: u64,
    /// Process id (tgid) of the running agent (informational; exemption is by `agent_mark`).
    pub agent_tgid: u32,
    pub flags: u32,
    /// Where connect4/connect6 send redirected local connections (host-order port).
    pub agent_port: u16,
    pub _pad: u16,
    pub agent_addr4: u32,
    pub agent_addr6: [u32; 4],
    /// `SO_MARK` the agent sets on its upstream sockets (setting a mark needs CAP_NET_ADMIN,
    /// so other processes cannot claim the agent's exemption).
    pub agent_mark: u32,
    pub _pad2: u32,
}

/// Per-service kernel counters (one slot per CPU, summed by the agent).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counters {
    /// Connections that were established to the agent for this service.
    pub steered: u64,
    /// Connection attempts refused because no agent socket was there.
    pub refused: u64,
    /// Local connects rewritten toward the agent by connect4/connect6.
    pub local_redirects: u64,
    /// Upstream connections of the agent let through to the real server.
    pub upstream: u64,
}

#[cfg(feature = "user")]
#[allow(unsafe_code)]
mod pod {
    // SAFETY: all of these are #[repr(C)], Copy, contain only integers, and have no padding
    // bytes (checked by the size assertions in the agent's tests).
    unsafe impl aya::Pod for super::Endpoint {}
    unsafe impl aya::Pod for super::ServiceValue {}
    unsafe impl aya::Pod for super::FourTuple {}
    unsafe impl aya::Pod for super::ConnOrigin {}
    unsafe impl aya::Pod for super::AgentConfig {}
    unsafe impl aya::Pod for super::Counters {}
}
