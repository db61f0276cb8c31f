//! Configuration: a TOML file, then environment overrides, then the database password.
//!
//! Layers, later wins:
//! 1. built-in defaults (every key is optional);
//! 2. the TOML file (`/app/config.toml` by default, a Docker config in the stack);
//! 3. `BACKEND_<SECTION>__<KEY>` environment variables, e.g. `BACKEND_DATABASE__HOST=db`. Each
//!    value is converted by the type of the key it sets (a title `2025` stays a string, a port
//!    must be a whole number, nothing else on the line), and an error names the one variable at
//!    fault;
//! 4. the password: `DB_PASS` / `DB_PASS_FILE` from the environment, else `database.password` /
//!    `database.password_file` from the file. A password *and* a password file is an error,
//!    wherever each came from. The rule is the official Postgres image's `file_env`, which reads
//!    the same secret on the database side: an empty value counts as unset, and the file's
//!    trailing newlines are all dropped (`$(< file)`), nothing else.
//!
//! Unknown keys are errors, so a typo in a config file fails the rollout instead of being ignored.
//! Every number has bounds (checked in [`Settings::validate`]), so no setting can overflow a
//! computation at start-up. `config.sample.toml` next to this crate documents every key.
//!
//! Environment variables that are not valid UTF-8 are ignored unless they are ours
//! (`BACKEND_*`, `DB_PASS`, `DB_PASS_FILE`), which is an error.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// Prefix of environment variables that override keys of the file.
pub const ENV_PREFIX: &str = "BACKEND_";

/// Why the configuration could not be loaded. Every variant names the file or variable at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("environment variable {var} is not valid UTF-8")]
    EnvNotUnicode { var: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error(
        "both a database password ({password_from}) and a password file ({file_from}) are set; set only one"
    )]
    PasswordTwice {
        password_from: &'static str,
        file_from: &'static str,
    },
    #[error("cannot read database password file {path} ({from}): {source}")]
    PasswordFile {
        path: PathBuf,
        from: &'static str,
        source: std::io::Error,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub app: AppSettings,
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub logs: LogsSettings,
    pub telemetry: TelemetrySettings,
}

/// What the service says about itself.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppSettings {
    /// Environment label, shown by `/api/service/info` (e.g. `prod`, `dev`).
    pub environment: String,
    /// Title shown by `/api/service/info` and the frontend's header.
    pub title: String,
}

impl Default for AppSettings {
    fn default() -> Self {
        Self {
            environment: "local".into(),
            title: "stackship".into(),
        }
    }
}

/// HTTP server and lifecycle.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    /// Largest accepted request body; larger bodies get 413.
    pub body_limit_bytes: usize,
    /// A request that waits on the database (ready, log write/read) longer than this gets a
    /// JSON 504. Keep it shorter than the proxy's `proxy_read_timeout`, so the client gets this
    /// answer rather than the proxy's.
    pub request_timeout_ms: u64,
    /// After SIGTERM, keep serving this long while readiness says 503, so DNS-based proxies
    /// (Swarm `dnsrr` + nginx re-resolving) stop sending before the listener closes.
    pub drain_delay_ms: u64,
    /// After the drain delay, one budget for everything left: in-flight requests, flushing the
    /// queued writes, closing the pool. When it runs out the process exits with status 1.
    /// `drain_delay_ms + shutdown_timeout_ms` must fit in the stack's `stop_grace_period`.
    pub shutdown_timeout_ms: u64,
    /// Take the client address from the last hop of `X-Forwarded-For` (set by our proxy).
    /// Leave off when clients connect directly: they could forge it.
    pub trust_forwarded_for: bool,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".into(),
            port: 8080,
            body_limit_bytes: 64 * 1024,
            // Well under the proxy's proxy_read_timeout (30 s): the client sees our JSON 504.
            request_timeout_ms: 10_000,
            drain_delay_ms: 5_000,
            shutdown_timeout_ms: 20_000,
            trust_forwarded_for: false,
        }
    }
}

