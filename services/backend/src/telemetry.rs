//! Logging: JSON lines in containers, human-readable in a terminal; one span per request.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::MatchedPath;
use axum::http::{HeaderValue, Request};
use tower_http::request_id::{MakeRequestId, RequestId};
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

/// Request ids for requests that arrive without one (behind the proxy, nginx's `$request_id`
/// is passed on instead): a random per-process prefix and a counter, e.g. `3f9a1c07d2e4b6a8-1a`.
/// Unique per process, distinct across replicas, and far cheaper than a UUID per request.
#[derive(Clone)]
pub struct SequentialRequestId {
    prefix: u64,
    next: Arc<AtomicU64>,
}

impl SequentialRequestId {
    pub fn new() -> Self {
        // RandomState is seeded from the OS's random source: a random prefix without a crate.
        let prefix = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Self {
            prefix,
            next: Arc::new(AtomicU64::new(1)),
        }
    }
}

impl Default for SequentialRequestId {
    fn default() -> Self {
        Self::new()
    }
}

impl MakeRequestId for SequentialRequestId {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        HeaderValue::try_from(format!("{:016x}-{n:x}", self.prefix))
            .ok()
            .map(RequestId::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_unique_and_share_the_process_prefix() {
        let mut make = SequentialRequestId::new();
        let req = Request::new(());
        let a = make.make_request_id(&req).unwrap();
        let b = make.make_request_id(&req).unwrap();
        let (a, b) = (
            a.header_value().to_str().unwrap().to_owned(),
            b.header_value().to_str().unwrap().to_owned(),
        );
        assert_ne!(a, b);
        assert_eq!(a.split('-').next(), b.split('-').next());
        let other = SequentialRequestId::new().make_request_id(&req).unwrap();
        assert_ne!(
            other.header_value().to_str().unwrap(),
            a,
            "prefix differs per instance"
        );
    }
}
