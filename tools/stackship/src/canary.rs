//! The canary decision: does the new version of a service fail real requests more than the old
//! one did over the same window? A pure function of request counts (by route and status, per
//! version) and the service's thresholds, plus [`parse_access`], which reads those counts from
//! nginx-proxy's access log: every environment has one (dev and review stacks have no
//! Prometheus), and it records what clients got, including the 502/504 nginx answers when a
//! task does not.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use config_hasher::services::UpdateDecl;

use crate::docker::{Call, Client};
use crate::error::Error;

/// Requests answered over a window, by route (`GET /api/logs`) and status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts(pub BTreeMap<(String, u16), u64>);

impl Counts {
    /// Adds `n` answers of `status` on `route`.
    pub fn add(&mut self, route: &str, status: u16, n: u64) {
        *self.0.entry((route.to_owned(), status)).or_default() += n;
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// Answers with a 5xx status: the server's failures (a 4xx is the client's).
    pub fn failed(&self) -> u64 {
        self.0
            .iter()
            .filter(|((_, status), _)| *status >= 500)
            .map(|(_, n)| n)
            .sum()
    }

    /// The share of failed answers (0 with none at all).
    pub fn failed_ratio(&self) -> f64 {
        match self.total() {
            0 => 0.0,
            total => self.failed() as f64 / total as f64,
        }
    }

    /// What was counted after `earlier` (counters only grow; one that went down was reset,
    /// by a task restart, and counts from zero).
    pub fn since(&self, earlier: &Counts) -> Counts {
        Counts(
            self.0
                .iter()
                .map(|(key, &now)| {
                    let before = earlier.0.get(key).copied().unwrap_or(0);
                    let n = if now >= before { now - before } else { now };
                    (key.clone(), n)
                })
                .filter(|(_, n)| *n > 0)
                .collect(),
        )
    }

    /// The route and status that failed most often, and how often.
    pub fn worst(&self) -> Option<(&str, u16, u64)> {
        self.0
            .iter()
            .filter(|((_, status), n)| *status >= 500 && **n > 0)
            .max_by_key(|((route, status), n)| (**n, std::cmp::Reverse((route.clone(), *status))))
            .map(|((route, status), n)| (route.as_str(), *status, *n))
    }
}

/// One answer an upstream gave, as nginx-proxy's access log (its `proxy` format) records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answered {
    /// The task's address and port, `10.0.1.5:8080`.
    pub upstream: String,
    /// The method and path without its query, `GET /api/logs`.
    pub route: String,
    pub status: u16,
}

/// The upstream answers of one access log line (`docker service logs` prefixes allowed): one
/// per attempt when nginx tried more than one task (`upstream=a:8080, b:8080
/// upstream_status=502, 200`). None for a line of another kind, an answer nginx gave itself
/// (`upstream=-`), or an attempt with no status (`-`).
pub fn parse_access(line: &str) -> Vec<Answered> {
    // `... upstream=<addr>[, <addr>...] upstream_status=<status>[, <status>...] rt=...`
    let between = |from: &str, to: &str| -> Option<&str> {
        let start = line.find(from)? + from.len();
        let end = line[start..].find(to).map_or(line.len(), |i| start + i);
        Some(line[start..end].trim())
    };
    let route = line.split_once(" \"").and_then(|(_, rest)| {
        let request = rest.split('"').next()?;
        let mut words = request.split(' ');
        let (method, target) = (words.next()?, words.next()?);
        let path = target.split('?').next()?;
        (!method.is_empty() && path.starts_with('/')).then(|| format!("{method} {path}"))
    });
    let (Some(route), Some(upstreams), Some(statuses)) = (
        route,
        between(" upstream=", " upstream_status="),
        between(" upstream_status=", " rt="),
    ) else {
        return Vec::new();
    };
    // nginx separates the tasks it tried with ", " (an internal redirect adds " : ").
    let list = |v: &str| -> Vec<String> {
        v.split([',', ' '])
            .filter(|w| !w.is_empty() && *w != ":")
            .map(str::to_owned)
            .collect()
    };
    list(upstreams)
        .into_iter()
        .zip(list(statuses))
        .filter_map(|(upstream, status)| {
            let status: u16 = status.parse().ok()?;
            upstream.contains(':').then(|| Answered {
                upstream,
                route: route.clone(),
                status,
            })
        })
        .collect()
}

/// The answers of `lines` (access log lines) by version: `versions` maps a task's address
/// (without port) to the version it runs; answers of other addresses (another service's
/// tasks, a task already gone) are not counted.
pub fn counts_by_version<'a>(
    lines: impl IntoIterator<Item = &'a str>,
    versions: &BTreeMap<String, String>,
) -> BTreeMap<String, Counts> {
    let mut out: BTreeMap<String, Counts> = BTreeMap::new();
    for answered in lines.into_iter().flat_map(parse_access) {
        let address = answered
            .upstream
            .rsplit_once(':')
            .map_or(answered.upstream.as_str(), |(a, _)| a);
        if let Some(version) = versions.get(address) {
            out.entry(version.clone())
                .or_default()
                .add(&answered.route, answered.status, 1);
        }
    }
    out
}

/// When too little traffic reached the new version to judge it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TooLittle {
    /// Let the rollout go on (said as such, never as a pass).
    Proceed,
    /// Roll back, as for a breach.
    RollBack,
}

/// A service's thresholds.
#[derive(Clone, Debug, PartialEq)]
pub struct Thresholds {
    /// Requests the new version must have answered before it is judged.
    pub min_requests: u64,
    /// The new version's failed share above which it may be a breach (0.05 = 5 %).
    pub max_failed_ratio: f64,
    /// ... and only when it is also this many times the old version's (a database outage fails
    /// both alike: not the release's fault).
    pub max_times_old: f64,
    pub too_little: TooLittle,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            min_requests: 50,
            max_failed_ratio: 0.05,
            max_times_old: 2.0,
            too_little: TooLittle::Proceed,
        }
    }
}

/// The decision.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// The new version fails no more than allowed.
    Healthy { new: Counts, old: Counts },
    /// The new version fails real requests: roll back.
    Breach { new: Counts, old: Counts },
    /// Too few requests reached the new version to say.
    TooLittleTraffic {
        new: Counts,
        old: Counts,
        then: TooLittle,
    },
}

impl Verdict {
    /// Whether the rollout must be rolled back.
    pub fn rolls_back(&self) -> bool {
        match self {
            Verdict::Breach { .. } => true,
            Verdict::TooLittleTraffic { then, .. } => *then == TooLittle::RollBack,
            Verdict::Healthy { .. } => false,
        }
    }
}

/// Judges the new version on what it answered over the window (`new`) against what the old
/// one answered over the same window (`old`).
pub fn judge(new: &Counts, old: &Counts, t: &Thresholds) -> Verdict {
    let (new, old) = (new.clone(), old.clone());
    if new.total() < t.min_requests {
        return Verdict::TooLittleTraffic {
            new,
            old,
            then: t.too_little,
        };
    }
    let ratio = new.failed_ratio();
    // The old version is a reference only when it answered enough itself.
    let old_ratio = (old.total() >= t.min_requests).then(|| old.failed_ratio());
    let worse_than_old = old_ratio.is_none_or(|o| ratio > o * t.max_times_old);
    if ratio > t.max_failed_ratio && worse_than_old {
        Verdict::Breach { new, old }
    } else {
        Verdict::Healthy { new, old }
    }
}

fn share(c: &Counts) -> String {
    format!(
        "{} of {} failed ({:.1} %)",
        c.failed(),
        c.total(),
        c.failed_ratio() * 100.0
    )
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Healthy { new, old } => write!(
                f,
                "canary healthy: new version {}, old version {}",
                share(new),
                share(old)
            ),
            Verdict::Breach { new, old } => {
                write!(
                    f,
                    "canary failed real requests: new version {}, old version {}",
                    share(new),
                    share(old)
                )?;
                if let Some((route, status, n)) = new.worst() {
                    write!(f, "; most failed: {route} answered {status} {n} times")?;
                }
                Ok(())
            }
            Verdict::TooLittleTraffic { new, old, then } => write!(
                f,
                "too little traffic to judge the canary: the new version answered {} requests, the old {}; {}",
                new.total(),
                old.total(),
                match then {
                    TooLittle::Proceed => "the rollout goes on unjudged",
                    TooLittle::RollBack => "rolling back, as set",
                }
            ),
        }
    }
}

/// The labels under `deploy.labels` of a service that configure its gate.
pub const LABEL_PREFIX: &str = "stackship.canary.";

/// A service's canary gate, from its `stackship.canary.*` deploy labels:
///
/// | label | meaning | default |
/// |---|---|---|
/// | `window` | the longest the first new task is watched alone (turns the gate on) | — |
/// | `min-requests` | requests it must answer before it is judged | 50 |
/// | `max-failed-ratio` | share of 5xx above which it may fail | 0.05 |
/// | `max-times-old` | ... and only when it is also this many times the old version's | 2 |
/// | `too-little` | with fewer requests by the window's end: `proceed` or `rollback` | proceed |
/// | `proxy` | the stack file's service whose access log counts the answers | nginx-proxy |
#[derive(Clone, Debug, PartialEq)]
pub struct Canary {
    pub window: Duration,
    pub proxy: String,
    pub thresholds: Thresholds,
}

