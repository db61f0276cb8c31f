//! Talking to the Docker engine through the docker CLI's JSON output (the Engine API's own
//! JSON), parsed into bollard's typed models.
//!
//! The CLI is what a Swarm manager always has, it honours the user's `DOCKER_HOST` and
//! contexts, and its `service inspect` carries `PreviousSpec` (what `docker service rollback`
//! returns to, which the prune must keep) where bollard's client model does not.
//!
//! Every call has a deadline and is killed after it (a `docker service logs` on a lost node
//! would otherwise hang while the deploy lock is held), and reads are retried on Swarm's
//! transient errors (a leader election), so that neither fails a good deploy.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;
use bollard::models::{HealthConfig, Service, ServiceSpec, Task, TaskSpec};
use serde::Deserialize;
use serde_json::Value;

/// A service as `docker service inspect` prints it.
#[derive(Debug, Clone, Deserialize)]
pub struct ServiceInspect {
    #[serde(flatten)]
    pub service: Service,
    #[serde(rename = "PreviousSpec", default)]
    pub previous_spec: Option<ServiceSpec>,
}

impl ServiceInspect {
    /// The service's full name (`<stack>_<service>`).
    pub fn name(&self) -> &str {
        self.service
            .spec
            .as_ref()
            .and_then(|s| s.name.as_deref())
            .unwrap_or("")
    }
}

/// bollard's model names the container healthcheck `HealthCheck`; Docker prints
/// `Healthcheck`. Put it back from the raw JSON so budgets and spec comparisons see it.
fn fix_healthcheck(raw_task_spec: Option<&Value>, spec: Option<&mut TaskSpec>) {
    let (Some(raw), Some(spec)) = (raw_task_spec, spec) else {
        return;
    };
    let health = raw
        .pointer("/ContainerSpec/Healthcheck")
        .and_then(|h| serde_json::from_value::<HealthConfig>(h.clone()).ok());
    if let (Some(health), Some(container)) = (health, spec.container_spec.as_mut()) {
        container.health_check = Some(health);
    }
}

/// Parses `docker service inspect` output.
pub fn parse_services(text: &str) -> anyhow::Result<Vec<ServiceInspect>> {
    let raw: Vec<Value> =
        serde_json::from_str(text).context("cannot parse `docker service inspect` output")?;
    raw.into_iter()
        .map(|v| {
            let mut s: ServiceInspect = serde_json::from_value(v.clone())
                .context("cannot parse `docker service inspect` output")?;
            fix_healthcheck(
                v.pointer("/Spec/TaskTemplate"),
                s.service
                    .spec
                    .as_mut()
                    .and_then(|s| s.task_template.as_mut()),
            );
            fix_healthcheck(
                v.pointer("/PreviousSpec/TaskTemplate"),
                s.previous_spec
                    .as_mut()
                    .and_then(|s| s.task_template.as_mut()),
            );
            Ok(s)
        })
        .collect()
}

/// Parses `docker inspect --type task` output.
pub fn parse_tasks(text: &str) -> anyhow::Result<Vec<Task>> {
    let raw: Vec<Value> =
        serde_json::from_str(text).context("cannot parse `docker inspect` task output")?;
    raw.into_iter()
        .map(|v| {
            let mut t: Task = serde_json::from_value(v.clone())
                .context("cannot parse `docker inspect` task output")?;
            fix_healthcheck(v.get("Spec"), t.spec.as_mut());
            Ok(t)
        })
        .collect()
}

/// How long a listing or an inspect may take: a busy manager answers well within it, and a
/// hung call must not hold the deploy lock for ever.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a change (`docker config rm`) may take.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// `docker service logs` waits for a lost node's daemon for ever: give up sooner, the logs are
/// only evidence.
pub const LOGS_TIMEOUT: Duration = Duration::from_secs(10);
/// A container's healthcheck output comes from this node's daemon.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a docker CLI call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("cannot run {program} (is the docker CLI installed?): {error}")]
    Spawn { program: String, error: String },
    #[error("{command} failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("{command} did not answer within {}s (stopped)", .after.as_secs())]
    TimedOut { command: String, after: Duration },
    #[error("{command} printed non-UTF-8 output")]
    NotUtf8 { command: String },
}

/// Swarm's answers while it elects a leader or a manager restarts: they pass by themselves.
const TRANSIENT: &[&str] = &[
    "The swarm does not have a leader",
    "rpc error: code = Unavailable",
    "rpc error: code = DeadlineExceeded",
];

