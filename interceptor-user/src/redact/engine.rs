//! The detection and masking engine (see the module docs of `redact`).
//!
//! # Design
//!
//! * **One automaton.** Every pattern of every enabled detector (built-in and custom) is
//!   compiled, once per policy load, into one multi-pattern lazy DFA
//!   (`regex_automata::hybrid::regex::Regex`, leftmost-first, forward + reverse). A text is
//!   scanned in one forward pass; each match is checked by its detector's validator and,
//!   where the detector has them, context words. Only when a candidate is rejected, a second
//!   lazy DFA over the same patterns (`MatchKind::All`, anchored) lists every other pattern
//!   and every shorter end that also matches at that position, so a rejected greedy or
//!   higher-priority candidate never hides a valid one (e.g. a card number followed by a
//!   year, a Luhn-invalid number that is a valid French NIR).
//! * **E-mail beside the automaton.** The e-mail pattern alone is not in the union: its
//!   local part may start after any `+`, `.` or `-`, and on base64 (images in tool results)
//!   the union then tracks up to 64 such starts times every other bounded pattern in
//!   progress, builds a new state at almost every byte and clears its cache again and again
//!   (~2 MB/s). It is searched from each `@` instead (`side`), and its matches merged with
//!   the union's by start, then pattern order: the same matches as the union with it inside
//!   (property-tested).
//! * **Field names beside the automaton.** So are the names of fields whose values are read
//!   whole in any text (`"mobile": "4915112345678"` in JSON Lines, `iban: de89...` in YAML,
//!   `detectors::LABELLED_PHONE_PATTERN`): their words start at letters as common as `t`, `c`,
//!   `m`, and inside the union they took ~27% more states. Each of their matches holds one
//!   separator, `:`, `=` or `>` (`=>` counts as its `=`); they are searched from each one
//!   (`side::Labels`) and merged the same way.
//!
//!   Why the lazy DFA (`hybrid`) and not the dense DFA (`dfa::dense`) or `meta`: the dense
//!   DFA of the unanchored union of ~40 bounded-repetition patterns has to determinize the
//!   product of all their counters (digit runs x hex runs x e-mail local parts x ...) ahead of
//!   time: it exceeds 256 MB after ~10 s and gives up (measured by `benches/redact.rs`). The
//!   lazy DFA builds only the states real text visits (well under 1 MB of cache on the
//!   benchmark workloads, never cleared), in ~6 ms at load, and then runs the same
//!   one-table-lookup-per-byte loop (on the 2.6 GHz benchmark VM, that loop alone is
//!   ~600 MB/s whatever the patterns, dense or lazy: the dependent load per byte is the
//!   limit). `meta` would pick the same lazy DFA but cannot run the anchored overlapping
//!   (`All`) search used for alternatives, and falls back to a slow NFA when its cache
//!   thrashes; here the cache is simply cleared and rebuilt (never an error, never a panic).
//! * **Interleaved runs.** Following the automaton is one dependent table load per byte,
//!   ~600 MB/s on one run here whatever the patterns. A text of 256 bytes or more is cut
//!   into four segments and the automaton runs over all four at once, a byte of each in
//!   turn (`lanes`): the loads overlap, and the runs only mark where a match state was
//!   entered; the leftmost-first search then reads from a pattern length before each mark.
//!   The matches are those of one search over the whole text (proof in `lanes`,
//!   property-tested). Where marks are dense (personal data every few lines), the lanes run
//!   the leftmost-first searches themselves, from each match end, in windows of 8 KB then
//!   32 KB, and the engine takes their results where it searches from the same place; after
//!   a window where it mostly searched from elsewhere (rejected candidates, as in CSV
//!   exports), it searches alone for the rest of the text.
//! * **Edges.** A word boundary `\b` a pattern begins or ends with also holds at a `_`
//!   (Markdown emphasis `_4111 1111 1111 1111_`, names joined with `_`, `ssn_078-05-1120`):
//!   the ASCII `\b` counts `_` as a word byte, so such edges become `(?:\b|_)` and the `_`
//!   is taken off the match before any validator reads it (`Edges`).
//! * **Bounded.** Every pattern has a maximum length (patterns with unbounded repetition
//!   are refused at load); validators that extend a match (PEM blocks, JWTs) do so by a
//!   bounded amount. [`TextRedactor::max_match_len`] reports the maximum.
//! * **Context.** All context words of all detectors are compiled into one more small
//!   lazy DFA, run over the window of `context_window` characters around a candidate
//!   only when the decision depends on it. Labels precede values in every format we see
//!   (`DOB: ...`, `né le ...`, `"bsn": "..."`), so only the window *before* a candidate is
//!   searched (this also keeps the decision unchanged when later values get masked). A
//!   detector's words found there raise its confidence; a generic identifier word ("order",
//!   "invoice", "version", ...) right before a number (same line, at most 16 bytes, after the
//!   detector's own words) lowers it. Words inside mask tokens (`[PASSPORT:...]`) are
//!   ignored. A candidate is reported at confidence >= 0.5.
//! * **Memory.** [`Engine::redact_cow`] returns the input borrowed when nothing is masked
//!   and otherwise writes the result into one output buffer (matches are kept as offsets,
//!   findings as 8-hex pseudonyms): redaction adds one copy of the payload. Only if the
//!   closure rescan below finds something (adversarial input), a further round writes a new
//!   buffer and drops the previous one. [`TextRedactor::redact`] must return a `String` and so
//!   always makes that one copy.
//! * **Closure.** After masking, the output is scanned again around each mask (as far before
//!   it as a candidate can reach it, the context window after it and as far as a candidate
//!   can reach past that: the only places where a decision can change); anything that became
//!   detectable because its surroundings changed is masked too, up to a fixed number of
//!   rounds. How far a candidate reaches is bounded per byte: a match holding a byte is no
//!   longer than the longest pattern that can hold it, and the long ones (e-mail addresses,
//!   tokens) hold no space, so in prose that is tens of bytes, not the longest pattern's 300
//!   (property-tested against rescanning the whole output). So the output of `redact_with`
//!   contains no validated match of the engine except entities shown in clear, and redacting
//!   twice changes nothing (masks never match: they are `[ENTITY]`, `[ENTITY:8 hex]`,
//!   `****1234`; property-tested).
//! * **Fields.** [`Engine::scan_field`] / [`Engine::redact_field`] take the name of the field
//!   a value belongs to (JSON key, CSV column) as context before it: redacting JSON string
//!   by string through [`TextRedactor::redact`] loses the keys, and with them the labels
//!   that checksum-only identifiers (BSN, PESEL, Steuer-ID, passport numbers, dates of
//!   birth, BICs) need.
//!
//! # Figures (`cargo bench -p interceptor-user --bench redact`, 2-core KVM, 2026-11-30)
//!
//! | workload | engine, MB/s (best wall / CPU) | same engine, one run | naive, 1 regex per pattern |
//! |---|---|---|---|
//! | PII-sparse JSON, 4 MB | 1135 / 1018 | 432 / 385 | 15.9 / 14.1 |
//! | PII-dense text, 1 MB, ~15 values/KB | 91 / 81 | 77 / 66 | 10.8 / 9.7 |
//! | tool results with base64 images, 2 MB | 1301 / 1128 | 457 / 424 | 9.3 / 8.3 |
//! | CSV export, 1 MB | 63 / 56 | 64 / 56 | 6.0 / 5.4 |
//!
//! The README has the agent's path (the streaming JSON rewriter). Sparse JSON and base64 are
//! bounded by the four-lane loop; dense text by per-value work (search, validator, context,
//! HMAC-SHA256 pseudonym); the CSV export by candidates the validators reject (alternatives).

mod columns;
mod detectors;
mod lanes;
mod side;
mod validate;

#[cfg(test)]
mod accuracy;
#[cfg(test)]
mod corpus;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::panic::{RefUnwindSafe, UnwindSafe};
use std::sync::Arc;

use hmac::{Hmac, Mac};
use regex_automata::hybrid::{self, LazyStateID};
use regex_automata::util::pool::Pool;
use regex_automata::util::start;
use regex_automata::util::syntax;
use regex_automata::{Anchored, HalfMatch, Input, MatchKind, PatternID};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::json::{add_count, floor_boundary};
use super::{Finding, Head, Pseudonym, Sieve, TextRedactor};
use detectors::{
    BUILTINS, EMAIL_PATTERN, FieldKind, ID_WORDS, LABELLED_IBAN_PATTERN, LABELLED_PHONE_PATTERN,
    NAMELESS_IDS, NATIONAL_IDS, NEGATIVE_GAP, NEGATIVE_WORDS, PENALTY, STRONG, THRESHOLD,
};
use lanes::LaneSearch;
pub use validate::Validator;

/// The longest pattern a custom detector may have (bytes).
pub const MAX_PATTERN_LEN: usize = 4096;
/// Rounds of the verification rescan after masking.
const CLOSURE_ROUNDS: usize = 4;
/// Lazy DFA transition cache per automaton and thread.
const CACHE_CAPACITY: usize = 16 * 1024 * 1024;

/// How values of one entity type are masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskMode {
    /// `[EMAIL]`
    Remove,
    /// `****1234`: the last four digits when the value has at least eight, else `****`.
    Partial,
    /// `[EMAIL:4f1c9a2b]`: the keyed pseudonym of the normalised value.
    #[default]
    Pseudonymize,
}

/// Tuning of a built-in detector (built-ins not listed stay enabled as they are).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectorSpec {
    /// Entity type of the built-in, e.g. `EMAIL`, `IBAN`, `PASSPORT`.
    pub entity: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// More context words that raise its confidence.
    #[serde(default)]
    pub context: Vec<String>,
    /// Report only with a context word around.
    #[serde(default)]
    pub require_context: bool,
}

fn yes() -> bool {
    true
}

/// A detector defined by the policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomDetector {
    pub entity: String,
    /// Pattern in `regex` syntax, ASCII mode (`\b`, `\d`, `\w` are ASCII); every repetition
    /// must be bounded and the whole at most [`MAX_PATTERN_LEN`] bytes long.
    pub pattern: String,
    #[serde(default = "no_validator")]
    pub validator: Validator,
    #[serde(default)]
    pub context: Vec<String>,
    /// Report only with one of `context` within the window.
    #[serde(default)]
    pub require_context: bool,
    /// Confidence when validated (default 0.9; with `require_context`, 0.3 + 0.6 boost).
    #[serde(default)]
    pub confidence: Option<f32>,
}

fn no_validator() -> Validator {
    Validator::None
}

/// What to detect and how to mask it (one per policy).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EngineConfig {
    /// Tuning of built-ins; an empty list means all built-ins as they are.
    pub detectors: Vec<DetectorSpec>,
    pub custom: Vec<CustomDetector>,
    /// Mask mode per entity type; others get `default_mask`.
    pub masking: HashMap<String, MaskMode>,
    pub default_mask: MaskMode,
    /// Entity types shown in clear (still detected, counted in `released_in_clear`).
    pub clear: HashSet<String>,
    /// Characters before a candidate searched for context words (at most
    /// [`MAX_CONTEXT_WINDOW`]).
    pub context_window: usize,
    /// JSON numbers are redacted too: one that is personal data (`{"bsn": 111222333}`, a
    /// phone or card number stored as a number) becomes its mask, a string. Off by default:
    /// it changes the value's JSON type, which a client checking an output schema may refuse.
    pub numbers: bool,
    /// JSON object keys are redacted too: a key that is personal data (a map keyed by e-mail
    /// address) becomes its mask. Off by default: keys name fields, and two keys masked the
    /// same way (`remove`) would collide.
    pub keys: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            detectors: Vec::new(),
            custom: Vec::new(),
            masking: HashMap::new(),
            default_mask: MaskMode::Pseudonymize,
            clear: HashSet::new(),
            context_window: 40,
            numbers: false,
            keys: false,
        }
    }
}

/// The masking decision for one role: modes per entity and entities it may see in clear.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MaskView {
    pub masking: HashMap<String, MaskMode>,
    pub default_mask: MaskMode,
    pub clear: HashSet<String>,
}

impl MaskView {
    /// `None` when the entity is shown in clear.
    pub fn mode(&self, entity: &str) -> Option<MaskMode> {
        if self.clear.contains(entity) {
            None
        } else {
            Some(
                self.masking
                    .get(entity)
                    .copied()
                    .unwrap_or(self.default_mask),
            )
        }
    }
}

impl From<&EngineConfig> for MaskView {
    fn from(c: &EngineConfig) -> Self {
        MaskView {
            masking: c.masking.clone(),
            default_mask: c.default_mask,
            clear: c.clear.clone(),
        }
    }
}

/// The agent's pseudonymisation key (HMAC-SHA256).
#[derive(Clone)]
pub struct PseudonymKey(Hmac<Sha256>);

impl PseudonymKey {
    pub fn new(key: [u8; 32]) -> PseudonymKey {
        PseudonymKey::from_slice(&key)
    }

    pub fn from_slice(key: &[u8]) -> PseudonymKey {
        // HMAC accepts keys of any length.
        PseudonymKey(<Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!()))
    }

    /// First 8 hex digits of HMAC-SHA256(key, entity || 0 || normalised value).
    pub fn pseudonym(&self, entity: &str, normalised: &str) -> Pseudonym {
        let mut mac = self.0.clone();
        mac.update(entity.as_bytes());
        mac.update(&[0]);
        mac.update(normalised.as_bytes());
        let tag = mac.finalize().into_bytes();
        Pseudonym::from_tag([tag[0], tag[1], tag[2], tag[3]])
    }
}

