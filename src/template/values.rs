//! Between serde_json values and jaq's.

use jaq_json::Val;
use serde_json::{Map, Number, Value};

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
pub(super) fn entries(o: &Map<String, Value>) -> impl Iterator<Item = (Val, Val)> + '_ {
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
