//! The Avro wire format on the triggers and status topics, with the bundled schemas and
//! with a schema registry.

mod common;

use std::time::Duration;

use common::receiver::Receiver;
use common::registry::Registry;
use common::*;
use switchyard::codec::avro::{encode_trigger, frame, Codec};
use switchyard::config::{AvroConfig, Format};
use switchyard::model::{RunStatus, RunUpdate};

const WAIT: Duration = Duration::from_secs(60);
const AVRO: &str = "triggers_format = \"avro\"\nstatus_format = \"avro\"\n";

/// The test configuration with both topics in Avro, plus `extra`.
fn avro_config(kafka: &Kafka, t: &Topics, extra: &str) -> String {
    Setup::new(kafka, t)
        .config(&format!("[kafka]\n{AVRO}"))
        .config(extra)
        .toml()
}

/// Read `n` status records and decode them (either format) with `codec`.
async fn updates(kafka: &Kafka, t: &Topics, n: usize, codec: &Codec) -> Vec<(Vec<u8>, RunUpdate)> {
    let mut out = Vec::new();
    for r in read_records(kafka, &t.status, t.status_partitions, n, WAIT).await {
        let bytes = r.payload.unwrap();
        let u = codec
            .decode_update(&bytes)
            .await
            .expect("a readable run update");
        out.push((bytes, u));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_triggers_and_run_updates_with_the_bundled_schemas() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let rx = Receiver::start().await;
    let _d = Dispatcher::start_with_config(&avro_config(&kafka, &t, ""), &[]);
    let good = encode_trigger(&webhook_event("r_avro", &rx.url("/ok"), true), 1).unwrap();
    kafka
        .produce(
            &t.triggers,
            &[
                (None, good),
                (None, vec![0, 0, 0, 0, 1, 0xff, 0xff, 0xff]),
                (
                    None,
                    serde_json::to_vec(&webhook_event("r_json", &rx.url("/ok"), true)).unwrap(),
                ),
            ],
        )
        .await;
    let dlq = read_dlq(&kafka, &t, 2, WAIT).await;
    for d in &dlq {
        assert_eq!(d.headers["switchyard-error-class"], "avro");
        println!("DLQ: {}", d.headers["switchyard-error"]);
    }
    let errors: Vec<&str> = dlq
        .iter()
        .map(|d| d.headers["switchyard-error"].as_str())
        .collect();
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("unreadable Avro record: schema id 1:")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e
            .starts_with("unreadable Avro record: expected the Avro wire format (magic byte 0")),
        "{errors:?}"
    );
    assert_eq!(kafka.wait_committed(&t, 3, WAIT).await, 3);

    // The run went through: the receiver got the rendered body.
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].body["version"], "1.4.2");
    // Its updates are Avro, framed with the bundled run-update schema id (3: v2).
    let codec = Codec::new(
        &AvroConfig::default(),
        Format::Avro,
        Format::Avro,
        &t.status,
    );
    // One record: the run finished within `dispatch.in_progress_after`, so its terminal
    // update is its only one, and it carries the response.
    let ups = updates(&kafka, &t, 1, &codec).await;
    for (bytes, _) in &ups {
        assert_eq!(&bytes[..5], &[0, 0, 0, 0, 3]);
    }
    assert!(
        ups.iter().any(|(_, u)| u.run_id == "r_avro"
            && u.status == Some(RunStatus::Success)
            && u.response.is_some()),
        "{ups:?}"
    );
}

