//! Prometheus metrics: request counts and latencies by route and status, pool gauges, batch sizes,
//! rows abandoned, rows refused during a restore, and the database backups' last runs.
//!
//! One registry per application (no global recorder), so several apps can live in one process.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use sqlx::PgPool;

use crate::store::{BackupStatus, WriterEvent};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: Route,
    status: u16,
}

/// The matched route of a request, or `unmatched`. It shares the router's own string (an `Arc`
/// inside [`MatchedPath`]): labelling a request allocates nothing.
#[derive(Clone, Debug)]
struct Route(Option<MatchedPath>);

impl Route {
    fn as_str(&self) -> &str {
        self.0.as_ref().map_or("unmatched", MatchedPath::as_str)
    }
}

impl std::hash::Hash for Route {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialEq for Route {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Route {}

impl EncodeLabelValue for Route {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackupLabels {
    kind: &'static str,
}

/// The kinds of backup run `stackship db` records in the `backup_status` table; a row of any
/// other kind is not exported (the label set stays bounded).
pub const BACKUP_KINDS: [&str; 4] = ["backup", "offsite", "test_restore", "repository_check"];

/// The application's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RequestLabels, Histogram>,
    pool: Family<PoolLabels, Gauge>,
    batch_rows: Histogram,
    abandoned: Family<StageLabels, Counter>,
    read_only: Counter,
    backup_last_success: Family<BackupLabels, Gauge<f64, AtomicU64>>,
    backup_last_run_ok: Family<BackupLabels, Gauge>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, matched route and status",
            requests.clone(),
        );
        let latency = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            // 0.5 ms .. ~16 s: covers a cached GET up to a request stuck behind the DB timeout.
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.0005, 2.0, 16,
            ))
        });
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency, by method, matched route and status",
            latency.clone(),
        );
        let pool = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "db_pool_connections",
            "Database pool connections by state (idle, in_use, max)",
            pool.clone(),
        );
        let batch_rows = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(1.0, 2.0, 11),
        );
        registry.register(
            "log_group_commit_rows",
            "Rows per group-commit INSERT of POST /api/log",
            batch_rows.clone(),
        );
        let abandoned = Family::<StageLabels, Counter>::default();
        registry.register(
            "log_rows_abandoned",
            "POST /api/log rows whose request went away (client gone or timed out): dropped while \
             queued (stage=queued, never written) or committed anyway (stage=in_flight)",
            abandoned.clone(),
        );
        for stage in ["queued", "in_flight"] {
            // Both series exist from the start, at 0, so a rate() over them is never empty.
            let _ = abandoned.get_or_create(&StageLabels { stage });
        }
        let read_only = Counter::default();
        registry.register(
            "log_rows_read_only",
            "POST /api/log rows refused with 503 read_only, never written: a database restore held \
             the restore lock",
            read_only.clone(),
        );
        registry.register(
            "db_statements_resent",
            "Statements sent again on another connection because Postgres had ended their \
             session (a restart) or, for reads, their connection broke; counted per process",
            crate::store::STATEMENTS_RESENT.clone(),
        );
        let backup_last_success = Family::<BackupLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "backup_last_success_timestamp_seconds",
            "When the last successful database backup run of each kind (backup, offsite, \
             test_restore, repository_check) started, as stackship db recorded it; alert on \
             time() minus it",
            backup_last_success.clone(),
        );
        let backup_last_run_ok = Family::<BackupLabels, Gauge>::default();
        registry.register(
            "backup_last_run_ok",
            "1 when the last database backup run of each kind succeeded, 0 when it failed",
            backup_last_run_ok.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            pool,
            batch_rows,
            abandoned,
            read_only,
            backup_last_success,
            backup_last_run_ok,
        }
    }

    /// Sets the backup gauges from the `backup_status` rows (kinds outside [`BACKUP_KINDS`]
    /// are left out; a kind never successful has no timestamp series).
    pub fn set_backups(&self, rows: &[BackupStatus]) {
        for row in rows {
            let Some(kind) = BACKUP_KINDS.iter().find(|k| **k == row.kind) else {
                continue;
            };
            let labels = BackupLabels { kind };
            if let Some(at) = row.last_success {
                self.backup_last_success.get_or_create(&labels).set(at);
            }
            self.backup_last_run_ok
                .get_or_create(&labels)
                .set(i64::from(row.last_run_ok));
        }
    }

    /// Records what the group-commit writer reports.
    pub fn observe_writer(&self, event: WriterEvent) {
        match event {
            WriterEvent::Batch(rows) => self.batch_rows.observe(rows as f64),
            WriterEvent::DroppedQueued(rows) => {
                self.abandoned
                    .get_or_create(&StageLabels { stage: "queued" })
                    .inc_by(rows as u64);
            }
            WriterEvent::CommittedAbandoned => {
                self.abandoned
                    .get_or_create(&StageLabels { stage: "in_flight" })
                    .inc();
            }
            WriterEvent::RefusedReadOnly(rows) => {
                self.read_only.inc_by(rows as u64);
            }
        }
    }

    /// Prometheus text exposition, with pool gauges read now.
    pub fn render(&self, pool: &PgPool, max_connections: u32) -> String {
        self.observe_pool(pool, max_connections);
        self.encode()
    }

    /// Sets the pool gauges from the pool as it is now.
    pub fn observe_pool(&self, pool: &PgPool, max_connections: u32) {
        let size = i64::from(pool.size());
        let idle = pool.num_idle() as i64;
        self.pool
            .get_or_create(&PoolLabels { state: "idle" })
            .set(idle);
        self.pool
            .get_or_create(&PoolLabels { state: "in_use" })
            .set((size - idle).max(0));
        self.pool
            .get_or_create(&PoolLabels { state: "max" })
            .set(i64::from(max_connections));
    }

    /// Prometheus text exposition of every metric as it stands.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A bounded label for the method: arbitrary method names must not grow the label set.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// Middleware: counts and times every request under its matched route (`unmatched` for 404s,
