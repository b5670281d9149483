"""Voice-to-voice latency of /v1/realtime on the embedded engines, through the official SDK.

Each turn streams one of the real recordings in tests/recordings (cycling through them) at
real-time pace, 20 ms pieces each sent when a microphone would have captured it, then
silence; the session is the default one (server VAD, the embedded engines) with its input
transcription on, so the turn's transcript can be scored (word error rate for English,
character error rate for Chinese, against what the speakers read). Each answer is cancelled
at its first audio, out of the next turn's way. The figure is the time
from the end of the speech (when the client sent the last speech sample; where each
recording's speech ends is found offline by the gateway's own detector) to the first
``response.output_audio.delta``. Where it goes: the end-of-turn decision (end of speech →
``speech_stopped``, as the client receives it), then the server's own split of the turn,
``realtime_turn_stage_seconds{stage}`` read from /metrics before and after the turn (only
one turn runs at a time), and the client's times of each event. One session per turn, or
all turns in one session (``--one-session``).

Then barge-ins: while an answer plays, a second recording is streamed; the figure is the
time from ``speech_started`` to the last audio delta of the cancelled answer (how long the
assistant talks over the user).

``--after-closed``: each turn follows a session that asked for a long story and closed
its socket at the story's first audio: what a leftover response (one that outlives its
session) would cost the next user.

    python bench/realtime_latency.py [--turns 20] [--one-session] [--barge-ins 5]
        [--transcription-model whisper-1] [--turn-detection server_vad|semantic_vad]
        [--eagerness low|medium|high|auto] [--silence-ms N] [--after-closed]

Writes everything to .bench/realtime_latency.json as well.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass

import httpx
from _recordings import Microphone, Recording, error_rate, load
from _server import ROOT, start_server
from openai import AsyncOpenAI
from prometheus_client.parser import text_string_to_metric_families

METRICS = "step_audio_gateway_realtime_"
TIMEOUT = 120.0  # seconds without an event before a turn is given up
STAGES = {  # the server's stages (realtime_turn_stage_seconds), in order
    "decision": "end-of-turn decision (end of speech → speech_stopped)",
    "heard": "transcription after the decision (heard)",
    "first_token": "first text token",
    "first_sentence": "first sentence ready",
    "synthesis": "first audio encoded (synthesis)",
    "sent": "sent",
}
EVENTS = {  # what the client receives, first of each for the answer to the whole recording
    "speech_stopped": "input_audio_buffer.speech_stopped",
    "transcribed": "conversation.item.input_audio_transcription.completed",
    "created": "response.created",
    "first_text": "first response.output_audio_transcript.delta",
    "first_audio": "first response.output_audio.delta",
}


@dataclass
class Turn:
    recording: str
    waits: dict[str, float]  # EVENTS' keys: seconds from the end of speech
    server: dict[str, float] | None  # the server's stages; None: not exactly one answer's
    transcript: str
    error_rate: float
    early_stops: int  # times the detector ended the turn inside the recording
    answer: str  # what the answer said before its cancel took effect
    adopted: int  # replies begun at a pause that a response took over


async def stage_sums(http: httpx.AsyncClient) -> dict[str, float]:
    """The ``_sum`` of each stage of realtime_turn_stage_seconds, and ``answers``: how many
    first audio deltas realtime_voice_to_voice_seconds has counted, all models together."""
    sums = {"answers": 0.0}
    for family in text_string_to_metric_families((await http.get("/metrics")).text):
        for sample in family.samples:
            if sample.name == METRICS + "turn_stage_seconds_sum":
                stage = sample.labels["stage"]
                sums[stage] = sums.get(stage, 0.0) + sample.value
            elif sample.name == METRICS + "voice_to_voice_seconds_count":
                sums["answers"] += sample.value
            elif sample.name == METRICS + "speculative_replies_total":
                key = "speculation_" + sample.labels["outcome"]
                sums[key] = sums.get(key, 0.0) + sample.value
    return sums


def server_split(before: dict[str, float], after: dict[str, float]) -> dict[str, float] | None:
    if after["answers"] - before["answers"] != 1:
        return None  # an answer cut short inside the recording reached its first audio
    return {s: after[s] - before.get(s, 0.0) for s in STAGES if s in after}


def adopted(before: dict[str, float], after: dict[str, float]) -> int:
    """Replies begun at a pause and taken over by a response, in the turn (a turn ended
    inside the recording adds its own)."""
    key = "speculation_adopted"
    return int(after.get(key, 0.0) - before.get(key, 0.0))


async def listen(conn, spoken: asyncio.Future) -> tuple[dict[str, float], list[str], int, str]:
    """A turn's events, until the answer to the whole recording is done (cancelled at its
    first audio: voicing a whole answer of the small embedded model takes minutes on a CPU)
    and every item the turn committed is transcribed: the monotonic time of each of EVENTS,
    the transcripts in order, how many ``speech_stopped`` came before the end of the speech
    (a pause in the recording ended the turn; the speech after it barged in), and the
    answer's words."""
    at: dict[str, float] = {}
    items: list[str] = []
    texts: dict[str, str] = {}
    answer, finished, early, words = None, False, 0, []
    while not finished or len(texts) < len(items):
        event = await asyncio.wait_for(conn.recv(), TIMEOUT)
        now, kind = time.monotonic(), event.type
        if kind == "error":
            if event.error.code == "response_cancel_not_active":
                continue  # the answer was over before the cancel came
            raise RuntimeError(event.error.message)
        if kind == "input_audio_buffer.speech_stopped":
            if spoken.done():
                at.setdefault("speech_stopped", now)
            else:
                early += 1
        elif kind == "input_audio_buffer.committed":
            items.append(event.item_id)
        elif kind.startswith("conversation.item.input_audio_transcription."):
            if kind.endswith(".completed") or kind.endswith(".failed"):
                texts[event.item_id] = getattr(event, "transcript", "")
                if "speech_stopped" in at and event.item_id == items[-1]:
                    at["transcribed"] = now
        elif kind == "response.created" and "speech_stopped" in at and answer is None:
            answer, at["created"] = event.response.id, now
        elif kind == "response.output_audio_transcript.delta" and event.response_id == answer:
            at.setdefault("first_text", now)
            words.append(event.delta)
        elif kind == "response.output_audio.delta" and event.response_id == answer:
            if "first_audio" not in at:
                at["first_audio"] = now
                await conn.response.cancel(response_id=answer)
        elif kind == "response.done" and answer and event.response.id == answer:
            finished = True
    return at, [texts[i] for i in items], early, "".join(words)


