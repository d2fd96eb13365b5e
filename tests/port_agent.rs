//! Port drop-in (reference `port-agent.md` §5b): the Port agent's Helm environment,
//! unchanged, run by switchyard's binary with the image's baked configuration
//! (`SWITCHYARD_CONFIG`, as the Dockerfile sets it) and the user's mapping mounted where
//! Helm mounts it (`control_the_payload_config.json` in the working directory, the
//! agent's `/app`). Kafka brokers and credentials come from a fake of Port's API, and
//! Port's cluster is read-only to switchyard.
//!
//! Port's cluster is the test's cluster: the mock on `cargo test`, Apache Kafka in
//! `.ci/run`. The output cluster is always a mock cluster of the test's own.
//!
//! Test environment beyond the agent's: the webhook receivers listen on loopback, which
//! the destination policy refuses unless opened, and the metrics listener takes a free
//! port (the image listens on 0.0.0.0:8080).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use common::port_api::{envelope, hmac_b64, now, port_signed_at, summary, FakePort};
use common::receiver::{Receiver, Seen};
use common::*;

const SECRET: &str = "port-client-secret-0123456789abcdef!";
const CLIENT_ID: &str = "agent-client";

/// The mapping a user mounts: a jq string that does not compile (the agent drops that
/// header), `"enabled": "True"`, a url from an optional input, a summary-only report, and
/// a link from the `Location` response header; query values of other JSON types.
const MAPPING: &str = r#"[
  {"enabled": ".payload.properties.kind == \"routed\"", "url": ".payload.properties.cluster_url"},
  {"enabled": ".payload.properties.kind == \"query\"",
   "query": {"force": ".payload.properties.force", "ratio": ".payload.properties.ratio",
             "n": ".payload.properties.n"}},
  {"enabled": ".payload.properties.kind == \"queued\"",
   "report": {"summary": "\"queued as \" + (.response.json.id | tostring)"}},
  {"enabled": "True",
   "headers": {"Content-Type": "application/json", "X-Run": ".context.runId"},
   "report": {"link": ".response.headers.Location"}}
]"#;

/// One Port organisation: its topics on Port's cluster, a fake of Port's API that issues
/// the cluster's credentials, a webhook receiver, and the agent's `/app`.
struct Org {
    kafka: Kafka,
    org: String,
    runs: String,
    changelog: String,
    group: String,
    port: FakePort,
    receiver: Receiver,
    app: PathBuf,
}

impl Org {
    async fn new() -> Org {
        Self::with_changelog(true).await
    }

    /// `changelog_topic` false: an org without a change log topic (T-ENV-08).
    async fn with_changelog(changelog_topic: bool) -> Org {
        let kafka = Kafka::start();
        let org = unique("org");
        let (runs, changelog) = (format!("{org}.runs"), format!("{org}.change.log"));
        kafka.create_topic(&runs, 1).await;
        if changelog_topic {
            kafka.create_topic(&changelog, 1).await;
        }
        let port = FakePort::start(CLIENT_ID, SECRET).await;
        port.set_kafka_credentials(&kafka.brokers, &format!("{org}-user"), "kafka-pass-7f1");
        let app = scratch_dir();
        std::fs::write(app.join("control_the_payload_config.json"), MAPPING).unwrap();
        Org {
            group: format!("{org}.agent"),
            kafka,
            org,
            runs,
            changelog,
            port,
            receiver: Receiver::start().await,
            app,
        }
    }

