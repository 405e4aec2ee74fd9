//! Throughput of the redaction engine (`cargo bench -p interceptor-user --bench redact`).
//!
//! Workloads (generated deterministically here):
//! - `sparse_json`: ~4 MB of typical tool results (issue-tracker JSON: ids, timestamps,
//!   hashes, URLs, version strings, prose), one personal value every ~10 KB;
//! - `dense_text`: ~1 MB of prose with a personal value every ~60-80 bytes, all entity types;
//! - `base64_json`: ~2 MB of MCP tool results with base64 images (200 B to 32 KiB each), where
//!   the automaton never returns to its start state inside a string;
//! - `numeric_csv`: ~1 MB of a CSV export in a tool result's text (order ids, SKUs,
//!   quantities, amounts, timestamps; an e-mail every 50 rows), where most numbers are
//!   candidates of some number pattern that the validators then reject;
//! - `records_json`: ~1 MB of customer records as `structuredContent` (name, e-mail, phone,
//!   IBAN, date of birth, city, a note): a bulk export, personal data in most string values;
//! - `records_text`: ~512 KB of the same records serialised into the text of a tool result (as
//!   SDK servers send a returned record): the agent reads the string as the document it holds,
//!   then as text; the engine and the naive baseline see the text.
//!
//! For each, four ways:
//! - `engine`: the engine over the whole text (`Engine::redact_cow`: one lazy-DFA pass, in
//!   interleaved runs over long texts, + validators + masking);
//! - `one run`: the same engine with the automaton in one run (`Engine::with_lanes(false)`);
//! - `agent`: what the agent does with a response body: the streaming JSON rewriter in 16 KiB
//!   chunks, each string value redacted through `TextRedactor::redact_labelled` with its key
//!   (the dense text travels as the text of an MCP tool result), by a `ViewRedactor` as for a
//!   caller whose grant has its own masking (the agent gives the engine itself to callers with
//!   the service's masking: the same work since both cut long strings in one pass);
//! - `naive`: the baseline, one `regex::Regex` per pattern, one pass each over the text, the
//!   same validators and context checks, overlaps resolved, same masking.
//!
//! criterion measures each (wall clock, MB/s); then a plain loop measures each again and
//! prints MB/s of the best run by wall clock and per second of CPU time of the measuring thread
//! (summed over all runs)
//! (`/proc/thread-self/schedstat`: on a machine shared with other work, the wall clock
//! includes the time the thread waited for a core), the ratios to the naive baseline, and how
//! much CPU other processes took meanwhile. Also printed: the build time of the engine, and
//! what a dense (ahead-of-time) DFA of the same patterns would cost to build.
//!
//! `REDACT_BENCH_PROFILE=sparse|dense|base64|csv|records|records_text[_agent] [REDACT_BENCH_ITERS=n]
//! [REDACT_BENCH_SCAN_ONLY=1]` runs one workload alone (for `perf record` or `valgrind --tool=callgrind`); `REDACT_BENCH_SUMMARY=1`
//! skips criterion and prints the summary only.

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::thread_cpu_ns;
use criterion::{Criterion, Throughput};
use interceptor::redact::TextRedactor;
use interceptor::redact::engine::{Engine, MaskView, Match, PseudonymKey, Redacted};
use interceptor::redact::json::{JsonLimits, JsonRedactor};
use interceptor::redact::view::ViewRedactor;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
    fn digits(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from(b'0' + self.below(10) as u8))
            .collect()
    }
    fn hex(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from(b"0123456789abcdef"[self.below(16)]))
            .collect()
    }
}

fn luhn_card(r: &mut Rng) -> String {
    let mut d: Vec<u32> = vec![4];
    while d.len() < 15 {
        d.push(r.below(10) as u32);
    }
    for c in 0..10 {
        let mut v = d.clone();
        v.push(c);
        let sum: u32 = v
            .iter()
            .rev()
            .enumerate()
            .map(|(i, &x)| {
                if i % 2 == 1 {
                    let y = x * 2;
                    if y > 9 { y - 9 } else { y }
                } else {
                    x
                }
            })
            .sum();
        if sum.is_multiple_of(10) {
            let s: String = v
                .iter()
                .map(|x| char::from_digit(*x, 10).unwrap_or('0'))
                .collect();
            return format!("{} {} {} {}", &s[0..4], &s[4..8], &s[8..12], &s[12..16]);
        }
    }
    unreachable!()
}

