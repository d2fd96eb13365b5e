//! JSON text exactly as JavaScript's `JSON.stringify` writes it: compact, keys in their
//! original order (serde_json's `preserve_order`), non-ASCII left as UTF-8, and numbers
//! in JavaScript's `Number.prototype.toString` form (`1e+21`, `1.5e-7`, `0.000001`).
//!
//! Port signs its Kafka messages over this text (§6.2 of the Port reference), so a
//! verifier must reproduce it byte for byte from the parsed message. serde_json's own
//! writer differs only in how it prints floats (`1e21`, `1.0e-7`); strings are escaped
//! the same way by both (`"`, `\`, and control characters as `\n`, `\u001f`, …).
//! Parsing must be exact too: serde_json's `float_roundtrip` feature is on, because its
//! default float parser can land one ULP off (`123456789012345680000` came back as
//! `…670000`, and the signature did not match).

use std::io;

use serde::Serialize;
use serde_json::ser::Formatter;
use serde_json::Value;

/// `JSON.stringify(value)`.
pub fn stringify(value: &Value) -> String {
    let mut out = Vec::with_capacity(256);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, JsFormatter);
    value
        .serialize(&mut ser)
        .expect("serialising a JSON value into memory cannot fail");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// A number as JavaScript prints it (also the text of a numeric signature timestamp).
pub fn number(n: &serde_json::Number) -> String {
    match (n.as_u64(), n.as_i64(), n.as_f64()) {
        (Some(u), _, _) => u.to_string(),
        (None, Some(i), _) => i.to_string(),
        (None, None, Some(f)) => js_float(f),
        _ => n.to_string(),
    }
}

/// The trait's default methods write compact JSON; only numbers differ.
struct JsFormatter;

impl Formatter for JsFormatter {
    fn write_f64<W: ?Sized + io::Write>(&mut self, w: &mut W, value: f64) -> io::Result<()> {
        w.write_all(js_float(value).as_bytes())
    }

    fn write_f32<W: ?Sized + io::Write>(&mut self, w: &mut W, value: f32) -> io::Result<()> {
        self.write_f64(w, f64::from(value))
    }
}

/// The shortest decimal digits that round-trip to `|x|`, and the exponent of the first
/// digit (`1.5e-7` → `("15", -7)`); JavaScript and Python both print from these.
fn shortest_digits(x: f64) -> (String, i32) {
    // Rust prints the shortest digits that round-trip, as both languages require.
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').expect("`{:e}` always has an exponent");
    let exp: i32 = exp.parse().expect("`{:e}` exponents are integers");
    (mantissa.chars().filter(|c| *c != '.').collect(), exp)
}

/// ECMAScript Number::toString(x) for a finite double (JSON.stringify writes `null`
/// for the others, which a parsed JSON value never holds).
fn js_float(x: f64) -> String {
    if x == 0.0 {
        return "0".into(); // also -0
    }
    if !x.is_finite() {
        return "null".into();
    }
    let (digits, exp) = shortest_digits(x);
    let k = digits.len() as i32;
    let n = exp + 1; // the decimal point sits after n digits
    let mut out = String::with_capacity(k as usize + 8);
    if x < 0.0 {
        out.push('-');
    }
    if k <= n && n <= 21 {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', (n - k) as usize));
    } else if 0 < n && n <= 21 {
        out.push_str(&digits[..n as usize]);
        out.push('.');
        out.push_str(&digits[n as usize..]);
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-n) as usize));
        out.push_str(&digits);
    } else {
        out.push_str(&digits[..1]);
        if k > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if n - 1 < 0 { '-' } else { '+' });
        out.push_str(&(n - 1).abs().to_string());
    }
    out
}

/// `json.dumps(value, separators=(",", ":"))` as Python writes it: compact, keys in
/// their order, every non-ASCII character escaped (`\u00eb`, surrogate pairs above the
/// BMP), and floats in Python's `repr` form (`1e-07`, `1e+16`, `5.0`).
///
/// The agent signs its webhooks over this text, so its receivers verify by parsing the
/// body and writing it back this way. In Port mode switchyard sends exactly these bytes,
/// so that a receiver that checks the raw bytes and one that re-serialises as Python
/// both verify.
pub fn python_dumps(value: &Value) -> String {
    let mut out = String::with_capacity(256);
    py_write(&mut out, value);
    out
}

fn py_write(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&py_number(n)),
        Value::String(s) => py_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                py_write(out, v);
            }
            out.push(']');
        }
        Value::Object(m) => {
            out.push('{');
            for (i, (k, v)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                py_string(out, k);
                out.push(':');
                py_write(out, v);
            }
            out.push('}');
        }
    }
}

