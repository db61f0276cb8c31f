//! `stackship secret create|init|rotate|list ENV NAME`: the stack's Swarm secrets.
//!
//! A generated password goes from memory straight into `docker secret create NAME -` (stdin):
//! never on disk, in an argument or a log; `--show` prints it once on the terminal only.
//! Swarm secrets cannot be changed, only replaced: nothing here overwrites one.
//!
//! # The database password
//! The backend mounts `<stack>-db-password-v<N>` (a deploy picks the newest); Postgres mounts
//! `<stack>-db-bootstrap-password`, read only when it initialises an empty data directory.
//! A rotation, under the environment's deploy lock:
//! 1. makes `v<N+1>` and sets the role's password to it (`ALTER ROLE`, from a one-off helper
//!    task on the stack's data network, logged in with the first of the current version, the
//!    bootstrap password or a version a broken earlier rotation left that the database
//!    accepts);
//! 2. moves exactly the services that mount the current version onto the new one with
//!    `docker service update --secret-rm/--secret-add` — what runs now, only the secret changed —
//!    and follows the rollout like a deploy (Swarm's update and rollback settings apply);
//! 3. decides from what the services and their running tasks mount afterwards (inspect, not
//!    an exit code): all on the new version — the old ones are removed and a record says so;
//!    all back on the old one (Swarm rolled back) — the old password is put back in the
//!    database and the new secret removed; anything else — both are kept and the recovery
//!    steps printed.
//!
//! A failure before the rollout (the helper failed, timed out, was killed, Ctrl-C) puts the old
//! password back and removes the new secret; when even that fails, the new secret stays (it may
//! hold the password the database has) and running the rotation again repairs it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::models::{Service, Task};

use crate::ancestry::Provenance;
use crate::commands::deploy::{Recorded, Rollout, newest_version, progress_line};
use crate::docker::{Call, Client, DockerError};
use crate::error::Error;
use crate::exit::Outcome;
use crate::helper::{self, SecretMount, Spec, Wait};
use crate::layout::{EnvDir, PROJECT};

/// The one secret `init` and `rotate` manage.
pub const DB_PASSWORD: &str = "db-password";
/// Length of generated passwords unless `--length` says otherwise.
pub const DEFAULT_LENGTH: usize = 32;

/// A secret name as Swarm and this tool accept it.
pub fn check_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::Refused(format!(
            "secret name '{name}' is not valid (letters, digits, '_', '.', '-'; at most 64; starts with a letter or digit)"
        )))
    }
}

/// `len` characters of [A-Za-z0-9_-] from the kernel's random source (6 random bits each).
pub fn random_password(len: usize) -> Result<String, Error> {
    use std::io::Read;
    let mut bytes = vec![0u8; len];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(Error::io("cannot read /dev/urandom"))?;
    Ok(password_of(&bytes))
}

const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn password_of(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| ALPHABET[usize::from(b & 63)] as char)
        .collect()
}

/// The names of an environment's database password secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbNames {
    /// `<stack>-db-password-v`
    pub prefix: String,
    /// `<stack>-db-bootstrap-password`
    pub bootstrap: String,
}

impl DbNames {
    pub fn of(stack: &str) -> Self {
        Self {
            prefix: format!("{stack}-db-password-v"),
            bootstrap: format!("{stack}-db-bootstrap-password"),
        }
    }

    pub fn version(&self, n: u32) -> String {
        format!("{}{n}", self.prefix)
    }

    /// N of `<prefix>N`.
    pub fn number(&self, name: &str) -> Option<u32> {
        newest_version([name], &self.prefix)
    }
}

/// Whether a swarm object exists (Docker's "No such ..." is no; any other failure an error).
pub fn exists(client: &Client<'_>, kind: &str, name: &str) -> Result<bool, Error> {
    match client.run(&Call::read([kind, "inspect", name])) {
        Ok(_) => Ok(true),
        Err(DockerError::Failed { stderr, .. })
            if stderr.contains("No such")
                || stderr.contains("no such")
                || stderr.contains("not found") =>
        {
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// `docker secret create` from stdin, labelled as this tool's and the environment's.
fn store(client: &Client<'_>, name: &str, value: &[u8], env: &str) -> Result<(), Error> {
    client.run(
        &Call::write([
            "secret",
            "create",
            "--label",
            &format!("{PROJECT}.managed-by=stackship"),
            "--label",
            &format!("{PROJECT}.env={env}"),
            name,
            "-",
        ])
        .with_stdin(value.to_vec()),
    )?;
    Ok(())
}

/// Names `create` leaves to `init` and `rotate`.
fn managed_by_rotation(name: &str) -> bool {
    name == "db-bootstrap-password"
        || name
            .strip_prefix("db-password-v")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The content of `--file PATH`: readable and not empty (Swarm refuses empty secrets).
fn file_value(path: &Path) -> Result<Vec<u8>, Error> {
    let v = std::fs::read(path).map_err(Error::io(format!(
        "--file {} cannot be read",
        path.display()
    )))?;
    if v.is_empty() {
        return Err(Error::Refused(format!(
            "--file {} is empty (Swarm refuses empty secrets)",
            path.display()
        )));
    }
    Ok(v)
}

/// Where a created secret's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A generated password of this length, shown once on `tty` when given.
    Generated {
        length: usize,
        show: bool,
    },
    File(PathBuf),
}

/// `secret create ENV NAME`: the secret `<stack>-NAME`; returns its name. `tty` is where
/// `--show` prints (the controlling terminal), opened before anything is made.
pub fn create(
    client: &Client<'_>,
    env: &EnvDir,
    name: &str,
    source: &Source,
    tty: &mut dyn FnMut() -> std::io::Result<Box<dyn std::io::Write>>,
) -> Result<String, Error> {
    check_name(name)?;
    if managed_by_rotation(name) {
        return Err(Error::Refused(format!(
            "'{name}' is managed by `stackship secret init|rotate {} db-password`",
            env.env
        )));
    }
    let full = format!("{}-{name}", env.stack());
    check_name(&full)?;
    let value = match source {
        Source::File(path) => file_value(path)?,
        Source::Generated { length, .. } => {
            if !(16..=256).contains(length) {
                return Err(Error::Refused(format!(
                    "--length {length} must be from 16 to 256"
                )));
            }
            random_password(*length)?.into_bytes()
        }
    };
    let mut terminal = match source {
        Source::Generated { show: true, .. } => Some(tty().map_err(|e| {
            Error::Refused(format!(
                "--show needs a terminal (the password is never printed to a pipe or a log): {e}"
            ))
        })?),
        _ => None,
    };
    if exists(client, "secret", &full)? {
        return Err(Error::Refused(format!(
            "secret {full} already exists; secrets are never overwritten (create one under a new name, or rotate)"
        )));
    }
    store(client, &full, &value, &env.env)?;
    if let Some(t) = terminal.as_mut() {
        t.write_all(&value)
            .and_then(|()| t.write_all(b"\n"))
            .map_err(Error::io("cannot write the password to the terminal"))?;
    }
    Ok(full)
}

/// `secret init ENV db-password`: the first database password, as `-v1` (for the backend) and
/// the bootstrap copy (for Postgres's first start), from one generated value or FILE's.
/// Nothing to do when both exist; a half (one without the other) is refused with what to do.
pub fn init(
    client: &Client<'_>,
    env: &EnvDir,
    file: Option<&Path>,
    say: &mut dyn FnMut(&str),
) -> Result<(), Error> {
    let names = DbNames::of(&env.stack());
    let versions = versions(client, &names)?;
    let have = versions.last().map(|n| names.version(*n));
    let bootstrap = exists(client, "secret", &names.bootstrap)?;
    match (have, bootstrap) {
        (Some(v), true) => {
            say(&format!(
                "{}: {v} and {} exist; nothing to do",
                env.env, names.bootstrap
            ));
            return Ok(());
        }
        (Some(v), false) => {
            return Err(Error::Refused(format!(
                "{v} exists but {} does not: they are made together; remove the stray one only if no database was initialised with it",
                names.bootstrap
            )));
        }
        (None, true) => {
            return Err(Error::Refused(format!(
                "{} exists but no {}<N>: create {} with the password Postgres was initialised with (printf '%s' \"$PASSWORD\" | docker secret create {} -)",
                names.bootstrap,
                names.prefix,
                names.version(1),
                names.version(1)
            )));
        }
        (None, false) => {}
    }
    let value = match file {
        Some(path) => file_value(path)?,
        None => random_password(DEFAULT_LENGTH)?.into_bytes(),
    };
    let first = names.version(1);
    store(client, &first, &value, &env.env)?;
    say(&format!("created secret {first}"));
    if let Err(e) = store(client, &names.bootstrap, &value, &env.env) {
        // Never half: the pair is made together or not at all.
        let _ = client.run(&Call::write(["secret", "rm", first.as_str()]));
        return Err(e);
    }
    say(&format!("created secret {}", names.bootstrap));
    Ok(())
}

/// The existing N of `<prefix>N`, ascending.
fn versions(client: &Client<'_>, names: &DbNames) -> Result<Vec<u32>, Error> {
    let lines = client.lines(&Call::read([
        "secret",
        "ls",
        "--filter",
        &format!("name={}", names.prefix),
        "--format",
        "{{.Name}}",
    ]))?;
    let mut v: Vec<u32> = lines.iter().filter_map(|l| names.number(l)).collect();
    v.sort_unstable();
    v.dedup();
    Ok(v)
}

/// The stack's services as the Engine API describes them.
fn stack_services(client: &Client<'_>, stack: &str) -> Result<Vec<Service>, Error> {
    let ids = client.lines(&Call::read([
        "service",
        "ls",
        "--filter",
        &format!("label=com.docker.stack.namespace={stack}"),
        "-q",
    ]))?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut args = vec!["service".to_owned(), "inspect".to_owned()];
    args.extend(ids);
    let text = client.run(&Call::read(args))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::Refused(format!("cannot read docker service inspect: {e}")))
}

/// `secret list ENV`: the environment's secrets (never values), when made, who mounts them.
pub fn list(client: &Client<'_>, env: &EnvDir) -> Result<String, Error> {
    let stack = env.stack();
    let lines = client.lines(&Call::read([
        "secret",
        "ls",
        "--filter",
        &format!("name={stack}-"),
        "--format",
        "{{.Name}}\t{{.CreatedAt}}",
    ]))?;
    let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for s in stack_services(client, &stack)? {
        let name = service_name(&s);
        for m in mounts(&s) {
            users.entry(m.secret).or_default().push(
                name.strip_prefix(&format!("{stack}_"))
                    .unwrap_or(&name)
                    .to_owned(),
            );
        }
    }
    Ok(render_list(&lines, &users))
}

fn render_list(lines: &[String], users: &BTreeMap<String, Vec<String>>) -> String {
    let mut rows: Vec<(String, String, String)> = lines
        .iter()
        .map(|l| {
            let (name, created) = l.split_once('\t').unwrap_or((l, ""));
            let used = users
                .get(name)
                .map(|u| u.join(", "))
                .unwrap_or_else(|| "-".to_owned());
            (name.to_owned(), created.to_owned(), used)
        })
        .collect();
    rows.sort();
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(4);
    let cwidth = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max(7);
    let mut out = format!("{:width$}  {:cwidth$}  MOUNTED BY\n", "NAME", "CREATED");
    for (name, created, used) in rows {
        let _ = writeln!(out, "{name:width$}  {created:cwidth$}  {used}");
    }
    out
}

/// One secret mount of a service or task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub secret: String,
    pub target: String,
    pub uid: String,
    pub gid: String,
    pub mode: u32,
}

fn service_name(s: &Service) -> String {
    s.spec
        .as_ref()
        .and_then(|s| s.name.clone())
        .unwrap_or_default()
}

fn mounts_of(container: Option<&bollard::models::TaskSpecContainerSpec>) -> Vec<Mount> {
    container
        .and_then(|c| c.secrets.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|s| {
            let file = s.file.as_ref()?;
            Some(Mount {
                secret: s.secret_name.clone()?,
                target: file.name.clone()?,
                uid: file.uid.clone().unwrap_or_else(|| "0".into()),
                gid: file.gid.clone().unwrap_or_else(|| "0".into()),
                mode: file.mode.unwrap_or(0o444),
            })
        })
        .collect()
}

fn mounts(s: &Service) -> Vec<Mount> {
    mounts_of(
        s.spec
            .as_ref()
            .and_then(|s| s.task_template.as_ref())
            .and_then(|t| t.container_spec.as_ref()),
    )
}

fn update_state(s: &Service) -> Option<String> {
    s.update_status
        .as_ref()
        .and_then(|u| u.state)
        .map(|st| st.to_string())
}

/// A service that mounts a database password version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub service: String,
    pub mount: Mount,
    /// Swarm's update state (`updating`, `completed`, `rollback_completed`, ...), if any.
    pub update_state: Option<String>,
}

