//! Template syntax: `{{ … }}` segments in text, spread keys, and plain paths (`.a.b`,
//! `.a[0]`) that are read without jq.

use jaq_json::Val;
use serde_json::{Map, Value};

/// One step of a plain path expression.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// The steps of `code` when it is a plain path (`.`, `.a.b`, `.a["b-c"]`, `.a[0]`): the
/// common template, which reads the context and builds nothing. Such a program cannot
/// loop or allocate beyond the context it reads, so it needs no sandbox.
pub(super) fn simple_path(code: &str) -> Option<Vec<Step<'_>>> {
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
pub(super) fn walk_path(v: &Val, steps: &[Step<'_>]) -> Option<Val> {
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

pub(super) fn text_needs_sandbox(s: &str) -> bool {
    match split(s) {
        Ok(segs) => segs
            .iter()
            .any(|seg| matches!(seg, Segment::Expr(code) if simple_path(code).is_none())),
        Err(_) => false,
    }
}

pub(super) fn snippet(s: &str) -> &str {
    let end = s.char_indices().nth(20).map_or(s.len(), |(i, _)| i);
    if s.is_empty() {
        "end of input"
    } else {
        &s[..end]
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Segment<'a> {
    Text(&'a str),
    Expr(&'a str),
}

/// Split a string into literal text and `{{ … }}` expressions. Braces and string
/// literals inside an expression are balanced, so `{{ {a: {b: 1}} }}` is one expression.
pub(super) fn split(s: &str) -> Result<Vec<Segment<'_>>, String> {
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
pub(super) fn find_close(body: &str) -> Option<usize> {
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

pub(super) fn is_spread(key: &str) -> bool {
    matches!(split(key).as_deref(), Ok([Segment::Expr(code)]) if code.replace(' ', "") == "spreadValue()")
}
