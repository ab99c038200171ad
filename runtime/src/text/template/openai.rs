//! OpenAI chat `messages` -> the messages HF chat templates expect.
//!
//! Templates were written for transformers' message format, not OpenAI's wire format:
//! - content parts `{"type": "image_url", "image_url": {"url": U}}` become `{"type": "image", "image": U}` and
//!   `video_url` becomes `{"type": "video", "video": U}` (GLM's template tests `type == 'image'` or an `image`
//!   key); text parts pass through;
//! - `tool_calls[].function.arguments`, a JSON *string* on the wire, becomes the mapping templates iterate with
//!   `.items()`; it must be a JSON object (SGLang's 400 messages); an empty string means no arguments;
//! - role `developer` (OpenAI's newer name for system) becomes `system`, since templates only know `system`.
//!
//! Everything else (`reasoning_content`/`reasoning`, `name`, `tool_call_id`, unknown keys) passes through; the
//! renderer then applies transformers' own normalisation (see [`super::ChatTemplate::render`]).
use serde_json::{Map, Value};

use super::TemplateError;

/// Converts an OpenAI `messages` array.
pub fn to_template_messages(messages: &[Value]) -> Result<Vec<Value>, TemplateError> {
    messages.iter().enumerate().map(|(i, m)| convert_message(i, m)).collect()
}

fn convert_message(index: usize, message: &Value) -> Result<Value, TemplateError> {
    let bad = |why: &str| TemplateError::InvalidMessage { index, reason: why.into() };
    let Value::Object(fields) = message else { return Err(bad("a message must be an object")) };
    let mut out = Map::new();
    for (key, value) in fields {
        let value = match key.as_str() {
            "role" => {
                let role = value.as_str().ok_or_else(|| bad("role must be a string"))?;
                let role = role.to_ascii_lowercase();
                Value::String(if role == "developer" { "system".into() } else { role })
            }
            "content" => match value {
                Value::Array(parts) => Value::Array(
                    parts.iter().map(|p| convert_part(p).map_err(|why| bad(&why))).collect::<Result<_, _>>()?,
                ),
                other => other.clone(),
            },
            "tool_calls" => match value {
                Value::Array(calls) => {
                    Value::Array(calls.iter().map(|c| convert_tool_call(c).map_err(bad)).collect::<Result<_, _>>()?)
                }
                Value::Null => Value::Null,
                _ => return Err(bad("tool_calls must be an array")),
            },
            _ => value.clone(),
        };
        out.insert(key.clone(), value);
    }
    if !out.contains_key("role") {
        return Err(bad("missing role"));
    }
    Ok(Value::Object(out))
}

fn convert_part(part: &Value) -> Result<Value, String> {
    let kind = part.get("type").and_then(Value::as_str);
    let media = |field: &str, as_type: &str| -> Result<Value, String> {
        let url = match part.get(field) {
            Some(Value::String(url)) => url.clone(),
            Some(obj) => {
                obj.get("url").and_then(Value::as_str).ok_or_else(|| format!("{field}.url is missing"))?.into()
            }
            None => return Err(format!("{field} part without {field}")),
        };
        let mut m = Map::new();
        m.insert("type".into(), as_type.into());
        m.insert(as_type.into(), url.into());
        Ok(Value::Object(m))
    };
    match kind {
        Some("image_url") => media("image_url", "image"),
        Some("video_url") => media("video_url", "video"),
        Some("text" | "image" | "video") => Ok(part.clone()),
        Some(other) => Err(format!("unsupported content part type {other:?}")),
        None => Err("content part without a type".into()),
    }
}

fn convert_tool_call(call: &Value) -> Result<Value, &'static str> {
    let mut call = call.clone();
    let Some(function) = call.get_mut("function").and_then(Value::as_object_mut) else {
        return Err("Assistant tool call must have a function object.");
    };
    if let Some(Value::String(text)) = function.get("arguments") {
        let parsed = if text.trim().is_empty() {
            Value::Object(Map::new())
        } else {
            serde_json::from_str::<Value>(text)
                .map_err(|_| "Assistant tool call function.arguments must be valid JSON.")?
        };
        if !parsed.is_object() {
            return Err("Assistant tool call function.arguments must be a JSON object.");
        }
        function.insert("arguments".into(), parsed);
    }
    Ok(call)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn maps_parts_and_arguments() {
        let msgs = [
            json!({"role": "developer", "content": "be brief"}),
            json!({"role": "user", "content": [
                {"type": "text", "text": "what is this"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}},
                {"type": "video_url", "video_url": {"url": "file:///v.mp4"}}]}),
            json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"b\": 1, \"a\": [2]}"}}]}),
        ];
        let out = to_template_messages(&msgs).unwrap();
        assert_eq!(out[0]["role"], "system");
        assert_eq!(out[1]["content"][1], json!({"type": "image", "image": "data:image/png;base64,AA"}));
        assert_eq!(out[1]["content"][2], json!({"type": "video", "video": "file:///v.mp4"}));
        let args = &out[2]["tool_calls"][0]["function"]["arguments"];
        assert_eq!(args, &json!({"b": 1, "a": [2]}));
        // Key order survives (the template prints arguments in order).
        assert_eq!(args.as_object().unwrap().keys().collect::<Vec<_>>(), ["b", "a"]);
    }

    #[test]
    fn rejects_bad_input() {
        let bad_args = json!({"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}]});
        let err = to_template_messages(&[bad_args]).unwrap_err();
        assert!(err.to_string().contains("must be a JSON object"), "{err}");
        let bad_json = json!({"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{"}}]});
        assert!(to_template_messages(&[bad_json]).unwrap_err().to_string().contains("valid JSON"));
        assert!(to_template_messages(&[json!({"content": "x"})]).is_err());
        assert!(to_template_messages(&[json!({"role": "user", "content": [{"type": "input_audio"}]})]).is_err());
        assert!(to_template_messages(&[json!("hi")]).is_err());
    }
}
