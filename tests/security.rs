//! No event can stop, freeze or misuse the dispatcher: each attack found against an
//! earlier build is a test here (template sandbox, destination policy, secret scopes,
//! panics, the KAFKA topic policy, forged replay markers, credential pauses).

mod common;

use std::time::{Duration, Instant};

use common::receiver::Receiver;
use common::*;
use serde_json::json;
use switchyard::model::RunStatus;

const WAIT: Duration = Duration::from_secs(60);

fn event_with(run: &str, invocation: serde_json::Value) -> serde_json::Value {
    json!({
        "run": {"id": run},
        "action": {"identifier": "attack", "invocationMethod": invocation},
        "inputs": {"n": 1},
    })
}

/// Every record of `topic` from the start to its high watermarks, as text.
async fn all_text(kafka: &Kafka, topic: &str, partitions: i32) -> (usize, String) {
    let mut tail = Tail::new(kafka, topic, partitions);
    let records = tail.rest(Duration::from_millis(500)).await;
    let mut text = String::new();
    for m in &records {
        use rdkafka::message::{Headers, Message};
        text.push_str(&String::from_utf8_lossy(m.payload().unwrap_or_default()));
        if let Some(hs) = m.headers() {
            for h in hs.iter() {
                text.push_str(h.key);
                text.push_str(&String::from_utf8_lossy(h.value.unwrap_or_default()));
            }
        }
        text.push('\n');
    }
    (records.len(), text)
}

/// `{{ halt }}` used to end the process with exit code 0 and no log line. Now `halt` is
/// not in the allow-list: the run fails, its record goes to the DLQ, and the process keeps
/// dispatching.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn halt_fails_the_run_and_the_process_keeps_running() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let rx = Receiver::start().await;
    let mut d = Dispatcher::start(&kafka, &t, "");
    let halt = event_with(
        "r_halt",
        json!({"type": "WEBHOOK", "url": rx.url("/x"), "body": {"v": "{{ halt }}"}}),
    );
    let halt_error = event_with(
        "r_halt_error",
        json!({"type": "WEBHOOK", "url": rx.url("/x"), "body": {"v": "{{ \"bye\" | halt_error(1) }}"}}),
    );
    let after = webhook_event("r_after_halt", &rx.url("/ok"), true);
    kafka
        .produce(
            &t.triggers,
            &[
                record(None, &halt),
                record(None, &halt_error),
                record(None, &after),
            ],
        )
        .await;
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_finished(3, WAIT).await;
    for run in ["r_halt", "r_halt_error"] {
        let f = log.sole_terminal(run).await;
        assert_eq!(f.status, Some(RunStatus::Failure), "{f:?}");
        let summary = f.summary.unwrap();
        assert!(
            summary.starts_with("template error in invocationMethod.body.v")
                && summary.contains("undefined filter `halt"),
            "{summary}"
        );
    }
    assert_eq!(
        log.sole_terminal("r_after_halt").await.status,
        Some(RunStatus::Success)
    );
    let dlq = read_dlq(&kafka, &t, 2, WAIT).await;
    assert!(dlq
        .iter()
        .all(|r| r.headers["switchyard-error-class"] == "template_error"));
    assert!(d.is_running(), "the process is still running");
    println!(
        "halt: 2 FAILURE + 2 DLQ records (template_error), the next run SUCCESS, process alive"
    );
}

