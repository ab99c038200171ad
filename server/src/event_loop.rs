//! The event loop: one thread, mio, many connections. Requests go to a [`Service`]; a reply that is not ready yet
//! ([`Later`]) is polled whenever the service wakes the loop through its [`mio::Waker`] (the engine does, after
//! each step). Dropping a connection drops its pending reply, which is how a disconnecting client aborts its
//! request.
use std::{
    collections::HashMap,
    io::{self, Read, Write},
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use mio::{
    net::{TcpListener, TcpStream},
    Events, Interest, Poll, Token, Waker,
};

use crate::http::{self, Limits, Parsed, Request, Response};

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub addr: SocketAddr,
    pub limits: Limits,
    pub max_connections: usize,
    /// A request's head and body must arrive within this (slowloris).
    pub request_timeout: Duration,
    /// An idle keep-alive connection is closed after this.
    pub idle_timeout: Duration,
}

/// Part of a reply that became ready.
pub enum Piece {
    /// The whole response.
    Full(Response),
    /// The head of a streamed response (its body is ignored); chunks follow.
    Head(Response),
    Chunk(Vec<u8>),
    /// The streamed body is complete.
    End,
}

/// A reply still being produced.
pub trait Later: Send {
    /// Appends the pieces ready now. The reply ends with [`Piece::Full`] or [`Piece::End`].
    fn poll(&mut self, out: &mut Vec<Piece>);
}

pub enum Reply {
    Now(Response),
    Later(Box<dyn Later>),
}

pub trait Service {
    fn handle(&mut self, request: Request) -> Reply;
}

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
/// How long a closing connection is drained for after its last response (see `Conn::lingering_since`).
const LINGER: Duration = Duration::from_secs(2);

enum State {
    /// Reading a request; `since` is when its first byte came.
    Reading {
        since: Option<Instant>,
        continue_sent: bool,
    },
    Waiting {
        reply: Box<dyn Later>,
        streaming: bool,
    },
}

struct Conn {
    stream: TcpStream,
    read: Vec<u8>,
    write: Vec<u8>,
    state: State,
    keep_alive: bool,
    /// Close once `write` is flushed.
    closing: bool,
    /// When the response before a close was flushed and the write side shut: the connection is then drained until
    /// the client closes (or [`LINGER`] passes), since closing with unread bytes (the rest of a refused body) makes
    /// the kernel reset the connection and the client can lose the response.
    lingering_since: Option<Instant>,
    last_active: Instant,
    writable_interest: bool,
}

pub struct Server {
    poll: Poll,
    listener: TcpListener,
    waker: Arc<Waker>,
    config: ServerConfig,
    conns: HashMap<Token, Conn>,
    next_token: usize,
}

