//! Automations: Port-format definitions evaluated on entity changes (the entities topic,
//! or records in Port's change-log shape) and run changes (the status topic), with
//! durable timers. A fire is a trigger event on the triggers topic, emitted exactly once
//! per source change (see [`engine`]); docs/automations.md describes the whole.
//!
//! - [`definition`]: the format, validated at load;
//! - [`store`]: the definitions in force, from a directory or a compacted topic, reloaded
//!   without a restart;
//! - [`event`]: the event objects conditions and templates see, run ids, the MAC;
//! - [`eval`]: conditions, in the template sandbox;
//! - [`state`]: per-partition entity, run and timer state;
//! - [`engine`]: the consumer group member and its transactions.

pub mod definition;
pub mod engine;
pub mod eval;
pub mod event;
pub mod state;
pub mod store;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Format};
use crate::kafka::topics::{self, TopicSpec};

pub use engine::EngineHandle;
pub use store::Definitions;

/// Start the engine for `cfg` (topics checked or created, definitions loaded); it runs
/// until `shutdown`.
pub async fn start(cfg: &Config, shutdown: CancellationToken) -> anyhow::Result<EngineHandle> {
    let problems = cfg.automation_problems();
    if !problems.is_empty() {
        anyhow::bail!("automations cannot run:\n  {}", problems.join("\n  "));
    }
    let a = &cfg.automations;
    let kafka = cfg.own_topics_kafka().map_err(anyhow::Error::msg)?;
    let entities = cfg.automations_entities_topic();
    let triggers = cfg.automations_triggers_topic();
    let mut specs = vec![
        TopicSpec {
            compacted: true,
            ..TopicSpec::plain(&entities)
        },
        TopicSpec {
            compacted: true,
            ..TopicSpec::plain(&a.timers_topic)
        },
        TopicSpec::plain(&triggers),
    ];
    if a.runs {
        specs.push(TopicSpec::plain(&kafka.status_topic));
    }
    if let Some(t) = &a.changes_topic {
        specs.push(TopicSpec::plain(t));
    }
    if let Some(t) = &a.topic {
        specs.push(TopicSpec {
            compacted: true,
            ..TopicSpec::plain(t)
        });
    }
    topics::ensure_topics(&kafka, &specs, kafka.create_topics)
        .await
        .context("the automations topics")?;
    check_timer_partitions(
        &kafka,
        &a.timers_topic,
        &entities,
        a.changes_topic.as_deref(),
    )
    .await?;
    let defs = Arc::new(Definitions::default());
    if let Some(dir) = &a.dir {
        defs.watch_dir(PathBuf::from(dir), a.reload_interval, shutdown.clone())
            .map_err(|p| anyhow::anyhow!("automations.dir:\n  {}", p.join("\n  ")))?;
    }
    if let Some(t) = &a.topic {
        defs.follow_topic(&kafka, t, shutdown.clone()).await?;
    }
    let sandbox = Arc::new(crate::template::sandbox::Sandbox::new(
        &cfg.templates,
        std::env::current_exe().context("locating this executable for template workers")?,
    ));
    let settings = engine::Settings {
        group: cfg.automations_group(),
        triggers_topic: triggers.clone(),
        triggers_avro: kafka.triggers_format == Format::Avro && triggers == kafka.triggers_topic,
        timers_topic: a.timers_topic.clone(),
        entities_topic: entities,
        changes_topic: a.changes_topic.clone(),
        status_topic: a.runs.then(|| kafka.status_topic.clone()),
        max_hops: a.max_hops,
        start_latest: a.start_from == crate::config::StartFrom::Latest,
        max_state_bytes: a.max_state_bytes,
        max_batch: a.max_batch,
        flush_interval: a.flush_interval,
        transaction_timeout: a.transaction_timeout,
        mac_key: cfg.replay_key()?,
        kafka,
    };
    engine::start(
        settings,
        defs,
        eval::Evaluator::new(sandbox),
        crate::codec::avro::Codec::from_config(cfg),
        shutdown,
    )
}

/// Timers live in the partition of their entity: the timers topic needs at least as
/// many partitions as each topic of entity changes.
async fn check_timer_partitions(
    kafka: &crate::config::KafkaConfig,
    timers: &str,
    entities: &str,
    changes: Option<&str>,
) -> anyhow::Result<()> {
    let count = |t: &str| {
        let t = t.to_owned();
        let k = kafka.clone();
        async move {
            topics::from_start(&k, &t)
                .await
                .map(|(_, ends)| ends.len())
                .unwrap_or(0)
        }
    };
    let have = count(timers).await;
    for source in std::iter::once(entities).chain(changes) {
        let need = count(source).await;
        if have < need {
            anyhow::bail!(
                "automations.timers_topic {timers:?} has {have} partitions and {source:?} has \
                 {need}: timers live in the partition of their entity, so it needs at least {need}"
            );
        }
    }
    Ok(())
}
