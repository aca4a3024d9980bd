#!/usr/bin/env python3
"""OpenAI Agents SDK (pip openai-agents) against a Responses endpoint: one agent, one function
tool, run once plainly and once streamed. Prints the final outputs; exits non-zero on failure.

Env: TOLLGATE_BASE_URL (e.g. http://127.0.0.1:8080/v1), TOLLGATE_KEY, TOLLGATE_MODEL (default:
the SDK's own default model), TOLLGATE_EXPECT_TOOL=1 to fail when the tool was never called
(the capture server always calls it first).
"""
import asyncio
import os
import sys

from openai import AsyncOpenAI

from agents import (
    Agent,
    Runner,
    function_tool,
    set_default_openai_api,
    set_default_openai_client,
    set_tracing_disabled,
)

calls = []


@function_tool
def get_weather(location: str) -> str:
    """Returns the current weather in a city."""
    calls.append(location)
    return f"It is sunny in {location}."


async def main():
    base_url = os.environ["TOLLGATE_BASE_URL"]
    key = os.environ.get("TOLLGATE_KEY", "unused")
    model = os.environ.get("TOLLGATE_MODEL")

    # The SDK's default: Responses API through this client. Tracing would otherwise upload
    # spans to OpenAI's platform, so it is off.
    set_default_openai_client(AsyncOpenAI(base_url=base_url, api_key=key), use_for_tracing=False)
    set_default_openai_api("responses")
    set_tracing_disabled(True)

    kwargs = {"model": model} if model else {}
    agent = Agent(
        name="weather",
        instructions="Answer briefly. Use get_weather for weather questions.",
        tools=[get_weather],
        **kwargs,
    )

    result = await Runner.run(agent, "What is the weather in Paris?")
    print("run:", result.final_output)
    if not result.final_output:
        sys.exit("agents_sdk: empty final output (run)")

    streamed = Runner.run_streamed(agent, "What is the weather in Paris?")
    deltas = []
    async for event in streamed.stream_events():
        if event.type == "raw_response_event" and getattr(event.data, "type", "") == "response.output_text.delta":
            deltas.append(event.data.delta)
    print("run_streamed:", streamed.final_output)
    if not streamed.final_output:
        sys.exit("agents_sdk: empty final output (run_streamed)")
    if not deltas:
        sys.exit("agents_sdk: no text deltas while streaming")

    print("tool calls:", calls)
    if os.environ.get("TOLLGATE_EXPECT_TOOL") == "1" and len(calls) < 2:
        sys.exit("agents_sdk: the tool was not called in each run")


if __name__ == "__main__":
    asyncio.run(main())
