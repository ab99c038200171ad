use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream as StdStream,
    sync::{atomic::AtomicUsize, Mutex},
    thread,
};

use super::*;

/// Echoes bodies; `/stream` answers three SSE events released one per wake-up; `/slow` answers when woken.
struct TestService {
    dropped: Arc<AtomicUsize>,
    ticks: Arc<Mutex<u32>>,
}

struct Streamer {
    sent: u32,
    ticks: Arc<Mutex<u32>>,
    dropped: Arc<AtomicUsize>,
    started: bool,
}

impl Later for Streamer {
    fn poll(&mut self, out: &mut Vec<Piece>) {
        if !self.started {
            self.started = true;
            out.push(Piece::Head(Response::text(200, "text/event-stream", "")));
        }
        let ticks = *self.ticks.lock().unwrap();
        while self.sent < ticks.min(3) {
            self.sent += 1;
            out.push(Piece::Chunk(format!("data: {}\n\n", self.sent).into_bytes()));
        }
        if self.sent == 3 {
            out.push(Piece::End);
        }
    }
}

impl Drop for Streamer {
    fn drop(&mut self) {
        self.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

impl Service for TestService {
    fn handle(&mut self, request: Request) -> Reply {
        match request.path() {
            "/stream" => {
                *self.ticks.lock().unwrap() = 0;
                Reply::Later(Box::new(Streamer {
                    sent: 0,
                    ticks: self.ticks.clone(),
                    dropped: self.dropped.clone(),
                    started: false,
                }))
            }
            _ => Reply::Now(Response::text(200, "text/plain", request.body)),
        }
    }
}

/// The running test server: address, waker, stop flag, dropped-reply count, stream ticks, thread.
type Running = (SocketAddr, Arc<Waker>, Arc<AtomicBool>, Arc<AtomicUsize>, Arc<Mutex<u32>>, thread::JoinHandle<()>);

fn start() -> Running {
    let config = ServerConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        limits: Limits { max_header_bytes: 1024, max_body_bytes: 1024, max_headers: 32 },
        max_connections: 64,
        request_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_secs(5),
    };
    let mut server = Server::bind(config).unwrap();
    let addr = server.local_addr().unwrap();
    let waker = server.waker();
    let stop = Arc::new(AtomicBool::new(false));
    let dropped = Arc::new(AtomicUsize::new(0));
    let ticks = Arc::new(Mutex::new(0));
    let (s, d, t) = (stop.clone(), dropped.clone(), ticks.clone());
    let handle = thread::spawn(move || {
        let mut service = TestService { dropped: d, ticks: t };
        server.run(&mut service, &s, Duration::from_secs(1)).unwrap();
    });
    (addr, waker, stop, dropped, ticks, handle)
}

fn read_response(r: &mut BufReader<StdStream>) -> (String, Vec<u8>) {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        head += &line;
        if line == "\r\n" {
            break;
        }
    }
    let len: usize =
        head.lines().find_map(|l| l.strip_prefix("Content-Length: ")).map(|v| v.trim().parse().unwrap()).unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).unwrap();
    (head, body)
}

#[test]
fn keep_alive_pipelining_limits_streams_timeouts_and_shutdown() {
    let (addr, waker, stop, dropped, ticks, handle) = start();

    // Two pipelined requests on one keep-alive connection, answered in order.
    let mut c = StdStream::connect(addr).unwrap();
    c.write_all(b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nonePOST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\ntwo")
        .unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    assert_eq!(read_response(&mut r).1, b"one");
    assert_eq!(read_response(&mut r).1, b"two");

    // Expect: 100-continue gets its interim response before the body is sent.
    c.write_all(b"POST /c HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n").unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "HTTP/1.1 100 Continue\r\n");
    r.read_line(&mut line).unwrap();
    c.write_all(b"body").unwrap();
    assert_eq!(read_response(&mut r).1, b"body");

    // Over the body limit: 413 in OpenAI's error shape, then the connection closes.
    c.write_all(b"POST /d HTTP/1.1\r\nContent-Length: 5000\r\n\r\n").unwrap();
    let (head, body) = read_response(&mut r);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(String::from_utf8(body).unwrap().contains("\"code\":413"));

    // A streamed reply: chunks arrive as the service is woken.
    let mut s = StdStream::connect(addr).unwrap();
    s.write_all(b"GET /stream HTTP/1.1\r\n\r\n").unwrap();
    let mut sr = BufReader::new(s.try_clone().unwrap());
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        sr.read_line(&mut head).unwrap();
    }
    assert!(head.contains("Transfer-Encoding: chunked"), "{head}");
    for i in 1..=3 {
        *ticks.lock().unwrap() = i;
        waker.wake().unwrap();
        let mut size = String::new();
        sr.read_line(&mut size).unwrap();
        let mut data = String::new();
        sr.read_line(&mut data).unwrap();
        assert_eq!(data, format!("data: {i}\n"));
        let mut rest = String::new();
        sr.read_line(&mut rest).unwrap(); // blank line of the event
        sr.read_line(&mut rest).unwrap(); // chunk CRLF
    }
    let mut last = String::new();
    sr.read_line(&mut last).unwrap();
    assert_eq!(last, "0\r\n");

    // A client that disconnects mid-stream drops its pending reply at once.
    let before = dropped.load(Ordering::SeqCst);
    let mut gone = StdStream::connect(addr).unwrap();
    gone.write_all(b"GET /stream HTTP/1.1\r\n\r\n").unwrap();
    thread::sleep(Duration::from_millis(100));
    drop(gone);
    let deadline = Instant::now() + Duration::from_secs(5);
    while dropped.load(Ordering::SeqCst) == before {
        assert!(Instant::now() < deadline, "pending reply not dropped on disconnect");
        thread::sleep(Duration::from_millis(10));
    }

    // Slowloris: a head that never completes gets 408 and is closed.
    let mut slow = StdStream::connect(addr).unwrap();
    slow.write_all(b"POST /e HTTP/1.1\r\nContent-Le").unwrap();
    let mut reply = String::new();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = slow.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");

    stop.store(true, Ordering::Relaxed);
    waker.wake().unwrap();
    handle.join().unwrap();
}
