#!/usr/bin/env python3
"""Official openai Python SDK, Responses API: a function-tool loop run once without streaming
and once streamed (client.responses.create(..., stream=True)). Stateless: each follow-up
resends the whole history (output items + function_call_output), no previous_response_id.
Prints the final texts; exits non-zero on failure.

Env: TOLLGATE_BASE_URL (e.g. http://127.0.0.1:8080/v1), TOLLGATE_KEY, TOLLGATE_MODEL (default
gpt-5.5), TOLLGATE_EXPECT_TOOL=1 to fail when the tool was never called.
"""
import json
import os
import sys

from openai import OpenAI

TOOLS = [{
    "type": "function",
    "name": "get_weather",
    "description": "Returns the current weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"location": {"type": "string"}},
        "required": ["location"],
        "additionalProperties": False,
    },
    "strict": True,
}]
calls = []


def get_weather(location):
    calls.append(location)
    return f"It is sunny in {location}."


def run_tools(output):
    """function_call_output items for the function calls among `output`."""
    results = []
    for item in output:
        if item.type == "function_call":
            args = json.loads(item.arguments or "{}")
            results.append({"type": "function_call_output", "call_id": item.call_id,
                            "output": get_weather(**args)})
    return results


def loop(client, model, stream):
    history = [{"role": "user", "content": "What is the weather in Paris?"}]
    for _ in range(4):
        kwargs = dict(model=model, input=history, tools=TOOLS,
                      instructions="Answer briefly. Use get_weather for weather questions.")
        if stream:
            response, deltas = None, []
            for event in client.responses.create(stream=True, **kwargs):
                if event.type == "response.output_text.delta":
                    deltas.append(event.delta)
                elif event.type == "response.completed":
                    response = event.response
                elif event.type in ("response.failed", "error"):
                    sys.exit(f"responses_sdk: stream failed: {event}")
            if response is None:
                sys.exit("responses_sdk: stream ended without response.completed")
        else:
            response = client.responses.create(**kwargs)
        results = run_tools(response.output)
        if not results:
            text = response.output_text
            if stream and "".join(deltas) != text:
                sys.exit(f"responses_sdk: deltas {''.join(deltas)!r} != output_text {text!r}")
            if not text:
                sys.exit("responses_sdk: empty final text")
            u = response.usage
            if u is None or u.input_tokens is None or u.output_tokens is None:
                sys.exit("responses_sdk: no usage in the final response")
            return text
        history += [item.model_dump(exclude_none=True) for item in response.output]
        history += results
    sys.exit("responses_sdk: no final answer after 4 rounds")


def main():
    client = OpenAI(base_url=os.environ["TOLLGATE_BASE_URL"],
                    api_key=os.environ.get("TOLLGATE_KEY", "unused"))
    model = os.environ.get("TOLLGATE_MODEL", "gpt-5.5")
    print("create:", loop(client, model, stream=False))
    print("create(stream=True):", loop(client, model, stream=True))
    print("tool calls:", calls)
    if os.environ.get("TOLLGATE_EXPECT_TOOL") == "1" and len(calls) < 2:
        sys.exit("responses_sdk: the tool was not called in each loop")


if __name__ == "__main__":
    main()
