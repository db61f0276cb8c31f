//! Every setting of a deploy, read once, typed, with where each value came from.
//!
//! Sources, first match wins:
//! 1. command-line flags (`--tag`, `--timeout`; `stackship cert`'s `--domains`, `--directory`);
//! 2. the process environment (only the keys below; an empty value counts as unset; the CI
//!    job's `CI_REGISTRY*` stand in for `REGISTRY*`);
//! 3. the environment's `deploy.env` on the manager (`KEY=VALUE` lines);
//! 4. the release's pins, `deploy-manifests/<env>/images.env` (image tags and digests only);
//! 5. the defaults in [`Defaults`].
//!
//! A project image's tag: `<X>_TAG` (2, 3), else `--tag` / `IMAGE_TAG` (1, 2, 3), else the pin.
//! Files are read literally (never sourced): unknown keys, a key given twice, quotes around a
//! value and lines that are not `KEY=VALUE` are refused with the file, line and key.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::stack::{ImageSource, StackFile, expand};

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Flag(&'static str),
    Environment(String),
    File { path: PathBuf, line: usize },
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(flag) => write!(f, "{flag}"),
            Origin::Environment(var) => write!(f, "{var} from the environment"),
            Origin::File { path, line } => write!(f, "{}:{line}", path.display()),
            Origin::Default => f.write_str("default"),
        }
    }
}

/// A value and its origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sourced<T> {
    pub value: T,
    pub origin: Origin,
}

/// A password: never printed, in `Debug` either.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A setting that cannot be used, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct SettingsError {
    pub origin: Origin,
    pub message: String,
}

fn err(origin: Origin, message: impl Into<String>) -> SettingsError {
    SettingsError {
        origin,
        message: message.into(),
    }
}

/// The defaults, in one place.
pub struct Defaults;

impl Defaults {
    /// How long a deploy waits for another one of the same environment.
    pub const LOCK_WAIT: Duration = Duration::from_secs(900);
    /// Deploys whose configs and secrets the prune keeps.
    pub const PRUNE_KEEP: usize = 3;
    /// A service without an update of its own fails after this many task failures.
    pub const MAX_TASK_FAILURES: u64 = 3;
    /// Review stacks that may run at once.
    pub const REVIEW_MAX_STACKS: u32 = 4;
    /// A review stack's host port is this plus its merge request IID.
    pub const REVIEW_PORT_BASE: u16 = 20000;
    /// The ACME directory certificates come from: Let's Encrypt's production one.
    pub const ACME_DIRECTORY: &'static str = crate::acme::LETS_ENCRYPT_PRODUCTION;
    /// `stackship cert renew` renews a certificate with fewer days than this left.
    pub const ACME_RENEW_DAYS: u32 = 30;
    /// Dated dumps kept on the manager.
    pub const BACKUP_KEEP: u32 = 7;
    /// Snapshots kept in the backup repository: the newest of each of so many days, weeks and
    /// months (restic forget --keep-daily/--keep-weekly/--keep-monthly).
    pub const BACKUP_KEEP_DAILY: u32 = 7;
    pub const BACKUP_KEEP_WEEKLY: u32 = 4;
    pub const BACKUP_KEEP_MONTHLY: u32 = 6;
    /// A scheduled backup runs when the last good one is this old (daily).
    pub const BACKUP_EVERY: Duration = Duration::from_secs(24 * 3600);
    /// A scheduled test restore runs when the last one is this old (weekly).
    pub const BACKUP_TEST_RESTORE_EVERY: Duration = Duration::from_secs(7 * 24 * 3600);
    /// `stackship db check` fails when the newest good backup is older than BACKUP_EVERY plus
    /// this much.
    pub const BACKUP_MAX_AGE_SLACK: Duration = Duration::from_secs(2 * 3600);
}

/// The keys `deploy.env` and the environment may set besides the stack's image variables.
pub const KEYS: &[&str] = &[
    "REGISTRY",
    "REGISTRY_USER",
    "REGISTRY_PASSWORD",
    "IMAGE_TAG",
    "ROLLOUT_TIMEOUT",
    "LOCK_WAIT",
    "PRUNE_KEEP",
    "MAX_TASK_FAILURES",
    "REVIEW_MAX_STACKS",
    "REVIEW_PORT_BASE",
    "ACME_DOMAINS",
    "ACME_EMAIL",
    "ACME_DIRECTORY",
    "ACME_CA_ROOT",
    "ACME_RENEW_DAYS",
    "BACKUP_REPOSITORY",
    "BACKUP_KEEP",
    "BACKUP_KEEP_DAILY",
    "BACKUP_KEEP_WEEKLY",
    "BACKUP_KEEP_MONTHLY",
    "BACKUP_EVERY",
    "BACKUP_TEST_RESTORE_EVERY",
    "BACKUP_MAX_AGE",
];

/// `stackship cert`'s flags, which win over the environment and `deploy.env`.
#[derive(Debug, Clone, Default)]
pub struct AcmeFlags {
    /// `--domains a.example,b.example`.
    pub domains: Option<String>,
    /// `--directory URL`.
    pub directory: Option<String>,
}

/// How the environment's certificate is obtained over ACME (`stackship cert`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acme {
    /// `ACME_DOMAINS`: the names of the certificate, lower case, each once; `None` when unset
    /// (`cert issue` and `cert renew` refuse, the renewal timer leaves the environment alone).
    pub domains: Option<Sourced<Vec<String>>>,
    /// `ACME_EMAIL`: the account's contact, as a `mailto:` URL.
    pub contact: Option<Sourced<String>>,
    /// `ACME_DIRECTORY`: the CA's directory URL (https).
    pub directory: Sourced<String>,
    /// `ACME_CA_ROOT`: a PEM file of roots trusted for the ACME server's own TLS, besides the
    /// system's (a private CA such as Pebble's).
    pub ca_root: Option<Sourced<PathBuf>>,
    /// `ACME_RENEW_DAYS`: renew when fewer days than this are left.
    pub renew_days: Sourced<u32>,
}

impl Acme {
    /// The names to order, or why there are none.
    pub fn required_domains(&self) -> Result<&Sourced<Vec<String>>, SettingsError> {
        self.domains.as_ref().ok_or_else(|| {
            err(
                Origin::Environment("ACME_DOMAINS".into()),
                "ACME_DOMAINS is not set: set the certificate's names (comma-separated) in the environment's deploy.env, or give --domains",
            )
        })
    }
}

/// The environment's database backups (`stackship db backup|verify|scheduled|check`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    /// The restic repository each backup is also copied to (off the manager); none: local
    /// dumps only.
    pub repository: Option<Sourced<String>>,
    /// Dated dumps kept on the manager.
    pub keep: Sourced<u32>,
    /// restic forget's --keep-daily, --keep-weekly, --keep-monthly.
    pub keep_daily: Sourced<u32>,
    pub keep_weekly: Sourced<u32>,
    pub keep_monthly: Sourced<u32>,
    /// How old the last good backup may get before a scheduled run makes one.
    pub every: Sourced<Duration>,
    /// How old the last test restore may get before a scheduled run makes one.
    pub test_restore_every: Sourced<Duration>,
    /// `db check` fails beyond this age of the newest good backup (and off-site copy).
    pub max_age: Sourced<Duration>,
}

/// Reads only the backup settings of an environment: its `deploy.env` (which may also hold any
/// deploy setting and image settings) and the process environment.
pub fn load_backup(
    deploy_env: &Path,
    env: &BTreeMap<String, String>,
) -> Result<Backup, SettingsError> {
    let allowed: BTreeSet<String> = KEYS.iter().map(|k| (*k).to_owned()).collect();
    let file = read_file(deploy_env, &allowed, is_image_setting, "deploy.env")?;
    backup(&Lookup { env, file: &file })
}

