//! Building and running the application: pool, migrations, writer, listener, graceful shutdown.
//!
//! Shutdown sequence (on the future passed to [`Application::run_until_stopped`], which `main`
//! ties to SIGTERM and SIGINT):
//! 1. readiness turns 503 at once (`draining`);
//! 2. the service keeps serving for `drain_delay` — Swarm's DNS drops the task and the proxy
//!    re-resolves, so traffic moves away before the listener closes;
//! 3. the listener closes; from here one budget, `shutdown_timeout`, covers everything left:
//!    in-flight requests finish, queued group commits are flushed, the pool is closed;
//! 4. `run_until_stopped` returns Ok, or an error naming what the budget cut short (the process
//!    then exits 1). So the whole shutdown takes at most `drain_delay + shutdown_timeout`, which
//!    the stack's `stop_grace_period` exceeds: Swarm never has to SIGKILL mid-write.
//!
//! A second SIGTERM or SIGINT during all this exits at once (status 128 + signal number).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use axum::serve::ListenerExt;
use secrecy::ExposeSecret;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{DatabaseSettings, Settings};
use crate::metrics::Metrics;
use crate::routes;
use crate::state::{AppState, Shared};
use crate::store::{self, LogWriter};

/// A built application: listener bound, background tasks started, not serving yet.
pub struct Application {
    listener: TcpListener,
    port: u16,
    state: AppState,
    writer_task: JoinHandle<()>,
    migrate_task: JoinHandle<()>,
}

/// Connection options from the settings.
pub fn connect_options(db: &DatabaseSettings) -> PgConnectOptions {
    let mut options = PgConnectOptions::new()
        .host(&db.host)
        .port(db.port)
        .username(&db.user)
        .database(&db.name)
        .application_name("backend");
    if let Some(password) = &db.password {
        options = options.password(password.expose_secret());
    }
    options
}

