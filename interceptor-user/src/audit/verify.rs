//! Offline verification of an audit database copy, or of an exported evidence bundle.
//!
//! From the database alone (and the auditor's copy of the public key) it recomputes every
//! leaf hash from the record bodies, the tree from the leaves, and the root at every signed
//! checkpoint, and reports, by record number:
//! - `modified`: a body that does not hash to its leaf (or whose columns disagree with it);
//! - `deleted`: a missing record (a gap, or records a checkpoint or the tree state covers);
//! - `inserted`: a record outside the tree, or one that pushed later records along;
//! - `reordered`: an intact record found at another position (two swapped records);
//! - `body_removed`: a body gone without a retention (`prune`) record covering it;
//! - `checkpoint_forged`: a checkpoint whose signature does not verify with the key;
//! - `checkpoint_mismatch`: a signed root the records no longer produce (history rewritten
//!   consistently, triggers dropped: the signature still catches it, within the records between
//!   the last matching checkpoint and this one);
//! - `rolled_back`: the database is older than a checkpoint kept outside it (`--checkpoint`,
//!   default `<db>.checkpoint`).
//!
//! The kernel's per-service connection counters from the last checkpoint are compared with
//! the connection records (a shortfall is a warning: connections still waiting in the accept
//! queue when the agent stopped are counted by the kernel but were never served).
use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
};

use rusqlite::Connection;
use serde::Serialize;