const WORDS: &[&str] = &[
    "the",
    "request",
    "fails",
    "when",
    "config",
    "is",
    "missing",
    "and",
    "server",
    "returns",
    "error",
    "timeout",
    "after",
    "retry",
    "build",
    "passes",
    "on",
    "linux",
    "but",
    "not",
    "macos",
    "see",
    "logs",
    "below",
    "stack",
    "trace",
    "points",
    "to",
    "parser",
    "version",
    "upgrade",
    "fixed",
    "it",
    "for",
    "us",
    "thanks",
    "please",
    "review",
    "this",
    "change",
    "cache",
    "invalidation",
];

fn prose(r: &mut Rng, n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(r.pick(WORDS));
        match r.below(40) {
            0 => s.push_str(&format!(" v{}.{}.{}", r.below(5), r.below(20), r.below(30))),
            1 => s.push_str(&format!(" `src/{}/mod.rs:{}`", r.pick(WORDS), r.below(900))),
            2 => s.push_str(&format!(" ({} ms)", r.below(5000))),
            3 => s.push('.'),
            _ => {}
        }
    }
    s
}

fn sparse_json(target: usize) -> String {
    let mut r = Rng(0x5eed_1234_abcd_0001);
    let mut s = String::from("{\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"items\":[");
    let mut n = 0;
    while s.len() < target {
        if n > 0 {
            s.push(',');
        }
        let id = 1_000_000 + r.below(9_000_000);
        let words = 60 + r.below(80);
        let mut body = prose(&mut r, words);
        if n % 20 == 7 {
            body.push_str(&format!(
                " contact jane.doe{}@example.com for details",
                r.below(100)
            ));
        }
        if n % 20 == 13 {
            body.push_str(&format!(" or call +49 30 {}", r.digits(7)));
        }
        s.push_str(&format!(
            "{{\"id\":{id},\"node_id\":\"I_kwDO{}\",\"number\":{},\"title\":\"{}\",\"state\":\"{}\",\
             \"user\":{{\"login\":\"{}{}\",\"id\":{},\"type\":\"User\",\"site_admin\":false}},\
             \"labels\":[{{\"name\":\"{}\",\"color\":\"{}\"}}],\"created_at\":\"2024-{:02}-{:02}T{:02}:{:02}:{:02}Z\",\
             \"updated_at\":\"2025-{:02}-{:02}T{:02}:{:02}:{:02}Z\",\"sha\":\"{}\",\
             \"url\":\"https://api.github.com/repos/acme/widget/issues/{}\",\"comments\":{},\"body\":\"{}\",\
             \"reactions\":{{\"+1\":{},\"total_count\":{}}}}}",
            r.hex(8),
            n,
            prose(&mut r, 6),
            if n % 3 == 0 { "closed" } else { "open" },
            r.pick(WORDS),
            r.below(1000),
            r.below(90_000_000),
            r.pick(&["bug", "enhancement", "question", "good first issue"]),
            r.hex(6),
            1 + r.below(12),
            1 + r.below(28),
            r.below(24),
            r.below(60),
            r.below(60),
            1 + r.below(12),
            1 + r.below(28),
            r.below(24),
            r.below(60),
            r.below(60),
            r.hex(40),
            n,
            r.below(30),
            body,
            r.below(10),
            r.below(20),
        ));
        n += 1;
    }
    s.push_str("]}}");
    s
}

/// MCP tool results carrying images: base64 `data` strings from 200 bytes to 32 KiB (the
/// automaton never returns to its start state inside them), with a short text part, one
/// e-mail address every ~10 results.
fn blob_json(target: usize) -> String {
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut r = Rng(0xb10b_0000_0000_0007);
    let mut items = Vec::new();
    let mut len = 0;
    let mut n = 0;
    while len < target {
        let size = 200 << r.below(8);
        let data: String = (0..size).map(|_| char::from(B64[r.below(64)])).collect();
        let mut text = prose(&mut r, 20);
        if n % 10 == 3 {
            text.push_str(&format!(" sent by mark.rossi{}@example.org", r.below(100)));
        }
        len += data.len() + text.len() + 80;
        items.push(serde_json::json!({"type": "image", "mimeType": "image/png", "data": data}));
        items.push(serde_json::json!({"type": "text", "text": text}));
        n += 1;
    }
    serde_json::json!({"jsonrpc": "2.0", "id": 9, "result": {"content": items}}).to_string()
}

