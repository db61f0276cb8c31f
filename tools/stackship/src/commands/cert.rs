//! `stackship cert issue|renew|show ENV`: the environment's TLS certificate from an ACME CA
//! (Let's Encrypt by default), put in the way every certificate goes in: the files
//! `<env dir>/secrets/tls.crt` and `tls.key`, whose content names the stack's `tls_cert` and
//! `tls_key` secrets, and a deploy of the environment's installed release, which rolls only the
//! service that mounts them.
//!
//! A renewal is a deploy: under the environment's deploy lock, recorded and watched.
//! 1. **due?** `renew` reads the installed certificate and stops (exit 0) unless it is within
//!    `ACME_RENEW_DAYS` of its expiry or cannot be read; asked before the lock (a daily timer
//!    does not wait behind a deploy for nothing) and again once it is held;
//! 2. **order**: the ACME account (`secrets/acme-account-<CA host>.json`, made on first use), the order,
//!    the HTTP-01 answers served by a one-off helper task ([`HelperResponder`]) that nginx-proxy
//!    routes `/.well-known/acme-challenge/` to, the chain. Any failure here changes no file and
//!    no service and exits 2 with the CA's own words and the name;
//! 3. **install**: the new pair written beside the old one and renamed over it (the old pair
//!    kept as `tls.crt.previous` / `tls.key.previous`);
//! 4. **deploy**: [`crate::commands::deploy::deploy`] of `current/`; if it does not succeed the
//!    old pair is put back and the command exits with the deploy's status.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::acme::{self, AcmeError, CertInfo, IssueOptions, Issued, Renewal, Responder};
use crate::commands::deploy::{self, DeployError, Watched, progress_line};
use crate::docker::{Call, Client};
use crate::error::Error;
use crate::exit::Outcome;
use crate::helper::{ConfigMount, Helper, Spec, Wait};
use crate::layout::PROJECT;
use crate::lock::DeployLock;
use crate::settings::{Acme, AcmeFlags, Inputs, Settings};
use crate::stack::StackFile;

/// `stackship cert`.
#[derive(Debug, clap::Subcommand)]
pub enum CertCommand {
    /// Obtain a certificate for ACME_DOMAINS now and deploy it (rolls only the proxy).
    Issue(CertArgs),
    /// As issue, but only when the installed certificate is within ACME_RENEW_DAYS (30) of its
    /// expiry, cannot be read, or does not cover every name in ACME_DOMAINS; otherwise say when
    /// it expires and exit 0. What the daily timer runs.
    Renew {
        #[command(flatten)]
        args: CertArgs,
        /// Renew even if the certificate is not due.
        #[arg(long)]
        force: bool,
    },
    /// The installed certificate: names, issuer, validity, days left.
    Show {
        env: String,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// What `cert issue` and `cert renew` take.
#[derive(Debug, Clone, clap::Args)]
pub struct CertArgs {
    pub env: String,
    /// The certificate's names, comma-separated (default: ACME_DOMAINS).
    #[arg(long, value_name = "NAMES")]
    pub domains: Option<String>,
    /// The ACME directory URL (default: ACME_DIRECTORY, else Let's Encrypt's production).
    #[arg(long, value_name = "URL")]
    pub directory: Option<String>,
}

/// The host (and port) of an ACME directory URL, as a file name part: `127.0.0.1:14000` gives
/// `127.0.0.1_14000`; anything but letters, digits, `.` and `-` becomes `_`.
fn account_host(directory: &str) -> String {
    let rest = directory.split_once("://").map_or(directory, |(_, r)| r);
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let name: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.trim_matches(['.', '_']).is_empty() {
        "ca".to_owned()
    } else {
        name
    }
}

/// The files of an environment's certificate, in `<env dir>/secrets/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    pub dir: PathBuf,
}

impl Files {
    pub fn of(env_dir: &Path) -> Self {
        Files {
            dir: env_dir.join("secrets"),
        }
    }
    pub fn cert(&self) -> PathBuf {
        self.dir.join("tls.crt")
    }
    pub fn key(&self) -> PathBuf {
        self.dir.join("tls.key")
    }
    /// The account on the CA at `directory` (one per CA host: trying Let's Encrypt's staging
    /// first leaves the production account to be made when the directory changes).
    pub fn account(&self, directory: &str) -> PathBuf {
        self.dir
            .join(format!("acme-account-{}.json", account_host(directory)))
    }
    fn previous(path: &Path) -> PathBuf {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(".previous");
        path.with_file_name(name)
    }
    fn incoming(path: &Path) -> PathBuf {
        let mut name = std::ffi::OsString::from(".");
        name.push(path.file_name().unwrap_or_default());
        name.push(".new");
        path.with_file_name(name)
    }
}

/// The installed certificate as `status` and `cert show` print it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertStatus {
    pub file: PathBuf,
    pub names: Vec<String>,
    pub issuer: String,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    /// Whole days until notAfter (negative once expired).
    pub days_left: i64,
}

/// The certificate in `<env dir>/secrets/tls.crt`: `None` when there is no such file, an error
/// (the file and why) when it cannot be read.
pub fn installed(env_dir: &Path, now: DateTime<Utc>) -> Result<Option<CertStatus>, String> {
    let file = Files::of(env_dir).cert();
    let pem = match fs::read(&file) {
        Ok(pem) => pem,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", file.display())),
    };
    let CertInfo {
        names,
        issuer,
        not_before,
        not_after,
    } = acme::describe(&pem).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(Some(CertStatus {
        days_left: (not_after - now).num_days(),
        file,
        names,
        issuer,
        not_before,
        not_after,
    }))
}

/// One line: names, issuer, expiry.
pub fn render_line(cert: &CertStatus) -> String {
    let left = if cert.days_left < 0 {
        "EXPIRED".to_owned()
    } else {
        format!("{} days left", cert.days_left)
    };
    format!(
        "{} — issuer {} — expires {} ({left})",
        cert.names.join(", "),
        cert.issuer,
        cert.not_after.format("%Y-%m-%d %H:%M UTC")
    )
}

/// `cert show`'s text.
pub fn render(cert: &CertStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "file:       {}", cert.file.display());
    let _ = writeln!(out, "names:      {}", cert.names.join(", "));
    let _ = writeln!(out, "issuer:     {}", cert.issuer);
    let _ = writeln!(
        out,
        "not before: {}",
        cert.not_before.format("%Y-%m-%d %H:%M UTC")
    );
    let _ = writeln!(
        out,
        "not after:  {}",
        cert.not_after.format("%Y-%m-%d %H:%M UTC")
    );
    let _ = writeln!(out, "days left:  {}", cert.days_left);
    out
}

// ---------------------------------------------------------------------------------------------
// The HTTP-01 responder: a one-off helper task running the environment's nginx.

/// The port the responder listens on, and nginx-proxy's `acme-responder:8402` upstream.
pub const RESPONDER_PORT: u16 = 8402;
/// The name nginx-proxy resolves on the stack's `edge` network.
pub const RESPONDER_ALIAS: &str = "acme-responder";
/// Where the responder's configuration is mounted.
const RESPONDER_CONF: &str = "/etc/stackship/acme-responder.conf";

