//! The one way this tool talks to Docker: a [`Call`] (the docker CLI's arguments, whether it
//! changes anything, how long it may take) given to an [`Engine`].
//!
//! [`cli::CliEngine`] runs the docker CLI with a deadline; [`fake::FakeEngine`] records the
//! calls it was asked to make and answers from recorded output, so the order of steps, what a
//! refusal leaves untouched and what each failure reports are tested without Docker.
//! [`Client`] adds what every caller wants: reads are retried on Swarm's transient errors
//! (a leader election, a manager restarting), writes never are.

pub mod cli;
pub mod fake;

use std::fmt;
use std::ops::ControlFlow;
use std::time::Duration;

/// Whether a call only looks (and may be repeated) or changes the swarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Read,
    Write,
}

/// One docker CLI invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub args: Vec<String>,
    /// Written to the command's standard input (a password for `docker login`, a secret).
    pub stdin: Option<Vec<u8>>,
    /// Set in the command's environment (`docker stack deploy` expands the stack file's
    /// `${VAR}`s from it).
    pub env: Vec<(String, String)>,
    /// The working directory (a stack file's relative `file:` paths resolve against it).
    pub dir: Option<std::path::PathBuf>,
    /// Docker's standard error goes straight to ours (its warnings, e.g. `docker stack
    /// deploy`'s about images it cannot resolve) instead of into the error on failure.
    pub pass_stderr: bool,
    pub effect: Effect,
    /// The call is stopped (and fails) after this long.
    pub timeout: Duration,
}

/// How long a call may take unless it says otherwise: long enough for a busy manager, short
/// enough that a lost node cannot hold the deploy lock for ever.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

impl Call {
    /// A read: `docker ARGS`, retried on transient errors.
    pub fn read<I, S>(args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            args: args.into_iter().map(Into::into).collect(),
            stdin: None,
            env: Vec::new(),
            dir: None,
            pass_stderr: false,
            effect: Effect::Read,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// A change: `docker ARGS`, never retried.
    pub fn write<I, S>(args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            effect: Effect::Write,
            ..Self::read(args)
        }
    }

    /// The same call with standard input.
    pub fn with_stdin(mut self, stdin: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(stdin.into());
        self
    }

    /// The same call with these environment variables set.
    pub fn with_env<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.env
            .extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// The same call run in `dir`.
    pub fn in_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// The same call with Docker's standard error passed through to ours.
    pub fn passing_stderr(mut self) -> Self {
        self.pass_stderr = true;
        self
    }

    /// The same call with another deadline.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The command line as a user would type it (standard input is never shown).
    pub fn command_line(&self) -> String {
        let mut s = String::from("docker");
        for a in &self.args {
            s.push(' ');
            s.push_str(a);
        }
        s
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.command_line())
    }
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DockerError {
    #[error("cannot run the docker CLI ({0}): is Docker installed?")]
    Spawn(String),
    /// The command ran and failed; `stderr` is Docker's own words.
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("`{command}` did not answer within {}s (stopped)", .after.as_secs())]
    TimedOut { command: String, after: Duration },
    #[error("`{command}` printed output that is not UTF-8")]
    NotUtf8 { command: String },
}

impl DockerError {
    /// Whether the same read may succeed in a moment: Swarm's answers while it elects a leader
    /// or a manager restarts, and a call that timed out.
    pub fn is_transient(&self) -> bool {
        match self {
            DockerError::TimedOut { .. } => true,
            DockerError::Failed { stderr, .. } => TRANSIENT.iter().any(|p| stderr.contains(p)),
            DockerError::Spawn(_) | DockerError::NotUtf8 { .. } => false,
        }
    }
}

/// Swarm's and the engine's messages for states that pass by themselves.
const TRANSIENT: &[&str] = &[
    "The swarm does not have a leader",
    "rpc error: code = Unavailable",
    "rpc error: code = DeadlineExceeded",
    "context deadline exceeded",
    "connection reset by peer",
    "i/o timeout",
];

/// Which of a command's outputs a streamed line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// What a streamed call hands over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Streamed<'a> {
    /// A line of its output, without the newline (bytes that are not UTF-8 replaced).
    Line(Stream, &'a str),
    /// Its end: Ok, or why it failed (the last lines of its standard error, else its exit
    /// status; or its deadline passed and it was stopped).
    Ended(Result<(), DockerError>),
}

