//! The environment's deploy lock: one writer at a time for everything that changes an
//! environment (the release swap, a deploy, a rollback, a rotation).
//!
//! The lock is `flock(2)` on `<env dir>/deploy.lock` — the same lock `flock(1)` takes, so the
//! tool and any shell step that still uses `flock` exclude each other — and it is released
//! by the kernel when the holder exits, however it exits. Who holds it is written beside it
//! (`deploy.lock.owner`) so a waiting deploy can name the holder.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot open the lock file {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("the {what} lock is still held after {waited_s}s by: {holder} ({path})")]
    Timeout {
        what: String,
        waited_s: u64,
        holder: String,
        path: PathBuf,
    },
    #[error("cannot lock {path}: {source}")]
    Lock { path: PathBuf, source: io::Error },
}

/// A held lock; dropping it releases the lock (closing the file releases the flock).
#[derive(Debug)]
pub struct DeployLock {
    /// None when the lock is the caller's, inherited as a descriptor.
    _file: Option<File>,
    owner_path: PathBuf,
    /// Whether this holder had to wait for another one first.
    pub waited_for: Option<String>,
}

impl DeployLock {
    /// The lock file of an environment directory.
    pub fn path_in(env_dir: &Path) -> PathBuf {
        env_dir.join("deploy.lock")
    }

    /// Takes the lock of `env_dir`, waiting at most `wait` for another holder. `what` names the
    /// lock in messages (`prod deploy`), `owner` says who takes it (written for the next
    /// waiter: pid, host, time, CI job). `progress` is told once when the lock is busy.
    pub fn acquire(
        env_dir: &Path,
        what: &str,
        owner: &str,
        wait: Duration,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Self, LockError> {
        Self::acquire_file(&Self::path_in(env_dir), what, owner, wait, progress)
    }

    /// The environment's backup lock (`<env dir>/backup.lock`): one backup, test restore or
    /// restore of its database at a time. Deploys never take it, so a backup never holds up
    /// a deploy; a restore takes it after the deploy lock.
    pub fn acquire_backup(
        env_dir: &Path,
        what: &str,
        owner: &str,
        wait: Duration,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Self, LockError> {
        Self::acquire_file(&env_dir.join("backup.lock"), what, owner, wait, progress)
    }

    /// Takes the flock of `path` (created when missing); its owner is written to
    /// `<path>.owner`.
    fn acquire_file(
        path: &Path,
        what: &str,
        owner: &str,
        wait: Duration,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Self, LockError> {
        let path = path.to_owned();
        let mut owner_name = path.clone().into_os_string();
        owner_name.push(".owner");
        let owner_path = PathBuf::from(owner_name);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| LockError::Open {
                path: path.clone(),
                source,
            })?;
        let mut waited_for = None;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = read_owner(&owner_path);
                progress(&format!(
                    "another {what} holds {} ({holder}); waiting up to {}s",
                    path.display(),
                    wait.as_secs()
                ));
                waited_for = Some(holder);
                wait_for_lock(&file, wait).map_err(|e| match e {
                    WaitError::Timeout => LockError::Timeout {
                        what: what.to_owned(),
                        waited_s: wait.as_secs(),
                        holder: read_owner(&owner_path),
                        path: path.clone(),
                    },
                    WaitError::Io(source) => LockError::Lock {
                        path: path.clone(),
                        source,
                    },
                })?;
            }
            Err(TryLockError::Error(source)) => return Err(LockError::Lock { path, source }),
        }
        // Best effort: the owner line only helps the next waiter's message.
        let _ = write_owner(&owner_path, owner);
        Ok(Self {
            _file: Some(file),
            owner_path,
            waited_for,
        })
    }