/// What a rotation will do, decided before anything changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub current: String,
    pub next: String,
    pub users: Vec<User>,
    /// Versions no service mounts: tried as logins (a broken earlier rotation may have set the
    /// database to one) and removed once the rotation succeeded.
    pub unused: Vec<String>,
}

/// Update states in which a service is still moving: rotating then would race Swarm.
const MOVING: &[&str] = &["updating", "paused", "rollback_started", "rollback_paused"];

/// Plans a rotation from the stack's services and the existing versions.
pub fn plan(
    names: &DbNames,
    env: &str,
    services: &[Service],
    versions: &[u32],
) -> Result<Plan, String> {
    let users: Vec<User> = services
        .iter()
        .flat_map(|s| {
            mounts(s)
                .into_iter()
                .filter(|m| names.number(&m.secret).is_some())
                .map(|mount| User {
                    service: service_name(s),
                    mount,
                    update_state: update_state(s),
                })
        })
        .collect();
    let Some(first) = users.first() else {
        return Err(format!(
            "no service of the {env} stack mounts a {}<N>: deploy {env} first",
            names.prefix
        ));
    };
    let current = first.mount.secret.clone();
    if let Some(other) = users.iter().find(|u| u.mount.secret != current) {
        return Err(format!(
            "{} mounts {current} but {} mounts {}: deploy {env} so they agree, then rotate",
            first.service, other.service, other.mount.secret
        ));
    }
    if let Some(moving) = users.iter().find(|u| {
        u.update_state
            .as_deref()
            .is_some_and(|s| MOVING.contains(&s))
    }) {
        return Err(format!(
            "{} is still moving (update state {}): wait until `docker service ps {}` settles, then rotate",
            moving.service,
            moving.update_state.as_deref().unwrap_or_default(),
            moving.service
        ));
    }
    let current_n = names.number(&current).unwrap_or(0);
    let next_n = versions.iter().copied().max().unwrap_or(0).max(current_n) + 1;
    Ok(Plan {
        next: names.version(next_n),
        unused: versions
            .iter()
            .filter(|n| **n != current_n)
            .map(|n| names.version(*n))
            .collect(),
        current,
        users,
    })
}

/// What one service and its running tasks mount after the rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub service: String,
    /// The secret its spec mounts at the password's target.
    pub spec: Option<String>,
    /// One entry per task meant to run: the secret it mounts, `None` while it is not running.
    pub tasks: Vec<Option<String>>,
}

/// Where a rotation's services ended up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Every service and running task mounts the new version.
    Moved,
    /// Every service and running task mounts the old version (Swarm rolled back, or the
    /// update never started).
    Stayed,
    /// Anything else: what differs.
    Mixed(String),
}

/// Decides from what runs, not from how the rollout was reported.
pub fn settle(observed: &[Observed], old: &str, new: &str) -> Settled {
    let all_on = |name: &str| {
        observed.iter().all(|o| {
            o.spec.as_deref() == Some(name)
                && !o.tasks.is_empty()
                && o.tasks.iter().all(|t| t.as_deref() == Some(name))
        })
    };
    if all_on(new) {
        return Settled::Moved;
    }
    if all_on(old) {
        return Settled::Stayed;
    }
    let parts: Vec<String> = observed
        .iter()
        .map(|o| {
            let count = |name: &str| {
                o.tasks
                    .iter()
                    .filter(|t| t.as_deref() == Some(name))
                    .count()
            };
            let starting = o.tasks.iter().filter(|t| t.is_none()).count();
            format!(
                "{} (spec {}; running tasks: {} on {new}, {} on {old}{})",
                o.service,
                o.spec.as_deref().unwrap_or("no password mount"),
                count(new),
                count(old),
                if starting > 0 {
                    format!(", {starting} not running")
                } else {
                    String::new()
                }
            )
        })
        .collect();
    Settled::Mixed(parts.join("; "))
}

