"""The official OpenAI Python client and curl against a running `glmv serve` (started by tests/openai_client.rs
with the crafted checkpoint of tests/common/crafted.rs, whose greedy output is known).

    python check_client.py HOST:PORT SCRIPT_JSON

SCRIPT_JSON names what the crafted model says: reasoning, tool, arg_key, arg_value, answer, and the media files
to send (image_png, image_jpeg, video_mp4) when the build decodes media. Every check prints one line; any failure
raises and exits non-zero.
"""
import base64
import json
import subprocess
import sys

import openai
from openai import OpenAI

ADDR, SCRIPT = sys.argv[1], json.loads(sys.argv[2])
client = OpenAI(base_url=f"http://{ADDR}/v1", api_key="sk-test", max_retries=0, timeout=60)
BAD = OpenAI(base_url=f"http://{ADDR}/v1", api_key="wrong", max_retries=0, timeout=60)
TOOLS = [{
    "type": "function",
    "function": {
        "name": SCRIPT["tool"],
        "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {SCRIPT["arg_key"]: {"type": "string"}}},
    },
}]
USER = [{"role": "user", "content": "Weather in Paris?"}]


def check(name, cond, detail=""):
    if not cond:
        raise AssertionError(f"{name}: {detail}")
    print(f"ok  {name}")


def reasoning_of(message):
    return (message.model_extra or {}).get("reasoning_content")


# Models.
models = client.models.list()
check("models.list", models.data[0].id == SCRIPT["model"], models)

# Non-streaming chat, thinking on, tools: reasoning and a parsed call.
r = client.chat.completions.create(model=SCRIPT["model"], messages=USER, tools=TOOLS, temperature=0, max_tokens=40)
m = r.choices[0].message
check("chat reasoning_content", reasoning_of(m) == SCRIPT["reasoning"], m)
check("chat tool_calls", m.tool_calls and m.tool_calls[0].function.name == SCRIPT["tool"], m)
args = json.loads(m.tool_calls[0].function.arguments)
check("chat tool arguments", args == {SCRIPT["arg_key"]: SCRIPT["arg_value"]}, args)
check("chat finish_reason", r.choices[0].finish_reason == "tool_calls", r.choices[0].finish_reason)
check("usage totals", r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, r.usage)
call = m.tool_calls[0]

# Streaming chat with include_usage: the SDK's chunks add up to the same message.
stream = client.chat.completions.create(model=SCRIPT["model"], messages=USER, tools=TOOLS, temperature=0,
                                        max_tokens=40, stream=True, stream_options={"include_usage": True})
reasoning, content, calls, finish, usage = "", "", {}, None, None
for chunk in stream:
    if chunk.usage:
        usage = chunk.usage
    for c in chunk.choices:
        d = c.delta
        reasoning += (d.model_extra or {}).get("reasoning_content") or ""
        content += d.content or ""
        for tc in d.tool_calls or []:
            slot = calls.setdefault(tc.index, {"name": "", "arguments": ""})
            slot["name"] += (tc.function.name or "") if tc.function else ""
            slot["arguments"] += (tc.function.arguments or "") if tc.function else ""
        finish = c.finish_reason or finish
check("stream reasoning", reasoning == SCRIPT["reasoning"], reasoning)
check("stream tool call", calls[0]["name"] == SCRIPT["tool"] and json.loads(calls[0]["arguments"]) == args, calls)
check("stream finish_reason", finish == "tool_calls", finish)
check("stream include_usage", usage is not None and usage.completion_tokens == r.usage.completion_tokens, usage)

# Thinking off through extra_body, as the GLM-V docs show it.
r = client.chat.completions.create(model=SCRIPT["model"], messages=USER, tools=TOOLS, temperature=0, max_tokens=40,
                                   extra_body={"chat_template_kwargs": {"enable_thinking": False}})
check("thinking off: no reasoning", reasoning_of(r.choices[0].message) is None, r.choices[0].message)
check("thinking off: tool call", r.choices[0].message.tool_calls[0].function.name == SCRIPT["tool"])

# The tool result round trip.
messages = USER + [
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
    {"role": "tool", "tool_call_id": call.id, "content": "{\"wind\": \"strong\"}"},
]
r = client.chat.completions.create(model=SCRIPT["model"], messages=messages, tools=TOOLS, temperature=0, max_tokens=40)
check("tool round trip answer", r.choices[0].message.content == SCRIPT["answer"], r.choices[0].message)

