//! An engine for tests: it records every call it is asked to make and answers from rules set
//! up beforehand (recorded `docker` output, or Docker's own error text). A call no rule
//! matches fails loudly, so a test never passes on an answer it did not mean to give.

use std::cell::RefCell;

use super::{Call, DockerError, Effect, Engine};

#[derive(Debug, Clone)]
struct Rule {
    prefix: Vec<String>,
    answer: Result<String, String>,
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

    fn add(&self, prefix: &[&str], answer: Result<String, String>, once: bool) {
        self.rules.borrow_mut().push(Rule {
            prefix: prefix.iter().map(|s| (*s).to_owned()).collect(),
            answer,
            once,
        });
    }

    /// Every call starting with `prefix` prints `stdout`.
    pub fn answer(&self, prefix: &[&str], stdout: &str) {
        self.add(prefix, Ok(stdout.to_owned()), false);
    }

    /// The next call starting with `prefix` prints `stdout` (rules are tried in order).
    pub fn answer_once(&self, prefix: &[&str], stdout: &str) {
        self.add(prefix, Ok(stdout.to_owned()), true);
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

impl Engine for FakeEngine {
    fn run(&self, call: &Call) -> Result<String, DockerError> {
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