/// base64url without padding, as RFC 8555 makes tokens and thumbprints.
fn is_base64url(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 512
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Whether `key_authorization` is `<token>.<base64url thumbprint>` (RFC 8555 section 8.1).
fn is_key_authorization(token: &str, key_authorization: &str) -> bool {
    key_authorization
        .strip_prefix(token)
        .and_then(|rest| rest.strip_prefix('.'))
        .is_some_and(is_base64url)
}

/// The responder's whole nginx configuration: unprivileged (pid and temporary files in /tmp),
/// in the foreground, one exact location per token answering its key authorization, 404 for
/// everything else. Every token and key authorization is checked first: only base64url gets
/// into the file.
pub fn responder_config(answers: &[(String, String)]) -> Result<String, String> {
    let mut locations = String::new();
    for (token, key_authorization) in answers {
        if !is_base64url(token) {
            return Err(format!(
                "the challenge token {token:?} is not base64url: not served"
            ));
        }
        if !is_key_authorization(token, key_authorization) {
            return Err(format!(
                "the key authorization of token {token} is not <token>.<base64url>: not served"
            ));
        }
        let _ = writeln!(
            locations,
            "        location = /.well-known/acme-challenge/{token} {{\n            default_type text/plain;\n            return 200 \"{key_authorization}\";\n        }}"
        );
    }
    Ok(format!(
        "# HTTP-01 answers of one ACME order, served by `stackship cert` while the order runs.
daemon            off;
worker_processes  1;
error_log         stderr notice;
pid               /tmp/nginx.pid;

events {{
    worker_connections  64;
}}

http {{
    client_body_temp_path /tmp/client_temp;
    proxy_temp_path       /tmp/proxy_temp;
    fastcgi_temp_path     /tmp/fastcgi_temp;
    uwsgi_temp_path       /tmp/uwsgi_temp;
    scgi_temp_path        /tmp/scgi_temp;
    access_log            /dev/stdout;
    server_tokens         off;

    server {{
        listen {RESPONDER_PORT} default_server;
{locations}        location / {{
            return 404;
        }}
    }}
}}
"
    ))
}

/// How the responder is started and waited for.
#[derive(Debug, Clone, Copy)]
pub struct ResponderTiming {
    /// How long the helper task may take to run (an image pull on its node included).
    pub start: Duration,
    pub poll: Duration,
}

impl Default for ResponderTiming {
    fn default() -> Self {
        ResponderTiming {
            start: Duration::from_secs(120),
            poll: Duration::from_millis(500),
        }
    }
}

/// What the running responder is made of.
struct Running<'a, 'b> {
    helper: Helper<'a, 'b>,
    config: String,
}

/// Serves an order's HTTP-01 answers from a one-off helper task: `publish` collects them,
/// `ready` writes them into an nginx configuration (a Swarm config), starts the environment's
/// own nginx image with it on the stack's `edge` network as `acme-responder`, and returns once
/// the task runs; the last `withdraw` (or dropping it) removes the task and the config.
pub struct HelperResponder<'a, 'b> {
    client: &'a Client<'b>,
    /// `stackship-<env>`.
    stack: String,
    image: String,
    /// The helper service's name, also its config's.
    name: String,
    timing: ResponderTiming,
    stop: fn() -> bool,
    say: &'a dyn Fn(&str),
    answers: RefCell<Vec<(String, String)>>,
    /// Tokens published and not withdrawn yet.
    live: RefCell<Vec<String>>,
    running: RefCell<Option<Running<'a, 'b>>>,
}

impl<'a, 'b> HelperResponder<'a, 'b> {
    pub fn new(
        client: &'a Client<'b>,
        stack: &str,
        image: &str,
        timing: ResponderTiming,
        stop: fn() -> bool,
        say: &'a dyn Fn(&str),
    ) -> Self {
        HelperResponder {
            client,
            stack: stack.to_owned(),
            image: image.to_owned(),
            name: format!("{stack}-ops-acme-{}", std::process::id()),
            timing,
            stop,
            say,
            answers: RefCell::new(Vec::new()),
            live: RefCell::new(Vec::new()),
            running: RefCell::new(None),
        }
    }

    /// The helper service: one task of nginx on the `edge` network under the alias nginx-proxy
    /// routes to, unprivileged (nginx's uid), read-only with a tmpfs for its pid and temporary
    /// files, its configuration mounted from the Swarm config `config`.
    pub fn spec(&self, config: &str) -> Spec {
        Spec {
            name: self.name.clone(),
            what: "acme-http-01".to_owned(),
            image: self.image.clone(),
            entrypoint: Some("nginx".to_owned()),
            args: vec![
                "-e".into(),
                "stderr".into(),
                "-c".into(),
                RESPONDER_CONF.into(),
            ],
            configs: vec![ConfigMount {
                source: config.to_owned(),
                target: RESPONDER_CONF.to_owned(),
            }],
            networks: vec![format!("name={}_edge,alias={RESPONDER_ALIAS}", self.stack)],
            mounts: vec!["type=tmpfs,destination=/tmp,tmpfs-size=4194304".to_owned()],
            // nginx's uid in the real image and the stand-in, as nginx-proxy runs.
            user: Some("101:101".to_owned()),
            ..Spec::default()
        }
    }

    /// Removes the helper and its config; a failure is said, not returned (the order goes on
    /// and its own result is what counts).
    fn stop_serving(&self) {
        let Some(running) = self.running.borrow_mut().take() else {
            return;
        };
        let name = running.helper.name().to_owned();
        let mut removed = true;
        if let Err(e) = running.helper.remove() {
            removed = false;
            (self.say)(&format!(
                "WARNING: could not remove the responder {name}: {e} (docker service rm {name})"
            ));
        }
        if let Err(e) = self
            .client
            .run(&Call::write(["config", "rm", running.config.as_str()]))
        {
            removed = false;
            (self.say)(&format!(
                "WARNING: could not remove the responder's config {}: {e} (docker config rm {})",
                running.config, running.config
            ));
        }
        if removed {
            (self.say)(&format!("HTTP-01 responder {name} removed"));
        }
    }

    /// Removes responders (and their configs) a killed earlier run of this stack left: on the
    /// same alias they would answer some of the CA's requests with their old tokens. Under the
    /// deploy lock, no other run of this stack has one.
    fn remove_leftovers(&self, label: &str) {
        let prefix = format!("{}-ops-acme-", self.stack);
        for kind in ["service", "config"] {
            let filter = format!("label={label}");
            let names = self
                .client
                .lines(&Call::read([
                    kind,
                    "ls",
                    "--filter",
                    filter.as_str(),
                    "--format",
                    "{{.Name}}",
                ]))
                .unwrap_or_default();
            for name in names.iter().filter(|n| n.starts_with(&prefix)) {
                match self.client.run(&Call::write([kind, "rm", name.as_str()])) {
                    Ok(_) => (self.say)(&format!("removed the {kind} {name} a stopped run left")),
                    Err(e) => (self.say)(&format!(
                        "WARNING: could not remove the {kind} {name} a stopped run left: {e}"
                    )),
                }
            }
        }
    }

    fn start(&self) -> io::Result<()> {
        let config_text = responder_config(&self.answers.borrow()).map_err(io::Error::other)?;
        let config = self.name.clone();
        let label = format!("{PROJECT}.ops-helper=acme-http-01");
        self.remove_leftovers(&label);
        self.client
            .run(
                &Call::write([
                    "config",
                    "create",
                    "--label",
                    label.as_str(),
                    config.as_str(),
                    "-",
                ])
                .with_stdin(config_text),
            )
            .map_err(io::Error::other)?;
        let spec = self.spec(&config);
        let helper = match Helper::start(self.client, &spec) {
            Ok(helper) => helper,
            Err(e) => {
                let _ = self
                    .client
                    .run(&Call::write(["config", "rm", config.as_str()]));
                return Err(io::Error::other(e));
            }
        };
        (self.say)(&format!(
            "HTTP-01 responder {} ({}) starting on {}_edge as {RESPONDER_ALIAS}:{RESPONDER_PORT}, serving {} answer(s)",
            self.name,
            self.image,
            self.stack,
            self.answers.borrow().len()
        ));
        let wait = Wait {
            limit: self.timing.start,
            poll: self.timing.poll,
            stop: &self.stop,
        };
        let result = helper.running(&wait);
        *self.running.borrow_mut() = Some(Running { helper, config });
        match result {
            Ok(()) => {
                (self.say)(&format!("HTTP-01 responder {} runs", self.name));
                Ok(())
            }
            Err(e) => {
                let logs = self
                    .running
                    .borrow()
                    .as_ref()
                    .map(|r| r.helper.logs())
                    .unwrap_or_default();
                for line in logs.lines().filter(|l| !l.trim().is_empty()) {
                    (self.say)(&format!("  responder: {line}"));
                }
                self.stop_serving();
                Err(io::Error::other(e))
            }
        }
    }
}

impl Responder for HelperResponder<'_, '_> {
    fn publish(&self, _domain: &str, token: &str, key_authorization: &str) -> io::Result<()> {
        self.live.borrow_mut().push(token.to_owned());
        if !is_base64url(token) || !is_key_authorization(token, key_authorization) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the challenge token {token:?} or its key authorization is not base64url"),
            ));
        }
        if self.running.borrow().is_some() {
            return Err(io::Error::other(
                "the responder already serves this order's answers",
            ));
        }
        let mut answers = self.answers.borrow_mut();
        if !answers.iter().any(|(t, _)| t == token) {
            answers.push((token.to_owned(), key_authorization.to_owned()));
        }
        Ok(())
    }

    fn ready(&self) -> io::Result<()> {
        if self.running.borrow().is_some() || self.answers.borrow().is_empty() {
            return Ok(());
        }
        self.start()
    }

    fn withdraw(&self, _domain: &str, token: &str) {
        let mut live = self.live.borrow_mut();
        if let Some(i) = live.iter().position(|t| t == token) {
            live.remove(i);
        }
        self.answers.borrow_mut().retain(|(t, _)| t != token);
        let empty = live.is_empty();
        drop(live);
        if empty {
            self.stop_serving();
        }
    }
}

impl Drop for HelperResponder<'_, '_> {
    fn drop(&mut self) {
        self.stop_serving();
    }
}

// ---------------------------------------------------------------------------------------------
// The CA, the install, the deploy.

/// The ACME side of an order, behind a trait so the rest is tested without a CA.
pub trait Ca {
    /// Opens (or registers) the account whose credentials are in `account` and orders a
    /// certificate for `names`, answering through `responder`.
    fn issue(
        &self,
        settings: &Acme,
        account: &Path,
        names: &[String],
        responder: &dyn Responder,
        say: &dyn Fn(&str),
    ) -> Result<Issued, AcmeError>;
}

/// The real CA: [`acme::Account::open`] and [`acme::issue`] on a runtime of this thread; Ctrl-C
/// or SIGTERM ends the order (its answers withdrawn).
pub struct AcmeCa {
    pub options: IssueOptions,
    pub stop: fn() -> bool,
}

