//! Reads the top-level `configs:` and `secrets:` of a compose file (no file system access).
//!
//! Only these two sections are looked at; services, networks, anchors and merge
//! keys elsewhere in the file are parsed as YAML and otherwise ignored. Merge
//! keys (`<<: *x`) inside the two sections are applied.

use std::fmt;
use std::path::Path;

use yaml_serde::{Mapping, Value};

use crate::error::{EntryId, Error, Kind, Problem};
use crate::interpolate::{NameRef, parse_name};

/// An entry that gets a content name: it has `file:` and a `name: ${VAR}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    /// Section and key.
    pub entry: EntryId,
    /// The variable in `name:`.
    pub name: NameRef,
    /// `file:` as written (relative to the compose file's directory unless absolute).
    pub file: String,
}

/// Why an entry is left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// `external: true` (or the old `external: {name: ...}` form): created outside the stack.
    External,
    /// No `file:`; `uses` names what it has instead (`content`, `environment`), if anything.
    NoFile {
        /// `Some("content")` or `Some("environment")` when the entry uses that instead.
        uses: Option<&'static str>,
    },
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::External => f.write_str("external"),
            SkipReason::NoFile { uses: Some(u) } => write!(f, "no file: (uses {u}:)"),
            SkipReason::NoFile { uses: None } => f.write_str("no file:"),
        }
    }
}

/// An entry left alone, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Section and key.
    pub entry: EntryId,
    /// Why.
    pub reason: SkipReason,
    /// For an external entry: the Swarm object it refers to, as written (it may
    /// hold `${VAR}`, which `docker stack deploy` expands): `name:`, else the old
    /// `external: {name: ...}`, else the key. `None` for other entries.
    pub name: Option<String>,
}

/// What a compose file declares, in file order (configs first, then secrets).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Declarations {
    /// Entries to name.
    pub declared: Vec<Declared>,
    /// Entries left alone.
    pub skipped: Vec<Skipped>,
}

/// Parses compose YAML. `path` is used only in error messages.
///
/// An empty document declares nothing. Entry problems (a `name:` that is not a
/// variable, a field of the wrong type, ...) are all collected and returned
/// together; a YAML syntax error or a wrongly shaped top level stops at once.
///
/// # Errors
/// [`Error::Syntax`], [`Error::Layout`], [`Error::Entry`] or [`Error::Several`].
pub fn parse_compose(text: &str, path: &Path) -> Result<Declarations, Error> {
    let (declarations, errors) = parse_collecting(text, path)?;
    Error::combine(path, errors)?;
    Ok(declarations)
}

/// As [`parse_compose`], but entry problems are returned beside the entries
/// that are fine, so that a caller can go on and report everything at once.
pub(crate) fn parse_collecting(
    text: &str,
    path: &Path,
) -> Result<(Declarations, Vec<Error>), Error> {
    let Some(top) = top_level(text, path)? else {
        return Ok((Declarations::default(), Vec::new()));
    };
    let top = &top;
    let mut out = Declarations::default();
    let mut errors = Vec::new();
    for kind in [Kind::Config, Kind::Secret] {
        let Some(section) = top.get(kind.section()) else {
            continue;
        };
        let mut section = untag(section).clone();
        let entries = match &mut section {
            Value::Null => continue,
            Value::Mapping(m) => m,
            other => {
                return Err(Error::Layout {
                    path: path.to_path_buf(),
                    message: format!(
                        "top-level `{}:` must be a mapping, found {}",
                        kind.section(),
                        describe(other)
                    ),
                });
            }
        };
        apply_merge(entries).map_err(|e| Error::Layout {
            path: path.to_path_buf(),
            message: format!(
                "top-level `{}:`: cannot apply `<<:` merge key: {e}",
                kind.section()
            ),
        })?;
        for (key, value) in entries.iter() {
            let key = match untag(key) {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => {
                    return Err(Error::Layout {
                        path: path.to_path_buf(),
                        message: format!(
                            "a key under top-level `{}:` must be a string, found {}",
                            kind.section(),
                            describe(other)
                        ),
                    });
                }
            };
            let entry = EntryId::new(kind, key);
            match read_entry(&entry, value) {
                Ok(Some(Ok(d))) => out.declared.push(d),
                Ok(Some(Err(reason))) => {
                    let name =
                        (reason == SkipReason::External).then(|| external_name(&entry, value));
                    out.skipped.push(Skipped {
                        entry,
                        reason,
                        name,
                    });
                }
                Ok(None) => {}
                Err(problem) => errors.push(Error::entry(path, &entry, problem)),
            }
        }
    }
    Ok((out, errors))
}

