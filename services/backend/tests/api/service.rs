//! ping, ready, version, info, metrics, and a database that is down from the start.

use crate::helpers::{TestApp, assert_json_error, pool_for, test_settings};
use sqlx::PgPool;

#[sqlx::test]
async fn ping_ready_version_and_info(pool: PgPool) {
    let mut settings = test_settings();
    settings.app.title = "Test title".into();
    settings.app.environment = "testenv".into();
    let app = TestApp::spawn(pool, settings).await;

    let r = app.get("/api/service/ping").await;
    assert_eq!(r.status(), 200);
    let r = app.get("/api/service/ready").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["status"], "ok");

    let v: serde_json::Value = app.get("/api/service/version").await.json().await.unwrap();
    assert_eq!(v["name"], "backend");
    assert_eq!(v["version"], backend::routes::version());
    assert!(!v["version"].as_str().unwrap().is_empty());
    assert_eq!(
        v.as_object().unwrap().len(),
        2,
        "exactly name and version: {v}"
    );

    let i: serde_json::Value = app.get("/api/service/info").await.json().await.unwrap();
    assert_eq!(i["title"], "Test title");
    assert_eq!(i["environment"], "testenv");
    assert_eq!(i["version"], backend::routes::version());
    app.stop().await;
}

#[test]
fn version_falls_back_to_the_crate_version() {
    match option_env!("APP_VERSION") {
        Some(v) if !v.is_empty() => assert_eq!(backend::routes::version(), v),
        _ => assert_eq!(backend::routes::version(), env!("CARGO_PKG_VERSION")),
    }
}

