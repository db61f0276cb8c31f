//! Output formats: `env`, `export` and `json`.
//!
//! * `env`: `VAR=value`, one line per variable: the old script's format.
//! * `export`: `export VAR='value'`, safe to `eval` in any POSIX shell.
//! * `json`: one object:
//!
//! ```json
//! {
//!   "compose": "docker-compose.prod.yaml",
//!   "hash_len": 12,
//!   "names": { "PROJECT_PROD_BACKEND_CONFIG": "project_prod_backend_config_0123456789ab" },
//!   "entries": [
//!     {
//!       "variable": "PROJECT_PROD_BACKEND_CONFIG",
//!       "name": "project_prod_backend_config_0123456789ab",
//!       "sha256": "0123456789ab…(64 hex)",
//!       "bytes": 311,
//!       "sources": [ { "kind": "config", "key": "backend-config", "file": "./deploy-manifests/prod/backend/config.toml" } ]
//!     }
//!   ],
//!   "skipped": [ { "kind": "secret", "key": "registry-token", "reason": "external", "name": "${REGISTRY_TOKEN_SECRET}" } ]
//! }
//! ```
//!
//! `names` maps each variable to its value (handy for `jq -r .names.VAR`);
//! an external entry in `skipped` also has `name`: the object it refers to, as
//! written (a `${VAR}` in it is left for `docker stack deploy` to expand);
//! `entries` is in the same order as the other formats (sorted by variable).

use std::fmt::Write as _;

use serde_json::{Map, Value, json};

use crate::Report;
use crate::compose::SkipReason;

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// `VAR=value` lines.
    #[default]
    Env,
    /// `export VAR='value'` lines.
    Export,
    /// One JSON object (see the module documentation).
    Json,
}

/// Renders a report. Text formats end every line with `\n`; an empty report
/// renders as an empty string (or an object with empty members for JSON).
#[must_use]
pub fn render(report: &Report, format: Format) -> String {
    match format {
        Format::Env => report.pairs().fold(String::new(), |mut out, (var, name)| {
            let _ = writeln!(out, "{var}={name}");
            out
        }),
        Format::Export => report.pairs().fold(String::new(), |mut out, (var, name)| {
            let _ = writeln!(out, "export {var}={}", shell_quote(name));
            out
        }),
        Format::Json => {
            let mut text =
                serde_json::to_string_pretty(&to_json(report)).unwrap_or_else(|_| "{}".to_owned());
            text.push('\n');
            text
        }
    }
}

/// The JSON value of a report (see the module documentation for its shape).
#[must_use]
pub fn to_json(report: &Report) -> Value {
    let names: Map<String, Value> = report
        .pairs()
        .map(|(v, n)| (v.to_owned(), Value::from(n)))
        .collect();
    let entries: Vec<Value> = report
        .names
        .iter()
        .map(|n| {
            json!({
                "variable": n.variable,
                "name": n.name,
                "sha256": n.sha256,
                "bytes": n.size,
                "sources": n.sources.iter().map(|s| json!({
                    "kind": s.entry.kind.as_str(),
                    "key": s.entry.key,
                    "file": s.file.to_string_lossy(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let skipped: Vec<Value> = report
        .skipped
        .iter()
        .map(|s| {
            let mut entry = json!({
                "kind": s.entry.kind.as_str(),
                "key": s.entry.key,
                "reason": match s.reason {
                    SkipReason::External => "external",
                    SkipReason::NoFile { .. } => "no-file",
                },
            });
            if let (Some(name), Value::Object(fields)) = (&s.name, &mut entry) {
                fields.insert("name".to_owned(), Value::from(name.as_str()));
            }
            entry
        })
        .collect();
    json!({
        "compose": report.compose.to_string_lossy(),
        "hash_len": report.hash_len,
        "names": names,
        "entries": entries,
        "skipped": skipped,
    })
}

/// Quotes `s` for a POSIX shell: wrapped in single quotes, each `'` written as `'\''`.
///
/// ```
/// use config_hasher::output::shell_quote;
/// assert_eq!(shell_quote("a_b"), "'a_b'");
/// assert_eq!(shell_quote("it's"), r"'it'\''s'");
/// ```
#[must_use]
pub fn shell_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push_str(r"'\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::compose::Skipped;
    use crate::{ContentName, EntryId, Kind, Source};

    fn report() -> Report {
        let name = |v: &str, n: &str| ContentName {
            variable: v.into(),
            name: n.into(),
            sha256: "ab".repeat(32),
            size: 3,
            sources: vec![Source {
                entry: EntryId::new(Kind::Config, v.to_lowercase()),
                file: PathBuf::from(format!("./{v}.conf")),
            }],
        };
        Report {
            compose: "c.yaml".into(),
            hash_len: 12,
            names: vec![name("A", "a_abababababab"), name("B", "b_abababababab")],
            skipped: vec![
                Skipped {
                    entry: EntryId::new(Kind::Secret, "s"),
                    reason: SkipReason::External,
                    name: Some("${S_SECRET}".into()),
                },
                Skipped {
                    entry: EntryId::new(Kind::Config, "c"),
                    reason: SkipReason::NoFile { uses: None },
                    name: None,
                },
            ],
        }
    }

    #[test]
    fn env_and_export() {
        assert_eq!(
            render(&report(), Format::Env),
            "A=a_abababababab\nB=b_abababababab\n"
        );
        assert_eq!(
            render(&report(), Format::Export),
            "export A='a_abababababab'\nexport B='b_abababababab'\n"
        );
    }

    #[test]
    fn empty_report_renders_nothing() {
        let mut r = report();
        r.names.clear();
        assert_eq!(render(&r, Format::Env), "");
        assert_eq!(render(&r, Format::Export), "");
        let v: Value = serde_json::from_str(&render(&r, Format::Json)).unwrap();
        assert_eq!(v["names"], json!({}));
    }

    #[test]
    fn json_shape() {
        let v: Value = serde_json::from_str(&render(&report(), Format::Json)).unwrap();
        assert_eq!(v["compose"], "c.yaml");
        assert_eq!(v["hash_len"], 12);
        assert_eq!(v["names"]["B"], "b_abababababab");
        assert_eq!(v["entries"][0]["variable"], "A");
        assert_eq!(v["entries"][0]["bytes"], 3);
        assert_eq!(v["entries"][0]["sources"][0]["kind"], "config");
        assert_eq!(v["entries"][0]["sources"][0]["file"], "./A.conf");
        assert_eq!(v["skipped"][0]["reason"], "external");
        assert_eq!(v["skipped"][0]["name"], "${S_SECRET}");
        assert_eq!(v["skipped"][1]["reason"], "no-file");
        assert!(v["skipped"][1].get("name").is_none(), "{}", v["skipped"][1]);
    }

    #[test]
    fn quoting_survives_a_real_shell() {
        let tricky = "a'b\"c $(x) `y` \\ \n end";
        let script = format!("printf %s {}", shell_quote(tricky));
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), tricky);
    }
}
