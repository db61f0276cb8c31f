//! Content names: `<variable lower-cased>_<first N hex of sha256>`, always valid for Swarm.
//!
//! Swarm accepts a config or secret name of at most 64 characters matching
//! `^[a-zA-Z0-9]+(?:[a-zA-Z0-9-_.]*[a-zA-Z0-9])?$`. The hash part is never cut.
//! When `<prefix>_<hash>` would be longer than 64 characters, the prefix is
//! shortened deterministically to `<first K chars>-<8 hex of sha256(variable)>`,
//! so that two long variables sharing their first K characters still get
//! different names. Leading `_` of the variable are dropped (a name must start
//! with a letter or digit).

use std::fmt;

use sha2::{Digest, Sha256};

/// Swarm's maximum length of a config or secret name.
pub const MAX_NAME_LEN: usize = 64;
/// Default number of hex digits of the content hash in a name.
pub const DEFAULT_HASH_LEN: usize = 12;
/// Smallest accepted hash length (32 bits).
pub const MIN_HASH_LEN: usize = 8;
/// Largest accepted hash length (160 bits); leaves room for a readable prefix.
pub const MAX_HASH_LEN: usize = 40;
/// Hex digits of the variable's own hash added to a shortened prefix.
pub const VARIABLE_TAG_LEN: usize = 8;

/// Why no name can be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    /// The hash length is outside [`MIN_HASH_LEN`]`..=`[`MAX_HASH_LEN`].
    HashLen(usize),
    /// The digest given is not lower-case hex of at least the hash length.
    BadDigest,
    /// The variable has no letter or digit left to start a name with.
    NoPrefix,
    /// The result would not match Swarm's rules (only reachable through a bug;
    /// kept so that the guarantee is checked, not assumed).
    Invalid(String),
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::HashLen(n) => write!(
                f,
                "hash length {n} is outside {MIN_HASH_LEN}..={MAX_HASH_LEN}"
            ),
            NameError::BadDigest => write!(f, "the digest is not lower-case hex"),
            NameError::NoPrefix => write!(
                f,
                "it has no letter or digit to start a name with (Swarm names must start with one)"
            ),
            NameError::Invalid(name) => {
                write!(f, "`{name}` does not match Swarm's name rules")
            }
        }
    }
}

impl std::error::Error for NameError {}

/// Lower-case hex SHA-256 of `content`.
#[must_use]
pub fn sha256_hex(content: &[u8]) -> String {
    hex(&Sha256::digest(content))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// Whether Swarm accepts `name` as a config or secret name.
///
/// ```
/// use config_hasher::name::is_valid_swarm_name;
/// assert!(is_valid_swarm_name("app_config_0a1b2c3d4e5f"));
/// assert!(!is_valid_swarm_name("_app"));
/// assert!(!is_valid_swarm_name(&"a".repeat(65)));
/// ```
#[must_use]
pub fn is_valid_swarm_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    bytes.len() <= MAX_NAME_LEN
        && first.is_ascii_alphanumeric()
        && last.is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Checks a hash length.
///
/// # Errors
/// [`NameError::HashLen`] outside [`MIN_HASH_LEN`]`..=`[`MAX_HASH_LEN`].
pub fn check_hash_len(hash_len: usize) -> Result<(), NameError> {
    if (MIN_HASH_LEN..=MAX_HASH_LEN).contains(&hash_len) {
        Ok(())
    } else {
        Err(NameError::HashLen(hash_len))
    }
}

/// Builds the Swarm name for `variable` from a full or partial lower-case hex digest.
///
/// # Errors
/// See [`NameError`]: a bad hash length or digest, or a variable without a
/// letter or digit.
pub fn swarm_name(variable: &str, digest_hex: &str, hash_len: usize) -> Result<String, NameError> {
    check_hash_len(hash_len)?;
    if digest_hex.len() < hash_len
        || !digest_hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(NameError::BadDigest);
    }
    let hash = &digest_hex[..hash_len];
    // Only [a-z0-9_] survive from a valid variable; anything else is dropped so
    // that arbitrary input from library callers still yields a valid name.
    let lowered: String = variable
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let prefix = lowered.trim_start_matches('_');
    if prefix.is_empty() {
        return Err(NameError::NoPrefix);
    }
    let name = if prefix.len() + 1 + hash_len <= MAX_NAME_LEN {
        format!("{prefix}_{hash}")
    } else {
        let keep = MAX_NAME_LEN - (1 + hash_len) - (1 + VARIABLE_TAG_LEN);
        let head = prefix[..keep].trim_end_matches('_');
        let tag = &sha256_hex(variable.as_bytes())[..VARIABLE_TAG_LEN];
        // `head` is never empty: the prefix starts with a letter or digit and
        // `keep` is at least 14 with the largest hash length.
        format!("{head}-{tag}_{hash}")
    };
    if is_valid_swarm_name(&name) {
        Ok(name)
    } else {
        Err(NameError::Invalid(name))
    }
}

