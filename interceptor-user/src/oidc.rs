//! Caller identity from OAuth 2.0 / OpenID Connect bearer tokens.
