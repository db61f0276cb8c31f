//! Typed errors: every one names the compose file, and where it applies the entry and the cause.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::interpolate::InterpolationError;
use crate::name::{MAX_HASH_LEN, MIN_HASH_LEN, NameError};

/// Which top-level section of the compose file an entry comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// An entry under top-level `configs:`.
    Config,
    /// An entry under top-level `secrets:`.
    Secret,
}

impl Kind {
    /// The word used in messages and JSON output: `config` or `secret`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Config => "config",
            Kind::Secret => "secret",
        }
    }

    /// The top-level compose key for this kind: `configs` or `secrets`.
    #[must_use]
    pub fn section(self) -> &'static str {
        match self {
            Kind::Config => "configs",
            Kind::Secret => "secrets",
        }
    }

    /// Swarm's size limit for this kind: data must be shorter than this many bytes.
    ///
    /// Swarm rejects a config of 1000 KiB or more and a secret of 500 KiB or more.
    #[must_use]
    pub fn size_limit(self) -> u64 {
        match self {
            Kind::Config => crate::MAX_CONFIG_BYTES,
            Kind::Secret => crate::MAX_SECRET_BYTES,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One top-level entry: its kind and its key, e.g. config `backend-config`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryId {
    /// `configs:` or `secrets:`.
    pub kind: Kind,
    /// The key under the section, e.g. `backend-config`.
    pub key: String,
}

impl EntryId {
    /// Builds an entry id.
    #[must_use]
    pub fn new(kind: Kind, key: impl Into<String>) -> Self {
        Self {
            kind,
            key: key.into(),
        }
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} `{}`", self.kind, self.key)
    }
}

/// What is wrong with one entry.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    /// The entry is not a mapping (e.g. `configs: {a: 3}`).
    #[error("expected a mapping with `file:` and `name:`, found {found}")]
    NotAMapping {
        /// What was found instead, e.g. `a number`.
        found: &'static str,
    },
    /// A field has the wrong type.
    #[error("`{field}:` must be {expected}, found {found}")]
    FieldType {
        /// The field, e.g. `file`.
        field: &'static str,
        /// What it must be.
        expected: &'static str,
        /// What was found.
        found: &'static str,
    },
    /// A `<<:` merge key in the entry could not be applied.
    #[error("cannot apply `<<:` merge key: {0}")]
    Merge(String),
    /// The entry has `file:` but no `name:`, so Swarm would keep the old content forever.
    #[error(
        "has `file:` but no `name:`; give it `name: ${{SOME_VAR}}` so that a content change rolls the services"
    )]
    MissingName,
    /// `name:` is not one of the supported variable forms.
    #[error("name `{name}` is not a variable: {reason}")]
    NameNotVariable {
        /// The `name:` as written.
        name: String,
        /// Why it was refused.
        reason: InterpolationError,
    },
    /// The file named by `file:` does not exist.
    #[error("file {} does not exist", path.display())]
    FileMissing {
        /// The path, relative to the working directory or absolute.
        path: PathBuf,
    },
    /// The path named by `file:` is a directory or another non-regular file.
    #[error("file {} is {what}, not a regular file", path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
        /// What it is instead, e.g. `a directory`.
        what: &'static str,
    },
    /// The file exists but cannot be read.
    #[error("cannot read file {}: {reason}", path.display())]
    FileUnreadable {
        /// The path.
        path: PathBuf,
        /// The operating system's reason.
        reason: String,
    },
    /// The file is empty; Swarm refuses empty configs and secrets.
    #[error("file {} is empty; Swarm refuses an empty {kind}", path.display())]
    FileEmpty {
        /// The path.
        path: PathBuf,
        /// Config or secret.
        kind: Kind,
    },
    /// The file is at or over Swarm's size limit.
    #[error(
        "file {} is {size} bytes; Swarm accepts a {kind} of less than {limit} bytes ({} KiB)",
        path.display(),
        limit / 1024
    )]
    FileTooLarge {
        /// The path.
        path: PathBuf,
        /// Config or secret.
        kind: Kind,
        /// The file's size in bytes.
        size: u64,
        /// The exclusive limit in bytes.
        limit: u64,
    },
    /// The same variable names two entries whose files differ.
    #[error(
        "variable {variable} is also the name of {other} ({}), whose content differs; one variable can carry only one name",
        other_file.display()
    )]
    DuplicateVariable {
        /// The variable.
        variable: String,
        /// The entry that used it first.
        other: EntryId,
        /// That entry's file.
        other_file: PathBuf,
    },
    /// No valid Swarm name can be built from the variable.
    #[error("cannot build a valid Swarm name from variable {variable}: {reason}")]
    InvalidName {
        /// The variable.
        variable: String,
        /// Why.
        reason: NameError,
    },
}

