//! `stackship deploy ENV` (and `--review IID`): one environment's stack, deployed from its
//! installed release, in named stages — each returns or fails with what it saw:
//!
//! 1. **read**: the stack file, the settings ([`crate::settings`]) and the content names of
//!    the configs and secrets (config-hasher);
//! 2. **lock**: the environment's deploy lock ([`crate::lock`]), waiting at most `LOCK_WAIT`;
//! 3. **validate**: the swarm (a manager), the database password secret, every external secret
//!    and config the stack names, the stack file (`docker stack config`), placement labels;
//! 4. **pull**: registry login, then every image — nothing has changed if one is missing;
//! 5. **deploy**: the database directory on its node, a snapshot, `docker stack deploy`;
//! 6. **watch**: the rollout to a verdict; a record of what runs; the prune.
//!
//! A failure before stage 5 changes nothing in the swarm (a review stack's first password
//! secret excepted, which belongs to the stack): exit 2. A rollout that failed: exit 1. A
//! watch that could not see the end: exit 3.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config_hasher::{Options as HashOptions, SkipReason, hash_compose_file};

use crate::ancestry::Provenance;
use crate::docker::{Call, Client, DockerError};
use crate::error::Error;
use crate::exit::Outcome;
use crate::layout::PROJECT;
use crate::lock::DeployLock;
use crate::settings::{Inputs, Settings};
use crate::stack::StackFile;

/// The named stages, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Read,
    Lock,
    /// `--from`: the upload swapped in as the release.
    Install,
    Validate,
    Pull,
    /// The database directory and the snapshot: nothing of the stack has changed yet.
    Prepare,
    Deploy,
    Watch,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Read => "read",
            Stage::Lock => "lock",
            Stage::Install => "install",
            Stage::Validate => "validate",
            Stage::Pull => "pull",
            Stage::Prepare => "prepare",
            Stage::Deploy => "deploy",
            Stage::Watch => "watch",
        })
    }
}

/// A deploy that did not end well: the stage, why, and what it means for the swarm.
#[derive(Debug, thiserror::Error)]
#[error("{stage}: {error}")]
pub struct DeployError {
    pub stage: Stage,
    pub error: Error,
}

impl DeployError {
    /// Failures before the deploy stage changed nothing; later ones leave the state unknown.
    pub fn outcome(&self) -> Outcome {
        if self.stage >= Stage::Deploy {
            Outcome::Unknown
        } else {
            Outcome::NothingChanged
        }
    }
}

trait At<T> {
    fn at(self, stage: Stage) -> Result<T, DeployError>;
}

impl<T, E: Into<Error>> At<T> for Result<T, E> {
    fn at(self, stage: Stage) -> Result<T, DeployError> {
        self.map_err(|e| DeployError {
            stage,
            error: e.into(),
        })
    }
}

fn refused<T>(stage: Stage, message: impl Into<String>) -> Result<T, DeployError> {
    Err(DeployError {
        stage,
        error: Error::Refused(message.into()),
    })
}

/// What to deploy.
#[derive(Debug, Clone)]
pub struct Request {
    /// The installed release: `<env dir>/current`.
    pub release: PathBuf,
    /// `dev`, `prod`, ...: its manifests and, for a review stack, the environment it copies.
    pub env: String,
    /// A merge request's review stack instead of the environment's.
    pub review: Option<u32>,
    pub tag: Option<String>,
    pub timeout: Option<String>,
    /// The process environment (settings, `DB_PASSWORD_SECRET`, `NEW_DATABASE`, CI's).
    pub process_env: BTreeMap<String, String>,
    /// Who takes the lock (`pid 1 on host, started ...`).
    pub owner: String,
    /// Where environments keep Postgres's data on their database node
    /// (`/data/stackship/data`, as the stack files bind-mount it).
    pub data_root: PathBuf,
    /// A release to install as `release` first, under the deploy's lock (`--from`).
    pub install: Option<Install>,
    /// Deploy a commit older than the running one (`--allow-older`).
    pub allow_older: bool,
    /// This process already holds the environment's lock (a rollback deploying under it).
    pub lock_held_here: bool,
    /// Kept in the record when this deploy is not a release's own (`rolled back to deploy X`).
    pub note: Option<String>,
    /// Asked to stop (Ctrl-C): waits for helper tasks give up, and the helpers are removed.
    pub stop: fn() -> bool,
}

/// An uploaded release to swap in before the deploy.
#[derive(Debug, Clone)]
pub struct Install {
    /// The release directory, inside the environment directory.
    pub from: PathBuf,
    /// Uploaded secret source files (the TLS pair), if any.
    pub secrets: Option<PathBuf>,
}

impl Request {
    /// A deploy of the release installed in `env_dir` (its `current/`) by a command that already
    /// holds the environment's deploy lock: a rollback, a certificate renewal.
    pub fn of_installed(
        env_dir: &Path,
        env: &str,
        process_env: BTreeMap<String, String>,
        owner: &str,
        data_root: &Path,
        stop: fn() -> bool,
    ) -> Request {
        Request {
            release: env_dir.join("current"),
            env: env.to_owned(),
            review: None,
            tag: None,
            timeout: None,
            process_env,
            owner: owner.to_owned(),
            data_root: data_root.to_path_buf(),
            install: None,
            allow_older: false,
            lock_held_here: true,
            note: None,
            stop,
        }
    }

    /// The environment directory (the release's parent): settings, lock, records.
    pub fn env_dir(&self) -> PathBuf {
        self.release
            .parent()
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from("."))
    }

    pub fn stack(&self) -> String {
        match self.review {
            Some(iid) => format!("{PROJECT}-review-{iid}"),
            None => format!("{PROJECT}-{}", self.env),
        }
    }

    pub fn compose(&self) -> PathBuf {
        self.release.join(self.compose_name())
    }

    fn compose_name(&self) -> String {
        match self.review {
            Some(_) => "docker-compose.review.yaml".to_owned(),
            None => format!("docker-compose.{}.yaml", self.env),
        }
    }

    /// A review stack uses the settings of the environment it copies (`<root>/<env>/`, beside
    /// `<root>/review/<iid>/`).
    pub fn settings_file(&self) -> PathBuf {
        let env_dir = self.env_dir();
        match self.review {
            Some(_) => env_dir
                .parent()
                .and_then(Path::parent)
                .map(|root| root.join(&self.env).join("deploy.env"))
                .unwrap_or_else(|| PathBuf::from("deploy.env")),
            None => env_dir.join("deploy.env"),
        }
    }

    pub fn pins(&self) -> PathBuf {
        pins_in(&self.release, &self.env)
    }

    fn env_var(&self, key: &str) -> Option<&str> {
        self.process_env
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

/// What the read stage found: everything the later stages need, decided before the lock.
#[derive(Debug, Clone)]
pub struct Release {
    pub stack: StackFile,
    pub settings: Settings,
    /// Content names (`PROD_BACKEND_CONFIG=prod_backend_config_<hash>`), for the stack deploy.
    pub content_names: BTreeMap<String, String>,
    /// External secrets and configs as written (`("secret", "${DB_PASSWORD_SECRET}")`).
    pub externals: Vec<(String, String)>,
}

pub fn pins_in(release: &Path, env: &str) -> PathBuf {
    release
        .join("deploy-manifests")
        .join(env)
        .join("images.env")
}

/// Stage 1, first half: the stack file and the settings (all `--print-images` needs).
pub fn read_settings(request: &Request) -> Result<(StackFile, Settings), DeployError> {
    read_settings_in(request, &request.release)
}

/// As [`read_settings`], with the stack file and pins of the release in `release` (an upload
/// not installed yet) and the environment's own settings.
pub fn read_settings_in(
    request: &Request,
    release: &Path,
) -> Result<(StackFile, Settings), DeployError> {
    let compose = release.join(request.compose_name());
    if !compose.is_file() {
        return refused(
            Stage::Read,
            format!(
                "{} is missing (run the copy step for {})",
                compose.display(),
                request.env
            ),
        );
    }
    let manifests = release.join("deploy-manifests").join(&request.env);
    if !manifests.is_dir() {
        return refused(
            Stage::Read,
            format!(
                "{} is missing (run the copy step for {})",
                manifests.display(),
                request.env
            ),
        );
    }
    let stack = StackFile::read(&compose).at(Stage::Read)?;
    let inputs = Inputs {
        env: request.process_env.clone(),
        deploy_env: Some(request.settings_file()),
        pins: Some(pins_in(release, &request.env)),
        tag: request.tag.clone(),
        timeout: request.timeout.clone(),
        env_name: request.env.clone(),
        acme: crate::settings::AcmeFlags::default(),
    };
    let settings = Settings::load(&stack, &inputs).at(Stage::Read)?;
    Ok((stack, settings))
}

/// Stage 1: the stack file, settings and content names.
pub fn read(request: &Request) -> Result<Release, DeployError> {
    let (stack, settings) = read_settings(request)?;
    let compose = request.compose();
    let report = hash_compose_file(&compose, &HashOptions::default()).map_err(|e| DeployError {
        stage: Stage::Read,
        error: Error::Refused(format!(
            "config-hasher rejected {}: {e} (a secret's source file lives in {}/secrets/: the pipeline installs it from a CI File variable, scripts/up.sh on a local machine)",
            compose.display(),
            request.env_dir().display()
        )),
    })?;
    let mut content_names: BTreeMap<String, String> = report
        .pairs()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    if request.review.is_some() {
        // Names of their own: removing one review stack never touches another's configs.
        let stack_name = request.stack();
        for v in content_names.values_mut() {
            *v = format!("{stack_name}_{v}");
        }
    }
    let externals = report
        .skipped
        .iter()
        .filter(|s| s.reason == SkipReason::External)
        .filter_map(|s| {
            s.name
                .clone()
                .map(|n| (s.entry.kind.as_str().to_owned(), n))
        })
        .collect();
    Ok(Release {
        stack,
        settings,
        content_names,
        externals,
    })
}

/// Each service's image and where it came from, as `--print-images` shows them.
pub fn images_text(settings: &Settings) -> String {
    settings
        .images
        .iter()
        .map(|(svc, image)| format!("{svc} {} ({})\n", image.value, image.origin))
        .collect()
}

/// The newest `<prefix><N>` of `names` (N a positive number).
pub fn newest_version<'a>(names: impl IntoIterator<Item = &'a str>, prefix: &str) -> Option<u32> {
    names
        .into_iter()
        .filter_map(|n| n.strip_prefix(prefix))
        .filter(|n| !n.starts_with('0') && n.len() <= 9)
        .filter_map(|n| n.parse::<u32>().ok())
        .max()
}

/// Resolves an external object's name as written: a plain name, or exactly one `${VAR}` from
/// `vars`.
pub fn external_name(written: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    if let Some(var) = written.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
        if !config_hasher::interpolate::is_variable_name(var) {
            return Err(format!(
                "'{written}': use a plain name or exactly one ${{VAR}}"
            ));
        }
        return vars
            .get(var)
            .cloned()
            .ok_or_else(|| format!("'{written}': {var} is not set"));
    }
    if written.contains('$') {
        return Err(format!(
            "'{written}': use a plain name or exactly one ${{VAR}}"
        ));
    }
    Ok(written.to_owned())
}

/// Progress lines go here (stderr in the binary).
pub type Progress<'a> = &'a mut dyn FnMut(&str);

/// The variables `docker stack deploy` expands: settings, content names, the password secret,
/// the review port.
fn deploy_vars(release: &Release, extra: &[(&str, String)]) -> BTreeMap<String, String> {
    let mut vars = release.settings.stack_variables.clone();
    vars.extend(release.content_names.clone());
    for (k, v) in extra {
        vars.insert((*k).to_owned(), v.clone());
    }
    vars
}

/// Stage 3, part: the database password secret — `DB_PASSWORD_SECRET` when the caller names
/// one (a rotation does), else the newest `<stack>-db-password-v<N>`.
pub fn db_password_secret(client: &Client<'_>, request: &Request) -> Result<String, DeployError> {
    let prefix = format!("{}-db-password-v", request.stack());
    if let Some(named) = request.env_var("DB_PASSWORD_SECRET") {
        if !named.starts_with(&prefix) {
            return refused(
                Stage::Validate,
                format!("DB_PASSWORD_SECRET '{named}' is not one of {prefix}<N>"),
            );
        }
        return Ok(named.to_owned());
    }
    let names = client
        .lines(&Call::read([
            "secret",
            "ls",
            "--filter",
            &format!("name={prefix}"),
            "--format",
            "{{.Name}}",
        ]))
        .at(Stage::Validate)?;
    if let Some(n) = newest_version(names.iter().map(String::as_str), &prefix) {
        return Ok(format!("{prefix}{n}"));
    }
    // The environment's first deploy (no database service, no bootstrap password): its
    // password pair is made here, as `stackship secret init` would.
    let stack = request.stack();
    let first = !crate::commands::secret::exists(
        client,
        "secret",
        &format!("{stack}-db-bootstrap-password"),
    )
    .at(Stage::Validate)?
        && !crate::commands::secret::exists(client, "service", &format!("{stack}_postgres"))
            .at(Stage::Validate)?;
    if first {
        let dir = crate::layout::EnvDir {
            env: request.env.clone(),
            dir: request.env_dir(),
        };
        crate::commands::secret::init(client, &dir, None, &mut |_| {}).at(Stage::Validate)?;
        return Ok(format!("{prefix}1"));
    }
    refused(
        Stage::Validate,
        format!(
            "no database password secret {prefix}<N> exists: create it with `stackship secret init {} db-password` (--file FILE with the password the database was initialised with)",
            request.env
        ),
    )
}

