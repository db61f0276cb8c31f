//! The real engine: the docker CLI, which every Swarm manager has and which honours the user's
//! `DOCKER_HOST` and contexts. Each call runs with a deadline and is killed when it passes it
//! (a `docker service logs` on a lost node would otherwise hang while the deploy lock is held).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::ops::ControlFlow;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use rollout_watcher::docker::{reader, wait_until};

use super::{Call, DockerError, Engine, Stream, Streamed};

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

impl CliEngine {
    /// `call` started with its output piped to us (its standard input written from a thread:
    /// a large input must not block while the child fills its output).
    fn spawn(&self, call: &Call) -> Result<Child, DockerError> {
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
            thread::spawn(move || {
                let _ = stdin.write_all(&input);
            });
        }
        Ok(child)
    }
}

/// How often a stream looks at its processes, deadlines and stop request when no line comes.
const POLL: Duration = Duration::from_millis(20);

/// Lines of standard error a failed streamed call keeps for its error.
const STDERR_TAIL: usize = 5;

/// What a stream's reader threads report.
enum Event {
    Line(usize, Stream, Vec<u8>),
    /// A pipe reached its end.
    Closed(usize),
}

/// One process of a stream; killed (and reaped) when dropped before it ended, so no return
/// from [`CliEngine::stream`] leaves a process behind.
struct Streaming {
    child: Child,
    command: String,
    timeout: Duration,
    deadline: Option<Instant>,
    /// Its pipes whose reader has not seen the end yet.
    open: usize,
    stderr_tail: VecDeque<String>,
    ended: bool,
}

impl Drop for Streaming {
    fn drop(&mut self) {
        if !self.ended {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A thread sending `pipe`'s lines, then its end.
fn send_lines(pipe: impl Read + Send + 'static, index: usize, stream: Stream, tx: Sender<Event>) {
    thread::spawn(move || {
        let mut pipe = BufReader::new(pipe);
        loop {
            let mut line = Vec::new();
            match pipe.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if line.last() == Some(&b'\n') {
                        line.pop();
                    }
                    if tx.send(Event::Line(index, stream, line)).is_err() {
                        // The stream is over: its process is being stopped.
                        return;
                    }
                }
            }
        }
        let _ = tx.send(Event::Closed(index));
    });
}

/// An exit status in words.
fn status_text(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("ended by signal {signal}"),
        (None, None) => "ended".to_owned(),
    }
}

