//! Wiring: topics → publisher → pipeline → consumer; owns the shutdown protocol.
//!
//! Shutdown: `shutdown` fires → the consumer stops intake, drains started runs for up to
//! `dispatch.shutdown_grace`, commits synchronously and leaves the group → pending
//! publishes are given up (their events stay uncommitted) → the producer is flushed.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::backends::Registry;
use crate::config::{Config, KafkaConfig};
use crate::dispatch::port::startup::{
    announce_streamer, first_credentials, port_client, port_topics, start_port_reporter,
    use_credentials, EndedElsewhere, CREDENTIAL_RECHECK,
};
use crate::dispatch::Pipeline;
use crate::kafka::{consumer, publisher::Publisher, topics};
use crate::watch::Watcher;

/// Run the dispatcher until `shutdown` fires, then stop cleanly.
///
/// In Port mode the org's streamer setting is set first (`PATCH /v1/organization`, as the
/// agent does), and with `port.fetch_kafka_credentials` the brokers and SASL credentials
/// come from Port's API: fetched at start, and again when the brokers refuse them; new
/// credentials restart the Kafka clients (in-flight runs drain first, as on a shutdown).
pub async fn run(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let client = port_client(&cfg)?;
    if let (true, Some(c)) = (cfg.agent_mode(), &client) {
        announce_streamer(c, cfg.port.streamer).await;
    }
    if !cfg.port.fetch_kafka_credentials {
        return run_once(cfg, shutdown).await;
    }
    let client = client
        .context("port.fetch_kafka_credentials needs port.api_url, client_id and client_secret")?;
    let mut creds = first_credentials(&client, &shutdown).await?;
    loop {
        let mut now = cfg.clone();
        use_credentials(&mut now, &creds);
        let round = shutdown.child_token();
        let mut app = std::pin::pin!(run_once(now, round.clone()));
        let mut last_check: Option<tokio::time::Instant> = None;
        let fresh = loop {
            tokio::select! {
                done = &mut app => return done,
                _ = crate::kafka::auth_failures().notified() => {}
            }
            // At most one fetch per 30 s however often the brokers complain.
            if last_check.is_some_and(|t| t.elapsed() < CREDENTIAL_RECHECK) {
                continue;
            }
            last_check = Some(tokio::time::Instant::now());
            match client.kafka_credentials().await {
                Ok(fresh) if fresh != creds => break fresh,
                Ok(_) => tracing::warn!(
                    "Kafka refused the credentials and Port's API still issues the same ones"
                ),
                Err(e) => tracing::warn!(error = %e,
                    "Kafka refused the credentials, and fetching new ones from Port's API failed"),
            }
        };
        tracing::warn!(brokers = %fresh.brokers, username = %fresh.username,
            "Port issued new Kafka credentials; restarting the Kafka clients with them");
        round.cancel();
        app.await?;
        if shutdown.is_cancelled() {
            return Ok(());
        }
        creds = fresh;
    }
}