    /// The agent's environment from `deploy/port-agent/agent.env` (what its Helm chart
    /// and Docker install set), with the test's values for the org, client, API URL and
    /// group, and for the test broker (PLAINTEXT, no SASL: the SASL_SSL path is
    /// `port.rs`'s `an_agent_environment_runs_over_sasl_ssl_with_scram_sha_512`). The
    /// offset reset is `earliest` (the test publishes before the group joins), the log
    /// level WARNING and DETAILED_LOGGING false (both cases under test). `extra` last.
    fn dispatcher(&self, extra: &[(&str, &str)]) -> Dispatcher {
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/port-agent/agent.env");
        let baked = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/switchyard.toml");
        let url = self.port.url();
        let ours: Vec<(&str, &str)> = vec![
            ("PORT_ORG_ID", &self.org),
            ("PORT_CLIENT_ID", CLIENT_ID),
            ("PORT_CLIENT_SECRET", SECRET),
            ("PORT_API_BASE_URL", &url),
            ("KAFKA_CONSUMER_GROUP_ID", &self.group),
            ("KAFKA_CONSUMER_SECURITY_PROTOCOL", "PLAINTEXT"),
            ("KAFKA_CONSUMER_AUTHENTICATION_MECHANISM", "none"),
            ("KAFKA_CONSUMER_AUTO_OFFSET_RESET", "earliest"),
            ("LOG_LEVEL", "WARNING"),
            ("DETAILED_LOGGING", "false"),
        ];
        let text = std::fs::read_to_string(file).unwrap();
        let mut env: Vec<(String, String)> = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line.split_once('=').expect("KEY=VALUE lines");
            let v = ours.iter().find(|(o, _)| *o == k).map_or(v, |(_, o)| *o);
            env.push((k.to_owned(), v.to_owned()));
        }
        for (k, _) in &ours {
            assert!(env.iter().any(|(e, _)| e == k), "agent.env lacks {k}");
        }
        // The image's own environment, then the test's: loopback receivers, a free
        // metrics port (the image listens on 0.0.0.0:8080).
        for (k, v) in [
            ("SWITCHYARD_CONFIG", baked),
            (
                "SWITCHYARD_BACKENDS__WEBHOOK__DESTINATIONS__ALLOW",
                "[\"127.0.0.1\"]",
            ),
            ("SWITCHYARD_HTTP__LISTEN", "127.0.0.1:0"),
        ]
        .into_iter()
        .chain(extra.iter().copied())
        {
            env.push((k.to_owned(), v.to_owned()));
        }
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Dispatcher::start_in(&self.app, &env)
    }

    fn signed(&self, msg: Value) -> (Option<String>, Vec<u8>) {
        self.signed_at(msg, now())
    }

    fn signed_at(&self, msg: Value, ts: i64) -> (Option<String>, Vec<u8>) {
        let run = msg["context"]["runId"].as_str().map(str::to_owned);
        let m = port_signed_at(SECRET, msg, ts);
        (run, serde_json::to_vec(&m).unwrap())
    }

    fn run(&self, id: &str, path: &str, synchronized: bool, props: Value) -> Value {
        let mut m = envelope(id, &self.receiver.url(path), synchronized);
        m["payload"]["properties"] = props;
        m
    }

    fn requests_of(&self, run: &str) -> Vec<Seen> {
        self.receiver
            .requests()
            .into_iter()
            .filter(|r| r.body.pointer("/context/runId").and_then(Value::as_str) == Some(run))
            .collect()
    }

    /// Wait until the group committed `want` records of the runs topic.
    async fn wait_committed(&self, want: i64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let got = self.kafka.committed_total(&self.group, &self.runs, 1);
            if got == want {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the group committed {got} of {want} records"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The agent's receivers verify by parsing the body and writing it back as Python's
/// `json.dumps(body, separators=(",", ":"))` (ASCII-escaped) before the HMAC; others
/// check the raw bytes. Both must verify (T-HTTP-04).
fn assert_verifies_both_ways(seen: &Seen) {
    let ts = &seen.headers["x-port-timestamp"];
    let sig = &seen.headers["x-port-signature"];
    let raw = hmac_b64(SECRET, &[ts.as_bytes(), b".", &seen.raw].concat());
    assert_eq!(sig, &raw, "signature over the raw bytes");
    let reparsed: Value = serde_json::from_slice(&seen.raw).unwrap();
    let python = python_dumps(&reparsed);
    let agent_way = hmac_b64(SECRET, format!("{ts}.{python}").as_bytes());
    assert_eq!(sig, &agent_way, "signature over Python's re-serialisation");
    assert!(
        seen.raw.is_ascii(),
        "non-ASCII text is escaped, as Python writes it"
    );
}

/// Python's `json.dumps(v, separators=(",", ":"))`, run by the system's python3 (the
/// agent's receivers are Python services).
fn python_dumps(v: &Value) -> String {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import json,sys; sys.stdout.write(json.dumps(json.loads(sys.stdin.read()), separators=(',', ':')))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(v.to_string().as_bytes())?;
            child.wait_with_output()
        })
        .expect("python3 runs (the test re-serialises as the agent's receivers do)");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

const RECEIVED: &str = "log An action message has been received";
const PREPARING: &str = "log Preparing the payload for the request";
const SENDING: &str = "log Sending the request";
const FINISHED: &str = "log Port agent finished processing the action run";

/// T-ENV-01, T-ENV-02, T-ENV-03, T-ENV-07, T-MAP-01, T-MAP-02, T-MAP-08, T-HTTP-04,
/// T-REP-01, T-IN-01: the Helm environment with an output cluster. Switchyard creates no
/// topic and writes nothing on Port's cluster, and commits only its group there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_helm_environment_runs_unchanged_on_a_read_only_port_cluster() {
    let o = Org::new().await;
    let out = Kafka::mock_cluster();
    // The baked file's topic names; the mock cannot create topics through the admin API.
    out.create_topic("switchyard.status", 3).await;
    out.create_topic("switchyard.dlq", 1).await;
    out.create_topic("switchyard.watches", 1).await;
    let topics_before = o.kafka.topic_names();
    let _d = o.dispatcher(&[("SWITCHYARD_KAFKA__OUTPUT__BROKERS", &out.brokers)]);

    let ok = o.run(
        "r_ok",
        "/deploy?status=201&location=/runs/7",
        true,
        json!({"name": "Zoë ✓", "ratio": 1e-7, "replicas": 3}),
    );
    let mut forged = o.run("r_forged", "/deploy", true, json!({}));
    forged["headers"] = json!({"X-Port-Signature": "v1,AAAA", "X-Port-Timestamp": now()});
    o.kafka
        .produce(
            &o.runs,
            &[
                o.signed(ok),
                (
                    Some("r_forged".into()),
                    serde_json::to_vec(&forged).unwrap(),
                ),
            ],
        )
        .await;
    o.port
        .wait_until(Duration::from_secs(90), "r_ok's last report", |calls| {
            summary(calls).last().map(String::as_str) == Some(FINISHED)
        })
        .await;
    o.wait_committed(2).await;

    // The webhook: called once, with the mounted mapping's header, signed both ways.
    let seen = o.requests_of("r_ok");
    assert_eq!(seen.len(), 1, "one request");
    assert_eq!(
        seen[0].headers["x-run"], "r_ok",
        "the mounted mapping shaped it"
    );
    assert_eq!(seen[0].headers["content-type"], "application/json");
    assert_verifies_both_ways(&seen[0]);
    assert!(
        o.requests_of("r_forged").is_empty(),
        "a forged run is not executed"
    );

    // Port's API: the agent's start, then the agent's sequence for the run.
    let calls = o.port.calls();
    assert_eq!(
        (calls[0].method.as_str(), calls[0].path.as_str()),
        ("PATCH", "/v1/organization")
    );
    assert_eq!(
        calls[0].body,
        json!({"settings": {"portAgentStreamerName": "KAFKA"}})
    );
    assert_eq!(calls[1].path, "/v1/kafka-credentials");
    assert_eq!(
        summary(&o.port.calls_for("r_ok")),
        vec![
            RECEIVED,
            PREPARING,
            SENDING,
            "log Action invocation has completed successfully with status code: 201",
            "log Reporting the run response",
            "response {\"ok\":true,\"path\":\"/deploy\"}",
            "log The run response was reported successfully ",
            "run {\"status\":\"SUCCESS\",\"link\":\"/runs/7\"}",
            FINISHED,
        ]
    );
    assert!(
        o.port.calls_for("r_forged").is_empty(),
        "an unauthenticated message causes no authenticated write"
    );

    // Port's cluster: no topic created, nothing written, only the agent's group.
    let topics_after = o.kafka.topic_names();
    if o.kafka.is_real() {
        // Other tests share Apache Kafka: look at what switchyard could have created.
        for own in ["switchyard.status", "switchyard.dlq", "switchyard.watches"] {
            assert_eq!(
                topics_before.contains(&own.to_owned()),
                topics_after.contains(&own.to_owned()),
                "{own} appeared on Port's cluster"
            );
        }
        let ours: Vec<_> = o
            .kafka
            .group_names()
            .into_iter()
            .filter(|g| g.starts_with(&o.org))
            .collect();
        assert_eq!(
            ours,
            std::slice::from_ref(&o.group),
            "only the agent's group on Port's cluster"
        );
    } else {
        assert_eq!(
            topics_before, topics_after,
            "no topic created on Port's cluster"
        );
    }
    assert_eq!(
        o.kafka.high_watermarks(&o.runs, 1)[&0],
        2,
        "only the test's two records"
    );
    assert_eq!(o.kafka.high_watermarks(&o.changelog, 1)[&0], 0);
    for derived in [".port-reporter", ".ledger", ".watches"] {
        let g = format!("{}{derived}", o.group);
        assert_eq!(
            o.kafka.committed_total(&g, &o.runs, 1),
            0,
            "{g} on Port's cluster"
        );
    }

    // The output cluster holds switchyard's own topics.
    let t = Topics {
        triggers: o.runs.clone(),
        status: "switchyard.status".into(),
        dlq: "switchyard.dlq".into(),
        group: o.group.clone(),
        actions: String::new(),
        entities: String::new(),
        watches: "switchyard.watches".into(),
        triggers_partitions: 1,
        status_partitions: 3,
    };
    let mut status = StatusLog::new(&out, &t);
    assert_eq!(
        status.sole_terminal("r_ok").await.status,
        Some(switchyard::model::RunStatus::Success)
    );
    assert!(status.of("r_forged").is_empty());
    let dlq = read_dlq(&out, &t, 1, Duration::from_secs(30)).await;
    assert_eq!(dlq[0].headers["switchyard-error-class"], "signature");
    assert!(
        out.committed_total(
            &format!("{}.port-reporter", o.group),
            "switchyard.status",
            3
        ) > 0,
        "the reporter's group commits on the output cluster"
    );
}

