//! Log storage in Postgres: migrations, paged reads and group-committed writes.
//!
//! # Group commit
//! A single-row INSERT per request is bounded by Postgres commits. Instead, [`LogWriter`] queues
//! each request's row; a dispatcher task takes everything queued (up to `batch_max_rows`) and
//! writes it with one multi-row INSERT, which is one transaction and one commit. At most
//! `max_inflight_batches` INSERTs run at once; while they run, new rows queue up and form the
//! next, larger batch, so batch size follows the load without any timer. Every request is
//! answered only after the statement holding its row has committed, so a 201 always means the
//! row is durable.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

/// One stored log entry, as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct LogEntry {
    pub id: i64,
    pub created_at: DateTime<Utc>,
    pub client_addr: String,
    pub message: String,
}

/// A row waiting for its group commit.
struct Pending {
    message: String,
    client_addr: String,
    reply: oneshot::Sender<Result<LogEntry, Arc<sqlx::Error>>>,
}

/// Why a write was not stored.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("database error: {0}")]
    Database(Arc<sqlx::Error>),
    #[error("log writer stopped")]
    Stopped,
}

/// Handle to the group-commit writer. Cheap to clone.
#[derive(Clone)]
pub struct LogWriter {
    tx: mpsc::Sender<Pending>,
}

/// Observes batch sizes (for metrics).
pub type BatchObserver = Arc<dyn Fn(usize) + Send + Sync>;

impl LogWriter {
    /// Starts the dispatcher. It stops once every `LogWriter` clone is dropped and the queue is
    /// flushed; await the returned handle to know every accepted row was answered.
    pub fn spawn(
        pool: PgPool,
        batch_max_rows: usize,
        max_inflight_batches: usize,
        observe: BatchObserver,
    ) -> (Self, JoinHandle<()>) {
        // Bounded queue: beyond this, requests wait (backpressure) rather than grow memory.
        let (tx, rx) = mpsc::channel(batch_max_rows * max_inflight_batches * 4);
        let handle = tokio::spawn(dispatch(
            pool,
            rx,
            batch_max_rows,
            max_inflight_batches,
            observe,
        ));
        (Self { tx }, handle)
    }

    /// Stores one entry; returns once it is committed.
    pub async fn insert(
        &self,
        message: String,
        client_addr: String,
    ) -> Result<LogEntry, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Pending {
                message,
                client_addr,
                reply,
            })
            .await
            .map_err(|_| WriteError::Stopped)?;
        match answer.await {
            Ok(Ok(entry)) => Ok(entry),
            Ok(Err(e)) => Err(WriteError::Database(e)),
            Err(_) => Err(WriteError::Stopped),
        }
    }
}

async fn dispatch(
    pool: PgPool,
    mut rx: mpsc::Receiver<Pending>,
    batch_max_rows: usize,
    max_inflight_batches: usize,
    observe: BatchObserver,
) {
    let permits = Arc::new(Semaphore::new(max_inflight_batches));
    loop {
        // Wait for a free slot first: rows that arrive meanwhile join this batch.
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore is never closed");
        let Some(first) = rx.recv().await else { break };
        let mut batch = Vec::with_capacity(batch_max_rows.min(64));
        batch.push(first);
        while batch.len() < batch_max_rows {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        observe(batch.len());
        let pool = pool.clone();
        tokio::spawn(async move {
            write_batch(&pool, batch).await;
            drop(permit);
        });
    }
    // Queue closed: wait until every batch in flight has answered.
    let _ = permits.acquire_many(max_inflight_batches as u32).await;
}

async fn write_batch(pool: &PgPool, batch: Vec<Pending>) {
    let (messages, addrs): (Vec<&str>, Vec<&str>) = batch
        .iter()
        .map(|p| (p.message.as_str(), p.client_addr.as_str()))
        .unzip();
    // One statement = one transaction = one commit for the whole batch. The SELECT is ordered by
    // the input position, so ids are assigned in that order and `ORDER BY id` returns the rows
    // in the order of `batch`.
    let result = sqlx::query_as::<_, LogEntry>(
        "WITH input AS (
             SELECT * FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS t(message, client_addr, ord)
         ), inserted AS (
             INSERT INTO log_entries (message, client_addr)
             SELECT message, client_addr FROM input ORDER BY ord
             RETURNING id, created_at, client_addr, message
         )
         SELECT id, created_at, client_addr, message FROM inserted ORDER BY id",
    )
    .bind(&messages)
    .bind(&addrs)
    .fetch_all(pool)
    .await;
    match result {
        Ok(rows) if rows.len() == batch.len() => {
            for (pending, row) in batch.into_iter().zip(rows) {
                let _ = pending.reply.send(Ok(row));
            }
        }
        Ok(rows) => {
            // Cannot happen with the statement above; fail loudly rather than mismatch replies.
            let e = Arc::new(sqlx::Error::Protocol(format!(
                "group insert returned {} rows for {} inputs",
                rows.len(),
                batch.len()
            )));
            for pending in batch {
                let _ = pending.reply.send(Err(e.clone()));
            }
        }
        Err(e) => {
            let e = Arc::new(e);
            for pending in batch {
                let _ = pending.reply.send(Err(e.clone()));
            }
        }
    }
}

/// Newest entries first, strictly older than `before` (an id) when given.
pub async fn list(
    pool: &PgPool,
    limit: i64,
    before: Option<i64>,
) -> Result<Vec<LogEntry>, sqlx::Error> {
    sqlx::query_as::<_, LogEntry>(
        "SELECT id, created_at, client_addr, message FROM log_entries
         WHERE ($2::bigint IS NULL OR id < $2)
         ORDER BY id DESC LIMIT $1",
    )
    .bind(limit)
    .bind(before)
    .fetch_all(pool)
    .await
}

/// Whether the database answers a trivial query.
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(pool).await.map(|_| ())
}

/// Runs the migrations, retrying while the database is unreachable, then sets `done`.
/// Each failed attempt's error is kept in `last_error` (cleared on success).
///
/// sqlx takes a Postgres advisory lock around the run, so replicas starting together migrate
/// once. Migrations applied by a newer version are tolerated (`ignore_missing`): during a
/// start-first update or after a rollback, the older version must start on the newer schema.
pub async fn migrate_until_done(
    pool: PgPool,
    done: Arc<AtomicBool>,
    last_error: Arc<std::sync::Mutex<Option<String>>>,
) {
    let mut migrator: Migrator = sqlx::migrate!("./migrations");
    migrator.set_ignore_missing(true);
    let mut backoff = Duration::from_millis(200);
    loop {
        match migrator.run(&pool).await {
            Ok(()) => {
                tracing::info!("database migrations applied");
                *last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
                done.store(true, Ordering::SeqCst);
                return;
            }
            Err(e) => {
                *last_error.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(format!("database migrations failed: {e}"));
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "database migrations failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
