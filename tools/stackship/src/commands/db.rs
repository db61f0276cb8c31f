//! `stackship db backup|restore|tunnel|console ENV`: the environment's database, from the
//! manager, without ever publishing its port or showing its password.
//!
//! - **backup**: `pg_dump --format=custom` in a one-off helper ([`crate::helper`]) pinned to this
//!   node with the backup directory bind-mounted; the file is written as `.<name>.partial`, read
//!   back with `pg_restore --list`, and only then gets its dated name (mode 0600); the newest N
//!   dated backups are kept; the path is printed on stdout.
//! - **restore**: under the environment's deploy lock, ONE helper runs one `psql` session that
//!   takes the backend's restore lock ([`RESTORE_LOCK_KEY`], exclusive, session level: the
//!   backend answers writes 503 `read_only` while it is held, and taking it waits for every
//!   write in flight), prints `read-only from <time>`, saves every sequence's value, replays
//!   `pg_restore --clean --if-exists --no-owner`'s SQL in one transaction, moves each sequence
//!   up to `greatest(before, restored)` (ids never go backwards) in that same transaction,
//!   commits, unlocks and prints `writes accepted again from <time>`. Any failure rolls the
//!   transaction back and the lock ends with the session.
//! - **tunnel**: 127.0.0.1:PORT on this node → a forwarder container published on loopback
//!   only → a private attachable overlay network → a helper on the stack's `data` network →
//!   `postgres:5432`. The login is a libpq passfile (mode 0600, in a fresh 0700 directory)
//!   written from the secret the backend mounts, by a helper pinned to this node: the password
//!   is never printed, logged or put on a command line. Everything is removed when the tunnel
//!   ends (Ctrl-C, SIGTERM, `--for`, a part of it dying).
//! - **console**: `psql` in the running Postgres container on this node over its local socket
//!   (no password), interactive on a terminal, or reading SQL from a pipe.
//!
//! The database client's settings are those of the running services: Postgres's image (its
//! `pg_dump` matches the server), `POSTGRES_USER`/`POSTGRES_DB` from `<stack>_postgres`, and the
//! password secret `<stack>_backend` mounts at `db_password`.

use std::collections::BTreeMap;
use std::fs;
use std::io::{IsTerminal, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use clap::Subcommand;

use crate::backup::{self, Manifest, Repository, Run, State};
use crate::commands::deploy::progress_line;
use crate::docker::{Call, Client, DockerError};
use crate::error::Error;
use crate::exit::Outcome;
use crate::helper::{self, Helper, HelperError, SecretMount, Spec, TaskState, Wait};
use crate::layout::{self, EnvDir, PROJECT};
use crate::lock::DeployLock;

/// The backend's restore lock (`RESTORE_LOCK_KEY` in services/backend/src/store.rs, the bytes
/// `STKSREST`): a restore holds it exclusively; each write batch takes it shared and writes
/// nothing when it is not granted.
pub const RESTORE_LOCK_KEY: i64 = 0x5354_4b53_5245_5354;

/// How long a dump or a restore may take.
const DUMP_LIMIT: Duration = Duration::from_secs(3600);

/// The mount target of the directory a backup is written to or restored from.
const BACKUP_MOUNT: &str = "/backup";
const RESTORE_MOUNT: &str = "/restore";
const PASS_MOUNT: &str = "/out";

/// `stackship db ...`
#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Dump ENV's database (pg_dump --format=custom) into DIR/<stack>-<YYYYMMDDTHHMMSSZ>.dump and
    /// print the file's path. Beside it, <same name>.counts records every table's rows and the
    /// migration version, counted in the dump's own snapshot. The dump gets its name (mode 0600)
    /// only once pg_dump succeeded and pg_restore can read it back; then all but the newest N
    /// dated backups are removed. With BACKUP_REPOSITORY set (deploy.env), both files are then
    /// copied to that restic repository, and its snapshots beyond BACKUP_KEEP_DAILY/WEEKLY/
    /// MONTHLY are forgotten. The result is recorded for `db check` and `status`.
    Backup {
        env: String,
        /// Dated backups of ENV kept in DIR, the newest first; older ones are removed
        /// (default: BACKUP_KEEP, 7).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        keep: Option<u32>,
        /// Where backups go (default: <root>/<env>/backups, created with mode 0700).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Replace the data of ENV's database with a backup (from `db backup`, or any pg_dump
    /// --format=custom of it), in one transaction, under the deploy lock. Writes are refused
    /// (503 read_only) while it runs; reads go on. Everything written since the backup is lost;
    /// ids handed out since are not handed out again.
    Restore {
        env: String,
        /// The backup file.
        #[arg(
            required_unless_present = "from_repository",
            conflicts_with = "from_repository"
        )]
        file: Option<PathBuf>,
        /// Take the backup from the BACKUP_REPOSITORY (restic) alone: its newest snapshot of ENV,
        /// or --snapshot ID. For a new manager with no local backups.
        #[arg(long)]
        from_repository: bool,
        /// The snapshot to restore (restic's id or its short form; `db backup` prints it).
        #[arg(long, value_name = "ID", conflicts_with = "file")]
        snapshot: Option<String>,
        /// Really replace the data.
        #[arg(long)]
        yes: bool,
        /// How long to wait for a deploy that holds the lock, in seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = crate::settings::Defaults::LOCK_WAIT.as_secs())]
        lock_wait: u64,
    },
    /// Test-restore ENV's newest backup (or FILE): a one-off helper restores it into a
    /// throwaway Postgres of its own, counts every table's rows and reads the migration
    /// version, compares them with what the backup recorded, and is removed with everything
    /// it made. With a BACKUP_REPOSITORY, the repository is checked too: `restic check` (a
    /// tenth of the data read back), then its newest snapshot fetched and test-restored the
    /// same way. Recorded for `db check`.
    Verify {
        env: String,
        /// The dump to test (default: the newest dated backup in <root>/<env>/backups).
        file: Option<PathBuf>,
    },
    /// ENV's backups in its BACKUP_REPOSITORY, oldest first: snapshot id, time, dump.
    Snapshots { env: String },
    /// The state of ENV's backups: the last backup, off-site copy, test restore and repository
    /// check. Exits 1 when the newest good backup (or off-site copy) is older than
    /// BACKUP_MAX_AGE or the last test restore or repository check failed; 0 otherwise.
    Check { env: String },
    /// What the schedule runs every minute (scripts/server/setup-server.sh): a backup when the
    /// last good one is BACKUP_EVERY old, a test restore and a repository check when the last
    /// one is BACKUP_TEST_RESTORE_EVERY old; nothing, silently, when none is due or a backup or
    /// restore of ENV is running. After a failure the next try waits: 15 minutes after a failed
    /// backup, 6 hours after a failed test restore or repository check.
    Scheduled { env: String },
    /// Make ENV's database reachable on 127.0.0.1:PORT of this manager until Ctrl-C (or --for),
    /// with a passfile for the login: it prints `PGPASSFILE=<file> psql "host=127.0.0.1 ..."`.
    /// From a workstation: ssh -N -L PORT:127.0.0.1:PORT root@MANAGER, and the same passfile.
    Tunnel {
        env: String,
        /// The loopback port on this manager.
        #[arg(long, default_value_t = 15432, value_parser = clap::value_parser!(u16).range(1..))]
        port: u16,
        /// Close the tunnel after SECONDS (default: stay open until interrupted).
        #[arg(long = "for", value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
        duration: Option<u64>,
    },
    /// psql on ENV's database as its owner, in the Postgres container on this node (its local
    /// socket: no password). Interactive on a terminal; `echo 'SELECT 1' | stackship db console
    /// ENV` runs piped SQL.
    Console { env: String },
}

/// Who runs a backup: a person (a repository that cannot be used refuses it before anything
/// is made), or the schedule (the local backup is made all the same; `copy: Some(dump)` when
/// only the off-site copy is due: that good dump, newer than the last copy, is copied instead
/// of making another).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Caller {
    Manual,
    Scheduled { copy: Option<PathBuf> },
}

/// Pace and bounds of the waits (tests shorten them).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Between two looks at a helper's task.
    pub poll: Duration,
    /// Between two reads of a running restore's output.
    pub step: Duration,
    /// Between two checks that every part of a tunnel still runs.
    pub check: Duration,
    /// How long the tunnel's helper may take to run, and its forwarders to answer.
    pub start: Duration,
    /// The longest sleep between two looks at the stop flag.
    pub slice: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            poll: Duration::from_millis(500),
            step: Duration::from_secs(2),
            check: Duration::from_secs(2),
            start: Duration::from_secs(120),
            slice: Duration::from_millis(100),
        }
    }
}

/// What the commands need from this machine besides Docker (tests replace each part).
pub struct Local<'a> {
    /// This process's id, in helper names.
    pub pid: u32,
    pub timing: Timing,
    /// Where a tunnel's private directory is made.
    pub private_base: PathBuf,
    /// Whether something already listens on 127.0.0.1:PORT.
    pub in_use: &'a dyn Fn(u16) -> bool,
    /// Whether a Postgres server answers on 127.0.0.1:PORT.
    pub answers: &'a dyn Fn(u16) -> bool,
    /// Whether standard input and standard output are terminals.
    pub terminals: (bool, bool),
    /// Reads, then removes, the file a helper copied the password into ([`take_file`]).
    pub take_password: &'a dyn Fn(&Path) -> std::io::Result<String>,
    /// Who takes the deploy lock (a restore).
    pub owner: String,
    /// This process's user and group ids: the helpers that write or read backups on this node
    /// run as them, so the files are the caller's.
    pub ids: (u32, u32),
    /// The process environment's BACKUP_* settings (they win over deploy.env's).
    pub settings_env: BTreeMap<String, String>,
    /// Runs restic on a repository: its standard output, or its standard error.
    pub restic: &'a RunRestic<'a>,
    /// The time, for the schedule and the backup state.
    pub now: &'a dyn Fn() -> DateTime<Utc>,
}

/// Runs restic on a repository with the given arguments: its standard output, or its standard
/// error ([`run_restic`]; tests answer in its place).
pub type RunRestic<'a> = dyn Fn(&Repository, &[&str]) -> Result<String, String> + 'a;

/// Runs restic (the Debian package; scripts/server/setup-server.sh installs it) with the
/// repository's arguments and environment.
pub fn run_restic(repo: &Repository, command: &[&str]) -> Result<String, String> {
    restic_at(Path::new("restic"), repo, command)
}

/// [`run_restic`] with the program at `program`.
fn restic_at(program: &Path, repo: &Repository, command: &[&str]) -> Result<String, String> {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(program);
    cmd.args(repo.args(command))
        .envs(repo.environment())
        .stdin(std::process::Stdio::null());
    if let Some((uid, gid, home)) = &repo.run_as {
        cmd.uid(*uid).gid(*gid).env("HOME", home);
    }
    let out = cmd
        .output()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                "Fatal: restic is not installed on this manager (scripts/server/setup-server.sh installs it: apt-get install restic)".to_owned()
            } else {
                format!("Fatal: cannot run restic: {e}")
            }
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The last good dump, when it is newer than the last good off-site copy, still there, and has
/// its row counts: what a scheduled run copies when only the off-site copy is due.
fn not_off_site_yet(state: &State) -> Option<PathBuf> {
    let dump = state.backup.last_ok.as_ref()?;
    if state
        .offsite
        .last_ok
        .as_ref()
        .is_some_and(|o| o.at >= dump.at)
    {
        return None;
    }
    let path = PathBuf::from(&dump.detail);
    let counts = fs::read_to_string(backup::manifest_path(&path)).ok()?;
    (path.is_file() && Manifest::parse(&counts).is_ok()).then_some(path)
}

/// The home directory of user `uid` in the text of `/etc/passwd`.
fn home_of(passwd: &str, uid: u32) -> Option<PathBuf> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 7 && fields[2].parse() == Ok(uid) && !fields[5].is_empty())
            .then(|| PathBuf::from(fields[5]))
    })
}

/// The owner ids of this process (those of `/proc/self`).
fn process_ids() -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self")
        .map(|m| (m.uid(), m.gid()))
        .unwrap_or((0, 0))
}

/// Runs a `db` command: results go to `out`, progress to stderr. `stop` is the interrupt flag
/// (`crate::interrupt::requested`): after a stop the command puts things right (helpers,
/// containers, networks, files removed) and, unless it still got to its end, the process exits
/// as a shell reports a signal: 130 after Ctrl-C (SIGINT), 143 after SIGTERM, 129 after SIGHUP.
/// A tunnel's usual end is such a signal: 130 after Ctrl-C, as `db-tunnel.sh` did.
pub fn run(
    root: &Path,
    command: DbCommand,
    client: &Client<'_>,
    out: &mut dyn Write,
    stop: &dyn Fn() -> bool,
) -> Result<Outcome, Error> {
    let say = |m: &str| progress_line(&mut std::io::stderr(), m);
    let local = Local {
        pid: std::process::id(),
        timing: Timing::default(),
        private_base: private_base(std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from)),
        in_use: &port_in_use,
        answers: &postgres_answers,
        terminals: (
            std::io::stdin().is_terminal(),
            std::io::stdout().is_terminal(),
        ),
        take_password: &take_file,
        owner: owner_line(std::env::var("CI_JOB_URL").ok().as_deref()),
        ids: process_ids(),
        settings_env: std::env::vars()
            .filter(|(k, _)| k.starts_with("BACKUP_"))
            .collect(),
        restic: &run_restic,
        now: &chrono::Utc::now,
    };
    // Which signal stopped it, for the exit status a shell gives (128 + the signal).
    let signals = [
        (
            signal_hook::consts::SIGTERM,
            Arc::new(AtomicBool::new(false)),
        ),
        (
            signal_hook::consts::SIGHUP,
            Arc::new(AtomicBool::new(false)),
        ),
    ];
    for (signal, seen) in &signals {
        signal_hook::flag::register(*signal, Arc::clone(seen))
            .map_err(Error::io("cannot install the signal handlers"))?;
    }
    // A tunnel's usual end is Ctrl-C; any other command that got to its end is done, signal
    // or not.
    let ends_by_signal = matches!(command, DbCommand::Tunnel { .. });
    let result = execute(root, command, client, &local, stop, &say, out);
    let stopped = stop();
    let seen = signals
        .iter()
        .find(|(_, flag)| flag.load(Ordering::SeqCst))
        .map(|(signal, _)| *signal);
    if let Some(status) = exit_after_stop(stopped, result.is_err(), ends_by_signal, seen) {
        if let Err(e) = &result {
            eprintln!("stackship: error: {e:#}");
        }
        let _ = out.flush();
        std::process::exit(status);
    }
    result
}

/// The exit status of a command after a stop was asked for (`stopped`): a shell's for the
/// signal `seen` (128 + the signal; Ctrl-C's when no other was seen) when the command failed
/// or ends by a signal (a tunnel). `None` when its result stands: no stop, or a stopped
/// command that still got to its end.
fn exit_after_stop(
    stopped: bool,
    failed: bool,
    ends_by_signal: bool,
    seen: Option<i32>,
) -> Option<i32> {
    (stopped && (failed || ends_by_signal))
        .then(|| 128 + seen.unwrap_or(signal_hook::consts::SIGINT))
}

/// [`run`] with every part given, and no exit: what the tests drive.
pub fn execute(
    root: &Path,
    command: DbCommand,
    client: &Client<'_>,
    local: &Local<'_>,
    stop: &dyn Fn() -> bool,
    say: &dyn Fn(&str),
    out: &mut dyn Write,
) -> Result<Outcome, Error> {
    let ctx = Ctx {
        root,
        client,
        local,
        stop,
        say,
    };
    match command {
        DbCommand::Backup { env, keep, dir } => {
            let path = ctx.backup(&env, keep.map(|k| k as usize), dir)?;
            write_line(out, &path.display().to_string())?;
        }
        DbCommand::Restore {
            env,
            file,
            from_repository: _,
            snapshot,
            yes,
            lock_wait,
        } => {
            let lock_wait = Duration::from_secs(lock_wait);
            match file {
                Some(file) => ctx.restore(&env, &file, yes, lock_wait)?,
                None => ctx.restore_from_repository(&env, snapshot.as_deref(), yes, lock_wait)?,
            }
            // The restore emptied the backups' state in the database (its rows are not backed
            // up): written again for /metrics.
            ctx.publish(&ctx.env(&env)?);
        }
        DbCommand::Verify { env, file } => ctx.verify(&env, file)?,
        DbCommand::Check { env } => return ctx.check(&env, out),
        DbCommand::Snapshots { env } => ctx.snapshots(&env, out)?,
        DbCommand::Scheduled { env } => ctx.scheduled(&env)?,
        DbCommand::Tunnel {
            env,
            port,
            duration,
        } => ctx.tunnel(&env, port, duration.map(Duration::from_secs), out)?,
        DbCommand::Console { env } => return ctx.console(&env),
    }
    Ok(Outcome::Done)
}

fn write_line(out: &mut dyn Write, line: &str) -> Result<(), Error> {
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(Error::io("cannot write to stdout"))
}

fn refused<T>(message: impl Into<String>) -> Result<T, Error> {
    Err(Error::Refused(message.into()))
}

/// The private directory's parent: `$XDG_RUNTIME_DIR` (a tmpfs of this user's) when it is a
/// directory, else the temporary directory.
pub fn private_base(runtime_dir: Option<PathBuf>) -> PathBuf {
    runtime_dir
        .filter(|d| d.is_absolute() && d.is_dir())
        .unwrap_or_else(std::env::temp_dir)
}

/// This process as the deploy lock's owner line.
fn owner_line(job_url: Option<&str>) -> String {
    crate::lock::this_process(
        &chrono::Utc::now()
            .format("%Y-%m-%dT%H:%M:%SZ (stackship db restore)")
            .to_string(),
        job_url,
    )
}

/// The database client's settings, read from the running services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Database {
    /// Postgres's image, as its service runs it (with the digest).
    pub image: String,
    /// `POSTGRES_USER` (default `postgres`).
    pub user: String,
    /// `POSTGRES_DB` (default: the user).
    pub name: String,
    /// The swarm secret the backend mounts at `db_password`: the password it logs in with now.
    pub password_secret: String,
}

