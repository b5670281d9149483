// Diarized transcription through the official openai Node SDK, as its documentation writes
// it; prints one JSON object of observations for tests/test_diarization.py.
import OpenAI, { toFile } from "openai";
import { readFileSync } from "node:fs";

const [baseURL, talkPath, referencePath] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "sk-local", maxRetries: 0, timeout: 600_000 });
const talk = readFileSync(talkPath);
const reference = readFileSync(referencePath).toString("base64");
const out = {};

// 1. diarized_json with a known speaker, as in the API reference's example.
{
  const result = await client.audio.transcriptions.create({
    model: "gpt-4o-transcribe-diarize",
    file: await toFile(talk, "talk.wav"),
    response_format: "diarized_json",
    chunking_strategy: "auto",
    known_speaker_names: ["agent"],
    known_speaker_references: [`data:audio/wav;base64,${reference}`],
  });
  out.diarized = {
    task: result.task, duration: result.duration, text: result.text, usage: result.usage,
    segments: result.segments.map((s) => ({ type: s.type, id: s.id, start: s.start, end: s.end, text: s.text, speaker: s.speaker })),
  };
}

// 2. The same, streamed: the SDK's SSE reader yields typed events.
{
  const stream = await client.audio.transcriptions.create({
    model: "gpt-4o-transcribe-diarize",
    file: await toFile(talk, "talk.wav"),
    response_format: "diarized_json",
    chunking_strategy: "auto",
    stream: true,
  });
  const types = [];
  const segments = [];
  let done = null;
  for await (const event of stream) {
    types.push(event.type);
    if (event.type === "transcript.text.segment") segments.push({ id: event.id, speaker: event.speaker, text: event.text });
    if (event.type === "transcript.text.done") done = event.text;
  }
  out.stream = { types, segments, done };
}

console.log(JSON.stringify(out));
