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
//! - [`headers`]: response headers, each value redacted as a text under the header's name.
//!
//! The two meet at [`TextRedactor`], so each can be tested on its own.
pub mod engine;
pub mod headers;
pub mod json;
pub mod sample;
pub mod stream;
pub mod view;

mod redactor;

pub use redactor::{Finding, Head, Pseudonym, Sieve, TextRedactor};
