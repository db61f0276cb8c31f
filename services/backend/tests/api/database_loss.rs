//! The database goes away and comes back: 503s meanwhile, no crash, recovery by itself.

use std::time::{Duration, Instant};

use crate::helpers::{PgCluster, TestApp, assert_json_error, pool_for};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_database_loss_and_recovers() {
    let cluster = PgCluster::init();
    let settings = cluster.settings();
    let pool = pool_for(&settings);

    // Started before its database: up, not ready.
    let app = TestApp::spawn_unready(pool, settings).await;
    assert_eq!(app.get("/api/service/ping").await.status(), 200);
    assert_json_error(app.get("/api/service/ready").await, 503).await;
    // The rollout gate: not healthy before it has been ready once.
    assert_eq!(
        assert_json_error(app.get("/api/service/health").await, 503).await,
        "starting"
    );

    // The database appears: migrations run by themselves and the app turns ready.
    cluster.start();
    app.wait_ready(Duration::from_secs(30)).await;
    assert_eq!(app.get("/api/service/health").await.status(), 200);
    let r = app
        .post_json("/api/log", &json!({"message": "before"}))
        .await;
    assert_eq!(r.status(), 201);

    // The database goes away.
    cluster.stop();
    let started = Instant::now();
    let r = app
        .post_json("/api/log", &json!({"message": "during"}))
        .await;
    assert_eq!(assert_json_error(r, 503).await, "database_unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "503 took too long"
    );
    assert_json_error(app.get("/api/logs").await, 503).await;
    assert_json_error(app.get("/api/service/ready").await, 503).await;
    assert_eq!(app.get("/api/service/ping").await.status(), 200);
    // Ready once, so healthy now: a database restart must not make Swarm kill backends.
    assert_eq!(app.get("/api/service/health").await.status(), 200);

    // It comes back: the app recovers without a restart.
    cluster.start();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = app
            .post_json("/api/log", &json!({"message": "after"}))
            .await;
        if r.status() == 201 {
            break;
        }
        assert_eq!(r.status(), 503, "only 503 while recovering");
        assert!(Instant::now() < deadline, "no recovery within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    app.wait_ready(Duration::from_secs(10)).await;
    let page: serde_json::Value = app.get("/api/logs").await.json().await.unwrap();
    let messages: Vec<&str> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(messages, ["after", "before"]);
    app.stop().await;
}

/// A release whose password the database refuses never turns healthy, and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_never_healthy_and_says_why() {
    let cluster = PgCluster::init();
    cluster.start();
    let mut settings = cluster.settings();
    settings.database.password = Some("not-the-password".to_owned().into());
    let pool = pool_for(&settings);
    let app = TestApp::spawn_unready(pool, settings).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let message = loop {
        let r = app.get("/api/service/health").await;
        assert_eq!(r.status(), 503, "healthy with a wrong password");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "starting");
        let message = body["error"]["message"].as_str().unwrap().to_owned();
        if message.contains("password authentication failed") {
            break message;
        }
        assert!(Instant::now() < deadline, "no reason given: {message}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(!message.contains("not-the-password"), "{message}");
    assert_json_error(app.get("/api/service/ready").await, 503).await;
    app.stop().await;
}

/// Postgres restarts while the app keeps its pooled connections: once the database is back,
/// no request fails on a connection that died with the old server, however long it sat idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_died_with_a_restart_fail_no_request() {
    let cluster = PgCluster::init();
    cluster.start();
    let app = with_four_open_connections(cluster.settings()).await;
    // A restart (fast shutdown: every session is terminated), then a quiet second.
    cluster.stop();
    cluster.start();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    for i in 0..12 {
        let r = app
            .post_json("/api/log", &json!({"message": format!("after {i}")}))
            .await;
        assert_eq!(
            r.status(),
            201,
            "write {i} after the restart: {}",
            r.text().await.unwrap()
        );
        let r = app.get("/api/logs").await;
        assert_eq!(
            r.status(),
            200,
            "read {i} after the restart: {}",
            r.text().await.unwrap()
        );
    }
    app.stop().await;
}

/// Postgres ends every session of the app while its connections are busy (none idle long
/// enough to be pinged): each request that meets a dead connection is sent again on another,
/// the dead ones are replaced, and no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_ended_while_busy_fail_no_request() {
    let cluster = PgCluster::init();
    cluster.start();
    let mut settings = cluster.settings();
    // Idle connections are not pinged here: only the resend can save these requests.
    settings.database.ping_idle_after_ms = 3_600_000;
    let app = with_four_open_connections(settings).await;
    // As a restart does, with the server left up: every session of the app ends with 57P01.
    let admin = cluster.admin_pool().await;
    let ended: i64 = sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE application_name = 'backend'",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(ended, 4);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'backend'",
        )
        .fetch_one(&admin)
        .await
        .unwrap();
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} sessions still there");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Reads and writes at once, more than there are connections.
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..12 {
        let client = reqwest::Client::new();
        let (post, get) = (app.url("/api/log"), app.url("/api/logs"));
        requests.spawn(async move {
            let r = client
                .post(post)
                .json(&json!({"message": format!("busy {i}")}))
                .send()
                .await
                .expect("POST");
            (
                format!("write {i}"),
                201,
                r.status().as_u16(),
                r.text().await.unwrap(),
            )
        });
        let client = reqwest::Client::new();
        requests.spawn(async move {
            let r = client.get(get).send().await.expect("GET");
            (
                format!("read {i}"),
                200,
                r.status().as_u16(),
                r.text().await.unwrap(),
            )
        });
    }
    while let Some(done) = requests.join_next().await {
        let (what, want, got, body) = done.unwrap();
        assert_eq!(got, want, "{what}: {body}");
    }
    assert_eq!(app.row_count().await, 12);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("db_statements_resent_total"), "{metrics}");
    app.stop().await;
}

/// The app on a pool of four connections, all four open at once (held together, so none can be
/// reused), then back in the pool where the app's requests will take them.
async fn with_four_open_connections(mut settings: backend::config::Settings) -> TestApp {
    settings.database.min_connections = 4;
    settings.database.max_connections = 4;
    let pool = pool_for(&settings);
    let app = TestApp::spawn(pool.clone(), settings).await;
    let mut held = Vec::new();
    for i in 0..4 {
        held.push(
            pool.acquire()
                .await
                .unwrap_or_else(|e| panic!("connection {i}: {e}")),
        );
    }
    drop(held);
    assert_eq!(app.get("/api/logs").await.status(), 200);
    assert_eq!(pool.size(), 4);
    app
}
