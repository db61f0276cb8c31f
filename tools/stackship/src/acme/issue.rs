//! One certificate order, from the new order to the downloaded chain, with HTTP-01 challenges.
//!
//! The stages: order → publish the answer to each pending authorization's http-01 challenge
//! through the [`Responder`] → the responder serves them all ([`Responder::ready`]) → tell the CA
//! each challenge is ready → wait (bounded) for the CA to validate → withdraw the answers → a fresh key and
//! its CSR → finalize → wait (bounded) for the chain → check that it is the certificate ordered.

use std::fmt;
use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use instant_acme::{
    AuthorizationState, AuthorizationStatus, ChallengeType, Identifier, NewOrder, Order,
    OrderStatus, RetryPolicy,
};
use rcgen::PublicKeyData;
use zeroize::Zeroizing;

use super::account::Account;
use super::error::{AcmeError, AuthzFailure, Problem};
use super::renewal::leaf;

/// Serves the answers to HTTP-01 challenges: `key_authorization` as the body of
/// `http://<domain>/.well-known/acme-challenge/<token>` (port 80 for a real CA).
///
/// An order's answers are handed over in two steps: [`publish`](Responder::publish) once per
/// pending authorization, then [`ready`](Responder::ready) once, before the CA is told that any
/// of them can be fetched. A responder that serves all of an order's answers at once (one
/// short-lived server for the whole order) collects them in `publish` and starts in `ready`; one
/// that serves each as it comes needs no `ready`.
///
/// Every token handed to [`publish`](Responder::publish) is handed to
/// [`withdraw`](Responder::withdraw) afterwards, whether the order succeeded or not, and also when
/// `publish` or `ready` failed (so withdrawing what is not there must be harmless).
pub trait Responder {
    fn publish(&self, domain: &str, token: &str, key_authorization: &str) -> io::Result<()>;
    /// Every answer of the order was published: serve them all from now on (return when they
    /// can be fetched). Called only when something was published.
    fn ready(&self) -> io::Result<()> {
        Ok(())
    }
    /// Best effort: a failure here is the responder's to report, the order goes on.
    fn withdraw(&self, domain: &str, token: &str);
}

/// Deadlines of an order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssueOptions {
    /// The whole order, from the first request to the downloaded chain.
    pub deadline: Duration,
    /// The first wait before asking the CA again how the order stands (then 1.5 times longer
    /// each time).
    pub poll_interval: Duration,
}

impl Default for IssueOptions {
    fn default() -> Self {
        IssueOptions {
            deadline: Duration::from_secs(180),
            poll_interval: Duration::from_secs(1),
        }
    }
}

/// A certificate just issued, in memory only.
pub struct Issued {
    /// The leaf first, then the intermediates, as the CA sent them.
    pub chain_pem: String,
    /// The private key of the leaf (PKCS#8 PEM), wiped from memory when dropped.
    pub key_pem: Zeroizing<String>,
    /// The leaf's notAfter.
    pub not_after: DateTime<Utc>,
    /// The leaf's names.
    pub names: Vec<String>,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .field("chain_pem", &format_args!("{} bytes", self.chain_pem.len()))
            .field("key_pem", &format_args!("(not shown)"))
            .finish()
    }
}

/// Orders a certificate for `names` (DNS names, no wildcards) with `account`, answering the
/// challenges through `responder`, within `options.deadline`.
pub async fn issue(
    account: &Account,
    names: &[&str],
    responder: &dyn Responder,
    options: &IssueOptions,
) -> Result<Issued, AcmeError> {
    let names = checked_names(names)?;
    let started = Instant::now();
    let progress = Progress(Mutex::new((
        format!("new order for {}", names.join(", ")),
        account.directory_url().to_string(),
    )));
    let mut published = Published {
        responder,
        live: Vec::new(),
    };
    let outcome = tokio::time::timeout(
        options.deadline,
        run(account, &names, &mut published, options, started, &progress),
    )
    .await;
    published.withdraw_all();
    match outcome {
        Ok(result) => result,
        Err(_) => {
            let (what, url) = progress.0.lock().unwrap().clone();
            Err(AcmeError::Timeout {
                what,
                url,
                after: options.deadline,
            })
        }
    }
}

