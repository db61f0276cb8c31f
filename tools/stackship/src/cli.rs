//! The command line: clap's definitions and the dispatch to [`crate::commands`].

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use std::collections::BTreeMap;

use crate::commands::{deploy, history, status};
use crate::docker::{Client, cli::CliEngine};
use crate::error::Error;
use crate::exit::Outcome;
use crate::layout::{self, EnvDir};

/// Deploys, records and inspects one environment's Docker Swarm stack on the manager.
#[derive(Debug, Parser)]
#[command(
    name = "stackship",
    version,
    after_help = "Exit status: 0 done; 1 the release failed and was rolled back (the old version serves); 2 nothing was changed (bad input, a refusal, a lock timeout, a Docker error); 3 the state is unknown (the rollout may still be moving)."
)]
pub struct Cli {
    /// Where the environment directories are (<root>/<env>/current, deploy.env, history/).
    #[arg(
        long,
        global = true,
        env = "STACKSHIP_DEPLOY_ROOT",
        default_value = layout::DEFAULT_ROOT
    )]
    pub root: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// What runs in each environment: image tag and digest, replicas, since when, the last
    /// deploy, and drift (anything that differs from the last deploy record).
    Status {
        /// Environments to show (default: every one under --root).
        envs: Vec<String>,
        /// JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Deploy the environment's installed release (<root>/<env>/current): read and check
    /// everything, take the lock, pull every image, `docker stack deploy`, follow the rollout
    /// to a verdict, record it, prune.
    Deploy(DeployArgs),
    /// Releases on the manager.
    #[command(subcommand)]
    Release(ReleaseCommand),
    /// Review stacks (one per merge request, stackship-review-<iid>).
    #[command(subcommand)]
    Review(crate::commands::review::ReviewCommand),
    /// Return the environment to an earlier deploy: its images (by digest) and configs, deployed
    /// and watched like any release (secrets, the database and services added since stay).
    Rollback {
        env: String,
        /// The record to return to: an id from --list or a unique prefix of one (default: the
        /// newest deploy whose images or configs differ from the last one).
        #[arg(long, value_name = "ID")]
        to: Option<String>,
        /// The deploy records, newest first, and which can be restored (changes nothing).
        #[arg(long, conflicts_with_all = ["to", "dry_run"])]
        list: bool,
        /// Show what would be deployed; deploy nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// The environment's Swarm secrets: create, initialise and rotate the database password,
    /// list (never values).
    #[command(subcommand)]
    Secret(crate::commands::secret::SecretCommand),
    /// The logs of the environment's services (or one service's), each line tagged with its
    /// task (service.slot, task id, node) and the version it runs.
    Logs(crate::commands::logs::LogsArgs),
    /// Run a command in a running task of a service on this node (`docker exec`), with its
    /// exit status passed through.
    Exec(crate::commands::exec::ExecArgs),
    /// The environment's database: backup, restore (writes refused meanwhile), a tunnel to it
    /// on this manager's loopback, a psql console.
    #[command(subcommand)]
    Db(crate::commands::db::DbCommand),
    /// The environment's TLS certificate from an ACME CA (Let's Encrypt by default): issue,
    /// renew when due (the daily timer), show. A new certificate is deployed like any release:
    /// under the deploy lock, only the proxy rolls, recorded.
    #[command(subcommand)]
    Cert(crate::commands::cert::CertCommand),
    /// The deploy records of an environment, newest first.
    History {
        env: String,
        /// JSON (the records as stored) instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// Install a release the copy step assembled (DIR, inside the environment directory) as
    /// <root>/<env>/current, under the environment's deploy lock: a running deploy keeps its
    /// files, nothing of the old release survives, a refused one changes nothing.
    Install {
        env: String,
        /// The release directory to install.
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        /// How long to wait for a deploy that holds the lock, in seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = crate::settings::Defaults::LOCK_WAIT.as_secs())]
        lock_wait: u64,
        /// The environment directory (default: <root>/<env>).
        #[arg(long, value_name = "DIR")]
        env_dir: Option<PathBuf>,
    },
}

/// `release install`: check, lock, swap.
fn install_command(
    root: &Path,
    env: &str,
    from: &Path,
    lock_wait: u64,
    dest: Option<PathBuf>,
) -> Result<Outcome, Error> {
    let mut dir = env_dir(root, env)?;
    if let Some(dest) = dest {
        dir.dir = dest;
    }
    crate::release::check(from, env, false)?;
    crate::release::check_location(&dir.dir, from)?;
    let process_env = process_env();
    let mut say = |m: &str| eprintln!("{} [stackship] {m}", chrono::Utc::now().format("%H:%M:%S"));
    let lock = crate::lock::DeployLock::acquire(
        &dir.dir,
        &format!("{env} deploy"),
        &owner(&process_env),
        std::time::Duration::from_secs(lock_wait),
        &mut say,
    )?;
    let current = crate::release::swap(&dir.dir, from, &lock)?;
    say(&format!("release installed: {}", current.display()));
    Ok(Outcome::Done)
}

fn env_dir(root: &Path, env: &str) -> Result<EnvDir, Error> {
    if !layout::is_valid_env(env) {
        return Err(Error::Refused(format!(
            "'{env}' is not an environment name (lower-case letters, digits and -)"
        )));
    }
    Ok(EnvDir::new(root, env))
}

/// The environments with a directory under `root` (review stacks live under `review/`).
fn environments(root: &Path) -> Result<Vec<String>, Error> {
    let entries = std::fs::read_dir(root).map_err(Error::io(format!(
        "cannot list the environments in {}",
        root.display()
    )))?;
    let mut envs: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n != "review" && layout::is_valid_env(n))
        .collect();
    envs.sort();
    Ok(envs)
}

fn records(env: &EnvDir) -> Result<Vec<rollout_watcher::history::DeployRecord>, Error> {
    rollout_watcher::history::read_all(&env.history()).map_err(|e| Error::Records(format!("{e:#}")))
}

fn write_out(out: &mut dyn Write, text: &str) -> Result<(), Error> {
    match out.write_all(text.as_bytes()) {
        // A reader that stopped early (`| head`) is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.map_err(Error::io("cannot write to stdout")),
    }
}

/// Runs the command; results go to `out`, progress to stderr.
pub fn run(cli: Cli, out: &mut dyn Write) -> Result<Outcome, Error> {
    let engine = CliEngine::default();
    let client = Client::new(&engine);
    run_with(cli, &client, out)
}

/// The process's environment (variables that are not UTF-8 are left out).
fn process_env() -> BTreeMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// This process as the lock's owner line.
fn owner(env: &BTreeMap<String, String>) -> String {
    crate::lock::this_process(
        &chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        env.get("CI_JOB_URL").map(String::as_str),
    )
}

/// What `stackship deploy` was asked.
#[derive(Debug, Default, clap::Args)]
pub struct DeployArgs {
    /// dev, prod, ...; with --review, the environment whose release it copies (dev).
    env: Option<String>,
    /// The review stack of merge request IID (docker-compose.review.yaml), instead.
    #[arg(long, value_name = "IID", value_parser = clap::value_parser!(u32).range(1..=999_999_999))]
    review: Option<u32>,
    /// Image tag of every project service (default: IMAGE_TAG, else the pins).
    #[arg(long)]
    tag: Option<String>,
    /// How long the rollout may take, in seconds (default: ROLLOUT_TIMEOUT, else derived
    /// from each service's update and healthcheck settings).
    #[arg(long)]
    timeout: Option<String>,
    /// Print each image the deploy would run, with where its tag or digest comes from, and
    /// exit (no Docker needed).
    #[arg(long)]
    print_images: bool,
    /// The release directory (default: <root>/<env>/current; <root>/review/<IID>/current).
    #[arg(long, conflicts_with = "from")]
    release: Option<PathBuf>,
    /// Install this release first (a directory inside the environment directory, as the
    /// deploy job uploads it): it replaces current/ under the deploy's own lock.
    #[arg(long, value_name = "DIR")]
    from: Option<PathBuf>,
    /// With --from: the uploaded secret source files (tls.crt and tls.key) to install in
    /// <env dir>/secrets/.
    #[arg(long, value_name = "DIR", requires = "from")]
    secrets: Option<PathBuf>,
    /// Read the deploy job's settings as KEY=VALUE lines on stdin (registry login, tags,
    /// CI_COMMIT_SHA, COMMIT_ANCESTORS, ...): no secret on a command line.
    #[arg(long)]
    settings_stdin: bool,
    /// Deploy even if the commit is older than the one running (an ancestor of it).
    #[arg(long)]
    allow_older: bool,
    /// Print the rollout report (JSON) on stdout instead of the summary.
    #[arg(long)]
    json: bool,
}

fn deploy_command(
    root: &Path,
    args: DeployArgs,
    client: &Client<'_>,
    out: &mut dyn Write,
) -> Result<Outcome, Error> {
    let DeployArgs {
        env,
        review,
        tag,
        timeout,
        print_images,
        release,
        from,
        secrets,
        settings_stdin,
        allow_older,
        json,
    } = args;
    let job_settings = if settings_stdin {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .map_err(Error::io("cannot read the deploy job's settings on stdin"))?;
        Some(text)
    } else {
        None
    };
    let env = match (env, review) {
        (Some(e), _) => e,
        (None, Some(_)) => "dev".to_owned(),
        (None, None) => {
            return Err(Error::Refused(
                "which environment? (stackship deploy ENV, or --review IID)".to_owned(),
            ));
        }
    };
    let dir = env_dir(root, &env)?;
    let release = release.unwrap_or_else(|| match review {
        Some(iid) => root.join("review").join(iid.to_string()).join("current"),
        None => dir.current(),
    });
    let mut process_env = process_env();
    if let Some(text) = job_settings {
        // The job's settings act as the environment, and win over the manager's own.
        process_env.extend(crate::settings::parse_job_settings(&text)?);
    }
    let request = deploy::Request {
        release,
        env,
        review,
        tag,
        timeout,
        owner: owner(&process_env),
        process_env,
        data_root: PathBuf::from(deploy::DATA_ROOT),
        install: from.map(|from| deploy::Install { from, secrets }),
        allow_older,
        lock_held_here: false,
        note: None,
        stop: crate::interrupt::requested,
    };
    if print_images {
        // What this deploy would run: the upload's images with --from.
        let source = request
            .install
            .as_ref()
            .map_or(request.release.clone(), |i| i.from.clone());
        let (_, settings) =
            deploy::read_settings_in(&request, &source).map_err(|e| Error::Deploy(Box::new(e)))?;
        write_out(out, &deploy::images_text(&settings))?;
        return Ok(Outcome::Done);
    }
    // Ctrl-C ends the waits for helper tasks (removing them) instead of killing the process.
    crate::interrupt::install().map_err(Error::io("cannot catch Ctrl-C"))?;
    let mut stderr = std::io::stderr();
    let watched = deploy::deploy(client, &deploy::WatcherRollout, &request, &mut stderr)
        .map_err(|e| Error::Deploy(Box::new(e)))?;
    write_out(
        out,
        if json {
            &watched.report
        } else {
            &watched.summary
        },
    )?;
    Ok(watched.outcome)
}

/// `stackship cert`.
fn cert_command(
    root: &Path,
    command: crate::commands::cert::CertCommand,
    client: &Client<'_>,
    out: &mut dyn Write,
) -> Result<Outcome, Error> {
    use crate::commands::cert::{self, CertCommand};
    let now = chrono::Utc::now();
    let (args, force) = match command {
        CertCommand::Show { env, json } => {
            let dir = env_dir(root, &env)?;
            let installed = cert::installed(&dir.dir, now).map_err(Error::Refused)?;
            let Some(installed) = installed else {
                return Err(Error::Refused(format!(
                    "no certificate in {} (stackship cert issue {env})",
                    cert::Files::of(&dir.dir).cert().display()
                )));
            };
            let text = if json {
                serde_json::to_string_pretty(&installed)
                    .map_err(|e| Error::Refused(format!("cannot render JSON: {e}")))?
                    + "\n"
            } else {
                cert::render(&installed)
            };
            write_out(out, &text)?;
            return Ok(Outcome::Done);
        }
        CertCommand::Issue(args) => (args, true),
        CertCommand::Renew { args, force } => (args, force),
    };
    let dir = env_dir(root, &args.env)?;
    crate::interrupt::install().map_err(Error::io("cannot catch Ctrl-C"))?;
    let process_env = process_env();
    let request = cert::Request {
        env_dir: dir.dir.clone(),
        env: args.env.clone(),
        flags: crate::settings::AcmeFlags {
            domains: args.domains,
            directory: args.directory,
        },
        force,
        owner: owner(&process_env),
        process_env,
        data_root: PathBuf::from(deploy::DATA_ROOT),
        stop: crate::interrupt::requested,
        now,
        timing: cert::ResponderTiming::default(),
    };
    let ca = cert::AcmeCa {
        options: crate::acme::IssueOptions::default(),
        stop: crate::interrupt::requested,
    };
    let deployer = |r: &deploy::Request, p: &mut dyn Write| {
        deploy::deploy(client, &deploy::WatcherRollout, r, p)
    };
    let (outcome, text) = cert::obtain(client, &ca, &deployer, &request, &mut std::io::stderr())?;
    write_out(out, &text)?;
    Ok(outcome)
}

/// As [`run`], with the Docker client given (tests pass a fake).
pub fn run_with(cli: Cli, client: &Client<'_>, out: &mut dyn Write) -> Result<Outcome, Error> {
    match cli.command {
        Command::Status { envs, json } => {
            let envs = if envs.is_empty() {
                environments(&cli.root)?
            } else {
                envs
            };
            if envs.is_empty() {
                return Err(Error::Refused(format!(
                    "no environment under {} (the copy step makes <root>/<env>/current)",
                    cli.root.display()
                )));
            }
            let mut all = Vec::new();
            for env in &envs {
                let dir = env_dir(&cli.root, env)?;
                let observed = status::gather(client, &dir.stack())?;
                let recs = records(&dir)?;
                let mut status = status::report(env, &dir.stack(), &observed, recs.last());
                status.certificate = status::certificate(&dir.dir, chrono::Utc::now());
                let settings_env: std::collections::BTreeMap<String, String> = std::env::vars()
                    .filter(|(k, _)| k.starts_with("BACKUP_"))
                    .collect();
                status.backups = Some(status::backups(&dir.dir, &settings_env, chrono::Utc::now()));
                all.push(status);
            }
            let text = if json {
                let mut t = serde_json::to_string_pretty(&all)
                    .map_err(|e| Error::Refused(format!("cannot render JSON: {e}")))?;
                t.push('\n');
                t
            } else {
                all.iter()
                    .map(status::render)
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            write_out(out, &text)?;
            Ok(Outcome::Done)
        }
        Command::Deploy(args) => deploy_command(&cli.root, args, client, out),
        Command::Rollback {
            env,
            to,
            list,
            dry_run,
        } => {
            let dir = env_dir(&cli.root, &env)?;
            if list {
                let text = crate::commands::rollback::listing(client, &dir.dir)?;
                write_out(out, &text)?;
                return Ok(Outcome::Done);
            }
            let process_env = process_env();
            crate::interrupt::install().map_err(Error::io("cannot catch Ctrl-C"))?;
            let request = crate::commands::rollback::Request {
                stop: crate::interrupt::requested,
                data_root: PathBuf::from(deploy::DATA_ROOT),
                env_dir: dir.dir.clone(),
                env,
                want: to,
                dry_run,
                owner: owner(&process_env),
                process_env,
            };
            let (outcome, summary) = crate::commands::rollback::rollback(
                client,
                &deploy::WatcherRollout,
                &request,
                &mut std::io::stderr(),
            )?;
            write_out(out, &summary)?;
            Ok(outcome)
        }
        Command::Release(ReleaseCommand::Install {
            env,
            from,
            lock_wait,
            env_dir,
        }) => install_command(&cli.root, &env, &from, lock_wait, env_dir),
        Command::Review(command) => {
            crate::commands::review::run(&cli.root, command, client, &owner(&process_env()))
        }
        Command::Secret(command) => {
            let (outcome, text) = crate::commands::secret::run(
                client,
                &deploy::WatcherRollout,
                &|env: &str| env_dir(&cli.root, env),
                owner(&process_env()),
                command,
                &mut std::io::stderr(),
            )?;
            write_out(out, &text)?;
            Ok(outcome)
        }
        Command::Logs(args) => {
            let dir = env_dir(&cli.root, &args.env)?;
            crate::interrupt::install().map_err(Error::io("cannot catch Ctrl-C"))?;
            crate::commands::logs::run(client, &dir, &args, out, &crate::interrupt::requested)
        }
        Command::Exec(args) => {
            let dir = env_dir(&cli.root, &args.env)?;
            crate::commands::exec::run(client, &dir, &args, &mut std::io::stderr())
        }
        Command::Db(command) => {
            crate::interrupt::install().map_err(Error::io("cannot install the signal handlers"))?;
            crate::commands::db::run(
                &cli.root,
                command,
                client,
                out,
                &crate::interrupt::requested,
            )
        }
        Command::Cert(command) => cert_command(&cli.root, command, client, out),
        Command::History { env, json } => {
            let dir = env_dir(&cli.root, &env)?;
            let recs = records(&dir)?;
            let text = if json {
                let mut t = serde_json::to_string_pretty(&recs)
                    .map_err(|e| Error::Refused(format!("cannot render JSON: {e}")))?;
                t.push('\n');
                t
            } else {
                history::render(&recs)
            };
            write_out(out, &text)?;
            Ok(Outcome::Done)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::fake::FakeEngine;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("stackship").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn status_of_every_environment_under_the_root() {
        let root = tempfile::tempdir().unwrap();
        for d in ["prod", "dev", "review", "Not-An-Env"] {
            std::fs::create_dir(root.path().join(d)).unwrap();
        }
        let fake = FakeEngine::new();
        fake.answer(&["service", "ls"], "");
        let mut out = Vec::new();
        let root_arg = root.path().to_str().unwrap();
        let outcome = run_with(
            cli(&["status", "--root", root_arg]),
            &Client::new(&fake),
            &mut out,
        )
        .unwrap();
        assert_eq!(outcome, Outcome::Done);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("dev (stackship-dev)\n"), "{text}");
        assert!(text.contains("\nprod (stackship-prod)\n"), "{text}");
        assert!(!text.contains("review"), "{text}");
        assert_eq!(fake.calls().len(), 2);
        assert!(fake.writes().is_empty());
    }

    #[test]
    fn status_and_cert_show_name_each_environments_certificate() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("prod/secrets")).unwrap();
        std::fs::create_dir_all(root.path().join("dev")).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["a.example".to_owned(), "b.example".to_owned()])
                .unwrap();
        params.not_after = rcgen::date_time_ymd(2999, 1, 2);
        let pem = params.self_signed(&key).unwrap().pem();
        std::fs::write(root.path().join("prod/secrets/tls.crt"), pem).unwrap();
        let fake = FakeEngine::new();
        fake.answer(&["service", "ls"], "");
        let root_arg = root.path().to_str().unwrap();
        let mut out = Vec::new();
        run_with(
            cli(&["status", "--root", root_arg]),
            &Client::new(&fake),
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        let prod = text.split("prod (stackship-prod)").nth(1).unwrap();
        assert!(
            prod.contains("  certificate: a.example, b.example — issuer CN=rcgen self signed cert — expires 2999-01-02 00:00 UTC ("),
            "{text}"
        );
        // dev has none: no line.
        assert_eq!(text.matches("certificate:").count(), 1, "{text}");
        let mut out = Vec::new();
        run_with(
            cli(&["status", "prod", "--json", "--root", root_arg]),
            &Client::new(&fake),
            &mut out,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v[0]["certificate"]["installed"]["names"],
            serde_json::json!(["a.example", "b.example"])
        );
        let mut out = Vec::new();
        run_with(
            cli(&["cert", "show", "prod", "--root", root_arg]),
            &Client::new(&fake),
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("names:      a.example, b.example\n"),
            "{text}"
        );
        let e = run_with(
            cli(&["cert", "show", "dev", "--root", root_arg]),
            &Client::new(&fake),
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("no certificate in "), "{e}");
        assert!(e.to_string().ends_with("(stackship cert issue dev)"), "{e}");
        assert!(fake.writes().is_empty());
    }

    #[test]
    fn status_json_is_a_list_of_environments() {
        let root = tempfile::tempdir().unwrap();
        let fake = FakeEngine::new();
        fake.answer(&["service", "ls"], "");
        let mut out = Vec::new();
        let root_arg = root.path().to_str().unwrap();
        run_with(
            cli(&["status", "prod", "--json", "--root", root_arg]),
            &Client::new(&fake),
            &mut out,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v[0]["stack"], "stackship-prod");
        assert_eq!(v[0]["services"], serde_json::json!([]));
    }

    #[test]
    fn bad_environments_and_empty_roots_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let fake = FakeEngine::new();
        let root_arg = root.path().to_str().unwrap();
        let e = run_with(
            cli(&["status", "../etc", "--root", root_arg]),
            &Client::new(&fake),
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("'../etc' is not an environment name"),
            "{e}"
        );
        assert_eq!(e.outcome(), Outcome::NothingChanged);
        let e = run_with(
            cli(&["status", "--root", root_arg]),
            &Client::new(&fake),
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("no environment under"), "{e}");
        let e = run_with(
            cli(&["status", "--root", "/nonexistent/root"]),
            &Client::new(&fake),
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("cannot list the environments in /nonexistent/root"),
            "{e}"
        );
        assert!(fake.calls().is_empty());
    }

    #[test]
    fn history_reads_the_records_and_names_a_bad_one() {
        let root = tempfile::tempdir().unwrap();
        let history = root.path().join("prod/history");
        std::fs::create_dir_all(&history).unwrap();
        std::fs::write(
            history.join("20261206T010000.000Z.json"),
            r#"{"id":"20261206T010000.000Z","stack":"stackship-prod","services":{"backend":{"image":"r/stackship/backend:t","configs":[],"secrets":[]}}}"#,
        )
        .unwrap();
        let fake = FakeEngine::new();
        let root_arg = root.path().to_str().unwrap();
        let mut out = Vec::new();
        run_with(
            cli(&["history", "prod", "--root", root_arg]),
            &Client::new(&fake),
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("20261206T010000.000Z (last deploy)\n    images: backend=backend:t\n"),
            "{text}"
        );
        let mut out = Vec::new();
        run_with(
            cli(&["history", "prod", "--json", "--root", root_arg]),
            &Client::new(&fake),
            &mut out,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v[0]["id"], "20261206T010000.000Z");
        std::fs::write(history.join("broken.json"), "{").unwrap();
        let e = run_with(
            cli(&["history", "prod", "--root", root_arg]),
            &Client::new(&fake),
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("broken.json"), "{e}");
        assert!(fake.calls().is_empty());
    }

    #[test]
    fn a_closed_stdout_is_not_an_error() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        assert!(write_out(&mut Closed, "x").is_ok());
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("disk full"))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        assert!(
            write_out(&mut Full, "x")
                .unwrap_err()
                .to_string()
                .contains("disk full")
        );
    }

    #[test]
    fn the_lock_owner_is_this_process_with_its_ci_job() {
        let job = BTreeMap::from([("CI_JOB_URL".to_owned(), "https://ci/jobs/9".to_owned())]);
        for (env, tail) in [(job, ", job https://ci/jobs/9"), (BTreeMap::new(), "")] {
            crate::lock::assert_this_process_line(&owner(&env), tail);
        }
    }
}
