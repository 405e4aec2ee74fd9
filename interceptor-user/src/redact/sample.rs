//! A dry run of a service's redaction over a sample (`interceptor redact`): what an operator
//! runs to see what the detectors of a configuration mask in a text or a JSON document, and
//! why, before the agent does it to live traffic.
//!
//! The sample goes through the same engine and, for JSON, the same streaming rewriter as a
//! response of that service; the pseudonyms are the agent's when the key is the one in force.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use super::engine::Engine;
use super::json::{JsonLimits, redact_json};
use super::{Finding, TextRedactor};

/// How to read a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SampleFormat {
    /// JSON when the first byte that is not white space is `{`, `[` or `"`; text otherwise.
    Auto,
    /// A JSON document, as a JSON response body is rewritten (every string value, keys as
    /// labels; invalid JSON is refused as the agent refuses it).
    Json,
    /// Plain text, as a response of another content type is redacted.
    Text,
}

/// One value the engine's scan of a text accepted (before masking).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detection {
    pub entity: String,
    /// Byte range in the sample.
    pub start: usize,
    pub end: usize,
    pub confidence: f32,
    /// The value as it stands in the sample (the operator's own input).
    pub value: String,
}

/// What a dry run gives back.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SampleReport {
    /// `json` or `text`: how the sample was read.
    pub format: &'static str,
    /// The sample as the caller would receive it.
    pub output: String,
    /// Masked values per entity type.
    pub masked: BTreeMap<String, u64>,
    /// Values shown in clear per entity type, because the service's masking releases them
    /// (text only: the JSON rewriter counts what it masks).
    pub released: BTreeMap<String, u64>,
    /// Entity and pseudonym of each masked value, in order.
    pub findings: Vec<Finding>,
    /// Text samples: the values the scan accepted, where, and how confidently.
    pub detections: Vec<Detection>,
}

/// Why a sample could not be redacted.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error("the sample is not valid UTF-8 (byte {0}); use --format json for JSON with escapes")]
    NotUtf8(usize),
    #[error(
        "refused as the agent refuses a JSON response that is not valid JSON: {0} \
         (--format text reads the sample as plain text)"
    )]
    Json(super::json::JsonError),
}

