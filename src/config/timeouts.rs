//! `[run_timeout]`: how long a run may stay IN_PROGRESS after its dispatch (an async
//! WEBHOOK, KAFKA or AZURE_DEVOPS run, a followed GitHub or GitLab run). Past it the run
//! fails with "timed out after …", unless it finished meanwhile (see `crate::watch`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RunTimeoutConfig {
    /// Per backend; unset: no limit.
    #[serde(with = "humantime_serde")]
    pub webhook: Option<Duration>,
    #[serde(with = "humantime_serde")]
    pub kafka: Option<Duration>,
    #[serde(with = "humantime_serde")]
    pub azure_devops: Option<Duration>,
    #[serde(with = "humantime_serde")]
    pub github: Option<Duration>,
    #[serde(with = "humantime_serde")]
    pub gitlab: Option<Duration>,
    #[serde(with = "humantime_serde")]
    pub upsert_entity: Option<Duration>,
    /// Per action identifier; wins over the backend's.
    pub actions: BTreeMap<String, humantime_serde::Serde<Duration>>,
}

impl RunTimeoutConfig {
    /// The timeout of a run of `action` on `backend` (a backend type, `WEBHOOK`).
    pub fn for_run(&self, backend: &str, action: Option<&str>) -> Option<Duration> {
        if let Some(d) = action.and_then(|a| self.actions.get(a)) {
            return Some(**d);
        }
        match backend {
            "WEBHOOK" => self.webhook,
            "KAFKA" => self.kafka,
            "AZURE_DEVOPS" => self.azure_devops,
            "GITHUB" => self.github,
            "GITLAB" => self.gitlab,
            "UPSERT_ENTITY" => self.upsert_entity,
            _ => None,
        }
    }

    /// Whether any timeout is set.
    pub fn any(&self) -> bool {
        !self.actions.is_empty()
            || [
                self.webhook,
                self.kafka,
                self.azure_devops,
                self.github,
                self.gitlab,
                self.upsert_entity,
            ]
            .iter()
            .any(Option::is_some)
    }

    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        for (name, d) in [
            ("webhook", self.webhook),
            ("kafka", self.kafka),
            ("azure_devops", self.azure_devops),
            ("github", self.github),
            ("gitlab", self.gitlab),
            ("upsert_entity", self.upsert_entity),
        ] {
            if d.is_some_and(|d| d.is_zero()) {
                p.push(format!("run_timeout.{name}: must be greater than 0"));
            }
        }
        for (action, d) in &self.actions {
            if d.is_zero() {
                p.push(format!(
                    "run_timeout.actions.{action}: must be greater than 0"
                ));
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_actions_timeout_wins_over_its_backends() {
        let t: RunTimeoutConfig =
            toml::from_str("webhook = \"1h\"\ngitlab = \"6h\"\n[actions]\ndeploy = \"30m\"\n")
                .unwrap();
        assert_eq!(
            t.for_run("WEBHOOK", Some("deploy")),
            Some(Duration::from_secs(1800))
        );
        assert_eq!(
            t.for_run("WEBHOOK", Some("other")),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            t.for_run("GITLAB", None),
            Some(Duration::from_secs(6 * 3600))
        );
        assert_eq!(t.for_run("KAFKA", None), None);
        assert!(t.any());
        assert!(!RunTimeoutConfig::default().any());
        let zero: RunTimeoutConfig = toml::from_str("kafka = \"0s\"").unwrap();
        assert_eq!(
            zero.problems(),
            ["run_timeout.kafka: must be greater than 0"]
        );
    }
}
