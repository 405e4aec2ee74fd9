//! The audit database: schema and versioned migrations, opening it safely (0600, WAL,
//! `synchronous=FULL`, triggers that refuse UPDATE and DELETE), and appending records with the
//! Merkle tree maintained in the same transaction.
//!
//! Tables (schema version 1):
//! - `records(seq, time_ms, kind, leaf_hash)`: the permanent skeleton, one row per leaf of the
//!   tree; never updated or deleted.
//! - `bodies(seq, body, service, subject, method, target, outcome, request_seq)`: the record
//!   itself (JSON, see [`Entry`]) and columns copied from it for queries. Removed by retention
//!   (`prune`), never updated.
//! - `pseudonyms(pseudonym, key_id, seq)`: the keyed pseudonyms of the values masked in an
//!   exchange's response (`EMAIL:4f1c9a2b`), for data-subject search. Removed with the body.
//! - `checkpoints(id, time_ms, size, note)`: signed checkpoints (C2SP signed notes).
//! - `tree_state(id = 1, size, frontier, root)`: the tree's right edge after the last commit.
//! - `counter_state(service, ...)`: kernel counters carried across pin generations.
//! - `meta`, `schema_migrations`.
//!
//! A leaf is the record's body, a complete JSON object whose last member is `"seq":N`; the leaf
//! hash is SHA-256(0x00 || body). The body is serialised (and hashed up to its `"seq":`) by the
//! caller, so the writer only finishes one hash block per record.
use std::{
    os::unix::fs::PermissionsExt as _,
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use rusqlite::{Connection, OpenFlags, OptionalExtension as _, TransactionBehavior, params};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::merkle::{self, Frontier, Hash};

pub const SCHEMA_VERSION: i64 = 1;

/// Tables whose rows may never change once written, and those whose rows only retention may
/// delete (inside its own transaction, which drops and recreates the trigger).
const FROZEN: [&str; 2] = ["records", "checkpoints"];
const PRUNABLE: [&str; 2] = ["bodies", "pseudonyms"];

const MIGRATIONS: &[(i64, &str)] = &[(
    1,
    r#"
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE records (
    seq INTEGER PRIMARY KEY,
    time_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    leaf_hash BLOB NOT NULL
);
CREATE INDEX records_time ON records(time_ms);
CREATE TABLE bodies (
    seq INTEGER PRIMARY KEY,
    body TEXT NOT NULL,
    service TEXT,
    subject TEXT,
    method TEXT,
    target TEXT,
    outcome TEXT,
    request_seq INTEGER
);
CREATE TABLE pseudonyms (
    pseudonym TEXT NOT NULL,
    key_id TEXT,
    seq INTEGER NOT NULL
);
CREATE INDEX pseudonyms_value ON pseudonyms(pseudonym);
CREATE TABLE checkpoints (
    id INTEGER PRIMARY KEY,
    time_ms INTEGER NOT NULL,
    size INTEGER NOT NULL,
    note TEXT NOT NULL
);
CREATE TABLE tree_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    size INTEGER NOT NULL,
    frontier BLOB NOT NULL,
    root BLOB NOT NULL
);
INSERT INTO tree_state (id, size, frontier, root)
    VALUES (1, 0, X'0000000000000000', X'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
CREATE TABLE counter_state (
    service TEXT PRIMARY KEY,
    generation TEXT NOT NULL,
    base TEXT NOT NULL,
    last TEXT NOT NULL
);
"#,
)];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Sql(#[from] rusqlite::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Invalid(String),
}

impl StoreError {
    /// A short reason for callers (disk full, I/O error, locked...).
    pub fn reason(&self) -> String {
        match self {
            StoreError::Sql(rusqlite::Error::SqliteFailure(e, msg)) => {
                let what = match e.code {
                    rusqlite::ErrorCode::DiskFull => "disk full",
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked => {
                        "database locked"
                    }
                    rusqlite::ErrorCode::SystemIoFailure => "I/O error",
                    rusqlite::ErrorCode::ReadOnly => "read-only",
                    rusqlite::ErrorCode::CannotOpen => "cannot open",
                    rusqlite::ErrorCode::DatabaseCorrupt => "database corrupt",
                    _ => "write failed",
                };
                match msg {
                    Some(m) => format!("{what} ({m})"),
                    None => what.to_string(),
                }
            }
            other => other.to_string(),
        }
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Columns copied from a record for queries (checked against the body by `verify`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Index {
    pub service: Option<String>,
    pub subject: Option<String>,
    pub method: Option<String>,
    pub target: Option<String>,
    pub outcome: Option<String>,
    pub request_seq: Option<u64>,
}

impl Index {
    /// The index a body implies (what `verify` expects to find in the columns).
    pub fn of_body(body: &serde_json::Value) -> Index {
        let d = &body["data"];
        let s = |v: &serde_json::Value| v.as_str().map(str::to_string);
        Index {
            service: s(&d["service"]),
            subject: s(&d["subject"]),
            method: s(&d["method"]),
            target: s(&d["target"]),
            outcome: s(&d["outcome"]),
            request_seq: body["request_seq"].as_u64(),
        }
    }
}

/// A record ready to be appended: its body up to the sequence number, already hashed that far.
#[derive(Clone)]
pub struct Entry {
    pub kind: String,
    pub time_ms: i64,
    prefix: Vec<u8>,
    hasher: Sha256,
    pub index: Index,
    pub pseudonyms: Vec<String>,
    pub key_id: Option<String>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Entry({}, {})",
            self.kind,
            String::from_utf8_lossy(&self.prefix)
        )
    }
}

impl Entry {
    /// `{"kind":K,"time_ms":T,<extra members>,"data":<data>,"seq":` — the writer appends the
    /// sequence number and the closing brace.
    pub fn new(
        kind: &str,
        extra: &[(&str, serde_json::Value)],
        data: &impl Serialize,
    ) -> Result<Entry, serde_json::Error> {
        let index = Index::of_body(&serde_json::json!({
            "data": serde_json::to_value(data)?,
            "request_seq": extra.iter().find(|(k, _)| *k == "request_seq").map(|(_, v)| v.clone()),
        }));
        Entry::with_index(kind, extra, data, index)
    }

    /// Like [`Entry::new`], with the query columns given (they must be what
    /// [`Index::of_body`] finds in the body: `verify` checks).
    pub fn with_index(
        kind: &str,
        extra: &[(&str, serde_json::Value)],
        data: &impl Serialize,
        index: Index,
    ) -> Result<Entry, serde_json::Error> {
        let time_ms = now_ms();
        let mut p = Vec::with_capacity(512);
        p.extend_from_slice(b"{\"kind\":");
        serde_json::to_writer(&mut p, kind)?;
        p.extend_from_slice(b",\"time_ms\":");
        p.extend_from_slice(time_ms.to_string().as_bytes());
        for (k, v) in extra {
            p.push(b',');
            serde_json::to_writer(&mut p, k)?;
            p.push(b':');
            serde_json::to_writer(&mut p, v)?;
        }
        p.extend_from_slice(b",\"data\":");
        serde_json::to_writer(&mut p, data)?;
        p.extend_from_slice(b",\"seq\":");
        let mut hasher = Sha256::new();
        hasher.update([0u8]);
        hasher.update(&p);
        Ok(Entry {
            kind: kind.to_string(),
            time_ms,
            prefix: p,
            hasher,
            index,
            pseudonyms: Vec::new(),
            key_id: None,
        })
    }

    /// Searchable pseudonyms (`ENTITY:hex`) made with pseudonym key `key_id`.
    pub fn with_pseudonyms(mut self, pseudonyms: Vec<String>, key_id: Option<String>) -> Entry {
        self.pseudonyms = pseudonyms;
        self.key_id = key_id;
        self
    }

    /// Length of the body without its sequence number.
    pub fn body_len(&self) -> usize {
        self.prefix.len()
    }

    /// The complete body and its leaf hash at position `seq`.
    fn finish(&self, seq: u64) -> (String, Hash) {
        let tail = format!("{seq}}}");
        let mut h = self.hasher.clone();
        h.update(tail.as_bytes());
        let mut body = Vec::with_capacity(self.prefix.len() + tail.len());
        body.extend_from_slice(&self.prefix);
        body.extend_from_slice(tail.as_bytes());
        // Serialised by serde_json from Rust strings: valid UTF-8 (checked, not assumed).
        let body = String::from_utf8(body)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        (body, h.finalize().into())
    }
}

/// Opens (creating when asked) the database at `path`: mode 0600, WAL, `synchronous=FULL`,
/// migrations applied, triggers in place.
pub fn open(path: &Path, create: bool) -> Result<Connection, StoreError> {
    if !create && !path.exists() {
        return Err(StoreError::Invalid(format!(
            "{}: no audit database there",
            path.display()
        )));
    }
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    if create && !path.exists() {
        // Created empty with mode 0600 before SQLite writes anything into it.
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    conn.busy_timeout(std::time::Duration::from_millis(2000))?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Invalid(format!(
            "{}: cannot use WAL journal (got {mode})",
            path.display()
        )));
    }
    conn.execute_batch(
        "PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON; PRAGMA wal_autocheckpoint=4000;",
    )?;
    migrate(&conn)?;
    for side in ["-wal", "-shm"] {
        let f = format!("{}{side}", path.display());
        if Path::new(&f).exists() {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(conn)
}

/// Opens a database (a copy, typically) for reading only; nothing is created or migrated.
pub fn open_read_only(path: &Path) -> Result<Connection, StoreError> {
    if !path.exists() {
        return Err(StoreError::Invalid(format!(
            "{}: no audit database there",
            path.display()
        )));
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_millis(5000))?;
    let v = schema_version(&conn)?;
    if v != SCHEMA_VERSION {
        return Err(StoreError::Invalid(format!(
            "{}: schema version {v}, this interceptor reads {SCHEMA_VERSION}",
            path.display()
        )));
    }
    Ok(conn)
}

pub fn schema_version(conn: &Connection) -> Result<i64, StoreError> {
    let has: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type='table' AND name='schema_migrations'",
        [],
        |r| r.get(0),
    )?;
    if !has {
        return Ok(0);
    }
    Ok(conn.query_row(
        "SELECT coalesce(max(version), 0) FROM schema_migrations",
        [],
        |r| r.get(0),
    )?)
}

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_ms INTEGER NOT NULL)",
    )?;
    let current = schema_version(conn)?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::Invalid(format!(
            "audit database has schema version {current}; this interceptor knows up to {SCHEMA_VERSION}"
        )));
    }
    for (v, sql) in MIGRATIONS {
        if *v <= current {
            continue;
        }
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_ms) VALUES (?1, ?2)",
            params![v, now_ms()],
        )?;
        tx.commit()?;
    }
    conn.execute_batch(&triggers_sql())?;
    Ok(())
}

