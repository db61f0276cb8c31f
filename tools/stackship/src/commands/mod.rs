//! One module per verb: `stackship status` is [`status`], `stackship history` is [`history`].

pub mod deploy;
pub mod history;
pub mod rollback;
pub mod secret;
pub mod status;
