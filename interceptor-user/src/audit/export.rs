//! Exports: evidence bundles (every record of a period with its inclusion proof against a
//! signed checkpoint, as JSONL or CSV) and the GDPR Art. 30(1) record of processing
//! activities built from the policy in force and the traffic actually observed.
//!
//! A bundle is a directory: `checkpoint.note` (the signed checkpoint), `records.jsonl` or
//! `records.csv` (one record per line: seq, time, kind, leaf hash, audit path, and the body
//! byte for byte, or none once pruned), `manifest.json` (origin, period, first/last record,
//! count) and `key.vkey` (the log's public key, for convenience: an auditor checks against
//! their own copy). The records are the contiguous range of the period, so a gap shows.
use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    path::Path,
};

use anyhow::{Context as _, Result, bail};
use rusqlite::Connection;
use serde::Serialize;

use super::{
    merkle::{Hash, ProofTree},
    note::{Checkpoint, split_note},
    store, timefmt,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleFormat {
    Jsonl,
    Csv,
}

/// A record as a bundle carries it.
#[derive(Debug, Clone)]
pub struct BundleRecord {
    pub seq: u64,
    pub leaf: Hash,
    pub proof: Vec<Hash>,
    pub body: Option<String>,
    /// CSV only: the service, subject, method, target and outcome columns (copies of the body's
    /// fields, checked against it).
    pub columns: Option<Vec<String>>,
}

/// The latest checkpoint stored in the database (its note and content; not verified here).
pub fn latest_checkpoint(conn: &Connection) -> Result<Option<(String, Checkpoint)>> {
    let note: Option<String> = conn
        .query_row(
            "SELECT note FROM checkpoints ORDER BY size DESC, id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .ok();
    let Some(note) = note else { return Ok(None) };
    let (text, _) = split_note(&note)?;
    let cp = Checkpoint::parse(text)?;
    Ok(Some((note, cp)))
}

#[derive(Debug, Clone, Serialize)]
pub struct BundleSummary {
    pub dir: String,
    pub count: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub checkpoint_size: u64,
}

/// Writes the bundle of records with `from_ms <= time < to_ms` into `dir` (created).
pub fn write_bundle(
    conn: &Connection,
    from_ms: i64,
    to_ms: i64,
    format: BundleFormat,
    dir: &Path,
) -> Result<BundleSummary> {
    let Some((note, cp)) = latest_checkpoint(conn)? else {
        bail!("the log has no signed checkpoint yet (interceptor audit checkpoint)");
    };
    let range: (Option<i64>, Option<i64>) = conn.query_row(
        "SELECT min(seq), max(seq) FROM records WHERE time_ms >= ?1 AND time_ms < ?2 AND seq < ?3",
        rusqlite::params![from_ms, to_ms, cp.size as i64],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let leaves = store::leaf_hashes(conn, cp.size)?;
    if (leaves.len() as u64) < cp.size {
        bail!(
            "the latest checkpoint covers {} records but the database has {}: verify the database",
            cp.size,
            leaves.len()
        );
    }
    let tree = ProofTree::new(leaves);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = match format {
        BundleFormat::Jsonl => "records.jsonl",
        BundleFormat::Csv => "records.csv",
    };
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(dir.join(name)).with_context(|| format!("creating {name}"))?,
    );
    if format == BundleFormat::Csv {
        writeln!(
            out,
            "seq,time,kind,service,subject,method,target,outcome,leaf_hash,proof,body"
        )?;
    }
    let mut count = 0u64;
    if let (Some(first), Some(last)) = range {
        let mut st = conn.prepare(
            "SELECT r.seq, r.time_ms, r.kind, r.leaf_hash, b.body, b.service, b.subject, b.method, b.target, b.outcome \
             FROM records r LEFT JOIN bodies b ON b.seq = r.seq WHERE r.seq BETWEEN ?1 AND ?2 ORDER BY r.seq",
        )?;
        let mut rows = st.query([first, last])?;
        while let Some(r) = rows.next()? {
            let seq = r.get::<_, i64>(0)? as u64;
            let time_ms: i64 = r.get(1)?;
            let kind: String = r.get(2)?;
            let leaf: Vec<u8> = r.get(3)?;
            let body: Option<String> = r.get(4)?;
            let proof: Vec<String> = tree
                .proof(seq as usize, cp.size as usize)
                .iter()
                .map(hex::encode)
                .collect();
            match format {
                BundleFormat::Jsonl => {
                    serde_json::to_writer(
                        &mut out,
                        &serde_json::json!({
                            "seq": seq,
                            "time": timefmt::rfc3339(time_ms),
                            "kind": kind,
                            "leaf_hash": hex::encode(&leaf),
                            "proof": proof,
                            "body": body,
                        }),
                    )?;
                    out.write_all(b"\n")?;
                }
                BundleFormat::Csv => {
                    let col = |i: usize| -> rusqlite::Result<String> {
                        Ok(r.get::<_, Option<String>>(i)?.unwrap_or_default())
                    };
                    let fields = [
                        seq.to_string(),
                        timefmt::rfc3339(time_ms),
                        kind,
                        col(5)?,
                        col(6)?,
                        col(7)?,
                        col(8)?,
                        col(9)?,
                        hex::encode(&leaf),
                        proof.join(";"),
                        body.unwrap_or_default(),
                    ];
                    let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
                    writeln!(out, "{}", line.join(","))?;
                }
            }
            count += 1;
        }
    }
    out.flush()?;
    std::fs::write(dir.join("checkpoint.note"), &note)?;
    let manifest = serde_json::json!({
        "format": name,
        "origin": cp.origin,
        "from": timefmt::rfc3339(from_ms),
        "to": timefmt::rfc3339(to_ms),
        "first_seq": range.0,
        "last_seq": range.1,
        "count": count,
        "checkpoint_size": cp.size,
        "created": timefmt::rfc3339(store::now_ms()),
    });
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_string_pretty(&manifest)?,
    )?;
    if let Some(k) = store::meta(conn, "key")? {
        std::fs::write(dir.join("key.vkey"), format!("{k}\n"))?;
    }
    Ok(BundleSummary {
        dir: dir.display().to_string(),
        count,
        first_seq: range.0.map(|s| s as u64),
        last_seq: range.1.map(|s| s as u64),
        checkpoint_size: cp.size,
    })
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Splits CSV text (RFC 4180: quoted fields may hold commas, quotes and newlines) into rows.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, '\r') => {}
            (false, c) => field.push(c),
        }
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    rows
}

