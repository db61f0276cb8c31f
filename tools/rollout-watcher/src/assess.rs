//! The verdict on one service's rollout, from plain data: the service and task JSON the
//! Docker API returns, and what the service looked like before the deploy.
//!
//! No I/O here: [`crate::watch`] polls Docker and feeds each sample to [`Tracker::observe`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bollard::models::{
    Service, ServiceSpecUpdateConfigFailureActionEnum, ServiceUpdateStatusStateEnum, Task,
    TaskState,
};
use serde::{Deserialize, Serialize};

/// What a service looked like just before the deploy: its update status (state and start
/// time), so that an old `rollback_completed` of an earlier deploy is not taken for a new one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceBefore {
    pub update_state: Option<String>,
    pub update_started_at: Option<String>,
}

impl ServiceBefore {
    /// The update status of `service` as it is now.
    pub fn of(service: &Service) -> Self {
        let status = service.update_status.as_ref();
        Self {
            update_state: status
                .and_then(|s| s.state)
                .map(|s| s.to_string())
                .filter(|s| !s.is_empty()),
            update_started_at: status
                .and_then(|s| s.started_at.as_ref())
                .map(|t| t.to_rfc3339()),
        }
    }
}

/// Task counts shown in progress lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Tasks the service should run (replicas; for a global service, one per node it runs on).
    pub wanted: u64,
    /// Tasks meant to run that carry the service's current spec.
    pub on_new_spec: u64,
    /// Of those, tasks running (with a healthcheck: running means it passed).
    pub healthy: u64,
    /// Tasks meant to run that still carry an older spec.
    pub stale: u64,
    /// Tasks created since the deploy that failed or were rejected.
    pub failed: u64,
}

/// Where a service's rollout stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Not settled yet; the text says what it waits for.
    Pending(String),
    /// Settled: the wanted number of tasks run the current spec and are healthy.
    Ok(String),
    /// Settled badly; the text says why.
    Failed(String),
}

impl Phase {
    /// Whether the verdict is final: ok or failed; the watch stops following the service.
    pub fn is_settled(&self) -> bool {
        !matches!(self, Phase::Pending(_))
    }
}

/// Settings of the verdict.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// A service with no update of its own (first deploy) fails after this many task failures.
    pub max_task_failures: u64,
    /// How long `paused` may last before it counts as a failure when the service's
    /// failure action is `rollback` (Swarm may pass through `paused` on its way there).
    pub paused_grace: Duration,
    /// How long a task the deploy created may stay pending with a scheduler error ("no
    /// suitable node (...)") before the rollout fails without waiting for its timeout.
    ///
    /// Chosen: fail early. Swarm never gives up on such a task (an update waits for it for
    /// ever, no rollback follows), and a constraint no node meets or reservations no node
    /// has do not mend themselves within a deploy; the grace covers the short waits that do
    /// (a stop-first update freeing its node's resources, a node just joining).
    pub unschedulable_grace: Duration,
    /// A service without an update of its own (first deploy, unchanged) is ok only when two
    /// samples at least this far apart both say so (the watch sets its poll interval): one
    /// sample may catch a task in the second before it crashes. A service the deploy
    /// created waits at least its update monitor ([`monitor_of`]).
    pub confirm_after: Duration,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            max_task_failures: 3,
            paused_grace: Duration::from_secs(10),
            unschedulable_grace: Duration::from_secs(30),
            confirm_after: Duration::from_secs(1),
        }
    }
}

/// How long Swarm watches an updated task for failure when the service sets no
/// `update_config.monitor` (Docker's default).
pub const DEFAULT_MONITOR: Duration = Duration::from_secs(5);

/// The service's `update_config.monitor`: how long Swarm watches each updated task for
/// failure ([`DEFAULT_MONITOR`] when unset or zero).
pub fn monitor_of(service: &Service) -> Duration {
    service
        .spec
        .as_ref()
        .and_then(|s| s.update_config.as_ref())
        .and_then(|u| u.monitor)
        .and_then(|ns| u64::try_from(ns).ok())
        .filter(|ns| *ns > 0)
        .map_or(DEFAULT_MONITOR, Duration::from_nanos)
}

/// Follows one service across samples (it remembers since when an update is paused).
#[derive(Debug, Clone)]
pub struct Tracker {
    before: Option<ServiceBefore>,
    before_tasks: BTreeSet<String>,
    rules: Rules,
    paused_since: Option<Duration>,
    rolled_back: bool,
    /// When the first of the current run of ok samples (no update of its own) was taken, and
    /// how many there were.
    ok_since: Option<(Duration, u32)>,
    /// New task ID to when it was first seen pending with a scheduler error.
    unschedulable_since: BTreeMap<String, Duration>,
}

