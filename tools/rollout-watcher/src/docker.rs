//! Talking to the Docker engine through the docker CLI's JSON output (the Engine API's own
//! JSON), parsed into bollard's typed models.
//!
//! The CLI is what a Swarm manager always has, it honours the user's `DOCKER_HOST` and
//! contexts, and its `service inspect` carries `PreviousSpec` (what `docker service rollback`
//! returns to, which the prune must keep) where bollard's client model does not.

use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use bollard::models::{HealthConfig, Service, ServiceSpec, Task, TaskSpec};
use serde::Deserialize;
use serde_json::Value;

/// A service as `docker service inspect` prints it.
#[derive(Debug, Clone, Deserialize)]
pub struct ServiceInspect {
    #[serde(flatten)]
    pub service: Service,
    #[serde(rename = "PreviousSpec", default)]
    pub previous_spec: Option<ServiceSpec>,
}

impl ServiceInspect {
    /// The service's full name (`<stack>_<service>`).
    pub fn name(&self) -> &str {
        self.service
            .spec
            .as_ref()
            .and_then(|s| s.name.as_deref())
            .unwrap_or("")
    }
}

/// bollard's model names the container healthcheck `HealthCheck`; Docker prints
/// `Healthcheck`. Put it back from the raw JSON so budgets and spec comparisons see it.
fn fix_healthcheck(raw_task_spec: Option<&Value>, spec: Option<&mut TaskSpec>) {
    let (Some(raw), Some(spec)) = (raw_task_spec, spec) else {
        return;
    };
    let health = raw
        .pointer("/ContainerSpec/Healthcheck")
        .and_then(|h| serde_json::from_value::<HealthConfig>(h.clone()).ok());
    if let (Some(health), Some(container)) = (health, spec.container_spec.as_mut()) {
        container.health_check = Some(health);
    }
}

/// Parses `docker service inspect` output.
pub fn parse_services(text: &str) -> anyhow::Result<Vec<ServiceInspect>> {
    let raw: Vec<Value> =
        serde_json::from_str(text).context("cannot parse `docker service inspect` output")?;
    raw.into_iter()
        .map(|v| {
            let mut s: ServiceInspect = serde_json::from_value(v.clone())
                .context("cannot parse `docker service inspect` output")?;
            fix_healthcheck(
                v.pointer("/Spec/TaskTemplate"),
                s.service
                    .spec
                    .as_mut()
                    .and_then(|s| s.task_template.as_mut()),
            );
            fix_healthcheck(
                v.pointer("/PreviousSpec/TaskTemplate"),
                s.previous_spec
                    .as_mut()
                    .and_then(|s| s.task_template.as_mut()),
            );
            Ok(s)
        })
        .collect()
}

/// Parses `docker inspect --type task` output.
pub fn parse_tasks(text: &str) -> anyhow::Result<Vec<Task>> {
    let raw: Vec<Value> =
        serde_json::from_str(text).context("cannot parse `docker inspect` task output")?;
    raw.into_iter()
        .map(|v| {
            let mut t: Task = serde_json::from_value(v.clone())
                .context("cannot parse `docker inspect` task output")?;
            fix_healthcheck(v.get("Spec"), t.spec.as_mut());
            Ok(t)
        })
        .collect()
}

/// Runs `docker ARGS` and returns its stdout; a failure names the command and its stderr.
pub fn docker(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run the docker CLI (is it installed?)")?;
    if !output.status.success() {
        bail!(
            "docker {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    String::from_utf8(output.stdout).context("docker printed non-UTF-8 output")
}

/// Lines of non-empty output.
fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The stack's services, sorted by name.
pub fn stack_services(stack: &str) -> anyhow::Result<Vec<ServiceInspect>> {
    let filter = format!("label=com.docker.stack.namespace={stack}");
    let ids = lines(&docker(&["service", "ls", "-q", "--filter", &filter])?);
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut args = vec!["service", "inspect"];
    args.extend(ids.iter().map(String::as_str));
    let text = docker(&args)?;
    let mut services = parse_services(&text)?;
    services.sort_by(|a, b| a.name().cmp(b.name()));
    Ok(services)
}

/// Every task Swarm still knows of the service (current and history).
pub fn service_tasks(service: &str) -> anyhow::Result<Vec<Task>> {
    // A task pruned between listing and inspecting makes `docker inspect` fail: retry once.
    match try_service_tasks(service) {
        Ok(tasks) => Ok(tasks),
        Err(_) => try_service_tasks(service),
    }
}

fn try_service_tasks(service: &str) -> anyhow::Result<Vec<Task>> {
    let ids = lines(&docker(&["service", "ps", "-q", "--no-trunc", service])?);
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut args = vec!["inspect", "--type", "task"];
    args.extend(ids.iter().map(String::as_str));
    parse_tasks(&docker(&args)?)
}

/// The last `lines` lines a task logged (stdout and stderr), or why there are none.
pub fn task_log_tail(task_id: &str, lines: usize) -> String {
    let tail = lines.to_string();
    let output = Command::new("docker")
        .args([
            "service",
            "logs",
            "--raw",
            "--no-trunc",
            "--tail",
            &tail,
            task_id,
        ])
        .stdin(Stdio::null())
        .output();
    match output {
        Ok(o) if o.status.success() => {
            let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&o.stderr));
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Ok(o) => format!("(no logs: {})", String::from_utf8_lossy(&o.stderr).trim()),
        Err(e) => format!("(no logs: {e})"),
    }
}

/// The last healthcheck output of a container on this node (e.g. why `/health` said 503),
/// or None when the container is not here or has no healthcheck.
pub fn container_health_output(container_id: &str) -> Option<String> {
    let text = docker(&[
        "inspect",
        "--type",
        "container",
        "--format",
        "{{json .State.Health}}",
        container_id,
    ])
    .ok()?;
    let health: Value = serde_json::from_str(text.trim()).ok()?;
    let last = health.get("Log")?.as_array()?.last()?;
    let output = last.get("Output")?.as_str()?.trim();
    (!output.is_empty()).then(|| {
        format!(
            "{} (exit {})",
            output,
            last.get("ExitCode").and_then(Value::as_i64).unwrap_or(-1)
        )
    })
}

/// A config or secret listed by `docker {config,secret} ls --format '{{json .}}'`.
#[derive(Debug, Deserialize)]
struct Listed {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "Name")]
    name: String,
}

/// The stack's configs or secrets (`kind` is `config` or `secret`).
pub fn stack_objects(kind: &str, stack: &str) -> anyhow::Result<Vec<crate::prune::Object>> {
    let filter = format!("label=com.docker.stack.namespace={stack}");
    let text = docker(&[kind, "ls", "--filter", &filter, "--format", "{{json .}}"])?;
    lines(&text)
        .iter()
        .map(|l| {
            let o: Listed = serde_json::from_str(l)
                .with_context(|| format!("cannot parse `docker {kind} ls` line {l:?}"))?;
            Ok(crate::prune::Object {
                id: o.id,
                name: o.name,
            })
        })
        .collect()
}
