//! KAFKA and UPSERT_ENTITY backends against the test broker: the produced records are
//! read back and checked (key, headers, payload), with the run updates they cause.

mod common;

use std::time::Duration;

use common::receiver::Receiver;
use common::*;
use serde_json::{json, Value};
use switchyard::model::{RunStatus, UpdateKind};

const WAIT: Duration = Duration::from_secs(60);

fn event(run: &str, invocation: Value) -> Value {
    json!({
        "run": {"id": run},
        "action": {"identifier": "create_service", "blueprint": "service",
                   "invocationMethod": invocation},
        "trigger": {"by": {"user": {"email": "dev@acme.io"}}, "origin": "UI", "operation": "CREATE"},
        "inputs": {"name": "svc-a", "team": "payments", "version": "1.4.2",
                   "domain": {"identifier": "payments", "title": "Payments"},
                   "deps": [{"identifier": "db"}, {"identifier": "cache"}]},
        "entity": {},
        "event": null
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_backend_publishes_the_payload_keyed_by_run_id() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let _d = Dispatcher::start(&kafka, &t, "");
    let async_run = event(
        "r_kafka_async",
        json!({"type": "KAFKA", "payload": {"service": "{{ .inputs.name }}",
               "runId": "{{ .run.id }}", "by": "{{ .trigger.by.user.email }}"}}),
    );
    let sync_run = event(
        "r_kafka_sync",
        json!({"type": "KAFKA", "synchronized": true,
               "payload": ["{{ .inputs.version }}", "{{ .inputs.deps | map(.identifier) }}"]}),
    );
    // One ordering key: the two runs publish in order, so their offsets are known.
    let (mut async_run, mut sync_run) = (async_run, sync_run);
    async_run["orderingKey"] = json!("service/svc-a");
    sync_run["orderingKey"] = json!("service/svc-a");
    kafka
        .produce(
            &t.triggers,
            &[record(None, &async_run), record(None, &sync_run)],
        )
        .await;

    let recs = read_records(&kafka, &t.actions, 1, 2, WAIT).await;
    let first = &recs[0];
    assert_eq!(first.key.as_deref(), Some(&b"r_kafka_async"[..]));
    assert_eq!(first.headers["switchyard-run-id"], "r_kafka_async");
    assert_eq!(first.headers["switchyard-action"], "create_service");
    let payload: Value = serde_json::from_slice(first.payload.as_deref().unwrap()).unwrap();
    assert_eq!(
        payload,
        json!({"service": "svc-a", "runId": "r_kafka_async", "by": "dev@acme.io"})
    );
    let second: Value = serde_json::from_slice(recs[1].payload.as_deref().unwrap()).unwrap();
    assert_eq!(second, json!(["1.4.2", ["db", "cache"]]));

    let mut log = StatusLog::new(&kafka, &t);
    log.wait_until(WAIT, "sync SUCCESS and async log", |u| {
        StatusLog::finished(u) >= 1
            && u.iter()
                .any(|u| u.kind == UpdateKind::Log && u.run_id == "r_kafka_async")
    })
    .await;
    let published = format!("published to {}/0@0", t.actions);
    let a = log.of("r_kafka_async");
    assert_eq!(
        a.last().unwrap().message.as_deref(),
        Some(published.as_str())
    );
    assert!(
        log.terminal("r_kafka_async").is_empty(),
        "async KAFKA runs stay open"
    );
    let s = log.terminal("r_kafka_sync");
    assert_eq!(s[0].status, Some(RunStatus::Success));
    assert_eq!(
        s[0].summary.as_deref(),
        Some(format!("published to {}/0@1", t.actions).as_str())
    );
    assert_eq!(kafka.wait_committed(&t, 2, WAIT).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_backend_rejects_a_scalar_payload() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let _d = Dispatcher::start(&kafka, &t, "");
    let ev = event(
        "r_kafka_bad",
        json!({"type": "KAFKA", "payload": "{{ .inputs.name }}"}),
    );
    kafka.produce(&t.triggers, &[record(None, &ev)]).await;
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_until(WAIT, "FAILURE", |u| StatusLog::finished(u) >= 1)
        .await;
    let f = log.sole_terminal("r_kafka_bad").await;
    assert_eq!(f.status, Some(RunStatus::Failure));
    assert_eq!(
        f.summary.as_deref(),
        Some("invocationMethod.payload: expected object or array, got \"svc-a\"")
    );
    let dlq = read_dlq(&kafka, &t, 1, WAIT).await;
    assert_eq!(
        dlq[0].headers["switchyard-error-class"],
        "invalid_invocation"
    );
}

fn upsert(run: &str) -> Value {
    event(
        run,
        json!({"type": "UPSERT_ENTITY", "blueprintIdentifier": "service",
               "mapping": {"identifier": "{{ .inputs.name }}",
                           "title": "{{ .inputs.name | ascii_upcase }}",
                           "team": "{{ .inputs.team }}", "icon": "Microservice",
                           "properties": {"owner": "{{ .trigger.by.user.email }}"},
                           "relations": {"domain": "{{ .inputs.domain.identifier }}",
                                         "deps": "{{ .inputs.deps | map(.identifier) }}",
                                         "parent": null}}}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_entity_writes_the_entity_to_a_compacted_topic() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let _d = Dispatcher::start(&kafka, &t, "");
    kafka
        .produce(&t.triggers, &[record(None, &upsert("r_upsert"))])
        .await;
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_until(WAIT, "SUCCESS", |u| StatusLog::finished(u) >= 1)
        .await;
    let done = log.sole_terminal("r_upsert").await;
    assert_eq!(done.status, Some(RunStatus::Success), "{done:?}");
    assert!(done.summary.unwrap().starts_with("upserted service/svc-a"));

    // On a real broker switchyard created this topic (kafka.topic_partitions partitions).
    let partitions = kafka.partitions(&t.entities);
    let recs = read_records(&kafka, &t.entities, partitions, 1, WAIT).await;
    assert_eq!(recs[0].key.as_deref(), Some(&b"service/svc-a"[..]));
    assert_eq!(recs[0].headers["switchyard-run-id"], "r_upsert");
    let entity: Value = serde_json::from_slice(recs[0].payload.as_deref().unwrap()).unwrap();
    assert_eq!(
        entity,
        json!({"identifier": "svc-a", "blueprint": "service", "title": "SVC-A",
               "icon": "Microservice", "team": "payments",
               "properties": {"owner": "dev@acme.io"},
               "relations": {"domain": "payments", "deps": ["db", "cache"], "parent": null}})
    );
    // The entities topic's cleanup.policy is checked on Apache Kafka, in
    // tests/real_broker.rs (the mock cluster has no DescribeConfigs).
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_entity_validation_failure_names_the_field() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let _d = Dispatcher::start(&kafka, &t, "");
    let mut ev = upsert("r_upsert_bad");
    ev["action"]["invocationMethod"]["mapping"]["team"] = json!("{{ .inputs.deps }}");
    kafka.produce(&t.triggers, &[record(None, &ev)]).await;
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_until(WAIT, "FAILURE", |u| StatusLog::finished(u) >= 1)
        .await;
    let f = log.sole_terminal("r_upsert_bad").await;
    assert_eq!(f.status, Some(RunStatus::Failure));
    assert!(
        f.summary
            .as_deref()
            .unwrap()
            .starts_with("invocationMethod.mapping.team: expected a string or a list of strings"),
        "{f:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_entity_catalog_response_decides_the_status() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let rx = Receiver::start().await;
    let extra = format!(
        "[backends.upsert_entity]\ncatalog_url = \"{}\"\ncatalog_token_secret = \"credential\"\n",
        rx.url("/api")
    );
    let _d = Dispatcher::start(&kafka, &t, &extra);
    kafka
        .produce(&t.triggers, &[record(None, &upsert("r_cat_ok"))])
        .await;
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_until(WAIT, "SUCCESS", |u| StatusLog::finished(u) >= 1)
        .await;
    assert_eq!(
        log.sole_terminal("r_cat_ok").await.status,
        Some(RunStatus::Success)
    );
    let reqs = rx.requests();
    assert_eq!(reqs[0].method, "PUT");
    assert_eq!(reqs[0].path, "/api/blueprints/service/entities/svc-a");
    assert_eq!(
        reqs[0].headers["authorization"],
        format!("Bearer {TEST_TOKEN}")
    );
    assert_eq!(reqs[0].body["relations"]["deps"], json!(["db", "cache"]));

    rx.set_default_status(422);
    kafka
        .produce(&t.triggers, &[record(None, &upsert("r_cat_fail"))])
        .await;
    log.wait_until(WAIT, "FAILURE", |u| StatusLog::finished(u) >= 2)
        .await;
    let f = log.sole_terminal("r_cat_fail").await;
    assert_eq!(f.status, Some(RunStatus::Failure));
    assert!(f.summary.unwrap().starts_with("catalog HTTP 422"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_devops_posts_a_signed_payload_to_the_incoming_webhook() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let azure = Receiver::start().await;
    let extra = format!(
        "[backends.azure_devops]\nbase_url = \"{}\"\nsecret = \"credential\"\n",
        azure.url("")
    );
    let _d = Dispatcher::start(&kafka, &t, &extra);
    let ev = |run: &str| {
        let mut e = event(
            run,
            json!({"type": "AZURE_DEVOPS", "org": "acme", "webhook": "port_trigger",
                   "payload": {"service": "{{ .inputs.name }}", "runId": "{{ .run.id }}",
                               "note": "déploiement"}}),
        );
        e["orderingKey"] = json!("ado");
        e
    };
    kafka
        .produce(&t.triggers, &[record(None, &ev("r_ado_ok"))])
        .await;
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_until(WAIT, "accepted log", |u| {
        u.iter().any(|u| u.kind == UpdateKind::Log)
    })
    .await;
    let reqs = azure.requests();
    let r = &reqs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(
        r.path,
        "/acme/_apis/public/distributedtask/webhooks/port_trigger"
    );
    assert_eq!(r.query, "api-version=6.0-preview");
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(
        r.body,
        json!({"service": "svc-a", "runId": "r_ado_ok", "note": "déploiement"})
    );
    assert_eq!(
        r.headers["x-port-signature"],
        switchyard::backends::azure_devops::signature(TEST_TOKEN, &r.raw),
        "signature over the exact bytes sent"
    );
    let updates = log.of("r_ado_ok");
    assert_eq!(updates[0].status, Some(RunStatus::InProgress));
    assert_eq!(
        updates[1].message.as_deref(),
        Some("Azure DevOps webhook port_trigger accepted: HTTP 200")
    );
    assert!(
        log.terminal("r_ado_ok").is_empty(),
        "the pipeline reports back itself"
    );

    azure.set_default_status(404);
    kafka
        .produce(&t.triggers, &[record(None, &ev("r_ado_missing"))])
        .await;
    log.wait_until(WAIT, "FAILURE", |u| StatusLog::finished(u) >= 1)
        .await;
    let f = log.sole_terminal("r_ado_missing").await;
    assert_eq!(f.status, Some(RunStatus::Failure));
    assert!(f
        .summary
        .unwrap()
        .starts_with("Azure DevOps HTTP 404 Not Found"));
}

fn gitlab_config(fake: &common::gitlab::FakeGitlab) -> String {
    format!(
        "[backends.gitlab]\nbase_url = \"{}\"\nread_token_secret = \"credential\"\n\
         trigger_tokens = {{ \"grp/sub/svc\" = \"credential\" }}\n[watch]\npoll_interval = \"200ms\"\n",
        fake.url()
    )
}

fn gitlab_event(run: &str) -> Value {
    let mut e = event(
        run,
        json!({"type": "GITLAB", "projectName": "svc", "groupName": "grp/sub",
               "defaultRef": "develop",
               "pipelineVariables": {"VERSION": "{{ .inputs.version }}", "REPLICAS": 3,
                                     "FLAGS": {"canary": true}}}),
    );
    e["inputs"]["ref"] = json!("release-1");
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_pipeline_is_triggered_and_followed_to_success() {
    use common::gitlab::FakeGitlab;
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let fake = FakeGitlab::start(
        TEST_TOKEN,
        TEST_TOKEN,
        &["pending", "running", "running", "success"],
    )
    .await;
    fake.rate_limit_next_polls(1);
    let _d = Dispatcher::start(&kafka, &t, &gitlab_config(&fake));
    kafka
        .produce(&t.triggers, &[record(None, &gitlab_event("r_gl"))])
        .await;

    let mut log = StatusLog::new(&kafka, &t);
    log.wait_until(WAIT, "SUCCESS", |u| StatusLog::finished(u) >= 1)
        .await;
    assert_eq!(kafka.wait_committed(&t, 1, WAIT).await, 1);

    let calls = fake.calls();
    let trigger = &calls[0];
    assert_eq!(trigger.method, "POST");
    assert_eq!(
        trigger.path,
        "/api/v4/projects/grp%2Fsub%2Fsvc/trigger/pipeline"
    );
    let form: std::collections::HashMap<_, _> = trigger.form.iter().cloned().collect();
    assert_eq!(form["token"], TEST_TOKEN);
    assert_eq!(
        form["ref"], "release-1",
        "the ref input wins over defaultRef"
    );
    assert_eq!(form["variables[VERSION]"], "1.4.2");
    assert_eq!(form["variables[REPLICAS]"], "3");
    assert_eq!(form["variables[FLAGS]"], r#"{"canary":true}"#);
    let polls: Vec<_> = calls.iter().filter(|c| c.method == "GET").collect();
    assert!(polls
        .iter()
        .all(|c| c.path == "/api/v4/projects/grp%2Fsub%2Fsvc/pipelines/77"));
    assert!(polls
        .iter()
        .all(|c| c.headers["private-token"] == TEST_TOKEN));
    // The first poll got 429 + Retry-After: 1; the next came no sooner than a second later.
    let gap = polls[1].at - polls[0].at;
    println!("polls: {}, gap after 429: {gap:?}", polls.len());
    assert!(
        gap >= Duration::from_millis(950),
        "Retry-After ignored: {gap:?}"
    );

    let updates = log.of("r_gl");
    let seen: Vec<(u64, Option<RunStatus>, Option<&str>)> = updates
        .iter()
        .filter(|u| u.kind == UpdateKind::Status)
        .map(|u| (u.seq, u.status, u.status_label.as_deref()))
        .collect();
    assert_eq!(
        seen,
        vec![
            (1, Some(RunStatus::InProgress), None),
            (3, Some(RunStatus::InProgress), None),
            (4, Some(RunStatus::InProgress), Some("pending")),
            (5, Some(RunStatus::InProgress), Some("running")),
            (6, Some(RunStatus::Success), Some("running")),
        ],
        "{updates:#?}"
    );
    let created = updates.iter().find(|u| u.seq == 3).unwrap();
    assert_eq!(
        created.link.as_deref(),
        Some(&["https://gitlab.example.com/grp/sub/svc/-/pipelines/77".to_owned()][..])
    );
    assert_eq!(created.external_run_id.as_deref(), Some("77"));
    assert_eq!(
        updates.last().unwrap().summary.as_deref(),
        Some("pipeline 77 succeeded")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_failed_pipeline_and_rejected_token_fail_the_run() {
    use common::gitlab::FakeGitlab;
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let fake = FakeGitlab::start(TEST_TOKEN, TEST_TOKEN, &["running", "failed"]).await;
    let _d = Dispatcher::start(&kafka, &t, &gitlab_config(&fake));
    let mut other_project = gitlab_event("r_gl_notoken");
    other_project["action"]["invocationMethod"]["projectName"] = json!("other");
    kafka
        .produce(
            &t.triggers,
            &[
                record(None, &gitlab_event("r_gl_fail")),
                record(None, &other_project),
            ],
        )
        .await;
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_until(WAIT, "two FAILUREs", |u| StatusLog::finished(u) >= 2)
        .await;
    let f = log.sole_terminal("r_gl_fail").await;
    assert_eq!(f.status, Some(RunStatus::Failure));
    assert_eq!(f.summary.as_deref(), Some("pipeline 77 failed"));
    let n = log.sole_terminal("r_gl_notoken").await;
    assert_eq!(n.status, Some(RunStatus::Failure));
    assert!(
        n.summary
            .as_deref()
            .unwrap()
            .starts_with("no trigger token for grp/sub/other"),
        "{n:?}"
    );
}

fn github_config(fake: &common::github::FakeGithub) -> String {
    format!(
        "[backends.github]\napi_url = \"{}\"\ntoken_secret = \"credential\"\n[watch]\npoll_interval = \"200ms\"\n",
        fake.url()
    )
}

fn github_event(run: &str, inputs: Value) -> Value {
    let mut e = event(
        run,
        json!({"type": "GITHUB", "org": "acme", "repo": "checkout", "workflow": "deploy.yml",
               "workflowInputs": inputs}),
    );
    e["orderingKey"] = json!("gh");
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_workflow_is_dispatched_and_followed_to_success() {
    use common::github::FakeGithub;
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let fake = FakeGithub::start(
        true,
        &[
            ("queued", None),
            ("in_progress", None),
            ("completed", Some("success")),
        ],
    )
    .await;
    fake.primary_limit_next_polls(1);
    let _d = Dispatcher::start(&kafka, &t, &github_config(&fake));
    let inputs = json!({"version": "{{ .inputs.version }}", "replicas": 3, "canary": true});
    kafka
        .produce(&t.triggers, &[record(None, &github_event("r_gh", inputs))])
        .await;
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_until(WAIT, "SUCCESS", |u| StatusLog::finished(u) >= 1)
        .await;

    let calls = fake.calls();
    assert_eq!(
        calls[0].path, "/repos/acme/checkout",
        "default branch looked up"
    );
    let d = &calls[1];
    assert_eq!(
        d.path,
        "/repos/acme/checkout/actions/workflows/deploy.yml/dispatches"
    );
    assert_eq!(d.headers["authorization"], format!("Bearer {TEST_TOKEN}"));
    assert_eq!(d.headers["accept"], "application/vnd.github+json");
    assert_eq!(
        d.body,
        json!({"ref": "trunk", "inputs": {"version": "1.4.2", "replicas": "3", "canary": "true"},
               "return_run_details": true})
    );
    let polls: Vec<_> = calls
        .iter()
        .filter(|c| c.path.ends_with("/actions/runs/9001"))
        .collect();
    // The first poll hit the primary limit (x-ratelimit-reset two seconds ahead, at least
    // one whole second away); the next poll waited for the reset.
    let gap = polls[1].at - polls[0].at;
    println!(
        "github polls: {}, gap after the primary limit: {gap:?}",
        polls.len()
    );
    assert!(
        gap >= Duration::from_millis(950),
        "x-ratelimit-reset ignored: {gap:?}"
    );

    let updates = log.of("r_gh");
    let statuses: Vec<_> = updates
        .iter()
        .filter(|u| u.kind == UpdateKind::Status)
        .map(|u| (u.status, u.status_label.as_deref()))
        .collect();
    assert_eq!(
        statuses,
        vec![
            (Some(RunStatus::InProgress), None),
            (Some(RunStatus::InProgress), None),
            (Some(RunStatus::InProgress), Some("queued")),
            (Some(RunStatus::InProgress), Some("in_progress")),
            (Some(RunStatus::Success), Some("in_progress")),
        ]
    );
    let dispatched = updates
        .iter()
        .find(|u| u.external_run_id.is_some())
        .unwrap();
    assert_eq!(dispatched.external_run_id.as_deref(), Some("9001"));
    assert_eq!(
        dispatched.link.as_deref(),
        Some(&["https://github.example.com/acme/checkout/actions/runs/9001".to_owned()][..])
    );
    assert_eq!(
        updates.last().unwrap().summary.as_deref(),
        Some("workflow run 9001 concluded success")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_without_run_details_finds_the_run_and_reports_failure() {
    use common::github::FakeGithub;
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let fake = FakeGithub::start(
        false,
        &[("in_progress", None), ("completed", Some("timed_out"))],
    )
    .await;
    fake.secondary_limit_next_polls(1);
    let _d = Dispatcher::start(&kafka, &t, &github_config(&fake));
    let too_many: serde_json::Map<String, Value> =
        (0..11).map(|i| (format!("i{i}"), json!(i))).collect();
    kafka
        .produce(
            &t.triggers,
            &[
                record(None, &github_event("r_gh_204", json!({"ref": "release"}))),
                record(None, &github_event("r_gh_many", Value::Object(too_many))),
            ],
        )
        .await;
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_until(WAIT, "two terminal", |u| StatusLog::finished(u) >= 2)
        .await;
    let f = log.sole_terminal("r_gh_204").await;
    assert_eq!(f.status, Some(RunStatus::Failure));
    assert_eq!(
        f.summary.as_deref(),
        Some("workflow run 9001 concluded timed_out")
    );
    let m = log.sole_terminal("r_gh_many").await;
    assert_eq!(m.status, Some(RunStatus::Failure));
    assert!(m.summary.unwrap().contains("GitHub accepts at most 10"));
    let calls = fake.calls();
    let dispatches: Vec<_> = calls
        .iter()
        .filter(|c| c.path.ends_with("/dispatches"))
        .collect();
    assert_eq!(dispatches.len(), 1, "the 11-input run made no call");
    assert_eq!(
        dispatches[0].body["ref"], "release",
        "ref input, no repository lookup"
    );
    assert!(calls
        .iter()
        .any(|c| c.path.ends_with("/actions/workflows/deploy.yml/runs")));
    // The listing also held an older run and a later one: only ours is followed.
    let followed: std::collections::BTreeSet<&str> = calls
        .iter()
        .filter_map(|c| c.path.split("/actions/runs/").nth(1))
        .collect();
    assert_eq!(
        followed,
        std::collections::BTreeSet::from(["9001"]),
        "{calls:#?}"
    );
    assert!(calls
        .iter()
        .all(|c| c.headers.get("authorization").map(String::as_str)
            == Some(&format!("Bearer {TEST_TOKEN}")[..])));
    let polls: Vec<_> = calls
        .iter()
        .filter(|c| c.path.ends_with("/actions/runs/9001"))
        .collect();
    let gap = polls[1].at - polls[0].at;
    println!("github gap after the secondary limit (403 + Retry-After: 1): {gap:?}");
    assert!(
        gap >= Duration::from_millis(950),
        "Retry-After ignored: {gap:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_app_tokens_are_fetched_per_installation_and_refreshed_before_expiry() {
    use common::github::FakeGithub;
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let fake = FakeGithub::start(true, &[("completed", Some("success"))]).await;
    // Tokens that expire within switchyard's refresh margin are replaced before each use.
    fake.require_app(Duration::from_secs(30));
    let extra = format!(
        "[backends.github]\napi_url = \"{}\"\napp_id = \"12345\"\n\
         app_private_key_secret = \"app_key\"\n\
         [secrets.app_key]\nfile = \"{}/tests/fixtures/github-app-test-key.pem\"\n",
        fake.url(),
        env!("CARGO_MANIFEST_DIR")
    );
    let _d = Dispatcher::start(&kafka, &t, &extra);
    let ev_in = |run: &str, org: &str| {
        let mut e = github_event(run, json!({"ref": "main"}));
        e["action"]["invocationMethod"]["reportWorkflowStatus"] = json!(false);
        e["action"]["invocationMethod"]["org"] = json!(org);
        e
    };
    let ev = |run: &str| ev_in(run, "acme");
    kafka
        .produce(
            &t.triggers,
            &[record(None, &ev("r_app_1")), record(None, &ev("r_app_2"))],
        )
        .await;
    let mut log = StatusLog::new(&kafka, &t);
    let dispatched = |u: &[switchyard::model::RunUpdate], n: usize| {
        u.iter().filter(|u| u.external_run_id.is_some()).count() >= n
    };
    log.wait_until(WAIT, "two dispatches", |u| dispatched(u, 2))
        .await;
    let count = |path: &str| fake.calls().iter().filter(|c| c.path == path).count();
    assert_eq!(
        count("/repos/acme/checkout/installation"),
        1,
        "installation id cached"
    );
    assert_eq!(
        count("/app/installations/4242/access_tokens"),
        2,
        "short-lived token refreshed"
    );

    fake.set_token_ttl(Duration::from_secs(3600));
    kafka
        .produce(
            &t.triggers,
            &[record(None, &ev("r_app_3")), record(None, &ev("r_app_4"))],
        )
        .await;
    log.wait_until(WAIT, "four dispatches", |u| dispatched(u, 4))
        .await;
    assert_eq!(
        count("/app/installations/4242/access_tokens"),
        3,
        "long-lived token reused"
    );
    let calls = fake.calls();
    let dispatches: Vec<_> = calls
        .iter()
        .filter(|c| c.path.ends_with("/dispatches"))
        .collect();
    assert_eq!(dispatches.len(), 4);
    assert_eq!(dispatches[3].headers["authorization"], "Bearer ghs_test_3");

    // A repository of another org belongs to another installation: its own token.
    kafka
        .produce(&t.triggers, &[record(None, &ev_in("r_app_5", "globex"))])
        .await;
    log.wait_until(WAIT, "five dispatches", |u| dispatched(u, 5))
        .await;
    assert_eq!(count("/repos/globex/checkout/installation"), 1);
    assert_eq!(count("/app/installations/4343/access_tokens"), 1);
    assert_eq!(
        count("/app/installations/4242/access_tokens"),
        3,
        "acme's token untouched"
    );
    let calls = fake.calls();
    let globex = calls
        .iter()
        .find(|c| c.path == "/repos/globex/checkout/actions/workflows/deploy.yml/dispatches")
        .expect("dispatched to globex");
    assert_eq!(globex.headers["authorization"], "Bearer ghs_test_4");
    assert!(log
        .updates
        .iter()
        .all(|u| u.status != Some(RunStatus::Failure)));
}

/// A followed workflow run survives a crash: the next owner of the trigger's partition
/// resumes it from the watches topic, and exactly one terminal update follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_run_is_resumed_after_a_restart_with_exactly_one_terminal_update() {
    use common::github::FakeGithub;
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let fake = FakeGithub::start(true, &[("in_progress", None)]).await;
    let mut first = Dispatcher::start(&kafka, &t, &github_config(&fake));
    kafka
        .produce(
            &t.triggers,
            &[record(
                None,
                &github_event("r_gh_restart", json!({"ref": "main"})),
            )],
        )
        .await;
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_until(WAIT, "in_progress label", |u| {
        u.iter()
            .any(|u| u.status_label.as_deref() == Some("in_progress"))
    })
    .await;
    assert_eq!(
        kafka.wait_committed(&t, 1, WAIT).await,
        1,
        "offset committed once recorded"
    );
    first.kill();

    let second = Dispatcher::start(&kafka, &t, &github_config(&fake));
    // The run finishes remotely while nobody may be watching yet.
    fake.set_script(&[("completed", Some("success"))]);
    log.wait_until(WAIT, "SUCCESS", |u| StatusLog::finished(u) >= 1)
        .await;
    log.settle(Duration::from_secs(3)).await;
    let terminal = log.terminal("r_gh_restart");
    assert_eq!(terminal.len(), 1, "{:#?}", log.of("r_gh_restart"));
    assert_eq!(terminal[0].status, Some(RunStatus::Success));
    let dispatches = fake
        .calls()
        .iter()
        .filter(|c| c.path.ends_with("/dispatches"))
        .count();
    assert_eq!(dispatches, 1, "the workflow was dispatched once");
    assert!(
        second.logs().contains("resuming a followed run"),
        "{}",
        second.logs()
    );
    let seqs: Vec<u64> = log.of("r_gh_restart").iter().map(|u| u.seq).collect();
    println!("restart: seqs {seqs:?}");
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "seq continues across the restart: {seqs:?}"
    );
}

/// An unanswered follow: a GitLab pipeline that never finishes fails at its
/// `run_timeout` (well before `watch.max_duration`), and was polled meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followed_pipeline_that_never_finishes_times_out() {
    use common::gitlab::FakeGitlab;
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let fake = FakeGitlab::start(TEST_TOKEN, TEST_TOKEN, &["running"]).await;
    let config = format!("{}[run_timeout]\ngitlab = \"2s\"\n", gitlab_config(&fake));
    let _d = Dispatcher::start(&kafka, &t, &config);
    kafka
        .produce(&t.triggers, &[record(None, &gitlab_event("r_gl_stuck"))])
        .await;
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_until(WAIT, "the time-out", |u| StatusLog::finished(u) >= 1)
        .await;
    let end = log.sole_terminal("r_gl_stuck").await;
    assert_eq!(end.status, Some(RunStatus::Failure));
    let summary = end.summary.unwrap_or_default();
    assert!(summary.starts_with("timed out after 2s"), "{summary}");
    let polls = fake.calls().iter().filter(|c| c.method == "GET").count();
    assert!(polls >= 2, "followed until the deadline: {polls} polls");
    assert_eq!(kafka.wait_committed(&t, 1, WAIT).await, 1);
}
