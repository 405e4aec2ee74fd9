use super::*;
use crate::redact::Pseudonym;
use proptest::prelude::*;
use std::borrow::Cow;

/// Masks every maximal run of email-ish characters that holds an `@` and is at most `max`
/// bytes long (longer runs are not matches, so `max` really is the longest match). Under a
/// label that contains `pin`, also a run of 3 or more digits that starts within the first
/// [`PIN_REACH`] bytes (the label is context before the text, as for the engine).
struct TestRedactor {
    max: usize,
}

fn email_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._%+-@".contains(c)
}

fn pseudonym(s: &str) -> Pseudonym {
    let mut h: u32 = 0x811c9dc5;
    for b in s.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x01000193);
    }
    Pseudonym::from_tag(h.to_be_bytes())
}

const PIN_REACH: usize = 6;

impl TextRedactor for TestRedactor {
    fn max_match_len(&self) -> usize {
        self.max
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
                    pseudonym: pseudonym(token),
                });
            } else if pin
                && at < PIN_REACH
                && (3..=self.max).contains(&token.len())
                && token.bytes().all(|b| b.is_ascii_digit())
            {
                out.push_str("[PIN]");
                findings.push(Finding {
                    entity: "PIN".into(),
                    pseudonym: pseudonym(token),
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

/// Replaces the whole text if it holds an `@` anywhere: no cut point is ever consistent.
struct NonLocal;

impl TextRedactor for NonLocal {
    fn max_match_len(&self) -> usize {
        8
    }
    fn redact(&self, text: &str) -> (String, Vec<Finding>) {
        if text.contains('@') {
            ("X".into(), Vec::new())
        } else {
            (text.into(), Vec::new())
        }
    }
}

fn test_redactor() -> Arc<dyn TextRedactor> {
    Arc::new(TestRedactor { max: 64 })
}

fn run_chunks(
    r: Arc<dyn TextRedactor>,
    limits: JsonLimits,
    keys: bool,
    chunks: &[&[u8]],
) -> Result<(Vec<u8>, Summary), JsonError> {
    let mut j = JsonRedactor::new(r, limits).with_key_redaction(keys);
    let mut out = Vec::new();
    for c in chunks {
        j.push(c, &mut out)?;
    }
    let s = j.finish(&mut out)?;
    Ok((out, s))
}

fn redact_whole(input: &[u8]) -> Result<(Vec<u8>, Summary), JsonError> {
    redact_json(test_redactor(), JsonLimits::default(), input)
}

fn redact_bytewise(input: &[u8]) -> Result<(Vec<u8>, Summary), JsonError> {
    let chunks: Vec<&[u8]> = input.chunks(1).collect();
    run_chunks(test_redactor(), JsonLimits::default(), false, &chunks)
}

fn out_str(input: &str) -> String {
    let (a, _) = redact_whole(input.as_bytes()).expect("whole");
    let (b, _) = redact_bytewise(input.as_bytes()).expect("bytewise");
    assert_eq!(a, b, "chunking changed the output for {input}");
    let s = String::from_utf8(a).expect("utf8");
    serde_json::from_str::<Value>(&s).expect("output is JSON");
    s
}

/// The reference: parse, redact each string value on its own, compare parsed.
fn reference(input: &[u8], r: &dyn TextRedactor) -> Value {
    let mut v: Value = serde_json::from_slice(input).expect("input is JSON");
    redact_value(&mut v, r);
    v
}

#[test]
fn strings_in_objects_arrays_nested() {
    let input = r#"{"a":"mail alice@example.com now","b":["x","bob@test.org",{"c":"z carol@x.io"}],"d":{"e":{"f":["deep dave@d.de"]}}}"#;
    let out = out_str(input);
    assert_eq!(
        out,
        r#"{"a":"mail [EMAIL] now","b":["x","[EMAIL]",{"c":"z [EMAIL]"}],"d":{"e":{"f":["deep [EMAIL]"]}}}"#
    );
}

#[test]
fn keys_untouched_unless_configured() {
    let input = r#"{"alice@example.com":"bob@example.com","k\u0040x.io":1}"#;
    assert_eq!(
        out_str(input),
        r#"{"alice@example.com":"[EMAIL]","k\u0040x.io":1}"#
    );
    let chunks: Vec<&[u8]> = input.as_bytes().chunks(3).collect();
    let (out, summary) =
        run_chunks(test_redactor(), JsonLimits::default(), true, &chunks).expect("keys");
    assert_eq!(
        String::from_utf8(out).expect("utf8"),
        r#"{"[EMAIL]":"[EMAIL]","[EMAIL]":1}"#
    );
    assert_eq!(summary.counts.get("EMAIL"), Some(&3));
}

#[test]
fn numbers_literals_and_whitespace_untouched() {
    let input =
        " [ 0 , -1.5e+10 , 2E-3 , 12345678901234567890123 , true , false , null , -0.0 ] \n";
    assert_eq!(out_str(input), input);
    for top in ["0", "-12.5e3", "true", "null", "\"x\"", "  7  "] {
        assert_eq!(out_str(top), top);
    }
}

#[test]
fn escaped_input_is_decoded() {
    // `\u0040` is `@`; escapes split at every byte by the bytewise run in out_str.
    assert_eq!(out_str(r#"["alice\u0040example.com"]"#), r#"["[EMAIL]"]"#);
    assert_eq!(
        out_str(r#"["a\/b alice\u0040ex\u0061mple.com \"q\""]"#),
        r#"["a/b [EMAIL] \"q\""]"#
    );
    // Surrogate pair decoded (and kept as UTF-8 when the string is re-encoded).
    assert_eq!(
        out_str(r#"["\ud83d\ude00 bob@x.io \u00e9\t"]"#),
        "[\"\u{1F600} [EMAIL] \u{e9}\\t\"]"
    );
    // Control characters in the redacted result are escaped.
    assert_eq!(
        out_str(r#"["\u0001\b\f\n\r x@y.z \\"]"#),
        r#"["\u0001\b\f\n\r [EMAIL] \\"]"#
    );
}

#[test]
fn clean_documents_pass_byte_exact() {
    let input = "{\"k\" : [\"caf\\u00e9 \\/ \\ud83d\\ude00 \u{e9}\u{1F600}\", 1, {\"x\":\"\\\"\"}], \"e\":\"\"}";
    let (whole, summary) = redact_whole(input.as_bytes()).expect("ok");
    assert_eq!(whole, input.as_bytes());
    assert_eq!(summary, Summary::default());
    let (bytewise, _) = redact_bytewise(input.as_bytes()).expect("ok");
    assert_eq!(bytewise, input.as_bytes());
}

#[test]
fn summary_counts_and_findings() {
    let input = r#"["a@b.cd x@y.zz", {"k": "a@b.cd"}]"#;
    let (_, s) = redact_whole(input.as_bytes()).expect("ok");
    assert_eq!(s.total(), 3);
    assert_eq!(s.counts.get("EMAIL"), Some(&3));
    assert_eq!(s.findings.len(), 3);
    assert_eq!(s.findings[0].pseudonym, s.findings[2].pseudonym);
    assert_eq!(s.strings_redacted, 2);
    let limits = JsonLimits {
        max_findings: 1,
        ..JsonLimits::default()
    };
    let (_, s) = redact_json(test_redactor(), limits, input.as_bytes()).expect("ok");
    assert_eq!((s.findings.len(), s.findings_dropped, s.total()), (1, 2, 3));
}

#[test]
fn invalid_json_errors_with_offset() {
    use JsonErrorKind::*;
    let cases: &[(&[u8], u64, JsonErrorKind)] = &[
        (b"", 0, UnexpectedEof),
        (b"   ", 3, UnexpectedEof),
        (b"[1,]", 3, UnexpectedByte(b']')),
        (b"{\"a\" 1}", 5, UnexpectedByte(b'1')),
        (b"{\"a\":1,}", 7, UnexpectedByte(b'}')),
        (b"[1 2]", 3, UnexpectedByte(b'2')),
        (b"[01]", 2, UnexpectedByte(b'1')),
        (b"[1.]", 3, UnexpectedByte(b']')),
        (b"[-]", 2, UnexpectedByte(b']')),
        (b"[tru]", 4, UnexpectedByte(b']')),
        (b"[\"a\"}", 4, UnexpectedByte(b'}')),
        (b"{]", 1, UnexpectedByte(b']')),
        (b"{} {}", 3, TrailingData),
        (b"[\"\\x\"]", 3, InvalidEscape),
        (b"[\"\\u12g4\"]", 6, InvalidEscape),
        (b"[\"\\ud800\"]", 8, LoneSurrogate),
        (b"[\"\\ud800\\u0041\"]", 13, LoneSurrogate),
        (b"[\"\\udc00\"]", 7, LoneSurrogate),
        (b"[\"a\nb\"]", 3, ControlChar),
        (b"[\"\xff\"]", 2, InvalidUtf8),
        (b"[\"\xc3\"]", 3, InvalidUtf8),
        (b"[\"abc", 5, UnexpectedEof),
        (b"\xef\xbb\xbf[]", 0, UnexpectedByte(0xef)),
        (b"[1", 2, UnexpectedEof),
        (b"-", 1, UnexpectedEof),
    ];
    for &(input, offset, kind) in cases {
        for chunked in [false, true] {
            let chunks: Vec<&[u8]> = if chunked {
                input.chunks(1).collect()
            } else {
                vec![input]
            };
            let err = run_chunks(test_redactor(), JsonLimits::default(), false, &chunks)
                .expect_err(&format!("{:?} must fail", String::from_utf8_lossy(input)));
            assert_eq!(
                (err.offset, err.kind),
                (offset, kind),
                "{:?} chunked={chunked}",
                String::from_utf8_lossy(input)
            );
        }
    }
}

#[test]
fn depth_limit() {
    let limits = JsonLimits {
        max_depth: 3,
        ..JsonLimits::default()
    };
    assert!(redact_json(test_redactor(), limits, b"[[[1]]]").is_ok());
    let err = redact_json(test_redactor(), limits, b"[[[[1]]]]").expect_err("too deep");
    assert_eq!((err.offset, err.kind), (3, JsonErrorKind::TooDeep(3)));
}

#[test]
fn error_leaves_out_untouched_and_poisons() {
    let mut j = JsonRedactor::new(test_redactor(), JsonLimits::default());
    let mut out = Vec::new();
    j.push(b"[\"a@b.cd\", ", &mut out).expect("first chunk");
    let before = out.clone();
    assert_eq!(before, b"[\"[EMAIL]\", ");
    let err = j.push(b"\"x\", x]", &mut out).expect_err("bad");
    assert_eq!(err.offset, 16);
    assert_eq!(out, before);
    assert_eq!(
        j.push(b"1]", &mut out).expect_err("poisoned").kind,
        JsonErrorKind::Unusable
    );
    assert_eq!(
        j.finish(&mut out).expect_err("poisoned").kind,
        JsonErrorKind::Unusable
    );
    j.reset();
    out.clear();
    j.push(b"[\"q@r.st\"]", &mut out).expect("after reset");
    assert_eq!(j.finish(&mut out).expect("finish").total(), 1);
    assert_eq!(out, b"[\"[EMAIL]\"]");
}

#[test]
fn keys_are_labels() {
    // The bare number is masked under a `pin` key only: members, arrays of the member,
    // nested objects under their own keys; not past the reach.
    let input = r#"{"pin":"1234","other":"1234","pins":["5678",["999"],{"x":"111"}],"n":{"pin_code":"4321, then 4321"},"after":"1234","pin2":"abcdefgh 1234"}"#;
    assert_eq!(
        out_str(input),
        r#"{"pin":"[PIN]","other":"1234","pins":["[PIN]",["[PIN]"],{"x":"111"}],"n":{"pin_code":"[PIN], then 4321"},"after":"1234","pin2":"abcdefgh 1234"}"#
    );
    // Keys with escapes (split anywhere by `out_str`) are decoded before they are used.
    let input = r#"{"p\u0069n":"1234","\u0050IN":"77777","a":{"b":"1"},"PI\n":"123"}"#;
    assert_eq!(
        out_str(input),
        r#"{"p\u0069n":"[PIN]","\u0050IN":"[PIN]","a":{"b":"1"},"PI\n":"123"}"#
    );
    // A top-level string or array has no label; the label of a closed object is gone.
    assert_eq!(out_str(r#"["1234"]"#), r#"["1234"]"#);
    assert_eq!(
        out_str(r#"{"pin":{"a":"1"},"b":"1234"}"#),
        r#"{"pin":{"a":"1"},"b":"1234"}"#
    );
    assert_eq!(
        out_str(r#"[{"pin":"123"},"456"]"#),
        r#"[{"pin":"[PIN]"},"456"]"#
    );
    // Key redaction on: the key is redacted, the value still gets the original key.
    let (out, _) = run_chunks(
        test_redactor(),
        JsonLimits::default(),
        true,
        &[br#"{"pin a@b.cd":"123"}"#],
    )
    .expect("keys");
    assert_eq!(out, br#"{"pin [EMAIL]":"[PIN]"}"#);
}

#[test]
fn long_keys_are_cut_the_same_whatever_the_chunking() {
    for (pad, tail) in [
        (120, "pin"),
        (126, "pin"),
        (125, "\\u00e9pin"),
        (124, "\u{e9}\u{e9}pin"),
    ] {
        let key = format!("{}{tail}", "k".repeat(pad));
        let input = format!(r#"{{"{key}":"123","x":["{key}"]}}"#);
        let out = out_str(&input);
        let v: Value = serde_json::from_str(&input).expect("json");
        let decoded = v
            .as_object()
            .and_then(|m| m.keys().find(|k| k.len() > 100).cloned())
            .expect("key");
        let labelled = key_label(&decoded).is_some_and(|l| l.contains("pin"));
        assert_eq!(out.contains("[PIN]"), labelled, "{input} -> {out}");
        assert_eq!(
            serde_json::from_str::<Value>(&out).expect("json"),
            reference(input.as_bytes(), test_redactor().as_ref())
        );
    }
    assert_eq!(key_label(""), None);
    assert_eq!(key_label(&"\u{e9}".repeat(100)).map(str::len), Some(128));
    assert_eq!(
        key_label(&format!("a{}", "\u{e9}".repeat(100))).map(str::len),
        Some(127)
    );
}

#[test]
fn label_applies_to_the_first_window_of_a_long_value_only() {
    let limits = JsonLimits {
        window: 64,
        max_window: 4096,
        context: 2,
        ..JsonLimits::default()
    };
    let r: Arc<dyn TextRedactor> = Arc::new(TestRedactor { max: 8 });
    let text = format!("123 {} 456", "word ".repeat(200));
    let input = serde_json::to_vec(&serde_json::json!({ "pin": text })).expect("ser");
    let (whole, s) = run_chunks(r.clone(), limits, false, &[&input]).expect("whole");
    let chunks: Vec<&[u8]> = input.chunks(5).collect();
    let (chunked, _) = run_chunks(r.clone(), limits, false, &chunks).expect("chunked");
    assert_eq!(whole, chunked);
    let v: Value = serde_json::from_slice(&whole).expect("json");
    let out = v["pin"].as_str().expect("str");
    assert!(
        out.starts_with("[PIN] word") && out.ends_with("word  456"),
        "{out}"
    );
    assert_eq!(s.counts.get("PIN"), Some(&1));
    assert_eq!(v, reference(&input, r.as_ref()));
}

#[test]
fn redact_value_in_place() {
    let mut v = serde_json::json!({
        "name": "tool",
        "arguments": {"to": "alice@example.com", "cc": ["bob@example.com", 3, null]},
        "uri": "file:///home/x@y.zz/a"
    });
    let f = redact_value(&mut v, &TestRedactor { max: 64 });
    assert_eq!(f.len(), 3);
    let mut w = serde_json::json!({"pin": "123", "pins": ["456", {"a": "789"}], "x": "123"});
    redact_value(&mut w, &TestRedactor { max: 64 });
    assert_eq!(
        w,
        serde_json::json!({"pin": "[PIN]", "pins": ["[PIN]", {"a": "789"}], "x": "123"})
    );
    assert_eq!(
        v,
        serde_json::json!({
            "name": "tool",
            "arguments": {"to": "[EMAIL]", "cc": ["[EMAIL]", 3, null]},
            "uri": "file:///home/[EMAIL]/a"
        })
    );
}

#[test]
fn sse_events_one_by_one() {
    let mut sse = SseRedactor::new(test_redactor(), JsonLimits::default());
    let e1 =
        r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"mail a@b.cd"}]}}"#;
    assert_eq!(
        sse.redact_data(e1).expect("e1"),
        r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"mail [EMAIL]"}]}}"#
    );
    let e2 = "{\"x\":\n\"c@d.ef\"}";
    assert_eq!(sse.redact_data(e2).expect("e2"), "{\"x\":\n\"[EMAIL]\"}");
    assert_eq!(sse.redact_data("").expect("empty"), "");
    assert_eq!(sse.summary().total(), 2);
    assert!(sse.redact_data("not json a@b.cd").is_err());
    // A failed event does not poison the next one.
    assert_eq!(sse.redact_data("\"e@f.gh\"").expect("e3"), "\"[EMAIL]\"");
    assert_eq!(sse.take_summary().total(), 3);
    assert_eq!(sse.summary().total(), 0);
}

/// A long string with emails at every offset around many window boundaries.
fn dense_text(len: usize) -> String {
    let words = [
        "lorem ",
        "alice@example.com ",
        "ipsum\u{e9} ",
        "b.o.b@x.io, ",
        "\u{1F600}",
    ];
    let mut s = String::with_capacity(len + 32);
    let mut i = 0usize;
    while s.len() < len {
        s.push_str(words[i % words.len()]);
        // Vary the phase so matches fall on every offset modulo the window.
        if i % 7 == 3 {
            s.push('x');
        }
        i += 1;
    }
    s
}

#[test]
fn huge_string_bounded_memory_and_boundary_matches() {
    let text = dense_text(20 << 20);
    let input = serde_json::to_vec(&serde_json::json!({"data": [text]})).expect("ser");
    let r = test_redactor();
    let mut j = JsonRedactor::new(r.clone(), JsonLimits::default());
    let window = j.limits().window;
    let mut out = Vec::with_capacity(input.len());
    for c in input.chunks(64 << 10) {
        j.push(c, &mut out).expect("push");
        assert!(j.buffered() <= 2 * window + 64, "buffered {}", j.buffered());
    }
    let summary = j.finish(&mut out).expect("finish");
    assert!(
        j.peak_buffered() <= 2 * window + 64,
        "peak {}",
        j.peak_buffered()
    );
    let parsed: Value = serde_json::from_slice(&out).expect("valid JSON");
    assert_eq!(parsed, reference(&input, r.as_ref()));
    let s = parsed["data"][0].as_str().expect("string");
    assert!(!s.contains('@'));
    // Every match found in the whole string at once was found across the windows, once.
    assert_eq!(summary.total(), r.redact(&text).1.len() as u64);
    assert!(summary.total() > 500_000);
}

#[test]
fn segments_with_escapes_stay_byte_exact_when_clean() {
    // Clean, escape-heavy string much longer than the window: output equals the input.
    let mut s = String::from("\"");
    for i in 0..20_000 {
        s.push_str(["ab \\u00e9 ", "\\ud83d\\ude00", "\\n\\/", "caf\u{e9} "][i % 4]);
    }
    s.push('"');
    let limits = JsonLimits {
        window: 4096,
        max_window: 16384,
        context: 8,
        ..JsonLimits::default()
    };
    for size in [1, 7, 4096, s.len()] {
        let chunks: Vec<&[u8]> = s.as_bytes().chunks(size).collect();
        let mut j = JsonRedactor::new(test_redactor(), limits);
        let mut out = Vec::new();
        for c in &chunks {
            j.push(c, &mut out).expect("push");
        }
        j.finish(&mut out).expect("finish");
        assert_eq!(out, s.as_bytes(), "chunk size {size}");
        assert!(j.peak_buffered() < 3 * 4096);
    }
}

#[test]
fn small_window_matches_across_every_boundary() {
    let limits = JsonLimits {
        window: 256,
        max_window: 4096,
        context: 4,
        ..JsonLimits::default()
    };
    let r: Arc<dyn TextRedactor> = Arc::new(TestRedactor { max: 24 });
    for pad in 0..80 {
        let text = format!("{}{}", "y".repeat(pad), dense_text(3000));
        let input = serde_json::to_vec(&vec![text]).expect("ser");
        let (whole, _) = run_chunks(r.clone(), limits, false, &[&input]).expect("whole");
        let chunks: Vec<&[u8]> = input.chunks(13).collect();
        let (chunked, _) = run_chunks(r.clone(), limits, false, &chunks).expect("chunked");
        assert_eq!(whole, chunked);
        let parsed: Value = serde_json::from_slice(&whole).expect("JSON");
        assert_eq!(parsed, reference(&input, r.as_ref()), "pad {pad}");
    }
}

#[test]
fn unsegmentable_string_is_refused_not_leaked() {
    let limits = JsonLimits {
        window: 256,
        max_window: 1024,
        context: 0,
        ..JsonLimits::default()
    };
    let text = format!("a@b {}", "z".repeat(5000));
    let input = serde_json::to_vec(&vec![text]).expect("ser");
    let mut j = JsonRedactor::new(Arc::new(NonLocal), limits);
    let mut out = Vec::new();
    let err = j.push(&input, &mut out).expect_err("refused");
    assert_eq!(err.kind, JsonErrorKind::SegmentationFailed(1024));
    assert!(out.is_empty());
    // Short strings with the same redactor are fine.
    let (out, _) = redact_json(Arc::new(NonLocal), limits, b"[\"a@b\"]").expect("short");
    assert_eq!(out, b"[\"X\"]");
}

#[test]
fn helpers() {
    let mut out = Vec::new();
    encode_into("a\"b\\c\u{1}\u{1f}\u{7f}\u{e9}\u{2028}", &mut out);
    assert_eq!(
        out,
        "a\\\"b\\\\c\\u0001\\u001f\u{7f}\u{e9}\u{2028}".as_bytes()
    );
    assert_eq!(raw_offset(b"ab\\u00e9\\ud83d\\ude00\\nx", 0), Some(0));
    assert_eq!(raw_offset(b"ab\\u00e9\\ud83d\\ude00\\nx", 2), Some(2));
    assert_eq!(raw_offset(b"ab\\u00e9\\ud83d\\ude00\\nx", 4), Some(8));
    assert_eq!(raw_offset(b"ab\\u00e9\\ud83d\\ude00\\nx", 8), Some(20));
    assert_eq!(raw_offset(b"ab\\u00e9\\ud83d\\ude00\\nx", 10), Some(23));
    assert_eq!(raw_offset(b"ab", 3), None);
}

// ---------- property tests ----------

fn arb_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z ]{0,12}",
        "(pin|PIN|x)?[0-9]{1,6}( [0-9]{3})?",
        "[a-z]{1,8}@[a-z]{1,6}\\.(com|io)",
        "[a-zA-Z0-9@._ \"\\\\/\n\t\u{1}\u{7f}\u{e9}\u{2028}\u{1F600}-]{0,30}",
        "(([a-z]{1,8}@[a-z]{1,6}\\.com)|[a-z ]{1,10}|\u{e9}|\u{1F600}|\\\\| ){0,12}",
    ]
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        arb_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((arb_string(), inner.clone()), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            // A document carried in a string value (pretty or compact).
            (inner.clone(), any::<bool>()).prop_map(|(v, pretty)| Value::String(if pretty {
                serde_json::to_string_pretty(&v).expect("JSON")
            } else {
                v.to_string()
            })),
            // Documents one per line (JSON Lines), or one after the other.
            (prop::collection::vec(inner, 2..4), any::<bool>()).prop_map(|(vs, lines)| {
                let docs: Vec<String> = vs.iter().map(Value::to_string).collect();
                Value::String(docs.join(if lines { "\n" } else { "" }))
            }),
        ]
    })
}

/// `v` with every string that holds a document (as the rewriter reads one) replaced by that
/// document, so that outputs compare whatever the whitespace of the documents they carry.
fn documents_read(v: Value, level: u8) -> Value {
    match v {
        Value::String(s) => match embedded_documents(&s, level) {
            Some(mut docs) if docs.len() == 1 => documents_read(docs.remove(0), level + 1),
            // (A sequence: JSON Lines.)
            Some(docs) => serde_json::json!({
                "(sequence)": docs.into_iter().map(|d| documents_read(d, level + 1)).collect::<Vec<_>>()
            }),
            None => Value::String(s),
        },
        Value::Array(a) => Value::Array(a.into_iter().map(|x| documents_read(x, level)).collect()),
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, x)| (k, documents_read(x, level)))
                .collect(),
        ),
        other => other,
    }
}

