//! The stack file as the deploy sees it: its services and, for each, which variable chooses
//! its image. Parsed with config-hasher's YAML model (any indentation, anchors, merge keys), so
//! there is one reader of the stack file and a new service needs no code change.
//!
//! Two image forms carry a variable the deploy sets:
//! - `<repository>:${X_TAG}` — a project image: the repository (which may use `${REGISTRY}`)
//!   is fixed by the stack file, the tag comes from the pins or the settings;
//! - `${X_IMAGE}` (optionally `${X_IMAGE:?message}`) — a whole reference, which must be pinned
//!   by digest because a republished tag would restart the service unasked.
//!
//! Any other image is literal and must carry its digest itself.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use config_hasher::services::{ServiceDecl, parse_services};

/// Where a service's image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// `<repository>:${tag_var}`.
    Tagged { repository: String, tag_var: String },
    /// `${var}`: the whole reference.
    Whole { var: String },
    /// Written out in the stack file.
    Literal(String),
}

impl ImageSource {
    /// The variable the settings give for this image, if any.
    pub fn variable(&self) -> Option<&str> {
        match self {
            ImageSource::Tagged { tag_var, .. } => Some(tag_var),
            ImageSource::Whole { var } => Some(var),
            ImageSource::Literal(_) => None,
        }
    }
}

/// One service and its image.
#[derive(Debug, Clone, PartialEq)]
pub struct StackService {
    pub name: String,
    pub image: ImageSource,
    /// Its canary gate (`stackship.canary.*` deploy labels), if it has one.
    pub canary: Option<crate::canary::Canary>,
}

/// The services of a stack file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StackFile {
    pub services: Vec<StackService>,
}

/// What is wrong with the stack file.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("{0}")]
    Parse(#[from] config_hasher::Error),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: services.{service}.image `{image}`: {reason}")]
    Image {
        path: String,
        service: String,
        image: String,
        reason: String,
    },
    #[error("{path}: services.{service}: {reason}")]
    Canary {
        path: String,
        service: String,
        reason: String,
    },
    #[error("{path}: services.{service} has no image:")]
    NoImage { path: String, service: String },
}

impl StackFile {
    /// Reads and classifies `path`.
    pub fn read(path: &Path) -> Result<Self, StackError> {
        let text = std::fs::read_to_string(path).map_err(|source| StackError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Classifies the services of compose YAML `text` (`path` only names it in messages).
    pub fn parse(text: &str, path: &Path) -> Result<Self, StackError> {
        let services = parse_services(text, path)?
            .into_iter()
            .map(
                |ServiceDecl {
                     name,
                     image,
                     labels,
                     update,
                 }| {
                    let Some(image) = image else {
                        return Err(StackError::NoImage {
                            path: path.display().to_string(),
                            service: name,
                        });
                    };
                    let source = classify(&image).map_err(|reason| StackError::Image {
                        path: path.display().to_string(),
                        service: name.clone(),
                        image: image.clone(),
                        reason,
                    })?;
                    let canary =
                        crate::canary::Canary::from_decl(&labels, &update).map_err(|reason| {
                            StackError::Canary {
                                path: path.display().to_string(),
                                service: name.clone(),
                                reason,
                            }
                        })?;
                    Ok(StackService {
                        name,
                        image: source,
                        canary,
                    })
                },
            )
            .collect::<Result<Vec<_>, _>>()?;
        // A gate counts the answers in its proxy's access log: that service must be here.
        for s in &services {
            if let Some(c) = s
                .canary
                .as_ref()
                .filter(|c| !services.iter().any(|o| o.name == c.proxy))
            {
                return Err(StackError::Canary {
                    path: path.display().to_string(),
                    service: s.name.clone(),
                    reason: format!(
                        "{}proxy names `{}`, which is not a service of this stack file",
                        crate::canary::LABEL_PREFIX,
                        c.proxy
                    ),
                });
            }
        }
        Ok(Self { services })
    }

    /// Whether the stack file has a service of that name.
    pub fn has(&self, service: &str) -> bool {
        self.services.iter().any(|s| s.name == service)
    }

    /// The tag variables (`BACKEND_TAG`, ...) and whole-image variables (`POSTGRES_IMAGE`,
    /// ...), each with the services that use it.
    pub fn image_variables(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for s in &self.services {
            if let Some(v) = s.image.variable() {
                out.entry(v.to_owned()).or_default().push(s.name.clone());
            }
        }
        out
    }
}

/// One `${...}` in a string.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Use {
    start: usize,
    end: usize,
    var: String,
}

/// The `${VAR}` / `${VAR:?msg}` / `${VAR:-default}` uses in `text`; `$$` is a literal `$`.
fn uses(text: &str) -> Result<Vec<Use>, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' {
            i += 1;
            continue;
        }
        match bytes.get(i + 1) {
            Some(b'$') => i += 2,
            Some(b'{') => {
                let close = text[i..]
                    .find('}')
                    .map(|c| i + c)
                    .ok_or_else(|| "`${` is not closed".to_owned())?;
                let inner = &text[i + 2..close];
                let len = inner
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(inner.len());
                let var = &inner[..len];
                if !config_hasher::interpolate::is_variable_name(var) {
                    return Err(format!("`${{{inner}}}` does not name a variable"));
                }
                out.push(Use {
                    start: i,
                    end: close + 1,
                    var: var.to_owned(),
                });
                i = close + 1;
            }
            _ => return Err("write variables as ${VAR} (a bare $ is not supported)".to_owned()),
        }
    }
    Ok(out)
}