impl fmt::Debug for PseudonymKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PseudonymKey(..)")
    }
}

/// A validated detection.
#[derive(Debug, Clone, PartialEq)]
pub struct Match {
    pub entity: Arc<str>,
    /// Byte range in the scanned text.
    pub start: usize,
    pub end: usize,
    pub confidence: f32,
    detector: u32,
}

/// A redacted text and its evidence.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Redacted {
    pub text: String,
    /// One per masked value, in order: entity and pseudonym (never the value).
    pub findings: Vec<Finding>,
    /// Masked values per entity type.
    pub counts: BTreeMap<String, u32>,
    /// Values left in clear per entity type, because the view allows it.
    pub released_in_clear: BTreeMap<String, u32>,
}

/// Evidence of a redaction without the text (see [`Engine::redact_cow`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Evidence {
    pub findings: Vec<Finding>,
    pub counts: BTreeMap<String, u32>,
    pub released_in_clear: BTreeMap<String, u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("detector {entity}: bad pattern: {error}")]
    Pattern { entity: String, error: String },
    #[error("detector {entity}: pattern has no maximum length (use bounded repetitions)")]
    Unbounded { entity: String },
    #[error("detector {entity}: pattern can match {len} bytes, at most {max} allowed")]
    TooLong {
        entity: String,
        len: usize,
        max: usize,
    },
    #[error("detector {entity}: pattern can match the empty string")]
    Empty { entity: String },
    #[error("detector {entity}: empty context word")]
    EmptyContextWord { entity: String },
    #[error("context_window {0} is more than {max} characters", max = MAX_CONTEXT_WINDOW)]
    ContextWindow(usize),
    #[error("unknown built-in detector {0:?}")]
    UnknownDetector(String),
    #[error("building the automaton: {0}")]
    Build(String),
}

struct Detector {
    entity: Arc<str>,
    check: Validator,
    base: f32,
    boost: f32,
    /// Context word ids, sorted.
    context: Vec<u32>,
    negative: bool,
    /// A credential (`detectors::SECRET_ENTITIES`): `partial` shows none of it.
    secret: bool,
}

type PoolFn<T> = Box<dyn Fn() -> T + Send + Sync + UnwindSafe + RefUnwindSafe>;
type CachePool<T> = Pool<T, PoolFn<T>>;
/// The context-word automaton and its caches.
type ContextDfa = (Arc<hybrid::dfa::DFA>, CachePool<ContextCache>);

/// A thread's cache of the context-word automaton, and the words it found in the last field
/// names (a document's values come under a few keys, again and again).
struct ContextCache {
    dfa: hybrid::dfa::Cache,
    labels: Vec<(Box<str>, Vec<u32>)>,
    /// The entry of `labels` replaced next when it is full.
    evict: usize,
}

/// Field names whose context words a thread keeps.
const LABELS_KEPT: usize = 32;

impl ContextCache {
    /// The context words in `label` (see [`label_words`]), computed once per label while it
    /// stays among the last [`LABELS_KEPT`].
    fn label_words(&mut self, ctx: &hybrid::dfa::DFA, words: &[Word], label: &str) -> Vec<u32> {
        if let Some((_, w)) = self.labels.iter().find(|(l, _)| **l == *label) {
            return w.clone();
        }
        let mut found = Vec::new();
        label_words(ctx, &mut self.dfa, words, label, &mut found);
        let split = split_label(label);
        if split != label {
            label_words(ctx, &mut self.dfa, words, &split, &mut found);
        }
        found.sort_unstable();
        found.dedup();
        let entry = (Box::from(label), found.clone());
        if self.labels.len() < LABELS_KEPT {
            self.labels.push(entry);
        } else {
            self.labels[self.evict % LABELS_KEPT] = entry;
            self.evict = self.evict.wrapping_add(1);
        }
        found
    }
}

/// The caches of one search: the union automaton's, the e-mail pattern's and the field
/// names'.
struct Caches {
    re: hybrid::regex::Cache,
    side: Option<hybrid::regex::Cache>,
    labels: Option<hybrid::regex::Cache>,
}

struct Inner {
    /// The union automaton: every pattern but the one searched beside it (`side`).
    re: Arc<hybrid::regex::Regex>,
    /// The global id (index of `patterns`) of each pattern of `re`.
    re_ids: Vec<u32>,
    /// The longest match of a pattern of `re`.
    re_max_len: usize,
    /// The length of each pattern of `re` whose matches all have one length (see
    /// [`Inner::find_re`]).
    re_fixed_len: Vec<Option<usize>>,
    /// The edges of each pattern of `re` (see [`Edges`]).
    re_edges: Vec<Edges>,
    /// The edges of each pattern (global id).
    edges: Vec<Edges>,
    /// The e-mail pattern, searched from each `@` (see `side`).
    side: Option<Arc<side::Side>>,
    /// The names of fields read whole in a text, searched from each `:`, `=` and `>` (see
    /// `side::Labels`).
    labels: Option<Arc<side::Labels>>,
    caches: CachePool<Caches>,
    all: Arc<hybrid::dfa::DFA>,
    all_caches: CachePool<hybrid::dfa::Cache>,
    /// Context words, case-insensitive; pattern id = word id.
    ctx: Option<ContextDfa>,
    words: Vec<Word>,
    /// Detectors of each pattern (several when shapes coincide, e.g. 9 digits).
    patterns: Vec<Vec<u32>>,
    sources: Vec<String>,
    /// The longest match of any pattern, before validators extend it.
    max_pattern_len: usize,
    /// The shortest match of any pattern: a shorter range holds no candidate.
    min_pattern_len: usize,
    /// For each byte, the longest match of the patterns that can hold it (0: none can): a
    /// match holding a run of bytes is no longer than the least of theirs (see
    /// [`Engine::reach_back`]).
    byte_reach: Box<[usize; 256]>,
    /// No pattern looks around other than with the ASCII word boundary `\b`, for which the
    /// start and end of a text read like a non-word byte: what [`Engine::cut_head`] needs.
    word_boundary_only: bool,
    detectors: Vec<Detector>,
    key: PseudonymKey,
    view: MaskView,
    window: usize,
    max_len: usize,
    /// [`EngineConfig::numbers`].
    numbers: bool,
    /// [`EngineConfig::keys`].
    keys: bool,
    /// The `SECRET` detector, when enabled: a field under a credential's key is masked whole
    /// (`detectors::secret_label`).
    secret_field: Option<u32>,
    /// The built-in `PHONE` and `IBAN` detectors, when enabled: a field whose name says it holds
    /// one is read whole as one (`detectors::field_kind`).
    phone_field: Option<u32>,
    iban_field: Option<u32>,
}

/// What a field's name says its whole value is (a JSON key, a CSV column), with the detector
/// that then reads it enabled: see [`Inner::whole_kind`].
#[derive(Debug, Clone, Copy)]
enum Whole {
    /// A credential (`detectors::secret_label`): the `SECRET` detector.
    Secret(u32),
    /// A phone number or an IBAN (`detectors::field_kind`).
    Field(FieldKind),
}

impl Inner {
    /// Whether some field is read whole on its name alone (the `SECRET`, `PHONE` or `IBAN`
    /// detector is on).
    fn reads_whole(&self) -> bool {
        self.secret_field.is_some() || self.phone_field.is_some() || self.iban_field.is_some()
    }

    /// What the whole value of a field named `label` is read as, if its name says (see
    /// [`TextRedactor::masks_whole`]).
    fn whole_kind(&self, label: &str) -> Option<Whole> {
        if let Some(d) = self.secret_field.filter(|_| detectors::secret_label(label)) {
            return Some(Whole::Secret(d));
        }
        (self.phone_field.is_some() || self.iban_field.is_some())
            .then(|| detectors::field_kind(label))?
            .map(Whole::Field)
    }

    /// The whole value `hay` (at `at` in the text) of a field of kind `kind`, when it is one:
    /// a credential masked whole at the detector's confidence, a phone number or an IBAN (see
    /// [`detectors::field_kind`]) at its confidence with context.
    fn whole_match(&self, kind: Whole, hay: &[u8], at: usize) -> Option<Match> {
        let (d, s, e, with_context) = match kind {
            Whole::Secret(d) => validate::secret_value(hay).then_some((d, 0, hay.len(), false))?,
            Whole::Field(kind) => {
                let (d, span) = match kind {
                    FieldKind::Phone => (self.phone_field?, validate::labelled_phone(hay)),
                    FieldKind::Iban => (self.iban_field?, validate::labelled_iban(hay)),
                };
                let (s, e) = span?;
                (d, s, e, true)
            }
        };
        let det = &self.detectors[d as usize];
        Some(Match {
            entity: det.entity.clone(),
            start: at + s,
            end: at + e,
            confidence: if with_context {
                (det.base + det.boost).min(1.0)
            } else {
                det.base
            },
            detector: d,
        })
    }

    /// Whether a rejected match of pattern `pid` hides the candidates inside it (see
    /// [`Validator::hides_fragments`]).
    fn hides_fragments(&self, pid: u32) -> bool {
        self.patterns.get(pid as usize).is_some_and(|ds| {
            ds.iter()
                .any(|&d| self.detectors[d as usize].check.hides_fragments())
        })
    }

    /// The union's leftmost-first match in `input`, as `re.try_search` finds it: the forward
    /// search gives its end and pattern, and the reverse search from there its start, except
    /// for a pattern whose matches all have one length, whose start is then known (the
    /// reverse search finds a start of the same pattern, as regex-automata asserts; tested
    /// against `try_search` in `engine/tests.rs`). That skips a third of the reverse searches
    /// on dense text (SSNs, MAC addresses, tokens, Spanish IDs). `None` also for a search
    /// error (never with this configuration).
    fn find_re(
        &self,
        cache: &mut hybrid::regex::Cache,
        input: &Input<'_>,
    ) -> Option<regex_automata::Match> {
        let end = self
            .re
            .forward()
            .try_search_fwd(cache.forward_mut(), input)
            .ok()??;
        self.start_of(cache, input, end)
    }

    /// The leftmost-first match in `input` that ends at `end` (what the forward search
    /// found): its start, as [`Inner::find_re`] finds it.
    fn start_of(
        &self,
        cache: &mut hybrid::regex::Cache,
        input: &Input<'_>,
        end: HalfMatch,
    ) -> Option<regex_automata::Match> {
        let (pid, e) = (end.pattern(), end.offset());
        if e == input.start() {
            return Some(regex_automata::Match::new(pid, e..e));
        }
        if let Some(len) = self.re_fixed_len.get(pid.as_usize()).copied().flatten() {
            // A `_` a widened edge took in is the only byte not of that length: one before
            // the value (leftmost: the `\b` alternative cannot hold after a `_`, a word
            // byte, before the value's first, a word byte too when the pattern begins with
            // `\b`), one after it.
            let edges = self
                .re_edges
                .get(pid.as_usize())
                .copied()
                .unwrap_or_default();
            let hay = input.haystack();
            let inner_end = e - usize::from(edges.trail && hay[e - 1] == b'_');
            let s = inner_end
                .checked_sub(len)
                .map(|s| s - usize::from(edges.lead && s > 0 && hay[s - 1] == b'_'));
            if let Some(s) = s.filter(|&s| s >= input.start()) {
                return Some(regex_automata::Match::new(pid, s..e));
            }
        }
        let back = input
            .clone()
            .span(input.start()..e)
            .anchored(Anchored::Pattern(pid))
            .earliest(false);
        let start = self
            .re
            .reverse()
            .try_search_rev(cache.reverse_mut(), &back)
            .ok()??;
        Some(regex_automata::Match::new(pid, start.offset()..e))
    }
}

struct Word {
    len: usize,
    negative: bool,
    /// See [`NAMELESS_IDS`].
    nameless: bool,
    /// Checks the byte after the word (not for words ending in punctuation, like `tel.`).
    end_boundary: bool,
}

/// When the interleaved runs of `lanes` are used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lanes {
    Off,
    /// On long texts: candidates first, and the lanes run the searches themselves when the
    /// candidates turn out dense.
    Sparse,
    /// Candidates, also on dense text.
    #[cfg(test)]
    Always,
    /// The lanes run the searches, also on sparse text.
    #[cfg(test)]
    Searches,
}

/// The redaction engine: compiled once per policy, shared by all connections.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
    /// Whether long texts are searched in interleaved runs first (`lanes`).
    lanes: Lanes,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("patterns", &self.inner.patterns.len())
            .field("detectors", &self.inner.detectors.len())
            .field("max_match_len", &self.inner.max_len)
            .field("min_pattern_len", &self.inner.min_pattern_len)
            .finish()
    }
}

/// How policy patterns and the built-ins are read: `\w`, `\d`, `(?i)` and classes are ASCII
/// unless a pattern asks for Unicode (`(?u:...)`).
fn syntax_config() -> syntax::Config {
    syntax::Config::new().unicode(false).utf8(true)
}

/// How the automata read the patterns as the engine prints them (`printable`): the printer
/// writes byte classes and ASCII look-arounds with `(?-u:...)` and classes outside ASCII (the
/// e-mail pattern's) bare, for Unicode mode to read; read back so, a printed pattern is the
/// pattern.
fn printed_config() -> syntax::Config {
    syntax::Config::new().utf8(true)
}

