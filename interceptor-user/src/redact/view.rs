//! One exchange's redactor: a service's engine with the masking the policy decided for the
//! caller (the deciding grant's `masking` and `release` over the service's own settings), and
//! redaction of request parameters before they are written to a log or an audit record.
use std::sync::Arc;

use serde_json::Value;

use super::{
    Finding, Head, Sieve, TextRedactor,
    engine::{Engine, MaskMode, MaskView},
    json::key_label,
};

/// A service's engine seen through one role's [`MaskView`].
pub struct ViewRedactor {
    engine: Engine,
    view: MaskView,
}

impl ViewRedactor {
    pub fn new(engine: Engine, view: MaskView) -> ViewRedactor {
        ViewRedactor { engine, view }
    }
}

impl TextRedactor for ViewRedactor {
    fn max_match_len(&self) -> usize {
        self.engine.max_match_len()
    }
    fn context_reach(&self) -> usize {
        self.engine.context_reach()
    }
    fn masks_numbers(&self) -> bool {
        self.engine.masks_numbers()
    }
    fn masks_keys(&self) -> bool {
        self.engine.masks_keys()
    }
    fn masks_whole(&self, label: &str) -> bool {
        self.engine.masks_whole(label)
    }
    fn sieve(&self, text: &str) -> Option<Box<dyn Sieve>> {
        // Which values match does not depend on the view (only how they are masked).
        TextRedactor::sieve(&self.engine, text)
    }
    fn redact(&self, text: &str) -> (String, Vec<Finding>) {
        let r = self.engine.redact_with(text, &self.view);
        (r.text, r.findings)
    }
    fn redact_labelled<'t>(
        &self,
        label: Option<&str>,
        text: &'t str,
    ) -> (std::borrow::Cow<'t, str>, Vec<Finding>) {
        self.engine
            .redact_field_findings(label.unwrap_or(""), text, &self.view)
    }
    fn redact_head<'t>(
        &self,
        label: Option<&str>,
        text: &'t str,
        holdback: usize,
    ) -> Option<Head<'t>> {
        // The engine cuts in one pass with this view; it verifies when it cannot.
        self.engine
            .cut_head_for(label.unwrap_or(""), text, holdback, &self.view)
            .or_else(|| super::json::verified_head(self, label, text, holdback))
    }
}

/// The view of one grant: the service's view with the grant's modes and releases on top.
pub fn view_for(base: &MaskView, masking: &[(String, MaskMode)], release: &[String]) -> MaskView {
    let mut v = base.clone();
    for (entity, mode) in masking {
        v.masking.insert(entity.clone(), *mode);
    }
    v.clear.extend(release.iter().cloned());
    v
}

/// The view for a request of several messages decided by different grants (a batch): the
/// response is one body, so it gets only what every grant allows. Releases are intersected;
/// mask modes are the grants' when they agree, the service's otherwise.
#[allow(clippy::type_complexity)] // merged from main as is; clippy -D warnings refused it
pub fn common_view(base: &MaskView, grants: &[(&[(String, MaskMode)], &[String])]) -> MaskView {
    let Some((first, rest)) = grants.split_first() else {
        return base.clone();
    };
    let release: Vec<String> = first
        .1
        .iter()
        .filter(|e| rest.iter().all(|g| g.1.contains(e)))
        .cloned()
        .collect();
    let masking: &[(String, MaskMode)] = if rest.iter().all(|g| g.0 == first.0) {
        first.0
    } else {
        &[]
    };
    view_for(base, masking, &release)
}

/// Largest redacted parameter document kept in a record; bigger ones are summarised.
pub const MAX_RECORDED_PARAMS: usize = 64 * 1024;

