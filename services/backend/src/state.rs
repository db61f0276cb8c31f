//! State shared by every handler.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

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
    /// Set once the migrations have been applied: the database was reachable with our
    /// credentials and the schema is current. Never cleared (see `/api/service/health`).
    pub migrated: Arc<AtomicBool>,
    /// Why the migrations have not been applied yet (the last attempt's error), for
    /// `/api/service/health` and so for `docker inspect` and the rollout watcher.
    pub migration_error: Arc<Mutex<Option<String>>>,
}
