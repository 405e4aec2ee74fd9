//! The tamper-evident audit log: every MCP exchange, connection, denial, approval and
//! configuration change, recorded durably in SQLite before the caller sees its answer, as the
//! leaves of an RFC 6962 Merkle tree whose roots are signed (Ed25519, C2SP checkpoints).
//!
//! Files, one job each:
//! - [`store`]: schema, migrations, triggers, appending (tree updated in the same transaction).
//! - [`merkle`]: RFC 6962 hashes, the frontier, inclusion proofs.
//! - [`note`]: C2SP signed notes, Ed25519 keys, the checkpoint text.
//! - [`checkpoint`]: signing checkpoints (with the kernel counters from [`counters`]).
//! - [`verify`]: offline verification of a database copy or an export bundle.
//! - [`export`]: evidence bundles (JSONL/CSV + proofs) and the GDPR Art. 30 record.
//! - [`search`]: exchanges that involved a data subject's value, through keyed pseudonyms.
//! - [`prune`]: retention without breaking verifiability. [`keys`]: the pseudonym key ring.
//! - [`cli`]: `interceptor audit ...`.
//!
//! # Durability design
//!
//! A dedicated writer thread owns the SQLite connection. The data path serialises a record
//! (on its own worker thread, hashing it as far as its sequence number), sends it over a
//! bounded channel and awaits a one-shot acknowledgement. The writer takes whatever is queued
//! (up to `audit.max_batch`) into one transaction — group commit: while one batch's fsync
//! runs, the next batch queues — assigns sequence numbers, appends the leaves to the tree and
//! stores the new tree state, commits (`synchronous=FULL`: the WAL is fsync'd before COMMIT
//! returns), then acknowledges every record of the batch. If the transaction fails (disk full,
//! I/O error, database locked past the busy timeout) every record of the batch gets the error.
//!
//! The HTTP layer uses this in two steps per exchange, so nothing is buffered and no access
//! goes unrecorded:
//! 1. `request` record (who, what, decision) committed before the request goes upstream; if
//!    it cannot be written the request is refused (HTTP 503, JSON-RPC error) and never
//!    forwarded.
//! 2. `exchange` record (outcome, status, sizes, masking evidence; `request_seq` links it to
//!    step 1) committed before the last bytes of the response are released: the body wrapper
//!    holds back the frame that completes the response (or its end-of-stream) until the
//!    acknowledgement; if the commit fails the stream ends with an error instead of a clean
//!    end, so the caller never receives a complete response that is not recorded.
//!
//! A crash between the two leaves a `request` without its `exchange`: `tail`/`show` display it
//! as incomplete, and its response can not have reached the caller complete. Denials are one
//! `exchange` record (no `request`), committed before the denial is sent. Connection open is
//! committed before a byte is relayed (tcp services) or with the first request (FIFO order:
//! a later acknowledgement implies every earlier record is committed).
//!
//! # Interfaces for other modules
//!
//! [`Audit::append`] (awaits durability) and [`Audit::submit`] (returns the acknowledgement
//! without waiting) take an [`AuditEvent`]: a `kind` and a JSON `data` object. Approvals,
//! policy reloads, configuration changes use it through [`crate::pipeline::Pipeline::audit`].
pub mod checkpoint;
pub mod cli;
pub mod counters;
pub mod export;
pub mod keys;
pub mod merkle;
pub mod note;
pub mod prune;
pub mod search;
pub mod store;
pub mod timefmt;
pub mod verify;

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use crate::pipeline::ExchangeRecord;

/// The audit log could not record something: the caller must be refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error("audit log unavailable: {0}")]
pub struct AuditError(pub String);

/// Resolves when the record is committed (its sequence number) or could not be.
pub type Ack = oneshot::Receiver<Result<u64, AuditError>>;

/// A record of something other than an exchange: `kind` ("approval", "policy", "config",
/// "conn_open", ...) and a JSON object.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub kind: String,
    pub data: serde_json::Value,
}

impl AuditEvent {
    pub fn new(kind: &str, data: serde_json::Value) -> AuditEvent {
        AuditEvent {
            kind: kind.to_string(),
            data,
        }
    }
}

/// Where the checkpoint signing key's public half is written: `<key file>.pub`
/// (`audit-signing.key` → `audit-signing.key.pub`).
pub fn public_key_path(key: &std::path::Path) -> std::path::PathBuf {
    let mut p = key.as_os_str().to_owned();
    p.push(".pub");
    p.into()
}

