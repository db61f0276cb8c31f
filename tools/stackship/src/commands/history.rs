//! `stackship history ENV`: the deploy records, newest first — id, commit, each service's
//! image and the configs and secrets it mounted.

use std::fmt::Write as _;

use rollout_watcher::history::DeployRecord;

/// `registry/project/backend:tag@sha256:...` → `backend:tag`.
fn short(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    without_digest.rsplit('/').next().unwrap_or(without_digest)
}

/// The records, newest first, as text.
pub fn render(records: &[DeployRecord]) -> String {
    let mut out = String::new();
    for (i, r) in records.iter().rev().enumerate() {
        let _ = writeln!(
            out,
            "{}{}{}",
            r.id,
            r.commit
                .as_deref()
                .map(|c| format!(" commit {}", c.chars().take(12).collect::<String>()))
                .unwrap_or_default(),
            if i == 0 { " (last deploy)" } else { "" }
        );
        if let Some(note) = &r.note {
            let _ = writeln!(out, "    {note}");
        }
        let images: Vec<String> = r
            .services
            .iter()
            .map(|(name, s)| format!("{name}={}", short(&s.image)))
            .collect();
        let _ = writeln!(out, "    images: {}", images.join(" "));
        let mut objects: Vec<&str> = r
            .services
            .values()
            .flat_map(|s| s.configs.iter().chain(&s.secrets))
            .map(String::as_str)
            .collect();
        objects.sort_unstable();
        objects.dedup();
        let _ = writeln!(
            out,
            "    configs and secrets: {}",
            if objects.is_empty() {
                "-".to_owned()
            } else {
                objects.join(" ")
            }
        );
    }
    if records.is_empty() {
        out.push_str("no deploy recorded yet\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollout_watcher::history::ServiceRecord;

    fn record(id: &str, tag: &str, commit: Option<&str>) -> DeployRecord {
        DeployRecord {
            id: id.into(),
            stack: "stackship-prod".into(),
            commit: commit.map(Into::into),
            pipeline: None,
            ancestors: Vec::new(),
            note: None,
            started: None,
            services: [(
                "backend".to_owned(),
                ServiceRecord {
                    image: format!("127.0.0.1:5000/stackship/backend:{tag}@sha256:00"),
                    configs: vec!["prod_backend_config_1".into()],
                    secrets: vec!["stackship-prod-db-password-v1".into()],
                    spec: None,
                },
            )]
            .into(),
        }
    }

    #[test]
    fn newest_first_with_commit_images_and_objects() {
        let text = render(&[
            record("20261206T010000.000Z", "a", None),
            record(
                "20261206T020000.000Z",
                "b",
                Some("0123456789abcdef0123456789abcdef01234567"),
            ),
        ]);
        assert_eq!(
            text,
            "20261206T020000.000Z commit 0123456789ab (last deploy)\n    images: backend=backend:b\n    configs and secrets: prod_backend_config_1 stackship-prod-db-password-v1\n\
             20261206T010000.000Z\n    images: backend=backend:a\n    configs and secrets: prod_backend_config_1 stackship-prod-db-password-v1\n"
        );
    }

    #[test]
    fn a_rotation_says_so() {
        let mut r = record("20261206T030000.000Z", "b", None);
        r.note = Some("rotated db-password: v1 -> v2".into());
        let text = render(&[r]);
        assert!(
            text.starts_with(
                "20261206T030000.000Z (last deploy)\n    rotated db-password: v1 -> v2\n    images:"
            ),
            "{text}"
        );
    }

    #[test]
    fn no_records() {
        assert_eq!(render(&[]), "no deploy recorded yet\n");
    }
}
