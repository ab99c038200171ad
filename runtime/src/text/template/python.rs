//! Python's `str()` of template values, for `{{ value }}` output.
//!
//! Jinja2 prints values with Python's `str()`: `None`, `True`, `1.0`, `['a', 1]`. minijinja's default prints
//! `none`, `true`, and its own list syntax, which would change the prompt for any template that prints a
//! non-string.
use std::fmt::Write as _;

use minijinja::value::{Value, ValueKind};

use crate::text::pyjson;

/// `str(value)` as Python writes it. Undefined prints nothing, as in Jinja2.
pub fn py_str(out: &mut String, value: &Value) {
    match value.kind() {
        ValueKind::String => out.push_str(value.as_str().unwrap_or_default()),
        ValueKind::Undefined => {}
        _ => py_repr(out, value),
    }
}

/// `repr(value)`: strings quoted, containers recursively.
pub fn py_repr(out: &mut String, value: &Value) {
    match value.kind() {
        ValueKind::Undefined => {}
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number => {
            if value.is_integer() {
                let _ = write!(out, "{value}");
            } else {
                match f64::try_from(value.clone()) {
                    Ok(f) if f.is_nan() => out.push_str("nan"),
                    Ok(f) if f.is_infinite() => out.push_str(if f > 0.0 { "inf" } else { "-inf" }),
                    Ok(f) => pyjson::write_float(out, f),
                    Err(_) => {
                        let _ = write!(out, "{value}");
                    }
                }
            }
        }
        ValueKind::String => repr_str(out, value.as_str().unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => {
            out.push('[');
            if let Ok(items) = value.try_iter() {
                for (i, item) in items.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    py_repr(out, &item);
                }
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            if let Ok(keys) = value.try_iter() {
                for (i, key) in keys.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    py_repr(out, &key);
                    out.push_str(": ");
                    py_repr(out, &value.get_item(&key).unwrap_or_default());
                }
            }
            out.push('}');
        }
        _ => {
            let _ = write!(out, "{value}");
        }
    }
}

/// Python's string repr: single quotes unless the text has a `'` and no `"`.
fn repr_str(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || (0x7f..0xa0).contains(&(c as u32)) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: Value) -> String {
        let mut out = String::new();
        py_str(&mut out, &v);
        out
    }

    #[test]
    fn python_str() {
        assert_eq!(s(Value::from(())), "None");
        assert_eq!(s(Value::from(true)), "True");
        assert_eq!(s(Value::from(2.0)), "2.0");
        assert_eq!(s(Value::from(7)), "7");
        assert_eq!(s(Value::from("it's")), "it's");
        let list = Value::from(vec![Value::from("a"), Value::from("it's"), Value::from(false)]);
        assert_eq!(s(list), "['a', \"it's\", False]");
        let map = Value::from(minijinja::value::Serde(serde_json::json!({"k": [1, null]})));
        assert_eq!(s(map), "{'k': [1, None]}");
    }
}
