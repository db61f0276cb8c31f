//! Compose interpolation in `name:`: which variable does a `name:` refer to?
//!
//! Accepted forms, and only as the whole value:
//!
//! | form              | meaning for Compose                      |
//! |-------------------|------------------------------------------|
//! | `${VAR}`          | the value of `VAR`                       |
//! | `${VAR:-default}` | `VAR`, or `default` if unset or empty    |
//! | `${VAR-default}`  | `VAR`, or `default` if unset             |
//!
//! The default never matters to config-hasher: the deploy exports the computed
//! value of `VAR`, so Compose always sees it set. Everything else (`$VAR`,
//! `${VAR:?err}`, `${VAR:+alt}`, text around the variable, nested
//! interpolation in the default, a literal name) is refused with a reason.

use std::fmt;

/// What a `name:` refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameRef {
    /// The variable, exactly as written (case kept).
    pub variable: String,
    /// The default given in the name, if any.
    pub fallback: Fallback,
}

/// The default part of `${VAR:-default}` / `${VAR-default}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fallback {
    /// Plain `${VAR}`.
    None,
    /// `${VAR:-default}`: used when `VAR` is unset or empty.
    IfUnsetOrEmpty(String),
    /// `${VAR-default}`: used when `VAR` is unset.
    IfUnset(String),
}

/// Why a `name:` is not one of the accepted variable forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterpolationError {
    /// No `${` at the start: a literal name or a `$VAR` without braces.
    NotBraced,
    /// `${` without a closing `}` at the very end.
    Unclosed,
    /// Text after the closing `}`, or before `${`.
    ExtraText,
    /// The variable name is empty or has characters other than `[A-Za-z0-9_]`,
    /// or starts with a digit.
    BadVariable,
    /// A modifier Compose knows but that cannot name a config (`:?`, `?`, `:+`, `+`).
    UnsupportedModifier(String),
    /// A `$`, `{` or `}` inside the default.
    NestedDefault,
}

impl fmt::Display for InterpolationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const FORMS: &str = "expected exactly ${VAR}, ${VAR:-default} or ${VAR-default}";
        match self {
            InterpolationError::NotBraced => write!(f, "{FORMS}"),
            InterpolationError::Unclosed => write!(f, "`${{` is not closed at the end; {FORMS}"),
            InterpolationError::ExtraText => {
                write!(f, "text around the variable is not supported; {FORMS}")
            }
            InterpolationError::BadVariable => write!(
                f,
                "the variable name must be letters, digits and `_`, not starting with a digit; {FORMS}"
            ),
            InterpolationError::UnsupportedModifier(m) => {
                write!(f, "the `{m}` form is not supported; {FORMS}")
            }
            InterpolationError::NestedDefault => write!(
                f,
                "interpolation inside the default is not supported; {FORMS}"
            ),
        }
    }
}

impl std::error::Error for InterpolationError {}

