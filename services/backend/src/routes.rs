//! HTTP handlers and the router.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Extension, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router, middleware};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tower::ServiceBuilder;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::error::{self, ApiError};
use crate::state::AppState;
use crate::store::{self, LogEntry, WriteError, WriteTicket};
use crate::{metrics, telemetry};
use axum::body::Bytes;

/// The service's name in `/api/service/version`.
pub const SERVICE_NAME: &str = "backend";

/// The version baked in at build time (`APP_VERSION`, the image tag), else the crate version.
pub fn version() -> &'static str {
    match option_env!("APP_VERSION") {
        Some(v) if !v.is_empty() => v,
        _ => env!("CARGO_PKG_VERSION"),
    }
}

/// The application's router with all middleware.
pub fn app(state: AppState) -> Router {
    let settings = state.settings.clone();
    let request_id = axum::http::HeaderName::from_static("x-request-id");
    // Routes that wait on the database get a deadline; the cheap ones skip the timer.
    let database_routes = Router::new()
        .route("/api/service/ready", get(ready))
        .route("/api/log", post(post_log))
        .route("/api/logs", get(list_logs))
        .route_layer(middleware::from_fn_with_state(
            settings.server.request_timeout_ms,
            deadline,
        ));
    Router::new()
        .route("/api/service/ping", get(ping))
        .route("/api/service/health", get(health))
        .route("/api/service/version", get(version_handler))
        .route("/api/service/info", get(info))
        .route("/metrics", get(metrics_handler))
        .merge(database_routes)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(settings.server.body_limit_bytes))
        .layer(middleware::from_fn_with_state(
            state.metrics.clone(),
            metrics::track,
        ))
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(
                    request_id.clone(),
                    telemetry::SequentialRequestId::new(),
                ))
                .layer(TraceLayer::new_for_http().make_span_with(telemetry::make_span))
                .layer(PropagateRequestIdLayer::new(request_id)),
        )
        .with_state(state)
}

/// Middleware: answers a JSON 504 when the request takes longer than `timeout_ms`, and drops the
/// handler. The request's [`WriteTicket`] (used by `POST /api/log`) tells whether a write it
/// started can still be stopped (nothing stored) or was already under way (may be stored).
async fn deadline(State(timeout_ms): State<u64>, mut req: Request, next: Next) -> Response {
    let ticket = WriteTicket::new();
    req.extensions_mut().insert(ticket.clone());
    let limit = std::time::Duration::from_millis(timeout_ms);
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) if ticket.abandon() => ApiError::Timeout(timeout_ms).into_response(),
        Err(_) => ApiError::TimeoutUnknownOutcome(timeout_ms).into_response(),
    }
}

async fn ping() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// The container healthcheck: 503 until the service has been ready once (database reachable
/// with its credentials, migrations applied), then liveness only, like `ping`.
///
/// A release that cannot reach its database, or whose migration fails, therefore never turns
/// healthy and Swarm rolls it back; a database restart later does not make Swarm kill running
/// backends (that is what `/api/service/ready` is for: routing, not restarting).
async fn health(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    if state.migrated.load(Ordering::SeqCst) {
        return Ok(Json(json!({ "status": "ok" })));
    }
    let why = state
        .migration_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_else(|| "database migrations not applied yet".to_owned());
    Err(ApiError::Starting(why))
}

/// 200 only when migrations are done, the database answers and the service is not draining.
async fn ready(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    if state.draining.load(Ordering::SeqCst) {
        return Err(ApiError::ShuttingDown);
    }
    ensure_migrated(&state)?;
    store::ping(&state.pool).await?;
    Ok(Json(json!({ "status": "ok" })))
}

/// The version document never changes while the process runs: serialize it once.
async fn version_handler() -> impl IntoResponse {
    static BODY: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    let body = BODY.get_or_init(|| {
        Bytes::from(json!({ "name": SERVICE_NAME, "version": version() }).to_string())
    });
    ([(header::CONTENT_TYPE, "application/json")], body.clone())
}

async fn info(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({
        "name": SERVICE_NAME,
        "version": version(),
        "environment": state.settings.app.environment,
        "title": state.settings.app.title,
    }))
}

