//! `stackship logs ENV [SERVICE]`: the logs of every task of the environment's services (or of
//! one), each line tagged with its task — `backend.1`, the task id's first 12 characters, the
//! node — and the version the task runs (its image's tag), so the lines of the old and the new
//! release tell apart during and after a deploy.
//!
//! Underneath: `docker service logs --timestamps --no-trunc` per service, read line by line.
//! Its lines are `<time> <stack>_<service>.<slot>.<task id>@<node><padding>    | <message>`
//! (the task's standard error comes on the command's); `docker service ps --no-trunc` maps
//! each task id to its image. Services are read one after another; with `--follow`, side by
//! side, their lines merged as they come, until Ctrl-C. A read Docker ends with "incomplete
//! log stream" (tasks kept of nodes gone or down) printed all it could and says so: the
//! command goes on with the next service.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::ops::ControlFlow;
use std::time::Duration;

use rollout_watcher::history::DeployRecord;

use super::tasks::{self, Task};
use crate::docker::{Call, Client, DockerError, Stream, Streamed};
use crate::error::Error;
use crate::exit::Outcome;
use crate::layout::EnvDir;

/// Lines per task when neither `--since` nor `--since-deploy` says where to start (as `kamal
/// app logs`).
pub const DEFAULT_TAIL: &str = "100";

/// How long reading a service's logs to their end may take (a node that stopped answering
/// would otherwise hold the command).
pub const READ_TIMEOUT: Duration = Duration::from_secs(600);

/// What `stackship logs` is asked.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct LogsArgs {
    /// dev, prod, ...
    pub env: String,
    /// Only this service (default: every service of the environment).
    pub service: Option<String>,
    /// Start at this deploy: an id from `stackship history ENV`, or a unique beginning of one.
    /// The logs start when that deploy ran `docker stack deploy` (the record's start), so the
    /// new tasks' first lines are in.
    #[arg(long, value_name = "ID", conflicts_with = "since")]
    pub since_deploy: Option<String>,
    /// Start this long ago (42m, 3h) or at this time (2026-12-06T01:02:03Z, UTC).
    #[arg(long, value_name = "DURATION|TIME")]
    pub since: Option<String>,
    /// Lines per task, counted from the end, or `all` (default: 100 without --since or
    /// --since-deploy, else all).
    #[arg(long, short = 'n', value_name = "N", value_parser = tail_value)]
    pub tail: Option<String>,
    /// Keep printing new lines as they come, until Ctrl-C.
    #[arg(long, short = 'f')]
    pub follow: bool,
}

fn tail_value(s: &str) -> Result<String, String> {
    if s == "all" || s.parse::<u64>().is_ok() {
        Ok(s.to_owned())
    } else {
        Err("a number of lines, or all".to_owned())
    }
}

/// At most a few ids, and how many more there are.
fn some_of(ids: &[&str]) -> String {
    const SHOWN: usize = 8;
    let mut text = ids
        .iter()
        .take(SHOWN)
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    if ids.len() > SHOWN {
        text.push_str(&format!(" and {} more", ids.len() - SHOWN));
    }
    text
}

/// The record `want` names in `records` (oldest first, as read): the one with that id, else
/// the only one whose id begins with it. Otherwise the error names the candidates, newest first.
pub fn find_deploy<'a>(
    records: &'a [DeployRecord],
    want: &str,
    env: &str,
) -> Result<&'a DeployRecord, Error> {
    if let Some(exact) = records.iter().find(|r| r.id == want) {
        return Ok(exact);
    }
    let matches: Vec<&DeployRecord> = records
        .iter()
        .rev()
        .filter(|r| !want.is_empty() && r.id.starts_with(want))
        .collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] if records.is_empty() => Err(Error::Refused(format!(
            "no deploy recorded for {env} yet: --since-deploy has nothing to start at"
        ))),
        [] => {
            let newest: Vec<&str> = records.iter().rev().map(|r| r.id.as_str()).collect();
            Err(Error::Refused(format!(
                "no deploy '{want}' in {env}'s history; the latest: {} (see stackship history {env})",
                some_of(&newest)
            )))
        }
        many => {
            let ids: Vec<&str> = many.iter().map(|r| r.id.as_str()).collect();
            Err(Error::Refused(format!(
                "deploy '{want}' is ambiguous in {env}'s history: {} records begin so: {}",
                ids.len(),
                some_of(&ids)
            )))
        }
    }
}