/// The repository schemes restic knows (a local path starts with `/`).
const RESTIC_SCHEMES: &[&str] = &[
    "sftp:", "s3:", "rest:", "b2:", "azure:", "gs:", "swift:", "rclone:",
];

fn backup(look: &Lookup<'_>) -> Result<Backup, SettingsError> {
    let repository = match look.get("BACKUP_REPOSITORY") {
        None => None,
        Some(r) => {
            let known =
                r.value.starts_with('/') || RESTIC_SCHEMES.iter().any(|s| r.value.starts_with(s));
            if !known || r.value.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(err(
                    r.origin,
                    format!(
                        "BACKUP_REPOSITORY '{}' is not a restic repository (an absolute path, or {}...)",
                        crate::backup::redact(&r.value),
                        RESTIC_SCHEMES.join("..., ")
                    ),
                ));
            }
            Some(r)
        }
    };
    let count =
        |key: &str, default: u32| number(look.get(key), key, default, 1, "a positive number");
    let every = seconds(number(
        look.get("BACKUP_EVERY"),
        "BACKUP_EVERY",
        Defaults::BACKUP_EVERY.as_secs(),
        60,
        "a number of seconds, at least 60",
    )?);
    let max_age_default = every.value + Defaults::BACKUP_MAX_AGE_SLACK;
    let max_age = seconds(number(
        look.get("BACKUP_MAX_AGE"),
        "BACKUP_MAX_AGE",
        max_age_default.as_secs(),
        60,
        "a number of seconds, at least 60",
    )?);
    Ok(Backup {
        repository,
        keep: count("BACKUP_KEEP", Defaults::BACKUP_KEEP)?,
        keep_daily: count("BACKUP_KEEP_DAILY", Defaults::BACKUP_KEEP_DAILY)?,
        keep_weekly: count("BACKUP_KEEP_WEEKLY", Defaults::BACKUP_KEEP_WEEKLY)?,
        keep_monthly: count("BACKUP_KEEP_MONTHLY", Defaults::BACKUP_KEEP_MONTHLY)?,
        every,
        test_restore_every: seconds(number(
            look.get("BACKUP_TEST_RESTORE_EVERY"),
            "BACKUP_TEST_RESTORE_EVERY",
            Defaults::BACKUP_TEST_RESTORE_EVERY.as_secs(),
            60,
            "a number of seconds, at least 60",
        )?),
        max_age,
    })
}

/// What the settings are read from.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// The process environment.
    pub env: BTreeMap<String, String>,
    /// The environment's `deploy.env` (a missing file sets nothing).
    pub deploy_env: Option<PathBuf>,
    /// The release's `images.env` (a missing file pins nothing).
    pub pins: Option<PathBuf>,
    /// `--tag`.
    pub tag: Option<String>,
    /// `--timeout` (seconds).
    pub timeout: Option<String>,
    /// The environment's name, for the commands the messages suggest.
    pub env_name: String,
    /// `stackship cert`'s flags.
    pub acme: AcmeFlags,
}

/// The settings of one deploy.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Only when some image names `${REGISTRY}`.
    pub registry: Option<Sourced<String>>,
    /// User and password, or none (the engine's own login is used).
    pub login: Option<(Sourced<String>, Secret)>,
    /// Service name to its full image reference.
    pub images: BTreeMap<String, Sourced<String>>,
    /// What `docker stack deploy` expands in the stack file: `REGISTRY` and the image variables.
    pub stack_variables: BTreeMap<String, String>,
    pub rollout_timeout: Option<Sourced<Duration>>,
    pub lock_wait: Sourced<Duration>,
    pub prune_keep: Sourced<usize>,
    pub max_task_failures: Sourced<u64>,
    pub review_max_stacks: Sourced<u32>,
    pub review_port_base: Sourced<u16>,
    pub acme: Acme,
    pub backup: Backup,
    /// Worth saying, but no reason to stop (settings this stack has no use for).
    pub warnings: Vec<String>,
}

/// `KEY=VALUE` lines of one file.
#[derive(Debug, Clone, Default)]
struct FileValues {
    values: BTreeMap<String, (String, Origin)>,
    /// Keys outside the allowed set that the reader tolerates, in file order.
    ignored: Vec<String>,
}

impl FileValues {
    fn get(&self, key: &str) -> Option<Sourced<String>> {
        self.values
            .get(key)
            .filter(|(v, _)| !v.is_empty())
            .map(|(v, o)| Sourced {
                value: v.clone(),
                origin: o.clone(),
            })
    }
}

/// Reads `path` (a missing file has no values), accepting only `allowed` keys, and keys that
/// `tolerated` accepts, which are kept in [`FileValues::ignored`].
fn read_file(
    path: &Path,
    allowed: &BTreeSet<String>,
    tolerated: fn(&str) -> bool,
    what: &str,
) -> Result<FileValues, SettingsError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FileValues::default()),
        Err(e) => {
            return Err(err(
                Origin::File {
                    path: path.to_owned(),
                    line: 0,
                },
                format!("cannot read it: {e}"),
            ));
        }
    };
    parse_lines(&text, path, allowed, tolerated, what)
}

fn parse_lines(
    text: &str,
    path: &Path,
    allowed: &BTreeSet<String>,
    tolerated: fn(&str) -> bool,
    what: &str,
) -> Result<FileValues, SettingsError> {
    let mut out = FileValues::default();
    for (index, raw) in text.lines().enumerate() {
        let origin = Origin::File {
            path: path.to_owned(),
            line: index + 1,
        };
        let line = raw.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(err(origin, format!("`{line}` is not KEY=VALUE")));
        };
        if key.starts_with("export ") {
            return Err(err(
                origin,
                format!(
                    "`{line}`: write KEY=VALUE without `export` (the file is read, not sourced)"
                ),
            ));
        }
        if key != key.trim() || !config_hasher::interpolate::is_variable_name(key) {
            return Err(err(origin, format!("`{key}` is not a variable name")));
        }
        if !allowed.contains(key) && tolerated(key) {
            out.ignored.push(key.to_owned());
        } else if !allowed.contains(key) {
            let list: Vec<&str> = allowed.iter().map(String::as_str).collect();
            return Err(err(
                origin,
                format!("unknown key {key} ({what} may set: {})", list.join(" ")),
            ));
        }
        let quoted = value.len() >= 2
            && ((value.starts_with('"') && value.ends_with('"'))
                || (value.starts_with('\'') && value.ends_with('\'')));
        if quoted {
            return Err(err(
                origin,
                format!("{key}: values are taken literally; remove the quotes around {value}"),
            ));
        }
        if let Some((_, first)) = out.values.get(key) {
            return Err(err(
                origin,
                format!("{key} is set twice (first at {first})"),
            ));
        }
        out.values
            .insert(key.to_owned(), (value.to_owned(), origin));
    }
    Ok(out)
}

/// What the deploy job sends on stdin (`stackship deploy --settings-stdin`): the settings it
/// may choose per deploy, and who it is. Image settings (`<NAME>_TAG`, `<NAME>_IMAGE`) are
/// accepted too.
pub const JOB_KEYS: &[&str] = &[
    "REGISTRY",
    "REGISTRY_USER",
    "REGISTRY_PASSWORD",
    "IMAGE_TAG",
    "LOCK_WAIT",
    "ROLLOUT_TIMEOUT",
    "REVIEW_PORT_BASE",
    "CI_JOB_URL",
    "CI_COMMIT_SHA",
    "CI_PIPELINE_URL",
    "COMMIT_ANCESTORS",
    "ALLOW_OLDER",
];

