//! The interceptor's kernel side: it steers every TCP connection to a protected MCP port into
//! the userspace agent and keeps an independent count of what it did.
//!
//! * `icpt_sk_lookup` (sk_lookup, per netns): a SYN for a protected service, from anywhere
//!   (remote or local), is assigned to the agent's listening socket from `AGENT_SOCKS`; with no
//!   agent socket the lookup is dropped, so the kernel answers with a RST (connection refused).
//!   The agent's own upstream connections (`EXEMPT`) pass through to the real server.
//! * `icpt_connect4/6` (cgroup sock_addr): a local connect to a protected service is rewritten to
//!   the agent's loopback address; the caller (tgid, pid, uid, gid, cgroup, comm) and the
//!   original destination are stored by socket cookie. The agent's own connects are marked.
//! * `icpt_getpeername4/6`: redirected sockets still see the original peer.
//! * `icpt_sock_ops`: before the SYN leaves, a redirected socket's origin is published under
//!   its local endpoint (`ORIGINS`, read by the agent on accept) and the agent's upstream
//!   4-tuples are published in `EXEMPT`; established connections to the agent are counted.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        bindings::{
            BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
            BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_TCP_CLOSE, bpf_sock_addr, sk_action,
        },
        helpers::{
            bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
            bpf_get_current_uid_gid,
            generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
        },
        macros::{cgroup_sock_addr, map, sk_lookup, sock_ops},
        maps::{Array, HashMap, LruHashMap, PerCpuArray, SockMap},
        programs::{SkLookupContext, SockAddrContext, SockOpsContext},
    };
    use aya_log_ebpf::{debug, warn};
    use interceptor_common::{
        AF_INET, AF_INET6, AgentConfig, CONFIG_VALID, ConnOrigin, Counters, Endpoint, FourTuple,
        MAX_FLOWS, MAX_LOCAL_ADDRS, MAX_SERVICES, ORIGIN_AGENT, SOCK_IDX_V4, SOCK_IDX_V6,
        ServiceValue,
    };

    const IPPROTO_TCP: u32 = 6;
    const SOCK_STREAM: u32 = 1;
    /// `service_id` of an agent connection to an address no service protects.
    const NO_SERVICE: u32 = u32::MAX;

    #[map(name = "ICPT_CONFIG")]
    static CONFIG: Array<AgentConfig> = Array::pinned(1, 0);
    #[map(name = "ICPT_SERVICES")]
    static SERVICES: HashMap<Endpoint, ServiceValue> = HashMap::pinned(MAX_SERVICES, 0);
    #[map(name = "ICPT_LOCALADDR")]
    static LOCAL_ADDRS: HashMap<Endpoint, u8> = HashMap::pinned(MAX_LOCAL_ADDRS, 0);
    #[map(name = "ICPT_AGENTSOCKS")]
    static AGENT_SOCKS: SockMap = SockMap::pinned(2, 0);
    #[map(name = "ICPT_SOCKORIGIN")]
    static SOCK_ORIGIN: LruHashMap<u64, ConnOrigin> = LruHashMap::pinned(MAX_FLOWS, 0);
    #[map(name = "ICPT_ORIGINS")]
    static ORIGINS: LruHashMap<Endpoint, ConnOrigin> = LruHashMap::pinned(MAX_FLOWS, 0);
    #[map(name = "ICPT_EXEMPT")]
    static EXEMPT: LruHashMap<FourTuple, u8> = LruHashMap::pinned(MAX_FLOWS, 0);
    #[map(name = "ICPT_COUNTERS")]
    static COUNTERS: PerCpuArray<Counters> = PerCpuArray::pinned(MAX_SERVICES, 0);

    #[inline(always)]
    fn config() -> Option<&'static AgentConfig> {
        let cfg = CONFIG.get(0)?;
        if cfg.flags & CONFIG_VALID == 0 {
            return None;
        }
        Some(cfg)
    }

    #[inline(always)]
    fn counters(id: u32) -> Option<&'static mut Counters> {
        // SAFETY: per-CPU slot; BPF programs run with migration disabled.
        COUNTERS.get_ptr_mut(id).map(|p| unsafe { &mut *p })
    }

    #[inline(always)]
    fn is_loopback(ep: &Endpoint) -> bool {
        if ep.family == AF_INET {
            // First octet is the low byte of a network-order word on this little-endian target.
            ep.addr[0] & 0xff == 127
        } else {
            ep.addr[0] == 0 && ep.addr[1] == 0 && ep.addr[2] == 0 && ep.addr[3] == 1u32.to_be()
        }
    }

    /// The service protecting `dst`, if any. A service bound to every address (the wildcard
    /// entry) only covers this host's own addresses.
    #[inline(always)]
    fn service_for(dst: &Endpoint, must_be_local: bool) -> Option<ServiceValue> {
        // SAFETY: plain-old-data values copied out immediately.
        if let Some(v) = unsafe { SERVICES.get(dst) } {
            return Some(*v);
        }
        let v = *unsafe { SERVICES.get(Endpoint::any(dst.port)) }?;
        if must_be_local && !is_loopback(dst) {
            let mut key = *dst;
            key.port = 0;
            // SAFETY: presence check only.
            unsafe { LOCAL_ADDRS.get(key) }?;
        }
        Some(v)
    }

    /// An IPv4-mapped IPv6 address (::ffff:a.b.c.d) as the IPv4 endpoint it stands for.
    #[inline(always)]
    fn unmap_v4(ep: Endpoint) -> Endpoint {
        if ep.family == AF_INET6
            && ep.addr[0] == 0
            && ep.addr[1] == 0
            && ep.addr[2] == 0xffffu32.to_be()
        {
            Endpoint::v4(ep.addr[3], ep.port)
        } else {
            ep
        }
    }

    // ---------------------------------------------------------------- sk_lookup

    /// Reads four address words of a context with 32-bit loads (no byte copies).
    #[inline(always)]
    fn read_words(w: &[u32; 4]) -> [u32; 4] {
        // SAFETY: reads of a valid context field.
        unsafe {
            [
                core::ptr::read_volatile(&w[0]),
                core::ptr::read_volatile(&w[1]),
                core::ptr::read_volatile(&w[2]),
                core::ptr::read_volatile(&w[3]),
            ]
        }
    }

    #[sk_lookup]
    pub fn icpt_lookup(ctx: SkLookupContext) -> u32 {
        // SAFETY: the context pointer is valid for the duration of the program.
        let l = unsafe { &*ctx.lookup };
        if l.protocol != IPPROTO_TCP {
            return sk_action::SK_PASS;
        }
        let Some(cfg) = config() else {
            return sk_action::SK_PASS;
        };
        let (local, remote, idx) = if l.family == AF_INET as u32 {
            (
                Endpoint::v4(l.local_ip4, l.local_port as u16),
                Endpoint::v4(l.remote_ip4, u16::from_be(l.remote_port)),
                SOCK_IDX_V4,
            )
        } else if l.family == AF_INET6 as u32 {
            (
                Endpoint::v6(read_words(&l.local_ip6), l.local_port as u16),
                Endpoint::v6(read_words(&l.remote_ip6), u16::from_be(l.remote_port)),
                SOCK_IDX_V6,
            )
        } else {
            return sk_action::SK_PASS;
        };

        // Local connections rewritten by connect4/6 arrive at the agent's port on loopback.
        if local.port == cfg.agent_port && is_loopback(&local) {
            if AGENT_SOCKS.redirect_sk_lookup(&ctx, idx, 0).is_ok() {
                return sk_action::SK_PASS;
            }
            // SAFETY: POD copy.
            let svc = unsafe { ORIGINS.get(remote) }.map(|o| o.service_id);
            if let Some(id) = svc {
                if let Some(c) = counters(id) {
                    c.refused += 1;
                }
                warn!(
                    &ctx,
                    "refused local connection for service {}: agent is not running", id
                );
            }
            return sk_action::SK_DROP;
        }

        let Some(svc) = service_for(&local, false) else {
            return sk_action::SK_PASS;
        };
        // SAFETY: presence check only.
        if unsafe {
            EXEMPT.get(FourTuple {
                src: remote,
                dst: local,
            })
        }
        .is_some()
        {
            return sk_action::SK_PASS;
        }
        if AGENT_SOCKS.redirect_sk_lookup(&ctx, idx, 0).is_ok() {
            return sk_action::SK_PASS;
        }
        if let Some(c) = counters(svc.id) {
            c.refused += 1;
        }
        warn!(
            &ctx,
            "refused connection to port {}: agent is not running", local.port
        );
        sk_action::SK_DROP
    }

    // ---------------------------------------------------------------- connect4/6

    // The verifier only accepts whole 32-bit accesses to the address words of
    // `bpf_sock_addr`; volatile accesses keep LLVM from turning them into byte copies.
    #[inline(always)]
    fn read_ip6(sa: &bpf_sock_addr) -> [u32; 4] {
        read_words(&sa.user_ip6)
    }

    #[inline(always)]
    fn write_ip6(sa: &mut bpf_sock_addr, v: [u32; 4]) {
        // SAFETY: writes of a valid, writable context field.
        unsafe {
            core::ptr::write_volatile(&mut sa.user_ip6[0], v[0]);
            core::ptr::write_volatile(&mut sa.user_ip6[1], v[1]);
            core::ptr::write_volatile(&mut sa.user_ip6[2], v[2]);
            core::ptr::write_volatile(&mut sa.user_ip6[3], v[3]);
        }
    }

    #[inline(always)]
    fn on_connect<const V6: bool>(ctx: &SockAddrContext) -> Option<()> {
        // SAFETY: the context pointer is valid for the duration of the program.
        let sa = unsafe { &mut *ctx.sock_addr };
        if sa.type_ != SOCK_STREAM {
            return None;
        }
        let cfg = config()?;
        // SAFETY: helper valid for cgroup sock_addr programs.
        if unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) } != cfg.netns_cookie {
            return None;
        }
        let port = u16::from_be(sa.user_port as u16);
        let dst = if V6 {
            unmap_v4(Endpoint::v6(read_ip6(sa), port))
        } else {
            Endpoint::v4(sa.user_ip4, port)
        };
        // SAFETY: for cgroup sock_addr programs `sk` is a valid, non-null socket pointer.
        let mark = unsafe { (*sa.__bindgen_anon_1.sk).mark };
        let from_agent = cfg.agent_mark != 0 && mark == cfg.agent_mark;
        // The agent's own connects are exempted whatever their destination: its upstream may
        // be an address that is not (yet) in LOCAL_ADDRS, and must never loop back to it.
        let svc = match service_for(&dst, true) {
            Some(s) => s,
            None if from_agent => ServiceValue {
                id: NO_SERVICE,
                flags: 0,
            },
            None => return None,
        };
        let pid_tgid = bpf_get_current_pid_tgid();
        let uid_gid = bpf_get_current_uid_gid();
        let tgid = (pid_tgid >> 32) as u32;
        let mut origin = ConnOrigin {
            orig: dst,
            service_id: svc.id,
            flags: 0,
            tgid,
            pid: pid_tgid as u32,
            uid: uid_gid as u32,
            gid: (uid_gid >> 32) as u32,
            _pad: 0,
            // SAFETY: helper valid for cgroup sock_addr programs.
            cgroup_id: unsafe { bpf_get_current_cgroup_id() },
            comm: bpf_get_current_comm().unwrap_or([0; 16]),
        };
        // SAFETY: helper valid for cgroup sock_addr programs.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
        if from_agent {
            // The agent's upstream connection: leave it alone, let sock_ops exempt its 4-tuple.
            origin.flags = ORIGIN_AGENT;
            SOCK_ORIGIN.insert(cookie, origin, 0).ok()?;
            return Some(());
        }
        SOCK_ORIGIN.insert(cookie, origin, 0).ok()?;
        if let Some(c) = counters(svc.id) {
            c.local_redirects += 1;
        }
        let agent_port = (cfg.agent_port.to_be()) as u32;
        // Each branch only touches the fields its attach type may write (the verifier checks).
        if V6 {
            if dst.family == AF_INET6 {
                write_ip6(sa, cfg.agent_addr6);
            } else {
                // v4-mapped destination on a dual-stack socket: keep it v4-mapped.
                write_ip6(sa, [0, 0, 0xffffu32.to_be(), cfg.agent_addr4]);
            }
        } else {
            sa.user_ip4 = cfg.agent_addr4;
        }
        sa.user_port = agent_port;
        debug!(ctx, "redirected connect of tgid {} to port {}", tgid, port);
        Some(())
    }

    #[cgroup_sock_addr(connect4)]
    pub fn icpt_conn4(ctx: SockAddrContext) -> i32 {
        let _ = on_connect::<false>(&ctx);
        1
    }

    #[cgroup_sock_addr(connect6)]
    pub fn icpt_conn6(ctx: SockAddrContext) -> i32 {
        let _ = on_connect::<true>(&ctx);
        1
    }

    // ---------------------------------------------------------------- getpeername4/6

    #[inline(always)]
    fn on_getpeername<const V6: bool>(ctx: &SockAddrContext) -> Option<()> {
        // SAFETY: helper valid for cgroup sock_addr programs.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
        // SAFETY: POD copy.
        let origin = *unsafe { SOCK_ORIGIN.get(cookie) }?;
        if origin.flags & ORIGIN_AGENT != 0 {
            return None;
        }
        // SAFETY: the context pointer is valid for the duration of the program.
        let sa = unsafe { &mut *ctx.sock_addr };
        if V6 {
            if origin.orig.family == AF_INET6 {
                write_ip6(sa, origin.orig.addr);
            } else {
                write_ip6(sa, [0, 0, 0xffffu32.to_be(), origin.orig.addr[0]]);
            }
        } else if origin.orig.family == AF_INET {
            sa.user_ip4 = origin.orig.addr[0];
        } else {
            return None;
        }
        sa.user_port = (origin.orig.port.to_be()) as u32;
        Some(())
    }

    #[cgroup_sock_addr(getpeername4)]
    pub fn icpt_peer4(ctx: SockAddrContext) -> i32 {
        let _ = on_getpeername::<false>(&ctx);
        1
    }

    #[cgroup_sock_addr(getpeername6)]
    pub fn icpt_peer6(ctx: SockAddrContext) -> i32 {
        let _ = on_getpeername::<true>(&ctx);
        1
    }

    // ---------------------------------------------------------------- sock_ops

    #[inline(always)]
    fn endpoints(ctx: &SockOpsContext) -> (Endpoint, Endpoint) {
        let local_port = ctx.local_port() as u16;
        // remote_port holds the network-order port in its upper 16 bits on little endian.
        let remote_port = u32::from_be(ctx.remote_port()) as u16;
        if ctx.family() == AF_INET as u32 {
            (
                Endpoint::v4(ctx.local_ip4(), local_port),
                Endpoint::v4(ctx.remote_ip4(), remote_port),
            )
        } else {
            (
                unmap_v4(Endpoint::v6(ctx.local_ip6(), local_port)),
                unmap_v4(Endpoint::v6(ctx.remote_ip6(), remote_port)),
            )
        }
    }

    #[inline(always)]
    fn cookie_of(ctx: &SockOpsContext) -> u64 {
        // SAFETY: helper valid for sock_ops programs.
        unsafe { bpf_get_socket_cookie(ctx.ops.cast()) }
    }

    /// Right before the SYN of a local connect leaves: publish what connect4/6 learned.
    #[inline(always)]
    fn on_tcp_connect(ctx: &SockOpsContext) -> Option<()> {
        let cookie = cookie_of(ctx);
        // SAFETY: POD copy.
        let origin = *unsafe { SOCK_ORIGIN.get(cookie) }?;
        let (local, remote) = endpoints(ctx);
        if origin.flags & ORIGIN_AGENT != 0 {
            EXEMPT
                .insert(
                    FourTuple {
                        src: local,
                        dst: remote,
                    },
                    1,
                    0,
                )
                .ok()?;
            let _ = SOCK_ORIGIN.remove(cookie);
            if let Some(c) = counters(origin.service_id) {
                c.upstream += 1;
            }
        } else {
            ORIGINS.insert(local, origin, 0).ok()?;
        }
        let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
        Some(())
    }

    /// A connection was established to a listener: count the ones that reached the agent.
    #[inline(always)]
    fn on_passive_established(ctx: &SockOpsContext) -> Option<()> {
        let cfg = config()?;
        // SAFETY: helper valid for sock_ops programs.
        if unsafe { bpf_get_netns_cookie(ctx.ops.cast()) } != cfg.netns_cookie {
            return None;
        }
        let (local, remote) = endpoints(ctx);
        let id = if local.port == cfg.agent_port && is_loopback(&local) {
            // SAFETY: POD copy.
            unsafe { ORIGINS.get(remote) }?.service_id
        } else {
            let svc = service_for(&local, false)?;
            // SAFETY: presence check only.
            if unsafe {
                EXEMPT.get(FourTuple {
                    src: remote,
                    dst: local,
                })
            }
            .is_some()
            {
                return None; // the real server accepting the agent's upstream connection
            }
            svc.id
        };
        if let Some(c) = counters(id) {
            c.steered += 1;
        }
        Some(())
    }

    #[inline(always)]
    fn on_state_change(ctx: &SockOpsContext) -> Option<()> {
        if ctx.arg(1) != BPF_TCP_CLOSE {
            return None;
        }
        let _ = SOCK_ORIGIN.remove(cookie_of(ctx));
        let (local, remote) = endpoints(ctx);
        let _ = EXEMPT.remove(FourTuple {
            src: local,
            dst: remote,
        });
        Some(())
    }

    #[sock_ops]
    pub fn icpt_sockops(ctx: SockOpsContext) -> u32 {
        let _ = match ctx.op() {
            BPF_SOCK_OPS_TCP_CONNECT_CB => on_tcp_connect(&ctx),
            BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => on_passive_established(&ctx),
            BPF_SOCK_OPS_STATE_CB => on_state_change(&ctx),
            _ => None,
        };
        1
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // This crate only produces an eBPF object; it is built for bpfel-unknown-none by
    // interceptor-user's build script.
}
