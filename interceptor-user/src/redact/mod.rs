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
