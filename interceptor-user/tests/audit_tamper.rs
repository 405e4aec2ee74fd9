//! The audit log against an attacker with the database file: every tamper scenario of issue
//! #6, done with the real `sqlite3` tool, must be reported by `interceptor audit verify` with
//! the right record number and a failing exit status; an untouched log, exports, retention and
//! pseudonym-key erasure must keep verifying. No root, no eBPF: the log is written through the
//! library (the same writer the agent uses) and checked through the binary.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use interceptor::audit::{checkpoint, keys::KeyRing, merkle, note::Signer, store};
use interceptor::redact::engine::{Engine, EngineConfig, PseudonymKey};

struct Fixture {
    dir: PathBuf,
    db: PathBuf,
    config: PathBuf,
    pubkey: PathBuf,
    signer: Signer,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const ORIGIN: &str = "test.example/interceptor/audit";

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_interceptor"))
}

fn sqlite(db: &Path, sql: &str) -> (bool, String) {
    let out = Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .output()
        .expect("the sqlite3 tool (scripts/setup.sh installs it)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn record(i: u64) -> serde_json::Value {
    serde_json::json!({
        "service": "crm",
        "subject": if i.is_multiple_of(2) { "alice" } else { "bob" },
        "method": "tools/call",
        "target": "customer_lookup",
        "outcome": "result",
        "role": "support",
        "purpose": "Handling customer support tickets",
        "lawful_basis": "contract",
        "masked": {"EMAIL": 1},
        "pseudonyms": [],
        "i": i,
    })
}

/// A log of 20 exchange records with signed checkpoints at 5, 10 and 20.
fn fixture(name: &str) -> Fixture {
    let dir = std::env::temp_dir().join(format!("icpt-tamper-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("state/audit.db");
    let key = dir.join("keys/audit-signing.key");
    let config = dir.join("interceptor.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nstate_dir = {:?}\n[audit]\nsigning_key = {:?}\norigin = {ORIGIN:?}\n[audit.controller]\nname = \"Example Ltd\"\n[[services]]\nname = \"crm\"\nport = 8080\n[services.redact]\n",
            dir.join("state").display().to_string(),
            key.display().to_string()
        ),
    )
    .unwrap();
    let signer = Signer::load_or_create(&key, ORIGIN).unwrap();
    let pubkey = dir.join("audit.vkey");
    std::fs::write(&pubkey, signer.verifier().text()).unwrap();
    let mut w = store::Writer::open(&db).unwrap();
    w.meta_default("origin", ORIGIN).unwrap();
    for i in 0..20u64 {
        let e = store::Entry::new("exchange", &[], &record(i)).unwrap();
        w.append(&[e]).unwrap();
        if [4, 9, 19].contains(&i) {
            checkpoint::sign(&mut w, &signer, ORIGIN, None, "test", Some(&db)).unwrap();
        }
    }
    drop(w);
    Fixture {
        dir,
        db,
        config,
        pubkey,
        signer,
    }
}

fn verify(f: &Fixture, extra: &[&str]) -> (bool, String) {
    let out = bin()
        .args(["audit", "verify", "--db"])
        .arg(&f.db)
        .arg("--pubkey")
        .arg(&f.pubkey)
        .args(extra)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn assert_fails_with(f: &Fixture, needles: &[&str]) {
    let (ok, out) = verify(f, &[]);
    assert!(!ok, "verify passed a tampered log:\n{out}");
    assert!(out.contains("\nFAIL\n") || out.ends_with("FAIL\n"), "{out}");
    for n in needles {
        assert!(out.contains(n), "expected {n:?} in:\n{out}");
    }
}

#[test]
fn untouched_log_passes() {
    let f = fixture("clean");
    let (ok, out) = verify(&f, &[]);
    assert!(ok, "{out}");
    assert!(
        out.contains("20 records") && out.contains("3 stored, 4 verified"),
        "{out}"
    );
    // JSON report says the same.
    let (ok, out) = verify(&f, &["--json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["pass"], true);
    assert_eq!(
        v["checkpoints_verified"], 4,
        "3 stored + the external one: {v}"
    );
}

#[test]
fn edited_field_is_reported_by_record_number() {
    let f = fixture("edit");
    // The triggers refuse the edit...
    let (ok, out) = sqlite(
        &f.db,
        "UPDATE bodies SET body = replace(body, '\"bob\"', '\"mallory\"') WHERE seq = 7",
    );
    assert!(!ok && out.contains("append-only"), "{out}");
    // ...so the attacker drops them first.
    let (ok, out) = sqlite(
        &f.db,
        "DROP TRIGGER bodies_no_update; UPDATE bodies SET body = replace(body, '\"bob\"', '\"mallory\"') WHERE seq = 7",
    );
    assert!(ok, "{out}");
    assert_fails_with(&f, &["FAIL modified record 7:"]);
    // Editing only a query column is caught too.
    let f = fixture("edit-col");
    sqlite(
        &f.db,
        "DROP TRIGGER bodies_no_update; UPDATE bodies SET subject = 'nobody' WHERE seq = 4",
    );
    assert_fails_with(&f, &["FAIL modified record 4:", "query columns"]);
}

#[test]
fn deleted_record_is_reported() {
    let f = fixture("delete");
    let (ok, out) = sqlite(&f.db, "DELETE FROM records WHERE seq = 5");
    assert!(!ok && out.contains("append-only"), "{out}");
    let (ok, out) = sqlite(
        &f.db,
        "DROP TRIGGER records_no_delete; DROP TRIGGER bodies_no_delete; \
         DELETE FROM records WHERE seq = 5; DELETE FROM bodies WHERE seq = 5",
    );
    assert!(ok, "{out}");
    assert_fails_with(&f, &["FAIL deleted record 5:"]);
}

#[test]
fn inserted_records_are_reported() {
    // Appended after the end (INSERT is allowed by the triggers).
    let f = fixture("insert-end");
    let (ok, out) = sqlite(
        &f.db,
        "INSERT INTO records VALUES (20, 0, 'exchange', zeroblob(32)); \
         INSERT INTO bodies (seq, body) VALUES (20, '{\"kind\":\"exchange\",\"time_ms\":0,\"data\":{},\"seq\":20}')",
    );
    assert!(ok, "{out}");
    assert_fails_with(&f, &["FAIL inserted record 20:"]);
    // Slipped in at 12, later records pushed along.
    let f = fixture("insert-mid");
    let (ok, out) = sqlite(
        &f.db,
        "DROP TRIGGER records_no_update; DROP TRIGGER bodies_no_update; \
         UPDATE records SET seq = -(seq + 1) WHERE seq >= 12; UPDATE records SET seq = -seq WHERE seq < 0; \
         UPDATE bodies SET seq = -(seq + 1) WHERE seq >= 12; UPDATE bodies SET seq = -seq WHERE seq < 0; \
         INSERT INTO records SELECT 12, time_ms, kind, leaf_hash FROM records WHERE seq = 3; \
         INSERT INTO bodies (seq, body, service, subject, method, target, outcome) \
           SELECT 12, replace(body, '\"seq\":3}', '\"seq\":12}'), service, subject, method, target, outcome FROM bodies WHERE seq = 3",
    );
    assert!(ok, "{out}");
    assert_fails_with(&f, &["FAIL inserted record 12:"]);
}

#[test]
fn swapped_records_are_reported() {
    let f = fixture("swap");
    let (ok, out) = sqlite(
        &f.db,
        "DROP TRIGGER records_no_update; DROP TRIGGER bodies_no_update; \
         UPDATE records SET seq = -1 WHERE seq = 3; UPDATE records SET seq = 3 WHERE seq = 8; UPDATE records SET seq = 8 WHERE seq = -1; \
         UPDATE bodies SET seq = -1 WHERE seq = 3; UPDATE bodies SET seq = 3 WHERE seq = 8; UPDATE bodies SET seq = 8 WHERE seq = -1",
    );
    assert!(ok, "{out}");
    assert_fails_with(
        &f,
        &[
            "FAIL reordered record 3:",
            "FAIL reordered record 8:",
            "swapped",
        ],
    );
}

#[test]
fn truncated_tail_is_reported() {
    let f = fixture("truncate");
    let (ok, out) = sqlite(
        &f.db,
        "DROP TRIGGER records_no_delete; DROP TRIGGER bodies_no_delete; \
         DELETE FROM records WHERE seq >= 15; DELETE FROM bodies WHERE seq >= 15",
    );
    assert!(ok, "{out}");
    assert_fails_with(&f, &["FAIL deleted record 15:", "tail truncated"]);
    // Even with the tree state rewritten to match, the checkpoint of size 20 catches it.
    let f = fixture("truncate-consistent");
    let leaves: Vec<merkle::Hash> = {
        let c = store::open_read_only(&f.db).unwrap();
        store::leaf_hashes(&c, 15).unwrap()
    };
    let mut fr = merkle::Frontier::new();
    for l in &leaves {
        fr.push(*l);
    }
    let sql = format!(
        "DROP TRIGGER records_no_delete; DROP TRIGGER bodies_no_delete; \
         DELETE FROM records WHERE seq >= 15; DELETE FROM bodies WHERE seq >= 15; \
         UPDATE tree_state SET size = 15, frontier = X'{}', root = X'{}'",
        hex::encode(fr.to_bytes()),
        hex::encode(fr.root())
    );
    let (ok, out) = sqlite(&f.db, &sql);
    assert!(ok, "{out}");
    assert_fails_with(&f, &["FAIL deleted record 15:", "covers 20 records"]);
}

#[test]
fn restored_older_copy_is_reported() {
    let f = fixture("rollback");
    let old = f.dir.join("old.db");
    let (ok, out) = sqlite(&f.db, &format!(".backup {}", old.display()));
    assert!(ok, "{out}");
    {
        let mut w = store::Writer::open(&f.db).unwrap();
        for i in 20..25 {
            w.append(&[store::Entry::new("exchange", &[], &record(i)).unwrap()])
                .unwrap();
        }
        checkpoint::sign(&mut w, &f.signer, ORIGIN, None, "test", Some(&f.db)).unwrap();
    }
    let (ok, out) = verify(&f, &[]);
    assert!(ok, "{out}");
    // The operator keeps a copy of the latest checkpoint; the database is put back.
    let kept = f.dir.join("kept.checkpoint");
    std::fs::copy(checkpoint::latest_path(&f.db), &kept).unwrap();
    for side in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{side}", f.db.display()));
    }
    std::fs::copy(&old, &f.db).unwrap();
    // Internally consistent, but older than the checkpoint kept beside it (and the copy).
    assert_fails_with(&f, &["FAIL rolled_back record 20:", "covers 25 records"]);
    let (ok, out) = verify(&f, &["--checkpoint", kept.to_str().unwrap()]);
    assert!(!ok && out.contains("rolled_back"), "{out}");
}

#[test]
fn replaced_checkpoint_signature_is_reported() {
    let f = fixture("forged-cp");
    let other = Signer::generate(ORIGIN).unwrap();
    let forged = other.sign(&format!("{ORIGIN}\n20\n{}\n", base64_root(&f.db)));
    let sql = format!(
        "DROP TRIGGER checkpoints_no_update; UPDATE checkpoints SET note = '{}' WHERE id = 2",
        forged.replace('\'', "''")
    );
    let (ok, out) = sqlite(&f.db, &sql);
    assert!(ok, "{out}");
    assert_fails_with(
        &f,
        &["FAIL checkpoint_forged: checkpoint #2", "does not verify"],
    );
}

fn base64_root(db: &Path) -> String {
    use base64::Engine as _;
    let c = store::open_read_only(db).unwrap();
    base64::engine::general_purpose::STANDARD.encode(store::tree_state(&c).unwrap().root)
}

#[test]
fn consistent_rewrite_is_caught_by_the_signed_checkpoints() {
    let f = fixture("rewrite");
    let c = store::open_read_only(&f.db).unwrap();
    let body = store::row(&c, 7).unwrap().unwrap().body.unwrap();
    let mut leaves = store::leaf_hashes(&c, 100).unwrap();
    drop(c);
    let new = body.to_string().replace("\"bob\"", "\"mallory\"");
    assert_ne!(new, body.to_string());
    leaves[7] = store::body_leaf_hash(&new);
    let mut fr = merkle::Frontier::new();
    for l in &leaves {
        fr.push(*l);
    }
    let sql = format!(
        "DROP TRIGGER bodies_no_update; DROP TRIGGER records_no_update; \
         UPDATE bodies SET body = '{}', subject = 'mallory' WHERE seq = 7; \
         UPDATE records SET leaf_hash = X'{}' WHERE seq = 7; \
         UPDATE tree_state SET frontier = X'{}', root = X'{}'",
        new.replace('\'', "''"),
        hex::encode(leaves[7]),
        hex::encode(fr.to_bytes()),
        hex::encode(fr.root())
    );
    let (ok, out) = sqlite(&f.db, &sql);
    assert!(ok, "{out}");
    std::fs::remove_file(checkpoint::latest_path(&f.db)).unwrap();
    // Every record hashes fine now; only the signatures know better, and they narrow it down
    // to the records between the checkpoints of size 5 and 10.
    assert_fails_with(
        &f,
        &[
            "FAIL checkpoint_mismatch",
            "checkpoint #2 (size 10)",
            "in 5..9",
        ],
    );
    let (_, out) = verify(&f, &[]);
    assert!(!out.contains("FAIL modified"), "{out}");
}

#[test]
fn bundles_verify_offline_and_catch_edits() {
    let f = fixture("bundle");
    let cfg = f.config.to_str().unwrap().to_string();
    for fmt in ["jsonl", "csv"] {
        let dir = f.dir.join(format!("bundle-{fmt}"));
        let out = bin()
            .args([
                "audit",
                "export",
                "--format",
                fmt,
                "--from",
                "2000-01-01",
                "--to",
                "2100-01-01",
                "--config",
                &cfg,
                "--out",
            ])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let check = |d: &Path| {
            let o = bin()
                .args(["audit", "verify", "--bundle"])
                .arg(d)
                .arg("--pubkey")
                .arg(&f.pubkey)
                .output()
                .unwrap();
            (
                o.status.success(),
                String::from_utf8_lossy(&o.stdout).to_string(),
            )
        };
        let (ok, out) = check(&dir);
        assert!(ok && out.contains("20 records (0..19)"), "{fmt}: {out}");
        let file = dir.join(format!("records.{fmt}"));
        let text = std::fs::read_to_string(&file).unwrap();
        std::fs::write(&file, text.replacen("alice", "eve", 1)).unwrap();
        let (ok, out) = check(&dir);
        assert!(
            !ok && (out.contains("record 0: body does not hash")
                || out.contains("record 0: columns disagree")),
            "{fmt}: {out}"
        );
        // Dropping a line is noticed too.
        let lines: Vec<&str> = text.lines().collect();
        let skip = if fmt == "csv" { 4 } else { 3 };
        let fewer: String = lines
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != skip)
            .map(|(_, l)| format!("{l}\n"))
            .collect();
        std::fs::write(&file, fewer).unwrap();
        let (ok, out) = check(&dir);
        assert!(
            !ok && out.contains("expected record 3 next"),
            "{fmt}: {out}"
        );
    }
}

#[test]
fn prune_keeps_the_log_verifiable_and_erased_keys_unlink() {
    let f = fixture("prune");
    let cfg = f.config.to_str().unwrap().to_string();
    // Exchanges that masked an e-mail address, pseudonymised with the ring's key in force.
    let ring = KeyRing::new(&f.dir.join("state/pseudonym-keys"));
    let (kid, key) = ring.current_or_create().unwrap();
    let engine = Engine::new(&EngineConfig::default(), PseudonymKey::new(key)).unwrap();
    let ps: Vec<String> = engine
        .pseudonyms_of("Jane.Doe@example.com")
        .into_iter()
        .filter(|p| p.starts_with("EMAIL:"))
        .collect();
    assert_eq!(ps.len(), 1, "{ps:?}");
    std::thread::sleep(std::time::Duration::from_millis(5));
    let cut = store::now_ms();
    std::thread::sleep(std::time::Duration::from_millis(5));
    {
        let mut w = store::Writer::open(&f.db).unwrap();
        let mut r = record(99);
        r["pseudonyms"] = serde_json::json!(ps);
        let e = store::Entry::new("exchange", &[("pseudonym_key", serde_json::json!(kid))], &r)
            .unwrap()
            .with_pseudonyms(ps.clone(), Some(kid.clone()));
        w.append(&[e]).unwrap();
        checkpoint::sign(&mut w, &f.signer, ORIGIN, None, "test", Some(&f.db)).unwrap();
    }
    let search = |v: &str| {
        let o = bin()
            .args([
                "audit",
                "search",
                "--subject",
                v,
                "--json",
                "--config",
                &cfg,
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["hits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["seq"].as_u64().unwrap())
            .collect::<Vec<_>>()
    };
    // Written differently, the same address is found (normalised like the engine does).
    assert_eq!(search("jane.doe@EXAMPLE.com"), vec![20]);
    assert!(search("john@example.com").is_empty());
    // Retention: the 20 older bodies go, the log still verifies.
    let o = bin()
        .args([
            "audit",
            "prune",
            "--before",
            &cut.to_string(),
            "--config",
            &cfg,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("removed 20 record bodies"));
    let (ok, out) = verify(&f, &[]);
    assert!(ok && out.contains("pruned by retention: 20"), "{out}");
    let (_, dump) = sqlite(
        &f.db,
        "SELECT count(*) FROM bodies WHERE body LIKE '%alice%'",
    );
    assert_eq!(dump.trim(), "0");
    // A body removed by hand (not by prune) is not accepted.
    let (ok, o2) = sqlite(
        &f.db,
        "DROP TRIGGER bodies_no_delete; DELETE FROM bodies WHERE seq = 20",
    );
    assert!(ok, "{o2}");
    assert_fails_with(&f, &["FAIL body_removed record 20:"]);
    // Key erasure: rotate (a new key in force), erase the old one: no longer linkable.
    let f = fixture("erase");
    let cfg = f.config.to_str().unwrap().to_string();
    let ring = KeyRing::new(&f.dir.join("state/pseudonym-keys"));
    let (kid, key) = ring.current_or_create().unwrap();
    let engine = Engine::new(&EngineConfig::default(), PseudonymKey::new(key)).unwrap();
    let ps: Vec<String> = engine
        .pseudonyms_of("jane.doe@example.com")
        .into_iter()
        .filter(|p| p.starts_with("EMAIL:"))
        .collect();
    {
        let mut w = store::Writer::open(&f.db).unwrap();
        let mut r = record(99);
        r["pseudonyms"] = serde_json::json!(ps);
        let e = store::Entry::new("exchange", &[], &r)
            .unwrap()
            .with_pseudonyms(ps.clone(), Some(kid.clone()));
        w.append(&[e]).unwrap();
    }
    let search = |v: &str| {
        let o = bin()
            .args([
                "audit",
                "search",
                "--subject",
                v,
                "--json",
                "--config",
                &cfg,
            ])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["hits"].as_array().unwrap().len()
    };
    assert_eq!(search("jane.doe@example.com"), 1);
    for args in [vec!["rotate"], vec!["erase", "--id", &kid]] {
        let o = bin()
            .args(["audit", "keys"])
            .args(&args)
            .args(["--config", &cfg])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(search("jane.doe@example.com"), 0);
    let (ok, out) = verify(&f, &[]);
    assert!(
        ok,
        "the key events are records too and the log verifies: {out}"
    );
}
