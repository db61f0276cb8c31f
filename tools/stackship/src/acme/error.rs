//! Why an ACME operation failed: the CA's own words where it gave some, else what was being done
//! and with which name or URL.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use super::http::TransportError;

/// What went wrong with an account, an order or a certificate.
///
/// No variant carries a key or the account's credentials.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// The CA refused a request; `problem` is what it answered.
    #[error("{context}: the ACME server answered: {problem}")]
    Problem { context: String, problem: Problem },
    /// The CA did not validate one or more names of the order.
    #[error("{}", validation_message(failures, order_problem.as_ref()))]
    Validation {
        /// One entry per authorization that did not turn valid, with the CA's reason.
        failures: Vec<AuthzFailure>,
        /// The order's own problem document, when the CA gave one.
        order_problem: Option<Problem>,
    },
    /// A wait for the CA, or one request, ran past its deadline.
    #[error("{what}: not done within {}s ({url})", after.as_secs())]
    Timeout {
        what: String,
        url: String,
        after: Duration,
    },
    /// The ACME server could not be reached or the connection failed.
    #[error("{what}: {url}: {message}")]
    Transport {
        what: String,
        url: String,
        message: String,
    },
    /// The account's credentials file cannot be read or written.
    #[error("account file {}: {context}: {source}", path.display())]
    Io {
        context: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// The account's credentials file is there but unusable (the reason never quotes it).
    #[error("account file {}: {reason}", path.display())]
    AccountFile { path: PathBuf, reason: String },
    /// The responder could not publish a challenge's answer.
    #[error("publishing the HTTP-01 answer for {domain}: {source}")]
    Responder { domain: String, source: io::Error },
    /// The CA offers no HTTP-01 challenge for a name.
    #[error("{domain}: the ACME server offers no http-01 challenge (it offers: {offered})")]
    NoHttp01 { domain: String, offered: String },
    /// A name that cannot be ordered with HTTP-01.
    #[error("{name:?} cannot be ordered: {reason}")]
    InvalidName { name: String, reason: &'static str },
    /// The extra root certificate for the ACME server's TLS is not usable.
    #[error("extra root certificate for the ACME server: {0}")]
    ExtraRoot(String),
    /// What the CA sent back is not the certificate that was ordered.
    #[error("certificate from {url}: {reason}")]
    Certificate { url: String, reason: String },
    /// Anything else the ACME client reported, with what was being done.
    #[error("{context}: {message}")]
    Protocol { context: String, message: String },
}

impl AcmeError {
    /// An error of the ACME client while doing `context`, sorted into the variants above.
    pub(crate) fn from_acme(context: impl Into<String>, err: instant_acme::Error) -> Self {
        let context = context.into();
        match err {
            instant_acme::Error::Api(problem) => AcmeError::Problem {
                context,
                problem: Problem::from(&problem),
            },
            instant_acme::Error::Other(inner) => match inner.downcast::<TransportError>() {
                Ok(transport) => transport.into_acme_error(context),
                Err(other) => AcmeError::Protocol {
                    context,
                    message: other.to_string(),
                },
            },
            other => AcmeError::Protocol {
                context,
                message: other.to_string(),
            },
        }
    }
}

fn validation_message(failures: &[AuthzFailure], order_problem: Option<&Problem>) -> String {
    let mut message = String::from("the ACME server did not validate ");
    if failures.is_empty() {
        message.push_str("the order");
    } else {
        let list: Vec<String> = failures.iter().map(ToString::to_string).collect();
        message.push_str(&list.join("; "));
    }
    // The order's problem often repeats an authorization's (Pebble's does): said once.
    if let Some(problem) = order_problem
        && !failures.iter().any(|f| f.problem.as_ref() == Some(problem))
    {
        message.push_str(&format!(" (order: {problem})"));
    }
    message
}

/// One authorization the CA did not validate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthzFailure {
    /// The name the authorization is for.
    pub domain: String,
    /// Its status as the CA last reported it (`invalid`, `pending`, ...).
    pub status: String,
    /// The CA's reason, from the failed challenge.
    pub problem: Option<Problem>,
}