/// Eight runaway templates (`until(false; .)`, which jaq cannot interrupt) next to a
/// hundred normal runs: each runaway is killed at its time budget, the normal runs all
/// finish within seconds, and the process stays healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runaway_templates_fail_on_their_budget_and_normal_runs_keep_flowing() {
    let kafka = Kafka::start();
    let t = kafka.topics(4).await;
    let rx = Receiver::start().await;
    let mut d = Dispatcher::start(&kafka, &t, "[templates]\ntimeout = \"100ms\"\n");
    let base = d.http_base();
    let mut records = Vec::new();
    let runaways = [
        "{{ until(false; .) }}",
        "{{ [repeat(1)] }}",
        "{{ last(range(1e12)) }}",
        "{{ \"a\" * 4000000000 }}",
        "{{ [range(1e9)] | length }}",
        "{{ (\"[\" * 2000000) | fromjson }}",
        "{{ def f: [f]; f }}",
        "{{ [limit(100000000; repeat(\"xxxxxxxxxxxxxxxx\"))] }}",
    ];
    for (i, code) in runaways.iter().enumerate() {
        let ev = event_with(
            &format!("r_runaway_{i}"),
            json!({"type": "WEBHOOK", "url": rx.url("/x"), "body": {"v": code}}),
        );
        records.push(record(Some(&format!("k{i}")), &ev));
    }
    for n in 0..100 {
        let mut ev = webhook_event(&format!("r_normal_{n}"), &rx.url("/ok"), true);
        // Some normal runs use jq beyond plain paths, so they share the workers.
        if n % 2 == 0 {
            ev["action"]["invocationMethod"]["body"]["up"] = json!("{{ .run.id | ascii_upcase }}");
        }
        records.push(record(Some(&format!("n{n}")), &ev));
    }
    let started = Instant::now();
    kafka.produce(&t.triggers, &records).await;
    let mut log = StatusLog::new(&kafka, &t);
    let mut healthz_ms = Vec::new();
    let normal_done = |u: &[switchyard::model::RunUpdate]| {
        (0..100).all(|n| {
            let run = format!("r_normal_{n}");
            u.iter()
                .any(|x| x.run_id == run && x.status == Some(RunStatus::Success))
        })
    };
    loop {
        let probe = Instant::now();
        let (code, _) =
            tokio::time::timeout(Duration::from_secs(5), http_get(&format!("{base}/healthz")))
                .await
                .expect("/healthz answers within 5 s while runaways run");
        assert_eq!(code, 200);
        healthz_ms.push(probe.elapsed().as_millis());
        log.read_for(Duration::from_millis(200)).await;
        if normal_done(&log.updates) {
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "normal runs did not finish within {WAIT:?}"
        );
    }
    let normal_s = started.elapsed().as_secs_f64();
    log.wait_finished(108, WAIT).await;
    let mut budget = 0;
    for (i, code) in runaways.iter().enumerate() {
        let f = log.sole_terminal(&format!("r_runaway_{i}")).await;
        assert_eq!(f.status, Some(RunStatus::Failure), "{code}: {f:?}");
        let s = f.summary.unwrap();
        assert!(
            s.starts_with("template budget exceeded in invocationMethod.body.v: ")
                || s.starts_with("template error in invocationMethod.body.v"),
            "{code}: {s}"
        );
        budget += usize::from(s.starts_with("template budget exceeded"));
    }
    assert!(
        budget >= 6,
        "most runaways hit a budget, not a jq error: {budget}"
    );
    let dlq = read_dlq(&kafka, &t, runaways.len(), WAIT).await;
    let classes: Vec<&str> = dlq
        .iter()
        .map(|r| r.headers["switchyard-error-class"].as_str())
        .collect();
    assert!(
        classes
            .iter()
            .all(|c| *c == "template_budget" || *c == "template_error"),
        "{classes:?}"
    );
    let page = http_get(&format!("{base}/metrics")).await.1;
    let refused = sample(
        &page,
        "switchyard_refusals_total{reason=\"template_budget\"}",
    )
    .unwrap();
    assert_eq!(refused as usize, budget);
    assert!(d.is_running());
    println!(
        "runaways: {} runaway templates ({budget} over budget), 100 normal runs all SUCCESS \
         {normal_s:.2} s after publishing; /healthz max {} ms over {} probes",
        runaways.len(),
        healthz_ms.iter().max().unwrap(),
        healthz_ms.len()
    );
    assert!(normal_s < 20.0, "normal runs took {normal_s:.1} s");
}

