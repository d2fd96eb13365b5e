//! Every semantic check of a configuration, listed together (exit 78 names them all).

use super::*;

impl Config {
    /// Semantic checks, all of them.
    pub(super) fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let k = &self.kafka;
        if k.brokers.trim().is_empty() {
            p.push("kafka.brokers: must name at least one broker".into());
        }
        if k.group_id.trim().is_empty() {
            p.push("kafka.group_id: must not be empty".into());
        }
        for (field, topic) in [
            ("kafka.triggers_topic", &k.triggers_topic),
            ("kafka.status_topic", &k.status_topic),
            ("kafka.dlq_topic", &k.dlq_topic),
            ("kafka.watches_topic", &k.watches_topic),
        ] {
            if let Err(why) = check_topic_name(topic) {
                p.push(format!("{field}: {why}"));
            }
        }
        for (field, topic) in [
            ("backends.kafka.topic", &self.backends.kafka.topic),
            (
                "backends.upsert_entity.topic",
                &self.backends.upsert_entity.topic,
            ),
        ] {
            if let Err(why) = check_topic_name(topic) {
                p.push(format!("{field}: {why}"));
            }
        }
        if let Some(url) = &self.backends.upsert_entity.catalog_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                p.push(format!(
                    "backends.upsert_entity.catalog_url: {url:?} is not an http(s) URL"
                ));
            }
        }
        for (field, name) in [
            (
                "backends.upsert_entity.catalog_token_secret",
                &self.backends.upsert_entity.catalog_token_secret,
            ),
            (
                "backends.azure_devops.secret",
                &self.backends.azure_devops.secret,
            ),
        ] {
            if let Some(name) = name.as_ref().filter(|n| !self.secrets.contains_key(*n)) {
                p.push(format!("{field}: no secret named {name:?} in [secrets]"));
            }
        }
        for (project, name) in &self.backends.gitlab.trigger_tokens {
            if !self.secrets.contains_key(name) {
                p.push(format!(
                    "backends.gitlab.trigger_tokens.\"{project}\": no secret named {name:?} in [secrets]"
                ));
            }
        }
        let gl = &self.backends.gitlab.base_url;
        if !(gl.starts_with("http://") || gl.starts_with("https://")) {
            p.push(format!(
                "backends.gitlab.base_url: {gl:?} is not an http(s) URL"
            ));
        }
        let w = &self.watch;
        if w.poll_interval.is_zero() || w.max_concurrent_polls == 0 || w.max_watches == 0 {
            p.push(
                "watch: poll_interval, max_concurrent_polls and max_watches must be above 0".into(),
            );
        }
        let ado = &self.backends.azure_devops;
        if !(ado.base_url.starts_with("http://") || ado.base_url.starts_with("https://")) {
            p.push(format!(
                "backends.azure_devops.base_url: {:?} is not an http(s) URL",
                ado.base_url
            ));
        }
        if reqwest::header::HeaderName::from_bytes(ado.signature_header.as_bytes()).is_err() {
            p.push(format!(
                "backends.azure_devops.signature_header: {:?} is not a valid header name",
                ado.signature_header
            ));
        }
        if k.triggers_topic == k.status_topic || k.triggers_topic == k.dlq_topic {
            p.push("kafka.triggers_topic: must differ from status_topic and dlq_topic".into());
        }
        p.extend(self.input_problems());
        if k.topic_partitions < 1 {
            p.push("kafka.topic_partitions: must be at least 1".into());
        }
        if k.topic_replication < 1 {
            p.push("kafka.topic_replication: must be at least 1".into());
        }
        for (key, owner) in [
            (
                "enable.auto.offset.store",
                "switchyard stores offsets itself",
            ),
            ("group.id", "use kafka.group_id"),
            ("bootstrap.servers", "use kafka.brokers"),
            ("group.protocol", "use kafka.group_protocol"),
        ] {
            if k.consumer.contains_key(key) || k.common.contains_key(key) {
                p.push(format!(
                    "kafka.consumer.\"{key}\": cannot be overridden ({owner})"
                ));
            }
        }
        if k.group_protocol == GroupProtocol::Consumer {
            for (key, why) in CLASSIC_ONLY {
                for (section, options) in [("consumer", &k.consumer), ("common", &k.common)] {
                    if options.contains_key(key) {
                        p.push(format!(
                            "kafka.{section}.\"{key}\": not supported with kafka.group_protocol = \"consumer\" ({why}); remove it or use the classic protocol"
                        ));
                    }
                }
            }
        }
        if !self.http.listen.is_empty() && self.http.listen.parse::<std::net::SocketAddr>().is_err()
        {
            p.push(format!(
                "http.listen: {:?} is not an address such as 127.0.0.1:8080 (empty disables it)",
                self.http.listen
            ));
        }
        if let Some(url) = &self.avro.registry_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                p.push(format!("avro.registry_url: {url:?} is not an http(s) URL"));
            }
        } else {
            let a = &self.avro;
            let ids = [
                a.trigger_schema_id,
                a.run_update_schema_id,
                a.run_update_v1_schema_id,
            ];
            if ids[0] == ids[1] || ids[0] == ids[2] || ids[1] == ids[2] {
                p.push(
                    "avro: trigger_schema_id, run_update_schema_id and run_update_v1_schema_id \
                     must differ"
                        .into(),
                );
            }
        }
        if let Err(e) = self.api.resolve_tokens() {
            p.extend(e.0);
        }
        if !self.api.tokens.is_empty() && self.http.listen.is_empty() {
            p.push("api.tokens: the status API needs http.listen".into());
        }
        if self.api.max_runs == 0 {
            p.push("api.max_runs: must be at least 1".into());
        }
        if self.dedup.max_runs == 0 {
            p.push("dedup.max_runs: must be at least 1".into());
        }
        if let Err(errs) = crate::policy::Policy::new(&self.backends.webhook.destinations, false) {
            p.extend(
                errs.into_iter()
                    .map(|e| format!("backends.webhook.destinations.{e}")),
            );
        }
        let t = &self.templates;
        if t.workers == 0 || t.workers > 64 {
            p.push("templates.workers: must be between 1 and 64".into());
        }
        if t.timeout.is_zero() {
            p.push("templates.timeout: must be more than 0".into());
        }
        if t.max_memory_bytes < 64 * 1024 * 1024 {
            p.push("templates.max_memory_bytes: must be at least 64 MiB (a worker needs room to start)".into());
        }
        if t.max_output_bytes == 0 || t.max_depth == 0 || t.max_program_bytes == 0 {
            p.push(
                "templates: max_output_bytes, max_depth and max_program_bytes must be at least 1"
                    .into(),
            );
        }
        if self.dispatch.partition_window == 0 {
            p.push("dispatch.partition_window: must be at least 1".into());
        }
        let b = &self.backends;
        let pools = [
            ("webhook", b.webhook.pool()),
            ("kafka", b.kafka.pool()),
            ("upsert_entity", b.upsert_entity.pool()),
            ("azure_devops", b.azure_devops.pool()),
            ("gitlab", b.gitlab.pool()),
            ("github", b.github.pool()),
        ];
        for (name, pool) in pools {
            p.extend(pool.retry.problems(&format!("backends.{name}")));
            p.extend(pool.protection_problems(&format!("backends.{name}")));
            if pool.concurrency == 0 {
                p.push(format!("backends.{name}.concurrency: must be at least 1"));
            }
            if pool.timeout.is_zero() {
                p.push(format!("backends.{name}.timeout: must be greater than 0"));
            }
        }
        if let Err(e) = self.log.level.parse::<tracing_subscriber::EnvFilter>() {
            p.push(format!("log.level: {e}"));
        }
        for (name, s) in &self.secrets {
            if let Err(e) = s.source.resolve() {
                p.push(format!("secrets.{name}: {e}"));
            }
            for b in &s.backends {
                if !KINDS.contains(&b.to_ascii_uppercase().as_str()) {
                    p.push(format!(
                        "secrets.{name}.backends: {b:?} is not one of {}",
                        KINDS.join(", ")
                    ));
                }
            }
            for h in &s.hosts {
                if h.is_empty() || h.contains(['/', ' ']) || h[1..].contains('*') {
                    p.push(format!(
                        "secrets.{name}.hosts: {h:?} is not a host name or `*.domain`"
                    ));
                }
            }
        }
        match (self.actions.mode, &self.actions.file) {
            (ActionsMode::Registered, None) => {
                p.push("actions.file: mode \"registered\" needs the actions file".into())
            }
            (ActionsMode::Registered, Some(f)) => {
                if let Err(e) = crate::actions::Registered::load(f) {
                    p.push(format!("actions.file: {e}"));
                }
            }
            (ActionsMode::Inline, Some(_)) => p.push(
                "actions.file: only read with mode = \"registered\"; set the mode or remove it"
                    .into(),
            ),
            (ActionsMode::Inline, None) => {}
        }
        if let Err(e) = self.replay_key() {
            p.push(e.to_string());
        }
        let own = self.own_topics();
        let kb = &self.backends.kafka;
        for (field, topic) in std::iter::once(("backends.kafka.topic", &kb.topic))
            .chain(kb.topics.iter().map(|t| ("backends.kafka.topics", t)))
        {
            if own.contains(topic) {
                p.push(format!(
                    "{field}: {topic:?} is one of switchyard's own topics; the KAFKA backend \
                     never writes to those"
                ));
            }
        }
        for (field, name) in self.credential_secrets() {
            if let Some(s) = self.secrets.get(&name) {
                if !s.hosts.is_empty() || !s.backends.is_empty() {
                    p.push(format!(
                        "secrets.{name}: it is a backend credential ({field}), which templates never \
                         see; remove its hosts/backends, or use a separate secret for templates"
                    ));
                }
            }
        }
        p
    }

    /// Problems of the input topics and of the Port settings they need.
    fn input_problems(&self) -> Vec<String> {
        let k = &self.kafka;
        let mut p = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for (i, input) in k.inputs.iter().enumerate() {
            if let Err(why) = check_topic_name(&input.topic) {
                p.push(format!("kafka.inputs[{i}].topic: {why}"));
            }
            if [&k.status_topic, &k.dlq_topic, &k.watches_topic].contains(&&input.topic) {
                p.push(format!(
                    "kafka.inputs[{i}].topic: {:?} is also the status, DLQ or watches topic",
                    input.topic
                ));
            }
        }
        for (topic, _) in self.input_topics() {
            if !seen.insert(topic.clone()) {
                p.push(format!("kafka.inputs: {topic:?} is consumed twice"));
            }
        }
        if k.status_read_formats.contains(&Format::Port) {
            p.push(
                "kafka.status_read_formats: \"port\" is an input format; use json or avro".into(),
            );
        }
        if !k.status_read_formats.is_empty() && !k.status_read_formats.contains(&k.status_format) {
            p.push(format!(
                "kafka.status_read_formats: must include status_format ({:?}), or readers skip \
                 switchyard's own updates",
                k.status_format
            ));
        }
        if k.status_format == Format::Port {
            p.push("kafka.status_format: \"port\" is an input format; use json or avro".into());
        }
        let port_inputs = self.input_topics().iter().any(|(_, f)| *f == Format::Port);
        let pc = &self.port;
        if port_inputs && pc.client_secret.is_none() {
            p.push(
                "port.client_secret: the port input format needs it (Port signs its messages with it; PORT_CLIENT_SECRET)"
                    .into(),
            );
        }
        if let Some(secret) = &pc.client_secret {
            if let Err(e) = secret.resolve() {
                p.push(format!("port.client_secret: {e}"));
            }
        }
        if let Some(url) = &pc.api_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                p.push(format!("port.api_url: {url:?} is not an http(s) URL"));
            }
            if pc.client_id.as_deref().is_none_or(str::is_empty) || pc.client_secret.is_none() {
                p.push("port.api_url: reporting to Port needs port.client_id and port.client_secret (PORT_CLIENT_ID, PORT_CLIENT_SECRET)".into());
            }
        }
        let api = pc.api_url.is_some() && pc.client_id.is_some() && pc.client_secret.is_some();
        p.extend(pc.polling.problems());
        p.extend(self.run_timeout.problems());
        if self.automations.enabled {
            p.extend(self.automation_problems());
        }
        if pc.streamer == super::port::Streamer::Polling && !api {
            p.push("port.streamer: POLLING claims runs from Port's API, which needs port.api_url, client_id and client_secret".into());
        }
        if pc.fetch_kafka_credentials && !api {
            p.push("port.fetch_kafka_credentials: fetching Kafka credentials needs port.api_url, client_id and client_secret (PORT_CLIENT_ID, PORT_CLIENT_SECRET)".into());
        }
        if let Some(o) = &k.output {
            if o.brokers.trim().is_empty() {
                p.push("kafka.output.brokers: must name at least one broker".into());
            }
        } else if self.agent_mode() {
            // Port's Kafka is read-only: without an output cluster there is no status topic.
            if !api {
                p.push("kafka.output: in Port mode (port.org_id) without an output cluster, run updates go to Port's API only, which needs port.api_url, client_id and client_secret".into());
            }
            if !self.api.tokens.is_empty() {
                p.push("api.tokens: the status API reads the status topic, which Port mode keeps on [kafka.output]; set kafka.output or remove the tokens".into());
            }
        }
        if let Some(path) = &pc.mapping_file {
            if let Err(errs) =
                crate::port::mapping::Mapping::load(Path::new(path), pc.strict_mapping)
            {
                p.extend(errs.into_iter().map(|e| format!("port.mapping_file: {e}")));
            }
        }
        if let Some(name) = self
            .backends
            .webhook
            .signing_secret
            .as_ref()
            .filter(|n| !self.secrets.contains_key(*n))
        {
            p.push(format!(
                "backends.webhook.signing_secret: no secret named {name:?} in [secrets]"
            ));
        }
        p
    }
}

/// Kafka's topic-name rule: 1–249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub(super) fn check_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 249 || name == "." || name == ".." {
        return Err(format!("{name:?} is not a legal topic name"));
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        Some(c) => Err(format!("{name:?} contains {c:?}; use [a-zA-Z0-9._-]")),
        None => Ok(()),
    }
}
