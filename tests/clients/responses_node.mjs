// Official openai Node SDK, Responses API: a function-tool loop run once without streaming and
// once streamed (client.responses.create({..., stream: true})), stateless (each follow-up
// resends the history). Prints the final texts; exits non-zero on failure.
//
// Env: TOLLGATE_BASE_URL (e.g. http://127.0.0.1:8080/v1), TOLLGATE_KEY, TOLLGATE_MODEL (default
// gpt-5.5), TOLLGATE_EXPECT_TOOL=1 to fail when the tool was never called.
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

// The SDK is installed beside the other clients (scripts/install-clients), not globally.
const here = dirname(fileURLToPath(import.meta.url));
const clientsDir = process.env.TOLLGATE_CLIENTS_DIR || join(here, "..", "..", ".clients");
const require = createRequire(join(clientsDir, "package.json"));
const { default: OpenAI } = await import(pathToFileURL(require.resolve("openai")).href);


const TOOLS = [{
  type: "function",
  name: "get_weather",
  description: "Returns the current weather in a city.",
  parameters: {
    type: "object",
    properties: { location: { type: "string" } },
    required: ["location"],
    additionalProperties: false,
  },
  strict: true,
}];
const calls = [];

function fail(msg) {
  console.error(`responses_node: ${msg}`);
  process.exit(1);
}

function runTools(output) {
  return output
    .filter((item) => item.type === "function_call")
    .map((item) => {
      const args = JSON.parse(item.arguments || "{}");
      calls.push(args.location);
      return { type: "function_call_output", call_id: item.call_id, output: `It is sunny in ${args.location}.` };
    });
}

async function loop(client, model, stream) {
  let history = [{ role: "user", content: "What is the weather in Paris?" }];
  for (let round = 0; round < 4; round++) {
    const params = { model, input: history, tools: TOOLS, instructions: "Answer briefly." };
    let response;
    let deltas = "";
    if (stream) {
      for await (const event of await client.responses.create({ ...params, stream: true })) {
        if (event.type === "response.output_text.delta") deltas += event.delta;
        else if (event.type === "response.completed") response = event.response;
        else if (event.type === "response.failed" || event.type === "error") fail(`stream failed: ${JSON.stringify(event)}`);
      }
      if (!response) fail("stream ended without response.completed");
    } else {
      response = await client.responses.create(params);
    }
    const results = runTools(response.output);
    if (results.length === 0) {
      const text = response.output_text ?? response.output
        .filter((i) => i.type === "message")
        .flatMap((i) => i.content.map((c) => c.text ?? ""))
        .join("");
      if (stream && deltas !== text) fail(`deltas ${JSON.stringify(deltas)} != output_text ${JSON.stringify(text)}`);
      if (!text) fail("empty final text");
      if (!response.usage || response.usage.input_tokens == null) fail("no usage in the final response");
      return text;
    }
    history = [...history, ...response.output, ...results];
  }
  fail("no final answer after 4 rounds");
}

const client = new OpenAI({ baseURL: process.env.TOLLGATE_BASE_URL, apiKey: process.env.TOLLGATE_KEY ?? "unused" });
const model = process.env.TOLLGATE_MODEL ?? "gpt-5.5";
console.log("create:", await loop(client, model, false));
console.log("create(stream):", await loop(client, model, true));
console.log("tool calls:", JSON.stringify(calls));
if (process.env.TOLLGATE_EXPECT_TOOL === "1" && calls.length < 2) fail("the tool was not called in each loop");