    /// The lock a caller already holds (a step that swapped in this release under it) and
    /// passed down as descriptor `fd` (`STACKSHIP_DEPLOY_LOCK_FD`): it must be open on this
    /// environment's lock file and hold its flock. Both are checked the way the kernel sees
    /// them: `/proc/self/fd/<fd>` names the file, and `flock -n <fd>` (which inherits the same
    /// open file) succeeds only where that descriptor holds the lock or nobody does.
    pub fn inherited(env_dir: &Path, fd: &str) -> Result<Self, LockError> {
        let path = Self::path_in(env_dir);
        let refuse = |why: String| LockError::Lock {
            path: path.clone(),
            source: io::Error::other(why),
        };
        if fd.is_empty() || !fd.bytes().all(|b| b.is_ascii_digit()) || fd.len() > 4 {
            return Err(refuse(format!(
                "STACKSHIP_DEPLOY_LOCK_FD={fd} is not a descriptor number"
            )));
        }
        let target = fs::read_link(format!("/proc/self/fd/{fd}"))
            .map_err(|e| refuse(format!("STACKSHIP_DEPLOY_LOCK_FD={fd} is not open: {e}")))?;
        let want = fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        if target != want {
            return Err(refuse(format!(
                "STACKSHIP_DEPLOY_LOCK_FD={fd} is open on {}, not on the lock file",
                target.display()
            )));
        }
        let held = std::process::Command::new("flock")
            .args(["-n", fd])
            .stdin(std::process::Stdio::null())
            .status()
            .map_err(|e| {
                refuse(format!(
                    "cannot run flock(1) to check the inherited lock: {e}"
                ))
            })?;
        if !held.success() {
            return Err(refuse(format!(
                "STACKSHIP_DEPLOY_LOCK_FD={fd} does not hold the lock (another process does)"
            )));
        }
        Ok(Self {
            _file: None,
            owner_path: env_dir.join("deploy.lock.owner"),
            waited_for: None,
        })
    }

    /// The lock this process already holds through another [`DeployLock`] (a rollback that
    /// runs a deploy under its own lock): a token for the deploy's stages, releasing nothing.
    pub fn held_here(env_dir: &Path) -> Self {
        Self {
            _file: None,
            owner_path: env_dir.join("deploy.lock.owner"),
            waited_for: None,
        }
    }

    /// Where the holder is described.
    pub fn owner_path(&self) -> &Path {
        &self.owner_path
    }
}

enum WaitError {
    Timeout,
    Io(io::Error),
}

/// Polls the lock until it is free or `wait` passed (std has no timed lock; 100 ms steps keep
/// the wait responsive without burning CPU).
fn wait_for_lock(file: &File, wait: Duration) -> Result<(), WaitError> {
    let deadline = Instant::now() + wait;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(()),
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(e)) => return Err(WaitError::Io(e)),
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(WaitError::Timeout);
        }
        thread::sleep((deadline - now).min(Duration::from_millis(100)));
    }
}

/// The holder's description, or `unknown holder` when it wrote none.
fn read_owner(path: &Path) -> String {
    fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown holder".to_owned())
}

fn write_owner(path: &Path, owner: &str) -> io::Result<()> {
    let mut f = File::create(path)?;
    writeln!(f, "{owner}")
}

/// The owner line of this process: pid, host, start time and the CI job when there is one.
pub fn owner_line(pid: u32, host: &str, now: &str, job_url: Option<&str>) -> String {
    match job_url.filter(|u| !u.is_empty()) {
        Some(url) => format!("pid {pid} on {host}, started {now}, job {url}"),
        None => format!("pid {pid} on {host}, started {now}"),
    }
}

/// This process's [`owner_line`]: its pid and this machine's host name, with `now` and the CI
/// job given.
pub fn this_process(now: &str, job_url: Option<&str>) -> String {
    owner_line(
        std::process::id(),
        &host_name(fs::read_to_string("/proc/sys/kernel/hostname")),
        now,
        job_url,
    )
}

/// The host name as the kernel gives it (with its newline), or `unknown host` when it cannot
/// be read.
fn host_name(read: io::Result<String>) -> String {
    read.map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown host".to_owned())
}