/// What `update_config.order` must be: the canary is the new task started first.
const START_FIRST: &str = "start-first";

impl Canary {
    /// The gate of a service with these `labels` and `update_config`; `None` when no label
    /// names it. The update must let the canary be alone long enough: one task at a time
    /// (`parallelism: 1`), started before the old one stops (`order: start-first`), and the next
    /// one only after the window (`delay` at least `window`).
    pub fn from_decl(
        labels: &BTreeMap<String, String>,
        update: &UpdateDecl,
    ) -> Result<Option<Canary>, String> {
        let ours: BTreeMap<&str, &str> = labels
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(LABEL_PREFIX)?, v.as_str())))
            .collect();
        if ours.is_empty() {
            return Ok(None);
        }
        const KNOWN: [&str; 6] = [
            "window",
            "min-requests",
            "max-failed-ratio",
            "max-times-old",
            "too-little",
            "proxy",
        ];
        if let Some(unknown) = ours.keys().find(|k| !KNOWN.contains(k)) {
            return Err(format!(
                "unknown label {LABEL_PREFIX}{unknown} (known: {})",
                KNOWN.join(", ")
            ));
        }
        let label = |k: &str| format!("{LABEL_PREFIX}{k}");
        let bad = |k: &str, v: &str, want: &str| format!("{} is `{v}`: {want}", label(k));
        let Some(window) = ours.get("window") else {
            return Err(format!(
                "{} is not set: it turns the gate on (the other {LABEL_PREFIX}* labels tune it)",
                label("window")
            ));
        };
        let window = parse_duration(window)
            .filter(|w| !w.is_zero())
            .ok_or_else(|| {
                bad(
                    "window",
                    window,
                    "want a duration above zero, e.g. 10s or 1m30s",
                )
            })?;
        let mut t = Thresholds::default();
        if let Some(v) = ours.get("min-requests") {
            t.min_requests = v
                .parse()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| bad("min-requests", v, "want a whole number of at least 1"))?;
        }
        if let Some(v) = ours.get("max-failed-ratio") {
            t.max_failed_ratio = v
                .parse()
                .ok()
                .filter(|r: &f64| (0.0..1.0).contains(r))
                .ok_or_else(|| {
                    bad(
                        "max-failed-ratio",
                        v,
                        "want a share from 0 to below 1, e.g. 0.05",
                    )
                })?;
        }
        if let Some(v) = ours.get("max-times-old") {
            t.max_times_old = v
                .parse()
                .ok()
                .filter(|r: &f64| *r >= 1.0 && r.is_finite())
                .ok_or_else(|| bad("max-times-old", v, "want a number of at least 1, e.g. 2"))?;
        }
        if let Some(v) = ours.get("too-little") {
            t.too_little = match *v {
                "proceed" => TooLittle::Proceed,
                "rollback" => TooLittle::RollBack,
                _ => return Err(bad("too-little", v, "want proceed or rollback")),
            };
        }
        let proxy = match ours.get("proxy") {
            Some(v) if v.is_empty() => return Err(bad("proxy", v, "want a service name")),
            Some(v) => (*v).to_owned(),
            None => "nginx-proxy".to_owned(),
        };
        let parallelism = update.parallelism.as_deref().unwrap_or("1");
        if parallelism != "1" {
            return Err(format!(
                "the canary needs deploy.update_config.parallelism: 1 (one new task first), not {parallelism}"
            ));
        }
        let order = update.order.as_deref().unwrap_or("stop-first");
        if order != START_FIRST {
            return Err(format!(
                "the canary needs deploy.update_config.order: {START_FIRST} (the old task serves beside it), not {order}"
            ));
        }
        let written = update.delay.as_deref().unwrap_or("0s");
        let delay = parse_duration(written).ok_or_else(|| {
            format!(
                "deploy.update_config.delay is `{written}`: want a duration written out, e.g. 15s"
            )
        })?;
        if delay < window {
            return Err(format!(
                "deploy.update_config.delay ({written}) must be at least {} ({}): Swarm starts the next new task after the delay, and the canary must be judged alone before that",
                label("window"),
                ours["window"]
            ));
        }
        Ok(Some(Canary {
            window,
            proxy,
            thresholds: t,
        }))
    }
}

/// A duration as Docker and compose write them (Go's syntax): `10s`, `1m30s`, `1.5s`, `250ms`,
/// `0`. `None` for anything else.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = text;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total += number * seconds;
    }
    Duration::try_from_secs_f64(total).ok()
}

/// How often a canary's answers are counted while it is watched.
pub const LOOK_EVERY: Duration = Duration::from_secs(1);

/// How long one read of the proxy's log may take (`docker service logs` has been seen to hang
/// on a task whose container is gone): a look that takes longer is retried at the next one.
const LOG_TIMEOUT: Duration = Duration::from_secs(10);

/// How far before the canary was first seen serving its answers are read from: the proxy's
/// log is stamped by the engine of the proxy's node, whose clock may be a little behind ours,
/// and the canary may have answered between two samples. Answers are told apart by the task
/// that gave them, so reading a little early counts nothing twice.
const SINCE_MARGIN: chrono::TimeDelta = chrono::TimeDelta::seconds(5);

/// How long a gate that rolled a service back after its rollout had settled waits for Swarm
/// to finish that rollback.
const ROLLBACK_WAIT: Duration = Duration::from_secs(180);

/// What a gate concluded.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    /// The stack file's service name.
    pub service: String,
    /// The verdict, or why the answers could not be counted (treated as too little traffic).
    pub verdict: Result<Verdict, String>,
    /// Whether the gate wanted the service back on its old version.
    pub wanted_back: bool,
    /// Whether it started Swarm's rollback of the service.
    pub rolled_back: bool,
    /// When the gate judged after the rollout had settled and rolled it back: whether Swarm
    /// finished that rollback (its error otherwise). `None` for a gate that judged during the
    /// rollout (the watch follows Swarm's rollback then).
    pub settled_back: Option<Result<(), String>>,
    /// From the first new task serving to the verdict.
    pub after: Duration,
    /// When it failed: the canary task's last log lines (the errors in its own words).
    pub log_tail: Option<String>,
}

impl Finding {
    /// Whether the deploy must fail: the gate wanted the service back (whether or not its
    /// rollback could start).
    pub fn fails(&self) -> bool {
        self.wanted_back
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let after = self.after.as_secs_f64();
        match &self.verdict {
            Ok(v) => write!(f, "{}: {v} (after {after:.1}s)", self.service),
            Err(e) => write!(
                f,
                "{}: the canary's answers could not be counted ({e}); {} (after {after:.1}s)",
                self.service,
                match (self.wanted_back, self.rolled_back) {
                    (true, true) => "rolled back, as set for too little traffic",
                    (true, false) => "to be rolled back, as set for too little traffic",
                    (false, _) => "the rollout goes on unjudged",
                }
            ),
        }
    }
}

#[derive(Clone, Debug)]
enum State {
    /// No new task of this deploy serves yet.
    Waiting,
    /// The first new task (`canary`, its ID) serves since `since` (RFC 3339, for `docker
    /// service logs --since`).
    Watching {
        canary: String,
        since: String,
        started: std::time::Instant,
        next_look: std::time::Instant,
    },
    Done,
}

/// One service's canary gate during a rollout: fed every sample of the watch, it waits for the
/// first new task to serve, counts what each version answered through the proxy, and judges
/// as soon as the new version answered `min_requests` (or when the window ends); on a breach
/// it starts Swarm's rollback of the service (`docker service rollback`: the old spec returns).
/// A rollout that settles first (one replica: nothing waits for the window) is judged to the
/// window's end by [`Gate::finish`].
#[derive(Clone, Debug)]
pub struct Gate {
    stack: String,
    service: String,
    full: String,
    proxy: String,
    canary: Canary,
    /// Tasks of the stack before the deploy: the old version's.
    before: std::collections::BTreeSet<String>,
    /// The service's update status before the deploy: an update that started at another time
    /// is this deploy's (`None`: no record of it, and no update counts).
    update_before: Option<rollout_watcher::assess::ServiceBefore>,
    /// Whether a sample showed this deploy's update of the service.
    updated: bool,
    /// Task addresses known so far (address → task ID): a task keeps its addresses.
    addresses: BTreeMap<String, String>,
    /// Tasks whose addresses are known.
    mapped: std::collections::BTreeSet<String>,
    /// The tasks of the last sample.
    tasks: Vec<bollard::models::Task>,
    state: State,
    finding: Option<Finding>,
    /// The deploy was interrupted while the gate still watched: nothing was judged.
    interrupted: bool,
    /// What the last look that could read the log counted (judged on when a later read fails
    /// at the window's end).
    last_seen: Option<BTreeMap<String, Counts>>,
}