/// Creates the checkpoint signing key when it is missing (mode 0600) and (re)writes its public
/// key beside it (0644). Installation does this, so a service whose `/etc` is read-only
/// (`ProtectSystem=strict`) never has to. Returns whether a key was created, and the public key.
pub fn init_signing_key(key: &std::path::Path, name: &str) -> anyhow::Result<(bool, String)> {
    use anyhow::Context as _;
    let existed = key.exists();
    let signer = note::Signer::load_or_create(key, name)
        .with_context(|| format!("audit signing key {}", key.display()))?;
    let public = signer.verifier().text();
    let pub_path = public_key_path(key);
    std::fs::write(&pub_path, format!("{public}\n"))
        .with_context(|| format!("writing {}", pub_path.display()))?;
    Ok((!existed, public))
}

/// The key name a fresh installation signs with: `<hostname>/interceptor`.
pub fn default_key_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}/interceptor")
}

/// The policy in force, as the Art. 30 export needs it later: version, files, and each
/// grant's service, role, purpose, lawful basis and categories of data subjects.
pub fn policy_event(policy: &crate::policy::PolicySet, why: &str) -> AuditEvent {
    AuditEvent::new(
        "policy",
        serde_json::json!({
            "event": why,
            "version": policy.version(),
            "files": policy.files(),
            "purposes": policy.services_purposes(),
        }),
    )
}

enum Job {
    Append(
        Box<store::Entry>,
        Option<oneshot::Sender<Result<u64, AuditError>>>,
    ),
    Checkpoint(
        String,
        oneshot::Sender<Result<checkpoint::Signed, AuditError>>,
    ),
    Shutdown(oneshot::Sender<Result<Option<checkpoint::Signed>, AuditError>>),
}

/// Reads the kernel counters for checkpoints (None when the pins are not there).
pub type CounterSource = Box<dyn Fn() -> Option<counters::Snapshot> + Send>;

/// Everything the writer thread needs.
pub struct Options {
    pub db: PathBuf,
    pub signer: note::Signer,
    pub origin: String,
    pub checkpoint_interval: Duration,
    pub checkpoint_max_records: u64,
    pub retention: Option<Duration>,
    pub max_batch: usize,
    pub counters: Option<CounterSource>,
    /// Id of the pseudonym key in force (recorded with each exchange).
    pub pseudonym_key: Option<String>,
}

/// Records committed and transactions that committed them, since the writer started.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub records: AtomicU64,
    pub transactions: AtomicU64,
    /// Records in the last transaction.
    pub last: AtomicU64,
}

impl WriterStats {
    /// (records committed, transactions).
    pub fn totals(&self) -> (u64, u64) {
        (
            self.records.load(Ordering::Relaxed),
            self.transactions.load(Ordering::Relaxed),
        )
    }
}

/// Handle on the audit log, shared by the data path.
pub struct Audit {
    tx: mpsc::Sender<Job>,
    pseudonym_key: Option<String>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    stats: Arc<WriterStats>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Audit")
    }
}

fn failed_ack(why: &str) -> Ack {
    let (tx, rx) = oneshot::channel();
    let _ = tx.send(Err(AuditError(why.to_string())));
    rx
}