/// The document's top-level mapping, or None for an empty document.
pub(crate) fn top_level(text: &str, path: &Path) -> Result<Option<Mapping>, Error> {
    let doc: Value = yaml_serde::from_str(text).map_err(|e| Error::Syntax {
        path: path.to_path_buf(),
        location: e.location().map(|l| (l.line(), l.column())),
        message: e.to_string(),
    })?;
    match untag(&doc) {
        Value::Null => Ok(None),
        Value::Mapping(m) => Ok(Some(m.clone())),
        other => Err(Error::Layout {
            path: path.to_path_buf(),
            message: format!(
                "the top level must be a mapping (services:, configs:, ...), found {}",
                describe(other)
            ),
        }),
    }
}

type EntryOutcome = Option<Result<Declared, SkipReason>>;

/// The object an external entry refers to (see [`Skipped::name`]).
fn external_name(entry: &EntryId, value: &Value) -> String {
    let map = untag(value).as_mapping();
    let text = |v: Option<&Value>| match v.map(untag) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    map.and_then(|m| text(m.get("name")))
        .or_else(|| {
            map.and_then(|m| m.get("external"))
                .map(untag)
                .and_then(Value::as_mapping)
                .and_then(|ext| text(ext.get("name")))
        })
        .unwrap_or_else(|| entry.key.clone())
}

fn read_entry(entry: &EntryId, value: &Value) -> Result<EntryOutcome, Problem> {
    let mut value = untag(value).clone();
    let map = match &mut value {
        Value::Null => {
            return Ok(Some(Err(SkipReason::NoFile { uses: None })));
        }
        Value::Mapping(m) => m,
        other => {
            return Err(Problem::NotAMapping {
                found: describe(other),
            });
        }
    };
    apply_merge(map).map_err(Problem::Merge)?;

    match map.get("external").map(untag) {
        None | Some(Value::Null | Value::Bool(false)) => {}
        Some(Value::Bool(true) | Value::Mapping(_)) => {
            return Ok(Some(Err(SkipReason::External)));
        }
        Some(other) => {
            return Err(Problem::FieldType {
                field: "external",
                expected: "true or false",
                found: describe(other),
            });
        }
    }

    let file = match map.get("file").map(untag) {
        None | Some(Value::Null) => {
            let uses = ["content", "environment"]
                .into_iter()
                .find(|k| map.contains_key(*k));
            return Ok(Some(Err(SkipReason::NoFile { uses })));
        }
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) => {
            return Err(Problem::FieldType {
                field: "file",
                expected: "a non-empty path",
                found: "an empty string",
            });
        }
        Some(other) => {
            return Err(Problem::FieldType {
                field: "file",
                expected: "a path",
                found: describe(other),
            });
        }
    };

    let raw_name = match map.get("name").map(untag) {
        None | Some(Value::Null) => return Err(Problem::MissingName),
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(Problem::NameNotVariable {
                name: scalar_text(other),
                reason: crate::interpolate::InterpolationError::NotBraced,
            });
        }
    };
    let name = parse_name(&raw_name).map_err(|reason| Problem::NameNotVariable {
        name: raw_name.clone(),
        reason,
    })?;
    Ok(Some(Ok(Declared {
        entry: entry.clone(),
        name,
        file,
    })))
}