/// A GET to switchyard's own metrics page (loopback) used to succeed and store the page
/// as the run's response. By default loopback is refused before any request, by address
/// and by name (`localhost` resolves to loopback; the check runs after resolution).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_destinations_are_refused_by_address_and_by_name() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let rx = Receiver::start().await;
    // No destination opened: the defaults.
    let d = Dispatcher::start(&kafka, &t, "[backends.webhook.destinations]\nallow = []\n");
    let base = d.http_base();
    let port = rx.addr.port();
    let inv =
        |url: String| json!({"type": "WEBHOOK", "url": url, "method": "GET", "synchronized": true});
    let runs = [
        ("r_metrics", inv(format!("{base}/metrics"))),
        ("r_localhost", inv(format!("http://localhost:{port}/x"))),
        (
            "r_mapped",
            inv(format!("http://[::ffff:127.0.0.1]:{port}/x")),
        ),
        ("r_zero", inv(format!("http://0.0.0.0:{port}/x"))),
        (
            "r_meta",
            inv("http://169.254.169.254/latest/meta-data/".into()),
        ),
    ];
    let records: Vec<_> = runs
        .iter()
        .map(|(r, i)| record(None, &event_with(r, i.clone())))
        .collect();
    kafka.produce(&t.triggers, &records).await;
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_finished(runs.len(), WAIT).await;
    let summary = |u: switchyard::model::RunUpdate| {
        assert_eq!(u.status, Some(RunStatus::Failure), "{u:?}");
        u.summary.unwrap()
    };
    assert_eq!(
        summary(log.sole_terminal("r_metrics").await),
        "destination 127.0.0.1 is not allowed (loopback)"
    );
    let by_name = summary(log.sole_terminal("r_localhost").await);
    assert!(
        by_name.starts_with("destination localhost (")
            && by_name.ends_with(") is not allowed (loopback)"),
        "{by_name}"
    );
    assert_eq!(
        summary(log.sole_terminal("r_mapped").await),
        "destination ::ffff:127.0.0.1 is not allowed (loopback)"
    );
    assert_eq!(
        summary(log.sole_terminal("r_zero").await),
        "destination 0.0.0.0 is not allowed (unspecified)"
    );
    assert_eq!(
        summary(log.sole_terminal("r_meta").await),
        "destination 169.254.169.254 is not allowed (link-local)"
    );
    assert_eq!(rx.count(), 0, "no request reached the receiver");
    let dlq = read_dlq(&kafka, &t, runs.len(), WAIT).await;
    assert!(dlq
        .iter()
        .all(|r| r.headers["switchyard-error-class"] == "destination"));
    let page = http_get(&format!("{base}/metrics")).await.1;
    assert!(sample(&page, "switchyard_refusals_total{reason=\"destination\"}").unwrap() >= 5.0);
    println!("loopback: 5 runs refused (metrics page, localhost, ::ffff:127.0.0.1, 0.0.0.0, metadata), 0 requests made");
}

