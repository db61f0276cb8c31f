//! The node labels the stack files place services by, decided over plain node data:
//! the proxy runs on a node labelled `stackship.edge=true`, an environment's Postgres on the
//! one node labelled `stackship.postgres.<env>=true`. A single-node swarm gets the labels
//! (there is nothing to choose); on several nodes the operator chooses, and the deploy stops
//! before anything changes. Swarms labelled before the label named the environment
//! (`stackship.postgres=true`) keep their database node.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The label of the node(s) whose ports 80/443 the internet reaches.
pub const EDGE_LABEL: &str = "stackship.edge";
/// The label of the database node before it named the environment.
pub const LEGACY_DB_LABEL: &str = "stackship.postgres";

/// The database label of an environment.
pub fn db_label(env: &str) -> String {
    format!("{LEGACY_DB_LABEL}.{env}")
}

/// One node, as `docker node inspect` prints it (the fields the decision needs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: String,
    pub hostname: String,
    /// `ready`, `down`, ...
    pub state: String,
    /// `active`, `pause`, `drain`.
    pub availability: String,
    pub labels: BTreeMap<String, String>,
}

impl Node {
    fn has(&self, label: &str) -> bool {
        self.labels.get(label).is_some_and(|v| v == "true")
    }

    fn usable(&self) -> bool {
        self.state == "ready" && self.availability == "active"
    }

    fn describe(&self) -> String {
        format!("{}: {}, {}", self.hostname, self.state, self.availability)
    }
}

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "Description", default)]
    description: RawDescription,
    #[serde(rename = "Status", default)]
    status: RawStatus,
    #[serde(rename = "Spec", default)]
    spec: RawSpec,
}

#[derive(Deserialize, Default)]
struct RawDescription {
    #[serde(rename = "Hostname", default)]
    hostname: String,
}

#[derive(Deserialize, Default)]
struct RawStatus {
    #[serde(rename = "State", default)]
    state: String,
}

#[derive(Deserialize, Default)]
struct RawSpec {
    #[serde(rename = "Availability", default)]
    availability: String,
    #[serde(rename = "Labels", default)]
    labels: Option<BTreeMap<String, String>>,
}

/// Parses `docker node inspect` output.
pub fn parse_nodes(text: &str) -> Result<Vec<Node>, String> {
    let raw: Vec<Raw> = serde_json::from_str(text)
        .map_err(|e| format!("cannot read `docker node inspect` output: {e}"))?;
    Ok(raw
        .into_iter()
        .map(|r| Node {
            id: r.id,
            hostname: r.description.hostname,
            state: r.status.state,
            availability: r.spec.availability,
            labels: r.spec.labels.unwrap_or_default(),
        })
        .collect())
}

/// A label the deploy sets, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddLabel {
    pub node: String,
    pub hostname: String,
    pub label: String,
    pub why: &'static str,
}

/// What the deploy does about placement: labels to set, and the database node (None for a
/// stack without a database on a labelled node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub add: Vec<AddLabel>,
    pub db_node: Option<String>,
    /// Worth saying, but no reason to stop.
    pub warnings: Vec<String>,
}

