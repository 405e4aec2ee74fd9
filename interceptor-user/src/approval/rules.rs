//! Approval rules and approvers, as written in the policy files, validated and matched.
//!
//! Policy files (see [`crate::policy`]) may hold two more kinds of table:
//!
//! ```toml
//! # A person who approves, as known on this host. Acting through `interceptor approvals`
//! # over the control socket, a local user is identified by the kernel (SO_PEERCRED uid).
//! [[approvers]]
//! name = "dana"                    # required; letters, digits, `_`, `-`, `.`; unique
//! uids = [1001]                    # local users acting as this approver (each uid once overall)
//! subjects = ["dana"]              # her token subjects: separation of duties spans both ways in
//! groups = ["dpo"]                 # approver groups she belongs to when acting by uid
//!
//! # Calls that must not run before a person approves that exact call.
//! [[approvals]]
//! name = "bulk-export"             # required; unique; the rule is "<file>:approvals[<name>]"
//! service = "crm"                  # required; a service name or "*"
//! roles = ["analyst"]              # only when this role's grant allowed the call (empty: any role)
//! methods = ["tools/call"]         # required; method patterns as in grants
//! tools = ["export_customers"]     # globs on tool names; empty: every tool
//! resources = []                   # globs on resource URIs; empty: every resource
//! prompts = []                     # globs on prompt names; empty: every prompt
//! when = "limit > 1000"            # constraint expression on params.arguments (optional)
//! approvers = ["dpo"]              # required; approver groups (token groups claim, or
//!                                  # [[approvers]] groups for approvers acting by uid)
//! required = 1                     # approvals from distinct people (1-10, default 1)
//! max_wait = "10m"                 # how long the call is held before it expires (default 15m)
//! valid_for = "5m"                 # how long an approval stays usable by an identical retry
//!                                  # when the caller was gone at approval time (default 5m)
//! max_grant = "1h"                 # longest time-bound grant an approver may issue (default:
//!                                  # none, grants refused)
//! ```
//!
//! Durations are a whole number with a unit: `ms`, `s`, `m`, `h` or `d`.
//!
//! **Matching.** Approval rules are looked at only for calls the policy *allowed*. Rules are
//! taken in file order (files in load order); the first rule that matches holds the call. A
//! rule matches when its service matches, `roles` is empty or names the role whose grant
//! allowed the call, a method pattern matches, the call's tool/resource/prompt matches the
//! list for its kind (an empty list matches every name), and `when` is not *false*. `when`
//! uses the constraint language of grants with its three-valued logic, but fails closed the
//! other way round: a call is held unless the expression is definitely false, so
//! `limit > 1000` holds a call whose `limit` is missing or is the string `"5000"`.
//!
//! Separation of duties: a requester can never approve their own call. The requester is the
//! token subject (with its issuer); an approver is the same person when their token has that
//! subject and issuer, when their `[[approvers]]` entry lists that subject, or (acting by
//! uid) when the call came from a local process of that uid.
use std::collections::HashMap;
use std::time::Duration;

use globset::{GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use toml::Spanned;

use crate::policy::{Expression, MethodPattern, PolicyError, build_glob, line_of};

type S<T> = Spanned<T>;

const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(15 * 60);
const DEFAULT_VALID_FOR: Duration = Duration::from_secs(5 * 60);
const MAX_MAX_WAIT: Duration = Duration::from_secs(7 * 24 * 3600);
const MAX_VALID_FOR: Duration = Duration::from_secs(24 * 3600);
const MAX_GRANT: Duration = Duration::from_secs(7 * 24 * 3600);
pub const MAX_REQUIRED: u32 = 10;

// ---------------------------------------------------------------------------------------------
// File format
// ---------------------------------------------------------------------------------------------

/// `[[approvals]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    name: S<String>,
    service: S<String>,
    #[serde(default)]
    roles: Vec<S<String>>,
    methods: Option<S<Vec<S<String>>>>,
    #[serde(default)]
    tools: Vec<S<String>>,
    #[serde(default)]
    resources: Vec<S<String>>,
    #[serde(default)]
    prompts: Vec<S<String>>,
    when: Option<S<String>>,
    approvers: Option<S<Vec<S<String>>>>,
    required: Option<S<i64>>,
    max_wait: Option<S<String>>,
    valid_for: Option<S<String>>,
    max_grant: Option<S<String>>,
}

/// `[[approvers]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApprover {
    name: S<String>,
    #[serde(default)]
    uids: Vec<S<i64>>,
    #[serde(default)]
    subjects: Vec<S<String>>,
    #[serde(default)]
    groups: Vec<S<String>>,
}

// ---------------------------------------------------------------------------------------------
// Compiled
// ---------------------------------------------------------------------------------------------

/// Globs on names; empty matches everything.
pub struct Globs {
    pub src: Vec<String>,
    set: GlobSet,
}

impl Globs {
    fn matches(&self, name: Option<&str>) -> bool {
        if self.src.is_empty() {
            return true;
        }
        name.is_some_and(|n| self.set.is_match(n))
    }
}