impl Engine for CliEngine {
    fn run(&self, call: &Call) -> Result<String, DockerError> {
        let command = call.command_line();
        let mut child = self.spawn(call)?;
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

    fn stream(
        &self,
        calls: &[Call],
        each: &mut dyn FnMut(usize, Streamed<'_>) -> ControlFlow<()>,
        stop: &dyn Fn() -> bool,
    ) -> Result<(), DockerError> {
        let (tx, rx) = mpsc::channel();
        let mut processes = Vec::new();
        for (index, call) in calls.iter().enumerate() {
            // A call that cannot start drops (stops) those already started.
            let mut child = self.spawn(call)?;
            let mut open = 0;
            if let Some(out) = child.stdout.take() {
                send_lines(out, index, Stream::Stdout, tx.clone());
                open += 1;
            }
            if let Some(err) = child.stderr.take() {
                send_lines(err, index, Stream::Stderr, tx.clone());
                open += 1;
            }
            processes.push(Streaming {
                child,
                command: call.command_line(),
                timeout: call.timeout,
                deadline: Instant::now().checked_add(call.timeout),
                open,
                stderr_tail: VecDeque::new(),
                ended: false,
            });
        }
        drop(tx);
        loop {
            if processes.iter().all(|p| p.ended) || stop() {
                return Ok(());
            }
            match rx.recv_timeout(POLL) {
                Ok(Event::Line(index, stream, bytes)) => {
                    let line = String::from_utf8_lossy(&bytes);
                    if stream == Stream::Stderr {
                        let tail = &mut processes[index].stderr_tail;
                        if tail.len() == STDERR_TAIL {
                            tail.pop_front();
                        }
                        tail.push_back(line.trim().to_owned());
                    }
                    if each(index, Streamed::Line(stream, &line)).is_break() {
                        return Ok(());
                    }
                }
                Ok(Event::Closed(index)) => processes[index].open -= 1,
                Err(RecvTimeoutError::Timeout) => {}
                // Every pipe has ended; a process may still be exiting.
                Err(RecvTimeoutError::Disconnected) => thread::sleep(POLL),
            }
            let now = Instant::now();
            for (index, p) in processes.iter_mut().enumerate().filter(|(_, p)| !p.ended) {
                let end = if p.open == 0
                    && let Some(status) = p.child.try_wait().ok().flatten()
                {
                    p.ended = true;
                    if status.success() {
                        Ok(())
                    } else {
                        let tail: Vec<&str> = p
                            .stderr_tail
                            .iter()
                            .map(String::as_str)
                            .filter(|l| !l.is_empty())
                            .collect();
                        Err(DockerError::Failed {
                            command: p.command.clone(),
                            stderr: if tail.is_empty() {
                                status_text(status)
                            } else {
                                tail.join("\n")
                            },
                        })
                    }
                } else if p.deadline.is_some_and(|d| now >= d) {
                    let _ = p.child.kill();
                    let _ = p.child.wait();
                    p.ended = true;
                    Err(DockerError::TimedOut {
                        command: p.command.clone(),
                        after: p.timeout,
                    })
                } else {
                    continue;
                };
                // Ctrl-C reaches the processes too: their end is then no failure to report.
                if stop() || each(index, Streamed::Ended(end)).is_break() {
                    return Ok(());
                }
            }
        }
    }

    fn run_attached(&self, call: &Call) -> Result<u8, DockerError> {
        let mut process = Command::new(&self.program);
        if let Some(dir) = &call.dir {
            process.current_dir(dir);
        }
        let status = process
            .args(&call.args)
            .envs(call.env.iter().map(|(k, v)| (k, v)))
            .status()
            .map_err(|e| DockerError::Spawn(format!("{}: {e}", self.program)))?;
        Ok(match (status.code(), status.signal()) {
            (Some(code), _) => u8::try_from(code).unwrap_or(u8::MAX),
            (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(u8::MAX),
            (None, None) => u8::MAX,
        })
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
            // exec: the process stopped is the sleeper itself, which would otherwise outlive
            // the test by 30 s.
            .run(&Call::read(["-c", "exec sleep 30"]).with_timeout(Duration::from_millis(300)))
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

    /// Streams `calls` (shell scripts) to the end, or until a call fails when `break_on_failure`;
    /// what they hand over as `index event` lines.
    fn streamed(calls: &[Call], break_on_failure: bool) -> Vec<String> {
        let mut seen = Vec::new();
        sh().stream(
            calls,
            &mut |i, event| {
                let failed = matches!(event, Streamed::Ended(Err(_)));
                seen.push(match event {
                    Streamed::Line(stream, line) => format!("{i} {stream:?} {line}"),
                    Streamed::Ended(Ok(())) => format!("{i} ended"),
                    Streamed::Ended(Err(e)) => format!("{i} failed: {e}"),
                });
                if failed && break_on_failure {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            },
            &|| false,
        )
        .unwrap();
        seen
    }

    /// Whether process `pid` is gone (reaped, not a zombie).
    fn gone(pid: &str) -> bool {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    }

    #[test]
    fn streamed_lines_come_with_their_call_and_output_then_its_end() {
        // a prints its last line 0.3 s after b has finished (a marker file, not a race of
        // sleeps: on a loaded machine b may start late).
        let dir = tempfile::tempdir().unwrap();
        let done = dir.path().join("b-done");
        let a = format!(
            "echo a1; echo a-err >&2; until [ -e {0} ]; do sleep 0.02; done; sleep 0.3; echo a2",
            done.display()
        );
        let b = format!("echo b1; printf 'b2 no newline'; touch {}", done.display());
        let seen = streamed(&[Call::read(["-c", &a]), Call::read(["-c", &b])], false);
        let of = |prefix: &str| -> Vec<&str> {
            seen.iter()
                .filter(|l| l.starts_with(prefix))
                .map(String::as_str)
                .collect()
        };
        assert_eq!(of("0 Stdout"), vec!["0 Stdout a1", "0 Stdout a2"]);
        assert_eq!(of("0 Stderr"), vec!["0 Stderr a-err"]);
        assert_eq!(
            of("1 "),
            vec!["1 Stdout b1", "1 Stdout b2 no newline", "1 ended"]
        );
        assert_eq!(seen.len(), 7, "{seen:?}");
        // Side by side: b ended before a printed its last line, after a pause.
        assert_eq!(seen[5..], ["0 Stdout a2", "0 ended"]);
    }

    #[test]
    fn a_failed_streamed_call_names_its_stderr_and_the_reader_decides_about_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let failed = dir.path().join("failed");
        let script = format!(
            "echo 'no such service: x' >&2; touch {}; exit 1",
            failed.display()
        );
        let failing = Call::read(["-c", &script]);
        // Going on: the other call runs to its end (its line 0.5 s after the failure).
        let late = format!(
            "until [ -e {} ]; do sleep 0.02; done; sleep 0.5; echo late",
            failed.display()
        );
        let seen = streamed(&[Call::read(["-c", &late]), failing], false);
        assert_eq!(
            seen,
            vec![
                "1 Stderr no such service: x".to_owned(),
                format!("1 failed: `docker -c {script}` failed: no such service: x"),
                "0 Stdout late".to_owned(),
                "0 ended".to_owned()
            ]
        );
        // Breaking: the other call is stopped at once.
        let started = Instant::now();
        // The failing call fails once the other has said its pid.
        let pid_file = dir.path().join("pid");
        let sleeper = format!("echo $$; echo $$ > {}; exec sleep 30", pid_file.display());
        let failing = Call::read([
            "-c",
            &format!(
                "until [ -s {} ]; do sleep 0.02; done; {script}",
                pid_file.display()
            ),
        ]);
        let seen = streamed(&[Call::read(["-c", &sleeper]), failing], true);
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(seen.iter().any(|l| l.starts_with("1 failed: ")), "{seen:?}");
        // (its pid from the file: the failure may be read before the sleeper's first line)
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        assert!(gone(pid.trim()), "the sleeping call still runs");
        // Its error is its stderr, not what it printed on stdout.
        let noisy = "echo 'a line of output'; echo 'no such service: y' >&2; exit 1";
        let seen = streamed(&[Call::read(["-c", noisy])], false);
        assert_eq!(
            seen.last().unwrap(),
            &format!("0 failed: `docker -c {noisy}` failed: no such service: y")
        );
        let seen = streamed(&[Call::read(["-c", "kill -TERM $$"])], false);
        assert!(
            seen[0].ends_with("failed: ended by signal 15"),
            "a silent failure names how it ended: {seen:?}"
        );
    }

    #[test]
    fn a_stream_ends_when_the_reader_breaks_or_a_stop_is_asked() {
        let started = Instant::now();
        let mut pid = String::new();
        sh().stream(
            &[Call::read(["-c", "echo $$; exec yes"])],
            &mut |_, event| match event {
                Streamed::Line(_, line) if pid.is_empty() => {
                    pid = line.to_owned();
                    ControlFlow::Continue(())
                }
                _ => ControlFlow::Break(()),
            },
            &|| false,
        )
        .unwrap();
        assert!(gone(&pid), "yes still runs after the break");
        let asked = std::cell::Cell::new(false);
        let mut pid = String::new();
        sh().stream(
            &[Call::read(["-c", "echo $$; exec sleep 30"])],
            &mut |_, event| {
                if let Streamed::Line(_, line) = event {
                    pid = line.to_owned();
                    asked.set(true);
                }
                ControlFlow::Continue(())
            },
            &|| asked.get(),
        )
        .unwrap();
        assert!(gone(&pid), "sleep still runs after the stop");
        assert!(started.elapsed() < Duration::from_secs(10));
        let err = CliEngine::with_program("/nonexistent/docker")
            .stream(
                &[Call::read(["service", "logs", "x"])],
                &mut |_, _| ControlFlow::Continue(()),
                &|| false,
            )
            .unwrap_err();
        assert!(matches!(err, DockerError::Spawn(_)), "{err}");
    }

    #[test]
    fn a_streamed_call_past_its_deadline_is_stopped_unless_it_has_none() {
        let seen = streamed(
            &[
                Call::read(["-c", "echo $$; exec sleep 30"])
                    .with_timeout(Duration::from_millis(300)),
                Call::read(["-c", "sleep 0.1; printf 'ok \\377\\n'"]).with_timeout(Duration::MAX),
            ],
            false,
        );
        assert_eq!(seen.len(), 4, "{seen:?}");
        assert!(gone(seen[0].strip_prefix("0 Stdout ").unwrap()));
        assert_eq!(seen[1..3], ["1 Stdout ok \u{fffd}", "1 ended"]);
        assert_eq!(
            seen[3],
            "0 failed: `docker -c echo $$; exec sleep 30` did not answer within 0s (stopped)"
        );
    }

    #[test]
    fn an_attached_call_gives_its_exit_status() {
        assert_eq!(
            sh().run_attached(&Call::write(["-c", "exit 7"])).unwrap(),
            7
        );
        assert_eq!(sh().run_attached(&Call::write(["-c", "true"])).unwrap(), 0);
        assert_eq!(
            sh().run_attached(&Call::write(["-c", "kill -TERM $$"]))
                .unwrap(),
            143
        );
        assert!(matches!(
            CliEngine::with_program("/nonexistent/docker").run_attached(&Call::write(["exec"])),
            Err(DockerError::Spawn(_))
        ));
    }

    #[test]
    fn non_utf8_output_is_an_error() {
        let err = sh().run(&Call::read(["-c", "printf '\\377'"])).unwrap_err();
        assert!(matches!(err, DockerError::NotUtf8 { .. }), "{err}");
    }
}
