//! The HTTP error type: every failure becomes a JSON body `{"error":{"code","message"}}`.
//!
//! Client mistakes map to 4xx with a message saying what was wrong. Database outages map to 503
//! so clients and proxies can retry. Anything unexpected is an opaque 500; its detail goes to
//! the log (by the request middleware, see [`server_error_detail`]), never to the client.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error answered to a client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("{0}")]
    Unprocessable(String),
    #[error("request body is larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
    #[error("expected a request with `Content-Type: application/json`")]
    UnsupportedMediaType,
    #[error("no route for {0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("database unavailable")]
    Unavailable(#[source] Option<sqlx::Error>),
    #[error("service is shutting down")]
    ShuttingDown,
    /// Not ready once since start; the reason (e.g. the database refused the password).
    #[error("not ready since start: {0}")]
    Starting(String),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// Detail of a 5xx, kept in the response extensions for the logging middleware.
#[derive(Clone)]
struct ErrorDetail(String);

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            ApiError::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_message"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "database_unavailable"),
            ApiError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            ApiError::Starting(_) => (StatusCode::SERVICE_UNAVAILABLE, "starting"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// Maps a JSON body rejection to the error the API documents.
    pub fn from_json_rejection(rejection: JsonRejection, body_limit: usize) -> Self {
        match rejection {
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
            JsonRejection::JsonSyntaxError(e) => ApiError::BadRequest {
                code: "malformed_json",
                message: e.body_text(),
            },
            JsonRejection::JsonDataError(e) => ApiError::Unprocessable(e.body_text()),
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge(body_limit)
            }
            other => ApiError::BadRequest {
                code: "bad_request",
                message: other.body_text(),
            },
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::BadRequest {
            code: "bad_query",
            message: r.body_text(),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if is_unavailable(&e) {
            ApiError::Unavailable(Some(e))
        } else {
            ApiError::Internal(e.into())
        }
    }
}

/// Whether a database error means "the database cannot be reached right now" (retryable)
/// rather than a bug.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 57P: operator intervention (shutdown, cannot connect now);
            // 53: insufficient resources (too many connections).
            code.starts_with("08") || code.starts_with("57P") || code.starts_with("53")
        }),
        _ => false,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = self.to_string();
        let mut response = (
            status,
            axum::Json(json!({ "error": { "code": code, "message": message } })),
        )
            .into_response();
        if status.is_server_error() {
            let detail = match &self {
                ApiError::Unavailable(Some(e)) => format!("{message}: {e}"),
                ApiError::Internal(e) => format!("{e:#}"),
                _ => message,
            };
            response.extensions_mut().insert(ErrorDetail(detail));
        }
        response
    }
}

/// The logged detail of a 5xx answered by a handler, if any (the client only sees the generic
/// message). Read by the request middleware in [`crate::metrics`].
pub fn server_error_detail(response: &Response) -> Option<&str> {
    response
        .extensions()
        .get::<ErrorDetail>()
        .map(|d| d.0.as_str())
}
