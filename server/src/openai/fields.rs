//! Typed reads of a JSON request body with error messages that name the field, so that a wrong type is a 400
//! saying what to fix rather than a silent default.
use serde_json::{Map, Value};

use super::ApiError;

pub struct Fields<'a> {
    obj: &'a Map<String, Value>,
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl<'a> Fields<'a> {
    pub fn new(obj: &'a Map<String, Value>) -> Self {
        Fields { obj }
    }

    /// The value, treating JSON null as absent (as the OpenAI SDKs send unset fields).
    pub fn get(&self, name: &str) -> Option<&'a Value> {
        self.obj.get(name).filter(|v| !v.is_null())
    }

    fn wrong(name: &str, want: &str, got: &Value) -> ApiError {
        ApiError::invalid_field(name, format!("expected {want}, got {}", type_name(got)))
    }

    pub fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(Self::wrong(name, "a boolean", v)),
        }
    }

    pub fn str(&self, name: &str) -> Result<Option<&'a str>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(Self::wrong(name, "a string", v)),
        }
    }

    /// A number within `[min, max]`.
    pub fn f64_in(&self, name: &str, min: f64, max: f64) -> Result<Option<f64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => {
                let x = n.as_f64().unwrap_or(f64::NAN);
                if x.is_finite() && x >= min && x <= max {
                    Ok(Some(x))
                } else {
                    Err(ApiError::invalid_field(name, format!("must be between {min} and {max}, got {n}")))
                }
            }
            Some(v) => Err(Self::wrong(name, "a number", v)),
        }
    }

    /// An integer within `[min, max]`.
    pub fn int_in(&self, name: &str, min: i64, max: i64) -> Result<Option<i64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(x) if x >= min && x <= max => Ok(Some(x)),
                _ => Err(ApiError::invalid_field(name, format!("must be an integer between {min} and {max}, got {n}"))),
            },
            Some(v) => Err(Self::wrong(name, "an integer", v)),
        }
    }

    pub fn array(&self, name: &str) -> Result<Option<&'a Vec<Value>>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(v) => Err(Self::wrong(name, "an array", v)),
        }
    }

    pub fn object(&self, name: &str) -> Result<Option<&'a Map<String, Value>>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Object(o)) => Ok(Some(o)),
            Some(v) => Err(Self::wrong(name, "an object", v)),
        }
    }

    /// A string or an array of strings (`stop`).
    pub fn strings(&self, name: &str) -> Result<Vec<String>, ApiError> {
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(Value::String(s)) => Ok(vec![s.clone()]),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => Ok(s.clone()),
                    v => Err(Self::wrong(&format!("{name}[{i}]"), "a string", v)),
                })
                .collect(),
            Some(v) => Err(Self::wrong(name, "a string or an array of strings", v)),
        }
    }

    /// An array of non-negative integers below `bound` (token ids).
    pub fn ids(&self, name: &str, bound: usize) -> Result<Vec<u32>, ApiError> {
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| match v.as_u64() {
                    Some(id) if (id as usize) < bound => Ok(id as u32),
                    _ => Err(ApiError::invalid_field(&format!("{name}[{i}]"), format!("not a token id below {bound}"))),
                })
                .collect(),
            Some(v) => Err(Self::wrong(name, "an array of token ids", v)),
        }
    }
}
