//! The rollout-watcher command line end to end, against a fake `docker` on PATH that answers
//! with the service/task JSON recorded from a real swarm (tests/fixtures/record.sh).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// A directory holding `docker`: a shell script that answers from the state directory named by
/// `FAKE_DOCKER_STATE` (`services.json`, `tasks.json` and
/// its `task-ids`, `configs.txt`, `secrets.txt`, a container's `health.json`; the services are
/// listed from the `appears-on`th `service ls` on) and logs
/// every call to `calls.log` there. Written once, before any test runs a program (a script
/// still open for writing in a forked child cannot be run).
fn fake_docker_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("docker");
        std::fs::write(
            &script,
            r#"#!/bin/sh
d="$FAKE_DOCKER_STATE"
echo "$*" >>"$d/calls.log"
case "$1 $2" in
"service ls")
    n=$(($(cat "$d/ls-count" 2>/dev/null || echo 0) + 1)); echo $n >"$d/ls-count"
    if [ -s "$d/services.json" ] && [ $n -ge "$(cat "$d/appears-on" 2>/dev/null || echo 0)" ]; then echo svc1; fi ;;
"service inspect") cat "$d/services.json" ;;
"service ps") cat "$d/task-ids" ;;
"inspect --type") if [ "$3" = task ]; then cat "$d/tasks.json"; elif [ -s "$d/health.json" ]; then cat "$d/health.json"; else echo 'Error: No such container' >&2; exit 1; fi ;;
"service logs") echo "log of $7: the last line" ;;
"config ls" | "secret ls") cat "$d/$1s.txt" ;;
"config rm" | "secret rm")
    if grep -qx "$3" "$d/in-use.txt" 2>/dev/null; then echo "Error: $1 $3 is in use" >&2; exit 1; fi
    echo "$3" ;;
*) echo "fake docker: unexpected call: $*" >&2; exit 9 ;;
esac
"#,
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        dir
    })
    .path()
}

fn raw_fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// `global_running` (a service the deploy creates) with an update monitor of `ms`: a new
/// service is confirmed once its tasks kept running that long.
fn global_running_with_monitor(ms: u64) -> Value {
    let mut raw = raw_fixture("global_running");
    raw["service"]["Spec"]["UpdateConfig"]["Monitor"] = (ms * 1_000_000).into();
    raw
}

/// One swarm, as the fake docker shows it.
struct Swarm {
    state: tempfile::TempDir,
}

impl Swarm {
    fn new() -> Self {
        let swarm = Self {
            state: tempfile::tempdir().unwrap(),
        };
        swarm.set(None);
        std::fs::write(swarm.path("configs.txt"), "").unwrap();
        std::fs::write(swarm.path("secrets.txt"), "").unwrap();
        swarm
    }

    fn path(&self, name: &str) -> PathBuf {
        self.state.path().join(name)
    }

    /// The stack's one service and its tasks as in a recorded fixture (None: no stack).
    fn set(&self, fixture: Option<Value>) {
        let (services, tasks) = match fixture {
            Some(f) => (format!("[{}]", f["service"]), f["tasks"].clone()),
            None => (String::new(), serde_json::json!([])),
        };
        let ids: String = tasks
            .as_array()
            .unwrap()
            .iter()
            .map(|t| format!("{}\n", t["ID"].as_str().unwrap()))
            .collect();
        std::fs::write(self.path("services.json"), services).unwrap();
        std::fs::write(self.path("tasks.json"), tasks.to_string()).unwrap();
        std::fs::write(self.path("task-ids"), ids).unwrap();
    }

    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let path = format!(
            "{}:{}",
            fake_docker_dir().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Command::new(env!("CARGO_BIN_EXE_rollout-watcher"))
            .args(args)
            .env("PATH", path)
            .env("FAKE_DOCKER_STATE", self.state.path())
            .env_remove("CI_COMMIT_SHA")
            .env_remove("CI_PIPELINE_URL")
            .envs(env.iter().copied())
            .output()
            .unwrap()
    }

