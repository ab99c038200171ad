//! HTTP/1.1 framing without I/O: requests are parsed incrementally out of a connection's read buffer (pipelining
//! safe: exactly one request's bytes are consumed at a time), responses and SSE chunks are written into bytes.
//! Every limit is enforced before memory is committed to it, and bad input is an error status, never a panic.
use std::fmt::Write as _;

/// Limits the user can set (`--max-header-bytes`, `--max-body-bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_header_bytes: 16 * 1024, max_body_bytes: 64 * 1024 * 1024, max_headers: 64 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// Path and query as sent.
    pub target: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The path without the query string.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

/// What the parser found in the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed. `continue_expected` is set once the head is complete and the client sent
    /// `Expect: 100-continue`, so the server should answer `100 Continue` before the body arrives.
    Partial { continue_expected: bool },
    /// A whole request, which used the first `consumed` bytes of the buffer.
    Complete { request: Request, consumed: usize },
    /// The request cannot be served; answer with this status and close the connection.
    Error { status: u16, message: String },
}

fn error(status: u16, message: impl Into<String>) -> Parsed {
    Parsed::Error { status, message: message.into() }
}

/// Parses the first request in `buf`.
pub fn parse(buf: &[u8], limits: &Limits) -> Parsed {
    let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > limits.max_header_bytes {
                return error(431, format!("request headers exceed {} bytes", limits.max_header_bytes));
            }
            return Parsed::Partial { continue_expected: false };
        }
        Err(httparse::Error::TooManyHeaders) => return error(431, format!("more than {} headers", limits.max_headers)),
        Err(e) => return error(400, format!("malformed request: {e}")),
    };
    if head_len > limits.max_header_bytes {
        return error(431, format!("request headers exceed {} bytes", limits.max_header_bytes));
    }
    let method = req.method.unwrap_or_default().to_string();
    let target = req.path.unwrap_or_default().to_string();
    let version = req.version.unwrap_or(1);
    let mut list = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let Ok(value) = std::str::from_utf8(h.value) else {
            return error(400, format!("header {} is not valid UTF-8", h.name));
        };
        list.push((h.name.to_ascii_lowercase(), value.trim().to_string()));
    }
    let get = |name: &str| list.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    if get("transfer-encoding").is_some() {
        // Chunked request bodies are refused rather than half-supported; every OpenAI client sends a length.
        return error(411, "chunked request bodies are not supported; send Content-Length");
    }
    let lengths: Vec<&str> = list.iter().filter(|(n, _)| n == "content-length").map(|(_, v)| v.as_str()).collect();
    let length = match lengths.as_slice() {
        [] => 0,
        [one] => match one.parse::<usize>() {
            Ok(n) => n,
            Err(_) => return error(400, format!("invalid Content-Length {one:?}")),
        },
        // Disagreeing lengths are the classic request-smuggling vector.
        [first, rest @ ..] if rest.iter().all(|r| r == first) => match first.parse::<usize>() {
            Ok(n) => n,
            Err(_) => return error(400, format!("invalid Content-Length {first:?}")),
        },
        _ => return error(400, "conflicting Content-Length headers"),
    };
    if length > limits.max_body_bytes {
        return error(413, format!("request body of {length} bytes exceeds the limit of {}", limits.max_body_bytes));
    }
    let connection = get("connection").map(str::to_ascii_lowercase);
    let keep_alive = match connection.as_deref() {
        Some(c) if c.split(',').any(|t| t.trim() == "close") => false,
        Some(c) if c.split(',').any(|t| t.trim() == "keep-alive") => true,
        _ => version == 1,
    };
    let available = buf.len() - head_len;
    if available < length {
        let continue_expected = get("expect").is_some_and(|e| e.eq_ignore_ascii_case("100-continue"));
        return Parsed::Partial { continue_expected };
    }
    let body = buf[head_len..head_len + length].to_vec();
    Parsed::Complete {
        request: Request { method, target, headers: list, body, keep_alive },
        consumed: head_len + length,
    }
}

pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Response { status, headers: vec![("Content-Type".into(), "application/json".into())], body: body.into() }
    }

    pub fn text(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Response { status, headers: vec![("Content-Type".into(), content_type.into())], body: body.into() }
    }

    /// The whole response, with Content-Length.
    pub fn to_bytes(&self, keep_alive: bool) -> Vec<u8> {
        let mut head = self.head(keep_alive);
        let _ = write!(head, "Content-Length: {}\r\n\r\n", self.body.len());
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }

    /// The head of a streamed response (chunked transfer encoding); its body follows as [`chunk`]s and [`LAST_CHUNK`].
    pub fn stream_head(&self, keep_alive: bool) -> Vec<u8> {
        let mut head = self.head(keep_alive);
        head += "Transfer-Encoding: chunked\r\n\r\n";
        head.into_bytes()
    }

    fn head(&self, keep_alive: bool) -> String {
        let mut head = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (n, v) in &self.headers {
            let _ = write!(head, "{n}: {v}\r\n");
        }
        head += if keep_alive { "Connection: keep-alive\r\n" } else { "Connection: close\r\n" };
        head
    }
}

/// One chunk of a chunked body (empty data writes nothing: an empty chunk would end the body).
pub fn chunk(data: &[u8]) -> Vec<u8> {
    if data.is_empty() {
        return Vec::new();
    }
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// One server-sent event carrying `data` (a JSON object, or `[DONE]`).
pub fn sse_event(data: &str) -> Vec<u8> {
    chunk(format!("data: {data}\n\n").as_bytes())
}

#[cfg(test)]
mod tests;
