use serde_json::json;

use super::*;

fn msg() -> Value {
    json!({"action": "deploy", "context": {"runId": "r_1"},
        "payload": {"action": {"invocationMethod": {"type": "WEBHOOK", "agent": true,
            "url": "https://in.example/run", "method": "PUT", "synchronized": true}},
            "properties": {"env": "prod", "replicas": 3, "ws": "ws-42"}},
        "headers": {}})
}

fn invocation(m: &Value) -> Map<String, Value> {
    m["payload"]["action"]["invocationMethod"]
        .as_object()
        .unwrap()
        .clone()
}

fn mapping(v: Value) -> Mapping {
    Mapping::parse(&v.to_string(), "test").unwrap()
}

#[test]
fn the_first_enabled_entry_wins() {
    let m = mapping(json!([
        {"enabled": false, "url": "\"https://never\""},
        {"enabled": ".action == \"other\"", "url": "\"https://other\""},
        {"enabled": ".payload.properties.env == \"prod\"", "url": "\"https://prod\""},
        {"enabled": true, "url": "\"https://fallback\""}
    ]));
    let mut w = Vec::new();
    let e = m.select(&Context::plain(&msg()), &mut w).unwrap();
    assert_eq!(e.url.as_deref(), Some("\"https://prod\""));
    // A jq `enabled` must yield exactly true: a truthy result does not enable an entry.
    let m = mapping(json!([{"enabled": "\"yes\""}, {"enabled": "2"}]));
    assert!(m.select(&Context::plain(&msg()), &mut w).is_none());
    assert!(w.is_empty(), "{w:?}");
}

