//! Fuzzes the compose parser and `name:` interpolation: no panics, and every
//! accepted variable yields a valid Swarm name or a typed error.

#![no_main]

use std::path::Path;

use config_hasher::interpolate::{is_variable_name, parse_name};
use config_hasher::name::{is_valid_swarm_name, sha256_hex, swarm_name};
use config_hasher::parse_compose;
use libfuzzer_sys::fuzz_target;

fn check_variable(variable: &str, digest: &str) {
    assert!(
        is_variable_name(variable),
        "accepted bad variable {variable:?}"
    );
    for hash_len in [8, 12, 40] {
        if let Ok(name) = swarm_name(variable, digest, hash_len) {
            assert!(is_valid_swarm_name(&name), "invalid name {name:?}");
            assert!(name.ends_with(&digest[..hash_len]));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let digest = sha256_hex(data);

    // The input as a whole `name:` value.
    if let Ok(r) = parse_name(text) {
        check_variable(&r.variable, &digest);
        assert!(text.starts_with("${") && text.ends_with('}'));
    }

    // The input as a compose file.
    if let Ok(decl) = parse_compose(text, Path::new("fuzz.yaml")) {
        for d in &decl.declared {
            check_variable(&d.name.variable, &digest);
            assert!(!d.file.is_empty());
        }
    }
});
