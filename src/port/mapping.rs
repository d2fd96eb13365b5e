//! The payload mapping file of Port's agent ("control the payload", reference §8): a
//! JSON array of entries; the first entry whose `enabled` is `true` (or a jq program
//! that yields `true`) decides the request.
//!
//! Every leaf string of `url`, `method`, `headers`, `query` and `body` is a jq program
//! run against the (decrypted) message, with `env.X` and `$ENV` available; non-string
//! leaves pass through, arrays map element-wise. A missing key keeps the agent's default:
//! the incoming `url` and `method` (else `POST`), no headers, no query, and the whole
//! message as the body. `report` (status, link, summary, externalRunId) is evaluated
//! against `{body, request, response}` once the response is in. A jq error at run time
//! yields `null` for that field and a warning, as in the agent; a program that does not
//! compile is a configuration error at start.
//!
//! Without a file, the agent's shipped default mapping (GitLab pipelines, then every
//! webhook) is used: [`Mapping::builtin`].

use std::path::Path;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::template::{Context, Renderer};

const BUILTIN: &str = include_str!("default_mapping.json");

/// `enabled`: a boolean or a jq program. As in the agent (pydantic), `1`, `0` and the
/// strings `"1"`, `"yes"`, `"on"`, `"t"`, `"y"`, `"true"` (`"0"`, `"no"`, `"off"`, `"f"`,
/// `"n"`, `"false"`), in any case, are booleans; any other string is a jq program.
#[derive(Debug, Clone)]
pub enum Enabled {
    Flag(bool),
    Jq(String),
}

impl<'de> Deserialize<'de> for Enabled {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Bool(b) => Ok(Enabled::Flag(b)),
            Value::Number(n) if n.as_i64() == Some(1) => Ok(Enabled::Flag(true)),
            Value::Number(n) if n.as_i64() == Some(0) => Ok(Enabled::Flag(false)),
            Value::String(s) => Ok(match s.to_ascii_lowercase().as_str() {
                "1" | "true" | "t" | "yes" | "y" | "on" => Enabled::Flag(true),
                "0" | "false" | "f" | "no" | "n" | "off" => Enabled::Flag(false),
                _ => Enabled::Jq(s),
            }),
            other => Err(serde::de::Error::custom(format!(
                "enabled: {other} is not a boolean or a jq program"
            ))),
        }
    }
}

/// The `report` block: each key, when present, overrides the default report.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportSpec {
    pub status: Option<String>,
    pub link: Option<String>,
    pub summary: Option<String>,
    pub external_run_id: Option<String>,
}

/// One mapping entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    #[serde(default = "enabled_by_default")]
    pub enabled: Enabled,
    pub method: Option<String>,
    pub url: Option<String>,
    /// An object of jq leaves, or one jq program.
    pub body: Option<Value>,
    pub headers: Option<Value>,
    pub query: Option<Value>,
    pub report: Option<ReportSpec>,
    #[serde(default)]
    pub fields_to_decrypt_paths: Vec<String>,
}

fn enabled_by_default() -> Enabled {
    Enabled::Flag(true)
}

/// The request an entry maps a message to.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    pub method: String,
    pub url: String,
    pub headers: Map<String, Value>,
    pub query: Map<String, Value>,
    pub body: Value,
}

impl Prepared {
    /// `request` in the report context: `{method, url, body, headers, query}`.
    pub fn context(&self) -> Value {
        serde_json::json!({"method": self.method, "url": self.url, "body": self.body,
            "headers": self.headers, "query": self.query})
    }
}

/// The evaluated `report` block: `None` where the block has no such key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub status: Option<Value>,
    pub link: Option<Value>,
    pub summary: Option<Value>,
    pub external_run_id: Option<Value>,
}

/// A loaded mapping with its compiled programs.
pub struct Mapping {
    entries: Vec<Entry>,
    jq: Renderer,
    /// Where it came from, for logs ("built-in default" or the path).
    pub origin: String,
}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapping")
            .field("origin", &self.origin)
            .field("entries", &self.entries)
            .finish()
    }
}