fn escape(word: &str) -> String {
    let mut out = String::with_capacity(word.len() + 4);
    for c in word.chars() {
        if "\\.+*?()|[]{}^$#&-~ ".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The widest context window a policy may set (characters before a value searched for its
/// context words).
pub const MAX_CONTEXT_WINDOW: usize = 1024;

/// A hit of a context word in a window.
#[derive(Clone, Copy)]
struct Hit {
    word: u32,
    end: usize,
}

/// Whether the scanned text holds a CSV table whose header labels its cells (see `columns`).
#[derive(Default)]
enum Table {
    /// Not looked for: the scan is not of a whole field value.
    #[default]
    Off,
    /// Not parsed yet (when a decision first needs it).
    Unread,
    /// The header row, if the value starts with one.
    Read(Option<columns::Columns>),
}

/// Per-scan scratch space.
#[derive(Default)]
struct Scratch<'l> {
    /// Name of the field the text is the value of: context before the text's start.
    label: &'l str,
    /// Context words found in `label` (computed once per scan, when first needed).
    label_words: Option<Vec<u32>>,
    /// The header row of a CSV table the value holds, whose column names label the cells
    /// under them (`columns`).
    columns: Table,
    hits: Vec<Hit>,
    alts: Vec<(u32, usize)>,
    /// Candidate start (and floor) the hits were computed for.
    hits_for: Option<(usize, usize)>,
    /// End of the last accepted match: a label before it belongs to that value, not to the
    /// next one.
    floor: usize,
    /// What the current candidate's decision has read so far (see `scan_range`).
    reach: (usize, usize),
    /// The first byte the context search for `hits_for` read.
    hits_lo: usize,
}

/// The result of a search for the leftmost match `(start, end, pattern)` from `from`.
#[derive(Clone, Copy, Default)]
struct Next {
    /// `None` before the first search.
    from: Option<usize>,
    found: Option<(usize, usize, u32)>,
}

impl Next {
    fn searched(from: usize, found: Option<(usize, usize, u32)>) -> Next {
        Next {
            from: Some(from),
            found,
        }
    }

    /// Whether this is still the leftmost match from `pos`: while `pos` has not passed its
    /// start, no match starts in `from..pos` (and the match at a start does not depend on
    /// where the search began).
    fn holds(&self, pos: usize) -> bool {
        match (self.from, self.found) {
            (None, _) => false,
            (Some(f), None) => f <= pos,
            (Some(f), Some((s, _, _))) => f <= pos && pos <= s,
        }
    }
}

struct Accepted {
    detector: u32,
    start: usize,
    end: usize,
    confidence: f32,
}

/// Bytes of each probe text of [`Engine::costly_custom_detectors`].
const PROBE_LEN: usize = 16 * 1024;
/// Automaton memory per probe byte above which a custom detector is reported: the built-ins
/// take ~7 bytes per byte of random base64 and ~19 of printable text (115 and 306 KB after
/// 16 KB; ~9 and 150 KB before their edge `\b` also took a `_`, see `Edges`), the e-mail
/// pattern inside the union automaton ~130 on base64 (2.2 MB; it then redacted base64 at 1-2
/// MB/s).
const PROBE_BYTES_PER_BYTE: usize = 48;

/// A custom detector that makes the automaton thrash (see
/// [`Engine::costly_custom_detectors`]); its `Display` is the warning the agent logs and
/// `check-config` prints.
#[derive(Debug, Clone, PartialEq)]
pub struct CostlyDetector {
    pub entity: String,
    /// Automaton memory its probe took.
    pub automaton_bytes: usize,
}

impl fmt::Display for CostlyDetector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "custom detector {} makes the redaction automaton build a new state at nearly every byte of base64-like content ({} KB for {} KB of probe): such responses will be redacted at a few MB/s (a long bounded class after punctuation, as an e-mail local part; anchor it on a rarer byte or shorten it)",
            self.entity,
            self.automaton_bytes / 1024,
            PROBE_LEN / 1024
        )
    }
}

/// Random base64 and random printable ASCII, [`PROBE_LEN`] bytes each (fixed seed).
fn probe_texts() -> [String; 2] {
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move |n: usize| {
        // xorshift64*: any fixed sequence with every byte value of `n` will do.
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
    };
    let base64 = (0..PROBE_LEN)
        .map(|_| char::from(B64[next(B64.len())]))
        .collect();
    let printable = (0..PROBE_LEN)
        .map(|_| char::from(b' ' + next(95) as u8))
        .collect();
    [base64, printable]
}

impl Engine {
    /// Compiles the detectors of `cfg` into one automaton.
    pub fn new(cfg: &EngineConfig, key: PseudonymKey) -> Result<Engine, EngineError> {
        Engine::build(cfg, key, true)
    }

    /// The custom detectors of `cfg` that make the automaton build a new state at nearly
    /// every byte of random base64 or printable text, with the automaton memory their probe
    /// took. A long bounded class that can start after common punctuation (as an e-mail
    /// local part, `[a-z0-9._+-]{1,64}@...`) does that: every position starts one more count
    /// in progress, times every other pattern in progress. Content of that kind (images in
    /// tool results) is then redacted at a few MB/s instead of hundreds. The engine is still
    /// correct: the agent and `check-config` warn, naming the detector. Each custom detector
    /// is probed with the built-ins `cfg` enables (the union it will run in), alone among
    /// custom ones; one that does not compile is skipped (`Engine::new` reports it).
    pub fn costly_custom_detectors(cfg: &EngineConfig) -> Vec<CostlyDetector> {
        if cfg.custom.is_empty() {
            return Vec::new();
        }
        let probes = probe_texts();
        let limit = PROBE_LEN * PROBE_BYTES_PER_BYTE;
        cfg.custom
            .iter()
            .filter_map(|c| {
                let one = EngineConfig {
                    custom: vec![c.clone()],
                    ..cfg.clone()
                };
                let e = Engine::new(&one, PseudonymKey::new([0; 32])).ok()?;
                let used = probes
                    .iter()
                    .map(|t| e.automaton_memory(t))
                    .max()
                    .unwrap_or(0);
                (used > limit).then(|| CostlyDetector {
                    entity: c.entity.clone(),
                    automaton_bytes: used,
                })
            })
            .collect()
    }

    /// The memory the union automaton's cache holds after one search of every match in
    /// `text` from a fresh cache (a cache cleared meanwhile counts as full).
    fn automaton_memory(&self, text: &str) -> usize {
        let re = &self.inner.re;
        let mut cache = re.create_cache();
        for _ in re.find_iter(&mut cache, text.as_bytes()) {}
        let dfa = cache.forward();
        if dfa.clear_count() > 0 {
            CACHE_CAPACITY
        } else {
            dfa.memory_usage()
        }
    }

    /// With `split`, the e-mail pattern is searched beside the union automaton (`side`);
    /// without, it is in the union (tests: the two must find the same).
    fn build(cfg: &EngineConfig, key: PseudonymKey, split: bool) -> Result<Engine, EngineError> {
        let mut detectors: Vec<Detector> = Vec::new();
        let mut sources: Vec<String> = Vec::new();
        let mut patterns: Vec<Vec<u32>> = Vec::new();
        let mut words: Vec<String> = Vec::new();
        let mut word_neg: Vec<bool> = Vec::new();
        let word_id =
            |w: &str, neg: bool, words: &mut Vec<String>, word_neg: &mut Vec<bool>| -> u32 {
                let w = w.to_lowercase();
                if let Some(i) = words.iter().position(|x| *x == w) {
                    word_neg[i] |= neg;
                    return i as u32;
                }
                words.push(w);
                word_neg.push(neg);
                (words.len() - 1) as u32
            };
        // A detector's context word, and the same words run together when it has several:
        // `date of birth` is also found in a key `dateOfBirth` (or `dateofbirth`) of JSON
        // inside a text, where a capital after a small letter separates words.
        let context_word =
            |w: &str, ctx: &mut Vec<u32>, words: &mut Vec<String>, word_neg: &mut Vec<bool>| {
                ctx.push(word_id(w, false, words, word_neg));
                if w.contains(' ') {
                    ctx.push(word_id(&w.replace(' ', ""), false, words, word_neg));
                }
            };
        for w in NEGATIVE_WORDS {
            word_id(w, true, &mut words, &mut word_neg);
        }
        // Every long string is held back by the window (in bytes) at each segment cut.
        if cfg.context_window > MAX_CONTEXT_WINDOW {
            return Err(EngineError::ContextWindow(cfg.context_window));
        }
        for spec in &cfg.detectors {
            if !BUILTINS.iter().any(|b| b.entity == spec.entity) {
                return Err(EngineError::UnknownDetector(spec.entity.clone()));
            }
        }
        // An empty word would be found everywhere: a mistake, not a way to say "always".
        let words_of = cfg.detectors.iter().map(|d| (&d.entity, &d.context));
        for (entity, context) in words_of.chain(cfg.custom.iter().map(|c| (&c.entity, &c.context)))
        {
            if context.iter().any(|w| w.is_empty()) {
                return Err(EngineError::EmptyContextWord {
                    entity: entity.clone(),
                });
            }
        }
        let add_pattern =
            |src: String, det: u32, sources: &mut Vec<String>, patterns: &mut Vec<Vec<u32>>| {
                if let Some(i) = sources.iter().position(|s| *s == src) {
                    patterns[i].push(det);
                } else {
                    sources.push(src);
                    patterns.push(vec![det]);
                }
            };
        for b in BUILTINS {
            let spec = cfg.detectors.iter().find(|s| s.entity == b.entity);
            if spec.is_some_and(|s| !s.enabled) {
                continue;
            }
            let generic: &[&str] = if NATIONAL_IDS.contains(&b.entity) {
                ID_WORDS
            } else {
                &[]
            };
            let mut context = Vec::new();
            for w in b.context.iter().chain(generic) {
                context_word(w, &mut context, &mut words, &mut word_neg);
            }
            let (mut base, mut boost) = (b.base, b.boost);
            if let Some(s) = spec {
                for w in &s.context {
                    context_word(w, &mut context, &mut words, &mut word_neg);
                }
                if s.require_context {
                    base = base.min(0.3);
                    boost = boost.max(0.6);
                }
            }
            context.sort_unstable();
            context.dedup();
            let det = detectors.len() as u32;
            detectors.push(Detector {
                entity: b.entity.into(),
                check: b.check,
                base,
                boost,
                context,
                negative: b.negative,
                secret: detectors::SECRET_ENTITIES.contains(&b.entity),
            });
            for p in b.patterns {
                add_pattern(detectors::expand(p), det, &mut sources, &mut patterns);
            }
        }
        for c in &cfg.custom {
            let hir = syntax::parse_with(&c.pattern, &syntax_config()).map_err(|e| {
                EngineError::Pattern {
                    entity: c.entity.clone(),
                    error: e.to_string(),
                }
            })?;
            let props = hir.properties();
            match props.maximum_len() {
                None => {
                    return Err(EngineError::Unbounded {
                        entity: c.entity.clone(),
                    });
                }
                Some(l) if l > MAX_PATTERN_LEN => {
                    return Err(EngineError::TooLong {
                        entity: c.entity.clone(),
                        len: l,
                        max: MAX_PATTERN_LEN,
                    });
                }
                Some(_) => {}
            }
            if props.minimum_len().unwrap_or(0) == 0 {
                return Err(EngineError::Empty {
                    entity: c.entity.clone(),
                });
            }
            let mut context = Vec::new();
            for w in &c.context {
                context_word(w, &mut context, &mut words, &mut word_neg);
            }
            context.sort_unstable();
            context.dedup();
            let (base, boost) = if c.require_context {
                (0.3, 0.6)
            } else {
                (c.confidence.unwrap_or(0.9).clamp(0.0, 1.0), 0.1)
            };
            let det = detectors.len() as u32;
            detectors.push(Detector {
                entity: c.entity.as_str().into(),
                check: c.validator,
                base,
                boost,
                context,
                negative: false,
                secret: false,
            });
            add_pattern(c.pattern.clone(), det, &mut sources, &mut patterns);
        }
        if sources.is_empty() {
            // An engine that detects nothing: a pattern that cannot match.
            sources.push("[a&&b]".into());
            patterns.push(Vec::new());
        }

        let mut pattern_len = Vec::with_capacity(sources.len());
        let mut max_len = 0;
        let mut hirs = Vec::with_capacity(sources.len());
        // Each pattern's edges (see `Edges`), its length without them when that is fixed, and
        // the source the automata are built from.
        let mut edges = Vec::with_capacity(sources.len());
        let mut inner_fixed_len = Vec::with_capacity(sources.len());
        let mut widened = Vec::with_capacity(sources.len());
        for (src, dets) in sources.iter().zip(&patterns) {
            let hir =
                syntax::parse_with(src, &syntax_config()).map_err(|e| EngineError::Pattern {
                    entity: entity_of(&detectors, dets),
                    error: e.to_string(),
                })?;
            let props = hir.properties();
            inner_fixed_len.push(
                props
                    .maximum_len()
                    .filter(|&l| props.minimum_len() == Some(l)),
            );
            let (hir, e) = widen_edges(&hir);
            edges.push(e);
            widened.push(printable(&hir).to_string());
            let len = hir
                .properties()
                .maximum_len()
                .ok_or_else(|| EngineError::Unbounded {
                    entity: entity_of(&detectors, dets),
                })?;
            pattern_len.push(len);
            let extent = dets
                .iter()
                .map(|&d| detectors[d as usize].check.extent())
                .max()
                .unwrap_or(0);
            max_len = max_len.max(len).max(extent);
            hirs.push(hir);
        }
        let mut byte_reach = Box::new([0usize; 256]);
        for (hir, &len) in hirs.iter().zip(&pattern_len) {
            for (b, holds) in held_bytes(hir).iter().enumerate() {
                if *holds {
                    byte_reach[b] = byte_reach[b].max(len);
                }
            }
        }
        // (A pattern that cannot match has no minimum.)
        let min_pattern_len = hirs
            .iter()
            .filter_map(|h| h.properties().minimum_len())
            .min()
            .unwrap_or(usize::MAX);
        let word_boundary_only = hirs.iter().all(|h| {
            h.properties()
                .look_set()
                .remove(regex_syntax::hir::Look::WordAscii)
                .is_empty()
        });

        let dfa_config = hybrid::dfa::Config::new().cache_capacity(CACHE_CAPACITY);
        // The e-mail pattern is searched beside the union automaton (see `side`).
        let side_pid = sources.iter().position(|s| split && s == EMAIL_PATTERN);
        let side = match side_pid {
            Some(i) => Some(Arc::new(
                side::Side::new(
                    i as u32,
                    &widened[i],
                    pattern_len[i],
                    printed_config(),
                    dfa_config.clone(),
                )
                .map_err(EngineError::Build)?,
            )),
            None => None,
        };
        // So are the names of fields read whole (see `side::Labels`).
        let label_pids: Vec<u32> = (0..sources.len() as u32)
            .filter(|&i| {
                let s = &sources[i as usize];
                split && (s == LABELLED_PHONE_PATTERN || s == LABELLED_IBAN_PATTERN)
            })
            .collect();
        let labels = if label_pids.is_empty() {
            None
        } else {
            let srcs: Vec<&str> = label_pids
                .iter()
                .map(|&i| widened[i as usize].as_str())
                .collect();
            let max_len = label_pids
                .iter()
                .map(|&i| pattern_len[i as usize])
                .max()
                .unwrap_or(0);
            Some(Arc::new(
                side::Labels::new(
                    label_pids.clone(),
                    &srcs,
                    max_len,
                    printed_config(),
                    dfa_config.clone(),
                )
                .map_err(EngineError::Build)?,
            ))
        };
        let mut re_ids: Vec<u32> = (0..sources.len() as u32)
            .filter(|&i| Some(i as usize) != side_pid && !label_pids.contains(&i))
            .collect();
        let mut re_sources: Vec<&str> = re_ids
            .iter()
            .map(|&i| widened[i as usize].as_str())
            .collect();
        let re_max_len = re_ids
            .iter()
            .map(|&i| pattern_len[i as usize])
            .max()
            .unwrap_or(0);
        // The length of each union pattern whose matches all have one length (but for the `_`
        // its edges may take in), and its edges.
        let mut re_fixed_len: Vec<Option<usize>> = re_ids
            .iter()
            .map(|&i| inner_fixed_len[i as usize])
            .collect();
        let mut re_edges: Vec<Edges> = re_ids.iter().map(|&i| edges[i as usize]).collect();
        if re_sources.is_empty() {
            // Only the side pattern: a union that cannot match.
            re_sources.push("[a&&b]");
            re_ids.push(0);
            re_fixed_len.push(None);
            re_edges.push(Edges::default());
        }
        let re = hybrid::regex::Regex::builder()
            .syntax(printed_config())
            .dfa(dfa_config.clone().starts_for_each_pattern(true))
            .build_many(&re_sources)
            .map_err(|e| EngineError::Build(e.to_string()))?;
        let all = hybrid::dfa::DFA::builder()
            .syntax(printed_config())
            .configure(
                dfa_config
                    .match_kind(MatchKind::All)
                    .starts_for_each_pattern(false),
            )
            .build_many(&widened)
            .map_err(|e| EngineError::Build(e.to_string()))?;
        let ctx = if words.is_empty() {
            None
        } else {
            let pats: Vec<String> = words.iter().map(|w| format!("(?i){}", escape(w))).collect();
            let dfa = hybrid::dfa::DFA::builder()
                .syntax(syntax_config())
                .configure(
                    hybrid::dfa::Config::new()
                        .match_kind(MatchKind::All)
                        .cache_capacity(1 << 20),
                )
                .build_many(&pats)
                .map_err(|e| EngineError::Build(e.to_string()))?;
            let dfa = Arc::new(dfa);
            let dfa2 = Arc::clone(&dfa);
            let caches: CachePool<ContextCache> = Pool::new(Box::new(move || ContextCache {
                dfa: dfa2.create_cache(),
                labels: Vec::new(),
                evict: 0,
            }));
            Some((dfa, caches))
        };
        let words = words
            .iter()
            .zip(&word_neg)
            .map(|(w, &negative)| Word {
                len: w.len(),
                negative,
                nameless: NAMELESS_IDS.contains(&w.as_str()),
                end_boundary: w
                    .as_bytes()
                    .last()
                    .is_some_and(|b| b.is_ascii_alphanumeric() || *b >= 0x80),
            })
            .collect();
        let builtin = |entity: &str, check: Validator| {
            detectors
                .iter()
                .position(|d| &*d.entity == entity && d.check == check)
                .map(|d| d as u32)
        };
        let (secret_field, phone_field, iban_field) = (
            builtin("SECRET", Validator::Credential),
            builtin("PHONE", Validator::Phone),
            builtin("IBAN", Validator::Iban),
        );
        let (re, all) = (Arc::new(re), Arc::new(all));
        let (re2, side2, all2) = (Arc::clone(&re), side.clone(), Arc::clone(&all));
        let labels2 = labels.clone();
        let inner = Inner {
            caches: Pool::new(Box::new(move || Caches {
                re: re2.create_cache(),
                side: side2.as_ref().map(|s| s.create_cache()),
                labels: labels2.as_ref().map(|l| l.create_cache()),
            })),
            re,
            re_ids,
            re_max_len,
            re_fixed_len,
            re_edges,
            edges,
            side,
            labels,
            all_caches: Pool::new(Box::new(move || all2.create_cache())),
            all,
            ctx,
            words,
            patterns,
            sources: widened,
            max_pattern_len: pattern_len.iter().copied().max().unwrap_or(0),
            min_pattern_len,
            byte_reach,
            word_boundary_only,
            detectors,
            key,
            view: MaskView::from(cfg),
            window: cfg.context_window,
            max_len,
            secret_field,
            phone_field,
            iban_field,
            numbers: cfg.numbers,
            keys: cfg.keys,
        };
        Ok(Engine {
            inner: Arc::new(inner),
            lanes: Lanes::Sparse,
        })
    }

