//! What the database backups decide, over plain data: the manifest a backup records (row counts
//! of every table and the schema's migration version, taken in the dump's own snapshot), the
//! comparison a test restore makes against it, the state file that remembers the last backup,
//! off-site copy, test restore and repository check, when a scheduled run is due, what `db
//! check` and `status` say about it, and how restic is called for the environment's repository.
//!
//! The commands that act on these decisions are in [`crate::commands::db`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::settings::Backup;

/// The state file beside the environment's dated dumps.
pub const STATE_FILE: &str = "state.json";

/// The state file of the environment in `env_dir`: `<env dir>/backups/state.json`.
pub fn state_path(env_dir: &Path) -> PathBuf {
    env_dir.join("backups").join(STATE_FILE)
}

/// The manifest of a dump, beside it: `<stack>-<stamp>.dump` → `<stack>-<stamp>.counts`.
pub fn manifest_path(dump: &Path) -> PathBuf {
    dump.with_extension("counts")
}

/// The table the backend exports the backups' state from ([`status_sql`]): its rows are not
/// dumped (a restore must not bring back an older state of the backups), nor counted.
pub const STATUS_TABLE: &str = "public.backup_status";

/// The SQL that prints the manifest's lines: `table|<schema>.<name>|<rows>` for every table
/// outside the system schemas (but [`STATUS_TABLE`]), then `migration|<version>` (the newest applied sqlx migration;
/// `none` without sqlx's table). Run in the dump's snapshot it records what the dump holds;
/// run on a restored copy it tells whether the copy holds the same.
pub const COUNT_SQL: &str = r#"SELECT 'table|' || pg_catalog.format('%I.%I', n.nspname, c.relname) || '|'
    || (pg_catalog.xpath('/row/c/text()', pg_catalog.query_to_xml(
        pg_catalog.format('SELECT count(*) AS c FROM %I.%I', n.nspname, c.relname),
        false, true, '')))[1]::text
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p') AND n.nspname <> 'information_schema'
   AND n.nspname NOT LIKE 'pg\_%'
   AND NOT (n.nspname = 'public' AND c.relname = 'backup_status')
 ORDER BY 1;
SELECT 'migration|' || COALESCE(CASE WHEN pg_catalog.to_regclass('public._sqlx_migrations') IS NULL
    THEN 'none' ELSE (pg_catalog.xpath('/row/v/text()', pg_catalog.query_to_xml(
        'SELECT max(version) AS v FROM public._sqlx_migrations WHERE success', false, true, '')))[1]::text
    END, 'none');"#;

/// What a dump holds, by the numbers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Manifest {
    /// Rows per table (`schema.name`).
    pub tables: BTreeMap<String, u64>,
    /// The newest applied migration, `none` without one.
    pub migration: Option<String>,
}

impl Manifest {
    /// Reads the manifest's lines out of `text` (other lines are ignored: a helper's output
    /// carries them among its messages). Errors name the line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut m = Manifest::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("table|") {
                let (name, rows) = rest
                    .rsplit_once('|')
                    .ok_or_else(|| format!("line {}: `{line}` has no row count", i + 1))?;
                let rows = rows
                    .parse()
                    .map_err(|_| format!("line {}: `{rows}` is not a row count", i + 1))?;
                if m.tables.insert(name.to_owned(), rows).is_some() {
                    return Err(format!("line {}: table {name} is listed twice", i + 1));
                }
            } else if let Some(version) = line.strip_prefix("migration|") {
                m.migration = Some(version.to_owned());
            }
        }
        if m.migration.is_none() {
            return Err("no `migration|` line: the count did not finish".to_owned());
        }
        Ok(m)
    }

    /// The manifest as [`Manifest::parse`] reads it.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, rows) in &self.tables {
            let _ = writeln!(out, "table|{name}|{rows}");
        }
        let _ = writeln!(
            out,
            "migration|{}",
            self.migration.as_deref().unwrap_or("none")
        );
        out
    }

    /// Rows in all tables.
    pub fn rows(&self) -> u64 {
        self.tables.values().sum()
    }
}

/// How a restored copy (`got`) differs from what the backup recorded (`want`), one sentence
/// each; empty when they agree.
pub fn differences(want: &Manifest, got: &Manifest) -> Vec<String> {
    let mut out = Vec::new();
    if want.migration != got.migration {
        out.push(format!(
            "migration version {} restored, {} recorded",
            got.migration.as_deref().unwrap_or("none"),
            want.migration.as_deref().unwrap_or("none")
        ));
    }
    for (name, rows) in &want.tables {
        match got.tables.get(name) {
            None => out.push(format!("table {name} ({rows} rows recorded) is missing")),
            Some(r) if r != rows => {
                out.push(format!("table {name}: {r} rows restored, {rows} recorded"))
            }
            Some(_) => {}
        }
    }
    for name in got.tables.keys() {
        if !want.tables.contains_key(name) {
            out.push(format!("table {name} was restored but not recorded"));
        }
    }
    out
}

/// One run of a kind of work: when it started, whether it succeeded, and what it says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    pub at: DateTime<Utc>,
    pub ok: bool,
    /// The file, snapshot or error.
    pub detail: String,
    /// Bytes, for a backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// The last run of a kind, and the last good one.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Track {
    pub last: Option<Run>,
    pub last_ok: Option<Run>,
}

impl Track {
    pub fn record(&mut self, run: Run) {
        if run.ok {
            self.last_ok = Some(run.clone());
        }
        self.last = Some(run);
    }
}

