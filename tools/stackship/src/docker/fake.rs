//! An engine for tests: it records every call it is asked to make and answers from rules set
//! up beforehand (recorded `docker` output, or Docker's own error text). A call no rule
//! matches fails loudly, so a test never passes on an answer it did not mean to give.

use std::cell::RefCell;
use std::ops::ControlFlow;

use super::{Call, DockerError, Effect, Engine, Stream, Streamed};

/// What a call that ran prints, and its exit status.
#[derive(Debug, Clone, Default)]
struct Output {
    stdout: String,
    /// Only streamed and attached calls see it (a run's standard error is its error text).
    stderr: String,
    /// Only attached calls see it.
    status: u8,
}

#[derive(Debug, Clone)]
struct Rule {
    prefix: Vec<String>,
    answer: Result<Output, String>,
    /// Used once, then dropped; otherwise answers every matching call.
    once: bool,
}

/// Records calls, answers by the first rule whose arguments start with the call's.
#[derive(Debug, Default)]
pub struct FakeEngine {
    rules: RefCell<Vec<Rule>>,
    calls: RefCell<Vec<Call>>,
}

impl FakeEngine {
    pub fn new() -> Self {
        Self::default()
    }

    fn add(&self, prefix: &[&str], answer: Result<Output, String>, once: bool) {
        self.rules.borrow_mut().push(Rule {
            prefix: prefix.iter().map(|s| (*s).to_owned()).collect(),
            answer,
            once,
        });
    }

    /// Every call starting with `prefix` prints `stdout`.
    pub fn answer(&self, prefix: &[&str], stdout: &str) {
        self.add(prefix, Ok(printed(stdout)), false);
    }

    /// The next call starting with `prefix` prints `stdout` (rules are tried in order).
    pub fn answer_once(&self, prefix: &[&str], stdout: &str) {
        self.add(prefix, Ok(printed(stdout)), true);
    }

    /// Every streamed call starting with `prefix` prints `stdout`'s lines, then `stderr`'s.
    pub fn answer_streams(&self, prefix: &[&str], stdout: &str, stderr: &str) {
        let output = Output {
            stderr: stderr.to_owned(),
            ..printed(stdout)
        };
        self.add(prefix, Ok(output), false);
    }

    /// Every attached call starting with `prefix` ends with exit status `status`.
    pub fn answer_status(&self, prefix: &[&str], status: u8) {
        let output = Output {
            status,
            ..Output::default()
        };
        self.add(prefix, Ok(output), false);
    }

    /// Every call starting with `prefix` fails with Docker's message `stderr`.
    pub fn fail(&self, prefix: &[&str], stderr: &str) {
        self.add(prefix, Err(stderr.to_owned()), false);
    }

    /// The next call starting with `prefix` fails with `stderr`.
    pub fn fail_once(&self, prefix: &[&str], stderr: &str) {
        self.add(prefix, Err(stderr.to_owned()), true);
    }

    /// Every call made, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }

    /// The command lines of the calls made, in order.
    pub fn command_lines(&self) -> Vec<String> {
        self.calls.borrow().iter().map(Call::command_line).collect()
    }

    /// The command lines of the calls that change something.
    pub fn writes(&self) -> Vec<String> {
        self.calls
            .borrow()
            .iter()
            .filter(|c| c.effect == Effect::Write)
            .map(Call::command_line)
            .collect()
    }
}

fn printed(stdout: &str) -> Output {
    Output {
        stdout: stdout.to_owned(),
        ..Output::default()
    }
}

impl FakeEngine {
    /// Records `call` and answers it by the first matching rule.
    fn answer_of(&self, call: &Call) -> Result<Output, DockerError> {
        self.calls.borrow_mut().push(call.clone());
        let mut rules = self.rules.borrow_mut();
        let found = rules.iter().position(|r| {
            r.prefix.len() <= call.args.len()
                && r.prefix.iter().zip(&call.args).all(|(a, b)| a == b)
        });
        let Some(index) = found else {
            return Err(DockerError::Failed {
                command: call.command_line(),
                stderr: "the fake engine has no answer for this call".to_owned(),
            });
        };
        let answer = rules[index].answer.clone();
        if rules[index].once {
            rules.remove(index);
        }
        answer.map_err(|stderr| DockerError::Failed {
            command: call.command_line(),
            stderr,
        })
    }
}

impl Engine for FakeEngine {
    fn run(&self, call: &Call) -> Result<String, DockerError> {
        self.answer_of(call).map(|o| o.stdout)
    }