/// Stage 3, part: every external secret and config the stack file names exists.
pub fn check_externals(
    client: &Client<'_>,
    release: &Release,
    vars: &BTreeMap<String, String>,
) -> Result<(), DeployError> {
    let mut missing = Vec::new();
    for (kind, written) in &release.externals {
        let name = external_name(written, vars).map_err(|m| DeployError {
            stage: Stage::Validate,
            error: Error::Refused(format!("external {kind} {m}")),
        })?;
        match client.run(&Call::read([kind.as_str(), "inspect", name.as_str()])) {
            Ok(_) => {}
            Err(DockerError::Failed { .. }) => missing.push(format!("{kind} {name}")),
            Err(e) => return Err(e).at(Stage::Validate),
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        refused(
            Stage::Validate,
            format!(
                "missing swarm objects: {} (create secrets with `stackship secret create`, see its --help)",
                missing.join(", ")
            ),
        )
    }
}

/// Stage 4: log in (when credentials are set) and pull every image.
pub fn pull(
    client: &Client<'_>,
    release: &Release,
    progress: Progress<'_>,
) -> Result<(), DeployError> {
    let s = &release.settings;
    if let (Some((user, password)), Some(registry)) = (&s.login, &s.registry) {
        let host = registry.value.split('/').next().unwrap_or(&registry.value);
        progress(&format!(
            "docker login {} as {}",
            registry.value, user.value
        ));
        client
            .run(
                &Call::write([
                    "login",
                    "--username",
                    user.value.as_str(),
                    "--password-stdin",
                    host,
                ])
                .with_stdin(password.expose()),
            )
            .at(Stage::Pull)?;
    } else if let Some(registry) = &s.registry {
        progress(&format!(
            "no registry credentials given: using the engine's existing login for {}",
            registry.value
        ));
    }
    for (service, image) in &s.images {
        progress(&format!("checking {} ({})", image.value, image.origin));
        // Not retried (a slow registry would double the wait), and bounded generously: a
        // large image on a slow link takes minutes, a hung pull must not hold the lock for ever.
        client
            .run(
                &Call::write(["pull", "-q", image.value.as_str()])
                    .with_timeout(Duration::from_secs(1800)),
            )
            .map_err(|e| DeployError {
                stage: Stage::Pull,
                error: Error::Refused(format!(
                    "cannot pull {} ({service}, from {}): is it built and pushed, and may this manager pull it? {e}",
                    image.value, image.origin
                )),
            })?;
    }
    Ok(())
}

/// What the stages before the pull decided.
#[derive(Debug)]
pub struct Prepared {
    pub release: Release,
    /// Held until the deploy ends.
    pub lock: DeployLock,
    /// What `docker stack deploy` expands in the stack file.
    pub vars: BTreeMap<String, String>,
    /// The node that keeps the database, for a stack with one.
    pub db_node: Option<String>,
    /// The commit deployed, for the record.
    pub provenance: Provenance,
    /// `--from`: the install, undone unless the deploy stage begins.
    pub pending: Option<crate::release::Pending>,
}

/// The deploy's first stages — read, lock, validate — returning what the later ones need.
/// Nothing in the swarm changes here, but for a review stack's first password secret (it
/// belongs to the stack) and placement labels a one-node swarm gets.
pub fn prepare(
    client: &Client<'_>,
    request: &Request,
    progress: Progress<'_>,
) -> Result<Prepared, DeployError> {
    // The settings say how long to wait for the lock; everything is read again once it is
    // held, as the copy step may swap the release meanwhile.
    let (_, early) = match &request.install {
        Some(install) => {
            crate::release::check(&install.from, &request.env, request.review.is_some())
                .at(Stage::Read)?;
            read_settings_in(request, &install.from)?
        }
        None => read_settings(request)?,
    };
    let mut provenance = Provenance::from_settings(
        request.env_var("CI_COMMIT_SHA"),
        request.env_var("CI_PIPELINE_URL"),
        request.env_var("COMMIT_ANCESTORS"),
    )
    .map_err(|m| DeployError {
        stage: Stage::Read,
        error: Error::Refused(m),
    })?;
    provenance.note = request.note.clone();
    let allow_older = request.allow_older
        || crate::settings::flag("ALLOW_OLDER", request.env_var("ALLOW_OLDER")).map_err(|m| {
            DeployError {
                stage: Stage::Read,
                error: Error::Refused(m),
            }
        })?;
    let env_dir = request.env_dir();
    let what = match request.review {
        Some(iid) => format!("review-{iid} deploy"),
        None => format!("{} deploy", request.env),
    };
    let lock = match request.env_var("STACKSHIP_DEPLOY_LOCK_FD") {
        _ if request.lock_held_here => DeployLock::held_here(&env_dir),
        // A caller that swapped this release in under the lock passes it down.
        Some(fd) => {
            let lock = DeployLock::inherited(&env_dir, fd).at(Stage::Lock)?;
            progress(&format!("holding the {what} lock (taken by the caller)"));
            lock
        }
        None => {
            let lock = DeployLock::acquire(
                &env_dir,
                &what,
                &request.owner,
                early.lock_wait.value,
                progress,
            )
            .at(Stage::Lock)?;
            progress(&format!("holding the {what} lock"));
            lock
        }
    };
    // Before the install: a refused release must not become current/.
    let records =
        rollout_watcher::history::read_all(&env_dir.join("history")).map_err(|e| DeployError {
            stage: Stage::Validate,
            error: Error::Records(format!("{e:#}")),
        })?;
    // Deploys that name no commit (by hand, a local bring-up) do not reset the comparison.
    let running = records.iter().rev().find(|r| r.commit.is_some());
    match crate::ancestry::check(running, &provenance, allow_older) {
        Ok(line) => progress(&line),
        Err(why) => return refused(Stage::Validate, why),
    }
    if let Some(last) = records.last()
        && request.note.is_none()
        && let Some(to) = crate::commands::rollback::rolled_back_to(last)
    {
        progress(&format!(
            "WARNING: the last deploy ({}) rolled {} back to deploy {to}; this deploys the release in {} over it",
            last.id,
            request.env,
            request
                .install
                .as_ref()
                .map_or(&request.release, |i| &i.from)
                .display()
        ));
    }
    let pending = match &request.install {
        Some(install) => Some(install_release(request, install, &lock, progress)?),
        None => None,
    };
    let release = read(request)?;
    let names: Vec<String> = release
        .content_names
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    progress(&format!(
        "content names: {}",
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(" ")
        }
    ));
    for w in &release.settings.warnings {
        progress(&format!("WARNING: {w}"));
    }
    let info = client
        .run(&Call::read([
            "info",
            "--format",
            "{{.Swarm.ControlAvailable}}",
        ]))
        .at(Stage::Validate)?;
    if info.trim() != "true" {
        return refused(Stage::Validate, "this engine is not a swarm manager");
    }
    let mut extra = Vec::new();
    if let Some(iid) = request.review {
        let port = prepare_review(client, request, &release, iid, progress)?;
        extra.push(("REVIEW_PORT", port.to_string()));
    }
    let secret = db_password_secret(client, request)?;
    progress(&format!("database password: {secret}"));
    extra.push(("DB_PASSWORD_SECRET", secret));
    let vars = deploy_vars(&release, &extra);
    check_externals(client, &release, &vars)?;
    validate_stack_file(client, request, &vars, progress)?;
    let db_node = check_placement(client, request, &release, progress)?;
    Ok(Prepared {
        release,
        lock,
        vars,
        db_node,
        provenance,
        pending,
    })
}

/// The install before a deploy (`--from`): the upload's secret files, then the swap, all under
/// the deploy's lock; `current/` is then the release this deploy reads.
fn install_release(
    request: &Request,
    install: &Install,
    lock: &DeployLock,
    progress: Progress<'_>,
) -> Result<crate::release::Pending, DeployError> {
    let env_dir = request.env_dir();
    let (pending, names) =
        crate::release::install(&env_dir, &install.from, install.secrets.as_deref(), lock)
            .at(Stage::Install)?;
    if !names.is_empty() {
        progress(&format!(
            "installed {} from the upload in {}",
            names.join(" and "),
            env_dir.join("secrets").display()
        ));
    }
    progress(&format!(
        "release installed: {} (the previous one comes back if this deploy stops before the deploy stage)",
        env_dir.join("current").display()
    ));
    Ok(pending)
}

/// Stage 3, part: `docker stack config` validates the stack file with the deploy's variables
/// (CLIs without that subcommand leave validation to the deploy).
pub fn validate_stack_file(
    client: &Client<'_>,
    request: &Request,
    vars: &BTreeMap<String, String>,
    progress: Progress<'_>,
) -> Result<(), DeployError> {
    let help = client
        .run(&Call::read(["stack", "--help"]))
        .unwrap_or_default();
    let has_config = help.lines().any(|l| {
        let mut words = l.split_whitespace();
        l.starts_with(char::is_whitespace) && words.next() == Some("config")
    });
    if !has_config {
        progress(
            "this docker CLI has no `docker stack config`: stack file validation left to the deploy",
        );
        return Ok(());
    }
    let compose = request.compose().display().to_string();
    client
        .run(
            &Call::read(["stack", "config", "-c", compose.as_str()])
                .with_env(vars.iter().map(|(k, v)| (k.clone(), v.clone())))
                .in_dir(&request.release),
        )
        .map_err(|e| DeployError {
            stage: Stage::Validate,
            error: Error::Refused(format!("{compose} is not a valid stack file: {e}")),
        })?;
    Ok(())
}

/// Stage 3, part: placement labels (see [`crate::placement`]); returns the database node.
pub fn check_placement(
    client: &Client<'_>,
    request: &Request,
    release: &Release,
    progress: Progress<'_>,
) -> Result<Option<String>, DeployError> {
    let self_id = client
        .run(&Call::read(["info", "--format", "{{.Swarm.NodeID}}"]))
        .at(Stage::Validate)?
        .trim()
        .to_owned();
    let ids = client
        .lines(&Call::read(["node", "ls", "-q"]))
        .at(Stage::Validate)?;
    let mut args = vec!["node".to_owned(), "inspect".to_owned()];
    args.extend(ids);
    let text = client.run(&Call::read(args)).at(Stage::Validate)?;
    let nodes = crate::placement::parse_nodes(&text).map_err(|m| DeployError {
        stage: Stage::Validate,
        error: Error::Refused(m),
    })?;
    let database = request.review.is_none() && release.stack.has("postgres");
    let plan = crate::placement::decide(
        &nodes,
        &self_id,
        &request.env,
        database,
        release.settings.login.is_some(),
    )
    .map_err(|m| DeployError {
        stage: Stage::Validate,
        error: Error::Refused(m),
    })?;
    for w in &plan.warnings {
        progress(&format!("WARNING: {w}"));
    }
    for add in &plan.add {
        progress(&format!(
            "labelling node {} {}=true ({})",
            add.hostname, add.label, add.why
        ));
        client
            .run(&Call::write([
                "node",
                "update",
                "--label-add",
                &format!("{}=true", add.label),
                add.node.as_str(),
            ]))
            .at(Stage::Validate)?;
    }
    Ok(plan.db_node)
}

/// The host port of a review stack, or why it has none.
pub fn review_port(base: u16, iid: u32) -> Result<u16, String> {
    u16::try_from(u32::from(base) + iid).map_err(|_| {
        format!("the review port {base} + {iid} is above 65535 (lower REVIEW_PORT_BASE)")
    })
}

/// Stage 3, part, for a review stack: room for it (at most `REVIEW_MAX_STACKS`; a redeploy of
/// this one always fits), its port, and its database password — a secret made from random
/// bytes at its first deploy, never on disk, labelled with the stack so `docker stack rm`
/// removes it. Returns the review port.
pub fn prepare_review(
    client: &Client<'_>,
    request: &Request,
    release: &Release,
    iid: u32,
    progress: Progress<'_>,
) -> Result<u16, DeployError> {
    let stack = request.stack();
    let max = release.settings.review_max_stacks.value as usize;
    let others: Vec<String> = client
        .lines(&Call::read(["stack", "ls", "--format", "{{.Name}}"]))
        .at(Stage::Validate)?
        .into_iter()
        .filter(|n| {
            n.strip_prefix(&format!("{PROJECT}-review-"))
                .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
                && *n != stack
        })
        .collect();
    if others.len() >= max {
        return refused(
            Stage::Validate,
            format!(
                "{max} review stacks already run ({}): stop one (review-stop) or raise REVIEW_MAX_STACKS in {}",
                others.join(" "),
                request.settings_file().display()
            ),
        );
    }
    let port =
        review_port(release.settings.review_port_base.value, iid).map_err(|m| DeployError {
            stage: Stage::Validate,
            error: Error::Refused(m),
        })?;
    let prefix = format!("{stack}-db-password-v");
    let existing = client
        .lines(&Call::read([
            "secret",
            "ls",
            "--filter",
            &format!("name={prefix}"),
            "--format",
            "{{.Name}}",
        ]))
        .at(Stage::Validate)?;
    if newest_version(existing.iter().map(String::as_str), &prefix).is_none() {
        let name = format!("{prefix}1");
        progress(&format!(
            "creating the review database password {name} (random, never on disk)"
        ));
        let password = crate::commands::secret::random_password(32).at(Stage::Validate)?;
        client
            .run(
                &Call::write([
                    "secret",
                    "create",
                    "--label",
                    &format!("com.docker.stack.namespace={stack}"),
                    name.as_str(),
                    "-",
                ])
                .with_stdin(password),
            )
            .at(Stage::Validate)?;
    }
    progress(&format!("review stack {stack}: http port {port}"));
    Ok(port)
}

/// Where environments keep Postgres's data by default (the stack files bind-mount it).
pub const DATA_ROOT: &str = "/data/stackship/data";

/// Postgres's user in its image: the data directory must belong to it.
pub const POSTGRES_UID: u32 = 999;

/// What the deploy does to a local data directory, decided from what is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataDirAction {
    /// Exists, belongs to Postgres's user.
    Nothing,
    /// Missing: create it (0700, Postgres's user).
    Create,
    /// Exists with another owner: give it to Postgres's user.
    Chown,
    /// Missing or empty where a database is expected: the label moved or the data is gone.
    Refuse,
}

/// The decision for a data directory on this node. `allow_new`: the stack has no database
/// service yet (its first deploy) or `NEW_DATABASE=1`.
pub fn data_dir_action(
    exists: bool,
    empty: bool,
    readable: bool,
    owner: Option<u32>,
    allow_new: bool,
) -> DataDirAction {
    // An unreadable directory (not root) is not an empty one.
    let missing_data = !exists || (readable && empty);
    if missing_data && !allow_new {
        return DataDirAction::Refuse;
    }
    if !exists {
        return DataDirAction::Create;
    }
    if owner != Some(POSTGRES_UID) {
        DataDirAction::Chown
    } else {
        DataDirAction::Nothing
    }
}

fn chown_tree(path: &Path) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(POSTGRES_UID), Some(POSTGRES_UID))?;
    if path.is_dir() && !path.is_symlink() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path())?;
        }
    }
    Ok(())
}

/// Stage 5, part: Postgres's data directory exists on its node and belongs to Postgres's user
/// (the server never runs as root and cannot take the directory over itself). On this node the
/// deploy does it; on another, a one-off task pinned there (Postgres's image as root with
/// CHOWN, DAC_OVERRIDE and FOWNER, the node's / mounted, for the seconds it runs), unless
/// Postgres already runs there. A missing or empty directory is created only for a stack
/// without a database service yet or with `NEW_DATABASE=1`.
pub fn prepare_data_dir(
    client: &Client<'_>,
    request: &Request,
    release: &Release,
    db_node: &str,
    progress: Progress<'_>,
) -> Result<(), DeployError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let stack = request.stack();
    let dir = request
        .data_root
        .join(&request.env)
        .join("postgres")
        .display()
        .to_string();
    let service = format!("{stack}_postgres");
    let exists_already = client
        .run(&Call::read(["service", "inspect", service.as_str()]))
        .is_ok();
    let allow_new = request.env_var("NEW_DATABASE") == Some("1") || !exists_already;
    let self_id = client
        .run(&Call::read(["info", "--format", "{{.Swarm.NodeID}}"]))
        .at(Stage::Prepare)?
        .trim()
        .to_owned();
    let host = client
        .run(&Call::read([
            "node",
            "inspect",
            db_node,
            "--format",
            "{{.Description.Hostname}}",
        ]))
        .at(Stage::Prepare)?
        .trim()
        .to_owned();
    let refusal = format!(
        "there is no database in {dir} on node {host} (label {}), but {service} exists: the label moved or the data is gone, and Postgres would start an EMPTY database. Move the label back, or restore a backup there; to start an empty database on purpose, deploy with NEW_DATABASE=1",
        crate::placement::db_label(&request.env)
    );
    if db_node == self_id {
        let path = Path::new(&dir);
        let meta = std::fs::metadata(path).ok();
        let listing = std::fs::read_dir(path);
        let readable = listing.is_ok();
        let empty = listing.map(|mut l| l.next().is_none()).unwrap_or(false);
        let action = data_dir_action(
            meta.is_some(),
            empty,
            readable,
            meta.as_ref().map(MetadataExt::uid),
            allow_new,
        );
        match action {
            DataDirAction::Refuse => return refused(Stage::Prepare, refusal),
            DataDirAction::Nothing => {}
            DataDirAction::Create => {
                std::fs::create_dir_all(path)
                    .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)))
                    .and_then(|()| chown_tree(path))
                    .map_err(|e| DeployError {
                        stage: Stage::Prepare,
                        error: Error::Refused(format!(
                            "cannot create {dir}: {e} (as root: install -d -m 0700 -o 999 -g 999 {dir}; setup-server.sh does it)"
                        )),
                    })?;
                progress(&format!("created {dir} for Postgres (uid {POSTGRES_UID})"));
            }
            DataDirAction::Chown => {
                progress(&format!(
                    "giving {dir} to uid {POSTGRES_UID} (Postgres's user)"
                ));
                chown_tree(path)
                    .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)))
                    .map_err(|e| DeployError {
                        stage: Stage::Prepare,
                        error: Error::Refused(format!(
                            "{dir} must belong to uid {POSTGRES_UID}, Postgres's user: {e} (as root: chown -R 999:999 {dir})"
                        )),
                    })?;
            }
        }
        return Ok(());
    }
    // Another node: nothing to do while Postgres runs there.
    let running = client
        .lines(&Call::read([
            "service",
            "ps",
            service.as_str(),
            "--filter",
            &format!("node={db_node}"),
            "--filter",
            "desired-state=running",
            "--format",
            "{{.CurrentState}}",
        ]))
        .unwrap_or_default();
    if running.iter().any(|l| l.starts_with("Running")) {
        return Ok(());
    }
    let image = release
        .settings
        .images
        .get("postgres")
        .map(|i| i.value.clone())
        .ok_or_else(|| DeployError {
            stage: Stage::Prepare,
            error: Error::Refused(
                "the stack has no postgres image to prepare its data directory with".into(),
            ),
        })?;
    let helper = format!("{stack}-datadir-{}", std::process::id());
    progress(&format!(
        "preparing {dir} on node {host} (one-off task {helper})"
    ));
    let script = r#"d="/host$1"