fn classify(image: &str) -> Result<ImageSource, String> {
    let found = uses(image)?;
    match found.as_slice() {
        [] => Ok(ImageSource::Literal(image.replace("$$", "$"))),
        [only] if only.start == 0 && only.end == image.len() => Ok(ImageSource::Whole {
            var: only.var.clone(),
        }),
        [.., last] if last.end == image.len() && image[..last.start].ends_with(':') => {
            let repository = &image[..last.start - 1];
            if repository.is_empty() {
                return Err("no repository before the tag".to_owned());
            }
            if !last.var.ends_with("_TAG") {
                return Err(format!(
                    "a tag variable must end in _TAG (found {}), so the settings know it for one",
                    last.var
                ));
            }
            Ok(ImageSource::Tagged {
                repository: repository.to_owned(),
                tag_var: last.var.clone(),
            })
        }
        _ => Err(
            "an image is a literal reference, `<repository>:${X_TAG}` or one `${X_IMAGE}`"
                .to_owned(),
        ),
    }
}

/// Expands the `${VAR}` uses of `text` from `lookup`; the first variable it lacks is the error.
pub fn expand(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::new();
    let mut at = 0;
    for u in uses(text)? {
        out.push_str(&text[at..u.start].replace("$$", "$"));
        out.push_str(&lookup(&u.var).ok_or_else(|| u.var.clone())?);
        at = u.end;
    }
    out.push_str(&text[at..].replace("$$", "$"));
    Ok(out)
}