async fn post_log(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ticket: Option<Extension<WriteTicket>>,
    headers: HeaderMap,
    body: Result<Json<serde_json::Map<String, serde_json::Value>>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    // A map, not a derived struct: serde would also accept `["text"]` for `{message}`.
    let Json(object) =
        body.map_err(|r| ApiError::from_json_rejection(r, state.settings.server.body_limit_bytes))?;
    let raw = match object.get("message") {
        Some(serde_json::Value::String(m)) => m,
        Some(_) => return Err(ApiError::Unprocessable("`message` must be a string".into())),
        None => return Err(ApiError::Unprocessable("missing field `message`".into())),
    };
    let message = validate_message(raw, state.settings.logs.max_message_chars)?;
    ensure_migrated(&state)?;
    let client = client_addr(peer, &headers, state.settings.server.trust_forwarded_for);
    let ticket = ticket.map(|Extension(t)| t).unwrap_or_default();
    let entry = state
        .writer
        .insert(message, client, ticket)
        .await
        .map_err(write_error)?;
    Ok((
        StatusCode::CREATED,
        [(
            header::LOCATION,
            format!("/api/logs?before={}&limit=1", entry.id + 1),
        )],
        Json(entry),
    ))
}

/// The answer to a failed group commit.
fn write_error(e: WriteError) -> ApiError {
    match e {
        WriteError::Database(e) if error::is_unavailable(&e) => {
            ApiError::Unavailable(Some(format!("group insert: {e}")))
        }
        WriteError::Database(e) => ApiError::Internal(anyhow::anyhow!("group insert: {e}")),
        // Rolled back: an impossible state, a 500 with the cause in the log.
        WriteError::Inconsistent(why) => {
            ApiError::Internal(anyhow::anyhow!("group insert rolled back: {why}"))
        }
        WriteError::ReadOnly => ApiError::ReadOnly,
        WriteError::Stopped => ApiError::ShuttingDown,
    }
}

/// Trims the message and checks it is non-empty, within the limit, and storable (Postgres text
/// cannot hold NUL).
fn validate_message(raw: &str, max_chars: usize) -> Result<String, ApiError> {
    let message = raw.trim();
    if message.is_empty() {
        return Err(ApiError::Unprocessable(
            "`message` must not be empty".into(),
        ));
    }
    let chars = message.chars().count();
    if chars > max_chars {
        return Err(ApiError::Unprocessable(format!(
            "`message` is {chars} characters long; the limit is {max_chars}"
        )));
    }
    if message.contains('\0') {
        return Err(ApiError::Unprocessable(
            "`message` must not contain NUL characters".into(),
        ));
    }
    Ok(message.to_owned())
}

/// The client's address: the peer, or — behind our own proxy — the last `X-Forwarded-For` hop,
/// the one our proxy appended. Earlier hops are whatever the client sent, so when the last hop
/// does not parse the answer is the peer, never an earlier hop.
fn client_addr(peer: SocketAddr, headers: &HeaderMap, trust_forwarded_for: bool) -> String {
    if trust_forwarded_for
        && let Some(ip) = headers
            .get_all("x-forwarded-for")
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|hop| hop.trim().parse::<IpAddr>().ok())
    {
        return ip.to_string();
    }
    peer.ip().to_string()
}

#[derive(Deserialize)]
struct Page {
    limit: Option<i64>,
    before: Option<i64>,
}

#[derive(Serialize)]
struct PageOut {
    entries: Vec<LogEntry>,
    /// Pass as `?before=` to get the next (older) page; null on the last page.
    next_before: Option<i64>,
}

async fn list_logs(
    State(state): State<AppState>,
    page: Result<Query<Page>, QueryRejection>,
) -> Result<Json<impl Serialize>, ApiError> {
    let Query(page) = page?;
    let logs = &state.settings.logs;
    let limit = page.limit.unwrap_or(logs.default_page_size);
    if !(1..=logs.max_page_size).contains(&limit) {
        return Err(ApiError::BadRequest {
            code: "bad_query",
            message: format!("`limit` must be between 1 and {}", logs.max_page_size),
        });
    }
    if page.before.is_some_and(|b| b < 1) {
        return Err(ApiError::BadRequest {
            code: "bad_query",
            message: "`before` must be a positive entry id".into(),
        });
    }
    ensure_migrated(&state)?;
    let entries = store::list(&state.pool, limit, page.before).await?;
    let next_before = if entries.len() as i64 == limit {
        entries.last().map(|e| e.id)
    } else {
        None
    };
    Ok(Json(PageOut {
        entries,
        next_before,
    }))
}