/// One validated `[[approvals]]` rule.
pub struct ApprovalRule {
    pub name: String,
    /// `crm.policy.toml:approvals[bulk-export]`.
    pub rule: String,
    pub service: String,
    pub roles: Vec<String>,
    methods: Vec<MethodPattern>,
    pub tools: Globs,
    pub resources: Globs,
    pub prompts: Globs,
    pub when: Option<Expression>,
    pub approvers: Vec<String>,
    pub required: u32,
    pub max_wait: Duration,
    pub valid_for: Duration,
    pub max_grant: Option<Duration>,
}

/// One validated `[[approvers]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApproverEntry {
    pub name: String,
    pub uids: Vec<u32>,
    pub subjects: Vec<String>,
    pub groups: Vec<String>,
}

/// Every approval rule and approver of a policy set.
#[derive(Default)]
pub struct ApprovalRules {
    rules: Vec<ApprovalRule>,
    approvers: Vec<ApproverEntry>,
}

/// A rule that holds a call, and why.
pub struct Match<'r> {
    pub rule: &'r ApprovalRule,
    /// E.g. `tools/call export_customers when limit > 1000 (limit = 5000)`: for the caller
    /// (the values as sent); logs and records describe the call with
    /// [`ApprovalRule::condition`] of its recorded (redacted) arguments.
    pub matched: String,
}

/// What `policy explain` shows of a rule.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleExplanation {
    pub rule: String,
    pub service: String,
    pub roles: Vec<String>,
    pub methods: Vec<String>,
    pub tools: Vec<String>,
    pub resources: Vec<String>,
    pub prompts: Vec<String>,
    pub when: Option<String>,
    pub approvers: Vec<String>,
    pub required: u32,
    pub max_wait: String,
    pub valid_for: String,
    pub max_grant: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tool,
    Resource,
    Prompt,
    Completion,
    Other,
}

fn kind_of(method: &str) -> Kind {
    match method {
        "tools/call" => Kind::Tool,
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => Kind::Resource,
        "prompts/get" => Kind::Prompt,
        "completion/complete" => Kind::Completion,
        _ => Kind::Other,
    }
}

/// `90s`, `10m`, `2h`, `1d`, `250ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?} has no unit (use ms, s, m, h or d)"))?;
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number with a unit like \"10m\""))?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => None,
    }
    .ok_or_else(|| format!("{s:?}: unknown unit or too large (use ms, s, m, h or d)"))?;
    Ok(Duration::from_millis(ms))
}

