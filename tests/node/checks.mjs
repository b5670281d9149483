// Drives the gateway with the official openai Node SDK, as a new user would, and prints
// one JSON object of observations for tests/test_chat_node.py to assert on.
import OpenAI from "openai";
import { readFileSync } from "node:fs";

const [baseURL, wavPath] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "sk-local", maxRetries: 0 });
const MODEL = "gpt-4o-mini";
const AUDIO_MODEL = "gpt-4o-audio-preview";
const tools = [{
  type: "function",
  function: {
    name: "get_weather",
    description: "Get the current weather for a city",
    parameters: {
      type: "object",
      properties: { city: { type: "string" }, unit: { type: "string", enum: ["celsius", "fahrenheit"] } },
      required: ["city", "unit"],
      additionalProperties: false,
    },
  },
}];
const out = {};

// 1. A streamed text answer through the stream helper.
{
  const stream = client.chat.completions.stream({
    model: MODEL, temperature: 0, messages: [{ role: "user", content: "What is the capital of France?" }],
  });
  const deltas = [];
  stream.on("content", (delta) => deltas.push(delta));
  const final = await stream.finalChatCompletion();
  out.text = { deltas: deltas.length, joined: deltas.join(""), content: final.choices[0].message.content,
               role: final.choices[0].message.role, finish: final.choices[0].finish_reason };
}

// 2. A streamed tool call, assembled by the SDK.
const question = [{ role: "user", content: "What's the weather in Berlin?" }];
let toolMessage;
{
  const stream = client.chat.completions.stream({ model: MODEL, messages: question, tools, tool_choice: "required" });
  let fragments = 0;
  stream.on("tool_calls.function.arguments.delta", () => { fragments += 1; });
  const final = await stream.finalChatCompletion();
  toolMessage = final.choices[0].message;
  const call = toolMessage.tool_calls[0];
  out.tool = { id: call.id, name: call.function.name, arguments: call.function.arguments,
               fragments, finish: final.choices[0].finish_reason };
}

// 3. The tool result goes back; a final answer comes.
{
  const messages = [...question, toolMessage,
    { role: "tool", tool_call_id: toolMessage.tool_calls[0].id, content: JSON.stringify({ temperature: 21, unit: "celsius" }) }];
  const final = await client.chat.completions.create({ model: MODEL, messages, tools, max_tokens: 60, temperature: 0 });
  out.after_tool = { content: final.choices[0].message.content, finish: final.choices[0].finish_reason };
}

// 4. A non-streamed answer with audio.
let spoken;
{
  const response = await client.chat.completions.create({
    model: AUDIO_MODEL, modalities: ["text", "audio"], audio: { voice: "alloy", format: "wav" },
    messages: [{ role: "user", content: "Say something nice about cats." }], max_tokens: 40, temperature: 0,
  });
  spoken = response.choices[0].message;
  const wav = Buffer.from(spoken.audio.data, "base64");
  out.audio = { riff: wav.subarray(0, 4).toString("latin1"), bytes: wav.length, transcript: spoken.audio.transcript,
                id: spoken.audio.id, expires_at: spoken.audio.expires_at, audio_tokens: response.usage.completion_tokens_details.audio_tokens };
}

// 5. A streamed answer with audio (pcm16), accumulated by the stream helper.
{
  const stream = client.chat.completions.stream({
    model: AUDIO_MODEL, modalities: ["text", "audio"], audio: { voice: "alloy", format: "pcm16" },
    messages: [{ role: "user", content: "Tell me one fact about dogs." }], max_tokens: 40, temperature: 0,
  });
  const pieces = [];
  let transcript = "";
  for await (const chunk of stream) {
    const audio = chunk.choices[0]?.delta?.audio;
    if (audio?.data) pieces.push(Buffer.from(audio.data, "base64"));
    if (audio?.transcript) transcript += audio.transcript;
  }
  const final = await stream.finalChatCompletion();
  const pcm = Buffer.concat(pieces);
  out.streamed_audio = { pcm_bytes: pcm.length, pcm_b64: pcm.toString("base64"), transcript,
                         final_transcript: final.choices[0].message.audio?.transcript ?? null,
                         final_id: final.choices[0].message.audio?.id ?? null, finish: final.choices[0].finish_reason };
}

// 6. A question asked as input_audio.
{
  const wav = readFileSync(wavPath).toString("base64");
  const response = await client.chat.completions.create({
    model: MODEL, temperature: 0, max_tokens: 30,
    messages: [{ role: "user", content: [{ type: "input_audio", input_audio: { data: wav, format: "wav" } }] }],
  });
  out.input_audio = { content: response.choices[0].message.content, audio_tokens: response.usage.prompt_tokens_details.audio_tokens };
}

// 7. The conversation continues by audio id.
{
  const response = await client.chat.completions.create({
    model: MODEL, max_tokens: 20,
    messages: [{ role: "user", content: "Say something nice about cats." }, { role: "assistant", audio: { id: spoken.audio.id } },
               { role: "user", content: "And about dogs?" }],
  });
  out.by_audio_id = { content: response.choices[0].message.content };
}

console.log(JSON.stringify(out));