/// `CREATE TRIGGER IF NOT EXISTS` for every audit table (re-created on every open).
pub fn triggers_sql() -> String {
    let mut s = String::new();
    for t in FROZEN {
        s += &format!(
            "CREATE TRIGGER IF NOT EXISTS {t}_no_update BEFORE UPDATE ON {t} BEGIN SELECT RAISE(ABORT, 'audit table {t} is append-only'); END;\n\
             CREATE TRIGGER IF NOT EXISTS {t}_no_delete BEFORE DELETE ON {t} BEGIN SELECT RAISE(ABORT, 'audit table {t} is append-only'); END;\n"
        );
    }
    for t in PRUNABLE {
        s += &format!(
            "CREATE TRIGGER IF NOT EXISTS {t}_no_update BEFORE UPDATE ON {t} BEGIN SELECT RAISE(ABORT, 'audit table {t} is append-only'); END;\n"
        );
        s += &prune_guard_sql(t);
    }
    s
}

/// The DELETE trigger of a prunable table (dropped and re-created inside prune's transaction).
pub fn prune_guard_sql(t: &str) -> String {
    format!(
        "CREATE TRIGGER IF NOT EXISTS {t}_no_delete BEFORE DELETE ON {t} BEGIN SELECT RAISE(ABORT, 'audit table {t}: records are removed only by retention (interceptor audit prune)'); END;\n"
    )
}