    /// The same engine with the interleaved runs over long texts on or off (the results are
    /// the same; for tests and benchmarks).
    #[doc(hidden)]
    pub fn with_lanes(mut self, on: bool) -> Engine {
        self.lanes = if on { Lanes::Sparse } else { Lanes::Off };
        self
    }

    /// Lanes finding candidates on every long text, also dense ones (tests: dense texts
    /// would otherwise take the lanes' searches instead).
    #[cfg(test)]
    fn with_lanes_always(mut self) -> Engine {
        self.lanes = Lanes::Always;
        self
    }

    /// The lanes running the engine's searches on every long text, also sparse ones (tests:
    /// otherwise only dense texts take that way).
    #[cfg(test)]
    fn with_lane_searches(mut self) -> Engine {
        self.lanes = Lanes::Searches;
        self
    }

    /// All built-in detectors, pseudonymize by default.
    pub fn builtin(key: PseudonymKey) -> Engine {
        match Engine::new(&EngineConfig::default(), key) {
            Ok(e) => e,
            // The built-in table is fixed; its compilation is covered by the tests.
            Err(e) => unreachable!("built-in detectors do not compile: {e}"),
        }
    }

    /// The default view (the policy's masking and clear set).
    pub fn default_view(&self) -> &MaskView {
        &self.inner.view
    }

    /// Number of patterns in the automaton.
    pub fn pattern_count(&self) -> usize {
        self.inner.patterns.len()
    }

    /// The patterns of the automaton, in priority order (for tooling, and for the naive
    /// one-regex-per-pattern baseline of the benchmark).
    #[doc(hidden)]
    pub fn pattern_sources(&self) -> &[String] {
        &self.inner.sources
    }

    /// Runs the validators and context checks of pattern `pattern` on the candidate
    /// `text[start..end]` (as the naive baseline of the benchmark does for each regex match).
    #[doc(hidden)]
    pub fn check_candidate(
        &self,
        text: &str,
        pattern: usize,
        start: usize,
        end: usize,
    ) -> Option<Match> {
        if start >= end
            || end > text.len()
            || !text.is_char_boundary(start)
            || !text.is_char_boundary(end)
        {
            return None;
        }
        let mut scratch = Scratch::default();
        let a = self.evaluate(text, u32::try_from(pattern).ok()?, start, end, &mut scratch)?;
        let det = &self.inner.detectors[a.detector as usize];
        Some(Match {
            entity: det.entity.clone(),
            start: a.start,
            end: a.end,
            confidence: a.confidence,
            detector: a.detector,
        })
    }

    /// Masks the given matches (from [`Engine::scan`] of the same text, in order, not
    /// overlapping) for a view, without the closure rescan of [`Engine::redact_with`]. Matches
    /// that are not in order or not on char boundaries fall back to `redact_with`.
    pub fn redact_matches(&self, text: &str, matches: &[Match], view: &MaskView) -> Redacted {
        let mut ev = Evidence::default();
        let sorted = matches.windows(2).all(|w| w[0].end <= w[1].start)
            && matches.iter().all(|m| {
                m.start < m.end
                    && m.end <= text.len()
                    && text.is_char_boundary(m.start)
                    && text.is_char_boundary(m.end)
            });
        if !sorted {
            // Not what `scan` returns: never mask less than the engine would.
            return self.redact_with(text, view);
        }
        let out = self
            .apply(text, matches, view, &mut ev, (true, true))
            .map(|(t, _)| t);
        Redacted {
            text: out.unwrap_or_else(|| text.to_string()),
            findings: ev.findings,
            counts: ev.counts,
            released_in_clear: ev.released_in_clear,
        }
    }

    /// Validated matches in `text`, in order, not overlapping.
    pub fn scan(&self, text: &str) -> Vec<Match> {
        let mut out = Vec::new();
        self.scan_into(text, &mut out);
        out
    }

    fn scan_into(&self, text: &str, out: &mut Vec<Match>) {
        self.scan_range("", text, 0, text.len(), out, None);
    }

