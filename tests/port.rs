//! Port compatibility end to end: signed agent envelopes on a `port`-format runs topic,
//! a changelog topic, a webhook receiver that checks signatures over the raw bytes, and a
//! fake of Port's API that must see the agent's calls, in the agent's order, with its
//! bodies. Runs against the mock cluster and, in `.ci/run`, against Apache Kafka.

mod common;

use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

use common::port_api::{envelope, hmac_b64, now, port_signed_with, summary, FakePort};
use common::receiver::{Receiver, Seen};
use common::*;

/// A client secret of 32+ bytes (AES-256 uses its first 32).
const SECRET: &str = "port-client-secret-0123456789abcdef!";
const CLIENT_ID: &str = "switchyard-e2e";

/// Sign a message as Port does, with the test's client secret.
fn port_signed(msg: Value) -> Value {
    port_signed_with(SECRET, msg)
}

/// The request the receiver got for a run (by the body's context.runId).
fn request_of(receiver: &Receiver, run: &str) -> Seen {
    receiver
        .requests()
        .into_iter()
        .find(|r| r.body.pointer("/context/runId").and_then(Value::as_str) == Some(run))
        .unwrap_or_else(|| panic!("no request for {run}"))
}

/// The receiver's check: the signature covers the raw bytes it received.
fn assert_signed_over_raw_bytes(seen: &Seen) {
    let ts = &seen.headers["x-port-timestamp"];
    let want = hmac_b64(SECRET, &[ts.as_bytes(), b".", &seen.raw].concat());
    assert_eq!(
        seen.headers["x-port-signature"], want,
        "signature over the exact bytes"
    );
    assert!((now() - ts.parse::<i64>().unwrap()).abs() < 120);
}

/// Publish one signed message and read the status topic until its run finished.
async fn dispatch_one(
    kafka: &Kafka,
    t: &Topics,
    run: &str,
    m: &Value,
    timeout: Duration,
) -> StatusLog {
    kafka.produce(&t.triggers, &[record(Some(run), m)]).await;
    let mut status = StatusLog::new(kafka, t);
    status
        .wait_until(timeout, &format!("{run} finished"), |u| {
            StatusLog::finished(u) >= 1
        })
        .await;
    status
}

fn dispatcher_config(
    kafka: &Kafka,
    t: &Topics,
    port: &FakePort,
    changelog: &str,
    extra: &str,
) -> String {
    config_toml(
        kafka,
        t,
        &format!(
            r#"
[port]
client_id = "{CLIENT_ID}"
client_secret = {{ env = "SWITCHYARD_TEST_PORT_SECRET" }}
api_url = "{api}"

[[kafka.inputs]]
topic = "{changelog}"
format = "port"

[backends.webhook.retry]
max_attempts = 1
{extra}
"#,
            api = port.url()
        ),
    )
}

