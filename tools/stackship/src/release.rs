//! Installing a release: the copy step's swap. A release is a directory the copy step (or the
//! deploy job's upload) assembled beside the environment's `current/` — the stack file, the
//! environment's manifests and this tool. Installing it, under the environment's deploy lock,
//! replaces `current/` whole: nothing of the old release survives, and a deploy that holds the
//! lock keeps its files until it ends.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::lock::DeployLock;

/// The secret source files a deploy job may upload with a release (the TLS pair); they
/// replace those in `<env dir>/secrets/`.
pub const UPLOADED_SECRETS: [&str; 2] = ["tls.crt", "tls.key"];

/// What a release directory must hold for environment `env` (or a review stack of it).
pub fn check(dir: &Path, env: &str, review: bool) -> Result<(), Error> {
    if !dir.is_dir() {
        return Err(Error::Refused(format!(
            "the release {} is not a directory",
            dir.display()
        )));
    }
    let stack_file = if review {
        "docker-compose.review.yaml".to_owned()
    } else {
        format!("docker-compose.{env}.yaml")
    };
    let missing: Vec<String> = [
        (stack_file.clone(), false),
        (format!("deploy-manifests/{env}"), true),
        ("stackship".to_owned(), false),
    ]
    .into_iter()
    .filter(|(p, is_dir)| {
        let path = dir.join(p);
        if *is_dir {
            !path.is_dir()
        } else {
            !path.is_file()
        }
    })
    .map(|(p, _)| p)
    .collect();
    if !missing.is_empty() {
        return Err(Error::Refused(format!(
            "{} is not a{} {env} release: {} missing (the copy step puts the stack file, deploy-manifests/{env}/ and stackship there)",
            dir.display(),
            if review { " review" } else { "" },
            missing.join(", ")
        )));
    }
    Ok(())
}

/// `from` must be inside the environment directory (one filesystem: the swap is a rename),
/// and neither `current/` nor the environment directory itself.
pub fn check_location(env_dir: &Path, from: &Path) -> Result<(), Error> {
    let canonical = |p: &Path| {
        fs::canonicalize(p).map_err(Error::io(format!("cannot resolve {}", p.display())))
    };
    let dir = canonical(env_dir)?;
    let from_c = canonical(from)?;
    let inside_a_release = ["current", "current.old"]
        .iter()
        .any(|r| from_c.starts_with(dir.join(r)));
    if from_c == dir || inside_a_release || !from_c.starts_with(&dir) {
        return Err(Error::Refused(format!(
            "the release {} must be a new directory inside {}, not current/ or current.old/ (the swap renames it to current/)",
            from.display(),
            env_dir.display()
        )));
    }
    Ok(())
}

/// Installs the uploaded secret source files from `upload` (only [`UPLOADED_SECRETS`], both
/// or none) into `<env_dir>/secrets/` (0700; files 0600, each replaced by a rename). Returns
/// the names installed. Checks everything before it changes anything.
pub fn install_secrets(
    upload: &Path,
    env_dir: &Path,
    _lock: &DeployLock,
) -> Result<Vec<String>, Error> {
    if !upload.is_dir() {
        return Ok(Vec::new());
    }
    let entries =
        fs::read_dir(upload).map_err(Error::io(format!("cannot list {}", upload.display())))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(Error::io(format!("cannot list {}", upload.display())))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !UPLOADED_SECRETS.contains(&name.as_str()) {
            return Err(Error::Refused(format!(
                "unexpected file '{name}' in the uploaded secrets {} (only {})",
                upload.display(),
                UPLOADED_SECRETS.join(" and ")
            )));
        }
        names.push(name);
    }
    if names.is_empty() {
        return Ok(names);
    }
    for name in UPLOADED_SECRETS {
        let f = upload.join(name);
        let size = fs::metadata(&f).map(|m| m.len()).unwrap_or(0);
        if size == 0 {
            return Err(Error::Refused(format!(
                "the upload {} has {} but no (or an empty) {name}: send both files of the pair",
                upload.display(),
                names.join(", ")
            )));
        }
    }
    let dir = env_dir.join("secrets");
    create_private_dir(&dir)?;
    for name in UPLOADED_SECRETS {
        let tmp = dir.join(format!(".{name}.new"));
        let content = fs::read(upload.join(name)).map_err(Error::io(format!(
            "cannot read {}",
            upload.join(name).display()
        )))?;
        write_private(&tmp, &content)?;
        fs::rename(&tmp, dir.join(name)).map_err(Error::io(format!(
            "cannot install {}",
            dir.join(name).display()
        )))?;
        // The upload's copy goes: it is not needed, and it is a private key.
        let _ = fs::remove_file(upload.join(name));
    }
    Ok(UPLOADED_SECRETS.iter().map(|s| (*s).to_owned()).collect())
}

