//! Streaming JSON-aware redaction (see the module docs of `redact`).
//!
//! [`JsonRedactor`] rewrites one JSON document as it streams through: structure bytes
//! (whitespace, brackets, commas, colons), numbers and literals are copied through unchanged as
//! soon as they are read; every string *value* (object keys only when
//! [`JsonRedactor::with_key_redaction`] is on) is decoded (escapes, `\u` surrogate pairs),
//! handed to a [`TextRedactor`], and written back as a valid JSON string. A string the redactor
//! leaves unchanged is written back byte for byte as it came (same escapes), so a clean
//! document passes through byte-exact.
//!
//! Numbers too are redacted when the redactor asks for it ([`TextRedactor::masks_numbers`],
//! `[services.redact] numbers = true`): each number (up to 64 bytes) is held until
//! it ends, redacted under its label as the text it is written as, and written as its mask (a
//! JSON string) when anything in it is masked, as it came otherwise.
//!
//! Chunk boundaries may fall anywhere (inside strings, escapes, surrogate pairs, multi-byte
//! UTF-8, numbers, literals); the output does not depend on them.
//!
//! # Keys as labels
//! Each string value is redacted with [`TextRedactor::redact_labelled`] under the key of its
//! member (decoded, at most [`MAX_LABEL`] bytes), or, inside an array, the key of the member
//! holding the array, so `{"bsn": "111222333"}` or `{"passports": ["X1234567"]}` get the
//! context that their bare values lack. Only the current key of each open object is kept
//! (at most `max_depth * MAX_LABEL` bytes). [`redact_value`] labels values the same way.
//!
//! # Documents carried in a string
//! A tool that returns a record sends it as `structuredContent` and serialised in the text of
//! its content; resources and arguments carry JSON in strings too. Read as text, such a string
//! loses what its keys say (`{\"phone\": \"4915112345678\"}` is a phone number under its key,
//! a bare number in text). So a string value read whole whose first and last characters other
//! than whitespace are `{` and `}` or `[` and `]` is first redacted as the document it holds,
//! by a rewriter like this one a level deeper (down to [`MAX_EMBEDDED`] levels), and what that
//! leaves is then redacted as text, as every value is (keys, numbers and words across members
//! stay covered). A document carried in a string may be a sequence of documents, objects or
//! arrays one after the other (JSON Lines: an export of records, one per line), each read as
//! one, when the string fits in one window ([`JsonLimits::window`]): a longer export streams
//! through as text, in segments, rather than be held up to the document window. A string
//! that does not parse as documents is only redacted as text. Such
//! a value is buffered whole up to [`JsonLimits::document_window`] (decided by its first
//! character other than whitespace, so whatever the chunking); a longer one is redacted as
//! text in segments, as any long string. [`redact_value`] reads documents in strings the same
//! way (written back compact when anything in them was masked).
//!
//! # Strings that hold nothing
//! Most string values of a tool result are short and hold nothing personal (states, names of
//! labels, hashes, URLs). Redacting each on its own costs a search set up per string. So at the
//! first whole string value of a chunk, the rewriter asks the redactor for a [`Sieve`] over the
//! chunk's text from there to its last quote ([`TextRedactor::sieve`]; the engine's is one
//! interleaved pass of its automaton over that text), and copies the string values the sieve
//! calls clean as they are, without calling the redactor. The output is the same: a sieve
//! calls a piece clean only when redacting it alone would find nothing (property-tested against
//! the rewriter without it).
//!
//! # Bounded memory
//! Only the string being read is buffered. A string longer than the window
//! ([`JsonLimits::window`]) is processed in segments: the redactor chooses a cut point `c` in
//! the buffered window `W`, after its middle and (normally) at least
//! `holdback = max_match_len + context` bytes before its end (`context`: the limits' or the
//! redactor's own [`TextRedactor::context_reach`], the larger), such that
//! `redact(W) == redact(W[..c]) ++ redact(W[c..])`, i.e. no match (nor the context of one)
//! straddles the cut ([`TextRedactor::redact_head`]). Then `redact(W[..c])` is emitted and `W[c..]` is carried
//! into the next window, so a match spanning the window boundary is still seen whole. Any
//! redactor can do this by verification ([`verified_head`]: a few cut points, each checked by
//! redacting the window, the head and the tail); the engine does it in one pass, from what
//! each of its decisions read (`Engine::cut_head`), and then needs only a short tail. If no
//! cut point is consistent, the window grows, up to [`JsonLimits::max_window`]; beyond that
//! the document is refused ([`JsonErrorKind::SegmentationFailed`]). A value that opens a
//! document takes the larger document window (at most half of `max_window`) before its first
//! segment; read whole, its document's output is held once more beside it. Memory is
//! therefore O(max_window), independent of the size of the document.
//!
//! # Errors
//! Invalid JSON (or a string that cannot be segmented safely) is an error carrying the byte
//! offset. The caller must then stop forwarding and abort the response. Everything emitted
//! before the error is safe to have forwarded: structure, numbers and literals (never redacted
//! by design), and string content only after redaction. A failing `push` leaves `out` as it was
//! before the call; the redactor then refuses further input until [`JsonRedactor::reset`].

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use super::{Finding, Head, Sieve, TextRedactor};

// Explicit path: the same whichever way this file is included (the fuzz target includes it
// with `#[path]`).
#[cfg(test)]
#[path = "json/tests.rs"]
mod tests;

/// The longest key passed as a label (bytes; longer keys are cut at a char boundary).
pub const MAX_LABEL: usize = 128;

/// The label a key gives the values under it: `None` for the empty key, long keys cut to
/// [`MAX_LABEL`] bytes.
pub fn key_label(key: &str) -> Option<&str> {
    let k = key
        .get(..floor_boundary(key, MAX_LABEL))
        .unwrap_or_default();
    (!k.is_empty()).then_some(k)
}

/// Findings (pseudonyms) kept by default per document, and per exchange record: the first
/// ones in document order; the counts per entity type stay complete. Each kept finding costs
/// about a hundred bytes for as long as the response streams, so this bounds what a bulk
/// answer (an export of 100,000 customers) holds beside the redaction window.
pub const MAX_FINDINGS: usize = 2_000;

/// Sizes and limits of a [`JsonRedactor`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonLimits {
    /// Raw bytes of one string buffered before it is processed in segments. Raised to at least
    /// four hold-backs (`max_match_len + context`).
    pub window: usize,
    /// Hard cap on the buffered raw bytes of one string while no safe cut point is found;
    /// beyond it the document is refused. Raised to at least `window`.
    pub max_window: usize,
    /// Raw bytes of a string value that starts as a JSON document (`{` or `[`) buffered
    /// before it is processed in segments, so that a document up to this size is read as one
    /// (see the module docs). Kept between `window` and half of `max_window`.
    pub document_window: usize,
    /// Bytes of context held back in addition to `max_match_len` at a segment boundary (for
    /// detectors that look at words around a match).
    pub context: usize,
    /// Deepest nesting of arrays and objects accepted.
    pub max_depth: usize,
    /// Findings kept in the [`Summary`]; further ones are only counted.
    pub max_findings: usize,
}

impl Default for JsonLimits {
    fn default() -> Self {
        Self {
            window: 128 << 10,
            max_window: 4 << 20,
            document_window: 1 << 20,
            context: 256,
            max_depth: 1024,
            max_findings: MAX_FINDINGS,
        }
    }
}

/// Why a document was refused, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{kind} at byte {offset}")]
pub struct JsonError {
    /// Offset of the offending byte from the start of the document (approximate for invalid
    /// UTF-8: the start of the run that holds it).
    pub offset: u64,
    pub kind: JsonErrorKind,
}