#[test]
fn enabled_takes_the_agents_boolean_spellings() {
    // T-MAP-02: pydantic reads these as booleans before any jq runs.
    for on in [
        json!("True"),
        json!("yes"),
        json!("ON"),
        json!("t"),
        json!("y"),
        json!("1"),
        json!(1),
    ] {
        let m = mapping(json!([{"enabled": on, "url": "\"https://on\""}]));
        let mut w = Vec::new();
        assert!(m.select(&Context::plain(&msg()), &mut w).is_some(), "{on}");
    }
    for off in [
        json!("no"),
        json!("Off"),
        json!("f"),
        json!("n"),
        json!("0"),
        json!(0),
        json!("FALSE"),
    ] {
        let m = mapping(json!([{"enabled": off}]));
        let mut w = Vec::new();
        assert!(m.select(&Context::plain(&msg()), &mut w).is_none(), "{off}");
    }
    assert!(Mapping::parse(r#"[{"enabled": 2}]"#, "t").is_err());
}

#[test]
fn jq_that_does_not_compile_yields_null_unless_the_mapping_is_strict() {
    // T-MAP-01 / T-MAP-13: the agent ran such mappings for months; the header is dropped.
    let text = json!([{"enabled": true, "url": "\"https://x\"",
        "headers": {"Content-Type": "application/json", "X-Ok": "\"yes\""},
        "body": {"csv": "[1,2] | @csv"}}])
    .to_string();
    let strict = Mapping::parse(&text, "t").unwrap_err();
    assert!(
        strict.iter().any(|p| p.contains("headers.Content-Type")),
        "{strict:?}"
    );
    let m = Mapping::parse_with(&text, "t", false).unwrap();
    let mut w = Vec::new();
    let e = m.select(&Context::plain(&msg()), &mut w).unwrap();
    let p = m.request(e, &msg(), &Map::new(), &mut w);
    assert_eq!(p.headers.get("Content-Type"), Some(&Value::Null));
    assert_eq!(p.headers.get("X-Ok"), Some(&json!("yes")));
    assert_eq!(p.body, json!({"csv": null}));
    assert!(
        w.iter().any(|x| x.starts_with("headers.Content-Type")),
        "{w:?}"
    );
}

#[test]
fn a_mapped_url_that_yields_null_sends_nothing() {
    // T-MAP-03: no fallback to invocationMethod.url.
    let m = mapping(json!([{"enabled": true, "url": ".payload.properties.cluster_url"}]));
    let mut w = Vec::new();
    let e = m.select(&Context::plain(&msg()), &mut w).unwrap();
    let mut inv = Map::new();
    inv.insert("url".into(), json!("https://placeholder.example"));
    assert_eq!(m.request(e, &msg(), &inv, &mut w).url, "");
    // Without a `url` key the message's url is the default, as in the agent.
    let m = mapping(json!([{"enabled": true}]));
    let e = m.select(&Context::plain(&msg()), &mut w).unwrap();
    assert_eq!(
        m.request(e, &msg(), &inv, &mut w).url,
        "https://placeholder.example"
    );
}

#[test]
fn leaves_are_jq_programs_and_keys_keep_their_defaults() {
    let _env = crate::env_lock();
    std::env::set_var("SWITCHYARD_MAPPING_TEST_TOKEN", "tf-token");
    let m = mapping(json!([{
        "enabled": true,
        "headers": {"Authorization": "\"Bearer \" + env.SWITCHYARD_MAPPING_TEST_TOKEN",
                    "X-Run": ".context.runId"},
        "query": {"dry_run": "\"false\"", "n": ".payload.properties.replicas"},
        "body": {"data": {"type": "\"runs\"", "id": ".payload.properties.ws",
                          "tags": [".action", "\"static\""], "count": 7, "on": true}}
    }]));
    let (msg, mut w) = (msg(), Vec::new());
    let e = m.select(&Context::plain(&msg), &mut w).unwrap();
    let p = m.request(e, &msg, &invocation(&msg), &mut w);
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(p.url, "https://in.example/run", "default: the incoming url");
    assert_eq!(p.method, "PUT", "default: the incoming method");
    assert_eq!(
        Value::Object(p.headers),
        json!({"Authorization": "Bearer tf-token", "X-Run": "r_1"})
    );
    assert_eq!(Value::Object(p.query), json!({"dry_run": "false", "n": 3}));
    assert_eq!(
        p.body,
        json!({"data": {"type": "runs", "id": "ws-42", "tags": ["deploy", "static"],
                        "count": 7, "on": true}})
    );
    // Without body, the whole message is sent; method defaults to POST when absent.
    let m = mapping(json!([{"enabled": true}]));
    let mut inv = invocation(&msg);
    inv.remove("method");
    let p = m.request(
        m.select(&Context::plain(&msg), &mut w).unwrap(),
        &msg,
        &inv,
        &mut w,
    );
    assert_eq!((p.method.as_str(), &p.body), ("POST", &msg));
}

#[test]
fn a_jq_error_yields_null_and_a_warning() {
    let m = mapping(json!([{"enabled": true, "url": "\"https://x\"",
        "body": {"bad": ".payload.properties.env + 1", "good": ".action"}}]));
    let (msg, mut w) = (msg(), Vec::new());
    let p = m.request(&m.entries[0], &msg, &invocation(&msg), &mut w);
    assert_eq!(p.body, json!({"bad": null, "good": "deploy"}));
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].starts_with("body.bad: jq error"), "{w:?}");
    // A failing `enabled` program does not enable its entry.
    let m = mapping(json!([{"enabled": ".x + 1 | . > 0"}, {"enabled": true, "url": "\"u\""}]));
    let mut w = Vec::new();
    let e = m
        .select(&Context::plain(&json!({"x": "s"})), &mut w)
        .unwrap();
    assert_eq!(e.url.as_deref(), Some("\"u\""));
    assert_eq!(w.len(), 1, "{w:?}");
}

