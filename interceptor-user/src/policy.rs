//! Authorization policy: roles, grants scoped to MCP methods/tools/resources/prompts, argument
//! constraints, purpose and lawful basis.
//!
//! Pure and synchronous: no I/O except reading the policy files in [`PolicySet::load`]. A
//! [`PolicySet`] is immutable and cheap to clone (an `Arc` inside); reloading means loading a
//! new one and swapping it in.
//!
//! # Files
//!
//! Policies are TOML files, conventionally `*.policy.toml` (a directory given to
//! [`PolicySet::load`] contributes every `*.policy.toml` directly inside it, sorted by file
//! name; a file given explicitly is loaded whatever its name). Every key is optional unless
//! marked *required*; unknown keys are errors.
//!
//! ```toml
//! [[roles]]
//! name = "support"                  # required; letters, digits, `_`, `-`, `.`; unique over all files
//! # A caller holds the role if ANY matcher matches. At least one of the three must be non-empty.
//! groups = ["support-team"]         # exact values of the token's groups claim
//! subjects = []                     # exact token subjects (`sub`)
//! clients = []                      # exact OAuth client ids (service accounts)
//! issuers = []                      # optional restriction: if non-empty, the token's issuer
//!                                   # must also be one of these (AND with the matchers above)
//!
//! [[roles.grants]]
//! service = "crm"                   # required; service name from the agent config, or "*"
//! methods = ["tools/call", "resources/read", "prompts/get"]  # required, non-empty
//! tools = ["customer_lookup", "search_*"]   # globs on tool names (params.name)
//! resources = ["customers://*"]             # globs on resource URIs (params.uri)
//! prompts = ["summarize_*"]                 # globs on prompt names (params.name)
//! purpose = "Handling customer support tickets"     # required, non-empty
//! lawful_basis = "contract"         # required; GDPR Art. 6(1)(a)-(f), see [`LawfulBasis`]
//! data_subjects = ["customers"]     # categories of data subjects (Art. 30 record)
//! # Redaction of this grant's exchanges, over the service's `[services.redact]` settings:
//! masking = { EMAIL = "partial" }   # mask mode per entity type: remove | partial | pseudonymize
//! release = ["PHONE"]               # entity types this purpose needs in clear (recorded)
//! redact_arguments = false          # true: the server gets the call's arguments redacted too
//!                                   # (tools/call and prompts/get `arguments`, completion
//!                                   # values), masked as this grant masks answers (recorded)
//!
//! [[roles.grants.constraints]]      # argument constraints on tools/call
//! tool = "export_customers"         # required; exact tool name, must match the grant's `tools`
//! expr = "limit <= 100"             # required; see "Constraint expressions"
//! ```
//!
//! * **Method patterns**: an exact method name (`tools/call`), a prefix `prefix/*` (matches
//!   every method starting with `prefix/`, e.g. `resources/*`), or `*` (every method). Names
//!   are made of ASCII letters, digits, `_`, `-`, `.` and `/`.
//! * **Globs** (`tools`, `resources`, `prompts`): `globset` syntax, case-sensitive; `*` and
//!   `**` match any run of characters *including* `/`, `?` one character, `[abc]` a class,
//!   `{a,b}` alternatives, `\` escapes (write `\\?` in a TOML basic string to match a literal
//!   `?` in a URI). A resource template (`resources/templates/list`) is shown when its
//!   `uriTemplate` text itself matches (`customers://*` matches `customers://{id}`).
//! * **Consistency checks** (errors): a grant naming exactly `tools/call` needs `tools`
//!   (`resources/read|subscribe|unsubscribe` need `resources`, `prompts/get` needs `prompts`,
//!   `completion/complete` needs one of `prompts`/`resources`); conversely non-empty `tools`
//!   need a method pattern covering `tools/call`, `resources` one covering
//!   `resources/read|subscribe|unsubscribe` or `completion/complete`, `prompts` one covering
//!   `prompts/get` or `completion/complete`. A constraint's `tool` must be matched by the
//!   grant's `tools`.
//!
//! Errors are reported all at once (TOML syntax and type errors stop that file at the first
//! one, as the TOML parser does), each as `file:line: key: problem`, where `key` is a path like
//! `roles[support].grants[0].constraints[1].expr` (syntax errors use the TOML table path, e.g.
//! `roles.grants.foo`). Expression errors give the 1-based column inside the expression.
//!
//! # Decisions ([`PolicySet::decide`])
//!
//! Deny by default. Roles are considered in file order (files in load order); within a role,
//! grants in file order.
//!
//! 1. The caller's roles are those whose matchers match the [`Principal`]. None: deny.
//! 2. Only grants whose `service` is the request's service or `*` count. None: deny.
//! 3. [`PROTOCOL_METHODS`] (`initialize`, `ping`, `server/discover`,
//!    `notifications/initialized`, `notifications/cancelled`, `notifications/progress`,
//!    `notifications/roots/list_changed`) are allowed to anyone with a grant for the service
//!    (rule `builtin:protocol-methods`). Everything else, including `logging/setLevel`,
//!    `completion/complete` and other notifications, needs a grant.
//! 4. [`LIST_METHODS`] (`tools/list`, `resources/list`, `resources/templates/list`,
//!    `prompts/list`) are allowed likewise (rule `builtin:list-methods`); their results must be
//!    passed through [`PolicySet::filter_list`], which keeps only the entries the caller could
//!    use through some grant (ignoring argument constraints).
//! 5. Otherwise the first grant that allows wins: its `methods` must match the method and
//!    - `tools/call`: `tools` match the tool name and every constraint of the grant for that
//!      tool holds;
//!    - `resources/read`, `resources/subscribe`, `resources/unsubscribe`: `resources` match the
//!      URI;
//!    - `prompts/get`: `prompts` match the name;
//!    - `completion/complete`: `prompts` or `resources` match the referenced name/URI;
//!    - any other method: the method pattern alone decides.
//!
//!    A targeted method without a name is denied.
//!
//! The decision carries the winning role, its grant's purpose and lawful basis (none for the
//! builtin rules), its redaction choices (`masking`, `release`; the service's own settings for
//! the builtin rules), the policy version and the rule: `crm.policy.toml:roles[support].grants[0]`,
//! `builtin:protocol-methods`, `builtin:list-methods`, `default-deny`, or for a failed
//! constraint `crm.policy.toml:roles[analyst].grants[0].constraints[0]` with the reason
//! `constraint export_customers: limit <= 100 (limit = 5000)`. When nothing allows, the
//! denial reports the most specific failure (constraint, then name, then method), first in
//! order. Argument values quoted in reasons are truncated to 64 characters.
//!
//! # Constraint expressions
//!
//! ```text
//! expr    := and ( "||" and )*
//! and     := unary ( "&&" unary )*
//! unary   := "!" unary | "(" expr ")" | "exists" "(" path ")"
//!          | operand cmp operand | path "in" "[" literal ( "," literal )* [","] "]"
//! cmp     := "<" | "<=" | ">" | ">=" | "==" | "!="
//! operand := path | literal          (at least one side of a comparison is a path)
//! literal := number | "string" | 'string' | true | false | null
//! path    := segment ( "." segment )*   segment := [A-Za-z0-9_-]+, starting with a letter or
//!                                       `_` for the first one; digits index arrays
//! ```
//!
//! Paths address `params.arguments` of the `tools/call` request (`customer.address.country`,
//! `items.0.id`). `true`, `false`, `null`, `in` and `exists` are keywords, not paths. Strings
//! support the escapes `\\ \" \' \n \r \t`. At most 4096 bytes and 64 levels of nesting.
//!
//! Evaluation uses three-valued logic so that nothing fails open: a comparison whose argument
//! is missing, or whose operands have different types (number vs string, ...), or an ordering
//! (`<`...) on booleans or null, is *undefined*. `!undefined` is undefined; `&&`/`||` follow
//! Kleene logic (`false && undefined` is false, `true || undefined` is true). A constraint
//! holds only if it evaluates to true. So `limit <= 100` fails when `limit` is missing or is
//! `"5"`, and so does `!(limit > 100)`; write `!exists(limit) || limit <= 100` to make the
//! argument optional. `exists(p)` is true when `p` is present and not `null`. Numbers compare
//! by value (`1 == 1.0`), integers exactly; strings compare by bytes; `x in [..]` is true when
//! `x == ` some element.
//!
//! # Approvals
//!
//! Policy files may also hold `[[approvals]]` rules (calls held until a person approves that
//! exact call) and `[[approvers]]` (who approves, by local uid and token subject). Their format
//! and matching are documented in [`crate::approval::rules`]; they are validated here, with the
//! same `file:line: key: problem` errors, and are part of the version.
//!
//! # Version
//!
//! [`PolicySet::version`] is the first 16 hex digits of a SHA-256 over every file's name
//! (without directory) and content, in load order: the same files give the same version in
//! every load, and any edit (or reordering) changes it.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use toml::Spanned;

use crate::redact::engine::MaskMode;

fn mask_mode_name(m: MaskMode) -> &'static str {
    match m {
        MaskMode::Remove => "remove",
        MaskMode::Partial => "partial",
        MaskMode::Pseudonymize => "pseudonymize",
    }
}

fn mask_mode(s: &str) -> Option<MaskMode> {
    match s {
        "remove" => Some(MaskMode::Remove),
        "partial" => Some(MaskMode::Partial),
        "pseudonymize" => Some(MaskMode::Pseudonymize),
        _ => None,
    }
}

/// Entity type names as the redaction engine spells them (`EMAIL`, `DE_TAX_ID`, `TICKET`).
fn is_entity_name(s: &str) -> bool {
    s.len() <= 64
        && s.starts_with(|c: char| c.is_ascii_uppercase())
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// Suffix of the policy files picked up from a directory.
pub const POLICY_FILE_SUFFIX: &str = ".policy.toml";

/// Protocol plumbing allowed to any caller holding a role with a grant for the service.
pub const PROTOCOL_METHODS: &[&str] = &[
    "initialize",
    "ping",
    "server/discover",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/roots/list_changed",
];

/// List methods: allowed to any role holder, results filtered by [`PolicySet::filter_list`].
pub const LIST_METHODS: &[&str] = &[
    "tools/list",
    "resources/list",
    "resources/templates/list",
    "prompts/list",
];

/// Rule of every denial that no specific rule caused.
pub const RULE_DEFAULT_DENY: &str = "default-deny";
/// Rule of allowed [`PROTOCOL_METHODS`].
pub const RULE_PROTOCOL: &str = "builtin:protocol-methods";
/// Rule of allowed [`LIST_METHODS`].
pub const RULE_LIST: &str = "builtin:list-methods";

const MAX_EXPR_LEN: usize = 4096;
const MAX_EXPR_DEPTH: usize = 64;
const MAX_VALUE_CHARS: usize = 64;
const MAX_NAME_CHARS: usize = 200;

// ---------------------------------------------------------------------------------------------
// Public data types
// ---------------------------------------------------------------------------------------------

/// Who is calling, as established by identity/OIDC.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub subject: String,
    pub issuer: String,
    pub client_id: Option<String>,
    pub groups: Vec<String>,
}

/// One client→server message to decide on.
#[derive(Debug, Clone, Copy)]
pub struct PolicyRequest<'a> {
    /// Service name from the agent configuration.
    pub service: &'a str,
    pub who: &'a Principal,
    /// JSON-RPC method.
    pub method: &'a str,
    /// Tool or prompt name (`params.name`), resource URI (`params.uri`), or the
    /// `completion/complete` reference's name/URI.
    pub name: Option<&'a str>,
    /// `params.arguments` of `tools/call`.
    pub arguments: Option<&'a Value>,
}

/// The outcome of [`PolicySet::decide`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyDecision {
    pub allowed: bool,
    /// The role that allowed (or, for builtin rules, the first role with a grant for the service).
    pub role: Option<String>,
    /// The rule that decided, stable and human-readable.
    pub rule: String,
    pub reason: String,
    pub purpose: Option<String>,
    pub lawful_basis: Option<String>,
    pub policy_version: String,
    /// Mask modes of the deciding grant, over the service's own (`masking`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub masking: Vec<(String, MaskMode)>,
    /// Entity types the deciding grant's purpose needs in clear (`release`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub release: Vec<String>,
    /// The deciding grant has the server get the call's arguments redacted
    /// (`redact_arguments`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub redact_arguments: bool,
}

/// A grant's masking (mode per entity type) and releases.
pub type GrantView = (Vec<(String, MaskMode)>, Vec<String>);

/// GDPR Art. 6(1) lawful bases, spelled in files as snake_case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LawfulBasis {
    /// Art. 6(1)(a).
    Consent,
    /// Art. 6(1)(b).
    Contract,
    /// Art. 6(1)(c).
    LegalObligation,
    /// Art. 6(1)(d).
    VitalInterests,
    /// Art. 6(1)(e).
    PublicTask,
    /// Art. 6(1)(f).
    LegitimateInterests,
}

impl LawfulBasis {
    pub const ALL: [LawfulBasis; 6] = [
        LawfulBasis::Consent,
        LawfulBasis::Contract,
        LawfulBasis::LegalObligation,
        LawfulBasis::VitalInterests,
        LawfulBasis::PublicTask,
        LawfulBasis::LegitimateInterests,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LawfulBasis::Consent => "consent",
            LawfulBasis::Contract => "contract",
            LawfulBasis::LegalObligation => "legal_obligation",
            LawfulBasis::VitalInterests => "vital_interests",
            LawfulBasis::PublicTask => "public_task",
            LawfulBasis::LegitimateInterests => "legitimate_interests",
        }
    }

    /// The article it comes from, e.g. `GDPR Art. 6(1)(b)`.
    pub fn article(self) -> &'static str {
        match self {
            LawfulBasis::Consent => "GDPR Art. 6(1)(a)",
            LawfulBasis::Contract => "GDPR Art. 6(1)(b)",
            LawfulBasis::LegalObligation => "GDPR Art. 6(1)(c)",
            LawfulBasis::VitalInterests => "GDPR Art. 6(1)(d)",
            LawfulBasis::PublicTask => "GDPR Art. 6(1)(e)",
            LawfulBasis::LegitimateInterests => "GDPR Art. 6(1)(f)",
        }
    }

    pub fn parse(s: &str) -> Option<LawfulBasis> {
        LawfulBasis::ALL.into_iter().find(|b| b.as_str() == s)
    }
}

impl fmt::Display for LawfulBasis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem in a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub file: String,
    /// 1-based line.
    pub line: Option<usize>,
    /// Path of the offending key, e.g. `roles[support].grants[0].tools[1]`.
    pub key: String,
    pub problem: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.problem)
    }
}

impl std::error::Error for PolicyError {}

/// Every problem found while loading; `Display` puts one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl PolicyErrors {
    pub fn errors(&self) -> &[PolicyError] {
        &self.0
    }
}

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