/// Where a deploy's logs begin: when its deploy stage began (the record's `started`), or, for
/// a record without one, its id (when the rollout ended: its first lines are missed).
pub fn since_record(record: &DeployRecord) -> Result<String, Error> {
    match &record.started {
        Some(started) => chrono::DateTime::parse_from_rfc3339(started)
            .map(|t| crate::commands::deploy::rfc3339_millis(t.to_utc()))
            .map_err(|_| {
                Error::Refused(format!(
                    "deploy record {}: its start '{started}' is not an RFC 3339 time",
                    record.id
                ))
            }),
        None => since_of(&record.id),
    }
}

/// A record id (`20261206T010203.456Z`, UTC) as `docker service logs --since` takes a time
/// (`2026-12-06T01:02:03.456Z`).
pub fn since_of(id: &str) -> Result<String, Error> {
    let time = chrono::NaiveDateTime::parse_from_str(id, "%Y%m%dT%H%M%S%.fZ").map_err(|_| {
        Error::Refused(format!(
            "deploy record {id}: its id is not a time (YYYYMMDDTHHMMSS.mmmZ)"
        ))
    })?;
    Ok(time.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
}

/// `docker service logs` of one service (`<stack>_<service>`).
pub fn logs_call(service: &str, since: Option<&str>, tail: Option<&str>, follow: bool) -> Call {
    let mut args: Vec<String> = ["service", "logs", "--timestamps", "--no-trunc"]
        .map(str::to_owned)
        .into();
    if let Some(since) = since {
        args.extend(["--since".to_owned(), since.to_owned()]);
    }
    if let Some(tail) = tail {
        args.extend(["--tail".to_owned(), tail.to_owned()]);
    }
    if follow {
        args.push("--follow".to_owned());
    }
    args.push(service.to_owned());
    // Followed logs end when the user stops them: no deadline.
    Call::read(args).with_timeout(if follow { Duration::MAX } else { READ_TIMEOUT })
}

/// One line of `docker service logs --timestamps --no-trunc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    pub time: &'a str,
    /// `stackship-prod_backend.1`.
    pub task: &'a str,
    /// The whole task id.
    pub id: &'a str,
    pub node: &'a str,
    pub message: &'a str,
}

/// `line` read as a log line, or None (a warning or error of docker's own).
pub fn parse(line: &str) -> Option<Entry<'_>> {
    let (time, rest) = line.split_once(' ')?;
    chrono::DateTime::parse_from_rfc3339(time).ok()?;
    let bar = rest.find(" |")?;
    let context = rest[..bar].trim_end();
    if context.contains(' ') {
        return None;
    }
    let after = &rest[bar + 2..];
    let (task, node) = context.split_once('@')?;
    let (task, id) = task.rsplit_once('.')?;
    if task.is_empty() || id.is_empty() {
        return None;
    }
    Some(Entry {
        time,
        task,
        id,
        node,
        message: after.strip_prefix(' ').unwrap_or(after),
    })
}

/// What each task's lines are tagged with.
#[derive(Debug, Clone, Default)]
pub struct Tags {
    stack: String,
    /// Task id to version.
    versions: BTreeMap<String, String>,
    /// The widest tag of the running tasks and of those printed, for the messages to line up
    /// (not of every task kept: one of a node gone shows the node's id).
    width: usize,
}

fn label(name: &str, id: &str, node: &str, version: &str) -> String {
    let short: String = id.chars().take(12).collect();
    format!("{name} {short}@{node} {version}")
}

impl Tags {
    pub fn new(stack: &str, tasks: &[Task]) -> Self {
        let mut tags = Self {
            stack: stack.to_owned(),
            ..Self::default()
        };
        tags.learn(tasks);
        tags
    }

    /// Adds (or updates) these tasks.
    pub fn learn(&mut self, tasks: &[Task]) {
        for t in tasks {
            let version = tasks::version(&t.image);
            if t.running() {
                self.width = self
                    .width
                    .max(label(&t.name(), &t.id, &t.node, &version).len());
            }
            self.versions.insert(t.id.clone(), version);
        }
    }

