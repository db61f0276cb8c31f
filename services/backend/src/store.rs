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
//! statement itself checks every row (count, message and client address) against its input
//! before it ends: a mismatch fails the statement, so Postgres rolls the batch back, and each of
//! its requests is answered 500 with the cause in the log. The batch is one statement in its
//! own implicit transaction: one round trip, the commit included.
//!
//! # Writes during a restore
//! A database restore holds the advisory lock [`RESTORE_LOCK_KEY`] exclusively. Every batch
//! takes it shared with `pg_try_advisory_xact_lock_shared` in the INSERT statement itself (no
//! extra round trip), before any row is written, and holds it until its COMMIT. So:
//! - a restore asking for the lock waits until every batch in flight has committed (or rolled
//!   back); a batch that got the lock is never cut off by the restore;
//! - from the moment the restore asks for the lock until it releases it (or its session ends),
//!   a new batch does not get it (Postgres queues lock requests: a shared request does not jump
//!   a waiting exclusive one, and `try` does not wait). Such a batch writes nothing, takes no
//!   id, is rolled back, and each of its requests is answered 503 `read_only`
//!   ([`WriteError::ReadOnly`]), counted in `log_rows_read_only_total`.
//!
//! The statement returns the lock's answer with the rows (the lock's single row, left-joined
//! with the inserted ones), so "refused" never has to be guessed from an empty result: an
//! INSERT that returns no row although the lock was granted is a pairing failure (500), not a
//! refusal. Reads take no lock and go on; so do the health and readiness checks.
//!
//! The lock is tried when the INSERT runs, after Postgres has locked the table for it. While
//! pg_restore's own transaction holds the table (it drops and recreates it), a batch therefore
//! waits for that transaction like a read does, and is refused once it gets through; if its
//! request's deadline passes first, the answer is `timeout_unknown_outcome`, as for any batch in
//! flight.
//!
//! # Sessions Postgres ended
//! A Postgres restart (a fast shutdown: `docker service update --force`, a stop) or
//! `pg_terminate_backend` ends every session, idle or not, with SQLSTATE 57P01. A pooled
//! connection whose session ended fails the next statement sent on it, with that error in place
//! of the result, however much later: the statement did not run, or ran in a transaction that
//! was rolled back (Postgres reports the end of a session only before the statement's commit
//! or after its answer, never between). Such a statement is sent again, at most
//! [`SESSION_ENDED_RETRIES`] times, on another connection, and the pool then pings every
//! connection it opened before that moment before handing it out, for [`SUSPECT_FOR`]
//! ([`may_have_died`]): the dead ones are closed and replaced, not handed to the next requests.
//! A connection that just broke (an I/O error: after a crash Postgres closes its connections
//! with only a warning) starts the same pings; a read on it is sent again, a write is not (it
//! may have committed: 503, outcome unknown). Idle connections are pinged anyway
//! (`ping_idle_after_ms`).

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use sqlx::migrate::{MigrateError, Migrator};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

/// The Postgres advisory lock key (the bytes `STKSREST`) that keeps writes out of a database
/// restore. A restore holds it **exclusively** (`pg_advisory_lock`, session level) from before it
/// replaces the data until it has set the sequences; every write transaction takes it
/// **shared** (`pg_try_advisory_xact_lock_shared`, released at commit or rollback) and writes
/// nothing when it is not granted. See the module docs.
pub const RESTORE_LOCK_KEY: i64 = 0x5354_4b53_5245_5354;

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
    /// A restore holds (or waits for) [`RESTORE_LOCK_KEY`]: nothing was written.
    #[error("the database is being restored; nothing was written")]
    ReadOnly,
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
    /// A batch of this many rows was refused: a restore holds the restore lock.
    RefusedReadOnly(usize),
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
            if matches!(e, WriteError::ReadOnly) {
                observe(WriterEvent::RefusedReadOnly(batch.len()));
            }
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

/// How many times a statement whose session Postgres had ended is sent again.
pub const SESSION_ENDED_RETRIES: usize = 3;

/// How long after a session ended under a statement the connections opened before it are
/// pinged before use.
pub const SUSPECT_FOR: Duration = Duration::from_secs(30);