/// The deploy job's settings (KEY=VALUE lines, read like `deploy.env`: no quotes, no
/// `export`, no key twice), which then act as the process environment. Errors name the line.
pub fn parse_job_settings(text: &str) -> Result<BTreeMap<String, String>, SettingsError> {
    let mut allowed: BTreeSet<String> = JOB_KEYS.iter().map(|k| (*k).to_owned()).collect();
    allowed.extend(
        text.lines()
            .filter_map(|l| l.split_once('=').map(|(k, _)| k))
            .filter(|k| is_image_setting(k))
            .map(str::to_owned),
    );
    let source = Path::new("<stdin>");
    let values = parse_lines(text, source, &allowed, |_| false, "the deploy job")?;
    Ok(values
        .values
        .into_iter()
        .map(|(k, (v, _))| (k, v))
        .collect())
}

/// A yes/no setting: `1`, `true`, `yes` or `0`, `false`, `no` (empty: no).
pub fn flag(key: &str, value: Option<&str>) -> Result<bool, String> {
    match value.map(str::trim).unwrap_or("") {
        "" | "0" | "false" | "no" => Ok(false),
        "1" | "true" | "yes" => Ok(true),
        other => Err(format!("{key}='{other}' is not 1/true/yes or 0/false/no")),
    }
}

/// Looks a key up in the environment (empty means unset), then in `deploy.env`.
struct Lookup<'a> {
    env: &'a BTreeMap<String, String>,
    file: &'a FileValues,
}

impl Lookup<'_> {
    fn env(&self, key: &str) -> Option<Sourced<String>> {
        self.env
            .get(key)
            .filter(|v| !v.is_empty())
            .map(|v| Sourced {
                value: v.clone(),
                origin: Origin::Environment(key.to_owned()),
            })
    }

    fn get(&self, key: &str) -> Option<Sourced<String>> {
        self.env(key).or_else(|| self.file.get(key))
    }
}

fn number<T: std::str::FromStr + PartialOrd>(
    v: Option<Sourced<String>>,
    key: &str,
    default: T,
    min: T,
    what: &str,
) -> Result<Sourced<T>, SettingsError> {
    match v {
        None => Ok(Sourced {
            value: default,
            origin: Origin::Default,
        }),
        Some(s) => {
            let parsed = if s.value.bytes().all(|b| b.is_ascii_digit()) {
                s.value.parse::<T>().ok()
            } else {
                None
            };
            match parsed {
                Some(n) if n >= min => Ok(Sourced {
                    value: n,
                    origin: s.origin,
                }),
                _ => Err(err(s.origin, format!("{key} '{}' is not {what}", s.value))),
            }
        }
    }
}

fn seconds(s: Sourced<u64>) -> Sourced<Duration> {
    Sourced {
        value: Duration::from_secs(s.value),
        origin: s.origin,
    }
}

/// A key that names an image setting: `<NAME>_TAG` or `<NAME>_IMAGE`.
fn is_image_setting(key: &str) -> bool {
    config_hasher::interpolate::is_variable_name(key)
        && key
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        && (key.len() > 4 && key.ends_with("_TAG") || key.len() > 6 && key.ends_with("_IMAGE"))
}

/// A tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`, optionally `@sha256:<64 hex>`.
pub fn is_valid_tag(tag: &str) -> bool {
    let (name, digest) = match tag.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (tag, None),
    };
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    first_ok
        && name.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && digest.is_none_or(is_sha256_digest)
}

fn is_sha256_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// An image reference pinned by digest: `repo[:tag]@sha256:<64 hex>`.
pub fn is_digest_reference(image: &str) -> bool {
    match image.split_once('@') {
        Some((repo, digest)) => {
            !repo.is_empty()
                && repo
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphanumeric())
                && repo
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | ':' | '-'))
                && is_sha256_digest(digest)
        }
        None => false,
    }
}

/// `host[:port][/path]`.
pub fn is_valid_registry(r: &str) -> bool {
    let (hostport, path) = match r.split_once('/') {
        Some((h, p)) => (h, Some(p)),
        None => (r, None),
    };
    let (host, port) = match hostport.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (hostport, None),
    };
    !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
        && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        && path.is_none_or(|p| {
            !p.is_empty()
                && p.chars().all(|c| {
                    c.is_ascii_lowercase()
                        || c.is_ascii_digit()
                        || matches!(c, '.' | '_' | '/' | '-')
                })
        })
}