/// One run of the dispatcher with fixed Kafka settings.
async fn run_once(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let k = &cfg.kafka;
    let inputs = cfg.input_topics();
    let inputs_spec: Vec<topics::TopicSpec> = inputs
        .iter()
        .map(|(t, _)| topics::TopicSpec::plain(t))
        .collect();
    // The cluster of switchyard's own topics; none in Port mode without [kafka.output].
    let out = cfg.output_kafka();
    fn own_spec(o: &KafkaConfig) -> [topics::TopicSpec<'_>; 3] {
        [
            topics::TopicSpec::plain(&o.status_topic),
            topics::TopicSpec {
                max_message_bytes: Some(topics::DLQ_MAX_MESSAGE),
                ..topics::TopicSpec::plain(&o.dlq_topic)
            },
            topics::TopicSpec {
                name: &o.watches_topic,
                compacted: true,
                max_message_bytes: None,
            },
        ]
    }
    let polling = cfg.port.streamer == crate::config::Streamer::Polling;
    if cfg.agent_mode() {
        // Port's Kafka is read-only to switchyard: its topics are checked, never created.
        // A missing one (an org without a change log) is a warning, as for the agent.
        // POLLING reads no Kafka topic.
        if !polling {
            if let Err(e) = topics::ensure_topics(k, &inputs_spec, false).await {
                tracing::warn!(error = %e, "Port's topics are not all there; consuming what exists");
            }
        }
        match &out {
            Some(o) => topics::ensure_topics(o, &own_spec(o), o.create_topics).await?,
            None => tracing::warn!(
                "Port mode without [kafka.output]: no status, DLQ or watches topic. Run \
                 updates go straight to Port's API, dead letters are logged and skipped, \
                 and duplicate suppression, the run view and resumed follows are off"
            ),
        }
    } else {
        let o = out
            .as_ref()
            .expect("outside Port mode there is an output cluster");
        if o.brokers == k.brokers {
            let mut required = inputs_spec;
            required.extend(own_spec(o));
            topics::ensure_topics(k, &required, k.create_topics).await?;
        } else {
            topics::ensure_topics(k, &inputs_spec, k.create_topics).await?;
            topics::ensure_topics(o, &own_spec(o), o.create_topics).await?;
        }
    }
    // Every accepted record must fit in the DLQ with switchyard's headers: the input cap
    // follows from the DLQ's max.message.bytes. A broker that does not answer within a
    // second (or at all: the mock cluster) leaves Kafka's default in place, and a later
    // answer still sets the cap.
    let configured_cap = cfg.dispatch.max_event_bytes.unwrap_or(usize::MAX);
    let cap_for = move |dlq_max: usize| {
        dlq_max
            .saturating_sub(topics::DLQ_HEADER_ROOM)
            .max(1024)
            .min(configured_cap)
    };
    let max_input = Arc::new(std::sync::atomic::AtomicUsize::new(cap_for(
        topics::BROKER_DEFAULT_MAX_MESSAGE,
    )));
    if let Some(o) = &out {
        let (k, max_input) = (o.clone(), max_input.clone());
        let asked = tokio::spawn(async move {
            let Some(dlq_max) = topics::max_message_bytes(&k, &k.dlq_topic).await else {
                tracing::info!(default = topics::BROKER_DEFAULT_MAX_MESSAGE,
                    "the broker did not report the DLQ topic's max.message.bytes; assuming Kafka's default");
                return;
            };
            let cap = cap_for(dlq_max);
            max_input.store(cap, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(
                dlq_max_message_bytes = dlq_max,
                max_input_bytes = cap,
                "input records larger than max_input_bytes go to the DLQ as too_large"
            );
        });
        let _ = tokio::time::timeout(Duration::from_secs(1), asked).await;
    }
    let mut k = out.clone().unwrap_or_else(|| k.clone());
    // The producer may send whatever a DLQ of up to 16 MiB accepts (librdkafka's own
    // limit is 1,000,000 bytes by default); the broker's topic limit decides.
    k.producer
        .entry("message.max.bytes".into())
        .or_insert_with(|| (16 * 1024 * 1024 + topics::DLQ_HEADER_ROOM).to_string());
    let k = &k;
    let store = Arc::new(crate::secrets::Store::from_config(&cfg)?);
    let secrets = store.all();
    let hard_stop = CancellationToken::new();
    let codec = crate::codec::avro::Codec::from_config(&cfg);
    let publisher = Arc::new(match (&out, port_client(&cfg)?) {
        (Some(_), _) => {
            Publisher::new(k, codec, hard_stop.clone()).context("creating the status producer")?
        }
        (None, Some(client)) => {
            let direct =
                crate::dispatch::port::reporter::DirectReporter::new(client, port_topics(&cfg));
            Publisher::direct(k, codec, hard_stop.clone(), Arc::new(direct))
        }
        (None, None) => anyhow::bail!(
            "Port mode without [kafka.output] reports to Port's API only, which needs \
             port.api_url, client_id and client_secret"
        ),
    });
    // The one numbering of run updates for every writer in this process.
    let seqs = Arc::new(crate::status::writer::Sequencer::default());
    let registry = Registry::from_config(&cfg, publisher.producer(), &secrets)?;
    let ledger = (cfg.dedup.enabled && out.is_some())
        .then(|| crate::status::dedup::Ledger::new(cfg.dedup.max_runs, k, cfg.dedup.catch_up));
    let ended = EndedElsewhere {
        ledger: ledger.clone(),
        port: port_client(&cfg)?.map(|c| (c, port_topics(&cfg))),
    };
    let watcher = Watcher::with_timeouts(
        registry.backends(),
        &cfg.watch,
        publisher.clone(),
        seqs.clone(),
        &k.watches_topic,
        hard_stop.clone(),
        cfg.run_timeout.clone(),
        Some(Arc::new(ended)),
    );
    if out.is_some() {
        watcher
            .load(k)
            .await
            .context("starting the watches reader")?;
    }
    let tokens = cfg.api.resolve_tokens()?;
    // Never shown in a run update, a DLQ record or a log line either.
    crate::secrets::add_redacted(
        tokens
            .iter()
            .map(|t| t.token.clone())
            .chain(cfg.port_secret()),
    );
    let secrets_stop = CancellationToken::new();
    let _stop_secrets = secrets_stop.clone().drop_guard();
    crate::secrets::watch(store.clone(), Duration::from_secs(5), secrets_stop);
    // The board answers without a token only on a loopback listener.
    let loopback = listens_on_loopback(&cfg.http.listen).await;
    let board_on = cfg.http.board && !cfg.http.listen.is_empty() && out.is_some();
    let open_board = board_on && tokens.is_empty() && loopback;
    if board_on && tokens.is_empty() && !loopback {
        tracing::warn!(listen = %cfg.http.listen,
            "the run board is off: http.listen is not a loopback address and no api.tokens are \
             configured (set api.tokens to serve it)");
    }
    let view = ((!tokens.is_empty() || open_board) && out.is_some()).then(|| {
        Arc::new(crate::status::view::RunView::bounded(
            cfg.api.max_runs,
            cfg.api.max_logs,
            cfg.api.max_view_bytes,
        ))
    });
    let http_stop = CancellationToken::new();
    if !cfg.http.listen.is_empty() {
        let api = view.clone().map(|v| {
            Arc::new(crate::api::Api::new(
                v,
                publisher.clone(),
                seqs.clone(),
                tokens,
                &cfg.api,
            ))
        });
        let board = match (&api, board_on) {
            (Some(api), true) => {
                let index = Arc::new(crate::board::dlq::DlqIndex::default());
                crate::board::dlq::follow(k, index.clone(), http_stop.clone())
                    .await
                    .context("starting the board's reader of the DLQ")?;
                let board = Arc::new(crate::board::Board::new(
                    api.clone(),
                    index,
                    crate::board::health::sample(http_stop.clone()),
                    Arc::new(cfg.clone()),
                    http_stop.clone(),
                ));
                Some(crate::api::server::Routes {
                    timed: crate::board::routes(board.clone()),
                    streaming: crate::board::stream_routes(board),
                })
            }
            _ => None,
        };
        crate::api::server::start(
            &cfg.http.listen,
            publisher.clone(),
            api,
            board,
            cfg.api.request_timeout,
            http_stop.clone(),
        )
        .await?;
    }
    let _stop_http = http_stop.clone().drop_guard();
    // One tail of the status topic feeds the duplicate ledger and the run view.
    let tail_task = if ledger.is_some() || view.is_some() {
        let (l, v) = (ledger.clone(), view.clone());
        let codec = publisher.codec().clone();
        let full = view.is_some();
        let task = crate::status::dedup::tail(
            k,
            codec,
            full,
            cfg.dedup.catch_up,
            hard_stop.clone(),
            ledger.clone(),
            move |u| {
                if let Some(l) = &l {
                    l.observe(u);
                }
                if let Some(v) = &v {
                    v.observe(u);
                }
            },
        )
        .await
        .context("starting the view of the status topic")?;
        Some(task)
    } else {
        None
    };
    let reporter_stop = CancellationToken::new();
    let reporter = match &out {
        Some(o) => start_port_reporter(&cfg, o, publisher.codec().clone(), reporter_stop.clone())?,
        None => None, // the publisher reports to Port's API itself
    };
    let pipeline_inputs = crate::dispatch::Inputs {
        formats: inputs.iter().cloned().collect(),
        port: crate::dispatch::port::Settings::from_config(&cfg)?,
    };
    let pipeline = Pipeline::new(
        pipeline_inputs,
        registry,
        watcher.clone(),
        crate::dispatch::Outputs {
            publisher: publisher.clone(),
            seqs: seqs.clone(),
            ledger,
        },
        crate::dispatch::Guards {
            sandbox: Arc::new(crate::template::sandbox::Sandbox::new(
                &cfg.templates,
                std::env::current_exe().context("locating this executable for template workers")?,
            )),
            secrets: store,
            replay_key: cfg.replay_key()?,
            max_input,
            registered: match (cfg.actions.mode, &cfg.actions.file) {
                (crate::config::ActionsMode::Registered, Some(f)) => {
                    let r = crate::actions::Registered::load(f).map_err(anyhow::Error::msg)?;
                    tracing::info!(file = %f, actions = r.len(),
                        "registered actions: events carry inputs only");
                    Some(r)
                }
                _ => None,
            },
        },
        &cfg.dispatch,
    );
    let pipeline = Arc::new(pipeline);
    let polled = if polling {
        let client = port_client(&cfg)?.context("POLLING needs Port's API")?;
        let streamed = crate::dispatch::port::polling::Streamed {
            topic: cfg.kafka.triggers_topic.clone(),
            window: cfg.dispatch.partition_window,
            grace: cfg.dispatch.shutdown_grace,
            secret: cfg
                .port_secret()
                .context("POLLING needs port.client_secret")?,
        };
        let (pipeline, polling_cfg, stop) =
            (pipeline.clone(), cfg.port.polling.clone(), shutdown.clone());
        tracing::info!(api = ?cfg.port.api_url, "claiming runs from Port's API (POLLING)");
        Some(tokio::spawn(async move {
            crate::dispatch::port::polling::run(client, pipeline, &polling_cfg, streamed, stop)
                .await
        }))
    } else {
        None
    };
    let consumer = if polling {
        None
    } else {
        let subscription = consumer::Subscription::triggers(&cfg);
        Some(
            consumer::start(&cfg, subscription, pipeline, shutdown.clone())
                .context("starting the triggers consumer")?,
        )
    };
    tracing::info!(brokers = %cfg.kafka.brokers, group = %k.group_id, group_protocol = ?k.group_protocol,
        triggers = %k.triggers_topic, output_brokers = out.as_ref().map_or("", |o| o.brokers.as_str()),
        status = %out.as_ref().map_or("", |o| o.status_topic.as_str()),
        dlq = %out.as_ref().map_or("", |o| o.dlq_topic.as_str()), "switchyard running");
    let engine = if cfg.automations.enabled {
        Some(
            crate::automations::start(&cfg, shutdown.clone())
                .await
                .context("starting the automations engine")?,
        )
    } else {
        None
    };
    let mut outcome = Ok(());
    if let Some(c) = consumer {
        c.join().await;
    }
    if let Some(e) = engine {
        e.join().await;
    }
    if let Some(p) = polled {
        // The poller ends on the shutdown, or when claims kept failing: stop then too.
        outcome = p.await.context("the POLLING streamer panicked")?;
        shutdown.cancel();
    }
    // Reports of what was just dispatched go out before the producer is closed (up to
    // the grace period; the rest are reported after the next start).
    reporter_stop.cancel();
    if let Some(r) = reporter {
        r.join().await;
    }
    hard_stop.cancel();
    watcher.closed().await;
    if let Some(t) = tail_task {
        let _ = t.await;
    }
    let p = publisher.clone();
    tokio::task::spawn_blocking(move || p.flush(Duration::from_secs(10)))
        .await?
        .context("flushing the producer")?;
    tracing::info!("switchyard stopped");
    outcome
}

/// Whether every address `listen` names is a loopback address.
async fn listens_on_loopback(listen: &str) -> bool {
    match tokio::net::lookup_host(listen).await {
        Ok(addrs) => {
            let addrs: Vec<_> = addrs.collect();
            !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())
        }
        Err(_) => false,
    }
}

/// Run the automations engine alone (`switchyard automations run`), with `/metrics` and
/// `/healthz` on `http.listen`, until `shutdown`.
pub async fn run_automations(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let http_stop = CancellationToken::new();
    let _stop_http = http_stop.clone().drop_guard();
    if !cfg.http.listen.is_empty() {
        crate::api::server::start_metrics(&cfg.http.listen, http_stop.clone()).await?;
    }
    let engine = crate::automations::start(&cfg, shutdown.clone())
        .await
        .context("starting the automations engine")?;
    engine.join().await;
    Ok(())
}

/// Install the global log subscriber: JSON lines in production, readable text for
/// people, every line through the secret redactor. `RUST_LOG`, when set, wins over
/// `log.level`.
pub fn init_logging(cfg: &crate::config::LogConfig) {
    use crate::config::LogFormat;
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<EnvFilter>().ok())
        .unwrap_or_else(|| EnvFilter::new(&cfg.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(crate::secrets::RedactingStderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match cfg.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.compact().try_init(),
    };
}
