//! The status API: Port's reporting endpoints and rules, answered from the status topic
//! by any instance.

mod common;

use std::time::Duration;

use common::receiver::Receiver;
use common::*;
use serde_json::{json, Value};
use switchyard::model::{RunStatus, UpdateKind};

const WAIT: Duration = Duration::from_secs(60);
const API: &str = "[api]\ntokens = [{ env = \"SWITCHYARD_TEST_TOKEN\" }]\n";

struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    fn new(d: &Dispatcher) -> Client {
        Client {
            base: d.http_base(),
            http: reqwest::Client::new(),
        }
    }

    async fn send(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.raw(method, path, body.map(|b| b.to_string()), Some(TEST_TOKEN))
            .await
    }

    async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.header("content-type", "application/json").body(b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

/// Publish an async webhook run and wait until it is accepted (202): it then waits,
/// IN_PROGRESS, for reports through the API. Returns the status log read so far.
async fn accepted_run(kafka: &Kafka, t: &Topics, rx: &Receiver, run: &str) -> StatusLog {
    kafka
        .produce(
            &t.triggers,
            &[record(
                None,
                &webhook_event(run, &rx.url("/accepted?status=202"), false),
            )],
        )
        .await;
    let mut log = StatusLog::new(kafka, t);
    log.wait_until(WAIT, "the run accepted", |u| {
        u.iter()
            .any(|u| u.kind == UpdateKind::Log && u.run_id == run)
    })
    .await;
    log
}

/// An async webhook run reported to completion through the API, as a workflow reporting
/// to Port would: label and link, logs, the response, then a final status. Port's rules
/// hold afterwards, and a second instance that did not dispatch the run answers for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_run_is_reported_through_the_api_with_ports_rules() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let rx = Receiver::start().await;
    let a = Dispatcher::start(&kafka, &t, API);
    let api = Client::new(&a);
    let mut log = accepted_run(&kafka, &t, &rx, "r_api").await;

    let (code, body) = api
        .send(
            "PATCH",
            "/v1/actions/runs/r_api",
            Some(json!({"statusLabel": "deploying", "link": "https://ci.example/77", "externalRunId": "77"})),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["run"]["status"], "IN_PROGRESS");
    assert_eq!(body["run"]["link"], json!(["https://ci.example/77"]));
    let (code, _) = api
        .send(
            "POST",
            "/v1/actions/runs/r_api/logs",
            Some(json!({"message": "step 1 of 2 done"})),
        )
        .await;
    assert_eq!(code, 200);
    let (code, _) = api
        .send(
            "PATCH",
            "/v1/actions/runs/r_api/response",
            Some(json!({"response": {"image": "checkout:1.4.2"}})),
        )
        .await;
    assert_eq!(code, 200);
    let (code, body) = api
        .send(
            "POST",
            "/v1/actions/runs/r_api/logs",
            Some(json!({"message": "deployed", "terminationStatus": "SUCCESS", "statusLabel": "live"})),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["run"]["status"], "SUCCESS");

    // Every write is on the status topic.
    log.wait_until(WAIT, "the reported SUCCESS", |u| {
        StatusLog::finished(u) >= 1
    })
    .await;
    let done = log.sole_terminal("r_api").await;
    let ups = log.of("r_api");
    assert_eq!(done.status, Some(RunStatus::Success));
    assert_eq!(done.status_label.as_deref(), Some("live"));
    assert!(ups
        .iter()
        .any(|u| u.external_run_id.as_deref() == Some("77")));
    assert!(ups
        .iter()
        .any(|u| u.response == Some(json!({"image": "checkout:1.4.2"}))));
    let seqs: Vec<u64> = ups.iter().map(|u| u.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seq grows: {seqs:?}");

    // Port's rules once the run is finished.
    let (code, body) = api
        .send(
            "PATCH",
            "/v1/actions/runs/r_api",
            Some(json!({"status": "FAILURE"})),
        )
        .await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(
        body["message"],
        "run r_api is already SUCCESS; a finished run cannot be changed"
    );
    let (code, _) = api
        .send(
            "POST",
            "/v1/actions/runs/r_api/logs",
            Some(json!({"message": "again", "terminationStatus": "FAILURE"})),
        )
        .await;
    assert_eq!(code, 409, "terminationStatus is accepted once");

    // A second instance, which dispatched nothing, answers for the run.
    let b = Dispatcher::start(&kafka, &t, API);
    let other = Client::new(&b);
    let (code, body) = other.send("GET", "/v1/actions/runs/r_api", None).await;
    assert_eq!(code, 200, "{body}");
    let run = &body["run"];
    println!("GET from the other instance: {run}");
    assert_eq!(run["status"], "SUCCESS");
    assert_eq!(run["statusLabel"], "live");
    assert_eq!(run["externalRunId"], "77");
    assert_eq!(run["link"], json!(["https://ci.example/77"]));
    assert_eq!(run["response"], json!({"image": "checkout:1.4.2"}));
    assert_eq!(run["backend"], "WEBHOOK");
    let logs: Vec<&str> = run["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    assert!(
        logs.contains(&"step 1 of 2 done") && logs.contains(&"deployed"),
        "{logs:?}"
    );
    assert!(run["endedAt"].is_string() && run["createdAt"].is_string());
}

/// 401 without or with a wrong token, 404 for an unknown run, 413 over 1 MiB, 400 naming
/// the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_rejects_what_port_rejects() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let rx = Receiver::start().await;
    let d = Dispatcher::start(&kafka, &t, API);
    let api = Client::new(&d);
    kafka
        .produce(
            &t.triggers,
            &[record(
                None,
                &webhook_event("r_rules", &rx.url("/a?status=202"), false),
            )],
        )
        .await;
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_until(WAIT, "accepted", |u| {
        u.iter().any(|u| u.kind == UpdateKind::Log)
    })
    .await;
    let path = "/v1/actions/runs/r_rules";
    let body = Some(json!({"summary": "x"}).to_string());
    assert_eq!(api.raw("PATCH", path, body.clone(), None).await.0, 401);
    assert_eq!(
        api.raw("PATCH", path, body.clone(), Some("wrong")).await.0,
        401
    );
    let (code, b) = api.send("GET", "/v1/actions/runs/r_nobody", None).await;
    assert_eq!(
        (code, b["message"].as_str()),
        (404, Some("run r_nobody was not found"))
    );
    let huge = json!({"response": "x".repeat(1024 * 1024 + 10)}).to_string();
    let (code, _) = api
        .raw(
            "PATCH",
            &format!("{path}/response"),
            Some(huge),
            Some(TEST_TOKEN),
        )
        .await;
    assert_eq!(code, 413);
    let (code, b) = api
        .send("PATCH", path, Some(json!({"status": "DONE"})))
        .await;
    assert_eq!(code, 400);
    assert!(
        b["message"]
            .as_str()
            .unwrap()
            .starts_with("status: unknown variant `DONE`"),
        "{b}"
    );
    let (code, b) = api
        .send("PATCH", path, Some(json!({"colour": "red"})))
        .await;
    assert_eq!(code, 400);
    assert!(
        b["message"]
            .as_str()
            .unwrap()
            .contains("unknown field `colour`"),
        "{b}"
    );
    let (code, b) = api
        .send(
            "POST",
            &format!("{path}/logs"),
            Some(json!({"terminationStatus": "SUCCESS"})),
        )
        .await;
    assert_eq!(code, 400);
    assert!(
        b["message"]
            .as_str()
            .unwrap()
            .contains("missing field `message`"),
        "{b}"
    );
    let (code, _) = api
        .raw("PATCH", path, Some("{not json".into()), Some(TEST_TOKEN))
        .await;
    assert_eq!(code, 400);
    // Still open after all the rejected writes.
    let (code, b) = api.send("GET", path, None).await;
    assert_eq!(
        (code, b["run"]["status"].as_str()),
        (200, Some("IN_PROGRESS"))
    );
}

