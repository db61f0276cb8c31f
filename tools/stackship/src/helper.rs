//! One-off helper tasks: a swarm service with one task that is never restarted, on the stack's
//! networks, for work that must happen next to a service the manager cannot reach itself (a
//! password change in PostgreSQL, a dump, a tunnel). Swarm picks its node, so it reaches a
//! database on any node, which `docker exec` cannot.
//!
//! A [`Helper`] removes its service when it is dropped, however the command ends (an error, a
//! timeout, Ctrl-C through [`crate::interrupt`]); only a process killed outright leaves one,
//! labelled `stackship.ops-helper=<what>` so it can be found.
//!
//! Never put a secret value in a helper's arguments or environment (both are in `docker
//! service inspect`): mount the secret and read it from `/run/secrets/` inside.

use std::time::{Duration, Instant};

use crate::docker::{Call, Client, DockerError};
use crate::layout::PROJECT;

/// A swarm secret mounted into the helper at `/run/secrets/<target>` (mode 0400, owned by the
/// helper's numeric `user`, else root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretMount {
    pub source: String,
    pub target: String,
}

/// A swarm config mounted into the helper at `target` (an absolute path; mode 0444).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigMount {
    pub source: String,
    pub target: String,
}

/// What to run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Spec {
    /// The service's name (unique: callers add their process id).
    pub name: String,
    /// What the helper is for, in its `stackship.ops-helper` label (`secret`, `db-backup`).
    pub what: String,
    pub image: String,
    pub entrypoint: Option<String>,
    pub args: Vec<String>,
    pub secrets: Vec<SecretMount>,
    /// Files that are no secret (a server's configuration).
    pub configs: Vec<ConfigMount>,
    /// Plain settings (never a secret: they are in the service spec).
    pub env: Vec<(String, String)>,
    pub networks: Vec<String>,
    /// `node.id==` of the node it must run on (a bind mount of that node's files).
    pub node: Option<String>,
    /// `--mount` values: `type=bind,...` (with `node` set), `type=tmpfs,...` (scratch space
    /// under the read-only root).
    pub mounts: Vec<String>,
    pub user: Option<String>,
    /// Capabilities given back after `--cap-drop ALL` (a chown needs CAP_CHOWN).
    pub caps_add: Vec<String>,
}

impl Spec {
    /// The `docker service create` call: one task, never restarted, read-only root, no
    /// capabilities, an init as PID 1 (so SIGTERM stops the command), detached.
    pub fn create_call(&self) -> Call {
        let label = format!("{PROJECT}.ops-helper={}", self.what);
        let mut args: Vec<String> = [
            "service",
            "create",
            "--detach",
            "--quiet",
            "--name",
            &self.name,
            "--label",
            &label,
            "--restart-condition",
            "none",
            "--endpoint-mode",
            "dnsrr",
            "--read-only",
            "--cap-drop",
            "ALL",
            "--init",
            "--stop-grace-period",
            "5s",
            "--with-registry-auth",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        for cap in &self.caps_add {
            args.extend(["--cap-add".to_owned(), cap.clone()]);
        }
        for network in &self.networks {
            args.extend(["--network".to_owned(), network.clone()]);
        }
        // A secret belongs to the user the helper runs as (root unless `user` says otherwise),
        // readable by it alone.
        let (uid, gid) = match self
            .user
            .as_deref()
            .map(|u| u.split_once(':').unwrap_or((u, u)))
        {
            Some((u, g))
                if [u, g]
                    .iter()
                    .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) =>
            {
                (u, g)
            }
            _ => ("0", "0"),
        };
        for s in &self.secrets {
            args.extend([
                "--secret".to_owned(),
                format!(
                    "source={},target={},uid={uid},gid={gid},mode=0400",
                    s.source, s.target
                ),
            ]);
        }
        for c in &self.configs {
            args.extend([
                "--config".to_owned(),
                format!("source={},target={},mode=0444", c.source, c.target),
            ]);
        }
        for (k, v) in &self.env {
            args.extend(["--env".to_owned(), format!("{k}={v}")]);
        }
        if let Some(node) = &self.node {
            args.extend(["--constraint".to_owned(), format!("node.id=={node}")]);
        }
        for m in &self.mounts {
            args.extend(["--mount".to_owned(), m.clone()]);
        }
        if let Some(user) = &self.user {
            args.extend(["--user".to_owned(), user.clone()]);
        }
        if let Some(e) = &self.entrypoint {
            args.extend(["--entrypoint".to_owned(), e.clone()]);
        }
        args.push(self.image.clone());
        args.extend(self.args.iter().cloned());
        Call::write(args)
    }
}