impl CallError {
    /// Whether the same read may succeed in a moment: a transient Swarm error or a timeout.
    pub fn is_transient(&self) -> bool {
        match self {
            CallError::TimedOut { .. } => true,
            CallError::Failed { stderr, .. } => is_transient_message(stderr),
            CallError::Spawn { .. } | CallError::NotUtf8 { .. } => false,
        }
    }
}

/// Whether `stderr` is one of Swarm's passing states ([`TRANSIENT`]).
pub fn is_transient_message(stderr: &str) -> bool {
    TRANSIENT.iter().any(|t| stderr.contains(t))
}

/// How the docker CLI is run: which program (tests give `sh`), and how reads are retried.
#[derive(Debug, Clone)]
pub struct Cli {
    pub program: String,
    /// Attempts of a read in all (1: no retry).
    pub attempts: u32,
    /// Pause before a read's second attempt, doubled before each further one.
    pub pause: Duration,
}

impl Default for Cli {
    fn default() -> Self {
        // 1 + 3 retries over 1 + 2 + 4 s: a Swarm leader election takes a few seconds.
        Self {
            program: "docker".to_owned(),
            attempts: 4,
            pause: Duration::from_secs(1),
        }
    }
}

impl Cli {
    /// Runs `program` instead of `docker`, with the default retry rule.
    pub fn with_program(program: impl Into<String>) -> Self {
        Self {
            program: program.into(),
            ..Self::default()
        }
    }

    fn command_line(&self, args: &[&str]) -> String {
        format!("{} {}", self.program, args.join(" "))
    }

    /// Runs `PROGRAM ARGS` once; it is killed when it has not ended after `timeout`.
    pub fn output(&self, args: &[&str], timeout: Duration) -> Result<Output, CallError> {
        let mut child = Command::new(&self.program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| CallError::Spawn {
                program: self.program.clone(),
                error: e.to_string(),
            })?;
        // Read both pipes on threads: a child filling one while we wait would block for ever.
        let stdout = reader(child.stdout.take());
        let stderr = reader(child.stderr.take());
        let Some(status) = wait_until(&mut child, Instant::now() + timeout) else {
            let _ = child.kill();
            let _ = child.wait();
            // The readers end when the pipes close; a grandchild may still hold them, so they
            // are not waited for.
            return Err(CallError::TimedOut {
                command: self.command_line(args),
                after: timeout,
            });
        };
        Ok(Output {
            status,
            stdout: stdout.join().unwrap_or_default(),
            stderr: stderr.join().unwrap_or_default(),
        })
    }

    /// Runs `PROGRAM ARGS` once and returns its stdout; a failure names the command and its
    /// stderr.
    pub fn run(&self, args: &[&str], timeout: Duration) -> Result<String, CallError> {
        let output = self.output(args, timeout)?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
            return Err(CallError::Failed {
                command: self.command_line(args),
                stderr: if stderr.is_empty() {
                    format!("exit status {}", output.status.code().unwrap_or(-1))
                } else {
                    stderr
                },
            });
        }
        String::from_utf8(output.stdout).map_err(|_| CallError::NotUtf8 {
            command: self.command_line(args),
        })
    }

    /// A read (it changes nothing, so it may be repeated): [`Cli::run`], tried again after a
    /// pause on a transient error or a timeout, up to [`Cli::attempts`] times in all.
    pub fn read(&self, args: &[&str], timeout: Duration) -> Result<String, CallError> {
        let mut pause = self.pause;
        let mut attempt = 1;
        loop {
            match self.run(args, timeout) {
                Err(e) if e.is_transient() && attempt < self.attempts => {
                    std::thread::sleep(pause);
                    pause *= 2;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// The stack's services, sorted by name.
    pub fn stack_services(&self, stack: &str) -> anyhow::Result<Vec<ServiceInspect>> {
        let filter = format!("label=com.docker.stack.namespace={stack}");
        let ids = lines(&self.read(&["service", "ls", "-q", "--filter", &filter], READ_TIMEOUT)?);
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut args = vec!["service", "inspect"];
        args.extend(ids.iter().map(String::as_str));
        let text = self.read(&args, READ_TIMEOUT)?;
        let mut services = parse_services(&text)?;
        services.sort_by(|a, b| a.name().cmp(b.name()));
        Ok(services)
    }

    /// Every task Swarm still knows of the service (current and history).
    pub fn service_tasks(&self, service: &str) -> anyhow::Result<Vec<Task>> {
        // A task pruned between listing and inspecting makes `docker inspect` fail: retry once.
        match self.try_service_tasks(service) {
            Ok(tasks) => Ok(tasks),
            Err(_) => self.try_service_tasks(service),
        }
    }

    fn try_service_tasks(&self, service: &str) -> anyhow::Result<Vec<Task>> {
        let ids = lines(&self.read(
            &["service", "ps", "-q", "--no-trunc", service],
            READ_TIMEOUT,
        )?);
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut args = vec!["inspect", "--type", "task"];
        args.extend(ids.iter().map(String::as_str));
        parse_tasks(&self.read(&args, READ_TIMEOUT)?)
    }

    /// The last `lines` lines a task logged (stdout and stderr), or why there are none. Not
    /// retried: the logs are evidence, and a lost node would only make the report wait.
    pub fn task_log_tail(&self, task_id: &str, lines: usize) -> String {
        let tail = lines.to_string();
        let args = [
            "service",
            "logs",
            "--raw",
            "--no-trunc",
            "--tail",
            &tail,
            task_id,
        ];
        match self.output(&args, LOGS_TIMEOUT) {
            Ok(o) if o.status.success() => {
                let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&o.stderr));
                let all: Vec<&str> = text.lines().collect();
                all[all.len().saturating_sub(lines)..].join("\n")
            }
            Ok(o) => format!("(no logs: {})", String::from_utf8_lossy(&o.stderr).trim()),
            Err(e) => format!("(no logs: {e})"),
        }
    }
}

/// A pipe read to its end on a thread (shared with stackship's Docker layer).
pub fn reader<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

/// Waits for `child` until `deadline`; None when it is still running then.
pub fn wait_until(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(_) => return None,
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        thread::sleep((deadline - now).min(Duration::from_millis(20)));
    }
}