/// T-ENV-05, T-ENV-06, T-HTTP-01, T-HTTP-02, T-HTTP-03, T-MAP-03, T-MAP-09, T-IN-02,
/// T-REP-04, and reference §3 (unparsable messages): the Helm environment without an
/// output cluster. Run updates go straight to Port's API, and an offset moves once Port
/// took the run's reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_an_output_cluster_runs_report_straight_to_port() {
    let o = Org::new().await;
    let topics_before = o.kafka.topic_names();
    let mut d = o.dispatcher(&[]);
    let mut records = vec![
        o.signed(o.run(
            "r_401",
            "/deploy?status=401&body=token%3Dabc",
            true,
            json!({}),
        )),
        o.signed(o.run(
            "r_queued",
            "/queue?status=202&body=%7B%22id%22%3A42%7D",
            false,
            json!({"kind": "queued"}),
        )),
        o.signed(o.run("r_routed", "/never", true, json!({"kind": "routed"}))),
        // T-MAP-06: query values that are not strings, as Python's requests writes them.
        o.signed(o.run(
            "r_query",
            "/query",
            true,
            json!({"kind": "query", "force": true, "ratio": 1e21, "n": 3}),
        )),
        // Signed three days ago: the agent has no age limit.
        o.signed_at(
            o.run("r_old", "/deploy", true, json!({})),
            now() - 3 * 86400,
        ),
        (Some("junk".into()), b"not json at all".to_vec()),
    ];
    // Six failing runs to one host: one request each, no retry, no breaker refusal.
    for i in 0..6 {
        records.push(o.signed(o.run(&format!("r_down{i}"), "/down?status=503", true, json!({}))));
    }
    let mut node = o.run("wfnr_node", "/node?body=", true, json!({}));
    node["context"]["runId"] = json!("wfnr_node");
    records.push(o.signed(node));
    // T-IN-06: routing by topic. On the runs topic a `changelogDestination` key does not
    // make a message an unsigned changelog; on the change log, a run envelope is not for
    // an agent, and a changelog is delivered.
    let mut smuggled = o.run("r_smuggled", "/smuggled", true, json!({}));
    smuggled["changelogDestination"] =
        json!({"type": "WEBHOOK", "agent": true, "url": o.receiver.url("/smuggled")});
    records.push((
        Some("r_smuggled".into()),
        serde_json::to_vec(&smuggled).unwrap(),
    ));
    let total = records.len() as i64;
    o.kafka.produce(&o.runs, &records).await;
    let change = json!({"action": "UPDATE", "resourceType": "entity", "status": "SUCCESS",
        "context": {"entity": "vm-1", "blueprint": "vm"},
        "diff": {"before": null, "after": {"identifier": "vm-1"}},
        "changelogDestination": {"type": "WEBHOOK", "agent": true, "url": o.receiver.url("/changes")}});
    o.kafka
        .produce(
            &o.changelog,
            &[
                o.signed(o.run("r_on_changelog", "/wrong-topic", true, json!({}))),
                (Some("vm-1".into()), serde_json::to_vec(&change).unwrap()),
            ],
        )
        .await;
    o.wait_committed(total).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while o.kafka.committed_total(&o.group, &o.changelog, 1) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "change log not committed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let paths: Vec<String> = o.receiver.requests().into_iter().map(|r| r.path).collect();
    assert!(!paths.iter().any(|p| p == "/smuggled"), "{paths:?}");
    assert!(!paths.iter().any(|p| p == "/wrong-topic"), "{paths:?}");
    assert_eq!(
        paths.iter().filter(|p| *p == "/changes").count(),
        1,
        "{paths:?}"
    );
    assert!(o.port.calls_for("r_smuggled").is_empty());
    assert!(o.port.calls_for("r_on_changelog").is_empty());

    // 401 and 503: one request each, FAILURE without the response text (DETAILED_LOGGING).
    assert_eq!(o.requests_of("r_401").len(), 1);
    let failed_401 = "run {\"status\":\"FAILURE\",\"summary\":\"Failed to invoke the webhook with status code: 401.\"}";
    assert_eq!(
        summary(&o.port.calls_for("r_401")),
        vec![
            RECEIVED,
            PREPARING,
            SENDING,
            "log Action invocation failed with status code: 401",
            "log Reporting the run response",
            "response \"token=abc\"",
            "log The run response was reported successfully ",
            failed_401,
        ]
    );
    for i in 0..6 {
        let run = format!("r_down{i}");
        assert_eq!(o.requests_of(&run).len(), 1, "{run}: one attempt");
        let last = summary(&o.port.calls_for(&run)).pop().unwrap();
        assert!(last.contains("status code: 503."), "{run}: {last}");
    }
    // Async with a summary-only report: the summary is sent.
    assert_eq!(
        summary(&o.port.calls_for("r_queued")),
        vec![
            RECEIVED,
            PREPARING,
            SENDING,
            "log Action invocation has completed successfully with status code: 202",
            "run {\"summary\":\"queued as 42\"}",
            FINISHED,
        ]
    );
    // A url that maps to null: nothing sent, the run fails.
    assert!(o.requests_of("r_routed").is_empty());
    let routed = o.port.calls_for("r_routed");
    let end = &routed.last().unwrap().body;
    assert_eq!(end["status"], "FAILURE", "{routed:?}");
    let q = &o.requests_of("r_query")[0].query;
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(q.as_bytes())
        .into_owned()
        .collect();
    let want = [("force", "True"), ("ratio", "1e+21"), ("n", "3")];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(pairs, want, "{q}");
    // An old signature is accepted, as by the agent.
    assert_eq!(o.requests_of("r_old").len(), 1);
    // A node run: the agent's texts, `data: {}` for an empty body, no "Preparing".
    assert_eq!(
        summary(&o.port.calls_for("wfnr_node")),
        vec![
            "log A workflow node run has been received",
            SENDING,
            "log Action invocation has completed successfully with status code: 200",
            "run {\"status\":\"COMPLETED\",\"result\":\"SUCCESS\",\"output\":{\"response\":{\"status\":200,\"data\":{}}}}",
            "log Port agent finished processing the workflow node run",
        ]
    );
    // Nothing was created or written on Port's cluster.
    if !o.kafka.is_real() {
        assert_eq!(o.kafka.topic_names(), topics_before);
    }
    assert_eq!(o.kafka.high_watermarks(&o.runs, 1)[&0], total);
    // LOG_LEVEL=WARNING is the warn level, not silence: the mapping's compile error and
    // the unparsable record are logged; info lines are not.
    d.terminate(Duration::from_secs(30));
    let log = std::fs::read_to_string(&d.log).unwrap();
    assert!(log.contains("headers.Content-Type"), "{log}");
    assert!(log.contains("malformed_json"), "{log}");
    assert!(!log.contains("\"level\":\"INFO\""), "{log}");
    assert!(
        !log.contains("token=abc"),
        "no response text in the log: {log}"
    );
}

