//! The ACME account: registered once per directory, its credentials (the account key) kept in a
//! file of mode 0600 that is written whole or not at all, and loaded from there afterwards.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use instant_acme::{AccountCredentials, HttpClient, NewAccount};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::error::AcmeError;
use super::http::{Transport, https_client};

/// Let's Encrypt's production directory: the default.
pub const LETS_ENCRYPT_PRODUCTION: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory: real validation, untrusted certificates, high limits.
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// Where the CA is and how to talk to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcmeServer {
    /// The directory URL (RFC 8555 section 7.1.1).
    pub directory_url: String,
    /// PEM of root certificate(s) the ACME server's own TLS certificate chains to, trusted
    /// besides the system's roots (a private CA such as Pebble's).
    pub extra_root_pem: Option<String>,
    /// Deadline of each HTTP request to the server.
    pub request_timeout: Duration,
}

impl AcmeServer {
    /// The directory at `directory_url`, through the system's roots.
    pub fn new(directory_url: impl Into<String>) -> Self {
        AcmeServer {
            directory_url: directory_url.into(),
            extra_root_pem: None,
            request_timeout: Duration::from_secs(30),
        }
    }

    /// Trusts `pem` for the ACME server's TLS, besides the system's roots.
    pub fn with_extra_root(mut self, pem: impl Into<String>) -> Self {
        self.extra_root_pem = Some(pem.into());
        self
    }
}

impl Default for AcmeServer {
    fn default() -> Self {
        AcmeServer::new(LETS_ENCRYPT_PRODUCTION)
    }
}

/// Whether [`Account::open`] registered the account or found its file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opened {
    /// Registered just now; the credentials file was written.
    Created,
    /// Loaded from the credentials file; nothing was registered.
    Loaded,
}

/// An account on one ACME directory, ready to order certificates.
#[derive(Clone)]
pub struct Account {
    pub(crate) inner: instant_acme::Account,
    directory_url: String,
    credentials: PathBuf,
}

impl fmt::Debug for Account {
    // The account URL and the file's path only: the key stays out of every message.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Account")
            .field("directory_url", &self.directory_url)
            .field("id", &self.inner.id())
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

/// Gives `path` to the owner of its directory when they differ: a file written by root (a
/// command run with sudo) in the deploy user's `secrets/` stays readable by the deploy user,
/// who runs the timer and the pipeline's deploys. Unchanged when they are the same.
pub(crate) fn owned_like_its_directory(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let (d, f) = (fs::metadata(dir)?, fs::metadata(path)?);
    if (d.uid(), d.gid()) == (f.uid(), f.gid()) {
        return Ok(());
    }
    std::os::unix::fs::chown(path, Some(d.uid()), Some(d.gid()))
}

/// The credentials file's content.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    /// The directory the account belongs to, checked against the one asked for.
    directory_url: String,
    credentials: AccountCredentials,
}

impl Account {
    /// The account whose credentials are in the file `credentials`, or, when there is no such
    /// file, a new account on `server` (agreeing to the CA's terms of service, with `contact`
    /// URLs such as `mailto:ops@example.org`) whose credentials are then written there.
    ///
    /// A file that exists is never replaced: one that cannot be read, or that belongs to another
    /// directory, is an error.
    pub async fn open(
        server: &AcmeServer,
        credentials: &Path,
        contact: &[&str],
    ) -> Result<(Account, Opened), AcmeError> {
        let http = https_client(server.extra_root_pem.as_deref())?;
        Self::open_with(
            Box::new(Transport::new(http, server.request_timeout)),
            &server.directory_url,
            credentials,
            contact,
        )
        .await
    }

