//! SIGTERM on the real binary: readiness 503 at once, in-flight requests complete, exit 0; a
//! stuck database cannot stretch the shutdown past its budget; a second signal exits at once.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use crate::helpers::PgCluster;

struct Backend {
    child: Child,
    port: u16,
    stdout: Arc<Mutex<Vec<serde_json::Value>>>,
    stderr: Arc<Mutex<String>>,
}

impl Backend {
    fn signal(&self, name: &str) {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name}");
    }

    /// Waits for the process to exit, at most `within`.
    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < within,
                "backend did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary with a config for `cluster` and learns its port from the "listening" log.
fn start_backend(cluster: &PgCluster, dir: &std::path::Path) -> Backend {
    // RUST_LOG wins over the configured filter: "off" in the file, yet the port is logged.
    start_backend_with(cluster, dir, 1500, 10_000, 30_000, ("off", "info"))
}

fn start_backend_with(
    cluster: &PgCluster,
    dir: &std::path::Path,
    drain_delay_ms: u64,
    shutdown_timeout_ms: u64,
    request_timeout_ms: u64,
    (filter, rust_log): (&str, &str),
) -> Backend {
    let config = dir.join("config.toml");
    std::fs::write(dir.join("pw"), format!("{}\n", cluster.password)).unwrap();
    std::fs::write(
        &config,
        format!(
            r#"
[server]
host = "127.0.0.1"
port = 0
drain_delay_ms = {drain_delay_ms}
shutdown_timeout_ms = {shutdown_timeout_ms}
request_timeout_ms = {request_timeout_ms}
[database]
host = "127.0.0.1"
port = {port}
user = "postgres"
name = "postgres"
password_file = "{pw}"
[telemetry]
format = "json"
filter = "{filter}"
"#,
            port = cluster.port,
            pw = dir.join("pw").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_backend"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", rust_log)
        .env_remove("DB_PASS")
        .env_remove("DB_PASS_FILE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start backend");
    let stderr = Arc::new(Mutex::new(String::new()));
    {
        let (pipe, stderr) = (child.stderr.take().unwrap(), stderr.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                eprintln!("backend stderr: {line}");
                stderr.lock().unwrap().push_str(&line);
            }
        });
    }
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let lines = Arc::new(Mutex::new(Vec::new()));
    {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if v["message"] == "listening" {
                    let _ = tx.send(v["port"].as_u64().unwrap() as u16);
                }
                lines.lock().unwrap().push(v);
            }
        });
    }
    let port = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("backend logs its port");
    Backend {
        child,
        port,
        stdout: lines,
        stderr,
    }
}

fn get_status(port: u16, path: &str) -> std::io::Result<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out[9..12].parse().unwrap())
}

fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn sigterm_drains_then_finishes_in_flight_requests_and_exits_0() {
    let cluster = PgCluster::init();
    cluster.start();
    let dir = tempfile::tempdir().unwrap();
    let mut backend = start_backend(&cluster, dir.path());
    let port = backend.port;
    wait_for("ready", Duration::from_secs(30), || {
        get_status(port, "/api/service/ready").ok() == Some(200)
    });

    // A slow client: headers and half the body now, the rest later.
    let body = br#"{"message":"sent slowly across shutdown"}"#;
    let (head, tail) = body.split_at(body.len() / 2);
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        slow,
        "POST /api/log HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    slow.write_all(head).unwrap();
    slow.flush().unwrap();
    std::thread::sleep(Duration::from_millis(200));

    let pid = backend.child.id().to_string();
    let terminated = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );

    // Readiness flips at once while the service keeps serving during the drain delay.
    wait_for("ready turns 503", Duration::from_millis(1000), || {
        get_status(port, "/api/service/ready").ok() == Some(503)
    });
    assert_eq!(get_status(port, "/api/service/ping").unwrap(), 200);

    // After the drain delay, the listener is closed...
    wait_for("listener closes", Duration::from_secs(5), || {
        TcpStream::connect(("127.0.0.1", port)).is_err()
    });
    assert!(
        terminated.elapsed() >= Duration::from_millis(1400),
        "closed before the drain delay"
    );

    // ...but the in-flight request still completes and its row is stored.
    slow.write_all(tail).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut response = String::new();
    slow.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    assert!(response.contains("sent slowly across shutdown"));

    let start = Instant::now();
    let status = loop {
        if let Some(status) = backend.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "backend did not exit"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
}

