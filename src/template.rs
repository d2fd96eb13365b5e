//! `{{ jq }}` rendering of an action's `invocationMethod` against the run context.
//!
//! Rules (Port's, see `reference/port-backends.md` §3):
//! - a string that is exactly one template keeps the JSON type of its result;
//! - mixed text interpolates: strings are inserted raw, other values as compact JSON;
//! - an object key whose template yields `null` drops the pair;
//! - a `"{{ spreadValue() }}"` key merges its (object) value into the parent.
//!
//! Each distinct jq program is compiled once and cached; evaluation takes the first output
//! of the program (`null` when it yields none), as Port's agent does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{data, unwrap_valr, Compiler, Ctx, Vars};
use jaq_json::Val;
use serde_json::{Map, Number, Value};

/// The compiled form of one jq program.
type Program = jaq_core::Filter<data::JustLut<Val>>;

/// Upper bound on cached programs. Templates come from events, so a stream of distinct
/// templates must not grow memory without bound; past the cap programs are compiled per use.
const CACHE_CAP: usize = 4096;

/// A template failure: which field, and what jq said.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct TemplateError {
    pub field: String,
    pub message: String,
}

/// Where the jq programs of a [`Renderer`] come from, which decides what they may read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Trust {
    /// Templates carried by events: anyone who can publish a trigger writes them, so they
    /// see the event and `.secrets` only. jq's `env` (the process environment, which
    /// holds credentials) does not exist for them.
    #[default]
    Event,
    /// Programs from the operator's own files (the Port payload mapping): `env` and
    /// `$ENV` read the process environment, as in jq and Port's agent.
    Operator,
}

/// Compiles, caches and evaluates templates. Cheap to share (`Arc`).
#[derive(Default)]
pub struct Renderer {
    trust: Trust,
    cache: Mutex<HashMap<String, Arc<Program>>>,
}

/// The evaluation context of one run: the event plus `.secrets`, converted once.
pub struct Context(Val);

impl Context {
    /// Build the context from the event's JSON and the resolved secrets.
    pub fn new(mut event: Value, secrets: &Map<String, Value>) -> Context {
        if let Value::Object(obj) = &mut event {
            obj.insert("secrets".into(), Value::Object(secrets.clone()));
        }
        Context(json_to_val(&event))
    }

    /// The context of one run, built from the event directly: the same value as
    /// [`Context::new`] of the event's JSON, without building that JSON first. `secrets`
    /// is the store converted once, with [`secrets_val`].
    pub fn for_event(event: &crate::model::TriggerEvent, secrets: &Val) -> Context {
        let key = |k: &str| Val::from(k.to_owned());
        let text = |s: &str| Val::from(s.to_owned());
        let run = std::iter::once((key("id"), text(&event.run.id)))
            .chain(entries(&event.run.extra))
            .collect();
        let a = &event.action;
        let action = std::iter::once((key("identifier"), text(&a.identifier)))
            .chain(a.blueprint.as_deref().map(|b| (key("blueprint"), text(b))))
            .chain([(
                key("invocationMethod"),
                Val::obj(entries(&a.invocation_method).collect()),
            )])
            .chain(entries(&a.extra))
            .collect();
        let fields = [
            (key("run"), Val::obj(run)),
            (key("action"), Val::obj(action)),
            (key("trigger"), json_to_val(&event.trigger)),
            (key("inputs"), json_to_val(&event.inputs)),
            (key("entity"), json_to_val(&event.entity)),
            (key("event"), json_to_val(&event.event)),
        ];
        let optional = [
            ("orderingKey", &event.ordering_key),
            ("deadline", &event.deadline),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (key(k), text(v))));
        let obj = fields
            .into_iter()
            .chain(optional)
            .chain(entries(&event.extra))
            .chain([(key("secrets"), secrets.clone())])
            .collect();
        Context(Val::obj(obj))
    }

    /// A context that is exactly `input` (no `.secrets`), converted once for many
    /// programs.
    pub fn plain(input: &Value) -> Context {
        Context(json_to_val(input))
    }
}

impl Renderer {
    /// A renderer of event templates ([`Trust::Event`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// A renderer of operator programs ([`Trust::Operator`]).
    pub fn operator() -> Self {
        Renderer {
            trust: Trust::Operator,
            ..Self::default()
        }
    }

