use serde_json::json;

use super::*;

fn ctx() -> Context {
    let event = json!({
        "run": {"id": "r_1"},
        "inputs": {"version": "1.4.2", "replicas": 3, "ref": "dev", "tags": ["a", "b"],
                   "extra": {"x": 1, "y": "z"}},
        "entity": {"identifier": "checkout"},
        "trigger": {"by": {"user": {"email": "dev@acme.io"}}},
    });
    let mut secrets = Map::new();
    secrets.insert("token".into(), json!("s3cret"));
    secrets.insert("my-name".into(), json!("dashed"));
    Context::new(event, &secrets)
}

fn render(v: Value) -> Result<Value, TemplateError> {
    Renderer::new().render(&v, &ctx(), "invocationMethod")
}

#[test]
fn whole_value_template_keeps_json_type() {
    let out = render(
        json!({"n": "{{ .inputs.replicas }}", "tags": "{{.inputs.tags}}",
                            "obj": "{{ .inputs.extra }}", "s": "{{ .run.id }}"}),
    )
    .unwrap();
    assert_eq!(
        out,
        json!({"n": 3, "tags": ["a", "b"], "obj": {"x": 1, "y": "z"}, "s": "r_1"})
    );
}

#[test]
fn mixed_text_interpolates_strings_raw_and_values_as_compact_json() {
    let out = render(json!({
        "auth": "Bearer {{ .secrets.token }}",
        "desc": "v{{ .inputs.version }} x{{ .inputs.replicas }} {{ .inputs.tags }}",
        "dash": "{{ .secrets[\"my-name\"] }}!"
    }))
    .unwrap();
    assert_eq!(out["auth"], "Bearer s3cret");
    assert_eq!(out["desc"], "v1.4.2 x3 [\"a\",\"b\"]");
    assert_eq!(out["dash"], "dashed!");
}

#[test]
fn null_key_drops_the_pair_and_string_keys_render() {
    let out = render(json!({
        "{{ if (.inputs|has(\"ref\")) then \"ref\" else null end }}": "{{ .inputs.ref }}",
        "{{ if (.inputs|has(\"nope\")) then \"nope\" else null end }}": "{{ .inputs.nope }}",
        "svc-{{ .entity.identifier }}": true
    }))
    .unwrap();
    assert_eq!(out, json!({"ref": "dev", "svc-checkout": true}));
}

#[test]
fn spread_value_merges_object_into_parent() {
    let out = render(json!({
        "{{ spreadValue() }}": "{{ .inputs.extra }}",
        "port_context": {"runId": "{{ .run.id }}"}
    }))
    .unwrap();
    assert_eq!(
        out,
        json!({"x": 1, "y": "z", "port_context": {"runId": "r_1"}})
    );
    let err = render(json!({"{{spreadValue()}}": "{{ .inputs.tags }}"})).unwrap_err();
    assert!(err.message.contains("needs an object"), "{err}");
}

#[test]
fn templates_in_arrays_and_nested_braces() {
    let out = render(json!({"list": ["{{ .run.id }}", 5, "{{ {a: {b: 1}} }}"]})).unwrap();
    assert_eq!(out, json!({"list": ["r_1", 5, {"a": {"b": 1}}]}));
}

#[test]
fn std_functions_are_available() {
    let out = render(json!({"t": "{{ .entity.identifier | ascii_upcase }}",
                            "m": "{{ .inputs.tags | map(. + \"!\") }}"}))
    .unwrap();
    assert_eq!(out, json!({"t": "CHECKOUT", "m": ["a!", "b!"]}));
}

#[test]
fn missing_value_renders_null() {
    assert_eq!(
        render(json!({"v": "{{ .inputs.missing }}"})).unwrap(),
        json!({"v": null})
    );
    assert_eq!(
        render(json!({"v": "{{ empty }}"})).unwrap(),
        json!({"v": null})
    );
}

#[test]
fn errors_name_the_field_and_the_jq_problem() {
    let err = render(json!({"body": {"version": "{{ .inputs.version + 1 }}"}})).unwrap_err();
    assert_eq!(err.field, "invocationMethod.body.version");
    assert!(err.message.contains("jq error"), "{err}");

    let err = render(json!({"url": "{{ .inputs. | }}"})).unwrap_err();
    assert_eq!(err.field, "invocationMethod.url");
    assert!(err.message.contains("syntax error"), "{err}");

    let err = render(json!({"url": "{{ nosuchfn(1) }}"})).unwrap_err();
    assert!(err.message.contains("undefined"), "{err}");

    let err = render(json!({"url": "http://x/{{ .run.id"})).unwrap_err();
    assert!(err.message.contains("unclosed"), "{err}");
}