/// `1h30m`-style rendering for humans.
pub fn render_duration(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    if ms.is_multiple_of(86_400_000) && ms > 0 {
        format!("{}d", ms / 86_400_000)
    } else if ms.is_multiple_of(3_600_000) && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// `tools/call export_customers when ...`.
pub fn describe_call(method: &str, target: Option<&str>, condition: &str) -> String {
    match target {
        Some(t) => format!("{method} {t}{condition}"),
        None => format!("{method}{condition}"),
    }
}

/// `limit = 5000`, `text = <string:9>`, `limit missing`: the values a `when` looked at, with
/// strings and containers only by size (they end up in logs and webhooks).
pub fn describe_paths(e: &Expression, arguments: Option<&Value>) -> Vec<String> {
    e.path_values(arguments)
        .into_iter()
        .map(|(p, v)| match v {
            Some(v) => format!("{p} = {}", super::event::summarize(v)),
            None => format!("{p} missing"),
        })
        .collect()
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

impl ApprovalRule {
    /// The `when` part of a call's description with the values it looked at in `arguments`:
    /// ` when limit > 1000 (limit = 5000)` (empty without `when`).
    pub fn condition(&self, arguments: Option<&Value>) -> String {
        let Some(w) = &self.when else {
            return String::new();
        };
        let mut condition = self.condition_source();
        let vals = describe_paths(w, arguments);
        if !vals.is_empty() {
            condition.push_str(&format!(" ({})", vals.join(", ")));
        }
        condition
    }

    /// The `when` part without values: ` when limit > 1000` (empty without `when`).
    pub fn condition_source(&self) -> String {
        self.when
            .as_ref()
            .map_or_else(String::new, |w| format!(" when {}", w.source()))
    }

    /// The call this rule held, as logs, approvers and webhooks may read it: its target and
    /// the values the rule looked at as the exchange record holds them (`recorded`: target
    /// and `params`, redacted; a personal number, `{"bsn": 111222333}`, is its mask there).
    /// A record too large keeps no arguments (`{"truncated": true, ...}`): then the condition
    /// without values (not `limit missing`). `sent` is the request's `params` as sent.
    pub fn describe_recorded(
        &self,
        method: &str,
        sent: Option<&Value>,
        recorded: (Option<&str>, Option<&Value>),
    ) -> String {
        let sent_args = sent.and_then(|p| p.get("arguments"));
        let shown_args = recorded.1.and_then(|p| p.get("arguments"));
        let condition = match (shown_args, sent_args) {
            (None, Some(_)) => self.condition_source(),
            _ => self.condition(shown_args),
        };
        describe_call(method, recorded.0, &condition)
    }

    fn matches(
        &self,
        service: &str,
        role: Option<&str>,
        method: &str,
        target: Option<&str>,
        arguments: Option<&Value>,
    ) -> bool {
        if self.service != "*" && self.service != service {
            return false;
        }
        if !self.roles.is_empty() && !role.is_some_and(|r| self.roles.iter().any(|x| x == r)) {
            return false;
        }
        if !self.methods.iter().any(|m| m.matches(method)) {
            return false;
        }
        let target_ok = match kind_of(method) {
            Kind::Tool => self.tools.matches(target),
            Kind::Resource => self.resources.matches(target),
            Kind::Prompt => self.prompts.matches(target),
            Kind::Completion => self.prompts.matches(target) || self.resources.matches(target),
            Kind::Other => true,
        };
        if !target_ok {
            return false;
        }
        // Held unless definitely false (fail closed).
        !self.when.as_ref().is_some_and(|w| w.is_false(arguments))
    }

    pub fn explain(&self) -> RuleExplanation {
        RuleExplanation {
            rule: self.rule.clone(),
            service: self.service.clone(),
            roles: self.roles.clone(),
            methods: self.methods.iter().map(MethodPattern::text).collect(),
            tools: self.tools.src.clone(),
            resources: self.resources.src.clone(),
            prompts: self.prompts.src.clone(),
            when: self.when.as_ref().map(|w| w.source().to_string()),
            approvers: self.approvers.clone(),
            required: self.required,
            max_wait: render_duration(self.max_wait),
            valid_for: render_duration(self.valid_for),
            max_grant: self.max_grant.map(render_duration),
        }
    }

    /// Whether someone in `groups` may decide on calls this rule holds.
    pub fn approvable_by(&self, groups: &[String]) -> bool {
        groups.iter().any(|g| self.approvers.contains(g))
    }
}

impl ApprovalRules {
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn rules(&self) -> &[ApprovalRule] {
        &self.rules
    }

    pub fn approvers(&self) -> &[ApproverEntry] {
        &self.approvers
    }

    /// The first rule that holds this (allowed) call.
    pub fn find(
        &self,
        service: &str,
        role: Option<&str>,
        method: &str,
        target: Option<&str>,
        arguments: Option<&Value>,
    ) -> Option<Match<'_>> {
        let rule = self
            .rules
            .iter()
            .find(|r| r.matches(service, role, method, target, arguments))?;
        let matched = describe_call(method, target, &rule.condition(arguments));
        Some(Match { rule, matched })
    }

    /// Rules that apply to `service`, in order.
    pub fn for_service<'a>(&'a self, service: &'a str) -> impl Iterator<Item = &'a ApprovalRule> {
        self.rules
            .iter()
            .filter(move |r| r.service == "*" || r.service == service)
    }

    pub fn approver_by_uid(&self, uid: u32) -> Option<&ApproverEntry> {
        self.approvers.iter().find(|a| a.uids.contains(&uid))
    }

    pub fn approver_by_subject(&self, subject: &str) -> Option<&ApproverEntry> {
        self.approvers
            .iter()
            .find(|a| a.subjects.iter().any(|s| s == subject))
    }

    /// Whether `groups` make someone an approver of any rule.
    pub fn is_approver_group_member(&self, groups: &[String]) -> bool {
        self.rules.iter().any(|r| r.approvable_by(groups))
    }
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

/// Collects and validates the approval tables of every policy file.
#[derive(Default)]
pub struct RulesLoader {
    rules: Vec<ApprovalRule>,
    approvers: Vec<ApproverEntry>,
    /// Rule name -> "file:line".
    rule_names: HashMap<String, String>,
    approver_names: HashMap<String, String>,
    uid_owner: HashMap<u32, String>,
    subject_owner: HashMap<String, String>,
    /// Roles named by rules, checked once every file is in: (file, line, key, role).
    role_refs: Vec<(String, usize, String, String)>,
}

struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
    errors: &'a mut Vec<PolicyError>,
}

impl Ctx<'_> {
    fn err(&mut self, span: std::ops::Range<usize>, key: String, problem: String) {
        self.errors.push(PolicyError {
            file: self.file.to_string(),
            line: Some(line_of(self.text, span.start)),
            key,
            problem,
        });
    }

    fn strings(&mut self, key: &str, list: Vec<S<String>>) -> Vec<String> {
        let mut out = Vec::with_capacity(list.len());
        for (i, s) in list.into_iter().enumerate() {
            if s.get_ref().trim().is_empty() {
                self.err(s.span(), format!("{key}[{i}]"), "empty value".into());
            }
            out.push(s.into_inner());
        }
        out
    }

    fn globs(&mut self, key: &str, list: Vec<S<String>>) -> Globs {
        let mut b = GlobSetBuilder::new();
        let mut src = Vec::new();
        for (i, p) in list.into_iter().enumerate() {
            match build_glob(p.get_ref()) {
                Ok(g) => {
                    b.add(g);
                }
                Err(e) => self.err(p.span(), format!("{key}[{i}]"), e),
            }
            src.push(p.into_inner());
        }
        let set = b.build().unwrap_or_else(|_| GlobSet::empty());
        Globs { src, set }
    }

    fn duration(
        &mut self,
        key: String,
        v: Option<S<String>>,
        default: Option<Duration>,
        min: Duration,
        max: Duration,
    ) -> Option<Duration> {
        let Some(v) = v else {
            return default;
        };
        match parse_duration(v.get_ref()) {
            Ok(d) if d < min || d > max => {
                self.err(
                    v.span(),
                    key,
                    format!(
                        "{:?} is out of range ({} to {})",
                        v.get_ref(),
                        render_duration(min),
                        render_duration(max)
                    ),
                );
                default
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.err(v.span(), key, e);
                default
            }
        }
    }
}