/// The name for `variable` holding `content`: [`swarm_name`] of its SHA-256.
///
/// ```
/// use config_hasher::name::content_name;
/// let n = content_name("PROJECT_PROD_BACKEND_CONFIG", b"port = 8080\n", 12).unwrap();
/// assert!(n.starts_with("project_prod_backend_config_"));
/// assert_eq!(n.len(), "project_prod_backend_config_".len() + 12);
/// ```
///
/// # Errors
/// As [`swarm_name`].
pub fn content_name(variable: &str, content: &[u8], hash_len: usize) -> Result<String, NameError> {
    swarm_name(variable, &sha256_hex(content), hash_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_SHA: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn sha256_known_vectors() {
        assert_eq!(sha256_hex(b""), EMPTY_SHA);
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn short_variable_keeps_full_prefix() {
        assert_eq!(
            swarm_name("PROJECT_PROD_BACKEND_CONFIG", EMPTY_SHA, 12).unwrap(),
            "project_prod_backend_config_e3b0c44298fc"
        );
    }

    #[test]
    fn leading_underscores_are_dropped() {
        assert_eq!(swarm_name("__Tls", EMPTY_SHA, 8).unwrap(), "tls_e3b0c442");
    }

    #[test]
    fn no_prefix_is_an_error() {
        assert_eq!(swarm_name("___", EMPTY_SHA, 12), Err(NameError::NoPrefix));
        assert_eq!(swarm_name("", EMPTY_SHA, 12), Err(NameError::NoPrefix));
    }

    #[test]
    fn exactly_64_is_not_shortened() {
        // 51 + 1 + 12 = 64
        let var = "A".repeat(51);
        let name = swarm_name(&var, EMPTY_SHA, 12).unwrap();
        assert_eq!(name.len(), 64);
        assert_eq!(name, format!("{}_e3b0c44298fc", "a".repeat(51)));
    }

    #[test]
    fn long_variable_is_shortened_but_hash_kept() {
        let var = "A".repeat(52);
        let name = swarm_name(&var, EMPTY_SHA, 12).unwrap();
        assert_eq!(name.len(), 64);
        assert!(name.ends_with("_e3b0c44298fc"), "{name}");
        let tag = &sha256_hex(var.as_bytes())[..8];
        assert_eq!(name, format!("{}-{tag}_e3b0c44298fc", "a".repeat(42)));
    }

    #[test]
    fn shortened_prefixes_stay_distinct() {
        let base = "PROJECT_PRODUCTION_ENVIRONMENT_REVERSE_PROXY_TLS_CERTIFICATE_CHAIN";
        let a = swarm_name(&format!("{base}_A"), EMPTY_SHA, 12).unwrap();
        let b = swarm_name(&format!("{base}_B"), EMPTY_SHA, 12).unwrap();
        assert_ne!(a, b);
        assert!(a.len() <= 64 && b.len() <= 64);
    }

    #[test]
    fn truncation_does_not_leave_underscore_before_dash() {
        // keep = 64 - 13 - 9 = 42 characters; make the 42nd an underscore.
        let var = format!("{}_{}", "B".repeat(41), "C".repeat(30));
        let name = swarm_name(&var, EMPTY_SHA, 12).unwrap();
        assert!(name.starts_with(&format!("{}-", "b".repeat(41))), "{name}");
    }

    #[test]
    fn max_hash_len_still_fits_a_prefix() {
        let var = "V".repeat(100);
        let name = swarm_name(&var, EMPTY_SHA, MAX_HASH_LEN).unwrap();
        assert_eq!(name.len(), 64);
        assert!(name.ends_with(&EMPTY_SHA[..MAX_HASH_LEN]));
        assert!(name.starts_with('v'));
    }

    #[test]
    fn hash_len_and_digest_checked() {
        assert_eq!(swarm_name("A", EMPTY_SHA, 7), Err(NameError::HashLen(7)));
        assert_eq!(swarm_name("A", EMPTY_SHA, 41), Err(NameError::HashLen(41)));
        assert_eq!(swarm_name("A", "abc", 8), Err(NameError::BadDigest));
        // A partial digest exactly as long as the hash is enough.
        assert_eq!(
            swarm_name("A", &EMPTY_SHA[..8], 8).as_deref(),
            Ok(&*format!("a_{}", &EMPTY_SHA[..8]))
        );
        assert_eq!(
            swarm_name("A", &EMPTY_SHA.to_uppercase(), 8),
            Err(NameError::BadDigest)
        );
    }

    #[test]
    fn swarm_rules() {
        for ok in ["a", "A1", "a.b-c_d", "0", &"x".repeat(64)] {
            assert!(is_valid_swarm_name(ok), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "a_",
            ".a",
            "a b",
            "ä",
            "a/b",
            &"x".repeat(65),
        ] {
            assert!(!is_valid_swarm_name(bad), "{bad}");
        }
    }
}
