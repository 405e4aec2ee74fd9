//! The detection and masking engine (see the module docs of `redact`).