    /// Render every template in `value`. `path` names the root field in error messages.
    pub fn render(&self, value: &Value, ctx: &Context, path: &str) -> Result<Value, TemplateError> {
        match value {
            Value::String(s) => self.render_str(s, ctx, path),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| self.render(v, ctx, &format!("{path}[{i}]")))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            Value::Object(map) => self.render_object(map, ctx, path).map(Value::Object),
            other => Ok(other.clone()),
        }
    }

    /// Render the members of an object (see the module rules for keys).
    pub fn render_object(
        &self,
        map: &Map<String, Value>,
        ctx: &Context,
        path: &str,
    ) -> Result<Map<String, Value>, TemplateError> {
        let mut out = Map::with_capacity(map.len());
        for (key, value) in map {
            let field = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            if is_spread(key) {
                match self.render(value, ctx, &field)? {
                    Value::Object(inner) => out.extend(inner),
                    Value::Null => {}
                    other => {
                        return Err(TemplateError {
                            field,
                            message: format!(
                                "spreadValue() needs an object, got {}",
                                compact(&other)
                            ),
                        })
                    }
                }
                continue;
            }
            let key = match self.render_str(key, ctx, &format!("{field} (key)"))? {
                Value::Null => continue,
                Value::String(s) => s,
                other => compact(&other),
            };
            out.insert(key, self.render(value, ctx, &field)?);
        }
        Ok(out)
    }

    fn render_str(&self, s: &str, ctx: &Context, field: &str) -> Result<Value, TemplateError> {
        let segments = split(s).map_err(|message| TemplateError {
            field: field.to_owned(),
            message,
        })?;
        match segments.as_slice() {
            [] => Ok(Value::String(String::new())),
            [Segment::Text(_)] => Ok(Value::String(s.to_owned())),
            [Segment::Expr(code)] => self.eval(code, ctx, field),
            _ => {
                let mut out = String::with_capacity(s.len());
                for seg in &segments {
                    match seg {
                        Segment::Text(t) => out.push_str(t),
                        Segment::Expr(code) => match self.eval(code, ctx, field)? {
                            Value::String(v) => out.push_str(&v),
                            other => out.push_str(&compact(&other)),
                        },
                    }
                }
                Ok(Value::String(out))
            }
        }
    }

    /// Evaluate one jq program and return its first output.
    fn eval(&self, code: &str, ctx: &Context, field: &str) -> Result<Value, TemplateError> {
        self.eval_val(code, &ctx.0, field)
    }

    /// Evaluate one jq program against a context and return its first output (`null`
    /// when it yields none), as Port's agent does (`jq.first`).
    pub fn first(&self, code: &str, ctx: &Context, field: &str) -> Result<Value, TemplateError> {
        self.eval_val(code, &ctx.0, field)
    }

    /// Compile `code` (into the cache) without running it: a syntax check.
    pub fn check(&self, code: &str) -> Result<(), String> {
        self.program(code).map(drop)
    }

    fn eval_val(&self, code: &str, input: &Val, field: &str) -> Result<Value, TemplateError> {
        let err = |message: String| TemplateError {
            field: field.to_owned(),
            message,
        };
        let program = self.program(code).map_err(err)?;
        let vars = match self.trust {
            Trust::Event => Vars::new([]),
            Trust::Operator => Vars::new([environment()]),
        };
        let jq_ctx = Ctx::<data::JustLut<Val>>::new(&program.lut, vars);
        let first = program
            .id
            .run((jq_ctx, input.clone()))
            .map(unwrap_valr)
            .next();
        match first {
            None => Ok(Value::Null),
            Some(Ok(v)) => Ok(val_to_json(&v)),
            Some(Err(e)) => Err(err(format!("jq error in `{code}`: {e}"))),
        }
    }

    fn program(&self, code: &str) -> Result<Arc<Program>, String> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = cache.get(code) {
            return Ok(p.clone());
        }
        let program = Arc::new(compile(code, self.trust)?);
        if cache.len() < CACHE_CAP {
            cache.insert(code.to_owned(), program.clone());
        }
        Ok(program)
    }

    /// Number of cached programs (for tests and metrics).
    pub fn cached(&self) -> usize {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// The process environment as a jq object (`$ENV`).
fn environment() -> Val {
    Val::obj(
        std::env::vars()
            .map(|(k, v)| (Val::from(k), Val::from(v)))
            .collect(),
    )
}

fn compile(code: &str, trust: Trust) -> Result<Program, String> {
    let defs = jaq_core::defs()
        .chain(jaq_std::defs())
        .chain(jaq_json::defs());
    let funs = jaq_core::funs()
        .chain(jaq_std::funs())
        .chain(jaq_json::funs())
        .filter(move |(name, _, _)| trust == Trust::Operator || *name != "env");
    let globals: &[&str] = match trust {
        Trust::Event => &[],
        Trust::Operator => &["$ENV"],
    };
    let loader = Loader::new(defs);
    let arena = Arena::default();
    let modules = loader
        .load(&arena, File { code, path: () })
        .map_err(|errs| {
            let msgs: Vec<String> = errs
                .into_iter()
                .flat_map(|(_, e)| match e {
                    jaq_core::load::Error::Io(v) => {
                        v.into_iter().map(|(s, m)| format!("{m} ({s})")).collect()
                    }
                    jaq_core::load::Error::Lex(v) => v
                        .into_iter()
                        .map(|(exp, at)| format!("expected {} at `{}`", exp.as_str(), snippet(at)))
                        .collect(),
                    jaq_core::load::Error::Parse(v) => v
                        .into_iter()
                        .map(|(exp, at)| format!("expected {} at `{}`", exp.as_str(), snippet(at)))
                        .collect::<Vec<_>>(),
                })
                .collect();
            format!("jq syntax error in `{code}`: {}", msgs.join("; "))
        })?;
    Compiler::default()
        .with_funs(funs)
        .with_global_vars(globals.iter().copied())
        .compile(modules)
        .map_err(|errs| {
            let msgs: Vec<String> = errs
                .into_iter()
                .flat_map(|(_, v)| v)
                .map(|(name, undef)| format!("undefined {} `{name}`", undef.as_str()))
                .collect();
            format!("jq error in `{code}`: {}", msgs.join("; "))
        })
}

fn snippet(s: &str) -> &str {
    let end = s.char_indices().nth(20).map_or(s.len(), |(i, _)| i);
    if s.is_empty() {
        "end of input"
    } else {
        &s[..end]
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Segment<'a> {
    Text(&'a str),
    Expr(&'a str),
}

/// Split a string into literal text and `{{ … }}` expressions. Braces and string
/// literals inside an expression are balanced, so `{{ {a: {b: 1}} }}` is one expression.
fn split(s: &str) -> Result<Vec<Segment<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            out.push(Segment::Text(&rest[..start]));
        }
        let body = &rest[start + 2..];
        let end = find_close(body).ok_or_else(|| format!("unclosed `{{{{` in {s:?}"))?;
        let code = body[..end].trim();
        if code.is_empty() {
            return Err(format!("empty template `{{{{}}}}` in {s:?}"));
        }
        out.push(Segment::Expr(code));
        rest = &body[end + 2..];
    }
    if !rest.is_empty() {
        out.push(Segment::Text(rest));
    }
    Ok(out)
}

/// Byte index of the `}}` that closes an expression body, skipping nested braces and
/// jq string literals.
fn find_close(body: &str) -> Option<usize> {
    let bytes = body.as_bytes();
    let (mut depth, mut i, mut in_str) = (0usize, 0usize, false);
    while i < bytes.len() {
        let b = bytes[i];
        if in_str {
            match b {
                b'\\' => i += 1,
                b'"' => in_str = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_str = true,
                b'{' => depth += 1,
                b'}' if depth > 0 => depth -= 1,
                b'}' if bytes.get(i + 1) == Some(&b'}') => return Some(i),
                _ => {}
            }
        }
        i += 1;
    }
    None
}

fn is_spread(key: &str) -> bool {
    matches!(split(key).as_deref(), Ok([Segment::Expr(code)]) if code.replace(' ', "") == "spreadValue()")
}

/// Compact JSON text of a value (`serde_json` never fails on a `Value`).
pub fn compact(v: &Value) -> String {
    v.to_string()
}

/// Convert a JSON value into jaq's value type, keeping object key order.
pub fn json_to_val(v: &Value) -> Val {
    match v {
        Value::Null => Val::Null,
        Value::Bool(b) => Val::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => isize::try_from(i)
                .map(Val::from)
                .unwrap_or(Val::from(i as f64)),
            (None, Some(f)) => Val::from(f),
            (None, None) => Val::Null,
        },
        Value::String(s) => Val::from(s.clone()),
        Value::Array(a) => a.iter().map(json_to_val).collect(),
        Value::Object(o) => Val::obj(entries(o).collect()),
    }
}