fn start(toml: &str) -> Dispatcher {
    Dispatcher::start_with_config(
        toml,
        &[
            ("SWITCHYARD_TEST_PORT_SECRET", SECRET),
            ("SWITCHYARD_KAFKA__TRIGGERS_FORMAT", "port"),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn signed_envelopes_become_signed_webhooks_and_the_agents_port_api_calls() {
    let kafka = Kafka::start();
    let t = kafka.topics(2).await;
    let changelog = unique("changelog");
    kafka.create_topic(&changelog, 1).await;
    let receiver = Receiver::start().await;
    let port = FakePort::start(CLIENT_ID, SECRET).await;
    // Port is down for the first reports: they are retried, and nothing is lost.
    port.fail_next(3, 503);
    let _d = start(&dispatcher_config(&kafka, &t, &port, &changelog, ""));

    let mut tampered = port_signed(envelope("r_tampered", &receiver.url("/deploy"), true));
    tampered["payload"]["properties"]["version"] = json!("6.6.6");
    let mut not_for_agent = envelope("r_direct", &receiver.url("/direct"), true);
    not_for_agent["payload"]["action"]["invocationMethod"]["agent"] = json!(false);
    let node = {
        let mut m = envelope("wfnr_node1", &receiver.url("/node"), true);
        m["payload"]["action"]["invocationMethod"]["headers"] = json!({"X-Node": "1"});
        port_signed(m)
    };
    let runs = [
        port_signed(envelope("r_sync", &receiver.url("/deploy"), true)),
        port_signed(envelope(
            "r_async",
            &receiver.url("/queue?status=202"),
            false,
        )),
        port_signed(envelope(
            "r_fail",
            &receiver.url("/deploy?status=500"),
            true,
        )),
        tampered,
        not_for_agent,
        node,
    ];
    let records: Vec<_> = runs
        .iter()
        .map(|m| record(m["context"]["runId"].as_str(), m))
        .collect();
    kafka.produce(&t.triggers, &records).await;
    let change = json!({"action": "UPDATE", "resourceType": "entity", "status": "SUCCESS",
        "trigger": {"by": {"orgId": "org_T", "userId": "u@clients"}, "at": "2026-11-28T10:00:00.000Z", "origin": "API"},
        "context": {"entity": "vm-1", "blueprint": "vm"},
        "diff": {"before": {"identifier": "vm-1"}, "after": {"identifier": "vm-1", "title": "VM 1"}},
        "changelogDestination": {"type": "WEBHOOK", "agent": true, "url": receiver.url("/changes")}});
    kafka
        .produce(&changelog, &[record(Some("vm-1"), &change)])
        .await;

    let mut status = StatusLog::new(&kafka, &t);
    status
        .wait_until(Duration::from_secs(60), "4 finished runs", |u| {
            StatusLog::finished(u) >= 4
        })
        .await;
    // Every run's last Port call is in: the closing log, or the FAILURE.
    port.wait_until(
        Duration::from_secs(60),
        "the reports of every run",
        |calls| {
            let last = |run: &str| {
                calls
                    .iter()
                    .rfind(|c| c.path.contains(run))
                    .map(|c| c.body.clone())
            };
            last("r_sync")
                .is_some_and(|b| b["message"] == "Port agent finished processing the action run")
                && last("r_async").is_some_and(|b| {
                    b["message"] == "Port agent finished processing the action run"
                })
                && last("r_fail").is_some_and(|b| b["status"] == "FAILURE")
                && last("wfnr_node1").is_some_and(|b| {
                    b["logs"][0]["message"]
                        == "Port agent finished processing the workflow node run"
                })
        },
    )
    .await;

    // The webhook calls: signed over the raw bytes, the whole message as the body
    // (signature headers removed, `headers: {}` kept).
    for run in ["r_sync", "r_async", "r_fail", "wfnr_node1"] {
        let seen = request_of(&receiver, run);
        assert_signed_over_raw_bytes(&seen);
        assert_eq!(seen.body["headers"], json!({}), "{run}");
        assert_eq!(seen.headers["idempotency-key"], run);
    }
    let sync = request_of(&receiver, "r_sync");
    let mut sent = runs[0].clone();
    sent["headers"] = json!({});
    assert_eq!(sync.body, sent, "the whole verified message is forwarded");
    assert!(
        receiver.requests().iter().all(|r| r.path != "/direct"),
        "a message not for an agent is not sent"
    );
    let changes: Vec<_> = receiver
        .requests()
        .into_iter()
        .filter(|r| r.path == "/changes")
        .collect();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].body, change);
    assert_signed_over_raw_bytes(&changes[0]);

    // Port API calls, in the agent's order and with its bodies.
    let received = "log An action message has been received";
    let preparing = "log Preparing the payload for the request";
    let sending = "log Sending the request";
    let finished = "log Port agent finished processing the action run";
    assert_eq!(
        summary(&port.calls_for("r_sync")),
        vec![
            received,
            preparing,
            sending,
            "log Action invocation has completed successfully with status code: 200",
            "log Reporting the run response",
            "response {\"ok\":true,\"path\":\"/deploy\"}",
            "log The run response was reported successfully ",
            "run {\"status\":\"SUCCESS\"}",
            finished,
        ]
    );
    assert_eq!(
        summary(&port.calls_for("r_async")),
        vec![
            received,
            preparing,
            sending,
            "log Action invocation has completed successfully with status code: 202",
            finished,
        ],
        "async: no status, the run stays IN_PROGRESS for its service"
    );
    assert_eq!(
        summary(&port.calls_for("r_fail")),
        vec![
            received,
            preparing,
            sending,
            "log Action invocation failed with status code: 500 and response: scripted failure",
            "log Reporting the run response",
            "response \"scripted failure\"",
            "log The run response was reported successfully ",
            "run {\"status\":\"FAILURE\",\"summary\":\"Failed to invoke the webhook with status code: 500. Response: scripted failure\"}",
        ]
    );
    // T-IN-01: a message whose signature fails is not executed and not reported to Port
    // (an unauthenticated message causes no authenticated write); it goes to the DLQ.
    assert!(port.calls_for("r_tampered").is_empty());
    assert!(status.of("r_tampered").is_empty());
    // The node run reports through the node endpoints.
    let node_calls = port.calls_for("wfnr_node1");
    assert!(node_calls
        .iter()
        .all(|c| c.path.starts_with("/v1/workflows/nodes/runs/wfnr_node1")));
    assert_eq!(
        node_calls[0].body,
        json!({"logs": [{"level": "INFO", "message": "A workflow node run has been received"}]})
    );
    let done = node_calls.iter().find(|c| c.method == "PATCH").unwrap();
    assert_eq!(
        done.body,
        json!({"status": "COMPLETED", "result": "SUCCESS",
               "output": {"response": {"status": 200, "data": {"ok": true, "path": "/node"}}}})
    );
    // Nothing about the changelog delivery or the skipped message reached Port.
    assert!(port
        .calls()
        .iter()
        .all(|c| !c.path.contains("cl_") && !c.path.contains("r_direct")));
    assert_eq!(port.refused(), 3, "the outage was hit and ridden out");
    assert_eq!(port.tokens_issued(), 1, "the token is cached");

    // The status topic is the source of truth, whatever Port said.
    assert_eq!(
        status.sole_terminal("r_sync").await.status,
        Some(switchyard::model::RunStatus::Success)
    );
    assert_eq!(
        status.sole_terminal("r_fail").await.status,
        Some(switchyard::model::RunStatus::Failure)
    );
    assert!(status.terminal("r_async").is_empty());
    assert!(status.of("r_direct").is_empty(), "skipped: no run updates");
    let delivery = status
        .updates
        .iter()
        .find(|u| u.run_id.starts_with("cl_") && u.is_terminal())
        .expect("the changelog delivery finished");
    assert_eq!(delivery.status, Some(switchyard::model::RunStatus::Success));
    let dlq = read_dlq(&kafka, &t, 2, Duration::from_secs(30)).await;
    let mut classes: Vec<_> = dlq
        .iter()
        .map(|d| d.headers["switchyard-error-class"].clone())
        .collect();
    classes.sort();
    assert_eq!(classes, ["http_status", "signature"]);
    // Every offset completed, the skipped message's included.
    let committed = kafka.wait_committed(&t, 6, Duration::from_secs(30)).await;
    assert_eq!(committed, 6);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while kafka.committed_total(&t.group, &changelog, 1) < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "changelog offset not committed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Encrypt as Port does for an `aes256-gcm` input: base64(IV(16) | ciphertext | tag).
fn port_encrypt(plain: &str, iv: [u8; 16]) -> String {
    use aes_gcm::aead::consts::U16;
    use aes_gcm::aead::{Aead, KeyInit};
    let cipher =
        aes_gcm::AesGcm::<aes_gcm::aes::Aes256, U16>::new_from_slice(&SECRET.as_bytes()[..32])
            .unwrap();
    let sealed = cipher
        .encrypt(aes_gcm::Nonce::from_slice(&iv), plain.as_bytes())
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode([&iv[..], &sealed].concat())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_mapping_file_shapes_the_request_decrypts_and_reports() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let changelog = unique("changelog");
    kafka.create_topic(&changelog, 1).await;
    let receiver = Receiver::start().await;
    let port = FakePort::start(CLIENT_ID, SECRET).await;
    let mapping = scratch_dir().join("control_the_payload_config.json");
    // First match wins: the tf entry for trigger_tf_run, the catch-all for the rest.
    std::fs::write(
        &mapping,
        json!([
            {"enabled": ".action == \"trigger_tf_run\"",
             "url": ".payload.action.invocationMethod.url + \"/api/v2/runs\"",
             "method": "\"PATCH\"",
             "headers": {"Authorization": "\"Bearer \" + env.SWITCHYARD_TEST_TF_TOKEN",
                         "X-Run": ".context.runId"},
             "query": {"dry_run": "\"false\"", "ws": ".payload.properties.workspace"},
             "body": {"data": {"type": "\"runs\"", "workspace": ".payload.properties.workspace",
                               "api_key": ".payload.properties.api_key", "broken": ".payload.properties.workspace + 1"}},
             "report": {"status": "if .response.statusCode == 201 then \"SUCCESS\" else \"FAILURE\" end",
                        "link": ".response.json.links.self",
                        "summary": "\"tf run \" + .response.json.data.id",
                        "externalRunId": ".response.json.data.id"},
             "fieldsToDecryptPaths": ["payload.properties.api_key"]},
            {"enabled": true, "url": "\"http://127.0.0.1:9/never\""}
        ])
        .to_string(),
    )
    .unwrap();
    let toml = merge_config(
        &dispatcher_config(&kafka, &t, &port, &changelog, ""),
        &format!("[port]\nmapping_file = \"{}\"\n", mapping.display()),
    );
    let body = r#"{"data": {"id": "run-77"}, "links": {"self": "https://tf.example/runs/run-77"}}"#;
    let url = receiver.url("/tf");
    let mut m = envelope("r_tf", &url, false);
    m["action"] = json!("trigger_tf_run");
    m["payload"]["properties"] =
        json!({"workspace": "ws-9", "api_key": port_encrypt("tf-api-key-SECRET", [3; 16])});
    let m = port_signed(m);
    let _d = Dispatcher::start_with_config(
        &toml,
        &[
            ("SWITCHYARD_TEST_PORT_SECRET", SECRET),
            ("SWITCHYARD_KAFKA__TRIGGERS_FORMAT", "port"),
            ("SWITCHYARD_TEST_TF_TOKEN", "tf-token-123"),
        ],
    );
    receiver.set_default_status(201);
    receiver.set_default_body(body);
    let mut status = dispatch_one(&kafka, &t, "r_tf", &m, Duration::from_secs(60)).await;
    let seen = receiver
        .requests()
        .into_iter()
        .find(|r| r.path == "/tf/api/v2/runs")
        .expect("the mapped request");
    assert_eq!(seen.method, "PATCH");
    assert_eq!(
        seen.headers["authorization"], "Bearer tf-token-123",
        "env.X in a leaf"
    );
    assert_eq!(seen.headers["x-run"], "r_tf");
    assert_eq!(seen.query, "dry_run=false&ws=ws-9");
    assert_eq!(
        seen.body,
        json!({"data": {"type": "runs", "workspace": "ws-9", "api_key": "tf-api-key-SECRET", "broken": null}}),
        "leaves evaluated, the secret input decrypted, a jq error is null"
    );
    assert_signed_over_raw_bytes(&seen);
    let done = status.sole_terminal("r_tf").await;
    assert_eq!(
        done.status,
        Some(switchyard::model::RunStatus::Success),
        "report.status: 201 is SUCCESS, async or not"
    );
    assert_eq!(
        done.link.as_deref(),
        Some(&["https://tf.example/runs/run-77".to_owned()][..])
    );
    assert_eq!(done.external_run_id.as_deref(), Some("run-77"));
    assert_eq!(done.summary.as_deref(), Some("tf run run-77"));
    let warned: Vec<_> = status
        .of("r_tf")
        .into_iter()
        .filter_map(|u| u.message.clone())
        .filter(|m| m.starts_with("mapping:"))
        .collect();
    assert_eq!(
        warned,
        ["mapping: body.data.broken: evaluated to null (see switchyard's log)"]
    );
    assert!(
        status.updates.iter().all(|u| !serde_json::to_string(u)
            .unwrap()
            .contains("tf-api-key-SECRET")),
        "the decrypted secret is in no run update"
    );
    port.wait_until(Duration::from_secs(60), "the report of r_tf", |calls| {
        calls.iter().any(|c| c.body["status"] == "SUCCESS")
    })
    .await;
    let patch = port
        .calls_for("r_tf")
        .into_iter()
        .find(|c| c.body["status"] == "SUCCESS")
        .unwrap();
    assert_eq!(
        patch.body,
        json!({"status": "SUCCESS", "link": "https://tf.example/runs/run-77",
               "externalRunId": "run-77", "summary": "tf run run-77"})
    );
}

/// Port's managed Kafka is SASL_SSL with SCRAM-SHA-512 (reference §4.1). The test starts
/// an Apache Kafka broker of its own with a SASL_SSL listener (a certificate for
/// 127.0.0.1 generated at start) and the agent's SCRAM user written when its storage is
/// formatted. The dispatcher is configured by a Port agent's environment variables alone
/// (plus a file naming switchyard's own topics, the test CA and the output cluster: the
/// broker's PLAINTEXT listener). As the agent (T-ENV-01), it fetches its brokers and SCRAM
/// credentials from Port's API; Port first issues a stale password, and the dispatcher
/// fetches again when the broker refuses it.
#[cfg(feature = "real-broker")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_environment_runs_over_sasl_ssl_with_scram_sha_512() {
    use common::broker::{Broker, BrokerOptions};
    const USER: &str = "org_T-agent";
    const PASS: &str = "kafka-pass-9f3e";
    let broker = Broker::start(BrokerOptions {
        sasl_ssl: true,
        scram_users: vec![(USER.into(), PASS.into())],
    });
    // The topics are made over the broker's PLAINTEXT listener, as an operator would.
    let setup = Kafka::at(&broker.bootstrap());
    let t = setup.topics(2).await;
    let changelog = unique("changelog");
    setup.create_topic(&changelog, 1).await;
    let ca = broker.ca_pem().to_str().unwrap().to_owned();
    let brokers = broker.sasl_bootstrap();
    let secure = |password: &'static str| {
        vec![
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", USER),
            ("sasl.password", password),
        ]
    };
    let mut opts = secure(PASS);
    opts.push(("ssl.ca.location", &ca));
    let kafka = Kafka::at_with(&brokers, &opts);
    let mut wrong_password = secure("wrong-password");
    wrong_password.push(("ssl.ca.location", &ca));
    let mut no_tls = secure(PASS);
    no_tls[0].1 = "SASL_PLAINTEXT";
    for (why, opts) in [
        ("a wrong SCRAM password", wrong_password),
        ("no TLS", no_tls),
    ] {
        let sent = Kafka::at_with(&brokers, &opts)
            .config()
            .set("message.timeout.ms", "5000")
            .create::<rdkafka::producer::FutureProducer>()
            .unwrap()
            .send(
                rdkafka::producer::FutureRecord::<str, str>::to(&t.triggers).payload("x"),
                Duration::from_secs(5),
            )
            .await;
        assert!(sent.is_err(), "{why} must be refused");
    }

    let receiver = Receiver::start().await;
    let port = FakePort::start(CLIENT_ID, SECRET).await;
    let toml = merge_config(
        &config_toml(&kafka, &t, ""),
        &format!(
            "[kafka.common]\n\"ssl.ca.location\" = \"{ca}\"\n[kafka.output]\nbrokers = \"{}\"\n",
            setup.brokers
        ),
    );
    // A stale password first: the broker refuses it, and the dispatcher asks again.
    port.set_kafka_credentials(&brokers, USER, "rotated-away");
    let agent_env = [
        ("STREAMER_NAME", "KAFKA"),
        ("PORT_ORG_ID", "org_T"),
        ("PORT_CLIENT_ID", CLIENT_ID),
        ("PORT_CLIENT_SECRET", SECRET),
        ("PORT_API_BASE_URL", &port.url()),
        ("KAFKA_CONSUMER_SECURITY_PROTOCOL", "SASL_SSL"),
        ("KAFKA_CONSUMER_AUTHENTICATION_MECHANISM", "SCRAM-SHA-512"),
        ("KAFKA_CONSUMER_GROUP_ID", &t.group),
        ("KAFKA_RUNS_TOPIC", &t.triggers),
        ("KAFKA_CHANGE_LOG_TOPIC", &changelog),
    ];
    let _d = Dispatcher::start_with_config(&toml, &agent_env);
    let fetches = |port: &FakePort| {
        port.calls()
            .iter()
            .filter(|c| c.path == "/v1/kafka-credentials")
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while fetches(&port) < 1 {
        assert!(std::time::Instant::now() < deadline, "no credentials fetch");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    port.set_kafka_credentials(&brokers, USER, PASS);
    let m = port_signed(envelope("r_scram", &receiver.url("/deploy"), true));
    let mut status = dispatch_one(&kafka, &t, "r_scram", &m, Duration::from_secs(90)).await;
    assert_eq!(
        status.sole_terminal("r_scram").await.status,
        Some(switchyard::model::RunStatus::Success)
    );
    assert_signed_over_raw_bytes(&request_of(&receiver, "r_scram"));
    port.wait_until(Duration::from_secs(60), "the SUCCESS report", |calls| {
        calls.iter().any(|c| c.body["status"] == "SUCCESS")
    })
    .await;
    assert_eq!(
        kafka.wait_committed(&t, 1, Duration::from_secs(30)).await,
        1
    );
    assert!(fetches(&port) >= 2, "fetched again after the refusal");
    assert_eq!(
        port.calls()[0].path,
        "/v1/organization",
        "the streamer setting comes first, as the agent's start"
    );
}

/// A replay goes back to the topic the record came from, and an operator's replay of a
/// Port message is exempt from the signature's age limit (not from the signature).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dlq_replays_return_to_their_topic_and_skip_the_age_limit() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let changelog = unique("changelog");
    kafka.create_topic(&changelog, 1).await;
    let receiver = Receiver::start().await;
    let port = FakePort::start(CLIENT_ID, SECRET).await;
    let toml = merge_config(
        &dispatcher_config(&kafka, &t, &port, &changelog, ""),
        "[port]\nsignature_max_age = \"1h\"\n",
    );
    let config = scratch_dir().join("switchyard.toml");
    std::fs::write(&config, &toml).unwrap();
    let _d = start(&toml);
    // Signed two hours ago: too old for the dispatcher.
    let mut old = envelope("r_old", &receiver.url("/deploy"), true);
    old["headers"] = json!({});
    let ts = now() - 7200;
    let sig = hmac_b64(SECRET, format!("{ts}.{old}").as_bytes());
    old["headers"] = json!({"X-Port-Signature": sig, "X-Port-Timestamp": ts});
    kafka
        .produce(&t.triggers, &[record(Some("r_old"), &old)])
        .await;
    // The changelog destination is down until the replay.
    receiver.set_default_status(503);
    let change = json!({"action": "CREATE", "resourceType": "entity", "status": "SUCCESS",
        "context": {"entity": "vm-2", "blueprint": "vm"}, "diff": {"before": null, "after": {}},
        "changelogDestination": {"type": "WEBHOOK", "agent": true, "url": receiver.url("/changes")}});
    kafka
        .produce(&changelog, &[record(Some("vm-2"), &change)])
        .await;
    let dlq = read_dlq(&kafka, &t, 2, Duration::from_secs(60)).await;
    let mut classes: Vec<_> = dlq
        .iter()
        .map(|d| d.headers["switchyard-error-class"].clone())
        .collect();
    classes.sort();
    assert_eq!(classes, ["http_status", "signature"]);
    assert!(dlq
        .iter()
        .any(|d| d.headers["switchyard-error"].contains("older than the accepted 3600 s")));

    receiver.set_default_status(200);
    let out = cmd()
        .args(["dlq", "replay", "--config"])
        .arg(&config)
        .env("SWITCHYARD_TEST_PORT_SECRET", SECRET)
        .env("SWITCHYARD_KAFKA__TRIGGERS_FORMAT", "port")
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        printed.contains("r_old"),
        "a Port envelope's run id is listed: {printed}"
    );
    let mut want = [changelog.clone(), t.triggers.clone()];
    want.sort();
    assert!(
        printed.contains(&format!("replayed 2 records to {}", want.join(", "))),
        "{printed}"
    );
    let mut status = StatusLog::new(&kafka, &t);
    status
        .wait_until(Duration::from_secs(60), "both replays succeed", |u| {
            let ok = |run: &str| {
                u.iter().any(|u| {
                    u.run_id.starts_with(run)
                        && u.status == Some(switchyard::model::RunStatus::Success)
                })
            };
            ok("r_old") && ok("cl_")
        })
        .await;
    assert_eq!(
        receiver
            .requests()
            .iter()
            .filter(|r| r.path == "/changes")
            .count(),
        2,
        "the changelog delivery was replayed to the changelog topic"
    );
}