/// The tasks meant to run now (desired state running).
fn desired_running(tasks: &[Task]) -> impl Iterator<Item = &Task> {
    tasks
        .iter()
        .filter(|t| t.desired_state == Some(TaskState::RUNNING))
}

fn state_of(task: &Task) -> Option<TaskState> {
    task.status.as_ref().and_then(|s| s.state)
}

/// Whether `task` was made from the service's current task template, as Swarm judges it.
///
/// Swarm copies the template into each task, but the API prints the two differently: Swarm
/// stores them as protobuf, where an absent field and its zero value are the same thing, and
/// `docker service inspect` fills in Swarm's defaults (`insertDefaults`), which the task keeps
/// absent. So both are compared with zero values (null, false, 0, "", {}, []), values equal to
/// those defaults, and `Runtime` removed.
///
/// `Placement` is left out too: Swarm does not replace a task when only the placement changed
/// and its node still satisfies it (swarmkit `IsTaskDirtyPlacementConstraintsOnly`), so such a
/// task stays, up to date. When its node no longer satisfies it, Swarm does replace it, and
/// the task leaves the tasks meant to run.
pub fn on_current_spec(service: &Service, task: &Task) -> bool {
    let template = service.spec.as_ref().and_then(|s| s.task_template.as_ref());
    match (template, task.spec.as_ref()) {
        (Some(template), Some(spec)) => {
            let a = serde_json::to_value(template).map(comparable);
            let b = serde_json::to_value(spec).map(comparable);
            matches!((a, b), (Ok(a), Ok(b)) if a == b)
        }
        _ => false,
    }
}

/// A task spec as [`on_current_spec`] compares it.
fn comparable(mut spec: serde_json::Value) -> serde_json::Value {
    if let Some(obj) = spec.as_object_mut() {
        obj.remove("Placement");
    }
    normalized(without_defaults(spec))
}

/// Swarm's task defaults (swarmkit `api/defaults`) as `docker service inspect` inserts them.
const DEFAULTS: &[(&str, &str, i64)] = &[
    ("/ContainerSpec", "StopGracePeriod", 10_000_000_000),
    ("/RestartPolicy", "Delay", 5_000_000_000),
];

fn without_defaults(mut spec: serde_json::Value) -> serde_json::Value {
    for (parent, key, default) in DEFAULTS {
        if let Some(obj) = spec.pointer_mut(parent).and_then(|p| p.as_object_mut())
            && obj.get(*key).and_then(|v| v.as_i64()) == Some(*default)
        {
            obj.remove(*key);
        }
    }
    if let Some(obj) = spec
        .pointer_mut("/RestartPolicy")
        .and_then(|p| p.as_object_mut())
        && obj.get("Condition").and_then(|v| v.as_str()) == Some("any")
    {
        obj.remove("Condition");
    }
    spec
}

/// `value` without zero values and without the `Runtime` key, recursively.
fn normalized(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(k, _)| k != "Runtime")
                .map(|(k, v)| (k, normalized(v)))
                .filter(|(_, v)| !is_zero(v))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(normalized).collect()),
        other => other,
    }
}

fn is_zero(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

/// How many tasks the service wants, or None for job modes (not followed).
fn wanted(service: &Service, tasks: &[Task]) -> Option<u64> {
    let mode = service.spec.as_ref()?.mode.as_ref()?;
    if let Some(replicated) = &mode.replicated {
        return Some(replicated.replicas.unwrap_or(1).max(0) as u64);
    }
    if mode.global.is_some() {
        let nodes: BTreeSet<&str> = desired_running(tasks)
            .filter_map(|t| t.node_id.as_deref())
            .collect();
        return Some(nodes.len() as u64);
    }
    None
}

/// Counts for one sample.
pub fn counts(service: &Service, tasks: &[Task], before_tasks: &BTreeSet<String>) -> Counts {
    let current: Vec<&Task> = desired_running(tasks)
        .filter(|t| on_current_spec(service, t))
        .collect();
    Counts {
        wanted: wanted(service, tasks).unwrap_or(0),
        on_new_spec: current.len() as u64,
        stale: (desired_running(tasks).count() - current.len()) as u64,
        healthy: current
            .iter()
            .filter(|t| state_of(t) == Some(TaskState::RUNNING))
            .count() as u64,
        failed: new_failures(tasks, before_tasks).len() as u64,
    }
}

/// Whether `task` failed: failed, rejected, or (outside job modes) exited 0.
///
/// Swarm records `complete` only for a container that exited while its task was meant to run
/// (one it stops on purpose ends `shutdown`); a replicated or global service keeps its tasks
/// running, so that is a failure like `failed`, e.g. a command that returns at once. Job tasks
/// (they carry a `JobIteration`) are meant to complete.
pub fn is_failure(task: &Task) -> bool {
    match state_of(task) {
        Some(TaskState::FAILED | TaskState::REJECTED) => true,
        Some(TaskState::COMPLETE) => task.job_iteration.is_none(),
        _ => false,
    }
}

/// Tasks created since the deploy that failed (see [`is_failure`]), newest first.
pub fn new_failures<'a>(tasks: &'a [Task], before_tasks: &BTreeSet<String>) -> Vec<&'a Task> {
    let mut failed: Vec<&Task> = tasks
        .iter()
        .filter(|t| is_new(t, before_tasks))
        .filter(|t| is_failure(t))
        .collect();
    failed.sort_by(|a, b| {
        let ts = |t: &Task| t.status.as_ref().and_then(|s| s.timestamp);
        ts(b).cmp(&ts(a))
    });
    failed
}

