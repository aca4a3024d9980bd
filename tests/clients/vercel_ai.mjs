#!/usr/bin/env node
// Vercel AI SDK (npm `ai` + `@ai-sdk/openai` + `@ai-sdk/anthropic`): generateText and
// streamText, each with one tool and a multi-step loop, through
//   - createOpenAI({baseURL, apiKey}) and its default `provider(model)` (Responses API, /responses)
//   - createAnthropic({baseURL, apiKey}) (Messages API, /messages)
// Prints the final texts; exits non-zero on failure.
//
// Env: TOLLGATE_BASE_URL (e.g. http://127.0.0.1:8080/v1), TOLLGATE_KEY, TOLLGATE_MODEL (OpenAI
// model, default gpt-5.5), TOLLGATE_ANTHROPIC_MODEL (default claude-sonnet-4-5),
// TOLLGATE_EXPECT_TOOL=1 to fail when the tool was never called, TOLLGATE_CLIENTS_DIR (where
// scripts/install-clients put node_modules; default: ../../.clients from this file).
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const clientsDir = process.env.TOLLGATE_CLIENTS_DIR || join(here, '..', '..', '.clients');
const require = createRequire(join(clientsDir, 'package.json'));
const load = (name) => import(pathToFileURL(require.resolve(name)).href);

const { generateText, streamText, tool, jsonSchema, stepCountIs } = await load('ai');
const { createOpenAI } = await load('@ai-sdk/openai');
const { createAnthropic } = await load('@ai-sdk/anthropic');

const baseURL = process.env.TOLLGATE_BASE_URL;
if (!baseURL) {
  console.error('vercel_ai: set TOLLGATE_BASE_URL');
  process.exit(2);
}
const apiKey = process.env.TOLLGATE_KEY || 'unused';
const openaiModel = process.env.TOLLGATE_MODEL || 'gpt-5.5';
const anthropicModel = process.env.TOLLGATE_ANTHROPIC_MODEL || 'claude-sonnet-4-5';

const calls = [];
const tools = {
  get_weather: tool({
    description: 'Returns the current weather in a city.',
    inputSchema: jsonSchema({
      type: 'object',
      properties: { location: { type: 'string' } },
      required: ['location'],
      additionalProperties: false,
    }),
    execute: async ({ location }) => {
      calls.push(location);
      return `It is sunny in ${location}.`;
    },
  }),
};

const common = {
  system: 'Answer briefly. Use get_weather for weather questions.',
  prompt: 'What is the weather in Paris?',
  tools,
  stopWhen: stepCountIs(4),
  maxRetries: 0,
};

function check(label, text, usage) {
  console.log(`${label}: ${text}`);
  if (!text) throw new Error(`${label}: empty final text`);
  if (!usage || usage.inputTokens === undefined || usage.outputTokens === undefined) {
    throw new Error(`${label}: no usage`);
  }
}

async function run(label, model) {
  const g = await generateText({ model, ...common });
  check(`${label} generateText`, g.text, g.totalUsage);

  const s = streamText({ model, ...common, onError: ({ error }) => { throw error; } });
  let streamed = '';
  for await (const part of s.fullStream) {
    if (part.type === 'text-delta') streamed += part.text;
    if (part.type === 'error') throw part.error;
  }
  check(`${label} streamText`, await s.text, await s.totalUsage);
  if (!streamed) throw new Error(`${label} streamText: no text deltas`);
}

try {
  const openai = createOpenAI({ baseURL, apiKey });
  await run('openai(responses)', openai(openaiModel));
  const anthropic = createAnthropic({ baseURL, apiKey });
  await run('anthropic(messages)', anthropic(anthropicModel));
  console.log('tool calls:', JSON.stringify(calls));
  if (process.env.TOLLGATE_EXPECT_TOOL === '1' && calls.length < 4) {
    throw new Error('the tool was not called in each run');
  }
} catch (err) {
  console.error('vercel_ai:', err?.stack || err);
  process.exit(1);
}
