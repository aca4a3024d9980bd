"""Drive the gateway with the official OpenAI Python SDK (OPENAI_BASE_URL / OPENAI_API_KEY)."""
import sys

import openai
from openai import OpenAI

client = OpenAI()

r = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello"}], max_tokens=5)
assert r.choices[0].message.content.startswith("This is a mock reply"), r
assert r.usage.completion_tokens == 5, r.usage
print("non-stream ok")

chunks = list(client.chat.completions.create(
    model="gpt-4o", messages=[{"role": "user", "content": "Hello"}], max_tokens=6, stream=True))
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert text.startswith("This is a mock reply"), text
assert all(c.usage is None for c in chunks), "usage chunk must be hidden when not asked for"
print("stream ok")

chunks = list(client.chat.completions.create(
    model="gpt-4o", messages=[{"role": "user", "content": "Hello"}], max_tokens=6, stream=True,
    stream_options={"include_usage": True}))
usage = [c.usage for c in chunks if c.usage is not None]
assert len(usage) == 1 and usage[0].completion_tokens == 6, usage
print("stream usage ok")

tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"location": {"type": "string"}}}}}]
r = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "weather in Paris?"}],
                                   tools=tools, tool_choice="required")
call = r.choices[0].message.tool_calls[0]
assert call.function.name == "get_weather" and "Paris" in call.function.arguments, r
print("tools ok")

e = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
assert len(e.data) == 2
print("embeddings ok")

ids = [m.id for m in client.models.list()]
assert "gpt-4o-mini" in ids, ids
print("models ok")

try:
    client.chat.completions.create(model="does-not-exist", messages=[{"role": "user", "content": "x"}])
    sys.exit("expected NotFoundError")
except openai.NotFoundError as err:
    assert err.status_code == 404
print("not found ok")

bad = OpenAI(api_key="tg-wrong")
try:
    bad.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    sys.exit("expected AuthenticationError")
except openai.AuthenticationError as err:
    assert err.status_code == 401
print("auth error ok")
print("ALL OK")