fn py_string(out: &mut String, s: &str) {
    use std::fmt::Write as _;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{u:04x}");
                }
            }
        }
    }
    out.push('"');
}

/// A number as Python's json module writes what it parsed: integers as integers (an
/// integer literal beyond 64 bits, which serde_json holds as a float, too), floats as
/// `repr(float)`.
fn py_number(n: &serde_json::Number) -> String {
    match (n.as_u64(), n.as_i64(), n.as_f64()) {
        (Some(u), _, _) => u.to_string(),
        (None, Some(i), _) => i.to_string(),
        (None, None, Some(f))
            if f.fract() == 0.0 && f.abs() > u64::MAX as f64 && f.abs() < 1e21 =>
        {
            js_float(f) // JavaScript wrote it as digits, which Python reads as an int
        }
        (None, None, Some(f)) => py_float(f),
        _ => n.to_string(),
    }
}

/// Python's `repr(float)` for a finite double.
fn py_float(x: f64) -> String {
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    if !x.is_finite() {
        return "null".into();
    }
    let (digits, exp) = shortest_digits(x);
    let k = digits.len() as i32;
    let mut out = String::with_capacity(k as usize + 8);
    if x < 0.0 {
        out.push('-');
    }
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            let whole = exp + 1;
            if k <= whole {
                out.push_str(&digits);
                out.extend(std::iter::repeat_n('0', (whole - k) as usize));
                out.push_str(".0");
            } else {
                out.push_str(&digits[..whole as usize]);
                out.push('.');
                out.push_str(&digits[whole as usize..]);
            }
        } else {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
            out.push_str(&digits);
        }
    } else {
        out.push_str(&digits[..1]);
        if k > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if exp < 0 { '-' } else { '+' });
        out.push_str(&format!("{:02}", exp.abs()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn floats_print_as_javascript_does() {
        // Expected values are what node's `String(x)` prints.
        for (x, js) in [
            (1.5, "1.5"),
            (0.1, "0.1"),
            (-2.25, "-2.25"),
            (100.0, "100"),
            (1e21, "1e+21"),
            (1.2345e21, "1.2345e+21"),
            (123456789012345680000.0, "123456789012345680000"),
            (0.000001, "0.000001"),
            (0.0000001, "1e-7"),
            (1.5e-7, "1.5e-7"),
            (-0.0, "0"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
        ] {
            assert_eq!(js_float(x), js, "{x:e}");
        }
    }

    #[test]
    fn stringify_is_compact_ordered_and_leaves_unicode_alone() {
        let v: Value = serde_json::from_str(
            r#"{"z": 1, "a": {"é": "naïve ✓ 日本", "ctl": "a\u0001\n\t\"\\/"}, "n": [1.0, 2.5e-8, -3]}"#,
        )
        .unwrap();
        assert_eq!(
            stringify(&v),
            r#"{"z":1,"a":{"é":"naïve ✓ 日本","ctl":"a\u0001\n\t\"\\/"},"n":[1,2.5e-8,-3]}"#
        );
        assert_eq!(stringify(&json!([])), "[]");
        // Parsed exactly (float_roundtrip), so it prints back as JavaScript wrote it.
        let v: Value = serde_json::from_str("[123456789012345680000,1e+21]").unwrap();
        assert_eq!(stringify(&v), "[123456789012345680000,1e+21]");
        assert_eq!(stringify(&json!({"headers": {}})), r#"{"headers":{}}"#);
    }

    #[test]
    fn python_dumps_matches_pythons_json_module() {
        // Expected values are what CPython 3.11's json.dumps(json.loads(text),
        // separators=(",", ":")) prints.
        let v: Value = serde_json::from_str(
            r#"{"name":"Zoë","emoji":"🚀","ctl":"a\u0001\n\t\"\\/\u007f","n":[1.0,1e-7,0.000001,1e16,1e15,123.456,-2.5,3,1e+21,0.0001,-0.0],"big":123456789012345680000}"#,
        )
        .unwrap();
        assert_eq!(
            python_dumps(&v),
            r#"{"name":"Zo\u00eb","emoji":"\ud83d\ude80","ctl":"a\u0001\n\t\"\\/\u007f","n":[1.0,1e-07,1e-06,1e+16,1000000000000000.0,123.456,-2.5,3,1e+21,0.0001,-0.0],"big":123456789012345680000}"#
        );
        assert_eq!(python_dumps(&json!(null)), "null");
        assert_eq!(python_dumps(&json!({"a": []})), r#"{"a":[]}"#);
    }
}