/// A service's `ContainerSpec`, or a refusal naming the service when it does not exist.
fn container_spec(
    client: &Client<'_>,
    service: &str,
    stack: &str,
) -> Result<serde_json::Value, Error> {
    let text = match client.run(&Call::read(["service", "inspect", service])) {
        Ok(text) => text,
        Err(DockerError::Failed { stderr, .. }) if stderr.contains("No such service") => {
            return refused(format!(
                "service {service} does not exist (is {stack} deployed?)"
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Refused(format!("docker service inspect {service}: {e}")))?;
    Ok(v[0]["Spec"]["TaskTemplate"]["ContainerSpec"].clone())
}

/// Postgres's image, user and database, from its running service.
pub fn postgres_settings(
    client: &Client<'_>,
    stack: &str,
) -> Result<(String, String, String), Error> {
    let service = format!("{stack}_postgres");
    let spec = container_spec(client, &service, stack)?;
    let image = spec["Image"].as_str().unwrap_or_default().to_owned();
    if image.is_empty() {
        return refused(format!("service {service} names no image"));
    }
    let env: Vec<&str> = spec["Env"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    let var = |key: &str| {
        env.iter()
            .find_map(|e| e.strip_prefix(key)?.strip_prefix('='))
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let user = var("POSTGRES_USER").unwrap_or_else(|| "postgres".to_owned());
    let name = var("POSTGRES_DB").unwrap_or_else(|| user.clone());
    Ok((image, user, name))
}

/// The database client's settings (as `ops_db_helper_args` of the day-2 scripts read them).
pub fn database(client: &Client<'_>, stack: &str) -> Result<Database, Error> {
    let (image, user, name) = postgres_settings(client, stack)?;
    let backend = format!("{stack}_backend");
    let spec = container_spec(client, &backend, stack)?;
    let secret = spec["Secrets"].as_array().and_then(|secrets| {
        secrets.iter().find_map(|s| {
            (s["File"]["Name"].as_str() == Some("db_password"))
                .then(|| s["SecretName"].as_str().map(str::to_owned))
                .flatten()
        })
    });
    let Some(password_secret) = secret else {
        return refused(format!("service {backend} mounts no secret at db_password"));
    };
    Ok(Database {
        image,
        user,
        name,
        password_secret,
    })
}

/// A database client helper: Postgres's image running `bash ARGS`, the password at
/// `/run/secrets/db_password`, `PGHOST`/`PGUSER`/`PGDATABASE`, on the stack's data network.
pub fn client_spec(stack: &str, db: &Database, name: &str, what: &str, args: &[&str]) -> Spec {
    Spec {
        name: name.to_owned(),
        what: what.to_owned(),
        image: db.image.clone(),
        entrypoint: Some("bash".to_owned()),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        secrets: vec![SecretMount {
            source: db.password_secret.clone(),
            target: "db_password".to_owned(),
        }],
        env: vec![
            ("PGHOST".to_owned(), "postgres".to_owned()),
            ("PGUSER".to_owned(), db.user.clone()),
            ("PGDATABASE".to_owned(), db.name.clone()),
        ],
        networks: vec![format!("{stack}_data")],
        ..Spec::default()
    }
}

/// A bind mount of a directory of this node (its path may not hold a comma: `--mount` splits
/// on them).
fn bind(source: &Path, target: &str, readonly: bool) -> Result<String, Error> {
    let s = source.display().to_string();
    if s.contains(',') {
        return refused(format!(
            "{s}: a directory whose path holds a comma cannot be mounted into a helper"
        ));
    }
    Ok(format!(
        "type=bind,source={s},target={target}{}",
        if readonly { ",readonly" } else { "" }
    ))
}

/// The helper that dumps (run as the caller's user): one psql session opens a repeatable-read
/// transaction and exports its snapshot; pg_dump dumps exactly that snapshot (`$1`, readable
/// by its owner only from its first byte), then the same session counts every table's rows
/// and reads the migration version in it ([`backup::COUNT_SQL`]) into `$2`, the manifest. The
/// dump must read back before the helper succeeds. `$1`, `$2`: file names in the mounted
/// directory. (STACKSHIP_DB_PASSWORD_FILE and STACKSHIP_BACKUP_DIR default to the helper's
/// secret and mount; the tests point them elsewhere.)
pub fn backup_script() -> String {
    format!(
        r#"set -eu
exec 2>&1
umask 077
PGPASSWORD="$(cat "${{STACKSHIP_DB_PASSWORD_FILE:-/run/secrets/db_password}}")"
DIR="${{STACKSHIP_BACKUP_DIR:-{BACKUP_MOUNT}}}"
DUMP="$DIR/$1"
OK="$DIR/$1.ok"
export PGPASSWORD DUMP OK
rm -f "$OK"
psql --no-psqlrc --quiet --no-align --tuples-only --no-password --set=ON_ERROR_STOP=1 --file=- >"$DIR/$2" <<'SQL'
BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;
SELECT pg_catalog.pg_export_snapshot() AS snapshot \gset
\setenv SNAPSHOT :snapshot
\! pg_dump --format=custom --no-password --snapshot="$SNAPSHOT" --exclude-table-data={} --file="$DUMP" && : >"$OK"
{}
COMMIT;
SQL
if [ ! -e "$OK" ]; then echo "pg_dump failed (its words are above)"; exit 1; fi
rm -f "$OK"
pg_restore --list "$DUMP" >/dev/null"#,
        backup::STATUS_TABLE,
        backup::COUNT_SQL
    )
}

/// The helper that writes the backups' state into the database (`$1`: the statement).
pub const STATUS_SCRIPT: &str = r#"set -eu
exec 2>&1
PGPASSWORD="$(cat /run/secrets/db_password)"
export PGPASSWORD
printf '%s\n' "$1" | psql --no-psqlrc --quiet --no-password --set=ON_ERROR_STOP=1 --file=-"#;

/// The test restore's helper (Postgres's image, root with only the capabilities to read the
/// caller's dump and become the image's postgres user, uid 999): a throwaway server in its
/// tmpfs, the dump `$1` restored into it with --exit-on-error, then [`backup::COUNT_SQL`]
/// (`$2`) on the copy; its lines go to the output, where they are compared with the backup's
/// manifest. Everything it made goes with its container.
pub const VERIFY_SCRIPT: &str = r#"set -eu
exec 2>&1
umask 077
as_pg() { setpriv --reuid=999 --regid=999 --clear-groups -- "$@"; }
export PGDATA=/tmp/pg/data PGHOST=/tmp/pg PGUSER=check PGDATABASE=check
as_pg mkdir -p /tmp/pg
as_pg initdb --username=check --auth=trust --no-sync --encoding=UTF8 >/dev/null
if ! as_pg pg_ctl --wait --timeout=120 --log=/tmp/pg/server.log \
    --options="-c listen_addresses= -c unix_socket_directories=/tmp/pg -c fsync=off" start >/dev/null; then
    cat /tmp/pg/server.log
    exit 1
fi
as_pg createdb check
cat "/restore/$1" | as_pg sh -c 'cat > /tmp/pg/backup.dump'
if ! as_pg pg_restore --no-owner --no-privileges --exit-on-error --dbname=check /tmp/pg/backup.dump; then
    echo "test restore: pg_restore could not restore $1"
    exit 1
fi
printf '%s\n' "$2" | as_pg psql --no-psqlrc --quiet --no-align --tuples-only --set=ON_ERROR_STOP=1 --file=-
as_pg pg_ctl --mode=immediate stop >/dev/null
echo 'test restore: restored'"#;

/// The helper that restores: checks the archive, then ONE psql session runs `$2` (lock, time,
/// sequences saved, BEGIN), pg_restore's SQL, and `$3` (sequences moved up, COMMIT, unlock,
/// time). When pg_restore fails, `$3` is never sent: psql reaches the end of its input inside
/// the transaction, which the server rolls back, and the lock ends with the session.
/// `$1`: the file's name in the mounted directory.
pub const RESTORE_SCRIPT: &str = r#"set -euo pipefail
exec 2>&1
PGPASSWORD="$(cat /run/secrets/db_password)"
export PGPASSWORD
file="/restore/$1"
pg_restore --list "$file" >/dev/null
{
    printf '%s\n' "$2"
    pg_restore --clean --if-exists --no-owner --file=- "$file" || exit 1
    printf '%s\n' "$3"
} | psql --no-psqlrc --quiet --no-align --tuples-only --no-password --set=ON_ERROR_STOP=1 --file=-"#;

/// `psql`'s time format for the read-only window (UTC, milliseconds).
const SQL_NOW: &str = r#"pg_catalog.to_char(pg_catalog.clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')"#;

/// The restore's first part, before pg_restore's SQL: the lock (waits for the writes in
/// flight; new ones are refused from the moment it is asked for), the time it was granted,
/// every sequence's value, and the transaction's start. Query output is off from there on, so
/// pg_restore's own statements print nothing.
pub fn restore_sql_before() -> String {
    format!(
        "\\o /dev/null
SELECT pg_catalog.pg_advisory_lock({RESTORE_LOCK_KEY});
\\o
SELECT 'read-only from ' || {SQL_NOW};
\\o /dev/null
CREATE TEMP TABLE stackship_sequences_before AS
    SELECT schemaname, sequencename, last_value FROM pg_catalog.pg_sequences;
BEGIN;"
    )
}

/// The restore's last part, in the same transaction: each sequence to greatest(before,
/// restored), so an id handed out since the backup is never handed out again; COMMIT; then
/// the unlock and its time. (pg_restore's SQL empties `search_path`: every name is qualified.)
pub fn restore_sql_after() -> String {
    format!(
        "\\o
SELECT 'sequences moved up to their value before the restore (no id is handed out twice): '
    || pg_catalog.count(pg_catalog.setval(
        pg_catalog.format('%I.%I', s.schemaname, s.sequencename)::pg_catalog.regclass,
        GREATEST(b.last_value, s.last_value), true))
  FROM pg_catalog.pg_sequences s
  JOIN pg_temp.stackship_sequences_before b
    ON b.schemaname = s.schemaname AND b.sequencename = s.sequencename
 WHERE b.last_value IS NOT NULL AND (s.last_value IS NULL OR s.last_value < b.last_value);
COMMIT;
\\echo restore committed
\\o /dev/null
SELECT pg_catalog.pg_advisory_unlock({RESTORE_LOCK_KEY});
\\o
SELECT 'writes accepted again from ' || {SQL_NOW};"
    )
}

/// The helper that fetches the password for a tunnel's passfile into the private directory
/// (bind-mounted, this node only): never to its output.
pub const PASS_SCRIPT: &str = r#"set -eu
umask 077
cat /run/secrets/db_password > /out/password"#;

/// The forwarders (Perl, in Postgres's own image, as user nobody): `LISTEN_PORT HOST PORT`;
/// one process per connection copies bytes both ways until either side closes. Its messages go
/// to standard output (`docker logs` of the local one shows them when it stops).
pub const FORWARD: &str = r#"use strict; use IO::Socket::INET; use IO::Select;
open(STDERR, ">&", \*STDOUT); $| = 1;
my ($lport, $host, $port) = @ARGV;
$SIG{CHLD} = "IGNORE"; $SIG{TERM} = sub { exit 0 };
my $l = IO::Socket::INET->new(LocalAddr => "0.0.0.0", LocalPort => $lport, Listen => 32, ReuseAddr => 1)
    or die "cannot listen on $lport: $!\n";
print "forwarding :$lport to $host:$port\n";
while (1) {
    my $c = $l->accept or next;
    my $pid = fork;
    if (!defined $pid || $pid) { close $c; next; }
    close $l;
    my $u = IO::Socket::INET->new(PeerAddr => $host, PeerPort => $port, Timeout => 10)
        or do { print "cannot connect to $host:$port: $!\n"; exit 1; };
    my $s = IO::Select->new($c, $u);
    my $buf;
    LOOP: while (1) {
        for my $r ($s->can_read) {
            my $n = sysread($r, $buf, 65536);
            last LOOP unless $n;
            my $w = $r == $c ? $u : $c;
            my $off = 0;
            while ($off < $n) {
                my $k = syswrite($w, $buf, $n - $off, $off);
                last LOOP unless defined $k;
                $off += $k;
            }
        }
    }
    exit 0;
}"#;

/// The dated backups of `stack` among `names` to remove so that the newest `keep` stay (the
/// names sort by time). A file not named `<stack>-YYYYMMDDTHHMMSSZ.dump` is never touched.
pub fn backups_to_remove(names: &[String], stack: &str, keep: usize) -> Vec<String> {
    let mut dated: Vec<&String> = names.iter().filter(|n| is_backup(n, stack)).collect();
    dated.sort_unstable_by(|a, b| b.cmp(a));
    dated.into_iter().skip(keep).cloned().collect()
}

/// A dump the helper wrote as `partial` becomes the backup `path` (mode 0600); then all but the
/// newest `keep` dated backups of `stack` beside it are removed.
pub fn keep_backup(
    partial: &Path,
    path: &Path,
    stack: &str,
    keep: usize,
    say: &dyn Fn(&str),
) -> Result<(), Error> {
    let size = fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
    if size == 0 {
        return refused(format!(
            "the helper reported success but {} is missing or empty",
            partial.display()
        ));
    }
    fs::set_permissions(partial, fs::Permissions::from_mode(0o600))
        .and_then(|()| fs::rename(partial, path))
        .map_err(Error::io(format!(
            "cannot name the backup {}",
            path.display()
        )))?;
    say(&format!(
        "backup written: {} ({size} bytes)",
        path.display()
    ));
    let dir = path.parent().unwrap_or(Path::new("."));
    let names: Vec<String> = fs::read_dir(dir)
        .map_err(Error::io(format!("cannot list {}", dir.display())))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    for old in backups_to_remove(&names, stack, keep) {
        match fs::remove_file(dir.join(&old)) {
            Ok(()) => say(&format!("removed old backup {old}")),
            Err(e) => say(&format!("WARNING: could not remove {old}: {e}")),
        }
        // Its row counts go with it.
        let _ = fs::remove_file(backup::manifest_path(&dir.join(&old)));
    }
    Ok(())
}

/// `<stack>-YYYYMMDDTHHMMSSZ.dump`.
pub fn is_backup(name: &str, stack: &str) -> bool {
    let Some(stamp) = name
        .strip_prefix(stack)
        .and_then(|r| r.strip_prefix('-'))
        .and_then(|r| r.strip_suffix(".dump"))
    else {
        return false;
    };
    let b = stamp.as_bytes();
    b.len() == 16
        && b[8] == b'T'
        && b[15] == b'Z'
        && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit)
}

/// The read-only window a restore's output names: (`read-only from`, `writes accepted again
/// from`).
pub fn read_only_window(output: &str) -> (Option<String>, Option<String>) {
    let find = |prefix: &str| {
        output
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|t| t.trim().to_owned()))
    };
    (find("read-only from "), find("writes accepted again from "))
}

/// The first error a failed restore printed (pg_restore's, psql's or the server's own words).
pub fn first_error(output: &str) -> Option<&str> {
    output
        .lines()
        .map(str::trim)
        .find(|l| l.contains("error:") || l.contains("ERROR:") || l.contains("FATAL:"))
}

/// A libpq passfile line for the tunnel (`:` and `\` escaped); a password with a line break
/// cannot be written in one.
pub fn passfile_line(port: u16, db: &str, user: &str, password: &str) -> Result<String, String> {
    if password.contains(['\n', '\r']) {
        return Err("the database password holds a line break: no passfile can carry it".into());
    }
    let esc = |s: &str| s.replace('\\', "\\\\").replace(':', "\\:");
    Ok(format!(
        "127.0.0.1:{port}:{}:{}:{}\n",
        esc(db),
        esc(user),
        esc(password)
    ))
}

/// The `docker exec` arguments of a console: standard input always (piped SQL reaches psql),
/// a terminal only when both ends are one (as `stackship exec`); no psql history file in the
/// container.
pub fn console_args(container: &str, user: &str, db: &str, terminals: (bool, bool)) -> Vec<String> {
    let mut args = vec!["exec".to_owned(), "-i".to_owned()];
    if terminals.0 && terminals.1 {
        args.push("-t".to_owned());
    }
    args.extend(
        [
            "-e",
            "PSQL_HISTORY=/dev/null",
            container,
            "psql",
            "-U",
            user,
            "-d",
            db,
        ]
        .map(str::to_owned),
    );
    args
}

/// Something listens on 127.0.0.1:PORT (it accepts, or the port cannot be bound).
pub fn port_in_use(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
        || TcpListener::bind(addr).is_err()
}

/// A Postgres server answers on 127.0.0.1:PORT: an SSLRequest gets `S` or `N` (a bare connect
/// proves nothing: docker-proxy accepts before anything is behind it).
pub fn postgres_answers(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(3)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
    let mut answer = [0u8; 1];
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).is_ok()
        && s.read_exact(&mut answer).is_ok()
        && matches!(&answer, b"S" | b"N")
}

/// Reads a file and removes it (also when it cannot be read).
pub fn take_file(path: &Path) -> std::io::Result<String> {
    let text = fs::read_to_string(path);
    let _ = fs::remove_file(path);
    text
}

/// A file removed when dropped (a backup's partial file).
struct RemoveFile(PathBuf);

impl Drop for RemoveFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// A scratch directory, removed with everything in it when dropped.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The tunnel's private directory (mode 0700, made fresh: never one that existed), with the
/// passfile; removed with everything in it when dropped.
pub struct PrivateDir<'s> {
    pub path: PathBuf,
    say: &'s dyn Fn(&str),
}

impl<'s> PrivateDir<'s> {
    pub fn create(base: &Path, name: &str, say: &'s dyn Fn(&str)) -> Result<Self, Error> {
        let path = base.join(name);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .and_then(|()| fs::set_permissions(&path, fs::Permissions::from_mode(0o700)))
            .map_err(Error::io(format!(
                "cannot create the private directory {}",
                path.display()
            )))?;
        Ok(Self { path, say })
    }

    /// Where the password helper copies the password (then made into the passfile).
    pub fn password_file(&self) -> PathBuf {
        self.path.join("password")
    }

    /// Writes the passfile `pgpass` (mode 0600, never over an existing file) for `password`
    /// (as the secret holds it: a trailing line break is not part of it).
    pub fn write_passfile(
        &self,
        port: u16,
        db: &Database,
        password: &str,
    ) -> Result<PathBuf, Error> {
        let line = passfile_line(
            port,
            &db.name,
            &db.user,
            password.trim_end_matches(['\n', '\r']),
        )
        .map_err(Error::Refused)?;
        let passfile = self.path.join("pgpass");
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&passfile)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .map_err(Error::io(format!("cannot write {}", passfile.display())))?;
        Ok(passfile)
    }
}

impl Drop for PrivateDir<'_> {
    fn drop(&mut self) {
        match fs::remove_dir_all(&self.path) {
            Ok(()) => (self.say)(&format!("removed the passfile {}", self.path.display())),
            Err(e) => (self.say)(&format!(
                "WARNING: could not remove {}: {e}; remove it by hand",
                self.path.display()
            )),
        }
    }
}

/// A started helper, removed (and said so) when dropped.
struct HelperGuard<'h, 'a, 'b> {
    helper: Option<Helper<'a, 'b>>,
    say: &'h dyn Fn(&str),
}

impl Drop for HelperGuard<'_, '_, '_> {
    fn drop(&mut self) {
        if let Some(helper) = self.helper.take() {
            let name = helper.name().to_owned();
            match helper.remove() {
                Ok(()) => (self.say)(&format!("removed helper {name}")),
                Err(e) => (self.say)(&format!(
                    "WARNING: could not remove helper service {name} ({e}): remove it with 'docker service rm {name}'"
                )),
            }
        }
    }
}

/// The tunnel's local forwarder container, removed when dropped.
struct ContainerGuard<'h, 'a> {
    client: &'h Client<'a>,
    name: String,
    say: &'h dyn Fn(&str),
}

impl Drop for ContainerGuard<'_, '_> {
    fn drop(&mut self) {
        if self
            .client
            .run(&Call::write(["rm", "-f", self.name.as_str()]))
            .is_ok()
        {
            (self.say)(&format!("removed the local forwarder {}", self.name));
        }
    }
}

/// The tunnel's network, removed when dropped: once its helper's task has left it (a service's
/// removal is asynchronous) and until this node's copy of it is gone too, at most 30 s.
struct NetworkGuard<'h, 'a> {
    client: &'h Client<'a>,
    name: String,
    poll: Duration,
    say: &'h dyn Fn(&str),
}

impl Drop for NetworkGuard<'_, '_> {
    fn drop(&mut self) {
        let started = Instant::now();
        let name = self.name.as_str();
        while self
            .client
            .run(&Call::read(["network", "inspect", name]))
            .is_ok()
        {
            let _ = self.client.run(&Call::write(["network", "rm", name]));
            if started.elapsed() >= Duration::from_secs(30) {
                (self.say)(&format!(
                    "WARNING: could not remove the network {name}: remove it with 'docker network rm {name}'"
                ));
                return;
            }
            std::thread::sleep(self.poll);
        }
        (self.say)(&format!("removed the tunnel network {name}"));
    }
}

struct Ctx<'c, 'a> {
    root: &'c Path,
    client: &'c Client<'a>,
    local: &'c Local<'c>,
    stop: &'c dyn Fn() -> bool,
    say: &'c dyn Fn(&str),
}

impl Ctx<'_, '_> {
    fn env(&self, env: &str) -> Result<EnvDir, Error> {
        if !layout::is_valid_env(env) {
            return refused(format!(
                "'{env}' is not an environment name (lower-case letters, digits and -)"
            ));
        }
        Ok(EnvDir::new(self.root, env))
    }

    /// This engine is a swarm manager; its node id.
    fn manager(&self, stack: &str) -> Result<String, Error> {
        let line = self
            .client
            .run(&Call::read([
                "info",
                "--format",
                "{{.Swarm.ControlAvailable}}|{{.Swarm.NodeID}}",
            ]))
            .map_err(|e| Error::Refused(format!("cannot talk to the Docker engine: {e}")))?;
        match line.trim().split_once('|') {
            Some(("true", node)) if !node.is_empty() => Ok(node.to_owned()),
            _ => refused(format!(
                "this engine is not a swarm manager (run on the manager of {stack})"
            )),
        }
    }

