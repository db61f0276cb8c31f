//! `config-hasher`: prints content-derived names for a compose file's configs and secrets.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{ArgGroup, Parser, ValueEnum};
use config_hasher::{Format, Options, Profile, Report, hash_compose_file, render};

const ABOUT: &str = "Names Docker Swarm configs and secrets after a hash of their content.";

const LONG_ABOUT: &str = "\
Names Docker Swarm configs and secrets after a hash of their content.

Swarm configs and secrets are immutable and a service only rolls when the name
it mounts changes. For every top-level `configs:` and `secrets:` entry that has
`file:` and `name: ${VAR}` (also `${VAR:-default}` / `${VAR-default}`), this
prints VAR with the value

    <var lower-cased>_<first N hex digits of sha256(file content)>

which is always a valid Swarm name (at most 64 characters; long prefixes are
shortened, never the hash). Same content gives the same name; any change gives
a new one. `file:` is relative to the compose file's directory and read as
written: a `${VAR}` in it is not expanded (use a fixed relative path). Entries
with `external: true` or without `file:` are left alone.

The name is always computed from content, even when VAR is already set in the
environment: the deploy exports the computed value, which replaces any stale one.
Output is sorted by variable name. Nothing is printed on stdout unless every
entry succeeded, so the output is always safe to export.";

const AFTER_HELP: &str = "\
Examples:
  config-hasher --prod                   # VAR=value lines for ./docker-compose.prod.yaml
  config-hasher --dev --check            # CI: validate everything, print no names
  config-hasher --compose stack/compose.yaml --format json

  # on the manager, before deploying (a failure must stop the deploy, and
  # `eval \"$(...)\"` alone would hide it):
  exports=\"$(config-hasher --prod --format export)\" || exit 1
  eval \"$exports\"
  docker stack deploy -c docker-compose.prod.yaml stackship-prod

Exit status: 0 success (also when there is nothing to name: a warning goes to
stderr), 1 the compose file or an entry is wrong (every problem is reported on
stderr), 2 bad command-line usage.";

/// Output format, as chosen on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FormatArg {
    /// VAR=value lines
    Env,
    /// export VAR='value' lines, safe to eval in a POSIX shell
    Export,
    /// one JSON object: {compose, hash_len, names{VAR: value}, entries[], skipped[]}
    Json,
}

impl From<FormatArg> for Format {
    fn from(f: FormatArg) -> Self {
        match f {
            FormatArg::Env => Format::Env,
            FormatArg::Export => Format::Export,
            FormatArg::Json => Format::Json,
        }
    }
}

/// Command line.
#[derive(Debug, Parser)]
#[command(name = "config-hasher", version, about = ABOUT, long_about = LONG_ABOUT, after_long_help = AFTER_HELP)]
#[command(group(ArgGroup::new("source").required(true).args(["prod", "dev", "compose"])))]
struct Cli {
    /// Use ./docker-compose.prod.yaml
    #[arg(long)]
    prod: bool,

    /// Use ./docker-compose.dev.yaml
    #[arg(long)]
    dev: bool,

    /// Use this compose file; `file:` paths are relative to its directory
    #[arg(long, value_name = "FILE")]
    compose: Option<PathBuf>,

    /// Output format
    #[arg(long, value_enum, default_value_t = FormatArg::Env, value_name = "FORMAT")]
    format: FormatArg,

    /// Hex digits of the SHA-256 kept in each name (8 to 40)
    #[arg(long, value_name = "N", default_value_t = 12,
          value_parser = clap::value_parser!(u8).range(8..=40))]
    hash_len: u8,

    /// Validate everything (files, sizes, names, duplicate variables) but print no names
    #[arg(long)]
    check: bool,

    /// Explain on stderr what was named, what was left alone and why
    #[arg(short, long)]
    verbose: bool,
}

impl Cli {
    fn compose_path(&self) -> PathBuf {
        if let Some(p) = &self.compose {
            p.clone()
        } else if self.dev {
            Profile::Dev.compose_file()
        } else {
            Profile::Prod.compose_file()
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("config-hasher: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let compose = cli.compose_path();
    let options = Options {
        hash_len: usize::from(cli.hash_len),
    };
    let report = hash_compose_file(&compose, &options)?;
    if cli.verbose {
        explain(&report);
    }
    if report.is_empty() {
        eprintln!(
            "config-hasher: warning: {}: no top-level configs or secrets with `file:` and `name: ${{VAR}}`; nothing to name",
            compose.display()
        );
    }
    if cli.check {
        eprintln!(
            "config-hasher: {}: ok, {} name(s) valid",
            compose.display(),
            report.names.len()
        );
        return Ok(());
    }
    let text = render(&report, cli.format.into());
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .context("cannot write to standard output")?;
    Ok(())
}

fn explain(report: &Report) {
    for n in &report.names {
        for s in &n.sources {
            eprintln!(
                "config-hasher: {} ({}, {} bytes): {}={}",
                s.entry,
                s.file.display(),
                n.size,
                n.variable,
                n.name
            );
        }
        if let Ok(current) = std::env::var(&n.variable) {
            if current != n.name {
                eprintln!(
                    "config-hasher: {} is set in the environment to `{current}`; the computed `{}` replaces it",
                    n.variable, n.name
                );
            }
        }
    }
    for s in &report.skipped {
        eprintln!("config-hasher: {} left alone: {}", s.entry, s.reason);
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn source_is_required_and_exclusive() {
        assert!(Cli::try_parse_from(["config-hasher"]).is_err());
        assert!(Cli::try_parse_from(["config-hasher", "--prod", "--dev"]).is_err());
        assert!(Cli::try_parse_from(["config-hasher", "--prod", "--compose", "x"]).is_err());
        let cli = Cli::try_parse_from(["config-hasher", "--dev"]).unwrap();
        assert_eq!(cli.compose_path(), PathBuf::from("docker-compose.dev.yaml"));
        let cli = Cli::try_parse_from(["config-hasher", "--prod"]).unwrap();
        assert_eq!(
            cli.compose_path(),
            PathBuf::from("docker-compose.prod.yaml")
        );
        assert_eq!(cli.format, FormatArg::Env);
        assert_eq!(cli.hash_len, 12);
    }

    #[test]
    fn hash_len_range() {
        for bad in ["7", "41", "0", "x"] {
            assert!(
                Cli::try_parse_from(["config-hasher", "--prod", "--hash-len", bad]).is_err(),
                "{bad}"
            );
        }
        for good in ["8", "40"] {
            assert!(Cli::try_parse_from(["config-hasher", "--prod", "--hash-len", good]).is_ok());
        }
    }
}
