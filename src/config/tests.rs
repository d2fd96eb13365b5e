use super::*;

fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

#[test]
fn defaults_are_valid() {
    let cfg = Config::from_toml("", no_env()).unwrap();
    assert_eq!(cfg.dispatch.ordering, Ordering::Key);
    assert_eq!(cfg.backends.webhook.concurrency, 64);
}

#[test]
fn environment_overrides_file_values() {
    let env = vec![
        ("SWITCHYARD_KAFKA__BROKERS".into(), "10.0.0.1:9092".into()),
        ("SWITCHYARD_KAFKA__CREATE_TOPICS".into(), "true".into()),
        ("SWITCHYARD_BACKENDS__WEBHOOK__TIMEOUT".into(), "5s".into()),
        ("OTHER".into(), "ignored".into()),
        ("SWITCHYARD_CONFIG".into(), "not an override".into()),
    ];
    let cfg = Config::from_toml("[kafka]\nbrokers = \"a:1\"\n", env).unwrap();
    assert_eq!(cfg.kafka.brokers, "10.0.0.1:9092");
    assert!(cfg.kafka.create_topics);
    assert_eq!(cfg.backends.webhook.timeout, Duration::from_secs(5));
}

#[test]
fn every_problem_is_listed() {
    let text = r#"
        [kafka]
        brokers = ""
        triggers_topic = "bad topic"
        brokerz = "typo"
        [dispatch]
        partition_window = 0
        [backends.webhook]
        concurrency = 0
        [secrets]
        token = { env = "SWITCHYARD_TEST_SURELY_UNSET_VAR" }
    "#;
    let errs = Config::from_toml(text, no_env()).unwrap_err().0;
    let all = errs.join("\n");
    for needle in [
        "kafka.brokerz: unknown field",
        "kafka.brokers: must name",
        "kafka.triggers_topic: \"bad topic\" contains ' '",
        "dispatch.partition_window",
        "backends.webhook.concurrency",
        "secrets.token: environment variable SWITCHYARD_TEST_SURELY_UNSET_VAR is not set",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
    assert_eq!(errs.len(), 6, "{all}");
}

#[test]
fn type_errors_name_the_field() {
    let errs = Config::from_toml("[dispatch]\nordering = \"random\"\n", no_env())
        .unwrap_err()
        .0;
    assert!(errs[0].contains("unknown variant `random`"), "{errs:?}");
}

#[test]
fn librdkafka_options_pass_through_but_offset_store_is_ours() {
    let text =
        "[kafka.consumer]\n\"fetch.min.bytes\" = \"1\"\n\"enable.auto.offset.store\" = \"true\"\n";
    let errs = Config::from_toml(text, no_env()).unwrap_err().0;
    assert_eq!(errs.len(), 1);
    assert!(errs[0].contains("enable.auto.offset.store"));
}

#[test]
fn retry_status_classes_parse_and_match() {
    let r = RetryConfig::default();
    assert!(r.retries(503) && r.retries(429) && r.retries(408) && r.retries(425));
    assert!(!r.retries(400) && !r.retries(409) && !r.retries(401));
    let text = "[backends.webhook.retry]\nretry_statuses = [\"409\", \"5xx\", \"6xx\", \"50\"]\nmax_attempts = 0\n";
    let errs = Config::from_toml(text, no_env()).unwrap_err().0.join("\n");
    assert!(errs.contains("\"6xx\" is not a status"), "{errs}");
    assert!(errs.contains("\"50\" is not a status"), "{errs}");
    assert!(
        errs.contains("backends.webhook.retry.max_attempts"),
        "{errs}"
    );
    let ok = Config::from_toml(
        "[backends.webhook.retry]\nretry_statuses = [\"409\"]\n",
        no_env(),
    )
    .unwrap();
    assert!(ok.backends.webhook.retry.retries(409) && !ok.backends.webhook.retry.retries(503));
}

#[test]
fn env_overrides_reach_dotted_librdkafka_keys() {
    let env = [(
        "SWITCHYARD_KAFKA__CONSUMER__FETCH.WAIT.MAX.MS".to_owned(),
        "10".to_owned(),
    )];
    let cfg = Config::from_toml("", env).unwrap();
    assert_eq!(
        cfg.kafka
            .consumer
            .get("fetch.wait.max.ms")
            .map(String::as_str),
        Some("10")
    );
}