/// The kinds of [`JsonError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JsonErrorKind {
    #[error("invalid JSON: unexpected byte 0x{0:02x}")]
    UnexpectedByte(u8),
    #[error("invalid JSON: unexpected end of input")]
    UnexpectedEof,
    #[error("invalid JSON: trailing data after the value")]
    TrailingData,
    #[error("invalid JSON: invalid UTF-8 in a string")]
    InvalidUtf8,
    #[error("invalid JSON: unescaped control character in a string")]
    ControlChar,
    #[error("invalid JSON: invalid escape sequence")]
    InvalidEscape,
    #[error("invalid JSON: unpaired UTF-16 surrogate in a \\u escape")]
    LoneSurrogate,
    #[error("JSON nested deeper than {0}")]
    TooDeep(usize),
    #[error("no safe segment boundary found within {0} bytes of a string")]
    SegmentationFailed(usize),
    #[error("the redactor failed or finished before; reset it first")]
    Unusable,
    #[error("internal error of the JSON redactor")]
    Internal,
}

/// What was masked in one document (or, for [`SseRedactor`], in all events so far).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Number of findings per entity type.
    pub counts: BTreeMap<String, u64>,
    /// The findings (pseudonyms, never values), in document order, at most
    /// [`JsonLimits::max_findings`].
    pub findings: Vec<Finding>,
    /// Findings counted but not kept in `findings`.
    pub findings_dropped: u64,
    /// Strings (values, or keys when redacted) whose text was changed.
    pub strings_redacted: u64,
}

impl Summary {
    /// Total findings, kept or not.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Counts one more value of `entity`.
    pub fn tally(&mut self, entity: &str) {
        add_count(&mut self.counts, entity, 1);
    }

    /// Counts `findings` and keeps them, up to `max_findings` in all.
    pub fn record(&mut self, findings: Vec<Finding>, max_findings: usize) {
        // Counted by name first (the first 8 names), and added to the map once per name:
        // findings share their detector's name, so a pointer comparison finds its count (a
        // map lookup per finding compared names, 3% of dense text through the agent). The
        // same name held twice only makes two entries here, added up in the map.
        let mut names: [Option<(&Arc<str>, u64)>; 8] = [None; 8];
        for f in &findings {
            let slot = names
                .iter_mut()
                .find(|s| s.is_none_or(|(e, _)| Arc::ptr_eq(e, &f.entity)));
            match slot {
                Some(Some((_, n))) => *n += 1,
                Some(free) => *free = Some((&f.entity, 1)),
                None => add_count(&mut self.counts, &f.entity, 1),
            }
        }
        for (entity, n) in names.into_iter().flatten() {
            add_count(&mut self.counts, entity, n);
        }
        for f in findings {
            if self.findings.len() < max_findings {
                self.findings.push(f);
            } else {
                self.findings_dropped += 1;
            }
        }
    }

