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

mod jq;
pub mod sandbox;
mod syntax;
mod values;
mod worker;

pub use worker::worker_main;

use jq::{compile, environment, Program};
use syntax::{is_spread, simple_path, snippet, split, walk_path, Segment};
pub use syntax::{needs_sandbox, object_needs_sandbox};
use values::entries;
pub use values::{compact, json_to_val, secrets_val, val_to_json};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jaq_core::{data, Ctx, Vars};
use jaq_json::Val;
use serde_json::{Map, Value};

/// Upper bound on cached programs. Templates come from events, so a stream of distinct
/// templates must not grow memory without bound; past the cap programs are compiled per use.
const CACHE_CAP: usize = 4096;
/// Upper bound on the source text of cached programs, in bytes.
const CACHE_BYTES: usize = 4 * 1024 * 1024;
/// Default longest program accepted, in bytes (`templates.max_program_bytes`).
pub const MAX_PROGRAM: usize = 16 * 1024;

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
///
/// A `Renderer` has no budget of its own: event templates run through
/// [`crate::template::sandbox::Sandbox`], which evaluates them here in a worker process it can kill.
pub struct Renderer {
    trust: Trust,
    /// Longest program accepted, in bytes.
    max_program: usize,
    /// Told the field before each jq program runs (the sandbox worker reports it, so that
    /// an overrun names the field).
    observer: Option<fn(&str)>,
    cache: Mutex<HashMap<String, Arc<Program>>>,
}

impl Default for Renderer {
    fn default() -> Self {
        Renderer {
            trust: Trust::Event,
            max_program: MAX_PROGRAM,
            observer: None,
            cache: Mutex::default(),
        }
    }
}

/// Check the `{{ … }}` templates of one string: the syntax, and that each jq program
/// compiles. For definitions loaded by operators (automations), checked at load.
pub fn check_template(s: &str) -> Result<(), String> {
    let checker = Renderer::new();
    for seg in split(s)? {
        if let Segment::Expr(code) = seg {
            checker.check(code)?;
        }
    }
    Ok(())
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

    /// The same context with `.secrets` replaced by `secrets`: a shallow copy, so that
    /// a run's context is converted from its event once whichever secrets it may see.
    pub fn with_secrets(&self, secrets: Val) -> Context {
        match &self.0 {
            Val::Obj(o) => {
                let mut map = (**o).clone();
                map.insert(Val::from("secrets".to_owned()), secrets);
                Context(Val::obj(map))
            }
            other => Context(other.clone()),
        }
    }

    /// The context as a jq value.
    pub fn val(&self) -> &Val {
        &self.0
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

    /// A renderer of event templates accepting programs up to `max_program` bytes.
    pub fn with_max_program(max_program: usize) -> Self {
        Renderer {
            max_program,
            ..Self::default()
        }
    }

    /// Call `f` with the field before each jq program (not plain paths) runs.
    pub fn observe(&mut self, f: fn(&str)) {
        self.observer = Some(f);
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
        if let Some(steps) = simple_path(code) {
            if let Some(v) = walk_path(input, &steps) {
                return Ok(val_to_json(&v));
            }
        }
        if let Some(observe) = self.observer {
            observe(field);
        }
        let program = self.program(code).map_err(err)?;
        let vars = match self.trust {
            Trust::Event => Vars::new([]),
            Trust::Operator => Vars::new([environment()]),
        };
        let jq_ctx = Ctx::<data::JustLut<Val>>::new(&program.lut, vars);
        // Never `unwrap_valr`: it exits the process on `halt`. The allow-list keeps
        // `halt` out of templates; any other exception is an ordinary template error.
        let first = program.id.run((jq_ctx, input.clone())).next();
        match first {
            None => Ok(Value::Null),
            Some(Ok(v)) => Ok(val_to_json(&v)),
            Some(Err(exn)) => match exn.get_err() {
                Ok(e) => Err(err(format!("jq error in `{code}`: {e}"))),
                Err(_) => Err(err(format!("jq error in `{code}`: halt is not allowed"))),
            },
        }
    }

    fn program(&self, code: &str) -> Result<Arc<Program>, String> {
        if code.len() > self.max_program {
            return Err(format!(
                "the program is {} bytes; templates.max_program_bytes is {}",
                code.len(),
                self.max_program
            ));
        }
        if let Some(p) = self.lock().get(code) {
            return Ok(p.clone());
        }
        // Compiled outside the lock: a slow compile holds up no other render.
        let program = Arc::new(compile(code, self.trust)?);
        let mut cache = self.lock();
        let bytes: usize = cache.keys().map(String::len).sum();
        if cache.len() < CACHE_CAP && bytes + code.len() <= CACHE_BYTES {
            cache.insert(code.to_owned(), program.clone());
        }
        Ok(program)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Program>>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of cached programs (for tests and metrics).
    pub fn cached(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests;
