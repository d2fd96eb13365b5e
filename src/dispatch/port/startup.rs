//! Port mode's start-up: the client of Port's API, the streamer setting, the Kafka
//! credentials Port issues, the reporter group, and the "did the run end in Port?" check
//! of run timeouts. `crate::app` wires them.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use super::client::{CallError, KafkaCredentials, PortClient};
use crate::config::{Config, KafkaConfig};
use crate::kafka::consumer;

/// With `port.api_url`, a consumer of the status topic that reports Port runs to Port's
/// API ([`crate::dispatch::port::reporter`]).
pub(crate) fn start_port_reporter(
    cfg: &Config,
    out: &KafkaConfig,
    codec: Arc<crate::codec::avro::Codec>,
    stop: CancellationToken,
) -> anyhow::Result<Option<consumer::ConsumerHandle>> {
    let Some(client) = port_client(cfg)? else {
        return Ok(None);
    };
    let reporter = super::reporter::Reporter::new(client, codec, port_topics(cfg));
    let sub = consumer::Subscription {
        kafka: out.clone(),
        group: format!("{}.port-reporter", cfg.kafka.group_id),
        topics: vec![out.status_topic.clone()],
        marks_ready: false,
    };
    tracing::info!(api = ?cfg.port.api_url, group = %sub.group, "reporting Port runs to Port's API");
    let handle = consumer::start(cfg, sub, Arc::new(reporter), stop)
        .context("starting the Port reporter")?;
    Ok(Some(handle))
}

/// The client of Port's API, when `[port]` has the API's URL and credentials.
pub(crate) fn port_client(cfg: &Config) -> anyhow::Result<Option<PortClient>> {
    let (Some(url), Some(id), Some(secret)) =
        (&cfg.port.api_url, &cfg.port.client_id, cfg.port_secret())
    else {
        return Ok(None);
    };
    Ok(Some(PortClient::new(url, id, &secret)?))
}

/// The topics that carry Port's agent messages.
pub(crate) fn port_topics(cfg: &Config) -> std::collections::HashSet<String> {
    cfg.input_topics()
        .into_iter()
        .filter(|(_, f)| *f == crate::config::Format::Port)
        .map(|(t, _)| t)
        .collect()
}

pub(crate) const CREDENTIAL_RECHECK: Duration = Duration::from_secs(30);

/// Whether a run ended elsewhere before its run_timeout: a terminal update on the status
/// topic (seen by the duplicate ledger: a service reported through the status API), or,
/// for a Port run, a final status in Port (a service reported to Port's API directly).
pub(crate) struct EndedElsewhere {
    pub(crate) ledger: Option<Arc<crate::status::dedup::Ledger>>,
    pub(crate) port: Option<(PortClient, std::collections::HashSet<String>)>,
}

impl crate::watch::RunEnded for EndedElsewhere {
    fn ended<'a>(
        &'a self,
        run_id: &'a str,
        source: &'a crate::model::SourceRef,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<bool, String>> + Send + 'a>>
    {
        Box::pin(async move {
            let finished = self.ledger.as_ref().and_then(|l| l.seen(run_id))
                == Some(crate::status::dedup::Seen::Finished);
            if finished {
                return Ok(true);
            }
            match &self.port {
                Some((client, topics)) if topics.contains(&source.topic) => {
                    super::reporter::ended_in_port(client, run_id)
                        .await
                        .map_err(|e| e.to_string())
                }
                _ => Ok(false),
            }
        })
    }
}

/// `PATCH /v1/organization` with the streamer name, as the agent does at start; a
/// failure is a warning, and the start goes on.
pub(crate) async fn announce_streamer(client: &PortClient, streamer: crate::config::Streamer) {
    let name = streamer.as_str();
    let body = serde_json::json!({"settings": {"portAgentStreamerName": name}});
    let sent = tokio::time::timeout(
        Duration::from_secs(30),
        client.request(reqwest::Method::PATCH, "/v1/organization", Some(&body)),
    )
    .await;
    match sent {
        Ok(Ok(_)) => tracing::info!(streamer = name, "Port organisation's streamer set"),
        Ok(Err(e)) => tracing::warn!(error = %e, "setting the Port organisation's streamer failed"),
        Err(_) => tracing::warn!("setting the Port organisation's streamer timed out"),
    }
}

/// The start's credentials: transient failures are retried for about a minute, a refusal
/// stops the start (the agent crashes on either).
pub(crate) async fn first_credentials(
    client: &PortClient,
    shutdown: &CancellationToken,
) -> anyhow::Result<KafkaCredentials> {
    let mut backoff = crate::backoff::Backoff::new(
        Duration::from_secs(1),
        Duration::from_secs(15),
        crate::backoff::Jitter::Half,
    );
    for attempt in 1..=6 {
        match client.kafka_credentials().await {
            Ok(c) => {
                tracing::info!(brokers = %c.brokers, username = %c.username,
                    "Kafka brokers and credentials from Port's API (GET /v1/kafka-credentials)");
                return Ok(c);
            }
            Err(e @ CallError::Rejected { .. }) => {
                anyhow::bail!("Port's API refused the Kafka credentials request: {e}")
            }
            Err(e) if attempt == 6 => {
                anyhow::bail!("fetching the Kafka credentials from Port's API failed: {e}")
            }
            Err(e) => tracing::warn!(error = %e, attempt,
                "fetching the Kafka credentials from Port's API failed; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_wait()) => {}
            _ = shutdown.cancelled() => anyhow::bail!("stopped while fetching the Kafka credentials"),
        }
    }
    unreachable!("the last attempt returns")
}

/// Port's credentials on the triggers' cluster: brokers, `sasl.username`,
/// `sasl.password` (the protocol and mechanism stay the agent variables').
pub(crate) fn use_credentials(cfg: &mut Config, c: &KafkaCredentials) {
    crate::secrets::add_redacted([c.password.clone()]);
    cfg.kafka.brokers.clone_from(&c.brokers);
    cfg.kafka
        .common
        .insert("sasl.username".into(), c.username.clone());
    cfg.kafka
        .common
        .insert("sasl.password".into(), c.password.clone());
}