/// The shell script of the password helper (sh in Postgres's image): logs in with the first
/// secret of `$AUTH` (names under /run/secrets) the database accepts, turns statement logging
/// off for its session (the password is in one statement; psql reads it from the secret file,
/// so it is in no argument or environment), ends the sessions of earlier password helpers (a
/// helper killed while its `ALTER ROLE` waited for a lock leaves its session waiting in the
/// server, which would otherwise still set its password later), sets the connected role's
/// password to the content of /run/secrets/new, and proves it by logging in with it.
const ALTER_SCRIPT: &str = r#"set -eu
for f in $AUTH; do
  if PGPASSWORD="$(cat "/run/secrets/$f")" psql -Atqc "SELECT 1" >/dev/null 2>&1; then
    PGPASSWORD="$(cat "/run/secrets/$f")" psql -v ON_ERROR_STOP=1 -q <<"SQL"
SET log_statement = none;
SET log_min_error_statement = panic;
SET log_min_duration_statement = -1;
SELECT count(pg_terminate_backend(pid)) AS stale FROM pg_stat_activity
  WHERE application_name = 'stackship-password-helper' AND pid <> pg_backend_pid() \gset
\set newpw `cat /run/secrets/new`
ALTER ROLE :"USER" PASSWORD :'newpw';
SQL
    PGPASSWORD="$(cat /run/secrets/new)" psql -Atqc "SELECT 1" >/dev/null
    echo "the database accepted $f; its password is now that of $NEW"
    exit 0
  fi
done
echo "the database accepts none of: $AUTH" >&2
exit 1
"#;

/// What the password helper needs from the running stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Database {
    pub image: String,
    pub user: String,
    pub network: String,
}

/// The helper that sets the role's password to `new`, logging in with the first of `auth`.
pub fn alter_spec(db: &Database, name: &str, new: &str, auth: &[String]) -> Spec {
    let mut secrets = vec![SecretMount {
        source: new.to_owned(),
        target: "new".to_owned(),
    }];
    secrets.extend(auth.iter().map(|a| SecretMount {
        source: a.clone(),
        target: a.clone(),
    }));
    Spec {
        name: name.to_owned(),
        what: "secret".to_owned(),
        image: db.image.clone(),
        entrypoint: Some("sh".to_owned()),
        args: vec!["-c".to_owned(), ALTER_SCRIPT.to_owned()],
        secrets,
        env: vec![
            ("PGHOST".into(), "postgres".into()),
            ("PGUSER".into(), db.user.clone()),
            // The maintenance database: ALTER ROLE is cluster-wide, and this works while the
            // application's database refuses connections.
            ("PGDATABASE".into(), "postgres".into()),
            ("AUTH".into(), auth.join(" ")),
            ("NEW".into(), new.to_owned()),
            ("PGAPPNAME".into(), "stackship-password-helper".into()),
        ],
        networks: vec![db.network.clone()],
        ..Spec::default()
    }
}

/// How long removing a secret is retried while old tasks that mount it still stop.
const SECRET_RM_LIMIT: Duration = Duration::from_secs(60);

/// How often putting the old password back is tried.
pub const REPAIR_ATTEMPTS: u32 = 3;

/// How long a password helper may take.
pub const HELPER_LIMIT: Duration = Duration::from_secs(120);

/// What a rotation needs beyond the Docker client.
pub struct Rotation<'a> {
    pub env: &'a EnvDir,
    pub owner: String,
    pub lock_wait: Duration,
    pub stop: &'a dyn Fn() -> bool,
    /// How often helper tasks and services are polled.
    pub poll: Duration,
}

/// Sets the role's password to `new` through a helper; its lines go to `say`.
fn alter(
    client: &Client<'_>,
    db: &Database,
    name: &str,
    new: &str,
    auth: &[String],
    r: &Rotation<'_>,
    say: &mut dyn FnMut(&str),
) -> Result<(), String> {
    let wait = Wait {
        limit: HELPER_LIMIT,
        poll: r.poll,
        stop: r.stop,
    };
    let out = helper::run(client, &alter_spec(db, name, new, auth), &wait, say)
        .map_err(|e| e.to_string())?;
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        say(line.trim());
    }
    Ok(())
}

/// The `--secret-add` value that mounts `secret` exactly as `m` mounted the old one.
pub fn secret_add(m: &Mount, secret: &str) -> String {
    format!(
        "source={secret},target={},uid={},gid={},mode={:04o}",
        m.target, m.uid, m.gid, m.mode
    )
}

/// What each user service and its tasks mount at the password's target now.
fn observe(client: &Client<'_>, users: &[User]) -> Result<Vec<Observed>, Error> {
    let mut out = Vec::new();
    for u in users {
        let text = client.run(&Call::read(["service", "inspect", u.service.as_str()]))?;
        let svc: Vec<Service> = serde_json::from_str(&text)
            .map_err(|e| Error::Refused(format!("cannot read {}: {e}", u.service)))?;
        let spec = svc
            .first()
            .and_then(|s| mounts(s).into_iter().find(|m| m.target == u.mount.target))
            .map(|m| m.secret);
        let ids = client.lines(&Call::read([
            "service",
            "ps",
            u.service.as_str(),
            "--filter",
            "desired-state=running",
            "-q",
            "--no-trunc",
        ]))?;
        let mut tasks = Vec::new();
        if !ids.is_empty() {
            let mut args = vec!["inspect".to_owned()];
            args.extend(ids);
            let text = client.run(&Call::read(args))?;
            let list: Vec<Task> = serde_json::from_str(&text).map_err(|e| {
                Error::Refused(format!("cannot read the tasks of {}: {e}", u.service))
            })?;
            for t in list {
                let running = t
                    .status
                    .as_ref()
                    .and_then(|s| s.state)
                    .is_some_and(|s| s == bollard::models::TaskState::RUNNING);
                let secret = mounts_of(t.spec.as_ref().and_then(|s| s.container_spec.as_ref()))
                    .into_iter()
                    .find(|m| m.target == u.mount.target)
                    .map(|m| m.secret);
                tasks.push(if running { secret } else { None });
            }
        }
        out.push(Observed {
            service: u.service.clone(),
            spec,
            tasks,
        });
    }
    Ok(out)
}

/// Removes `names`, retrying for up to a minute while old tasks still stop; returns a line for
/// each one left.
fn remove_secrets(
    client: &Client<'_>,
    names: &[String],
    poll: Duration,
    limit: Duration,
) -> Vec<String> {
    let mut left = Vec::new();
    for name in names {
        let started = std::time::Instant::now();
        loop {
            match client.run(&Call::write(["secret", "rm", name.as_str()])) {
                Ok(_) => break,
                Err(DockerError::Failed { stderr, .. }) if stderr.contains("No such secret") => {
                    break;
                }
                Err(e) if started.elapsed() >= limit => {
                    left.push(format!("{name} was left in place: {e}"));
                    break;
                }
                Err(_) => std::thread::sleep(poll.max(Duration::from_millis(1)) * 4),
            }
        }
    }
    left
}

/// One progress line.
macro_rules! say {
    ($out:expr, $msg:expr) => {
        progress_line($out, $msg)
    };
}