/// Serialises with random whitespace and random (but valid) escapes, driven by `seed`.
fn write_json(v: &Value, seed: &mut u64, out: &mut String) {
    fn next(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }
    fn ws(seed: &mut u64, out: &mut String) {
        if next(seed) & 3 == 0 {
            out.push_str([" ", "\n", "\t ", "\r\n"][(next(seed) % 4) as usize]);
        }
    }
    fn string(s: &str, seed: &mut u64, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            let mode = next(seed) % 4;
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str(if mode == 0 { "\\u005C" } else { "\\\\" }),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                '/' if mode == 0 => out.push_str("\\/"),
                c if mode == 1 => {
                    let mut buf = [0u16; 2];
                    for u in c.encode_utf16(&mut buf) {
                        out.push_str(&format!("\\u{u:04X}"));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
    ws(seed, out);
    match v {
        Value::String(s) => string(s, seed, out),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(x, seed, out);
            }
            ws(seed, out);
            out.push(']');
        }
        Value::Object(m) => {
            out.push('{');
            for (i, (k, x)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                ws(seed, out);
                string(k, seed, out);
                ws(seed, out);
                out.push(':');
                write_json(x, seed, out);
            }
            ws(seed, out);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
    ws(seed, out);
}

fn split_at_points<'a>(input: &'a [u8], points: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = points
        .iter()
        .map(|p| {
            if input.is_empty() {
                0
            } else {
                p % (input.len() + 1)
            }
        })
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut chunks = Vec::new();
    let mut prev = 0;
    for c in cuts {
        chunks.push(&input[prev..c]);
        prev = c;
    }
    chunks.push(&input[prev..]);
    chunks
}

fn check_doc(
    input: &[u8],
    points: &[usize],
    r: Arc<dyn TextRedactor>,
    limits: JsonLimits,
) -> Result<(), TestCaseError> {
    let (whole, sw) = run_chunks(r.clone(), limits, false, &[input]).expect("whole");
    let chunks = split_at_points(input, points);
    let (chunked, sc) = run_chunks(r.clone(), limits, false, &chunks).expect("chunked");
    prop_assert_eq!(&whole, &chunked);
    prop_assert_eq!(sw, sc);
    let parsed: Value = serde_json::from_slice(&whole).expect("output is JSON");
    prop_assert_eq!(
        documents_read(parsed, 0),
        documents_read(reference(input, r.as_ref()), 0)
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn prop_any_chunking_same_valid_reference(
        v in arb_json(),
        seed in 1u64..,
        points in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut seed = seed;
        let mut text = String::new();
        write_json(&v, &mut seed, &mut text);
        check_doc(text.as_bytes(), &points, test_redactor(), JsonLimits::default())?;
        // Byte-exact passthrough when nothing is redacted.
        let (out, s) = redact_json(test_redactor(), JsonLimits::default(), text.as_bytes())
            .expect("ok");
        if s.strings_redacted == 0 {
            prop_assert_eq!(out, text.as_bytes());
        }
    }

    #[test]
    fn prop_long_strings_small_window(
        parts in prop::collection::vec(
            prop_oneof![
                "[a-z]{1,10}@[a-z]{1,8}\\.com",
                "[a-z]{1,12}",
                "[ ,;\n]",
                "[\u{e9}\u{1F600}\"\\\\]",
                "[a-z@.]{1,30}",
            ],
            0..400,
        ),
        n in 1usize..4,
        seed in 1u64..,
        points in prop::collection::vec(any::<usize>(), 0..24),
    ) {
        let text: String = parts.concat();
        let doc = Value::Array(vec![Value::String(text); n]);
        let mut seed = seed;
        let mut input = String::new();
        write_json(&doc, &mut seed, &mut input);
        let limits = JsonLimits { window: 64, max_window: 1 << 16, context: 3, ..JsonLimits::default() };
        check_doc(input.as_bytes(), &points, Arc::new(TestRedactor { max: 16 }), limits)?;
    }

    /// Documents carried in a string, around the document window (here 2048 bytes, window 64):
    /// any chunking gives the same output, and one that fits is read as a document (the
    /// parsed reference), the others as text in segments.
    #[test]
    fn prop_documents_in_strings_around_the_document_window(
        items in prop::collection::vec(
            (
                prop_oneof!["pin", "note", "[a-z]{1,6}"],
                prop_oneof![
                    "[0-9]{3,6}",
                    "[a-z]{1,10}@[a-z]{1,8}\\.com",
                    "[a-z \u{e9}\"\\\\]{0,40}",
                ],
            ),
            0..120,
        ),
        lead in "[ \n]{0,3}",
        points in prop::collection::vec(any::<usize>(), 0..24),
    ) {
        let records: Vec<Value> = items
            .into_iter()
            .map(|(k, v)| serde_json::json!({ k: v }))
            .collect();
        let carried = format!("{lead}{}", Value::Array(records));
        // Written plainly (no random escapes), so the raw length of the string is known.
        let input = serde_json::json!({"text": carried.clone()}).to_string();
        let limits = JsonLimits { window: 64, max_window: 4096, context: 3, ..JsonLimits::default() };
        let r: Arc<dyn TextRedactor> = Arc::new(TestRedactor { max: 16 });
        let (whole, sw) = run_chunks(r.clone(), limits, false, &[input.as_bytes()]).expect("whole");
        let chunks = split_at_points(input.as_bytes(), &points);
        let (chunked, sc) = run_chunks(r.clone(), limits, false, &chunks).expect("chunked");
        prop_assert_eq!(&whole, &chunked);
        prop_assert_eq!(sw, sc);
        let out: Value = serde_json::from_slice(&whole).expect("output is JSON");
        let raw_len = serde_json::to_string(&carried).expect("JSON").len() - 2;
        if raw_len < 2048 {
            prop_assert_eq!(
                documents_read(out, 0),
                documents_read(reference(input.as_bytes(), r.as_ref()), 0)
            );
        }
    }

    #[test]
    fn prop_arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..200),
        points in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let chunks = split_at_points(&bytes, &points);
        let res = run_chunks(test_redactor(), JsonLimits::default(), false, &chunks);
        let whole = run_chunks(test_redactor(), JsonLimits::default(), false, &[&bytes]);
        prop_assert_eq!(res.is_ok(), whole.is_ok());
        if let Ok((out, _)) = res {
            if serde_json::from_slice::<Value>(&bytes).is_ok() {
                prop_assert!(serde_json::from_slice::<Value>(&out).is_ok());
            }
        } else if let Err(e) = whole {
            prop_assert!(serde_json::from_slice::<Value>(&bytes).is_err(), "{e}");
        }
    }

    #[test]
    fn prop_mutated_json_never_panics(
        v in arb_json(),
        seed in 1u64..,
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        points in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut seed = seed;
        let mut text = String::new();
        write_json(&v, &mut seed, &mut text);
        let mut bytes = text.into_bytes();
        for (at, b) in edits {
            if !bytes.is_empty() {
                let at = at % bytes.len();
                bytes[at] = b;
            }
        }
        let chunks = split_at_points(&bytes, &points);
        let res = run_chunks(test_redactor(), JsonLimits::default(), false, &chunks);
        let parses = serde_json::from_slice::<Value>(&bytes).is_ok();
        match res {
            Ok((out, _)) => {
                if parses {
                    prop_assert!(serde_json::from_slice::<Value>(&out).is_ok());
                }
            }
            Err(_) => prop_assert!(!parses),
        }
    }
}

proptest! {
    #[test]
    fn plain_run_stops_at_the_first_byte_to_escape(
        parts in proptest::collection::vec(
            prop_oneof![
                3 => "[ -~]{0,100}".prop_map(String::into_bytes),
                1 => "[\"\\\\\n\t\r\u{0}\u{1f}]".prop_map(String::into_bytes),
                1 => "\\PC{0,20}".prop_map(String::into_bytes),
                // Bytes that differ from the specials by the high bit (0xA2, 0xDC, 0x9F...).
                1 => proptest::collection::vec(any::<u8>(), 0..40),
            ],
            0..12,
        ),
    ) {
        let b = parts.concat();
        let expected = b
            .iter()
            .position(|&c| c < 0x20 || c == b'"' || c == b'\\')
            .unwrap_or(b.len());
        prop_assert_eq!(plain_run(&b), expected);
    }
}

/// The test redactor, with JSON numbers redacted too (`[services.redact] numbers = true`).
struct Numbers(TestRedactor);

impl TextRedactor for Numbers {
    fn max_match_len(&self) -> usize {
        self.0.max_match_len()
    }
    fn masks_numbers(&self) -> bool {
        true
    }
    fn redact(&self, text: &str) -> (String, Vec<Finding>) {
        self.0.redact(text)
    }
    fn sieve(&self, text: &str) -> Option<Box<dyn Sieve>> {
        self.0.sieve(text)
    }
    fn redact_labelled<'t>(
        &self,
        label: Option<&str>,
        text: &'t str,
    ) -> (Cow<'t, str>, Vec<Finding>) {
        self.0.redact_labelled(label, text)
    }
}