/// Runs `docker ARGS` once (not retried: it may change something) and returns its stdout; a
/// failure names the command and its stderr.
pub fn docker(args: &[&str]) -> anyhow::Result<String> {
    Ok(Cli::default().run(args, WRITE_TIMEOUT)?)
}

/// Lines of non-empty output.
fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The stack's services, sorted by name (the docker CLI; reads retried, see [`Cli::read`]).
pub fn stack_services(stack: &str) -> anyhow::Result<Vec<ServiceInspect>> {
    Cli::default().stack_services(stack)
}

/// Every task Swarm still knows of the service (current and history).
pub fn service_tasks(service: &str) -> anyhow::Result<Vec<Task>> {
    Cli::default().service_tasks(service)
}

/// The last `lines` lines a task logged (stdout and stderr), or why there are none.
pub fn task_log_tail(task_id: &str, lines: usize) -> String {
    Cli::default().task_log_tail(task_id, lines)
}

/// The last healthcheck output of a container on this node (e.g. why `/health` said 503),
/// or None when the container is not here or has no healthcheck.
pub fn container_health_output(container_id: &str) -> Option<String> {
    let text = Cli::default()
        .run(
            &[
                "inspect",
                "--type",
                "container",
                "--format",
                "{{json .State.Health}}",
                container_id,
            ],
            HEALTH_TIMEOUT,
        )
        .ok()?;
    let health: Value = serde_json::from_str(text.trim()).ok()?;
    let last = health.get("Log")?.as_array()?.last()?;
    let output = last.get("Output")?.as_str()?.trim();
    (!output.is_empty()).then(|| {
        format!(
            "{} (exit {})",
            output,
            last.get("ExitCode").and_then(Value::as_i64).unwrap_or(-1)
        )
    })
}

/// A config or secret listed by `docker {config,secret} ls --format '{{json .}}'`.
#[derive(Debug, Deserialize)]
struct Listed {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "Name")]
    name: String,
}

