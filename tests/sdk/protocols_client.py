"""Drive the gateway with the official `openai` and `anthropic` Python SDKs, whatever protocol the
upstream behind it speaks (TOLLGATE_URL, TOLLGATE_KEY, UPSTREAM=openai|anthropic|gemini)."""
import json
import os
import sys

import anthropic
import openai

URL = os.environ["TOLLGATE_URL"]
KEY = os.environ["TOLLGATE_KEY"]
UPSTREAM = os.environ["UPSTREAM"]
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


def check(cond, what):
    if not cond:
        sys.exit(f"[{UPSTREAM}] FAILED: {what}")


# ---------------------------------------------------------------- the OpenAI SDK
oa = openai.OpenAI(base_url=URL + "/v1", api_key=KEY, max_retries=0)

r = oa.chat.completions.create(model="gpt-4o-mini", max_tokens=5,
                               messages=[{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": "Hello"}])
check(r.choices[0].message.content.startswith("This is a mock reply"), r)
check(r.choices[0].finish_reason == "length", r)
check(r.usage.completion_tokens == 5 and r.usage.prompt_tokens > 0, r.usage)
print("openai text ok")

chunks = list(oa.chat.completions.create(model="gpt-4o", max_tokens=6, stream=True,
                                         stream_options={"include_usage": True},
                                         messages=[{"role": "user", "content": "Hello"}]))
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
usage = [c.usage for c in chunks if c.usage is not None]
check(text.startswith("This is a mock reply"), text)
check(len(usage) == 1 and usage[0].completion_tokens == 6, usage)
print("openai stream ok")

tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather now",
          "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}]
for stream in (False, True):
    msgs = [{"role": "user", "content": "weather in Paris?"}]
    if stream:
        calls = {}
        finish = None
        for c in oa.chat.completions.create(model="gpt-4o-mini", messages=msgs, tools=tools, stream=True):
            if not c.choices:
                continue
            for tc in c.choices[0].delta.tool_calls or []:
                cur = calls.setdefault(tc.index, {"id": "", "name": "", "args": ""})
                cur["id"] += tc.id or ""
                cur["name"] += (tc.function.name or "") if tc.function else ""
                cur["args"] += (tc.function.arguments or "") if tc.function else ""
            finish = c.choices[0].finish_reason or finish
        call_id, name, args = calls[0]["id"], calls[0]["name"], calls[0]["args"]
    else:
        r = oa.chat.completions.create(model="gpt-4o-mini", messages=msgs, tools=tools)
        finish = r.choices[0].finish_reason
        tc = r.choices[0].message.tool_calls[0]
        call_id, name, args = tc.id, tc.function.name, tc.function.arguments
    check(finish == "tool_calls", finish)
    check(name == "get_weather" and json.loads(args) == {"location": "Paris"}, (name, args))
    msgs += [{"role": "assistant", "content": None, "tool_calls": [
        {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}]},
        {"role": "tool", "tool_call_id": call_id, "content": "sunny, 21 C"}]
    r = oa.chat.completions.create(model="gpt-4o-mini", messages=msgs, tools=tools, tool_choice="none")
    check(r.choices[0].message.content, r)
print("openai tools ok")

r = oa.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": [
    {"type": "text", "text": "What is in this image?"},
    {"type": "image_url", "image_url": {"url": "data:image/png;base64," + PNG}}]}])
check("What is in this image?" in r.choices[0].message.content, r)
print("openai image ok")

try:
    oa.chat.completions.create(model="does-not-exist", messages=[{"role": "user", "content": "x"}])
    check(False, "expected NotFoundError")
except openai.NotFoundError as e:
    check(e.status_code == 404, e)
if UPSTREAM != "openai":
    try:
        oa.chat.completions.create(model="gpt-4o-mini", n=2, messages=[{"role": "user", "content": "x"}])
        check(False, "expected BadRequestError for n=2")
    except openai.BadRequestError as e:
        check("`n`" in str(e), e)
try:
    openai.OpenAI(base_url=URL + "/v1", api_key="tg-wrong", max_retries=0).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    check(False, "expected AuthenticationError")
except openai.AuthenticationError as e:
    check(e.status_code == 401, e)
print("openai errors ok")

# ---------------------------------------------------------------- the Anthropic SDK
an = anthropic.Anthropic(base_url=URL, api_key=KEY, max_retries=0)

m = an.messages.create(model="gpt-4o-mini", max_tokens=5, system="Be brief.",
                       messages=[{"role": "user", "content": "Hello"}])
check(m.type == "message" and m.content[0].text.startswith("This is a mock reply"), m)
check(m.stop_reason == "max_tokens", m)
check(m.usage.output_tokens == 5 and m.usage.input_tokens > 0, m.usage)
print("anthropic text ok")

with an.messages.stream(model="gpt-4o", max_tokens=6, messages=[{"role": "user", "content": "Hello"}]) as s:
    text = "".join(s.text_stream)
    final = s.get_final_message()
check(text.startswith("This is a mock reply"), text)
check(final.stop_reason == "max_tokens" and final.usage.output_tokens == 6, final)
print("anthropic stream ok")

a_tools = [{"name": "get_weather", "description": "Weather now",
            "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}}}]
for stream in (False, True):
    msgs = [{"role": "user", "content": "weather in Paris?"}]
    if stream:
        with an.messages.stream(model="gpt-4o-mini", max_tokens=100, messages=msgs, tools=a_tools) as s:
            m = s.get_final_message()
    else:
        m = an.messages.create(model="gpt-4o-mini", max_tokens=100, messages=msgs, tools=a_tools)
    check(m.stop_reason == "tool_use", m)
    use = [b for b in m.content if b.type == "tool_use"][0]
    check(use.name == "get_weather" and use.input == {"location": "Paris"}, use)
    msgs += [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in m.content]},
             {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny, 21 C"}]}]
    r = an.messages.create(model="gpt-4o-mini", max_tokens=100, messages=msgs, tools=a_tools,
                           tool_choice={"type": "none"})
    check(r.content and r.content[0].type == "text", r)
print("anthropic tools ok")

m = an.messages.create(model="gpt-4o-mini", max_tokens=100, messages=[{"role": "user", "content": [
    {"type": "text", "text": "What is in this image?"},
    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]}])
check("What is in this image?" in m.content[0].text, m)
print("anthropic image ok")

n = an.messages.count_tokens(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello there"}])
check(n.input_tokens > 0, n)
ids = [x.id for x in an.models.list()]
check("gpt-4o-mini" in ids, ids)
print("anthropic count_tokens and models ok")

try:
    an.messages.create(model="does-not-exist", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    check(False, "expected NotFoundError")
except anthropic.NotFoundError as e:
    check(e.status_code == 404 and e.body["error"]["type"] == "not_found_error", e)
if UPSTREAM != "anthropic":
    try:
        an.messages.create(model="gpt-4o-mini", max_tokens=5, messages=[{"role": "user", "content": [
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}]}])
        check(False, "expected BadRequestError for a document block")
    except anthropic.BadRequestError as e:
        check("document" in str(e), e)
try:
    anthropic.Anthropic(base_url=URL, api_key="tg-wrong", max_retries=0).messages.create(
        model="gpt-4o-mini", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    check(False, "expected AuthenticationError")
except anthropic.AuthenticationError as e:
    check(e.status_code == 401 and e.body["error"]["type"] == "authentication_error", e)
print("anthropic errors ok")
print("ALL OK")