/// Without tokens in the config the API takes no writes: PATCH gets the router's empty
/// 404 with no token, a random token or the token an enabled API would take, and nothing
/// is written to the status topic. On a loopback listener the run board's reads answer
/// without a token (read-only); with `http.board = false` they are not routed either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_without_tokens_takes_no_writes() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let rx = Receiver::start().await;
    let d = Dispatcher::start(&kafka, &t, "");
    // A second dispatcher with the board off, on triggers of its own.
    let spare = unique("spare");
    kafka.create_topic(&spare, 1).await;
    let closed = Dispatcher::start(
        &kafka,
        &t,
        &format!(
            "[http]\nboard = false\n[kafka]\ntriggers_topic = \"{spare}\"\ngroup_id = \"{}\"\n",
            unique("g")
        ),
    );
    // An async run, waiting for a report that an open API would take.
    let ev = webhook_event("r_closed", &rx.url("/deploy"), false);
    kafka.produce(&t.triggers, &[record(None, &ev)]).await;
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_until(WAIT, "the run in progress", |u| {
        u.iter()
            .any(|u| u.run_id == "r_closed" && u.status == Some(RunStatus::InProgress))
    })
    .await;
    log.settle(QUIET).await;
    let before = log.updates.len();
    let (api, off) = (Client::new(&d), Client::new(&closed));
    let patch = json!({"status": "SUCCESS"}).to_string();
    let mut answers = Vec::new();
    for token in [None, Some("random-9d1c"), Some(TEST_TOKEN)] {
        for client in [&api, &off] {
            let (code, body) = client
                .raw(
                    "PATCH",
                    "/v1/actions/runs/r_closed",
                    Some(patch.clone()),
                    token,
                )
                .await;
            answers.push(format!("PATCH with {token:?}: {code}"));
            assert_eq!(
                (code, body),
                (404, Value::String(String::new())),
                "{token:?}"
            );
        }
        let (code, body) = off
            .raw("GET", "/v1/actions/runs/r_closed", None, token)
            .await;
        assert_eq!(
            (code, body),
            (404, Value::String(String::new())),
            "{token:?}"
        );
        let (code, body) = api
            .raw("GET", "/v1/actions/runs/r_closed", None, token)
            .await;
        answers.push(format!("GET with {token:?}: {code}"));
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["run"]["status"], "IN_PROGRESS");
    }
    log.settle(Duration::from_secs(1)).await;
    assert_eq!(log.updates.len(), before, "{:#?}", &log.updates[before..]);
    assert!(
        log.terminal("r_closed").is_empty(),
        "the PATCH was not applied"
    );
    assert!(d.logs().contains("status API writes disabled"));
    assert!(closed.logs().contains("status API disabled"));
    println!("no tokens: {answers:?}; status topic unchanged ({before} updates)");
}

