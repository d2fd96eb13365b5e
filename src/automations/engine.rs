//! The engine: one consumer-group member on its own thread, reading the entities topic,
//! the status topic and the change-log topic, and one transactional producer per
//! assigned partition (`transactional.id` = `switchyard-automations.{group}.{topic}.{partition}`).
//!
//! Per partition, changes are processed in offset order and batched: one transaction
//! carries the batch's emitted triggers, its timer records and the partition's next
//! offset (`send_offsets_to_transaction`). A crash before the commit leaves nothing
//! visible to `read_committed` readers and the offsets where they were, so the batch is
//! processed again from the same state: every qualifying change emits exactly once.
//!
//! On assignment the new owner first initialises its producer (which fences a dead or
//! lingering predecessor with the same transactional id at once and aborts its open
//! transaction), then reads the committed offset, rebuilds the partition's state from the
//! topic itself up to that offset, and loads the partition's timers. On revoke the
//! partition's uncommitted batch is dropped: its changes are the next owner's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::definition::EventType;
use super::eval::{Evaluator, Verdict};
use super::event::{self, ChangeEvent};
use super::state::{parse_time_ms, Out, PartitionState, SourceKind, Timer};
use super::store::Definitions;
use crate::config::KafkaConfig;
use crate::telemetry::metrics;

type Tp = (String, i32);
type TxProducer = ThreadedProducer<DefaultProducerContext>;

const TXN_CALL: Duration = Duration::from_secs(30);

/// Everything the engine's thread needs, fixed at start.
pub struct Settings {
    pub kafka: KafkaConfig,
    pub group: String,
    pub triggers_topic: String,
    pub triggers_avro: bool,
    pub timers_topic: String,
    pub entities_topic: String,
    pub changes_topic: Option<String>,
    /// The status topic, when run changes are read.
    pub status_topic: Option<String>,
    pub max_hops: u32,
    pub max_state_bytes: usize,
    pub max_batch: usize,
    pub flush_interval: Duration,
    pub transaction_timeout: Duration,
    pub mac_key: Option<Vec<u8>>,
}

impl Settings {
    fn kind_of(&self, topic: &str) -> Option<SourceKind> {
        if topic == self.entities_topic {
            Some(SourceKind::Entities)
        } else if Some(topic) == self.changes_topic.as_deref() {
            Some(SourceKind::Changes)
        } else if Some(topic) == self.status_topic.as_deref() {
            Some(SourceKind::Runs)
        } else {
            None
        }
    }

    pub fn topics(&self) -> Vec<String> {
        let mut t = vec![self.entities_topic.clone()];
        t.extend(self.changes_topic.clone());
        t.extend(self.status_topic.clone());
        t
    }
}

/// One assigned partition.
struct Part {
    kind: SourceKind,
    producer: TxProducer,
    state: PartitionState,
    /// Offset committed with the last transaction (the next to process).
    committed: Option<i64>,
    /// Next offset after the last processed record (committed with the next transaction).
    next: Option<i64>,
    batch: Vec<Out>,
    /// Records processed since the last commit.
    pending: usize,
    since: Option<Instant>,
    /// Over `max_state_bytes`: not read until restarted (nothing past it commits).
    stopped: bool,
    /// The producer failed fatally: initialise again.
    broken: bool,
}

struct Ctx {
    parts: Mutex<HashMap<Tp, Part>>,
    assigned: Mutex<Vec<Tp>>,
}

impl ClientContext for Ctx {
    fn error(&self, error: KafkaError, reason: &str) {
        crate::kafka::note_client_error(&error);
        tracing::warn!(error = %error, reason, "automations consumer error");
    }
}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
            let mut assigned = self.assigned.lock().unwrap_or_else(|p| p.into_inner());
            for e in tpl.elements() {
                let tp = (e.topic().to_owned(), e.partition());
                assigned.retain(|a| *a != tp);
                if let Some(p) = parts.remove(&tp) {
                    tracing::info!(topic = %tp.0, partition = tp.1, uncommitted = p.pending,
                        "automations partition revoked; its uncommitted changes are the next owner's");
                }
            }
        }
    }

    fn post_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let mut assigned = self.assigned.lock().unwrap_or_else(|p| p.into_inner());
            for e in tpl.elements() {
                assigned.push((e.topic().to_owned(), e.partition()));
            }
        }
    }
}

