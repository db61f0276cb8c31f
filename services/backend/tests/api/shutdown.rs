//! SIGTERM on the real binary: readiness 503 at once, in-flight requests complete, exit 0.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::helpers::PgCluster;

struct Backend {
    child: Child,
    port: u16,
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary with a config for `cluster` and learns its port from the "listening" log.
fn start_backend(cluster: &PgCluster, dir: &std::path::Path) -> Backend {
    let config = dir.join("config.toml");
    std::fs::write(dir.join("pw"), format!("{}\n", cluster.password)).unwrap();
    std::fs::write(
        &config,
        format!(
            r#"
[server]
host = "127.0.0.1"
port = 0
drain_delay_ms = 1500
shutdown_timeout_ms = 10000
[database]
host = "127.0.0.1"
port = {port}
user = "postgres"
name = "postgres"
password_file = "{pw}"
[telemetry]
format = "json"
"#,
            port = cluster.port,
            pw = dir.join("pw").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_backend"))
        .arg("--config")
        .arg(&config)
        .env_remove("RUST_LOG")
        .env_remove("DB_PASS")
        .env_remove("DB_PASS_FILE")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start backend");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v["message"] == "listening"
            {
                let _ = tx.send(v["port"].as_u64().unwrap() as u16);
            }
        }
    });
    let port = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("backend logs its port");
    Backend { child, port }
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