#[test]
fn secrets_come_only_from_the_resolved_store() {
    let event = json!({"run": {"id": "r"}, "secrets": {"token": "from-event"}});
    let mut secrets = Map::new();
    secrets.insert("token".into(), json!("from-config"));
    let ctx = Context::new(event, &secrets);
    let out = Renderer::new()
        .render(&json!("{{ .secrets.token }}"), &ctx, "x")
        .unwrap();
    assert_eq!(out, "from-config");
}

/// The context as compact JSON text, keys in the context's own order.
fn context_text(ctx: &Context) -> String {
    serde_json::to_string(&val_to_json(&ctx.0)).unwrap()
}

#[test]
fn the_context_built_from_an_event_equals_the_one_built_from_its_json() {
    let events = [
        json!({"run": {"id": "r_1"}, "action": {"identifier": "a", "invocationMethod": {}}}),
        json!({
            "run": {"id": "r_2", "startedBy": {"user": "u"}, "n": 1},
            "action": {"identifier": "deploy", "blueprint": "service", "title": "Deploy",
                       "invocationMethod": {"type": "WEBHOOK", "url": "http://x/{{ .run.id }}",
                                            "body": {"a": [1, 2.5, -3, 18446744073709551615u64]}}},
            "trigger": {"by": {"user": {"email": "dev@acme.io"}}, "at": "2026-11-28T10:00:00Z"},
            "inputs": {"version": "1.4.2", "replicas": 3, "flag": true, "none": null},
            "entity": {"identifier": "checkout", "properties": {}},
            "event": null,
            "orderingKey": "service/checkout",
            "deadline": "2026-11-28T10:05:00Z",
            "zExtra": {"k": "v"},
            "secrets": {"token": "from-event"},
            "aExtra": [1, "two"]
        }),
    ];
    let mut secrets = Map::new();
    secrets.insert("token".into(), json!("from-config"));
    secrets.insert("n".into(), json!({"deep": [1, 2]}));
    for json in events {
        let event: crate::model::TriggerEvent = serde_json::from_value(json).unwrap();
        let via_json = Context::new(serde_json::to_value(&event).unwrap(), &secrets);
        let direct = Context::for_event(&event, &secrets_val(&secrets));
        assert_eq!(context_text(&direct), context_text(&via_json));
    }
}

#[test]
fn secrets_come_only_from_the_resolved_store_when_built_from_an_event() {
    let json = json!({"run": {"id": "r"}, "action": {"identifier": "a", "invocationMethod": {}},
                      "secrets": {"token": "from-event"}});
    let event: crate::model::TriggerEvent = serde_json::from_value(json).unwrap();
    let mut secrets = Map::new();
    secrets.insert("token".into(), json!("from-config"));
    let ctx = Context::for_event(&event, &secrets_val(&secrets));
    let out = Renderer::new()
        .render(&json!("{{ .secrets.token }}"), &ctx, "x")
        .unwrap();
    assert_eq!(out, "from-config");
}

#[test]
fn each_distinct_program_is_compiled_once() {
    let r = Renderer::new();
    let c = ctx();
    // Two distinct programs, one used twice (plain paths are never compiled).
    let templates = json!({"a": "{{ .run.id | ascii_upcase }}", "b": "x{{ .run.id | ascii_upcase }}y",
                           "c": "{{ .action.identifier // \"none\" }}", "d": "{{ .run.id }}"});
    let first = r.render(&templates, &c, "m").unwrap();
    assert_eq!(r.cached(), 2);
    for _ in 0..10 {
        assert_eq!(r.render(&templates, &c, "m").unwrap(), first);
    }
    assert_eq!(r.cached(), 2, "nothing compiled again");
    assert_ne!(first["a"], first["c"], "the two programs differ: {first}");
}

#[test]
fn plain_strings_pass_through() {
    assert_eq!(
        render(json!("no templates { here }")).unwrap(),
        json!("no templates { here }")
    );
    assert_eq!(render(json!("")).unwrap(), json!(""));
}

