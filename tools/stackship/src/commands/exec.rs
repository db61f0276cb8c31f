//! `stackship exec ENV SERVICE [--task SLOT] -- CMD [ARG...]`: runs a command in a running
//! task of the service on this node (`docker exec` on its container), on this terminal, and
//! exits with the command's status.
//!
//! `docker exec` reaches only this node's containers: when the service's tasks run elsewhere,
//! the refusal (exit 2) names the nodes where they do.

use std::io::{IsTerminal, Write};

use super::tasks;
use crate::docker::{Call, Client};
use crate::error::Error;
use crate::exit::Outcome;
use crate::layout::EnvDir;

/// What `stackship exec` is asked.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ExecArgs {
    /// dev, prod, ...
    pub env: String,
    /// The service (backend, or stackship-prod_backend).
    pub service: String,
    /// The task's slot (2 for backend.2; default: the lowest that runs on this node).
    #[arg(long, value_name = "SLOT")]
    pub task: Option<String>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// A container of the service running on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    pub container: String,
    pub slot: String,
    pub task: String,
}

/// The running containers of service `full` (`<stack>_<service>`) on this node, by slot.
pub fn local(client: &Client<'_>, full: &str) -> Result<Vec<Local>, Error> {
    let service_filter = format!("label=com.docker.swarm.service.name={full}");
    let lines = client.lines(&Call::read([
        "ps",
        "--filter",
        service_filter.as_str(),
        "--filter",
        "status=running",
        "--format",
        "{{.ID}} {{.Label \"com.docker.swarm.task.name\"}}",
    ]))?;
    let mut found: Vec<Local> = lines
        .iter()
        .filter_map(|line| {
            // `<id> <service>.<slot>.<task id>`
            let (container, task_name) = line.split_once(' ')?;
            let (slot, task) = task_name
                .strip_prefix(&format!("{full}."))?
                .split_once('.')?;
            Some(Local {
                container: container.to_owned(),
                slot: slot.to_owned(),
                task: task.to_owned(),
            })
        })
        .collect();
    found.sort_by(
        |a, b| match (a.slot.parse::<u64>(), b.slot.parse::<u64>()) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            _ => a.slot.cmp(&b.slot),
        },
    );
    Ok(found)
}

/// The container to run in: the task `slot` asked for, else the first.
pub fn choose<'a>(local: &'a [Local], slot: Option<&str>) -> Option<&'a Local> {
    match slot {
        Some(slot) => local.iter().find(|l| l.slot == slot),
        None => local.first(),
    }
}

/// Whether the command gets a terminal: only when ours are both terminals (see [`exec_call`]).
fn wants_tty(stdin_is_terminal: bool, stdout_is_terminal: bool) -> bool {
    stdin_is_terminal && stdout_is_terminal
}

/// `docker exec -i [-t] CONTAINER CMD...`: standard input always passed on, a terminal only
/// when ours are both terminals (with a pipe on either side, a terminal would mangle the
/// bytes).
pub fn exec_call(container: &str, tty: bool, command: &[String]) -> Call {
    let mut args = vec!["exec".to_owned(), "-i".to_owned()];
    if tty {
        args.push("-t".to_owned());
    }
    args.push(container.to_owned());
    args.extend(command.iter().cloned());
    Call::write(args)
}

