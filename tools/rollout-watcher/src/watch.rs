//! The watch loop: samples the stack through [`crate::docker`], judges each service with
//! [`crate::assess::Tracker`], prints one progress line per change, and ends with a report.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context;
use bollard::models::{Task, TaskState};
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
    /// The last failed task's error since the deploy.
    pub task_error: Option<String>,
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

/// What was seen of a new task while it was still starting: its containers are removed once
/// Swarm stops them, so logs and healthcheck output are kept as the watch goes.
#[derive(Default)]
struct Seen {
    log_tail: BTreeMap<String, String>,
    health: BTreeMap<String, String>,
    last_fetch: BTreeMap<String, Instant>,
}

impl Seen {
    /// Fetches (at most every 3 s per task) the log tail and health output of new tasks that
    /// are starting, i.e. have not passed their healthcheck yet.
    fn remember(&mut self, tasks: &[Task], before: &BTreeSet<String>, lines: usize) {
        for task in tasks {
            let Some(id) = task.id.as_deref() else {
                continue;
            };
            if before.contains(id) {
                continue;
            }
            let status = task.status.as_ref();
            if status.and_then(|s| s.state) != Some(TaskState::STARTING) {
                continue;
            }
            if self
                .last_fetch
                .get(id)
                .is_some_and(|t| t.elapsed() < Duration::from_secs(3))
            {
                continue;
            }
            self.last_fetch.insert(id.to_owned(), Instant::now());
            let tail = docker::task_log_tail(id, lines);
            if !tail.trim().is_empty() && !tail.starts_with("(no logs") {
                self.log_tail.insert(id.to_owned(), tail);
            }
            let container = status
                .and_then(|s| s.container_status.as_ref())
                .and_then(|c| c.container_id.as_deref());
            if let Some(output) = container.and_then(docker::container_health_output) {
                self.health.insert(id.to_owned(), output);
            }
        }
    }
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
            seen.remember(&tasks, &snapshot.tasks, options.log_lines);
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
        let last = assess::problem_task(&f.service.service, &f.tasks, &snapshot.tasks);
        let (task_error, log_tail, health_output) = match (failed, last) {
            (true, Some(task)) => {
                let id = task.id.as_deref().unwrap_or("");
                let live = docker::task_log_tail(id, options.log_lines);
                let tail = if live.trim().is_empty() || live.starts_with("(no logs") {
                    seen.log_tail.get(id).cloned().or(Some(live))
                } else {
                    Some(live)
                };
                (
                    Some(assess::task_error(task)),
                    tail.filter(|t| !t.trim().is_empty()),
                    seen.health.get(id).cloned(),
                )
            }
            _ => (None, None, None),
        };
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
            task_error,
            log_tail,
            health_output,
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
        if let Some(e) = &r.task_error {
            out.push_str(&format!("    task:  {e}\n"));
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