pub fn prunable_tables() -> [&'static str; 2] {
    PRUNABLE
}

/// The tree state as last committed.
#[derive(Debug, Clone)]
pub struct TreeState {
    pub size: u64,
    pub frontier: Frontier,
    pub root: Hash,
}

pub fn tree_state(conn: &Connection) -> Result<TreeState, StoreError> {
    let (size, frontier, root): (i64, Vec<u8>, Vec<u8>) = conn
        .prepare_cached("SELECT size, frontier, root FROM tree_state WHERE id = 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    let frontier = Frontier::from_bytes(&frontier)
        .ok_or_else(|| StoreError::Invalid("tree_state.frontier is malformed".into()))?;
    let root: Hash = root
        .try_into()
        .map_err(|_| StoreError::Invalid("tree_state.root is not 32 bytes".into()))?;
    if frontier.size() != size as u64 {
        return Err(StoreError::Invalid(
            "tree_state.size disagrees with its frontier".into(),
        ));
    }
    Ok(TreeState {
        size: size as u64,
        frontier,
        root,
    })
}

pub fn meta(conn: &Connection, key: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()?)
}

/// Appends records, one transaction per batch (group commit). Other processes (the CLI) may
/// append too: the tree state is re-read inside every transaction.
pub struct Writer {
    conn: Connection,
    frontier: Frontier,
}