fn records_json(target: usize) -> String {
    let mut r = Rng(0x2ec0_2d50_0000_0013);
    let mut items = Vec::new();
    let mut len = 0;
    let mut n = 0u64;
    while len < target {
        let (first, last) = (r.pick(WORDS), r.pick(WORDS));
        let item = serde_json::json!({
            "id": 100_000 + n,
            "name": format!("{first} {last}"),
            "email": format!("{first}.{last}{}@example.com", r.below(100)),
            "phone": format!("+49 30 {}", r.digits(7)),
            "iban": "DE89 3704 0044 0532 0130 00",
            "date_of_birth": format!("19{}-{:02}-{:02}", 40 + r.below(60), 1 + r.below(12), 1 + r.below(28)),
            "city": r.pick(&["Berlin", "Lyon", "Milano", "Utrecht", "Krakow"]),
            "active": !n.is_multiple_of(3),
            "note": prose(&mut r, 8),
        });
        len += item.to_string().len() + 1;
        items.push(item);
        n += 1;
    }
    serde_json::json!({"jsonrpc": "2.0", "id": 11, "result": {
        "content": [{"type": "text", "text": "exported"}],
        "structuredContent": {"customers": items},
    }})
    .to_string()
}

fn numeric_csv(target: usize) -> String {
    let mut r = Rng(0x0c5f_0000_0000_0011);
    let mut s = String::from("order_id,sku,qty,unit_price,total,created_at,status,contact\n");
    let mut n = 0;
    while s.len() < target {
        let qty = 1 + r.below(40);
        let price = 100 + r.below(99_900);
        s.push_str(&format!(
            "{}{},SKU-{}-{},{qty},{}.{:02},{}.{:02},2025-{:02}-{:02} {:02}:{:02}:{:02},{},{}\n",
            // Ids without a leading zero: a 10-digit number starting with 0 is also a
            // national phone number (FR, NL), which the engine masks without context.
            1 + r.below(9),
            r.digits(9),
            r.digits(4),
            r.below(100),
            price / 100,
            price % 100,
            qty * price / 100,
            qty * price % 100,
            1 + r.below(12),
            1 + r.below(28),
            r.below(24),
            r.below(60),
            r.below(60),
            r.pick(&["paid", "shipped", "refunded"]),
            if n % 50 == 7 {
                format!("{}@example.com", r.pick(WORDS))
            } else {
                String::new()
            }
        ));
        n += 1;
    }
    s
}

fn dense_text(target: usize) -> String {
    let mut r = Rng(0xdead_beef_0000_0042);
    let mut s = String::new();
    while s.len() < target {
        let v = match r.below(12) {
            0 => format!("Mail {}.{}@example.com,", r.pick(WORDS), r.pick(WORDS)),
            1 => format!("call +49 30 {} today,", r.digits(7)),
            2 => format!(
                "Tel. 06 {} {} {} {};",
                r.digits(2),
                r.digits(2),
                r.digits(2),
                r.digits(2)
            ),
            3 => format!("card {} on file,", luhn_card(&mut r)),
            4 => "IBAN DE89 3704 0044 0532 0130 00 for refunds,".to_string(),
            5 => format!(
                "login from 203.0.{}.{} at 10:{:02},",
                r.below(256),
                1 + r.below(254),
                r.below(60)
            ),
            6 => format!(
                "born on {:02}.{:02}.19{}",
                1 + r.below(28),
                1 + r.below(12),
                40 + r.below(60)
            ),
            7 => format!(
                "SSN: {}-{}-{},",
                100 + r.below(500),
                10 + r.below(89),
                1000 + r.below(8999)
            ),
            8 => format!("mac 00:1a:2b:{}:{}:{}", r.hex(2), r.hex(2), r.hex(2)),
            9 => format!("token ghp_{}{},", r.hex(20), r.hex(16)),
            10 => format!(
                "order #{} shipped v1.{}.{},",
                r.digits(8),
                r.below(9),
                r.below(9)
            ),
            _ => "DNI 12345678Z and NIE X1234567L,".to_string(),
        };
        s.push_str(&v);
        s.push(' ');
        let words = 3 + r.below(6);
        s.push_str(&prose(&mut r, words));
        s.push_str(". ");
    }
    s
}

