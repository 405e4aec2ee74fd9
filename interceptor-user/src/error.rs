//! Error taxonomy of the data path, in the style of pingora: every failure says which side
//! caused it (the client, the upstream server, or the agent itself) and whether retrying the
//! same request elsewhere could help. Logs and audit records carry both.
use std::fmt;

/// Which side of a proxied exchange failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// The caller sent something wrong, went away, or is not allowed.
    Client,
    /// The real server could not be reached or misbehaved.
    Upstream,
    /// The agent itself failed (a bug, resource exhaustion, kernel state).
    Internal,
}

#[derive(Debug)]
pub struct ProxyError {
    pub side: Side,
    pub retryable: bool,
    pub what: String,
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ProxyError {
    pub fn client(what: impl Into<String>) -> Self {
        Self::new(Side::Client, false, what)
    }
    pub fn upstream(what: impl Into<String>, retryable: bool) -> Self {
        Self::new(Side::Upstream, retryable, what)
    }
    pub fn internal(what: impl Into<String>) -> Self {
        Self::new(Side::Internal, false, what)
    }
    fn new(side: Side, retryable: bool, what: impl Into<String>) -> Self {
        ProxyError {
            side,
            retryable,
            what: what.into(),
            source: None,
        }
    }
    pub fn because(mut self, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(e));
        self
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = match self.side {
            Side::Client => "client",
            Side::Upstream => "upstream",
            Side::Internal => "internal",
        };
        write!(f, "{side} error: {}", self.what)?;
        if let Some(s) = &self.source {
            write!(f, ": {s}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ProxyError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_which_side() {
        let e = ProxyError::upstream("connect 10.0.0.1:80", true)
            .because(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(e.side, Side::Upstream);
        assert!(e.retryable);
        let s = e.to_string();
        assert!(
            s.starts_with("upstream error: connect 10.0.0.1:80: "),
            "{s}"
        );
    }
}