use super::{
    counters::Values,
    merkle::{self, Frontier, Hash},
    note::{Checkpoint, Verifier},
    store::{self, Index, StoreError},
};

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Finding {
    pub kind: &'static str,
    /// The record number concerned, when there is one.
    pub record: Option<u64>,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CounterCheck {
    pub service: String,
    pub kernel_steered: u64,
    pub connection_records: u64,
    pub ok: bool,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    pub pass: bool,
    pub origin: Option<String>,
    pub records: u64,
    pub tree_size: u64,
    pub root: String,
    pub checkpoints: usize,
    pub checkpoints_verified: usize,
    pub last_checkpoint_size: Option<u64>,
    pub pruned: u64,
    /// `request` records with no final `exchange` record (the agent stopped in between).
    pub incomplete_exchanges: Vec<u64>,
    pub counters: Vec<CounterCheck>,
    pub findings: Vec<Finding>,
    pub warnings: Vec<String>,
}

impl Report {
    fn find(&mut self, kind: &'static str, record: Option<u64>, detail: String) {
        self.findings.push(Finding {
            kind,
            record,
            detail,
        });
    }
}

struct DbRow {
    seq: u64,
    time_ms: i64,
    kind: String,
    leaf: Hash,
    body: Option<String>,
    index: Index,
}

/// Verifies the database at `db` against `key`, and against the checkpoints in `external`
/// (notes kept outside the database).
pub fn verify_db(
    db: &Path,
    key: &Verifier,
    external: &[(String, String)],
) -> Result<Report, StoreError> {
    let conn = store::open_read_only(db)?;
    verify_conn(&conn, key, external)
}

pub fn verify_conn(
    conn: &Connection,
    key: &Verifier,
    external: &[(String, String)],
) -> Result<Report, StoreError> {
    let mut rep = Report::default();
    let integrity: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if integrity != "ok" {
        rep.find(
            "database_corrupt",
            None,
            format!("SQLite quick_check: {integrity}"),
        );
    }
    rep.origin = store::meta(conn, "origin")?;
    let rows = load_rows(conn)?;
    rep.records = rows.len() as u64;
    let pseudonyms = load_pseudonyms(conn)?;
    let state = store::tree_state(conn);

    // Position of each row; leaf hashes in sequence order.
    let by_seq: HashMap<u64, usize> = rows.iter().enumerate().map(|(i, r)| (r.seq, i)).collect();
    let leaves: Vec<Hash> = rows.iter().map(|r| r.leaf).collect();
    let max_seq = rows.last().map(|r| r.seq);

    // Retention records: (their seq, cut-off).
    let mut prunes: Vec<(u64, i64)> = Vec::new();
    for r in &rows {
        if r.kind == "prune"
            && let Some(b) = r
                .body
                .as_deref()
                .and_then(|b| serde_json::from_str::<serde_json::Value>(b).ok())
            && let Some(before) = b["data"]["before_ms"].as_i64()
        {
            prunes.push((r.seq, before));
        }
    }

    // Gaps: deleted records.
    let mut expected = 0u64;
    for r in &rows {
        if r.seq > expected {
            let what = if r.seq - expected == 1 {
                format!("record {expected} is missing")
            } else {
                format!("records {expected}..{} are missing", r.seq - 1)
            };
            for s in expected..r.seq {
                rep.find("deleted", Some(s), what.clone());
            }
        }
        expected = r.seq + 1;
    }

    // Each record against its leaf hash and its columns.
    let mut moved: BTreeMap<u64, u64> = BTreeMap::new();
    let mut requests: Vec<u64> = Vec::new();
    let mut completed: std::collections::HashSet<u64> = Default::default();
    let mut conn_opens: HashMap<String, u64> = HashMap::new();
    for r in &rows {
        let Some(body) = &r.body else {
            if prunes
                .iter()
                .any(|(ps, before)| *ps > r.seq && r.time_ms < *before)
            {
                rep.pruned += 1;
            } else {
                rep.find(
                    "body_removed",
                    Some(r.seq),
                    format!(
                        "record {}: body removed without a retention (prune) record",
                        r.seq
                    ),
                );
            }
            continue;
        };
        let h = store::body_leaf_hash(body);
        let v: Option<serde_json::Value> = serde_json::from_str(body).ok();
        let claimed = v.as_ref().and_then(|v| v["seq"].as_u64());
        match claimed {
            Some(c) if c != r.seq => {
                let intact = h == r.leaf || by_seq.get(&c).is_some_and(|&i| rows[i].leaf == h);
                if intact {
                    moved.insert(r.seq, c);
                } else {
                    rep.find(
                        "modified",
                        Some(r.seq),
                        format!(
                            "record {}: body was altered (it does not hash to the committed leaf)",
                            r.seq
                        ),
                    );
                }
                continue;
            }
            Some(_) if h == r.leaf => {}
            _ => {
                rep.find(
                    "modified",
                    Some(r.seq),
                    format!(
                        "record {}: body was altered (it does not hash to the committed leaf)",
                        r.seq
                    ),
                );
                continue;
            }
        }
        let Some(v) = v else { continue };
        if v["kind"].as_str() != Some(r.kind.as_str()) || v["time_ms"].as_i64() != Some(r.time_ms) {
            rep.find(
                "modified",
                Some(r.seq),
                format!(
                    "record {}: kind/time columns disagree with the signed body",
                    r.seq
                ),
            );
        }
        let want = Index::of_body(&v);
        if want != r.index {
            rep.find(
                "modified",
                Some(r.seq),
                format!(
                    "record {}: query columns (service/subject/method/target/outcome) disagree with the signed body",
                    r.seq
                ),
            );
        }
        let mut ps: Vec<String> = v["data"]["pseudonyms"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        ps.sort();
        ps.dedup();
        let mut have = pseudonyms.get(&r.seq).cloned().unwrap_or_default();
        have.sort();
        if ps != have {
            rep.find(
                "modified",
                Some(r.seq),
                format!(
                    "record {}: pseudonym index disagrees with the signed body",
                    r.seq
                ),
            );
        }
        match r.kind.as_str() {
            "request" => requests.push(r.seq),
            "exchange" => {
                if let Some(q) = v["request_seq"].as_u64() {
                    completed.insert(q);
                }
            }
            "conn_open" => {
                if let Some(s) = v["data"]["service"].as_str() {
                    *conn_opens.entry(s.to_string()).or_default() += 1;
                }
            }
            _ => {}
        }
    }
    rep.incomplete_exchanges = requests
        .into_iter()
        .filter(|s| !completed.contains(s))
        .collect();
    classify_moves(&moved, &mut rep);

    // Bodies without a record row.
    let orphans: Vec<i64> = conn
        .prepare("SELECT seq FROM bodies WHERE seq NOT IN (SELECT seq FROM records)")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for o in orphans {
        rep.find(
            "deleted",
            Some(o as u64),
            format!("record {o}: its tree entry was deleted (body left behind)"),
        );
    }

    // Tree state: records beyond it were inserted, records it counts but are gone, deleted.
    match &state {
        Ok(st) => {
            rep.tree_size = st.size;
            for r in rows.iter().filter(|r| r.seq >= st.size) {
                rep.find(
                    "inserted",
                    Some(r.seq),
                    format!(
                        "record {}: not part of the tree (the tree holds {} records)",
                        r.seq, st.size
                    ),
                );
            }
            let have = max_seq.map(|m| m + 1).unwrap_or(0);
            if st.size > have {
                for s in have..st.size {
                    rep.find(
                        "deleted",
                        Some(s),
                        format!(
                            "records {have}..{} missing at the end: tail truncated",
                            st.size - 1
                        ),
                    );
                }
            }
            let covered = (st.size as usize).min(leaves.len());
            if merkle::root_of(&leaves[..covered]) != st.root && rep.findings.is_empty() {
                rep.find(
                    "tree_state",
                    None,
                    "the stored tree state does not match the records".into(),
                );
            }
        }
        Err(e) => rep.find("tree_state", None, format!("tree state unreadable: {e}")),
    }
    let full_root = merkle::root_of(&leaves);
    rep.root = hex::encode(full_root);

    // Checkpoints.
    let cps: Vec<(i64, i64, String)> = conn
        .prepare("SELECT id, size, note FROM checkpoints ORDER BY id")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    rep.checkpoints = cps.len();
    let mut good: Vec<(String, Checkpoint)> = Vec::new();
    for (id, size, note) in &cps {
        let label = format!("checkpoint #{id}");
        match open_checkpoint(key, note) {
            Ok(cp) => {
                if cp.size != *size as u64 {
                    rep.find(
                        "checkpoint_mismatch",
                        None,
                        format!(
                            "{label}: size column {size} disagrees with the signed size {}",
                            cp.size
                        ),
                    );
                }
                if let Some(o) = &rep.origin
                    && *o != cp.origin
                {
                    rep.find(
                        "checkpoint_forged",
                        None,
                        format!("{label}: origin {:?} is not this log's {:?}", cp.origin, o),
                    );
                }
                good.push((label, cp));
            }
            Err(why) => rep.find(
                "checkpoint_forged",
                None,
                format!("{label} (size {size}): {why}"),
            ),
        }
    }
    for (i, (src, note)) in external.iter().enumerate() {
        match open_checkpoint(key, note) {
            Ok(cp) => good.push((format!("external checkpoint {src}"), cp)),
            Err(why) => rep.find(
                "checkpoint_forged",
                None,
                format!("external checkpoint {src} (#{i}): {why}"),
            ),
        }
    }
    // Roots at every signed size, in one pass.
    let mut sizes: Vec<u64> = good.iter().map(|(_, c)| c.size).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let mut roots: HashMap<u64, Hash> = HashMap::new();
    let mut f = Frontier::new();
    let mut si = 0;
    if sizes.first() == Some(&0) {
        roots.insert(0, f.root());
        si = 1;
    }
    for l in &leaves {
        f.push(*l);
        while si < sizes.len() && sizes[si] == f.size() {
            roots.insert(f.size(), f.root());
            si += 1;
        }
    }
    let mut by_size: Vec<&(String, Checkpoint)> = good.iter().collect();
    by_size.sort_by_key(|(_, c)| c.size);
    let mut last_ok = 0u64;
    for (label, cp) in by_size {
        match roots.get(&cp.size) {
            None => {
                let kind = if label.starts_with("external") {
                    "rolled_back"
                } else {
                    "deleted"
                };
                rep.find(
                    kind,
                    Some(leaves.len() as u64),
                    format!(
                        "{label} covers {} records but the database has {}: records {}..{} are gone (rolled back or truncated)",
                        cp.size,
                        leaves.len(),
                        leaves.len(),
                        cp.size - 1
                    ),
                );
            }
            Some(r) if *r != cp.root => {
                let kind = if label.starts_with("external") {
                    "rolled_back"
                } else {
                    "checkpoint_mismatch"
                };
                rep.find(
                    kind,
                    None,
                    format!(
                        "{label} (size {}) signed a root the records no longer produce: a record in {}..{} was changed, removed, inserted or reordered",
                        cp.size,
                        last_ok,
                        cp.size - 1
                    ),
                );
            }
            Some(_) => {
                rep.checkpoints_verified += 1;
                last_ok = last_ok.max(cp.size);
            }
        }
    }
    // Checkpoint sizes never go down over time.
    for w in cps.windows(2) {
        if w[1].1 < w[0].1 {
            rep.find("checkpoint_mismatch", None, format!("checkpoint #{} (size {}) is smaller than checkpoint #{} (size {}): the log went back", w[1].0, w[1].1, w[0].0, w[0].1));
        }
    }
    let last = good.iter().map(|(_, c)| c).max_by_key(|c| c.size);
    rep.last_checkpoint_size = last.map(|c| c.size);
    match last {
        None => rep
            .warnings
            .push("no valid signed checkpoint: nothing is covered by a signature".into()),
        Some(c) if (c.size as usize) < leaves.len() => rep.warnings.push(format!(
            "records {}..{} come after the last signed checkpoint (not yet covered by a signature)",
            c.size,
            leaves.len() - 1
        )),
        _ => {}
    }
    // Kernel counters (from the last checkpoint that has them) against connection records.
    if let Some(c) = good
        .iter()
        .map(|(_, c)| c)
        .filter(|c| c.extensions.iter().any(|e| e.starts_with("counters ")))
        .max_by_key(|c| c.size)
    {
        for e in &c.extensions {
            let Some(rest) = e.strip_prefix("counters ") else {
                continue;
            };
            let Some((svc, vals)) = rest.split_once(' ') else {
                continue;
            };
            let Some(v) = Values::parse(vals) else {
                continue;
            };
            let have = conn_opens.get(svc).copied().unwrap_or(0);
            let ok = have >= v.steered;
            if !ok {
                rep.warnings.push(format!(
                    "service {svc}: the kernel counted {} steered connections, the log has {have} connection records ({} without a record)",
                    v.steered,
                    v.steered - have
                ));
            }
            rep.counters.push(CounterCheck {
                service: svc.to_string(),
                kernel_steered: v.steered,
                connection_records: have,
                ok,
            });
        }
    }
    rep.findings
        .sort_by_key(|f| (f.record.unwrap_or(u64::MAX), f.kind));
    rep.findings.dedup();
    rep.pass = rep.findings.is_empty();
    Ok(rep)
}

/// Turns positions holding another record's intact content into reorderings, insertions and
/// deletions (records shifted by one).
fn classify_moves(moved: &BTreeMap<u64, u64>, rep: &mut Report) {
    let mut done = std::collections::HashSet::new();
    for (&p, &c) in moved {
        if done.contains(&p) {
            continue;
        }
        if moved.get(&c) == Some(&p) {
            done.insert(p);
            done.insert(c);
            for (a, b) in [(p, c), (c, p)] {
                rep.find(
                    "reordered",
                    Some(a),
                    format!(
                        "records {} and {} were swapped (record {a} holds record {b})",
                        p.min(c),
                        p.max(c)
                    ),
                );
            }
        }
    }
    for (&p, &c) in moved {
        if done.contains(&p) {
            continue;
        }
        if c + 1 == p && !moved.contains_key(&(p - 1)) {
            // The first of a run shifted up by one: something was inserted just before it.
            rep.find(
                "inserted",
                Some(p - 1),
                format!(
                    "record {}: inserted (later records were pushed along by one)",
                    p - 1
                ),
            );
        } else if c == p + 1 && !moved.contains_key(&(p.wrapping_sub(1))) {
            rep.find(
                "deleted",
                Some(p),
                format!("record {p}: deleted (later records were moved down by one)"),
            );
        }
        rep.find(
            "reordered",
            Some(p),
            format!("record {p} holds the content of record {c}"),
        );
    }
}

fn open_checkpoint(key: &Verifier, note: &str) -> Result<Checkpoint, String> {
    match key.open(note) {
        Ok(Some(text)) => Checkpoint::parse(text).map_err(|e| e.to_string()),
        Ok(None) => Err(format!("signature does not verify with key {}", key.name)),
        Err(e) => Err(e.to_string()),
    }
}

fn load_rows(conn: &Connection) -> Result<Vec<DbRow>, StoreError> {
    let mut st = conn.prepare(
        "SELECT r.seq, r.time_ms, r.kind, r.leaf_hash, b.body, b.service, b.subject, b.method, \
         b.target, b.outcome, b.request_seq FROM records r LEFT JOIN bodies b ON b.seq = r.seq \
         ORDER BY r.seq",
    )?;
    let rows = st.query_map([], |r| {
        let leaf: Vec<u8> = r.get(3)?;
        Ok(DbRow {
            seq: r.get::<_, i64>(0)? as u64,
            time_ms: r.get(1)?,
            kind: r.get(2)?,
            leaf: leaf.try_into().unwrap_or([0; 32]),
            body: r.get(4)?,
            index: Index {
                service: r.get(5)?,
                subject: r.get(6)?,
                method: r.get(7)?,
                target: r.get(8)?,
                outcome: r.get(9)?,
                request_seq: r.get::<_, Option<i64>>(10)?.map(|s| s as u64),
            },
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn load_pseudonyms(conn: &Connection) -> Result<HashMap<u64, Vec<String>>, StoreError> {
    let mut out: HashMap<u64, Vec<String>> = HashMap::new();
    let mut st = conn.prepare("SELECT seq, pseudonym FROM pseudonyms")?;
    for r in st.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))? {
        let (s, p) = r?;
        out.entry(s as u64).or_default().push(p);
    }
    Ok(out)
}

/// What `verify --bundle` found.
#[derive(Debug, Clone, Serialize, Default)]
pub struct BundleReport {
    pub pass: bool,
    pub origin: String,
    pub checkpoint_size: u64,
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub pruned: u64,
    pub findings: Vec<Finding>,
}

/// Verifies an export bundle: the checkpoint's signature, every record's body against its
/// leaf hash, every inclusion proof against the signed root, and that the records form the
/// contiguous range the manifest announces (nothing left out).
pub fn verify_bundle(dir: &Path, key: &Verifier) -> anyhow::Result<BundleReport> {
    use anyhow::Context as _;
    let mut rep = BundleReport::default();
    let note = std::fs::read_to_string(dir.join("checkpoint.note"))
        .with_context(|| format!("{}: no checkpoint.note", dir.display()))?;
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("manifest.json"))
            .with_context(|| format!("{}: no manifest.json", dir.display()))?,
    )
    .context("manifest.json is not JSON")?;
    let cp = match open_checkpoint(key, &note) {
        Ok(cp) => cp,
        Err(why) => {
            rep.findings.push(Finding {
                kind: "checkpoint_forged",
                record: None,
                detail: format!("checkpoint.note: {why}"),
            });
            return Ok(rep);
        }
    };
    rep.origin = cp.origin.clone();
    rep.checkpoint_size = cp.size;
    let records = super::export::read_bundle_records(dir)?;
    let mut expected: Option<u64> = manifest["first_seq"].as_u64();
    for r in &records {
        let bad = |kind: &'static str, detail: String| Finding {
            kind,
            record: Some(r.seq),
            detail,
        };
        if let Some(e) = expected
            && r.seq != e
        {
            rep.findings.push(bad(
                if r.seq > e { "deleted" } else { "inserted" },
                format!("expected record {e} next, found {}", r.seq),
            ));
        }
        expected = Some(r.seq + 1);
        let leaf = match &r.body {
            Some(b) => {
                let h = store::body_leaf_hash(b);
                let claimed = serde_json::from_str::<serde_json::Value>(b)
                    .ok()
                    .and_then(|v| v["seq"].as_u64());
                if h != r.leaf || claimed != Some(r.seq) {
                    rep.findings.push(bad(
                        "modified",
                        format!("record {}: body does not hash to its leaf", r.seq),
                    ));
                    continue;
                }
                if let Some(cols) = &r.columns {
                    let v: serde_json::Value = serde_json::from_str(b).unwrap_or_default();
                    let i = Index::of_body(&v);
                    let want = [i.service, i.subject, i.method, i.target, i.outcome]
                        .map(|c| c.unwrap_or_default());
                    if cols[..] != want[..] {
                        rep.findings.push(bad(
                            "modified",
                            format!("record {}: columns disagree with the signed body", r.seq),
                        ));
                    }
                }
                h
            }
            None => {
                rep.pruned += 1;
                r.leaf
            }
        };
        if !merkle::verify_inclusion(r.seq, cp.size, &leaf, &r.proof, &cp.root) {
            rep.findings.push(bad(
                "proof",
                format!(
                    "record {}: inclusion proof does not lead to the signed root",
                    r.seq
                ),
            ));
        }
    }
    rep.records = records.len() as u64;
    rep.first_seq = records.first().map(|r| r.seq);
    rep.last_seq = records.last().map(|r| r.seq);
    if manifest["count"].as_u64() != Some(rep.records) {
        rep.findings.push(Finding {
            kind: "deleted",
            record: None,
            detail: format!(
                "the manifest announces {} records, the bundle has {}",
                manifest["count"], rep.records
            ),
        });
    }
    if manifest["last_seq"].as_u64() != rep.last_seq
        || manifest["first_seq"].as_u64() != rep.first_seq
    {
        rep.findings.push(Finding {
            kind: "deleted",
            record: None,
            detail: "the records do not span the range the manifest announces".into(),
        });
    }
    rep.pass = rep.findings.is_empty();
    Ok(rep)
}