    /// Adds `other` to this summary, keeping at most `max_findings` findings.
    pub fn merge(&mut self, other: Summary, max_findings: usize) {
        for (k, v) in other.counts {
            *self.counts.entry(k).or_insert(0) += v;
        }
        let room = max_findings.saturating_sub(self.findings.len());
        let kept = other.findings.len().min(room);
        self.findings_dropped += (other.findings.len() - kept) as u64 + other.findings_dropped;
        self.findings.extend(other.findings.into_iter().take(kept));
        self.strings_redacted += other.strings_redacted;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Container {
    Array,
    Object,
}

/// An open array or object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Frame {
    c: Container,
    /// Where the key of the enclosing object began in `keys` before this one was opened.
    outer_label: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Esc {
    None,
    Backslash,
    Hex { n: u8, acc: u16 },
    NeedBackslash { hi: u16 },
    NeedU { hi: u16 },
    LowHex { hi: u16, n: u8, acc: u16 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Str {
    key: bool,
    /// Buffered, decoded and redacted (values; keys with key redaction); else streamed as is.
    buffered: bool,
    esc: Esc,
    /// The raw bytes of the escape being read (at most `\uXXXX\uXXXX`).
    esc_buf: [u8; 12],
    esc_len: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Num {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    Exp,
    ExpSign,
    ExpDigits,
}

impl Num {
    fn next(self, b: u8) -> Option<Num> {
        use Num::*;
        match (self, b) {
            (Minus, b'0') => Some(Zero),
            (Minus, b'1'..=b'9') => Some(Int),
            (Int, b'0'..=b'9') => Some(Int),
            (Zero | Int, b'.') => Some(Dot),
            (Dot | Frac, b'0'..=b'9') => Some(Frac),
            (Zero | Int | Frac, b'e' | b'E') => Some(Exp),
            (Exp, b'+' | b'-') => Some(ExpSign),
            (Exp | ExpSign | ExpDigits, b'0'..=b'9') => Some(ExpDigits),
            _ => None,
        }
    }

    fn complete(self) -> bool {
        matches!(self, Num::Zero | Num::Int | Num::Frac | Num::ExpDigits)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A value is expected; `]` too when `allow_close` (right after `[`).
    Value {
        allow_close: bool,
    },
    /// An object key is expected; `}` too when `allow_close` (right after `{`).
    Key {
        allow_close: bool,
    },
    Colon,
    /// After a value inside a container: `,` or the closing bracket.
    AfterValue,
    Str(Str),
    Number(Num),
    Literal {
        lit: &'static [u8],
        idx: usize,
    },
    /// The top-level value is complete: only whitespace may follow.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Active,
    Failed,
    Finished,
}

/// A UTF-8 sequence split by a chunk (or segment) boundary.
#[derive(Debug, Clone, Copy, Default)]
struct Utf8Pending {
    buf: [u8; 4],
    len: usize,
}

/// Streaming, JSON-aware redactor of one document; see the module docs.
pub struct JsonRedactor {
    redactor: Arc<dyn TextRedactor>,
    limits: JsonLimits,
    holdback: usize,
    redact_keys: bool,
    status: Status,
    state: State,
    stack: Vec<Frame>,
    /// The current key (decoded, at most [`MAX_LABEL`] bytes) of each open object, outermost
    /// first.
    keys: String,
    /// Where the current key of the innermost open object starts in `keys`.
    label_at: Option<usize>,
    /// The key being read did not fit in [`MAX_LABEL`] bytes: the rest of it is dropped.
    key_full: bool,
    /// Bytes of input consumed before the current chunk.
    offset: u64,
    utf8: Utf8Pending,
    /// Decoded text of the buffered part of the current string.
    decoded: String,
    /// Raw (escaped) bytes of the same part, for byte-exact passthrough.
    raw: Vec<u8>,
    /// Raw length at which the current string is processed in a segment.
    threshold: usize,
    cur_changed: bool,
    /// A head of the current string was already emitted: what remains does not start the
    /// value, so it is redacted without the label.
    seg_emitted: bool,
    summary: Summary,
    peak_buffered: usize,
    /// The current chunk's sieve: which of its whole strings need no redaction.
    sieve: ChunkSieve,
    /// Numbers are redacted too ([`TextRedactor::masks_numbers`]): the current one is held
    /// here until it ends (at most [`MAX_NUMBER`] bytes; a longer one passes as it is).
    mask_numbers: bool,
    number: String,
    /// The current number outgrew [`MAX_NUMBER`]: the rest of it is passed on.
    number_passed: bool,
    /// How many documents this one is inside (as a string value of each, see
    /// [`MAX_EMBEDDED`]): 0 for a document of its own.
    level: u8,
    /// How much of `decoded` is known to be leading whitespace, for a value that may open a
    /// document (not a key, not too deep); `None` once its first other character was seen,
    /// or for any other string.
    lead_ws: Option<usize>,
    /// The buffered value opens a JSON document that may still be one: it is then buffered
    /// up to the document window, checked at each multiple of the window.
    doc: Option<DocScan>,
}

/// What is known of a string value that opens a JSON document, read in its decoded text: the
/// structure outside of its strings. Enough to tell early that it is *not* a document or a
/// sequence of them (`[INFO] ...` log lines, `{...} and more`), not that it is.
#[derive(Debug, Clone, Copy, Default)]
struct DocScan {
    /// Decoded bytes read.
    at: usize,
    depth: usize,
    in_str: bool,
    esc: bool,
    /// The outermost value has closed.
    closed: bool,
    /// Another document followed one (JSON Lines).
    sequence: bool,
    /// Not one document.
    broken: bool,
}

impl DocScan {
    fn read(&mut self, text: &str) {
        let Some(new) = text.as_bytes().get(self.at..) else {
            return;
        };
        for &b in new {
            if self.broken {
                break;
            }
            if self.in_str {
                match b {
                    _ if self.esc => self.esc = false,
                    b'\\' => self.esc = true,
                    b'"' => self.in_str = false,
                    // A raw control character ends any JSON string.
                    0..0x20 => self.broken = true,
                    _ => {}
                }
                continue;
            }
            match b {
                _ if is_ws(b) => {}
                // (Another document may follow one: JSON Lines.)
                b'{' | b'[' if self.closed => {
                    self.closed = false;
                    self.sequence = true;
                    self.depth = 1;
                }
                _ if self.closed => self.broken = true,
                b'"' => self.in_str = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => match self.depth.checked_sub(1) {
                    Some(d) => {
                        self.depth = d;
                        self.closed = d == 0;
                    }
                    None => self.broken = true,
                },
                _ => {}
            }
        }
        self.at = text.len();
    }
}

/// The longest JSON number redacted (when numbers are): longer ones are no identifier.
const MAX_NUMBER: usize = 64;

/// How many levels deep a JSON document carried in a string value (of a document carried in a
/// string value...) is still redacted as JSON (see the module docs): a tool result's text
/// holding a record is one level, a record holding an encoded payload two.
pub const MAX_EMBEDDED: u8 = 3;

/// Whether a string value may hold a JSON document worth parsing: an object or an array, i.e.
/// its first and last bytes other than JSON whitespace are `{` and `}`, or `[` and `]`.
pub fn looks_like_json(text: &str) -> bool {
    let b = text.as_bytes();
    let first = b.iter().position(|&c| !is_ws(c));
    let last = b.iter().rposition(|&c| !is_ws(c));
    matches!(
        (first.map(|i| b[i]), last.map(|i| b[i])),
        (Some(b'{'), Some(b'}')) | (Some(b'['), Some(b']'))
    ) && first < last
}

/// The sieve of the chunk being read ([`TextRedactor::sieve`]), asked for at its first whole
/// string value and used for the values after it.
enum ChunkSieve {
    /// Not asked for yet in this chunk.
    Unasked,
    /// The redactor has none for this chunk.
    Absent,
    /// Over the chunk's text `base..end` (from the first string value's start).
    Ready {
        base: usize,
        end: usize,
        sieve: Box<dyn Sieve>,
    },
}

impl std::fmt::Debug for JsonRedactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonRedactor")
            .field("limits", &self.limits)
            .field("holdback", &self.holdback)
            .field("redact_keys", &self.redact_keys)
            .field("status", &self.status)
            .field("offset", &self.offset)
            .field("buffered", &self.buffered())
            .finish_non_exhaustive()
    }
}

/// JSON whitespace (RFC 8259 `ws`).
pub(crate) fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn hex_val(b: u8) -> Option<u16> {
    match b {
        b'0'..=b'9' => Some(u16::from(b - b'0')),
        b'a'..=b'f' => Some(u16::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u16::from(b - b'A' + 10)),
        _ => None,
    }
}

fn is_high(u: u16) -> bool {
    (0xD800..0xDC00).contains(&u)
}

fn is_low(u: u16) -> bool {
    (0xDC00..0xE000).contains(&u)
}

fn utf8_width(lead: u8) -> usize {
    match lead {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => 0,
    }
}

impl JsonRedactor {
    /// A redactor for one document (reusable after [`reset`](Self::reset)). Limits are
    /// normalised: `window >= 4 * (max_match_len + context)`, `max_window >= window`,
    /// `max_depth >= 1`.
    pub fn new(redactor: Arc<dyn TextRedactor>, limits: JsonLimits) -> Self {
        // The context the redactor reads before a value may be wider than the limits'.
        let holdback = redactor
            .max_match_len()
            .saturating_add(limits.context.max(redactor.context_reach()))
            .max(1);
        let window = limits.window.max(holdback.saturating_mul(4)).max(64);
        let redactor_numbers = redactor.masks_numbers();
        let redactor_keys = redactor.masks_keys();
        let max_window = limits.max_window.max(window);
        let limits = JsonLimits {
            window,
            max_window,
            document_window: limits.document_window.min(max_window / 2).max(window),
            max_depth: limits.max_depth.max(1),
            ..limits
        };
        Self {
            redactor,
            limits,
            holdback,
            redact_keys: redactor_keys,
            status: Status::Active,
            state: State::Value { allow_close: false },
            stack: Vec::new(),
            keys: String::new(),
            label_at: None,
            key_full: false,
            offset: 0,
            utf8: Utf8Pending::default(),
            decoded: String::new(),
            raw: Vec::new(),
            threshold: window,
            cur_changed: false,
            seg_emitted: false,
            summary: Summary::default(),
            peak_buffered: 0,
            sieve: ChunkSieve::Unasked,
            mask_numbers: redactor_numbers,
            number: String::new(),
            number_passed: false,
            level: 0,
            lead_ws: None,
            doc: None,
        }
    }

    /// Also redact object keys (off by default, unless the redactor asks for it
    /// ([`TextRedactor::masks_keys`]): keys pass through unchanged, streamed).
    pub fn with_key_redaction(mut self, on: bool) -> Self {
        self.redact_keys = on;
        self
    }

    /// The limits in force (after normalisation).
    pub fn limits(&self) -> &JsonLimits {
        &self.limits
    }

    /// Bytes held back at a segment boundary: `max_match_len` plus the larger of the limits'
    /// `context` and the redactor's `context_reach`.
    pub fn holdback(&self) -> usize {
        self.holdback
    }

    /// Bytes of the current string buffered now (decoded plus raw).
    pub fn buffered(&self) -> usize {
        self.decoded.len() + self.raw.len()
    }

    /// The most bytes ever buffered at once (decoded plus raw) since creation or reset.
    pub fn peak_buffered(&self) -> usize {
        self.peak_buffered
    }

    /// Bytes of input consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Findings so far (the full summary is returned by [`finish`](Self::finish)).
    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    /// Forgets the document (after success or failure) to start another, keeping allocations.
    pub fn reset(&mut self) {
        self.status = Status::Active;
        self.state = State::Value { allow_close: false };
        self.stack.clear();
        self.keys.clear();
        self.label_at = None;
        self.key_full = false;
        self.offset = 0;
        self.utf8 = Utf8Pending::default();
        self.clear_string();
        self.summary = Summary::default();
        self.peak_buffered = 0;
        self.sieve = ChunkSieve::Unasked;
        self.number.clear();
        self.number_passed = false;
    }

    fn clear_string(&mut self) {
        self.decoded.clear();
        self.raw.clear();
        self.threshold = self.limits.window;
        self.cur_changed = false;
        self.seg_emitted = false;
        self.lead_ws = None;
        self.doc = None;
    }

    /// Reads the next chunk of the document and appends to `out` everything that can be
    /// emitted. On error `out` is left as it was before the call, and the redactor refuses
    /// further input until [`reset`](Self::reset).
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), JsonError> {
        if self.status != Status::Active {
            return Err(JsonError {
                offset: self.offset,
                kind: JsonErrorKind::Unusable,
            });
        }
        let start = out.len();
        match self.run(chunk, out) {
            Ok(()) => {
                self.offset += chunk.len() as u64;
                Ok(())
            }
            Err(e) => {
                out.truncate(start);
                self.fail();
                Err(e)
            }
        }
    }

    /// Ends the document: checks it is complete and returns what was masked. Everything has
    /// already been emitted by [`push`](Self::push), so nothing is appended to `out` today;
    /// the parameter keeps callers correct should a future version hold output back.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<Summary, JsonError> {
        if self.status != Status::Active {
            return Err(JsonError {
                offset: self.offset,
                kind: JsonErrorKind::Unusable,
            });
        }
        let complete = match self.state {
            State::Done => true,
            State::Number(n) => n.complete() && self.stack.is_empty(),
            _ => false,
        };
        if !complete {
            self.fail();
            return Err(JsonError {
                offset: self.offset,
                kind: JsonErrorKind::UnexpectedEof,
            });
        }
        // A document that is one number ends with it.
        self.number_end(out);
        self.status = Status::Finished;
        Ok(std::mem::take(&mut self.summary))
    }

    fn fail(&mut self) {
        self.status = Status::Failed;
        self.number.clear();
        self.number_passed = false;
        self.clear_string();
        self.utf8 = Utf8Pending::default();
    }

    fn err(&self, i: usize, kind: JsonErrorKind) -> JsonError {
        JsonError {
            offset: self.offset + i as u64,
            kind,
        }
    }

    fn value_done(&mut self) {
        self.state = if self.stack.is_empty() {
            State::Done
        } else {
            State::AfterValue
        };
    }

    fn open(&mut self, c: Container, i: usize) -> Result<(), JsonError> {
        if self.stack.len() >= self.limits.max_depth {
            return Err(self.err(i, JsonErrorKind::TooDeep(self.limits.max_depth)));
        }
        self.stack.push(Frame {
            c,
            outer_label: self.label_at,
        });
        if c == Container::Object {
            self.label_at = Some(self.keys.len());
        }
        self.state = match c {
            Container::Array => State::Value { allow_close: true },
            Container::Object => State::Key { allow_close: true },
        };
        Ok(())
    }

    fn close(&mut self, c: Container, b: u8, i: usize) -> Result<(), JsonError> {
        let Some(frame) = self.stack.pop().filter(|f| f.c == c) else {
            return Err(self.err(i, JsonErrorKind::UnexpectedByte(b)));
        };
        if let (Container::Object, Some(at)) = (c, self.label_at) {
            self.keys.truncate(at);
        }
        self.label_at = frame.outer_label;
        self.value_done();
        Ok(())
    }

    fn start_string(&mut self, key: bool) {
        self.clear_string();
        if !key && self.level < MAX_EMBEDDED {
            self.lead_ws = Some(0);
        }
        if key {
            if let Some(at) = self.label_at {
                self.keys.truncate(at);
            }
            self.key_full = false;
        }
        self.state = State::Str(Str {
            key,
            buffered: !key || self.redact_keys,
            esc: Esc::None,
            esc_buf: [0; 12],
            esc_len: 0,
        });
    }

    fn run(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), JsonError> {
        // The chunk's text checked as UTF-8 once, from its first to its last char boundary:
        // strings inside need no check of their own (their quotes are ASCII, so char
        // boundaries). Anything else (characters split by the chunk's ends, invalid bytes)
        // takes the byte-wise path, which reports errors.
        let valid = valid_text(chunk);
        self.sieve = ChunkSieve::Unasked;
        let mut i = 0;
        while i < chunk.len() {
            let b = chunk[i];
            match self.state {
                State::Str(s) => {
                    i = self.string_bytes(s, chunk, i, out)?;
                    continue;
                }
                State::Number(Num::Int | Num::Frac | Num::ExpDigits) if b.is_ascii_digit() => {
                    // A run of digits at once (the state does not change).
                    let k = chunk[i..].iter().take_while(|c| c.is_ascii_digit()).count();
                    self.number_bytes(&chunk[i..i + k], out);
                    i += k;
                    continue;
                }
                State::Number(n) => {
                    match n.next(b) {
                        Some(next) => {
                            self.number_bytes(&[b], out);
                            self.state = State::Number(next);
                            i += 1;
                        }
                        None if n.complete() => {
                            self.number_end(out);
                            self.value_done(); // `b` is read again
                        }
                        None => return Err(self.err(i, JsonErrorKind::UnexpectedByte(b))),
                    }
                    continue;
                }
                State::Literal { lit, idx } => {
                    if lit.get(idx) != Some(&b) {
                        return Err(self.err(i, JsonErrorKind::UnexpectedByte(b)));
                    }
                    out.push(b);
                    if idx + 1 == lit.len() {
                        self.value_done();
                    } else {
                        self.state = State::Literal { lit, idx: idx + 1 };
                    }
                    i += 1;
                    continue;
                }
                _ => {}
            }
            if is_ws(b) {
                // Copy the whole run of whitespace at once.
                let n = chunk[i..].iter().take_while(|&&c| is_ws(c)).count();
                out.extend_from_slice(&chunk[i..i + n]);
                i += n;
                continue;
            }
            let unexpected = JsonErrorKind::UnexpectedByte(b);
            match self.state {
                State::Value { allow_close } => match b {
                    b'{' => self.open(Container::Object, i)?,
                    b'[' => self.open(Container::Array, i)?,
                    b']' if allow_close => self.close(Container::Array, b, i)?,
                    b'"' => {
                        out.push(b);
                        i = match self.whole_string(false, valid, chunk, i + 1, out) {
                            Some(next) => next,
                            None => {
                                self.start_string(false);
                                i + 1
                            }
                        };
                        continue;
                    }
                    b'-' => self.state = State::Number(Num::Minus),
                    b'0' => self.state = State::Number(Num::Zero),
                    b'1'..=b'9' => self.state = State::Number(Num::Int),
                    b't' => {
                        self.state = State::Literal {
                            lit: b"true",
                            idx: 1,
                        }
                    }
                    b'f' => {
                        self.state = State::Literal {
                            lit: b"false",
                            idx: 1,
                        }
                    }
                    b'n' => {
                        self.state = State::Literal {
                            lit: b"null",
                            idx: 1,
                        }
                    }
                    _ => return Err(self.err(i, unexpected)),
                },
                State::Key { allow_close } => match b {
                    b'"' => {
                        out.push(b);
                        i = match self.whole_string(true, valid, chunk, i + 1, out) {
                            Some(next) => next,
                            None => {
                                self.start_string(true);
                                i + 1
                            }
                        };
                        continue;
                    }
                    b'}' if allow_close => self.close(Container::Object, b, i)?,
                    _ => return Err(self.err(i, unexpected)),
                },
                State::Colon => match b {
                    b':' => self.state = State::Value { allow_close: false },
                    _ => return Err(self.err(i, unexpected)),
                },
                State::AfterValue => match (b, self.stack.last().map(|f| f.c)) {
                    (b',', Some(Container::Array)) => {
                        self.state = State::Value { allow_close: false }
                    }
                    (b',', Some(Container::Object)) => {
                        self.state = State::Key { allow_close: false }
                    }
                    (b']', _) => self.close(Container::Array, b, i)?,
                    (b'}', _) => self.close(Container::Object, b, i)?,
                    _ => return Err(self.err(i, unexpected)),
                },
                // A document carried in a string may be a sequence of them (JSON Lines):
                // the next one opens.
                State::Done if self.level > 0 && b == b'{' => self.open(Container::Object, i)?,
                State::Done if self.level > 0 && b == b'[' => self.open(Container::Array, i)?,
                State::Done => return Err(self.err(i, JsonErrorKind::TrailingData)),
                State::Str(_) | State::Number(_) | State::Literal { .. } => {
                    return Err(self.err(i, JsonErrorKind::Internal));
                }
            }
            if matches!(self.state, State::Number(_)) {
                // The first byte of a number.
                self.number_bytes(&[b], out);
            } else {
                out.push(b);
            }
            i += 1;
        }
        Ok(())
    }

    /// The common case at once: a string whose content starts at `chunk[i]` (just after its
    /// opening quote) and ends in this chunk, without escapes, shorter than a window (and not
    /// a key to redact). Redacted straight from the chunk, nothing copied but the output; the
    /// same result as the byte-wise path ([`start_string`], [`string_bytes`]). Returns the
    /// index after the closing quote, or `None` to take the byte-wise path (which also
    /// reports any error).
    ///
    /// [`start_string`]: Self::start_string
    /// [`string_bytes`]: Self::string_bytes
    fn whole_string(
        &mut self,
        key: bool,
        (off, valid): (usize, &str),
        chunk: &[u8],
        i: usize,
        out: &mut Vec<u8>,
    ) -> Option<usize> {
        if key && self.redact_keys {
            return None;
        }
        let rest = chunk.get(i..)?;
        let run = plain_run(rest);
        if rest.get(run) != Some(&b'"') || run >= self.limits.window {
            return None;
        }
        let k = i.checked_sub(off)?;
        let text = valid.get(k..k + run)?;
        if key {
            if let Some(at) = self.label_at {
                self.keys.truncate(at);
            }
            self.key_full = false;
            self.capture_key(text);
            out.extend_from_slice(text.as_bytes());
            self.state = State::Colon;
        } else if !self.masks_whole() && !self.embeds(text) && self.clean(valid, k, run) {
            // Nothing can match in it: as the redactor would return it.
            out.extend_from_slice(text.as_bytes());
            self.value_done();
        } else {
            let label = label_of(&self.keys, self.label_at);
            let (red, findings, inner) = self.redact_whole(label, text);
            if unchanged(&red, text) {
                out.extend_from_slice(text.as_bytes());
            } else {
                encode_into(&red, out);
                self.summary.strings_redacted += 1;
            }
            if let Some(inner) = inner {
                self.summary.merge(inner, self.limits.max_findings);
            }
            if !findings.is_empty() {
                self.summary.record(findings, self.limits.max_findings);
            }
            self.value_done();
        }
        out.push(b'"');
        Some(i + run + 1)
    }

    /// Whether the whole string value `text` is read as a JSON document too (see the module
    /// docs): then no sieve may pass over it.
    fn embeds(&self, text: &str) -> bool {
        self.level < MAX_EMBEDDED && looks_like_json(text)
    }

    /// One whole string value (not a segment of one) redacted under its label. A value that
    /// holds a JSON document ([`embeds`](Self::embeds)) is first redacted as that document, by
    /// a rewriter like this one a level deeper (its strings under their own keys, its own
    /// embedded documents in turn), and what that leaves is then redacted as text, as any
    /// value is: keys, numbers and words across members stay covered as before. Returns the
    /// text, the text pass's findings and, when the document pass masked anything, its
    /// summary (findings first in the value). A value that does not parse as one document is
    /// only redacted as text.
    fn redact_whole<'t>(
        &self,
        label: Option<&str>,
        text: &'t str,
    ) -> (Cow<'t, str>, Vec<Finding>, Option<Summary>) {
        if self.embeds(text) {
            let mut inner = JsonRedactor::new(self.redactor.clone(), self.limits)
                .with_key_redaction(self.redact_keys);
            inner.level = self.level + 1;
            let mut doc = Vec::with_capacity(text.len() + text.len() / 8);
            let parsed = inner
                .push(text.as_bytes(), &mut doc)
                .and_then(|()| inner.finish(&mut doc));
            if let Ok(mut summary) = parsed {
                if summary.total() > 0 {
                    if let Ok(doc) = String::from_utf8(doc) {
                        // The outer string counts once, as changed, by its caller.
                        summary.strings_redacted = 0;
                        let (red, findings) = self.redactor.redact_labelled(label, &doc);
                        return (Cow::Owned(red.into_owned()), findings, Some(summary));
                    }
                }
            }
        }
        let (red, findings) = self.redactor.redact_labelled(label, text);
        (red, findings, None)
    }

    /// Whether the current value is masked whole under its key (see
    /// [`TextRedactor::masks_whole`]): then no sieve may pass over it.
    fn masks_whole(&self) -> bool {
        label_of(&self.keys, self.label_at).is_some_and(|l| self.redactor.masks_whole(l))
    }

    /// Whether the string value `valid[k..k + run]` (between quotes) certainly needs no
    /// redaction, by the chunk's sieve (asked for at the first such value of the chunk, over
    /// the chunk's text from there to its last quote: a string open after that one does not
    /// end in this chunk).
    fn clean(&mut self, valid: &str, k: usize, run: usize) -> bool {
        if let ChunkSieve::Unasked = self.sieve {
            let end = memchr::memrchr(b'"', valid.as_bytes()).map_or(0, |q| q + 1);
            self.sieve = match valid.get(k..end).and_then(|t| self.redactor.sieve(t)) {
                Some(sieve) => ChunkSieve::Ready {
                    base: k,
                    end,
                    sieve,
                },
                None => ChunkSieve::Absent,
            };
        }
        let ChunkSieve::Ready { base, end, sieve } = &mut self.sieve else {
            return false;
        };
        match (valid.get(*base..*end), k.checked_sub(*base)) {
            (Some(t), Some(start)) => sieve.clean(t, start, start + run),
            _ => false,
        }
    }

    /// Reads string bytes from `chunk[i..]`; returns the index of the first byte not consumed
    /// (the end of the chunk, or just after the closing quote).
    fn string_bytes(
        &mut self,
        mut s: Str,
        chunk: &[u8],
        mut i: usize,
        out: &mut Vec<u8>,
    ) -> Result<usize, JsonError> {
        while i < chunk.len() {
            let b = chunk[i];
            match s.esc {
                Esc::None => {
                    let rest = &chunk[i..];
                    let run = plain_run(rest);
                    if run > 0 {
                        // A buffered run stops exactly at the segment threshold, so segments
                        // fall at the same place whatever the chunking.
                        let take = if s.buffered {
                            run.min(self.threshold.saturating_sub(self.raw.len()).max(1))
                        } else {
                            run
                        };
                        let bytes = &rest[..take];
                        self.utf8_feed(bytes, s.buffered, s.key, i)?;
                        if s.buffered {
                            self.raw.extend_from_slice(bytes);
                            self.appended(out, i)?;
                        } else {
                            out.extend_from_slice(bytes);
                        }
                        i += take;
                        continue;
                    }
                    if self.utf8.len > 0 {
                        return Err(self.err(i, JsonErrorKind::InvalidUtf8));
                    }
                    match b {
                        b'"' => {
                            self.end_string(s, out, i)?;
                            return Ok(i + 1);
                        }
                        b'\\' => {
                            s.esc = Esc::Backslash;
                            s.esc_buf[0] = b;
                            s.esc_len = 1;
                        }
                        _ => return Err(self.err(i, JsonErrorKind::ControlChar)),
                    }
                }
                Esc::Backslash => {
                    let ch = match b {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            s.esc = Esc::Hex { n: 0, acc: 0 };
                            push_esc(&mut s, b);
                            i += 1;
                            continue;
                        }
                        _ => return Err(self.err(i, JsonErrorKind::InvalidEscape)),
                    };
                    push_esc(&mut s, b);
                    self.escape_done(&mut s, ch, out, i)?;
                }
                Esc::Hex { n, acc } | Esc::LowHex { n, acc, .. } => {
                    let Some(d) = hex_val(b) else {
                        return Err(self.err(i, JsonErrorKind::InvalidEscape));
                    };
                    push_esc(&mut s, b);
                    let acc = (acc << 4) | d;
                    let n = n + 1;
                    s.esc = match (s.esc, n) {
                        (Esc::Hex { .. }, 4) if is_high(acc) => Esc::NeedBackslash { hi: acc },
                        (Esc::Hex { .. }, 4) if is_low(acc) => {
                            return Err(self.err(i, JsonErrorKind::LoneSurrogate));
                        }
                        (Esc::Hex { .. }, 4) => {
                            let ch = char::from_u32(u32::from(acc))
                                .ok_or_else(|| self.err(i, JsonErrorKind::Internal))?;
                            self.escape_done(&mut s, ch, out, i)?;
                            i += 1;
                            continue;
                        }
                        (Esc::Hex { .. }, _) => Esc::Hex { n, acc },
                        (Esc::LowHex { hi, .. }, 4) => {
                            if !is_low(acc) {
                                return Err(self.err(i, JsonErrorKind::LoneSurrogate));
                            }
                            let cp = 0x10000
                                + ((u32::from(hi) - 0xD800) << 10)
                                + (u32::from(acc) - 0xDC00);
                            let ch = char::from_u32(cp)
                                .ok_or_else(|| self.err(i, JsonErrorKind::Internal))?;
                            self.escape_done(&mut s, ch, out, i)?;
                            i += 1;
                            continue;
                        }
                        (Esc::LowHex { hi, .. }, _) => Esc::LowHex { hi, n, acc },
                        _ => return Err(self.err(i, JsonErrorKind::Internal)),
                    };
                }
                Esc::NeedBackslash { hi } => {
                    if b != b'\\' {
                        return Err(self.err(i, JsonErrorKind::LoneSurrogate));
                    }
                    push_esc(&mut s, b);
                    s.esc = Esc::NeedU { hi };
                }
                Esc::NeedU { hi } => {
                    if b != b'u' {
                        return Err(self.err(i, JsonErrorKind::LoneSurrogate));
                    }
                    push_esc(&mut s, b);
                    s.esc = Esc::LowHex { hi, n: 0, acc: 0 };
                }
            }
            i += 1;
        }
        self.state = State::Str(s);
        Ok(i)
    }

