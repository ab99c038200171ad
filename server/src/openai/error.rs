//! Errors in OpenAI's JSON shape (`{"error": {"message", "type", "param", "code"}}`, what the SDKs parse), each
//! with the status a client can act on: 400 for a request it must fix, 401 for a key, 404 for an unknown model or
//! path, 413 for a body or media over a limit, 422 for media that cannot be fetched, 503 while the server cannot
//! take work, 500 only for bugs.
use serde_json::json;

use crate::http::Response;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    /// The request field at fault, when there is one (`messages[1].content[0].image_url`).
    pub param: Option<String>,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), param: None }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }

    /// A field with the wrong type or value.
    pub fn invalid_field(param: &str, message: impl std::fmt::Display) -> Self {
        ApiError { status: 400, message: format!("{param}: {message}"), param: Some(param.to_string()) }
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// OpenAI's error `type` for the status.
    pub fn kind(&self) -> &'static str {
        match self.status {
            400 | 413 | 422 => "invalid_request_error",
            401 => "authentication_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            503 => "service_unavailable_error",
            _ => "internal_server_error",
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "object": "error",
            "error": {"message": self.message, "type": self.kind(), "param": self.param, "code": self.status},
        })
    }

    pub fn to_response(&self) -> Response {
        Response::json(self.status, self.to_json().to_string())
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}