impl RulesLoader {
    /// Validates the `[[approvals]]` and `[[approvers]]` of one file; `file` names it in
    /// errors, `short` in rule ids.
    pub fn add_file(
        &mut self,
        file: &str,
        short: &str,
        text: &str,
        rules: Vec<S<RawRule>>,
        approvers: Vec<S<RawApprover>>,
        errors: &mut Vec<PolicyError>,
    ) {
        let mut cx = Ctx { file, text, errors };
        for (i, a) in approvers.into_iter().enumerate() {
            self.approver(&mut cx, i, a);
        }
        for (i, r) in rules.into_iter().enumerate() {
            self.rule(&mut cx, short, i, r);
        }
    }

    fn approver(&mut self, cx: &mut Ctx<'_>, i: usize, a: S<RawApprover>) {
        let span = a.span();
        let a = a.into_inner();
        let name = a.name.get_ref().clone();
        let label = if valid_name(&name) {
            format!("approvers[{name}]")
        } else {
            format!("approvers[{i}]")
        };
        let before = cx.errors.len();
        if !valid_name(&name) {
            cx.err(
                a.name.span(),
                format!("{label}.name"),
                format!("bad approver name {name:?}: use letters, digits, `_`, `-`, `.`"),
            );
        } else if let Some(first) = self.approver_names.get(&name) {
            cx.err(
                a.name.span(),
                format!("{label}.name"),
                format!("duplicate approver name {name:?} (first defined at {first})"),
            );
        } else {
            self.approver_names.insert(
                name.clone(),
                format!("{}:{}", cx.file, line_of(cx.text, a.name.span().start)),
            );
        }
        let mut uids = Vec::new();
        for (j, u) in a.uids.into_iter().enumerate() {
            match u32::try_from(*u.get_ref()) {
                Ok(uid) => {
                    if let Some(owner) = self.uid_owner.get(&uid) {
                        cx.err(
                            u.span(),
                            format!("{label}.uids[{j}]"),
                            format!("uid {uid} already belongs to approver {owner:?}"),
                        );
                    } else {
                        self.uid_owner.insert(uid, name.clone());
                    }
                    uids.push(uid);
                }
                Err(_) => cx.err(
                    u.span(),
                    format!("{label}.uids[{j}]"),
                    format!("{} is not a uid", u.get_ref()),
                ),
            }
        }
        let subjects_raw = a.subjects;
        let mut subjects = Vec::new();
        for (j, s) in subjects_raw.into_iter().enumerate() {
            let v = s.get_ref().clone();
            if v.trim().is_empty() {
                cx.err(
                    s.span(),
                    format!("{label}.subjects[{j}]"),
                    "empty value".into(),
                );
            } else if let Some(owner) = self.subject_owner.get(&v) {
                cx.err(
                    s.span(),
                    format!("{label}.subjects[{j}]"),
                    format!("subject {v:?} already belongs to approver {owner:?}"),
                );
            } else {
                self.subject_owner.insert(v.clone(), name.clone());
            }
            subjects.push(v);
        }
        let groups = cx.strings(&format!("{label}.groups"), a.groups);
        if uids.is_empty() && subjects.is_empty() {
            cx.err(
                span,
                label.clone(),
                "approver has neither uids nor subjects: nobody could act as them".into(),
            );
        }
        if cx.errors.len() == before {
            self.approvers.push(ApproverEntry {
                name,
                uids,
                subjects,
                groups,
            });
        }
    }