/// The running engine.
pub struct EngineHandle {
    thread: std::thread::JoinHandle<()>,
}

impl EngineHandle {
    /// Wait until the engine has committed what it processed and left the group.
    pub async fn join(self) {
        let _ = tokio::task::spawn_blocking(move || self.thread.join()).await;
    }
}

/// Join the group and start the engine's thread; it runs until `shutdown`.
pub fn start(
    settings: Settings,
    defs: Arc<Definitions>,
    evaluator: Evaluator,
    codec: Arc<crate::codec::avro::Codec>,
    shutdown: CancellationToken,
) -> anyhow::Result<EngineHandle> {
    let k = &settings.kafka;
    let mut c = crate::kafka::client_config(k);
    c.set("group.id", &settings.group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed");
    match k.group_protocol {
        crate::config::GroupProtocol::Classic => {
            c.set("partition.assignment.strategy", "cooperative-sticky")
        }
        crate::config::GroupProtocol::Consumer => c.set("group.protocol", "consumer"),
    };
    for (key, v) in &k.consumer {
        if !matches!(
            key.as_str(),
            "group.id" | "enable.auto.commit" | "isolation.level" | "group.instance.id"
        ) {
            c.set(key, v);
        }
    }
    let ctx = Ctx {
        parts: Mutex::default(),
        assigned: Mutex::default(),
    };
    let consumer: BaseConsumer<Ctx> = c.create_with_context(ctx)?;
    let topics = settings.topics();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&names)?;
    tracing::info!(group = %settings.group, topics = ?topics, automations = defs.get().len(),
        "automations engine running");
    let engine = Engine {
        s: settings,
        defs,
        evaluator,
        codec,
        handle: tokio::runtime::Handle::current(),
        retry_at: HashMap::new(),
    };
    let thread = std::thread::Builder::new()
        .name("switchyard-automations".into())
        .spawn(move || engine.run(consumer, shutdown))
        .expect("spawning a thread only fails when the OS is out of resources");
    Ok(EngineHandle { thread })
}

struct Engine {
    s: Settings,
    defs: Arc<Definitions>,
    evaluator: Evaluator,
    codec: Arc<crate::codec::avro::Codec>,
    handle: tokio::runtime::Handle,
    /// Partitions whose initialisation failed, and when to try again.
    retry_at: HashMap<Tp, Instant>,
}

impl Engine {
    fn run(mut self, consumer: BaseConsumer<Ctx>, shutdown: CancellationToken) {
        let mut gauges = Instant::now();
        while !shutdown.is_cancelled() {
            let polled = consumer.poll(self.wait(&consumer));
            self.init_assigned(&consumer);
            match polled {
                Some(Ok(m)) => self.on_record(&consumer, &m),
                Some(Err(e)) => tracing::warn!(error = %e, "automations consumer error"),
                None => {}
            }
            self.fire_timers(&consumer);
            self.flush(&consumer, false);
            if gauges.elapsed() >= Duration::from_secs(1) {
                self.export(&consumer);
                gauges = Instant::now();
            }
        }
        tracing::info!("automations engine stopping: committing what it processed");
        self.flush(&consumer, true);
        consumer.unsubscribe();
        drop(consumer);
        tracing::info!("automations engine stopped");
    }

    /// How long to poll: until the next flush or timer, at most 50 ms.
    fn wait(&self, consumer: &BaseConsumer<Ctx>) -> Duration {
        let parts = lock(&consumer.context().parts);
        let now = now_ms();
        let mut wait = Duration::from_millis(50);
        for p in parts.values() {
            if let Some(since) = p.since {
                wait = wait.min(self.s.flush_interval.saturating_sub(since.elapsed()));
            }
            if let Some(due) = p.state.next_due() {
                wait = wait.min(Duration::from_millis((due - now).max(0) as u64));
            }
        }
        wait
    }

