//! The engine's Kafka I/O: a partition's initialisation (fencing, committed offset,
//! state rebuild, timers), its transactions, and reading a partition from its start.

use super::*;

impl Engine {
    /// Fence the predecessor, read the committed offset, rebuild the state.
    pub(super) fn init(
        &self,
        consumer: &BaseConsumer<Ctx>,
        tp: &Tp,
        reinit: bool,
    ) -> anyhow::Result<Part> {
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
        // The group's first start on this partition with start_from = "latest": the
        // changes so far only build state; their end is committed at once, so a later
        // owner starts from the same place.
        let first_start = committed.is_none() && self.s.start_latest;
        let committed = if first_start {
            let end = end_offset(&self.s.kafka, tp)?;
            start_at(&producer, consumer, tp, end)?;
            tracing::info!(topic = %tp.0, partition = tp.1, offset = end,
                "the group's first start on this partition: changes from here on fire \
                 (automations.start_from = \"latest\"); earlier ones only build state");
            Some(end)
        } else {
            committed
        };
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
        if reinit || first_start {
            let at = committed.map_or(Offset::Beginning, Offset::Offset);
            match consumer.seek(&tp.0, tp.1, at, Duration::from_secs(10)) {
                Ok(()) => {}
                Err(e) if reinit => {
                    anyhow::bail!("seeking back to the committed offset {at:?}: {e}")
                }
                // Records before the start are skipped as they arrive.
                Err(e) => tracing::debug!(error = %e, "seeking to the start offset failed"),
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
}

/// One transaction: the batch, the timer records and the next offset.
pub(super) fn commit(
    part: &mut Part,
    tp: &Tp,
    consumer: &BaseConsumer<Ctx>,
) -> Result<(), KafkaError> {
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

/// The end (high watermark) of `tp`.
pub(super) fn end_offset(kafka: &KafkaConfig, tp: &Tp) -> anyhow::Result<i64> {
    let reader: BaseConsumer = crate::kafka::consumer_config(kafka)
        .set(
            "group.id",
            format!("{}.automations-rebuild", kafka.group_id),
        )
        .create()?;
    let (_, high) = reader
        .fetch_watermarks(&tp.0, tp.1, TXN_CALL)
        .map_err(|e| anyhow::anyhow!("reading the end of {}/{}: {e}", tp.0, tp.1))?;
    Ok(high)
}

/// Commit `offset` for `tp` in a transaction of its own (and once more outside it, as
/// [`commit`] does).
pub(super) fn start_at(
    producer: &TxProducer,
    consumer: &BaseConsumer<Ctx>,
    tp: &Tp,
    offset: i64,
) -> anyhow::Result<()> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&tp.0, tp.1, Offset::Offset(offset))?;
    let meta = consumer
        .group_metadata()
        .ok_or_else(|| anyhow::anyhow!("the consumer has no group metadata yet"))?;
    producer.begin_transaction()?;
    let sent = producer
        .send_offsets_to_transaction(&tpl, &meta, TXN_CALL)
        .and_then(|()| producer.commit_transaction(TXN_CALL));
    if let Err(e) = sent {
        let _ = producer.abort_transaction(TXN_CALL);
        anyhow::bail!("committing the start offset {offset}: {e}");
    }
    let _ = consumer.commit(&tpl, rdkafka::consumer::CommitMode::Sync);
    Ok(())
}

/// Read `tp` from its start, up to (not including) `until`, or to its end.
pub(super) fn read_partition(
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
