//! What the redaction layers share: [`TextRedactor`], the [`Finding`]s it reports and the
//! [`Head`] of a long string's window. Its own file so that the fuzz target compiles it with
//! `json.rs` (both by `#[path]`, at its crate root), without a copy to keep in sync.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde::{Serialize, Serializer};

/// One masked value. Neither field allocates per value: a response can carry thousands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Entity type, e.g. "EMAIL", "IBAN", "CARD" (shared with the detector).
    #[serde(serialize_with = "as_str")]
    pub entity: Arc<str>,
    /// Keyed pseudonym of the value (HMAC), never the value itself.
    pub pseudonym: Pseudonym,
}

fn as_str<S: Serializer>(s: &Arc<str>, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(s)
}

/// A value's pseudonym: the first four bytes of its keyed hash as 8 lowercase hex digits,
/// held inline. Reads, prints and serialises as that string.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pseudonym([u8; 8]);

impl Pseudonym {
    /// The pseudonym of a tag (the leading bytes of a keyed hash).
    pub fn from_tag(tag: [u8; 4]) -> Pseudonym {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 8];
        for (pair, b) in out.chunks_exact_mut(2).zip(tag) {
            pair[0] = HEX[usize::from(b >> 4)];
            pair[1] = HEX[usize::from(b & 0xf)];
        }
        Pseudonym(out)
    }

    pub fn as_str(&self) -> &str {
        // Always hex digits (the only constructor writes them).
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::ops::Deref for Pseudonym {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for Pseudonym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Pseudonym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl Serialize for Pseudonym {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(self.as_str())
    }
}

/// Redacts personal data in one piece of text.
pub trait TextRedactor: Send + Sync {
    /// The longest text one detector can match: a streaming caller that holds back this many
    /// bytes (plus context) at a chunk boundary never splits a match.
    fn max_match_len(&self) -> usize;
    /// How far before a value its detection can read (context words), in bytes: a streaming
    /// caller holds back at least `max_match_len` plus this (the `holdback` it passes to
    /// [`redact_head`](Self::redact_head)). 0 (the default): nothing before the match.
    fn context_reach(&self) -> usize {
        0
    }
    /// Whether a JSON number is redacted too, as the text it is written as (`[services.redact]
    /// numbers = true`): a number that is personal data is then replaced by its mask, a JSON
    /// string. Off (the default): numbers pass as they are.
    fn masks_numbers(&self) -> bool {
        false
    }
    /// Whether JSON object keys are redacted too (`[services.redact] keys = true`): a key
    /// that is personal data (`{"jane@example.com": 3}`) becomes its mask. Off (the default):
    /// keys pass as they are (they still label their values).
    fn masks_keys(&self) -> bool {
        false
    }
    /// Whether a value under `label` may be masked whole for its name: whatever it holds under
    /// a credential's key (`{"password": "..."}`), or read whole as the phone number or IBAN a
    /// name like `phone` or `iban` says it is (`{"iban": "de89370400440532013000"}`). Such a
    /// value must reach [`redact_labelled`] even where the [`sieve`] finds nothing in it.
    ///
    /// [`redact_labelled`]: Self::redact_labelled
    /// [`sieve`]: Self::sieve
    fn masks_whole(&self, label: &str) -> bool {
        let _ = label;
        false
    }
    /// Returns the text with every detected value masked, and what was masked.
    fn redact(&self, text: &str) -> (String, Vec<Finding>);
    /// Like [`redact`](Self::redact) for the value of a named field: `label` is the name of
    /// the field (the JSON key of the member whose string value `text` is; for an element of
    /// an array, the key of the member holding the array; `None` when there is none, or when
    /// `text` is not the start of the value). A label is context right before the text, so
    /// `{"bsn": "111222333"}` is a BSN although the string `111222333` alone is not.
    ///
    /// Returns the text borrowed when nothing changed (no copy). The default ignores the
    /// label and calls `redact`.
    fn redact_labelled<'t>(
        &self,
        label: Option<&str>,
        text: &'t str,
    ) -> (Cow<'t, str>, Vec<Finding>) {
        let _ = label;
        let (out, findings) = self.redact(text);
        (Cow::Owned(out), findings)
    }

    /// For a caller about to redact many short pieces of `text` (the string values of a
    /// JSON chunk): a [`Sieve`] telling which pieces certainly hold nothing, found in one pass
    /// over `text`. `None` (the default) when the redactor cannot tell: every piece is then
    /// redacted.
    fn sieve(&self, text: &str) -> Option<Box<dyn Sieve>> {
        let _ = text;
        None
    }

    /// For a streaming caller that cannot hold a long string whole: a cut `c` of the window
    /// `text` after its middle and at least `holdback` bytes before its end (or fewer, when
    /// the redactor knows that nothing after the window can change the head, see
    /// `Engine::cut_head`) such that
    /// redacting `text[..c]` (under `label`) and `text[c..]` (without: it does not start the
    /// value) apart gives exactly the redaction of `text`; and `text[..c]` redacted. `None`
    /// when there is no such cut (the caller grows the window).
    ///
    /// The default tries a few cut points and checks each by redacting the window, the head
    /// and the tail ([`verified_head`](super::json::verified_head)); an engine that knows what its decisions read
    /// can do it in one pass.
    fn redact_head<'t>(
        &self,
        label: Option<&str>,
        text: &'t str,
        holdback: usize,
    ) -> Option<Head<'t>> {
        super::json::verified_head(self, label, text, holdback)
    }
}

/// Which pieces of one text certainly need no redaction (see [`TextRedactor::sieve`]).
pub trait Sieve: Send {
    /// Whether redacting `text[start..end]` alone, under any label, certainly finds and
    /// changes nothing; `text` is the text the sieve was made for. `false` when unsure.
    /// Pieces are asked about in order: increasing `start`, not overlapping.
    fn clean(&mut self, text: &str, start: usize, end: usize) -> bool;
}

/// The redacted head of a long string's window (see [`TextRedactor::redact_head`]).
#[derive(Debug)]
pub struct Head<'t> {
    /// Where the window was cut (a char boundary).
    pub cut: usize,
    /// The window's text before the cut, redacted (borrowed when nothing changed).
    pub text: Cow<'t, str>,
    /// What was masked in it.
    pub findings: Vec<Finding>,
}