impl Writer {
    pub fn open(path: &Path) -> Result<Writer, StoreError> {
        let conn = open(path, true)?;
        Writer::from_conn(conn)
    }

    pub fn from_conn(conn: Connection) -> Result<Writer, StoreError> {
        let frontier = tree_state(&conn)?.frontier;
        Ok(Writer { conn, frontier })
    }

    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    pub fn conn_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    pub fn size(&self) -> u64 {
        self.frontier.size()
    }

    /// Sets a `meta` value if it is not set yet; returns the value in force.
    pub fn meta_default(&self, key: &str, value: &str) -> Result<String, StoreError> {
        self.conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES (?1, ?2)",
            params![key, value],
        )?;
        Ok(meta(&self.conn, key)?.unwrap_or_default())
    }

    /// Appends `entries` in one transaction; returns their sequence numbers. Nothing is
    /// written if anything fails.
    pub fn append(&mut self, entries: &[Entry]) -> Result<Vec<u64>, StoreError> {
        let saved = self.frontier.clone();
        match self.append_inner(entries) {
            Ok(v) => Ok(v),
            Err(e) => {
                self.frontier = saved;
                Err(e)
            }
        }
    }

    fn append_inner(&mut self, entries: &[Entry]) -> Result<Vec<u64>, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let state = tree_state(&tx)?;
        if state.size != self.frontier.size() || state.frontier != self.frontier {
            // Someone else (the CLI) appended since: continue from what is committed.
            self.frontier = state.frontier;
        }
        let seqs = append_in(&tx, &mut self.frontier, entries)?;
        tx.commit()?;
        Ok(seqs)
    }

    pub fn root(&self) -> Hash {
        self.frontier.root()
    }

    /// Re-reads the committed tree (another process may have appended).
    pub fn refresh(&mut self) -> Result<(), StoreError> {
        self.frontier = tree_state(&self.conn)?.frontier;
        Ok(())
    }
}

/// Appends `entries` inside an open transaction whose tree state is `frontier`, and stores the
/// new tree state.
pub fn append_in(
    tx: &Connection,
    frontier: &mut Frontier,
    entries: &[Entry],
) -> Result<Vec<u64>, StoreError> {
    let mut seqs = Vec::with_capacity(entries.len());
    let mut ins_rec = tx.prepare_cached(
        "INSERT INTO records (seq, time_ms, kind, leaf_hash) VALUES (?1, ?2, ?3, ?4)",
    )?;
    let mut ins_body = tx.prepare_cached(
        "INSERT INTO bodies (seq, body, service, subject, method, target, outcome, request_seq) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    let mut ins_ps =
        tx.prepare_cached("INSERT INTO pseudonyms (pseudonym, key_id, seq) VALUES (?1, ?2, ?3)")?;
    for e in entries {
        let seq = frontier.size();
        let (body, leaf) = e.finish(seq);
        ins_rec.execute(params![seq as i64, e.time_ms, e.kind, &leaf[..]])?;
        let i = &e.index;
        ins_body.execute(params![
            seq as i64,
            body,
            i.service,
            i.subject,
            i.method,
            i.target,
            i.outcome,
            i.request_seq.map(|s| s as i64)
        ])?;
        for p in &e.pseudonyms {
            ins_ps.execute(params![p, e.key_id, seq as i64])?;
        }
        frontier.push(leaf);
        seqs.push(seq);
    }
    tx.prepare_cached("UPDATE tree_state SET size = ?1, frontier = ?2, root = ?3 WHERE id = 1")?
        .execute(params![
            frontier.size() as i64,
            frontier.to_bytes(),
            &frontier.root()[..]
        ])?;
    Ok(seqs)
}

/// All leaf hashes in sequence order (for proofs and verification).
pub fn leaf_hashes(conn: &Connection, limit: u64) -> Result<Vec<Hash>, StoreError> {
    let mut st = conn.prepare("SELECT leaf_hash FROM records WHERE seq < ?1 ORDER BY seq")?;
    let rows = st.query_map([limit as i64], |r| r.get::<_, Vec<u8>>(0))?;
    let mut out = Vec::new();
    for r in rows {
        let v = r?;
        out.push(
            v.try_into()
                .map_err(|_| StoreError::Invalid("leaf_hash is not 32 bytes".into()))?,
        );
    }
    Ok(out)
}

/// A stored record as read back.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub seq: u64,
    pub time_ms: i64,
    pub kind: String,
    /// The body; `None` once removed by retention.
    pub body: Option<serde_json::Value>,
}