/// The stack's configs or secrets (`kind` is `config` or `secret`).
pub fn stack_objects(kind: &str, stack: &str) -> anyhow::Result<Vec<crate::prune::Object>> {
    let filter = format!("label=com.docker.stack.namespace={stack}");
    let text = Cli::default().read(
        &[kind, "ls", "--filter", &filter, "--format", "{{json .}}"],
        READ_TIMEOUT,
    )?;
    lines(&text)
        .iter()
        .map(|l| {
            let o: Listed = serde_json::from_str(l)
                .with_context(|| format!("cannot parse `docker {kind} ls` line {l:?}"))?;
            Ok(crate::prune::Object {
                id: o.id,
                name: o.name,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// `sh` in place of docker, retrying without pauses.
    fn sh() -> Cli {
        Cli {
            pause: Duration::ZERO,
            ..Cli::with_program("sh")
        }
    }

    /// A script that counts its runs in `dir/count` and then runs `body` (with `$n` the run).
    fn counting(dir: &Path, body: &str) -> String {
        let count = dir.join("count");
        format!(
            "n=$(($(cat {c} 2>/dev/null || echo 0) + 1)); echo $n > {c}; {body}",
            c = count.display()
        )
    }

    fn runs(dir: &Path) -> u32 {
        std::fs::read_to_string(dir.join("count"))
            .map(|s| s.trim().parse().unwrap())
            .unwrap_or(0)
    }

    #[test]
    fn output_of_a_successful_call_and_the_stderr_of_a_failed_one() {
        let out = sh()
            .run(&["-c", "echo hello; echo noise >&2"], READ_TIMEOUT)
            .unwrap();
        assert_eq!(out, "hello\n");
        let err = sh()
            .run(
                &["-c", "echo 'No such service: x' >&2; exit 1"],
                READ_TIMEOUT,
            )
            .unwrap_err();
        assert!(matches!(&err, CallError::Failed { stderr, .. } if stderr == "No such service: x"));
        assert!(err.to_string().starts_with("sh -c "), "{err}");
        let err = sh().run(&["-c", "exit 3"], READ_TIMEOUT).unwrap_err();
        assert!(err.to_string().ends_with("exit status 3"), "{err}");
    }

    #[test]
    fn a_hung_call_is_killed_at_its_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let script = format!("echo $$ > {}; exec sleep 30", pid_file.display());
        let started = Instant::now();
        let err = sh()
            .run(&["-c", &script], Duration::from_millis(300))
            .unwrap_err();
        assert!(matches!(err, CallError::TimedOut { .. }), "{err}");
        assert!(err.to_string().contains("did not answer within"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
        // The sleeper itself is gone (killed and reaped), not left behind.
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        assert!(
            !Path::new(&format!("/proc/{}", pid.trim())).exists(),
            "process {} still exists",
            pid.trim()
        );
    }

    #[test]
    fn swarms_passing_states_and_timeouts_are_transient_other_errors_are_not() {
        let failed = |stderr: &str| CallError::Failed {
            command: "docker x".into(),
            stderr: stderr.into(),
        };
        assert!(
            failed("Error response from daemon: rpc error: code = Unavailable desc = x")
                .is_transient()
        );
        assert!(
            failed("Error response from daemon: The swarm does not have a leader. It's possible that too few managers are online.")
                .is_transient()
        );
        assert!(
            failed("rpc error: code = DeadlineExceeded desc = context deadline exceeded")
                .is_transient()
        );
        assert!(
            CallError::TimedOut {
                command: "docker x".into(),
                after: Duration::from_secs(1)
            }
            .is_transient()
        );
        assert!(!failed("Error: No such service: stackship-prod_backend").is_transient());
        assert!(!failed("rpc error: code = NotFound desc = service x not found").is_transient());
        assert!(
            !CallError::Spawn {
                program: "docker".into(),
                error: "not found".into()
            }
            .is_transient()
        );
        assert!(
            !CallError::NotUtf8 {
                command: "x".into()
            }
            .is_transient()
        );
    }

    #[test]
    fn a_read_is_retried_on_a_transient_error_until_it_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let script = counting(
            dir.path(),
            "if [ $n -lt 3 ]; then echo 'Error response from daemon: The swarm does not have a leader.' >&2; exit 1; fi; echo ok",
        );
        assert_eq!(sh().read(&["-c", &script], READ_TIMEOUT).unwrap(), "ok\n");
        assert_eq!(runs(dir.path()), 3);
    }

    #[test]
    fn each_retry_of_a_read_waits_twice_as_long_as_the_one_before() {
        let dir = tempfile::tempdir().unwrap();
        let script = counting(
            dir.path(),
            "if [ $n -lt 4 ]; then echo 'The swarm does not have a leader' >&2; exit 1; fi; echo ok",
        );
        let cli = Cli {
            pause: Duration::from_millis(100),
            ..Cli::with_program("sh")
        };
        let started = Instant::now();
        assert_eq!(cli.read(&["-c", &script], READ_TIMEOUT).unwrap(), "ok\n");
        assert_eq!(runs(dir.path()), 4);
        // 100 + 200 + 400 ms of pauses: a leader election gets more time with each attempt.
        assert!(started.elapsed() >= Duration::from_millis(700));
    }

    /// A fake docker script in `dir` running `body`; the `Cli` that runs it.
    fn fake_docker(dir: &Path, body: &str) -> Cli {
        let script = dir.join("docker");
        std::fs::write(&script, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        Cli {
            pause: Duration::ZERO,
            ..Cli::with_program(script.display().to_string())
        }
    }

    /// Runs `f` again while the new script is busy (another test's fork may briefly hold it
    /// open for writing: ETXTBSY).
    fn patiently<T>(f: impl Fn() -> T, busy: impl Fn(&T) -> bool) -> T {
        for _ in 0..20 {
            let out = f();
            if !busy(&out) {
                return out;
            }
            thread::sleep(Duration::from_millis(50));
        }
        f()
    }

    #[test]
    fn a_log_tail_is_the_last_lines_of_output_and_error_or_why_there_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let cli = fake_docker(
            dir.path(),
            "[ \"$1 $2 $7\" = 'service logs t1' ] || exit 9; printf 'a\\nb\\nc\\n'; echo 'd: error' >&2",
        );
        let busy = |s: &String| s.contains("busy");
        assert_eq!(
            patiently(|| cli.task_log_tail("t1", 3), busy),
            "b\nc\nd: error"
        );
        let dir = tempfile::tempdir().unwrap();
        let cli = fake_docker(dir.path(), "echo 'Error: No such task: t1' >&2; exit 1");
        assert_eq!(
            patiently(|| cli.task_log_tail("t1", 3), busy),
            "(no logs: Error: No such task: t1)"
        );
    }

    #[test]
    fn a_read_gives_up_after_its_attempts() {
        let dir = tempfile::tempdir().unwrap();
        let script = counting(
            dir.path(),
            "echo 'rpc error: code = Unavailable desc = leader lost' >&2; exit 1",
        );
        let err = sh().read(&["-c", &script], READ_TIMEOUT).unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert_eq!(runs(dir.path()), 4);
    }

    #[test]
    fn a_read_that_timed_out_is_tried_again() {
        let dir = tempfile::tempdir().unwrap();
        let script = counting(
            dir.path(),
            "if [ $n -eq 1 ]; then exec sleep 30; fi; echo ok",
        );
        let out = sh()
            .read(&["-c", &script], Duration::from_millis(500))
            .unwrap();
        assert_eq!(out, "ok\n");
        assert_eq!(runs(dir.path()), 2);
    }

    #[test]
    fn lasting_errors_and_writes_are_not_retried() {
        let dir = tempfile::tempdir().unwrap();
        let script = counting(dir.path(), "echo 'Error: No such service: x' >&2; exit 1");
        assert!(sh().read(&["-c", &script], READ_TIMEOUT).is_err());
        assert_eq!(runs(dir.path()), 1);
        let dir = tempfile::tempdir().unwrap();
        let script = counting(
            dir.path(),
            "echo 'The swarm does not have a leader' >&2; exit 1",
        );
        assert!(sh().run(&["-c", &script], READ_TIMEOUT).is_err());
        assert_eq!(runs(dir.path()), 1);
    }

    #[test]
    fn a_missing_program_is_a_spawn_error() {
        let err = Cli::with_program("/nonexistent/docker")
            .read(&["info"], READ_TIMEOUT)
            .unwrap_err();
        assert!(matches!(err, CallError::Spawn { .. }), "{err}");
    }

    #[test]
    fn stack_services_rides_out_a_leader_election() {
        let dir = tempfile::tempdir().unwrap();
        let fixture = format!(
            "{}/tests/fixtures/update_completed.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let raw: Value = serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
        let inspect = dir.path().join("inspect.json");
        std::fs::write(&inspect, format!("[{}]", raw["service"])).unwrap();
        // A fake docker: `service ls` first answers as during a leader election.
        let script = dir.path().join("docker");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\ncase \"$1 $2\" in\n\"service ls\") {}; echo svc1 ;;\n\"service inspect\") cat {} ;;\n*) exit 9 ;;\nesac\n",
                counting(
                    dir.path(),
                    "if [ $n -eq 1 ]; then echo 'The swarm does not have a leader' >&2; exit 1; fi"
                ),
                inspect.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let services = Cli {
            pause: Duration::ZERO,
            ..Cli::with_program(script.display().to_string())
        };
        // Another test's fork may briefly hold the new script open for writing (ETXTBSY).
        let found = (0..20)
            .find_map(|_| match services.stack_services("rw") {
                Err(e) if format!("{e:#}").contains("busy") => {
                    thread::sleep(Duration::from_millis(50));
                    None
                }
                other => Some(other),
            })
            .unwrap()
            .unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].name(), "rw-fixture-roll");
        assert_eq!(runs(dir.path()), 2);
    }
}