/// Without tokens on a listener that is not loopback the board is off: neither the
/// page nor its reads answer, and the log says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_tokens_on_a_public_listener_turns_the_board_off() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let d = Dispatcher::start(&kafka, &t, "[http]\nlisten = \"0.0.0.0:0\"\n");
    // Reached over loopback all the same: the listener is bound to every address.
    let base = d.http_base().replace("0.0.0.0", "127.0.0.1");
    let api = Client {
        base,
        http: reqwest::Client::new(),
    };
    for path in [
        "/",
        "/v1/runs",
        "/v1/events",
        "/v1/dlq",
        "/v1/actions/runs/r_x",
    ] {
        let (code, _) = api.raw("GET", path, None, None).await;
        assert_eq!(code, 404, "GET {path}");
    }
    let (code, _) = api.raw("GET", "/healthz", None, None).await;
    assert_eq!(code, 200, "the listener itself serves");
    assert!(d.logs().contains("the run board is off"), "{}", d.logs());
}

/// Tokens carry scopes: a read-only token reads a run but cannot report on it (403), a
/// token with no `scopes` keeps both, and a run takes a bounded number of log lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_scopes_and_the_log_cap_hold() {
    const READER: &str = "reader-token-123456";
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let rx = Receiver::start().await;
    let api = "[api]\ntokens = [{ env = \"SWITCHYARD_TEST_TOKEN\" }, \
               { env = \"SWITCHYARD_TEST_READER\", scopes = [\"read\"] }]\nmax_log_appends = 3\n";
    let d = Dispatcher::start_with_config(
        &config_toml(&kafka, &t, api),
        &[("SWITCHYARD_TEST_READER", READER)],
    );
    kafka
        .produce(
            &t.triggers,
            &[record(
                None,
                &webhook_event("r_scoped_api", &rx.url("/a"), false),
            )],
        )
        .await;
    let c = Client::new(&d);
    let path = "/v1/actions/runs/r_scoped_api";
    let deadline = std::time::Instant::now() + WAIT;
    while c.raw("GET", path, None, Some(READER)).await.0 != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the run never appeared"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (code, body) = c
        .raw(
            "PATCH",
            path,
            Some(json!({"statusLabel": "x"}).to_string()),
            Some(READER),
        )
        .await;
    assert_eq!(code, 403, "{body}");
    assert_eq!(body["message"], "this token lacks the write scope");
    // The unscoped token writes, up to the cap (the dispatch may have logged already).
    let logs = format!("{path}/logs");
    let (_, run) = c.send("GET", path, None).await;
    let have = run["run"]["logs"].as_array().unwrap().len();
    assert!(have < 3, "{run}");
    for n in have..3 {
        let (code, body) = c
            .send("POST", &logs, Some(json!({"message": format!("l{n}")})))
            .await;
        assert_eq!(code, 200, "{body}");
    }
    let (code, body) = c
        .send("POST", &logs, Some(json!({"message": "one too many"})))
        .await;
    assert_eq!(code, 429, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("api.max_log_appends is 3"),
        "{body}"
    );
    let page = http_get(&format!("{}/metrics", d.http_base())).await.1;
    assert_eq!(
        sample(&page, "switchyard_refusals_total{reason=\"api_scope\"}"),
        Some(1.0)
    );
}

