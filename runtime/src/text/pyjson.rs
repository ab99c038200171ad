//! JSON text exactly as Python's `json.dumps` writes it.
//!
//! Two consumers need byte-identical output with the Python stack: the chat template's `tojson` filter (the rendered
//! prompt must match transformers token for token) and the tool-call parser's `arguments` strings (SGLang builds them
//! with `json.dumps(..., ensure_ascii=False)`). serde_json's writer differs in separators, float formatting and
//! escaping, hence this small writer.
use alloc::string::String;
use core::fmt::Write as _;

use serde_json::Value;

/// The `json.dumps` arguments that change the text.
#[derive(Clone, Debug)]
pub struct DumpOptions {
    /// Escape every non-ASCII character as `\uXXXX` (surrogate pairs above the BMP), as Python's default does.
    pub ensure_ascii: bool,
    /// `None` writes everything on one line; `Some(unit)` puts each item on its own line indented by `unit` per level.
    pub indent: Option<String>,
    /// Between items; Python's default is `", "` without indent and `","` with one.
    pub item_separator: String,
    /// Between a key and its value; Python's default is `": "`.
    pub key_separator: String,
    pub sort_keys: bool,
}

impl DumpOptions {
    /// `json.dumps(v)` with Python's defaults except `ensure_ascii`.
    pub fn python(ensure_ascii: bool) -> Self {
        DumpOptions {
            ensure_ascii,
            indent: None,
            item_separator: String::from(", "),
            key_separator: String::from(": "),
            sort_keys: false,
        }
    }
}

/// `json.dumps(value, **opts)`.
pub fn dumps(value: &Value, opts: &DumpOptions) -> String {
    let mut out = String::new();
    write_value(&mut out, value, opts, 0);
    out
}

fn write_value(out: &mut String, value: &Value, opts: &DumpOptions, depth: usize) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                let _ = write!(out, "{i}");
            } else if let Some(u) = n.as_u64() {
                let _ = write!(out, "{u}");
            } else if let Some(f) = n.as_f64() {
                write_float(out, f);
            }
        }
        Value::String(s) => write_string(out, s, opts.ensure_ascii),
        Value::Array(items) => {
            if items.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_separator);
                }
                newline_indent(out, opts, depth + 1);
                write_value(out, item, opts, depth + 1);
            }
            newline_indent(out, opts, depth);
            out.push(']');
        }
        Value::Object(map) => {
            if map.is_empty() {
                out.push_str("{}");
                return;
            }
            let mut entries: alloc::vec::Vec<(&String, &Value)> = map.iter().collect();
            if opts.sort_keys {
                // Python sorts str keys by code point, which is UTF-8 byte order.
                entries.sort_by(|a, b| a.0.cmp(b.0));
            }
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_separator);
                }
                newline_indent(out, opts, depth + 1);
                write_string(out, k, opts.ensure_ascii);
                out.push_str(&opts.key_separator);
                write_value(out, v, opts, depth + 1);
            }
            newline_indent(out, opts, depth);
            out.push('}');
        }
    }
}

fn newline_indent(out: &mut String, opts: &DumpOptions, depth: usize) {
    if let Some(unit) = &opts.indent {
        out.push('\n');
        for _ in 0..depth {
            out.push_str(unit);
        }
    }
}

/// A quoted JSON string.
pub fn write_string(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    escape_into(out, s, ensure_ascii);
    out.push('"');
}

/// The body of a JSON string (no quotes). Escaping is per character, so escaping a string piecewise gives the same
/// text as escaping it whole: the tool-call parser relies on that to stream string arguments.
pub fn escape_into(out: &mut String, s: &str, ensure_ascii: bool) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            // Python's ASCII mode escapes everything outside ' '..='~', DEL included.
            c if ensure_ascii && !(' '..='~').contains(&c) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{:04x}", unit);
                }
            }
            c => out.push(c),
        }
    }
}

/// A float as Python's `repr(float)`: the shortest round-trip digits, in positional notation for exponents -4..16
/// and as `1.5e-05` / `1e+16` otherwise; integral values keep a `.0`.
pub fn write_float(out: &mut String, f: f64) {
    if f.is_nan() {
        out.push_str("NaN");
        return;
    }
    if f.is_infinite() {
        out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
        return;
    }
    if f == 0.0 {
        out.push_str(if f.is_sign_negative() { "-0.0" } else { "0.0" });
        return;
    }
    // `{:e}` gives the shortest round-trip digits: "-1.2345e-7".
    let sci = alloc::format!("{f:e}");
    let (mantissa, exp) = match sci.split_once('e') {
        Some((m, e)) => (m, e.parse::<i32>().unwrap_or(0)),
        None => (sci.as_str(), 0),
    };
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    out.push_str(sign);
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        if point <= 0 {
            out.push_str("0.");
            for _ in 0..(-point) {
                out.push('0');
            }
            out.push_str(&digits);
        } else {
            let point = point as usize;
            if digits.len() <= point {
                out.push_str(&digits);
                for _ in digits.len()..point {
                    out.push('0');
                }
                out.push_str(".0");
            } else {
                out.push_str(&digits[..point]);
                out.push('.');
                out.push_str(&digits[point..]);
            }
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.unsigned_abs());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn float(f: f64) -> String {
        let mut s = String::new();
        write_float(&mut s, f);
        s
    }

    #[test]
    fn floats_like_python_repr() {
        for (f, want) in [
            (1.0, "1.0"),
            (0.5, "0.5"),
            (100.0, "100.0"),
            (1e16, "1e+16"),
            (1.5e-5, "1.5e-05"),
            (0.0001, "0.0001"),
            (-2.5e20, "-2.5e+20"),
            (123456789.125, "123456789.125"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1e15, "1000000000000000.0"),
        ] {
            assert_eq!(float(f), want, "{f}");
        }
    }

    #[test]
    fn separators_and_escaping() {
        let v: Value = serde_json::from_str(r#"{"b": [1, 2.0, "é\n😀"], "a": {}, "c": []}"#).unwrap();
        assert_eq!(dumps(&v, &DumpOptions::python(false)), "{\"b\": [1, 2.0, \"é\\n😀\"], \"a\": {}, \"c\": []}");
        assert_eq!(
            dumps(&v, &DumpOptions::python(true)),
            "{\"b\": [1, 2.0, \"\\u00e9\\n\\ud83d\\ude00\"], \"a\": {}, \"c\": []}"
        );
        let opts = DumpOptions {
            indent: Some("  ".into()),
            item_separator: ",".into(),
            sort_keys: true,
            ..DumpOptions::python(false)
        };
        assert_eq!(
            dumps(&v, &opts),
            "{\n  \"a\": {},\n  \"b\": [\n    1,\n    2.0,\n    \"é\\n😀\"\n  ],\n  \"c\": []\n}"
        );
    }
}
