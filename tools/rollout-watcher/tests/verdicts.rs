//! The verdict logic on service/task JSON recorded from a real swarm (tests/fixtures/record.sh).

use std::collections::BTreeSet;
use std::time::Duration;

use bollard::models::{ServiceSpecUpdateConfigFailureActionEnum, Task};
use rollout_watcher::assess::{Phase, Rules, ServiceBefore, Tracker, counts, task_error};
use rollout_watcher::docker::{self, ServiceInspect};
use rollout_watcher::{budget, history, prune};
use serde::Deserialize;

struct Fixture {
    service: ServiceInspect,
    tasks: Vec<Task>,
}

#[derive(Deserialize, Clone)]
struct RawFixture {
    service: serde_json::Value,
    tasks: serde_json::Value,
}

fn raw_fixture(name: &str) -> RawFixture {
    let path = format!("{}/tests/fixtures/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A fixture parsed the way the watcher parses the docker CLI's output.
fn fixture(name: &str) -> Fixture {
    let raw = raw_fixture(name);
    let services = docker::parse_services(&format!("[{}]", raw.service)).unwrap();
    Fixture {
        service: services.into_iter().next().unwrap(),
        tasks: docker::parse_tasks(&raw.tasks.to_string()).unwrap(),
    }
}

fn ids(tasks: &[Task]) -> BTreeSet<String> {
    tasks.iter().filter_map(|t| t.id.clone()).collect()
}

/// The verdict for a service whose pre-deploy state was `before` (tasks and update status).
fn verdict(f: &Fixture, before: Option<&Fixture>, elapsed: Duration) -> Phase {
    let (b, tasks) = match before {
        Some(b) => (Some(ServiceBefore::of(&b.service.service)), ids(&b.tasks)),
        None => (None, BTreeSet::new()),
    };
    let mut t = Tracker::new(b, tasks, Rules::default());
    t.observe(&f.service.service, &f.tasks, elapsed).0
}

fn assert_pending(p: &Phase) {
    assert!(
        matches!(p, Phase::Pending(_)),
        "expected pending, got {p:?}"
    );
}
fn assert_ok(p: &Phase) {
    assert!(matches!(p, Phase::Ok(_)), "expected ok, got {p:?}");
}
fn assert_failed(p: &Phase, containing: &str) {
    match p {
        Phase::Failed(why) => assert!(why.contains(containing), "{why:?} lacks {containing:?}"),
        other => panic!("expected failed, got {other:?}"),
    }
}

#[test]
fn a_running_unchanged_service_is_ok() {
    let f = fixture("healthy_before_update");
    let p = verdict(&f, Some(&f), Duration::from_secs(1));
    assert_ok(&p);
    let c = counts(&f.service.service, &f.tasks, &ids(&f.tasks));
    assert_eq!((c.wanted, c.on_new_spec, c.healthy, c.stale), (2, 2, 2, 0));
}

#[test]
fn right_after_the_deploy_old_tasks_are_not_taken_for_the_new_spec() {
    // The spec changed (V=2) but the sample shows tasks of the old spec still running.
    let before = fixture("healthy_before_update");
    let mut now = fixture("update_completed");
    now.service.service.update_status = before.service.service.update_status.clone();
    now.tasks = before.tasks.clone();
    let p = verdict(&now, Some(&before), Duration::from_secs(1));
    assert_pending(&p);
    let c = counts(&now.service.service, &now.tasks, &ids(&before.tasks));
    assert_eq!(c.stale, 2, "{c:?}");
    assert_eq!(c.on_new_spec, 0);
}

#[test]
fn an_update_in_progress_is_pending() {
    let before = fixture("healthy_before_update");
    assert_pending(&verdict(
        &fixture("updating"),
        Some(&before),
        Duration::from_secs(2),
    ));
}

#[test]
fn a_completed_update_with_its_replicas_healthy_is_ok() {
    let before = fixture("healthy_before_update");
    let p = verdict(
        &fixture("update_completed"),
        Some(&before),
        Duration::from_secs(10),
    );
    assert_eq!(p, Phase::Ok("updated".into()));
}

#[test]
fn completed_is_not_enough_without_the_replicas() {
    let before = fixture("healthy_before_update");
    let mut f = fixture("update_completed");
    // One of the two new tasks is not running (e.g. it crashed right after the update).
    let running = f
        .tasks
        .iter_mut()
        .find(|t| t.desired_state == Some(bollard::models::TaskState::RUNNING))
        .unwrap();
    running.status.as_mut().unwrap().state = Some(bollard::models::TaskState::STARTING);
    assert_pending(&verdict(&f, Some(&before), Duration::from_secs(10)));
}

#[test]
fn rollback_started_waits_then_fails_with_swarms_message() {
    let before = fixture("update_completed");
    let started = fixture("rollback_started");
    let done = fixture("rollback_completed");
    let mut t = Tracker::new(
        Some(ServiceBefore::of(&before.service.service)),
        ids(&before.tasks),
        Rules::default(),
    );
    let (p, _) = t.observe(
        &started.service.service,
        &started.tasks,
        Duration::from_secs(5),
    );
    assert_pending(&p);
    let (p, _) = t.observe(&done.service.service, &done.tasks, Duration::from_secs(9));
    assert_failed(&p, "rolled back");
    let message = done
        .service
        .service
        .update_status
        .as_ref()
        .unwrap()
        .message
        .clone()
        .unwrap();
    assert!(!message.is_empty());
    assert_failed(&p, &message);
    assert!(t.rolled_back());
}

#[test]
fn a_rollback_seen_directly_as_completed_fails() {
    let before = fixture("update_completed");
    assert_failed(
        &verdict(
            &fixture("rollback_completed"),
            Some(&before),
            Duration::from_secs(3),
        ),
        "rolled back",
    );
}

#[test]
fn an_old_rollback_of_an_earlier_deploy_is_not_this_deploys_failure() {
    // This deploy did not touch the service: its rollback_completed is from before.
    let f = fixture("rollback_completed");
    assert_ok(&verdict(&f, Some(&f), Duration::from_secs(2)));
}

#[test]
fn paused_with_failure_action_pause_fails_at_once() {
    let before = fixture("healthy_before_update");
    let f = fixture("paused");
    assert_eq!(
        f.service
            .service
            .spec
            .as_ref()
            .unwrap()
            .update_config
            .as_ref()
            .unwrap()
            .failure_action,
        Some(ServiceSpecUpdateConfigFailureActionEnum::PAUSE)
    );
    assert_failed(
        &verdict(&f, Some(&before), Duration::from_secs(1)),
        "paused",
    );
}

#[test]
fn a_brief_pause_on_the_way_to_a_rollback_is_not_yet_a_verdict() {
    let before = fixture("healthy_before_update");
    let mut f = fixture("paused");
    f.service
        .service
        .spec
        .as_mut()
        .unwrap()
        .update_config
        .as_mut()
        .unwrap()
        .failure_action = Some(ServiceSpecUpdateConfigFailureActionEnum::ROLLBACK);
    let mut t = Tracker::new(
        Some(ServiceBefore::of(&before.service.service)),
        ids(&before.tasks),
        Rules::default(),
    );
    let (p, _) = t.observe(&f.service.service, &f.tasks, Duration::from_secs(3));
    assert_pending(&p);
    let (p, _) = t.observe(&f.service.service, &f.tasks, Duration::from_secs(8));
    assert_pending(&p);
    // Still paused after the grace period: a failure.
    let (p, _) = t.observe(&f.service.service, &f.tasks, Duration::from_secs(14));
    assert_failed(&p, "paused");
}

#[test]
fn a_crash_loop_on_first_deploy_fails_fast_with_the_task_error() {
    let f = fixture("crash_loop_first_deploy");
    assert!(f.service.service.update_status.is_none());
    let p = verdict(&f, None, Duration::from_secs(12));
    assert_failed(&p, "tasks failed since the deploy");
    let last = rollout_watcher::assess::last_failure(&f.tasks, &BTreeSet::new()).unwrap();
    assert!(
        task_error(last).contains("exit (3)"),
        "{}",
        task_error(last)
    );
    // With a higher threshold it keeps waiting instead.
    let mut t = Tracker::new(
        None,
        BTreeSet::new(),
        Rules {
            max_task_failures: 100,
            ..Rules::default()
        },
    );
    assert_pending(
        &t.observe(&f.service.service, &f.tasks, Duration::from_secs(12))
            .0,
    );
}

#[test]
fn failures_from_before_the_deploy_do_not_count() {
    let f = fixture("crash_loop_first_deploy");
    let c = counts(&f.service.service, &f.tasks, &ids(&f.tasks));
    assert_eq!(c.failed, 0);
}

#[test]
fn a_global_service_is_judged_by_its_tasks() {
    let f = fixture("global_running");
    let c = counts(&f.service.service, &f.tasks, &BTreeSet::new());
    assert_eq!((c.wanted, c.healthy), (1, 1));
    assert_ok(&verdict(&f, None, Duration::from_secs(3)));
    // A global service whose only task is not running is not ok.
    let mut g = fixture("global_running");
    for t in &mut g.tasks {
        t.status.as_mut().unwrap().state = Some(bollard::models::TaskState::STARTING);
    }
    assert_pending(&verdict(&g, None, Duration::from_secs(3)));
}

#[test]
fn budget_follows_the_services_own_settings() {
    let f = fixture("update_completed");
    // health: start 1 s + 1 s x 2 retries + 1 s timeout = 4 s; monitor 3 s; no delay.
    let window = budget::health_window(
        f.service
            .service
            .spec
            .as_ref()
            .unwrap()
            .task_template
            .as_ref()
            .unwrap()
            .container_spec
            .as_ref()
            .unwrap()
            .health_check
            .as_ref(),
    );
    assert_eq!(window, Duration::from_secs(4));
    // 2 replicas, parallelism 1: 2 batches of 7 s for the update and for a rollback, + 60 s.
    assert_eq!(
        budget::rollout_budget(&f.service.service, 2),
        Duration::from_secs(2 * 7 + 2 * 7 + 60)
    );
    assert_eq!(
        budget::rollout_floor(&f.service.service, 2, Duration::from_secs(2)),
        Duration::from_secs(2 + 2 + 3)
    );
}

#[test]
fn prune_keeps_current_previous_and_recent_deploys() {
    let f = fixture("update_completed");
    let mut service = f.service.clone();
    let record = |id: &str, config: &str| history::DeployRecord {
        id: id.into(),
        stack: "s".into(),
        commit: None,
        pipeline: None,
        services: [(
            "backend".to_owned(),
            history::ServiceRecord {
                image: "i".into(),
                configs: vec![config.into()],
                secrets: vec![format!("{config}-secret")],
                spec: None,
            },
        )]
        .into(),
    };
    let records = vec![
        record("1", "c1"),
        record("2", "c2"),
        record("3", "c3"),
        record("4", "c4"),
    ];
    // Current spec uses cur, previous spec uses prev.
    let set = |spec: &mut bollard::models::ServiceSpec, name: &str| {
        let c = spec
            .task_template
            .as_mut()
            .unwrap()
            .container_spec
            .as_mut()
            .unwrap();
        c.configs = Some(vec![bollard::models::TaskSpecContainerSpecConfigs {
            config_name: Some(name.into()),
            ..Default::default()
        }]);
    };
    set(service.service.spec.as_mut().unwrap(), "cur");
    let mut previous = service.service.spec.clone().unwrap();
    set(&mut previous, "prev");
    service.previous_spec = Some(previous);
    let (configs, secrets) = prune::kept_names(&[service], &records, 3);
    let all: Vec<prune::Object> = ["c1", "c2", "c3", "c4", "cur", "prev", "stray"]
        .iter()
        .map(|n| prune::Object {
            id: format!("id-{n}"),
            name: n.to_string(),
        })
        .collect();
    let gone: Vec<&str> = prune::removable(&all, &configs)
        .iter()
        .map(|o| o.name.as_str())
        .collect();
    assert_eq!(gone, ["c1", "stray"]);
    assert!(secrets.contains("c2-secret") && !secrets.contains("c1-secret"));
    let (configs, _) = prune::kept_names(&[], &records, 1);
    assert_eq!(configs.into_iter().collect::<Vec<_>>(), ["c4"]);
}

#[test]
fn deploy_records_round_trip_and_sort_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture("update_completed");
    for id in ["20261123T020000.000Z", "20261122T235959.000Z"] {
        history::write(
            dir.path(),
            &history::record_of(id, "rw-fixture", std::slice::from_ref(&f.service.service)),
        )
        .unwrap();
    }
    let all = history::read_all(dir.path()).unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].id, "20261122T235959.000Z");
    let svc = &all[1].services["rw-fixture-roll"];
    assert!(
        svc.image.starts_with("stackship-standin/debian"),
        "{}",
        svc.image
    );
    // The whole spec is kept, for drift.
    assert_eq!(
        svc.spec
            .as_ref()
            .and_then(|s| s.get("Name"))
            .and_then(|n| n.as_str()),
        Some("rw-fixture-roll")
    );
    std::fs::write(dir.path().join("bad.json"), "{").unwrap();
    let err = history::read_all(dir.path()).unwrap_err();
    assert!(format!("{err:#}").contains("bad.json"), "{err:#}");
    assert!(
        history::read_all(&dir.path().join("missing"))
            .unwrap()
            .is_empty()
    );
}

