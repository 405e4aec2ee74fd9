//! The systemd notification protocol (`sd_notify`), without libsystemd.
//!
//! Owns talking to the service manager: `READY=1` once programs are attached and listeners are
//! published, `RELOADING=1` + `MONOTONIC_USEC` around a reload, `STOPPING=1` at shutdown,
//! `STATUS=` lines, and `WATCHDOG=1` pings at half of `WATCHDOG_USEC`. Messages are datagrams
//! to the socket named by `NOTIFY_SOCKET` (a path, or `@name` for an abstract socket). Without
//! `NOTIFY_SOCKET` (not started by systemd) every call is a no-op.
use std::{
    io,
    os::unix::net::{SocketAddr, UnixDatagram},
    time::Duration,
};

/// A handle on the service manager's notification socket (or nothing outside systemd).
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from the environment.
    pub fn from_env() -> io::Result<Notifier> {
        let socket = std::env::var_os("NOTIFY_SOCKET");
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        Notifier::new(
            socket.as_deref().and_then(|s| s.to_str()),
            usec.as_deref(),
            pid.as_deref(),
            std::process::id(),
        )
    }

    /// `socket`: the value of `NOTIFY_SOCKET`; `watchdog_usec`/`watchdog_pid`: the values of
    /// `WATCHDOG_USEC`/`WATCHDOG_PID` (the watchdog is ours only if the pid is absent or ours).
    pub fn new(
        socket: Option<&str>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
        own_pid: u32,
    ) -> io::Result<Notifier> {
        let target = match socket {
            None | Some("") => None,
            Some(s) => {
                let addr = socket_addr(s)?;
                Some((UnixDatagram::unbound()?, addr))
            }
        };
        let pid_ok = watchdog_pid
            .map(|p| p.trim().parse::<u32>().ok() == Some(own_pid))
            .unwrap_or(true);
        let watchdog = watchdog_usec
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|u| *u > 0 && pid_ok)
            .map(Duration::from_micros);
        Ok(Notifier { target, watchdog })
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier {
            target: None,
            watchdog: None,
        }
    }

    /// Whether a service manager listens.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// The watchdog timeout systemd enforces, if any (`WatchdogSec=`).
    pub fn watchdog_timeout(&self) -> Option<Duration> {
        self.watchdog
    }

    /// How often to ping: half the timeout, as sd_watchdog_enabled(3) recommends.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|t| t / 2)
    }

    /// Sends one message (newline-separated `KEY=VALUE` assignments).
    pub fn send(&self, state: &str) -> io::Result<()> {
        match &self.target {
            None => Ok(()),
            Some((sock, addr)) => sock.send_to_addr(state.as_bytes(), addr).map(|_| ()),
        }
    }

    /// Startup finished: programs attached, listeners published, control socket up.
    pub fn ready(&self, status: &str) -> io::Result<()> {
        self.send(&format!(
            "READY=1\nSTATUS={}\nMAINPID={}",
            one_line(status),
            std::process::id()
        ))
    }

    /// A reload starts now; [`Notifier::ready`] must follow when it is done.
    pub fn reloading(&self) -> io::Result<()> {
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()))
    }

    /// Shutdown has begun.
    pub fn stopping(&self, status: &str) -> io::Result<()> {
        self.send(&format!("STOPPING=1\nSTATUS={}", one_line(status)))
    }

    /// A free-form status line (shown by `systemctl status`).
    pub fn status(&self, status: &str) -> io::Result<()> {
        self.send(&format!("STATUS={}", one_line(status)))
    }

    /// One watchdog keep-alive.
    pub fn watchdog(&self) -> io::Result<()> {
        self.send("WATCHDOG=1")
    }
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

fn socket_addr(s: &str) -> io::Result<SocketAddr> {
    if let Some(name) = s.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(name.as_bytes())
    } else if s.starts_with('/') {
        SocketAddr::from_pathname(s)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("NOTIFY_SOCKET={s:?} is neither a path nor an @abstract name"),
        ))
    }
}

/// CLOCK_MONOTONIC in microseconds, as systemd expects in `MONOTONIC_USEC`.
fn monotonic_usec() -> u64 {
    crate::sys::monotonic_usec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn path_socket_receives_each_message() {
        let dir = std::env::temp_dir().join(format!("icpt-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let n = Notifier::new(path.to_str(), Some("4000000"), None, 1).unwrap();
        assert!(n.enabled());
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(2)));
        n.ready("serving 2 services").unwrap();
        let m = recv(&server);
        assert!(m.starts_with("READY=1\n"), "{m}");
        assert!(m.contains("STATUS=serving 2 services"), "{m}");
        n.reloading().unwrap();
        let m = recv(&server);
        let usec: u64 = m
            .lines()
            .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
            .unwrap()
            .parse()
            .unwrap();
        assert!(m.starts_with("RELOADING=1\n") && usec > 0, "{m}");
        n.watchdog().unwrap();
        assert_eq!(recv(&server), "WATCHDOG=1");
        n.stopping("bye\nnow").unwrap();
        assert_eq!(recv(&server), "STOPPING=1\nSTATUS=bye now");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("icpt-notify-test-{}", std::process::id());
        let server =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let n = Notifier::new(Some(&format!("@{name}")), None, None, 1).unwrap();
        n.status("hello").unwrap();
        assert_eq!(recv(&server), "STATUS=hello");
        assert_eq!(n.watchdog_interval(), None);
    }

    #[test]
    fn watchdog_only_for_the_named_pid() {
        let n = Notifier::new(None, Some("1000000"), Some("42"), 42).unwrap();
        assert_eq!(n.watchdog_timeout(), Some(Duration::from_secs(1)));
        let other = Notifier::new(None, Some("1000000"), Some("43"), 42).unwrap();
        assert_eq!(other.watchdog_timeout(), None);
        let zero = Notifier::new(None, Some("0"), None, 42).unwrap();
        assert_eq!(zero.watchdog_timeout(), None);
        // Without NOTIFY_SOCKET nothing is sent and nothing fails.
        assert!(!n.enabled());
        n.ready("x").unwrap();
        assert!(Notifier::new(Some("relative"), None, None, 1).is_err());
    }
}