/// What the environment's backups have done: `<backups dir>/state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct State {
    #[serde(default)]
    pub backup: Track,
    /// The copy in the repository.
    #[serde(default)]
    pub offsite: Track,
    #[serde(default)]
    pub test_restore: Track,
    #[serde(default)]
    pub repository_check: Track,
    /// When this server's first good backup started: a test restore or repository check still
    /// missing a period after it is late.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_backup: Option<DateTime<Utc>>,
    /// How this server came to continue the repository's backups (a restore from it): the
    /// schedule copies to a repository that holds backups it did not make only after this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joined: Option<String>,
    /// The repository (as shown) this server copied to or was restored from: the schedule
    /// copies to it without asking whose its backups are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
}

impl State {
    /// The state in `path`; none yet is the empty state.
    pub fn read(path: &Path) -> Result<Self, String> {
        match fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| format!("{}: not a backup state file: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Writes the state to `path` whole or not at all (a temporary file renamed over it).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    }
}

/// A scheduled run starts within this of its time (the schedule ticks once a minute).
pub const TICK: Duration = Duration::from_secs(60);

/// After a failed backup, the next try waits this long, or the interval when it is shorter.
pub const RETRY_AFTER: Duration = Duration::from_secs(15 * 60);

/// After a failed test restore (a restore into the manager's memory, maybe long), the next try
/// waits this long, or the interval when it is shorter.
pub const TEST_RETRY_AFTER: Duration = Duration::from_secs(6 * 3600);

fn age(at: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    (now - at).to_std().unwrap_or(Duration::ZERO)
}

/// Whether a scheduled run of a kind is due at `now`: its last good run is `every` old (within
/// a tick) or there is none, and a failed try is not more recent than `retry` (or `every`, when
/// shorter).
pub fn due(track: &Track, every: Duration, retry: Duration, now: DateTime<Utc>) -> bool {
    let stale = track
        .last_ok
        .as_ref()
        .is_none_or(|r| age(r.at, now) + TICK > every);
    let resting = track
        .last
        .as_ref()
        .is_some_and(|r| !r.ok && age(r.at, now) < retry.min(every));
    stale && !resting
}

/// `3h 5m`, `2d 4h`, `45s`: an age as a person reads it.
pub fn words(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// One line of `db check` and `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// `backup`, `off-site copy`, `test restore`, `repository check`.
    pub what: &'static str,
    /// Whether it counts against the backups' health (`db check` exits 1).
    pub failed: bool,
    pub line: String,
}

/// What the state says about the environment's backups at `now`, one finding per kind.
pub fn findings(state: &State, settings: &Backup, now: DateTime<Utc>) -> Vec<Finding> {
    let max_age = settings.max_age.value;
    let mut out = Vec::new();
    let mut aged = |what: &'static str, track: &Track, ok_words: &dyn Fn(&Run) -> String| {
        let last_failed = track.last.as_ref().filter(|r| !r.ok);
        let failure = last_failed
            .map(|r| {
                format!(
                    "; the last try, {} ago, failed: {}",
                    words(age(r.at, now)),
                    r.detail
                )
            })
            .unwrap_or_default();
        match &track.last_ok {
            None => out.push(Finding {
                what,
                failed: true,
                line: format!("{what}: none yet{failure}"),
            }),
            Some(r) => {
                let old = age(r.at, now);
                let too_old = old > max_age;
                out.push(Finding {
                    what,
                    failed: too_old,
                    line: format!(
                        "{what}: {} ago, {}{}{failure}",
                        words(old),
                        ok_words(r),
                        if too_old {
                            format!(" (older than BACKUP_MAX_AGE, {})", words(max_age))
                        } else {
                            String::new()
                        }
                    ),
                });
            }
        }
    };
    aged("backup", &state.backup, &|r| match r.size {
        Some(size) => format!("{} ({size} bytes)", r.detail),
        None => r.detail.clone(),
    });
    if let Some(repo) = &settings.repository {
        aged("off-site copy", &state.offsite, &|r| {
            format!("{} in {}", r.detail, redact(&repo.value))
        });
    }
    // Late: none a period after the first backup, or the last one two periods old.
    let period = settings.test_restore_every.value;
    let mut last_result = |what: &'static str, track: &Track| match &track.last {
        None => {
            let late = state
                .first_backup
                .is_some_and(|first| age(first, now) > period + TICK);
            out.push(Finding {
                what,
                failed: late,
                line: if late {
                    format!(
                        "{what}: none yet, {} after the first backup (BACKUP_TEST_RESTORE_EVERY {})",
                        words(age(state.first_backup.unwrap_or(now), now)),
                        words(period)
                    )
                } else {
                    format!("{what}: none yet")
                },
            });
        }
        Some(r) => {
            let old = age(r.at, now);
            let late = old > 2 * period;
            out.push(Finding {
                what,
                failed: !r.ok || late,
                line: format!(
                    "{what}: {} {} ago: {}{}",
                    if r.ok { "passed" } else { "FAILED" },
                    words(old),
                    r.detail,
                    if late {
                        format!(
                            " (late: over twice BACKUP_TEST_RESTORE_EVERY, {})",
                            words(period)
                        )
                    } else {
                        String::new()
                    }
                ),
            });
        }
    };
    last_result("test restore", &state.test_restore);
    if settings.repository.is_some() {
        last_result("repository check", &state.repository_check);
    }
    out
}

