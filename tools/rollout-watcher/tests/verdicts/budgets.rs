//! The rollout budget and floor from a service's own update, rollback and healthcheck
//! settings, on the recorded update (tests/fixtures/update_completed.json) with its settings
//! changed the way a stack file would.

use std::time::Duration;

use bollard::models::Service;
use rollout_watcher::{budget, docker};
use serde_json::{Value, json};

const SECOND: i64 = 1_000_000_000;

/// The recorded service with `edit` applied to its spec.
fn service(edit: impl FnOnce(&mut Value)) -> Service {
    let path = format!(
        "{}/tests/fixtures/update_completed.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut raw: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut raw["service"]["Spec"]);
    docker::parse_services(&format!("[{}]", raw["service"]))
        .unwrap()
        .remove(0)
        .service
}

fn health(s: &Service) -> Duration {
    budget::health_window(
        s.spec
            .as_ref()
            .and_then(|s| s.task_template.as_ref())
            .and_then(|t| t.container_spec.as_ref())
            .and_then(|c| c.health_check.as_ref()),
    )
}

/// Three replicas one at a time, 2 s apart, each watched 3 s; a rollback 5 s apart, watched 4 s.
fn slow_update(spec: &mut Value) {
    spec["Mode"]["Replicated"]["Replicas"] = 3.into();
    spec["UpdateConfig"]["Delay"] = (2 * SECOND).into();
    spec["RollbackConfig"]["Delay"] = (5 * SECOND).into();
    spec["RollbackConfig"]["Monitor"] = (4 * SECOND).into();
}

#[test]
fn delays_and_the_rollbacks_own_pace_count_in_the_budget_and_the_floor() {
    let s = service(slow_update);
    // Healthcheck: start 1 s + 1 s x 2 retries + 1 s timeout.
    assert_eq!(health(&s), Duration::from_secs(4));
    // Update: 3 batches of 4 + 2 (delay) + 3 (monitor); rollback: 3 of 4 + 5 + 4; + 60 s.
    assert_eq!(
        budget::rollout_budget(&s, 3),
        Duration::from_secs(3 * 9 + 3 * 13 + 60)
    );
    // Swarm's own time: 3 tasks of 2 s each, the 2 delays between them, the monitor window.
    assert_eq!(
        budget::rollout_floor(&s, 3, Duration::from_secs(2)),
        Duration::from_secs(3 * 2 + 2 * 2 + 3)
    );
}

#[test]
fn parallelism_0_updates_every_task_at_once() {
    let s = service(|spec| {
        slow_update(spec);
        spec["UpdateConfig"]["Parallelism"] = 0.into();
    });
    // One batch for the update; the rollback (parallelism 1) uses the update's batches too.
    assert_eq!(
        budget::rollout_budget(&s, 3),
        Duration::from_secs(9 + 13 + 60)
    );
    assert_eq!(
        budget::rollout_floor(&s, 3, Duration::from_secs(2)),
        Duration::from_secs(2 + 3)
    );
}

#[test]
fn zero_healthcheck_settings_mean_dockers_defaults() {
    // Docker treats 0 as "not set": 30 s interval and timeout, 3 retries, no start period.
    let zeros = service(|spec| {
        spec["TaskTemplate"]["ContainerSpec"]["Healthcheck"] = json!({
            "Test": ["CMD-SHELL", "true"],
            "Interval": 0, "Timeout": 0, "StartPeriod": 0, "Retries": 0
        });
    });
    let unset = service(|spec| {
        spec["TaskTemplate"]["ContainerSpec"]["Healthcheck"] =
            json!({"Test": ["CMD-SHELL", "true"]});
    });
    assert_eq!(health(&zeros), Duration::from_secs(30 * 3 + 30));
    assert_eq!(health(&unset), health(&zeros));
    // An image's healthcheck turned off: nothing to wait for.
    let none = service(|spec| {
        spec["TaskTemplate"]["ContainerSpec"]["Healthcheck"] = json!({"Test": ["NONE"]});
    });
    assert_eq!(health(&none), Duration::ZERO);
}
