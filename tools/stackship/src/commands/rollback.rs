//! `stackship rollback ENV [--to ID] [--list] [--dry-run]`: the environment back to an earlier
//! deploy — the images (by digest) and the content-named configs its record names — deployed
//! like any release, so a rollback that does not settle fails loudly and one that does is
//! recorded.
//!
//! How: under the environment's lock, the installed release is copied beside `current/`, each
//! config's recorded content is written back into its file (read from the swarm: the prune keeps
//! the configs of the last deploys), config-hasher must then give exactly the recorded names, and
//! that copy is deployed with the recorded images as settings (`<SERVICE>_TAG=tag@sha256:...` for
//! an image `<repository>:${<SERVICE>_TAG}`, `<X>_IMAGE=repo:tag@sha256:...` for a whole-image
//! variable). Everything is read through the one stack-file model ([`crate::stack`]) and
//! config-hasher, so any YAML the deploy accepts, the rollback reads the same way.
//!
//! Not rolled back: secrets (a rotated password or a renewed certificate stays), the database,
//! services added since (they keep their image and configs), and `current/` itself.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use config_hasher::{ContentName, Options as HashOptions, hash_compose_file};
use rollout_watcher::history::DeployRecord;

use crate::commands::deploy::{self, Rollout, progress_line};
use crate::docker::{Call, Client};
use crate::error::Error;
use crate::exit::Outcome;
use crate::lock::DeployLock;
use crate::stack::{ImageSource, StackFile};

/// What a rollback deploys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The record returned to.
    pub target: String,
    /// Image settings for the deploy (`BACKEND_TAG` → `tag@sha256:...`).
    pub sets: BTreeMap<String, String>,
    /// Configs whose recorded content goes back into files of the release: name → files.
    pub configs: BTreeMap<String, Vec<PathBuf>>,
    /// What config-hasher must then name each variable.
    pub expects: BTreeMap<String, String>,
    pub warnings: Vec<String>,
}

/// Each service's image and sorted configs: what tells two deploys apart.
fn state(r: &DeployRecord) -> BTreeMap<&str, (&str, Vec<&str>)> {
    r.services
        .iter()
        .map(|(name, s)| {
            let mut configs: Vec<&str> = s.configs.iter().map(String::as_str).collect();
            configs.sort_unstable();
            (name.as_str(), (s.image.as_str(), configs))
        })
        .collect()
}

/// The note a rollback's record carries.
pub fn rollback_note(target: &str) -> String {
    format!("{ROLLED_BACK_TO}{target}")
}

const ROLLED_BACK_TO: &str = "rolled back to deploy ";

/// The deploy a record's rollback returned to, if it was one.
pub fn rolled_back_to(record: &DeployRecord) -> Option<&str> {
    record.note.as_deref()?.strip_prefix(ROLLED_BACK_TO)
}

/// What ran, in order, with every release a rollback rolled away from left out, and the ids
/// of those left. A rollback to X drops everything after X and stands in X's place (so a second
/// rollback goes below X, and a rollback to X again finds it there). A rollback to a record
/// that is not in the line (pruned, deleted, or one a rollback left, chosen with `--to`) drops
/// every entry newer than X, an entry being as old as the oldest release it stands for: ids are
/// UTC timestamps, so they sort as the deploys ran.
fn lineage(records: &[DeployRecord]) -> (Vec<&DeployRecord>, BTreeSet<&str>) {
    // Each entry with the ids it stands for: its own, and those of the records it replaced.
    let mut line: Vec<(&DeployRecord, BTreeSet<&str>)> = Vec::new();
    let mut left = BTreeSet::new();
    for r in records {
        let mut stands_for: BTreeSet<&str> = [r.id.as_str()].into();
        if let Some(to) = rolled_back_to(r) {
            if let Some(at) = line.iter().position(|(_, ids)| ids.contains(to)) {
                left.extend(line.drain(at + 1..).map(|(l, _)| l.id.as_str()));
                if let Some((_, ids)) = line.pop() {
                    stands_for.extend(ids);
                }
            } else {
                // An entry is as old as the oldest release it stands for.
                let keep = line
                    .iter()
                    .take_while(|(_, ids)| ids.first().is_some_and(|oldest| *oldest <= to))
                    .count();
                left.extend(line.drain(keep..).map(|(l, _)| l.id.as_str()));
                stands_for.insert(to);
            }
        }
        line.push((r, stands_for));
    }
    (line.into_iter().map(|(r, _)| r).collect(), left)
}

/// The newest deploy before the last one that ran something else, among those no rollback
/// rolled away from. After a rollback to X, the search starts below X: a second rollback goes
/// further back, not to the release the first one left — nor to one an earlier rollback left.
pub fn default_target(records: &[DeployRecord]) -> Option<&DeployRecord> {
    target_in(&lineage(records).0)
}

/// In a [`lineage`], the newest entry before the last that runs something else.
fn target_in<'a>(line: &[&'a DeployRecord]) -> Option<&'a DeployRecord> {
    let (last, earlier) = line.split_last()?;
    let now = state(last);
    earlier.iter().rev().find(|r| state(r) != now).copied()
}

