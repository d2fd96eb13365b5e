//! The change events automations evaluate (Port's automation event object), how they are
//! built from entity records, run updates and change-log records, and the trigger event
//! a fire emits.

use serde_json::{json, Map, Value};

use super::definition::{Automation, EventType};
use crate::model::{RunUpdate, UpdateKind};

/// What happened to a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Create,
    Update,
    Delete,
    /// A timer property passed (entity timers only).
    TimerExpired,
}

impl Change {
    fn word(self) -> &'static str {
        match self {
            Change::Create => "CREATE",
            Change::Update => "UPDATE",
            Change::Delete => "DELETE",
            Change::TimerExpired => "TIMER_PROPERTY_EXPIRED",
        }
    }
}

/// One change, ready for evaluation.
#[derive(Debug, Clone)]
pub struct ChangeEvent {
    pub change: Change,
    /// `entity` or `run`.
    pub run: bool,
    /// Blueprint (entities) or action identifier (runs).
    pub scope: Option<String>,
    /// `propertyIdentifier` of a timer.
    pub property: Option<String>,
    /// The event object automations see (`.diff`, `.context`, `.trigger`, …).
    pub object: Value,
    /// Hops of the chain this change belongs to (0: not caused by an automation).
    pub hops: u32,
    /// Ordering key of emitted triggers (the entity's key, or the run id).
    pub ordering_key: String,
    /// The entity, for the emitted trigger's `entity` field.
    pub entity: Option<Value>,
}

impl ChangeEvent {
    /// Whether `a` listens to this change (type, blueprint or action, property).
    pub fn matches(&self, a: &Automation) -> bool {
        if !a.publish {
            return false;
        }
        let kind_ok = match (a.event, self.run, self.change) {
            (EventType::EntityCreated, false, Change::Create)
            | (EventType::EntityUpdated, false, Change::Update)
            | (EventType::EntityDeleted, false, Change::Delete)
            | (
                EventType::AnyEntityChange,
                false,
                Change::Create | Change::Update | Change::Delete,
            )
            | (EventType::RunCreated, true, Change::Create)
            | (EventType::RunUpdated, true, Change::Update)
            | (EventType::AnyRunChange, true, Change::Create | Change::Update) => true,
            (EventType::TimerPropertyExpired, false, Change::TimerExpired) => {
                a.property == self.property
            }
            _ => false,
        };
        let scope = if self.run { &a.action } else { &a.blueprint };
        kind_ok && scope.is_some() && *scope == self.scope
    }
}

/// `at`: RFC 3339 time of the source record.
fn trigger_of(origin: &str, at: &str, by: Value) -> Value {
    json!({"by": by, "origin": origin, "at": at})
}

/// An entity change from the entities topic (key `blueprint/identifier`): `None` when
/// nothing changed (an upsert of the same value) or the key is not an entity key.
pub fn entity_change(
    key: &str,
    before: Option<&Value>,
    after: Option<&Value>,
    at: &str,
    caused_by: Option<&str>,
) -> Option<ChangeEvent> {
    let (blueprint, identifier) = key.split_once('/')?;
    let change = match (before, after) {
        (None, None) => return None,
        (None, Some(_)) => Change::Create,
        (Some(_), None) => Change::Delete,
        (Some(b), Some(a)) if b == a => return None,
        (Some(_), Some(_)) => Change::Update,
    };
    let by = match caused_by {
        Some(run) => json!({"runId": run}),
        None => json!({}),
    };
    Some(ChangeEvent {
        change,
        run: false,
        scope: Some(blueprint.to_owned()),
        property: None,
        object: json!({
            "action": change.word(),
            "resourceType": "entity",
            "context": {"blueprintIdentifier": blueprint, "entityIdentifier": identifier},
            "diff": {"before": before, "after": after},
            "trigger": trigger_of("KAFKA", at, by),
        }),
        hops: caused_by.map_or(0, hops_of),
        ordering_key: key.to_owned(),
        entity: after
            .or(before)
            .map(|e| with_blueprint(e, blueprint, identifier)),
    })
}