    /// The version task `id` runs, when known.
    pub fn version(&self, id: &str) -> Option<&str> {
        self.versions.get(id).map(String::as_str)
    }

    /// The service (without the stack prefix) of a line's task.
    pub fn service_of<'a>(&self, entry: &Entry<'a>) -> Option<&'a str> {
        let name = entry.task.strip_prefix(&format!("{}_", self.stack))?;
        Some(name.rsplit_once('.')?.0)
    }

    /// `<time> backend.1 0123456789ab@node-1 20261206_0123abcd | message` (`?`: a version
    /// not known).
    pub fn line(&mut self, entry: &Entry<'_>) -> String {
        let name = entry
            .task
            .strip_prefix(&format!("{}_", self.stack))
            .unwrap_or(entry.task);
        let tag = label(
            name,
            entry.id,
            entry.node,
            self.version(entry.id).unwrap_or("?"),
        );
        self.width = self.width.max(tag.len());
        format!(
            "{} {tag:<width$} | {}",
            entry.time,
            entry.message,
            width = self.width
        )
    }
}

/// Writes the lines of a stream, tagged.
struct Printer<'o> {
    out: &'o mut dyn Write,
    tags: Tags,
    /// Tasks already looked up again (one that appeared after the start, during a deploy).
    looked_up: BTreeSet<String>,
    /// Set when the output is gone (`| head` ended) or failed: nothing more to do.
    done: bool,
    failed: Option<std::io::Error>,
    /// A read that failed (it ends the command).
    error: Option<DockerError>,
}

/// Docker's end of a read of a service with tasks on nodes that are gone or down: every line
/// it could get was printed, and so was this warning.
pub fn incomplete(e: &DockerError) -> bool {
    matches!(e, DockerError::Failed { stderr, .. } if stderr.contains("incomplete log stream"))
}

impl Printer<'_> {
    fn take(&mut self, client: &Client<'_>, event: Streamed<'_>) -> ControlFlow<()> {
        match event {
            Streamed::Line(stream, line) => self.line(client, stream, line),
            Streamed::Ended(Ok(())) => ControlFlow::Continue(()),
            Streamed::Ended(Err(e)) if incomplete(&e) => ControlFlow::Continue(()),
            Streamed::Ended(Err(e)) => {
                self.error = Some(e);
                self.done = true;
                ControlFlow::Break(())
            }
        }
    }

    fn line(&mut self, client: &Client<'_>, stream: Stream, line: &str) -> ControlFlow<()> {
        let text = match parse(line) {
            Some(entry) => {
                if self.tags.version(entry.id).is_none()
                    && self.looked_up.insert(entry.id.to_owned())
                    && let Some(service) = self.tags.service_of(&entry)
                {
                    // A task younger than the start: its image is asked once (a failure
                    // leaves it `?`).
                    let stack = self.tags.stack.clone();
                    if let Ok(found) = tasks::tasks(client, &stack, &[service.to_owned()]) {
                        self.tags.learn(&found);
                    }
                }
                self.tags.line(&entry)
            }
            None if stream == Stream::Stderr => {
                // Docker's own words (a warning, the error it ends with): where they belong.
                if !line.trim().is_empty() {
                    eprintln!("{line}");
                }
                return ControlFlow::Continue(());
            }
            None => line.to_owned(),
        };
        match writeln!(self.out, "{text}") {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                if e.kind() != std::io::ErrorKind::BrokenPipe {
                    self.failed = Some(e);
                }
                self.done = true;
                ControlFlow::Break(())
            }
        }
    }
}