/// An HTTPS receiver on loopback whose certificate (for 127.0.0.1) is signed by a CA of
/// the test's own; it answers every request `200 ok` and counts them.
struct TlsReceiver {
    addr: std::net::SocketAddr,
    ca_pem: String,
    served: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl TlsReceiver {
    async fn start() -> TlsReceiver {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "switchyard test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        leaf.distinguished_name
            .push(DnType::CommonName, "127.0.0.1");
        let cert = leaf.signed_by(&key, &ca_cert, &ca_key).unwrap();
        let identity =
            native_tls::Identity::from_pkcs8(cert.pem().as_bytes(), key.serialize_pem().as_bytes())
                .unwrap();
        let acceptor =
            tokio_native_tls::TlsAcceptor::from(native_tls::TlsAcceptor::new(identity).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = served.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, count) = (acceptor.clone(), count.clone());
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return; // the client refused the certificate
                    };
                    let mut got = Vec::new();
                    let mut buf = [0u8; 8192];
                    // Headers, then the body by Content-Length; bounded by the read size.
                    while got.len() < 1 << 20 {
                        let Ok(n) = tls.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        got.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
                        if let Some(end) = text.find("\r\n\r\n") {
                            let len = text
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            if got.len() >= end + 4 + len {
                                break;
                            }
                        }
                    }
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let _ = tls
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        )
                        .await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        TlsReceiver {
            addr,
            ca_pem: ca_cert.pem(),
            served,
        }
    }
}

