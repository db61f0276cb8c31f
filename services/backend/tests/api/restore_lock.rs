//! Writes during a database restore: the restore holds `RESTORE_LOCK_KEY` exclusively, every
//! group commit takes it shared. Writes are refused with 503 `read_only` (nothing written), reads
//! and the health checks go on, and a restore waits for the batches in flight.

use std::time::{Duration, Instant};

use backend::RESTORE_LOCK_KEY;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, PgPool};

use crate::helpers::{TestApp, assert_json_error, test_settings};

/// A session of its own, as the restore command has.
async fn session(pool: &PgPool) -> PgConnection {
    PgConnection::connect_with(&pool.connect_options())
        .await
        .expect("connect")
}

async fn lock_exclusive(conn: &mut PgConnection) {
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(RESTORE_LOCK_KEY)
        .execute(conn)
        .await
        .unwrap();
}

async fn try_lock_exclusive(conn: &mut PgConnection) -> bool {
    sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(RESTORE_LOCK_KEY)
        .fetch_one(conn)
        .await
        .unwrap()
}

async fn unlock_exclusive(conn: &mut PgConnection) {
    let released: bool = sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
        .bind(RESTORE_LOCK_KEY)
        .fetch_one(conn)
        .await
        .unwrap();
    assert!(released, "the session did not hold the restore lock");
}

async fn try_lock_shared_in_tx(conn: &mut PgConnection) -> bool {
    sqlx::query_scalar("SELECT pg_try_advisory_xact_lock_shared($1)")
        .bind(RESTORE_LOCK_KEY)
        .fetch_one(conn)
        .await
        .unwrap()
}

/// The requests on the restore lock in this test's database: (mode, granted), sorted.
async fn restore_lock_requests(pool: &PgPool) -> Vec<(String, bool)> {
    sqlx::query_as(
        "SELECT mode, granted FROM pg_locks
         WHERE locktype = 'advisory' AND objsubid = 1
           AND (classid::bigint << 32 | objid::bigint) = $1
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
         ORDER BY mode, granted",
    )
    .bind(RESTORE_LOCK_KEY)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Waits until the requests on the restore lock are exactly `want`.
async fn wait_for_restore_lock(pool: &PgPool, want: &[(&str, bool)]) {
    let want: Vec<(String, bool)> = want.iter().map(|(m, g)| ((*m).to_owned(), *g)).collect();
    let start = Instant::now();
    loop {
        let got = restore_lock_requests(pool).await;
        if got == want {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "restore lock requests {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn messages(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT message FROM log_entries ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
}

fn metric(text: &str, series: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(series).map(str::trim).map(str::to_owned))
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

async fn post(app: &TestApp, message: &str) -> reqwest::Response {
    app.post_json("/api/log", &json!({ "message": message }))
        .await
}

async fn assert_read_only(r: reqwest::Response) {
    assert_eq!(
        r.headers().get("retry-after").map(|v| v.to_str().unwrap()),
        Some("5")
    );
    assert_eq!(assert_json_error(r, 503).await, "read_only");
}

/// The protocol itself, without the app: a shared transaction lock (a batch in flight) makes
/// the restore's exclusive request wait until it commits; a waiting exclusive request turns new
/// shared requests away; a held one too, until it is released.
#[sqlx::test]
async fn the_restore_lock_protocol_in_postgres(pool: PgPool) {
    let (mut batch, mut restore, mut late_batch) = (
        session(&pool).await,
        session(&pool).await,
        session(&pool).await,
    );
    sqlx::query("BEGIN").execute(&mut batch).await.unwrap();
    assert!(try_lock_shared_in_tx(&mut batch).await);
    assert!(
        !try_lock_exclusive(&mut restore).await,
        "the restore got the lock while a batch held it shared"
    );

    // The restore waits for the lock; meanwhile a new batch does not get it, although only a
    // shared lock is held: Postgres does not let it jump the queue.
    let waiting = tokio::spawn(async move {
        lock_exclusive(&mut restore).await;
        restore
    });
    wait_for_restore_lock(&pool, &[("ExclusiveLock", false), ("ShareLock", true)]).await;
    sqlx::query("BEGIN").execute(&mut late_batch).await.unwrap();
    assert!(
        !try_lock_shared_in_tx(&mut late_batch).await,
        "a shared request jumped the waiting restore"
    );
    sqlx::query("ROLLBACK")
        .execute(&mut late_batch)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "the restore did not wait");

    // The batch commits: the restore gets the lock; shared requests are still refused.
    sqlx::query("COMMIT").execute(&mut batch).await.unwrap();
    let mut restore = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the restore got the lock once the batch committed")
        .unwrap();
    sqlx::query("BEGIN").execute(&mut batch).await.unwrap();
    assert!(!try_lock_shared_in_tx(&mut batch).await);
    sqlx::query("ROLLBACK").execute(&mut batch).await.unwrap();

    unlock_exclusive(&mut restore).await;
    sqlx::query("BEGIN").execute(&mut batch).await.unwrap();
    assert!(try_lock_shared_in_tx(&mut batch).await);
    sqlx::query("COMMIT").execute(&mut batch).await.unwrap();
    // A transaction lock ends with its transaction: nothing is left behind.
    assert_eq!(restore_lock_requests(&pool).await, []);
}

#[sqlx::test]
async fn writes_answer_503_read_only_while_a_restore_holds_the_lock_and_reads_go_on(pool: PgPool) {
    let mut settings = test_settings();
    settings.logs.max_inflight_batches = 4;
    let app = TestApp::spawn(pool.clone(), settings).await;
    let r = post(&app, "before").await;
    assert_eq!(r.status(), 201);
    let before: Value = r.json().await.unwrap();

    let mut restore = session(&pool).await;
    lock_exclusive(&mut restore).await;

    let r = post(&app, "during").await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "5");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "read_only");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("being restored"), "{message}");
    assert!(message.contains("reads still work"), "{message}");
    // Several at once, in one batch or several: every one is refused.
    let concurrent: Vec<_> = (0..6)
        .map(|i| {
            let (client, url) = (app.client.clone(), app.url("/api/log"));
            tokio::spawn(async move {
                client
                    .post(url)
                    .json(&json!({ "message": format!("during {i}") }))
                    .send()
                    .await
                    .unwrap()
            })
        })
        .collect();
    for r in concurrent {
        assert_read_only(r.await.unwrap()).await;
    }
    assert_eq!(
        messages(&pool).await,
        ["before"],
        "a refused write was stored"
    );

    // Reads and the health checks are not affected.
    let page: Value = app.get("/api/logs").await.json().await.unwrap();
    assert_eq!(page["entries"], json!([before]));
    for path in [
        "/api/service/health",
        "/api/service/ready",
        "/api/service/version",
        "/api/service/ping",
    ] {
        assert_eq!(app.get(path).await.status(), 200, "{path}");
    }
    let text = app.get("/metrics").await.text().await.unwrap();
    assert_eq!(metric(&text, "log_rows_read_only_total"), "7");
    assert_eq!(
        metric(
            &text,
            r#"http_requests_total{method="POST",route="/api/log",status="503"}"#
        ),
        "7"
    );

    // The restore ends: writes succeed again, and the refused batches took no id.
    unlock_exclusive(&mut restore).await;
    let r = post(&app, "after").await;
    assert_eq!(r.status(), 201);
    let after: Value = r.json().await.unwrap();
    assert_eq!(
        after["id"].as_i64(),
        Some(before["id"].as_i64().unwrap() + 1)
    );
    assert_eq!(messages(&pool).await, ["before", "after"]);
    assert_eq!(
        restore_lock_requests(&pool).await,
        [],
        "a batch kept its lock"
    );
    app.stop().await;
}