/// Redacts `input` with the engine's own masking (the service's `[services.redact]`).
pub fn redact_sample(
    engine: &Engine,
    input: &[u8],
    format: SampleFormat,
) -> Result<SampleReport, SampleError> {
    let json = match format {
        SampleFormat::Json => true,
        SampleFormat::Text => false,
        SampleFormat::Auto => input
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| matches!(b, b'{' | b'[' | b'"')),
    };
    if json {
        let redactor: Arc<dyn TextRedactor> = Arc::new(engine.clone());
        let (out, summary) =
            redact_json(redactor, JsonLimits::default(), input).map_err(SampleError::Json)?;
        return Ok(SampleReport {
            format: "json",
            // The rewriter's output is UTF-8 as its input was (checked by it).
            output: String::from_utf8_lossy(&out).into_owned(),
            masked: summary.counts,
            released: BTreeMap::new(),
            findings: summary.findings,
            detections: Vec::new(),
        });
    }
    let text = std::str::from_utf8(input).map_err(|e| SampleError::NotUtf8(e.valid_up_to()))?;
    let detections = engine
        .scan(text)
        .into_iter()
        .map(|m| Detection {
            entity: m.entity.to_string(),
            start: m.start,
            end: m.end,
            confidence: m.confidence,
            value: text.get(m.start..m.end).unwrap_or_default().to_string(),
        })
        .collect();
    let r = engine.redact_with(text, engine.default_view());
    let widen = |m: BTreeMap<String, u32>| m.into_iter().map(|(k, v)| (k, u64::from(v))).collect();
    Ok(SampleReport {
        format: "text",
        output: r.text,
        masked: widen(r.counts),
        released: widen(r.released_in_clear),
        findings: r.findings,
        detections,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redact::engine::{EngineConfig, PseudonymKey};

    fn engine(cfg: &str) -> Engine {
        let cfg: EngineConfig = toml::from_str(cfg).unwrap();
        Engine::new(&cfg, PseudonymKey::new([7; 32])).unwrap()
    }

    #[test]
    fn text_samples_are_redacted_as_the_service_masks_them_and_explained() {
        let e = engine(
            "masking = { CARD = \"partial\" }\nclear = [\"PHONE\"]\n\
             [[custom]]\nentity = \"TICKET\"\npattern = \"TCK-[0-9]{6}\"\n",
        );
        let input = "mail jane.doe@example.com, card 4111 1111 1111 1111, \
                     call +44 20 7946 0958, ticket TCK-123456";
        let r = redact_sample(&e, input.as_bytes(), SampleFormat::Auto).unwrap();
        assert_eq!(r.format, "text");
        assert_eq!(r.output, e.redact_with(input, e.default_view()).text);
        assert!(r.output.starts_with("mail [EMAIL:"), "{}", r.output);
        assert!(r.output.contains("card ****1111"), "{}", r.output);
        assert!(r.output.contains("call +44 20 7946 0958"), "{}", r.output);
        assert!(r.output.contains("ticket [TICKET:"), "{}", r.output);
        assert_eq!(r.masked["EMAIL"], 1);
        assert_eq!(r.masked["CARD"], 1);
        assert_eq!(r.masked["TICKET"], 1);
        assert_eq!(r.released["PHONE"], 1);
        assert_eq!(r.findings.len(), 3);
        let found: Vec<(&str, &str)> = r
            .detections
            .iter()
            .map(|d| (d.entity.as_str(), d.value.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                ("EMAIL", "jane.doe@example.com"),
                ("CARD", "4111 1111 1111 1111"),
                ("PHONE", "+44 20 7946 0958"),
                ("TICKET", "TCK-123456"),
            ]
        );
        for d in &r.detections {
            assert_eq!(&input[d.start..d.end], d.value);
            assert!(d.confidence >= 0.5 && d.confidence <= 1.0, "{d:?}");
        }
    }

    #[test]
    fn json_samples_go_through_the_rewriter_with_keys_as_labels() {
        let e = engine("default_mask = \"remove\"\n");
        // A bare BSN is only personal under its key; the structure stays as it is.
        let input = br#"{"bsn": "111222333", "note": "mail a.b@example.com", "n": [1, true]}"#;
        let r = redact_sample(&e, input, SampleFormat::Auto).unwrap();
        assert_eq!(r.format, "json");
        assert_eq!(
            r.output,
            r#"{"bsn": "[NL_BSN]", "note": "mail [EMAIL]", "n": [1, true]}"#
        );
        assert_eq!(r.masked["NL_BSN"], 1);
        assert_eq!(r.masked["EMAIL"], 1);
        assert!(r.detections.is_empty());
        // The same number alone has no context: left as it is.
        let t = redact_sample(&e, b"111222333", SampleFormat::Auto).unwrap();
        assert_eq!((t.format, t.output.as_str()), ("text", "111222333"));
        assert!(t.masked.is_empty());
        // A JSON string document is a document too.
        let s = redact_sample(&e, br#" "mail a.b@example.com""#, SampleFormat::Auto).unwrap();
        assert_eq!(s.output, r#" "mail [EMAIL]""#);
    }

    #[test]
    fn bad_samples_get_a_clear_error() {
        let e = engine("");
        let err = redact_sample(&e, b"{\"a\": \"x\",}", SampleFormat::Auto).unwrap_err();
        assert!(matches!(err, SampleError::Json(_)), "{err}");
        assert!(err.to_string().contains("at byte"), "{err}");
        let err = redact_sample(&e, b"caf\xc3 ok", SampleFormat::Text).unwrap_err();
        assert!(err.to_string().contains("byte 3"), "{err}");
        assert_eq!(
            redact_sample(&e, b"  ", SampleFormat::Auto).unwrap().format,
            "text"
        );
    }
}
