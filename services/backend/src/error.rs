//! The HTTP error type: every failure becomes a JSON body `{"error":{"code","message"}}`.
//!
//! Client mistakes map to 4xx with a message saying what was wrong. Database outages map to 503
//! so clients and proxies can retry; so do writes refused while a restore runs (`read_only`, with
//! `Retry-After`). Anything unexpected is an opaque 500; its detail goes to
//! the log (by the request middleware, see [`server_error_detail`]), never to the client.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
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
    /// The database cannot be reached now; the detail (for the log) when there is one.
    #[error("database unavailable")]
    Unavailable(Option<String>),
    /// A database restore holds the restore lock ([`crate::store::RESTORE_LOCK_KEY`]): the write
    /// was refused, nothing was stored. Answered with `Retry-After`.
    #[error(
        "the database is being restored: writes are refused until it finishes; reads still work; retry later"
    )]
    ReadOnly,
    /// The request waited longer than `server.request_timeout_ms` (milliseconds); nothing was
    /// written.
    #[error("no answer from the database within {0} ms; nothing was stored, retrying is safe")]
    Timeout(u64),
    /// A write timed out while its row was already being written: it may have been stored.
    #[error(
        "no answer from the database within {0} ms; the write was already under way and may have been stored"
    )]
    TimeoutUnknownOutcome(u64),
    #[error("service is shutting down")]
    ShuttingDown,
    /// Not ready once since start; the reason (e.g. the database refused the password).
    #[error("not ready since start: {0}")]
    Starting(String),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// Seconds a client is asked to wait (`Retry-After`) before retrying a write refused during a
/// restore.
pub const READ_ONLY_RETRY_AFTER_SECS: u64 = 5;

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
            ApiError::ReadOnly => (StatusCode::SERVICE_UNAVAILABLE, "read_only"),
            ApiError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            ApiError::TimeoutUnknownOutcome(_) => {
                (StatusCode::GATEWAY_TIMEOUT, "timeout_unknown_outcome")
            }
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
            ApiError::Unavailable(Some(e.to_string()))
        } else {
            ApiError::Internal(e.into())
        }
    }
}

/// Whether a database error means "the database cannot be reached right now" (retryable)
/// rather than a bug. A protocol error is a bug (ours or the driver's), not an outage.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
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
        if matches!(self, ApiError::ReadOnly) {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(READ_ONLY_RETRY_AFTER_SECS),
            );
        }
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A database error with this SQLSTATE, as the driver reports one from Postgres.
    pub(crate) fn db_error(code: &str) -> sqlx::Error {
        // A database error as Postgres reports it, through the driver's own type.
        #[derive(Debug)]
        struct Db(String);
        impl std::fmt::Display for Db {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "database error {}", self.0)
            }
        }
        impl std::error::Error for Db {}
        impl sqlx::error::DatabaseError for Db {
            fn message(&self) -> &str {
                "boom"
            }
            fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
                Some(self.0.as_str().into())
            }
            fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
                self
            }
            fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
                self
            }
            fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
                self
            }
            fn kind(&self) -> sqlx::error::ErrorKind {
                sqlx::error::ErrorKind::Other
            }
        }
        sqlx::Error::Database(Box::new(Db(code.to_owned())))
    }

    #[test]
    fn only_outages_count_as_unavailable() {
        let io = || std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        for e in [
            sqlx::Error::Io(io()),
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::WorkerCrashed,
            db_error("08006"),
            db_error("57P01"),
            db_error("53300"),
        ] {
            assert!(is_unavailable(&e), "{e:?}");
        }
        for e in [
            sqlx::Error::Protocol("group insert returned 1 rows for 2 inputs".into()),
            sqlx::Error::RowNotFound,
            db_error("23505"),
            db_error("42P01"),
            db_error("P0001"),
        ] {
            assert!(!is_unavailable(&e), "{e:?}");
        }
    }

    #[test]
    fn server_errors_keep_their_detail_for_the_log_and_hide_it_from_the_client() {
        let cases = [
            (
                ApiError::from(sqlx::Error::PoolTimedOut),
                503,
                "database_unavailable",
                Some("database unavailable: pool timed out while waiting for an open connection"),
            ),
            (
                ApiError::from(sqlx::Error::Protocol("bad frame".into())),
                500,
                "internal",
                Some("bad frame"),
            ),
            (
                ApiError::Internal(anyhow::anyhow!("cause").context("outer")),
                500,
                "internal",
                Some("outer: cause"),
            ),
            (
                ApiError::Timeout(7),
                504,
                "timeout",
                Some(
                    "no answer from the database within 7 ms; nothing was stored, retrying is safe",
                ),
            ),
            (
                ApiError::TimeoutUnknownOutcome(7),
                504,
                "timeout_unknown_outcome",
                None,
            ),
            (
                ApiError::ReadOnly,
                503,
                "read_only",
                Some("the database is being restored"),
            ),
            (ApiError::NotFound("/x".into()), 404, "not_found", None),
            (
                ApiError::PayloadTooLarge(10),
                413,
                "payload_too_large",
                None,
            ),
        ];
        for (error, status, code, detail) in cases {
            let client_message = error.to_string();
            let response = error.into_response();
            assert_eq!(response.status().as_u16(), status, "{code}");
            let retry_after = response.headers().get("retry-after");
            if code == "read_only" {
                assert_eq!(retry_after.unwrap(), "5");
            } else {
                assert!(retry_after.is_none(), "{code}: {retry_after:?}");
            }
            let logged = server_error_detail(&response);
            match detail {
                Some(d) => assert!(logged.unwrap().contains(d), "{code}: {logged:?}"),
                None if status >= 500 => assert!(logged.is_some(), "{code}"),
                None => assert!(logged.is_none(), "{code}"),
            }
            let body = futures_body(response);
            assert_eq!(body["error"]["code"], code);
            assert_eq!(body["error"]["message"], client_message.as_str());
            if status == 500 {
                assert_eq!(client_message, "internal error", "500s are opaque");
            }
        }
    }

    /// A request body that fails while it is read (as when the client goes away).
    struct BrokenBody;
    impl hyper::body::Body for BrokenBody {
        type Data = axum::body::Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
            std::task::Poll::Ready(Some(Err(std::io::Error::other("connection reset"))))
        }
    }

    #[test]
    fn json_rejections_map_by_kind() {
        use axum::extract::FromRequest;
        let rejection = |body: axum::body::Body, content_type: &str| {
            let request = axum::http::Request::builder()
                .method("POST")
                .header("content-type", content_type)
                .body(body)
                .unwrap();
            let result = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
                .block_on(axum::Json::<serde_json::Value>::from_request(request, &()));
            ApiError::from_json_rejection(result.unwrap_err(), 42)
        };
        let code = |e: ApiError| e.status_and_code();
        // Over axum's default limit of 2 MB.
        let big = axum::body::Body::from(vec![b' '; 3 << 20]);
        let e = rejection(big, "application/json");
        assert!(matches!(e, ApiError::PayloadTooLarge(42)), "{e:?}");
        let e = rejection(axum::body::Body::new(BrokenBody), "application/json");
        assert_eq!(code(e), (StatusCode::BAD_REQUEST, "bad_request"));
        let e = rejection(axum::body::Body::from("{"), "application/json");
        assert_eq!(code(e), (StatusCode::BAD_REQUEST, "malformed_json"));
        let e = rejection(axum::body::Body::from("{}"), "text/plain");
        assert_eq!(
            code(e),
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
        );
    }

    fn futures_body(response: Response) -> serde_json::Value {
        let bytes = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(axum::body::to_bytes(response.into_body(), 1 << 16))
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }
}
