//! Which of a stack's configs and secrets may go: those referenced by no service's current or
//! previous spec (what `docker service rollback` returns to) and by none of the last N deploy
//! records (what a manual rollback to an earlier deploy needs).

use std::collections::BTreeSet;

use crate::docker::ServiceInspect;
use crate::history::{DeployRecord, references};

/// A Docker config or secret of the stack.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Object {
    pub id: String,
    pub name: String,
}

/// What makes a record a release of its own: each service's image and configs. Secrets are
/// left out, so the records a password rotation adds do not count as releases.
fn release_of(record: &DeployRecord) -> Vec<(&str, &str, &[String])> {
    record
        .services
        .iter()
        .map(|(name, s)| (name.as_str(), s.image.as_str(), s.configs.as_slice()))
        .collect()
}

/// Names kept: referenced by a current or previous spec, or by the records of the last `keep`
/// distinct releases (a rotation's or a repeated release's records do not push an older
/// release out).
pub fn kept_names(
    services: &[ServiceInspect],
    records: &[DeployRecord],
    keep: usize,
) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut configs = BTreeSet::new();
    let mut secrets = BTreeSet::new();
    for service in services {
        let specs = [
            service.service.spec.as_ref(),
            service.previous_spec.as_ref(),
        ];
        for spec in specs.into_iter().flatten() {
            let (c, s) = references(spec.task_template.as_ref());
            configs.extend(c);
            secrets.extend(s);
        }
    }
    let mut releases = Vec::new();
    for record in records.iter().rev() {
        let release = release_of(record);
        if !releases.contains(&release) {
            if releases.len() == keep {
                break;
            }
            releases.push(release);
        }
        for service in record.services.values() {
            configs.extend(service.configs.iter().cloned());
            secrets.extend(service.secrets.iter().cloned());
        }
    }
    (configs, secrets)
}

/// The objects of `all` whose names are not in `kept`.
pub fn removable<'a>(all: &'a [Object], kept: &BTreeSet<String>) -> Vec<&'a Object> {
    all.iter().filter(|o| !kept.contains(&o.name)).collect()
}