    /// Validated matches that start in `from..stop` (`from` on a char boundary). With `reach`,
    /// also what each automaton candidate's decision read: `(lo, hi)` such that the decision
    /// depends on no byte outside `lo..hi` (context window, validator look-around and
    /// extension, alternatives), for [`Engine::cut_head`].
    fn scan_range(
        &self,
        label: &str,
        text: &str,
        from: usize,
        stop: usize,
        out: &mut Vec<Match>,
        mut reach: Option<&mut Vec<(usize, usize)>>,
    ) {
        let inner = &*self.inner;
        let hay = text.as_bytes();
        // A field under a credential's key (`"password": "..."`) is a secret whatever it
        // looks like: masked whole. A field whose name says it holds a phone number or an
        // IBAN, and whose whole value is one, in a form the patterns leave alone (`"phone":
        // "4915112345678"`, `"iban": "de89370400440532013000"`): that value.
        if from == 0 && stop >= hay.len() && !label.is_empty() {
            if let Some(m) = inner
                .whole_kind(label)
                .and_then(|k| inner.whole_match(k, hay, 0))
            {
                if let Some(r) = reach {
                    r.push((0, hay.len()));
                }
                out.push(m);
                return;
            }
        }
        // Candidates starting before `stop` end before this (and the automaton reads one
        // byte more).
        let search_end = if stop >= hay.len() {
            hay.len()
        } else {
            hay.len().min(stop + self.reach_forward(hay, stop) + 1)
        };
        // Too short a range to hold any candidate (keys, short values): nothing to set up.
        if search_end.saturating_sub(from) < inner.min_pattern_len {
            return;
        }
        let mut pos = from;
        let mut caches = inner.caches.get();
        let caches = &mut *caches;
        // Long texts: the automaton first runs over several segments at once (see `lanes`).
        let mut lanes = match self.lanes {
            Lanes::Off => None,
            _ if stop - from < lanes::MIN_TEXT => None,
            #[cfg(test)]
            Lanes::Searches => Some(LaneSearch::Crowded),
            _ => lanes::find(
                inner.re.forward(),
                caches.re.forward_mut(),
                text,
                (from, stop, search_end),
                inner.re_max_len,
                self.lanes == Lanes::Sparse,
            ),
        };
        // Dense candidates (or the test mode): the lanes run the searches.
        if let Some(LaneSearch::Crowded) = lanes {
            lanes = lanes::searches(
                inner.re.forward(),
                caches.re.forward_mut(),
                text,
                (from, stop.min(from + lanes::FIRST_WINDOW), search_end),
            )
            .map(LaneSearch::Dense);
        }
        // The next match of the union, of the e-mail pattern and of the field names.
        let (mut next_re, mut next_side, mut next_label) =
            (Next::default(), Next::default(), Next::default());
        // (Only for a whole field value: see `columns`.)
        let whole = from == 0 && stop >= hay.len() && !label.is_empty() && reach.is_none();
        let mut scratch = Scratch {
            label,
            columns: if whole { Table::Unread } else { Table::Off },
            ..Scratch::default()
        };
        // The cells of a CSV table's columns named for a credential, a phone number or an
        // IBAN, each read whole as a field of that name (`mobile` over `4915112345678`), in
        // order.
        let cells = if whole && inner.reads_whole() {
            let cols = columns::Columns::parse(hay);
            let cells = cols.as_ref().map(|c| self.labelled_cells(text, c));
            scratch.columns = Table::Read(cols);
            cells.unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut cells = cells.into_iter().peekable();
        // The later items of a list under a field's name whose first item was accepted
        // (`"phones": ["4915112345678", "4915112345679"]`), each read whole as the first, in
        // order.
        let mut items: std::collections::VecDeque<Match> = std::collections::VecDeque::new();
        // End of the last rejected candidate: a candidate wholly inside it is a fragment of a
        // rejected structure (`0044 0532 0130 00` inside a bad IBAN) and is skipped.
        let mut rejected_end = 0;
        while pos < stop {
            if !next_re.holds(pos) {
                if let Some(LaneSearch::Dense(searches)) = &lanes {
                    if searches.ran_out(pos) {
                        // The next window, if the lanes ran the searches needed so far.
                        let window = stop.min(pos.saturating_add(lanes::WINDOW));
                        lanes = if searches.paid() && stop - pos >= lanes::MIN_SEARCHES {
                            lanes::searches(
                                inner.re.forward(),
                                caches.re.forward_mut(),
                                text,
                                (pos, window, search_end),
                            )
                            .map(LaneSearch::Dense)
                        } else {
                            None
                        };
                    }
                }
                let input = Input::new(hay).span(pos..search_end);
                let found = match lanes.as_mut() {
                    Some(LaneSearch::Sparse(lanes)) => {
                        let mut find = |input: &Input<'_>| inner.find_re(&mut caches.re, input);
                        lanes.search(&mut find, text, pos, search_end)
                    }
                    Some(LaneSearch::Crowded) | None => inner.find_re(&mut caches.re, &input),
                    Some(LaneSearch::Dense(searches)) => match searches.get(pos) {
                        Some(end) => end.and_then(|(e, pid)| {
                            inner.start_of(&mut caches.re, &input, HalfMatch::new(pid, e))
                        }),
                        None => inner.find_re(&mut caches.re, &input),
                    },
                };
                let found = found.and_then(|m| {
                    let pid = *inner.re_ids.get(m.pattern().as_usize())?;
                    Some((m.start(), m.end(), pid))
                });
                next_re = Next::searched(pos, found);
            }
            if let (Some(side), Some(cache)) = (&inner.side, caches.side.as_mut()) {
                if !next_side.holds(pos) {
                    let found = side.find(cache, hay, pos, search_end);
                    next_side = Next::searched(pos, found.map(|(s, e)| (s, e, side.pid)));
                }
            }
            if let (Some(labels), Some(cache)) = (&inner.labels, caches.labels.as_mut()) {
                if !next_label.holds(pos) {
                    next_label = Next::searched(pos, labels.find(cache, hay, pos, search_end));
                }
            }
            // The leftmost of the three, the union's pattern order breaking ties.
            let leftmost =
                |a: Option<(usize, usize, u32)>, b: Option<(usize, usize, u32)>| match (a, b) {
                    (Some(a), Some(b)) => Some(if (b.0, b.2) < (a.0, a.2) { b } else { a }),
                    (a, b) => a.or(b),
                };
            let found = leftmost(leftmost(next_re.found, next_side.found), next_label.found);
            let found = found.filter(|m| m.0 < stop);
            // A labelled cell before (or at) the next candidate comes first; a candidate
            // accepted over a cell's start has taken it.
            while cells.next_if(|c| c.start < pos).is_some() {}
            if let Some(c) = cells.next_if(|c| found.is_none_or(|m| c.start <= m.0)) {
                pos = c.end;
                scratch.floor = c.end;
                out.push(c);
                continue;
            }
            // So do a list's items (one accepted over an item's start has taken it).
            while items.front().is_some_and(|i| i.start < pos) {
                items.pop_front();
            }
            if let Some(i) = items.pop_front() {
                if found.is_none_or(|m| i.start <= m.0) {
                    pos = i.end;
                    scratch.floor = i.end;
                    out.push(i);
                    continue;
                }
                items.push_front(i);
            }
            let Some((s, e, pid)) = found else {
                break;
            };
            // The automaton's look-around (`\b`) reads one byte either side.
            scratch.reach = (s.saturating_sub(1), e + 1);
            let found = if e <= rejected_end {
                None
            } else {
                match self.evaluate(text, pid, s, e, &mut scratch) {
                    Some(a) if a.confidence >= STRONG => Some(a),
                    first => match (first, self.alternatives(text, s, pid, e, &mut scratch)) {
                        (Some(a), Some(b)) => Some(if b.confidence > a.confidence { b } else { a }),
                        (a, b) => a.or(b),
                    },
                }
            };
            // A field's value that is a list's first item: the others, read whole as it is.
            if let Some(a) = &found {
                let det = &inner.detectors[a.detector as usize];
                if let Some(kind) = det.check.labelled_kind() {
                    let (spans, read) = validate::list_items(hay, a.start);
                    scratch.reach.1 = scratch.reach.1.max(read + 2);
                    items.extend(spans.into_iter().filter_map(|(s, e)| {
                        inner.whole_match(Whole::Field(kind), hay.get(s..e)?, s)
                    }));
                }
            }
            if let Some(r) = reach.as_deref_mut() {
                r.push(scratch.reach);
            }
            if found.is_none() {
                // (Not all rejected matches are structures: `://10.1.2.3:8080` is a URL's
                // password's lead-in, and holds an address.)
                let own = if inner.hides_fragments(pid) { e } else { 0 };
                rejected_end = rejected_end
                    .max(own)
                    .max(scratch.alts.iter().map(|a| a.1).max().unwrap_or(0));
            }
            match found {
                Some(a) => {
                    scratch.floor = a.end;
                    let det = &inner.detectors[a.detector as usize];
                    out.push(Match {
                        entity: det.entity.clone(),
                        start: a.start,
                        end: a.end,
                        confidence: a.confidence,
                        detector: a.detector,
                    });
                    pos = a.end.max(s + 1);
                }
                None => pos = s + 1,
            }
            while pos < stop && !text.is_char_boundary(pos) {
                pos += 1;
            }
        }
        // A list's items after the last candidate (or past `stop`: the decision to read them
        // was taken before it, and its reach covers them).
        for i in items {
            if i.start >= pos {
                pos = i.end;
                out.push(i);
            }
        }
    }

    /// The cells of `cols` that a field named as their column holds whole: a credential
    /// (`detectors::secret_label`), a phone number or an IBAN ([`Inner::whole_match`]), as
    /// matches in order.
    fn labelled_cells(&self, text: &str, cols: &columns::Columns) -> Vec<Match> {
        let inner = &*self.inner;
        let hay = text.as_bytes();
        // Each column's name read once, not per cell.
        let kinds: Vec<Option<Whole>> = (0..cols.count())
            .map(|c| cols.name(text, c).and_then(|n| inner.whole_kind(n)))
            .collect();
        let kind = |col: usize| kinds.get(col).copied().flatten();
        cols.cells(hay, |col| kind(col).is_some())
            .into_iter()
            .filter_map(|(col, s, e)| inner.whole_match(kind(col)?, hay.get(s..e)?, s))
            .collect()
    }

    /// Every other pattern, and every shorter end, matching at `s`; the most confident that
    /// validates (ties: pattern priority, then the longest).
    fn alternatives(
        &self,
        text: &str,
        s: usize,
        pid0: u32,
        e0: usize,
        scratch: &mut Scratch<'_>,
    ) -> Option<Accepted> {
        let inner = &*self.inner;
        let hay = text.as_bytes();
        let end = hay.len().min(s.saturating_add(inner.max_pattern_len + 1));
        let mut cache = inner.all_caches.get();
        scratch.alts.clear();
        let config = start::Config::new()
            .anchored(Anchored::Yes)
            .look_behind(s.checked_sub(1).map(|i| hay[i]));
        if let Ok(sid) = inner.all.start_state(&mut cache, &config) {
            let alts = &mut scratch.alts;
            anchored_matches(&inner.all, &mut cache, hay, (s, end), sid, |p, e| {
                let p = p.as_u32();
                if (p, e) != (pid0, e0) && e > s && text.is_char_boundary(e) {
                    alts.push((p, e));
                }
                alts.len() <= 256
            });
        }
        drop(cache);
        let mut alts = std::mem::take(&mut scratch.alts);
        alts.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        alts.dedup();
        let mut found: Option<Accepted> = None;
        for &(p, e) in &alts {
            if let Some(a) = self.evaluate(text, p, s, e, scratch) {
                if found.as_ref().is_none_or(|f| a.confidence > f.confidence) {
                    found = Some(a);
                }
            }
        }
        scratch.alts = alts;
        found
    }

    /// Runs the validators of the pattern's detectors on `text[s..e]`; the most confident
    /// one at or above the threshold.
    fn evaluate(
        &self,
        text: &str,
        pid: u32,
        s: usize,
        e: usize,
        scratch: &mut Scratch<'_>,
    ) -> Option<Accepted> {
        let inner = &*self.inner;
        // Without the `_` a widened edge took in (see `Edges`).
        let (s, e) = inner.edges.get(pid as usize)?.trim(text.as_bytes(), s, e);
        if s >= e {
            return None;
        }
        let mut best: Option<Accepted> = None;
        for &d in inner.patterns.get(pid as usize)? {
            let det = &inner.detectors[d as usize];
            // Validators read two bytes either side (some further back), and those that
            // extend a value up to their extent.
            // (Those that know what they read on this candidate say it: see
            // `Validator::reach`.)
            let ext = det.check.extent();
            let (lo, hi) = det.check.reach(text.as_bytes(), s, e).unwrap_or((
                s.saturating_sub(det.check.lookbehind()),
                if ext > 0 { s + ext + 2 } else { 0 },
            ));
            scratch.reach.0 = scratch.reach.0.min(lo);
            scratch.reach.1 = scratch.reach.1.max(e + 2).max(hi);
            let Some(mut v) = det.check.check(text, s, e) else {
                continue;
            };
            // (A validator that moves the start back, the e-mail one, stops at the last
            // accepted match.)
            v.start = v.start.max(scratch.floor.min(s));
            // (Before a start moved back, the validator read the char there: 4 bytes.)
            let back = if v.start < s { 4 } else { 2 };
            scratch.reach.0 = scratch.reach.0.min(v.start.saturating_sub(back));
            scratch.reach.1 = scratch.reach.1.max(v.end + 2);
            if v.start >= v.end
                || v.end > text.len()
                || !text.is_char_boundary(v.start)
                || !text.is_char_boundary(v.end)
            {
                continue;
            }
            let base = v.base.unwrap_or(det.base);
            let conf = if base >= THRESHOLD && !det.negative {
                base
            } else if base + det.boost < THRESHOLD {
                continue;
            } else {
                self.context_hits(text, v.start, scratch);
                let mut c = base;
                let relevant = |h: &Hit| det.context.binary_search(&h.word).is_ok();
                let last_relevant = scratch
                    .hits
                    .iter()
                    .filter(|h| relevant(h))
                    .map(|h| h.end)
                    .max();
                if last_relevant.is_some() {
                    c += det.boost;
                }
                if det.negative {
                    let hay = text.as_bytes();
                    let grouped = || {
                        hay[v.start..v.end]
                            .iter()
                            .any(|b| !b.is_ascii_alphanumeric())
                    };
                    let penalised = scratch.hits.iter().any(|h| {
                        let word = &inner.words[h.word as usize];
                        word.negative
                            && !(word.nameless && grouped())
                            && !relevant(h)
                            && last_relevant.is_none_or(|r| h.end > r)
                            && v.start - h.end <= NEGATIVE_GAP
                            && !hay[h.end..v.start].contains(&b'\n')
                    });
                    if penalised {
                        c -= PENALTY;
                    }
                }
                c.clamp(0.0, 1.0)
            };
            if conf >= THRESHOLD && best.as_ref().is_none_or(|b| conf > b.confidence) {
                best = Some(Accepted {
                    detector: d,
                    start: v.start,
                    end: v.end,
                    confidence: conf,
                });
            }
        }
        best
    }

    /// Context words within the window before `text[s..]`, with word boundaries, not inside
    /// mask tokens.
    fn context_hits(&self, text: &str, s: usize, scratch: &mut Scratch<'_>) {
        if scratch.hits_for == Some((s, scratch.floor)) {
            scratch.reach.0 = scratch.reach.0.min(scratch.hits_lo);
            return;
        }
        scratch.hits_for = Some((s, scratch.floor));
        scratch.hits.clear();
        let inner = &*self.inner;
        let Some((ctx, caches)) = &inner.ctx else {
            return;
        };
        let mut cache = caches.get();
        let hay = text.as_bytes();
        // `window` chars before `s`: as many bytes when they are ASCII.
        let lo = s.saturating_sub(inner.window);
        let ws = if hay[lo..s].is_ascii() {
            lo
        } else {
            text[..s]
                .char_indices()
                .rev()
                .take(inner.window)
                .last()
                .map_or(s, |(i, _)| i)
        };
        let ws = ws.max(scratch.floor.min(s));
        // The word-boundary check reads the byte before a word.
        let mut lo = ws.saturating_sub(1);
        if ws == 0 && !scratch.label.is_empty() {
            // The field name counts as the text before the value (`"bsn": "..."`).
            if scratch.label_words.is_none() {
                scratch.label_words = Some(cache.label_words(ctx, &inner.words, scratch.label));
            }
            for &w in scratch.label_words.iter().flatten() {
                scratch.hits.push(Hit { word: w, end: 0 });
            }
        }
        // A cell of a CSV table under a header row: the column's name counts as the text
        // before the cell (`dob` over `1985-03-15`).
        if let Table::Unread = scratch.columns {
            scratch.columns = Table::Read(columns::Columns::parse(hay));
        }
        if let Table::Read(Some(cols)) = &scratch.columns {
            if let Some((name, cell)) = cols.cell_at(text, s) {
                for w in cache.label_words(ctx, &inner.words, name) {
                    scratch.hits.push(Hit { word: w, end: cell });
                }
            }
        }
        // `_` separates words here (JSON keys like `date_of_birth`), and so does a capital
        // after a small letter (`dateOfBirth`, `passportNumber` in JSON inside a text).
        // Outside ASCII, letters and digits are word characters; spaces and punctuation
        // (`\u{a0}`, `«`, `“`, `→`) are not.
        let word_before = |at: usize, lo: &mut usize| match hay[at - 1] {
            b if b < 0x80 => b.is_ascii_alphanumeric(),
            _ => {
                *lo = (*lo).min(at.saturating_sub(4));
                text[..at]
                    .chars()
                    .next_back()
                    .is_some_and(char::is_alphanumeric)
            }
        };
        let word_after = |at: usize| match hay[at] {
            b if b < 0x80 => b.is_ascii_alphanumeric(),
            _ => text[at..].chars().next().is_some_and(char::is_alphanumeric),
        };
        let camel = |a: u8, b: u8| a.is_ascii_lowercase() && b.is_ascii_uppercase();
        // Inside a mask token (`[NL_BSN:4f1c9a2b]`, `[DOB]`): the word follows `[` and
        // capitals, and the token closes as masks do, with `]` or with `:`, eight hex digits
        // and `]`. (`[BSN: 111222333]` is no mask.) Read up to the candidate only: where the
        // token reaches it, the word counts as a mask's.
        let in_mask = |start: usize, end: usize, lo: &mut usize| {
            let mut i = start;
            while i > 0 && (hay[i - 1].is_ascii_uppercase() || hay[i - 1] == b'_') {
                i -= 1;
            }
            *lo = (*lo).min(i.saturating_sub(1));
            if i == 0 || hay[i - 1] != b'[' {
                return false;
            }
            let mut j = end;
            while j < s && matches!(hay[j], b'A'..=b'Z' | b'0'..=b'9' | b'_') {
                j += 1;
            }
            match hay.get(j..s.min(j + 10)) {
                Some([b']', ..]) => true,
                Some([b':', rest @ ..]) => {
                    rest.iter().take(8).all(u8::is_ascii_hexdigit)
                        && rest.get(8).is_none_or(|&b| b == b']')
                }
                Some(rest) => rest.is_empty(),
                None => true,
            }
        };
        let mut found = |w: u32, end: usize, lo: &mut usize| {
            let Some(word) = inner.words.get(w as usize) else {
                return;
            };
            let Some(start) = end.checked_sub(word.len) else {
                return;
            };
            let before_ok =
                (start == 0 || !word_before(start, lo) || camel(hay[start - 1], hay[start]))
                    && !in_mask(start, end, lo);
            let after_ok = !word.end_boundary
                || end >= hay.len()
                || end == s
                || !word_after(end)
                || camel(hay[end - 1], hay[end]);
            if before_ok && after_ok {
                scratch.hits.push(Hit { word: w, end });
            }
        };
        // Every word ending in `ws..=s`: the automaton (all words, unanchored) followed byte
        // by byte, its matches reported one byte late, the byte at `s` (or the text's end)
        // last. (By hand rather than with its overlapping search, which costs more per call:
        // dense text searches a window before every other value.)
        let cfg = start::Config::new()
            .anchored(Anchored::No)
            .look_behind(ws.checked_sub(1).map(|i| hay[i]));
        if let Ok(mut sid) = ctx.start_state(&mut cache.dfa, &cfg) {
            for at in ws..=s {
                let next = match hay.get(at) {
                    // (The unchecked transition only from a state that is not a match.)
                    Some(&b) if !sid.is_tagged() => {
                        match ctx.next_state_untagged(&cache.dfa, sid, b) {
                            n if !n.is_tagged() => {
                                sid = n;
                                continue;
                            }
                            _ => ctx.next_state(&mut cache.dfa, sid, b),
                        }
                    }
                    Some(&b) => ctx.next_state(&mut cache.dfa, sid, b),
                    None => ctx.next_eoi_state(&mut cache.dfa, sid),
                };
                let Ok(next) = next else { break };
                if next.is_match() {
                    for i in 0..ctx.match_len(&cache.dfa, next) {
                        let w = ctx.match_pattern(&cache.dfa, next, i).as_u32();
                        found(w, at, &mut lo);
                    }
                } else if next.is_dead() || next.is_quit() {
                    break;
                }
                sid = next;
            }
        }
        scratch.hits_lo = lo;
        scratch.reach.0 = scratch.reach.0.min(lo);
    }

    /// Masks `text` for the default view.
    pub fn redact(&self, text: &str) -> Redacted {
        self.redact_with(text, &self.inner.view)
    }

    /// Masks `text` for a role's view.
    pub fn redact_with(&self, text: &str, view: &MaskView) -> Redacted {
        let (out, ev) = self.redact_cow(text, view);
        Redacted {
            text: out.into_owned(),
            findings: ev.findings,
            counts: ev.counts,
            released_in_clear: ev.released_in_clear,
        }
    }

    /// Masks `text` for a role's view without copying it when nothing is masked.
    pub fn redact_cow<'a>(&self, text: &'a str, view: &MaskView) -> (Cow<'a, str>, Evidence) {
        self.redact_field_cow("", text, view)
    }

