//! Follows a Docker Swarm stack's rollout after `docker stack deploy` until every service has
//! settled, and says loudly when one did not (rolled back, paused, crash-looping, timed out);
//! records what each successful deploy ran, and prunes the stack's configs and secrets that
//! neither the current and previous specs nor the last N deploys use.
//!
//! Code tour: [`assess`] (the verdict on one service, plain data in, no I/O), [`budget`]
//! (timeouts and floors from a service's own update and healthcheck settings), [`history`]
//! (deploy records), [`prune`] (what may go), [`docker`] (the docker CLI's JSON), [`watch`]
//! (the polling loop and its report).

pub mod assess;
pub mod budget;
pub mod docker;
pub mod history;
pub mod prune;
pub mod watch;
