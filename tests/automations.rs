//! Automations: entity, run and timer events fire exactly when they should, with the
//! right diffs; timers are durable; the end-to-end example (an UPSERT_ENTITY run fires an
//! automation whose WEBHOOK run succeeds); exactly-once emission under SIGKILL (real
//! broker only).

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Dispatcher, Kafka, Setup, Topics};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};

/// One emitted trigger as read back.
#[derive(Debug, Clone)]
struct Emitted {
    automation: String,
    key: String,
    event: Value,
    timestamp_ms: i64,
}

fn automation(id: &str, event: Value, condition: Option<(&[&str], &str)>) -> Value {
    let mut trigger = json!({"type": "automation", "event": event});
    if let Some((exprs, comb)) = condition {
        trigger["condition"] = json!({"type": "JQ", "expressions": exprs, "combinator": comb});
    }
    json!({
        "identifier": id,
        "title": id,
        "trigger": trigger,
        "invocationMethod": {"type": "WEBHOOK", "url": "http://127.0.0.1:9/never",
                             "body": {"entity": "{{ .event.context.entityIdentifier }}"}},
        "publish": true
    })
}

fn write_dir(defs: &[Value]) -> std::path::PathBuf {
    let dir = common::scratch_dir().join("automations");
    std::fs::create_dir_all(&dir).unwrap();
    for d in defs {
        let id = d["identifier"].as_str().unwrap();
        std::fs::write(dir.join(format!("{id}.json")), d.to_string()).unwrap();
    }
    dir
}

/// The engine's topics of one test.
struct EngineTopics {
    t: Topics,
    timers: String,
}

async fn engine_topics(kafka: &Kafka, partitions: i32) -> EngineTopics {
    let t = kafka.topics(1).await;
    let timers = common::unique("timers");
    kafka.create_topic(&timers, partitions).await;
    if kafka.is_real() {
        kafka.create_topic(&t.entities, partitions).await;
    }
    EngineTopics { t, timers }
}

fn engine_config(kafka: &Kafka, e: &EngineTopics, dir: &Path, extra: &str) -> String {
    Setup::new(kafka, &e.t)
        .config(&format!(
            r#"
[automations]
dir = "{dir}"
timers_topic = "{timers}"
flush_interval = "50ms"
reload_interval = "200ms"
"#,
            dir = dir.display(),
            timers = e.timers,
        ))
        .config(extra)
        .toml()
}

fn start_engine(toml: &str) -> Dispatcher {
    Dispatcher::start_command(&["automations", "run"], toml, &[])
}