/// Postgres connection.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub name: String,
    /// Inline password. Prefer `password_file` (a Docker secret).
    #[serde(skip_serializing)]
    pub password: Option<SecretString>,
    /// File holding the password (trailing newlines ignored), e.g. `/run/secrets/db_password`.
    pub password_file: Option<PathBuf>,
    /// Pool size. Group commit needs few connections: a handful of writers plus readers.
    pub max_connections: u32,
    /// How long a request waits for a connection (including connecting) before it gets 503.
    /// Short, so a database outage answers fast instead of piling up requests.
    pub acquire_timeout_ms: u64,
    /// Connections the pool opens at start and keeps (at most `max_connections`). With
    /// `min_connections = max_connections` and no recycling (`max_lifetime_s = 0`,
    /// `idle_timeout_s = 0`), a running backend never logs in again while its connections
    /// live: a password rotation (ALTER ROLE, then the backend rolled onto the new secret)
    /// cannot fail the old tasks' requests.
    pub min_connections: u32,
    /// A connection is closed once this old (seconds; 0 = never).
    pub max_lifetime_s: u64,
    /// A connection above `min_connections` idle this long is closed (seconds; 0 = never).
    pub idle_timeout_s: u64,
    /// A pooled connection idle this long is pinged before use, so one that died with its
    /// server (a Postgres restart) is replaced instead of failing a request (milliseconds).
    /// Busy connections are pinged too for a while after any statement found its session
    /// ended by Postgres; that statement is sent again on another connection.
    pub ping_idle_after_ms: u64,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 5432,
            user: "backend".into(),
            name: "backend".into(),
            password: None,
            password_file: None,
            max_connections: 10,
            acquire_timeout_ms: 2_000,
            // sqlx's own defaults.
            min_connections: 0,
            max_lifetime_s: 1_800,
            idle_timeout_s: 600,
            ping_idle_after_ms: 1_000,
        }
    }
}

/// The request log API.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogsSettings {
    /// Longest accepted message, in characters; longer gets 422.
    pub max_message_chars: usize,
    pub default_page_size: i64,
    pub max_page_size: i64,
    /// Most rows one group commit inserts.
    pub batch_max_rows: usize,
    /// Group commits in flight at once. While they run, new requests queue and form the next
    /// batch, so batches grow with load and each commit carries many rows.
    pub max_inflight_batches: usize,
}

impl Default for LogsSettings {
    fn default() -> Self {
        Self {
            max_message_chars: 2_000,
            default_page_size: 50,
            max_page_size: 500,
            batch_max_rows: 512,
            max_inflight_batches: 1,
        }
    }
}

/// Log output.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// `json` (containers) or `pretty` (a terminal).
    pub format: LogFormat,
    /// `tracing` filter directives; `RUST_LOG` wins when set.
    pub filter: String,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Json,
            filter: "info".into(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

impl ServerSettings {
    pub fn drain_delay(&self) -> Duration {
        Duration::from_millis(self.drain_delay_ms)
    }
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }
}