impl fmt::Display for AuthzFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.problem {
            Some(problem) => write!(f, "{}: {problem}", self.domain),
            None => write!(
                f,
                "{}: authorization {} (the server gave no reason)",
                self.domain, self.status
            ),
        }
    }
}

/// An RFC 7807 problem document as the CA sent it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Problem {
    /// The problem type, e.g. `urn:ietf:params:acme:error:unauthorized`.
    pub kind: Option<String>,
    /// The CA's explanation.
    pub detail: Option<String>,
    /// The HTTP status of the answer, when given.
    pub status: Option<u16>,
    /// Problems about single identifiers of the request.
    pub subproblems: Vec<Subproblem>,
}

/// A problem about one identifier (RFC 8555 section 6.7.1).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Subproblem {
    /// The identifier (a domain name or an address) it concerns.
    pub identifier: Option<String>,
    pub kind: Option<String>,
    pub detail: Option<String>,
}

impl From<&instant_acme::Problem> for Problem {
    fn from(p: &instant_acme::Problem) -> Self {
        Problem {
            kind: p.r#type.clone(),
            detail: p.detail.clone(),
            status: p.status,
            subproblems: p
                .subproblems
                .iter()
                .map(|s| Subproblem {
                    identifier: s
                        .identifier
                        .as_ref()
                        .map(|id| id.authorized(false).to_string()),
                    kind: s.r#type.clone(),
                    detail: s.detail.clone(),
                })
                .collect(),
        }
    }
}

