//! Every kind of bad input gets a 4xx JSON error and writes nothing.

use crate::helpers::{TestApp, assert_json_error, test_settings};
use serde_json::json;
use sqlx::PgPool;

#[sqlx::test]
async fn bad_posts_get_4xx_json_and_write_nothing(pool: PgPool) {
    let mut settings = test_settings();
    settings.logs.max_message_chars = 10;
    let app = TestApp::spawn(pool, settings).await;
    let url = app.url("/api/log");
    let c = &app.client;

    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        (
            "malformed JSON",
            c.post(&url)
                .header("content-type", "application/json")
                .body("{\"message\": "),
            400,
            "malformed_json",
        ),
        (
            "no content type",
            c.post(&url).body("{\"message\":\"x\"}"),
            415,
            "unsupported_media_type",
        ),
        (
            "wrong content type",
            c.post(&url)
                .header("content-type", "text/plain")
                .body("{\"message\":\"x\"}"),
            415,
            "unsupported_media_type",
        ),
        (
            "body over the limit",
            c.post(&url)
                .header("content-type", "application/json")
                .body(format!("{{\"message\":\"{}\"}}", "a".repeat(70 * 1024))),
            413,
            "payload_too_large",
        ),
        (
            "empty message",
            c.post(&url).json(&json!({"message": ""})),
            422,
            "invalid_message",
        ),
        (
            "blank message",
            c.post(&url).json(&json!({"message": " \n\t "})),
            422,
            "invalid_message",
        ),
        (
            "over-long message",
            c.post(&url).json(&json!({"message": "x".repeat(11)})),
            422,
            "invalid_message",
        ),
        (
            "NUL in message",
            c.post(&url).json(&json!({"message": "a\u{0}b"})),
            422,
            "invalid_message",
        ),
        (
            "missing field",
            c.post(&url).json(&json!({"msg": "x"})),
            422,
            "invalid_message",
        ),
        (
            "wrong type",
            c.post(&url).json(&json!({"message": 42})),
            422,
            "invalid_message",
        ),
        (
            "not an object",
            c.post(&url).json(&json!(["x"])),
            422,
            "invalid_message",
        ),
    ];
    for (name, request, status, code) in cases {
        let response = request.send().await.unwrap();
        eprintln!("case: {name}");
        let got = assert_json_error(response, status).await;
        assert_eq!(got, code, "{name}");
    }
    assert_eq!(app.row_count().await, 0, "a bad request wrote a row");

    // Exactly at the limit is fine.
    let r = app
        .post_json("/api/log", &json!({"message": "x".repeat(10)}))
        .await;
    assert_eq!(r.status(), 201);
    app.stop().await;
}

#[sqlx::test]
async fn unknown_routes_methods_and_queries(pool: PgPool) {
    let app = TestApp::spawn(pool, test_settings()).await;
    assert_eq!(
        assert_json_error(app.get("/nope").await, 404).await,
        "not_found"
    );
    assert_eq!(
        assert_json_error(app.get("/api/service/pingx").await, 404).await,
        "not_found"
    );
    let r = app
        .client
        .delete(app.url("/api/logs"))
        .send()
        .await
        .unwrap();
    assert_eq!(assert_json_error(r, 405).await, "method_not_allowed");
    for q in [
        "limit=0",
        "limit=501",
        "limit=abc",
        "before=0",
        "before=-3",
        "before=x",
    ] {
        let r = app.get(&format!("/api/logs?{q}")).await;
        assert_eq!(assert_json_error(r, 400).await, "bad_query", "{q}");
    }
    app.stop().await;
}