impl Settings {
    /// Loads `path`, applies `BACKEND_*` overrides and resolves the password, reading the process
    /// environment.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let env = env_from_os(std::env::vars_os())?;
        Self::load_with_env(path, &env)
    }

    /// Like [`Settings::load`], with the environment given (for tests).
    pub fn load_with_env(path: &Path, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml_with_env(&text, path, env)
    }

    /// Parses `text` (named `origin` in errors) and applies the environment.
    pub fn from_toml_with_env(
        text: &str,
        origin: &Path,
        env: &HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let mut table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: origin.to_owned(),
                    message: e.to_string(),
                })?;
        // Fail on a bad file before blaming the environment.
        Settings::deserialize(toml::Value::Table(table.clone())).map_err(|e| {
            ConfigError::Parse {
                path: origin.to_owned(),
                message: e.to_string(),
            }
        })?;

        let mut overrides: Vec<(&String, &String)> = env
            .iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        overrides.sort();
        let kinds = key_kinds();
        for (var, value) in &overrides {
            let (section, key, value) = typed_override(&kinds, var, value)?;
            // Applied alone on top of the file, so a value the field rejects (a port of 70000,
            // an unknown log format) is blamed on its own variable.
            let mut alone = table.clone();
            insert_key(&mut alone, &section, &key, value.clone());
            Settings::deserialize(toml::Value::Table(alone)).map_err(|e| ConfigError::Env {
                var: var.to_string(),
                message: e.to_string(),
            })?;
            insert_key(&mut table, &section, &key, value);
        }
        let mut settings = Settings::deserialize(toml::Value::Table(table)).map_err(|e| {
            // Each override was checked alone above; this is a file/override combination.
            ConfigError::Parse {
                path: origin.to_owned(),
                message: e.to_string(),
            }
        })?;
        settings.resolve_password(env)?;
        settings.validate()?;
        Ok(settings)
    }

    fn resolve_password(&mut self, env: &HashMap<String, String>) -> Result<(), ConfigError> {
        // As the Postgres entrypoint's file_env: an empty value is the same as an unset one.
        let set = |v: Option<&String>| v.filter(|v| !v.is_empty()).cloned();
        let password = match set(env.get("DB_PASS")) {
            Some(p) => Some((SecretString::from(p), "DB_PASS")),
            None => {
                use secrecy::ExposeSecret;
                self.database
                    .password
                    .take()
                    .filter(|p| !p.expose_secret().is_empty())
                    .map(|p| (p, "database.password"))
            }
        };
        let file = match set(env.get("DB_PASS_FILE")) {
            Some(f) => Some((PathBuf::from(f), "DB_PASS_FILE")),
            None => self
                .database
                .password_file
                .take()
                .filter(|f| !f.as_os_str().is_empty())
                .map(|f| (f, "database.password_file")),
        };
        self.database.password = match (password, file) {
            (Some((_, password_from)), Some((_, file_from))) => {
                return Err(ConfigError::PasswordTwice {
                    password_from,
                    file_from,
                });
            }
            (Some((p, _)), None) => Some(p),
            (None, Some((path, from))) => {
                let raw = std::fs::read(&path).map_err(|source| ConfigError::PasswordFile {
                    path: path.clone(),
                    from,
                    source,
                })?;
                let password =
                    password_from_file(&raw).map_err(|source| ConfigError::PasswordFile {
                        path: path.clone(),
                        from,
                        source,
                    })?;
                self.database.password_file = Some(path);
                Some(SecretString::from(password))
            }
            (None, None) => None,
        };
        Ok(())
    }

    /// Every number within its bounds, so nothing overflows at start-up (channel sizes, permit
    /// counts, durations) and a typo of a few zeros fails the rollout instead of the service.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, value, min, max) in self.numeric_settings() {
            if !(min..=max).contains(&value) {
                return Err(ConfigError::Invalid(format!(
                    "{key} must be between {min} and {max}, not {value}"
                )));
            }
        }
        let d = &self.database;
        if d.min_connections > d.max_connections {
            return Err(ConfigError::Invalid(format!(
                "database.min_connections ({}) must not exceed database.max_connections ({})",
                d.min_connections, d.max_connections
            )));
        }
        let l = &self.logs;
        if l.default_page_size > l.max_page_size {
            return Err(ConfigError::Invalid(format!(
                "logs.default_page_size ({}) must not exceed logs.max_page_size ({})",
                l.default_page_size, l.max_page_size
            )));
        }
        Ok(())
    }

    /// `(key, value, min, max)` of every numeric setting but `server.port`, a `u16` whose every
    /// value is valid (0 picks a free port).
    pub fn numeric_settings(&self) -> [(&'static str, i128, i128, i128); 15] {
        let (s, d, l) = (&self.server, &self.database, &self.logs);
        let n = |v: u64| i128::from(v);
        [
            // Larger bodies than 16 MiB have no business in a log API.
            (
                "server.body_limit_bytes",
                n(s.body_limit_bytes as u64),
                1,
                16 << 20,
            ),
            // Up to 5 minutes; must stay under the proxy's read timeout (30 s in the stack).
            (
                "server.request_timeout_ms",
                n(s.request_timeout_ms),
                1,
                300_000,
            ),
            // drain + shutdown must fit in the stack's stop_grace_period: minutes at most.
            ("server.drain_delay_ms", n(s.drain_delay_ms), 0, 120_000),
            (
                "server.shutdown_timeout_ms",
                n(s.shutdown_timeout_ms),
                1,
                300_000,
            ),
            // Postgres' own default max_connections is 100.
            (
                "database.max_connections",
                n(u64::from(d.max_connections)),
                1,
                1_000,
            ),
            (
                "database.acquire_timeout_ms",
                n(d.acquire_timeout_ms),
                1,
                300_000,
            ),
            (
                "database.min_connections",
                n(u64::from(d.min_connections)),
                0,
                1_000,
            ),
            // Up to a week.
            ("database.max_lifetime_s", n(d.max_lifetime_s), 0, 604_800),
            ("database.idle_timeout_s", n(d.idle_timeout_s), 0, 604_800),
            // An hour at most: longer would leave dead connections in the pool for as long.
            (
                "database.ping_idle_after_ms",
                n(d.ping_idle_after_ms),
                0,
                3_600_000,
            ),
            (
                "logs.max_message_chars",
                n(l.max_message_chars as u64),
                1,
                1 << 20,
            ),
            (
                "logs.default_page_size",
                i128::from(l.default_page_size),
                1,
                10_000,
            ),
            ("logs.max_page_size", i128::from(l.max_page_size), 1, 10_000),
            // The writer's queue holds batch_max_rows * max_inflight_batches * 4 rows.
            ("logs.batch_max_rows", n(l.batch_max_rows as u64), 1, 10_000),
            (
                "logs.max_inflight_batches",
                n(l.max_inflight_batches as u64),
                1,
                64,
            ),
        ]
    }
}