    pub(crate) async fn open_with(
        http: Box<dyn HttpClient>,
        directory_url: &str,
        credentials: &Path,
        contact: &[&str],
    ) -> Result<(Account, Opened), AcmeError> {
        match read_stored(credentials)? {
            Some(stored) => {
                if stored.directory_url != directory_url {
                    return Err(AcmeError::AccountFile {
                        path: credentials.to_path_buf(),
                        reason: format!(
                            "the account is on {}, not on {directory_url}",
                            stored.directory_url
                        ),
                    });
                }
                let inner = instant_acme::Account::builder_with_http(http)
                    .from_credentials(stored.credentials)
                    .await
                    .map_err(|e| {
                        AcmeError::from_acme(format!("loading the directory {directory_url}"), e)
                    })?;
                Ok((
                    Account {
                        inner,
                        directory_url: directory_url.to_string(),
                        credentials: credentials.to_path_buf(),
                    },
                    Opened::Loaded,
                ))
            }
            None => {
                // Made before registering, so that an unwritable place fails before the CA
                // has an account nobody can use.
                let file = PendingFile::beside(credentials)?;
                let (inner, new_credentials) = instant_acme::Account::builder_with_http(http)
                    .create(
                        &NewAccount {
                            contact,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        directory_url.to_string(),
                        None,
                    )
                    .await
                    .map_err(|e| {
                        AcmeError::from_acme(
                            format!("registering an account on {directory_url}"),
                            e,
                        )
                    })?;
                let stored = Stored {
                    directory_url: directory_url.to_string(),
                    credentials: new_credentials,
                };
                let json = Zeroizing::new(serde_json::to_vec_pretty(&stored).map_err(|e| {
                    AcmeError::AccountFile {
                        path: credentials.to_path_buf(),
                        reason: format!("cannot encode the credentials: {}", e.classify_name()),
                    }
                })?);
                file.persist(&json)?;
                Ok((
                    Account {
                        inner,
                        directory_url: directory_url.to_string(),
                        credentials: credentials.to_path_buf(),
                    },
                    Opened::Created,
                ))
            }
        }
    }

    /// The account's URL on the CA (its identity there; not a secret).
    pub fn id(&self) -> &str {
        self.inner.id()
    }

    /// The directory the account is on.
    pub fn directory_url(&self) -> &str {
        &self.directory_url
    }

    /// The file that holds the credentials.
    pub fn credentials_path(&self) -> &Path {
        &self.credentials
    }
}

/// The stored account, or `None` when there is no file.
fn read_stored(path: &Path) -> Result<Option<Stored>, AcmeError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => Zeroizing::new(bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(AcmeError::Io {
                context: "reading",
                path: path.to_path_buf(),
                source,
            });
        }
    };
    // serde's messages can quote the text they choke on: only the place is reported.
    serde_json::from_slice::<Stored>(&bytes)
        .map(Some)
        .map_err(|e| AcmeError::AccountFile {
            path: path.to_path_buf(),
            reason: format!(
                "not a stored account ({} at line {}, column {})",
                e.classify_name(),
                e.line(),
                e.column()
            ),
        })
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "read error",
            serde_json::error::Category::Syntax => "invalid JSON",
            serde_json::error::Category::Data => "unexpected content",
            serde_json::error::Category::Eof => "truncated JSON",
        }
    }
}

/// A file of mode 0600 beside its destination, renamed onto it once complete; removed if it
/// never is.
pub(crate) struct PendingFile {
    temp: PathBuf,
    dest: PathBuf,
    file: Option<File>,
}

