//! The verdict logic on service/task JSON recorded from a real swarm (tests/fixtures/record.sh).

use std::collections::BTreeSet;
use std::time::Duration;

use bollard::models::{ServiceSpecUpdateConfigFailureActionEnum, Task, TaskState};
use rollout_watcher::assess::{
    DEFAULT_MONITOR, Phase, Rules, ServiceBefore, Tracker, blamed_task, counts, is_failure,
    last_failure, monitor_of, problem_task, problem_task_id, task_error, unschedulable,
};
use rollout_watcher::docker::{self, ServiceInspect};
use rollout_watcher::{budget, history, prune};
use serde::Deserialize;

// More of the same, one file per subject (tests/verdicts/; one test binary links faster).
#[path = "verdicts/budgets.rs"]
mod budgets;
#[path = "verdicts/records.rs"]
mod records;
#[path = "verdicts/tasks.rs"]
mod tasks;

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
    parsed(&raw_fixture(name))
}

fn parsed(raw: &RawFixture) -> Fixture {
    let services = docker::parse_services(&format!("[{}]", raw.service)).unwrap();
    Fixture {
        service: services.into_iter().next().unwrap(),
        tasks: docker::parse_tasks(&raw.tasks.to_string()).unwrap(),
    }
}

/// A recorded fixture changed by `edit` on its JSON (a state Docker was not recorded in).
fn edited(name: &str, edit: impl FnOnce(&mut RawFixture)) -> Fixture {
    let mut raw = raw_fixture(name);
    edit(&mut raw);
    parsed(&raw)
}

/// The task of `raw` with this ID, to edit.
fn task_mut<'a>(raw: &'a mut RawFixture, id: &str) -> &'a mut serde_json::Value {
    raw.tasks
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|t| t["ID"] == id)
        .unwrap_or_else(|| panic!("no task {id}"))
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

