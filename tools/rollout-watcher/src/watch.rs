//! The watch loop: samples the stack through [`crate::docker`], judges each service with
//! [`crate::assess::Tracker`], prints one progress line per change, and ends with a report.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context;
use bollard::models::{Service, Task, TaskState};
use serde::{Deserialize, Serialize};

use crate::assess::{self, Counts, Phase, Rules, ServiceBefore, Tracker};
use crate::budget;
use crate::docker::{self, ServiceInspect};

/// The stack just before the deploy.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub stack: String,
    /// Service name to its update status and image before the deploy.
    pub services: BTreeMap<String, Before>,
    /// Every task ID of the stack before the deploy.
    pub tasks: BTreeSet<String>,
}

/// One service before the deploy.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Before {
    #[serde(flatten)]
    pub update: ServiceBefore,
    pub image: String,
}

fn image_of(service: &ServiceInspect) -> String {
    service
        .service
        .spec
        .as_ref()
        .and_then(|s| s.task_template.as_ref())
        .and_then(|t| t.container_spec.as_ref())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

/// Takes the snapshot of `stack` (empty when the stack does not exist yet).
pub fn snapshot(stack: &str) -> anyhow::Result<Snapshot> {
    let mut snap = Snapshot {
        stack: stack.to_owned(),
        ..Default::default()
    };
    for service in docker::stack_services(stack)? {
        let name = service.name().to_owned();
        for task in docker::service_tasks(&name)? {
            snap.tasks.extend(task.id);
        }
        snap.services.insert(
            name,
            Before {
                update: ServiceBefore::of(&service.service),
                image: image_of(&service),
            },
        );
    }
    Ok(snap)
}

/// Settings of a watch.
#[derive(Debug, Clone)]
pub struct Options {
    /// Overrides the budget derived from the services' own settings.
    pub timeout: Option<Duration>,
    pub poll: Duration,
    pub rules: Rules,
    /// Log lines of a failed task to show.
    pub log_lines: usize,
}

/// How one service ended.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceResult {
    pub service: String,
    /// `ok` or `failed`.
    pub result: String,
    /// What happened, e.g. "updated", "unchanged, running", "rolled back: ...".
    pub detail: String,
    pub old_image: String,
    /// The image the deploy asked for.
    pub new_image: String,
    /// The image the service runs at the end (the old one after a rollback).
    pub final_image: String,
    pub counts: Counts,
    /// Swarm's `UpdateStatus.Message`.
    pub update_message: Option<String>,
    /// The task that explains the failure: the one Swarm's message blames, else a guess (the
    /// last failed task since the deploy, see [`assess::problem_task`]).
    pub task_id: Option<String>,
    /// That task's error as Swarm reported it (when it was last seen).
    pub task_error: Option<String>,
    /// Its container's exit code, once it ended.
    pub exit_code: Option<i64>,
    /// The last lines of that task's log.
    pub log_tail: Option<String>,
    /// That task's last healthcheck output, when it never turned healthy.
    pub health_output: Option<String>,
    /// Seconds from the start of the watch until the service settled.
    pub seconds: f64,
    /// For an update: what Swarm itself needs by the service's settings (each new task's
    /// start to first passing healthcheck, the delays between batches, the monitor window).
    pub floor_seconds: Option<f64>,
}

/// The outcome of a watch.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub stack: String,
    pub ok: bool,
    pub seconds: f64,
    pub services: Vec<ServiceResult>,
}

struct Followed {
    tracker: Tracker,
    budget: Duration,
    last_line: String,
    phase: Phase,
    counts: Counts,
    settled_at: Option<Duration>,
    new_image: String,
    tasks: Vec<Task>,
    service: ServiceInspect,
    /// Every distinct `UpdateStatus.Message` seen, in order (Swarm overwrites the telling
    /// "rolled back due to failure of task X" with "rollback completed").
    messages: Vec<String>,
}