    /// A complete escape sequence (raw bytes in `s.esc_buf`) decoded to `ch`.
    fn escape_done(
        &mut self,
        s: &mut Str,
        ch: char,
        out: &mut Vec<u8>,
        i: usize,
    ) -> Result<(), JsonError> {
        let esc = s.esc_buf.get(..usize::from(s.esc_len)).unwrap_or_default();
        if s.key {
            let mut buf = [0u8; 4];
            self.capture_key(ch.encode_utf8(&mut buf));
        }
        if s.buffered {
            self.raw.extend_from_slice(esc);
            self.decoded.push(ch);
            self.appended(out, i)?;
        } else {
            out.extend_from_slice(esc);
        }
        s.esc = Esc::None;
        s.esc_len = 0;
        Ok(())
    }

    /// Appends a decoded piece of the key being read to `keys`, up to [`MAX_LABEL`] bytes;
    /// from the first character that does not fit on, nothing more (whatever the chunking).
    fn capture_key(&mut self, text: &str) {
        let Some(at) = self.label_at else {
            return;
        };
        if self.key_full {
            return;
        }
        let room = MAX_LABEL.saturating_sub(self.keys.len().saturating_sub(at));
        if text.len() <= room {
            self.keys.push_str(text);
        } else {
            self.keys
                .push_str(text.get(..floor_boundary(text, room)).unwrap_or_default());
            self.key_full = true;
        }
    }

