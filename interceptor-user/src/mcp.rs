//! MCP and JSON-RPC 2.0 on the wire: message parsing and classification, protocol revisions,
//! header/body consistency, SSE framing and streaming envelope scanning. Pure, no I/O.
//!
//! # What is implemented, and where each rule comes from
//!
//! Sources (read from the specification repository `modelcontextprotocol/modelcontextprotocol`,
//! `docs/specification/<revision>/...`, and from the Python SDK `mcp` 2.3.0 / `mcp_types`
//! 2.3.0, which implements both eras):
//!
//! * **JSON-RPC 2.0 envelope** (jsonrpc.org/specification; MCP `basic/index.mdx` of every
//!   revision): `"jsonrpc"` is exactly `"2.0"`; a request has a string `method` and an `id`
//!   that MCP restricts to a string or an integer and, unlike base JSON-RPC, never `null`; a
//!   notification has a `method` and no `id`; a response has exactly one of `result` and
//!   `error`; an error response's `id` may be `null`/absent only when the request's id could
//!   not be read; `error.code` is an integer and `error.message` a string. `params`, when
//!   present, is a structured value (object or array). Codes: `-32700` parse error, `-32600`
//!   invalid request, `-32601` method not found, `-32602` invalid params, `-32603` internal
//!   error; MCP reserves `-32020..=-32099` and (2026-07-28) defines `-32020` HeaderMismatch,
//!   `-32021` MissingRequiredClientCapability, `-32022` UnsupportedProtocolVersion.
//! * **Batches**: added in 2025-03-26 ("MCP implementations MUST support receiving JSON-RPC
//!   batches"), removed in 2025-06-18 (changelog, major change 1: "Remove support for JSON-RPC
//!   batching", PR #416); 2026-07-28 Streamable HTTP: "The body of the HTTP POST MUST be a
//!   single JSON-RPC request or notification". [`parse_body`] accepts batches (so a
//!   2025-03-26 peer can be understood) and [`check_headers`] rejects them whenever the
//!   declared revision forbids them. An empty batch is always invalid (JSON-RPC 2.0).
//! * **Revisions** ([`Revision`]): 2024-11-05 (HTTP+SSE transport), 2025-03-26 (Streamable
//!   HTTP, batches), 2025-06-18 (`MCP-Protocol-Version` header on every request after
//!   `initialize`; without it a server "SHOULD assume protocol version 2025-03-26"),
//!   2025-11-25, and 2026-07-28, the first *modern* (stateless) revision: no `initialize`
//!   handshake, no sessions, every request carries
//!   `params._meta["io.modelcontextprotocol/protocolVersion"]` (required) and
//!   `..../clientCapabilities` (required; a request missing a required field is rejected with
//!   `-32602`), `server/discover` replaces the handshake for learning supported versions
//!   (`basic/index.mdx` "Per-request protocol fields", `basic/versioning.mdx`).
//! * **Request metadata headers, 2026-07-28** (`basic/transports/streamable-http.mdx`,
//!   "Request Metadata" and "Server Validation"; mirrored by the Python SDK's
//!   `mcp.shared.inbound.classify_inbound_request`):
//!   - every POST MUST carry `MCP-Protocol-Version`, and it MUST equal the body's
//!     `_meta` protocol version, else `400` + HeaderMismatch (`-32020`);
//!   - `Mcp-Method` (= body `method`) is required for all requests;
//!   - `Mcp-Name` (= `params.name` for `tools/call` and `prompts/get`, `params.uri` for
//!     `resources/read`) is required for those three methods;
//!   - `Mcp-Name` may use the sentinel `=?base64?<canonical base64 of UTF-8>?=` and MUST be
//!     decoded before comparison; a malformed sentinel never matches;
//!   - header *values* are case-sensitive; characters outside RFC 9110 field-value text are a
//!     validation failure;
//!   - header requirements for notification POSTs are "not defined by this revision".
//!
//!   The note for intermediaries says policy taken from mirrored headers is only sound when
//!   the version requires header/body validation, which is exactly why [`check_headers`]
//!   exists. It applies these rules *whenever the headers are present*, whatever the
//!   revision, and fails closed where the spec is silent (see [`check_headers`] for the exact
//!   list). `Mcp-Param-*` headers need the tool's `inputSchema` and are not checked here.
//! * **Server-Sent Events** (WHATWG HTML "Server-sent events", §9.2.6 "Interpreting an event
//!   stream"): UTF-8, optional leading BOM stripped, lines end in CRLF, LF or CR; `:` starts
//!   a comment; `field: value` with one optional space stripped; `data` lines joined with LF;
//!   an empty line dispatches; `id` containing NUL is ignored; `retry` only when all ASCII
//!   digits; a block with no `data` is not dispatched as a message (its `id`/`retry` still
//!   take effect, so [`SseParser`] reports it with [`SseEvent::dataless`] set). An unfinished
//!   event at end of stream is discarded.
//! * **Legacy HTTP+SSE, 2024-11-05** (`2024-11-05/basic/transports.mdx`): the server's first
//!   event is `event: endpoint` whose data is the URI the client POSTs messages to; the Python
//!   SDK sends `<path>?session_id=<hex>`, the TypeScript SDK `<path>?sessionId=<id>`, and
//!   clients resolve it against the SSE URL (`urljoin`). See [`LegacyEndpoint`].
//!
//! Design choices beyond the spec, made because this module feeds policy decisions:
//! duplicate object keys are rejected (different JSON parsers keep different copies, so a
//! duplicated `method` or `name` could show the policy one thing and the server another);
//! JSON nesting is bounded *before* the tree is built; everything that streams (SSE,
//! [`EnvelopeScanner`]) runs in bounded memory.

pub mod sse_stream;
pub use sse_stream::{SsePiece, SseTokenizer};

use std::convert::Infallible;
use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

// ---------------------------------------------------------------------------------------------
// Error codes, well-known names
// ---------------------------------------------------------------------------------------------

/// JSON-RPC 2.0: invalid JSON was received.
pub const PARSE_ERROR: i64 = -32700;
/// JSON-RPC 2.0: the JSON sent is not a valid request object.
pub const INVALID_REQUEST: i64 = -32600;
/// JSON-RPC 2.0: the method does not exist / is not available.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// JSON-RPC 2.0: invalid method parameters.
pub const INVALID_PARAMS: i64 = -32602;
/// JSON-RPC 2.0: internal error.
pub const INTERNAL_ERROR: i64 = -32603;
/// MCP 2026-07-28: HTTP headers disagree with the body, or a required header is missing.
pub const HEADER_MISMATCH: i64 = -32020;
/// MCP 2026-07-28: the request needs a client capability the client did not declare.
pub const MISSING_REQUIRED_CLIENT_CAPABILITY: i64 = -32021;
/// MCP 2026-07-28: the requested protocol version is not supported.
pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;

/// `_meta` key carrying the per-request protocol version (2026-07-28).
pub const PROTOCOL_VERSION_META_KEY: &str = "io.modelcontextprotocol/protocolVersion";
/// `_meta` key carrying the per-request client capabilities (2026-07-28).
pub const CLIENT_CAPABILITIES_META_KEY: &str = "io.modelcontextprotocol/clientCapabilities";
/// HTTP header carrying the protocol version (2025-06-18 and later).
pub const HEADER_PROTOCOL_VERSION: &str = "mcp-protocol-version";
/// HTTP header mirroring the JSON-RPC method (2026-07-28).
pub const HEADER_METHOD: &str = "mcp-method";
/// HTTP header mirroring the tool/prompt name or resource URI (2026-07-28).
pub const HEADER_NAME: &str = "mcp-name";
/// HTTP header carrying the session id (2025-03-26 to 2025-11-25).
pub const HEADER_SESSION_ID: &str = "mcp-session-id";

/// Methods whose `Mcp-Name` header the 2026-07-28 Streamable HTTP transport requires, with the
/// `params` key it mirrors.
pub const NAME_BEARING_METHODS: [(&str, &str); 3] = [
    ("tools/call", "name"),
    ("prompts/get", "name"),
    ("resources/read", "uri"),
];

/// serde_json refuses the 128th nested array/object ("recursion limit exceeded"); 127 levels
/// is the deepest document it can build.
const SERDE_JSON_MAX_DEPTH: usize = 127;

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Everything that can be wrong with MCP traffic, each variant mapping to a JSON-RPC code
/// ([`McpError::code`]) and an HTTP status ([`McpError::http_status`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum McpError {
    /// Not JSON (or JSON this module refuses to read, e.g. duplicate keys). `-32700`.
    #[error("parse error: {0}")]
    Parse(String),
    /// The body is larger than [`Limits::max_bytes`]. `-32600`, HTTP 413.
    #[error("body of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge { size: usize, max: usize },
    /// Arrays/objects nested deeper than allowed. `-32600`.
    #[error("JSON nested deeper than {max} levels (at byte {offset})")]
    TooDeep { max: usize, offset: usize },
    /// Valid JSON, not a valid JSON-RPC message (or not allowed here). `-32600`.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A required MCP parameter is missing or malformed. `-32602`.
    #[error("invalid params: {0}")]
    InvalidParams(String),
    /// HTTP request metadata headers disagree with the body, or are missing/malformed. `-32020`.
    #[error("header mismatch: {0}")]
    HeaderMismatch(String),
    /// A `text/event-stream` body could not be parsed. `-32603`.
    #[error("SSE stream: {0}")]
    Sse(String),
    /// One SSE event (or line) is larger than the parser's bound. `-32603`.
    #[error("SSE event exceeds {max} bytes")]
    SseEventTooLarge { max: usize },
    /// A 2024-11-05 `endpoint` event whose data is not a usable URI reference. `-32603`.
    #[error("legacy SSE endpoint: {0}")]
    Endpoint(String),
}

impl McpError {
    /// The JSON-RPC error code to answer with.
    pub fn code(&self) -> i64 {
        match self {
            McpError::Parse(_) => PARSE_ERROR,
            McpError::TooLarge { .. } | McpError::TooDeep { .. } | McpError::InvalidRequest(_) => {
                INVALID_REQUEST
            }
            McpError::InvalidParams(_) => INVALID_PARAMS,
            McpError::HeaderMismatch(_) => HEADER_MISMATCH,
            McpError::Sse(_) | McpError::SseEventTooLarge { .. } | McpError::Endpoint(_) => {
                INTERNAL_ERROR
            }
        }
    }

    /// The HTTP status a server (or this proxy) answers with: 413 for an oversized body, 502
    /// for upstream framing errors, 400 otherwise (as 2026-07-28 prescribes for header
    /// validation, missing per-request fields and malformed requests).
    pub fn http_status(&self) -> u16 {
        match self {
            McpError::TooLarge { .. } => 413,
            McpError::Sse(_) | McpError::SseEventTooLarge { .. } | McpError::Endpoint(_) => 502,
            _ => 400,
        }
    }

    /// A JSON-RPC error response carrying this error.
    pub fn to_response(&self, id: Option<&Id>) -> Bytes {
        error_response(id, self.code(), &self.to_string(), None)
    }
}

// ---------------------------------------------------------------------------------------------
// JSON-RPC messages
// ---------------------------------------------------------------------------------------------

/// A JSON-RPC id as MCP allows it: a string or an integer.
///
/// `Display` writes the id as JSON (`7`, `"abc"`), so the string `"7"` and the number `7`,
/// which are different ids, never display alike; use it as a correlation key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Id {
    Number(i64),
    String(String),
}

impl Id {
    /// The id in `v` if it is a string or an integer that fits `i64`.
    pub fn from_value(v: &Value) -> Option<Id> {
        match v {
            Value::String(s) => Some(Id::String(s.clone())),
            Value::Number(n) => n.as_i64().map(Id::Number),
            _ => None,
        }
    }

    /// The id as a JSON value.
    pub fn to_value(&self) -> Value {
        match self {
            Id::Number(n) => Value::from(*n),
            Id::String(s) => Value::String(s.clone()),
        }
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Id::Number(n) => write!(f, "{n}"),
            Id::String(s) => write!(f, "{}", Value::String(s.clone())),
        }
    }
}

impl From<i64> for Id {
    fn from(n: i64) -> Self {
        Id::Number(n)
    }
}

impl From<&str> for Id {
    fn from(s: &str) -> Self {
        Id::String(s.to_string())
    }
}

/// The four JSON-RPC message shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `method` and a non-null `id`: expects a response.
    Request,
    /// `method` and no `id`.
    Notification,
    /// `result` and `id`.
    Response,
    /// `error` (and an `id`, unless the request's id could not be read).
    ErrorResponse,
}

/// What `params._meta[io.modelcontextprotocol/protocolVersion]` held.
#[derive(Debug, Clone, PartialEq, Eq)]
enum MetaVersion {
    Absent,
    Str(String),
    NotAString,
}

/// One validated JSON-RPC message, reduced to what routing, policy and audit need. The
/// message's JSON tree stays with the caller (see [`parse_body_value`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub kind: Kind,
    /// `None` for notifications, and for error responses whose id is `null`/absent.
    pub id: Option<Id>,
    /// Requests and notifications only.
    pub method: Option<String>,
    /// Error responses only.
    pub error_code: Option<i64>,
    /// Error responses only.
    pub error_message: Option<String>,
    target: Option<String>,
    meta_version: MetaVersion,
}

impl Message {
    /// What the request acts on: `tools/call` and `prompts/get` → `params.name`;
    /// `resources/read`, `resources/subscribe`, `resources/unsubscribe` → `params.uri`;
    /// `completion/complete` → `params.ref.name` (`ref/prompt`) or `params.ref.uri`
    /// (`ref/resource`). `None` for other methods or when the field is not a string.
    pub fn target(&self) -> Option<String> {
        self.target.clone()
    }

    /// [`Message::target`] without the copy.
    pub fn target_str(&self) -> Option<&str> {
        self.target.as_deref()
    }

