//! The pseudonym key ring: the HMAC keys that turn masked values into keyed pseudonyms.
//!
//! A directory (`agent.pseudonym_key_dir`, mode 0700) of `<id>.key` files (32 random bytes,
//! mode 0600), ids `k000001`, `k000002`, ... The newest is the key in force: the agent loads
//! it at start and every exchange record names its id (`pseudonym_key`). Rotating adds a key
//! (used from the next agent start); erasing overwrites and removes one, after which the
//! pseudonyms made with it can no longer be linked to any value: that is how a period's
//! pseudonyms are made unlinkable. Keys never enter the audit database.
use std::{
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use serde::Serialize;

pub struct KeyRing {
    dir: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct KeyInfo {
    pub id: String,
    pub created_ms: i64,
    pub current: bool,
}

fn valid_id(id: &str) -> bool {
    id.len() == 7 && id.starts_with('k') && id[1..].bytes().all(|b| b.is_ascii_digit())
}

impl KeyRing {
    pub fn new(dir: &Path) -> KeyRing {
        KeyRing {
            dir: dir.to_path_buf(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.key"))
    }

    /// Ids present, oldest first.
    pub fn ids(&self) -> std::io::Result<Vec<String>> {
        let mut ids = Vec::new();
        match std::fs::read_dir(&self.dir) {
            Ok(rd) => {
                for e in rd {
                    let name = e?.file_name().to_string_lossy().to_string();
                    if let Some(id) = name.strip_suffix(".key")
                        && valid_id(id)
                    {
                        ids.push(id.to_string());
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        ids.sort();
        Ok(ids)
    }

    pub fn list(&self) -> std::io::Result<Vec<KeyInfo>> {
        let ids = self.ids()?;
        let last = ids.last().cloned();
        ids.into_iter()
            .map(|id| {
                let md = std::fs::metadata(self.path(&id))?;
                let created_ms = md
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0);
                Ok(KeyInfo {
                    current: Some(&id) == last.as_ref(),
                    id,
                    created_ms,
                })
            })
            .collect()
    }

    pub fn get(&self, id: &str) -> std::io::Result<[u8; 32]> {
        if !valid_id(id) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{id:?} is not a key id (k000001, ...)"),
            ));
        }
        let path = self.path(id);
        let md = std::fs::metadata(&path)?;
        if md.permissions().mode() & 0o077 != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "{} is accessible to group or others (chmod 600)",
                    path.display()
                ),
            ));
        }
        std::fs::read(&path)?.as_slice().try_into().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} must hold exactly 32 bytes", path.display()),
            )
        })
    }

    /// The key in force, creating the first one when the ring is empty.
    pub fn current_or_create(&self) -> std::io::Result<(String, [u8; 32])> {
        match self.ids()?.last() {
            Some(id) => Ok((id.clone(), self.get(id)?)),
            None => {
                let id = self.rotate()?;
                Ok((id.clone(), self.get(&id)?))
            }
        }
    }

    /// Adds a new key; it is in force from the next agent start.
    pub fn rotate(&self) -> std::io::Result<String> {
        std::fs::create_dir_all(&self.dir)?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))?;
        let next = self
            .ids()?
            .last()
            .and_then(|i| i[1..].parse::<u32>().ok())
            .unwrap_or(0)
            + 1;
        let id = format!("k{next:06}");
        let key = random_key()?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(self.path(&id))?;
        f.write_all(&key)?;
        f.sync_all()?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        Ok(id)
    }

    /// Overwrites and removes a key. The key in force cannot be erased (rotate first).
    pub fn erase(&self, id: &str) -> std::io::Result<()> {
        let ids = self.ids()?;
        if !ids.iter().any(|i| i == id) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no pseudonym key {id:?} in {}", self.dir.display()),
            ));
        }
        if ids.last().map(String::as_str) == Some(id) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{id} is the key in force; rotate first, restart the agent, then erase it"),
            ));
        }
        let path = self.path(id);
        let mut f = std::fs::OpenOptions::new().write(true).open(&path)?;
        f.write_all(&[0u8; 32])?;
        f.sync_all()?;
        std::fs::remove_file(&path)?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        Ok(())
    }
}

/// A fresh 32-byte pseudonym key from the system's randomness.
pub fn random_key() -> std::io::Result<[u8; 32]> {
    let mut key = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
        .map_err(|_| std::io::Error::other("no randomness"))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotate_list_erase() {
        let d = crate::audit::store::tests::tempdir::Dir::new("keys");
        let ring = KeyRing::new(&d.path().join("keys"));
        let (id1, k1) = ring.current_or_create().unwrap();
        assert_eq!(id1, "k000001");
        assert_eq!(ring.current_or_create().unwrap(), (id1.clone(), k1));
        let id2 = ring.rotate().unwrap();
        assert_eq!(id2, "k000002");
        let l = ring.list().unwrap();
        assert_eq!(l.len(), 2);
        assert!(l[1].current && !l[0].current);
        assert!(ring.erase(&id2).is_err(), "the key in force stays");
        ring.erase(&id1).unwrap();
        assert!(ring.get(&id1).is_err());
        assert_eq!(ring.ids().unwrap(), vec![id2]);
        let mode = std::fs::metadata(d.path().join("keys/k000002.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