pub fn row(conn: &Connection, seq: u64) -> Result<Option<Row>, StoreError> {
    conn.query_row(
        "SELECT r.seq, r.time_ms, r.kind, b.body FROM records r LEFT JOIN bodies b ON b.seq = r.seq WHERE r.seq = ?1",
        [seq as i64],
        read_row,
    )
    .optional()
    .map_err(Into::into)
}

pub fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    let body: Option<String> = r.get(3)?;
    Ok(Row {
        seq: r.get::<_, i64>(0)? as u64,
        time_ms: r.get(1)?,
        kind: r.get(2)?,
        body: body.and_then(|b| serde_json::from_str(&b).ok()),
    })
}

/// Hash of a stored body (what the leaf hash must be).
pub fn body_leaf_hash(body: &str) -> Hash {
    merkle::leaf_hash(body.as_bytes())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn tmpdb(name: &str) -> (tempdir::Dir, std::path::PathBuf) {
        let d = tempdir::Dir::new(name);
        let p = d.path().join("audit.db");
        (d, p)
    }

    pub(crate) mod tempdir {
        pub struct Dir(std::path::PathBuf);
        impl Dir {
            pub fn new(name: &str) -> Dir {
                let p = std::env::temp_dir().join(format!(
                    "icpt-audit-{name}-{}-{:?}",
                    std::process::id(),
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_nanos()
                ));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
            pub fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn appends_with_tree_and_refuses_changes() {
        let (_d, p) = tmpdb("store");
        let mut w = Writer::open(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let e = |i: u32| {
            Entry::new("test", &[], &serde_json::json!({"i": i, "service": "crm"})).unwrap()
        };
        let s = w.append(&[e(0), e(1)]).unwrap();
        assert_eq!(s, vec![0, 1]);
        let s = w.append(&[e(2)]).unwrap();
        assert_eq!(s, vec![2]);
        let leaves = leaf_hashes(w.conn(), u64::MAX >> 1).unwrap();
        assert_eq!(leaves.len(), 3);
        assert_eq!(merkle::root_of(&leaves), w.root());
        let st = tree_state(w.conn()).unwrap();
        assert_eq!((st.size, st.root), (3, w.root()));
        let r = row(w.conn(), 1).unwrap().unwrap();
        let body = r.body.unwrap();
        assert_eq!(body["seq"], 1);
        assert_eq!(body["data"]["i"], 1);
        let raw: String = w
            .conn()
            .query_row("SELECT body FROM bodies WHERE seq = 1", [], |r| r.get(0))
            .unwrap();
        assert_eq!(body_leaf_hash(&raw), leaves[1]);
        let svc: String = w
            .conn()
            .query_row("SELECT service FROM bodies WHERE seq = 1", [], |r| r.get(0))
            .unwrap();
        assert_eq!(svc, "crm");
        for sql in [
            "UPDATE records SET kind = 'x' WHERE seq = 0",
            "DELETE FROM records WHERE seq = 0",
            "UPDATE bodies SET body = '{}' WHERE seq = 0",
            "DELETE FROM bodies WHERE seq = 0",
        ] {
            let err = w.conn().execute(sql, []).unwrap_err().to_string();
            assert!(err.contains("audit table"), "{sql}: {err}");
        }
        // A second writer (the CLI) appending in between is picked up.
        let mut w2 = Writer::open(&p).unwrap();
        assert_eq!(w2.append(&[e(3)]).unwrap(), vec![3]);
        assert_eq!(w.append(&[e(4)]).unwrap(), vec![4]);
        let leaves = leaf_hashes(w.conn(), 100).unwrap();
        assert_eq!(merkle::root_of(&leaves), w.root());
        drop(w);
        drop(w2);
        let ro = open_read_only(&p).unwrap();
        assert_eq!(tree_state(&ro).unwrap().size, 5);
    }
}
