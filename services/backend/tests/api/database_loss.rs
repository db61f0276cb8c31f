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

    // The database appears: migrations run by themselves and the app turns ready.
    cluster.start();
    app.wait_ready(Duration::from_secs(30)).await;
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
