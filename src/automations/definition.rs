//! Automation definitions in Port's format, validated at load: every problem is listed
//! with its file and field.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::template::Renderer;

/// What an automation listens to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    EntityCreated,
    EntityUpdated,
    EntityDeleted,
    AnyEntityChange,
    TimerPropertyExpired,
    RunCreated,
    RunUpdated,
    AnyRunChange,
}

impl EventType {
    pub const ALL: [(&'static str, EventType); 8] = [
        ("ENTITY_CREATED", EventType::EntityCreated),
        ("ENTITY_UPDATED", EventType::EntityUpdated),
        ("ENTITY_DELETED", EventType::EntityDeleted),
        ("ANY_ENTITY_CHANGE", EventType::AnyEntityChange),
        ("TIMER_PROPERTY_EXPIRED", EventType::TimerPropertyExpired),
        ("RUN_CREATED", EventType::RunCreated),
        ("RUN_UPDATED", EventType::RunUpdated),
        ("ANY_RUN_CHANGE", EventType::AnyRunChange),
    ];

    fn parse(s: &str) -> Option<EventType> {
        Self::ALL.iter().find(|(n, _)| *n == s).map(|(_, t)| *t)
    }

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, t)| *t == self)
            .map(|(n, _)| *n)
            .expect("every type is listed")
    }

    fn is_run(self) -> bool {
        matches!(
            self,
            EventType::RunCreated | EventType::RunUpdated | EventType::AnyRunChange
        )
    }
}

/// How the condition's expressions combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combinator {
    And,
    Or,
}

#[derive(Debug, Clone)]
pub struct Condition {
    pub expressions: Vec<String>,
    pub combinator: Combinator,
}

/// One validated automation.
#[derive(Debug, Clone)]
pub struct Automation {
    pub identifier: String,
    pub title: Option<String>,
    pub event: EventType,
    /// `blueprintIdentifier` (entity and timer events).
    pub blueprint: Option<String>,
    /// `propertyIdentifier` (timer events).
    pub property: Option<String>,
    /// `actionIdentifier` (run events).
    pub action: Option<String>,
    pub condition: Option<Condition>,
    pub invocation_method: Map<String, Value>,
    pub publish: bool,
    /// The definition as written (for `automations test` and the logs).
    pub source: String,
}

/// The loaded automations, by identifier.
#[derive(Debug, Default)]
pub struct Automations {
    by_id: BTreeMap<String, Arc<Automation>>,
}

/// Backend types an `invocationMethod` may name.
const BACKENDS: &[&str] = &[
    "WEBHOOK",
    "GITHUB",
    "GITLAB",
    "KAFKA",
    "UPSERT_ENTITY",
    "AZURE_DEVOPS",
];