/// How a helper's task ended, or why it did not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelperError {
    #[error(transparent)]
    Docker(#[from] DockerError),
    /// The task ran and exited non-zero (`exit` when Swarm reported it).
    #[error("helper {name} failed{}: {state}", .exit.map(|c| format!(" (exit {c})")).unwrap_or_default())]
    Failed {
        name: String,
        exit: Option<i64>,
        state: String,
    },
    /// The task never ran to an end: rejected, shut down, orphaned (Swarm's words).
    #[error("helper {name} did not run: {state}")]
    NotRun { name: String, state: String },
    #[error("helper {name} did not finish within {}s (task state: {state})", .after.as_secs())]
    TimedOut {
        name: String,
        after: Duration,
        state: String,
    },
    /// A stop was asked for (Ctrl-C, SIGTERM) while it ran.
    #[error("interrupted while helper {name} ran (task state: {state})")]
    Interrupted { name: String, state: String },
}

/// How a wait is bounded and paced.
pub struct Wait<'a> {
    pub limit: Duration,
    pub poll: Duration,
    /// Checked before each poll: true ends the wait with [`HelperError::Interrupted`].
    pub stop: &'a dyn Fn() -> bool,
}

/// The exit code in Swarm's task error (`task: non-zero exit (3)`).
pub fn exit_code(error: &str) -> Option<i64> {
    let start = error.find("exit (")? + "exit (".len();
    let end = error[start..].find(')')? + start;
    error[start..end].parse().ok()
}

/// Where a task is, from one `{{.CurrentState}}|{{.Error}}` line of `docker service ps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskState {
    /// Not yet running (new, pending, assigned, preparing, starting) or no task yet.
    Waiting,
    Running,
    Complete,
    /// Exited non-zero.
    Failed(Option<i64>),
    /// Rejected, shutdown, orphaned, remove: it will never run.
    Gone,
}

/// Reads one state line (`Failed 2 seconds ago|task: non-zero exit (3)`).
pub fn task_state(line: &str) -> TaskState {
    let (state, error) = line.split_once('|').unwrap_or((line, ""));
    let word = state.split_whitespace().next().unwrap_or("");
    match word {
        "Running" => TaskState::Running,
        "Complete" => TaskState::Complete,
        "Failed" => TaskState::Failed(exit_code(error)),
        "Rejected" | "Shutdown" | "Orphaned" | "Remove" => TaskState::Gone,
        _ => TaskState::Waiting,
    }
}

/// A started helper; its service is removed when this is dropped.
pub struct Helper<'a, 'b> {
    client: &'a Client<'b>,
    name: String,
    removed: bool,
    /// How often its removal looks whether the containers are gone: as often as the last wait
    /// looked at the task (half a second before any wait).
    poll: std::cell::Cell<Duration>,
}