impl Mapping {
    /// The agent's shipped default mapping.
    pub fn builtin() -> Mapping {
        Self::parse(BUILTIN, "the built-in default mapping")
            .expect("the bundled default mapping is valid")
    }

    /// Load and check a mapping file; every problem is listed. `strict`: a jq program
    /// that does not compile is a problem; otherwise a warning, and it yields null at run
    /// time (as in the agent).
    pub fn load(path: &Path, strict: bool) -> Result<Mapping, Vec<String>> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| vec![format!("cannot read {}: {e}", path.display())])?;
        Self::parse_with(&text, &path.display().to_string(), strict)
    }

    /// Parse mapping JSON strictly; `origin` names it in problems.
    pub fn parse(text: &str, origin: &str) -> Result<Mapping, Vec<String>> {
        Self::parse_with(text, origin, true)
    }

    /// Parse mapping JSON; see [`load`](Self::load) for `strict`.
    pub fn parse_with(text: &str, origin: &str, strict: bool) -> Result<Mapping, Vec<String>> {
        let raw: Value =
            serde_json::from_str(text).map_err(|e| vec![format!("{origin}: not JSON: {e}")])?;
        let Value::Array(items) = raw else {
            return Err(vec![format!(
                "{origin}: must be a JSON array of mapping entries"
            )]);
        };
        let jq = Renderer::operator();
        let mut entries = Vec::new();
        let mut problems = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            let at = format!("{origin}: entry {i}");
            let mut unknown = Vec::new();
            let entry: Result<Entry, _> =
                serde_ignored::deserialize(item, |p| unknown.push(p.to_string()));
            for key in unknown {
                tracing::warn!(key, "{at}: unknown key ignored");
            }
            match entry {
                Ok(e) => {
                    let (shape, compile) = check(&jq, &e, &at);
                    problems.extend(shape);
                    if strict {
                        problems.extend(compile);
                    } else {
                        for c in compile {
                            tracing::warn!("{c}; it yields null (port.strict_mapping is off)");
                        }
                    }
                    entries.push(e);
                }
                Err(e) => problems.push(format!("{at}: {e}")),
            }
        }
        if problems.is_empty() {
            Ok(Mapping {
                entries,
                jq,
                origin: origin.to_owned(),
            })
        } else {
            Err(problems)
        }
    }

    /// The first entry enabled for `msg`; a failing `enabled` program counts as not
    /// enabled (with a warning).
    pub fn select(&self, msg: &Context, warnings: &mut Vec<String>) -> Option<&Entry> {
        self.entries.iter().enumerate().find_map(|(i, e)| {
            let on = match &e.enabled {
                Enabled::Flag(b) => *b,
                Enabled::Jq(code) => {
                    self.eval(code, msg, &format!("entry {i} enabled"), warnings)
                        == Value::Bool(true)
                }
            };
            on.then_some(e)
        })
    }

    /// Map `msg` (already decrypted) to a request; `invocation` gives the defaults.
    pub fn request(
        &self,
        e: &Entry,
        msg: &Value,
        invocation: &Map<String, Value>,
        warnings: &mut Vec<String>,
    ) -> Prepared {
        let ctx = Context::plain(msg);
        let default_str = |key: &str, fallback: &str| {
            invocation
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or(fallback)
                .to_owned()
        };
        let mut text = |code: &Option<String>, field: &str, fallback: String| match code {
            None => fallback,
            Some(c) => match self.eval(c, &ctx, field, warnings) {
                Value::String(s) => s,
                Value::Null => fallback,
                other => other.to_string(),
            },
        };
        let method = text(&e.method, "method", default_str("method", "POST")).to_uppercase();
        // A mapped url that yields null sends nothing (the agent's request fails too); only
        // a missing `url` key falls back to the message's.
        let url = match &e.url {
            None => default_str("url", ""),
            Some(c) => match self.eval(c, &ctx, "url", warnings) {
                Value::String(s) => s,
                Value::Null => String::new(),
                other => other.to_string(),
            },
        };
        let mut object = |spec: &Option<Value>, field: &str| match spec {
            None => Map::new(),
            Some(s) => match self.apply(s, &ctx, field, warnings) {
                Value::Object(m) => m,
                Value::Null => Map::new(),
                other => {
                    warnings.push(format!("{field}: expected an object, got {other}; ignored"));
                    Map::new()
                }
            },
        };
        let headers = object(&e.headers, "headers");
        let query = object(&e.query, "query");
        let body = match &e.body {
            None => msg.clone(),
            Some(spec) => self.apply(spec, &ctx, "body", warnings),
        };
        Prepared {
            method,
            url,
            headers,
            query,
            body,
        }
    }

    /// Evaluate the entry's `report` block against `{body, request, response}`.
    pub fn report(&self, e: &Entry, context: &Value, warnings: &mut Vec<String>) -> Overrides {
        let Some(spec) = &e.report else {
            return Overrides::default();
        };
        let ctx = Context::plain(context);
        let mut one = |code: &Option<String>, field: &str| {
            code.as_ref()
                .map(|c| self.eval(c, &ctx, &format!("report.{field}"), warnings))
        };
        Overrides {
            status: one(&spec.status, "status"),
            link: one(&spec.link, "link"),
            summary: one(&spec.summary, "summary"),
            external_run_id: one(&spec.external_run_id, "externalRunId"),
        }
    }

    /// Every leaf string is a program; objects and arrays keep their shape.
    fn apply(&self, spec: &Value, ctx: &Context, field: &str, warnings: &mut Vec<String>) -> Value {
        match spec {
            Value::String(code) => self.eval(code, ctx, field, warnings),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| self.apply(v, ctx, &format!("{field}[{i}]"), warnings))
                .collect(),
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            self.apply(v, ctx, &format!("{field}.{k}"), warnings),
                        )
                    })
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    fn eval(&self, code: &str, ctx: &Context, field: &str, warnings: &mut Vec<String>) -> Value {
        self.jq.first(code, ctx, field).unwrap_or_else(|e| {
            warnings.push(e.to_string());
            Value::Null
        })
    }
}