    fn init_assigned(&mut self, consumer: &BaseConsumer<Ctx>) {
        let ctx = consumer.context();
        let broken: Vec<Tp> = lock(&ctx.parts)
            .iter()
            .filter(|(_, p)| p.broken)
            .map(|(tp, _)| tp.clone())
            .collect();
        for tp in broken {
            lock(&ctx.parts).remove(&tp);
            lock(&ctx.assigned).push(tp.clone());
            self.retry_at
                .insert(tp, Instant::now() + Duration::from_secs(1));
        }
        let todo: Vec<Tp> = lock(&ctx.assigned).clone();
        for tp in todo {
            if self.retry_at.get(&tp).is_some_and(|t| Instant::now() < *t) {
                continue;
            }
            let reinit = self.retry_at.remove(&tp).is_some();
            match self.init(consumer, &tp, reinit) {
                Ok(part) => {
                    let mut assigned = lock(&ctx.assigned);
                    // Revoked while it was being initialised: drop it.
                    if assigned.contains(&tp) {
                        assigned.retain(|a| *a != tp);
                        lock(&ctx.parts).insert(tp, part);
                    }
                }
                Err(e) => {
                    tracing::warn!(topic = %tp.0, partition = tp.1, error = %e,
                        "initialising an automations partition failed; retrying in 5 s");
                    self.retry_at
                        .insert(tp, Instant::now() + Duration::from_secs(5));
                }
            }
        }
    }

