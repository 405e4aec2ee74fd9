//! Fuzzes the streaming JSON redactor: arbitrary bytes never panic; chunking never changes the
//! result; when the input parses as JSON, the output parses too, equals redacting the parsed
//! document value by value (`redact_value`, same labels; with keys or numbers redacted, which
//! `redact_value` does not do, or with a document carried in a string, only the next check),
//! and no match of the test redactor
//! survives in any string value under its key (nor in a key, nor a number, when those are
//! redacted: `[services.redact] keys`, `numbers`).
//!
//! Run: `cd fuzz && cargo +nightly fuzz run redact_json`.
#![no_main]

use std::borrow::Cow;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;

// The agent's `redact/redactor.rs` and `redact/json.rs`, compiled here at the crate root (the
// `super` of both), without the agent crate and its eBPF build.
#[path = "../../interceptor-user/src/redact/redactor.rs"]
mod redactor;

pub use redactor::{Finding, Head, Pseudonym, Sieve, TextRedactor};

#[allow(dead_code)]
#[path = "../../interceptor-user/src/redact/json.rs"]
mod json;

use json::{JsonLimits, JsonRedactor, key_label, redact_value};

/// The test redactor's sieve; checks that pieces are asked about in order.
struct PlainSieve {
    asked: usize,
}

impl Sieve for PlainSieve {
    fn clean(&mut self, text: &str, start: usize, end: usize) -> bool {
        assert!(start >= self.asked && start <= end, "asked out of order");
        self.asked = end;
        !text.as_bytes()[start..end]
            .iter()
            .any(|&b| b == b'@' || b.is_ascii_digit())
    }
}

/// Masks every maximal run of email-ish characters that holds an `@` and is at most `max`
/// bytes long, and under a label containing `pin` a run of 3 or more digits starting within
/// the first 6 bytes (the same as the unit tests' redactor). Numbers are redacted when
/// `numbers` is set (a PIN held as a JSON number).
struct TestRedactor {
    max: usize,
    numbers: bool,
}

fn email_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._%+-@".contains(c)
}

impl TextRedactor for TestRedactor {
    fn max_match_len(&self) -> usize {
        self.max
    }
    fn masks_numbers(&self) -> bool {
        self.numbers
    }
    fn redact(&self, text: &str) -> (String, Vec<Finding>) {
        let (out, f) = self.redact_labelled(None, text);
        (out.into_owned(), f)
    }
    /// Pieces without `@` or digits hold nothing to mask, whatever the label.
    fn sieve(&self, text: &str) -> Option<Box<dyn Sieve>> {
        // Not for short texts, as a real sieve (both ways are then taken).
        (text.len() >= 32).then(|| Box::new(PlainSieve { asked: 0 }) as Box<dyn Sieve>)
    }
    fn redact_labelled<'t>(
        &self,
        label: Option<&str>,
        text: &'t str,
    ) -> (Cow<'t, str>, Vec<Finding>) {
        let pin = label.is_some_and(|l| l.to_lowercase().contains("pin"));
        let mut out = String::with_capacity(text.len());
        let mut findings = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let start = rest.find(email_char).unwrap_or(rest.len());
            out.push_str(&rest[..start]);
            rest = &rest[start..];
            let end = rest.find(|c| !email_char(c)).unwrap_or(rest.len());
            let token = &rest[..end];
            let at = text.len() - rest.len();
            if token.contains('@') && token.len() <= self.max {
                out.push_str("[EMAIL]");
                findings.push(Finding {
                    entity: "EMAIL".into(),
                    pseudonym: Pseudonym::from_tag([0; 4]),
                });
            } else if pin
                && at < 6
                && (3..=self.max).contains(&token.len())
                && token.bytes().all(|b| b.is_ascii_digit())
            {
                out.push_str("[PIN]");
                findings.push(Finding {
                    entity: "PIN".into(),
                    pseudonym: Pseudonym::from_tag([0; 4]),
                });
            } else {
                out.push_str(token);
            }
            rest = &rest[end..];
        }
        if out == text {
            (Cow::Borrowed(text), findings)
        } else {
            (Cow::Owned(out), findings)
        }
    }
}

