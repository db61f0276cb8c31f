//! Names Docker Swarm configs and secrets after a hash of their content.
//!
//! Swarm configs and secrets are immutable, and a service is only rolled when
//! the *name* it mounts changes. A stack file therefore names each file-backed
//! config or secret from a variable:
//!
//! ```yaml
//! configs:
//!   backend-config:
//!     name: ${PROJECT_PROD_BACKEND_CONFIG}
//!     file: ./deploy-manifests/prod/backend/config.toml
//! ```
//!
//! and this crate computes the value of each such variable from the file's
//! content: `<variable lower-cased>_<first N hex of sha256(content)>`, always a
//! valid Swarm name (see [`name`]).
//!
//! ```no_run
//! use std::path::Path;
//! use config_hasher::{hash_compose_file, Options};
//!
//! let report = hash_compose_file(Path::new("docker-compose.prod.yaml"), &Options::default())?;
//! for (variable, name) in report.pairs() {
//!     println!("{variable}={name}");
//! }
//! # Ok::<(), config_hasher::Error>(())
//! ```
//!
//! Values already set in the environment for these variables are ignored on
//! purpose: the name is always computed from content, and the deploy exports
//! the computed value, so a stale variable can never pin an old name.

pub mod compose;
pub mod error;
pub mod interpolate;
pub mod name;
pub mod output;
pub mod services;

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

pub use compose::{Declarations, Declared, SkipReason, Skipped, parse_compose};
pub use error::{EntryId, Error, Kind, Problem};
pub use name::{DEFAULT_HASH_LEN, MAX_HASH_LEN, MIN_HASH_LEN, content_name, is_valid_swarm_name};
pub use output::{Format, render};

/// Swarm refuses a config of this many bytes or more (1000 KiB).
pub const MAX_CONFIG_BYTES: u64 = 1000 * 1024;
/// Swarm refuses a secret of this many bytes or more (500 KiB).
pub const MAX_SECRET_BYTES: u64 = 500 * 1024;

/// How names are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Hex digits of the SHA-256 kept in each name, in
    /// [`MIN_HASH_LEN`]`..=`[`MAX_HASH_LEN`]; [`DEFAULT_HASH_LEN`] by default.
    pub hash_len: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            hash_len: DEFAULT_HASH_LEN,
        }
    }
}

/// The two deploy environments and their conventional compose files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// `docker-compose.prod.yaml`
    Prod,
    /// `docker-compose.dev.yaml`
    Dev,
}

impl Profile {
    /// The compose file for this profile, relative to the working directory.
    #[must_use]
    pub fn compose_file(self) -> PathBuf {
        PathBuf::from(match self {
            Profile::Prod => "docker-compose.prod.yaml",
            Profile::Dev => "docker-compose.dev.yaml",
        })
    }
}

/// One entry that uses a computed name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Section and key.
    pub entry: EntryId,
    /// The file, joined to the compose file's directory.
    pub file: PathBuf,
}

/// The computed name of one variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentName {
    /// The variable in `name: ${...}`.
    pub variable: String,
    /// The value to export: a valid Swarm name.
    pub name: String,
    /// Full lower-case hex SHA-256 of the content.
    pub sha256: String,
    /// Content size in bytes.
    pub size: u64,
    /// The entries naming this variable (more than one when several entries
    /// share a variable and have identical content), in file order.
    pub sources: Vec<Source>,
}

/// The result for one compose file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The compose file, as given.
    pub compose: PathBuf,
    /// The hash length used.
    pub hash_len: usize,
    /// One name per variable, sorted by variable name (byte order), so the
    /// output does not depend on the order of entries in the file.
    pub names: Vec<ContentName>,
    /// Entries left alone, in file order.
    pub skipped: Vec<Skipped>,
}

impl Report {
    /// `(variable, name)` pairs in output order.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.names
            .iter()
            .map(|n| (n.variable.as_str(), n.name.as_str()))
    }

    /// The computed name for `variable`, if the compose file uses it.
    #[must_use]
    pub fn get(&self, variable: &str) -> Option<&str> {
        self.names
            .iter()
            .find(|n| n.variable == variable)
            .map(|n| n.name.as_str())
    }

    /// Whether no entry got a name.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// Reads a compose file and computes the names of all its file-backed configs
/// and secrets. `file:` paths are relative to the compose file's directory.
///
/// # Errors
/// Any [`Error`]; entry errors are all collected into one [`Error::Several`].
pub fn hash_compose_file(path: &Path, options: &Options) -> Result<Report, Error> {
    check_options(options)?;
    let text = read_compose(path)?;
    hash_compose_str(&text, path, options)
}

/// As [`hash_compose_file`], for compose text already in memory; `path` names
/// it in messages and its directory anchors relative `file:` paths.
///
/// # Errors
/// Any [`Error`].
pub fn hash_compose_str(text: &str, path: &Path, options: &Options) -> Result<Report, Error> {
    check_options(options)?;
    let (declarations, mut errors) = compose::parse_collecting(text, path)?;
    match hash_declarations(&declarations, path, options) {
        Ok(report) => Error::combine(path, errors).map(|()| report),
        Err(e) => {
            errors.extend(e.into_all());
            Err(Error::combine(path, errors).unwrap_err())
        }
    }
}