/// What a principal may do on a service and why ([`PolicySet::explain`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    pub service: String,
    pub principal: Principal,
    pub policy_version: String,
    /// Roles the principal holds, in decision order, each with its grants for the service.
    pub roles: Vec<RoleExplanation>,
    /// Protocol and list methods the principal may send (empty without a grant for the service).
    pub builtin_methods: Vec<String>,
    /// Roles with grants for the service that the principal does not hold.
    pub other_roles: Vec<UnmatchedRole>,
    pub summary: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoleExplanation {
    pub name: String,
    pub rule: String,
    /// Why the principal holds it, e.g. `group support`, `client crm-batch`.
    pub matched_by: Vec<String>,
    pub grants: Vec<GrantExplanation>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GrantExplanation {
    pub rule: String,
    pub service: String,
    pub methods: Vec<String>,
    pub tools: Vec<String>,
    pub resources: Vec<String>,
    pub prompts: Vec<String>,
    pub constraints: Vec<ConstraintExplanation>,
    pub purpose: String,
    pub lawful_basis: String,
    pub lawful_basis_article: String,
    pub data_subjects: Vec<String>,
    pub masking: Vec<(String, MaskMode)>,
    pub release: Vec<String>,
    pub redact_arguments: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConstraintExplanation {
    pub rule: String,
    pub tool: String,
    pub expr: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UnmatchedRole {
    pub name: String,
    pub rule: String,
    /// E.g. `groups [analytics]; issuers [https://idp]`.
    pub requires: String,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "service {}, subject {:?} (issuer {:?}, client {}, groups [{}]), policy {}",
            self.service,
            self.principal.subject,
            self.principal.issuer,
            self.principal.client_id.as_deref().unwrap_or("-"),
            self.principal.groups.join(", "),
            self.policy_version
        )?;
        writeln!(f, "{}", self.summary)?;
        for r in &self.roles {
            writeln!(
                f,
                "role {} ({}), matched by {}",
                r.name,
                r.rule,
                r.matched_by.join(", ")
            )?;
            for g in &r.grants {
                writeln!(f, "  grant {} on service {}", g.rule, g.service)?;
                writeln!(f, "    methods: {}", g.methods.join(", "))?;
                for (label, list) in [
                    ("tools", &g.tools),
                    ("resources", &g.resources),
                    ("prompts", &g.prompts),
                ] {
                    if !list.is_empty() {
                        writeln!(f, "    {label}: {}", list.join(", "))?;
                    }
                }
                for c in &g.constraints {
                    writeln!(f, "    constraint {}: {} ({})", c.tool, c.expr, c.rule)?;
                }
                writeln!(f, "    purpose: {}", g.purpose)?;
                writeln!(
                    f,
                    "    lawful basis: {} ({})",
                    g.lawful_basis, g.lawful_basis_article
                )?;
                if !g.data_subjects.is_empty() {
                    writeln!(f, "    data subjects: {}", g.data_subjects.join(", "))?;
                }
                if !g.masking.is_empty() {
                    let m: Vec<String> = g
                        .masking
                        .iter()
                        .map(|(e, m)| format!("{e} = {}", mask_mode_name(*m)))
                        .collect();
                    writeln!(f, "    masking: {}", m.join(", "))?;
                }
                if !g.release.is_empty() {
                    writeln!(f, "    released in clear: {}", g.release.join(", "))?;
                }
                if g.redact_arguments {
                    writeln!(f, "    arguments redacted before they reach the server")?;
                }
            }
        }
        if !self.builtin_methods.is_empty() {
            writeln!(f, "builtin methods: {}", self.builtin_methods.join(", "))?;
        }
        for o in &self.other_roles {
            writeln!(
                f,
                "not held: role {} ({}) requires {}",
                o.name, o.rule, o.requires
            )?;
        }
        Ok(())
    }
}

/// One processing purpose (for the GDPR Art. 30 record of processing activities).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PurposeRecord {
    pub service: String,
    pub role: String,
    pub purpose: String,
    pub lawful_basis: String,
    pub lawful_basis_article: String,
    pub data_subjects: Vec<String>,
    /// The grant it comes from.
    pub rule: String,
}

// ---------------------------------------------------------------------------------------------
// File format (raw, as deserialized)
// ---------------------------------------------------------------------------------------------