#[test]
fn the_report_block_is_evaluated_against_body_request_and_response() {
    let m = mapping(json!([{"enabled": true, "report": {
        "status": "if .response.statusCode == 201 then \"SUCCESS\" else \"FAILURE\" end",
        "link": ".response.json.links.self",
        "summary": "\"ws \" + .body.payload.properties.ws + \" via \" + .request.method",
        "externalRunId": ".response.json.data.id"}}]));
    let ctx = json!({"body": msg(), "request": {"method": "POST"},
        "response": {"statusCode": 201, "headers": {}, "text": "{}",
                     "json": {"links": {"self": "https://tf/runs/9"}, "data": {"id": "run-9"}}}});
    let mut w = Vec::new();
    let o = m.report(&m.entries[0], &ctx, &mut w);
    assert_eq!(o.status, Some(json!("SUCCESS")));
    assert_eq!(o.link, Some(json!("https://tf/runs/9")));
    assert_eq!(o.summary, Some(json!("ws ws-42 via POST")));
    assert_eq!(o.external_run_id, Some(json!("run-9")));
    // Keys the block does not have stay None: the defaults apply there.
    let m = mapping(json!([{"enabled": true, "report": {"link": ".response.json.url"}}]));
    let o = m.report(&m.entries[0], &ctx, &mut w);
    assert_eq!((o.status, o.link), (None, Some(Value::Null)));
}

#[test]
fn problems_are_listed_at_load() {
    let err = Mapping::parse(
        &json!([{"url": ".a |"}, {"enabled": true, "body": 5}, {"report": {"status": "nosuch(1)"}}])
            .to_string(),
        "m.json",
    )
    .unwrap_err();
    assert_eq!(err.len(), 3, "{err:?}");
    assert!(
        err[0].starts_with("m.json: entry 0: url: jq syntax error"),
        "{err:?}"
    );
    assert_eq!(
        err[1],
        "m.json: entry 1: body: must be an object or a jq program"
    );
    assert!(
        err[2].contains("entry 2: report.status: jq error"),
        "{err:?}"
    );
    assert_eq!(
        Mapping::parse("{}", "m.json").unwrap_err(),
        vec!["m.json: must be a JSON array of mapping entries".to_owned()]
    );
}

#[test]
fn the_builtin_default_maps_gitlab_and_webhooks() {
    let _env = crate::env_lock();
    std::env::set_var("GITLAB_URL", "https://gitlab.internal/");
    std::env::set_var("grp_sub_svc", "glptt-trigger");
    let m = Mapping::builtin();
    let gl = json!({"context": {"runId": "r_gl"}, "payload": {
        "action": {"invocationMethod": {"type": "GITLAB", "agent": true,
            "groupName": "grp/sub", "projectName": "svc", "defaultRef": "release"}},
        "properties": {"env": "prod", "replicas": 3}}});
    let mut w = Vec::new();
    let e = m.select(&Context::plain(&gl), &mut w).unwrap();
    let p = m.request(e, &gl, &invocation(&gl), &mut w);
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(
        p.url,
        "https://gitlab.internal/api/v4/projects/grp%2Fsub%2Fsvc/trigger/pipeline"
    );
    assert_eq!(p.method, "POST");
    assert_eq!(p.body["ref"], "release");
    assert_eq!(p.body["token"], "glptt-trigger");
    assert_eq!(p.body["variables"], json!({"env": "prod", "replicas": "3"}));
    assert_eq!(p.body["port_payload"], gl);
    let ctx = json!({"response": {"json": {"id": 77, "web_url": "https://gl/p/77"}}});
    let o = m.report(e, &ctx, &mut w);
    assert_eq!(
        (o.link, o.external_run_id),
        (Some(json!("https://gl/p/77")), Some(json!("77")))
    );

    let wh = msg();
    let e = m.select(&Context::plain(&wh), &mut w).unwrap();
    let p = m.request(e, &wh, &invocation(&wh), &mut w);
    assert_eq!(
        (p.url.as_str(), p.method.as_str()),
        ("https://in.example/run", "PUT")
    );
    assert_eq!(p.body, wh);
    let cl = json!({"action": "UPDATE", "resourceType": "entity",
        "changelogDestination": {"type": "WEBHOOK", "agent": true, "url": "http://svc/changes"}});
    let p = m.request(
        m.select(&Context::plain(&cl), &mut w).unwrap(),
        &cl,
        &Map::new(),
        &mut w,
    );
    assert_eq!(
        (p.url.as_str(), p.method.as_str()),
        ("http://svc/changes", "POST")
    );
}
