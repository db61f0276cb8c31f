//! `stackship::acme` against a real ACME server: Pebble, Let's Encrypt's test CA (Debian's
//! `pebble` package), with `pebble-challtestsrv` as its DNS server. Every test starts its own
//! pair on free loopback ports, with a TLS pair made here for Pebble's listeners, and kills them
//! (by PID) however it ends. HTTP-01 validation reaches the test's responder on 127.0.0.1.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use stackship::acme::loopback::LoopbackResponder;
use stackship::acme::{
    Account, AcmeError, AcmeServer, IssueOptions, Opened, RENEW_BEFORE, Renewal, Responder,
    describe, issue, renewal,
};
use stackship::commands::cert::{AcmeCa, Ca};
use stackship::settings::{Acme, Origin, Sourced};

/// The program, or a failure that says how to get it (never a skip).
fn program(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "`{name}` is not installed: these tests need Debian's `pebble` package \
             (apt-get install -y pebble)"
        )
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[allow(deprecated)] // ring: see the note in src/acme/http.rs
fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A Pebble and its DNS server, killed when dropped.
struct Pebble {
    children: Vec<(String, Child)>,
    dir: tempfile::TempDir,
    acme_port: u16,
    management_port: u16,
    dns_management_port: u16,
    /// The root of Pebble's own TLS certificate (not of the certificates it issues).
    tls_root_pem: String,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Pebble {
    /// Pebble validating HTTP-01 on `http_port`, reusing valid authorizations `authz_reuse`
    /// percent of the time.
    fn start(http_port: u16, authz_reuse: u8) -> Pebble {
        let pebble = program("pebble");
        let challtestsrv = program("pebble-challtestsrv");
        let dir = tempfile::tempdir().unwrap();

        // Pebble's TLS pair: a root made here, and a leaf for localhost and 127.0.0.1.
        let root_key = KeyPair::generate().unwrap();
        let mut root_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        root_params
            .distinguished_name
            .push(DnType::CommonName, "stackship test TLS root");
        let root = root_params.self_signed(&root_key).unwrap();
        let issuer = Issuer::new(root_params, root_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let cert_path = dir.path().join("tls-cert.pem");
        let key_path = dir.path().join("tls-key.pem");
        fs::write(&cert_path, leaf.pem()).unwrap();
        fs::write(&key_path, leaf_key.serialize_pem()).unwrap();

        let (acme_port, management_port) = (free_port(), free_port());
        let (dns_port, dns_management_port) = (free_port(), free_port());
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{acme_port}"),
            "managementListenAddress": format!("127.0.0.1:{management_port}"),
            "certificate": cert_path,
            "privateKey": key_path,
            "httpPort": http_port,
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        let config_path = dir.path().join("pebble.json");
        fs::write(&config_path, config.to_string()).unwrap();

        let mut started = Pebble {
            children: Vec::new(),
            dir,
            acme_port,
            management_port,
            dns_management_port,
            tls_root_pem: root.pem(),
        };
        // Only the names a test adds resolve (to 127.0.0.1); no challenge servers of its own.
        let dns = started.spawn(
            "pebble-challtestsrv",
            Command::new(challtestsrv)
                .args(["-management", &format!("127.0.0.1:{dns_management_port}")])
                .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                .args(["-defaultIPv4", "", "-defaultIPv6", ""]),
        );
        started.children.push(dns);
        let ca = started.spawn(
            "pebble",
            Command::new(pebble)
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .env("PEBBLE_AUTHZREUSE", authz_reuse.to_string())
                .arg("-config")
                .arg(&config_path)
                .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")]),
        );
        started.children.push(ca);
        for port in [dns_management_port, acme_port, management_port] {
            started.wait_for(port);
        }
        started
    }

    fn spawn(&self, name: &str, command: &mut Command) -> (String, Child) {
        let log = fs::File::create(self.dir.path().join(format!("{name}.log"))).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        (name.to_string(), child)
    }

    fn logs(&self) -> String {
        self.children
            .iter()
            .map(|(name, _)| {
                let log = fs::read_to_string(self.dir.path().join(format!("{name}.log")))
                    .unwrap_or_default();
                format!("--- {name}\n{log}")
            })
            .collect()
    }

    fn wait_for(&mut self, port: u16) {
        let until = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = self
                .children
                .iter_mut()
                .find_map(|(name, child)| Some((name.clone(), child.try_wait().unwrap()?)));
            if let Some((name, status)) = exited {
                panic!("{name} exited ({status}):\n{}", self.logs());
            }
            assert!(
                Instant::now() < until,
                "nothing listens on {port} after 15s:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn server(&self) -> AcmeServer {
        AcmeServer::new(format!("https://127.0.0.1:{}/dir", self.acme_port))
            .with_extra_root(self.tls_root_pem.clone())
    }

    /// Makes `host` resolve to 127.0.0.1 for Pebble's validator.
    fn add_host(&self, host: &str) {
        let body = serde_json::json!({"host": host, "addresses": ["127.0.0.1"]}).to_string();
        let mut stream = TcpStream::connect(("127.0.0.1", self.dns_management_port)).unwrap();
        write!(
            stream,
            "POST /add-a HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    }

    /// The root of the certificates Pebble issues (made anew at each start).
    fn issuing_root(&self) -> CertificateDer<'static> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.tls_root_pem.as_bytes()).unwrap())
            .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(ring())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connection = rustls::ClientConnection::new(
            Arc::new(config),
            ServerName::try_from("127.0.0.1").unwrap(),
        )
        .unwrap();
        let socket = TcpStream::connect(("127.0.0.1", self.management_port)).unwrap();
        let mut tls = rustls::StreamOwned::new(connection, socket);
        tls.write_all(b"GET /roots/0 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut response = Vec::new();
        // Pebble may close without TLS close_notify: what was read is all there is.
        let _ = tls.read_to_end(&mut response);
        let response = String::from_utf8(response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        let body = &response[response.find("-----BEGIN").expect("a PEM body")..];
        CertificateDer::from_pem_slice(body.as_bytes()).unwrap()
    }
}

/// The loopback responder, recording which domains it was asked to answer for; `answer`
/// decides what it actually serves.
struct Recording {
    inner: LoopbackResponder,
    published: Mutex<Vec<String>>,
    answer: fn(&str) -> Option<String>,
}

impl Recording {
    fn new(answer: fn(&str) -> Option<String>) -> Recording {
        Recording {
            inner: LoopbackResponder::start("127.0.0.1:0").unwrap(),
            published: Mutex::new(Vec::new()),
            answer,
        }
    }

    fn port(&self) -> u16 {
        self.inner.addr().port()
    }

    fn published(&self) -> Vec<String> {
        self.published.lock().unwrap().clone()
    }
}

fn honest(key_authorization: &str) -> Option<String> {
    Some(key_authorization.to_string())
}

impl Responder for Recording {
    fn publish(&self, domain: &str, token: &str, key_authorization: &str) -> std::io::Result<()> {
        self.published.lock().unwrap().push(domain.to_string());
        match (self.answer)(key_authorization) {
            Some(body) => self.inner.publish(domain, token, &body),
            None => Ok(()),
        }
    }

    fn withdraw(&self, domain: &str, token: &str) {
        self.inner.withdraw(domain, token);
    }
}

fn options() -> IssueOptions {
    IssueOptions {
        deadline: Duration::from_secs(60),
        poll_interval: Duration::from_millis(200),
    }
}

/// `chain_pem` chains to `root` and is valid now for each of `names`.
fn verify_chain(chain_pem: &str, root: CertificateDer<'static>, names: &[&str]) {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(chain.len() >= 2, "a leaf and an intermediate: {chain_pem}");
    let (leaf, intermediates) = chain.split_first().unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).unwrap();
    let leaf = rustls::server::ParsedCertificate::try_from(leaf).unwrap();
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &leaf,
        &roots,
        intermediates,
        UnixTime::now(),
        ring().signature_verification_algorithms.all,
    )
    .expect("the chain verifies against Pebble's issuing root");
    for name in names {
        rustls::client::verify_server_name(&leaf, &ServerName::try_from(*name).unwrap())
            .unwrap_or_else(|e| panic!("the leaf is not valid for {name}: {e}"));
    }
}

#[tokio::test(flavor = "current_thread")]
async fn issues_a_certificate_that_chains_to_pebbles_root() {
    let started = Instant::now();
    let responder = Recording::new(honest);
    let pebble = Pebble::start(responder.port(), 0);
    let names = ["app.stackship.test", "www.stackship.test"];
    for name in names {
        pebble.add_host(name);
    }
    let credentials = pebble.dir.path().join("acme").join("account.json");
    fs::create_dir(credentials.parent().unwrap()).unwrap();

    let (account, opened) = Account::open(&pebble.server(), &credentials, &[])
        .await
        .unwrap();
    assert_eq!(opened, Opened::Created);
    assert_eq!(
        fs::metadata(&credentials).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let issued = issue(&account, &names, &responder, &options())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", pebble.logs()));

    assert_eq!(issued.names.len(), 2);
    for name in names {
        assert!(
            issued.names.contains(&name.to_string()),
            "{:?}",
            issued.names
        );
    }
    assert!(issued.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    verify_chain(&issued.chain_pem, pebble.issuing_root(), &names);
    let mut published = responder.published();
    published.sort();
    assert_eq!(published, names);
    assert!(
        responder.inner.answered() >= 2,
        "Pebble fetched each answer"
    );
    assert!(
        responder.inner.tokens().is_empty(),
        "every answer withdrawn"
    );

    let info = describe(issued.chain_pem.as_bytes()).unwrap();
    assert_eq!(info.not_after, issued.not_after);
    assert!(info.issuer.contains("Pebble"), "{}", info.issuer);
    let now = chrono::Utc::now();
    assert_eq!(
        renewal(issued.chain_pem.as_bytes(), now, RENEW_BEFORE),
        Renewal::NotDue {
            not_after: issued.not_after
        }
    );
    // Only the account file was written where the caller pointed.
    let written: Vec<_> = fs::read_dir(credentials.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(written, ["account.json"]);
    eprintln!("issued in {:?} (with Pebble's start)", started.elapsed());
}

#[tokio::test(flavor = "current_thread")]
async fn a_reused_account_file_registers_no_new_account() {
    let responder = Recording::new(honest);
    // Pebble reuses an account's valid authorizations for that account only.
    let pebble = Pebble::start(responder.port(), 100);
    for name in ["one.stackship.test", "two.stackship.test"] {
        pebble.add_host(name);
    }
    let credentials = pebble.dir.path().join("account.json");
    let (first, opened) = Account::open(&pebble.server(), &credentials, &[])
        .await
        .unwrap();
    assert_eq!(opened, Opened::Created);
    issue(&first, &["one.stackship.test"], &responder, &options())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", pebble.logs()));
    let stored = fs::read(&credentials).unwrap();

    let (again, opened) = Account::open(&pebble.server(), &credentials, &[])
        .await
        .unwrap();
    assert_eq!(opened, Opened::Loaded);
    assert_eq!(again.id(), first.id());
    assert_eq!(
        fs::read(&credentials).unwrap(),
        stored,
        "the file is untouched"
    );
    let issued = issue(
        &again,
        &["one.stackship.test", "two.stackship.test"],
        &responder,
        &options(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", pebble.logs()));
    assert_eq!(issued.names.len(), 2);
    // one.stackship.test was already authorized for this very account: only the new name
    // needed an answer.
    assert_eq!(
        responder.published(),
        ["one.stackship.test", "two.stackship.test"]
    );

    // A second file is a second account.
    let (other, opened) = Account::open(&pebble.server(), &pebble.dir.path().join("b.json"), &[])
        .await
        .unwrap();
    assert_eq!(opened, Opened::Created);
    assert_ne!(other.id(), first.id());
}

/// The validation of `name` with a responder that serves `answer` fails with Pebble's words.
async fn failed_validation(name: &str, answer: fn(&str) -> Option<String>) -> (String, AcmeError) {
    let responder = Recording::new(answer);
    let pebble = Pebble::start(responder.port(), 0);
    pebble.add_host(name);
    let (account, _) = Account::open(&pebble.server(), &pebble.dir.path().join("a.json"), &[])
        .await
        .unwrap();
    let started = Instant::now();
    let err = issue(&account, &[name], &responder, &options())
        .await
        .expect_err("the validation must fail");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "failed only after {:?}",
        started.elapsed()
    );
    assert_eq!(responder.published(), [name]);
    assert!(
        responder.inner.tokens().is_empty(),
        "the answer is withdrawn"
    );
    eprintln!("failed in {:?}: {err}", started.elapsed());
    (pebble.logs(), err)
}

fn the_cas_reason(err: &AcmeError, name: &str, logs: &str) -> stackship::acme::Problem {
    let AcmeError::Validation { failures, .. } = err else {
        panic!("not a validation failure: {err:?}\n{logs}");
    };
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].domain, name);
    assert_eq!(failures[0].status, "invalid");
    let problem = failures[0].problem.clone().expect("the CA says why");
    let message = err.to_string();
    assert!(message.contains(name), "{message}");
    assert!(
        message.contains(problem.detail.as_deref().unwrap()),
        "{message}"
    );
    problem
}

#[tokio::test(flavor = "current_thread")]
async fn an_unanswered_challenge_fails_in_the_cas_words() {
    let name = "silent.stackship.test";
    let (logs, err) = failed_validation(name, |_| None).await;
    let problem = the_cas_reason(&err, name, &logs);
    assert_eq!(
        problem.kind.as_deref(),
        Some("urn:ietf:params:acme:error:unauthorized"),
        "{problem}"
    );
    assert!(
        problem.detail.as_deref().unwrap().contains("404"),
        "{problem}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_wrong_answer_fails_in_the_cas_words() {
    let name = "wrong.stackship.test";
    let (logs, err) = failed_validation(name, |_| Some("not.the-key-authorization".into())).await;
    let problem = the_cas_reason(&err, name, &logs);
    assert_eq!(
        problem.kind.as_deref(),
        Some("urn:ietf:params:acme:error:unauthorized"),
        "{problem}"
    );
    assert!(
        problem
            .detail
            .as_deref()
            .unwrap()
            .contains("not.the-key-authorization"),
        "{problem}"
    );
}

/// `stackship cert issue`'s CA: the account and the order on a runtime of its own, from the
/// settings as deploy.env gives them (ACME_CA_ROOT trusted for the CA's TLS). A stop request
/// (Ctrl-C, SIGTERM) ends the order.
#[test]
fn the_commands_ca_issues_from_the_settings_and_a_stop_request_ends_the_order() {
    let responder = Recording::new(honest);
    let pebble = Pebble::start(responder.port(), 0);
    let names = vec!["ca.stackship.test".to_string()];
    pebble.add_host(&names[0]);
    let root = pebble.dir.path().join("pebble-tls-root.pem");
    fs::write(&root, &pebble.tls_root_pem).unwrap();
    let directory = format!("https://127.0.0.1:{}/dir", pebble.acme_port);
    let sourced = |value| Sourced {
        value,
        origin: Origin::Default,
    };
    let settings = Acme {
        domains: Some(sourced(names.clone())),
        contact: None,
        directory: Sourced {
            value: directory.clone(),
            origin: Origin::Default,
        },
        ca_root: Some(Sourced {
            value: root,
            origin: Origin::Default,
        }),
        renew_days: Sourced {
            value: 30,
            origin: Origin::Default,
        },
    };
    let account = pebble.dir.path().join("account.json");
    let said = std::cell::RefCell::new(Vec::<String>::new());
    let say = |m: &str| said.borrow_mut().push(m.to_owned());

    let ca = AcmeCa {
        options: options(),
        stop: || false,
    };
    let issued = ca
        .issue(&settings, &account, &names, &responder, &say)
        .unwrap_or_else(|e| panic!("{e}\n{}", pebble.logs()));
    assert_eq!(issued.names, names);
    verify_chain(
        &issued.chain_pem,
        pebble.issuing_root(),
        &["ca.stackship.test"],
    );
    assert_eq!(
        said.borrow()[0],
        format!(
            "registered an ACME account on {directory} (its key: {}, mode 0600)",
            account.display()
        )
    );

    // Stopped before the order: nothing is published, and the order says it was interrupted
    // (a stop during an order withdraws what it published: `a_dropped_order_still_withdraws`).
    let published = responder.published().len();
    let stopped = AcmeCa {
        options: options(),
        stop: || true,
    };
    let err = stopped
        .issue(&settings, &account, &names, &responder, &say)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "ordering a certificate for ca.stackship.test: interrupted (its answers were withdrawn)"
    );
    assert_eq!(
        said.borrow()[1],
        format!("ACME account on {directory} from {}", account.display())
    );
    assert_eq!(responder.published().len(), published);
    assert!(responder.inner.tokens().is_empty());
}
