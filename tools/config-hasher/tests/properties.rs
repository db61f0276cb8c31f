//! Property tests: the 64-character guarantee, determinism, and that any change renames.

mod common;

use common::Tree;
use config_hasher::interpolate::{Fallback, parse_name};
use config_hasher::name::{MAX_NAME_LEN, sha256_hex, swarm_name};
use config_hasher::{
    MAX_HASH_LEN, MIN_HASH_LEN, Options, content_name, hash_compose_file, is_valid_swarm_name,
};
use proptest::prelude::*;

/// Compose variable names, including long ones and ones starting with `_`.
fn variable() -> impl Strategy<Value = String> {
    "[A-Za-z_][A-Za-z0-9_]{0,150}".prop_filter("needs a letter or digit", |v| {
        v.bytes().any(|b| b.is_ascii_alphanumeric())
    })
}

fn hash_len() -> impl Strategy<Value = usize> {
    MIN_HASH_LEN..=MAX_HASH_LEN
}

proptest! {
    #[test]
    fn names_always_satisfy_swarm_rules(var in variable(), content in proptest::collection::vec(any::<u8>(), 0..256), n in hash_len()) {
        let name = content_name(&var, &content, n).unwrap();
        prop_assert!(name.len() <= MAX_NAME_LEN, "{} is {} long", name, name.len());
        prop_assert!(is_valid_swarm_name(&name), "{}", name);
        // The hash is never shortened.
        let digest = sha256_hex(&content);
        prop_assert!(name.ends_with(&format!("_{}", &digest[..n])), "{}", name);
        // A short enough prefix is kept whole.
        let prefix = var.trim_start_matches('_').to_ascii_lowercase();
        if prefix.len() + 1 + n <= MAX_NAME_LEN {
            prop_assert_eq!(name, format!("{prefix}_{}", &digest[..n]));
        } else {
            // Shortened: `<start of prefix>-<8 hex of the variable>_<hash>`, using all
            // the room but for `_` trimmed before the `-`.
            let keep = MAX_NAME_LEN - (n + 1) - (1 + 8);
            let head = name.split('-').next().unwrap();
            prop_assert!(prefix.starts_with(head), "{}", name);
            prop_assert!(prefix[head.len()..keep].bytes().all(|b| b == b'_'), "{}", name);
            prop_assert_eq!(name.len(), head.len() + 1 + 8 + 1 + n);
            prop_assert_eq!(&name[head.len() + 1..head.len() + 9], &sha256_hex(var.as_bytes())[..8]);
        }
    }

    #[test]
    fn any_input_gives_a_valid_name_or_an_error(var in "\\PC{0,100}", n in 0usize..80) {
        if let Ok(name) = swarm_name(&var, &sha256_hex(var.as_bytes()), n) {
            prop_assert!(is_valid_swarm_name(&name), "{}", name);
        }
    }

    #[test]
    fn same_content_same_name(var in variable(), content in proptest::collection::vec(any::<u8>(), 0..512), n in hash_len()) {
        let a = content_name(&var, &content, n).unwrap();
        let b = content_name(&var, &content.clone(), n).unwrap();
        prop_assert_eq!(a, b);
    }

    #[test]
    fn one_changed_byte_gives_a_new_name(
        var in variable(),
        content in proptest::collection::vec(any::<u8>(), 1..512),
        pos in any::<prop::sample::Index>(),
        flip in 1u8..=255,
        n in hash_len(),
    ) {
        let mut changed = content.clone();
        let i = pos.index(changed.len());
        changed[i] ^= flip;
        prop_assert_ne!(content_name(&var, &content, n).unwrap(), content_name(&var, &changed, n).unwrap());
    }

    #[test]
    fn distinct_long_variables_stay_distinct(a in variable(), b in variable(), n in hash_len()) {
        prop_assume!(!a.trim_start_matches('_').eq_ignore_ascii_case(b.trim_start_matches('_')));
        prop_assert_ne!(content_name(&a, b"same", n).unwrap(), content_name(&b, b"same", n).unwrap());
    }

    #[test]
    fn accepted_name_forms_round_trip(var in variable(), default in "[a-z0-9_.-]{0,20}", form in 0..3) {
        let (raw, fallback) = match form {
            0 => (format!("${{{var}}}"), Fallback::None),
            1 => (format!("${{{var}:-{default}}}"), Fallback::IfUnsetOrEmpty(default.clone())),
            _ => (format!("${{{var}-{default}}}"), Fallback::IfUnset(default.clone())),
        };
        let parsed = parse_name(&raw).unwrap();
        prop_assert_eq!(parsed.variable, var);
        prop_assert_eq!(parsed.fallback, fallback);
    }

    #[test]
    fn parse_name_never_panics(raw in "\\PC{0,40}") {
        let _ = parse_name(&raw);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Through the files: rewriting identical content keeps every name, any
    /// change to one file renames exactly that entry.
    #[test]
    fn files_end_to_end(a in proptest::collection::vec(any::<u8>(), 1..300), b in proptest::collection::vec(any::<u8>(), 1..300), flip in 1u8..=255) {
        let t = Tree::new();
        let compose = t.compose("configs:\n  a:\n    name: ${A_CONF}\n    file: a\nsecrets:\n  b:\n    name: ${B_SECRET}\n    file: b\n");
        t.write("a", &a);
        t.write("b", &b);
        let opts = Options::default();
        let first = hash_compose_file(&compose, &opts).unwrap();
        t.write("a", &a);
        t.write("b", &b);
        let again = hash_compose_file(&compose, &opts).unwrap();
        prop_assert_eq!(&first, &again);
        let mut a2 = a.clone();
        a2[0] ^= flip;
        t.write("a", &a2);
        let changed = hash_compose_file(&compose, &opts).unwrap();
        prop_assert_ne!(first.get("A_CONF"), changed.get("A_CONF"));
        prop_assert_eq!(first.get("B_SECRET"), changed.get("B_SECRET"));
    }
}