/// The entity as a trigger's `entity` (identifier and blueprint filled in).
fn with_blueprint(e: &Value, blueprint: &str, identifier: &str) -> Value {
    let mut e = e.clone();
    if let Value::Object(m) = &mut e {
        m.entry("identifier").or_insert_with(|| identifier.into());
        m.entry("blueprint").or_insert_with(|| blueprint.into());
    }
    e
}

/// The timer of `property` on an entity came due.
pub fn timer_change(
    key: &str,
    entity: Option<&Value>,
    property: &str,
    due: &str,
    now: &str,
) -> Option<ChangeEvent> {
    let (blueprint, identifier) = key.split_once('/')?;
    Some(ChangeEvent {
        change: Change::TimerExpired,
        run: false,
        scope: Some(blueprint.to_owned()),
        property: Some(property.to_owned()),
        object: json!({
            "action": Change::TimerExpired.word(),
            "resourceType": "entity",
            "context": {"blueprintIdentifier": blueprint, "entityIdentifier": identifier,
                        "propertyIdentifier": property, "dueAt": due},
            "diff": {"before": entity, "after": entity},
            "trigger": trigger_of("TIMER", now, json!({})),
        }),
        hops: 0,
        ordering_key: key.to_owned(),
        entity: entity.map(|e| with_blueprint(e, blueprint, identifier)),
    })
}

/// A run's state as the automations see it (`.diff.before`, `.diff.after`): the run view's
/// fold of the status topic, without log lines.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSnapshot(pub Map<String, Value>);

impl RunSnapshot {
    fn new(u: &RunUpdate) -> Self {
        let mut m = Map::new();
        m.insert("id".into(), u.run_id.clone().into());
        m.insert("status".into(), "IN_PROGRESS".into());
        m.insert("createdAt".into(), u.at.clone().into());
        RunSnapshot(m)
    }

    pub fn terminal(&self) -> bool {
        matches!(
            self.0.get("status").and_then(Value::as_str),
            Some("SUCCESS" | "FAILURE")
        )
    }

    /// Fold `u` in; returns whether the run's state changed (status, label, links,
    /// summary, response; log lines are not a change, as in Port).
    pub fn apply(&mut self, u: &RunUpdate) -> bool {
        let before = self.0.clone();
        let m = &mut self.0;
        for (k, v) in [("action", &u.action), ("backend", &u.backend)] {
            if let (false, Some(v)) = (m.contains_key(k), v) {
                m.insert(k.into(), v.clone().into());
            }
        }
        match u.kind {
            UpdateKind::Status if !self.terminal() => {
                let m = &mut self.0;
                if let Some(s) = u.status {
                    m.insert("status".into(), serde_json::to_value(s).unwrap_or_default());
                    if s.is_terminal() {
                        m.insert("endedAt".into(), u.at.clone().into());
                    }
                }
                for (k, v) in [
                    ("statusLabel", &u.status_label),
                    ("summary", &u.summary),
                    ("externalRunId", &u.external_run_id),
                ] {
                    if let Some(v) = v {
                        m.insert(k.into(), v.clone().into());
                    }
                }
                if let Some(link) = &u.link {
                    m.insert("link".into(), json!(link));
                }
                // A terminal update may carry the response (one record).
                if let Some(r) = &u.response {
                    m.insert("response".into(), r.clone());
                }
            }
            UpdateKind::Response => {
                self.0
                    .insert("response".into(), u.response.clone().unwrap_or_default());
            }
            UpdateKind::Status | UpdateKind::Log => {}
        }
        let changed = self.0 != before;
        if changed {
            self.0.insert("updatedAt".into(), u.at.clone().into());
        }
        changed
    }

    /// About how many bytes this state holds.
    pub fn weight(&self) -> usize {
        64 + Value::Object(self.0.clone()).to_string().len()
    }
}

