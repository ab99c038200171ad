//! Load on loopback: 1,000 concurrent streaming chats on the demo model while 200 slowloris connections trickle
//! half a request head. Every chat must complete, the slowloris connections must be cut by the request timeout,
//! and afterwards no slot, KV block or file descriptor may be left behind.
mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use common::server::{get, parse_response, ServerProcess};

const STREAMS: usize = 1000;
const SLOWLORIS: usize = 200;

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

fn metric(body: &str, name: &str) -> f64 {
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in metrics"))
}

#[test]
fn thousand_streams_and_slowloris() {
    let server = ServerProcess::start(
        None,
        &["--enable-metrics", "--max-connections", "2000", "--request-timeout", "3", "--max-running-requests", "64"],
    );
    let addr = server.addr.clone();
    // Warm up (first-touch allocations), then take the baseline.
    assert_eq!(get(&addr, "/health_generate").status, 200);
    std::thread::sleep(Duration::from_millis(200));
    let fds_before = open_fds(server.pid());

    let slow: Vec<TcpStream> = (0..SLOWLORIS)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Le").unwrap();
            s
        })
        .collect();

    let start = Instant::now();
    let body = r#"{"messages":[{"role":"user","content":"Tell me a story"}],"max_tokens":6,"stream":true,"stream_options":{"include_usage":true}}"#;
    let workers: Vec<_> = (0..STREAMS)
        .map(|i| {
            let addr = addr.clone();
            std::thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || {
                    let mut s = TcpStream::connect(&addr).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
                    let req = format!(
                        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    s.write_all(req.as_bytes()).unwrap();
                    let mut raw = Vec::new();
                    s.read_to_end(&mut raw).unwrap();
                    let r = parse_response(&raw);
                    assert_eq!(r.status, 200, "stream {i}: {}", r.body);
                    let chunks = r.chunks();
                    let usage = &chunks.last().unwrap()["usage"];
                    usage["completion_tokens"].as_u64().unwrap()
                })
                .unwrap()
        })
        .collect();
    let tokens: u64 = workers.into_iter().map(|w| w.join().expect("a stream failed")).sum();
    let elapsed = start.elapsed();
    println!("{STREAMS} streams, {tokens} tokens in {:.2}s", elapsed.as_secs_f64());
    assert!(tokens >= STREAMS as u64);

    // The slowloris connections were answered 408 and closed once the request timeout passed.
    std::thread::sleep(Duration::from_secs(3).saturating_sub(start.elapsed()));
    for mut s in slow {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        assert!(raw.starts_with(b"HTTP/1.1 408"), "slowloris got {:?}", String::from_utf8_lossy(&raw));
    }

    // Nothing leaked: no running or queued sequence, no KV block in use, descriptors back to the baseline.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = get(&addr, "/metrics").body;
        let idle = metric(&m, "sglang:num_running_reqs") == 0.0
            && metric(&m, "sglang:num_queue_reqs") == 0.0
            && metric(&m, "sglang:kv_used_tokens") == 0.0;
        let fds = open_fds(server.pid());
        if idle && fds <= fds_before {
            assert_eq!(metric(&m, "sglang:num_requests_total"), (STREAMS + 1) as f64);
            break;
        }
        assert!(Instant::now() < deadline, "leak: fds {fds} (before {fds_before}), metrics:\n{m}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