/// What was seen of one new task. Its container is removed once Swarm replaces it (and the
/// task itself leaves Swarm's history), so this is kept for the report.
#[derive(Debug, Clone, Default, PartialEq)]
struct Evidence {
    state: String,
    /// [`assess::task_error`] when it was seen.
    error: String,
    exit_code: Option<i64>,
    health: Option<String>,
    log_tail: Option<String>,
}

/// Where a task's logs and healthcheck output come from: the docker CLI, a fake in tests.
trait Probe {
    fn log_tail(&self, task_id: &str, lines: usize) -> String;
    fn health_output(&self, container_id: &str) -> Option<String>;
}

struct DockerProbe;

impl Probe for DockerProbe {
    fn log_tail(&self, task_id: &str, lines: usize) -> String {
        docker::task_log_tail(task_id, lines)
    }
    fn health_output(&self, container_id: &str) -> Option<String> {
        docker::container_health_output(container_id)
    }
}

/// A log tail worth showing (not empty, not "(no logs: ...)").
fn useful_log(tail: String) -> Option<String> {
    (!tail.trim().is_empty() && !tail.starts_with("(no logs")).then_some(tail)
}

fn container_of(task: &Task) -> Option<&str> {
    task.status
        .as_ref()
        .and_then(|s| s.container_status.as_ref())
        .and_then(|c| c.container_id.as_deref())
        .filter(|id| !id.is_empty())
}

/// States a task does not leave: what it shows then is final.
fn has_ended(task: &Task) -> bool {
    matches!(
        task.status.as_ref().and_then(|s| s.state),
        Some(
            TaskState::FAILED
                | TaskState::REJECTED
                | TaskState::COMPLETE
                | TaskState::SHUTDOWN
                | TaskState::ORPHANED
                | TaskState::REMOVE
        )
    )
}

/// The exit code of a task's container, once it ended.
fn exit_code_of(task: &Task) -> Option<i64> {
    container_of(task)?;
    has_ended(task)
        .then(|| task.status.as_ref()?.container_status.as_ref()?.exit_code)
        .flatten()
}

/// What was seen of new tasks, by task ID.
#[derive(Default)]
struct Seen {
    evidence: BTreeMap<String, Evidence>,
    last_fetch: BTreeMap<String, Instant>,
    /// Tasks whose final state is captured.
    ended: BTreeSet<String>,
}

impl Seen {
    /// Captures the evidence of new tasks: once when first seen ended (failed, rejected,
    /// complete, shutdown), and at most every 3 s while starting (not healthy yet). A fetch
    /// that finds nothing (the container is gone) keeps what an earlier one found.
    fn remember(
        &mut self,
        tasks: &[Task],
        before: &BTreeSet<String>,
        lines: usize,
        probe: &dyn Probe,
    ) {
        for task in tasks {
            let Some(id) = task.id.as_deref() else {
                continue;
            };
            if before.contains(id) {
                continue;
            }
            let state = task.status.as_ref().and_then(|s| s.state);
            if has_ended(task) {
                if !self.ended.insert(id.to_owned()) {
                    continue;
                }
            } else if state == Some(TaskState::STARTING) {
                if self
                    .last_fetch
                    .get(id)
                    .is_some_and(|t| t.elapsed() < Duration::from_secs(3))
                {
                    continue;
                }
                self.last_fetch.insert(id.to_owned(), Instant::now());
            } else {
                continue;
            }
            let evidence = self.evidence.entry(id.to_owned()).or_default();
            evidence.state = state.map(|s| s.to_string()).unwrap_or_default();
            evidence.error = assess::task_error(task);
            evidence.exit_code = exit_code_of(task);
            // No container, no logs nor healthcheck (rejected, or stopped before it started).
            let Some(container) = container_of(task) else {
                continue;
            };
            if let Some(tail) = useful_log(probe.log_tail(id, lines)) {
                evidence.log_tail = Some(tail);
            }
            if let Some(output) = probe.health_output(container) {
                evidence.health = Some(output);
            }
        }
    }
}

