//! Typed reads from a parsed config.json, with errors that name the key.
use serde_json::Value;

use crate::{Error, Result};

/// A JSON object together with the dotted path it sits at, so errors can say `text_config.hidden_size`.
#[derive(Clone, Copy)]
pub(crate) struct Obj<'a> {
    pub value: &'a Value,
    pub path: &'a str,
}

impl<'a> Obj<'a> {
    pub fn new(value: &'a Value, path: &'a str) -> Self {
        Obj { value, path }
    }

    fn key(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{}", self.path, key)
        }
    }

    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.value.get(key).filter(|v| !v.is_null())
    }

    pub fn child(&self, key: &'a str) -> Option<Obj<'a>> {
        self.get(key).filter(|v| v.is_object()).map(|value| Obj { value, path: key })
    }

    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|n| Some(n as usize))
                .ok_or_else(|| Error::Config(format!("{} must be a non-negative integer, got {v}", self.key(key)))),
        }
    }

    pub fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| Error::Config(format!("{} is missing", self.key(key))))
    }

    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| Error::Config(format!("{} must be a number, got {v}", self.key(key)))),
        }
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| Error::Config(format!("{} must be a boolean, got {v}", self.key(key)))),
        }
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&'a str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| Error::Config(format!("{} must be a string, got {v}", self.key(key)))),
        }
    }

    pub fn opt_usize_list(&self, key: &str) -> Result<Option<Vec<usize>>> {
        let Some(v) = self.get(key) else { return Ok(None) };
        let bad = || Error::Config(format!("{} must be a list of non-negative integers, got {v}", self.key(key)));
        let list = v.as_array().ok_or_else(bad)?;
        list.iter().map(|x| x.as_u64().map(|n| n as usize).ok_or_else(bad)).collect::<Result<Vec<_>>>().map(Some)
    }

    /// A token id field that may be one integer or a list of them (`eos_token_id`).
    pub fn opt_id_list(&self, key: &str) -> Result<Option<Vec<u32>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .map(|n| Some(vec![n as u32]))
                .ok_or_else(|| Error::Config(format!("{} must be a token id, got {n}", self.key(key)))),
            Some(_) => Ok(self.opt_usize_list(key)?.map(|l| l.into_iter().map(|n| n as u32).collect())),
        }
    }
}

/// Looks a key up in the text config first, then at the top level, as transformers does for these configs.
pub(crate) fn first<'a, T>(
    objs: &[Obj<'a>],
    key: &str,
    read: impl Fn(&Obj<'a>, &str) -> Result<Option<T>>,
) -> Result<Option<T>> {
    for obj in objs {
        if let Some(v) = read(obj, key)? {
            return Ok(Some(v));
        }
    }
    Ok(None)
}