/// What is being done and with which URL, for the message when the deadline passes.
struct Progress(Mutex<(String, String)>);

impl Progress {
    fn set(&self, what: String, url: &str) {
        *self.0.lock().unwrap() = (what, url.to_string());
    }
}

/// The tokens handed to the responder and not withdrawn yet; withdrawn however the order ends.
struct Published<'r> {
    responder: &'r dyn Responder,
    live: Vec<(String, String)>,
}

impl Published<'_> {
    fn publish(&mut self, domain: &str, token: &str, key_authorization: &str) -> io::Result<()> {
        self.live.push((domain.to_string(), token.to_string()));
        self.responder.publish(domain, token, key_authorization)
    }

    fn withdraw_all(&mut self) {
        for (domain, token) in self.live.drain(..) {
            self.responder.withdraw(&domain, &token);
        }
    }
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        self.withdraw_all();
    }
}

/// The names as the CA will see them: lower case, each once, in the order given; a name
/// HTTP-01 cannot validate (a wildcard, an address, not a DNS name) is an error naming it.
pub fn checked_names(names: &[&str]) -> Result<Vec<String>, AcmeError> {
    if names.is_empty() {
        return Err(AcmeError::InvalidName {
            name: String::new(),
            reason: "no names to order",
        });
    }
    let mut checked: Vec<String> = Vec::new();
    for name in names {
        let invalid = |reason| AcmeError::InvalidName {
            name: (*name).to_string(),
            reason,
        };
        let lower = name.trim_end_matches('.').to_ascii_lowercase();
        if lower.starts_with("*.") {
            return Err(invalid("http-01 cannot validate a wildcard"));
        }
        if lower.parse::<std::net::IpAddr>().is_ok() {
            return Err(invalid("an address, not a DNS name"));
        }
        if lower.is_empty() || lower.len() > 253 {
            return Err(invalid("not a DNS name (empty or longer than 253)"));
        }
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        if !lower.split('.').all(label_ok) {
            return Err(invalid(
                "not a DNS name (labels of letters, digits and inner hyphens)",
            ));
        }
        if !checked.contains(&lower) {
            checked.push(lower);
        }
    }
    Ok(checked)
}

fn retry(options: &IssueOptions, until: Instant) -> RetryPolicy {
    RetryPolicy::new()
        .initial_delay(options.poll_interval)
        .backoff(1.5)
        .timeout(until.saturating_duration_since(Instant::now()))
}

fn status_name(status: AuthorizationStatus) -> &'static str {
    match status {
        AuthorizationStatus::Pending => "pending",
        AuthorizationStatus::Valid => "valid",
        AuthorizationStatus::Invalid => "invalid",
        AuthorizationStatus::Revoked => "revoked",
        AuthorizationStatus::Expired => "expired",
        AuthorizationStatus::Deactivated => "deactivated",
    }
}

fn challenge_name(kind: &ChallengeType) -> String {
    match kind {
        ChallengeType::Http01 => "http-01".into(),
        ChallengeType::Dns01 => "dns-01".into(),
        ChallengeType::TlsAlpn01 => "tls-alpn-01".into(),
        ChallengeType::DeviceAttest01 => "device-attest-01".into(),
        ChallengeType::Unknown(name) => name.clone(),
        other => format!("{other:?}"),
    }
}

fn failure_of(state: &AuthorizationState) -> AuthzFailure {
    AuthzFailure {
        domain: state.identifier().to_string(),
        status: status_name(state.status).to_string(),
        problem: state
            .challenges
            .iter()
            .find_map(|c| c.error.as_ref())
            .map(Problem::from),
    }
}