/// The password in a password file, read as the Postgres entrypoint reads the same secret
/// (`$(< file)`): every trailing newline dropped, nothing else (spaces and `\r` are kept).
pub fn password_from_file(raw: &[u8]) -> Result<String, std::io::Error> {
    let end = raw.iter().rposition(|&b| b != b'\n').map_or(0, |i| i + 1);
    String::from_utf8(raw[..end].to_vec()).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, "the password is not UTF-8")
    })
}

/// The variables we read, from an OS environment: foreign variables that are not UTF-8 are
/// skipped (they are none of our business); ours must be UTF-8.
pub fn env_from_os(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<HashMap<String, String>, ConfigError> {
    let mut env = HashMap::new();
    for (key, value) in vars {
        let ours = |k: &[u8]| k.starts_with(ENV_PREFIX.as_bytes()) || OWN_VARS.contains(&k);
        match (key.into_string(), value.into_string()) {
            (Ok(k), Ok(v)) => {
                env.insert(k, v);
            }
            (Ok(k), Err(_)) if ours(k.as_bytes()) => {
                return Err(ConfigError::EnvNotUnicode { var: k });
            }
            (Err(k), _) if ours(k.as_encoded_bytes()) => {
                return Err(ConfigError::EnvNotUnicode {
                    var: k.to_string_lossy().into_owned(),
                });
            }
            _ => {}
        }
    }
    Ok(env)
}

/// Variables read besides `BACKEND_*`.
const OWN_VARS: [&[u8]; 3] = [b"DB_PASS", b"DB_PASS_FILE", b"RUST_LOG"];

/// The type of a key's value, from its default: overrides are converted to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Integer,
    Boolean,
}

/// `section.key` -> kind, for every key, from the defaults serialized. The two password keys have
/// no default (they are optional) and are text.
fn key_kinds() -> HashMap<(String, String), Kind> {
    let defaults = toml::Table::try_from(Settings::default()).expect("defaults serialize");
    let mut kinds = HashMap::new();
    for (section, table) in &defaults {
        let toml::Value::Table(table) = table else {
            continue;
        };
        for (key, value) in table {
            let kind = match value {
                toml::Value::Integer(_) => Kind::Integer,
                toml::Value::Boolean(_) => Kind::Boolean,
                _ => Kind::Text,
            };
            kinds.insert((section.clone(), key.clone()), kind);
        }
    }
    for key in ["password", "password_file"] {
        kinds.insert(("database".into(), key.into()), Kind::Text);
    }
    kinds
}

/// `BACKEND_SERVER__PORT=9000` -> `("server", "port", 9000)`: the value converted by the type of
/// the key it sets, strictly (no TOML syntax, no comments).
fn typed_override(
    kinds: &HashMap<(String, String), Kind>,
    var: &str,
    value: &str,
) -> Result<(String, String, toml::Value), ConfigError> {
    let err = |message: String| ConfigError::Env {
        var: var.to_owned(),
        message,
    };
    let key = &var[ENV_PREFIX.len()..];
    let parts: Vec<String> = key.split("__").map(str::to_ascii_lowercase).collect();
    let [section, key] = parts.as_slice() else {
        return Err(err(format!(
            "expected {ENV_PREFIX}<SECTION>__<KEY>, e.g. {ENV_PREFIX}SERVER__PORT"
        )));
    };
    let Some(kind) = kinds.get(&(section.clone(), key.clone())) else {
        return Err(err(format!("there is no setting `{section}.{key}`")));
    };
    let value = match kind {
        Kind::Text => toml::Value::String(value.to_owned()),
        Kind::Integer => value
            .parse::<i64>()
            .map(toml::Value::Integer)
            .map_err(|_| {
                err(format!(
                    "`{section}.{key}` takes a whole number, not {value:?}"
                ))
            })?,
        Kind::Boolean => match value {
            "true" => toml::Value::Boolean(true),
            "false" => toml::Value::Boolean(false),
            _ => {
                return Err(err(format!(
                    "`{section}.{key}` takes true or false, not {value:?}"
                )));
            }
        },
    };
    Ok((section.clone(), key.clone(), value))
}