# n = 2 and stop strings.
r = client.chat.completions.create(model=SCRIPT["model"], messages=USER, temperature=0, max_tokens=40, n=2)
check("n=2", len(r.choices) == 2 and r.choices[0].message.content == r.choices[1].message.content, r.choices)
r = client.chat.completions.create(model=SCRIPT["model"], messages=USER, temperature=0, max_tokens=40, stop=["arg_key"])
check("stop string", r.choices[0].message.content.endswith("<") and r.choices[0].finish_reason == "stop",
      r.choices[0].message.content)

# Completions.
r = client.completions.create(model=SCRIPT["model"], prompt=[198], max_tokens=4, temperature=0)
check("completions", r.choices[0].text == f"<think>{SCRIPT['reasoning']}</think>", r.choices[0].text)

# Media, when this build decodes it.
def data_url(path, mime):
    with open(path, "rb") as f:
        return f"data:{mime};base64," + base64.b64encode(f.read()).decode()


if SCRIPT.get("image_png"):
    png, jpeg = SCRIPT["image_png"], SCRIPT["image_jpeg"]
    parts = [{"type": "text", "text": "Compare"},
             {"type": "image_url", "image_url": {"url": data_url(png, "image/png")}},
             {"type": "image_url", "image_url": {"url": f"file://{jpeg}"}}]
    r = client.chat.completions.create(model=SCRIPT["model"], messages=[{"role": "user", "content": parts}],
                                       temperature=0, max_tokens=4)
    text_only = client.chat.completions.create(model=SCRIPT["model"], temperature=0, max_tokens=4,
                                               messages=[{"role": "user", "content": parts[:1]}])
    # Each image adds <|begin_of_image|>, its merged-patch tokens and <|end_of_image|>.
    added = r.usage.prompt_tokens - text_only.usage.prompt_tokens
    check("two images (data: and file://)", added == SCRIPT["image_tokens"] + 4 and r.choices[0].finish_reason,
          (added, SCRIPT["image_tokens"], r.usage))
if SCRIPT.get("video_mp4"):
    parts = [{"type": "video_url", "video_url": {"url": f"file://{SCRIPT['video_mp4']}"}},
             {"type": "text", "text": "What happens?"}]
    r = client.chat.completions.create(model=SCRIPT["model"], messages=[{"role": "user", "content": parts}],
                                       temperature=0, max_tokens=4)
    text_only = client.chat.completions.create(model=SCRIPT["model"], temperature=0, max_tokens=4,
                                               messages=[{"role": "user", "content": parts[1:]}])
    # The template's <|begin_of_video|><|video|><|end_of_video|>, the <|video|> replaced by every frame pair's
    # image tags, merged-patch tokens and timestamp.
    added = r.usage.prompt_tokens - text_only.usage.prompt_tokens
    check("video (file://)", added == SCRIPT["video_ids"] + 2 and r.choices[0].finish_reason,
          (added, SCRIPT["video_ids"], r.usage))

# Errors map to the SDK's exception classes.
def expect(exc, status, fn):
    try:
        fn()
    except exc as e:
        check(f"{exc.__name__} {status}", e.status_code == status, e)
        return
    raise AssertionError(f"expected {exc.__name__}")


expect(openai.AuthenticationError, 401, lambda: BAD.models.list())
expect(openai.NotFoundError, 404,
       lambda: client.chat.completions.create(model="gpt-4", messages=USER))
expect(openai.BadRequestError, 400,
       lambda: client.chat.completions.create(model=SCRIPT["model"], messages=USER, temperature="hot"))
expect(openai.BadRequestError, 400,
       lambda: client.chat.completions.create(model=SCRIPT["model"], messages=USER, max_tokens=10**6))
expect(openai.BadRequestError, 400, lambda: client.chat.completions.create(
    model=SCRIPT["model"], messages=USER, response_format={"type": "json_object"}))

# curl: a streamed chat and an error, byte for byte what a shell user sees.
out = subprocess.run(
    ["curl", "-sN", f"http://{ADDR}/v1/chat/completions", "-H", "Authorization: Bearer sk-test",
     "-H", "Content-Type: application/json",
     "-d", json.dumps({"messages": USER, "stream": True, "max_tokens": 6, "temperature": 0})],
    check=True, capture_output=True, text=True).stdout
events = [e[len("data: "):] for e in out.split("\n\n") if e.startswith("data: ")]
check("curl stream ends with [DONE]", events[-1] == "[DONE]", out)
check("curl stream reasoning", "".join(json.loads(e)["choices"][0]["delta"].get("reasoning_content") or ""
                                       for e in events[:-1] if json.loads(e)["choices"]) == SCRIPT["reasoning"], out)
code = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://{ADDR}/v1/models"],
                      check=True, capture_output=True, text=True).stdout
check("curl without key is 401", code == "401", code)
print("all openai-client checks passed")
