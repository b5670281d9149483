// Speech and transcription through the official openai Node SDK, as a new user would
// write them; prints one JSON object of observations for tests/test_audio_node.py.
import OpenAI, { toFile } from "openai";
import { Stream } from "openai/core/streaming";
import { readFileSync, writeFileSync } from "node:fs";

const [baseURL, wavPath, outDir, text, japaneseWavPath] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "sk-local", maxRetries: 0 });
const wav = readFileSync(wavPath);
const out = {};

async function failure(promise) {
  try {
    await promise;
    return { thrown: false };
  } catch (err) {
    return { thrown: true, class: err.constructor.name, status: err.status, code: err.code ?? null, param: err.param ?? null,
             type: err.type ?? null, message: err.message };
  }
}

// 1. Speech as an mp3 file, read from the body as it arrives.
{
  const started = performance.now();
  const response = await client.audio.speech.create({ model: "tts-1", voice: "alloy", input: text, response_format: "mp3" });
  const pieces = [];
  let firstMs = null;
  for await (const piece of response.body) {
    if (firstMs === null) firstMs = performance.now() - started;
    pieces.push(Buffer.from(piece));
  }
  const mp3 = Buffer.concat(pieces);
  writeFileSync(`${outDir}/speech.mp3`, mp3);
  out.speech = { content_type: response.headers.get("content-type"), pieces: pieces.length, bytes: mp3.length,
                 first_ms: firstMs, total_ms: performance.now() - started };
}

// 2. Speech as server-sent events, parsed by the SDK's own SSE reader.
{
  const response = await client.audio.speech.create(
    { model: "gpt-4o-mini-tts", voice: "nova", input: "Hello there. This is a stream.", response_format: "pcm", stream_format: "sse" },
  );
  const events = Stream.fromSSEResponse(response, new AbortController(), client);
  const types = [];
  let pcmBytes = 0;
  let usage = null;
  for await (const event of events) {
    types.push(event.type);
    if (event.type === "speech.audio.delta") pcmBytes += Buffer.from(event.audio, "base64").length;
    if (event.type === "speech.audio.done") usage = event.usage;
  }
  out.speech_sse = { content_type: response.headers.get("content-type"), types, pcm_bytes: pcmBytes, usage };
}

// 3. Transcriptions in every response format, the file given with toFile.
{
  const file = () => toFile(wav, "question.wav", { type: "audio/wav" });
  const json = await client.audio.transcriptions.create({ model: "whisper-1", file: await file() });
  const verbose = await client.audio.transcriptions.create({
    model: "whisper-1", file: await file(), response_format: "verbose_json", timestamp_granularities: ["word", "segment"],
  });
  const srt = await client.audio.transcriptions.create({ model: "whisper-1", file: await file(), response_format: "srt" });
  const vtt = await client.audio.transcriptions.create({ model: "whisper-1", file: await file(), response_format: "vtt" });
  const plain = await client.audio.transcriptions.create({ model: "whisper-1", file: await file(), response_format: "text" });
  out.transcription = {
    json: json.text,
    verbose: { text: verbose.text, language: verbose.language, duration: verbose.duration,
               words: verbose.words?.length ?? 0, segments: verbose.segments?.length ?? 0,
               words_in_order: (verbose.words ?? []).every((w, i, all) => i === 0 || w.start >= all[i - 1].start) },
    srt_type: typeof srt, srt, vtt_type: typeof vtt, vtt, text_type: typeof plain, text: plain,
  };
}

// 4. A streamed transcription with log probabilities.
{
  const stream = await client.audio.transcriptions.create({
    model: "gpt-4o-transcribe", file: await toFile(wav, "question.wav"), stream: true, include: ["logprobs"],
  });
  const types = [];
  let deltas = "";
  let done = null;
  let logprobs = 0;
  for await (const event of stream) {
    types.push(event.type);
    if (event.type === "transcript.text.delta") {
      deltas += event.delta;
      logprobs += event.logprobs?.length ?? 0;
    }
    if (event.type === "transcript.text.done") done = event.text;
  }
  out.transcription_stream = { types, deltas, done, logprobs };
}

// 5. A translation of a Japanese recording, as plain text.
{
  const japanese = readFileSync(japaneseWavPath);
  const translated = await client.audio.translations.create({ model: "whisper-1", file: await toFile(japanese, "q.wav"), response_format: "text" });
  out.translation = { type: typeof translated, text: translated };
}

// 6. Mistakes surface as the SDK's typed errors, with the field at fault.
out.errors = {
  bad_voice: await failure(client.audio.speech.create({ model: "tts-1", voice: "nobody", input: "Hi." })),
  bad_speed: await failure(client.audio.speech.create({ model: "tts-1", voice: "alloy", input: "Hi.", speed: 9 })),
  unknown_model: await failure(client.audio.transcriptions.create({ model: "whisper-9", file: await toFile(wav, "q.wav") })),
  not_audio: await failure(client.audio.transcriptions.create({ model: "whisper-1", file: await toFile(Buffer.from("hello"), "notes.txt") })),
};

console.log(JSON.stringify(out));