/// Whether `task` was created since the deploy.
fn is_new(task: &Task, before_tasks: &BTreeSet<String>) -> bool {
    task.id
        .as_ref()
        .is_some_and(|id| !before_tasks.contains(id))
}

/// The most recent failed task since the deploy, if any.
pub fn last_failure<'a>(tasks: &'a [Task], before_tasks: &BTreeSet<String>) -> Option<&'a Task> {
    new_failures(tasks, before_tasks).into_iter().next()
}

/// The task Swarm blames in an `UpdateStatus.Message`, e.g. "update rolled back due to
/// failure or early termination of task <id>" (also "update paused ...", "rollback paused ...").
pub fn blamed_task(message: &str) -> Option<&str> {
    let (_, rest) = message.rsplit_once("task ")?;
    let id = rest
        .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        .next()
        .unwrap_or("");
    // Swarm's IDs are 25 lowercase letters and digits, printed whole.
    (id.len() >= 12).then_some(id)
}

/// The ID of the task that explains a failed rollout: the one Swarm's own update messages
/// (every distinct one seen, oldest first) blame, the first such (what started a rollback,
/// rather than a later failure of the rollback itself); else [`problem_task`]'s guess. Swarm's
/// word is taken even when that task is gone from its task history by now: the watch kept
/// what it saw of it.
pub fn problem_task_id(
    service: &Service,
    tasks: &[Task],
    before_tasks: &BTreeSet<String>,
    messages: &[String],
) -> Option<String> {
    messages
        .iter()
        .find_map(|m| blamed_task(m))
        .map(str::to_owned)
        .or_else(|| problem_task(service, tasks, before_tasks).and_then(|t| t.id.clone()))
}

/// A guess at the task that explains a failed rollout, when Swarm blames none (see
/// [`problem_task_id`]): the most recent failed task since the deploy; or else a new task
/// meant to run that the scheduler cannot place; or else the most recent task the deploy
/// started that ran a container and that Swarm has since stopped, preferring one of the
/// release that was rolled back (not on the service's current spec). A task that never turned
/// healthy is stopped by Swarm and may exit 0 on SIGTERM, so it is not "failed"; a rollback
/// may also create tasks that are stopped before they start.
pub fn problem_task<'a>(
    service: &Service,
    tasks: &'a [Task],
    before_tasks: &BTreeSet<String>,
) -> Option<&'a Task> {
    if let Some(task) = last_failure(tasks, before_tasks) {
        return Some(task);
    }
    if let Some(task) = desired_running(tasks)
        .filter(|t| is_new(t, before_tasks))
        .find(|t| unschedulable(t).is_some())
    {
        return Some(task);
    }
    let ran = |t: &Task| {
        t.status
            .as_ref()
            .and_then(|s| s.container_status.as_ref())
            .and_then(|c| c.container_id.as_deref())
            .is_some_and(|id| !id.is_empty())
    };
    tasks
        .iter()
        .filter(|t| is_new(t, before_tasks))
        .filter(|t| t.desired_state != Some(TaskState::RUNNING))
        .max_by_key(|t| (!on_current_spec(service, t), ran(t), t.created_at))
}

/// What [`task_error`] says of a task that exited 0 while it should keep running.
pub const EXITED_0: &str = "exited 0 while the service should keep it running";

