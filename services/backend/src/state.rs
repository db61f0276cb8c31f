//! State shared by every handler.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use sqlx::PgPool;

use crate::config::Settings;
use crate::metrics::Metrics;
use crate::store::LogWriter;

/// Everything a handler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub pool: PgPool,
    pub writer: LogWriter,
    pub metrics: Arc<Metrics>,
    /// Set once on SIGTERM/SIGINT: readiness answers 503 from then on.
    pub draining: Arc<AtomicBool>,
    /// Set once the migrations have been applied.
    pub migrated: Arc<AtomicBool>,
}