/// The verdict after the same sample was taken twice, a second apart (what a service without
/// an update of its own needs to settle ok).
fn settled_verdict(f: &Fixture, before: Option<&Fixture>, elapsed: Duration) -> Phase {
    let (b, tasks) = match before {
        Some(b) => (Some(ServiceBefore::of(&b.service.service)), ids(&b.tasks)),
        None => (None, BTreeSet::new()),
    };
    // A new service is confirmed once it kept running for its update monitor.
    let confirm = if b.is_none() {
        monitor_of(&f.service.service)
    } else {
        Duration::from_secs(1)
    };
    let mut t = Tracker::new(b, tasks, Rules::default());
    let (first, _) = t.observe(&f.service.service, &f.tasks, elapsed);
    assert_pending(&first);
    t.observe(&f.service.service, &f.tasks, elapsed + confirm).0
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
    let p = settled_verdict(&f, Some(&f), Duration::from_secs(1));
    assert_eq!(p, Phase::Ok("unchanged, running".into()));
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
    assert_ok(&settled_verdict(&f, Some(&f), Duration::from_secs(2)));
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
    assert_eq!(
        settled_verdict(&f, None, Duration::from_secs(3)),
        Phase::Ok("running".into())
    );
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
        ancestors: Vec::new(),
        note: None,
        started: None,
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
    // Records of the same release (a rotation: only its secret differs) count once.
    let mut rotated = record("5", "c4");
    rotated.services.get_mut("backend").unwrap().secrets = vec!["v2".into()];
    let records = vec![
        record("1", "c1"),
        record("2", "c2"),
        record("3", "c3"),
        rotated,
        record("6", "c4"),
    ];
    let (configs, secrets) = prune::kept_names(&[], &records, 2);
    assert_eq!(configs.into_iter().collect::<Vec<_>>(), ["c3", "c4"]);
    assert!(
        secrets.contains("v2") && secrets.contains("c3-secret"),
        "{secrets:?}"
    );
    assert!(!secrets.contains("c2-secret"), "{secrets:?}");
    let (configs, _) = prune::kept_names(&[], &records, 0);
    assert!(configs.is_empty());
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

// --- The task that explains a failure -------------------------------------------------------

const CULPRIT: &str = "jvg2wzhcnva4toub9t941x1dv";
/// Stopped by the rollback before it started: no container, on the current (old) spec.
const STOPPED_UNSTARTED: &str = "780ntm17msbt6q5dowyf0sax1";

fn problem_id(f: &Fixture, before: &BTreeSet<String>) -> Option<String> {
    problem_task(&f.service.service, &f.tasks, before).and_then(|t| t.id.clone())
}

/// rollback_completed with a newer task that failed without ever starting.
fn rollback_with_a_newer_failure() -> Fixture {
    edited("rollback_completed", |raw| {
        let mut newer = task_mut(raw, STOPPED_UNSTARTED).clone();
        newer["ID"] = "zz9newreplacement00000000".into();
        newer["Status"]["State"] = "rejected".into();
        newer["Status"]["Err"] = "No such image: x".into();
        newer["Status"]["Timestamp"] = "2026-11-23T02:09:13Z".into();
        raw.tasks.as_array_mut().unwrap().push(newer);
    })
}

#[test]
fn swarms_messages_name_the_task_they_blame() {
    let paused = fixture("paused");
    let message = paused
        .service
        .service
        .update_status
        .unwrap()
        .message
        .unwrap();
    assert_eq!(blamed_task(&message), Some("uvl7skp7qlbk7hdsrt25z6xb9"));
    assert_eq!(
        blamed_task(&format!(
            "update rolled back due to failure or early termination of task {CULPRIT}"
        )),
        Some(CULPRIT)
    );
    assert_eq!(
        blamed_task(&format!(
            "rollback paused due to failure of task {CULPRIT}."
        )),
        Some(CULPRIT)
    );
    for none in [
        "update in progress",
        "rollback completed",
        "update completed",
        "",
        "task x",
    ] {
        assert_eq!(blamed_task(none), None, "{none:?}");
    }
}

#[test]
fn the_problem_task_is_the_one_swarm_blames_not_a_newer_failure() {
    let before = ids(&fixture("update_completed").tasks);
    let f = rollback_with_a_newer_failure();
    let service = &f.service.service;
    let rolled_back =
        format!("update rolled back due to failure or early termination of task {CULPRIT}");
    // The guess alone would show the replacement that never started.
    assert_eq!(
        problem_id(&f, &before).as_deref(),
        Some("zz9newreplacement00000000")
    );
    let messages = vec!["update in progress".to_owned(), rolled_back.clone()];
    assert_eq!(
        problem_task_id(service, &f.tasks, &before, &messages).as_deref(),
        Some(CULPRIT)
    );
    // Swarm's word holds when the task has left its history, and its first blame wins over a
    // later failure of the rollback itself.
    let gone = "gone0000000000000000000aa";
    let messages = vec![
        format!("update paused due to failure or early termination of task {gone}"),
        rolled_back,
        format!("rollback paused due to failure or early termination of task {CULPRIT}"),
    ];
    assert_eq!(
        problem_task_id(service, &f.tasks, &before, &messages).as_deref(),
        Some(gone)
    );
    // No message blames a task: the guess.
    let messages = vec![
        "update in progress".to_owned(),
        "rollback completed".to_owned(),
    ];
    assert_eq!(
        problem_task_id(service, &f.tasks, &before, &messages).as_deref(),
        Some("zz9newreplacement00000000")
    );
}

#[test]
fn problem_task_prefers_a_failure_then_the_rolled_back_release_then_a_task_that_ran() {
    let before = ids(&fixture("update_completed").tasks);
    // The failed task of the rolled-back release.
    assert_eq!(
        problem_id(&fixture("rollback_completed"), &before).as_deref(),
        Some(CULPRIT)
    );
    // Not failed but stopped (a never-healthy task may exit 0 on SIGTERM): the rolled-back
    // release's task wins over a newer one of the current spec, even one that ran.
    let stopped = |edit: fn(&mut RawFixture)| {
        edited("rollback_completed", |raw| {
            let culprit = task_mut(raw, CULPRIT);
            culprit["Status"]["State"] = "shutdown".into();
            culprit["Status"]["Err"] = serde_json::Value::Null;
            edit(raw);
        })
    };
    assert_eq!(
        problem_id(&stopped(|_| {}), &before).as_deref(),
        Some(CULPRIT)
    );
    let newer_ran = stopped(|raw| {
        task_mut(raw, STOPPED_UNSTARTED)["Status"]["ContainerStatus"]["ContainerID"] =
            "0123abcd".into();
    });
    assert_eq!(problem_id(&newer_ran, &before).as_deref(), Some(CULPRIT));
    // On the same spec, the task that ran a container wins over a newer one that did not.
    let same_spec = stopped(|raw| {
        let current = task_mut(raw, STOPPED_UNSTARTED)["Spec"].clone();
        task_mut(raw, CULPRIT)["Spec"] = current;
    });
    assert_eq!(problem_id(&same_spec, &before).as_deref(), Some(CULPRIT));
    // Equal otherwise, the newest.
    let both_ran = stopped(|raw| {
        let current = task_mut(raw, STOPPED_UNSTARTED)["Spec"].clone();
        task_mut(raw, CULPRIT)["Spec"] = current;
        task_mut(raw, STOPPED_UNSTARTED)["Status"]["ContainerStatus"]["ContainerID"] =
            "0123abcd".into();
    });
    assert_eq!(
        problem_id(&both_ran, &before).as_deref(),
        Some(STOPPED_UNSTARTED)
    );
    // Tasks from before the deploy, and tasks meant to run, are never the problem.
    let mut older = before.clone();
    older.insert(CULPRIT.to_owned());
    assert_eq!(
        problem_id(&stopped(|_| {}), &older).as_deref(),
        Some(STOPPED_UNSTARTED)
    );
    older.insert(STOPPED_UNSTARTED.to_owned());
    assert_eq!(problem_id(&stopped(|_| {}), &older), None);
    // A new task meant to run (here one the update started) is not the problem either.
    older.remove("rbvuxpbhtcfuujbrmmtl76s8x");
    assert_eq!(problem_id(&stopped(|_| {}), &older), None);
}

#[test]
fn problem_task_names_an_unschedulable_new_task_after_any_failure() {
    let before = ids(&fixture("healthy_before_update").tasks);
    let f = unschedulable_update();
    assert_eq!(problem_id(&f, &before).as_deref(), Some(NEW_TASK));
    // Not when the pending task is from before the deploy.
    assert_eq!(problem_id(&f, &ids(&f.tasks)), None);
}

// --- Verdicts --------------------------------------------------------------------------------

#[test]
fn only_ok_and_failed_are_settled() {
    assert!(!Phase::Pending("x".into()).is_settled());
    assert!(Phase::Ok("x".into()).is_settled());
    assert!(Phase::Failed("x".into()).is_settled());
}

#[test]
fn a_running_service_with_failures_since_the_deploy_is_not_called_unchanged() {
    let f = fixture("healthy_before_update");
    assert_eq!(
        settled_verdict(&f, Some(&f), Duration::from_secs(1)),
        Phase::Ok("unchanged, running".into())
    );
    // One new task failed since the deploy, the replicas run again: "running".
    let g = edited("healthy_before_update", |raw| {
        let mut failed = raw.tasks[0].clone();
        failed["ID"] = "new0failed0000000000000aa".into();
        failed["DesiredState"] = "shutdown".into();
        failed["Status"]["State"] = "failed".into();
        failed["Status"]["Err"] = "task: non-zero exit (1)".into();
        raw.tasks.as_array_mut().unwrap().push(failed);
    });
    assert_eq!(
        settled_verdict(&g, Some(&f), Duration::from_secs(1)),
        Phase::Ok("running".into())
    );
    // A service the deploy created is "running" too.
    assert_eq!(
        settled_verdict(&f, None, Duration::from_secs(1)),
        Phase::Ok("running".into())
    );
}

#[test]
fn a_crash_loop_fails_at_exactly_max_task_failures() {
    // The fixture has 4 failed tasks (and one ready).
    let f = fixture("crash_loop_first_deploy");
    let with_max = |max| {
        let rules = Rules {
            max_task_failures: max,
            ..Rules::default()
        };
        let mut t = Tracker::new(None, BTreeSet::new(), rules);
        t.observe(&f.service.service, &f.tasks, Duration::from_secs(5))
            .0
    };
    assert_failed(&with_max(4), "4 tasks failed since the deploy");
    assert_failed(&with_max(4), "the last: failed: task: non-zero exit (3)");
    assert_pending(&with_max(5));
}

#[test]
fn a_service_without_an_update_is_ok_only_when_two_samples_a_poll_apart_agree() {
    let f = fixture("global_running");
    let s = &f.service.service;
    // Unchanged by the deploy: it ran before as it runs now.
    let unchanged = || {
        Tracker::new(
            Some(ServiceBefore::of(s)),
            BTreeSet::new(),
            Rules::default(),
        )
    };
    // Once: not yet.
    let mut t = unchanged();
    assert_eq!(
        t.observe(s, &f.tasks, Duration::from_secs(3)).0,
        Phase::Pending("unchanged, running, confirming".into())
    );
    // Twice, a poll (1 s) apart: ok.
    assert_eq!(
        t.observe(s, &f.tasks, Duration::from_secs(4)).0,
        Phase::Ok("unchanged, running".into())
    );
    // Twice, but closer than a poll: not yet; a third later sample settles it.
    let mut t = unchanged();
    t.observe(s, &f.tasks, Duration::from_millis(3000));
    assert_pending(&t.observe(s, &f.tasks, Duration::from_millis(3500)).0);
    assert_ok(&t.observe(s, &f.tasks, Duration::from_millis(4000)).0);
    // A sample that is not ok in between starts over.
    let mut down = fixture("global_running");
    down.tasks[0].status.as_mut().unwrap().state = Some(TaskState::STARTING);
    let mut t = unchanged();
    t.observe(s, &f.tasks, Duration::from_secs(3));
    assert_pending(&t.observe(s, &down.tasks, Duration::from_secs(4)).0);
    assert_pending(&t.observe(s, &f.tasks, Duration::from_secs(5)).0);
    assert_ok(&t.observe(s, &f.tasks, Duration::from_secs(6)).0);
    // However short the interval, one sample is never enough.
    let rules = Rules {
        confirm_after: Duration::ZERO,
        ..Rules::default()
    };
    let mut t = Tracker::new(Some(ServiceBefore::of(s)), BTreeSet::new(), rules);
    assert_pending(&t.observe(s, &f.tasks, Duration::from_secs(3)).0);
    assert_ok(&t.observe(s, &f.tasks, Duration::from_secs(3)).0);
}

#[test]
fn a_new_service_is_ok_only_once_its_tasks_kept_running_for_its_update_monitor() {
    let f = fixture("global_running");
    let s = &f.service.service;
    assert_eq!(monitor_of(s), Duration::from_secs(5));
    let new = || Tracker::new(None, BTreeSet::new(), Rules::default());
    let waiting = Phase::Pending(
        "running, confirming: new, its tasks must keep running for 5s (its update monitor)".into(),
    );
    // Healthy, then a poll later, then 4.9 s later: not yet (a task may crash after its
    // healthcheck passed, and nothing of Swarm's watches a new service's first tasks).
    let mut t = new();
    assert_eq!(t.observe(s, &f.tasks, Duration::from_secs(3)).0, waiting);
    assert_eq!(t.observe(s, &f.tasks, Duration::from_secs(4)).0, waiting);
    assert_eq!(
        t.observe(s, &f.tasks, Duration::from_millis(7900)).0,
        waiting
    );
    // 5 s after it was first seen running: ok.
    assert_eq!(
        t.observe(s, &f.tasks, Duration::from_secs(8)).0,
        Phase::Ok("running".into())
    );
    // A task that stops running within the window starts it over.
    let mut down = fixture("global_running");
    down.tasks[0].status.as_mut().unwrap().state = Some(TaskState::STARTING);
    let mut t = new();
    t.observe(s, &f.tasks, Duration::from_secs(3));
    assert_pending(&t.observe(s, &down.tasks, Duration::from_secs(6)).0);
    assert_pending(&t.observe(s, &f.tasks, Duration::from_secs(7)).0);
    assert_pending(&t.observe(s, &f.tasks, Duration::from_secs(11)).0);
    assert_ok(&t.observe(s, &f.tasks, Duration::from_secs(12)).0);
    // A poll interval longer than the monitor: the interval.
    let rules = Rules {
        confirm_after: Duration::from_secs(9),
        ..Rules::default()
    };
    let mut t = Tracker::new(None, BTreeSet::new(), rules);
    t.observe(s, &f.tasks, Duration::from_secs(3));
    assert_pending(&t.observe(s, &f.tasks, Duration::from_secs(11)).0);
    assert_ok(&t.observe(s, &f.tasks, Duration::from_secs(12)).0);
}

#[test]
fn the_update_monitor_is_the_services_or_swarms_default() {
    let f = fixture("updating");
    assert_eq!(monitor_of(&f.service.service), Duration::from_secs(3));
    for monitor in [serde_json::Value::Null, 0.into(), (-1).into()] {
        let unset = edited("updating", |raw| {
            raw.service["Spec"]["UpdateConfig"]["Monitor"] = monitor.clone();
        });
        assert_eq!(monitor_of(&unset.service.service), DEFAULT_MONITOR);
    }
    let none = edited("updating", |raw| {
        raw.service["Spec"]
            .as_object_mut()
            .unwrap()
            .remove("UpdateConfig");
    });
    assert_eq!(monitor_of(&none.service.service), DEFAULT_MONITOR);
    assert_eq!(DEFAULT_MONITOR, Duration::from_secs(5));
}

#[test]
fn a_task_that_exits_0_while_it_should_keep_running_is_a_failure() {
    // The crash loop, but each task exited 0 (a command that returns at once).
    let f = edited("crash_loop_first_deploy", |raw| {
        for t in raw.tasks.as_array_mut().unwrap() {
            if t["Status"]["State"] == "failed" {
                t["Status"]["State"] = "complete".into();
                t["Status"]["Message"] = "finished".into();
                t["Status"]["Err"] = serde_json::Value::Null;
                t["Status"]["ContainerStatus"]["ExitCode"] = 0.into();
            }
        }
    });
    assert_eq!(
        counts(&f.service.service, &f.tasks, &BTreeSet::new()).failed,
        4
    );
    let p = verdict(&f, None, Duration::from_secs(12));
    assert_failed(&p, "4 tasks failed since the deploy");
    assert_failed(&p, "exited 0 while the service should keep it running");
    let last = last_failure(&f.tasks, &BTreeSet::new()).unwrap();
    assert_eq!(
        task_error(last),
        "complete: exited 0 while the service should keep it running"
    );
    // A job's task is meant to complete.
    let mut job = last.clone();
    job.job_iteration = Some(bollard::models::ObjectVersion { index: Some(1) });
    assert!(!is_failure(&job));
    assert!(is_failure(last));
}

#[test]
fn a_placement_only_change_keeps_the_tasks_up_to_date() {
    // The deploy added a constraint and a preference the node still satisfies: Swarm keeps the
    // tasks, which lack them, and sets no update status.
    let placement = serde_json::json!({
        "Constraints": ["node.role==manager"],
        "Preferences": [{"Spread": {"SpreadDescriptor": "node.labels.zone"}}],
        "MaxReplicas": 2
    });
    let f = edited("healthy_before_update", |raw| {
        raw.service["Spec"]["TaskTemplate"]["Placement"] = placement.clone();
    });
    assert!(
        f.tasks
            .iter()
            .all(|t| rollout_watcher::assess::on_current_spec(&f.service.service, t))
    );
    let c = counts(&f.service.service, &f.tasks, &ids(&f.tasks));
    assert_eq!((c.on_new_spec, c.healthy, c.stale), (2, 2, 0));
    assert_ok(&settled_verdict(&f, Some(&f), Duration::from_secs(1)));
    // Placement is all that is left out: with the image's arguments changed too, the tasks are
    // stale.
    let g = edited("healthy_before_update", |raw| {
        raw.service["Spec"]["TaskTemplate"]["Placement"] = placement.clone();
        raw.service["Spec"]["TaskTemplate"]["ContainerSpec"]["Args"] =
            serde_json::json!(["sleep", "600"]);
    });
    assert!(
        g.tasks
            .iter()
            .all(|t| !rollout_watcher::assess::on_current_spec(&g.service.service, t))
    );
}

const NEW_TASK: &str = "6x4u8sbc6zbe344uct1frd898";
const NO_NODE: &str = "no suitable node (scheduling constraints not satisfied on 1 node)";

/// The update in progress, with its new task pending: the scheduler cannot place it.
fn unschedulable_update() -> Fixture {
    edited("updating", |raw| {
        let t = task_mut(raw, NEW_TASK);
        t["Status"] = serde_json::json!({
            "Timestamp": "2026-11-23T02:08:50.9Z",
            "State": "pending",
            "Message": "pending task scheduling",
            "Err": NO_NODE,
            "PortStatus": {}
        });
    })
}

#[test]
fn a_pending_task_says_why_and_fails_after_the_grace() {
    let before = fixture("healthy_before_update");
    let f = unschedulable_update();
    let tracker = || {
        Tracker::new(
            Some(ServiceBefore::of(&before.service.service)),
            ids(&before.tasks),
            Rules::default(),
        )
    };
    let s = &f.service.service;
    let mut t = tracker();
    let (p, _) = t.observe(s, &f.tasks, Duration::from_secs(2));
    assert_eq!(p, Phase::Pending(format!("updating; pending: {NO_NODE}")));
    assert_pending(&t.observe(s, &f.tasks, Duration::from_secs(31)).0);
    let (p, _) = t.observe(s, &f.tasks, Duration::from_secs(32));
    assert_failed(&p, &format!("pending: {NO_NODE}"));
    assert_failed(&p, "for 30s");
    // Placed in between: the grace starts over.
    let placed = fixture("updating");
    let mut t = tracker();
    t.observe(s, &f.tasks, Duration::from_secs(2));
    assert_eq!(
        t.observe(s, &placed.tasks, Duration::from_secs(20)).0,
        Phase::Pending("updating".into())
    );
    assert_pending(&t.observe(s, &f.tasks, Duration::from_secs(33)).0);
    assert_failed(&t.observe(s, &f.tasks, Duration::from_secs(63)).0, NO_NODE);
    // A task pending since before the deploy is not this deploy's failure; it still says why.
    let mut t = Tracker::new(
        Some(ServiceBefore::of(&before.service.service)),
        ids(&f.tasks),
        Rules::default(),
    );
    t.observe(s, &f.tasks, Duration::from_secs(2));
    let (p, _) = t.observe(s, &f.tasks, Duration::from_secs(100));
    assert_eq!(p, Phase::Pending(format!("updating; pending: {NO_NODE}")));
}

#[test]
fn a_first_deploy_short_of_resources_says_so_while_it_waits() {
    let why = "no suitable node (insufficient resources on 1 node)";
    let f = edited("crash_loop_first_deploy", |raw| {
        raw.tasks
            .as_array_mut()
            .unwrap()
            .retain(|t| t["Status"]["State"] != "failed");
        let t = &mut raw.tasks[0];
        t["DesiredState"] = "running".into();
        t["Status"]["State"] = "pending".into();
        t["Status"]["Err"] = why.into();
    });
    let mut t = Tracker::new(None, BTreeSet::new(), Rules::default());
    let (p, _) = t.observe(&f.service.service, &f.tasks, Duration::from_secs(1));
    assert_eq!(
        p,
        Phase::Pending(format!("0/1 tasks healthy; pending: {why}"))
    );
    assert_eq!(unschedulable(&f.tasks[0]), Some(format!("pending: {why}")));
    // A pending task without a scheduler error is only waiting.
    let mut waiting = f.tasks[0].clone();
    waiting.status.as_mut().unwrap().err = None;
    assert_eq!(unschedulable(&waiting), None);
}
