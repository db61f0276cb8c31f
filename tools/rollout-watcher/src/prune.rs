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

/// Names kept: referenced by a current or previous spec, or by the last `keep` records.
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
    for record in records.iter().rev().take(keep) {
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