/// Sets `section.key` in `table`, creating the section. The file was checked before, so an
/// existing `section` is a table.
fn insert_key(table: &mut toml::Table, section: &str, key: &str, value: toml::Value) {
    let section = table
        .entry(section.to_owned())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let toml::Value::Table(t) = section {
        t.insert(key.to_owned(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load(text: &str, pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::from_toml_with_env(text, Path::new("test.toml"), &env(pairs))
    }

    #[test]
    fn empty_file_gives_defaults() {
        let s = load("", &[]).unwrap();
        assert_eq!(s.server.port, 8080);
        assert_eq!(s.server.body_limit_bytes, 65536);
        assert!(s.database.password.is_none());
    }

    #[test]
    fn the_sample_config_parses_and_every_key_is_known() {
        let text = include_str!("../config.sample.toml");
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        let s = load(text, &[("DB_PASS_FILE", pw.to_str().unwrap())]);
        // The sample names a password file under /run/secrets; the environment's file wins
        // only if the sample does not also set an inline password.
        let s = s.unwrap();
        assert_eq!(s.database.password.unwrap().expose_secret(), "s3cret");
    }

    #[test]
    fn env_overrides_file() {
        let s = load(
            "[server]\nport = 1\n",
            &[
                ("BACKEND_SERVER__PORT", "9000"),
                ("BACKEND_APP__TITLE", "hello"),
            ],
        )
        .unwrap();
        assert_eq!(s.server.port, 9000);
        assert_eq!(s.app.title, "hello");
    }

    #[test]
    fn unknown_key_in_file_is_an_error_naming_the_file() {
        let e = load("[server]\nprot = 1\n", &[]).unwrap_err().to_string();
        assert!(e.contains("test.toml") && e.contains("prot"), "{e}");
    }

    #[test]
    fn bad_env_override_names_the_variable() {
        let e = load("", &[("BACKEND_SERVER__PORT", "lots")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("BACKEND_SERVER__PORT"), "{e}");
        let e = load("", &[("BACKEND_PORT", "1")]).unwrap_err().to_string();
        assert!(e.contains("BACKEND_PORT"), "{e}");
    }

    #[test]
    fn password_and_password_file_together_is_an_error() {
        let e = load("[database]\npassword = \"x\"\n", &[("DB_PASS_FILE", "/x")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("database.password") && e.contains("DB_PASS_FILE"),
            "{e}"
        );
        let e = load("[database]\npassword_file = \"/x\"\n", &[("DB_PASS", "y")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("DB_PASS") && e.contains("password_file"), "{e}");
    }

    #[test]
    fn password_file_is_read_and_trailing_newline_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "p4ss word\n").unwrap();
        let text = format!("[database]\npassword_file = {:?}\n", pw.to_str().unwrap());
        let s = load(&text, &[]).unwrap();
        assert_eq!(s.database.password.unwrap().expose_secret(), "p4ss word");
    }

    #[test]
    fn missing_password_file_names_the_path() {
        let e = load("", &[("DB_PASS_FILE", "/nonexistent/pw")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/nonexistent/pw") && e.contains("DB_PASS_FILE"),
            "{e}"
        );
    }

    #[test]
    fn password_is_not_printed_by_debug() {
        let s = load("", &[("DB_PASS", "hunter2")]).unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn invalid_values_are_rejected() {
        assert!(load("[logs]\ndefault_page_size = 900\n", &[]).is_err());
        assert!(load("[server]\nbody_limit_bytes = 0\n", &[]).is_err());
        assert!(load("[telemetry]\nformat = \"xml\"\n", &[]).is_err());
    }

    #[test]
    fn env_values_take_the_type_of_their_key() {
        let s = load(
            "",
            &[
                ("BACKEND_APP__TITLE", "2025"),
                ("BACKEND_APP__ENVIRONMENT", "true"),
                ("BACKEND_DATABASE__PASSWORD", "12345"),
                ("BACKEND_DATABASE__HOST", "1.5"),
                ("BACKEND_SERVER__TRUST_FORWARDED_FOR", "true"),
                ("BACKEND_SERVER__PORT", "9001"),
                ("BACKEND_TELEMETRY__FORMAT", "pretty"),
            ],
        )
        .unwrap();
        assert_eq!(s.app.title, "2025");
        assert_eq!(s.app.environment, "true");
        assert_eq!(s.database.password.unwrap().expose_secret(), "12345");
        assert_eq!(s.database.host, "1.5");
        assert!(s.server.trust_forwarded_for);
        assert_eq!(s.server.port, 9001);
        assert_eq!(s.telemetry.format, LogFormat::Pretty);
        // Text is taken as it is, TOML syntax included.
        let s = load("", &[("BACKEND_APP__TITLE", "\"quoted\" # not a comment")]).unwrap();
        assert_eq!(s.app.title, "\"quoted\" # not a comment");
    }

    #[test]
    fn a_bad_env_value_is_an_error_naming_only_that_variable() {
        for (var, value) in [
            ("BACKEND_SERVER__PORT", "1 # x"),
            ("BACKEND_SERVER__PORT", "70000"),
            ("BACKEND_SERVER__PORT", " 80"),
            ("BACKEND_SERVER__PORT", "0x50"),
            ("BACKEND_SERVER__TRUST_FORWARDED_FOR", "yes"),
            ("BACKEND_SERVER__TRUST_FORWARDED_FOR", "1"),
            ("BACKEND_TELEMETRY__FORMAT", "xml"),
            ("BACKEND_SERVER__PROT", "80"),
            ("BACKEND_NOPE__PORT", "80"),
            ("BACKEND_SERVER__PORT__X", "80"),
        ] {
            let e = load(
                "",
                &[
                    (var, value),
                    ("BACKEND_APP__TITLE", "fine"),
                    ("BACKEND_ZZZ_LAST", "x"),
                ],
            );
            // BACKEND_ZZZ_LAST is wrong too, but sorts after: the first fault is named alone.
            let e = e.unwrap_err();
            let text = e.to_string();
            assert!(
                matches!(&e, ConfigError::Env { var: v, .. } if v == var),
                "{var}={value}: {text}"
            );
            assert!(!text.contains("BACKEND_APP__TITLE"), "{text}");
        }
    }

    #[test]
    fn non_utf8_variables_are_ignored_unless_ours() {
        use std::os::unix::ffi::OsStringExt;
        let bad = || OsString::from_vec(vec![b'x', 0xff, b'y']);
        let ok = |s: &str| OsString::from(s);
        let env = env_from_os([
            (ok("FOREIGN"), bad()),
            (bad(), ok("value")),
            (ok("BACKEND_APP__TITLE"), ok("t")),
        ])
        .unwrap();
        assert_eq!(env.len(), 1);
        assert_eq!(env["BACKEND_APP__TITLE"], "t");
        for name in ["BACKEND_APP__TITLE", "DB_PASS", "DB_PASS_FILE", "RUST_LOG"] {
            let e = env_from_os([(ok(name), bad())]).unwrap_err().to_string();
            assert!(e.contains(name) && e.contains("UTF-8"), "{e}");
        }
        let mut key = b"BACKEND_".to_vec();
        key.push(0xff);
        let e = env_from_os([(OsString::from_vec(key), ok("v"))]).unwrap_err();
        assert!(e.to_string().contains("BACKEND_"), "{e}");
        // Names that merely start like ours are foreign.
        assert!(env_from_os([(ok("DB_PASSWORD"), bad())]).is_ok());
    }

    #[test]
    fn empty_password_variables_count_as_unset() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "from-file\n").unwrap();
        let pw = pw.to_str().unwrap();
        let s = load("", &[("DB_PASS", ""), ("DB_PASS_FILE", pw)]).unwrap();
        assert_eq!(s.database.password.unwrap().expose_secret(), "from-file");
        let s = load("", &[("DB_PASS", "inline"), ("DB_PASS_FILE", "")]).unwrap();
        assert_eq!(s.database.password.unwrap().expose_secret(), "inline");
        let s = load("[database]\npassword = \"\"\n", &[("DB_PASS_FILE", pw)]).unwrap();
        assert_eq!(s.database.password.unwrap().expose_secret(), "from-file");
        let s = load("", &[("DB_PASS", ""), ("DB_PASS_FILE", "")]).unwrap();
        assert!(s.database.password.is_none());
        // Both non-empty stays an error.
        assert!(load("", &[("DB_PASS", "a"), ("DB_PASS_FILE", pw)]).is_err());
    }

    /// The Postgres entrypoint reads the same secret with `$(< file)`: both sides must agree
    /// on every input, so this runs bash on the same files.
    #[test]
    fn password_file_is_read_as_the_postgres_entrypoint_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let inputs: [&[u8]; 9] = [
            b"pw",
            b"pw\n",
            b"pw\n\n\n",
            b"pw\r\n",
            b" pw \n",
            b"p\nw\n",
            b"\n",
            b"",
            "pässwörd\n".as_bytes(),
        ];
        for (i, input) in inputs.iter().enumerate() {
            let file = dir.path().join(format!("pw{i}"));
            std::fs::write(&file, input).unwrap();
            let shell = std::process::Command::new("bash")
                .args(["-c", r#"printf %s "$(< "$1")""#, "bash"])
                .arg(&file)
                .output()
                .expect("run bash");
            assert!(shell.status.success());
            let ours = password_from_file(input).unwrap();
            assert_eq!(ours.as_bytes(), shell.stdout, "input {input:?}");
        }
    }

    #[test]
    fn every_numeric_setting_has_bounds_named_in_the_error() {
        let defaults = Settings::default();
        for (key, _, min, max) in defaults.numeric_settings() {
            let (section, name) = key.split_once('.').unwrap();
            let var = format!(
                "BACKEND_{}__{}",
                section.to_uppercase(),
                name.to_uppercase()
            );
            // Page sizes move together so that default <= max holds on the boundaries.
            let with = |v: i128| {
                let v = v.to_string();
                let mut pairs = vec![(var.as_str(), v.as_str())];
                if key == "logs.default_page_size" {
                    pairs.push(("BACKEND_LOGS__MAX_PAGE_SIZE", "10000"));
                }
                if key == "logs.max_page_size" {
                    pairs.push(("BACKEND_LOGS__DEFAULT_PAGE_SIZE", "1"));
                }
                if key == "database.min_connections" {
                    pairs.push(("BACKEND_DATABASE__MAX_CONNECTIONS", "1000"));
                }
                if key == "database.max_connections" {
                    pairs.push(("BACKEND_DATABASE__MIN_CONNECTIONS", "0"));
                }
                load("", &pairs.iter().map(|(a, b)| (*a, *b)).collect::<Vec<_>>())
            };
            with(min).unwrap_or_else(|e| panic!("{key} = {min}: {e}"));
            with(max).unwrap_or_else(|e| panic!("{key} = {max}: {e}"));
            for bad in [min - 1, max + 1] {
                match with(bad) {
                    // Below zero for an unsigned field: serde refuses it, naming the variable.
                    Err(ConfigError::Env { var: v, .. }) if bad < 0 => assert_eq!(v, var),
                    Err(ConfigError::Invalid(m)) => {
                        assert!(m.contains(key) && m.contains(&bad.to_string()), "{m}")
                    }
                    other => panic!("{key} = {bad}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn default_page_size_above_max_is_rejected() {
        let e = load("[logs]\ndefault_page_size = 20\nmax_page_size = 19\n", &[]).unwrap_err();
        assert!(e.to_string().contains("logs.default_page_size"), "{e}");
        assert!(load("[logs]\ndefault_page_size = 19\nmax_page_size = 19\n", &[]).is_ok());
    }

    #[test]
    fn min_connections_above_max_is_rejected() {
        let e = load(
            "[database]\nmin_connections = 11\nmax_connections = 10\n",
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("database.min_connections"), "{e}");
        assert!(
            load(
                "[database]\nmin_connections = 10\nmax_connections = 10\n",
                &[]
            )
            .is_ok()
        );
    }
}