async def turn(conn, mic: Microphone, http: httpx.AsyncClient, recording: Recording) -> Turn:
    before = await stage_sums(http)
    spoken = mic.say(recording)
    at, texts, early, answer = await listen(conn, spoken)
    after = await stage_sums(http)
    transcript = ("" if recording.chinese else " ").join(t.strip() for t in texts)
    return Turn(
        recording.name,
        {key: at[key] - spoken.result() for key in EVENTS if key in at},
        server_split(before, after),
        transcript,
        error_rate(recording, transcript),
        early,
        answer,
        adopted(before, after),
    )


@asynccontextmanager
async def session(client: AsyncOpenAI, args: argparse.Namespace, **config):
    """A realtime session with a microphone streaming into it (silence until told)."""
    async with client.realtime.connect(model="gpt-realtime") as conn:
        detection = {"type": args.turn_detection}
        if args.eagerness:
            detection["eagerness"] = args.eagerness
        if args.silence_ms is not None:
            detection["silence_duration_ms"] = args.silence_ms
        audio_in = {"transcription": {"model": args.transcription_model},
                    "turn_detection": detection}
        await conn.session.update(
            session={"type": "realtime", "audio": {"input": audio_in}, **config}
        )
        mic = Microphone(conn, args.piece_ms).start()
        try:
            yield conn, mic
        finally:
            await mic.stop()


async def closed_mid_reply(client: AsyncOpenAI) -> None:
    """A session that asks for a long spoken story and goes away at its first audio."""
    conn = await client.realtime.connect(model="gpt-realtime").enter()
    ask = "Tell me a long story about a lighthouse keeper and the sea."
    await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": ask}]})
    await conn.response.create()
    async for event in conn:
        if event.type == "response.output_audio.delta":
            break
    await conn.close()


async def run_turns(client, http, recordings: list[Recording], args) -> list[Turn]:
    """``args.turns`` turns cycling through the recordings, one session each or all in one."""
    done: list[Turn] = []

    async def next_turn(conn, mic) -> None:
        if args.after_closed:
            await closed_mid_reply(client)
        recording = recordings[len(done) % len(recordings)]
        t = await turn(conn, mic, http, recording)
        done.append(t)
        split = "" if t.server is None else "  server: " + " ".join(
            f"{s} {v:.2f}" for s, v in t.server.items())
        print(f"  {len(done):2d} {t.recording:22s} {t.waits.get('first_audio', float('nan')):.2f} s"
              f"  (decision {t.waits.get('speech_stopped', float('nan')):.2f}){split}"
              f"  begun at the pause: {t.adopted}"
              f"  {'CER' if recording.chinese else 'WER'} {t.error_rate:.2f}", flush=True)

    if args.one_session:
        async with session(client, args) as (conn, mic):
            while len(done) < args.turns:
                await next_turn(conn, mic)
    else:
        while len(done) < args.turns:
            async with session(client, args) as (conn, mic):
                await next_turn(conn, mic)
    return done


