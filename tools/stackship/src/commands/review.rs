//! `stackship review stop IID`: removes a merge request's review stack,
//! `stackship-review-<iid>`, and everything it made, on the Swarm manager: its services (and so
//! its containers), networks, configs, secrets and volumes (the throwaway database), then its
//! deploy directory `<root>/review/<iid>/`.
//!
//! Under that directory's deploy lock, so it never runs beside a deploy of the same stack.
//! Succeeds when nothing is left, also when there was nothing to remove (GitLab may run the
//! review-stop job twice); fails, naming what is left, when something cannot be removed.
//!
//! What belongs to the stack: every object labelled with its namespace
//! (`com.docker.stack.namespace`, what `docker stack deploy` and `stackship deploy --review`
//! made), and every object named `<stack>-…` or `<stack>_…` (a secret made by hand).
//!
//! The order: `docker stack rm` (the services, and with them the containers), a bounded wait
//! until this node has no container of the stack left (a network or a volume can go only then),
//! then whatever is left, one by one, kind by kind (service, network, config, secret, volume),
//! tried again for a while: a network may still be detaching. Ctrl-C (or SIGTERM, SIGHUP) ends
//! every wait, and the error names what is left.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

use clap::Subcommand;

use crate::docker::{Call, Client, DockerError};
use crate::error::Error;
use crate::exit::Outcome;
use crate::layout::PROJECT;
use crate::lock::{DeployLock, LockError};

/// The highest merge request IID (nine digits, as GitLab's).
pub const MAX_IID: u32 = 999_999_999;

/// Review stacks.
#[derive(Debug, Subcommand)]
pub enum ReviewCommand {
    /// Remove the review stack stackship-review-IID and everything it made: services, networks,
    /// configs, secrets, volumes, and its deploy directory <root>/review/IID/, under that
    /// directory's deploy lock.
    #[command(
        after_help = "Exit status: 0 nothing of the stack is left (also when nothing was there); 2 nothing was removed (a bad IID, no <root>/review, the lock still held, Docker unreachable, interrupted while waiting for the lock); 3 part of it is left: the error names what."
    )]
    Stop {
        /// The merge request's IID.
        #[arg(value_name = "IID", value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_IID)))]
        iid: u32,
        /// How long to wait for the stack's containers to stop, in seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = 180, value_parser = clap::value_parser!(u64).range(1..))]
        timeout: u64,
    },
}

/// Runs a `stackship review` command.
pub fn run(
    root: &Path,
    command: ReviewCommand,
    client: &Client<'_>,
    owner: &str,
) -> Result<Outcome, Error> {
    match command {
        ReviewCommand::Stop { iid, timeout } => {
            crate::interrupt::install().map_err(Error::io("cannot install the signal handlers"))?;
            let requested = crate::interrupt::requested;
            let pace = Pace::new(Duration::from_secs(timeout), &requested);
            let mut say =
                |m: &str| eprintln!("{} [stackship] {m}", chrono::Utc::now().format("%H:%M:%S"));
            stop(client, &Request { root, iid, owner }, &pace, &mut say)?;
            Ok(Outcome::Done)
        }
    }
}

/// The review stack of merge request `iid`.
pub fn stack_name(iid: u32) -> String {
    format!("{PROJECT}-review-{iid}")
}

/// What to stop.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The deploy root: the stack's directory is `<root>/review/<iid>/`.
    pub root: &'a Path,
    pub iid: u32,
    /// Who takes the lock (the next waiter is told).
    pub owner: &'a str,
}

/// How long each wait may last and how often it looks.
pub struct Pace<'a> {
    /// For a deploy (or another stop) of the same stack that holds the lock.
    pub lock_wait: Duration,
    /// For the stack's containers to stop (`--timeout`).
    pub containers: Duration,
    pub containers_poll: Duration,
    /// For the objects left after the containers are gone to be removable.
    pub leftovers: Duration,
    pub leftovers_poll: Duration,
    /// Checked in every wait: true ends it, and the error names what is left.
    pub stop: &'a dyn Fn() -> bool,
}