fn hash_of(s: &str) -> Result<Hash> {
    hex::decode(s)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| anyhow::anyhow!("{s:?} is not a SHA-256 hash in hex"))
}

/// Reads the records of a bundle (JSONL or CSV).
pub fn read_bundle_records(dir: &Path) -> Result<Vec<BundleRecord>> {
    let mut out = Vec::new();
    if let Ok(text) = std::fs::read_to_string(dir.join("records.jsonl")) {
        for (i, line) in text.lines().enumerate() {
            let v: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("records.jsonl line {}: not JSON", i + 1))?;
            out.push(BundleRecord {
                seq: v["seq"]
                    .as_u64()
                    .with_context(|| format!("records.jsonl line {}: no seq", i + 1))?,
                leaf: hash_of(v["leaf_hash"].as_str().unwrap_or(""))?,
                proof: v["proof"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|p| hash_of(p.as_str().unwrap_or("")))
                            .collect()
                    })
                    .transpose()?
                    .unwrap_or_default(),
                body: v["body"].as_str().map(str::to_string),
                columns: None,
            });
        }
        return Ok(out);
    }
    let text = std::fs::read_to_string(dir.join("records.csv"))
        .with_context(|| format!("{}: neither records.jsonl nor records.csv", dir.display()))?;
    for (i, row) in parse_csv(&text).into_iter().enumerate().skip(1) {
        if row.len() != 11 {
            bail!(
                "records.csv row {}: {} fields, expected 11",
                i + 1,
                row.len()
            );
        }
        out.push(BundleRecord {
            seq: row[0]
                .parse()
                .with_context(|| format!("records.csv row {}: seq", i + 1))?,
            leaf: hash_of(&row[8])?,
            proof: row[9]
                .split(';')
                .filter(|p| !p.is_empty())
                .map(hash_of)
                .collect::<Result<_>>()?,
            body: Some(row[10].clone()).filter(|b| !b.is_empty()),
            columns: Some(row[3..8].to_vec()),
        });
    }
    Ok(out)
}

// ------------------------------------------------------------------ Art. 30