async def barge_in(client: AsyncOpenAI, args, question: Recording, interrupt: Recording):
    """Times from the barge-in (speech_started, as the client receives it) to the last
    audio delta of the interrupted answer and to its response.done (cancelled)."""
    story = "You are a storyteller. Always answer with a long story of at least ten sentences."
    async with session(client, args, instructions=story) as (conn, mic):
        mic.say(question)
        response_id = started = last = None
        after = 0  # audio bytes of the interrupted answer received after the barge-in
        async for event in conn:
            if event.type == "response.output_audio.delta":
                if response_id is None:
                    response_id = event.response_id
                    mic.say(interrupt)
                if event.response_id == response_id:
                    last = time.perf_counter()
                    if started is not None:
                        after += len(base64.b64decode(event.delta))
            elif event.type == "input_audio_buffer.speech_started" and response_id is not None:
                started = started or time.perf_counter()
            elif event.type == "response.done" and event.response.id == response_id:
                if event.response.status != "cancelled" or started is None:
                    return None  # the answer ended before the user spoke
                return {"last_delta": last - started, "done": time.perf_counter() - started,
                        "audio_after": after / 48_000}
    raise RuntimeError("the session ended early")


def pct(values: list[float], q: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def row(label: str, values: list[float]) -> str:
    if not values:
        return f"| {label} | – | – | – |"
    return (f"| {label} | {pct(values, 50):.2f} s | {pct(values, 90):.2f} s "
            f"| {max(values):.2f} s |")


def stage_rows(turns: list[Turn]) -> list[str]:
    """The wait, stage by stage (each from the end of the one before), and the whole."""
    split = [t for t in turns if t.server is not None and "first_audio" in t.waits]
    lines = [row("end-of-turn decision (end of speech → speech_stopped received)",
                 [t.waits["speech_stopped"] for t in turns])]
    for stage, label in STAGES.items():
        values = [t.server[stage] for t in split if stage in t.server]
        if values or stage != "decision":  # the decision stage is newer than the others
            lines.append(row(f"{label} (server)", values))
    rest = [t.waits["first_audio"] - t.waits["speech_stopped"]
            - sum(v for s, v in t.server.items() if s != "decision") for t in split]
    lines.append(row("delivery and the rest (client wait − decision − server stages)", rest))
    lines.append(row("**end of speech → first audio delta**",
                     [t.waits["first_audio"] for t in turns if "first_audio" in t.waits]))
    return lines


def describe(args: argparse.Namespace) -> str:
    detection = args.turn_detection + (f" {args.eagerness}" if args.eagerness else "")
    if args.silence_ms is not None:
        detection += f" ({args.silence_ms} ms of silence)"
    return (f"{'one session' if args.one_session else 'a session each'}, {detection}, "
            f"hearing with {args.transcription_model}"
            + (", each after a session closed mid-reply" if args.after_closed else ""))


def report(turns: list[Turn], recordings: list[Recording], args, load: tuple) -> dict:
    totals = [t.waits["first_audio"] for t in turns if "first_audio" in t.waits]
    median, split = statistics.median(totals), sum(t.server is not None for t in turns)
    head = "| | p50 | p90 | max |\n| --- | --- | --- | --- |"
    print(f"\n{len(turns)} turns ({describe(args)}); the server's split on {split} of them"
          + ("" if split == len(turns) else " (in the others an answer cut short inside the "
             "recording reached its first audio)") + "\n")
    print(head, *stage_rows(turns), sep="\n")
    print("\nclient events, seconds after the end of speech:\n")
    print(head, *(row(f"`{name}`", [t.waits[key] for t in turns if key in t.waits])
                  for key, name in EVENTS.items()), sep="\n")
    chinese = {r.name for r in recordings if r.chinese}
    print("\nend of speech → first audio delta, by the language of the turn (and so of the "
          "voice that answers: Piper for English, Kokoro for Chinese):\n")
    print(head, *(row(f"{label} ({len(values)} turns)", values) for label, values in (
        ("English", [t.waits["first_audio"] for t in turns
                     if "first_audio" in t.waits and t.recording not in chinese]),
        ("Chinese", [t.waits["first_audio"] for t in turns
                     if "first_audio" in t.waits and t.recording in chinese]),
    )), sep="\n")
    fine = max(totals) <= 3 * median
    print(f"\nno turn over 3x the median: {'yes' if fine else 'NO'} (max {max(totals):.2f} s, "
          f"median {median:.2f} s); turns the detector ended inside the recording: "
          f"{sum(t.early_stops > 0 for t in turns)}")
    print("\n| recording | speech ends at | turns | error rate | transcript (last) |\n"
          "| --- | --- | --- | --- | --- |")
    rates = {}
    for rec in recordings:
        mine = [t for t in turns if t.recording == rec.name]
        if mine:
            rates[rec.name] = statistics.mean(t.error_rate for t in mine)
            print(f"| {rec.name} | {rec.speech_end / 48_000:.2f} / {len(rec.pcm) / 48_000:.2f} s "
                  f"| {len(mine)} | {'CER' if rec.chinese else 'WER'} {rates[rec.name]:.2f} "
                  f"| {mine[-1].transcript} |")
    print(f"\nload average (1/5/15 min) at the start {load[0]}, at the end {load[1]}")
    return {"median": median, "max": max(totals), "no_turn_over_3x_median": fine,
            "error_rates": rates, "table": [head, *stage_rows(turns)]}


def report_barge_ins(results: list[dict | None]) -> None:
    cut = [r for r in results if r is not None]
    print(f"\nbarge-in, {len(cut)}/{len(results)} answers cancelled (times from "
          "speech_started as received; negative: the last delta came before it):")
    if cut:
        for key, label in (("last_delta", "to the last audio delta"), ("done", "to response.done")):
            values = [r[key] for r in cut]
            print(f"  {label}: p50 {pct(values, 50):.3f} s   max {max(values):.3f} s")
        after = max(r["audio_after"] for r in cut)
        print(f"  audio received after the barge-in: max {after:.2f} s")


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--one-session", action="store_true",
                        help="all turns in one session (default: a session per turn)")
    parser.add_argument("--barge-ins", type=int, default=5)
    parser.add_argument("--transcription-model", default="whisper-1",
                        help="the session's input transcription model")
    parser.add_argument("--turn-detection", choices=["server_vad", "semantic_vad"],
                        default="server_vad")
    parser.add_argument("--eagerness", choices=["low", "medium", "high", "auto"])
    parser.add_argument("--silence-ms", type=int,
                        help="server_vad's silence_duration_ms (default: the session's, 500)")
    parser.add_argument("--piece-ms", type=int, default=20, help="audio per append")
    parser.add_argument("--after-closed", action="store_true",
                        help="start each turn right after a session closed while its reply played")
    args = parser.parse_args()
    if args.eagerness and args.turn_detection != "semantic_vad":
        parser.error("--eagerness is semantic_vad's")
    if args.silence_ms is not None and args.turn_detection != "server_vad":
        parser.error("--silence-ms is server_vad's")
    return args


