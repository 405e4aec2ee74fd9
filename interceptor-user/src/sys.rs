//! The agent's only raw system calls: filesystem magic checks, mounting bpffs/cgroup2,
//! `SO_NETNS_COOKIE` and the list of local addresses.
//!
//! This is the one module of the agent allowed to use `unsafe`; every block is a direct libc
//! call with arguments owned by the calling frame, and each is commented with why it is sound.
#![allow(unsafe_code)]

use std::{
    ffi::{CStr, CString},
    io,
    mem::MaybeUninit,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::{fd::AsRawFd, unix::ffi::OsStrExt},
    path::Path,
};

pub const BPF_FS_MAGIC: i64 = 0xcafe4a11;
pub const CGROUP2_SUPER_MAGIC: i64 = 0x63677270;

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

/// The filesystem magic of the filesystem holding `path`.
pub fn fs_magic(path: &Path) -> io::Result<i64> {
    let c = cpath(path)?;
    let mut st = MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `c` is a valid NUL-terminated string and `st` points to writable memory of the
    // right type; statfs only writes into it.
    let rc = unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statfs returned 0, so it initialised the struct.
    #[allow(clippy::unnecessary_cast)] // f_type is not i64 on every target
    Ok(unsafe { st.assume_init() }.f_type as i64)
}

/// Mounts a pseudo filesystem (`bpf`, `cgroup2`) on `target` (which must exist).
pub fn mount_pseudo(fstype: &str, target: &Path) -> io::Result<()> {
    let src = CString::new(fstype).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let tgt = cpath(target)?;
    // SAFETY: all pointers are valid NUL-terminated strings (or null for data) for the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The cookie of the network namespace a socket lives in (`SO_NETNS_COOKIE`, Linux 5.14+).
pub fn netns_cookie(sock: &impl AsRawFd) -> io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` are valid for writes and sized as the kernel expects.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Every address configured on an interface of this network namespace.
pub fn local_addrs() -> io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head into `head`, freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list returned by getifaddrs, valid until freeifaddrs.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr whose family says which struct it is.
            let family = unsafe { (*ifa.ifa_addr).sa_family } as i32;
            if family == libc::AF_INET {
                // SAFETY: family AF_INET means the storage is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    sin.sin_addr.s_addr,
                ))));
            } else if family == libc::AF_INET6 {
                // SAFETY: family AF_INET6 means the storage is a sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed exactly once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// Real, effective uid of this process.
pub fn geteuid() -> u32 {
    // SAFETY: geteuid cannot fail and has no arguments.
    unsafe { libc::geteuid() }
}

/// Name of a user id from the passwd database, if any.
pub fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    let mut pwd = MaybeUninit::<libc::passwd>::zeroed();
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all buffers are valid for the sizes passed; getpwuid_r writes into them only.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            pwd.as_mut_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return None;
    }
    // SAFETY: on success pw_name points into `buf`, NUL-terminated.
    let name = unsafe { CStr::from_ptr((*result).pw_name) };
    Some(name.to_string_lossy().into_owned())
}

/// Registers an fd-owning object with tokio's reactor.
///
/// Only for types that own their file descriptor (the fd stays open exactly as long as the
/// value, which the returned `AsyncFd` owns), as tokio's `register` requires.
pub fn register_owned_fd<T: std::os::fd::AsRawFd>(
    inner: T,
) -> io::Result<tokio::io::unix::AsyncFd<T>> {
    // SAFETY: `inner` owns its descriptor and is moved into the AsyncFd, so the descriptor
    // cannot be closed or reused while it is registered.
    unsafe { tokio::io::unix::AsyncFd::register(inner) }.map_err(|e| e.into_parts().1)
}

/// CLOCK_MONOTONIC in microseconds (what systemd's `MONOTONIC_USEC=` carries).
pub fn monotonic_usec() -> u64 {
    let mut ts = MaybeUninit::<libc::timespec>::zeroed();
    // SAFETY: `ts` is valid for writes of one timespec; CLOCK_MONOTONIC always exists.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, ts.as_mut_ptr()) };
    if rc != 0 {
        return 0;
    }
    // SAFETY: clock_gettime succeeded, so it initialised `ts`.
    let ts = unsafe { ts.assume_init() };
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}