/// Runs docker calls.
pub trait Engine {
    /// Runs `call` and returns its standard output.
    fn run(&self, call: &Call) -> Result<String, DockerError>;

    /// Runs `calls` side by side and hands over what each prints, line by line as it comes,
    /// and its end, with the index of its call. A call that fails (or passes its deadline; a
    /// timeout too large to reach is none) leaves the others running: `each` decides, and
    /// breaking stops them all, as `stop` turning true does (it is asked between lines).
    /// Returns when every call has ended or they were stopped; an error only when a call
    /// cannot start.
    fn stream(
        &self,
        calls: &[Call],
        each: &mut dyn FnMut(usize, Streamed<'_>) -> ControlFlow<()>,
        stop: &dyn Fn() -> bool,
    ) -> Result<(), DockerError>;

    /// Runs `call` on this process's own standard input, output and error (a terminal, a
    /// pipe), without a deadline, and returns its exit status (128 + the signal when a signal
    /// ended it). A status other than 0 is no error: it is the command's answer. The call's
    /// `stdin` is not used.
    fn run_attached(&self, call: &Call) -> Result<u8, DockerError>;
}

/// How reads are retried.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Attempts in all (1: no retry).
    pub attempts: u32,
    /// Pause before the second attempt; doubled before each further one.
    pub first_pause: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        // 1 + 2 + 4 s: a Swarm leader election takes a few seconds.
        Self {
            attempts: 4,
            first_pause: Duration::from_secs(1),
        }
    }
}

/// An engine plus the retry rule; what the commands use.
pub struct Client<'a> {
    engine: &'a dyn Engine,
    retry: Retry,
    sleep: &'a dyn Fn(Duration),
}

fn real_sleep(d: Duration) {
    std::thread::sleep(d);
}

impl<'a> Client<'a> {
    /// A client over `engine` with the default retry rule.
    pub fn new(engine: &'a dyn Engine) -> Self {
        Self {
            engine,
            retry: Retry::default(),
            sleep: &real_sleep,
        }
    }

    /// The same client with another retry rule and pause function (tests pause for nothing).
    pub fn with_retry(mut self, retry: Retry, sleep: &'a dyn Fn(Duration)) -> Self {
        self.retry = retry;
        self.sleep = sleep;
        self
    }

