//! `glmv serve` end to end over HTTP: the real binary, the real engine, and a crafted checkpoint whose greedy
//! output is known (tests/common/crafted.rs), so reasoning and tool calls come out of the model itself.
mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::PathBuf,
    time::Duration,
};

use common::{
    crafted::{self, ANSWER, ARG_KEY, ARG_VALUE, REASONING, TOOL},
    fixtures_root,
    server::{get, post_json, request, ServerProcess},
};
use serde_json::{json, Value};

fn crafted_model() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("glmv-crafted-{}", std::process::id()));
    // Several tests share one directory; writing it is idempotent, and a rename keeps readers from a torn file.
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let tmp = dir.with_extension("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        crafted::write_crafted_checkpoint(&fixtures_root().join("moe_bf16/checkpoint"), &tmp);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir).unwrap();
    });
    dir
}

fn start(extra: &[&str]) -> ServerProcess {
    let mut args = vec!["--reasoning-parser", "glm45", "--tool-call-parser", "glm45", "--enable-metrics"];
    args.extend_from_slice(extra);
    ServerProcess::start(Some(&crafted_model()), &args)
}

fn weather_tool() -> Value {
    json!([{"type": "function", "function": {"name": TOOL, "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {ARG_KEY: {"type": "string"}}, "required": [ARG_KEY]}}}])
}

fn chat(messages: Value) -> Value {
    json!({"model": "default", "messages": messages, "temperature": 0, "max_tokens": 40})
}

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

/// Concatenates a chat stream's deltas into (reasoning, content, tool calls, finish_reason).
fn assemble(chunks: &[Value], index: usize) -> (String, String, Vec<Value>, Option<String>) {
    let (mut reasoning, mut content, mut calls, mut finish) = (String::new(), String::new(), Vec::<Value>::new(), None);
    for c in chunks {
        for choice in c["choices"].as_array().unwrap() {
            if choice["index"] != index {
                continue;
            }
            let d = &choice["delta"];
            reasoning += d["reasoning_content"].as_str().unwrap_or("");
            content += d["content"].as_str().unwrap_or("");
            for call in d["tool_calls"].as_array().into_iter().flatten() {
                let i = call["index"].as_u64().unwrap() as usize;
                if calls.len() <= i {
                    calls.push(json!({"id": call["id"], "name": call["function"]["name"], "arguments": ""}));
                }
                let args = calls[i]["arguments"].as_str().unwrap().to_string()
                    + call["function"]["arguments"].as_str().unwrap_or("");
                calls[i]["arguments"] = args.into();
            }
            if let Some(f) = choice["finish_reason"].as_str() {
                finish = Some(f.to_string());
            }
        }
    }
    (reasoning, content, calls, finish)
}

#[test]
fn reasoning_and_tool_calls_come_from_the_model() {
    let server = start(&[]);
    let a = &server.addr;
    // Thinking on (the default), tools given: reasoning, then a parsed call.
    let mut body = chat(user("Weather in Paris?"));
    body["tools"] = weather_tool();
    let r = post_json(a, "/v1/chat/completions", &body);
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let choice = &v["choices"][0];
    assert_eq!(choice["message"]["reasoning_content"], REASONING);
    assert_eq!(choice["finish_reason"], "tool_calls");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], TOOL);
    let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({ARG_KEY: ARG_VALUE}));
    assert!(choice["message"]["content"].is_null() || choice["message"]["content"] == "", "{v}");
    // <think>, He, llo, </think>.
    assert_eq!(v["usage"]["reasoning_tokens"], 4);
    assert_eq!(v["usage"]["completion_tokens_details"]["reasoning_tokens"], 4);
    assert_eq!(
        v["usage"]["total_tokens"],
        v["usage"]["prompt_tokens"].as_u64().unwrap() + v["usage"]["completion_tokens"].as_u64().unwrap()
    );

    // The same streamed: the deltas add up to the same message.
    body["stream"] = true.into();
    body["stream_options"] = json!({"include_usage": true});
    let r = post_json(a, "/v1/chat/completions", &body);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let chunks = r.chunks();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let (reasoning, content, calls, finish) = assemble(&chunks, 0);
    assert_eq!(reasoning, REASONING);
    assert_eq!(content, "");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["name"], TOOL);
    assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
    let streamed_args: Value = serde_json::from_str(calls[0]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(streamed_args, args);
    assert_eq!(finish.as_deref(), Some("tool_calls"));
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["completion_tokens"], v["usage"]["completion_tokens"]);

    // Thinking off: the template closes the thought, the model calls the tool straight away.
    let mut off = chat(user("Weather in Paris?"));
    off["tools"] = weather_tool();
    off["chat_template_kwargs"] = json!({"enable_thinking": false});
    let v = post_json(a, "/v1/chat/completions", &off).json();
    assert!(v["choices"][0]["message"]["reasoning_content"].is_null(), "{v}");
    assert_eq!(v["choices"][0]["message"]["tool_calls"][0]["function"]["name"], TOOL);
    assert_eq!(v["usage"]["reasoning_tokens"], 0);

    // No tools: the parser is off and the markup stays content.
    let v = post_json(a, "/v1/chat/completions", &chat(user("Weather in Paris?"))).json();
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(content.starts_with(&format!("<tool_call>{TOOL}")), "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["choices"][0]["matched_stop"], 361, "stopped on <|observation|>");

    // The tool result round trip: the model answers from it.
    let call_id = call["id"].as_str().unwrap();
    let messages = json!([
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": null, "reasoning_content": REASONING,
         "tool_calls": [{"id": call_id, "type": "function", "function": {"name": TOOL, "arguments": call["function"]["arguments"]}}]},
        {"role": "tool", "tool_call_id": call_id, "content": "{\"wind\": \"strong\"}"},
    ]);
    let mut round = chat(messages);
    round["tools"] = weather_tool();
    let v = post_json(a, "/v1/chat/completions", &round).json();
    assert_eq!(v["choices"][0]["message"]["content"], ANSWER, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert!(v["choices"][0]["message"]["tool_calls"].is_null());

    // Invalid arguments in the echoed call are the client's error.
    let mut bad = round.clone();
    bad["messages"][1]["tool_calls"][0]["function"]["arguments"] = "not json".into();
    assert_eq!(post_json(a, "/v1/chat/completions", &bad).status, 400);
}

#[test]
fn sampling_fields_n_stop_and_logprobs() {
    let server = start(&[]);
    let a = &server.addr;
    // n = 2, greedy: two identical choices; usage counts the prompt once.
    let mut body = chat(user("Hi"));
    body["n"] = 2.into();
    let v = post_json(a, "/v1/chat/completions", &body).json();
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    assert_eq!(choices[0]["message"], choices[1]["message"]);
    assert_eq!(choices[1]["index"], 1);
    let one = post_json(a, "/v1/chat/completions", &chat(user("Hi"))).json();
    assert_eq!(v["usage"]["prompt_tokens"], one["usage"]["prompt_tokens"]);
    assert_eq!(
        v["usage"]["completion_tokens"].as_u64().unwrap(),
        2 * one["usage"]["completion_tokens"].as_u64().unwrap()
    );

    // n = 2 streamed: both indices finish.
    body["stream"] = true.into();
    let chunks = post_json(a, "/v1/chat/completions", &body).chunks();
    for (i, choice) in choices.iter().enumerate() {
        let (_, content, _, finish) = assemble(&chunks, i);
        assert_eq!(content, choice["message"]["content"].as_str().unwrap());
        assert_eq!(finish.as_deref(), Some("stop"));
    }

    // A stop string ends the content right before it.
    let mut stop = chat(user("Hi"));
    stop["stop"] = json!(["arg_key"]);
    let v = post_json(a, "/v1/chat/completions", &stop).json();
    assert_eq!(v["choices"][0]["message"]["content"], format!("<tool_call>{TOOL}<"));
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["choices"][0]["matched_stop"], "arg_key");

    // max_tokens cuts with finish_reason length.
    let mut short = chat(user("Hi"));
    short["max_tokens"] = 3.into();
    let v = post_json(a, "/v1/chat/completions", &short).json();
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 3);

    // logprobs: greedy picks the top alternative.
    let mut lp = chat(user("Hi"));
    lp["logprobs"] = true.into();
    lp["top_logprobs"] = 2.into();
    let v = post_json(a, "/v1/chat/completions", &lp).json();
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len() as u64, v["usage"]["completion_tokens"].as_u64().unwrap());
    for t in content {
        assert_eq!(t["top_logprobs"].as_array().unwrap().len(), 2);
        assert_eq!(t["logprob"], t["top_logprobs"][0]["logprob"]);
    }

    // /v1/completions: raw prompt, echo, token-id prompts.
    let v = post_json(a, "/v1/completions", &json!({"prompt": "Hi", "max_tokens": 2, "echo": true, "temperature": 0}))
        .json();
    assert_eq!(v["object"], "text_completion");
    assert!(v["choices"][0]["text"].as_str().unwrap().starts_with("Hi"));
    let v = post_json(a, "/v1/completions", &json!({"prompt": [198], "max_tokens": 4, "temperature": 0})).json();
    assert_eq!(v["choices"][0]["text"], format!("<think>{REASONING}</think>"), "{v}");
    let r =
        post_json(a, "/v1/completions", &json!({"prompt": [198], "max_tokens": 4, "stream": true, "temperature": 0}));
    let text: String = r.chunks().iter().map(|c| c["choices"][0]["text"].as_str().unwrap_or("").to_string()).collect();
    assert_eq!(text, format!("<think>{REASONING}</think>"));
}

