"""The OpenAI Agents SDK for JavaScript (@openai/agents, pinned in tests/node/package.json)
in Node: a ``RealtimeSession`` on the WebSocket transport (tests/node/agents_realtime.mjs)."""

from __future__ import annotations

import json
import subprocess

import numpy as np

from tests.frameworks_tier.helpers import API_KEY, NODE_DIR, assert_heard


def test_node_realtime_session_calls_a_tool_and_speaks_the_answer(node, gateway, hear, tmp_path):
    """``new RealtimeSession(agent, {transport: "websocket"})`` connected to the gateway's
    URL: a text message makes the model call the agent's tool (its zod-parsed arguments reach
    ``execute``), the SDK sends the output, and the spoken answer that follows is audio
    Whisper hears as the answer's transcript."""
    pcm = tmp_path / "answer.pcm"
    url = gateway.ws_url + "/realtime?model=gpt-realtime-2.1"
    run = subprocess.run(
        [node, str(NODE_DIR / "agents_realtime.mjs"), url, API_KEY, str(pcm)],
        cwd=NODE_DIR, capture_output=True, text=True, timeout=180,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert not seen["errors"], seen
    assert seen["calls"] == ["Paris"] and "sunny" in seen["tool_result"]
    call = seen["call"]
    assert call["name"] == "get_weather" and json.loads(call["arguments"]) == {"city": "Paris"}
    assert call["status"] == "completed" and "sunny" in call["output"]
    transcript = seen["transcript"]
    assert transcript.strip()
    samples = np.frombuffer(pcm.read_bytes(), np.int16)
    assert len(samples) * 2 == seen["pcm_bytes"] > 24_000 * 2
    assert_heard(transcript, hear(samples, 24_000))