/// A template naming a secret out of its scope fails the run and names the secret, never
/// its value; the value appears in no record of any topic and no log line, even when an
/// echo service returns a scoped secret in its response (redaction by value).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_out_of_scope_is_refused_and_no_secret_value_leaks() {
    const GH: &str = "ghp_stolen-token-value-123456";
    const HOOK: &str = "hook-secret-value-987654";
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let rx = Receiver::start().await;
    let cfg = config_toml(
        &kafka,
        &t,
        "[secrets]\n\
         gh = { env = \"SWITCHYARD_TEST_GH\" }\n\
         hook = { env = \"SWITCHYARD_TEST_HOOK\", hosts = [\"127.0.0.1\"], backends = [\"WEBHOOK\"] }\n\
         elsewhere = { env = \"SWITCHYARD_TEST_HOOK\", hosts = [\"hooks.example.com\"] }\n",
    );
    let mut d = Dispatcher::start_with_config(
        &cfg,
        &[("SWITCHYARD_TEST_GH", GH), ("SWITCHYARD_TEST_HOOK", HOOK)],
    );
    let echo = rx.url("/echo?echo=1");
    let ev = |run: &str, body: serde_json::Value| {
        event_with(
            run,
            json!({"type": "WEBHOOK", "url": echo, "synchronized": true, "body": body}),
        )
    };
    let records = [
        record(
            None,
            &ev("r_stolen", json!({"stolen": "{{ .secrets.gh }}"})),
        ),
        record(
            None,
            &ev("r_bracket", json!({"s": "x{{ .secrets[\"gh\"] }}"})),
        ),
        record(
            None,
            &ev("r_elsewhere", json!({"s": "{{ .secrets.elsewhere }}"})),
        ),
        record(None, &ev("r_all", json!({"all": "{{ .secrets | keys }}"}))),
        record(
            None,
            &ev("r_scoped", json!({"hook": "{{ .secrets.hook }}"})),
        ),
    ];
    kafka.produce(&t.triggers, &records).await;
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_finished(5, WAIT).await;
    let stolen = log.sole_terminal("r_stolen").await;
    assert_eq!(stolen.status, Some(RunStatus::Failure));
    assert_eq!(
        stolen.summary.as_deref().unwrap(),
        "invocationMethod.body.stolen: secret \"gh\" has no scope, so no template sees it; to let \
         it go to WEBHOOK 127.0.0.1, add hosts = [\"127.0.0.1\"] or backends = [\"WEBHOOK\"] to secrets.gh"
    );
    let bracket = log.sole_terminal("r_bracket").await.summary.unwrap();
    assert!(bracket.contains("secret \"gh\" has no scope"), "{bracket}");
    let elsewhere = log.sole_terminal("r_elsewhere").await.summary.unwrap();
    assert!(
        elsewhere.contains("secret \"elsewhere\" may not go to WEBHOOK 127.0.0.1"),
        "{elsewhere}"
    );
    // A dynamic read sees only the secrets in scope for this destination.
    let all = log.sole_terminal("r_all").await;
    assert_eq!(all.status, Some(RunStatus::Success), "{all:?}");
    let scoped = log.sole_terminal("r_scoped").await;
    assert_eq!(scoped.status, Some(RunStatus::Success), "{scoped:?}");
    let seen = rx.requests();
    assert_eq!(seen.len(), 2, "only the two allowed runs made requests");
    let all_req = seen.iter().find(|s| s.body.get("all").is_some()).unwrap();
    assert_eq!(all_req.body["all"], json!(["hook", "token"]));
    let scoped_req = seen.iter().find(|s| s.body.get("hook").is_some()).unwrap();
    assert_eq!(
        scoped_req.body["hook"], HOOK,
        "a scoped secret reaches its destination"
    );
    // The echo returned the scoped secret: the stored response has it redacted.
    let response = log
        .of("r_scoped")
        .into_iter()
        .find_map(|u| u.response.clone())
        .expect("a response update");
    assert_eq!(response["hook"], "***");
    log.settle(Duration::from_millis(500)).await;
    let dlq = read_dlq(&kafka, &t, 3, WAIT).await;
    assert!(dlq
        .iter()
        .all(|r| r.headers["switchyard-error-class"] == "secret_scope"));
    let mut searched = 0;
    for (topic, parts) in [
        (&t.status, t.status_partitions),
        (&t.dlq, 1),
        (&t.watches, 1),
        (&t.triggers, t.triggers_partitions),
    ] {
        let (n, text) = all_text(&kafka, topic, parts).await;
        searched += n;
        for secret in [GH, HOOK] {
            assert!(!text.contains(secret), "{secret} found on {topic}");
        }
    }
    d.kill();
    let logs = d.logs();
    assert!(logs.lines().count() > 5, "the log has lines to search");
    for secret in [GH, HOOK, TEST_TOKEN] {
        assert!(!logs.contains(secret), "{secret} found in the log");
    }
    println!(
        "secrets: 3 runs refused by scope, 2 allowed; no secret value in {searched} records of 4 \
         topics or in {} log lines",
        logs.lines().count()
    );
}

/// A panic in a run's task (a test hook) fails that run with class `internal`; the
/// lane and the partition's watermark move on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_run_fails_and_the_partition_moves_on() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let rx = Receiver::start().await;
    let d = Dispatcher::start_with_config(
        &config_toml(&kafka, &t, ""),
        &[("SWITCHYARD_TEST_PANIC_RUN_ID", "r_panics")],
    );
    // One ordering key: the three runs share a lane.
    let records: Vec<_> = ["r_before", "r_panics", "r_after"]
        .iter()
        .map(|r| record(Some("same-key"), &webhook_event(r, &rx.url("/ok"), true)))
        .collect();
    kafka.produce(&t.triggers, &records).await;
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_finished(3, WAIT).await;
    let p = log.sole_terminal("r_panics").await;
    assert_eq!(p.status, Some(RunStatus::Failure));
    assert!(
        p.summary
            .as_deref()
            .unwrap()
            .starts_with("internal error: switchyard failed while dispatching this run (test hook"),
        "{p:?}"
    );
    for r in ["r_before", "r_after"] {
        assert_eq!(log.sole_terminal(r).await.status, Some(RunStatus::Success));
    }
    let dlq = read_dlq(&kafka, &t, 1, WAIT).await;
    assert_eq!(dlq[0].headers["switchyard-error-class"], "internal");
    let committed = kafka.wait_committed(&t, 3, WAIT).await;
    assert_eq!(committed, 3);
    let page = http_get(&format!("{}/metrics", d.http_base())).await.1;
    assert_eq!(
        sample(&page, "switchyard_refusals_total{reason=\"panic\"}"),
        Some(1.0)
    );
    assert!(d.logs().contains("a run's task panicked"));
    println!("panic: the run FAILURE (internal) + DLQ, the next run in its lane SUCCESS, committed to 3/3");
}