/// `type: detail`, as the CA wrote them.
fn type_and_detail(
    f: &mut fmt::Formatter<'_>,
    kind: Option<&str>,
    detail: Option<&str>,
) -> fmt::Result {
    match (kind, detail) {
        (Some(kind), Some(detail)) => write!(f, "{kind}: {detail}"),
        (Some(kind), None) => write!(f, "{kind} (no detail given)"),
        (None, Some(detail)) => f.write_str(detail),
        (None, None) => f.write_str("a problem with neither type nor detail"),
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        type_and_detail(f, self.kind.as_deref(), self.detail.as_deref())?;
        if self.kind.is_none()
            && self.detail.is_none()
            && let Some(status) = self.status
        {
            write!(f, " (HTTP {status})")?;
        }
        for sub in &self.subproblems {
            f.write_str("; ")?;
            if let Some(identifier) = &sub.identifier {
                write!(f, "{identifier}: ")?;
            }
            type_and_detail(f, sub.kind.as_deref(), sub.detail.as_deref())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(json: &str) -> Problem {
        let p: instant_acme::Problem = serde_json::from_str(json).unwrap();
        Problem::from(&p)
    }

    #[test]
    fn a_problem_shows_the_cas_type_and_detail() {
        let p = problem(
            r#"{"type":"urn:ietf:params:acme:error:rateLimited","detail":"too many certificates already issued for \"example.org\"","status":429}"#,
        );
        assert_eq!(
            p.to_string(),
            "urn:ietf:params:acme:error:rateLimited: too many certificates already issued for \"example.org\""
        );
        assert_eq!(p.status, Some(429));
    }

    #[test]
    fn subproblems_name_their_identifier() {
        let p = problem(
            r#"{"type":"urn:ietf:params:acme:error:rejectedIdentifier","detail":"Error creating new order","subproblems":[
                {"type":"urn:ietf:params:acme:error:rejectedIdentifier","detail":"name is blocked","identifier":{"type":"dns","value":"blocked.example"}},
                {"type":"urn:ietf:params:acme:error:malformed","detail":"bad label","identifier":{"type":"dns","value":"-x.example"}}]}"#,
        );
        assert_eq!(
            p.to_string(),
            "urn:ietf:params:acme:error:rejectedIdentifier: Error creating new order; \
             blocked.example: urn:ietf:params:acme:error:rejectedIdentifier: name is blocked; \
             -x.example: urn:ietf:params:acme:error:malformed: bad label"
        );
    }

    #[test]
    fn a_problem_without_words_still_says_something() {
        assert_eq!(
            problem(r#"{"status":500}"#).to_string(),
            "a problem with neither type nor detail (HTTP 500)"
        );
        assert_eq!(
            problem(r#"{"type":"urn:ietf:params:acme:error:serverInternal"}"#).to_string(),
            "urn:ietf:params:acme:error:serverInternal (no detail given)"
        );
        assert_eq!(problem(r#"{"detail":"down"}"#).to_string(), "down");
    }

    #[test]
    fn a_failed_validation_names_each_domain_with_the_cas_reason() {
        let err = AcmeError::Validation {
            failures: vec![
                AuthzFailure {
                    domain: "a.example".into(),
                    status: "invalid".into(),
                    problem: Some(problem(
                        r#"{"type":"urn:ietf:params:acme:error:unauthorized","detail":"key authorization mismatch"}"#,
                    )),
                },
                AuthzFailure {
                    domain: "b.example".into(),
                    status: "pending".into(),
                    problem: None,
                },
            ],
            order_problem: None,
        };
        assert_eq!(
            err.to_string(),
            "the ACME server did not validate a.example: urn:ietf:params:acme:error:unauthorized: \
             key authorization mismatch; b.example: authorization pending (the server gave no reason)"
        );
    }

    #[test]
    fn an_order_problem_that_repeats_an_authorizations_is_said_once() {
        let reason =
            problem(r#"{"type":"urn:ietf:params:acme:error:unauthorized","detail":"404"}"#);
        let failure = AuthzFailure {
            domain: "a.example".into(),
            status: "invalid".into(),
            problem: Some(reason.clone()),
        };
        let err = AcmeError::Validation {
            failures: vec![failure.clone()],
            order_problem: Some(reason),
        };
        assert_eq!(
            err.to_string(),
            "the ACME server did not validate a.example: urn:ietf:params:acme:error:unauthorized: 404"
        );
        let err = AcmeError::Validation {
            failures: vec![failure],
            order_problem: Some(problem(r#"{"detail":"order is invalid"}"#)),
        };
        assert!(
            err.to_string().ends_with(" (order: order is invalid)"),
            "{err}"
        );
    }

    #[test]
    fn an_order_problem_is_shown_when_no_authorization_says_more() {
        let err = AcmeError::Validation {
            failures: vec![],
            order_problem: Some(problem(r#"{"detail":"order expired"}"#)),
        };
        assert_eq!(
            err.to_string(),
            "the ACME server did not validate the order (order: order expired)"
        );
    }

    #[test]
    fn an_api_error_keeps_the_context_and_the_cas_words() {
        let p: instant_acme::Problem = serde_json::from_str(
            r#"{"type":"urn:ietf:params:acme:error:badCSR","detail":"CSR names do not match"}"#,
        )
        .unwrap();
        let err = AcmeError::from_acme("finalizing https://ca.test/order/1", p.into());
        assert!(matches!(err, AcmeError::Problem { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "finalizing https://ca.test/order/1: the ACME server answered: \
             urn:ietf:params:acme:error:badCSR: CSR names do not match"
        );
    }

    #[test]
    fn a_transport_error_names_the_url() {
        assert_eq!(
            TransportError::timed_out("https://ca.test/dir", Duration::from_secs(7)).to_string(),
            "https://ca.test/dir: no answer within 7s"
        );
        assert_eq!(
            TransportError::failed("https://ca.test/dir", "connection refused".into()).to_string(),
            "https://ca.test/dir: connection refused"
        );
        let err = AcmeError::from_acme(
            "registering an account",
            TransportError::timed_out("https://ca.test/dir", Duration::from_secs(7)).into_acme(),
        );
        match &err {
            AcmeError::Timeout { url, after, .. } => {
                assert_eq!(url, "https://ca.test/dir");
                assert_eq!(*after, Duration::from_secs(7));
            }
            other => panic!("not a timeout: {other:?}"),
        }
        assert_eq!(
            err.to_string(),
            "registering an account: not done within 7s (https://ca.test/dir)"
        );
        let err = AcmeError::from_acme(
            "registering an account",
            TransportError::failed("https://ca.test/dir", "connection refused".into()).into_acme(),
        );
        assert_eq!(
            err.to_string(),
            "registering an account: https://ca.test/dir: connection refused"
        );
    }
}