/// What the report shows of the task that explains a failure.
#[derive(Debug, Default, PartialEq)]
struct Problem {
    task_id: String,
    task_error: Option<String>,
    exit_code: Option<i64>,
    log_tail: Option<String>,
    health_output: Option<String>,
}

/// The task that explains a failure (see [`assess::problem_task_id`]) and its evidence: from
/// the task as Swarm shows it now when it is still there, else from what was seen of it.
fn problem(
    service: &Service,
    tasks: &[Task],
    before: &BTreeSet<String>,
    messages: &[String],
    seen: &Seen,
    probe: &dyn Probe,
    lines: usize,
) -> Option<Problem> {
    let id = assess::problem_task_id(service, tasks, before, messages)?;
    let task = tasks.iter().find(|t| t.id.as_deref() == Some(id.as_str()));
    let kept = seen.evidence.get(&id);
    let container = task.and_then(container_of);
    let live = container.map(|_| probe.log_tail(&id, lines));
    let kept_log = kept.and_then(|e| e.log_tail.clone());
    // Nothing now and nothing kept: the live answer says why ("(no logs: ...)").
    let log_tail = match live.clone().and_then(useful_log) {
        Some(tail) => Some(tail),
        None => kept_log.or(live.filter(|l| !l.trim().is_empty())),
    };
    let health_output = kept
        .and_then(|e| e.health.clone())
        .or_else(|| container.and_then(|c| probe.health_output(c)));
    let task_error = task
        .map(assess::task_error)
        .or_else(|| kept.map(|e| e.error.clone()))
        .map(|e| match &health_output {
            // Swarm stopped a task that never turned healthy; it exited 0 on the signal.
            Some(_) if e.ends_with(assess::EXITED_0) => e.replace(
                assess::EXITED_0,
                "stopped by Swarm after failing its healthcheck (it exited 0 on the stop signal)",
            ),
            _ => e,
        });
    Some(Problem {
        task_error,
        exit_code: task
            .and_then(exit_code_of)
            .or_else(|| kept.and_then(|e| e.exit_code)),
        log_tail,
        health_output,
        task_id: id,
    })
}

/// `repo/name:tag@sha256:...` shown as `name:tag`.
pub fn short_image(image: &str) -> String {
    let no_digest = image.split('@').next().unwrap_or(image);
    no_digest.rsplit('/').next().unwrap_or(no_digest).to_owned()
}

/// A service name without its stack prefix.
fn short_name<'a>(stack: &str, name: &'a str) -> &'a str {
    name.strip_prefix(stack)
        .and_then(|n| n.strip_prefix('_'))
        .unwrap_or(name)
}

fn progress_line(name: &str, phase: &Phase, c: &Counts) -> String {
    let what = match phase {
        Phase::Pending(w) => w.clone(),
        Phase::Ok(w) => format!("ok ({w})"),
        Phase::Failed(w) => format!("FAILED ({w})"),
    };
    format!(
        "{name}: {what} — {}/{} on new spec, {} healthy, {} old, {} failed",
        c.on_new_spec, c.wanted, c.healthy, c.stale, c.failed
    )
}

/// The measured floor of an update: new tasks' start-to-healthy times, plus delays and monitor.
fn measured_floor(
    service: &ServiceInspect,
    tasks: &[Task],
    before: &BTreeSet<String>,
) -> Option<f64> {
    let mut starts: Vec<Duration> = tasks
        .iter()
        .filter(|t| t.id.as_ref().is_some_and(|id| !before.contains(id)))
        .filter(|t| t.desired_state == Some(TaskState::RUNNING))
        .filter(|t| assess::on_current_spec(&service.service, t))
        .filter_map(|t| {
            let status = t.status.as_ref()?;
            if status.state != Some(TaskState::RUNNING) {
                return None;
            }
            let running = status.timestamp?;
            let created = t.created_at?;
            (running - created).to_std().ok()
        })
        .collect();
    if starts.is_empty() {
        return None;
    }
    starts.sort();
    let first_healthy = starts.iter().sum::<Duration>() / starts.len() as u32;
    Some(budget::rollout_floor(&service.service, starts.len() as u64, first_healthy).as_secs_f64())
}

