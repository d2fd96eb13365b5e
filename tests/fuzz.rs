//! Fuzzing of everything that reads event bytes: the JSON, Avro and Port decoders and
//! template rendering. `cargo fuzz` needs a nightly toolchain, so these run on stable as
//! proptest properties over arbitrary bytes (and byte mutations of valid inputs), plus a
//! committed regression corpus in `tests/fuzz/<target>/` that every `cargo test` replays.
//!
//! `SWITCHYARD_FUZZ_CASES` sets the cases per target (default 512); a long run:
//! `SWITCHYARD_FUZZ_CASES=200000 cargo test --release --test fuzz -- --nocapture`.
//! A failing input is shrunk by proptest; add it to the corpus directory to keep it.

use std::path::Path;
use std::time::Instant;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use switchyard::codec::avro::{check_datum, encode_trigger, TRIGGER_SCHEMA};
use switchyard::model::TriggerRecord;
use switchyard::template::{needs_sandbox, Context, Renderer};

fn cases() -> u32 {
    std::env::var("SWITCHYARD_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
}

fn record(payload: &[u8]) -> TriggerRecord {
    TriggerRecord {
        topic: "t".into(),
        partition: 0,
        offset: 0,
        key: None,
        payload: Some(payload.to_vec()),
        headers: Vec::new(),
        timestamp_ms: None,
    }
}

/// The JSON trigger decoder: any bytes give an event or a named problem.
fn json_target(bytes: &[u8]) {
    match switchyard::codec::decode_json(bytes) {
        Ok(e) => assert!(!e.run.id.is_empty()),
        Err((bad, _)) => assert!(!bad.to_string().is_empty()),
    }
}

/// The Avro pre-check, then apache-avro only on what the check accepts (as the codec
/// does): neither may abort, and nothing is reserved beyond the record's size.
fn avro_target(bytes: &[u8]) {
    let schema = apache_avro::Schema::parse_str(TRIGGER_SCHEMA).unwrap();
    if check_datum(&schema, bytes).is_ok() {
        let _ = apache_avro::from_avro_datum(&schema, &mut &bytes[..], None);
    }
}

/// Port's envelope decoder (signature, decryption, mapping input).
fn port_target(bytes: &[u8]) {
    let _ = switchyard::port::envelope::decode(bytes, &record(bytes), "secret", None);
}

/// Template text: splitting, the sandbox decision, and in-process rendering of what
/// stays in-process (plain paths). Programs the sandbox would take are only compiled
/// (bounded to 64 bytes, as deep nesting is the sandbox's business).
fn template_target(text: &str) {
    let ctx = Context::plain(&serde_json::json!({"inputs": {"a": [1, {"b": "c"}], "s": "x"}}));
    let r = Renderer::new();
    let value = serde_json::json!({"x": text, text: 1});
    if !needs_sandbox(&value) {
        let _ = r.render(&value, &ctx, "invocationMethod");
    } else if text.len() <= 64 {
        let _ = r.check(text);
    }
}

/// Replay every file in `tests/fuzz/<name>/` through `target`; returns how many.
fn replay(name: &str, target: impl Fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz")
        .join(name);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        target(&std::fs::read(&path).unwrap());
        n += 1;
    }
    assert!(n > 0, "the {name} corpus is empty");
    n
}

fn run(name: &str, strategy: impl Strategy<Value = Vec<u8>>, target: impl Fn(&[u8])) {
    let started = Instant::now();
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&strategy, |bytes| {
            target(&bytes);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let corpus = replay(name, &target);
    println!(
        "fuzz {name}: {} cases in {:.1} s, {corpus} corpus inputs, no crash",
        cases(),
        started.elapsed().as_secs_f64()
    );
}

/// Arbitrary bytes, and byte flips of `seeds` (so the decoders get past their first
/// checks).
fn bytes_and_mutations(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let mutated = (
        0..seeds.len(),
        proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
    )
        .prop_map(move |(i, flips)| {
            let mut s = seeds[i].clone();
            for (at, b) in flips {
                if !s.is_empty() {
                    let n = s.len();
                    s[at % n] = b;
                }
            }
            s
        });
    prop_oneof![proptest::collection::vec(any::<u8>(), 0..512), mutated]
}

fn event() -> serde_json::Value {
    serde_json::json!({"run": {"id": "r_1"}, "action": {"identifier": "a",
        "invocationMethod": {"type": "WEBHOOK", "url": "https://x/{{ .inputs.a }}"}},
        "inputs": {"a": [1, 2.5, "s", null, true, {"b": {}}]}, "orderingKey": "k"})
}

#[test]
fn fuzz_json_decoder() {
    let seed = serde_json::to_vec(&event()).unwrap();
    run("json", bytes_and_mutations(vec![seed]), json_target);
}

#[test]
fn fuzz_avro_decoder() {
    let framed = encode_trigger(&event(), 1).unwrap();
    run(
        "avro",
        bytes_and_mutations(vec![framed[5..].to_vec()]),
        avro_target,
    );
}

#[test]
fn fuzz_port_decoder() {
    let seed =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/port/envelope.json"))
            .unwrap();
    run("port", bytes_and_mutations(vec![seed]), port_target);
}

#[test]
fn fuzz_template_rendering() {
    let seeds = [
        "{{ .inputs.a[1].b }}",
        "x{{ .inputs[\"s\"] }}y{{ . }}",
        "{{ {a: {b: \"}}\"}} }}",
        "{{ .inputs.a | map(tostring) | join(\",\") }}",
    ]
    .map(|s| s.as_bytes().to_vec())
    .to_vec();
    let strategy = prop_oneof![
        bytes_and_mutations(seeds),
        "\\{\\{[ .\\[\\]\"a-z0-9|(){}]{0,40}\\}\\}".prop_map(String::into_bytes),
    ];
    run("template", strategy, |b| {
        template_target(&String::from_utf8_lossy(b))
    });
}
