use super::*;

fn complete(buf: &[u8]) -> (Request, usize) {
    match parse(buf, &Limits::default()) {
        Parsed::Complete { request, consumed } => (request, consumed),
        other => panic!("{other:?}"),
    }
}

#[test]
fn parses_a_request_with_a_body_and_leaves_the_next_one() {
    let buf = b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET /health HTTP/1.1\r\n\r\n";
    let (r, used) = complete(buf);
    assert_eq!(
        (r.method.as_str(), r.path(), r.body.as_slice(), r.keep_alive),
        ("POST", "/v1/chat/completions", &b"hello"[..], true)
    );
    assert_eq!(r.header("host"), Some("a"));
    let (next, _) = complete(&buf[used..]);
    assert_eq!(next.path(), "/health");
}

#[test]
fn partial_heads_and_bodies_wait_and_expect_continue_is_reported() {
    let limits = Limits::default();
    assert_eq!(parse(b"GET / HT", &limits), Parsed::Partial { continue_expected: false });
    let head = b"POST / HTTP/1.1\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\nabc";
    assert_eq!(parse(head, &limits), Parsed::Partial { continue_expected: true });
}

#[test]
fn limits_and_bad_framing_are_statuses() {
    let limits = Limits { max_header_bytes: 64, max_body_bytes: 10, max_headers: 4 };
    let status = |buf: &[u8]| match parse(buf, &limits) {
        Parsed::Error { status, .. } => status,
        other => panic!("{other:?}"),
    };
    assert_eq!(status(b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n"), 413);
    assert_eq!(status(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"), 411);
    assert_eq!(status(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"), 400);
    assert_eq!(status(b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"), 400);
    assert_eq!(status(b"G\x01T / HTTP/1.1\r\n\r\n"), 400);
    assert_eq!(status(&[b'a'; 100]), 431, "an endless method is an over-long head");
    let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
    long.extend([b'a'; 100]);
    assert_eq!(status(&long), 431);
    assert_eq!(status(b"GET / HTTP/1.1\r\na: 1\r\nb: 1\r\nc: 1\r\nd: 1\r\ne: 1\r\n\r\n"), 431);
}

#[test]
fn keep_alive_follows_version_and_connection_header() {
    assert!(!complete(b"GET / HTTP/1.0\r\n\r\n").0.keep_alive);
    assert!(complete(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").0.keep_alive);
    assert!(!complete(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").0.keep_alive);
}

#[test]
fn responses_and_chunks() {
    let r = Response::json(200, "{}");
    let bytes = String::from_utf8(r.to_bytes(true)).unwrap();
    assert!(bytes.starts_with("HTTP/1.1 200 OK\r\n") && bytes.ends_with("Content-Length: 2\r\n\r\n{}"), "{bytes}");
    assert_eq!(sse_event("[DONE]"), b"e\r\ndata: [DONE]\n\n\r\n");
    assert!(chunk(b"").is_empty());
    let head = String::from_utf8(r.stream_head(false)).unwrap();
    assert!(head.contains("Transfer-Encoding: chunked") && head.contains("Connection: close"));
}

/// Random bytes, and random cuts of valid requests, never panic and never consume more than they were given.
#[test]
fn random_input_never_panics() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let valid = b"POST /v1/completions HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc".to_vec();
    let limits = Limits { max_header_bytes: 256, max_body_bytes: 64, max_headers: 8 };
    for _ in 0..20_000 {
        let mut buf = valid.clone();
        for _ in 0..(next() % 6) {
            let i = (next() % buf.len() as u64) as usize;
            buf[i] = next() as u8;
        }
        buf.truncate((next() % (buf.len() as u64 + 1)) as usize);
        if let Parsed::Complete { consumed, .. } = parse(&buf, &limits) {
            assert!(consumed <= buf.len());
        }
    }
}
