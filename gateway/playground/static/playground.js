// The playground: only the public API (/v1 over fetch; talk: a WebRTC call to
// /v1/realtime/calls with an ephemeral key from /playground/session).
// `window.playground` holds timings the browser test reads (first audio played vs. done).
"use strict";
const $ = (id) => document.getElementById(id);
const state = (window.playground = { events: [], audioAt: [], firstAudioPlayAt: null, firstSoundAt: null, peak: 0, responseDoneAt: null, turns: 0 });
const RATE = 24000; // audio/pcm: 16-bit, 24 kHz, mono

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
// A WebRTC call, as a browser app talks to OpenAI: an ephemeral key (ek_) from
// POST /playground/session, the SDP offer to POST /v1/realtime/calls, the microphone as the
// call's audio track, the answer's audio as the remote track (played by an <audio>
// element), and the realtime events on the "oai-events" data channel.

const talk = { pc: null, channel: null, ctx: null, mic: null, source: null, audio: null, meter: null, assistant: null };

function log(kind, text) {
  const item = document.createElement("li");
  item.className = kind;
  item.textContent = text;
  $("talk-log").append(item);
  item.scrollIntoView({ block: "nearest" });
  return item;
}

function send(event) {
  if (talk.channel?.readyState === "open") talk.channel.send(JSON.stringify(event));
}

async function ephemeralKey() {
  const response = await fetch("/playground/session", { method: "POST" });
  if (response.ok) return (await response.json()).value;
  const refused = (await response.json().catch(() => ({}))).error?.message || `${response.status} ${response.statusText}`;
  if (!$("key").value.trim()) throw new Error(refused);
  // The gateway mints none for this page: mint one with the key typed above. The call
  // itself only ever sees the ephemeral key.
  const minted = await api("/realtime/client_secrets", {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ expires_after: { anchor: "created_at", seconds: 600 }, session: { type: "realtime" } }),
  });
  return (await minted.json()).value;
}

async function microphone() {
  const file = $("talk-file").files[0];
  if (!file) {
    talk.mic = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: true } });
    return { track: talk.mic.getAudioTracks()[0], start: () => {} };
  }
  // A file as the microphone: played into the call's track in real time, then silence. A
  // source that never ends (a constant 0) keeps the track sending once the file is over,
  // as a microphone does: a track whose sources have all ended sends nothing.
  const decoded = await talk.ctx.decodeAudioData(await file.arrayBuffer());
  const destination = talk.ctx.createMediaStreamDestination();
  const silence = talk.ctx.createConstantSource();
  silence.offset.value = 0;
  silence.connect(destination);
  silence.start();
  talk.source = talk.ctx.createBufferSource();
  talk.source.buffer = decoded;
  talk.source.connect(destination);
  return { track: destination.stream.getAudioTracks()[0], start: () => talk.source.start() };
}

function playRemote(stream) {
  talk.audio = new Audio();
  talk.audio.autoplay = true;
  talk.audio.srcObject = stream;
  talk.audio.play().catch(() => {});
  // How loud what plays is: the answer heard, not only its events.
  const analyser = talk.ctx.createAnalyser();
  talk.ctx.createMediaStreamSource(stream).connect(analyser);
  const samples = new Float32Array(analyser.fftSize);
  talk.meter = setInterval(() => {
    analyser.getFloatTimeDomainData(samples);
    const peak = samples.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
    state.peak = Math.max(state.peak, peak);
    if (peak > 0.02 && state.firstSoundAt === null) state.firstSoundAt = performance.now();
  }, 20);
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
    case "output_audio_buffer.started": // the gateway began playing the answer on the call
      state.audioAt.push(performance.now());
      state.firstAudioPlayAt ??= performance.now();
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

function gathered(pc, ms) { // the offer with its candidates (the gateway takes no trickle)
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    pc.addEventListener("icegatheringstatechange", () => pc.iceGatheringState === "complete" && resolve());
    setTimeout(resolve, ms);
  });
}

async function startTalk() {
  let tools = [];
  try {
    tools = $("talk-tools").value.trim() ? JSON.parse($("talk-tools").value) : [];
  } catch (err) {
    return status(`tools: ${err.message}`, true);
  }
  Object.assign(state, { firstAudioPlayAt: null, firstSoundAt: null, peak: 0, responseDoneAt: null, events: [], audioAt: [], turns: 0 });
  $("talk-start").disabled = true;
  try {
    talk.ctx = new AudioContext();
    await talk.ctx.resume();
    status("talking: calling...");
    const secret = await ephemeralKey();
    const pc = (talk.pc = new RTCPeerConnection());
    // The microphone joins once the call is up (replaceTrack): nothing said while it
    // connects is lost.
    const { sender } = pc.addTransceiver("audio", { direction: "sendrecv" });
    pc.ontrack = (event) => playRemote(event.streams[0] ?? new MediaStream([event.track]));
    pc.onconnectionstatechange = () => {
      if (talk.pc === pc && ["failed", "closed"].includes(pc.connectionState)) {
        status(`call ${pc.connectionState}`, pc.connectionState === "failed");
        stopTalk();
      }
    };
    const channel = (talk.channel = pc.createDataChannel("oai-events"));
    channel.onmessage = (message) => onEvent(JSON.parse(message.data));
    channel.onopen = async () => {
      send({ type: "session.update", session: {
        type: "realtime", tools, ...($("talk-instructions").value.trim() && { instructions: $("talk-instructions").value.trim() }),
        ...($("talk-max-tokens").value && { max_output_tokens: Number($("talk-max-tokens").value) }),
        audio: { input: { transcription: { model: "whisper-1" } }, output: { voice: $("talk-voice").value } },
      } });
      $("talk-stop").disabled = false;
      try {
        const mic = await microphone();
        await sender.replaceTrack(mic.track);
        mic.start();
      } catch (err) {
        status(`microphone: ${err.message}`, true);
      }
    };
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc, 2000);
    const response = await fetch("/v1/realtime/calls", {
      method: "POST", body: pc.localDescription.sdp,
      headers: { Authorization: `Bearer ${secret}`, "content-type": "application/sdp" },
    });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error(body.error?.message || `${response.status} ${response.statusText}`);
    }
    await pc.setRemoteDescription({ type: "answer", sdp: await response.text() });
  } catch (err) {
    status(`talk: ${err.message}`, true);
    stopTalk();
  }
}

function stopTalk() { // closing the peer connection ends the call (DTLS close)
  const pc = talk.pc;
  talk.pc = talk.channel = null;
  pc?.close();
  clearInterval(talk.meter);
  try { talk.source?.stop(); } catch { /* never started */ }
  talk.mic?.getTracks().forEach((track) => track.stop());
  if (talk.audio) talk.audio.srcObject = null;
  talk.ctx?.close();
  talk.mic = talk.source = talk.audio = talk.ctx = null;
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
