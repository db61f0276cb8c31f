//! What the verdict says about single tasks (their errors, why they wait) and about a service
//! with several tasks waiting for a node, on the recorded fixtures (tests/fixtures/record.sh).

use std::collections::BTreeSet;
use std::time::Duration;

use bollard::models::Task;
use rollout_watcher::assess::{Phase, Rules, ServiceBefore, Tracker, task_error, unschedulable};
use rollout_watcher::docker::{self, ServiceInspect};
use serde_json::Value;

fn raw(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// A fixture (possibly edited) parsed the way the watcher parses the docker CLI's output.
fn parsed(raw: &Value) -> (ServiceInspect, Vec<Task>) {
    let services = docker::parse_services(&format!("[{}]", raw["service"])).unwrap();
    let tasks = docker::parse_tasks(&raw["tasks"].to_string()).unwrap();
    (services.into_iter().next().unwrap(), tasks)
}

fn ids(tasks: &[Task]) -> BTreeSet<String> {
    tasks.iter().filter_map(|t| t.id.clone()).collect()
}

fn task<'a>(tasks: &'a [Task], prefix: &str) -> &'a Task {
    tasks
        .iter()
        .find(|t| t.id.as_deref().is_some_and(|id| id.starts_with(prefix)))
        .unwrap_or_else(|| panic!("no task {prefix}"))
}

#[test]
fn a_running_task_is_described_by_its_state_and_message() {
    let (_, tasks) = parsed(&raw("update_completed"));
    assert_eq!(task_error(task(&tasks, "rbvuxp")), "running: started");
    // Running, it is not waiting for a node either.
    assert_eq!(unschedulable(task(&tasks, "rbvuxp")), None);
}

#[test]
fn a_failed_task_with_an_error_is_not_taken_for_an_unschedulable_one() {
    let (_, tasks) = parsed(&raw("crash_loop_first_deploy"));
    let failed = tasks
        .iter()
        .find(|t| t.status.as_ref().and_then(|s| s.err.as_deref()).is_some())
        .unwrap();
    assert!(
        task_error(failed).starts_with("failed: "),
        "{}",
        task_error(failed)
    );
    assert_eq!(unschedulable(failed), None);
}

#[test]
fn a_completed_update_is_not_a_rollback() {
    let before = parsed(&raw("healthy_before_update"));
    let (service, tasks) = parsed(&raw("update_completed"));
    let mut t = Tracker::new(
        Some(ServiceBefore::of(&before.0.service)),
        ids(&before.1),
        Rules::default(),
    );
    let (phase, _) = t.observe(&service.service, &tasks, Duration::from_secs(9));
    assert_eq!(phase, Phase::Ok("updated".into()));
    assert!(!t.rolled_back());
}

#[test]
fn the_new_task_that_waited_longest_for_a_node_fails_the_update() {
    // The update in progress with both of its new tasks pending: one could not be placed from
    // the start, the other only later (after its node left).
    let short = "no suitable node (insufficient resources on 1 node)";
    let long = "no suitable node (scheduling constraints not satisfied on 1 node)";
    let pending = |why: &str| {
        serde_json::json!({
            "Timestamp": "2026-11-23T02:08:50.9Z",
            "State": "pending",
            "Message": "pending task scheduling",
            "Err": why,
            "PortStatus": {}
        })
    };
    let mut first = raw("updating");
    let mut tasks = first["tasks"].as_array().unwrap().clone();
    let mut later = tasks
        .iter()
        .find(|t| t["ID"].as_str().unwrap().starts_with("6x4u8s"))
        .unwrap()
        .clone();
    later["ID"] = "laterpendingtask000000000".into();
    later["Status"] = pending(short);
    // In Swarm's order the later one comes first.
    tasks.insert(0, later.clone());
    for t in &mut tasks {
        if t["ID"].as_str().unwrap().starts_with("6x4u8s") {
            t["Status"] = pending(long);
        }
    }
    let mut both = first.clone();
    both["tasks"] = Value::Array(tasks.clone());
    // At first only the one that never found a node is pending.
    first["tasks"] = Value::Array(tasks[1..].to_vec());

    let before = parsed(&raw("healthy_before_update"));
    let mut t = Tracker::new(
        Some(ServiceBefore::of(&before.0.service)),
        ids(&before.1),
        Rules::default(),
    );
    let (service, early) = parsed(&first);
    let s = &service.service;
    let (p, _) = t.observe(s, &early, Duration::from_secs(2));
    assert_eq!(p, Phase::Pending(format!("updating; pending: {long}")));
    let (_, now) = parsed(&both);
    let (p, _) = t.observe(s, &now, Duration::from_secs(20));
    assert!(matches!(p, Phase::Pending(_)), "{p:?}");
    // 30 s after the first one was seen pending (the other waited 12 s): the update fails,
    // naming the one that waited longest.
    let (p, _) = t.observe(s, &now, Duration::from_secs(32));
    assert_eq!(
        p,
        Phase::Failed(format!(
            "a new task cannot be placed (pending: {long}) for 30s"
        ))
    );
}

#[test]
fn a_pause_on_the_way_to_a_rollback_fails_once_the_grace_is_over() {
    let before = parsed(&raw("healthy_before_update"));
    let mut paused = raw("paused");
    paused["service"]["Spec"]["UpdateConfig"]["FailureAction"] = "rollback".into();
    let (service, tasks) = parsed(&paused);
    let mut t = Tracker::new(
        Some(ServiceBefore::of(&before.0.service)),
        ids(&before.1),
        Rules::default(),
    );
    let (p, _) = t.observe(&service.service, &tasks, Duration::from_secs(3));
    assert!(matches!(p, Phase::Pending(_)), "{p:?}");
    // Paused for the whole grace (10 s): no rollback came, a failure.
    let (p, _) = t.observe(&service.service, &tasks, Duration::from_secs(13));
    assert!(
        matches!(&p, Phase::Failed(w) if w.contains("update paused")),
        "{p:?}"
    );
}