/// T-ENV-09: Helm's `selfSignedCertificate` mounts a CA at
/// `/usr/local/share/ca-certificates/cert.crt`, which the agent's image trusts. switchyard
/// reads that directory by default (`backends.webhook.ca_certificates`); the test, which
/// cannot write there, points the setting at a directory of its own with the same file.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ca_certificate_where_helm_mounts_it_is_trusted() {
    // Also T-ENV-08: this org has no change log topic; the agent carries on without it.
    let o = Org::with_changelog(false).await;
    let tls = TlsReceiver::start().await;
    let certs = scratch_dir();
    std::fs::write(certs.join("cert.crt"), &tls.ca_pem).unwrap();
    // The control: the system's store does not know this CA.
    let plain = reqwest::Client::new()
        .get(format!("https://{}/", tls.addr))
        .send()
        .await;
    assert!(
        plain.is_err(),
        "the system store must not trust the test CA"
    );
    let dirs = format!("[\"{}\"]", certs.display());
    let d = o.dispatcher(&[("SWITCHYARD_BACKENDS__WEBHOOK__CA_CERTIFICATES", &dirs)]);
    let mut m = envelope("r_tls", &format!("https://{}/deploy", tls.addr), true);
    m["payload"]["properties"] = json!({});
    o.kafka.produce(&o.runs, &[o.signed(m)]).await;
    o.port
        .wait_until(Duration::from_secs(60), "r_tls's status", |calls| {
            calls
                .iter()
                .any(|c| c.path.ends_with("/r_tls") && c.method == "PATCH")
        })
        .await;
    let status = o
        .port
        .calls_for("r_tls")
        .into_iter()
        .find(|c| c.method == "PATCH" && c.path.ends_with("/r_tls"))
        .unwrap();
    assert_eq!(
        status.body["status"],
        "SUCCESS",
        "{:?}",
        o.port.calls_for("r_tls")
    );
    assert_eq!(tls.served.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(
        !o.kafka.topic_names().contains(&o.changelog),
        "the missing change log was not created"
    );
    let mut d = d;
    d.terminate(Duration::from_secs(30));
    let log = std::fs::read_to_string(&d.log).unwrap();
    assert!(log.contains("Port's topics are not all there"), "{log}");
}