/// One `regex::Regex` per pattern, one pass each, same validators, overlaps resolved.
struct Naive {
    regexes: Vec<regex::Regex>,
}

impl Naive {
    fn new(engine: &Engine) -> Naive {
        let regexes = engine
            .pattern_sources()
            .iter()
            .map(|p| {
                regex::RegexBuilder::new(p)
                    .size_limit(1 << 28)
                    .dfa_size_limit(1 << 26)
                    .build()
                    .expect("pattern compiles with regex")
            })
            .collect();
        Naive { regexes }
    }

    fn redact(&self, engine: &Engine, text: &str, view: &MaskView) -> Redacted {
        let mut found: Vec<Match> = Vec::new();
        for (i, re) in self.regexes.iter().enumerate() {
            for m in re.find_iter(text) {
                if let Some(v) = engine.check_candidate(text, i, m.start(), m.end()) {
                    found.push(v);
                }
            }
        }
        found.sort_by(|a, b| {
            a.start
                .cmp(&b.start)
                .then(b.confidence.total_cmp(&a.confidence))
        });
        let mut kept: Vec<Match> = Vec::with_capacity(found.len());
        for m in found {
            if kept.last().is_none_or(|k| m.start >= k.end) {
                kept.push(m);
            }
        }
        engine.redact_matches(text, &kept, view)
    }
}

/// (busy, total) jiffies of the whole machine (`/proc/stat`, first line).
fn machine_jiffies() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<u64> = s
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

struct Rate {
    wall: f64,
    cpu: f64,
}

/// MB/s over repetitions for >= 2 s: the best run by wall clock, and the mean per second of
/// this thread's CPU time over all runs (the kernel may count that time in scheduler ticks, 4 ms
/// on the benchmark VM: too coarse for one run of ~10 ms, which could then only read as
/// 350, 262 or 524 MB/s on the sparse workload; exact enough summed over >= 2 s).
fn mb_per_s(bytes: usize, f: &mut dyn FnMut()) -> Rate {
    f();
    let mut wall = f64::MAX;
    let mut cpu_ns: Option<u64> = Some(0);
    let start = Instant::now();
    let mut runs: u32 = 0;
    while start.elapsed() < Duration::from_secs(2) || runs < 3 {
        let c = thread_cpu_ns();
        let t = Instant::now();
        f();
        wall = wall.min(t.elapsed().as_secs_f64());
        cpu_ns = match (cpu_ns, c, thread_cpu_ns()) {
            (Some(sum), Some(a), Some(b)) => Some(sum + b.saturating_sub(a)),
            _ => None,
        };
        runs += 1;
    }
    let cpu = cpu_ns
        .filter(|&ns| ns > 0)
        .map_or(wall, |ns| ns as f64 / 1e9 / f64::from(runs));
    Rate {
        wall: bytes as f64 / wall / 1e6,
        cpu: bytes as f64 / cpu / 1e6,
    }
}

/// The dense text as an MCP tool result.
fn tool_result(text: &str) -> String {
    serde_json::json!({
        "jsonrpc": "2.0",
        "id": 7,
        "result": {"content": [{"type": "text", "text": text}], "isError": false}
    })
    .to_string()
}

/// The agent's path: the streaming JSON rewriter over 16 KiB chunks.
fn agent(r: &Arc<dyn TextRedactor>, doc: &[u8], out: &mut Vec<u8>) -> u64 {
    let mut j = JsonRedactor::new(r.clone(), JsonLimits::default());
    out.clear();
    for c in doc.chunks(16 << 10) {
        j.push(c, out).expect("valid JSON");
    }
    j.finish(out).expect("complete").total()
}