/// The statement that writes the state's last runs into [`STATUS_TABLE`] for the backend's
/// `/metrics` (Prometheus): one row per kind that ran; nothing when the table does not exist
/// (a backend without its migration). `None` when nothing ran yet.
pub fn status_sql(state: &State) -> Option<String> {
    let value = |kind: &str, track: &Track| {
        let last = track.last.as_ref()?;
        let at = |r: &Run| format!("'{}'::timestamptz", r.at.to_rfc3339());
        Some(format!(
            "('{kind}', {}, {}, {})",
            track.last_ok.as_ref().map_or("NULL".to_owned(), at),
            at(last),
            last.ok
        ))
    };
    let rows: Vec<String> = [
        ("backup", &state.backup),
        ("offsite", &state.offsite),
        ("test_restore", &state.test_restore),
        ("repository_check", &state.repository_check),
    ]
    .into_iter()
    .filter_map(|(kind, track)| value(kind, track))
    .collect();
    if rows.is_empty() {
        return None;
    }
    Some(format!(
        "DO $$ BEGIN IF pg_catalog.to_regclass('{STATUS_TABLE}') IS NOT NULL THEN
INSERT INTO {STATUS_TABLE} (kind, last_success, last_run, last_run_ok) VALUES
{}
ON CONFLICT (kind) DO UPDATE SET last_success = EXCLUDED.last_success,
    last_run = EXCLUDED.last_run, last_run_ok = EXCLUDED.last_run_ok;
END IF; END $$;",
        rows.join(",\n")
    ))
}

/// The environment's restic repository and how restic reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repository {
    pub url: String,
    /// `--password-file`: the repository's password, never on a command line or in the
    /// environment.
    pub password_file: PathBuf,
    /// `KEY=VALUE` lines of `backup-repository.env` (S3 keys and the like), for restic's
    /// environment.
    pub env: Vec<(String, String)>,
    /// `-o` options (`sftp.command=...`).
    pub options: Vec<String>,
    /// restic's cache; none: `--no-cache`.
    pub cache_dir: Option<PathBuf>,
    /// The user, group and home restic runs as, when not this process's (root working on the
    /// deploy user's backups: what restic writes, in a local repository and its cache, stays
    /// the deploy user's).
    pub run_as: Option<(u32, u32, PathBuf)>,
}

/// The files in `<env dir>/secrets/` that reach a repository.
pub const PASSWORD_FILE: &str = "backup-repository-password";
pub const ENV_FILE: &str = "backup-repository.env";
pub const SSH_KEY_FILE: &str = "backup-ssh-key";
pub const KNOWN_HOSTS_FILE: &str = "backup-known-hosts";