/// A restore that dies (its session ends) does not leave the service read-only.
#[sqlx::test]
async fn writes_resume_when_the_restore_session_ends_without_unlocking(pool: PgPool) {
    let app = TestApp::spawn(pool.clone(), test_settings()).await;
    let mut restore = session(&pool).await;
    lock_exclusive(&mut restore).await;
    assert_read_only(post(&app, "during").await).await;
    restore.close().await.unwrap();
    wait_for_restore_lock(&pool, &[]).await;
    assert_eq!(post(&app, "after").await.status(), 201);
    assert_eq!(messages(&pool).await, ["after"]);
    app.stop().await;
}

/// A restore that asks for the lock while a batch is in flight waits until that batch has
/// committed; writes arriving meanwhile are refused.
#[sqlx::test]
async fn a_restore_waits_for_the_batch_in_flight_and_refuses_new_writes_meanwhile(pool: PgPool) {
    let mut settings = test_settings();
    settings.logs.max_inflight_batches = 2;
    let app = TestApp::spawn(pool.clone(), settings).await;
    // A gate inside the INSERT: each row waits for advisory lock 4242, which the test holds. The
    // row's batch has taken the restore lock (shared) by then.
    sqlx::raw_sql(
        "CREATE FUNCTION test_gate() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM pg_advisory_xact_lock(4242); RETURN NEW; END $$;
         CREATE TRIGGER test_gate BEFORE INSERT ON log_entries
             FOR EACH ROW EXECUTE FUNCTION test_gate();",
    )
    .execute(&pool)
    .await
    .unwrap();
    let mut gate = session(&pool).await;
    sqlx::query("SELECT pg_advisory_lock(4242)")
        .execute(&mut gate)
        .await
        .unwrap();

    let in_flight = {
        let (client, url) = (app.client.clone(), app.url("/api/log"));
        tokio::spawn(async move {
            client
                .post(url)
                .json(&json!({"message": "in flight"}))
                .send()
                .await
                .unwrap()
        })
    };
    wait_for_restore_lock(&pool, &[("ShareLock", true)]).await;

    let mut restore = session(&pool).await;
    assert!(
        !try_lock_exclusive(&mut restore).await,
        "the restore got the lock while a batch was in flight"
    );
    let waiting = tokio::spawn(async move {
        lock_exclusive(&mut restore).await;
        // What the restore sees once it holds the lock.
        let seen = messages_on(&mut restore).await;
        (restore, seen)
    });
    wait_for_restore_lock(&pool, &[("ExclusiveLock", false), ("ShareLock", true)]).await;

    // The restore waits; a write arriving now is refused rather than delaying it further.
    assert_read_only(post(&app, "while waiting").await).await;
    assert!(!waiting.is_finished(), "the restore did not wait");
    assert!(!in_flight.is_finished());

    // The batch in flight commits, then the restore gets the lock and sees its row.
    sqlx::query("SELECT pg_advisory_unlock(4242)")
        .execute(&mut gate)
        .await
        .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .expect("the batch in flight was answered")
        .unwrap();
    assert_eq!(r.status(), 201);
    let (mut restore, seen) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the restore got the lock")
        .unwrap();
    assert_eq!(seen, ["in flight"], "the batch had not committed");

    assert_read_only(post(&app, "while restoring").await).await;
    unlock_exclusive(&mut restore).await;
    assert_eq!(post(&app, "after").await.status(), 201);
    assert_eq!(messages(&pool).await, ["in flight", "after"]);
    app.stop().await;
}

async fn messages_on(conn: &mut PgConnection) -> Vec<String> {
    sqlx::query_scalar("SELECT message FROM log_entries ORDER BY id")
        .fetch_all(conn)
        .await
        .unwrap()
}
