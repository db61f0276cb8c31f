//! The built `stackship` binary against fixture releases in a temp dir, with a stand-in
//! `docker` on PATH that logs its arguments and answers as told (no Docker needed).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    /// A prod release as the copy step makes it, and a `docker` that fails `info` with
    /// `docker_info_error` (every call is logged to docker.log).
    fn new(deploy_env: &str, docker_info_error: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let release = dir.path().join("root/prod/current");
        fs::create_dir_all(release.join("deploy-manifests/prod/backend")).unwrap();
        fs::write(
            release.join("deploy-manifests/prod/backend/config.toml"),
            "title = \"x\"\n",
        )
        .unwrap();
        fs::write(
            release.join("deploy-manifests/prod/images.env"),
            format!("BACKEND_TAG=20261206_aaaaaaaa\nPOSTGRES_IMAGE=postgres:15@{DIGEST}\n"),
        )
        .unwrap();
        fs::write(
            release.join("docker-compose.prod.yaml"),
            "services:\n  backend:\n    image: ${REGISTRY}/stackship/backend:${BACKEND_TAG}\n    configs: [backend_config]\n  postgres:\n    image: ${POSTGRES_IMAGE}\nconfigs:\n  backend_config:\n    name: ${PROD_BACKEND_CONFIG}\n    file: ./deploy-manifests/prod/backend/config.toml\n",
        )
        .unwrap();
        fs::write(dir.path().join("root/prod/deploy.env"), deploy_env).unwrap();
        let bin = dir.path().join("bin");
        fs::create_dir(&bin).unwrap();
        let docker = bin.join("docker");
        fs::write(
            &docker,
            format!(
                "#!/bin/sh\necho \"$*\" >> '{}'\necho '{docker_info_error}' >&2\nexit 1\n",
                dir.path().join("docker.log").display()
            ),
        )
        .unwrap();
        fs::set_permissions(&docker, fs::Permissions::from_mode(0o755)).unwrap();
        Self { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn path_env(&self) -> String {
        format!(
            "{}:{}",
            self.dir.path().join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    fn stackship(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_stackship"))
            .args(args)
            .env("STACKSHIP_DEPLOY_ROOT", self.root())
            .env("PATH", self.path_env())
            .env_remove("REGISTRY")
            .env_remove("IMAGE_TAG")
            .env_remove("STACKSHIP_DEPLOY_LOCK_FD")
            .output()
            .unwrap()
    }

    fn docker_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("docker.log")).unwrap_or_default()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn help_names_every_verb_and_the_exit_codes() {
    let out = Command::new(env!("CARGO_BIN_EXE_stackship"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = text(&out.stdout);
    for verb in ["deploy", "status", "history", "release"] {
        assert!(help.contains(verb), "{help}");
    }
    assert!(help.contains("3 the state is unknown"), "{help}");
}

#[test]
fn print_images_needs_no_docker() {
    let f = Fixture::new("REGISTRY=127.0.0.1:5000\n", "unused");
    let out = f.stackship(&["deploy", "prod", "--print-images"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("backend 127.0.0.1:5000/stackship/backend:20261206_aaaaaaaa ("),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("postgres postgres:15@{DIGEST} (")),
        "{stdout}"
    );
    assert!(f.docker_log().is_empty());
}

#[test]
fn bad_settings_exit_2_naming_file_line_and_key() {
    let f = Fixture::new("REGISTRY=127.0.0.1:5000\nLOCK_WAIT=soon\n", "unused");
    let out = f.stackship(&["deploy", "prod"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("read: "), "{stderr}");
    assert!(
        stderr.contains("prod/deploy.env:2: LOCK_WAIT 'soon' is not a number of seconds"),
        "{stderr}"
    );
    assert!(f.docker_log().is_empty());
}

fn bash(script: &str, f: &Fixture) -> Output {
    Command::new("bash")
        .arg("-c")
        .arg(script)
        .env("STACKSHIP_DEPLOY_ROOT", f.root())
        .env("PATH", f.path_env())
        .env("STACKSHIP", env!("CARGO_BIN_EXE_stackship"))
        .env_remove("STACKSHIP_DEPLOY_LOCK_FD")
        .output()
        .unwrap()
}

fn lock_file(f: &Fixture) -> PathBuf {
    f.root().join("prod/deploy.lock")
}

#[test]
fn a_lock_held_by_a_shell_step_keeps_a_deploy_out() {
    let f = Fixture::new("REGISTRY=127.0.0.1:5000\nLOCK_WAIT=0\n", "unused");
    let out = bash(
        &format!(
            "exec 9>>'{}' && flock -n 9 && echo 'pid 1 on m (copy step)' > '{}' && \"$STACKSHIP\" deploy prod",
            lock_file(&f).display(),
            f.root().join("prod/deploy.lock.owner").display()
        ),
        &f,
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(
            "lock: the prod deploy lock is still held after 0s by: pid 1 on m (copy step)"
        ),
        "{stderr}"
    );
    assert!(f.docker_log().is_empty());
}

#[test]
fn a_lock_passed_down_by_the_caller_is_used() {
    let f = Fixture::new(
        "REGISTRY=127.0.0.1:5000\nLOCK_WAIT=0\n",
        "Cannot connect to the Docker daemon",
    );
    let out = bash(
        &format!(
            "exec 9>>'{}' && flock -n 9 && STACKSHIP_DEPLOY_LOCK_FD=9 \"$STACKSHIP\" deploy prod",
            lock_file(&f).display()
        ),
        &f,
    );
    let stderr = text(&out.stderr);
    // Past the lock: the next stage asked Docker, which is not there.
    assert!(
        stderr.contains("holding the prod deploy lock (taken by the caller)"),
        "{stderr}"
    );
    assert!(stderr.contains("validate: "), "{stderr}");
    assert!(
        stderr.contains("Cannot connect to the Docker daemon"),
        "{stderr}"
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        f.docker_log().starts_with("info --format"),
        "{}",
        f.docker_log()
    );
}

#[test]
fn a_passed_down_descriptor_that_is_not_the_lock_is_refused() {
    let f = Fixture::new("REGISTRY=127.0.0.1:5000\n", "unused");
    let other = f.dir.path().join("other");
    let out = bash(
        &format!(
            "exec 9>>'{}' && STACKSHIP_DEPLOY_LOCK_FD=9 \"$STACKSHIP\" deploy prod",
            other.display()
        ),
        &f,
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("not on the lock file"), "{stderr}");
    assert!(f.docker_log().is_empty());
}

#[test]
fn an_unknown_environment_or_missing_release_is_refused() {
    let f = Fixture::new("", "unused");
    let out = f.stackship(&["deploy", "Prod"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("'Prod' is not an environment name"));
    let out = f.stackship(&["deploy", "dev"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr)
            .contains("docker-compose.dev.yaml is missing (run the copy step for dev)"),
        "{}",
        text(&out.stderr)
    );
    let out = f.stackship(&["deploy"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("which environment?"));
    assert!(Path::new(env!("CARGO_BIN_EXE_stackship")).exists());
}

#[test]
fn release_install_swaps_a_copy_in_and_refuses_a_partial_one() {
    let f = Fixture::new("REGISTRY=127.0.0.1:5000\n", "unused");
    let env_dir = f.root().join("prod");
    let staging = env_dir.join(".incoming.1");
    fs::create_dir_all(staging.join("deploy-manifests/prod")).unwrap();
    fs::write(staging.join("docker-compose.prod.yaml"), "new").unwrap();
    // Without the tool the copy is not a release: refused, current/ untouched.
    let out = f.stackship(&[
        "release",
        "install",
        "prod",
        "--from",
        staging.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("stackship missing"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        env_dir
            .join("current/deploy-manifests/prod/images.env")
            .is_file()
    );
    fs::write(staging.join("stackship"), "tool").unwrap();
    let out = f.stackship(&[
        "release",
        "install",
        "prod",
        "--from",
        staging.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("release installed: "),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        fs::read_to_string(env_dir.join("current/docker-compose.prod.yaml")).unwrap(),
        "new"
    );
    assert!(
        !env_dir
            .join("current/deploy-manifests/prod/images.env")
            .exists()
    );
    assert!(!staging.exists());
    // A deploy that holds the lock keeps the release it reads: the install waits, then gives up.
    let again = env_dir.join(".incoming.2");
    fs::create_dir_all(again.join("deploy-manifests/prod")).unwrap();
    fs::write(again.join("docker-compose.prod.yaml"), "newer").unwrap();
    fs::write(again.join("stackship"), "tool").unwrap();
    let out = bash(
        &format!(
            "exec 9>>'{lock}'; flock -n 9; echo 'pid 1 on m (a deploy)' > '{lock}.owner'; '{bin}' release install prod --from '{from}' --lock-wait 1",
            lock = lock_file(&f).display(),
            bin = env!("CARGO_BIN_EXE_stackship"),
            from = again.display()
        ),
        &f,
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("the prod deploy lock is still held after 1s by: pid 1 on m (a deploy)"),
        "{stderr}"
    );
    assert_eq!(
        fs::read_to_string(env_dir.join("current/docker-compose.prod.yaml")).unwrap(),
        "new"
    );
    assert!(f.docker_log().is_empty());
}

#[test]
fn the_deploy_jobs_settings_on_stdin_are_checked_before_anything() {
    let f = Fixture::new("REGISTRY=127.0.0.1:5000\n", "unused");
    let mut child = Command::new(env!("CARGO_BIN_EXE_stackship"))
        .args(["deploy", "prod", "--settings-stdin"])
        .env("STACKSHIP_DEPLOY_ROOT", f.root())
        .env("PATH", f.path_env())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        child.stdin.as_mut().unwrap(),
        b"REGISTRY_PASSWORD=hunter2\nSSH_AUTH_SOCK=/x\n",
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("<stdin>:2: unknown key SSH_AUTH_SOCK"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
    assert!(f.docker_log().is_empty());
}

#[test]
fn release_install_into_another_directory() {
    let f = Fixture::new("REGISTRY=127.0.0.1:5000\n", "unused");
    let stage = f.dir.path().join("stage");
    let copy = stage.join(".incoming.1");
    fs::create_dir_all(copy.join("deploy-manifests/dev")).unwrap();
    fs::write(copy.join("docker-compose.dev.yaml"), "dev").unwrap();
    fs::write(copy.join("stackship"), "tool").unwrap();
    let out = f.stackship(&[
        "release",
        "install",
        "dev",
        "--from",
        copy.to_str().unwrap(),
        "--env-dir",
        stage.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        fs::read_to_string(stage.join("current/docker-compose.dev.yaml")).unwrap(),
        "dev"
    );
    assert!(stage.join("deploy.lock").exists());
    assert!(!f.root().join("dev").exists());
}
