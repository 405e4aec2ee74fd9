//! Structured logging to the systemd journal (`agent.log_format = "journal"`).
//!
//! Owns the journald subscriber: every tracing event becomes one journal entry through the
//! native protocol socket (`/run/systemd/journal/socket`), its fields as journal fields named in
//! upper case without a prefix (`EVENT=exchange`, `SERVICE=crm`, `OUTCOME=denied`, ...), so
//! `journalctl -u interceptor EVENT=exchange -o json` selects records without parsing text.
//! `MESSAGE`, `PRIORITY` (ERROR 3, WARN 4, INFO 6, DEBUG/TRACE 7), `SYSLOG_IDENTIFIER=interceptor` and `CODE_*` are
//! set by `tracing-journald`. Chosen over JSON on stdout because journald then indexes the
//! fields itself (JSON on stdout would be one opaque `MESSAGE` per line).
use tracing_subscriber::{EnvFilter, layer::SubscriberExt as _, util::SubscriberInitExt as _};

/// Installs the journald subscriber as the global one. Errors when the journal socket is not
/// there (not under systemd), so the caller can fall back to text on stderr and say why.
pub fn init(filter: EnvFilter) -> std::io::Result<()> {
    use tracing_journald::{Priority, PriorityMappings};
    // Syslog's meaning of the levels: INFO (exchange records, lifecycle) is "informational",
    // not "notice" (the crate's default); DEBUG and TRACE are "debug".
    let priorities = PriorityMappings {
        info: Priority::Informational,
        debug: Priority::Debug,
        ..PriorityMappings::new()
    };
    let layer = tracing_journald::layer()?
        .with_syslog_identifier("interceptor".into())
        .with_field_prefix(None)
        .with_priority_mappings(priorities);
    tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .try_init()
        .map_err(std::io::Error::other)
}
