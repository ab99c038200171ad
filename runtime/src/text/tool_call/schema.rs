//! The JSON types a tool's parameters accept, read from the request's JSON schema, and the typing of raw argument
//! text against them.
//!
//! GLM writes argument values as raw text: strings unquoted, everything else as JSON. Only the schema tells whether
//! `123` was meant as the string "123" or the number 123, so each value is typed by its parameter's schema.
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use serde_json::Value;

/// A set of JSON types. Empty means "unknown" (no schema, or a parameter the schema does not declare).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParamTypes(u8);

impl ParamTypes {
    pub const STRING: ParamTypes = ParamTypes(1);
    pub const NUMBER: ParamTypes = ParamTypes(2);
    pub const INTEGER: ParamTypes = ParamTypes(4);
    pub const BOOLEAN: ParamTypes = ParamTypes(8);
    pub const OBJECT: ParamTypes = ParamTypes(16);
    pub const ARRAY: ParamTypes = ParamTypes(32);
    pub const NULL: ParamTypes = ParamTypes(64);
    pub const UNKNOWN: ParamTypes = ParamTypes(0);

    pub fn union(self, other: ParamTypes) -> ParamTypes {
        ParamTypes(self.0 | other.0)
    }

    pub fn contains(self, other: ParamTypes) -> bool {
        other.0 != 0 && self.0 & other.0 == other.0
    }

    pub fn is_unknown(self) -> bool {
        self.0 == 0
    }

    /// A string parameter (possibly nullable): its value is the raw text, so it can be streamed as it arrives.
    pub fn is_string(self) -> bool {
        self.contains(Self::STRING) && self.0 & !(Self::STRING.0 | Self::NULL.0) == 0
    }

    fn from_type_name(name: &str) -> ParamTypes {
        match name {
            "string" => Self::STRING,
            "number" => Self::NUMBER,
            "integer" => Self::INTEGER,
            "boolean" => Self::BOOLEAN,
            "object" => Self::OBJECT,
            "array" => Self::ARRAY,
            "null" => Self::NULL,
            _ => Self::UNKNOWN,
        }
    }

    fn of_value(v: &Value) -> ParamTypes {
        match v {
            Value::Null => Self::NULL,
            Value::Bool(_) => Self::BOOLEAN,
            Value::Number(n) if n.is_f64() => Self::NUMBER,
            Value::Number(_) => Self::INTEGER.union(Self::NUMBER),
            Value::String(_) => Self::STRING,
            Value::Array(_) => Self::ARRAY,
            Value::Object(_) => Self::OBJECT,
        }
    }

    /// The types a JSON schema admits: `type` (a name or a list), `anyOf`/`oneOf`/`allOf`, `enum`, `const`, and
    /// `properties`/`items` as evidence of object/array when `type` is missing. `$ref` and the rest stay unknown.
    pub fn from_schema(schema: &Value) -> ParamTypes {
        let mut t = ParamTypes::UNKNOWN;
        match schema.get("type") {
            Some(Value::String(name)) => t = t.union(Self::from_type_name(name)),
            Some(Value::Array(names)) => {
                for n in names.iter().filter_map(Value::as_str) {
                    t = t.union(Self::from_type_name(n));
                }
            }
            _ => {}
        }
        for key in ["anyOf", "oneOf", "allOf"] {
            if let Some(Value::Array(subs)) = schema.get(key) {
                for s in subs {
                    t = t.union(Self::from_schema(s));
                }
            }
        }
        if let Some(Value::Array(values)) = schema.get("enum") {
            for v in values {
                t = t.union(Self::of_value(v));
            }
        }
        if let Some(v) = schema.get("const") {
            t = t.union(Self::of_value(v));
        }
        if t.is_unknown() {
            if schema.get("properties").is_some() {
                t = Self::OBJECT;
            } else if schema.get("items").is_some() {
                t = Self::ARRAY;
            }
        }
        t
    }

    fn accepts(self, v: &Value) -> bool {
        match v {
            Value::Number(n) if !n.is_f64() => self.0 & (Self::NUMBER.0 | Self::INTEGER.0) != 0,
            _ => self.0 & Self::of_value(v).0 != 0,
        }
    }
}

