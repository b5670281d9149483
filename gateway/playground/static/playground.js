// The playground: only the public API (/v1 over fetch, /v1/realtime over a WebSocket).
// `window.playground` holds timings the browser test reads (first audio played vs. done).
"use strict";
const $ = (id) => document.getElementById(id);
const state = (window.playground = { events: [], audioAt: [], firstAudioPlayAt: null, responseDoneAt: null, turns: 0 });
const RATE = 24000; // audio/pcm in the realtime API: 16-bit, 24 kHz, mono

function status(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

function authHeaders() {
  const key = $("key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function api(path, init = {}) {
  const response = await fetch(`/v1${path}`, { ...init, headers: { ...authHeaders(), ...(init.headers || {}) } });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(body.error?.message || `${response.status} ${response.statusText}`);
  }
  return response;
}

async function loadVoices() {
  try {
    const voices = (await (await api("/audio/voices")).json()).data;
    for (const select of [$("speech-voice"), $("talk-voice")]) {
      select.replaceChildren(...voices.map((v) => new Option(`${v.id} (${v.model})`, v.id)));
    }
    status(`${voices.length} voices`);
  } catch (err) {
    status(`voices: ${err.message} (enter the API key?)`, true);
  }
}

// ------------------------------------------------------------------ speech

function wavFromPcm16(pcm, rate = RATE) {
  const header = new DataView(new ArrayBuffer(44));
  const text = (offset, s) => [...s].forEach((c, i) => header.setUint8(offset + i, c.charCodeAt(0)));
  text(0, "RIFF"); header.setUint32(4, 36 + pcm.byteLength, true); text(8, "WAVEfmt ");
  header.setUint32(16, 16, true); header.setUint16(20, 1, true); header.setUint16(22, 1, true);
  header.setUint32(24, rate, true); header.setUint32(28, rate * 2, true); header.setUint16(32, 2, true);
  header.setUint16(34, 16, true); text(36, "data"); header.setUint32(40, pcm.byteLength, true);
  return new Blob([header.buffer, pcm], { type: "audio/wav" });
}

async function speak() {
  const format = $("speech-format").value;
  const body = {
    model: $("speech-model").value, input: $("speech-input").value, voice: $("speech-voice").value,
    response_format: format, speed: Number($("speech-speed").value),
  };
  if ($("speech-instructions").value.trim()) body.instructions = $("speech-instructions").value.trim();
  status("speaking...");
  try {
    const response = await api("/audio/speech", {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
    });
    let blob = await response.blob();
    if (format === "pcm") blob = wavFromPcm16(await blob.arrayBuffer()); // raw PCM: wrap it to play it
    const url = URL.createObjectURL(blob);
    $("speech-audio").src = url;
    Object.assign($("speech-download"), { href: url, download: `speech.${format === "pcm" ? "wav" : format}`, hidden: false });
    await $("speech-audio").play().catch(() => {});
    status(`speech: ${blob.size} bytes of ${format}`);
  } catch (err) {
    status(`speech: ${err.message}`, true);
  }
}

// ------------------------------------------------------------------ transcription

async function transcribe() {
  const file = $("transcribe-file").files[0];
  if (!file) return status("transcription: choose a file", true);
  const form = new FormData();
  form.append("file", file);
  form.append("model", $("transcribe-model").value);
  form.append("response_format", "verbose_json");
  form.append("timestamp_granularities[]", "word");
  form.append("timestamp_granularities[]", "segment");
  if ($("transcribe-language").value.trim()) form.append("language", $("transcribe-language").value.trim());
  status("transcribing...");
  try {
    const result = await (await api("/audio/transcriptions", { method: "POST", body: form })).json();
    $("transcribe-text").textContent = result.text;
    $("transcribe-words").tBodies[0].replaceChildren(...(result.words || []).map((w) => {
      const row = document.createElement("tr");
      for (const value of [w.word, w.start.toFixed(2), w.end.toFixed(2)]) row.insertCell().textContent = value;
      return row;
    }));
    status(`transcribed ${result.duration?.toFixed(1)} s (${result.language})`);
  } catch (err) {
    status(`transcription: ${err.message}`, true);
  }
}

// ------------------------------------------------------------------ live talk

const talk = { ws: null, ctx: null, mic: null, node: null, playHead: 0, assistant: null };

function log(kind, text) {
  const item = document.createElement("li");
  item.className = kind;
  item.textContent = text;
  $("talk-log").append(item);
  item.scrollIntoView({ block: "nearest" });
  return item;
}

function toBase64(int16) {
  let binary = "";
  const bytes = new Uint8Array(int16.buffer, int16.byteOffset, int16.byteLength);
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

function send(event) {
  if (talk.ws?.readyState === WebSocket.OPEN) talk.ws.send(JSON.stringify(event));
}

function appendSamples(float32) {
  const pcm = new Int16Array(float32.length);
  for (let i = 0; i < float32.length; i++) pcm[i] = Math.max(-1, Math.min(1, float32[i])) * 0x7fff;
  send({ type: "input_audio_buffer.append", audio: toBase64(pcm) });
}

function play(base64) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  const pcm = new Int16Array(bytes.buffer, 0, bytes.length >> 1);
  if (!pcm.length) return;
  const buffer = talk.ctx.createBuffer(1, pcm.length, RATE);
  const channel = buffer.getChannelData(0);
  for (let i = 0; i < pcm.length; i++) channel[i] = pcm[i] / 0x8000;
  const source = talk.ctx.createBufferSource();
  source.buffer = buffer;
  source.connect(talk.ctx.destination);
  const startAt = Math.max(talk.ctx.currentTime + 0.02, talk.playHead);
  source.start(startAt);
  talk.playHead = startAt + buffer.duration;
  if (state.firstAudioPlayAt === null) {
    state.firstAudioPlayAt = performance.now() + (startAt - talk.ctx.currentTime) * 1000;
  }
}

async function microphone() {
  const file = $("talk-file").files[0];
  if (file) { // a file as the microphone: sent at real time, then a second of silence ends the turn
    const decoded = await talk.ctx.decodeAudioData(await file.arrayBuffer());
    const samples = decoded.getChannelData(0);
    const chunk = RATE / 10;
    for (let i = 0; i < samples.length && talk.ws; i += chunk) {
      appendSamples(samples.subarray(i, i + chunk));
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    for (let i = 0; i < 10 && talk.ws; i++) appendSamples(new Float32Array(chunk));
    return;
  }
  talk.mic = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: true } });
  const source = talk.ctx.createMediaStreamSource(talk.mic);
  talk.node = talk.ctx.createScriptProcessor(4096, 1, 1); // the context runs at 24 kHz: samples as sent
  talk.node.onaudioprocess = (event) => appendSamples(event.inputBuffer.getChannelData(0));
  source.connect(talk.node);
  talk.node.connect(talk.ctx.destination);
}