impl Repository {
    /// The repository `url` of the environment whose secrets are in `secrets`, or why it
    /// cannot be used.
    pub fn new(url: &str, secrets: &Path, cache_dir: Option<PathBuf>) -> Result<Self, String> {
        let password_file = secrets.join(PASSWORD_FILE);
        match fs::metadata(&password_file) {
            Ok(m) if m.len() > 0 => {}
            _ => {
                return Err(format!(
                    "BACKUP_REPOSITORY is set but {} is missing or empty: write the repository's password there (mode 0600) and keep a copy off this server",
                    password_file.display()
                ));
            }
        }
        let env_path = secrets.join(ENV_FILE);
        let env = match fs::read_to_string(&env_path) {
            Ok(text) => {
                parse_env_file(&text).map_err(|e| format!("{}: {e}", env_path.display()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(format!("cannot read {}: {e}", env_path.display())),
        };
        let key = secrets.join(SSH_KEY_FILE);
        let mut options = Vec::new();
        if url.starts_with("sftp:") && key.exists() {
            let known = secrets.join(KNOWN_HOSTS_FILE);
            if !known.exists() {
                return Err(format!(
                    "{} is there but {} is missing: put the backup server's host key line there (ssh-keyscan, checked by hand)",
                    key.display(),
                    known.display()
                ));
            }
            options.push(format!("sftp.command={}", sftp_command(url, &key, &known)?));
        }
        Ok(Self {
            url: url.to_owned(),
            password_file,
            env,
            options,
            cache_dir,
            run_as: None,
        })
    }

    /// The location as it may be shown: without a password in it.
    pub fn shown(&self) -> String {
        redact(&self.url)
    }

    /// restic's environment: the location (`RESTIC_REPOSITORY`: it may hold a password, so it
    /// is never an argument) and `backup-repository.env`'s settings.
    pub fn environment(&self) -> Vec<(String, String)> {
        let mut env = vec![("RESTIC_REPOSITORY".to_owned(), self.url.clone())];
        env.extend(self.env.iter().cloned());
        env
    }

    /// restic's arguments for `command`.
    pub fn args(&self, command: &[&str]) -> Vec<String> {
        let mut args = vec![
            "--password-file".to_owned(),
            self.password_file.display().to_string(),
        ];
        match &self.cache_dir {
            Some(dir) => args.extend(["--cache-dir".to_owned(), dir.display().to_string()]),
            None => args.push("--no-cache".to_owned()),
        }
        for o in &self.options {
            args.extend(["--option".to_owned(), o.clone()]);
        }
        args.extend(command.iter().map(|s| (*s).to_owned()));
        args
    }
}

/// A repository location, or any text, with the password of each URL's user part replaced by
/// `***` (`rest:https://user:secret@host/x` → `rest:https://user:***@host/x`). The password may
/// hold `/`, `?`, `#` or `@`: what is masked runs from the first `:` after `://` to the last `@`
/// before the URL ends (at a blank or a quote).
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let start = i + 3;
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        let end = rest
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`'))
            .unwrap_or(rest.len());
        let url = &rest[..end];
        match (url.find(':'), url.rfind('@')) {
            (Some(colon), Some(at)) if colon < at => {
                out.push_str(&url[..colon]);
                out.push_str(":***");
                out.push_str(&url[at..]);
            }
            _ => out.push_str(url),
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// `KEY=VALUE` lines (comments and blank lines skipped; no quotes, no `export`).
pub fn parse_env_file(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        match line.split_once('=') {
            Some((k, v)) if config_hasher::interpolate::is_variable_name(k) => {
                out.push((k.to_owned(), v.to_owned()));
            }
            _ => return Err(format!("line {}: not KEY=VALUE", i + 1)),
        }
    }
    Ok(out)
}

/// The ssh command restic runs for an `sftp:` repository with the environment's own key and
/// pinned host key: `sftp:[user@]host:path` or `sftp://[user@]host[:port]/path`.
pub fn sftp_command(url: &str, key: &Path, known_hosts: &Path) -> Result<String, String> {
    let bad = || {
        format!(
            "BACKUP_REPOSITORY '{}' is not sftp:[user@]host:/path or sftp://[user@]host[:port]//path",
            redact(url)
        )
    };
    let (authority, port) = if let Some(rest) = url.strip_prefix("sftp://") {
        let authority = rest.split('/').next().unwrap_or_default();
        let (host_part, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h,
                Some(p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad)?),
            ),
            None => (authority, None),
        };
        (host_part, port)
    } else {
        let rest = url.strip_prefix("sftp:").ok_or_else(bad)?;
        (rest.split_once(':').ok_or_else(bad)?.0, None)
    };
    let host = authority.rsplit('@').next().unwrap_or_default();
    if host.is_empty() || authority.starts_with('@') {
        return Err(bad());
    }
    for p in [key, known_hosts] {
        if p.display().to_string().contains(char::is_whitespace) {
            return Err(format!(
                "{}: a path with a space cannot be given to restic's sftp.command",
                p.display()
            ));
        }
    }
    let mut cmd = format!(
        "ssh -F /dev/null -i {} -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile={} -o GlobalKnownHostsFile=/dev/null -o ServerAliveInterval=30",
        key.display(),
        known_hosts.display()
    );
    if let Some(port) = port {
        let _ = write!(cmd, " -p {port}");
    }
    let _ = write!(cmd, " {authority} -s sftp");
    Ok(cmd)
}

/// Why restic failed, in words that say what to do; `stderr` is restic's own (the repository's
/// location in it shown without its password).
pub fn restic_failure(stderr: &str, repo: &Repository) -> String {
    redact(&restic_words(stderr, repo).replace(&repo.url, &repo.shown()))
}

fn restic_words(stderr: &str, repo: &Repository) -> String {
    let fatal = stderr
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("Fatal:"))
        .or_else(|| stderr.lines().map(str::trim).rfind(|l| !l.is_empty()))
        .unwrap_or("no message");
    if stderr.contains("wrong password or no key found") {
        format!(
            "the password in {} does not open the repository {} (restic: {fatal})",
            repo.password_file.display(),
            repo.shown()
        )
    } else {
        format!("restic on {}: {fatal}", repo.shown())
    }
}

/// Whether restic's `stderr` says there is no repository at the location yet.
pub fn no_repository_yet(stderr: &str) -> bool {
    stderr.contains("Is there a repository at the following location?")
}

/// The snapshot id in `restic backup --json`'s output (its `summary` message).
pub fn snapshot_id(json_lines: &str) -> Option<String> {
    json_lines.lines().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        (v["message_type"] == "summary")
            .then(|| v["snapshot_id"].as_str().map(str::to_owned))
            .flatten()
    })
}

/// The newest snapshot of `restic snapshots --json` (`[...]`), with its files' paths.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Snapshot {
    pub id: String,
    pub short_id: String,
    pub time: DateTime<Utc>,
    #[serde(default)]
    pub paths: Vec<String>,
}

/// The snapshots in `restic snapshots --json`, oldest first.
pub fn snapshots(json: &str) -> Result<Vec<Snapshot>, String> {
    let mut list: Vec<Snapshot> =
        serde_json::from_str(json.trim()).map_err(|e| format!("restic snapshots --json: {e}"))?;
    list.sort_by_key(|s| s.time);
    Ok(list)
}

