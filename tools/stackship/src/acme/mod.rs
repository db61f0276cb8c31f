//! Certificates over ACME (RFC 8555) with HTTP-01 challenges, for `stackship cert` and the edge.
//!
//! [`Account`] opens (or, the first time, registers) an account on a CA's directory and keeps its
//! credentials in one file; [`issue`] runs one order to its end, answering the challenges through
//! a [`Responder`]; [`renewal`] decides from a certificate on disk whether it is time for a new
//! one, and [`describe`] reads its names, issuer and dates for `status`. [`loopback`] is a small
//! HTTP-01 responder on a local port.
//!
//! Nothing here writes a file but the account's credentials: [`issue`] hands the chain and its
//! key back in memory, for the caller to install as one step or not at all.

mod account;
mod error;
#[cfg(test)]
mod fake;
mod http;
mod issue;
pub mod loopback;
mod renewal;

pub(crate) use account::owned_like_its_directory;
pub use account::{Account, AcmeServer, LETS_ENCRYPT_PRODUCTION, LETS_ENCRYPT_STAGING, Opened};
pub use error::{AcmeError, AuthzFailure, Problem, Subproblem};
pub use issue::{IssueOptions, Issued, Responder, checked_names, issue};
pub use renewal::{CertError, CertInfo, DueReason, RENEW_BEFORE, Renewal, describe, renewal};
