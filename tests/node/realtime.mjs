// Drives /v1/realtime with the official openai Node SDK's realtime client (OpenAIRealtimeWS,
// on the `ws` package) and prints one JSON object of observations for
// tests/test_realtime_node.py. The SDK opens only wss:// URLs, so the gateway is served
// over TLS here (NODE_EXTRA_CA_CERTS names the test's certificate).
import OpenAI from "openai";
import { OpenAIRealtimeWS } from "openai/realtime/ws";
import { readFileSync } from "node:fs";

const [baseURL, pcmPath] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "sk-local", maxRetries: 0 });
const rt = new OpenAIRealtimeWS({ model: "gpt-realtime" }, client);
const events = [];
const errors = [];
const waiters = [];
rt.on("event", (event) => {
  events.push(event);
  for (const w of [...waiters]) {
    if (w.test(event)) { waiters.splice(waiters.indexOf(w), 1); w.resolve(event); }
  }
});
rt.on("error", (err) => errors.push({ message: err.message, event_id: err.event_id ?? null, code: err.error?.code ?? null }));
const until = (type, test = () => true) => new Promise((resolve, reject) => {
  const timer = setTimeout(() => reject(new Error(`timed out waiting for ${type}`)), 240_000);
  waiters.push({ test: (e) => e.type === type && test(e), resolve: (e) => { clearTimeout(timer); resolve(e); } });
});
const sessionCreated = until("session.created");
await new Promise((resolve) => rt.socket.on("open", resolve));
const out = { session_created: (await sessionCreated).session.id };

// 1. Server VAD: a recording streamed in 100 ms chunks, then silence.
rt.send({ type: "session.update", session: { type: "realtime", max_output_tokens: 120, audio: { input: { transcription: { model: "whisper-1" } } } } });
await until("session.updated");
const pcm = Buffer.concat([readFileSync(pcmPath), Buffer.alloc(96_000)]);
const done1 = until("response.done");
for (let i = 0; i < pcm.length; i += 4800) {
  rt.send({ type: "input_audio_buffer.append", audio: pcm.subarray(i, i + 4800).toString("base64") });
  await new Promise((r) => setTimeout(r, 10));
}
const first = (await done1).response;
const transcription = events.find((e) => e.type === "conversation.item.input_audio_transcription.completed");
out.vad = {
  started: events.some((e) => e.type === "input_audio_buffer.speech_started"),
  stopped: events.some((e) => e.type === "input_audio_buffer.speech_stopped"),
  transcript: transcription?.transcript ?? null,
  status: first.status,
  answer: first.output[0]?.content?.[0]?.transcript ?? null,
  audio_bytes: events.filter((e) => e.type === "response.output_audio.delta" && e.response_id === first.id)
    .reduce((n, e) => n + Buffer.from(e.delta, "base64").length, 0),
};

// 2. Manual commit with a text item and a text answer.
rt.send({ type: "session.update", session: { type: "realtime", output_modalities: ["text"], audio: { input: { turn_detection: null } } } });
await until("session.updated", (e) => e.session.audio.input.turn_detection === null);
rt.send({ type: "conversation.item.create", item: { type: "message", role: "user", content: [{ type: "input_text", text: "Say hello." }] } });
await until("conversation.item.added");
const done2 = until("response.done");
rt.send({ type: "response.create" });
const second = (await done2).response;
out.text = { status: second.status, text: second.output[0]?.content?.[0]?.text ?? null };

// 3. A malformed event gets an error naming its event_id; the session continues.
const errorEvent = until("error");
rt.send({ type: "conversation.item.truncate", event_id: "evt_node_bad", item_id: "nope", content_index: 0, audio_end_ms: "x" });
out.error = (await errorEvent).error;
rt.send({ type: "input_audio_buffer.clear" });
await until("input_audio_buffer.cleared");
out.continued = true;
out.types = [...new Set(events.map((e) => e.type))];
out.sdk_errors = errors;
rt.close();
console.log(JSON.stringify(out));
