//! Accuracy of the engine on the labelled corpus (`tests/redaction/corpus.jsonl`), measured the
//! two ways text reaches it:
//!
//! * **text path**: the whole document scanned as one text ([`Engine::scan`]), as for a tool
//!   result's text content, or JSON embedded in a string;
//! * **JSON path**: the document through the streaming JSON rewriter ([`redact_json`]), which
//!   hands the engine each string value with its key as label
//!   ([`TextRedactor::redact_labelled`]); each value's findings are mapped back to the raw
//!   document to be scored against the same gold spans.
//!
//! `accuracy` asserts recall >= 0.99 and precision >= 0.97 for the documents as the agent
//! sees them (prose and CSV as text, JSON and JSON lines through the rewriter; per entity
//! type: recall >= 0.995, precision >= 0.97), for the text
//! path of JSON documents too, and, on the `json_keys` documents (values only their key
//! labels), that the rewriter reaches them while the same values without their keys would be
//! mostly missed: it fails if keys stop being passed as labels.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use super::corpus::{self, Doc};
use super::*;
use crate::redact::json::{JsonLimits, key_label, redact_json};

fn engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| Engine::builtin(PseudonymKey::new([7u8; 32])))
}

fn corpus_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/redaction/corpus.jsonl")
}

#[test]
fn corpus_is_current() {
    let generated = corpus::to_jsonl(&corpus::generate());
    if std::env::var_os("REDACTION_CORPUS_WRITE").is_some() {
        std::fs::write(corpus_path(), &generated).expect("write corpus");
    }
    let committed = std::fs::read_to_string(corpus_path())
        .expect("tests/redaction/corpus.jsonl (REDACTION_CORPUS_WRITE=1 to generate)");
    assert!(
        committed == generated,
        "corpus.jsonl differs from the generator: regenerate with REDACTION_CORPUS_WRITE=1"
    );
}

/// A detection: entity type and byte range in the document.
type Pred = (String, usize, usize);

#[derive(Default, Clone, Copy)]
struct Tally {
    gold: u32,
    tp: u32,
    fp: u32,
}

#[derive(Default)]
struct Score {
    per: BTreeMap<String, Tally>,
    /// Hard negatives per kind: (count, masked).
    negatives: BTreeMap<String, (u32, u32)>,
    by_format: BTreeMap<String, Tally>,
    examples: Vec<String>,
}

impl Score {
    fn add(&mut self, d: &Doc, preds: &[Pred]) {
        let mut used = vec![false; preds.len()];
        let mut f = self.by_format.get(&d.format).copied().unwrap_or_default();
        for g in &d.pii {
            let t = self.per.entry(g.label.clone()).or_default();
            t.gold += 1;
            f.gold += 1;
            let hit = preds
                .iter()
                .enumerate()
                .find(|(i, p)| !used[*i] && p.0 == g.label && p.1 <= g.start && p.2 >= g.end);
            if let Some((i, _)) = hit {
                used[i] = true;
                t.tp += 1;
                f.tp += 1;
            } else if self.examples.len() < 40 {
                let got: Vec<_> = preds
                    .iter()
                    .filter(|p| p.2 > g.start && p.1 < g.end)
                    .map(|p| (p.0.clone(), &d.text[p.1..p.2]))
                    .collect();
                self.examples.push(format!(
                    "FN {} {} {:?} got {:?} ctx {:?}",
                    d.id,
                    g.label,
                    &d.text[g.start..g.end],
                    got,
                    ctx(&d.text, g.start, g.end)
                ));
            }
        }
        for (i, p) in preds.iter().enumerate() {
            if used[i] {
                continue;
            }
            self.per.entry(p.0.clone()).or_default().fp += 1;
            f.fp += 1;
            if self.examples.len() < 40 {
                self.examples.push(format!(
                    "FP {} {} {:?} ctx {:?}",
                    d.id,
                    p.0,
                    &d.text[p.1..p.2],
                    ctx(&d.text, p.1, p.2)
                ));
            }
        }
        self.by_format.insert(d.format.clone(), f);
        for n in &d.negatives {
            let h = self.negatives.entry(n.label.clone()).or_default();
            h.0 += 1;
            if preds.iter().any(|p| p.2 > n.start && p.1 < n.end) {
                h.1 += 1;
            }
        }
    }

