//! Where things live on the manager, per environment:
//!
//! ```text
//! <root>/<env>/            the environment directory (outlives every release)
//!   current/               the release the copy step installed: stackship, the stack file,
//!                          deploy-manifests/<env>/ (config files, images.env pins)
//!   deploy.env             the manager's settings (KEY=VALUE)
//!   deploy.lock(.owner)    the deploy lock and who holds it
//!   history/<id>.json      one record per deploy
//!   last-rollout.json      the last rollout report
//!   secrets/               source files of file-backed secrets (TLS pair)
//! ```

use std::path::{Path, PathBuf};

/// The project name: stacks are `<project>-<env>`.
pub const PROJECT: &str = "stackship";

/// The default root of the environment directories.
pub const DEFAULT_ROOT: &str = "/data/stackship/deploy";

/// An environment name: `dev`, `prod`, or another lower-case word.
pub fn is_valid_env(env: &str) -> bool {
    !env.is_empty()
        && env.len() <= 32
        && env.starts_with(|c: char| c.is_ascii_lowercase())
        && env
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// One environment's paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvDir {
    pub env: String,
    pub dir: PathBuf,
}

impl EnvDir {
    pub fn new(root: &Path, env: &str) -> Self {
        Self {
            env: env.to_owned(),
            dir: root.join(env),
        }
    }

    /// The Swarm stack.
    pub fn stack(&self) -> String {
        format!("{PROJECT}-{}", self.env)
    }

    pub fn current(&self) -> PathBuf {
        self.dir.join("current")
    }

    /// The stack file of the installed release.
    pub fn compose(&self) -> PathBuf {
        self.current()
            .join(format!("docker-compose.{}.yaml", self.env))
    }

    /// The release's pins.
    pub fn pins(&self) -> PathBuf {
        self.current()
            .join("deploy-manifests")
            .join(&self.env)
            .join("images.env")
    }

    pub fn settings(&self) -> PathBuf {
        self.dir.join("deploy.env")
    }

    pub fn history(&self) -> PathBuf {
        self.dir.join("history")
    }

    pub fn last_rollout(&self) -> PathBuf {
        self.dir.join("last-rollout.json")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_of_an_environment() {
        let e = EnvDir::new(Path::new("/r"), "prod");
        assert_eq!(e.stack(), "stackship-prod");
        assert_eq!(e.current(), Path::new("/r/prod/current"));
        assert_eq!(
            e.compose(),
            Path::new("/r/prod/current/docker-compose.prod.yaml")
        );
        assert_eq!(
            e.pins(),
            Path::new("/r/prod/current/deploy-manifests/prod/images.env")
        );
        assert_eq!(e.settings(), Path::new("/r/prod/deploy.env"));
        assert_eq!(e.history(), Path::new("/r/prod/history"));
        assert_eq!(e.last_rollout(), Path::new("/r/prod/last-rollout.json"));
    }

    #[test]
    fn environment_names() {
        for ok in ["dev", "prod", "staging-2"] {
            assert!(is_valid_env(ok), "{ok}");
        }
        for bad in ["", "Prod", "../x", "2prod", "a b", &"a".repeat(33)] {
            assert!(!is_valid_env(bad), "{bad}");
        }
        assert!(is_valid_env(&"a".repeat(32)));
    }
}