type S<T> = Spanned<T>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    roles: Vec<S<RawRole>>,
    /// Calls held for human approval ([`crate::approval::rules`]).
    #[serde(default)]
    approvals: Vec<S<crate::approval::rules::RawRule>>,
    #[serde(default)]
    approvers: Vec<S<crate::approval::rules::RawApprover>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRole {
    name: S<String>,
    #[serde(default)]
    groups: Vec<S<String>>,
    #[serde(default)]
    subjects: Vec<S<String>>,
    #[serde(default)]
    clients: Vec<S<String>>,
    #[serde(default)]
    issuers: Vec<S<String>>,
    #[serde(default)]
    grants: Vec<S<RawGrant>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrant {
    service: S<String>,
    methods: Option<S<Vec<S<String>>>>,
    #[serde(default)]
    tools: Vec<S<String>>,
    #[serde(default)]
    resources: Vec<S<String>>,
    #[serde(default)]
    prompts: Vec<S<String>>,
    purpose: S<String>,
    lawful_basis: S<String>,
    #[serde(default)]
    data_subjects: Vec<S<String>>,
    #[serde(default)]
    masking: std::collections::BTreeMap<String, S<String>>,
    #[serde(default)]
    release: Vec<S<String>>,
    #[serde(default)]
    redact_arguments: bool,
    #[serde(default)]
    constraints: Vec<S<RawConstraint>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConstraint {
    tool: S<String>,
    expr: S<String>,
}

// ---------------------------------------------------------------------------------------------
// Compiled policy
// ---------------------------------------------------------------------------------------------

/// A loaded, validated set of policy files. Immutable; `Clone` shares it.
#[derive(Clone)]
pub struct PolicySet {
    inner: Arc<Inner>,
}

struct Inner {
    version: String,
    files: Vec<String>,
    roles: Vec<Role>,
    approvals: crate::approval::rules::ApprovalRules,
}

struct Role {
    name: String,
    rule: String,
    groups: Vec<String>,
    subjects: Vec<String>,
    clients: Vec<String>,
    issuers: Vec<String>,
    grants: Vec<Grant>,
}

struct Grant {
    rule: String,
    service: String,
    methods: Vec<MethodPattern>,
    tools: Patterns,
    resources: Patterns,
    prompts: Patterns,
    purpose: String,
    lawful_basis: LawfulBasis,
    data_subjects: Vec<String>,
    masking: Vec<(String, MaskMode)>,
    release: Vec<String>,
    redact_arguments: bool,
    constraints: Vec<Constraint>,
}

struct Constraint {
    rule: String,
    tool: String,
    expr: Expression,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MethodPattern {
    Any,
    Exact(String),
    /// Stored with the trailing `/`.
    Prefix(String),
}

impl MethodPattern {
    pub(crate) fn parse(s: &str) -> Result<MethodPattern, String> {
        if s == "*" {
            return Ok(MethodPattern::Any);
        }
        let (body, prefix) = match s.strip_suffix("/*") {
            Some(b) => (b, true),
            None => (s, false),
        };
        if body.is_empty() {
            return Err(if s.is_empty() {
                "empty method pattern".into()
            } else {
                format!("bad method pattern {s:?}: nothing before `/*`")
            });
        }
        if let Some(c) = body
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/')))
        {
            return Err(format!(
                "bad method pattern {s:?}: character {c:?} (expected a method name, `prefix/*` or `*`)"
            ));
        }
        if body.starts_with('/') || body.ends_with('/') || body.contains("//") {
            return Err(format!("bad method pattern {s:?}: empty path segment"));
        }
        Ok(if prefix {
            MethodPattern::Prefix(format!("{body}/"))
        } else {
            MethodPattern::Exact(body.to_string())
        })
    }

    pub(crate) fn matches(&self, method: &str) -> bool {
        match self {
            MethodPattern::Any => true,
            MethodPattern::Exact(m) => m == method,
            MethodPattern::Prefix(p) => method.starts_with(p.as_str()),
        }
    }

    pub(crate) fn text(&self) -> String {
        match self {
            MethodPattern::Any => "*".into(),
            MethodPattern::Exact(m) => m.clone(),
            MethodPattern::Prefix(p) => format!("{p}*"),
        }
    }
}

struct Patterns {
    src: Vec<String>,
    set: GlobSet,
}

impl Patterns {
    fn is_match(&self, s: &str) -> bool {
        !self.src.is_empty() && self.set.is_match(s)
    }
}

pub(crate) fn build_glob(p: &str) -> Result<globset::Glob, String> {
    if p.is_empty() {
        return Err("empty pattern".into());
    }
    GlobBuilder::new(p)
        .literal_separator(false)
        .backslash_escape(true)
        .case_insensitive(false)
        .build()
        .map_err(|e| format!("bad glob {p:?}: {}", e.kind()))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Tool,
    Resource,
    Prompt,
    Completion,
    None,
}

fn target_of(method: &str) -> Target {
    match method {
        "tools/call" => Target::Tool,
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => Target::Resource,
        "prompts/get" => Target::Prompt,
        "completion/complete" => Target::Completion,
        _ => Target::None,
    }
}

// ---------------------------------------------------------------------------------------------
// Loading and validation
// ---------------------------------------------------------------------------------------------

struct Loader {
    errors: Vec<PolicyError>,
    roles: Vec<Role>,
    /// Role name -> "file:line" of its first definition.
    role_names: HashMap<String, String>,
    approvals: crate::approval::rules::RulesLoader,
}

pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// `Some("roles.grants")` when `line` is a TOML table header.
fn header_of(line: &str) -> Option<String> {
    let t = line.trim();
    let t = match t.find('#') {
        Some(i) if !t[..i].contains('"') && !t[..i].contains('\'') => t[..i].trim_end(),
        _ => t,
    };
    let inner = t
        .strip_prefix("[[")
        .and_then(|r| r.strip_suffix("]]"))
        .or_else(|| t.strip_prefix('[').and_then(|r| r.strip_suffix(']')))?;
    let ok = !inner.trim().is_empty()
        && inner
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ' ' | '"' | '\''));
    ok.then(|| {
        inner
            .chars()
            .filter(|c| !matches!(c, ' ' | '"' | '\''))
            .collect()
    })
}

/// Best-effort key path of a TOML parser error: the enclosing table header, plus the field the
/// message names (unknown/missing/duplicate) or the key at the start of the error's line.
fn toml_error_key(text: &str, offset: Option<usize>, message: &str) -> String {
    let Some(offset) = offset else {
        return String::new();
    };
    let line_no = line_of(text, offset);
    let mut header = String::new();
    let mut this_line = "";
    for (i, l) in text.lines().enumerate() {
        if i + 1 > line_no {
            break;
        }
        if let Some(h) = header_of(l) {
            header = h;
        }
        this_line = l;
    }
    let named = ["unknown field `", "missing field `", "duplicate key `"]
        .iter()
        .find_map(|p| message.strip_prefix(p))
        .and_then(|rest| rest.split('`').next())
        .map(str::to_string);
    let field = named.or_else(|| {
        if header_of(this_line).is_some() {
            return None;
        }
        let (k, _) = this_line.split_once('=')?;
        let k = k.trim();
        (!k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
        .then(|| k.to_string())
    });
    match (header.is_empty(), field) {
        (_, None) => header,
        (true, Some(f)) => f,
        (false, Some(f)) => format!("{header}.{f}"),
    }
}

impl Loader {
    fn err(
        &mut self,
        file: &str,
        text: &str,
        span: Option<std::ops::Range<usize>>,
        key: String,
        problem: String,
    ) {
        self.errors.push(PolicyError {
            file: file.to_string(),
            line: span.map(|s| line_of(text, s.start)),
            key,
            problem,
        });
    }

    /// Validates one file; `file` names it in errors, `short` in rules.
    fn add_file(&mut self, file: &str, short: &str, text: &str) {
        let raw: RawFile = match toml::from_str(text) {
            Ok(r) => r,
            Err(e) => {
                let offset = e.span().map(|s| s.start);
                let msg = e.message().trim().to_string();
                self.errors.push(PolicyError {
                    file: file.to_string(),
                    line: offset.map(|o| line_of(text, o)),
                    key: toml_error_key(text, offset, &msg),
                    problem: msg,
                });
                return;
            }
        };
        for (ri, raw_role) in raw.roles.into_iter().enumerate() {
            let role_span = raw_role.span();
            let r = raw_role.into_inner();
            let name = r.name.get_ref().clone();
            let name_ok = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
            let label = if name_ok {
                format!("roles[{name}]")
            } else {
                format!("roles[{ri}]")
            };
            if !name_ok {
                self.err(
                    file,
                    text,
                    Some(r.name.span()),
                    format!("{label}.name"),
                    format!("bad role name {name:?}: use letters, digits, `_`, `-`, `.`"),
                );
            } else if let Some(first) = self.role_names.get(&name) {
                let first = first.clone();
                self.err(
                    file,
                    text,
                    Some(r.name.span()),
                    format!("{label}.name"),
                    format!("duplicate role name {name:?} (first defined at {first})"),
                );
            } else {
                self.role_names.insert(
                    name.clone(),
                    format!("{file}:{}", line_of(text, r.name.span().start)),
                );
            }
            let strings = |me: &mut Self, what: &str, list: Vec<S<String>>| -> Vec<String> {
                let mut out = Vec::with_capacity(list.len());
                for (i, s) in list.into_iter().enumerate() {
                    if s.get_ref().trim().is_empty() {
                        me.err(
                            file,
                            text,
                            Some(s.span()),
                            format!("{label}.{what}[{i}]"),
                            "empty value".into(),
                        );
                    }
                    out.push(s.into_inner());
                }
                out
            };
            let groups = strings(self, "groups", r.groups);
            let subjects = strings(self, "subjects", r.subjects);
            let clients = strings(self, "clients", r.clients);
            let issuers = strings(self, "issuers", r.issuers);
            if groups.is_empty() && subjects.is_empty() && clients.is_empty() {
                self.err(
                    file,
                    text,
                    Some(role_span.clone()),
                    label.clone(),
                    "role matches nobody: give at least one of groups, subjects, clients".into(),
                );
            }
            let rule = format!("{short}:{label}");
            let mut grants = Vec::new();
            for (gi, g) in r.grants.into_iter().enumerate() {
                let glabel = format!("{label}.grants[{gi}]");
                if let Some(grant) =
                    self.grant(file, text, &format!("{short}:{glabel}"), &glabel, g)
                {
                    grants.push(grant);
                }
            }
            self.roles.push(Role {
                name,
                rule,
                groups,
                subjects,
                clients,
                issuers,
                grants,
            });
        }
        self.approvals.add_file(
            file,
            short,
            text,
            raw.approvals,
            raw.approvers,
            &mut self.errors,
        );
    }

    fn patterns(&mut self, file: &str, text: &str, key: &str, list: Vec<S<String>>) -> Patterns {
        let mut b = GlobSetBuilder::new();
        let mut src = Vec::new();
        let mut ok = true;
        for (i, p) in list.into_iter().enumerate() {
            match build_glob(p.get_ref()) {
                Ok(g) => {
                    b.add(g);
                }
                Err(e) => {
                    ok = false;
                    self.err(file, text, Some(p.span()), format!("{key}[{i}]"), e);
                }
            }
            src.push(p.into_inner());
        }
        let set = if ok {
            b.build().unwrap_or_else(|e| {
                self.errors.push(PolicyError {
                    file: file.into(),
                    line: None,
                    key: key.into(),
                    problem: format!("bad glob set: {e}"),
                });
                GlobSet::empty()
            })
        } else {
            GlobSet::empty()
        };
        Patterns { src, set }
    }

    fn grant(
        &mut self,
        file: &str,
        text: &str,
        rule: &str,
        label: &str,
        g: S<RawGrant>,
    ) -> Option<Grant> {
        let gspan = g.span();
        let g = g.into_inner();
        let before = self.errors.len();

        let service = g.service.get_ref().clone();
        if service.is_empty() || service.chars().any(char::is_whitespace) {
            self.err(
                file,
                text,
                Some(g.service.span()),
                format!("{label}.service"),
                format!("bad service {service:?}: a service name from the agent config or \"*\""),
            );
        }

        let mut methods = Vec::new();
        let methods_span = match g.methods {
            None => {
                self.err(
                    file,
                    text,
                    Some(gspan.clone()),
                    format!("{label}.methods"),
                    "grant has no methods".into(),
                );
                gspan.clone()
            }
            Some(ms) => {
                let span = ms.span();
                let ms = ms.into_inner();
                if ms.is_empty() {
                    self.err(
                        file,
                        text,
                        Some(span.clone()),
                        format!("{label}.methods"),
                        "grant has no methods".into(),
                    );
                }
                for (i, m) in ms.into_iter().enumerate() {
                    match MethodPattern::parse(m.get_ref()) {
                        Ok(p) => methods.push(p),
                        Err(e) => self.err(
                            file,
                            text,
                            Some(m.span()),
                            format!("{label}.methods[{i}]"),
                            e,
                        ),
                    }
                }
                span
            }
        };

        let tools_span = g.tools.first().map(|s| s.span());
        let resources_span = g.resources.first().map(|s| s.span());
        let prompts_span = g.prompts.first().map(|s| s.span());
        let tools = self.patterns(file, text, &format!("{label}.tools"), g.tools);
        let resources = self.patterns(file, text, &format!("{label}.resources"), g.resources);
        let prompts = self.patterns(file, text, &format!("{label}.prompts"), g.prompts);

        // Consistency between methods and target lists.
        let exact = |m: &str| {
            methods
                .iter()
                .any(|p| *p == MethodPattern::Exact(m.to_string()))
        };
        let covers = |ms: &[&str]| ms.iter().any(|m| methods.iter().any(|p| p.matches(m)));
        let mut problems: Vec<(Option<std::ops::Range<usize>>, String, String)> = Vec::new();
        if exact("tools/call") && tools.src.is_empty() {
            problems.push((
                Some(methods_span.clone()),
                "methods".into(),
                "`tools/call` is granted but `tools` is empty: no tool could be called".into(),
            ));
        }
        for m in [
            "resources/read",
            "resources/subscribe",
            "resources/unsubscribe",
        ] {
            if exact(m) && resources.src.is_empty() {
                problems.push((
                    Some(methods_span.clone()),
                    "methods".into(),
                    format!("`{m}` is granted but `resources` is empty: no resource could be used"),
                ));
            }
        }
        if exact("prompts/get") && prompts.src.is_empty() {
            problems.push((
                Some(methods_span.clone()),
                "methods".into(),
                "`prompts/get` is granted but `prompts` is empty: no prompt could be used".into(),
            ));
        }
        if exact("completion/complete") && prompts.src.is_empty() && resources.src.is_empty() {
            problems.push((
                Some(methods_span.clone()),
                "methods".into(),
                "`completion/complete` is granted but `prompts` and `resources` are empty".into(),
            ));
        }
        if !methods.is_empty() {
            if !tools.src.is_empty() && !covers(&["tools/call"]) {
                problems.push((
                    tools_span,
                    "tools".into(),
                    "tools are listed but `methods` does not grant `tools/call`".into(),
                ));
            }
            if !resources.src.is_empty()
                && !covers(&[
                    "resources/read",
                    "resources/subscribe",
                    "resources/unsubscribe",
                    "completion/complete",
                ])
            {
                problems.push((resources_span, "resources".into(), "resources are listed but `methods` grants none of `resources/read`, `resources/subscribe`, `resources/unsubscribe`, `completion/complete`".into()));
            }
            if !prompts.src.is_empty() && !covers(&["prompts/get", "completion/complete"]) {
                problems.push((prompts_span, "prompts".into(), "prompts are listed but `methods` grants neither `prompts/get` nor `completion/complete`".into()));
            }
        }
        for (span, k, p) in problems {
            self.err(file, text, span, format!("{label}.{k}"), p);
        }

        let purpose = g.purpose.get_ref().trim().to_string();
        if purpose.is_empty() {
            self.err(
                file,
                text,
                Some(g.purpose.span()),
                format!("{label}.purpose"),
                "empty purpose".into(),
            );
        }
        let lawful_basis = LawfulBasis::parse(g.lawful_basis.get_ref());
        if lawful_basis.is_none() {
            self.err(
                file,
                text,
                Some(g.lawful_basis.span()),
                format!("{label}.lawful_basis"),
                format!(
                    "unknown lawful basis {:?}, expected one of {}",
                    g.lawful_basis.get_ref(),
                    LawfulBasis::ALL.map(|b| b.as_str()).join(", ")
                ),
            );
        }
        let mut data_subjects = Vec::new();
        for (i, d) in g.data_subjects.into_iter().enumerate() {
            if d.get_ref().trim().is_empty() {
                self.err(
                    file,
                    text,
                    Some(d.span()),
                    format!("{label}.data_subjects[{i}]"),
                    "empty value".into(),
                );
            }
            data_subjects.push(d.into_inner());
        }
        let mut masking = Vec::new();
        for (entity, mode) in g.masking {
            let key = format!("{label}.masking.{entity}");
            if !is_entity_name(&entity) {
                self.err(file, text, Some(mode.span()), key, format!("{entity:?} is not an entity type name (upper-case letters, digits and `_`, e.g. EMAIL)"));
                continue;
            }
            match mask_mode(mode.get_ref()) {
                Some(m) => masking.push((entity, m)),
                None => self.err(
                    file,
                    text,
                    Some(mode.span()),
                    key,
                    format!(
                        "unknown mask mode {:?}, expected remove, partial or pseudonymize",
                        mode.get_ref()
                    ),
                ),
            }
        }
        let mut release = Vec::new();
        for (i, e) in g.release.into_iter().enumerate() {
            if !is_entity_name(e.get_ref()) {
                self.err(file, text, Some(e.span()), format!("{label}.release[{i}]"), format!("{:?} is not an entity type name (upper-case letters, digits and `_`, e.g. EMAIL)", e.get_ref()));
            } else if !release.contains(e.get_ref()) {
                release.push(e.into_inner());
            }
        }

        let mut constraints = Vec::new();
        for (ci, c) in g.constraints.into_iter().enumerate() {
            let clabel = format!("{label}.constraints[{ci}]");
            let c = c.into_inner();
            let tool = c.tool.get_ref().clone();
            if tool.is_empty() {
                self.err(
                    file,
                    text,
                    Some(c.tool.span()),
                    format!("{clabel}.tool"),
                    "empty tool name".into(),
                );
            } else if !tools.is_match(&tool) {
                self.err(
                    file,
                    text,
                    Some(c.tool.span()),
                    format!("{clabel}.tool"),
                    format!(
                        "constraint on tool {tool:?}, which the grant's tools [{}] do not cover",
                        tools.src.join(", ")
                    ),
                );
            }
            match Expression::parse(c.expr.get_ref()) {
                Ok(expr) => constraints.push(Constraint {
                    rule: format!("{rule}.constraints[{ci}]"),
                    tool,
                    expr,
                }),
                Err(e) => self.err(
                    file,
                    text,
                    Some(c.expr.span()),
                    format!("{clabel}.expr"),
                    e.to_string(),
                ),
            }
        }

        if self.errors.len() != before {
            return None;
        }
        Some(Grant {
            rule: rule.to_string(),
            service,
            methods,
            tools,
            resources,
            prompts,
            purpose,
            lawful_basis: lawful_basis?,
            data_subjects,
            masking,
            release,
            redact_arguments: g.redact_arguments,
            constraints,
        })
    }
}

fn short_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

impl PolicySet {
    /// A policy set without roles: denies everything.
    pub fn empty() -> PolicySet {
        PolicySet::build(&[]).unwrap_or_else(|_| PolicySet {
            inner: Arc::new(Inner {
                version: String::new(),
                files: Vec::new(),
                roles: Vec::new(),
                approvals: Default::default(),
            }),
        })
    }

    /// Loads and validates policy files, or every `*.policy.toml` directly in a directory
    /// (sorted by name). Rules name files by their file name, which must be unique.
    pub fn load(paths: &[PathBuf]) -> Result<PolicySet, PolicyErrors> {
        let mut errors = Vec::new();
        let mut files: Vec<(String, String, String)> = Vec::new();
        let fail = |file: &Path, problem: String| PolicyError {
            file: file.display().to_string(),
            line: None,
            key: String::new(),
            problem,
        };
        for p in paths {
            if p.is_dir() {
                let rd = match std::fs::read_dir(p) {
                    Ok(rd) => rd,
                    Err(e) => {
                        errors.push(fail(p, format!("cannot read directory: {e}")));
                        continue;
                    }
                };
                let mut found: Vec<PathBuf> = rd
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|f| f.is_file() && short_name(f).ends_with(POLICY_FILE_SUFFIX))
                    .collect();
                found.sort();
                if found.is_empty() {
                    errors.push(fail(
                        p,
                        format!("no *{POLICY_FILE_SUFFIX} files in this directory"),
                    ));
                }
                for f in found {
                    match std::fs::read_to_string(&f) {
                        Ok(t) => files.push((f.display().to_string(), short_name(&f), t)),
                        Err(e) => errors.push(fail(&f, format!("cannot read: {e}"))),
                    }
                }
            } else {
                match std::fs::read_to_string(p) {
                    Ok(t) => files.push((p.display().to_string(), short_name(p), t)),
                    Err(e) => errors.push(fail(p, format!("cannot read: {e}"))),
                }
            }
        }
        let mut seen: HashMap<&str, &str> = HashMap::new();
        for (file, short, _) in &files {
            if let Some(first) = seen.insert(short.as_str(), file.as_str()) {
                errors.push(PolicyError {
                    file: file.clone(),
                    line: None,
                    key: String::new(),
                    problem: format!("file name {short:?} already loaded from {first}; rules name files by file name, which must be unique"),
                });
            }
        }
        match PolicySet::build(&files) {
            Ok(set) if errors.is_empty() => Ok(set),
            Ok(_) => Err(PolicyErrors(errors)),
            Err(PolicyErrors(more)) => {
                errors.extend(more);
                Err(PolicyErrors(errors))
            }
        }
    }

    /// Parses one policy text named `name` (as if loaded from a file of that name).
    pub fn from_str(name: &str, text: &str) -> Result<PolicySet, PolicyErrors> {
        PolicySet::build(&[(name.to_string(), name.to_string(), text.to_string())])
    }

    /// `files`: (name in errors, name in rules, content).
    fn build(files: &[(String, String, String)]) -> Result<PolicySet, PolicyErrors> {
        let mut loader = Loader {
            errors: Vec::new(),
            roles: Vec::new(),
            role_names: HashMap::new(),
            approvals: Default::default(),
        };
        let mut hash = Sha256::new();
        for (file, short, text) in files {
            hash.update((short.len() as u64).to_le_bytes());
            hash.update(short.as_bytes());
            hash.update((text.len() as u64).to_le_bytes());
            hash.update(text.as_bytes());
            loader.add_file(file, short, text);
        }
        let approvals =
            std::mem::take(&mut loader.approvals).finish(&loader.role_names, &mut loader.errors);
        if !loader.errors.is_empty() {
            return Err(PolicyErrors(loader.errors));
        }
        let mut version = hex::encode(hash.finalize());
        version.truncate(16);
        Ok(PolicySet {
            inner: Arc::new(Inner {
                version,
                files: files.iter().map(|f| f.1.clone()).collect(),
                roles: loader.roles,
                approvals,
            }),
        })
    }

    /// Content hash of all files (16 hex digits), stable across loads.
    pub fn version(&self) -> &str {
        &self.inner.version
    }

    /// File names (without directory) in load order.
    pub fn files(&self) -> &[String] {
        &self.inner.files
    }

    /// The `[[approvals]]` rules and `[[approvers]]` of the files.
    pub fn approval_rules(&self) -> &crate::approval::rules::ApprovalRules {
        &self.inner.approvals
    }

    /// Roles the principal holds, in order.
    fn held<'s>(&'s self, who: &Principal) -> Vec<&'s Role> {
        self.inner
            .roles
            .iter()
            .filter(|r| r.is_held_by(who))
            .collect()
    }

    /// (role, grant) pairs for the service among the roles held, in order.
    fn grants_for<'s>(&'s self, held: &[&'s Role], service: &str) -> Vec<(&'s Role, &'s Grant)> {
        held.iter()
            .flat_map(|r| r.grants.iter().map(move |g| (*r, g)))
            .filter(|(_, g)| g.service == "*" || g.service == service)
            .collect()
    }

    /// The masking and releases of every grant `who` holds for `service`, in order: what a
    /// stream that carries answers to several calls (the GET stream, the legacy SSE channel)
    /// may show them, combined as for a batch (`redact::view::common_view`).
    pub fn grant_views(&self, service: &str, who: &Principal) -> Vec<GrantView> {
        let held = self.held(who);
        self.grants_for(&held, service)
            .into_iter()
            .map(|(_, g)| (g.masking.clone(), g.release.clone()))
            .collect()
    }

    /// Decides one client→server message. Never panics.
    pub fn decide(&self, req: &PolicyRequest<'_>) -> PolicyDecision {
        let deny = |rule: &str, reason: String| PolicyDecision {
            allowed: false,
            role: None,
            rule: rule.to_string(),
            reason,
            purpose: None,
            lawful_basis: None,
            policy_version: self.inner.version.clone(),
            masking: Vec::new(),
            release: Vec::new(),
            redact_arguments: false,
        };
        let method = clip(req.method);
        let held = self.held(req.who);
        if held.is_empty() {
            return deny(
                RULE_DEFAULT_DENY,
                format!("no role matches {}", describe(req.who)),
            );
        }
        let grants = self.grants_for(&held, req.service);
        let role_names = held
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        if grants.is_empty() {
            return deny(
                RULE_DEFAULT_DENY,
                format!(
                    "roles [{role_names}] have no grant for service {:?}",
                    clip(req.service)
                ),
            );
        }
        let builtin = |rule: &str, reason: String| PolicyDecision {
            allowed: true,
            role: Some(grants[0].0.name.clone()),
            rule: rule.to_string(),
            reason,
            purpose: None,
            lawful_basis: None,
            policy_version: self.inner.version.clone(),
            masking: Vec::new(),
            release: Vec::new(),
            redact_arguments: false,
        };
        if PROTOCOL_METHODS.contains(&req.method) {
            return builtin(
                RULE_PROTOCOL,
                format!(
                    "{method} is protocol plumbing, allowed to holders of a grant for service {:?} (role {})",
                    req.service, grants[0].0.name
                ),
            );
        }
        if LIST_METHODS.contains(&req.method) {
            return builtin(
                RULE_LIST,
                format!(
                    "{method} is allowed to holders of a grant for service {:?} (role {}); the result is filtered",
                    req.service, grants[0].0.name
                ),
            );
        }

        let target = target_of(req.method);
        let name = match (target, req.name) {
            (Target::None, _) => "",
            (_, Some(n)) => n,
            (_, None) => return deny(RULE_DEFAULT_DENY, format!("{method} without a target name")),
        };
        // Most specific failure so far: (stage, rule, reason); stage 1 = name, 2 = constraint.
        let mut failure: Option<(u8, String, String)> = None;
        let mut note = |stage: u8, rule: &str, reason: String| {
            if failure.as_ref().is_none_or(|f| f.0 < stage) {
                failure = Some((stage, rule.to_string(), reason));
            }
        };
        for (role, g) in &grants {
            if !g.methods.iter().any(|m| m.matches(req.method)) {
                continue;
            }
            let name_ok = match target {
                Target::Tool => g.tools.is_match(name),
                Target::Resource => g.resources.is_match(name),
                Target::Prompt => g.prompts.is_match(name),
                Target::Completion => g.prompts.is_match(name) || g.resources.is_match(name),
                Target::None => true,
            };
            if !name_ok {
                note(1, RULE_DEFAULT_DENY, String::new());
                continue;
            }
            let mut held_constraints = Vec::new();
            let mut failed = None;
            if target == Target::Tool {
                for c in g.constraints.iter().filter(|c| c.tool == name) {
                    let text = c.describe(req.arguments);
                    if c.expr.holds(req.arguments) {
                        held_constraints.push(text);
                    } else {
                        failed = Some((c, text));
                        break;
                    }
                }
            }
            if let Some((c, text)) = failed {
                note(2, &c.rule, text);
                continue;
            }
            let what = if target == Target::None {
                method.clone()
            } else {
                format!("{method} on {:?}", clip(name))
            };
            let mut reason = format!(
                "role {}: grant allows {what} for {:?}",
                role.name, g.purpose
            );
            if !held_constraints.is_empty() {
                reason.push_str(&format!("; holds: {}", held_constraints.join("; ")));
            }
            return PolicyDecision {
                allowed: true,
                role: Some(role.name.clone()),
                rule: g.rule.clone(),
                reason,
                purpose: Some(g.purpose.clone()),
                lawful_basis: Some(g.lawful_basis.as_str().to_string()),
                policy_version: self.inner.version.clone(),
                masking: g.masking.clone(),
                release: g.release.clone(),
                redact_arguments: g.redact_arguments,
            };
        }
        match failure {
            Some((2, rule, reason)) => deny(&rule, reason),
            Some(_) => {
                let kind = match target {
                    Target::Tool => "tools",
                    Target::Resource => "resources",
                    Target::Prompt => "prompts",
                    _ => "prompts or resources",
                };
                deny(
                    RULE_DEFAULT_DENY,
                    format!(
                        "{:?} matches no {kind} pattern of the {method} grants of roles [{role_names}] for service {:?}",
                        clip(name),
                        clip(req.service)
                    ),
                )
            }
            None => deny(
                RULE_DEFAULT_DENY,
                format!(
                    "method {method} is not granted to roles [{role_names}] for service {:?}",
                    clip(req.service)
                ),
            ),
        }
    }

    /// Filters the `result` of `tools/list` (`tools[].name`), `resources/list`
    /// (`resources[].uri`), `resources/templates/list` (`resourceTemplates[].uriTemplate`) or
    /// `prompts/list` (`prompts[].name`) in place to the entries the caller may use (a grant
    /// for `tools/call`, `resources/read`, `prompts/get` matching it; constraints are not
    /// considered). Entries without a string key are removed; a list that is not an array is
    /// replaced by an empty one (counted as one). Other fields are left alone. Returns how
    /// many entries were removed; other methods and non-object results are left untouched.
    pub fn filter_list(
        &self,
        service: &str,
        who: &Principal,
        method: &str,
        result: &mut Value,
    ) -> usize {
        let (list_key, item_key, use_method) = match method {
            "tools/list" => ("tools", "name", "tools/call"),
            "resources/list" => ("resources", "uri", "resources/read"),
            "resources/templates/list" => ("resourceTemplates", "uriTemplate", "resources/read"),
            "prompts/list" => ("prompts", "name", "prompts/get"),
            _ => return 0,
        };
        let Some(obj) = result.as_object_mut() else {
            return 0;
        };
        let Some(list) = obj.get_mut(list_key) else {
            return 0;
        };
        let Some(items) = list.as_array_mut() else {
            *list = Value::Array(Vec::new());
            return 1;
        };
        let held = self.held(who);
        let grants: Vec<&Grant> = self
            .grants_for(&held, service)
            .into_iter()
            .map(|(_, g)| g)
            .filter(|g| g.methods.iter().any(|m| m.matches(use_method)))
            .collect();
        let allowed = |name: &str| {
            grants.iter().any(|g| match use_method {
                "tools/call" => g.tools.is_match(name),
                "resources/read" => g.resources.is_match(name),
                _ => g.prompts.is_match(name),
            })
        };
        let before = items.len();
        items.retain(|item| {
            item.get(item_key)
                .and_then(Value::as_str)
                .is_some_and(allowed)
        });
        before - items.len()
    }

    /// What a principal may do on a service and why.
    pub fn explain(&self, service: &str, who: &Principal) -> Explanation {
        let mut roles = Vec::new();
        let mut other_roles = Vec::new();
        let mut any_grant = false;
        for r in &self.inner.roles {
            let grants: Vec<GrantExplanation> = r
                .grants
                .iter()
                .filter(|g| g.service == "*" || g.service == service)
                .map(Grant::explain)
                .collect();
            let matched_by = r.matched_by(who);
            if matched_by.is_empty() {
                if !grants.is_empty() {
                    other_roles.push(UnmatchedRole {
                        name: r.name.clone(),
                        rule: r.rule.clone(),
                        requires: r.requires(),
                    });
                }
                continue;
            }
            any_grant |= !grants.is_empty();
            roles.push(RoleExplanation {
                name: r.name.clone(),
                rule: r.rule.clone(),
                matched_by,
                grants,
            });
        }
        let builtin_methods = if any_grant {
            PROTOCOL_METHODS
                .iter()
                .chain(LIST_METHODS)
                .map(|m| m.to_string())
                .collect()
        } else {
            Vec::new()
        };
        let summary = if roles.is_empty() {
            format!("no role matches: every request to {service} is denied ({RULE_DEFAULT_DENY})")
        } else if !any_grant {
            format!(
                "roles [{}] have no grant for {service}: every request is denied ({RULE_DEFAULT_DENY})",
                roles
                    .iter()
                    .map(|r| r.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            let n: usize = roles.iter().map(|r| r.grants.len()).sum();
            format!(
                "roles [{}] with {n} grant(s) for {service}; grants are tried in the order shown, the first that allows wins",
                roles
                    .iter()
                    .filter(|r| !r.grants.is_empty())
                    .map(|r| r.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        Explanation {
            service: service.to_string(),
            principal: who.clone(),
            policy_version: self.inner.version.clone(),
            roles,
            builtin_methods,
            other_roles,
            summary,
        }
    }

    /// Every (service, role, purpose, lawful basis, data subjects), one per grant, in order,
    /// without exact duplicates.
    pub fn services_purposes(&self) -> Vec<PurposeRecord> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for r in &self.inner.roles {
            for g in &r.grants {
                let key = (
                    g.service.clone(),
                    r.name.clone(),
                    g.purpose.clone(),
                    g.lawful_basis,
                    g.data_subjects.clone(),
                );
                if seen.insert(key) {
                    out.push(PurposeRecord {
                        service: g.service.clone(),
                        role: r.name.clone(),
                        purpose: g.purpose.clone(),
                        lawful_basis: g.lawful_basis.as_str().to_string(),
                        lawful_basis_article: g.lawful_basis.article().to_string(),
                        data_subjects: g.data_subjects.clone(),
                        rule: g.rule.clone(),
                    });
                }
            }
        }
        out
    }
}

impl Default for PolicySet {
    fn default() -> Self {
        PolicySet::empty()
    }
}

impl fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicySet")
            .field("version", &self.inner.version)
            .field("files", &self.inner.files)
            .field(
                "roles",
                &self.inner.roles.iter().map(|r| &r.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Role {
    /// Whether `who` holds this role (same as `!matched_by(who).is_empty()`, without allocating).
    fn is_held_by(&self, who: &Principal) -> bool {
        (self.issuers.is_empty() || self.issuers.contains(&who.issuer))
            && (who.groups.iter().any(|g| self.groups.contains(g))
                || self.subjects.contains(&who.subject)
                || who
                    .client_id
                    .as_ref()
                    .is_some_and(|c| self.clients.contains(c)))
    }

    /// Why `who` holds this role (empty: it does not).
    fn matched_by(&self, who: &Principal) -> Vec<String> {
        if !self.issuers.is_empty() && !self.issuers.contains(&who.issuer) {
            return Vec::new();
        }
        let mut out = Vec::new();
        for g in &who.groups {
            if self.groups.contains(g) {
                out.push(format!("group {g}"));
            }
        }
        if self.subjects.contains(&who.subject) {
            out.push(format!("subject {}", who.subject));
        }
        if let Some(c) = who.client_id.as_ref().filter(|c| self.clients.contains(c)) {
            out.push(format!("client {c}"));
        }
        out
    }

    fn requires(&self) -> String {
        let mut parts = Vec::new();
        for (k, v) in [
            ("groups", &self.groups),
            ("subjects", &self.subjects),
            ("clients", &self.clients),
        ] {
            if !v.is_empty() {
                parts.push(format!("{k} [{}]", v.join(", ")));
            }
        }
        let mut s = parts.join(" or ");
        if !self.issuers.is_empty() {
            s.push_str(&format!("; issuers [{}]", self.issuers.join(", ")));
        }
        s
    }
}

impl Grant {
    fn explain(&self) -> GrantExplanation {
        GrantExplanation {
            rule: self.rule.clone(),
            service: self.service.clone(),
            methods: self.methods.iter().map(MethodPattern::text).collect(),
            tools: self.tools.src.clone(),
            resources: self.resources.src.clone(),
            prompts: self.prompts.src.clone(),
            constraints: self
                .constraints
                .iter()
                .map(|c| ConstraintExplanation {
                    rule: c.rule.clone(),
                    tool: c.tool.clone(),
                    expr: c.expr.source().to_string(),
                })
                .collect(),
            purpose: self.purpose.clone(),
            lawful_basis: self.lawful_basis.as_str().to_string(),
            lawful_basis_article: self.lawful_basis.article().to_string(),
            data_subjects: self.data_subjects.clone(),
            masking: self.masking.clone(),
            release: self.release.clone(),
            redact_arguments: self.redact_arguments,
        }
    }
}

impl Constraint {
    /// `constraint export_customers: limit <= 100 (limit = 5000)`.
    fn describe(&self, args: Option<&Value>) -> String {
        let vals = self
            .expr
            .paths()
            .iter()
            .map(|p| match p.resolve(args) {
                Some(v) => format!("{} = {}", p.text, render_value(v)),
                None => format!("{} missing", p.text),
            })
            .collect::<Vec<_>>();
        let mut s = format!("constraint {}: {}", self.tool, self.expr.source());
        if !vals.is_empty() {
            s.push_str(&format!(" ({})", vals.join(", ")));
        }
        s
    }
}

/// At most `n` characters, with `…` when cut.
fn truncate(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

fn clip(s: &str) -> String {
    truncate(s, MAX_NAME_CHARS)
}

fn render_value(v: &Value) -> String {
    truncate(&v.to_string(), MAX_VALUE_CHARS)
}

fn describe(who: &Principal) -> String {
    let groups: Vec<String> = who.groups.iter().take(10).map(|g| clip(g)).collect();
    let more = if who.groups.len() > 10 {
        format!(", … {} more", who.groups.len() - 10)
    } else {
        String::new()
    };
    format!(
        "subject {:?} (issuer {:?}, client {}, groups [{}{more}])",
        clip(&who.subject),
        clip(&who.issuer),
        who.client_id
            .as_deref()
            .map(clip)
            .unwrap_or_else(|| "none".into()),
        groups.join(", ")
    )
}

// ---------------------------------------------------------------------------------------------
// Constraint expressions
// ---------------------------------------------------------------------------------------------

/// A syntax error in a constraint expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError {
    /// 1-based character column inside the expression.
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "column {}: {}", self.column, self.message)
    }
}

impl std::error::Error for ExprError {}

/// A parsed constraint expression (see the module documentation for the language).
#[derive(Debug, Clone, PartialEq)]
pub struct Expression {
    src: String,
    root: Expr,
    paths: Vec<ArgPath>,
}

#[derive(Debug, Clone, PartialEq)]
struct ArgPath {
    text: String,
    segments: Vec<String>,
}

impl ArgPath {
    fn resolve<'v>(&self, args: Option<&'v Value>) -> Option<&'v Value> {
        let mut cur = args?;
        if !cur.is_object() {
            return None;
        }
        for s in &self.segments {
            cur = match cur {
                Value::Object(m) => m.get(s)?,
                Value::Array(a) => a.get(s.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(cur)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CmpOp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

#[derive(Debug, Clone, PartialEq)]
enum Operand {
    Path(ArgPath),
    Lit(Value),
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Or(Vec<Expr>),
    And(Vec<Expr>),
    Not(Box<Expr>),
    Exists(ArgPath),
    Cmp(Operand, CmpOp, Operand),
    In(ArgPath, Vec<Value>),
}

/// Three-valued (Kleene) truth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Truth {
    True,
    False,
    Undefined,
}

impl Truth {
    fn of(b: bool) -> Truth {
        if b { Truth::True } else { Truth::False }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Path(Vec<String>),
    Num(Value),
    Str(String),
    LParen,
    RParen,
    LBrack,
    RBrack,
    Comma,
    Cmp(CmpOp),
    And,
    Or,
    Not,
}

fn tok_name(t: &Tok) -> String {
    match t {
        Tok::Path(s) => format!("`{}`", s.join(".")),
        Tok::Num(v) => format!("number {v}"),
        Tok::Str(s) => format!("string {:?}", truncate(s, 20)),
        Tok::LParen => "`(`".into(),
        Tok::RParen => "`)`".into(),
        Tok::LBrack => "`[`".into(),
        Tok::RBrack => "`]`".into(),
        Tok::Comma => "`,`".into(),
        Tok::Cmp(op) => format!("`{}`", op_text(*op)),
        Tok::And => "`&&`".into(),
        Tok::Or => "`||`".into(),
        Tok::Not => "`!`".into(),
    }
}

fn op_text(op: CmpOp) -> &'static str {
    match op {
        CmpOp::Lt => "<",
        CmpOp::Le => "<=",
        CmpOp::Gt => ">",
        CmpOp::Ge => ">=",
        CmpOp::Eq => "==",
        CmpOp::Ne => "!=",
    }
}

fn lex(src: &str) -> Result<Vec<(Tok, usize)>, ExprError> {
    let chars: Vec<char> = src.chars().collect();
    let err = |column: usize, message: String| ExprError { column, message };
    let mut out = Vec::new();
    let mut i = 0;
    let seg_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    while i < chars.len() {
        let c = chars[i];
        let col = i + 1;
        let next = chars.get(i + 1).copied();
        match c {
            c if c.is_whitespace() => {
                i += 1;
                continue;
            }
            '(' => out.push((Tok::LParen, col)),
            ')' => out.push((Tok::RParen, col)),
            '[' => out.push((Tok::LBrack, col)),
            ']' => out.push((Tok::RBrack, col)),
            ',' => out.push((Tok::Comma, col)),
            '<' | '>' | '=' | '!' => {
                let two = next == Some('=');
                let tok = match (c, two) {
                    ('<', false) => Tok::Cmp(CmpOp::Lt),
                    ('<', true) => Tok::Cmp(CmpOp::Le),
                    ('>', false) => Tok::Cmp(CmpOp::Gt),
                    ('>', true) => Tok::Cmp(CmpOp::Ge),
                    ('=', true) => Tok::Cmp(CmpOp::Eq),
                    ('!', true) => Tok::Cmp(CmpOp::Ne),
                    ('!', false) => Tok::Not,
                    _ => return Err(err(col, "`=` is not an operator; use `==`".into())),
                };
                if two {
                    i += 1;
                }
                out.push((tok, col));
            }
            '&' | '|' => {
                if next != Some(c) {
                    return Err(err(col, format!("`{c}` is not an operator; use `{c}{c}`")));
                }
                i += 1;
                out.push((if c == '&' { Tok::And } else { Tok::Or }, col));
            }
            '"' | '\'' => {
                let mut s = String::new();
                let mut j = i + 1;
                loop {
                    match chars.get(j) {
                        None => return Err(err(col, "unterminated string".into())),
                        Some(&q) if q == c => break,
                        Some('\\') => {
                            let e = match chars.get(j + 1) {
                                Some('\\') => '\\',
                                Some('"') => '"',
                                Some('\'') => '\'',
                                Some('n') => '\n',
                                Some('r') => '\r',
                                Some('t') => '\t',
                                Some(o) => {
                                    return Err(err(j + 1, format!("unknown escape `\\{o}`")));
                                }
                                None => return Err(err(col, "unterminated string".into())),
                            };
                            s.push(e);
                            j += 2;
                        }
                        Some(&o) => {
                            s.push(o);
                            j += 1;
                        }
                    }
                }
                i = j;
                out.push((Tok::Str(s), col));
            }
            c if c.is_ascii_digit() || (c == '-' && next.is_some_and(|n| n.is_ascii_digit())) => {
                let mut j = i + 1;
                while chars.get(j).is_some_and(char::is_ascii_digit) {
                    j += 1;
                }
                let mut float = false;
                if chars.get(j) == Some(&'.') && chars.get(j + 1).is_some_and(char::is_ascii_digit)
                {
                    float = true;
                    j += 1;
                    while chars.get(j).is_some_and(char::is_ascii_digit) {
                        j += 1;
                    }
                }
                if matches!(chars.get(j), Some('e' | 'E')) {
                    let mut k = j + 1;
                    if matches!(chars.get(k), Some('+' | '-')) {
                        k += 1;
                    }
                    if chars.get(k).is_some_and(char::is_ascii_digit) {
                        float = true;
                        j = k;
                        while chars.get(j).is_some_and(char::is_ascii_digit) {
                            j += 1;
                        }
                    }
                }
                if chars
                    .get(j)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
                {
                    return Err(err(
                        j + 1,
                        format!("unexpected {:?} after a number", chars[j]),
                    ));
                }
                let text: String = chars[i..j].iter().collect();
                let v = if float {
                    None
                } else if let Ok(n) = text.parse::<i64>() {
                    Some(Value::from(n))
                } else {
                    text.parse::<u64>().ok().map(Value::from)
                };
                let v = match v {
                    Some(v) => v,
                    None => match text
                        .parse::<f64>()
                        .ok()
                        .and_then(serde_json::Number::from_f64)
                    {
                        Some(n) if n.as_f64().is_some_and(f64::is_finite) => Value::Number(n),
                        _ => return Err(err(col, format!("number {text} out of range"))),
                    },
                };
                i = j - 1;
                out.push((Tok::Num(v), col));
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let mut segs = Vec::new();
                let mut j = i;
                loop {
                    let start = j;
                    while chars.get(j).is_some_and(|c| seg_char(*c)) {
                        j += 1;
                    }
                    if start == j {
                        return Err(err(j + 1, "expected a path segment after `.`".into()));
                    }
                    segs.push(chars[start..j].iter().collect::<String>());
                    if chars.get(j) == Some(&'.') {
                        j += 1;
                    } else {
                        break;
                    }
                }
                i = j - 1;
                out.push((Tok::Path(segs), col));
            }
            o => return Err(err(col, format!("unexpected character {o:?}"))),
        }
        i += 1;
    }
    Ok(out)
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
    depth: usize,
    end: usize,
    paths: Vec<ArgPath>,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.0)
    }

    fn col(&self) -> usize {
        self.toks.get(self.pos).map(|t| t.1).unwrap_or(self.end)
    }

    fn found(&self) -> String {
        self.peek()
            .map(tok_name)
            .unwrap_or_else(|| "end of expression".into())
    }

    fn fail<T>(&self, expected: &str) -> Result<T, ExprError> {
        Err(ExprError {
            column: self.col(),
            message: format!("expected {expected}, found {}", self.found()),
        })
    }

    fn bump(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).map(|t| t.0.clone());
        self.pos += 1;
        t
    }

    fn enter(&mut self) -> Result<(), ExprError> {
        self.depth += 1;
        if self.depth > MAX_EXPR_DEPTH {
            return Err(ExprError {
                column: self.col(),
                message: format!("nested more than {MAX_EXPR_DEPTH} levels"),
            });
        }
        Ok(())
    }

    fn or(&mut self) -> Result<Expr, ExprError> {
        let mut v = vec![self.and()?];
        while self.peek() == Some(&Tok::Or) {
            self.bump();
            v.push(self.and()?);
        }
        Ok(if v.len() == 1 {
            v.remove(0)
        } else {
            Expr::Or(v)
        })
    }

    fn and(&mut self) -> Result<Expr, ExprError> {
        let mut v = vec![self.unary()?];
        while self.peek() == Some(&Tok::And) {
            self.bump();
            v.push(self.unary()?);
        }
        Ok(if v.len() == 1 {
            v.remove(0)
        } else {
            Expr::And(v)
        })
    }

    fn unary(&mut self) -> Result<Expr, ExprError> {
        self.enter()?;
        let e = self.unary_inner();
        self.depth -= 1;
        e
    }

    fn path(&mut self, segs: Vec<String>) -> ArgPath {
        let p = ArgPath {
            text: segs.join("."),
            segments: segs,
        };
        if !self.paths.contains(&p) {
            self.paths.push(p.clone());
        }
        p
    }

    fn unary_inner(&mut self) -> Result<Expr, ExprError> {
        match self.peek() {
            Some(Tok::Not) => {
                self.bump();
                Ok(Expr::Not(Box::new(self.unary()?)))
            }
            Some(Tok::LParen) => {
                self.bump();
                let e = self.or()?;
                if self.peek() != Some(&Tok::RParen) {
                    return self.fail("`)` or an operator");
                }
                self.bump();
                Ok(e)
            }
            Some(Tok::Path(s))
                if s.len() == 1
                    && s[0] == "exists"
                    && self.toks.get(self.pos + 1).map(|t| &t.0) == Some(&Tok::LParen) =>
            {
                self.pos += 2;
                let Some(Tok::Path(segs)) = self.peek().cloned() else {
                    return self.fail("an argument path");
                };
                if is_keyword(&segs) {
                    return self.fail("an argument path");
                }
                self.bump();
                let p = self.path(segs);
                if self.peek() != Some(&Tok::RParen) {
                    return self.fail("`)`");
                }
                self.bump();
                Ok(Expr::Exists(p))
            }
            _ => self.comparison(),
        }
    }

    fn literal(&mut self) -> Option<Value> {
        let v = match self.peek()? {
            Tok::Num(v) => v.clone(),
            Tok::Str(s) => Value::String(s.clone()),
            Tok::Path(s) if s.len() == 1 && s[0] == "true" => Value::Bool(true),
            Tok::Path(s) if s.len() == 1 && s[0] == "false" => Value::Bool(false),
            Tok::Path(s) if s.len() == 1 && s[0] == "null" => Value::Null,
            _ => return None,
        };
        self.bump();
        Some(v)
    }

    fn operand(&mut self) -> Result<Operand, ExprError> {
        if let Some(v) = self.literal() {
            return Ok(Operand::Lit(v));
        }
        match self.peek().cloned() {
            Some(Tok::Path(segs)) if !is_keyword(&segs) => {
                self.bump();
                Ok(Operand::Path(self.path(segs)))
            }
            _ => self.fail("an argument, a literal, `!`, `(` or `exists(`"),
        }
    }

    fn comparison(&mut self) -> Result<Expr, ExprError> {
        let start = self.col();
        let left = self.operand()?;
        match self.peek().cloned() {
            Some(Tok::Path(s)) if s.len() == 1 && s[0] == "in" => {
                let Operand::Path(p) = left else {
                    return Err(ExprError {
                        column: start,
                        message: "the left side of `in` must be an argument".into(),
                    });
                };
                self.bump();
                if self.peek() != Some(&Tok::LBrack) {
                    return self.fail("`[`");
                }
                self.bump();
                let mut items = Vec::new();
                loop {
                    if self.peek() == Some(&Tok::RBrack) {
                        if items.is_empty() {
                            return Err(ExprError {
                                column: self.col(),
                                message: "empty list".into(),
                            });
                        }
                        self.bump();
                        break;
                    }
                    match self.literal() {
                        Some(v) => items.push(v),
                        None => return self.fail("a literal (number, string, true, false, null)"),
                    }
                    match self.peek() {
                        Some(Tok::Comma) => {
                            self.bump();
                        }
                        Some(Tok::RBrack) => {}
                        _ => return self.fail("`,` or `]`"),
                    }
                }
                Ok(Expr::In(p, items))
            }
            Some(Tok::Cmp(op)) => {
                self.bump();
                let right = self.operand()?;
                if matches!((&left, &right), (Operand::Lit(_), Operand::Lit(_))) {
                    return Err(ExprError {
                        column: start,
                        message: "comparison of two literals; one side must be an argument".into(),
                    });
                }
                Ok(Expr::Cmp(left, op, right))
            }
            _ => self.fail("a comparison operator (<, <=, >, >=, ==, !=) or `in`"),
        }
    }
}

fn is_keyword(segs: &[String]) -> bool {
    segs.len() == 1
        && matches!(
            segs[0].as_str(),
            "true" | "false" | "null" | "in" | "exists"
        )
}

fn num_cmp(a: &serde_json::Number, b: &serde_json::Number) -> Option<Ordering> {
    let int = |n: &serde_json::Number| {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    };
    match (int(a), int(b)) {
        (Some(x), Some(y)) => Some(x.cmp(&y)),
        _ => a.as_f64()?.partial_cmp(&b.as_f64()?),
    }
}

fn compare(a: &Value, op: CmpOp, b: &Value) -> Truth {
    let ord = match (a, b) {
        (Value::Number(x), Value::Number(y)) => num_cmp(x, y),
        (Value::String(x), Value::String(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        (Value::Bool(x), Value::Bool(y)) if matches!(op, CmpOp::Eq | CmpOp::Ne) => Some(x.cmp(y)),
        (Value::Null, Value::Null) if matches!(op, CmpOp::Eq | CmpOp::Ne) => Some(Ordering::Equal),
        _ => None,
    };
    let Some(ord) = ord else {
        return Truth::Undefined;
    };
    Truth::of(match op {
        CmpOp::Lt => ord == Ordering::Less,
        CmpOp::Le => ord != Ordering::Greater,
        CmpOp::Gt => ord == Ordering::Greater,
        CmpOp::Ge => ord != Ordering::Less,
        CmpOp::Eq => ord == Ordering::Equal,
        CmpOp::Ne => ord != Ordering::Equal,
    })
}

impl Expr {
    fn eval(&self, args: Option<&Value>) -> Truth {
        match self {
            Expr::Or(v) => {
                let mut r = Truth::False;
                for e in v {
                    match e.eval(args) {
                        Truth::True => return Truth::True,
                        Truth::Undefined => r = Truth::Undefined,
                        Truth::False => {}
                    }
                }
                r
            }
            Expr::And(v) => {
                let mut r = Truth::True;
                for e in v {
                    match e.eval(args) {
                        Truth::False => return Truth::False,
                        Truth::Undefined => r = Truth::Undefined,
                        Truth::True => {}
                    }
                }
                r
            }
            Expr::Not(e) => match e.eval(args) {
                Truth::True => Truth::False,
                Truth::False => Truth::True,
                Truth::Undefined => Truth::Undefined,
            },
            Expr::Exists(p) => Truth::of(p.resolve(args).is_some_and(|v| !v.is_null())),
            Expr::Cmp(a, op, b) => {
                let get = |o: &Operand| match o {
                    Operand::Path(p) => p.resolve(args).cloned(),
                    Operand::Lit(v) => Some(v.clone()),
                };
                match (get(a), get(b)) {
                    (Some(x), Some(y)) => compare(&x, *op, &y),
                    _ => Truth::Undefined,
                }
            }
            Expr::In(p, items) => {
                let Some(v) = p.resolve(args) else {
                    return Truth::Undefined;
                };
                let mut r = Truth::Undefined;
                for it in items {
                    match compare(v, CmpOp::Eq, it) {
                        Truth::True => return Truth::True,
                        Truth::False => r = Truth::False,
                        Truth::Undefined => {}
                    }
                }
                r
            }
        }
    }
}

impl Expression {
    /// Parses an expression; errors give the 1-based column.
    pub fn parse(src: &str) -> Result<Expression, ExprError> {
        if src.len() > MAX_EXPR_LEN {
            return Err(ExprError {
                column: 1,
                message: format!("expression longer than {MAX_EXPR_LEN} bytes"),
            });
        }
        let toks = lex(src)?;
        let end = src.chars().count() + 1;
        if toks.is_empty() {
            return Err(ExprError {
                column: 1,
                message: "empty expression".into(),
            });
        }
        let mut p = Parser {
            toks,
            pos: 0,
            depth: 0,
            end,
            paths: Vec::new(),
        };
        let root = p.or()?;
        if p.pos < p.toks.len() {
            return p.fail("`&&`, `||` or end of expression");
        }
        Ok(Expression {
            src: src.trim().to_string(),
            root,
            paths: p.paths,
        })
    }

    /// True only if the expression evaluates to true on `arguments` (undefined is false).
    pub fn holds(&self, arguments: Option<&Value>) -> bool {
        self.root.eval(arguments) == Truth::True
    }

    /// The expression text (trimmed).
    pub fn source(&self) -> &str {
        &self.src
    }

    fn paths(&self) -> &[ArgPath] {
        &self.paths
    }

    /// True only if the expression evaluates to false (undefined is not false): for rules
    /// that must fail closed the other way round (approval holds).
    pub fn is_false(&self, arguments: Option<&Value>) -> bool {
        self.root.eval(arguments) == Truth::False
    }

    /// Every path the expression names, with its value in `arguments` (None: missing).
    pub fn path_values<'v>(&self, arguments: Option<&'v Value>) -> Vec<(&str, Option<&'v Value>)> {
        self.paths
            .iter()
            .map(|p| (p.text.as_str(), p.resolve(arguments)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const POLICY: &str = r#"
[[roles]]
name = "support"
groups = ["support"]

[[roles.grants]]
service = "crm"
methods = ["tools/call", "resources/read", "prompts/get"]
tools = ["customer_lookup", "search_*"]
resources = ["customers://*"]
prompts = ["summarize_*"]
purpose = "Handling customer support tickets"
lawful_basis = "contract"
data_subjects = ["customers"]

[[roles]]
name = "analyst"
groups = ["analytics"]

[[roles.grants]]
service = "crm"
methods = ["tools/call"]
tools = ["export_customers", "customer_lookup"]
purpose = "Aggregate analysis"
lawful_basis = "legitimate_interests"

[[roles.grants.constraints]]
tool = "export_customers"
expr = "limit <= 100"

[[roles.grants]]
service = "hr"
methods = ["tools/*"]
tools = ["headcount"]
purpose = "Workforce planning"
lawful_basis = "legal_obligation"

[[roles]]
name = "batch"
clients = ["crm-batch"]
issuers = ["https://idp.example"]

[[roles.grants]]
service = "*"
methods = ["tools/call", "logging/setLevel"]
tools = ["export_customers"]
purpose = "Nightly export"
lawful_basis = "legitimate_interests"
"#;

    fn set() -> PolicySet {
        match PolicySet::from_str("test.policy.toml", POLICY) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        }
    }

    fn user(groups: &[&str]) -> Principal {
        Principal {
            subject: "alice".into(),
            issuer: "https://idp.example".into(),
            client_id: Some("chat-app".into()),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    fn client(id: &str, issuer: &str) -> Principal {
        Principal {
            subject: format!("service-{id}"),
            issuer: issuer.into(),
            client_id: Some(id.into()),
            groups: vec![],
        }
    }

    fn decide(
        s: &PolicySet,
        service: &str,
        who: &Principal,
        method: &str,
        name: Option<&str>,
        args: Option<Value>,
    ) -> PolicyDecision {
        s.decide(&PolicyRequest {
            service,
            who,
            method,
            name,
            arguments: args.as_ref(),
        })
    }

    fn tool(s: &PolicySet, who: &Principal, name: &str, args: Value) -> PolicyDecision {
        decide(s, "crm", who, "tools/call", Some(name), Some(args))
    }

    fn errs(name: &str, text: &str) -> Vec<PolicyError> {
        match PolicySet::from_str(name, text) {
            Ok(_) => panic!("expected errors for:\n{text}"),
            Err(e) => e.0,
        }
    }

    /// The single error of `text`, checked against line, key and a problem substring.
    fn one_err(text: &str, line: usize, key: &str, problem: &str) {
        let e = errs("x.policy.toml", text);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].file, "x.policy.toml");
        assert_eq!(e[0].line, Some(line), "{}", e[0]);
        assert_eq!(e[0].key, key, "{}", e[0]);
        assert!(
            e[0].problem.contains(problem),
            "{} does not contain {problem:?}",
            e[0]
        );
    }

    fn grant_text(extra: &str) -> String {
        format!(
            "[[roles]]\nname = \"r\"\ngroups = [\"g\"]\n[[roles.grants]]\nservice = \"crm\"\npurpose = \"p\"\nlawful_basis = \"contract\"\n{extra}"
        )
    }

    // ----- redaction choices -------------------------------------------------------------------

    #[test]
    fn grants_carry_their_masking_and_releases_into_the_decision() {
        let t = grant_text(
            "methods = [\"tools/call\"]\ntools = [\"lookup\"]\nmasking = { EMAIL = \"remove\", CARD = \"partial\" }\nrelease = [\"PHONE\", \"PHONE\"]\n",
        );
        let s = PolicySet::from_str("x.policy.toml", &t).unwrap();
        let d = tool(&s, &user(&["g"]), "lookup", json!({}));
        assert!(d.allowed, "{d:?}");
        assert_eq!(
            d.masking,
            vec![
                ("CARD".to_string(), MaskMode::Partial),
                ("EMAIL".to_string(), MaskMode::Remove)
            ]
        );
        assert_eq!(d.release, vec!["PHONE".to_string()]);
        // Builtin rules carry none: the service's own masking applies.
        let l = decide(&s, "crm", &user(&["g"]), "tools/list", None, None);
        assert!(
            l.allowed && l.masking.is_empty() && l.release.is_empty(),
            "{l:?}"
        );
        // Denials release nothing.
        let d = tool(&s, &user(&["g"]), "other", json!({}));
        assert!(!d.allowed && d.release.is_empty());
    }

    #[test]
    fn grant_views_lists_the_masking_of_every_grant_held_for_the_service() {
        let t = grant_text(
            "methods = [\"tools/call\"]\ntools = [\"lookup\"]\nmasking = { EMAIL = \"remove\" }\nrelease = [\"PHONE\"]\n",
        );
        let s = PolicySet::from_str("x.policy.toml", &t).unwrap();
        let v = s.grant_views("crm", &user(&["g"]));
        assert_eq!(
            v,
            vec![(
                vec![("EMAIL".to_string(), MaskMode::Remove)],
                vec!["PHONE".to_string()]
            )]
        );
        assert!(s.grant_views("other", &user(&["g"])).is_empty());
        assert!(s.grant_views("crm", &user(&["nobody"])).is_empty());
    }

    #[test]
    fn a_grant_can_have_the_arguments_redacted_before_the_server() {
        let t = grant_text(
            "methods = [\"tools/call\"]\ntools = [\"lookup\"]\nredact_arguments = true\n",
        );
        let s = PolicySet::from_str("x.policy.toml", &t).unwrap();
        let d = tool(&s, &user(&["g"]), "lookup", json!({}));
        assert!(d.allowed && d.redact_arguments, "{d:?}");
        let x = s.explain("crm", &user(&["g"])).to_string();
        assert!(
            x.contains("arguments redacted before they reach the server"),
            "{x}"
        );
        // Off unless said; builtin rules and denials never rewrite anything.
        let l = decide(&s, "crm", &user(&["g"]), "tools/list", None, None);
        assert!(l.allowed && !l.redact_arguments, "{l:?}");
        assert!(!tool(&s, &user(&["g"]), "other", json!({})).redact_arguments);
        let plain = PolicySet::from_str(
            "y.policy.toml",
            &grant_text("methods = [\"tools/call\"]\ntools = [\"lookup\"]\n"),
        )
        .unwrap();
        assert!(!tool(&plain, &user(&["g"]), "lookup", json!({})).redact_arguments);
    }

    #[test]
    fn bad_masking_and_release_entries_are_errors_naming_the_key() {
        one_err(
            &grant_text("methods = [\"ping\"]\nmasking = { EMAIL = \"hide\" }\n"),
            9,
            "roles[r].grants[0].masking.EMAIL",
            "unknown mask mode \"hide\"",
        );
        one_err(
            &grant_text("methods = [\"ping\"]\nrelease = [\"email\"]\n"),
            9,
            "roles[r].grants[0].release[0]",
            "not an entity type name",
        );
    }

    // ----- decisions -------------------------------------------------------------------------

    #[test]
    fn allows_per_role_with_rule_purpose_basis() {
        let s = set();
        let d = tool(&s, &user(&["support"]), "customer_lookup", json!({"id": 1}));
        assert!(d.allowed, "{d:?}");
        assert_eq!(d.role.as_deref(), Some("support"));
        assert_eq!(d.rule, "test.policy.toml:roles[support].grants[0]");
        assert_eq!(
            d.purpose.as_deref(),
            Some("Handling customer support tickets")
        );
        assert_eq!(d.lawful_basis.as_deref(), Some("contract"));
        assert_eq!(d.policy_version, s.version());

        let d = tool(&s, &user(&["support"]), "search_orders", json!({}));
        assert!(d.allowed, "{d:?}");

        let d = decide(
            &s,
            "crm",
            &user(&["support"]),
            "resources/read",
            Some("customers://42"),
            None,
        );
        assert!(d.allowed, "{d:?}");
        let d = decide(
            &s,
            "crm",
            &user(&["support"]),
            "prompts/get",
            Some("summarize_customer"),
            None,
        );
        assert!(d.allowed, "{d:?}");

        let d = decide(
            &s,
            "hr",
            &user(&["analytics"]),
            "tools/call",
            Some("headcount"),
            None,
        );
        assert!(d.allowed, "{d:?}");
        assert_eq!(d.rule, "test.policy.toml:roles[analyst].grants[1]");
        assert_eq!(d.lawful_basis.as_deref(), Some("legal_obligation"));
    }

    #[test]
    fn denies_per_role_and_service() {
        let s = set();
        // support has no grant on hr
        let d = decide(
            &s,
            "hr",
            &user(&["support"]),
            "tools/call",
            Some("headcount"),
            None,
        );
        assert!(!d.allowed);
        assert_eq!(d.rule, RULE_DEFAULT_DENY);
        assert!(
            d.reason.contains("no grant for service \"hr\""),
            "{}",
            d.reason
        );
        assert_eq!(d.role, None);
        assert_eq!(d.purpose, None);
        // support cannot export
        let d = tool(
            &s,
            &user(&["support"]),
            "export_customers",
            json!({"limit": 1}),
        );
        assert!(!d.allowed);
        assert_eq!(d.rule, RULE_DEFAULT_DENY);
        assert!(
            d.reason
                .contains("\"export_customers\" matches no tools pattern"),
            "{}",
            d.reason
        );
        // analyst's hr tool is not usable on crm
        let d = tool(&s, &user(&["analytics"]), "headcount", json!({}));
        assert!(!d.allowed, "{d:?}");
    }

    #[test]
    fn deny_by_default() {
        let s = set();
        // no role at all
        let d = tool(&s, &user(&[]), "customer_lookup", json!({}));
        assert!(!d.allowed);
        assert_eq!(d.rule, RULE_DEFAULT_DENY);
        assert!(
            d.reason.starts_with("no role matches subject \"alice\""),
            "{}",
            d.reason
        );
        // group names are exact
        assert!(!tool(&s, &user(&["Support"]), "customer_lookup", json!({})).allowed);
        assert!(!tool(&s, &user(&["support-team"]), "customer_lookup", json!({})).allowed);
        // method not granted
        let d = decide(
            &s,
            "crm",
            &user(&["analytics"]),
            "resources/read",
            Some("customers://1"),
            None,
        );
        assert!(!d.allowed);
        assert!(
            d.reason
                .contains("method resources/read is not granted to roles [analyst]"),
            "{}",
            d.reason
        );
        let d = decide(
            &s,
            "crm",
            &user(&["support"]),
            "logging/setLevel",
            None,
            None,
        );
        assert!(!d.allowed, "{d:?}");
        let d = decide(
            &s,
            "crm",
            &user(&["support"]),
            "completion/complete",
            Some("summarize_x"),
            None,
        );
        assert!(!d.allowed, "{d:?}");
        // resource and prompt pattern mismatch
        let d = decide(
            &s,
            "crm",
            &user(&["support"]),
            "resources/read",
            Some("file:///crm/readme.txt"),
            None,
        );
        assert!(!d.allowed);
        assert!(
            d.reason.contains("matches no resources pattern"),
            "{}",
            d.reason
        );
        let d = decide(
            &s,
            "crm",
            &user(&["support"]),
            "prompts/get",
            Some("delete_everything"),
            None,
        );
        assert!(!d.allowed);
        assert!(
            d.reason.contains("matches no prompts pattern"),
            "{}",
            d.reason
        );
        // subscribe is a different method: not granted
        let d = decide(
            &s,
            "crm",
            &user(&["support"]),
            "resources/subscribe",
            Some("customers://1"),
            None,
        );
        assert!(!d.allowed);
        // a targeted method without a name
        let d = decide(&s, "crm", &user(&["support"]), "tools/call", None, None);
        assert!(!d.allowed);
        assert!(d.reason.contains("without a target name"), "{}", d.reason);
        // unknown methods need a grant
        let d = decide(
            &s,
            "crm",
            &user(&["support"]),
            "notifications/whatever",
            None,
            None,
        );
        assert!(!d.allowed);
        // empty policy denies everything
        let e = PolicySet::empty();
        assert!(!decide(&e, "crm", &user(&["support"]), "ping", None, None).allowed);
    }

    #[test]
    fn issuer_restriction_and_client_matcher() {
        let s = set();
        let d = tool(
            &s,
            &client("crm-batch", "https://idp.example"),
            "export_customers",
            json!({"limit": 1_000_000}),
        );
        assert!(d.allowed, "{d:?}");
        assert_eq!(d.role.as_deref(), Some("batch"));
        assert_eq!(d.lawful_basis.as_deref(), Some("legitimate_interests"));
        // service "*" grant applies everywhere
        let d = decide(
            &s,
            "billing",
            &client("crm-batch", "https://idp.example"),
            "tools/call",
            Some("export_customers"),
            None,
        );
        assert!(d.allowed, "{d:?}");
        // methods other than tools/call may be granted without a target
        let d = decide(
            &s,
            "billing",
            &client("crm-batch", "https://idp.example"),
            "logging/setLevel",
            None,
            None,
        );
        assert!(d.allowed, "{d:?}");
        assert_eq!(d.rule, "test.policy.toml:roles[batch].grants[0]");
        // wrong issuer: role not held
        let d = tool(
            &s,
            &client("crm-batch", "https://evil.example"),
            "export_customers",
            json!({"limit": 1}),
        );
        assert!(!d.allowed);
        assert!(d.reason.starts_with("no role matches"), "{}", d.reason);
        // subject equal to the client id does not count as a client match
        let mut p = user(&[]);
        p.subject = "crm-batch".into();
        assert!(!tool(&s, &p, "export_customers", json!({"limit": 1})).allowed);
    }

    #[test]
    fn glob_semantics() {
        let s = PolicySet::from_str(
            "g.policy.toml",
            &grant_text(
                "methods = [\"resources/read\"]\nresources = ['file:///crm/a\\?b', 'customers://*', 'x://{one,two}/[0-9]']\n",
            ),
        )
        .unwrap();
        let read =
            |uri: &str| decide(&s, "crm", &user(&["g"]), "resources/read", Some(uri), None).allowed;
        assert!(read("file:///crm/a?b"), "escaped `?` is literal");
        assert!(!read("file:///crm/axb"));
        assert!(!read("file:///crm/a\\?b"));
        assert!(read("customers://1/nested/path"), "`*` crosses `/`");
        assert!(read("customers://"));
        assert!(!read("Customers://1"), "case-sensitive");
        assert!(read("x://one/7") && read("x://two/0"));
        assert!(!read("x://three/7") && !read("x://one/a"));
    }

    #[test]
    fn completion_and_most_specific_denial() {
        let text = grant_text(
            "methods = [\"tools/call\", \"completion/complete\"]\ntools = [\"export\"]\nprompts = [\"summarize_*\"]\nresources = [\"customers://*\"]\n\
             [[roles.grants.constraints]]\ntool = \"export\"\nexpr = \"limit < 10\"\n\
             [[roles.grants]]\nservice = \"crm\"\nmethods = [\"tools/call\"]\ntools = [\"other\"]\npurpose = \"q\"\nlawful_basis = \"consent\"\n",
        );
        let s = PolicySet::from_str("c.policy.toml", &text).unwrap();
        let who = user(&["g"]);
        let complete =
            |name: &str| decide(&s, "crm", &who, "completion/complete", Some(name), None);
        assert!(complete("summarize_customer").allowed);
        assert!(complete("customers://{id}").allowed);
        let d = complete("draft_email");
        assert!(!d.allowed);
        assert!(
            d.reason.contains("matches no prompts or resources pattern"),
            "{}",
            d.reason
        );
        assert!(!decide(&s, "crm", &who, "completion/complete", None, None).allowed);
        // grant 0 fails on the constraint, grant 1 on the name: the constraint is reported
        let d = tool(&s, &who, "export", json!({"limit": 50}));
        assert!(!d.allowed);
        assert_eq!(d.rule, "c.policy.toml:roles[r].grants[0].constraints[0]");
        assert_eq!(d.reason, "constraint export: limit < 10 (limit = 50)");
        assert!(tool(&s, &who, "export", json!({"limit": 5})).allowed);
        assert_eq!(
            tool(&s, &who, "other", json!({})).rule,
            "c.policy.toml:roles[r].grants[1]"
        );
    }

    #[test]
    fn subjects_matcher() {
        let s = PolicySet::from_str(
            "s.policy.toml",
            &grant_text("methods = [\"tools/call\"]\ntools = [\"t\"]\n")
                .replace("groups = [\"g\"]", "subjects = [\"alice\"]"),
        )
        .unwrap();
        assert!(tool(&s, &user(&[]), "t", json!({})).allowed);
        let mut bob = user(&[]);
        bob.subject = "bob".into();
        assert!(!tool(&s, &bob, "t", json!({})).allowed);
    }

    #[test]
    fn first_match_wins_and_reports_its_rule() {
        let s = set();
        // both support and analyst allow customer_lookup: support comes first in the file
        let both = user(&["analytics", "support"]);
        let d = tool(&s, &both, "customer_lookup", json!({}));
        assert!(d.allowed);
        assert_eq!(d.role.as_deref(), Some("support"));
        assert_eq!(d.rule, "test.policy.toml:roles[support].grants[0]");
        assert_eq!(
            d.purpose.as_deref(),
            Some("Handling customer support tickets")
        );
        // export: only the analyst grant covers it
        let d = tool(&s, &both, "export_customers", json!({"limit": 5}));
        assert_eq!(d.rule, "test.policy.toml:roles[analyst].grants[0]");
        assert_eq!(d.purpose.as_deref(), Some("Aggregate analysis"));
        // a failing constraint does not stop a later grant from allowing
        let mut p = client("crm-batch", "https://idp.example");
        p.groups = vec!["analytics".into()];
        let d = tool(&s, &p, "export_customers", json!({"limit": 5000}));
        assert!(d.allowed, "{d:?}");
        assert_eq!(d.role.as_deref(), Some("batch"));
        assert_eq!(d.rule, "test.policy.toml:roles[batch].grants[0]");
        // reversing file order changes the winner
        let s2 = PolicySet::from_str(
            "rev.policy.toml",
            "[[roles]]\nname = \"b\"\ngroups = [\"g\"]\n[[roles.grants]]\nservice = \"crm\"\nmethods = [\"tools/call\"]\ntools = [\"t\"]\npurpose = \"second\"\nlawful_basis = \"consent\"\n\
             [[roles.grants]]\nservice = \"crm\"\nmethods = [\"tools/call\"]\ntools = [\"*\"]\npurpose = \"third\"\nlawful_basis = \"contract\"\n",
        )
        .unwrap();
        let d = tool(&s2, &user(&["g"]), "t", json!({}));
        assert_eq!(
            (d.rule.as_str(), d.purpose.as_deref()),
            ("rev.policy.toml:roles[b].grants[0]", Some("second"))
        );
        let d = tool(&s2, &user(&["g"]), "u", json!({}));
        assert_eq!(
            (d.rule.as_str(), d.purpose.as_deref()),
            ("rev.policy.toml:roles[b].grants[1]", Some("third"))
        );
    }

    #[test]
    fn constraint_in_decision_reason() {
        let s = set();
        let a = user(&["analytics"]);
        let d = tool(&s, &a, "export_customers", json!({"limit": 5000}));
        assert!(!d.allowed);
        assert_eq!(
            d.rule,
            "test.policy.toml:roles[analyst].grants[0].constraints[0]"
        );
        assert_eq!(
            d.reason,
            "constraint export_customers: limit <= 100 (limit = 5000)"
        );
        let d = tool(&s, &a, "export_customers", json!({}));
        assert!(!d.allowed);
        assert_eq!(
            d.reason,
            "constraint export_customers: limit <= 100 (limit missing)"
        );
        let d = decide(&s, "crm", &a, "tools/call", Some("export_customers"), None);
        assert!(!d.allowed, "{d:?}");
        let d = tool(&s, &a, "export_customers", json!({"limit": "50"}));
        assert!(!d.allowed);
        assert_eq!(
            d.reason,
            "constraint export_customers: limit <= 100 (limit = \"50\")"
        );
        let d = tool(&s, &a, "export_customers", json!({"limit": 100}));
        assert!(d.allowed, "{d:?}");
        assert!(
            d.reason
                .contains("holds: constraint export_customers: limit <= 100 (limit = 100)"),
            "{}",
            d.reason
        );
        // constraints only apply to their tool
        let d = tool(&s, &a, "customer_lookup", json!({"limit": 5000}));
        assert!(d.allowed, "{d:?}");
        // long values are truncated in the reason
        let d = tool(
            &s,
            &a,
            "export_customers",
            json!({"limit": "x".repeat(1000)}),
        );
        assert!(d.reason.len() < 200, "{}", d.reason);
    }

    fn holds(expr: &str, args: Value) -> bool {
        match Expression::parse(expr) {
            Ok(e) => e.holds(Some(&args)),
            Err(e) => panic!("{expr}: {e}"),
        }
    }

    #[test]
    fn constraint_numbers() {
        let a = json!({"n": 5, "f": 2.5, "big": u64::MAX, "neg": -3});
        assert!(holds("n < 6", a.clone()));
        assert!(!holds("n < 5", a.clone()));
        assert!(holds("n <= 5", a.clone()));
        assert!(holds("n > 4", a.clone()));
        assert!(!holds("n > 5", a.clone()));
        assert!(holds("n >= 5", a.clone()));
        assert!(holds("n == 5", a.clone()));
        assert!(holds("n == 5.0", a.clone()));
        assert!(holds("n != 4", a.clone()));
        assert!(!holds("n != 5", a.clone()));
        assert!(holds("f > 2.4 && f < 2.6", a.clone()));
        assert!(holds("f < 1e1", a.clone()));
        assert!(holds("big == 18446744073709551615", a.clone()));
        assert!(holds("big > 18446744073709551614", a.clone()));
        assert!(holds("neg < -2", a.clone()));
        assert!(holds("6 > n", a.clone()), "literal on the left");
    }

    #[test]
    fn constraint_strings_booleans_null() {
        let a = json!({"s": "eu-west", "b": true, "z": null, "obj": {"x": {"y": "deep"}}, "arr": [10, {"k": "v"}]});
        assert!(holds("s == \"eu-west\"", a.clone()));
        assert!(holds("s == 'eu-west'", a.clone()));
        assert!(!holds("s == 'EU-WEST'", a.clone()));
        assert!(holds("s != 'us'", a.clone()));
        assert!(holds("s > 'eu'", a.clone()));
        assert!(holds("s < 'f'", a.clone()));
        assert!(holds("b == true", a.clone()));
        assert!(!holds("b == false", a.clone()));
        assert!(holds("b != false", a.clone()));
        assert!(
            !holds("b < true", a.clone()),
            "ordering on booleans is undefined"
        );
        assert!(holds("z == null", a.clone()));
        assert!(holds("obj.x.y == 'deep'", a.clone()));
        assert!(holds("arr.0 == 10", a.clone()));
        assert!(holds("arr.1.k == 'v'", a.clone()));
        assert!(!holds("arr.2 == 10", a.clone()));
        assert!(holds(r#"s == "a\"b" || s == 'eu-west'"#, a.clone()));
        assert!(holds(r#"q == "a\"b\\c""#, json!({"q": "a\"b\\c"})));
    }

    #[test]
    fn constraint_logic_and_parentheses() {
        let a = json!({"x": 1, "y": 2});
        assert!(holds("x == 1 && y == 2", a.clone()));
        assert!(!holds("x == 1 && y == 3", a.clone()));
        assert!(holds("x == 9 || y == 2", a.clone()));
        assert!(!holds("x == 9 || y == 9", a.clone()));
        // && binds tighter than ||
        assert!(holds("x == 1 || x == 9 && y == 9", a.clone()));
        assert!(!holds("(x == 1 || x == 9) && y == 9", a.clone()));
        assert!(holds("!(x == 9)", a.clone()));
        assert!(!holds("!(x == 1)", a.clone()));
        assert!(holds("!!(x == 1)", a.clone()));
        assert!(holds("((x == 1)) && (y == 2 || (x == 3))", a.clone()));
    }

    #[test]
    fn constraint_missing_wrong_types_exists_in() {
        let a = json!({"limit": "50", "region": "eu", "z": null, "n": 3});
        // missing argument fails every comparison, != included, and its negation
        assert!(!holds("missing <= 100", a.clone()));
        assert!(!holds("missing != 100", a.clone()));
        assert!(!holds("!(missing > 100)", a.clone()));
        // ... unless the expression says otherwise
        assert!(holds("!exists(missing) || missing <= 100", a.clone()));
        assert!(!holds("exists(missing)", a.clone()));
        assert!(holds("exists(region)", a.clone()));
        assert!(!holds("exists(z)", a.clone()), "null does not exist");
        // wrong types are undefined, never true
        assert!(!holds("limit <= 100", a.clone()));
        assert!(!holds("limit != 100", a.clone()));
        assert!(!holds("!(limit > 100)", a.clone()));
        assert!(!holds("region == true", a.clone()));
        // Kleene logic: false && undefined = false, true || undefined = true
        assert!(holds("!(n == 4 && limit > 1)", a.clone()));
        assert!(holds("n == 3 || limit > 1", a.clone()));
        assert!(!holds("n == 3 && limit > 1", a.clone()));
        assert!(
            !holds("!(n == 4 || limit > 1)", a.clone()),
            "false || undefined is undefined"
        );
        assert!(
            !holds("!(n == 3 && limit > 1)", a.clone()),
            "true && undefined is undefined"
        );
        // in
        assert!(holds("region in ['eu', \"uk\"]", a.clone()));
        assert!(!holds("region in ['us', 'ca',]", a.clone()));
        assert!(holds("!(region in ['us'])", a.clone()));
        assert!(holds("n in [1, 2, 3]", a.clone()));
        assert!(!holds("missing in ['eu']", a.clone()));
        assert!(!holds("!(missing in ['eu'])", a.clone()));
        assert!(
            !holds("!(n in ['eu'])", a.clone()),
            "type mismatch in `in` is undefined"
        );
        // arguments that are absent or not an object
        let e = Expression::parse("!exists(x)").unwrap();
        assert!(e.holds(None));
        assert!(e.holds(Some(&json!([1]))));
        assert!(!Expression::parse("x == 1").unwrap().holds(Some(&json!(1))));
    }

    #[test]
    fn constraint_syntax_errors_have_columns() {
        let cases = [
            ("", 1, "empty expression"),
            ("limit <", 8, "expected an argument"),
            ("limit = 5", 7, "use `==`"),
            ("limit <= 100 & x", 14, "use `&&`"),
            ("limit 100", 7, "comparison operator"),
            ("(limit < 1", 11, "expected `)`"),
            ("limit < 1)", 10, "end of expression"),
            ("1 < 2", 1, "two literals"),
            ("x in []", 7, "empty list"),
            ("x in [y]", 7, "expected a literal"),
            ("x in ['a' 'b']", 11, "`,` or `]`"),
            ("'a' in ['a']", 1, "left side of `in`"),
            ("s == 'abc", 6, "unterminated string"),
            ("s == 'a\\q'", 8, "unknown escape"),
            ("x == 12abc", 8, "after a number"),
            ("x == 1e999", 6, "out of range"),
            ("a. == 1", 3, "path segment"),
            ("exists(1)", 8, "argument path"),
            ("exists(x", 9, "expected `)`"),
            ("x == 1 # c", 8, "unexpected character '#'"),
            ("true == x && in < 3", 14, "expected an argument"),
        ];
        for (src, col, msg) in cases {
            match Expression::parse(src) {
                Ok(e) => panic!("{src:?} parsed: {e:?}"),
                Err(e) => {
                    assert_eq!(e.column, col, "{src:?}: {e}");
                    assert!(e.message.contains(msg), "{src:?}: {e} lacks {msg:?}");
                }
            }
        }
        let deep = format!("{}x == 1{}", "(".repeat(100), ")".repeat(100));
        assert!(
            Expression::parse(&deep)
                .unwrap_err()
                .message
                .contains("nested")
        );
        let long = format!("x == '{}'", "a".repeat(5000));
        assert!(
            Expression::parse(&long)
                .unwrap_err()
                .message
                .contains("longer than")
        );
        let e = Expression::parse("true == x").unwrap();
        assert!(e.holds(Some(&json!({"x": true}))));
    }

    // ----- builtin methods -------------------------------------------------------------------

    #[test]
    fn protocol_and_list_methods_only_for_role_holders() {
        let s = set();
        for m in PROTOCOL_METHODS.iter().chain(LIST_METHODS) {
            let d = decide(&s, "crm", &user(&["support"]), m, None, None);
            assert!(d.allowed, "{m}: {d:?}");
            assert_eq!(d.role.as_deref(), Some("support"));
            let rule = if LIST_METHODS.contains(m) {
                RULE_LIST
            } else {
                RULE_PROTOCOL
            };
            assert_eq!(d.rule, rule);
            assert_eq!(d.purpose, None);
            // no role
            let d = decide(&s, "crm", &user(&[]), m, None, None);
            assert!(!d.allowed, "{m}: {d:?}");
            assert_eq!(d.rule, RULE_DEFAULT_DENY);
            // role, but no grant for the service
            let d = decide(&s, "hr", &user(&["support"]), m, None, None);
            assert!(!d.allowed, "{m}: {d:?}");
        }
        // a near-miss is not plumbing
        assert!(!decide(&s, "crm", &user(&["support"]), "initialized", None, None).allowed);
        assert!(
            !decide(
                &s,
                "crm",
                &user(&["support"]),
                "notifications/message",
                None,
                None
            )
            .allowed
        );
    }

    // ----- list filtering --------------------------------------------------------------------

    #[test]
    fn filter_tools_list() {
        let s = set();
        let mut r = json!({
            "tools": [
                {"name": "customer_lookup", "inputSchema": {"type": "object"}},
                {"name": "export_customers", "inputSchema": {"type": "object"}},
                {"name": "search_orders", "description": "d"},
                {"name": 5},
                "garbage",
                {"description": "no name"}
            ],
            "nextCursor": "abc",
            "_meta": {"k": 1}
        });
        let n = s.filter_list("crm", &user(&["support"]), "tools/list", &mut r);
        assert_eq!(n, 4);
        assert_eq!(
            r,
            json!({
                "tools": [
                    {"name": "customer_lookup", "inputSchema": {"type": "object"}},
                    {"name": "search_orders", "description": "d"}
                ],
                "nextCursor": "abc",
                "_meta": {"k": 1}
            })
        );
        // the analyst sees constrained tools too (constraints ignored for listing)
        let mut r = json!({"tools": [{"name": "customer_lookup"}, {"name": "export_customers"}, {"name": "echo"}]});
        assert_eq!(
            s.filter_list("crm", &user(&["analytics"]), "tools/list", &mut r),
            1
        );
        assert_eq!(
            r,
            json!({"tools": [{"name": "customer_lookup"}, {"name": "export_customers"}]})
        );
        // no role: everything removed
        let mut r = json!({"tools": [{"name": "customer_lookup"}]});
        assert_eq!(s.filter_list("crm", &user(&[]), "tools/list", &mut r), 1);
        assert_eq!(r, json!({"tools": []}));
        // wrong service
        let mut r = json!({"tools": [{"name": "customer_lookup"}]});
        assert_eq!(
            s.filter_list("hr", &user(&["support"]), "tools/list", &mut r),
            1
        );
    }

    #[test]
    fn filter_resources_templates_prompts() {
        let s = set();
        let who = user(&["support"]);
        let mut r = json!({"resources": [
            {"uri": "customers://1", "name": "c1"},
            {"uri": "file:///crm/readme.txt", "name": "readme"}
        ]});
        assert_eq!(s.filter_list("crm", &who, "resources/list", &mut r), 1);
        assert_eq!(
            r,
            json!({"resources": [{"uri": "customers://1", "name": "c1"}]})
        );

        let mut r = json!({"resourceTemplates": [
            {"uriTemplate": "customers://{id}", "name": "customer"},
            {"uriTemplate": "orders://{id}", "name": "order"},
            {"uri": "customers://1"}
        ], "nextCursor": null});
        assert_eq!(
            s.filter_list("crm", &who, "resources/templates/list", &mut r),
            2
        );
        assert_eq!(
            r,
            json!({"resourceTemplates": [{"uriTemplate": "customers://{id}", "name": "customer"}], "nextCursor": null})
        );

        let mut r = json!({"prompts": [
            {"name": "summarize_customer", "arguments": [{"name": "id"}]},
            {"name": "draft_email"}
        ]});
        assert_eq!(s.filter_list("crm", &who, "prompts/list", &mut r), 1);
        assert_eq!(
            r,
            json!({"prompts": [{"name": "summarize_customer", "arguments": [{"name": "id"}]}]})
        );

        // analytics has no resources/read or prompts/get grant: everything removed
        let mut r = json!({"prompts": [{"name": "summarize_customer"}]});
        assert_eq!(
            s.filter_list("crm", &user(&["analytics"]), "prompts/list", &mut r),
            1
        );
        let mut r = json!({"resources": [{"uri": "customers://1"}]});
        assert_eq!(
            s.filter_list("crm", &user(&["analytics"]), "resources/list", &mut r),
            1
        );

        // other methods and shapes are left alone; a non-array list is emptied
        let mut r = json!({"tools": [{"name": "x"}]});
        assert_eq!(s.filter_list("crm", &who, "tools/call", &mut r), 0);
        assert_eq!(r, json!({"tools": [{"name": "x"}]}));
        let mut r = json!({"other": 1});
        assert_eq!(s.filter_list("crm", &who, "tools/list", &mut r), 0);
        assert_eq!(r, json!({"other": 1}));
        let mut r = json!({"tools": {"name": "x"}});
        assert_eq!(s.filter_list("crm", &who, "tools/list", &mut r), 1);
        assert_eq!(r, json!({"tools": []}));
        let mut r = json!("x");
        assert_eq!(s.filter_list("crm", &who, "tools/list", &mut r), 0);
    }

    // ----- version ---------------------------------------------------------------------------

    #[test]
    fn version_is_stable_and_changes_on_edit() {
        let a = set();
        let b = set();
        assert_eq!(a.version(), b.version());
        assert_eq!(a.version().len(), 16);
        assert!(a.version().chars().all(|c| c.is_ascii_hexdigit()));
        let edited = PolicySet::from_str(
            "test.policy.toml",
            &POLICY.replace("limit <= 100", "limit <= 101"),
        )
        .unwrap();
        assert_ne!(a.version(), edited.version());
        let renamed = PolicySet::from_str("other.policy.toml", POLICY).unwrap();
        assert_ne!(a.version(), renamed.version());
        let same_length = PolicySet::from_str("tset.policy.toml", POLICY).unwrap();
        assert_ne!(a.version(), same_length.version());

        let dir = std::env::temp_dir().join(format!("policy-version-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("test.policy.toml"), POLICY).unwrap();
        let l1 = PolicySet::load(std::slice::from_ref(&dir)).unwrap();
        let l2 = PolicySet::load(&[dir.join("test.policy.toml")]).unwrap();
        assert_eq!(
            l1.version(),
            a.version(),
            "same name and content as from_str"
        );
        assert_eq!(l2.version(), a.version());
        std::fs::write(
            dir.join("test.policy.toml"),
            format!("{POLICY}\n# comment\n"),
        )
        .unwrap();
        let l3 = PolicySet::load(std::slice::from_ref(&dir)).unwrap();
        assert_ne!(l3.version(), a.version());
        let _ = std::fs::remove_dir_all(&dir);
    }

    // ----- loading ---------------------------------------------------------------------------

    fn repo_policies() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies")
    }

    #[test]
    fn example_crm_policy_loads_and_decides() {
        let s = match PolicySet::load(&[repo_policies().join("crm.policy.toml")]) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        let dir = PolicySet::load(&[repo_policies()]).unwrap();
        assert!(
            dir.files().contains(&"crm.policy.toml".to_string()),
            "{:?}",
            dir.files()
        );
        assert!(!dir.files().iter().any(|f| f == "interceptor.toml"));

        let support = user(&["support"]);
        assert!(tool(&s, &support, "customer_lookup", json!({"id": "42"})).allowed);
        assert!(!tool(&s, &support, "export_customers", json!({"limit": 1})).allowed);
        assert!(
            decide(
                &s,
                "crm",
                &support,
                "resources/read",
                Some("customers://42"),
                None
            )
            .allowed
        );
        assert!(
            !decide(
                &s,
                "crm",
                &support,
                "resources/read",
                Some("file:///crm/readme.txt"),
                None
            )
            .allowed
        );
        assert!(
            decide(
                &s,
                "crm",
                &support,
                "prompts/get",
                Some("summarize_customer"),
                None
            )
            .allowed
        );

        let analyst = user(&["analytics"]);
        let d = tool(&s, &analyst, "export_customers", json!({"limit": 100}));
        assert!(d.allowed, "{d:?}");
        let d = tool(&s, &analyst, "export_customers", json!({"limit": 101}));
        assert!(!d.allowed);
        assert_eq!(
            d.rule,
            "crm.policy.toml:roles[analyst].grants[0].constraints[0]"
        );
        assert_eq!(
            d.reason,
            "constraint export_customers: limit <= 100 (limit = 101)"
        );
        assert!(!tool(&s, &analyst, "customer_lookup", json!({"id": "42"})).allowed);

        let admin = user(&["crm-admins"]);
        for t in [
            "customer_lookup",
            "export_customers",
            "fail_rpc",
            "big_result",
        ] {
            assert!(tool(&s, &admin, t, json!({"limit": 100000})).allowed, "{t}");
        }
        assert!(
            decide(
                &s,
                "crm",
                &admin,
                "resources/read",
                Some("file:///crm/readme.txt"),
                None
            )
            .allowed
        );
        assert!(
            decide(
                &s,
                "crm",
                &admin,
                "resources/subscribe",
                Some("customers://1"),
                None
            )
            .allowed
        );
        assert!(
            decide(
                &s,
                "crm",
                &admin,
                "completion/complete",
                Some("summarize_customer"),
                None
            )
            .allowed
        );
        assert!(!decide(&s, "hr", &admin, "tools/call", Some("x"), None).allowed);

        let d = tool(
            &s,
            &client("crm-batch", "https://any"),
            "export_customers",
            json!({"limit": 100000}),
        );
        assert!(d.allowed, "{d:?}");
        assert_eq!(d.role.as_deref(), Some("batch"));
        assert_eq!(d.lawful_basis.as_deref(), Some("legitimate_interests"));
        assert!(
            !tool(
                &s,
                &client("crm-batch", "https://any"),
                "customer_lookup",
                json!({})
            )
            .allowed
        );

        let purposes = s.services_purposes();
        assert_eq!(purposes.len(), 4);
        assert!(
            purposes
                .iter()
                .all(|p| p.service == "crm" && !p.purpose.is_empty())
        );
        assert_eq!(
            purposes.iter().map(|p| p.role.as_str()).collect::<Vec<_>>(),
            ["support", "analyst", "admin", "batch"]
        );
        assert_eq!(purposes[0].lawful_basis_article, "GDPR Art. 6(1)(b)");
        assert_eq!(purposes[3].lawful_basis, "legitimate_interests");
        assert_eq!(purposes[0].data_subjects, ["customers"]);
    }

    #[test]
    fn load_directory_order_and_file_errors() {
        let dir = std::env::temp_dir().join(format!("policy-load-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let role = |name: &str, purpose: &str| {
            format!(
                "[[roles]]\nname = \"{name}\"\ngroups = [\"g\"]\n[[roles.grants]]\nservice = \"crm\"\nmethods = [\"tools/call\"]\ntools = [\"t\"]\npurpose = \"{purpose}\"\nlawful_basis = \"consent\"\n"
            )
        };
        std::fs::write(dir.join("b.policy.toml"), role("rb", "from b")).unwrap();
        std::fs::write(dir.join("a.policy.toml"), role("ra", "from a")).unwrap();
        std::fs::write(dir.join("ignored.toml"), "not = [valid").unwrap();
        let s = PolicySet::load(std::slice::from_ref(&dir)).unwrap();
        assert_eq!(s.files(), ["a.policy.toml", "b.policy.toml"]);
        let d = tool(&s, &user(&["g"]), "t", json!({}));
        assert_eq!(d.rule, "a.policy.toml:roles[ra].grants[0]");

        // duplicate role names across files
        std::fs::write(dir.join("sub/c.policy.toml"), role("ra", "again")).unwrap();
        let e = PolicySet::load(&[dir.clone(), dir.join("sub")]).unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        assert_eq!(e.0[0].key, "roles[ra].name");
        assert_eq!(e.0[0].line, Some(2));
        assert!(e.0[0].file.ends_with("sub/c.policy.toml"), "{}", e.0[0]);
        assert!(e.0[0].problem.contains("a.policy.toml:2"), "{}", e.0[0]);

        // same file name twice
        std::fs::write(dir.join("sub/a.policy.toml"), role("rz", "z")).unwrap();
        let e = PolicySet::load(&[dir.join("a.policy.toml"), dir.join("sub/a.policy.toml")])
            .unwrap_err();
        assert!(e.to_string().contains("already loaded"), "{e}");

        // missing file, empty directory
        let e = PolicySet::load(&[dir.join("nope.policy.toml")]).unwrap_err();
        assert!(e.0[0].problem.contains("cannot read"), "{e}");
        std::fs::create_dir_all(dir.join("empty")).unwrap();
        let e = PolicySet::load(&[dir.join("empty")]).unwrap_err();
        assert!(e.0[0].problem.contains("no *.policy.toml files"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    // ----- validation ------------------------------------------------------------------------

    #[test]
    fn error_unknown_keys_and_syntax() {
        one_err(
            "[[roles]]\nname = \"a\"\ngroups = [\"g\"]\nbogus = 1\n",
            4,
            "roles.bogus",
            "unknown field `bogus`",
        );
        one_err(
            &grant_text("methods = [\"tools/call\"]\ntools = [\"t\"]\ntool = \"x\"\n"),
            10,
            "roles.grants.tool",
            "unknown field `tool`",
        );
        one_err(
            &grant_text(
                "methods = [\"tools/call\"]\ntools = [\"t\"]\n[[roles.grants.constraints]]\ntool = \"t\"\nexpr = \"a < 1\"\nwhen = 1\n",
            ),
            13,
            "roles.grants.constraints.when",
            "unknown field `when`",
        );
        one_err("top = 1\n", 1, "top", "unknown field `top`");
        one_err("[[roles]]\nname = \"a\n", 2, "roles.name", "");
        one_err(
            "[[roles]]\nname = \"a\"\ngroups = [\"g\"]\n[[roles.grants]]\nservice = 3\n",
            5,
            "roles.grants.service",
            "invalid type",
        );
        one_err(
            "[[roles]]\nname = \"a\"\ngroups = [\"g\"]\n[[roles.grants]]\nservice = \"crm\"\nmethods = [\"tools/call\"]\n",
            4,
            "roles.grants.purpose",
            "missing field `purpose`",
        );
        let e = errs(
            "x.policy.toml",
            "[[roles]]\nname = \"a\"\ngroups = [\"g\"]\nbogus = 1\n",
        );
        assert_eq!(
            e[0].to_string(),
            "x.policy.toml:4: roles.bogus: unknown field `bogus`, expected one of `name`, `groups`, `subjects`, `clients`, `issuers`, `grants`"
        );
    }

    #[test]
    fn error_bad_glob_and_method_pattern() {
        one_err(
            &grant_text("methods = [\"tools/call\"]\ntools = [\"ok\", \"bad[\"]\n"),
            9,
            "roles[r].grants[0].tools[1]",
            "bad glob \"bad[\"",
        );
        one_err(
            &grant_text("methods = [\"resources/read\"]\nresources = [\"a{b\"]\n"),
            9,
            "roles[r].grants[0].resources[0]",
            "bad glob",
        );
        one_err(
            &grant_text("methods = [\"prompts/get\"]\nprompts = [\"\"]\n"),
            9,
            "roles[r].grants[0].prompts[0]",
            "empty pattern",
        );
        for (m, problem) in [
            ("tools*", "character '*'"),
            ("*/call", "character '*'"),
            ("", "empty method pattern"),
            ("/*", "nothing before"),
            ("tools//call", "empty path segment"),
            ("tools call", "character ' '"),
        ] {
            one_err(
                &grant_text(&format!("methods = [\"ping\", \"{m}\"]\n")),
                8,
                "roles[r].grants[0].methods[1]",
                problem,
            );
        }
    }

    #[test]
    fn error_lawful_basis_purpose_service() {
        let t = grant_text("methods = [\"ping\"]\n").replace("\"contract\"", "\"because\"");
        one_err(
            &t,
            7,
            "roles[r].grants[0].lawful_basis",
            "unknown lawful basis \"because\", expected one of consent, contract, legal_obligation, vital_interests, public_task, legitimate_interests",
        );
        let t = grant_text("methods = [\"ping\"]\n").replace("purpose = \"p\"", "purpose = \"  \"");
        one_err(&t, 6, "roles[r].grants[0].purpose", "empty purpose");
        let t = grant_text("methods = [\"ping\"]\n").replace("service = \"crm\"", "service = \"\"");
        one_err(&t, 5, "roles[r].grants[0].service", "bad service");
        let t = grant_text("methods = [\"ping\"]\ndata_subjects = [\"\"]\n");
        one_err(&t, 9, "roles[r].grants[0].data_subjects[0]", "empty value");
    }

    #[test]
    fn error_constraint_expression_and_tool() {
        one_err(
            &grant_text(
                "methods = [\"tools/call\"]\ntools = [\"export_*\"]\n[[roles.grants.constraints]]\ntool = \"export_customers\"\nexpr = \"limit <= 100 &&\"\n",
            ),
            12,
            "roles[r].grants[0].constraints[0].expr",
            "column 16: expected an argument",
        );
        one_err(
            &grant_text(
                "methods = [\"tools/call\"]\ntools = [\"export_*\"]\n[[roles.grants.constraints]]\ntool = \"delete_all\"\nexpr = \"x == 1\"\n",
            ),
            11,
            "roles[r].grants[0].constraints[0].tool",
            "constraint on tool \"delete_all\", which the grant's tools [export_*] do not cover",
        );
        // constraints on a tool covered by a glob are fine
        assert!(PolicySet::from_str(
            "x.policy.toml",
            &grant_text("methods = [\"tools/call\"]\ntools = [\"export_*\"]\n[[roles.grants.constraints]]\ntool = \"export_customers\"\nexpr = \"x == 1\"\n")
        )
        .is_ok());
    }

    #[test]
    fn error_roles_duplicate_empty_matchers_bad_name() {
        let text = "[[roles]]\nname = \"a\"\ngroups = [\"g\"]\n\n[[roles]]\nname = \"a\"\nclients = [\"c\"]\n";
        one_err(
            text,
            6,
            "roles[a].name",
            "duplicate role name \"a\" (first defined at x.policy.toml:2)",
        );
        one_err(
            "[[roles]]\nname = \"a\"\ngroups = []\n",
            1,
            "roles[a]",
            "role matches nobody",
        );
        one_err(
            "[[roles]]\nname = \"a\"\nissuers = [\"https://idp\"]\n",
            1,
            "roles[a]",
            "role matches nobody",
        );
        one_err(
            "\n[[roles]]\nname = \"a b\"\ngroups = [\"g\"]\n",
            3,
            "roles[0].name",
            "bad role name",
        );
        one_err(
            "[[roles]]\nname = \"a\"\ngroups = [\"g\", \"\"]\n",
            3,
            "roles[a].groups[1]",
            "empty value",
        );
    }

    #[test]
    fn error_grant_without_methods_and_inconsistencies() {
        one_err(
            &grant_text("tools = [\"t\"]\n"),
            4,
            "roles[r].grants[0].methods",
            "grant has no methods",
        );
        one_err(
            &grant_text("methods = []\n"),
            8,
            "roles[r].grants[0].methods",
            "grant has no methods",
        );
        one_err(
            &grant_text("methods = [\"tools/call\"]\n"),
            8,
            "roles[r].grants[0].methods",
            "`tools` is empty",
        );
        one_err(
            &grant_text("methods = [\"resources/read\"]\n"),
            8,
            "roles[r].grants[0].methods",
            "`resources` is empty",
        );
        one_err(
            &grant_text("methods = [\"prompts/get\"]\n"),
            8,
            "roles[r].grants[0].methods",
            "`prompts` is empty",
        );
        one_err(
            &grant_text("methods = [\"completion/complete\"]\n"),
            8,
            "roles[r].grants[0].methods",
            "`prompts` and `resources` are empty",
        );
        one_err(
            &grant_text("methods = [\"prompts/get\"]\nprompts = [\"p\"]\ntools = [\"t\"]\n"),
            10,
            "roles[r].grants[0].tools",
            "does not grant `tools/call`",
        );
        one_err(
            &grant_text("methods = [\"tools/call\"]\ntools = [\"t\"]\nresources = [\"r\"]\n"),
            10,
            "roles[r].grants[0].resources",
            "grants none of",
        );
        one_err(
            &grant_text("methods = [\"tools/call\"]\ntools = [\"t\"]\nprompts = [\"p\"]\n"),
            10,
            "roles[r].grants[0].prompts",
            "neither `prompts/get`",
        );
        // prefix and wildcard patterns cover
        assert!(
            PolicySet::from_str(
                "x.policy.toml",
                &grant_text(
                    "methods = [\"*\"]\ntools = [\"t\"]\nresources = [\"r\"]\nprompts = [\"p\"]\n"
                )
            )
            .is_ok()
        );
        assert!(
            PolicySet::from_str("x.policy.toml", &grant_text("methods = [\"tools/*\"]\n")).is_ok()
        );
    }

    #[test]
    fn all_errors_reported_at_once() {
        let text = "[[roles]]\nname = \"a\"\ngroups = []\n[[roles.grants]]\nservice = \"crm\"\nmethods = [\"bad*\"]\ntools = [\"[\"]\npurpose = \"p\"\nlawful_basis = \"nope\"\n";
        let e = errs("m.policy.toml", text);
        let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "roles[a]",
                "roles[a].grants[0].methods[0]",
                "roles[a].grants[0].tools[0]",
                "roles[a].grants[0].lawful_basis"
            ],
            "{}",
            PolicyErrors(e.clone())
        );
        let shown = PolicyErrors(e).to_string();
        assert_eq!(shown.lines().count(), 4);
        assert!(
            shown.lines().nth(3).unwrap().starts_with(
                "m.policy.toml:9: roles[a].grants[0].lawful_basis: unknown lawful basis"
            ),
            "{shown}"
        );
    }

    // ----- explain ---------------------------------------------------------------------------

    #[test]
    fn explain_lists_roles_grants_and_reasons() {
        let s = set();
        let who = user(&["analytics", "support"]);
        let x = s.explain("crm", &who);
        assert_eq!(x.service, "crm");
        assert_eq!(x.policy_version, s.version());
        assert_eq!(
            x.roles.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            ["support", "analyst"]
        );
        assert_eq!(x.roles[0].matched_by, ["group support"]);
        assert_eq!(x.roles[1].matched_by, ["group analytics"]);
        assert_eq!(
            x.roles[1].grants.len(),
            1,
            "the hr grant is not shown for crm"
        );
        let g = &x.roles[1].grants[0];
        assert_eq!(g.rule, "test.policy.toml:roles[analyst].grants[0]");
        assert_eq!(g.methods, ["tools/call"]);
        assert_eq!(g.tools, ["export_customers", "customer_lookup"]);
        assert_eq!(g.lawful_basis, "legitimate_interests");
        assert_eq!(g.lawful_basis_article, "GDPR Art. 6(1)(f)");
        assert_eq!(
            g.constraints,
            [ConstraintExplanation {
                rule: "test.policy.toml:roles[analyst].grants[0].constraints[0]".into(),
                tool: "export_customers".into(),
                expr: "limit <= 100".into()
            }]
        );
        assert_eq!(
            x.builtin_methods.len(),
            PROTOCOL_METHODS.len() + LIST_METHODS.len()
        );
        assert_eq!(x.other_roles.len(), 1);
        assert_eq!(x.other_roles[0].name, "batch");
        assert_eq!(
            x.other_roles[0].requires,
            "clients [crm-batch]; issuers [https://idp.example]"
        );
        let v = serde_json::to_value(&x).unwrap();
        assert_eq!(
            v["roles"][1]["grants"][0]["constraints"][0]["expr"],
            "limit <= 100"
        );
        let text = x.to_string();
        assert!(
            text.contains("constraint export_customers: limit <= 100"),
            "{text}"
        );

        let x = s.explain("crm", &user(&[]));
        assert!(x.roles.is_empty());
        assert!(x.builtin_methods.is_empty());
        assert!(x.summary.contains("no role matches"), "{}", x.summary);
        assert_eq!(x.other_roles.len(), 3);

        let x = s.explain("hr", &user(&["support"]));
        assert_eq!(x.roles.len(), 1);
        assert!(x.roles[0].grants.is_empty());
        assert!(x.builtin_methods.is_empty());
        assert!(x.summary.contains("no grant for hr"), "{}", x.summary);

        let x = s.explain("anything", &client("crm-batch", "https://idp.example"));
        assert_eq!(x.roles[0].matched_by, ["client crm-batch"]);
        assert_eq!(x.roles[0].grants[0].service, "*");
    }

    #[test]
    fn services_purposes_dedupes_and_keeps_order() {
        let s = set();
        let p = s.services_purposes();
        assert_eq!(
            p.iter()
                .map(|p| (p.service.as_str(), p.role.as_str(), p.lawful_basis.as_str()))
                .collect::<Vec<_>>(),
            [
                ("crm", "support", "contract"),
                ("crm", "analyst", "legitimate_interests"),
                ("hr", "analyst", "legal_obligation"),
                ("*", "batch", "legitimate_interests"),
            ]
        );
        let dup = format!(
            "{}{}",
            grant_text("methods = [\"ping\"]\n"),
            "[[roles.grants]]\nservice = \"crm\"\nmethods = [\"ping\"]\npurpose = \"p\"\nlawful_basis = \"contract\"\n"
        );
        assert_eq!(
            PolicySet::from_str("d.policy.toml", &dup)
                .unwrap()
                .services_purposes()
                .len(),
            1
        );
    }

    #[test]
    fn policy_set_is_shareable() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<PolicySet>();
        let s = set();
        let t = s.clone();
        assert_eq!(s.version(), t.version());
        assert!(format!("{s:?}").contains("support"));
    }

    // ----- properties ------------------------------------------------------------------------

    fn arb_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
                .map(Value::Number)
                .unwrap_or(Value::Null)),
            "[a-z0-9 ]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map("limit|region|n|a|b|0|x", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn expression_parser_never_panics(src in "\\PC{0,80}") {
            let _ = Expression::parse(&src);
        }

        #[test]
        fn expression_parser_never_panics_on_tokens(
            parts in proptest::collection::vec(
                proptest::sample::select(vec![
                    "limit", "a.b", "x.0", "(", ")", "[", "]", ",", "!", "&&", "||", "<", "<=", "==", "!=",
                    ">", ">=", "in", "exists", "true", "null", "1", "-2.5", "'s'", "\"t\"", "1e5", ".", "=",
                ]),
                0..24,
            )
        ) {
            let src = parts.join(" ");
            if let Ok(e) = Expression::parse(&src) {
                let _ = e.holds(Some(&json!({"limit": 1, "a": {"b": true}, "x": [1]})));
            }
        }

        #[test]
        fn decide_never_panics(args in arb_json(), name in "[a-z_]{0,16}", m in 0usize..8) {
            let s = set();
            let methods = ["tools/call", "resources/read", "prompts/get", "completion/complete", "ping", "tools/list", "x/y", ""];
            for who in [user(&["analytics", "support"]), client("crm-batch", "https://idp.example"), user(&[])] {
                let d = s.decide(&PolicyRequest {
                    service: "crm",
                    who: &who,
                    method: methods[m],
                    name: Some(&name),
                    arguments: Some(&args),
                });
                proptest::prop_assert_eq!(d.policy_version.as_str(), s.version());
                for r in &s.inner.roles {
                    proptest::prop_assert_eq!(r.is_held_by(&who), !r.matched_by(&who).is_empty());
                }
                let d = s.decide(&PolicyRequest {
                    service: "crm",
                    who: &who,
                    method: "tools/call",
                    name: Some("export_customers"),
                    arguments: Some(&args),
                });
                // allowed for the analyst only when limit is a number <= 100 (or via batch)
                if d.allowed && d.role.as_deref() == Some("analyst") {
                    proptest::prop_assert!(args.get("limit").and_then(Value::as_f64).is_some_and(|l| l <= 100.0));
                }
                let mut list = json!({"tools": [args.clone(), {"name": name.clone()}]});
                let _ = s.filter_list("crm", &who, "tools/list", &mut list);
            }
        }
    }
}