    /// The per-request protocol version in `params._meta` (2026-07-28), when it is a string.
    pub fn meta_protocol_version(&self) -> Option<&str> {
        match &self.meta_version {
            MetaVersion::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Requests and notifications.
    pub fn is_call(&self) -> bool {
        matches!(self.kind, Kind::Request | Kind::Notification)
    }

    /// Responses of either kind.
    pub fn is_response(&self) -> bool {
        matches!(self.kind, Kind::Response | Kind::ErrorResponse)
    }
}

/// A request body: one message, or a (non-empty) batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Single(Message),
    Batch(Vec<Message>),
}

impl Body {
    /// The message(s), in body order.
    pub fn messages(&self) -> &[Message] {
        match self {
            Body::Single(m) => std::slice::from_ref(m),
            Body::Batch(v) => v,
        }
    }

    pub fn is_batch(&self) -> bool {
        matches!(self, Body::Batch(_))
    }
}

/// Bounds applied by [`parse_body`] before any tree is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Deepest array/object nesting accepted (`{}` is depth 1). Values above 127 act as 127:
    /// serde_json cannot build deeper trees, and a deeper body is reported as
    /// [`McpError::TooDeep`] rather than as a parse error.
    pub max_depth: usize,
    /// Largest body accepted, in bytes.
    pub max_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_depth: 64,
            max_bytes: 4 * 1024 * 1024,
        }
    }
}

impl Limits {
    /// The depth bound actually enforced.
    pub fn effective_max_depth(&self) -> usize {
        self.max_depth.min(SERDE_JSON_MAX_DEPTH)
    }
}

/// Validate one JSON-RPC message (see the module docs for the rules).
pub fn parse_message(v: &Value) -> Result<Message, McpError> {
    parse_message_inner(v).map_err(McpError::InvalidRequest)
}

fn parse_message_inner(v: &Value) -> Result<Message, String> {
    let obj = v
        .as_object()
        .ok_or_else(|| format!("a message must be a JSON object, got {}", describe(v)))?;
    match obj.get("jsonrpc") {
        Some(Value::String(s)) if s == "2.0" => {}
        None => return Err("missing \"jsonrpc\" (must be \"2.0\")".into()),
        Some(other) => {
            return Err(format!(
                "\"jsonrpc\" must be \"2.0\", got {}",
                describe(other)
            ));
        }
    }
    // Outer None: no "id" member; Some(None): "id": null.
    let id: Option<Option<Id>> = match obj.get("id") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(Value::String(s)) => Some(Some(Id::String(s.clone()))),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(i) => Some(Some(Id::Number(i))),
            None => {
                return Err(format!(
                    "\"id\" must be a string or an integer that fits 64 bits, got {n}"
                ));
            }
        },
        Some(other) => {
            return Err(format!(
                "\"id\" must be a string or an integer, got {}",
                describe(other)
            ));
        }
    };
    let result = obj.get("result");
    let error = obj.get("error");

    if let Some(m) = obj.get("method") {
        let method = m
            .as_str()
            .ok_or_else(|| format!("\"method\" must be a string, got {}", describe(m)))?;
        if method.is_empty() {
            return Err("\"method\" must not be empty".into());
        }
        if result.is_some() || error.is_some() {
            return Err(format!(
                "message has \"method\" ({method:?}) and also \"{}\"; it is neither a request nor a response",
                if result.is_some() { "result" } else { "error" }
            ));
        }
        let params = obj.get("params");
        if let Some(p) = params.filter(|p| !p.is_object() && !p.is_array()) {
            return Err(format!(
                "\"params\" of {method:?} must be an object or an array, got {}",
                describe(p)
            ));
        }
        let kind = match id {
            None => Kind::Notification,
            Some(None) => return Err(format!("request {method:?} has a null \"id\"")),
            Some(Some(_)) => Kind::Request,
        };
        let params = params.and_then(Value::as_object);
        return Ok(Message {
            kind,
            id: id.flatten(),
            method: Some(method.to_string()),
            error_code: None,
            error_message: None,
            target: params.and_then(|p| target_of(method, p)),
            meta_version: meta_version_of(params),
        });
    }

    match (result, error) {
        (Some(_), Some(_)) => {
            Err("a response must carry exactly one of \"result\" and \"error\", found both".into())
        }
        (None, None) => Err(
            "missing \"method\" (so not a request or notification) and neither \"result\" nor \"error\" (so not a response)"
                .into(),
        ),
        (Some(_), None) => match id {
            Some(Some(id)) => Ok(Message {
                kind: Kind::Response,
                id: Some(id),
                method: None,
                error_code: None,
                error_message: None,
                target: None,
                meta_version: MetaVersion::Absent,
            }),
            Some(None) => Err("result response has a null \"id\"".into()),
            None => Err("result response is missing \"id\"".into()),
        },
        (None, Some(e)) => {
            let eo = e
                .as_object()
                .ok_or_else(|| format!("\"error\" must be an object, got {}", describe(e)))?;
            let code = match eo.get("code") {
                Some(Value::Number(n)) => n.as_i64().ok_or_else(|| {
                    format!("\"error.code\" must be an integer, got {n}")
                })?,
                Some(other) => {
                    return Err(format!(
                        "\"error.code\" must be an integer, got {}",
                        describe(other)
                    ));
                }
                None => return Err("\"error\" is missing \"code\"".into()),
            };
            let message = match eo.get("message") {
                Some(Value::String(s)) => s.clone(),
                Some(other) => {
                    return Err(format!(
                        "\"error.message\" must be a string, got {}",
                        describe(other)
                    ));
                }
                None => return Err("\"error\" is missing \"message\"".into()),
            };
            Ok(Message {
                kind: Kind::ErrorResponse,
                id: id.flatten(),
                method: None,
                error_code: Some(code),
                error_message: Some(message),
                target: None,
                meta_version: MetaVersion::Absent,
            })
        }
    }
}

fn target_of(method: &str, params: &Map<String, Value>) -> Option<String> {
    let s = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    match method {
        "tools/call" | "prompts/get" => s(params.get("name")),
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => s(params.get("uri")),
        "completion/complete" => {
            let r = params.get("ref")?.as_object()?;
            match r.get("type").and_then(Value::as_str) {
                Some("ref/prompt") => s(r.get("name")),
                Some("ref/resource") => s(r.get("uri")),
                _ => s(r.get("name")).or_else(|| s(r.get("uri"))),
            }
        }
        _ => None,
    }
}

/// The `params` key a method's [`Message::target`] comes from, if it has one.
fn target_key(method: &str) -> Option<&'static str> {
    match method {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => Some("uri"),
        "completion/complete" => Some("ref"),
        _ => None,
    }
}

fn meta_version_of(params: Option<&Map<String, Value>>) -> MetaVersion {
    let meta = params
        .and_then(|p| p.get("_meta"))
        .and_then(Value::as_object);
    match meta.and_then(|m| m.get(PROTOCOL_VERSION_META_KEY)) {
        None => MetaVersion::Absent,
        Some(Value::String(s)) => MetaVersion::Str(s.clone()),
        Some(_) => MetaVersion::NotAString,
    }
}

/// Parse and validate a request (or response) body: size and depth bounds first (cheap, no
/// tree), then JSON (duplicate keys refused), then JSON-RPC. Batch element errors name the
/// element's 0-based index.
pub fn parse_body(bytes: &[u8], limits: &Limits) -> Result<Body, McpError> {
    parse_body_value(bytes, limits).map(|(_, body)| body)
}

/// [`parse_body`], also returning the JSON tree (for policy or redaction that need `params`).
pub fn parse_body_value(bytes: &[u8], limits: &Limits) -> Result<(Value, Body), McpError> {
    let value = parse_json(bytes, limits)?;
    let body = match &value {
        Value::Array(items) => {
            if items.is_empty() {
                return Err(McpError::InvalidRequest(
                    "empty batch (a JSON-RPC batch must hold at least one message)".into(),
                ));
            }
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let m = parse_message_inner(item)
                    .map_err(|e| McpError::InvalidRequest(format!("batch element {i}: {e}")))?;
                out.push(m);
            }
            Body::Batch(out)
        }
        other => Body::Single(parse_message(other)?),
    };
    Ok((value, body))
}

/// Bounded JSON parsing: size, then nesting depth (byte scanner), then serde_json with
/// duplicate keys refused.
pub fn parse_json(bytes: &[u8], limits: &Limits) -> Result<Value, McpError> {
    if bytes.len() > limits.max_bytes {
        return Err(McpError::TooLarge {
            size: bytes.len(),
            max: limits.max_bytes,
        });
    }
    check_depth(bytes, limits.effective_max_depth())?;
    match serde_json::from_slice::<Strict>(bytes) {
        Ok(Strict(v)) => Ok(v),
        Err(e) => Err(McpError::Parse(e.to_string())),
    }
}

/// The deepest array/object nesting in `bytes` (`0` for a scalar, `1` for `{}` or `[1]`),
/// counting only brackets outside strings. It does not validate JSON: unbalanced input is
/// counted as it comes.
pub fn json_depth(bytes: &[u8]) -> usize {
    let mut max = 0;
    // `usize::MAX` never trips.
    let _ = depth_scan(bytes, usize::MAX, &mut max);
    max
}

/// `Err(TooDeep)` at the first bracket that opens nesting level `max + 1`.
pub fn check_depth(bytes: &[u8], max: usize) -> Result<(), McpError> {
    let mut seen = 0;
    depth_scan(bytes, max, &mut seen)
}