/// T-ENV-04: `STREAMER_NAME=POLLING`. Runs are claimed from Port's API and acknowledged
/// before they are dispatched, as the agent does, then mapped, sent and reported on the
/// same path as Kafka messages. No Kafka is used on Port's side: no credentials fetch.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_polling_streamer_claims_acks_and_dispatches_runs() {
    let o = Org::new().await;
    let run = |id: &str, path: &str, synchronized: bool| {
        json!({"id": id, "status": "IN_PROGRESS", "payload": {"type": "WEBHOOK", "agent": true,
            "synchronized": synchronized, "method": "POST", "url": o.receiver.url(path),
            "headers": {}, "body": {"action": "deploy_service", "properties": {"version": "2.0.0"}}}})
    };
    o.port.queue_runs([
        run("r_p1", "/deploy", true),
        run("r_p2", "/queue?status=202", false),
    ]);
    o.port.queue_node_runs(
        [json!({"identifier": "wfnr_p", "config": {"type": "WEBHOOK",
        "agent": true, "synchronized": true, "method": "POST", "url": o.receiver.url("/node")}})],
    );
    // A fixed free port for /readyz (the log level hides the listener's line).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let _d = o.dispatcher(&[
        ("STREAMER_NAME", "POLLING"),
        ("POLLING_INTERVAL_SECONDS", "0.2"),
        ("POLLING_RUNS_BATCH_SIZE", "1"),
        ("SWITCHYARD_HTTP__LISTEN", &listen),
    ]);
    o.port
        .wait_until(
            Duration::from_secs(60),
            "the three runs' last reports",
            |calls| {
                let last = |run: &str| {
                    summary(
                        &calls
                            .iter()
                            .filter(|c| c.path.contains(run))
                            .cloned()
                            .collect::<Vec<_>>(),
                    )
                    .pop()
                };
                last("r_p1").as_deref() == Some(FINISHED)
                    && last("r_p2").as_deref() == Some(FINISHED)
                    && last("wfnr_p").is_some_and(|l| l.contains("workflow node run"))
            },
        )
        .await;
    let calls = o.port.calls();
    assert_eq!(
        calls[0].body,
        json!({"settings": {"portAgentStreamerName": "POLLING"}})
    );
    assert!(calls.iter().all(|c| c.path != "/v1/kafka-credentials"));
    let claims: Vec<_> = calls
        .iter()
        .filter(|c| c.path.ends_with("/claim-pending") || c.path.ends_with("/ack"))
        .collect();
    assert!(
        claims.iter().all(|c| c.reserved),
        "x-port-reserved-usage on {claims:?}"
    );
    let first = calls
        .iter()
        .find(|c| c.path == "/v1/actions/runs/claim-pending")
        .unwrap();
    assert_eq!(
        first.body,
        json!({"installationId": "_PORT_EXEC_AGENT", "limit": 1, "invocationMethod": "WEBHOOK"})
    );
    // Each run is acknowledged before its first report.
    for (run, ack) in [
        ("r_p1", json!({"runIds": ["r_p1"]})),
        ("r_p2", json!({"runIds": ["r_p2"]})),
        ("wfnr_p", json!({"nodeRunIdentifier": "wfnr_p"})),
    ] {
        let acked = calls
            .iter()
            .position(|c| c.path.ends_with("/ack") && c.body == ack);
        let reported = calls.iter().position(|c| c.path.contains(run));
        assert!(
            acked.is_some() && acked < reported,
            "{run}: ack at {acked:?}, first report at {reported:?}"
        );
        assert_eq!(o.requests_of(run).len(), 1, "{run}: one request");
    }
    // The request: the run's body as the agent's envelope, signed.
    let sent = &o.requests_of("r_p1")[0];
    assert_eq!(sent.body["properties"], json!({"version": "2.0.0"}));
    assert_eq!(
        sent.body["payload"]["action"]["invocationMethod"]["synchronized"],
        true
    );
    assert_eq!(
        sent.headers["x-run"], "r_p1",
        "the mounted mapping shaped it"
    );
    assert_verifies_both_ways(sent);
    assert_eq!(
        summary(&o.port.calls_for("r_p1")),
        vec![
            RECEIVED,
            PREPARING,
            SENDING,
            "log Action invocation has completed successfully with status code: 200",
            "log Reporting the run response",
            "response {\"ok\":true,\"path\":\"/deploy\"}",
            "log The run response was reported successfully ",
            "run {\"status\":\"SUCCESS\"}",
            FINISHED,
        ]
    );
    let node_done = o
        .port
        .calls_for("wfnr_p")
        .into_iter()
        .find(|c| c.method == "PATCH")
        .unwrap();
    assert_eq!(node_done.body["result"], "SUCCESS");
    // Ready once claims work, with no Kafka at all on Port's side (the baked brokers,
    // 127.0.0.1:9092, are never contacted).
    let ready = reqwest::get(format!("http://{listen}/readyz"))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.text().await.unwrap(), "ready\n");
}

