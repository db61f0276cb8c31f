//! Exit codes a pipeline can act on.

use std::process::ExitCode;

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 0: done (deployed, shown, installed).
    Done,
    /// 1: the release failed and was rolled back; the old version serves.
    RolledBack,
    /// 2: nothing was changed: bad input, a refusal, a lock timeout, a Docker error before the
    /// deploy began.
    NothingChanged,
    /// 3: the state is unknown: the deploy began and its end could not be seen (a timeout with
    /// the rollout still moving, Docker unreachable meanwhile).
    Unknown,
    /// `stackship exec`: the status of the command it ran, passed through.
    Exited(u8),
}

impl Outcome {
    pub fn code(self) -> u8 {
        match self {
            Outcome::Done => 0,
            Outcome::RolledBack => 1,
            Outcome::NothingChanged => 2,
            Outcome::Unknown => 3,
            Outcome::Exited(status) => status,
        }
    }

    /// What the code means, for reports and MR notes.
    pub fn meaning(self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::RolledBack => "the release failed and was rolled back: the old version serves",
            Outcome::NothingChanged => "nothing was changed",
            Outcome::Unknown => "the state is unknown: the rollout may still be moving",
            Outcome::Exited(_) => "the command run in the container ended with this status",
        }
    }
}

impl From<Outcome> for ExitCode {
    fn from(o: Outcome) -> Self {
        ExitCode::from(o.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_documented() {
        let all = [
            Outcome::Done,
            Outcome::RolledBack,
            Outcome::NothingChanged,
            Outcome::Unknown,
        ];
        let codes: Vec<u8> = all.iter().map(|o| o.code()).collect();
        assert_eq!(codes, vec![0, 1, 2, 3]);
        assert!(Outcome::RolledBack.meaning().contains("rolled back"));
        assert!(Outcome::NothingChanged.meaning().contains("nothing"));
        assert!(Outcome::Unknown.meaning().contains("unknown"));
        assert_eq!(Outcome::Done.meaning(), "done");
        assert_eq!(Outcome::Exited(0).code(), 0);
        assert_eq!(Outcome::Exited(137).code(), 137);
        assert!(Outcome::Exited(5).meaning().contains("command"));
    }
}
