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
use crate::config::Config;
use crate::dispatch::Pipeline;
use crate::kafka::{consumer, publisher::Publisher, topics};
use crate::watch::Watcher;

/// With `port.api_url`, a consumer of the status topic that reports Port runs to Port's
/// API ([`crate::dispatch::port::reporter`]).
fn start_port_reporter(
    cfg: &Config,
    codec: Arc<crate::codec::avro::Codec>,
    stop: CancellationToken,
) -> anyhow::Result<Option<consumer::ConsumerHandle>> {
    let (Some(url), Some(id), Some(secret)) =
        (&cfg.port.api_url, &cfg.port.client_id, cfg.port_secret())
    else {
        return Ok(None);
    };
    let client = crate::dispatch::port::client::PortClient::new(url, id, &secret)?;
    let port_topics = cfg
        .input_topics()
        .into_iter()
        .filter(|(_, f)| *f == crate::config::Format::Port)
        .map(|(t, _)| t)
        .collect();
    let reporter = crate::dispatch::port::reporter::Reporter::new(client, codec, port_topics);
    let sub = consumer::Subscription {
        group: format!("{}.port-reporter", cfg.kafka.group_id),
        topics: vec![cfg.kafka.status_topic.clone()],
        marks_ready: false,
    };
    tracing::info!(api = %url, group = %sub.group, "reporting Port runs to Port's API");
    let handle = consumer::start(cfg, sub, Arc::new(reporter), stop)
        .context("starting the Port reporter")?;
    Ok(Some(handle))
}

/// Run the dispatcher until `shutdown` fires, then stop cleanly.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let k = &cfg.kafka;
    let inputs = cfg.input_topics();
    let mut required: Vec<topics::TopicSpec> = inputs
        .iter()
        .map(|(t, _)| topics::TopicSpec::plain(t))
        .collect();
    required.extend([
        topics::TopicSpec::plain(&k.status_topic),
        topics::TopicSpec {
            max_message_bytes: Some(topics::DLQ_MAX_MESSAGE),
            ..topics::TopicSpec::plain(&k.dlq_topic)
        },
        topics::TopicSpec {
            name: &k.watches_topic,
            compacted: true,
            max_message_bytes: None,
        },
    ]);
    topics::ensure_topics(k, &required, k.create_topics).await?;
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
    {
        let (k, max_input) = (k.clone(), max_input.clone());
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
    let mut k = k.clone();
    // The producer may send whatever a DLQ of up to 16 MiB accepts (librdkafka's own
    // limit is 1,000,000 bytes by default); the broker's topic limit decides.
    k.producer
        .entry("message.max.bytes".into())
        .or_insert_with(|| (16 * 1024 * 1024 + topics::DLQ_HEADER_ROOM).to_string());
    let k = &k;
    let store = Arc::new(crate::secrets::Store::from_config(&cfg)?);
    let secrets = store.all();
    let hard_stop = CancellationToken::new();
    let publisher = Arc::new(
        Publisher::new(
            k,
            crate::codec::avro::Codec::from_config(&cfg),
            hard_stop.clone(),
        )
        .context("creating the status producer")?,
    );
    // The one numbering of run updates for every writer in this process.
    let seqs = Arc::new(crate::status::writer::Sequencer::default());
    let registry = Registry::from_config(&cfg, publisher.producer(), &secrets)?;
    let watcher = Watcher::new(
        registry.backends(),
        &cfg.watch,
        publisher.clone(),
        seqs.clone(),
        &k.watches_topic,
        hard_stop.clone(),
    );
    watcher
        .load(&cfg.kafka)
        .await
        .context("starting the watches reader")?;
    let ledger = cfg
        .dedup
        .enabled
        .then(|| crate::status::dedup::Ledger::new(cfg.dedup.max_runs, k, cfg.dedup.catch_up));
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
    let view = (!tokens.is_empty()).then(|| {
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
        crate::api::server::start(
            &cfg.http.listen,
            publisher.clone(),
            api,
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
    let reporter = start_port_reporter(&cfg, publisher.codec().clone(), reporter_stop.clone())?;
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
    let subscription = consumer::Subscription::triggers(&cfg);
    let consumer = consumer::start(&cfg, subscription, Arc::new(pipeline), shutdown.clone())
        .context("starting the triggers consumer")?;
    tracing::info!(brokers = %k.brokers, group = %k.group_id, group_protocol = ?k.group_protocol,
        triggers = %k.triggers_topic, status = %k.status_topic, dlq = %k.dlq_topic,
        "switchyard running");
    consumer.join().await;
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