/// A request's `params` as they may be recorded: every string (keys included) redacted, the
/// `_meta` envelope left out. Documents larger than [`MAX_RECORDED_PARAMS`] once redacted are
/// replaced by `{"truncated": true, "bytes": N}` so a record never grows with a request.
pub fn recordable_params(r: &dyn TextRedactor, params: &Value) -> (Value, Vec<Finding>) {
    let mut findings = Vec::new();
    let v = match params {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| k.as_str() != "_meta")
                .map(|(k, v)| match (k.as_str(), completion_argument(v)) {
                    // `completion/complete`: the value is the argument named beside it.
                    ("argument", Some((name, value))) => {
                        let a = v.as_object().into_iter().flatten().map(|(ak, av)| {
                            if ak == "value" {
                                let red =
                                    redact_string(r, 0, key_label(name), value, &mut findings);
                                (ak.clone(), Value::String(red))
                            } else {
                                member(r, 0, ak, av, &mut findings)
                            }
                        });
                        (k.clone(), Value::Object(a.collect()))
                    }
                    _ => member(r, 0, k, v, &mut findings),
                })
                .collect(),
        ),
        other => redact_value(r, other, &mut findings),
    };
    let len = serde_json::to_vec(&v).map(|b| b.len()).unwrap_or(0);
    if len > MAX_RECORDED_PARAMS {
        return (
            serde_json::json!({"truncated": true, "bytes": len}),
            findings,
        );
    }
    (v, findings)
}

/// Every string of a JSON value redacted (object keys too), and every number that is personal
/// data (recorded as its mask), structure otherwise unchanged. A member's
/// value is redacted under its key, as the response side does ([`json::redact_value`]): in a
/// record too, `{"bsn": "111222333"}` is a BSN although `111222333` alone is not.
///
/// [`json::redact_value`]: super::json::redact_value
pub fn redact_value(r: &dyn TextRedactor, v: &Value, findings: &mut Vec<Finding>) -> Value {
    labelled(r, 0, v, None, findings)
}

/// The `name` and `value` of a `completion/complete` argument (`{"name": "bsn", "value":
/// "1112"}`), when both are strings.
fn completion_argument(v: &Value) -> Option<(&str, &str)> {
    Some((v.get("name")?.as_str()?, v.get("value")?.as_str()?))
}

/// [`redact_value`] under `label` (the key of the member holding `v`; for array elements, of
/// the member holding the array).
fn labelled(
    r: &dyn TextRedactor,
    level: u8,
    v: &Value,
    label: Option<&str>,
    findings: &mut Vec<Finding>,
) -> Value {
    match v {
        Value::String(s) => Value::String(redact_string(r, level, label, s, findings)),
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|v| labelled(r, level, v, label, findings))
                .collect(),
        ),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| member(r, level, k, v, findings))
                .collect(),
        ),
        // A record need not keep a number a number: one that is personal data under its key
        // (`{"bsn": 111222333}`, a card number sent as a number) is recorded as its mask.
        Value::Number(n) => {
            let text = n.to_string();
            let (red, mut f) = r.redact_labelled(label, &text);
            if f.is_empty() {
                v.clone()
            } else {
                findings.append(&mut f);
                Value::String(red.into_owned())
            }
        }
        other => other.clone(),
    }
}

/// An object member redacted: its key without a label, its value under the key.
fn member(
    r: &dyn TextRedactor,
    level: u8,
    k: &str,
    v: &Value,
    findings: &mut Vec<Finding>,
) -> (String, Value) {
    (
        redact_str(r, None, k, findings),
        labelled(r, level, v, key_label(k), findings),
    )
}

/// A string value redacted under its label; one that holds a JSON document (a tool's
/// argument carrying a serialised record) first as that document, with these rules a level
/// deeper, and what remains then as text, as the response side does
/// ([`JsonRedactor`](super::json::JsonRedactor)). The document is written back compact only
/// when something in it was masked.
fn redact_string(
    r: &dyn TextRedactor,
    level: u8,
    label: Option<&str>,
    s: &str,
    findings: &mut Vec<Finding>,
) -> String {
    if let Some(docs) = super::json::embedded_documents(s, level) {
        let mut inner = Vec::new();
        let red: Vec<Value> = docs
            .iter()
            .map(|doc| labelled(r, level + 1, doc, None, &mut inner))
            .collect();
        if !inner.is_empty() {
            findings.append(&mut inner);
            return redact_str(r, label, &super::json::write_documents(&red), findings);
        }
    }
    redact_str(r, label, s, findings)
}