impl<'a, 'b> Helper<'a, 'b> {
    /// Creates the service (detached: it returns at once).
    pub fn start(client: &'a Client<'b>, spec: &Spec) -> Result<Self, HelperError> {
        client.run(&spec.create_call())?;
        Ok(Self {
            client,
            name: spec.name.clone(),
            removed: false,
            poll: std::cell::Cell::new(Duration::from_millis(500)),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn state_line(&self) -> Result<String, DockerError> {
        Ok(self
            .client
            .lines(&Call::read([
                "service",
                "ps",
                self.name.as_str(),
                "--no-trunc",
                "--format",
                "{{.CurrentState}}|{{.Error}}",
            ]))?
            .into_iter()
            .next()
            .unwrap_or_default())
    }

    /// Waits until the task reached `until` (Running or Complete); a task that ended otherwise
    /// is an error naming Swarm's state.
    fn wait_for(&self, until: &TaskState, wait: &Wait<'_>) -> Result<(), HelperError> {
        let started = Instant::now();
        self.poll.set(wait.poll);
        loop {
            let line = self.state_line()?;
            let state = task_state(&line);
            if &state == until || state == TaskState::Complete {
                return Ok(());
            }
            match state {
                TaskState::Failed(exit) => {
                    return Err(HelperError::Failed {
                        name: self.name.clone(),
                        exit,
                        state: line,
                    });
                }
                TaskState::Gone => {
                    return Err(HelperError::NotRun {
                        name: self.name.clone(),
                        state: line,
                    });
                }
                _ => {}
            }
            let shown = if line.is_empty() {
                "not scheduled yet".to_owned()
            } else {
                line
            };
            if (wait.stop)() {
                return Err(HelperError::Interrupted {
                    name: self.name.clone(),
                    state: shown,
                });
            }
            if started.elapsed() >= wait.limit {
                return Err(HelperError::TimedOut {
                    name: self.name.clone(),
                    after: wait.limit,
                    state: shown,
                });
            }
            std::thread::sleep(wait.poll);
        }
    }

    /// Waits until the task completed (exit 0).
    pub fn finish(&self, wait: &Wait<'_>) -> Result<(), HelperError> {
        self.wait_for(&TaskState::Complete, wait)
    }

    /// Waits until the task runs (a tunnel); a task that already completed counts as an end.
    pub fn running(&self, wait: &Wait<'_>) -> Result<(), HelperError> {
        self.wait_for(&TaskState::Running, wait)
    }

    /// The task's output (bounded: `docker service logs` can hang on a lost node).
    pub fn logs(&self) -> String {
        self.client
            .run(
                &Call::read(["service", "logs", "--raw", self.name.as_str()])
                    .with_timeout(Duration::from_secs(30)),
            )
            .unwrap_or_default()
    }

    /// Removes the service now and waits (at most 30 s) until its containers on this node are
    /// gone, so a secret it mounts can be removed next.
    pub fn remove(mut self) -> Result<(), DockerError> {
        self.removed = true;
        remove_service(self.client, &self.name, self.poll.get())
    }
}

fn remove_service(client: &Client<'_>, name: &str, poll: Duration) -> Result<(), DockerError> {
    client.run(&Call::write(["service", "rm", name]))?;
    let label = format!("label=com.docker.swarm.service.name={name}");
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        let left = client.lines(&Call::read(["ps", "-aq", "--filter", label.as_str()]))?;
        if left.is_empty() {
            break;
        }
        std::thread::sleep(poll);
    }
    Ok(())
}

impl Drop for Helper<'_, '_> {
    fn drop(&mut self) {
        if !self.removed {
            // The task may be running: `service rm` stops it (SIGTERM, then SIGKILL after the
            // 5 s grace period).
            let _ = remove_service(self.client, &self.name, self.poll.get());
        }
    }
}

/// Runs a helper to its end: start, wait, copy its output to `progress`, remove. Its output
/// is returned on success; a failure carries it in `progress`.
pub fn run(
    client: &Client<'_>,
    spec: &Spec,
    wait: &Wait<'_>,
    progress: &mut dyn FnMut(&str),
) -> Result<String, HelperError> {
    let helper = Helper::start(client, spec)?;
    let result = helper.finish(wait);
    let output = if matches!(result, Ok(()) | Err(HelperError::Failed { .. })) {
        helper.logs()
    } else {
        String::new()
    };
    if result.is_err() {
        for line in output.lines().filter(|l| !l.trim().is_empty()) {
            progress(&format!("  {}: {line}", spec.what));
        }
    }
    helper.remove()?;
    result.map(|()| output)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::fake::FakeEngine;

    fn spec() -> Spec {
        Spec {
            name: "stackship-prod-ops-secret-42".into(),
            what: "secret".into(),
            image: "postgres:17@sha256:abc".into(),
            entrypoint: Some("sh".into()),
            args: vec!["-c".into(), "echo hi".into()],
            secrets: vec![SecretMount {
                source: "stackship-prod-db-password-v2".into(),
                target: "new".into(),
            }],
            env: vec![("PGHOST".into(), "postgres".into())],
            networks: vec!["stackship-prod_data".into()],
            ..Spec::default()
        }
    }

    fn never() -> bool {
        false
    }

    fn quick(stop: &dyn Fn() -> bool) -> Wait<'_> {
        Wait {
            limit: Duration::from_millis(50),
            poll: Duration::from_millis(1),
            stop,
        }
    }

    #[test]
    fn the_service_is_one_unrestarted_hardened_task_with_its_secrets_mounted() {
        let line = spec().create_call().command_line();
        for part in [
            "--restart-condition none",
            "--read-only",
            "--cap-drop ALL",
            "--init",
            "--label stackship.ops-helper=secret",
            "--network stackship-prod_data",
            "--secret source=stackship-prod-db-password-v2,target=new,uid=0,gid=0,mode=0400",
            "--env PGHOST=postgres",
            "--entrypoint sh postgres:17@sha256:abc -c",
        ] {
            assert!(line.contains(part), "{part} missing: {line}");
        }
        assert!(!line.contains("--constraint"), "{line}");
        assert!(!line.contains("--config"), "{line}");
        let mut served = spec();
        served.configs = vec![ConfigMount {
            source: "stackship-prod-ops-acme-42".into(),
            target: "/etc/stackship/acme-responder.conf".into(),
        }];
        served.mounts = vec!["type=tmpfs,destination=/tmp".into()];
        let line = served.create_call().command_line();
        assert!(
            line.contains("--config source=stackship-prod-ops-acme-42,target=/etc/stackship/acme-responder.conf,mode=0444"),
            "{line}"
        );
        assert!(
            line.contains("--mount type=tmpfs,destination=/tmp"),
            "{line}"
        );
        let mut pinned = spec();
        pinned.node = Some("n1".into());
        pinned.mounts = vec!["type=bind,source=/b,target=/backup".into()];
        pinned.user = Some("0:0".into());
        pinned.caps_add = vec!["CAP_CHOWN".into()];
        let line = pinned.create_call().command_line();
        assert!(line.contains("--constraint node.id==n1"), "{line}");
        assert!(
            line.contains("--mount type=bind,source=/b,target=/backup"),
            "{line}"
        );
        assert!(line.contains("--user 0:0"), "{line}");
        assert!(line.contains("--cap-drop ALL --init --stop-grace-period 5s --with-registry-auth --cap-add CAP_CHOWN"), "{line}");
    }

    #[test]
    fn a_helper_running_as_a_user_owns_its_secrets() {
        let secret = |user: Option<&str>| {
            let mut s = spec();
            s.user = user.map(str::to_owned);
            let line = s.create_call().command_line();
            let at = line.find("--secret ").expect("a secret");
            line[at..].split(' ').nth(1).unwrap().to_owned()
        };
        let own = "source=stackship-prod-db-password-v2,target=new";
        assert_eq!(secret(None), format!("{own},uid=0,gid=0,mode=0400"));
        assert_eq!(
            secret(Some("1001:1002")),
            format!("{own},uid=1001,gid=1002,mode=0400")
        );
        assert_eq!(
            secret(Some("999")),
            format!("{own},uid=999,gid=999,mode=0400")
        );
        // A user by name: the mount cannot name it; root owns the secret.
        assert_eq!(
            secret(Some("postgres")),
            format!("{own},uid=0,gid=0,mode=0400")
        );
        assert_eq!(
            secret(Some("1001:")),
            format!("{own},uid=0,gid=0,mode=0400")
        );
    }

    #[test]
    fn task_states_and_exit_codes() {
        assert_eq!(task_state("Running 2 seconds ago|"), TaskState::Running);
        assert_eq!(task_state("Complete 1 second ago|"), TaskState::Complete);
        assert_eq!(
            task_state("Failed 1 second ago|task: non-zero exit (3)"),
            TaskState::Failed(Some(3))
        );
        assert_eq!(
            task_state("Failed 1 second ago|starting container failed"),
            TaskState::Failed(None)
        );
        for gone in [
            "Rejected now|no such image",
            "Shutdown now|",
            "Orphaned x|",
            "Remove x|",
        ] {
            assert_eq!(task_state(gone), TaskState::Gone, "{gone}");
        }
        for waiting in [
            "",
            "New 1s|",
            "Pending 1s|",
            "Preparing 1s|",
            "Starting 1s|",
        ] {
            assert_eq!(task_state(waiting), TaskState::Waiting, "{waiting}");
        }
        assert_eq!(exit_code("task: non-zero exit (137)"), Some(137));
        assert_eq!(exit_code("exit (x)"), None);
        assert_eq!(exit_code("exit (12"), None);
        assert_eq!(exit_code("nothing"), None);
    }

    fn engine(states: &[&str]) -> FakeEngine {
        let fake = FakeEngine::new();
        fake.answer(&["service", "create"], "");
        for s in states {
            fake.answer_once(&["service", "ps"], s);
        }
        fake.answer(&["service", "logs"], "password changed\n");
        fake.answer(&["service", "rm"], "");
        fake.answer_once(&["ps", "-aq"], "c1\n");
        fake.answer(&["ps", "-aq"], "");
        fake
    }

    #[test]
    fn a_completed_helper_returns_its_output_and_is_removed() {
        let fake = engine(&["Preparing 1s|", "Running 1s|", "Complete 1s|"]);
        let client = Client::new(&fake);
        let mut lines = Vec::new();
        let out = run(&client, &spec(), &quick(&never), &mut |l| {
            lines.push(l.to_owned())
        })
        .unwrap();
        assert_eq!(out, "password changed\n");
        assert!(lines.is_empty(), "{lines:?}");
        let writes = fake.writes();
        assert_eq!(writes.len(), 2, "{writes:?}");
        assert!(writes[0].starts_with("docker service create"));
        assert_eq!(writes[1], "docker service rm stackship-prod-ops-secret-42");
        // It waited until the container was gone.
        let ps = fake
            .command_lines()
            .iter()
            .filter(|l| l.starts_with("docker ps -aq"))
            .count();
        assert_eq!(ps, 2);
    }

    #[test]
    fn a_failed_helper_shows_its_output_and_is_removed() {
        let fake = engine(&["Failed 1s|task: non-zero exit (1)"]);
        let client = Client::new(&fake);
        let mut lines = Vec::new();
        let e = run(&client, &spec(), &quick(&never), &mut |l| {
            lines.push(l.to_owned())
        })
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "helper stackship-prod-ops-secret-42 failed (exit 1): Failed 1s|task: non-zero exit (1)"
        );
        assert_eq!(lines, vec!["  secret: password changed"]);
        assert_eq!(
            fake.writes().last().unwrap(),
            "docker service rm stackship-prod-ops-secret-42"
        );
    }