/// Concurrent API writes to one run, right after the dispatcher's own updates: every
/// update of the run has its own `seq`, and the numbers run 1, 2, 3, … without a gap.
/// (Before the sequencer, the API numbered after the run view's last update, which can
/// trail the topic, and two writes could take the same number.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_api_writes_to_one_run_get_distinct_seqs() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let rx = Receiver::start().await;
    let d = Dispatcher::start(&kafka, &t, API);
    let api = Client::new(&d);
    let mut log = accepted_run(&kafka, &t, &rx, "r_seq").await;

    const WRITES: usize = 24;
    let mut tasks = Vec::new();
    for i in 0..WRITES {
        let client = Client::new(&d);
        tasks.push(tokio::spawn(async move {
            let (method, path, body) = match i % 3 {
                0 => (
                    "PATCH",
                    "/v1/actions/runs/r_seq",
                    json!({"statusLabel": format!("step {i}")}),
                ),
                1 => (
                    "POST",
                    "/v1/actions/runs/r_seq/logs",
                    json!({"message": format!("line {i}")}),
                ),
                _ => (
                    "PATCH",
                    "/v1/actions/runs/r_seq/response",
                    json!({"response": {"i": i}}),
                ),
            };
            client.send(method, path, Some(body)).await
        }));
    }
    for task in tasks {
        let (code, body) = task.await.unwrap();
        assert_eq!(code, 200, "{body}");
    }
    let (code, body) = api
        .send(
            "POST",
            "/v1/actions/runs/r_seq/logs",
            Some(json!({"message": "done", "terminationStatus": "SUCCESS"})),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    log.wait_until(WAIT, "the reported SUCCESS", |u| {
        StatusLog::finished(u) >= 1
    })
    .await;
    log.settle(Duration::from_millis(500)).await;
    // Run update v2: every update, the API's included, carries the run's action.
    let ups = log.of("r_seq");
    let without: Vec<u64> = ups
        .iter()
        .filter(|u| u.action.as_deref() != Some("deploy_service"))
        .map(|u| u.seq)
        .collect();
    assert!(
        without.is_empty(),
        "updates without the action: seqs {without:?}"
    );
    let (code, body) = api.send("GET", "/v1/actions/runs/r_seq", None).await;
    assert_eq!(
        (code, &body["run"]["action"]),
        (200, &json!("deploy_service"))
    );
    let mut seqs: Vec<u64> = log.of("r_seq").iter().map(|u| u.seq).collect();
    let written = seqs.len();
    // The dispatcher's own updates (IN_PROGRESS, the accepted log, …), the 24 writes,
    // and the terminal log and status.
    assert!(written >= WRITES + 4, "only {written} updates of r_seq");
    seqs.sort_unstable();
    let expected: Vec<u64> = (1..=written as u64).collect();
    assert_eq!(seqs, expected, "seqs are distinct and without gaps");
    println!("seq: {written} updates of one run, {WRITES} written concurrently through the API, seqs 1..={written}");
}