if [ ! -d "$d" ] || [ -z "$(ls -A "$d")" ]; then [ "$2" = 1 ] || exit 3; fi
[ -d "$d" ] || install -d -m 0700 -o 999 -g 999 "$d" || exit 1
if [ "$(stat -c %u "$d")" != 999 ]; then chown -R 999:999 "$d" && chmod 0700 "$d" || exit 1; fi"#;
    let spec = crate::helper::Spec {
        name: helper.clone(),
        what: "deploy".to_owned(),
        image,
        entrypoint: Some("sh".to_owned()),
        args: vec![
            "-c".to_owned(),
            script.to_owned(),
            "sh".to_owned(),
            dir.clone(),
            if allow_new { "1" } else { "0" }.to_owned(),
        ],
        node: Some(db_node.to_owned()),
        mounts: vec!["type=bind,source=/,target=/host".to_owned()],
        user: Some("0:0".to_owned()),
        // Only what a chown of Postgres's directory needs, on top of none.
        caps_add: vec![
            "CAP_CHOWN".to_owned(),
            "CAP_DAC_OVERRIDE".to_owned(),
            "CAP_FOWNER".to_owned(),
        ],
        ..crate::helper::Spec::default()
    };
    let wait = crate::helper::Wait {
        limit: Duration::from_secs(300),
        poll: Duration::from_secs(1),
        stop: &request.stop,
    };
    // Removed however the wait ends (an error, Ctrl-C); only a process killed outright leaves
    // it, labelled stackship.ops-helper=deploy.
    match crate::helper::run(client, &spec, &wait, progress) {
        Ok(_) => {
            progress(&format!(
                "{dir} on node {host} belongs to uid {POSTGRES_UID}"
            ));
            Ok(())
        }
        Err(crate::helper::HelperError::Failed { exit: Some(3), .. }) => {
            refused(Stage::Prepare, refusal)
        }
        Err(e) => refused(
            Stage::Prepare,
            format!("preparing {dir} on node {host} failed: {e}"),
        ),
    }
}

/// How the rollout ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    /// Done, RolledBack (every failed service is back on its old image) or Unknown.
    pub outcome: Outcome,
    /// One line per service (old → new image, how it ended).
    pub summary: String,
    /// The whole report (rollout-watcher's JSON), as written to `last-rollout.json`.
    pub report: String,
}

/// The rollout's own steps, behind a trait so the orchestration is tested without Docker:
/// the real one is rollout-watcher's library.
pub trait Rollout {
    /// Records the stack just before the deploy (`None` when it cannot).
    fn snapshot(&self, stack: &str) -> Result<rollout_watcher::watch::Snapshot, String>;
    /// Follows the rollout to a verdict; progress lines go to `progress`, the report to
    /// `report_file`; `on_sample` sees every service not yet settled at each poll (the
    /// canary gates).
    fn watch(
        &self,
        snapshot: &rollout_watcher::watch::Snapshot,
        options: &rollout_watcher::watch::Options,
        report_file: &Path,
        progress: &mut dyn std::io::Write,
        on_sample: &mut OnSample<'_>,
    ) -> Result<Watched, String>;
    /// Writes the deploy record of what runs now, unless it is the last record again.
    fn record(
        &self,
        stack: &str,
        history: &Path,
        provenance: &Provenance,
    ) -> Result<Recorded, String>;
    /// Removes the stack's configs and secrets that neither the current or previous specs nor
    /// the last `keep` records use; returns one line per object removed or kept by an error.
    fn prune(&self, stack: &str, history: &Path, keep: usize) -> Result<Vec<String>, String>;
}

/// What a watch calls with each sample of a service not yet settled.
pub type OnSample<'a> =
    dyn FnMut(&rollout_watcher::watch::Sample<'_>, &mut dyn std::io::Write) + 'a;

/// An [`OnSample`] that does nothing (a watch without canary gates).
pub fn no_gates(_: &rollout_watcher::watch::Sample<'_>, _: &mut dyn std::io::Write) {}

/// What [`Rollout::record`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// A new record, at this path.
    Written(PathBuf),
    /// Nothing changed since this record (same services, specs and commit): none added, so a
    /// no-op deploy does not push a real release out of the prune's window.
    Unchanged(String),
}

/// Whether `new` records the same release as `last`: every service's image, configs, secrets
/// and spec, and the commit.
pub fn same_release(
    last: &rollout_watcher::history::DeployRecord,
    new: &rollout_watcher::history::DeployRecord,
) -> bool {
    last.stack == new.stack && last.commit == new.commit && last.services == new.services
}

/// What a watch report means for the environment: every service ok — done; every failed
/// service back on the image it ran before (Swarm rolled it back) — the old version serves;
/// anything else (paused, timed out, a first deploy crash-looping) — the state is unknown.
pub fn outcome_of(report: &rollout_watcher::watch::Report) -> Outcome {
    if report.ok {
        return Outcome::Done;
    }
    let rolled_back = report
        .services
        .iter()
        .filter(|s| s.result != "ok")
        .all(|s| {
            s.detail.starts_with("rolled back")
                && !s.old_image.is_empty()
                && s.final_image == s.old_image
        });
    if rolled_back {
        Outcome::RolledBack
    } else {
        Outcome::Unknown
    }
}

/// Adds what the canary gates found to `watched`: their verdicts lead its summary, and a gate
/// that wanted its service back makes a rollout the watch found done fail: rolled back when
/// Swarm finished the gate's rollback, unknown otherwise (never a success). A gate whose
/// service this deploy updated without a new task seen serving is said so; one whose service
/// this deploy did not change says nothing.
pub fn gate_findings(
    gates: &[crate::canary::Gate],
    watched: &mut Watched,
    say: &mut dyn FnMut(&str),
) {
    let mut lines = String::new();
    let watch_said = watched.outcome;
    for gate in gates {
        if gate.interrupted() {
            lines.push_str(&format!(
                "{}: canary not judged (the deploy was interrupted)\n",
                gate.service()
            ));
            if watched.outcome == Outcome::Done {
                watched.outcome = Outcome::Unknown;
            }
            say(&format!(
                "the canary gate of {} was interrupted before it judged the new version: check with `stackship status`",
                gate.service()
            ));
            fail_in_report(
                &mut watched.report,
                gate.service(),
                "canary not judged: the deploy was interrupted",
                false,
            );
            continue;
        }
        if gate.missed() {
            lines.push_str(&format!(
                "{}: canary not judged (this deploy updated it, and no new task was seen serving)\n",
                gate.service()
            ));
        }
        let Some(f) = gate.finding() else { continue };
        // (its log lines were said as it failed; the watch's report shows the task's)
        lines.push_str(&format!("{f}\n"));
        if !f.fails() || watch_said == Outcome::Unknown {
            continue;
        }
        let full = gate.full_name();
        let (outcome, why) = match (&f.settled_back, f.rolled_back) {
            (_, false) => (
                Outcome::Unknown,
                format!(
                    "the canary gate of {} could not roll it back: run `docker service rollback {full}`, then `stackship status`",
                    f.service
                ),
            ),
            (Some(Ok(())), true) => (
                Outcome::RolledBack,
                format!(
                    "the canary gate of {} rolled it back after the rollout had settled; the old version serves",
                    f.service
                ),
            ),
            (Some(Err(e)), true) => (
                Outcome::Unknown,
                format!(
                    "the canary gate of {} rolled it back after the rollout had settled, and then: {e}; check with `stackship status`",
                    f.service
                ),
            ),
            // Started during the rollout: the watch followed Swarm's rollback.
            (None, true) if watch_said == Outcome::RolledBack => continue,
            (None, true) => (
                Outcome::Unknown,
                format!(
                    "the canary gate of {} rolled it back after Swarm reported the rollout done: check with `stackship status`",
                    f.service
                ),
            ),
        };
        if watched.outcome == Outcome::Done || outcome == Outcome::Unknown {
            watched.outcome = outcome;
        }
        fail_in_report(
            &mut watched.report,
            gate.service(),
            &format!("canary gate: {f}"),
            outcome == Outcome::RolledBack,
        );
        say(&why);
    }
    watched.summary = lines + &watched.summary;
}

/// Marks `service` failed in a watch report (JSON text) with `detail`, and the report not ok;
/// `final_image_old`: the service runs its old image again. The text is kept when it is not a
/// report (a test's stand-in).
fn fail_in_report(report: &mut String, service: &str, detail: &str, final_image_old: bool) {
    let Ok(mut r) = serde_json::from_str::<serde_json::Value>(report) else {
        return;
    };
    let Some(services) = r.get_mut("services").and_then(|s| s.as_array_mut()) else {
        return;
    };
    for s in services.iter_mut().filter(|s| {
        s.get("service")
            .and_then(|n| n.as_str())
            .is_some_and(|n| n == service || n.rsplit_once('_').is_some_and(|(_, n)| n == service))
    }) {
        s["result"] = "failed".into();
        s["detail"] = detail.into();
        if final_image_old {
            s["final_image"] = s["old_image"].clone();
        }
    }
    r["ok"] = false.into();
    if let Ok(text) = serde_json::to_string_pretty(&r) {
        *report = text + "\n";
    }
}

/// rollout-watcher's library, on the docker CLI.
pub struct WatcherRollout;

impl Rollout for WatcherRollout {
    fn snapshot(&self, stack: &str) -> Result<rollout_watcher::watch::Snapshot, String> {
        rollout_watcher::watch::snapshot(stack).map_err(|e| format!("{e:#}"))
    }

    fn watch(
        &self,
        snapshot: &rollout_watcher::watch::Snapshot,
        options: &rollout_watcher::watch::Options,
        report_file: &Path,
        progress: &mut dyn std::io::Write,
        on_sample: &mut OnSample<'_>,
    ) -> Result<Watched, String> {
        let report = rollout_watcher::watch::watch_with(snapshot, options, progress, on_sample)
            .map_err(|e| format!("{e:#}"))?;
        let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())? + "\n";
        std::fs::write(report_file, &text)
            .map_err(|e| format!("cannot write {}: {e}", report_file.display()))?;
        Ok(Watched {
            outcome: outcome_of(&report),
            summary: rollout_watcher::watch::summary(&report),
            report: text,
        })
    }

    fn record(
        &self,
        stack: &str,
        history: &Path,
        provenance: &Provenance,
    ) -> Result<Recorded, String> {
        let services: Vec<_> = rollout_watcher::docker::stack_services(stack)
            .map_err(|e| format!("{e:#}"))?
            .into_iter()
            .map(|s| s.service)
            .collect();
        let id = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ").to_string();
        let mut record = rollout_watcher::history::record_of(&id, stack, &services);
        record.commit = provenance.commit.clone();
        record.pipeline = provenance.pipeline.clone();
        record.ancestors = provenance.ancestors.clone();
        record.note = provenance.note.clone();
        record.started = provenance.started.clone();
        let records = rollout_watcher::history::read_all(history).map_err(|e| format!("{e:#}"))?;
        if let Some(last) = records.last().filter(|last| same_release(last, &record)) {
            return Ok(Recorded::Unchanged(last.id.clone()));
        }
        rollout_watcher::history::write(history, &record)
            .map(Recorded::Written)
            .map_err(|e| format!("{e:#}"))
    }

    fn prune(&self, stack: &str, history: &Path, keep: usize) -> Result<Vec<String>, String> {
        use rollout_watcher::{docker, prune};
        let services = docker::stack_services(stack).map_err(|e| format!("{e:#}"))?;
        let records = rollout_watcher::history::read_all(history).map_err(|e| format!("{e:#}"))?;
        let (configs, secrets) = prune::kept_names(&services, &records, keep);
        let mut lines = Vec::new();
        for (kind, kept) in [("config", &configs), ("secret", &secrets)] {
            let all = docker::stack_objects(kind, stack).map_err(|e| format!("{e:#}"))?;
            for object in prune::removable(&all, kept) {
                match docker::docker(&[kind, "rm", &object.id]) {
                    Ok(_) => lines.push(format!("removed {kind} {}", object.name)),
                    Err(e) => lines.push(format!("could not remove {kind} {}: {e:#}", object.name)),
                }
            }
        }
        Ok(lines)
    }
}

/// Whether this docker CLI knows `docker stack deploy --detach` (older CLIs never wait and
/// refuse the flag).
fn has_detach_flag(client: &Client<'_>) -> bool {
    client
        .run(&Call::read(["stack", "deploy", "--help"]))
        .map(|help| help.contains("--detach"))
        .unwrap_or(false)
}

/// How long `docker stack deploy` may take: it only hands the specs to Swarm, but a manager
/// under load or a slow registry lookup (`--with-registry-auth` resolves digests) can take
/// minutes; past this the state is unknown and the deploy says so.
const STACK_DEPLOY_TIMEOUT: Duration = Duration::from_secs(1800);

/// One progress line: time, `[stackship]`, the message.
pub fn progress_line(out: &mut dyn std::io::Write, message: &str) {
    let _ = writeln!(
        out,
        "{} [stackship] {message}",
        chrono::Utc::now().format("%H:%M:%S")
    );
}