/// The pins file's text with each `KEY=value` of `sets` in place (replaced or added).
pub fn pinned(text: &str, sets: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut done = BTreeSet::new();
    for line in text.lines() {
        let key = line.split_once('=').map(|(k, _)| k.trim());
        match key.and_then(|k| sets.get_key_value(k)) {
            Some((k, v)) if !line.trim_start().starts_with('#') => {
                if done.insert(k.clone()) {
                    out.push_str(&format!("{k}={v}\n"));
                }
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    for (k, v) in sets {
        if !done.contains(k) {
            out.push_str(&format!("{k}={v}\n"));
        }
    }
    out
}

/// What a rollback did not bring back: per service of `target`, how the spec that `now` (the
/// rollback's own record) shows differs from the one `target` recorded — settings of today's
/// stack file (environment, healthcheck, limits, replicas...) that the rollback kept, as it
/// restores images and configs only (secrets stay as they are: not counted here). Services without a recorded spec (older
/// records) are skipped; a service `now` lacks is named.
pub fn unrestored(target: &DeployRecord, now: &DeployRecord) -> Vec<String> {
    let mut out = Vec::new();
    for (service, then) in &target.services {
        let Some(then_spec) = &then.spec else {
            continue;
        };
        match now.services.get(service).and_then(|s| s.spec.as_ref()) {
            None if !now.services.contains_key(service) => {
                out.push(format!("{service}: not in the stack any more"));
            }
            None => {}
            Some(now_spec) => {
                // The image label is the compose file's text: the rollback pins by digest what
                // the target deployed by tag (the image itself is compared).
                let diffs: Vec<String> = crate::drift::differences(then_spec, now_spec)
                    .into_iter()
                    .filter(|d| {
                        !d.starts_with("Labels.com.docker.stack.image:")
                            // Secrets are not rolled back (a rotated password or a renewed
                            // certificate stays): not a stack-file change.
                            && !d.starts_with("TaskTemplate.ContainerSpec.Secrets:")
                    })
                    .collect();
                if !diffs.is_empty() {
                    let shown: Vec<&str> = diffs.iter().take(3).map(String::as_str).collect();
                    let more = diffs.len().saturating_sub(shown.len());
                    out.push(format!(
                        "{service}: {}{}",
                        shown.join("; "),
                        if more > 0 {
                            format!(" (and {more} more)")
                        } else {
                            String::new()
                        }
                    ));
                }
            }
        }
    }
    out
}

/// The configs a record names that no longer exist in the swarm.
pub fn pruned(record: &DeployRecord, existing: &BTreeSet<String>) -> Vec<String> {
    let names: BTreeSet<&String> = record.services.values().flat_map(|s| &s.configs).collect();
    names
        .into_iter()
        .filter(|c| !existing.contains(*c))
        .cloned()
        .collect()
}

/// `repo/name:tag@sha256:...` as `name:tag`.
fn short(image: &str) -> &str {
    let reference = image.split('@').next().unwrap_or(image);
    reference.rsplit('/').next().unwrap_or(reference)
}

/// The records, newest first, with the last deploy, the default target and the records that
/// cannot be restored marked.
pub fn list(records: &[DeployRecord], existing: &BTreeSet<String>) -> String {
    let (line, left) = lineage(records);
    let default = target_in(&line).map(|r| r.id.as_str());
    let last = records.last().map(|r| r.id.as_str());
    let mut out = String::new();
    for r in records.iter().rev() {
        let mut mark = String::new();
        if Some(r.id.as_str()) == last {
            mark.push_str(" (last deploy)");
        } else {
            if Some(r.id.as_str()) == default {
                mark.push_str(" (default rollback target)");
            }
            if left.contains(r.id.as_str()) {
                mark.push_str(" (a rollback left it)");
            }
            if !pruned(r, existing).is_empty() {
                mark.push_str(" (configs pruned: cannot be restored)");
            }
        }
        let images: Vec<String> = r
            .services
            .iter()
            .map(|(s, v)| format!("{s}={}", short(&v.image)))
            .collect();
        let configs: BTreeSet<&String> = r.services.values().flat_map(|s| &s.configs).collect();
        let configs: Vec<&str> = configs.into_iter().map(String::as_str).collect();
        out.push_str(&format!(
            "{}{mark}\n    images: {}\n    configs: {}\n",
            r.id,
            images.join(" "),
            if configs.is_empty() {
                "-".to_owned()
            } else {
                configs.join(" ")
            }
        ));
    }
    out
}

/// What [`plan`] reads.
pub struct Inputs<'a> {
    /// The deploy records, oldest first.
    pub records: &'a [DeployRecord],
    /// The installed release's stack file.
    pub stack: &'a StackFile,
    /// config-hasher's names for the installed release.
    pub names: &'a [ContentName],
    /// The configs that exist in the swarm.
    pub existing: &'a BTreeSet<String>,
    /// The environment's registry (`${REGISTRY}` in image names), when the stack uses one.
    pub registry: Option<&'a str>,
    /// `--to`: a record id or a unique prefix of one.
    pub want: Option<&'a str>,
}

/// `repository:tag[@digest]` split at the tag (a registry port is not a tag).
fn split_image(image: &str) -> Option<(&str, &str)> {
    let (reference, digest) = match image.split_once('@') {
        Some((r, _)) => (r, &image[r.len()..]),
        None => (image, ""),
    };
    let colon = reference.rfind(':')?;
    if reference[colon..].contains('/') {
        return None;
    }
    let _ = digest;
    Some((&image[..colon], &image[colon + 1..]))
}

/// Chooses the record and works out how to deploy it again.
pub fn plan(i: &Inputs<'_>) -> Result<Plan, String> {
    let Some(last) = i.records.last() else {
        return Err("no deploy records: nothing to roll back to".to_owned());
    };
    let target = match i.want {
        Some(want) => {
            let exact: Vec<&DeployRecord> = i.records.iter().filter(|r| r.id == want).collect();
            let matches = if exact.is_empty() {
                i.records
                    .iter()
                    .filter(|r| r.id.starts_with(want))
                    .collect()
            } else {
                exact
            };
            match matches.as_slice() {
                [one] => *one,
                [] => return Err(format!("deploy '{want}': no such record (see --list)")),
                many => {
                    return Err(format!(
                        "deploy '{want}': ambiguous, {} records match (see --list)",
                        many.len()
                    ));
                }
            }
        }
        None => default_target(i.records).ok_or_else(|| {
            format!(
                "no earlier deploy differs from the last one ({}) but those a rollback left: nothing to roll back to by default (name one with --to; see --list)",
                last.id
            )
        })?,
    };
    let missing = pruned(target, i.existing);
    if !missing.is_empty() {
        let now = state(last);
        let usable: Vec<&str> = i.records[..i.records.len() - 1]
            .iter()
            .rev()
            .filter(|r| pruned(r, i.existing).is_empty() && state(r) != now)
            .take(3)
            .map(|r| r.id.as_str())
            .collect();
        return Err(format!(
            "deploy {} cannot be restored: its configs {} were pruned (the prune keeps those of the last PRUNE_KEEP deploys); {}",
            target.id,
            missing.join(" "),
            if usable.is_empty() {
                "no earlier deploy can be".to_owned()
            } else {
                format!("deploys that can: {}", usable.join(" "))
            }
        ));
    }
    let mut plan = Plan {
        target: target.id.clone(),
        ..Plan::default()
    };
    for service in &i.stack.services {
        let Some(recorded) = target.services.get(&service.name) else {
            plan.warnings.push(format!(
                "service {} was not part of deploy {}: it keeps its current image and configs",
                service.name, target.id
            ));
            continue;
        };
        let image = recorded.image.as_str();
        match &service.image {
            ImageSource::Tagged {
                repository,
                tag_var,
            } => {
                let Some((repo, tag)) = split_image(image) else {
                    return Err(format!(
                        "deploy {}: the image of {}, '{image}', has no tag",
                        target.id, service.name
                    ));
                };
                if let Some(suffix) = repository.strip_prefix("${REGISTRY}") {
                    // The registry the record ran it from; the environment's, if it names one.
                    let Some(from) = repo.strip_suffix(suffix) else {
                        return Err(format!(
                            "deploy {} ran {} as {repo}, which is not <registry>{suffix}",
                            target.id, service.name
                        ));
                    };
                    match i.registry.or(plan.sets.get("REGISTRY").map(String::as_str)) {
                        Some(registry) if registry != from => {
                            return Err(format!(
                                "deploy {} ran {} from {repo}, not from this environment's {registry}{suffix}",
                                target.id, service.name
                            ));
                        }
                        Some(_) => {}
                        // No REGISTRY setting on the manager (the pipeline sends it): the record's.
                        None => {
                            plan.sets.insert("REGISTRY".to_owned(), from.to_owned());
                        }
                    }
                } else if repo != repository {
                    return Err(format!(
                        "deploy {} ran {} from {repo}, not from {repository}",
                        target.id, service.name
                    ));
                }
                plan.sets.insert(tag_var.clone(), tag.to_owned());
            }
            ImageSource::Whole { var } => {
                plan.sets.insert(var.clone(), image.to_owned());
            }
            ImageSource::Literal(written) => plan.warnings.push(format!(
                "service {} names a fixed image ({written}): not rolled back",
                service.name
            )),
        }
    }
    for name in target.services.keys() {
        if !i.stack.has(name) {
            plan.warnings.push(format!(
                "service {name} of deploy {} is not in the current stack file: not restored",
                target.id
            ));
        }
    }
    // Each content-named config of the release matches the recorded one with the same prefix
    // (names are <prefix>_<hash>).
    let recorded: BTreeMap<&str, &str> = target
        .services
        .values()
        .flat_map(|s| &s.configs)
        .map(|c| {
            (
                c.rsplit_once('_').map_or(c.as_str(), |(p, _)| p),
                c.as_str(),
            )
        })
        .collect();
    for n in i.names {
        let only_configs = !n.sources.is_empty()
            && n.sources
                .iter()
                .all(|s| s.entry.kind == config_hasher::Kind::Config);
        if !only_configs {
            continue;
        }
        let prefix = n.name.rsplit_once('_').map_or(n.name.as_str(), |(p, _)| p);
        let Some(old) = recorded.get(prefix) else {
            plan.warnings.push(format!(
                "config {} was not part of deploy {}: it keeps its current content",
                n.variable, target.id
            ));
            continue;
        };
        if *old != n.name {
            plan.configs.insert(
                (*old).to_owned(),
                n.sources.iter().map(|s| s.file.clone()).collect(),
            );
        }
        plan.expects.insert(n.variable.clone(), (*old).to_owned());
    }
    Ok(plan)
}

/// `file` (a path in `release`, as config-hasher gives it) in the copy `work`.
pub fn in_copy(file: &Path, release: &Path, work: &Path) -> Result<PathBuf, String> {
    let relative = file.strip_prefix(release).map_err(|_| {
        format!(
            "{} is not inside the release {}",
            file.display(),
            release.display()
        )
    })?;
    if relative
        .components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(format!("unexpected config path {}", file.display()));
    }
    Ok(work.join(relative))
}

/// Copies the release tree `from` into `to` (files with their modes, directories; symbolic
/// links as links).
pub fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(entry.path())?, &target)?;
        } else {
            fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// A working copy that is removed when dropped (an error, a refusal, the end).
pub struct WorkCopy(pub PathBuf);

impl Drop for WorkCopy {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// What `stackship rollback` was asked.
#[derive(Debug, Clone)]
pub struct Request {
    /// The environment directory (`<root>/<env>`).
    pub env_dir: PathBuf,
    pub env: String,
    /// `--to`.
    pub want: Option<String>,
    pub dry_run: bool,
    /// The process environment (the registry login, settings).
    pub process_env: BTreeMap<String, String>,
    /// Who takes the lock.
    pub owner: String,
    /// Asked to stop (Ctrl-C): see [`deploy::Request::stop`].
    pub stop: fn() -> bool,
    /// Where environments keep Postgres's data ([`deploy::DATA_ROOT`]).
    pub data_root: PathBuf,
}

fn refused<T>(message: impl Into<String>) -> Result<T, Error> {
    Err(Error::Refused(message.into()))
}

/// The configs in the swarm.
pub fn existing_configs(client: &Client<'_>) -> Result<BTreeSet<String>, Error> {
    let out = client.run(&Call::read(["config", "ls", "--format", "{{.Name}}"]))?;
    Ok(out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

/// A config's content, as the swarm keeps it.
fn config_data(client: &Client<'_>, name: &str) -> Result<Vec<u8>, Error> {
    use base64::Engine;
    let out = client
        .run(&Call::read(["config", "inspect", name, "--format", "{{json .Spec.Data}}"]))
        .map_err(|e| {
            Error::Refused(format!(
                "config {name} cannot be read ({e}); if it was pruned (PRUNE_KEEP deploys keep theirs), this deploy cannot be restored"
            ))
        })?;
    let encoded: String = serde_json::from_str(out.trim())
        .map_err(|e| Error::Refused(format!("config {name}: unexpected data from docker ({e})")))?;
    base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|e| Error::Refused(format!("config {name}: its data is not base64 ({e})")))
}

/// The records of `--list`, newest first.
pub fn listing(client: &Client<'_>, env_dir: &Path) -> Result<String, Error> {
    let records = rollout_watcher::history::read_all(&env_dir.join("history"))
        .map_err(|e| Error::Records(format!("{e:#}")))?;
    if records.is_empty() {
        return refused(format!(
            "no deploy records in {}: nothing to roll back to",
            env_dir.join("history").display()
        ));
    }
    Ok(list(&records, &existing_configs(client)?))
}

/// The rollback: lock, plan, the working copy with the recorded configs, the deploy. Returns
/// the deploy's outcome (Done also for a dry run) and its summary.
pub fn rollback(
    client: &Client<'_>,
    rollout: &dyn Rollout,
    request: &Request,
    progress: &mut dyn std::io::Write,
) -> Result<(Outcome, String), Error> {
    let mut say = |m: &str| progress_line(progress, m);
    let current = request.env_dir.join("current");
    let base = deploy::Request {
        allow_older: true,
        ..deploy::Request::of_installed(
            &request.env_dir,
            &request.env,
            request.process_env.clone(),
            &request.owner,
            &request.data_root,
            request.stop,
        )
    };
    let compose = base.compose();
    if !compose.is_file() {
        return refused(format!(
            "no {} release in {} (run the copy step for {} first)",
            request.env,
            current.display(),
            request.env
        ));
    }
    // The settings of the installed release may not load on their own (the pipeline sends the
    // tags and the registry with each deploy): they only say how long to wait for the lock here,
    // and the rollback's own image settings complete them for its deploy.
    let lock_wait = deploy::read_settings(&base)
        .map(|(_, s)| s.lock_wait.value)
        .unwrap_or(crate::settings::Defaults::LOCK_WAIT);
    let _lock = DeployLock::acquire(
        &request.env_dir,
        &format!("{} deploy", request.env),
        &request.owner,
        lock_wait,
        &mut say,
    )?;
    // Everything else is read under the lock: a deploy that held it may have changed it all.
    let stack = StackFile::read(&compose)?;
    let registry = deploy::read_settings(&base)
        .ok()
        .and_then(|(_, s)| s.registry.map(|r| r.value));
    let records = rollout_watcher::history::read_all(&request.env_dir.join("history"))
        .map_err(|e| Error::Records(format!("{e:#}")))?;
    let existing = existing_configs(client)?;
    let report = hash_compose_file(&compose, &HashOptions::default()).map_err(|e| {
        Error::Refused(format!("config-hasher rejected {}: {e}", compose.display()))
    })?;
    let registry = registry.as_deref();
    let plan = plan(&Inputs {
        records: &records,
        stack: &stack,
        names: &report.names,
        existing: &existing,
        registry,
        want: request.want.as_deref(),
    })
    .map_err(Error::Refused)?;
    let stack_name = base.stack();
    say(&format!(
        "rolling {stack_name} back to deploy {}",
        plan.target
    ));
    for w in &plan.warnings {
        say(&format!("WARNING: {w}"));
    }
    for (var, value) in &plan.sets {
        say(&format!("image: {var}={value}"));
    }
    // A copy beside current/: the deploy finds the environment directory (settings, lock,
    // records) as its parent, and relative paths (../secrets) still resolve.
    let work = request
        .env_dir
        .join(format!(".rollback.{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    let guard = WorkCopy(work.clone());
    copy_tree(&current, &work).map_err(Error::io(format!(
        "cannot copy {} to {}",
        current.display(),
        work.display()
    )))?;
    for (name, files) in &plan.configs {
        let data = config_data(client, name)?;
        for file in files {
            let target = in_copy(file, &current, &work).map_err(Error::Refused)?;
            fs::write(&target, &data)
                .map_err(Error::io(format!("cannot write {}", target.display())))?;
            say(&format!(
                "config: {} <- {name}",
                target.strip_prefix(&work).unwrap_or(&target).display()
            ));
        }
    }
    let copy_compose = work.join(compose.file_name().unwrap_or_default());
    let again = hash_compose_file(&copy_compose, &HashOptions::default())
        .map_err(|e| Error::Refused(format!("config-hasher rejected the restored copy: {e}")))?;
    for (var, want) in &plan.expects {
        let got = again.get(var).unwrap_or("nothing");
        if got != want {
            return refused(format!(
                "the restored configs do not give deploy {}'s names: {var} is {got}, not {want}",
                plan.target
            ));
        }
    }
    if request.dry_run {
        let sets: Vec<String> = plan.sets.iter().map(|(k, v)| format!("{k}={v}")).collect();
        say(&format!(
            "dry run: the configs are restored and named as recorded; would run stackship deploy {} with {} and the configs {}",
            request.env,
            sets.join(" "),
            plan.expects.values().cloned().collect::<Vec<_>>().join(" ")
        ));
        return Ok((Outcome::Done, String::new()));
    }
    // The rollback's record names the commit it returned to.
    let target = records.iter().find(|r| r.id == plan.target);
    let mut env = request.process_env.clone();
    for key in [
        "CI_COMMIT_SHA",
        "COMMIT_ANCESTORS",
        "CI_PIPELINE_URL",
        "ALLOW_OLDER",
        "IMAGE_TAG",
    ] {
        env.remove(key);
    }
    if let Some(commit) = target.and_then(|t| t.commit.clone()) {
        env.insert("CI_COMMIT_SHA".into(), commit);
        let ancestors = target.map(|t| t.ancestors.join(" ")).unwrap_or_default();
        env.insert("COMMIT_ANCESTORS".into(), ancestors);
    }
    if let Some(p) = target.and_then(|t| t.pipeline.clone()) {
        env.insert("CI_PIPELINE_URL".into(), p);
    }
    env.extend(plan.sets.iter().map(|(k, v)| (k.clone(), v.clone())));
    let copy = deploy::Request {
        release: work.clone(),
        process_env: env,
        note: Some(rollback_note(&plan.target)),
        ..base
    };
    let mut say = |m: &str| progress_line(progress, m);
    say(&format!("stackship deploy {} (rollback)", request.env));
    let result = deploy::deploy(client, rollout, &copy, progress);
    let mut say = |m: &str| progress_line(progress, m);
    match result {
        Ok(w) if w.outcome == Outcome::Done => {
            say(&format!(
                "{stack_name} rolled back to deploy {}",
                plan.target
            ));
            // current/ becomes what runs: the copy, its images pinned as recorded, so the next
            // plain deploy does not silently re-apply what was just rolled back.
            let pins = deploy::pins_in(&work, &request.env);
            let text = fs::read_to_string(&pins).unwrap_or_default();
            let installed = fs::write(&pins, pinned(&text, &plan.sets))
                .map_err(Error::io(format!("cannot write {}", pins.display())))
                .and_then(|()| crate::release::swap(&request.env_dir, &work, &_lock));
            match installed {
                Ok(current) => say(&format!(
                    "{} is now the rolled-back release (its images pinned by digest in {})",
                    current.display(),
                    pins.strip_prefix(&work).unwrap_or(&pins).display()
                )),
                Err(e) => say(&format!(
                    "WARNING: the rollback runs, but current/ still holds the newer release ({e}): the next plain deploy would re-apply it"
                )),
            }
            drop(guard);
            // The rollback's own record (the newest, with its note) against the target's.
            let records = rollout_watcher::history::read_all(&request.env_dir.join("history"));
            let note = rollback_note(&plan.target);
            if let Some(now) = records.as_ref().ok().and_then(|all| {
                all.last()
                    .filter(|r| r.note.as_deref() == Some(note.as_str()))
            }) && let Some(then) = target
            {
                let differ = unrestored(then, now);
                if !differ.is_empty() {
                    say(&format!(
                        "WARNING: the stack file changed since deploy {}: these settings are today's, not that deploy's (a rollback restores images and configs; to undo a stack-file change, deploy a release without it):",
                        plan.target
                    ));
                    for line in differ {
                        say(&format!("  {line}"));
                    }
                }
            }
            Ok((Outcome::Done, w.summary))
        }
        Ok(w) => {
            say(&format!(
                "the rollback of {stack_name} FAILED: {} (see above; report: {})",
                w.outcome.meaning(),
                request.env_dir.join("last-rollout.json").display()
            ));
            Ok((w.outcome, w.summary))
        }
        Err(e) => {
            say(&format!("the rollback of {stack_name} FAILED: {e}"));
            Err(Error::Deploy(Box::new(e)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use config_hasher::{EntryId, Kind, Source};
    use rollout_watcher::history::ServiceRecord;

    const D: &str = "@sha256:1111111111111111111111111111111111111111111111111111111111111111";

    #[test]
    fn what_a_rollback_did_not_restore_is_named_per_service() {
        let spec = |env: &[&str], replicas: u64| {
            serde_json::json!({
                "TaskTemplate": {"ContainerSpec": {"Image": "b", "Env": env}},
                "Mode": {"Replicated": {"Replicas": replicas}}
            })
        };
        let with_specs = |id: &str, specs: &[(&str, Option<serde_json::Value>)]| DeployRecord {
            id: id.into(),
            services: specs
                .iter()
                .map(|(name, spec)| {
                    (
                        (*name).to_owned(),
                        ServiceRecord {
                            spec: spec.clone(),
                            ..Default::default()
                        },
                    )
                })
                .collect(),
            ..Default::default()
        };
        let then = with_specs(
            "a",
            &[
                ("backend", Some(spec(&["A=1"], 2))),
                ("frontend", Some(spec(&[], 1))),
                ("old", Some(spec(&[], 1))),
                ("unknown", None),
            ],
        );
        // The same specs: nothing to say (a service added since is not the target's business;
        // the stack's image label is the compose text, pinned by digest in a rollback).
        let labelled = |image: &str| {
            let mut v = spec(&[], 1);
            v["Labels"] = serde_json::json!({"com.docker.stack.image": image});
            v
        };
        assert!(
            unrestored(
                &with_specs("x", &[("frontend", Some(labelled("f:1")))]),
                &with_specs("y", &[("frontend", Some(labelled(&format!("f:1{D}"))))])
            )
            .is_empty()
        );
        // Nor secrets, which a rollback keeps (a renewed certificate, a rotated password).
        let with_secret = |name: &str| {
            let mut v = spec(&[], 1);
            v["TaskTemplate"]["ContainerSpec"]["Secrets"] =
                serde_json::json!([{"SecretName": name, "SecretID": name}]);
            v
        };
        assert!(
            unrestored(
                &with_specs(
                    "x",
                    &[("nginx-proxy", Some(with_secret("prod_tls_cert_aaa")))]
                ),
                &with_specs(
                    "y",
                    &[("nginx-proxy", Some(with_secret("prod_tls_cert_bbb")))]
                )
            )
            .is_empty()
        );
        let same = with_specs(
            "b",
            &[
                ("backend", Some(spec(&["A=1"], 2))),
                ("frontend", Some(spec(&[], 1))),
                ("old", Some(spec(&[], 1))),
                ("new", Some(spec(&[], 1))),
            ],
        );
        assert!(unrestored(&then, &same).is_empty());
        let changed = with_specs(
            "c",
            &[
                ("backend", Some(spec(&["A=1", "B=2"], 3))),
                ("frontend", None),
                ("unknown", Some(spec(&[], 1))),
            ],
        );
        assert_eq!(
            unrestored(&then, &changed),
            vec![
                "backend: Mode.Replicated.Replicas: 2 → 3; TaskTemplate.ContainerSpec.Env: added B=2",
                "old: not in the stack any more",
            ]
        );
        // More than three differences: the first three, and how many more.
        let many = |n: u64| {
            let mut v = spec(&[], 1);
            for i in 0..n {
                v[format!("K{i}")] = serde_json::json!(i + 1);
            }
            v
        };
        let then = with_specs("d", &[("backend", Some(many(0)))]);
        let now = with_specs("e", &[("backend", Some(many(5)))]);
        assert_eq!(
            unrestored(&then, &now),
            vec!["backend: K0: added 1; K1: added 2; K2: added 3 (and 2 more)"]
        );
    }

    fn record(id: &str, tag: &str, config: &str) -> DeployRecord {
        DeployRecord {
            id: id.into(),
            stack: "stackship-prod".into(),
            services: [
                (
                    "backend".to_owned(),
                    ServiceRecord {
                        image: format!("127.0.0.1:5000/stackship/backend:{tag}{D}"),
                        configs: vec![config.into()],
                        ..Default::default()
                    },
                ),
                (
                    "postgres".to_owned(),
                    ServiceRecord {
                        image: format!("postgres:15{D}"),
                        ..Default::default()
                    },
                ),
            ]
            .into(),
            ..Default::default()
        }
    }

    fn stack(yaml: &str) -> StackFile {
        StackFile::parse(yaml, Path::new("docker-compose.prod.yaml")).unwrap()
    }

    const STACK: &str = "services:\n  backend:\n    image: ${REGISTRY}/stackship/backend:${BACKEND_TAG}\n  postgres:\n    image: ${POSTGRES_IMAGE}\n";

    fn name(variable: &str, name: &str, file: &str, kind: Kind) -> ContentName {
        ContentName {
            variable: variable.into(),
            name: name.into(),
            sha256: String::new(),
            size: 0,
            sources: vec![Source {
                entry: EntryId {
                    kind,
                    key: "x".into(),
                },
                file: PathBuf::from(file),
            }],
        }
    }

    fn existing(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    fn records() -> Vec<DeployRecord> {
        vec![
            record("1", "a", "prod_backend_config_aaa"),
            record("2", "b", "prod_backend_config_bbb"),
            record("3", "b", "prod_backend_config_bbb"),
        ]
    }

    #[test]
    fn the_default_target_is_the_newest_deploy_that_ran_something_else() {
        let r = records();
        assert_eq!(default_target(&r).unwrap().id, "1");
        assert_eq!(default_target(&r[..1]), None);
        assert_eq!(default_target(&[]), None);
        // A different config alone makes a deploy different.
        let r = vec![
            record("1", "a", "prod_backend_config_aaa"),
            record("2", "a", "prod_backend_config_bbb"),
        ];
        assert_eq!(default_target(&r).unwrap().id, "1");
    }

    #[test]
    fn after_a_rollback_the_default_target_goes_further_back() {
        let mut back = record("4", "a", "prod_backend_config_aaa");
        back.note = Some(rollback_note("2"));
        let r = vec![
            record("1", "z", "prod_backend_config_zzz"),
            record("2", "a", "prod_backend_config_aaa"),
            record("3", "b", "prod_backend_config_bbb"),
            back,
        ];
        assert_eq!(rolled_back_to(&r[3]), Some("2"));
        assert_eq!(rolled_back_to(&r[2]), None);
        // Not 3 (the release the rollback left): below 2, the newest that differs.
        assert_eq!(default_target(&r).unwrap().id, "1");
        // A rollback to a record no longer there (pruned, deleted) still left what came after
        // that record: 3 is not a target; 1, older, is.
        let mut r2 = r.clone();
        r2.remove(1);
        assert_eq!(default_target(&r2).unwrap().id, "1");
        r2.remove(0);
        assert_eq!(default_target(&r2), None);
    }

    #[test]
    fn a_release_an_earlier_rollback_left_is_never_the_default_target() {
        let rollback = |id: &str, tag: &str, config: &str, to: &str| {
            let mut r = record(id, tag, config);
            r.note = Some(rollback_note(to));
            r
        };
        // 2 (b) was rolled back to 1 (a); then c was deployed and rolled back to 3's a.
        let mut r = vec![
            record("1", "a", "prod_backend_config_aaa"),
            record("2", "b", "prod_backend_config_bbb"),
            rollback("3", "a", "prod_backend_config_aaa", "1"),
            record("4", "c", "prod_backend_config_ccc"),
        ];
        // From c, back to what ran before it: 3 (a), not 2 (b).
        assert_eq!(default_target(&r).unwrap().id, "3");
        r.push(rollback("5", "a", "prod_backend_config_aaa", "3"));
        // Below 3 only 1 is left, and it runs the same: nothing to go back to. Not 2.
        assert_eq!(default_target(&r), None);
        // A later release makes the rolled-back-to state a target again.
        r.push(record("6", "d", "prod_backend_config_ddd"));
        assert_eq!(default_target(&r).unwrap().id, "5");
        let listed = list(
            &r,
            &existing(&["prod_backend_config_aaa", "prod_backend_config_bbb"]),
        );
        assert!(listed.contains("\n2 (a rollback left it)"), "{listed}");
        assert!(
            listed.contains("\n4 (a rollback left it) (configs pruned"),
            "{listed}"
        );
        assert!(
            listed.contains("\n5 (default rollback target)\n"),
            "{listed}"
        );
        assert!(listed.contains("\n1\n"), "{listed}");
        // A rollback chosen with --to to a release a rollback left (2) leaves what ran after
        // it: 6 too. Below 2 only a is still standing, where 5 (for 1 and 3) stands.
        r.push(rollback("7", "b", "prod_backend_config_bbb", "2"));
        assert_eq!(default_target(&r).unwrap().id, "5");
        let listed = list(&r, &existing(&["prod_backend_config_aaa"]));
        assert!(listed.contains("\n6 (a rollback left it)"), "{listed}");
    }

    #[test]
    fn a_rollback_to_a_release_already_rolled_back_to_finds_it_in_the_line() {
        let rollback = |id: &str, tag: &str, config: &str, to: &str| {
            let mut r = record(id, tag, config);
            r.note = Some(rollback_note(to));
            r
        };
        // 3 rolled back to 1 (a), c was deployed, then `--to 1` again: 5 stands where 3 (and
        // 1) stood, c is left, and nothing older differs from a.
        let r = vec![
            record("1", "a", "prod_backend_config_aaa"),
            record("2", "b", "prod_backend_config_bbb"),
            rollback("3", "a", "prod_backend_config_aaa", "1"),
            record("4", "c", "prod_backend_config_ccc"),
            rollback("5", "a", "prod_backend_config_aaa", "1"),
        ];
        assert_eq!(default_target(&r), None);
        let listed = list(&r, &existing(&["prod_backend_config_ccc"]));
        assert!(listed.contains("\n4 (a rollback left it)"), "{listed}");
        assert!(listed.contains("\n2 (a rollback left it)"), "{listed}");
    }

    #[test]
    fn pins_are_replaced_in_place_and_added_when_missing() {
        let sets: BTreeMap<String, String> = [
            ("BACKEND_TAG".to_owned(), format!("a{D}")),
            ("POSTGRES_IMAGE".to_owned(), format!("pg:15{D}")),
        ]
        .into();
        let text = "# pins\nBACKEND_TAG=b\nFRONTEND_TAG=f\n# BACKEND_TAG=old\nBACKEND_TAG=dup\n";
        assert_eq!(
            pinned(text, &sets),
            format!(
                "# pins\nBACKEND_TAG=a{D}\nFRONTEND_TAG=f\n# BACKEND_TAG=old\nPOSTGRES_IMAGE=pg:15{D}\n"
            )
        );
        assert_eq!(pinned("", &BTreeMap::new()), "");
    }

    #[test]
    fn a_plan_sets_each_image_and_writes_back_each_config() {
        let r = records();
        let s = stack(STACK);
        let names = [
            name(
                "PROD_BACKEND_CONFIG",
                "prod_backend_config_bbb",
                "/rel/backend.toml",
                Kind::Config,
            ),
            name(
                "PROD_TLS_CERT",
                "prod_tls_cert_ccc",
                "/rel/tls.crt",
                Kind::Secret,
            ),
        ];
        let all = existing(&["prod_backend_config_aaa", "prod_backend_config_bbb"]);
        let p = plan(&Inputs {
            records: &r,
            stack: &s,
            names: &names,
            existing: &all,
            registry: Some("127.0.0.1:5000"),
            want: None,
        })
        .unwrap();
        assert_eq!(p.target, "1");
        assert_eq!(p.sets["BACKEND_TAG"], format!("a{D}"));
        assert_eq!(p.sets["POSTGRES_IMAGE"], format!("postgres:15{D}"));
        assert_eq!(
            p.configs["prod_backend_config_aaa"],
            [PathBuf::from("/rel/backend.toml")]
        );
        assert_eq!(p.expects["PROD_BACKEND_CONFIG"], "prod_backend_config_aaa");
        assert!(
            !p.expects.contains_key("PROD_TLS_CERT"),
            "secrets are not rolled back"
        );
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        // Back to the deploy that runs now: nothing to rewrite, the same names expected.
        let p = plan(&Inputs {
            records: &r,
            stack: &s,
            names: &names,
            existing: &all,
            registry: Some("127.0.0.1:5000"),
            want: Some("3"),
        })
        .unwrap();
        assert!(p.configs.is_empty());
        assert_eq!(p.expects["PROD_BACKEND_CONFIG"], "prod_backend_config_bbb");
    }

    #[test]
    fn yaml_written_another_way_reads_the_same() {
        // Flow style, quotes, a four-space indent and anchors: the one model reads them all.
        let s = stack(
            "x-img: &pg \"${POSTGRES_IMAGE}\"\nservices:\n    postgres: {image: *pg}\n    backend:\n        image: '${REGISTRY}/stackship/backend:${BACKEND_TAG}'\n",
        );
        let r = records();
        let p = plan(&Inputs {
            records: &r,
            stack: &s,
            names: &[],
            existing: &existing(&["prod_backend_config_aaa"]),
            registry: Some("127.0.0.1:5000"),
            want: Some("1"),
        })
        .unwrap();
        assert_eq!(p.sets["BACKEND_TAG"], format!("a{D}"));
        assert_eq!(p.sets["POSTGRES_IMAGE"], format!("postgres:15{D}"));
    }

    #[test]
    fn what_cannot_be_restored_is_refused_naming_what_can() {
        let r = records();
        let s = stack(STACK);
        let inputs = |want, all: &'static [&'static str]| {
            plan(&Inputs {
                records: &r,
                stack: &s,
                names: &[],
                existing: &existing(all),
                registry: Some("127.0.0.1:5000"),
                want,
            })
        };
        let e = inputs(Some("1"), &["prod_backend_config_bbb"]).unwrap_err();
        assert_eq!(
            e,
            "deploy 1 cannot be restored: its configs prod_backend_config_aaa were pruned (the prune keeps those of the last PRUNE_KEEP deploys); no earlier deploy can be"
        );
        assert_eq!(
            inputs(Some("9"), &[]).unwrap_err(),
            "deploy '9': no such record (see --list)"
        );
        let many = vec![record("10", "a", "c_1"), record("11", "b", "c_2")];
        let e = plan(&Inputs {
            records: &many,
            stack: &s,
            names: &[],
            existing: &existing(&["c_1", "c_2"]),
            registry: None,
            want: Some("1"),
        })
        .unwrap_err();
        assert_eq!(e, "deploy '1': ambiguous, 2 records match (see --list)");
        // An exact id wins over prefixes.
        let exact = vec![record("1", "a", "c_1"), record("10", "b", "c_2")];
        let p = plan(&Inputs {
            records: &exact,
            stack: &s,
            names: &[],
            existing: &existing(&["c_1", "c_2"]),
            registry: None,
            want: Some("1"),
        })
        .unwrap();
        assert_eq!(p.target, "1");
        let same = vec![record("1", "a", "c_1"), record("2", "a", "c_1")];
        let e = plan(&Inputs {
            records: &same,
            stack: &s,
            names: &[],
            existing: &existing(&["c_1"]),
            registry: None,
            want: None,
        })
        .unwrap_err();
        assert_eq!(
            e,
            "no earlier deploy differs from the last one (2) but those a rollback left: nothing to roll back to by default (name one with --to; see --list)"
        );
        assert!(
            plan(&Inputs {
                records: &[],
                stack: &s,
                names: &[],
                existing: &existing(&[]),
                registry: None,
                want: None,
            })
            .is_err()
        );
    }

    #[test]
    fn a_pruned_target_names_the_deploys_that_can_be_restored() {
        let r = vec![
            record("1", "a", "c_1"),
            record("2", "b", "c_2"),
            record("3", "c", "c_3"),
        ];
        let e = plan(&Inputs {
            records: &r,
            stack: &stack(STACK),
            names: &[],
            existing: &existing(&["c_2", "c_3"]),
            registry: None,
            want: Some("1"),
        })
        .unwrap_err();
        assert!(e.ends_with("; deploys that can: 2"), "{e}");
    }

    #[test]
    fn images_from_another_registry_or_without_a_tag_are_refused() {
        let r = records();
        let s = stack(STACK);
        let e = plan(&Inputs {
            records: &r,
            stack: &s,
            names: &[],
            existing: &existing(&["prod_backend_config_aaa"]),
            registry: Some("registry.invalid"),
            want: Some("1"),
        })
        .unwrap_err();
        assert_eq!(
            e,
            "deploy 1 ran backend from 127.0.0.1:5000/stackship/backend, not from this environment's registry.invalid/stackship/backend"
        );
        let mut untagged = records();
        untagged[0].services.get_mut("backend").unwrap().image =
            "127.0.0.1:5000/stackship/backend".into();
        let e = plan(&Inputs {
            records: &untagged,
            stack: &s,
            names: &[],
            existing: &existing(&["prod_backend_config_aaa"]),
            registry: Some("127.0.0.1:5000"),
            want: Some("1"),
        })
        .unwrap_err();
        assert!(e.ends_with("has no tag"), "{e}");
        assert_eq!(
            split_image("r:5000/a/b:t@sha256:1"),
            Some(("r:5000/a/b", "t@sha256:1"))
        );
        assert_eq!(split_image("r:5000/a/b"), None);
        assert_eq!(split_image("b:t"), Some(("b", "t")));
    }

    #[test]
    fn what_the_stack_and_the_record_do_not_share_is_said() {
        let s = stack(
            "services:\n  backend:\n    image: ${REGISTRY}/stackship/backend:${BACKEND_TAG}\n  web:\n    image: nginx:1\n  worker:\n    image: ${REGISTRY}/stackship/worker:${WORKER_TAG}\n",
        );
        let mut r = records();
        r[0].services.insert(
            "web".into(),
            ServiceRecord {
                image: "nginx:1".into(),
                ..Default::default()
            },
        );
        let names = [name(
            "PROD_NEW_CONFIG",
            "prod_new_config_ddd",
            "/rel/new.toml",
            Kind::Config,
        )];
        let p = plan(&Inputs {
            records: &r,
            stack: &s,
            names: &names,
            existing: &existing(&["prod_backend_config_aaa"]),
            registry: Some("127.0.0.1:5000"),
            want: Some("1"),
        })
        .unwrap();
        assert_eq!(
            p.warnings,
            [
                "service web names a fixed image (nginx:1): not rolled back",
                "service worker was not part of deploy 1: it keeps its current image and configs",
                "service postgres of deploy 1 is not in the current stack file: not restored",
                "config PROD_NEW_CONFIG was not part of deploy 1: it keeps its current content",
            ]
        );
        assert_eq!(p.sets.len(), 1);
    }

    #[test]
    fn without_a_registry_setting_the_records_registry_is_used() {
        // A manager fed by the pipeline has no REGISTRY of its own: the job sends it.
        let r = records();
        let p = plan(&Inputs {
            records: &r,
            stack: &stack(STACK),
            names: &[],
            existing: &existing(&["prod_backend_config_aaa"]),
            registry: None,
            want: Some("1"),
        })
        .unwrap();
        assert_eq!(p.sets["REGISTRY"], "127.0.0.1:5000");
        // Two services from two registries cannot both be right.
        let two = "services:\n  backend:\n    image: ${REGISTRY}/stackship/backend:${BACKEND_TAG}\n  frontend:\n    image: ${REGISTRY}/stackship/frontend:${FRONTEND_TAG}\n";
        let mut r = records();
        r[0].services.insert(
            "frontend".into(),
            ServiceRecord {
                image: format!("other:5000/stackship/frontend:a{D}"),
                ..Default::default()
            },
        );
        let e = plan(&Inputs {
            records: &r,
            stack: &stack(two),
            names: &[],
            existing: &existing(&["prod_backend_config_aaa"]),
            registry: None,
            want: Some("1"),
        })
        .unwrap_err();
        assert_eq!(
            e,
            "deploy 1 ran frontend from other:5000/stackship/frontend, not from this environment's 127.0.0.1:5000/stackship/frontend"
        );
        // An image that is not <registry>/stackship/<name> at all.
        r[0].services.get_mut("frontend").unwrap().image = format!("elsewhere/web:a{D}");
        let e = plan(&Inputs {
            records: &r,
            stack: &stack(two),
            names: &[],
            existing: &existing(&["prod_backend_config_aaa"]),
            registry: None,
            want: Some("1"),
        })
        .unwrap_err();
        assert!(
            e.ends_with("which is not <registry>/stackship/frontend"),
            "{e}"
        );
        // A repository written out must match as written.
        let fixed = stack(
            "services:\n  backend:\n    image: 127.0.0.1:5000/stackship/backend:${BACKEND_TAG}\n",
        );
        let p = plan(&Inputs {
            records: &records(),
            stack: &fixed,
            names: &[],
            existing: &existing(&["prod_backend_config_aaa"]),
            registry: None,
            want: Some("1"),
        })
        .unwrap();
        assert_eq!(p.sets.len(), 1);
        let other =
            stack("services:\n  backend:\n    image: r.invalid/stackship/backend:${BACKEND_TAG}\n");
        assert!(
            plan(&Inputs {
                records: &records(),
                stack: &other,
                names: &[],
                existing: &existing(&["prod_backend_config_aaa"]),
                registry: None,
                want: Some("1"),
            })
            .unwrap_err()
            .ends_with("not from r.invalid/stackship/backend")
        );
    }

    #[test]
    fn the_listing_marks_the_last_the_default_and_the_pruned() {
        let r = records();
        let text = list(&r, &existing(&["prod_backend_config_bbb"]));
        assert_eq!(
            text,
            "3 (last deploy)\n    images: backend=backend:b postgres=postgres:15\n    configs: prod_backend_config_bbb\n\
             2\n    images: backend=backend:b postgres=postgres:15\n    configs: prod_backend_config_bbb\n\
             1 (default rollback target) (configs pruned: cannot be restored)\n    images: backend=backend:a postgres=postgres:15\n    configs: prod_backend_config_aaa\n"
        );
        let mut bare = records();
        bare[0].services.clear();
        assert!(list(&bare[..1], &existing(&[])).ends_with("configs: -\n"));
    }

    #[test]
    fn config_files_map_into_the_working_copy() {
        assert_eq!(
            in_copy(
                Path::new("/e/current/m/a.toml"),
                Path::new("/e/current"),
                Path::new("/e/w")
            ),
            Ok(PathBuf::from("/e/w/m/a.toml"))
        );
        assert!(
            in_copy(
                Path::new("/etc/passwd"),
                Path::new("/e/current"),
                Path::new("/e/w")
            )
            .is_err()
        );
        assert!(
            in_copy(
                Path::new("/e/current/../x"),
                Path::new("/e/current"),
                Path::new("/e/w")
            )
            .is_err()
        );
    }

    #[test]
    fn a_working_copy_is_a_copy_and_goes_when_dropped() {
        let root = tempfile::tempdir().unwrap();
        let from = root.path().join("current");
        fs::create_dir_all(from.join("m")).unwrap();
        fs::write(from.join("m/a.toml"), "a").unwrap();
        std::os::unix::fs::symlink("m/a.toml", from.join("link")).unwrap();
        let work = root.path().join(".rollback.1");
        {
            let _guard = WorkCopy(work.clone());
            copy_tree(&from, &work).unwrap();
            assert_eq!(fs::read_to_string(work.join("m/a.toml")).unwrap(), "a");
            assert_eq!(
                fs::read_link(work.join("link")).unwrap(),
                Path::new("m/a.toml")
            );
        }
        assert!(!work.exists());
        assert!(from.join("m/a.toml").exists());
    }
}