/// Statements sent again because Postgres had ended their session (`db_statements_resent`).
/// One count per process: every pool in it shares this and [`SESSION_ENDED_AT`].
pub static STATEMENTS_RESENT: LazyLock<prometheus_client::metrics::counter::Counter> =
    LazyLock::new(Default::default);

/// When a statement last found its session ended: milliseconds of [`clock_ms`], 0 = never.
static SESSION_ENDED_AT: AtomicU64 = AtomicU64::new(0);

/// Milliseconds since the first call, from 1 (a monotonic clock).
fn clock_ms() -> u64 {
    static START: LazyLock<Instant> = LazyLock::new(Instant::now);
    u64::try_from(START.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
}

/// Whether Postgres ended the session the statement ran on (admin or crash shutdown): its
/// transaction did not commit, so the statement may be sent again.
pub fn session_ended(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if matches!(d.code().as_deref(), Some("57P01" | "57P02")))
}

/// Whether a pooled connection this old may have died with a session Postgres ended lately:
/// it was opened before the last such end, less than [`SUSPECT_FOR`] ago.
pub fn may_have_died(age: Duration) -> bool {
    suspect_at(SESSION_ENDED_AT.load(Ordering::Relaxed), clock_ms(), age)
}

fn suspect_at(ended: u64, now: u64, age: Duration) -> bool {
    let since = now.saturating_sub(ended);
    ended != 0 && since < SUSPECT_FOR.as_millis() as u64 && age.as_millis() >= u128::from(since)
}

/// Runs `statement`, sending it again (up to [`SESSION_ENDED_RETRIES`] times) when Postgres had
/// ended its session, or, for a `read`, when its connection broke (an I/O error).
async fn resend_if_session_ended<T, F, Fut>(read: bool, mut statement: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let mut resent = 0;
    loop {
        let result = statement().await;
        let Err(e) = &result else { return result };
        let broken = matches!(e, sqlx::Error::Io(_));
        if !session_ended(e) && !broken {
            return result;
        }
        // The other pooled connections may be dead too: ping them before use for a while.
        SESSION_ENDED_AT.fetch_max(clock_ms(), Ordering::Relaxed);
        if resent == SESSION_ENDED_RETRIES || (broken && !read) {
            // A write whose connection broke may have committed: its outcome is unknown.
            return result;
        }
        STATEMENTS_RESENT.inc();
        resent += 1;
        tracing::warn!(error = %e, resent, "the database connection had died; sending the statement again on another");
    }
}

/// One row of the batch statement: the restore lock's answer, and an inserted row (all `None`
/// on the single row of a batch that inserted nothing).
#[derive(Debug, sqlx::FromRow)]
struct BatchRow {
    granted: bool,
    id: Option<i64>,
    created_at: Option<DateTime<Utc>>,
    client_addr: Option<String>,
    message: Option<String>,
}

