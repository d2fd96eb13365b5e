//! `[automations]`: the automations engine (see `crate::automations`): where definitions
//! come from, which topics it reads and writes, its group and its bounds.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AutomationsConfig {
    /// Run the engine inside `switchyard run` (`switchyard automations run` runs it alone).
    pub enabled: bool,
    /// A directory of JSON definitions (`*.json`: one automation or an array of them).
    pub dir: Option<String>,
    /// A compacted topic of definitions: key = identifier, value = the definition JSON, a
    /// tombstone deletes it. Both sources may be set; an identifier defined in both is an
    /// error reported at load, and the topic's copy is ignored.
    pub topic: Option<String>,
    /// How often the directory is checked for changes.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    /// The engine's consumer group; empty: `{kafka.group_id}.automations`.
    pub group_id: String,
    /// Entity changes: the compacted entities topic (key `blueprint/identifier`). Empty:
    /// `backends.upsert_entity.topic`.
    pub entities_topic: String,
    /// Changes in Port's change-log shape (`{action, resourceType, context, diff}`), if any.
    pub changes_topic: Option<String>,
    /// Where fires go. Empty: `kafka.triggers_topic`, or in Port mode
    /// `switchyard.automations.triggers` on the output cluster (Port's runs topic is
    /// Port's).
    pub triggers_topic: String,
    /// Read run changes from the status topic (RUN_CREATED, RUN_UPDATED, ANY_RUN_CHANGE).
    pub runs: bool,
    /// Durable timers (compacted; needs at least as many partitions as the entities and
    /// changes topics, which `kafka.create_topics` arranges).
    pub timers_topic: String,
    /// Where the group's first start on a partition begins: `latest` (changes from then
    /// on fire; earlier ones only build state) or `earliest` (every change in the topic
    /// fires, e.g. every existing entity as ENTITY_CREATED).
    pub start_from: StartFrom,
    /// Most hops of a chain of automations (a run fires an automation whose run fires
    /// another …); past it an emission is refused, logged and counted.
    pub max_hops: u32,
    /// Most bytes of entity and run state one member keeps. Past it the partition that
    /// would grow it stops (nothing is committed past the change, nothing is lost) until
    /// members are added or the bound is raised.
    pub max_state_bytes: usize,
    /// Most changes committed in one transaction.
    pub max_batch: usize,
    /// Longest a change waits for its transaction.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// `transaction.timeout.ms` of the engine's producers.
    #[serde(with = "humantime_serde")]
    pub transaction_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartFrom {
    Earliest,
    #[default]
    Latest,
}

impl Default for AutomationsConfig {
    fn default() -> Self {
        AutomationsConfig {
            enabled: false,
            dir: None,
            topic: None,
            reload_interval: Duration::from_secs(5),
            group_id: String::new(),
            entities_topic: String::new(),
            changes_topic: None,
            triggers_topic: String::new(),
            runs: true,
            timers_topic: "switchyard.automations.timers".into(),
            start_from: StartFrom::Latest,
            max_hops: 5,
            max_state_bytes: 256 * 1024 * 1024,
            max_batch: 500,
            flush_interval: Duration::from_millis(100),
            transaction_timeout: Duration::from_secs(60),
        }
    }
}

impl AutomationsConfig {
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.dir.is_none() && self.topic.is_none() {
            p.push(
                "automations: set automations.dir or automations.topic (where the definitions are)"
                    .into(),
            );
        }
        if let Some(dir) = &self.dir {
            if !std::path::Path::new(dir).is_dir() {
                p.push(format!("automations.dir: {dir:?} is not a directory"));
            }
        }
        for (field, name) in [
            ("automations.timers_topic", Some(&self.timers_topic)),
            ("automations.topic", self.topic.as_ref()),
            ("automations.changes_topic", self.changes_topic.as_ref()),
        ] {
            if let Some(Err(e)) = name.map(|n| super::validate::check_topic_name(n)) {
                p.push(format!("{field}: {e}"));
            }
        }
        if !self.triggers_topic.is_empty() {
            if let Err(e) = super::validate::check_topic_name(&self.triggers_topic) {
                p.push(format!("automations.triggers_topic: {e}"));
            }
        }
        if !self.entities_topic.is_empty() {
            if let Err(e) = super::validate::check_topic_name(&self.entities_topic) {
                p.push(format!("automations.entities_topic: {e}"));
            }
        }
        if self.max_batch == 0 {
            p.push("automations.max_batch: must be at least 1".into());
        }
        if self.flush_interval.is_zero() {
            p.push("automations.flush_interval: must be greater than 0".into());
        }
        if self.transaction_timeout < Duration::from_secs(1) {
            p.push("automations.transaction_timeout: must be at least 1s".into());
        }
        if self.reload_interval.is_zero() {
            p.push("automations.reload_interval: must be greater than 0".into());
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn problems_name_the_setting_and_the_way_out() {
        let mut cfg = Config::default();
        cfg.automations.enabled = true;
        let p = cfg.automation_problems().join("\n");
        assert!(
            p.contains("set automations.dir or automations.topic"),
            "{p}"
        );
        cfg.automations.topic = Some("bad topic".into());
        cfg.automations.max_batch = 0;
        let p = cfg.automation_problems().join("\n");
        assert!(
            p.contains("automations.topic: \"bad topic\" contains ' '"),
            "{p}"
        );
        assert!(
            p.contains("automations.max_batch: must be at least 1"),
            "{p}"
        );
        cfg.automations.topic = Some("switchyard.automations".into());
        cfg.automations.max_batch = 500;
        cfg.actions.mode = crate::config::ActionsMode::Registered;
        let p = cfg.automation_problems().join("\n");
        assert!(p.contains("set dlq.replay_key"), "{p}");
        cfg.actions.mode = crate::config::ActionsMode::Inline;
        cfg.port.org_id = Some("org".into());
        let p = cfg.automation_problems().join("\n");
        assert!(p.contains("in Port mode they need [kafka.output]"), "{p}");
        assert_eq!(
            cfg.automations_triggers_topic(),
            "switchyard.automations.triggers"
        );
        cfg.port.org_id = None;
        assert!(
            cfg.automation_problems().is_empty(),
            "{:?}",
            cfg.automation_problems()
        );
        assert_eq!(cfg.automations_triggers_topic(), cfg.kafka.triggers_topic);
        assert_eq!(
            cfg.automations_group(),
            format!("{}.automations", cfg.kafka.group_id)
        );
    }
}