async def main() -> None:
    args = arguments()
    load_before = tuple(round(x, 2) for x in os.getloadavg())
    recordings = load()
    _, url = start_server(["tts-1", "gpt-4o-mini", args.transcription_model])
    client = AsyncOpenAI(base_url=url + "/v1", api_key="sk-local", max_retries=0)
    async with httpx.AsyncClient(base_url=url) as http:
        async with session(client, args) as (conn, mic):  # warm-up, not counted
            await turn(conn, mic, http, recordings[0])
        print("end of speech → first audio delta, per turn:")
        turns = await run_turns(client, http, recordings, args)
    load_after = tuple(round(x, 2) for x in os.getloadavg())
    summary = report(turns, recordings, args, (load_before, load_after))
    barge = []
    if args.barge_ins:
        barge = [await barge_in(client, args, recordings[1], recordings[2])
                 for _ in range(args.barge_ins)]
        report_barge_ins(barge)
    out = ROOT / ".bench" / "realtime_latency.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({
        "args": vars(args), "load_average": {"start": load_before, "end": load_after},
        "speech_end_s": {r.name: r.speech_end / 48_000 for r in recordings},
        "summary": summary, "turns": [asdict(t) for t in turns], "barge_ins": barge,
    }, indent=1, ensure_ascii=False))
    print(f"\nwritten to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    asyncio.run(main())
