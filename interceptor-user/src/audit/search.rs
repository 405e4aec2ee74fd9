//! Data-subject search: which exchanges disclosed (masked) a given value, found through the
//! keyed pseudonyms the log stores, so the value itself is never stored or logged.
//!
//! For every pseudonym key still in the ring, and every service's detector set, the value is
//! normalised the way each entity type's values are and turned into its pseudonym by the
//! redaction engine itself (`Engine::pseudonyms_of`), then looked up in the `pseudonyms`
//! index for that key. Pseudonyms made with an erased key can no longer be matched.
use rusqlite::Connection;
use serde::Serialize;

use super::{keys::KeyRing, store, timefmt};
use crate::redact::engine::{Engine, EngineConfig, PseudonymKey};

#[derive(Debug, Clone, Serialize)]
pub struct Hit {
    pub seq: u64,
    pub time: String,
    pub pseudonym: String,
    pub key_id: String,
    pub service: Option<String>,
    pub caller: Option<String>,
    pub role: Option<String>,
    pub purpose: Option<String>,
    pub method: Option<String>,
    pub target: Option<String>,
    pub outcome: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SearchResult {
    pub keys_searched: Vec<String>,
    pub hits: Vec<Hit>,
}

/// The candidate pseudonyms of `value` under each key of the ring, for the detector sets of
/// the configured services (the built-in set when no service redacts).
pub fn candidates(
    cfg: &crate::config::Config,
    ring: &KeyRing,
    value: &str,
) -> anyhow::Result<Vec<(String, Vec<String>)>> {
    let mut sets: Vec<EngineConfig> = cfg
        .services
        .iter()
        .filter_map(|s| s.redact.clone())
        .collect();
    if sets.is_empty() {
        sets.push(EngineConfig::default());
    }
    let mut out = Vec::new();
    for id in ring.ids()? {
        let key = ring.get(&id)?;
        let mut ps = Vec::new();
        for set in &sets {
            let engine = Engine::new(set, PseudonymKey::new(key))
                .map_err(|e| anyhow::anyhow!("redaction configuration: {e}"))?;
            ps.extend(engine.pseudonyms_of(value));
        }
        ps.sort();
        ps.dedup();
        out.push((id, ps));
    }
    Ok(out)
}

pub fn search(
    conn: &Connection,
    cands: &[(String, Vec<String>)],
    entity: Option<&str>,
) -> anyhow::Result<SearchResult> {
    let mut hits = Vec::new();
    let mut st = conn.prepare(
        "SELECT p.seq, p.pseudonym FROM pseudonyms p WHERE p.key_id = ?1 AND p.pseudonym = ?2",
    )?;
    for (id, ps) in cands {
        for p in ps {
            if let Some(e) = entity
                && !p.starts_with(&format!("{e}:"))
            {
                continue;
            }
            let rows: Vec<(i64, String)> = st
                .query_map(rusqlite::params![id, p], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            for (seq, pseudonym) in rows {
                let Some(row) = store::row(conn, seq as u64)? else {
                    continue;
                };
                let d = row
                    .body
                    .as_ref()
                    .map(|b| b["data"].clone())
                    .unwrap_or_default();
                let s = |k: &str| d[k].as_str().map(str::to_string);
                hits.push(Hit {
                    seq: seq as u64,
                    time: timefmt::rfc3339(row.time_ms),
                    pseudonym,
                    key_id: id.clone(),
                    service: s("service"),
                    caller: s("subject")
                        .or_else(|| s("client_id"))
                        .or_else(|| s("peer")),
                    role: s("role"),
                    purpose: s("purpose"),
                    method: s("method"),
                    target: s("target"),
                    outcome: s("outcome"),
                });
            }
        }
    }
    hits.sort_by_key(|h| h.seq);
    hits.dedup_by_key(|h| h.seq);
    Ok(SearchResult {
        keys_searched: cands.iter().map(|(i, _)| i.clone()).collect(),
        hits,
    })
}