#[test]
fn event_templates_cannot_read_the_process_environment() {
    // The process environment holds credentials (PORT_CLIENT_SECRET, tokens); a template
    // written by whoever publishes a trigger must not be able to copy it into a request.
    let _env = crate::env_lock();
    std::env::set_var("SWITCHYARD_TEMPLATE_TEST_SECRET", "leak-me");
    for code in [
        "{{ env.SWITCHYARD_TEMPLATE_TEST_SECRET }}",
        "{{ $ENV.PATH }}",
    ] {
        let err = render(json!({"body": code})).unwrap_err();
        assert!(err.message.contains("undefined"), "{code}: {err}");
    }
    let op = Renderer::operator();
    let input = Context::plain(&json!({}));
    assert_eq!(
        op.first("env.SWITCHYARD_TEMPLATE_TEST_SECRET", &input, "url")
            .unwrap(),
        "leak-me"
    );
    assert_eq!(
        op.first("$ENV.SWITCHYARD_TEMPLATE_TEST_SECRET", &input, "url")
            .unwrap(),
        "leak-me"
    );
}

/// The in-process plain-path evaluation gives what jq gives, for every shape of path.
#[test]
fn plain_paths_match_jq() {
    let c = ctx();
    let r = Renderer::new();
    let codes = [
        ".",
        ".run",
        ".run.id",
        ".inputs.tags[1]",
        ".inputs.tags[7]",
        ".inputs[\"extra\"].y",
        ".inputs.extra[\"x\"]",
        ".nope.deeper",
        ".inputs.version.x",
        ".inputs.tags.a",
        ".secrets[\"my-name\"]",
        ".inputs.tags[0]",
        "._x",
        ".inputs.extra.y",
    ];
    for code in codes {
        assert!(simple_path(code).is_some(), "{code} is a plain path");
        let fast = r.first(code, &c, "f");
        // The same program through jaq: `(.) | <path>` is not a plain path.
        let slow = r.first(&format!("(.) | {code}"), &c, "f");
        assert_eq!(fast.is_ok(), slow.is_ok(), "{code}: {fast:?} vs {slow:?}");
        if let (Ok(a), Ok(b)) = (&fast, &slow) {
            assert_eq!(a, b, "{code}");
        }
    }
    for code in [
        ".a | .b",
        ".a[]",
        ".a[-1]",
        ".[\"a\\\"b\"]",
        ".a.b?",
        "..",
        ".a + 1",
        "$x",
    ] {
        assert!(simple_path(code).is_none(), "{code} is not a plain path");
    }
}

/// Templates can use none of jq's process-level functions, and `halt` is an ordinary
/// error (it used to end the process).
#[test]
fn process_functions_are_not_in_the_allow_list() {
    let c = ctx();
    let r = Renderer::new();
    for code in [
        "halt",
        "halt_error",
        "halt_error(1)",
        "input",
        "inputs",
        "debug",
        "debug(1)",
        "stderr",
        "env",
        "$ENV",
        "env.HOME",
        "$__prog_args",
        "import \"a\" as a; 1",
        "include \"b\"; 1",
    ] {
        let e = r.first(code, &c, "f").unwrap_err();
        assert!(
            e.message.contains("undefined")
                || e.message.contains("syntax")
                || e.message.contains("error"),
            "{code}: {e:?}"
        );
    }
    // Ordinary functions stay.
    assert_eq!(
        r.first("[.inputs.tags[] | ascii_upcase] | join(\",\")", &c, "f")
            .unwrap(),
        "A,B"
    );
    // Operator programs keep env.
    let op = Renderer::operator();
    std::env::var("PATH").unwrap();
    assert!(op.first("env.PATH", &c, "f").unwrap().is_string());
}

#[test]
fn long_programs_are_refused() {
    let r = Renderer::with_max_program(64);
    let code = format!("{} | length", "\"a\" + ".repeat(20) + "\"b\"");
    let e = r.first(&code, &ctx(), "f").unwrap_err();
    assert!(
        e.message.contains("templates.max_program_bytes is 64"),
        "{e:?}"
    );
}

#[test]
fn needs_sandbox_only_for_more_than_plain_paths() {
    assert!(!needs_sandbox(
        &json!({"a": "{{ .x.y }}", "b": ["t {{ .z[0] }}"], "c": 1})
    ));
    assert!(needs_sandbox(&json!({"a": "{{ .x | length }}"})));
    assert!(needs_sandbox(&json!({"{{ .k | tostring }}": 1})));
    assert!(needs_sandbox(&json!([{"x": "{{ until(false; .) }}"}])));
}