/// `2026-12-06T19:40:46.123Z`: what `docker service logs --since` takes.
pub fn rfc3339_millis(time: chrono::DateTime<chrono::Utc>) -> String {
    time.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// The whole deploy: [`prepare`], then the stages that change the swarm. Returns
/// what the rollout came to (outcome, summary, report); progress goes to `progress`.
pub fn deploy(
    client: &Client<'_>,
    rollout: &dyn Rollout,
    request: &Request,
    progress: &mut dyn std::io::Write,
) -> Result<Watched, DeployError> {
    let mut say = |m: &str| progress_line(progress, m);
    let mut prepared = prepare(client, request, &mut say)?;
    let pending = prepared.pending.take();
    let (release, vars) = (&prepared.release, &prepared.vars);
    let stack = request.stack();
    pull(client, release, &mut say)?;
    if let Some(node) = &prepared.db_node {
        prepare_data_dir(client, request, release, node, &mut say)?;
    }
    let snapshot = rollout.snapshot(&stack).map_err(|m| DeployError {
        stage: Stage::Prepare,
        error: Error::Refused(format!("cannot take a snapshot of {stack}: {m}")),
    })?;
    let tags: Vec<String> = release
        .settings
        .images
        .iter()
        .filter(|(svc, _)| {
            release.stack.services.iter().any(|s| {
                &s.name == *svc && matches!(s.image, crate::stack::ImageSource::Tagged { .. })
            })
        })
        .map(|(svc, image)| format!("{svc} {}", image.value.rsplit(':').next().unwrap_or("")))
        .collect();
    // The deploy stage begins: the installed release stays, whatever happens next.
    if let Some(p) = pending {
        p.commit();
    }
    let deployed = chrono::Utc::now();
    prepared.provenance.started = Some(rfc3339_millis(deployed));
    say(&format!(
        "docker stack deploy {stack} ({})",
        tags.join(", ")
    ));
    let compose = request.compose().display().to_string();
    let mut args = vec!["stack", "deploy", "--with-registry-auth", "--prune"];
    if has_detach_flag(client) {
        // The rollout is watched below; newer CLIs would otherwise wait (and exit 0 after a
        // rollback).
        args.push("--detach=true");
    }
    args.extend(["-c", compose.as_str(), stack.as_str()]);
    let output = client
        .run(
            &Call::write(args)
                .with_env(vars.iter().map(|(k, v)| (k.clone(), v.clone())))
                .in_dir(&request.release)
                .passing_stderr()
                .with_timeout(STACK_DEPLOY_TIMEOUT),
        )
        .map_err(|e| DeployError {
            stage: Stage::Deploy,
            error: Error::Refused(format!("docker stack deploy failed: {e}")),
        })?;
    for line in output.lines().filter(|l| !l.trim().is_empty()) {
        say(line.trim_end());
    }
    say(&format!("following the rollout of {stack}"));
    let s = &release.settings;
    let options = rollout_watcher::watch::Options {
        timeout: s.rollout_timeout.as_ref().map(|t| t.value),
        poll: Duration::from_secs(1),
        rules: rollout_watcher::assess::Rules {
            max_task_failures: s.max_task_failures.value,
            confirm_after: Duration::from_secs(1),
            ..rollout_watcher::assess::Rules::default()
        },
        log_lines: 20,
    };
    let env_dir = request.env_dir();
    let report_file = env_dir.join("last-rollout.json");
    let mut gates: Vec<crate::canary::Gate> = release
        .stack
        .services
        .iter()
        .filter_map(|s| {
            let canary = s.canary.as_ref()?;
            Some(crate::canary::Gate::new(
                &stack,
                &s.name,
                canary,
                snapshot.tasks.clone(),
                snapshot
                    .services
                    .get(&format!("{stack}_{}", s.name))
                    .map(|b| b.update.clone()),
            ))
        })
        .collect();
    let mut on_sample = |sample: &rollout_watcher::watch::Sample<'_>,
                         out: &mut dyn std::io::Write| {
        for gate in gates.iter_mut().filter(|g| g.full_name() == sample.name) {
            gate.sample(
                client,
                sample.service,
                sample.tasks,
                std::time::Instant::now(),
                chrono::Utc::now(),
                &mut |m| progress_line(out, m),
            );
        }
    };
    let mut watched = rollout
        .watch(&snapshot, &options, &report_file, progress, &mut on_sample)
        .map_err(|m| DeployError {
            stage: Stage::Watch,
            error: Error::Refused(format!("could not follow {stack}: {m}")),
        })?;
    let mut say = |m: &str| progress_line(progress, m);
    for gate in gates.iter_mut().filter(|g| g.is_watching()) {
        gate.finish(
            client,
            &mut |until| {
                crate::interrupt::sleep_until(until, &request.stop, Duration::from_millis(200))
                    .then(std::time::Instant::now)
            },
            &mut say,
        );
    }
    let reported = watched.report.clone();
    gate_findings(&gates, &mut watched, &mut say);
    if watched.report != reported {
        // What the gates found, in the report too (`--json`, last-rollout.json).
        if let Err(e) = std::fs::write(&report_file, &watched.report) {
            say(&format!(
                "WARNING: cannot write {}: {e}",
                report_file.display()
            ));
        }
    }
    if watched.outcome != Outcome::Done {
        say(&format!(
            "rollout of {stack} FAILED: {} (see above; report: {})",
            watched.outcome.meaning(),
            report_file.display()
        ));
        return Ok(watched);
    }
    say(&format!("rollout of {stack} complete"));
    let recorded = match rollout.record(&stack, &env_dir.join("history"), &prepared.provenance) {
        Ok(Recorded::Written(path)) => {
            say(&format!("deploy recorded in {}", path.display()));
            true
        }
        Ok(Recorded::Unchanged(id)) => {
            say(&format!("nothing changed since deploy {id}: no new record"));
            true
        }
        // The release runs; without its record a rollback, drift and the prune know less.
        Err(m) => {
            say(&format!(
                "WARNING: the rollout succeeded but cannot be recorded: {m}; the prune is skipped (it keeps what records name)"
            ));
            false
        }
    };
    if recorded {
        say(&format!(
            "pruning unused configs and secrets of {stack} (keeping the last {} deploys)",
            s.prune_keep.value
        ));
        match rollout.prune(&stack, &env_dir.join("history"), s.prune_keep.value) {
            Ok(lines) => {
                lines.iter().for_each(|l| say(l));
                if lines.iter().any(|l| l.starts_with("could not remove")) {
                    say(
                        "WARNING: prune left some objects (see above); the deploy itself succeeded",
                    );
                }
            }
            Err(m) => say(&format!(
                "WARNING: prune left some objects ({m}); the deploy itself succeeded"
            )),
        }
    }
    say(&format!("{stack} deployed"));
    Ok(watched)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::fake::FakeEngine;
    use std::fs;

    const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    /// A release like the copy step makes, in a temporary root.
    struct Fixture {
        _root: tempfile::TempDir,
        request: Request,
    }

    fn fixture(deploy_env: &str) -> Fixture {
        let root = tempfile::tempdir().unwrap();
        let env_dir = root.path().join("prod");
        let release = env_dir.join("current");
        let manifests = release.join("deploy-manifests/prod/backend");
        fs::create_dir_all(&manifests).unwrap();
        fs::write(manifests.join("config.toml"), "title = \"x\"\n").unwrap();
        fs::write(
            release.join("deploy-manifests/prod/images.env"),
            format!("BACKEND_TAG=20261206_aaaaaaaa\nPOSTGRES_IMAGE=postgres:15@{DIGEST}\n"),
        )
        .unwrap();
        fs::write(
            release.join("docker-compose.prod.yaml"),
            "services:\n  backend:\n    image: ${REGISTRY}/stackship/backend:${BACKEND_TAG}\n    configs: [backend_config]\n    secrets: [db_password]\n  postgres:\n    image: ${POSTGRES_IMAGE}\nconfigs:\n  backend_config:\n    name: ${PROD_BACKEND_CONFIG}\n    file: ./deploy-manifests/prod/backend/config.toml\nsecrets:\n  db_password:\n    name: ${DB_PASSWORD_SECRET}\n    external: true\n",
        )
        .unwrap();
        fs::write(env_dir.join("deploy.env"), deploy_env).unwrap();
        let request = Request {
            release,
            env: "prod".into(),
            review: None,
            tag: None,
            timeout: None,
            process_env: BTreeMap::new(),
            owner: "test".into(),
            data_root: root.path().join("data"),
            install: None,
            allow_older: false,
            lock_held_here: false,
            note: None,
            stop: || false,
        };
        Fixture {
            _root: root,
            request,
        }
    }

    fn good_engine() -> FakeEngine {
        let fake = FakeEngine::new();
        fake.answer(
            &["info", "--format", "{{.Swarm.ControlAvailable}}"],
            "true\n",
        );
        fake.answer(
            &["secret", "ls"],
            "stackship-prod-db-password-v1\nstackship-prod-db-password-v12\nstackship-prod-db-password-v3\n",
        );
        fake.answer(
            &["secret", "inspect", "stackship-prod-db-password-v12"],
            "[{}]",
        );
        fake.answer(&["login"], "Login Succeeded\n");
        fake.answer(&["pull"], "");
        fake
    }

    fn quiet() -> impl FnMut(&str) {
        |_: &str| {}
    }

    #[test]
    fn a_good_release_is_read_checked_and_pulled_without_a_change() {
        let f = fixture("REGISTRY=127.0.0.1:5000\nREGISTRY_USER=ci\nREGISTRY_PASSWORD=pw\n");
        let fake = swarm_engine();
        fake.answer(&["login"], "Login Succeeded\n");
        let client = Client::new(&fake);
        let prepared = prepare(&client, &f.request, &mut quiet()).unwrap();
        let vars = &prepared.vars;
        assert_eq!(vars["DB_PASSWORD_SECRET"], "stackship-prod-db-password-v12");
        assert!(vars["PROD_BACKEND_CONFIG"].starts_with("prod_backend_config_"));
        assert_eq!(vars["BACKEND_TAG"], "20261206_aaaaaaaa");
        assert_eq!(prepared.db_node.as_deref(), Some("n1"));
        assert_eq!(
            prepared.release.externals,
            vec![("secret".to_owned(), "${DB_PASSWORD_SECRET}".to_owned())]
        );
        let compose = f.request.compose().display().to_string();
        assert_eq!(
            fake.command_lines(),
            vec![
                "docker info --format {{.Swarm.ControlAvailable}}".to_owned(),
                "docker secret ls --filter name=stackship-prod-db-password-v --format {{.Name}}"
                    .to_owned(),
                "docker secret inspect stackship-prod-db-password-v12".to_owned(),
                "docker stack --help".to_owned(),
                format!("docker stack config -c {compose}"),
                "docker info --format {{.Swarm.NodeID}}".to_owned(),
                "docker node ls -q".to_owned(),
                "docker node inspect n1".to_owned(),
            ]
        );
        assert!(fake.writes().is_empty(), "{:?}", fake.writes());
        pull(&client, &prepared.release, &mut quiet()).unwrap();
        let lines = fake.command_lines();
        assert_eq!(
            lines[8..],
            [
                "docker login --username ci --password-stdin 127.0.0.1:5000".to_owned(),
                "docker pull -q 127.0.0.1:5000/stackship/backend:20261206_aaaaaaaa".to_owned(),
                format!("docker pull -q postgres:15@{DIGEST}"),
            ]
        );
        // The password reaches docker login on stdin only.
        assert_eq!(fake.calls()[8].stdin.as_deref(), Some(&b"pw"[..]));
    }

    #[test]
    fn bad_settings_stop_before_any_docker_call() {
        let f = fixture("REGISTRY=127.0.0.1:5000\nBOGUS=1\n");
        let fake = good_engine();
        let e = prepare(&Client::new(&fake), &f.request, &mut quiet()).unwrap_err();
        assert_eq!(e.stage, Stage::Read);
        assert_eq!(e.outcome(), Outcome::NothingChanged);
        assert!(
            e.to_string().contains("deploy.env:2: unknown key BOGUS"),
            "{e}"
        );
        assert!(fake.calls().is_empty());
    }

    #[test]
    fn a_missing_external_secret_is_refused_before_anything_changes() {
        let f = fixture("REGISTRY=127.0.0.1:5000\n");
        let fake = FakeEngine::new();
        fake.answer(&["info"], "true\n");
        fake.answer(&["secret", "ls"], "stackship-prod-db-password-v2\n");
        fake.fail(
            &["secret", "inspect"],
            "Error: No such secret: stackship-prod-db-password-v2",
        );
        let e = prepare(&Client::new(&fake), &f.request, &mut quiet()).unwrap_err();
        assert_eq!(e.stage, Stage::Validate);
        assert!(
            e.to_string()
                .contains("missing swarm objects: secret stackship-prod-db-password-v2"),
            "{e}"
        );
        assert!(fake.writes().is_empty());
    }

    #[test]
    fn no_password_secret_says_how_to_make_one() {
        let f = fixture("REGISTRY=r\n");
        let fake = FakeEngine::new();
        fake.answer(&["info"], "true\n");
        fake.answer(
            &["secret", "ls"],
            "stackship-prod-db-password-v0\nstackship-prod-db-password-vx\n",
        );
        fake.answer(
            &["secret", "inspect", "stackship-prod-db-bootstrap-password"],
            "[{}]",
        );
        let e = prepare(&Client::new(&fake), &f.request, &mut quiet()).unwrap_err();
        assert!(
            e.to_string()
                .contains("`stackship secret init prod db-password`"),
            "{e}"
        );
        assert!(fake.writes().is_empty());
        // A database service without any password: refused too, nothing made.
        let fake = FakeEngine::new();
        fake.answer(&["secret", "ls"], "");
        fake.fail(&["secret", "inspect"], "Error: No such secret: x");
        fake.answer(&["service", "inspect", "stackship-prod_postgres"], "[{}]");
        let e = db_password_secret(&Client::new(&fake), &f.request).unwrap_err();
        assert!(e.to_string().contains("secret init prod"), "{e}");
        assert!(fake.writes().is_empty());
    }

    #[test]
    fn a_first_deploy_makes_its_password_pair() {
        let f = fixture("REGISTRY=r\n");
        let fake = FakeEngine::new();
        fake.answer(&["secret", "ls"], "");
        fake.fail(&["secret", "inspect"], "Error: No such secret: x");
        fake.fail(&["service", "inspect"], "Error: no such service: x");
        fake.answer(&["secret", "create"], "");
        let name = db_password_secret(&Client::new(&fake), &f.request).unwrap();
        assert_eq!(name, "stackship-prod-db-password-v1");
        let writes = fake.writes();
        assert_eq!(writes.len(), 2, "{writes:?}");
        assert!(writes[0].ends_with("stackship-prod-db-password-v1 -"));
        assert!(writes[1].ends_with("stackship-prod-db-bootstrap-password -"));
    }

    #[test]
    fn a_named_password_secret_must_belong_to_the_stack() {
        let mut f = fixture("REGISTRY=r\n");
        f.request.process_env.insert(
            "DB_PASSWORD_SECRET".into(),
            "stackship-dev-db-password-v1".into(),
        );
        let fake = swarm_engine();
        let e = prepare(&Client::new(&fake), &f.request, &mut quiet()).unwrap_err();
        assert!(
            e.to_string()
                .contains("is not one of stackship-prod-db-password-v<N>"),
            "{e}"
        );
        f.request.process_env.insert(
            "DB_PASSWORD_SECRET".into(),
            "stackship-prod-db-password-v12".into(),
        );
        prepare(&Client::new(&fake), &f.request, &mut quiet()).unwrap();
    }

    #[test]
    fn a_worker_engine_is_refused() {
        let f = fixture("REGISTRY=r\n");
        let fake = FakeEngine::new();
        fake.answer(&["info"], "false\n");
        let e = prepare(&Client::new(&fake), &f.request, &mut quiet()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "validate: this engine is not a swarm manager"
        );
    }

    #[test]
    fn a_missing_image_stops_at_the_pull_naming_it() {
        let f = fixture("REGISTRY=127.0.0.1:5000\n");
        let fake = FakeEngine::new();
        fake.fail(&["pull"], "Error response from daemon: manifest unknown");
        let fake = swarm_answers(fake, "Commands:\n  deploy   x\n");
        let rollout = FakeRollout {
            ok: true,
            steps: Default::default(),
        };
        let mut progress = Vec::new();
        let e = deploy(&Client::new(&fake), &rollout, &f.request, &mut progress).unwrap_err();
        assert_eq!(e.stage, Stage::Pull);
        assert_eq!(e.outcome(), Outcome::NothingChanged);
        let text = e.to_string();
        assert!(
            text.contains(
                "cannot pull 127.0.0.1:5000/stackship/backend:20261206_aaaaaaaa (backend, from"
            ),
            "{text}"
        );
        assert!(text.contains("is it built and pushed"), "{text}");
        assert!(text.contains("manifest unknown"), "{text}");
        assert!(
            fake.writes().iter().all(|w| w.starts_with("docker pull")),
            "{:?}",
            fake.writes()
        );
        assert!(rollout.steps.borrow().is_empty());
        let progress = String::from_utf8(progress).unwrap();
        assert!(
            progress.contains("using the engine's existing login"),
            "{progress}"
        );
        assert!(
            progress.contains("content names: PROD_BACKEND_CONFIG=prod_backend_config_"),
            "{progress}"
        );
    }

    #[test]
    fn a_held_lock_times_out_before_anything_is_asked() {
        let f = fixture("REGISTRY=r\nLOCK_WAIT=0\n");
        let _held = DeployLock::acquire(
            &f.request.env_dir(),
            "x",
            "pid 9 on manager",
            Duration::ZERO,
            &mut quiet(),
        )
        .unwrap();
        let fake = good_engine();
        let e = prepare(&Client::new(&fake), &f.request, &mut quiet()).unwrap_err();
        assert_eq!(e.stage, Stage::Lock);
        assert!(e.to_string().contains("pid 9 on manager"), "{e}");
        assert!(fake.calls().is_empty());
    }

    #[test]
    fn a_missing_release_says_to_run_the_copy_step() {
        let mut f = fixture("");
        f.request.env = "dev".into();
        let e = read(&f.request).unwrap_err();
        assert!(
            e.to_string()
                .contains("docker-compose.dev.yaml is missing (run the copy step for dev)"),
            "{e}"
        );
    }

    #[test]
    fn print_images_names_each_origin() {
        let f = fixture("REGISTRY=127.0.0.1:5000\n");
        let text = images_text(&read(&f.request).unwrap().settings);
        assert!(
            text.starts_with("backend 127.0.0.1:5000/stackship/backend:20261206_aaaaaaaa ("),
            "{text}"
        );
        assert!(text.contains("images.env:1)"), "{text}");
        assert!(
            text.contains(&format!("postgres postgres:15@{DIGEST} (")),
            "{text}"
        );
    }

    #[test]
    fn review_requests_use_their_own_names_and_the_copied_settings() {
        let r = Request {
            release: PathBuf::from("/srv/deploy/review/42/current"),
            env: "dev".into(),
            review: Some(42),
            tag: None,
            timeout: None,
            process_env: BTreeMap::new(),
            owner: String::new(),
            data_root: PathBuf::from("/nonexistent"),
            install: None,
            allow_older: false,
            lock_held_here: false,
            note: None,
            stop: || false,
        };
        assert_eq!(r.stack(), "stackship-review-42");
        assert_eq!(
            r.compose(),
            Path::new("/srv/deploy/review/42/current/docker-compose.review.yaml")
        );
        assert_eq!(r.settings_file(), Path::new("/srv/deploy/dev/deploy.env"));
        assert_eq!(
            r.pins(),
            Path::new("/srv/deploy/review/42/current/deploy-manifests/dev/images.env")
        );
        assert_eq!(r.env_dir(), Path::new("/srv/deploy/review/42"));
    }

    #[test]
    fn versions_and_external_names() {
        assert_eq!(
            newest_version(["p-v1", "p-v10", "p-v9", "p-v01", "q-v99", "p-vx"], "p-v"),
            Some(10)
        );
        assert_eq!(newest_version(["p-v0"], "p-v"), None);
        let vars: BTreeMap<String, String> = [("A".to_owned(), "a1".to_owned())].into();
        assert_eq!(external_name("${A}", &vars).unwrap(), "a1");
        assert_eq!(external_name("plain", &vars).unwrap(), "plain");
        assert!(
            external_name("${B}", &vars)
                .unwrap_err()
                .contains("B is not set")
        );
        assert!(
            external_name("x-${A}", &vars)
                .unwrap_err()
                .contains("exactly one")
        );
        assert!(
            external_name("${1}", &vars)
                .unwrap_err()
                .contains("exactly one")
        );
    }

    #[test]
    fn stages_and_outcomes() {
        let e = |stage| DeployError {
            stage,
            error: Error::Refused("x".into()),
        };
        for s in [
            Stage::Read,
            Stage::Lock,
            Stage::Validate,
            Stage::Pull,
            Stage::Prepare,
        ] {
            assert_eq!(e(s).outcome(), Outcome::NothingChanged, "{s}");
        }
        for s in [Stage::Deploy, Stage::Watch] {
            assert_eq!(e(s).outcome(), Outcome::Unknown, "{s}");
        }
        assert_eq!(e(Stage::Pull).to_string(), "pull: x");
    }

    #[test]
    fn stack_config_runs_with_the_deploys_variables_when_the_cli_has_it() {
        let f = fixture("REGISTRY=r\n");
        let fake = FakeEngine::new();
        fake.answer(
            &["stack", "--help"],
            "Commands:\n  config      Outputs the final config file\n  deploy      Deploy\n",
        );
        fake.fail(
            &["stack", "config"],
            "services.backend Additional property bogus is not allowed",
        );
        let vars: BTreeMap<String, String> = [("A".to_owned(), "1".to_owned())].into();
        let e =
            validate_stack_file(&Client::new(&fake), &f.request, &vars, &mut quiet()).unwrap_err();
        assert!(e.to_string().contains("is not a valid stack file"), "{e}");
        assert!(e.to_string().contains("Additional property bogus"), "{e}");
        assert_eq!(fake.calls()[1].env, vec![("A".to_owned(), "1".to_owned())]);
        let fake = FakeEngine::new();
        fake.answer(&["stack", "--help"], "Commands:\n  deploy      Deploy\n");
        let mut told = Vec::new();
        validate_stack_file(&Client::new(&fake), &f.request, &vars, &mut |m: &str| {
            told.push(m.to_owned())
        })
        .unwrap();
        assert_eq!(fake.calls().len(), 1);
        assert!(told[0].contains("no `docker stack config`"));
    }

    #[test]
    fn placement_labels_a_single_node_and_returns_the_database_node() {
        let f = fixture("REGISTRY=r\n");
        let release = read(&f.request).unwrap();
        let fake = FakeEngine::new();
        fake.answer(&["info"], "n1\n");
        fake.answer(&["node", "ls"], "n1\n");
        fake.answer(&["node", "inspect", "n1"], r#"[{"ID":"n1","Spec":{"Availability":"active"},"Description":{"Hostname":"m"},"Status":{"State":"ready"}}]"#);
        fake.answer(&["node", "update"], "");
        let db = check_placement(&Client::new(&fake), &f.request, &release, &mut quiet()).unwrap();
        assert_eq!(db.as_deref(), Some("n1"));
        assert_eq!(
            fake.writes(),
            vec![
                "docker node update --label-add stackship.edge=true n1",
                "docker node update --label-add stackship.postgres.prod=true n1"
            ]
        );
    }

    #[test]
    fn placement_refusals_change_nothing() {
        let f = fixture("REGISTRY=r\n");
        let release = read(&f.request).unwrap();
        let fake = FakeEngine::new();
        fake.answer(&["info"], "n1\n");
        fake.answer(&["node", "ls"], "n1\nn2\n");
        fake.answer(&["node", "inspect"], r#"[{"ID":"n1","Spec":{"Availability":"active"},"Description":{"Hostname":"m"},"Status":{"State":"ready"}},{"ID":"n2","Spec":{"Availability":"active"},"Description":{"Hostname":"w"},"Status":{"State":"ready"}}]"#);
        let e =
            check_placement(&Client::new(&fake), &f.request, &release, &mut quiet()).unwrap_err();
        assert_eq!(e.stage, Stage::Validate);
        assert!(
            e.to_string()
                .contains("no node has the label stackship.edge=true"),
            "{e}"
        );
        assert!(fake.writes().is_empty());
    }

    #[test]
    fn a_review_stack_needs_room_and_makes_its_password_once() {
        let f = fixture("REGISTRY=r\nREVIEW_MAX_STACKS=2\n");
        let release = read(&f.request).unwrap();
        let mut request = f.request.clone();
        request.review = Some(7);
        let fake = FakeEngine::new();
        fake.answer(
            &["stack", "ls"],
            // Only stackship-review-<number> stacks other than this one count.
            "stackship-prod\nstackship-review-3\nstackship-review-7\nstackship-review-notes\nstackship-review-\n",
        );
        fake.answer(&["secret", "ls"], "");
        fake.answer(&["secret", "create"], "id\n");
        let port =
            prepare_review(&Client::new(&fake), &request, &release, 7, &mut quiet()).unwrap();
        assert_eq!(port, 20007);
        let calls = fake.calls();
        let create = calls.last().unwrap();
        assert_eq!(
            create.command_line(),
            "docker secret create --label com.docker.stack.namespace=stackship-review-7 stackship-review-7-db-password-v1 -"
        );
        let password = String::from_utf8(create.stdin.clone().unwrap()).unwrap();
        assert_eq!(password.len(), 32);
        assert!(
            password
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        // A second deploy keeps the secret; a third stack is refused at the limit.
        let fake = FakeEngine::new();
        fake.answer(&["stack", "ls"], "stackship-review-3\n");
        fake.answer(&["secret", "ls"], "stackship-review-7-db-password-v1\n");
        prepare_review(&Client::new(&fake), &request, &release, 7, &mut quiet()).unwrap();
        assert!(fake.writes().is_empty());
        let fake = FakeEngine::new();
        fake.answer(&["stack", "ls"], "stackship-review-3\nstackship-review-4\n");
        let e =
            prepare_review(&Client::new(&fake), &request, &release, 7, &mut quiet()).unwrap_err();
        assert!(
            e.to_string()
                .contains("2 review stacks already run (stackship-review-3 stackship-review-4)"),
            "{e}"
        );
        assert!(fake.writes().is_empty());
    }

    #[test]
    fn review_ports_stay_below_65536() {
        assert_eq!(review_port(20000, 901).unwrap(), 20901);
        assert_eq!(review_port(65000, 535).unwrap(), 65535);
        assert!(review_port(65000, 536).unwrap_err().contains("above 65535"));
    }

    #[test]
    fn data_directory_decisions() {
        use DataDirAction::*;
        // exists, empty, readable, owner, allow_new
        assert_eq!(data_dir_action(false, false, false, None, false), Refuse);
        assert_eq!(data_dir_action(false, false, false, None, true), Create);
        assert_eq!(data_dir_action(true, true, true, Some(999), false), Refuse);
        assert_eq!(data_dir_action(true, true, true, Some(999), true), Nothing);
        assert_eq!(data_dir_action(true, false, true, Some(0), false), Chown);
        assert_eq!(
            data_dir_action(true, false, true, Some(999), false),
            Nothing
        );
        // Not readable (not root): not taken for empty.
        assert_eq!(
            data_dir_action(true, false, false, Some(999), false),
            Nothing
        );
    }

    /// A rollout that records what it was asked and ends as told.
    struct FakeRollout {
        ok: bool,
        steps: std::cell::RefCell<Vec<String>>,
    }

    impl Rollout for FakeRollout {
        fn snapshot(&self, stack: &str) -> Result<rollout_watcher::watch::Snapshot, String> {
            self.steps.borrow_mut().push(format!("snapshot {stack}"));
            Ok(rollout_watcher::watch::Snapshot {
                stack: stack.into(),
                ..Default::default()
            })
        }
        fn watch(
            &self,
            snapshot: &rollout_watcher::watch::Snapshot,
            options: &rollout_watcher::watch::Options,
            _report_file: &Path,
            _progress: &mut dyn std::io::Write,
            _on_sample: &mut OnSample<'_>,
        ) -> Result<Watched, String> {
            self.steps.borrow_mut().push(format!(
                "watch {} max_task_failures={} confirm_after={:?}",
                snapshot.stack, options.rules.max_task_failures, options.rules.confirm_after
            ));
            Ok(Watched {
                outcome: if self.ok {
                    Outcome::Done
                } else {
                    Outcome::RolledBack
                },
                summary: "backend: ok\n".into(),
                report: "{}\n".into(),
            })
        }
        fn record(
            &self,
            stack: &str,
            _history: &Path,
            provenance: &Provenance,
        ) -> Result<Recorded, String> {
            // `started=now`: the deploy stage's start, a time of the last minute.
            let started = match &provenance.started {
                Some(t) => match chrono::DateTime::parse_from_rfc3339(t) {
                    Ok(t) if (chrono::Utc::now() - t.to_utc()).num_seconds() < 60 => {
                        "now".to_owned()
                    }
                    _ => t.clone(),
                },
                None => "none".to_owned(),
            };
            self.steps.borrow_mut().push(format!(
                "record {stack} commit={} ancestors={} started={started}",
                provenance.commit.clone().unwrap_or_default(),
                provenance.ancestors.join(",")
            ));
            Ok(Recorded::Written(PathBuf::from("/h/1.json")))
        }
        fn prune(&self, stack: &str, _history: &Path, keep: usize) -> Result<Vec<String>, String> {
            self.steps
                .borrow_mut()
                .push(format!("prune {stack} keep={keep}"));
            Ok(vec![])
        }
    }

    /// The answers of a one-node swarm whose node has both labels, after `fake`'s own rules.
    fn swarm_answers(fake: FakeEngine, stack_config: &str) -> FakeEngine {
        for (prefix, answer) in [
            (
                &["info", "--format", "{{.Swarm.ControlAvailable}}"][..],
                "true\n",
            ),
            (&["secret", "ls"], "stackship-prod-db-password-v12\n"),
            (&["secret", "inspect"], "[{}]"),
            (&["pull"], ""),
            (&["stack", "--help"], stack_config),
            (&["stack", "config"], ""),
            (&["info", "--format", "{{.Swarm.NodeID}}"], "n1\n"),
            (&["node", "ls"], "n1\n"),
            (&["node", "inspect", "n1", "--format"], "manager-1\n"),
            (
                &["node", "inspect", "n1"],
                r#"[{"ID":"n1","Spec":{"Availability":"active","Labels":{"stackship.edge":"true","stackship.postgres.prod":"true"}},"Description":{"Hostname":"manager-1"},"Status":{"State":"ready"}}]"#,
            ),
            (&["service", "inspect", "stackship-prod_postgres"], "[{}]"),
            (
                &["stack", "deploy", "--help"],
                "Options:\n  -d, --detach   Exit immediately instead of waiting\n",
            ),
            (&["stack", "deploy"], ""),
        ] {
            fake.answer(prefix, answer);
        }
        fake
    }

    fn swarm_engine() -> FakeEngine {
        swarm_answers(FakeEngine::new(), "Commands:\n  config   x\n")
    }

    fn with_data_dir(f: &Fixture) {
        std::fs::create_dir_all(f.request.data_root.join("prod/postgres/base")).unwrap();
    }

    #[test]
    fn a_good_deploy_runs_every_stage_in_order() {
        let mut f = fixture("REGISTRY=127.0.0.1:5000\nPRUNE_KEEP=4\nMAX_TASK_FAILURES=2\n");
        f.request
            .process_env
            .insert("CI_COMMIT_SHA".into(), "abc1234".into());
        f.request
            .process_env
            .insert("COMMIT_ANCESTORS".into(), "1234567 89abcde".into());
        with_data_dir(&f);
        let fake = swarm_engine();
        let rollout = FakeRollout {
            ok: true,
            steps: Default::default(),
        };
        let mut progress = Vec::new();
        let Watched {
            outcome, summary, ..
        } = deploy(&Client::new(&fake), &rollout, &f.request, &mut progress).unwrap();
        let progress = String::from_utf8(progress).unwrap();
        assert_eq!(outcome, Outcome::Done, "{progress}");
        assert_eq!(summary, "backend: ok\n");
        assert_eq!(
            *rollout.steps.borrow(),
            vec![
                "snapshot stackship-prod",
                "watch stackship-prod max_task_failures=2 confirm_after=1s",
                "record stackship-prod commit=abc1234 ancestors=1234567,89abcde started=now",
                "prune stackship-prod keep=4"
            ]
        );
        let calls = fake.calls();
        let deploy_call = calls
            .iter()
            .find(|c| {
                c.effect == crate::docker::Effect::Write
                    && c.args
                        .starts_with(&["stack".to_owned(), "deploy".to_owned()])
            })
            .unwrap();
        assert_eq!(
            deploy_call.command_line(),
            format!(
                "docker stack deploy --with-registry-auth --prune --detach=true -c {} stackship-prod",
                f.request.compose().display()
            )
        );
        assert_eq!(
            deploy_call.dir.as_deref(),
            Some(f.request.release.as_path())
        );
        let env: BTreeMap<_, _> = deploy_call.env.iter().cloned().collect();
        assert_eq!(env["DB_PASSWORD_SECRET"], "stackship-prod-db-password-v12");
        assert_eq!(env["REGISTRY"], "127.0.0.1:5000");
        assert_eq!(env["BACKEND_TAG"], "20261206_aaaaaaaa");
        assert!(env["PROD_BACKEND_CONFIG"].starts_with("prod_backend_config_"));
        // The only changes: the pulls and the stack deploy (labels were there, no login).
        assert_eq!(fake.writes().len(), 3, "{:?}", fake.writes());
        assert!(progress.contains("stackship-prod deployed"), "{progress}");
    }

    #[test]
    fn a_failed_rollout_exits_1_and_records_nothing() {
        let f = fixture("REGISTRY=127.0.0.1:5000\n");
        with_data_dir(&f);
        let fake = swarm_engine();
        let rollout = FakeRollout {
            ok: false,
            steps: Default::default(),
        };
        let mut progress = Vec::new();
        let Watched { outcome, .. } =
            deploy(&Client::new(&fake), &rollout, &f.request, &mut progress).unwrap();
        assert_eq!(outcome, Outcome::RolledBack);
        assert_eq!(outcome.code(), 1);
        assert_eq!(
            rollout.steps.borrow().len(),
            2,
            "{:?}",
            rollout.steps.borrow()
        );
        assert!(
            String::from_utf8(progress)
                .unwrap()
                .contains("rollout of stackship-prod FAILED")
        );
    }

    #[test]
    fn an_emptied_database_directory_is_refused_before_the_stack_deploy() {
        let f = fixture("REGISTRY=127.0.0.1:5000\n");
        std::fs::create_dir_all(f.request.data_root.join("prod/postgres")).unwrap();
        let fake = swarm_engine();
        let rollout = FakeRollout {
            ok: true,
            steps: Default::default(),
        };
        let e = deploy(&Client::new(&fake), &rollout, &f.request, &mut Vec::new()).unwrap_err();
        assert_eq!(e.stage, Stage::Prepare);
        assert_eq!(e.outcome(), Outcome::NothingChanged);
        assert!(
            e.to_string()
                .contains("Postgres would start an EMPTY database"),
            "{e}"
        );
        assert!(
            fake.writes().iter().all(|w| w.starts_with("docker pull")),
            "{:?}",
            fake.writes()
        );
        assert!(rollout.steps.borrow().is_empty());
    }

    #[test]
    fn a_database_directory_on_another_node_is_checked_by_a_helper_that_is_always_removed() {
        let f = fixture("REGISTRY=127.0.0.1:5000\n");
        let release = read(&f.request).unwrap();
        let helper = format!("stackship-prod-datadir-{}", std::process::id());
        for (end, stop) in [
            ("Failed 1s|task: non-zero exit (3)", false),
            ("Failed 1s|task: non-zero exit (1)", false),
            ("Complete 1s|", false),
            ("Running 1s|", true),
        ] {
            let fake = FakeEngine::new();
            fake.answer(&["service", "inspect", "stackship-prod_postgres"], "[{}]");
            fake.answer(&["info", "--format", "{{.Swarm.NodeID}}"], "n1\n");
            fake.answer(&["node", "inspect", "n2", "--format"], "db-2\n");
            fake.answer(&["service", "ps", "stackship-prod_postgres"], "");
            fake.answer(&["service", "create"], "");
            fake.answer(&["service", "ps", helper.as_str()], end);
            fake.answer(&["service", "logs"], "");
            fake.answer(&["service", "rm"], "");
            fake.answer(&["ps", "-aq"], "");
            let mut request = f.request.clone();
            if stop {
                request.stop = || true;
            }
            let result =
                prepare_data_dir(&Client::new(&fake), &request, &release, "n2", &mut quiet());
            let writes = fake.writes();
            assert_eq!(writes.len(), 2, "{end}: {writes:?}");
            let create = &writes[0];
            for part in [
                "--constraint node.id==n2",
                "--mount type=bind,source=/,target=/host",
                "--user 0:0",
                "--cap-drop ALL",
                "--cap-add CAP_CHOWN --cap-add CAP_DAC_OVERRIDE --cap-add CAP_FOWNER",
                "--label stackship.ops-helper=deploy",
            ] {
                assert!(create.contains(part), "{part}: {create}");
            }
            // Postgres's own image (it has the user and the tools), its entrypoint replaced.
            let image = &release.settings.images["postgres"].value;
            assert!(
                create.contains(&format!("--entrypoint sh {image} -c ")),
                "{create}"
            );
            assert!(
                create.ends_with(" 0"),
                "an existing database: nothing new allowed: {create}"
            );
            assert_eq!(writes[1], format!("docker service rm {helper}"));
            match (end, stop) {
                (_, true) => {
                    let e = result.unwrap_err().to_string();
                    assert!(e.contains("interrupted while helper"), "{e}");
                }
                ("Complete 1s|", _) => result.unwrap(),
                (e3, _) if e3.ends_with("(3)") => {
                    let e = result.unwrap_err().to_string();
                    assert!(e.contains("Postgres would start an EMPTY database"), "{e}");
                    assert!(e.contains("on node db-2"), "{e}");
                }
                _ => {
                    let e = result.unwrap_err().to_string();
                    assert!(e.contains("on node db-2 failed: helper"), "{e}");
                    assert!(e.contains("exit 1"), "{e}");
                }
            }
        }
    }

    #[test]
    fn a_first_deploy_creates_the_database_directory() {
        let f = fixture("REGISTRY=127.0.0.1:5000\n");
        let fake = first_deploy_engine();
        let rollout = FakeRollout {
            ok: true,
            steps: Default::default(),
        };
        let r = deploy(&Client::new(&fake), &rollout, &f.request, &mut Vec::new());
        let dir = f.request.data_root.join("prod/postgres");
        match r {
            Ok(Watched { outcome, .. }) => {
                assert_eq!(outcome, Outcome::Done);
                assert!(dir.is_dir());
                use std::os::unix::fs::{MetadataExt, PermissionsExt};
                let meta = std::fs::metadata(&dir).unwrap();
                assert_eq!(
                    (meta.uid(), meta.permissions().mode() & 0o777),
                    (POSTGRES_UID, 0o700)
                );
            }
            // Not root: the chown to Postgres's user is refused, and says how to do it.
            Err(e) => assert!(
                e.to_string().contains("install -d -m 0700 -o 999 -g 999"),
                "{e}"
            ),
        }
    }

    #[test]
    fn the_database_directory_is_chowned_whole_but_not_through_a_symlink() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("postgres");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(data.join("base/1")).unwrap();
        std::fs::write(data.join("base/1/table"), "x").unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("other"), "y").unwrap();
        std::os::unix::fs::symlink(&outside, data.join("link")).unwrap();
        let before = std::fs::metadata(outside.join("other")).unwrap().uid();
        match chown_tree(&data) {
            Ok(()) => {
                for path in ["", "base", "base/1", "base/1/table", "link"] {
                    let m = std::fs::symlink_metadata(data.join(path)).unwrap();
                    assert_eq!((m.uid(), m.gid()), (POSTGRES_UID, POSTGRES_UID), "{path}");
                }
                let other = std::fs::metadata(outside.join("other")).unwrap();
                assert_eq!(other.uid(), before, "followed the symlink");
                assert_eq!(std::fs::metadata(&outside).unwrap().uid(), before);
            }
            // Not root: the chown is refused, and said.
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}"),
        }
    }

    #[test]
    fn an_older_cli_deploys_without_detach_and_dockers_lines_are_shown() {
        let f = fixture("REGISTRY=127.0.0.1:5000\n");
        with_data_dir(&f);
        let old = FakeEngine::new();
        old.answer(
            &["stack", "deploy", "--help"],
            "Options:\n  -c, --compose-file strings\n      --prune\n",
        );
        old.answer(
            &["stack", "deploy", "--with-registry-auth"],
            "Updating service stackship-prod_backend (id: v34xg7)\n\n",
        );
        let fake = swarm_answers(old, "Commands:\n  config   x\n");
        let rollout = FakeRollout {
            ok: true,
            steps: Default::default(),
        };
        let mut progress = Vec::new();
        let watched = deploy(&Client::new(&fake), &rollout, &f.request, &mut progress).unwrap();
        assert_eq!(watched.outcome, Outcome::Done);
        let deploy_call = fake
            .writes()
            .into_iter()
            .find(|w| w.starts_with("docker stack deploy"))
            .unwrap();
        assert_eq!(
            deploy_call,
            format!(
                "docker stack deploy --with-registry-auth --prune -c {} stackship-prod",
                f.request.compose().display()
            )
        );
        let progress = String::from_utf8(progress).unwrap();
        let lines: Vec<&str> = progress.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.ends_with("Updating service stackship-prod_backend (id: v34xg7)"))
            .unwrap_or_else(|| panic!("{progress}"));
        assert!(
            lines[at + 1].ends_with("following the rollout of stackship-prod"),
            "no blank line of Docker's is shown: {progress}"
        );
        // The services deployed by tag, each with its tag.
        assert!(
            lines[at - 1]
                .ends_with("docker stack deploy stackship-prod (backend 20261206_aaaaaaaa)"),
            "{progress}"
        );
        assert_eq!(
            rollout.steps.borrow()[1],
            "watch stackship-prod max_task_failures=3 confirm_after=1s"
        );
    }

    /// A single-node swarm whose stack has no Postgres service yet, with a CLI that has no
    /// `docker stack config`.
    fn first_deploy_engine() -> FakeEngine {
        let fake = FakeEngine::new();
        fake.fail(
            &["service", "inspect", "stackship-prod_postgres"],
            "Error: no such service",
        );
        swarm_answers(fake, "Commands:\n  deploy   x\n")
    }

    fn result(
        result: &str,
        detail: &str,
        old: &str,
        fin: &str,
    ) -> rollout_watcher::watch::ServiceResult {
        rollout_watcher::watch::ServiceResult {
            service: "stackship-prod_backend".into(),
            result: result.into(),
            detail: detail.into(),
            old_image: old.into(),
            new_image: "new".into(),
            final_image: fin.into(),
            counts: Default::default(),
            update_message: None,
            task_id: None,
            task_error: None,
            exit_code: None,
            log_tail: None,
            health_output: None,
            seconds: 1.0,
            floor_seconds: None,
        }
    }

    #[test]
    fn canary_findings_lead_the_summary_and_never_let_a_rolled_back_gate_pass() {
        use crate::canary::{Canary, Gate, Thresholds};
        let fake = FakeEngine::new();
        fake.answer(&["service", "rollback"], "");
        fake.answer(
            &["inspect", "--type", "task"],
            r#"[{"ID": "new1", "NetworksAttachments": [{"Network": {"Spec": {"Name": "e"}}, "Addresses": ["10.0.1.9/24"]}]}]"#,
        );
        fake.answer(&["service", "logs", "--raw"], "request timed out\n");
        let line = "p | x [t] \"GET /api/logs HTTP/1.1\" 504 1 rid=1 upstream=10.0.1.9:8080 upstream_status=504 rt=0 urt=0 \"ua\"\n";
        fake.answer(&["service", "logs"], &line.repeat(3));
        let canary = Canary {
            window: Duration::from_secs(10),
            proxy: "nginx-proxy".into(),
            thresholds: Thresholds {
                min_requests: 3,
                ..Thresholds::default()
            },
        };
        let before = Some(rollout_watcher::assess::ServiceBefore::default());
        let mut gates = vec![
            Gate::new("s", "backend", &canary, Default::default(), before.clone()),
            Gate::new("s", "worker", &canary, Default::default(), before.clone()),
            Gate::new("s", "frontend", &canary, Default::default(), None),
            Gate::new("s", "api", &canary, Default::default(), before.clone()),
        ];
        let service: bollard::models::Service = serde_json::from_value(serde_json::json!({
            "UpdateStatus": {"State": "updating", "StartedAt": rfc3339_millis(chrono::Utc::now())}
        }))
        .unwrap();
        let tasks: Vec<bollard::models::Task> = serde_json::from_value(serde_json::json!([
            {"ID": "new1", "Status": {"State": "running"}, "DesiredState": "running"}
        ]))
        .unwrap();
        let starting: Vec<bollard::models::Task> = serde_json::from_value(serde_json::json!([
            {"ID": "new1", "Status": {"State": "starting"}, "DesiredState": "running"}
        ]))
        .unwrap();
        let now = std::time::Instant::now();
        let client = Client::new(&fake);
        // backend: judged during the rollout (a breach, rolled back); worker: updated, no new
        // task seen serving; frontend: not changed by the deploy; api: still watched when the
        // rollout settled, judged by finish, rolled back, Swarm's rollback followed to its end.
        for (i, tasks) in [
            (0, &tasks),
            (0, &tasks),
            (1, &starting),
            (2, &tasks),
            (3, &tasks),
        ] {
            gates[i].sample(
                &client,
                &service,
                tasks,
                now,
                chrono::Utc::now(),
                &mut |_| {},
            );
        }
        assert!(gates[3].is_watching());
        let rolled: bollard::models::Service = serde_json::from_value(serde_json::json!({
            "UpdateStatus": {"State": "rollback_completed"}
        }))
        .unwrap();
        fake.answer(
            &["service", "inspect", "s_api"],
            &serde_json::to_string(&[rolled]).unwrap(),
        );
        let mut finished = Vec::new();
        gates[3].finish(&client, &mut Some, &mut |m| finished.push(m.to_owned()));
        assert_eq!(
            finished.first().map(String::as_str),
            Some("canary api: the rollout settled; judging it on real traffic for up to 10s more")
        );
        assert_eq!(
            finished.last().map(String::as_str),
            Some("canary api: Swarm finished the rollback")
        );
        assert_eq!(gates[3].finding().unwrap().settled_back, Some(Ok(())));
        let watched = |outcome| Watched {
            outcome,
            summary: "backend: ok\n".into(),
            report: "{}".into(),
        };
        let mut said = Vec::new();
        let mut w = watched(Outcome::Done);
        gate_findings(&gates, &mut w, &mut |m| said.push(m.to_owned()));
        assert_eq!(w.outcome, Outcome::Unknown);
        assert_eq!(
            said,
            vec![
                "the canary gate of backend rolled it back after Swarm reported the rollout done: check with `stackship status`",
                "the canary gate of api rolled it back after the rollout had settled; the old version serves",
            ]
        );
        let lines: Vec<&str> = w.summary.lines().collect();
        assert!(
            lines[0].starts_with(
                "backend: canary failed real requests: new version 3 of 3 failed (100.0 %)"
            ) && lines[0].contains("most failed: GET /api/logs answered 504 3 times"),
            "{lines:?}"
        );
        assert_eq!(
            lines[1],
            "worker: canary not judged (this deploy updated it, and no new task was seen serving)"
        );
        assert!(
            lines[2].starts_with("api: canary failed real requests"),
            "{lines:?}"
        );
        assert_eq!(lines[3..], ["backend: ok"]);
        // The gate that rolled back after the rollout settled, alone: the old version serves.
        let mut w = watched(Outcome::Done);
        gate_findings(&gates[3..], &mut w, &mut |_| {});
        assert_eq!(w.outcome, Outcome::RolledBack);
        // A rollout the watch already found rolled back stays so, and nothing more is said.
        let mut said = Vec::new();
        let mut w = watched(Outcome::RolledBack);
        gate_findings(&gates[..3], &mut w, &mut |m| said.push(m.to_owned()));
        assert_eq!(w.outcome, Outcome::RolledBack);
        assert!(said.is_empty(), "{said:?}");
        // No gates: nothing changes.
        let mut w = watched(Outcome::Done);
        gate_findings(&[], &mut w, &mut |m| said.push(m.to_owned()));
        assert_eq!(w, watched(Outcome::Done));
        // A gate interrupted before it judged: unknown, never a success.
        let mut g = Gate::new("s", "backend", &canary, Default::default(), before.clone());
        g.sample(
            &client,
            &service,
            &tasks,
            now,
            chrono::Utc::now(),
            &mut |_| {},
        );
        g.finish(&client, &mut |_| None, &mut |_| {});
        let mut said = Vec::new();
        let mut w = watched(Outcome::Done);
        gate_findings(std::slice::from_ref(&g), &mut w, &mut |m| {
            said.push(m.to_owned())
        });
        assert_eq!(w.outcome, Outcome::Unknown);
        assert_eq!(
            w.summary.lines().next(),
            Some("backend: canary not judged (the deploy was interrupted)")
        );
        assert_eq!(
            said,
            [
                "the canary gate of backend was interrupted before it judged the new version: check with `stackship status`"
            ]
        );
        // A gate whose rollback could not start: unknown, and says what to run.
        let broken = FakeEngine::new();
        broken.fail(
            &["service", "rollback"],
            "rpc error: update out of sequence",
        );
        broken.answer(
            &["inspect", "--type", "task"],
            r#"[{"ID": "new1", "NetworksAttachments": [{"Network": {"Spec": {"Name": "e"}}, "Addresses": ["10.0.1.9/24"]}]}]"#,
        );
        broken.answer(&["service", "logs"], &line.repeat(3));
        let mut g = Gate::new("s", "backend", &canary, Default::default(), before);
        for _ in 0..2 {
            g.sample(
                &Client::new(&broken),
                &service,
                &tasks,
                now,
                chrono::Utc::now(),
                &mut |_| {},
            );
        }
        let mut said = Vec::new();
        for outcome in [Outcome::Done, Outcome::RolledBack] {
            let mut w = watched(outcome);
            gate_findings(std::slice::from_ref(&g), &mut w, &mut |m| {
                said.push(m.to_owned())
            });
            assert_eq!(w.outcome, Outcome::Unknown);
        }
        assert_eq!(
            said[0],
            "the canary gate of backend could not roll it back: run `docker service rollback s_backend`, then `stackship status`"
        );
        // A gate whose canary answered well: its finding leads the summary, the deploy stays
        // done, nothing is rolled back and nothing more is said.
        let good = FakeEngine::new();
        good.answer(
            &["inspect", "--type", "task"],
            r#"[{"ID": "new1", "NetworksAttachments": [{"Network": {"Spec": {"Name": "e"}}, "Addresses": ["10.0.1.9/24"]}]}]"#,
        );
        good.answer(&["service", "logs"], &line.replace("504", "200").repeat(3));
        let mut g = Gate::new(
            "s",
            "backend",
            &canary,
            Default::default(),
            Some(rollout_watcher::assess::ServiceBefore::default()),
        );
        g.sample(
            &Client::new(&good),
            &service,
            &tasks,
            now,
            chrono::Utc::now(),
            &mut |_| {},
        );
        g.finish(&Client::new(&good), &mut Some, &mut |_| {});
        let finding = g.finding().expect("judged");
        assert!(!finding.fails(), "{finding}");
        let mut said = Vec::new();
        let mut w = watched(Outcome::Done);
        gate_findings(std::slice::from_ref(&g), &mut w, &mut |m| {
            said.push(m.to_owned())
        });
        assert_eq!(w.outcome, Outcome::Done);
        assert!(said.is_empty(), "{said:?}");
        assert_eq!(
            w.summary,
            format!("{finding}\nbackend: ok\n"),
            "the finding leads the summary"
        );
        assert!(
            good.writes().is_empty(),
            "nothing rolled back: {:?}",
            good.writes()
        );
    }

    #[test]
    fn what_a_gate_found_is_written_into_the_watch_report() {
        let mut report = serde_json::json!({
            "stack": "s", "ok": true, "seconds": 1.0,
            "services": [
                {"service": "s_backend", "result": "ok", "detail": "updated", "old_image": "b:1", "final_image": "b:2"},
                {"service": "s_frontend", "result": "ok", "detail": "updated", "old_image": "f:1", "final_image": "f:2"}
            ]
        })
        .to_string();
        fail_in_report(&mut report, "backend", "canary gate: failed", true);
        let r: serde_json::Value = serde_json::from_str(&report).unwrap();
        assert_eq!(r["ok"], false);
        assert_eq!(
            (
                &r["services"][0]["result"],
                &r["services"][0]["detail"],
                &r["services"][0]["final_image"]
            ),
            (
                &"failed".into(),
                &"canary gate: failed".into(),
                &"b:1".into()
            )
        );
        assert_eq!(r["services"][1]["result"], "ok");
        assert_eq!(r["services"][1]["final_image"], "f:2");
        // Not rolled back: the image it runs stays as the watch saw it.
        let mut report = serde_json::to_string(&r).unwrap();
        fail_in_report(&mut report, "s_frontend", "x", false);
        let r: serde_json::Value = serde_json::from_str(&report).unwrap();
        assert_eq!(
            (
                &r["services"][1]["result"],
                &r["services"][1]["final_image"]
            ),
            (&"failed".into(), &"f:2".into())
        );
        // Text that is no report is left as it is.
        let mut text = "{}".to_owned();
        fail_in_report(&mut text, "backend", "x", true);
        assert_eq!(text, "{}");
    }

    #[test]
    fn the_outcome_says_whether_the_old_version_serves() {
        let report = |ok, services| rollout_watcher::watch::Report {
            stack: "s".into(),
            ok,
            seconds: 1.0,
            services,
        };
        assert_eq!(
            outcome_of(&report(true, vec![result("ok", "updated", "old", "new")])),
            Outcome::Done
        );
        assert_eq!(
            outcome_of(&report(
                false,
                vec![
                    result("ok", "unchanged, running", "p", "p"),
                    result(
                        "failed",
                        "rolled back: update rolled back due to failure",
                        "old",
                        "old"
                    ),
                ]
            )),
            Outcome::RolledBack
        );
        // Paused, timed out, a first deploy without an old version, or not back on the old
        // image: nobody can say what serves.
        for r in [
            result("failed", "paused: update paused", "old", "new"),
            result("failed", "not settled within 300s", "old", "new"),
            result("failed", "rolled back", "", ""),
            result("failed", "rolled back", "old", "new"),
        ] {
            assert_eq!(
                outcome_of(&report(false, vec![r.clone()])),
                Outcome::Unknown,
                "{r:?}"
            );
        }
    }

    #[test]
    fn a_first_review_deploy_makes_its_password_before_it_looks_for_it() {
        let root = tempfile::tempdir().unwrap();
        let release = root.path().join("review/7/current");
        std::fs::create_dir_all(release.join("deploy-manifests/dev")).unwrap();
        std::fs::create_dir_all(root.path().join("dev")).unwrap();
        std::fs::write(root.path().join("dev/deploy.env"), "REGISTRY=r\n").unwrap();
        std::fs::write(
            release.join("deploy-manifests/dev/images.env"),
            "BACKEND_TAG=t\nPOSTGRES_IMAGE=postgres@sha256:2222222222222222222222222222222222222222222222222222222222222222\n",
        )
        .unwrap();
        std::fs::write(
            release.join("docker-compose.review.yaml"),
            "services:\n  backend:\n    image: ${REGISTRY}/stackship/backend:${BACKEND_TAG}\n    ports: [\"${REVIEW_PORT}:8080\"]\n  postgres:\n    image: ${POSTGRES_IMAGE}\nsecrets:\n  db_password:\n    name: ${DB_PASSWORD_SECRET}\n    external: true\n",
        )
        .unwrap();
        let request = Request {
            release,
            env: "dev".into(),
            review: Some(7),
            tag: None,
            timeout: None,
            process_env: BTreeMap::new(),
            owner: "t".into(),
            data_root: root.path().join("data"),
            install: None,
            allow_older: false,
            lock_held_here: false,
            note: None,
            stop: || false,
        };
        let fake = FakeEngine::new();
        fake.answer(
            &["info", "--format", "{{.Swarm.ControlAvailable}}"],
            "true\n",
        );
        fake.answer(&["stack", "ls"], "stackship-dev\n");
        fake.answer_once(&["secret", "ls"], "");
        fake.answer(&["secret", "ls"], "stackship-review-7-db-password-v1\n");
        fake.answer(&["secret", "create"], "id\n");
        fake.answer(&["secret", "inspect"], "[{}]");
        fake.answer(&["stack", "--help"], "Commands:\n  deploy   x\n");
        fake.answer(&["info", "--format", "{{.Swarm.NodeID}}"], "n1\n");
        fake.answer(&["node", "ls"], "n1\n");
        fake.answer(
            &["node", "inspect", "n1"],
            r#"[{"ID":"n1","Spec":{"Availability":"active","Labels":{"stackship.edge":"true"}},"Description":{"Hostname":"m"},"Status":{"State":"ready"}}]"#,
        );
        let prepared = prepare(&Client::new(&fake), &request, &mut quiet()).unwrap();
        assert_eq!(
            prepared.vars["DB_PASSWORD_SECRET"],
            "stackship-review-7-db-password-v1"
        );
        assert_eq!(prepared.vars["REVIEW_PORT"], "20007");
        // A review stack's database lives in a volume: no node is chosen or labelled for it.
        assert_eq!(prepared.db_node, None);
        let lines = fake.command_lines();
        let created = lines
            .iter()
            .position(|l| l.starts_with("docker secret create"))
            .unwrap();
        let inspected = lines
            .iter()
            .position(|l| l.starts_with("docker secret inspect"))
            .unwrap();
        assert!(created < inspected, "{lines:?}");
        assert_eq!(fake.writes().len(), 1, "{:?}", fake.writes());
    }

    fn write_record(f: &Fixture, commit: &str, ancestors: &[&str]) {
        let history = f.request.env_dir().join("history");
        std::fs::create_dir_all(&history).unwrap();
        let record = rollout_watcher::history::DeployRecord {
            id: "20261206T010000.000Z".into(),
            stack: "stackship-prod".into(),
            commit: Some(commit.into()),
            pipeline: Some("https://ci/p/9".into()),
            ancestors: ancestors.iter().map(|a| (*a).to_owned()).collect(),
            note: None,
            started: None,
            services: Default::default(),
        };
        rollout_watcher::history::write(&history, &record).unwrap();
    }

    #[test]
    fn an_older_commit_is_refused_before_anything_changes() {
        let mut f = fixture("REGISTRY=127.0.0.1:5000\n");
        write_record(&f, "bbbbbbbb", &["aaaaaaaa"]);
        f.request
            .process_env
            .insert("CI_COMMIT_SHA".into(), "aaaaaaaa".into());
        with_data_dir(&f);
        let fake = swarm_engine();
        let rollout = FakeRollout {
            ok: true,
            steps: Default::default(),
        };
        let e = deploy(&Client::new(&fake), &rollout, &f.request, &mut Vec::new()).unwrap_err();
        assert_eq!(e.stage, Stage::Validate);
        assert_eq!(e.outcome(), Outcome::NothingChanged);
        assert!(
            e.to_string()
                .starts_with("validate: commit aaaaaaaa is older than the running bbbbbbbb"),
            "{e}"
        );
        assert!(fake.calls().is_empty(), "{:?}", fake.command_lines());
        assert!(rollout.steps.borrow().is_empty());
        // ALLOW_OLDER (or --allow-older) lets it through, saying so.
        f.request
            .process_env
            .insert("ALLOW_OLDER".into(), "1".into());
        let mut progress = Vec::new();
        let Watched { outcome, .. } =
            deploy(&Client::new(&fake), &rollout, &f.request, &mut progress).unwrap();
        assert_eq!(outcome, Outcome::Done);
        let progress = String::from_utf8(progress).unwrap();
        assert!(
            progress.contains("WARNING: commit aaaaaaaa is older than the running bbbbbbbb"),
            "{progress}"
        );
        f.request
            .process_env
            .insert("ALLOW_OLDER".into(), "perhaps".into());
        let e = deploy(&Client::new(&fake), &rollout, &f.request, &mut Vec::new()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "read: ALLOW_OLDER='perhaps' is not 1/true/yes or 0/false/no"
        );
        f.request.process_env.remove("ALLOW_OLDER");
        f.request.allow_older = true;
        assert!(deploy(&Client::new(&fake), &rollout, &f.request, &mut Vec::new()).is_ok());
    }

    #[test]
    fn a_bad_commit_id_or_unreadable_records_refuse_the_deploy() {
        let mut f = fixture("REGISTRY=127.0.0.1:5000\n");
        f.request
            .process_env
            .insert("CI_COMMIT_SHA".into(), "not-a-sha".into());
        let fake = swarm_engine();
        let rollout = FakeRollout {
            ok: true,
            steps: Default::default(),
        };
        let e = deploy(&Client::new(&fake), &rollout, &f.request, &mut Vec::new()).unwrap_err();
        assert_eq!(e.stage, Stage::Read);
        assert!(
            e.to_string()
                .contains("CI_COMMIT_SHA 'not-a-sha' is not a commit id"),
            "{e}"
        );
        f.request.process_env.remove("CI_COMMIT_SHA");
        let history = f.request.env_dir().join("history");
        std::fs::create_dir_all(&history).unwrap();
        std::fs::write(history.join("20261206T010000.000Z.json"), "{").unwrap();
        let e = deploy(&Client::new(&fake), &rollout, &f.request, &mut Vec::new()).unwrap_err();
        assert_eq!(e.stage, Stage::Validate);
        assert!(e.to_string().contains("20261206T010000.000Z.json"), "{e}");
        assert!(fake.writes().is_empty());
    }

    /// Moves the fixture's release to an upload directory beside `current/`, as the deploy
    /// job's upload or the copy step leaves it.
    fn as_upload(f: &mut Fixture) -> PathBuf {
        let env_dir = f.request.env_dir();
        let upload = env_dir.join(".incoming-1");
        std::fs::create_dir(&upload).unwrap();
        std::fs::rename(&f.request.release, upload.join("current")).unwrap();
        std::fs::write(upload.join("current/stackship"), "tool").unwrap();
        std::fs::create_dir(upload.join("secrets")).unwrap();
        for name in ["tls.crt", "tls.key"] {
            std::fs::write(upload.join("secrets").join(name), name).unwrap();
        }
        f.request.install = Some(Install {
            from: upload.join("current"),
            secrets: Some(upload.join("secrets")),
        });
        upload
    }

    #[test]
    fn a_deploy_from_an_upload_installs_it_under_its_lock_first() {
        let mut f = fixture("REGISTRY=127.0.0.1:5000\n");
        let env_dir = f.request.env_dir();
        let upload = as_upload(&mut f);
        // What runs now: another release, which the install replaces whole.
        std::fs::create_dir_all(f.request.release.join("old-only")).unwrap();
        with_data_dir(&f);
        let fake = swarm_engine();
        let rollout = FakeRollout {
            ok: true,
            steps: Default::default(),
        };
        let mut progress = Vec::new();
        let Watched { outcome, .. } =
            deploy(&Client::new(&fake), &rollout, &f.request, &mut progress).unwrap();
        let progress = String::from_utf8(progress).unwrap();
        assert_eq!(outcome, Outcome::Done, "{progress}");
        let lock_line = progress.find("holding the prod deploy lock").unwrap();
        let installed = progress
            .find(&format!(
                "release installed: {}",
                f.request.release.display()
            ))
            .unwrap();
        let tls = progress
            .find("installed tls.crt and tls.key from the upload")
            .unwrap();
        assert!(lock_line < tls && tls < installed, "{progress}");
        assert!(f.request.compose().is_file());
        assert!(f.request.release.join("stackship").is_file());
        assert!(!f.request.release.join("old-only").exists());
        assert!(!upload.join("current").exists());
        assert_eq!(
            std::fs::read_to_string(env_dir.join("secrets/tls.key")).unwrap(),
            "tls.key"
        );
    }

    #[test]
    fn an_older_upload_is_not_installed() {
        let mut f = fixture("REGISTRY=127.0.0.1:5000\n");
        write_record(&f, "bbbbbbbb", &["aaaaaaaa"]);
        let upload = as_upload(&mut f);
        std::fs::create_dir_all(f.request.release.join("running")).unwrap();
        f.request
            .process_env
            .insert("CI_COMMIT_SHA".into(), "aaaaaaaa".into());
        let fake = swarm_engine();
        let rollout = FakeRollout {
            ok: true,
            steps: Default::default(),
        };
        let e = deploy(&Client::new(&fake), &rollout, &f.request, &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("is older than the running"), "{e}");
        assert!(f.request.release.join("running").is_dir());
        assert!(upload.join("current").is_dir());
        assert!(!f.request.env_dir().join("secrets").exists());
    }

    #[test]
    fn an_incomplete_upload_is_refused_and_the_release_kept() {
        let mut f = fixture("REGISTRY=127.0.0.1:5000\n");
        let upload = as_upload(&mut f);
        std::fs::create_dir_all(f.request.release.join("kept")).unwrap();
        std::fs::remove_file(upload.join("current/stackship")).unwrap();
        let fake = swarm_engine();
        let rollout = FakeRollout {
            ok: true,
            steps: Default::default(),
        };
        let e = deploy(&Client::new(&fake), &rollout, &f.request, &mut Vec::new()).unwrap_err();
        assert_eq!(e.stage, Stage::Read);
        assert!(e.to_string().ends_with("is not a prod release: stackship missing (the copy step puts the stack file, deploy-manifests/prod/ and stackship there)"), "{e}");
        assert!(f.request.release.join("kept").is_dir());
        assert!(!f.request.env_dir().join("secrets").exists());
        // An upload outside the environment directory is refused under the lock.
        std::fs::write(upload.join("current/stackship"), "tool").unwrap();
        let outside = tempfile::tempdir().unwrap();
        let moved = outside.path().join("current");
        std::fs::rename(upload.join("current"), &moved).unwrap();
        f.request.install = Some(Install {
            from: moved,
            secrets: None,
        });
        let e = deploy(&Client::new(&fake), &rollout, &f.request, &mut Vec::new()).unwrap_err();
        assert_eq!(e.stage, Stage::Install);
        assert!(
            e.to_string().contains("must be a new directory inside"),
            "{e}"
        );
        assert!(f.request.release.join("kept").is_dir());
        assert!(fake.writes().is_empty());
    }

    /// What a rollback test starts from: an installed release (config "x", tag
    /// 20261206_aaaaaaaa) after two deploys, the first of tag `old` with the config "old" (and
    /// `first_spec` as the backend's spec), the second of what is installed; an engine that
    /// has both configs; the rollback's request.
    struct RollbackSetup {
        f: Fixture,
        fake: FakeEngine,
        config: PathBuf,
        old_name: String,
        new_name: String,
        request: crate::commands::rollback::Request,
    }

    fn rollback_setup(first_spec: Option<serde_json::Value>) -> RollbackSetup {
        use base64::Engine;
        let f = fixture("REGISTRY=127.0.0.1:5000\n");
        with_data_dir(&f);
        let config = f
            .request
            .release
            .join("deploy-manifests/prod/backend/config.toml");
        // The name the old content had, and the one the installed release has.
        std::fs::write(&config, "title = \"old\"\n").unwrap();
        let old_name = read(&f.request).unwrap().content_names["PROD_BACKEND_CONFIG"].clone();
        std::fs::write(&config, "title = \"x\"\n").unwrap();
        let new_name = read(&f.request).unwrap().content_names["PROD_BACKEND_CONFIG"].clone();
        assert_ne!(old_name, new_name);
        let history = f.request.env_dir().join("history");
        for (id, tag, name, commit) in [
            ("20261201T000000.000Z", "old", &old_name, "aaaaaaaa"),
            (
                "20261202T000000.000Z",
                "20261206_aaaaaaaa",
                &new_name,
                "bbbbbbbb",
            ),
        ] {
            let mut record = rollout_watcher::history::DeployRecord {
                id: id.into(),
                stack: "stackship-prod".into(),
                commit: Some(commit.into()),
                ancestors: if commit == "bbbbbbbb" {
                    vec!["aaaaaaaa".into()]
                } else {
                    vec![]
                },
                services: [
                    (
                        "backend".to_owned(),
                        rollout_watcher::history::ServiceRecord {
                            image: format!("127.0.0.1:5000/stackship/backend:{tag}@{DIGEST}"),
                            configs: vec![name.clone()],
                            ..Default::default()
                        },
                    ),
                    (
                        "postgres".to_owned(),
                        rollout_watcher::history::ServiceRecord {
                            image: format!("postgres:15@{DIGEST}"),
                            ..Default::default()
                        },
                    ),
                ]
                .into(),
                ..Default::default()
            };
            if commit == "aaaaaaaa" {
                record.services.get_mut("backend").unwrap().spec = first_spec.clone();
            }
            rollout_watcher::history::write(&history, &record).unwrap();
        }
        let fake = swarm_engine();
        fake.answer(&["config", "ls"], &format!("{old_name}\n{new_name}\n"));
        let data = base64::engine::general_purpose::STANDARD.encode("title = \"old\"\n");
        fake.answer(&["config", "inspect", &old_name], &format!("\"{data}\"\n"));
        let request = crate::commands::rollback::Request {
            stop: || false,
            data_root: f.request.data_root.clone(),
            env_dir: f.request.env_dir(),
            env: "prod".into(),
            want: None,
            dry_run: false,
            process_env: BTreeMap::new(),
            owner: "test".into(),
        };
        RollbackSetup {
            f,
            fake,
            config,
            old_name,
            new_name,
            request,
        }
    }

    /// A rollback that must not be refused: its outcome and what it said.
    fn roll_back(
        fake: &FakeEngine,
        rollout: &dyn Rollout,
        request: &crate::commands::rollback::Request,
    ) -> (Outcome, String) {
        let mut progress = Vec::new();
        let (outcome, _) = crate::commands::rollback::rollback(
            &Client::new(fake),
            rollout,
            request,
            &mut progress,
        )
        .unwrap();
        (outcome, String::from_utf8(progress).unwrap())
    }

    #[test]
    fn a_rollback_deploys_a_copy_with_the_recorded_images_and_configs() {
        let RollbackSetup {
            f,
            fake,
            config,
            old_name,
            new_name,
            request,
        } = rollback_setup(None);
        let rollout = FakeRollout {
            ok: true,
            steps: Default::default(),
        };
        let (outcome, progress) = roll_back(&fake, &rollout, &request);
        assert_eq!(outcome, Outcome::Done, "{progress}");
        assert!(
            progress.contains("rolling stackship-prod back to deploy 20261201T000000.000Z"),
            "{progress}"
        );
        assert!(
            progress.contains(&format!(
                "config: deploy-manifests/prod/backend/config.toml <- {old_name}"
            )),
            "{progress}"
        );
        assert!(
            progress.contains("stackship-prod rolled back to deploy 20261201T000000.000Z"),
            "{progress}"
        );
        let deploy_call = fake
            .calls()
            .into_iter()
            .find(|c| {
                c.args
                    .starts_with(&["stack".to_owned(), "deploy".to_owned()])
                    && c.args.len() > 3
            })
            .unwrap();
        let env: BTreeMap<String, String> = deploy_call.env.iter().cloned().collect();
        assert_eq!(env["BACKEND_TAG"], format!("old@{DIGEST}"));
        assert_eq!(env["PROD_BACKEND_CONFIG"], old_name);
        // The record names the commit returned to; the working copy is gone; current/ is what
        // runs now: the restored config, the images pinned as recorded.
        assert!(
            rollout
                .steps
                .borrow()
                .iter()
                .any(|s| s == "record stackship-prod commit=aaaaaaaa ancestors= started=now"),
            "{:?}",
            rollout.steps.borrow()
        );
        assert!(std::fs::read_dir(f.request.env_dir()).unwrap().all(|e| {
            !e.unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".rollback")
        }));
        assert_eq!(
            std::fs::read_to_string(&config).unwrap(),
            "title = \"old\"\n"
        );
        let pins = std::fs::read_to_string(f.request.pins()).unwrap();
        assert!(
            pins.contains(&format!("\nBACKEND_TAG=old@{DIGEST}\n"))
                || pins.starts_with(&format!("BACKEND_TAG=old@{DIGEST}\n")),
            "{pins}"
        );
        assert!(
            progress.contains("is now the rolled-back release"),
            "{progress}"
        );
        // A dry run and --list change nothing.
        let before = fake.writes().len();
        let dry = crate::commands::rollback::Request {
            dry_run: true,
            ..request.clone()
        };
        crate::commands::rollback::rollback(&Client::new(&fake), &rollout, &dry, &mut Vec::new())
            .unwrap();
        assert_eq!(fake.writes().len(), before);
        let listing =
            crate::commands::rollback::listing(&Client::new(&fake), &f.request.env_dir()).unwrap();
        assert!(
            listing.starts_with("20261202T000000.000Z (last deploy)\n"),
            "{listing}"
        );
        // A config that cannot be read back refuses the rollback before the deploy (current/
        // holding the newer config again).
        std::fs::write(&config, "title = \"x\"\n").unwrap();
        let gone = swarm_engine();
        gone.answer(&["config", "ls"], &format!("{old_name}\n{new_name}\n"));
        let e = crate::commands::rollback::rollback(
            &Client::new(&gone),
            &rollout,
            &request,
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("config {old_name} cannot be read")),
            "{e}"
        );
        assert!(gone.writes().is_empty());
    }

    /// A rollout that ends as told and, when it ends well, records `services` as what runs,
    /// with the deploy's note, as the watcher's record does.
    struct RecordingRollout {
        ok: bool,
        services: BTreeMap<String, rollout_watcher::history::ServiceRecord>,
    }

    impl Rollout for RecordingRollout {
        fn snapshot(&self, stack: &str) -> Result<rollout_watcher::watch::Snapshot, String> {
            FakeRollout {
                ok: self.ok,
                steps: Default::default(),
            }
            .snapshot(stack)
        }
        fn watch(
            &self,
            snapshot: &rollout_watcher::watch::Snapshot,
            options: &rollout_watcher::watch::Options,
            report_file: &Path,
            progress: &mut dyn std::io::Write,
            on_sample: &mut OnSample<'_>,
        ) -> Result<Watched, String> {
            FakeRollout {
                ok: self.ok,
                steps: Default::default(),
            }
            .watch(snapshot, options, report_file, progress, on_sample)
        }
        fn record(
            &self,
            stack: &str,
            history: &Path,
            provenance: &Provenance,
        ) -> Result<Recorded, String> {
            let record = rollout_watcher::history::DeployRecord {
                id: "20261203T000000.000Z".into(),
                stack: stack.into(),
                commit: provenance.commit.clone(),
                note: provenance.note.clone(),
                services: self.services.clone(),
                ..Default::default()
            };
            rollout_watcher::history::write(history, &record)
                .map(Recorded::Written)
                .map_err(|e| e.to_string())
        }
        fn prune(&self, _: &str, _: &Path, _: usize) -> Result<Vec<String>, String> {
            Ok(vec![])
        }
    }

    #[test]
    fn a_failed_rollback_keeps_current_and_a_good_one_names_the_settings_it_did_not_restore() {
        let spec = |replicas: u64| {
            Some(serde_json::json!({"Mode": {"Replicated": {"Replicas": replicas}}}))
        };
        let warning = "WARNING: the stack file changed since deploy 20261201T000000.000Z";
        // (the rollout ends well, the backend's replicas afterwards)
        for (ok, replicas) in [(false, 2), (true, 2), (true, 1)] {
            let RollbackSetup {
                f,
                fake,
                config,
                old_name,
                request,
                ..
            } = rollback_setup(spec(1));
            let runs = [(
                "backend".to_owned(),
                rollout_watcher::history::ServiceRecord {
                    image: format!("127.0.0.1:5000/stackship/backend:old@{DIGEST}"),
                    configs: vec![old_name.clone()],
                    spec: spec(replicas),
                    ..Default::default()
                },
            )];
            let rollout = RecordingRollout {
                ok,
                services: runs.into(),
            };
            let (outcome, progress) = roll_back(&fake, &rollout, &request);
            let pins = std::fs::read_to_string(f.request.pins()).unwrap();
            if !ok {
                assert_eq!(outcome, Outcome::RolledBack);
                assert!(
                    progress.contains("the rollback of stackship-prod FAILED"),
                    "{progress}"
                );
                assert!(!progress.contains("rolled back to deploy"), "{progress}");
                assert!(!progress.contains(warning), "{progress}");
                // current/ keeps the release it held.
                assert!(pins.contains("BACKEND_TAG=20261206_aaaaaaaa\n"), "{pins}");
                assert_eq!(std::fs::read_to_string(&config).unwrap(), "title = \"x\"\n");
                continue;
            }
            assert_eq!(outcome, Outcome::Done, "{progress}");
            assert!(
                pins.contains(&format!("BACKEND_TAG=old@{DIGEST}\n")),
                "{pins}"
            );
            // The rollback's record says what it returned to.
            let records =
                rollout_watcher::history::read_all(&f.request.env_dir().join("history")).unwrap();
            assert_eq!(
                records.last().unwrap().note.as_deref(),
                Some("rolled back to deploy 20261201T000000.000Z")
            );
            // A setting of the stack file that is not the target's is named; none, nothing.
            if replicas == 1 {
                assert!(!progress.contains(warning), "{progress}");
            } else {
                assert!(progress.contains(warning), "{progress}");
                assert!(
                    progress.contains("]   backend: Mode.Replicated.Replicas: 1 → 2\n"),
                    "{progress}"
                );
            }
        }
    }

    #[test]
    fn the_same_release_again_is_not_a_new_record() {
        use rollout_watcher::history::{DeployRecord, ServiceRecord};
        let record = |commit: &str, image: &str, spec: serde_json::Value| DeployRecord {
            id: "x".into(),
            stack: "stackship-prod".into(),
            commit: Some(commit.into()),
            services: [(
                "backend".to_owned(),
                ServiceRecord {
                    image: image.into(),
                    configs: vec!["c_1".into()],
                    secrets: vec!["s_1".into()],
                    spec: Some(spec),
                },
            )]
            .into(),
            ..Default::default()
        };
        let a = record("aaaaaaa", "i:1", serde_json::json!({"Env": []}));
        let mut again = a.clone();
        again.id = "y".into();
        again.pipeline = Some("another pipeline".into());
        assert!(same_release(&a, &again));
        assert!(!same_release(
            &a,
            &record("bbbbbbb", "i:1", serde_json::json!({"Env": []}))
        ));
        assert!(!same_release(
            &a,
            &record("aaaaaaa", "i:2", serde_json::json!({"Env": []}))
        ));
        assert!(!same_release(
            &a,
            &record("aaaaaaa", "i:1", serde_json::json!({"Env": ["X=1"]}))
        ));
        let mut other_stack = a.clone();
        other_stack.stack = "stackship-dev".into();
        assert!(!same_release(&a, &other_stack));
    }

    #[test]
    fn an_upload_refused_after_its_install_puts_the_previous_release_back() {
        let mut f = fixture("REGISTRY=127.0.0.1:5000\n");
        let env_dir = f.request.env_dir();
        let upload = as_upload(&mut f);
        // What runs now: an older release and TLS pair.
        std::fs::create_dir_all(f.request.release.join("old-only")).unwrap();
        std::fs::create_dir_all(env_dir.join("secrets")).unwrap();
        std::fs::write(env_dir.join("secrets/tls.key"), "OLDKEY").unwrap();
        std::fs::write(env_dir.join("secrets/tls.crt"), "OLDCRT").unwrap();
        with_data_dir(&f);
        // No database password secret: refused at validate, after the install.
        let fake = FakeEngine::new();
        fake.answer(
            &["info", "--format", "{{.Swarm.ControlAvailable}}"],
            "true\n",
        );
        fake.answer(&["secret", "ls"], "");
        let rollout = FakeRollout {
            ok: true,
            steps: Default::default(),
        };
        let mut progress = Vec::new();
        let e = deploy(&Client::new(&fake), &rollout, &f.request, &mut progress).unwrap_err();
        let progress = String::from_utf8(progress).unwrap();
        assert_eq!(e.stage, Stage::Validate, "{e}");
        assert!(progress.contains("release installed: "), "{progress}");
        assert!(
            f.request.release.join("old-only").is_dir(),
            "the previous release is back"
        );
        assert!(!env_dir.join("current.old").exists());
        assert_eq!(
            std::fs::read_to_string(env_dir.join("secrets/tls.key")).unwrap(),
            "OLDKEY"
        );
        assert_eq!(
            std::fs::read_to_string(env_dir.join("secrets/tls.crt")).unwrap(),
            "OLDCRT"
        );
        assert!(!env_dir.join("secrets/.tls.key.prev").exists());
        assert!(fake.writes().is_empty());
        assert!(upload.exists());
        // A first install (nothing before it) that is refused leaves nothing installed.
        let mut first = fixture("REGISTRY=127.0.0.1:5000\n");
        let first_env = first.request.env_dir();
        as_upload(&mut first);
        deploy(
            &Client::new(&fake),
            &rollout,
            &first.request,
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(!first_env.join("current").exists());
        assert!(!first_env.join("secrets/tls.key").exists());
    }

    #[test]
    fn a_deployed_upload_stays_and_the_previous_release_goes() {
        let mut f = fixture("REGISTRY=127.0.0.1:5000\n");
        let env_dir = f.request.env_dir();
        as_upload(&mut f);
        std::fs::create_dir_all(f.request.release.join("old-only")).unwrap();
        std::fs::create_dir_all(env_dir.join("secrets")).unwrap();
        std::fs::write(env_dir.join("secrets/tls.key"), "OLDKEY").unwrap();
        with_data_dir(&f);
        let fake = swarm_engine();
        // The rollout fails and is rolled back: the release was deployed, so it stays.
        let rollout = FakeRollout {
            ok: false,
            steps: Default::default(),
        };
        let w = deploy(&Client::new(&fake), &rollout, &f.request, &mut Vec::new()).unwrap();
        assert_eq!(w.outcome, Outcome::RolledBack);
        assert!(!f.request.release.join("old-only").exists());
        assert!(!env_dir.join("current.old").exists());
        assert_eq!(
            std::fs::read_to_string(env_dir.join("secrets/tls.key")).unwrap(),
            "tls.key"
        );
        assert!(!env_dir.join("secrets/.tls.key.prev").exists());
    }

    #[test]
    fn a_deploy_without_a_commit_does_not_reset_the_ancestry_check() {
        let mut f = fixture("REGISTRY=127.0.0.1:5000\n");
        write_record(&f, "bbbbbbbb", &["aaaaaaaa"]);
        // A later deploy by hand (a rotation, a local bring-up) names no commit.
        let by_hand = rollout_watcher::history::DeployRecord {
            id: "20261206T020000.000Z".into(),
            stack: "stackship-prod".into(),
            ..Default::default()
        };
        rollout_watcher::history::write(&f.request.env_dir().join("history"), &by_hand).unwrap();
        f.request
            .process_env
            .insert("CI_COMMIT_SHA".into(), "aaaaaaaa".into());
        let fake = swarm_engine();
        let rollout = FakeRollout {
            ok: true,
            steps: Default::default(),
        };
        let e = deploy(&Client::new(&fake), &rollout, &f.request, &mut Vec::new()).unwrap_err();
        assert!(
            e.to_string()
                .contains("commit aaaaaaaa is older than the running bbbbbbbb"),
            "{e}"
        );
    }

    #[test]
    fn print_images_of_an_upload_shows_the_upload() {
        let mut f = fixture("REGISTRY=127.0.0.1:5000\n");
        let upload = as_upload(&mut f);
        std::fs::write(
            upload.join("current/deploy-manifests/prod/images.env"),
            format!("BACKEND_TAG=20261207_bbbbbbbb\nPOSTGRES_IMAGE=postgres:15@{DIGEST}\n"),
        )
        .unwrap();
        let (_, settings) = read_settings_in(&f.request, &upload.join("current")).unwrap();
        assert!(
            images_text(&settings).contains("backend:20261207_bbbbbbbb"),
            "{}",
            images_text(&settings)
        );
    }
}