fn main() {
    let t = Instant::now();
    let engine = Engine::builtin(PseudonymKey::new([42; 32]));
    println!("engine built in {:?}: {engine:?}", t.elapsed());
    let view = engine.default_view().clone();
    // What the agent runs: the service's engine through a role's view.
    let shared: Arc<dyn TextRedactor> = Arc::new(ViewRedactor::new(engine.clone(), view.clone()));
    let sparse = sparse_json(4 << 20);
    let dense = dense_text(1 << 20);
    let dense_doc = tool_result(&dense);
    let blobs = blob_json(2 << 20);
    let csv = numeric_csv(1 << 20);
    let csv_doc = tool_result(&csv);
    let records = records_json(1 << 20);
    let records_small = records_json(1 << 19);
    let records_text = tool_result(&records_small);
    let workloads = [
        ("sparse_json", &sparse, &sparse),
        ("dense_text", &dense, &dense_doc),
        ("base64_json", &blobs, &blobs),
        ("numeric_csv", &csv, &csv_doc),
        ("records_json", &records, &records),
        ("records_text", &records_small, &records_text),
    ];
    if let Ok(which) = std::env::var("REDACT_BENCH_PROFILE") {
        // For `perf record` / callgrind: one workload alone, for ~5 s or n iterations.
        let iters: Option<u64> = std::env::var("REDACT_BENCH_ITERS")
            .ok()
            .and_then(|v| v.parse().ok());
        let text = match which.as_str() {
            "dense" => dense.as_str(),
            "dense_agent" => dense_doc.as_str(),
            "base64" | "base64_agent" => blobs.as_str(),
            "csv" => csv.as_str(),
            "csv_agent" => csv_doc.as_str(),
            "records" | "records_agent" => records.as_str(),
            "records_text" => records_small.as_str(),
            "records_text_agent" => records_text.as_str(),
            _ => sparse.as_str(),
        };
        let agent_path = which.ends_with("_agent");
        // REDACT_BENCH_ONE_RUN=1: without the interleaved runs over long texts.
        let engine = engine.with_lanes(std::env::var_os("REDACT_BENCH_ONE_RUN").is_none());
        let shared: Arc<dyn TextRedactor> = Arc::new(ViewRedactor::new(
            engine.clone(),
            engine.default_view().clone(),
        ));
        // REDACT_BENCH_SCAN_ONLY=1: the engine's scan alone (no masking, no closure rescan).
        let scan_only = std::env::var_os("REDACT_BENCH_SCAN_ONLY").is_some();
        let mut out = Vec::with_capacity(text.len() + (1 << 16));
        let start = Instant::now();
        let mut n = 0;
        while iters.map_or(start.elapsed() < Duration::from_secs(5), |i| n < i) {
            if agent_path {
                black_box(agent(&shared, black_box(text.as_bytes()), &mut out));
            } else if scan_only {
                black_box(engine.scan(black_box(text)));
            } else {
                black_box(engine.redact_cow(black_box(text), &view));
            }
            n += 1;
        }
        println!(
            "{which}: {n} runs, {:.1} MB/s",
            (n as usize * text.len()) as f64 / start.elapsed().as_secs_f64() / 1e6
        );
        return;
    }
    let naive = Naive::new(&engine);

    // Sanity: the baseline finds the same as the engine (before timing anything), and the
    // agent's path at least as much (keys are labels there).
    for (name, text, doc) in workloads {
        let a = engine.redact_with(text, &view);
        let b = naive.redact(&engine, text, &view);
        let mut out = Vec::new();
        let c = agent(&shared, doc.as_bytes(), &mut out);
        let total = |r: &Redacted| r.counts.values().sum::<u32>();
        println!(
            "{name}: {} bytes, engine masks {} values, naive {}, agent path {}",
            text.len(),
            total(&a),
            total(&b),
            c
        );
    }

    // REDACT_BENCH_SUMMARY=1: only the summary below (quicker).
    let criterion_too = std::env::var_os("REDACT_BENCH_SUMMARY").is_none();
    let mut c = Criterion::default()
        .sample_size(10)
        .measurement_time(Duration::from_secs(6))
        .warm_up_time(Duration::from_secs(1))
        .configure_from_args();
    if criterion_too {
        let mut g = c.benchmark_group("redact");
        let mut out = Vec::new();
        for (name, text, doc) in workloads {
            g.throughput(Throughput::Bytes(text.len() as u64));
            g.bench_function(format!("engine/{name}"), |b| {
                b.iter(|| engine.redact_cow(black_box(text), &view).1.findings.len())
            });
            g.bench_function(format!("engine_scan_only/{name}"), |b| {
                b.iter(|| engine.scan(black_box(text)).len())
            });
            g.throughput(Throughput::Bytes(doc.len() as u64));
            g.bench_function(format!("agent/{name}"), |b| {
                b.iter(|| agent(&shared, black_box(doc.as_bytes()), &mut out))
            });
            g.throughput(Throughput::Bytes(text.len() as u64));
            g.bench_function(format!("naive/{name}"), |b| {
                b.iter(|| naive.redact(&engine, black_box(text), &view).findings.len())
            });
        }
        g.finish();
        c.final_summary();
    }

    println!(
        "\nsummary: >= 2 s each, one thread; MB/s: best run by wall clock / mean per CPU second"
    );
    println!(
        "load average before: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    println!(
        "{:<12} {:>17} {:>17} {:>17} {:>17} {:>14}",
        "workload", "engine MB/s", "agent MB/s", "one run MB/s", "naive MB/s", "ratio (CPU)"
    );
    let one_run = engine.clone().with_lanes(false);
    let j0 = machine_jiffies();
    let c0 = thread_cpu_ns();
    let w0 = Instant::now();
    let mut out = Vec::new();
    for (name, text, doc) in workloads {
        let e = mb_per_s(text.len(), &mut || {
            black_box(engine.redact_cow(black_box(text), &view));
        });
        let a = mb_per_s(doc.len(), &mut || {
            black_box(agent(&shared, black_box(doc.as_bytes()), &mut out));
        });
        let p = mb_per_s(text.len(), &mut || {
            black_box(one_run.redact_cow(black_box(text), &view));
        });
        let n = mb_per_s(text.len(), &mut || {
            black_box(naive.redact(&engine, black_box(text), &view));
        });
        println!(
            "{name:<12} {:>8.1} / {:>6.1} {:>8.1} / {:>6.1} {:>8.1} / {:>6.1} {:>8.1} / {:>6.1} {:>6.1}x {:>5.1}x",
            e.wall,
            e.cpu,
            a.wall,
            a.cpu,
            p.wall,
            p.cpu,
            n.wall,
            n.cpu,
            e.cpu / n.cpu,
            a.cpu / n.cpu
        );
    }
    if let (Some((b0, t0)), Some((b1, t1)), Some(c0), Some(c1)) =
        (j0, machine_jiffies(), c0, thread_cpu_ns())
    {
        // Jiffies are 10 ms on this kernel's USER_HZ; ours are in ns.
        let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let busy = (b1 - b0) as f64 / (t1 - t0).max(1) as f64 * ncpu;
        let ours = (c1 - c0) as f64 / 1e9 / w0.elapsed().as_secs_f64();
        println!(
            "while measuring: machine busy {busy:.2} of {ncpu:.0} CPUs, this thread {ours:.2}: \
             other processes took {:.2} CPUs",
            (busy - ours).max(0.0)
        );
    }

    // What the ahead-of-time dense DFA of the same patterns would cost (why `hybrid`).
    let t = Instant::now();
    let dense_dfa = regex_automata::dfa::regex::Regex::builder()
        .syntax(regex_automata::util::syntax::Config::new().utf8(true))
        .dense(
            regex_automata::dfa::dense::Config::new()
                .determinize_size_limit(Some(256 << 20))
                .dfa_size_limit(Some(256 << 20)),
        )
        .build_many(engine.pattern_sources());
    match dense_dfa {
        Ok(re) => println!(
            "\ndense DFA of the same patterns: built in {:?}, forward {} bytes, reverse {} bytes",
            t.elapsed(),
            re.forward().memory_usage(),
            re.reverse().memory_usage()
        ),
        Err(e) => println!(
            "\ndense DFA of the same patterns: gave up after {:?}: {e}",
            t.elapsed()
        ),
    }
}