impl Automations {
    pub fn from_list(list: Vec<Automation>) -> Automations {
        Automations {
            by_id: list
                .into_iter()
                .map(|a| (a.identifier.clone(), Arc::new(a)))
                .collect(),
        }
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Automation>> {
        self.by_id.get(id)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Automation>> {
        self.by_id.values()
    }

    /// Whether any published automation has timers on `blueprint`.
    pub fn timers_on<'a>(
        &'a self,
        blueprint: &'a str,
    ) -> impl Iterator<Item = &'a Arc<Automation>> + 'a {
        self.iter().filter(move |a| {
            a.publish
                && a.event == EventType::TimerPropertyExpired
                && a.blueprint.as_deref() == Some(blueprint)
        })
    }
}

/// Read every `*.json` file of `dir` (sorted by name). Problems are `file: field: why`.
pub fn load_dir(dir: &Path) -> Result<Vec<Automation>, Vec<String>> {
    let mut problems = Vec::new();
    let mut out: Vec<Automation> = Vec::new();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut files: Vec<_> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect(),
        Err(e) => return Err(vec![format!("{}: {e}", dir.display())]),
    };
    files.sort();
    for path in files {
        let shown = path.display().to_string();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("{shown}: {e}"));
                continue;
            }
        };
        match parse_file(&text) {
            Ok(list) => {
                for a in list {
                    if let Some(other) = seen.insert(a.identifier.clone(), shown.clone()) {
                        problems.push(format!(
                            "{shown}: identifier: {:?} is also defined in {other}",
                            a.identifier
                        ));
                    } else {
                        out.push(a);
                    }
                }
            }
            Err(errs) => problems.extend(errs.into_iter().map(|e| format!("{shown}: {e}"))),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// One file: an automation object or an array of them. Problems name the field
/// (`[1].trigger.event.type: …` inside an array).
pub fn parse_file(text: &str) -> Result<Vec<Automation>, Vec<String>> {
    let doc: Value = serde_json::from_str(text).map_err(|e| vec![format!("not JSON: {e}")])?;
    match doc {
        Value::Array(items) => {
            let mut out = Vec::new();
            let mut problems = Vec::new();
            for (i, item) in items.iter().enumerate() {
                match parse(item) {
                    Ok(a) => out.push(a),
                    Err(errs) => problems.extend(errs.into_iter().map(|e| format!("[{i}].{e}"))),
                }
            }
            if problems.is_empty() {
                Ok(out)
            } else {
                Err(problems)
            }
        }
        one => parse(&one).map(|a| vec![a]),
    }
}

/// Check one definition; every problem as `field: why`.
pub fn parse(def: &Value) -> Result<Automation, Vec<String>> {
    let mut p = Vec::new();
    let Some(obj) = def.as_object() else {
        return Err(vec![format!(
            "(definition): expected an object, got {}",
            kind(def)
        )]);
    };
    let text = |field: &str, v: Option<&Value>, p: &mut Vec<String>| -> Option<String> {
        match v {
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
            None | Some(Value::Null) => {
                p.push(format!("{field}: missing"));
                None
            }
            Some(Value::String(_)) => {
                p.push(format!("{field}: empty string"));
                None
            }
            Some(other) => {
                p.push(format!("{field}: expected a string, got {}", kind(other)));
                None
            }
        }
    };
    let identifier = text("identifier", obj.get("identifier"), &mut p).unwrap_or_default();
    if identifier.len() > 200
        || identifier
            .chars()
            .any(|c| c.is_control() || c == '/' || c.is_whitespace())
    {
        p.push(format!(
            "identifier: {identifier:?} must be at most 200 characters, without '/', spaces or control characters"
        ));
    }
    let title = obj.get("title").and_then(Value::as_str).map(str::to_owned);
    let publish = match obj.get("publish") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            p.push(format!("publish: expected a boolean, got {}", kind(other)));
            true
        }
    };
    let trigger = obj.get("trigger").and_then(Value::as_object);
    if trigger.is_none() {
        p.push("trigger: missing, or not an object".into());
    }
    let trigger = trigger.cloned().unwrap_or_default();
    match trigger.get("type").and_then(Value::as_str) {
        Some("automation") => {}
        other => p.push(format!(
            "trigger.type: expected \"automation\", got {}",
            other.map_or("nothing".to_owned(), |s| format!("{s:?}"))
        )),
    }
    let event = trigger.get("event").and_then(Value::as_object);
    if event.is_none() {
        p.push("trigger.event: missing, or not an object".into());
    }
    let event = event.cloned().unwrap_or_default();
    let event_type = match event.get("type").and_then(Value::as_str) {
        Some(t) => match EventType::parse(t) {
            Some(t) => Some(t),
            None => {
                p.push(format!(
                    "trigger.event.type: {t:?} is not one of {}",
                    EventType::ALL.map(|(n, _)| n).join(", ")
                ));
                None
            }
        },
        None if event.is_empty() => None,
        None => {
            p.push("trigger.event.type: missing".into());
            None
        }
    };
    let (mut blueprint, mut property, mut action) = (None, None, None);
    match event_type {
        Some(t) if t.is_run() => {
            action = text(
                "trigger.event.actionIdentifier",
                event.get("actionIdentifier"),
                &mut p,
            );
        }
        Some(t) => {
            blueprint = text(
                "trigger.event.blueprintIdentifier",
                event.get("blueprintIdentifier"),
                &mut p,
            );
            if t == EventType::TimerPropertyExpired {
                property = text(
                    "trigger.event.propertyIdentifier",
                    event.get("propertyIdentifier"),
                    &mut p,
                );
            }
        }
        None => {}
    }
    let condition = match trigger.get("condition") {
        None | Some(Value::Null) => None,
        Some(Value::Object(c)) => condition(c, &mut p),
        Some(other) => {
            p.push(format!(
                "trigger.condition: expected an object, got {}",
                kind(other)
            ));
            None
        }
    };
    let invocation_method = match obj.get("invocationMethod") {
        Some(Value::Object(m)) => {
            match m.get("type").and_then(Value::as_str) {
                Some(t) if BACKENDS.contains(&t) => {}
                Some(t) => p.push(format!(
                    "invocationMethod.type: {t:?} is not one of {}",
                    BACKENDS.join(", ")
                )),
                None => p.push("invocationMethod.type: missing".into()),
            }
            check_templates(&Value::Object(m.clone()), "invocationMethod", &mut p);
            m.clone()
        }
        None | Some(Value::Null) => {
            p.push("invocationMethod: missing".into());
            Map::new()
        }
        Some(other) => {
            p.push(format!(
                "invocationMethod: expected an object, got {}",
                kind(other)
            ));
            Map::new()
        }
    };
    if !p.is_empty() {
        return Err(p);
    }
    Ok(Automation {
        identifier,
        title,
        event: event_type.expect("checked above"),
        blueprint,
        property,
        action,
        condition,
        invocation_method,
        publish,
        source: def.to_string(),
    })
}

