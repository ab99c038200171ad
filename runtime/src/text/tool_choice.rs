//! `tool_choice` as SGLang interprets it for the glm45 parser.
//!
//! - `none`: tools are not rendered into the prompt and calls are not parsed (any markup stays content).
//! - `auto` (the default when tools are given): all tools are rendered and calls are parsed.
//! - `required` / `{"type": "function", "function": {"name": X}}`: calls are parsed; for a named choice only X is
//!   rendered. Constraining generation to the native `<tool_call>` grammar is the sampler's job, not done here.
use alloc::string::String;
use alloc::vec::Vec;

use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolChoice {
    None,
    Auto,
    Required,
    Function(String),
}

/// Request errors, worded as SGLang's 400 responses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolChoiceError {
    #[error("Tools cannot be empty if tool choice is set to required.")]
    RequiredWithoutTools,
    #[error("Tools cannot be empty if tool choice is set to a specific tool.")]
    NamedWithoutTools,
    #[error("Tool '{0}' not found in tools list.")]
    UnknownTool(String),
    #[error("Duplicate tool name '{0}' in tools list.")]
    DuplicateTool(String),
    #[error("Invalid tool_choice: {0}")]
    Invalid(String),
}

/// The function name of an OpenAI tool entry (`{"type": "function", "function": {"name"}}`).
pub fn tool_name(tool: &Value) -> Option<&str> {
    tool.get("function").unwrap_or(tool).get("name").and_then(Value::as_str)
}

impl ToolChoice {
    /// Reads and validates `tool_choice` against `tools`. Absent means `none` without tools and `auto` with them.
    pub fn from_request(tool_choice: Option<&Value>, tools: &[Value]) -> Result<Self, ToolChoiceError> {
        let mut seen: Vec<&str> = Vec::new();
        for name in tools.iter().filter_map(tool_name) {
            if seen.contains(&name) {
                return Err(ToolChoiceError::DuplicateTool(name.into()));
            }
            seen.push(name);
        }
        let choice = match tool_choice {
            None | Some(Value::Null) => {
                return Ok(if tools.is_empty() { ToolChoice::None } else { ToolChoice::Auto });
            }
            Some(Value::String(s)) => match s.as_str() {
                "none" => ToolChoice::None,
                "auto" => ToolChoice::Auto,
                "required" => ToolChoice::Required,
                other => return Err(ToolChoiceError::Invalid(other.into())),
            },
            Some(obj @ Value::Object(_)) => {
                match obj.get("function").and_then(|f| f.get("name")).and_then(Value::as_str) {
                    Some(name) => ToolChoice::Function(name.into()),
                    None => {
                        return Err(ToolChoiceError::Invalid(
                            "expected {\"type\": \"function\", \"function\": {\"name\": ...}}".into(),
                        ))
                    }
                }
            }
            Some(other) => return Err(ToolChoiceError::Invalid(alloc::format!("{other}"))),
        };
        match &choice {
            ToolChoice::Required if tools.is_empty() => Err(ToolChoiceError::RequiredWithoutTools),
            ToolChoice::Function(_) if tools.is_empty() => Err(ToolChoiceError::NamedWithoutTools),
            ToolChoice::Function(name) if !seen.contains(&name.as_str()) => {
                Err(ToolChoiceError::UnknownTool(name.clone()))
            }
            _ => Ok(choice),
        }
    }

    /// Whether the tool-call parser runs on the output.
    pub fn parses_calls(&self) -> bool {
        *self != ToolChoice::None
    }

    /// The tools to render into the prompt (`None` when the template should see no `tools` at all).
    pub fn tools_for_template(&self, tools: &[Value]) -> Option<Vec<Value>> {
        let chosen: Vec<Value> = match self {
            ToolChoice::None => return None,
            ToolChoice::Function(name) => tools.iter().filter(|t| tool_name(t) == Some(name)).cloned().collect(),
            _ => tools.to_vec(),
        };
        if chosen.is_empty() {
            None
        } else {
            Some(chosen)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_and_validation() {
        let tools = [
            json!({"type": "function", "function": {"name": "a"}}),
            json!({"type": "function", "function": {"name": "b"}}),
        ];
        assert_eq!(ToolChoice::from_request(None, &[]), Ok(ToolChoice::None));
        assert_eq!(ToolChoice::from_request(None, &tools), Ok(ToolChoice::Auto));
        assert_eq!(ToolChoice::from_request(Some(&json!("required")), &[]), Err(ToolChoiceError::RequiredWithoutTools));
        let named = json!({"type": "function", "function": {"name": "b"}});
        assert_eq!(ToolChoice::from_request(Some(&named), &tools), Ok(ToolChoice::Function("b".into())));
        assert_eq!(ToolChoice::Function("b".into()).tools_for_template(&tools).unwrap().len(), 1);
        let missing = json!({"type": "function", "function": {"name": "z"}});
        assert_eq!(ToolChoice::from_request(Some(&missing), &tools), Err(ToolChoiceError::UnknownTool("z".into())));
        assert_eq!(ToolChoice::None.tools_for_template(&tools), None);
        assert!(ToolChoice::from_request(Some(&json!("sometimes")), &tools).is_err());
        let dup = [tools[0].clone(), tools[0].clone()];
        assert_eq!(ToolChoice::from_request(None, &dup), Err(ToolChoiceError::DuplicateTool("a".into())));
    }
}
