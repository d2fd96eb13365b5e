//! Processing: a record or a due timer becomes a change, the change is evaluated, and
//! fires and timer records join the partition's batch.

use super::*;

impl Engine {
    pub(super) fn on_record<M: Message>(&mut self, consumer: &BaseConsumer<Ctx>, m: &M) {
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

    pub(super) fn settle(
        &self,
        part: &mut Part,
        a: &crate::automations::definition::Automation,
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
    pub(super) fn emit(
        &self,
        a: &crate::automations::definition::Automation,
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
    pub(super) fn arm_timers(&self, part: &mut Part, tp: &Tp, ev: &ChangeEvent) {
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

    pub(super) fn timer_out(&self, partition: i32, key: &str, value: Option<Value>) -> Out {
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
    pub(super) fn fire_timers(&mut self, consumer: &BaseConsumer<Ctx>) {
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
}
