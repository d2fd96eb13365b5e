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

pub mod sandbox;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{data, Compiler, Ctx, Vars};
use jaq_json::Val;
use serde_json::{Map, Number, Value};

/// The compiled form of one jq program.
type Program = jaq_core::Filter<data::JustLut<Val>>;

/// Upper bound on cached programs. Templates come from events, so a stream of distinct
/// templates must not grow memory without bound; past the cap programs are compiled per use.
const CACHE_CAP: usize = 4096;
/// Upper bound on the source text of cached programs, in bytes.
const CACHE_BYTES: usize = 4 * 1024 * 1024;
/// Default longest program accepted, in bytes (`templates.max_program_bytes`).
pub const MAX_PROGRAM: usize = 16 * 1024;

/// The jq definitions templates may use: jq's standard library without `halt`,
/// `halt_error`, `debug`, `stderr`, `input(s)` and `env`. An explicit list, so a new
/// jaq release cannot add a capability unnoticed.
const ALLOWED_DEFS: &[&str] = &[
    "@base64",
    "@base64d",
    "@html",
    "@htmld",
    "@json",
    "@sh",
    "@text",
    "@uri",
    "@urid",
    "abs",
    "add",
    "all",
    "any",
    "arrays",
    "booleans",
    "capture",
    "capture_of_match",
    "combinations",
    "del",
    "delpaths",
    "drem",
    "empty",
    "error",
    "false",
    "finites",
    "first",
    "flatten",
    "from_entries",
    "fromdate",
    "gamma",
    "getpath",
    "gsub",
    "in",
    "index",
    "infinite",
    "inside",
    "isarray",
    "isboolean",
    "isempty",
    "isfinite",
    "isinfinite",
    "isnan",
    "isnormal",
    "isnumber",
    "isobject",
    "isstring",
    "iterables",
    "join",
    "keys",
    "last",
    "logb",
    "map",
    "map_values",
    "match",
    "max",
    "max_by",
    "min",
    "min_by",
    "nan",
    "nexttoward",
    "normals",
    "not",
    "nth",
    "null",
    "nulls",
    "numbers",
    "objects",
    "paths",
    "pick",
    "pow10",
    "range",
    "recurse",
    "repeat",
    "rindex",
    "scalars",
    "scalb",
    "scan",
    "scan_",
    "select",
    "setpath",
    "significand",
    "split",
    "splits",
    "strings",
    "sub",
    "test",
    "to_entries",
    "toboolean",
    "todate",
    "tonumber",
    "tostring",
    "totype",
    "transpose",
    "true",
    "type",
    "unique",
    "unique_by",
    "until",
    "values",
    "walk",
    "while",
    "with_entries",
];

/// The native jq functions templates may use (see [`ALLOWED_DEFS`]).
const ALLOWED_NATIVES: &[&str] = &[
    "acos",
    "acosh",
    "ascii_downcase",
    "ascii_upcase",
    "asin",
    "asinh",
    "atan",
    "atan2",
    "atanh",
    "bsearch",
    "cbrt",
    "ceil",
    "contains",
    "copysign",
    "cos",
    "cosh",
    "decode_base64",
    "decode_uri",
    "encode_base64",
    "encode_uri",
    "endswith",
    "erf",
    "erfc",
    "error_empty",
    "escape_html",
    "escape_sh",
    "exp",
    "exp10",
    "exp2",
    "explode",
    "expm1",
    "fabs",
    "fdim",
    "first",
    "floor",
    "fma",
    "fmax",
    "fmin",
    "fmod",
    "frexp",
    "fromdateiso8601",
    "fromjson",
    "gmtime",
    "group_by",
    "has",
    "hypot",
    "ilogb",
    "implode",
    "indices",
    "j0",
    "j1",
    "jn",
    "key_values",
    "keys_unsorted",
    "last",
    "ldexp",
    "length",
    "lgamma",
    "limit",
    "localtime",
    "log",
    "log10",
    "log1p",
    "log2",
    "ltrim",
    "ltrimstr",
    "matches",
    "max_by_or_empty",
    "min_by_or_empty",
    "mktime",
    "modf",
    "nearbyint",
    "nextafter",
    "now",
    "path",
    "path_value",
    "pow",
    "range",
    "remainder",
    "reverse",
    "rint",
    "round",
    "rtrim",
    "rtrimstr",
    "scalbln",
    "sin",
    "sinh",
    "skip",
    "sort",
    "sort_by",
    "split_",
    "split_matches",
    "sqrt",
    "startswith",
    "strflocaltime",
    "strftime",
    "strptime",
    "tan",
    "tanh",
    "tgamma",
    "tobytes",
    "todateiso8601",
    "tojson",
    "trim",
    "trunc",
    "unescape_html",
    "utf8bytelength",
    "y0",
    "y1",
    "yn",
];

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
    let defs = defs.filter(|d| ALLOWED_DEFS.contains(&d.name));
    let funs = jaq_core::funs()
        .chain(jaq_std::funs())
        .chain(jaq_json::funs())
        .filter(move |(name, _, _)| {
            ALLOWED_NATIVES.contains(name) || (trust == Trust::Operator && *name == "env")
        });
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