/// Decides placement for a deploy of `env` from the swarm's `nodes` (`self_id` is this
/// manager). `database`: the stack has a Postgres on a labelled node (not a review stack).
/// `has_login`: the deploy passes registry credentials to the services.
pub fn decide(
    nodes: &[Node],
    self_id: &str,
    env: &str,
    database: bool,
    has_login: bool,
) -> Result<Plan, String> {
    let me = nodes
        .iter()
        .find(|n| n.id == self_id)
        .ok_or_else(|| format!("this node ({self_id}) is not in the swarm's node list"))?;
    let single = nodes.len() == 1;
    let mut plan = Plan {
        add: Vec::new(),
        db_node: None,
        warnings: Vec::new(),
    };
    let edge: Vec<&Node> = nodes.iter().filter(|n| n.has(EDGE_LABEL)).collect();
    if edge.is_empty() {
        if !single {
            return Err(format!(
                "no node has the label {EDGE_LABEL}=true: choose the node(s) whose ports 80/443 the internet reaches (docker node update --label-add {EDGE_LABEL}=true NODE)"
            ));
        }
        plan.add.push(AddLabel {
            node: me.id.clone(),
            hostname: me.hostname.clone(),
            label: EDGE_LABEL.to_owned(),
            why: "the proxy runs there; the swarm has one node",
        });
    } else if !edge.iter().any(|n| n.usable()) {
        let states: Vec<String> = edge.iter().map(|n| n.describe()).collect();
        return Err(format!(
            "no node labelled {EDGE_LABEL}=true is ready and active ({}): the proxy could not run",
            states.join("; ")
        ));
    }
    if !single && !has_login {
        plan.warnings.push(format!(
            "no registry credentials given on a swarm of {} nodes: the services keep this engine's login, and a task moved to another node later pulls with it or not at all (use a deploy token: REGISTRY_USER / REGISTRY_PASSWORD)",
            nodes.len()
        ));
    }
    if !database {
        return Ok(plan);
    }
    let label = db_label(env);
    let labelled: Vec<&Node> = nodes.iter().filter(|n| n.has(&label)).collect();
    let db = match labelled.as_slice() {
        [one] => *one,
        [] => {
            let legacy: Vec<&Node> = nodes.iter().filter(|n| n.has(LEGACY_DB_LABEL)).collect();
            let (node, why) = match legacy.as_slice() {
                [one] => (*one, "it has the older label stackship.postgres=true"),
                _ if single => (me, "the database runs there; the swarm has one node"),
                _ => {
                    return Err(format!(
                        "no node has the label {label}=true: choose the node that keeps {env}'s database (docker node update --label-add {label}=true NODE)"
                    ));
                }
            };
            plan.add.push(AddLabel {
                node: node.id.clone(),
                hostname: node.hostname.clone(),
                label: label.clone(),
                why,
            });
            node
        }
        _ => {
            return Err(format!(
                "more than one node has the label {label}=true: one Postgres data directory lives on one node"
            ));
        }
    };
    if !db.usable() {
        return Err(format!(
            "{env}'s database node (label {label}) is not ready and active ({}): Postgres could not run there; bring the node back (moving the label starts an EMPTY database: restore a backup there)",
            db.describe()
        ));
    }
    plan.db_node = Some(db.id.clone());
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, labels: &[&str]) -> Node {
        Node {
            id: id.into(),
            hostname: format!("host-{id}"),
            state: "ready".into(),
            availability: "active".into(),
            labels: labels
                .iter()
                .map(|l| ((*l).to_owned(), "true".to_owned()))
                .collect(),
        }
    }

    #[test]
    fn a_single_node_gets_every_label() {
        let plan = decide(&[node("m", &[])], "m", "prod", true, false).unwrap();
        let labels: Vec<&str> = plan.add.iter().map(|a| a.label.as_str()).collect();
        assert_eq!(labels, vec!["stackship.edge", "stackship.postgres.prod"]);
        assert_eq!(plan.db_node.as_deref(), Some("m"));
        assert!(plan.warnings.is_empty());
    }

    #[test]
    fn labelled_swarms_need_nothing() {
        let nodes = [
            node("m", &["stackship.edge"]),
            node("w", &["stackship.postgres.prod"]),
        ];
        let plan = decide(&nodes, "m", "prod", true, true).unwrap();
        assert!(plan.add.is_empty());
        assert_eq!(plan.db_node.as_deref(), Some("w"));
    }

    #[test]
    fn several_nodes_without_labels_are_refused_with_the_command() {
        let nodes = [node("m", &[]), node("w", &[])];
        let e = decide(&nodes, "m", "prod", true, true).unwrap_err();
        assert!(
            e.contains("no node has the label stackship.edge=true"),
            "{e}"
        );
        assert!(
            e.contains("docker node update --label-add stackship.edge=true NODE"),
            "{e}"
        );
        let nodes = [node("m", &["stackship.edge"]), node("w", &[])];
        let e = decide(&nodes, "m", "dev", true, true).unwrap_err();
        assert!(
            e.contains("no node has the label stackship.postgres.dev=true"),
            "{e}"
        );
    }

    #[test]
    fn the_older_database_label_keeps_its_node() {
        let nodes = [
            node("m", &["stackship.edge"]),
            node("w", &["stackship.postgres"]),
        ];
        let plan = decide(&nodes, "m", "prod", true, true).unwrap();
        assert_eq!(plan.add.len(), 1);
        assert_eq!(plan.add[0].node, "w");
        assert_eq!(plan.add[0].label, "stackship.postgres.prod");
        assert_eq!(plan.db_node.as_deref(), Some("w"));
    }

    #[test]
    fn unusable_edge_or_database_nodes_are_refused() {
        let mut edge = node("m", &["stackship.edge", "stackship.postgres.prod"]);
        edge.availability = "drain".into();
        let e = decide(&[edge, node("w", &[])], "m", "prod", true, true).unwrap_err();
        assert!(
            e.contains(
                "no node labelled stackship.edge=true is ready and active (host-m: ready, drain)"
            ),
            "{e}"
        );
        let mut db = node("w", &["stackship.postgres.prod"]);
        db.state = "down".into();
        let e = decide(
            &[node("m", &["stackship.edge"]), db],
            "m",
            "prod",
            true,
            true,
        )
        .unwrap_err();
        assert!(e.contains("prod's database node (label stackship.postgres.prod) is not ready and active (host-w: down, active)"), "{e}");
    }

    #[test]
    fn two_database_nodes_are_refused() {
        let nodes = [
            node("m", &["stackship.edge", "stackship.postgres.prod"]),
            node("w", &["stackship.postgres.prod"]),
        ];
        let e = decide(&nodes, "m", "prod", true, true).unwrap_err();
        assert!(
            e.contains("more than one node has the label stackship.postgres.prod=true"),
            "{e}"
        );
    }

    #[test]
    fn stacks_without_a_database_skip_its_label_and_several_nodes_want_a_login() {
        let nodes = [node("m", &["stackship.edge"]), node("w", &[])];
        let plan = decide(&nodes, "m", "dev", false, false).unwrap();
        assert_eq!(plan.db_node, None);
        assert!(plan.add.is_empty());
        assert_eq!(plan.warnings.len(), 1);
        assert!(plan.warnings[0].contains("no registry credentials given on a swarm of 2 nodes"));
    }

    #[test]
    fn a_manager_missing_from_the_list_is_an_error() {
        assert!(decide(&[node("w", &[])], "m", "prod", true, true).is_err());
    }

    #[test]
    fn node_inspect_output_is_parsed() {
        let text = r#"[{"ID":"abc","Spec":{"Labels":{"stackship.edge":"true"},"Role":"manager","Availability":"active"},"Description":{"Hostname":"m1"},"Status":{"State":"ready","Addr":"1.2.3.4"}},
                       {"ID":"def","Spec":{"Availability":"drain"},"Description":{"Hostname":"w1"},"Status":{"State":"down"}}]"#;
        let nodes = parse_nodes(text).unwrap();
        assert_eq!(nodes[0].id, "abc");
        assert_eq!(nodes[0].hostname, "m1");
        assert!(nodes[0].has("stackship.edge") && nodes[0].usable());
        assert!(nodes[1].labels.is_empty() && !nodes[1].usable());
        assert_eq!(nodes[1].describe(), "w1: down, drain");
        assert!(
            parse_nodes("nope")
                .unwrap_err()
                .contains("docker node inspect")
        );
    }
}
