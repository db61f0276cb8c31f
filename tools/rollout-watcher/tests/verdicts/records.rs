//! Reading the deploy records back: what the prune keeps and a rollback returns to.

use std::collections::BTreeMap;

use rollout_watcher::history::{self, DeployRecord, ServiceRecord};

fn record(id: &str, config: &str) -> DeployRecord {
    DeployRecord {
        id: id.into(),
        stack: "stackship-prod".into(),
        services: BTreeMap::from([(
            "backend".to_owned(),
            ServiceRecord {
                image: "r/backend:1".into(),
                configs: vec![config.into()],
                ..Default::default()
            },
        )]),
        ..Default::default()
    }
}

#[test]
fn records_are_read_back_oldest_first_and_other_files_are_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let history = dir.path().join("history");
    history::write(&history, &record("20261123T020304Z", "app-b")).unwrap();
    history::write(&history, &record("20261122T010000Z", "app-a")).unwrap();
    // Not records: an operator's note, an editor's hidden copy, a write cut short.
    std::fs::write(history.join("README"), "kept by hand\n").unwrap();
    std::fs::write(history.join(".20261124T000000Z.json"), "{\"id\":").unwrap();
    std::fs::write(history.join(".20261124T000000Z.json.tmp"), "{").unwrap();
    let records = history::read_all(&history).unwrap();
    let ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["20261122T010000Z", "20261123T020304Z"]);
    assert_eq!(records[1], record("20261123T020304Z", "app-b"));
}

#[test]
fn no_history_yet_is_no_records_but_an_unreadable_one_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    assert!(
        history::read_all(&dir.path().join("none"))
            .unwrap()
            .is_empty()
    );
    // A file where the directory should be: the prune must not guess what it would keep.
    let file = dir.path().join("history");
    std::fs::write(&file, "").unwrap();
    let err = history::read_all(&file).unwrap_err();
    assert!(format!("{err:#}").starts_with("cannot read "), "{err:#}");
    // A record that does not parse names its file.
    let history = dir.path().join("h");
    std::fs::create_dir(&history).unwrap();
    std::fs::write(history.join("20261123T020304Z.json"), "{").unwrap();
    let err = history::read_all(&history).unwrap_err();
    assert!(
        format!("{err:#}").contains("20261123T020304Z.json is not a deploy record"),
        "{err:#}"
    );
}
