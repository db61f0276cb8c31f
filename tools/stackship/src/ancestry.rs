//! Deploys do not go backwards by accident. The deploy job knows its commit's history (git);
//! the manager knows what runs (the last deploy record, which keeps the commit and the history
//! the job that deployed it sent). The check runs on the manager under the deploy lock, so two
//! pipelines that race for the lock are judged in the order they deploy:
//!
//! - the running commit is among the new commit's ancestors, or is the same: forwards, deploy;
//! - the new commit is among the running commit's recorded ancestors: backwards, refused unless
//!   `--allow-older` (`ALLOW_OLDER=1`); a rollback is the explicit way back;
//! - neither (another branch, a history longer than the job fetched, no commit known): deploy,
//!   saying so.

use rollout_watcher::history::DeployRecord;

/// How many ancestors a deploy job sends and a record keeps.
pub const MAX_ANCESTORS: usize = 1000;

/// Where a deploy's commit came from: what the record keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Provenance {
    pub commit: Option<String>,
    pub pipeline: Option<String>,
    /// The commit's ancestors, newest first (`git rev-list`), without the commit itself.
    pub ancestors: Vec<String>,
    /// Why a record was made when it was not a deploy of a release (a rotation).
    pub note: Option<String>,
    /// When the deploy stage began (RFC 3339 UTC), set just before `docker stack deploy`.
    pub started: Option<String>,
}

/// A commit id: 7 to 40 hexadecimal digits (lower-cased).
fn commit_id(word: &str) -> Option<String> {
    let ok = (7..=40).contains(&word.len()) && word.bytes().all(|b| b.is_ascii_hexdigit());
    ok.then(|| word.to_ascii_lowercase())
}

impl Provenance {
    /// From the deploy's settings: `CI_COMMIT_SHA`, `CI_PIPELINE_URL` and `COMMIT_ANCESTORS`
    /// (commit ids separated by spaces, commas or newlines).
    pub fn from_settings(
        commit: Option<&str>,
        pipeline: Option<&str>,
        ancestors: Option<&str>,
    ) -> Result<Self, String> {
        let commit = match commit.map(str::trim).filter(|c| !c.is_empty()) {
            None => None,
            Some(c) => Some(commit_id(c).ok_or_else(|| {
                format!("CI_COMMIT_SHA '{c}' is not a commit id (7 to 40 hex digits)")
            })?),
        };
        let mut list = Vec::new();
        for (i, word) in ancestors
            .unwrap_or("")
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|w| !w.is_empty())
            .enumerate()
        {
            let id = commit_id(word).ok_or_else(|| {
                format!(
                    "COMMIT_ANCESTORS: item {} '{word}' is not a commit id (7 to 40 hex digits)",
                    i + 1
                )
            })?;
            list.push(id);
        }
        if !list.is_empty() && commit.is_none() {
            return Err("COMMIT_ANCESTORS is set without CI_COMMIT_SHA".to_owned());
        }
        list.truncate(MAX_ANCESTORS);
        Ok(Self {
            commit,
            pipeline: pipeline
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_owned),
            ancestors: list,
            started: None,
            note: None,
        })
    }
}

/// Two ids name the same commit when one is a prefix of the other (abbreviated ids).
fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.to_ascii_lowercase(), b.to_ascii_lowercase());
    a.starts_with(&b) || b.starts_with(&a)
}

fn short(id: &str) -> &str {
    &id[..id.len().min(8)]
}

