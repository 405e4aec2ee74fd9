//! The HTTP endpoint for approvers who are not on the host (`approvals.http_listen`).
//!
//! Every request needs `Authorization: Bearer <token>`: an OIDC access token from a
//! configured issuer whose `aud` is `approvals.audience`, held by someone in an approver group
//! of some approval rule (groups claim). `401` without a valid token, `403` for anyone else.
//!
//! | request | answer |
//! |---|---|
//! | `GET /approvals[?all=1]` | `{"approvals": [..]}`: requests of rules the caller may decide (open ones; `all`: decided too) |
//! | `GET /approvals/{id}` | `{"approval": {..}}` with every argument, votes, expiry |
//! | `POST /approvals/{id}/approve` `{"reason"?, "grant"?: {"minutes", "bounds"?}}` | `{"ok": true, "state", "approvals", "required", "approval"}` |
//! | `POST /approvals/{id}/deny` `{"reason"}` | same |
//!
//! Errors are `{"ok": false, "error": "..."}` with `400` (bad body), `403` (self-approval,
//! not an approver of that rule, second vote, grant not allowed), `404` (unknown id), `409`
//! (already decided). Plain HTTP is only allowed on loopback; otherwise `approvals.http_tls`.
use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::watch};
use tracing::{debug, info, warn};

use super::{
    control::{Asker, approver_by_token, decide},
    registry::GrantSpec,
};
use crate::{auth::Auth, tls::TlsTerminator};

const MAX_BODY: usize = 64 * 1024;

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

/// Binds the endpoint (so a bad address fails start-up) and serves it until `stop`.
pub async fn start(
    addr: SocketAddr,
    tls: Option<TlsTerminator>,
    auth: Arc<Auth>,
    audience: String,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("approvals.http_listen: binding {addr}: {e}"))?;
    info!(event = "approvals_http", addr = %addr, tls = tls.is_some(), "approval endpoint listening");
    let tls = tls.map(Arc::new);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        warn!(error = %e, "approval endpoint: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stop.changed() => return,
            };
            let (auth, audience, tls) = (auth.clone(), audience.clone(), tls.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let (auth, audience) = (auth.clone(), audience.clone());
                    async move { Ok::<_, Infallible>(handle(&auth, &audience, peer, req).await) }
                });
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(30));
                let r = match tls {
                    Some(t) => match t.accept_tcp(tcp).await {
                        Ok((s, _)) => builder.serve_connection(TokioIo::new(s), svc).await,
                        Err(e) => {
                            debug!(peer = %peer, error = %e, "approval endpoint: TLS handshake failed");
                            return;
                        }
                    },
                    None => builder.serve_connection(TokioIo::new(tcp), svc).await,
                };
                if let Err(e) = r {
                    debug!(peer = %peer, error = %e, "approval endpoint connection ended");
                }
            });
        }
    });
    Ok(())
}

fn reply(status: StatusCode, v: Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn error(status: StatusCode, what: &str) -> Response<Body> {
    reply(status, json!({"ok": false, "error": what}))
}

async fn handle(
    auth: &Auth,
    audience: &str,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(s, t)| s.eq_ignore_ascii_case("bearer") && !t.trim().is_empty())
        .map(|(_, t)| t.trim().to_string());
    let Some(token) = token else {
        let mut r = error(StatusCode::UNAUTHORIZED, "a bearer token is required");
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"interceptor-approvals\""),
        );
        return r;
    };
    let who = match approver_by_token(auth, Some(audience), &token).await {
        Ok(a) => a,
        Err(e) => {
            warn!(event = "approvals_http_refused", peer = %peer, reason = %e, "approval endpoint refused a caller");
            let status = if e.starts_with("approver token refused") {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::FORBIDDEN
            };
            let mut r = error(status, &e);
            if status == StatusCode::UNAUTHORIZED {
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(
                        "Bearer realm=\"interceptor-approvals\", error=\"invalid_token\"",
                    ),
                );
            }
            return r;
        }
    };
    let Some(approvals) = auth.approvals.as_ref() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "approvals are not running");
    };
    let path = req.uri().path().trim_end_matches('/').to_string();
    let all = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "all=1" || kv == "all=true"));
    let parts: Vec<&str> = path.split('/').skip(1).collect();
    let asker = Asker::Approver(who.clone());
    match (req.method().clone(), parts.as_slice()) {
        (Method::GET, ["approvals"]) => reply(
            StatusCode::OK,
            json!({"ok": true, "approvals": approvals.list(all, |v| asker.sees(v))}),
        ),
        (Method::GET, ["approvals", id]) => match approvals.show(id) {
            Some(v) if asker.sees(&v) => reply(StatusCode::OK, json!({"ok": true, "approval": v})),
            _ => error(StatusCode::NOT_FOUND, &format!("no approval request {id}")),
        },
        (Method::POST, ["approvals", id, action @ ("approve" | "deny")]) => {
            let (id, approve) = (id.to_string(), *action == "approve");
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return error(StatusCode::BAD_REQUEST, &format!("request body: {e}")),
            };
            let v: Value = if body.is_empty() {
                json!({})
            } else {
                match serde_json::from_slice(&body) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => return error(StatusCode::BAD_REQUEST, "the body must be a JSON object"),
                }
            };
            let grant = match v.get("grant") {
                None | Some(Value::Null) => None,
                Some(g) => match serde_json::from_value::<GrantSpec>(g.clone()) {
                    Ok(g) if approve => Some(g),
                    Ok(_) => return error(StatusCode::BAD_REQUEST, "a denial carries no grant"),
                    Err(e) => return error(StatusCode::BAD_REQUEST, &format!("grant: {e}")),
                },
            };
            let reason = v.get("reason").and_then(Value::as_str);
            if !approve && reason.is_none_or(|r| r.trim().is_empty()) {
                return error(StatusCode::BAD_REQUEST, "a denial needs a reason");
            }
            match decide(approvals, &who, &id, approve, reason, grant) {
                Ok(v) => reply(StatusCode::OK, v),
                Err((status, e)) => error(
                    StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN),
                    &e,
                ),
            }
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "not found: GET /approvals, GET /approvals/{id}, POST /approvals/{id}/approve|deny",
        ),
    }
}