/// `secret rotate ENV db-password`; returns the outcome and a summary for stdout.
pub fn rotate(
    client: &Client<'_>,
    rollout: &dyn Rollout,
    r: &Rotation<'_>,
    progress: &mut dyn std::io::Write,
) -> Result<(Outcome, String), Error> {
    let env = &r.env.env;
    let stack = r.env.stack();
    let names = DbNames::of(&stack);
    let _lock = crate::lock::DeployLock::acquire(
        &r.env.dir,
        &format!("{env} deploy"),
        &r.owner,
        r.lock_wait,
        &mut |m: &str| progress_line(progress, m),
    )?;
    let services = stack_services(client, &stack)?;
    let versions = versions(client, &names)?;
    let plan = plan(&names, env, &services, &versions).map_err(Error::Refused)?;
    let (image, user, _) = crate::commands::db::postgres_settings(client, &stack)?;
    let db = Database {
        image,
        user,
        network: format!("{stack}_data"),
    };
    if !exists(client, "secret", &names.bootstrap)? {
        return Err(Error::Refused(format!(
            "{} is missing (stackship secret init {env} db-password)",
            names.bootstrap
        )));
    }
    let (current, new) = (plan.current.as_str(), plan.next.as_str());
    say!(
        progress,
        &format!(
            "rotating {env}'s database password: {current} -> {new} ({})",
            plan.users
                .iter()
                .map(|u| u.service.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    );
    store(
        client,
        new,
        random_password(DEFAULT_LENGTH)?.as_bytes(),
        env,
    )?;
    let pid = std::process::id();
    let mut auth = vec![current.to_owned(), names.bootstrap.clone()];
    auth.extend(plan.unused.iter().cloned());
    say!(
        progress,
        &format!("ALTER ROLE {}: the password of {new}", db.user)
    );
    if let Err(why) = alter(
        client,
        &db,
        &format!("{stack}-ops-secret-{pid}"),
        new,
        &auth,
        r,
        &mut |m: &str| progress_line(progress, m),
    ) {
        say!(
            progress,
            &format!("the password was not changed as planned: {why}")
        );
        return Ok(put_back(
            client,
            &db,
            &plan,
            r,
            &mut |m: &str| progress_line(progress, m),
            &why,
        ));
    }

    let snapshot = rollout
        .snapshot(&stack)
        .map_err(|m| Error::Refused(format!("cannot take a snapshot of {stack}: {m}")));
    let snapshot = match snapshot {
        Ok(s) => s,
        Err(e) => {
            return Ok(put_back(
                client,
                &db,
                &plan,
                r,
                &mut |m: &str| progress_line(progress, m),
                &e.to_string(),
            ));
        }
    };
    let mut update_error = None;
    for u in &plan.users {
        say!(progress, &format!("{}: {current} -> {new}", u.service));
        if let Err(e) = client.run(&Call::write([
            "service",
            "update",
            "--detach",
            "--secret-rm",
            current,
            "--secret-add",
            &secret_add(&u.mount, new),
            u.service.as_str(),
        ])) {
            say!(
                progress,
                &format!("docker service update {} failed: {e}", u.service)
            );
            update_error = Some(e.to_string());
            break;
        }
    }
    let mut verdict = String::new();
    if update_error.is_none() {
        say!(progress, &format!("following the rollout of {stack}"));
        let options = rollout_watcher::watch::Options {
            timeout: None,
            poll: Duration::from_secs(1),
            rules: rollout_watcher::assess::Rules {
                max_task_failures: crate::settings::Defaults::MAX_TASK_FAILURES,
                confirm_after: Duration::from_secs(1),
                ..rollout_watcher::assess::Rules::default()
            },
            log_lines: 20,
        };
        match rollout.watch(
            &snapshot,
            &options,
            &r.env.last_rollout(),
            progress,
            &mut crate::commands::deploy::no_gates,
        ) {
            Ok(w) => verdict = w.summary,
            Err(m) => say!(progress, &format!("could not follow the rollout: {m}")),
        }
    }
    let observed = observe(client, &plan.users)?;
    match settle(&observed, current, new) {
        Settled::Moved => {
            say!(progress, &format!("every task mounts {new}"));
            let mut old: Vec<String> = vec![current.to_owned()];
            old.extend(plan.unused.iter().cloned());
            say!(progress, &format!("removing {}", old.join(", ")));
            for line in remove_secrets(client, &old, r.poll, SECRET_RM_LIMIT) {
                say!(progress, &format!("WARNING: {line}"));
            }
            let last = rollout_watcher::history::read_all(&r.env.history())
                .ok()
                .and_then(|mut all| all.pop());
            let provenance = Provenance {
                commit: last.as_ref().and_then(|l| l.commit.clone()),
                pipeline: last.as_ref().and_then(|l| l.pipeline.clone()),
                ancestors: last.map(|l| l.ancestors).unwrap_or_default(),
                note: Some(format!("rotated {DB_PASSWORD}: {current} -> {new}")),
                started: None,
            };
            match rollout.record(&stack, &r.env.history(), &provenance) {
                Ok(Recorded::Written(p)) => say!(progress, &format!("recorded in {}", p.display())),
                Ok(Recorded::Unchanged(id)) => say!(progress, &format!("same as record {id}")),
                Err(m) => say!(
                    progress,
                    &format!("WARNING: the rotation cannot be recorded: {m}")
                ),
            }
            Ok((
                Outcome::Done,
                format!("{env}: the database password is {new} (was {current})\n{verdict}"),
            ))
        }
        Settled::Stayed => {
            let why = update_error.unwrap_or_else(|| {
                format!("the rollout onto {new} did not complete (Swarm rolled it back)")
            });
            say!(progress, &format!("rotation failed: {why}"));
            let (outcome, summary) = put_back(
                client,
                &db,
                &plan,
                r,
                &mut |m: &str| progress_line(progress, m),
                &why,
            );
            Ok((outcome, format!("{summary}{verdict}")))
        }
        Settled::Mixed(what) => {
            let steps = format!(
                "rotation of {env}'s database password UNFINISHED: {what}. The database has the password of {new}; both {current} and {new} are kept. Once `docker service ps` shows the services settled, run `stackship secret rotate {env} db-password` again: it logs in with whichever version the database accepts and moves every service onto a fresh one.\n"
            );
            say!(progress, steps.trim_end());
            Ok((Outcome::Unknown, format!("{steps}{verdict}")))
        }
    }
}

/// After a failure with the services still on `current`: the database back on `current`'s
/// password and the new secret removed — or, when that fails, the new secret kept (it may hold
/// the database's password) and the way out printed.
fn put_back(
    client: &Client<'_>,
    db: &Database,
    plan: &Plan,
    r: &Rotation<'_>,
    say: &mut dyn FnMut(&str),
    why: &str,
) -> (Outcome, String) {
    let env = &r.env.env;
    let (current, new) = (plan.current.as_str(), plan.next.as_str());
    let stack = r.env.stack();
    say(&format!(
        "putting the password of {current} back in the database"
    ));
    // A stop asked for earlier must not stop the repair itself.
    let repair = Rotation {
        env: r.env,
        owner: r.owner.clone(),
        lock_wait: r.lock_wait,
        stop: &|| false,
        poll: r.poll,
    };
    // Tried again after a failure: a concurrent change of the role (a killed helper's session
    // that still ran) makes PostgreSQL refuse the first try ("tuple concurrently updated").
    let mut back = Err(String::new());
    for attempt in 1..=REPAIR_ATTEMPTS {
        back = alter(
            client,
            db,
            &format!(
                "{stack}-ops-secret-restore-{}-{attempt}",
                std::process::id()
            ),
            current,
            &[new.to_owned(), current.to_owned()],
            &repair,
            say,
        );
        match &back {
            Ok(()) => break,
            Err(e) if attempt < REPAIR_ATTEMPTS => {
                say(&format!(
                    "attempt {attempt} to put the password back failed ({e}); trying again"
                ));
                std::thread::sleep(r.poll * 4);
            }
            Err(_) => {}
        }
    }
    match back {
        Ok(()) => {
            let left = remove_secrets(client, &[new.to_owned()], r.poll, SECRET_RM_LIMIT);
            let mut summary = format!(
                "rotation failed: {why}; the database and the services are back on {current}\n"
            );
            for l in left {
                let _ = writeln!(summary, "WARNING: {l}");
            }
            say(summary.trim_end());
            (Outcome::RolledBack, summary)
        }
        Err(e) => {
            let summary = format!(
                "ROTATION FAILED AND THE OLD PASSWORD COULD NOT BE PUT BACK ({e}): the database may have the password of {new} while the services mount {current}. {new} is kept. Once the database answers, run `stackship secret rotate {env} db-password` again: it logs in with whichever of {current}, the bootstrap password and {new} the database accepts, and moves the services onto a fresh version.\n"
            );
            say(summary.trim_end());
            (Outcome::Unknown, summary)
        }
    }
}

/// `stackship secret ...`
#[derive(Debug, clap::Subcommand)]
pub enum SecretCommand {
    /// A secret <stack>-NAME holding a generated password (never on disk or in a log) or a
    /// file's content.
    Create {
        env: String,
        name: String,
        /// Length of the generated password (16 to 256).
        #[arg(long, default_value_t = DEFAULT_LENGTH, conflicts_with = "file")]
        length: usize,
        /// Print the generated password once on the terminal (refused without one).
        #[arg(long, conflicts_with = "file")]
        show: bool,
        /// The secret's content (a certificate, a key) instead of a generated password.
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// The first database password: <stack>-db-password-v1 for the backend and
    /// <stack>-db-bootstrap-password for Postgres's first start, from one value. Does nothing
    /// when both exist.
    Init {
        env: String,
        /// Only db-password.
        name: String,
        /// The password's content instead of a generated one.
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// A new database password: ALTER ROLE, the services that mount the current version moved
    /// onto the new one (only the secret changes; watched like a deploy, under the deploy lock),
    /// then the old version removed. A failed rollout puts the old password back.
    Rotate {
        env: String,
        /// Only db-password.
        name: String,
        /// How long to wait for a deploy that holds the lock, in seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = crate::settings::Defaults::LOCK_WAIT.as_secs())]
        lock_wait: u64,
    },
    /// The environment's secrets: names, creation times and the services that mount them
    /// (never values).
    List { env: String },
}

fn only_db_password(name: &str, verb: &str) -> Result<(), Error> {
    if name == DB_PASSWORD {
        Ok(())
    } else {
        Err(Error::Refused(format!(
            "{verb}: only '{DB_PASSWORD}' can be {verb}d (got '{name}'); make other secrets with `stackship secret create`"
        )))
    }
}

/// Runs a `secret` command; results go to `out`, progress to `progress`.
pub fn run(
    client: &Client<'_>,
    rollout: &dyn Rollout,
    env_of: &dyn Fn(&str) -> Result<EnvDir, Error>,
    owner: String,
    command: SecretCommand,
    progress: &mut dyn std::io::Write,
) -> Result<(Outcome, String), Error> {
    match command {
        SecretCommand::Create {
            env,
            name,
            length,
            show,
            file,
        } => {
            let dir = env_of(&env)?;
            let source = match file {
                Some(f) => Source::File(f),
                None => Source::Generated { length, show },
            };
            let full = create(client, &dir, &name, &source, &mut || {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open("/dev/tty")
                    .map(|f| Box::new(f) as Box<dyn std::io::Write>)
            })?;
            progress_line(progress, &format!("created secret {full}"));
            Ok((Outcome::Done, format!("{full}\n")))
        }
        SecretCommand::Init { env, name, file } => {
            only_db_password(&name, "initialise")?;
            let dir = env_of(&env)?;
            init(client, &dir, file.as_deref(), &mut |m: &str| {
                progress_line(progress, m)
            })?;
            Ok((Outcome::Done, String::new()))
        }
        SecretCommand::Rotate {
            env,
            name,
            lock_wait,
        } => {
            only_db_password(&name, "rotate")?;
            let dir = env_of(&env)?;
            crate::interrupt::install().map_err(Error::io("cannot install the signal handlers"))?;
            let r = Rotation {
                env: &dir,
                owner,
                lock_wait: Duration::from_secs(lock_wait),
                stop: &crate::interrupt::requested,
                poll: Duration::from_millis(500),
            };
            rotate(client, rollout, &r, progress)
        }
        SecretCommand::List { env } => {
            let dir = env_of(&env)?;
            Ok((Outcome::Done, list(client, &dir)?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::deploy::Watched;
    use crate::docker::fake::FakeEngine;
    use std::cell::RefCell;

    const V3: &str = "stackship-prod-db-password-v3";
    const V4: &str = "stackship-prod-db-password-v4";
    const BOOT: &str = "stackship-prod-db-bootstrap-password";

    fn mount_json(secret: &str) -> String {
        format!(
            r#"{{"File":{{"Name":"db_password","UID":"0","GID":"0","Mode":292}},"SecretID":"x","SecretName":"{secret}"}}"#
        )
    }

    fn service_json(name: &str, secret: Option<&str>, state: &str) -> String {
        let secrets = secret.map(mount_json).unwrap_or_default();
        format!(
            r#"{{"ID":"id-{name}","Spec":{{"Name":"stackship-prod_{name}","TaskTemplate":{{"ContainerSpec":{{"Image":"r/{name}:t@sha256:1","Env":["POSTGRES_USER=backend"],"Secrets":[{secrets}]}}}}}},"UpdateStatus":{{"State":"{state}"}}}}"#
        )
    }

    fn services(secret: &str, state: &str) -> Vec<Service> {
        serde_json::from_str(&format!(
            "[{},{}]",
            service_json("backend", Some(secret), state),
            service_json("postgres", None, "completed")
        ))
        .unwrap()
    }

    fn task_json(secret: &str, state: &str) -> String {
        format!(
            r#"{{"ID":"t","Spec":{{"ContainerSpec":{{"Secrets":[{}]}}}},"Status":{{"State":"{state}"}}}}"#,
            mount_json(secret)
        )
    }

    fn names() -> DbNames {
        DbNames::of("stackship-prod")
    }

    #[test]
    fn a_rotation_is_planned_from_what_the_services_mount() {
        let p = plan(&names(), "prod", &services(V3, "completed"), &[2, 3, 5]).unwrap();
        assert_eq!(p.current, V3);
        assert_eq!(p.next, "stackship-prod-db-password-v6");
        assert_eq!(
            p.unused,
            vec![
                "stackship-prod-db-password-v2".to_owned(),
                "stackship-prod-db-password-v5".to_owned()
            ]
        );
        assert_eq!(p.users.len(), 1);
        assert_eq!(p.users[0].service, "stackship-prod_backend");
        assert_eq!(p.users[0].mount.target, "db_password");
        // The mounted version counts even when `secret ls` missed it.
        let p = plan(&names(), "prod", &services(V3, "completed"), &[]).unwrap();
        assert_eq!(p.next, V4);
        // A rolled-back or finished update is settled; a moving one is not.
        assert!(plan(&names(), "prod", &services(V3, "rollback_completed"), &[3]).is_ok());
        for moving in MOVING {
            let e = plan(&names(), "prod", &services(V3, moving), &[3]).unwrap_err();
            assert!(
                e.contains(&format!("still moving (update state {moving})")),
                "{e}"
            );
        }
        let none: Vec<Service> = serde_json::from_str(&format!(
            "[{}]",
            service_json("postgres", None, "completed")
        ))
        .unwrap();
        let e = plan(&names(), "prod", &none, &[3]).unwrap_err();
        assert_eq!(
            e,
            "no service of the prod stack mounts a stackship-prod-db-password-v<N>: deploy prod first"
        );
        let split: Vec<Service> = serde_json::from_str(&format!(
            "[{},{}]",
            service_json("backend", Some(V3), "completed"),
            service_json("worker", Some(V4), "completed")
        ))
        .unwrap();
        let e = plan(&names(), "prod", &split, &[3, 4]).unwrap_err();
        assert!(
            e.contains("stackship-prod_backend mounts stackship-prod-db-password-v3 but stackship-prod_worker mounts stackship-prod-db-password-v4"),
            "{e}"
        );
    }

    fn obs(spec: Option<&str>, tasks: &[Option<&str>]) -> Observed {
        Observed {
            service: "stackship-prod_backend".into(),
            spec: spec.map(str::to_owned),
            tasks: tasks.iter().map(|t| t.map(str::to_owned)).collect(),
        }
    }

    #[test]
    fn what_runs_decides_how_a_rotation_ended() {
        assert_eq!(
            settle(&[obs(Some(V4), &[Some(V4), Some(V4)])], V3, V4),
            Settled::Moved
        );
        assert_eq!(
            settle(&[obs(Some(V3), &[Some(V3)])], V3, V4),
            Settled::Stayed
        );
        // Spec moved, a task still on the old one; a task not running; no task at all.
        let Settled::Mixed(m) = settle(&[obs(Some(V4), &[Some(V4), Some(V4), Some(V3)])], V3, V4)
        else {
            panic!("mixed expected");
        };
        assert_eq!(
            m,
            format!("stackship-prod_backend (spec {V4}; running tasks: 2 on {V4}, 1 on {V3})")
        );
        let Settled::Mixed(m) = settle(&[obs(Some(V3), &[Some(V3), None])], V3, V4) else {
            panic!("mixed expected");
        };
        assert!(m.ends_with(", 1 not running)"), "{m}");
        assert!(matches!(
            settle(&[obs(Some(V4), &[])], V3, V4),
            Settled::Mixed(_)
        ));
        assert!(matches!(
            settle(&[obs(None, &[Some(V4)])], V3, V4),
            Settled::Mixed(_)
        ));
        // Two services: both must agree.
        assert!(matches!(
            settle(
                &[obs(Some(V4), &[Some(V4)]), obs(Some(V3), &[Some(V3)])],
                V3,
                V4
            ),
            Settled::Mixed(_)
        ));
    }

    #[test]
    fn names_passwords_and_mounts() {
        for ok in ["a", "smtp-password", "A.b_c-9", &"x".repeat(64)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", ".a", "a b", "a/b", &"x".repeat(65)] {
            let e = check_name(bad).unwrap_err().to_string();
            assert!(e.contains("is not valid"), "{bad}: {e}");
        }
        assert!(managed_by_rotation("db-password-v12"));
        assert!(managed_by_rotation("db-bootstrap-password"));
        assert!(!managed_by_rotation("db-password-v"));
        assert!(!managed_by_rotation("db-password-vx"));
        assert!(!managed_by_rotation("db-password"));
        assert_eq!(password_of(&[0, 63, 64, 255, 26, 52]), "A_A_a0");
        let p = random_password(40).unwrap();
        assert_eq!(p.len(), 40);
        assert!(p.bytes().all(|b| ALPHABET.contains(&b)));
        assert_ne!(p, random_password(40).unwrap());
        let m = Mount {
            secret: V3.into(),
            target: "db_password".into(),
            uid: "10001".into(),
            gid: "10001".into(),
            mode: 0o400,
        };
        assert_eq!(
            secret_add(&m, V4),
            format!("source={V4},target=db_password,uid=10001,gid=10001,mode=0400")
        );
        assert_eq!(names().number(V3), Some(3));
        assert_eq!(names().number(BOOT), None);
    }

    fn env_dir() -> (tempfile::TempDir, EnvDir) {
        let root = tempfile::tempdir().unwrap();
        let dir = EnvDir::new(root.path(), "prod");
        std::fs::create_dir_all(&dir.dir).unwrap();
        (root, dir)
    }

    fn no_tty() -> std::io::Result<Box<dyn std::io::Write>> {
        Err(std::io::Error::other("No such device or address"))
    }

    #[test]
    fn create_refuses_bad_requests_before_anything_is_made() {
        let (_root, dir) = env_dir();
        let fake = FakeEngine::new();
        fake.answer(&["secret", "inspect", "stackship-prod-taken"], "[{}]");
        fake.fail(&["secret", "inspect"], "Error: No such secret: x");
        let client = Client::new(&fake);
        let generated = |show| Source::Generated { length: 32, show };
        let e = create(
            &client,
            &dir,
            "db-password-v9",
            &generated(false),
            &mut no_tty,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("managed by `stackship secret init|rotate prod db-password`")
        );
        let e = create(&client, &dir, "taken", &generated(false), &mut no_tty).unwrap_err();
        assert!(
            e.to_string()
                .contains("stackship-prod-taken already exists"),
            "{e}"
        );
        let e = create(&client, &dir, "new", &generated(true), &mut no_tty).unwrap_err();
        assert!(e.to_string().starts_with("--show needs a terminal"), "{e}");
        let e = create(
            &client,
            &dir,
            "new",
            &Source::Generated {
                length: 15,
                show: false,
            },
            &mut no_tty,
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "--length 15 must be from 16 to 256");
        let empty = dir.dir.join("empty");
        std::fs::write(&empty, "").unwrap();
        let e = create(&client, &dir, "new", &Source::File(empty), &mut no_tty).unwrap_err();
        assert!(e.to_string().contains("is empty"), "{e}");
        let e = create(
            &client,
            &dir,
            "new",
            &Source::File(dir.dir.join("none")),
            &mut no_tty,
        )
        .unwrap_err();
        assert!(e.to_string().contains("cannot be read"), "{e}");
        assert!(create(&client, &dir, "a b", &generated(false), &mut no_tty).is_err());
        assert!(fake.writes().is_empty(), "{:?}", fake.writes());
    }

    #[test]
    fn create_sends_the_value_on_stdin_and_shows_it_on_the_terminal_only() {
        let (_root, dir) = env_dir();
        let fake = FakeEngine::new();
        fake.fail(&["secret", "inspect"], "Error: No such secret: x");
        fake.answer(&["secret", "create"], "id\n");
        let client = Client::new(&fake);
        let shown = std::rc::Rc::new(RefCell::new(Vec::new()));
        struct Tty(std::rc::Rc<RefCell<Vec<u8>>>);
        impl std::io::Write for Tty {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.borrow_mut().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let s2 = shown.clone();
        let full = create(
            &client,
            &dir,
            "smtp",
            &Source::Generated {
                length: 20,
                show: true,
            },
            &mut move || Ok(Box::new(Tty(s2.clone())) as Box<dyn std::io::Write>),
        )
        .unwrap();
        assert_eq!(full, "stackship-prod-smtp");
        let calls = fake.calls();
        let made = calls.last().unwrap();
        assert_eq!(
            made.command_line(),
            "docker secret create --label stackship.managed-by=stackship --label stackship.env=prod stackship-prod-smtp -"
        );
        let value = made.stdin.clone().unwrap();
        assert_eq!(value.len(), 20);
        assert_eq!(*shown.borrow(), [value.clone(), b"\n".to_vec()].concat());
        let file = dir.dir.join("key");
        std::fs::write(&file, "PEM").unwrap();
        create(&client, &dir, "key", &Source::File(file), &mut no_tty).unwrap();
        assert_eq!(
            fake.calls().last().unwrap().stdin.as_deref(),
            Some(&b"PEM"[..])
        );
    }

    #[test]
    fn init_makes_the_pair_together_or_not_at_all() {
        let (_root, dir) = env_dir();
        let quiet = &mut |_: &str| {};
        // Both exist: nothing to do.
        let fake = FakeEngine::new();
        fake.answer(&["secret", "ls"], &format!("{V3}\n"));
        fake.answer(&["secret", "inspect", BOOT], "[{}]");
        init(&Client::new(&fake), &dir, None, quiet).unwrap();
        assert!(fake.writes().is_empty());
        // Halves are refused, saying what to do.
        let fake = FakeEngine::new();
        fake.answer(&["secret", "ls"], &format!("{V3}\n"));
        fake.fail(&["secret", "inspect", BOOT], "Error: No such secret");
        let e = init(&Client::new(&fake), &dir, None, quiet).unwrap_err();
        assert!(e.to_string().contains("they are made together"), "{e}");
        let fake = FakeEngine::new();
        fake.answer(&["secret", "ls"], "");
        fake.answer(&["secret", "inspect", BOOT], "[{}]");
        let e = init(&Client::new(&fake), &dir, None, quiet).unwrap_err();
        assert!(e.to_string().contains("create stackship-prod-db-password-v1 with the password Postgres was initialised with"), "{e}");
        assert!(fake.writes().is_empty());
        // Neither: both from one value.
        let fake = FakeEngine::new();
        fake.answer(&["secret", "ls"], "");
        fake.fail(&["secret", "inspect", BOOT], "Error: No such secret");
        fake.answer(&["secret", "create"], "");
        init(&Client::new(&fake), &dir, None, quiet).unwrap();
        let calls = fake.calls();
        let made: Vec<&crate::docker::Call> =
            calls.iter().filter(|c| c.args[1] == "create").collect();
        assert_eq!(made.len(), 2);
        assert!(
            made[0]
                .command_line()
                .ends_with("stackship-prod-db-password-v1 -")
        );
        assert!(made[1].command_line().ends_with(&format!("{BOOT} -")));
        assert_eq!(made[0].stdin, made[1].stdin);
        assert_eq!(made[0].stdin.as_ref().unwrap().len(), DEFAULT_LENGTH);
        // The second failing removes the first.
        let fake = FakeEngine::new();
        fake.answer(&["secret", "ls"], "");
        fake.fail(&["secret", "inspect", BOOT], "Error: No such secret");
        fake.answer_once(&["secret", "create"], "");
        fake.fail(&["secret", "create"], "rpc error: name conflicts");
        fake.answer(&["secret", "rm"], "");
        assert!(init(&Client::new(&fake), &dir, None, quiet).is_err());
        assert_eq!(
            fake.writes().last().unwrap(),
            "docker secret rm stackship-prod-db-password-v1"
        );
    }

    #[test]
    fn list_asks_the_swarm_for_the_stacks_secrets_and_their_users() {
        let (_root, dir) = env_dir();
        let fake = FakeEngine::new();
        fake.answer(
            &["secret", "ls", "--filter", "name=stackship-prod-"],
            &format!(
                "{V3}\t2026-12-06 10:00:00 +0000 UTC\n{BOOT}\t2026-12-01 10:00:00 +0000 UTC\n"
            ),
        );
        fake.answer(&["service", "ls"], "id-backend\n");
        fake.answer(
            &["service", "inspect", "id-backend"],
            &format!("[{}]", service_json("backend", Some(V3), "completed")),
        );
        let text = list(&Client::new(&fake), &dir).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(text.lines().nth(2).unwrap().starts_with(V3), "{text}");
        assert!(
            text.lines().nth(2).unwrap().ends_with("  backend"),
            "{text}"
        );
        assert!(fake.writes().is_empty());
        // A stack without services: every secret unused.
        let fake = FakeEngine::new();
        fake.answer(&["secret", "ls"], &format!("{V3}\tnow\n"));
        fake.answer(&["service", "ls"], "");
        let text = list(&Client::new(&fake), &dir).unwrap();
        assert!(text.lines().nth(1).unwrap().ends_with("  -"), "{text}");
    }

    #[test]
    fn secrets_in_use_are_retried_then_named_and_gone_ones_are_fine() {
        let fake = FakeEngine::new();
        fake.fail(
            &["secret", "rm", V3],
            "Error response from daemon: secret is in use by service x",
        );
        fake.fail(&["secret", "rm", V4], "Error: No such secret: x");
        let client = Client::new(&fake);
        let left = remove_secrets(
            &client,
            &[V3.to_owned(), V4.to_owned()],
            Duration::from_millis(1),
            Duration::from_millis(20),
        );
        assert_eq!(left.len(), 1, "{left:?}");
        assert!(
            left[0].starts_with(&format!("{V3} was left in place: ")),
            "{left:?}"
        );
        assert!(left[0].contains("in use"), "{left:?}");
        let tries = |name: &str| fake.writes().iter().filter(|w| w.ends_with(name)).count();
        assert!(tries(V3) > 1, "an in-use secret is tried again");
        assert_eq!(tries(V4), 1, "a gone secret is not");
    }

    #[test]
    fn the_list_shows_who_mounts_each_secret() {
        let mut users = BTreeMap::new();
        users.insert(V3.to_owned(), vec!["backend".to_owned()]);
        let text = render_list(
            &[
                format!("{V3}\t2026-12-06 10:00:00 +0000 UTC"),
                format!("{BOOT}\t2026-12-01 10:00:00 +0000 UTC"),
            ],
            &users,
        );
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("NAME "), "{text}");
        assert!(lines[0].ends_with("MOUNTED BY"), "{text}");
        assert!(
            lines[1].starts_with(BOOT) && lines[1].ends_with("  -"),
            "{text}"
        );
        assert!(
            lines[2].starts_with(V3) && lines[2].ends_with("  backend"),
            "{text}"
        );
    }

    /// The rollout's steps, answering as told and keeping what was recorded.
    #[derive(Default)]
    struct FakeRollout {
        watched: RefCell<u32>,
        /// The rules of the last watch: task failures allowed, time a settled state is confirmed.
        rules: RefCell<Option<(u64, Duration)>>,
        recorded: RefCell<Vec<Provenance>>,
    }

    impl Rollout for FakeRollout {
        fn snapshot(&self, stack: &str) -> Result<rollout_watcher::watch::Snapshot, String> {
            Ok(rollout_watcher::watch::Snapshot {
                stack: stack.to_owned(),
                ..Default::default()
            })
        }
        fn watch(
            &self,
            _: &rollout_watcher::watch::Snapshot,
            options: &rollout_watcher::watch::Options,
            _: &Path,
            _: &mut dyn std::io::Write,
            _: &mut crate::commands::deploy::OnSample<'_>,
        ) -> Result<Watched, String> {
            *self.watched.borrow_mut() += 1;
            *self.rules.borrow_mut() =
                Some((options.rules.max_task_failures, options.rules.confirm_after));
            Ok(Watched {
                outcome: Outcome::Done,
                summary: "backend: ok\n".into(),
                report: "{}".into(),
            })
        }
        fn record(&self, _: &str, history: &Path, p: &Provenance) -> Result<Recorded, String> {
            self.recorded.borrow_mut().push(p.clone());
            Ok(Recorded::Written(history.join("x.json")))
        }
        fn prune(&self, _: &str, _: &Path, _: usize) -> Result<Vec<String>, String> {
            Ok(Vec::new())
        }
    }

    /// A swarm where prod's backend mounts v3; `after` is what its task mounts after the
    /// update; helpers end as `helpers` says, in order.
    fn swarm(after: &str, helpers: &[&str]) -> FakeEngine {
        swarm_with(after, after, helpers)
    }

    /// As [`swarm`], with the service's spec and its task mounting different versions.
    fn swarm_with(after: &str, task: &str, helpers: &[&str]) -> FakeEngine {
        let fake = FakeEngine::new();
        fake.answer(&["service", "ls"], "id-backend\nid-postgres\n");
        fake.answer(
            &["service", "inspect", "id-backend"],
            &format!(
                "[{},{}]",
                service_json("backend", Some(V3), "completed"),
                service_json("postgres", None, "completed")
            ),
        );
        fake.answer(
            &["service", "inspect", "stackship-prod_postgres"],
            &format!("[{}]", service_json("postgres", None, "completed")),
        );
        fake.answer(&["secret", "ls"], &format!("{V3}\n"));
        fake.answer(&["secret", "inspect", BOOT], "[{}]");
        fake.answer(&["secret", "create"], "");
        fake.answer(&["service", "create"], "");
        // The first state is the password helper's, the second its repair's.
        let pid = std::process::id();
        let names = [
            format!("stackship-prod-ops-secret-{pid}"),
            format!("stackship-prod-ops-secret-restore-{pid}-1"),
            format!("stackship-prod-ops-secret-restore-{pid}-2"),
            format!("stackship-prod-ops-secret-restore-{pid}-3"),
        ];
        for (h, name) in helpers.iter().zip(&names) {
            fake.answer(&["service", "ps", name.as_str()], h);
        }
        fake.answer(&["service", "logs"], "the database accepted it\n");
        fake.answer(&["service", "rm"], "");
        fake.answer(&["ps", "-aq"], "");
        fake.answer(&["service", "update"], "");
        fake.answer(
            &["service", "inspect", "stackship-prod_backend"],
            &format!("[{}]", service_json("backend", Some(after), "completed")),
        );
        fake.answer(&["service", "ps", "stackship-prod_backend"], "t1\n");
        fake.answer(
            &["inspect", "t1"],
            &format!("[{}]", task_json(task, "running")),
        );
        fake.answer(&["secret", "rm"], "");
        fake
    }

    fn rotation<'a>(dir: &'a EnvDir, stop: &'a dyn Fn() -> bool) -> Rotation<'a> {
        Rotation {
            env: dir,
            owner: "test".into(),
            lock_wait: Duration::from_millis(10),
            stop,
            poll: Duration::from_millis(1),
        }
    }

    fn writes_with(fake: &FakeEngine, start: &str) -> Vec<String> {
        fake.writes()
            .into_iter()
            .filter(|w| w.starts_with(start))
            .collect()
    }

    #[test]
    fn a_good_rotation_moves_the_backend_alone_and_removes_the_old_version() {
        let (_root, dir) = env_dir();
        let fake = swarm(V4, &["Complete 1s|"]);
        let rollout = FakeRollout::default();
        let mut progress = Vec::new();
        let (outcome, summary) = rotate(
            &Client::new(&fake),
            &rollout,
            &rotation(&dir, &|| false),
            &mut progress,
        )
        .unwrap();
        assert_eq!(outcome, Outcome::Done);
        assert!(
            summary.starts_with(&format!("prod: the database password is {V4} (was {V3})")),
            "{summary}"
        );
        let w = fake.writes();
        let order: Vec<&str> = w
            .iter()
            .map(|l| l.split_whitespace().nth(2).unwrap())
            .collect();
        assert_eq!(order, ["create", "create", "rm", "update", "rm"], "{w:?}");
        assert!(w[0].contains(&format!(
            "secret create --label stackship.managed-by=stackship --label stackship.env=prod {V4} -"
        )));
        assert!(w[1].contains(&format!("--secret source={V4},target=new")));
        assert!(w[1].contains(&format!("--secret source={V3},target={V3}")));
        assert!(w[1].contains(&format!("--secret source={BOOT},target={BOOT}")));
        assert!(w[1].contains("--env PGDATABASE=postgres"));
        assert!(w[1].contains("--env PGAPPNAME=stackship-password-helper"));
        assert!(w[1].contains("--label stackship.ops-helper=secret"));
        assert!(w[1].contains("--network stackship-prod_data"));
        assert!(w[1].contains("--entrypoint sh r/postgres:t@sha256:1 -c"));
        assert_eq!(
            w[3],
            format!(
                "docker service update --detach --secret-rm {V3} --secret-add source={V4},target=db_password,uid=0,gid=0,mode=0444 stackship-prod_backend"
            )
        );
        assert_eq!(w[4], format!("docker secret rm {V3}"));
        assert_eq!(*rollout.watched.borrow(), 1);
        // Watched as a deploy is: the default task failures, a settled state confirmed for 1 s.
        assert_eq!(
            *rollout.rules.borrow(),
            Some((
                crate::settings::Defaults::MAX_TASK_FAILURES,
                Duration::from_secs(1)
            ))
        );
        let rec = rollout.recorded.borrow();
        assert_eq!(rec.len(), 1);
        assert_eq!(
            rec[0].note.as_deref(),
            Some(format!("rotated db-password: {V3} -> {V4}").as_str())
        );
        let text = String::from_utf8(progress).unwrap();
        assert!(
            text.contains(&format!(
                "rotating prod's database password: {V3} -> {V4} (stackship-prod_backend)"
            )),
            "{text}"
        );
        assert!(
            text.contains("[stackship] the database accepted it\n"),
            "{text}"
        );
        // The new value went through stdin only.
        let calls = fake.calls();
        let made = calls
            .iter()
            .find(|c| c.args[..2] == ["secret", "create"])
            .unwrap();
        let value = String::from_utf8(made.stdin.clone().unwrap()).unwrap();
        assert_eq!(value.len(), 32);
        assert!(!fake.command_lines().iter().any(|l| l.contains(&value)));
        assert!(!text.contains(&value));
    }

    #[test]
    fn a_failed_or_interrupted_helper_puts_the_old_password_back_and_leaves_no_new_version() {
        for (states, stop) in [
            (
                vec!["Failed 1s|task: non-zero exit (1)", "Complete 1s|"],
                false,
            ),
            (vec!["Running 1s|", "Complete 1s|"], true),
        ] {
            let (_root, dir) = env_dir();
            let fake = swarm(V3, &states);
            let rollout = FakeRollout::default();
            let stop_fn = move || stop;
            let (outcome, summary) = rotate(
                &Client::new(&fake),
                &rollout,
                &rotation(&dir, &stop_fn),
                &mut Vec::new(),
            )
            .unwrap();
            assert_eq!(outcome, Outcome::RolledBack, "{summary}");
            assert!(
                summary.contains(&format!("the database and the services are back on {V3}")),
                "{summary}"
            );
            let helpers = writes_with(&fake, "docker service create");
            assert_eq!(helpers.len(), 2);
            // The repair logs in with the new version first, then the old, and sets the old.
            assert!(
                helpers[1].contains(&format!("--secret source={V3},target=new")),
                "{}",
                helpers[1]
            );
            assert!(
                helpers[1].contains(&format!("--env AUTH={V4} {V3}")),
                "{}",
                helpers[1]
            );
            assert!(writes_with(&fake, "docker service update").is_empty());
            assert_eq!(
                writes_with(&fake, "docker secret rm"),
                vec![format!("docker secret rm {V4}")]
            );
            assert_eq!(writes_with(&fake, "docker service rm").len(), 2);
            assert!(rollout.recorded.borrow().is_empty());
        }
    }

    #[test]
    fn a_rollout_swarm_rolled_back_puts_the_old_password_back() {
        let (_root, dir) = env_dir();
        let fake = swarm(V3, &["Complete 1s|", "Complete 1s|"]);
        let rollout = FakeRollout::default();
        let (outcome, summary) = rotate(
            &Client::new(&fake),
            &rollout,
            &rotation(&dir, &|| false),
            &mut Vec::new(),
        )
        .unwrap();
        assert_eq!(outcome, Outcome::RolledBack);
        assert!(summary.contains("Swarm rolled it back"), "{summary}");
        assert_eq!(writes_with(&fake, "docker service update").len(), 1);
        assert_eq!(
            writes_with(&fake, "docker secret rm"),
            vec![format!("docker secret rm {V4}")]
        );
        assert!(rollout.recorded.borrow().is_empty());
    }

    #[test]
    fn a_repair_that_fails_keeps_the_new_version_and_says_how_to_recover() {
        let (_root, dir) = env_dir();
        let failed = "Failed 1s|task: non-zero exit (3)";
        let fake = swarm(V3, &["Complete 1s|", failed, failed, failed]);
        let mut progress = Vec::new();
        let (outcome, summary) = rotate(
            &Client::new(&fake),
            &FakeRollout::default(),
            &rotation(&dir, &|| false),
            &mut progress,
        )
        .unwrap();
        assert_eq!(outcome, Outcome::Unknown);
        assert!(summary.contains(&format!("{V4} is kept")), "{summary}");
        assert!(
            !String::from_utf8_lossy(&progress).contains("attempt 3 to put"),
            "the last failure is not tried again"
        );
        assert!(
            String::from_utf8_lossy(&progress)
                .contains("attempt 2 to put the password back failed"),
        );
        assert!(
            summary.contains("run `stackship secret rotate prod db-password` again"),
            "{summary}"
        );
        assert!(writes_with(&fake, "docker secret rm").is_empty());
        // Three tries to put it back, each helper removed.
        assert_eq!(writes_with(&fake, "docker service create").len(), 4);
        assert_eq!(writes_with(&fake, "docker service rm").len(), 4);
    }

    #[test]
    fn a_repair_that_fails_once_is_tried_again() {
        let (_root, dir) = env_dir();
        let fake = swarm(
            V3,
            &[
                "Failed 1s|task: non-zero exit (137)",
                "Failed 1s|task: non-zero exit (3)",
                "Complete 1s|",
            ],
        );
        let mut progress = Vec::new();
        let (outcome, summary) = rotate(
            &Client::new(&fake),
            &FakeRollout::default(),
            &rotation(&dir, &|| false),
            &mut progress,
        )
        .unwrap();
        assert_eq!(outcome, Outcome::RolledBack, "{summary}");
        let text = String::from_utf8(progress).unwrap();
        assert!(
            text.contains("attempt 1 to put the password back failed"),
            "{text}"
        );
        assert_eq!(
            writes_with(&fake, "docker secret rm"),
            vec![format!("docker secret rm {V4}")]
        );
        assert_eq!(writes_with(&fake, "docker service create").len(), 3);
    }

    #[test]
    fn a_half_moved_service_keeps_both_versions() {
        let (_root, dir) = env_dir();
        // The spec moved, but its one task still runs the old version.
        let fake = swarm_with(V4, V3, &["Complete 1s|"]);
        let rollout = FakeRollout::default();
        let (outcome, summary) = rotate(
            &Client::new(&fake),
            &rollout,
            &rotation(&dir, &|| false),
            &mut Vec::new(),
        )
        .unwrap();
        assert_eq!(outcome, Outcome::Unknown, "{summary}");
        assert!(summary.contains("UNFINISHED"), "{summary}");
        assert!(
            summary.contains(&format!("both {V3} and {V4} are kept")),
            "{summary}"
        );
        assert!(writes_with(&fake, "docker secret rm").is_empty());
        assert!(rollout.recorded.borrow().is_empty());
    }

    #[test]
    fn refusals_change_nothing() {
        let (_root, dir) = env_dir();
        let fake = FakeEngine::new();
        fake.answer(&["service", "ls"], "id-backend\nid-postgres\n");
        fake.answer(
            &["service", "inspect"],
            &format!(
                "[{},{}]",
                service_json("backend", Some(V3), "completed"),
                service_json("postgres", None, "completed")
            ),
        );
        fake.answer(&["secret", "ls"], &format!("{V3}\n"));
        fake.fail(&["secret", "inspect", BOOT], "Error: No such secret");
        let e = rotate(
            &Client::new(&fake),
            &FakeRollout::default(),
            &rotation(&dir, &|| false),
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("is missing (stackship secret init prod db-password)"),
            "{e}"
        );
        assert!(fake.writes().is_empty());
        // Held lock: nothing asked.
        let (_root2, dir2) = env_dir();
        let _held =
            crate::lock::DeployLock::acquire(&dir2.dir, "x", "other", Duration::ZERO, &mut |_| {})
                .unwrap();
        let fake = swarm(V4, &[]);
        let e = rotate(
            &Client::new(&fake),
            &FakeRollout::default(),
            &rotation(&dir2, &|| false),
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("still held") || e.to_string().contains("lock"),
            "{e}"
        );
        assert!(fake.calls().is_empty());
        assert!(
            only_db_password("smtp", "rotate")
                .unwrap_err()
                .to_string()
                .contains("only 'db-password'")
        );
    }
}
