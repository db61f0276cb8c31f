//! Reads the top-level `services:` of a compose file: each service's name and its `image:` as
//! written (no interpolation, no file system access). The deploy tool derives from it which
//! variables choose each image, so a new service needs no code change anywhere.

use std::path::Path;

use yaml_serde::Value;

use crate::compose::{apply_merge, describe, top_level, untag};
use crate::error::Error;

/// One service of the stack file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceDecl {
    /// The key under `services:` (the Swarm service is `<stack>_<name>`).
    pub name: String,
    /// `image:` as written, e.g. `${REGISTRY}/stackship/backend:${BACKEND_TAG}`.
    pub image: Option<String>,
}

/// Parses compose YAML into its services, in file order. `path` is used only in messages.
///
/// # Errors
/// [`Error::Syntax`] for YAML errors, [`Error::Layout`] when `services:` or a service is not a
/// mapping, or an `image:` is not a string.
pub fn parse_services(text: &str, path: &Path) -> Result<Vec<ServiceDecl>, Error> {
    let layout = |message: String| Error::Layout {
        path: path.to_path_buf(),
        message,
    };
    let Some(top) = top_level(text, path)? else {
        return Ok(Vec::new());
    };
    let Some(section) = top.get("services") else {
        return Ok(Vec::new());
    };
    let mut section = untag(section).clone();
    let services = match &mut section {
        Value::Null => return Ok(Vec::new()),
        Value::Mapping(m) => m,
        other => {
            return Err(layout(format!(
                "top-level `services:` must be a mapping, found {}",
                describe(other)
            )));
        }
    };
    apply_merge(services)
        .map_err(|e| layout(format!("`services:`: cannot apply `<<:` merge key: {e}")))?;
    let mut out = Vec::new();
    for (key, value) in services.iter() {
        let name = match untag(key) {
            Value::String(s) => s.clone(),
            other => {
                return Err(layout(format!(
                    "a key under `services:` must be a string, found {}",
                    describe(other)
                )));
            }
        };
        let image = match untag(value) {
            Value::Mapping(m) => match m.get("image").map(untag) {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(other) => {
                    return Err(layout(format!(
                        "services.{name}.image must be a string, found {}",
                        describe(other)
                    )));
                }
            },
            other => {
                return Err(layout(format!(
                    "services.{name} must be a mapping, found {}",
                    describe(other)
                )));
            }
        };
        out.push(ServiceDecl { name, image });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<ServiceDecl>, Error> {
        parse_services(text, Path::new("stack.yaml"))
    }

    #[test]
    fn services_in_file_order_with_their_images_as_written() {
        let got = parse(
            "services:\n  backend:\n    image: ${REGISTRY}/p/backend:${BACKEND_TAG}\n  postgres:\n    image: \"${POSTGRES_IMAGE:?pin it}\"\n  worker: {}\nconfigs: {}\n",
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                ServiceDecl {
                    name: "backend".into(),
                    image: Some("${REGISTRY}/p/backend:${BACKEND_TAG}".into())
                },
                ServiceDecl {
                    name: "postgres".into(),
                    image: Some("${POSTGRES_IMAGE:?pin it}".into())
                },
                ServiceDecl {
                    name: "worker".into(),
                    image: None
                },
            ]
        );
    }

    #[test]
    fn any_indentation_and_merge_keys_are_read() {
        let got = parse(
            "x-base: &base\n      image: ${NGINX_IMAGE}\nservices:\n      proxy:\n            <<: *base\n",
        )
        .unwrap();
        assert_eq!(got[0].image.as_deref(), Some("${NGINX_IMAGE}"));
    }

    #[test]
    fn no_services_is_an_empty_list() {
        assert!(parse("").unwrap().is_empty());
        assert!(parse("configs: {}\n").unwrap().is_empty());
        assert!(parse("services:\n").unwrap().is_empty());
    }

    #[test]
    fn wrong_shapes_name_where() {
        let e = parse("services: [a]\n").unwrap_err().to_string();
        assert!(
            e.contains("top-level `services:` must be a mapping, found a list"),
            "{e}"
        );
        let e = parse("services:\n  a: 3\n").unwrap_err().to_string();
        assert!(
            e.contains("services.a must be a mapping, found a number"),
            "{e}"
        );
        let e = parse("services:\n  a:\n    image: [x]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("services.a.image must be a string, found a list"),
            "{e}"
        );
        let e = parse("- a\n").unwrap_err().to_string();
        assert!(e.contains("the top level must be a mapping"), "{e}");
        let e = parse("services:\n  a: [\n").unwrap_err().to_string();
        assert!(e.contains("stack.yaml"), "{e}");
    }
}
