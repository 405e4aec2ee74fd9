//! Streaming JSON-aware redaction (see the module docs of `redact`).