/// Follows `snapshot.stack` until every service settled or the budget ran out. Progress goes
/// to `progress`; the verdict is in the report.
pub fn watch(
    snapshot: &Snapshot,
    options: &Options,
    progress: &mut dyn Write,
) -> anyhow::Result<Report> {
    watch_with(
        snapshot,
        options,
        progress,
        &mut |_: &Sample<'_>, _: &mut dyn Write| {},
    )
}

/// One service as a poll of [`watch_with`] found it (not yet settled).
pub struct Sample<'a> {
    /// The Swarm service's name, `<stack>_<service>`.
    pub name: &'a str,
    pub service: &'a Service,
    /// Its tasks, running and past.
    pub tasks: &'a [Task],
}

/// [`watch`], calling `on_sample` with every service not yet settled at each poll (after its
/// progress line), e.g. to judge a canary and roll the service back; what it writes goes to
/// `progress`.
pub fn watch_with(
    snapshot: &Snapshot,
    options: &Options,
    progress: &mut dyn Write,
    on_sample: &mut dyn FnMut(&Sample<'_>, &mut dyn Write),
) -> anyhow::Result<Report> {
    let stack = snapshot.stack.as_str();
    let start = Instant::now();
    let mut followed: BTreeMap<String, Followed> = BTreeMap::new();
    let mut seen = Seen::default();
    let mut deadline = options.timeout.unwrap_or(budget::MARGIN);
    loop {
        let elapsed = start.elapsed();
        let services = docker::stack_services(stack)?;
        if services.is_empty() && elapsed > Duration::from_secs(30) {
            anyhow::bail!("stack {stack} has no services");
        }
        for service in services {
            let name = service.name().to_owned();
            if followed.get(&name).is_some_and(|f| f.settled_at.is_some()) {
                continue;
            }
            let tasks = docker::service_tasks(&name)
                .with_context(|| format!("cannot list the tasks of {name}"))?;
            let entry = followed.entry(name.clone()).or_insert_with(|| {
                let before = snapshot.services.get(&name).map(|b| b.update.clone());
                let c = assess::counts(&service.service, &tasks, &snapshot.tasks);
                let budget = budget::rollout_budget(&service.service, c.wanted.max(1));
                Followed {
                    tracker: Tracker::new(before, snapshot.tasks.clone(), options.rules),
                    budget,
                    last_line: String::new(),
                    phase: Phase::Pending("starting".into()),
                    counts: c,
                    settled_at: None,
                    new_image: image_of(&service),
                    tasks: Vec::new(),
                    service: service.clone(),
                    messages: Vec::new(),
                }
            });
            seen.remember(&tasks, &snapshot.tasks, options.log_lines, &DockerProbe);
            if let Some(m) = service
                .service
                .update_status
                .as_ref()
                .and_then(|s| s.message.clone())
                .filter(|m| !m.is_empty())
                && entry.messages.last() != Some(&m)
            {
                entry.messages.push(m);
            }
            if options.timeout.is_none() {
                deadline = deadline.max(entry.budget);
            }
            let (phase, counts) = entry.tracker.observe(&service.service, &tasks, elapsed);
            let line = progress_line(short_name(stack, &name), &phase, &counts);
            if line != entry.last_line {
                writeln!(progress, "{:>5.1}s {line}", elapsed.as_secs_f64())?;
                entry.last_line = line;
            }
            if phase.is_settled() {
                entry.settled_at = Some(elapsed);
            } else {
                on_sample(
                    &Sample {
                        name: &name,
                        service: &service.service,
                        tasks: &tasks,
                    },
                    progress,
                );
            }
            entry.phase = phase;
            entry.counts = counts;
            entry.tasks = tasks;
            entry.service = service;
        }
        let pending = followed.values().filter(|f| f.settled_at.is_none()).count();
        if pending == 0 && !followed.is_empty() {
            break;
        }
        if start.elapsed() >= deadline {
            for f in followed.values_mut().filter(|f| f.settled_at.is_none()) {
                let why = match &f.phase {
                    Phase::Pending(w) => w.clone(),
                    _ => String::new(),
                };
                f.phase = Phase::Failed(format!(
                    "not settled within {}s ({why})",
                    deadline.as_secs()
                ));
                f.settled_at = Some(start.elapsed());
            }
            break;
        }
        std::thread::sleep(options.poll);
    }
    let mut results = Vec::new();
    for (name, f) in &followed {
        let failed = matches!(f.phase, Phase::Failed(_));
        let detail = match &f.phase {
            Phase::Ok(w) | Phase::Failed(w) | Phase::Pending(w) => w.clone(),
        };
        let problem = if failed {
            problem(
                &f.service.service,
                &f.tasks,
                &snapshot.tasks,
                &f.messages,
                &seen,
                &DockerProbe,
                options.log_lines,
            )
        } else {
            None
        }
        .unwrap_or_default();
        let task_id = Some(problem.task_id).filter(|id| !id.is_empty());
        let old_image = snapshot
            .services
            .get(name)
            .map(|b| b.image.clone())
            .unwrap_or_default();
        let updated = !failed && old_image != f.new_image;
        results.push(ServiceResult {
            service: short_name(stack, name).to_owned(),
            result: if failed { "failed" } else { "ok" }.into(),
            detail,
            old_image,
            new_image: f.new_image.clone(),
            final_image: image_of(&f.service),
            counts: f.counts,
            update_message: (failed && !f.messages.is_empty()).then(|| f.messages.join(" -> ")),
            task_id,
            task_error: problem.task_error,
            exit_code: problem.exit_code,
            log_tail: problem.log_tail,
            health_output: problem.health_output,
            seconds: f.settled_at.unwrap_or_default().as_secs_f64(),
            floor_seconds: if updated || f.detail_is_update() {
                measured_floor(&f.service, &f.tasks, &snapshot.tasks)
            } else {
                None
            },
        });
    }
    Ok(Report {
        stack: stack.to_owned(),
        ok: results.iter().all(|r| r.result == "ok"),
        seconds: start.elapsed().as_secs_f64(),
        services: results,
    })
}

impl Followed {
    fn detail_is_update(&self) -> bool {
        matches!(&self.phase, Phase::Ok(w) if w == "updated")
    }
}

/// The human summary: one line per service, then the details of each failure.
pub fn summary(report: &Report) -> String {
    let mut out = String::new();
    for r in &report.services {
        let images = if r.old_image.is_empty() || r.old_image == r.new_image {
            short_image(&r.new_image)
        } else {
            format!(
                "{} -> {}",
                short_image(&r.old_image),
                short_image(&r.new_image)
            )
        };
        out.push_str(&format!(
            "{}: {} {} ({}) {}/{} healthy in {:.0}s\n",
            r.service,
            if r.result == "ok" { "ok" } else { "FAILED" },
            images,
            r.detail,
            r.counts.healthy,
            r.counts.wanted,
            r.seconds
        ));
    }
    for r in report.services.iter().filter(|r| r.result != "ok") {
        out.push_str(&format!("--- {} failed: {}\n", r.service, r.detail));
        if let Some(m) = &r.update_message {
            out.push_str(&format!("    swarm: {m}\n"));
        }
        if let Some(id) = &r.task_id {
            let error = r.task_error.as_deref().unwrap_or("(not seen)");
            let code = r
                .exit_code
                .filter(|c| !error.contains(&format!("exit ({c})")))
                .map(|c| format!(" (exit code {c})"))
                .unwrap_or_default();
            out.push_str(&format!("    task:  {id}: {error}{code}\n"));
        }
        if let Some(h) = &r.health_output {
            out.push_str(&format!("    last healthcheck: {h}\n"));
        }
        if let Some(l) = &r.log_tail {
            out.push_str("    last log lines:\n");
            for line in l.lines() {
                out.push_str(&format!("      {line}\n"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Logs and healthcheck output by task and container ID; it records what was asked.
    #[derive(Default)]
    struct FakeProbe {
        logs: BTreeMap<String, String>,
        health: BTreeMap<String, String>,
        asked: RefCell<Vec<String>>,
    }

    impl Probe for FakeProbe {
        fn log_tail(&self, task_id: &str, _lines: usize) -> String {
            self.asked.borrow_mut().push(format!("logs {task_id}"));
            self.logs
                .get(task_id)
                .cloned()
                .unwrap_or_else(|| "(no logs: no such task)".into())
        }
        fn health_output(&self, container_id: &str) -> Option<String> {
            self.asked
                .borrow_mut()
                .push(format!("health {container_id}"));
            self.health.get(container_id).cloned()
        }
    }

    /// A recorded fixture as JSON: `{"service": ..., "tasks": [...]}`.
    fn raw(name: &str) -> serde_json::Value {
        let path = format!("{}/tests/fixtures/{name}.json", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn parsed(raw: &serde_json::Value) -> (ServiceInspect, Vec<Task>) {
        let service = docker::parse_services(&format!("[{}]", raw["service"]))
            .unwrap()
            .remove(0);
        (
            service,
            docker::parse_tasks(&raw["tasks"].to_string()).unwrap(),
        )
    }

    const CULPRIT: &str = "jvg2wzhcnva4toub9t941x1dv";
    const CULPRIT_CONTAINER: &str =
        "9a0c0d2c7a2b0f7d6d6c3d1b0f0e7c5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e";

    fn culprit_probe() -> FakeProbe {
        FakeProbe {
            logs: [(CULPRIT.to_owned(), "waiting for the database".to_owned())].into(),
            health: [(CULPRIT_CONTAINER.to_owned(), "503 (exit 1)".to_owned())].into(),
            ..Default::default()
        }
    }

    /// rollback_started, with the culprit's container ID known to the fake probe.
    fn rollback_started() -> serde_json::Value {
        let mut raw = raw("rollback_started");
        for t in raw["tasks"].as_array_mut().unwrap() {
            if t["ID"] == CULPRIT {
                t["Status"]["ContainerStatus"]["ContainerID"] = CULPRIT_CONTAINER.into();
            }
        }
        raw
    }

    #[test]
    fn the_task_swarm_blames_is_reported_with_what_was_seen_before_it_was_replaced() {
        let before: BTreeSet<String> = ["mxwre8k6d1z2xmcagahd95d5k", "lwoj5cyaccsi1u2mf3bd81cnx"]
            .map(String::from)
            .into();
        let probe = culprit_probe();
        let mut seen = Seen::default();
        let started = rollback_started();
        let (_, tasks) = parsed(&started);
        seen.remember(&tasks, &before, 20, &probe);
        let message = started["service"]["UpdateStatus"]["Message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(message.ends_with(CULPRIT), "{message}");

        // Later: the culprit has left Swarm's task history, and a newer replacement failed
        // without ever starting (no container, no logs).
        let mut done = raw("rollback_completed");
        let list = done["tasks"].as_array_mut().unwrap();
        list.retain(|t| t["ID"] != CULPRIT);
        let mut replacement = list
            .iter()
            .find(|t| t["ID"] == "780ntm17msbt6q5dowyf0sax1")
            .unwrap()
            .clone();
        replacement["ID"] = "zz9newreplacement00000000".into();
        replacement["Status"]["State"] = "rejected".into();
        replacement["Status"]["Err"] = "No such image: x".into();
        replacement["Status"]["Timestamp"] = "2026-11-23T02:09:13Z".into();
        list.push(replacement);
        let (service, tasks) = parsed(&done);
        seen.remember(&tasks, &before, 20, &probe);
        let messages = vec![
            "update in progress".to_owned(),
            message,
            "rollback completed".to_owned(),
        ];

        let p = problem(
            &service.service,
            &tasks,
            &before,
            &messages,
            &seen,
            &probe,
            20,
        )
        .unwrap();
        assert_eq!(
            p,
            Problem {
                task_id: CULPRIT.into(),
                task_error: Some(
                    "failed: task: non-zero exit (137): dockerexec: unhealthy container".into()
                ),
                exit_code: Some(137),
                log_tail: Some("waiting for the database".into()),
                health_output: Some("503 (exit 1)".into()),
            }
        );
        // Without Swarm's word, the newest failure is the guess (the heuristic fallback).
        let guess = problem(&service.service, &tasks, &before, &[], &seen, &probe, 20).unwrap();
        assert_eq!(guess.task_id, "zz9newreplacement00000000");
        assert_eq!(
            guess.task_error.as_deref(),
            Some("rejected: No such image: x")
        );
        assert_eq!(guess.log_tail, None);
    }

    #[test]
    fn a_task_stopped_for_its_healthcheck_is_not_said_to_have_exited_by_itself() {
        let mut started = rollback_started();
        for t in started["tasks"].as_array_mut().unwrap() {
            if t["ID"] == CULPRIT {
                t["Status"]["State"] = "complete".into();
                t["Status"]["Err"] = serde_json::Value::Null;
                t["Status"]["ContainerStatus"]["ExitCode"] = 0.into();
            }
        }
        let (service, tasks) = parsed(&started);
        let messages = vec![
            started["service"]["UpdateStatus"]["Message"]
                .as_str()
                .unwrap()
                .to_owned(),
        ];
        let before = BTreeSet::new();
        let seen = Seen::default();
        let p = problem(
            &service.service,
            &tasks,
            &before,
            &messages,
            &seen,
            &culprit_probe(),
            20,
        )
        .unwrap();
        assert_eq!(p.task_id, CULPRIT);
        assert_eq!(
            p.task_error.as_deref(),
            Some(
                "complete: stopped by Swarm after failing its healthcheck (it exited 0 on the stop signal)"
            )
        );
        // Without healthcheck output, nothing says Swarm stopped it.
        let p = problem(
            &service.service,
            &tasks,
            &before,
            &messages,
            &seen,
            &FakeProbe::default(),
            20,
        )
        .unwrap();
        assert_eq!(
            p.task_error.as_deref(),
            Some("complete: exited 0 while the service should keep it running")
        );
    }

    #[test]
    fn a_starting_task_is_fetched_again_only_after_3_seconds() {
        let (_, before_tasks) = parsed(&raw("healthy_before_update"));
        let before: BTreeSet<String> = before_tasks.iter().filter_map(|t| t.id.clone()).collect();
        let (_, tasks) = parsed(&raw("updating"));
        let starting = tasks
            .iter()
            .find(|t| t.status.as_ref().and_then(|s| s.state) == Some(TaskState::STARTING))
            .and_then(|t| t.id.clone())
            .unwrap();
        let probe = FakeProbe::default();
        let mut seen = Seen::default();
        // Samples a poll apart: its logs are not fetched on every one.
        seen.remember(&tasks, &before, 20, &probe);
        seen.remember(&tasks, &before, 20, &probe);
        let asked = probe.asked.borrow().clone();
        assert_eq!(
            asked
                .iter()
                .filter(|a| *a == &format!("logs {starting}"))
                .count(),
            1,
            "{asked:?}"
        );
        assert_eq!(seen.evidence[&starting].state, "starting");
    }

    #[test]
    fn with_nothing_kept_the_report_says_why_there_are_no_logs() {
        let started = rollback_started();
        let (service, tasks) = parsed(&started);
        let messages = vec![
            started["service"]["UpdateStatus"]["Message"]
                .as_str()
                .unwrap()
                .to_owned(),
        ];
        let p = problem(
            &service.service,
            &tasks,
            &BTreeSet::new(),
            &messages,
            &Seen::default(),
            &FakeProbe::default(),
            20,
        )
        .unwrap();
        assert_eq!(p.task_id, CULPRIT);
        assert_eq!(p.log_tail.as_deref(), Some("(no logs: no such task)"));
    }

    #[test]
    fn an_ended_task_is_captured_once_and_a_later_empty_fetch_keeps_what_was_found() {
        let before = BTreeSet::new();
        let (_, tasks) = parsed(&rollback_started());
        let probe = culprit_probe();
        let mut seen = Seen::default();
        seen.remember(&tasks, &before, 20, &probe);
        seen.remember(&tasks, &before, 20, &probe);
        let asked = probe.asked.borrow().clone();
        assert_eq!(
            asked
                .iter()
                .filter(|a| *a == &format!("logs {CULPRIT}"))
                .count(),
            1,
            "{asked:?}"
        );
        // Running tasks are not fetched; ended ones without a container are kept without.
        assert!(
            !asked
                .iter()
                .any(|a| a.contains("rbvuxpbhtcfuujbrmmtl76s8x"))
        );
        let stopped = &seen.evidence["780ntm17msbt6q5dowyf0sax1"];
        assert_eq!(
            (stopped.state.as_str(), stopped.log_tail.as_ref()),
            ("shutdown", None)
        );
        assert!(
            !asked
                .iter()
                .any(|a| a.contains("780ntm17msbt6q5dowyf0sax1"))
        );
        let culprit = &seen.evidence[CULPRIT];
        assert_eq!(culprit.exit_code, Some(137));
        assert_eq!(
            culprit.log_tail.as_deref(),
            Some("waiting for the database")
        );

        // A starting task is fetched; its next fetch (logs gone) keeps the earlier tail.
        let mut starting = raw("updating");
        let id = "6x4u8sbc6zbe344uct1frd898";
        let (_, tasks) = parsed(&starting);
        let probe = FakeProbe {
            logs: [(id.to_owned(), "booting".to_owned())].into(),
            ..Default::default()
        };
        let mut seen = Seen::default();
        seen.remember(&tasks, &before, 20, &probe);
        assert_eq!(seen.evidence[id].log_tail.as_deref(), Some("booting"));
        assert_eq!(seen.evidence[id].exit_code, None);
        for t in starting["tasks"].as_array_mut().unwrap() {
            if t["ID"] == id {
                t["Status"]["State"] = "failed".into();
                t["Status"]["Err"] = "task: non-zero exit (1)".into();
                t["Status"]["ContainerStatus"]["ExitCode"] = 1.into();
            }
        }
        let (_, tasks) = parsed(&starting);
        seen.remember(&tasks, &before, 20, &FakeProbe::default());
        let e = &seen.evidence[id];
        assert_eq!(e.error, "failed: task: non-zero exit (1)");
        assert_eq!(e.exit_code, Some(1));
        assert_eq!(e.log_tail.as_deref(), Some("booting"));
    }

    #[test]
    fn the_summary_names_the_task_and_its_exit_code() {
        let result = |error: &str| ServiceResult {
            service: "backend".into(),
            result: "failed".into(),
            detail: "rolled back: rollback completed".into(),
            old_image: "backend:1".into(),
            new_image: "backend:2".into(),
            final_image: "backend:1".into(),
            counts: Counts::default(),
            update_message: None,
            task_id: Some(CULPRIT.into()),
            task_error: Some(error.into()),
            exit_code: Some(137),
            log_tail: Some("a\nb".into()),
            health_output: None,
            seconds: 3.0,
            floor_seconds: None,
        };
        let report = |r| Report {
            stack: "s".into(),
            ok: false,
            seconds: 3.0,
            services: vec![r],
        };
        let text = summary(&report(result("shutdown: shutdown")));
        assert!(
            text.contains(&format!(
                "    task:  {CULPRIT}: shutdown: shutdown (exit code 137)\n"
            )),
            "{text}"
        );
        assert!(text.contains("      a\n      b\n"), "{text}");
        // An exit code the error already names is not repeated.
        let text = summary(&report(result("failed: task: non-zero exit (137)")));
        assert!(text.contains("non-zero exit (137)\n"), "{text}");
    }
}