    fn rule(&mut self, cx: &mut Ctx<'_>, short: &str, i: usize, r: S<RawRule>) {
        let span = r.span();
        let r = r.into_inner();
        let name = r.name.get_ref().clone();
        let label = if valid_name(&name) {
            format!("approvals[{name}]")
        } else {
            format!("approvals[{i}]")
        };
        let before = cx.errors.len();
        if !valid_name(&name) {
            cx.err(
                r.name.span(),
                format!("{label}.name"),
                format!("bad rule name {name:?}: use letters, digits, `_`, `-`, `.`"),
            );
        } else if let Some(first) = self.rule_names.get(&name) {
            cx.err(
                r.name.span(),
                format!("{label}.name"),
                format!("duplicate approval rule name {name:?} (first defined at {first})"),
            );
        } else {
            self.rule_names.insert(
                name.clone(),
                format!("{}:{}", cx.file, line_of(cx.text, r.name.span().start)),
            );
        }
        let service = r.service.get_ref().clone();
        if service.is_empty() || service.chars().any(char::is_whitespace) {
            cx.err(
                r.service.span(),
                format!("{label}.service"),
                format!("bad service {service:?}: a service name from the agent config or \"*\""),
            );
        }
        let mut roles = Vec::new();
        for (j, role) in r.roles.into_iter().enumerate() {
            let key = format!("{label}.roles[{j}]");
            if role.get_ref().trim().is_empty() {
                cx.err(role.span(), key, "empty value".into());
            } else {
                self.role_refs.push((
                    cx.file.to_string(),
                    line_of(cx.text, role.span().start),
                    key,
                    role.get_ref().clone(),
                ));
            }
            roles.push(role.into_inner());
        }
        let mut methods = Vec::new();
        match r.methods {
            None => cx.err(
                span.clone(),
                format!("{label}.methods"),
                "rule has no methods".into(),
            ),
            Some(ms) => {
                let mspan = ms.span();
                let ms = ms.into_inner();
                if ms.is_empty() {
                    cx.err(
                        mspan,
                        format!("{label}.methods"),
                        "rule has no methods".into(),
                    );
                }
                for (j, m) in ms.into_iter().enumerate() {
                    match MethodPattern::parse(m.get_ref()) {
                        Ok(p) => methods.push(p),
                        Err(e) => cx.err(m.span(), format!("{label}.methods[{j}]"), e),
                    }
                }
            }
        }
        let covers = |ms: &[&str]| ms.iter().any(|m| methods.iter().any(|p| p.matches(m)));
        let first_span = |l: &Vec<S<String>>| l.first().map(|s| s.span());
        for (what, list, needs) in [
            ("tools", &r.tools, &["tools/call"][..]),
            (
                "resources",
                &r.resources,
                &[
                    "resources/read",
                    "resources/subscribe",
                    "resources/unsubscribe",
                    "completion/complete",
                ][..],
            ),
            (
                "prompts",
                &r.prompts,
                &["prompts/get", "completion/complete"][..],
            ),
        ] {
            if !methods.is_empty()
                && !list.is_empty()
                && !covers(needs)
                && let Some(s) = first_span(list)
            {
                cx.err(
                    s,
                    format!("{label}.{what}"),
                    format!(
                        "{what} are listed but `methods` covers none of {}",
                        needs.join(", ")
                    ),
                );
            }
        }
        let tools = cx.globs(&format!("{label}.tools"), r.tools);
        let resources = cx.globs(&format!("{label}.resources"), r.resources);
        let prompts = cx.globs(&format!("{label}.prompts"), r.prompts);
        let when = match r.when {
            None => None,
            Some(w) => match Expression::parse(w.get_ref()) {
                Ok(e) => Some(e),
                Err(e) => {
                    cx.err(w.span(), format!("{label}.when"), e.to_string());
                    None
                }
            },
        };
        let approvers = match r.approvers {
            None => {
                cx.err(
                    span.clone(),
                    format!("{label}.approvers"),
                    "rule names no approver group: nobody could approve".into(),
                );
                Vec::new()
            }
            Some(a) => {
                let aspan = a.span();
                let list = cx.strings(&format!("{label}.approvers"), a.into_inner());
                if list.is_empty() {
                    cx.err(
                        aspan,
                        format!("{label}.approvers"),
                        "rule names no approver group: nobody could approve".into(),
                    );
                }
                list
            }
        };
        let required = match r.required {
            None => 1,
            Some(n) => match u32::try_from(*n.get_ref()) {
                Ok(v) if (1..=MAX_REQUIRED).contains(&v) => v,
                _ => {
                    cx.err(
                        n.span(),
                        format!("{label}.required"),
                        format!("{} is out of range (1 to {MAX_REQUIRED})", n.get_ref()),
                    );
                    1
                }
            },
        };
        let max_wait = cx
            .duration(
                format!("{label}.max_wait"),
                r.max_wait,
                Some(DEFAULT_MAX_WAIT),
                Duration::from_secs(1),
                MAX_MAX_WAIT,
            )
            .unwrap_or(DEFAULT_MAX_WAIT);
        let valid_for = cx
            .duration(
                format!("{label}.valid_for"),
                r.valid_for,
                Some(DEFAULT_VALID_FOR),
                Duration::ZERO,
                MAX_VALID_FOR,
            )
            .unwrap_or(DEFAULT_VALID_FOR);
        let max_grant = cx.duration(
            format!("{label}.max_grant"),
            r.max_grant,
            None,
            Duration::from_secs(60),
            MAX_GRANT,
        );
        if cx.errors.len() != before {
            return;
        }
        self.rules.push(ApprovalRule {
            rule: format!("{short}:{label}"),
            name,
            service,
            roles,
            methods,
            tools,
            resources,
            prompts,
            when,
            approvers,
            required,
            max_wait,
            valid_for,
            max_grant,
        });
    }

