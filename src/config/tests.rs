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

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn a_port_agent_environment_works_unchanged() {
    // The secret itself is read from the process environment, like every env secret.
    let _env = crate::env_lock();
    std::env::set_var("PORT_CLIENT_SECRET", "agent-secret-from-env");
    let mapping = std::env::temp_dir().join(format!("sy-mapping-{}.json", std::process::id()));
    std::fs::write(&mapping, r#"[{"enabled": true, "url": "\"https://x\""}]"#).unwrap();
    let agent = env(&[
        ("STREAMER_NAME", "KAFKA"),
        ("USING_LOCAL_PORT_INSTANCE", "true"),
        ("PORT_ORG_ID", "org_X"),
        ("PORT_CLIENT_ID", "cid"),
        ("PORT_CLIENT_SECRET", "agent-secret-from-env"),
        ("KAFKA_CONSUMER_GROUP_ID", "org_X.agents"),
        (
            "KAFKA_CONSUMER_BOOTSTRAP_SERVERS",
            "b-1.port:9196,b-2.port:9196",
        ),
        ("KAFKA_CONSUMER_SECURITY_PROTOCOL", "SASL_SSL"),
        ("KAFKA_CONSUMER_AUTHENTICATION_MECHANISM", "SCRAM-SHA-512"),
        ("KAFKA_CONSUMER_USERNAME", "org_X-user"),
        ("KAFKA_CONSUMER_PASSWORD", "kafka-pass"),
        ("KAFKA_CONSUMER_SESSION_TIMEOUT_MS", "45000"),
        ("KAFKA_CONSUMER_AUTO_OFFSET_RESET", "earliest"),
        ("CONTROL_THE_PAYLOAD_CONFIG_PATH", mapping.to_str().unwrap()),
        ("WEBHOOK_INVOKER_TIMEOUT", "2.5"),
        ("WEBHOOK_VERIFY_SSL", "false"),
        ("LOG_LEVEL", "DEBUG"),
    ]);
    let cfg = Config::from_toml("", agent).unwrap();
    let k = &cfg.kafka;
    assert_eq!(k.brokers, "b-1.port:9196,b-2.port:9196");
    assert_eq!(k.group_id, "org_X.agents");
    assert_eq!(
        cfg.input_topics(),
        vec![
            ("org_X.runs".to_owned(), Format::Port),
            ("org_X.change.log".to_owned(), Format::Port)
        ]
    );
    assert_eq!(k.common["security.protocol"], "sasl_ssl");
    assert_eq!(k.common["sasl.mechanism"], "SCRAM-SHA-512");
    assert_eq!(k.common["sasl.username"], "org_X-user");
    assert_eq!(k.common["sasl.password"], "kafka-pass");
    assert_eq!(k.consumer["session.timeout.ms"], "45000");
    assert_eq!(cfg.port.client_id.as_deref(), Some("cid"));
    assert_eq!(cfg.port_secret().as_deref(), Some("agent-secret-from-env"));
    assert_eq!(
        cfg.port.api_url.as_deref(),
        Some(PORT_API),
        "the agent always reports"
    );
    assert_eq!(cfg.port.mapping_file.as_deref(), mapping.to_str());
    assert_eq!(cfg.backends.webhook.timeout, Duration::from_millis(2500));
    assert!(!cfg.backends.webhook.verify_tls);
    assert_eq!(cfg.log.level, "debug");
    assert!(!cfg.port.fetch_kafka_credentials, "a local Port instance");
}

#[test]
fn the_helm_environment_fetches_kafka_credentials_and_keeps_the_agents_semantics() {
    // T-ENV-01, T-ENV-05, T-ENV-06: the environment the agent's Helm chart sets, and
    // nothing else (no brokers, no credentials: the agent fetches them from Port's API).
    let _env = crate::env_lock();
    std::env::set_var("PORT_CLIENT_SECRET", "agent-secret-from-env");
    let helm = [
        ("PORT_ORG_ID", "org_H"),
        ("PORT_CLIENT_ID", "cid"),
        ("PORT_CLIENT_SECRET", "agent-secret-from-env"),
        ("PORT_API_BASE_URL", "https://api.port.io"),
        ("STREAMER_NAME", "KAFKA"),
        ("KAFKA_CONSUMER_GROUP_ID", "org_H.agent"),
        ("KAFKA_CONSUMER_SECURITY_PROTOCOL", "SASL_SSL"),
        ("KAFKA_CONSUMER_AUTHENTICATION_MECHANISM", "SCRAM-SHA-512"),
        ("KAFKA_CONSUMER_AUTO_OFFSET_RESET", "largest"),
        ("LOG_LEVEL", "WARNING"),
        ("DETAILED_LOGGING", "False"),
        ("GITLAB_URL", "https://gitlab.com/"),
    ];
    let cfg = Config::from_toml("", env(&helm)).unwrap();
    assert!(cfg.port.fetch_kafka_credentials);
    assert!(cfg.agent_mode());
    assert_eq!(
        cfg.output_kafka().map(|k| k.brokers),
        None,
        "Port's Kafka is read-only"
    );
    assert_eq!(cfg.log.level, "warn", "Python's WARNING");
    assert!(!cfg.port.detailed_logging);
    let w = &cfg.backends.webhook;
    assert_eq!(w.retry.max_attempts, 1, "one attempt, as the agent");
    assert!(
        w.retry.credentials_pause.is_zero(),
        "a 401/403 fails the run"
    );
    assert!(!w.breaker.enabled);
    assert!(cfg.port.signature_max_age.is_zero());
    assert!(!cfg.port.strict_mapping);
    // CRITICAL is `error`; a tracing filter passes through.
    let mut critical = env(&helm);
    critical.push(("LOG_LEVEL".into(), "CRITICAL".into()));
    assert_eq!(Config::from_toml("", critical).unwrap().log.level, "error");
    // Each of the agent's semantics is one setting away.
    let better = "[backends.webhook.retry]\nmax_attempts = 5\ncredentials_pause = \"60s\"\n\
                  [backends.webhook.breaker]\nenabled = true\n[port]\nstrict_mapping = true\n\
                  signature_max_age = \"24h\"\n";
    let cfg = Config::from_toml(better, env(&helm)).unwrap();
    assert_eq!(cfg.backends.webhook.retry.max_attempts, 5);
    assert!(cfg.backends.webhook.breaker.enabled);
    assert!(cfg.port.strict_mapping);
    assert_eq!(cfg.port.signature_max_age, Duration::from_secs(86400));
    // Brokers in the environment without a local instance: refused, as by the agent.
    let mut stray = env(&helm);
    stray.push(("KAFKA_CONSUMER_BOOTSTRAP_SERVERS".into(), "b:9092".into()));
    let err = Config::from_toml("", stray).unwrap_err().to_string();
    assert!(err.contains("USING_LOCAL_PORT_INSTANCE"), "{err}");
    // An output cluster takes switchyard's own topics.
    let out = "[kafka.output]\nbrokers = \"out-1:9092\"\n[kafka.output.common]\n\"security.protocol\" = \"ssl\"\n";
    let cfg = Config::from_toml(out, env(&helm)).unwrap();
    let o = cfg.output_kafka().unwrap();
    assert_eq!(
        (o.brokers.as_str(), o.common["security.protocol"].as_str()),
        ("out-1:9092", "ssl")
    );
    assert_eq!(o.group_id, "org_H.agent");
}

#[test]
fn port_defaults_follow_the_org_and_yield_to_explicit_settings() {
    let _env = crate::env_lock();
    std::env::set_var("PORT_CLIENT_SECRET", "agent-secret-from-env");
    let text = "[port]\norg_id = \"org_Y\"\nclient_secret = { env = \"PORT_CLIENT_SECRET\" }\n\
                [kafka.output]\nbrokers = \"out:9092\"\n";
    let cfg = Config::from_toml(text, no_env()).unwrap();
    assert_eq!(cfg.kafka.group_id, "org_Y.switchyard");
    assert_eq!(cfg.kafka.triggers_topic, "org_Y.runs");
    assert_eq!(cfg.format_of("org_Y.change.log"), Format::Port);
    assert_eq!(cfg.port.api_url, None, "no reporting unless asked for");
    // Precedence: file < agent variables < SWITCHYARD_ overrides.
    let text = format!("{text}[kafka]\ngroup_id = \"org_Y.file\"\ntriggers_topic = \"mine\"\n");
    let cfg = Config::from_toml(&text, env(&[("KAFKA_CONSUMER_GROUP_ID", "org_Y.env")])).unwrap();
    assert_eq!(cfg.kafka.group_id, "org_Y.env");
    assert_eq!(cfg.input_topics()[0], ("mine".to_owned(), Format::Json));
    let cfg = Config::from_toml(
        &text,
        env(&[
            ("KAFKA_CONSUMER_GROUP_ID", "org_Y.env"),
            ("SWITCHYARD_KAFKA__GROUP_ID", "org_Y.override"),
        ]),
    )
    .unwrap();
    assert_eq!(cfg.kafka.group_id, "org_Y.override");
}

#[test]
fn port_problems_are_named() {
    let errs = Config::from_toml(
        "[kafka]\ntriggers_format = \"port\"\nstatus_format = \"port\"\n[port]\napi_url = \"ftp://x\"\nmapping_file = \"/nonexistent/m.json\"\n",
        env(&[("STREAMER_NAME", "SMOKE_SIGNALS"), ("WEBHOOK_INVOKER_TIMEOUT", "soon")]),
    )
    .unwrap_err()
    .to_string();
    for want in [
        "STREAMER_NAME: \"SMOKE_SIGNALS\" is not KAFKA or POLLING",
        "WEBHOOK_INVOKER_TIMEOUT: \"soon\" is not a number",
        "kafka.status_format: \"port\" is an input format",
        "port.client_secret: the port input format needs it",
        "port.api_url: \"ftp://x\" is not an http(s) URL",
        "port.api_url: reporting to Port needs port.client_id and port.client_secret",
        "port.mapping_file: cannot read /nonexistent/m.json",
    ] {
        assert!(errs.contains(want), "missing {want:?} in:\n{errs}");
    }
}

#[test]
fn kip848_refuses_the_classic_only_consumer_settings() {
    let text = r#"
        [kafka]
        group_protocol = "consumer"
        [kafka.consumer]
        "session.timeout.ms" = 6000
        "heartbeat.interval.ms" = 500
        "partition.assignment.strategy" = "range"
        "auto.offset.reset" = "latest"
        [kafka.common]
        "group.protocol.type" = "consumer"
    "#;
    let errs = Config::from_toml(text, no_env()).unwrap_err().0;
    let all = errs.join("\n");
    for needle in [
        "kafka.consumer.\"session.timeout.ms\": not supported with kafka.group_protocol = \"consumer\" (set by the broker: group.consumer.session.timeout.ms)",
        "kafka.consumer.\"heartbeat.interval.ms\": not supported",
        "kafka.consumer.\"partition.assignment.strategy\": not supported",
        "kafka.common.\"group.protocol.type\": not supported",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
    assert_eq!(errs.len(), 4, "{all}");
    // The same settings are fine under the classic protocol (the default).
    let classic = text.replace("group_protocol = \"consumer\"", "");
    let cfg = Config::from_toml(&classic, no_env()).unwrap();
    assert_eq!(cfg.kafka.group_protocol, GroupProtocol::Classic);
}

#[test]
fn the_group_protocol_is_chosen_by_its_own_setting() {
    let errs = Config::from_toml(
        "[kafka.consumer]\n\"group.protocol\" = \"consumer\"\n",
        no_env(),
    )
    .unwrap_err()
    .0;
    assert_eq!(
        errs,
        ["kafka.consumer.\"group.protocol\": cannot be overridden (use kafka.group_protocol)"]
    );
    let env = vec![("SWITCHYARD_KAFKA__GROUP_PROTOCOL".into(), "consumer".into())];
    let cfg = Config::from_toml("", env).unwrap();
    assert_eq!(cfg.kafka.group_protocol, GroupProtocol::Consumer);
}

#[test]
fn the_agents_mounted_mapping_is_found_in_the_working_directory() {
    let dir = std::env::temp_dir().join(format!("sy-mapping-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(port::AGENT_MAPPING_FILE);
    let _ = std::fs::remove_file(&file);
    let root = |text: &str| -> toml::Table { text.parse().unwrap() };
    let mapping_of = |t: &toml::Table| {
        t.get("port")
            .and_then(|p| p.get("mapping_file"))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    // No file: nothing set (the built-in default applies).
    let mut t = root("[port]\norg_id = \"org_X\"\n");
    port::discover_mapping(&mut t, &dir);
    assert_eq!(mapping_of(&t), None);
    // The file as Helm and Docker mount it: used in Port mode.
    std::fs::write(&file, "[]").unwrap();
    port::discover_mapping(&mut t, &dir);
    assert_eq!(mapping_of(&t).as_deref(), file.to_str());
    // An explicit path (CONTROL_THE_PAYLOAD_CONFIG_PATH, or the file) wins.
    let mut t = root("[port]\norg_id = \"org_X\"\nmapping_file = \"/etc/mine.json\"\n");
    port::discover_mapping(&mut t, &dir);
    assert_eq!(mapping_of(&t).as_deref(), Some("/etc/mine.json"));
    // Not in Port mode: a stray file is not read.
    let mut t = root("[kafka]\nbrokers = \"b:9092\"\n");
    port::discover_mapping(&mut t, &dir);
    assert_eq!(mapping_of(&t), None);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_images_baked_config_lets_the_agents_environment_choose_topics_and_group() {
    // The secret itself is read from the process environment, like every env secret.
    let _env = crate::env_lock();
    std::env::set_var("PORT_CLIENT_SECRET", "agent-secret-from-env");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/switchyard.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let plain = Config::from_toml(&text, env(&[])).unwrap();
    assert_eq!(plain.kafka.triggers_topic, "switchyard.triggers");
    assert_eq!(plain.kafka.group_id, "switchyard");
    let agent = Config::from_toml(
        &text,
        env(&[
            ("PORT_ORG_ID", "org_X"),
            ("PORT_CLIENT_ID", "cid"),
            ("PORT_CLIENT_SECRET", "agent-secret-from-env"),
        ]),
    )
    .unwrap();
    assert_eq!(
        agent.input_topics(),
        vec![
            ("org_X.runs".to_owned(), Format::Port),
            ("org_X.change.log".to_owned(), Format::Port)
        ]
    );
    assert_eq!(agent.kafka.group_id, "org_X.switchyard");
    // The baked file leaves the agent's semantics to Port mode's defaults (T-HTTP-01/02/03,
    // T-IN-02), and its `create_topics = true` never reaches Port's cluster: switchyard's
    // own topics have no cluster there (T-ENV-07).
    assert!(agent.kafka.create_topics);
    assert_eq!(agent.output_kafka().map(|k| k.brokers), None);
    assert!(agent.port.fetch_kafka_credentials, "T-ENV-01");
    let w = &agent.backends.webhook;
    assert_eq!(w.retry.max_attempts, 1);
    assert!(w.retry.credentials_pause.is_zero());
    assert!(!w.breaker.enabled);
    assert!(agent.port.signature_max_age.is_zero());
    assert!(!agent.port.strict_mapping);
    // Outside Port mode the baked file keeps switchyard's own defaults.
    assert_eq!(plain.backends.webhook.retry.max_attempts, 5);
    assert!(plain.backends.webhook.breaker.enabled);
    assert_eq!(plain.port.signature_max_age, Duration::from_secs(86400));
}

#[test]
fn the_polling_streamer_takes_the_agents_polling_variables() {
    // T-ENV-04.
    let _env = crate::env_lock();
    std::env::set_var("PORT_CLIENT_SECRET", "agent-secret-from-env");
    let agent = env(&[
        ("PORT_ORG_ID", "org_P"),
        ("PORT_CLIENT_ID", "cid"),
        ("PORT_CLIENT_SECRET", "agent-secret-from-env"),
        ("STREAMER_NAME", "POLLING"),
        ("POLLING_INTERVAL_SECONDS", "2.5"),
        ("POLLING_RUNS_BATCH_SIZE", "20"),
        ("POLLING_INITIAL_BACKOFF_SECONDS", "2"),
        ("POLLING_MAX_BACKOFF_SECONDS", "60"),
        ("POLLING_BACKOFF_FACTOR", "3"),
        ("POLLING_BACKOFF_JITTER_FACTOR", "0.2"),
        ("POLLING_MAX_FAILURE_DURATION_SECONDS", "600"),
    ]);
    let cfg = Config::from_toml("", agent).unwrap();
    assert_eq!(cfg.port.streamer, super::Streamer::Polling);
    assert!(
        !cfg.port.fetch_kafka_credentials,
        "POLLING uses no Kafka on Port's side"
    );
    let p = &cfg.port.polling;
    assert_eq!(p.interval, Duration::from_millis(2500));
    assert_eq!(p.batch_size, 20);
    assert_eq!(p.initial_backoff, Duration::from_secs(2));
    assert_eq!(p.max_backoff, Duration::from_secs(60));
    assert_eq!((p.backoff_factor, p.backoff_jitter), (3.0, 0.2));
    assert_eq!(p.max_failure_duration, Duration::from_secs(600));
    let bad = env(&[
        ("PORT_ORG_ID", "org_P"),
        ("STREAMER_NAME", "CARRIER_PIGEON"),
        ("POLLING_RUNS_BATCH_SIZE", "1.5"),
    ]);
    let err = Config::from_toml("", bad).unwrap_err().to_string();
    assert!(err.contains("STREAMER_NAME"), "{err}");
    assert!(err.contains("POLLING_RUNS_BATCH_SIZE"), "{err}");
}