/// Wait until the engine logs that it owns `n` partitions ready.
fn wait_ready(d: &Dispatcher, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while d.logs().matches("automations partition ready").count() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "the engine never got {n} partitions ready:\n{}",
            d.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Read the triggers topic (`read_committed`) until `quiet` passes with nothing new.
async fn read_triggers(
    kafka: &Kafka,
    topic: &str,
    partitions: i32,
    quiet: Duration,
) -> Vec<Emitted> {
    let c: StreamConsumer = kafka
        .config()
        .set("group.id", common::unique("reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(quiet, c.recv()).await {
            Err(_) => return out,
            Ok(Err(e)) => eprintln!("reader of {topic}: {e}; continuing"),
            Ok(Ok(m)) => {
                let automation = m
                    .headers()
                    .and_then(|hs| {
                        hs.iter()
                            .find(|h| h.key == "switchyard-automation")
                            .and_then(|h| h.value)
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                    })
                    .unwrap_or_default();
                let event: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
                out.push(Emitted {
                    automation,
                    key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                    event,
                    timestamp_ms: m.timestamp().to_millis().unwrap_or(0),
                });
            }
        }
    }
}

/// Wait until `want` triggers are on the topic (or `timeout`), then a quiet second more
/// for any extra one.
async fn wait_triggers(kafka: &Kafka, topic: &str, want: usize, timeout: Duration) -> Vec<Emitted> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let got = read_triggers(kafka, topic, 1, Duration::from_millis(800)).await;
        if got.len() >= want || tokio::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn entity(status: &str) -> Vec<u8> {
    json!({"identifier": "x", "properties": {"status": status}})
        .to_string()
        .into_bytes()
}

fn fired(got: &[Emitted]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = got
        .iter()
        .map(|e| (e.automation.clone(), e.key.clone()))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entity_and_run_events_fire_exactly_when_they_should() {
    let kafka = Kafka::start();
    let e = engine_topics(&kafka, 1).await;
    let dir = write_dir(&[
        automation(
            "created",
            json!({"type": "ENTITY_CREATED", "blueprintIdentifier": "service"}),
            None,
        ),
        automation(
            "degraded",
            json!({"type": "ENTITY_UPDATED", "blueprintIdentifier": "service"}),
            Some((
                &[
                    ".diff.before.properties.status == \"Healthy\"",
                    ".diff.after.properties.status == \"Unhealthy\"",
                ],
                "and",
            )),
        ),
        automation(
            "a_or_b",
            json!({"type": "ENTITY_UPDATED", "blueprintIdentifier": "service"}),
            Some((
                &[
                    ".diff.after.properties.status == \"A\"",
                    ".diff.after.properties.status == \"B\"",
                ],
                "or",
            )),
        ),
        automation(
            "deleted",
            json!({"type": "ENTITY_DELETED", "blueprintIdentifier": "service"}),
            None,
        ),
        automation(
            "any_team",
            json!({"type": "ANY_ENTITY_CHANGE", "blueprintIdentifier": "team"}),
            None,
        ),
        automation(
            "not_boolean",
            json!({"type": "ENTITY_UPDATED", "blueprintIdentifier": "service"}),
            Some((&[".diff.after.properties.status"], "and")),
        ),
        {
            let mut off = automation(
                "disabled",
                json!({"type": "ENTITY_CREATED", "blueprintIdentifier": "service"}),
                None,
            );
            off["publish"] = json!(false);
            off
        },
        automation(
            "run_created",
            json!({"type": "RUN_CREATED", "actionIdentifier": "deploy"}),
            None,
        ),
        automation(
            "run_succeeded",
            json!({"type": "RUN_UPDATED", "actionIdentifier": "deploy"}),
            Some((&[".diff.after.status == \"SUCCESS\""], "and")),
        ),
        automation(
            "other_runs",
            json!({"type": "ANY_RUN_CHANGE", "actionIdentifier": "other"}),
            None,
        ),
        automation(
            "any_deploy",
            json!({"type": "ANY_RUN_CHANGE", "actionIdentifier": "deploy"}),
            None,
        ),
    ]);
    // Port's change-log shape, on a topic of its own.
    let changes = common::unique("changes");
    kafka.create_topic(&changes, 1).await;
    let mut d = start_engine(&engine_config(
        &kafka,
        &e,
        &dir,
        &format!("[automations]\nchanges_topic = \"{changes}\""),
    ));
    // entities (1 partition) + status (3 partitions) + changes (1)
    wait_ready(&d, 2 + e.t.status_partitions as usize);
    let k = |s: &str| Some(s.to_owned());
    kafka
        .produce_each(
            &e.t.entities,
            &[
                (k("service/a"), entity("Healthy")),
                (k("service/a"), entity("Unhealthy")),
                (k("service/a"), entity("A")),
                // The same value again: no change, nothing fires.
                (k("service/a"), entity("A")),
                (k("service/b"), entity("Healthy")),
                (k("team/x"), entity("any")),
            ],
        )
        .await;
    // A tombstone deletes service/a.
    {
        use rdkafka::producer::FutureRecord;
        let p = kafka.producer();
        p.send(
            FutureRecord::<str, [u8]>::to(&e.t.entities).key("service/a"),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    }
    let update = |run: &str, u: Value| {
        let mut base = json!({"runId": run, "seq": 1, "at": "2026-12-03T10:00:00.000Z",
                              "action": "deploy"});
        base.as_object_mut()
            .unwrap()
            .extend(u.as_object().unwrap().clone());
        (k(run), base.to_string().into_bytes())
    };
    kafka
        .produce_each(
            &e.t.status,
            &[
                update("r1", json!({"kind": "status", "status": "IN_PROGRESS"})),
                update("r1", json!({"kind": "log", "message": "working"})),
                update(
                    "r1",
                    json!({"kind": "status", "status": "SUCCESS", "summary": "done"}),
                ),
                // A run from a chain already at the hop limit: its fire is refused.
                update(
                    "auto-5-0123456789abcdef01234567",
                    json!({"kind": "status", "status": "IN_PROGRESS"}),
                ),
            ],
        )
        .await;
    kafka
        .produce_each(
            &changes,
            &[
                (
                    k("service/c1"),
                    json!({"action": "UPDATE", "resourceType": "entity",
                        "context": {"entity": "c1", "blueprint": "service"},
                        "diff": {"before": {"properties": {"status": "Healthy"}},
                                 "after": {"properties": {"status": "Unhealthy"}}},
                        "trigger": {"by": {"userId": "u1"}, "origin": "UI", "at": "2026-12-03T10:00:00Z"}})
                    .to_string()
                    .into_bytes(),
                ),
                (
                    k("p1"),
                    json!({"action": "CREATE", "resourceType": "run", "context": {"runId": "p1"},
                        "diff": {"before": null,
                                 "after": {"status": "IN_PROGRESS", "action": {"identifier": "deploy"}}},
                        "trigger": {"origin": "UI", "at": "2026-12-03T10:00:00Z"}})
                    .to_string()
                    .into_bytes(),
                ),
                // Not a change: counted, logged, skipped.
                (k("bad"), br#"{"action": "MOVE"}"#.to_vec()),
            ],
        )
        .await;
    let got = wait_triggers(&kafka, &e.t.triggers, 13, Duration::from_secs(60)).await;
    let want: Vec<(String, String)> = {
        let mut w: Vec<(String, String)> = [
            ("created", "service/a"),
            ("degraded", "service/a"),
            ("a_or_b", "service/a"),
            ("created", "service/b"),
            ("any_team", "team/x"),
            ("deleted", "service/a"),
            ("run_created", "r1"),
            ("run_succeeded", "r1"),
            ("any_deploy", "r1"),
            ("any_deploy", "r1"),
            ("degraded", "service/c1"),
            ("run_created", "p1"),
            ("any_deploy", "p1"),
        ]
        .iter()
        .map(|(a, k)| (a.to_string(), k.to_string()))
        .collect();
        w.sort();
        w
    };
    assert_eq!(fired(&got), want, "logs:\n{}", d.logs());
    // Diffs: before is null on create, after is null on delete.
    let one = |a: &str| {
        got.iter()
            .find(|e| e.automation == a && e.key != "service/c1" && e.key != "p1")
            .unwrap()
    };
    let created = &one("created").event;
    assert_eq!(created["event"]["diff"]["before"], Value::Null);
    assert_eq!(
        created["event"]["diff"]["after"]["properties"]["status"],
        "Healthy"
    );
    let degraded = &one("degraded").event;
    assert_eq!(
        degraded["event"]["diff"]["before"]["properties"]["status"],
        "Healthy"
    );
    assert_eq!(
        degraded["event"]["diff"]["after"]["properties"]["status"],
        "Unhealthy"
    );
    assert_eq!(degraded["event"]["context"]["entityIdentifier"], "a");
    assert_eq!(
        degraded["trigger"]["by"]["automation"]["identifier"],
        "degraded"
    );
    assert_eq!(degraded["action"]["invocationMethod"]["type"], "WEBHOOK");
    let deleted = &one("deleted").event;
    assert_eq!(deleted["event"]["diff"]["after"], Value::Null);
    assert_eq!(
        deleted["event"]["diff"]["before"]["properties"]["status"],
        "A"
    );
    let succeeded = &one("run_succeeded").event;
    assert_eq!(
        succeeded["event"]["diff"]["before"]["status"],
        "IN_PROGRESS"
    );
    assert_eq!(succeeded["event"]["diff"]["after"]["status"], "SUCCESS");
    assert_eq!(succeeded["event"]["context"]["runId"], "r1");
    let run_id = succeeded["run"]["id"].as_str().unwrap();
    assert!(run_id.starts_with("auto-1-"), "{run_id}");
    let logs = d.logs();
    assert!(
        logs.contains("automation condition in error") && logs.contains("not_boolean"),
        "the non-boolean condition is not reported:\n{logs}"
    );
    assert!(
        logs.contains("emission refused"),
        "the hop limit did not refuse:\n{logs}"
    );
    let metrics = reqwest::get(format!("{}/metrics", d.http_base()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "switchyard_automation_condition_errors_total{automation=\"not_boolean\"} 3",
        "switchyard_automation_fires_total{automation=\"created\"} 2",
        "switchyard_automation_fires_total{automation=\"any_deploy\"} 3",
        "switchyard_automation_hops_refused_total{automation=\"run_created\"} 1",
        "switchyard_automation_hops_refused_total{automation=\"any_deploy\"} 1",
        "switchyard_automation_bad_records_total{source=\"changes\"} 1",
        "switchyard_automations_loaded 11",
    ] {
        assert!(metrics.contains(line), "{line} not in:\n{metrics}");
    }
    d.terminate(Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_fire_once_survive_restarts_rearm_and_cancel() {
    let kafka = Kafka::start();
    let e = engine_topics(&kafka, 1).await;
    let dir = write_dir(&[automation(
        "expired",
        json!({"type": "TIMER_PROPERTY_EXPIRED", "blueprintIdentifier": "service",
               "propertyIdentifier": "expiresAt"}),
        None,
    )]);
    let toml = engine_config(&kafka, &e, &dir, "[automations]\nruns = false");
    let mut d = start_engine(&toml);
    wait_ready(&d, 1);
    let now = time::OffsetDateTime::now_utc();
    let at = |secs: i64| {
        (now + time::Duration::seconds(secs))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let ent = |due: &str| {
        json!({"identifier": "x", "properties": {"expiresAt": due}})
            .to_string()
            .into_bytes()
    };
    let k = |s: &str| Some(s.to_owned());
    let (d1, d2a, d2b, d3, d4) = (at(4), at(4), at(8), at(4), at(12));
    kafka
        .produce_each(
            &e.t.entities,
            &[
                (k("service/t1"), ent(&d1)),
                (k("service/t2"), ent(&d2a)),
                (k("service/t2"), ent(&d2b)), // re-armed later
                (k("service/t3"), ent(&d3)),
                (k("service/t4"), ent(&d4)), // comes due while the engine is down
            ],
        )
        .await;
    {
        use rdkafka::producer::FutureRecord;
        kafka
            .producer()
            .send(
                FutureRecord::<str, [u8]>::to(&e.t.entities).key("service/t3"),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    // t1 fires at its due time, t3 never (deleted), t2 not yet (moved).
    let got = wait_triggers(&kafka, &e.t.triggers, 1, Duration::from_secs(20)).await;
    assert_eq!(
        fired(&got),
        [("expired".into(), "service/t1".into())],
        "{}",
        d.logs()
    );
    let due1 = parse_ms(&d1);
    assert!(got[0].timestamp_ms >= due1, "fired before it was due");
    // Down across t4's due time (SIGKILL: no drain), then up again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    d.kill();
    let down_until = parse_ms(&d4) + 2000;
    while now_ms() < down_until {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut d = start_engine(&toml);
    wait_ready(&d, 1);
    let got = wait_triggers(&kafka, &e.t.triggers, 3, Duration::from_secs(30)).await;
    // Quiet a while longer: nothing fires twice.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got_later = read_triggers(&kafka, &e.t.triggers, 1, Duration::from_secs(1)).await;
    assert_eq!(
        got_later.len(),
        got.len(),
        "a timer fired again:\n{:?}",
        fired(&got_later)
    );
    assert_eq!(
        fired(&got),
        [
            ("expired".to_string(), "service/t1".to_string()),
            ("expired".into(), "service/t2".into()),
            ("expired".into(), "service/t4".into()),
        ],
        "{}",
        d.logs()
    );
    let t2 = got.iter().find(|e| e.key == "service/t2").unwrap();
    assert_eq!(
        t2.event["event"]["context"]["dueAt"],
        d2b.as_str(),
        "t2 was not re-armed"
    );
    assert!(t2.timestamp_ms >= parse_ms(&d2b));
    let t4 = got.iter().find(|e| e.key == "service/t4").unwrap();
    assert_eq!(
        t4.event["event"]["context"]["dueAt"],
        d4.as_str(),
        "t4 lost its original due time"
    );
    d.terminate(Duration::from_secs(30));
}

fn parse_ms(text: &str) -> i64 {
    let t =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).unwrap();
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

#[test]
fn validate_lists_every_problem_with_file_and_field_and_test_dry_runs() {
    let good = automation(
        "degraded",
        json!({"type": "ENTITY_UPDATED", "blueprintIdentifier": "service"}),
        Some((&[".diff.after.properties.status == \"Unhealthy\""], "and")),
    );
    let dir = write_dir(&[good]);
    std::fs::write(
        dir.join("zz-bad.json"),
        r#"{"identifier": "bad", "trigger": {"type": "automation", "event": {"type": "ENTITY_SOMETHING"}}, "invocationMethod": {"type": "WEBHOOK"}}"#,
    )
    .unwrap();
    let out = common::cmd()
        .args(["automations", "validate"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("zz-bad.json: trigger.event.type: \"ENTITY_SOMETHING\" is not one of"),
        "{err}"
    );
    std::fs::remove_file(dir.join("zz-bad.json")).unwrap();
    let out = common::cmd()
        .args(["automations", "validate"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 automations valid"));

    let event = dir.parent().unwrap().join("event.json");
    let mut ev = json!({"action": "UPDATE", "resourceType": "entity",
        "context": {"blueprint": "service", "entity": "checkout"},
        "diff": {"before": {"properties": {"status": "Healthy"}},
                 "after": {"properties": {"status": "Unhealthy"}}},
        "trigger": {"by": {"userId": "u1"}, "origin": "UI", "at": "2026-12-03T10:00:00Z"}});
    std::fs::write(&event, ev.to_string()).unwrap();
    let run_test = || {
        common::cmd()
            .args(["automations", "test", "--automation", "degraded", "--event"])
            .arg(&event)
            .arg("--dir")
            .arg(&dir)
            .output()
            .unwrap()
    };
    let out = run_test();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("fires"), "{text}");
    let json_start = text.find('{').unwrap();
    let trigger: Value = serde_json::from_str(&text[json_start..]).unwrap();
    assert_eq!(trigger["event"]["context"]["entityIdentifier"], "checkout");
    assert_eq!(
        trigger["trigger"]["by"]["automation"]["identifier"],
        "degraded"
    );
    ev["diff"]["after"]["properties"]["status"] = json!("Healthy");
    std::fs::write(&event, ev.to_string()).unwrap();
    let out = run_test();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("does not fire: the condition is false"));
}

/// The README's example, as shipped in `examples/automations/`: a run turns the service
/// Unhealthy through UPSERT_ENTITY, the automation fires, and its WEBHOOK run succeeds.
/// Registered-actions mode is on: the automation's trigger brings its own
/// invocationMethod, accepted because of the engine's MAC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upsert_fires_the_example_automation_whose_webhook_run_succeeds() {
    let kafka = Kafka::start();
    let e = engine_topics(&kafka, 1).await;
    let receiver = common::receiver::Receiver::start().await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/automations");
    let dir = common::scratch_dir().join("definitions");
    std::fs::create_dir_all(&dir).unwrap();
    let def = std::fs::read_to_string(root.join("definitions/service-unhealthy.json"))
        .unwrap()
        .replace("http://127.0.0.1:9000/deploy", &receiver.url("/deploy"));
    std::fs::write(dir.join("service-unhealthy.json"), def).unwrap();
    // The operator's actions: the status change that events may ask for.
    let actions = common::scratch_dir().join("actions.json");
    let set_status: Value =
        serde_json::from_slice(&std::fs::read(root.join("events/set-healthy.json")).unwrap())
            .unwrap();
    std::fs::write(
        &actions,
        json!({"set_service_status": {"invocationMethod": set_status["action"]["invocationMethod"]}})
            .to_string(),
    )
    .unwrap();
    let toml = engine_config(
        &kafka,
        &e,
        &dir,
        &format!(
            "[automations]\nenabled = true\n[actions]\nmode = \"registered\"\nfile = \"{}\"",
            actions.display()
        ),
    );
    let mut d = Dispatcher::start_with_config(&toml, &[]);
    wait_ready(&d, 1 + e.t.status_partitions as usize);
    let mut status = common::StatusLog::new(&kafka, &e.t);
    for name in ["set-healthy", "set-unhealthy"] {
        let mut ev: Value = serde_json::from_slice(
            &std::fs::read(root.join(format!("events/{name}.json"))).unwrap(),
        )
        .unwrap();
        // Registered mode: events name the action and carry inputs only.
        ev["action"]
            .as_object_mut()
            .unwrap()
            .remove("invocationMethod");
        let id = ev["run"]["id"].as_str().unwrap().to_owned();
        kafka
            .produce(
                &e.t.triggers,
                &[(Some(id.clone()), ev.to_string().into_bytes())],
            )
            .await;
        // One after the other: the second upsert must see the first's entity.
        status
            .wait_finished(
                if name == "set-healthy" { 1 } else { 3 },
                Duration::from_secs(60),
            )
            .await;
    }
    let auto_run = status
        .updates
        .iter()
        .map(|u| u.run_id.clone())
        .find(|r| r.starts_with("auto-1-"))
        .unwrap_or_else(|| panic!("no automation run on the status topic:\n{}", d.logs()));
    for run in [
        "set-checkout-healthy",
        "set-checkout-unhealthy",
        auto_run.as_str(),
    ] {
        let end = status.sole_terminal(run).await;
        assert_eq!(
            end.status,
            Some(switchyard::model::RunStatus::Success),
            "{run}: {end:?}\n{}",
            d.logs()
        );
    }
    let seen = receiver.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        seen[0].body,
        json!({"service": "checkout", "was": "Healthy", "now": "Unhealthy"})
    );
    assert_eq!(
        seen[0].headers.get("idempotency-key").map(String::as_str),
        Some(auto_run.as_str())
    );
    d.terminate(Duration::from_secs(30));
}

/// SIGKILL the engine three times while 5,000 entity changes flow: every qualifying
/// change emits exactly one trigger (read with read_committed), none is lost.
#[cfg(feature = "real-broker")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_exactly_once_emission_survives_three_sigkills() {
    use rdkafka::producer::FutureRecord;
    use std::collections::HashMap;
    const CHANGES: usize = 5000;
    const KEYS: usize = 250;
    let kafka = Kafka::start();
    assert!(
        kafka.is_real(),
        "exactly-once is checked on Apache Kafka only"
    );
    let e = engine_topics(&kafka, 3).await;
    let dir = write_dir(&[automation(
        "even",
        json!({"type": "ANY_ENTITY_CHANGE", "blueprintIdentifier": "svc"}),
        Some((&[".diff.after.properties.n % 2 == 0"], "and")),
    )]);
    let toml = engine_config(&kafka, &e, &dir, "[automations]\nruns = false");
    let mut d = start_engine(&toml);
    wait_ready(&d, 3);
    // The producer: 5,000 changes over about 10 s, each acknowledged with its offset.
    let producer = kafka.producer();
    let topic = e.t.entities.clone();
    let feed = tokio::spawn(async move {
        let mut sent = Vec::with_capacity(CHANGES);
        let started = tokio::time::Instant::now();
        for i in 0..CHANGES {
            let key = format!("svc/e{}", i % KEYS);
            let value =
                json!({"identifier": format!("e{}", i % KEYS), "properties": {"n": i}}).to_string();
            let delivery = producer
                .send(
                    FutureRecord::to(&topic).key(&key).payload(&value),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("delivered");
            sent.push((i, delivery.partition, delivery.offset));
            // About 250 a second: the stream lasts through the three kills.
            let due = started + Duration::from_millis(i as u64 * 4);
            tokio::time::sleep_until(due).await;
        }
        sent
    });
    // Each kill lands while the engine is emitting: after the current process has
    // fired at least once (and at least 3 s after the previous kill).
    let mut kills = 0;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !d.logs().contains("automation fired") {
            assert!(
                std::time::Instant::now() < deadline,
                "the engine fired nothing within a minute:\n{}",
                d.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        d.kill();
        kills += 1;
        d = start_engine(&toml);
    }
    let sent = feed.await.unwrap();
    assert_eq!(sent.len(), CHANGES);
    // Every change processed: the engine's group committed up to the end.
    let group = format!("{}.automations", e.t.group);
    let ends = kafka.high_watermarks(&e.t.entities, 3);
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        let committed = kafka.committed(&group, &e.t.entities, 3);
        if (0..3).all(|p| committed.get(&p).copied().unwrap_or(0) >= ends[&p]) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the engine did not commit to the end: committed {committed:?}, ends {ends:?}\n{}",
            d.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let want: HashMap<String, usize> = sent
        .iter()
        .filter(|(i, _, _)| i % 2 == 0)
        .map(|(i, p, o)| {
            let source = format!("{}/{p}/{o}", e.t.entities);
            (
                switchyard::automations::event::run_id("even", &source, 1),
                *i,
            )
        })
        .collect();
    let got = read_triggers(&kafka, &e.t.triggers, 1, Duration::from_secs(3)).await;
    let mut count: HashMap<String, usize> = HashMap::new();
    for t in &got {
        *count
            .entry(t.event["run"]["id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let duplicates = count.values().filter(|n| **n > 1).count();
    let lost = want.keys().filter(|r| !count.contains_key(*r)).count();
    let unexpected = count.keys().filter(|r| !want.contains_key(*r)).count();
    // What a read_uncommitted reader sees: the writes of transactions the kills cut
    // short are on the topic too, only never committed.
    let uncommitted = {
        let c: StreamConsumer = kafka
            .config()
            .set("group.id", common::unique("reader"))
            .set("isolation.level", "read_uncommitted")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&e.t.triggers, 0, Offset::Beginning)
            .unwrap();
        c.assign(&tpl).unwrap();
        let mut n = 0usize;
        while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(3), c.recv()).await {
            n += 1;
        }
        n
    };
    println!(
        "exactly-once: {CHANGES} changes, {} qualifying, {} triggers read_committed, \
         {duplicates} duplicated, {lost} lost, {unexpected} unexpected, {kills} SIGKILLs; \
         read_uncommitted sees {uncommitted} records (aborted transactions' writes included)",
        want.len(),
        got.len()
    );
    assert_eq!(want.len(), CHANGES / 2);
    assert_eq!((duplicates, lost, unexpected), (0, 0, 0));
    assert_eq!(got.len(), want.len());
    d.terminate(Duration::from_secs(30));
}

/// Definitions change without a restart: a file added to the directory, a record on the
/// definitions topic, its tombstone; a broken file keeps the previous set in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_reload_from_the_directory_and_the_topic() {
    let kafka = Kafka::start();
    let e = engine_topics(&kafka, 1).await;
    let defs_topic = common::unique("automations");
    kafka.create_topic(&defs_topic, 1).await;
    let created = |id: &str, bp: &str| {
        automation(
            id,
            json!({"type": "ENTITY_CREATED", "blueprintIdentifier": bp}),
            None,
        )
    };
    let dir = write_dir(&[created("on_service", "service")]);
    let toml = engine_config(
        &kafka,
        &e,
        &dir,
        &format!("[automations]\nruns = false\ntopic = \"{defs_topic}\""),
    );
    let mut d = start_engine(&toml);
    wait_ready(&d, 1);
    let k = |s: &str| Some(s.to_owned());
    let wait_log = |d: &Dispatcher, text: &str, n: usize| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while d.logs().matches(text).count() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "never logged {n}× {text:?}:\n{}",
                d.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    kafka
        .produce(&e.t.entities, &[(k("service/one"), entity("Healthy"))])
        .await;
    std::fs::write(
        dir.join("on_team.json"),
        created("on_team", "team").to_string(),
    )
    .unwrap();
    wait_log(&d, "automations reloaded", 1);
    kafka
        .produce(&e.t.entities, &[(k("team/x"), entity("Healthy"))])
        .await;
    kafka
        .produce(
            &defs_topic,
            &[
                (
                    k("on_svc2"),
                    created("on_svc2", "svc2").to_string().into_bytes(),
                ),
                (
                    k("broken"),
                    br#"{"identifier": "broken", "trigger": {}}"#.to_vec(),
                ),
            ],
        )
        .await;
    wait_log(&d, "automation loaded from the topic", 1);
    wait_log(&d, "trigger.type: expected", 1);
    kafka
        .produce(&e.t.entities, &[(k("svc2/y"), entity("Healthy"))])
        .await;
    // Fired before the tombstone goes out: the set changes between two changes.
    let got = wait_triggers(&kafka, &e.t.triggers, 3, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 3, "{:?}\n{}", fired(&got), d.logs());
    {
        use rdkafka::producer::FutureRecord;
        kafka
            .producer()
            .send(
                FutureRecord::<str, [u8]>::to(&defs_topic).key("on_svc2"),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    wait_log(&d, "automation deleted (tombstone)", 1);
    std::fs::write(dir.join("zz-broken.json"), "{ not json").unwrap();
    wait_log(&d, "automations not reloaded", 1);
    kafka
        .produce(
            &e.t.entities,
            &[
                (k("svc2/z"), entity("Healthy")),
                (k("service/two"), entity("Healthy")),
            ],
        )
        .await;
    let got = wait_triggers(&kafka, &e.t.triggers, 4, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = if got.len() == 4 {
        read_triggers(&kafka, &e.t.triggers, 1, Duration::from_secs(1)).await
    } else {
        got
    };
    assert_eq!(
        fired(&got),
        [
            ("on_service".to_string(), "service/one".to_string()),
            ("on_service".into(), "service/two".into()),
            ("on_svc2".into(), "svc2/y".into()),
            ("on_team".into(), "team/x".into()),
        ],
        "{}",
        d.logs()
    );
    assert!(
        d.logs().contains("zz-broken.json: not JSON"),
        "{}",
        d.logs()
    );
    d.terminate(Duration::from_secs(30));
}

/// `start_from = "latest"` (the default): a group's first start fires only on changes
/// from then on, and the changes before it still give the state (`diff.before`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_start_fires_from_the_end_with_the_state_from_before() {
    let kafka = Kafka::start();
    let e = engine_topics(&kafka, 1).await;
    let dir = write_dir(&[
        automation(
            "created",
            json!({"type": "ENTITY_CREATED", "blueprintIdentifier": "service"}),
            None,
        ),
        automation(
            "updated",
            json!({"type": "ENTITY_UPDATED", "blueprintIdentifier": "service"}),
            None,
        ),
    ]);
    let k = |s: &str| Some(s.to_owned());
    kafka
        .produce(&e.t.entities, &[(k("service/old"), entity("Healthy"))])
        .await;
    let mut d = start_engine(&engine_config(
        &kafka,
        &e,
        &dir,
        "[automations]\nruns = false",
    ));
    wait_ready(&d, 1);
    kafka
        .produce_each(
            &e.t.entities,
            &[
                (k("service/old"), entity("Unhealthy")),
                (k("service/new"), entity("Healthy")),
            ],
        )
        .await;
    let got = wait_triggers(&kafka, &e.t.triggers, 2, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = if got.len() == 2 {
        read_triggers(&kafka, &e.t.triggers, 1, Duration::from_secs(1)).await
    } else {
        got
    };
    assert_eq!(
        fired(&got),
        [
            ("created".to_string(), "service/new".to_string()),
            ("updated".into(), "service/old".into()),
        ],
        "{}",
        d.logs()
    );
    let updated = got.iter().find(|t| t.automation == "updated").unwrap();
    assert_eq!(
        updated.event["event"]["diff"]["before"]["properties"]["status"],
        "Healthy"
    );
    assert!(d
        .logs()
        .contains("the group's first start on this partition"));
    d.terminate(Duration::from_secs(30));
}

/// The engine scales as a consumer group: a second member takes partitions over (its
/// producers fence the first member's for them) and every change still fires once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_share_the_partitions_and_each_change_fires_once() {
    const CHANGES: usize = 200;
    let kafka = Kafka::start();
    let e = engine_topics(&kafka, 4).await;
    let entities = common::unique("entities4");
    kafka.create_topic(&entities, 4).await;
    let dir = write_dir(&[automation(
        "any",
        json!({"type": "ANY_ENTITY_CHANGE", "blueprintIdentifier": "service"}),
        None,
    )]);
    let toml = engine_config(
        &kafka,
        &e,
        &dir,
        &format!("[automations]\nruns = false\nentities_topic = \"{entities}\""),
    );
    let mut a = start_engine(&toml);
    wait_ready(&a, 4);
    let mut b = start_engine(&toml);
    wait_ready(&b, 1);
    let records: Vec<(Option<String>, Vec<u8>)> = (0..CHANGES)
        .map(|i| {
            (
                Some(format!("service/s{}", i % 40)),
                json!({"identifier": format!("s{}", i % 40), "properties": {"n": i}})
                    .to_string()
                    .into_bytes(),
            )
        })
        .collect();
    kafka.produce(&entities, &records).await;
    wait_triggers(&kafka, &e.t.triggers, CHANGES, Duration::from_secs(60)).await;
    // A quiet second more: any duplicate would show.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = read_triggers(&kafka, &e.t.triggers, 1, Duration::from_secs(1)).await;
    let mut ns: Vec<i64> = got
        .iter()
        .map(|t| {
            t.event["event"]["diff"]["after"]["properties"]["n"]
                .as_i64()
                .unwrap()
        })
        .collect();
    ns.sort();
    assert_eq!(
        ns,
        (0..CHANGES as i64).collect::<Vec<_>>(),
        "every change fires once\nA:\n{}\nB:\n{}",
        a.logs(),
        b.logs()
    );
    for (name, d) in [("first", &a), ("second", &b)] {
        assert!(
            d.logs().contains("automation fired"),
            "the {name} member fired nothing:\n{}",
            d.logs()
        );
    }
    a.terminate(Duration::from_secs(30));
    b.terminate(Duration::from_secs(30));
}