impl PendingFile {
    pub(crate) fn beside(dest: &Path) -> Result<PendingFile, AcmeError> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let io_err = |context, source| AcmeError::Io {
            context,
            path: dest.to_path_buf(),
            source,
        };
        let name = dest
            .file_name()
            .ok_or_else(|| io_err("naming", io::Error::other("the path has no file name")))?;
        let temp = dest.with_file_name(format!(
            ".{}.{}.{}.tmp",
            name.to_string_lossy(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .map_err(|e| io_err("creating a file beside it", e))?;
        let pending = PendingFile {
            temp,
            dest: dest.to_path_buf(),
            file: Some(file),
        };
        // The umask can only take bits away; set the mode exactly all the same.
        fs::set_permissions(&pending.temp, fs::Permissions::from_mode(0o600))
            .map_err(|e| io_err("setting mode 0600", e))?;
        Ok(pending)
    }

    /// Writes `contents`, flushes it to disk and renames the file onto its destination.
    pub(crate) fn persist(mut self, contents: &[u8]) -> Result<(), AcmeError> {
        let dest = self.dest.clone();
        let io_err = |context, source| AcmeError::Io {
            context,
            path: dest.clone(),
            source,
        };
        let mut file = self.file.take().expect("a pending file is persisted once");
        file.write_all(contents)
            .and_then(|()| file.sync_all())
            .map_err(|e| io_err("writing", e))?;
        owned_like_its_directory(&self.temp)
            .map_err(|e| io_err("giving to the directory's owner", e))?;
        drop(file);
        fs::rename(&self.temp, &self.dest).map_err(|e| io_err("renaming into place", e))?;
        // The rename is durable once the directory is on disk too.
        if let Some(dir) = self.dest.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io_err("syncing its directory", e))?;
        }
        self.temp = PathBuf::new();
        Ok(())
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.temp.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_given_to_its_directory_s_owner() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        // As root (how CI runs), the directory belongs to someone else, as the deploy user's
        // secrets/ does when an operator uses sudo; otherwise both are the caller's.
        let me = fs::metadata(dir.path()).unwrap().uid();
        if me == 0 {
            std::os::unix::fs::chown(dir.path(), Some(54321), Some(54322)).unwrap();
        }
        let file = dir.path().join("f");
        fs::write(&file, "x").unwrap();
        owned_like_its_directory(&file).unwrap();
        let (d, f) = (
            fs::metadata(dir.path()).unwrap(),
            fs::metadata(&file).unwrap(),
        );
        assert_eq!((f.uid(), f.gid()), (d.uid(), d.gid()));
        assert_eq!(fs::read_to_string(&file).unwrap(), "x");
        assert!(owned_like_its_directory(&dir.path().join("missing")).is_err());
        // A bare file name is in the working directory (the package's, under cargo test).
        owned_like_its_directory(Path::new("Cargo.toml")).unwrap();
    }

    use crate::acme::fake::{DIR, FakeCa, fake_account};

    fn leftovers(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect()
    }

