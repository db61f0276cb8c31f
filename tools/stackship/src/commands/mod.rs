//! One module per verb: `stackship status` is [`status`], `stackship secret` is [`secret`], and
//! so on; [`tasks`] is what `logs` and `exec` share (a stack's services and tasks).

pub mod cert;
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
