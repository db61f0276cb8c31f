//! The errors of the tool's commands, each with the exit outcome it means.

use crate::docker::DockerError;
use crate::exit::Outcome;
use crate::lock::LockError;
use crate::settings::SettingsError;
use crate::stack::StackError;

/// Why a command did not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Stack(#[from] StackError),
    /// The deploy records cannot be read (the message names the file).
    #[error("deploy records: {0}")]
    Records(String),
    /// A request that cannot be carried out as given (the message says why).
    #[error("{0}")]
    Refused(String),
    /// A deploy that stopped at one of its stages.
    #[error(transparent)]
    Deploy(Box<crate::commands::deploy::DeployError>),
    /// A removal that began and did not end (`review stop`): the message names what is left.
    #[error("{0}")]
    Incomplete(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

impl Error {
    /// The exit outcome: a deploy's depends on its stage; every other error here happens
    /// before anything changed.
    pub fn outcome(&self) -> Outcome {
        match self {
            Error::Deploy(d) => d.outcome(),
            // Part of it is gone: not "nothing changed", and what is left is named.
            Error::Incomplete(_) => Outcome::Unknown,
            _ => Outcome::NothingChanged,
        }
    }

    /// An I/O error with what was being done.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_say_what_was_being_done() {
        let e = Error::io("cannot read /x")(std::io::Error::other("boom"));
        assert_eq!(e.to_string(), "cannot read /x: boom");
        assert_eq!(e.outcome(), Outcome::NothingChanged);
        assert_eq!(
            Error::Records("bad.json".into()).to_string(),
            "deploy records: bad.json"
        );
    }

    #[test]
    fn a_deploy_that_stopped_after_it_began_leaves_the_state_unknown() {
        use crate::commands::deploy::{DeployError, Stage};
        let at = |stage| {
            Error::Deploy(Box::new(DeployError {
                stage,
                error: Error::Refused("x".into()),
            }))
        };
        assert_eq!(at(Stage::Watch).outcome(), Outcome::Unknown);
        assert_eq!(at(Stage::Validate).outcome(), Outcome::NothingChanged);
        assert_eq!(
            Error::Incomplete("still there: volume v".into()).outcome(),
            Outcome::Unknown
        );
    }
}