/// The value of one argument, typed by its parameter's types:
/// - a string parameter keeps the raw text exactly (even `123`, `true` or `null`);
/// - an unknown parameter is the JSON value when the text parses as JSON, else the raw text;
/// - any other parameter is the JSON value when it parses and fits the schema (Python's `True`/`False`/`None` are
///   read as JSON's); text that does not parse, or parses to a type the schema rejects while allowing strings,
///   stays a string. A number sent as a quoted string is unquoted for a number parameter.
pub fn type_value(raw: &str, types: ParamTypes) -> Value {
    if types.is_string() {
        return Value::String(raw.into());
    }
    let trimmed = raw.trim();
    let parsed = serde_json::from_str::<Value>(trimmed).ok().or(match trimmed {
        "True" => Some(Value::Bool(true)),
        "False" => Some(Value::Bool(false)),
        "None" => Some(Value::Null),
        _ => None,
    });
    match parsed {
        Some(v) if types.is_unknown() || types.accepts(&v) => v,
        Some(Value::String(s)) if types.0 & ParamTypes::NUMERIC != 0 => match serde_json::from_str::<Value>(s.trim()) {
            Ok(n @ Value::Number(_)) => n,
            _ => Value::String(s),
        },
        Some(v) if !types.contains(ParamTypes::STRING) => v,
        _ => Value::String(raw.into()),
    }
}

impl ParamTypes {
    const NUMERIC: u8 = Self::NUMBER.0 | Self::INTEGER.0;
}

/// The parameter types of every tool in a request, by tool name.
#[derive(Clone, Debug, Default)]
pub struct ToolSchemas {
    tools: BTreeMap<String, BTreeMap<String, ParamTypes>>,
}

impl ToolSchemas {
    /// From an OpenAI `tools` array (`{"type":"function","function":{name, parameters}}`, or the bare function
    /// object). Entries without a name are ignored: validation is the request layer's job.
    pub fn from_openai_tools(tools: &[Value]) -> Self {
        let mut out = ToolSchemas::default();
        for tool in tools {
            let func = tool.get("function").unwrap_or(tool);
            let Some(name) = func.get("name").and_then(Value::as_str) else { continue };
            let mut params = BTreeMap::new();
            if let Some(Value::Object(props)) = func.get("parameters").and_then(|p| p.get("properties")) {
                for (k, schema) in props {
                    params.insert(k.clone(), ParamTypes::from_schema(schema));
                }
            }
            out.tools.insert(name.into(), params);
        }
        out
    }

    pub fn names(&self) -> Vec<&str> {
        self.tools.keys().map(String::as_str).collect()
    }

    pub fn contains(&self, tool: &str) -> bool {
        self.tools.contains_key(tool)
    }

    /// The declared types of `tool`'s parameter `param`; unknown when either is undeclared.
    pub fn param_types(&self, tool: &str, param: &str) -> ParamTypes {
        self.tools.get(tool).and_then(|p| p.get(param)).copied().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn schema_types() {
        assert!(ParamTypes::from_schema(&json!({"type": "string"})).is_string());
        assert!(ParamTypes::from_schema(&json!({"type": ["string", "null"]})).is_string());
        assert!(!ParamTypes::from_schema(&json!({"type": ["string", "integer"]})).is_string());
        assert_eq!(ParamTypes::from_schema(&json!({"properties": {}})), ParamTypes::OBJECT);
        assert_eq!(ParamTypes::from_schema(&json!({"enum": ["a", "b"]})), ParamTypes::STRING);
        let any = ParamTypes::from_schema(&json!({"anyOf": [{"type": "number"}, {"type": "null"}]}));
        assert_eq!(any, ParamTypes::NUMBER.union(ParamTypes::NULL));
        assert!(ParamTypes::from_schema(&json!({"$ref": "#/x"})).is_unknown());
    }

    #[test]
    fn typing() {
        let s = ParamTypes::STRING;
        assert_eq!(type_value("123", s), json!("123"));
        assert_eq!(type_value(" null ", s), json!(" null "));
        assert_eq!(type_value("123", ParamTypes::UNKNOWN), json!(123));
        assert_eq!(type_value("123abc", ParamTypes::UNKNOWN), json!("123abc"));
        assert_eq!(type_value("\"q\"", ParamTypes::UNKNOWN), json!("q"));
        assert_eq!(type_value("3.5", ParamTypes::NUMBER), json!(3.5));
        assert_eq!(type_value("\"7\"", ParamTypes::INTEGER), json!(7));
        assert_eq!(type_value("True", ParamTypes::BOOLEAN), json!(true));
        assert_eq!(type_value("{\"a\": [1]}", ParamTypes::OBJECT), json!({"a": [1]}));
        assert_eq!(type_value("not json", ParamTypes::ARRAY), json!("not json"));
        let sn = ParamTypes::STRING.union(ParamTypes::NUMBER);
        assert_eq!(type_value("12", sn), json!(12));
        assert_eq!(type_value("true", sn), json!("true"));
    }
}