fn condition(c: &Map<String, Value>, p: &mut Vec<String>) -> Option<Condition> {
    match c.get("type").and_then(Value::as_str) {
        Some("JQ") => {}
        other => p.push(format!(
            "trigger.condition.type: expected \"JQ\", got {}",
            other.map_or("nothing".to_owned(), |s| format!("{s:?}"))
        )),
    }
    let combinator = match c.get("combinator").and_then(Value::as_str) {
        None => Combinator::And,
        Some(s) if s.eq_ignore_ascii_case("and") => Combinator::And,
        Some(s) if s.eq_ignore_ascii_case("or") => Combinator::Or,
        Some(s) => {
            p.push(format!(
                "trigger.condition.combinator: {s:?} is not \"and\" or \"or\""
            ));
            Combinator::And
        }
    };
    let Some(list) = c.get("expressions").and_then(Value::as_array) else {
        p.push("trigger.condition.expressions: missing, or not an array".into());
        return None;
    };
    if list.is_empty() {
        p.push("trigger.condition.expressions: empty".into());
    }
    let checker = Renderer::new();
    let mut expressions = Vec::new();
    for (i, e) in list.iter().enumerate() {
        match e.as_str() {
            Some(code) => match checker.check(code) {
                Ok(()) => expressions.push(code.to_owned()),
                Err(why) => p.push(format!("trigger.condition.expressions[{i}]: {why}")),
            },
            None => p.push(format!(
                "trigger.condition.expressions[{i}]: expected a string, got {}",
                kind(e)
            )),
        }
    }
    Some(Condition {
        expressions,
        combinator,
    })
}

/// Every `{{ … }}` in `value` must be a jq program that compiles.
fn check_templates(value: &Value, path: &str, p: &mut Vec<String>) {
    match value {
        Value::String(s) => {
            if let Err(why) = crate::template::check_template(s) {
                p.push(format!("{path}: {why}"));
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                check_templates(v, &format!("{path}[{i}]"), p);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                let field = format!("{path}.{k}");
                if let Err(why) = crate::template::check_template(k) {
                    p.push(format!("{field} (key): {why}"));
                }
                check_templates(v, &field, p);
            }
        }
        _ => {}
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn example() -> Value {
        json!({
            "identifier": "serviceUnhealthy",
            "title": "Service health changed",
            "trigger": {
                "type": "automation",
                "event": {"type": "ENTITY_UPDATED", "blueprintIdentifier": "service"},
                "condition": {"type": "JQ",
                    "expressions": [".diff.before.properties.status == \"Healthy\"",
                                    ".diff.after.properties.status == \"Unhealthy\""],
                    "combinator": "and"}
            },
            "invocationMethod": {"type": "WEBHOOK", "url": "http://127.0.0.1:1/x",
                "body": {"service": "{{ .event.context.entityIdentifier }}"}},
            "publish": true
        })
    }

    #[test]
    fn ports_example_loads() {
        let a = parse(&example()).unwrap();
        assert_eq!(a.event, EventType::EntityUpdated);
        assert_eq!(a.blueprint.as_deref(), Some("service"));
        assert_eq!(a.condition.unwrap().expressions.len(), 2);
        assert!(a.publish);
    }

    #[test]
    fn every_problem_is_listed_with_its_field() {
        let bad = json!({
            "identifier": "x",
            "trigger": {"type": "automation",
                "event": {"type": "TIMER_PROPERTY_EXPIRED", "blueprintIdentifier": "svc"},
                "condition": {"type": "JQ", "expressions": [".a ==", 5], "combinator": "xor"}},
            "invocationMethod": {"type": "FTP", "url": "{{ .a | }}"},
            "publish": "yes"
        });
        let errs = parse(&bad).unwrap_err();
        let all = errs.join("\n");
        for want in [
            "publish: expected a boolean",
            "trigger.event.propertyIdentifier: missing",
            "trigger.condition.combinator: \"xor\"",
            "trigger.condition.expressions[0]:",
            "trigger.condition.expressions[1]: expected a string, got a number",
            "invocationMethod.type: \"FTP\" is not one of",
            "invocationMethod.url:",
        ] {
            assert!(all.contains(want), "{want} not in:\n{all}");
        }
        let errs = parse_file(r#"[{"identifier": "a"}, 5]"#).unwrap_err();
        assert!(
            errs.iter().any(|e| e.starts_with("[0].trigger: missing")),
            "{errs:?}"
        );
        assert!(
            errs.iter().any(|e| e.starts_with("[1].(definition)")),
            "{errs:?}"
        );
    }

    #[test]
    fn run_events_need_an_action() {
        let mut d = example();
        d["trigger"]["event"] = json!({"type": "RUN_UPDATED"});
        let errs = parse(&d).unwrap_err();
        assert_eq!(errs, ["trigger.event.actionIdentifier: missing"]);
        d["trigger"]["event"] = json!({"type": "RUN_UPDATED", "actionIdentifier": "deploy"});
        assert_eq!(parse(&d).unwrap().action.as_deref(), Some("deploy"));
    }
}
