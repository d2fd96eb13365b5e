//! The state of one assigned source partition: the previous value of each entity key, the
//! folded state of each run, and the partition's timers. Processing a record (or a due
//! timer) updates the state and returns what the partition's next transaction writes.

use std::collections::{BTreeSet, HashMap, VecDeque};

use serde_json::{json, Value};

use super::event::{ChangeEvent, RunSnapshot};

/// What a source partition carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// The compacted entities topic (key `blueprint/identifier`).
    Entities,
    /// The status topic (run updates).
    Runs,
    /// Records in Port's change-log shape.
    Changes,
}

/// One record the partition's transaction writes.
#[derive(Debug, Clone)]
pub struct Out {
    pub topic: String,
    /// Explicit partition (timers live in the partition of their entity).
    pub partition: Option<i32>,
    pub key: Vec<u8>,
    /// `None`: a tombstone.
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// A timer of (automation, entity, property).
#[derive(Debug, Clone)]
pub struct Timer {
    pub automation: String,
    pub entity_key: String,
    pub property: String,
    /// Due time as written in the entity, and in ms since the epoch.
    pub due: String,
    pub due_ms: i64,
    pub fired: bool,
    /// The entity when the timer was armed (the context of a fire when the partition
    /// holds no entity state: change-log sources).
    pub entity: Value,
}

impl Timer {
    pub fn record_key(
        source_topic: &str,
        automation: &str,
        entity: &str,
        property: &str,
    ) -> String {
        json!([source_topic, automation, entity, property]).to_string()
    }

    pub fn to_json(&self, source_topic: &str) -> Value {
        json!({"sourceTopic": source_topic, "automation": self.automation,
               "entity": self.entity_key, "property": self.property, "due": self.due,
               "fired": self.fired, "entityValue": self.entity})
    }

    pub fn from_json(v: &Value) -> Option<(String, Timer)> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let due = s("due")?;
        Some((
            s("sourceTopic")?,
            Timer {
                automation: s("automation")?,
                entity_key: s("entity")?,
                property: s("property")?,
                due_ms: parse_time_ms(&due)?,
                due,
                fired: v.get("fired").and_then(Value::as_bool).unwrap_or(false),
                entity: v.get("entityValue").cloned().unwrap_or_default(),
            },
        ))
    }
}

/// Milliseconds since the epoch of an RFC 3339 time.
pub fn parse_time_ms(text: &str) -> Option<i64> {
    use time::format_description::well_known::Rfc3339;
    let t = time::OffsetDateTime::parse(text, &Rfc3339).ok()?;
    Some((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// Terminal runs remembered per partition (a later update of one is still an update).
const TERMINAL_RUNS_KEPT: usize = 10_000;

/// Entity and run state of one partition.
#[derive(Default)]
pub struct PartitionState {
    pub entities: HashMap<String, Value>,
    /// JSON size of each entity's record value.
    entity_sizes: HashMap<String, usize>,
    pub runs: HashMap<String, RunSnapshot>,
    /// Terminal runs, oldest first, forgotten past [`TERMINAL_RUNS_KEPT`].
    terminal: VecDeque<String>,
    /// Timers by record key.
    pub timers: HashMap<String, Timer>,
    /// Pending timers by due time.
    pub due: BTreeSet<(i64, String)>,
    /// About how many bytes the state holds.
    pub bytes: usize,
}

impl PartitionState {
    /// Set (or, with `None`, delete) an entity whose record value is `size` bytes of
    /// JSON; returns its previous value. The state's byte count adds the JSON size (a
    /// parsed value takes about 2–4× that in memory).
    pub fn put_entity(&mut self, key: &str, value: Option<Value>, size: usize) -> Option<Value> {
        if let Some(old) = self.entity_sizes.remove(key) {
            self.bytes = self.bytes.saturating_sub(64 + key.len() + old);
        }
        match value {
            Some(v) => {
                self.bytes += 64 + key.len() + size;
                self.entity_sizes.insert(key.to_owned(), size);
                self.entities.insert(key.to_owned(), v)
            }
            None => self.entities.remove(key),
        }
    }

    /// Fold a run update; returns the change it makes.
    pub fn apply_run(&mut self, u: &crate::model::RunUpdate) -> Option<ChangeEvent> {
        let mut state = self.runs.remove(&u.run_id);
        if let Some(s) = &state {
            self.bytes = self.bytes.saturating_sub(s.weight());
        }
        let was_terminal = state.as_ref().is_some_and(RunSnapshot::terminal);
        let change = super::event::run_change(&mut state, u);
        let s = state.expect("run_change always leaves a state");
        let terminal = !was_terminal && s.terminal();
        self.bytes += s.weight();
        self.runs.insert(u.run_id.clone(), s);
        if terminal {
            self.terminal.push_back(u.run_id.clone());
            while self.terminal.len() > TERMINAL_RUNS_KEPT {
                if let Some(old) = self.terminal.pop_front() {
                    if let Some(s) = self.runs.remove(&old) {
                        self.bytes = self.bytes.saturating_sub(s.weight());
                    }
                }
            }
        }
        change
    }

    /// Insert or replace a timer (a fired one stays, so the same due time is not armed
    /// again).
    pub fn put_timer(&mut self, key: String, t: Timer) {
        self.remove_timer(&key);
        self.bytes += 128 + key.len() + t.entity.to_string().len();
        if !t.fired {
            self.due.insert((t.due_ms, key.clone()));
        }
        self.timers.insert(key, t);
    }

    pub fn remove_timer(&mut self, key: &str) -> Option<Timer> {
        let old = self.timers.remove(key)?;
        self.due.remove(&(old.due_ms, key.to_owned()));
        self.bytes = self
            .bytes
            .saturating_sub(128 + key.len() + old.entity.to_string().len());
        Some(old)
    }

    /// The earliest pending timer's due time.
    pub fn next_due(&self) -> Option<i64> {
        self.due.first().map(|(d, _)| *d)
    }

    /// Keys of the timers due at `now_ms`, earliest first.
    pub fn due_now(&self, now_ms: i64) -> Vec<String> {
        self.due
            .iter()
            .take_while(|(d, _)| *d <= now_ms)
            .map(|(_, k)| k.clone())
            .collect()
    }
}