    /// Cross-file checks (every role a rule names exists), then the compiled rules.
    pub fn finish(
        self,
        role_names: &HashMap<String, String>,
        errors: &mut Vec<PolicyError>,
    ) -> ApprovalRules {
        for (file, line, key, role) in &self.role_refs {
            if !role_names.contains_key(role) {
                errors.push(PolicyError {
                    file: file.clone(),
                    line: Some(*line),
                    key: key.clone(),
                    problem: format!("no role named {role:?} in the policy"),
                });
            }
        }
        ApprovalRules {
            rules: self.rules,
            approvers: self.approvers,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::policy::PolicySet;
    use serde_json::json;

    const BASE: &str = r#"
[[roles]]
name = "analyst"
groups = ["analytics"]

[[roles.grants]]
service = "crm"
methods = ["tools/call", "resources/read"]
tools = ["export_customers", "echo"]
resources = ["customers://*"]
purpose = "p"
lawful_basis = "contract"

[[roles]]
name = "admin"
groups = ["crm-admins"]

[[roles.grants]]
service = "crm"
methods = ["tools/call"]
tools = ["*"]
purpose = "p"
lawful_basis = "contract"
"#;

    fn set(extra: &str) -> PolicySet {
        PolicySet::from_str("t.policy.toml", &format!("{BASE}\n{extra}"))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn errs(extra: &str) -> String {
        match PolicySet::from_str("t.policy.toml", &format!("{BASE}\n{extra}")) {
            Ok(_) => panic!("expected errors for {extra}"),
            Err(e) => e.to_string(),
        }
    }

    const RULES: &str = r#"
[[approvers]]
name = "dana"
uids = [4001]
subjects = ["dana"]
groups = ["dpo"]

[[approvals]]
name = "bulk-export"
service = "crm"
roles = ["analyst"]
methods = ["tools/call"]
tools = ["export_*"]
when = "limit > 1000"
approvers = ["dpo"]
required = 2
max_wait = "10m"
valid_for = "90s"
max_grant = "1h"

[[approvals]]
name = "any-resource"
service = "*"
methods = ["resources/*"]
approvers = ["dpo", "security"]
"#;

    #[test]
    fn parses_rules_and_approvers_with_defaults() {
        let s = set(RULES);
        let r = s.approval_rules();
        assert_eq!(r.rules().len(), 2);
        let b = &r.rules()[0];
        assert_eq!(b.rule, "t.policy.toml:approvals[bulk-export]");
        assert_eq!(b.required, 2);
        assert_eq!(b.max_wait.as_secs(), 600);
        assert_eq!(b.valid_for.as_secs(), 90);
        assert_eq!(b.max_grant.map(|d| d.as_secs()), Some(3600));
        let a = &r.rules()[1];
        assert_eq!(a.required, 1);
        assert_eq!(a.max_wait.as_secs(), 15 * 60);
        assert_eq!(a.valid_for.as_secs(), 5 * 60);
        assert!(a.max_grant.is_none());
        assert_eq!(
            r.approver_by_uid(4001).map(|a| a.name.as_str()),
            Some("dana")
        );
        assert_eq!(
            r.approver_by_subject("dana").map(|a| a.name.as_str()),
            Some("dana")
        );
        assert!(r.approver_by_uid(4002).is_none());
        assert!(r.is_approver_group_member(&["security".into()]));
        assert!(!r.is_approver_group_member(&["analytics".into()]));
        // The rules are part of the policy version.
        assert_ne!(s.version(), set("").version());
    }

    #[test]
    fn matching_by_service_role_method_target_and_when() {
        let s = set(RULES);
        let r = s.approval_rules();
        let find =
            |svc: &str, role: Option<&str>, m: &str, t: Option<&str>, args: serde_json::Value| {
                r.find(svc, role, m, t, Some(&args))
                    .map(|m| (m.rule.name.clone(), m.matched))
            };
        let (name, why) = find(
            "crm",
            Some("analyst"),
            "tools/call",
            Some("export_customers"),
            json!({"limit": 5000}),
        )
        .unwrap();
        assert_eq!(name, "bulk-export");
        assert_eq!(
            why,
            "tools/call export_customers when limit > 1000 (limit = 5000)"
        );
        // when false: not held.
        assert!(
            find(
                "crm",
                Some("analyst"),
                "tools/call",
                Some("export_customers"),
                json!({"limit": 10})
            )
            .is_none()
        );
        // when undefined (missing, wrong type): held (fail closed).
        let (_, why) = find(
            "crm",
            Some("analyst"),
            "tools/call",
            Some("export_customers"),
            json!({}),
        )
        .unwrap();
        assert!(why.contains("limit missing"), "{why}");
        assert!(
            find(
                "crm",
                Some("analyst"),
                "tools/call",
                Some("export_customers"),
                json!({"limit": "5000"})
            )
            .is_some()
        );
        // Another role's grant allowed it: this rule does not apply.
        assert!(
            find(
                "crm",
                Some("admin"),
                "tools/call",
                Some("export_customers"),
                json!({"limit": 5000})
            )
            .is_none()
        );
        assert!(
            find(
                "crm",
                None,
                "tools/call",
                Some("export_customers"),
                json!({"limit": 5000})
            )
            .is_none()
        );
        // Other tool, other service.
        assert!(
            find(
                "crm",
                Some("analyst"),
                "tools/call",
                Some("echo"),
                json!({"limit": 5000})
            )
            .is_none()
        );
        assert!(
            find(
                "hr",
                Some("analyst"),
                "tools/call",
                Some("export_customers"),
                json!({"limit": 5000})
            )
            .is_none()
        );
        // Wildcard service, any role, any resource.
        let (name, _) = find(
            "hr",
            Some("admin"),
            "resources/read",
            Some("x://1"),
            json!(null),
        )
        .unwrap();
        assert_eq!(name, "any-resource");
        assert!(find("hr", Some("admin"), "tools/list", None, json!(null)).is_none());
    }

    #[test]
    fn logs_and_approvers_read_the_values_a_rule_looked_at_as_recorded() {
        use crate::redact::engine::{Engine, EngineConfig, PseudonymKey};
        use crate::redact::view::{for_records, recordable_params};
        let s = set(r#"
[[approvals]]
name = "one-person"
service = "crm"
methods = ["tools/call"]
tools = ["lookup"]
when = "bsn > 0 && limit > 10"
approvers = ["dpo"]
"#);
        let r = s.approval_rules();
        let sent =
            serde_json::json!({"name": "lookup", "arguments": {"bsn": 111222333, "limit": 50}});
        let m = r
            .find(
                "crm",
                None,
                "tools/call",
                Some("lookup"),
                sent.get("arguments"),
            )
            .expect("held");
        // The caller reads its own values.
        assert!(m.matched.contains("bsn = 111222333"), "{}", m.matched);
        let engine = Engine::new(&EngineConfig::default(), PseudonymKey::new([7; 32])).unwrap();
        let (recorded, _) = recordable_params(&*for_records(&engine), &sent);
        let shown =
            m.rule
                .describe_recorded("tools/call", Some(&sent), (Some("lookup"), Some(&recorded)));
        assert!(!shown.contains("111222333"), "{shown}");
        // (Its mask is a string, shown by size only, as every string is.)
        assert!(shown.contains("bsn = \"<string:"), "{shown}");
        assert!(shown.contains("limit = 50"), "{shown}");
        assert!(
            shown.starts_with("tools/call lookup when bsn > 0"),
            "{shown}"
        );
        // A record too large to keep its arguments: the condition, without values.
        let truncated = serde_json::json!({"truncated": true, "bytes": 70000});
        let shown = m.rule.describe_recorded(
            "tools/call",
            Some(&sent),
            (Some("lookup"), Some(&truncated)),
        );
        assert_eq!(shown, "tools/call lookup when bsn > 0 && limit > 10");
    }

    #[test]
    fn first_matching_rule_wins() {
        let s = set(r#"
[[approvals]]
name = "huge"
service = "crm"
methods = ["tools/call"]
tools = ["export_customers"]
when = "limit > 10000"
approvers = ["board"]
required = 3

[[approvals]]
name = "big"
service = "crm"
methods = ["tools/call"]
tools = ["export_customers"]
when = "limit > 100"
approvers = ["dpo"]
"#);
        let r = s.approval_rules();
        let hit = |l: i64| {
            r.find(
                "crm",
                Some("analyst"),
                "tools/call",
                Some("export_customers"),
                Some(&json!({"limit": l})),
            )
            .map(|m| m.rule.name.clone())
        };
        assert_eq!(hit(50000).as_deref(), Some("huge"));
        assert_eq!(hit(500).as_deref(), Some("big"));
        assert_eq!(hit(50), None);
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e = errs(
            "[[approvals]]\nname = \"x\"\nservice = \"crm\"\nmethods = [\"tools/call\"]\napprovers = [\"dpo\"]\nrequired = 0\n",
        );
        assert!(
            e.contains("approvals[x].required: 0 is out of range (1 to 10)"),
            "{e}"
        );
        assert!(e.contains("t.policy.toml:"), "{e}");
        let e =
            errs("[[approvals]]\nname = \"x\"\nservice = \"crm\"\nmethods = [\"tools/call\"]\n");
        assert!(
            e.contains("approvals[x].approvers: rule names no approver group"),
            "{e}"
        );
        let e = errs("[[approvals]]\nname = \"x\"\nservice = \"crm\"\napprovers = [\"dpo\"]\n");
        assert!(
            e.contains("approvals[x].methods: rule has no methods"),
            "{e}"
        );
        let e = errs(
            "[[approvals]]\nname = \"x\"\nservice = \"crm\"\nmethods = [\"tools/call\"]\napprovers = [\"dpo\"]\nwhen = \"limit >\"\n",
        );
        assert!(e.contains("approvals[x].when: column"), "{e}");
        let e = errs(
            "[[approvals]]\nname = \"x\"\nservice = \"crm\"\nmethods = [\"tools/call\"]\napprovers = [\"dpo\"]\nmax_wait = \"10 minutes\"\n",
        );
        assert!(e.contains("approvals[x].max_wait"), "{e}");
        let e = errs(
            "[[approvals]]\nname = \"x\"\nservice = \"crm\"\nmethods = [\"tools/call\"]\napprovers = [\"dpo\"]\nmax_wait = \"0s\"\n",
        );
        assert!(e.contains("out of range"), "{e}");
        let e = errs(
            "[[approvals]]\nname = \"x\"\nservice = \"crm\"\nmethods = [\"tools/call\"]\napprovers = [\"dpo\"]\nroles = [\"nobody\"]\n",
        );
        assert!(
            e.contains("approvals[x].roles[0]: no role named \"nobody\""),
            "{e}"
        );
        let e = errs(
            "[[approvals]]\nname = \"x\"\nservice = \"crm\"\nmethods = [\"prompts/get\"]\ntools = [\"a\"]\napprovers = [\"dpo\"]\n",
        );
        assert!(
            e.contains(
                "approvals[x].tools: tools are listed but `methods` covers none of tools/call"
            ),
            "{e}"
        );
        let e = errs(
            "[[approvals]]\nname = \"x\"\nservice = \"crm\"\nmethods = [\"tools/call\"]\napprovers = [\"dpo\"]\nbogus = 1\n",
        );
        assert!(e.contains("bogus"), "{e}");
        let e = errs(
            "[[approvals]]\nname = \"x\"\nservice = \"crm\"\nmethods = [\"tools/call\"]\napprovers = [\"dpo\"]\n[[approvals]]\nname = \"x\"\nservice = \"crm\"\nmethods = [\"tools/call\"]\napprovers = [\"dpo\"]\n",
        );
        assert!(e.contains("duplicate approval rule name \"x\""), "{e}");
        let e = errs(
            "[[approvers]]\nname = \"a\"\nuids = [1]\n[[approvers]]\nname = \"b\"\nuids = [1]\n",
        );
        assert!(
            e.contains("approvers[b].uids[0]: uid 1 already belongs to approver \"a\""),
            "{e}"
        );
        let e = errs("[[approvers]]\nname = \"a\"\ngroups = [\"dpo\"]\n");
        assert!(
            e.contains("approvers[a]: approver has neither uids nor subjects"),
            "{e}"
        );
        let e = errs("[[approvers]]\nname = \"a\"\nuids = [-1]\n");
        assert!(e.contains("-1 is not a uid"), "{e}");
    }

    #[test]
    fn the_example_policy_holds_big_batch_exports() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/crm.policy.toml");
        let s = PolicySet::load(&[dir]).unwrap_or_else(|e| panic!("{e}"));
        let r = s.approval_rules();
        let m = r
            .find(
                "crm",
                Some("batch"),
                "tools/call",
                Some("export_customers"),
                Some(&json!({"limit": 5000})),
            )
            .expect("held");
        assert_eq!(m.rule.rule, "crm.policy.toml:approvals[bulk-export]");
        assert!(
            r.find(
                "crm",
                Some("batch"),
                "tools/call",
                Some("export_customers"),
                Some(&json!({"limit": 10}))
            )
            .is_none()
        );
        assert_eq!(
            r.approver_by_uid(1500).map(|a| a.name.as_str()),
            Some("dpo-oncall")
        );
    }

    #[test]
    fn durations() {
        use super::{parse_duration, render_duration};
        assert_eq!(parse_duration("250ms").unwrap().as_millis(), 250);
        assert_eq!(parse_duration("90s").unwrap().as_secs(), 90);
        assert_eq!(parse_duration("10m").unwrap().as_secs(), 600);
        assert_eq!(parse_duration("2h").unwrap().as_secs(), 7200);
        assert_eq!(parse_duration("1d").unwrap().as_secs(), 86400);
        for bad in [
            "",
            "10",
            "m",
            "1.5h",
            "10 m",
            "-1s",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(render_duration(std::time::Duration::from_secs(600)), "10m");
        assert_eq!(
            render_duration(std::time::Duration::from_millis(1500)),
            "1500ms"
        );
        assert_eq!(render_duration(std::time::Duration::from_secs(90)), "90s");
    }
}
