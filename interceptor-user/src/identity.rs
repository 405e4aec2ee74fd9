//! Who is on the other end of a connection, as the kernel saw it.
//!
//! For local callers the connect4/6 program recorded the process (tgid, thread id, uid, gid,
//! comm) and its cgroup id at connect time; this module resolves the cgroup id to its path in
//! the cgroup2 hierarchy and to the systemd unit that owns it. Remote callers are known by
//! their peer address here; token-based identity is layered on top by later modules.
use std::{
    collections::HashMap,
    net::SocketAddr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Mutex,
};

use interceptor_common::ConnOrigin;
use serde::Serialize;

/// A local process that connected to a protected service.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LocalProcess {
    pub tgid: u32,
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    /// Path of the cgroup inside the cgroup2 hierarchy ("/system.slice/foo.service").
    pub cgroup: Option<String>,
    /// The systemd unit owning that cgroup, when there is one.
    pub unit: Option<String>,
}

/// The caller of a connection.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Caller {
    Local {
        peer: SocketAddr,
        process: LocalProcess,
    },
    Remote {
        peer: SocketAddr,
    },
}

impl Caller {
    pub fn kind(&self) -> &'static str {
        match self {
            Caller::Local { .. } => "local",
            Caller::Remote { .. } => "remote",
        }
    }
    pub fn peer(&self) -> SocketAddr {
        match self {
            Caller::Local { peer, .. } | Caller::Remote { peer } => *peer,
        }
    }
    pub fn process(&self) -> Option<&LocalProcess> {
        match self {
            Caller::Local { process, .. } => Some(process),
            Caller::Remote { .. } => None,
        }
    }
}

/// Resolves cgroup ids (cgroup2 directory inode numbers) to paths, with a bounded cache.
pub struct CgroupResolver {
    root: PathBuf,
    cache: Mutex<HashMap<u64, Option<String>>>,
}

const CACHE_MAX: usize = 4096;

impl CgroupResolver {
    pub fn new(cgroup2_root: PathBuf) -> Self {
        CgroupResolver {
            root: cgroup2_root,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Path of the cgroup with this id, relative to the hierarchy root.
    pub fn resolve(&self, id: u64) -> Option<String> {
        if let Some(hit) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
        {
            return hit.clone();
        }
        let found = find_inode(&self.root, id, 0).map(|p| {
            let rel = p.strip_prefix(&self.root).unwrap_or(&p);
            format!("/{}", rel.display())
        });
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(id, found.clone());
        found
    }

    pub fn local_process(&self, o: &ConnOrigin) -> LocalProcess {
        let cgroup = self.resolve(o.cgroup_id);
        let unit = cgroup.as_deref().and_then(unit_of);
        let end = o.comm.iter().position(|b| *b == 0).unwrap_or(o.comm.len());
        LocalProcess {
            tgid: o.tgid,
            pid: o.pid,
            uid: o.uid,
            gid: o.gid,
            comm: String::from_utf8_lossy(&o.comm[..end]).into_owned(),
            cgroup_id: o.cgroup_id,
            cgroup,
            unit,
        }
    }
}

fn find_inode(dir: &Path, ino: u64, depth: usize) -> Option<PathBuf> {
    if depth > 32 {
        return None;
    }
    if std::fs::metadata(dir).ok()?.ino() == ino {
        return Some(dir.to_path_buf());
    }
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false)
            && let Some(p) = find_inode(&entry.path(), ino, depth + 1)
        {
            return Some(p);
        }
    }
    None
}

/// The innermost systemd unit named in a cgroup path (".service", ".scope", ".socket").
pub fn unit_of(cgroup: &str) -> Option<String> {
    cgroup
        .rsplit('/')
        .find(|c| c.ends_with(".service") || c.ends_with(".scope") || c.ends_with(".socket"))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_from_path() {
        assert_eq!(
            unit_of("/system.slice/mcp-crm.service").as_deref(),
            Some("mcp-crm.service")
        );
        assert_eq!(
            unit_of("/user.slice/user-1000.slice/session-2.scope/sub").as_deref(),
            Some("session-2.scope")
        );
        assert_eq!(unit_of("/test/child"), None);
    }

    #[test]
    fn resolves_directory_inodes() {
        let tmp = std::env::temp_dir().join(format!("icpt-cg-{}", std::process::id()));
        std::fs::create_dir_all(tmp.join("a/b.service")).unwrap();
        let ino = std::fs::metadata(tmp.join("a/b.service")).unwrap().ino();
        let r = CgroupResolver::new(tmp.clone());
        assert_eq!(r.resolve(ino).as_deref(), Some("/a/b.service"));
        assert_eq!(r.resolve(1).as_deref(), None);
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