impl<'a> Pace<'a> {
    /// The command's pace: the deploy's lock wait, `containers` for the containers, a minute for
    /// the rest.
    pub fn new(containers: Duration, stop: &'a dyn Fn() -> bool) -> Self {
        Self {
            lock_wait: crate::settings::Defaults::LOCK_WAIT,
            containers,
            containers_poll: Duration::from_secs(1),
            leftovers: Duration::from_secs(60),
            leftovers_poll: Duration::from_secs(2),
            stop,
        }
    }
}

/// The kinds of swarm object a stack makes, in the order they are removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Service,
    Network,
    Config,
    Secret,
    Volume,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Service,
        Kind::Network,
        Kind::Config,
        Kind::Secret,
        Kind::Volume,
    ];

    /// The docker CLI's word for it (`docker <kind> ls`, `docker <kind> rm`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "service",
            Kind::Network => "network",
            Kind::Config => "config",
            Kind::Secret => "secret",
            Kind::Volume => "volume",
        }
    }
}

/// One object of the stack: `volume stackship-review-42_pgdata`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Object {
    pub kind: Kind,
    pub name: String,
}

impl fmt::Display for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind.as_str(), self.name)
    }
}

fn namespace_filter(stack: &str) -> String {
    format!("label=com.docker.stack.namespace={stack}")
}

/// The objects of `kind` labelled with the stack's namespace.
fn labelled(client: &Client<'_>, kind: Kind, stack: &str) -> Result<Vec<String>, DockerError> {
    client.lines(&Call::read([
        kind.as_str(),
        "ls",
        "--filter",
        &namespace_filter(stack),
        "--format",
        "{{.Name}}",
    ]))
}

/// Whether `name` is named after the stack: `<stack>-…` or `<stack>_…` (so stack 42 never
/// claims stack 420's objects).
pub fn named_after(name: &str, stack: &str) -> bool {
    name.strip_prefix(stack)
        .is_some_and(|rest| rest.starts_with('-') || rest.starts_with('_'))
}

/// Every object of the stack that still exists, by kind (in removal order), then name.
pub fn leftovers(client: &Client<'_>, stack: &str) -> Result<Vec<Object>, DockerError> {
    let mut found = BTreeSet::new();
    for kind in Kind::ALL {
        for name in labelled(client, kind, stack)? {
            found.insert(Object { kind, name });
        }
        let all = client.lines(&Call::read([kind.as_str(), "ls", "--format", "{{.Name}}"]))?;
        for name in all.into_iter().filter(|n| named_after(n, stack)) {
            found.insert(Object { kind, name });
        }
    }
    Ok(found.into_iter().collect())
}

/// The stack's containers on this node, running or stopped, by name.
fn containers(client: &Client<'_>, stack: &str) -> Result<Vec<String>, DockerError> {
    client.lines(&Call::read([
        "ps",
        "-a",
        "--filter",
        &namespace_filter(stack),
        "--format",
        "{{.Names}}",
    ]))
}

/// "2 services, 1 network, …".
fn counts(objects: &[Object]) -> String {
    let mut by_kind: BTreeMap<Kind, usize> = BTreeMap::new();
    for o in objects {
        *by_kind.entry(o.kind).or_default() += 1;
    }
    by_kind
        .iter()
        .map(|(kind, n)| format!("{n} {}{}", kind.as_str(), if *n == 1 { "" } else { "s" }))
        .collect::<Vec<_>>()
        .join(", ")
}