/// Why no container here can do: the service runs no task, or not this one, or elsewhere.
fn refusal(
    client: &Client<'_>,
    dir: &EnvDir,
    service: &str,
    slot: Option<&str>,
) -> Result<Error, Error> {
    let stack = dir.stack();
    let running: Vec<tasks::Task> = tasks::tasks(client, &stack, &[service.to_owned()])?
        .into_iter()
        .filter(tasks::Task::running)
        .collect();
    if running.is_empty() {
        return Ok(Error::Refused(format!(
            "service {service} of {} ({stack}_{service}) has no running task",
            dir.env
        )));
    }
    let elsewhere = |tasks: &[&tasks::Task]| {
        tasks
            .iter()
            .map(|t| format!("{} on {}", t.name(), t.node))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let wanted: Vec<&tasks::Task> = running
        .iter()
        .filter(|t| slot.is_none_or(|s| t.slot == s))
        .collect();
    if wanted.is_empty() {
        return Ok(Error::Refused(format!(
            "service {service} of {} has no running task {service}.{}; its running tasks: {}",
            dir.env,
            slot.unwrap_or_default(),
            elsewhere(&running.iter().collect::<Vec<_>>())
        )));
    }
    let mut nodes: Vec<&str> = wanted.iter().map(|t| t.node.as_str()).collect();
    nodes.sort_unstable();
    nodes.dedup();
    let there = if nodes.len() == 1 {
        format!("it runs on node {}", nodes[0])
    } else {
        format!("they run on nodes {}", nodes.join(", "))
    };
    let env = &dir.env;
    Ok(Error::Refused(match slot {
        Some(s) => format!(
            "task {service}.{s} ({env}) does not run on this node: {there}; `docker exec` reaches only this node's containers, so the command must run there"
        ),
        None => format!(
            "no task of {service} ({env}) runs on this node: {there} ({}); `docker exec` reaches only this node's containers, so the command must run there",
            elsewhere(&wanted)
        ),
    }))
}

/// Runs `stackship exec`: which container to `progress`, then the command on this terminal;
/// its exit status is the outcome.
pub fn run(
    client: &Client<'_>,
    dir: &EnvDir,
    args: &ExecArgs,
    progress: &mut dyn Write,
) -> Result<Outcome, Error> {
    let services = tasks::services(client, dir)?;
    let service = tasks::pick(&services, &args.service, dir)?;
    let full = format!("{}_{service}", dir.stack());
    let here = local(client, &full)?;
    let Some(chosen) = choose(&here, args.task.as_deref()) else {
        return Err(refusal(client, dir, service, args.task.as_deref())?);
    };
    let tty = wants_tty(
        std::io::stdin().is_terminal(),
        std::io::stdout().is_terminal(),
    );
    let call = exec_call(&chosen.container, tty, &args.command);
    let _ = writeln!(
        progress,
        "[stackship] {service}.{} (task {}, container {}): {}",
        chosen.slot,
        chosen.task.chars().take(12).collect::<String>(),
        chosen.container,
        args.command.join(" ")
    );
    Ok(Outcome::Exited(client.run_attached(&call)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_terminal_only_when_both_ends_are_one() {
        assert!(wants_tty(true, true));
        assert!(!wants_tty(true, false));
        assert!(!wants_tty(false, true));
        assert!(!wants_tty(false, false));
    }
    use crate::commands::tasks::tests::{prod, ps_line};
    use crate::docker::fake::FakeEngine;

    fn args(task: Option<&str>, command: &[&str]) -> ExecArgs {
        ExecArgs {
            env: "prod".to_owned(),
            service: "backend".to_owned(),
            task: task.map(str::to_owned),
            command: command.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// backend with replicas 1 and 3 here, 2 on worker-2.
    fn stack(here: &str) -> FakeEngine {
        let fake = FakeEngine::new();
        fake.answer(
            &["service", "ls"],
            "stackship-prod_backend\nstackship-prod_frontend\n",
        );
        fake.answer(&["ps"], here);
        fake.answer(
            &["service", "ps"],
            &[
                ps_line(
                    "t1",
                    "stackship-prod_backend.1",
                    "r/backend:v2",
                    "manager-1",
                    "Running 1 hour ago",
                ),
                ps_line(
                    "t2",
                    "stackship-prod_backend.2",
                    "r/backend:v2",
                    "worker-2",
                    "Running 1 hour ago",
                ),
                ps_line(
                    "t0",
                    "stackship-prod_backend.2",
                    "r/backend:v1",
                    "worker-3",
                    "Shutdown 1 hour ago",
                ),
                ps_line(
                    "t3",
                    "stackship-prod_backend.3",
                    "r/backend:v2",
                    "worker-3",
                    "Running 1 hour ago",
                ),
            ]
            .join("\n"),
        );
        fake.answer_status(&["exec"], 0);
        fake
    }

    const HERE: &str = "c3c3 stackship-prod_backend.3.t3\nc1c1 stackship-prod_backend.1.t1\n";

    fn exec(fake: &FakeEngine, args: &ExecArgs) -> Result<Outcome, Error> {
        run(&Client::new(fake), &prod(), args, &mut Vec::new())
    }

    #[test]
    fn runs_in_the_lowest_slot_here_and_passes_the_status_through() {
        let fake = stack(HERE);
        let outcome = exec(&fake, &args(None, &["psql", "-c", "select 1"])).unwrap();
        assert_eq!(outcome, Outcome::Exited(0));
        let lines = fake.command_lines();
        assert_eq!(
            lines,
            vec![
                "docker service ls --filter label=com.docker.stack.namespace=stackship-prod --format {{.Name}}",
                "docker ps --filter label=com.docker.swarm.service.name=stackship-prod_backend --filter status=running --format {{.ID}} {{.Label \"com.docker.swarm.task.name\"}}",
                "docker exec -i c1c1 psql -c select 1",
            ]
        );
        assert_eq!(fake.writes(), vec!["docker exec -i c1c1 psql -c select 1"]);
        let failing = FakeEngine::new();
        failing.answer(&["service", "ls"], "stackship-prod_backend\n");
        failing.answer(&["ps"], HERE);
        failing.answer_status(&["exec"], 42);
        assert_eq!(
            exec(&failing, &args(None, &["false"])).unwrap(),
            Outcome::Exited(42)
        );
        assert_eq!(Outcome::Exited(42).code(), 42);
    }

    #[test]
    fn a_slot_asked_for_picks_its_container() {
        let fake = stack(HERE);
        let mut progress = Vec::new();
        run(
            &Client::new(&fake),
            &prod(),
            &args(Some("3"), &["sh"]),
            &mut progress,
        )
        .unwrap();
        assert_eq!(fake.writes(), vec!["docker exec -i c3c3 sh"]);
        assert_eq!(
            String::from_utf8(progress).unwrap(),
            "[stackship] backend.3 (task t3, container c3c3): sh\n"
        );
    }

    #[test]
    fn a_terminal_only_when_both_ends_are_terminals() {
        let cmd = vec!["sh".to_owned(), "-c".to_owned(), "echo $HOME".to_owned()];
        assert_eq!(
            exec_call("c1", true, &cmd).args,
            vec!["exec", "-i", "-t", "c1", "sh", "-c", "echo $HOME"]
        );
        assert_eq!(
            exec_call("c1", false, &cmd).args,
            vec!["exec", "-i", "c1", "sh", "-c", "echo $HOME"]
        );
    }

    #[test]
    fn no_task_here_is_refused_naming_the_nodes_where_they_run() {
        let fake = stack("");
        let e = exec(&fake, &args(None, &["sh"])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no task of backend (prod) runs on this node: they run on nodes manager-1, worker-2, worker-3 (backend.1 on manager-1, backend.2 on worker-2, backend.3 on worker-3); `docker exec` reaches only this node's containers, so the command must run there"
        );
        assert_eq!(e.outcome(), Outcome::NothingChanged);
        assert!(fake.writes().is_empty());
    }

    #[test]
    fn a_slot_elsewhere_or_not_running_is_refused() {
        let fake = stack(HERE);
        let e = exec(&fake, &args(Some("2"), &["sh"])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "task backend.2 (prod) does not run on this node: it runs on node worker-2; `docker exec` reaches only this node's containers, so the command must run there"
        );
        let e = exec(&fake, &args(Some("7"), &["sh"])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "service backend of prod has no running task backend.7; its running tasks: backend.1 on manager-1, backend.2 on worker-2, backend.3 on worker-3"
        );
        assert!(fake.writes().is_empty());
    }

    #[test]
    fn a_service_without_running_tasks_says_so() {
        let fake = FakeEngine::new();
        fake.answer(&["service", "ls"], "stackship-prod_backend\n");
        fake.answer(&["ps"], "");
        fake.answer(
            &["service", "ps"],
            &ps_line(
                "t0",
                "stackship-prod_backend.1",
                "r/backend:v1",
                "worker-3",
                "Failed 1 minute ago",
            ),
        );
        let e = exec(&fake, &args(None, &["sh"])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "service backend of prod (stackship-prod_backend) has no running task"
        );
        assert!(fake.writes().is_empty());
    }

    #[test]
    fn unknown_services_are_named_with_those_there_are() {
        let fake = stack(HERE);
        let mut a = args(None, &["sh"]);
        a.service = "db".to_owned();
        let e = exec(&fake, &a).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown service 'db' in prod (stackship-prod); its services: backend frontend"
        );
        assert_eq!(fake.calls().len(), 1);
    }

    #[test]
    fn containers_here_are_read_by_slot() {
        let fake = FakeEngine::new();
        fake.answer(
            &["ps"],
            "c10 stackship-prod_backend.10.t10\nc2 stackship-prod_backend.2.t2\nodd line\nc9 stackship-prod_backendx.1.t\n",
        );
        let found = local(&Client::new(&fake), "stackship-prod_backend").unwrap();
        let slots: Vec<&str> = found.iter().map(|l| l.slot.as_str()).collect();
        assert_eq!(slots, vec!["2", "10"]);
        assert_eq!(found[1].task, "t10");
        assert_eq!(choose(&found, Some("10")).unwrap().container, "c10");
        assert_eq!(choose(&found, None).unwrap().container, "c2");
        assert_eq!(choose(&found, Some("3")), None);
        assert_eq!(choose(&[], None), None);
    }
}
