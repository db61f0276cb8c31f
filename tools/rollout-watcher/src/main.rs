//! `rollout-watcher`: snapshot a stack before `docker stack deploy`, watch its rollout after,
//! prune its unused configs and secrets. See the crate docs and the README.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rollout_watcher::assess::Rules;
use rollout_watcher::watch::{self, Options, Snapshot};
use rollout_watcher::{docker, history, prune};

#[derive(Parser)]
#[command(
    version,
    about = "Follows a Docker Swarm stack's rollout and fails loudly when it does not settle"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the stack's state before a deploy (JSON), for `watch --snapshot`.
    Snapshot {
        /// The stack name, e.g. stackship-prod.
        stack: String,
        /// Write to this file instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Follow the stack until every service settled. Exit 0 when all are healthy on their new
    /// spec, 1 when one failed (rolled back, paused, crash-looping, unschedulable, timed out),
    /// 2 on errors.
    Watch {
        stack: String,
        /// The snapshot taken before the deploy.
        #[arg(long)]
        snapshot: PathBuf,
        /// Give up after this many seconds (default: from each service's update and
        /// healthcheck settings, for an update and a rollback, plus 60 s).
        #[arg(long)]
        timeout: Option<u64>,
        /// A service without an update of its own (first deploy) fails after this many
        /// task failures instead of waiting for the timeout.
        #[arg(long, default_value_t = 3)]
        max_task_failures: u64,
        /// Poll interval in milliseconds.
        #[arg(long, default_value_t = 1000)]
        poll_ms: u64,
        /// Log lines of a failed task to show.
        #[arg(long, default_value_t = 20)]
        log_lines: usize,
        /// Also write the report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// After a successful watch, write a deploy record into this directory.
        #[arg(long)]
        record: Option<PathBuf>,
    },
    /// Remove the stack's configs and secrets that no current or previous service spec and
    /// none of the last KEEP deploy records use.
    Prune {
        stack: String,
        /// The deploy records (`watch --record`).
        #[arg(long)]
        history: PathBuf,
        /// How many recent deploys stay restorable.
        #[arg(long, default_value_t = 3)]
        keep: usize,
        /// Only print what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("rollout-watcher: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(command: Command) -> anyhow::Result<bool> {
    match command {
        Command::Snapshot { stack, output } => {
            let snap = watch::snapshot(&stack)?;
            let text = serde_json::to_string_pretty(&snap)?;
            match output {
                Some(path) => std::fs::write(&path, text + "\n")
                    .with_context(|| format!("cannot write {}", path.display()))?,
                None => println!("{text}"),
            }
            Ok(true)
        }
        Command::Watch {
            stack,
            snapshot,
            timeout,
            max_task_failures,
            poll_ms,
            log_lines,
            json,
            record,
        } => {
            let text = std::fs::read_to_string(&snapshot)
                .with_context(|| format!("cannot read the snapshot {}", snapshot.display()))?;
            let snap: Snapshot = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a snapshot", snapshot.display()))?;
            anyhow::ensure!(
                snap.stack == stack,
                "the snapshot {} is of stack {}, not {stack}",
                snapshot.display(),
                snap.stack
            );
            let poll = Duration::from_millis(poll_ms.max(100));
            let options = Options {
                timeout: timeout.map(Duration::from_secs),
                poll,
                rules: Rules {
                    max_task_failures: max_task_failures.max(1),
                    // Two samples a poll apart settle a service with no update of its own.
                    confirm_after: poll,
                    ..Rules::default()
                },
                log_lines,
            };
            let report = watch::watch(&snap, &options, &mut std::io::stderr())?;
            print!("{}", watch::summary(&report));
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            if report.ok
                && let Some(dir) = record
            {
                let services: Vec<_> = docker::stack_services(&stack)?
                    .into_iter()
                    .map(|s| s.service)
                    .collect();
                let id = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ").to_string();
                let mut record = history::record_of(&id, &stack, &services);
                // What the CI job deploying it says it came from (absent outside CI).
                let from_env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
                record.commit = from_env("CI_COMMIT_SHA");
                record.pipeline = from_env("CI_PIPELINE_URL");
                let path = history::write(&dir, &record)?;
                eprintln!("deploy recorded in {}", path.display());
            }
            Ok(report.ok)
        }
        Command::Prune {
            stack,
            history: dir,
            keep,
            dry_run,
        } => {
            let services = docker::stack_services(&stack)?;
            let records = history::read_all(&dir)?;
            let (configs, secrets) = prune::kept_names(&services, &records, keep);
            let mut ok = true;
            for (kind, kept) in [("config", &configs), ("secret", &secrets)] {
                let all = docker::stack_objects(kind, &stack)?;
                for object in prune::removable(&all, kept) {
                    if dry_run {
                        println!("would remove {kind} {}", object.name);
                        continue;
                    }
                    match docker::docker(&[kind, "rm", &object.id]) {
                        Ok(_) => println!("removed {kind} {}", object.name),
                        Err(e) => {
                            eprintln!("could not remove {kind} {}: {e:#}", object.name);
                            ok = false;
                        }
                    }
                }
            }
            Ok(ok)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
