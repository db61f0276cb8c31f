//! What `stackship logs` and `stackship exec` both read about an environment: its services,
//! and their tasks as `docker service ps` lists them (slot, node, image, state).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::docker::{Call, Client};
use crate::error::Error;
use crate::layout::{EnvDir, PROJECT};

/// One task of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// The full task id.
    pub id: String,
    /// The service without the stack prefix.
    pub service: String,
    /// The replica number (a global service's task has its node's id instead).
    pub slot: String,
    /// The image it runs, with its digest.
    pub image: String,
    /// The node's host name.
    pub node: String,
    /// `Running`, `Shutdown`, ...
    pub desired: String,
    /// `Running 2 hours ago`, `Failed 3 minutes ago`, ...
    pub current: String,
}

impl Task {
    /// `backend.1`.
    pub fn name(&self) -> String {
        format!("{}.{}", self.service, self.slot)
    }

    /// Running now, and meant to.
    pub fn running(&self) -> bool {
        self.desired == "Running" && self.current.starts_with("Running")
    }
}

/// The version an image is: its tag (`20261206_0123abcd`), else its digest's first 12 hex
/// digits (`sha256:0123456789ab`), else `latest` (what Docker pulls for no tag).
pub fn version(image: &str) -> String {
    let (reference, digest) = match image.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (image, None),
    };
    let last = reference.rsplit('/').next().unwrap_or(reference);
    match (last.split_once(':'), digest) {
        (Some((_, tag)), _) => tag.to_owned(),
        (None, Some(d)) => {
            let (algorithm, hex) = d.split_once(':').unwrap_or(("", d));
            let hex: String = hex.chars().take(12).collect();
            if algorithm.is_empty() {
                hex
            } else {
                format!("{algorithm}:{hex}")
            }
        }
        (None, None) => "latest".to_owned(),
    }
}

/// The environment's services (without the stack prefix), sorted. None running: the
/// environment is unknown here, and the error names those that have services.
pub fn services(client: &Client<'_>, dir: &EnvDir) -> Result<Vec<String>, Error> {
    let stack = dir.stack();
    let filter = format!("label=com.docker.stack.namespace={stack}");
    let mut names: Vec<String> = client
        .lines(&Call::read([
            "service",
            "ls",
            "--filter",
            filter.as_str(),
            "--format",
            "{{.Name}}",
        ]))?
        .into_iter()
        .map(|n| match n.strip_prefix(&format!("{stack}_")) {
            Some(short) => short.to_owned(),
            None => n,
        })
        .collect();
    names.sort();
    if !names.is_empty() {
        return Ok(names);
    }
    // Which environments there are: the stacks that run (a failure to ask says nothing more).
    let others: Vec<String> = client
        .lines(&Call::read(["stack", "ls", "--format", "{{.Name}}"]))
        .unwrap_or_default()
        .iter()
        .filter_map(|s| s.strip_prefix(&format!("{PROJECT}-")))
        .map(str::to_owned)
        .collect();
    Err(Error::Refused(format!(
        "unknown environment '{}': no service runs in stack {stack}; {}",
        dir.env,
        if others.is_empty() {
            "no environment runs here".to_owned()
        } else {
            format!("environments running here: {}", others.join(" "))
        }
    )))
}

/// `wanted` among `services`, as `backend` or `stackship-prod_backend`; otherwise an error
/// naming those there are.
pub fn pick<'a>(services: &'a [String], wanted: &str, dir: &EnvDir) -> Result<&'a str, Error> {
    let stack = dir.stack();
    let short = wanted.strip_prefix(&format!("{stack}_")).unwrap_or(wanted);
    services
        .iter()
        .find(|s| s.as_str() == short)
        .map(String::as_str)
        .ok_or_else(|| {
            Error::Refused(format!(
                "unknown service '{wanted}' in {} ({stack}); its services: {}",
                dir.env,
                services.join(" ")
            ))
        })
}

/// A task as `docker inspect --type task` shows it: what it runs, and its addresses.
#[derive(Debug, Deserialize)]
struct Inspected {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "NetworksAttachments", default)]
    networks: Vec<Attachment>,
}

#[derive(Debug, Deserialize)]
struct Attachment {
    /// `10.0.1.5/24`.
    #[serde(rename = "Addresses", default)]
    addresses: Vec<String>,
}

/// The tasks `ids` by their addresses (on every network they are attached to, without the
/// prefix length): how the proxy's access log names the task that answered. Tasks without an
/// address (not started yet) are left out.
pub fn tasks_by_address(
    client: &Client<'_>,
    ids: &[String],
) -> Result<BTreeMap<String, String>, Error> {
    if ids.is_empty() {
        return Ok(BTreeMap::new());
    }
    let mut args = vec!["inspect", "--type", "task"];
    args.extend(ids.iter().map(String::as_str));
    let text = client.run(&Call::read(args))?;
    let tasks: Vec<Inspected> = serde_json::from_str(&text)
        .map_err(|e| Error::Refused(format!("docker inspect of tasks: unexpected JSON: {e}")))?;
    let mut out = BTreeMap::new();
    for task in tasks {
        for address in task.networks.iter().flat_map(|a| &a.addresses) {
            let ip = address.split('/').next().unwrap_or(address);
            out.insert(ip.to_owned(), task.id.clone());
        }
    }
    Ok(out)
}