/// What the batch statement did: `None` when the restore lock was refused (nothing inserted),
/// else the inserted rows, still to be paired with the inputs. An answer that fits neither (it
/// cannot happen with the statement as written) is an error, and the batch is rolled back.
fn batch_outcome(rows: Vec<BatchRow>) -> Result<Option<Vec<LogEntry>>, String> {
    let Some(granted) = rows.first().map(|r| r.granted) else {
        return Err("the insert returned no row, not even the restore lock's answer".into());
    };
    if rows.iter().any(|r| r.granted != granted) {
        return Err("the insert returned differing answers of the restore lock".into());
    }
    let nothing_inserted = rows.len() == 1 && rows[0].id.is_none();
    if !granted {
        return if nothing_inserted {
            Ok(None)
        } else {
            Err(format!(
                "the restore lock was refused, yet the insert returned {} rows",
                rows.len()
            ))
        };
    }
    if nothing_inserted {
        // Granted, but no row inserted: `pair_rows` reports the count.
        return Ok(Some(Vec::new()));
    }
    rows.into_iter()
        .enumerate()
        .map(
            |(i, r)| match (r.id, r.created_at, r.client_addr, r.message) {
                (Some(id), Some(created_at), Some(client_addr), Some(message)) => Ok(LogEntry {
                    id,
                    created_at,
                    client_addr,
                    message,
                }),
                _ => Err(format!("row {i} of the insert's answer is incomplete")),
            },
        )
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// What the batch statement raises when its rows do not pair with its inputs (see
/// [`insert_batch`]): the text of a failed cast, which Postgres reports with its own code.
const PAIRING_FAILED: &str = "group insert rows do not pair with their inputs";

/// One statement, so one round trip and one implicit transaction: the restore lock (shared),
/// the multi-row INSERT, and the pairing check. A check that fails raises an error inside the
/// statement, so the whole batch is rolled back by Postgres itself; a statement that returns
/// has committed (its transaction ends before Postgres answers).
async fn insert_batch(pool: &PgPool, inputs: &[(&str, &str)]) -> Result<Vec<LogEntry>, WriteError> {
    let (messages, addrs): (Vec<&str>, Vec<&str>) = inputs.iter().copied().unzip();
    // `lock` is evaluated once (a volatile CTE is materialized); the INSERT's filter on it is a
    // one-time filter evaluated before the first row, so a refused lock writes nothing and
    // calls no `nextval`. The lock's row is left-joined with the inserted rows, so its answer
    // comes back even when nothing was inserted.
    // The SELECT is ordered by the input position, so ids are assigned in that order and
    // `ORDER BY id` returns the rows in the order of `inputs`. `checked` verifies that (count,
    // message and address of every row against its input) before anything is returned: when
    // it does not hold, it casts a text to boolean, which fails the statement (Postgres has no
    // RAISE outside PL/pgSQL, and a function would be one more thing a restore could remove).
    // `concat` is not immutable, so the failing branch is not folded at plan time.
    let rows = resend_if_session_ended(false, || sqlx::query_as::<_, BatchRow>(
        "WITH lock AS (
             SELECT pg_try_advisory_xact_lock_shared($3) AS granted
         ), input AS (
             SELECT * FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS t(message, client_addr, ord)
         ), inserted AS (
             INSERT INTO log_entries (message, client_addr)
             SELECT message, client_addr FROM input WHERE (SELECT granted FROM lock) ORDER BY ord
             RETURNING id, created_at, client_addr, message
         ), paired AS (
             SELECT inserted.*, row_number() OVER (ORDER BY id) AS pos FROM inserted
         ), checked AS (
             SELECT CASE
                 WHEN NOT (SELECT granted FROM lock)
                     OR ((SELECT count(*) FROM paired) = (SELECT count(*) FROM input)
                         AND NOT EXISTS (
                             SELECT FROM paired JOIN input ON input.ord = paired.pos
                             WHERE paired.message <> input.message
                                OR paired.client_addr <> input.client_addr))
                 THEN true
                 ELSE concat($4::text, ': ', (SELECT count(*) FROM paired), ' rows for ',
                             (SELECT count(*) FROM input), ' inputs')::boolean
             END AS ok
         )
         SELECT lock.granted, paired.id, paired.created_at, paired.client_addr, paired.message
         FROM lock CROSS JOIN checked LEFT JOIN paired ON true
         WHERE checked.ok
         ORDER BY paired.id",
    )
    .bind(&messages)
    .bind(&addrs)
    .bind(RESTORE_LOCK_KEY)
    .bind(PAIRING_FAILED)
    .fetch_all(pool))
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(d) if d.message().contains(PAIRING_FAILED) => {
            WriteError::Inconsistent(d.message().to_owned())
        }
        _ => WriteError::Database(Arc::new(e)),
    })?;
    match batch_outcome(rows).and_then(|rows| rows.map(|r| pair_rows(inputs, r)).transpose()) {
        Ok(Some(rows)) => Ok(rows),
        // Nothing was written and no lock is held.
        Ok(None) => Err(WriteError::ReadOnly),
        // The statement's own check makes this unreachable; were it reached, the rows are
        // stored and their requests are answered 500 with the cause in the log.
        Err(why) => Err(WriteError::Inconsistent(why)),
    }
}