impl Settings {
    /// Reads the settings of a deploy of `stack` from `inputs`.
    pub fn load(stack: &StackFile, inputs: &Inputs) -> Result<Self, SettingsError> {
        let image_vars = stack.image_variables();
        let mut allowed: BTreeSet<String> = KEYS.iter().map(|k| (*k).to_owned()).collect();
        allowed.extend(image_vars.keys().cloned());
        // deploy.env belongs to the environment, and other stacks read it too (review stacks
        // read dev's): an image setting this stack does not use is said and left alone.
        let mut warnings = Vec::new();
        let file = match &inputs.deploy_env {
            Some(p) => {
                let file = read_file(p, &allowed, is_image_setting, "deploy.env")?;
                for key in &file.ignored {
                    warnings.push(format!(
                        "{}: {key} is not used by this stack (no service names it); ignored",
                        p.display()
                    ));
                }
                file
            }
            None => FileValues::default(),
        };
        let pin_keys: BTreeSet<String> = image_vars.keys().cloned().collect();
        let pins = match &inputs.pins {
            Some(p) => read_file(p, &pin_keys, |_| false, "images.env")?,
            None => FileValues::default(),
        };
        let look = Lookup {
            env: &inputs.env,
            file: &file,
        };

        let needs_registry = stack.services.iter().any(|s| {
            matches!(&s.image, ImageSource::Tagged { repository, .. } if repository.contains("${REGISTRY}"))
        });
        let registry = look.get("REGISTRY").or_else(|| {
            look.env("CI_REGISTRY").map(|s| Sourced {
                value: s.value,
                origin: Origin::Environment("CI_REGISTRY".into()),
            })
        });
        let registry = match registry {
            Some(r) if !is_valid_registry(&r.value) => {
                return Err(err(
                    r.origin,
                    format!("REGISTRY '{}' is not host[:port][/path]", r.value),
                ));
            }
            Some(r) => Some(r),
            None if needs_registry => {
                return Err(err(
                    Origin::Environment("REGISTRY".into()),
                    "REGISTRY (or CI_REGISTRY) is not set: the stack file's images name ${REGISTRY}",
                ));
            }
            None => None,
        };
        let user = look
            .get("REGISTRY_USER")
            .or_else(|| look.env("CI_REGISTRY_USER"));
        let password = look
            .get("REGISTRY_PASSWORD")
            .or_else(|| look.env("CI_REGISTRY_PASSWORD"));
        let login = match (user, password) {
            (Some(u), Some(p)) => Some((u, Secret(p.value))),
            (None, None) => None,
            (Some(u), None) => {
                return Err(err(
                    u.origin,
                    "REGISTRY_USER is set without REGISTRY_PASSWORD: set both, or neither",
                ));
            }
            (None, Some(p)) => {
                return Err(err(
                    p.origin,
                    "REGISTRY_PASSWORD is set without REGISTRY_USER: set both, or neither",
                ));
            }
        };

        let image_tag = match &inputs.tag {
            Some(t) if !t.is_empty() => Some(Sourced {
                value: t.clone(),
                origin: Origin::Flag("--tag"),
            }),
            _ => look.get("IMAGE_TAG"),
        };
        let pins_path = inputs.pins.clone().unwrap_or_default();
        let mut stack_variables = BTreeMap::new();
        if let Some(r) = &registry {
            stack_variables.insert("REGISTRY".to_owned(), r.value.clone());
        }
        let mut var_values: BTreeMap<String, Sourced<String>> = BTreeMap::new();
        for service in &stack.services {
            match &service.image {
                ImageSource::Tagged { tag_var, .. } => {
                    if var_values.contains_key(tag_var) {
                        continue;
                    }
                    let tag = look
                        .get(tag_var)
                        .or_else(|| image_tag.clone())
                        .or_else(|| pins.get(tag_var))
                        .ok_or_else(|| {
                            err(
                                Origin::File {
                                    path: pins_path.clone(),
                                    line: 0,
                                },
                                format!(
                                    "no image tag for {}: pin {tag_var} here (scripts/pin-image.sh), or give --tag, IMAGE_TAG or {tag_var}",
                                    service.name
                                ),
                            )
                        })?;
                    if !is_valid_tag(&tag.value) {
                        return Err(err(
                            tag.origin,
                            format!("{tag_var} '{}' is not a valid image tag", tag.value),
                        ));
                    }
                    var_values.insert(tag_var.clone(), tag);
                }
                ImageSource::Whole { var } => {
                    if var_values.contains_key(var) {
                        continue;
                    }
                    let image = look.get(var).or_else(|| pins.get(var)).ok_or_else(|| {
                        err(
                            Origin::File {
                                path: pins_path.clone(),
                                line: 0,
                            },
                            format!(
                                "no image for {}: pin {var} by digest here (scripts/pin-image.sh), or set {var}=repo:tag@sha256:<digest>",
                                service.name
                            ),
                        )
                    })?;
                    if !is_digest_reference(&image.value) {
                        let env = if inputs.env_name.is_empty() {
                            "ENV"
                        } else {
                            &inputs.env_name
                        };
                        let short = service.name.strip_suffix("-proxy").unwrap_or(&service.name);
                        let bare = image.value.split('@').next().unwrap_or(&image.value);
                        return Err(err(
                            image.origin.clone(),
                            format!(
                                "{var} '{}' ({}) is not pinned by digest: a tag can be republished, and the next deploy would restart {} with whatever it names now. Pin it: scripts/pin-image.sh {env} {short} {bare} resolves repo:tag@sha256:<digest> with the local engine (commit the pin), or set {var}=repo:tag@sha256:<digest>",
                                image.value, image.origin, service.name
                            ),
                        ));
                    }
                    var_values.insert(var.clone(), image);
                }
                ImageSource::Literal(image) => {
                    if !is_digest_reference(image) {
                        return Err(err(
                            Origin::Default,
                            format!(
                                "the stack file's image `{image}` of {} is not pinned by digest (write repo:tag@sha256:<digest> or use a variable)",
                                service.name
                            ),
                        ));
                    }
                }
            }
        }
        for (k, v) in &var_values {
            stack_variables.insert(k.clone(), v.value.clone());
        }
        let mut images = BTreeMap::new();
        for service in &stack.services {
            let sourced = match &service.image {
                ImageSource::Tagged {
                    repository,
                    tag_var,
                } => {
                    let repo = expand(repository, &|v| stack_variables.get(v).cloned())
                        .map_err(|missing| {
                            err(
                                Origin::Default,
                                format!(
                                    "the image of {} names ${{{missing}}}, which the deploy does not set",
                                    service.name
                                ),
                            )
                        })?;
                    let tag = &var_values[tag_var];
                    Sourced {
                        value: format!("{repo}:{}", tag.value),
                        origin: tag.origin.clone(),
                    }
                }
                ImageSource::Whole { var } => var_values[var].clone(),
                ImageSource::Literal(image) => Sourced {
                    value: image.clone(),
                    origin: Origin::Default,
                },
            };
            images.insert(service.name.clone(), sourced);
        }

        let timeout = match &inputs.timeout {
            Some(t) => Some(Sourced {
                value: t.clone(),
                origin: Origin::Flag("--timeout"),
            }),
            None => look.get("ROLLOUT_TIMEOUT"),
        };
        let rollout_timeout = match timeout {
            None => None,
            Some(t) => Some(seconds(number(
                Some(t),
                "ROLLOUT_TIMEOUT",
                0,
                1,
                "a positive number of seconds",
            )?)),
        };
        Ok(Self {
            registry,
            login,
            images,
            stack_variables,
            rollout_timeout,
            lock_wait: seconds(number(
                look.get("LOCK_WAIT"),
                "LOCK_WAIT",
                Defaults::LOCK_WAIT.as_secs(),
                0,
                "a number of seconds",
            )?),
            prune_keep: number(
                look.get("PRUNE_KEEP"),
                "PRUNE_KEEP",
                Defaults::PRUNE_KEEP,
                1,
                "a positive number",
            )?,
            max_task_failures: number(
                look.get("MAX_TASK_FAILURES"),
                "MAX_TASK_FAILURES",
                Defaults::MAX_TASK_FAILURES,
                1,
                "a positive number",
            )?,
            review_max_stacks: number(
                look.get("REVIEW_MAX_STACKS"),
                "REVIEW_MAX_STACKS",
                Defaults::REVIEW_MAX_STACKS,
                0,
                "a number",
            )?,
            review_port_base: number(
                look.get("REVIEW_PORT_BASE"),
                "REVIEW_PORT_BASE",
                Defaults::REVIEW_PORT_BASE,
                1,
                "a port number",
            )?,
            acme: acme(&look, &inputs.acme)?,
            backup: backup(&look)?,
            warnings,
        })
    }
}