    #[tokio::test]
    async fn a_new_account_is_registered_once_and_kept_in_a_0600_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acct.json");
        let ca = FakeCa::default();
        let (account, opened) = Account::open_with(
            Box::new(ca.clone()),
            DIR,
            &path,
            &["mailto:ops@example.org"],
        )
        .await
        .unwrap();
        assert_eq!(opened, Opened::Created);
        assert_eq!(account.id(), "https://ca.test/acct/42");
        assert_eq!(account.directory_url(), DIR);
        assert_eq!(ca.registrations(), 1);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(
            leftovers(dir.path()).is_empty(),
            "{:?}",
            leftovers(dir.path())
        );
        let stored: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(stored["directory_url"], DIR);
        assert_eq!(stored["credentials"]["id"], "https://ca.test/acct/42");
    }

    #[tokio::test]
    async fn an_existing_file_is_loaded_without_registering() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acct.json");
        Account::open_with(Box::new(FakeCa::default()), DIR, &path, &[])
            .await
            .unwrap();
        let before = fs::read(&path).unwrap();

        let ca = FakeCa::default();
        let (account, opened) = Account::open_with(Box::new(ca.clone()), DIR, &path, &[])
            .await
            .unwrap();
        assert_eq!(opened, Opened::Loaded);
        assert_eq!(account.id(), "https://ca.test/acct/42");
        assert_eq!(ca.registrations(), 0, "{:?}", ca.requests.lock().unwrap());
        assert_eq!(fs::read(&path).unwrap(), before);
    }

    #[tokio::test]
    async fn a_file_of_another_directory_is_refused_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acct.json");
        Account::open_with(Box::new(FakeCa::default()), DIR, &path, &[])
            .await
            .unwrap();
        let before = fs::read(&path).unwrap();
        let ca = FakeCa::default();
        let err = Account::open_with(Box::new(ca.clone()), "https://other.test/dir", &path, &[])
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("the account is on https://ca.test/dir, not on https://other.test/dir"),
            "{err}"
        );
        assert!(ca.requests.lock().unwrap().is_empty());
        assert_eq!(fs::read(&path).unwrap(), before);
    }

    #[tokio::test]
    async fn an_unreadable_file_is_an_error_that_does_not_quote_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acct.json");
        let secret = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg";
        fs::write(
            &path,
            // serde_json would quote an unknown field's name in its message.
            format!(r#"{{"directory_url":"{DIR}","{secret}":1}}"#),
        )
        .unwrap();
        let ca = FakeCa::default();
        let err = Account::open_with(Box::new(ca.clone()), DIR, &path, &[])
            .await
            .unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, AcmeError::AccountFile { .. }), "{err:?}");
        assert!(message.contains("not a stored account"), "{message}");
        assert!(!message.contains(secret), "{message}");
        assert!(!format!("{err:?}").contains(secret));
        assert_eq!(ca.registrations(), 0);
    }

    #[tokio::test]
    async fn a_broken_file_says_how_and_where_and_registers_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acct.json");
        for (text, why) in [
            (
                r#"{"directory_url": 7}"#,
                "unexpected content at line 1, column 19",
            ),
            (
                "{\n  \"directory_url\":",
                "truncated JSON at line 2, column 18",
            ),
            ("{\"directory_url\" x", "invalid JSON at line 1, column 18"),
        ] {
            fs::write(&path, text).unwrap();
            let ca = FakeCa::default();
            let err = Account::open_with(Box::new(ca.clone()), DIR, &path, &[])
                .await
                .unwrap_err();
            assert!(
                err.to_string()
                    .contains(&format!("not a stored account ({why})")),
                "{text}: {err}"
            );
            assert_eq!(ca.registrations(), 0);
        }
        // A place that cannot be read is not "no account yet": nothing is registered over it.
        fs::remove_file(&path).unwrap();
        fs::create_dir(&path).unwrap();
        let ca = FakeCa::default();
        let err = Account::open_with(Box::new(ca.clone()), DIR, &path, &[])
            .await
            .unwrap_err();
        assert!(matches!(err, AcmeError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("acct.json"), "{err}");
        assert!(ca.requests.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn debug_shows_no_key() {
        let dir = tempfile::tempdir().unwrap();
        let account = fake_account(&FakeCa::default(), dir.path()).await;
        let stored: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.path().join("acct.json")).unwrap()).unwrap();
        let key = stored["credentials"]["key_pkcs8"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(key.len() > 40);
        let debug = format!("{account:?}");
        assert!(debug.contains("https://ca.test/acct/42"), "{debug}");
        assert!(!debug.contains(&key[..20]), "{debug}");
    }

    #[tokio::test]
    async fn an_unwritable_place_fails_before_registering() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("acct.json");
        let ca = FakeCa::default();
        let err = Account::open_with(Box::new(ca.clone()), DIR, &path, &[])
            .await
            .unwrap_err();
        assert!(matches!(err, AcmeError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("missing/acct.json"), "{err}");
        assert_eq!(ca.registrations(), 0);
    }

    #[test]
    fn a_write_that_cannot_finish_leaves_the_old_file_and_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        // A directory at the destination: the rename onto it fails after the write.
        let dest = dir.path().join("acct.json");
        fs::create_dir(&dest).unwrap();
        fs::write(dest.join("inside"), b"old").unwrap();
        let pending = PendingFile::beside(&dest).unwrap();
        assert_eq!(leftovers(dir.path()).len(), 1);
        let err = pending.persist(b"new").unwrap_err();
        assert!(err.to_string().contains("renaming into place"), "{err}");
        assert!(leftovers(dir.path()).is_empty());
        assert_eq!(fs::read(dest.join("inside")).unwrap(), b"old");
    }

    #[test]
    fn a_write_replaces_the_file_whole_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("acct.json");
        fs::write(&dest, b"an older and longer content").unwrap();
        fs::set_permissions(&dest, fs::Permissions::from_mode(0o644)).unwrap();
        PendingFile::beside(&dest).unwrap().persist(b"new").unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"new");
        assert_eq!(
            fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn lets_encrypt_production_is_the_default() {
        assert_eq!(AcmeServer::default().directory_url, LETS_ENCRYPT_PRODUCTION);
        assert_eq!(
            LETS_ENCRYPT_PRODUCTION,
            instant_acme::LetsEncrypt::Production.url()
        );
        assert_eq!(
            LETS_ENCRYPT_STAGING,
            instant_acme::LetsEncrypt::Staging.url()
        );
    }
}
