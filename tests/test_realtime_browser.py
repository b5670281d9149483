"""The README's browser example, run as written: its Python app server mints an ``ek_``
secret with the real key, and its page, bundled locally with esbuild from npm's
``@openai/agents-realtime`` (tests/browser, no CDN), calls the gateway over WebRTC in
headless Debian Chromium whose fake microphone plays a real recording. The spoken
question is transcribed and the answer is heard: the page's received audio is recorded
(a MediaRecorder on the remote track) and Whisper hears the answer's words in it.

The test harness adds to the page, through the DevTools protocol and without changing
it, a recorder of the data channel's events and of the received audio. Every event must
be a spec server event.

Loopback only: the gateway offers and accepts 127.0.0.0/8 (its defaults), and Chromium
gathers loopback candidates (``--allow-loopback-in-peer-connection``) without mDNS names
(so it sends no multicast); it is offered no other address, so every packet it sends goes
to 127.0.0.1."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
import time
import wave

import httpx
import pytest

from tests.conftest import ROOT, free_port, live_server
from tests.recordings import HERE as RECORDINGS
from tests.recordings import TEXTS
from tests.test_readme_examples import readme_blocks

pytestmark = pytest.mark.slow

BROWSER_DIR = ROOT / "tests" / "browser"
RECORDING = "zero_shot_en_prompt"
SECTION = "Voice in the browser"
FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
    "--autoplay-policy=no-user-gesture-required",
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
    # Loopback candidates, and no mDNS names for the host candidates (no multicast).
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]
# Added to the page by the test (not part of the example): the data channel's events and
# the received audio, recorded for the assertions.
HARNESS = """
window.__events = []; window.__chunks = [];
const Native = window.RTCPeerConnection;
window.RTCPeerConnection = class extends Native {
  constructor(...args) {
    super(...args);
    this.addEventListener('track', (event) => {
      const recorder = new MediaRecorder(new MediaStream([event.track]), {mimeType: 'audio/webm;codecs=opus'});
      recorder.ondataavailable = (e) => e.data.size && window.__chunks.push(e.data);
      recorder.start(250);
      window.__recorder = recorder;
    });
  }
  createDataChannel(...args) {
    const channel = super.createDataChannel(...args);
    channel.addEventListener('message', (e) => window.__events.push(JSON.parse(e.data)));
    return channel;
  }
};
"""


def section_blocks() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    blocks = [b for b in readme_blocks(text) if b.section.startswith(SECTION)]
    found = {b.language: b.code for b in blocks if b.language in ("python", "js", "html")}
    assert set(found) == {"python", "js", "html"}, f"the README's {SECTION} section changed"
    return found


def npm_browser_packages() -> None:
    npm = shutil.which("npm")
    assert npm, "npm is needed for the browser tests (dev.py installs it)"
    if not (BROWSER_DIR / "node_modules" / "@openai" / "agents-realtime").exists():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=BROWSER_DIR, check=True,
                       timeout=300)


def microphone(path) -> None:
    """The recording, then silence for the answer to play in."""
    with wave.open(str(RECORDINGS / f"{RECORDING}.wav")) as source:
        rate, frames = source.getframerate(), source.readframes(source.getnframes())
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1), out.setsampwidth(2), out.setframerate(rate)
        out.writeframes(bytes(rate) + frames + bytes(2 * rate * 30))


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The gateway, and the README's app server (page and secret) beside it."""
    from gateway.settings import load_settings

    npm_browser_packages()
    folder = tmp_path_factory.mktemp("browser-app")
    blocks = section_blocks()
    (folder / "server.py").write_text(blocks["python"])
    (folder / "app.js").write_text(blocks["js"])
    (folder / "index.html").write_text(blocks["html"])
    esbuild = BROWSER_DIR / "node_modules" / ".bin" / "esbuild"
    subprocess.run(
        [str(esbuild), "app.js", "--bundle", "--format=esm", "--outfile=bundle.js",
         "--log-level=warning"],
        cwd=folder, check=True, timeout=120,
        env={**os.environ, "NODE_PATH": str(BROWSER_DIR / "node_modules")},
    )
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    settings = load_settings()
    settings.server.api_keys = ["sk-app"]
    settings.server.cors_allow_origins = [origin]
    settings.engines.preload = ["whisper-1", "tts-1", "gpt-4o-mini"]
    gateway = live_server(settings).start(timeout=300)
    server = subprocess.Popen(
        [sys.executable, "server.py"], cwd=folder,
        env={**os.environ, "GATEWAY_URL": gateway.url, "GATEWAY_KEY": "sk-app", "PORT": str(port)},
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(origin + "/index.html", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield gateway, origin, folder
    finally:
        server.terminate()
        server.wait(10)
        gateway.stop()


def chromium(folder, wav):
    """Headless Chromium held to loopback, whose fake microphone plays ``wav`` once."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    assert binary and driver_path, "install chromium and chromium-driver (dev.py does when missing)"
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in [*FLAGS, f"--user-data-dir={folder / ('profile-' + wav.stem)}",
                 f"--use-file-for-fake-audio-capture={wav}%noloop"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_script_timeout(60)
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": HARNESS})
    return driver


@pytest.fixture(scope="module")
def browser(app):
    _, _, folder = app
    microphone(folder / "question.wav")
    driver = chromium(folder, folder / "question.wav")
    yield driver
    driver.quit()


def wait(predicate, timeout: float, what: str, driver=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    seen = driver.execute_script("return window.__events.map((e) => e.type)") if driver else []
    raise AssertionError(f"timed out waiting for {what}; the last events: {seen[-40:]}")


def words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z']+", text.lower()) if len(w) > 3}


def received_audio(driver) -> bytes:
    encoded = driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        window.__recorder.onstop = async () => {
          const blob = new Blob(window.__chunks, {type: 'audio/webm'});
          const bytes = new Uint8Array(await blob.arrayBuffer());
          let text = ''; for (const b of bytes) text += String.fromCharCode(b);
          done(btoa(text));
        };
        window.__recorder.stop();
    """)
    return base64.b64decode(encoded)


def test_the_readme_page_talks_over_webrtc_with_an_ephemeral_key(app, browser, spec, tmp_path):
    gateway, origin, folder = app
    driver = browser
    driver.get(origin + "/index.html")
    events = lambda: driver.execute_script("return window.__events")  # noqa: E731
    wait(lambda: "connected" in driver.execute_script(
        "return document.getElementById('status').textContent"), 60, "the call")
    driver.save_screenshot(str(tmp_path / "1-connected.png"))
    heard = wait(lambda: next((e for e in events() if e["type"] ==
                               "conversation.item.input_audio_transcription.completed"), None),
                 120, "the question's transcript")
    assert words(TEXTS[RECORDING]) & words(heard["transcript"]), heard
    stopped = wait(lambda: next((e for e in events() if e["type"] == "output_audio_buffer.stopped"),
                                None), 240, "an answer to finish playing", driver)
    driver.save_screenshot(str(tmp_path / "2-answered.png"))
    spoken = " ".join(
        e["transcript"] for e in events() if e["type"] == "response.output_audio_transcript.done"
        and e["response_id"] == stopped["response_id"])
    recorded = received_audio(driver)
    (tmp_path / "received.webm").write_bytes(recorded)
    said = httpx.post(
        gateway.url + "/v1/audio/transcriptions", headers={"authorization": "Bearer sk-app"},
        files={"file": ("received.webm", recorded, "audio/webm")}, data={"model": "whisper-1"},
        timeout=120,
    )
    assert said.status_code == 200, said.text
    assert len(words(spoken) & words(said.json()["text"])) >= max(1, len(words(spoken)) // 2), (
        spoken, said.json()["text"])
    # The page shows the conversation (the SDK's history): the user's words, then the answer.
    log = wait(lambda: (lambda text: "user: " in text and text)(driver.execute_script(
        "return document.getElementById('log').textContent")), 20, "the user's words on the page")
    user = next(line for line in log.splitlines() if line.startswith("user: "))
    assert words(TEXTS[RECORDING]) & words(user), log
    assert "assistant:" in log
    seen = events()
    assert "response.output_audio.delta" not in {e["type"] for e in seen}
    for event in seen:
        spec.validate(event, "RealtimeServerEvent")
    page = driver.page_source
    assert "sk-app" not in page  # the real key never reaches the page


def speech(gateway, text: str) -> tuple[int, bytes]:
    """The gateway's own voice saying ``text``: (rate, 16-bit mono PCM)."""
    import io

    made = httpx.post(
        gateway.url + "/v1/audio/speech", headers={"authorization": "Bearer sk-app"},
        json={"model": "tts-1", "voice": "alloy", "input": text, "response_format": "wav"},
        timeout=120,
    )
    assert made.status_code == 200, made.text
    with wave.open(io.BytesIO(made.content)) as source:
        return source.getframerate(), source.readframes(source.getnframes())


# The fake microphone of the second test: a question the page's get_weather tool answers,
# then requests for long answers, each spoken while the one before is still being answered
# aloud (the page's session has no limit on an answer's length): the user barges in.
CONVERSATION = [
    (1.0, "What is the weather in Paris?"),
    (9.0, "Tell me a long story about a dragon and a castle."),
    (9.0, "Stop. Tell me a long story about a ship at sea."),
    (9.0, "Stop. What is the weather in London?"),
]


def test_the_readme_page_calls_its_tool_and_is_interrupted(app, spec, tmp_path):
    """The page's tool (get_weather) is called by the model and its output answered; a
    question spoken while an answer plays cancels it (server VAD barge-in: the unplayed
    audio cleared, the response cancelled) and is answered in turn."""
    gateway, origin, folder = app
    rate, pcm = None, b""
    for pause, text in CONVERSATION:
        rate, said = speech(gateway, text)
        pcm += bytes(2 * int(rate * pause)) + said
    wav = tmp_path / "conversation.wav"
    with wave.open(str(wav), "wb") as out:
        out.setnchannels(1), out.setsampwidth(2), out.setframerate(rate)
        out.writeframes(pcm + bytes(2 * rate * 30))
    driver = chromium(folder, wav)
    try:
        driver.get(origin + "/index.html")
        events = lambda: driver.execute_script("return window.__events")  # noqa: E731
        of = lambda kind: [e for e in events() if e["type"] == kind]  # noqa: E731
        # The tool: called by the model, run by the page, its output answered.
        call = wait(lambda: next((i for e in of("response.output_item.done")
                                  if (i := e["item"])["type"] == "function_call"), None),
                    180, "a tool call", driver)
        assert call["name"] == "get_weather" and "paris" in call["arguments"].lower(), call
        output = wait(lambda: next((e["item"] for e in of("conversation.item.added")
                                    if e["item"]["type"] == "function_call_output"), None),
                      60, "the tool's output in the conversation", driver)
        assert output["call_id"] == call["call_id"] and "sunny" in output["output"], output
        at = next(i for i, e in enumerate(events()) if e["type"] == "conversation.item.added"
                  and e["item"]["id"] == output["id"])
        wait(lambda: any(e["type"] == "response.created" for e in events()[at:]), 120,
             "a response to the tool's output", driver)
        # Barge-in: an answer cancelled (or its unplayed audio cleared) by the next question.
        interrupted = wait(lambda: [e["response"]["id"] for e in of("response.done")
                                    if e["response"]["status"] == "cancelled"]
                           + [e["response_id"] for e in of("output_audio_buffer.cleared")],
                           240, "an answer interrupted", driver)
        driver.save_screenshot(str(tmp_path / "barge-in.png"))
        seen = events()
        index = min(i for i, e in enumerate(seen) if e["type"] == "output_audio_buffer.cleared"
                    or e["type"] == "response.done" and e["response"]["status"] == "cancelled")
        # ... and the question that interrupted it is heard, and answered.
        wait(lambda: any(e["type"] == "conversation.item.input_audio_transcription.completed"
                         for e in events()[index:]), 120, "the interrupting question's words", driver)
        wait(lambda: any(e["type"] == "response.created" and e["response"]["id"] not in interrupted
                         for e in events()[index:]), 180, "the next turn", driver)
        log = driver.execute_script("return document.getElementById('log').textContent")
        assert "weather" in log.lower() and "user: " in log, log
        for event in events():
            spec.validate(event, "RealtimeServerEvent")
        print("interrupted", interrupted, "log:", log)
    finally:
        driver.quit()