fn numbers_redactor() -> Arc<dyn TextRedactor> {
    Arc::new(Numbers(TestRedactor { max: 64 }))
}

#[test]
fn numbers_that_are_personal_data_become_their_masks_when_asked() {
    let doc = br#"{"pin": 123456, "n": 123456, "a": [{"pin": -1234.5e3}], "pins": [111, 22], "pin_x": 0}"#;
    let (out, s) = redact_json(numbers_redactor(), JsonLimits::default(), doc).expect("ok");
    let out = String::from_utf8(out).unwrap();
    assert_eq!(
        out,
        r#"{"pin": "[PIN]", "n": 123456, "a": [{"pin": -1234.5e3}], "pins": ["[PIN]", 22], "pin_x": 0}"#
    );
    assert_eq!(s.counts.get("PIN"), Some(&2));
    // Byte by byte, the same.
    let chunks: Vec<&[u8]> = doc.chunks(1).collect();
    let (bytewise, _) =
        run_chunks(numbers_redactor(), JsonLimits::default(), false, &chunks).expect("bytewise");
    assert_eq!(String::from_utf8(bytewise).unwrap(), out);
    // Off by default: numbers pass as they are.
    let (plain, s) = redact_json(test_redactor(), JsonLimits::default(), doc).expect("ok");
    assert_eq!(plain, doc);
    assert_eq!(s.total(), 0);
    // A document that is one number; and a number too long to be an identifier passes.
    let (one, _) = redact_json(numbers_redactor(), JsonLimits::default(), b"123456").expect("ok");
    assert_eq!(one, b"123456");
    let long = format!(r#"{{"pin": 1{}}}"#, "0".repeat(100));
    let (out, _) =
        redact_json(numbers_redactor(), JsonLimits::default(), long.as_bytes()).expect("ok");
    assert_eq!(out, long.as_bytes());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// With numbers redacted: any chunking gives the same valid JSON, and a number stays a
    /// number unless it became its mask.
    #[test]
    fn prop_numbers_any_chunking_same_valid(
        v in arb_json(),
        seed in 1u64..,
        points in prop::collection::vec(any::<usize>(), 0..12),
        pin_keys in any::<bool>(),
    ) {
        let mut seed = seed;
        let mut text = String::new();
        let v = if pin_keys {
            // Keys that are labels, so numbers under them get masked.
            serde_json::json!({"pin": v, "pins": [v.clone(), 1234567], "pin_no": 987654})
        } else {
            v
        };
        write_json(&v, &mut seed, &mut text);
        let input = text.as_bytes();
        let (whole, sw) =
            run_chunks(numbers_redactor(), JsonLimits::default(), false, &[input]).expect("whole");
        let chunks = split_at_points(input, &points);
        let (chunked, sc) =
            run_chunks(numbers_redactor(), JsonLimits::default(), false, &chunks).expect("chunked");
        prop_assert_eq!(&whole, &chunked);
        prop_assert_eq!(sw, sc);
        let parsed: Value = serde_json::from_slice(&whole).expect("output is JSON");
        if pin_keys {
            prop_assert_eq!(&parsed["pin_no"], "[PIN]");
            prop_assert_eq!(&parsed["pins"][1], "[PIN]");
        }
    }
}

/// A long value that opens like a document but is none (log lines that start with `[`), or is
/// a sequence of documents longer than a window (a JSON Lines export), is cut at its first
/// window as any long string, not buffered up to the document window; one that is a
/// document is buffered whole and read as one (the `pin` rule holds only under its key). A
/// sequence within a window is read as documents too.
#[test]
fn only_a_value_that_may_be_one_document_takes_the_document_window() {
    let limits = JsonLimits {
        window: 64,
        max_window: 1 << 16,
        context: 3,
        ..JsonLimits::default()
    };
    let r: Arc<dyn TextRedactor> = Arc::new(TestRedactor { max: 16 });
    let records: Vec<String> = (0..400).map(json_record).collect();
    let jsonl = records.join("\n");
    let array = format!("[{}]", records.join(","));
    let log: String = (0..400)
        .map(|i| format!("[INFO] user{i}@ex.com logged in\n"))
        .collect();
    let concatenated = records.concat();
    for (text, whole) in [
        (&jsonl, false),
        (&concatenated, false),
        (&log, false),
        (&array, true),
    ] {
        let doc = serde_json::json!({ "text": text }).to_string();
        let raw = doc.len() - r#"{"text":""}"#.len();
        assert!(raw > 8 * 1024 && raw < limits.max_window / 2, "{raw}");
        for size in [doc.len(), 1, 100] {
            let chunks: Vec<&[u8]> = doc.as_bytes().chunks(size).collect();
            let mut j = JsonRedactor::new(r.clone(), limits);
            let mut out = Vec::new();
            for c in &chunks {
                j.push(c, &mut out).expect("valid");
            }
            j.finish(&mut out).expect("complete");
            let window = j.limits().window;
            if whole {
                assert!(
                    j.peak_buffered() >= raw + text.len(),
                    "{size}: {}",
                    j.peak_buffered()
                );
            } else {
                assert!(
                    j.peak_buffered() < 4 * window + 2 * size.min(window),
                    "{size}: {}",
                    j.peak_buffered()
                );
            }
            let v: Value = serde_json::from_slice(&out).expect("JSON");
            let t = v["text"].as_str().unwrap();
            assert!(!t.contains("@ex.com"), "{size}");
            if whole {
                assert_eq!(
                    t.matches(r#""pin":"[PIN]""#).count(),
                    400,
                    "{size}: {t:.300}"
                );
            }
        }
    }
}

#[test]
fn json_lines_within_a_window_are_read_as_documents() {
    let r: Arc<dyn TextRedactor> = Arc::new(TestRedactor { max: 16 });
    let records: Vec<String> = (0..400).map(json_record).collect();
    for text in [records.join("\n"), records.concat(), records.join("\r\n ")] {
        let doc = serde_json::json!({ "text": text }).to_string();
        assert!(doc.len() < JsonLimits::default().window);
        for size in [doc.len(), 1, 100] {
            let chunks: Vec<&[u8]> = doc.as_bytes().chunks(size).collect();
            let (out, summary) =
                run_chunks(r.clone(), JsonLimits::default(), false, &chunks).expect("valid");
            let v: Value = serde_json::from_slice(&out).expect("JSON");
            let t = v["text"].as_str().unwrap();
            assert_eq!(
                t.matches(r#""pin":"[PIN]""#).count(),
                400,
                "{size}: {t:.300}"
            );
            assert_eq!(t.matches("[EMAIL]").count(), 400, "{size}");
            assert_eq!(summary.total(), 800, "{size}");
        }
    }
}

fn json_record(i: usize) -> String {
    serde_json::json!({"id": i, "mail": format!("user{i}@ex.com"), "pin": format!("{}", 1000 + i)})
        .to_string()
}
