//! Logging: JSON lines in containers, human-readable in a terminal; one span per request.

use axum::extract::MatchedPath;
use axum::http::Request;
use tracing::Span;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, TelemetrySettings};

/// Installs the global subscriber. `RUST_LOG` wins over the configured filter.
pub fn init(settings: &TelemetrySettings) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(f) if !f.is_empty() => {
            EnvFilter::try_new(&f).map_err(|e| anyhow::anyhow!("invalid RUST_LOG {f:?}: {e}"))?
        }
        _ => EnvFilter::try_new(&settings.filter)
            .map_err(|e| anyhow::anyhow!("invalid telemetry.filter {:?}: {e}", settings.filter))?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    let result = match settings.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot install the log subscriber: {e}"))
}

/// The span of one request: method, matched route (not the raw path, to keep cardinality low)
/// and the request id set by `SetRequestIdLayer`.
pub fn make_span<B>(req: &Request<B>) -> Span {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str());
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    tracing::info_span!(
        "request",
        method = %req.method(),
        route,
        path = %req.uri().path(),
        request_id,
    )
}
