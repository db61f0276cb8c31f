//! Every error case: the right typed error, and a message naming file, entry and cause.

mod common;

use std::path::Path;

use common::Tree;
use config_hasher::name::NameError;
use config_hasher::{
    Error, Kind, MAX_CONFIG_BYTES, MAX_SECRET_BYTES, Options, Problem, hash_compose_file,
};

fn run(compose: &Path) -> Result<config_hasher::Report, Error> {
    hash_compose_file(compose, &Options::default())
}

/// The single entry problem of `err`, with the full message.
fn only_problem(err: &Error) -> (&config_hasher::EntryId, &Problem, String) {
    let problems = err.problems();
    assert_eq!(problems.len(), 1, "{err}");
    let (entry, problem) = problems[0];
    (entry, problem, err.to_string())
}

const ONE_CONFIG: &str = "configs:\n  app:\n    name: ${APP_CONFIG}\n    file: ./app.conf\n";

#[test]
fn missing_compose_file() {
    let t = Tree::new();
    let compose = t.path().join("docker-compose.prod.yaml");
    let err = run(&compose).unwrap_err();
    assert!(matches!(err, Error::ComposeFile { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("docker-compose.prod.yaml"), "{msg}");
    assert!(msg.contains("does not exist"), "{msg}");
}

#[test]
fn compose_file_is_a_directory() {
    let t = Tree::new();
    let err = run(t.path()).unwrap_err();
    assert!(err.to_string().contains("is a directory"), "{err}");
}

#[test]
fn compose_file_behind_a_plain_file_cannot_be_read_and_says_why() {
    let t = Tree::new();
    t.write("plain", "not a directory");
    let err = run(&t.path().join("plain/compose.yaml")).unwrap_err();
    assert!(matches!(err, Error::ComposeFile { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("cannot be read"), "{msg}");
    assert!(msg.to_lowercase().contains("not a directory"), "{msg}");
}

#[test]
fn compose_file_not_utf8() {
    let t = Tree::new();
    let compose = t.write("compose.yaml", b"configs:\n  a: \xff\n");
    let err = run(&compose).unwrap_err();
    assert!(err.to_string().contains("not UTF-8"), "{err}");
}

#[test]
fn yaml_syntax_error_has_line_and_column() {
    let t = Tree::new();
    let compose = t.compose("services:\n  web:\n    image: nginx\nconfigs:\n  app: {name: ${A}\n");
    let err = run(&compose).unwrap_err();
    let Error::Syntax { location, .. } = &err else {
        panic!("expected a syntax error, got {err:?}");
    };
    // `{` opens a flow mapping on line 5 that the `}` of `${A}` closes too early.
    assert_eq!(*location, Some((5, 16)), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("compose.yaml: YAML syntax error at line 5, column 16: "),
        "{msg}"
    );

    let compose = t.compose("configs:\n  a:\n\tname: x\n");
    let msg = run(&compose).unwrap_err().to_string();
    assert!(
        msg.contains("YAML syntax error at line 3, column 1"),
        "{msg}"
    );
}

#[test]
fn yaml_that_cannot_be_loaded() {
    let t = Tree::new();
    let compose = t.compose("configs: {}\n---\nservices: {}\n");
    let msg = run(&compose).unwrap_err().to_string();
    assert!(msg.contains("compose.yaml: cannot load YAML: "), "{msg}");
    assert!(msg.contains("more than one document"), "{msg}");

    // An alias bomb (10^10 scalars once expanded) is refused quickly, not expanded.
    let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let refs = vec![format!("*a{}", i - 1); 10].join(", ");
        text.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    text.push_str("configs:\n  c:\n    name: ${C}\n    file: c\n");
    let compose = t.compose(&text);
    let started = std::time::Instant::now();
    let msg = run(&compose).unwrap_err().to_string();
    assert!(msg.contains("repetition limit exceeded"), "{msg}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[test]
fn referenced_file_missing() {
    let t = Tree::new();
    let compose = t.compose(ONE_CONFIG);
    let err = run(&compose).unwrap_err();
    let (entry, problem, msg) = only_problem(&err);
    assert_eq!(entry.kind, Kind::Config);
    assert_eq!(entry.key, "app");
    assert!(
        matches!(problem, Problem::FileMissing { .. }),
        "{problem:?}"
    );
    assert!(msg.contains("compose.yaml: config `app`: file "), "{msg}");
    assert!(msg.contains("app.conf does not exist"), "{msg}");
}

#[test]
fn referenced_file_is_a_directory() {
    let t = Tree::new();
    let compose = t.compose(ONE_CONFIG);
    std::fs::create_dir(t.path().join("app.conf")).unwrap();
    let err = run(&compose).unwrap_err();
    let (_, problem, msg) = only_problem(&err);
    assert!(
        matches!(
            problem,
            Problem::NotAFile {
                what: "a directory",
                ..
            }
        ),
        "{problem:?}"
    );
    assert!(msg.contains("is a directory, not a regular file"), "{msg}");
}

#[test]
fn referenced_file_unreadable_symlink_loop() {
    let t = Tree::new();
    let compose = t.compose(ONE_CONFIG);
    std::os::unix::fs::symlink("app.conf", t.path().join("app.conf")).unwrap();
    let err = run(&compose).unwrap_err();
    let (_, problem, msg) = only_problem(&err);
    assert!(
        matches!(problem, Problem::FileUnreadable { .. }),
        "{problem:?}"
    );
    assert!(msg.contains("config `app`: cannot read file "), "{msg}");
}

#[test]
fn referenced_file_unreadable_path_through_a_file() {
    let t = Tree::new();
    let compose = t.compose("secrets:\n  key:\n    name: ${KEY}\n    file: ./plain/key.pem\n");
    t.write("plain", "not a directory");
    let err = run(&compose).unwrap_err();
    let (entry, problem, msg) = only_problem(&err);
    assert_eq!(entry.kind, Kind::Secret);
    assert!(
        matches!(problem, Problem::FileUnreadable { .. }),
        "{problem:?}"
    );
    assert!(msg.contains("secret `key`: cannot read file"), "{msg}");
    assert!(msg.to_lowercase().contains("not a directory"), "{msg}");
}

#[test]
fn referenced_file_special() {
    let t = Tree::new();
    let compose = t.compose("configs:\n  devnull:\n    name: ${DEV_NULL}\n    file: /dev/null\n");
    let err = run(&compose).unwrap_err();
    let (entry, problem, _) = only_problem(&err);
    assert_eq!(entry.key, "devnull");
    assert!(
        matches!(
            problem,
            Problem::NotAFile {
                what: "a special file",
                ..
            }
        ),
        "{problem:?}"
    );
}

#[test]
fn name_not_a_variable() {
    let t = Tree::new();
    t.write("app.conf", "x");
    for (name, needle) in [
        ("app_config_v1", "name `app_config_v1` is not a variable"),
        ("$APP", "name `$APP` is not a variable"),
        ("${APP:?required}", "`${VAR:?...}` form is not supported"),
        ("app_${APP}", "text around the variable"),
        ("'${APP}x'", "text around the variable"),
    ] {
        let compose = t.compose(&format!(
            "configs:\n  app:\n    name: {name}\n    file: ./app.conf\n"
        ));
        let err = run(&compose).unwrap_err();
        let (_, problem, msg) = only_problem(&err);
        assert!(
            matches!(problem, Problem::NameNotVariable { .. }),
            "{problem:?}"
        );
        assert!(msg.contains("compose.yaml: config `app`: "), "{msg}");
        assert!(msg.contains(needle), "{name}: {msg}");
    }
}

#[test]
fn file_without_name_is_an_error() {
    let t = Tree::new();
    t.write("app.conf", "x");
    let compose = t.compose("configs:\n  app:\n    file: ./app.conf\n");
    let err = run(&compose).unwrap_err();
    let (_, problem, msg) = only_problem(&err);
    assert!(matches!(problem, Problem::MissingName), "{problem:?}");
    assert!(msg.contains("has `file:` but no `name:`"), "{msg}");
}

#[test]
fn same_variable_different_content() {
    let t = Tree::new();
    t.write("a.conf", "a");
    t.write("b.conf", "b");
    let compose = t.compose(
        "configs:\n  first:\n    name: ${SHARED}\n    file: a.conf\nsecrets:\n  second:\n    name: ${SHARED:-x}\n    file: b.conf\n",
    );
    let err = run(&compose).unwrap_err();
    let (entry, problem, msg) = only_problem(&err);
    assert_eq!(entry.to_string(), "secret `second`");
    let Problem::DuplicateVariable {
        variable, other, ..
    } = problem
    else {
        panic!("{problem:?}");
    };
    assert_eq!(variable, "SHARED");
    assert_eq!(other.to_string(), "config `first`");
    assert!(
        msg.contains("variable SHARED is also the name of config `first`"),
        "{msg}"
    );
}

#[test]
fn same_variable_same_content_is_fine() {
    let t = Tree::new();
    t.write("a.conf", "same");
    t.write("b.conf", "same");
    let compose = t.compose(
        "configs:\n  first:\n    name: ${SHARED}\n    file: a.conf\n  second:\n    name: ${SHARED}\n    file: b.conf\n",
    );
    let r = run(&compose).unwrap();
    assert_eq!(r.names.len(), 1);
    assert_eq!(r.names[0].sources.len(), 2);
}

#[test]
fn name_cannot_be_made_valid() {
    let t = Tree::new();
    t.write("a.conf", "a");
    let compose = t.compose("configs:\n  a:\n    name: ${__}\n    file: a.conf\n");
    let err = run(&compose).unwrap_err();
    let (_, problem, msg) = only_problem(&err);
    assert!(
        matches!(
            problem,
            Problem::InvalidName {
                reason: NameError::NoPrefix,
                ..
            }
        ),
        "{problem:?}"
    );
    assert!(
        msg.contains("config `a`: cannot build a valid Swarm name from variable __: it has no letter or digit to start a name with"),
        "{msg}"
    );
}

fn size_case(kind: &str, size: u64) -> Result<config_hasher::Report, Error> {
    let t = Tree::new();
    t.write("blob", vec![b'x'; usize::try_from(size).unwrap()]);
    let compose = t.compose(&format!(
        "{kind}:\n  blob:\n    name: ${{BLOB}}\n    file: blob\n"
    ));
    run(&compose)
}

#[test]
fn oversize_config() {
    assert!(size_case("configs", MAX_CONFIG_BYTES - 1).is_ok());
    let err = size_case("configs", MAX_CONFIG_BYTES).unwrap_err();
    let (_, problem, msg) = only_problem(&err);
    assert!(
        matches!(
            problem,
            Problem::FileTooLarge {
                size: 1_024_000,
                limit: 1_024_000,
                ..
            }
        ),
        "{problem:?}"
    );
    assert!(
        msg.contains(
            "is 1024000 bytes; Swarm accepts a config of less than 1024000 bytes (1000 KiB)"
        ),
        "{msg}"
    );
}

#[test]
fn oversize_secret() {
    assert!(size_case("secrets", MAX_SECRET_BYTES - 1).is_ok());
    // Fine as a config, too large as a secret.
    assert!(size_case("configs", MAX_SECRET_BYTES + 10).is_ok());
    let err = size_case("secrets", MAX_SECRET_BYTES + 10).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("secret `blob`"), "{msg}");
    assert!(
        msg.contains("Swarm accepts a secret of less than 512000 bytes (500 KiB)"),
        "{msg}"
    );
}

#[test]
fn empty_file() {
    let err = size_case("configs", 0).unwrap_err();
    let (_, problem, msg) = only_problem(&err);
    assert!(matches!(problem, Problem::FileEmpty { .. }), "{problem:?}");
    assert!(
        msg.contains("is empty; Swarm refuses an empty config"),
        "{msg}"
    );
}

#[test]
fn no_entries_is_not_an_error() {
    let t = Tree::new();
    let compose =
        t.compose("services:\n  web:\n    image: nginx\nconfigs:\n  ext:\n    external: true\n");
    let r = run(&compose).unwrap();
    assert!(r.is_empty());
    assert_eq!(r.skipped.len(), 1);
}

#[test]
fn hash_len_out_of_range() {
    let t = Tree::new();
    let compose = t.compose(ONE_CONFIG);
    for bad in [0, 7, 41, 64] {
        let err = hash_compose_file(&compose, &Options { hash_len: bad }).unwrap_err();
        assert!(matches!(err, Error::HashLen(n) if n == bad), "{err:?}");
    }
}

#[test]
fn all_problems_are_reported_together() {
    let t = Tree::new();
    t.write("ok.conf", "ok");
    t.write("big.pem", vec![0u8; 600 * 1024]);
    let compose = t.compose(
        "configs:\n  ok:\n    name: ${OK}\n    file: ok.conf\n  gone:\n    name: ${GONE}\n    file: gone.conf\n  literal:\n    name: literal\n    file: ok.conf\nsecrets:\n  big:\n    name: ${BIG}\n    file: big.pem\n",
    );
    let err = run(&compose).unwrap_err();
    assert!(matches!(err, Error::Several { .. }), "{err:?}");
    let entries: Vec<_> = err.problems().iter().map(|(e, _)| e.to_string()).collect();
    // Problems found while parsing come first, then those found reading files.
    assert_eq!(
        entries,
        ["config `literal`", "config `gone`", "secret `big`"]
    );
    let msg = err.to_string();
    assert!(msg.starts_with("3 problems in "), "{msg}");
    assert!(msg.contains("\n  - "), "{msg}");
}