    #[test]
    fn timeouts_interruptions_and_rejections_remove_the_helper_too() {
        let fake = engine(&[]);
        fake.answer(&["service", "ps"], "Pending 1s|no suitable node");
        let client = Client::new(&fake);
        let e = run(&client, &spec(), &quick(&never), &mut |_| {}).unwrap_err();
        assert!(
            matches!(&e, HelperError::TimedOut { state, .. } if state == "Pending 1s|no suitable node"),
            "{e}"
        );
        assert!(e.to_string().contains("did not finish within 0s"), "{e}");
        assert_eq!(
            fake.writes().last().unwrap(),
            "docker service rm stackship-prod-ops-secret-42"
        );

        let fake = engine(&[]);
        fake.answer(&["service", "ps"], "");
        let client = Client::new(&fake);
        let e = run(&client, &spec(), &quick(&|| true), &mut |_| {}).unwrap_err();
        assert_eq!(
            e.to_string(),
            "interrupted while helper stackship-prod-ops-secret-42 ran (task state: not scheduled yet)"
        );
        assert_eq!(fake.writes().len(), 2);
        // No logs of a task that never ended.
        assert!(
            !fake
                .command_lines()
                .iter()
                .any(|l| l.contains("service logs"))
        );

        let fake = engine(&["Rejected 1s|No such image: postgres:17"]);
        let client = Client::new(&fake);
        let e = run(&client, &spec(), &quick(&never), &mut |_| {}).unwrap_err();
        assert!(matches!(e, HelperError::NotRun { .. }), "{e}");
        assert!(e.to_string().contains("No such image"), "{e}");
        assert_eq!(fake.writes().len(), 2);
    }