/// Shape problems and jq compile errors of one entry.
fn check(jq: &Renderer, e: &Entry, at: &str) -> (Vec<String>, Vec<String>) {
    let mut problems = Vec::new();
    let mut programs: Vec<(String, &str)> = Vec::new();
    if let Enabled::Jq(c) = &e.enabled {
        programs.push(("enabled".into(), c));
    }
    for (field, code) in [("method", &e.method), ("url", &e.url)] {
        if let Some(c) = code {
            programs.push((field.into(), c));
        }
    }
    for (field, spec) in [
        ("body", &e.body),
        ("headers", &e.headers),
        ("query", &e.query),
    ] {
        match spec {
            None => {}
            Some(v @ (Value::Object(_) | Value::String(_))) => leaves(v, field, &mut programs),
            Some(_) => problems.push(format!("{at}: {field}: must be an object or a jq program")),
        }
    }
    if let Some(r) = &e.report {
        for (field, code) in [
            ("report.status", &r.status),
            ("report.link", &r.link),
            ("report.summary", &r.summary),
            ("report.externalRunId", &r.external_run_id),
        ] {
            if let Some(c) = code {
                programs.push((field.into(), c));
            }
        }
    }
    let compile = programs
        .into_iter()
        .filter_map(|(field, code)| jq.check(code).err().map(|e| format!("{at}: {field}: {e}")))
        .collect();
    (problems, compile)
}

fn leaves<'a>(v: &'a Value, field: &str, out: &mut Vec<(String, &'a str)>) {
    match v {
        Value::String(c) => out.push((field.to_owned(), c)),
        Value::Array(items) => {
            for (i, x) in items.iter().enumerate() {
                leaves(x, &format!("{field}[{i}]"), out);
            }
        }
        Value::Object(m) => {
            for (k, x) in m {
                leaves(x, &format!("{field}.{k}"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
#[path = "mapping_tests.rs"]
mod tests;