/// Run timeouts: an async run left IN_PROGRESS past its `run_timeout` gets a FAILURE in
/// Port; one whose service finished it in Port meanwhile is left alone; an action's own
/// timeout wins over its backend's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn async_runs_left_in_progress_time_out() {
    let o = Org::new().await;
    let _d = o.dispatcher(&[
        ("SWITCHYARD_RUN_TIMEOUT__WEBHOOK", "3s"),
        ("SWITCHYARD_RUN_TIMEOUT__ACTIONS__QUICK_ACTION", "1s"),
    ]);
    let mut quick = o.run("r_quick", "/queue?status=202", false, json!({}));
    quick["action"] = json!("quick_action");
    o.port.set_run_status("r_done", "SUCCESS");
    o.kafka
        .produce(
            &o.runs,
            &[
                o.signed(o.run("r_slow", "/queue?status=202", false, json!({}))),
                o.signed(o.run("r_done", "/queue?status=202", false, json!({}))),
                o.signed(quick),
            ],
        )
        .await;
    let failed = |calls: &[common::port_api::ApiCall], run: &str| {
        calls
            .iter()
            .find(|c| {
                c.method == "PATCH"
                    && c.path == format!("/v1/actions/runs/{run}")
                    && c.body["status"] == "FAILURE"
            })
            .map(|c| c.body["summary"].as_str().unwrap_or("").to_owned())
    };
    o.port
        .wait_until(
            Duration::from_secs(60),
            "both time-outs and r_done's check",
            |calls| {
                failed(calls, "r_slow").is_some()
                    && failed(calls, "r_quick").is_some()
                    && calls
                        .iter()
                        .any(|c| c.method == "GET" && c.path == "/v1/actions/runs/r_done")
            },
        )
        .await;
    let calls = o.port.calls();
    let slow = failed(&calls, "r_slow").unwrap();
    assert!(slow.starts_with("timed out after 3s"), "{slow}");
    let quick = failed(&calls, "r_quick").unwrap();
    assert!(quick.starts_with("timed out after 1s"), "{quick}");
    // The run its service finished in Port: asked about (above), not failed.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        failed(&calls, "r_done"),
        None,
        "{:?}",
        o.port.calls_for("r_done")
    );
    for run in ["r_slow", "r_done", "r_quick"] {
        assert_eq!(o.requests_of(run).len(), 1, "{run}: one request");
    }
    o.wait_committed(3).await;
}