impl Audit {
    /// Opens the database and starts the writer thread.
    pub fn start(opts: Options) -> anyhow::Result<Arc<Audit>> {
        let writer = store::Writer::open(&opts.db)
            .map_err(|e| anyhow::anyhow!("audit.db {}: {}", opts.db.display(), e.reason()))?;
        let origin = writer.meta_default("origin", &opts.origin)?;
        if origin != opts.origin {
            warn!(event = "audit_origin", stored = %origin, configured = %opts.origin, "the database keeps its origin");
        }
        writer.meta_default("key", &opts.signer.verifier().text())?;
        let (tx, rx) = mpsc::channel(65_536);
        let pseudonym_key = opts.pseudonym_key.clone();
        let stats = Arc::new(WriterStats::default());
        let st = stats.clone();
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer_thread(writer, origin, opts, rx, &st))?;
        Ok(Arc::new(Audit {
            tx,
            pseudonym_key,
            thread: Mutex::new(Some(thread)),
            stats,
        }))
    }

    /// Group commit so far: (records committed, transactions).
    pub fn stats(&self) -> (u64, u64) {
        self.stats.totals()
    }

    /// Queues a record; the acknowledgement says when it is durable.
    pub fn submit_entry(&self, entry: store::Entry) -> Ack {
        let (tx, rx) = oneshot::channel();
        match self.tx.try_send(Job::Append(Box::new(entry), Some(tx))) {
            Ok(()) => rx,
            Err(mpsc::error::TrySendError::Full(_)) => failed_ack("audit queue full"),
            Err(mpsc::error::TrySendError::Closed(_)) => failed_ack("audit writer stopped"),
        }
    }

    /// Queues a record, waiting for room in the queue, and waits until it is durable.
    pub async fn append_entry(&self, entry: store::Entry) -> Result<u64, AuditError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Job::Append(Box::new(entry), Some(tx)))
            .await
            .map_err(|_| AuditError("audit writer stopped".into()))?;
        rx.await
            .map_err(|_| AuditError("audit writer stopped".into()))?
    }

    fn event_entry(ev: &AuditEvent) -> Result<store::Entry, AuditError> {
        store::Entry::new(&ev.kind, &[], &ev.data).map_err(|e| AuditError(e.to_string()))
    }

    /// Records an event and waits until it is durable.
    pub async fn append(&self, ev: AuditEvent) -> Result<u64, AuditError> {
        self.append_entry(Self::event_entry(&ev)?).await
    }

    /// Records an event without waiting for it (failures are logged by the writer).
    pub fn record(&self, ev: AuditEvent) {
        drop(self.submit(ev));
    }

    /// Records an event without waiting (the acknowledgement may be dropped).
    pub fn submit(&self, ev: AuditEvent) -> Ack {
        match Self::event_entry(&ev) {
            Ok(e) => self.submit_entry(e),
            Err(e) => failed_ack(&e.0),
        }
    }

    /// The record of an exchange: `request` (before forwarding) or `exchange` (final; linked
    /// to its request record when there is one).
    pub fn exchange_entry(
        &self,
        rec: &ExchangeRecord,
        request_seq: Option<u64>,
        kind: &str,
    ) -> Result<store::Entry, AuditError> {
        let mut extra = Vec::with_capacity(2);
        if let Some(s) = request_seq {
            extra.push(("request_seq", serde_json::json!(s)));
        }
        if let Some(k) = &self.pseudonym_key
            && !rec.pseudonyms.is_empty()
        {
            extra.push(("pseudonym_key", serde_json::json!(k)));
        }
        let index = store::Index {
            service: Some(rec.service.clone()),
            subject: rec.subject.clone(),
            method: rec.method.clone(),
            target: rec.target.clone(),
            outcome: Some(rec.outcome.clone()),
            request_seq,
        };
        let e = store::Entry::with_index(kind, &extra, rec, index)
            .map_err(|e| AuditError(e.to_string()))?;
        let mut ps = rec.pseudonyms.clone();
        ps.sort();
        ps.dedup();
        Ok(e.with_pseudonyms(ps, self.pseudonym_key.clone()))
    }

    /// Signs a checkpoint now.
    pub async fn checkpoint(&self, reason: &str) -> Result<checkpoint::Signed, AuditError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Job::Checkpoint(reason.to_string(), tx))
            .await
            .map_err(|_| AuditError("audit writer stopped".into()))?;
        rx.await
            .map_err(|_| AuditError("audit writer stopped".into()))?
    }

    /// Commits what is queued, signs the shutdown checkpoint and stops the writer.
    pub async fn shutdown(&self) -> Result<Option<checkpoint::Signed>, AuditError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Job::Shutdown(tx))
            .await
            .map_err(|_| AuditError("audit writer stopped".into()))?;
        let r = rx
            .await
            .map_err(|_| AuditError("audit writer stopped".into()))?;
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
        r
    }
}