    fn total(&self) -> Tally {
        let mut t = Tally::default();
        for x in self.per.values() {
            t.gold += x.gold;
            t.tp += x.tp;
            t.fp += x.fp;
        }
        t
    }

    /// Prints the tables; returns (precision, recall).
    fn report(&self, title: &str) -> (f64, f64) {
        println!("\n== {title}");
        println!(
            "{:<20} {:>6} {:>6} {:>5} {:>5} {:>9} {:>7}",
            "entity", "gold", "found", "FN", "FP", "precision", "recall"
        );
        for (name, t) in &self.per {
            let (p, r) = pr(*t);
            println!(
                "{name:<20} {:>6} {:>6} {:>5} {:>5} {p:>9.4} {r:>7.4}",
                t.gold,
                t.tp,
                t.gold - t.tp,
                t.fp
            );
        }
        let t = self.total();
        let (p, r) = pr(t);
        println!(
            "{:<20} {:>6} {:>6} {:>5} {:>5} {p:>9.4} {r:>7.4}",
            "OVERALL",
            t.gold,
            t.tp,
            t.gold - t.tp,
            t.fp
        );
        println!("by format (gold, found, FP):");
        for (k, v) in &self.by_format {
            println!("  {k:<10} {:>5} {:>5} {:>4}", v.gold, v.tp, v.fp);
        }
        println!("hard negatives (count, masked):");
        for (k, v) in &self.negatives {
            println!("  {k:<18} {:>5} {:>4}", v.0, v.1);
        }
        for x in &self.examples {
            println!("{x}");
        }
        (p, r)
    }
}

fn pr(t: Tally) -> (f64, f64) {
    let p = if t.tp + t.fp == 0 {
        1.0
    } else {
        f64::from(t.tp) / f64::from(t.tp + t.fp)
    };
    let r = if t.gold == 0 {
        1.0
    } else {
        f64::from(t.tp) / f64::from(t.gold)
    };
    (p, r)
}

fn ctx(t: &str, s: usize, e: usize) -> String {
    let mut a = s.saturating_sub(30);
    while !t.is_char_boundary(a) {
        a -= 1;
    }
    let mut b = (e + 30).min(t.len());
    while !t.is_char_boundary(b) {
        b += 1;
    }
    t[a..b].to_string()
}

fn text_path(d: &Doc) -> Vec<Pred> {
    engine()
        .scan(&d.text)
        .into_iter()
        .map(|m| (m.entity.to_string(), m.start, m.end))
        .collect()
}

/// One call of the rewriter: the label it passed, the text, and what the engine detects in it.
type Call = (Option<String>, String, Vec<Match>);

/// The engine behind the JSON rewriter, recording each call (with or without the labels).
struct Recorder {
    engine: Engine,
    labels: bool,
    calls: Mutex<Vec<Call>>,
}

impl TextRedactor for Recorder {
    fn max_match_len(&self) -> usize {
        self.engine.max_match_len()
    }
    fn redact(&self, text: &str) -> (String, Vec<Finding>) {
        let (out, f) = self.redact_labelled(None, text);
        (out.into_owned(), f)
    }
    fn redact_labelled<'t>(
        &self,
        label: Option<&str>,
        text: &'t str,
    ) -> (Cow<'t, str>, Vec<Finding>) {
        let label = label.filter(|_| self.labels);
        let found = self.engine.scan_field(label.unwrap_or(""), text);
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).push((
            label.map(str::to_string),
            text.to_string(),
            found,
        ));
        self.engine.redact_labelled(label, text)
    }
}