fn run(
    r: &Arc<dyn TextRedactor>,
    limits: JsonLimits,
    keys: bool,
    data: &[u8],
    chunk: usize,
) -> Option<Vec<u8>> {
    let mut j = JsonRedactor::new(r.clone(), limits).with_key_redaction(keys);
    let mut out = Vec::new();
    for c in data.chunks(chunk.max(1)) {
        let before = out.len();
        if j.push(c, &mut out).is_err() {
            assert_eq!(out.len(), before, "a failed push must not append");
            return None;
        }
    }
    j.finish(&mut out).ok().map(|_| out)
}

fn assert_clean(v: &Value, r: &dyn TextRedactor, keys: bool, numbers: bool) {
    let mut stack: Vec<(&Value, Option<&str>)> = vec![(v, None)];
    while let Some((v, label)) = stack.pop() {
        match v {
            Value::String(s) => assert!(
                r.redact_labelled(label, s).1.is_empty(),
                "match survived in {s:?} under {label:?}"
            ),
            // A number as serde_json writes it back: an integer as it came; any other
            // number with a `.` or an exponent, which no digit run of the test redactor holds.
            Value::Number(n) if numbers => assert!(
                r.redact_labelled(label, &n.to_string()).1.is_empty(),
                "match survived in number {n} under {label:?}"
            ),
            Value::Array(a) => stack.extend(a.iter().map(|x| (x, label))),
            Value::Object(m) => {
                for (k, x) in m {
                    if keys {
                        assert!(r.redact(k).1.is_empty(), "match survived in key {k:?}");
                    }
                    stack.push((x, key_label(k)));
                }
            }
            _ => {}
        }
    }
}

/// Whether a string of `v` holds JSON documents that the rewriter reads as such.
fn holds_document(v: &Value) -> bool {
    match v {
        Value::String(s) => json::embedded_documents(s, 0).is_some(),
        Value::Array(a) => a.iter().any(holds_document),
        Value::Object(m) => m.values().any(holds_document),
        _ => false,
    }
}

fuzz_target!(|input: &[u8]| {
    // First byte: chunk size and options; the rest is the document.
    let Some((&ctl, data)) = input.split_first() else {
        return;
    };
    let chunk = usize::from(ctl & 0x1f) + 1;
    let keys = ctl & 0x20 != 0;
    let small = ctl & 0x40 != 0;
    let numbers = ctl & 0x80 != 0;
    let max = if small { 8 } else { 64 };
    let r: Arc<dyn TextRedactor> = Arc::new(TestRedactor { max, numbers });
    // Small windows exercise the segmenting of long strings on short inputs.
    let limits = if small {
        JsonLimits {
            window: 16,
            max_window: 1 << 20,
            context: 2,
            ..JsonLimits::default()
        }
    } else {
        JsonLimits::default()
    };
    let whole = run(&r, limits, keys, data, data.len());
    let chunked = run(&r, limits, keys, data, chunk);
    assert_eq!(whole, chunked, "chunking changed the result");
    if let Ok(mut reference) = serde_json::from_slice::<Value>(data) {
        let out = whole.expect("valid JSON must be accepted");
        let parsed: Value = serde_json::from_slice(&out).expect("output must be JSON");
        assert_clean(&parsed, r.as_ref(), keys, numbers);
        // A document carried in a string is written back as it came by the rewriter and
        // compact by `redact_value`, and the text pass after it may read the two apart (the
        // test redactor's PIN rule counts bytes from the start): compared by the crate's
        // property tests, modulo whitespace, with labels where that cannot happen.
        if !keys && !numbers && !holds_document(&reference) {
            redact_value(&mut reference, r.as_ref());
            assert_eq!(parsed, reference, "differs from value-by-value redaction");
        }
    }
});