/// A task's error as Swarm reports it ("task: non-zero exit (1)", "No such image: ..."); for
/// a task that exited 0 (see [`is_failure`]), that it should have kept running.
pub fn task_error(task: &Task) -> String {
    let status = task.status.as_ref();
    let err = status.and_then(|s| s.err.as_deref()).unwrap_or("");
    let message = status.and_then(|s| s.message.as_deref()).unwrap_or("");
    let state = state_of(task).map(|s| s.to_string()).unwrap_or_default();
    if err.is_empty() && state_of(task) == Some(TaskState::COMPLETE) && is_failure(task) {
        return format!("{state}: {EXITED_0}");
    }
    match (err.is_empty(), message.is_empty()) {
        (false, _) => format!("{state}: {err}"),
        (true, false) => format!("{state}: {message}"),
        (true, true) => state,
    }
}

/// Why the scheduler cannot place `task`, when it is pending with a scheduler error, as
/// [`task_error`] says it: "pending: no suitable node (scheduling constraints not satisfied on
/// 1 node)", "pending: no suitable node (insufficient resources on 2 nodes)".
pub fn unschedulable(task: &Task) -> Option<String> {
    let err = task.status.as_ref().and_then(|s| s.err.as_deref())?;
    // Swarm sets a pending task's Err only when the scheduler failed to place it.
    (state_of(task) == Some(TaskState::PENDING) && !err.trim().is_empty()).then(|| task_error(task))
}

impl Tracker {
    /// `before` is None for a service the deploy creates; `before_tasks` are the IDs of every
    /// task of the stack before the deploy.
    pub fn new(
        before: Option<ServiceBefore>,
        before_tasks: BTreeSet<String>,
        rules: Rules,
    ) -> Self {
        Self {
            before,
            before_tasks,
            rules,
            paused_since: None,
            rolled_back: false,
            ok_since: None,
            unschedulable_since: BTreeMap::new(),
        }
    }

    /// Whether an update status was seen that is not the one from before the deploy.
    fn new_update(&self, service: &Service) -> bool {
        let now = ServiceBefore::of(service);
        if now.update_state.is_none() {
            return false;
        }
        match &self.before {
            None => true,
            Some(before) => *before != now,
        }
    }

    /// Whether Swarm rolled this service back during the watch (even if it is settled now).
    pub fn rolled_back(&self) -> bool {
        self.rolled_back
    }

    /// The verdict for one sample taken `elapsed` after the watch began. While it waits, it
    /// says why a task meant to run is still pending, and it fails once a new task has been
    /// unschedulable for [`Rules::unschedulable_grace`].
    pub fn observe(
        &mut self,
        service: &Service,
        tasks: &[Task],
        elapsed: Duration,
    ) -> (Phase, Counts) {
        let (phase, c) = self.judge(service, tasks, elapsed);
        let pending: Vec<(&Task, String)> = desired_running(tasks)
            .filter_map(|t| unschedulable(t).map(|why| (t, why)))
            .collect();
        self.unschedulable_since
            .retain(|id, _| pending.iter().any(|(t, _)| t.id.as_ref() == Some(id)));
        // The new task that has waited longest; tasks from before the deploy only explain.
        let mut longest: Option<(Duration, &str)> = None;
        for (task, why) in &pending {
            let Some(id) = task
                .id
                .as_ref()
                .filter(|_| is_new(task, &self.before_tasks))
            else {
                continue;
            };
            let since = *self
                .unschedulable_since
                .entry(id.clone())
                .or_insert(elapsed);
            let waited = elapsed.saturating_sub(since);
            if longest.is_none_or(|(w, _)| waited > w) {
                longest = Some((waited, why));
            }
        }
        let phase = match phase {
            Phase::Pending(_)
                if longest.is_some_and(|(w, _)| w >= self.rules.unschedulable_grace) =>
            {
                let (waited, why) = longest.unwrap_or_default();
                Phase::Failed(format!(
                    "a new task cannot be placed ({why}) for {}s",
                    waited.as_secs()
                ))
            }
            Phase::Pending(what) => match pending.first() {
                Some((_, why)) => Phase::Pending(format!("{what}; {why}")),
                None => Phase::Pending(what),
            },
            settled => settled,
        };
        (phase, c)
    }