/// A string value of a JSON document: its label (the key of its member; in arrays, of the
/// member holding the array), the offset of its content, its decoded text, and for each
/// decoded byte offset (and the end) the raw offset from the content start.
struct JsonString {
    label: Option<String>,
    at: usize,
    text: String,
    map: Vec<usize>,
}

/// The string values of a (valid) JSON document, in order, found independently of the
/// rewriter.
fn json_strings(doc: &str) -> Vec<JsonString> {
    enum Frame {
        Object(Option<String>),
        Array,
    }
    let b = doc.as_bytes();
    let mut out = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'{' => stack.push(Frame::Object(None)),
            b'[' => stack.push(Frame::Array),
            b'}' | b']' => {
                stack.pop();
            }
            b'"' => {
                let at = i + 1;
                let (text, map, end) = decode_string(doc, at);
                i = end + 1;
                let mut j = i;
                while j < b.len() && b[j].is_ascii_whitespace() {
                    j += 1;
                }
                if b.get(j) == Some(&b':') {
                    if let Some(Frame::Object(k)) = stack.last_mut() {
                        *k = Some(text);
                    }
                } else {
                    let label = stack.iter().rev().find_map(|f| match f {
                        Frame::Object(k) => Some(k.clone()),
                        Frame::Array => None,
                    });
                    let label = label
                        .flatten()
                        .and_then(|k| key_label(&k).map(str::to_string));
                    out.push(JsonString {
                        label,
                        at,
                        text,
                        map,
                    });
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// Decodes the string whose content starts at `at`; returns the text, the offset map and
/// the index of the closing quote.
fn decode_string(doc: &str, at: usize) -> (String, Vec<usize>, usize) {
    let b = doc.as_bytes();
    let mut text = String::new();
    let mut map = Vec::new();
    let mut i = at;
    let hex = |i: usize| u32::from_str_radix(&doc[i..i + 4], 16).expect("hex escape");
    while b[i] != b'"' {
        let (c, len) = if b[i] == b'\\' {
            match b[i + 1] {
                b'u' => {
                    let u = hex(i + 2);
                    if (0xD800..0xDC00).contains(&u) {
                        let lo = hex(i + 8);
                        let cp = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
                        (char::from_u32(cp).expect("pair"), 12)
                    } else {
                        (char::from_u32(u).expect("char"), 6)
                    }
                }
                e => {
                    let c = match e {
                        b'n' => '\n',
                        b't' => '\t',
                        b'r' => '\r',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        other => char::from(other),
                    };
                    (c, 2)
                }
            }
        } else {
            let c = doc[i..].chars().next().expect("char");
            (c, c.len_utf8())
        };
        for _ in 0..c.len_utf8() {
            map.push(i - at);
        }
        text.push(c);
        i += len;
    }
    map.push(i - at);
    (text, map, i)
}

/// Each line of the document that holds JSON goes through the rewriter; what the engine found
/// in each value is mapped back to the document.
fn json_path(d: &Doc, labels: bool) -> Vec<Pred> {
    let rec = Arc::new(Recorder {
        engine: engine().clone(),
        labels,
        calls: Mutex::default(),
    });
    let mut preds = Vec::new();
    let mut base = 0;
    for line in d.text.split_inclusive('\n') {
        let doc = line.trim_end_matches('\n');
        if !doc.trim().is_empty() {
            rec.calls.lock().expect("lock").clear();
            let r: Arc<dyn TextRedactor> = rec.clone();
            redact_json(r, JsonLimits::default(), doc.as_bytes())
                .unwrap_or_else(|e| panic!("{}: {e}", d.id));
            let strings = json_strings(doc);
            let calls = rec.calls.lock().expect("lock");
            assert_eq!(calls.len(), strings.len(), "{}: one call per value", d.id);
            for ((label, text, found), s) in calls.iter().zip(&strings) {
                assert_eq!(*text, s.text, "{}", d.id);
                if labels {
                    assert_eq!(*label, s.label, "{}: label of {:?}", d.id, s.text);
                }
                for m in found {
                    preds.push((
                        m.entity.to_string(),
                        base + s.at + s.map[m.start],
                        base + s.at + s.map[m.end],
                    ));
                }
            }
        }
        base += line.len();
    }
    preds
}

fn is_json(d: &Doc) -> bool {
    matches!(d.format.as_str(), "json" | "jsonl" | "json_keys")
}

#[test]
fn accuracy() {
    let text = std::fs::read_to_string(corpus_path()).expect("corpus");
    let docs: Vec<Doc> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("doc"))
        .collect();
    // As the agent sees them: prose and CSV as text, JSON through the rewriter.
    let mut agent = Score::default();
    // The text path on every document (JSON in a string is text).
    let mut text_all = Score::default();
    let mut text_json = Score::default();
    let mut keys_with = Score::default();
    let mut keys_without = Score::default();
    for d in &docs {
        let t = text_path(d);
        text_all.add(d, &t);
        if is_json(d) {
            let j = json_path(d, true);
            agent.add(d, &j);
            if d.format == "json_keys" {
                keys_with.add(d, &j);
                keys_without.add(d, &json_path(d, false));
            } else {
                text_json.add(d, &t);
            }
        } else {
            agent.add(d, &t);
        }
    }
    let (precision, recall) =
        agent.report("documents as the agent sees them (prose, CSV: text; JSON: rewriter)");
    let (tp, tr) = text_all.report("text path, every document (for the record)");
    let (jp, jr) = text_json.report("text path, JSON and JSON lines documents");
    let (kp, kr) = keys_with.report("json_keys documents through the rewriter, keys as labels");
    let (_, kr0) = keys_without.report("json_keys documents through the rewriter, keys ignored");
    println!("\ndocs: {}", docs.len());
    println!("text path over all documents (incl. json_keys): precision {tp:.4}, recall {tr:.4}");
    // Not asserted, for the record: checksum-only identifiers without any label are not
    // reported by design (a random number passes a mod-11 or mod-10 check 1 time in 10).
    let e = engine();
    let mut r = corpus::Rng::new(7);
    let mut bare = Vec::new();
    for entity in [
        "NL_BSN",
        "PL_PESEL",
        "DE_TAX_ID",
        "PASSPORT",
        "DOB",
        "BIC",
        "US_SSN",
    ] {
        let lang = match entity {
            "NL_BSN" => "nl",
            "PL_PESEL" => "pl",
            "DE_TAX_ID" => "de",
            _ => "en",
        };
        let found = (0..50)
            .filter(|_| {
                !e.scan(&format!("x {} y", corpus::value(&mut r, entity, lang).1))
                    .is_empty()
            })
            .count();
        bare.push(format!("{entity} {found}/50"));
    }
    println!(
        "unlabelled values detected (by design mostly not): {}",
        bare.join(", ")
    );
    assert!(recall >= 0.99, "recall {recall:.4} < 0.99");
    assert!(precision >= 0.97, "precision {precision:.4} < 0.97");
    // Per entity type too: an overall figure hides a type gone blind in one place (IPv4
    // addresses in URLs with a port, 9 of 907, left overall recall at 0.9988).
    for (entity, t) in &agent.per {
        let (p, r) = pr(*t);
        assert!(r >= 0.995, "{entity}: recall {r:.4} < 0.995");
        assert!(p >= 0.97, "{entity}: precision {p:.4} < 0.97");
    }
    assert!(jr >= 0.99, "text path on JSON: recall {jr:.4} < 0.99");
    assert!(jp >= 0.97, "text path on JSON: precision {jp:.4} < 0.97");
    assert!(kr >= 0.99, "json_keys with keys: recall {kr:.4} < 0.99");
    assert!(kp >= 0.97, "json_keys with keys: precision {kp:.4} < 0.97");
    // The json_keys documents measure the labels: without them most values are missed.
    assert!(
        kr0 < 0.8,
        "json_keys without keys: recall {kr0:.4}, the documents no longer depend on keys"
    );
}
