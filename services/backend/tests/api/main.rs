//! Integration tests of the backend over real HTTP against a real PostgreSQL.
//!
//! `DATABASE_URL` must point at a server where the test user may create databases
//! (`scripts/test.sh` starts a throwaway one); `#[sqlx::test]` gives each test a fresh database.

mod abandoned;
mod bad_input;
mod database_loss;
mod deploy_config;
mod helpers;
mod logs;
mod migrations;
mod restore_lock;
mod service;
mod shutdown;
