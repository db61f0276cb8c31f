//! State shared by every handler.

use std::ops::Deref;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use sqlx::PgPool;

use crate::config::Settings;
use crate::metrics::Metrics;
use crate::store::LogWriter;

/// Everything a handler needs, behind one `Arc`: axum clones the state for every request, and
/// one reference count is far cheaper than one per field (each count is an atomic that every
/// core's requests would bounce between them).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] shares.
pub struct Shared {
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