    /// Runs `call`; a read that fails transiently is tried again.
    pub fn run(&self, call: &Call) -> Result<String, DockerError> {
        let mut pause = self.retry.first_pause;
        let mut attempt = 1;
        loop {
            match self.engine.run(call) {
                Err(e)
                    if call.effect == Effect::Read
                        && e.is_transient()
                        && attempt < self.retry.attempts =>
                {
                    (self.sleep)(pause);
                    pause *= 2;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Streams `calls` (see [`Engine::stream`]); never retried, its lines are already out.
    pub fn stream(
        &self,
        calls: &[Call],
        each: &mut dyn FnMut(usize, Streamed<'_>) -> ControlFlow<()>,
        stop: &dyn Fn() -> bool,
    ) -> Result<(), DockerError> {
        self.engine.stream(calls, each, stop)
    }

    /// Runs `call` on our terminal (see [`Engine::run_attached`]); never retried.
    pub fn run_attached(&self, call: &Call) -> Result<u8, DockerError> {
        self.engine.run_attached(call)
    }

    /// Runs `call` and splits its output into non-empty trimmed lines.
    pub fn lines(&self, call: &Call) -> Result<Vec<String>, DockerError> {
        Ok(self
            .run(call)?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeEngine;
    use super::*;
    use std::cell::RefCell;

    fn failed(stderr: &str) -> DockerError {
        DockerError::Failed {
            command: "docker x".into(),
            stderr: stderr.into(),
        }
    }

    #[test]
    fn transient_errors_are_swarms_passing_states_only() {
        assert!(
            failed("Error response from daemon: rpc error: code = Unavailable desc = x")
                .is_transient()
        );
        assert!(
            failed("Error response from daemon: The swarm does not have a leader.").is_transient()
        );
        assert!(
            DockerError::TimedOut {
                command: "docker x".into(),
                after: Duration::from_secs(1)
            }
            .is_transient()
        );
        assert!(!failed("Error: No such service: stackship-prod_backend").is_transient());
        assert!(!DockerError::Spawn("not found".into()).is_transient());
        assert!(
            !DockerError::NotUtf8 {
                command: "x".into()
            }
            .is_transient()
        );
    }

    #[test]
    fn a_read_is_retried_with_growing_pauses_until_it_succeeds() {
        let fake = FakeEngine::new();
        fake.fail_once(
            &["node", "ls"],
            "rpc error: code = Unavailable desc = leader lost",
        );
        fake.fail_once(&["node", "ls"], "The swarm does not have a leader");
        fake.answer(&["node", "ls"], "n1\n");
        let pauses = RefCell::new(Vec::new());
        let sleep = |d: Duration| pauses.borrow_mut().push(d);
        let client = Client::new(&fake).with_retry(
            Retry {
                attempts: 4,
                first_pause: Duration::from_millis(10),
            },
            &sleep,
        );
        assert_eq!(client.run(&Call::read(["node", "ls"])).unwrap(), "n1\n");
        assert_eq!(
            *pauses.borrow(),
            vec![Duration::from_millis(10), Duration::from_millis(20)]
        );
        assert_eq!(fake.calls().len(), 3);
    }

    #[test]
    fn by_default_a_leader_election_is_waited_out_not_retried_at_once() {
        let fake = FakeEngine::new();
        fake.fail_once(&["node", "ls"], "The swarm does not have a leader");
        fake.answer(&["node", "ls"], "n1\n");
        let started = std::time::Instant::now();
        assert_eq!(
            Client::new(&fake).run(&Call::read(["node", "ls"])).unwrap(),
            "n1\n"
        );
        // The default rule's first pause (1 s) passed before the second attempt.
        assert!(started.elapsed() >= Retry::default().first_pause);
        assert_eq!(fake.calls().len(), 2);
    }

    #[test]
    fn a_read_gives_up_after_its_attempts_with_the_last_error() {
        let fake = FakeEngine::new();
        for _ in 0..3 {
            fake.fail_once(&["node", "ls"], "rpc error: code = Unavailable");
        }
        let sleep = |_: Duration| {};
        let client = Client::new(&fake).with_retry(
            Retry {
                attempts: 2,
                first_pause: Duration::ZERO,
            },
            &sleep,
        );
        let err = client.run(&Call::read(["node", "ls"])).unwrap_err();
        assert!(err.is_transient());
        assert_eq!(fake.calls().len(), 2);
    }

    #[test]
    fn a_write_is_never_retried() {
        let fake = FakeEngine::new();
        fake.fail_once(&["service", "rm"], "rpc error: code = Unavailable");
        fake.answer(&["service", "rm"], "");
        let sleep = |_: Duration| {};
        let client = Client::new(&fake).with_retry(Retry::default(), &sleep);
        assert!(client.run(&Call::write(["service", "rm", "x"])).is_err());
        assert_eq!(fake.calls().len(), 1);
    }

    #[test]
    fn a_permanent_read_error_is_not_retried() {
        let fake = FakeEngine::new();
        fake.fail_once(&["service", "inspect"], "No such service: x");
        let sleep = |_: Duration| panic!("no pause expected");
        let client = Client::new(&fake).with_retry(Retry::default(), &sleep);
        assert!(
            client
                .run(&Call::read(["service", "inspect", "x"]))
                .is_err()
        );
        assert_eq!(fake.calls().len(), 1);
    }

    #[test]
    fn lines_drops_blank_lines_and_whitespace() {
        let fake = FakeEngine::new();
        fake.answer(&["service", "ls"], " a \n\nb\n");
        assert_eq!(
            Client::new(&fake)
                .lines(&Call::read(["service", "ls", "-q"]))
                .unwrap(),
            vec!["a", "b"]
        );
    }

    #[test]
    fn calls_show_as_command_lines_without_their_input() {
        let call = Call::write(["login", "-u", "ci", "--password-stdin", "r"])
            .with_stdin("secret")
            .with_timeout(Duration::from_secs(5));
        assert_eq!(call.to_string(), "docker login -u ci --password-stdin r");
        assert_eq!(call.timeout, Duration::from_secs(5));
        assert_eq!(call.effect, Effect::Write);
        assert_eq!(Call::read(["info"]).timeout, DEFAULT_TIMEOUT);
    }
}