/// Fold run update `u` into `state` (the run's state so far, `None` before its first
/// update); the change it makes, if any.
pub fn run_change(state: &mut Option<RunSnapshot>, u: &RunUpdate) -> Option<ChangeEvent> {
    let (change, before) = match state {
        None => {
            let mut s = RunSnapshot::new(u);
            s.apply(u);
            *state = Some(s);
            (Change::Create, Value::Null)
        }
        Some(s) => {
            let before = Value::Object(s.0.clone());
            if !s.apply(u) {
                return None;
            }
            (Change::Update, before)
        }
    };
    let after = Value::Object(state.as_ref().expect("set above").0.clone());
    let action = after
        .get("action")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Some(ChangeEvent {
        change,
        run: true,
        scope: action.clone(),
        property: None,
        object: json!({
            "action": change.word(),
            "resourceType": "run",
            "context": {"runId": u.run_id, "actionIdentifier": action},
            "diff": {"before": before, "after": after},
            "trigger": trigger_of("KAFKA", &u.at, json!({"runId": u.run_id})),
        }),
        hops: hops_of(&u.run_id),
        ordering_key: u.run_id.clone(),
        entity: None,
    })
}

/// A record in Port's change-log shape (`{action, resourceType, context, diff, trigger}`).
pub fn changelog_change(v: &Value) -> Result<ChangeEvent, String> {
    let change = match v.get("action").and_then(Value::as_str) {
        Some("CREATE") => Change::Create,
        Some("UPDATE") => Change::Update,
        Some("DELETE") => Change::Delete,
        Some("TIMER_PROPERTY_EXPIRED") => Change::TimerExpired,
        other => {
            return Err(format!(
                "action: expected CREATE, UPDATE, DELETE or TIMER_PROPERTY_EXPIRED, got {}",
                other.map_or("nothing".to_owned(), |s| format!("{s:?}"))
            ))
        }
    };
    let ctx = v.get("context").and_then(Value::as_object);
    let diff = v.get("diff").and_then(Value::as_object);
    let (Some(ctx), Some(diff)) = (ctx, diff) else {
        return Err("context and diff: expected objects".into());
    };
    let before = diff.get("before").filter(|b| !b.is_null());
    let after = diff.get("after").filter(|a| !a.is_null());
    let str_of = |k: &str| ctx.get(k).and_then(Value::as_str).map(str::to_owned);
    let trigger = v.get("trigger").cloned().unwrap_or_else(|| json!({}));
    match v.get("resourceType").and_then(Value::as_str) {
        Some("entity") => {
            let blueprint = str_of("blueprint")
                .or_else(|| str_of("blueprintIdentifier"))
                .ok_or("context.blueprint: missing")?;
            let identifier = str_of("entity")
                .or_else(|| str_of("entityIdentifier"))
                .ok_or("context.entity: missing")?;
            let property = str_of("propertyIdentifier");
            if change == Change::TimerExpired && property.is_none() {
                return Err("context.propertyIdentifier: missing (a timer event)".into());
            }
            let mut context =
                json!({"blueprintIdentifier": blueprint, "entityIdentifier": identifier});
            for k in ["propertyIdentifier", "dueAt"] {
                if let Some(v) = ctx.get(k) {
                    context[k] = v.clone();
                }
            }
            Ok(ChangeEvent {
                change,
                run: false,
                scope: Some(blueprint.clone()),
                property,
                object: json!({
                    "action": change.word(),
                    "resourceType": "entity",
                    "context": context,
                    "diff": {"before": before, "after": after},
                    "trigger": trigger,
                }),
                hops: 0,
                ordering_key: format!("{blueprint}/{identifier}"),
                entity: after
                    .or(before)
                    .map(|e| with_blueprint(e, &blueprint, &identifier)),
            })
        }
        Some("run") if change == Change::TimerExpired => {
            Err("action: TIMER_PROPERTY_EXPIRED is an entity event".into())
        }
        Some("run") => {
            let run_id = str_of("runId").ok_or("context.runId: missing")?;
            let action = str_of("action")
                .or_else(|| str_of("actionIdentifier"))
                .or_else(|| {
                    after
                        .or(before)
                        .and_then(|r| r.pointer("/action/identifier"))
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                });
            Ok(ChangeEvent {
                change,
                run: true,
                scope: action.clone(),
                property: None,
                object: json!({
                    "action": change.word(),
                    "resourceType": "run",
                    "context": {"runId": run_id, "actionIdentifier": action},
                    "diff": {"before": before, "after": after},
                    "trigger": trigger,
                }),
                hops: hops_of(&run_id),
                ordering_key: run_id,
                entity: None,
            })
        }
        other => Err(format!(
            "resourceType: expected \"entity\" or \"run\", got {}",
            other.map_or("nothing".to_owned(), |s| format!("{s:?}"))
        )),
    }
}

