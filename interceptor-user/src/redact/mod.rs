//! Inline redaction of personal data in everything an MCP server sends back.
//!
//! Layers:
//! - [`engine`]: all detectors compiled into one multi-pattern DFA (regex-automata), one pass
//!   per text, candidates checked by validators and context words; masking per entity type.
//! - [`json`]: a streaming, JSON-aware rewriter that finds every string value of a JSON
//!   document (decoding escapes), redacts it with a [`TextRedactor`] under the key it belongs
//!   to (the label that checksum-only identifiers need), and re-encodes it, in bounded memory
//!   and for any split of the input into chunks.
//! - [`stream`]: response bodies (JSON and SSE) rewritten frame by frame as they pass.
//!
//! The two meet at [`TextRedactor`], so each can be tested on its own.
pub mod engine;
pub mod json;
pub mod stream;
pub mod view;

use std::borrow::Cow;

use serde::Serialize;

/// One masked value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Entity type, e.g. "EMAIL", "IBAN", "CARD".
    pub entity: String,
    /// Keyed pseudonym of the value (HMAC), never the value itself.
    pub pseudonym: String,
}

/// Redacts personal data in one piece of text.
pub trait TextRedactor: Send + Sync {
    /// The longest text one detector can match: a streaming caller that holds back this many
    /// bytes (plus context) at a chunk boundary never splits a match.
    fn max_match_len(&self) -> usize;
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

    /// For a streaming caller that cannot hold a long string whole: a cut `c` of the window
    /// `text` after its middle and at least `holdback` bytes before its end (or fewer, when
    /// the redactor knows that nothing after the window can change the head, see
    /// `Engine::cut_head`) such that
    /// redacting `text[..c]` (under `label`) and `text[c..]` (without: it does not start the
    /// value) apart gives exactly the redaction of `text`; and `text[..c]` redacted. `None`
    /// when there is no such cut (the caller grows the window).
    ///
    /// The default tries a few cut points and checks each by redacting the window, the head
    /// and the tail ([`json::verified_head`]); an engine that knows what its decisions read
    /// can do it in one pass.
    fn redact_head<'t>(
        &self,
        label: Option<&str>,
        text: &'t str,
        holdback: usize,
    ) -> Option<Head<'t>> {
        json::verified_head(self, label, text, holdback)
    }
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

/// Reads the 32-byte pseudonym key, creating it (random, mode 0600) when the file is missing.
pub fn load_or_create_key(path: &std::path::Path) -> std::io::Result<[u8; 32]> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::read(path) {
        Ok(bytes) => bytes.as_slice().try_into().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} must hold exactly 32 bytes", path.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)?;
            f.write_all(&key)?;
            f.sync_all()?;
            Ok(key)
        }
        Err(e) => Err(e),
    }
}