    /// Fence the predecessor, read the committed offset, rebuild the state.
    fn init(&self, consumer: &BaseConsumer<Ctx>, tp: &Tp, reinit: bool) -> anyhow::Result<Part> {
        let kind = self
            .s
            .kind_of(&tp.0)
            .ok_or_else(|| anyhow::anyhow!("{} is not a topic the engine reads", tp.0))?;
        let started = Instant::now();
        let producer: TxProducer = crate::kafka::producer_config(&self.s.kafka)
            .set(
                "transactional.id",
                format!("switchyard-automations.{}.{}.{}", self.s.group, tp.0, tp.1),
            )
            .set(
                "transaction.timeout.ms",
                self.s.transaction_timeout.as_millis().to_string(),
            )
            .create()?;
        producer.init_transactions(TXN_CALL)?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&tp.0, tp.1);
        let committed = consumer
            .committed_offsets(tpl, TXN_CALL)?
            .elements()
            .first()
            .and_then(|e| match e.offset() {
                Offset::Offset(n) => Some(n),
                _ => None,
            });
        let mut state = PartitionState::default();
        let mut rebuilt = 0u64;
        if let Some(until) = committed.filter(|c| *c > 0) {
            match kind {
                SourceKind::Entities => read_partition(&self.s.kafka, tp, Some(until), |m| {
                    rebuilt += 1;
                    if let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) {
                        let value = m.payload().and_then(|p| serde_json::from_slice(p).ok());
                        state.put_entity(key, value, m.payload().map_or(0, <[u8]>::len));
                    }
                })?,
                SourceKind::Runs => {
                    let mut updates = Vec::new();
                    read_partition(&self.s.kafka, tp, Some(until), |m| {
                        rebuilt += 1;
                        updates.extend(m.payload().map(<[u8]>::to_vec));
                    })?;
                    for bytes in updates {
                        if let Some(u) = self.handle.block_on(self.codec.decode_update(&bytes)) {
                            state.apply_run(&u);
                        }
                    }
                }
                SourceKind::Changes => {}
            }
        }
        let mut timers = 0;
        if kind != SourceKind::Runs {
            let ttp = (self.s.timers_topic.clone(), tp.1);
            read_partition(&self.s.kafka, &ttp, None, |m| {
                let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                    return;
                };
                match m
                    .payload()
                    .and_then(|p| serde_json::from_slice::<Value>(p).ok())
                {
                    Some(v) => {
                        if let Some((source, t)) = Timer::from_json(&v) {
                            if source == tp.0 {
                                state.put_timer(key.to_owned(), t);
                            }
                        }
                    }
                    None => {
                        state.remove_timer(key);
                    }
                }
            })?;
            timers = state.due.len();
        }
        if reinit {
            let at = committed.map_or(Offset::Beginning, Offset::Offset);
            if let Err(e) = consumer.seek(&tp.0, tp.1, at, Duration::from_secs(10)) {
                anyhow::bail!("seeking back to the committed offset {at:?}: {e}");
            }
        }
        tracing::info!(topic = %tp.0, partition = tp.1, committed = ?committed, rebuilt,
            pending_timers = timers, state_bytes = state.bytes, took_ms = started.elapsed().as_millis() as u64,
            "automations partition ready");
        Ok(Part {
            kind,
            producer,
            state,
            committed,
            next: None,
            batch: Vec::new(),
            pending: 0,
            since: None,
            stopped: false,
            broken: false,
        })
    }

    fn on_record<M: Message>(&mut self, consumer: &BaseConsumer<Ctx>, m: &M) {
        let tp = (m.topic().to_owned(), m.partition());
        let mut parts = lock(&consumer.context().parts);
        let Some(part) = parts.get_mut(&tp) else {
            return; // not (yet, or any more) ours: the owner reads it
        };
        if part.stopped || part.broken || part.committed.is_some_and(|c| m.offset() < c) {
            return;
        }
        if part.state.bytes > self.s.max_state_bytes {
            part.stopped = true;
            metrics::get().automation_stopped_partitions.inc();
            tracing::error!(topic = %tp.0, partition = tp.1, state_bytes = part.state.bytes,
                max = self.s.max_state_bytes,
                "automations state over automations.max_state_bytes: this partition stops here \
                 (nothing past it is committed or lost); add members or raise the bound");
            let _ = consumer.pause(&single(&tp));
            return;
        }
        let source = format!("{}/{}/{}", tp.0, tp.1, m.offset());
        let at = m
            .timestamp()
            .to_millis()
            .map_or_else(crate::model::now_rfc3339, rfc3339_ms);
        let header = |name: &str| {
            m.headers().and_then(|hs| {
                hs.iter()
                    .find(|h| h.key == name)
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            })
        };
        let change = match part.kind {
            SourceKind::Entities => match m.key().map(std::str::from_utf8) {
                Some(Ok(key)) => {
                    let value = match m.payload().map(serde_json::from_slice::<Value>) {
                        None => Ok(None),
                        Some(Ok(v)) => Ok(Some(v)),
                        Some(Err(e)) => Err(format!("the entity is not JSON: {e}")),
                    };
                    match value {
                        Ok(after) => {
                            let size = m.payload().map_or(0, <[u8]>::len);
                            let before = part.state.put_entity(key, after.clone(), size);
                            let by = header("switchyard-run-id");
                            Ok(event::entity_change(
                                key,
                                before.as_ref(),
                                after.as_ref(),
                                &at,
                                by.as_deref(),
                            ))
                        }
                        Err(e) => Err(e),
                    }
                }
                _ => Err("the record key is not a `blueprint/identifier` text".into()),
            },
            SourceKind::Runs => {
                let bytes = m.payload().unwrap_or_default();
                match self.handle.block_on(self.codec.decode_update(bytes)) {
                    Some(u) => Ok(part.state.apply_run(&u)),
                    None => Err("not a run update".into()),
                }
            }
            SourceKind::Changes => serde_json::from_slice::<Value>(m.payload().unwrap_or_default())
                .map_err(|e| format!("not JSON: {e}"))
                .and_then(|v| event::changelog_change(&v))
                .map(Some),
        };
        part.next = Some(m.offset() + 1);
        part.pending += 1;
        part.since.get_or_insert_with(Instant::now);
        let ev = match change {
            Ok(Some(ev)) => ev,
            Ok(None) => return,
            Err(why) => {
                metrics::get()
                    .automation_bad_records
                    .with_label_values(&[source_label(part.kind)])
                    .inc();
                tracing::warn!(source = %source, problem = %why, "change not evaluated");
                return;
            }
        };
        if !ev.run {
            self.arm_timers(part, &tp, &ev);
        }
        metrics::get()
            .automation_changes
            .with_label_values(&[source_label(part.kind)])
            .inc();
        let defs = self.defs.get();
        let candidates: Vec<_> = defs.iter().filter(|a| ev.matches(a)).cloned().collect();
        if candidates.is_empty() {
            return;
        }
        let verdicts = self
            .handle
            .block_on(self.evaluator.evaluate(&candidates, &ev));
        for (a, verdict) in verdicts {
            self.settle(part, &a, verdict, &ev, &source);
        }
    }

    fn settle(
        &self,
        part: &mut Part,
        a: &super::definition::Automation,
        verdict: Verdict,
        ev: &ChangeEvent,
        source: &str,
    ) {
        match verdict {
            Verdict::Skip => {}
            Verdict::Error(why) => {
                metrics::get()
                    .automation_condition_errors
                    .with_label_values(&[&a.identifier])
                    .inc();
                tracing::warn!(automation = %a.identifier, source = %source, error = %why,
                    "automation condition in error; not fired");
            }
            Verdict::Fire => {
                if let Some(out) = self.emit(a, ev, source) {
                    part.batch.push(out);
                }
            }
        }
    }

    /// The trigger record of a fire, or `None` when refused (hops) or unencodable.
    fn emit(
        &self,
        a: &super::definition::Automation,
        ev: &ChangeEvent,
        source: &str,
    ) -> Option<Out> {
        let hops = ev.hops + 1;
        if hops > self.s.max_hops {
            metrics::get()
                .automation_hops_refused
                .with_label_values(&[&a.identifier])
                .inc();
            tracing::warn!(automation = %a.identifier, source = %source, hops, max = self.s.max_hops,
                "emission refused: the chain of automations is longer than automations.max_hops");
            return None;
        }
        let run_id = event::run_id(&a.identifier, source, hops);
        let trigger = event::trigger_event(a, ev, &run_id, &crate::model::now_rfc3339());
        let value = if self.s.triggers_avro {
            match self.handle.block_on(self.codec.encode_trigger(&trigger)) {
                Ok(v) => v,
                Err(e) => {
                    metrics::get()
                        .automation_condition_errors
                        .with_label_values(&[&a.identifier])
                        .inc();
                    tracing::error!(automation = %a.identifier, error = %e,
                        "the emitted trigger does not encode as Avro; not fired");
                    return None;
                }
            }
        } else {
            serde_json::to_vec(&trigger).expect("JSON values always serialize")
        };
        let key = ev.ordering_key.clone().into_bytes();
        let mut headers = vec![(
            event::H_AUTOMATION.to_owned(),
            a.identifier.clone().into_bytes(),
        )];
        if let Some(k) = &self.s.mac_key {
            let mac = event::mac(k, &a.identifier, &key, &value);
            headers.push((event::H_AUTOMATION_MAC.to_owned(), mac.into_bytes()));
        }
        metrics::get()
            .automation_fires
            .with_label_values(&[&a.identifier])
            .inc();
        tracing::info!(automation = %a.identifier, run_id = %run_id, source = %source, hops,
            "automation fired");
        Some(Out {
            topic: self.s.triggers_topic.clone(),
            partition: None,
            key,
            value: Some(value),
            headers,
        })
    }

    /// Arm, move or cancel the timers of this entity's automations.
    fn arm_timers(&self, part: &mut Part, tp: &Tp, ev: &ChangeEvent) {
        let Some(blueprint) = &ev.scope else { return };
        let defs = self.defs.get();
        let after = ev.object.pointer("/diff/after").filter(|v| !v.is_null());
        for a in defs.timers_on(blueprint) {
            let prop = a.property.as_deref().unwrap_or_default();
            let key = Timer::record_key(&tp.0, &a.identifier, &ev.ordering_key, prop);
            let due = after
                .and_then(|e| e.pointer(&format!("/properties/{}", pointer_escape(prop))))
                .and_then(Value::as_str)
                .and_then(|text| parse_time_ms(text).map(|ms| (text.to_owned(), ms)));
            let existing = part.state.timers.get(&key).map(|t| t.due.clone());
            match (due, existing) {
                (None, None) => {}
                (None, Some(_)) => {
                    part.state.remove_timer(&key);
                    part.batch.push(self.timer_out(tp.1, &key, None));
                }
                (Some((text, _)), Some(old)) if old == text => {}
                (Some((text, ms)), _) => {
                    let t = Timer {
                        automation: a.identifier.clone(),
                        entity_key: ev.ordering_key.clone(),
                        property: prop.to_owned(),
                        due: text,
                        due_ms: ms,
                        fired: false,
                        entity: after.cloned().unwrap_or_default(),
                    };
                    part.batch
                        .push(self.timer_out(tp.1, &key, Some(t.to_json(&tp.0))));
                    part.state.put_timer(key, t);
                }
            }
        }
    }

    fn timer_out(&self, partition: i32, key: &str, value: Option<Value>) -> Out {
        Out {
            topic: self.s.timers_topic.clone(),
            partition: Some(partition),
            key: key.as_bytes().to_vec(),
            value: value.map(|v| v.to_string().into_bytes()),
            headers: Vec::new(),
        }
    }

    /// Fire every timer that is due, once: the fire and the timer's `fired` mark are in
    /// the same transaction.
    fn fire_timers(&mut self, consumer: &BaseConsumer<Ctx>) {
        let mut parts = lock(&consumer.context().parts);
        let now = now_ms();
        let defs = self.defs.get();
        for (tp, part) in parts.iter_mut() {
            if part.stopped || part.broken {
                continue;
            }
            for key in part.state.due_now(now) {
                let Some(mut t) = part.state.timers.get(&key).cloned() else {
                    continue;
                };
                part.since.get_or_insert_with(Instant::now);
                let automation = defs.get(&t.automation).filter(|a| {
                    a.publish
                        && a.event == EventType::TimerPropertyExpired
                        && a.property.as_deref() == Some(t.property.as_str())
                });
                let Some(a) = automation.cloned() else {
                    // Its automation is gone or changed: the timer goes too.
                    part.state.remove_timer(&key);
                    part.batch.push(self.timer_out(tp.1, &key, None));
                    continue;
                };
                let entity = part
                    .state
                    .entities
                    .get(&t.entity_key)
                    .cloned()
                    .unwrap_or_else(|| t.entity.clone());
                let when = crate::model::now_rfc3339();
                if let Some(ev) =
                    event::timer_change(&t.entity_key, Some(&entity), &t.property, &t.due, &when)
                {
                    metrics::get()
                        .automation_changes
                        .with_label_values(&["timer"])
                        .inc();
                    let source = format!("{}/{}/{}", self.s.timers_topic, key, t.due);
                    let verdicts = self
                        .handle
                        .block_on(self.evaluator.evaluate(std::slice::from_ref(&a), &ev));
                    for (a, verdict) in verdicts {
                        self.settle(part, &a, verdict, &ev, &source);
                    }
                }
                t.fired = true;
                part.batch
                    .push(self.timer_out(tp.1, &key, Some(t.to_json(&tp.0))));
                part.state.put_timer(key, t);
            }
        }
    }

    /// Commit the batches that are due (all of them with `all`).
    fn flush(&mut self, consumer: &BaseConsumer<Ctx>, all: bool) {
        let mut parts = lock(&consumer.context().parts);
        for (tp, part) in parts.iter_mut() {
            let Some(since) = part.since else { continue };
            if part.broken
                || !(all
                    || part.pending >= self.s.max_batch
                    || part.batch.len() >= self.s.max_batch
                    || since.elapsed() >= self.s.flush_interval)
            {
                continue;
            }
            match commit(part, tp, consumer) {
                Ok(()) => {
                    part.committed = part.next.or(part.committed);
                    part.batch.clear();
                    part.pending = 0;
                    part.since = None;
                }
                Err(e) => {
                    metrics::get().automation_transaction_aborts.inc();
                    let fatal = matches!(&e, KafkaError::Transaction(t) if t.is_fatal());
                    tracing::warn!(topic = %tp.0, partition = tp.1, error = %e, fatal,
                        "an automations transaction failed and was aborted; retrying");
                    if fatal {
                        // Fenced, or the producer is unusable: initialise the partition
                        // again (a new owner, if any, has it already and fences us).
                        part.broken = true;
                    } else if let Err(e) = part.producer.abort_transaction(TXN_CALL) {
                        tracing::warn!(error = %e, "aborting the transaction failed; initialising again");
                        part.broken = true;
                    }
                    part.since = Some(Instant::now());
                }
            }
        }
    }

    fn export(&self, consumer: &BaseConsumer<Ctx>) {
        let parts = lock(&consumer.context().parts);
        let now = now_ms();
        let m = metrics::get();
        let pending: usize = parts.values().map(|p| p.state.due.len()).sum();
        let oldest = parts
            .values()
            .filter_map(|p| p.state.next_due())
            .min()
            .map_or(0, |d| (now - d).max(0) / 1000);
        let bytes: usize = parts.values().map(|p| p.state.bytes).sum();
        m.automation_timers_pending.set(pending as i64);
        m.automation_timer_overdue_seconds.set(oldest);
        m.automation_state_bytes.set(bytes as i64);
        m.automation_partitions.set(parts.len() as i64);
    }
}