/// Prefix of the run ids automations emit: `auto-{hops}-{hash}`.
const RUN_PREFIX: &str = "auto-";

/// The run id of `automation` fired by the record at `topic/partition/offset` (or a
/// timer): the same inputs give the same id, so any reader can deduplicate.
pub fn run_id(automation: &str, source: &str, hops: u32) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(automation.as_bytes());
    h.update([0]);
    h.update(source.as_bytes());
    let digest = h.finalize();
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("{RUN_PREFIX}{hops}-{hex}")
}

/// The hop count a run id carries (0 for runs automations did not emit).
pub fn hops_of(run_id: &str) -> u32 {
    run_id
        .strip_prefix(RUN_PREFIX)
        .and_then(|rest| rest.split_once('-'))
        .and_then(|(h, _)| h.parse().ok())
        .unwrap_or(0)
}

/// The trigger event a fire of `a` on `ev` emits (DESIGN's format). Templates in the
/// `invocationMethod` render in the normal pipeline against it: `.event` is the change.
pub fn trigger_event(a: &Automation, ev: &ChangeEvent, run_id: &str, now: &str) -> Value {
    let mut action = Map::new();
    action.insert("identifier".into(), a.identifier.clone().into());
    if let Some(bp) = &a.blueprint {
        action.insert("blueprint".into(), bp.clone().into());
    }
    action.insert(
        "invocationMethod".into(),
        Value::Object(a.invocation_method.clone()),
    );
    json!({
        "run": {"id": run_id},
        "action": action,
        "trigger": {"by": {"automation": {"identifier": a.identifier, "title": a.title}},
                    "origin": "AUTOMATION", "at": now, "hops": ev.hops + 1},
        "inputs": {},
        "entity": ev.entity,
        "event": ev.object,
        "orderingKey": ev.ordering_key,
    })
}

/// Header naming the automation that emitted a trigger.
pub const H_AUTOMATION: &str = "switchyard-automation";
/// Header with the MAC of an emitted trigger (`dlq.replay_key`): proof that switchyard's
/// engine wrote it from an operator's definition.
pub const H_AUTOMATION_MAC: &str = "switchyard-automation-mac";