impl Ca for AcmeCa {
    fn issue(
        &self,
        settings: &Acme,
        account: &Path,
        names: &[String],
        responder: &dyn Responder,
        say: &dyn Fn(&str),
    ) -> Result<Issued, AcmeError> {
        let mut server = acme::AcmeServer::new(settings.directory.value.clone());
        if let Some(root) = &settings.ca_root {
            let pem = fs::read_to_string(&root.value).map_err(|e| AcmeError::Protocol {
                context: format!("ACME_CA_ROOT {} ({})", root.value.display(), root.origin),
                message: format!("cannot read it: {e}"),
            })?;
            server = server.with_extra_root(pem);
        }
        let contact: Vec<&str> = settings.contact.iter().map(|c| c.value.as_str()).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| AcmeError::Protocol {
                context: "starting the ACME client".into(),
                message: e.to_string(),
            })?;
        let stop = self.stop;
        runtime.block_on(async {
            let (account_, opened) = acme::Account::open(&server, account, &contact).await?;
            say(&match opened {
                acme::Opened::Created => format!(
                    "registered an ACME account on {} (its key: {}, mode 0600)",
                    server.directory_url,
                    account.display()
                ),
                acme::Opened::Loaded => format!(
                    "ACME account on {} from {}",
                    server.directory_url,
                    account.display()
                ),
            });
            let stopped = async {
                while !stop() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            };
            tokio::select! {
                issued = acme::issue(&account_, &names, responder, &self.options) => issued,
                () = stopped => Err(AcmeError::Protocol {
                    context: format!("ordering a certificate for {}", names.join(", ")),
                    message: "interrupted (its answers were withdrawn)".into(),
                }),
            }
        })
    }
}

/// What `cert issue` / `cert renew` was asked.
#[derive(Debug, Clone)]
pub struct Request {
    /// `<root>/<env>`.
    pub env_dir: PathBuf,
    pub env: String,
    pub flags: AcmeFlags,
    /// `issue`, `renew --force`: order whether or not the certificate is due.
    pub force: bool,
    pub process_env: BTreeMap<String, String>,
    pub owner: String,
    pub data_root: PathBuf,
    pub stop: fn() -> bool,
    pub now: DateTime<Utc>,
    pub timing: ResponderTiming,
}

/// Runs the deploy that installs the new pair ([`deploy::deploy`] in the tool).
pub type Deployer<'d> =
    &'d dyn Fn(&deploy::Request, &mut dyn io::Write) -> Result<Watched, DeployError>;

fn refused<T>(message: impl Into<String>) -> Result<T, Error> {
    Err(Error::Refused(message.into()))
}

/// The settings of the environment's installed release, with `cert`'s flags.
pub fn settings(request: &Request) -> Result<(StackFile, Settings), Error> {
    let current = request.env_dir.join("current");
    let compose = current.join(format!("docker-compose.{}.yaml", request.env));
    if !compose.is_file() {
        return refused(format!(
            "{} is missing (run the copy step for {}): a certificate is installed by deploying the environment's release",
            compose.display(),
            request.env
        ));
    }
    let stack = StackFile::read(&compose)?;
    let inputs = Inputs {
        env: request.process_env.clone(),
        deploy_env: Some(request.env_dir.join("deploy.env")),
        pins: Some(deploy::pins_in(&current, &request.env)),
        tag: None,
        timeout: None,
        env_name: request.env.clone(),
        acme: request.flags.clone(),
    };
    let settings = Settings::load(&stack, &inputs)?;
    Ok((stack, settings))
}

/// Whether the stack file `compose` takes the TLS pair from where `cert` installs it: secrets
/// whose `file:` is `<env dir>/secrets/tls.crt` and `tls.key` (`../secrets/...` beside
/// `current/`). Otherwise why not.
fn takes_the_pair(compose: &Path) -> Result<(), String> {
    let text = fs::read_to_string(compose).map_err(|e| format!("cannot read it: {e}"))?;
    let declared = config_hasher::parse_compose(&text, compose).map_err(|e| e.to_string())?;
    let release = compose.parent().unwrap_or(Path::new("."));
    let env_dir = release.parent().unwrap_or(Path::new("."));
    let files: Vec<PathBuf> = declared
        .declared
        .iter()
        .filter(|d| d.entry.kind == config_hasher::Kind::Secret)
        .map(|d| lexical(&release.join(&d.file)))
        .collect();
    let missing: Vec<&str> = ["tls.crt", "tls.key"]
        .into_iter()
        .filter(|f| !files.contains(&lexical(&env_dir.join("secrets").join(f))))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "no secret of this stack comes from ../secrets/{}",
            missing.join(" or ../secrets/")
        ))
    }
}

/// `path` with `.` and `dir/..` folded away, without asking the file system.
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir if out.file_name().is_some() => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Whether the installed certificate is due (`Ok`, why) or not (`Err`, the line that says when
/// it expires).
fn due(files: &Files, settings: &Acme, now: DateTime<Utc>) -> Result<String, String> {
    let pem = fs::read(files.cert()).unwrap_or_default();
    let threshold = chrono::TimeDelta::days(i64::from(settings.renew_days.value));
    match acme::renewal(&pem, now, threshold) {
        Renewal::Due { reason } => Ok(reason.to_string()),
        Renewal::NotDue { .. } if let Some(missing) = uncovered(&pem, settings) => Ok(missing),
        Renewal::NotDue { not_after } => Err(format!(
            "the certificate in {} expires on {} ({} days left); renewal is due within {} days of expiry (ACME_RENEW_DAYS, {}): nothing to do",
            files.cert().display(),
            not_after.format("%Y-%m-%d %H:%M UTC"),
            (not_after - now).num_days(),
            settings.renew_days.value,
            settings.renew_days.origin
        )),
    }
}

/// Why the certificate `pem` does not do for ACME_DOMAINS (a name it is not for: the domains
/// changed, or it is still the self-signed certificate of a first install), or None when it
/// covers them all or no names are set.
fn uncovered(pem: &[u8], settings: &Acme) -> Option<String> {
    let wanted = &settings.domains.as_ref()?.value;
    let info = acme::describe(pem).ok()?;
    let has = |name: &String| info.names.iter().any(|n| n.eq_ignore_ascii_case(name));
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|n| !has(n))
        .map(String::as_str)
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "the certificate is for {}, not for {} (ACME_DOMAINS)",
            info.names.join(", "),
            missing.join(", ")
        )
    })
}