/// One transaction: the batch, the timer records and the next offset.
fn commit(part: &mut Part, tp: &Tp, consumer: &BaseConsumer<Ctx>) -> Result<(), KafkaError> {
    let p = &part.producer;
    p.begin_transaction()?;
    for out in &part.batch {
        let mut headers = OwnedHeaders::new();
        for (k, v) in &out.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_slice()),
            });
        }
        let mut record = BaseRecord::<[u8], [u8]>::to(&out.topic)
            .key(&out.key)
            .headers(headers);
        if let Some(v) = &out.value {
            record = record.payload(v);
        }
        if let Some(n) = out.partition {
            record = record.partition(n);
        }
        let mut record = record;
        let deadline = Instant::now() + TXN_CALL;
        loop {
            match p.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(e), r))
                    if e == rdkafka::types::RDKafkaErrorCode::QueueFull
                        && Instant::now() < deadline =>
                {
                    record = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(e),
            }
        }
    }
    if let Some(next) = part.next {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&tp.0, tp.1, Offset::Offset(next))?;
        let meta = consumer.group_metadata().ok_or(KafkaError::ConsumerCommit(
            rdkafka::types::RDKafkaErrorCode::State,
        ))?;
        p.send_offsets_to_transaction(&tpl, &meta, TXN_CALL)?;
        p.commit_transaction(TXN_CALL)?;
        // The same offset once more, outside the transaction, for brokers that answer
        // TxnOffsetCommit without storing it (librdkafka's mock cluster). No poll ran
        // since the commit, so the partition is still ours: the group moves a partition
        // only after its owner has given it up in a poll, or once the owner has left the
        // group, which refuses this commit.
        if let Err(e) = consumer.commit(&tpl, rdkafka::consumer::CommitMode::Sync) {
            tracing::debug!(error = %e, "the plain commit after the transaction failed");
        }
        return Ok(());
    }
    p.commit_transaction(TXN_CALL)
}

