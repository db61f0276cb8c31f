//! Requests that time out or whose client goes away while the database is stuck: queued rows
//! are never written, rows already in flight are reported honestly, timeouts answer JSON 504.

use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::{Connection, PgConnection, PgPool};

use crate::helpers::{TestApp, assert_json_error, test_settings};

/// Holds a lock that blocks every INSERT into log_entries until released.
struct WriteBlock {
    conn: PgConnection,
}

impl WriteBlock {
    async fn take(pool: &PgPool) -> Self {
        let options = pool.connect_options();
        let mut conn = PgConnection::connect_with(&options).await.expect("connect");
        sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
        // EXCLUSIVE: reads (count(*)) go on, writes wait.
        sqlx::query("LOCK TABLE log_entries IN EXCLUSIVE MODE")
            .execute(&mut conn)
            .await
            .unwrap();
        Self { conn }
    }

    async fn release(mut self) {
        sqlx::query("COMMIT").execute(&mut self.conn).await.unwrap();
    }
}

/// Waits until `n` INSERTs into log_entries wait on a lock (a batch is in flight).
async fn wait_for_blocked_inserts(pool: &PgPool, n: i64) {
    let start = Instant::now();
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE wait_event_type = 'Lock' AND query LIKE '%INSERT INTO log_entries%'",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if waiting == n {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{waiting} blocked INSERTs, want {n}"
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

#[sqlx::test]
async fn timed_out_writes_answer_json_504_and_queued_ones_are_never_written(pool: PgPool) {
    let mut settings = test_settings();
    settings.server.request_timeout_ms = 600;
    settings.logs.max_inflight_batches = 1;
    let app = TestApp::spawn(pool.clone(), settings).await;
    let block = WriteBlock::take(&pool).await;

    // A: its batch goes to the database and waits on the lock.
    let a = {
        let (client, url) = (app.client.clone(), app.url("/api/log"));
        tokio::spawn(async move { client.post(url).json(&json!({"message": "A"})).send().await })
    };
    wait_for_blocked_inserts(&pool, 1).await;
    // B and C queue behind it (one batch in flight at a time).
    let (body_b, body_c) = (json!({"message": "B"}), json!({"message": "C"}));
    let (b, c) = tokio::join!(
        app.post_json("/api/log", &body_b),
        app.post_json("/api/log", &body_c),
    );
    let a = a.await.unwrap().unwrap();
    for (name, r) in [("B", b), ("C", c)] {
        let code = assert_json_error(r, 504).await;
        assert_eq!(
            code, "timeout",
            "{name}: a queued write is known not to be stored"
        );
    }
    assert_eq!(
        assert_json_error(a, 504).await,
        "timeout_unknown_outcome",
        "A was in flight: it may be stored"
    );

    block.release().await;
    let r = app.post_json("/api/log", &json!({"message": "D"})).await;
    assert_eq!(r.status(), 201);
    // A's INSERT was under way and commits; B and C were dropped, never written.
    assert_eq!(messages(&pool).await, ["A", "D"]);
    let text = app.get("/metrics").await.text().await.unwrap();
    assert_eq!(
        metric(&text, r#"log_rows_abandoned_total{stage="queued"}"#),
        "2"
    );
    assert_eq!(
        metric(&text, r#"log_rows_abandoned_total{stage="in_flight"}"#),
        "1"
    );
    // Two INSERTs (A, then D): the batch whose rows were all dropped never went out.
    assert_eq!(metric(&text, "log_group_commit_rows_count"), "2");
    app.stop().await;
}

/// Rows that queue while a batch is in flight form batches of at most `batch_max_rows`.
#[sqlx::test]
async fn batches_stay_within_batch_max_rows(pool: PgPool) {
    let mut settings = test_settings();
    settings.logs.batch_max_rows = 4;
    settings.logs.max_inflight_batches = 1;
    let app = TestApp::spawn(pool.clone(), settings).await;
    let block = WriteBlock::take(&pool).await;
    let post = |i: usize| {
        let (client, url) = (app.client.clone(), app.url("/api/log"));
        tokio::spawn(async move {
            let r = client
                .post(url)
                .json(&json!({ "message": format!("m{i}") }))
                .send()
                .await;
            r.unwrap().status().as_u16()
        })
    };
    let first = post(0);
    wait_for_blocked_inserts(&pool, 1).await;
    let queued: Vec<_> = (1..=13).map(post).collect();
    // Let all 13 reach the queue.
    tokio::time::sleep(Duration::from_millis(500)).await;
    block.release().await;
    assert_eq!(first.await.unwrap(), 201);
    for q in queued {
        assert_eq!(q.await.unwrap(), 201);
    }
    assert_eq!(app.row_count().await, 14);
    let text = app.get("/metrics").await.text().await.unwrap();
    // 1 + 13 rows in batches of at most 4: 1 + 4 + 4 + 4 + 1.
    assert_eq!(metric(&text, "log_group_commit_rows_count"), "5");
    assert_eq!(
        metric(&text, r#"log_group_commit_rows_bucket{le="4.0"}"#),
        "5"
    );
    assert_eq!(
        metric(&text, r#"log_group_commit_rows_bucket{le="2.0"}"#),
        "2"
    );
    app.stop().await;
}

#[sqlx::test]
async fn reads_that_time_out_answer_json_504(pool: PgPool) {
    let mut settings = test_settings();
    settings.server.request_timeout_ms = 300;
    let app = TestApp::spawn(pool.clone(), settings).await;
    // ACCESS EXCLUSIVE blocks reads too.
    let mut conn = PgConnection::connect_with(&pool.connect_options())
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
    sqlx::query("LOCK TABLE log_entries IN ACCESS EXCLUSIVE MODE")
        .execute(&mut conn)
        .await
        .unwrap();
    let started = Instant::now();
    let r = app.get("/api/logs").await;
    assert_eq!(assert_json_error(r, 504).await, "timeout");
    assert!(started.elapsed() < Duration::from_secs(3));
    sqlx::query("COMMIT").execute(&mut conn).await.unwrap();
    assert_eq!(app.get("/api/logs").await.status(), 200);
    app.stop().await;
}

/// Sends a POST on a raw connection and closes it without reading the answer.
fn post_and_hang_up(base: &str, message: &str) -> std::net::TcpStream {
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let body = json!({ "message": message }).to_string();
    write!(
        s,
        "POST /api/log HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    s
}

#[sqlx::test]
async fn rows_of_clients_that_hung_up_are_not_written_once_queued(pool: PgPool) {
    let mut settings = test_settings();
    settings.server.request_timeout_ms = 30_000;
    settings.logs.max_inflight_batches = 1;
    let app = TestApp::spawn(pool.clone(), settings).await;
    let block = WriteBlock::take(&pool).await;

    let a = post_and_hang_up(&app.base, "A");
    wait_for_blocked_inserts(&pool, 1).await;
    let b = post_and_hang_up(&app.base, "B");
    // Let B reach the queue, then both clients hang up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(a);
    drop(b);
    tokio::time::sleep(Duration::from_millis(300)).await;
    block.release().await;

    let r = app.post_json("/api/log", &json!({"message": "C"})).await;
    assert_eq!(r.status(), 201);
    assert_eq!(
        messages(&pool).await,
        ["A", "C"],
        "B's client was gone before its batch"
    );
    let text = app.get("/metrics").await.text().await.unwrap();
    assert_eq!(
        metric(&text, r#"log_rows_abandoned_total{stage="queued"}"#),
        "1"
    );
    assert_eq!(
        metric(&text, r#"log_rows_abandoned_total{stage="in_flight"}"#),
        "1"
    );
    app.stop().await;
}

/// The replies are paired with rows by position; a row the INSERT did not return (a trigger
/// skipped it) or returned changed breaks the pairing: 500, and the batch is rolled back.
#[sqlx::test]
async fn a_group_insert_that_does_not_pair_is_rolled_back_with_a_500(pool: PgPool) {
    let app = TestApp::spawn(pool.clone(), test_settings()).await;
    sqlx::raw_sql(
        "CREATE FUNCTION test_meddle() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.message = 'skip me' THEN RETURN NULL; END IF;
             IF NEW.message = 'shout' THEN NEW.message := 'SHOUT'; END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER test_meddle BEFORE INSERT ON log_entries
             FOR EACH ROW EXECUTE FUNCTION test_meddle();",
    )
    .execute(&pool)
    .await
    .unwrap();
    for message in ["skip me", "shout"] {
        let r = app
            .post_json("/api/log", &json!({ "message": message }))
            .await;
        assert_eq!(assert_json_error(r, 500).await, "internal", "{message}");
    }
    assert_eq!(
        app.row_count().await,
        0,
        "a batch that did not pair was committed"
    );
    let r = app.post_json("/api/log", &json!({"message": "fine"})).await;
    assert_eq!(r.status(), 201);
    assert_eq!(messages(&pool).await, ["fine"]);
    app.stop().await;
}