/// Newest entries first, strictly older than `before` (an id) when given.
pub async fn list(
    pool: &PgPool,
    limit: i64,
    before: Option<i64>,
) -> Result<Vec<LogEntry>, sqlx::Error> {
    resend_if_session_ended(true, || {
        sqlx::query_as::<_, LogEntry>(
            "SELECT id, created_at, client_addr, message FROM log_entries
             WHERE ($2::bigint IS NULL OR id < $2)
             ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .bind(before)
        .fetch_all(pool)
    })
    .await
}

/// A row of `backup_status`: the last run of one kind of backup work, as `stackship db` wrote it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct BackupStatus {
    pub kind: String,
    /// When the last successful run started (Unix seconds), if one ever succeeded.
    pub last_success: Option<f64>,
    pub last_run_ok: bool,
}

/// The backups' last runs, for GET /metrics.
pub async fn backup_status(pool: &PgPool) -> Result<Vec<BackupStatus>, sqlx::Error> {
    sqlx::query_as::<_, BackupStatus>(
        "SELECT kind, extract(epoch FROM last_success)::float8 AS last_success, last_run_ok
           FROM backup_status ORDER BY kind",
    )
    .fetch_all(pool)
    .await
}

/// Whether the database answers a trivial query.
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    resend_if_session_ended(true, || sqlx::query("SELECT 1").execute(pool))
        .await
        .map(|_| ())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_ended_session_proves_a_statement_did_not_commit() {
        use crate::error::tests::db_error;
        assert!(session_ended(&db_error("57P01")));
        assert!(session_ended(&db_error("57P02")));
        for e in [
            db_error("57P03"),
            db_error("08006"),
            db_error("23505"),
            sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::BrokenPipe)),
            sqlx::Error::PoolTimedOut,
        ] {
            assert!(!session_ended(&e), "{e:?}");
        }
    }

    #[test]
    fn connections_opened_before_a_recent_end_are_suspect() {
        let ms = Duration::from_millis;
        // Never ended: nothing is suspect.
        assert!(!suspect_at(0, 5_000, ms(10_000)));
        // Ended 500 ms ago: a connection 600 ms old was open then, one 400 ms old was not.
        assert!(suspect_at(1_000, 1_500, ms(600)));
        assert!(suspect_at(1_000, 1_500, ms(500)));
        assert!(!suspect_at(1_000, 1_500, ms(499)));
        // Only for SUSPECT_FOR.
        let end = SUSPECT_FOR.as_millis() as u64;
        assert!(suspect_at(1_000, 1_000 + end - 1, ms(end * 2)));
        assert!(!suspect_at(1_000, 1_000 + end, ms(end * 2)));
    }

    #[tokio::test]
    async fn a_statement_whose_session_ended_is_sent_again_a_few_times() {
        use crate::error::tests::db_error;
        use std::sync::atomic::AtomicUsize;
        let io = || sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        let run = |read: bool, answers: Vec<Option<sqlx::Error>>| async move {
            let calls = AtomicUsize::new(0);
            let answers = std::sync::Mutex::new(answers.into_iter());
            let result = resend_if_session_ended(read, || {
                calls.fetch_add(1, Ordering::SeqCst);
                let next = answers.lock().unwrap().next().expect("called too often");
                async move { next.map_or(Ok(7), Err) }
            })
            .await;
            (result.map_err(|e| e.to_string()), calls.into_inner())
        };
        let before = STATEMENTS_RESENT.get();
        // A write: ended twice, then answered.
        let (r, calls) = run(
            false,
            vec![Some(db_error("57P01")), Some(db_error("57P02")), None],
        )
        .await;
        assert_eq!((r, calls), (Ok(7), 3));
        assert!(STATEMENTS_RESENT.get() >= before + 2);
        // The pool now suspects every connection older than that, and only those.
        assert!(may_have_died(Duration::from_secs(3_600)));
        std::thread::sleep(Duration::from_millis(20));
        assert!(!may_have_died(Duration::ZERO));
        // A broken connection may have committed a write: not sent again. A read is. Both
        // make the pool suspect its older connections.
        SESSION_ENDED_AT.store(0, Ordering::SeqCst);
        let (r, calls) = run(false, vec![Some(io()), None]).await;
        assert_eq!(calls, 1);
        assert!(r.is_err());
        assert!(may_have_died(Duration::from_secs(3_600)));
        assert_eq!(run(true, vec![Some(io()), None]).await, (Ok(7), 2));
        // Any other error is the answer at once.
        let (r, calls) = run(true, vec![Some(db_error("23505")), None]).await;
        assert_eq!(calls, 1);
        assert!(r.is_err());
        // Sent again at most SESSION_ENDED_RETRIES times.
        let ended = (0..=SESSION_ENDED_RETRIES)
            .map(|_| Some(db_error("57P01")))
            .collect();
        let (r, calls) = run(true, ended).await;
        assert_eq!(calls, SESSION_ENDED_RETRIES + 1);
        assert!(r.is_err());
    }

    #[test]
    fn the_restore_lock_key_spells_stksrest() {
        assert_eq!(&RESTORE_LOCK_KEY.to_be_bytes(), b"STKSREST");
    }

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    }

    fn row(granted: bool, entry: Option<(i64, &str)>) -> BatchRow {
        BatchRow {
            granted,
            id: entry.map(|(id, _)| id),
            created_at: entry.map(|_| at()),
            client_addr: entry.map(|_| "10.0.0.1".to_owned()),
            message: entry.map(|(_, m)| m.to_owned()),
        }
    }

    fn entry(id: i64, message: &str) -> LogEntry {
        LogEntry {
            id,
            created_at: at(),
            client_addr: "10.0.0.1".into(),
            message: message.into(),
        }
    }

    #[test]
    fn a_refused_restore_lock_with_nothing_inserted_is_read_only() {
        assert_eq!(batch_outcome(vec![row(false, None)]), Ok(None));
    }

    #[test]
    fn a_granted_lock_gives_the_inserted_rows() {
        let rows = vec![row(true, Some((7, "a"))), row(true, Some((8, "b")))];
        assert_eq!(
            batch_outcome(rows),
            Ok(Some(vec![entry(7, "a"), entry(8, "b")]))
        );
    }

    #[test]
    fn a_granted_lock_with_nothing_inserted_is_not_read_only_but_fails_the_pairing() {
        let rows = batch_outcome(vec![row(true, None)]).unwrap().unwrap();
        assert!(rows.is_empty());
        let why = pair_rows(&[("a", "10.0.0.1")], rows).unwrap_err();
        assert!(why.contains("returned 0 rows for 1 inputs"), "{why}");
    }

    #[test]
    fn answers_that_fit_neither_outcome_are_errors() {
        let cases = [
            (vec![], "no row"),
            (
                vec![row(false, Some((7, "a")))],
                "refused, yet the insert returned 1 rows",
            ),
            (
                vec![row(false, None), row(false, None)],
                "refused, yet the insert returned 2 rows",
            ),
            (
                vec![row(true, Some((7, "a"))), row(false, Some((8, "b")))],
                "differing answers",
            ),
            (
                vec![row(true, Some((7, "a"))), row(true, None)],
                "row 1 of the insert's answer is incomplete",
            ),
        ];
        for (rows, want) in cases {
            let why = batch_outcome(rows).unwrap_err();
            assert!(why.contains(want), "{why:?} should say {want:?}");
        }
        let mut partial = row(true, Some((7, "a")));
        partial.created_at = None;
        assert!(batch_outcome(vec![partial]).is_err());
    }

    #[test]
    fn pairing_checks_count_message_and_address() {
        let inputs = [("a", "10.0.0.1"), ("b", "10.0.0.1")];
        assert!(pair_rows(&inputs, vec![entry(1, "a"), entry(2, "b")]).is_ok());
        assert!(pair_rows(&inputs, vec![entry(1, "a")]).is_err());
        assert!(pair_rows(&inputs, vec![entry(1, "b"), entry(2, "a")]).is_err());
        let mut moved = entry(2, "b");
        moved.client_addr = "10.0.0.2".into();
        assert!(pair_rows(&inputs, vec![entry(1, "a"), moved]).is_err());
    }
}
