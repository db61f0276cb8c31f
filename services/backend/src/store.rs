//! Log storage in Postgres: migrations, paged reads and group-committed writes.
//!
//! # Group commit
//! A single-row INSERT per request is bounded by Postgres commits. Instead, [`LogWriter`] queues
//! each request's row; a dispatcher task takes everything queued (up to `batch_max_rows`) and
//! writes it in one transaction with one multi-row INSERT and one commit. At most
//! `max_inflight_batches` batches run at once; while they run, new rows queue up and form the
//! next, larger batch, so batch size follows the load without any timer. Every request is
//! answered only after the transaction holding its row has committed, so a 201 always means the
//! row is durable.
//!
//! # Abandoned requests
//! A request can go away while its row waits: its client disconnected, or it hit
//! `server.request_timeout_ms`. Each row carries a [`WriteTicket`]:
//! - gone while its row is still **queued**: the row is dropped, never written (the client got
//!   an error and may retry without creating a duplicate);
//! - gone once its row is **in a batch in flight**: the INSERT is already under way and is not
//!   cancelled (that would fail the other rows of the batch). A timed-out request is answered
//!   `timeout_unknown_outcome` (it may have been stored); a row committed after its requester
//!   left is logged with its id and counted in `log_rows_abandoned_total{stage="in_flight"}`.
//!
//! # Pairing
//! Replies are paired with rows by position: the INSERT takes its input `ORDER BY` position, so
//! `nextval` hands out ids in that order and `ORDER BY id` returns the rows in input order. The
//! writer checks every reply (count, message and client address) before it commits; a mismatch
//! rolls the batch back and answers 500, with the cause in the log.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use sqlx::migrate::{MigrateError, Migrator};
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

const QUEUED: u8 = 0;
const TAKEN: u8 = 1;
const ABANDONED: u8 = 2;

/// Where one request's row is: queued, taken into a batch, or abandoned by its requester.
/// Shared by the request (and its deadline) and the writer. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct WriteTicket(Arc<AtomicU8>);

impl WriteTicket {
    pub fn new() -> Self {
        Self::default()
    }

    /// The requester gives up. Returns true when the row was still queued (it will not be
    /// written), false when it was already taken into a batch (it may be stored).
    pub fn abandon(&self) -> bool {
        match self
            .0
            .compare_exchange(QUEUED, ABANDONED, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) => true,
            Err(state) => state == ABANDONED,
        }
    }

    /// The writer takes the row into a batch; false when its requester already gave up.
    fn take(&self) -> bool {
        self.0
            .compare_exchange(QUEUED, TAKEN, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }
}

/// A row waiting for its group commit.
struct Pending {
    message: String,
    client_addr: String,
    ticket: WriteTicket,
    reply: oneshot::Sender<Result<LogEntry, WriteError>>,
}

/// Why a write was not stored.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    #[error("database error: {0}")]
    Database(Arc<sqlx::Error>),
    /// The INSERT's rows did not pair with its inputs; the batch was rolled back.
    #[error("group insert rolled back: {0}")]
    Inconsistent(String),
    #[error("log writer stopped")]
    Stopped,
}

/// What the writer reports, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterEvent {
    /// A batch of this many rows goes to the database.
    Batch(usize),
    /// This many queued rows were dropped: their requesters had gone.
    DroppedQueued(usize),
    /// A row was committed after its requester had gone.
    CommittedAbandoned,
}

/// Receives [`WriterEvent`]s (for metrics).
pub type WriterObserver = Arc<dyn Fn(WriterEvent) + Send + Sync>;

/// Handle to the group-commit writer. Cheap to clone.
#[derive(Clone)]
pub struct LogWriter {
    tx: mpsc::Sender<Pending>,
}

impl LogWriter {
    /// Starts the dispatcher. It stops once every `LogWriter` clone is dropped and the queue is
    /// flushed; await the returned handle to know every accepted row was answered.
    ///
    /// `batch_max_rows` and `max_inflight_batches` are bounded by `Settings::validate`.
    pub fn spawn(
        pool: PgPool,
        batch_max_rows: usize,
        max_inflight_batches: usize,
        observe: WriterObserver,
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

    /// Stores one entry; returns once it is committed. If this future is dropped (client gone,
    /// deadline), `ticket` says whether the row can still be stored: see the module docs.
    pub async fn insert(
        &self,
        message: String,
        client_addr: String,
        ticket: WriteTicket,
    ) -> Result<LogEntry, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Pending {
                message,
                client_addr,
                ticket,
                reply,
            })
            .await
            .map_err(|_| WriteError::Stopped)?;
        answer.await.unwrap_or(Err(WriteError::Stopped))
    }
}