/// A pool that connects on first use, so the service starts (and answers 503) while the
/// database is down, and recovers by itself when it comes back.
pub fn lazy_pool(db: &DatabaseSettings) -> PgPool {
    let seconds = |s: u64| (s > 0).then(|| std::time::Duration::from_secs(s));
    let ping_idle_after = std::time::Duration::from_millis(db.ping_idle_after_ms);
    PgPoolOptions::new()
        .max_connections(db.max_connections)
        .min_connections(db.min_connections)
        .max_lifetime(seconds(db.max_lifetime_s))
        .idle_timeout(seconds(db.idle_timeout_s))
        .acquire_timeout(std::time::Duration::from_millis(db.acquire_timeout_ms))
        // No ping before every acquire: it would double the round trips of each group commit.
        .test_before_acquire(false)
        // But a connection that sat idle is pinged first: one that died with its server (a
        // Postgres restart, a failover) is then closed and replaced instead of failing the next
        // request that uses it, however much later. Under load connections are seldom idle
        // that long, and a ping is one round trip. A busy one is pinged too while it may have
        // died with a session Postgres ended under another statement (see `store`).
        .before_acquire(move |conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= ping_idle_after || store::may_have_died(meta.age) {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
        .connect_lazy_with(connect_options(db))
}

impl Application {
    /// Binds `server.host:server.port` (port 0 picks a free one) and starts the migrations and
    /// the group-commit writer in the background.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let pool = lazy_pool(&settings.database);
        Self::build_with_pool(settings, pool).await
    }

    /// Like [`Application::build`] with a given pool (tests pass the one `#[sqlx::test]` made).
    pub async fn build_with_pool(settings: Settings, pool: PgPool) -> anyhow::Result<Self> {
        let address = format!("{}:{}", settings.server.host, settings.server.port);
        let listener = TcpListener::bind(&address)
            .await
            .with_context(|| format!("cannot listen on {address}"))?;
        let port = listener.local_addr()?.port();

        let metrics = Arc::new(Metrics::new());
        let observer = {
            let metrics = metrics.clone();
            Arc::new(move |event| metrics.observe_writer(event))
        };
        let (writer, writer_task) = LogWriter::spawn(
            pool.clone(),
            settings.logs.batch_max_rows,
            settings.logs.max_inflight_batches,
            observer,
        );
        let migrated = Arc::new(AtomicBool::new(false));
        let migration_error = Arc::new(std::sync::Mutex::new(None));
        let migrate_task = tokio::spawn(store::migrate_until_done(
            pool.clone(),
            migrated.clone(),
            migration_error.clone(),
        ));
        let state = AppState::new(Shared {
            settings: Arc::new(settings),
            pool,
            writer,
            metrics,
            draining: Arc::new(AtomicBool::new(false)),
            migrated,
            migration_error,
        });
        Ok(Self {
            listener,
            port,
            state,
            writer_task,
            migrate_task,
        })
    }

    /// The port actually bound.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The shared state (tests use it to look at `draining`).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then drains and stops as described in the module docs.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            listener,
            port,
            state,
            writer_task,
            migrate_task,
        } = self;
        let server_settings = state.settings.server.clone();
        let draining = state.draining.clone();
        let pool = state.pool.clone();
        // Set when the drain delay is over: the end of the one shutdown budget.
        let budget_end = Arc::new(std::sync::OnceLock::<Instant>::new());
        let stopped_accepting = Arc::new(Notify::new());

        let stop_accepting = {
            let stopped_accepting = stopped_accepting.clone();
            let budget_end = budget_end.clone();
            let server_settings = server_settings.clone();
            async move {
                shutdown.await;
                draining.store(true, Ordering::SeqCst);
                tracing::info!(
                    drain_delay_ms = server_settings.drain_delay_ms,
                    "shutdown requested: readiness is 503, still serving during the drain delay"
                );
                tokio::time::sleep(server_settings.drain_delay()).await;
                tracing::info!(
                    shutdown_timeout_ms = server_settings.shutdown_timeout_ms,
                    "drain delay over: no new connections; in-flight requests, queued writes and \
                     the pool get one budget"
                );
                let _ = budget_end.set(Instant::now() + server_settings.shutdown_timeout());
                stopped_accepting.notify_one();
            }
        };

        let app = routes::app(state);
        tracing::info!(port, version = routes::version(), "listening");
        // No Nagle delay on small answers (as nginx's `tcp_nodelay on`).
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::warn!(error = %e, "cannot set TCP_NODELAY on an accepted connection");
            }
        });
        let server = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(stop_accepting);

        let end = || {
            *budget_end
                .get()
                .expect("the budget starts before the listener closes")
        };
        let deadline = async {
            stopped_accepting.notified().await;
            tokio::time::sleep_until(end()).await;
        };
        let mut cut_short = Vec::new();
        tokio::select! {
            result = server => result.context("server failed")?,
            () = deadline => cut_short.push("requests still in flight were abandoned"),
        }

        // Once the router (and every LogWriter clone in it) is gone, the writer flushes its
        // queue and exits. Abandoned requests may still hold clones: the budget bounds the wait.
        migrate_task.abort();
        if tokio::time::timeout_at(end(), writer_task).await.is_err() {
            cut_short.push("queued log writes were not all flushed");
        }
        if tokio::time::timeout_at(end(), pool.close()).await.is_err() {
            cut_short.push("the database pool did not close");
        }
        if cut_short.is_empty() {
            tracing::info!("stopped");
            Ok(())
        } else {
            let why = cut_short.join("; ");
            tracing::error!(
                shutdown_timeout_ms = server_settings.shutdown_timeout_ms,
                "shutdown budget ran out: {why}"
            );
            anyhow::bail!(
                "shutdown budget of {} ms ran out: {why}",
                server_settings.shutdown_timeout_ms
            )
        }
    }
}

/// Resolves on SIGTERM (what Swarm sends) or SIGINT (Ctrl-C). From then on, a second one exits
/// the process at once with status 128 + its number: an operator who insists is obeyed.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("cannot install the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("cannot install the SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    tokio::spawn(async move {
        let (name, number) = tokio::select! {
            _ = term.recv() => ("SIGTERM", 15),
            _ = int.recv() => ("SIGINT", 2),
        };
        tracing::warn!("second {name}: exiting at once");
        eprintln!("backend: second {name} during shutdown: exiting at once");
        std::process::exit(128 + number);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_zero_lifetime_or_idle_timeout_means_never() {
        let db = DatabaseSettings {
            max_lifetime_s: 0,
            idle_timeout_s: 1,
            ..DatabaseSettings::default()
        };
        let pool = lazy_pool(&db);
        assert_eq!(pool.options().get_max_lifetime(), None);
        assert_eq!(
            pool.options().get_idle_timeout(),
            Some(Duration::from_secs(1))
        );
    }
}