    /// Like [`Engine::scan`] for the value of a field: `label` (a JSON key, a CSV column
    /// name) is context before the text, so `{"bsn": "111222333"}` redacted value by value
    /// still sees its label.
    pub fn scan_field(&self, label: &str, text: &str) -> Vec<Match> {
        let mut out = Vec::new();
        self.scan_range(label, text, 0, text.len(), &mut out, None);
        out
    }

    /// Like [`Engine::redact_with`] for the value of a field (see [`Engine::scan_field`]).
    pub fn redact_field(&self, label: &str, text: &str, view: &MaskView) -> Redacted {
        let (out, ev) = self.redact_field_cow(label, text, view);
        Redacted {
            text: out.into_owned(),
            findings: ev.findings,
            counts: ev.counts,
            released_in_clear: ev.released_in_clear,
        }
    }

    /// [`TextRedactor::redact_labelled`] for a view: the text (borrowed when nothing is
    /// masked) and the findings, without the counts per entity type (the JSON rewriter counts
    /// the findings).
    pub fn redact_field_findings<'a>(
        &self,
        label: &str,
        text: &'a str,
        view: &MaskView,
    ) -> (Cow<'a, str>, Vec<Finding>) {
        // Most strings of a JSON document hold nothing: they return before any evidence is
        // set up (its maps cost more to drop than a short string takes to scan).
        let mut matches = Vec::new();
        self.scan_range(label, text, 0, text.len(), &mut matches, None);
        if matches.is_empty() {
            return (Cow::Borrowed(text), Vec::new());
        }
        let mut ev = Evidence::default();
        let out = self.mask_scanned(label, text, view, matches, (&mut ev, false));
        (out, ev.findings)
    }

    /// Like [`Engine::redact_cow`] for the value of a field (see [`Engine::scan_field`]).
    pub fn redact_field_cow<'a>(
        &self,
        label: &str,
        text: &'a str,
        view: &MaskView,
    ) -> (Cow<'a, str>, Evidence) {
        let mut ev = Evidence::default();
        let mut matches = Vec::new();
        self.scan_range(label, text, 0, text.len(), &mut matches, None);
        let out = self.mask_scanned(label, text, view, matches, (&mut ev, true));
        (out, ev)
    }

    /// Masks `text`, whose matches are `matches`, and rescans it until no mask changes what
    /// its neighbours decide. The findings go into `ev`, and with `tally` the counts per entity
    /// type too.
    fn mask_scanned<'a>(
        &self,
        label: &str,
        text: &'a str,
        view: &MaskView,
        mut matches: Vec<Match>,
        (ev, tally): (&mut Evidence, bool),
    ) -> Cow<'a, str> {
        let Some((mut cur, mut masks)) = self.apply(text, &matches, view, ev, (true, tally)) else {
            return Cow::Borrowed(text);
        };
        for _ in 1..CLOSURE_ROUNDS {
            matches.clear();
            self.rescan_near(label, &cur, &masks, &mut matches, None);
            match self.apply(&cur, &matches, view, ev, (false, tally)) {
                Some((next, next_masks)) => (cur, masks) = (next, next_masks),
                None => break,
            }
        }
        Cow::Owned(cur)
    }

    /// Scans the parts of `text` whose decisions a mask can have changed: the mask itself
    /// and, before it, every candidate that can reach it (new neighbours); after it, any run
    /// of capitals and `_` (a context word's check for a mask token walks back over it), the
    /// context window (in bytes, 4 per char) and every candidate that can reach past that
    /// (labels, floors). Everything else is byte for byte what the previous round scanned,
    /// with the same result.
    ///
    /// How far a candidate can reach is bounded by the bytes around the mask, not only by the
    /// longest pattern: a match holding a byte is no longer than the longest pattern that can
    /// hold it ([`Engine::reach_back`], [`Engine::reach_forward`]). The long patterns (e-mail
    /// addresses, tokens) hold no space, so in prose a mask is rescanned a few dozen bytes
    /// either side rather than the 300 of the longest pattern.
    fn rescan_near(
        &self,
        label: &str,
        text: &str,
        masks: &[(usize, usize)],
        out: &mut Vec<Match>,
        mut reach: Option<&mut Vec<(usize, usize)>>,
    ) {
        let inner = &*self.inner;
        let hay = text.as_bytes();
        let window = inner.window.saturating_mul(4);
        // A candidate reads a mask when its validator's look-around (two bytes) does: it
        // then holds every byte from its start to one before the mask.
        let group_start = |m: (usize, usize)| {
            self.reach_back(hay, m.0.saturating_sub(1).min(hay.len()))
                .saturating_sub(1)
        };
        let group_end = |m: (usize, usize)| {
            // A context word's check for a mask token around it walks back over capitals and
            // `_` (`in_mask` in `context_hits`): from a word anywhere in such a run right after
            // the mask, that walk reads the mask.
            let run = hay
                .get(m.1..)
                .unwrap_or_default()
                .iter()
                .take_while(|&&b| b.is_ascii_uppercase() || b == b'_')
                .count();
            let q =
                m.1.saturating_add(run)
                    .saturating_add(window)
                    .min(hay.len());
            (q + self.reach_forward(hay, q) + 1).min(hay.len())
        };
        let mut i = 0;
        let mut done = 0;
        while i < masks.len() {
            let a = group_start(masks[i]).max(done);
            let mut last = masks[i];
            i += 1;
            // The masks whose regions overlap, in one group. A group ends at least a window
            // after its last mask: a mask starting before that joins it without walking the
            // bytes (personal data every few words), and the group's end is walked once.
            let b = loop {
                if i < masks.len() && masks[i].0 <= last.1.saturating_add(window) {
                    last = masks[i];
                    i += 1;
                    continue;
                }
                // (The later the mask, the later its region ends.)
                let b = group_end(last);
                if i < masks.len() && group_start(masks[i]) <= b {
                    last = masks[i];
                    i += 1;
                    continue;
                }
                break b;
            };
            let a = floor_boundary(text, a);
            if a < b {
                // The scan starts where the first candidate holding the group's start can
                // start, and keeps what starts from `a` on: a candidate the group's start
                // falls into (a rejected IBAN whose digits read as a phone number on their
                // own) is then judged whole, as a scan of the whole text judges it, wherever
                // the group starts (so also the same in a window of the text as in the
                // whole).
                let pre = floor_boundary(
                    text,
                    self.reach_back(hay, (a + 1).min(hay.len()))
                        .saturating_sub(1),
                );
                let n = out.len();
                self.scan_range(label, text, pre, b, out, reach.as_deref_mut());
                // In order: those starting before `a` come first.
                let before_a = out[n..].iter().take_while(|m| m.start < a).count();
                out.drain(n..n + before_a);
                done = out[n..].last().map_or(b, |m| m.end.max(b));
            }
        }
    }

    /// The earliest start of a match that holds every byte of `hay[s..p]` (see
    /// [`Engine::reach`]).
    fn reach_back(&self, hay: &[u8], p: usize) -> usize {
        p - self.reach(hay[..p].iter().rev())
    }

    /// How far after `q` a match starting before `q` can end (see [`Engine::reach`]).
    fn reach_forward(&self, hay: &[u8], q: usize) -> usize {
        self.reach(hay[q..].iter())
    }

    /// How many of `bytes` (walked away from a point) one match can hold: each byte bounds the
    /// length of a match holding it (`byte_reach`), and a match holding `k` of them is at
    /// least `k` long. Never more than `max_pattern_len`.
    fn reach<'h>(&self, bytes: impl Iterator<Item = &'h u8>) -> usize {
        let inner = &*self.inner;
        let mut bound = inner.max_pattern_len;
        let mut k = 0;
        for &b in bytes {
            let r = inner.byte_reach[usize::from(b)];
            if k >= bound || r <= k {
                break;
            }
            bound = bound.min(r);
            k += 1;
        }
        k
    }

    /// [`TextRedactor::redact_head`] in one pass: the window is scanned once, masked once, and
    /// the closure rescan runs once, all recording what each decision read (`scan_range`);
    /// the cut is the last point after the window's middle and at least `holdback` before its
    /// end that no match and no decision's reach spans, and that does not fall between two
    /// word bytes. There the automaton sees the same on both sides (`\b` reads the start and
    /// end of a text as a non-word byte, and no pattern looks around otherwise), every
    /// validator and context search reads the same bytes, so `redact(text[..c])` is the head
    /// of `redact(text)`, which is cut from the same output.
    ///
    /// What follows the window cannot change the head either when the cut is at least
    /// `holdback` before the end (the caller's bound: the longest match plus context, at least
    /// [`Engine::context_reach`]), or, if
    /// that is less, two pattern lengths and a context window before it (`tail_margin`): no
    /// match starting before the cut reaches past the window, and nothing after the window
    /// (nor the closure rescan around it) reads back across the cut. So the engine carries
    /// a short tail into the next window, not a whole `max_match_len` (16 KiB for PEM
    /// blocks), whose decisions are recorded like all others. `None` when no such point exists,
    /// when the closure rescan finds anything to mask (adversarial input: the caller then
    /// verifies by redacting; values the view shows in clear are left as they are), or when a
    /// custom pattern uses other look-around.
    pub fn cut_head<'t>(&self, label: &str, text: &'t str, holdback: usize) -> Option<Head<'t>> {
        self.cut_head_for(label, text, holdback, &self.inner.view)
    }

    /// [`Engine::cut_head`] for a role's view (what [`ViewRedactor`](super::view::ViewRedactor)
    /// cuts with).
    pub fn cut_head_for<'t>(
        &self,
        label: &str,
        text: &'t str,
        holdback: usize,
        view: &MaskView,
    ) -> Option<Head<'t>> {
        let inner = &*self.inner;
        let n = text.len();
        let margin = holdback.min(self.tail_margin()).max(1);
        let (lo, hi) = (n / 2, n.checked_sub(margin)?);
        if !inner.word_boundary_only || hi <= lo {
            return None;
        }
        let mut reach = Vec::new();
        let mut matches = Vec::new();
        self.scan_range(label, text, 0, n, &mut matches, Some(&mut reach));
        let mut ev = Evidence::default();
        // Only the findings go into the head.
        let applied = self.apply(text, &matches, view, &mut ev, (true, false));
        // The input spans of the masked matches, in the order of the masks.
        let masked: Vec<(usize, usize)> = matches
            .iter()
            .filter(|m| view.mode(&m.entity).is_some())
            .map(|m| (m.start, m.end))
            .collect();
        if let Some((out, masks)) = &applied {
            let mut found = Vec::new();
            let mut near = Vec::new();
            self.rescan_near(label, out, masks, &mut found, Some(&mut near));
            // A value the view shows in clear is found again, and left as it is (as the
            // closure rescan of `mask_scanned` leaves it); anything to mask is a new match
            // around a mask (adversarial input): verified by the caller instead.
            if found.iter().any(|m| view.mode(&m.entity).is_some()) {
                return None;
            }
            near.extend(found.iter().map(|m| (m.start, m.end)));
            // Output offsets to input offsets (inside a mask: the masked value's span).
            let to_input = |o: usize, up: bool| match masks.partition_point(|&(ms, _)| ms <= o) {
                0 => o,
                j => {
                    let ((_, me), (vs, ve)) = (masks[j - 1], masked[j - 1]);
                    match o.checked_sub(me) {
                        Some(d) => ve + d,
                        None if up => ve,
                        None => vs,
                    }
                }
            };
            reach.extend(
                near.iter()
                    .map(|&(a, b)| (to_input(a, false), to_input(b, true))),
            );
        }
        reach.extend(matches.iter().map(|m| (m.start, m.end)));
        let c = free_cut(text, &mut reach, lo, hi)?;
        let k = masked.iter().take_while(|m| m.1 <= c).count();
        let head = match applied {
            Some((mut out, masks)) if k > 0 => {
                out.truncate(masks[k - 1].1 + (c - masked[k - 1].1));
                Cow::Owned(out)
            }
            _ => Cow::Borrowed(text.get(..c)?),
        };
        ev.findings.truncate(k);
        Some(Head {
            cut: c,
            text: head,
            findings: ev.findings,
        })
    }

    /// How far before a value its decision reads, in bytes: the context window (up to 4 bytes
    /// a char) and the word boundary before a context word.
    pub fn context_reach(&self) -> usize {
        self.inner.window.saturating_mul(4).saturating_add(2)
    }

    /// See [`Engine::cut_head`]: a pattern length for a match starting before the cut, one for
    /// the closure rescan's look back before a mask, the context window in bytes, and the
    /// bytes around each that the automaton and the validators read.
    fn tail_margin(&self) -> usize {
        // (`context_reach` is the context window in bytes plus 2.)
        (self.inner.max_pattern_len + 2)
            .saturating_mul(2)
            .saturating_add(self.context_reach())
            .saturating_add(2)
    }

    /// Writes `text` with `matches` masked into a new buffer, with the spans of the masks in
    /// it; `None` if nothing is masked. Evidence in `ev`: the findings; with `first` (the
    /// text as it came) the values released in clear; with `tally` the counts per entity type.
    fn apply(
        &self,
        text: &str,
        matches: &[Match],
        view: &MaskView,
        ev: &mut Evidence,
        (first, tally): (bool, bool),
    ) -> Option<(String, Vec<(usize, usize)>)> {
        // Most strings of a JSON document hold nothing: they must not pay for the arrays below.
        if matches.is_empty() {
            return None;
        }
        let mut out: Option<String> = None;
        let mut spans = Vec::new();
        let mut norm = String::new();
        let mut last = 0;
        // The view's mode and the count of the first detectors, kept by detector for this
        // text: hashing and comparing the entity's name at every value cost a few percent of
        // dense text.
        let mut modes: [Option<Option<MaskMode>>; DETECTOR_SLOTS] = [None; DETECTOR_SLOTS];
        let mut counts = [0u32; DETECTOR_SLOTS];
        // The slots counted: the count loop below stops there.
        let mut used = 0;
        for m in matches {
            let slot = m.detector as usize;
            let mode = match modes.get_mut(slot) {
                Some(known) => *known.get_or_insert_with(|| view.mode(&m.entity)),
                None => view.mode(&m.entity),
            };
            let Some(mode) = mode else {
                if first {
                    *ev.released_in_clear
                        .entry(m.entity.to_string())
                        .or_default() += 1;
                }
                continue;
            };
            // (Room for every mask at once, `[ENTITY:4f1c9a2b]` the longest: on dense text,
            // where masks are longer than the values, growing the copy as it went took 1-2%
            // of the time.)
            let buf = out.get_or_insert_with(|| {
                let masks: usize = matches.iter().map(|m| m.entity.len() + 11).sum();
                String::with_capacity(text.len() + masks)
            });
            let value = &text[m.start..m.end];
            buf.push_str(&text[last..m.start]);
            let det = &self.inner.detectors[m.detector as usize];
            norm.clear();
            det.check.normalize_into(value, &mut norm);
            let pseudonym = self.inner.key.pseudonym(&m.entity, &norm);
            let mask_start = buf.len();
            match mode {
                MaskMode::Remove => {
                    buf.push('[');
                    buf.push_str(&m.entity);
                    buf.push(']');
                }
                MaskMode::Pseudonymize => {
                    buf.push('[');
                    buf.push_str(&m.entity);
                    buf.push(':');
                    buf.push_str(&pseudonym);
                    buf.push(']');
                }
                MaskMode::Partial => {
                    let ds: Vec<char> = value.chars().filter(char::is_ascii_digit).collect();
                    buf.push_str("****");
                    // The last digits tell a card or an account from another; of a
                    // credential, they are a quarter of a PIN.
                    let secret = self.inner.detectors.get(slot).is_some_and(|d| d.secret);
                    if ds.len() >= 8 && !secret {
                        buf.extend(&ds[ds.len() - 4..]);
                    }
                }
            }
            spans.push((mask_start, buf.len()));
            last = m.end;
            match counts.get_mut(slot) {
                Some(c) => {
                    *c += 1;
                    used = used.max(slot + 1);
                }
                None if tally => add_count(&mut ev.counts, &m.entity, 1),
                None => {}
            }
            ev.findings.push(Finding {
                entity: m.entity.clone(),
                pseudonym,
            });
        }
        for (d, &n) in counts[..used].iter().enumerate() {
            if n > 0 && tally {
                add_count(&mut ev.counts, &self.inner.detectors[d].entity, n);
            }
        }
        let mut buf = out?;
        buf.push_str(&text[last..]);
        Some((buf, spans))
    }
}