/// The dump and its manifest among a snapshot's paths.
pub fn dump_in(snapshot: &Snapshot) -> Option<(&str, Option<&str>)> {
    let dump = snapshot.paths.iter().find(|p| p.ends_with(".dump"))?;
    let counts = snapshot.paths.iter().find(|p| p.ends_with(".counts"));
    Some((dump.as_str(), counts.map(String::as_str)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{Origin, Sourced};

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn run(at: &str, ok: bool, detail: &str) -> Run {
        Run {
            at: t(at),
            ok,
            detail: detail.to_owned(),
            size: None,
        }
    }

    fn settings(repository: Option<&str>) -> Backup {
        let d = |v: u32| Sourced {
            value: v,
            origin: Origin::Default,
        };
        let s = |secs: u64| Sourced {
            value: Duration::from_secs(secs),
            origin: Origin::Default,
        };
        Backup {
            repository: repository.map(|r| Sourced {
                value: r.to_owned(),
                origin: Origin::Default,
            }),
            keep: d(7),
            keep_daily: d(7),
            keep_weekly: d(4),
            keep_monthly: d(6),
            every: s(86_400),
            test_restore_every: s(604_800),
            max_age: s(93_600),
        }
    }

    #[test]
    fn a_manifest_reads_back_what_it_writes_and_ignores_other_lines() {
        let text = "pg_dump: dumping contents\ntable|public.log_entries|42\ntable|public._sqlx_migrations|3\nmigration|20261101000000\n";
        let m = Manifest::parse(text).unwrap();
        assert_eq!(m.tables["public.log_entries"], 42);
        assert_eq!(m.rows(), 45);
        assert_eq!(m.migration.as_deref(), Some("20261101000000"));
        assert_eq!(Manifest::parse(&m.render()).unwrap(), m);
        assert!(m.render().starts_with("table|public._sqlx_migrations|3\n"));
    }

    #[test]
    fn a_cut_or_garbled_manifest_is_refused_naming_the_line() {
        assert!(
            Manifest::parse("table|public.a|1\n")
                .unwrap_err()
                .contains("did not finish")
        );
        assert!(
            Manifest::parse("table|public.a|x\nmigration|1\n")
                .unwrap_err()
                .contains("line 1: `x` is not a row count")
        );
        assert!(
            Manifest::parse("x\ntable|public.a\nmigration|1\n")
                .unwrap_err()
                .starts_with("line 2")
        );
        assert!(
            Manifest::parse("table|public.a|1\ntable|public.a|2\nmigration|1\n")
                .unwrap_err()
                .contains("listed twice")
        );
        // A schema or table name may hold a `|`: the count is after the last one.
        let m = Manifest::parse("table|public.\"a|b\"|5\nmigration|none\n").unwrap();
        assert_eq!(m.tables["public.\"a|b\""], 5);
    }

    #[test]
    fn differences_name_each_table_and_the_migration() {
        let want = Manifest::parse("table|public.a|5\ntable|public.b|1\nmigration|7\n").unwrap();
        assert!(differences(&want, &want).is_empty());
        let got = Manifest::parse("table|public.a|4\ntable|public.c|0\nmigration|6\n").unwrap();
        assert_eq!(
            differences(&want, &got),
            [
                "migration version 6 restored, 7 recorded",
                "table public.a: 4 rows restored, 5 recorded",
                "table public.b (1 rows recorded) is missing",
                "table public.c was restored but not recorded",
            ]
        );
    }

    #[test]
    fn a_track_keeps_the_last_run_and_the_last_good_one() {
        let mut track = Track::default();
        track.record(run("2026-12-01T03:00:00Z", true, "a"));
        track.record(run("2026-12-02T03:00:00Z", false, "b"));
        assert_eq!(track.last.as_ref().unwrap().detail, "b");
        assert_eq!(track.last_ok.as_ref().unwrap().detail, "a");
        track.record(run("2026-12-02T04:00:00Z", true, "c"));
        assert_eq!(track.last_ok.as_ref().unwrap().detail, "c");
    }

    #[test]
    fn the_state_file_is_written_whole_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        assert_eq!(State::read(&path).unwrap(), State::default());
        let mut state = State::default();
        state.backup.record(Run {
            size: Some(1234),
            ..run("2026-12-01T03:00:00Z", true, "/b/x.dump")
        });
        state
            .test_restore
            .record(run("2026-12-01T03:01:00Z", false, "boom"));
        state.write(&path).unwrap();
        assert_eq!(State::read(&path).unwrap(), state);
        assert!(!path.with_extension("json.tmp").exists());
        fs::write(&path, "{not json").unwrap();
        assert!(
            State::read(&path)
                .unwrap_err()
                .contains("not a backup state file")
        );
        // Only a missing file is no state yet; one that cannot be read is an error.
        let e = State::read(dir.path()).unwrap_err();
        assert!(e.starts_with("cannot read "), "{e}");
    }

    #[test]
    fn the_status_statement_writes_each_kind_that_ran() {
        assert_eq!(status_sql(&State::default()), None);
        let mut state = State::default();
        state.backup.record(run("2026-12-01T03:00:00Z", true, "a"));
        state.backup.record(run("2026-12-02T03:00:00Z", false, "b"));
        state
            .test_restore
            .record(run("2026-12-02T03:05:00Z", false, "c"));
        let sql = status_sql(&state).unwrap();
        assert!(sql.starts_with("DO $$ BEGIN IF pg_catalog.to_regclass('public.backup_status') IS NOT NULL THEN\nINSERT INTO public.backup_status "), "{sql}");
        assert!(sql.contains("\n('backup', '2026-12-01T03:00:00+00:00'::timestamptz, '2026-12-02T03:00:00+00:00'::timestamptz, false),\n('test_restore', NULL, '2026-12-02T03:05:00+00:00'::timestamptz, false)\nON CONFLICT (kind) DO UPDATE"), "{sql}");
        assert!(
            !sql.contains("offsite") && !sql.contains("repository_check"),
            "{sql}"
        );
        assert!(sql.ends_with("END IF; END $$;"), "{sql}");
    }

    #[test]
    fn a_scheduled_run_is_due_once_its_interval_passed_within_a_tick() {
        let day = Duration::from_secs(86_400);
        let mut track = Track::default();
        assert!(
            due(&track, day, RETRY_AFTER, t("2026-12-01T00:00:00Z")),
            "never ran"
        );
        track.record(run("2026-12-01T03:00:05Z", true, "x"));
        assert!(!due(&track, day, RETRY_AFTER, t("2026-12-02T02:58:00Z")));
        // The tick a minute before the day is full counts: no drift by a minute a day.
        assert!(due(&track, day, RETRY_AFTER, t("2026-12-02T02:59:06Z")));
        assert!(!due(&track, day, RETRY_AFTER, t("2026-12-02T02:59:05Z")));
        assert!(due(&track, day, RETRY_AFTER, t("2026-12-03T00:00:00Z")));
    }

    #[test]
    fn a_failed_run_is_retried_after_a_pause_not_every_tick() {
        let day = Duration::from_secs(86_400);
        let mut track = Track::default();
        track.record(run("2026-12-01T03:00:00Z", false, "no"));
        assert!(!due(&track, day, RETRY_AFTER, t("2026-12-01T03:14:59Z")));
        assert!(due(&track, day, RETRY_AFTER, t("2026-12-01T03:15:00Z")));
        // With an interval shorter than the pause, the interval is the pause.
        let five = Duration::from_secs(300);
        assert!(!due(&track, five, RETRY_AFTER, t("2026-12-01T03:04:59Z")));
        assert!(due(&track, five, RETRY_AFTER, t("2026-12-01T03:05:00Z")));
        // A test restore waits longer after a failure: its own pause.
        assert!(!due(
            &track,
            day,
            TEST_RETRY_AFTER,
            t("2026-12-01T08:59:59Z")
        ));
        assert!(due(
            &track,
            day,
            TEST_RETRY_AFTER,
            t("2026-12-01T09:00:00Z")
        ));
        // A good run after the failure: the interval counts from it.
        track.record(run("2026-12-01T03:15:00Z", true, "yes"));
        assert!(!due(&track, day, RETRY_AFTER, t("2026-12-01T04:00:00Z")));
    }

    #[test]
    fn ages_read_as_a_person_says_them() {
        assert_eq!(words(Duration::from_secs(59)), "59s");
        assert_eq!(words(Duration::from_secs(60)), "1m");
        assert_eq!(words(Duration::from_secs(3599)), "59m");
        assert_eq!(words(Duration::from_secs(3600 + 5 * 60)), "1h 5m");
        assert_eq!(words(Duration::from_secs(86_399)), "23h 59m");
        assert_eq!(words(Duration::from_secs(2 * 86_400 + 4 * 3600)), "2d 4h");
    }

    #[test]
    fn findings_fail_on_an_old_or_missing_backup_and_a_failed_test_restore() {
        let now = t("2026-12-02T04:00:00Z");
        let s = settings(None);
        let none = findings(&State::default(), &s, now);
        assert_eq!(none.len(), 2);
        assert!(
            none[0].failed && none[0].line == "backup: none yet",
            "{none:?}"
        );
        assert!(!none[1].failed && none[1].line == "test restore: none yet");

        let mut state = State::default();
        state.backup.record(Run {
            size: Some(2048),
            ..run("2026-12-02T03:00:00Z", true, "/b/p.dump")
        });
        state
            .test_restore
            .record(run("2026-12-02T03:01:00Z", true, "42 rows in 3 tables"));
        let f = findings(&state, &s, now);
        assert!(f.iter().all(|f| !f.failed), "{f:?}");
        assert_eq!(f[0].line, "backup: 1h 0m ago, /b/p.dump (2048 bytes)");
        assert_eq!(
            f[1].line,
            "test restore: passed 59m ago: 42 rows in 3 tables"
        );

        // 26 h and a second: older than BACKUP_MAX_AGE.
        let late = t("2026-12-03T05:00:01Z");
        let f = findings(&state, &s, late);
        assert!(f[0].failed);
        assert!(
            f[0].line.contains("(older than BACKUP_MAX_AGE, 1d 2h)"),
            "{}",
            f[0].line
        );
        // At the limit it still passes.
        assert!(!findings(&state, &s, t("2026-12-03T05:00:00Z"))[0].failed);

        state
            .backup
            .record(run("2026-12-02T03:30:00Z", false, "pg_dump: error: x"));
        state
            .test_restore
            .record(run("2026-12-02T03:31:00Z", false, "pg_restore: error: y"));
        let f = findings(&state, &s, now);
        assert!(!f[0].failed, "a good backup within the age still counts");
        assert!(
            f[0].line
                .ends_with("; the last try, 30m ago, failed: pg_dump: error: x"),
            "{}",
            f[0].line
        );
        assert!(f[1].failed);
        assert_eq!(
            f[1].line,
            "test restore: FAILED 29m ago: pg_restore: error: y"
        );
    }

    #[test]
    fn a_test_restore_is_late_a_period_after_the_first_backup_or_two_after_the_last() {
        let s = settings(None);
        let mut state = State::default();
        state
            .backup
            .record(run("2026-12-08T03:00:00Z", true, "/b/p.dump"));
        state.first_backup = Some(t("2026-12-01T03:00:00Z"));
        let week_and_a_tick = t("2026-12-08T03:01:00Z");
        let f = findings(&state, &s, week_and_a_tick);
        assert!(!f[1].failed, "{f:?}");
        assert_eq!(f[1].line, "test restore: none yet");
        let f = findings(&state, &s, t("2026-12-08T03:01:01Z"));
        assert!(f[1].failed);
        assert_eq!(
            f[1].line,
            "test restore: none yet, 7d 0h after the first backup (BACKUP_TEST_RESTORE_EVERY 7d 0h)"
        );
        state
            .test_restore
            .record(run("2026-12-01T04:00:00Z", true, "ok"));
        assert!(!findings(&state, &s, t("2026-12-15T04:00:00Z"))[1].failed);
        let f = findings(&state, &s, t("2026-12-15T04:00:01Z"));
        assert!(f[1].failed);
        assert!(
            f[1].line
                .ends_with("(late: over twice BACKUP_TEST_RESTORE_EVERY, 7d 0h)"),
            "{}",
            f[1].line
        );
    }

    #[test]
    fn with_a_repository_the_off_site_copy_and_its_check_count_too() {
        let now = t("2026-12-02T04:00:00Z");
        let s = settings(Some("sftp:b@h:/r"));
        let mut state = State::default();
        state
            .backup
            .record(run("2026-12-02T03:00:00Z", true, "/b/p.dump"));
        state
            .test_restore
            .record(run("2026-12-02T03:01:00Z", true, "ok"));
        let f = findings(&state, &s, now);
        let whats: Vec<&str> = f.iter().map(|f| f.what).collect();
        assert_eq!(
            whats,
            [
                "backup",
                "off-site copy",
                "test restore",
                "repository check"
            ]
        );
        assert!(f[1].failed && f[1].line == "off-site copy: none yet");
        assert!(!f[3].failed);
        state
            .offsite
            .record(run("2026-12-02T03:00:30Z", true, "snapshot 1a2b3c4d"));
        state
            .repository_check
            .record(run("2026-12-02T03:02:00Z", false, "restic: Fatal: x"));
        let f = findings(&state, &s, now);
        assert_eq!(
            f[1].line,
            "off-site copy: 59m ago, snapshot 1a2b3c4d in sftp:b@h:/r"
        );
        assert!(!f[1].failed);
        assert!(f[3].failed);
    }

    #[test]
    fn a_repository_needs_its_password_file_and_for_sftp_a_pinned_host_key() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let e = Repository::new("/srv/r", dir.path(), Some(cache.clone())).unwrap_err();
        assert!(
            e.contains("backup-repository-password is missing or empty"),
            "{e}"
        );
        fs::write(dir.path().join(PASSWORD_FILE), "pw").unwrap();
        let r = Repository::new("/srv/r", dir.path(), Some(cache.clone())).unwrap();
        assert!(r.options.is_empty() && r.env.is_empty());
        let args = r.args(&["snapshots", "--json"]);
        assert_eq!(args[0], "--password-file");
        assert!(args[1].ends_with(PASSWORD_FILE));
        assert_eq!(
            args[2..4],
            ["--cache-dir".to_owned(), cache.display().to_string()]
        );
        assert_eq!(args[4..], ["snapshots", "--json"]);
        assert!(
            !args.iter().any(|a| a == "pw" || a.contains("/srv/r")),
            "neither the password nor the location is an argument: {args:?}"
        );
        assert_eq!(
            r.environment(),
            [("RESTIC_REPOSITORY".to_owned(), "/srv/r".to_owned())]
        );
        let uncached = Repository::new("/srv/r", dir.path(), None).unwrap();
        assert_eq!(uncached.args(&["check"])[2..], ["--no-cache", "check"]);

        fs::write(dir.path().join(SSH_KEY_FILE), "key").unwrap();
        let e = Repository::new("sftp:b@h:/r", dir.path(), Some(cache.clone())).unwrap_err();
        assert!(e.contains("backup-known-hosts is missing"), "{e}");
        fs::write(dir.path().join(KNOWN_HOSTS_FILE), "h ssh-ed25519 AAAA").unwrap();
        let r = Repository::new("sftp:b@h:/r", dir.path(), Some(cache.clone())).unwrap();
        assert_eq!(r.options.len(), 1);
        assert!(r.options[0].starts_with("sftp.command=ssh -F /dev/null -i "));
        assert!(r.args(&["check"]).contains(&"--option".to_owned()));

        fs::write(
            dir.path().join(ENV_FILE),
            "# S3\nAWS_ACCESS_KEY_ID=a\nAWS_SECRET_ACCESS_KEY=b=c\n",
        )
        .unwrap();
        let r = Repository::new("s3:s3.example/bucket", dir.path(), Some(cache.clone())).unwrap();
        assert_eq!(
            r.env,
            [
                ("AWS_ACCESS_KEY_ID".to_owned(), "a".to_owned()),
                ("AWS_SECRET_ACCESS_KEY".to_owned(), "b=c".to_owned())
            ]
        );
        assert!(r.options.is_empty(), "no ssh for s3");
        fs::write(dir.path().join(ENV_FILE), "export X=1\n").unwrap();
        let e = Repository::new("s3:s3.example/bucket", dir.path(), Some(cache)).unwrap_err();
        assert!(
            e.contains("backup-repository.env: line 1: not KEY=VALUE"),
            "{e}"
        );
    }

    #[test]
    fn the_sftp_command_pins_the_key_and_host_key_and_takes_the_port() {
        let key = Path::new("/srv/deploy/prod/secrets/backup-ssh-key");
        let known = Path::new("/srv/deploy/prod/secrets/backup-known-hosts");
        let base = "ssh -F /dev/null -i /srv/deploy/prod/secrets/backup-ssh-key -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile=/srv/deploy/prod/secrets/backup-known-hosts -o GlobalKnownHostsFile=/dev/null -o ServerAliveInterval=30";
        assert_eq!(
            sftp_command("sftp:store@backup.example:/srv/restic", key, known).unwrap(),
            format!("{base} store@backup.example -s sftp")
        );
        assert_eq!(
            sftp_command("sftp://store@127.0.0.1:2222//srv/restic", key, known).unwrap(),
            format!("{base} -p 2222 store@127.0.0.1 -s sftp")
        );
        assert_eq!(
            sftp_command("sftp://backup.example/restic", key, known).unwrap(),
            format!("{base} backup.example -s sftp")
        );
        for bad in [
            "sftp:nohostpath",
            "sftp://store@h:0//x",
            "sftp://store@h:port//x",
            "sftp://@h//x",
            "sftp:@h:/x",
            "s3:x",
        ] {
            let e = sftp_command(bad, key, known).unwrap_err();
            assert!(e.contains(bad), "{bad}: {e}");
        }
        let spaced = Path::new("/srv/my deploy/key");
        assert!(
            sftp_command("sftp:h:/r", spaced, known)
                .unwrap_err()
                .contains("space")
        );
    }

    #[test]
    fn a_password_in_the_location_is_never_shown() {
        assert_eq!(
            redact("rest:https://backup:s3cr:et@store.example:8000/prod"),
            "rest:https://backup:***@store.example:8000/prod"
        );
        assert_eq!(
            redact("rest:https://backup@store.example/prod"),
            "rest:https://backup@store.example/prod"
        );
        // A password with `/`, `?` or `@` in it, and several URLs in one text (restic's own
        // messages quote the location without its `rest:`).
        assert_eq!(
            redact("rest:https://u:pa/s?s@w@h/x"),
            "rest:https://u:***@h/x"
        );
        assert_eq!(
            redact("Fatal: parse \"https://u:p?w@h/x\": invalid port; see https://h/doc"),
            "Fatal: parse \"https://u:***@h/x\": invalid port; see https://h/doc"
        );
        // A URL ends at a blank or a quote: an `@` after it is not its own.
        assert_eq!(
            redact("at https://u:p@h/x or mail ops@example.org"),
            "at https://u:***@h/x or mail ops@example.org"
        );
        assert_eq!(
            redact("'https://u:p@h/x' (ops@example.org)"),
            "'https://u:***@h/x' (ops@example.org)"
        );
        for plain in [
            "sftp:b@h:/r",
            "sftp://b@h:22//r",
            "/srv/r",
            "s3:s3.example/bucket",
        ] {
            assert_eq!(redact(plain), plain);
        }
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(PASSWORD_FILE), "pw").unwrap();
        let url = "rest:https://u:hunter2@h/prod";
        let repo = Repository::new(url, dir.path(), None).unwrap();
        assert_eq!(repo.shown(), "rest:https://u:***@h/prod");
        let e = restic_failure(
            &format!("Fatal: unable to open repository at {url}: 401\n"),
            &repo,
        );
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.contains("rest:https://u:***@h/prod"), "{e}");
        assert!(!repo.args(&["check"]).iter().any(|a| a.contains("hunter2")));
    }

    #[test]
    fn restic_failures_say_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(PASSWORD_FILE), "pw").unwrap();
        let repo = Repository::new("/srv/r", dir.path(), Some(dir.path().join("c"))).unwrap();
        let e = restic_failure(
            "repository 1a2b opened\nFatal: wrong password or no key found\n",
            &repo,
        );
        assert!(e.starts_with("the password in "), "{e}");
        assert!(e.contains("does not open the repository /srv/r (restic: Fatal: wrong password or no key found)"), "{e}");
        assert_eq!(
            restic_failure("Fatal: unable to save snapshot: disk full\n", &repo),
            "restic on /srv/r: Fatal: unable to save snapshot: disk full"
        );
        assert_eq!(
            restic_failure(
                "some warning\nsubprocess ssh: Connection refused\n\n",
                &repo
            ),
            "restic on /srv/r: subprocess ssh: Connection refused"
        );
        assert!(no_repository_yet(
            "Fatal: unable to open config file: Stat: stat /srv/r/config: no such file or directory\nIs there a repository at the following location?\n/srv/r\n"
        ));
        assert!(!no_repository_yet("Fatal: wrong password or no key found"));
    }

    #[test]
    fn restics_json_gives_the_snapshot_and_its_dump() {
        let out = r#"{"message_type":"status","percent_done":1}
{"message_type":"summary","files_new":2,"snapshot_id":"1a2b3c4d5e6f"}"#;
        assert_eq!(snapshot_id(out).as_deref(), Some("1a2b3c4d5e6f"));
        assert_eq!(snapshot_id("{\"message_type\":\"status\"}"), None);
        let list = snapshots(r#"[
 {"time":"2026-12-02T03:00:00.5+00:00","paths":["/b/s-2.counts","/b/s-2.dump"],"id":"bbbb","short_id":"bb"},
 {"time":"2026-12-01T03:00:00Z","paths":["/b/s-1.dump"],"id":"aaaa","short_id":"aa"}]"#)
        .unwrap();
        assert_eq!(list[0].short_id, "aa");
        assert_eq!(list[1].id, "bbbb");
        assert_eq!(
            dump_in(&list[1]),
            Some(("/b/s-2.dump", Some("/b/s-2.counts")))
        );
        assert_eq!(dump_in(&list[0]), Some(("/b/s-1.dump", None)));
        assert!(snapshots("[{").is_err());
        assert_eq!(snapshots("[]\n").unwrap(), []);
    }
}