    /// Validates UTF-8 across chunk boundaries; appends the complete characters to `decoded`
    /// when `sink`, and to the current key when `key`.
    fn utf8_feed(
        &mut self,
        mut bytes: &[u8],
        sink: bool,
        key: bool,
        i: usize,
    ) -> Result<(), JsonError> {
        let bad = |this: &Self| this.err(i, JsonErrorKind::InvalidUtf8);
        if self.utf8.len > 0 {
            let width = utf8_width(self.utf8.buf[0]);
            if width <= self.utf8.len || width > 4 {
                return Err(bad(self));
            }
            let take = (width - self.utf8.len).min(bytes.len());
            let (head, rest) = bytes.split_at(take);
            self.utf8.buf[self.utf8.len..self.utf8.len + take].copy_from_slice(head);
            self.utf8.len += take;
            bytes = rest;
            let pending = self.utf8.buf;
            match std::str::from_utf8(&pending[..self.utf8.len]) {
                Ok(ch) => {
                    if sink {
                        self.decoded.push_str(ch);
                    }
                    if key {
                        self.capture_key(ch);
                    }
                    self.utf8.len = 0;
                }
                Err(e) if e.error_len().is_none() => return Ok(()), // still incomplete
                Err(_) => return Err(bad(self)),
            }
        }
        match std::str::from_utf8(bytes) {
            Ok(text) => {
                if sink {
                    self.decoded.push_str(text);
                }
                if key {
                    self.capture_key(text);
                }
            }
            Err(e) => {
                let (valid, rest) = bytes.split_at(e.valid_up_to());
                if e.error_len().is_some() || rest.len() > 3 {
                    return Err(JsonError {
                        offset: self.offset + (i + valid.len()) as u64,
                        kind: JsonErrorKind::InvalidUtf8,
                    });
                }
                if sink || key {
                    let valid = std::str::from_utf8(valid).map_err(|_| bad(self))?;
                    if sink {
                        self.decoded.push_str(valid);
                    }
                    if key {
                        self.capture_key(valid);
                    }
                }
                self.utf8.buf[..rest.len()].copy_from_slice(rest);
                self.utf8.len = rest.len();
            }
        }
        Ok(())
    }