/// Whether `s` is a valid Compose variable name: `[A-Za-z_][A-Za-z0-9_]*`.
#[must_use]
pub fn is_variable_name(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses a `name:` value into the variable it refers to.
///
/// ```
/// use config_hasher::interpolate::{parse_name, Fallback};
/// let r = parse_name("${APP_CONFIG:-app_config_dev}").unwrap();
/// assert_eq!(r.variable, "APP_CONFIG");
/// assert_eq!(r.fallback, Fallback::IfUnsetOrEmpty("app_config_dev".into()));
/// assert!(parse_name("app_config_v1").is_err());
/// ```
///
/// # Errors
/// [`InterpolationError`] when the value is not exactly one of the accepted forms.
pub fn parse_name(raw: &str) -> Result<NameRef, InterpolationError> {
    let Some(rest) = raw.strip_prefix("${") else {
        return Err(if raw.contains("${") {
            InterpolationError::ExtraText
        } else {
            InterpolationError::NotBraced
        });
    };
    let Some(close) = rest.find('}') else {
        return Err(InterpolationError::Unclosed);
    };
    let (inner, after) = (&rest[..close], &rest[close + 1..]);
    let var_len = inner
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(inner.len());
    let (variable, modifier) = inner.split_at(var_len);
    if !is_variable_name(variable) {
        return Err(InterpolationError::BadVariable);
    }
    let fallback = if modifier.is_empty() {
        Fallback::None
    } else if let Some(default) = modifier.strip_prefix(":-") {
        check_default(default, after)?;
        Fallback::IfUnsetOrEmpty(default.to_owned())
    } else if let Some(default) = modifier.strip_prefix('-') {
        check_default(default, after)?;
        Fallback::IfUnset(default.to_owned())
    } else {
        for m in [":?", ":+", "?", "+"] {
            if modifier.starts_with(m) {
                return Err(InterpolationError::UnsupportedModifier(format!(
                    "${{VAR{m}...}}"
                )));
            }
        }
        return Err(InterpolationError::BadVariable);
    };
    if !after.is_empty() {
        return Err(InterpolationError::ExtraText);
    }
    Ok(NameRef {
        variable: variable.to_owned(),
        fallback,
    })
}

/// A default may not itself interpolate: a `$` or `{` in it, or anything after
/// the first `}` (which means the braces were nested), is refused.
fn check_default(default: &str, after: &str) -> Result<(), InterpolationError> {
    if default.contains(['$', '{']) || after.contains('}') {
        return Err(InterpolationError::NestedDefault);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var(raw: &str) -> String {
        parse_name(raw).unwrap().variable
    }

    #[test]
    fn accepted_forms() {
        assert_eq!(var("${A}"), "A");
        assert_eq!(var("${_a1}"), "_a1");
        assert_eq!(
            parse_name("${PROJECT_PROD_BACKEND_CONFIG}").unwrap(),
            NameRef {
                variable: "PROJECT_PROD_BACKEND_CONFIG".into(),
                fallback: Fallback::None
            }
        );
        assert_eq!(
            parse_name("${X:-fallback.v1}").unwrap().fallback,
            Fallback::IfUnsetOrEmpty("fallback.v1".into())
        );
        assert_eq!(
            parse_name("${X-}").unwrap().fallback,
            Fallback::IfUnset(String::new())
        );
        assert_eq!(
            parse_name("${X:-a-b:c}").unwrap().fallback,
            Fallback::IfUnsetOrEmpty("a-b:c".into())
        );
    }

    #[test]
    fn refused_forms() {
        use InterpolationError as E;
        let cases: &[(&str, E)] = &[
            ("plain_name", E::NotBraced),
            ("", E::NotBraced),
            ("$VAR", E::NotBraced),
            ("prefix_${VAR}", E::ExtraText),
            ("${VAR}_suffix", E::ExtraText),
            ("${VAR", E::Unclosed),
            ("${}", E::BadVariable),
            ("${1VAR}", E::BadVariable),
            ("${ VAR }", E::BadVariable),
            ("${VA.R}", E::BadVariable),
            (
                "${VAR:?must be set}",
                E::UnsupportedModifier("${VAR:?...}".into()),
            ),
            ("${VAR?err}", E::UnsupportedModifier("${VAR?...}".into())),
            ("${VAR:+alt}", E::UnsupportedModifier("${VAR:+...}".into())),
            ("${VAR+alt}", E::UnsupportedModifier("${VAR+...}".into())),
            ("${VAR:-${OTHER}}", E::NestedDefault),
            ("${VAR:-$OTHER}", E::NestedDefault),
            ("${VAR-a{b}", E::NestedDefault),
            ("${VAR}${OTHER}", E::ExtraText),
        ];
        for (raw, want) in cases {
            assert_eq!(parse_name(raw).unwrap_err(), *want, "input {raw:?}");
        }
    }

    #[test]
    fn messages_name_the_accepted_forms() {
        let msg = parse_name("literal").unwrap_err().to_string();
        assert!(msg.contains("${VAR:-default}"), "{msg}");
        let msg = parse_name("${V:?x}").unwrap_err().to_string();
        assert!(msg.contains("${VAR:?...}"), "{msg}");
    }

    #[test]
    fn variable_names() {
        assert!(is_variable_name("A_1"));
        assert!(is_variable_name("_"));
        assert!(!is_variable_name("1A"));
        assert!(!is_variable_name(""));
        assert!(!is_variable_name("A-B"));
        assert!(!is_variable_name("Ä"));
    }
}