    #[test]
    fn a_helper_that_cannot_be_removed_is_an_error() {
        let fake = FakeEngine::new();
        fake.answer(&["service", "create"], "");
        fake.answer(&["service", "ps"], "Complete 1s|");
        fake.answer(&["service", "logs"], "");
        fake.fail(
            &["service", "rm"],
            "Error response from daemon: rpc error: node is down",
        );
        let client = Client::new(&fake);
        let e = run(&client, &spec(), &quick(&never), &mut |_| {}).unwrap_err();
        assert!(e.to_string().contains("node is down"), "{e}");
        // Removed once, not again on drop.
        assert_eq!(
            fake.writes()
                .iter()
                .filter(|w| w.starts_with("docker service rm"))
                .count(),
            1
        );
    }

    #[test]
    fn a_dropped_helper_is_removed_and_a_running_one_is_seen_running() {
        let fake = engine(&["Starting 1s|", "Running 1s|"]);
        let client = Client::new(&fake);
        {
            let helper = Helper::start(&client, &spec()).unwrap();
            assert_eq!(helper.name(), "stackship-prod-ops-secret-42");
            helper.running(&quick(&never)).unwrap();
            assert_eq!(fake.writes().len(), 1);
        }
        assert_eq!(
            fake.writes().last().unwrap(),
            "docker service rm stackship-prod-ops-secret-42"
        );
        // A helper that could not be created leaves nothing to remove.
        let fake = FakeEngine::new();
        fake.fail(
            &["service", "create"],
            "network stackship-prod_data not found",
        );
        let client = Client::new(&fake);
        let e = run(&client, &spec(), &quick(&never), &mut |_| {}).unwrap_err();
        assert!(
            e.to_string()
                .contains("network stackship-prod_data not found")
        );
        assert_eq!(fake.writes().len(), 1);
    }
}