    fn judge(&mut self, service: &Service, tasks: &[Task], elapsed: Duration) -> (Phase, Counts) {
        let c = counts(service, tasks, &self.before_tasks);
        if wanted(service, tasks).is_none() {
            return (Phase::Ok("job mode: not followed".into()), c);
        }
        let replicas_ok = c.healthy >= c.wanted && c.on_new_spec == c.healthy && c.stale == 0;
        let update_message = service
            .update_status
            .as_ref()
            .and_then(|s| s.message.clone())
            .unwrap_or_default();
        let with_message = |what: &str| {
            if update_message.is_empty() {
                what.to_owned()
            } else {
                format!("{what}: {update_message}")
            }
        };
        if self.new_update(service) {
            self.ok_since = None;
            let state = service
                .update_status
                .as_ref()
                .and_then(|s| s.state)
                .unwrap_or(ServiceUpdateStatusStateEnum::EMPTY);
            if state != ServiceUpdateStatusStateEnum::PAUSED {
                self.paused_since = None;
            }
            let phase = match state {
                ServiceUpdateStatusStateEnum::UPDATING => Phase::Pending("updating".into()),
                ServiceUpdateStatusStateEnum::ROLLBACK_STARTED => {
                    self.rolled_back = true;
                    Phase::Pending(with_message("update failed, rolling back"))
                }
                ServiceUpdateStatusStateEnum::ROLLBACK_COMPLETED => {
                    self.rolled_back = true;
                    Phase::Failed(with_message("rolled back"))
                }
                ServiceUpdateStatusStateEnum::ROLLBACK_PAUSED => {
                    self.rolled_back = true;
                    Phase::Failed(with_message("rollback paused"))
                }
                ServiceUpdateStatusStateEnum::PAUSED => {
                    let since = *self.paused_since.get_or_insert(elapsed);
                    let rolls_back = service
                        .spec
                        .as_ref()
                        .and_then(|s| s.update_config.as_ref())
                        .and_then(|u| u.failure_action)
                        == Some(ServiceSpecUpdateConfigFailureActionEnum::ROLLBACK);
                    if rolls_back && elapsed.saturating_sub(since) < self.rules.paused_grace {
                        Phase::Pending(with_message("update paused"))
                    } else {
                        Phase::Failed(with_message("update paused"))
                    }
                }
                ServiceUpdateStatusStateEnum::COMPLETED | ServiceUpdateStatusStateEnum::EMPTY => {
                    if self.rolled_back {
                        // Completed after a rollback we saw start: still a failed deploy.
                        Phase::Failed(with_message("rolled back"))
                    } else if replicas_ok {
                        Phase::Ok("updated".into())
                    } else if c.failed >= self.rules.max_task_failures {
                        Phase::Failed(format!(
                            "update completed but {} tasks failed since",
                            c.failed
                        ))
                    } else {
                        Phase::Pending("update completed, waiting for its tasks".into())
                    }
                }
            };
            return (phase, c);
        }
        self.paused_since = None;
        if self.rolled_back {
            return (Phase::Failed(with_message("rolled back")), c);
        }
        if replicas_ok {
            // A new service, or one whose tasks failed since the deploy, is not "unchanged".
            let what = if c.failed > 0 || self.before.is_none() {
                "running"
            } else {
                "unchanged, running"
            };
            // No update of Swarm's own watched these tasks: one sample may catch a task in the
            // second before it crashes, so a second one, a poll later, must agree. A service
            // the deploy created must keep running for its update monitor too: for an update
            // Swarm watches that long (and rolls back), for a new service nothing does, and a
            // task that passed its healthcheck may still crash seconds later
            // (`docker service create` waits as long before it says "converged").
            let window = if self.before.is_none() {
                monitor_of(service).max(self.rules.confirm_after)
            } else {
                self.rules.confirm_after
            };
            let (since, samples) = self.ok_since.get_or_insert((elapsed, 0));
            *samples += 1;
            if *samples >= 2 && elapsed.saturating_sub(*since) >= window {
                return (Phase::Ok(what.into()), c);
            }
            if self.before.is_none() {
                return (
                    Phase::Pending(format!(
                        "{what}, confirming: new, its tasks must keep running for {}s (its update monitor)",
                        window.as_secs_f64()
                    )),
                    c,
                );
            }
            return (Phase::Pending(format!("{what}, confirming")), c);
        }
        self.ok_since = None;
        if c.failed >= self.rules.max_task_failures {
            let last = last_failure(tasks, &self.before_tasks)
                .map(|t| format!("; the last: {}", task_error(t)))
                .unwrap_or_default();
            return (
                Phase::Failed(format!(
                    "{} tasks failed since the deploy (a crash loop?){last}",
                    c.failed
                )),
                c,
            );
        }
        (
            Phase::Pending(format!("{}/{} tasks healthy", c.healthy, c.wanted)),
            c,
        )
    }
}