/// Asserts `line` is [`this_process`]'s: this pid, a UTC start time, then exactly `tail`.
#[cfg(test)]
pub(crate) fn assert_this_process_line(line: &str, tail: &str) {
    let pid = std::process::id();
    assert!(line.starts_with(&format!("pid {pid} on ")), "{line}");
    let (_, started) = line.split_once(", started ").unwrap();
    let time = started
        .strip_suffix(tail)
        .unwrap_or_else(|| panic!("{line}"));
    chrono::NaiveDateTime::parse_from_str(time, "%Y-%m-%dT%H:%M:%SZ")
        .unwrap_or_else(|e| panic!("{line}: {e}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quiet() -> impl FnMut(&str) {
        |_: &str| {}
    }

    #[test]
    fn a_free_lock_is_taken_at_once_and_names_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let lock = DeployLock::acquire(
            dir.path(),
            "prod deploy",
            "pid 1 on m",
            Duration::ZERO,
            &mut quiet(),
        )
        .unwrap();
        assert!(lock.waited_for.is_none());
        assert_eq!(
            fs::read_to_string(lock.owner_path()).unwrap(),
            "pid 1 on m\n"
        );
    }

    #[test]
    fn the_backup_lock_is_its_own_and_excludes_only_backups() {
        let dir = tempfile::tempdir().unwrap();
        let _deploy =
            DeployLock::acquire(dir.path(), "prod deploy", "d", Duration::ZERO, &mut quiet())
                .unwrap();
        let backup = DeployLock::acquire_backup(
            dir.path(),
            "prod backup",
            "pid 9 on m",
            Duration::ZERO,
            &mut quiet(),
        )
        .expect("a deploy does not hold up a backup");
        assert_eq!(backup.owner_path(), dir.path().join("backup.lock.owner"));
        assert_eq!(
            fs::read_to_string(dir.path().join("backup.lock.owner")).unwrap(),
            "pid 9 on m\n"
        );
        let err = DeployLock::acquire_backup(
            dir.path(),
            "prod backup",
            "pid 10",
            Duration::ZERO,
            &mut quiet(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("prod backup lock is still held"), "{err}");
        assert!(err.contains("pid 9 on m"), "{err}");
        assert!(err.contains("backup.lock"), "{err}");
    }

    #[test]
    fn a_held_lock_times_out_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let _held = DeployLock::acquire(
            dir.path(),
            "prod deploy",
            "pid 7 on manager-1, started 2026-12-06T05:00:00Z",
            Duration::ZERO,
            &mut quiet(),
        )
        .unwrap();
        let mut told = Vec::new();
        let started = Instant::now();
        let err = DeployLock::acquire(
            dir.path(),
            "prod deploy",
            "pid 8",
            Duration::from_millis(300),
            &mut |m: &str| told.push(m.to_owned()),
        )
        .unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(300));
        let text = err.to_string();
        assert!(
            text.contains("still held after 0s by: pid 7 on manager-1"),
            "{text}"
        );
        assert_eq!(told.len(), 1);
        assert!(told[0].contains("another prod deploy holds"), "{}", told[0]);
        assert!(told[0].contains("pid 7 on manager-1"), "{}", told[0]);
    }

    #[test]
    fn a_waiter_gets_the_lock_when_the_holder_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let held = DeployLock::acquire(
            dir.path(),
            "dev deploy",
            "first",
            Duration::ZERO,
            &mut quiet(),
        )
        .unwrap();
        let path = dir.path().to_owned();
        let waiter = thread::spawn(move || {
            DeployLock::acquire(
                &path,
                "dev deploy",
                "second",
                Duration::from_secs(10),
                &mut |_| {},
            )
            .map(|l| l.waited_for.clone())
        });
        thread::sleep(Duration::from_millis(200));
        drop(held);
        let waited_for = waiter.join().unwrap().unwrap();
        assert_eq!(waited_for.as_deref(), Some("first"));
        assert_eq!(
            fs::read_to_string(dir.path().join("deploy.lock.owner")).unwrap(),
            "second\n"
        );
    }

    #[test]
    fn flock_from_a_shell_step_excludes_the_tool() {
        // flock(1) and std's File::lock are the same flock(2): a shell step holding the lock
        // keeps the tool out.
        if std::process::Command::new("flock")
            .arg("--version")
            .output()
            .is_err()
        {
            panic!("flock(1) (util-linux) is needed for this test");
        }
        let dir = tempfile::tempdir().unwrap();
        let lock = DeployLock::path_in(dir.path());
        // The step writes its pid once it holds the lock; it is stopped when seen waiting.
        let ready = dir.path().join("ready");
        let mut shell = std::process::Command::new("flock")
            .arg(&lock)
            .args([
                "sh",
                "-c",
                "echo $$ >\"$0.tmp\"; mv \"$0.tmp\" \"$0\"; exec sleep 30",
            ])
            .arg(&ready)
            .spawn()
            .unwrap();
        let step = loop {
            match fs::read_to_string(&ready) {
                Ok(pid) => break pid.trim().to_owned(),
                Err(_) => thread::sleep(Duration::from_millis(10)),
            }
        };
        let err = DeployLock::acquire(
            dir.path(),
            "prod deploy",
            "tool",
            Duration::from_millis(200),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(matches!(err, LockError::Timeout { .. }), "{err}");
        let killed = std::process::Command::new("kill")
            .arg(&step)
            .status()
            .unwrap();
        assert!(killed.success());
        shell.wait().unwrap();
        DeployLock::acquire(
            dir.path(),
            "prod deploy",
            "tool",
            Duration::ZERO,
            &mut |_| {},
        )
        .unwrap();
    }

    #[test]
    fn an_inherited_descriptor_must_be_the_lock_file() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["", "x", "3x", "99999"] {
            let e = DeployLock::inherited(dir.path(), bad)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!(
                    "STACKSHIP_DEPLOY_LOCK_FD={bad} is not a descriptor number"
                )),
                "{bad}: {e}"
            );
        }
        // A number, but no descriptor of this process.
        let e = DeployLock::inherited(dir.path(), "9999")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("STACKSHIP_DEPLOY_LOCK_FD=9999 is not open"),
            "{e}"
        );
        // Descriptor 0 is this test's standard input, not the lock file.
        let e = DeployLock::inherited(dir.path(), "0")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not on the lock file") || e.contains("is not open"),
            "{e}"
        );
    }

    #[test]
    fn an_unopenable_lock_file_names_the_path() {
        let err = DeployLock::acquire(
            Path::new("/nonexistent/env"),
            "prod deploy",
            "x",
            Duration::ZERO,
            &mut |_| {},
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot open the lock file /nonexistent/env/deploy.lock"),
            "{err}"
        );
    }

    #[test]
    fn owner_line_names_the_job_when_there_is_one() {
        assert_eq!(
            owner_line(12, "m1", "2026-12-06T05:00:00Z", Some("https://ci/jobs/9")),
            "pid 12 on m1, started 2026-12-06T05:00:00Z, job https://ci/jobs/9"
        );
        assert_eq!(
            owner_line(12, "m1", "2026-12-06T05:00:00Z", Some("")),
            "pid 12 on m1, started 2026-12-06T05:00:00Z"
        );
    }

    #[test]
    fn this_process_is_named_by_its_pid_and_host() {
        let line = this_process("2026-12-06T05:00:00Z", Some("https://ci/jobs/9"));
        let pid = std::process::id();
        assert!(line.starts_with(&format!("pid {pid} on ")), "{line}");
        assert!(
            line.ends_with(", started 2026-12-06T05:00:00Z, job https://ci/jobs/9"),
            "{line}"
        );
        let host = &line[format!("pid {pid} on ").len()..line.find(", started").unwrap()];
        assert!(!host.is_empty() && host.trim() == host, "{line}");
        assert_eq!(
            this_process("2026-12-06T05:00:00Z", None),
            format!("pid {pid} on {host}, started 2026-12-06T05:00:00Z")
        );
    }

    #[test]
    fn the_host_name_is_the_kernels_without_its_newline() {
        assert_eq!(host_name(Ok("m1\n".to_owned())), "m1");
        assert_eq!(
            host_name(Err(io::Error::from(io::ErrorKind::NotFound))),
            "unknown host"
        );
    }
}
