//! The real engine: the docker CLI, which every Swarm manager has and which honours the user's
//! `DOCKER_HOST` and contexts. Each call runs with a deadline and is killed when it passes it
//! (a `docker service logs` on a lost node would otherwise hang while the deploy lock is held).

use std::io::Write;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Instant;

use rollout_watcher::docker::{reader, wait_until};

use super::{Call, DockerError, Engine};

/// Runs `docker` (or another program speaking its CLI, for tests).
#[derive(Debug, Clone)]
pub struct CliEngine {
    program: String,
}

impl Default for CliEngine {
    fn default() -> Self {
        Self {
            program: "docker".to_owned(),
        }
    }
}

impl CliEngine {
    /// An engine that runs `program` instead of `docker`.
    pub fn with_program(program: impl Into<String>) -> Self {
        Self {
            program: program.into(),
        }
    }
}

impl Engine for CliEngine {
    fn run(&self, call: &Call) -> Result<String, DockerError> {
        let command = call.command_line();
        let mut process = Command::new(&self.program);
        if let Some(dir) = &call.dir {
            process.current_dir(dir);
        }
        let mut child = process
            .args(&call.args)
            .envs(call.env.iter().map(|(k, v)| (k, v)))
            .stdin(if call.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(if call.pass_stderr {
                Stdio::inherit()
            } else {
                Stdio::piped()
            })
            .spawn()
            .map_err(|e| DockerError::Spawn(format!("{}: {e}", self.program)))?;
        if let (Some(input), Some(mut stdin)) = (call.stdin.clone(), child.stdin.take()) {
            // A writer thread: a large input must not block while the child fills its output.
            thread::spawn(move || {
                let _ = stdin.write_all(&input);
            });
        }
        let out = reader(child.stdout.take());
        let err = reader(child.stderr.take());
        let status = match wait_until(&mut child, Instant::now() + call.timeout) {
            Some(status) => status,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(DockerError::TimedOut {
                    command,
                    after: call.timeout,
                });
            }
        };
        let stdout = out.join().unwrap_or_default();
        let stderr = err.join().unwrap_or_default();
        if !status.success() {
            let stderr = String::from_utf8_lossy(&stderr).trim().to_owned();
            return Err(DockerError::Failed {
                command,
                stderr: if stderr.is_empty() {
                    format!("exit status {}", status.code().unwrap_or(-1))
                } else {
                    stderr
                },
            });
        }
        String::from_utf8(stdout).map_err(|_| DockerError::NotUtf8 { command })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sh() -> CliEngine {
        CliEngine::with_program("sh")
    }

    #[test]
    fn output_of_a_successful_call() {
        let out = sh()
            .run(&Call::read(["-c", "echo hello; echo noise >&2"]))
            .unwrap();
        assert_eq!(out, "hello\n");
    }

    #[test]
    fn a_failed_call_carries_the_command_and_its_stderr() {
        let err = sh()
            .run(&Call::read(["-c", "echo 'No such service: x' >&2; exit 1"]))
            .unwrap_err();
        assert_eq!(
            err,
            DockerError::Failed {
                command: "docker -c echo 'No such service: x' >&2; exit 1".into(),
                stderr: "No such service: x".into()
            }
        );
    }

    #[test]
    fn a_silent_failure_names_its_exit_status() {
        let err = sh().run(&Call::read(["-c", "exit 3"])).unwrap_err();
        assert!(err.to_string().ends_with("failed: exit status 3"), "{err}");
    }

    #[test]
    fn a_hung_call_is_stopped_at_its_deadline() {
        let started = Instant::now();
        let err = sh()
            .run(&Call::read(["-c", "sleep 30"]).with_timeout(Duration::from_millis(300)))
            .unwrap_err();
        assert!(matches!(err, DockerError::TimedOut { .. }), "{err}");
        assert!(err.is_transient());
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn stdin_reaches_the_command() {
        let out = sh()
            .run(&Call::write(["-c", "cat"]).with_stdin("s3cret"))
            .unwrap();
        assert_eq!(out, "s3cret");
    }

    #[test]
    fn passed_stderr_is_not_kept_for_the_error() {
        let err = sh()
            .run(&Call::write(["-c", "echo visible >&2; exit 4"]).passing_stderr())
            .unwrap_err();
        assert!(err.to_string().ends_with("failed: exit status 4"), "{err}");
    }

    #[test]
    fn the_command_runs_in_its_directory() {
        let out = sh().run(&Call::read(["-c", "pwd"]).in_dir("/tmp")).unwrap();
        assert_eq!(out.trim(), "/tmp");
    }

    #[test]
    fn env_reaches_the_command() {
        let out = sh()
            .run(
                &Call::read(["-c", "printf %s \"$STACKSHIP_X\""]).with_env([("STACKSHIP_X", "42")]),
            )
            .unwrap();
        assert_eq!(out, "42");
    }

    #[test]
    fn a_missing_program_is_a_spawn_error() {
        let err = CliEngine::with_program("/nonexistent/docker")
            .run(&Call::read(["info"]))
            .unwrap_err();
        assert!(matches!(err, DockerError::Spawn(_)), "{err}");
        assert!(!err.is_transient());
    }

    #[test]
    fn non_utf8_output_is_an_error() {
        let err = sh().run(&Call::read(["-c", "printf '\\377'"])).unwrap_err();
        assert!(matches!(err, DockerError::NotUtf8 { .. }), "{err}");
    }
}