/// A JSON object's members as jaq key/value pairs, in order.
fn entries(o: &Map<String, Value>) -> impl Iterator<Item = (Val, Val)> + '_ {
    o.iter()
        .map(|(k, v)| (Val::from(k.clone()), json_to_val(v)))
}

/// The secret store as the `.secrets` of [`Context::for_event`]; convert it once.
pub fn secrets_val(secrets: &Map<String, Value>) -> Val {
    Val::obj(entries(secrets).collect())
}

/// Convert a jaq value back into JSON. Byte strings become (lossy) UTF-8 text and
/// non-string object keys their compact JSON text, since JSON has neither.
pub fn val_to_json(v: &Val) -> Value {
    use jaq_json::Num;
    match v {
        Val::Null => Value::Null,
        Val::Bool(b) => Value::Bool(*b),
        Val::Num(Num::Int(i)) => Value::from(*i as i64),
        Val::Num(Num::Float(f)) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Val::Num(n) => {
            let text = n.to_string();
            serde_json::from_str::<Number>(&text)
                .map(Value::Number)
                .unwrap_or(Value::String(text))
        }
        Val::TStr(b) | Val::BStr(b) => Value::String(String::from_utf8_lossy(b).into_owned()),
        Val::Arr(a) => Value::Array(a.iter().map(val_to_json).collect()),
        Val::Obj(o) => Value::Object(
            o.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Val::TStr(b) | Val::BStr(b) => String::from_utf8_lossy(b).into_owned(),
                        other => compact(&val_to_json(other)),
                    };
                    (key, val_to_json(v))
                })
                .collect(),
        ),
    }
}

#[cfg(test)]
#[path = "template_tests.rs"]
mod tests;