fn error_json(status: u16, message: &str) -> Response {
    let kind = if status >= 500 { "internal_server_error" } else { "invalid_request_error" };
    let body = format!(
        "{{\"object\":\"error\",\"error\":{{\"message\":{},\"type\":\"{kind}\",\"param\":null,\"code\":{status}}}}}",
        json_string(message)
    );
    Response::json(status, body)
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Server {
    pub fn bind(config: ServerConfig) -> io::Result<Self> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(config.addr)?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        Ok(Server { poll, listener, waker, config, conns: HashMap::new(), next_token: 2 })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Wakes the loop from another thread so it polls pending replies.
    pub fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Serves until `shutdown` is set; then stops accepting, and returns once in-flight replies are written (or
    /// after `drain` at most).
    pub fn run(&mut self, service: &mut dyn Service, shutdown: &AtomicBool, drain: Duration) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut stopping: Option<Instant> = None;
        loop {
            if stopping.is_none() && shutdown.load(Ordering::Relaxed) {
                stopping = Some(Instant::now());
                self.poll.registry().deregister(&mut self.listener)?;
            }
            if let Some(t) = stopping {
                let busy = self.conns.values().any(|c| matches!(c.state, State::Waiting { .. }) || !c.write.is_empty());
                if !busy || t.elapsed() > drain {
                    return Ok(());
                }
            }
            match self.poll.poll(&mut events, Some(Duration::from_millis(50))) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept()?,
                    WAKER => self.poll_replies(),
                    token => self.on_ready(token, service),
                }
            }
            // Replies may have become ready without a wake-up (a service answering on its own clock).
            self.poll_replies();
            self.sweep_timeouts();
        }
    }

    fn accept(&mut self) -> io::Result<()> {
        loop {
            let (mut stream, _) = match self.listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Out of descriptors and the like: keep serving the connections we have.
                Err(_) => return Ok(()),
            };
            if self.conns.len() >= self.config.max_connections {
                let _ = stream.write_all(&error_json(503, "too many connections").to_bytes(false));
                continue;
            }
            let token = Token(self.next_token);
            self.next_token += 1;
            self.poll.registry().register(&mut stream, token, Interest::READABLE)?;
            self.conns.insert(
                token,
                Conn {
                    stream,
                    read: Vec::new(),
                    write: Vec::new(),
                    state: State::Reading { since: None, continue_sent: false },
                    keep_alive: true,
                    closing: false,
                    lingering_since: None,
                    last_active: Instant::now(),
                    writable_interest: false,
                },
            );
        }
    }

    fn on_ready(&mut self, token: Token, service: &mut dyn Service) {
        let Some(conn) = self.conns.get_mut(&token) else { return };
        let limit = self.config.limits.max_header_bytes + self.config.limits.max_body_bytes;
        let mut buf = [0u8; 16 * 1024];
        let mut closed = false;
        loop {
            match conn.stream.read(&mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => {
                    conn.last_active = Instant::now();
                    if let State::Reading { since, .. } = &mut conn.state {
                        since.get_or_insert(Instant::now());
                    }
                    if conn.lingering_since.is_some() {
                        continue; // drained: the response is sent
                    }
                    conn.read.extend_from_slice(&buf[..n]);
                    if conn.read.len() > limit {
                        break; // the parser reports the limit
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        if closed && conn.write.is_empty() {
            self.close(token);
            return;
        }
        self.process(token, service);
        self.flush(token);
    }

    /// Parses and dispatches every complete request in the read buffer while the connection is free.
    fn process(&mut self, token: Token, service: &mut dyn Service) {
        loop {
            let Some(conn) = self.conns.get_mut(&token) else { return };
            let State::Reading { continue_sent, .. } = &mut conn.state else { return };
            if conn.closing || conn.read.is_empty() {
                return;
            }
            match http::parse(&conn.read, &self.config.limits) {
                Parsed::Partial { continue_expected } => {
                    if continue_expected && !*continue_sent {
                        *continue_sent = true;
                        conn.write.extend_from_slice(http::CONTINUE);
                    }
                    return;
                }
                Parsed::Error { status, message } => {
                    conn.write.extend(error_json(status, &message).to_bytes(false));
                    conn.closing = true;
                    conn.read.clear();
                    return;
                }
                Parsed::Complete { request, consumed } => {
                    conn.read.drain(..consumed);
                    conn.keep_alive = request.keep_alive;
                    conn.state = State::Reading { since: None, continue_sent: false };
                    match service.handle(request) {
                        Reply::Now(r) => self.finish(token, r),
                        Reply::Later(reply) => {
                            conn.state = State::Waiting { reply, streaming: false };
                            self.poll_reply(token);
                        }
                    }
                }
            }
        }
    }

    fn finish(&mut self, token: Token, response: Response) {
        if let Some(conn) = self.conns.get_mut(&token) {
            conn.write.extend(response.to_bytes(conn.keep_alive));
            conn.closing |= !conn.keep_alive;
            conn.state = State::Reading { since: None, continue_sent: false };
        }
    }

    fn poll_replies(&mut self) {
        let waiting: Vec<Token> =
            self.conns.iter().filter(|(_, c)| matches!(c.state, State::Waiting { .. })).map(|(t, _)| *t).collect();
        for token in waiting {
            self.poll_reply(token);
            self.flush(token);
        }
    }

    fn poll_reply(&mut self, token: Token) {
        let Some(conn) = self.conns.get_mut(&token) else { return };
        let State::Waiting { reply, streaming } = &mut conn.state else { return };
        let mut pieces = Vec::new();
        reply.poll(&mut pieces);
        let mut done = false;
        for piece in pieces {
            match piece {
                Piece::Full(r) => {
                    conn.write.extend(r.to_bytes(conn.keep_alive));
                    done = true;
                }
                Piece::Head(r) => {
                    conn.write.extend(r.stream_head(conn.keep_alive));
                    *streaming = true;
                }
                Piece::Chunk(data) => conn.write.extend(http::chunk(&data)),
                Piece::End => {
                    conn.write.extend_from_slice(http::LAST_CHUNK);
                    done = true;
                }
            }
        }
        if done {
            conn.closing |= !conn.keep_alive;
            conn.state = State::Reading { since: None, continue_sent: false };
            conn.last_active = Instant::now();
        }
    }

    fn flush(&mut self, token: Token) {
        let Some(conn) = self.conns.get_mut(&token) else { return };
        while !conn.write.is_empty() {
            match conn.stream.write(&conn.write) {
                Ok(0) => break,
                Ok(n) => {
                    conn.write.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.close(token);
                    return;
                }
            }
        }
        let want_write = !conn.write.is_empty();
        if want_write != conn.writable_interest {
            let interest = if want_write { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            let _ = self.poll.registry().reregister(&mut conn.stream, token, interest);
            conn.writable_interest = want_write;
        }
        if conn.write.is_empty() && conn.closing && conn.lingering_since.is_none() {
            let _ = conn.stream.shutdown(std::net::Shutdown::Write);
            conn.lingering_since = Some(Instant::now());
        }
    }

    fn sweep_timeouts(&mut self) {
        let now = Instant::now();
        let mut late = Vec::new();
        for (t, c) in &self.conns {
            if let Some(since) = c.lingering_since {
                if now - since > LINGER {
                    late.push((*t, false));
                }
                continue;
            }
            if let State::Reading { since, .. } = c.state {
                if since.is_some_and(|s| now - s > self.config.request_timeout) {
                    late.push((*t, true));
                } else if c.read.is_empty() && c.write.is_empty() && now - c.last_active > self.config.idle_timeout {
                    late.push((*t, false));
                }
            }
        }
        for (token, timed_out) in late {
            if timed_out {
                if let Some(conn) = self.conns.get_mut(&token) {
                    conn.write.extend(error_json(408, "the request did not arrive in time").to_bytes(false));
                    conn.closing = true;
                    conn.read.clear();
                }
                self.flush(token);
            } else {
                self.close(token);
            }
        }
    }

    fn close(&mut self, token: Token) {
        if let Some(mut conn) = self.conns.remove(&token) {
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
    }
}

#[cfg(test)]
mod tests;
