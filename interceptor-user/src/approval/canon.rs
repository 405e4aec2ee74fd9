//! Canonical JSON and the request hash an approval is bound to.
//!
//! # Canonical form
//!
//! RFC 8785 (JSON Canonicalization Scheme), with one deliberate difference for numbers:
//!
//! * no insignificant whitespace;
//! * object members sorted by the UTF-16 code units of their names (duplicate names cannot
//!   occur: the agent's JSON parser refuses them);
//! * strings as ECMAScript `JSON.stringify` writes them: `"` and `\` escaped, `\b \t \n \f \r`
//!   as short escapes, the other control characters as `\u00xx` (lower-case hex), everything
//!   else as literal UTF-8;
//! * `true`, `false`, `null`;
//! * numbers: integers the parser holds exactly (64-bit signed or unsigned) are written as
//!   their decimal digits; other numbers as ECMAScript's `Number.prototype.toString` writes the
//!   double (shortest round-trip digits: `1.5`, `1e+21`, `5e-324`), which is exactly JCS.
//!   **Difference:** JCS would write a 64-bit integer above 2^53 as the nearest double; we
//!   keep it exact (so `9007199254740993` and `9007199254740992` hash differently, as a
//!   server reading integers exactly would see them). A non-integer-typed number of magnitude
//!   2^53 or more (e.g. `1e20`, or an integer literal beyond 64 bits) is *refused*
//!   ([`CanonError::AmbiguousNumber`]): distinct texts map to the same double there, and a
//!   server with arbitrary-precision integers would see a different value than the one
//!   approved.
//!
//! # Request hash
//!
//! `SHA-256("interceptor-approval-v1\n" || canonical(H))`, lower-case hex, where `H` is
//!
//! ```json
//! {"caller": {"client_id": "mcp-cli" | null, "issuer": "https://idp", "subject": "bob"},
//!  "method": "tools/call", "params": { ...params without "_meta"... } | null,
//!  "service": "crm", "target": "export_customers" | null}
//! ```
//!
//! `params._meta` (progress token, protocol version, client info) is left out: it changes
//! from one attempt to the next without changing what the call does. Everything else in
//! `params` (tool name, every argument, task options) is in.
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Domain separation prefix of the request hash.
pub const HASH_DOMAIN: &str = "interceptor-approval-v1\n";

/// 2^53: above this, doubles no longer hold every integer.
const EXACT_DOUBLE_LIMIT: f64 = 9_007_199_254_740_992.0;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonError {
    #[error(
        "the number {0} cannot be bound exactly to an approval (numbers of magnitude 2^53 or more must be 64-bit integers; send larger values as strings)"
    )]
    AmbiguousNumber(String),
}

/// The canonical text of `v` (see the module documentation).
pub fn canonical(v: &Value) -> Result<String, CanonError> {
    let mut out = String::new();
    write_value(&mut out, v)?;
    Ok(out)
}

fn write_value(out: &mut String, v: &Value) -> Result<(), CanonError> {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.push_str(&i.to_string());
            } else if let Some(u) = n.as_u64() {
                out.push_str(&u.to_string());
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                if !f.is_finite() || f.abs() >= EXACT_DOUBLE_LIMIT {
                    return Err(CanonError::AmbiguousNumber(n.to_string()));
                }
                out.push_str(&es_number(f));
            }
        }
        Value::String(s) => write_string(out, s),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, x)?;
            }
            out.push(']');
        }
        Value::Object(m) => write_object(out, m)?,
    }
    Ok(())
}

fn write_object(out: &mut String, m: &Map<String, Value>) -> Result<(), CanonError> {
    let mut keys: Vec<&String> = m.keys().collect();
    keys.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
    out.push('{');
    for (i, k) in keys.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(out, k);
        out.push(':');
        write_value(out, &m[k.as_str()])?;
    }
    out.push('}');
    Ok(())
}

fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// ECMAScript `Number.prototype.toString()` of a finite double (ECMA-262 Number::toString,
/// radix 10), as RFC 8785 requires.
pub fn es_number(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    if v < 0.0 {
        return format!("-{}", es_number(-v));
    }
    // Rust's `{:e}` writes the shortest digits that round-trip: "d.ddddde<exp>".
    let sci = format!("{v:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let exp: i64 = exp.parse().unwrap_or(0);
    let k = digits.len() as i64;
    let n = exp + 1;
    if k <= n && n <= 21 {
        format!("{digits}{}", "0".repeat((n - k) as usize))
    } else if 0 < n && n <= 21 {
        format!("{}.{}", &digits[..n as usize], &digits[n as usize..])
    } else if -6 < n && n <= 0 {
        format!("0.{}{digits}", "0".repeat((-n) as usize))
    } else {
        let e = n - 1;
        let sign = if e >= 0 { '+' } else { '-' };
        let (first, rest) = digits.split_at(1);
        if rest.is_empty() {
            format!("{first}e{sign}{}", e.abs())
        } else {
            format!("{first}.{rest}e{sign}{}", e.abs())
        }
    }
}

/// Who asked, as far as the request hash is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerId<'a> {
    pub issuer: &'a str,
    pub subject: &'a str,
    pub client_id: Option<&'a str>,
}