/// The MAC of an emitted trigger.
pub fn mac(key: &[u8], automation: &str, record_key: &[u8], value: &[u8]) -> String {
    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    use sha2::{Digest, Sha256};
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any size");
    mac.update(b"switchyard-automation/v1\n");
    mac.update(automation.as_bytes());
    mac.update(b"\n");
    mac.update(&Sha256::digest(record_key));
    mac.update(&Sha256::digest(value));
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Whether a trigger record carries a valid automation MAC under `key`.
pub fn verified(
    key: Option<&[u8]>,
    headers: &[(String, Option<Vec<u8>>)],
    record_key: Option<&[u8]>,
    value: Option<&[u8]>,
) -> bool {
    use subtle::ConstantTimeEq as _;
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
    };
    let (Some(key), Some(id), Some(given)) = (key, header(H_AUTOMATION), header(H_AUTOMATION_MAC))
    else {
        return false;
    };
    let want = mac(
        key,
        &String::from_utf8_lossy(id),
        record_key.unwrap_or_default(),
        value.unwrap_or_default(),
    );
    bool::from(want.as_bytes().ct_eq(given))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RunStatus;

    #[test]
    fn entity_diffs_for_create_update_delete() {
        let a = json!({"identifier": "c", "properties": {"status": "Healthy"}});
        let b = json!({"identifier": "c", "properties": {"status": "Unhealthy"}});
        let c = entity_change("service/c", None, Some(&a), "t", None).unwrap();
        assert_eq!(c.change, Change::Create);
        assert_eq!(c.object["diff"]["before"], Value::Null);
        assert_eq!(c.object["diff"]["after"], a);
        assert_eq!(c.object["context"]["entityIdentifier"], "c");
        let u = entity_change("service/c", Some(&a), Some(&b), "t", None).unwrap();
        assert_eq!(u.change, Change::Update);
        assert_eq!(u.object["diff"]["before"], a);
        assert_eq!(u.object["diff"]["after"], b);
        let d = entity_change("service/c", Some(&b), None, "t", None).unwrap();
        assert_eq!(d.change, Change::Delete);
        assert_eq!(d.object["diff"]["after"], Value::Null);
        assert!(entity_change("service/c", Some(&a), Some(&a), "t", None).is_none());
        assert!(entity_change("no-slash", None, Some(&a), "t", None).is_none());
    }

    #[test]
    fn runs_fire_created_then_updated_on_state_changes_only() {
        let mut state = None;
        let mut u = RunUpdate::status("r1", RunStatus::InProgress);
        u.action = Some("deploy".into());
        u.at = "t1".into();
        let c = run_change(&mut state, &u).unwrap();
        assert_eq!(c.change, Change::Create);
        assert_eq!(c.scope.as_deref(), Some("deploy"));
        let mut log = RunUpdate::new("r1", UpdateKind::Log);
        log.message = Some("hello".into());
        assert!(run_change(&mut state, &log).is_none());
        let mut done = RunUpdate::status("r1", RunStatus::Success);
        done.at = "t2".into();
        let c = run_change(&mut state, &done).unwrap();
        assert_eq!(c.change, Change::Update);
        assert_eq!(c.object["diff"]["before"]["status"], "IN_PROGRESS");
        assert_eq!(c.object["diff"]["after"]["status"], "SUCCESS");
        // A status after the terminal one changes nothing (Port's rule).
        let late = RunUpdate::status("r1", RunStatus::Failure);
        assert!(run_change(&mut state, &late).is_none());
    }

    #[test]
    fn run_ids_are_deterministic_and_carry_hops() {
        let a = run_id("auto1", "entities/0/42", 2);
        assert_eq!(a, run_id("auto1", "entities/0/42", 2));
        assert_ne!(a, run_id("auto1", "entities/0/43", 2));
        assert_eq!(hops_of(&a), 2);
        assert_eq!(hops_of("r_8f2c"), 0);
        assert_eq!(hops_of("auto-x-y"), 0);
    }

    #[test]
    fn the_mac_covers_key_value_and_automation() {
        let key = b"0123456789abcdef";
        let m = mac(key, "a", b"k", b"v");
        let headers = vec![
            (H_AUTOMATION.to_owned(), Some(b"a".to_vec())),
            (H_AUTOMATION_MAC.to_owned(), Some(m.into_bytes())),
        ];
        assert!(verified(Some(key), &headers, Some(b"k"), Some(b"v")));
        assert!(!verified(Some(key), &headers, Some(b"k"), Some(b"w")));
        assert!(!verified(None, &headers, Some(b"k"), Some(b"v")));
        assert!(!verified(
            Some(b"another key 1234"),
            &headers,
            Some(b"k"),
            Some(b"v")
        ));
    }

    #[test]
    fn changelog_records_in_ports_shape() {
        let v = json!({"action": "UPDATE", "resourceType": "entity",
            "context": {"entity": "c", "blueprint": "service"},
            "diff": {"before": {"properties": {"s": 1}}, "after": {"properties": {"s": 2}}},
            "trigger": {"by": {"userId": "u"}, "origin": "UI", "at": "t"}});
        let c = changelog_change(&v).unwrap();
        assert_eq!(c.change, Change::Update);
        assert_eq!(c.scope.as_deref(), Some("service"));
        assert_eq!(c.object["context"]["entityIdentifier"], "c");
        assert_eq!(c.object["trigger"]["origin"], "UI");
        let bad = changelog_change(&json!({"action": "MOVE"})).unwrap_err();
        assert!(bad.contains("action:"), "{bad}");
    }
}