/// Everything that can go wrong while naming a compose file's configs and secrets.
///
/// The `Display` text is complete on its own (file, entry, cause) and is what the
/// binary prints; no information is kept only in `source()`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The compose file itself is missing, unreadable or not a file.
    #[error("compose file {}: {reason}", path.display())]
    ComposeFile {
        /// The compose file.
        path: PathBuf,
        /// Why it cannot be read.
        reason: String,
    },
    /// The compose file is not valid YAML, or cannot be loaded (several
    /// documents, an alias expansion beyond the parser's limits).
    #[error("{}: {}: {message}", path.display(), fmt_location(*location))]
    Syntax {
        /// The compose file.
        path: PathBuf,
        /// 1-based line and column, when the parser gives one.
        location: Option<(usize, usize)>,
        /// The parser's message.
        message: String,
    },
    /// The file is YAML but its top level or a section has the wrong shape.
    #[error("{}: {message}", path.display())]
    Layout {
        /// The compose file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// One entry is wrong.
    #[error("{}: {entry}: {problem}", path.display())]
    Entry {
        /// The compose file.
        path: PathBuf,
        /// The entry.
        entry: EntryId,
        /// What is wrong with it (boxed to keep `Result<_, Error>` small).
        problem: Box<Problem>,
    },
    /// Several entries are wrong; all are reported at once.
    #[error("{} problems in {}:\n{}", errors.len(), path.display(), fmt_list(errors))]
    Several {
        /// The compose file.
        path: PathBuf,
        /// One error per problem, each an [`Error::Entry`].
        errors: Vec<Error>,
    },
    /// The requested hash length is outside the accepted range.
    #[error("hash length {0} is outside {MIN_HASH_LEN}..={MAX_HASH_LEN}")]
    HashLen(usize),
}

impl Error {
    /// The individual errors: itself, or the members of [`Error::Several`].
    #[must_use]
    pub fn all(&self) -> Vec<&Error> {
        match self {
            Error::Several { errors, .. } => errors.iter().collect(),
            other => vec![other],
        }
    }

    /// The individual errors, owned: itself, or the members of [`Error::Several`].
    #[must_use]
    pub fn into_all(self) -> Vec<Error> {
        match self {
            Error::Several { errors, .. } => errors,
            other => vec![other],
        }
    }

    /// The entry-level problems, with their entries (empty for file-level errors).
    #[must_use]
    pub fn problems(&self) -> Vec<(&EntryId, &Problem)> {
        self.all()
            .into_iter()
            .filter_map(|e| match e {
                Error::Entry { entry, problem, .. } => Some((entry, &**problem)),
                _ => None,
            })
            .collect()
    }

    pub(crate) fn entry(path: &Path, entry: &EntryId, problem: Problem) -> Self {
        Error::Entry {
            path: path.to_path_buf(),
            entry: entry.clone(),
            problem: Box::new(problem),
        }
    }

    /// Combines entry errors: none → `Ok`, one → that error, more → [`Error::Several`].
    pub(crate) fn combine(path: &Path, mut errors: Vec<Error>) -> Result<(), Error> {
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(Error::Several {
                path: path.to_path_buf(),
                errors,
            }),
        }
    }
}

fn fmt_location(location: Option<(usize, usize)>) -> String {
    match location {
        Some((line, column)) => format!("YAML syntax error at line {line}, column {column}"),
        // Errors without a position: several documents, alias expansion limits.
        None => "cannot load YAML".to_owned(),
    }
}

fn fmt_list(errors: &[Error]) -> String {
    errors
        .iter()
        .map(|e| format!("  - {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}
