//! CPU cost of the audit writer per record and per transaction
//! (`cargo bench -p interceptor-user --bench audit_store`).
//!
//! The end-to-end figure (`cargo xtask bench-audit`) says what durable audit costs a loaded
//! agent; this one says where the writer's share goes, without the noise of a shared machine:
//! it counts the CPU time of the writing thread (`/proc/thread-self/schedstat`, which includes
//! the kernel's share of `pwrite` and `fsync`), not the wall clock.
//!
//! A real database file (WAL, `synchronous=FULL`, as the agent opens it) in the target
//! directory receives exchange-sized records (about 1 KB of JSON each, like the agent's
//! `exchange` records) in transactions of 1, 4, 16 and 64 records. Printed per batch size:
//! records/s and transactions/s (wall), the writer's CPU µs per record and per transaction
//! (`Writer::append`: inserts, tree update, commit with fsync), and the wall time of a
//! transaction. Also printed: the data path's share (serialising and hashing an entry).
//! `AUDIT_BENCH_SECS` (default 2) sets the time per batch size, `AUDIT_BENCH_BATCHES` (`1,4,16,64`)
//! the batch sizes.
use std::time::{Duration, Instant};

use interceptor::audit::store::{Entry, Index, Writer};

mod common;

/// The thread's CPU time (0 where the kernel does not say).
fn thread_cpu_ns() -> u64 {
    common::thread_cpu_ns().unwrap_or(0)
}

fn record(i: u64) -> serde_json::Value {
    serde_json::json!({
        "service": "crm", "conn_id": i / 8, "caller_kind": "remote", "peer": "10.200.1.2:51234",
        "tgid": null, "uid": null, "comm": null, "cgroup": null, "unit": null,
        "transport": "streamable_http", "http_version": "HTTP/1.1", "revision": "2025-11-25",
        "session": "6c0f4e0e-3f0e-4b7a-9a59-bb0c8a4d7f21", "jsonrpc_id": i.to_string(),
        "method": "tools/call", "target": "lookup_customer",
        "params": {"name": "lookup_customer", "arguments": {"email": "[EMAIL:4f1c9a2b]", "limit": 5}},
        "request_pseudonyms": ["EMAIL:4f1c9a2b"], "request_bytes": 214, "response_bytes": 1830,
        "http_status": 200, "outcome": "result", "error_code": null, "notifications": 0,
        "subject": "alice", "issuer": "http://127.0.0.1:9400", "client_id": "support-console",
        "groups": ["support"], "role": "support", "rule": "support-read", "purpose": "customer support",
        "lawful_basis": "contract", "policy_version": "sha256:1f2e3d4c5b6a",
        "masked": {"EMAIL": 2, "PHONE": 1}, "pseudonyms": ["EMAIL:4f1c9a2b", "EMAIL:77aa01de", "PHONE:0b1c2d3e"],
        "released": [], "response_sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "response_excerpt": "{\"content\":[{\"type\":\"text\",\"text\":\"Customer [EMAIL:4f1c9a2b], phone [PHONE:0b1c2d3e]\"}]}",
        "approval": null, "started": 1764475200000u64 + i, "duration_ms": 1
    })
}

fn entry(i: u64, data: &serde_json::Value) -> Entry {
    // The query columns given, as the agent gives them (`Audit::exchange_entry`).
    let s = |k: &str| data[k].as_str().map(str::to_string);
    let index = Index {
        service: s("service"),
        subject: s("subject"),
        method: s("method"),
        target: s("target"),
        outcome: s("outcome"),
        request_seq: Some(i),
    };
    Entry::with_index("exchange", &[("request_seq", i.into())], data, index)
        .expect("serialisable")
        .with_pseudonyms(
            vec!["EMAIL:4f1c9a2b".into(), "EMAIL:77aa01de".into()],
            Some("k1".into()),
        )
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let secs: f64 = std::env::var("AUDIT_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("audit-store-bench");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench directory");
    let db = dir.join("audit.db");
    let mut w = Writer::open(&db).expect("open the database");
    let body_len = entry(0, &record(0)).body_len();
    println!(
        "audit writer: {} (WAL, synchronous=FULL), records of {body_len} bytes of JSON; CPU = the writing thread's (schedstat)",
        db.display()
    );
    // The data path's share: serialising and hashing one entry (measured alone, many times:
    // schedstat is only exact over long intervals).
    let n = 20_000u64;
    let records: Vec<serde_json::Value> = (0..n).map(record).collect();
    let c0 = thread_cpu_ns();
    for (k, r) in records.iter().enumerate() {
        std::hint::black_box(entry(k as u64, r));
    }
    let entry_us = (thread_cpu_ns() - c0) as f64 / 1000.0 / n as f64;
    println!(
        "data path: {entry_us:.2} CPU us per entry (serialise + hash up to the sequence number)"
    );
    println!(
        "{:>6} {:>10} {:>9} {:>14} {:>14} {:>12}",
        "batch", "records/s", "tx/s", "CPU us/record", "CPU us/tx", "wall us/tx"
    );
    let pool: Vec<Entry> = records
        .iter()
        .take(256)
        .enumerate()
        .map(|(k, r)| entry(k as u64, r))
        .collect();
    let batches: Vec<usize> = std::env::var("AUDIT_BENCH_BATCHES")
        .ok()
        .map(|s| s.split(',').filter_map(|b| b.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 4, 16, 64]);
    for batch in batches {
        let (mut done, mut txs, mut cpu_ns) = (0u64, 0u64, 0u64);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs_f64(secs) {
            let at = (txs as usize * batch) % (pool.len() - batch);
            let c0 = thread_cpu_ns();
            w.append(&pool[at..at + batch]).expect("append");
            cpu_ns += thread_cpu_ns() - c0;
            done += batch as u64;
            txs += 1;
        }
        let wall = start.elapsed().as_secs_f64();
        println!(
            "{:>6} {:>10.0} {:>9.0} {:>14.1} {:>14.1} {:>12.0}",
            batch,
            done as f64 / wall,
            txs as f64 / wall,
            cpu_ns as f64 / 1000.0 / done as f64,
            cpu_ns as f64 / 1000.0 / txs as f64,
            wall * 1e6 / txs as f64,
        );
    }
    drop(w);
    let _ = std::fs::remove_dir_all(&dir);
}
