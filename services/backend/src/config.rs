//! Configuration: a TOML file, then environment overrides, then the database password.
//!
//! Layers, later wins:
//! 1. built-in defaults (every key is optional);
//! 2. the TOML file (`/app/config.toml` by default, a Docker config in the stack);
//! 3. `BACKEND_<SECTION>__<KEY>` environment variables, e.g. `BACKEND_DATABASE__HOST=db`;
//! 4. the password: `DB_PASS` / `DB_PASS_FILE` from the environment, else `database.password` /
//!    `database.password_file` from the file. A password *and* a password file is an error,
//!    wherever each came from (the same rule as the official Postgres image's `*_FILE` variables).
//!
//! Unknown keys are errors, so a typo in a config file fails the rollout instead of being ignored.
//! `config.sample.toml` next to this crate documents every key.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

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
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub app: AppSettings,
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub logs: LogsSettings,
    pub telemetry: TelemetrySettings,
}

/// What the service says about itself.
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    /// Largest accepted request body; larger bodies get 413.
    pub body_limit_bytes: usize,
    /// A request that waits on the database (ready, log write/read) longer than this gets 408.
    pub request_timeout_ms: u64,
    /// After SIGTERM, keep serving this long while readiness says 503, so DNS-based proxies
    /// (Swarm `dnsrr` + nginx re-resolving) stop sending before the listener closes.
    pub drain_delay_ms: u64,
    /// After the drain delay, in-flight requests get this long to finish.
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
            request_timeout_ms: 30_000,
            drain_delay_ms: 5_000,
            shutdown_timeout_ms: 20_000,
            trust_forwarded_for: false,
        }
    }
}

/// Postgres connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub name: String,
    /// Inline password. Prefer `password_file` (a Docker secret).
    pub password: Option<SecretString>,
    /// File holding the password (trailing newline ignored), e.g. `/run/secrets/db_password`.
    pub password_file: Option<PathBuf>,
    /// Pool size. Group commit needs few connections: a handful of writers plus readers.
    pub max_connections: u32,
    /// How long a request waits for a connection (including connecting) before it gets 503.
    /// Short, so a database outage answers fast instead of piling up requests.
    pub acquire_timeout_ms: u64,
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
        }
    }
}

/// The request log API.
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
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
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

impl Settings {
    /// Loads `path`, applies `BACKEND_*` overrides and resolves the password, reading the process
    /// environment.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let env: HashMap<String, String> = std::env::vars().collect();
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
        for (var, value) in &overrides {
            apply_override(&mut table, var, value)?;
        }
        let mut settings = Settings::deserialize(toml::Value::Table(table)).map_err(|e| {
            let vars: Vec<&str> = overrides.iter().map(|(k, _)| k.as_str()).collect();
            ConfigError::Env {
                var: vars.join(", "),
                message: e.to_string(),
            }
        })?;
        settings.resolve_password(env)?;
        settings.validate()?;
        Ok(settings)
    }

    fn resolve_password(&mut self, env: &HashMap<String, String>) -> Result<(), ConfigError> {
        let password = match env.get("DB_PASS") {
            Some(p) => Some((SecretString::from(p.clone()), "DB_PASS")),
            None => self
                .database
                .password
                .take()
                .map(|p| (p, "database.password")),
        };
        let file = match env.get("DB_PASS_FILE") {
            Some(f) => Some((PathBuf::from(f), "DB_PASS_FILE")),
            None => self
                .database
                .password_file
                .take()
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
                let raw =
                    std::fs::read_to_string(&path).map_err(|source| ConfigError::PasswordFile {
                        path: path.clone(),
                        from,
                        source,
                    })?;
                let trimmed = raw.strip_suffix('\n').unwrap_or(&raw);
                let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
                self.database.password_file = Some(path);
                Some(SecretString::from(trimmed.to_owned()))
            }
            (None, None) => None,
        };
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.logs;
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if self.server.body_limit_bytes == 0 {
            return bad("server.body_limit_bytes must be > 0");
        }
        if l.max_message_chars == 0 {
            return bad("logs.max_message_chars must be > 0");
        }
        if l.max_page_size < 1 || l.default_page_size < 1 || l.default_page_size > l.max_page_size {
            return bad("logs.default_page_size must be between 1 and logs.max_page_size");
        }
        if l.batch_max_rows == 0 || l.max_inflight_batches == 0 {
            return bad("logs.batch_max_rows and logs.max_inflight_batches must be > 0");
        }
        if self.database.max_connections == 0 {
            return bad("database.max_connections must be > 0");
        }
        Ok(())
    }
}

/// `BACKEND_SERVER__PORT=9000` sets `server.port = 9000`. The value is read as a TOML value when
/// it parses as one (numbers, booleans), else as a string.
fn apply_override(table: &mut toml::Table, var: &str, value: &str) -> Result<(), ConfigError> {
    let err = |message: String| ConfigError::Env {
        var: var.to_owned(),
        message,
    };
    let key = &var[ENV_PREFIX.len()..];
    let parts: Vec<String> = key.split("__").map(str::to_ascii_lowercase).collect();
    if parts.len() != 2 || parts.iter().any(String::is_empty) {
        return Err(err(format!(
            "expected {ENV_PREFIX}<SECTION>__<KEY>, e.g. {ENV_PREFIX}SERVER__PORT"
        )));
    }
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_owned()));
    let section = table
        .entry(parts[0].clone())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    match section {
        toml::Value::Table(t) => {
            t.insert(parts[1].clone(), parsed);
            Ok(())
        }
        _ => Err(err(format!("`{}` is not a section", parts[0]))),
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
}
