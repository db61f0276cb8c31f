//! Reads the top-level `services:` of a compose file: each service's name, its `image:`, its
//! `deploy.labels` and `deploy.update_config` as written (no interpolation, no file system
//! access). The deploy tool derives from it which variables choose each image (so a new service
//! needs no code change anywhere) and which services its canary gate watches.

use std::collections::BTreeMap;
use std::path::Path;

use yaml_serde::{Mapping, Value};

use crate::compose::{apply_merge, describe, scalar_text, top_level, untag};
use crate::error::Error;

/// One service of the stack file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceDecl {
    /// The key under `services:` (the Swarm service is `<stack>_<name>`).
    pub name: String,
    /// `image:` as written, e.g. `${REGISTRY}/stackship/backend:${BACKEND_TAG}`.
    pub image: Option<String>,
    /// `deploy.labels` (a mapping or a list of `key=value`), values as written.
    pub labels: BTreeMap<String, String>,
    /// `deploy.update_config`, the keys the deploy checks.
    pub update: UpdateDecl,
}

/// `deploy.update_config` as written (scalars as text); `None` where a key is not set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdateDecl {
    pub parallelism: Option<String>,
    pub order: Option<String>,
    pub delay: Option<String>,
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
        let Value::Mapping(service) = untag(value) else {
            return Err(layout(format!(
                "services.{name} must be a mapping, found {}",
                describe(untag(value))
            )));
        };
        let image = match service.get("image").map(untag) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                return Err(layout(format!(
                    "services.{name}.image must be a string, found {}",
                    describe(other)
                )));
            }
        };
        let deploy = mapping_at(service, "deploy", &format!("services.{name}")).map_err(layout)?;
        let labels = match deploy.and_then(|d| d.get("labels")).map(untag) {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(found) => {
                labels_of(found, &format!("services.{name}.deploy.labels")).map_err(layout)?
            }
        };
        let update = match deploy {
            Some(d) => mapping_at(d, "update_config", &format!("services.{name}.deploy"))
                .map_err(layout)?,
            None => None,
        };
        let key = |k: &str| -> Result<Option<String>, Error> {
            match update.and_then(|u| u.get(k)).map(untag) {
                None | Some(Value::Null) => Ok(None),
                Some(v @ (Value::String(_) | Value::Number(_) | Value::Bool(_))) => {
                    Ok(Some(scalar_text(v)))
                }
                Some(other) => Err(layout(format!(
                    "services.{name}.deploy.update_config.{k} must be a scalar, found {}",
                    describe(other)
                ))),
            }
        };
        let update = UpdateDecl {
            parallelism: key("parallelism")?,
            order: key("order")?,
            delay: key("delay")?,
        };
        out.push(ServiceDecl {
            name,
            image,
            labels,
            update,
        });
    }
    Ok(out)
}

/// The mapping under `key` of `map` (`None` when absent or null); `at` names `map` in errors.
fn mapping_at<'a>(map: &'a Mapping, key: &str, at: &str) -> Result<Option<&'a Mapping>, String> {
    match map.get(key).map(untag) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Mapping(m)) => Ok(Some(m)),
        Some(other) => Err(format!(
            "{at}.{key} must be a mapping, found {}",
            describe(other)
        )),
    }
}

/// Compose labels: a mapping of scalars, or a list of `key=value` (`key` alone: empty value).
fn labels_of(v: &Value, at: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    match v {
        Value::Mapping(m) => {
            for (k, v) in m {
                let (Value::String(k), v) = (untag(k), untag(v)) else {
                    return Err(format!("{at}: a key must be a string"));
                };
                let v = match v {
                    Value::Null => String::new(),
                    Value::String(_) | Value::Number(_) | Value::Bool(_) => scalar_text(v),
                    other => {
                        return Err(format!(
                            "{at}.{k} must be a scalar, found {}",
                            describe(other)
                        ));
                    }
                };
                out.insert(k.clone(), v);
            }
        }
        Value::Sequence(items) => {
            for item in items {
                let Value::String(item) = untag(item) else {
                    return Err(format!(
                        "{at}: each item must be a `key=value` string, found {}",
                        describe(untag(item))
                    ));
                };
                let (k, v) = item.split_once('=').unwrap_or((item, ""));
                out.insert(k.to_owned(), v.to_owned());
            }
        }
        other => {
            return Err(format!(
                "{at} must be a mapping or a list, found {}",
                describe(other)
            ));
        }
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
                    image: Some("${REGISTRY}/p/backend:${BACKEND_TAG}".into()),
                    ..ServiceDecl::default()
                },
                ServiceDecl {
                    name: "postgres".into(),
                    image: Some("${POSTGRES_IMAGE:?pin it}".into()),
                    ..ServiceDecl::default()
                },
                ServiceDecl {
                    name: "worker".into(),
                    ..ServiceDecl::default()
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
    fn deploy_labels_and_update_config_are_read_in_either_form() {
        let got = parse(
            "x-update: &update\n  parallelism: 1\n  order: start-first\nservices:\n  a:\n    deploy:\n      labels:\n        stackship.canary.window: 10s\n        stackship.canary.min-requests: 50\n        empty:\n      update_config:\n        <<: *update\n        delay: 10s\n  b:\n    deploy:\n      labels: [\"k=v=w\", bare]\n",
        )
        .unwrap();
        assert_eq!(
            got[0].labels,
            BTreeMap::from([
                ("empty".to_owned(), String::new()),
                ("stackship.canary.min-requests".to_owned(), "50".to_owned()),
                ("stackship.canary.window".to_owned(), "10s".to_owned()),
            ])
        );
        assert_eq!(
            got[0].update,
            UpdateDecl {
                parallelism: Some("1".into()),
                order: Some("start-first".into()),
                delay: Some("10s".into()),
            }
        );
        assert_eq!(
            got[1].labels,
            BTreeMap::from([
                ("bare".to_owned(), String::new()),
                ("k".to_owned(), "v=w".to_owned()),
            ])
        );
        assert_eq!(got[1].update, UpdateDecl::default());
    }

    #[test]
    fn wrong_deploy_shapes_name_where() {
        for (text, expected) in [
            (
                "services:\n  a:\n    deploy: 3\n",
                "services.a.deploy must be a mapping, found a number",
            ),
            (
                "services:\n  a:\n    deploy:\n      update_config: [1]\n",
                "services.a.deploy.update_config must be a mapping, found a list",
            ),
            (
                "services:\n  a:\n    deploy:\n      update_config:\n        delay: [1]\n",
                "services.a.deploy.update_config.delay must be a scalar, found a list",
            ),
            (
                "services:\n  a:\n    deploy:\n      labels: 3\n",
                "services.a.deploy.labels must be a mapping or a list, found a number",
            ),
            (
                "services:\n  a:\n    deploy:\n      labels: [3]\n",
                "services.a.deploy.labels: each item must be a `key=value` string, found a number",
            ),
            (
                "services:\n  a:\n    deploy:\n      labels:\n        k: [1]\n",
                "services.a.deploy.labels.k must be a scalar, found a list",
            ),
            (
                "services:\n  a:\n    deploy:\n      labels:\n        1: x\n",
                "services.a.deploy.labels: a key must be a string",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(expected), "{text}: {e}");
        }
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