fn joined(objects: &[Object]) -> String {
    objects
        .iter()
        .map(Object::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Docker's own words of a failed call.
fn dockers_words(e: &DockerError) -> String {
    match e {
        DockerError::Failed { stderr, .. } => stderr.clone(),
        other => other.to_string(),
    }
}

/// What is left of the stack right now, containers first: the end of every failure's message.
fn what_is_left(client: &Client<'_>, stack: &str) -> String {
    let mut parts: Vec<String> = match containers(client, stack) {
        Ok(names) => names
            .into_iter()
            .map(|n| format!("container {n}"))
            .collect(),
        Err(e) => vec![format!("(cannot list the containers: {e})")],
    };
    match leftovers(client, stack) {
        Ok(objects) => parts.extend(objects.iter().map(Object::to_string)),
        Err(e) => parts.push(format!("(cannot list the rest: {e})")),
    }
    if parts.is_empty() {
        "nothing of it is left in the swarm".to_owned()
    } else {
        format!("still there: {}", parts.join(", "))
    }
}

/// A removal that began and did not end: the swarm changed, and not all the way.
fn incomplete(message: String) -> Error {
    Error::Incomplete(message)
}

/// Removes the review stack of `request.iid` and its directory; see the module's docs.
pub fn stop(
    client: &Client<'_>,
    request: &Request<'_>,
    pace: &Pace<'_>,
    progress: &mut dyn FnMut(&str),
) -> Result<(), Error> {
    let iid = request.iid;
    if !(1..=MAX_IID).contains(&iid) {
        return Err(Error::Refused(format!(
            "'{iid}' is not a merge request IID (a number from 1 to {MAX_IID})"
        )));
    }
    let root = request.root;
    let plain = root.to_str().is_some_and(|r| {
        r.starts_with('/')
            && r.len() > 1
            && r.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b))
    });
    if !plain {
        return Err(Error::Refused(format!(
            "--root '{}' is not a plain absolute path",
            root.display()
        )));
    }
    let parent = root.join("review");
    if !parent.is_dir() {
        return Err(Error::Refused(format!(
            "{} is missing (scripts/server/setup-server.sh makes it)",
            parent.display()
        )));
    }
    let stack = stack_name(iid);
    let dir = parent.join(iid.to_string());
    std::fs::create_dir_all(&dir).map_err(Error::io(format!("cannot make {}", dir.display())))?;
    let lock = take_lock(
        &dir,
        &format!("review-{iid} deploy"),
        request,
        pace,
        progress,
    )?;

    let before = leftovers(client, &stack)?;
    if before.is_empty() {
        progress(&format!("nothing of {stack} is left in the swarm"));
    } else {
        progress(&format!("removing {stack}: {}", counts(&before)));
        remove_all(client, &stack, pace, progress)?;
        let after = leftovers(client, &stack).map_err(|e| {
            incomplete(format!(
                "{stack}: cannot list what is left after the removal: {e}"
            ))
        })?;
        if !after.is_empty() {
            return Err(incomplete(format!(
                "{stack}: still there: {}",
                joined(&after)
            )));
        }
    }
    std::fs::remove_dir_all(&dir).map_err(|e| {
        incomplete(format!(
            "nothing of {stack} is left in the swarm, but {} cannot be removed: {e}",
            dir.display()
        ))
    })?;
    drop(lock);
    progress(&format!(
        "{stack} removed (nothing of it is left; {} removed)",
        dir.display()
    ));
    Ok(())
}