fn redact_str(
    r: &dyn TextRedactor,
    label: Option<&str>,
    s: &str,
    findings: &mut Vec<Finding>,
) -> String {
    let (out, mut f) = r.redact_labelled(label, s);
    findings.append(&mut f);
    out.into_owned()
}

/// Masking of the request side for a record, independent of who asked: the service's engine
/// with nothing released (a log must not hold what a role may see in clear).
pub fn for_records(engine: &Engine) -> Arc<dyn TextRedactor> {
    let mut view = engine.default_view().clone();
    view.clear.clear();
    Arc::new(ViewRedactor::new(engine.clone(), view))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redact::engine::{EngineConfig, PseudonymKey};
    use serde_json::json;

    fn engine() -> Engine {
        Engine::new(&EngineConfig::default(), PseudonymKey::new([7; 32])).unwrap()
    }

    #[test]
    fn grant_view_overrides_modes_and_releases() {
        let base = engine().default_view().clone();
        let v = view_for(
            &base,
            &[("EMAIL".into(), MaskMode::Remove)],
            &["PHONE".into()],
        );
        let r = ViewRedactor::new(engine(), v);
        let (out, f) = r.redact("mail jane.doe@example.com or call +44 20 7946 0958");
        assert!(out.contains("[EMAIL]"), "{out}");
        assert!(out.contains("+44 20 7946 0958"), "released in clear: {out}");
        assert!(f.iter().any(|f| &*f.entity == "EMAIL"));
    }

    #[test]
    fn a_role_view_keeps_json_keys_as_labels() {
        // A BSN passes its 11-test but is only recognised with its label (see the engine).
        let base = engine().default_view().clone();
        let v = view_for(&base, &[], &["PHONE".into()]);
        let r = ViewRedactor::new(engine(), v);
        let (plain, _) = r.redact_labelled(None, "111222333");
        assert_eq!(plain, "111222333");
        let (out, f) = r.redact_labelled(Some("bsn"), "111222333");
        assert_ne!(out, "111222333", "labelled: masked");
        assert!(f.iter().any(|f| &*f.entity == "NL_BSN"), "{f:?}");
        // Through the JSON rewriter, as the agent uses it.
        let mut j = crate::redact::json::JsonRedactor::new(
            std::sync::Arc::new(ViewRedactor::new(engine(), base)),
            crate::redact::json::JsonLimits::default(),
        );
        let mut o = Vec::new();
        j.push(br#"{"bsn":"111222333"}"#, &mut o).unwrap();
        j.finish(&mut o).unwrap();
        assert!(!String::from_utf8_lossy(&o).contains("111222333"));
    }

    #[test]
    fn recorded_params_are_redacted_under_their_keys() {
        // Values only recognised with their key (a BSN, a PESEL, a date of birth, a
        // passport number) were recorded in clear: each string was redacted alone.
        let r = for_records(&engine());
        let params = json!({
            "name": "lookup",
            "arguments": {
                "bsn": "111222333",
                "pesel": "44051401359",
                "dob": "1985-03-12",
                "passports": ["C01X00T47"],
                "customer": {"email": "jane.doe@example.com", "note": "111222333"},
            },
            "_meta": {"progressToken": 1},
        });
        let (v, f) = recordable_params(r.as_ref(), &params);
        let out = v.to_string();
        assert_ne!(v["arguments"]["bsn"], "111222333", "{out}");
        for value in ["44051401359", "1985-03-12", "C01X00T47", "jane.doe"] {
            assert!(!out.contains(value), "{value} in clear: {out}");
        }
        // A value under a key that says nothing stays as it is, as the response side leaves
        // it (the same number under `note`).
        assert_eq!(v["arguments"]["customer"]["note"], "111222333", "{out}");
        assert_eq!(v["name"], "lookup");
        assert!(v.get("_meta").is_none());
        let mut entities: Vec<&str> = f.iter().map(|f| &*f.entity).collect();
        entities.sort_unstable();
        assert_eq!(
            entities,
            ["DOB", "EMAIL", "NL_BSN", "PASSPORT", "PL_PESEL"],
            "{out}"
        );
        // The same labels as the response side's redaction of a parsed document.
        let mut args = params["arguments"].clone();
        let g = crate::redact::json::redact_value(&mut args, r.as_ref());
        assert_eq!(v["arguments"], args);
        assert_eq!(f.len(), g.len());
    }

    #[test]
    fn a_completion_value_is_redacted_under_the_name_of_its_argument() {
        // `{"argument": {"name": "bsn", "value": "111222333"}}`: the label of the value is
        // the argument's name, not the key `value`.
        let r = for_records(&engine());
        let params = json!({
            "ref": {"type": "ref/prompt", "name": "lookup"},
            "argument": {"name": "bsn", "value": "111222333"},
            "context": {"arguments": {"pesel": "44051401359"}},
        });
        let (v, found) = recordable_params(&*r, &params);
        let s = v.to_string();
        assert!(
            !s.contains("111222333") && !s.contains("44051401359"),
            "{s}"
        );
        assert_eq!(v["argument"]["name"], "bsn", "{s}");
        assert_eq!(found.len(), 2, "{s}");
    }

    #[test]
    fn personal_numbers_are_recorded_as_their_masks() {
        let r = for_records(&engine());
        let params = json!({"arguments": {
            "bsn": 111222333,
            "count": 111222333,
            "card": 4111111111111111u64,
            "limit": 100,
            "ratio": 0.5,
        }});
        let (v, found) = recordable_params(&*r, &params);
        let a = &v["arguments"];
        assert!(
            a["bsn"].as_str().is_some_and(|s| s.starts_with("[NL_BSN")),
            "{v}"
        );
        assert!(
            a["card"].as_str().is_some_and(|s| s.starts_with("[CARD")),
            "{v}"
        );
        assert_eq!(a["count"], 111222333, "{v}");
        assert_eq!(a["limit"], 100, "{v}");
        assert_eq!(a["ratio"], 0.5, "{v}");
        assert_eq!(found.len(), 2, "{v}");
    }

    #[test]
    fn batch_view_releases_only_what_every_grant_releases() {
        let base = engine().default_view().clone();
        let a: Vec<(String, MaskMode)> = vec![("EMAIL".into(), MaskMode::Remove)];
        let b: Vec<(String, MaskMode)> = vec![];
        let ra = vec!["PHONE".to_string(), "EMAIL".to_string()];
        let rb = vec!["PHONE".to_string()];
        let v = common_view(&base, &[(&a, &ra), (&b, &rb)]);
        assert!(v.clear.contains("PHONE"));
        assert!(!v.clear.contains("EMAIL"));
        assert_eq!(
            v.mode("EMAIL"),
            base.mode("EMAIL"),
            "modes disagree: service's"
        );
        let one = common_view(&base, &[(&a, &ra)]);
        assert!(one.clear.contains("EMAIL"));
    }

    #[test]
    fn params_are_redacted_without_meta_and_bounded() {
        let r = for_records(&engine());
        let params = json!({
            "name": "customer_lookup",
            "arguments": {"email": "jane.doe@example.com", "ids": [1, "jane.doe@example.com"]},
            "_meta": {"progressToken": 3}
        });
        let (v, f) = recordable_params(r.as_ref(), &params);
        let s = v.to_string();
        assert!(!s.contains("jane.doe"), "{s}");
        assert!(v.get("_meta").is_none(), "{s}");
        assert_eq!(v["name"], "customer_lookup");
        assert_eq!(v["arguments"]["ids"][0], 1);
        assert_eq!(f.len(), 2);
        let big = json!({"arguments": {"blob": "x".repeat(MAX_RECORDED_PARAMS + 10)}});
        let (v, _) = recordable_params(r.as_ref(), &big);
        assert_eq!(v["truncated"], true, "{v}");
    }

    #[test]
    fn records_never_release() {
        let mut cfg = EngineConfig::default();
        cfg.clear.insert("EMAIL".into());
        let e = Engine::new(&cfg, PseudonymKey::new([7; 32])).unwrap();
        let (v, _) = recordable_params(
            for_records(&e).as_ref(),
            &json!({"uri": "customers://jane.doe@example.com"}),
        );
        assert!(!v.to_string().contains("jane.doe"), "{v}");
    }
}
