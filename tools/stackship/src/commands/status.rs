//! `stackship status [ENV...]`: per environment and service, what runs (image tag and digest,
//! replicas, configs and secrets, since when, the update state), the last deploy record, and
//! drift — everything that differs from that record.
//!
//! [`gather`] asks Docker; [`report`] decides over plain data; [`render`] prints.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use rollout_watcher::docker::{ServiceInspect, parse_services};
use rollout_watcher::history::{DeployRecord, references};
use serde::{Deserialize, Serialize};

use crate::docker::{Call, Client};
use crate::drift;
use crate::error::Error;

/// One service as it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceStatus {
    /// Without the stack prefix.
    pub name: String,
    /// The image reference without its digest.
    pub image: String,
    /// `sha256:...`, when the spec pins one.
    pub digest: Option<String>,
    /// As `docker service ls` shows it: running/desired.
    pub replicas: String,
    /// When the spec last changed.
    pub since: Option<String>,
    /// The last update's state (`completed`, `rollback_completed`, ...), if any.
    pub update: Option<String>,
    pub configs: Vec<String>,
    pub secrets: Vec<String>,
    /// How it differs from the last deploy record (empty: as deployed).
    pub drift: Vec<String>,
}

/// The last deploy, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastDeploy {
    pub id: String,
    pub commit: Option<String>,
    pub pipeline: Option<String>,
}

/// One environment's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    pub env: String,
    pub stack: String,
    pub last_deploy: Option<LastDeploy>,
    pub services: Vec<ServiceStatus>,
    /// Services the last record has and the swarm does not.
    pub missing: Vec<String>,
    /// The TLS certificate in `<env dir>/secrets/tls.crt`, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<Certificate>,
    /// The database backups: last backup, off-site copy, test restore, repository check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backups: Option<Backups>,
}

/// An environment's backups as `db check` judges them, or why their state cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Backups {
    Checked(Vec<crate::backup::Finding>),
    Unreadable(String),
}

/// The backups of the environment in `env_dir` at `now`, read from its settings and state
/// file; the process environment's BACKUP_* settings are in `settings_env`.
pub fn backups(
    env_dir: &std::path::Path,
    settings_env: &BTreeMap<String, String>,
    now: chrono::DateTime<chrono::Utc>,
) -> Backups {
    let settings = match crate::settings::load_backup(&env_dir.join("deploy.env"), settings_env) {
        Ok(s) => s,
        Err(e) => return Backups::Unreadable(e.to_string()),
    };
    match crate::backup::State::read(&crate::backup::state_path(env_dir)) {
        Ok(state) => Backups::Checked(crate::backup::findings(&state, &settings, now)),
        Err(e) => Backups::Unreadable(e),
    }
}

/// An environment's installed certificate, or why it cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Certificate {
    Installed(crate::commands::cert::CertStatus),
    Unreadable(String),
}

/// The certificate of the environment in `env_dir` at `now` (`None`: it has none).
pub fn certificate(
    env_dir: &std::path::Path,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<Certificate> {
    match crate::commands::cert::installed(env_dir, now) {
        Ok(found) => found.map(Certificate::Installed),
        Err(e) => Some(Certificate::Unreadable(e)),
    }
}

impl Status {
    /// Whether anything differs from the last deploy record.
    pub fn drifted(&self) -> bool {
        !self.missing.is_empty() || self.services.iter().any(|s| !s.drift.is_empty())
    }
}

/// A line of `docker service ls --format '{{json .}}'`.
#[derive(Debug, Deserialize)]
struct Listed {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "Replicas", default)]
    replicas: String,
}

/// What Docker says about a stack.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub services: Vec<ServiceInspect>,
    /// Full service name to running/desired.
    pub replicas: BTreeMap<String, String>,
}

/// Asks Docker for the stack's services.
pub fn gather(client: &Client<'_>, stack: &str) -> Result<Observed, Error> {
    let filter = format!("label=com.docker.stack.namespace={stack}");
    let lines = client.lines(&Call::read([
        "service",
        "ls",
        "--filter",
        filter.as_str(),
        "--format",
        "{{json .}}",
    ]))?;
    let mut observed = Observed::default();
    let mut names = Vec::new();
    for line in &lines {
        let l: Listed = serde_json::from_str(line).map_err(|e| {
            Error::Refused(format!(
                "cannot read `docker service ls` line {line:?}: {e}"
            ))
        })?;
        names.push(l.name.clone());
        observed.replicas.insert(l.name, l.replicas);
    }
    if names.is_empty() {
        return Ok(observed);
    }
    let mut args = vec!["service".to_owned(), "inspect".to_owned()];
    args.extend(names);
    let text = client.run(&Call::read(args))?;
    observed.services = parse_services(&text).map_err(|e| Error::Refused(format!("{e:#}")))?;
    observed.services.sort_by(|a, b| a.name().cmp(b.name()));
    Ok(observed)
}

