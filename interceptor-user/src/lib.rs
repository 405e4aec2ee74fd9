//! The interceptor agent: an eBPF-steered, MCP-aware proxy that sits in front of MCP servers.
//!
//! Modules follow the data path:
//! - [`ebpf`]: load, attach, pin and take over the kernel programs; their maps.
//! - [`tls`]: TLS termination toward callers, re-encryption toward servers (rustls).
//! - [`mcp`]: JSON-RPC/MCP message parsing, revisions, header checks, SSE framing.
//! - [`http`]: HTTP/1.1 and HTTP/2 toward callers and servers, limits, MCP transports.
//! - [`redact`]: one-pass DFA detection and masking of personal data, JSON-aware, streaming.
//! - [`audit`]: the tamper-evident audit log (SQLite, Merkle tree, signed checkpoints).
//! - [`pipeline`]: the exchange phases later capabilities plug into, and exchange records.
//! - [`net`]: listeners, accepted connections, original destination, upstream, relay.
//! - [`identity`]: who the caller is (process, user, cgroup/unit, peer address).
//! - [`auth`]: bearer-token authentication (MCP authorization spec) and policy decisions.
//! - [`oidc`]: bearer tokens: OIDC discovery, JWKS, JWT/introspection verification.
//! - [`policy`]: roles, grants, argument constraints, purpose and lawful basis.
//! - [`approval`]: calls held until a person approves that exact call.
//! - [`control`]: the local control socket used by the CLI.
//! - [`agent`]: the `run` command: wiring, signals, graceful shutdown.
//! - [`notify`]: the systemd notification protocol (readiness, reload, watchdog).
//! - [`service`]: `install`/`uninstall` as a systemd service; the unit file.
//! - [`journal`]: structured logging to the systemd journal.
//! - [`cli`]: the command-line interface.
//! - [`config`]: the configuration file.
//! - [`error`]: which side failed, and whether to retry.
//! - [`sys`]: the only module with raw system calls (`unsafe`).
#![deny(unsafe_code)]

pub mod agent;
pub mod approval;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod control;
pub mod ebpf;
pub mod error;
pub mod http;
pub mod identity;
pub mod journal;
pub mod mcp;
pub mod net;
pub mod notify;
pub mod oidc;
pub mod pipeline;
pub mod policy;
pub mod redact;
pub mod service;
pub mod sys;
pub mod tls;