fn writer_thread(
    mut w: store::Writer,
    origin: String,
    opts: Options,
    mut rx: mpsc::Receiver<Job>,
    stats: &WriterStats,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "audit writer: no runtime");
            return;
        }
    };
    let counters = || opts.counters.as_ref().and_then(|f| f());
    let sign = |w: &mut store::Writer, reason: &str| {
        checkpoint::sign(
            w,
            &opts.signer,
            &origin,
            counters().as_ref(),
            reason,
            Some(&opts.db),
        )
    };
    // A checkpoint at start records where this run begins (and the kernel counters).
    match sign(&mut w, "start") {
        Ok(s) => info!(
            event = "audit_checkpoint",
            size = s.size,
            reason = "start",
            "checkpoint signed"
        ),
        Err(e) => {
            error!(event = "audit_checkpoint_failed", error = %e.reason(), "checkpoint failed")
        }
    }
    let mut last_cp = (Instant::now(), w.size());
    let mut last_prune = Instant::now() - Duration::from_secs(3600);
    let mut batch: Vec<store::Entry> = Vec::with_capacity(opts.max_batch);
    let mut acks: Vec<Option<oneshot::Sender<Result<u64, AuditError>>>> =
        Vec::with_capacity(opts.max_batch);
    loop {
        let wait = opts
            .checkpoint_interval
            .saturating_sub(last_cp.0.elapsed())
            .max(Duration::from_millis(10));
        let first = rt.block_on(async { tokio::time::timeout(wait, rx.recv()).await });
        let mut control: Option<Job> = None;
        match first {
            Err(_) => {}
            Ok(None) => break,
            Ok(Some(Job::Append(e, a))) => {
                batch.push(*e);
                acks.push(a);
                while batch.len() < opts.max_batch {
                    match rx.try_recv() {
                        Ok(Job::Append(e, a)) => {
                            batch.push(*e);
                            acks.push(a);
                        }
                        Ok(other) => {
                            control = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }
            Ok(Some(other)) => control = Some(other),
        }
        if !batch.is_empty() {
            match w.append(&batch) {
                Ok(seqs) => {
                    stats.transactions.fetch_add(1, Ordering::Relaxed);
                    stats
                        .records
                        .fetch_add(seqs.len() as u64, Ordering::Relaxed);
                    stats.last.store(seqs.len() as u64, Ordering::Relaxed);
                    for (a, s) in acks.drain(..).zip(seqs) {
                        if let Some(a) = a {
                            let _ = a.send(Ok(s));
                        }
                    }
                }
                Err(e) => {
                    let why = e.reason();
                    error!(event = "audit_write_failed", side = "internal", records = batch.len(), error = %why, "audit records could not be committed; their requests are refused");
                    for a in acks.drain(..).flatten() {
                        let _ = a.send(Err(AuditError(why.clone())));
                    }
                }
            }
            batch.clear();
        }
        match control {
            Some(Job::Checkpoint(reason, reply)) => {
                let r = sign(&mut w, &reason).map_err(|e| AuditError(e.reason()));
                if let Ok(s) = &r {
                    last_cp = (Instant::now(), s.size);
                }
                let _ = reply.send(r);
            }
            Some(Job::Shutdown(reply)) => {
                let (records, transactions) = stats.totals();
                info!(
                    event = "audit_writer_stats",
                    records,
                    transactions,
                    records_per_transaction =
                        format!("{:.2}", records as f64 / transactions.max(1) as f64),
                    "group commit"
                );
                let r = sign(&mut w, "shutdown")
                    .map(Some)
                    .map_err(|e| AuditError(e.reason()));
                let _ = w
                    .conn()
                    .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
                let _ = reply.send(r);
                return;
            }
            _ => {}
        }
        let due = last_cp.0.elapsed() >= opts.checkpoint_interval;
        let grown = w.size().saturating_sub(last_cp.1);
        if (due && grown > 0) || grown >= opts.checkpoint_max_records {
            match sign(&mut w, "periodic") {
                Ok(s) => last_cp = (Instant::now(), s.size),
                Err(e) => {
                    error!(event = "audit_checkpoint_failed", error = %e.reason(), "checkpoint failed");
                    last_cp.0 = Instant::now();
                }
            }
        } else if due {
            last_cp.0 = Instant::now();
        }
        if let Some(keep) = opts.retention
            && last_prune.elapsed() >= Duration::from_secs(3600)
        {
            last_prune = Instant::now();
            let before = store::now_ms() - keep.as_millis() as i64;
            match prune::prune(&mut w, before, "retention") {
                Ok(p) if p.bodies_removed > 0 => {
                    info!(
                        event = "audit_pruned",
                        removed = p.bodies_removed,
                        before_ms = before,
                        "record bodies past retention removed"
                    )
                }
                Ok(_) => {}
                Err(e) => {
                    error!(event = "audit_prune_failed", error = %e.reason(), "retention prune failed")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(i: u32) -> AuditEvent {
        AuditEvent::new("test", serde_json::json!({ "i": i }))
    }

    #[tokio::test]
    async fn records_queued_together_share_a_transaction() {
        let d = store::tests::tempdir::Dir::new("group-commit");
        let audit = Audit::start(Options {
            db: d.path().join("audit.db"),
            signer: note::Signer::generate("test/interceptor").unwrap(),
            origin: "test/interceptor".into(),
            checkpoint_interval: Duration::from_secs(3600),
            checkpoint_max_records: 1_000_000,
            retention: None,
            max_batch: 1024,
            counters: None,
            pseudonym_key: None,
        })
        .unwrap();
        // One at a time: a transaction each.
        for i in 0..3 {
            assert_eq!(audit.append(ev(i)).await.unwrap(), u64::from(i));
        }
        assert_eq!(audit.stats(), (3, 3));
        // Queued together: the writer takes what is queued into one transaction (a burst can
        // be split if the writer wakes in the middle of it; not every time).
        for round in 0.. {
            let (records, txs) = audit.stats();
            let acks: Vec<Ack> = (0..16).map(|i| audit.submit(ev(i))).collect();
            let mut seqs = Vec::new();
            for a in acks {
                seqs.push(a.await.unwrap().unwrap());
            }
            assert_eq!(seqs, (records..records + 16).collect::<Vec<_>>());
            let (r, t) = audit.stats();
            assert_eq!(r, records + 16);
            if t - txs < 16 && audit.stats.last.load(Ordering::Relaxed) > 1 {
                break;
            }
            assert!(
                round < 20,
                "16 records queued at once never shared a transaction"
            );
        }
        audit.shutdown().await.unwrap();
    }
}
