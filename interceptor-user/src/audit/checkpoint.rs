//! Signing checkpoints: the tree's size and root (and the kernel's connection counters) in a
//! C2SP checkpoint, signed with the agent's Ed25519 key, stored in the database and written
//! to a file beside it (`<db>.checkpoint`), so a database restored from an older copy no
//! longer matches the latest checkpoint kept outside it.
use std::{io::Write as _, path::Path};

use rusqlite::TransactionBehavior;

use super::{
    counters,
    note::{Checkpoint, Signer},
    store::{self, StoreError, Writer},
};

/// What a new checkpoint covers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Signed {
    pub id: i64,
    pub size: u64,
    pub root_hex: String,
    pub note: String,
}

/// The file beside the database that holds the latest checkpoint.
pub fn latest_path(db: &Path) -> std::path::PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(".checkpoint");
    s.into()
}

/// Signs a checkpoint of everything committed so far. `reason` becomes an extension line
/// (`periodic`, `shutdown`, `request`, `start`).
pub fn sign(
    w: &mut Writer,
    signer: &Signer,
    origin: &str,
    kernel: Option<&counters::Snapshot>,
    reason: &str,
    db: Option<&Path>,
) -> Result<Signed, StoreError> {
    let conn = w.conn_mut();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let state = store::tree_state(&tx)?;
    let mut extensions = vec![
        format!("time {}", store::now_ms()),
        format!("reason {reason}"),
    ];
    if let Some(snap) = kernel {
        for (svc, v) in counters::carry(&tx, snap)? {
            extensions.push(format!("counters {svc} {}", v.text()));
        }
    }
    let cp = Checkpoint {
        origin: origin.to_string(),
        size: state.size,
        root: state.root,
        extensions,
    };
    let note = signer.sign(&cp.text());
    tx.execute(
        "INSERT INTO checkpoints (time_ms, size, note) VALUES (?1, ?2, ?3)",
        rusqlite::params![store::now_ms(), state.size as i64, note],
    )?;
    let id = tx.last_insert_rowid();
    tx.commit()?;
    if let Some(db) = db {
        write_atomically(&latest_path(db), note.as_bytes())?;
    }
    w.refresh()?;
    Ok(Signed {
        id,
        size: state.size,
        root_hex: hex::encode(state.root),
        note,
    })
}

/// Replaces `path` with `data` so that a crash leaves either the old or the new file.
pub fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })
    {
        let _ = d.sync_all();
    }
    Ok(())
}