/// Hashes the files of already parsed declarations and builds the names.
///
/// # Errors
/// Any entry [`Error`]: unreadable, empty or oversize files, a variable used
/// for different content, a name that cannot be made valid.
pub fn hash_declarations(
    declarations: &Declarations,
    path: &Path,
    options: &Options,
) -> Result<Report, Error> {
    check_options(options)?;
    let base = path.parent().unwrap_or(Path::new(""));
    let mut errors = Vec::new();
    let mut names: BTreeMap<String, ContentName> = BTreeMap::new();
    for declared in &declarations.declared {
        let entry = &declared.entry;
        let file = base.join(&declared.file);
        let content = match read_content(entry.kind, &file) {
            Ok(c) => c,
            Err(problem) => {
                errors.push(Error::entry(path, entry, problem));
                continue;
            }
        };
        let variable = &declared.name.variable;
        let sha256 = name::sha256_hex(&content);
        let source = Source {
            entry: entry.clone(),
            file,
        };
        if let Some(existing) = names.get_mut(variable) {
            if existing.sha256 == sha256 {
                existing.sources.push(source);
            } else {
                let first = &existing.sources[0];
                errors.push(Error::entry(
                    path,
                    entry,
                    Problem::DuplicateVariable {
                        variable: variable.clone(),
                        other: first.entry.clone(),
                        other_file: first.file.clone(),
                    },
                ));
            }
            continue;
        }
        let name = match name::swarm_name(variable, &sha256, options.hash_len) {
            Ok(n) => n,
            Err(reason) => {
                errors.push(Error::entry(
                    path,
                    entry,
                    Problem::InvalidName {
                        variable: variable.clone(),
                        reason,
                    },
                ));
                continue;
            }
        };
        names.insert(
            variable.clone(),
            ContentName {
                variable: variable.clone(),
                name,
                sha256,
                size: content.len() as u64,
                sources: vec![source],
            },
        );
    }
    Error::combine(path, errors)?;
    Ok(Report {
        compose: path.to_path_buf(),
        hash_len: options.hash_len,
        names: names.into_values().collect(),
        skipped: declarations.skipped.clone(),
    })
}

fn check_options(options: &Options) -> Result<(), Error> {
    name::check_hash_len(options.hash_len).map_err(|_| Error::HashLen(options.hash_len))
}

fn read_compose(path: &Path) -> Result<String, Error> {
    let fail = |reason: String| Error::ComposeFile {
        path: path.to_path_buf(),
        reason,
    };
    match fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(fail("does not exist".to_owned()));
        }
        Err(e) => return Err(fail(format!("cannot be read: {e}"))),
        Ok(m) if m.is_dir() => return Err(fail("is a directory, not a file".to_owned())),
        Ok(_) => {}
    }
    let bytes = fs::read(path).map_err(|e| fail(format!("cannot be read: {e}")))?;
    String::from_utf8(bytes).map_err(|e| {
        fail(format!(
            "is not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

/// Reads the content of a config or secret file, enforcing Swarm's rules:
/// a regular file, not empty, and below [`Kind::size_limit`].
///
/// # Errors
/// [`Problem::FileMissing`], [`Problem::NotAFile`], [`Problem::FileUnreadable`],
/// [`Problem::FileEmpty`] or [`Problem::FileTooLarge`].
pub fn read_content(kind: Kind, file: &Path) -> Result<Vec<u8>, Problem> {
    let unreadable = |e: io::Error| Problem::FileUnreadable {
        path: file.to_path_buf(),
        reason: e.to_string(),
    };
    let meta = match fs::metadata(file) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(Problem::FileMissing {
                path: file.to_path_buf(),
            });
        }
        Err(e) => return Err(unreadable(e)),
        Ok(m) => m,
    };
    if !meta.is_file() {
        return Err(Problem::NotAFile {
            path: file.to_path_buf(),
            what: if meta.is_dir() {
                "a directory"
            } else {
                "a special file"
            },
        });
    }
    let limit = kind.size_limit();
    let too_large = |size: u64| Problem::FileTooLarge {
        path: file.to_path_buf(),
        kind,
        size,
        limit,
    };
    if meta.len() >= limit {
        return Err(too_large(meta.len()));
    }
    // Read at most `limit` bytes, so a file that grows meanwhile is still caught.
    let mut content = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    fs::File::open(file)
        .and_then(|f| f.take(limit).read_to_end(&mut content))
        .map_err(unreadable)?;
    let size = content.len() as u64;
    if size >= limit {
        return Err(too_large(size));
    }
    if content.is_empty() {
        return Err(Problem::FileEmpty {
            path: file.to_path_buf(),
            kind,
        });
    }
    Ok(content)
}