/// The KAFKA backend writes only to its default topic and `backends.kafka.topics`, never
/// to switchyard's own topics, and creates no topic for an event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kafka_backend_writes_only_to_allowed_topics() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let extra_topic = unique("allowed");
    kafka.create_topic(&extra_topic, 1).await;
    let cfg = config_toml(
        &kafka,
        &t,
        &format!("[backends.kafka]\ntopics = [\"{extra_topic}\"]"),
    );
    assert!(
        cfg.contains("topics = ["),
        "the test config names the allowed topic"
    );
    let _d = Dispatcher::start_with_config(&cfg, &[]);
    let ev = |run: &str, topic: Option<&str>| {
        let mut inv = json!({"type": "KAFKA", "payload": {"x": 1}, "synchronized": true});
        if let Some(topic) = topic {
            inv["topic"] = json!(topic);
        }
        event_with(run, inv)
    };
    let records = [
        record(None, &ev("r_status", Some(&t.status))),
        record(None, &ev("r_triggers", Some(&t.triggers))),
        record(None, &ev("r_other", Some("not-listed"))),
        record(None, &ev("r_default", None)),
        record(None, &ev("r_listed", Some(&extra_topic))),
    ];
    kafka.produce(&t.triggers, &records).await;
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_finished(5, WAIT).await;
    for run in ["r_status", "r_triggers"] {
        let f = log.sole_terminal(run).await;
        assert_eq!(f.status, Some(RunStatus::Failure));
        assert!(f
            .summary
            .unwrap()
            .contains("is one of switchyard's own topics"));
    }
    let other = log.sole_terminal("r_other").await.summary.unwrap();
    assert!(
        other.contains("\"not-listed\" is not allowed; backends.kafka.topics"),
        "{other}"
    );
    for run in ["r_default", "r_listed"] {
        assert_eq!(
            log.sole_terminal(run).await.status,
            Some(RunStatus::Success),
            "{run}"
        );
    }
    assert_eq!(
        read_records(&kafka, &extra_topic, 1, 1, WAIT).await.len(),
        1
    );
    assert_eq!(read_records(&kafka, &t.actions, 1, 1, WAIT).await.len(), 1);
    let dlq = read_dlq(&kafka, &t, 3, WAIT).await;
    assert!(dlq
        .iter()
        .all(|r| r.headers["switchyard-error-class"] == "kafka_topic"));
}

/// A producer cannot set `switchyard-replayed-from` to skip the duplicate check: without
/// the MAC that `switchyard dlq replay` adds, the marker is ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_replay_marker_does_not_skip_the_duplicate_check() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let rx = Receiver::start().await;
    let d = Dispatcher::start(&kafka, &t, "");
    let ev = webhook_event("r_once", &rx.url("/ok"), true);
    kafka.produce(&t.triggers, &[record(None, &ev)]).await;
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_finished(1, WAIT).await;
    // The same run again, claiming to be a replay, with a made-up MAC.
    let producer = kafka.producer();
    let payload = serde_json::to_vec(&ev).unwrap();
    use rdkafka::message::{Header, OwnedHeaders};
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "switchyard-replayed-from",
            value: Some("dlq/0/0"),
        })
        .insert(Header {
            key: "switchyard-replay-mac",
            value: Some("AAAA"),
        });
    producer
        .send(
            rdkafka::producer::FutureRecord::<[u8], [u8]>::to(&t.triggers)
                .payload(&payload)
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    kafka.wait_committed(&t, 2, WAIT).await;
    log.settle(Duration::from_millis(500)).await;
    assert_eq!(rx.count(), 1, "the forged replay was not dispatched again");
    assert_eq!(
        log.sole_terminal("r_once").await.status,
        Some(RunStatus::Success)
    );
    let page = http_get(&format!("{}/metrics", d.http_base())).await.1;
    assert_eq!(
        sample(&page, "switchyard_refusals_total{reason=\"replay_mac\"}"),
        Some(1.0)
    );
    assert!(d.logs().contains("duplicate run suppressed"));
}

