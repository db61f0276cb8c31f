//! The backend service: a request log API on Postgres, built to be rolled by Docker Swarm.
//!
//! Code tour: [`config`] (TOML + environment + password file), [`startup`] (pool, migrations,
//! listener, graceful shutdown), [`routes`] (handlers and router), [`store`] (SQL and the
//! group-commit writer), [`error`] (HTTP error mapping), [`metrics`] (Prometheus),
//! [`telemetry`] (logs), [`healthcheck`] (the `healthcheck` subcommand).

pub mod config;
pub mod error;
pub mod healthcheck;
pub mod metrics;
pub mod routes;
pub mod startup;
pub mod state;
pub mod store;
pub mod telemetry;

pub use config::Settings;
pub use startup::Application;
pub use store::RESTORE_LOCK_KEY;