/// One processing activity: a service used for one purpose on one lawful basis.
#[derive(Debug, Clone, Serialize)]
pub struct Activity {
    pub service: String,
    pub purpose: String,
    pub lawful_basis: String,
    pub lawful_basis_article: String,
    /// Art. 30(1)(c): categories of data subjects (from the policy grants that allowed it).
    pub data_subject_categories: Vec<String>,
    /// Art. 30(1)(c): categories of personal data: entity types masked or released.
    pub personal_data_categories: Vec<String>,
    pub masked: BTreeMap<String, u64>,
    pub released_in_clear: BTreeMap<String, u64>,
    /// Art. 30(1)(d): recipients: roles, and the identities that received data.
    pub recipient_roles: Vec<String>,
    pub recipients: Vec<String>,
    pub exchanges: u64,
    pub first_seen: String,
    pub last_seen: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Art30 {
    pub controller: crate::config::Controller,
    pub period: (String, String),
    pub activities: Vec<Activity>,
    /// Art. 30(1)(e).
    pub transfers: Vec<crate::config::Transfer>,
    /// Art. 30(1)(f).
    pub retention: String,
    /// Art. 30(1)(g): technical and organisational security measures (Art. 32) in force.
    pub security_measures: Vec<String>,
    pub source: String,
}

/// Builds the record of processing activities for `from_ms <= time < to_ms`.
pub fn art30(
    conn: &Connection,
    cfg: &crate::config::Config,
    from_ms: i64,
    to_ms: i64,
) -> Result<Art30> {
    // Purposes per policy version, as the agent recorded them when it loaded each policy.
    let mut policies: BTreeMap<String, Vec<crate::policy::PurposeRecord>> = BTreeMap::new();
    {
        let mut st = conn.prepare("SELECT b.body FROM records r JOIN bodies b ON b.seq = r.seq WHERE r.kind = 'policy' ORDER BY r.seq")?;
        for body in st.query_map([], |r| r.get::<_, String>(0))? {
            let v: serde_json::Value = serde_json::from_str(&body?).unwrap_or_default();
            if let (Some(ver), Ok(p)) = (
                v["data"]["version"].as_str(),
                serde_json::from_value::<Vec<PurposeIn>>(v["data"]["purposes"].clone()),
            ) {
                policies.insert(
                    ver.to_string(),
                    p.into_iter()
                        .map(|p| crate::policy::PurposeRecord {
                            service: p.service,
                            role: p.role,
                            purpose: p.purpose,
                            lawful_basis: p.lawful_basis,
                            lawful_basis_article: p.lawful_basis_article,
                            data_subjects: p.data_subjects,
                            rule: p.rule,
                        })
                        .collect(),
                );
            }
        }
    }
    let current = crate::policy::PolicySet::load(&cfg.auth.policy).ok();
    let mut acts: BTreeMap<(String, String, String), Activity> = BTreeMap::new();
    let mut st = conn.prepare(
        "SELECT r.time_ms, b.body FROM records r JOIN bodies b ON b.seq = r.seq \
         WHERE r.kind = 'exchange' AND r.time_ms >= ?1 AND r.time_ms < ?2 ORDER BY r.seq",
    )?;
    let mut rows = st.query([from_ms, to_ms])?;
    while let Some(row) = rows.next()? {
        let t: i64 = row.get(0)?;
        let v: serde_json::Value =
            serde_json::from_str(&row.get::<_, String>(1)?).unwrap_or_default();
        let d = &v["data"];
        if matches!(d["outcome"].as_str(), Some("denied") | None) {
            continue; // nothing was processed for a denied call
        }
        let s = |k: &str| d[k].as_str().unwrap_or("").to_string();
        // Protocol and list calls carry no purpose; they count when they disclosed personal
        // data (then the missing purpose shows in the record), not otherwise.
        let disclosed = d["masked"].as_object().is_some_and(|m| !m.is_empty())
            || d["released"].as_object().is_some_and(|m| !m.is_empty())
            || d["released"].as_array().is_some_and(|m| !m.is_empty());
        if d["purpose"].is_null() && !disclosed {
            continue;
        }
        let service = s("service");
        let purpose = d["purpose"]
            .as_str()
            .unwrap_or("(no purpose: service without a policy)")
            .to_string();
        let basis = d["lawful_basis"].as_str().unwrap_or("(none)").to_string();
        let role = d["role"].as_str().map(str::to_string);
        let key = (service.clone(), purpose.clone(), basis.clone());
        let a = acts.entry(key).or_insert_with(|| Activity {
            service: service.clone(),
            purpose: purpose.clone(),
            lawful_basis: basis.clone(),
            lawful_basis_article: crate::policy::LawfulBasis::parse(&basis)
                .map(|b| b.article().to_string())
                .unwrap_or_default(),
            data_subject_categories: Vec::new(),
            personal_data_categories: Vec::new(),
            masked: BTreeMap::new(),
            released_in_clear: BTreeMap::new(),
            recipient_roles: Vec::new(),
            recipients: Vec::new(),
            exchanges: 0,
            first_seen: timefmt::rfc3339(t),
            last_seen: timefmt::rfc3339(t),
        });
        a.exchanges += 1;
        a.last_seen = timefmt::rfc3339(t);
        if let Some(m) = d["masked"].as_object() {
            for (k, n) in m {
                *a.masked.entry(k.clone()).or_default() += n.as_u64().unwrap_or(0);
            }
        }
        match &d["released"] {
            serde_json::Value::Object(m) => {
                for (k, n) in m {
                    *a.released_in_clear.entry(k.clone()).or_default() += n.as_u64().unwrap_or(1);
                }
            }
            serde_json::Value::Array(xs) => {
                for k in xs.iter().filter_map(|x| x.as_str()) {
                    *a.released_in_clear.entry(k.to_string()).or_default() += 1;
                }
            }
            _ => {}
        }
        if let Some(r) = &role
            && !a.recipient_roles.contains(r)
        {
            a.recipient_roles.push(r.clone());
        }
        let who = match (d["subject"].as_str(), d["client_id"].as_str()) {
            (Some(sub), Some(c)) => format!("{sub} (client {c})"),
            (Some(sub), None) => sub.to_string(),
            (None, Some(c)) => format!("client {c}"),
            (None, None) => match (d["uid"].as_u64(), d["comm"].as_str()) {
                (Some(uid), Some(comm)) => format!("local uid {uid} ({comm})"),
                _ => format!("{} {}", s("caller_kind"), s("peer")),
            },
        };
        if !a.recipients.contains(&who) {
            a.recipients.push(who);
        }
        let grants = d["policy_version"]
            .as_str()
            .and_then(|pv| policies.get(pv))
            .cloned()
            .or_else(|| current.as_ref().map(|p| p.services_purposes()))
            .unwrap_or_default();
        for g in grants.iter().filter(|g| {
            g.service == service
                && g.purpose == purpose
                && role.as_deref().is_none_or(|r| r == g.role)
        }) {
            for ds in &g.data_subjects {
                if !a.data_subject_categories.contains(ds) {
                    a.data_subject_categories.push(ds.clone());
                }
            }
        }
    }
    let mut activities: Vec<Activity> = acts.into_values().collect();
    for a in &mut activities {
        let cats: BTreeSet<String> = a
            .masked
            .keys()
            .chain(a.released_in_clear.keys())
            .cloned()
            .collect();
        a.personal_data_categories = cats.into_iter().collect();
        a.recipient_roles.sort();
        a.recipients.sort();
        a.data_subject_categories.sort();
    }
    let mut measures = vec![
        "Tamper-evident audit log: every exchange recorded durably before it is answered, RFC 6962 Merkle tree, Ed25519-signed checkpoints, offline verification".to_string(),
        "Transparent interception in the kernel (eBPF): protected MCP servers cannot be reached around the interceptor; connections are refused when it is down".to_string(),
    ];
    let n = |f: &dyn Fn(&crate::config::ServiceConfig) -> bool| -> Vec<String> {
        cfg.services
            .iter()
            .filter(|s| f(s))
            .map(|s| s.name.clone())
            .collect()
    };
    let tls = n(&|s| s.tls.is_some());
    if !tls.is_empty() {
        measures.push(format!(
            "TLS termination toward callers (services: {})",
            tls.join(", ")
        ));
    }
    let up_tls = n(&|s| s.upstream.tls.is_some());
    if !up_tls.is_empty() {
        measures.push(format!(
            "TLS toward the MCP servers, certificates verified (services: {})",
            up_tls.join(", ")
        ));
    }
    let auth = n(&|s| s.auth.is_some());
    if !auth.is_empty() {
        measures.push(format!(
            "OAuth/OIDC bearer-token authentication and deny-by-default role policy per MCP method, tool, resource and prompt (services: {})",
            auth.join(", ")
        ));
    }
    let red = n(&|s| s.redact.is_some());
    if !red.is_empty() {
        measures.push(format!(
            "Masking of personal data in responses (validated detectors; keyed pseudonyms, keys kept outside the log) (services: {})",
            red.join(", ")
        ));
    }
    let approvals: i64 = conn.query_row(
        "SELECT count(*) FROM records WHERE kind = 'approval'",
        [],
        |r| r.get(0),
    )?;
    if approvals > 0 {
        measures.push("Human approval of privileged calls before they are forwarded".into());
    }
    Ok(Art30 {
        controller: cfg.audit.controller.clone(),
        period: (timefmt::rfc3339(from_ms), timefmt::rfc3339(to_ms)),
        activities,
        transfers: cfg.audit.transfers.clone(),
        retention: if cfg.audit.retention_days == 0 {
            "Audit records are kept until removed by the operator (interceptor audit prune); no automatic retention limit is configured".into()
        } else {
            format!(
                "Audit record bodies are removed {} days after the exchange (audit.retention_days); the tamper-evident skeleton (hashes) is kept",
                cfg.audit.retention_days
            )
        },
        security_measures: measures,
        source: "policy recorded in the audit log and exchanges observed by the interceptor in the period".into(),
    })
}

#[derive(serde::Deserialize)]
struct PurposeIn {
    service: String,
    role: String,
    purpose: String,
    lawful_basis: String,
    #[serde(default)]
    lawful_basis_article: String,
    #[serde(default)]
    data_subjects: Vec<String>,
    #[serde(default)]
    rule: String,
}

/// The record as Markdown.
pub fn art30_markdown(a: &Art30) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let or = |x: &str| {
        if x.is_empty() {
            "(not configured)".to_string()
        } else {
            x.to_string()
        }
    };
    let list = |v: &[String]| {
        if v.is_empty() {
            "(none observed)".to_string()
        } else {
            v.join(", ")
        }
    };
    let _ = writeln!(s, "# Record of processing activities (GDPR Art. 30(1))\n");
    let _ = writeln!(s, "Period: {} to {}\n", a.period.0, a.period.1);
    let _ = writeln!(s, "## Controller\n");
    let _ = writeln!(s, "- Name: {}", or(&a.controller.name));
    let _ = writeln!(s, "- Contact: {}", or(&a.controller.contact));
    let _ = writeln!(s, "- Representative: {}", or(&a.controller.representative));
    let _ = writeln!(s, "- Data protection officer: {}\n", or(&a.controller.dpo));
    let _ = writeln!(s, "## Processing activities\n");
    if a.activities.is_empty() {
        let _ = writeln!(s, "No processing was observed in the period.\n");
    }
    for act in &a.activities {
        let _ = writeln!(s, "### {} — {}\n", act.service, act.purpose);
        let _ = writeln!(
            s,
            "- Lawful basis: {} {}",
            act.lawful_basis, act.lawful_basis_article
        );
        let _ = writeln!(
            s,
            "- Categories of data subjects: {}",
            list(&act.data_subject_categories)
        );
        let _ = writeln!(
            s,
            "- Categories of personal data: {}",
            list(&act.personal_data_categories)
        );
        let _ = writeln!(s, "- Recipients (roles): {}", list(&act.recipient_roles));
        let _ = writeln!(s, "- Recipients (identities): {}", list(&act.recipients));
        let _ = writeln!(
            s,
            "- Exchanges: {} ({} to {})\n",
            act.exchanges, act.first_seen, act.last_seen
        );
    }
    let _ = writeln!(s, "## Transfers to third countries\n");
    if a.transfers.is_empty() {
        let _ = writeln!(s, "None configured.\n");
    }
    for t in &a.transfers {
        let _ = writeln!(
            s,
            "- {} ({}): {}",
            t.recipient,
            t.country,
            or(&t.safeguards)
        );
    }
    let _ = writeln!(s, "## Retention\n\n{}\n", a.retention);
    let _ = writeln!(s, "## Technical and organisational security measures\n");
    for m in &a.security_measures {
        let _ = writeln!(s, "- {m}");
    }
    let _ = writeln!(s, "\n_Source: {}._", a.source);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_round_trip() {
        let fields = ["a", "b,c", "say \"hi\"", "line\nbreak", ""];
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        let text = format!("h1,h2,h3,h4,h5\n{}\n", line.join(","));
        let rows = parse_csv(&text);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[1],
            fields.iter().map(|s| s.to_string()).collect::<Vec<_>>()
        );
    }
}