/// Run timeouts on the status topic: an async run its service never reports fails with
/// "timed out after …" once its `run_timeout` passes; one its service finished through
/// the API before then is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_left_in_progress_times_out_unless_its_service_reported() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let rx = Receiver::start().await;
    let d = Dispatcher::start(
        &kafka,
        &t,
        &format!("{API}\n[run_timeout]\nwebhook = \"3s\"\n"),
    );
    let api = Client::new(&d);
    accepted_run(&kafka, &t, &rx, "r_forgotten").await;
    accepted_run(&kafka, &t, &rx, "r_reported").await;
    let (code, body) = api
        .send(
            "PATCH",
            "/v1/actions/runs/r_reported",
            Some(json!({"status": "SUCCESS", "summary": "deployed"})),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_until(WAIT, "r_forgotten timed out", |u| {
        u.iter()
            .any(|u| u.run_id == "r_forgotten" && u.is_terminal())
    })
    .await;
    // r_reported's deadline has passed as well (it was dispatched right after): give the
    // watcher time to decide, then each run must have exactly one terminal update.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let timed_out = log.sole_terminal("r_forgotten").await;
    assert_eq!(timed_out.status, Some(RunStatus::Failure));
    let summary = timed_out.summary.unwrap_or_default();
    assert!(summary.starts_with("timed out after 3s"), "{summary}");
    let reported = log.sole_terminal("r_reported").await;
    assert_eq!(reported.status, Some(RunStatus::Success));
}

/// A run's deadline is kept on the watches topic: after a crash, the next member times
/// the run out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_timeout_survives_a_crash() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let rx = Receiver::start().await;
    let config = format!("{API}\n[run_timeout]\nwebhook = \"4s\"\n");
    let mut first = Dispatcher::start(&kafka, &t, &config);
    accepted_run(&kafka, &t, &rx, "r_orphan").await;
    let accepted = std::time::Instant::now();
    assert_eq!(kafka.wait_committed(&t, 1, WAIT).await, 1);
    // Killed well before the deadline, so the first member cannot have timed it out.
    assert!(
        accepted.elapsed() < Duration::from_secs(3),
        "too slow to test the restart"
    );
    first.kill();
    let _second = Dispatcher::start(&kafka, &t, &config);
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_until(WAIT, "r_orphan timed out", |u| {
        u.iter().any(|u| u.run_id == "r_orphan" && u.is_terminal())
    })
    .await;
    let end = log.sole_terminal("r_orphan").await;
    assert_eq!(end.status, Some(RunStatus::Failure));
    let summary = end.summary.unwrap_or_default();
    assert!(summary.starts_with("timed out after 4s"), "{summary}");
    assert_eq!(rx.requests().len(), 1, "sent once, before the crash");
}
