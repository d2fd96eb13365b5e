//! Reading a configuration: the TOML file, the Port agent's environment, then
//! `SWITCHYARD_SECTION__FIELD` overrides, then validation.

use std::collections::BTreeMap;
use std::path::Path;

use super::*;

impl Config {
    /// Load `path` (when given; `None` means defaults) and apply environment overrides
    /// from `env`, then validate.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigErrors> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| ConfigErrors(vec![format!("cannot read {}: {e}", p.display())]))?,
            None => String::new(),
        };
        Self::from_toml(&text, env)
    }

    /// Parse TOML text, apply overrides, validate.
    pub fn from_toml(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigErrors> {
        let mut root: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigErrors(vec![format!("TOML syntax: {e}")]))?;
        let env: BTreeMap<String, String> = env.into_iter().collect();
        let mut problems = port::apply_agent_env(&mut root, &env);
        for (name, value) in env {
            // Only `SECTION__FIELD` names are overrides, so that variables such as
            // SWITCHYARD_CONFIG or a secret's SWITCHYARD_TOKEN are not mistaken for one.
            if let Some(path) = name.strip_prefix(ENV_PREFIX).filter(|p| p.contains("__")) {
                if let Err(p) = apply_override(&mut root, path, &value) {
                    problems.push(format!("environment {name}: {p}"));
                }
            }
        }
        port::apply_org_defaults(&mut root);
        if let Ok(dir) = std::env::current_dir() {
            port::discover_mapping(&mut root, &dir);
        }
        let mut unknown = Vec::new();
        let parsed: Result<Config, _> =
            serde_ignored::deserialize(toml::Value::Table(root), |path| {
                unknown.push(path.to_string())
            });
        problems.extend(unknown.into_iter().map(|p| format!("{p}: unknown field")));
        match parsed {
            Ok(cfg) => {
                problems.extend(cfg.problems());
                if problems.is_empty() {
                    Ok(cfg)
                } else {
                    Err(ConfigErrors(problems))
                }
            }
            Err(e) => {
                problems.push(e.to_string().trim().replace('\n', " "));
                Err(ConfigErrors(problems))
            }
        }
    }
}

/// Set `a__b__c` (case-insensitive segments) in `root` to `raw`.
fn apply_override(root: &mut toml::Table, path: &str, raw: &str) -> Result<(), String> {
    let segments: Vec<String> = path.split("__").map(|s| s.to_ascii_lowercase()).collect();
    if segments.iter().any(String::is_empty) {
        return Err("empty path segment".into());
    }
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    set_path(root, &segments, scalar(raw))
}

/// Set `path` (a non-empty list of keys) in `root` to `value`, creating tables on the way.
pub(super) fn set_path(
    root: &mut toml::Table,
    path: &[&str],
    value: toml::Value,
) -> Result<(), String> {
    let (last, parents) = path.split_last().expect("paths are not empty");
    let mut table = root;
    for seg in parents {
        let entry = table
            .entry(seg.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| format!("{seg} is not a table"))?;
    }
    table.insert(last.to_string(), value);
    Ok(())
}

fn scalar(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .filter(|v| !v.is_table())
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}