impl Gate {
    pub fn new(
        stack: &str,
        service: &str,
        canary: &Canary,
        before: std::collections::BTreeSet<String>,
        update_before: Option<rollout_watcher::assess::ServiceBefore>,
    ) -> Gate {
        Gate {
            stack: stack.to_owned(),
            service: service.to_owned(),
            full: format!("{stack}_{service}"),
            proxy: format!("{stack}_{}", canary.proxy),
            canary: canary.clone(),
            before,
            update_before,
            updated: false,
            addresses: BTreeMap::new(),
            mapped: Default::default(),
            tasks: Vec::new(),
            state: State::Waiting,
            finding: None,
            interrupted: false,
            last_seen: None,
        }
    }

    /// The Swarm service this gate watches.
    pub fn full_name(&self) -> &str {
        &self.full
    }

    /// The stack file's name of that service.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// What the gate concluded, once it did.
    pub fn finding(&self) -> Option<&Finding> {
        self.finding.as_ref()
    }

    /// Whether it watches a canary and has not judged it yet.
    pub fn is_watching(&self) -> bool {
        matches!(self.state, State::Watching { .. })
    }

    /// Whether this deploy updated the service and the gate never saw a new task serve (so
    /// it judged nothing).
    pub fn missed(&self) -> bool {
        self.updated && self.finding.is_none() && matches!(self.state, State::Waiting)
    }

    /// Whether the deploy was interrupted while the gate still watched (nothing judged).
    pub fn interrupted(&self) -> bool {
        self.interrupted
    }

    /// One sample of the service (its spec and update status, its tasks); `now` and `wall` are
    /// the monotonic and the wall clock. Progress lines go to `say`.
    pub fn sample(
        &mut self,
        client: &Client<'_>,
        service: &bollard::models::Service,
        tasks: &[bollard::models::Task],
        now: std::time::Instant,
        wall: chrono::DateTime<chrono::Utc>,
        say: &mut dyn FnMut(&str),
    ) {
        use bollard::models::{ServiceUpdateStatusStateEnum as U, TaskState};
        self.tasks = tasks.to_vec();
        let status = service.update_status.as_ref();
        let state = status.and_then(|s| s.state);
        if matches!(
            state,
            Some(U::ROLLBACK_STARTED | U::ROLLBACK_PAUSED | U::ROLLBACK_COMPLETED)
        ) && self.finding.is_none()
        {
            // Swarm rolls it back by itself (a failed healthcheck): nothing left to judge.
            if matches!(self.state, State::Watching { .. }) {
                say(&format!(
                    "canary {}: Swarm rolls the update back by itself; not judged",
                    self.service
                ));
            }
            self.updated = false;
            self.state = State::Done;
            return;
        }
        match self.state {
            State::Done => {}
            State::Waiting => {
                let now_status = rollout_watcher::assess::ServiceBefore::of(service);
                let ours = now_status.update_started_at.is_some()
                    && self
                        .update_before
                        .as_ref()
                        .is_some_and(|b| b.update_started_at != now_status.update_started_at)
                    && matches!(state, Some(U::UPDATING | U::COMPLETED));
                if !ours {
                    return;
                }
                self.updated = true;
                let serving = tasks.iter().find_map(|t| {
                    let id = t.id.as_ref().filter(|id| !self.before.contains(*id))?;
                    (t.status.as_ref().and_then(|s| s.state) == Some(TaskState::RUNNING)
                        && t.desired_state == Some(TaskState::RUNNING))
                    .then(|| id.clone())
                });
                if let Some(canary) = serving {
                    let since = crate::commands::deploy::rfc3339_millis(wall - SINCE_MARGIN);
                    say(&format!(
                        "canary {}: the first new task serves; judging it on real traffic (at least {} requests, for up to {}s)",
                        self.service,
                        self.canary.thresholds.min_requests,
                        self.canary.window.as_secs_f64()
                    ));
                    self.state = State::Watching {
                        canary,
                        since,
                        started: now,
                        next_look: now,
                    };
                }
            }
            State::Watching { .. } => self.step(client, now, say),
        }
    }

    /// Judges a canary still watched when the rollout settled (one replica: Swarm waits for
    /// nothing after its last task): it goes on counting until the window ends or the new
    /// version answered enough, as during the rollout. `wait` sleeps until the instant it is
    /// given and returns the time then; it returns `None` when the deploy is interrupted.
    /// A rollback it starts is followed until Swarm finished it.
    pub fn finish(
        &mut self,
        client: &Client<'_>,
        wait: &mut dyn FnMut(std::time::Instant) -> Option<std::time::Instant>,
        say: &mut dyn FnMut(&str),
    ) {
        let State::Watching {
            started, next_look, ..
        } = self.state
        else {
            return;
        };
        let left = self.canary.window.saturating_sub(next_look - started);
        say(&format!(
            "canary {}: the rollout settled; judging it on real traffic for up to {:.0}s more",
            self.service,
            left.as_secs_f64()
        ));
        while let State::Watching { next_look, .. } = self.state {
            let Some(now) = wait(next_look) else {
                say(&format!(
                    "canary {}: interrupted before it was judged",
                    self.service
                ));
                self.interrupted = true;
                self.state = State::Done;
                return;
            };
            // The watch no longer samples a settled service: its tasks are listed here (a
            // canary that crashed since was replaced by a task with another address).
            self.refresh_tasks(client);
            self.step(client, now, say);
        }
        let Some(f) = self.finding.as_mut() else {
            return;
        };
        if !f.rolled_back {
            return;
        }
        let until = std::time::Instant::now() + ROLLBACK_WAIT;
        let mut next = std::time::Instant::now();
        f.settled_back = Some(loop {
            let Some(now) = wait(next) else {
                break Err("interrupted while Swarm rolled it back".to_owned());
            };
            match update_state(client, &self.full) {
                Ok(Some(bollard::models::ServiceUpdateStatusStateEnum::ROLLBACK_COMPLETED)) => {
                    say(&format!(
                        "canary {}: Swarm finished the rollback",
                        self.service
                    ));
                    break Ok(());
                }
                Ok(Some(bollard::models::ServiceUpdateStatusStateEnum::ROLLBACK_PAUSED)) => {
                    break Err("Swarm paused the rollback".to_owned());
                }
                Ok(_) | Err(_) if now < until => next = now + LOOK_EVERY,
                Ok(state) => {
                    break Err(format!(
                        "the rollback had not finished after {}s (update state: {})",
                        ROLLBACK_WAIT.as_secs(),
                        state.map_or("none".to_owned(), |s| s.to_string())
                    ));
                }
                Err(e) => break Err(format!("its state cannot be read: {e}")),
            }
        });
    }

