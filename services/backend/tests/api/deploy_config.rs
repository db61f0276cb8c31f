//! The deployed configuration agrees with itself: the backend's deadline ends before the
//! proxy's, and the backend's whole shutdown fits in the stack's stop_grace_period.

use std::path::{Path, PathBuf};

use backend::Settings;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The deployed backend settings of an environment (the password file is not read here).
fn backend_settings(env: &str) -> Settings {
    let path = repo().join(format!("deploy-manifests/{env}/backend/config.toml"));
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replace("password_file", "# password_file");
    Settings::from_toml_with_env(&text, &path, &Default::default()).unwrap()
}

/// Seconds of an nginx time like `30s` or `1m`.
fn seconds(value: &str) -> u64 {
    let value = value.trim_end_matches(';');
    if let Some(s) = value.strip_suffix('s') {
        s.parse().unwrap()
    } else if let Some(m) = value.strip_suffix('m') {
        m.parse::<u64>().unwrap() * 60
    } else {
        value.parse().unwrap()
    }
}

/// Every value of `directive` in the proxy config of an environment (nginx default: 60 s).
fn proxy_timeouts(env: &str, directive: &str) -> Vec<u64> {
    let path = repo().join(format!("deploy-manifests/{env}/nginx-proxy/default.conf"));
    let text = std::fs::read_to_string(path).unwrap();
    let found: Vec<u64> = text
        .lines()
        .map(|l| {
            l.split('#')
                .next()
                .unwrap()
                .split_whitespace()
                .collect::<Vec<_>>()
        })
        .filter(|w| w.first() == Some(&directive))
        .map(|w| seconds(w[1]))
        .collect();
    if found.is_empty() { vec![60] } else { found }
}

/// The backend service's stop_grace_period in a stack file, in seconds.
fn stop_grace_period(env: &str) -> u64 {
    let text = std::fs::read_to_string(repo().join(format!("docker-compose.{env}.yaml"))).unwrap();
    let mut in_backend = false;
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        if indent == 2 && !line.trim_start().starts_with('#') && line.trim_end().ends_with(':') {
            in_backend = line.trim() == "backend:";
        }
        if in_backend && let Some(v) = line.trim().strip_prefix("stop_grace_period:") {
            return seconds(v.trim());
        }
    }
    // Docker's default.
    10
}

#[test]
fn the_backend_answers_timeouts_before_the_proxy_does() {
    for env in ["dev", "prod"] {
        let backend_ms = backend_settings(env).server.request_timeout_ms;
        for proxy_s in proxy_timeouts(env, "proxy_read_timeout") {
            // A margin for the proxy's own connect and send time.
            assert!(
                backend_ms + 5_000 <= proxy_s * 1000,
                "{env}: backend request_timeout_ms {backend_ms} vs proxy_read_timeout {proxy_s}s"
            );
        }
    }
}

#[test]
fn the_whole_shutdown_fits_in_the_stop_grace_period() {
    for env in ["dev", "prod"] {
        let s = backend_settings(env).server;
        let budget_ms = s.drain_delay_ms + s.shutdown_timeout_ms;
        let grace_s = stop_grace_period(env);
        // A margin for process start-up of the signal handling and exit.
        assert!(
            budget_ms + 5_000 <= grace_s * 1000,
            "{env}: drain {} + shutdown {} ms vs stop_grace_period {grace_s}s",
            s.drain_delay_ms,
            s.shutdown_timeout_ms
        );
        // The deadline of a request fits in the budget, so in-flight requests can finish.
        assert!(s.request_timeout_ms <= s.shutdown_timeout_ms, "{env}");
    }
}
