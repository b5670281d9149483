"""The playground at ``/`` in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``, which dev.py installs when missing) driven by Selenium.

The microphone is Chromium's fake capture device playing a WAV file of a spoken question,
so the live-talk path is the one a user takes: getUserMedia, an ephemeral key from
``POST /playground/session``, a WebRTC call to ``/v1/realtime/calls`` (events on the
``oai-events`` data channel, the answer played from the call's remote track). Screenshots of
each step are saved under the test's tmp dir.

Loopback only, as in tests/test_realtime_browser.py: the gateway offers and accepts
127.0.0.0/8 (its defaults) and Chromium gathers loopback candidates without mDNS names.
"""

from __future__ import annotations

import shutil
import time

import pytest

from tests.conftest import ROOT, live_server

pytestmark = pytest.mark.slow

# Spoken into the fake microphone: asks for an answer of several sentences, so that its
# first sentence can play while the rest is still being generated.
QUESTION = "Write a long story about a dragon."
FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
    "--window-size=1400,1100", "--autoplay-policy=no-user-gesture-required",
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
    # Loopback candidates, and no mDNS names for the host candidates (no multicast).
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]


@pytest.fixture(scope="module")
def browser(tmp_path_factory, openai_client):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver_path, "install chromium and chromium-driver (dev.py does when missing)"
    folder = tmp_path_factory.mktemp("browser")
    microphone = folder / "question.wav"
    microphone.write_bytes(openai_client.audio.speech.create(
        model="tts-1", voice="alloy", input=QUESTION, response_format="wav").content)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [*FLAGS, f"--user-data-dir={folder / 'profile'}",
                 f"--use-file-for-fake-audio-capture={microphone}%noloop"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_script_timeout(30)
    yield driver, folder
    driver.quit()


def wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_playground_speaks_transcribes_and_talks(browser, server, speech_wav, tmp_path):
    from selenium.webdriver.common.by import By

    driver, folder = browser
    driver.get(server.url + "/")
    by_id = lambda name: driver.find_element(By.ID, name)  # noqa: E731
    wait(lambda: len(by_id("speech-voice").find_elements(By.TAG_NAME, "option")) > 3, 30, "the voice list")
    driver.save_screenshot(str(tmp_path / "1-loaded.png"))

    # Speech: a voice, a format and a speed; the audio element gets a playable file.
    driver.execute_script("document.getElementById('speech-format').value = 'mp3';"
                          "document.getElementById('speech-speed').value = '1.5';"
                          "document.getElementById('speech-voice').value = 'nova';")
    by_id("speech-go").click()
    wait(lambda: "speech:" in by_id("status").text, 60, "speech")
    assert "mp3" in by_id("status").text and "error" not in by_id("status").get_attribute("class")
    duration = wait(lambda: driver.execute_script(
        "const a = document.getElementById('speech-audio'); return a.readyState >= 1 && a.duration;"), 20, "audio")
    assert 0.5 < duration < 10

    # Transcription with word timestamps.
    upload = folder / "paragraph.wav"
    upload.write_bytes(speech_wav)
    by_id("transcribe-file").send_keys(str(upload))
    by_id("transcribe-go").click()
    rows = wait(lambda: by_id("transcribe-words").find_elements(By.CSS_SELECTOR, "tbody tr"), 120, "words")
    assert "weather" in by_id("transcribe-text").text.lower() and len(rows) > 20
    starts = [float(row.find_elements(By.TAG_NAME, "td")[1].text) for row in rows]
    assert starts == sorted(starts) and starts[-1] > 5
    driver.save_screenshot(str(tmp_path / "2-speech-and-transcription.png"))

    # Live talk, twice: the fake microphone asks the question, then the same question as a
    # file used as the microphone. The answer must play while it is still streaming: its
    # first sentence sounds well before response.done. (A reply of one sentence cannot show
    # that, and the model samples, so at least one of the two turns must.)
    by_id("talk-instructions").send_keys("You are a storyteller. Always answer with a story of at least five sentences.")
    by_id("talk-max-tokens").send_keys("120")  # a few sentences, not a story as long as the context
    leads = []
    for turn, use_file in enumerate((False, True), start=3):
        if use_file:
            by_id("talk-file").send_keys(str(folder / "question.wav"))
        by_id("talk-start").click()
        wait(lambda: driver.execute_script("return window.playground.responseDoneAt"), 180, "the spoken answer")
        timings = driver.execute_script("return window.playground")
        log = by_id("talk-log").text
        driver.save_screenshot(str(tmp_path / f"{turn}-talk{'-file' if use_file else ''}.png"))
        by_id("talk-stop").click()
        said = log.rsplit("You:", 1)[-1]
        assert "dragon" in said.lower() and "Assistant: " in said, log
        assert said.split("Assistant: ", 1)[1].strip(), log
        # Over the call: no audio deltas, the answer's audio played from the remote track
        # (heard in the page: its level) and said to be playing (output_audio_buffer).
        assert "response.output_audio.delta" not in timings["events"], timings
        assert "output_audio_buffer.started" in timings["events"] and timings["firstAudioPlayAt"], timings
        assert timings["peak"] > 0.05 and timings["firstSoundAt"], timings
        leads.append((timings["responseDoneAt"] - timings["firstAudioPlayAt"]) / 1000)
        driver.execute_script("document.getElementById('talk-log').replaceChildren()")
    print(f"answer audio started {leads} s before response.done; screenshots in {tmp_path}")
    assert max(leads) > 0.5, leads


def test_the_page_is_public_and_self_contained():
    """With keys configured the page still loads (the key is typed into it) while /v1 needs
    one; and nothing in it is fetched from another host (no CDN). Its secrets: with keys
    and no playground.session_key, /playground/session mints none; with one, it mints that
    key's ek_ (usable on the realtime doors only), to loopback and same-origin requests."""
    import re

    import httpx

    from gateway.settings import load_settings

    for asset in (ROOT / "gateway" / "playground" / "static").iterdir():
        text = asset.read_text()
        assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//|url\((https?:)?//|@import|import\s*\(", text), asset
    settings = load_settings()
    settings.engines.preload = []
    settings.server.api_keys = ["sk-playground"]
    live = live_server(settings).start(ready_path="/health")
    try:
        with httpx.Client(base_url=live.url) as http:
            page = http.get("/")
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            for path in ("/playground/playground.js", "/playground/playground.css"):
                assert http.get(path).status_code == 200
            assert http.get("/v1/models").status_code == 401
            assert http.get("/v1/models", headers={"Authorization": "Bearer sk-playground"}).status_code == 200
            assert http.post("/playground/session").status_code == 403
    finally:
        live.stop()
    settings.playground.session_key = "sk-playground"
    live = live_server(settings).start(ready_path="/health")
    try:
        with httpx.Client(base_url=live.url) as http:
            minted = http.post("/playground/session")
            assert minted.status_code == 200, minted.text
            secret = minted.json()["value"]
            assert secret.startswith("ek_") and "sk-playground" not in minted.text
            assert http.get("/v1/models", headers={"Authorization": f"Bearer {secret}"}).status_code == 401
            other_site = http.post("/playground/session", headers={"Origin": "http://example.com"})
            assert other_site.status_code == 403
    finally:
        live.stop()
    settings.playground.session_networks = ["10.0.0.0/8"]  # loopback is not in it
    live = live_server(settings).start(ready_path="/health")
    try:
        assert httpx.post(live.url + "/playground/session").status_code == 403
    finally:
        live.stop()