    /// Every call is recorded first (the real engine starts them all at once), then each
    /// one's lines are handed over in turn: its standard output's, then its standard error's,
    /// then its end. No rule is borrowed meanwhile, so `each` may make calls of its own.
    fn stream(
        &self,
        calls: &[Call],
        each: &mut dyn FnMut(usize, Streamed<'_>) -> ControlFlow<()>,
        stop: &dyn Fn() -> bool,
    ) -> Result<(), DockerError> {
        let answers: Vec<_> = calls.iter().map(|c| self.answer_of(c)).collect();
        for (index, answer) in answers.into_iter().enumerate() {
            let (output, end) = match answer {
                Ok(output) => (output, Ok(())),
                Err(e) => (Output::default(), Err(e)),
            };
            let lines = output
                .stdout
                .lines()
                .map(|l| Streamed::Line(Stream::Stdout, l))
                .chain(
                    output
                        .stderr
                        .lines()
                        .map(|l| Streamed::Line(Stream::Stderr, l)),
                )
                .chain([Streamed::Ended(end)]);
            for event in lines {
                if stop() || each(index, event).is_break() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn run_attached(&self, call: &Call) -> Result<u8, DockerError> {
        self.answer_of(call).map(|o| o.status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_by_the_first_matching_rule_and_records_calls() {
        let fake = FakeEngine::new();
        fake.answer_once(&["service", "ls"], "first\n");
        fake.answer(&["service"], "any\n");
        assert_eq!(fake.run(&Call::read(["service", "ls"])).unwrap(), "first\n");
        assert_eq!(fake.run(&Call::read(["service", "ls"])).unwrap(), "any\n");
        assert_eq!(
            fake.run(&Call::write(["service", "rm", "x"])).unwrap(),
            "any\n"
        );
        assert_eq!(
            fake.command_lines(),
            vec![
                "docker service ls",
                "docker service ls",
                "docker service rm x"
            ]
        );
        assert_eq!(fake.writes(), vec!["docker service rm x"]);
    }

    #[test]
    fn an_unexpected_call_fails() {
        let fake = FakeEngine::new();
        fake.answer(&["service", "ls"], "");
        let err = fake.run(&Call::read(["node", "ls"])).unwrap_err();
        assert!(err.to_string().contains("no answer"), "{err}");
        // A rule longer than the call does not match it.
        assert!(fake.run(&Call::read(["service"])).is_err());
    }

    /// What a stream of `calls` hands over, as `index event` lines.
    fn streamed(fake: &FakeEngine, calls: &[Call], stop_after: usize) -> Vec<String> {
        let mut seen = Vec::new();
        fake.stream(
            calls,
            &mut |i, event| {
                seen.push(match event {
                    Streamed::Line(stream, line) => format!("{i} {stream:?} {line}"),
                    Streamed::Ended(end) => format!("{i} ended {end:?}"),
                });
                if seen.len() == stop_after {
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

    #[test]
    fn streamed_calls_are_all_recorded_then_answered_line_by_line() {
        let fake = FakeEngine::new();
        fake.answer_streams(&["service", "logs", "a"], "a1\na2\n", "a-err\n");
        fake.answer(&["service", "logs", "b"], "b1\n");
        let calls = [
            Call::read(["service", "logs", "a"]),
            Call::read(["service", "logs", "b"]),
        ];
        assert_eq!(
            streamed(&fake, &calls, 0),
            vec![
                "0 Stdout a1",
                "0 Stdout a2",
                "0 Stderr a-err",
                "0 ended Ok(())",
                "1 Stdout b1",
                "1 ended Ok(())"
            ]
        );
        assert_eq!(fake.calls().len(), 2);
        // A break stops at once; so does a stop asked for.
        assert_eq!(streamed(&fake, &calls, 1), vec!["0 Stdout a1"]);
        assert_eq!(fake.calls().len(), 4);
        fake.stream(&calls, &mut |_, _| panic!("nothing after a stop"), &|| true)
            .unwrap();
    }

    #[test]
    fn a_failing_streamed_call_ends_with_its_error_and_attached_calls_give_their_status() {
        let fake = FakeEngine::new();
        fake.fail(&["service", "logs", "x"], "no such task or service: x");
        fake.answer(&["service", "logs", "y"], "y1\n");
        let seen = streamed(
            &fake,
            &[
                Call::read(["service", "logs", "x"]),
                Call::read(["service", "logs", "y"]),
            ],
            0,
        );
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(
            seen[0].starts_with("0 ended Err(Failed")
                && seen[0].contains("no such task or service: x"),
            "{seen:?}"
        );
        assert_eq!(seen[1..], ["1 Stdout y1", "1 ended Ok(())"]);
        fake.answer_status(&["exec"], 7);
        assert_eq!(
            fake.run_attached(&Call::write(["exec", "c", "sh"]))
                .unwrap(),
            7
        );
        fake.answer(&["version"], "28\n");
        assert_eq!(fake.run_attached(&Call::read(["version"])).unwrap(), 0);
        assert!(fake.run_attached(&Call::read(["info"])).is_err());
    }

    #[test]
    fn failures_carry_dockers_words() {
        let fake = FakeEngine::new();
        fake.fail(&["secret", "inspect"], "Error: No such secret: x");
        let err = fake
            .run(&Call::read(["secret", "inspect", "x"]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "`docker secret inspect x` failed: Error: No such secret: x"
        );
    }
}