/// A 401 from one destination pauses that destination only: runs to another destination
/// of the same backend flow on, and a run waiting on the pause fails after
/// `credentials_max_wait`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_failure_pauses_one_destination_for_a_bounded_time() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let bad = Receiver::start().await;
    bad.set_default_status(401);
    let good = Receiver::start().await;
    let d = Dispatcher::start(
        &kafka,
        &t,
        "[dispatch]\nordering = \"unordered\"\n[backends.webhook.retry]\ncredentials_pause = \"1s\"\ncredentials_max_wait = \"3s\"\n",
    );
    kafka
        .produce(
            &t.triggers,
            &[record(None, &webhook_event("r_401", &bad.url("/x"), true))],
        )
        .await;
    bad.wait_requests(1, WAIT).await;
    let records: Vec<_> = (0..5)
        .map(|n| {
            record(
                None,
                &webhook_event(&format!("r_ok_{n}"), &good.url("/ok"), true),
            )
        })
        .collect();
    let ok_sent = Instant::now();
    kafka.produce(&t.triggers, &records).await;
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_until(WAIT, "5 runs to the good destination", |u| {
        (0..5).all(|n| {
            u.iter().any(|x| {
                x.run_id == format!("r_ok_{n}")
                    && x.status.is_some_and(|s| s != RunStatus::InProgress)
            })
        })
    })
    .await;
    let ok_s = ok_sent.elapsed().as_secs_f64();
    for n in 0..5 {
        assert_eq!(
            log.sole_terminal(&format!("r_ok_{n}")).await.status,
            Some(RunStatus::Success)
        );
    }
    log.wait_finished(6, WAIT).await;
    let f = log.sole_terminal("r_401").await;
    assert_eq!(f.status, Some(RunStatus::Failure));
    // From the first pause notice to the failure, by the updates' own timestamps.
    let at = |u: &switchyard::model::RunUpdate| {
        time::OffsetDateTime::parse(&u.at, &time::format_description::well_known::Rfc3339).unwrap()
    };
    let first_pause = log
        .of("r_401")
        .into_iter()
        .find(|u| {
            u.message
                .as_deref()
                .is_some_and(|m| m.contains("paused: credentials rejected"))
        })
        .map(at)
        .expect("a pause notice");
    let failed_s = (at(&f) - first_pause).as_seconds_f64();
    let s = f.summary.unwrap();
    assert!(
        s.contains("credentials still rejected after") && s.contains("credentials_max_wait is 3s"),
        "{s}"
    );
    assert!(
        (2.5..15.0).contains(&failed_s),
        "failed after {failed_s:.1} s"
    );
    assert!(
        ok_s < 2.5,
        "the other destination was not held back: {ok_s:.1} s"
    );
    assert!(bad.count() >= 2, "the paused destination was probed again");
    let page = http_get(&format!("{}/metrics", d.http_base())).await.1;
    assert_eq!(
        sample(
            &page,
            "switchyard_refusals_total{reason=\"credentials_wait\"}"
        ),
        Some(1.0)
    );
    println!(
        "credentials: 401 destination probed {} times, run failed after {failed_s:.1} s (cap 3 s); \
         5 runs to another destination done in {ok_s:.2} s",
        bad.count()
    );
}

/// A record over the input cap goes to the DLQ as `too_large` with a truncated copy and
/// the run fails; the partition moves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_over_the_input_cap_goes_to_the_dlq_truncated() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let rx = Receiver::start().await;
    let _d = Dispatcher::start(&kafka, &t, "[dispatch]\nmax_event_bytes = 200000\n");
    let mut big = webhook_event("r_big", &rx.url("/x"), true);
    big["inputs"]["blob"] = json!("x".repeat(300_000));
    let small = webhook_event("r_small", &rx.url("/ok"), true);
    kafka
        .produce(&t.triggers, &[record(None, &big), record(None, &small)])
        .await;
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_finished(2, WAIT).await;
    let f = log.sole_terminal("r_big").await;
    assert_eq!(f.status, Some(RunStatus::Failure));
    let summary = f.summary.unwrap();
    assert!(
        summary.starts_with("the record is too large: 300")
            && summary.contains("the limit is 200000"),
        "{summary}"
    );
    assert_eq!(
        log.sole_terminal("r_small").await.status,
        Some(RunStatus::Success)
    );
    let dlq = read_dlq(&kafka, &t, 1, WAIT).await;
    assert_eq!(dlq[0].headers["switchyard-error-class"], "too_large");
    assert_eq!(dlq[0].payload.as_ref().unwrap().len(), 64 * 1024);
    let original: usize = dlq[0].headers["switchyard-truncated-from"].parse().unwrap();
    assert!(original > 300_000);
    assert!(dlq[0].headers["switchyard-source"].starts_with(&format!("{}/0/0", t.triggers)));
    assert_eq!(kafka.wait_committed(&t, 2, WAIT).await, 2);
    assert_eq!(rx.count(), 1, "only the small run made a request");
}

