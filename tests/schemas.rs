//! The Avro schemas in `schemas/` parse, and describe the same records as the JSON
//! contracts (every JSON field of the Rust model has an Avro field of the same name).

use apache_avro::Schema;

fn field_names(schema: &Schema) -> Vec<String> {
    match schema {
        Schema::Record(r) => r.fields.iter().map(|f| f.name.clone()).collect(),
        other => panic!("expected a record, got {other:?}"),
    }
}

#[test]
fn every_schema_file_parses() {
    let mut n = 0;
    for entry in std::fs::read_dir("schemas").unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "avsc") {
            let text = std::fs::read_to_string(&path).unwrap();
            Schema::parse_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
    }
    assert!(n >= 2, "found {n} schema files");
}

#[test]
fn run_update_schema_matches_the_json_contract() {
    let schema = Schema::parse_str(include_str!("../schemas/run_update.v1.avsc")).unwrap();
    let names = field_names(&schema);
    let mut u = switchyard::model::RunUpdate::status("r", switchyard::model::RunStatus::Success);
    u.status_label = Some("x".into());
    u.summary = Some("x".into());
    u.link = Some(vec!["x".into()]);
    u.external_run_id = Some("x".into());
    u.message = Some("x".into());
    u.level = Some(switchyard::model::LogLevel::Info);
    u.response = Some(serde_json::json!({}));
    u.backend = Some("x".into());
    u.attempt = Some(1);
    u.duration_ms = Some(1);
    u.source = Some(switchyard::model::SourceRef {
        topic: "t".into(),
        partition: 0,
        offset: 0,
    });
    let json = serde_json::to_value(&u).unwrap();
    for key in json.as_object().unwrap().keys() {
        assert!(
            names.contains(key),
            "run update field {key} missing from the Avro schema"
        );
    }
}

#[test]
fn trigger_event_schema_matches_the_json_contract() {
    let schema = Schema::parse_str(include_str!("../schemas/trigger_event.v1.avsc")).unwrap();
    let names = field_names(&schema);
    for key in [
        "run",
        "action",
        "trigger",
        "inputs",
        "entity",
        "event",
        "orderingKey",
        "deadline",
    ] {
        assert!(names.contains(&key.to_owned()), "{key} missing");
    }
}

#[test]
fn example_events_decode_and_name_a_backend() {
    let mut n = 0;
    for entry in std::fs::read_dir("examples/events").unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let ev = switchyard::decode::decode_json(&bytes)
            .unwrap_or_else(|(e, _)| panic!("{}: {e}", path.display()));
        let kind = ev.backend_type().unwrap().to_ascii_lowercase();
        assert!(
            path.file_stem().unwrap().to_str().unwrap() == kind,
            "{} holds a {kind} event",
            path.display()
        );
        n += 1;
    }
    assert!(n >= 3);
}