/// Writes `data` to `path` through a temporary file beside it and a rename, with `mode`.
fn write_atomically(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let tmp = Files::incoming(path);
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    io::Write::write_all(&mut file, data)?;
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    file.sync_all()?;
    drop(file);
    if let Err(e) = crate::acme::owned_like_its_directory(&tmp) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// The pair that was there before [`install`], to put back or let go.
#[derive(Debug)]
pub struct Previous {
    files: Files,
    /// Whether there was a pair (a first issue has none).
    existed: bool,
}

impl Previous {
    /// The old pair back in place (or, when there was none, the new pair removed).
    pub fn restore(self) -> io::Result<()> {
        for path in [self.files.cert(), self.files.key()] {
            if self.existed {
                fs::rename(Files::previous(&path), &path)?;
            } else {
                match fs::remove_file(&path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// The new pair stays: the copies of the old one go.
    pub fn discard(self) {
        for path in [self.files.cert(), self.files.key()] {
            let _ = fs::remove_file(Files::previous(&path));
        }
    }
}

/// Installs `issued` as the environment's pair: each file written beside its place and renamed
/// over it (certificate 0644, key 0600), the old ones kept as `.previous` (hard links).
pub fn install(files: &Files, issued: &Issued) -> io::Result<Previous> {
    let (cert, key) = (files.cert(), files.key());
    let existed = cert.exists() && key.exists();
    for path in [&cert, &key] {
        let previous = Files::previous(path);
        let _ = fs::remove_file(&previous);
        if existed {
            fs::hard_link(path, &previous)?;
        }
    }
    let previous = Previous {
        files: files.clone(),
        existed,
    };
    let written = write_atomically(&key, issued.key_pem.as_bytes(), 0o600)
        .and_then(|()| write_atomically(&cert, issued.chain_pem.as_bytes(), 0o644));
    match written {
        Ok(()) => Ok(previous),
        Err(e) => {
            let _ = previous.restore();
            Err(e)
        }
    }
}

/// `cert issue` / `cert renew`: the outcome (the deploy's, or Done for a renewal not due) and
/// what to print on stdout; progress goes to `progress`.
pub fn obtain(
    client: &Client<'_>,
    ca: &dyn Ca,
    deployer: Deployer<'_>,
    request: &Request,
    progress: &mut dyn io::Write,
) -> Result<(Outcome, String), Error> {
    let files = Files::of(&request.env_dir);
    let (_, early) = settings(request)?;
    if !request.force
        && let Err(not_due) = due(&files, &early.acme, request.now)
    {
        progress_line(progress, &not_due);
        return Ok((Outcome::Done, format!("{}: {not_due}\n", request.env)));
    }
    early.acme.required_domains()?;
    let lock = {
        let mut say = |m: &str| progress_line(progress, m);
        let lock = DeployLock::acquire(
            &request.env_dir,
            &format!("{} deploy", request.env),
            &request.owner,
            early.lock_wait.value,
            &mut say,
        )?;
        say(&format!("holding the {} deploy lock", request.env));
        lock
    };
    // Everything again under the lock: a deploy or another renewal may have changed it.
    let (_, settings) = settings(request)?;
    if !request.force
        && let Err(not_due) = due(&files, &settings.acme, request.now)
    {
        progress_line(progress, &not_due);
        return Ok((Outcome::Done, format!("{}: {not_due}\n", request.env)));
    }
    let acme = settings.acme.clone();
    let names = acme.required_domains()?.value.clone();
    let compose = request
        .env_dir
        .join("current")
        .join(format!("docker-compose.{}.yaml", request.env));
    if let Err(why) = takes_the_pair(&compose) {
        return refused(format!(
            "{}: {why}; a certificate installed for {} would serve nothing (is ACME_DOMAINS set for the right environment?)",
            compose.display(),
            request.env
        ));
    }
    let Some(image) = settings.images.get("nginx-proxy").map(|i| i.value.clone()) else {
        return refused(format!(
            "the {} stack has no nginx-proxy service: nothing would route /.well-known/acme-challenge/ to a responder",
            request.env
        ));
    };
    fs::create_dir_all(&files.dir)
        .and_then(|()| fs::set_permissions(&files.dir, fs::Permissions::from_mode(0o700)))
        .map_err(Error::io(format!("cannot make {}", files.dir.display())))?;

    let progress = RefCell::new(progress);
    let say = |m: &str| progress_line(&mut **progress.borrow_mut(), m);
    say(&format!(
        "ordering a certificate for {} from {} ({})",
        names.join(", "),
        acme.directory.value,
        acme.directory.origin
    ));
    let stack = format!("{PROJECT}-{}", request.env);
    let issued = {
        let responder =
            HelperResponder::new(client, &stack, &image, request.timing, request.stop, &say);
        let issued = ca.issue(
            &acme,
            &files.account(&acme.directory.value),
            &names,
            &responder,
            &say,
        );
        drop(responder);
        issued
    };
    let issued = match issued {
        Ok(issued) => issued,
        Err(e) => {
            return refused(format!(
                "no certificate for {} from {}: {e}. Nothing was changed: the installed certificate keeps serving",
                names.join(", "),
                acme.directory.value
            ));
        }
    };
    say(&format!(
        "issued: {} until {}",
        issued.names.join(", "),
        issued.not_after.format("%Y-%m-%d %H:%M UTC")
    ));
    let previous = install(&files, &issued).map_err(Error::io(format!(
        "cannot install the new certificate in {} (the old pair is in place)",
        files.dir.display()
    )))?;
    say(&format!(
        "installed {} and {} (the previous pair kept as *.previous until the deploy succeeded)",
        files.cert().display(),
        files.key().display()
    ));

    let deploy_request = deploy::Request {
        note: Some(format!(
            "certificate for {} until {}",
            issued.names.join(", "),
            issued.not_after.format("%Y-%m-%d")
        )),
        ..deploy::Request::of_installed(
            &request.env_dir,
            &request.env,
            request.process_env.clone(),
            &request.owner,
            &request.data_root,
            request.stop,
        )
    };
    say(&format!(
        "stackship deploy {} (the new certificate)",
        request.env
    ));
    let result = deployer(&deploy_request, &mut **progress.borrow_mut());
    // Still under the lock: the files go back before another deploy can read them.
    let put_back = |previous: Previous, what: &str| match previous.restore() {
        Ok(()) => say(&format!(
            "{what}: the previous certificate is back in {} (the swarm keeps serving it)",
            files.dir.display()
        )),
        Err(e) => say(&format!(
            "{what}: WARNING: the previous certificate could not be put back ({e}); it is in {}.previous",
            files.cert().display()
        )),
    };
    let keep_new = |what: &str| {
        say(&format!(
            "{what}: the new certificate stays in {} and the previous one in {}.previous; see `stackship status {}`, then deploy again, or put the .previous pair back and deploy",
            files.dir.display(),
            files.cert().display(),
            request.env
        ))
    };
    let outcome = match result {
        Ok(w) if w.outcome == Outcome::Done => {
            previous.discard();
            say(&format!(
                "{}: the new certificate serves ({})",
                request.env,
                issued.names.join(", ")
            ));
            let mut text = w.summary;
            let _ = writeln!(
                text,
                "{}: certificate for {} until {}",
                request.env,
                issued.names.join(", "),
                issued.not_after.format("%Y-%m-%d %H:%M UTC")
            );
            Ok((Outcome::Done, text))
        }
        // The swarm may already serve the new pair: the files stay as they are (the old pair in
        // *.previous), so that files and swarm do not disagree behind the operator's back.
        Ok(w) if w.outcome == Outcome::Unknown => {
            keep_new(&format!(
                "the deploy's end is unknown ({})",
                w.outcome.meaning()
            ));
            Ok((w.outcome, w.summary))
        }
        Ok(w) => {
            put_back(
                previous,
                &format!("the deploy did not succeed ({})", w.outcome.meaning()),
            );
            Ok((w.outcome, w.summary))
        }
        Err(e) if e.outcome() == Outcome::Unknown => {
            keep_new(&format!("the deploy stopped at {e}, after it began"));
            Err(Error::Deploy(Box::new(e)))
        }
        Err(e) => {
            put_back(previous, &format!("the deploy stopped at {e}"));
            Err(Error::Deploy(Box::new(e)))
        }
    };
    drop(lock);
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acme::{AuthzFailure, Problem};
    use crate::commands::deploy::Stage;
    use crate::docker::fake::FakeEngine;
    use chrono::TimeZone;
    use rcgen::{CertificateParams, KeyPair, date_time_ymd};
    use zeroize::Zeroizing;

    const DIGEST: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    /// A certificate for `names` valid until `until` (year, month, day), and its key.
    fn pair(names: &[&str], until: (i32, u8, u8)) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        params.not_before = date_time_ymd(2029, 1, 1);
        params.not_after = date_time_ymd(until.0, until.1, until.2);
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap()
    }

    /// An environment directory like the copy step and up.sh leave it, with a certificate
    /// valid until `until`.
    struct Fixture {
        _root: tempfile::TempDir,
        request: Request,
        old_cert: String,
        old_key: String,
    }

    fn fixture(deploy_env: &str, until: (i32, u8, u8)) -> Fixture {
        let root = tempfile::tempdir().unwrap();
        let env_dir = root.path().join("prod");
        let current = env_dir.join("current");
        fs::create_dir_all(current.join("deploy-manifests/prod")).unwrap();
        fs::write(
            current.join("deploy-manifests/prod/images.env"),
            format!("NGINX_IMAGE=nginx:1.27@{DIGEST}\n"),
        )
        .unwrap();
        fs::write(
            current.join("docker-compose.prod.yaml"),
            "services:\n  nginx-proxy:\n    image: ${NGINX_IMAGE}\n    secrets: [tls_cert, tls_key]\nsecrets:\n  tls_cert:\n    name: ${PROD_TLS_CERT}\n    file: ../secrets/tls.crt\n  tls_key:\n    name: ${PROD_TLS_KEY}\n    file: ../secrets/tls.key\n",
        )
        .unwrap();
        fs::write(env_dir.join("deploy.env"), deploy_env).unwrap();
        let (old_cert, old_key) = pair(&["a.example", "www.a.example"], until);
        fs::create_dir_all(env_dir.join("secrets")).unwrap();
        fs::write(env_dir.join("secrets/tls.crt"), &old_cert).unwrap();
        fs::write(env_dir.join("secrets/tls.key"), &old_key).unwrap();
        let request = Request {
            env_dir,
            env: "prod".into(),
            flags: AcmeFlags::default(),
            force: false,
            process_env: BTreeMap::new(),
            owner: "test".into(),
            data_root: root.path().join("data"),
            stop: || false,
            now: now(),
            timing: ResponderTiming {
                start: Duration::from_millis(50),
                poll: Duration::from_millis(1),
            },
        };
        Fixture {
            _root: root,
            request,
            old_cert,
            old_key,
        }
    }

    const SETTINGS: &str = "ACME_DOMAINS=a.example,www.a.example\nLOCK_WAIT=0\n";
    /// Due: 19 days left on 2030-01-01.
    const SOON: (i32, u8, u8) = (2030, 1, 20);
    /// Not due: 59 days left.
    const LATER: (i32, u8, u8) = (2030, 3, 1);

    const TOKEN: &str = "tok_A-1";

    /// A CA that publishes one answer per name, asks the responder to serve, withdraws, and
    /// answers as told.
    struct TestCa {
        answer: RefCell<Option<Result<Issued, AcmeError>>>,
        asked: RefCell<Vec<String>>,
    }

    impl TestCa {
        fn answering(answer: Result<Issued, AcmeError>) -> Self {
            TestCa {
                answer: RefCell::new(Some(answer)),
                asked: RefCell::new(Vec::new()),
            }
        }
    }

    impl Ca for TestCa {
        fn issue(
            &self,
            settings: &Acme,
            account: &Path,
            names: &[String],
            responder: &dyn Responder,
            _say: &dyn Fn(&str),
        ) -> Result<Issued, AcmeError> {
            self.asked.borrow_mut().push(format!(
                "{} {} {}",
                names.join(","),
                settings.directory.value,
                account.file_name().unwrap().to_string_lossy()
            ));
            let tokens: Vec<(String, String)> = names
                .iter()
                .enumerate()
                .map(|(i, _)| (format!("{TOKEN}{i}"), format!("{TOKEN}{i}.thumb-print_x")))
                .collect();
            let mut result = Ok(());
            for (name, (token, ka)) in names.iter().zip(&tokens) {
                result = result.and_then(|()| responder.publish(name, token, ka));
            }
            let result = result.and_then(|()| responder.ready());
            for (name, (token, _)) in names.iter().zip(&tokens) {
                responder.withdraw(name, token);
            }
            result.map_err(|source| AcmeError::Responder {
                domain: names.join(", "),
                source,
            })?;
            self.answer.borrow_mut().take().unwrap()
        }
    }

    fn issued(names: &[&str]) -> Issued {
        let (chain_pem, key_pem) = pair(names, (2030, 4, 1));
        Issued {
            chain_pem,
            key_pem: Zeroizing::new(key_pem),
            not_after: Utc.with_ymd_and_hms(2030, 4, 1, 0, 0, 0).unwrap(),
            names: names.iter().map(|n| (*n).to_owned()).collect(),
        }
    }

    /// Docker answers for a responder that starts and runs.
    fn responder_engine() -> FakeEngine {
        let fake = FakeEngine::new();
        fake.answer(&["service", "ls"], "");
        fake.answer(&["config", "ls"], "");
        fake.answer(&["config", "create"], "");
        fake.answer(&["service", "create"], "");
        fake.answer_once(&["service", "ps"], "Preparing 1s|");
        fake.answer(&["service", "ps"], "Running 1s|");
        fake.answer(&["service", "rm"], "");
        fake.answer(&["ps", "-aq"], "");
        fake.answer(&["config", "rm"], "");
        fake
    }

    /// A deploy that records what it was asked (and which certificate was in place then), and
    /// ends as told.
    struct TestDeploy {
        result: RefCell<Option<Result<Watched, DeployError>>>,
        seen: RefCell<Vec<(deploy::Request, String)>>,
    }

    impl TestDeploy {
        fn ending(outcome: Outcome) -> Self {
            Self::with(Ok(Watched {
                outcome,
                summary: "nginx-proxy: ok (updated)\n".into(),
                report: "{}".into(),
            }))
        }
        fn with(result: Result<Watched, DeployError>) -> Self {
            TestDeploy {
                result: RefCell::new(Some(result)),
                seen: RefCell::new(Vec::new()),
            }
        }
        fn run(&self, request: &deploy::Request) -> Result<Watched, DeployError> {
            let cert = fs::read_to_string(request.env_dir().join("secrets/tls.crt")).unwrap();
            self.seen.borrow_mut().push((request.clone(), cert));
            self.result.borrow_mut().take().unwrap()
        }
    }

    fn run(
        f: &Fixture,
        fake: &FakeEngine,
        ca: &dyn Ca,
        deployer: &TestDeploy,
    ) -> (Result<(Outcome, String), Error>, String) {
        let client = Client::new(fake);
        let deploy_fn = |r: &deploy::Request, _: &mut dyn io::Write| deployer.run(r);
        let mut progress = Vec::new();
        let result = obtain(&client, ca, &deploy_fn, &f.request, &mut progress);
        (result, String::from_utf8(progress).unwrap())
    }

    fn files(f: &Fixture) -> (String, String) {
        let files = Files::of(&f.request.env_dir);
        (
            fs::read_to_string(files.cert()).unwrap(),
            fs::read_to_string(files.key()).unwrap(),
        )
    }

    fn leftovers(f: &Fixture) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(f.request.env_dir.join("secrets"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "tls.crt" && n != "tls.key")
            .collect();
        names.sort();
        names
    }

    fn hold_lock(f: &Fixture) -> DeployLock {
        DeployLock::acquire(
            &f.request.env_dir,
            "prod deploy",
            "pid 1 on ci, a deploy",
            Duration::ZERO,
            &mut |_| {},
        )
        .unwrap()
    }

    #[test]
    fn a_renewal_not_due_says_when_it_expires_and_takes_no_lock() {
        let f = fixture(SETTINGS, LATER);
        // Another deploy holds the lock: a renewal that is not due does not wait for it.
        let _held = hold_lock(&f);
        let fake = FakeEngine::new();
        let ca = TestCa::answering(Ok(issued(&["a.example"])));
        let deployer = TestDeploy::ending(Outcome::Done);
        let (result, progress) = run(&f, &fake, &ca, &deployer);
        let (outcome, text) = result.unwrap();
        assert_eq!(outcome, Outcome::Done);
        assert!(
            text.starts_with("prod: the certificate in ")
                && text.contains("expires on 2030-03-01 00:00 UTC (59 days left)")
                && text.contains("renewal is due within 30 days of expiry (ACME_RENEW_DAYS, default): nothing to do"),
            "{text}"
        );
        assert!(!progress.contains("lock"), "{progress}");
        assert!(fake.calls().is_empty());
        assert!(ca.asked.borrow().is_empty());
        assert!(deployer.seen.borrow().is_empty());
        assert_eq!(files(&f), (f.old_cert.clone(), f.old_key.clone()));
    }

    #[test]
    fn an_environment_whose_stack_does_not_take_the_pair_is_refused() {
        // dev: no TLS (its edge speaks plain HTTP), so a certificate would serve nothing.
        let f = fixture(SETTINGS, SOON);
        let compose = f.request.env_dir.join("current/docker-compose.prod.yaml");
        fs::write(
            &compose,
            "services:\n  nginx-proxy:\n    image: ${NGINX_IMAGE}\nsecrets:\n  other:\n    name: ${X}\n    file: ../secrets/other.pem\n",
        )
        .unwrap();
        let fake = FakeEngine::new();
        let ca = TestCa::answering(Ok(issued(&["a.example"])));
        let deployer = TestDeploy::ending(Outcome::Done);
        let (result, _) = run(&f, &fake, &ca, &deployer);
        let e = result.unwrap_err().to_string();
        assert!(
            e.ends_with("docker-compose.prod.yaml: no secret of this stack comes from ../secrets/tls.crt or ../secrets/tls.key; a certificate installed for prod would serve nothing (is ACME_DOMAINS set for the right environment?)"),
            "{e}"
        );
        assert!(fake.calls().is_empty());
        assert!(ca.asked.borrow().is_empty());
        // Written another way, the same files do.
        fs::write(
            &compose,
            "services:\n  nginx-proxy:\n    image: ${NGINX_IMAGE}\nsecrets:\n  k:\n    name: ${K}\n    file: ./../secrets/../secrets/tls.key\n  c:\n    name: ${C}\n    file: ../secrets/tls.crt\n",
        )
        .unwrap();
        assert_eq!(takes_the_pair(&compose), Ok(()));
        fs::write(&compose, "services: [").unwrap();
        assert!(takes_the_pair(&compose).is_err());
        assert_eq!(lexical(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
        assert_eq!(lexical(Path::new("../x")), PathBuf::from("../x"));
    }

    #[test]
    fn each_ca_host_has_its_own_account_file() {
        let files = Files::of(Path::new("/srv/prod"));
        let account = |d: &str| files.account(d).display().to_string();
        assert_eq!(
            account(crate::acme::LETS_ENCRYPT_PRODUCTION),
            "/srv/prod/secrets/acme-account-acme-v02.api.letsencrypt.org.json"
        );
        assert_eq!(
            account(crate::acme::LETS_ENCRYPT_STAGING),
            "/srv/prod/secrets/acme-account-acme-staging-v02.api.letsencrypt.org.json"
        );
        assert_eq!(
            account("https://127.0.0.1:14000/dir"),
            "/srv/prod/secrets/acme-account-127.0.0.1_14000.json"
        );
        assert_eq!(
            account("https://user@ca.example/dir?x#y"),
            "/srv/prod/secrets/acme-account-ca.example.json"
        );
        // Nothing usable as a name: never a path outside secrets/.
        assert_eq!(
            account("https://../x"),
            "/srv/prod/secrets/acme-account-ca.json"
        );
        assert_eq!(
            account("https:///dir"),
            "/srv/prod/secrets/acme-account-ca.json"
        );
    }

    #[test]
    fn a_certificate_missing_a_name_is_due_however_far_its_expiry() {
        // The names changed (or the self-signed certificate of a first install still serves).
        let f = fixture(
            "ACME_DOMAINS=a.example,shop.a.example\nLOCK_WAIT=0\n",
            LATER,
        );
        let (_, early) = super::settings(&f.request).unwrap();
        assert_eq!(
            due(&files_of(&f), &early.acme, f.request.now),
            Ok("the certificate is for a.example, www.a.example, not for shop.a.example (ACME_DOMAINS)".to_owned())
        );
        // Case does not matter in DNS names; with none set, only the expiry counts.
        let f = fixture("ACME_DOMAINS=A.Example,WWW.a.example\nLOCK_WAIT=0\n", LATER);
        let (_, early) = super::settings(&f.request).unwrap();
        assert!(due(&files_of(&f), &early.acme, f.request.now).is_err());
        let f = fixture("LOCK_WAIT=0\n", LATER);
        let (_, early) = super::settings(&f.request).unwrap();
        assert!(due(&files_of(&f), &early.acme, f.request.now).is_err());
    }

    fn files_of(f: &Fixture) -> Files {
        Files::of(&f.request.env_dir)
    }

    #[test]
    fn a_due_renewal_waits_for_the_lock_and_a_timeout_changes_nothing() {
        let f = fixture(SETTINGS, SOON);
        let _held = hold_lock(&f);
        let fake = FakeEngine::new();
        let ca = TestCa::answering(Ok(issued(&["a.example"])));
        let deployer = TestDeploy::ending(Outcome::Done);
        let (result, _) = run(&f, &fake, &ca, &deployer);
        let e = result.unwrap_err();
        assert!(
            e.to_string()
                .contains("the prod deploy lock is still held after 0s by: pid 1 on ci, a deploy"),
            "{e}"
        );
        assert_eq!(e.outcome(), Outcome::NothingChanged);
        assert!(fake.calls().is_empty());
        assert!(ca.asked.borrow().is_empty());
        assert_eq!(files(&f), (f.old_cert.clone(), f.old_key.clone()));
    }

    #[test]
    fn renewal_days_and_force_decide_whether_to_order() {
        // 59 days left, renewal within 60 days: due.
        let f = fixture(&format!("{SETTINGS}ACME_RENEW_DAYS=60\n"), LATER);
        let fake = responder_engine();
        let ca = TestCa::answering(Ok(issued(&["a.example", "www.a.example"])));
        let deployer = TestDeploy::ending(Outcome::Done);
        let (result, _) = run(&f, &fake, &ca, &deployer);
        assert_eq!(result.unwrap().0, Outcome::Done);
        assert_eq!(ca.asked.borrow().len(), 1);
        // Not due, but forced (`issue`, `renew --force`).
        let mut f = fixture(SETTINGS, LATER);
        f.request.force = true;
        let fake = responder_engine();
        let ca = TestCa::answering(Ok(issued(&["a.example", "www.a.example"])));
        let deployer = TestDeploy::ending(Outcome::Done);
        let (result, _) = run(&f, &fake, &ca, &deployer);
        assert_eq!(result.unwrap().0, Outcome::Done);
        assert_eq!(ca.asked.borrow().len(), 1);
        // An unreadable certificate is due.
        let f = fixture(SETTINGS, LATER);
        fs::write(f.request.env_dir.join("secrets/tls.crt"), "garbage").unwrap();
        let fake = responder_engine();
        let ca = TestCa::answering(Ok(issued(&["a.example", "www.a.example"])));
        let deployer = TestDeploy::ending(Outcome::Done);
        let (result, progress) = run(&f, &fake, &ca, &deployer);
        assert_eq!(result.unwrap().0, Outcome::Done, "{progress}");
        assert_eq!(ca.asked.borrow().len(), 1);
    }

    #[test]
    fn a_due_certificate_is_ordered_served_installed_and_deployed() {
        let f = fixture(SETTINGS, SOON);
        let fake = responder_engine();
        let new = issued(&["a.example", "www.a.example"]);
        let (new_cert, new_key) = (new.chain_pem.clone(), new.key_pem.to_string());
        let ca = TestCa::answering(Ok(new));
        let deployer = TestDeploy::ending(Outcome::Done);
        let (result, progress) = run(&f, &fake, &ca, &deployer);
        let (outcome, text) = result.unwrap();
        assert_eq!(outcome, Outcome::Done, "{progress}");
        assert_eq!(
            *ca.asked.borrow(),
            [format!(
                "a.example,www.a.example {} acme-account-acme-v02.api.letsencrypt.org.json",
                crate::acme::LETS_ENCRYPT_PRODUCTION
            )]
        );
        // The responder: its config, the helper, both removed once the answers are withdrawn.
        let name = format!("stackship-prod-ops-acme-{}", std::process::id());
        let writes = fake.writes();
        assert_eq!(writes.len(), 4, "{writes:?}");
        assert_eq!(
            writes[0],
            format!("docker config create --label stackship.ops-helper=acme-http-01 {name} -")
        );
        for part in [
            "--network name=stackship-prod_edge,alias=acme-responder".to_owned(),
            format!("--config source={name},target=/etc/stackship/acme-responder.conf,mode=0444"),
            "--mount type=tmpfs,destination=/tmp".to_owned(),
            "--user 101:101".to_owned(),
            "--read-only".to_owned(),
            "--cap-drop ALL".to_owned(),
            format!(
                "--entrypoint nginx nginx:1.27@{DIGEST} -e stderr -c /etc/stackship/acme-responder.conf"
            ),
        ] {
            assert!(writes[1].contains(&part), "{part} missing: {}", writes[1]);
        }
        assert_eq!(writes[2], format!("docker service rm {name}"));
        assert_eq!(writes[3], format!("docker config rm {name}"));
        let config = fake.calls().iter().find_map(|c| c.stdin.clone()).unwrap();
        let config = String::from_utf8(config).unwrap();
        assert!(
            config.contains(&format!(
                "location = /.well-known/acme-challenge/{TOKEN}1 {{\n            default_type text/plain;\n            return 200 \"{TOKEN}1.thumb-print_x\";"
            )),
            "{config}"
        );
        // The responder ran before the deploy, and was gone by then.
        let ps = fake
            .command_lines()
            .iter()
            .position(|l| l.starts_with("docker service ps"))
            .unwrap();
        assert!(ps > 1);
        // The deploy: the installed release, under this lock, with the new pair in place.
        let seen = deployer.seen.borrow();
        assert_eq!(seen.len(), 1);
        let (request, cert_then) = &seen[0];
        assert_eq!(request.release, f.request.env_dir.join("current"));
        assert!(request.lock_held_here);
        assert_eq!(request.env, "prod");
        assert_eq!(
            request.note.as_deref(),
            Some("certificate for a.example, www.a.example until 2030-04-01")
        );
        assert_eq!(cert_then, &new_cert);
        // Installed: the new pair with its modes; the old one gone after the deploy succeeded.
        assert_eq!(files(&f), (new_cert, new_key));
        let mode = |p: PathBuf| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let secrets = Files::of(&f.request.env_dir);
        assert_eq!(mode(secrets.cert()), 0o644);
        assert_eq!(mode(secrets.key()), 0o600);
        assert_eq!(mode(secrets.dir.clone()), 0o700);
        assert!(leftovers(&f).is_empty(), "{:?}", leftovers(&f));
        assert!(
            text.ends_with(
                "prod: certificate for a.example, www.a.example until 2030-04-01 00:00 UTC\n"
            ),
            "{text}"
        );
        assert!(text.starts_with("nginx-proxy: ok"), "{text}");
        assert!(
            progress.contains("holding the prod deploy lock"),
            "{progress}"
        );
        assert!(!progress.contains("PRIVATE KEY"), "{progress}");
    }

    #[test]
    fn an_acme_failure_changes_no_file_and_no_service_and_removes_the_responder() {
        let f = fixture(SETTINGS, SOON);
        let fake = responder_engine();
        let ca = TestCa::answering(Err(AcmeError::Validation {
            failures: vec![AuthzFailure {
                domain: "www.a.example".into(),
                status: "invalid".into(),
                problem: Some(Problem {
                    kind: Some("urn:ietf:params:acme:error:dns".into()),
                    detail: Some("no valid A records found for www.a.example".into()),
                    ..Problem::default()
                }),
            }],
            order_problem: None,
        }));
        let deployer = TestDeploy::ending(Outcome::Done);
        let (result, progress) = run(&f, &fake, &ca, &deployer);
        let e = result.unwrap_err();
        assert_eq!(e.outcome(), Outcome::NothingChanged);
        assert_eq!(e.outcome().code(), 2);
        let message = e.to_string();
        assert!(
            message.contains(
                "www.a.example: urn:ietf:params:acme:error:dns: no valid A records found for www.a.example"
            ),
            "{message}"
        );
        assert!(
            message.contains("Nothing was changed: the installed certificate keeps serving"),
            "{message}"
        );
        assert!(deployer.seen.borrow().is_empty());
        assert_eq!(files(&f), (f.old_cert.clone(), f.old_key.clone()));
        assert!(leftovers(&f).is_empty(), "{:?}", leftovers(&f));
        // The responder came and went; nothing of the stack was touched.
        let writes = fake.writes();
        assert_eq!(writes.len(), 4, "{writes:?}");
        assert!(writes[2].starts_with("docker service rm stackship-prod-ops-acme-"));
        assert!(writes[3].starts_with("docker config rm stackship-prod-ops-acme-"));
        assert!(progress.contains("responder"), "{progress}");
    }

    #[test]
    fn a_responder_that_never_runs_fails_the_order_and_is_removed() {
        let f = fixture(SETTINGS, SOON);
        let fake = FakeEngine::new();
        fake.answer(&["service", "ls"], "");
        fake.answer(&["config", "ls"], "");
        fake.answer(&["config", "create"], "");
        fake.answer(&["service", "create"], "");
        fake.answer(
            &["service", "ps"],
            "Rejected 1s|No such image: nginx:1.27@sha256:2222",
        );
        fake.answer(
            &["service", "logs"],
            "\n[emerg] 1#1: open() \"/etc/nginx/acme.conf\" failed\n\n",
        );
        fake.answer(&["service", "rm"], "");
        fake.answer(&["ps", "-aq"], "");
        fake.answer(&["config", "rm"], "");
        let ca = TestCa::answering(Ok(issued(&["a.example"])));
        let deployer = TestDeploy::ending(Outcome::Done);
        let (result, progress) = run(&f, &fake, &ca, &deployer);
        let e = result.unwrap_err();
        assert!(
            e.to_string().contains("publishing the HTTP-01 answer for a.example, www.a.example: helper stackship-prod-ops-acme-"),
            "{e}"
        );
        assert!(e.to_string().contains("No such image"), "{e}");
        // Its log is shown, without its blank lines.
        assert!(
            progress.contains("  responder: [emerg] 1#1: open() \"/etc/nginx/acme.conf\" failed\n"),
            "{progress}"
        );
        assert!(!progress.contains("  responder: \n"), "{progress}");
        let writes = fake.writes();
        assert_eq!(writes.len(), 4, "{writes:?}");
        assert!(writes[2].starts_with("docker service rm"));
        assert!(writes[3].starts_with("docker config rm"));
        assert!(deployer.seen.borrow().is_empty());
        assert_eq!(files(&f), (f.old_cert.clone(), f.old_key.clone()));
    }

    #[test]
    fn a_failed_rollout_puts_the_old_pair_back_and_exits_with_its_status() {
        let f = fixture(SETTINGS, SOON);
        let fake = responder_engine();
        let new = issued(&["a.example", "www.a.example"]);
        let new_cert = new.chain_pem.clone();
        let ca = TestCa::answering(Ok(new));
        let deployer = TestDeploy::ending(Outcome::RolledBack);
        let (result, progress) = run(&f, &fake, &ca, &deployer);
        let (outcome, _) = result.unwrap();
        assert_eq!(outcome, Outcome::RolledBack);
        assert_eq!(outcome.code(), 1);
        // The deploy saw the new pair; the old one is back after it.
        assert_eq!(deployer.seen.borrow()[0].1, new_cert);
        assert_eq!(files(&f), (f.old_cert.clone(), f.old_key.clone()));
        assert!(leftovers(&f).is_empty(), "{:?}", leftovers(&f));
        assert!(
            progress.contains("the deploy did not succeed (the release failed and was rolled back: the old version serves): the previous certificate is back in"),
            "{progress}"
        );
    }

    #[test]
    fn a_deploy_that_stops_puts_the_old_pair_back_and_keeps_its_exit_code() {
        let f = fixture(SETTINGS, SOON);
        let fake = responder_engine();
        let ca = TestCa::answering(Ok(issued(&["a.example", "www.a.example"])));
        let deployer = TestDeploy::with(Err(DeployError {
            stage: Stage::Pull,
            error: Error::Refused("cannot pull nginx".into()),
        }));
        let (result, progress) = run(&f, &fake, &ca, &deployer);
        let e = result.unwrap_err();
        assert_eq!(e.outcome(), Outcome::NothingChanged);
        assert_eq!(e.to_string(), "pull: cannot pull nginx");
        assert_eq!(files(&f), (f.old_cert.clone(), f.old_key.clone()));
        assert!(leftovers(&f).is_empty(), "{:?}", leftovers(&f));
        assert!(
            progress.contains("the deploy stopped at pull"),
            "{progress}"
        );
        // One whose end could not be seen (exit 3): the swarm may serve the new pair, so it
        // stays in place, the old one beside it, and the operator is told both.
        for result in [
            Err(DeployError {
                stage: Stage::Watch,
                error: Error::Refused("could not follow stackship-prod".into()),
            }),
            Ok(Watched {
                outcome: Outcome::Unknown,
                summary: String::new(),
                report: "{}".into(),
            }),
        ] {
            let f = fixture(SETTINGS, SOON);
            let fake = responder_engine();
            let new = issued(&["a.example", "www.a.example"]);
            let new_pair = (new.chain_pem.clone(), new.key_pem.to_string());
            let ca = TestCa::answering(Ok(new));
            let deployer = TestDeploy::with(result);
            let (result, progress) = run(&f, &fake, &ca, &deployer);
            let outcome = match result {
                Ok((outcome, _)) => outcome,
                Err(e) => e.outcome(),
            };
            assert_eq!(outcome, Outcome::Unknown);
            assert_eq!(files(&f), new_pair);
            assert_eq!(leftovers(&f), ["tls.crt.previous", "tls.key.previous"]);
            let previous = Files::of(&f.request.env_dir);
            assert_eq!(
                fs::read_to_string(Files::previous(&previous.cert())).unwrap(),
                f.old_cert
            );
            assert!(
                progress.contains("the new certificate stays in ")
                    && progress.contains("see `stackship status prod`, then deploy again"),
                "{progress}"
            );
            assert!(!progress.contains("is back in"), "{progress}");
        }
    }

    #[test]
    fn a_first_certificate_whose_deploy_fails_leaves_no_pair() {
        let f = fixture(SETTINGS, SOON);
        let secrets = Files::of(&f.request.env_dir);
        fs::remove_file(secrets.cert()).unwrap();
        fs::remove_file(secrets.key()).unwrap();
        let fake = responder_engine();
        let ca = TestCa::answering(Ok(issued(&["a.example", "www.a.example"])));
        let deployer = TestDeploy::ending(Outcome::RolledBack);
        let (result, _) = run(&f, &fake, &ca, &deployer);
        assert_eq!(result.unwrap().0, Outcome::RolledBack);
        assert!(!secrets.cert().exists());
        assert!(!secrets.key().exists());
        assert!(leftovers(&f).is_empty(), "{:?}", leftovers(&f));
    }

    #[test]
    fn without_names_it_is_refused_naming_the_key() {
        let mut f = fixture("LOCK_WAIT=0\n", SOON);
        let fake = FakeEngine::new();
        let ca = TestCa::answering(Ok(issued(&["a.example"])));
        let deployer = TestDeploy::ending(Outcome::Done);
        let (result, _) = run(&f, &fake, &ca, &deployer);
        let e = result.unwrap_err();
        assert!(e.to_string().contains("ACME_DOMAINS is not set"), "{e}");
        assert_eq!(e.outcome(), Outcome::NothingChanged);
        // A bad value names its file and line.
        fs::write(
            f.request.env_dir.join("deploy.env"),
            "LOCK_WAIT=0\nACME_DOMAINS=*.a.example\n",
        )
        .unwrap();
        let (result, _) = run(&f, &fake, &ca, &deployer);
        let e = result.unwrap_err().to_string();
        assert!(
            e.contains("deploy.env:2: ACME_DOMAINS: \"*.a.example\" cannot be ordered"),
            "{e}"
        );
        // --domains wins.
        f.request.flags.domains = Some("b.example".into());
        let fake = responder_engine();
        let ca = TestCa::answering(Ok(issued(&["b.example"])));
        let deployer = TestDeploy::ending(Outcome::Done);
        let (result, _) = run(&f, &fake, &ca, &deployer);
        assert_eq!(result.unwrap().0, Outcome::Done);
        assert!(ca.asked.borrow()[0].starts_with("b.example "));
        assert!(
            fake.calls()
                .iter()
                .all(|c| !c.command_line().contains("*."))
        );
    }

    #[test]
    fn the_responder_config_serves_exactly_the_tokens() {
        let config = responder_config(&[
            ("abc_-1".into(), "abc_-1.xyz".into()),
            ("def".into(), "def.uvw-_".into()),
        ])
        .unwrap();
        assert_eq!(
            config
                .matches("location = /.well-known/acme-challenge/")
                .count(),
            2
        );
        assert!(config.contains(
            "        location = /.well-known/acme-challenge/abc_-1 {\n            default_type text/plain;\n            return 200 \"abc_-1.xyz\";\n        }\n"
        ));
        assert!(config.contains("return 200 \"def.uvw-_\";"));
        for line in [
            "daemon            off;",
            "pid               /tmp/nginx.pid;",
            "client_body_temp_path /tmp/client_temp;",
            "listen 8402 default_server;",
            "location / {\n            return 404;",
        ] {
            assert!(config.contains(line), "{line} missing:\n{config}");
        }
        assert!(!config.contains("user "), "{config}");
        // Nothing else gets into the file.
        for (token, ka, why) in [
            ("a\";", "a\";.x", "not base64url"),
            ("a b", "a b.x", "not base64url"),
            ("", ".x", "not base64url"),
            ("abc", "abc.x y", "not <token>.<base64url>"),
            ("abc", "abd.xyz", "not <token>.<base64url>"),
            ("abc", "abc.", "not <token>.<base64url>"),
            ("abc", "abc.x\";return 200 \"y", "not <token>.<base64url>"),
        ] {
            let e = responder_config(&[(token.into(), ka.into())]).unwrap_err();
            assert!(e.contains(why), "{token:?} {ka:?}: {e}");
        }
    }

    #[test]
    fn an_invalid_token_is_refused_before_anything_is_made() {
        let fake = FakeEngine::new();
        let client = Client::new(&fake);
        let said = RefCell::new(Vec::<String>::new());
        let say = |m: &str| said.borrow_mut().push(m.to_owned());
        let responder = HelperResponder::new(
            &client,
            "stackship-prod",
            "nginx@sha256:x",
            ResponderTiming::default(),
            || false,
            &say,
        );
        let e = responder
            .publish("a.example", "../../etc", "../../etc.x")
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("not base64url"), "{e}");
        let e = responder
            .publish("a.example", "tok", "tok.x;deny all")
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        responder.withdraw("a.example", "../../etc");
        responder.withdraw("a.example", "tok");
        drop(responder);
        assert!(fake.calls().is_empty(), "{:?}", fake.command_lines());
    }

    /// prod's responder with test timings, never asked to stop.
    fn test_responder<'a, 'b>(
        client: &'a Client<'b>,
        say: &'a dyn Fn(&str),
    ) -> HelperResponder<'a, 'b> {
        HelperResponder::new(
            client,
            "stackship-prod",
            "nginx@sha256:x",
            ResponderTiming {
                start: Duration::from_millis(50),
                poll: Duration::from_millis(1),
            },
            || false,
            say,
        )
    }

    #[test]
    fn a_dropped_responder_removes_its_helper_and_config() {
        let fake = responder_engine();
        let client = Client::new(&fake);
        let say = |_: &str| {};
        {
            let responder = test_responder(&client, &say);
            responder.publish("a.example", "tok", "tok.abc").unwrap();
            responder.ready().unwrap();
            assert_eq!(fake.writes().len(), 2);
            // Cancelled before the withdrawals (Ctrl-C while the CA validates).
        }
        let writes = fake.writes();
        assert_eq!(writes.len(), 4, "{writes:?}");
        assert!(writes[2].starts_with("docker service rm "));
        assert!(writes[3].starts_with("docker config rm "));
    }

    #[test]
    fn the_responder_serves_the_live_answers_once_and_stops_at_the_last_withdrawal() {
        let fake = responder_engine();
        let client = Client::new(&fake);
        let say = |_: &str| {};
        let responder = test_responder(&client, &say);
        // Nothing to serve: nothing is started.
        responder.ready().unwrap();
        assert!(fake.calls().is_empty(), "{:?}", fake.command_lines());
        // An answer withdrawn before the start is not served.
        responder.publish("a.example", "tok0", "tok0.abc").unwrap();
        responder.withdraw("a.example", "tok0");
        responder.publish("a.example", "tok1", "tok1.abc").unwrap();
        responder.publish("b.example", "tok2", "tok2.abc").unwrap();
        responder.ready().unwrap();
        responder.ready().unwrap();
        let calls = fake.calls();
        let configs: Vec<String> = calls
            .iter()
            .filter(|c| {
                c.args
                    .starts_with(&["config".to_owned(), "create".to_owned()])
            })
            .map(|c| String::from_utf8(c.stdin.clone().unwrap_or_default()).unwrap())
            .collect();
        assert_eq!(configs.len(), 1, "started once: {:?}", fake.command_lines());
        assert!(configs[0].contains("tok1.abc"), "{}", configs[0]);
        assert!(configs[0].contains("tok2.abc"), "{}", configs[0]);
        assert!(!configs[0].contains("tok0"), "{}", configs[0]);
        // Labelled as the next run's cleanup looks for it.
        let created: Vec<String> = fake
            .command_lines()
            .into_iter()
            .filter(|l| l.starts_with("docker service create "))
            .collect();
        assert_eq!(created.len(), 1, "{created:?}");
        assert!(
            created[0].contains(" --label stackship.ops-helper=acme-http-01 "),
            "{}",
            created[0]
        );
        drop(responder);

        // A token it never got changes nothing; it serves until the last live one goes.
        let fake = responder_engine();
        let client = Client::new(&fake);
        let responder = test_responder(&client, &say);
        responder.publish("a.example", "tok1", "tok1.abc").unwrap();
        responder.publish("b.example", "tok2", "tok2.abc").unwrap();
        responder.ready().unwrap();
        let started = fake.writes().len();
        responder.withdraw("a.example", "never-published");
        responder.withdraw("a.example", "tok1");
        assert_eq!(fake.writes().len(), started, "{:?}", fake.writes());
        responder.withdraw("b.example", "tok2");
        let writes = fake.writes();
        assert_eq!(writes.len(), started + 2, "{writes:?}");
        assert!(
            writes[started].starts_with("docker service rm "),
            "{writes:?}"
        );
        assert!(
            writes[started + 1].starts_with("docker config rm "),
            "{writes:?}"
        );
        drop(responder);
        assert_eq!(fake.writes().len(), started + 2);
    }

    #[test]
    fn putting_back_no_pair_removes_the_new_one_and_fails_when_it_cannot() {
        let dir = tempfile::tempdir().unwrap();
        let files = Files::of(dir.path());
        fs::create_dir_all(files.cert().parent().unwrap()).unwrap();
        // The key is already gone: that is no error.
        fs::write(files.cert(), "new").unwrap();
        Previous {
            files: Files::of(dir.path()),
            existed: false,
        }
        .restore()
        .unwrap();
        assert!(!files.cert().exists());
        // A key that cannot be removed is.
        fs::create_dir(files.key()).unwrap();
        let e = Previous {
            files: Files::of(dir.path()),
            existed: false,
        }
        .restore()
        .unwrap_err();
        assert_ne!(e.kind(), io::ErrorKind::NotFound, "{e}");
        assert!(files.key().is_dir());
        // Half a pair (a certificate without its key) is no pair to put back: the new pair
        // goes in, and putting back removes it.
        fs::remove_dir(files.key()).unwrap();
        fs::write(files.cert(), "half").unwrap();
        let new = issued(&["a.example"]);
        let previous = install(&files, &new).unwrap();
        assert_eq!(fs::read_to_string(files.key()).unwrap(), *new.key_pem);
        assert!(!Files::previous(&files.cert()).exists());
        previous.restore().unwrap();
        assert!(!files.cert().exists() && !files.key().exists());
    }

    #[test]
    fn responders_a_killed_run_left_are_removed_first() {
        let fake = FakeEngine::new();
        // This stack's leftover (another pid), and another stack's (its own lock's business).
        fake.answer(
            &["service", "ls"],
            "stackship-prod-ops-acme-99\nstackship-dev-ops-acme-5\n",
        );
        fake.answer(&["config", "ls"], "stackship-prod-ops-acme-99\n");
        fake.answer_once(&["config", "rm", "stackship-prod-ops-acme-99"], "");
        fake.answer(&["service", "rm", "stackship-prod-ops-acme-99"], "");
        fake.answer(&["config", "create"], "");
        fake.answer(&["service", "create"], "");
        fake.answer(&["service", "ps"], "Running 1s|");
        fake.answer(&["service", "rm"], "");
        fake.answer(&["ps", "-aq"], "");
        fake.answer(&["config", "rm"], "");
        let client = Client::new(&fake);
        let said = RefCell::new(Vec::<String>::new());
        let say = |m: &str| said.borrow_mut().push(m.to_owned());
        {
            let responder = test_responder(&client, &say);
            responder.publish("a.example", "tok", "tok.abc").unwrap();
            responder.ready().unwrap();
        }
        let writes = fake.writes();
        assert_eq!(writes[0], "docker service rm stackship-prod-ops-acme-99");
        assert_eq!(writes[1], "docker config rm stackship-prod-ops-acme-99");
        assert!(writes[2].starts_with("docker config create "), "{writes:?}");
        assert!(
            !writes.iter().any(|w| w.contains("stackship-dev")),
            "{writes:?}"
        );
        assert!(
            said.borrow().contains(
                &"removed the service stackship-prod-ops-acme-99 a stopped run left".to_owned()
            ),
            "{:?}",
            said.borrow()
        );
    }

    #[test]
    fn show_and_status_read_the_installed_certificate() {
        let f = fixture(SETTINGS, SOON);
        let cert = installed(&f.request.env_dir, now()).unwrap().unwrap();
        assert_eq!(cert.names, ["a.example", "www.a.example"]);
        assert_eq!(cert.days_left, 19);
        assert!(cert.issuer.contains("rcgen"), "{}", cert.issuer);
        let text = render(&cert);
        assert!(
            text.contains("names:      a.example, www.a.example\n"),
            "{text}"
        );
        assert!(
            text.contains("not after:  2030-01-20 00:00 UTC\n"),
            "{text}"
        );
        assert!(text.contains("days left:  19\n"), "{text}");
        assert!(
            render_line(&cert).ends_with("expires 2030-01-20 00:00 UTC (19 days left)"),
            "{}",
            render_line(&cert)
        );
        let later = Utc.with_ymd_and_hms(2030, 2, 1, 0, 0, 0).unwrap();
        let expired = installed(&f.request.env_dir, later).unwrap().unwrap();
        assert!(render_line(&expired).ends_with("(EXPIRED)"));
        // Its last day is not expired yet.
        let last_day = Utc.with_ymd_and_hms(2030, 1, 19, 12, 0, 0).unwrap();
        let last = installed(&f.request.env_dir, last_day).unwrap().unwrap();
        assert!(
            render_line(&last).ends_with("(0 days left)"),
            "{}",
            render_line(&last)
        );
        // No file: no certificate; a broken one: why.
        let secrets = Files::of(&f.request.env_dir);
        fs::write(secrets.cert(), "not a pem").unwrap();
        let e = installed(&f.request.env_dir, now()).unwrap_err();
        assert!(e.contains("tls.crt: no PEM CERTIFICATE block"), "{e}");
        fs::remove_file(secrets.cert()).unwrap();
        assert_eq!(installed(&f.request.env_dir, now()), Ok(None));
        // A file that is there but cannot be read is not "no certificate".
        fs::create_dir(secrets.cert()).unwrap();
        let e = installed(&f.request.env_dir, now()).unwrap_err();
        assert!(e.contains("tls.crt: "), "{e}");
    }
}
