//! Retention: removing the bodies of old records while the tree, the checkpoints and the
//! proofs of every other record stay verifiable.
//!
//! A prune deletes, in one transaction, the body and the pseudonym rows of every record older
//! than the cut-off (the `records` row with its leaf hash stays, so the tree is unchanged),
//! with `secure_delete` on so the freed pages are overwritten, and appends a `prune` record
//! naming the cut-off. `verify` accepts a missing body only when a later `prune` record covers
//! it. The DELETE triggers of the two tables are dropped and re-created inside that same
//! transaction, so nothing else can delete in between.
use rusqlite::{TransactionBehavior, params};
use serde::Serialize;

use super::store::{self, Entry, StoreError, Writer};

#[derive(Debug, Clone, Serialize)]
pub struct Pruned {
    pub before_ms: i64,
    pub bodies_removed: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Sequence number of the `prune` record.
    pub record: u64,
}

/// Kinds whose bodies are kept: they hold no personal data and justify other records.
const KEEP: [&str; 2] = ["prune", "keys"];

pub fn prune(w: &mut Writer, before_ms: i64, by: &str) -> Result<Pruned, StoreError> {
    let conn = w.conn_mut();
    conn.execute_batch("PRAGMA secure_delete=ON")?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut frontier = store::tree_state(&tx)?.frontier;
    let (count, first, last): (i64, Option<i64>, Option<i64>) = tx.query_row(
        "SELECT count(*), min(r.seq), max(r.seq) FROM records r JOIN bodies b ON b.seq = r.seq \
         WHERE r.time_ms < ?1 AND r.kind NOT IN (?2, ?3)",
        params![before_ms, KEEP[0], KEEP[1]],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    for t in store::prunable_tables() {
        tx.execute_batch(&format!("DROP TRIGGER IF EXISTS {t}_no_delete"))?;
    }
    let sel = "SELECT seq FROM records WHERE time_ms < ?1 AND kind NOT IN (?2, ?3)";
    tx.execute(
        &format!("DELETE FROM pseudonyms WHERE seq IN ({sel})"),
        params![before_ms, KEEP[0], KEEP[1]],
    )?;
    tx.execute(
        &format!("DELETE FROM bodies WHERE seq IN ({sel})"),
        params![before_ms, KEEP[0], KEEP[1]],
    )?;
    for t in store::prunable_tables() {
        tx.execute_batch(&store::prune_guard_sql(t))?;
    }
    let entry = Entry::new(
        "prune",
        &[],
        &serde_json::json!({
            "before_ms": before_ms,
            "bodies_removed": count,
            "first_seq": first,
            "last_seq": last,
            "by": by,
        }),
    )
    .map_err(|e| StoreError::Invalid(e.to_string()))?;
    let seqs = store::append_in(&tx, &mut frontier, &[entry])?;
    tx.commit()?;
    let conn = w.conn_mut();
    conn.execute_batch("PRAGMA secure_delete=OFF")?;
    // Old page images in the WAL go too.
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    w.refresh()?;
    Ok(Pruned {
        before_ms,
        bodies_removed: count as u64,
        first_seq: first.map(|s| s as u64),
        last_seq: last.map(|s| s as u64),
        record: seqs[0],
    })
}