/// The stack's deploy lock: a running deploy of it finishes first. Waited for in short steps,
/// so Ctrl-C ends the wait (nothing was removed yet).
fn take_lock(
    dir: &Path,
    what: &str,
    request: &Request<'_>,
    pace: &Pace<'_>,
    progress: &mut dyn FnMut(&str),
) -> Result<DeployLock, Error> {
    const STEP: Duration = Duration::from_millis(500);
    let started = Instant::now();
    let mut waiting = false;
    loop {
        let step = if waiting {
            STEP.min(pace.lock_wait.saturating_sub(started.elapsed()))
        } else {
            Duration::ZERO
        };
        match DeployLock::acquire(dir, what, request.owner, step, &mut |_| {}) {
            Ok(lock) => {
                if waiting {
                    progress(&format!("holding the {what} lock"));
                }
                return Ok(lock);
            }
            Err(LockError::Timeout { holder, path, .. }) => {
                if !waiting {
                    progress(&format!(
                        "a {what} holds {} ({holder}); waiting up to {}s",
                        path.display(),
                        pace.lock_wait.as_secs()
                    ));
                    waiting = true;
                }
                if (pace.stop)() {
                    return Err(Error::Refused(format!(
                        "interrupted while waiting for the {what} lock (held by {holder}); nothing was removed"
                    )));
                }
                if started.elapsed() >= pace.lock_wait {
                    return Err(LockError::Timeout {
                        what: what.to_owned(),
                        waited_s: pace.lock_wait.as_secs(),
                        holder,
                        path,
                    }
                    .into());
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// `docker stack rm`, the wait for the containers, then the rest one by one.
fn remove_all(
    client: &Client<'_>,
    stack: &str,
    pace: &Pace<'_>,
    progress: &mut dyn FnMut(&str),
) -> Result<(), Error> {
    let docker = |e: DockerError| {
        incomplete(format!(
            "removing {stack} stopped: {e}; {}",
            what_is_left(client, stack)
        ))
    };
    if !labelled(client, Kind::Service, stack)
        .map_err(docker)?
        .is_empty()
    {
        progress(&format!("docker stack rm {stack}"));
        match client.run(&Call::write(["stack", "rm", stack])) {
            Ok(out) => {
                for line in out.lines().filter(|l| !l.trim().is_empty()) {
                    progress(&format!("  {}", line.trim()));
                }
            }
            Err(e) => progress(&format!(
                "docker stack rm reported errors ({}); removing what is left one by one",
                dockers_words(&e)
            )),
        }
    }

    // Networks and volumes can go only once the containers are gone.
    let started = Instant::now();
    loop {
        let services = labelled(client, Kind::Service, stack).map_err(docker)?;
        let running = containers(client, stack).map_err(docker)?;
        if services.is_empty() && running.is_empty() {
            break;
        }
        if (pace.stop)() {
            return Err(incomplete(format!(
                "interrupted while waiting for the containers of {stack} to stop; {}",
                what_is_left(client, stack)
            )));
        }
        if started.elapsed() >= pace.containers {
            return Err(incomplete(format!(
                "the containers of {stack} are still there after {}s; {}",
                pace.containers.as_secs(),
                what_is_left(client, stack)
            )));
        }
        std::thread::sleep(pace.containers_poll);
    }

    // Whatever docker stack rm left (a network still detaching, the volume, a secret it did
    // not know): remove it, and try again for a while.
    let started = Instant::now();
    let mut left = leftovers(client, stack).map_err(docker)?;
    while !left.is_empty() {
        let mut why: BTreeMap<Object, String> = BTreeMap::new();
        for object in &left {
            match client.run(&Call::write([
                object.kind.as_str(),
                "rm",
                object.name.as_str(),
            ])) {
                Ok(_) => progress(&format!("removed {object}")),
                Err(e) => {
                    why.insert(object.clone(), dockers_words(&e));
                }
            }
        }
        left = leftovers(client, stack).map_err(docker)?;
        if left.is_empty() {
            break;
        }
        let named = left
            .iter()
            .map(|o| match why.get(o) {
                Some(reason) => format!("{o} ({reason})"),
                None => o.to_string(),
            })
            .collect::<Vec<_>>()
            .join(", ");
        if (pace.stop)() {
            return Err(incomplete(format!(
                "interrupted while removing what is left of {stack}: {named}"
            )));
        }
        if started.elapsed() >= pace.leftovers {
            return Err(incomplete(format!(
                "cannot remove what is left of {stack} within {}s: {named}",
                pace.leftovers.as_secs()
            )));
        }
        std::thread::sleep(pace.leftovers_poll);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::fake::FakeEngine;
    use clap::Parser;
    use std::cell::Cell;

    fn never() -> bool {
        false
    }

    /// No pauses, no waiting: a wait that is not over at once has timed out.
    fn quick(stop: &dyn Fn() -> bool) -> Pace<'_> {
        Pace {
            lock_wait: Duration::ZERO,
            containers: Duration::ZERO,
            containers_poll: Duration::ZERO,
            leftovers: Duration::ZERO,
            leftovers_poll: Duration::ZERO,
            stop,
        }
    }

    /// A deploy root with its review/ directory (as setup-server.sh makes it).
    fn deploy_root() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("review")).unwrap();
        root
    }

    fn request(root: &Path, iid: u32) -> Request<'_> {
        Request {
            root,
            iid,
            owner: "pid 1 on manager-1",
        }
    }

    fn run_stop(
        fake: &FakeEngine,
        root: &Path,
        iid: u32,
        pace: &Pace<'_>,
    ) -> (Result<(), Error>, Vec<String>) {
        let mut said = Vec::new();
        let result = stop(
            &Client::new(fake),
            &request(root, iid),
            pace,
            &mut |m: &str| said.push(m.to_owned()),
        );
        (result, said)
    }

    fn answer_labelled_once(fake: &FakeEngine, kind: &str, names: &str) {
        fake.answer_once(&[kind, "ls", "--filter"], names);
    }

    /// Every listing that no earlier rule answers finds nothing of the stack (other stacks'
    /// objects are there, named alike).
    fn otherwise_only_other_stacks(fake: &FakeEngine) {
        for kind in ["service", "network", "config", "secret", "volume"] {
            fake.answer(&[kind, "ls", "--filter"], "");
            fake.answer(
                &[kind, "ls", "--format"],
                "stackship-dev_backend\nstackship-review-95_backend\nstackship-review-9500-x\n",
            );
        }
        fake.answer(&["ps", "-a"], "");
    }

    #[test]
    fn a_stop_removes_the_services_waits_for_the_containers_then_removes_the_rest_in_order() {
        let root = deploy_root();
        let dir = root.path().join("review/950");
        std::fs::create_dir_all(dir.join("current")).unwrap();
        let other = root.path().join("review/95");
        std::fs::create_dir_all(&other).unwrap();
        let fake = FakeEngine::new();
        // Before: what the deploy made, and a secret made by hand (named, not labelled).
        for _ in 0..2 {
            answer_labelled_once(
                &fake,
                "service",
                "stackship-review-950_postgres\nstackship-review-950_backend\n",
            );
        }
        answer_labelled_once(&fake, "network", "stackship-review-950_data\n");
        answer_labelled_once(
            &fake,
            "config",
            "stackship-review-950_backend-config-1a2b\n",
        );
        answer_labelled_once(&fake, "secret", "stackship-review-950-db-password-v1\n");
        answer_labelled_once(&fake, "volume", "stackship-review-950_pgdata\n");
        fake.answer_once(
            &["secret", "ls", "--format"],
            "stackship-dev-db-password-v1\nstackship-review-950-db-password-v1\nstackship-review-950-extra\n",
        );
        // Services gone at once, one container takes a moment to stop.
        answer_labelled_once(&fake, "service", "");
        fake.answer_once(&["ps", "-a"], "stackship-review-950_postgres.1.q2w3e4\n");
        // After docker stack rm: its network is still detaching the first time, the volume and
        // the hand-made secret are for this command to remove.
        for _ in 0..2 {
            answer_labelled_once(&fake, "network", "stackship-review-950_data\n");
        }
        answer_labelled_once(&fake, "volume", "stackship-review-950_pgdata\n");
        fake.answer_once(
            &["secret", "ls", "--format"],
            "stackship-dev-db-password-v1\nstackship-review-950-extra\n",
        );
        fake.answer(
            &["stack", "rm"],
            "Removing service stackship-review-950_backend\n",
        );
        fake.fail_once(
            &["network", "rm"],
            "Error response from daemon: error while removing network: network stackship-review-950_data has active endpoints",
        );
        fake.answer(&["network", "rm"], "");
        fake.answer(&["secret", "rm"], "");
        fake.answer(&["volume", "rm"], "");
        otherwise_only_other_stacks(&fake);

        let (result, said) = run_stop(
            &fake,
            root.path(),
            950,
            &Pace {
                containers: Duration::from_secs(60),
                leftovers: Duration::from_secs(60),
                ..quick(&never)
            },
        );
        result.unwrap();
        assert_eq!(
            fake.writes(),
            vec![
                "docker stack rm stackship-review-950",
                // Kind by kind: the network first (it fails: still detaching), ...
                "docker network rm stackship-review-950_data",
                "docker secret rm stackship-review-950-extra",
                "docker volume rm stackship-review-950_pgdata",
                // ... and again, once.
                "docker network rm stackship-review-950_data",
            ]
        );
        // Nothing was removed before this node's containers of the stack were gone.
        let lines = fake.command_lines();
        let last_ps = lines
            .iter()
            .rposition(|l| l.starts_with("docker ps -a"))
            .unwrap();
        let first_rm = lines
            .iter()
            .position(|l| l.starts_with("docker network rm"))
            .unwrap();
        assert!(last_ps < first_rm, "{lines:#?}");
        assert_eq!(
            lines[last_ps],
            "docker ps -a --filter label=com.docker.stack.namespace=stackship-review-950 --format {{.Names}}"
        );
        assert!(lines.contains(
            &"docker volume ls --filter label=com.docker.stack.namespace=stackship-review-950 --format {{.Name}}".to_owned()
        ));
        assert_eq!(
            said,
            vec![
                "removing stackship-review-950: 2 services, 1 network, 1 config, 2 secrets, 1 volume",
                "docker stack rm stackship-review-950",
                "  Removing service stackship-review-950_backend",
                "removed secret stackship-review-950-extra",
                "removed volume stackship-review-950_pgdata",
                "removed network stackship-review-950_data",
                &format!(
                    "stackship-review-950 removed (nothing of it is left; {} removed)",
                    dir.display()
                ),
            ]
        );
        assert!(!dir.exists());
        // Stack 95's directory is not 950's.
        assert!(other.is_dir());
    }

    #[test]
    fn a_second_stop_finds_nothing_and_succeeds() {
        let root = deploy_root();
        let fake = FakeEngine::new();
        otherwise_only_other_stacks(&fake);
        for _ in 0..2 {
            let (result, said) = run_stop(&fake, root.path(), 950, &quick(&never));
            result.unwrap();
            assert_eq!(
                said,
                vec![
                    "nothing of stackship-review-950 is left in the swarm".to_owned(),
                    format!(
                        "stackship-review-950 removed (nothing of it is left; {} removed)",
                        root.path().join("review/950").display()
                    ),
                ]
            );
        }
        // Only looked: stackship-review-95_* and stackship-review-9500-* are other stacks'.
        assert!(fake.writes().is_empty(), "{:?}", fake.writes());
        assert!(!root.path().join("review/950").exists());

        // The command line: exit 0.
        let cli = crate::cli::Cli::try_parse_from([
            "stackship",
            "--root",
            root.path().to_str().unwrap(),
            "review",
            "stop",
            "950",
        ])
        .unwrap();
        let outcome = crate::cli::run_with(cli, &Client::new(&fake), &mut Vec::new()).unwrap();
        assert_eq!(outcome, Outcome::Done);
        assert!(fake.writes().is_empty());
    }

    #[test]
    fn a_leftover_that_cannot_be_removed_is_named_and_the_exit_is_not_zero() {
        let root = deploy_root();
        let dir = root.path().join("review/950");
        let fake = FakeEngine::new();
        // The services are gone already; the volume is held by a container of another node.
        fake.answer(
            &["volume", "ls", "--filter"],
            "stackship-review-950_pgdata\n",
        );
        fake.fail(
            &["volume", "rm"],
            "Error response from daemon: remove stackship-review-950_pgdata: volume is in use - [4f2a]",
        );
        otherwise_only_other_stacks(&fake);
        let (result, said) = run_stop(&fake, root.path(), 950, &quick(&never));
        let e = result.unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot remove what is left of stackship-review-950 within 0s: volume stackship-review-950_pgdata (Error response from daemon: remove stackship-review-950_pgdata: volume is in use - [4f2a])"
        );
        assert_ne!(e.outcome().code(), 0);
        assert_eq!(e.outcome(), Outcome::Unknown);
        assert_eq!(said, vec!["removing stackship-review-950: 1 volume"]);
        // No stack rm (no service was left), one try, and the directory is kept.
        assert_eq!(
            fake.writes(),
            vec!["docker volume rm stackship-review-950_pgdata"]
        );
        assert!(dir.is_dir());
    }

    #[test]
    fn containers_that_do_not_stop_are_named() {
        let root = deploy_root();
        let fake = FakeEngine::new();
        fake.answer(
            &["network", "ls", "--filter"],
            "stackship-review-950_data\n",
        );
        fake.answer(&["ps", "-a"], "stackship-review-950_postgres.1.q2w3e4\n");
        otherwise_only_other_stacks(&fake);
        let (result, _) = run_stop(&fake, root.path(), 950, &quick(&never));
        assert_eq!(
            result.unwrap_err().to_string(),
            "the containers of stackship-review-950 are still there after 0s; still there: container stackship-review-950_postgres.1.q2w3e4, network stackship-review-950_data"
        );
        assert!(fake.writes().is_empty());
    }

    #[test]
    fn what_comes_back_after_the_removal_is_named() {
        let root = deploy_root();
        std::fs::create_dir_all(root.path().join("review/950/current")).unwrap();
        let fake = FakeEngine::new();
        let volume = "stackship-review-950_data\n";
        // There before, removed, gone, and back (another run made it again).
        fake.answer_once(&["volume", "ls", "--filter"], volume);
        fake.answer_once(&["volume", "ls", "--filter"], volume);
        fake.answer_once(&["volume", "ls", "--filter"], "");
        fake.answer_once(&["volume", "ls", "--filter"], volume);
        fake.answer(&["volume", "rm"], "");
        otherwise_only_other_stacks(&fake);
        let (result, _) = run_stop(&fake, root.path(), 950, &quick(&never));
        assert_eq!(
            result.unwrap_err().to_string(),
            "stackship-review-950: still there: volume stackship-review-950_data"
        );
    }

    #[test]
    fn an_interrupted_stop_says_what_is_left() {
        let root = deploy_root();
        let fake = FakeEngine::new();
        fake.answer(
            &["service", "ls", "--filter"],
            "stackship-review-950_backend\n",
        );
        fake.answer(&["stack", "rm"], "");
        fake.answer(&["ps", "-a"], "stackship-review-950_backend.1.a1\n");
        otherwise_only_other_stacks(&fake);
        // Ctrl-C after the first look.
        let looks = Cell::new(0);
        let stop_after_one = || {
            looks.set(looks.get() + 1);
            looks.get() > 1
        };
        let (result, _) = run_stop(
            &fake,
            root.path(),
            950,
            &Pace {
                containers: Duration::from_secs(600),
                ..quick(&stop_after_one)
            },
        );
        let e = result.unwrap_err();
        assert_eq!(
            e.to_string(),
            "interrupted while waiting for the containers of stackship-review-950 to stop; still there: container stackship-review-950_backend.1.a1, service stackship-review-950_backend"
        );
        assert_eq!(e.outcome(), Outcome::Unknown);
        assert_eq!(fake.writes(), vec!["docker stack rm stackship-review-950"]);
    }

    #[test]
    fn a_held_lock_is_waited_for_then_given_up_naming_its_holder() {
        let root = deploy_root();
        let dir = root.path().join("review/950");
        std::fs::create_dir_all(&dir).unwrap();
        let _deploy = DeployLock::acquire(
            &dir,
            "review-950 deploy",
            "pid 7 on manager-1, job https://ci/jobs/9",
            Duration::ZERO,
            &mut |_| {},
        )
        .unwrap();
        let fake = FakeEngine::new();
        otherwise_only_other_stacks(&fake);
        let (result, said) = run_stop(
            &fake,
            root.path(),
            950,
            &Pace {
                lock_wait: Duration::from_millis(300),
                ..quick(&never)
            },
        );
        let e = result.unwrap_err();
        assert!(
            e.to_string().starts_with(
                "the review-950 deploy lock is still held after 0s by: pid 7 on manager-1, job https://ci/jobs/9"
            ),
            "{e}"
        );
        assert_eq!(e.outcome(), Outcome::NothingChanged);
        assert_eq!(said.len(), 1);
        assert!(
            said[0].contains("(pid 7 on manager-1, job https://ci/jobs/9); waiting up to 0s"),
            "{said:?}"
        );
        assert!(fake.calls().is_empty());
        // Ctrl-C while waiting: nothing was removed, and it says so.
        let (result, _) = run_stop(
            &fake,
            root.path(),
            950,
            &Pace {
                lock_wait: Duration::from_secs(600),
                ..quick(&|| true)
            },
        );
        assert_eq!(
            result.unwrap_err().to_string(),
            "interrupted while waiting for the review-950 deploy lock (held by pid 7 on manager-1, job https://ci/jobs/9); nothing was removed"
        );
        assert!(fake.calls().is_empty());
        assert!(dir.is_dir());
    }

    #[test]
    fn a_bad_iid_or_root_is_refused_before_anything_is_looked_at() {
        let parse = |args: &[&str]| {
            crate::cli::Cli::try_parse_from(
                ["stackship", "review", "stop"]
                    .iter()
                    .chain(args.iter())
                    .copied(),
            )
        };
        let bad: [&[&str]; 9] = [
            &["0"],
            &["-3"],
            &["12a"],
            &["../1"],
            &["1000000000"],
            &[],
            &["1", "2"],
            &["1", "--timeout", "0"],
            &["1", "--timeout", "x"],
        ];
        for bad in bad {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
        let ok = parse(&["999999999", "--timeout", "5"]).unwrap();
        assert!(matches!(
            ok.command,
            crate::cli::Command::Review(ReviewCommand::Stop {
                iid: 999_999_999,
                timeout: 5
            })
        ));

        let root = deploy_root();
        let fake = FakeEngine::new();
        let (result, _) = run_stop(&fake, root.path(), 0, &quick(&never));
        let e = result.unwrap_err();
        assert_eq!(
            e.to_string(),
            "'0' is not a merge request IID (a number from 1 to 999999999)"
        );
        assert_eq!(e.outcome(), Outcome::NothingChanged);
        let (result, _) = run_stop(&fake, Path::new("relative/root"), 950, &quick(&never));
        assert_eq!(
            result.unwrap_err().to_string(),
            "--root 'relative/root' is not a plain absolute path"
        );
        let (result, _) = run_stop(&fake, Path::new("/srv/deploy root"), 950, &quick(&never));
        assert!(result.is_err());
        let (result, _) = run_stop(&fake, Path::new("/"), 950, &quick(&never));
        assert_eq!(
            result.unwrap_err().to_string(),
            "--root '/' is not a plain absolute path"
        );
        // (In a temp dir: code that went wrong must not litter the real file system.)
        let elsewhere = tempfile::tempdir().unwrap();
        let missing = elsewhere.path().join("deploy");
        let (result, _) = run_stop(&fake, &missing, 950, &quick(&never));
        assert_eq!(
            result.unwrap_err().to_string(),
            format!(
                "{}/review is missing (scripts/server/setup-server.sh makes it)",
                missing.display()
            )
        );
        assert!(!missing.exists());
        assert!(fake.calls().is_empty());
        assert_eq!(
            std::fs::read_dir(root.path().join("review"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn objects_named_after_the_stack_and_counts() {
        assert!(named_after(
            "stackship-review-42_pgdata",
            "stackship-review-42"
        ));
        assert!(named_after(
            "stackship-review-42-db-password-v1",
            "stackship-review-42"
        ));
        assert!(!named_after(
            "stackship-review-420_pgdata",
            "stackship-review-42"
        ));
        assert!(!named_after("stackship-review-42", "stackship-review-42"));
        assert!(!named_after(
            "x-stackship-review-42_a",
            "stackship-review-42"
        ));
        assert_eq!(stack_name(7), "stackship-review-7");
        let o = |kind, name: &str| Object {
            kind,
            name: name.to_owned(),
        };
        assert_eq!(
            counts(&[
                o(Kind::Volume, "a"),
                o(Kind::Service, "b"),
                o(Kind::Service, "c")
            ]),
            "2 services, 1 volume"
        );
    }
}
