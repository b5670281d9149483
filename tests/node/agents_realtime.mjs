// Drives /v1/realtime with the OpenAI Agents SDK for JavaScript (@openai/agents 0.20): a
// RealtimeSession on its WebSocket transport, as a Node server runs it, with a function tool.
// Prints one JSON object of observations for tests/frameworks_tier/test_agents_node.py and
// writes the spoken answer's PCM (24 kHz pcm16) to the path given.
import { RealtimeAgent, RealtimeSession, tool } from "@openai/agents/realtime";
import { writeFileSync } from "node:fs";
import { z } from "zod";

const [url, apiKey, pcmPath] = process.argv.slice(2);
const calls = [];
const getWeather = tool({
  name: "get_weather",
  description: "Get the current weather in a city.",
  parameters: z.object({ city: z.string() }),
  execute: async ({ city }) => {
    calls.push(city);
    return `It is sunny and 22 degrees in ${city}.`;
  },
});
const agent = new RealtimeAgent({
  name: "Assistant",
  instructions: "You are a helpful assistant.",
  tools: [getWeather],
});
// The SDK's defaults (model gpt-realtime-2.1, its voice and turn detection); only the answer's
// length is bounded, as a 135M model rambles: max_output_tokens has no field of its own in the
// SDK's session config, so it goes in providerData, which the SDK merges into session.update.
const session = new RealtimeSession(agent, {
  transport: "websocket",
  config: { providerData: { max_output_tokens: 60 } },
});

const errors = [];
const audio = [];
let toolResult = null;
let history = [];
session.on("error", (event) => errors.push(String(event.error?.message ?? event.error ?? event)));
session.on("agent_tool_end", (_context, _agent, _tool, result) => { toolResult = result; });
session.on("audio", (event) => { if (responses >= 1) audio.push(Buffer.from(event.data)); });
session.on("history_updated", (items) => { history = items; });
// Two responses: the tool call, then (once the SDK has sent the tool's output) the answer.
let responses = 0;
const answered = new Promise((resolve) => {
  session.on("agent_end", () => {
    responses += 1;
    if (responses >= 2 && toolResult !== null) resolve();
  });
});
let timer;
const timeout = new Promise((_, reject) => {
  timer = setTimeout(() => reject(new Error("timed out waiting for the answer")), 120_000);
});

await session.connect({ apiKey, url });
session.sendMessage("What is the weather in Paris?");
try {
  await Promise.race([answered, timeout]);
} catch (error) {
  errors.push(error.message);
} finally {
  clearTimeout(timer);  // a pending timer would keep Node running
}
// Audio still arriving for the answer when its response is done is the transport's to flush.
await new Promise((resolve) => setTimeout(resolve, 200));
session.close();

const call = history.find((item) => item.type === "function_call");
const answers = history.filter((item) => item.type === "message" && item.role === "assistant");
const last = answers[answers.length - 1];
const pcm = Buffer.concat(audio);
writeFileSync(pcmPath, pcm);
console.log(JSON.stringify({
  errors,
  calls,
  tool_result: toolResult,
  responses,
  call: call
    ? { name: call.name, arguments: call.arguments, output: call.output, status: call.status }
    : null,
  transcript: (last?.content ?? []).map((part) => part.transcript ?? part.text ?? "").join(""),
  pcm_bytes: pcm.length,
}));
