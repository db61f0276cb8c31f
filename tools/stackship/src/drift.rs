//! Drift: how a running service spec differs from the one the last deploy recorded — a
//! hand-made `docker service update`, a config swapped by hand, a service removed. Plain JSON
//! in, one line per difference out.

use std::collections::BTreeSet;

use serde_json::Value;

/// At most this many characters of a value are shown.
const SHOWN: usize = 80;

fn show(v: &Value) -> String {
    let text = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if text.chars().count() > SHOWN {
        let cut: String = text.chars().take(SHOWN).collect();
        format!("{cut}…")
    } else {
        text
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Swarm stores specs as protobuf, where an absent field and its zero value are the same
/// thing, and the CLI fills some in (`docker service update` writes an empty `DNSConfig`):
/// null, false, 0, "", {} and [] all count as absent.
fn is_absent(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => !b,
        Some(Value::Number(n)) => n.as_f64() == Some(0.0),
        Some(Value::String(s)) => s.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Object(o)) => o.values().all(|v| is_absent(Some(v))),
    }
}

/// The differences between `recorded` and `running`, one line each, in path order.
pub fn differences(recorded: &Value, running: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk("", Some(recorded), Some(running), &mut out);
    out
}

/// A list of plain values (strings, numbers), as environment variables and arguments are.
fn is_scalar_list(v: Option<&Value>) -> bool {
    matches!(v, Some(Value::Array(a)) if a.iter().all(|v| !v.is_object() && !v.is_array()))
}

fn walk(path: &str, old: Option<&Value>, new: Option<&Value>, out: &mut Vec<String>) {
    // An absent list and an empty one are the same: compare item by item.
    let empty = Value::Array(Vec::new());
    let (old, new) = match (old, new) {
        (a, b) if is_absent(a) && is_scalar_list(b) => (Some(&empty), b),
        (a, b) if is_scalar_list(a) && is_absent(b) => (a, Some(&empty)),
        other => other,
    };
    match (old, new) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                walk(&join(path, k), a.get(k), b.get(k), out);
            }
        }
        (Some(Value::Array(a)), Some(Value::Array(b)))
            if a.iter().chain(b).all(|v| !v.is_object() && !v.is_array()) =>
        {
            if a == b {
                return;
            }
            let before: BTreeSet<String> = a.iter().map(show).collect();
            let after: BTreeSet<String> = b.iter().map(show).collect();
            let added: Vec<&String> = after.difference(&before).collect();
            let removed: Vec<&String> = before.difference(&after).collect();
            let mut parts = Vec::new();
            if !added.is_empty() {
                parts.push(format!(
                    "added {}",
                    added
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            if !removed.is_empty() {
                parts.push(format!(
                    "removed {}",
                    removed
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            if parts.is_empty() {
                parts.push("reordered".to_owned());
            }
            out.push(format!("{path}: {}", parts.join("; ")));
        }
        (a, b) if is_absent(a) && is_absent(b) => {}
        (a, Some(b)) if is_absent(a) => out.push(format!("{path}: added {}", show(b))),
        (Some(a), b) if is_absent(b) => out.push(format!("{path}: removed {}", show(a))),
        (Some(a), Some(b)) if a != b => {
            out.push(format!("{path}: {} → {}", show(a), show(b)));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn equal_specs_have_no_drift() {
        let spec = json!({"Name": "a", "TaskTemplate": {"ContainerSpec": {"Env": ["A=1"]}}});
        assert!(differences(&spec, &spec.clone()).is_empty());
    }

    #[test]
    fn an_added_environment_variable_is_named() {
        let old = json!({"TaskTemplate": {"ContainerSpec": {"Env": ["A=1"], "Image": "i"}}});
        let new = json!({"TaskTemplate": {"ContainerSpec": {"Env": ["A=1", "X=1"], "Image": "i"}}});
        assert_eq!(
            differences(&old, &new),
            vec!["TaskTemplate.ContainerSpec.Env: added X=1"]
        );
    }

    #[test]
    fn a_list_that_was_absent_names_its_items() {
        let old = json!({"TaskTemplate": {"ContainerSpec": {"Image": "i"}}});
        let new = json!({"TaskTemplate": {"ContainerSpec": {"Image": "i", "Env": ["X=1"]}}});
        assert_eq!(
            differences(&old, &new),
            vec!["TaskTemplate.ContainerSpec.Env: added X=1"]
        );
        assert_eq!(
            differences(&new, &old),
            vec!["TaskTemplate.ContainerSpec.Env: removed X=1"]
        );
    }

    #[test]
    fn changed_removed_and_added_fields() {
        let old = json!({"Mode": {"Replicated": {"Replicas": 2}}, "Labels": {"a": "1"}, "Env": ["A=1", "B=2"], "Gone": true});
        let new = json!({"Mode": {"Replicated": {"Replicas": 3}}, "Labels": {"a": "1", "b": "2"}, "Env": ["B=2", "C=3"], "Gone": null});
        assert_eq!(
            differences(&old, &new),
            vec![
                "Env: added C=3; removed A=1",
                "Gone: removed true",
                "Labels.b: added 2",
                "Mode.Replicated.Replicas: 2 → 3",
            ]
        );
    }

    #[test]
    fn reordering_and_object_lists() {
        let old = json!({"Args": ["a", "b"], "Mounts": [{"Source": "x"}]});
        let new = json!({"Args": ["b", "a"], "Mounts": [{"Source": "y"}]});
        assert_eq!(
            differences(&old, &new),
            vec![
                "Args: reordered",
                r#"Mounts: [{"Source":"x"}] → [{"Source":"y"}]"#
            ]
        );
    }

    #[test]
    fn zero_values_count_as_absent() {
        let old = json!({"DNSConfig": null, "Init": false, "Labels": {}, "Args": []});
        let new =
            json!({"DNSConfig": {}, "Init": null, "Labels": {"a": ""}, "Retries": 0, "Name": ""});
        assert!(differences(&old, &new).is_empty());
        let new = json!({"Init": true, "Retries": 3});
        assert_eq!(
            differences(&old, &new),
            vec!["Init: added true", "Retries: added 3"]
        );
    }

    #[test]
    fn long_values_are_cut() {
        let old = json!({"Image": "a".repeat(100)});
        let new = json!({"Image": "b"});
        let d = differences(&old, &new);
        assert_eq!(d.len(), 1);
        assert!(
            d[0].starts_with(&format!("Image: {}…", "a".repeat(80))),
            "{}",
            d[0]
        );
        assert!(d[0].ends_with("→ b"));
        // Up to 80 characters a value is shown whole.
        let old = json!({"Image": "a".repeat(80)});
        assert_eq!(
            differences(&old, &new),
            vec![format!("Image: {} → b", "a".repeat(80))]
        );
    }
}