    /// After bytes were buffered: track the peak, process a segment at the threshold.
    fn appended(&mut self, out: &mut Vec<u8>, i: usize) -> Result<(), JsonError> {
        self.peak_buffered = self.peak_buffered.max(self.buffered());
        if let Some(from) = self.lead_ws {
            // A value that opens a document (by its first character other than whitespace)
            // may be buffered up to the document window.
            let rest = self.decoded.as_bytes().get(from..).unwrap_or_default();
            match rest.iter().position(|&b| !is_ws(b)) {
                None => self.lead_ws = Some(self.decoded.len()),
                Some(at) => {
                    self.lead_ws = None;
                    if matches!(rest[at], b'{' | b'[') && !self.seg_emitted {
                        self.doc = Some(DocScan {
                            at: from + at,
                            ..DocScan::default()
                        });
                    }
                }
            }
        }
        if self.raw.len() >= self.threshold && self.still_document() {
            // At each multiple of the window and at the document window (where runs stop, so
            // whatever the chunking).
            self.threshold = (self.threshold + self.limits.window).min(self.limits.document_window);
        } else if self.raw.len() >= self.threshold {
            self.segment(out).map_err(|kind| self.err(i, kind))?;
            self.peak_buffered = self.peak_buffered.max(self.buffered());
        }
        Ok(())
    }

    /// Whether the buffered value, which reached its threshold, may still be one document
    /// within the document window: then it is buffered on rather than cut. Otherwise it is
    /// never again (its segments are text).
    fn still_document(&mut self) -> bool {
        let Some(doc) = &mut self.doc else {
            return false;
        };
        doc.read(&self.decoded);
        // (A sequence of documents, JSON Lines, only within one window: an export of records
        // longer than that streams through as text rather than be held to the document
        // window.)
        let more = !doc.broken && !doc.sequence && self.threshold < self.limits.document_window;
        if !more {
            self.doc = None;
        }
        more
    }

    /// Emits the redacted head of an over-long string, carrying the tail (see module docs).
    fn segment(&mut self, out: &mut Vec<u8>) -> Result<(), JsonErrorKind> {
        let text = self.decoded.as_str();
        let h = self.holdback;
        if text.len() >= h.saturating_mul(2) {
            // The label is context before the value's start: for the first window only, and
            // never for the part after a cut.
            let label = if self.seg_emitted {
                None
            } else {
                label_of(&self.keys, self.label_at)
            };
            if let Some(head) = self.redactor.redact_head(label, text, h) {
                let c = head.cut;
                let raw_c = text
                    .get(..c)
                    .and_then(|_| raw_offset(&self.raw, c))
                    .filter(|&r| r <= self.raw.len())
                    .ok_or(JsonErrorKind::Internal)?;
                if unchanged(&head.text, &text[..c]) {
                    out.extend_from_slice(&self.raw[..raw_c]);
                } else {
                    encode_into(&head.text, out);
                    self.cur_changed = true;
                }
                self.summary.record(head.findings, self.limits.max_findings);
                self.seg_emitted = true;
                self.decoded.drain(..c);
                self.raw.drain(..raw_c);
                self.threshold = self
                    .limits
                    .window
                    .max(self.raw.len() + self.limits.window / 2);
                return Ok(());
            }
        }
        if self.raw.len() >= self.limits.max_window {
            return Err(JsonErrorKind::SegmentationFailed(self.limits.max_window));
        }
        self.threshold = (self.raw.len() + self.limits.window / 2)
            .min(self.limits.max_window)
            .max(self.raw.len() + 1);
        Ok(())
    }

    /// Bytes of the current number: held when numbers are redacted, passed on otherwise.
    fn number_bytes(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        if !self.mask_numbers || self.number_passed {
            out.extend_from_slice(bytes);
        } else if self.number.len() + bytes.len() > MAX_NUMBER {
            out.extend_from_slice(self.number.as_bytes());
            out.extend_from_slice(bytes);
            self.number.clear();
            self.number_passed = true;
        } else {
            // A number's bytes are ASCII.
            self.number.extend(bytes.iter().map(|&b| char::from(b)));
        }
    }