async fn dispatch(
    pool: PgPool,
    mut rx: mpsc::Receiver<Pending>,
    batch_max_rows: usize,
    max_inflight_batches: usize,
    observe: WriterObserver,
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
        let mut queued = vec![first];
        while queued.len() < batch_max_rows {
            match rx.try_recv() {
                Ok(p) => queued.push(p),
                Err(_) => break,
            }
        }
        let batch = take_live(queued, &observe);
        if batch.is_empty() {
            continue;
        }
        observe(WriterEvent::Batch(batch.len()));
        let pool = pool.clone();
        let observe = observe.clone();
        tokio::spawn(async move {
            write_batch(&pool, batch, &observe).await;
            drop(permit);
        });
    }
    // Queue closed: wait until every batch in flight has answered. The count is at most 64
    // (validated), so the cast cannot truncate.
    let _ = permits.acquire_many(max_inflight_batches as u32).await;
}

/// The rows whose requesters are still there, each marked taken; the others are dropped.
fn take_live(queued: Vec<Pending>, observe: &WriterObserver) -> Vec<Pending> {
    let before = queued.len();
    let batch: Vec<Pending> = queued
        .into_iter()
        .filter(|p| !p.reply.is_closed() && p.ticket.take())
        .collect();
    observe(WriterEvent::DroppedQueued(before - batch.len()));
    batch
}

/// Pairs the INSERT's rows (ordered by id) with the batch's inputs, checking each pair.
fn pair_rows(inputs: &[(&str, &str)], rows: Vec<LogEntry>) -> Result<Vec<LogEntry>, String> {
    if rows.len() != inputs.len() {
        return Err(format!(
            "the insert returned {} rows for {} inputs",
            rows.len(),
            inputs.len()
        ));
    }
    for (i, ((message, addr), row)) in inputs.iter().zip(&rows).enumerate() {
        if row.message != *message || row.client_addr != *addr {
            return Err(format!(
                "row {i} (id {}) does not pair with its input: got ({:?}, {:?}), sent ({:?}, {:?})",
                row.id, row.message, row.client_addr, message, addr
            ));
        }
    }
    Ok(rows)
}

async fn write_batch(pool: &PgPool, batch: Vec<Pending>, observe: &WriterObserver) {
    let inputs: Vec<(&str, &str)> = batch
        .iter()
        .map(|p| (p.message.as_str(), p.client_addr.as_str()))
        .collect();
    let result = insert_batch(pool, &inputs).await;
    let rows = match result {
        Ok(rows) => rows,
        Err(e) => {
            for pending in batch {
                let _ = pending.reply.send(Err(e.clone()));
            }
            return;
        }
    };
    for (pending, row) in batch.into_iter().zip(rows) {
        let id = row.id;
        if pending.reply.send(Ok(row)).is_err() {
            // Honest about it: committed, but nobody heard the 201.
            tracing::warn!(
                id,
                "log entry committed after its request was abandoned (client gone or timed out)"
            );
            observe(WriterEvent::CommittedAbandoned);
        }
    }
}

/// One transaction: the multi-row INSERT, the pairing check, then COMMIT (or rollback).
async fn insert_batch(pool: &PgPool, inputs: &[(&str, &str)]) -> Result<Vec<LogEntry>, WriteError> {
    let db = |e: sqlx::Error| WriteError::Database(Arc::new(e));
    let (messages, addrs): (Vec<&str>, Vec<&str>) = inputs.iter().copied().unzip();
    let mut tx = pool.begin().await.map_err(db)?;
    // The SELECT is ordered by the input position, so ids are assigned in that order and
    // `ORDER BY id` returns the rows in the order of `inputs` (checked by `pair_rows`).
    let rows = sqlx::query_as::<_, LogEntry>(
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
    .fetch_all(&mut *tx)
    .await
    .map_err(db)?;
    match pair_rows(inputs, rows) {
        Ok(rows) => {
            tx.commit().await.map_err(db)?;
            Ok(rows)
        }
        Err(why) => {
            // Dropping the transaction rolls it back; say so explicitly and keep the cause.
            let _ = tx.rollback().await;
            Err(WriteError::Inconsistent(why))
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

/// One migration run on a connection of its own. sqlx leaves its session advisory lock held
/// when a run fails (it returns before unlocking); that connection is therefore closed instead
/// of going back to the pool, where it would keep the lock and block every later run, this
/// task's retries and other replicas' alike.
async fn run_migrations(migrator: &Migrator, pool: &PgPool) -> Result<(), MigrateError> {
    let mut conn = pool.acquire().await.map_err(MigrateError::Execute)?;
    let result = migrator.run_direct(&mut *conn).await;
    if result.is_err() {
        let _ = conn.close().await;
    }
    result
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
        match run_migrations(&migrator, &pool).await {
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