/// `params` without `_meta` (None when the message has no params).
pub fn params_without_meta(params: Option<&Value>) -> Option<Value> {
    match params? {
        Value::Object(m) => {
            let mut m = m.clone();
            m.remove("_meta");
            Some(Value::Object(m))
        }
        other => Some(other.clone()),
    }
}

/// The request hash (see the module documentation).
pub fn request_hash(
    caller: &CallerId<'_>,
    service: &str,
    method: &str,
    target: Option<&str>,
    params: Option<&Value>,
) -> Result<String, CanonError> {
    let h = serde_json::json!({
        "caller": {
            "client_id": caller.client_id,
            "issuer": caller.issuer,
            "subject": caller.subject,
        },
        "method": method,
        "params": params_without_meta(params),
        "service": service,
        "target": target,
    });
    let text = canonical(&h)?;
    let mut d = Sha256::new();
    d.update(HASH_DOMAIN.as_bytes());
    d.update(text.as_bytes());
    Ok(hex::encode(d.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bits(b: u64) -> String {
        es_number(f64::from_bits(b))
    }

    #[test]
    fn numbers_as_ecmascript_writes_them_rfc_8785_vectors() {
        // RFC 8785 Appendix B (the IEEE 754 values and their expected text).
        assert_eq!(bits(0x0000_0000_0000_0000), "0");
        assert_eq!(bits(0x8000_0000_0000_0000), "0");
        assert_eq!(bits(0x0000_0000_0000_0001), "5e-324");
        assert_eq!(bits(0x8000_0000_0000_0001), "-5e-324");
        assert_eq!(bits(0x7fef_ffff_ffff_ffff), "1.7976931348623157e+308");
        assert_eq!(bits(0xffef_ffff_ffff_ffff), "-1.7976931348623157e+308");
        assert_eq!(bits(0x4340_0000_0000_0000), "9007199254740992");
        assert_eq!(bits(0xc340_0000_0000_0000), "-9007199254740992");
        assert_eq!(bits(0x4430_0000_0000_0000), "295147905179352830000");
        assert_eq!(bits(0x44b5_2d02_c7e1_4af5), "9.999999999999997e+22");
        assert_eq!(bits(0x44b5_2d02_c7e1_4af6), "1e+23");
        assert_eq!(bits(0x44b5_2d02_c7e1_4af7), "1.0000000000000001e+23");
        assert_eq!(bits(0x444b_1ae4_d6e2_ef4e), "999999999999999700000");
        assert_eq!(bits(0x444b_1ae4_d6e2_ef4f), "999999999999999900000");
        assert_eq!(bits(0x444b_1ae4_d6e2_ef50), "1e+21");
        assert_eq!(bits(0x3eb0_c6f7_a0b5_ed8c), "9.999999999999997e-7");
        assert_eq!(bits(0x3eb0_c6f7_a0b5_ed8d), "0.000001");
        assert_eq!(bits(0x41b3_de43_5555_5553), "333333333.3333332");
        assert_eq!(bits(0x41b3_de43_5555_5554), "333333333.33333325");
        assert_eq!(bits(0x41b3_de43_5555_5555), "333333333.3333333");
        assert_eq!(bits(0x4088_7e00_0000_0000), "783.75");
        // Everyday values.
        assert_eq!(es_number(1.5), "1.5");
        assert_eq!(es_number(0.1), "0.1");
        assert_eq!(es_number(100.0), "100");
        assert_eq!(es_number(1e-7), "1e-7");
        assert_eq!(es_number(123e-9), "1.23e-7");
        assert_eq!(es_number(-0.5), "-0.5");
    }

    #[test]
    fn canonical_form_sorts_keys_and_escapes_like_json_stringify() {
        let v: Value = serde_json::from_str(
            r#"{"numbers": [333333333.33333329, 1E15, 4.50, 2e-3, 0.000001],
                "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"/",
                "literals": [null, true, false]}"#,
        )
        .unwrap();
        assert_eq!(
            canonical(&v).unwrap(),
            r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1000000000000000,4.5,0.002,0.000001],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
        );
        // UTF-16 order: U+20AC ("€") sorts after "\r" and before U+1F600 (a surrogate pair
        // sorts by its lead unit 0xD83D, i.e. *before* U+FB33).
        let v = json!({"\u{20ac}": 1, "\r": 2, "\u{1f600}": 3, "\u{fb33}": 4, "1": 5, "\u{0080}": 6, "\u{00f6}": 7});
        assert_eq!(
            canonical(&v).unwrap(),
            "{\"\\r\":2,\"1\":5,\"\u{0080}\":6,\"\u{00f6}\":7,\"\u{20ac}\":1,\"\u{1f600}\":3,\"\u{fb33}\":4}"
        );
        // Whitespace and key order in the input do not matter.
        let a: Value = serde_json::from_str(r#"{ "b" : [1, 2], "a" : {"y": 1, "x": 2} }"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":{"x":2,"y":1},"b":[1,2]}"#).unwrap();
        assert_eq!(canonical(&a).unwrap(), canonical(&b).unwrap());
    }

    #[test]
    fn integers_stay_exact_and_ambiguous_numbers_are_refused() {
        let v: Value = serde_json::from_str(
            "[9007199254740993, -9223372036854775808, 18446744073709551615, 1.0]",
        )
        .unwrap();
        assert_eq!(
            canonical(&v).unwrap(),
            "[9007199254740993,-9223372036854775808,18446744073709551615,1]"
        );
        for text in ["18446744073709551616", "1e20", "-9.5e300"] {
            let v: Value = serde_json::from_str(text).unwrap();
            assert!(
                matches!(canonical(&v), Err(CanonError::AmbiguousNumber(_))),
                "{text}"
            );
        }
        // Texts that differ as doubles differ in canonical form (correctly rounded parsing).
        for (a, b) in [
            ("0.3", "0.30000000000000004"),
            ("9007199254740991.0", "9007199254740990.0"),
        ] {
            let a: Value = serde_json::from_str(a).unwrap();
            let b: Value = serde_json::from_str(b).unwrap();
            assert_ne!(canonical(&a).unwrap(), canonical(&b).unwrap());
        }
        // Below 2^53 a double is exact: accepted.
        let v: Value = serde_json::from_str("9007199254740991.0").unwrap();
        assert_eq!(canonical(&v).unwrap(), "9007199254740991");
    }

    #[test]
    fn request_hash_binds_caller_service_method_target_and_every_argument() {
        let bob = CallerId {
            issuer: "https://idp",
            subject: "bob",
            client_id: Some("mcp-cli"),
        };
        let params = json!({"name": "export_customers", "arguments": {"limit": 500, "fields": ["email"]}, "_meta": {"progressToken": 1}});
        let h = |c: &CallerId, s: &str, m: &str, t: Option<&str>, p: &Value| {
            request_hash(c, s, m, t, Some(p)).unwrap()
        };
        let base = h(&bob, "crm", "tools/call", Some("export_customers"), &params);
        assert_eq!(base.len(), 64);
        // _meta and key order do not matter...
        let same = json!({"_meta": {"progressToken": "other"}, "arguments": {"fields": ["email"], "limit": 500.0}, "name": "export_customers"});
        assert_eq!(
            base,
            h(&bob, "crm", "tools/call", Some("export_customers"), &same)
        );
        // ...everything else does.
        let mut changed = params.clone();
        changed["arguments"]["limit"] = json!(501);
        assert_ne!(
            base,
            h(
                &bob,
                "crm",
                "tools/call",
                Some("export_customers"),
                &changed
            )
        );
        let mut changed = params.clone();
        changed["arguments"]["fields"] = json!(["email", "phone"]);
        assert_ne!(
            base,
            h(
                &bob,
                "crm",
                "tools/call",
                Some("export_customers"),
                &changed
            )
        );
        let mut changed = params.clone();
        changed["arguments"]["extra"] = json!(null);
        assert_ne!(
            base,
            h(
                &bob,
                "crm",
                "tools/call",
                Some("export_customers"),
                &changed
            )
        );
        let alice = CallerId {
            subject: "alice",
            ..bob.clone()
        };
        assert_ne!(
            base,
            h(
                &alice,
                "crm",
                "tools/call",
                Some("export_customers"),
                &params
            )
        );
        let other_client = CallerId {
            client_id: Some("other"),
            ..bob.clone()
        };
        assert_ne!(
            base,
            h(
                &other_client,
                "crm",
                "tools/call",
                Some("export_customers"),
                &params
            )
        );
        let other_issuer = CallerId {
            issuer: "https://idp2",
            ..bob.clone()
        };
        assert_ne!(
            base,
            h(
                &other_issuer,
                "crm",
                "tools/call",
                Some("export_customers"),
                &params
            )
        );
        assert_ne!(
            base,
            h(&bob, "hr", "tools/call", Some("export_customers"), &params)
        );
        assert_ne!(
            base,
            h(&bob, "crm", "tools/call", Some("export_all"), &params)
        );
        assert_ne!(
            base,
            h(
                &bob,
                "crm",
                "prompts/get",
                Some("export_customers"),
                &params
            )
        );
        // A known value, so that the definition cannot drift silently.
        let fixed = request_hash(
            &CallerId {
                issuer: "https://idp",
                subject: "bob",
                client_id: None,
            },
            "crm",
            "tools/call",
            Some("export_customers"),
            Some(&json!({"name": "export_customers", "arguments": {"limit": 500}})),
        )
        .unwrap();
        let expected = {
            let text = r#"{"caller":{"client_id":null,"issuer":"https://idp","subject":"bob"},"method":"tools/call","params":{"arguments":{"limit":500},"name":"export_customers"},"service":"crm","target":"export_customers"}"#;
            let mut d = Sha256::new();
            d.update(HASH_DOMAIN.as_bytes());
            d.update(text.as_bytes());
            hex::encode(d.finalize())
        };
        assert_eq!(fixed, expected);
    }
}