fn create_private_dir(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !dir.is_dir() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(Error::io(format!("cannot create {}", dir.display())))?;
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(Error::io(format!("cannot make {} private", dir.display())))
}

fn write_private(path: &Path, content: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = fs::remove_file(path);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(Error::io(format!("cannot create {}", path.display())))?;
    f.write_all(content)
        .and_then(|()| f.sync_all())
        .map_err(Error::io(format!("cannot write {}", path.display())))
}

/// Replaces `<env_dir>/current` with `from` (checked with [`check`] and [`check_location`]
/// first) under the held lock: the old release is moved aside, the new one renamed in, the
/// old one removed. A failure before the rename leaves the old release in place.
pub fn swap(env_dir: &Path, from: &Path, _lock: &DeployLock) -> Result<PathBuf, Error> {
    move_in(env_dir, from)?;
    // The new release is in; a leftover old tree is removed by the next install.
    let _ = remove_tree(&env_dir.join("current.old"));
    Ok(env_dir.join("current"))
}

/// Moves `current/` aside to `current.old/` (when there is one: the result says) and renames
/// `from` to `current/`; a failed rename puts the old release back.
fn move_in(env_dir: &Path, from: &Path) -> Result<bool, Error> {
    let current = env_dir.join("current");
    let old = env_dir.join("current.old");
    remove_tree(&old)?;
    let had_current = match fs::symlink_metadata(&current) {
        Ok(_) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => {
            return Err(Error::io(format!("cannot inspect {}", current.display()))(
                e,
            ));
        }
    };
    if had_current {
        fs::rename(&current, &old).map_err(Error::io(format!(
            "cannot move {} aside",
            current.display()
        )))?;
    }
    if let Err(e) = fs::rename(from, &current) {
        if had_current {
            // Put the old release back: the environment keeps what it had.
            let _ = fs::rename(&old, &current);
        }
        return Err(Error::io(format!(
            "cannot rename {} to {}",
            from.display(),
            current.display()
        ))(e));
    }
    Ok(had_current)
}

/// An install not yet deployed: the previous release waits in `current.old/` and the previous
/// TLS pair in `secrets/.<name>.prev`. [`Pending::commit`] drops them once the deploy begins;
/// dropping the guard before that (a refusal, a failed pull, an error) puts them back, so a
/// release that was not deployed never stays installed.
#[derive(Debug)]
pub struct Pending {
    env_dir: PathBuf,
    had_release: bool,
    /// Whether the new release was renamed to `current/` (only then is there one to undo).
    swapped: bool,
    /// Live secret files and whether each had a previous version backed up.
    secrets: Vec<(PathBuf, bool)>,
    committed: bool,
}

fn prev_of(live: &Path) -> PathBuf {
    let name = live.file_name().unwrap_or_default().to_string_lossy();
    live.with_file_name(format!(".{name}.prev"))
}

