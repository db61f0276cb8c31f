//! POST /api/log and GET /api/logs: storing, listing, paging, group commit.

use std::collections::HashSet;

use crate::helpers::{TestApp, test_settings};
use serde_json::{Value, json};
use sqlx::PgPool;

#[sqlx::test]
async fn posted_entry_is_stored_and_returned(pool: PgPool) {
    let app = TestApp::spawn(pool, test_settings()).await;
    let r = app
        .post_json("/api/log", &json!({"message": "  hello world "}))
        .await;
    assert_eq!(r.status(), 201);
    let row: Value = r.json().await.unwrap();
    assert_eq!(row["message"], "hello world");
    assert_eq!(row["client_addr"], "127.0.0.1");
    assert!(row["id"].as_i64().unwrap() > 0);
    let created = row["created_at"].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(created).is_ok(),
        "{created}"
    );

    let stored: (String, String) =
        sqlx::query_as("SELECT message, client_addr FROM log_entries WHERE id = $1")
            .bind(row["id"].as_i64().unwrap())
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(stored, ("hello world".into(), "127.0.0.1".into()));

    let page: Value = app.get("/api/logs").await.json().await.unwrap();
    assert_eq!(page["entries"][0], row);
    assert_eq!(page["next_before"], Value::Null);
    app.stop().await;
}

#[sqlx::test]
async fn forwarded_for_is_used_only_when_trusted(pool: PgPool) {
    let mut settings = test_settings();
    settings.server.trust_forwarded_for = true;
    let trusting = TestApp::spawn(pool.clone(), settings).await;
    let direct = TestApp::spawn(pool, test_settings()).await;
    let r = trusting
        .client
        .post(trusting.url("/api/log"))
        .header("x-forwarded-for", "203.0.113.7, 198.51.100.2")
        .json(&json!({"message": "via proxy"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap()["client_addr"],
        "198.51.100.2"
    );

    let r = direct
        .client
        .post(direct.url("/api/log"))
        .header("x-forwarded-for", "203.0.113.7")
        .json(&json!({"message": "direct"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["client_addr"], "127.0.0.1");
    trusting.stop().await;
    direct.stop().await;
}

#[sqlx::test]
async fn pages_newest_first_with_before_cursor(pool: PgPool) {
    let app = TestApp::spawn(pool, test_settings()).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let r = app
            .post_json("/api/log", &json!({"message": format!("m{i}")}))
            .await;
        ids.push(r.json::<Value>().await.unwrap()["id"].as_i64().unwrap());
    }
    let page: Value = app.get("/api/logs?limit=2").await.json().await.unwrap();
    let got: Vec<&str> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(got, ["m4", "m3"]);
    assert_eq!(page["next_before"], ids[3]);

    let page: Value = app
        .get(&format!("/api/logs?limit=2&before={}", ids[3]))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["entries"][0]["message"], "m2");
    assert_eq!(page["entries"][1]["message"], "m1");

    let page: Value = app
        .get(&format!("/api/logs?limit=10&before={}", ids[1]))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["entries"].as_array().unwrap().len(), 1);
    assert_eq!(page["next_before"], Value::Null);
    app.stop().await;
}

/// Concurrent posts share INSERTs, and every request gets back its own row.
#[sqlx::test]
async fn concurrent_posts_are_group_committed_and_each_gets_its_row(pool: PgPool) {
    let mut settings = test_settings();
    settings.logs.max_inflight_batches = 1;
    let app = TestApp::spawn(pool, settings).await;
    let n = 200;
    let posts = (0..n).map(|i| {
        let client = app.client.clone();
        let url = app.url("/api/log");
        tokio::spawn(async move {
            let r = client
                .post(url)
                .json(&json!({"message": format!("msg-{i}")}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            (i, r.json::<Value>().await.unwrap())
        })
    });
    let mut ids = HashSet::new();
    for post in posts.collect::<Vec<_>>() {
        let (i, row) = post.await.unwrap();
        assert_eq!(
            row["message"],
            format!("msg-{i}"),
            "request got another's row"
        );
        assert!(ids.insert(row["id"].as_i64().unwrap()));
    }
    assert_eq!(app.row_count().await, n);

    let metrics = app.get("/metrics").await.text().await.unwrap();
    let batches: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("log_group_commit_rows_count "))
        .expect("batch count metric")
        .parse()
        .unwrap();
    let rows: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("log_group_commit_rows_sum "))
        .expect("batch sum metric")
        .parse()
        .unwrap();
    assert_eq!(rows, n as f64);
    assert!(
        batches < n as f64,
        "{n} concurrent posts took {batches} INSERTs: no grouping"
    );
    app.stop().await;
}
