//! Deploy records: what each successful deploy ran, one JSON file per deploy in the
//! environment's history directory. The prune keeps what the last N records name, and a
//! rollback returns to one of them.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use bollard::models::{Service, TaskSpec};
use serde::{Deserialize, Serialize};

/// One service as a deploy left it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub image: String,
    pub configs: Vec<String>,
    pub secrets: Vec<String>,
    /// The service's whole spec as the deploy left it (the Engine API's JSON): `stackship
    /// status` compares it with the running spec to show drift. Absent in older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<serde_json::Value>,
}

/// One deploy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployRecord {
    /// Sortable UTC time, e.g. `20261123T020304Z`, also the file name.
    pub id: String,
    pub stack: String,
    /// The commit the release was built from (`CI_COMMIT_SHA`), when the deploy knew it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// The pipeline that deployed it (`CI_PIPELINE_URL` or id), when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
    /// The commit's ancestors as the deploy job saw them (`git rev-list`, newest first, at
    /// most a few hundred): a later deploy of one of these commits would go backwards.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ancestors: Vec<String>,
    /// What made this record when it was not a deploy of a release (`rotated db-password:
    /// stackship-prod-db-password-v3 -> v4`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// When the deploy stage began (`docker stack deploy`), RFC 3339 UTC: the first log line of
    /// the rollout is after it (the id is the time the rollout ended). Absent in older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    /// Service name (without the stack prefix) to what it ran.
    pub services: BTreeMap<String, ServiceRecord>,
}

/// Config and secret names a task template references.
pub fn references(template: Option<&TaskSpec>) -> (Vec<String>, Vec<String>) {
    let container = template.and_then(|t| t.container_spec.as_ref());
    let mut configs: Vec<String> = container
        .and_then(|c| c.configs.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.config_name.clone())
        .collect();
    let mut secrets: Vec<String> = container
        .and_then(|c| c.secrets.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|s| s.secret_name.clone())
        .collect();
    configs.sort();
    configs.dedup();
    secrets.sort();
    secrets.dedup();
    (configs, secrets)
}

/// The record of `services` (one stack) as they are now.
pub fn record_of(id: &str, stack: &str, services: &[Service]) -> DeployRecord {
    let prefix = format!("{stack}_");
    let services = services
        .iter()
        .filter_map(|s| {
            let spec = s.spec.as_ref()?;
            let name = spec.name.as_deref()?;
            let template = spec.task_template.as_ref();
            let (configs, secrets) = references(template);
            let image = template
                .and_then(|t| t.container_spec.as_ref())
                .and_then(|c| c.image.clone())
                .unwrap_or_default();
            Some((
                name.strip_prefix(&prefix).unwrap_or(name).to_owned(),
                ServiceRecord {
                    image,
                    configs,
                    secrets,
                    spec: serde_json::to_value(spec).ok(),
                },
            ))
        })
        .collect();
    DeployRecord {
        id: id.to_owned(),
        stack: stack.to_owned(),
        commit: None,
        pipeline: None,
        ancestors: Vec::new(),
        note: None,
        started: None,
        services,
    }
}

/// Writes `record` as `DIR/<id>.json` (via a temporary file, so a reader never sees half).
pub fn write(dir: &Path, record: &DeployRecord) -> anyhow::Result<PathBuf> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(format!("{}.json", record.id));
    let tmp = dir.join(format!(".{}.json.tmp", record.id));
    let mut file =
        fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    serde_json::to_writer_pretty(&mut file, record)?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// The records in `dir`, oldest first. A missing directory has none; an unreadable record is
/// an error naming the file (the prune must not guess what it would have kept).
pub fn read_all(dir: &Path) -> anyhow::Result<Vec<DeployRecord>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "json")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| {
            let text =
                fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{} is not a deploy record", p.display()))
        })
        .collect()
}