/// A line of `docker service ps --format '{{json .}}'`.
#[derive(Debug, Deserialize)]
struct Listed {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "Image", default)]
    image: String,
    #[serde(rename = "Node", default)]
    node: String,
    #[serde(rename = "DesiredState", default)]
    desired: String,
    #[serde(rename = "CurrentState", default)]
    current: String,
}

/// Every task Swarm keeps of `services` (of `stack`, named without its prefix): those running
/// and the history (`--no-trunc`: whole ids, images with their digests).
pub fn tasks(client: &Client<'_>, stack: &str, services: &[String]) -> Result<Vec<Task>, Error> {
    if services.is_empty() {
        return Ok(Vec::new());
    }
    let mut args: Vec<String> = ["service", "ps", "--no-trunc", "--format", "{{json .}}"]
        .map(str::to_owned)
        .into();
    args.extend(services.iter().map(|s| format!("{stack}_{s}")));
    let mut tasks = Vec::new();
    for line in client.lines(&Call::read(args))? {
        let l: Listed = serde_json::from_str(&line).map_err(|e| {
            Error::Refused(format!(
                "cannot read `docker service ps` line {line:?}: {e}"
            ))
        })?;
        // `stackship-prod_backend.1` (a table indents history as ` \_ name`; JSON should not).
        let name = l.name.trim_start_matches([' ', '\\', '_']);
        // The longest service whose name begins the task's: a service name may hold a dot.
        let Some((service, slot)) = services
            .iter()
            .filter_map(|s| {
                name.strip_prefix(&format!("{stack}_{s}."))
                    .map(|slot| (s, slot))
            })
            .max_by_key(|(s, _)| s.len())
        else {
            continue;
        };
        tasks.push(Task {
            id: l.id,
            service: service.clone(),
            slot: slot.to_owned(),
            image: l.image,
            node: l.node,
            desired: l.desired,
            current: l.current,
        });
    }
    Ok(tasks)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::docker::fake::FakeEngine;
    use std::path::Path;

    pub(crate) fn prod() -> EnvDir {
        EnvDir::new(Path::new("/r"), "prod")
    }

    #[test]
    fn running_is_running_now_and_meant_to() {
        let task = |desired: &str, current: &str| Task {
            id: "t".into(),
            service: "backend".into(),
            slot: "1".into(),
            image: "i".into(),
            node: "n".into(),
            desired: desired.into(),
            current: current.into(),
        };
        assert!(task("Running", "Running 2 hours ago").running());
        // Being stopped, or not started yet: not running.
        assert!(!task("Shutdown", "Running 2 hours ago").running());
        assert!(!task("Running", "Preparing 3 seconds ago").running());
    }

    /// A `docker service ps --format '{{json .}}'` line.
    pub(crate) fn ps_line(id: &str, name: &str, image: &str, node: &str, state: &str) -> String {
        let desired = if state.starts_with("Running") {
            "Running"
        } else {
            "Shutdown"
        };
        serde_json::json!({
            "CurrentState": state,
            "DesiredState": desired,
            "Error": "",
            "ID": id,
            "Image": image,
            "Name": name,
            "Node": node,
            "Ports": ""
        })
        .to_string()
    }

    #[test]
    fn tasks_are_found_by_any_of_their_addresses() {
        let fake = FakeEngine::new();
        let task = |id: &str, nets: &[&str]| {
            serde_json::json!({
                "ID": id,
                "Spec": {"ContainerSpec": {"Image": "r/backend:v2"}},
                "NetworksAttachments": nets.iter().map(|a| serde_json::json!({
                    "Network": {"Spec": {"Name": "n"}}, "Addresses": [a]
                })).collect::<Vec<_>>()
            })
        };
        let answer = serde_json::json!([
            task("a", &["10.0.1.5/24", "10.0.2.5/24"]),
            task("b", &["10.0.1.6/24"]),
            // Not started: no attachment yet.
            {"ID": "c", "Spec": {"ContainerSpec": {"Image": "r/backend:v2"}}},
        ]);
        fake.answer(&["inspect"], &answer.to_string());
        let ids = ["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let by = tasks_by_address(&Client::new(&fake), &ids).unwrap();
        assert_eq!(
            by,
            [
                ("10.0.1.5".to_owned(), "a".to_owned()),
                ("10.0.1.6".to_owned(), "b".to_owned()),
                ("10.0.2.5".to_owned(), "a".to_owned()),
            ]
            .into()
        );
        assert_eq!(
            fake.command_lines(),
            vec!["docker inspect --type task a b c"]
        );
        // No tasks: Docker is not asked.
        let fake = FakeEngine::new();
        assert!(
            tasks_by_address(&Client::new(&fake), &[])
                .unwrap()
                .is_empty()
        );
        assert!(fake.calls().is_empty());
        // Not what Docker says tasks are: an error saying so.
        let fake = FakeEngine::new();
        fake.answer(&["inspect"], "{}");
        let e = tasks_by_address(&Client::new(&fake), &ids)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("docker inspect of tasks: unexpected JSON"),
            "{e}"
        );
    }

    #[test]
    fn versions_are_tags_else_short_digests() {
        assert_eq!(
            version("127.0.0.1:5000/stackship/backend:20261206_0123abcd@sha256:81505a2e39c25b56"),
            "20261206_0123abcd"
        );
        assert_eq!(
            version("127.0.0.1:5000/stackship/backend:20261206_afd577a7-mn"),
            "20261206_afd577a7-mn"
        );
        // A registry port is no tag.
        assert_eq!(
            version("127.0.0.1:5000/stackship/backend@sha256:0123456789abcdef"),
            "sha256:0123456789ab"
        );
        assert_eq!(version("127.0.0.1:5000/stackship/backend"), "latest");
        assert_eq!(version("nginx"), "latest");
    }

    #[test]
    fn services_without_the_stack_prefix_sorted() {
        let fake = FakeEngine::new();
        fake.answer(
            &["service", "ls"],
            "stackship-prod_frontend\nstackship-prod_backend\n",
        );
        let names = services(&Client::new(&fake), &prod()).unwrap();
        assert_eq!(names, vec!["backend", "frontend"]);
        assert_eq!(
            fake.command_lines(),
            vec![
                "docker service ls --filter label=com.docker.stack.namespace=stackship-prod --format {{.Name}}"
            ]
        );
        assert_eq!(pick(&names, "frontend", &prod()).unwrap(), "frontend");
        assert_eq!(
            pick(&names, "stackship-prod_backend", &prod()).unwrap(),
            "backend"
        );
        let e = pick(&names, "worker", &prod()).unwrap_err().to_string();
        assert_eq!(
            e,
            "unknown service 'worker' in prod (stackship-prod); its services: backend frontend"
        );
    }

    #[test]
    fn an_environment_without_services_is_unknown_naming_those_that_run() {
        let fake = FakeEngine::new();
        fake.answer(&["service", "ls"], "");
        fake.answer(
            &["stack", "ls"],
            "stackship-dev\nstackship-prod\nother-stack\n",
        );
        let e = services(
            &Client::new(&fake),
            &EnvDir::new(Path::new("/r"), "staging"),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown environment 'staging': no service runs in stack stackship-staging; environments running here: dev prod"
        );
        assert_eq!(e.outcome(), crate::Outcome::NothingChanged);
        let none = FakeEngine::new();
        none.answer(&["service", "ls"], "");
        let e = services(&Client::new(&none), &prod()).unwrap_err();
        assert!(e.to_string().ends_with("; no environment runs here"), "{e}");
    }

    #[test]
    fn tasks_of_several_services_in_one_call() {
        let fake = FakeEngine::new();
        fake.answer(
            &["service", "ps"],
            &[
                ps_line(
                    "t1",
                    "stackship-prod_backend.1",
                    "r/backend:b@sha256:1",
                    "n1",
                    "Running 2 hours ago",
                ),
                ps_line(
                    "t0",
                    "stackship-prod_backend.1",
                    "r/backend:a@sha256:0",
                    "n2",
                    "Shutdown 2 hours ago",
                ),
                ps_line(
                    "t9",
                    "stackship-prod_backend.api.x9",
                    "r/api:c",
                    "n1",
                    "Running 1 hour ago",
                ),
                ps_line("u", "unrelated.1", "r/u:1", "n1", "Running"),
            ]
            .join("\n"),
        );
        let services = vec!["backend".to_owned(), "backend.api".to_owned()];
        let t = tasks(&Client::new(&fake), "stackship-prod", &services).unwrap();
        assert_eq!(
            fake.command_lines(),
            vec![
                "docker service ps --no-trunc --format {{json .}} stackship-prod_backend stackship-prod_backend.api"
            ]
        );
        assert_eq!(t.len(), 3);
        assert_eq!(t[0].name(), "backend.1");
        assert!(t[0].running());
        assert_eq!(t[1].node, "n2");
        assert!(!t[1].running());
        assert_eq!(
            (t[2].service.as_str(), t[2].slot.as_str()),
            ("backend.api", "x9")
        );
        assert!(
            tasks(&Client::new(&fake), "stackship-prod", &[])
                .unwrap()
                .is_empty()
        );
        assert_eq!(fake.calls().len(), 1);
        let broken = FakeEngine::new();
        broken.answer(&["service", "ps"], "not json\n");
        let e = tasks(&Client::new(&broken), "s", &services).unwrap_err();
        assert!(
            e.to_string()
                .contains("cannot read `docker service ps` line"),
            "{e}"
        );
    }
}
