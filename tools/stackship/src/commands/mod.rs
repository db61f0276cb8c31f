//! One module per verb: `stackship status` is [`status`], `stackship history` is [`history`].

pub mod db;
pub mod deploy;
pub mod exec;
pub mod history;
pub mod logs;
pub mod review;
pub mod rollback;
pub mod secret;
pub mod status;
pub mod tasks;