fn ensure_migrated(state: &AppState) -> Result<(), ApiError> {
    if state.migrated.load(Ordering::SeqCst) {
        Ok(())
    } else {
        Err(ApiError::Unavailable(None))
    }
}

async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    // The pool as the scrape found it, before the read below takes a connection of its own.
    state
        .metrics
        .observe_pool(&state.pool, state.settings.database.max_connections);
    // The backups' last runs, from the database; a slow or failing read leaves the gauges as
    // they were (a scrape never waits on it for long, nor fails for it).
    if state.migrated.load(Ordering::SeqCst) {
        match tokio::time::timeout(
            std::time::Duration::from_secs(1),
            crate::store::backup_status(&state.pool),
        )
        .await
        {
            Ok(Ok(rows)) => state.metrics.set_backups(&rows),
            Ok(Err(e)) => tracing::debug!(error = %e, "cannot read backup_status for /metrics"),
            Err(_) => tracing::debug!("reading backup_status for /metrics took over 1 s"),
        }
    }
    let body = state.metrics.encode();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(uri.path().to_owned())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_validation() {
        assert_eq!(validate_message("  hi ", 5).unwrap(), "hi");
        assert!(validate_message("   ", 5).is_err());
        assert!(validate_message("ééééé", 5).is_ok());
        assert!(validate_message("éééééé", 5).is_err());
        assert!(validate_message("a\0b", 5).is_err());
    }

    #[test]
    fn client_addr_uses_last_forwarded_hop_only_when_trusted() {
        let peer: SocketAddr = "10.0.0.9:1234".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "1.2.3.4, 5.6.7.8".parse().unwrap());
        assert_eq!(client_addr(peer, &h, true), "5.6.7.8");
        assert_eq!(client_addr(peer, &h, false), "10.0.0.9");
        h.insert("x-forwarded-for", "garbage".parse().unwrap());
        assert_eq!(client_addr(peer, &h, true), "10.0.0.9");
        // A last hop that does not parse: the peer, never the client-supplied earlier hop.
        for forged in ["1.2.3.4, garbage", "1.2.3.4,", "1.2.3.4, 5.6.7.8:99"] {
            h.insert("x-forwarded-for", forged.parse().unwrap());
            assert_eq!(client_addr(peer, &h, true), "10.0.0.9", "{forged}");
        }
        // Several headers: the last one holds the last hop.
        h.insert("x-forwarded-for", "1.2.3.4".parse().unwrap());
        h.append("x-forwarded-for", "9.9.9.9".parse().unwrap());
        assert_eq!(client_addr(peer, &h, true), "9.9.9.9");
        h.append("x-forwarded-for", "junk".parse().unwrap());
        assert_eq!(client_addr(peer, &h, true), "10.0.0.9");
        h.insert("x-forwarded-for", " 2001:db8::1 ".parse().unwrap());
        assert_eq!(client_addr(peer, &h, true), "2001:db8::1");
    }

    #[test]
    fn write_errors_map_to_their_answers() {
        use std::sync::Arc;
        let status = |e: WriteError| write_error(e).into_response().status().as_u16();
        assert_eq!(
            status(WriteError::Database(Arc::new(sqlx::Error::PoolTimedOut))),
            503
        );
        assert_eq!(
            status(WriteError::Database(Arc::new(sqlx::Error::RowNotFound))),
            500
        );
        assert_eq!(status(WriteError::Inconsistent("x".into())), 500);
        assert_eq!(status(WriteError::Stopped), 503);
        let r = write_error(WriteError::ReadOnly).into_response();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "5");
        let r = write_error(WriteError::Inconsistent("row 0 does not pair".into())).into_response();
        let detail = error::server_error_detail(&r).unwrap();
        assert!(detail.contains("row 0 does not pair"), "{detail}");
        let r =
            write_error(WriteError::Database(Arc::new(sqlx::Error::PoolTimedOut))).into_response();
        assert!(
            error::server_error_detail(&r)
                .unwrap()
                .contains("pool timed out")
        );
    }
}