/// Judges a deploy of `new` against the `running` record: `Ok(line to show)` to go on,
/// `Err(why)` to refuse.
pub fn check(
    running: Option<&DeployRecord>,
    new: &Provenance,
    allow_older: bool,
) -> Result<String, String> {
    let Some(commit) = new.commit.as_deref() else {
        return Ok("no commit given (CI_COMMIT_SHA): not checked against what runs".to_owned());
    };
    let Some(record) = running else {
        return Ok(format!(
            "commit {}: the first recorded deploy",
            short(commit)
        ));
    };
    let Some(running_commit) = record.commit.as_deref() else {
        return Ok(format!(
            "commit {}: the running deploy {} names no commit, so it is not compared",
            short(commit),
            record.id
        ));
    };
    let (c, r) = (short(commit), short(running_commit));
    if same(commit, running_commit) {
        return Ok(format!("commit {c} is the one running: deploying it again"));
    }
    if new.ancestors.iter().any(|a| same(a, running_commit)) {
        return Ok(format!("commit {c} descends from the running {r}"));
    }
    if record.ancestors.iter().any(|a| same(a, commit)) {
        let by = record
            .pipeline
            .as_deref()
            .map(|p| format!(" by {p}"))
            .unwrap_or_default();
        if allow_older {
            return Ok(format!(
                "WARNING: commit {c} is older than the running {r} (one of its ancestors); deploying it anyway, as --allow-older says"
            ));
        }
        return Err(format!(
            "commit {c} is older than the running {r} (deployed {}{by}): it is one of {r}'s ancestors, so this deploy would go backwards. A newer pipeline deployed meanwhile; a rollback is the way back to an older release. To deploy it anyway: --allow-older (ALLOW_OLDER=1 in the deploy job)",
            record.id
        ));
    }
    Ok(format!(
        "commit {c} neither descends from nor precedes the running {r} as far as the deploy jobs' histories show ({} and {} ancestors): deploying",
        new.ancestors.len(),
        record.ancestors.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const C: &str = "cccccccccccccccccccccccccccccccccccccccc";

    fn running(commit: Option<&str>, ancestors: &[&str]) -> DeployRecord {
        DeployRecord {
            id: "20261206T010000.000Z".into(),
            stack: "stackship-prod".into(),
            commit: commit.map(Into::into),
            pipeline: Some("https://ci/p/7".into()),
            ancestors: ancestors.iter().map(|a| (*a).to_owned()).collect(),
            note: None,
            started: None,
            services: Default::default(),
        }
    }

    fn new(commit: &str, ancestors: &[&str]) -> Provenance {
        Provenance {
            commit: Some(commit.into()),
            pipeline: None,
            ancestors: ancestors.iter().map(|a| (*a).to_owned()).collect(),
            note: None,
            started: None,
        }
    }

    #[test]
    fn an_older_commit_is_refused_unless_allowed() {
        // B runs; its history has A. Deploying A goes backwards.
        let r = running(Some(B), &[A]);
        let e = check(Some(&r), &new(A, &[]), false).unwrap_err();
        assert!(e.starts_with("commit aaaaaaaa is older than the running bbbbbbbb (deployed 20261206T010000.000Z by https://ci/p/7): it is one of bbbbbbbb's ancestors"), "{e}");
        assert!(
            e.contains("--allow-older (ALLOW_OLDER=1 in the deploy job)"),
            "{e}"
        );
        let ok = check(Some(&r), &new(A, &[]), true).unwrap();
        assert!(
            ok.starts_with("WARNING: commit aaaaaaaa is older than the running bbbbbbbb"),
            "{ok}"
        );
        // Abbreviated ids and upper case match too.
        assert!(check(Some(&r), &new("AAAAAAAA", &[]), false).is_err());
        let r = running(Some(B), &["aaaaaaa"]);
        assert!(check(Some(&r), &new(A, &[]), false).is_err());
        // Without a pipeline, the message says when only.
        let mut r = running(Some(B), &[A]);
        r.pipeline = None;
        let e = check(Some(&r), &new(A, &[]), false).unwrap_err();
        assert!(e.contains("(deployed 20261206T010000.000Z):"), "{e}");
    }

    #[test]
    fn forwards_the_same_commit_and_other_branches_deploy() {
        let r = running(Some(A), &[]);
        assert_eq!(
            check(Some(&r), &new(B, &[A]), false).unwrap(),
            "commit bbbbbbbb descends from the running aaaaaaaa"
        );
        assert_eq!(
            check(Some(&r), &new(A, &[]), false).unwrap(),
            "commit aaaaaaaa is the one running: deploying it again"
        );
        // C and A are on different branches: neither history has the other.
        let r = running(Some(A), &[B]);
        let ok = check(Some(&r), &new(C, &[B]), false).unwrap();
        assert!(
            ok.starts_with(
                "commit cccccccc neither descends from nor precedes the running aaaaaaaa"
            ),
            "{ok}"
        );
        assert!(ok.contains("(1 and 1 ancestors)"), "{ok}");
    }

    #[test]
    fn without_a_commit_or_record_nothing_is_compared() {
        let none = Provenance::default();
        assert!(
            check(Some(&running(Some(A), &[])), &none, false)
                .unwrap()
                .starts_with("no commit given")
        );
        assert_eq!(
            check(None, &new(A, &[]), false).unwrap(),
            "commit aaaaaaaa: the first recorded deploy"
        );
        let ok = check(Some(&running(None, &[A])), &new(A, &[]), false).unwrap();
        assert!(ok.contains("names no commit"), "{ok}");
    }

    #[test]
    fn provenance_is_read_from_the_settings_strictly() {
        let p = Provenance::from_settings(
            Some(" ABCDEF1 "),
            Some("https://ci/p/1"),
            Some("1234567, 89abcdef\n0000000"),
        )
        .unwrap();
        assert_eq!(p.commit.as_deref(), Some("abcdef1"));
        assert_eq!(p.pipeline.as_deref(), Some("https://ci/p/1"));
        assert_eq!(p.ancestors, ["1234567", "89abcdef", "0000000"]);
        assert_eq!(
            Provenance::from_settings(None, Some(" "), None).unwrap(),
            Provenance::default()
        );
        let e = Provenance::from_settings(Some("main"), None, None).unwrap_err();
        assert_eq!(
            e,
            "CI_COMMIT_SHA 'main' is not a commit id (7 to 40 hex digits)"
        );
        let e = Provenance::from_settings(Some(A), None, Some("1234567 xyz1234")).unwrap_err();
        assert_eq!(
            e,
            "COMMIT_ANCESTORS: item 2 'xyz1234' is not a commit id (7 to 40 hex digits)"
        );
        assert!(Provenance::from_settings(Some(&"a".repeat(41)), None, None).is_err());
        assert!(Provenance::from_settings(Some("abcdef"), None, None).is_err());
        assert!(Provenance::from_settings(Some(&"a".repeat(40)), None, None).is_ok());
        let e = Provenance::from_settings(None, None, Some("1234567")).unwrap_err();
        assert_eq!(e, "COMMIT_ANCESTORS is set without CI_COMMIT_SHA");
        let many = vec!["1234567"; MAX_ANCESTORS + 5].join(" ");
        let p = Provenance::from_settings(Some(A), None, Some(&many)).unwrap();
        assert_eq!(p.ancestors.len(), MAX_ANCESTORS);
    }
}