    /// The service's tasks as Swarm lists them now (the last list is kept when it cannot).
    fn refresh_tasks(&mut self, client: &Client<'_>) {
        use bollard::models::{TaskState, TaskStatus};
        let Ok(listed) =
            crate::commands::tasks::tasks(client, &self.stack, std::slice::from_ref(&self.service))
        else {
            return;
        };
        self.tasks = listed
            .iter()
            .map(|t| bollard::models::Task {
                id: Some(t.id.clone()),
                // Only the state: the desired state tells a canary while none is chosen yet,
                // and this list is read once one is (a look's filter).
                status: Some(TaskStatus {
                    state: Some(if t.current.starts_with("Running") {
                        TaskState::RUNNING
                    } else {
                        TaskState::SHUTDOWN
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect();
    }

    /// One look at a watched canary, at `now`: counts, and judges when it answered enough or
    /// the window ended.
    fn step(&mut self, client: &Client<'_>, now: std::time::Instant, say: &mut dyn FnMut(&str)) {
        let State::Watching {
            canary,
            since,
            started,
            next_look,
        } = self.state.clone()
        else {
            return;
        };
        if now < next_look {
            return;
        }
        let ended = now.duration_since(started) >= self.canary.window;
        let seen = match self.look(client, &since) {
            Ok(seen) => {
                self.last_seen = Some(seen.clone());
                Ok(seen)
            }
            // At the window's end, a failed read does not undo what earlier looks counted.
            Err(_) if ended && self.last_seen.is_some() => {
                Ok(self.last_seen.take().unwrap_or_default())
            }
            Err(e) => Err(e),
        };
        let verdict = match seen {
            Ok(seen) => {
                let enough =
                    seen.get(NEW).map_or(0, Counts::total) >= self.canary.thresholds.min_requests;
                if !enough && !ended {
                    self.state = State::Watching {
                        canary,
                        since,
                        started,
                        next_look: now + LOOK_EVERY,
                    };
                    return;
                }
                Ok(verdict(&seen, NEW, OLD, &self.canary.thresholds))
            }
            Err(_) if !ended => {
                self.state = State::Watching {
                    canary,
                    since,
                    started,
                    next_look: now + LOOK_EVERY,
                };
                return;
            }
            Err(e) => Err(e.to_string()),
        };
        let wanted_back = match &verdict {
            Ok(v) => v.rolls_back(),
            Err(_) => self.canary.thresholds.too_little == TooLittle::RollBack,
        };
        let mut finding = Finding {
            service: self.service.clone(),
            verdict,
            wanted_back,
            rolled_back: false,
            settled_back: None,
            after: now.duration_since(started),
            log_tail: None,
        };
        say(&finding.to_string());
        if wanted_back {
            finding.log_tail = Some(task_log_tail(client, &canary));
            say(&format!(
                "canary {}: the last lines task {canary} logged:",
                self.service
            ));
            for line in finding.log_tail.iter().flat_map(|t| t.lines()) {
                say(&format!("    {line}"));
            }
            say(&format!(
                "canary {}: rolling it back (docker service rollback {})",
                self.service, self.full
            ));
            match client.run(&Call::write([
                "service",
                "rollback",
                "--detach",
                self.full.as_str(),
            ])) {
                Ok(_) => finding.rolled_back = true,
                Err(e) => say(&format!(
                    "canary {}: the rollback could not be started: {e}; run `docker service rollback {}`",
                    self.service, self.full
                )),
            }
        }
        self.finding = Some(finding);
        self.state = State::Done;
    }

    /// What each version answered through the proxy since `since`: `new` (tasks started by
    /// this deploy) and `old` (tasks from before it). Only tasks not yet mapped that are new
    /// or running are inspected.
    fn look(
        &mut self,
        client: &Client<'_>,
        since: &str,
    ) -> Result<BTreeMap<String, Counts>, Error> {
        use bollard::models::TaskState;
        let unmapped: Vec<String> = self
            .tasks
            .iter()
            .filter(|t| {
                t.status.as_ref().and_then(|s| s.state) == Some(TaskState::RUNNING)
                    || t.id.as_ref().is_some_and(|id| !self.before.contains(id))
            })
            .filter_map(|t| t.id.clone())
            .filter(|id| !self.mapped.contains(id))
            .collect();
        if !unmapped.is_empty() {
            let found = match crate::commands::tasks::tasks_by_address(client, &unmapped) {
                Ok(found) => found,
                // One task Swarm no longer knows fails the whole inspect: one by one, the
                // others still give their addresses.
                Err(_) if unmapped.len() > 1 => unmapped
                    .iter()
                    .filter_map(|id| {
                        crate::commands::tasks::tasks_by_address(client, std::slice::from_ref(id))
                            .ok()
                    })
                    .flatten()
                    .collect(),
                Err(e) => return Err(e),
            };
            for id in found.values() {
                self.mapped.insert(id.clone());
            }
            self.addresses.extend(found);
        }
        let versions: BTreeMap<String, String> = self
            .addresses
            .iter()
            .map(|(address, id)| {
                let version = if self.before.contains(id) { OLD } else { NEW };
                (address.clone(), version.to_owned())
            })
            .collect();
        let text = client.run(
            &Call::read([
                "service",
                "logs",
                "--no-trunc",
                "--since",
                since,
                self.proxy.as_str(),
            ])
            .with_timeout(LOG_TIMEOUT),
        )?;
        Ok(counts_by_version(text.lines(), &versions))
    }
}

/// The update state of service `full`, as Swarm reports it now.
fn update_state(
    client: &Client<'_>,
    full: &str,
) -> Result<Option<bollard::models::ServiceUpdateStatusStateEnum>, Error> {
    let text = client.run(&Call::read(["service", "inspect", full]))?;
    let services: Vec<bollard::models::Service> = serde_json::from_str(&text).map_err(|e| {
        Error::Refused(format!(
            "docker service inspect {full}: unexpected JSON: {e}"
        ))
    })?;
    Ok(services
        .first()
        .and_then(|s| s.update_status.as_ref())
        .and_then(|s| s.state))
}

/// How many log lines of a failed canary are shown.
const LOG_LINES: usize = 5;

/// The last [`LOG_LINES`] lines task `id` logged, or why there are none.
fn task_log_tail(client: &Client<'_>, id: &str) -> String {
    let tail = LOG_LINES.to_string();
    let call = Call::read([
        "service",
        "logs",
        "--raw",
        "--no-trunc",
        "--tail",
        tail.as_str(),
        id,
    ])
    .with_timeout(LOG_TIMEOUT);
    match client.run(&call) {
        Ok(text) if !text.trim().is_empty() => text.trim_end().to_owned(),
        Ok(_) => "(it logged nothing)".to_owned(),
        Err(e) => format!("(no logs: {e})"),
    }
}

/// The version labels a gate counts under.
const NEW: &str = "new";
const OLD: &str = "old";

/// The canary's verdict on what was seen: `new` against `old` (versions).
pub fn verdict(seen: &BTreeMap<String, Counts>, new: &str, old: &str, t: &Thresholds) -> Verdict {
    let none = Counts::default();
    judge(
        seen.get(new).unwrap_or(&none),
        seen.get(old).unwrap_or(&none),
        t,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(rows: &[(&str, u16, u64)]) -> Counts {
        let mut c = Counts::default();
        for (route, status, n) in rows {
            c.add(route, *status, *n);
        }
        c
    }

    #[test]
    fn a_failed_canarys_log_tail_is_its_last_lines_or_why_there_are_none() {
        use crate::docker::fake::FakeEngine;
        let tail = |answer: Option<&str>| {
            let fake = FakeEngine::new();
            match answer {
                Some(text) => fake.answer(&["service", "logs"], text),
                None => fake.fail(&["service", "logs"], "Error: No such task: t1"),
            }
            let said = task_log_tail(&Client::new(&fake), "t1");
            assert_eq!(
                fake.command_lines(),
                ["docker service logs --raw --no-trunc --tail 5 t1"]
            );
            said
        };
        assert_eq!(tail(Some("a\npanicked at x\n\n")), "a\npanicked at x");
        assert_eq!(tail(Some("")), "(it logged nothing)");
        assert_eq!(tail(Some(" \n\n")), "(it logged nothing)");
        assert!(tail(None).starts_with("(no logs: "));
    }

    #[test]
    fn durations_as_docker_writes_them() {
        for (text, ms) in [
            ("10s", 10_000),
            ("1m30s", 90_000),
            ("1.5s", 1_500),
            ("250ms", 250),
            ("0", 0),
            ("0s", 0),
            ("1h", 3_600_000),
            (" 2s ", 2_000),
        ] {
            assert_eq!(
                parse_duration(text),
                Some(Duration::from_millis(ms)),
                "{text}"
            );
        }
        assert_eq!(parse_duration("1500us"), Some(Duration::from_micros(1500)));
        assert_eq!(parse_duration("7ns"), Some(Duration::from_nanos(7)));
        for bad in ["", "10", "s", "10x", "-1s", "1..5s", "${DELAY}", "1s2"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (format!("{LABEL_PREFIX}{k}"), (*v).to_owned()))
            .collect()
    }

    fn paced(delay: &str) -> UpdateDecl {
        UpdateDecl {
            parallelism: Some("1".into()),
            order: Some("start-first".into()),
            delay: Some(delay.into()),
        }
    }

    #[test]
    fn gate_settings_come_from_labels_with_defaults() {
        let other = BTreeMap::from([("com.example".to_owned(), "x".to_owned())]);
        assert_eq!(Canary::from_decl(&other, &UpdateDecl::default()), Ok(None));
        assert_eq!(
            Canary::from_decl(&labels(&[("window", "10s")]), &paced("10s")),
            Ok(Some(Canary {
                window: Duration::from_secs(10),
                proxy: "nginx-proxy".into(),
                thresholds: Thresholds::default(),
            }))
        );
        // parallelism left out is Swarm's default, 1.
        let unset = UpdateDecl {
            parallelism: None,
            ..paced("1m")
        };
        let all = labels(&[
            ("window", "30s"),
            ("min-requests", "20"),
            ("max-failed-ratio", "0.1"),
            ("max-times-old", "3"),
            ("too-little", "rollback"),
            ("proxy", "edge-proxy"),
        ]);
        assert_eq!(
            Canary::from_decl(&all, &unset),
            Ok(Some(Canary {
                window: Duration::from_secs(30),
                proxy: "edge-proxy".into(),
                thresholds: Thresholds {
                    min_requests: 20,
                    max_failed_ratio: 0.1,
                    max_times_old: 3.0,
                    too_little: TooLittle::RollBack,
                },
            }))
        );
        let proceed = labels(&[("window", "5s"), ("too-little", "proceed")]);
        assert_eq!(
            Canary::from_decl(&proceed, &paced("5s"))
                .unwrap()
                .unwrap()
                .thresholds
                .too_little,
            TooLittle::Proceed
        );
    }

    #[test]
    fn bad_gate_settings_say_which_label_and_why() {
        let ok = paced("10s");
        for (pairs, expected) in [
            (
                vec![("windw", "10s")],
                "unknown label stackship.canary.windw (known: window,",
            ),
            (
                vec![("min-requests", "5")],
                "stackship.canary.window is not set: it turns the gate on",
            ),
            (
                vec![("window", "10")],
                "stackship.canary.window is `10`: want a duration above zero",
            ),
            (vec![("window", "0s")], "stackship.canary.window is `0s`"),
            (
                vec![("window", "5s"), ("min-requests", "0")],
                "stackship.canary.min-requests is `0`: want a whole number of at least 1",
            ),
            (
                vec![("window", "5s"), ("min-requests", "x")],
                "stackship.canary.min-requests is `x`",
            ),
            (
                vec![("window", "5s"), ("max-failed-ratio", "1")],
                "stackship.canary.max-failed-ratio is `1`: want a share from 0 to below 1",
            ),
            (
                vec![("window", "5s"), ("max-failed-ratio", "-0.1")],
                "stackship.canary.max-failed-ratio is `-0.1`",
            ),
            (
                vec![("window", "5s"), ("max-times-old", "0.5")],
                "stackship.canary.max-times-old is `0.5`: want a number of at least 1",
            ),
            (
                vec![("window", "5s"), ("max-times-old", "inf")],
                "stackship.canary.max-times-old is `inf`",
            ),
            (
                vec![("window", "5s"), ("too-little", "maybe")],
                "stackship.canary.too-little is `maybe`: want proceed or rollback",
            ),
            (
                vec![("window", "5s"), ("proxy", "")],
                "stackship.canary.proxy is ``: want a service name",
            ),
        ] {
            let e = Canary::from_decl(&labels(&pairs), &ok).unwrap_err();
            assert!(e.contains(expected), "{pairs:?}: {e}");
        }
        let window = labels(&[("window", "10s")]);
        for (update, expected) in [
            (
                UpdateDecl {
                    parallelism: Some("2".into()),
                    ..ok.clone()
                },
                "the canary needs deploy.update_config.parallelism: 1 (one new task first), not 2",
            ),
            (
                UpdateDecl {
                    order: None,
                    ..ok.clone()
                },
                "the canary needs deploy.update_config.order: start-first (the old task serves beside it), not stop-first",
            ),
            (
                paced("9s"),
                "deploy.update_config.delay (9s) must be at least stackship.canary.window (10s)",
            ),
            (
                UpdateDecl {
                    delay: None,
                    ..ok.clone()
                },
                "deploy.update_config.delay (0s) must be at least",
            ),
            (
                paced("${DELAY}"),
                "deploy.update_config.delay is `${DELAY}`: want a duration written out",
            ),
        ] {
            let e = Canary::from_decl(&window, &update).unwrap_err();
            assert!(e.contains(expected), "{update:?}: {e}");
        }
    }

    mod gate {
        use super::super::*;
        use crate::docker::fake::FakeEngine;
        use std::time::Instant;

        fn at(t: &str) -> chrono::DateTime<chrono::Utc> {
            chrono::DateTime::parse_from_rfc3339(t).unwrap().to_utc()
        }

        fn service(state: &str, started: &str) -> bollard::models::Service {
            serde_json::from_value(serde_json::json!({
                "UpdateStatus": {"State": state, "StartedAt": started}
            }))
            .unwrap()
        }

        fn task(id: &str, state: &str, desired: &str) -> bollard::models::Task {
            serde_json::from_value(serde_json::json!({
                "ID": id, "Status": {"State": state}, "DesiredState": desired
            }))
            .unwrap()
        }

        /// When the update before this deploy's began.
        const BEFORE: &str = "2026-12-06T19:59:59Z";
        const LATER: &str = "2026-12-06T20:00:01.5Z";

        fn gate(canary: Canary) -> Gate {
            Gate::new(
                "stackship-prod",
                "backend",
                &canary,
                ["old1".to_owned(), "old2".to_owned()].into(),
                Some(rollout_watcher::assess::ServiceBefore::of(&service(
                    "completed",
                    BEFORE,
                ))),
            )
        }

        fn canary(min_requests: u64, too_little: TooLittle) -> Canary {
            Canary {
                window: Duration::from_secs(10),
                proxy: "nginx-proxy".into(),
                thresholds: Thresholds {
                    min_requests,
                    too_little,
                    ..Thresholds::default()
                },
            }
        }

        /// One sample of the service in update `state` to `g`, at `now`; what it says goes to
        /// `said`.
        fn feed(
            g: &mut Gate,
            client: &Client<'_>,
            service: bollard::models::Service,
            tasks: &[bollard::models::Task],
            now: Instant,
            said: &mut Vec<String>,
        ) {
            g.sample(client, &service, tasks, now, at(LATER), &mut |m| {
                said.push(m.to_owned())
            });
        }

        fn tasks() -> Vec<bollard::models::Task> {
            vec![
                task("new1", "running", "running"),
                task("old1", "running", "shutdown"),
                task("old2", "running", "running"),
            ]
        }

        fn addresses(fake: &FakeEngine) {
            fake.answer(&["service", "rollback"], "stackship-prod_backend\n");
            let t = |id: &str, a: &str| serde_json::json!({"ID": id, "NetworksAttachments": [{"Network": {"Spec": {"Name": "e"}}, "Addresses": [a]}]});
            fake.answer(
                &["inspect", "--type", "task"],
                &serde_json::json!([
                    t("new1", "10.0.1.9/24"),
                    t("old1", "10.0.1.5/24"),
                    t("old2", "10.0.1.6/24")
                ])
                .to_string(),
            );
        }

        fn log(rows: &[(&str, u16, usize)]) -> String {
            rows.iter()
                .flat_map(|(addr, status, n)| {
                    std::iter::repeat_n(
                        format!("stackship-prod_nginx-proxy.1.x@vm | 1.2.3.4 [t] \"POST /api/log HTTP/1.1\" {status} 9 rid=1 upstream={addr}:8080 upstream_status={status} rt=0.001 urt=0.001 \"ua\"\n"),
                        *n,
                    )
                })
                .collect()
        }

        #[test]
        fn a_canary_failing_real_requests_is_rolled_back_as_soon_as_it_answered_enough() {
            let fake = FakeEngine::new();
            addresses(&fake);
            // The canary's own log (asked first: rules are tried in order), then the proxy's.
            fake.answer(
                &["service", "logs", "--raw"],
                "{\"level\":\"WARN\",\"error\":\"permission denied for table log_entries\"}\n",
            );
            fake.answer(
                &["service", "logs"],
                &log(&[
                    ("10.0.1.9", 500, 4),
                    ("10.0.1.9", 201, 1),
                    ("10.0.1.5", 201, 3),
                    ("10.0.1.6", 201, 3),
                    ("10.0.9.9", 500, 7),
                ]),
            );
            let mut g = gate(canary(5, TooLittle::Proceed));
            let mut said = Vec::new();
            let t0 = Instant::now();
            let client = Client::new(&fake);
            // Not yet: the new task is not running.
            let starting = vec![
                task("new1", "starting", "running"),
                task("old1", "running", "running"),
            ];
            feed(
                &mut g,
                &client,
                service("updating", LATER),
                &starting,
                t0,
                &mut said,
            );
            assert!(!g.is_watching());
            feed(
                &mut g,
                &client,
                service("updating", LATER),
                &tasks(),
                t0,
                &mut said,
            );
            assert!(g.is_watching());
            assert!(fake.calls().is_empty(), "{:?}", fake.command_lines());
            // The first look at once: enough answers, a breach.
            let t1 = t0 + Duration::from_millis(300);
            feed(
                &mut g,
                &client,
                service("updating", LATER),
                &tasks(),
                t1,
                &mut said,
            );
            assert_eq!(
                fake.command_lines(),
                vec![
                    "docker inspect --type task new1 old1 old2",
                    "docker service logs --no-trunc --since 2026-12-06T19:59:56.500Z stackship-prod_nginx-proxy",
                    "docker service logs --raw --no-trunc --tail 5 new1",
                    "docker service rollback --detach stackship-prod_backend",
                ]
            );
            let f = g.finding().unwrap();
            assert!(f.rolled_back && f.fails());
            assert_eq!(
                f.log_tail.as_deref(),
                Some("{\"level\":\"WARN\",\"error\":\"permission denied for table log_entries\"}")
            );
            assert_eq!(f.after, Duration::from_millis(300));
            let Ok(Verdict::Breach { new, old }) = &f.verdict else {
                panic!("{f:?}")
            };
            assert_eq!(
                (new.total(), new.failed(), old.total(), old.failed()),
                (5, 4, 6, 0)
            );
            assert_eq!(
                said,
                vec![
                    "canary backend: the first new task serves; judging it on real traffic (at least 5 requests, for up to 10s)",
                    "backend: canary failed real requests: new version 4 of 5 failed (80.0 %), old version 0 of 6 failed (0.0 %); most failed: POST /api/log answered 500 4 times (after 0.3s)",
                    "canary backend: the last lines task new1 logged:",
                    "    {\"level\":\"WARN\",\"error\":\"permission denied for table log_entries\"}",
                    "canary backend: rolling it back (docker service rollback stackship-prod_backend)",
                ]
            );
            assert!(!g.is_watching());
            // Judged once: later samples ask nothing.
            feed(
                &mut g,
                &client,
                service("rollback_started", LATER),
                &tasks(),
                t1 + Duration::from_secs(5),
                &mut said,
            );
            assert_eq!(fake.calls().len(), 4);
            assert_eq!(said.len(), 5);
        }

        #[test]
        fn a_quiet_canary_is_judged_at_the_window_s_end_as_set() {
            for (too_little, rolled_back) in
                [(TooLittle::Proceed, false), (TooLittle::RollBack, true)]
            {
                let fake = FakeEngine::new();
                addresses(&fake);
                fake.answer(&["service", "logs"], &log(&[("10.0.1.9", 201, 2)]));
                let mut g = gate(canary(50, too_little));
                let client = Client::new(&fake);
                let mut said = Vec::new();
                let t0 = Instant::now();
                let mut at_time = |g: &mut Gate, secs: u64| {
                    feed(
                        g,
                        &client,
                        service("updating", LATER),
                        &tasks(),
                        t0 + Duration::from_secs(secs),
                        &mut said,
                    );
                };
                at_time(&mut g, 0);
                at_time(&mut g, 0);
                at_time(&mut g, 1);
                at_time(&mut g, 2);
                assert!(g.is_watching());
                // Looked at 0, 1 and 2 s (every LOOK_EVERY), then at the window's end.
                at_time(&mut g, 10);
                assert!(!g.is_watching());
                let logs = fake
                    .command_lines()
                    .iter()
                    .filter(|l| l.starts_with("docker service logs --no-trunc --since"))
                    .count();
                assert_eq!(logs, 4);
                // Every task had an address at the first look: inspected once.
                let inspects = fake
                    .command_lines()
                    .iter()
                    .filter(|l| l.starts_with("docker inspect --type task"))
                    .count();
                assert_eq!(inspects, 1);
                let f = g.finding().unwrap();
                assert!(
                    matches!(f.verdict, Ok(Verdict::TooLittleTraffic { .. })),
                    "{f:?}"
                );
                assert_eq!((f.rolled_back, f.fails()), (rolled_back, rolled_back));
                assert_eq!(
                    fake.command_lines()
                        .iter()
                        .any(|l| l.contains("service rollback")),
                    rolled_back
                );
                assert!(said[1].contains("too little traffic to judge the canary: the new version answered 2 requests, the old 0"), "{said:?}");
            }
        }

        #[test]
        fn a_canary_still_watched_when_the_rollout_settled_is_judged_to_the_window_s_end() {
            let fake = FakeEngine::new();
            addresses(&fake);
            fake.answer(&["service", "logs"], &log(&[("10.0.1.9", 201, 2)]));
            let client = Client::new(&fake);
            let t0 = Instant::now();
            let mut said = Vec::new();
            let mut g = gate(canary(50, TooLittle::Proceed));
            // Not watched: finish does nothing.
            g.finish(&client, &mut |_| panic!("waited"), &mut |m| {
                said.push(m.to_owned())
            });
            assert!(said.is_empty() && g.finding().is_none());
            feed(
                &mut g,
                &client,
                service("updating", LATER),
                &tasks(),
                t0,
                &mut said,
            );
            feed(
                &mut g,
                &client,
                service("completed", LATER),
                &tasks(),
                t0 + Duration::from_secs(3),
                &mut said,
            );
            assert!(g.is_watching());
            let mut waits = Vec::new();
            g.finish(
                &client,
                &mut |until| {
                    waits.push(until.duration_since(t0).as_secs());
                    Some(until)
                },
                &mut |m| said.push(m.to_owned()),
            );
            // Looked at 3 s, then every second to the window's end.
            assert_eq!(waits, (4..=10).collect::<Vec<_>>());
            assert_eq!(
                said[1],
                "canary backend: the rollout settled; judging it on real traffic for up to 6s more"
            );
            let f = g.finding().unwrap();
            assert!(
                matches!(f.verdict, Ok(Verdict::TooLittleTraffic { .. })),
                "{f:?}"
            );
            assert_eq!(
                (f.fails(), f.rolled_back, &f.settled_back),
                (false, false, &None)
            );
            // Interrupted: judged nothing, and no longer watched.
            let mut g = gate(canary(50, TooLittle::Proceed));
            feed(
                &mut g,
                &client,
                service("updating", LATER),
                &tasks(),
                t0,
                &mut said,
            );
            g.finish(&client, &mut |_| None, &mut |m| said.push(m.to_owned()));
            assert!(!g.is_watching() && g.finding().is_none() && g.interrupted());
            assert_eq!(
                said.last().unwrap(),
                "canary backend: interrupted before it was judged"
            );
        }

        #[test]
        fn after_the_rollout_settled_a_replaced_canary_is_counted_too() {
            let fake = FakeEngine::new();
            // The canary new1 crashed after the rollout settled; Swarm runs new2 in its place.
            fake.answer(
                &["service", "ps"],
                concat!(
                    r#"{"ID":"new2","Name":"stackship-prod_backend.1","DesiredState":"Running","CurrentState":"Running 1 second ago"}"#,
                    "\n",
                    r#"{"ID":"new1","Name":"stackship-prod_backend.1","DesiredState":"Shutdown","CurrentState":"Failed 3 seconds ago"}"#,
                    "\n",
                    r#"{"ID":"old2","Name":"stackship-prod_backend.2","DesiredState":"Running","CurrentState":"Running 1 minute ago"}"#,
                    "\n"
                ),
            );
            fake.answer(
                &["inspect", "--type", "task", "new2"],
                &serde_json::json!([
                    {"ID": "new2", "NetworksAttachments": [{"Network": {"Spec": {"Name": "e"}}, "Addresses": ["10.0.1.10/24"]}]},
                    {"ID": "old2", "NetworksAttachments": [{"Network": {"Spec": {"Name": "e"}}, "Addresses": ["10.0.1.6/24"]}]}
                ])
                .to_string(),
            );
            fake.answer(&["service", "logs", "--raw"], "panicked at handler\n");
            fake.answer(&["service", "logs"], &log(&[("10.0.1.10", 500, 9)]));
            fake.answer(&["service", "rollback"], "");
            fake.answer(
                &["service", "inspect"],
                &serde_json::json!([{"UpdateStatus": {"State": "rollback_completed"}}]).to_string(),
            );
            let client = Client::new(&fake);
            let t0 = Instant::now();
            let mut said = Vec::new();
            let mut g = gate(canary(5, TooLittle::Proceed));
            // The watch's last sample: new1 serves (it was inspected by no look yet).
            feed(
                &mut g,
                &client,
                service("updating", LATER),
                &tasks(),
                t0,
                &mut said,
            );
            g.finish(&client, &mut Some, &mut |m| said.push(m.to_owned()));
            let f = g.finding().unwrap();
            assert!(f.fails() && f.rolled_back, "{said:?}");
            assert!(
                fake.command_lines()
                    .contains(&"docker inspect --type task new2 new1 old2".to_owned()),
                "{:?}",
                fake.command_lines()
            );
            let Ok(Verdict::Breach { new, .. }) = &f.verdict else {
                panic!("{f:?}")
            };
            assert_eq!((new.total(), new.failed()), (9, 9));
        }

        #[test]
        fn a_read_failing_at_the_window_s_end_keeps_what_earlier_looks_counted() {
            let fake = FakeEngine::new();
            addresses(&fake);
            fake.answer_once(&["service", "logs"], &log(&[("10.0.1.9", 201, 2)]));
            fake.fail(&["service", "logs"], "error from daemon: node is down");
            let client = Client::new(&fake);
            let t0 = Instant::now();
            let mut said = Vec::new();
            let mut g = gate(canary(50, TooLittle::RollBack));
            for secs in [0, 0, 1, 10] {
                feed(
                    &mut g,
                    &client,
                    service("updating", LATER),
                    &tasks(),
                    t0 + Duration::from_secs(secs),
                    &mut said,
                );
            }
            let f = g.finding().unwrap();
            let Ok(Verdict::TooLittleTraffic { new, .. }) = &f.verdict else {
                panic!("{f:?}")
            };
            assert_eq!(new.total(), 2);
        }

        #[test]
        fn a_task_swarm_no_longer_knows_does_not_hide_the_others() {
            let fake = FakeEngine::new();
            fake.fail(
                &["inspect", "--type", "task", "new1", "gone"],
                "Error: No such task: gone",
            );
            fake.fail(
                &["inspect", "--type", "task", "gone"],
                "Error: No such task: gone",
            );
            addresses(&fake);
            fake.answer(&["service", "logs", "--raw"], "error\n");
            fake.answer(&["service", "logs"], &log(&[("10.0.1.9", 500, 9)]));
            let client = Client::new(&fake);
            let t0 = Instant::now();
            let mut said = Vec::new();
            let mut g = gate(canary(5, TooLittle::Proceed));
            let tasks = vec![
                task("new1", "running", "running"),
                task("gone", "failed", "shutdown"),
                task("old2", "running", "running"),
            ];
            for _ in 0..2 {
                feed(
                    &mut g,
                    &client,
                    service("updating", LATER),
                    &tasks,
                    t0,
                    &mut said,
                );
            }
            let f = g.finding().unwrap();
            assert!(f.fails() && f.rolled_back, "{said:?}");
            let lines = fake.command_lines();
            assert!(
                lines.contains(&"docker inspect --type task new1".to_owned())
                    && lines.contains(&"docker inspect --type task old2".to_owned()),
                "{lines:?}"
            );
        }

        #[test]
        fn a_lone_task_whose_address_cannot_be_read_makes_the_look_fail() {
            let fake = FakeEngine::new();
            fake.fail(
                &["inspect", "--type", "task", "new1"],
                "Error: No such task: new1",
            );
            addresses(&fake);
            fake.answer(&["service", "logs"], &log(&[("10.0.1.9", 500, 9)]));
            let client = Client::new(&fake);
            let t0 = Instant::now();
            let mut said = Vec::new();
            let mut g = gate(canary(5, TooLittle::Proceed));
            let tasks = vec![task("new1", "running", "running")];
            for secs in [0, 0, 10] {
                feed(
                    &mut g,
                    &client,
                    service("updating", LATER),
                    &tasks,
                    t0 + Duration::from_secs(secs),
                    &mut said,
                );
            }
            // Not "too little traffic": the answers could not be counted, and why.
            let f = g.finding().unwrap();
            let Err(why) = &f.verdict else {
                panic!("{f:?}")
            };
            assert!(why.contains("No such task: new1"), "{why}");
        }

        #[test]
        fn a_failed_look_is_tried_again_a_second_later_not_at_once() {
            let fake = FakeEngine::new();
            addresses(&fake);
            fake.fail(&["service", "logs"], "error from daemon: node is down");
            let client = Client::new(&fake);
            let t0 = Instant::now();
            let mut said = Vec::new();
            let mut g = gate(canary(5, TooLittle::Proceed));
            let reads = |fake: &FakeEngine| {
                fake.command_lines()
                    .iter()
                    .filter(|l| l.starts_with("docker service logs"))
                    .count()
            };
            for ms in [0, 0, 500] {
                feed(
                    &mut g,
                    &client,
                    service("updating", LATER),
                    &tasks(),
                    t0 + Duration::from_millis(ms),
                    &mut said,
                );
            }
            assert_eq!(reads(&fake), 1);
            feed(
                &mut g,
                &client,
                service("updating", LATER),
                &tasks(),
                t0 + LOOK_EVERY,
                &mut said,
            );
            assert_eq!(reads(&fake), 2);
        }

        #[test]
        fn a_rollback_after_the_rollout_settled_is_followed_to_its_end() {
            let inspected =
                |state: &str| serde_json::json!([{"UpdateStatus": {"State": state}}]).to_string();
            for (states, wanted) in [
                (vec!["rollback_started", "rollback_completed"], Ok(())),
                (
                    vec!["rollback_started", "rollback_paused"],
                    Err("Swarm paused the rollback".to_owned()),
                ),
                (
                    vec!["rollback_started"; 200],
                    Err(
                        "the rollback had not finished after 180s (update state: rollback_started)"
                            .to_owned(),
                    ),
                ),
            ] {
                let fake = FakeEngine::new();
                addresses(&fake);
                fake.answer(&["service", "logs"], &log(&[("10.0.1.9", 500, 9)]));
                for state in &states {
                    fake.answer_once(&["service", "inspect"], &inspected(state));
                }
                let client = Client::new(&fake);
                let t0 = Instant::now();
                let mut said = Vec::new();
                let mut g = gate(canary(5, TooLittle::Proceed));
                feed(
                    &mut g,
                    &client,
                    service("updating", LATER),
                    &tasks(),
                    t0,
                    &mut said,
                );
                // A clock running a second per wait, from the start of the window.
                let mut clock = t0;
                g.finish(
                    &client,
                    &mut |until| {
                        clock = until.max(clock) + Duration::from_secs(1);
                        Some(clock)
                    },
                    &mut |m| said.push(m.to_owned()),
                );
                let f = g.finding().unwrap();
                assert!(f.fails() && f.rolled_back, "{f:?}");
                assert_eq!(f.settled_back, Some(wanted), "{said:?}");
                // Swarm is asked once per LOOK_EVERY (the clock adds a second per wait): about
                // 90 times in the 180 s, not at every step of the clock.
                let asked = fake
                    .command_lines()
                    .iter()
                    .filter(|l| l.starts_with("docker service inspect"))
                    .count();
                assert!(asked < 120, "{asked} looks");
            }
        }

        #[test]
        fn an_unreadable_log_is_retried_then_treated_as_too_little_traffic() {
            let fake = FakeEngine::new();
            addresses(&fake);
            fake.fail(&["service", "logs"], "error from daemon: node is down");
            let mut g = gate(canary(5, TooLittle::RollBack));
            let client = Client::new(&fake);
            let mut said = Vec::new();
            let t0 = Instant::now();
            for secs in [0, 0, 2, 10] {
                feed(
                    &mut g,
                    &client,
                    service("completed", LATER),
                    &tasks(),
                    t0 + Duration::from_secs(secs),
                    &mut said,
                );
            }
            let f = g.finding().unwrap();
            assert!(f.rolled_back && f.fails(), "{f:?}");
            let text = f.to_string();
            assert!(
                text.contains("backend: the canary's answers could not be counted (")
                    && text.contains("node is down")
                    && text.contains("rolled back, as set for too little traffic"),
                "{text}"
            );
            // The same without the rollback wanted: it goes on, and says so.
            let f = Finding {
                rolled_back: false,
                wanted_back: false,
                ..f.clone()
            };
            assert!(!f.fails());
            assert!(f.to_string().contains("the rollout goes on unjudged"));
        }

        #[test]
        fn no_canary_when_swarm_rolls_back_or_the_update_is_not_this_deploy_s() {
            let fake = FakeEngine::new();
            let client = Client::new(&fake);
            let t0 = Instant::now();
            let mut said = Vec::new();
            // An update that began before this deploy, or none at all: not watched.
            let mut g = gate(canary(5, TooLittle::Proceed));
            feed(
                &mut g,
                &client,
                service("updating", BEFORE),
                &tasks(),
                t0,
                &mut said,
            );
            let none: bollard::models::Service =
                serde_json::from_value(serde_json::json!({})).unwrap();
            g.sample(&client, &none, &tasks(), t0, at(LATER), &mut |m| {
                said.push(m.to_owned())
            });
            // A paused update (Swarm's healthcheck failed it) has no canary to judge either.
            feed(
                &mut g,
                &client,
                service("paused", LATER),
                &tasks(),
                t0,
                &mut said,
            );
            assert!(!g.is_watching());
            // Swarm rolls back by itself while the canary is watched: it stands down.
            feed(
                &mut g,
                &client,
                service("updating", LATER),
                &tasks(),
                t0,
                &mut said,
            );
            assert!(g.is_watching());
            feed(
                &mut g,
                &client,
                service("rollback_started", LATER),
                &tasks(),
                t0,
                &mut said,
            );
            assert!(!g.is_watching() && g.finding().is_none());
            assert_eq!(
                said.last().unwrap(),
                "canary backend: Swarm rolls the update back by itself; not judged"
            );
            assert!(fake.calls().is_empty());
            // Waiting when Swarm rolls back: done, silently.
            let mut g = gate(canary(5, TooLittle::Proceed));
            feed(
                &mut g,
                &client,
                service("rollback_completed", LATER),
                &tasks(),
                t0,
                &mut said,
            );
            feed(
                &mut g,
                &client,
                service("updating", LATER),
                &tasks(),
                t0,
                &mut said,
            );
            assert!(!g.is_watching());
            assert_eq!(said.len(), 2);
        }

        #[test]
        fn a_rollback_that_cannot_start_leaves_a_failing_finding() {
            let fake = FakeEngine::new();
            // Rules are tried in order: this one before the answer `addresses` gives.
            fake.fail(
                &["service", "rollback"],
                "rpc error: update out of sequence",
            );
            addresses(&fake);
            fake.answer(&["service", "logs"], &log(&[("10.0.1.9", 502, 6)]));
            let mut g = gate(canary(5, TooLittle::Proceed));
            let client = Client::new(&fake);
            let mut said = Vec::new();
            let t0 = Instant::now();
            for _ in 0..2 {
                feed(
                    &mut g,
                    &client,
                    service("updating", LATER),
                    &tasks(),
                    t0,
                    &mut said,
                );
            }
            let f = g.finding().unwrap();
            assert!(!f.rolled_back && f.fails(), "{f:?}");
            assert!(
                said.last()
                    .unwrap()
                    .contains("the rollback could not be started: ")
                    && said.last().unwrap().contains("update out of sequence"),
                "{said:?}"
            );
        }
    }

    const LOGGED: &str = "2026-12-06T19:40:46.123456789Z stackship-prod_nginx-proxy.1.k3x9@vm    | 172.18.0.1 [2026-12-06T19:40:46+00:00] \"GET /api/logs?before=5&limit=20 HTTP/1.1\" 200 512 rid=4f2a upstream=10.0.1.5:8080 upstream_status=200 rt=0.003 urt=0.003 \"curl/7.88.1\"";

    #[test]
    fn an_access_line_gives_each_upstream_answer() {
        assert_eq!(
            parse_access(LOGGED),
            vec![Answered {
                upstream: "10.0.1.5:8080".into(),
                route: "GET /api/logs".into(),
                status: 200
            }]
        );
        // nginx tried two tasks: the first refused (502), the second answered.
        let retried = "172.18.0.1 [t] \"POST /api/log HTTP/1.1\" 201 40 rid=1 upstream=10.0.1.5:8080, 10.0.1.6:8080 upstream_status=502, 201 rt=0.010 urt=0.001, 0.009 \"ua\"";
        assert_eq!(
            parse_access(retried)
                .iter()
                .map(|a| format!("{} {} {}", a.upstream, a.route, a.status))
                .collect::<Vec<_>>(),
            [
                "10.0.1.5:8080 POST /api/log 502",
                "10.0.1.6:8080 POST /api/log 201"
            ]
        );
        // An internal redirect's second group.
        let redirected = "x [t] \"GET /a HTTP/1.1\" 500 1 rid=1 upstream=10.0.1.5:8080 : 10.0.1.7:8080 upstream_status=404 : 500 rt=0.1 urt=0.1 \"ua\"";
        assert_eq!(parse_access(redirected).len(), 2);
        assert_eq!(parse_access(redirected)[1].status, 500);
    }

    #[test]
    fn lines_without_an_upstream_answer_give_none() {
        for line in [
            // nginx answered itself (a redirect, a static 404).
            "x [t] \"GET /old HTTP/1.1\" 301 0 rid=1 upstream=- upstream_status=- rt=0.000 urt=- \"ua\"",
            // A bad request line.
            "x [t] \"\\x16\\x03\" 400 0 rid=1 upstream=- upstream_status=- rt=0.000 urt=- \"-\"",
            // Not an access line at all.
            "2026/12/06 19:40:46 [notice] 1#1: signal process started",
            "",
        ] {
            assert_eq!(parse_access(line), vec![], "{line}");
        }
        // A path that is not a path, or no status for the attempt: skipped.
        assert!(parse_access("x [t] \"GET * HTTP/1.1\" 200 0 rid=1 upstream=10.0.1.5:8080 upstream_status=200 rt=0 urt=0 \"ua\"").is_empty());
        assert!(parse_access("x [t] \"GET / HTTP/1.1\" 504 0 rid=1 upstream=10.0.1.5:8080 upstream_status=- rt=0 urt=0 \"ua\"").is_empty());
    }

    #[test]
    fn answers_are_counted_per_version_of_the_task_that_gave_them() {
        let line = |upstream: &str, status: &str, path: &str| {
            format!(
                "x [t] \"GET {path} HTTP/1.1\" 200 1 rid=1 upstream={upstream} upstream_status={status} rt=0 urt=0 \"ua\""
            )
        };
        let lines = [
            line("10.0.1.5:8080", "200", "/api/logs"),
            line("10.0.1.5:8080", "500", "/api/logs"),
            line("10.0.1.6:8080", "200", "/api/logs?x=1"),
            line("10.0.1.5:8080, 10.0.1.6:8080", "502, 200", "/api/logs"),
            // The frontend's task, and nginx's own answer: not counted.
            line("10.0.1.9:8080", "200", "/"),
            line("-", "-", "/"),
        ];
        let versions: BTreeMap<String, String> = [
            ("10.0.1.5".to_owned(), "new".to_owned()),
            ("10.0.1.6".to_owned(), "old".to_owned()),
        ]
        .into();
        let by = counts_by_version(lines.iter().map(String::as_str), &versions);
        assert_eq!(
            by,
            [
                (
                    "new".to_owned(),
                    counts(&[
                        ("GET /api/logs", 200, 1),
                        ("GET /api/logs", 500, 1),
                        ("GET /api/logs", 502, 1)
                    ])
                ),
                ("old".to_owned(), counts(&[("GET /api/logs", 200, 2)])),
            ]
            .into()
        );
    }

    #[test]
    fn counts_add_up_and_only_5xx_fail() {
        let c = counts(&[
            ("GET /api/logs", 200, 90),
            ("GET /api/logs", 404, 5),
            ("POST /api/log", 503, 3),
            ("POST /api/log", 500, 2),
            ("POST /api/log", 200, 0),
        ]);
        assert_eq!((c.total(), c.failed()), (100, 5));
        assert!((c.failed_ratio() - 0.05).abs() < 1e-12);
        assert_eq!(Counts::default().failed_ratio(), 0.0);
        assert_eq!(c.worst(), Some(("POST /api/log", 503, 3)));
        // A tie goes to the first route and status in order.
        let tie = counts(&[("B", 500, 2), ("A", 502, 2), ("A", 500, 2)]);
        assert_eq!(tie.worst(), Some(("A", 500, 2)));
        assert_eq!(counts(&[("A", 200, 9), ("A", 404, 1)]).worst(), None);
    }

    #[test]
    fn a_window_is_the_difference_of_two_samples_and_a_reset_counts_from_zero() {
        let before = counts(&[("A", 200, 100), ("A", 500, 4), ("B", 200, 50)]);
        let after = counts(&[("A", 200, 130), ("A", 500, 4), ("B", 200, 7), ("C", 503, 2)]);
        assert_eq!(
            after.since(&before),
            counts(&[("A", 200, 30), ("B", 200, 7), ("C", 503, 2)])
        );
        assert_eq!(after.since(&Counts::default()), after);
    }

    #[test]
    fn a_new_version_failing_one_route_is_a_breach_that_names_it() {
        let new = counts(&[("GET /api/logs", 200, 60), ("POST /api/log", 500, 40)]);
        let old = counts(&[("GET /api/logs", 200, 300), ("POST /api/log", 201, 200)]);
        let v = judge(&new, &old, &Thresholds::default());
        assert!(v.rolls_back());
        assert_eq!(
            v.to_string(),
            "canary failed real requests: new version 40 of 100 failed (40.0 %), old version 0 of 500 failed (0.0 %); most failed: POST /api/log answered 500 40 times"
        );
    }

    #[test]
    fn failing_like_the_old_version_is_not_the_release_s_fault() {
        // A database outage: both versions answer 503 alike.
        let new = counts(&[("POST /api/log", 503, 30), ("POST /api/log", 201, 70)]);
        let old = counts(&[("POST /api/log", 503, 90), ("POST /api/log", 201, 210)]);
        let v = judge(&new, &old, &Thresholds::default());
        assert!(matches!(v, Verdict::Healthy { .. }), "{v}");
        assert!(!v.rolls_back());
        // Twice the old ratio and above the absolute limit: a breach. Exactly twice: not yet.
        let t = Thresholds::default();
        let old = counts(&[("A", 500, 10), ("A", 200, 190)]); // 5 %
        let at_twice = counts(&[("A", 500, 10), ("A", 200, 90)]); // 10 %
        assert!(!judge(&at_twice, &old, &t).rolls_back());
        let above = counts(&[("A", 500, 11), ("A", 200, 89)]); // 11 %
        assert!(judge(&above, &old, &t).rolls_back());
    }

    #[test]
    fn the_absolute_limit_is_exclusive_and_an_idle_old_version_is_no_reference() {
        let t = Thresholds::default();
        let at_limit = counts(&[("A", 500, 5), ("A", 200, 95)]);
        assert!(!judge(&at_limit, &Counts::default(), &t).rolls_back());
        let above = counts(&[("A", 500, 6), ("A", 200, 94)]);
        // The old version answered too little to compare with: the absolute limit decides.
        let idle_old = counts(&[("A", 500, 10), ("A", 200, 39)]);
        assert!(judge(&above, &idle_old, &t).rolls_back());
        // With enough old traffic at a higher rate, the same share is no breach.
        let busy_old = counts(&[("A", 500, 10), ("A", 200, 40)]);
        assert!(!judge(&above, &busy_old, &t).rolls_back());
    }

    #[test]
    fn too_little_traffic_is_said_and_goes_the_way_it_is_set() {
        let new = counts(&[("A", 500, 49)]);
        let old = counts(&[("A", 200, 400)]);
        let v = judge(&new, &old, &Thresholds::default());
        assert!(!v.rolls_back());
        assert_eq!(
            v.to_string(),
            "too little traffic to judge the canary: the new version answered 49 requests, the old 400; the rollout goes on unjudged"
        );
        let strict = Thresholds {
            too_little: TooLittle::RollBack,
            ..Thresholds::default()
        };
        let v = judge(&new, &old, &strict);
        assert!(v.rolls_back());
        assert!(v.to_string().ends_with("rolling back, as set"), "{v}");
        // Exactly the minimum is enough to judge.
        let v = judge(&counts(&[("A", 200, 50)]), &old, &strict);
        assert_eq!(
            v.to_string(),
            "canary healthy: new version 0 of 50 failed (0.0 %), old version 0 of 400 failed (0.0 %)"
        );
    }
}
