//! `stackship`: deploys, records and inspects one environment's Docker Swarm stack on the
//! manager — the only program that runs there besides Docker.
//!
//! Code tour: [`cli`] (the command line), [`commands`] (one module per verb: `deploy`,
//! `rollback`, `status`, `history`, `secret`, `db`, `review`, `logs`, `exec`,
//! `cert`), [`settings`] (every setting, typed, with its origin), [`stack`] (the stack file's
//! services and images, through config-hasher's YAML model), [`lock`] (the environment's
//! deploy lock), [`docker`] (the docker CLI behind a trait, with deadlines and retries; a fake
//! for tests), [`helper`] (one-off helper tasks, removed however a command ends), [`interrupt`] (Ctrl-C and SIGTERM
//! as a flag the waits check), [`drift`] (running spec vs recorded spec), [`layout`] (paths on
//! the manager), [`release`] (installing a release under the lock), [`ancestry`] (deploys do not
//! go backwards), [`exit`] (exit codes a pipeline can act on), [`acme`] (certificates over ACME
//! with HTTP-01, and when to renew them), [`canary`] (whether a new version fails real requests
//! more than the old one: the decision, on request counts).

pub mod acme;
pub mod ancestry;
pub mod backup;
pub mod canary;
pub mod cli;
pub mod commands;
pub mod docker;
pub mod drift;
pub mod error;
pub mod exit;
pub mod helper;
pub mod interrupt;
pub mod layout;
pub mod lock;
pub mod placement;
pub mod release;
pub mod settings;
pub mod stack;

pub use error::Error;
pub use exit::Outcome;
