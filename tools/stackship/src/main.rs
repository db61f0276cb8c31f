//! `stackship`: see the crate docs and `stackship --help`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = stackship::cli::Cli::parse();
    let mut stdout = std::io::stdout().lock();
    match stackship::cli::run(cli, &mut stdout) {
        Ok(outcome) => outcome.into(),
        Err(e) => {
            eprintln!("stackship: error: {e:#}");
            e.outcome().into()
        }
    }
}