/// Runs `stackship logs`: lines to `out`; `stop` (Ctrl-C) ends a follow.
pub fn run(
    client: &Client<'_>,
    dir: &EnvDir,
    args: &LogsArgs,
    out: &mut dyn Write,
    stop: &dyn Fn() -> bool,
) -> Result<Outcome, Error> {
    let since = match (&args.since_deploy, &args.since) {
        (Some(want), _) => {
            let records = rollout_watcher::history::read_all(&dir.history())
                .map_err(|e| Error::Records(format!("{e:#}")))?;
            Some(since_record(find_deploy(&records, want, &dir.env)?)?)
        }
        (None, since) => since.clone(),
    };
    let tail = match (&args.tail, &since) {
        (Some(tail), _) => Some(tail.clone()),
        (None, None) => Some(DEFAULT_TAIL.to_owned()),
        (None, Some(_)) => None,
    };
    let all = tasks::services(client, dir)?;
    let services = match &args.service {
        Some(wanted) => vec![tasks::pick(&all, wanted, dir)?.to_owned()],
        None => all,
    };
    let stack = dir.stack();
    let known = tasks::tasks(client, &stack, &services)?;
    let calls: Vec<Call> = services
        .iter()
        .map(|s| {
            logs_call(
                &format!("{stack}_{s}"),
                since.as_deref(),
                tail.as_deref(),
                args.follow,
            )
        })
        .collect();
    let mut printer = Printer {
        out,
        tags: Tags::new(&stack, &known),
        looked_up: BTreeSet::new(),
        done: false,
        failed: None,
        error: None,
    };
    if args.follow {
        client.stream(&calls, &mut |_, event| printer.take(client, event), stop)?;
    } else {
        for call in &calls {
            if printer.done || stop() {
                break;
            }
            client.stream(
                std::slice::from_ref(call),
                &mut |_, event| printer.take(client, event),
                stop,
            )?;
        }
    }
    if let Some(e) = printer.error {
        return Err(e.into());
    }
    if let Some(e) = printer.failed {
        return Err(Error::io("cannot write the logs")(e));
    }
    match printer.out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Error::io("cannot write the logs")(e))
        }
        _ => Ok(Outcome::Done),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::tasks::tests::ps_line;
    use crate::docker::fake::FakeEngine;
    use rollout_watcher::history::DeployRecord;

    const BACKEND_1: &str = "k3x9a8b7c6d5e4f3a2b1c0d9e";
    const BACKEND_1_OLD: &str = "a1b2c3d4e5f6a7b8c9d0e1f2a";
    const FRONTEND_1: &str = "f0f0f0f0f0f0f0f0f0f0f0f0f";

    fn record(id: &str) -> DeployRecord {
        DeployRecord {
            id: id.to_owned(),
            stack: "stackship-prod".to_owned(),
            ..DeployRecord::default()
        }
    }

    fn args(service: Option<&str>) -> LogsArgs {
        LogsArgs {
            env: "prod".to_owned(),
            service: service.map(str::to_owned),
            since_deploy: None,
            since: None,
            tail: None,
            follow: false,
        }
    }

    /// A line as `docker service logs --timestamps --no-trunc` prints it.
    fn docker_line(service: &str, slot: u32, id: &str, node: &str, message: &str) -> String {
        format!(
            "2026-12-06T01:02:03.000000001Z stackship-prod_{service}.{slot}.{id}@{node}    | {message}"
        )
    }

    /// A stack of backend (a running task and the one it replaced) and frontend.
    fn stack() -> FakeEngine {
        let fake = FakeEngine::new();
        fake.answer(
            &["service", "ls"],
            "stackship-prod_backend\nstackship-prod_frontend\n",
        );
        fake.answer(
            &["service", "ps"],
            &[
                ps_line(
                    BACKEND_1,
                    "stackship-prod_backend.1",
                    "127.0.0.1:5000/stackship/backend:20261206_0123abcd@sha256:81505a2e",
                    "manager-1",
                    "Running 5 minutes ago",
                ),
                ps_line(
                    BACKEND_1_OLD,
                    "stackship-prod_backend.1",
                    "127.0.0.1:5000/stackship/backend:20261205_fedcba98@sha256:c2e30479",
                    "worker-2",
                    "Shutdown 5 minutes ago",
                ),
                ps_line(
                    FRONTEND_1,
                    "stackship-prod_frontend.1",
                    "127.0.0.1:5000/stackship/frontend:20261206_0123abcd",
                    "worker-2",
                    "Running 5 minutes ago",
                ),
            ]
            .join("\n"),
        );
        fake
    }

    fn logs(fake: &FakeEngine, args: &LogsArgs, root: &std::path::Path) -> Result<String, Error> {
        let mut out = Vec::new();
        run(
            &Client::new(fake),
            &EnvDir::new(root, "prod"),
            args,
            &mut out,
            &|| false,
        )?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn at_most_eight_ids_are_named() {
        let ids = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
        assert_eq!(some_of(&ids[..8]), "a b c d e f g h");
        assert_eq!(some_of(&ids), "a b c d e f g h and 1 more");
    }

    #[test]
    fn docker_log_lines_are_read_with_their_task() {
        let line = docker_line("backend", 1, BACKEND_1, "manager-1", "GET /health | 200");
        assert_eq!(
            parse(&line),
            Some(Entry {
                time: "2026-12-06T01:02:03.000000001Z",
                task: "stackship-prod_backend.1",
                id: BACKEND_1,
                node: "manager-1",
                message: "GET /health | 200",
            })
        );
        // Padding after a one-digit slot when there are ten replicas; an empty message.
        let padded = format!(
            "2026-12-06T01:02:03Z stackship-prod_backend.3.{BACKEND_1}@n.example.com      | "
        );
        let e = parse(&padded).unwrap();
        assert_eq!((e.node, e.message), ("n.example.com", ""));
        for other in [
            "Error response from daemon: service x not found",
            "2026-12-06T01:02:03Z no task context here",
            "not-a-time stackship-prod_backend.1.x@n    | m",
            "2026-12-06T01:02:03Z stackship-prod_backend.1.x    | no node",
            "2026-12-06T01:02:03Z .abc@n    | no task name",
            "2026-12-06T01:02:03Z stackship-prod_backend.1.@n    | no task id",
        ] {
            assert_eq!(parse(other), None, "{other}");
        }
    }

    #[test]
    fn each_line_is_tagged_with_its_task_and_the_version_it_runs() {
        let fake = stack();
        fake.answer_streams(
            &["service", "logs"],
            &[
                docker_line(
                    "backend",
                    1,
                    BACKEND_1_OLD,
                    "worker-2",
                    "old version stopping",
                ),
                docker_line("backend", 1, BACKEND_1, "manager-1", "listening on :8080"),
            ]
            .join("\n"),
            &docker_line("backend", 1, BACKEND_1, "manager-1", "warning on stderr"),
        );
        let root = tempfile::tempdir().unwrap();
        let text = logs(&fake, &args(Some("backend")), root.path()).unwrap();
        assert_eq!(
            text,
            "2026-12-06T01:02:03.000000001Z backend.1 a1b2c3d4e5f6@worker-2 20261205_fedcba98  | old version stopping\n\
             2026-12-06T01:02:03.000000001Z backend.1 k3x9a8b7c6d5@manager-1 20261206_0123abcd | listening on :8080\n\
             2026-12-06T01:02:03.000000001Z backend.1 k3x9a8b7c6d5@manager-1 20261206_0123abcd | warning on stderr\n"
        );
        assert_eq!(
            fake.command_lines(),
            vec![
                "docker service ls --filter label=com.docker.stack.namespace=stackship-prod --format {{.Name}}",
                "docker service ps --no-trunc --format {{json .}} stackship-prod_backend",
                "docker service logs --timestamps --no-trunc --tail 100 stackship-prod_backend",
            ]
        );
        assert!(fake.writes().is_empty());
    }

    #[test]
    fn a_task_that_appeared_since_the_start_is_looked_up_once() {
        let newer = "n3w3n3w3n3w3n3w3n3w3n3w3n";
        let two_lines = [
            docker_line("frontend", 2, newer, "worker-3", "first"),
            docker_line("frontend", 2, newer, "worker-3", "second"),
        ]
        .join("\n");
        // The `service ps` at the start does not know the task; the one asked again does.
        let fake = FakeEngine::new();
        fake.answer(&["service", "ls"], "stackship-prod_frontend\n");
        fake.answer_once(&["service", "ps"], "");
        fake.answer(
            &["service", "ps"],
            &ps_line(
                newer,
                "stackship-prod_frontend.2",
                "r/frontend:20261206_99999999",
                "worker-3",
                "Running 1 second ago",
            ),
        );
        fake.answer_streams(&["service", "logs"], &two_lines, "");
        let root = tempfile::tempdir().unwrap();
        let text = logs(&fake, &args(None), root.path()).unwrap();
        assert_eq!(
            text,
            "2026-12-06T01:02:03.000000001Z frontend.2 n3w3n3w3n3w3@worker-3 20261206_99999999 | first\n\
             2026-12-06T01:02:03.000000001Z frontend.2 n3w3n3w3n3w3@worker-3 20261206_99999999 | second\n"
        );
        let lines = fake.command_lines();
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert_eq!(
            lines[3],
            "docker service ps --no-trunc --format {{json .}} stackship-prod_frontend"
        );
        // Unknown for good: `?`, and still asked only once for its two lines.
        let gone = FakeEngine::new();
        gone.answer(&["service", "ls"], "stackship-prod_frontend\n");
        gone.answer(&["service", "ps"], "");
        gone.answer_streams(&["service", "logs"], &two_lines, "");
        let text = logs(&gone, &args(None), root.path()).unwrap();
        assert!(
            text.ends_with("frontend.2 n3w3n3w3n3w3@worker-3 ? | second\n"),
            "{text}"
        );
        assert_eq!(gone.calls().len(), 4, "{:?}", gone.command_lines());
    }

    #[test]
    fn every_service_one_after_another_then_side_by_side_with_follow() {
        let fake = stack();
        fake.answer_streams(
            &["service", "logs"],
            &docker_line("backend", 1, BACKEND_1, "manager-1", "hello"),
            "",
        );
        let root = tempfile::tempdir().unwrap();
        let mut a = args(None);
        a.since = Some("42m".to_owned());
        let text = logs(&fake, &a, root.path()).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        let lines = fake.command_lines();
        assert_eq!(
            lines[2..],
            [
                "docker service logs --timestamps --no-trunc --since 42m stackship-prod_backend",
                "docker service logs --timestamps --no-trunc --since 42m stackship-prod_frontend",
            ]
        );
        let timeouts: Vec<Duration> = fake.calls()[2..].iter().map(|c| c.timeout).collect();
        assert_eq!(timeouts, vec![READ_TIMEOUT, READ_TIMEOUT]);
        // Followed: one stream of both calls, without a deadline.
        let fake = stack();
        fake.answer_streams(&["service", "logs"], "", "");
        a.follow = true;
        a.tail = Some("all".to_owned());
        logs(&fake, &a, root.path()).unwrap();
        let calls = fake.calls();
        assert_eq!(
            calls[2].command_line(),
            "docker service logs --timestamps --no-trunc --since 42m --tail all --follow stackship-prod_backend"
        );
        assert_eq!(calls[2].timeout, Duration::MAX);
        assert_eq!(calls.len(), 4);
    }

    #[test]
    fn dockers_own_stderr_stays_off_the_output_and_a_failed_flush_is_an_error() {
        /// Takes every byte; its flush fails with `kind`.
        struct FlushFails(Vec<u8>, std::io::ErrorKind);
        impl Write for FlushFails {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Err(std::io::Error::from(self.1))
            }
        }
        let fake = stack();
        fake.answer_streams(
            &["service", "logs"],
            &format!(
                "{}\nnot a line of a task\n",
                docker_line("backend", 1, BACKEND_1, "manager-1", "hello")
            ),
            "error from daemon: service x has no logs\n",
        );
        let root = tempfile::tempdir().unwrap();
        let dir = EnvDir::new(root.path(), "prod");
        // A closed pipe at the end is how a reader such as `head` stops: no error.
        let mut out = FlushFails(Vec::new(), std::io::ErrorKind::BrokenPipe);
        let outcome = run(
            &Client::new(&fake),
            &dir,
            &args(Some("backend")),
            &mut out,
            &|| false,
        )
        .unwrap();
        assert_eq!(outcome, Outcome::Done);
        let text = String::from_utf8(out.0).unwrap();
        assert!(text.contains("hello"), "{text}");
        assert!(text.contains("\nnot a line of a task\n"), "{text}");
        assert!(!text.contains("error from daemon"), "{text}");
        // Any other failure to write out is said.
        let mut out = FlushFails(Vec::new(), std::io::ErrorKind::StorageFull);
        let e = run(
            &Client::new(&fake),
            &dir,
            &args(Some("backend")),
            &mut out,
            &|| false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("cannot write the logs"), "{e}");
    }

    #[test]
    fn a_closed_output_ends_the_reading_quietly() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let fake = stack();
        fake.answer_streams(
            &["service", "logs"],
            &docker_line("backend", 1, BACKEND_1, "manager-1", "hello"),
            "",
        );
        let root = tempfile::tempdir().unwrap();
        let outcome = run(
            &Client::new(&fake),
            &EnvDir::new(root.path(), "prod"),
            &args(None),
            &mut Closed,
            &|| false,
        )
        .unwrap();
        assert_eq!(outcome, Outcome::Done);
        // The second service is not read once nobody reads.
        assert_eq!(fake.calls().len(), 3, "{:?}", fake.command_lines());
    }

    #[test]
    fn since_deploy_is_the_records_time() {
        let fake = stack();
        fake.answer_streams(&["service", "logs"], "", "");
        let root = tempfile::tempdir().unwrap();
        let history = root.path().join("prod/history");
        for id in ["20261205T230000.000Z", "20261206T010203.456Z"] {
            rollout_watcher::history::write(&history, &record(id)).unwrap();
        }
        let mut a = args(Some("backend"));
        a.since_deploy = Some("20261206".to_owned());
        logs(&fake, &a, root.path()).unwrap();
        assert_eq!(
            fake.command_lines()[2],
            "docker service logs --timestamps --no-trunc --since 2026-12-06T01:02:03.456Z stackship-prod_backend"
        );
        // An ambiguous one is refused before Docker is asked anything.
        let fake = stack();
        a.since_deploy = Some("2026120".to_owned());
        let e = logs(&fake, &a, root.path()).unwrap_err().to_string();
        assert_eq!(
            e,
            "deploy '2026120' is ambiguous in prod's history: 2 records begin so: 20261206T010203.456Z 20261205T230000.000Z"
        );
        assert!(fake.calls().is_empty());
        // A record that knows when its deploy stage began starts there: the rollout's first
        // lines are after it, not after the id (the rollout's end).
        let started = DeployRecord {
            started: Some("2026-12-06T03:59:58.5+00:00".to_owned()),
            ..record("20261206T040203.000Z")
        };
        rollout_watcher::history::write(&history, &started).unwrap();
        let fake = stack();
        fake.answer_streams(&["service", "logs"], "", "");
        a.since_deploy = Some("20261206T04".to_owned());
        logs(&fake, &a, root.path()).unwrap();
        assert_eq!(
            fake.command_lines()[2],
            "docker service logs --timestamps --no-trunc --since 2026-12-06T03:59:58.500Z stackship-prod_backend"
        );
        let broken = DeployRecord {
            started: Some("yesterday".to_owned()),
            ..record("20261206T050000.000Z")
        };
        rollout_watcher::history::write(&history, &broken).unwrap();
        let fake = stack();
        a.since_deploy = Some("20261206T05".to_owned());
        let e = logs(&fake, &a, root.path()).unwrap_err().to_string();
        assert_eq!(
            e,
            "deploy record 20261206T050000.000Z: its start 'yesterday' is not an RFC 3339 time"
        );
        assert!(fake.calls().is_empty());
    }

    #[test]
    fn deploys_are_found_by_id_or_unique_beginning() {
        let records = vec![
            record("20261205T230000.000Z"),
            record("20261206T010203.456Z"),
            record("20261206T010203.456Z2"),
            record("20261206T020000.000Z"),
        ];
        // Exact wins over a longer id it begins.
        assert_eq!(
            find_deploy(&records, "20261206T010203.456Z", "prod")
                .unwrap()
                .id,
            "20261206T010203.456Z"
        );
        assert_eq!(
            find_deploy(&records, "20261205", "prod").unwrap().id,
            "20261205T230000.000Z"
        );
        assert_eq!(
            find_deploy(&records, "20261206T02", "prod").unwrap().id,
            "20261206T020000.000Z"
        );
        assert_eq!(
            find_deploy(&records, "20261206", "prod")
                .unwrap_err()
                .to_string(),
            "deploy '20261206' is ambiguous in prod's history: 3 records begin so: 20261206T020000.000Z 20261206T010203.456Z2 20261206T010203.456Z"
        );
        let e = find_deploy(&records, "2027", "prod").unwrap_err();
        assert_eq!(
            e.to_string(),
            "no deploy '2027' in prod's history; the latest: 20261206T020000.000Z 20261206T010203.456Z2 20261206T010203.456Z 20261205T230000.000Z (see stackship history prod)"
        );
        assert_eq!(e.outcome(), Outcome::NothingChanged);
        assert!(find_deploy(&records, "", "prod").is_err());
        assert_eq!(
            find_deploy(&[], "2026", "dev").unwrap_err().to_string(),
            "no deploy recorded for dev yet: --since-deploy has nothing to start at"
        );
        let many: Vec<DeployRecord> = (0..10)
            .map(|i| record(&format!("20261206T0{i}0000.000Z")))
            .collect();
        let e = find_deploy(&many, "2026", "prod").unwrap_err().to_string();
        assert!(e.ends_with("20261206T020000.000Z and 2 more"), "{e}");
    }

    #[test]
    fn record_ids_become_docker_times() {
        assert_eq!(
            since_of("20261206T010203.456Z").unwrap(),
            "2026-12-06T01:02:03.456Z"
        );
        // Older ids without milliseconds.
        assert_eq!(
            since_of("20261123T020304Z").unwrap(),
            "2026-11-23T02:03:04.000Z"
        );
        assert!(
            since_of("made-by-hand")
                .unwrap_err()
                .to_string()
                .contains("its id is not a time")
        );
    }

    #[test]
    fn unknown_services_and_environments_are_named_with_those_there_are() {
        let fake = stack();
        let root = tempfile::tempdir().unwrap();
        let e = logs(&fake, &args(Some("worker")), root.path()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown service 'worker' in prod (stackship-prod); its services: backend frontend"
        );
        assert_eq!(fake.calls().len(), 1);
        let empty = FakeEngine::new();
        empty.answer(&["service", "ls"], "");
        empty.answer(&["stack", "ls"], "stackship-dev\n");
        let e = logs(&empty, &args(None), root.path()).unwrap_err();
        assert!(
            e.to_string().ends_with("environments running here: dev"),
            "{e}"
        );
    }

    #[test]
    fn a_failed_read_is_dockers_error() {
        let fake = FakeEngine::new();
        fake.answer(&["service", "ls"], "stackship-prod_backend\n");
        fake.answer(&["service", "ps"], "");
        fake.fail(
            &["service", "logs"],
            "invalid value for \"since\": bad is not a time",
        );
        let root = tempfile::tempdir().unwrap();
        let mut a = args(None);
        a.since = Some("bad".to_owned());
        let e = logs(&fake, &a, root.path()).unwrap_err();
        assert!(e.to_string().ends_with("bad is not a time"), "{e}");
        assert_eq!(e.outcome(), Outcome::NothingChanged);
        // The same with two services: the second is not read.
        let two = stack();
        two.fail(
            &["service", "logs"],
            "invalid value for \"since\": bad is not a time",
        );
        assert!(logs(&two, &a, root.path()).is_err());
        assert_eq!(two.calls().len(), 3, "{:?}", two.command_lines());
    }

    #[test]
    fn an_incomplete_stream_is_a_warning_and_the_next_service_is_read() {
        let fake = stack();
        let warning = "error from daemon in stream: Error grabbing logs: rpc error: code = Unknown desc = warning: incomplete log stream. some logs could not be retrieved for the following reasons: node xdzh179fom0mkacd9grmj9x4d is not available";
        fake.fail(
            &[
                "service",
                "logs",
                "--timestamps",
                "--no-trunc",
                "--tail",
                "100",
                "stackship-prod_backend",
            ],
            warning,
        );
        fake.answer_streams(
            &["service", "logs"],
            &docker_line("frontend", 1, FRONTEND_1, "worker-2", "still here"),
            "",
        );
        let root = tempfile::tempdir().unwrap();
        let text = logs(&fake, &args(None), root.path()).unwrap();
        assert!(text.ends_with("| still here\n"), "{text}");
        assert_eq!(fake.calls().len(), 4, "{:?}", fake.command_lines());
        assert!(incomplete(&DockerError::Failed {
            command: "docker service logs x".into(),
            stderr: warning.into()
        }));
        assert!(!incomplete(&DockerError::Failed {
            command: "docker service logs x".into(),
            stderr: "no such task or service: x".into()
        }));
    }

    #[test]
    fn tail_takes_a_number_or_all() {
        assert_eq!(tail_value("20").unwrap(), "20");
        assert_eq!(tail_value("all").unwrap(), "all");
        assert!(tail_value("-5").is_err());
        assert!(tail_value("ten").is_err());
    }
}