/// The order's authorizations that are not valid, as the CA now reports them (the last known
/// state of those it does not answer for).
async fn failures(order: &mut Order) -> Vec<AuthzFailure> {
    let mut out = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(next) = authorizations.next().await {
        let Ok(mut authz) = next else { continue };
        let _ = authz.refresh().await;
        if authz.status != AuthorizationStatus::Valid {
            out.push(failure_of(&authz));
        }
    }
    out
}

async fn run(
    account: &Account,
    names: &[String],
    published: &mut Published<'_>,
    options: &IssueOptions,
    started: Instant,
    progress: &Progress,
) -> Result<Issued, AcmeError> {
    // Polls stop a little before the deadline, to leave time to ask the CA why.
    let polls_until = started + options.deadline.mul_f32(0.9);
    let listed = names.join(", ");
    let identifiers: Vec<Identifier> = names.iter().cloned().map(Identifier::Dns).collect();
    let mut order = account
        .inner
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(|e| AcmeError::from_acme(format!("new order for {listed}"), e))?;
    let order_url = order.url().to_string();

    progress.set(format!("answering the challenges for {listed}"), &order_url);
    // First every answer is published, and the responder serves them all; only then is the CA
    // told to fetch any (it may do so at once).
    let mut answered: Vec<String> = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(next) = authorizations.next().await {
        let mut authz = next.map_err(|e| {
            AcmeError::from_acme(format!("reading the authorizations of {order_url}"), e)
        })?;
        let domain = authz.identifier().to_string();
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            _ => {
                return Err(AcmeError::Validation {
                    failures: vec![failure_of(&authz)],
                    order_problem: None,
                });
            }
        }
        let offered: Vec<String> = authz
            .challenges
            .iter()
            .map(|c| challenge_name(&c.r#type))
            .collect();
        let Some(challenge) = authz.challenge(ChallengeType::Http01) else {
            return Err(AcmeError::NoHttp01 {
                domain,
                offered: offered.join(", "),
            });
        };
        let key_authorization = challenge.key_authorization();
        published
            .publish(&domain, &challenge.token, key_authorization.as_str())
            .map_err(|source| AcmeError::Responder {
                domain: domain.clone(),
                source,
            })?;
        answered.push(domain);
    }
    if !answered.is_empty() {
        published
            .responder
            .ready()
            .map_err(|source| AcmeError::Responder {
                domain: answered.join(", "),
                source,
            })?;
    }
    let mut authorizations = order.authorizations();
    while let Some(next) = authorizations.next().await {
        let mut authz = next.map_err(|e| {
            AcmeError::from_acme(format!("reading the authorizations of {order_url}"), e)
        })?;
        let domain = authz.identifier().to_string();
        // The stream hands back the states read above (no new request): what was answered is
        // exactly what was pending.
        if !answered.contains(&domain) {
            continue;
        }
        let Some(mut challenge) = authz.challenge(ChallengeType::Http01) else {
            continue;
        };
        challenge.set_ready().await.map_err(|e| {
            AcmeError::from_acme(
                format!("telling the ACME server the http-01 answer for {domain} is ready"),
                e,
            )
        })?;
    }

    progress.set(format!("validation of {listed}"), &order_url);
    match order.poll_ready(&retry(options, polls_until)).await {
        Ok(OrderStatus::Ready) => {}
        Ok(_) => {
            let order_problem = order.state().error.as_ref().map(Problem::from);
            return Err(AcmeError::Validation {
                failures: failures(&mut order).await,
                order_problem,
            });
        }
        Err(instant_acme::Error::Api(problem)) => {
            return Err(AcmeError::Validation {
                failures: failures(&mut order).await,
                order_problem: Some(Problem::from(&problem)),
            });
        }
        Err(instant_acme::Error::Timeout(_)) => {
            let pending: Vec<String> = failures(&mut order)
                .await
                .into_iter()
                .map(|f| f.domain)
                .collect();
            let what = if pending.is_empty() {
                format!("validation of {listed}")
            } else {
                format!("validation of {}", pending.join(", "))
            };
            return Err(AcmeError::Timeout {
                what,
                url: order_url,
                after: started.elapsed(),
            });
        }
        Err(e) => {
            return Err(AcmeError::from_acme(
                format!("waiting for the validation of {listed}"),
                e,
            ));
        }
    }
    published.withdraw_all();

    progress.set(format!("issuance of {listed}"), &order_url);
    let generated = |e: rcgen::Error| AcmeError::Protocol {
        context: format!("making the key and CSR for {listed}"),
        message: e.to_string(),
    };
    let key = rcgen::KeyPair::generate().map_err(generated)?;
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(generated)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key).map_err(generated)?;
    order
        .finalize_csr(csr.der())
        .await
        .map_err(|e| AcmeError::from_acme(format!("finalizing {order_url}"), e))?;
    let chain_pem = match order.poll_certificate(&retry(options, polls_until)).await {
        Ok(chain) => chain,
        Err(instant_acme::Error::Timeout(_)) => {
            return Err(AcmeError::Timeout {
                what: format!("issuance of {listed}"),
                url: order_url,
                after: started.elapsed(),
            });
        }
        Err(e) => {
            return Err(AcmeError::from_acme(
                format!("downloading the certificate of {order_url}"),
                e,
            ));
        }
    };

    let bad = |reason: String| AcmeError::Certificate {
        url: order_url.clone(),
        reason,
    };
    let (info, spki) = leaf(chain_pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
    if spki != key.subject_public_key_info() {
        return Err(bad("the leaf is not for the key of the CSR".into()));
    }
    if let Some(missing) = names.iter().find(|n| !info.names.contains(n)) {
        return Err(bad(format!(
            "the leaf does not name {missing} (it names {})",
            info.names.join(", ")
        )));
    }
    Ok(Issued {
        chain_pem,
        key_pem: Zeroizing::new(key.serialize_pem()),
        not_after: info.not_after,
        names: info.names,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::acme::fake::{FakeCa, fake_account};

    /// Records what it was asked, and fails to publish or to start serving when told to. With
    /// `ca`, `ready` also records how many challenges the CA had been told about by then.
    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<String>>,
        fail: bool,
        fail_ready: bool,
        ca: Option<FakeCa>,
        /// With `ca`: the CA reports a.example's authorization valid from `ready` on.
        validates_a: bool,
    }

    impl Responder for Recorder {
        fn publish(&self, domain: &str, token: &str, key_authorization: &str) -> io::Result<()> {
            self.calls.lock().unwrap().push(format!(
                "publish {domain} {token} {}",
                key_authorization.starts_with(&format!("{token}."))
            ));
            if self.fail {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "read-only webroot",
                ));
            }
            Ok(())
        }

        fn ready(&self) -> io::Result<()> {
            let call = match &self.ca {
                Some(ca) => format!(
                    "ready after {} challenge posts",
                    ca.requests
                        .lock()
                        .unwrap()
                        .iter()
                        .filter(|r| r.starts_with("POST https://ca.test/chall/"))
                        .count()
                ),
                None => "ready".to_string(),
            };
            self.calls.lock().unwrap().push(call);
            if let (true, Some(ca)) = (self.validates_a, &self.ca) {
                ca.route(
                    "https://ca.test/authz/1",
                    200,
                    r#"{"identifier":{"type":"dns","value":"a.example"},"status":"valid","challenges":[
                        {"type":"http-01","url":"https://ca.test/chall/1","token":"tok1","status":"valid"}]}"#,
                    None,
                );
            }
            if self.fail_ready {
                return Err(io::Error::other("helper task did not start"));
            }
            Ok(())
        }

        fn withdraw(&self, domain: &str, token: &str) {
            self.calls
                .lock()
                .unwrap()
                .push(format!("withdraw {domain} {token}"));
        }
    }

    impl Recorder {
        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
    }

    const ORDER: &str = "https://ca.test/order/1";

    /// A CA with one order for a.example, whose authorization is pending with an http-01
    /// challenge (token `tok1`) beside a dns-01 one.
    fn ca_with_an_order(order_status: &str, authz_status: &str, challenge: &str) -> FakeCa {
        let ca = FakeCa::default();
        let order = format!(
            r#"{{"status":"{order_status}","identifiers":[{{"type":"dns","value":"a.example"}}],
               "authorizations":["https://ca.test/authz/1"],"finalize":"https://ca.test/order/1/finalize"}}"#
        );
        ca.route("https://ca.test/order", 201, &order, Some(ORDER));
        ca.route(ORDER, 200, &order, None);
        ca.route(
            "https://ca.test/authz/1",
            200,
            &format!(
                r#"{{"identifier":{{"type":"dns","value":"a.example"}},"status":"{authz_status}","challenges":[
                    {{"type":"dns-01","url":"https://ca.test/chall/2","token":"tok2","status":"pending"}},
                    {challenge}]}}"#
            ),
            None,
        );
        ca
    }

    const PENDING_HTTP01: &str =
        r#"{"type":"http-01","url":"https://ca.test/chall/1","token":"tok1","status":"pending"}"#;

    fn quick() -> IssueOptions {
        IssueOptions {
            deadline: Duration::from_secs(3),
            poll_interval: Duration::from_millis(50),
        }
    }

    /// For a validation that never ends: the deadline is what the test waits out.
    fn short() -> IssueOptions {
        IssueOptions {
            deadline: Duration::from_millis(400),
            ..quick()
        }
    }

    #[tokio::test]
    async fn a_refused_challenge_withdraws_the_answer_and_quotes_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca_with_an_order("pending", "pending", PENDING_HTTP01);
        ca.route(
            "https://ca.test/chall/1",
            403,
            r#"{"type":"urn:ietf:params:acme:error:unauthorized","detail":"account is not allowed"}"#,
            None,
        );
        let account = fake_account(&ca, dir.path()).await;
        let responder = Recorder::default();
        let err = issue(&account, &["a.example"], &responder, &quick())
            .await
            .unwrap_err();
        assert_eq!(
            responder.calls(),
            [
                "publish a.example tok1 true",
                "ready",
                "withdraw a.example tok1"
            ]
        );
        assert_eq!(
            err.to_string(),
            "telling the ACME server the http-01 answer for a.example is ready: the ACME server \
             answered: urn:ietf:params:acme:error:unauthorized: account is not allowed"
        );
    }

    #[tokio::test]
    async fn a_failed_validation_names_the_domain_in_the_cas_words_and_withdraws() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca_with_an_order("pending", "pending", PENDING_HTTP01);
        ca.route(
            "https://ca.test/chall/1",
            200,
            r#"{"type":"http-01","url":"https://ca.test/chall/1","token":"tok1","status":"processing"}"#,
            None,
        );
        let account = fake_account(&ca, dir.path()).await;
        // The validation fails: order and authorization turn invalid.
        let failed = ca_with_an_order(
            "invalid",
            "invalid",
            r#"{"type":"http-01","url":"https://ca.test/chall/1","token":"tok1","status":"invalid",
                "error":{"type":"urn:ietf:params:acme:error:connection","detail":"connection refused"}}"#,
        );
        let responder = Recorder::default();
        let ca2 = ca.clone();
        let respond_then_fail = async {
            // Once the challenge is marked ready, the CA's state moves on.
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let ready = ca2
                    .requests
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|r| r == "POST https://ca.test/chall/1");
                if ready {
                    ca2.copy_routes_from(&failed);
                    break;
                }
            }
        };
        let options = quick();
        let (result, ()) = tokio::join!(
            issue(&account, &["a.example"], &responder, &options),
            respond_then_fail
        );
        let err = result.unwrap_err();
        match &err {
            AcmeError::Validation { failures, .. } => {
                assert_eq!(failures.len(), 1);
                assert_eq!(failures[0].domain, "a.example");
                assert_eq!(failures[0].status, "invalid");
            }
            other => panic!("not a validation error: {other:?}"),
        }
        assert!(
            err.to_string()
                .contains("a.example: urn:ietf:params:acme:error:connection: connection refused"),
            "{err}"
        );
        assert_eq!(
            responder.calls(),
            [
                "publish a.example tok1 true",
                "ready",
                "withdraw a.example tok1"
            ]
        );
    }

    #[tokio::test]
    async fn a_validation_that_never_ends_times_out_naming_the_domain_and_order() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca_with_an_order("pending", "pending", PENDING_HTTP01);
        ca.route("https://ca.test/chall/1", 200, PENDING_HTTP01, None);
        let account = fake_account(&ca, dir.path()).await;
        let responder = Recorder::default();
        let started = Instant::now();
        let err = issue(&account, &["a.example"], &responder, &short())
            .await
            .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        match &err {
            AcmeError::Timeout { what, url, .. } => {
                assert_eq!(what, "validation of a.example");
                assert_eq!(url, ORDER);
            }
            other => panic!("not a timeout: {other:?}"),
        }
        assert_eq!(
            responder.calls(),
            [
                "publish a.example tok1 true",
                "ready",
                "withdraw a.example tok1"
            ]
        );
    }

    #[tokio::test]
    async fn a_failed_publish_is_withdrawn_and_nothing_is_marked_ready() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca_with_an_order("pending", "pending", PENDING_HTTP01);
        let account = fake_account(&ca, dir.path()).await;
        let responder = Recorder {
            fail: true,
            ..Recorder::default()
        };
        let err = issue(&account, &["a.example"], &responder, &quick())
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "publishing the HTTP-01 answer for a.example: read-only webroot"
        );
        assert_eq!(
            responder.calls(),
            ["publish a.example tok1 true", "withdraw a.example tok1"]
        );
        let requests = ca.requests.lock().unwrap();
        assert!(
            !requests.iter().any(|r| r.contains("/chall/")),
            "{requests:?}"
        );
    }

    #[tokio::test]
    async fn a_dropped_order_still_withdraws() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca_with_an_order("pending", "pending", PENDING_HTTP01);
        ca.route("https://ca.test/chall/1", 200, PENDING_HTTP01, None);
        let account = fake_account(&ca, dir.path()).await;
        let responder = Arc::new(Recorder::default());
        let options = IssueOptions {
            deadline: Duration::from_secs(60),
            poll_interval: Duration::from_secs(30),
        };
        // Cancelled (e.g. on Ctrl-C) while it waits for the CA.
        let cancelled = tokio::time::timeout(
            Duration::from_millis(500),
            issue(&account, &["a.example"], responder.as_ref(), &options),
        )
        .await;
        assert!(cancelled.is_err());
        assert_eq!(
            responder.calls(),
            [
                "publish a.example tok1 true",
                "ready",
                "withdraw a.example tok1"
            ]
        );
    }

    /// A CA with one order for a.example and b.example, each authorization pending with an
    /// http-01 challenge (`tok1`, `tok2`) that stays pending once marked ready.
    fn ca_with_two_names() -> FakeCa {
        let ca = FakeCa::default();
        let order = r#"{"status":"pending","identifiers":[{"type":"dns","value":"a.example"},{"type":"dns","value":"b.example"}],
               "authorizations":["https://ca.test/authz/1","https://ca.test/authz/2"],"finalize":"https://ca.test/order/1/finalize"}"#;
        ca.route("https://ca.test/order", 201, order, Some(ORDER));
        ca.route(ORDER, 200, order, None);
        for (n, name) in [(1, "a.example"), (2, "b.example")] {
            let challenge = format!(
                r#"{{"type":"http-01","url":"https://ca.test/chall/{n}","token":"tok{n}","status":"pending"}}"#
            );
            ca.route(
                &format!("https://ca.test/authz/{n}"),
                200,
                &format!(
                    r#"{{"identifier":{{"type":"dns","value":"{name}"}},"status":"pending","challenges":[{challenge}]}}"#
                ),
                None,
            );
            ca.route(&format!("https://ca.test/chall/{n}"), 200, &challenge, None);
        }
        ca
    }

    #[tokio::test]
    async fn every_answer_is_served_before_the_ca_is_told_to_fetch_any() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca_with_two_names();
        let account = fake_account(&ca, dir.path()).await;
        let responder = Recorder {
            ca: Some(ca.clone()),
            ..Recorder::default()
        };
        // The validation never ends here: what matters is the order of the steps.
        let err = issue(&account, &["a.example", "b.example"], &responder, &short())
            .await
            .unwrap_err();
        assert!(matches!(err, AcmeError::Timeout { .. }), "{err}");
        assert_eq!(
            responder.calls(),
            [
                "publish a.example tok1 true",
                "publish b.example tok2 true",
                "ready after 0 challenge posts",
                "withdraw a.example tok1",
                "withdraw b.example tok2"
            ]
        );
        let requests = ca.requests.lock().unwrap();
        for n in [1, 2] {
            let url = format!("POST https://ca.test/chall/{n}");
            assert!(requests.contains(&url), "{url} missing: {requests:?}");
        }
    }

    #[tokio::test]
    async fn a_timeout_names_only_what_the_ca_still_has_pending() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca_with_two_names();
        let account = fake_account(&ca, dir.path()).await;
        let responder = Recorder {
            ca: Some(ca.clone()),
            validates_a: true,
            ..Recorder::default()
        };
        // (A deadline with room for a loaded machine: the polls end at about 0.7 s of it.)
        let options = IssueOptions {
            deadline: Duration::from_secs(1),
            ..quick()
        };
        let err = issue(&account, &["a.example", "b.example"], &responder, &options)
            .await
            .unwrap_err();
        // The polls end before the deadline, so the CA is asked which name is still pending.
        match &err {
            AcmeError::Timeout { what, url, after } => {
                assert_eq!(what, "validation of b.example");
                assert_eq!(url, ORDER);
                assert!(*after < options.deadline, "{after:?}");
            }
            other => panic!("not a timeout: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_deadline_passing_mid_poll_names_the_step_and_the_order() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca_with_an_order("pending", "pending", PENDING_HTTP01);
        ca.route("https://ca.test/chall/1", 200, PENDING_HTTP01, None);
        let account = fake_account(&ca, dir.path()).await;
        let responder = Recorder::default();
        // The first poll would come long after the deadline: the deadline itself ends it.
        let options = IssueOptions {
            deadline: Duration::from_secs(1),
            poll_interval: Duration::from_secs(30),
        };
        let err = issue(&account, &["a.example"], &responder, &options)
            .await
            .unwrap_err();
        match &err {
            AcmeError::Timeout { what, url, after } => {
                assert_eq!(what, "validation of a.example");
                assert_eq!(url, ORDER);
                assert_eq!(*after, options.deadline);
            }
            other => panic!("not a timeout: {other:?}"),
        }
        assert_eq!(
            responder.calls(),
            [
                "publish a.example tok1 true",
                "ready",
                "withdraw a.example tok1"
            ]
        );
    }

    #[tokio::test]
    async fn a_responder_that_cannot_serve_withdraws_everything_and_the_ca_is_told_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca_with_two_names();
        let account = fake_account(&ca, dir.path()).await;
        let responder = Recorder {
            fail_ready: true,
            ..Recorder::default()
        };
        let err = issue(&account, &["a.example", "b.example"], &responder, &quick())
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "publishing the HTTP-01 answer for a.example, b.example: helper task did not start"
        );
        assert_eq!(
            responder.calls(),
            [
                "publish a.example tok1 true",
                "publish b.example tok2 true",
                "ready",
                "withdraw a.example tok1",
                "withdraw b.example tok2"
            ]
        );
        let requests = ca.requests.lock().unwrap();
        assert!(
            !requests.iter().any(|r| r.contains("/chall/")),
            "{requests:?}"
        );
    }

    #[tokio::test]
    async fn no_http01_challenge_is_an_error_listing_what_is_offered() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca_with_an_order(
            "pending",
            "pending",
            r#"{"type":"tls-alpn-01","url":"https://ca.test/chall/3","token":"tok3","status":"pending"}"#,
        );
        let account = fake_account(&ca, dir.path()).await;
        let responder = Recorder::default();
        let err = issue(&account, &["a.example"], &responder, &quick())
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "a.example: the ACME server offers no http-01 challenge (it offers: dns-01, tls-alpn-01)"
        );
        assert!(responder.calls().is_empty());
    }

    #[tokio::test]
    async fn a_refused_order_quotes_the_ca_and_publishes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let ca = FakeCa::default();
        ca.route(
            "https://ca.test/order",
            400,
            r#"{"type":"urn:ietf:params:acme:error:rejectedIdentifier","detail":"Error creating new order",
                "subproblems":[{"type":"urn:ietf:params:acme:error:rejectedIdentifier","detail":"blocked by policy",
                "identifier":{"type":"dns","value":"b.example"}}]}"#,
            None,
        );
        let account = fake_account(&ca, dir.path()).await;
        let responder = Recorder::default();
        let err = issue(
            &account,
            &["A.example", "b.example", "a.example"],
            &responder,
            &quick(),
        )
        .await
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "new order for a.example, b.example: the ACME server answered: \
             urn:ietf:params:acme:error:rejectedIdentifier: Error creating new order; \
             b.example: urn:ietf:params:acme:error:rejectedIdentifier: blocked by policy"
        );
        assert!(responder.calls().is_empty());
    }

    #[test]
    fn names_are_checked_before_anything_is_asked() {
        assert_eq!(
            checked_names(&["WWW.Example.org.", "www.example.org", "b.example"]).unwrap(),
            ["www.example.org", "b.example"]
        );
        for (name, reason) in [
            ("*.example.org", "wildcard"),
            ("127.0.0.1", "an address"),
            ("exa mple.org", "not a DNS name"),
            ("-a.example", "not a DNS name"),
            ("a..example", "not a DNS name"),
        ] {
            let err = checked_names(&[name]).unwrap_err();
            assert!(err.to_string().contains(reason), "{name}: {err}");
            assert!(err.to_string().contains(name), "{name}: {err}");
        }
        assert!(checked_names(&[]).is_err());
        // Digits and inner hyphens are letters of a label too.
        assert_eq!(
            checked_names(&["web-1.example2.org"]).unwrap(),
            ["web-1.example2.org"]
        );
        // At most 253 characters: four labels of 63 and dots make 255, less two is 253.
        let label = "a".repeat(63);
        let longest = format!("{label}.{label}.{label}.{}", "a".repeat(61));
        assert_eq!(longest.len(), 253);
        assert_eq!(checked_names(&[&longest]).unwrap(), [longest.as_str()]);
        for name in [".", "", &format!("{longest}a")] {
            let err = checked_names(&[name]).unwrap_err();
            assert!(
                err.to_string()
                    .contains("not a DNS name (empty or longer than 253)"),
                "{name}: {err}"
            );
        }
    }

    #[test]
    fn debug_of_an_issued_certificate_hides_the_key() {
        let issued = Issued {
            chain_pem: "-----BEGIN CERTIFICATE-----".into(),
            key_pem: Zeroizing::new("-----BEGIN PRIVATE KEY-----\nSECRETSECRET".into()),
            not_after: DateTime::from_timestamp(2_000_000_000, 0).unwrap(),
            names: vec!["a.example".into()],
        };
        let debug = format!("{issued:?}");
        assert!(debug.contains("a.example"), "{debug}");
        assert!(!debug.contains("SECRET"), "{debug}");
        assert!(!debug.contains("PRIVATE KEY"), "{debug}");
    }
}