impl Pending {
    /// The deploy begins: the previous release and TLS pair are not needed any more.
    pub fn commit(mut self) {
        self.committed = true;
        let _ = remove_tree(&self.env_dir.join("current.old"));
        for (live, had) in &self.secrets {
            if *had {
                let _ = fs::remove_file(prev_of(live));
            }
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        let current = self.env_dir.join("current");
        let old = self.env_dir.join("current.old");
        // A release that was not deployed does not stay installed (the first one neither).
        if self.swapped {
            let _ = remove_tree(&current);
        }
        if self.had_release {
            let _ = fs::rename(&old, &current);
        }
        for (live, had) in &self.secrets {
            if *had {
                let _ = fs::rename(prev_of(live), live);
            } else {
                let _ = fs::remove_file(live);
            }
        }
    }
}

/// Installs an upload under the held lock: the TLS pair from `secrets` (if any, see
/// [`install_secrets`]) and the release `from` as `current/` (checked with [`check_location`]),
/// keeping the previous ones until the returned guard is committed.
pub fn install(
    env_dir: &Path,
    from: &Path,
    secrets: Option<&Path>,
    lock: &DeployLock,
) -> Result<(Pending, Vec<String>), Error> {
    check_location(env_dir, from)?;
    let mut pending = Pending {
        env_dir: env_dir.to_owned(),
        had_release: false,
        swapped: false,
        secrets: Vec::new(),
        committed: false,
    };
    let mut names = Vec::new();
    if let Some(upload) = secrets {
        let dir = env_dir.join("secrets");
        // Back up the live pair first: a refusal puts it back.
        if uploaded_pair(upload)?.is_some() {
            for name in UPLOADED_SECRETS {
                let live = dir.join(name);
                let had = live.exists();
                if had {
                    fs::rename(&live, prev_of(&live))
                        .map_err(Error::io(format!("cannot keep {} aside", live.display())))?;
                }
                pending.secrets.push((live, had));
            }
        }
        names = install_secrets(upload, env_dir, lock)?;
    }
    pending.had_release = move_in(env_dir, from)?;
    pending.swapped = true;
    Ok((pending, names))
}

/// Whether `upload` holds secret files to install (checked as [`install_secrets`] does).
fn uploaded_pair(upload: &Path) -> Result<Option<()>, Error> {
    if !upload.is_dir() {
        return Ok(None);
    }
    let any = fs::read_dir(upload)
        .map_err(Error::io(format!("cannot list {}", upload.display())))?
        .next()
        .is_some();
    Ok(any.then_some(()))
}

fn remove_tree(path: &Path) -> Result<(), Error> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("cannot remove {}", path.display()))(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    fn release(root: &Path, name: &str, env: &str, marker: &str) -> PathBuf {
        let dir = root.join(name);
        fs::create_dir_all(dir.join(format!("deploy-manifests/{env}"))).unwrap();
        fs::write(dir.join(format!("docker-compose.{env}.yaml")), marker).unwrap();
        fs::write(dir.join("stackship"), "#!/bin/sh\n").unwrap();
        dir
    }

    fn lock(env_dir: &Path) -> DeployLock {
        DeployLock::acquire(env_dir, "test", "me", Duration::ZERO, &mut |_| {}).unwrap()
    }

    #[test]
    fn a_release_needs_its_stack_file_manifests_and_tool() {
        let root = tempfile::tempdir().unwrap();
        let dir = release(root.path(), "r", "prod", "x");
        check(&dir, "prod", false).unwrap();
        let e = check(&dir, "dev", false).unwrap_err().to_string();
        assert!(
            e.ends_with("is not a dev release: docker-compose.dev.yaml, deploy-manifests/dev missing (the copy step puts the stack file, deploy-manifests/dev/ and stackship there)"),
            "{e}"
        );
        let e = check(&dir, "prod", true).unwrap_err().to_string();
        assert!(
            e.contains("is not a review prod release: docker-compose.review.yaml missing"),
            "{e}"
        );
        fs::remove_file(dir.join("stackship")).unwrap();
        let e = check(&dir, "prod", false).unwrap_err().to_string();
        assert!(e.ends_with("stackship missing (the copy step puts the stack file, deploy-manifests/prod/ and stackship there)"), "{e}");
        let e = check(&root.path().join("none"), "prod", false).unwrap_err();
        assert!(e.to_string().ends_with("none is not a directory"), "{e}");
        // A file where the manifests directory should be is not one.
        let f = release(root.path(), "f", "dev", "x");
        fs::remove_dir_all(f.join("deploy-manifests/dev")).unwrap();
        fs::write(f.join("deploy-manifests/dev"), "").unwrap();
        assert!(
            check(&f, "dev", false)
                .unwrap_err()
                .to_string()
                .contains("deploy-manifests/dev missing")
        );
    }

    #[test]
    fn a_release_must_come_from_inside_the_environment_directory() {
        let root = tempfile::tempdir().unwrap();
        let env_dir = root.path().join("prod");
        fs::create_dir(&env_dir).unwrap();
        let inside = release(&env_dir, ".incoming.1", "prod", "x");
        check_location(&env_dir, &inside).unwrap();
        let outside = release(root.path(), "elsewhere", "prod", "x");
        for bad in [outside.as_path(), env_dir.as_path()] {
            let e = check_location(&env_dir, bad).unwrap_err().to_string();
            assert!(e.contains("must be a new directory inside"), "{e}");
        }
        fs::create_dir(env_dir.join("current")).unwrap();
        assert!(check_location(&env_dir, &env_dir.join("current")).is_err());
        assert!(
            check_location(&env_dir, &env_dir.join("missing"))
                .unwrap_err()
                .to_string()
                .starts_with("cannot resolve")
        );
    }

    #[test]
    fn the_swap_replaces_the_whole_release() {
        let root = tempfile::tempdir().unwrap();
        let env_dir = root.path().join("prod");
        fs::create_dir(&env_dir).unwrap();
        let held = lock(&env_dir);
        let first = release(&env_dir, ".incoming.1", "prod", "one");
        fs::write(first.join("stale-file"), "").unwrap();
        let current = swap(&env_dir, &first, &held).unwrap();
        assert_eq!(current, env_dir.join("current"));
        assert_eq!(
            fs::read_to_string(current.join("docker-compose.prod.yaml")).unwrap(),
            "one"
        );
        assert!(!first.exists());
        // A leftover from an interrupted install does not stop the next one.
        fs::create_dir(env_dir.join("current.old")).unwrap();
        let second = release(&env_dir, ".incoming.2", "prod", "two");
        swap(&env_dir, &second, &held).unwrap();
        assert_eq!(
            fs::read_to_string(current.join("docker-compose.prod.yaml")).unwrap(),
            "two"
        );
        assert!(
            !current.join("stale-file").exists(),
            "nothing of the old release survives"
        );
        assert!(!env_dir.join("current.old").exists());
        // A release that cannot be renamed in leaves the old one in place.
        let e = swap(&env_dir, &env_dir.join(".incoming.missing"), &held).unwrap_err();
        assert!(e.to_string().starts_with("cannot rename"), "{e}");
        assert_eq!(
            fs::read_to_string(current.join("docker-compose.prod.yaml")).unwrap(),
            "two"
        );
    }

    #[test]
    fn uploaded_secrets_are_the_tls_pair_and_private() {
        let root = tempfile::tempdir().unwrap();
        let env_dir = root.path().join("prod");
        let upload = root.path().join("upload");
        fs::create_dir_all(&env_dir).unwrap();
        let held = lock(&env_dir);
        // No upload directory, or an empty one: nothing to install.
        assert!(
            install_secrets(&upload, &env_dir, &held)
                .unwrap()
                .is_empty()
        );
        fs::create_dir(&upload).unwrap();
        assert!(
            install_secrets(&upload, &env_dir, &held)
                .unwrap()
                .is_empty()
        );
        assert!(!env_dir.join("secrets").exists());
        // One file of the pair is refused, and nothing is installed.
        fs::write(upload.join("tls.crt"), "CERT").unwrap();
        let e = install_secrets(&upload, &env_dir, &held)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("has tls.crt but no (or an empty) tls.key"),
            "{e}"
        );
        assert!(!env_dir.join("secrets").exists());
        fs::write(upload.join("tls.key"), "").unwrap();
        assert!(install_secrets(&upload, &env_dir, &held).is_err());
        // Anything else is refused.
        fs::write(upload.join("tls.key"), "KEY").unwrap();
        fs::write(upload.join("db_password"), "x").unwrap();
        let e = install_secrets(&upload, &env_dir, &held)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("unexpected file 'db_password' in the uploaded secrets"),
            "{e}"
        );
        assert!(e.ends_with("(only tls.crt and tls.key)"), "{e}");
        fs::remove_file(upload.join("db_password")).unwrap();
        // The pair replaces the old one, private, and leaves the upload.
        fs::create_dir(env_dir.join("secrets")).unwrap();
        fs::write(env_dir.join("secrets/tls.crt"), "OLD").unwrap();
        let names = install_secrets(&upload, &env_dir, &held).unwrap();
        assert_eq!(names, ["tls.crt", "tls.key"]);
        let secrets = env_dir.join("secrets");
        assert_eq!(fs::read_to_string(secrets.join("tls.crt")).unwrap(), "CERT");
        assert_eq!(fs::read_to_string(secrets.join("tls.key")).unwrap(), "KEY");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&secrets), 0o700);
        assert_eq!(mode(&secrets.join("tls.key")), 0o600);
        assert_eq!(mode(&secrets.join("tls.crt")), 0o600);
        assert!(!upload.join("tls.key").exists());
        assert!(!secrets.join(".tls.key.new").exists());
    }

    #[test]
    fn an_install_without_an_uploaded_pair_leaves_the_live_one_alone() {
        let root = tempfile::tempdir().unwrap();
        let env_dir = root.path().join("prod");
        let secrets = env_dir.join("secrets");
        fs::create_dir_all(&secrets).unwrap();
        fs::write(secrets.join("tls.crt"), "OLD").unwrap();
        fs::write(secrets.join("tls.key"), "OLDKEY").unwrap();
        let held = lock(&env_dir);
        let upload = env_dir.join(".upload");
        // No upload directory, then an empty one: the live pair stays as it is, through the
        // install and its commit.
        for (n, make) in [(1, false), (2, true)] {
            if make {
                fs::create_dir(&upload).unwrap();
            }
            let from = release(&env_dir, &format!(".incoming.{n}"), "prod", "x");
            let (pending, names) = install(&env_dir, &from, Some(&upload), &held).unwrap();
            assert!(names.is_empty());
            assert_eq!(fs::read_to_string(secrets.join("tls.crt")).unwrap(), "OLD");
            assert_eq!(
                fs::read_to_string(secrets.join("tls.key")).unwrap(),
                "OLDKEY"
            );
            assert!(!secrets.join(".tls.crt.prev").exists());
            pending.commit();
            assert_eq!(fs::read_to_string(secrets.join("tls.crt")).unwrap(), "OLD");
            assert_eq!(
                fs::read_to_string(secrets.join("tls.key")).unwrap(),
                "OLDKEY"
            );
        }
        // An uploaded pair is installed, and an install not deployed puts the live one back.
        fs::write(upload.join("tls.crt"), "CERT").unwrap();
        fs::write(upload.join("tls.key"), "KEY").unwrap();
        let from = release(&env_dir, ".incoming.3", "prod", "x");
        let (pending, names) = install(&env_dir, &from, Some(&upload), &held).unwrap();
        assert_eq!(names, ["tls.crt", "tls.key"]);
        assert_eq!(fs::read_to_string(secrets.join("tls.crt")).unwrap(), "CERT");
        drop(pending);
        assert_eq!(fs::read_to_string(secrets.join("tls.crt")).unwrap(), "OLD");
        assert_eq!(
            fs::read_to_string(secrets.join("tls.key")).unwrap(),
            "OLDKEY"
        );
    }

    #[test]
    fn a_tree_already_gone_is_removed_and_one_that_cannot_be_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        remove_tree(&root.path().join("missing")).unwrap();
        let tree = root.path().join("tree");
        fs::create_dir_all(tree.join("a/b")).unwrap();
        fs::write(tree.join("a/b/f"), "").unwrap();
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        // A path through a file cannot be looked at, let alone removed.
        let file = root.path().join("file");
        fs::write(&file, "").unwrap();
        let e = remove_tree(&file.join("x")).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("cannot remove {}", file.join("x").display())),
            "{e}"
        );
    }
}