/// `actions.mode = "registered"`: events name an action and carry inputs; the operator's
/// file holds the invocation. An event with its own `invocationMethod` is rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_actions_take_the_invocation_from_the_operator() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let rx = Receiver::start().await;
    let file = scratch_dir().join("actions.json");
    let actions = json!({"deploy_service": {"invocationMethod": {"type": "WEBHOOK",
        "url": rx.url("/deploy/{{ .inputs.service }}"), "synchronized": true,
        "body": {"version": "{{ .inputs.version }}"}}}});
    std::fs::write(&file, actions.to_string()).unwrap();
    let _d = Dispatcher::start(
        &kafka,
        &t,
        &format!(
            "[actions]\nmode = \"registered\"\nfile = \"{}\"\n",
            file.display()
        ),
    );
    let named = json!({"run": {"id": "r_named"}, "action": {"identifier": "deploy_service"},
        "inputs": {"service": "checkout", "version": "1.2.3"}});
    let own = webhook_event("r_own", &rx.url("/evil"), true);
    let unknown = json!({"run": {"id": "r_unknown"}, "action": {"identifier": "drop_tables"}});
    kafka
        .produce(
            &t.triggers,
            &[
                record(None, &named),
                record(None, &own),
                record(None, &unknown),
            ],
        )
        .await;
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_finished(3, WAIT).await;
    assert_eq!(
        log.sole_terminal("r_named").await.status,
        Some(RunStatus::Success)
    );
    let own = log.sole_terminal("r_own").await.summary.unwrap();
    assert!(
        own.contains("events may not carry one when actions.mode is \"registered\""),
        "{own}"
    );
    let unknown = log.sole_terminal("r_unknown").await.summary.unwrap();
    assert!(
        unknown.contains("\"drop_tables\" is not a registered action"),
        "{unknown}"
    );
    let seen = rx.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/deploy/checkout");
    assert_eq!(seen[0].body["version"], "1.2.3");
    assert_eq!(read_dlq(&kafka, &t, 2, WAIT).await.len(), 2);
}