/// Detectors whose mode and count [`Engine::apply`] keeps in arrays (the built-ins and a few
/// custom ones); the others are looked up by name at each value.
const DETECTOR_SLOTS: usize = 64;

/// The last `c` in `lo < c <= hi` on a char boundary, strictly inside none of the `reach`
/// spans, and not between two word bytes (see [`Engine::cut_head`]).
fn free_cut(text: &str, reach: &mut [(usize, usize)], lo: usize, hi: usize) -> Option<usize> {
    let b = text.as_bytes();
    // Blocked cut points, as inclusive ranges, merged. (`reach` is a few sorted runs, which
    // the stable sort merges; the unstable one sorted them afresh, 2.5% of dense text
    // through the agent.)
    reach.sort();
    let mut blocked: Vec<(usize, usize)> = Vec::with_capacity(reach.len());
    for &(a, z) in reach.iter().filter(|r| r.1 > r.0 + 1) {
        match blocked.last_mut() {
            Some(l) if a < l.1 => l.1 = l.1.max(z - 1),
            _ => blocked.push((a + 1, z - 1)),
        }
    }
    let mut c = hi;
    let mut j = blocked.len();
    while c > lo {
        while j > 0 && blocked[j - 1].0 > c {
            j -= 1;
        }
        if let Some(&(a, z)) = j.checked_sub(1).and_then(|i| blocked.get(i)) {
            if z >= c {
                c = a - 1;
                continue;
            }
        }
        let word = |i: usize| b.get(i).is_some_and(|&x| validate::is_word(x));
        if text.is_char_boundary(c) && !(word(c - 1) && word(c)) {
            return Some(c);
        }
        c -= 1;
    }
    None
}

/// `dateOfBirth` -> `date Of Birth`, `passport_no` -> `passport no`: the words of a field name
/// as the context words are written.
/// The bytes a match of `hir` can hold (look-around holds none).
fn held_bytes(hir: &regex_syntax::hir::Hir) -> [bool; 256] {
    use regex_syntax::hir::{Class, HirKind};
    let mut held = [false; 256];
    let mut todo = vec![hir];
    while let Some(h) = todo.pop() {
        match h.kind() {
            HirKind::Empty | HirKind::Look(_) => {}
            HirKind::Literal(lit) => {
                for &b in lit.0.iter() {
                    held[usize::from(b)] = true;
                }
            }
            HirKind::Class(Class::Bytes(c)) => {
                for r in c.iter() {
                    held[usize::from(r.start())..=usize::from(r.end())].fill(true);
                }
            }
            HirKind::Class(Class::Unicode(c)) => {
                for r in c.iter() {
                    let (lo, hi) = (u32::from(r.start()), u32::from(r.end()));
                    if lo < 0x80 {
                        held[lo as usize..=hi.min(0x7f) as usize].fill(true);
                    }
                    if hi >= 0x80 {
                        // Any byte of a multi-byte char.
                        held[0x80..].fill(true);
                    }
                }
            }
            HirKind::Repetition(r) => todo.push(&r.sub),
            HirKind::Capture(c) => todo.push(&c.sub),
            HirKind::Concat(hs) | HirKind::Alternation(hs) => todo.extend(hs.iter()),
        }
    }
    held
}

fn split_label(label: &str) -> String {
    let mut out = String::with_capacity(label.len() + 4);
    let mut prev: Option<char> = None;
    for c in label.chars() {
        if c == '_' {
            out.push(' ');
        } else {
            if c.is_uppercase() && prev.is_some_and(|p| p.is_lowercase() || p.is_ascii_digit()) {
                out.push(' ');
            }
            out.push(c);
        }
        prev = Some(c);
    }
    out
}

/// Follows `dfa` from `sid`, a start state anchored at `from`, over `hay[from..end]` until
/// it dies, and calls `found` with each pattern that matches from `from` and where that
/// match ends, in the order an overlapping search reports them (by end, then pattern), until
/// `found` returns false. As in regex-automata's searches, a match is reported one byte late
/// (reading `hay[j]` reports those ending at `j`), and the byte at `end` (or the end of the
/// text) decides those ending at `end`. Stops at a cache error or a quit state (neither
/// occurs with these automata), as an overlapping search would stop with an error. Saves
/// the set-up of one overlapping search per match, the main cost on short anchored runs (the
/// alternatives at a candidate's start).
fn anchored_matches(
    dfa: &hybrid::dfa::DFA,
    cache: &mut hybrid::dfa::Cache,
    hay: &[u8],
    (from, end): (usize, usize),
    mut sid: LazyStateID,
    mut found: impl FnMut(PatternID, usize) -> bool,
) {
    let mut j = from;
    loop {
        let next = match hay.get(j) {
            Some(&b) => dfa.next_state(cache, sid, b),
            None => dfa.next_eoi_state(cache, sid),
        };
        let Ok(next) = next else { return };
        if next.is_match() {
            for k in 0..dfa.match_len(cache, next) {
                if !found(dfa.match_pattern(cache, next, k), j) {
                    return;
                }
            }
        }
        if j >= end || next.is_dead() || next.is_quit() {
            return;
        }
        sid = next;
        j += 1;
    }
}