/// The issue this guards against: the writer wait and the pool close each got a fresh timeout,
/// so a stuck database stretched the shutdown past Swarm's stop_grace_period (then SIGKILL).
#[test]
fn a_stuck_database_cannot_stretch_the_shutdown_past_its_budget() {
    let cluster = PgCluster::init();
    cluster.start();
    let dir = tempfile::tempdir().unwrap();
    let (drain, budget) = (200, 3_000);
    // An empty RUST_LOG counts as unset: the file's filter applies.
    let mut backend = start_backend_with(&cluster, dir.path(), drain, budget, 300, ("info", ""));
    let port = backend.port;
    wait_for("ready", Duration::from_secs(30), || {
        get_status(port, "/api/service/ready").ok() == Some(200)
    });

    // Block every write from another session, so a group commit hangs inside the database.
    let mut locker = Command::new(cluster.bin("psql"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &cluster.port.to_string(),
            "-U",
            "postgres",
        ])
        .args(["-v", "ON_ERROR_STOP=1", "-q", "postgres"])
        .env("PGPASSWORD", &cluster.password)
        .stdin(Stdio::piped())
        .spawn()
        .expect("psql");
    let mut sql = locker.stdin.take().unwrap();
    // psql waits for more input with the transaction open, until it is killed.
    writeln!(sql, "BEGIN; LOCK TABLE log_entries IN EXCLUSIVE MODE;").unwrap();
    sql.flush().unwrap();
    std::thread::sleep(Duration::from_millis(500));

    // The write times out for the client (JSON 504) but stays stuck in the database.
    let response = post(port, r#"{"message":"stuck"}"#);
    assert!(response.starts_with("HTTP/1.1 504"), "{response}");
    assert!(response.contains("timeout_unknown_outcome"), "{response}");

    let terminated = Instant::now();
    backend.signal("TERM");
    let status = backend.wait_exit(Duration::from_secs(20));
    let took = terminated.elapsed();
    let _ = locker.kill();
    let _ = locker.wait();
    // Budget: the drain delay plus one shutdown timeout, with a margin for a busy machine.
    let limit = Duration::from_millis(drain + budget + 1_500);
    assert!(took < limit, "shutdown took {took:?}, over {limit:?}");
    assert!(
        took >= Duration::from_millis(drain + budget - 100),
        "took {took:?}"
    );
    assert_eq!(
        status.code(),
        Some(1),
        "the exit status says the budget ran out"
    );
    wait_for("the budget on stderr", Duration::from_secs(2), || {
        backend.stderr.lock().unwrap().contains("shutdown budget")
    });
    // The 504 was logged as a JSON line in the request's span, with the cause.
    wait_for("the budget in the log", Duration::from_secs(2), || {
        let logs = backend.stdout.lock().unwrap();
        logs.iter()
            .any(|l| l["level"] == "ERROR" && l["shutdown_timeout_ms"] == 3000)
    });
    let logs = backend.stdout.lock().unwrap().clone();
    let failed = logs
        .iter()
        .find(|l| l["message"] == "request failed" && l["status"] == 504)
        .unwrap_or_else(|| panic!("no 'request failed' line in {logs:?}"));
    assert_eq!(failed["status"], 504, "{failed}");
    assert_eq!(failed["method"], "POST", "{failed}");
    assert_eq!(failed["span"]["route"], "/api/log", "{failed}");
    assert!(
        !failed["span"]["request_id"].as_str().unwrap().is_empty(),
        "{failed}"
    );
    assert!(
        failed["error"].as_str().unwrap().contains("300 ms"),
        "{failed}"
    );
    assert!(
        logs.iter().any(|l| l["message"]
            == "shutdown budget ran out: queued log writes \
             were not all flushed; the database pool did not close"),
        "{logs:?}"
    );
}

#[test]
fn a_second_signal_exits_at_once() {
    let cluster = PgCluster::init();
    cluster.start();
    let dir = tempfile::tempdir().unwrap();
    let mut backend =
        start_backend_with(&cluster, dir.path(), 10_000, 10_000, 30_000, ("info", ""));
    let port = backend.port;
    wait_for("ready", Duration::from_secs(30), || {
        get_status(port, "/api/service/ready").ok() == Some(200)
    });
    backend.signal("INT");
    wait_for("ready turns 503", Duration::from_secs(2), || {
        get_status(port, "/api/service/ready").ok() == Some(503)
    });
    let second = Instant::now();
    backend.signal("TERM");
    let status = backend.wait_exit(Duration::from_secs(5));
    assert!(
        second.elapsed() < Duration::from_secs(2),
        "{:?}",
        second.elapsed()
    );
    assert_eq!(status.code(), Some(128 + 15), "{status}");
    // The reader thread may still be catching up with the pipe.
    wait_for(
        "the second signal on stderr",
        Duration::from_secs(2),
        || backend.stderr.lock().unwrap().contains("second SIGTERM"),
    );
}

fn post(port: u16, body: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST /api/log HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}