/// A secret read from a file is read again on SIGHUP (and when the file changes): the
/// next run sends the rotated value, and neither value appears in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_file_secret_is_used_after_sighup() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let rx = Receiver::start().await;
    let file = scratch_dir().join("hook-secret");
    std::fs::write(&file, "rotation-value-one\n").unwrap();
    let cfg = config_toml(
        &kafka,
        &t,
        &format!(
            "[secrets]\nrotated = {{ file = \"{}\", hosts = [\"127.0.0.1\"] }}\n",
            file.display()
        ),
    );
    let mut d = Dispatcher::start_with_config(&cfg, &[]);
    let ev = |run: &str| {
        event_with(
            run,
            json!({"type": "WEBHOOK", "url": rx.url("/s"), "synchronized": true,
                   "body": {"s": "{{ .secrets.rotated }}"}}),
        )
    };
    kafka
        .produce(&t.triggers, &[record(None, &ev("r_rot_1"))])
        .await;
    rx.wait_requests(1, WAIT).await;
    std::fs::write(&file, "rotation-value-two\n").unwrap();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &d.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let deadline = Instant::now() + WAIT;
    while !d.logs().contains("secrets re-read") {
        assert!(Instant::now() < deadline, "no reload logged:\n{}", d.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    kafka
        .produce(&t.triggers, &[record(None, &ev("r_rot_2"))])
        .await;
    rx.wait_requests(2, WAIT).await;
    let seen = rx.requests();
    assert_eq!(seen[0].body["s"], "rotation-value-one");
    assert_eq!(seen[1].body["s"], "rotation-value-two");
    assert!(
        d.is_running(),
        "SIGHUP reloads, it does not stop the process"
    );
    let logs = d.logs();
    assert!(!logs.contains("rotation-value-one") && !logs.contains("rotation-value-two"));
}

/// The output budgets: a rendered value over `templates.max_output_bytes` or deeper than
/// `templates.max_depth`, and a program over `templates.max_program_bytes`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_size_depth_and_program_length_are_bounded() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let rx = Receiver::start().await;
    let _d = Dispatcher::start(
        &kafka,
        &t,
        // A generous CPU budget (debug builds of jaq are slow): the size caps must trip.
        "[templates]\ntimeout = \"5s\"\nmax_output_bytes = 100000\nmax_depth = 32\nmax_program_bytes = 512\n",
    );
    let cases = [
        ("r_wide", "{{ [range(30000)] }}".to_owned()),
        ("r_deep", "{{ reduce range(40) as $i (0; [.]) }}".to_owned()),
        ("r_long", format!("{{{{ {} }}}}", ["1"; 300].join(" + "))),
        ("r_fits", "{{ [range(10)] | length }}".to_owned()),
    ];
    let records: Vec<_> = cases
        .iter()
        .map(|(run, code)| {
            record(
                None,
                &event_with(
                    run,
                    json!({"type": "WEBHOOK", "url": rx.url("/x"), "synchronized": true,
                           "body": {"v": code}}),
                ),
            )
        })
        .collect();
    kafka.produce(&t.triggers, &records).await;
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_finished(cases.len(), WAIT).await;
    let summary = |u: switchyard::model::RunUpdate| u.summary.unwrap();
    let wide = summary(log.sole_terminal("r_wide").await);
    assert!(
        wide.starts_with("template budget exceeded in invocationMethod: the output is ")
            && wide.ends_with("bytes; templates.max_output_bytes is 100000"),
        "{wide}"
    );
    let deep = summary(log.sole_terminal("r_deep").await);
    assert!(
        deep.starts_with("template budget exceeded in invocationMethod.body.v")
            && deep.ends_with("the output nests deeper than templates.max_depth (32)"),
        "{deep}"
    );
    let long = summary(log.sole_terminal("r_long").await);
    assert!(
        long.contains("templates.max_program_bytes is 512"),
        "{long}"
    );
    assert_eq!(
        log.sole_terminal("r_fits").await.status,
        Some(RunStatus::Success)
    );
    let dlq = read_dlq(&kafka, &t, 3, WAIT).await;
    let classes: Vec<&str> = dlq
        .iter()
        .map(|r| r.headers["switchyard-error-class"].as_str())
        .collect();
    assert_eq!(
        classes.iter().filter(|c| **c == "template_budget").count(),
        2,
        "{classes:?}"
    );
    assert_eq!(rx.count(), 1);
}

/// A template worker killed from outside while idle (the OOM killer, an operator) is
/// replaced: the next run is not blamed for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_while_idle_is_replaced_without_failing_a_run() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let rx = Receiver::start().await;
    let d = Dispatcher::start(&kafka, &t, "[templates]\nworkers = 1\n");
    let ev = |run: &str| {
        let mut e = webhook_event(run, &rx.url("/ok"), true);
        e["action"]["invocationMethod"]["body"]["up"] = json!("{{ .run.id | ascii_upcase }}");
        e
    };
    kafka
        .produce(&t.triggers, &[record(None, &ev("r_w1"))])
        .await;
    rx.wait_requests(1, WAIT).await;
    let children = std::process::Command::new("pgrep")
        .args(["-P", &d.pid().to_string()])
        .output()
        .unwrap();
    let pids: Vec<String> = String::from_utf8_lossy(&children.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(pids.len(), 1, "one template worker: {pids:?}");
    assert!(std::process::Command::new("kill")
        .args(["-KILL", &pids[0]])
        .status()
        .unwrap()
        .success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    kafka
        .produce(&t.triggers, &[record(None, &ev("r_w2"))])
        .await;
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_finished(2, WAIT).await;
    for run in ["r_w1", "r_w2"] {
        assert_eq!(
            log.sole_terminal(run).await.status,
            Some(RunStatus::Success),
            "{run}"
        );
    }
    assert_eq!(rx.requests()[1].body["up"], "R_W2");
}