/// With a registry: a trigger written with a newer writer schema (an added field) is read
/// with the bundled reader schema, the writer schema is fetched once by id, and the
/// run-update schema is registered under `{status topic}-value`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_with_a_schema_registry_and_schema_evolution() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let rx = Receiver::start().await;
    let registry = Registry::start().await;
    // v2 of the trigger schema: v1 plus a trailing `priority` string.
    let mut v2: serde_json::Value =
        serde_json::from_str(switchyard::codec::avro::TRIGGER_SCHEMA).unwrap();
    v2["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "priority", "type": "string", "default": "normal"}));
    let v2_id = registry.add(&format!("{}-value", t.triggers), &v2.to_string());
    let cfg = avro_config(
        &kafka,
        &t,
        &format!("[avro]\nregistry_url = \"{}\"\n", registry.url()),
    );
    let _d = Dispatcher::start_with_config(&cfg, &[]);
    let records: Vec<_> = (0..3)
        .map(|n| {
            // A v1 datum followed by the v2 field is a v2 datum (Avro records are their
            // fields in order): "high" is a zigzag length 4 (0x08) and the bytes.
            let v1 = encode_trigger(
                &webhook_event(&format!("r_reg_{n}"), &rx.url("/ok"), true),
                0,
            )
            .unwrap();
            let mut datum = v1[5..].to_vec();
            datum.push(0x08);
            datum.extend_from_slice(b"high");
            (None, frame(v2_id, &datum))
        })
        .collect();
    kafka.produce(&t.triggers, &records).await;
    rx.wait_requests(3, WAIT).await;
    assert_eq!(kafka.wait_committed(&t, 3, WAIT).await, 3);

    let status_subject = format!("{}-value", t.status);
    let (fetches, update_id) = {
        let s = registry.state.lock().unwrap();
        let id = s
            .registrations
            .iter()
            .find(|(subject, _)| *subject == status_subject)
            .map(|(_, id)| *id)
            .expect("run-update schema registered under {status}-value");
        (s.fetches.clone(), id)
    };
    println!(
        "registry: writer schema fetches {fetches:?}; run updates registered as id {update_id}"
    );
    assert_eq!(fetches, vec![v2_id], "fetched once, then cached");
    let codec = Codec::new(
        &AvroConfig {
            registry_url: Some(registry.url()),
            ..AvroConfig::default()
        },
        Format::Avro,
        Format::Avro,
        &t.status,
    );
    // One record a run (each finished within `dispatch.in_progress_after`).
    let ups = updates(&kafka, &t, 3, &codec).await;
    for (bytes, _) in &ups {
        assert_eq!(&bytes[1..5], &update_id.to_be_bytes());
    }
    let done = ups
        .iter()
        .filter(|(_, u)| u.status == Some(RunStatus::Success))
        .count();
    assert_eq!(done, 3);
}

/// A 45-byte-class record announcing 500 million array entries is bad input, found
/// before apache-avro reserves anything: FAILURE on the run, DLQ class `avro`, and the
/// partition moves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_avro_record_announcing_huge_blocks_is_bad_input() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let rx = Receiver::start().await;
    let _d = Dispatcher::start_with_config(&avro_config(&kafka, &t, ""), &[]);
    // One key per object, so that the encoding's map order is fixed.
    let event = |items: usize| {
        let ev = serde_json::json!({"run": {"id": "r_avro_bomb"},
            "action": {"identifier": "a", "invocationMethod": {"type": "WEBHOOK"}},
            "inputs": {"zz": vec![true; items]}});
        encode_trigger(&ev, 1).unwrap()
    };
    // The byte that holds the array's count: where the one- and two-item encodings differ.
    let (one, two) = (event(1), event(2));
    let at = one.iter().zip(&two).position(|(a, b)| a != b).unwrap();
    assert_eq!((one[at], two[at]), (2, 4), "zigzag counts 1 and 2");
    let mut bomb = one[..at].to_vec();
    let mut v: u64 = 500_000_000 << 1;
    while v >= 0x80 {
        bomb.push((v as u8) | 0x80);
        v >>= 7;
    }
    bomb.push(v as u8);
    bomb.extend_from_slice(&one[at + 1..]);
    let fine = encode_trigger(&webhook_event("r_avro_after", &rx.url("/ok"), true), 1).unwrap();
    kafka
        .produce(&t.triggers, &[(None, bomb), (None, fine)])
        .await;
    let dlq = read_dlq(&kafka, &t, 1, WAIT).await;
    assert_eq!(dlq[0].headers["switchyard-error-class"], "avro");
    let error = &dlq[0].headers["switchyard-error"];
    assert!(
        error.contains("a block of 500000000 items, but only"),
        "{error}"
    );
    assert_eq!(kafka.wait_committed(&t, 2, WAIT).await, 2);
    assert_eq!(rx.count(), 1, "the next record was dispatched");
    println!("avro bomb: {error}");
}
