//! A minimal HTTP/1.1 client for the benchmark: one connection per request (`Connection: close`), the request
//! written in one piece with Nagle off, and the response body handed over as soon as bytes arrive (chunked transfer
//! decoding included). General-purpose clients buffer streamed bodies (ureq fills a 128 KiB buffer before returning
//! data), which would move every token of a short stream to its end and make ITL and TPOT meaningless.
use std::{
    io::{self, BufRead, BufReader, Read, Write},
    net::{TcpStream, ToSocketAddrs},
    time::Duration,
};

/// `http://host[:port]` split into what a connection needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub host: String,
    pub port: u16,
}

impl Origin {
    /// The origin of a base URL; only plain `http://` is supported.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!("{url}: glmv bench speaks plain http:// (run it next to the server, or through a plain-HTTP port)")
        })?;
        let authority = rest.split('/').next().unwrap_or_default();
        // A bracketed IPv6 address without a port ends in ']'; its colons are not a port separator.
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !authority.ends_with(']') => {
                (h, p.parse::<u16>().map_err(|_| format!("{url}: bad port {p:?}"))?)
            }
            _ => (authority, 80),
        };
        if host.is_empty() {
            return Err(format!("{url}: no host"));
        }
        Ok(Origin { host: host.trim_start_matches('[').trim_end_matches(']').to_string(), port })
    }
}

/// A response whose body is read as it arrives.
pub struct Response {
    pub status: u16,
    pub body: Box<dyn BufRead + Send>,
}

impl Response {
    pub fn text(mut self) -> io::Result<String> {
        let mut s = String::new();
        self.body.read_to_string(&mut s)?;
        Ok(s)
    }
}

/// Sends one request; `timeout` bounds connecting and each read (None: reads wait forever).
pub fn request(
    origin: &Origin,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Option<Duration>,
) -> io::Result<Response> {
    let addr = (origin.host.as_str(), origin.port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{} does not resolve", origin.host)))?;
    let stream = TcpStream::connect_timeout(&addr, timeout.unwrap_or(Duration::from_secs(10)))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(timeout)?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}:{}\r\nConnection: close\r\nContent-Length: {}\r\n",
        origin.host,
        origin.port,
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut message = head.into_bytes();
    message.extend_from_slice(body);
    (&stream).write_all(&message)?;
    read_response(BufReader::new(stream))
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn read_response<R: BufRead + Send + 'static>(mut reader: R) -> io::Result<Response> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| invalid(format!("not an HTTP response: {:?}", line.trim_end())))?;
    let (mut chunked, mut length) = (false, None);
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(invalid("the connection closed inside the response headers"));
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
                chunked = true;
            } else if name.eq_ignore_ascii_case("content-length") {
                length = Some(value.parse::<u64>().map_err(|_| invalid("bad Content-Length"))?);
            }
        }
    }
    let body: Box<dyn BufRead + Send> = if chunked {
        Box::new(BufReader::new(Chunked { inner: reader, left: 0, done: false }))
    } else if let Some(n) = length {
        Box::new(reader.take(n))
    } else {
        Box::new(reader)
    };
    Ok(Response { status, body })
}

/// Decodes `Transfer-Encoding: chunked`, returning each piece as soon as it is read.
struct Chunked<R> {
    inner: R,
    left: u64,
    done: bool,
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let mut size = String::new();
            self.inner.read_line(&mut size)?;
            let hex = size.trim().split(';').next().unwrap_or_default();
            self.left = u64::from_str_radix(hex, 16).map_err(|_| invalid(format!("bad chunk size {hex:?}")))?;
            if self.left == 0 {
                self.done = true;
                return Ok(0);
            }
        }
        let want = buf.len().min(self.left as usize);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the connection closed inside a chunk"));
        }
        self.left -= n as u64;
        if self.left == 0 {
            let mut crlf = [0u8; 2];
            self.inner.read_exact(&mut crlf)?;
            if &crlf != b"\r\n" {
                return Err(invalid("a chunk is longer than its size says"));
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &'static [u8]) -> io::Result<Response> {
        read_response(BufReader::new(raw))
    }

    #[test]
    fn origins() {
        assert_eq!(Origin::parse("http://127.0.0.1:30000"), Ok(Origin { host: "127.0.0.1".into(), port: 30000 }));
        assert_eq!(Origin::parse("http://example.com/v1"), Ok(Origin { host: "example.com".into(), port: 80 }));
        assert_eq!(Origin::parse("http://[::1]:8080/"), Ok(Origin { host: "::1".into(), port: 8080 }));
        assert_eq!(Origin::parse("http://[::1]/v1"), Ok(Origin { host: "::1".into(), port: 80 }));
        assert!(Origin::parse("https://example.com").unwrap_err().contains("plain http://"));
        assert!(Origin::parse("http://h:x").is_err());
    }

    #[test]
    fn chunked_and_sized_bodies() {
        let r =
            parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7;x=1\r\n, world\r\n0\r\n\r\n");
        let r = r.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text().unwrap(), "hello, world");
        let r = parse(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 4\r\n\r\nnopeEXTRA").unwrap();
        assert_eq!((r.status, r.text().unwrap().as_str()), (400, "nope"));
        assert!(parse(b"garbage\r\n\r\n").is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Le").is_err());
        let cut = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nabc").unwrap();
        assert!(cut.text().is_err());
        let bad = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").unwrap();
        assert!(bad.text().is_err());
    }

    #[test]
    fn sse_lines_arrive_one_by_one() {
        // The body is handed over per chunk: the first line is readable before the rest exists.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let origin = Origin { host: "127.0.0.1".into(), port: listener.local_addr().unwrap().port() };
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = [0u8; 4096];
            let _ = s.read(&mut req).unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n8\r\ndata: 1\n\r\n").unwrap();
            rx.recv().unwrap();
            s.write_all(b"8\r\ndata: 2\n\r\n0\r\n\r\n").unwrap();
        });
        let mut r = request(&origin, "POST", "/x", &[("Content-Type", "application/json")], b"{}", None).unwrap();
        let mut line = String::new();
        r.body.read_line(&mut line).unwrap();
        assert_eq!(line, "data: 1\n");
        tx.send(()).unwrap();
        line.clear();
        r.body.read_line(&mut line).unwrap();
        assert_eq!(line, "data: 2\n");
        server.join().unwrap();
    }
}