    fn wait(&self, limit: Duration) -> Wait<'_> {
        Wait {
            limit,
            poll: self.local.timing.poll,
            stop: self.stop,
        }
    }

    /// Sleeps `d` in slices, false as soon as a stop is asked for.
    fn sleep(&self, d: Duration) -> bool {
        crate::interrupt::sleep_until(Instant::now() + d, self.stop, self.local.timing.slice)
    }

    /// The environment's backup settings (deploy.env and BACKUP_* of the process environment).
    fn backup_settings(&self, envdir: &EnvDir) -> Result<crate::settings::Backup, Error> {
        Ok(crate::settings::load_backup(
            &envdir.dir.join("deploy.env"),
            &self.local.settings_env,
        )?)
    }

    /// The repository the settings name, with the files that reach it; `None` without one.
    fn repository(
        &self,
        envdir: &EnvDir,
        settings: &crate::settings::Backup,
    ) -> Result<Option<Repository>, Error> {
        let Some(url) = &settings.repository else {
            return Ok(None);
        };
        let mut repo = Repository::new(
            &url.value,
            &envdir.dir.join("secrets"),
            Some(envdir.dir.join(".restic-cache")),
        )
        .map_err(|e| Error::Refused(format!("{e} ({})", url.origin)))?;
        // Root works on the deploy user's backups: restic runs as that user, so that what it
        // writes (a local repository, its cache, its locks) stays theirs.
        let (uid, gid) = self.file_ids(envdir);
        if self.local.ids.0 == 0 && uid != 0 {
            let home = fs::read_to_string("/etc/passwd")
                .ok()
                .and_then(|passwd| home_of(&passwd, uid))
                .unwrap_or_else(|| envdir.dir.clone());
            repo.run_as = Some((uid, gid, home));
        }
        Ok(Some(repo))
    }

    /// Who the files of the environment's backups belong to: the caller, or, for root, the
    /// owner of the environment directory (the deploy user), so that a backup taken by hand as
    /// root stays readable by the schedule.
    fn file_ids(&self, envdir: &EnvDir) -> (u32, u32) {
        use std::os::unix::fs::MetadataExt;
        if self.local.ids.0 != 0 {
            return self.local.ids;
        }
        fs::metadata(&envdir.dir).map_or(self.local.ids, |m| (m.uid(), m.gid()))
    }

    /// `user:group` of [`Ctx::file_ids`], for a helper's `--user`.
    fn file_user(&self, envdir: &EnvDir) -> String {
        let (uid, gid) = self.file_ids(envdir);
        format!("{uid}:{gid}")
    }

    /// Gives a file this process made (as root) to the owner of the environment's backups.
    fn hand_over(&self, envdir: &EnvDir, path: &Path) {
        let (uid, gid) = self.file_ids(envdir);
        if self.local.ids.0 == 0 && uid != 0 {
            let _ = std::os::unix::fs::chown(path, Some(uid), Some(gid));
        }
    }

    /// Runs restic on `repo`; its failure in words that say what to do.
    fn restic(&self, repo: &Repository, command: &[&str]) -> Result<String, String> {
        (self.local.restic)(repo, command).map_err(|e| backup::restic_failure(&e, repo))
    }

    /// Checks that `repo` opens with its password before anything is made; creates the
    /// repository when there is none at its location yet and `create` is set.
    fn open_repository(&self, repo: &Repository, create: bool) -> Result<(), Error> {
        match (self.local.restic)(repo, &["cat", "config"]) {
            Ok(_) => Ok(()),
            Err(e) if create && backup::no_repository_yet(&e) => {
                self.restic(repo, &["init"]).map_err(Error::Refused)?;
                (self.say)(&format!(
                    "initialised the restic repository {} (keep a copy of {} off this server: without it the backups there cannot be read)",
                    repo.shown(),
                    repo.password_file.display()
                ));
                Ok(())
            }
            Err(e) => refused(backup::restic_failure(&e, repo)),
        }
    }

    /// The directory of the environment's dated dumps and its state file (mode 0700).
    fn backups_dir(&self, envdir: &EnvDir) -> Result<PathBuf, Error> {
        let dir = envdir.dir.join("backups");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(Error::io(format!(
                "cannot create the backup directory {}",
                dir.display()
            )))?;
        self.hand_over(envdir, &dir);
        Ok(dir)
    }

    /// Records a run in the environment's backup state.
    fn record(&self, envdir: &EnvDir, update: impl FnOnce(&mut State)) -> Result<(), Error> {
        let path = self.backups_dir(envdir)?.join(backup::STATE_FILE);
        let mut state = State::read(&path).map_err(Error::Refused)?;
        update(&mut state);
        state
            .write(&path)
            .map_err(Error::io(format!("cannot write {}", path.display())))?;
        self.hand_over(envdir, &path);
        Ok(())
    }

    /// Writes the environment's backup state into the database for the backend's `/metrics`
    /// (a helper running psql). Best effort: a failure is said, and changes no outcome.
    fn publish(&self, envdir: &EnvDir) {
        // Stopped (Ctrl-C, SIGTERM): no new helper; the next run writes it.
        if (self.stop)() {
            return;
        }
        let stack = envdir.stack();
        let path = backup::state_path(&envdir.dir);
        let Some(sql) = State::read(&path)
            .ok()
            .as_ref()
            .and_then(backup::status_sql)
        else {
            return;
        };
        let published = database(self.client, &stack).and_then(|db| {
            let mut spec = client_spec(
                &stack,
                &db,
                &format!("{stack}-ops-status-{}", self.local.pid),
                "db-status",
                &["-c", STATUS_SCRIPT, "status", &sql],
            );
            spec.user = Some(self.file_user(envdir));
            helper::run(
                self.client,
                &spec,
                &self.wait(Duration::from_secs(120)),
                &mut |_: &str| {},
            )
            .map(|_| ())
            .map_err(|e| Error::Refused(e.to_string()))
        });
        match published {
            Ok(()) => (self.say)("backup state written to the database (the backend's /metrics)"),
            Err(e) => (self.say)(&format!(
                "WARNING: the backup state was not written to the database for /metrics: {e}"
            )),
        }
    }

    fn run_now(&self, ok: bool, detail: impl Into<String>, size: Option<u64>) -> Run {
        Run {
            at: (self.local.now)(),
            ok,
            detail: detail.into(),
            size,
        }
    }

    /// Takes the environment's backup lock, waiting at most `wait` for a backup, test restore
    /// or restore that holds it.
    fn backup_lock(&self, envdir: &EnvDir, env: &str, wait: Duration) -> Result<DeployLock, Error> {
        fs::create_dir_all(&envdir.dir)
            .map_err(Error::io(format!("cannot create {}", envdir.dir.display())))?;
        let lock = DeployLock::acquire_backup(
            &envdir.dir,
            &format!("{env} backup"),
            &self.local.owner,
            wait,
            &mut |m: &str| (self.say)(m),
        )?;
        self.hand_over(envdir, &envdir.dir.join("backup.lock"));
        self.hand_over(envdir, lock.owner_path());
        Ok(lock)
    }

    fn backup(
        &self,
        env: &str,
        keep: Option<usize>,
        dir: Option<PathBuf>,
    ) -> Result<PathBuf, Error> {
        let envdir = self.env(env)?;
        let settings = self.backup_settings(&envdir)?;
        let _lock = self.backup_lock(&envdir, env, crate::settings::Defaults::LOCK_WAIT)?;
        let result = self.backup_locked(&envdir, &settings, keep, dir, Caller::Manual);
        self.publish(&envdir);
        result
    }

    /// The repository, opened (created when there is none yet), or why it cannot be used.
    fn usable_repository(
        &self,
        envdir: &EnvDir,
        settings: &crate::settings::Backup,
    ) -> Result<Option<Repository>, String> {
        let repo = self
            .repository(envdir, settings)
            .map_err(|e| e.to_string())?;
        if let Some(repo) = &repo {
            self.open_repository(repo, true)
                .map_err(|e| e.to_string())?;
        }
        Ok(repo)
    }

    /// Whether the schedule may copy to `repo`: this server copied there before or was
    /// restored from it, or it holds no backup of the environment. Otherwise its backups are
    /// another server's (this one is new): the schedule's copy of this server's database, maybe
    /// still empty, would become the newest, which a restore takes by default.
    fn may_join(&self, envdir: &EnvDir, repo: &Repository) -> Result<(), String> {
        let state = State::read(&backup::state_path(&envdir.dir))?;
        if state.repository.as_deref() == Some(repo.shown().as_str()) {
            return Ok(());
        }
        let stack = envdir.stack();
        let env = envdir.env.as_str();
        let listed = self.restic(
            repo,
            &["snapshots", "--json", "--host", &stack, "--tag", env],
        )?;
        let there = backup::snapshots(&listed)?;
        match there.last() {
            None => Ok(()),
            Some(newest) => Err(format!(
                "{} already holds {} backup(s) of {env} that this server did not make (the newest {} from {}): restore from them first (stackship db restore {env} --from-repository --yes), or make this server's copies the newest on purpose with stackship db backup {env}",
                repo.shown(),
                there.len(),
                newest.short_id,
                newest.time.format("%Y-%m-%dT%H:%M:%SZ")
            )),
        }
    }

    /// A backup under the backup lock: the dump and its manifest (or, for a scheduled run whose
    /// dump is recent and only the off-site copy is due, the newest dump there is), then the
    /// off-site copy; each outcome recorded. By hand, a repository that cannot be used fails
    /// the backup before anything is made; on the schedule, the local backup is made all the
    /// same, and the off-site failure recorded and reported.
    fn backup_locked(
        &self,
        envdir: &EnvDir,
        settings: &crate::settings::Backup,
        keep: Option<usize>,
        dir: Option<PathBuf>,
        run: Caller,
    ) -> Result<PathBuf, Error> {
        let env = envdir.env.as_str();
        let mut offsite = self.usable_repository(envdir, settings);
        if let (Caller::Manual, Err(why)) = (&run, &offsite) {
            // The off-site side failed; no local backup was tried (the schedule's are not
            // held up by this).
            let why = why.clone();
            self.record(envdir, |s| {
                s.offsite
                    .record(self.run_now(false, format!("nothing was made: {why}"), None));
            })?;
            return refused(why);
        }
        if let (Caller::Scheduled { .. }, Ok(Some(repo))) = (&run, &offsite)
            && let Err(why) = self.may_join(envdir, repo)
        {
            offsite = Err(why);
        }
        let copy = match &run {
            Caller::Scheduled { copy } => copy.clone(),
            Caller::Manual => None,
        };
        let made = copy.is_none();
        let path = match copy {
            Some(path) => {
                (self.say)(&format!(
                    "the newest backup {} is not off-site yet: copying it",
                    path.display()
                ));
                path
            }
            None => {
                let keep = keep.unwrap_or(settings.keep.value as usize);
                match self.dump(envdir, keep, dir) {
                    Ok(path) => {
                        let size = fs::metadata(&path).map(|m| m.len()).ok();
                        self.record(envdir, |s| {
                            s.backup
                                .record(self.run_now(true, path.display().to_string(), size));
                            s.first_backup.get_or_insert_with(|| (self.local.now)());
                        })?;
                        path
                    }
                    Err(e) => {
                        let why = e.to_string();
                        self.record(envdir, |s| s.backup.record(self.run_now(false, why, None)))?;
                        if let Err(off) = &offsite {
                            let off = off.clone();
                            self.record(envdir, |s| {
                                s.offsite.record(self.run_now(false, off, None))
                            })?;
                        }
                        return Err(e);
                    }
                }
            }
        };
        let size = fs::metadata(&path).map(|m| m.len()).ok();
        let copied = match offsite {
            Ok(None) => return Ok(path),
            Ok(Some(repo)) => self
                .copy_offsite(envdir, &repo, settings, &path)
                .map(|snapshot| (snapshot, repo.shown()))
                .map_err(|why| format!("its copy off-site failed: {why}")),
            Err(why) => Err(format!("it was not copied off-site: {why}")),
        };
        match copied {
            Ok((snapshot, repository)) => {
                self.record(envdir, |s| {
                    s.offsite
                        .record(self.run_now(true, format!("snapshot {snapshot}"), size));
                    s.repository = Some(repository);
                })?;
                Ok(path)
            }
            Err(why) => {
                self.record(envdir, |s| {
                    s.offsite.record(self.run_now(false, why.clone(), None))
                })?;
                refused(format!(
                    "the {env} backup {} was {}, but {why}",
                    path.display(),
                    if made { "written" } else { "already there" }
                ))
            }
        }
    }

    /// `restic backup` of the dump and its manifest, then `restic forget --prune` beyond the
    /// retention; the new snapshot's id.
    fn copy_offsite(
        &self,
        envdir: &EnvDir,
        repo: &Repository,
        settings: &crate::settings::Backup,
        path: &Path,
    ) -> Result<String, String> {
        let env = envdir.env.as_str();
        let stack = envdir.stack();
        let dump = path.display().to_string();
        let counts = backup::manifest_path(path);
        let counts = counts.display().to_string();
        (self.say)(&format!("copying {dump} to {}", repo.shown()));
        let mut args = vec![
            "backup",
            "--json",
            "--host",
            &stack,
            "--tag",
            "stackship",
            "--tag",
            env,
            &dump,
        ];
        if Path::new(&counts).exists() {
            args.push(&counts);
        }
        let out = self.restic(repo, &args)?;
        let snapshot = backup::snapshot_id(&out)
            .ok_or_else(|| format!("restic backup named no snapshot: {}", out.trim()))?;
        let short: String = snapshot.chars().take(8).collect();
        (self.say)(&format!(
            "off-site copy: snapshot {short} in {}",
            repo.shown()
        ));
        let (d, w, m) = (
            settings.keep_daily.value.to_string(),
            settings.keep_weekly.value.to_string(),
            settings.keep_monthly.value.to_string(),
        );
        // Grouped by host and tags: each dump has its own path, so the default grouping
        // (host, paths) would keep every snapshot.
        match self.restic(
            repo,
            &[
                "forget",
                "--host",
                &stack,
                "--tag",
                env,
                "--group-by",
                "host,tags",
                "--keep-daily",
                &d,
                "--keep-weekly",
                &w,
                "--keep-monthly",
                &m,
                "--prune",
            ],
        ) {
            Ok(_) => (self.say)(&format!(
                "off-site retention: the newest snapshot of each of {d} days, {w} weeks and {m} months kept"
            )),
            Err(e) => (self.say)(&format!(
                "WARNING: restic forget --prune failed (the snapshot is kept; the next backup tries again): {e}"
            )),
        }
        Ok(short)
    }

    /// The dump itself: a helper writes the dump and its manifest; both get their names once
    /// the dump reads back.
    fn dump(&self, envdir: &EnvDir, keep: usize, dir: Option<PathBuf>) -> Result<PathBuf, Error> {
        let env = envdir.env.as_str();
        let stack = envdir.stack();
        let node = self.manager(&stack)?;
        let dir = match dir {
            Some(dir) => {
                fs::create_dir_all(&dir)
                    .and_then(|()| fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)))
                    .map_err(Error::io(format!(
                        "cannot create the backup directory {}",
                        dir.display()
                    )))?;
                // The helper writes there as the backups' owner.
                self.hand_over(envdir, &dir);
                dir
            }
            None => self.backups_dir(envdir)?,
        };
        let dir = dir.canonicalize().map_err(Error::io(format!(
            "cannot resolve the backup directory {}",
            dir.display()
        )))?;
        let db = database(self.client, &stack)?;
        let stamp = (self.local.now)().format("%Y%m%dT%H%M%SZ");
        let name = format!("{stack}-{stamp}.dump");
        let path = dir.join(&name);
        if path.exists() {
            return refused(format!(
                "{} exists already (one backup per second)",
                path.display()
            ));
        }
        let partial = format!(".{name}.partial");
        let partial_counts = format!(".{name}.counts.partial");
        let partial_path = dir.join(&partial);
        let counts_path = dir.join(&partial_counts);
        let _partial_removed = RemoveFile(partial_path.clone());
        let _counts_removed = RemoveFile(counts_path.clone());
        let _ok_removed = RemoveFile(dir.join(format!("{partial}.ok")));
        let script = backup_script();
        let mut spec = client_spec(
            &stack,
            &db,
            &format!("{stack}-ops-backup-{}", self.local.pid),
            "db-backup",
            &["-c", &script, "backup", &partial, &partial_counts],
        );
        spec.node = Some(node);
        spec.user = Some(self.file_user(envdir));
        spec.mounts = vec![bind(&dir, BACKUP_MOUNT, false)?];
        (self.say)(&format!(
            "dumping the {env} database into {}",
            path.display()
        ));
        (self.say)(&format!("helper {} ({})", spec.name, spec.image));
        helper::run(
            self.client,
            &spec,
            &self.wait(DUMP_LIMIT),
            &mut |l: &str| (self.say)(l),
        )
        .map_err(|e| Error::Refused(format!("pg_dump of the {env} database failed: {e}")))?;
        if fs::metadata(&partial_path).map_or(0, |m| m.len()) == 0 {
            return refused(format!(
                "the helper reported success but {} is missing or empty",
                partial_path.display()
            ));
        }
        let manifest = fs::read_to_string(&counts_path)
            .map_err(|e| e.to_string())
            .and_then(|text| Manifest::parse(&text))
            .map_err(|e| {
                Error::Refused(format!(
                    "the {env} backup's row counts ({}) cannot be read: {e}",
                    counts_path.display()
                ))
            })?;
        // The counts first: a dump never stands without them, even after a crash.
        let counts = backup::manifest_path(&path);
        fs::write(&counts, manifest.render())
            .and_then(|()| fs::set_permissions(&counts, fs::Permissions::from_mode(0o600)))
            .map_err(Error::io(format!("cannot write {}", counts.display())))?;
        self.hand_over(envdir, &counts);
        if let Err(e) = keep_backup(&partial_path, &path, &stack, keep, self.say) {
            let _ = fs::remove_file(&counts);
            return Err(e);
        }
        (self.say)(&format!(
            "recorded {} rows in {} tables, migration {} ({})",
            manifest.rows(),
            manifest.tables.len(),
            manifest.migration.as_deref().unwrap_or("none"),
            counts.display()
        ));
        Ok(path)
    }

    /// The newest dated dump of the environment in `dir`.
    fn newest_backup(&self, dir: &Path, stack: &str) -> Option<PathBuf> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .ok()?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| is_backup(n, stack))
            .collect();
        names.sort_unstable();
        names.pop().map(|n| dir.join(n))
    }

    fn verify(&self, env: &str, file: Option<PathBuf>) -> Result<(), Error> {
        let envdir = self.env(env)?;
        let settings = self.backup_settings(&envdir)?;
        let _lock = self.backup_lock(&envdir, env, crate::settings::Defaults::LOCK_WAIT)?;
        let result = self.verify_locked(&envdir, &settings, file, false);
        self.publish(&envdir);
        result
    }

    /// The test restore and, with a repository, its check ([`Ctx::check_repository`]); each
    /// recorded. `require_counts`: a dump without its row counts fails (the schedule's dumps
    /// all have them).
    fn verify_locked(
        &self,
        envdir: &EnvDir,
        settings: &crate::settings::Backup,
        file: Option<PathBuf>,
        require_counts: bool,
    ) -> Result<(), Error> {
        let restored = self.test_restore(envdir, file, require_counts);
        let (ok, detail) = match &restored {
            Ok(detail) => (true, detail.clone()),
            // (a refusal's text is its words: Error::Refused displays as itself)
            Err(e) => (false, e.to_string()),
        };
        self.record(envdir, |s| {
            s.test_restore.record(self.run_now(ok, detail, None))
        })?;
        let checked = self.check_repository(envdir, settings, require_counts)?;
        match (restored, checked) {
            (Ok(_), Ok(())) => Ok(()),
            (Err(Error::Refused(why)), _) => refused(format!(
                "the test restore of the {} backup FAILED: {why}",
                envdir.env
            )),
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => refused(format!("the repository check failed: {e}")),
        }
    }

    /// With a repository: `restic check` (a tenth of the data read back against its hashes,
    /// besides the repository's structure), then the newest off-site copy test-restored as a
    /// local dump is; recorded. Stopped (Ctrl-C, SIGTERM): nothing is run or recorded.
    fn check_repository(
        &self,
        envdir: &EnvDir,
        settings: &crate::settings::Backup,
        require_counts: bool,
    ) -> Result<Result<(), String>, Error> {
        let repo = match self.repository(envdir, settings) {
            Ok(None) => return Ok(Ok(())),
            Ok(Some(repo)) => repo,
            Err(e) => {
                let why = e.to_string();
                self.record(envdir, |s| {
                    s.repository_check
                        .record(self.run_now(false, why.clone(), None))
                })?;
                return Ok(Err(why));
            }
        };
        if (self.stop)() {
            return Ok(Err("interrupted before the repository check".to_owned()));
        }
        (self.say)(&format!(
            "checking the repository {} (restic check)",
            repo.shown()
        ));
        let result = self
            .restic(&repo, &["check", "--read-data-subset", "10%"])
            .and_then(|_| self.offsite_test_restore(envdir, &repo, require_counts));
        let (ok, detail) = match &result {
            Ok(restored) => (
                true,
                format!("restic check of {}: no errors; {restored}", repo.shown()),
            ),
            Err(e) => (false, e.clone()),
        };
        self.record(envdir, |s| {
            s.repository_check
                .record(self.run_now(ok, detail.clone(), None))
        })?;
        (self.say)(&format!(
            "repository check: {}",
            if ok { "passed" } else { "FAILED" }
        ));
        Ok(result.map(|_| ()))
    }

    /// Restores `file` (default: the newest dated dump) into a throwaway Postgres in a helper
    /// and compares what it holds with the backup's manifest. What it found, in one line.
    fn test_restore(
        &self,
        envdir: &EnvDir,
        file: Option<PathBuf>,
        require_counts: bool,
    ) -> Result<String, Error> {
        let env = envdir.env.as_str();
        let stack = envdir.stack();
        let file = match file {
            Some(f) => f,
            None => {
                let dir = self.backups_dir(envdir)?;
                self.newest_backup(&dir, &stack).ok_or_else(|| {
                    Error::Refused(format!(
                        "no backup of {env} to test in {} (stackship db backup {env} makes one)",
                        dir.display()
                    ))
                })?
            }
        };
        let shown = file.display().to_string();
        let file = file
            .canonicalize()
            .map_err(Error::io(format!("cannot read the backup {shown}")))?;
        let (Some(dir), Some(base)) = (file.parent(), file.file_name().and_then(|n| n.to_str()))
        else {
            return refused(format!("{shown} is not a file name"));
        };
        let counts = backup::manifest_path(&file);
        let recorded = match fs::read_to_string(&counts) {
            Ok(text) => Some(
                Manifest::parse(&text)
                    .map_err(|e| Error::Refused(format!("{}: {e}", counts.display())))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !require_counts => None,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return refused(format!(
                    "{shown}: no row counts beside it ({}) to compare the restored copy with",
                    counts.display()
                ));
            }
            Err(e) => {
                return refused(format!(
                    "cannot read the row counts {}: {e}",
                    counts.display()
                ));
            }
        };
        let node = self.manager(&stack)?;
        let (image, _, _) = postgres_settings(self.client, &stack)?;
        let spec = Spec {
            name: format!("{stack}-ops-verify-{}", self.local.pid),
            what: "db-verify".to_owned(),
            image,
            entrypoint: Some("bash".to_owned()),
            args: ["-c", VERIFY_SCRIPT, "verify", base, backup::COUNT_SQL]
                .map(str::to_owned)
                .to_vec(),
            node: Some(node),
            mounts: vec![
                bind(dir, RESTORE_MOUNT, true)?,
                "type=tmpfs,destination=/tmp".to_owned(),
            ],
            caps_add: ["CAP_SETUID", "CAP_SETGID", "CAP_DAC_READ_SEARCH"]
                .map(str::to_owned)
                .to_vec(),
            ..Spec::default()
        };
        (self.say)(&format!(
            "test restore of {} into a throwaway Postgres (helper {})",
            file.display(),
            spec.name
        ));
        let mut lines = Vec::new();
        let output = helper::run(
            self.client,
            &spec,
            &self.wait(DUMP_LIMIT),
            &mut |l: &str| {
                let own = l.trim_start().strip_prefix("db-verify: ").unwrap_or(l);
                lines.push(own.to_owned());
                (self.say)(l);
            },
        )
        .map_err(|e| {
            let text = lines.join("\n");
            // The first error in Postgres's or pg_restore's words, else the helper's last word.
            let why = first_error(&text)
                .or_else(|| text.lines().map(str::trim).rfind(|l| !l.is_empty()))
                .map_or_else(|| e.to_string(), str::to_owned);
            Error::Refused(format!("{}: {why}", file.display()))
        })?;
        let got = Manifest::parse(&output).map_err(|e| {
            Error::Refused(format!(
                "{}: the restored rows were not counted: {e}",
                file.display()
            ))
        })?;
        if got.tables.is_empty() {
            return refused(format!(
                "{}: the restored copy holds no table (a backup of an empty or another database?)",
                file.display()
            ));
        }
        let summary = format!(
            "{} restored: {} rows in {} tables, migration {}",
            base,
            got.rows(),
            got.tables.len(),
            got.migration.as_deref().unwrap_or("none")
        );
        match recorded {
            None => {
                (self.say)(&format!(
                    "test restore passed ({summary}); no row counts were recorded with this backup to compare"
                ));
                Ok(format!("{summary} (no counts recorded to compare)"))
            }
            Some(want) => {
                let diff = backup::differences(&want, &got);
                if diff.is_empty() {
                    (self.say)(&format!(
                        "test restore passed: {summary}, as recorded at backup time"
                    ));
                    Ok(format!("{summary}, as recorded"))
                } else {
                    refused(format!(
                        "{}: the copy differs from what the backup recorded: {}",
                        file.display(),
                        diff.join("; ")
                    ))
                }
            }
        }
    }

    fn check(&self, env: &str, out: &mut dyn Write) -> Result<Outcome, Error> {
        let envdir = self.env(env)?;
        let settings = self.backup_settings(&envdir)?;
        let state = State::read(&backup::state_path(&envdir.dir)).map_err(Error::Refused)?;
        let findings = backup::findings(&state, &settings, (self.local.now)());
        for f in &findings {
            write_line(
                out,
                &format!("{} {}", if f.failed { "FAIL" } else { "ok  " }, f.line),
            )?;
        }
        let failed = findings.iter().filter(|f| f.failed).count();
        if failed > 0 {
            write_line(out, &format!("{env}: {failed} backup check(s) failed"))?;
            return Ok(Outcome::Exited(1));
        }
        write_line(out, &format!("{env}: backups ok"))?;
        Ok(Outcome::Done)
    }

    fn scheduled(&self, env: &str) -> Result<(), Error> {
        let envdir = self.env(env)?;
        // Nothing is deployed yet: nothing to back up.
        if !envdir.dir.join("current").exists() {
            return Ok(());
        }
        let settings = self.backup_settings(&envdir)?;
        let state_path = backup::state_path(&envdir.dir);
        let work = |state: &State| {
            let now = (self.local.now)();
            let every = settings.every.value;
            let dump = backup::due(&state.backup, every, backup::RETRY_AFTER, now);
            let offsite = settings.repository.is_some()
                && backup::due(&state.offsite, every, backup::RETRY_AFTER, now);
            let test = backup::due(
                &state.test_restore,
                settings.test_restore_every.value,
                backup::TEST_RETRY_AFTER,
                now,
            );
            // The repository check keeps its own time: one that failed is tried again after
            // the same wait as a failed test restore, not a whole period later.
            let check = settings.repository.is_some()
                && backup::due(
                    &state.repository_check,
                    settings.test_restore_every.value,
                    backup::TEST_RETRY_AFTER,
                    now,
                );
            (dump, offsite, test, check)
        };
        let (dump, offsite, test, check) = work(&State::read(&state_path).map_err(Error::Refused)?);
        if !dump && !offsite && !test && !check {
            return Ok(());
        }
        // A backup, test restore or restore of this environment is running: the next tick.
        let _lock = match self.backup_lock(&envdir, env, Duration::ZERO) {
            Ok(lock) => lock,
            Err(Error::Lock(crate::lock::LockError::Timeout { .. })) => return Ok(()),
            Err(e) => return Err(e),
        };
        // Decided again under the lock: a run that just ended may have done it.
        let state = State::read(&state_path).map_err(Error::Refused)?;
        let (dump, offsite, test, check) = work(&state);
        let backed_up = if dump {
            self.backup_locked(
                &envdir,
                &settings,
                None,
                None,
                Caller::Scheduled { copy: None },
            )
            .map(|_| ())
        } else if let Some(copy) = offsite.then(|| not_off_site_yet(&state)).flatten() {
            self.backup_locked(
                &envdir,
                &settings,
                None,
                None,
                Caller::Scheduled { copy: Some(copy) },
            )
            .map(|_| ())
        } else {
            // The last good dump is off-site already (a dump failed since): the next good one
            // goes.
            Ok(())
        };
        let verified = if test {
            self.verify_locked(&envdir, &settings, None, true)
        } else if check {
            match self.check_repository(&envdir, &settings, true)? {
                Ok(()) => Ok(()),
                Err(e) => refused(format!("the repository check failed: {e}")),
            }
        } else {
            Ok(())
        };
        self.publish(&envdir);
        backed_up.and(verified)
    }

    /// Fetches the dump of `chosen` (and, with `counts`, the row counts stored beside it) from
    /// `repo` into a fresh `<env dir>/.<what>-<pid>` (mode 0700, the environment owner's, whom
    /// restic runs as when root runs it), removed when the returned guard goes; and the dump's
    /// place there.
    fn fetch(
        &self,
        envdir: &EnvDir,
        repo: &Repository,
        chosen: &backup::Snapshot,
        what: &str,
        counts: bool,
    ) -> Result<(RemoveDir, PathBuf), Error> {
        let Some((dump, counts_path)) = backup::dump_in(chosen) else {
            return refused(format!(
                "snapshot {} in {} holds no .dump file",
                chosen.short_id,
                repo.shown()
            ));
        };
        let scratch = envdir.dir.join(format!(".{what}-{}", self.local.pid));
        // One left by a run of the same pid that was killed goes first: no live process has it.
        let _ = fs::remove_dir_all(&scratch);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&scratch)
            .map_err(Error::io(format!("cannot create {}", scratch.display())))?;
        let removed = RemoveDir(scratch.clone());
        self.hand_over(envdir, &scratch);
        (self.say)(&format!(
            "fetching {dump} from snapshot {} ({}) of {}",
            chosen.short_id,
            chosen.time.format("%Y-%m-%dT%H:%M:%SZ"),
            repo.shown()
        ));
        let target = scratch.display().to_string();
        let mut args = vec![
            "restore",
            chosen.id.as_str(),
            "--target",
            &target,
            "--include",
            dump,
        ];
        if let (true, Some(counts_path)) = (counts, counts_path) {
            args.extend(["--include", counts_path]);
        }
        self.restic(repo, &args).map_err(Error::Refused)?;
        let file = scratch.join(dump.trim_start_matches('/'));
        Ok((removed, file))
    }

    /// The off-site copy proved as a local dump is: the newest snapshot of the environment
    /// fetched from `repo` and test-restored against the counts stored with it. What it found,
    /// in one line, or why it failed.
    fn offsite_test_restore(
        &self,
        envdir: &EnvDir,
        repo: &Repository,
        require_counts: bool,
    ) -> Result<String, String> {
        let words = |e: Error| e.to_string();
        // A helper that cannot run here (no manager, Docker not answering) could not restore
        // the copy either: it is not downloaded for nothing.
        let stack = envdir.stack();
        self.manager(&stack)
            .and_then(|_| postgres_settings(self.client, &stack))
            .map_err(|e| {
                format!(
                    "restic check of {}: no errors; the off-site copy was not test-restored: {}",
                    repo.shown(),
                    words(e)
                )
            })?;
        let list = self.snapshot_list(envdir, repo).map_err(words)?;
        let Some(newest) = list.last() else {
            return Err(format!(
                "{} holds no backup of {} to test-restore",
                repo.shown(),
                envdir.env
            ));
        };
        let snapshot = format!(
            "snapshot {} ({})",
            newest.short_id,
            newest.time.format("%Y-%m-%dT%H:%M:%SZ")
        );
        if require_counts && backup::dump_in(newest).is_some_and(|(_, counts)| counts.is_none()) {
            return Err(format!(
                "the off-site {snapshot} holds no .counts file to compare the restored copy with"
            ));
        }
        let (_scratch, file) = self
            .fetch(envdir, repo, newest, "verify", true)
            .map_err(|e| format!("{snapshot}: {}", words(e)))?;
        self.test_restore(envdir, Some(file), require_counts)
            .map(|found| format!("{snapshot} test-restored: {found}"))
            .map_err(|e| format!("the off-site {snapshot}: {}", words(e)))
    }

    fn restore_from_repository(
        &self,
        env: &str,
        snapshot: Option<&str>,
        yes: bool,
        lock_wait: Duration,
    ) -> Result<(), Error> {
        let envdir = self.env(env)?;
        let stack = envdir.stack();
        let settings = self.backup_settings(&envdir)?;
        let Some(repo) = self.repository(&envdir, &settings)? else {
            return refused(format!(
                "--from-repository: BACKUP_REPOSITORY is not set for {env} (in {})",
                envdir.dir.join("deploy.env").display()
            ));
        };
        if !yes {
            return refused(format!(
                "this replaces ALL data of {stack}'s database with a backup from {}; run again with --yes to do it",
                repo.shown()
            ));
        }
        let list = self.snapshot_list(&envdir, &repo)?;
        let listing = || {
            list.iter()
                .map(|s| format!("{} {}", s.short_id, s.time.format("%Y-%m-%dT%H:%M:%SZ")))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let chosen = match snapshot {
            Some(id) => {
                let found: Vec<&backup::Snapshot> = list
                    .iter()
                    .filter(|s| id.len() >= 4 && s.id.starts_with(id))
                    .collect();
                match found[..] {
                    [one] => one,
                    [] => {
                        return refused(format!(
                            "no snapshot {id} of {env} in {} (its snapshots: {})",
                            repo.shown(),
                            listing()
                        ));
                    }
                    _ => {
                        return refused(format!(
                            "{id} names {} snapshots of {env}: give more of its id (its snapshots: {})",
                            found.len(),
                            listing()
                        ));
                    }
                }
            }
            None => list.last().ok_or_else(|| {
                Error::Refused(format!("{} holds no backup of {env}", repo.shown()))
            })?,
        };
        let (_scratch, file) = self.fetch(&envdir, &repo, chosen, "restore", false)?;
        self.restore(env, &file, yes, lock_wait)?;
        // This server now continues the repository's backups: the schedule copies there.
        let repository = repo.shown();
        let joined = format!(
            "restored from snapshot {} ({}) of {} at {}",
            chosen.short_id,
            chosen.time.format("%Y-%m-%dT%H:%M:%SZ"),
            repo.shown(),
            (self.local.now)().format("%Y-%m-%dT%H:%M:%SZ")
        );
        self.record(&envdir, |s| {
            s.joined = Some(joined);
            s.repository = Some(repository);
        })
    }

    /// The environment's snapshots in the repository (it must open), oldest first.
    fn snapshot_list(
        &self,
        envdir: &EnvDir,
        repo: &Repository,
    ) -> Result<Vec<backup::Snapshot>, Error> {
        self.open_repository(repo, false)?;
        let listed = self
            .restic(
                repo,
                &[
                    "snapshots",
                    "--json",
                    "--host",
                    &envdir.stack(),
                    "--tag",
                    &envdir.env,
                ],
            )
            .map_err(Error::Refused)?;
        backup::snapshots(&listed).map_err(Error::Refused)
    }

    /// `db snapshots ENV`: the environment's backups in its repository, oldest first.
    fn snapshots(&self, env: &str, out: &mut dyn Write) -> Result<(), Error> {
        let envdir = self.env(env)?;
        let settings = self.backup_settings(&envdir)?;
        let Some(repo) = self.repository(&envdir, &settings)? else {
            return refused(format!(
                "BACKUP_REPOSITORY is not set for {env} (in {})",
                envdir.dir.join("deploy.env").display()
            ));
        };
        let list = self.snapshot_list(&envdir, &repo)?;
        for s in &list {
            let dump = backup::dump_in(s).map_or("(no .dump)", |(d, _)| d);
            write_line(
                out,
                &format!(
                    "{}  {}  {dump}",
                    s.short_id,
                    s.time.format("%Y-%m-%dT%H:%M:%SZ")
                ),
            )?;
        }
        (self.say)(&format!(
            "{} snapshot(s) of {env} in {}",
            list.len(),
            repo.shown()
        ));
        Ok(())
    }

    fn restore(&self, env: &str, file: &Path, yes: bool, lock_wait: Duration) -> Result<(), Error> {
        let envdir = self.env(env)?;
        let stack = envdir.stack();
        let shown = file.display();
        match fs::File::open(file).and_then(|f| f.metadata()) {
            Ok(m) if m.is_file() && m.len() > 0 => {}
            Ok(m) if m.is_file() => return refused(format!("backup file '{shown}' is empty")),
            _ => {
                return refused(format!(
                    "backup file '{shown}' does not exist or cannot be read"
                ));
            }
        }
        if !yes {
            return refused(format!(
                "this replaces ALL data of {stack}'s database with {shown}; run again with --yes to do it"
            ));
        }
        if !envdir.dir.is_dir() {
            return refused(format!(
                "{} does not exist (no {env} deploy on this manager)",
                envdir.dir.display()
            ));
        }
        let file = file
            .canonicalize()
            .map_err(Error::io(format!("cannot resolve {shown}")))?;
        let (Some(dir), Some(base)) = (file.parent(), file.file_name().and_then(|n| n.to_str()))
        else {
            return refused(format!("{shown} is not a file name"));
        };
        let node = self.manager(&stack)?;
        let _lock = DeployLock::acquire(
            &envdir.dir,
            &format!("{env} deploy"),
            &self.local.owner,
            lock_wait,
            &mut |m: &str| (self.say)(m),
        )?;
        // No backup or test restore runs while the data is replaced.
        let _backup_lock = self.backup_lock(&envdir, env, lock_wait)?;
        // Read under the lock: a deploy that held it may have changed the services.
        let db = database(self.client, &stack)?;
        let before = restore_sql_before();
        let after = restore_sql_after();
        let mut spec = client_spec(
            &stack,
            &db,
            &format!("{stack}-ops-restore-{}", self.local.pid),
            "db-restore",
            &["-c", RESTORE_SCRIPT, "restore", base, &before, &after],
        );
        spec.node = Some(node);
        // The file's owner reads it (a backup is mode 0600): the caller's, or, for root, the
        // deploy user's.
        spec.user = Some({
            use std::os::unix::fs::MetadataExt;
            let (uid, gid) = fs::metadata(&file).map_or(self.local.ids, |m| (m.uid(), m.gid()));
            format!("{uid}:{gid}")
        });
        spec.mounts = vec![bind(dir, RESTORE_MOUNT, true)?];
        (self.say)(&format!(
            "restoring {} into the {env} database: writes are refused while it runs",
            file.display()
        ));
        (self.say)(&format!("helper {} ({})", spec.name, spec.image));
        let guard =
            HelperGuard {
                helper: Some(Helper::start(self.client, &spec).map_err(|e| {
                    Error::Refused(format!("could not start the restore helper: {e}"))
                })?),
                say: self.say,
            };
        let Some(helper) = guard.helper.as_ref() else {
            unreachable!("the guard was just given its helper")
        };
        let (result, mut output) = self.follow(helper, DUMP_LIMIT, &mut |l: &str| {
            (self.say)(&format!("  restore: {l}"));
        });
        if matches!(
            result,
            Err(HelperError::Interrupted { .. } | HelperError::TimedOut { .. })
        ) {
            // Stopped while it ran: its last words before its session ends with it.
            output = helper.logs();
        }
        drop(guard);
        let committed = output.lines().any(|l| l.trim() == "restore committed");
        let (from, until) = read_only_window(&output);
        match result {
            Ok(()) => match (from, until) {
                (Some(from), Some(until)) => {
                    (self.say)(&format!(
                        "restored {} into the {env} database; writes were refused from {from} until {until}",
                        file.display()
                    ));
                    Ok(())
                }
                _ => refused(format!(
                    "the restore helper ended without naming its read-only window{}",
                    if committed {
                        " (the restore was committed)"
                    } else {
                        ""
                    }
                )),
            },
            Err(e) => {
                let why = first_error(&output)
                    .map(str::to_owned)
                    .unwrap_or_else(|| e.to_string());
                let state = if committed {
                    "the restore was committed, then the helper failed"
                } else if from.is_some() {
                    "nothing was restored: its transaction rolled back and the database is unchanged"
                } else {
                    "nothing was restored: the database is unchanged"
                };
                refused(format!(
                    "restore of {} into the {env} database failed; {state}: {why}",
                    file.display()
                ))
            }
        }
    }

    /// Waits until a helper ended, showing each new line of its output as it comes (`docker
    /// service logs` every `step`). Returns how it ended and its whole output.
    fn follow(
        &self,
        helper: &Helper<'_, '_>,
        limit: Duration,
        show: &mut dyn FnMut(&str),
    ) -> (Result<(), HelperError>, String) {
        let started = Instant::now();
        let mut shown = 0;
        let mut output = String::new();
        let mut show_new = |output: &str, shown: &mut usize| {
            let lines: Vec<&str> = output.lines().filter(|l| !l.trim().is_empty()).collect();
            for line in lines.iter().skip(*shown) {
                show(line);
            }
            *shown = (*shown).max(lines.len());
        };
        loop {
            let step = Wait {
                limit: self.local.timing.step,
                poll: self.local.timing.poll,
                stop: self.stop,
            };
            let result = helper.finish(&step);
            match result {
                Err(HelperError::TimedOut { name, state, .. }) => {
                    output = helper.logs();
                    show_new(&output, &mut shown);
                    if started.elapsed() >= limit {
                        let e = HelperError::TimedOut {
                            name,
                            after: limit,
                            state,
                        };
                        return (Err(e), output);
                    }
                }
                Ok(()) | Err(HelperError::Failed { .. }) => {
                    output = helper.logs();
                    show_new(&output, &mut shown);
                    return (result, output);
                }
                Err(e) => return (Err(e), output),
            }
        }
    }

    fn tunnel(
        &self,
        env: &str,
        port: u16,
        duration: Option<Duration>,
        out: &mut dyn Write,
    ) -> Result<(), Error> {
        let envdir = self.env(env)?;
        let stack = envdir.stack();
        let node = self.manager(&stack)?;
        if (self.local.in_use)(port) {
            return refused(format!(
                "127.0.0.1:{port} is already in use: choose another with --port"
            ));
        }
        let db = database(self.client, &stack)?;
        let pid = self.local.pid;
        let timing = self.local.timing;
        let net = format!("{stack}-ops-tunnel-{pid}");

        // The login: the password the backend uses now, copied by a helper pinned here into a
        // fresh private directory (never into a log), made into a passfile.
        let private = PrivateDir::create(&self.local.private_base, &net, self.say)?;
        let mut pass = client_spec(
            &stack,
            &db,
            &format!("{stack}-ops-tunnel-pass-{pid}"),
            "db-tunnel",
            &["-c", PASS_SCRIPT],
        );
        pass.node = Some(node);
        pass.mounts = vec![bind(&private.path, PASS_MOUNT, false)?];
        helper::run(
            self.client,
            &pass,
            &self.wait(timing.start),
            &mut |l: &str| (self.say)(l),
        )
        .map_err(|e| Error::Refused(format!("could not read the {env} database password: {e}")))?;
        let password =
            (self.local.take_password)(&private.password_file()).map_err(Error::io(format!(
                "the helper left no password in {}",
                private.password_file().display()
            )))?;
        let passfile = private.write_passfile(port, &db, &password)?;

        self.client
            .run(&Call::write([
                "network",
                "create",
                "--driver",
                "overlay",
                "--attachable",
                "--label",
                &format!("{PROJECT}.ops-helper=db-tunnel"),
                &net,
            ]))
            .map_err(|e| Error::Refused(format!("cannot create the tunnel network {net}: {e}")))?;
        let _network = NetworkGuard {
            client: self.client,
            name: net.clone(),
            poll: timing.poll,
            say: self.say,
        };

        let forwarder = Spec {
            name: net.clone(),
            what: "db-tunnel".to_owned(),
            image: db.image.clone(),
            entrypoint: Some("perl".to_owned()),
            args: ["-e", FORWARD, "5432", "postgres", "5432"]
                .map(str::to_owned)
                .to_vec(),
            networks: vec![format!("{stack}_data"), net.clone()],
            user: Some("65534".to_owned()),
            ..Spec::default()
        };
        let guard =
            HelperGuard {
                helper: Some(Helper::start(self.client, &forwarder).map_err(|e| {
                    Error::Refused(format!("could not start the tunnel helper: {e}"))
                })?),
                say: self.say,
            };
        let Some(helper) = guard.helper.as_ref() else {
            unreachable!("the guard was just given its helper")
        };
        helper
            .running(&self.wait(timing.start))
            .map_err(|e| Error::Refused(format!("the tunnel helper did not start: {e}")))?;
        (self.say)(&format!("helper {net} runs ({})", db.image));

        let local = format!("{net}-local");
        let _local = ContainerGuard {
            client: self.client,
            name: local.clone(),
            say: self.say,
        };
        self.client
            .run(&Call::write([
                "run",
                "-d",
                "--name",
                &local,
                "--label",
                &format!("{PROJECT}.ops-helper=db-tunnel"),
                "--network",
                &net,
                "-p",
                &format!("127.0.0.1:{port}:5432"),
                "--read-only",
                "--cap-drop",
                "ALL",
                "--init",
                "--user",
                "65534",
                "--entrypoint",
                "perl",
                &db.image,
                "-e",
                FORWARD,
                "5432",
                &net,
                "5432",
            ]))
            .map_err(|e| {
                Error::Refused(format!(
                    "cannot start the local forwarder on 127.0.0.1:{port}: {e}"
                ))
            })?;

        let started = Instant::now();
        while !(self.local.answers)(port) {
            if started.elapsed() >= timing.start {
                return refused(format!(
                    "the {env} database does not answer through 127.0.0.1:{port} after {}s: {}",
                    timing.start.as_secs(),
                    self.container_logs(&local)
                ));
            }
            if !self.sleep(timing.poll) {
                (self.say)("interrupted: closing the tunnel");
                return Ok(());
            }
        }
        (self.say)(&format!(
            "tunnel open: 127.0.0.1:{port} on this manager -> {stack} postgres:5432"
        ));
        (self.say)(&format!(
            "the login is in {} (mode 0600, removed when the tunnel closes); on this manager:",
            passfile.display()
        ));
        let login = format!(
            "PGPASSFILE={} psql \"host=127.0.0.1 port={port} user={} dbname={}\"",
            passfile.display(),
            db.user,
            db.name
        );
        (self.say)(&format!("  {login}"));
        (self.say)(&format!(
            "from a workstation: ssh -N -L {port}:127.0.0.1:{port} <user>@<this manager>, and a copy of that passfile (scp, chmod 0600)"
        ));
        (self.say)(&format!(
            "{}Ctrl-C closes the tunnel",
            duration
                .map(|d| format!("closing in {}s; ", d.as_secs()))
                .unwrap_or_default()
        ));
        write_line(out, &format!("ready 127.0.0.1:{port}"))?;
        write_line(out, &login)?;

        let deadline = duration.map(|d| Instant::now() + d);
        loop {
            let pause = match deadline {
                Some(end) => {
                    let left = end.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        (self.say)(&format!(
                            "closing the tunnel after {}s",
                            duration.unwrap_or_default().as_secs()
                        ));
                        return Ok(());
                    }
                    timing.check.min(left)
                }
                None => timing.check,
            };
            if !self.sleep(pause) {
                (self.say)("interrupted: closing the tunnel");
                return Ok(());
            }
            let running = self
                .client
                .run(&Call::read([
                    "inspect",
                    local.as_str(),
                    "--format",
                    "{{.State.Running}}",
                ]))
                .map(|s| s.trim() == "true")
                .unwrap_or(false);
            if !running {
                return refused(format!(
                    "the local forwarder {local} stopped: {}",
                    self.container_logs(&local)
                ));
            }
            let state = self
                .client
                .lines(&Call::read([
                    "service",
                    "ps",
                    net.as_str(),
                    "--no-trunc",
                    "--format",
                    "{{.CurrentState}}|{{.Error}}",
                ]))
                .map(|l| l.into_iter().next().unwrap_or_default())
                .unwrap_or_default();
            if helper::task_state(&state) != TaskState::Running {
                return refused(format!(
                    "the helper {net} stopped: {}",
                    if state.is_empty() { "no task" } else { &state }
                ));
            }
        }
    }

    /// The last lines a container printed, on one line.
    fn container_logs(&self, name: &str) -> String {
        self.client
            .run(&Call::read(["logs", "--tail", "5", name]))
            .map(|s| s.lines().collect::<Vec<_>>().join(" | "))
            .unwrap_or_else(|e| e.to_string())
    }

    /// psql's own exit status is the command's.
    fn console(&self, env: &str) -> Result<Outcome, Error> {
        let envdir = self.env(env)?;
        let stack = envdir.stack();
        self.manager(&stack)?;
        let (_, user, name) = postgres_settings(self.client, &stack)?;
        let service = format!("{stack}_postgres");
        let containers = self.client.lines(&Call::read([
            "ps",
            "-q",
            "--filter",
            &format!("label=com.docker.swarm.service.name={service}"),
            "--filter",
            "status=running",
        ]))?;
        let Some(container) = containers.first() else {
            let nodes = self.client.lines(&Call::read([
                "service",
                "ps",
                service.as_str(),
                "--filter",
                "desired-state=running",
                "--format",
                "{{.Node}}",
            ]))?;
            return match nodes.first() {
                Some(node) => refused(format!(
                    "the {env} database runs on node {node}, not on this one: the console needs its container on this node (on {node}: docker exec -it <its container> psql -U {user} -d {name}); from this manager, stackship db tunnel {env}"
                )),
                None => refused(format!(
                    "the {env} database has no running task (docker service ps {service})"
                )),
            };
        };
        (self.say)(&format!(
            "psql as {user} on {name}, in {service}'s container {container} on this node"
        ));
        let call = Call::write(console_args(container, &user, &name, self.local.terminals));
        Ok(Outcome::Exited(self.client.run_attached(&call)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::Engine;
    use crate::docker::fake::FakeEngine;

    use std::cell::{Cell, RefCell};

    const PG_INSPECT: &str = r#"[{"Spec":{"TaskTemplate":{"ContainerSpec":{
        "Image":"127.0.0.1:5000/postgres:15@sha256:abc",
        "Env":["PGDATA=/var/lib/postgresql/data","POSTGRES_DB=backend","POSTGRES_USER=backend"]}}}}]"#;
    const BACKEND_INSPECT: &str = r#"[{"Spec":{"TaskTemplate":{"ContainerSpec":{
        "Image":"r/backend:t",
        "Secrets":[{"File":{"Name":"tls.key"},"SecretName":"k"},
                   {"File":{"Name":"db_password"},"SecretName":"stackship-prod-db-password-v3"}]}}}}]"#;

    /// A database of its own on the throwaway PostgreSQL scripts/test.sh starts (DATABASE_URL),
    /// dropped when it goes; libpq's environment to reach it and the password in a file.
    struct ScratchDb {
        url: String,
        name: String,
        env: Vec<(String, String)>,
        _dir: tempfile::TempDir,
    }

    impl ScratchDb {
        fn new(name: &str) -> Self {
            let url = std::env::var("DATABASE_URL").expect(
                "DATABASE_URL is not set: these tests need the throwaway PostgreSQL that scripts/test.sh starts",
            );
            // postgres://USER:PASSWORD@HOST:PORT/DB, as scripts/test.sh gives it.
            let form = "DATABASE_URL as postgres://USER:PASSWORD@HOST:PORT/DB (scripts/test.sh's)";
            let rest = url
                .strip_prefix("postgres://")
                .or_else(|| url.strip_prefix("postgresql://"))
                .expect(form);
            let (auth, place) = rest.split_once('@').expect(form);
            let (user, password) = auth.split_once(':').expect(form);
            let (host, port) = place
                .split('/')
                .next()
                .and_then(|p| p.split_once(':'))
                .expect(form);
            let dir = tempfile::tempdir().unwrap();
            let password_file = dir.path().join("db_password");
            fs::write(&password_file, password).unwrap();
            let name = format!("{name}_{}", std::process::id());
            let db = ScratchDb {
                url: url.clone(),
                name: name.clone(),
                env: vec![
                    ("PGHOST".into(), host.into()),
                    ("PGPORT".into(), port.into()),
                    ("PGUSER".into(), user.into()),
                    ("PGDATABASE".into(), name.clone()),
                    (
                        "STACKSHIP_DB_PASSWORD_FILE".into(),
                        password_file.display().to_string(),
                    ),
                ],
                _dir: dir,
            };
            db.admin(&format!("DROP DATABASE IF EXISTS {name}"));
            db.admin(&format!("CREATE DATABASE {name}"));
            db
        }

        fn admin(&self, sql: &str) {
            self.psql(&self.url, sql);
        }

        fn sql(&self, sql: &str) {
            let url = format!("{}/{}", self.url.rsplit_once('/').unwrap().0, self.name);
            self.psql(&url, sql);
        }

        fn psql(&self, url: &str, sql: &str) {
            let out = std::process::Command::new("psql")
                .args([
                    "--no-psqlrc",
                    "--quiet",
                    "--set=ON_ERROR_STOP=1",
                    url,
                    "-c",
                    sql,
                ])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{sql}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    impl Drop for ScratchDb {
        fn drop(&mut self) {
            let _ = std::process::Command::new("psql")
                .args([
                    "--no-psqlrc",
                    "--quiet",
                    &self.url,
                    "-c",
                    &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
                ])
                .output();
        }
    }

    /// The dump helper's script itself, on a real database: the dump reads back, and the
    /// counts beside it are those of the dump's snapshot, with the newest migration.
    #[test]
    fn the_backup_script_dumps_and_counts_the_same_snapshot() {
        let db = ScratchDb::new("stackship_backup_script");
        db.sql(
            "CREATE TABLE public.log_entries (id bigserial PRIMARY KEY, message text);
             INSERT INTO public.log_entries (message) SELECT 'm' || g FROM generate_series(1, 5) g;
             CREATE TABLE public._sqlx_migrations (version bigint PRIMARY KEY, success boolean);
             INSERT INTO public._sqlx_migrations VALUES (20261122000001, true), (20261207000001, true);
             CREATE TABLE public.backup_status (kind text PRIMARY KEY);
             INSERT INTO public.backup_status VALUES ('backup');",
        );
        let dir = tempfile::tempdir().unwrap();
        let run = |dump: &str, counts: &str| {
            std::process::Command::new("sh")
                .args(["-c", &backup_script(), "backup", dump, counts])
                .envs(db.env.iter().cloned())
                .env("STACKSHIP_BACKUP_DIR", dir.path())
                .output()
                .unwrap()
        };
        let out = run("b.dump", "b.counts");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let dump = dir.path().join("b.dump");
        assert_eq!(
            fs::metadata(&dump).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let manifest =
            Manifest::parse(&fs::read_to_string(dir.path().join("b.counts")).unwrap()).unwrap();
        assert_eq!(
            manifest.tables,
            BTreeMap::from([
                ("public._sqlx_migrations".to_owned(), 2),
                ("public.log_entries".to_owned(), 5),
            ])
        );
        assert_eq!(manifest.migration.as_deref(), Some("20261207000001"));
        assert!(!dir.path().join("b.dump.ok").exists());
        // A database that is not there: the helper fails in the server's words.
        let gone = db.env.iter().map(|(k, v)| match k.as_str() {
            "PGDATABASE" => (k.clone(), "no_such_database".to_owned()),
            _ => (k.clone(), v.clone()),
        });
        let out = std::process::Command::new("sh")
            .args(["-c", &backup_script(), "backup", "c.dump", "c.counts"])
            .envs(gone)
            .env("STACKSHIP_BACKUP_DIR", dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success());
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.contains("database \"no_such_database\" does not exist"),
            "{said}"
        );
        assert!(!dir.path().join("c.dump").exists());
    }

    #[test]
    fn process_ids_are_those_of_what_it_makes() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let made = fs::metadata(dir.path()).unwrap();
        assert_eq!(process_ids(), (made.uid(), made.gid()));
    }

    /// `dir`'s owner ids, after giving it to another user (4242:4243) when it is root's: the
    /// tests run as root, as CI runs them.
    fn owned_by_another_user(dir: &Path) -> (u32, u32) {
        use std::os::unix::fs::MetadataExt;
        let owner = fs::metadata(dir).unwrap();
        if owner.uid() != 0 {
            return (owner.uid(), owner.gid());
        }
        std::os::unix::fs::chown(dir, Some(4242), Some(4243)).unwrap();
        (4242, 4243)
    }

    #[test]
    fn root_runs_restic_as_the_owner_of_the_environment_directory() {
        let (root, env_dir) = backup_env("BACKUP_REPOSITORY=/srv/restic/prod\n");
        let (uid, gid) = owned_by_another_user(&env_dir);
        // Its home as the code finds it: /etc/passwd's, else the environment directory.
        let home = fs::read_to_string("/etc/passwd")
            .ok()
            .and_then(|passwd| home_of(&passwd, uid))
            .unwrap_or_else(|| env_dir.clone());
        for (ids, expected) in [((0, 0), Some((uid, gid, home.clone()))), ((uid, gid), None)] {
            let seen = RefCell::new(Vec::new());
            let restic = |r: &Repository, args: &[&str]| {
                seen.borrow_mut().push(r.run_as.clone());
                match args[0] {
                    "snapshots" => Ok("[]".to_owned()),
                    _ => Ok(String::new()),
                }
            };
            let local = Local {
                restic: &restic,
                ids,
                ..local(root.path())
            };
            let (r, _, _) = exec_with(
                root.path(),
                &swarm(),
                &local,
                &never,
                &["snapshots", "prod"],
            );
            r.unwrap();
            let seen = seen.into_inner();
            assert!(!seen.is_empty());
            assert!(seen.iter().all(|s| *s == expected), "{ids:?}: {seen:?}");
        }
    }

    /// restic itself (Debian's package; scripts/test.sh installs it): the password file and the
    /// location reach it, and its answers come back as they are, from stdout or stderr.
    #[test]
    fn restic_runs_on_the_repository_and_answers_in_its_own_words() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = dir.path().join("secrets");
        fs::create_dir(&secrets).unwrap();
        let password = secrets.join(backup::PASSWORD_FILE);
        fs::write(&password, "first password").unwrap();
        let location = dir.path().join("repo").display().to_string();
        let repo = Repository::new(&location, &secrets, Some(dir.path().join("cache"))).unwrap();
        let e = run_restic(&repo, &["snapshots", "--json"]).unwrap_err();
        assert!(backup::no_repository_yet(&e), "{e}");
        let created = run_restic(&repo, &["init"]).unwrap();
        assert!(created.contains(&location), "{created}");
        assert_eq!(
            run_restic(&repo, &["snapshots", "--json"]).unwrap().trim(),
            "[]"
        );
        fs::write(&password, "another password").unwrap();
        let e = run_restic(&repo, &["snapshots"]).unwrap_err();
        assert!(e.contains("wrong password or no key found"), "{e}");
        // No restic, or one that cannot run: said so, as restic's own failures are.
        let e = restic_at(&dir.path().join("no-restic"), &repo, &["version"]).unwrap_err();
        assert!(
            e.starts_with("Fatal: restic is not installed on this manager"),
            "{e}"
        );
        let e = restic_at(&password, &repo, &["version"]).unwrap_err();
        assert!(e.starts_with("Fatal: cannot run restic: "), "{e}");
    }

    /// A fake swarm with prod's services; helpers complete unless told otherwise.
    fn swarm() -> FakeEngine {
        let fake = FakeEngine::new();
        fake.answer(&["info"], "true|node-1\n");
        fake.answer(
            &["service", "inspect", "stackship-prod_postgres"],
            PG_INSPECT,
        );
        fake.answer(
            &["service", "inspect", "stackship-prod_backend"],
            BACKEND_INSPECT,
        );
        fake.answer(&["service", "rm"], "");
        fake.answer(&["ps", "-aq"], "");
        fake
    }

    /// [`swarm`] where every helper runs to its end, with `logs` as its output.
    fn helpers_complete(logs: &str) -> FakeEngine {
        let fake = swarm();
        fake.answer(&["service", "create"], "");
        fake.answer(&["service", "ps"], "Complete 1s|");
        fake.answer(&["service", "logs"], logs);
        fake
    }

    fn never() -> bool {
        false
    }

    fn no_port(_: u16) -> bool {
        false
    }

    fn yes_port(_: u16) -> bool {
        true
    }

    /// The password the fake password helper "copied".
    fn password(path: &Path) -> std::io::Result<String> {
        assert_eq!(path.file_name().unwrap(), "password");
        Ok("s3:cr\\t\n".to_owned())
    }

    fn quick() -> Timing {
        Timing {
            poll: Duration::from_millis(1),
            step: Duration::from_millis(5),
            check: Duration::from_millis(2),
            start: Duration::from_millis(200),
            slice: Duration::from_millis(1),
        }
    }

    fn local(base: &Path) -> Local<'static> {
        Local {
            pid: 42,
            timing: quick(),
            private_base: base.to_owned(),
            in_use: &no_port,
            answers: &yes_port,
            terminals: (false, false),
            take_password: &password,
            owner: "pid 42 on test".to_owned(),
            ids: (1001, 1002),
            settings_env: BTreeMap::new(),
            restic: &no_restic,
            now: &fixed_now,
        }
    }

    fn no_restic(_: &Repository, args: &[&str]) -> Result<String, String> {
        panic!("restic was run without a repository: {args:?}")
    }

    fn fixed_now() -> DateTime<Utc> {
        "2026-12-06T10:00:00Z".parse().unwrap()
    }

    fn cli(args: &[&str]) -> DbCommand {
        #[derive(clap::Parser)]
        struct Top {
            #[command(subcommand)]
            db: DbCommand,
        }
        <Top as clap::Parser>::try_parse_from(std::iter::once("db").chain(args.iter().copied()))
            .unwrap()
            .db
    }

    /// Runs a command; its progress lines and stdout.
    fn exec_with(
        root: &Path,
        engine: &dyn Engine,
        local: &Local<'_>,
        stop: &dyn Fn() -> bool,
        args: &[&str],
    ) -> (Result<Outcome, Error>, Vec<String>, String) {
        let lines = RefCell::new(Vec::new());
        let say = |m: &str| lines.borrow_mut().push(m.to_owned());
        let mut out = Vec::new();
        let client = Client::new(engine);
        let r = execute(root, cli(args), &client, local, stop, &say, &mut out);
        (r, lines.into_inner(), String::from_utf8(out).unwrap())
    }

    #[test]
    fn the_restore_lock_is_the_backends() {
        assert_eq!(RESTORE_LOCK_KEY, 6_004_507_024_426_357_588);
        assert_eq!(&RESTORE_LOCK_KEY.to_be_bytes(), b"STKSREST");
    }

    #[test]
    fn the_command_line() {
        assert!(matches!(
            cli(&["backup", "prod"]),
            DbCommand::Backup {
                keep: None,
                dir: None,
                ..
            }
        ));
        assert!(matches!(
            cli(&[
                "restore",
                "prod",
                "--from-repository",
                "--snapshot",
                "1a2b3c4d",
                "--yes"
            ]),
            DbCommand::Restore {
                file: None,
                from_repository: true,
                snapshot: Some(_),
                ..
            }
        ));
        assert!(matches!(
            cli(&["verify", "prod"]),
            DbCommand::Verify { file: None, .. }
        ));
        assert!(matches!(cli(&["check", "prod"]), DbCommand::Check { .. }));
        assert!(matches!(
            cli(&["scheduled", "prod"]),
            DbCommand::Scheduled { .. }
        ));
        assert!(matches!(
            cli(&["restore", "prod", "/b/x.dump", "--yes"]),
            DbCommand::Restore {
                yes: true,
                lock_wait: 900,
                ..
            }
        ));
        assert!(matches!(
            cli(&["tunnel", "prod", "--for", "5"]),
            DbCommand::Tunnel {
                port: 15432,
                duration: Some(5),
                ..
            }
        ));
        #[derive(clap::Parser, Debug)]
        struct Top {
            #[command(subcommand)]
            _db: DbCommand,
        }
        for bad in [
            &["backup", "prod", "--keep", "0"][..],
            &["tunnel", "prod", "--port", "0"],
            &["tunnel", "prod", "--port", "65536"],
            &["tunnel", "prod", "--for", "0"],
            &["restore", "prod"],
            &["restore", "prod", "/b/x.dump", "--from-repository"],
            &["restore", "prod", "/b/x.dump", "--snapshot", "1a2b"],
            &["check"],
            &["console"],
        ] {
            assert!(
                <Top as clap::Parser>::try_parse_from(
                    std::iter::once("db").chain(bad.iter().copied())
                )
                .is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_database_clients_settings_come_from_the_running_services() {
        let fake = swarm();
        let db = database(&Client::new(&fake), "stackship-prod").unwrap();
        assert_eq!(
            db,
            Database {
                image: "127.0.0.1:5000/postgres:15@sha256:abc".into(),
                user: "backend".into(),
                name: "backend".into(),
                password_secret: "stackship-prod-db-password-v3".into(),
            }
        );
        // Postgres's defaults when the service sets neither variable.
        let fake = FakeEngine::new();
        fake.answer(
            &["service", "inspect", "s_postgres"],
            r#"[{"Spec":{"TaskTemplate":{"ContainerSpec":{"Image":"pg:15","Env":["POSTGRES_DB="]}}}}]"#,
        );
        fake.answer(
            &["service", "inspect", "s_backend"],
            r#"[{"Spec":{"TaskTemplate":{"ContainerSpec":{"Image":"b"}}}}]"#,
        );
        let client = Client::new(&fake);
        assert_eq!(
            postgres_settings(&client, "s").unwrap(),
            ("pg:15".into(), "postgres".into(), "postgres".into())
        );
        let e = database(&client, "s").unwrap_err();
        assert_eq!(
            e.to_string(),
            "service s_backend mounts no secret at db_password"
        );
        let fake = FakeEngine::new();
        fake.fail(
            &["service", "inspect"],
            "Error: No such service: s_postgres",
        );
        let e = database(&Client::new(&fake), "s").unwrap_err();
        assert_eq!(
            e.to_string(),
            "service s_postgres does not exist (is s deployed?)"
        );
        // Any other failure of Docker is that failure, not a missing service.
        let fake = FakeEngine::new();
        fake.fail(
            &["service", "inspect"],
            "permission denied while trying to connect to the Docker daemon socket",
        );
        let e = database(&Client::new(&fake), "s").unwrap_err();
        assert!(
            matches!(e, Error::Docker(DockerError::Failed { .. })),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .ends_with("permission denied while trying to connect to the Docker daemon socket"),
            "{e}"
        );
    }

    #[test]
    fn a_database_helper_runs_postgres_image_with_the_backends_password() {
        let fake = swarm();
        let db = database(&Client::new(&fake), "stackship-prod").unwrap();
        let mut spec = client_spec("stackship-prod", &db, "n", "db-backup", &["-c", "x"]);
        spec.node = Some("node-1".into());
        spec.mounts = vec![bind(Path::new("/srv/b"), BACKUP_MOUNT, false).unwrap()];
        let line = spec.create_call().command_line();
        for part in [
            "--label stackship.ops-helper=db-backup",
            "--network stackship-prod_data",
            "--secret source=stackship-prod-db-password-v3,target=db_password,uid=0,gid=0,mode=0400",
            "--env PGHOST=postgres --env PGUSER=backend --env PGDATABASE=backend",
            "--constraint node.id==node-1",
            "--mount type=bind,source=/srv/b,target=/backup",
            "--entrypoint bash 127.0.0.1:5000/postgres:15@sha256:abc -c x",
        ] {
            assert!(line.contains(part), "{part} missing: {line}");
        }
        assert_eq!(
            bind(Path::new("/r"), RESTORE_MOUNT, true).unwrap(),
            "type=bind,source=/r,target=/restore,readonly"
        );
        assert!(bind(Path::new("/a,b"), "/x", false).is_err());
    }

    #[test]
    fn old_backups_beyond_keep_are_removed_newest_kept_others_untouched() {
        let names: Vec<String> = [
            "stackship-prod-20261201T000000Z.dump",
            "stackship-prod-20261203T000000Z.dump",
            "stackship-prod-20261202T000000Z.dump",
            ".stackship-prod-20261204T000000Z.dump.partial",
            "stackship-prod-manual.dump",
            "stackship-dev-20261101T000000Z.dump",
            "stackship-prod-20261205T00000Z.dump",
        ]
        .map(str::to_owned)
        .to_vec();
        assert_eq!(
            backups_to_remove(&names, "stackship-prod", 1),
            vec![
                "stackship-prod-20261202T000000Z.dump",
                "stackship-prod-20261201T000000Z.dump"
            ]
        );
        assert_eq!(
            backups_to_remove(&names, "stackship-prod", 2),
            vec!["stackship-prod-20261201T000000Z.dump"]
        );
        assert!(backups_to_remove(&names, "stackship-prod", 3).is_empty());
        assert!(is_backup(
            "stackship-dev-20261101T000000Z.dump",
            "stackship-dev"
        ));
        assert!(!is_backup(
            "stackship-dev-2026110100000Z.dump",
            "stackship-dev"
        ));
        assert!(!is_backup(
            "stackship-dev-20261101X000000Z.dump",
            "stackship-dev"
        ));
    }

    #[test]
    fn a_backup_is_named_only_once_it_reads_back_and_the_oldest_go() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        for old in [
            "stackship-prod-20200101T000000Z.dump",
            "stackship-prod-20200102T000000Z.dump",
            "stackship-dev-20200101T000000Z.dump",
            "notes.txt",
        ] {
            fs::write(dir.join(old), "old").unwrap();
        }
        let partial = dir.join(".stackship-prod-20261206T100000Z.dump.partial");
        let path = dir.join("stackship-prod-20261206T100000Z.dump");
        let said = RefCell::new(Vec::new());
        let say = |m: &str| said.borrow_mut().push(m.to_owned());
        // Nothing written: refused, nothing removed.
        let e = keep_backup(&partial, &path, "stackship-prod", 2, &say).unwrap_err();
        assert!(e.to_string().ends_with("is missing or empty"), "{e}");
        fs::write(&partial, "").unwrap();
        assert!(keep_backup(&partial, &path, "stackship-prod", 2, &say).is_err());
        assert_eq!(fs::read_dir(dir).unwrap().count(), 5);

        fs::write(&partial, "PGDMP").unwrap();
        fs::set_permissions(&partial, fs::Permissions::from_mode(0o644)).unwrap();
        keep_backup(&partial, &path, "stackship-prod", 2, &say).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "PGDMP");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let mut left: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "notes.txt",
                "stackship-dev-20200101T000000Z.dump",
                "stackship-prod-20200102T000000Z.dump",
                "stackship-prod-20261206T100000Z.dump",
            ]
        );
        assert_eq!(
            *said.borrow(),
            [
                format!("backup written: {} (5 bytes)", path.display()),
                "removed old backup stackship-prod-20200101T000000Z.dump".to_owned(),
            ]
        );
    }

    #[test]
    fn a_backup_helper_is_pinned_here_with_the_directory_and_always_removed() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("b");
        // The helper "succeeds" without writing anything: refused, after its removal.
        let fake = helpers_complete("");
        let (r, lines, out) = exec_with(
            root.path(),
            &fake,
            &local(root.path()),
            &never,
            &[
                "backup",
                "prod",
                "--dir",
                dir.to_str().unwrap(),
                "--keep",
                "2",
            ],
        );
        let e = r.unwrap_err().to_string();
        assert!(e.starts_with("the helper reported success but "), "{e}");
        assert!(out.is_empty());
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert!(
            lines[0].starts_with(&format!(
                "dumping the prod database into {}/stackship-prod-",
                dir.canonicalize().unwrap().display()
            )),
            "{lines:?}"
        );
        let writes = fake.writes();
        // The backup helper, then the one that writes the (failed) run for /metrics.
        assert_eq!(writes.len(), 4, "{writes:?}");
        assert!(
            writes[2].contains("--name stackship-prod-ops-status-42"),
            "{}",
            writes[2]
        );
        assert!(
            writes[2].contains("('backup', NULL, '2026-12-06T10:00:00+00:00'::timestamptz, false)"),
            "{}",
            writes[2]
        );
        assert_eq!(writes[3], "docker service rm stackship-prod-ops-status-42");
        for part in [
            "--name stackship-prod-ops-backup-42",
            "--label stackship.ops-helper=db-backup",
            "--constraint node.id==node-1",
            "--secret source=stackship-prod-db-password-v3,target=db_password",
            &format!(
                "--mount type=bind,source={},target=/backup ",
                dir.canonicalize().unwrap().display()
            ),
            "--entrypoint bash 127.0.0.1:5000/postgres:15@sha256:abc -c ",
        ] {
            assert!(writes[0].contains(part), "{part}: {}", writes[0]);
        }
        let mut args = writes[0].rsplit(' ');
        let counts = args.next().unwrap().to_owned();
        let partial = args.next().unwrap().to_owned();
        assert!(partial.starts_with(".stackship-prod-") && partial.ends_with(".dump.partial"));
        assert_eq!(
            counts,
            partial.replace(".dump.partial", ".dump.counts.partial")
        );
        assert!(writes[0].contains("--user 1001:1002"), "{}", writes[0]);
        assert_eq!(writes[1], "docker service rm stackship-prod-ops-backup-42");
    }

    #[test]
    fn a_failed_or_interrupted_backup_leaves_no_helper_and_no_partial_file() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("b");
        fs::create_dir(&dir).unwrap();
        // What the helper would have left half-written, in the second the fake clock says and
        // the ones after it.
        let now = fixed_now();
        let candidates: Vec<PathBuf> = (0..10)
            .map(|s| {
                let t = now + chrono::Duration::seconds(s);
                dir.join(format!(
                    ".stackship-prod-{}.dump.partial",
                    t.format("%Y%m%dT%H%M%SZ")
                ))
            })
            .collect();
        for c in &candidates {
            fs::write(c, "half").unwrap();
        }
        let fake = swarm();
        fake.answer(&["service", "create"], "");
        fake.answer(&["service", "ps"], "Failed 1s|task: non-zero exit (1)");
        fake.answer(
            &["service", "logs"],
            "pg_dump: error: connection to server failed\n",
        );
        let (r, lines, out) = exec_with(
            root.path(),
            &fake,
            &local(root.path()),
            &never,
            &["backup", "prod", "--dir", dir.to_str().unwrap()],
        );
        let e = r.unwrap_err();
        assert!(
            e.to_string().starts_with(
                "pg_dump of the prod database failed: helper stackship-prod-ops-backup-42 failed (exit 1)"
            ),
            "{e}"
        );
        assert!(
            lines.contains(&"  db-backup: pg_dump: error: connection to server failed".to_owned()),
            "{lines:?}"
        );
        assert!(out.is_empty());
        let partial = fake.writes()[0].rsplit(' ').nth(1).unwrap().to_owned();
        assert!(candidates.contains(&dir.join(&partial)), "{partial}");
        assert!(!dir.join(&partial).exists(), "{partial} was left");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), candidates.len() - 1);
        assert_eq!(
            fake.writes()[1],
            "docker service rm stackship-prod-ops-backup-42"
        );

        // Interrupted while the task is pending: removed too.
        let fake = swarm();
        fake.answer(&["service", "create"], "");
        fake.answer(&["service", "ps"], "Pending 1s|");
        let (r, _, _) = exec_with(
            root.path(),
            &fake,
            &local(root.path()),
            &|| true,
            &["backup", "prod", "--dir", dir.to_str().unwrap()],
        );
        assert!(
            r.unwrap_err()
                .to_string()
                .contains("interrupted while helper")
        );
        assert_eq!(
            fake.writes().last().unwrap(),
            "docker service rm stackship-prod-ops-backup-42"
        );
    }

    /// An environment directory with a backup file in it.
    fn restore_setup() -> (tempfile::TempDir, PathBuf) {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("prod")).unwrap();
        let file = root.path().join("prod/x.dump");
        fs::write(&file, "PGDMP").unwrap();
        (root, file)
    }

    #[test]
    fn restore_refusals_touch_nothing() {
        let (root, file) = restore_setup();
        let f = file.to_str().unwrap();
        let fake = FakeEngine::new();
        let l = local(root.path());
        let empty = root.path().join("prod/empty.dump");
        fs::write(&empty, "").unwrap();
        for (args, message) in [
            (
                vec!["restore", "prod", f],
                format!(
                    "this replaces ALL data of stackship-prod's database with {f}; run again with --yes to do it"
                ),
            ),
            (
                vec!["restore", "prod", "/nonexistent/x.dump", "--yes"],
                "backup file '/nonexistent/x.dump' does not exist or cannot be read".to_owned(),
            ),
            (
                vec!["restore", "prod", root.path().to_str().unwrap(), "--yes"],
                format!(
                    "backup file '{}' does not exist or cannot be read",
                    root.path().display()
                ),
            ),
            (
                vec!["restore", "prod", empty.to_str().unwrap(), "--yes"],
                format!("backup file '{}' is empty", empty.display()),
            ),
            (
                vec!["restore", "../prod", f, "--yes"],
                "'../prod' is not an environment name (lower-case letters, digits and -)"
                    .to_owned(),
            ),
            (
                vec!["restore", "dev", f, "--yes"],
                format!(
                    "{} does not exist (no dev deploy on this manager)",
                    root.path().join("dev").display()
                ),
            ),
        ] {
            let (r, _, _) = exec_with(root.path(), &fake, &l, &never, &args);
            let e = r.unwrap_err();
            assert_eq!(e.to_string(), message);
            assert_eq!(e.outcome(), Outcome::NothingChanged);
        }
        assert!(fake.calls().is_empty(), "{:?}", fake.command_lines());
        assert!(!root.path().join("prod/deploy.lock").exists());
    }

    #[test]
    fn the_restore_waits_for_the_deploy_lock_before_any_helper() {
        let (root, file) = restore_setup();
        let _held = DeployLock::acquire(
            &root.path().join("prod"),
            "prod deploy",
            "pid 7 deploying",
            Duration::ZERO,
            &mut |_| {},
        )
        .unwrap();
        let fake = swarm();
        let (r, lines, _) = exec_with(
            root.path(),
            &fake,
            &local(root.path()),
            &never,
            &[
                "restore",
                "prod",
                file.to_str().unwrap(),
                "--yes",
                "--lock-wait",
                "0",
            ],
        );
        let e = r.unwrap_err().to_string();
        assert!(e.contains("still held after 0s by: pid 7 deploying"), "{e}");
        assert!(lines[0].contains("another prod deploy holds"), "{lines:?}");
        assert!(fake.writes().is_empty(), "{:?}", fake.writes());
    }

    const RESTORED: &str = "read-only from 2026-12-06T10:00:00.100Z\n\
        sequences moved up to their value before the restore (no id is handed out twice): 1\n\
        restore committed\n\
        writes accepted again from 2026-12-06T10:00:00.900Z\n";

    #[test]
    fn a_restore_runs_one_helper_under_the_lock_and_names_the_read_only_window() {
        let (root, file) = restore_setup();
        let fake = swarm();
        fake.answer(&["service", "create"], "");
        // Running long enough that its output is read while it runs.
        for _ in 0..30 {
            fake.answer_once(&["service", "ps"], "Running 1s|");
        }
        fake.answer(&["service", "ps"], "Complete 1s|");
        fake.answer_once(
            &["service", "logs"],
            "read-only from 2026-12-06T10:00:00.100Z\n",
        );
        fake.answer(&["service", "logs"], RESTORED);
        let env_dir = root.path().join("prod");
        let (r, lines, out) = exec_with(
            root.path(),
            &fake,
            &local(root.path()),
            &never,
            &["restore", "prod", file.to_str().unwrap(), "--yes"],
        );
        r.unwrap();
        assert!(out.is_empty());
        // It took the deploy lock (its owner line is this restore's).
        assert_eq!(
            fs::read_to_string(env_dir.join("deploy.lock.owner")).unwrap(),
            "pid 42 on test\n"
        );
        let writes = fake.writes();
        assert_eq!(writes.len(), 2, "{writes:?}");
        let create = &writes[0];
        for part in [
            "--name stackship-prod-ops-restore-42",
            "--label stackship.ops-helper=db-restore",
            "--constraint node.id==node-1",
            &format!(
                "--mount type=bind,source={},target=/restore,readonly ",
                env_dir.canonicalize().unwrap().display()
            ),
            "--secret source=stackship-prod-db-password-v3,target=db_password",
            " -c set -euo pipefail",
        ] {
            assert!(create.contains(part), "{part}: {create}");
        }
        assert_eq!(writes[1], "docker service rm stackship-prod-ops-restore-42");
        // Each line once, in order, as it came.
        let shown: Vec<&String> = lines
            .iter()
            .filter(|l| l.starts_with("  restore: "))
            .collect();
        assert_eq!(shown.len(), 4, "{lines:?}");
        assert_eq!(
            shown[0],
            "  restore: read-only from 2026-12-06T10:00:00.100Z"
        );
        assert!(
            lines.iter().any(|l| l.ends_with(
                "writes were refused from 2026-12-06T10:00:00.100Z until 2026-12-06T10:00:00.900Z"
            )),
            "{lines:?}"
        );
        // The lock is free again.
        DeployLock::acquire(&env_dir, "t", "t", Duration::ZERO, &mut |_| {}).unwrap();
    }

    #[test]
    fn a_failed_restore_names_pg_restores_error_removes_its_helper_and_frees_the_lock() {
        let (root, file) = restore_setup();
        let fake = swarm();
        fake.answer(&["service", "create"], "");
        fake.answer(&["service", "ps"], "Failed 1s|task: non-zero exit (1)");
        fake.answer(
            &["service", "logs"],
            "read-only from 2026-12-06T10:00:00.100Z\n\
             pg_restore: error: could not read from input file: end of file\n",
        );
        let (r, lines, _) = exec_with(
            root.path(),
            &fake,
            &local(root.path()),
            &never,
            &["restore", "prod", file.to_str().unwrap(), "--yes"],
        );
        let e = r.unwrap_err().to_string();
        assert!(e.ends_with("nothing was restored: its transaction rolled back and the database is unchanged: pg_restore: error: could not read from input file: end of file"), "{e}");
        assert!(
            lines
                .iter()
                .any(|l| l == "removed helper stackship-prod-ops-restore-42"),
            "{lines:?}"
        );
        assert_eq!(
            fake.writes().last().unwrap(),
            "docker service rm stackship-prod-ops-restore-42"
        );
        DeployLock::acquire(
            &root.path().join("prod"),
            "t",
            "t",
            Duration::ZERO,
            &mut |_| {},
        )
        .unwrap();

        // A backup that does not read back fails before the lock is asked for.
        let fake = swarm();
        fake.answer(&["service", "create"], "");
        fake.answer(&["service", "ps"], "Failed 1s|task: non-zero exit (1)");
        fake.answer(
            &["service", "logs"],
            "pg_restore: error: input file does not appear to be a valid archive\n",
        );
        let (r, _, _) = exec_with(
            root.path(),
            &fake,
            &local(root.path()),
            &never,
            &["restore", "prod", file.to_str().unwrap(), "--yes"],
        );
        let e = r.unwrap_err().to_string();
        assert!(
            e.ends_with("failed; nothing was restored: the database is unchanged: pg_restore: error: input file does not appear to be a valid archive"),
            "{e}"
        );

        // Interrupted: the helper (and with it psql's session) is removed too.
        let fake = swarm();
        fake.answer(&["service", "create"], "");
        fake.answer(&["service", "ps"], "Running 1s|");
        fake.answer(
            &["service", "logs"],
            "read-only from 2026-12-06T10:00:00.100Z\n",
        );
        let calls = Cell::new(0);
        let stop = || {
            calls.set(calls.get() + 1);
            calls.get() > 3
        };
        let (r, _, _) = exec_with(
            root.path(),
            &fake,
            &local(root.path()),
            &stop,
            &["restore", "prod", file.to_str().unwrap(), "--yes"],
        );
        let e = r.unwrap_err().to_string();
        assert!(e.contains("nothing was restored"), "{e}");
        assert!(
            e.contains("interrupted while helper stackship-prod-ops-restore-42 ran"),
            "{e}"
        );
        assert_eq!(
            fake.writes().last().unwrap(),
            "docker service rm stackship-prod-ops-restore-42"
        );
    }

    #[test]
    fn the_restore_session_locks_before_the_data_changes_and_unlocks_after_commit() {
        let before = restore_sql_before();
        let after = restore_sql_after();
        let key = RESTORE_LOCK_KEY.to_string();
        let lock = before.find(&format!("pg_advisory_lock({key})")).unwrap();
        let shown = before.find("'read-only from '").unwrap();
        let saved = before.find("FROM pg_catalog.pg_sequences").unwrap();
        let begin = before.find("BEGIN;").unwrap();
        assert!(lock < shown && shown < saved && saved < begin, "{before}");
        assert!(before.trim_end().ends_with("BEGIN;"));
        let moved = after.find("pg_catalog.setval(").unwrap();
        let commit = after.find("COMMIT;").unwrap();
        let unlock = after.find(&format!("pg_advisory_unlock({key})")).unwrap();
        let again = after.find("'writes accepted again from '").unwrap();
        assert!(
            moved < commit && commit < unlock && unlock < again,
            "{after}"
        );
        assert!(after.contains("GREATEST(b.last_value, s.last_value)"));
        // pg_restore's SQL runs between the two parts, in the same psql session, and the
        // second part is only sent when pg_restore succeeded.
        let restore = RESTORE_SCRIPT
            .find("pg_restore --clean --if-exists --no-owner")
            .unwrap();
        assert!(RESTORE_SCRIPT.find("printf '%s\\n' \"$2\"").unwrap() < restore);
        assert!(RESTORE_SCRIPT[restore..].starts_with("pg_restore --clean --if-exists --no-owner --file=- \"$file\" || exit 1\n    printf '%s\\n' \"$3\""));
        assert!(RESTORE_SCRIPT.contains("--set=ON_ERROR_STOP=1"));
        assert!(RESTORE_SCRIPT.find("pg_restore --list").unwrap() < restore);
    }

    #[test]
    fn restore_output_is_read_for_its_window_and_its_first_error() {
        assert_eq!(
            read_only_window(RESTORED),
            (
                Some("2026-12-06T10:00:00.100Z".into()),
                Some("2026-12-06T10:00:00.900Z".into())
            )
        );
        assert_eq!(read_only_window("x\n"), (None, None));
        assert_eq!(
            first_error(
                "read-only from x\npsql:<stdin>:9: ERROR:  relation \"x\" does not exist\nlater error: y"
            ),
            Some("psql:<stdin>:9: ERROR:  relation \"x\" does not exist")
        );
        assert_eq!(first_error("all fine\n"), None);
    }

    #[test]
    fn passfile_lines_escape_colons_and_backslashes() {
        assert_eq!(
            passfile_line(15432, "backend", "backend", "a:b\\c").unwrap(),
            "127.0.0.1:15432:backend:backend:a\\:b\\\\c\n"
        );
        assert!(passfile_line(1, "d", "u", "two\nlines").is_err());
    }

    /// A tunnel fake: the helpers run, the forwarder container runs.
    fn tunnel_swarm() -> FakeEngine {
        let fake = swarm();
        fake.answer(&["service", "create"], "");
        fake.answer_once(&["service", "ps"], "Complete 1s|");
        fake.answer(&["service", "logs"], "");
        fake.answer(&["network", "create"], "");
        fake.answer_once(&["network", "inspect"], "[]");
        fake.fail(&["network", "inspect"], "Error: No such network");
        fake.answer(&["network", "rm"], "");
        fake.answer(&["run", "-d"], "c1\n");
        fake.answer(&["rm", "-f"], "");
        fake
    }

    #[test]
    fn a_tunnel_gives_a_passfile_login_and_removes_everything_when_interrupted() {
        let base = tempfile::tempdir().unwrap();
        let fake = tunnel_swarm();
        fake.answer_once(&["service", "ps"], "Running 1s|");
        fake.answer(&["inspect"], "true\n");
        fake.answer(&["service", "ps"], "Running 1s|");
        let engine = &fake;
        let dir = base.path().join("stackship-prod-ops-tunnel-42");
        let checked = Cell::new(false);
        let answers = |port: u16| {
            assert_eq!(port, 15439);
            // While the tunnel is open: the passfile, private, and the password nowhere else.
            assert_eq!(
                fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
                0o700
            );
            let pass = dir.join("pgpass");
            assert_eq!(
                fs::metadata(&pass).unwrap().permissions().mode() & 0o777,
                0o600
            );
            assert_eq!(
                fs::read_to_string(&pass).unwrap(),
                "127.0.0.1:15439:backend:backend:s3\\:cr\\\\t\n"
            );
            assert!(!dir.join("password").exists());
            checked.set(true);
            true
        };
        let mut l = local(base.path());
        l.answers = &answers;
        let polls = Cell::new(0);
        let stop = || {
            polls.set(polls.get() + 1);
            polls.get() > 20
        };
        let (r, lines, out) = exec_with(
            base.path(),
            engine,
            &l,
            &stop,
            &["tunnel", "prod", "--port", "15439"],
        );
        assert_eq!(r.unwrap(), Outcome::Done);
        assert!(checked.get());
        assert_eq!(
            out,
            format!(
                "ready 127.0.0.1:15439\nPGPASSFILE={}/pgpass psql \"host=127.0.0.1 port=15439 user=backend dbname=backend\"\n",
                dir.display()
            )
        );
        assert!(!dir.exists(), "the passfile directory was left");
        let all = format!("{lines:?}{out}");
        assert!(!all.contains("s3"), "the password was shown: {all}");
        let writes = fake.writes();
        // The password helper (pinned here, the private directory mounted), the network, the
        // forwarding helper, the local forwarder; then all of it removed, the last made first.
        assert!(
            writes[0].contains("--name stackship-prod-ops-tunnel-pass-42"),
            "{}",
            writes[0]
        );
        assert!(
            writes[0].contains("--constraint node.id==node-1"),
            "{}",
            writes[0]
        );
        assert!(writes[0].contains(&format!(
            "--mount type=bind,source={},target=/out",
            dir.display()
        )));
        assert_eq!(
            writes[1],
            "docker service rm stackship-prod-ops-tunnel-pass-42"
        );
        assert_eq!(
            writes[2],
            "docker network create --driver overlay --attachable --label stackship.ops-helper=db-tunnel stackship-prod-ops-tunnel-42"
        );
        assert!(
            writes[3].contains("--name stackship-prod-ops-tunnel-42"),
            "{}",
            writes[3]
        );
        assert!(
            writes[3]
                .contains("--network stackship-prod_data --network stackship-prod-ops-tunnel-42")
        );
        assert!(writes[3].contains("--user 65534 --entrypoint perl"));
        assert!(!writes[3].contains("--secret"), "{}", writes[3]);
        // Labelled as the tunnel's, running Postgres's image (its perl) as the forwarder.
        assert!(
            writes[3].contains("--label stackship.ops-helper=db-tunnel"),
            "{}",
            writes[3]
        );
        let forwarder = fake
            .calls()
            .into_iter()
            .find(|c| {
                c.args.starts_with(&["service".into(), "create".into()])
                    && c.args.contains(&"stackship-prod-ops-tunnel-42".to_owned())
            })
            .unwrap();
        assert!(
            forwarder.args.ends_with(
                &[
                    "127.0.0.1:5000/postgres:15@sha256:abc",
                    "-e",
                    FORWARD,
                    "5432",
                    "postgres",
                    "5432"
                ]
                .map(str::to_owned)
            ),
            "{:?}",
            forwarder.args
        );
        assert!(writes[4].starts_with("docker run -d --name stackship-prod-ops-tunnel-42-local"));
        assert!(
            writes[4].contains("-p 127.0.0.1:15439:5432"),
            "{}",
            writes[4]
        );
        assert_eq!(
            &writes[5..],
            &[
                "docker rm -f stackship-prod-ops-tunnel-42-local",
                "docker service rm stackship-prod-ops-tunnel-42",
                "docker network rm stackship-prod-ops-tunnel-42",
            ]
        );
        assert!(
            lines.iter().any(|l| l == "interrupted: closing the tunnel"),
            "{lines:?}"
        );
        assert!(
            lines.iter().any(|l| l.starts_with("removed the passfile ")),
            "{lines:?}"
        );
    }

    #[test]
    fn a_tunnel_closes_after_its_time_or_when_a_part_dies() {
        let base = tempfile::tempdir().unwrap();
        let fake = tunnel_swarm();
        fake.answer_once(&["service", "ps"], "Running 1s|");
        fake.answer_once(&["inspect"], "true\n");
        fake.answer(&["inspect"], "false\n");
        fake.answer(&["service", "ps"], "Running 1s|");
        fake.answer(&["logs"], "cannot connect to x:5432: refused\n");
        let engine = &fake;
        let (r, _, _) = exec_with(
            base.path(),
            engine,
            &local(base.path()),
            &never,
            &["tunnel", "prod"],
        );
        let e = r.unwrap_err().to_string();
        assert_eq!(
            e,
            "the local forwarder stackship-prod-ops-tunnel-42-local stopped: cannot connect to x:5432: refused"
        );
        assert_eq!(
            fake.writes().last().unwrap(),
            "docker network rm stackship-prod-ops-tunnel-42"
        );
        assert_eq!(fs::read_dir(base.path()).unwrap().count(), 0);

        // The helper's task ended.
        let fake = tunnel_swarm();
        fake.answer_once(&["service", "ps"], "Running 1s|");
        fake.answer(&["inspect"], "true\n");
        fake.answer(&["service", "ps"], "Failed 1s|task: non-zero exit (137)");
        let engine = &fake;
        let (r, _, _) = exec_with(
            base.path(),
            engine,
            &local(base.path()),
            &never,
            &["tunnel", "prod"],
        );
        assert!(
            r.unwrap_err()
                .to_string()
                .starts_with("the helper stackship-prod-ops-tunnel-42 stopped: Failed")
        );
        assert!(
            fake.writes()
                .iter()
                .any(|w| w == "docker service rm stackship-prod-ops-tunnel-42")
        );

        // --for elapsed.
        let fake = tunnel_swarm();
        fake.answer(&["service", "ps"], "Running 1s|");
        fake.answer(&["inspect"], "true\n");
        let engine = &fake;
        let opened = Instant::now();
        let (r, lines, _) = exec_with(
            base.path(),
            engine,
            &local(base.path()),
            &never,
            &["tunnel", "prod", "--for", "1"],
        );
        r.unwrap();
        assert!(opened.elapsed() >= Duration::from_secs(1), "closed early");
        assert!(
            lines.iter().any(|l| l == "closing the tunnel after 1s"),
            "{lines:?}"
        );
        assert_eq!(
            fake.writes().last().unwrap(),
            "docker network rm stackship-prod-ops-tunnel-42"
        );
    }

    #[test]
    fn a_tunnel_refuses_a_busy_port_and_a_failed_start_leaves_nothing() {
        let base = tempfile::tempdir().unwrap();
        let fake = swarm();
        let mut l = local(base.path());
        l.in_use = &yes_port;
        let (r, _, _) = exec_with(
            base.path(),
            &fake,
            &l,
            &never,
            &["tunnel", "prod", "--port", "5000"],
        );
        assert_eq!(
            r.unwrap_err().to_string(),
            "127.0.0.1:5000 is already in use: choose another with --port"
        );
        assert!(fake.writes().is_empty());

        // The forwarding helper is rejected: the network and the passfile go too.
        let fake = tunnel_swarm();
        fake.answer(&["service", "ps"], "Rejected 1s|no suitable node");
        let engine = &fake;
        let (r, _, _) = exec_with(
            base.path(),
            engine,
            &local(base.path()),
            &never,
            &["tunnel", "prod"],
        );
        assert!(r.unwrap_err().to_string().contains("no suitable node"));
        let writes = fake.writes();
        assert_eq!(
            writes.last().unwrap(),
            "docker network rm stackship-prod-ops-tunnel-42"
        );
        assert!(
            writes
                .iter()
                .any(|w| w == "docker service rm stackship-prod-ops-tunnel-42")
        );
        assert!(!writes.iter().any(|w| w.starts_with("docker run")));
        assert_eq!(fs::read_dir(base.path()).unwrap().count(), 0);

        // The password helper fails: nothing else is made.
        let fake = swarm();
        fake.answer(&["service", "create"], "");
        fake.answer(&["service", "ps"], "Failed 1s|task: non-zero exit (1)");
        fake.answer(
            &["service", "logs"],
            "cat: /run/secrets/db_password: Permission denied\n",
        );
        let (r, lines, _) = exec_with(
            base.path(),
            &fake,
            &local(base.path()),
            &never,
            &["tunnel", "prod"],
        );
        assert!(
            r.unwrap_err()
                .to_string()
                .starts_with("could not read the prod database password")
        );
        assert!(lines.iter().any(|l| l.contains("Permission denied")));
        assert_eq!(fake.writes().len(), 2, "{:?}", fake.writes());
        assert_eq!(fs::read_dir(base.path()).unwrap().count(), 0);
    }

    #[test]
    fn the_console_is_psql_in_the_local_container_with_a_terminal_only_on_one() {
        assert_eq!(
            console_args("c1", "backend", "backend", (false, false)).join(" "),
            "exec -i -e PSQL_HISTORY=/dev/null c1 psql -U backend -d backend"
        );
        assert_eq!(
            console_args("c1", "u", "d", (true, false)).join(" "),
            "exec -i -e PSQL_HISTORY=/dev/null c1 psql -U u -d d"
        );
        assert_eq!(
            console_args("c1", "u", "d", (true, true)).join(" "),
            "exec -i -t -e PSQL_HISTORY=/dev/null c1 psql -U u -d d"
        );
        let base = tempfile::tempdir().unwrap();
        let fake = swarm();
        fake.answer(&["ps", "-q"], "c1\n");
        fake.answer_status(&["exec"], 3);
        let (r, _, _) = exec_with(
            base.path(),
            &fake,
            &local(base.path()),
            &never,
            &["console", "prod"],
        );
        // psql's exit status is the command's.
        assert_eq!(r.unwrap(), Outcome::Exited(3));
        assert_eq!(
            fake.command_lines().last().unwrap(),
            "docker exec -i -e PSQL_HISTORY=/dev/null c1 psql -U backend -d backend"
        );

        // Elsewhere: the node is named, nothing runs.
        let fake = swarm();
        fake.answer(&["ps", "-q"], "");
        fake.answer(&["service", "ps"], "worker-2\n");
        let (r, _, _) = exec_with(
            base.path(),
            &fake,
            &local(base.path()),
            &never,
            &["console", "prod"],
        );
        let e = r.unwrap_err().to_string();
        assert!(
            e.starts_with("the prod database runs on node worker-2, not on this one"),
            "{e}"
        );
        assert!(e.contains("stackship db tunnel prod"), "{e}");
    }

    #[test]
    fn commands_need_a_swarm_manager() {
        let base = tempfile::tempdir().unwrap();
        // Not a manager; and a manager that names no node id cannot pin a helper to itself.
        for info in ["false|\n", "true|\n"] {
            let fake = FakeEngine::new();
            fake.answer(&["info"], info);
            let (r, _, _) = exec_with(
                base.path(),
                &fake,
                &local(base.path()),
                &never,
                &["console", "prod"],
            );
            assert_eq!(
                r.unwrap_err().to_string(),
                "this engine is not a swarm manager (run on the manager of stackship-prod)",
                "{info}"
            );
        }
        let fake = FakeEngine::new();
        fake.fail(&["info"], "Cannot connect to the Docker daemon");
        let (r, _, _) = exec_with(
            base.path(),
            &fake,
            &local(base.path()),
            &never,
            &["backup", "prod"],
        );
        assert!(
            r.unwrap_err()
                .to_string()
                .starts_with("cannot talk to the Docker engine")
        );
    }

    #[test]
    fn the_private_directory_is_fresh_and_goes_with_its_passfile() {
        let base = tempfile::tempdir().unwrap();
        let said = RefCell::new(Vec::new());
        let say = |m: &str| said.borrow_mut().push(m.to_owned());
        let db = Database {
            image: "i".into(),
            user: "u".into(),
            name: "d".into(),
            password_secret: "s".into(),
        };
        let path;
        {
            let dir = PrivateDir::create(base.path(), "t", &say).unwrap();
            path = dir.path.clone();
            // What the helper left is read once and is gone after.
            fs::write(dir.password_file(), "pw\n").unwrap();
            assert_eq!(take_file(&dir.password_file()).unwrap(), "pw\n");
            assert!(!dir.password_file().exists());
            assert!(take_file(&dir.password_file()).is_err());
            let pass = dir.write_passfile(1, &db, "pw\n").unwrap();
            assert_eq!(fs::read_to_string(&pass).unwrap(), "127.0.0.1:1:d:u:pw\n");
            assert_eq!(
                fs::metadata(&pass).unwrap().permissions().mode() & 0o777,
                0o600
            );
            // Never over an existing file.
            assert!(dir.write_passfile(1, &db, "pw").is_err());
            // A directory that exists is not taken over.
            assert!(PrivateDir::create(base.path(), "t", &say).is_err());
        }
        assert!(!path.exists());
        assert_eq!(
            said.borrow().last().unwrap(),
            &format!("removed the passfile {}", path.display())
        );
        assert_eq!(private_base(Some(base.path().to_owned())), base.path());
        assert_eq!(private_base(Some("relative".into())), std::env::temp_dir());
        assert_eq!(private_base(None), std::env::temp_dir());
    }

    #[test]
    fn the_private_base_is_a_runtime_directory_given_by_its_absolute_path() {
        let base = tempfile::tempdir().unwrap();
        // A relative path names a directory only from wherever the process happens to be.
        let relative = Path::new(".");
        assert!(relative.is_dir());
        assert_eq!(private_base(Some(relative.into())), std::env::temp_dir());
        // An absolute path that is not a directory is not one to make directories in.
        let file = base.path().join("file");
        fs::write(&file, "").unwrap();
        assert_eq!(private_base(Some(file)), std::env::temp_dir());
        assert_eq!(
            private_base(Some(base.path().join("missing"))),
            std::env::temp_dir()
        );
    }

    #[test]
    fn a_stop_ends_the_process_as_a_shell_reports_its_signal() {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        // A command that failed after a stop: 128 + the signal that stopped it.
        assert_eq!(exit_after_stop(true, true, false, Some(SIGTERM)), Some(143));
        assert_eq!(exit_after_stop(true, true, false, Some(SIGHUP)), Some(129));
        // Ctrl-C when no other signal was seen.
        assert_eq!(exit_after_stop(true, true, false, None), Some(130));
        assert_eq!(exit_after_stop(true, true, false, Some(SIGINT)), Some(130));
        // A tunnel ends by a signal even when it ended without an error.
        assert_eq!(exit_after_stop(true, false, true, None), Some(130));
        assert_eq!(exit_after_stop(true, false, true, Some(SIGTERM)), Some(143));
        // A stopped command that still got to its end is done.
        assert_eq!(exit_after_stop(true, false, false, Some(SIGTERM)), None);
        // Without a stop, the result stands: an error is reported as any error.
        assert_eq!(exit_after_stop(false, true, true, None), None);
        assert_eq!(exit_after_stop(false, true, false, None), None);
        assert_eq!(exit_after_stop(false, false, true, None), None);
    }

    #[test]
    fn a_restore_names_this_process_as_the_locks_owner() {
        for (job, tail) in [
            (
                Some("https://ci/jobs/9"),
                " (stackship db restore), job https://ci/jobs/9",
            ),
            (None, " (stackship db restore)"),
        ] {
            crate::lock::assert_this_process_line(&owner_line(job), tail);
        }
    }

    #[test]
    fn the_tunnel_network_is_removed_once_this_node_lets_go_of_it() {
        let fake = FakeEngine::new();
        // Still here after the first removal (its helper's task was leaving): removed again.
        fake.answer_once(&["network", "inspect"], "[]");
        fake.answer_once(&["network", "inspect"], "[]");
        fake.fail(&["network", "inspect"], "Error: No such network: n");
        fake.fail_once(
            &["network", "rm"],
            "Error response from daemon: error while removing network: network n has active endpoints",
        );
        fake.answer(&["network", "rm"], "");
        let said = RefCell::new(Vec::new());
        let say = |m: &str| said.borrow_mut().push(m.to_owned());
        let client = Client::new(&fake);
        drop(NetworkGuard {
            client: &client,
            name: "n".to_owned(),
            poll: Duration::from_millis(1),
            say: &say,
        });
        assert_eq!(
            fake.writes(),
            ["docker network rm n", "docker network rm n"]
        );
        assert_eq!(said.into_inner(), ["removed the tunnel network n"]);
    }

    #[test]
    fn a_port_is_in_use_when_something_listens_on_it_or_holds_it() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let listening = listener.local_addr().unwrap();
        assert!(port_in_use(listening.port()));
        // A connection's own end accepts nothing, and cannot be bound either.
        let client = TcpStream::connect(listening).unwrap();
        assert!(port_in_use(client.local_addr().unwrap().port()));
        let free = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(!port_in_use(free));
    }

    /// A server on a loopback port that answers the 8 bytes it reads first with `reply` and
    /// closes; it gives what it read (nothing when no one came within 10 s).
    fn one_answer(reply: &'static [u8]) -> (u16, std::thread::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let server = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut s = loop {
                match listener.accept() {
                    Ok((s, _)) => break s,
                    Err(_) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => return Vec::new(),
                }
            };
            s.set_nonblocking(false).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut request = [0u8; 8];
            if s.read_exact(&mut request).is_err() {
                return Vec::new();
            }
            let _ = s.write_all(reply);
            request.to_vec()
        });
        (port, server)
    }

    #[test]
    fn postgres_answers_an_ssl_request_with_s_or_n() {
        // Postgres's SSLRequest: length 8, code 80877103.
        let ssl_request = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        for (reply, answers) in [
            (&b"S"[..], true),
            (b"N", true),
            // Something else listens (docker-proxy with nothing behind it closes; an HTTP
            // server answers otherwise).
            (b"", false),
            (b"HTTP/1.1 400 Bad Request\r\n\r\n", false),
        ] {
            let (port, server) = one_answer(reply);
            assert_eq!(postgres_answers(port), answers, "{reply:?}");
            assert_eq!(server.join().unwrap(), ssl_request);
        }
        let free = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(!postgres_answers(free));
    }

    #[test]
    fn a_tunnel_waits_for_its_forwarder_to_answer() {
        let base = tempfile::tempdir().unwrap();
        let fake = tunnel_swarm();
        fake.answer_once(&["service", "ps"], "Running 1s|");
        fake.answer(&["inspect"], "true\n");
        fake.answer(&["service", "ps"], "Running 1s|");
        // docker-proxy is up before the forwarder behind it: not yet, then an answer.
        let asked = Cell::new(0);
        let answers = |_: u16| {
            asked.set(asked.get() + 1);
            asked.get() > 2
        };
        let mut l = local(base.path());
        l.answers = &answers;
        let polls = Cell::new(0);
        let stop = || {
            polls.set(polls.get() + 1);
            polls.get() > 20
        };
        let (r, lines, out) = exec_with(base.path(), &fake, &l, &stop, &["tunnel", "prod"]);
        assert_eq!(r.unwrap(), Outcome::Done);
        assert_eq!(asked.get(), 3);
        assert!(out.starts_with("ready 127.0.0.1:15432\n"), "{out}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("tunnel open: 127.0.0.1:15432")),
            "{lines:?}"
        );
    }

    #[test]
    fn a_pause_lasts_its_time_unless_a_stop_comes() {
        let base = tempfile::tempdir().unwrap();
        let fake = FakeEngine::new();
        let client = Client::new(&fake);
        let l = local(base.path());
        let say = |_: &str| {};
        let ctx = Ctx {
            root: base.path(),
            client: &client,
            local: &l,
            stop: &never,
            say: &say,
        };
        let began = Instant::now();
        assert!(ctx.sleep(Duration::from_millis(30)));
        assert!(began.elapsed() >= Duration::from_millis(30));
        let stopped = || true;
        let ctx = Ctx {
            stop: &stopped,
            ..ctx
        };
        assert!(!ctx.sleep(Duration::from_secs(30)));
    }

    /// A prod environment with a repository (its password file) and settings in deploy.env.
    fn backup_env(deploy_env: &str) -> (tempfile::TempDir, PathBuf) {
        let root = tempfile::tempdir().unwrap();
        let env_dir = root.path().join("prod");
        fs::create_dir_all(env_dir.join("secrets")).unwrap();
        fs::create_dir_all(env_dir.join("current")).unwrap();
        fs::write(env_dir.join("secrets").join(backup::PASSWORD_FILE), "pw\n").unwrap();
        fs::write(env_dir.join("deploy.env"), deploy_env).unwrap();
        (root, env_dir)
    }

    /// What the dump helper writes, at the fake clock's second (the helper itself is faked).
    fn dumped(dir: &Path, counts: &str) {
        fs::create_dir_all(dir).unwrap();
        fs::write(
            dir.join(".stackship-prod-20261206T100000Z.dump.partial"),
            "PGDMP",
        )
        .unwrap();
        fs::write(
            dir.join(".stackship-prod-20261206T100000Z.dump.counts.partial"),
            counts,
        )
        .unwrap();
    }

    /// A stand-in for restic: each call's arguments (after the repository's own) are recorded
    /// and answered by `reply`.
    struct FakeRestic<F: Fn(&[&str]) -> Result<String, String>> {
        calls: RefCell<Vec<String>>,
        reply: F,
    }

    impl<F: Fn(&[&str]) -> Result<String, String>> FakeRestic<F> {
        fn new(reply: F) -> Self {
            Self {
                calls: RefCell::new(Vec::new()),
                reply,
            }
        }

        fn run(&self, repo: &Repository, args: &[&str]) -> Result<String, String> {
            assert!(repo.password_file.ends_with(backup::PASSWORD_FILE));
            self.calls.borrow_mut().push(args.join(" "));
            (self.reply)(args)
        }

        fn calls(&self) -> Vec<String> {
            self.calls.borrow().clone()
        }

        /// What `reply` answers, without recording the call.
        fn run_reply(&self, args: &[&str]) -> Result<String, String> {
            (self.reply)(args)
        }
    }

    /// Runs a command with `restic` answering in restic's place.
    fn exec_with_restic<F: Fn(&[&str]) -> Result<String, String>>(
        root: &Path,
        engine: &dyn Engine,
        restic: &FakeRestic<F>,
        args: &[&str],
    ) -> (Result<Outcome, Error>, Vec<String>, String) {
        let run = |r: &Repository, a: &[&str]| restic.run(r, a);
        let local = Local {
            restic: &run,
            ..local(root)
        };
        exec_with(root, engine, &local, &never, args)
    }

    fn state_of(env_dir: &Path) -> State {
        State::read(&env_dir.join("backups").join(backup::STATE_FILE)).unwrap()
    }

    const COUNTS: &str =
        "table|public._sqlx_migrations|2\ntable|public.log_entries|5\nmigration|20261122000001\n";
    const NO_REPOSITORY: &str = "Fatal: unable to open config file: Stat: stat /srv/restic/prod/config: no such file or directory\nIs there a repository at the following location?\n/srv/restic/prod\n";

    #[test]
    fn a_backup_records_its_counts_copies_off_site_and_forgets_beyond_retention() {
        let (root, env_dir) =
            backup_env("BACKUP_REPOSITORY=/srv/restic/prod\nBACKUP_KEEP_DAILY=3\n");
        dumped(&env_dir.join("backups"), COUNTS);
        let fake = helpers_complete("");
        let restic = FakeRestic::new(|args: &[&str]| {
            match args[0] {
            "cat" => Err(NO_REPOSITORY.to_owned()),
            "backup" => Ok("{\"message_type\":\"status\"}\n{\"message_type\":\"summary\",\"snapshot_id\":\"1a2b3c4d5e6f7a8b\"}\n".to_owned()),
            _ => Ok(String::new()),
        }
        });
        let (r, lines, out) = exec_with_restic(root.path(), &fake, &restic, &["backup", "prod"]);
        r.unwrap();
        let dump = env_dir.join("backups/stackship-prod-20261206T100000Z.dump");
        assert_eq!(out, format!("{}\n", dump.display()));
        let counts = env_dir.join("backups/stackship-prod-20261206T100000Z.counts");
        assert_eq!(fs::read_to_string(&counts).unwrap(), COUNTS);
        assert_eq!(
            fs::metadata(&counts).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(
            !env_dir
                .join("backups/.stackship-prod-20261206T100000Z.dump.counts.partial")
                .exists()
        );
        let calls = restic.calls();
        assert_eq!(calls.len(), 4, "{calls:?}");
        assert_eq!(calls[0], "cat config");
        assert_eq!(calls[1], "init");
        assert_eq!(
            calls[2],
            format!(
                "backup --json --host stackship-prod --tag stackship --tag prod {} {}",
                dump.display(),
                counts.display()
            )
        );
        assert_eq!(
            calls[3],
            "forget --host stackship-prod --tag prod --group-by host,tags --keep-daily 3 --keep-weekly 4 --keep-monthly 6 --prune"
        );
        for said in [
            "recorded 7 rows in 2 tables, migration 20261122000001",
            "off-site copy: snapshot 1a2b3c4d in /srv/restic/prod",
            "initialised the restic repository /srv/restic/prod",
        ] {
            assert!(lines.iter().any(|l| l.contains(said)), "{said}: {lines:?}");
        }
        let state = state_of(&env_dir);
        let b = state.backup.last_ok.unwrap();
        assert_eq!((b.detail, b.size), (dump.display().to_string(), Some(5)));
        assert_eq!(b.at, fixed_now());
        assert_eq!(state.offsite.last_ok.unwrap().detail, "snapshot 1a2b3c4d");
        assert_eq!(state.test_restore, backup::Track::default());
    }

    #[test]
    fn a_repository_that_does_not_open_fails_the_backup_before_any_dump() {
        let (root, env_dir) = backup_env("BACKUP_REPOSITORY=/srv/restic/prod\n");
        let fake = swarm();
        let restic =
            FakeRestic::new(|_: &[&str]| Err("Fatal: wrong password or no key found\n".to_owned()));
        let (r, _, out) = exec_with_restic(root.path(), &fake, &restic, &["backup", "prod"]);
        let e = r.unwrap_err().to_string();
        assert!(
            e.contains("backup-repository-password does not open the repository /srv/restic/prod (restic: Fatal: wrong password or no key found)"),
            "{e}"
        );
        assert!(out.is_empty());
        assert_eq!(
            restic.calls(),
            ["cat config"],
            "no init over a repository that exists"
        );
        assert!(
            !fake.writes().iter().any(|w| w.contains("ops-backup")),
            "no backup helper: {:?}",
            fake.writes()
        );
        let state = state_of(&env_dir);
        let last = state.offsite.last.as_ref().unwrap();
        assert!(
            !last.ok
                && last
                    .detail
                    .starts_with("nothing was made: the password in "),
            "{last:?}"
        );
        // No local backup was tried: the schedule's next one is not held up by this.
        assert_eq!(state.backup, backup::Track::default());
        // A repository without its password file: refused before restic runs.
        fs::remove_file(env_dir.join("secrets").join(backup::PASSWORD_FILE)).unwrap();
        let (r, _, _) = exec_with_restic(root.path(), &fake, &restic, &["backup", "prod"]);
        let e = r.unwrap_err().to_string();
        assert!(
            e.contains("backup-repository-password is missing or empty"),
            "{e}"
        );
        assert!(
            e.contains("deploy.env:1)"),
            "names where the setting is: {e}"
        );
        assert_eq!(restic.calls().len(), 1);
    }

    #[test]
    fn a_failed_off_site_copy_keeps_the_local_backup_and_is_recorded() {
        let (root, env_dir) = backup_env("BACKUP_REPOSITORY=/srv/restic/prod\n");
        dumped(&env_dir.join("backups"), COUNTS);
        let fake = helpers_complete("");
        let restic = FakeRestic::new(|args: &[&str]| match args[0] {
            "backup" => Err("Fatal: unable to save snapshot: no space left on device\n".to_owned()),
            _ => Ok(String::new()),
        });
        let (r, _, _) = exec_with_restic(root.path(), &fake, &restic, &["backup", "prod"]);
        let e = r.unwrap_err().to_string();
        let dump = env_dir.join("backups/stackship-prod-20261206T100000Z.dump");
        assert_eq!(
            e,
            format!(
                "the prod backup {} was written, but its copy off-site failed: restic on /srv/restic/prod: Fatal: unable to save snapshot: no space left on device",
                dump.display()
            )
        );
        assert!(dump.exists());
        let state = state_of(&env_dir);
        assert!(state.backup.last_ok.is_some());
        assert!(!state.offsite.last.unwrap().ok);
        assert_eq!(restic.calls().len(), 2, "no forget after a failed copy");
    }

    #[test]
    fn a_manifest_that_does_not_read_fails_the_backup_and_leaves_no_file() {
        let (root, env_dir) = backup_env("");
        dumped(&env_dir.join("backups"), "table|public.a|1\n");
        let fake = helpers_complete("");
        let (r, _, _) = exec_with(
            root.path(),
            &fake,
            &local(root.path()),
            &never,
            &["backup", "prod"],
        );
        let e = r.unwrap_err().to_string();
        assert!(
            e.contains("row counts") && e.contains("did not finish"),
            "{e}"
        );
        let left: Vec<_> = fs::read_dir(env_dir.join("backups"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, [backup::STATE_FILE], "{left:?}");
        assert!(!state_of(&env_dir).backup.last.unwrap().ok);
    }

    #[test]
    fn root_hands_what_it_makes_to_the_owner_of_the_environment_directory() {
        use std::os::unix::fs::MetadataExt;
        let me = process_ids();
        for by_root in [true, false] {
            let (root, env_dir) = backup_env("");
            let (uid, gid) = owned_by_another_user(&env_dir);
            dumped(&env_dir.join("backups"), COUNTS);
            let local = Local {
                ids: if by_root { (0, 0) } else { (uid, gid) },
                ..local(root.path())
            };
            let (r, _, _) = exec_with(
                root.path(),
                &helpers_complete(""),
                &local,
                &never,
                &["backup", "prod"],
            );
            r.unwrap();
            // Run by the owner itself, what it made is its own already.
            let expected = if by_root { (uid, gid) } else { me };
            let backups = env_dir.join("backups");
            for path in [
                backups.clone(),
                backups.join("stackship-prod-20261206T100000Z.counts"),
                backups.join(backup::STATE_FILE),
                env_dir.join("backup.lock"),
            ] {
                let m = fs::metadata(&path).unwrap();
                assert_eq!((m.uid(), m.gid()), expected, "{}", path.display());
            }
        }
    }

    /// A dump and its counts in prod's backups directory; the newest of two.
    fn verify_setup() -> (tempfile::TempDir, PathBuf) {
        let (root, env_dir) = backup_env("");
        let dir = env_dir.join("backups");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("stackship-prod-20261201T000000Z.dump"), "old").unwrap();
        fs::write(dir.join("stackship-prod-20261205T000000Z.dump"), "PGDMP").unwrap();
        fs::write(dir.join("stackship-prod-20261205T000000Z.counts"), COUNTS).unwrap();
        (root, env_dir)
    }

    fn verify_with(
        logs: &str,
        status: &str,
    ) -> (
        Result<Outcome, Error>,
        Vec<String>,
        FakeEngine,
        PathBuf,
        tempfile::TempDir,
    ) {
        let (root, env_dir) = verify_setup();
        let fake = swarm();
        fake.answer(&["service", "create"], "");
        fake.answer(&["service", "ps"], status);
        fake.answer(&["service", "logs"], logs);
        let (r, lines, _) = exec_with(
            root.path(),
            &fake,
            &local(root.path()),
            &never,
            &["verify", "prod"],
        );
        (r, lines, fake, env_dir, root)
    }

    #[test]
    fn a_test_restore_runs_a_throwaway_postgres_and_compares_the_counts() {
        let (r, lines, fake, env_dir, _root) =
            verify_with(&format!("{COUNTS}test restore: restored\n"), "Complete 1s|");
        r.unwrap();
        let writes = fake.writes();
        assert_eq!(
            writes.len(),
            4,
            "the test restore, then the state for /metrics: {writes:?}"
        );
        assert!(
            writes[2].contains("('test_restore', '2026-12-06T10:00:00+00:00'::timestamptz"),
            "{}",
            writes[2]
        );
        let dir = env_dir.join("backups").canonicalize().unwrap();
        for part in [
            "--name stackship-prod-ops-verify-42",
            "--label stackship.ops-helper=db-verify",
            "--constraint node.id==node-1",
            &format!(
                "--mount type=bind,source={},target=/restore,readonly ",
                dir.display()
            ),
            "--mount type=tmpfs,destination=/tmp",
            "--cap-add CAP_SETUID --cap-add CAP_SETGID --cap-add CAP_DAC_READ_SEARCH",
            "--entrypoint bash 127.0.0.1:5000/postgres:15@sha256:abc -c ",
            " verify stackship-prod-20261205T000000Z.dump SELECT ",
        ] {
            assert!(writes[0].contains(part), "{part}: {}", writes[0]);
        }
        assert!(
            !writes[0].contains("--secret"),
            "no password: {}",
            writes[0]
        );
        assert!(
            !writes[0].contains("--network"),
            "no network: {}",
            writes[0]
        );
        assert_eq!(writes[1], "docker service rm stackship-prod-ops-verify-42");
        assert!(
            lines.iter().any(|l| l == "test restore passed: stackship-prod-20261205T000000Z.dump restored: 7 rows in 2 tables, migration 20261122000001, as recorded at backup time"),
            "{lines:?}"
        );
        let run = state_of(&env_dir).test_restore.last_ok.unwrap();
        assert!(run.detail.ends_with(", as recorded"), "{run:?}");
    }

    #[test]
    fn a_test_restore_fails_loudly_on_other_counts_or_a_pg_restore_error() {
        let differs = COUNTS.replace("log_entries|5", "log_entries|4");
        let (r, _, fake, env_dir, _root) = verify_with(&differs, "Complete 1s|");
        let e = r.unwrap_err().to_string();
        assert!(
            e.starts_with("the test restore of the prod backup FAILED: "),
            "{e}"
        );
        assert!(
            e.ends_with("stackship-prod-20261205T000000Z.dump: the copy differs from what the backup recorded: table public.log_entries: 4 rows restored, 5 recorded"),
            "{e}"
        );
        assert_eq!(
            fake.writes()[1],
            "docker service rm stackship-prod-ops-verify-42",
            "the helper is removed"
        );
        let last = state_of(&env_dir).test_restore.last.unwrap();
        assert!(
            !last.ok && last.detail.contains("4 rows restored, 5 recorded"),
            "{last:?}"
        );

        let (r, _, fake, env_dir, _root) = verify_with(
            "pg_restore: error: could not read from input file: end of file\ntest restore: pg_restore could not restore stackship-prod-20261205T000000Z.dump\n",
            "Failed 1s|task: non-zero exit (1)",
        );
        let e = r.unwrap_err().to_string();
        assert!(
            e.ends_with("stackship-prod-20261205T000000Z.dump: pg_restore: error: could not read from input file: end of file"),
            "{e}"
        );
        assert_eq!(
            fake.writes()[1],
            "docker service rm stackship-prod-ops-verify-42"
        );
        assert!(!state_of(&env_dir).test_restore.last.unwrap().ok);
        // No error in Postgres's words: the helper's last word (not a blank line) says why.
        let (r, _, _, _, _root) = verify_with(
            "initdb: starting\n\nsetpriv: setresuid failed: Operation not permitted\n\n",
            "Failed 1s|task: non-zero exit (1)",
        );
        let e = r.unwrap_err().to_string();
        assert!(
            e.ends_with(
                "stackship-prod-20261205T000000Z.dump: setpriv: setresuid failed: Operation not permitted"
            ),
            "{e}"
        );

        // Without a backup there is nothing to test: said, and recorded as a failure.
        let (root, env_dir) = backup_env("");
        let fake = swarm();
        let (r, _, _) = exec_with(
            root.path(),
            &fake,
            &local(root.path()),
            &never,
            &["verify", "prod"],
        );
        assert!(
            r.unwrap_err()
                .to_string()
                .contains("no backup of prod to test in")
        );
        assert!(
            !fake.writes().iter().any(|w| w.contains("ops-verify")),
            "{:?}",
            fake.writes()
        );
        assert!(!state_of(&env_dir).test_restore.last.unwrap().ok);
    }

    #[test]
    fn a_test_restore_checks_the_repository_too() {
        let (root, env_dir) = verify_setup();
        fs::write(
            env_dir.join("deploy.env"),
            "BACKUP_REPOSITORY=/srv/restic/prod\n",
        )
        .unwrap();
        let fake = helpers_complete(COUNTS);
        let restic =
            FakeRestic::new(|_: &[&str]| Err("Fatal: repository contains errors\n".to_owned()));
        let (r, _, _) = exec_with_restic(root.path(), &fake, &restic, &["verify", "prod"]);
        assert_eq!(
            r.unwrap_err().to_string(),
            "the repository check failed: restic on /srv/restic/prod: Fatal: repository contains errors"
        );
        assert_eq!(restic.calls(), ["check --read-data-subset 10%"]);
        let state = state_of(&env_dir);
        assert!(state.test_restore.last.unwrap().ok);
        assert!(!state.repository_check.last.unwrap().ok);
    }

    /// A repository whose newest snapshot holds prod's dump of 2026-12-05 and, written on
    /// restore, `counts` beside it; restic's calls are recorded.
    fn repository_with_a_snapshot(
        counts: &'static str,
    ) -> FakeRestic<impl Fn(&[&str]) -> Result<String, String>> {
        FakeRestic::new(move |args: &[&str]| {
            match args[0] {
            "snapshots" => Ok(r#"[{"time":"2026-12-05T03:00:00Z","paths":["/srv/deploy/prod/backups/stackship-prod-20261205T030000Z.counts","/srv/deploy/prod/backups/stackship-prod-20261205T030000Z.dump"],"id":"bbbb2222cccc","short_id":"bbbb2222"}]"#.to_owned()),
            "restore" => {
                let target = Path::new(args[3]);
                let dir = target.join("srv/deploy/prod/backups");
                fs::create_dir_all(&dir).unwrap();
                fs::write(dir.join("stackship-prod-20261205T030000Z.dump"), "PGDMP").unwrap();
                fs::write(dir.join("stackship-prod-20261205T030000Z.counts"), counts).unwrap();
                Ok(String::new())
            }
            _ => Ok(String::new()),
        }
        })
    }

    #[test]
    fn a_test_restore_restores_the_newest_off_site_copy_too() {
        let (root, env_dir) = verify_setup();
        fs::write(
            env_dir.join("deploy.env"),
            "BACKUP_REPOSITORY=/srv/restic/prod\n",
        )
        .unwrap();
        let fake = helpers_complete(COUNTS);
        let restic = repository_with_a_snapshot(COUNTS);
        let (r, lines, _) = exec_with_restic(root.path(), &fake, &restic, &["verify", "prod"]);
        r.unwrap();
        let scratch = env_dir.join(".verify-42");
        assert_eq!(
            restic.calls(),
            [
                "check --read-data-subset 10%".to_owned(),
                "cat config".to_owned(),
                "snapshots --json --host stackship-prod --tag prod".to_owned(),
                format!(
                    "restore bbbb2222cccc --target {} --include /srv/deploy/prod/backups/stackship-prod-20261205T030000Z.dump --include /srv/deploy/prod/backups/stackship-prod-20261205T030000Z.counts",
                    scratch.display()
                ),
            ]
        );
        assert!(!scratch.exists(), "the fetched copy is removed");
        let helpers = fake
            .writes()
            .into_iter()
            .filter(|w| w.starts_with("docker service create") && w.contains("ops-verify-42"))
            .count();
        assert_eq!(
            helpers, 2,
            "the local dump, then the off-site copy: {lines:?}"
        );
        let second = fake
            .writes()
            .into_iter()
            .filter(|w| w.starts_with("docker service create"))
            .nth(1)
            .unwrap();
        assert!(
            second.contains(&format!(
                "type=bind,source={},target=/restore,readonly",
                scratch.join("srv/deploy/prod/backups").display()
            )),
            "{second}"
        );
        let check = state_of(&env_dir).repository_check.last.unwrap();
        assert!(check.ok);
        assert_eq!(
            check.detail,
            "restic check of /srv/restic/prod: no errors; snapshot bbbb2222 (2026-12-05T03:00:00Z) test-restored: stackship-prod-20261205T030000Z.dump restored: 7 rows in 2 tables, migration 20261122000001, as recorded"
        );

        // An off-site copy whose stored counts are not what it restores to fails the check.
        let restic = repository_with_a_snapshot(
            "table|public._sqlx_migrations|2\ntable|public.log_entries|6\nmigration|20261122000001\n",
        );
        let (r, _, _) = exec_with_restic(root.path(), &fake, &restic, &["verify", "prod"]);
        let e = r.unwrap_err().to_string();
        assert!(
            e.starts_with("the repository check failed: the off-site snapshot bbbb2222 (2026-12-05T03:00:00Z): "),
            "{e}"
        );
        assert!(e.contains("public.log_entries"), "{e}");
        assert!(!scratch.exists());
        let state = state_of(&env_dir);
        assert!(state.test_restore.last.unwrap().ok);
        assert!(!state.repository_check.last.unwrap().ok);

        // A repository without a backup of the environment has no copy to prove.
        let restic = FakeRestic::new(|args: &[&str]| match args[0] {
            "snapshots" => Ok("[]".to_owned()),
            _ => Ok(String::new()),
        });
        let (r, _, _) = exec_with_restic(root.path(), &fake, &restic, &["verify", "prod"]);
        assert_eq!(
            r.unwrap_err().to_string(),
            "the repository check failed: /srv/restic/prod holds no backup of prod to test-restore"
        );

        // A fetch that fails: restic's words, and no scratch directory left.
        let restic = FakeRestic::new(|args: &[&str]| match args[0] {
            "restore" => {
                fs::write(Path::new(args[3]).join("partial"), "x").unwrap();
                Err("Fatal: connection lost\n".to_owned())
            }
            _ => repository_with_a_snapshot(COUNTS).run_reply(args),
        });
        let (r, _, _) = exec_with_restic(root.path(), &fake, &restic, &["verify", "prod"]);
        assert_eq!(
            r.unwrap_err().to_string(),
            "the repository check failed: snapshot bbbb2222 (2026-12-05T03:00:00Z): restic on /srv/restic/prod: Fatal: connection lost"
        );
        assert!(!scratch.exists());
    }

    #[test]
    fn a_helper_that_cannot_run_here_downloads_no_off_site_copy() {
        let (root, env_dir) = verify_setup();
        fs::write(
            env_dir.join("deploy.env"),
            "BACKUP_REPOSITORY=/srv/restic/prod\n",
        )
        .unwrap();
        let fake = FakeEngine::new();
        fake.fail(
            &["info"],
            "Cannot connect to the Docker daemon at unix:///var/run/docker.sock",
        );
        let restic = repository_with_a_snapshot(COUNTS);
        let (r, _, _) = exec_with_restic(root.path(), &fake, &restic, &["verify", "prod"]);
        assert!(r.is_err());
        assert_eq!(restic.calls(), ["check --read-data-subset 10%"]);
        let check = state_of(&env_dir).repository_check.last.unwrap();
        assert!(!check.ok);
        assert!(
            check
                .detail
                .contains("the off-site copy was not test-restored: ")
                && check.detail.contains("Cannot connect to the Docker daemon"),
            "{}",
            check.detail
        );
    }

    #[test]
    fn the_schedule_tries_a_failed_repository_check_again_after_six_hours() {
        let (root, env_dir) = backup_env("BACKUP_REPOSITORY=/srv/restic/prod\n");
        let state_file = recent_state(&env_dir, 30);
        let dir = env_dir.join("backups");
        fs::write(dir.join("stackship-prod-20261206T093000Z.dump"), "PGDMP").unwrap();
        let failed_ago = |hours: i64| {
            let mut state = State::read(&state_file).unwrap();
            state.offsite = backup::Track::default();
            state.offsite.record(Run {
                at: fixed_now() - chrono::Duration::minutes(30),
                ok: true,
                detail: "snapshot bbbb2222".into(),
                size: None,
            });
            state.repository_check = backup::Track::default();
            state.repository_check.record(Run {
                at: fixed_now() - chrono::Duration::hours(hours),
                ok: false,
                detail: "restic on /srv/restic/prod: Fatal: connection lost".into(),
                size: None,
            });
            state.write(&state_file).unwrap();
        };
        let fake = helpers_complete(COUNTS);
        let restic = repository_with_a_snapshot(COUNTS);
        // Five hours after the failure: not yet.
        failed_ago(5);
        let (r, _, _) = exec_with_restic(root.path(), &fake, &restic, &["scheduled", "prod"]);
        r.unwrap();
        assert!(restic.calls().is_empty(), "{:?}", restic.calls());
        // Seven: the repository check alone (the test restore of the local dump is recent).
        failed_ago(7);
        let (r, _, _) = exec_with_restic(root.path(), &fake, &restic, &["scheduled", "prod"]);
        r.unwrap();
        assert_eq!(restic.calls()[0], "check --read-data-subset 10%");
        let helpers = fake
            .writes()
            .into_iter()
            .filter(|w| w.starts_with("docker service create") && w.contains("ops-verify-42"))
            .count();
        assert_eq!(helpers, 1, "the off-site copy's test restore only");
        let state = state_of(&env_dir);
        assert!(state.repository_check.last.unwrap().ok);
        assert_eq!(state.test_restore.last.unwrap().detail, "x");

        // On the schedule a snapshot without its counts is not proved.
        failed_ago(7);
        let restic = FakeRestic::new(|args: &[&str]| {
            match args[0] {
            "snapshots" => Ok(r#"[{"time":"2026-12-05T03:00:00Z","paths":["/srv/deploy/prod/backups/stackship-prod-20261205T030000Z.dump"],"id":"bbbb2222cccc","short_id":"bbbb2222"}]"#.to_owned()),
            _ => Ok(String::new()),
        }
        });
        let (r, _, _) = exec_with_restic(root.path(), &fake, &restic, &["scheduled", "prod"]);
        assert_eq!(
            r.unwrap_err().to_string(),
            "the repository check failed: the off-site snapshot bbbb2222 (2026-12-05T03:00:00Z) holds no .counts file to compare the restored copy with"
        );
    }

    #[test]
    fn db_check_exits_1_when_a_backup_is_missing_or_a_test_restore_failed() {
        let (root, env_dir) = backup_env("");
        let fake = FakeEngine::new();
        let (r, _, out) = exec_with(
            root.path(),
            &fake,
            &local(root.path()),
            &never,
            &["check", "prod"],
        );
        assert_eq!(r.unwrap(), Outcome::Exited(1));
        assert_eq!(
            out,
            "FAIL backup: none yet\nok   test restore: none yet\nprod: 1 backup check(s) failed\n"
        );
        let mut state = State::default();
        state.backup.record(Run {
            at: fixed_now() - chrono::Duration::hours(3),
            ok: true,
            detail: "/b/x.dump".into(),
            size: Some(9),
        });
        state.test_restore.record(Run {
            at: fixed_now() - chrono::Duration::hours(2),
            ok: true,
            detail: "x.dump restored".into(),
            size: None,
        });
        fs::create_dir_all(env_dir.join("backups")).unwrap();
        state
            .write(&env_dir.join("backups").join(backup::STATE_FILE))
            .unwrap();
        let (r, _, out) = exec_with(
            root.path(),
            &fake,
            &local(root.path()),
            &never,
            &["check", "prod"],
        );
        assert_eq!(r.unwrap(), Outcome::Done);
        assert_eq!(
            out,
            "ok   backup: 3h 0m ago, /b/x.dump (9 bytes)\nok   test restore: passed 2h 0m ago: x.dump restored\nprod: backups ok\n"
        );
        // BACKUP_MAX_AGE from the process environment wins over the default.
        let mut strict = local(root.path());
        strict
            .settings_env
            .insert("BACKUP_MAX_AGE".into(), "3600".into());
        let (r, _, out) = exec_with(root.path(), &fake, &strict, &never, &["check", "prod"]);
        assert_eq!(r.unwrap(), Outcome::Exited(1));
        assert!(out.starts_with("FAIL backup: 3h 0m ago"), "{out}");
    }

    #[test]
    fn the_schedule_runs_what_is_due_and_nothing_else_silently() {
        let (root, env_dir) = backup_env("BACKUP_EVERY=3600\n");
        let fake = swarm();
        // Nothing deployed yet: nothing to do, nothing said.
        fs::remove_dir(env_dir.join("current")).unwrap();
        let (r, lines, out) = exec_with(
            root.path(),
            &fake,
            &local(root.path()),
            &never,
            &["scheduled", "prod"],
        );
        r.unwrap();
        assert!(lines.is_empty() && out.is_empty() && fake.calls().is_empty());
        fs::create_dir(env_dir.join("current")).unwrap();
        // Both fresh: nothing runs.
        let mut state = State::default();
        let recent = |minutes: i64| Run {
            at: fixed_now() - chrono::Duration::minutes(minutes),
            ok: true,
            detail: "x".into(),
            size: None,
        };
        state.backup.record(recent(30));
        state.test_restore.record(recent(60 * 24));
        fs::create_dir_all(env_dir.join("backups")).unwrap();
        let state_file = env_dir.join("backups").join(backup::STATE_FILE);
        state.write(&state_file).unwrap();
        let (r, lines, _) = exec_with(
            root.path(),
            &fake,
            &local(root.path()),
            &never,
            &["scheduled", "prod"],
        );
        r.unwrap();
        assert!(lines.is_empty() && fake.calls().is_empty(), "{lines:?}");
        // The backup is an hour old: it runs (and the test restore, a day old, does not).
        state.backup.record(recent(60));
        state.write(&state_file).unwrap();
        dumped(&env_dir.join("backups"), COUNTS);
        fake.answer(&["service", "create"], "");
        fake.answer(&["service", "ps"], "Complete 1s|");
        fake.answer(&["service", "logs"], "");
        let (r, _, _) = exec_with(
            root.path(),
            &fake,
            &local(root.path()),
            &never,
            &["scheduled", "prod"],
        );
        r.unwrap();
        assert_eq!(
            fake.writes().len(),
            4,
            "one helper, and the state's: {:?}",
            fake.writes()
        );
        assert!(fake.writes()[0].contains("--name stackship-prod-ops-backup-42"));
        assert!(fake.writes()[2].contains("--name stackship-prod-ops-status-42"));
        assert_eq!(state_of(&env_dir).backup.last_ok.unwrap().at, fixed_now());
        // While another backup, test restore or restore holds the backup lock: skipped.
        let before = fake.calls().len();
        let mut due = state_of(&env_dir);
        due.backup.record(recent(120));
        due.write(&state_file).unwrap();
        let _held = DeployLock::acquire_backup(
            &env_dir,
            "prod backup",
            "someone",
            Duration::ZERO,
            &mut |_: &str| {},
        )
        .unwrap();
        let (r, lines, _) = exec_with(
            root.path(),
            &fake,
            &local(root.path()),
            &never,
            &["scheduled", "prod"],
        );
        r.unwrap();
        assert_eq!(fake.calls().len(), before, "{lines:?}");
    }

    #[test]
    fn a_restore_from_the_repository_fetches_the_newest_snapshot_and_restores_it() {
        let (root, env_dir) = backup_env("BACKUP_REPOSITORY=/srv/restic/prod\n");
        let fake = helpers_complete(RESTORED);
        let seen_scratch = RefCell::new(None);
        let scratch_owner = Cell::new((0, 0));
        let restic = FakeRestic::new(|args: &[&str]| {
            match args[0] {
            "snapshots" => Ok(r#"[{"time":"2026-12-05T03:00:00Z","paths":["/srv/deploy/prod/backups/stackship-prod-20261205T030000Z.counts","/srv/deploy/prod/backups/stackship-prod-20261205T030000Z.dump"],"id":"bbbb2222","short_id":"bbbb2222"},
                {"time":"2026-12-04T03:00:00Z","paths":["/srv/deploy/prod/backups/stackship-prod-20261204T030000Z.dump"],"id":"aaaa1111","short_id":"aaaa1111"}]"#.to_owned()),
            "restore" => {
                // restic restores the file below --target with its whole path.
                let target = Path::new(args[3]);
                let made = fs::metadata(target).unwrap();
                scratch_owner.set((
                    std::os::unix::fs::MetadataExt::uid(&made),
                    std::os::unix::fs::MetadataExt::gid(&made),
                ));
                let file = target.join(args[5].trim_start_matches('/'));
                fs::create_dir_all(file.parent().unwrap()).unwrap();
                fs::write(&file, "PGDMP").unwrap();
                *seen_scratch.borrow_mut() = Some(target.to_owned());
                Ok(String::new())
            }
            _ => Ok(String::new()),
        }
        });
        // Without --yes: refused before restic is asked anything.
        let (r, _, _) = exec_with_restic(
            root.path(),
            &fake,
            &restic,
            &["restore", "prod", "--from-repository"],
        );
        assert!(r.unwrap_err().to_string().contains("run again with --yes"));
        assert!(restic.calls().is_empty());
        let (r, lines, _) = exec_with_restic(
            root.path(),
            &fake,
            &restic,
            &["restore", "prod", "--from-repository", "--yes"],
        );
        r.unwrap();
        let calls = restic.calls();
        assert_eq!(
            calls[..2],
            [
                "cat config",
                "snapshots --json --host stackship-prod --tag prod"
            ]
        );
        let scratch = seen_scratch.borrow().clone().unwrap();
        assert_eq!(scratch, env_dir.join(".restore-42"));
        assert_eq!(
            calls[2],
            format!(
                "restore bbbb2222 --target {} --include /srv/deploy/prod/backups/stackship-prod-20261205T030000Z.dump",
                scratch.display()
            )
        );
        assert!(!scratch.exists(), "the scratch directory is removed");
        assert!(lines[0].starts_with("fetching /srv/deploy/prod/backups/stackship-prod-20261205T030000Z.dump from snapshot bbbb2222 (2026-12-05T03:00:00Z)"), "{lines:?}");
        assert!(fake.writes()[0].contains("--name stackship-prod-ops-restore-42"));
        // Root runs restic as the environment's owner: the directory it fetches into is theirs.
        let owner = owned_by_another_user(&env_dir);
        let run = |r: &Repository, a: &[&str]| restic.run(r, a);
        let as_root = Local {
            restic: &run,
            ids: (0, 0),
            ..local(root.path())
        };
        let (r, _, _) = exec_with(
            root.path(),
            &fake,
            &as_root,
            &never,
            &["restore", "prod", "--from-repository", "--yes"],
        );
        r.unwrap();
        assert_eq!(scratch_owner.get(), owner);
        // A snapshot by its id; an unknown one is refused, naming those there are.
        let (r, _, _) = exec_with_restic(
            root.path(),
            &fake,
            &restic,
            &[
                "restore",
                "prod",
                "--from-repository",
                "--snapshot",
                "aaaa",
                "--yes",
            ],
        );
        r.unwrap();
        assert!(
            restic
                .calls()
                .last()
                .unwrap()
                .starts_with("restore aaaa1111 ")
        );
        let (r, _, _) = exec_with_restic(
            root.path(),
            &fake,
            &restic,
            &[
                "restore",
                "prod",
                "--from-repository",
                "--snapshot",
                "cccc",
                "--yes",
            ],
        );
        assert_eq!(
            r.unwrap_err().to_string(),
            "no snapshot cccc of prod in /srv/restic/prod (its snapshots: aaaa1111 2026-12-04T03:00:00Z, bbbb2222 2026-12-05T03:00:00Z)"
        );
        // Without a repository setting: refused, naming where to set it.
        fs::write(env_dir.join("deploy.env"), "").unwrap();
        let (r, _, _) = exec_with_restic(
            root.path(),
            &fake,
            &restic,
            &["restore", "prod", "--from-repository", "--yes"],
        );
        assert!(
            r.unwrap_err()
                .to_string()
                .starts_with("--from-repository: BACKUP_REPOSITORY is not set for prod")
        );
    }

    /// A state file with a good backup `minutes` ago (and the test restore fresh).
    fn recent_state(env_dir: &Path, minutes: i64) -> PathBuf {
        let mut state = State::default();
        let run = |minutes: i64| Run {
            at: fixed_now() - chrono::Duration::minutes(minutes),
            ok: true,
            detail: "x".into(),
            size: None,
        };
        state.backup.record(run(minutes));
        state.test_restore.record(run(10));
        state.repository_check.record(run(10));
        fs::create_dir_all(env_dir.join("backups")).unwrap();
        let path = env_dir.join("backups").join(backup::STATE_FILE);
        state.write(&path).unwrap();
        path
    }

    #[test]
    fn when_only_the_off_site_copy_is_due_the_schedule_copies_the_newest_dump() {
        let (root, env_dir) = backup_env("BACKUP_REPOSITORY=/srv/restic/prod\n");
        let state_file = recent_state(&env_dir, 30);
        let dir = env_dir.join("backups");
        let dump = dir.join("stackship-prod-20261206T093000Z.dump");
        fs::write(&dump, "PGDMP").unwrap();
        fs::write(dir.join("stackship-prod-20261206T093000Z.counts"), COUNTS).unwrap();
        // A newer one, made by hand elsewhere, is not the last good backup the state names.
        fs::write(dir.join("stackship-prod-20261206T095000Z.dump"), "newer").unwrap();
        let mut state = State::read(&state_file).unwrap();
        state.backup = backup::Track::default();
        state.backup.record(Run {
            at: fixed_now() - chrono::Duration::minutes(30),
            ok: true,
            detail: dump.display().to_string(),
            size: Some(5),
        });
        state.write(&state_file).unwrap();
        let fake = helpers_complete("");
        let restic = FakeRestic::new(|args: &[&str]| match args[0] {
            "snapshots" => Ok("[]".to_owned()),
            "backup" => Ok(
                "{\"message_type\":\"summary\",\"snapshot_id\":\"cafe0123456789\"}\n".to_owned(),
            ),
            _ => Ok(String::new()),
        });
        let (r, lines, _) = exec_with_restic(root.path(), &fake, &restic, &["scheduled", "prod"]);
        r.unwrap();
        assert!(
            !fake.writes().iter().any(|w| w.contains("ops-backup")),
            "no new dump: {:?}",
            fake.writes()
        );
        let calls = restic.calls();
        assert_eq!(
            calls[..3],
            [
                "cat config",
                "snapshots --json --host stackship-prod --tag prod",
                &format!(
                    "backup --json --host stackship-prod --tag stackship --tag prod {} {}",
                    dir.join("stackship-prod-20261206T093000Z.dump").display(),
                    dir.join("stackship-prod-20261206T093000Z.counts").display()
                )
            ],
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("is not off-site yet: copying it")),
            "{lines:?}"
        );
        let state = state_of(&env_dir);
        assert_eq!(state.offsite.last_ok.unwrap().detail, "snapshot cafe0123");
        assert_eq!(
            state.backup.last_ok.unwrap().at,
            fixed_now() - chrono::Duration::minutes(30)
        );
    }

    #[test]
    fn the_schedule_backs_up_locally_when_the_repository_fails_or_is_another_servers() {
        // The repository does not open: the local backup is made all the same.
        let (root, env_dir) = backup_env("BACKUP_REPOSITORY=/srv/restic/prod\n");
        dumped(&env_dir.join("backups"), COUNTS);
        let fake = helpers_complete("");
        let restic =
            FakeRestic::new(|_: &[&str]| Err("Fatal: wrong password or no key found\n".to_owned()));
        let (r, _, _) = exec_with_restic(root.path(), &fake, &restic, &["scheduled", "prod"]);
        let e = r.unwrap_err().to_string();
        assert!(
            e.contains("was written, but it was not copied off-site: the password in "),
            "{e}"
        );
        let state = state_of(&env_dir);
        assert!(state.backup.last_ok.is_some(), "the local backup was made");
        assert!(state.first_backup.is_some());
        assert!(!state.offsite.last.unwrap().ok);

        // A repository with backups this new server did not make: not copied over them.
        let (root, env_dir) = backup_env("BACKUP_REPOSITORY=/srv/restic/prod\n");
        dumped(&env_dir.join("backups"), COUNTS);
        let fake = helpers_complete("");
        let restic = FakeRestic::new(|args: &[&str]| {
            match args[0] {
            "snapshots" => Ok(r#"[{"time":"2026-12-05T03:00:00Z","paths":["/old/stackship-prod-20261205T030000Z.dump"],"id":"bbbb2222","short_id":"bbbb2222"}]"#.to_owned()),
            _ => Ok(String::new()),
        }
        });
        let (r, _, _) = exec_with_restic(root.path(), &fake, &restic, &["scheduled", "prod"]);
        let e = r.unwrap_err().to_string();
        assert!(e.contains("already holds 1 backup(s) of prod that this server did not make (the newest bbbb2222 from 2026-12-05T03:00:00Z): restore from them first"), "{e}");
        assert!(
            !restic
                .calls()
                .iter()
                .any(|c| c.starts_with("backup") || c.starts_with("forget")),
            "{:?}",
            restic.calls()
        );
        assert!(state_of(&env_dir).backup.last_ok.is_some());
        // After a restore from it (or a copy made by hand) the schedule copies there.
        let state_file = env_dir.join("backups").join(backup::STATE_FILE);
        let mut state = state_of(&env_dir);
        state.joined = Some("restored from snapshot bbbb2222".into());
        state.repository = Some("/srv/restic/prod".into());
        // (and the failed try's pause over)
        state.offsite = backup::Track::default();
        state.write(&state_file).unwrap();
        let (r, _, _) = exec_with_restic(root.path(), &fake, &restic, &["scheduled", "prod"]);
        // The copy of the dump made above is tried now (this fake names no snapshot).
        let e = r.unwrap_err().to_string();
        assert!(e.contains("restic backup named no snapshot"), "{e}");
        assert!(
            restic
                .calls()
                .iter()
                .any(|c| c.starts_with("backup --json"))
        );
    }

    #[test]
    fn the_scheduled_test_restore_needs_the_counts_and_a_restored_table() {
        let (root, env_dir) = verify_setup();
        let state_file = recent_state(&env_dir, 10);
        let mut state = State::read(&state_file).unwrap();
        state.test_restore = backup::Track::default();
        state.write(&state_file).unwrap();
        fs::remove_file(env_dir.join("backups/stackship-prod-20261205T000000Z.counts")).unwrap();
        let fake = helpers_complete(COUNTS);
        let (r, _, _) = exec_with(
            root.path(),
            &fake,
            &local(root.path()),
            &never,
            &["scheduled", "prod"],
        );
        let e = r.unwrap_err().to_string();
        assert!(e.contains("no row counts beside it"), "{e}");
        assert!(!state_of(&env_dir).test_restore.last.unwrap().ok);
        // By hand, a dump without counts is restored and said to have none to compare.
        let (r, lines, _) = exec_with(
            root.path(),
            &fake,
            &local(root.path()),
            &never,
            &["verify", "prod"],
        );
        r.unwrap();
        assert!(
            lines
                .iter()
                .any(|l| l.contains("no row counts were recorded with this backup")),
            "{lines:?}"
        );
        // A copy without a single table is no proof of anything.
        let fake = helpers_complete("migration|none\n");
        let (r, _, _) = exec_with(
            root.path(),
            &fake,
            &local(root.path()),
            &never,
            &["verify", "prod"],
        );
        let e = r.unwrap_err().to_string();
        assert!(e.contains("the restored copy holds no table"), "{e}");
        // Counts that cannot be read fail it too.
        fs::create_dir(env_dir.join("backups/stackship-prod-20261205T000000Z.counts")).unwrap();
        let (r, _, _) = exec_with(
            root.path(),
            &fake,
            &local(root.path()),
            &never,
            &["verify", "prod"],
        );
        assert!(
            r.unwrap_err()
                .to_string()
                .contains("cannot read the row counts")
        );
    }

    #[test]
    fn the_schedule_decides_again_under_the_lock_and_a_failed_test_restore_rests() {
        let (root, env_dir) = verify_setup();
        let state_file = recent_state(&env_dir, 10);
        let mut state = State::read(&state_file).unwrap();
        state.test_restore = backup::Track::default();
        state.test_restore.record(Run {
            at: fixed_now() - chrono::Duration::hours(1),
            ok: false,
            detail: "pg_restore: error".into(),
            size: None,
        });
        state.write(&state_file).unwrap();
        let fake = helpers_complete(COUNTS);
        // Failed an hour ago: not again for six hours.
        let (r, _, _) = exec_with(
            root.path(),
            &fake,
            &local(root.path()),
            &never,
            &["scheduled", "prod"],
        );
        r.unwrap();
        assert!(fake.writes().is_empty(), "{:?}", fake.writes());
    }

    #[test]
    fn a_restore_from_the_repository_lets_the_schedule_copy_there_and_refuses_an_ambiguous_id() {
        let (root, env_dir) = backup_env("BACKUP_REPOSITORY=/srv/restic/prod\n");
        let fake = helpers_complete(RESTORED);
        let restic = FakeRestic::new(|args: &[&str]| {
            match args[0] {
            "snapshots" => Ok(r#"[{"time":"2026-12-05T03:00:00Z","paths":["/b/stackship-prod-20261205T030000Z.dump"],"id":"abcd2222","short_id":"abcd2222"},
                {"time":"2026-12-04T03:00:00Z","paths":["/b/stackship-prod-20261204T030000Z.dump"],"id":"abcd1111","short_id":"abcd1111"}]"#.to_owned()),
            "restore" => {
                let file = Path::new(args[3]).join(args[5].trim_start_matches('/'));
                fs::create_dir_all(file.parent().unwrap()).unwrap();
                fs::write(&file, "PGDMP").unwrap();
                Ok(String::new())
            }
            _ => Ok(String::new()),
        }
        });
        let (r, _, _) = exec_with_restic(
            root.path(),
            &fake,
            &restic,
            &[
                "restore",
                "prod",
                "--from-repository",
                "--snapshot",
                "abcd",
                "--yes",
            ],
        );
        assert_eq!(
            r.unwrap_err().to_string(),
            "abcd names 2 snapshots of prod: give more of its id (its snapshots: abcd1111 2026-12-04T03:00:00Z, abcd2222 2026-12-05T03:00:00Z)"
        );
        assert!(!restic.calls().iter().any(|c| c.starts_with("restore")));
        let (r, _, _) = exec_with_restic(
            root.path(),
            &fake,
            &restic,
            &["restore", "prod", "--from-repository", "--yes"],
        );
        r.unwrap();
        assert_eq!(
            state_of(&env_dir).joined.unwrap(),
            "restored from snapshot abcd2222 (2026-12-05T03:00:00Z) of /srv/restic/prod at 2026-12-06T10:00:00Z"
        );
        // `db snapshots` lists them, oldest first.
        let (r, lines, out) = exec_with_restic(root.path(), &fake, &restic, &["snapshots", "prod"]);
        r.unwrap();
        assert_eq!(
            out,
            "abcd1111  2026-12-04T03:00:00Z  /b/stackship-prod-20261204T030000Z.dump\nabcd2222  2026-12-05T03:00:00Z  /b/stackship-prod-20261205T030000Z.dump\n"
        );
        assert_eq!(
            lines.last().unwrap(),
            "2 snapshot(s) of prod in /srv/restic/prod"
        );
    }

    #[test]
    fn only_a_good_dump_newer_than_the_last_copy_and_with_its_counts_is_copied_alone() {
        let dir = tempfile::tempdir().unwrap();
        let dump = dir.path().join("stackship-prod-20261206T093000Z.dump");
        fs::write(&dump, "PGDMP").unwrap();
        let at = |minutes: i64| fixed_now() - chrono::Duration::minutes(minutes);
        let run = |minutes: i64, ok: bool, detail: &str| Run {
            at: at(minutes),
            ok,
            detail: detail.to_owned(),
            size: None,
        };
        let mut state = State::default();
        assert_eq!(not_off_site_yet(&state), None, "no backup yet");
        state
            .backup
            .record(run(30, true, &dump.display().to_string()));
        assert_eq!(not_off_site_yet(&state), None, "no counts beside it");
        fs::write(backup::manifest_path(&dump), COUNTS).unwrap();
        assert_eq!(not_off_site_yet(&state), Some(dump.clone()));
        state.offsite.record(run(40, true, "snapshot a"));
        assert_eq!(
            not_off_site_yet(&state),
            Some(dump.clone()),
            "copied before it"
        );
        state.offsite.record(run(30, true, "snapshot b"));
        assert_eq!(not_off_site_yet(&state), None, "copied already");
        // A dump failed since: nothing new to copy.
        state.backup.record(run(5, false, "pg_dump: error"));
        assert_eq!(not_off_site_yet(&state), None);
        // Gone from the disk: nothing to copy either.
        state
            .backup
            .record(run(4, true, "/nowhere/stackship-prod-x.dump"));
        assert_eq!(not_off_site_yet(&state), None);
        // The dump's file removed by hand while its counts stayed: nothing to copy.
        let lone = dir.path().join("stackship-prod-20261206T100000Z.dump");
        fs::write(backup::manifest_path(&lone), COUNTS).unwrap();
        state
            .backup
            .record(run(3, true, &lone.display().to_string()));
        assert_eq!(not_off_site_yet(&state), None, "counts without their dump");
        assert_eq!(
            home_of(
                "root:x:0:0:root:/root:/bin/bash\nstackship-deploy:x:1001:1001::/home/stackship-deploy:/bin/bash\n",
                1001
            ),
            Some(PathBuf::from("/home/stackship-deploy"))
        );
        assert_eq!(home_of("x:x:1001:1001::/home/x\n", 1001), None);
        assert_eq!(home_of("root:x:0:0:root:/root:/bin/bash\n", 1001), None);
    }
}