    /// `snapshot STACK -o FILE` of the swarm as it is now; the file's path.
    fn snapshot(&self, stack: &str) -> PathBuf {
        let file = self.path("snapshot.json");
        let out = self.run(&["snapshot", stack, "-o", file.to_str().unwrap()], &[]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        file
    }

    fn calls(&self) -> String {
        std::fs::read_to_string(self.path("calls.log")).unwrap_or_default()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `watch STACK --snapshot SNAP --poll-ms 100 ARGS...`, with `--timeout 5` unless ARGS
/// give one (each fixture settles at once: a watch that does not has failed the test).
fn watch(swarm: &Swarm, stack: &str, snap: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut all = vec!["watch", stack, "--snapshot", snap.to_str().unwrap()];
    all.extend(["--poll-ms", "100"]);
    if !args.contains(&"--timeout") {
        all.extend(["--timeout", "5"]);
    }
    all.extend(args);
    swarm.run(&all, env)
}

#[test]
fn snapshot_records_the_services_images_and_task_ids_before_the_deploy() {
    let swarm = Swarm::new();
    swarm.set(Some(raw_fixture("healthy_before_update")));
    let snap: Value =
        serde_json::from_str(&std::fs::read_to_string(swarm.snapshot("rw")).unwrap()).unwrap();
    assert_eq!(snap["stack"], "rw");
    let before = &snap["services"]["rw-fixture-roll"];
    assert_eq!(before["image"], "stackship-standin/debian:bookworm");
    let tasks: Vec<&str> = snap["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tasks.len(), 2);
    assert!(tasks.iter().all(|t| t.len() == 25), "{tasks:?}");
    assert!(
        swarm
            .calls()
            .contains("label=com.docker.stack.namespace=rw")
    );

    // Without -o the snapshot goes to stdout; a stack not deployed yet has no services.
    let empty = Swarm::new();
    let out = empty.run(&["snapshot", "new-stack"], &[]);
    assert_eq!(out.status.code(), Some(0));
    let snap: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(snap["stack"], "new-stack");
    assert_eq!(snap["services"], serde_json::json!({}));
}

/// A recorded fixture with its service named `rw_roll`, as `docker stack deploy` names the
/// service `roll` of the stack `rw`.
fn in_stack_rw(name: &str) -> Value {
    let mut f = raw_fixture(name);
    f["service"]["Spec"]["Name"] = "rw_roll".into();
    f
}

#[test]
fn a_completed_update_exits_0_with_a_report_and_a_deploy_record() {
    let swarm = Swarm::new();
    swarm.set(Some(in_stack_rw("healthy_before_update")));
    let snap = swarm.snapshot("rw");
    swarm.set(Some(in_stack_rw("update_completed")));
    let report = swarm.path("report.json");
    let history = swarm.path("history");
    let out = watch(
        &swarm,
        "rw",
        &snap,
        &[
            "--json",
            report.to_str().unwrap(),
            "--record",
            history.to_str().unwrap(),
        ],
        &[("CI_COMMIT_SHA", "0123abcd"), ("CI_PIPELINE_URL", "")],
    );
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    // The summary and the progress name the service without its stack, the image without
    // its registry.
    assert!(
        stdout.starts_with("roll: ok debian:bookworm (updated) 2/2 healthy in "),
        "{stdout}"
    );
    assert!(
        stderr.contains("s roll: ok (updated) — 2/2 on new spec, 2 healthy, 0 old, 0 failed\n"),
        "{stderr}"
    );

    let report: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["stack"], "rw");
    let roll = &report["services"][0];
    assert_eq!(roll["service"], "roll");
    assert_eq!(roll["result"], "ok");
    // Swarm's message ("update completed") is only worth a report line when the update failed.
    assert!(roll["update_message"].is_null(), "{roll}");
    // What Swarm needed: the two new tasks took 1.675 s and 1.562 s from creation to running
    // (1.6187 s on average), one at a time, then the 3 s monitor window.
    let floor = roll["floor_seconds"].as_f64().unwrap();
    assert!(
        (floor - (2.0 * 1.618_700_928 + 3.0)).abs() < 1e-6,
        "{floor}"
    );

    let records: Vec<_> = std::fs::read_dir(&history)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(records.len(), 1, "{records:?}");
    let record: Value =
        serde_json::from_str(&std::fs::read_to_string(&records[0]).unwrap()).unwrap();
    assert_eq!(record["stack"], "rw");
    assert_eq!(record["commit"], "0123abcd");
    // An empty variable is no pipeline.
    assert!(record.get("pipeline").is_none(), "{record}");
    assert_eq!(
        record["services"]["roll"]["image"],
        "stackship-standin/debian:bookworm"
    );
}

#[test]
fn services_that_appear_after_the_first_sample_are_waited_for() {
    let swarm = Swarm::new();
    let snap = swarm.snapshot("rw");
    swarm.set(Some(global_running_with_monitor(100)));
    // The first two samples of the watch find no service yet.
    std::fs::write(swarm.path("appears-on"), "4").unwrap();
    let out = watch(&swarm, "rw", &snap, &[], &[]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.starts_with("rw-fixture-global: ok "), "{stdout}");
}

#[test]
fn a_rolled_back_update_exits_1_names_the_failed_task_and_is_not_recorded() {
    let swarm = Swarm::new();
    swarm.set(Some(raw_fixture("healthy_before_update")));
    let snap = swarm.snapshot("rw");
    swarm.set(Some(raw_fixture("rollback_completed")));
    std::fs::write(
        swarm.path("health.json"),
        r#"{"Status":"unhealthy","Log":[{"ExitCode":1,"Output":"old"},{"ExitCode":7,"Output":"curl: (7) connection refused\n"}]}"#,
    )
    .unwrap();
    let history = swarm.path("history");
    let json = swarm.path("report.json");
    let out = watch(
        &swarm,
        "rw",
        &snap,
        &[
            "--record",
            history.to_str().unwrap(),
            "--json",
            json.to_str().unwrap(),
        ],
        &[],
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert!(stdout.starts_with("rw-fixture-roll: FAILED "), "{stdout}");
    assert!(
        stdout.contains("--- rw-fixture-roll failed: rolled back"),
        "{stdout}"
    );
    assert!(
        stdout.contains("    swarm: rollback completed\n"),
        "{stdout}"
    );
    assert!(stdout.contains("    task:  jvg2wz"), "{stdout}");
    // The evidence: its last healthcheck and the end of its log.
    assert!(
        stdout.contains("    last healthcheck: curl: (7) connection refused (exit 7)\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("    last log lines:\n      log of jvg2wz"),
        "{stdout}"
    );
    assert!(!history.exists(), "a failed deploy was recorded");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["ok"], false);
    let roll = &report["services"][0];
    assert_eq!(roll["result"], "failed");
    assert_eq!(roll["update_message"], "rollback completed");
    // No update went through: there is no floor to compare with.
    assert!(roll["floor_seconds"].is_null(), "{roll}");
}

#[test]
fn max_task_failures_sets_how_many_failed_tasks_fail_a_first_deploy() {
    // A new service whose first task failed once and whose second is starting.
    let mut fixture = raw_fixture("crash_loop_first_deploy");
    let tasks = fixture["tasks"].as_array_mut().unwrap();
    let first_failed = tasks
        .iter()
        .position(|t| t["Status"]["State"] == "failed")
        .unwrap();
    let kept = [tasks[0].clone(), tasks[first_failed].clone()];
    *tasks = kept.to_vec();
    let swarm = Swarm::new();
    let snap = swarm.snapshot("rw");
    swarm.set(Some(fixture));
    let out = watch(
        &swarm,
        "rw",
        &snap,
        &["--max-task-failures", "1", "--timeout", "5"],
        &[],
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("FAILED"), "{stdout}");
    assert!(!stdout.contains("not settled"), "{stdout}");
}

#[test]
fn a_new_service_is_confirmed_once_it_kept_running_for_its_update_monitor() {
    let swarm = Swarm::new();
    let snap = swarm.snapshot("rw");
    swarm.set(Some(global_running_with_monitor(300)));
    let json = swarm.path("report.json");
    let out = watch(
        &swarm,
        "rw",
        &snap,
        &["--json", json.to_str().unwrap()],
        &[],
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.starts_with("rw-fixture-global: ok "), "{stdout}");
    // A new service's image is new: the report has the floor of its rollout.
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(report["services"][0]["floor_seconds"].as_f64().unwrap() > 0.0);
    // Samples 100 ms apart (--poll-ms) until the tasks had run for the 300 ms monitor: more
    // than the two a poll apart that confirm a service that ran before, not a second's worth.
    let samples = swarm.calls().matches("service ls").count() - 1;
    assert!((3..=5).contains(&samples), "{}", swarm.calls());
    let seconds = report["services"][0]["seconds"].as_f64().unwrap();
    assert!((0.3..1.0).contains(&seconds), "{seconds}");
}

#[test]
fn a_watch_that_cannot_start_exits_2_with_the_reason() {
    let swarm = Swarm::new();
    let missing = swarm.path("missing.json");
    let out = watch(&swarm, "rw", &missing, &[], &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("rollout-watcher: error: cannot read the snapshot"),
        "{stderr}"
    );

    let snap = swarm.snapshot("other-stack");
    let out = watch(&swarm, "rw", &snap, &[], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("is of stack other-stack, not rw"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn prune_removes_what_no_spec_or_recent_record_uses_and_exits_1_when_a_removal_fails() {
    let swarm = Swarm::new();
    let mut fixture = raw_fixture("update_completed");
    fixture["service"]["Spec"]["TaskTemplate"]["ContainerSpec"]["Configs"] = serde_json::json!([{"ConfigID": "c1", "ConfigName": "rw_app-aaa", "File": {"Name": "/app.toml", "UID": "0", "GID": "0", "Mode": 292}}]);
    swarm.set(Some(fixture));
    std::fs::write(
        swarm.path("configs.txt"),
        "{\"ID\":\"c1\",\"Name\":\"rw_app-aaa\"}\n{\"ID\":\"c2\",\"Name\":\"rw_app-old\"}\n{\"ID\":\"c3\",\"Name\":\"rw_app-older\"}\n",
    )
    .unwrap();
    std::fs::write(
        swarm.path("secrets.txt"),
        "{\"ID\":\"s1\",\"Name\":\"rw_db-old\"}\n",
    )
    .unwrap();
    let history = swarm.path("history");
    std::fs::create_dir(&history).unwrap();
    std::fs::write(
        history.join("20261123T000000Z.json"),
        r#"{"id":"20261123T000000Z","stack":"rw","services":{"app":{"image":"x","configs":["rw_app-old"],"secrets":[]}}}"#,
    )
    .unwrap();
    let history = history.to_str().unwrap();

    let out = swarm.run(&["prune", "rw", "--history", history, "--dry-run"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "would remove config rw_app-older\nwould remove secret rw_db-old\n"
    );
    assert!(!swarm.calls().contains(" rm "), "{}", swarm.calls());

    // With --keep 0 the record keeps nothing; a secret still in use is reported, exit 1.
    std::fs::write(swarm.path("in-use.txt"), "s1\n").unwrap();
    let out = swarm.run(&["prune", "rw", "--history", history, "--keep", "0"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "removed config rw_app-old\nremoved config rw_app-older\n"
    );
    assert!(
        text(&out.stderr).contains("could not remove secret rw_db-old"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn an_unsettled_service_fails_at_the_timeout() {
    let swarm = Swarm::new();
    swarm.set(Some(raw_fixture("healthy_before_update")));
    let snap = swarm.snapshot("rw");
    swarm.set(Some(raw_fixture("updating")));
    let started = Instant::now();
    let out = watch(&swarm, "rw", &snap, &["--timeout", "1"], &[]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("not settled within 1s (updating)"),
        "{stdout}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
}