/// Whether the typed model keeps every field Docker printed (zero values aside): what the
/// spec comparison and budgets rely on.
#[test]
fn the_model_keeps_every_task_spec_field() {
    fn strip(v: serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        match v {
            Value::Object(m) => Value::Object(
                m.into_iter()
                    // The one name the model spells differently (see docker::fix_healthcheck).
                    .map(|(k, v)| {
                        (
                            if k == "HealthCheck" {
                                "Healthcheck".into()
                            } else {
                                k
                            },
                            strip(v),
                        )
                    })
                    .filter(|(_, v)| {
                        !matches!(v, Value::Null | Value::Bool(false))
                            && v != &serde_json::json!({})
                            && v != &serde_json::json!([])
                            && v != &serde_json::json!(0)
                            && v != &serde_json::json!("")
                    })
                    .collect(),
            ),
            Value::Array(a) => Value::Array(a.into_iter().map(strip).collect()),
            other => other,
        }
    }
    for name in [
        "update_completed",
        "rollback_completed",
        "global_running",
        "paused",
    ] {
        let raw = raw_fixture(name);
        let f = fixture(name);
        for (raw_task, task) in raw.tasks.as_array().unwrap().iter().zip(&f.tasks) {
            let typed = serde_json::to_value(task.spec.as_ref().unwrap()).unwrap();
            assert_eq!(strip(typed), strip(raw_task["Spec"].clone()), "{name}");
        }
    }
}

#[test]
fn a_healthcheck_change_is_a_new_spec() {
    let f = fixture("healthy_before_update");
    let mut service = f.service.service.clone();
    let health = service
        .spec
        .as_mut()
        .unwrap()
        .task_template
        .as_mut()
        .unwrap()
        .container_spec
        .as_mut()
        .unwrap()
        .health_check
        .as_mut()
        .unwrap();
    health.retries = Some(7);
    assert!(
        f.tasks
            .iter()
            .all(|t| !rollout_watcher::assess::on_current_spec(&service, t))
    );
    assert!(
        f.tasks
            .iter()
            .all(|t| rollout_watcher::assess::on_current_spec(&f.service.service, t))
    );
}