    /// The current number ended: redacted under its label when numbers are, and written as
    /// its mask (a JSON string) when anything in it is masked, as it was otherwise.
    fn number_end(&mut self, out: &mut Vec<u8>) {
        self.number_passed = false;
        if self.number.is_empty() {
            return;
        }
        let label = label_of(&self.keys, self.label_at);
        let (red, findings) = self.redactor.redact_labelled(label, &self.number);
        if unchanged(&red, &self.number) {
            out.extend_from_slice(self.number.as_bytes());
        } else {
            out.push(b'"');
            encode_into(&red, out);
            out.push(b'"');
            self.summary.strings_redacted += 1;
        }
        if !findings.is_empty() {
            self.summary.record(findings, self.limits.max_findings);
        }
        self.number.clear();
    }

    fn end_string(&mut self, s: Str, out: &mut Vec<u8>, i: usize) -> Result<(), JsonError> {
        if s.buffered {
            // A value read whole, under its label, may hold a document; a key (redacted only
            // with key redaction) or the last segment of a long value is only text, without
            // a label.
            let (red, findings, inner) = if s.key || self.seg_emitted {
                let (red, findings) = self.redactor.redact_labelled(None, &self.decoded);
                (red, findings, None)
            } else {
                self.redact_whole(label_of(&self.keys, self.label_at), &self.decoded)
            };
            if unchanged(&red, &self.decoded) {
                out.extend_from_slice(&self.raw);
            } else {
                encode_into(&red, out);
                self.cur_changed = true;
            }
            if let Some(inner) = inner {
                self.summary.merge(inner, self.limits.max_findings);
            }
            self.summary.record(findings, self.limits.max_findings);
            if self.cur_changed {
                self.summary.strings_redacted += 1;
            }
            self.clear_string();
        }
        if self.utf8.len > 0 {
            return Err(self.err(i, JsonErrorKind::InvalidUtf8));
        }
        out.push(b'"');
        if s.key {
            self.state = State::Colon;
        } else {
            self.value_done();
        }
        Ok(())
    }
}

/// The current key of the innermost open object, if any and not empty.
fn label_of(keys: &str, at: Option<usize>) -> Option<&str> {
    keys.get(at?..).filter(|k| !k.is_empty())
}

/// Whether a redactor's result is its input (without comparing when it is the input itself,
/// returned borrowed).
fn unchanged(red: &str, input: &str) -> bool {
    (red.as_ptr() == input.as_ptr() && red.len() == input.len()) || red == input
}

/// The longest stretch of `chunk` that is valid UTF-8 once the partial characters at its ends
/// are left out: its offset and text.
fn valid_text(chunk: &[u8]) -> (usize, &str) {
    let is_cont = |b: u8| (0x80..0xC0).contains(&b);
    let off = chunk.iter().take(3).take_while(|&&b| is_cont(b)).count();
    let mut end = chunk.len();
    // A character cut at the end: its lead byte is within the last 3 bytes.
    if let Some(k) = (end.saturating_sub(3)..end)
        .rev()
        .find(|&k| !is_cont(chunk[k]))
    {
        if chunk[k] >= 0xC0 && k + utf8_width(chunk[k]) > end {
            end = k;
        }
    }
    let body = chunk.get(off..end.max(off)).unwrap_or_default();
    match std::str::from_utf8(body) {
        Ok(v) => (off, v),
        Err(e) => (
            off,
            std::str::from_utf8(&body[..e.valid_up_to()]).unwrap_or_default(),
        ),
    }
}

/// The length of the run of plain string bytes `b` starts with: up to the first `"`, `\` or
/// control character.
fn plain_run(b: &[u8]) -> usize {
    // Most strings are short: their first 64 bytes are checked eight at a time, stopping at the
    // first word that holds a byte to escape. Longer runs go by 64-byte blocks, each checked in
    // one pass that vectorises: linear in the run's length. (A search for the next quote or
    // backslash first, then for control characters before it, read a decoded text with many
    // newlines and no quote, as in a CSV export, to its end once per newline.)
    let head = b.len().min(64);
    if let Some(k) = first_special(&b[..head]) {
        return k;
    }
    let special = |c: u8| u8::from(c < 0x20 || c == b'"' || c == b'\\');
    let mut i = head;
    for block in b[head..].chunks(64) {
        if block.iter().fold(0u8, |a, &c| a | special(c)) != 0 {
            return i + first_special(block).unwrap_or(block.len());
        }
        i += block.len();
    }
    i
}

/// The index of the first `"`, `\` or control character in `b`, eight bytes at a time (SWAR).
fn first_special(b: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    // High bit set in each byte of `x` below `n` (n <= 128), exact in the lowest flagged byte:
    // a borrow can only flag bytes above a true one, and only the lowest flagged byte is used.
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH;
    let find = |w: [u8; 8]| -> Option<usize> {
        let x = u64::from_le_bytes(w);
        let m = below(x, 0x20)
            | below(x ^ (ONES * u64::from(b'"')), 1)
            | below(x ^ (ONES * u64::from(b'\\')), 1);
        (m != 0).then(|| m.trailing_zeros() as usize / 8)
    };
    let mut words = b.chunks_exact(8);
    let mut i = 0;
    for w in &mut words {
        if let Some(k) = find(w.try_into().unwrap_or([0; 8])) {
            return Some(i + k);
        }
        i += 8;
    }
    let tail = words.remainder();
    let mut w = [b'a'; 8];
    w[..tail.len()].copy_from_slice(tail);
    find(w).map(|k| i + k)
}

fn push_esc(s: &mut Str, b: u8) {
    if let Some(slot) = s.esc_buf.get_mut(usize::from(s.esc_len)) {
        *slot = b;
        s.esc_len += 1;
    }
}

/// Adds `n` to the count of `entity` (allocating its name only the first time).
pub(super) fn add_count<N: Copy + std::ops::AddAssign>(
    counts: &mut BTreeMap<String, N>,
    entity: &str,
    n: N,
) {
    match counts.get_mut(entity) {
        Some(c) => *c += n,
        None => {
            counts.insert(entity.to_string(), n);
        }
    }
}

/// The char boundary at or before `c` (at most the text's length).
pub(super) fn floor_boundary(text: &str, mut c: usize) -> usize {
    c = c.min(text.len());
    while c > 0 && !text.is_char_boundary(c) {
        c -= 1;
    }
    c
}

fn is_separator(b: u8) -> bool {
    is_ws(b) || b",;()<>[]{}\"'|".contains(&b)
}

/// Cut points to try for a window `text`, best first: `len - holdback`, then token starts
/// before it, then further back by whole hold-backs; all in the second half of the window.
fn cut_candidates(text: &str, h: usize) -> Vec<usize> {
    const TRIES: usize = 4;
    let mut cands = Vec::with_capacity(TRIES);
    let n = text.len();
    let lo = n / 2;
    let Some(c0) = n.checked_sub(h) else {
        return cands;
    };
    let c0 = floor_boundary(text, c0);
    if c0 <= lo {
        return cands;
    }
    cands.push(c0);
    let bytes = text.as_bytes();
    let stop = c0.saturating_sub(h.saturating_mul(4)).max(lo + 1);
    let mut p = c0;
    while p > stop && cands.len() < TRIES - 1 {
        p -= 1;
        let (Some(&before), Some(&at)) = (bytes.get(p - 1), bytes.get(p)) else {
            break;
        };
        if is_separator(before) && !is_separator(at) {
            cands.push(p);
        }
    }
    let mut k = 1;
    while cands.len() < TRIES {
        let c = floor_boundary(text, c0.saturating_sub(h.saturating_mul(k)));
        if c <= lo {
            break;
        }
        if !cands.contains(&c) {
            cands.push(c);
        }
        k += 1;
    }
    cands
}