function onEvent(event) {
  state.events.push(event.type);
  switch (event.type) {
    case "session.created":
      status("talking: speak, then pause");
      break;
    case "input_audio_buffer.speech_started":
      log("user", "(hearing you...)");
      break;
    case "conversation.item.input_audio_transcription.completed":
      log("user", `You: ${event.transcript}`);
      break;
    case "response.created":
      talk.assistant = null;
      break;
    case "response.output_audio.delta":
      state.audioAt.push(performance.now());
      play(event.delta);
      break;
    case "response.output_audio_transcript.delta":
    case "response.output_text.delta":
      talk.assistant ??= log("assistant", "Assistant: ");
      talk.assistant.textContent += event.delta;
      break;
    case "response.function_call_arguments.done":
      log("tool", `tool call: ${event.name}(${event.arguments})`);
      send({ type: "conversation.item.create", item: {
        type: "function_call_output", call_id: event.call_id,
        output: JSON.stringify({ note: "the playground runs no tools" }) } });
      break;
    case "response.done":
      state.responseDoneAt = performance.now();
      state.turns += 1;
      if (event.response.output?.some((item) => item.type === "function_call")) send({ type: "response.create" });
      break;
    case "error":
      log("error", `error: ${event.error.message}`);
      break;
  }
}

async function startTalk() {
  let tools = [];
  try {
    tools = $("talk-tools").value.trim() ? JSON.parse($("talk-tools").value) : [];
  } catch (err) {
    return status(`tools: ${err.message}`, true);
  }
  Object.assign(state, { firstAudioPlayAt: null, responseDoneAt: null, events: [], audioAt: [], turns: 0 });
  talk.ctx = new AudioContext({ sampleRate: RATE });
  await talk.ctx.resume();
  talk.playHead = 0;
  const key = $("key").value.trim();
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/realtime?model=gpt-realtime`;
  talk.ws = new WebSocket(url, ["realtime", ...(key ? [`openai-insecure-api-key.${key}`] : [])]);
  talk.ws.onmessage = (message) => onEvent(JSON.parse(message.data));
  talk.ws.onclose = (close) => { if (talk.ws) status(`session closed (${close.code} ${close.reason})`, close.code !== 1000); stopTalk(); };
  talk.ws.onopen = async () => {
    send({ type: "session.update", session: {
      type: "realtime", tools, ...($("talk-instructions").value.trim() && { instructions: $("talk-instructions").value.trim() }),
      ...($("talk-max-tokens").value && { max_output_tokens: Number($("talk-max-tokens").value) }),
      audio: { input: { transcription: { model: "whisper-1" } }, output: { voice: $("talk-voice").value } },
    } });
    $("talk-start").disabled = true;
    $("talk-stop").disabled = false;
    try {
      await microphone();
    } catch (err) {
      status(`microphone: ${err.message}`, true);
    }
  };
}

function stopTalk() {
  const ws = talk.ws;
  talk.ws = null;
  ws?.close();
  talk.node?.disconnect();
  talk.mic?.getTracks().forEach((track) => track.stop());
  talk.mic = talk.node = null;
  $("talk-start").disabled = false;
  $("talk-stop").disabled = true;
}

$("talk-tools").placeholder = JSON.stringify([{ type: "function", name: "get_weather", description: "Weather for a city",
  parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] } }]);
$("speech-go").onclick = speak;
$("transcribe-go").onclick = transcribe;
$("talk-start").onclick = startTalk;
$("talk-stop").onclick = stopTalk;
$("key").onchange = loadVoices;
loadVoices();