#[test]
fn errors_have_openai_shape_and_status() {
    let media = std::env::temp_dir().join(format!("glmv-allowed-{}", std::process::id()));
    std::fs::create_dir_all(&media).unwrap();
    let media_arg = media.display().to_string();
    let server = start(&[
        "--context-length",
        "64",
        "--max-body-bytes",
        "65536",
        "--api-key",
        "sk-test",
        "--allowed-local-media-path",
        &media_arg,
        "--max-images-per-request",
        "2",
    ]);
    let a = &server.addr;
    let auth = [("Authorization", "Bearer sk-test"), ("Content-Type", "application/json")];
    let call = |body: &[u8]| request(a, "POST", "/v1/chat/completions", &auth, body);
    let check = |r: common::server::HttpResponse, status: u16, needle: &str| {
        assert_eq!(r.status, status, "{}", r.body);
        let v = r.json();
        let msg = v["error"]["message"].as_str().unwrap_or_else(|| panic!("no error.message: {v}"));
        assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
        assert_eq!(v["error"]["code"], status);
        assert!(v["error"]["type"].is_string());
    };
    let ok = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2});
    assert_eq!(call(ok.to_string().as_bytes()).status, 200);
    // Authentication.
    check(post_json(a, "/v1/chat/completions", &ok), 401, "API key");
    check(request(a, "POST", "/v1/chat/completions", &[("Authorization", "Bearer nope")], b"{}"), 401, "API key");
    assert_eq!(get(a, "/health").status, 200, "health needs no key");
    // Malformed JSON, wrong types, missing fields, unsupported features.
    check(call(b"{not json"), 400, "not valid JSON");
    check(call(br#"{"messages": [{"role": "user", "content": "Hi"}], "temperature": "hot"}"#), 400, "temperature");
    check(call(br#"{"messages": "Hi"}"#), 400, "messages");
    check(call(br#"{"messages": []}"#), 400, "Messages cannot be empty");
    check(call(br#"{"messages": [{"role": "wizard", "content": "Hi"}]}"#), 400, "role");
    check(call(br#"{"messages": [{"role": "user", "content": "Hi"}], "n": 0}"#), 400, "n");
    check(
        call(br#"{"messages": [{"role": "user", "content": "Hi"}], "response_format": {"type": "json_object"}}"#),
        400,
        "not supported",
    );
    check(
        call(br#"{"messages": [{"role": "user", "content": "Hi"}], "tool_choice": "required"}"#),
        400,
        "Tools cannot be empty",
    );
    // Unknown model.
    check(call(br#"{"model": "gpt-4", "messages": [{"role": "user", "content": "Hi"}]}"#), 404, "gpt-4");
    // Context too long, with the numbers.
    let long = json!({"messages": [{"role": "user", "content": "word ".repeat(80)}]});
    check(call(long.to_string().as_bytes()), 400, "context length (64 tokens)");
    let over = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 60});
    check(call(over.to_string().as_bytes()), 400, "maximum context length is 64 tokens");
    // Media: invalid base64, a path outside the allowed root, a relative path, too many images.
    let part = |url: &str| json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "see"}, {"type": "image_url", "image_url": {"url": url}}]}]});
    check(
        call(part("data:image/png;base64,!!!").to_string().as_bytes()),
        400,
        "messages[0].content[1]: invalid base64",
    );
    check(call(part("file:///etc/passwd").to_string().as_bytes()), 403, "outside the allowed media path");
    check(call(part("image.png").to_string().as_bytes()), 400, "unsupported URL");
    check(
        call(part("http://127.0.0.1:1/cat.png").to_string().as_bytes()),
        422,
        "messages[0].content[1]: could not fetch",
    );
    let three = json!({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]}]});
    check(call(three.to_string().as_bytes()), 400, "at most 2");
    check(
        call(br#"{"messages": [{"role": "user", "content": [{"type": "file_url", "file_url": {}}]}]}"#),
        400,
        "unknown content part type",
    );
    // A body over the limit.
    let big = vec![b' '; 70_000];
    check(call(&big), 413, "");
    // Unknown routes and methods.
    check(request(a, "GET", "/v2/nothing", &auth, b""), 404, "no route");
    check(request(a, "GET", "/v1/chat/completions", &auth, b""), 405, "POST");
    std::fs::remove_dir_all(&media).unwrap();
}

#[test]
fn side_endpoints_metrics_and_disconnects() {
    let server = start(&["--served-model-name", "glm-test", "--enable-cache-report"]);
    let a = &server.addr;
    let models = get(a, "/v1/models").json();
    assert_eq!(models["data"][0]["id"], "glm-test");
    assert_eq!(models["data"][0]["max_model_len"], 8192);
    assert_eq!(get(a, "/v1/models/glm-test").json()["id"], "glm-test");
    assert_eq!(get(a, "/v1/models/other").status, 404);
    let info = get(a, "/get_model_info").json();
    assert_eq!(info["architectures"][0], "Glm4vMoeForConditionalGeneration");
    assert_eq!(info["reasoning_parser"], "glm45");
    assert_eq!(get(a, "/health").status, 200);
    assert_eq!(get(a, "/health_generate").status, 200);
    let pre = request(
        a,
        "OPTIONS",
        "/v1/chat/completions",
        &[("Origin", "http://x"), ("Access-Control-Request-Method", "POST")],
        b"",
    );
    assert_eq!(pre.status, 204);
    assert_eq!(pre.header("access-control-allow-origin"), Some("*"));

    // The prefix cache: the same prompt twice reports cached tokens the second time.
    let body = json!({"model": "glm-test", "messages": [{"role": "user", "content": "a longer prompt so that whole KV blocks are shared"}], "max_tokens": 2});
    let first = post_json(a, "/v1/chat/completions", &body).json();
    let second = post_json(a, "/v1/chat/completions", &body).json();
    assert_eq!(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    assert!(second["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap() >= 16, "{second}");

    // A client that disconnects mid-stream aborts its request.
    let long = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2000, "ignore_eos": true, "stream": true});
    let mut s = TcpStream::connect(a).unwrap();
    let text = long.to_string();
    write!(s, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{text}", text.len()).unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    drop(s);
    let mut aborted = false;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(50));
        let m = get(a, "/metrics").body;
        if m.contains("sglang:num_aborted_requests_total{model_name=\"glm-test\"} 1")
            && m.contains("sglang:num_running_reqs{model_name=\"glm-test\"} 0")
        {
            aborted = true;
            break;
        }
    }
    assert!(aborted, "the dropped stream was not aborted: {}", get(a, "/metrics").body);
    let metrics = get(a, "/metrics");
    assert!(metrics.header("content-type").unwrap().starts_with("text/plain"));
    for name in [
        "sglang:prompt_tokens_total",
        "sglang:generation_tokens_total",
        "sglang:time_to_first_token_seconds_bucket",
        "sglang:e2e_request_latency_seconds_count",
        "sglang:inter_token_latency_seconds_sum",
        "sglang:token_usage",
        "sglang:cache_hit_rate",
        "sglang:num_queue_reqs",
    ] {
        assert!(metrics.body.contains(name), "{name} missing");
    }
    assert!(server.logged("status=200 prompt_tokens="), "one log line per request");
}

#[test]
fn demo_model_serves_without_a_checkpoint() {
    let server = ServerProcess::start(None, &[]);
    assert!(server.logged("glmv-demo-random"));
    let models = get(&server.addr, "/v1/models").json();
    assert_eq!(models["data"][0]["id"], "glmv-demo-random");
    let r = post_json(
        &server.addr,
        "/v1/chat/completions",
        // No temperature here nor in the demo's generation config, so the server samples at 1.0 (OpenAI's default),
        // and 3 of the demo's 388 tokens are EOS: without ignore_eos an early EOS made this count flaky (seen once
        // in CI: 1 token).
        &json!({"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4, "ignore_eos": true}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["usage"]["completion_tokens"], 4);
}

/// `--load-format dummy` needs no weights: a directory with only the config, tokenizer, template and processor
/// config of the FP8 (block-128) fixture serves text and image requests with random FP8 weights.
#[test]
fn dummy_load_format_serves_a_directory_without_weights() {
    let src = fixtures_root().join("moe_fp8_block/checkpoint");
    let dir = std::env::temp_dir().join(format!("glmv-dummy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in
        ["config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "preprocessor_config.json"]
    {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let server = ServerProcess::start(Some(&dir), &["--load-format", "dummy"]);
    assert!(server.logged("dummy weights"), "{:?}", server.log.lock().unwrap());
    assert_eq!(get(&server.addr, "/get_model_info").json()["load_format"], "dummy");
    let png = std::fs::read(fixtures_root().join("vision/images/rgb_100x100.png")).unwrap();
    let url =
        format!("data:image/png;base64,{}", base64::Engine::encode(&base64::engine::general_purpose::STANDARD, png));
    let r = post_json(
        &server.addr,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": "Hello"}]}], "max_tokens": 6, "ignore_eos": true}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["usage"]["completion_tokens"], 6);
    drop(server);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `glmv serve --fp8-activations checkpoint` on an FP8 checkpoint loads with the checkpoint's activation scheme
/// (block FP8: per token and 128 columns) and serves with it.
#[test]
fn serves_with_checkpoint_fp8_activations() {
    let model = fixtures_root().join("moe_fp8_block/checkpoint");
    let server = ServerProcess::start(Some(&model), &["--fp8-activations", "checkpoint"]);
    assert!(server.logged("FP8 projections quantise their inputs per token and 128 columns"), "{:?}", server.log);
    let r = post_json(
        &server.addr,
        "/v1/chat/completions",
        &json!({"model": "default", "messages": user("hello"),
        "temperature": 0, "max_tokens": 4, "ignore_eos": true}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["usage"]["completion_tokens"], 4, "{}", r.body);
}
