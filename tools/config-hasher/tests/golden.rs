//! Golden tests: the fixture stacks give exactly the recorded names.

mod common;

use std::path::Path;

use common::{assert_golden, fixture};
use config_hasher::{
    Format, Kind, Options, SkipReason, hash_compose_file, is_valid_swarm_name, render,
};

fn report(dir: &str, file: &str, hash_len: usize) -> config_hasher::Report {
    hash_compose_file(&fixture(dir).join(file), &Options { hash_len }).unwrap()
}

#[test]
fn prod_env() {
    let r = report("prod", "docker-compose.prod.yaml", 12);
    assert_golden("prod.env", &render(&r, Format::Env));
}

#[test]
fn prod_export() {
    let r = report("prod", "docker-compose.prod.yaml", 12);
    assert_golden("prod.export", &render(&r, Format::Export));
}

#[test]
fn dev_env() {
    let r = report("dev", "docker-compose.dev.yaml", 12);
    assert_golden("dev.env", &render(&r, Format::Env));
}

#[test]
fn dev_hash_len_8() {
    let r = report("dev", "docker-compose.dev.yaml", 8);
    assert_golden("dev.hash-len-8.env", &render(&r, Format::Env));
}

#[test]
fn prod_details() {
    let r = report("prod", "docker-compose.prod.yaml", 12);
    // Secrets are named too; the names are valid and carry the full digest.
    let tls = r
        .names
        .iter()
        .find(|n| n.variable == "PROJECT_PROD_TLS_KEY")
        .unwrap();
    assert_eq!(tls.sources[0].entry.kind, Kind::Secret);
    assert_eq!(tls.sources[0].entry.key, "tls-key");
    // `file:` without `./` is relative to the compose file's directory too.
    assert!(
        tls.sources[0]
            .file
            .ends_with(Path::new("deploy-manifests/prod/tls/privkey.pem"))
    );
    assert_eq!(
        tls.sha256,
        "1e9b84acc72e3dab19d6ab16a8132f73be698c5cfa2c11e3848f0ad6b710a555"
    );
    for n in &r.names {
        assert!(is_valid_swarm_name(&n.name), "{}", n.name);
        assert!(n.name.ends_with(&n.sha256[..12]));
    }
    // Left alone: the external secret and the environment-backed config.
    let skipped: Vec<_> = r
        .skipped
        .iter()
        .map(|s| (s.entry.to_string(), s.reason))
        .collect();
    assert_eq!(
        skipped,
        [
            (
                "config `feature-flags`".to_owned(),
                SkipReason::NoFile {
                    uses: Some("environment")
                }
            ),
            ("secret `db-password`".to_owned(), SkipReason::External),
        ]
    );
    assert_eq!(
        r.get("PROJECT_PROD_BACKEND_CONFIG"),
        Some("project_prod_backend_config_5bc396132876")
    );
    assert_eq!(r.get("FEATURE_FLAGS"), None);
}

#[test]
fn dev_shared_variable_is_printed_once() {
    let r = report("dev", "docker-compose.dev.yaml", 12);
    let nginx = r
        .names
        .iter()
        .find(|n| n.variable == "PROJECT_DEV_NGINX_CONFIG")
        .unwrap();
    let keys: Vec<_> = nginx.sources.iter().map(|s| s.entry.key.as_str()).collect();
    assert_eq!(keys, ["nginx-config", "nginx-config-copy"]);
    assert_eq!(r.names.len(), 2);
}