impl fmt::Display for ImageSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageSource::Tagged {
                repository,
                tag_var,
            } => write!(f, "{repository}:${{{tag_var}}}"),
            ImageSource::Whole { var } => write!(f, "${{{var}}}"),
            ImageSource::Literal(s) => f.write_str(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(text: &str) -> Result<StackFile, StackError> {
        StackFile::parse(text, Path::new("docker-compose.prod.yaml"))
    }

    #[test]
    fn a_canary_gate_is_read_with_its_service_and_checked_against_the_stack() {
        let gated = |proxy: &str| {
            format!(
                "services:\n  backend:\n    image: ${{REGISTRY}}/p/backend:${{BACKEND_TAG}}\n    deploy:\n      labels:\n        stackship.canary.window: 10s\n{proxy}      update_config: {{parallelism: 1, order: start-first, delay: 10s}}\n  nginx-proxy:\n    image: ${{NGINX_IMAGE}}\n"
            )
        };
        let s = stack(&gated("")).unwrap();
        let canary = s.services[0].canary.as_ref().unwrap();
        assert_eq!(
            (canary.window, canary.proxy.as_str()),
            (std::time::Duration::from_secs(10), "nginx-proxy")
        );
        assert_eq!(s.services[1].canary, None);
        let e = stack(&gated("        stackship.canary.proxy: edge\n"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "docker-compose.prod.yaml: services.backend: stackship.canary.proxy names `edge`, which is not a service of this stack file"
        );
        let e = stack(&gated("        stackship.canary.too-little: never\n"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "docker-compose.prod.yaml: services.backend: stackship.canary.too-little is `never`: want proceed or rollback"
        );
    }

    #[test]
    fn the_projects_stack_files_classify() {
        for file in [
            "docker-compose.prod.yaml",
            "docker-compose.dev.yaml",
            "docker-compose.review.yaml",
        ] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../..")
                .join(file);
            let s = StackFile::read(&path).unwrap();
            let vars = s.image_variables();
            assert_eq!(vars["BACKEND_TAG"], vec!["backend"], "{file}");
            assert_eq!(vars["POSTGRES_IMAGE"], vec!["postgres"], "{file}");
            assert!(
                vars.keys()
                    .all(|v| v.ends_with("_TAG") || v.ends_with("_IMAGE"))
            );
            // The backend's releases are judged on real traffic before they take all of it.
            let gated: Vec<&str> = s
                .services
                .iter()
                .filter(|s| s.canary.is_some())
                .map(|s| s.name.as_str())
                .collect();
            assert_eq!(gated, ["backend"], "{file}");
        }
    }

    #[test]
    fn images_are_tagged_whole_or_literal() {
        let s = stack(
            "services:\n  backend:\n    image: ${REGISTRY}/stackship/backend:${BACKEND_TAG}\n  db:\n    image: ${POSTGRES_IMAGE:?pin it}\n  cache:\n    image: redis:7@sha256:abc\n",
        )
        .unwrap();
        assert_eq!(
            s.services[0].image,
            ImageSource::Tagged {
                repository: "${REGISTRY}/stackship/backend".into(),
                tag_var: "BACKEND_TAG".into()
            }
        );
        assert_eq!(
            s.services[1].image,
            ImageSource::Whole {
                var: "POSTGRES_IMAGE".into()
            }
        );
        assert_eq!(
            s.services[2].image,
            ImageSource::Literal("redis:7@sha256:abc".into())
        );
        assert!(s.has("db") && !s.has("web"));
        assert_eq!(
            s.services[0].image.to_string(),
            "${REGISTRY}/stackship/backend:${BACKEND_TAG}"
        );
        assert_eq!(s.services[1].image.to_string(), "${POSTGRES_IMAGE}");
    }

    #[test]
    fn unusable_images_are_refused_naming_the_service() {
        for (image, why) in [
            ("${A}/x:${B}", "must end in _TAG"),
            ("x:${A_TAG}-suffix", "an image is a literal reference"),
            ("$REGISTRY/x:1", "write variables as ${VAR}"),
            ("${REG/x:1", "not closed"),
            ("${1X}", "does not name a variable"),
            (":${X_TAG}", "no repository"),
        ] {
            let e = stack(&format!("services:\n  web:\n    image: \"{image}\"\n"))
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("docker-compose.prod.yaml: services.web.image"),
                "{e}"
            );
            assert!(e.contains(why), "{image}: {e}");
        }
        let e = stack("services:\n  web: {}\n").unwrap_err().to_string();
        assert_eq!(e, "docker-compose.prod.yaml: services.web has no image:");
    }

    #[test]
    fn expand_fills_variables_and_names_the_missing_one() {
        let vars = |v: &str| match v {
            "REGISTRY" => Some("127.0.0.1:5000".to_owned()),
            "BACKEND_TAG" => Some("20261206_abcdef01".to_owned()),
            _ => None,
        };
        assert_eq!(
            expand("${REGISTRY}/stackship/backend:${BACKEND_TAG}", &vars).unwrap(),
            "127.0.0.1:5000/stackship/backend:20261206_abcdef01"
        );
        assert_eq!(expand("a$$b", &vars).unwrap(), "a$b");
        assert_eq!(expand("${NOPE:?x}", &vars).unwrap_err(), "NOPE");
    }

    #[test]
    fn image_variables_group_services() {
        let s = stack(
            "services:\n  a:\n    image: r/a:${APP_TAG}\n  b:\n    image: r/b:${APP_TAG}\n  c:\n    image: c@sha256:0\n",
        )
        .unwrap();
        let vars = s.image_variables();
        assert_eq!(vars.len(), 1);
        assert_eq!(vars["APP_TAG"], vec!["a", "b"]);
    }

    #[test]
    fn a_default_ending_in_an_escaped_dollar_is_read_past() {
        let found: Vec<String> = uses("${R:-reg$$}/a:${A_TAG}")
            .unwrap()
            .into_iter()
            .map(|u| u.var)
            .collect();
        assert_eq!(found, ["R", "A_TAG"]);
    }
}
