//! Mutation fuzzing of what clients control: HTTP framing and the JSON request bodies. Valid seeds are mutated
//! (byte flips, inserts of tokens that stress parsers, deletions, duplications, truncations) for a bounded time
//! (`GLMV_FUZZ_SECONDS`, default 5); every input must give a result or a 4xx error, never a panic, and framing
//! results must be self-consistent. Deterministic per seed, so a failure prints the input that caused it.
use std::time::{Duration, Instant};

use glmv_server::{
    http::{parse, Limits, Parsed},
    openai::request::{ChatRequest, CompletionRequest},
};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const TOKENS: &[&str] = &[
    "\r\n",
    "\r\n\r\n",
    "\n",
    ":",
    " ",
    "Content-Length: ",
    "Content-Length: 99999999999999999999999\r\n",
    "Content-Length: -1\r\n",
    "Content-Length: 5\r\nContent-Length: 6\r\n",
    "Transfer-Encoding: chunked\r\n",
    "Expect: 100-continue\r\n",
    "Connection: close\r\n",
    "\0",
    "\u{fffd}",
    "{",
    "}",
    "[",
    "]",
    "\"",
    "\\",
    "\\u0000",
    "\\ud800",
    "null",
    "true",
    "-1",
    "1e999",
    "0.0",
    "18446744073709551616",
    ",",
    "\"messages\":",
    "\"content\":",
    "\"image_url\":",
    "{\"url\":\"data:image/png;base64,",
    "\"n\":",
    "\"tools\":",
    "\"stop\":",
    "\"logit_bias\":{\"1\":",
    "\"tool_choice\":",
    "\"extra_body\":",
    "\"stream_options\":",
];

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..1 + rng.below(6) {
        let at = rng.below(data.len() + 1);
        match rng.below(6) {
            0 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            1 => {
                let t = TOKENS[rng.below(TOKENS.len())].as_bytes();
                data.splice(at..at, t.iter().copied());
            }
            2 if !data.is_empty() => {
                let end = (at + rng.below(16)).min(data.len());
                data.drain(at.min(end)..end);
            }
            3 if at < data.len() => {
                let end = (at + rng.below(64)).min(data.len());
                let copy = data[at..end].to_vec();
                data.splice(at..at, copy);
            }
            4 => data.truncate(at),
            _ => data.insert(at, rng.next() as u8),
        }
    }
    data
}

fn budget() -> Duration {
    let secs = std::env::var("GLMV_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5.0);
    Duration::from_secs_f64(secs)
}

fn check_framing(buf: &[u8], limits: &Limits) {
    match parse(buf, limits) {
        Parsed::Partial { .. } => {}
        Parsed::Complete { request, consumed } => {
            assert!(consumed > 0 && consumed <= buf.len(), "consumed {consumed} of {}: {buf:?}", buf.len());
            assert!(request.body.len() <= limits.max_body_bytes, "{buf:?}");
        }
        Parsed::Error { status, .. } => assert!((400..=505).contains(&status), "status {status}: {buf:?}"),
    }
}

const BODIES: &[&str] = &[
    r#"{"model":"m","messages":[{"role":"user","content":"Hi"}],"max_tokens":8,"temperature":0.5,"stream":true,"stream_options":{"include_usage":true}}"#,
    r#"{"messages":[{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"x"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]}],"n":2,"stop":["a","b"],"logit_bias":{"5":1.5},"seed":3}"#,
    r#"{"messages":[{"role":"user","content":"q"},{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]},{"role":"tool","tool_call_id":"c","content":"r"}],"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}],"tool_choice":{"type":"function","function":{"name":"f"}},"chat_template_kwargs":{"enable_thinking":false}}"#,
];

#[test]
fn http_framing_never_panics() {
    let limits = Limits { max_header_bytes: 2048, max_body_bytes: 4096, max_headers: 16 };
    let mut seeds: Vec<Vec<u8>> = BODIES
        .iter()
        .map(|b| format!("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}", b.len()).into_bytes())
        .collect();
    seeds.push(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/models HTTP/1.1\r\n\r\n".to_vec());
    seeds.push(b"POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec());
    // Every prefix of a valid request is a partial request or the request.
    for seed in &seeds {
        for end in 0..=seed.len() {
            check_framing(&seed[..end], &limits);
        }
    }
    let (start, mut rng, mut n) = (Instant::now(), Rng(0x5eed), 0u64);
    while start.elapsed() < budget() {
        let seed = &seeds[rng.below(seeds.len())];
        check_framing(&mutate(&mut rng, seed), &limits);
        n += 1;
    }
    println!("{n} mutated HTTP requests");
    assert!(n > 1000);
}

#[test]
fn request_json_never_panics() {
    let (start, mut rng, mut n) = (Instant::now(), Rng(0xfeed), 0u64);
    let mut accepted = 0;
    while start.elapsed() < budget() {
        let seed = BODIES[rng.below(BODIES.len())].as_bytes();
        let body = if n < BODIES.len() as u64 { seed.to_vec() } else { mutate(&mut rng, seed) };
        for result in [ChatRequest::parse(&body, 512).map(|_| ()), CompletionRequest::parse(&body, 512).map(|_| ())] {
            match result {
                Ok(()) => accepted += 1,
                Err(e) => assert!((400..500).contains(&e.status), "{e}: {}", String::from_utf8_lossy(&body)),
            }
        }
        n += 1;
    }
    println!("{n} mutated bodies, {accepted} parses accepted");
    assert!(n > 1000 && accepted >= BODIES.len());
}