fn split_digest(image: &str) -> (String, Option<String>) {
    match image.split_once('@') {
        Some((r, d)) => (r.to_owned(), Some(d.to_owned())),
        None => (image.to_owned(), None),
    }
}

/// The status of `stack` from what Docker said and the last deploy record.
pub fn report(env: &str, stack: &str, observed: &Observed, last: Option<&DeployRecord>) -> Status {
    let prefix = format!("{stack}_");
    let mut services = Vec::new();
    for inspect in &observed.services {
        let full = inspect.name();
        let name = full.strip_prefix(&prefix).unwrap_or(full).to_owned();
        let spec = inspect.service.spec.as_ref();
        let template = spec.and_then(|s| s.task_template.as_ref());
        let image = template
            .and_then(|t| t.container_spec.as_ref())
            .and_then(|c| c.image.clone())
            .unwrap_or_default();
        let (image, digest) = split_digest(&image);
        let (configs, secrets) = references(template);
        let drift = match last {
            None => Vec::new(),
            Some(record) => match record.services.get(&name) {
                None => vec!["not in the last deploy record (made by hand?)".to_owned()],
                Some(recorded) => match (&recorded.spec, spec) {
                    (Some(old), Some(now)) => match serde_json::to_value(now) {
                        Ok(now) => drift::differences(old, &now),
                        Err(e) => vec![format!("cannot compare: {e}")],
                    },
                    // An older record without the spec: compare what it has.
                    _ => {
                        let mut d = Vec::new();
                        let (recorded_image, _) = split_digest(&recorded.image);
                        if recorded.image
                            != format!(
                                "{image}{}",
                                digest
                                    .as_deref()
                                    .map(|d| format!("@{d}"))
                                    .unwrap_or_default()
                            )
                            && recorded_image != image
                        {
                            d.push(format!("image: {} → {image}", recorded.image));
                        }
                        if recorded.configs != configs {
                            d.push(format!(
                                "configs: {} → {}",
                                recorded.configs.join(" "),
                                configs.join(" ")
                            ));
                        }
                        if recorded.secrets != secrets {
                            d.push(format!(
                                "secrets: {} → {}",
                                recorded.secrets.join(" "),
                                secrets.join(" ")
                            ));
                        }
                        d
                    }
                },
            },
        };
        services.push(ServiceStatus {
            replicas: observed.replicas.get(full).cloned().unwrap_or_default(),
            since: inspect
                .service
                .updated_at
                .as_ref()
                .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string()),
            update: inspect
                .service
                .update_status
                .as_ref()
                .and_then(|u| u.state)
                .map(|s| s.to_string())
                .filter(|s| !s.is_empty()),
            name,
            image,
            digest,
            configs,
            secrets,
            drift,
        });
    }
    let missing = last
        .map(|r| {
            r.services
                .keys()
                .filter(|k| !services.iter().any(|s| &&s.name == k))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    Status {
        env: env.to_owned(),
        stack: stack.to_owned(),
        last_deploy: last.map(|r| LastDeploy {
            id: r.id.clone(),
            commit: r.commit.clone(),
            pipeline: r.pipeline.clone(),
        }),
        services,
        missing,
        certificate: None,
        backups: None,
    }
}

fn short_digest(d: &Option<String>) -> String {
    match d {
        Some(d) => d
            .strip_prefix("sha256:")
            .map(|h| h.chars().take(12).collect())
            .unwrap_or_else(|| d.clone()),
        None => "-".to_owned(),
    }
}

/// The human table of one environment.
pub fn render(status: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{} ({})", status.env, status.stack);
    match &status.last_deploy {
        Some(d) => {
            let _ = writeln!(
                out,
                "  last deploy: {}{}{}",
                d.id,
                d.commit
                    .as_deref()
                    .map(|c| format!(", commit {c}"))
                    .unwrap_or_default(),
                d.pipeline
                    .as_deref()
                    .map(|p| format!(", pipeline {p}"))
                    .unwrap_or_default()
            );
        }
        None => {
            let _ = writeln!(out, "  last deploy: none recorded (drift cannot be shown)");
        }
    }
    match &status.certificate {
        Some(Certificate::Installed(cert)) => {
            let _ = writeln!(
                out,
                "  certificate: {}",
                crate::commands::cert::render_line(cert)
            );
        }
        Some(Certificate::Unreadable(why)) => {
            let _ = writeln!(out, "  certificate: cannot be read: {why}");
        }
        None => {}
    }
    match &status.backups {
        Some(Backups::Checked(findings)) => {
            for f in findings {
                let _ = writeln!(
                    out,
                    "  {}{}",
                    if f.failed { "FAILING " } else { "" },
                    f.line
                );
            }
        }
        Some(Backups::Unreadable(why)) => {
            let _ = writeln!(out, "  backups: cannot be read: {why}");
        }
        None => {}
    }
    if status.services.is_empty() {
        let _ = writeln!(out, "  no services running");
    }
    let width = status
        .services
        .iter()
        .map(|s| s.name.len())
        .max()
        .unwrap_or(0)
        .max(7);
    let iwidth = status
        .services
        .iter()
        .map(|s| short_image(&s.image).len())
        .max()
        .unwrap_or(0)
        .max(5);
    if !status.services.is_empty() {
        let _ = writeln!(
            out,
            "  {:width$}  {:iwidth$}  {:12}  {:8}  {:20}  STATE",
            "SERVICE", "IMAGE", "DIGEST", "REPLICAS", "SINCE"
        );
    }
    for s in &status.services {
        let _ = writeln!(
            out,
            "  {:width$}  {:iwidth$}  {:12}  {:8}  {:20}  {}",
            s.name,
            short_image(&s.image),
            short_digest(&s.digest),
            s.replicas,
            s.since.as_deref().unwrap_or("-"),
            if s.drift.is_empty() {
                s.update.clone().unwrap_or_else(|| "deployed".to_owned())
            } else {
                "DRIFT".to_owned()
            }
        );
    }
    for s in &status.services {
        for d in &s.drift {
            let _ = writeln!(out, "  drift: {}: {d}", s.name);
        }
    }
    for m in &status.missing {
        let _ = writeln!(out, "  drift: {m}: in the last deploy record, not running");
    }
    out
}

/// `registry/project/backend:tag` → `backend:tag`.
fn short_image(image: &str) -> &str {
    image.rsplit('/').next().unwrap_or(image)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::fake::FakeEngine;
    use rollout_watcher::history::record_of;
    use serde_json::Value;

    fn fixture(name: &str) -> Value {
        let path = format!(
            "{}/../rollout-watcher/tests/fixtures/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    /// The recorded service of `name` as `docker service inspect` prints it (a list).
    fn inspect_json(name: &str) -> Value {
        Value::Array(vec![fixture(name)["service"].clone()])
    }

    fn observed(inspect: &Value) -> Observed {
        let services = parse_services(&inspect.to_string()).unwrap();
        let mut replicas = BTreeMap::new();
        replicas.insert(services[0].name().to_owned(), "2/2".to_owned());
        Observed { services, replicas }
    }

    fn record(inspect: &Value) -> DeployRecord {
        let services = parse_services(&inspect.to_string()).unwrap();
        let plain: Vec<_> = services.into_iter().map(|s| s.service).collect();
        record_of("20261206T050000.000Z", "rw-fixture", &plain)
    }

    #[test]
    fn as_deployed_there_is_no_drift() {
        let inspect = inspect_json("update_completed");
        let status = report(
            "prod",
            "rw-fixture",
            &observed(&inspect),
            Some(&record(&inspect)),
        );
        assert!(!status.drifted(), "{status:?}");
        let s = &status.services[0];
        assert_eq!(s.name, "rw-fixture-roll");
        assert_eq!(s.image, "stackship-standin/debian:bookworm");
        assert_eq!(s.replicas, "2/2");
        assert_eq!(s.update.as_deref(), Some("completed"));
        assert_eq!(s.since.as_deref(), Some("2026-11-23T02:08:57Z"));
        let table = render(&status);
        assert!(
            table.contains("last deploy: 20261206T050000.000Z"),
            "{table}"
        );
        assert!(!table.contains("DRIFT"), "{table}");
        assert!(
            table.contains("  SERVICE          IMAGE            DIGEST        REPLICAS"),
            "{table}"
        );
    }

    #[test]
    fn an_older_record_of_the_image_with_its_digest_is_no_drift() {
        let inspect = inspect_json("update_completed");
        let mut rec = record(&inspect);
        for s in rec.services.values_mut() {
            s.spec = None;
            s.image = format!("{}@sha256:0123", s.image);
        }
        let status = report("prod", "rw-fixture", &observed(&inspect), Some(&rec));
        assert!(!status.drifted(), "{status:?}");
    }

    #[test]
    fn a_hand_made_env_add_is_drift_naming_the_variable() {
        let deployed = inspect_json("update_completed");
        let mut changed = deployed.clone();
        changed[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"]
            .as_array_mut()
            .unwrap()
            .push(Value::String("X=1".into()));
        let status = report(
            "prod",
            "rw-fixture",
            &observed(&changed),
            Some(&record(&deployed)),
        );
        assert!(status.drifted());
        assert_eq!(
            status.services[0].drift,
            vec!["TaskTemplate.ContainerSpec.Env: added X=1"]
        );
        let table = render(&status);
        assert!(table.contains("DRIFT"), "{table}");
        assert!(
            table.contains("drift: rw-fixture-roll: TaskTemplate.ContainerSpec.Env: added X=1"),
            "{table}"
        );
    }

    #[test]
    fn services_gone_or_unrecorded_are_drift() {
        let inspect = inspect_json("update_completed");
        let mut rec = record(&inspect);
        let entry = rec.services.values().next().unwrap().clone();
        rec.services.clear();
        rec.services.insert("worker".into(), entry);
        let status = report("prod", "rw-fixture", &observed(&inspect), Some(&rec));
        assert_eq!(status.missing, vec!["worker"]);
        assert_eq!(
            status.services[0].drift,
            vec!["not in the last deploy record (made by hand?)"]
        );
        assert!(render(&status).contains("drift: worker: in the last deploy record, not running"));
    }

    #[test]
    fn older_records_without_a_spec_compare_image_configs_and_secrets() {
        let inspect = inspect_json("update_completed");
        let mut rec = record(&inspect);
        for s in rec.services.values_mut() {
            s.spec = None;
        }
        let status = report("prod", "rw-fixture", &observed(&inspect), Some(&rec));
        assert!(!status.drifted(), "{status:?}");
        for s in rec.services.values_mut() {
            s.image = "other:1".into();
            s.configs = vec!["c1".into()];
        }
        let status = report("prod", "rw-fixture", &observed(&inspect), Some(&rec));
        assert_eq!(
            status.services[0].drift,
            vec![
                "image: other:1 → stackship-standin/debian:bookworm",
                "configs: c1 → "
            ]
        );
    }

    #[test]
    fn without_a_record_nothing_is_called_drift() {
        let inspect = inspect_json("update_completed");
        let status = report("dev", "rw-fixture", &observed(&inspect), None);
        assert!(!status.drifted());
        assert!(render(&status).contains("none recorded"));
    }

    #[test]
    fn gather_lists_then_inspects_the_stacks_services() {
        let fake = FakeEngine::new();
        fake.answer(
            &["service", "ls"],
            "{\"ID\":\"x\",\"Name\":\"rw-fixture-roll\",\"Replicas\":\"1/2\"}\n",
        );
        fake.answer(
            &["service", "inspect", "rw-fixture-roll"],
            &inspect_json("update_completed").to_string(),
        );
        let client = Client::new(&fake);
        let o = gather(&client, "rw-fixture").unwrap();
        assert_eq!(o.services.len(), 1);
        assert_eq!(o.replicas["rw-fixture-roll"], "1/2");
        assert_eq!(
            fake.command_lines(),
            vec![
                "docker service ls --filter label=com.docker.stack.namespace=rw-fixture --format {{json .}}",
                "docker service inspect rw-fixture-roll"
            ]
        );
        assert!(fake.writes().is_empty());
    }

    #[test]
    fn an_empty_stack_is_not_inspected() {
        let fake = FakeEngine::new();
        fake.answer(&["service", "ls"], "");
        let o = gather(&Client::new(&fake), "none").unwrap();
        assert!(o.services.is_empty());
        assert_eq!(fake.calls().len(), 1);
        let status = report("dev", "none", &o, None);
        assert!(render(&status).contains("no services running"));
    }

    #[test]
    fn unreadable_docker_output_is_an_error() {
        let fake = FakeEngine::new();
        fake.answer(&["service", "ls"], "not json\n");
        let e = gather(&Client::new(&fake), "s").unwrap_err().to_string();
        assert!(e.contains("cannot read `docker service ls` line"), "{e}");
    }

    #[test]
    fn digests_and_images_are_shortened_for_the_table() {
        assert_eq!(
            split_digest("r/x:1@sha256:abc"),
            ("r/x:1".to_owned(), Some("sha256:abc".to_owned()))
        );
        assert_eq!(
            short_digest(&Some("sha256:0123456789abcdef".into())),
            "0123456789ab"
        );
        assert_eq!(short_digest(&None), "-");
        assert_eq!(
            short_image("127.0.0.1:5000/stackship/backend:t"),
            "backend:t"
        );
    }
}