fn depth_scan(bytes: &[u8], max: usize, seen: &mut usize) -> Result<(), McpError> {
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                // Skip the string: to the next unescaped quote.
                i += 1;
                while i < bytes.len() {
                    match bytes[i] {
                        b'\\' => i += 2,
                        b'"' => break,
                        _ => i += 1,
                    }
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Err(McpError::TooDeep { max, offset: i });
                }
                if depth > *seen {
                    *seen = depth;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// A JSON value built by serde_json that refuses duplicate object keys.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Strict, E> {
        Ok(Strict(Value::Bool(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Strict, E> {
        Ok(Strict(Value::Number(v.into())))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Strict, E> {
        Ok(Strict(Value::Number(v.into())))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Strict, E> {
        Number::from_f64(v)
            .map(|n| Strict(Value::Number(n)))
            .ok_or_else(|| E::custom("number is not finite"))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Strict, E> {
        Ok(Strict(Value::String(v.to_string())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Strict, E> {
        Ok(Strict(Value::String(v)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Strict, E> {
        Ok(Strict(Value::Null))
    }
    fn visit_none<E: de::Error>(self) -> Result<Strict, E> {
        Ok(Strict(Value::Null))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Strict, D::Error> {
        Strict::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Strict(Value::Array(out)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            if out.contains_key(&k) {
                return Err(de::Error::custom(format_args!(
                    "duplicate key {}",
                    Value::String(truncate(&k, 64))
                )));
            }
            let Strict(v) = map.next_value()?;
            out.insert(k, v);
        }
        Ok(Strict(Value::Object(out)))
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// A short description of a JSON value for error messages.
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string {}", Value::String(truncate(s, 40))),
        Value::Array(a) => format!("an array of {} element(s)", a.len()),
        Value::Object(_) => "an object".into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Error responses
// ---------------------------------------------------------------------------------------------

/// A JSON-RPC error response: `{"jsonrpc":"2.0","id":<id or null>,"error":{"code",
/// "message"[,"data"]}}`. `id` is `null` when the request's id is unknown (JSON-RPC 2.0 §5).
pub fn error_response(id: Option<&Id>, code: i64, message: &str, data: Option<Value>) -> Bytes {
    let id = id.map_or(Value::Null, Id::to_value);
    let mut out = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"error\":{{\"code\":{code},\"message\":{}",
        Value::String(message.to_string())
    );
    if let Some(d) = data {
        out.push_str(",\"data\":");
        out.push_str(&d.to_string());
    }
    out.push_str("}}");
    Bytes::from(out)
}

// ---------------------------------------------------------------------------------------------
// Protocol revisions
// ---------------------------------------------------------------------------------------------

/// An MCP protocol revision, as named in `MCP-Protocol-Version`, `initialize` or `_meta`.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Revision {
    /// HTTP+SSE transport (`GET` SSE stream + `endpoint` event + message POSTs).
    V2024_11_05,
    /// Streamable HTTP; JSON-RPC batches allowed; no version header yet.
    V2025_03_26,
    /// Batches removed; `MCP-Protocol-Version` header on every request after `initialize`.
    V2025_06_18,
    V2025_11_25,
    /// Stateless: per-request `_meta`, `server/discover`, `Mcp-Method`/`Mcp-Name` headers.
    V2026_07_28,
    /// Anything else, kept verbatim.
    Other(String),
}

impl Revision {
    /// What a server assumes for a request without `MCP-Protocol-Version` (2025-06-18
    /// onwards: "the server SHOULD assume protocol version 2025-03-26").
    pub const ASSUMED_WITHOUT_HEADER: Revision = Revision::V2025_03_26;
    /// The newest revision this module knows.
    pub const LATEST: Revision = Revision::V2026_07_28;

    /// Never fails: unknown strings become [`Revision::Other`].
    pub fn parse(s: &str) -> Revision {
        match s {
            "2024-11-05" => Revision::V2024_11_05,
            "2025-03-26" => Revision::V2025_03_26,
            "2025-06-18" => Revision::V2025_06_18,
            "2025-11-25" => Revision::V2025_11_25,
            "2026-07-28" => Revision::V2026_07_28,
            other => Revision::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Revision::V2024_11_05 => "2024-11-05",
            Revision::V2025_03_26 => "2025-03-26",
            Revision::V2025_06_18 => "2025-06-18",
            Revision::V2025_11_25 => "2025-11-25",
            Revision::V2026_07_28 => "2026-07-28",
            Revision::Other(s) => s,
        }
    }

    pub fn is_known(&self) -> bool {
        !matches!(self, Revision::Other(_))
    }

    /// Modern (per-request metadata, no `initialize`, no sessions). Unknown revisions are
    /// not assumed to be stateless.
    pub fn is_stateless(&self) -> bool {
        matches!(self, Revision::V2026_07_28)
    }

    /// Whether JSON-RPC batches are part of this revision (only 2025-03-26). Unknown
    /// revisions: no.
    pub fn allows_batch(&self) -> bool {
        matches!(self, Revision::V2025_03_26)
    }

    /// Whether clients of this revision send `MCP-Protocol-Version` on HTTP.
    pub fn has_version_header(&self) -> bool {
        matches!(
            self,
            Revision::V2025_06_18 | Revision::V2025_11_25 | Revision::V2026_07_28
        )
    }

    /// Whether `Mcp-Method`/`Mcp-Name` are required on requests.
    pub fn requires_routing_headers(&self) -> bool {
        self.is_stateless()
    }

    /// Whether this revision's HTTP transport is the deprecated HTTP+SSE one.
    pub fn uses_legacy_sse(&self) -> bool {
        matches!(self, Revision::V2024_11_05)
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Revision {
    type Err = Infallible;
    fn from_str(s: &str) -> Result<Self, Infallible> {
        Ok(Revision::parse(s))
    }
}

// ---------------------------------------------------------------------------------------------
// Header / body consistency
// ---------------------------------------------------------------------------------------------

/// The three routing headers of a request, read from a header map with duplicates refused
/// (a first-copy reader and a last-copy reader would disagree).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutingHeaders {
    pub protocol_version: Option<String>,
    pub method: Option<String>,
    pub name: Option<String>,
}

impl RoutingHeaders {
    pub fn from_headers(headers: &http::HeaderMap) -> Result<RoutingHeaders, McpError> {
        let one = |name: &str| -> Result<Option<String>, McpError> {
            let mut it = headers.get_all(name).iter();
            let Some(first) = it.next() else {
                return Ok(None);
            };
            if it.next().is_some() {
                return Err(McpError::HeaderMismatch(format!(
                    "{} header appears more than once",
                    display_header(name)
                )));
            }
            let s = first.to_str().map_err(|_| {
                McpError::HeaderMismatch(format!(
                    "{} header value is not visible ASCII",
                    display_header(name)
                ))
            })?;
            Ok(Some(s.to_string()))
        };
        Ok(RoutingHeaders {
            protocol_version: one(HEADER_PROTOCOL_VERSION)?,
            method: one(HEADER_METHOD)?,
            name: one(HEADER_NAME)?,
        })
    }

    /// [`check_headers`] with these headers.
    pub fn check(&self, body: &Body) -> Result<Revision, McpError> {
        check_headers(
            self.protocol_version.as_deref(),
            self.method.as_deref(),
            self.name.as_deref(),
            body,
        )
    }
}

fn display_header(lower: &str) -> &'static str {
    match lower {
        HEADER_PROTOCOL_VERSION => "MCP-Protocol-Version",
        HEADER_METHOD => "Mcp-Method",
        HEADER_NAME => "Mcp-Name",
        _ => "routing",
    }
}

/// RFC 9110 field-value text as MCP's value encoding restricts it: visible ASCII, space, tab.
fn header_value_ok(v: &str) -> bool {
    v.bytes().all(|b| b == b'\t' || (0x20..=0x7e).contains(&b))
}

/// Check a POST's `MCP-Protocol-Version`, `Mcp-Method` and `Mcp-Name` header values against
/// its parsed body, and return the revision the request is to be handled under (the header's;
/// without it, [`Revision::ASSUMED_WITHOUT_HEADER`]).
///
/// Rules (2026-07-28 Streamable HTTP "Request Metadata"/"Server Validation", applied
/// whenever the headers are present; `Err` means reject with HTTP 400):
///
/// 1. A header value with characters outside visible ASCII/space/tab → HeaderMismatch.
/// 2. Batch bodies: `Mcp-Method`/`Mcp-Name` present → HeaderMismatch (one header cannot
///    describe several messages); a declared revision other than 2025-03-26 → InvalidRequest
///    (batching was removed in 2025-06-18 and an unknown revision is not trusted with it); an
///    element carrying a `_meta` protocol version → InvalidRequest (modern revisions have no
///    batches).
/// 3. Body `_meta` protocol version present: the header must be present and equal, else
///    HeaderMismatch (a body-routed dual-era server would serve it as modern while a
///    header-routed intermediary sees a legacy request); present but not a string →
///    InvalidParams.
/// 4. Header says 2026-07-28 and the body is a request without the `_meta` protocol version →
///    InvalidParams (`-32602`, as the spec prescribes for missing per-request fields).
/// 5. Responses: `Mcp-Method`/`Mcp-Name` present → HeaderMismatch; under 2026-07-28 →
///    InvalidRequest ("The client MUST NOT send JSON-RPC responses").
/// 6. `Mcp-Method`, when present, must equal the body's `method` byte for byte; it is
///    required on 2026-07-28 requests (not on notifications, for which that revision defines
///    no header requirements).
/// 7. `Mcp-Name`, when present, is decoded (base64 sentinel; malformed → HeaderMismatch) and
///    must equal the body's [`Message::target`]; a present `Mcp-Name` whose body value is
///    absent, or on a method that names nothing, is a HeaderMismatch (fail closed: policy
///    might have been decided on it). It is required on 2026-07-28 `tools/call`,
///    `prompts/get` and `resources/read` requests.
pub fn check_headers(
    protocol_version: Option<&str>,
    method: Option<&str>,
    name: Option<&str>,
    body: &Body,
) -> Result<Revision, McpError> {
    for (header, value) in [
        (HEADER_PROTOCOL_VERSION, protocol_version),
        (HEADER_METHOD, method),
        (HEADER_NAME, name),
    ] {
        if value.is_some_and(|v| !header_value_ok(v)) {
            return Err(McpError::HeaderMismatch(format!(
                "{} header value contains characters outside visible ASCII",
                display_header(header)
            )));
        }
    }
    let declared = protocol_version.map(Revision::parse);
    let revision = declared.clone().unwrap_or(Revision::ASSUMED_WITHOUT_HEADER);
    match body {
        Body::Batch(messages) => {
            if method.is_some() || name.is_some() {
                return Err(McpError::HeaderMismatch(format!(
                    "{} header on a JSON-RPC batch of {} messages: one header cannot describe several messages",
                    if method.is_some() {
                        "Mcp-Method"
                    } else {
                        "Mcp-Name"
                    },
                    messages.len()
                )));
            }
            if let Some(rev) = declared.as_ref().filter(|r| !r.allows_batch()) {
                return Err(McpError::InvalidRequest(format!(
                    "JSON-RPC batches are not part of protocol revision {rev} (removed in 2025-06-18)"
                )));
            }
            for (i, m) in messages.iter().enumerate() {
                if m.meta_version != MetaVersion::Absent {
                    return Err(McpError::InvalidRequest(format!(
                        "batch element {i} carries a per-request protocol version in params._meta; revisions with per-request metadata do not allow batches"
                    )));
                }
            }
            Ok(revision)
        }
        Body::Single(m) => {
            check_single(protocol_version, declared.as_ref(), method, name, m)?;
            Ok(revision)
        }
    }
}

fn check_single(
    protocol_version: Option<&str>,
    declared: Option<&Revision>,
    method: Option<&str>,
    name: Option<&str>,
    m: &Message,
) -> Result<(), McpError> {
    let stateless = declared.is_some_and(Revision::is_stateless);
    match &m.meta_version {
        MetaVersion::NotAString => {
            return Err(McpError::InvalidParams(format!(
                "params._meta[{PROTOCOL_VERSION_META_KEY:?}] must be a string"
            )));
        }
        MetaVersion::Str(bv) => match protocol_version {
            None => {
                return Err(McpError::HeaderMismatch(format!(
                    "MCP-Protocol-Version header is missing but the body declares protocol version {bv:?} in params._meta"
                )));
            }
            Some(hv) if hv != bv => {
                return Err(McpError::HeaderMismatch(format!(
                    "MCP-Protocol-Version header {hv:?} does not match the body's params._meta protocol version {bv:?}"
                )));
            }
            Some(_) => {}
        },
        MetaVersion::Absent => {
            if stateless && m.kind == Kind::Request {
                return Err(McpError::InvalidParams(format!(
                    "request lacks params._meta[{PROTOCOL_VERSION_META_KEY:?}], which protocol revision 2026-07-28 requires on every request"
                )));
            }
        }
    }

    let body_method = match (&m.kind, m.method.as_deref()) {
        (Kind::Request | Kind::Notification, Some(bm)) => bm,
        _ => {
            if method.is_some() || name.is_some() {
                return Err(McpError::HeaderMismatch(format!(
                    "{} header on a JSON-RPC response, which has no method",
                    if method.is_some() {
                        "Mcp-Method"
                    } else {
                        "Mcp-Name"
                    }
                )));
            }
            if stateless {
                return Err(McpError::InvalidRequest(
                    "clients must not POST JSON-RPC responses in protocol revision 2026-07-28"
                        .into(),
                ));
            }
            return Ok(());
        }
    };
    let required = stateless && m.kind == Kind::Request;

    match method {
        Some(h) if h != body_method => {
            return Err(McpError::HeaderMismatch(format!(
                "Mcp-Method header {h:?} does not match the body's method {body_method:?}"
            )));
        }
        None if required => {
            return Err(McpError::HeaderMismatch(format!(
                "Mcp-Method header is required by protocol revision 2026-07-28 but missing (body method {body_method:?})"
            )));
        }
        _ => {}
    }

    match name {
        Some(h) => {
            let decoded = decode_header_value(h).ok_or_else(|| {
                McpError::HeaderMismatch(
                    "Mcp-Name header carries a malformed base64 sentinel value".into(),
                )
            })?;
            match (m.target_str(), target_key(body_method)) {
                (Some(t), _) if t == decoded => {}
                (Some(t), key) => {
                    return Err(McpError::HeaderMismatch(format!(
                        "Mcp-Name header {} does not match the body's {} {}",
                        Value::String(truncate(&decoded, 200)),
                        key.unwrap_or("target"),
                        Value::String(truncate(t, 200)),
                    )));
                }
                (None, Some(key)) => {
                    return Err(McpError::HeaderMismatch(format!(
                        "Mcp-Name header is present but the body of {body_method:?} carries no string params.{key}"
                    )));
                }
                (None, None) => {
                    return Err(McpError::HeaderMismatch(format!(
                        "Mcp-Name header is present but method {body_method:?} names no tool, prompt or resource"
                    )));
                }
            }
        }
        None => {
            let needed = NAME_BEARING_METHODS
                .iter()
                .find(|(mm, _)| required && *mm == body_method);
            if let Some((_, key)) = needed {
                return Err(McpError::HeaderMismatch(format!(
                    "Mcp-Name header is required for {body_method:?} by protocol revision 2026-07-28 but missing (body params.{key})"
                )));
            }
        }
    }
    Ok(())
}

const B64_ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(input: &[u8]) -> String {
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b1 = chunk.get(1).copied().unwrap_or(0);
        let b2 = chunk.get(2).copied().unwrap_or(0);
        let n = (u32::from(chunk[0]) << 16) | (u32::from(b1) << 8) | u32::from(b2);
        let sym = |shift: u32| char::from(B64_ALPHABET[((n >> shift) & 63) as usize]);
        out.push(sym(18));
        out.push(sym(12));
        out.push(if chunk.len() > 1 { sym(6) } else { '=' });
        out.push(if chunk.len() > 2 { sym(0) } else { '=' });
    }
    out
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let groups = bytes.len() / 4;
    let mut out = Vec::with_capacity(groups * 3);
    for (g, chunk) in bytes.chunks(4).enumerate() {
        let mut n: u32 = 0;
        let mut pad = 0;
        for (i, &c) in chunk.iter().enumerate() {
            let v = match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                b'=' if g + 1 == groups && i >= 2 => {
                    pad += 1;
                    0
                }
                _ => return None,
            };
            if pad > 0 && c != b'=' {
                return None;
            }
            n = (n << 6) | u32::from(v);
        }
        out.push((n >> 16) as u8);
        if pad < 2 {
            out.push((n >> 8) as u8);
        }
        if pad < 1 {
            out.push(n as u8);
        }
    }
    Some(out)
}

/// Decode an `Mcp-Name`/`Mcp-Param-*` header value: `=?base64?<payload>?=` is canonical
/// base64 of UTF-8; anything else is the value itself. `None` for a malformed sentinel
/// (bad or non-canonical base64, or not UTF-8), which must never match a body value.
pub fn decode_header_value(v: &str) -> Option<String> {
    match v
        .strip_prefix("=?base64?")
        .and_then(|rest| rest.strip_suffix("?="))
    {
        None => Some(v.to_string()),
        Some(payload) => {
            let raw = base64_decode(payload)?;
            if base64_encode(&raw) != payload {
                return None;
            }
            String::from_utf8(raw).ok()
        }
    }
}

/// Encode a value for `Mcp-Name`/`Mcp-Param-*`: verbatim when it is printable ASCII without
/// leading/trailing spaces and does not itself look like the sentinel; base64 sentinel
/// otherwise.
pub fn encode_header_value(v: &str) -> String {
    let plain = v.bytes().all(|b| (0x20..=0x7e).contains(&b))
        && v.trim_matches(' ') == v
        && !(v.starts_with("=?base64?") && v.ends_with("?=") && v.len() >= 11);
    if plain {
        v.to_string()
    } else {
        format!("=?base64?{}?=", base64_encode(v.as_bytes()))
    }
}

// ---------------------------------------------------------------------------------------------
// Server-Sent Events
// ---------------------------------------------------------------------------------------------

/// One event block of a `text/event-stream`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event` field (`None`: the default, `message`).
    pub event: Option<String>,
    /// The `data` lines joined with `\n`.
    pub data: String,
    /// The `id` field, when this block had one (not inherited from earlier blocks).
    pub id: Option<String>,
    /// The `retry` field (reconnection delay, ms), when this block had a valid one.
    pub retry: Option<u64>,
    /// The block had no `data` field (only `id`/`retry`): browsers do not dispatch it, and
    /// [`encode`] writes no data line for it.
    pub dataless: bool,
}

impl SseEvent {
    /// A plain `message` event.
    pub fn message(data: impl Into<String>) -> SseEvent {
        SseEvent {
            data: data.into(),
            ..SseEvent::default()
        }
    }

    /// See [`encode`].
    pub fn encode(&self) -> Bytes {
        encode(self)
    }
}

/// Write an event back out: `event:`, `id:`, `retry:`, one `data:` line per line of `data`
/// (split on `\n`, `\r\n` or `\r`), then a blank line. Line breaks in `event`/`id` cannot be
/// represented and are dropped.
pub fn encode(ev: &SseEvent) -> Bytes {
    let clean = |s: &str| s.replace(['\r', '\n'], "");
    let mut out = String::with_capacity(ev.data.len() + 32);
    if let Some(e) = &ev.event {
        out.push_str("event: ");
        out.push_str(&clean(e));
        out.push('\n');
    }
    if let Some(id) = &ev.id {
        out.push_str("id: ");
        out.push_str(&clean(id));
        out.push('\n');
    }
    if let Some(r) = ev.retry {
        out.push_str(&format!("retry: {r}\n"));
    }
    if !ev.dataless {
        let normalized;
        let data = if ev.data.contains('\r') {
            normalized = ev.data.replace("\r\n", "\n").replace('\r', "\n");
            &normalized
        } else {
            &ev.data
        };
        for line in data.split('\n') {
            if line.is_empty() {
                out.push_str("data:\n");
            } else {
                out.push_str("data: ");
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out.push('\n');
    Bytes::from(out)
}

/// Incremental `text/event-stream` parser with bounded memory: the unfinished line plus the
/// event being assembled never exceed `max_event_bytes`. After an error every later `push`
/// returns the same error.
#[derive(Debug, Clone)]
pub struct SseParser {
    max_event_bytes: usize,
    line: Vec<u8>,
    after_cr: bool,
    first_line: bool,
    data: String,
    has_data: bool,
    event: Option<String>,
    id: Option<String>,
    retry: Option<u64>,
    failed: Option<McpError>,
}

impl SseParser {
    pub fn new(max_event_bytes: usize) -> SseParser {
        SseParser {
            max_event_bytes,
            line: Vec::new(),
            after_cr: false,
            first_line: true,
            data: String::new(),
            has_data: false,
            event: None,
            id: None,
            retry: None,
            failed: None,
        }
    }

    /// Feed the next bytes; returns the events completed by them.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, McpError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let mut out = Vec::new();
        match self.feed(chunk, &mut out) {
            Ok(()) => Ok(out),
            Err(e) => {
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Whether an unfinished line or event is buffered (at end of stream it is discarded).
    pub fn has_partial(&self) -> bool {
        !self.line.is_empty()
            || self.has_data
            || self.event.is_some()
            || self.id.is_some()
            || self.retry.is_some()
    }

    fn feed(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) -> Result<(), McpError> {
        let mut rest = chunk;
        if self.after_cr && !rest.is_empty() {
            self.after_cr = false;
            if rest[0] == b'\n' {
                rest = &rest[1..];
            }
        }
        while !rest.is_empty() {
            match rest.iter().position(|&b| b == b'\n' || b == b'\r') {
                None => {
                    self.append(rest)?;
                    break;
                }
                Some(p) => {
                    self.append(&rest[..p])?;
                    let cr = rest[p] == b'\r';
                    rest = &rest[p + 1..];
                    if cr {
                        if rest.is_empty() {
                            self.after_cr = true;
                        } else if rest[0] == b'\n' {
                            rest = &rest[1..];
                        }
                    }
                    self.end_line(out)?;
                }
            }
        }
        Ok(())
    }

    fn buffered(&self) -> usize {
        self.line.len()
            + self.data.len()
            + self.event.as_ref().map_or(0, String::len)
            + self.id.as_ref().map_or(0, String::len)
    }

    fn append(&mut self, bytes: &[u8]) -> Result<(), McpError> {
        if self.buffered() + bytes.len() > self.max_event_bytes {
            return Err(McpError::SseEventTooLarge {
                max: self.max_event_bytes,
            });
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn end_line(&mut self, out: &mut Vec<SseEvent>) -> Result<(), McpError> {
        let mut line = std::mem::take(&mut self.line);
        if self.first_line {
            self.first_line = false;
            if line.starts_with(b"\xEF\xBB\xBF") {
                line.drain(..3);
            }
        }
        let text = String::from_utf8(line).map_err(|e| {
            McpError::Sse(format!(
                "line is not valid UTF-8 (after {} valid bytes)",
                e.utf8_error().valid_up_to()
            ))
        })?;
        if text.is_empty() {
            self.dispatch(out);
            return Ok(());
        }
        if text.starts_with(':') {
            return Ok(());
        }
        let (field, value) = match text.find(':') {
            Some(i) => {
                let v = &text[i + 1..];
                (&text[..i], v.strip_prefix(' ').unwrap_or(v))
            }
            None => (text.as_str(), ""),
        };
        match field {
            "event" => self.event = Some(value.to_string()),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
                self.has_data = true;
                if self.buffered() > self.max_event_bytes {
                    return Err(McpError::SseEventTooLarge {
                        max: self.max_event_bytes,
                    });
                }
            }
            "id" if !value.contains('\0') => self.id = Some(value.to_string()),
            "retry" => {
                let digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
                if let Some(n) = value.parse().ok().filter(|_| digits) {
                    self.retry = Some(n);
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        let event = self.event.take();
        let id = self.id.take();
        let retry = self.retry.take();
        let mut data = std::mem::take(&mut self.data);
        let has_data = std::mem::replace(&mut self.has_data, false);
        if has_data {
            data.pop();
            out.push(SseEvent {
                event,
                data,
                id,
                retry,
                dataless: false,
            });
        } else if id.is_some() || retry.is_some() {
            out.push(SseEvent {
                event,
                data,
                id,
                retry,
                dataless: true,
            });
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Legacy HTTP+SSE (2024-11-05)
// ---------------------------------------------------------------------------------------------

/// Where a 2024-11-05 client POSTs its messages, from the server's `endpoint` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyEndpoint {
    /// `scheme://authority` (or `//authority`) when the event named one.
    pub origin: Option<String>,
    /// Absolute path, dot segments removed, still percent-encoded.
    pub path: String,
    /// The query string without `?`.
    pub query: Option<String>,
    /// `session_id` (Python SDK) or `sessionId` (TypeScript SDK) query parameter,
    /// percent-decoded.
    pub session_id: Option<String>,
}

impl LegacyEndpoint {
    /// Parse an `endpoint` event's data; relative paths are resolved against `/`. `None` when
    /// it is not a usable URI reference.
    pub fn parse(data: &str) -> Option<LegacyEndpoint> {
        Self::parse_with_base(data, "/").ok()
    }

    /// Parse an `endpoint` event's data, resolving a relative reference against the path of
    /// the SSE request that carried it (as clients do with `urljoin`).
    pub fn parse_with_base(data: &str, base_path: &str) -> Result<LegacyEndpoint, McpError> {
        if data.is_empty() {
            return Err(McpError::Endpoint("empty endpoint event".into()));
        }
        if data.bytes().any(|b| b <= 0x20 || b == 0x7f) {
            return Err(McpError::Endpoint(format!(
                "endpoint {} contains whitespace or control characters",
                Value::String(truncate(data, 100))
            )));
        }
        let without_fragment = data.split('#').next().unwrap_or("");
        let (origin, rest) = split_origin(without_fragment)?;
        let (path_ref, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q.to_string())),
            None => (rest, None),
        };
        let merged = if path_ref.starts_with('/') {
            path_ref.to_string()
        } else if path_ref.is_empty() {
            if origin.is_some() {
                "/".to_string()
            } else {
                base_path.to_string()
            }
        } else {
            let dir = match base_path.rfind('/') {
                Some(i) => &base_path[..=i],
                None => "/",
            };
            format!("{dir}{path_ref}")
        };
        let path = remove_dot_segments(&merged);
        let session_id = query.as_deref().and_then(legacy_session_id);
        Ok(LegacyEndpoint {
            origin,
            path,
            query,
            session_id,
        })
    }

    /// Whether an HTTP request is a message POST to this endpoint: `POST`, same path, and
    /// (when the endpoint names one) the same session id.
    pub fn matches_post(&self, method: &http::Method, uri: &http::Uri) -> bool {
        if method != http::Method::POST || uri.path() != self.path {
            return false;
        }
        match &self.session_id {
            None => true,
            Some(s) => uri.query().and_then(legacy_session_id).as_ref() == Some(s),
        }
    }
}

/// Split `scheme://authority` or `//authority` off a URI reference.
fn split_origin(r: &str) -> Result<(Option<String>, &str), McpError> {
    let scheme_end = r.find("://").filter(|&i| {
        i > 0
            && r[..i].bytes().enumerate().all(|(j, b)| {
                b.is_ascii_alphabetic() || (j > 0 && (b.is_ascii_digit() || b"+-.".contains(&b)))
            })
    });
    let (prefix_len, after) = match (scheme_end, r.strip_prefix("//")) {
        (Some(i), _) => (i + 3, &r[i + 3..]),
        (None, Some(rest)) => (2, rest),
        (None, None) => return Ok((None, r)),
    };
    let auth_len = after.find(['/', '?']).unwrap_or(after.len());
    if auth_len == 0 {
        return Err(McpError::Endpoint(
            "absolute endpoint without a host".into(),
        ));
    }
    let split = prefix_len + auth_len;
    Ok((Some(r[..split].to_string()), &r[split..]))
}

/// RFC 3986 §5.2.4.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let n = segments.len();
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => {
                if i + 1 == n {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if i + 1 == n {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

/// The `session_id` or `sessionId` parameter of a query string, percent-decoded.
pub fn legacy_session_id(query: &str) -> Option<String> {
    let find = |key: &str| {
        query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == key).then(|| percent_decode(v))
        })
    };
    find("session_id").or_else(|| find("sessionId")).flatten()
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

// ---------------------------------------------------------------------------------------------
// Streaming envelope scanner
// ---------------------------------------------------------------------------------------------

/// Top-level shape of a JSON body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Shape {
    /// Nothing but whitespace seen yet.
    #[default]
    Empty,
    /// One message.
    Object,
    /// A batch.
    Array,
    /// A scalar: not JSON-RPC.
    Other,
}

/// What the scanner learnt about one top-level message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvelopeMessage {
    /// The top-level `"id"`, when it is an integer or a string of at most 256 bytes.
    pub id: Option<Id>,
    /// The top-level `"method"`, when it is a string of at most 256 bytes.
    pub method: Option<String>,
    pub has_result: bool,
    pub has_error: bool,
    /// `error.code`, when it is an integer.
    pub error_code: Option<i64>,
}

/// The scanner's findings so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvelopeSummary {
    pub shape: Shape,
    /// Completed top-level messages, at most 1024 (the rest are counted in `dropped`).
    pub messages: Vec<EnvelopeMessage>,
    pub dropped: usize,
    /// The top-level value is complete.
    pub complete: bool,
    /// Malformed input (the scanner stops at the first problem).
    pub error: Option<String>,
    /// Bytes consumed.
    pub bytes: u64,
}

impl EnvelopeSummary {
    pub fn is_batch(&self) -> bool {
        self.shape == Shape::Array
    }

    /// For the request whose id displays as `id` ([`Id`]'s `Display`): `Some((is_error,
    /// error_code))` when a response to it was seen. A lone error response without an id
    /// (the server could not read the request) answers any id.
    pub fn outcome_for(&self, id: &str) -> Option<(bool, Option<i64>)> {
        let answered = |m: &EnvelopeMessage| m.has_result || m.has_error;
        if let Some(m) = self
            .messages
            .iter()
            .find(|m| answered(m) && m.id.as_ref().is_some_and(|i| i.to_string() == id))
        {
            return Some((m.has_error, m.error_code));
        }
        match self.messages.as_slice() {
            [m] if self.shape == Shape::Object && m.id.is_none() && m.has_error => {
                Some((true, m.error_code))
            }
            _ => None,
        }
    }
}

const ENVELOPE_MAX_MESSAGES: usize = 1024;
const ENVELOPE_VALUE_CAPTURE: usize = 256;
const ENVELOPE_KEY_CAPTURE: usize = 8;
const ENVELOPE_NUMBER_CAPTURE: usize = 32;
const ENVELOPE_DEFAULT_MAX_DEPTH: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    None,
    Id,
    Method,
    Result,
    Error,
    Code,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lex {
    /// A value must come (start, after `:`, after `,` in an array).
    Value,
    /// After `[`.
    ValueOrClose,
    /// After `{`.
    KeyOrClose,
    /// After `,` in an object.
    Key,
    Colon,
    AfterValue,
    Str,
    Num,
    Lit(&'static [u8], usize),
    Done,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Esc {
    None,
    Backslash,
    Unicode(u8, u16),
}

/// Reads a JSON-RPC response body as it streams past, in bounded memory, and notes the
/// top-level shape, each top-level message's `id`, `method`, `result`/`error` presence and
/// `error.code`. Keys are compared after unescaping (`"\u0069d"` is `"id"`); keys of nested
/// objects are never mistaken for top-level ones. It is not a full validator (numbers and
/// control characters in strings are not checked) but stops at structural errors.
#[derive(Debug, Clone)]
pub struct EnvelopeScanner {
    lex: Lex,
    /// `true` for objects.
    stack: Vec<bool>,
    max_depth: usize,
    shape: Shape,
    msg_depth: usize,
    cur: Option<EnvelopeMessage>,
    messages: Vec<EnvelopeMessage>,
    dropped: usize,
    error_depth: Option<usize>,
    str_is_key: bool,
    esc: Esc,
    high: Option<u16>,
    capture: Option<Vec<u8>>,
    capture_limit: usize,
    capture_bad: bool,
    key_role: Role,
    value_role: Role,
    offset: u64,
    complete: bool,
    error: Option<String>,
}

impl Default for EnvelopeScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl EnvelopeScanner {
    pub fn new() -> EnvelopeScanner {
        Self::with_max_depth(ENVELOPE_DEFAULT_MAX_DEPTH)
    }

    /// Nesting deeper than `max_depth` stops the scan with an error (the stack is the only
    /// memory that grows with the input).
    pub fn with_max_depth(max_depth: usize) -> EnvelopeScanner {
        EnvelopeScanner {
            lex: Lex::Value,
            stack: Vec::new(),
            max_depth,
            shape: Shape::Empty,
            msg_depth: 1,
            cur: None,
            messages: Vec::new(),
            dropped: 0,
            error_depth: None,
            str_is_key: false,
            esc: Esc::None,
            high: None,
            capture: None,
            capture_limit: 0,
            capture_bad: false,
            key_role: Role::None,
            value_role: Role::None,
            offset: 0,
            complete: false,
            error: None,
        }
    }

    /// Consume the next bytes of the body.
    pub fn push(&mut self, chunk: &[u8]) {
        let mut i = 0;
        while i < chunk.len() {
            if self.lex == Lex::Failed {
                return;
            }
            if self.lex == Lex::Str && self.esc == Esc::None {
                // Fast path through string contents.
                let rest = &chunk[i..];
                let n = rest
                    .iter()
                    .position(|&b| b == b'"' || b == b'\\')
                    .unwrap_or(rest.len());
                if n > 0 {
                    self.capture_raw(&rest[..n]);
                    i += n;
                    self.offset += n as u64;
                    continue;
                }
            }
            self.step(chunk[i]);
            i += 1;
            self.offset += 1;
        }
    }

    /// What has been learnt so far.
    pub fn summary(&self) -> EnvelopeSummary {
        EnvelopeSummary {
            shape: self.shape,
            messages: self.messages.clone(),
            dropped: self.dropped,
            complete: self.complete,
            error: self.error.clone(),
            bytes: self.offset,
        }
    }

    fn fail(&mut self, what: &str) {
        self.error = Some(format!("{what} at byte {}", self.offset));
        self.lex = Lex::Failed;
    }

    fn step(&mut self, b: u8) {
        match self.lex {
            Lex::Str => return self.string_byte(b),
            Lex::Num => {
                if matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') {
                    self.capture_raw(&[b]);
                    return;
                }
                self.end_number();
                // `b` ends the number and is read again below.
            }
            Lex::Lit(word, pos) => {
                if b != word[pos] {
                    return self.fail("invalid literal");
                }
                if pos + 1 == word.len() {
                    self.value_role = Role::None;
                    self.end_value();
                } else {
                    self.lex = Lex::Lit(word, pos + 1);
                }
                return;
            }
            _ => {}
        }
        if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            return;
        }
        match self.lex {
            Lex::Value => self.begin_value(b),
            Lex::ValueOrClose => {
                if b == b']' {
                    self.close(false);
                } else {
                    self.begin_value(b);
                }
            }
            Lex::KeyOrClose | Lex::Key => {
                if b == b'}' && self.lex == Lex::KeyOrClose {
                    self.close(true);
                } else if b == b'"' {
                    self.begin_key();
                } else {
                    self.fail("expected an object key");
                }
            }
            Lex::Colon => {
                if b == b':' {
                    self.lex = Lex::Value;
                } else {
                    self.fail("expected ':'");
                }
            }
            Lex::AfterValue => match (self.stack.last(), b) {
                (Some(true), b',') => self.lex = Lex::Key,
                (Some(false), b',') => self.lex = Lex::Value,
                (Some(true), b'}') => self.close(true),
                (Some(false), b']') => self.close(false),
                _ => self.fail("expected ',' or a closing bracket"),
            },
            Lex::Done => self.fail("trailing data after the top-level value"),
            Lex::Str | Lex::Num | Lex::Lit(..) | Lex::Failed => {}
        }
    }

    fn begin_value(&mut self, b: u8) {
        let role = std::mem::replace(&mut self.key_role, Role::None);
        let depth = self.stack.len();
        if depth == 0 {
            self.shape = match b {
                b'{' => Shape::Object,
                b'[' => Shape::Array,
                _ => Shape::Other,
            };
            self.msg_depth = if self.shape == Shape::Array { 2 } else { 1 };
        }
        if let Some(c) = self.cur.as_mut() {
            match role {
                Role::Result => c.has_result = true,
                Role::Error => c.has_error = true,
                Role::Id => c.id = None,
                Role::Method => c.method = None,
                _ => {}
            }
        }
        match b {
            b'{' => {
                if depth + 1 == self.msg_depth {
                    self.cur = Some(EnvelopeMessage::default());
                }
                if role == Role::Error {
                    self.error_depth = Some(depth + 1);
                }
                self.open(true);
            }
            b'[' => self.open(false),
            b'"' => {
                self.value_role = role;
                self.str_is_key = false;
                self.start_capture(
                    matches!(role, Role::Id | Role::Method),
                    ENVELOPE_VALUE_CAPTURE,
                );
                self.lex = Lex::Str;
            }
            b'-' | b'0'..=b'9' => {
                self.value_role = role;
                self.start_capture(
                    matches!(role, Role::Id | Role::Code),
                    ENVELOPE_NUMBER_CAPTURE,
                );
                self.capture_raw(&[b]);
                self.lex = Lex::Num;
            }
            b't' => self.lex = Lex::Lit(b"true", 1),
            b'f' => self.lex = Lex::Lit(b"false", 1),
            b'n' => self.lex = Lex::Lit(b"null", 1),
            _ => self.fail("expected a JSON value"),
        }
    }

    fn open(&mut self, object: bool) {
        if self.stack.len() >= self.max_depth {
            return self.fail(&format!("nesting deeper than {}", self.max_depth));
        }
        self.stack.push(object);
        self.lex = if object {
            Lex::KeyOrClose
        } else {
            Lex::ValueOrClose
        };
    }

    fn close(&mut self, object: bool) {
        let depth = self.stack.len();
        self.stack.pop();
        if self.error_depth == Some(depth) {
            self.error_depth = None;
        }
        let finished = if object && depth == self.msg_depth {
            self.cur.take()
        } else {
            None
        };
        if let Some(m) = finished {
            if self.messages.len() < ENVELOPE_MAX_MESSAGES {
                self.messages.push(m);
            } else {
                self.dropped += 1;
            }
        }
        self.end_value();
    }

    fn end_value(&mut self) {
        if self.stack.is_empty() {
            self.complete = true;
            self.lex = Lex::Done;
        } else {
            self.lex = Lex::AfterValue;
        }
    }

    fn begin_key(&mut self) {
        let depth = self.stack.len();
        let wanted =
            (self.cur.is_some() && depth == self.msg_depth) || self.error_depth == Some(depth);
        self.str_is_key = true;
        self.start_capture(wanted, ENVELOPE_KEY_CAPTURE);
        self.lex = Lex::Str;
    }

    fn start_capture(&mut self, wanted: bool, limit: usize) {
        self.capture = wanted.then(Vec::new);
        self.capture_limit = limit;
        self.capture_bad = false;
        self.high = None;
        self.esc = Esc::None;
    }

    /// Raw (unescaped) bytes: a pending high surrogate followed by anything but `\u` is a
    /// lone surrogate.
    fn capture_raw(&mut self, bytes: &[u8]) {
        if self.high.take().is_some() {
            self.capture_bad = true;
        }
        self.capture_push(bytes);
    }

    fn capture_push(&mut self, bytes: &[u8]) {
        if let Some(c) = self.capture.as_mut() {
            if c.len() + bytes.len() > self.capture_limit {
                self.capture_bad = true;
            } else {
                c.extend_from_slice(bytes);
            }
        }
    }

    fn string_byte(&mut self, b: u8) {
        match self.esc {
            Esc::None => match b {
                b'"' => self.end_string(),
                b'\\' => self.esc = Esc::Backslash,
                _ => self.capture_raw(&[b]),
            },
            Esc::Backslash => {
                self.esc = Esc::None;
                let c = match b {
                    b'"' => b'"',
                    b'\\' => b'\\',
                    b'/' => b'/',
                    b'b' => 0x08,
                    b'f' => 0x0c,
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'u' => {
                        self.esc = Esc::Unicode(0, 0);
                        return;
                    }
                    _ => return self.fail("invalid escape in string"),
                };
                self.capture_raw(&[c]);
            }
            Esc::Unicode(n, v) => {
                let Some(d) = char::from(b).to_digit(16) else {
                    return self.fail("invalid \\u escape in string");
                };
                let v = (v << 4) | d as u16;
                if n < 3 {
                    self.esc = Esc::Unicode(n + 1, v);
                } else {
                    self.esc = Esc::None;
                    self.unicode_unit(v);
                }
            }
        }
    }

    fn unicode_unit(&mut self, u: u16) {
        let c = match (self.high.take(), u) {
            (None, 0xD800..=0xDBFF) => {
                self.high = Some(u);
                return;
            }
            (Some(h), 0xDC00..=0xDFFF) => {
                char::from_u32(0x10000 + ((u32::from(h) - 0xD800) << 10) + (u32::from(u) - 0xDC00))
            }
            (Some(_), _) | (None, 0xDC00..=0xDFFF) => None,
            (None, u) => char::from_u32(u32::from(u)),
        };
        match c {
            Some(c) => {
                let mut buf = [0u8; 4];
                self.capture_push(c.encode_utf8(&mut buf).as_bytes());
            }
            None => self.capture_bad = true,
        }
    }

    fn end_string(&mut self) {
        if self.high.take().is_some() {
            self.capture_bad = true;
        }
        let cap = self.capture.take();
        let bad = std::mem::replace(&mut self.capture_bad, false);
        let text = cap.filter(|_| !bad);
        if self.str_is_key {
            let depth = self.stack.len();
            self.key_role = match text.as_deref() {
                Some(b"code") if self.error_depth == Some(depth) => Role::Code,
                Some(k) if self.cur.is_some() && depth == self.msg_depth => match k {
                    b"id" => Role::Id,
                    b"method" => Role::Method,
                    b"result" => Role::Result,
                    b"error" => Role::Error,
                    _ => Role::None,
                },
                _ => Role::None,
            };
            self.lex = Lex::Colon;
            return;
        }
        let role = std::mem::replace(&mut self.value_role, Role::None);
        let text = text.and_then(|t| String::from_utf8(t).ok());
        if let Some(c) = self.cur.as_mut() {
            match role {
                Role::Id => c.id = text.map(Id::String),
                Role::Method => c.method = text,
                _ => {}
            }
        }
        self.end_value();
    }

    fn end_number(&mut self) {
        let cap = self.capture.take();
        let bad = std::mem::replace(&mut self.capture_bad, false);
        let role = std::mem::replace(&mut self.value_role, Role::None);
        let n = cap
            .filter(|_| !bad)
            .and_then(|c| String::from_utf8(c).ok())
            .filter(|s| {
                let digits = s.strip_prefix('-').unwrap_or(s);
                !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
            })
            .and_then(|s| s.parse::<i64>().ok());
        let error_depth = self.error_depth;
        let depth = self.stack.len();
        if let Some(c) = self.cur.as_mut() {
            match role {
                Role::Id => c.id = n.map(Id::Number),
                Role::Code if error_depth == Some(depth) => c.error_code = n,
                _ => {}
            }
        }
        self.end_value();
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn lim() -> Limits {
        Limits {
            max_depth: 32,
            max_bytes: 1 << 20,
        }
    }

    fn body(v: &Value) -> Body {
        parse_body(v.to_string().as_bytes(), &lim()).expect("valid body")
    }

    fn single(v: Value) -> Message {
        match body(&v) {
            Body::Single(m) => m,
            Body::Batch(_) => panic!("batch"),
        }
    }

    fn meta(version: &str) -> Value {
        json!({
            PROTOCOL_VERSION_META_KEY: version,
            CLIENT_CAPABILITIES_META_KEY: {},
            "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"}
        })
    }

    fn tools_call_2026(name: &str) -> Body {
        body(&json!({
            "jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": name, "arguments": {"location": "Seattle, WA"}, "_meta": meta("2026-07-28")}
        }))
    }

    // ----- messages -----

    #[test]
    fn initialize_request() {
        let m = single(json!({
            "jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": "c", "version": "1"}}
        }));
        assert_eq!(m.kind, Kind::Request);
        assert_eq!(m.id, Some(Id::Number(0)));
        assert_eq!(m.method.as_deref(), Some("initialize"));
        assert_eq!(m.target(), None);
        assert_eq!(m.meta_protocol_version(), None);
    }

    #[test]
    fn tools_call_target_and_meta() {
        let m = match tools_call_2026("get_weather") {
            Body::Single(m) => m,
            _ => unreachable!(),
        };
        assert_eq!(m.kind, Kind::Request);
        assert_eq!(m.target().as_deref(), Some("get_weather"));
        assert_eq!(m.meta_protocol_version(), Some("2026-07-28"));
    }

    #[test]
    fn targets_of_each_method() {
        let cases = [
            (json!({"name": "p"}), "prompts/get", Some("p")),
            (
                json!({"uri": "file:///a"}),
                "resources/read",
                Some("file:///a"),
            ),
            (
                json!({"uri": "file:///b"}),
                "resources/subscribe",
                Some("file:///b"),
            ),
            (
                json!({"uri": "file:///c"}),
                "resources/unsubscribe",
                Some("file:///c"),
            ),
            (
                json!({"ref": {"type": "ref/prompt", "name": "code_review"}, "argument": {"name": "language", "value": "py"}}),
                "completion/complete",
                Some("code_review"),
            ),
            (
                json!({"ref": {"type": "ref/resource", "uri": "file:///{path}"}, "argument": {"name": "path", "value": "a"}}),
                "completion/complete",
                Some("file:///{path}"),
            ),
            (json!({"cursor": "x"}), "tools/list", None),
            (json!({"name": 5}), "tools/call", None),
        ];
        for (params, method, want) in cases {
            let m =
                single(json!({"jsonrpc": "2.0", "id": "r", "method": method, "params": params}));
            assert_eq!(m.target_str(), want, "{method}");
        }
    }

    #[test]
    fn notification_and_responses() {
        let n = single(json!({"jsonrpc": "2.0", "method": "notifications/progress",
            "params": {"progressToken": "t", "progress": 50, "total": 100}}));
        assert_eq!(n.kind, Kind::Notification);
        assert_eq!(n.id, None);

        let r = single(
            json!({"jsonrpc": "2.0", "id": "abc", "result": {"content": [], "isError": false}}),
        );
        assert_eq!(r.kind, Kind::Response);
        assert_eq!(r.id, Some(Id::String("abc".into())));
        assert!(r.is_response());

        let e = single(
            json!({"jsonrpc": "2.0", "id": 7, "error": {"code": -32601, "message": "Method not found"}}),
        );
        assert_eq!(e.kind, Kind::ErrorResponse);
        assert_eq!(e.error_code, Some(-32601));
        assert_eq!(e.error_message.as_deref(), Some("Method not found"));

        let e = single(
            json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": "Parse error", "data": [1]}}),
        );
        assert_eq!(e.kind, Kind::ErrorResponse);
        assert_eq!(e.id, None);
    }

    #[test]
    fn server_discover() {
        let m = single(
            json!({"jsonrpc": "2.0", "id": 1, "method": "server/discover",
            "params": {"_meta": meta("2026-07-28")}}),
        );
        assert_eq!(m.method.as_deref(), Some("server/discover"));
        assert_eq!(m.meta_protocol_version(), Some("2026-07-28"));
        let rev = check_headers(
            Some("2026-07-28"),
            Some("server/discover"),
            None,
            &Body::Single(m),
        )
        .unwrap();
        assert_eq!(rev, Revision::V2026_07_28);
    }

    #[test]
    fn batch_mixing_requests_and_notifications() {
        let b = body(&json!([
            {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {"jsonrpc": "2.0", "id": "2", "method": "resources/read", "params": {"uri": "file:///x"}}
        ]));
        assert!(b.is_batch());
        let kinds: Vec<Kind> = b.messages().iter().map(|m| m.kind).collect();
        assert_eq!(kinds, [Kind::Request, Kind::Notification, Kind::Request]);
        assert_eq!(b.messages()[2].target_str(), Some("file:///x"));
        assert_eq!(b.messages()[2].id, Some(Id::String("2".into())));
    }

    #[test]
    fn id_display_is_json_and_distinguishes_types() {
        assert_eq!(Id::Number(7).to_string(), "7");
        assert_eq!(Id::String("7".into()).to_string(), "\"7\"");
        assert_eq!(Id::String("a\"b".into()).to_string(), r#""a\"b""#);
        assert_ne!(
            Id::Number(7).to_string(),
            Id::String("7".into()).to_string()
        );
        assert_eq!(Id::from_value(&json!(-3)), Some(Id::Number(-3)));
        assert_eq!(Id::from_value(&json!(1.5)), None);
    }

    fn err_of(s: &str) -> McpError {
        parse_body(s.as_bytes(), &lim()).unwrap_err()
    }

    #[test]
    fn bad_json_is_parse_error() {
        for s in ["{", "{\"jsonrpc\":\"2.0\",}", "not json", "", "{} x"] {
            let e = err_of(s);
            assert!(matches!(e, McpError::Parse(_)), "{s:?}: {e:?}");
            assert_eq!(e.code(), PARSE_ERROR);
        }
    }

    #[test]
    fn invalid_requests_say_what() {
        let cases: &[(&str, &str)] = &[
            (
                r#"{"jsonrpc":"1.0","id":1,"method":"x"}"#,
                "\"jsonrpc\" must be \"2.0\"",
            ),
            (r#"{"id":1,"method":"x"}"#, "missing \"jsonrpc\""),
            (
                r#"{"jsonrpc":2.0,"id":1,"method":"x"}"#,
                "\"jsonrpc\" must be \"2.0\", got number",
            ),
            (
                r#"{"jsonrpc":"2.0","id":null,"method":"tools/list"}"#,
                "null \"id\"",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1.5,"method":"x"}"#,
                "\"id\" must be a string or an integer",
            ),
            (
                r#"{"jsonrpc":"2.0","id":true,"method":"x"}"#,
                "\"id\" must be a string or an integer",
            ),
            (
                r#"{"jsonrpc":"2.0","id":{},"method":"x"}"#,
                "\"id\" must be a string or an integer",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":5}"#,
                "\"method\" must be a string",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":""}"#,
                "must not be empty",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"x","params":"s"}"#,
                "\"params\"",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"x","result":{}}"#,
                "neither a request nor a response",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"result":{},"error":{"code":1,"message":"m"}}"#,
                "found both",
            ),
            (r#"{"jsonrpc":"2.0","id":1}"#, "missing \"method\""),
            (r#"{"jsonrpc":"2.0","result":{}}"#, "missing \"id\""),
            (r#"{"jsonrpc":"2.0","id":null,"result":{}}"#, "null \"id\""),
            (
                r#"{"jsonrpc":"2.0","id":1,"error":{"message":"m"}}"#,
                "missing \"code\"",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"error":{"code":1.5,"message":"m"}}"#,
                "\"error.code\" must be an integer",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"error":{"code":1}}"#,
                "missing \"message\"",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"error":"boom"}"#,
                "\"error\" must be an object",
            ),
            ("42", "must be a JSON object"),
            ("[]", "empty batch"),
        ];
        for (s, want) in cases {
            let e = err_of(s);
            assert!(matches!(e, McpError::InvalidRequest(_)), "{s}: {e:?}");
            assert_eq!(e.code(), INVALID_REQUEST);
            assert!(e.to_string().contains(want), "{s}: {e} lacks {want:?}");
        }
    }

    #[test]
    fn batch_errors_name_the_element() {
        let e = err_of(
            r#"[{"jsonrpc":"2.0","id":1,"method":"a"},{"jsonrpc":"2.0","method":"b"},{"jsonrpc":"2.0","id":2,"method":"c"},{"jsonrpc":"2.0","id":3}]"#,
        );
        assert!(
            e.to_string()
                .contains("batch element 3: missing \"method\""),
            "{e}"
        );
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let e = err_of(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call"}"#);
        assert!(matches!(e, McpError::Parse(_)), "{e:?}");
        assert!(e.to_string().contains("duplicate key \"method\""), "{e}");
        let e = err_of(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"x":1,"x":2}}}"#,
        );
        assert!(e.to_string().contains("duplicate key \"x\""), "{e}");
    }

    #[test]
    fn size_limit() {
        let l = Limits {
            max_depth: 8,
            max_bytes: 10,
        };
        let e = parse_body(br#"{"jsonrpc":"2.0"}"#, &l).unwrap_err();
        assert_eq!(e, McpError::TooLarge { size: 17, max: 10 });
        assert_eq!(e.http_status(), 413);
    }

    #[test]
    fn depth_limit_exact_boundary() {
        let l = Limits {
            max_depth: 4,
            max_bytes: 1 << 20,
        };
        // params {a: {b: {}}} → depth 4 with the message object.
        let ok = r#"{"jsonrpc":"2.0","method":"n","params":{"a":{"b":{}}}}"#;
        assert!(parse_body(ok.as_bytes(), &l).is_ok());
        let deep = r#"{"jsonrpc":"2.0","method":"n","params":{"a":{"b":{"c":[]}}}}"#;
        let e = parse_body(deep.as_bytes(), &l).unwrap_err();
        assert!(matches!(e, McpError::TooDeep { max: 4, .. }), "{e:?}");
        // Brackets inside strings (with escaped quotes) do not count.
        let s = r#"{"jsonrpc":"2.0","method":"n","params":{"a":"[[[[\"{{{{{"}}"#;
        assert!(parse_body(s.as_bytes(), &l).is_ok());
    }

    #[test]
    fn hundred_thousand_deep_is_rejected_cheaply() {
        let mut s = "[".repeat(100_000);
        s.push_str(&"]".repeat(100_000));
        let e = parse_body(s.as_bytes(), &lim()).unwrap_err();
        assert_eq!(
            e,
            McpError::TooDeep {
                max: 32,
                offset: 32
            }
        );
        assert_eq!(json_depth(s.as_bytes()), 100_000);
    }

    #[test]
    fn depth_beyond_serde_limit_is_too_deep_not_parse_error() {
        let l = Limits {
            max_depth: 10_000,
            max_bytes: 1 << 20,
        };
        assert_eq!(l.effective_max_depth(), 127);
        let nest = |d: usize| {
            format!(
                r#"{{"jsonrpc":"2.0","method":"n","params":{{"x":{}{}}}}}"#,
                "[".repeat(d - 2),
                "]".repeat(d - 2)
            )
        };
        assert!(parse_body(nest(127).as_bytes(), &l).is_ok());
        let e = parse_body(nest(128).as_bytes(), &l).unwrap_err();
        assert!(matches!(e, McpError::TooDeep { max: 127, .. }), "{e:?}");
    }

    #[test]
    fn parse_body_value_returns_the_tree() {
        let (v, b) = parse_body_value(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"k":"v"}}}"#,
            &lim(),
        )
        .unwrap();
        assert_eq!(v["params"]["arguments"]["k"], "v");
        assert_eq!(b.messages()[0].target_str(), Some("t"));
    }

    // ----- error responses -----

    #[test]
    fn error_response_shapes() {
        let b = error_response(Some(&Id::Number(3)), INVALID_REQUEST, "bad \"x\"\n", None);
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(
            v,
            json!({"jsonrpc": "2.0", "id": 3, "error": {"code": -32600, "message": "bad \"x\"\n"}})
        );
        let b = error_response(None, HEADER_MISMATCH, "m", Some(json!({"rule": "r"})));
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["id"], Value::Null);
        assert_eq!(v["error"]["data"]["rule"], "r");
        let m = parse_message(&v).unwrap();
        assert_eq!(m.kind, Kind::ErrorResponse);
        assert_eq!(m.error_code, Some(HEADER_MISMATCH));
        let b = McpError::HeaderMismatch("x".into()).to_response(Some(&Id::String("q".into())));
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["id"], "q");
        assert_eq!(v["error"]["code"], -32020);
    }

    // ----- revisions -----

    #[test]
    fn revisions() {
        for s in [
            "2024-11-05",
            "2025-03-26",
            "2025-06-18",
            "2025-11-25",
            "2026-07-28",
        ] {
            let r = Revision::parse(s);
            assert!(r.is_known(), "{s}");
            assert_eq!(r.to_string(), s);
            assert_eq!(s.parse::<Revision>().unwrap(), r);
        }
        let o = Revision::parse("2099-01-01");
        assert_eq!(o, Revision::Other("2099-01-01".into()));
        assert_eq!(o.as_str(), "2099-01-01");
        assert!(!o.is_stateless() && !o.allows_batch() && !o.is_known());
        assert!(Revision::V2026_07_28.is_stateless());
        assert!(!Revision::V2025_11_25.is_stateless());
        assert!(Revision::V2025_03_26.allows_batch());
        assert!(!Revision::V2025_06_18.allows_batch());
        assert!(!Revision::V2025_03_26.has_version_header());
        assert!(Revision::V2025_06_18.has_version_header());
        assert!(Revision::V2024_11_05.uses_legacy_sse());
        assert_eq!(Revision::LATEST, Revision::V2026_07_28);
    }

    // ----- headers -----

    fn mismatch(r: Result<Revision, McpError>, want: &str) {
        match r {
            Err(e @ McpError::HeaderMismatch(_)) => {
                assert_eq!(e.code(), HEADER_MISMATCH);
                assert!(e.to_string().contains(want), "{e} lacks {want:?}");
            }
            other => panic!("expected HeaderMismatch containing {want:?}, got {other:?}"),
        }
    }

    #[test]
    fn headers_2026_matching() {
        let b = tools_call_2026("get_weather");
        assert_eq!(
            check_headers(
                Some("2026-07-28"),
                Some("tools/call"),
                Some("get_weather"),
                &b
            ),
            Ok(Revision::V2026_07_28)
        );
        let b = body(
            &json!({"jsonrpc": "2.0", "id": 2, "method": "resources/read",
            "params": {"uri": "file:///projects/myapp/config.json", "_meta": meta("2026-07-28")}}),
        );
        assert!(
            check_headers(
                Some("2026-07-28"),
                Some("resources/read"),
                Some("file:///projects/myapp/config.json"),
                &b
            )
            .is_ok()
        );
    }

    #[test]
    fn header_method_mismatch() {
        let b = tools_call_2026("get_weather");
        mismatch(
            check_headers(
                Some("2026-07-28"),
                Some("tools/list"),
                Some("get_weather"),
                &b,
            ),
            "Mcp-Method header \"tools/list\" does not match",
        );
        // Case-sensitive values.
        mismatch(
            check_headers(
                Some("2026-07-28"),
                Some("Tools/Call"),
                Some("get_weather"),
                &b,
            ),
            "Mcp-Method",
        );
    }

    #[test]
    fn header_name_mismatch() {
        let b = tools_call_2026("delete_everything");
        mismatch(
            check_headers(
                Some("2026-07-28"),
                Some("tools/call"),
                Some("get_weather"),
                &b,
            ),
            "Mcp-Name header \"get_weather\" does not match the body's name \"delete_everything\"",
        );
    }

    #[test]
    fn header_name_base64_sentinel() {
        let b = tools_call_2026("Hello, 世界");
        let enc = encode_header_value("Hello, 世界");
        assert_eq!(enc, "=?base64?SGVsbG8sIOS4lueVjA==?=");
        assert!(check_headers(Some("2026-07-28"), Some("tools/call"), Some(&enc), &b).is_ok());
        // Malformed sentinel never matches.
        mismatch(
            check_headers(
                Some("2026-07-28"),
                Some("tools/call"),
                Some("=?base64?%%%?="),
                &b,
            ),
            "malformed base64",
        );
        // Non-canonical (trailing bits set) is malformed too.
        let b2 = tools_call_2026("a");
        mismatch(
            check_headers(
                Some("2026-07-28"),
                Some("tools/call"),
                Some("=?base64?YR==?="),
                &b2,
            ),
            "malformed base64",
        );
        assert!(
            check_headers(
                Some("2026-07-28"),
                Some("tools/call"),
                Some("=?base64?YQ==?="),
                &b2
            )
            .is_ok()
        );
    }

    #[test]
    fn header_version_mismatch_and_missing() {
        let b = tools_call_2026("t");
        mismatch(
            check_headers(Some("2025-11-25"), Some("tools/call"), Some("t"), &b),
            "MCP-Protocol-Version header \"2025-11-25\" does not match",
        );
        mismatch(
            check_headers(None, Some("tools/call"), Some("t"), &b),
            "MCP-Protocol-Version header is missing",
        );
        // Even with no routing headers at all, a body declaring a version needs the header.
        mismatch(check_headers(None, None, None, &b), "MCP-Protocol-Version");
    }

    #[test]
    fn header_required_in_2026() {
        let b = tools_call_2026("t");
        mismatch(
            check_headers(Some("2026-07-28"), None, Some("t"), &b),
            "Mcp-Method header is required",
        );
        mismatch(
            check_headers(Some("2026-07-28"), Some("tools/call"), None, &b),
            "Mcp-Name header is required for \"tools/call\"",
        );
        // tools/list names nothing: no Mcp-Name required, and one present is refused.
        let l = body(&json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list",
            "params": {"_meta": meta("2026-07-28")}}));
        assert!(check_headers(Some("2026-07-28"), Some("tools/list"), None, &l).is_ok());
        mismatch(
            check_headers(Some("2026-07-28"), Some("tools/list"), Some("x"), &l),
            "names no tool",
        );
    }

    #[test]
    fn header_name_without_body_target() {
        let b = body(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"arguments": {}, "_meta": meta("2026-07-28")}}));
        mismatch(
            check_headers(Some("2026-07-28"), Some("tools/call"), Some("t"), &b),
            "carries no string params.name",
        );
    }

    #[test]
    fn missing_meta_in_2026_is_invalid_params() {
        let b = body(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}));
        let e = check_headers(Some("2026-07-28"), Some("tools/list"), None, &b).unwrap_err();
        assert!(matches!(e, McpError::InvalidParams(_)), "{e:?}");
        assert_eq!(e.code(), INVALID_PARAMS);
        let b = body(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list",
            "params": {"_meta": {PROTOCOL_VERSION_META_KEY: 2026}}}));
        let e = check_headers(Some("2026-07-28"), Some("tools/list"), None, &b).unwrap_err();
        assert!(matches!(e, McpError::InvalidParams(_)), "{e:?}");
    }

    #[test]
    fn headers_on_batches() {
        let b = body(&json!([
            {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            {"jsonrpc": "2.0", "method": "notifications/initialized"}
        ]));
        assert_eq!(
            check_headers(None, None, None, &b),
            Ok(Revision::V2025_03_26)
        );
        assert_eq!(
            check_headers(Some("2025-03-26"), None, None, &b),
            Ok(Revision::V2025_03_26)
        );
        mismatch(
            check_headers(None, Some("tools/list"), None, &b),
            "Mcp-Method header on a JSON-RPC batch",
        );
        mismatch(
            check_headers(None, None, Some("x"), &b),
            "Mcp-Name header on a JSON-RPC batch",
        );
        for rev in ["2025-06-18", "2025-11-25", "2026-07-28", "2099-01-01"] {
            let e = check_headers(Some(rev), None, None, &b).unwrap_err();
            assert!(matches!(e, McpError::InvalidRequest(_)), "{rev}: {e:?}");
            assert!(e.to_string().contains("batches are not part"), "{e}");
        }
        let m = body(&json!([
            {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": meta("2026-07-28")}}
        ]));
        assert!(matches!(
            check_headers(None, None, None, &m),
            Err(McpError::InvalidRequest(_))
        ));
    }

    #[test]
    fn headers_on_responses() {
        let r = body(&json!({"jsonrpc": "2.0", "id": 5, "result": {}}));
        assert!(check_headers(Some("2025-11-25"), None, None, &r).is_ok());
        mismatch(
            check_headers(Some("2025-11-25"), Some("tools/call"), None, &r),
            "on a JSON-RPC response",
        );
        mismatch(
            check_headers(None, None, Some("n"), &r),
            "Mcp-Name header on a JSON-RPC response",
        );
        assert!(matches!(
            check_headers(Some("2026-07-28"), None, None, &r),
            Err(McpError::InvalidRequest(_))
        ));
    }

    #[test]
    fn legacy_revisions_compare_when_present() {
        let b = body(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "t", "arguments": {}}}));
        assert_eq!(
            check_headers(Some("2025-06-18"), None, None, &b),
            Ok(Revision::V2025_06_18)
        );
        assert_eq!(
            check_headers(None, None, None, &b),
            Ok(Revision::V2025_03_26)
        );
        mismatch(
            check_headers(Some("2025-06-18"), Some("tools/list"), None, &b),
            "Mcp-Method",
        );
        mismatch(
            check_headers(None, Some("tools/call"), Some("u"), &b),
            "Mcp-Name",
        );
        assert!(check_headers(None, Some("tools/call"), Some("t"), &b).is_ok());
    }

    #[test]
    fn notifications_2026_do_not_require_routing_headers() {
        let n = body(
            &json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
            "params": {"requestId": 1}}),
        );
        assert!(check_headers(Some("2026-07-28"), None, None, &n).is_ok());
        mismatch(
            check_headers(Some("2026-07-28"), Some("notifications/progress"), None, &n),
            "Mcp-Method",
        );
    }

    #[test]
    fn header_values_with_bad_characters() {
        let b = tools_call_2026("t");
        mismatch(
            check_headers(Some("2026-07-28"), Some("tools/call\u{7f}"), Some("t"), &b),
            "Mcp-Method header value contains characters",
        );
        mismatch(
            check_headers(Some("2026-07-28"), Some("tools/call"), Some("é"), &b),
            "Mcp-Name header value contains characters",
        );
    }

    #[test]
    fn routing_headers_from_header_map() {
        let mut h = http::HeaderMap::new();
        h.insert("mcp-protocol-version", "2026-07-28".parse().unwrap());
        h.insert("mcp-method", "tools/call".parse().unwrap());
        h.insert("mcp-name", "t".parse().unwrap());
        let r = RoutingHeaders::from_headers(&h).unwrap();
        assert_eq!(r.method.as_deref(), Some("tools/call"));
        assert_eq!(r.check(&tools_call_2026("t")), Ok(Revision::V2026_07_28));
        h.append("mcp-name", "other".parse().unwrap());
        mismatch(
            RoutingHeaders::from_headers(&h).map(|_| Revision::LATEST),
            "more than once",
        );
    }

    #[test]
    fn base64_examples_from_spec() {
        for (plain, enc) in [
            ("us-west1", "us-west1"),
            ("Hello, 世界", "=?base64?SGVsbG8sIOS4lueVjA==?="),
            (" padded ", "=?base64?IHBhZGRlZCA=?="),
            ("line1\nline2", "=?base64?bGluZTEKbGluZTI=?="),
            ("=?base64?literal?=", "=?base64?PT9iYXNlNjQ/bGl0ZXJhbD89?="),
        ] {
            assert_eq!(encode_header_value(plain), enc, "{plain:?}");
            assert_eq!(decode_header_value(enc).as_deref(), Some(plain), "{enc}");
        }
        assert_eq!(decode_header_value("=?base64?abc?="), None);
        assert_eq!(decode_header_value("=?base64?/w==?="), None); // not UTF-8
        assert_eq!(decode_header_value("=?base64?="), Some("=?base64?=".into()));
    }

    // ----- SSE -----

    fn sse_all(bytes: &[u8]) -> Vec<SseEvent> {
        SseParser::new(1 << 20).push(bytes).unwrap()
    }

    #[test]
    fn sse_basic_fields() {
        let ev = sse_all(
            b"event: message\nid: 42\nretry: 1500\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n",
        );
        assert_eq!(
            ev,
            vec![SseEvent {
                event: Some("message".into()),
                data: r#"{"jsonrpc":"2.0","id":1,"result":{}}"#.into(),
                id: Some("42".into()),
                retry: Some(1500),
                dataless: false,
            }]
        );
    }

    #[test]
    fn sse_multiline_and_line_endings() {
        for stream in [
            &b"data: a\ndata: b\n\ndata:c\n\n"[..],
            b"data: a\r\ndata: b\r\n\r\ndata:c\r\n\r\n",
            b"data: a\rdata: b\r\rdata:c\r\r",
            b"\xEF\xBB\xBFdata: a\ndata: b\r\n\rdata:c\n\n",
        ] {
            let ev = sse_all(stream);
            let data: Vec<&str> = ev.iter().map(|e| e.data.as_str()).collect();
            assert_eq!(data, ["a\nb", "c"], "{stream:?}");
        }
    }

    #[test]
    fn sse_comments_unknown_fields_and_oddities() {
        let ev = sse_all(
            b": keep-alive\n\n:\r\n\r\nfoo: bar\ndata\ndata:  two spaces\nretry: 12x\nid: a\0b\n\n",
        );
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].data, "\n two spaces");
        assert_eq!(ev[0].retry, None);
        assert_eq!(ev[0].id, None);
        // event-only block: not dispatched, and its type does not leak into the next event.
        let ev = sse_all(b"event: endpoint\n\ndata: x\n\n");
        assert_eq!(ev, vec![SseEvent::message("x")]);
    }

    #[test]
    fn sse_dataless_priming_event() {
        let ev = sse_all(b"id: prime-1\n\nid: 2\ndata:\n\n");
        assert_eq!(ev.len(), 2);
        assert!(ev[0].dataless);
        assert_eq!(ev[0].id.as_deref(), Some("prime-1"));
        assert!(!ev[1].dataless);
        assert_eq!(ev[1].data, "");
        assert_eq!(&encode(&ev[0])[..], b"id: prime-1\n\n");
        assert_eq!(&encode(&ev[1])[..], b"id: 2\ndata:\n\n");
    }

    #[test]
    fn sse_split_between_cr_and_lf_and_inside_utf8() {
        let mut p = SseParser::new(1024);
        let mut ev = p.push(b"data: \xE4\xB8").unwrap();
        ev.extend(p.push(b"\x96\xE7\x95\x8C\r").unwrap());
        assert!(ev.is_empty());
        ev.extend(p.push(b"\n").unwrap());
        assert!(ev.is_empty(), "LF after CR must not be an empty line");
        ev.extend(p.push(b"\r\n").unwrap());
        assert_eq!(ev, vec![SseEvent::message("世界")]);
        assert!(!p.has_partial());
    }

    #[test]
    fn sse_event_too_large_and_sticky() {
        let mut p = SseParser::new(16);
        assert!(p.push(b"data: 0123456789\n").is_ok());
        let e = p.push(b"data: 0123456789\n").unwrap_err();
        assert_eq!(e, McpError::SseEventTooLarge { max: 16 });
        assert_eq!(p.push(b"\n").unwrap_err(), e);
        // An endless line is cut off too, without a line ending ever arriving.
        let mut p = SseParser::new(100);
        let mut res = Ok(vec![]);
        for _ in 0..20 {
            res = p.push(&[b'x'; 10]);
            if res.is_err() {
                break;
            }
        }
        assert!(matches!(res, Err(McpError::SseEventTooLarge { .. })));
        // Comment lines never accumulate.
        let mut p = SseParser::new(100);
        for _ in 0..1000 {
            p.push(b": ping\n").unwrap();
        }
        assert_eq!(
            p.push(b"data: ok\n\n").unwrap(),
            vec![SseEvent::message("ok")]
        );
    }

    #[test]
    fn sse_invalid_utf8_is_an_error() {
        let mut p = SseParser::new(100);
        assert!(matches!(p.push(b"data: \xff\n"), Err(McpError::Sse(_))));
    }

    #[test]
    fn sse_encode_round_trip() {
        let ev = SseEvent {
            event: Some("message".into()),
            data: "{\n  \"a\": 1\n}".into(),
            id: Some("7".into()),
            retry: Some(3000),
            dataless: false,
        };
        let bytes = encode(&ev);
        assert_eq!(
            &bytes[..],
            b"event: message\nid: 7\nretry: 3000\ndata: {\ndata:   \"a\": 1\ndata: }\n\n"
        );
        assert_eq!(sse_all(&bytes), vec![ev]);
        // CR in data becomes a line break; line breaks in id cannot inject fields.
        let ev = SseEvent {
            id: Some("1\ndata: evil".into()),
            ..SseEvent::message("a\r\nb\rc")
        };
        let back = sse_all(&encode(&ev));
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].data, "a\nb\nc");
        assert_eq!(back[0].id.as_deref(), Some("1data: evil"));
    }

    // ----- legacy endpoint -----

    #[test]
    fn legacy_endpoint_python_and_typescript() {
        let ep = LegacyEndpoint::parse("/messages/?session_id=0a1b2c3d").unwrap();
        assert_eq!(ep.path, "/messages/");
        assert_eq!(ep.session_id.as_deref(), Some("0a1b2c3d"));
        assert_eq!(ep.origin, None);
        let ep = LegacyEndpoint::parse("/message?sessionId=abc%2Dd").unwrap();
        assert_eq!(ep.path, "/message");
        assert_eq!(ep.session_id.as_deref(), Some("abc-d"));
        assert_eq!(ep.query.as_deref(), Some("sessionId=abc%2Dd"));
    }

    #[test]
    fn legacy_endpoint_resolution() {
        let ep =
            LegacyEndpoint::parse("https://mcp.example.com:8443/api/messages?session_id=s#frag")
                .unwrap();
        assert_eq!(ep.origin.as_deref(), Some("https://mcp.example.com:8443"));
        assert_eq!(ep.path, "/api/messages");
        assert_eq!(ep.session_id.as_deref(), Some("s"));
        let ep = LegacyEndpoint::parse_with_base("messages?session_id=x", "/mcp/sse").unwrap();
        assert_eq!(ep.path, "/mcp/messages");
        let ep = LegacyEndpoint::parse_with_base("../messages/./a", "/mcp/v1/sse").unwrap();
        assert_eq!(ep.path, "/mcp/messages/a");
        let ep = LegacyEndpoint::parse_with_base("?session_id=q", "/sse").unwrap();
        assert_eq!(ep.path, "/sse");
        let ep = LegacyEndpoint::parse("//host/m").unwrap();
        assert_eq!(ep.origin.as_deref(), Some("//host"));
        assert_eq!(ep.path, "/m");
        assert!(LegacyEndpoint::parse("").is_none());
        assert!(LegacyEndpoint::parse("/messages/?session_id=a b").is_none());
        assert!(LegacyEndpoint::parse("http:///nohost").is_none());
    }

    #[test]
    fn legacy_message_post_recognised() {
        let ep = LegacyEndpoint::parse("/messages/?session_id=abc").unwrap();
        let post = http::Method::POST;
        let u = |s: &str| s.parse::<http::Uri>().unwrap();
        assert!(ep.matches_post(&post, &u("/messages/?session_id=abc")));
        assert!(ep.matches_post(&post, &u("/messages/?x=1&session_id=abc")));
        assert!(!ep.matches_post(&post, &u("/messages/?session_id=abd")));
        assert!(!ep.matches_post(&post, &u("/messages/")));
        assert!(!ep.matches_post(&post, &u("/other/?session_id=abc")));
        assert!(!ep.matches_post(&http::Method::GET, &u("/messages/?session_id=abc")));
        assert_eq!(legacy_session_id("a=1&sessionId=z"), Some("z".into()));
        assert_eq!(legacy_session_id("a=1"), None);
    }

    // ----- envelope scanner -----

    fn scan(bytes: &[u8]) -> EnvelopeSummary {
        let mut s = EnvelopeScanner::new();
        s.push(bytes);
        s.summary()
    }

    #[test]
    fn envelope_single_result_and_error() {
        let s = scan(br#"{"jsonrpc":"2.0","id":7,"result":{"id":99,"error":{"code":1},"content":[{"type":"text","text":"}]\"{"}]}}"#);
        assert_eq!(s.shape, Shape::Object);
        assert!(s.complete && s.error.is_none());
        assert_eq!(
            s.messages,
            vec![EnvelopeMessage {
                id: Some(Id::Number(7)),
                has_result: true,
                ..Default::default()
            }]
        );
        assert_eq!(s.outcome_for("7"), Some((false, None)));
        assert_eq!(s.outcome_for("99"), None);

        let s = scan(br#" {"error":{"data":{"code":5},"code":-32602,"message":"bad"},"id":"a\"b","jsonrpc":"2.0"} "#);
        assert_eq!(s.messages[0].id, Some(Id::String("a\"b".into())));
        assert_eq!(s.messages[0].error_code, Some(-32602));
        assert_eq!(s.outcome_for(r#""a\"b""#), Some((true, Some(-32602))));
    }

    #[test]
    fn envelope_batch_and_escaped_keys() {
        let s = scan(
            br#"[{"jsonrpc":"2.0","\u0069d":"\u00e9\ud83d\ude00","result":{}},{"jsonrpc":"2.0","method":"notifications/progress","params":{"id":3}},{"jsonrpc":"2.0","id":2,"error":{"code":-1,"message":"m"}},5]"#,
        );
        assert_eq!(s.shape, Shape::Array);
        assert!(s.is_batch() && s.complete);
        assert_eq!(s.messages.len(), 3);
        assert_eq!(s.messages[0].id, Some(Id::String("é😀".into())));
        assert_eq!(
            s.messages[1].method.as_deref(),
            Some("notifications/progress")
        );
        assert_eq!(s.messages[1].id, None);
        assert_eq!(s.outcome_for("2"), Some((true, Some(-1))));
    }

    #[test]
    fn envelope_large_body_in_small_chunks() {
        let big = "x\\\"".repeat(2_000_000);
        let body = format!(
            r#"{{"jsonrpc":"2.0","result":{{"content":[{{"type":"text","text":"{big}"}}]}},"id":"req-1"}}"#
        );
        let mut s = EnvelopeScanner::new();
        for c in body.as_bytes().chunks(4093) {
            s.push(c);
        }
        let sum = s.summary();
        assert!(sum.complete, "{sum:?}");
        assert_eq!(sum.bytes, body.len() as u64);
        assert_eq!(sum.outcome_for("\"req-1\""), Some((false, None)));
        // Nothing of the big string was retained.
        assert!(
            s.capture
                .as_ref()
                .is_none_or(|c| c.len() <= ENVELOPE_VALUE_CAPTURE)
        );
    }

    #[test]
    fn envelope_malformed_and_incomplete() {
        let s = scan(br#"{"id":1,"result":{}} {}"#);
        assert!(
            s.error.as_deref().unwrap().contains("trailing data"),
            "{s:?}"
        );
        let s = scan(br#"{"id":1 "result":{}}"#);
        assert!(s.error.is_some());
        let s = scan(br#"{"id":1,"result":{"#);
        assert!(!s.complete && s.error.is_none() && s.messages.is_empty());
        let s = scan(br#"{"id":1,"x":"\q"}"#);
        assert!(s.error.as_deref().unwrap().contains("invalid escape"));
        let mut d = EnvelopeScanner::with_max_depth(3);
        d.push(b"[[[[1]]]]");
        assert!(d.summary().error.unwrap().contains("nesting deeper than 3"));
        let s = scan(b"42 ");
        assert_eq!(s.shape, Shape::Other);
        assert!(s.complete && s.messages.is_empty());
        // Lone error response without id answers any request.
        let s =
            scan(br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}"#);
        assert_eq!(s.outcome_for("1"), Some((true, Some(-32700))));
    }

    #[test]
    fn envelope_message_list_is_bounded() {
        let items: Vec<String> = (0..1100)
            .map(|i| format!(r#"{{"jsonrpc":"2.0","id":{i},"result":{{}}}}"#))
            .collect();
        let s = scan(format!("[{}]", items.join(",")).as_bytes());
        assert!(s.complete);
        assert_eq!(s.messages.len(), ENVELOPE_MAX_MESSAGES);
        assert_eq!(s.dropped, 1100 - ENVELOPE_MAX_MESSAGES);
        assert_eq!(s.outcome_for("1023"), Some((false, None)));
    }

    #[test]
    fn envelope_id_oddities() {
        let s = scan(br#"{"id":1.0,"result":{}}"#);
        assert_eq!(s.messages[0].id, None);
        let s = scan(br#"{"id":"\ud800x","result":{}}"#);
        assert_eq!(s.messages[0].id, None);
        let s = scan(br#"{"id":99999999999999999999,"result":{}}"#);
        assert_eq!(s.messages[0].id, None);
        let long = format!(r#"{{"id":"{}","result":{{}}}}"#, "a".repeat(2000));
        assert_eq!(scan(long.as_bytes()).messages[0].id, None);
        let s = scan(br#"{"id":1,"id":2,"result":{}}"#);
        assert_eq!(s.messages[0].id, Some(Id::Number(2)));
    }

    // ----- property tests -----

    /// A JSON writer that can \u-escape every character of strings and keys.
    fn write_json(v: &Value, escape_all: bool, out: &mut String) {
        let write_str = |s: &str, out: &mut String| {
            if escape_all {
                out.push('"');
                for unit in s.encode_utf16() {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
                out.push('"');
            } else {
                out.push_str(&Value::String(s.to_string()).to_string());
            }
        };
        match v {
            Value::Object(m) => {
                out.push_str("{ ");
                for (i, (k, v)) in m.iter().enumerate() {
                    if i > 0 {
                        out.push_str(" ,\n");
                    }
                    write_str(k, out);
                    out.push_str(" : ");
                    write_json(v, escape_all, out);
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, v) in a.iter().enumerate() {
                    if i > 0 {
                        out.push_str(",\t");
                    }
                    write_json(v, escape_all, out);
                }
                out.push_str(" ]");
            }
            Value::String(s) => write_str(s, out),
            other => out.push_str(&other.to_string()),
        }
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            "[a-z\"\\\\\\[\\]{}é😀 \n]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(6, 48, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::vec(
                    (
                        prop_oneof![
                            Just("id".to_string()),
                            Just("code".to_string()),
                            Just("error".to_string()),
                            "[a-z\\[\"]{0,4}"
                        ],
                        inner
                    ),
                    0..5
                )
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    fn arb_id() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<i64>().prop_map(Value::from),
            "[a-z0-9\"\\\\é😀\n-]{0,12}".prop_map(Value::String),
            Just(Value::Null),
            Just(json!(2.5)),
            Just(json!(u64::MAX)),
        ]
    }

    fn arb_message() -> impl Strategy<Value = Value> {
        (
            prop::option::of(arb_id()),
            0u8..4,
            any::<i64>(),
            arb_json(),
            prop::option::of("[a-z/]{1,12}"),
        )
            .prop_map(|(id, kind, code, payload, method)| {
                let mut m = Map::new();
                m.insert("jsonrpc".into(), json!("2.0"));
                if let Some(id) = id {
                    m.insert("id".into(), id);
                }
                match kind {
                    0 => {
                        m.insert("result".into(), payload);
                    }
                    1 => {
                        m.insert(
                            "error".into(),
                            json!({"message": "m", "data": payload, "code": code}),
                        );
                    }
                    2 => {
                        m.insert("error".into(), payload);
                    }
                    _ => {
                        m.insert("params".into(), payload);
                    }
                }
                if let Some(method) = method {
                    m.insert("method".into(), Value::String(method));
                }
                Value::Object(m)
            })
    }

    /// What the scanner should report for `v`, computed from the tree.
    fn expected_messages(v: &Value) -> Vec<EnvelopeMessage> {
        let one = |m: &Map<String, Value>| EnvelopeMessage {
            id: match m.get("id") {
                Some(Value::String(s)) if s.len() <= ENVELOPE_VALUE_CAPTURE => {
                    Some(Id::String(s.clone()))
                }
                Some(Value::Number(n)) => n.as_i64().filter(|_| !n.is_f64()).map(Id::Number),
                _ => None,
            },
            method: m
                .get("method")
                .and_then(Value::as_str)
                .filter(|s| s.len() <= ENVELOPE_VALUE_CAPTURE)
                .map(str::to_string),
            has_result: m.contains_key("result"),
            has_error: m.contains_key("error"),
            error_code: m
                .get("error")
                .and_then(|e| e.get("code"))
                .and_then(|c| c.as_i64().filter(|_| !c.is_f64())),
        };
        match v {
            Value::Object(m) => vec![one(m)],
            Value::Array(a) => a.iter().filter_map(Value::as_object).map(one).collect(),
            _ => vec![],
        }
    }

    fn chunked<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        points.sort_unstable();
        points.dedup();
        let mut out = Vec::new();
        let mut last = 0;
        for p in points {
            out.push(&bytes[last..p]);
            last = p;
        }
        out.push(&bytes[last..]);
        out
    }

    fn arb_sse_stream() -> impl Strategy<Value = Vec<u8>> {
        let line = prop_oneof![
            "[a-z{}\":,é😀 ]{0,12}".prop_map(|s| format!("data: {s}")),
            "[a-z]{0,6}".prop_map(|s| format!("data:{s}")),
            Just("data".to_string()),
            "[a-z]{0,6}".prop_map(|s| format!("event: {s}")),
            "[a-z0-9]{0,6}".prop_map(|s| format!("id: {s}")),
            "[0-9x]{0,4}".prop_map(|s| format!("retry: {s}")),
            "[a-z ]{0,8}".prop_map(|s| format!(": {s}")),
            Just(String::new()),
        ];
        let eol = prop_oneof![Just("\n"), Just("\r\n"), Just("\r")];
        (any::<bool>(), prop::collection::vec((line, eol), 0..40)).prop_map(|(bom, lines)| {
            let mut s = Vec::new();
            if bom {
                s.extend_from_slice(b"\xEF\xBB\xBF");
            }
            for (l, e) in lines {
                s.extend_from_slice(l.as_bytes());
                s.extend_from_slice(e.as_bytes());
            }
            s
        })
    }

    /// Reference depth, by recursion over the tree.
    fn tree_depth(v: &Value) -> usize {
        match v {
            Value::Array(a) => 1 + a.iter().map(tree_depth).max().unwrap_or(0),
            Value::Object(m) => 1 + m.values().map(tree_depth).max().unwrap_or(0),
            _ => 0,
        }
    }

    proptest! {
        #[test]
        fn prop_sse_any_split_same_events(
            stream in arb_sse_stream(),
            cuts in prop::collection::vec(any::<usize>(), 0..12),
        ) {
            let whole = SseParser::new(1 << 16).push(&stream).unwrap();
            let mut p = SseParser::new(1 << 16);
            let mut parts = Vec::new();
            for c in chunked(&stream, &cuts) {
                parts.extend(p.push(c).unwrap());
            }
            prop_assert_eq!(&parts, &whole);
            // Re-encoding and re-parsing gives the same events.
            let mut again = Vec::new();
            for ev in &whole {
                again.extend_from_slice(&encode(ev));
            }
            prop_assert_eq!(&SseParser::new(1 << 16).push(&again).unwrap(), &whole);
        }

        #[test]
        fn prop_envelope_any_chunking_same_answer(
            msgs in prop::collection::vec(arb_message(), 1..4),
            batch in any::<bool>(),
            escape_all in any::<bool>(),
            cuts in prop::collection::vec(any::<usize>(), 0..16),
        ) {
            let v = if batch { Value::Array(msgs) } else { msgs.into_iter().next().unwrap() };
            let mut text = String::new();
            write_json(&v, escape_all, &mut text);
            let whole = scan(text.as_bytes());
            let mut s = EnvelopeScanner::new();
            for c in chunked(text.as_bytes(), &cuts) {
                s.push(c);
            }
            prop_assert_eq!(&s.summary(), &whole);
            prop_assert!(whole.complete && whole.error.is_none(), "{:?}", whole);
            prop_assert_eq!(whole.messages, expected_messages(&v));
        }

        #[test]
        fn prop_depth_scanner_matches_tree(v in arb_json(), escape_all in any::<bool>()) {
            let mut text = String::new();
            write_json(&v, escape_all, &mut text);
            let d = tree_depth(&v);
            prop_assert_eq!(json_depth(text.as_bytes()), d);
            prop_assert!(check_depth(text.as_bytes(), d).is_ok());
            if d > 0 {
                let is_too_deep = matches!(
                    check_depth(text.as_bytes(), d - 1),
                    Err(McpError::TooDeep { .. })
                );
                prop_assert!(is_too_deep);
            }
        }
    }
}
