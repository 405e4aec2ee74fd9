//! Fuzzes the streaming JSON redactor: arbitrary bytes never panic; chunking never changes the
//! result; when the input parses as JSON, the output parses too and no match of the test
//! redactor survives in any string value.
//!
//! Run: `cd fuzz && cargo +nightly fuzz run redact_json`.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;

// Mirrors `interceptor::redact` (the trait and `Finding`) at the crate root, the `super` of
// the included `json.rs`, so that it compiles here on its own, without the agent crate and its
// eBPF build. Keep in sync with `interceptor-user/src/redact/mod.rs`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    pub entity: String,
    pub pseudonym: String,
}

pub trait TextRedactor: Send + Sync {
    fn max_match_len(&self) -> usize;
    fn redact(&self, text: &str) -> (String, Vec<Finding>);
}

#[allow(dead_code)]
#[path = "../../interceptor-user/src/redact/json.rs"]
mod json;

use json::{JsonLimits, JsonRedactor};

/// Masks every maximal run of email-ish characters that holds an `@` and is at most `max`
/// bytes long (the same as the unit tests' redactor).
struct TestRedactor {
    max: usize,
}

fn email_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._%+-@".contains(c)
}

impl TextRedactor for TestRedactor {
    fn max_match_len(&self) -> usize {
        self.max
    }
    fn redact(&self, text: &str) -> (String, Vec<Finding>) {
        let mut out = String::with_capacity(text.len());
        let mut findings = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let start = rest.find(email_char).unwrap_or(rest.len());
            out.push_str(&rest[..start]);
            rest = &rest[start..];
            let end = rest.find(|c| !email_char(c)).unwrap_or(rest.len());
            let token = &rest[..end];
            if token.contains('@') && token.len() <= self.max {
                out.push_str("[EMAIL]");
                findings.push(Finding {
                    entity: "EMAIL".into(),
                    pseudonym: String::new(),
                });
            } else {
                out.push_str(token);
            }
            rest = &rest[end..];
        }
        (out, findings)
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

fn assert_clean(v: &Value, r: &dyn TextRedactor, keys: bool) {
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) => assert!(r.redact(s).1.is_empty(), "match survived in {s:?}"),
            Value::Array(a) => stack.extend(a.iter()),
            Value::Object(m) => {
                for (k, x) in m {
                    if keys {
                        assert!(r.redact(k).1.is_empty(), "match survived in key {k:?}");
                    }
                    stack.push(x);
                }
            }
            _ => {}
        }
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
    let max = if small { 8 } else { 64 };
    let r: Arc<dyn TextRedactor> = Arc::new(TestRedactor { max });
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
    if serde_json::from_slice::<Value>(data).is_ok() {
        let out = whole.expect("valid JSON must be accepted");
        let parsed: Value = serde_json::from_slice(&out).expect("output must be JSON");
        assert_clean(&parsed, r.as_ref(), keys);
    }
});
