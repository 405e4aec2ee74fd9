//! `interceptor audit ...`: verify, export, search, tail, show, checkpoint, prune, keys.
//!
//! Every command works on the database directly (SQLite locking makes that safe next to a
//! running agent, whose writer re-reads the tree inside each transaction); `verify` needs only
//! a copy of the database and the public key.
use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;

use super::{
    checkpoint, counters, export, keys::KeyRing, note, prune, search, store, timefmt, verify,
};
use crate::{cli::DEFAULT_CONFIG, config::Config};

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Verify a copy of the audit database (or an export bundle) offline: every record, the
    /// tree, every signed checkpoint. Exit status 0 = pass, 1 = fail.
    Verify {
        /// The database (default: the configured one).
        #[arg(long)]
        db: Option<PathBuf>,
        /// The log's public key (`interceptor audit pubkey`), from your own copy.
        #[arg(long)]
        pubkey: PathBuf,
        /// Checkpoints kept outside the database (default: `<db>.checkpoint` when present).
        #[arg(long)]
        checkpoint: Vec<PathBuf>,
        /// Verify an export bundle directory instead of a database.
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// Warnings (records after the last checkpoint, kernel counter shortfall) fail too.
        #[arg(long)]
        strict: bool,
        #[arg(long)]
        json: bool,
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Create the checkpoint signing key if it is missing (installation does this) and write
    /// its public key to `<key>.pub`. Needs no configuration.
    InitKey {
        #[arg(long, default_value = "/etc/interceptor/audit-signing.key")]
        key: PathBuf,
        /// Key name in signed notes (default `<hostname>/interceptor`).
        #[arg(long)]
        name: Option<String>,
    },
    /// Print (or write) the public key auditors verify checkpoints with.
    Pubkey {
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Sign a checkpoint of everything recorded so far (with the kernel counters).
    Checkpoint {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// The latest records.
    Tail {
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: usize,
        /// Keep printing new records.
        #[arg(long, short)]
        follow: bool,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        db: Option<PathBuf>,
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// One record in full, with its place in the tree.
    Show {
        seq: u64,
        #[arg(long)]
        db: Option<PathBuf>,
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Exchanges whose masked values include VALUE (matched through keyed pseudonyms).
    Search {
        #[arg(long)]
        subject: String,
        /// Only this entity type (EMAIL, IBAN, ...).
        #[arg(long)]
        entity: Option<String>,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        db: Option<PathBuf>,
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Export: `art30` (JSON), `art30-md` (Markdown), or an evidence bundle `jsonl` / `csv`.
    Export {
        #[arg(long)]
        format: String,
        /// Start of the period (YYYY-MM-DD or RFC 3339, UTC; inclusive).
        #[arg(long)]
        from: String,
        /// End of the period (exclusive).
        #[arg(long)]
        to: String,
        /// Bundle directory (jsonl/csv, required) or output file (art30; default stdout).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        db: Option<PathBuf>,
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Remove the bodies of records older than DATE (the tree stays verifiable).
    Prune {
        #[arg(long)]
        before: String,
        #[arg(long)]
        db: Option<PathBuf>,
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// The pseudonym key ring.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// List the keys (the newest is in force).
    List {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Add a key; the agent uses it from its next start.
    Rotate {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Erase a key: the pseudonyms made with it become unlinkable.
    Erase {
        #[arg(long)]
        id: String,
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

fn load(path: &std::path::Path) -> Result<Config> {
    Config::load(path).map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))
}

fn db_path(db: Option<PathBuf>, config: &std::path::Path) -> Result<PathBuf> {
    match db {
        Some(d) => Ok(d),
        None => Ok(load(config)
            .context("no --db given and the configuration cannot be read")?
            .audit_db()),
    }
}

fn signer(cfg: &Config) -> Result<note::Signer> {
    note::Signer::load_or_create(&cfg.audit.signing_key, &cfg.audit_origin())
        .with_context(|| format!("audit.signing_key {}", cfg.audit.signing_key.display()))
}

fn reason(e: store::StoreError) -> anyhow::Error {
    anyhow::anyhow!(e.reason())
}

/// Appends an operator event to the log (best effort when the database is not there yet).
fn record(cfg: &Config, kind: &str, data: serde_json::Value) -> Result<u64> {
    let mut w = store::Writer::open(&cfg.audit_db()).map_err(reason)?;
    let e = store::Entry::new(kind, &[], &data)?;
    Ok(w.append(&[e]).map_err(reason)?[0])
}

pub fn run(cmd: AuditCommand) -> Result<ExitCode> {
    match cmd {
        AuditCommand::Verify {
            db,
            pubkey,
            checkpoint: cps,
            bundle,
            strict,
            json,
            config,
        } => {
            let text = std::fs::read_to_string(&pubkey)
                .with_context(|| format!("--pubkey {}", pubkey.display()))?;
            let key = note::Verifier::parse(&text)
                .with_context(|| format!("--pubkey {}", pubkey.display()))?;
            if let Some(dir) = bundle {
                let rep = verify::verify_bundle(&dir, &key)?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&rep)?);
                } else {
                    println!(
                        "bundle {}: {} records ({}..{}), checkpoint size {} of {}",
                        dir.display(),
                        rep.records,
                        rep.first_seq.map(|s| s.to_string()).unwrap_or("-".into()),
                        rep.last_seq.map(|s| s.to_string()).unwrap_or("-".into()),
                        rep.checkpoint_size,
                        rep.origin
                    );
                    for f in &rep.findings {
                        println!("FAIL {}: {}", f.kind, f.detail);
                    }
                    println!("{}", if rep.pass { "PASS" } else { "FAIL" });
                }
                return Ok(if rep.pass {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                });
            }
            let db = db_path(db, &config)?;
            let mut external = Vec::new();
            let mut paths = cps.clone();
            if paths.is_empty() {
                let beside = checkpoint::latest_path(&db);
                if beside.exists() {
                    paths.push(beside);
                }
            }
            for p in paths {
                let n = std::fs::read_to_string(&p)
                    .with_context(|| format!("--checkpoint {}", p.display()))?;
                external.push((p.display().to_string(), n));
            }
            let mut rep = verify::verify_db(&db, &key, &external).map_err(reason)?;
            if strict && !rep.warnings.is_empty() {
                rep.pass = false;
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&rep)?);
            } else {
                println!(
                    "{}: {} records, tree size {}, root {}",
                    db.display(),
                    rep.records,
                    rep.tree_size,
                    rep.root
                );
                println!(
                    "checkpoints: {} stored, {} verified, last covers {} records; {} external",
                    rep.checkpoints,
                    rep.checkpoints_verified,
                    rep.last_checkpoint_size
                        .map(|s| s.to_string())
                        .unwrap_or("-".into()),
                    external.len()
                );
                if rep.pruned > 0 {
                    println!("pruned by retention: {} record bodies", rep.pruned);
                }
                for c in &rep.counters {
                    println!(
                        "kernel: service {}: {} steered connections, {} connection records: {}",
                        c.service,
                        c.kernel_steered,
                        c.connection_records,
                        if c.ok {
                            "every steered connection is recorded"
                        } else {
                            "SHORTFALL"
                        }
                    );
                }
                if !rep.incomplete_exchanges.is_empty() {
                    println!(
                        "incomplete exchanges (request recorded, no final record): {}",
                        rep.incomplete_exchanges.len()
                    );
                }
                for w in &rep.warnings {
                    println!("warning: {w}");
                }
                for f in &rep.findings {
                    match f.record {
                        Some(r) => println!("FAIL {} record {r}: {}", f.kind, f.detail),
                        None => println!("FAIL {}: {}", f.kind, f.detail),
                    }
                }
                println!("{}", if rep.pass { "PASS" } else { "FAIL" });
            }
            Ok(if rep.pass {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        AuditCommand::InitKey { key, name } => {
            let name = name.unwrap_or_else(super::default_key_name);
            let (created, public) = super::init_signing_key(&key, &name)?;
            println!(
                "{} {}; public key in {}:\n{public}",
                if created {
                    "created"
                } else {
                    "kept the existing"
                },
                key.display(),
                super::public_key_path(&key).display()
            );
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Pubkey { out, config } => {
            let cfg = load(&config)?;
            let v = signer(&cfg)?.verifier().text();
            match out {
                Some(p) => {
                    std::fs::write(&p, format!("{v}\n"))?;
                    println!("public key written to {}", p.display());
                }
                None => println!("{v}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Checkpoint { config } => {
            let cfg = load(&config)?;
            let s = signer(&cfg)?;
            let db = cfg.audit_db();
            let mut w = store::Writer::open(&db).map_err(reason)?;
            let origin = w
                .meta_default("origin", &cfg.audit_origin())
                .map_err(reason)?;
            let names: Vec<String> = cfg.services.iter().map(|s| s.name.clone()).collect();
            let snap = counters::read(&cfg.agent.pin_root(), &names);
            let cp = checkpoint::sign(&mut w, &s, &origin, snap.as_ref(), "request", Some(&db))
                .map_err(reason)?;
            println!(
                "checkpoint #{} signed: size {}, root {}",
                cp.id, cp.size, cp.root_hex
            );
            print!("{}", cp.note);
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Tail {
            lines,
            follow,
            json,
            db,
            config,
        } => {
            let db = db_path(db, &config)?;
            let conn = store::open_read_only(&db).map_err(reason)?;
            let mut rows: Vec<store::Row> = conn
                .prepare("SELECT r.seq, r.time_ms, r.kind, b.body FROM records r LEFT JOIN bodies b ON b.seq = r.seq ORDER BY r.seq DESC LIMIT ?1")?
                .query_map([lines as i64], store::read_row)?
                .collect::<Result<_, _>>()?;
            rows.reverse();
            let mut last = rows.last().map(|r| r.seq as i64).unwrap_or(-1);
            for r in &rows {
                print_row(&conn, r, json)?;
            }
            if follow {
                loop {
                    std::thread::sleep(std::time::Duration::from_millis(500));
                    let rows: Vec<store::Row> = conn
                        .prepare("SELECT r.seq, r.time_ms, r.kind, b.body FROM records r LEFT JOIN bodies b ON b.seq = r.seq WHERE r.seq > ?1 ORDER BY r.seq")?
                        .query_map([last], store::read_row)?
                        .collect::<Result<_, _>>()?;
                    for r in &rows {
                        print_row(&conn, r, json)?;
                        last = r.seq as i64;
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Show { seq, db, config } => {
            let db = db_path(db, &config)?;
            let conn = store::open_read_only(&db).map_err(reason)?;
            let Some(r) = store::row(&conn, seq).map_err(reason)? else {
                bail!("no record {seq} in {}", db.display());
            };
            let leaf: Vec<u8> = conn.query_row(
                "SELECT leaf_hash FROM records WHERE seq = ?1",
                [seq as i64],
                |x| x.get(0),
            )?;
            let covered: Option<i64> = conn
                .query_row(
                    "SELECT min(id) FROM checkpoints WHERE size > ?1",
                    [seq as i64],
                    |x| x.get(0),
                )
                .ok()
                .flatten();
            let completion: Option<i64> = conn
                .query_row(
                    "SELECT seq FROM bodies WHERE request_seq = ?1",
                    [seq as i64],
                    |x| x.get(0),
                )
                .ok();
            let out = serde_json::json!({
                "seq": r.seq,
                "time": timefmt::rfc3339(r.time_ms),
                "kind": r.kind,
                "leaf_hash": hex::encode(leaf),
                "first_checkpoint": covered,
                "completed_by": if r.kind == "request" { serde_json::json!(completion) } else { serde_json::Value::Null },
                "incomplete": r.kind == "request" && completion.is_none(),
                "pruned": r.body.is_none(),
                "body": r.body,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Search {
            subject,
            entity,
            json,
            db,
            config,
        } => {
            let cfg = load(&config)?;
            let db = db.unwrap_or_else(|| cfg.audit_db());
            let conn = store::open_read_only(&db).map_err(reason)?;
            let ring = KeyRing::new(&cfg.agent.pseudonym_keys());
            let cands = search::candidates(&cfg, &ring, &subject)?;
            let res = search::search(&conn, &cands, entity.as_deref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&res)?);
            } else {
                println!(
                    "{} exchange(s) involved that value (keys searched: {})",
                    res.hits.len(),
                    res.keys_searched.join(", ")
                );
                for h in &res.hits {
                    println!(
                        "#{} {} {} {} {} {} caller={} role={} purpose={} outcome={} ({})",
                        h.seq,
                        h.time,
                        h.service.as_deref().unwrap_or("-"),
                        h.method.as_deref().unwrap_or("-"),
                        h.target.as_deref().unwrap_or("-"),
                        h.pseudonym,
                        h.caller.as_deref().unwrap_or("-"),
                        h.role.as_deref().unwrap_or("-"),
                        h.purpose.as_deref().unwrap_or("-"),
                        h.outcome.as_deref().unwrap_or("-"),
                        h.key_id
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Export {
            format,
            from,
            to,
            out,
            db,
            config,
        } => {
            let from_ms = timefmt::parse(&from).map_err(|e| anyhow::anyhow!("--from {e}"))?;
            let to_ms = timefmt::parse(&to).map_err(|e| anyhow::anyhow!("--to {e}"))?;
            if to_ms <= from_ms {
                bail!("--to must be after --from");
            }
            let cfg = load(&config)?;
            let db = db.unwrap_or_else(|| cfg.audit_db());
            match format.as_str() {
                "art30" | "art30-md" => {
                    let conn = store::open_read_only(&db).map_err(reason)?;
                    let rec = export::art30(&conn, &cfg, from_ms, to_ms)?;
                    let text = if format == "art30" {
                        serde_json::to_string_pretty(&rec)? + "\n"
                    } else {
                        export::art30_markdown(&rec)
                    };
                    match out {
                        Some(p) => std::fs::write(&p, text)?,
                        None => print!("{text}"),
                    }
                }
                "jsonl" | "csv" => {
                    let Some(dir) = out else {
                        bail!("--out DIR is required for a {format} bundle");
                    };
                    // The bundle's proofs need a checkpoint covering the period: sign one now.
                    let mut w = store::Writer::open(&db).map_err(reason)?;
                    let origin = w
                        .meta_default("origin", &cfg.audit_origin())
                        .map_err(reason)?;
                    let names: Vec<String> = cfg.services.iter().map(|s| s.name.clone()).collect();
                    let snap = counters::read(&cfg.agent.pin_root(), &names);
                    checkpoint::sign(
                        &mut w,
                        &signer(&cfg)?,
                        &origin,
                        snap.as_ref(),
                        "export",
                        Some(&db),
                    )
                    .map_err(reason)?;
                    let f = if format == "jsonl" {
                        export::BundleFormat::Jsonl
                    } else {
                        export::BundleFormat::Csv
                    };
                    let s = export::write_bundle(w.conn(), from_ms, to_ms, f, &dir)?;
                    println!(
                        "bundle {}: {} records ({}..{}) with inclusion proofs against the checkpoint of size {}",
                        s.dir,
                        s.count,
                        s.first_seq.map(|x| x.to_string()).unwrap_or("-".into()),
                        s.last_seq.map(|x| x.to_string()).unwrap_or("-".into()),
                        s.checkpoint_size
                    );
                }
                other => bail!("--format {other:?}: one of art30, art30-md, jsonl, csv"),
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Prune { before, db, config } => {
            let before_ms = timefmt::parse(&before).map_err(|e| anyhow::anyhow!("--before {e}"))?;
            let db = db_path(db, &config)?;
            let mut w = store::Writer::open(&db).map_err(reason)?;
            let p = prune::prune(&mut w, before_ms, "operator").map_err(reason)?;
            println!(
                "removed {} record bodies older than {} (records {}..{}); prune recorded as record {}",
                p.bodies_removed,
                timefmt::rfc3339(before_ms),
                p.first_seq.map(|x| x.to_string()).unwrap_or("-".into()),
                p.last_seq.map(|x| x.to_string()).unwrap_or("-".into()),
                p.record
            );
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Keys { command } => match command {
            KeysCommand::List { config } => {
                let cfg = load(&config)?;
                let ring = KeyRing::new(&cfg.agent.pseudonym_keys());
                for k in ring.list()? {
                    println!(
                        "{} created {}{}",
                        k.id,
                        timefmt::rfc3339(k.created_ms),
                        if k.current { " (in force)" } else { "" }
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            KeysCommand::Rotate { config } => {
                let cfg = load(&config)?;
                let ring = KeyRing::new(&cfg.agent.pseudonym_keys());
                let id = ring.rotate()?;
                let seq = record(
                    &cfg,
                    "keys",
                    serde_json::json!({"action": "rotate", "id": id}),
                )?;
                println!(
                    "new pseudonym key {id} (in force from the next agent start); recorded as record {seq}"
                );
                Ok(ExitCode::SUCCESS)
            }
            KeysCommand::Erase { id, config } => {
                let cfg = load(&config)?;
                let ring = KeyRing::new(&cfg.agent.pseudonym_keys());
                ring.erase(&id)?;
                let seq = record(
                    &cfg,
                    "keys",
                    serde_json::json!({"action": "erase", "id": id}),
                )?;
                println!(
                    "pseudonym key {id} erased: its pseudonyms can no longer be linked to any value; recorded as record {seq}"
                );
                Ok(ExitCode::SUCCESS)
            }
        },
    }
}

fn print_row(conn: &rusqlite::Connection, r: &store::Row, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
        return Ok(());
    }
    let t = timefmt::rfc3339(r.time_ms);
    let Some(b) = &r.body else {
        println!("#{} {t} {} (body removed by retention)", r.seq, r.kind);
        return Ok(());
    };
    let d = &b["data"];
    let s = |k: &str| d[k].as_str().unwrap_or("-").to_string();
    match r.kind.as_str() {
        "request" | "exchange" => {
            let mut extra = String::new();
            if r.kind == "request" {
                let done: bool = conn
                    .query_row(
                        "SELECT count(*) > 0 FROM bodies WHERE request_seq = ?1",
                        [r.seq as i64],
                        |x| x.get(0),
                    )
                    .unwrap_or(false);
                if !done {
                    extra = " INCOMPLETE (no final record)".into();
                }
            } else if let Some(q) = b["request_seq"].as_u64() {
                extra = format!(" (request #{q})");
            }
            let masked = d["masked"]
                .as_object()
                .filter(|m| !m.is_empty())
                .map(|m| format!(" masked={}", serde_json::Value::Object(m.clone())))
                .unwrap_or_default();
            println!(
                "#{} {t} {} {} {} {} outcome={} status={} caller={} role={} purpose={}{masked}{extra}",
                r.seq,
                r.kind,
                s("service"),
                s("method"),
                s("target"),
                s("outcome"),
                d["http_status"],
                d["subject"].as_str().or(d["peer"].as_str()).unwrap_or("-"),
                s("role"),
                s("purpose"),
            );
        }
        "approval" => println!(
            "#{} {t} approval {} {} {} {} {} requester={} actor={} reason={} approvals={}/{} hash={}",
            r.seq,
            s("approval_id"),
            s("step"),
            s("service"),
            s("method"),
            s("target"),
            d["requester"]["subject"].as_str().unwrap_or("-"),
            s("actor"),
            s("reason"),
            d["approvals"],
            d["required"],
            s("request_hash"),
        ),
        _ => println!("#{} {t} {} {}", r.seq, r.kind, d),
    }
    Ok(())
}