/// One step of a plain path expression.
#[derive(Debug, PartialEq, Eq)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// The steps of `code` when it is a plain path (`.`, `.a.b`, `.a["b-c"]`, `.a[0]`): the
/// common template, which reads the context and builds nothing. Such a program cannot
/// loop or allocate beyond the context it reads, so it needs no sandbox.
fn simple_path(code: &str) -> Option<Vec<Step<'_>>> {
    let mut rest = code.strip_prefix('.')?;
    let mut steps = Vec::new();
    let ident = |s: &str| {
        s.bytes()
            .position(|b| !(b.is_ascii_alphanumeric() || b == b'_'))
            .unwrap_or(s.len())
    };
    let mut first = true;
    while !rest.is_empty() {
        let after_dot = if first {
            Some(rest)
        } else {
            rest.strip_prefix('.')
        };
        first = false;
        if let Some(r) =
            after_dot.filter(|r| r.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_'))
        {
            let n = ident(r);
            steps.push(Step::Key(&r[..n]));
            rest = &r[n..];
            continue;
        }
        let r = after_dot.filter(|r| r.starts_with('[')).unwrap_or(rest);
        let inner = r.strip_prefix('[')?;
        let close = inner.find(']')?;
        let (body, tail) = (&inner[..close], &inner[close + 1..]);
        if let Some(key) = body.strip_prefix('"').and_then(|b| b.strip_suffix('"')) {
            if key.contains(['"', '\\']) {
                return None;
            }
            steps.push(Step::Key(key));
        } else if !body.is_empty() && body.len() <= 9 && body.bytes().all(|b| b.is_ascii_digit()) {
            steps.push(Step::Index(body.parse().ok()?));
        } else {
            return None;
        }
        rest = tail;
    }
    Some(steps)
}

/// Follow `steps` from `v`; `None` when jq would raise an error (indexing a string, say),
/// so that jq itself reports it.
fn walk_path(v: &Val, steps: &[Step<'_>]) -> Option<Val> {
    let mut cur = v.clone();
    for step in steps {
        cur = match (&cur, step) {
            (Val::Null, _) => Val::Null,
            (Val::Obj(o), Step::Key(k)) => o
                .get(&Val::from(k.to_string()))
                .cloned()
                .unwrap_or(Val::Null),
            (Val::Arr(a), Step::Index(i)) => a.get(*i).cloned().unwrap_or(Val::Null),
            _ => return None,
        };
    }
    Some(cur)
}

/// Whether rendering `value` runs any jq program beyond a plain path (keys included):
/// only those need the sandbox's budgets.
pub fn needs_sandbox(value: &Value) -> bool {
    match value {
        Value::String(s) => text_needs_sandbox(s),
        Value::Array(items) => items.iter().any(needs_sandbox),
        Value::Object(map) => object_needs_sandbox(map),
        _ => false,
    }
}

/// [`needs_sandbox`] of an object's members, keys included.
pub fn object_needs_sandbox(map: &Map<String, Value>) -> bool {
    map.iter()
        .any(|(k, v)| (!is_spread(k) && text_needs_sandbox(k)) || needs_sandbox(v))
}

fn text_needs_sandbox(s: &str) -> bool {
    match split(s) {
        Ok(segs) => segs
            .iter()
            .any(|seg| matches!(seg, Segment::Expr(code) if simple_path(code).is_none())),
        Err(_) => false,
    }
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
mod tests;