#[sqlx::test]
async fn metrics_count_requests_by_route_and_status(pool: PgPool) {
    let app = TestApp::spawn(pool, test_settings()).await;
    for _ in 0..3 {
        assert_eq!(app.get("/api/service/ping").await.status(), 200);
    }
    assert_eq!(app.get("/no/such/thing").await.status(), 404);
    let r = app
        .post_json("/api/log", &serde_json::json!({"message": "m"}))
        .await;
    assert_eq!(r.status(), 201);

    // A connection goes back to the pool just after its reply is sent: wait (bounded) until
    // the pool has settled before reading the gauges.
    let mut body = String::new();
    for _ in 0..40 {
        body = app.get("/metrics").await.text().await.unwrap();
        if body.contains(r#"db_pool_connections{state="in_use"} 0"#) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let line = body
        .lines()
        .find(|l| {
            l.starts_with("http_requests_total{")
                && l.contains(r#"route="/api/service/ping""#)
                && l.contains(r#"status="200""#)
        })
        .unwrap_or_else(|| panic!("no ping counter in:\n{body}"));
    assert!(line.ends_with(" 3"), "{line}");
    assert!(body.contains(r#"route="unmatched""#) && body.contains(r#"status="404""#));
    assert!(body.contains("http_request_duration_seconds_bucket{"));
    assert!(
        body.contains(r#"db_pool_connections{state="max"} 10"#),
        "{body}"
    );
    // The requests above are done: every open connection is idle, none in use.
    assert!(
        body.contains(r#"db_pool_connections{state="in_use"} 0"#),
        "{body}"
    );
    assert!(
        !body.contains(r#"db_pool_connections{state="idle"} 0"#),
        "{body}"
    );
    assert!(body.contains("log_group_commit_rows_count 1"), "{body}");
    app.stop().await;
}

/// Nothing listens on the port: the service still starts, answers ping, and says 503 (JSON)
/// everywhere the database is needed.
#[tokio::test]
async fn database_down_from_the_start_gives_503_not_a_crash() {
    let mut settings = test_settings();
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    settings.database.port = unused.local_addr().unwrap().port();
    drop(unused);
    let pool = pool_for(&settings);
    let app = TestApp::spawn_unready(pool, settings).await;

    assert_eq!(app.get("/api/service/ping").await.status(), 200);
    assert_json_error(app.get("/api/service/ready").await, 503).await;
    let code = assert_json_error(app.get("/api/logs").await, 503).await;
    assert_eq!(code, "database_unavailable");
    let r = app
        .post_json("/api/log", &serde_json::json!({"message": "hello"}))
        .await;
    assert_json_error(r, 503).await;
    // Version needs no database either.
    assert_eq!(app.get("/api/service/version").await.status(), 200);
    app.stop().await;
}

#[sqlx::test]
async fn request_ids_are_kept_or_made(pool: PgPool) {
    let app = TestApp::spawn(pool, test_settings()).await;
    let r = app
        .client
        .get(app.url("/api/service/ping"))
        .header("x-request-id", "from-the-proxy-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "from-the-proxy-42");
    let a = app.get("/api/service/ping").await.headers()["x-request-id"].clone();
    let b = app.get("/api/service/ping").await.headers()["x-request-id"].clone();
    assert_ne!(a, b);
    assert!(!a.is_empty());
    app.stop().await;
}

/// `backend healthcheck` (the image's HEALTHCHECK) exits 0 only when the probed endpoint is 2xx.
#[tokio::test]
async fn healthcheck_subcommand_exits_by_the_probed_endpoint() {
    let mut settings = test_settings();
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = unused.local_addr().unwrap().port();
    drop(unused);
    settings.database.port = dead_port;
    let pool = pool_for(&settings);
    let app = TestApp::spawn_unready(pool, settings).await;

    let run = |args: Vec<String>| async move {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_backend"))
            .arg("healthcheck")
            .args(args)
            .output()
            .await
            .expect("run backend healthcheck")
    };
    // Alive: ping answers 200.
    let ping = run(vec!["--url".into(), app.url("/api/service/ping")]).await;
    assert!(ping.status.success(), "{ping:?}");
    // Not ready (no database): 503 -> exit 1, with the answer on stderr.
    let ready = run(vec!["--url".into(), app.url("/api/service/ready")]).await;
    assert_eq!(ready.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&ready.stderr).contains("503"),
        "{ready:?}"
    );
    // Nothing listening: exit 1.
    let none = run(vec![
        "--url".into(),
        format!("http://127.0.0.1:{dead_port}/api/service/ping"),
        "--timeout-ms".into(),
        "1000".into(),
    ])
    .await;
    assert_eq!(none.status.code(), Some(1), "{none:?}");
    app.stop().await;
}

/// Environment variables that are not UTF-8: foreign ones are ignored, ours are named in an
/// error. (`std::env::vars()` panicked on any of them, in `healthcheck` too.)
#[test]
fn non_utf8_environment_variables_do_not_crash_the_binary() {
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;
    let dir = tempfile::tempdir().unwrap();
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = unused.local_addr().unwrap().port();
    drop(unused);
    let config = dir.path().join("config.toml");
    std::fs::write(&config, format!("[server]\nport = {port}\n")).unwrap();
    let run = |var: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_backend"))
            .args(["--config", config.to_str().unwrap(), "healthcheck"])
            .args(["--timeout-ms", "1000"])
            .env_remove("DB_PASS")
            .env_remove("DB_PASS_FILE")
            .env(var, OsString::from_vec(vec![b'a', 0xff, b'b']))
            .output()
            .unwrap()
    };
    // Foreign: ignored; the probe runs and fails only because nothing listens.
    let out = run("SOME_OTHER_TOOL");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    // Ours: a clear error naming it.
    let out = run("BACKEND_APP__TITLE");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("BACKEND_APP__TITLE is not valid UTF-8"),
        "{stderr}"
    );
}

/// `backend healthcheck` reads the port from the config and probes /health by default,
/// /ready with --ready and /ping with --live: three answers that differ before the database has
/// been reached once, and after it went away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_probes_the_endpoint_its_flags_name_on_the_configured_port() {
    use crate::helpers::PgCluster;
    let cluster = PgCluster::init();
    let settings = cluster.settings();
    let app = TestApp::spawn_unready(pool_for(&settings), settings).await;
    let port = app.base.rsplit(':').next().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, format!("[server]\nport = {port}\n")).unwrap();
    let probe = |flag: Option<&'static str>| {
        let config = config.clone();
        async move {
            let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_backend"));
            command.arg("--config").arg(&config).arg("healthcheck");
            command
                .args(flag)
                .env_remove("DB_PASS")
                .env_remove("DB_PASS_FILE");
            command.output().await.unwrap().status.code()
        }
    };
    // Never ready yet: health 503, ready 503, ping 200.
    assert_eq!(probe(None).await, Some(1), "health before ready once");
    assert_eq!(probe(Some("--ready")).await, Some(1));
    assert_eq!(probe(Some("--live")).await, Some(0));
    // Ready once, then the database goes away: health 200, ready 503.
    cluster.start();
    app.wait_ready(std::time::Duration::from_secs(30)).await;
    cluster.stop();
    assert_eq!(probe(None).await, Some(0), "health after ready once");
    assert_eq!(
        probe(Some("--ready")).await,
        Some(1),
        "ready without a database"
    );
    assert_eq!(probe(Some("--live")).await, Some(0));
    app.stop().await;
}

#[sqlx::test]
async fn metrics_export_the_backups_last_runs_from_backup_status(pool: PgPool) {
    let app = TestApp::spawn(pool.clone(), test_settings()).await;
    let body = app.get("/metrics").await.text().await.unwrap();
    // Declared before any backup ran, without a series.
    assert!(
        body.contains("# TYPE backup_last_success_timestamp_seconds gauge"),
        "{body}"
    );
    assert!(!body.contains("backup_last_run_ok{"), "{body}");
    // As `stackship db` writes them (tools/stackship/src/backup.rs status_sql), and a kind the
    // backend does not know, which it leaves out.
    sqlx::query(
        "INSERT INTO backup_status (kind, last_success, last_run, last_run_ok) VALUES
         ('backup', '2026-12-07T03:00:00+00:00', '2026-12-07T04:00:00+00:00', false),
         ('test_restore', NULL, '2026-12-07T03:05:00+00:00', false),
         ('offsite', '2026-12-07T03:00:30.5+00:00', '2026-12-07T03:00:30.5+00:00', true),
         ('made_up', '2026-12-07T03:00:00+00:00', '2026-12-07T03:00:00+00:00', true)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let body = app.get("/metrics").await.text().await.unwrap();
    for line in [
        r#"backup_last_success_timestamp_seconds{kind="backup"} 1796612400.0"#,
        r#"backup_last_success_timestamp_seconds{kind="offsite"} 1796612430.5"#,
        r#"backup_last_run_ok{kind="backup"} 0"#,
        r#"backup_last_run_ok{kind="offsite"} 1"#,
        r#"backup_last_run_ok{kind="test_restore"} 0"#,
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "{line} missing in:\n{body}"
        );
    }
    assert!(
        !body.contains(r#"backup_last_success_timestamp_seconds{kind="test_restore"}"#),
        "{body}"
    );
    assert!(!body.contains("made_up"), "{body}");
}
