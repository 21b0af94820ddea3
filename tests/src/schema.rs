//! docs/events.schema.json: every JSON line memstress prints is checked against it.
//!
//! [`Memstress`](crate::Memstress) and [`memstress_output`](crate::memstress_output) validate
//! each line they read, so every privileged test is also a schema test. The unit tests here
//! keep the schema and docs/events.md in agreement: the same line types, every field of a
//! type named in its section, every JSON example valid.

use std::sync::OnceLock;

use serde_json::Value;

/// The schema's text (compiled into the tests, so a test always checks the schema of its
/// own tree).
pub const SCHEMA: &str = include_str!("../../docs/events.schema.json");
/// The event reference.
pub const EVENTS_MD: &str = include_str!("../../docs/events.md");

fn validator() -> &'static jsonschema::Validator {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        let schema: Value =
            serde_json::from_str(SCHEMA).expect("docs/events.schema.json is not JSON");
        jsonschema::draft202012::new(&schema)
            .unwrap_or_else(|e| panic!("docs/events.schema.json is not a valid schema: {e}"))
    })
}

/// Checks one line against the schema: `Err` lists every violation (where, and what).
pub fn check(line: &Value) -> Result<(), String> {
    let errors: Vec<String> = validator()
        .iter_errors(line)
        .map(|e| {
            let at = e.instance_path().to_string();
            format!("at {}: {e}", if at.is_empty() { "/" } else { &at })
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// Parses and checks one line of memstress's stdout; panics with the line and what is wrong
/// with it.
pub fn parse_line(line: &str) -> Value {
    let value: Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("memstress printed a non-JSON line `{line}`: {e}"));
    if let Err(e) = check(&value) {
        panic!(
            "memstress printed a line that docs/events.schema.json rejects: {e}\n  line: {line}"
        );
    }
    value
}

/// The line types the schema defines (its `type` enum).
pub fn schema_types() -> Vec<String> {
    let schema: Value = serde_json::from_str(SCHEMA).expect("schema is JSON");
    schema["properties"]["type"]["enum"]
        .as_array()
        .expect("the schema's top level has a `type` enum")
        .iter()
        .map(|t| t.as_str().expect("type names are strings").to_owned())
        .collect()
}

/// The definition a line of type `t` is checked against (the `then` of its dispatch rule).
pub fn definition_of(t: &str) -> Option<String> {
    let schema: Value = serde_json::from_str(SCHEMA).expect("schema is JSON");
    schema["allOf"].as_array()?.iter().find_map(|rule| {
        (rule["if"]["properties"]["type"]["const"] == t).then(|| {
            rule["then"]["$ref"]
                .as_str()
                .unwrap_or_default()
                .trim_start_matches("#/$defs/")
                .to_owned()
        })
    })
}

/// The `### \`type\`` sections of docs/events.md: (type, text up to the next heading).
pub fn documented_types() -> Vec<(String, String)> {
    // Each heading names one or more types: "### `started`, `restarted`, `exited`".
    let mut sections: Vec<(Vec<String>, String)> = Vec::new();
    for line in EVENTS_MD.lines() {
        if let Some(heading) = line.strip_prefix("### ") {
            let names = heading
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect();
            sections.push((names, String::new()));
        } else if line.starts_with('#') {
            sections.push((Vec::new(), String::new()));
        } else if let Some((_, text)) = sections.last_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    sections
        .into_iter()
        .flat_map(|(names, text)| names.into_iter().map(move |n| (n, text.clone())))
        .collect()
}

/// Every fenced ```json block of docs/events.md, one JSON value each.
pub fn documented_examples() -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in EVENTS_MD.lines() {
        match (&mut current, line.trim()) {
            (None, "```json") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::json;

    use super::*;

    /// Top-level fields of line type `t`: those of the definition it dispatches to.
    fn fields_of(t: &str) -> Vec<String> {
        let schema: Value = serde_json::from_str(SCHEMA).unwrap();
        let def = definition_of(t).unwrap_or_else(|| panic!("no rule for type {t}"));
        schema["$defs"][&def]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("$defs/{def} has no properties"))
            .keys()
            .filter(|k| *k != "type")
            .cloned()
            .collect()
    }

    #[test]
    fn the_schema_and_events_md_have_the_same_line_types() {
        let schema: Value = serde_json::from_str(SCHEMA).unwrap();
        let in_schema: BTreeSet<String> = schema_types().into_iter().collect();
        let in_docs: BTreeSet<String> = documented_types().into_iter().map(|(t, _)| t).collect();
        assert_eq!(
            in_schema, in_docs,
            "docs/events.md's ### `type` headings and the schema's line types differ"
        );
        // Each type is dispatched to a definition.
        for t in &in_schema {
            let def = definition_of(t).unwrap_or_else(|| panic!("no rule for type {t}"));
            assert!(schema["$defs"][&def].is_object(), "no $defs/{def}");
        }
    }

    /// A field the schema knows and the docs never name is undocumented; a section that
    /// says "Same fields as `x`" documents x's.
    #[test]
    fn events_md_names_every_field_of_every_type() {
        let sections = documented_types();
        let text_of = |t: &str| -> String {
            let own = sections
                .iter()
                .find(|(name, _)| name == t)
                .map(|(_, text)| text.clone())
                .unwrap_or_default();
            match own
                .split_once("Same fields as `")
                .and_then(|(_, rest)| rest.split_once('`'))
            {
                Some((other, _)) => {
                    let other_text = sections
                        .iter()
                        .find(|(name, _)| name == other)
                        .map(|(_, text)| text.clone())
                        .unwrap_or_default();
                    own + &other_text
                }
                None => own,
            }
        };
        let mut missing = Vec::new();
        for t in schema_types() {
            let text = text_of(&t);
            for field in fields_of(&t) {
                if !text.contains(&format!("`{field}`")) && !text.contains(&format!("\"{field}\""))
                {
                    missing.push(format!("{t}.{field}"));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "docs/events.md does not mention these fields in their type's section: {missing:?}"
        );
    }

    #[test]
    fn every_json_example_in_events_md_is_valid() {
        let examples = documented_examples();
        assert!(examples.len() >= 5, "only {} examples", examples.len());
        for block in examples {
            let value: Value = serde_json::from_str(&block)
                .unwrap_or_else(|e| panic!("an example in events.md is not JSON ({e}):\n{block}"));
            if let Err(e) = check(&value) {
                panic!("an example in events.md does not match the schema: {e}\n{block}");
            }
        }
    }

    /// The checks can fail: drift of any kind is caught.
    #[test]
    fn the_schema_rejects_drift() {
        let end =
            json!({"type": "end", "oom_kills": 1, "victims_exiting": 0, "dropped_records": 0});
        check(&end).unwrap();
        let mut added = end.clone();
        added["new_field"] = json!(1);
        assert!(check(&added).unwrap_err().contains("new_field"));
        let mut removed = end.clone();
        removed.as_object_mut().unwrap().remove("dropped_records");
        assert!(check(&removed).unwrap_err().contains("dropped_records"));
        let mut wrong = end.clone();
        wrong["oom_kills"] = json!("1");
        assert!(check(&wrong).is_err());
        assert!(check(&json!({"type": "no_such_type"})).is_err());
        assert!(check(&json!({"oom_kills": 1})).is_err());
        // A nested shape is checked too.
        let mut kill: Value = serde_json::from_str(
            documented_examples()
                .iter()
                .find(|b| b.contains("\"type\":\"oom_kill\""))
                .expect("events.md has an oom_kill example"),
        )
        .unwrap();
        check(&kill).unwrap();
        kill["victim"]["oom_score_adj"] = json!(1001);
        assert!(check(&kill).unwrap_err().contains("/victim/oom_score_adj"));
        kill["victim"]["oom_score_adj"] = json!(0);
        kill["victim"]["unknown_field"] = json!(0);
        assert!(check(&kill).unwrap_err().contains("unknown_field"));
    }
}