/// Context words in a field name, with word boundaries; a plural `s` after a word still ends
/// it (`passports`, `phones`).
fn label_words(
    ctx: &hybrid::dfa::DFA,
    cache: &mut hybrid::dfa::Cache,
    words: &[Word],
    label: &str,
    out: &mut Vec<u32>,
) {
    let label = label.as_bytes();
    let word_byte = |i: usize| {
        label
            .get(i)
            .is_some_and(|&b| b.is_ascii_alphanumeric() || b >= 0x80)
    };
    let mut state = hybrid::dfa::OverlappingState::start();
    let input = Input::new(label);
    while ctx
        .try_search_overlapping_fwd(cache, &input, &mut state)
        .is_ok()
    {
        let Some(hm) = state.get_match() else { break };
        let w = hm.pattern().as_u32();
        let Some(word) = words.get(w as usize) else {
            break;
        };
        let end = hm.offset();
        let Some(start) = end.checked_sub(word.len) else {
            continue;
        };
        let before_ok = start == 0 || !word_byte(start - 1);
        let after_ok = !word.end_boundary
            || !word_byte(end)
            || (matches!(label.get(end), Some(b's' | b'S')) && !word_byte(end + 1));
        if before_ok && after_ok {
            out.push(w);
        }
    }
}

fn entity_of(detectors: &[Detector], dets: &[u32]) -> String {
    dets.first()
        .and_then(|&d| detectors.get(d as usize))
        .map_or_else(String::new, |d| d.entity.to_string())
}

impl Engine {
    /// The pseudonyms `value` would get with this engine's key: one per entity type (the value
    /// normalised the way that type's values are), plus those of the values the detectors
    /// find in it. The audit log's data-subject search matches these (`ENTITY:hex`).
    pub fn pseudonyms_of(&self, value: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .inner
            .detectors
            .iter()
            .map(|d| {
                format!(
                    "{}:{}",
                    d.entity,
                    self.inner
                        .key
                        .pseudonym(&d.entity, &d.check.normalize(value))
                )
            })
            .collect();
        let everything = MaskView {
            default_mask: MaskMode::Pseudonymize,
            ..Default::default()
        };
        let (_, ev) = self.redact_cow(value, &everything);
        out.extend(
            ev.findings
                .into_iter()
                .map(|f| format!("{}:{}", f.entity, f.pseudonym)),
        );
        out.sort();
        out.dedup();
        out
    }
}

/// Where the engine's patterns may match in one text, found by one interleaved pass over it
/// (see `lanes`): for a caller that redacts many short pieces of that text one by one (the
/// JSON rewriter's string values), to pass over the pieces in which nothing can match without
/// searching each of them again. See [`Engine::sieve`].
#[derive(Debug)]
pub struct LaneSieve {
    candidates: lanes::Candidates,
    /// The e-mail pattern is not in the union automaton: it is searched from each `@` (see
    /// `side`).
    at_sign: bool,
    /// Nor are the names of fields read whole: searched from each `:`, `=` and `>` that may
    /// separate one from its value (see `side::Labels`).
    label_separator: bool,
    /// The engine, when it reads some fields whole: then so are the cells of a CSV table's
    /// columns named for one (see `Engine::labelled_cells`).
    fields: Option<Engine>,
}

impl Sieve for LaneSieve {
    /// `false` also when either neighbour of the piece is a word byte (see [`Engine::sieve`]).
    ///
    /// Why. A match of the piece alone is a match of `text` at the same place: the patterns
    /// look around only with `\b`, for which the piece's ends read as non-word bytes, as its
    /// neighbours in `text` are. The candidates tell where no match of `text` starts.
    fn clean(&mut self, text: &str, start: usize, end: usize) -> bool {
        let hay = text.as_bytes();
        let non_word = |i: Option<usize>| {
            i.and_then(|i| hay.get(i))
                .is_none_or(|&b| !validate::is_word(b))
        };
        if start > end || end > hay.len() || !non_word(start.checked_sub(1)) || !non_word(Some(end))
        {
            return false;
        }
        if self.at_sign && side::next_at(&hay[start..end]).is_some() {
            return false;
        }
        if self.label_separator && side::may_hold_label(&hay[start..end]) {
            return false;
        }
        // A table whose column names a field read whole: its cells are, candidates or not.
        if let Some(e) = &self.fields {
            let names_field = |n: &str| e.inner.whole_kind(n).is_some();
            if columns::Columns::names_a(&text[start..end], names_field) {
                return false;
            }
        }
        self.candidates.none_start_in(start, end)
    }
}

impl Engine {
    /// A [`LaneSieve`] over `text`: one interleaved pass of the union automaton (the lanes,
    /// which find candidates at about a byte per cycle), and a search for `@` per piece asked
    /// about. `None` when it would not pay or cannot be sound: a text too short for the lanes,
    /// candidates too dense (the pieces then hold values anyway), the lanes off, or a custom
    /// pattern looking around other than with `\b`.
    pub fn sieve(&self, text: &str) -> Option<LaneSieve> {
        let inner = &*self.inner;
        if self.lanes == Lanes::Off || !inner.word_boundary_only {
            return None;
        }
        let mut caches = inner.caches.get();
        let found = lanes::find(
            inner.re.forward(),
            caches.re.forward_mut(),
            text,
            (0, text.len(), text.len()),
            inner.re_max_len,
            true,
        );
        match found {
            Some(LaneSearch::Sparse(candidates)) => Some(LaneSieve {
                candidates,
                at_sign: inner.side.is_some(),
                label_separator: inner.labels.is_some(),
                fields: inner.reads_whole().then(|| self.clone()),
            }),
            _ => None,
        }
    }
}

impl TextRedactor for Engine {
    fn max_match_len(&self) -> usize {
        self.inner.max_len
    }
    fn masks_numbers(&self) -> bool {
        self.inner.numbers
    }
    fn masks_keys(&self) -> bool {
        self.inner.keys
    }
    fn masks_whole(&self, label: &str) -> bool {
        self.inner.whole_kind(label).is_some()
    }

    fn context_reach(&self) -> usize {
        Engine::context_reach(self)
    }

    fn sieve(&self, text: &str) -> Option<Box<dyn Sieve>> {
        Engine::sieve(self, text).map(|s| Box::new(s) as Box<dyn Sieve>)
    }

    fn redact(&self, text: &str) -> (String, Vec<Finding>) {
        let (out, ev) = self.redact_cow(text, &self.inner.view);
        (out.into_owned(), ev.findings)
    }

    fn redact_labelled<'t>(
        &self,
        label: Option<&str>,
        text: &'t str,
    ) -> (Cow<'t, str>, Vec<Finding>) {
        self.redact_field_findings(label.unwrap_or(""), text, &self.inner.view)
    }

    fn redact_head<'t>(
        &self,
        label: Option<&str>,
        text: &'t str,
        holdback: usize,
    ) -> Option<Head<'t>> {
        self.cut_head(label.unwrap_or(""), text, holdback)
            .or_else(|| super::json::verified_head(self, label, text, holdback))
    }
}

/// A word boundary at the edge of a pattern also holds where `_` joins the value to what is
/// around it: Markdown emphasis (`_4111 1111 1111 1111_`, `__+49 30 1234567__`) and names
/// glued with `_` (`card_4111111111111111`, `ssn_078-05-1120`). The ASCII `\b` counts `_` as
/// a word byte and regex-automata has no other look-behind, so each `\b` a match can begin
/// with becomes `(?:\b|_)` (and each one it can end with likewise): the match then holds the
/// `_`, which [`Edges::trim`] takes off again before any validator reads the value. Only
/// where the pattern itself cannot begin (end) with `_`: a `_` there is then always the
/// boundary's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Edges {
    lead: bool,
    trail: bool,
}

impl Edges {
    /// `s..e` without the `_` the edges took in.
    fn trim(self, hay: &[u8], s: usize, e: usize) -> (usize, usize) {
        let s = s + usize::from(self.lead && s < e && hay[s] == b'_');
        let e = e - usize::from(self.trail && s < e && hay[e - 1] == b'_');
        (s, e)
    }
}

/// `hir` with its edge word boundaries widened (see [`Edges`]), and which edges were.
fn widen_edges(hir: &regex_syntax::hir::Hir) -> (regex_syntax::hir::Hir, Edges) {
    let lead = !can_hold_at(hir, b'_', true);
    let trail = !can_hold_at(hir, b'_', false);
    let mut out = hir.clone();
    let mut edges = Edges::default();
    if lead {
        if let Some(h) = widen(&out, true) {
            out = h;
            edges.lead = true;
        }
    }
    if trail {
        if let Some(h) = widen(&out, false) {
            out = h;
            edges.trail = true;
        }
    }
    (out, edges)
}

/// `hir` with each `\b` at its start (`first`) or end replaced by `(?:\b|_)`; `None` when
/// it has none there.
fn widen(hir: &regex_syntax::hir::Hir, first: bool) -> Option<regex_syntax::hir::Hir> {
    use regex_syntax::hir::{Capture, Hir, HirKind, Look};
    match hir.kind() {
        HirKind::Look(Look::WordAscii) => Some(Hir::alternation(vec![
            Hir::look(Look::WordAscii),
            Hir::literal(*b"_"),
        ])),
        HirKind::Concat(hs) if !hs.is_empty() => {
            let i = if first { 0 } else { hs.len() - 1 };
            let h = widen(&hs[i], first)?;
            let mut hs = hs.clone();
            hs[i] = h;
            Some(Hir::concat(hs))
        }
        HirKind::Alternation(hs) => {
            let widened: Vec<Option<Hir>> = hs.iter().map(|h| widen(h, first)).collect();
            if widened.iter().all(Option::is_none) {
                return None;
            }
            let hs = widened
                .into_iter()
                .zip(hs)
                .map(|(w, h)| w.unwrap_or_else(|| h.clone()))
                .collect();
            Some(Hir::alternation(hs))
        }
        HirKind::Capture(c) => Some(Hir::capture(Capture {
            index: c.index,
            name: c.name.clone(),
            sub: Box::new(widen(&c.sub, first)?),
        })),
        _ => None,
    }
}

/// Whether a match of `hir` can begin (`first`) or end with byte `b` (conservative: `true`
/// when unsure).
fn can_hold_at(hir: &regex_syntax::hir::Hir, b: u8, first: bool) -> bool {
    use regex_syntax::hir::{Class, HirKind};
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => false,
        HirKind::Literal(lit) => {
            let edge = if first { lit.0.first() } else { lit.0.last() };
            edge.is_some_and(|&x| x == b)
        }
        HirKind::Class(Class::Bytes(c)) => c.iter().any(|r| (r.start()..=r.end()).contains(&b)),
        HirKind::Class(Class::Unicode(c)) => c
            .iter()
            .any(|r| (u32::from(r.start())..=u32::from(r.end())).contains(&u32::from(b))),
        HirKind::Repetition(r) => can_hold_at(&r.sub, b, first),
        HirKind::Capture(c) => can_hold_at(&c.sub, b, first),
        HirKind::Alternation(hs) => hs.iter().any(|h| can_hold_at(h, b, first)),
        HirKind::Concat(hs) => {
            // The elements up to the first that cannot match empty.
            let edge = |h: &regex_syntax::hir::Hir| {
                let holds = can_hold_at(h, b, first);
                (holds, holds || h.properties().minimum_len() != Some(0))
            };
            let decided = if first {
                hs.iter().map(edge).find(|&(_, stop)| stop)
            } else {
                hs.iter().rev().map(edge).find(|&(_, stop)| stop)
            };
            decided.is_some_and(|(holds, _)| holds)
        }
    }
}

/// `hir` as regex-syntax prints it back to what it parses to: a repetition of a repetition
/// (`(?:[A-Z0-9]{3})?`) prints as `[A-Z0-9]{3}?`, which parses as a lazy `{3}`; here the
/// inner one is in a group. (Tested: every widened built-in pattern parses back to itself.)
fn printable(hir: &regex_syntax::hir::Hir) -> regex_syntax::hir::Hir {
    use regex_syntax::hir::{Capture, Hir, HirKind, Repetition};
    match hir.kind() {
        HirKind::Repetition(r) => {
            let sub = printable(&r.sub);
            let sub = if matches!(sub.kind(), HirKind::Repetition(_)) {
                Hir::capture(Capture {
                    index: 1,
                    name: None,
                    sub: Box::new(sub),
                })
            } else {
                sub
            };
            Hir::repetition(Repetition {
                sub: Box::new(sub),
                ..r.clone()
            })
        }
        HirKind::Capture(c) => Hir::capture(Capture {
            sub: Box::new(printable(&c.sub)),
            ..c.clone()
        }),
        HirKind::Concat(hs) => Hir::concat(hs.iter().map(printable).collect()),
        HirKind::Alternation(hs) => Hir::alternation(hs.iter().map(printable).collect()),
        _ => hir.clone(),
    }
}
