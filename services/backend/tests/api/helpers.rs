//! Test helpers: an app on a free port, a throwaway Postgres cluster, raw HTTP.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use backend::config::Settings;
use backend::{Application, startup};
use sqlx::PgPool;
use tokio::sync::oneshot;

/// A running application on 127.0.0.1 and a way to stop it.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub pool: PgPool,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Settings for tests: port 0, short delays.
pub fn test_settings() -> Settings {
    let mut s = Settings::default();
    s.server.host = "127.0.0.1".into();
    s.server.port = 0;
    s.server.drain_delay_ms = 200;
    s.server.shutdown_timeout_ms = 5_000;
    s.database.acquire_timeout_ms = 1_000;
    s
}

impl TestApp {
    /// Starts the app on `pool` and waits until it is ready.
    pub async fn spawn(pool: PgPool, settings: Settings) -> Self {
        let app = Self::spawn_unready(pool, settings).await;
        app.wait_ready(Duration::from_secs(20)).await;
        app
    }

    /// Starts the app without waiting for the database.
    pub async fn spawn_unready(pool: PgPool, settings: Settings) -> Self {
        let app = Application::build_with_pool(settings, pool.clone())
            .await
            .expect("build app");
        let base = format!("http://127.0.0.1:{}", app.port());
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(app.run_until_stopped(async {
            let _ = rx.await;
        }));
        Self {
            base,
            client: reqwest::Client::new(),
            pool,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect("GET")
    }

    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("POST")
    }

    pub async fn wait_ready(&self, within: Duration) {
        let start = Instant::now();
        loop {
            if let Ok(r) = self.client.get(self.url("/api/service/ready")).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(start.elapsed() < within, "app not ready within {within:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn row_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM log_entries")
            .fetch_one(&self.pool)
            .await
            .expect("count rows")
    }

    /// Triggers shutdown and waits for `run_until_stopped` to return.
    pub async fn stop(mut self) {
        let _ = self.shutdown.take().unwrap().send(());
        let result = tokio::time::timeout(Duration::from_secs(30), self.handle.take().unwrap())
            .await
            .expect("app stops in time")
            .expect("app task");
        result.expect("app stops cleanly");
    }
}

/// Asserts the response has `status` and a JSON error body; returns the error code.
pub async fn assert_json_error(response: reqwest::Response, status: u16) -> String {
    let got = response.status().as_u16();
    if got != status {
        let body = response.text().await.unwrap_or_default();
        panic!("expected status {status}, got {got}: {body}");
    }
    let ct = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    assert!(ct.starts_with("application/json"), "content-type {ct:?}");
    let body: serde_json::Value = response.json().await.expect("JSON error body");
    let message = body["error"]["message"].as_str().expect("error.message");
    assert!(!message.is_empty());
    body["error"]["code"]
        .as_str()
        .expect("error.code")
        .to_owned()
}

/// The directory holding `initdb` and `pg_ctl`.
fn pg_bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BIN_DIR") {
        return dir.into();
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries: set PG_BIN_DIR or install the postgresql package")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort();
    found
        .pop()
        .expect("no initdb under /usr/lib/postgresql/*/bin")
}

fn is_root() -> bool {
    // SAFETY-free check: `id -u` avoids a libc dependency for one call.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A PostgreSQL cluster of its own, which a test may stop and start.
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    pub password: String,
}

impl PgCluster {
    /// Creates (initdb) a cluster in a temp dir, not started.
    pub fn init() -> Self {
        let bin = pg_bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("backend-test-pg")
            .tempdir()
            .unwrap();
        let password = "test-password".to_owned();
        std::fs::write(dir.path().join("pw"), format!("{password}\n")).unwrap();
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(dir.path())
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown the cluster dir to postgres");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cluster = Self {
            dir,
            bin,
            port,
            password,
        };
        let data = cluster.data();
        let pw = format!("--pwfile={}", cluster.dir.path().join("pw").display());
        cluster.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                &pw,
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
            ],
        );
        cluster
    }

    /// A tool of this PostgreSQL installation, e.g. `psql`.
    pub fn bin(&self, tool: &str) -> PathBuf {
        self.bin.join(tool)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let output = if is_root() {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&exe)
                .args(args)
                .output()
        } else {
            Command::new(&exe).args(args).output()
        }
        .unwrap_or_else(|e| panic!("run {}: {e}", exe.display()));
        assert!(
            output.status.success(),
            "{tool} {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    pub fn start(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log").display().to_string();
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-l", &log, "-o", &opts, "-w", "start"],
        );
    }

    pub fn stop(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }

    /// A pool of its own on this cluster (application name `test-admin`, not the app's).
    pub async fn admin_pool(&self) -> PgPool {
        let settings = self.settings();
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect_with(
                startup::connect_options(&settings.database).application_name("test-admin"),
            )
            .await
            .expect("admin connection")
    }

    /// Settings pointing the app at this cluster.
    pub fn settings(&self) -> Settings {
        let mut s = test_settings();
        s.database.host = "127.0.0.1".into();
        s.database.port = self.port;
        s.database.user = "postgres".into();
        s.database.name = "postgres".into();
        s.database.password = Some(self.password.clone().into());
        s
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if self.dir.path().join("data/postmaster.pid").exists() {
                self.stop();
            }
        }));
    }
}

/// A lazy pool for `settings`, as the binary builds it.
pub fn pool_for(settings: &Settings) -> PgPool {
    startup::lazy_pool(&settings.database)
}
