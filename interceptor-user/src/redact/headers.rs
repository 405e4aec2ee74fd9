//! Response headers of a redacting service: every value that can carry data is redacted as a
//! text, with the header's name as its label, before the response head leaves.
//!
//! A server can put personal data in a header as well as in a body (`Content-Disposition:
//! attachment; filename="jane.doe@example.com.csv"`, `X-User: ...`, a `Location` or `Link`
//! naming a person). Only the headers that frame the exchange or that the caller must get back
//! as they were pass untouched ([`PASSED`]): changing a length, a session id, a cookie or an
//! authentication challenge would break the caller without protecting anyone. A value that is
//! not UTF-8 text cannot be read, so cannot be redacted: it is dropped, not passed.

use http::{HeaderMap, HeaderValue, header::HeaderName};

use super::TextRedactor;
use super::json::{MAX_FINDINGS, Summary};

/// Headers passed as they are (lower case): framing, protocol state, caching, and what the
/// caller must send back or follow unchanged (cookies, authentication challenges, CORS).
pub const PASSED: &[&str] = &[
    "content-type",
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "trailer",
    "date",
    "age",
    "cache-control",
    "pragma",
    "expires",
    "etag",
    "last-modified",
    "vary",
    "accept-ranges",
    "content-range",
    "retry-after",
    "mcp-session-id",
    "mcp-protocol-version",
    "set-cookie",
    "www-authenticate",
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "access-control-allow-headers",
    "access-control-allow-methods",
    "access-control-expose-headers",
    "access-control-max-age",
    "strict-transport-security",
    "content-security-policy",
    "x-content-type-options",
    "x-frame-options",
    "referrer-policy",
    "server",
];

/// What [`redact_headers`] did.
#[derive(Debug, Default)]
pub struct HeaderRedaction {
    /// What was masked, as for a body.
    pub summary: Summary,
    /// Headers whose value was not UTF-8 text: removed.
    pub dropped: Vec<HeaderName>,
}

/// Redacts `headers` in place (see the module docs).
pub fn redact_headers(headers: &mut HeaderMap, redactor: &dyn TextRedactor) -> HeaderRedaction {
    let mut done = HeaderRedaction::default();
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| !PASSED.contains(&n.as_str()))
        .cloned()
        .collect();
    for name in names {
        let mut values = Vec::new();
        let mut changed = false;
        let mut unreadable = false;
        for v in headers.get_all(&name) {
            let Ok(text) = std::str::from_utf8(v.as_bytes()) else {
                unreadable = true;
                break;
            };
            let (red, findings) = redactor.redact_labelled(Some(name.as_str()), text);
            done.summary.record(findings, MAX_FINDINGS);
            if red != text {
                changed = true;
                // Masks are printable ASCII, and the rest is the value's own text.
                match HeaderValue::from_bytes(red.as_bytes()) {
                    Ok(h) => values.push(h),
                    Err(_) => {
                        unreadable = true;
                        break;
                    }
                }
            } else {
                values.push(v.clone());
            }
        }
        if unreadable {
            headers.remove(&name);
            done.dropped.push(name);
        } else if changed {
            done.summary.strings_redacted += 1;
            headers.remove(&name);
            for v in values {
                headers.append(name.clone(), v);
            }
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redact::engine::{Engine, PseudonymKey};

    fn engine() -> Engine {
        Engine::builtin(PseudonymKey::new([3u8; 32]))
    }

    fn map(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn values_that_carry_data_are_masked_and_framing_passes() {
        let e = engine();
        let mut h = map(&[
            ("content-type", b"text/plain"),
            (
                "content-disposition",
                b"attachment; filename=\"jane.doe@example.com.csv\"",
            ),
            ("x-caller", b"jane.doe@example.com"),
            ("x-caller", b"nobody"),
            ("x-account", b"GB82 WEST 1234 5698 7654 32"),
            ("mcp-session-id", b"a2f9c0d1e2"),
            ("set-cookie", b"last=jane.doe@example.com"),
            ("x-request-id", b"7f3a9c"),
        ]);
        let done = redact_headers(&mut h, &e);
        let get = |n: &str| -> Vec<String> {
            h.get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect()
        };
        let disposition = get("content-disposition").join("|");
        assert!(
            disposition.starts_with("attachment; filename=\"[EMAIL:")
                && !disposition.contains("jane"),
            "{disposition}"
        );
        let caller = get("x-caller");
        assert_eq!(caller.len(), 2, "{caller:?}");
        assert!(
            caller[0].starts_with("[EMAIL:") && caller[1] == "nobody",
            "{caller:?}"
        );
        assert!(
            !get("x-account")[0].contains("WEST"),
            "{:?}",
            get("x-account")
        );
        // Framing and what the caller sends back pass as they were.
        assert_eq!(get("content-type"), ["text/plain"]);
        assert_eq!(get("mcp-session-id"), ["a2f9c0d1e2"]);
        assert_eq!(get("set-cookie"), ["last=jane.doe@example.com"]);
        assert_eq!(get("x-request-id"), ["7f3a9c"]);
        assert_eq!(done.summary.total(), 3, "{:?}", done.summary);
        assert_eq!(done.summary.counts.get("EMAIL"), Some(&2));
        assert!(done.dropped.is_empty());
    }

    #[test]
    fn a_value_that_is_not_utf8_is_dropped() {
        let e = engine();
        let mut h = map(&[
            ("x-note", b"caf\xe9 jane.doe@example.com"),
            ("x-other", b"plain"),
        ]);
        let done = redact_headers(&mut h, &e);
        assert!(h.get("x-note").is_none());
        assert_eq!(done.dropped, ["x-note"]);
        assert_eq!(h.get("x-other").unwrap(), "plain");
    }

    #[test]
    fn the_header_name_is_the_label() {
        // A BSN is only a BSN after its label.
        let e = engine();
        let mut h = map(&[("x-bsn", b"111222333"), ("x-count", b"111222333")]);
        redact_headers(&mut h, &e);
        assert!(
            h.get("x-bsn")
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("[NL_BSN")
        );
        assert_eq!(h.get("x-count").unwrap(), "111222333");
    }
}
