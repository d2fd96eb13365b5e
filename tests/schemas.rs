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
    let schema = Schema::parse_str(include_str!("../schemas/run_update.v2.avsc")).unwrap();
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
    u.action = Some("x".into());
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
        let ev = switchyard::codec::decode_json(&bytes)
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

/// Schema files are `NAME.vN.avsc`, numbered from 1 without gaps, and every version can
/// read data written with the one before it (Apache Avro's resolution rules). Each record
/// has one version today, so no pair is on disk yet: the rules are also checked on an
/// evolved trigger schema (an added field with a default), both ways, and on a broken
/// evolution (no default), which must fail.
#[test]
fn schemas_are_numbered_from_v1_and_evolve_by_avro_rules() {
    use apache_avro::schema_compatibility::SchemaCompatibility;
    use std::collections::BTreeMap;
    let mut versions: BTreeMap<String, BTreeMap<u32, Schema>> = BTreeMap::new();
    for entry in std::fs::read_dir("schemas").unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let Some(stem) = name.strip_suffix(".avsc") else {
            continue;
        };
        let (base, v) = stem.rsplit_once(".v").expect("NAME.vN.avsc");
        let schema = Schema::parse_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        versions
            .entry(base.to_owned())
            .or_default()
            .insert(v.parse().expect("a version number"), schema);
    }
    assert!(
        versions.contains_key("trigger_event") && versions.contains_key("run_update"),
        "{:?}",
        versions.keys().collect::<Vec<_>>()
    );
    for (base, vs) in &versions {
        let numbers: Vec<u32> = vs.keys().copied().collect();
        let expected: Vec<u32> = (1..=numbers.len() as u32).collect();
        assert_eq!(numbers, expected, "{base}: versions from 1 without gaps");
    }
    let mut pairs = 0;
    for (base, vs) in &versions {
        let list: Vec<(&u32, &Schema)> = vs.iter().collect();
        for w in list.windows(2) {
            SchemaCompatibility::can_read(w[0].1, w[1].1)
                .unwrap_or_else(|e| panic!("{base} v{} cannot read v{}: {e}", w[1].0, w[0].0));
            pairs += 1;
        }
    }
    println!(
        "{} schemas, {pairs} consecutive version pairs checked",
        versions.len()
    );
    let v1 = Schema::parse_str(switchyard::codec::avro::TRIGGER_SCHEMA).unwrap();
    let mut evolved: serde_json::Value =
        serde_json::from_str(switchyard::codec::avro::TRIGGER_SCHEMA).unwrap();
    evolved["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "priority", "type": "string", "default": "normal"}));
    let v2 = Schema::parse_str(&evolved.to_string()).unwrap();
    SchemaCompatibility::can_read(&v1, &v2).expect("v2 reads v1 data (the default fills in)");
    SchemaCompatibility::can_read(&v2, &v1).expect("v1 reads v2 data (the field is skipped)");
    let mut broken = evolved.clone();
    broken["fields"].as_array_mut().unwrap().last_mut().unwrap()["default"] =
        serde_json::Value::Null;
    broken["fields"]
        .as_array_mut()
        .unwrap()
        .last_mut()
        .unwrap()
        .as_object_mut()
        .unwrap()
        .remove("default");
    let v2_no_default = Schema::parse_str(&broken.to_string()).unwrap();
    assert!(
        SchemaCompatibility::can_read(&v1, &v2_no_default).is_err(),
        "a new field without a default cannot read old data: the check is not vacuous"
    );
}