/// Read `tp` from its start, up to (not including) `until`, or to its end.
fn read_partition(
    kafka: &KafkaConfig,
    tp: &Tp,
    until: Option<i64>,
    mut f: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) -> anyhow::Result<()> {
    let mut c = crate::kafka::consumer_config(kafka);
    c.set(
        "group.id",
        format!("{}.automations-rebuild", kafka.group_id),
    )
    .set("enable.auto.commit", "false")
    .set("enable.partition.eof", "true")
    .set("isolation.level", "read_committed")
    .set("auto.offset.reset", "earliest");
    let reader: BaseConsumer = c.create()?;
    let (low, high) = match reader.fetch_watermarks(&tp.0, tp.1, TXN_CALL) {
        Ok(w) => w,
        // A timers partition that does not exist yet holds no timers.
        Err(KafkaError::MetadataFetch(_)) if until.is_none() => return Ok(()),
        Err(e) => {
            return Err(anyhow::anyhow!(
                "reading the watermarks of {}/{}: {e}",
                tp.0,
                tp.1
            ))
        }
    };
    let end = until.map_or(high, |u| u.min(high));
    if end <= low {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&tp.0, tp.1, Offset::Beginning)?;
    reader.assign(&tpl)?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "rebuilding from {}/{} took over 10 minutes",
            tp.0,
            tp.1
        );
        match reader.poll(Duration::from_millis(500)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(_))) => return Ok(()),
            Some(Err(e)) => anyhow::bail!("reading {}/{}: {e}", tp.0, tp.1),
            Some(Ok(m)) => {
                if m.offset() >= end {
                    return Ok(());
                }
                f(&m);
                if m.offset() + 1 >= end {
                    return Ok(());
                }
            }
        }
    }
}

fn single(tp: &Tp) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&tp.0, tp.1);
    tpl
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

fn rfc3339_ms(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&fmt).unwrap_or_default()
}

fn source_label(kind: SourceKind) -> &'static str {
    match kind {
        SourceKind::Entities => "entity",
        SourceKind::Runs => "run",
        SourceKind::Changes => "changes",
    }
}

/// A JSON pointer segment (`~` → `~0`, `/` → `~1`).
fn pointer_escape(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}
