//! `backend`: runs the service, or probes a running one with `backend healthcheck`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use backend::healthcheck::{self, Probe};
use backend::{Application, Settings, startup, telemetry};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version = backend::routes::version(), about = "The request log backend service")]
struct Cli {
    /// Configuration file (TOML). See config.sample.toml for every key.
    #[arg(long, global = true, default_value = "/app/config.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default).
    Serve,
    /// Probe the service running on this host; exit 0 when healthy, 1 otherwise.
    ///
    /// By default probes /api/service/health: healthy once the service has been ready
    /// (database reachable, migrations applied) since it started, then as long as it is alive.
    Healthcheck {
        /// Probe /api/service/ready (database reachable now, not draining) instead.
        #[arg(long, conflicts_with = "live")]
        ready: bool,
        /// Probe /api/service/ping (process alive, nothing else) instead.
        #[arg(long)]
        live: bool,
        /// Probe this URL instead of the one derived from the config's port.
        #[arg(long)]
        url: Option<String>,
        /// Give up after this many milliseconds.
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(&cli.config),
        Command::Healthcheck {
            ready,
            live,
            url,
            timeout_ms,
        } => {
            let probe = match (ready, live) {
                (true, _) => Probe::Ready,
                (_, true) => Probe::Ping,
                _ => Probe::Health,
            };
            healthcheck(&cli.config, probe, url, timeout_ms)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("backend: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: &std::path::Path) -> anyhow::Result<()> {
    let settings = Settings::load(config)?;
    telemetry::init(&settings.telemetry)?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let app = Application::build(settings).await?;
        app.run_until_stopped(startup::shutdown_signal()).await
    })
}

fn healthcheck(
    config: &std::path::Path,
    probe: Probe,
    url: Option<String>,
    timeout_ms: u64,
) -> anyhow::Result<()> {
    let url = match url {
        Some(url) => url,
        None => {
            // The port is all we need; a missing config file means the default port.
            let port = if config.exists() {
                Settings::load(config)?.server.port
            } else {
                Settings::default().server.port
            };
            healthcheck::probe_url(port, probe)
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(healthcheck::check(&url, Duration::from_millis(timeout_ms)))
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