/// The ACME settings: flags, then the environment, then `deploy.env`, then the defaults.
fn acme(look: &Lookup<'_>, flags: &AcmeFlags) -> Result<Acme, SettingsError> {
    let flag = |value: &Option<String>, name: &'static str| {
        value.as_ref().filter(|v| !v.is_empty()).map(|v| Sourced {
            value: v.clone(),
            origin: Origin::Flag(name),
        })
    };
    let domains = match flag(&flags.domains, "--domains").or_else(|| look.get("ACME_DOMAINS")) {
        None => None,
        Some(s) => {
            let names: Vec<&str> = s.value.split(',').map(str::trim).collect();
            if names.iter().any(|n| n.is_empty()) {
                return Err(err(
                    s.origin,
                    format!(
                        "ACME_DOMAINS '{}' has an empty name (write a.example,www.a.example)",
                        s.value
                    ),
                ));
            }
            let checked = crate::acme::checked_names(&names)
                .map_err(|e| err(s.origin.clone(), format!("ACME_DOMAINS: {e}")))?;
            Some(Sourced {
                value: checked,
                origin: s.origin,
            })
        }
    };
    let contact = match look.get("ACME_EMAIL") {
        None => None,
        Some(s) => {
            let address = s.value.strip_prefix("mailto:").unwrap_or(&s.value);
            let valid = address.split_once('@').is_some_and(|(user, host)| {
                !user.is_empty()
                    && host.contains('.')
                    && !host.starts_with('.')
                    && !host.ends_with('.')
            }) && !address
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || matches!(c, ',' | '?' | '<' | '>'));
            if !valid {
                return Err(err(
                    s.origin,
                    format!("ACME_EMAIL '{}' is not an e-mail address", s.value),
                ));
            }
            Some(Sourced {
                value: format!("mailto:{address}"),
                origin: s.origin,
            })
        }
    };
    let directory = match flag(&flags.directory, "--directory")
        .or_else(|| look.get("ACME_DIRECTORY"))
    {
        None => Sourced {
            value: Defaults::ACME_DIRECTORY.to_owned(),
            origin: Origin::Default,
        },
        Some(s) => {
            let rest = s.value.strip_prefix("https://").unwrap_or("");
            if rest.is_empty() || rest.starts_with('/') || s.value.chars().any(char::is_whitespace)
            {
                return Err(err(
                    s.origin,
                    format!(
                        "ACME_DIRECTORY '{}' is not an https:// URL (Let's Encrypt: {}; its staging: {})",
                        s.value,
                        crate::acme::LETS_ENCRYPT_PRODUCTION,
                        crate::acme::LETS_ENCRYPT_STAGING
                    ),
                ));
            }
            s
        }
    };
    let ca_root = match look.get("ACME_CA_ROOT") {
        None => None,
        Some(s) if !Path::new(&s.value).is_absolute() => {
            return Err(err(
                s.origin,
                format!("ACME_CA_ROOT '{}' is not an absolute path", s.value),
            ));
        }
        Some(s) => Some(Sourced {
            value: PathBuf::from(s.value),
            origin: s.origin,
        }),
    };
    let renew_days = number(
        look.get("ACME_RENEW_DAYS"),
        "ACME_RENEW_DAYS",
        Defaults::ACME_RENEW_DAYS,
        1,
        "a positive number of days",
    )?;
    Ok(Acme {
        domains,
        contact,
        directory,
        ca_root,
        renew_days,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const STACK: &str = "services:\n  backend:\n    image: ${REGISTRY}/stackship/backend:${BACKEND_TAG}\n  frontend:\n    image: ${REGISTRY}/stackship/frontend:${FRONTEND_TAG}\n  postgres:\n    image: ${POSTGRES_IMAGE:?pin it}\n";
    const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    fn stack() -> StackFile {
        StackFile::parse(STACK, Path::new("docker-compose.prod.yaml")).unwrap()
    }

    struct Fixture {
        dir: tempfile::TempDir,
        inputs: Inputs,
    }

    fn fixture(deploy_env: &str, pins: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("deploy.env"), deploy_env).unwrap();
        fs::write(dir.path().join("images.env"), pins).unwrap();
        let inputs = Inputs {
            deploy_env: Some(dir.path().join("deploy.env")),
            pins: Some(dir.path().join("images.env")),
            ..Inputs::default()
        };
        Fixture { dir, inputs }
    }

    fn pins() -> String {
        format!(
            "# pins\nBACKEND_TAG=20261206_aaaaaaaa\nFRONTEND_TAG=20261206_bbbbbbbb\nPOSTGRES_IMAGE=postgres:15@{DIGEST}\n"
        )
    }

    fn load(f: &Fixture) -> Result<Settings, SettingsError> {
        Settings::load(&stack(), &f.inputs)
    }

    fn error(f: &Fixture) -> String {
        load(f).unwrap_err().to_string()
    }

    #[test]
    fn pins_and_deploy_env_give_every_image_with_its_origin() {
        let f = fixture("REGISTRY=127.0.0.1:5000\n", &pins());
        let s = load(&f).unwrap();
        assert_eq!(
            s.images["backend"].value,
            "127.0.0.1:5000/stackship/backend:20261206_aaaaaaaa"
        );
        assert_eq!(
            s.images["backend"].origin,
            Origin::File {
                path: f.dir.path().join("images.env"),
                line: 2
            }
        );
        assert_eq!(s.images["postgres"].value, format!("postgres:15@{DIGEST}"));
        assert_eq!(s.stack_variables["REGISTRY"], "127.0.0.1:5000");
        assert_eq!(s.stack_variables["FRONTEND_TAG"], "20261206_bbbbbbbb");
        assert_eq!(s.stack_variables.len(), 4);
        assert!(s.login.is_none());
        assert_eq!(s.lock_wait.value, Defaults::LOCK_WAIT);
        assert_eq!(s.lock_wait.origin, Origin::Default);
        assert_eq!(s.prune_keep.value, 3);
        assert_eq!(s.max_task_failures.value, 3);
        assert_eq!(s.review_max_stacks.value, 4);
        assert_eq!(s.review_port_base.value, 20000);
        assert!(s.rollout_timeout.is_none());
    }

    #[test]
    fn precedence_service_tag_then_image_tag_then_pin() {
        let mut f = fixture("REGISTRY=r\nIMAGE_TAG=from-file\n", &pins());
        let s = load(&f).unwrap();
        assert_eq!(s.stack_variables["BACKEND_TAG"], "from-file");
        // An empty --tag (an unset CI variable) gives no tag.
        f.inputs.tag = Some(String::new());
        assert_eq!(
            load(&f).unwrap().stack_variables["BACKEND_TAG"],
            "from-file"
        );
        f.inputs.tag = Some("from-flag".into());
        let s = load(&f).unwrap();
        assert_eq!(s.stack_variables["BACKEND_TAG"], "from-flag");
        assert_eq!(s.images["backend"].origin, Origin::Flag("--tag"));
        f.inputs.env.insert("BACKEND_TAG".into(), "own".into());
        let s = load(&f).unwrap();
        assert_eq!(s.stack_variables["BACKEND_TAG"], "own");
        assert_eq!(s.stack_variables["FRONTEND_TAG"], "from-flag");
        assert_eq!(
            s.images["backend"].origin,
            Origin::Environment("BACKEND_TAG".into())
        );
        assert_eq!(
            s.images["backend"].origin.to_string(),
            "BACKEND_TAG from the environment"
        );
    }

    #[test]
    fn the_environment_wins_over_deploy_env_and_empty_means_unset() {
        let mut f = fixture("REGISTRY=file\nLOCK_WAIT=5\n", &pins());
        f.inputs.env.insert("REGISTRY".into(), "env:5000".into());
        f.inputs.env.insert("LOCK_WAIT".into(), String::new());
        let s = load(&f).unwrap();
        assert_eq!(s.registry.unwrap().value, "env:5000");
        assert_eq!(s.lock_wait.value, Duration::from_secs(5));
    }

    #[test]
    fn ci_variables_stand_in_for_the_registry_and_login() {
        let mut f = fixture("", &pins());
        for (k, v) in [
            ("CI_REGISTRY", "registry.example:5050"),
            ("CI_REGISTRY_USER", "gitlab-ci-token"),
            ("CI_REGISTRY_PASSWORD", "tok"),
        ] {
            f.inputs.env.insert(k.into(), v.into());
        }
        let s = load(&f).unwrap();
        assert_eq!(
            s.registry.unwrap().origin,
            Origin::Environment("CI_REGISTRY".into())
        );
        let (user, password) = s.login.unwrap();
        assert_eq!(user.value, "gitlab-ci-token");
        assert_eq!(password.expose(), "tok");
        assert_eq!(format!("{password:?}"), "Secret(***)");
    }

    #[test]
    fn file_errors_name_the_file_line_and_key() {
        let cases = [
            (
                "REGISTRY=r\nFOO=1\n",
                "deploy.env:2: unknown key FOO (deploy.env may set:",
            ),
            (
                "REGISTRY=r\nnonsense\n",
                "deploy.env:2: `nonsense` is not KEY=VALUE",
            ),
            (
                "REGISTRY=a\nREGISTRY=b\n",
                "deploy.env:2: REGISTRY is set twice (first at",
            ),
            (
                "REGISTRY=\"r\"\n",
                "deploy.env:1: REGISTRY: values are taken literally",
            ),
            (
                "export REGISTRY=r\n",
                "deploy.env:1: `export REGISTRY=r`: write KEY=VALUE without `export`",
            ),
            (
                "REGISTRY=r\n1X=2\n",
                "deploy.env:2: `1X` is not a variable name",
            ),
            (
                "REGISTRY=r\nLOCK_WAIT=soon\n",
                "deploy.env:2: LOCK_WAIT 'soon' is not a number of seconds",
            ),
            (
                "REGISTRY=r\nPRUNE_KEEP=0\n",
                "deploy.env:2: PRUNE_KEEP '0' is not a positive number",
            ),
            (
                "REGISTRY=r\nMAX_TASK_FAILURES=-1\n",
                "deploy.env:2: MAX_TASK_FAILURES '-1' is not a positive number",
            ),
            (
                "REGISTRY=r\nREVIEW_PORT_BASE=70000\n",
                "deploy.env:2: REVIEW_PORT_BASE '70000' is not a port number",
            ),
            (
                "REGISTRY=r\nROLLOUT_TIMEOUT=0\n",
                "deploy.env:2: ROLLOUT_TIMEOUT '0' is not a positive number of seconds",
            ),
            (
                "REGISTRY=bad host\n",
                "deploy.env:1: REGISTRY 'bad host' is not host[:port][/path]",
            ),
            (
                "REGISTRY=r\nREGISTRY_USER=u\n",
                "deploy.env:2: REGISTRY_USER is set without REGISTRY_PASSWORD",
            ),
            (
                "REGISTRY=r\nREGISTRY_PASSWORD=p\n",
                "deploy.env:2: REGISTRY_PASSWORD is set without REGISTRY_USER",
            ),
            (
                "REGISTRY=r\nBACKEND_TAG=no/slash\n",
                "deploy.env:2: BACKEND_TAG 'no/slash' is not a valid image tag",
            ),
        ];
        for (deploy_env, want) in cases {
            let f = fixture(deploy_env, &pins());
            let got = error(&f);
            assert!(got.contains(want), "{deploy_env:?}: {got}");
        }
    }

    #[test]
    fn pins_accept_only_the_stacks_image_variables() {
        let f = fixture("REGISTRY=r\n", &format!("{}LOCK_WAIT=1\n", pins()));
        let got = error(&f);
        assert!(
            got.contains("images.env:5: unknown key LOCK_WAIT (images.env may set: BACKEND_TAG FRONTEND_TAG POSTGRES_IMAGE)"),
            "{got}"
        );
    }

    #[test]
    fn a_third_party_image_without_digest_is_refused_naming_its_origin() {
        let f = fixture(
            "REGISTRY=r\n",
            "BACKEND_TAG=t\nFRONTEND_TAG=t\nPOSTGRES_IMAGE=postgres:15\n",
        );
        let got = error(&f);
        assert!(
            got.contains("images.env:3: POSTGRES_IMAGE 'postgres:15' ("),
            "{got}"
        );
        assert!(got.contains(") is not pinned by digest"), "{got}");
        assert!(
            got.contains("scripts/pin-image.sh ENV postgres postgres:15 resolves"),
            "{got}"
        );
        assert!(got.contains("restart postgres"), "{got}");
    }

    #[test]
    fn a_missing_pin_says_what_to_do() {
        let f = fixture("REGISTRY=r\n", "BACKEND_TAG=\nFRONTEND_TAG=t\n");
        let got = error(&f);
        assert!(
            got.contains("no image tag for backend: pin BACKEND_TAG"),
            "{got}"
        );
        let f = fixture("REGISTRY=r\n", "BACKEND_TAG=t\nFRONTEND_TAG=t\n");
        let got = error(&f);
        assert!(
            got.contains("no image for postgres: pin POSTGRES_IMAGE by digest"),
            "{got}"
        );
    }

    #[test]
    fn registry_is_required_only_when_an_image_names_it() {
        let f = fixture("", &pins());
        assert!(error(&f).contains("REGISTRY (or CI_REGISTRY) is not set"));
        let stack = StackFile::parse(
            &format!("services:\n  db:\n    image: postgres@{DIGEST}\n"),
            Path::new("s.yaml"),
        )
        .unwrap();
        let s = Settings::load(&stack, &Inputs::default()).unwrap();
        assert!(s.registry.is_none());
        assert_eq!(s.images["db"].value, format!("postgres@{DIGEST}"));
        let stack = StackFile::parse(
            "services:\n  db:\n    image: postgres:15\n",
            Path::new("s.yaml"),
        )
        .unwrap();
        let got = Settings::load(&stack, &Inputs::default())
            .unwrap_err()
            .to_string();
        assert!(
            got.contains("`postgres:15` of db is not pinned by digest"),
            "{got}"
        );
    }

    #[test]
    fn flags_and_numbers() {
        let mut f = fixture(
            "REGISTRY=r\nROLLOUT_TIMEOUT=100\nLOCK_WAIT=0\nPRUNE_KEEP=5\nMAX_TASK_FAILURES=2\nREVIEW_MAX_STACKS=0\nREVIEW_PORT_BASE=30000\n",
            &pins(),
        );
        let s = load(&f).unwrap();
        assert_eq!(s.rollout_timeout.unwrap().value, Duration::from_secs(100));
        assert_eq!(s.lock_wait.value, Duration::ZERO);
        assert_eq!(s.prune_keep.value, 5);
        assert_eq!(s.max_task_failures.value, 2);
        assert_eq!(s.review_max_stacks.value, 0);
        assert_eq!(s.review_port_base.value, 30000);
        f.inputs.timeout = Some("7".into());
        let t = load(&f).unwrap().rollout_timeout.unwrap();
        assert_eq!(
            (t.value, t.origin),
            (Duration::from_secs(7), Origin::Flag("--timeout"))
        );
        f.inputs.timeout = Some("x".into());
        assert!(error(&f).starts_with("--timeout: ROLLOUT_TIMEOUT 'x' is not"));
    }

    #[test]
    fn missing_files_set_nothing_and_comments_and_crlf_are_fine() {
        let mut f = fixture("# settings\r\n\r\nREGISTRY=r\r\n", &pins());
        assert_eq!(load(&f).unwrap().registry.unwrap().value, "r");
        f.inputs.deploy_env = Some(f.dir.path().join("absent.env"));
        f.inputs.env.insert("REGISTRY".into(), "e".into());
        assert_eq!(load(&f).unwrap().registry.unwrap().value, "e");
    }

    #[test]
    fn a_quote_at_one_end_only_is_part_of_the_value() {
        for password in ["pa\"ss\"", "\"pass", "'pass", "pass'", "'"] {
            let f = fixture(
                &format!("REGISTRY=r\nREGISTRY_USER=ci\nREGISTRY_PASSWORD={password}\n"),
                &pins(),
            );
            let (_, secret) = load(&f).unwrap().login.unwrap();
            assert_eq!(secret.expose(), password);
        }
        for quoted in ["\"pass\"", "'pass'"] {
            let f = fixture(
                &format!("REGISTRY=r\nREGISTRY_USER=ci\nREGISTRY_PASSWORD={quoted}\n"),
                &pins(),
            );
            assert!(error(&f).contains("remove the quotes"), "{quoted}");
        }
    }

    #[test]
    fn a_settings_file_that_exists_but_cannot_be_read_is_an_error() {
        let mut f = fixture("", &pins());
        // A directory where deploy.env should be: not the same as no file.
        f.inputs.deploy_env = Some(f.dir.path().to_owned());
        let e = error(&f);
        assert!(
            e.starts_with(&format!("{}:0: cannot read it: ", f.dir.path().display())),
            "{e}"
        );
    }

    #[test]
    fn an_environment_override_without_digest_names_variable_origin_and_pin_command() {
        let mut f = fixture("REGISTRY=r\n", &pins());
        f.inputs.env_name = "prod".into();
        f.inputs
            .env
            .insert("POSTGRES_IMAGE".into(), "postgres:15-bookworm".into());
        let got = error(&f);
        assert!(
            got.contains("POSTGRES_IMAGE 'postgres:15-bookworm' (POSTGRES_IMAGE from the environment) is not pinned by digest"),
            "{got}"
        );
        assert!(
            got.contains("scripts/pin-image.sh prod postgres postgres:15-bookworm"),
            "{got}"
        );
    }

    #[test]
    fn only_the_stacks_own_images_are_asked_for() {
        // No prometheus in this stack: no PROMETHEUS_IMAGE needed, and pinning one is refused.
        let f = fixture(
            "REGISTRY=r\n",
            &format!("{}PROMETHEUS_IMAGE=p@{DIGEST}\n", pins()),
        );
        assert!(error(&f).contains("unknown key PROMETHEUS_IMAGE"));
        let s = load(&fixture("REGISTRY=r\n", &pins())).unwrap();
        assert_eq!(
            s.images.keys().collect::<Vec<_>>(),
            vec!["backend", "frontend", "postgres"]
        );
    }

    #[test]
    fn a_command_substitution_in_a_pin_is_an_invalid_tag_not_run() {
        let f = fixture(
            "REGISTRY=r\n",
            &format!("BACKEND_TAG=$(touch /tmp/x)\nFRONTEND_TAG=t\nPOSTGRES_IMAGE=p@{DIGEST}\n"),
        );
        assert!(error(&f).contains("BACKEND_TAG '$(touch /tmp/x)' is not a valid image tag"));
    }

    #[test]
    fn deploy_env_image_settings_of_other_stacks_are_ignored_with_a_warning() {
        let f = fixture(
            &format!("REGISTRY=r\nPROMETHEUS_IMAGE=p@{DIGEST}\nWORKER_TAG=\n"),
            &pins(),
        );
        let s = load(&f).unwrap();
        assert_eq!(s.warnings.len(), 2, "{:?}", s.warnings);
        assert!(s.warnings[0].contains("PROMETHEUS_IMAGE is not used by this stack"));
        assert!(!s.stack_variables.contains_key("PROMETHEUS_IMAGE"));
        // Other unknown keys are still refused.
        let f = fixture("REGISTRY=r\nPROMETHEUS=1\n", &pins());
        assert!(error(&f).contains("unknown key PROMETHEUS"));
        assert!(is_image_setting("NGINX_IMAGE") && is_image_setting("X_TAG"));
        assert!(
            !is_image_setting("_TAG") && !is_image_setting("_IMAGE") && !is_image_setting("x_TAG")
        );
    }

    #[test]
    fn validators() {
        assert!(is_valid_tag("20261206_abcdef01"));
        assert!(is_valid_tag(&format!("t@{DIGEST}")));
        assert!(!is_valid_tag("-x"));
        assert!(!is_valid_tag(""));
        assert!(!is_valid_tag(&"a".repeat(129)));
        assert!(is_valid_tag(&"a".repeat(128)));
        assert!(!is_valid_tag("t@sha256:xyz"));
        assert!(is_digest_reference(&format!(
            "127.0.0.1:5000/x/y:1@{DIGEST}"
        )));
        assert!(!is_digest_reference("x:1"));
        assert!(!is_digest_reference(&format!("@{DIGEST}")));
        assert!(!is_digest_reference(&format!("-x@{DIGEST}")));
        assert!(!is_digest_reference("x@sha256:ABCD"));
        // A digest is exactly 64 lower-case hex digits.
        assert!(!is_digest_reference("x@sha256:abcd"));
        assert!(!is_digest_reference(&format!(
            "x@sha256:{}",
            "g".repeat(64)
        )));
        assert!(!is_valid_tag(&format!("t@sha256:{}", "1".repeat(63))));
        assert!(is_valid_registry("registry.gitlab.example:5050/group"));
        assert!(is_valid_registry("127.0.0.1:5000"));
        assert!(is_valid_registry("h:5000/team-2/app_1.x"));
        assert!(!is_valid_registry(""));
        assert!(!is_valid_registry("h:"));
        assert!(!is_valid_registry("h:p0rt"));
        assert!(!is_valid_registry("h/"));
        assert!(!is_valid_registry("h/UPPER"));
    }

    #[test]
    fn the_deploy_jobs_settings_are_checked_like_a_file() {
        let v = parse_job_settings(
            "REGISTRY=r:5000\nBACKEND_TAG=t1\n\nCI_COMMIT_SHA=abc1234\nREGISTRY_PASSWORD=p=w\n",
        )
        .unwrap();
        assert_eq!(v["REGISTRY"], "r:5000");
        assert_eq!(v["BACKEND_TAG"], "t1");
        assert_eq!(v["REGISTRY_PASSWORD"], "p=w");
        assert_eq!(v.len(), 4);
        let e = parse_job_settings("REGISTRY=r\nPATH=/evil\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("<stdin>:2: unknown key PATH (the deploy job may set: "),
            "{e}"
        );
        let e = parse_job_settings("REGISTRY=r\nREGISTRY=s\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "<stdin>:2: REGISTRY is set twice (first at <stdin>:1)"
        );
        assert!(parse_job_settings("no equals sign").is_err());
        // Lower-case or odd keys ending in _TAG are not image settings.
        assert!(parse_job_settings("backend_TAG=x").is_err());
    }

    #[test]
    fn yes_no_settings() {
        for yes in ["1", "true", "yes", " yes "] {
            assert_eq!(flag("K", Some(yes)), Ok(true), "{yes}");
        }
        for no in ["", "0", "false", "no"] {
            assert_eq!(flag("K", Some(no)), Ok(false), "{no}");
        }
        assert_eq!(flag("K", None), Ok(false));
        assert_eq!(
            flag("ALLOW_OLDER", Some("Y")),
            Err("ALLOW_OLDER='Y' is not 1/true/yes or 0/false/no".to_owned())
        );
    }

    #[test]
    fn acme_defaults_when_nothing_is_set() {
        let f = fixture("REGISTRY=r\n", &pins());
        let acme = load(&f).unwrap().acme;
        assert_eq!(acme.domains, None);
        assert_eq!(acme.contact, None);
        assert_eq!(acme.ca_root, None);
        assert_eq!(acme.directory.value, crate::acme::LETS_ENCRYPT_PRODUCTION);
        assert_eq!(acme.directory.origin, Origin::Default);
        assert_eq!(acme.renew_days.value, 30);
        let e = acme.required_domains().unwrap_err();
        assert!(
            e.to_string().starts_with(
                "ACME_DOMAINS from the environment: ACME_DOMAINS is not set: set the certificate's names"
            ),
            "{e}"
        );
    }

    #[test]
    fn acme_settings_from_the_file_the_environment_and_the_flags() {
        let staging = crate::acme::LETS_ENCRYPT_STAGING;
        let mut f = fixture(
            &format!(
                "REGISTRY=r\nACME_DOMAINS=WWW.Example.org, example.org,www.example.org\nACME_EMAIL=ops@example.org\nACME_DIRECTORY={staging}\nACME_CA_ROOT=/etc/pebble/root.pem\nACME_RENEW_DAYS=20\n"
            ),
            &pins(),
        );
        let acme = load(&f).unwrap().acme;
        let file = |line| Origin::File {
            path: f.dir.path().join("deploy.env"),
            line,
        };
        assert_eq!(
            acme.domains,
            Some(Sourced {
                value: vec!["www.example.org".to_owned(), "example.org".to_owned()],
                origin: file(2),
            })
        );
        assert_eq!(acme.contact.unwrap().value, "mailto:ops@example.org");
        assert_eq!(acme.directory.value, staging);
        assert_eq!(acme.directory.origin, file(4));
        assert_eq!(
            acme.ca_root.unwrap().value,
            PathBuf::from("/etc/pebble/root.pem")
        );
        assert_eq!(acme.renew_days.value, 20);
        // The environment wins over the file, a flag over both.
        f.inputs
            .env
            .insert("ACME_DOMAINS".into(), "env.example".into());
        f.inputs
            .env
            .insert("ACME_DIRECTORY".into(), "https://ca.internal/dir".into());
        let acme = load(&f).unwrap().acme;
        assert_eq!(acme.domains.as_ref().unwrap().value, ["env.example"]);
        assert_eq!(
            acme.domains.unwrap().origin,
            Origin::Environment("ACME_DOMAINS".into())
        );
        assert_eq!(acme.directory.value, "https://ca.internal/dir");
        f.inputs.acme = AcmeFlags {
            domains: Some("flag.example".into()),
            directory: Some("https://127.0.0.1:14000/dir".into()),
        };
        let acme = load(&f).unwrap().acme;
        assert_eq!(acme.domains.as_ref().unwrap().value, ["flag.example"]);
        assert_eq!(acme.domains.unwrap().origin, Origin::Flag("--domains"));
        assert_eq!(acme.directory.origin, Origin::Flag("--directory"));
    }

    #[test]
    fn bad_acme_settings_name_the_key_and_where_it_was_set() {
        let path = |f: &Fixture| f.dir.path().join("deploy.env").display().to_string();
        for (line, message) in [
            (
                "ACME_DOMAINS=*.example.org",
                "ACME_DOMAINS: \"*.example.org\" cannot be ordered: http-01 cannot validate a wildcard",
            ),
            (
                "ACME_DOMAINS=a.example,,b.example",
                "ACME_DOMAINS 'a.example,,b.example' has an empty name",
            ),
            (
                "ACME_DOMAINS=192.0.2.1",
                "ACME_DOMAINS: \"192.0.2.1\" cannot be ordered: an address, not a DNS name",
            ),
            (
                "ACME_EMAIL=ops",
                "ACME_EMAIL 'ops' is not an e-mail address",
            ),
            (
                "ACME_EMAIL=a@b.example,c@d.example",
                "ACME_EMAIL 'a@b.example,c@d.example' is not an e-mail address",
            ),
            // Each part of an address's check on its own: no user, a host without a dot, a
            // host that starts or ends with one.
            (
                "ACME_EMAIL=@ops.example",
                "ACME_EMAIL '@ops.example' is not an e-mail address",
            ),
            (
                "ACME_EMAIL=ops@localhost",
                "ACME_EMAIL 'ops@localhost' is not an e-mail address",
            ),
            (
                "ACME_EMAIL=ops@.example",
                "ACME_EMAIL 'ops@.example' is not an e-mail address",
            ),
            (
                "ACME_EMAIL=ops@example.",
                "ACME_EMAIL 'ops@example.' is not an e-mail address",
            ),
            (
                "ACME_DIRECTORY=http://ca.example/dir",
                "ACME_DIRECTORY 'http://ca.example/dir' is not an https:// URL",
            ),
            (
                "ACME_DIRECTORY=https://",
                "ACME_DIRECTORY 'https://' is not an https:// URL",
            ),
            (
                "ACME_DIRECTORY=https:///dir",
                "ACME_DIRECTORY 'https:///dir' is not an https:// URL",
            ),
            (
                "ACME_DIRECTORY=https://ca.example/a dir",
                "ACME_DIRECTORY 'https://ca.example/a dir' is not an https:// URL",
            ),
            (
                "ACME_CA_ROOT=root.pem",
                "ACME_CA_ROOT 'root.pem' is not an absolute path",
            ),
            (
                "ACME_RENEW_DAYS=0",
                "ACME_RENEW_DAYS '0' is not a positive number of days",
            ),
            (
                "ACME_RENEW_DAYS=thirty",
                "ACME_RENEW_DAYS 'thirty' is not a positive number of days",
            ),
        ] {
            let f = fixture(&format!("REGISTRY=r\n{line}\n"), &pins());
            let e = error(&f);
            let want = format!("{}:2: {message}", path(&f));
            assert!(e.starts_with(&want), "{line}: {e}\nwanted: {want}");
        }
        // From the environment, the variable is named as the origin.
        let mut f = fixture("REGISTRY=r\n", &pins());
        f.inputs.env.insert("ACME_RENEW_DAYS".into(), "-1".into());
        assert_eq!(
            error(&f),
            "ACME_RENEW_DAYS from the environment: ACME_RENEW_DAYS '-1' is not a positive number of days"
        );
        // And a flag as the flag.
        let mut f = fixture("REGISTRY=r\n", &pins());
        f.inputs.acme.domains = Some("a_b.example".into());
        assert!(
            error(&f).starts_with("--domains: ACME_DOMAINS: \"a_b.example\" cannot be ordered"),
            "{}",
            error(&f)
        );
    }
}

#[cfg(test)]
mod backup_tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> (Result<Backup, SettingsError>, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deploy.env");
        std::fs::write(&path, text).unwrap();
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        (load_backup(&path, &env), path)
    }

    #[test]
    fn backup_defaults_keep_a_week_locally_and_check_a_day_and_two_hours() {
        let (b, _) = load("", &[]);
        let b = b.unwrap();
        assert_eq!(b.repository, None);
        assert_eq!(b.keep.value, 7);
        assert_eq!(
            (
                b.keep_daily.value,
                b.keep_weekly.value,
                b.keep_monthly.value
            ),
            (7, 4, 6)
        );
        assert_eq!(b.every.value, Duration::from_secs(86_400));
        assert_eq!(b.every.origin, Origin::Default);
        assert_eq!(b.test_restore_every.value, Duration::from_secs(604_800));
        assert_eq!(b.max_age.value, Duration::from_secs(86_400 + 7_200));
    }

    #[test]
    fn backup_settings_come_from_deploy_env_and_the_environment() {
        let (b, path) = load(
            "NGINX_IMAGE=nginx@sha256:00\nBACKUP_REPOSITORY=sftp:store@backup.example:/srv/prod\nBACKUP_EVERY=3600\nBACKUP_KEEP=2\nBACKUP_KEEP_MONTHLY=12\n",
            &[("BACKUP_KEEP_DAILY", "3")],
        );
        let b = b.unwrap();
        let repo = b.repository.unwrap();
        assert_eq!(repo.value, "sftp:store@backup.example:/srv/prod");
        assert_eq!(repo.origin, Origin::File { path, line: 2 });
        assert_eq!(b.every.value, Duration::from_secs(3600));
        // The check's threshold follows the backup interval.
        assert_eq!(b.max_age.value, Duration::from_secs(3600 + 7200));
        assert_eq!((b.keep.value, b.keep_monthly.value), (2, 12));
        assert_eq!(b.keep_daily.value, 3);
        assert_eq!(
            b.keep_daily.origin,
            Origin::Environment("BACKUP_KEEP_DAILY".into())
        );
        let (b, _) = load(
            "BACKUP_REPOSITORY=/mnt/usb/restic\nBACKUP_MAX_AGE=60\n",
            &[],
        );
        let b = b.unwrap();
        assert_eq!(b.repository.unwrap().value, "/mnt/usb/restic");
        assert_eq!(b.max_age.value, Duration::from_secs(60));
    }

    #[test]
    fn bad_backup_settings_name_the_key_and_the_line() {
        for (text, want) in [
            (
                "BACKUP_REPOSITORY=backup.example:/srv\n",
                "is not a restic repository",
            ),
            (
                "BACKUP_REPOSITORY=relative/dir\n",
                "is not a restic repository",
            ),
            ("BACKUP_EVERY=59\n", "BACKUP_EVERY"),
            ("BACKUP_KEEP=0\n", "BACKUP_KEEP"),
            ("BACKUP_KEEP_WEEKLY=many\n", "BACKUP_KEEP_WEEKLY"),
            ("BACKUP_MAX_AGE=-1\n", "BACKUP_MAX_AGE"),
            ("BACKUP_SOMETHING=1\n", "unknown key BACKUP_SOMETHING"),
        ] {
            let (got, path) = load(&format!("# backups\n{text}"), &[]);
            let e = got.unwrap_err();
            assert_eq!(e.origin, Origin::File { path, line: 2 }, "{text}");
            assert!(e.message.contains(want), "{text}: {}", e.message);
        }
        let (got, _) = load("BACKUP_REPOSITORY=s3:host/bucket x\n", &[]);
        assert!(got.is_err());
    }
}