/// [`TextRedactor::redact_head`] by verification, for any redactor: the first of
/// `cut_candidates` where `redact(text) == redact(text[..c]) ++ redact(text[c..])`, i.e. no
/// match (nor the context of one) straddles the cut (a redaction of the window, and of the
/// head and the tail per try).
pub fn verified_head<'t, R: TextRedactor + ?Sized>(
    redactor: &R,
    label: Option<&str>,
    text: &'t str,
    holdback: usize,
) -> Option<Head<'t>> {
    let cands = cut_candidates(text, holdback);
    if cands.is_empty() {
        return None;
    }
    let (whole, _) = redactor.redact_labelled(label, text);
    for c in cands {
        let (Some(head_in), Some(tail_in)) = (text.get(..c), text.get(c..)) else {
            continue;
        };
        let (head, findings) = redactor.redact_labelled(label, head_in);
        if !whole.starts_with(&*head) {
            continue;
        }
        let (tail, _) = redactor.redact_labelled(None, tail_in);
        if whole.len() != head.len() + tail.len() || !whole.ends_with(&*tail) {
            continue;
        }
        return Some(Head {
            cut: c,
            text: head,
            findings,
        });
    }
    None
}

/// The offset in the raw (escaped, already validated) bytes that decodes to `target` bytes.
fn raw_offset(raw: &[u8], target: usize) -> Option<usize> {
    let (mut r, mut d) = (0usize, 0usize);
    while d < target {
        if *raw.get(r)? != b'\\' {
            // Plain bytes map one to one; skip to the next escape or the target (memchr: a
            // long string is mapped back at every cut, and byte by byte that was 5% of dense
            // text through the agent).
            let plain = raw.get(r..r.saturating_add(target - d).min(raw.len()))?;
            let run = memchr::memchr(b'\\', plain).unwrap_or(plain.len());
            if run == 0 {
                return None;
            }
            r += run;
            d += run;
            continue;
        }
        if *raw.get(r + 1)? == b'u' {
            let mut v: u32 = 0;
            for &h in raw.get(r + 2..r + 6)? {
                v = (v << 4) | u32::from(hex_val(h)?);
            }
            if (0xD800..0xDC00).contains(&v) {
                d += 4;
                r += 12;
            } else {
                d += char::from_u32(v)?.len_utf8();
                r += 6;
            }
        } else {
            d += 1;
            r += 2;
        }
    }
    (d == target).then_some(r)
}

/// Appends `s` as the content of a JSON string (without quotes): escapes `"`, `\` and control
/// characters; keeps everything else, non-ASCII as UTF-8.
fn encode_into(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut rest = s.as_bytes();
    loop {
        // Runs without a byte to escape at once (`plain_run` stops exactly at those).
        let run = plain_run(rest);
        out.extend_from_slice(&rest[..run]);
        let Some(&b) = rest.get(run) else {
            return;
        };
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            _ => b"",
        };
        if short.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(short);
        }
        rest = &rest[run + 1..];
    }
}

/// Redacts a whole document held in memory at once; returns the output and the summary.
pub fn redact_json(
    redactor: Arc<dyn TextRedactor>,
    limits: JsonLimits,
    input: &[u8],
) -> Result<(Vec<u8>, Summary), JsonError> {
    let mut r = JsonRedactor::new(redactor, limits);
    let mut out = Vec::with_capacity(input.len());
    r.push(input, &mut out)?;
    let summary = r.finish(&mut out)?;
    Ok((out, summary))
}

/// Redacts every string value (not the keys) of an already parsed document in place, e.g.
/// tool arguments or resource URIs before they are logged, with the same labels as
/// [`JsonRedactor`] (the member's key; in arrays, the key of the member holding the array).
/// Returns the findings in document order. Iterative: any depth is fine.
///
/// A string that holds JSON documents ([`embedded_documents`]) is redacted as those documents
/// first, a level deeper, and written back compact when anything in it was masked; then as
/// text, as every string (see [`JsonRedactor`]).
pub fn redact_value(value: &mut Value, redactor: &dyn TextRedactor) -> Vec<Finding> {
    redact_value_at(value, redactor, 0)
}

/// The JSON documents (objects or arrays, one or a sequence of them: JSON Lines) a string
/// value at `level` holds, if it holds any and is not too deep to be read as such
/// ([`MAX_EMBEDDED`]). Written back with [`write_documents`].
pub fn embedded_documents(text: &str, level: u8) -> Option<Vec<Value>> {
    if level >= MAX_EMBEDDED || !looks_like_json(text) {
        return None;
    }
    let docs = serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .collect::<Result<Vec<Value>, _>>()
        .ok()?;
    docs.iter()
        .all(|v| v.is_object() || v.is_array())
        .then_some(docs)
}

/// Documents read by [`embedded_documents`] written back compact, one per line.
pub fn write_documents(docs: &[Value]) -> String {
    let mut out = String::new();
    for (i, doc) in docs.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&doc.to_string());
    }
    out
}

fn redact_value_at(value: &mut Value, redactor: &dyn TextRedactor, level: u8) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut stack: Vec<(&mut Value, Option<&str>)> = vec![(value, None)];
    while let Some((v, label)) = stack.pop() {
        match v {
            Value::String(s) => {
                if let Some(mut docs) = embedded_documents(s, level) {
                    let mut inner = Vec::new();
                    for doc in &mut docs {
                        inner.append(&mut redact_value_at(doc, redactor, level + 1));
                    }
                    if !inner.is_empty() {
                        findings.append(&mut inner);
                        *s = write_documents(&docs);
                    }
                }
                let (red, f) = redactor.redact_labelled(label, s);
                let changed = match red {
                    Cow::Borrowed(r) => (r != s.as_str()).then(|| r.to_owned()),
                    Cow::Owned(r) => (r != *s).then_some(r),
                };
                if let Some(r) = changed {
                    *s = r;
                }
                findings.extend(f);
            }
            Value::Array(items) => stack.extend(items.iter_mut().rev().map(|x| (x, label))),
            Value::Object(map) => {
                stack.extend(map.iter_mut().rev().map(|(k, x)| (x, key_label(k))));
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
    findings
}

/// Redacts the `data` of Server-Sent Events one event at a time: each event's data is one JSON
/// document (e.g. a JSON-RPC message), redacted whole and returned, so events are forwarded one
/// by one. The summary accumulates over events.
///
/// The returned data may contain newlines where the input had them (as JSON whitespace); the
/// caller writes it back as one `data:` line per line, as SSE requires.
pub struct SseRedactor {
    inner: JsonRedactor,
    summary: Summary,
}

impl std::fmt::Debug for SseRedactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseRedactor")
            .field("inner", &self.inner)
            .field("summary", &self.summary)
            .finish()
    }
}

impl SseRedactor {
    pub fn new(redactor: Arc<dyn TextRedactor>, limits: JsonLimits) -> Self {
        Self {
            inner: JsonRedactor::new(redactor, limits),
            summary: Summary::default(),
        }
    }

    /// Also redact object keys.
    pub fn with_key_redaction(mut self, on: bool) -> Self {
        self.inner = self.inner.with_key_redaction(on);
        self
    }

    /// The redacted `data` of one event. Empty (or all-whitespace) data is returned as is:
    /// there is nothing to mask. Any other data must be a JSON document, else the event is
    /// refused (the caller must not forward it).
    pub fn redact_data(&mut self, data: &str) -> Result<String, JsonError> {
        if data.bytes().all(is_ws) {
            return Ok(data.to_owned());
        }
        self.inner.reset();
        let mut out = Vec::with_capacity(data.len());
        self.inner.push(data.as_bytes(), &mut out)?;
        let summary = self.inner.finish(&mut out)?;
        self.summary
            .merge(summary, self.inner.limits().max_findings);
        // Input is UTF-8 and strings are validated, so this cannot fail; refuse if it does.
        String::from_utf8(out).map_err(|_| JsonError {
            offset: 0,
            kind: JsonErrorKind::Internal,
        })
    }

    /// Findings of all events so far.
    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    /// Takes the findings of all events so far, starting afresh.
    pub fn take_summary(&mut self) -> Summary {
        std::mem::take(&mut self.summary)
    }
}