/// Applies `<<:` merge keys; repeated because a merged-in mapping may carry its
/// own `<<:`. Bounded: aliases cannot form cycles in a parsed document, and 16
/// levels of merge chains are far beyond any real compose file.
pub(crate) fn apply_merge(map: &mut Mapping) -> Result<(), String> {
    for _ in 0..16 {
        if !contains_merge_key(map) {
            return Ok(());
        }
        let mut v = Value::Mapping(std::mem::take(map));
        let result = v.apply_merge();
        if let Value::Mapping(m) = v {
            *map = m;
        }
        result.map_err(|e| e.to_string())?;
    }
    if contains_merge_key(map) {
        Err("merge keys nested more than 16 levels deep".to_owned())
    } else {
        Ok(())
    }
}

fn contains_merge_key(map: &Mapping) -> bool {
    map.iter().any(|(k, v)| {
        k.as_str() == Some("<<")
            || match untag(v) {
                Value::Mapping(m) => contains_merge_key(m),
                _ => false,
            }
    })
}

pub(crate) fn untag(v: &Value) -> &Value {
    let mut v = v;
    while let Value::Tagged(t) = v {
        v = &t.value;
    }
    v
}

pub(crate) fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

pub(crate) fn scalar_text(v: &Value) -> String {
    match v {
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => describe(other).to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interpolate::Fallback;

    fn parse(text: &str) -> Result<Declarations, Error> {
        parse_compose(text, Path::new("compose.yaml"))
    }

    #[test]
    fn empty_document_declares_nothing() {
        assert_eq!(parse("").unwrap(), Declarations::default());
        assert_eq!(
            parse("# only a comment\n").unwrap(),
            Declarations::default()
        );
        assert_eq!(
            parse("services: {}\nconfigs:\nsecrets:\n").unwrap(),
            Declarations::default()
        );
    }

    #[test]
    fn reads_configs_then_secrets_in_file_order() {
        let d = parse(
            "secrets:\n  tls:\n    name: ${TLS}\n    file: tls.pem\n\
             configs:\n  b:\n    name: ${B:-b_default}\n    file: b.toml\n  a:\n    name: ${A-x}\n    file: /abs/a.toml\n",
        )
        .unwrap();
        let got: Vec<_> = d
            .declared
            .iter()
            .map(|d| {
                (
                    d.entry.to_string(),
                    d.name.variable.as_str(),
                    d.file.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("config `b`".to_owned(), "B", "b.toml"),
                ("config `a`".to_owned(), "A", "/abs/a.toml"),
                ("secret `tls`".to_owned(), "TLS", "tls.pem"),
            ]
        );
        assert_eq!(
            d.declared[0].name.fallback,
            Fallback::IfUnsetOrEmpty("b_default".into())
        );
    }

    #[test]
    fn skips_external_and_fileless() {
        let d = parse(
            "configs:\n  ext:\n    external: true\n  old_ext:\n    external:\n      name: x\n  env:\n    name: ${E}\n    environment: E\n  inline:\n    content: hi\n  bare:\n  nofile:\n    name: ${N}\n  not_ext:\n    external: false\n    name: ${NE}\n    file: f\n",
        )
        .unwrap();
        let skipped: Vec<_> = d
            .skipped
            .iter()
            .map(|s| (s.entry.key.as_str(), s.reason.to_string()))
            .collect();
        assert_eq!(
            skipped,
            [
                ("ext", "external".to_owned()),
                ("old_ext", "external".to_owned()),
                ("env", "no file: (uses environment:)".to_owned()),
                ("inline", "no file: (uses content:)".to_owned()),
                ("bare", "no file:".to_owned()),
                ("nofile", "no file:".to_owned()),
            ]
        );
        assert_eq!(d.declared.len(), 1);
        assert_eq!(d.declared[0].name.variable, "NE");
    }

    #[test]
    fn external_entries_name_what_they_refer_to() {
        let d = parse(
            "secrets:
  by_key:
    external: true
  named:
    external: true
    name: ${DB_SECRET}
  old_form:
    external:
      name: legacy-name
  unnamed:
    external: true
    name: ''
  with_file:
    name: ${F}
    file: f
  env:
    environment: E
",
        )
        .unwrap();
        let names: Vec<_> = d
            .skipped
            .iter()
            .map(|s| (s.entry.key.as_str(), s.name.as_deref()))
            .collect();
        assert_eq!(
            names,
            [
                ("by_key", Some("by_key")),
                ("named", Some("${DB_SECRET}")),
                ("old_form", Some("legacy-name")),
                ("unnamed", Some("unnamed")),
                ("env", None),
            ]
        );
    }

    #[test]
    fn anchors_and_merge_keys() {
        let text = "\
x-common: &common
  restart_policy: {condition: any}
x-cfg: &cfg
  file: ./shared.conf
services:
  web:
    <<: *common
    image: nginx
configs:
  one:
    <<: *cfg
    name: ${ONE}
  two:
    <<: [*cfg]
    name: ${TWO}
    file: ./own.conf
";
        let d = parse(text).unwrap();
        let files: Vec<_> = d.declared.iter().map(|d| d.file.as_str()).collect();
        assert_eq!(files, ["./shared.conf", "./own.conf"]);
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let err = parse("configs:\n  a:\n    name: ${A}\n   file: [\n").unwrap_err();
        match &err {
            Error::Syntax { location, .. } => {
                let (line, col) = location.expect("location");
                assert!(line >= 3, "line {line}");
                assert!(col >= 1);
            }
            other => panic!("unexpected {other:?}"),
        }
        let msg = err.to_string();
        assert!(
            msg.starts_with("compose.yaml: YAML syntax error at line "),
            "{msg}"
        );
    }

    #[test]
    fn layout_errors() {
        for (text, needle) in [
            ("- a\n- b\n", "the top level must be a mapping"),
            (
                "configs: [a, b]\n",
                "top-level `configs:` must be a mapping",
            ),
            ("secrets: 3\n", "top-level `secrets:` must be a mapping"),
            ("configs:\n  [a]: {file: x}\n", "must be a string"),
        ] {
            let msg = parse(text).unwrap_err().to_string();
            assert!(msg.contains(needle), "{text:?}: {msg}");
            assert!(msg.starts_with("compose.yaml: "), "{msg}");
        }
    }

    #[test]
    fn entry_errors_are_collected() {
        let err = parse(
            "configs:\n  a:\n    name: literal\n    file: a\n  b:\n    file: b\n  c: 3\n  d:\n    name: ${D}\n    file: 7\n  e:\n    name: 5\n    file: e\n  f:\n    external: yes\n  g:\n    name: ${G}\n    file: ''\n",
        )
        .unwrap_err();
        let problems: Vec<String> = err
            .problems()
            .iter()
            .map(|(e, p)| format!("{e}: {p}"))
            .collect();
        assert_eq!(problems.len(), 7, "{problems:#?}");
        assert!(problems[0].starts_with("config `a`: name `literal` is not a variable"));
        assert!(problems[1].starts_with("config `b`: has `file:` but no `name:`"));
        assert!(problems[2].contains("found a number"));
        assert!(problems[3].contains("`file:` must be a path, found a number"));
        assert!(problems[4].contains("name `5` is not a variable"));
        assert!(problems[5].contains("`external:` must be true or false, found a string"));
        assert!(problems[6].contains("`file:` must be a non-empty path"));
        let msg = err.to_string();
        assert!(msg.starts_with("7 problems in compose.yaml:\n  - compose.yaml: config `a`"));
    }

    #[test]
    fn tags_are_looked_through() {
        let d = parse("configs:\n  a: !override\n    name: !!str ${A}\n    file: a\n").unwrap();
        assert_eq!(d.declared[0].name.variable, "A");
    }
}
