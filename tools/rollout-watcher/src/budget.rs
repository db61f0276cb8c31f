//! How long a service's rollout may take, from its own settings.
//!
//! Swarm updates `parallelism` tasks at a time; each batch needs the healthcheck window
//! (start period + interval × retries + timeout) to turn healthy, then `delay`, and the update
//! watches for failures during `monitor`. A failed update then rolls back at the same pace, so
//! the budget covers both, plus a margin for pulls and scheduling.

use std::time::Duration;

use bollard::models::{HealthConfig, Service, ServiceSpecUpdateConfig};

/// Added to every budget: image pulls, scheduling, DNS.
pub const MARGIN: Duration = Duration::from_secs(60);

/// Docker's defaults when a setting is absent.
const DEFAULT_MONITOR: Duration = Duration::from_secs(5);
const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_HEALTH_RETRIES: u64 = 3;
/// When the spec has no healthcheck (the image may have one): assume a generous window.
const UNKNOWN_HEALTH_WINDOW: Duration = Duration::from_secs(30);

fn nanos(n: Option<i64>) -> Option<Duration> {
    n.filter(|n| *n > 0).map(|n| Duration::from_nanos(n as u64))
}

/// Time for a new task to pass its first healthcheck at the latest.
pub fn health_window(health: Option<&HealthConfig>) -> Duration {
    let Some(h) = health else {
        return UNKNOWN_HEALTH_WINDOW;
    };
    if h.test.as_ref().and_then(|t| t.first()).map(String::as_str) == Some("NONE") {
        return Duration::ZERO;
    }
    let interval = nanos(h.interval).unwrap_or(DEFAULT_HEALTH_INTERVAL);
    let retries = h
        .retries
        .filter(|r| *r > 0)
        .map_or(DEFAULT_HEALTH_RETRIES, |r| r as u64);
    nanos(h.start_period).unwrap_or_default()
        + interval * retries as u32
        + nanos(h.timeout).unwrap_or(DEFAULT_HEALTH_TIMEOUT)
}

/// One batch: healthcheck window, then delay, then the monitor period.
fn batch(update: Option<&ServiceSpecUpdateConfig>, window: Duration) -> Duration {
    let delay = update.and_then(|u| nanos(u.delay)).unwrap_or_default();
    let monitor = update
        .and_then(|u| nanos(u.monitor))
        .unwrap_or(DEFAULT_MONITOR);
    window + delay + monitor
}

/// The rollout budget of one service (update, then a rollback, plus [`MARGIN`]).
pub fn rollout_budget(service: &Service, replicas: u64) -> Duration {
    let spec = service.spec.as_ref();
    let health = spec
        .and_then(|s| s.task_template.as_ref())
        .and_then(|t| t.container_spec.as_ref())
        .and_then(|c| c.health_check.as_ref());
    let window = health_window(health);
    let update = spec.and_then(|s| s.update_config.as_ref());
    let parallelism = update
        .and_then(|u| u.parallelism)
        .filter(|p| *p > 0)
        .map_or(replicas.max(1), |p| p as u64);
    let batches = replicas.max(1).div_ceil(parallelism) as u32;
    let rollback = spec
        .and_then(|s| s.rollback_config.as_ref())
        .map(|r| ServiceSpecUpdateConfig {
            delay: r.delay,
            monitor: r.monitor,
            ..Default::default()
        });
    batch(update, window) * batches + batch(rollback.as_ref().or(update), window) * batches + MARGIN
}

/// The time Swarm itself needs for a successful update of `replicas` tasks: for each replica,
/// start + first passing healthcheck (`first_healthy`), plus the delays between batches, plus
/// the final monitor window. The floor a rollout's duration is compared with.
pub fn rollout_floor(service: &Service, replicas: u64, first_healthy: Duration) -> Duration {
    let update = service.spec.as_ref().and_then(|s| s.update_config.as_ref());
    let parallelism = update
        .and_then(|u| u.parallelism)
        .filter(|p| *p > 0)
        .map_or(replicas.max(1), |p| p as u64);
    let batches = replicas.max(1).div_ceil(parallelism) as u32;
    let delay = update.and_then(|u| nanos(u.delay)).unwrap_or_default();
    let monitor = update
        .and_then(|u| nanos(u.monitor))
        .unwrap_or(DEFAULT_MONITOR);
    first_healthy * batches + delay * batches.saturating_sub(1) + monitor
}
