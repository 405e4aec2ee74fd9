//! Inline redaction of personal data in everything an MCP server sends back.
//!
//! Layers:
//! - [`engine`]: all detectors compiled into one multi-pattern DFA (regex-automata), one pass
//!   per text, candidates checked by validators and context words; masking per entity type.
//! - [`json`]: a streaming, JSON-aware rewriter that finds every string value of a JSON
//!   document (decoding escapes), redacts it with a [`TextRedactor`], and re-encodes it,
//!   in bounded memory and for any split of the input into chunks.
//!
//! The two meet at [`TextRedactor`], so each can be tested on its own.
pub mod engine;
pub mod json;

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
}