/// so random paths cannot blow up the label set), and logs the detail of 5xx answers.
pub async fn track(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = method_label(req.method());
    let route = Route(req.extensions().get::<MatchedPath>().cloned());
    let response = next.run(req).await;
    let status = response.status().as_u16();
    if let Some(detail) = crate::error::server_error_detail(&response) {
        tracing::error!(
            method,
            route = route.as_str(),
            status,
            error = detail,
            "request failed"
        );
    }
    let labels = RequestLabels {
        method,
        route,
        status,
    };
    metrics.requests.get_or_create(&labels).inc();
    metrics
        .latency
        .get_or_create(&labels)
        .observe(start.elapsed().as_secs_f64());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_are_the_method_or_other() {
        for (m, label) in [
            (Method::GET, "GET"),
            (Method::POST, "POST"),
            (Method::HEAD, "HEAD"),
            (Method::PUT, "PUT"),
            (Method::DELETE, "DELETE"),
            (Method::PATCH, "PATCH"),
            (Method::OPTIONS, "OPTIONS"),
            (Method::TRACE, "OTHER"),
            (Method::from_bytes(b"BREW").unwrap(), "OTHER"),
        ] {
            assert_eq!(method_label(&m), label);
        }
    }

    #[tokio::test]
    async fn routes_are_one_label_value_per_matched_path() {
        use axum::body::Body;
        use axum::routing::get;
        use std::sync::Mutex;
        use tower::ServiceExt;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let keep = |seen: Arc<Mutex<Vec<MatchedPath>>>| {
            move |p: MatchedPath| async move { seen.lock().unwrap().push(p) }
        };
        let app = axum::Router::new()
            .route("/a/{id}", get(keep(seen.clone())))
            .route("/b", get(keep(seen.clone())));
        for uri in ["/a/1", "/a/2", "/b"] {
            let req = Request::builder().uri(uri).body(Body::empty()).unwrap();
            app.clone().oneshot(req).await.unwrap();
        }
        let seen = seen.lock().unwrap();
        let routes: Vec<Route> = seen.iter().map(|p| Route(Some(p.clone()))).collect();
        assert_eq!(routes[0], routes[1]);
        assert_ne!(routes[0], routes[2]);
        assert_ne!(routes[2], Route(None));
        assert_eq!(Route(None), Route(None));
        assert_eq!(routes[0].as_str(), "/a/{id}");
        assert_eq!(Route(None).as_str(), "unmatched");
    }

    #[tokio::test]
    async fn writer_events_are_counted() {
        let m = Metrics::new();
        m.observe_writer(WriterEvent::Batch(3));
        m.observe_writer(WriterEvent::DroppedQueued(2));
        m.observe_writer(WriterEvent::DroppedQueued(3));
        m.observe_writer(WriterEvent::CommittedAbandoned);
        m.observe_writer(WriterEvent::RefusedReadOnly(4));
        m.observe_writer(WriterEvent::RefusedReadOnly(2));
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        let text = m.render(&pool, 7);
        assert!(
            text.contains(r#"log_rows_abandoned_total{stage="queued"} 5"#),
            "{text}"
        );
        assert!(
            text.contains(r#"log_rows_abandoned_total{stage="in_flight"} 1"#),
            "{text}"
        );
        assert!(text.contains("log_group_commit_rows_sum 3.0"), "{text}");
        assert!(text.contains("log_rows_read_only_total 6"), "{text}");
        assert!(
            text.contains(r#"db_pool_connections{state="max"} 7"#),
            "{text}"
        );
        assert!(
            text.contains(r#"db_pool_connections{state="idle"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"db_pool_connections{state="in_use"} 0"#),
            "{text}"
        );
    }
}
