//! The binary, run end to end against fixture directories.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{Tree, assert_golden, fixture};

const BIN: &str = env!("CARGO_BIN_EXE_config-hasher");

/// Runs the binary in `dir` with a clean set of the variables the fixtures use.
fn run_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("PROJECT_PROD_BACKEND_CONFIG")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

#[test]
fn prod_default_format_matches_golden() {
    let o = run_in(&fixture("prod"), &["--prod"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_golden("prod.env", &stdout(&o));
    assert_eq!(stderr(&o), "");
}

#[test]
fn prod_export_and_json_match_golden() {
    let o = run_in(&fixture("prod"), &["--prod", "--format", "export"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_golden("prod.export", &stdout(&o));

    let o = run_in(&fixture("prod"), &["--prod", "--format", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_golden("prod.json", &stdout(&o));
}

#[test]
fn dev_matches_golden() {
    let o = run_in(&fixture("dev"), &["--dev"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_golden("dev.env", &stdout(&o));
    let o = run_in(&fixture("dev"), &["--dev", "--hash-len", "8"]);
    assert_golden("dev.hash-len-8.env", &stdout(&o));
}

#[test]
fn compose_flag_resolves_files_next_to_the_compose_file() {
    let elsewhere = tempfile::tempdir().unwrap();
    let compose = fixture("prod").join("docker-compose.prod.yaml");
    let o = run_in(elsewhere.path(), &["--compose", compose.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_golden("prod.env", &stdout(&o));
}

#[test]
fn export_output_evaluates_in_a_shell() {
    let script = format!(
        "eval \"$('{BIN}' --prod --format export)\" && printf '%s\\n' \"$PROJECT_PROD_TLS_KEY\" \"$PROJECT_PROD_BACKEND_CONFIG\""
    );
    let o = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(fixture("prod"))
        .env("PROJECT_PROD_BACKEND_CONFIG", "stale_value")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    // The computed value replaces a stale one already in the environment.
    assert_eq!(
        stdout(&o),
        "project_prod_tls_key_1e9b84acc72e\nproject_prod_backend_config_5bc396132876\n"
    );
}

#[test]
fn check_prints_no_names() {
    let o = run_in(&fixture("prod"), &["--prod", "--check"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "");
    assert!(stderr(&o).contains("ok, 4 name(s) valid"), "{}", stderr(&o));
}

#[test]
fn check_still_runs_every_validation() {
    let t = Tree::new();
    t.write("a", "one");
    t.write("b", "two");
    t.compose(
        "configs:\n  a:\n    name: ${SAME}\n    file: a\n  b:\n    name: ${SAME}\n    file: b\n",
    );
    let o = run_in(t.path(), &["--compose", "compose.yaml", "--check"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "");
    let err = stderr(&o);
    assert!(
        err.contains("compose.yaml: config `b`: variable SAME is also the name of config `a`"),
        "{err}"
    );
}

#[test]
fn verbose_explains_on_stderr_only() {
    let o = Command::new(BIN)
        .args(["--prod", "-v"])
        .current_dir(fixture("prod"))
        .env("PROJECT_PROD_BACKEND_CONFIG", "stale_value")
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_golden("prod.env", &stdout(&o));
    let err = stderr(&o);
    assert!(
        err.contains("secret `db-password` left alone: external"),
        "{err}"
    );
    assert!(
        err.contains("config `feature-flags` left alone: no file: (uses environment:)"),
        "{err}"
    );
    assert!(
        err.contains("config `backend-config` (./deploy-manifests/prod/backend/config.toml, 168 bytes): PROJECT_PROD_BACKEND_CONFIG=project_prod_backend_config_5bc396132876"),
        "{err}"
    );
    assert!(
        err.contains("PROJECT_PROD_BACKEND_CONFIG is set in the environment to `stale_value`; the computed `project_prod_backend_config_5bc396132876` replaces it"),
        "{err}"
    );
}

#[test]
fn missing_compose_file_fails_with_empty_stdout() {
    let t = Tree::new();
    let o = run_in(t.path(), &["--prod"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "");
    assert_eq!(
        stderr(&o),
        "config-hasher: error: compose file docker-compose.prod.yaml: does not exist\n"
    );
}

#[test]
fn entry_error_names_file_entry_and_cause_and_prints_nothing() {
    let t = Tree::new();
    t.write("ok.conf", "fine");
    t.write(
        "docker-compose.dev.yaml",
        "configs:\n  ok:\n    name: ${OK}\n    file: ./ok.conf\n  broken:\n    name: ${BROKEN}\n    file: ./missing.conf\n",
    );
    let o = run_in(t.path(), &["--dev", "--format", "export"]);
    assert_eq!(o.status.code(), Some(1));
    // Nothing for the good entry either: a partial export would be worse than none.
    assert_eq!(stdout(&o), "");
    assert_eq!(
        stderr(&o),
        "config-hasher: error: docker-compose.dev.yaml: config `broken`: file ./missing.conf does not exist\n"
    );
}

#[test]
fn yaml_error_reports_line_and_column() {
    let t = Tree::new();
    t.write(
        "docker-compose.prod.yaml",
        "configs:\n  a:\n    name: ${A}\n  - b\n",
    );
    let o = run_in(t.path(), &["--prod"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "");
    let err = stderr(&o);
    assert!(
        err.starts_with("config-hasher: error: docker-compose.prod.yaml: YAML syntax error at line 4, column 3: "),
        "{err}"
    );
}

#[test]
fn no_entries_warns_and_succeeds() {
    let t = Tree::new();
    t.write(
        "docker-compose.prod.yaml",
        "services:\n  web:\n    image: nginx\n",
    );
    let o = run_in(t.path(), &["--prod"]);
    assert!(o.status.success());
    assert_eq!(stdout(&o), "");
    assert!(
        stderr(&o).starts_with(
            "config-hasher: warning: docker-compose.prod.yaml: no top-level configs or secrets"
        ),
        "{}",
        stderr(&o)
    );
}

#[test]
fn usage_errors_exit_2() {
    let t = Tree::new();
    for args in [
        &[][..],
        &["--prod", "--dev"][..],
        &["--prod", "--hash-len", "64"][..],
        &["--prod", "--format", "yaml"][..],
    ] {
        let o = run_in(t.path(), args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert_eq!(stdout(&o), "", "{args:?}");
    }
}

#[test]
fn help_documents_every_flag() {
    let o = run_in(Path::new("."), &["--help"]);
    assert!(o.status.success());
    let help = stdout(&o);
    for flag in [
        "--prod",
        "--dev",
        "--compose <FILE>",
        "--format <FORMAT>",
        "--hash-len <N>",
        "--check",
        "--verbose",
        "Exit status:",
        "exports=\"$(config-hasher --prod --format export)\" || exit 1",
    ] {
        assert!(help.contains(flag), "missing {flag:?} in:\n{help}");
    }
}
